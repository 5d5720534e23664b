//! Boot media the appliance serves to bare-metal BMCs: per-machine seed images that the
//! bare-metal provider publishes through [`MediaHost`]. Files live in
//! `<data dir>/boot-media/` (written atomically) and are served at `GET /boot-media/{name}`
//! without authentication, because a BMC fetches them with no credentials of ours: names carry
//! a random part chosen by the provider, and the content holds one-time tokens only.

use std::path::{Path, PathBuf};

use crate::providers::{ErrorKind, MediaHost, ProviderError};

/// Largest medium accepted (seed images are a few KiB; installer ISOs come from the registry).
pub const MAX_MEDIUM_BYTES: usize = 64 * 1024 * 1024;

/// The appliance's [`MediaHost`].
#[derive(Debug, Clone)]
pub struct BootMedia {
    dir: PathBuf,
    /// `https://host:port` of the appliance as machines see it.
    base_url: String,
}

impl BootMedia {
    /// Media kept in `dir`, served under `base_url`.
    pub fn new(dir: PathBuf, base_url: String) -> BootMedia {
        BootMedia { dir, base_url }
    }

    /// The file of a medium, when `name` is a valid medium name.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        valid_name(name).then(|| self.dir.join(name))
    }
}

/// Letters, digits, `.`, `-`, `_`; not starting with a dot; at most 200 bytes.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> ProviderError {
    ProviderError::new(
        ErrorKind::Transient,
        format!("cannot {what} {}: {e}", path.display()),
    )
}

#[async_trait::async_trait]
impl MediaHost for BootMedia {
    async fn publish(&self, name: &str, bytes: Vec<u8>) -> Result<String, ProviderError> {
        if !valid_name(name) {
            return Err(ProviderError::invalid(
                "medium name",
                format!("{name:?} must be letters, digits, '.', '-' or '_'"),
            ));
        }
        if bytes.len() > MAX_MEDIUM_BYTES {
            return Err(ProviderError::invalid(
                "medium",
                format!("{name} is larger than {MAX_MEDIUM_BYTES} bytes"),
            ));
        }
        let dir = self.dir.clone();
        let name_owned = name.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), ProviderError> {
            std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
            let tmp =
                tempfile::NamedTempFile::new_in(&dir).map_err(|e| io_error("write in", &dir, e))?;
            std::fs::write(tmp.path(), &bytes).map_err(|e| io_error("write", tmp.path(), e))?;
            let to = dir.join(&name_owned);
            tmp.persist(&to)
                .map_err(|e| io_error("store", &to, e.error))?;
            Ok(())
        })
        .await
        .map_err(|e| ProviderError::transient(format!("publishing boot medium: {e}")))??;
        Ok(format!("{}/boot-media/{name}", self.base_url))
    }

    /// Installer ISOs of several GiB: linked (same file system: no copy) or else copied into
    /// the media folder, never read into memory.
    async fn publish_file(&self, name: &str, path: &Path) -> Result<String, ProviderError> {
        let Some(to) = self.path(name) else {
            return Err(ProviderError::invalid(
                "medium name",
                format!("{name:?} must be letters, digits, '.', '-' or '_'"),
            ));
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| io_error("create", &self.dir, e))?;
        let tmp = self.dir.join(format!(".{name}.part"));
        let _ = tokio::fs::remove_file(&tmp).await;
        if tokio::fs::hard_link(path, &tmp).await.is_err() {
            tokio::fs::copy(path, &tmp)
                .await
                .map_err(|e| io_error("copy", path, e))?;
        }
        tokio::fs::rename(&tmp, &to)
            .await
            .map_err(|e| io_error("store", &to, e))?;
        Ok(format!("{}/boot-media/{name}", self.base_url))
    }

    async fn withdraw(&self, name: &str) -> Result<(), ProviderError> {
        let Some(path) = self.path(name) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_replaces_and_withdraws() -> Result<(), ProviderError> {
        let dir = tempfile::tempdir().map_err(|e| ProviderError::transient(e.to_string()))?;
        let media = BootMedia::new(dir.path().join("m"), "https://a:8443".into());
        let url = media.publish("seed-x1.iso", b"one".to_vec()).await?;
        assert_eq!(url, "https://a:8443/boot-media/seed-x1.iso");
        media.publish("seed-x1.iso", b"two".to_vec()).await?;
        let path = media.path("seed-x1.iso").unwrap_or_default();
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"two");
        media.withdraw("seed-x1.iso").await?;
        media.withdraw("seed-x1.iso").await?;
        assert!(!path.exists());
        assert!(media.publish("../x", vec![]).await.is_err());
        assert!(media.path(".hidden").is_none());
        Ok(())
    }
}
