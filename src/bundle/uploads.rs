//! Resumable upload sessions of bundle files (`/v1/bundle-uploads`) on disk, and their expiry.
//! Used by `crate::api::bundles` (the handlers) and the appliance's sweeper (`crate::app`).
//!
//! ```text
//! <data-dir>/staging/uploads/<uuid>           an open session: its length is its offset,
//!                                             its modification time its last activity
//! <data-dir>/staging/uploads/<uuid>.expired   an expired session (empty), so that a late
//!                                             client is told "expired", not "unknown"
//! ```
//!
//! A session without activity for the expiry (24 h by default, `palisade serve
//! --bundle-upload-expiry`) is expired: requests on it answer 410 at once, and the sweeper
//! (every quarter of the expiry, at most every 5 minutes, and at start) replaces its file with
//! the empty marker, which it removes after another expiry. A session a chunk is being written
//! to (its file lock is held) is never expired under the writer.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fs4::fs_std::FileExt;

/// Default time without activity after which a session expires.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Suffix of the marker an expired session leaves.
const EXPIRED_SUFFIX: &str = ".expired";
/// The sweeper runs at least this often (and at most every second).
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// A failed operation on the sessions' folder, naming the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of an upload session operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a session id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// Open: `offset` bytes received.
    Open { path: PathBuf, offset: u64 },
    /// Expired (or about to be swept): the client must start again.
    Expired,
    /// Never existed, or imported, deleted, or expired long ago.
    Unknown,
}

/// The upload sessions of one appliance.
#[derive(Debug, Clone)]
pub struct UploadSessions {
    dir: PathBuf,
    expiry: Duration,
}

impl UploadSessions {
    /// Sessions under `dir` (`<data-dir>/staging/uploads`), expiring after `expiry` idle.
    pub fn new(dir: PathBuf, expiry: Duration) -> UploadSessions {
        UploadSessions { dir, expiry }
    }

    /// How long a session may stay idle.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// The expiry as the flag takes it: `24h`, `90s`, `7d`.
    pub fn expiry_text(&self) -> String {
        let secs = self.expiry.as_secs();
        match secs {
            s if s >= 2 * 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
            s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
            s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    }

    /// How often the sweeper runs: a quarter of the expiry, between 1 s and 5 minutes.
    pub fn sweep_interval(&self) -> Duration {
        (self.expiry / 4).clamp(Duration::from_secs(1), MAX_SWEEP_INTERVAL)
    }

    /// The file of session `id`.
    pub fn path(&self, id: &uuid::Uuid) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn marker(&self, id: &uuid::Uuid) -> PathBuf {
        self.dir.join(format!("{id}{EXPIRED_SUFFIX}"))
    }

    /// Open a new, empty session.
    pub async fn create(&self) -> Result<uuid::Uuid> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io("create upload folder", &self.dir))?;
        let id = uuid::Uuid::new_v4();
        let path = self.path(&id);
        tokio::fs::File::create(&path)
            .await
            .map_err(io("create upload session", &path))?;
        Ok(id)
    }

    /// What session `id` is now. An idle session past its expiry is `Expired` even before
    /// the sweeper removed it.
    pub async fn lookup(&self, id: &uuid::Uuid) -> Result<Session> {
        let path = self.path(id);
        match tokio::fs::metadata(&path).await {
            Ok(m) => {
                if self.is_stale(&m, SystemTime::now()) {
                    Ok(Session::Expired)
                } else {
                    Ok(Session::Open {
                        path,
                        offset: m.len(),
                    })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let marker = self.marker(id);
                match tokio::fs::metadata(&marker).await {
                    Ok(_) => Ok(Session::Expired),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Session::Unknown),
                    Err(e) => Err(io("read", &marker)(e)),
                }
            }
            Err(e) => Err(io("read upload session", &path)(e)),
        }
    }

    fn is_stale(&self, meta: &std::fs::Metadata, now: SystemTime) -> bool {
        meta.modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|idle| idle >= self.expiry)
    }

    /// Expire every session idle for the expiry (its data goes; an empty marker stays for
    /// another expiry) and remove older markers. Returns the ids expired now. Blocking: run
    /// it off the async runtime.
    pub fn sweep(&self) -> Result<Vec<uuid::Uuid>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list upload sessions in", &self.dir)(e)),
        };
        let now = SystemTime::now();
        let mut expired = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list upload sessions in", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !self.is_stale(&meta, now) {
                continue;
            }
            if let Some(id) = name.strip_suffix(EXPIRED_SUFFIX) {
                if uuid::Uuid::parse_str(id).is_ok() {
                    std::fs::remove_file(&path).map_err(io("remove expired marker", &path))?;
                }
                continue;
            }
            // Only files named like a session: nothing else in the folder is ours to delete.
            let Ok(id) = uuid::Uuid::parse_str(name) else {
                continue;
            };
            if name != id.to_string() {
                continue;
            }
            if self.expire(&id, &path)? {
                expired.push(id);
            }
        }
        Ok(expired)
    }

    /// Replace session `id`'s file with its empty marker, unless a chunk is being written to
    /// it (then it is active: false).
    fn expire(&self, id: &uuid::Uuid, path: &Path) -> Result<bool> {
        let file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("open upload session", path)(e)),
        };
        // The writer of a chunk holds this lock for the whole request.
        if !matches!(file.try_lock_exclusive(), Ok(true)) {
            return Ok(false);
        }
        let marker = self.marker(id);
        std::fs::rename(path, &marker).map_err(io("expire upload session", path))?;
        // Same file (the lock is still ours): drop its data; the marker's time is now.
        file.set_len(0)
            .map_err(io("empty expired upload session", &marker))?;
        Ok(true)
    }
}

/// Sweep `sessions` now and then every [`UploadSessions::sweep_interval`], forever; each
/// expired session is audited (actor `palisade`, action `expire bundle upload`).
pub async fn expire_periodically(sessions: UploadSessions, store: crate::store::Store) {
    let mut tick = tokio::time::interval(sessions.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The first tick completes at once: a sweep at start.
        tick.tick().await;
        let worker = sessions.clone();
        let expired = match tokio::task::spawn_blocking(move || worker.sweep()).await {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "sweeping expired bundle uploads failed");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the bundle upload sweeper stopped");
                continue;
            }
        };
        for id in expired {
            tracing::info!(upload = %id, idle_secs = sessions.expiry().as_secs(), "bundle upload session expired");
            let entry = crate::store::AuditEntry {
                actor: "palisade".into(),
                action: "expire bundle upload".into(),
                object: format!("/v1/bundle-uploads/{id}"),
                source: "appliance".into(),
                outcome: "success".into(),
                request_id: uuid::Uuid::new_v4().simple().to_string(),
            };
            if let Err(e) = store.append_audit(entry).await {
                tracing::error!(error = %e, "cannot audit an expired bundle upload");
            }
        }
    }
}

/// Whether the file open as `file` is still the session file at `path` (the sweeper renames
/// a session away when it expires it): a writer checks this once it holds the file's lock.
pub fn still_current(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open");
        f.set_modified(SystemTime::now() - by).expect("set mtime");
    }

    #[tokio::test]
    async fn idle_sessions_expire_leave_a_marker_and_the_marker_goes_later() {
        let dir = tempfile::tempdir().expect("tmp");
        let sessions = UploadSessions::new(dir.path().join("uploads"), Duration::from_secs(60));
        assert!(sessions.sweep().expect("no folder yet").is_empty());
        let idle = sessions.create().await.expect("create");
        let fresh = sessions.create().await.expect("create");
        std::fs::write(sessions.path(&idle), b"partial").expect("write");
        std::fs::write(sessions.path(&fresh), b"part").expect("write");
        age(&sessions.path(&idle), Duration::from_secs(61));
        std::fs::write(dir.path().join("uploads/notes.txt"), b"not ours").expect("write");
        age(
            &dir.path().join("uploads/notes.txt"),
            Duration::from_secs(600),
        );

        // Expired on lookup at once, before any sweep.
        assert_eq!(
            sessions.lookup(&idle).await.expect("lookup"),
            Session::Expired
        );
        assert_eq!(
            sessions.lookup(&fresh).await.expect("lookup"),
            Session::Open {
                path: sessions.path(&fresh),
                offset: 4
            }
        );
        assert_eq!(sessions.sweep().expect("sweep"), vec![idle]);
        assert!(!sessions.path(&idle).exists(), "the partial file is gone");
        let marker = sessions.marker(&idle);
        assert_eq!(std::fs::metadata(&marker).expect("marker").len(), 0);
        assert_eq!(
            sessions.lookup(&idle).await.expect("lookup"),
            Session::Expired
        );
        assert!(sessions.path(&fresh).exists());
        assert!(
            dir.path().join("uploads/notes.txt").exists(),
            "not a session"
        );

        // A session being written to is not expired under its writer.
        age(&sessions.path(&fresh), Duration::from_secs(120));
        let writer = std::fs::OpenOptions::new()
            .append(true)
            .open(sessions.path(&fresh))
            .expect("open");
        assert!(matches!(writer.try_lock_exclusive(), Ok(true)));
        assert!(sessions.sweep().expect("sweep").is_empty());
        assert!(still_current(&writer, &sessions.path(&fresh)));
        drop(writer);

        // The marker goes after another expiry; then the id is unknown.
        age(&marker, Duration::from_secs(61));
        assert_eq!(sessions.sweep().expect("sweep"), vec![fresh]);
        assert!(!marker.exists());
        assert_eq!(
            sessions.lookup(&idle).await.expect("lookup"),
            Session::Unknown
        );
    }

    #[test]
    fn the_sweeper_runs_a_quarter_of_the_expiry_within_bounds() {
        let at = |secs| UploadSessions::new(PathBuf::new(), Duration::from_secs(secs));
        assert_eq!(at(2).sweep_interval(), Duration::from_secs(1));
        assert_eq!(at(400).sweep_interval(), Duration::from_secs(100));
        assert_eq!(at(86_400).sweep_interval(), MAX_SWEEP_INTERVAL);
        assert_eq!(at(86_400).expiry_text(), "24h");
        assert_eq!(at(7 * 86_400).expiry_text(), "7d");
        assert_eq!(at(7200).expiry_text(), "2h");
        assert_eq!(at(90).expiry_text(), "90s");
    }
}
