//! Committed offsets of consumer groups: one small append-only file per group under
//! `groups/`, compacted to one entry per topic when opened and when it grows.
//!
//! Only the writer thread changes these files, so commits share the group-commit sync of
//! appends. A commit is visible to [`Groups::committed`] once it is durable.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::error::{Error, Result};
use super::names::{GroupName, TopicName};
use super::segment::sync_dir;

/// First bytes of a group offsets file.
const GROUP_MAGIC: [u8; 8] = *b"PLSGRP\0\x01";
/// A file is compacted when it holds more than this many entries...
const COMPACT_MIN_ENTRIES: u64 = 4096;
/// ...and more than this many per live (group, topic) pair.
const COMPACT_RATIO: u64 = 8;

/// Durable committed offsets, shared with readers.
pub(crate) type Committed = Arc<RwLock<HashMap<GroupName, HashMap<TopicName, u64>>>>;

#[derive(Debug)]
struct GroupFile {
    path: PathBuf,
    file: File,
    position: u64,
    entries: u64,
    live: HashMap<TopicName, u64>,
    pending: Vec<u8>,
    staged: Vec<(TopicName, u64)>,
    /// Written since the last sync.
    unsynced: bool,
}

/// The writer's side of the group offsets.
#[derive(Debug)]
pub(crate) struct Groups {
    dir: PathBuf,
    files: HashMap<GroupName, GroupFile>,
    committed: Committed,
}

fn encode_entry(out: &mut Vec<u8>, topic: &TopicName, offset: u64) {
    let mut body = Vec::with_capacity(10 + topic.as_str().len());
    body.extend_from_slice(&(topic.as_str().len() as u16).to_le_bytes());
    body.extend_from_slice(topic.as_str().as_bytes());
    body.extend_from_slice(&offset.to_le_bytes());
    let len = (body.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32c::crc32c_append(crc32c::crc32c(&len), &body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Parses entries after the header; stops at the first torn or damaged one. Returns the live
/// map and the number of good entries.
fn parse_entries(mut rest: &[u8]) -> (HashMap<TopicName, u64>, u64) {
    let mut live = HashMap::new();
    let mut count = 0;
    while rest.len() >= 8 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(body) = rest.get(8..8 + len) else {
            break;
        };
        if crc32c::crc32c_append(crc32c::crc32c(&rest[..4]), body) != crc || len < 10 {
            break;
        }
        let n = u16::from_le_bytes([body[0], body[1]]) as usize;
        if body.len() != 2 + n + 8 {
            break;
        }
        let Ok(Ok(topic)) = std::str::from_utf8(&body[2..2 + n]).map(TopicName::new) else {
            break;
        };
        let mut o = [0u8; 8];
        o.copy_from_slice(&body[2 + n..]);
        live.insert(topic, u64::from_le_bytes(o));
        count += 1;
        rest = &rest[8 + len..];
    }
    (live, count)
}

/// Writes a compacted file (temporary file, sync, rename, directory sync) and opens it.
fn write_compacted(dir: &Path, path: &Path, live: &HashMap<TopicName, u64>) -> Result<(File, u64)> {
    let tmp = path.with_extension("offsets.tmp");
    let mut out = GROUP_MAGIC.to_vec();
    let mut topics: Vec<_> = live.iter().collect();
    topics.sort();
    for (topic, offset) in topics {
        encode_entry(&mut out, topic, *offset);
    }
    let mut f = File::create(&tmp).map_err(Error::io("create group offsets", &tmp))?;
    f.write_all(&out)
        .and_then(|()| f.sync_all())
        .map_err(Error::io("write group offsets", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(Error::io("rename compacted group offsets into", path))?;
    sync_dir(dir)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("open group offsets", path))?;
    Ok((file, out.len() as u64))
}

impl Groups {
    /// Loads and compacts every group file under `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Groups> {
        fs::create_dir_all(dir).map_err(Error::io("create groups directory", dir))?;
        let mut files = HashMap::new();
        let mut committed = HashMap::new();
        for entry in fs::read_dir(dir).map_err(Error::io("list groups directory", dir))? {
            let entry = entry.map_err(Error::io("list groups directory", dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(Error::io("remove temporary file", &path))?;
                continue;
            }
            let Some(group) = name.strip_suffix(".offsets") else {
                continue;
            };
            let Ok(group) = GroupName::new(group) else {
                continue;
            };
            let bytes = fs::read(&path).map_err(Error::io("read group offsets", &path))?;
            if bytes.len() < GROUP_MAGIC.len() || bytes[..8] != GROUP_MAGIC {
                return Err(super::segment::corrupt(
                    &path,
                    0,
                    "not a palisade group offsets file",
                ));
            }
            let (live, _) = parse_entries(&bytes[8..]);
            let (file, position) = write_compacted(dir, &path, &live)?;
            committed.insert(group.clone(), live.clone());
            files.insert(
                group,
                GroupFile {
                    path,
                    file,
                    position,
                    entries: live.len() as u64,
                    live,
                    pending: Vec::new(),
                    staged: Vec::new(),
                    unsynced: false,
                },
            );
        }
        Ok(Groups {
            dir: dir.to_path_buf(),
            files,
            committed: Arc::new(RwLock::new(committed)),
        })
    }

    /// The shared, durable view.
    pub(crate) fn committed(&self) -> Committed {
        self.committed.clone()
    }

    /// Queues a commit; durable after [`Groups::sync`].
    pub(crate) fn stage(
        &mut self,
        group: &GroupName,
        topic: &TopicName,
        offset: u64,
    ) -> Result<()> {
        if !self.files.contains_key(group) {
            let path = self.dir.join(format!("{group}.offsets"));
            let (file, position) = write_compacted(&self.dir, &path, &HashMap::new())?;
            self.files.insert(
                group.clone(),
                GroupFile {
                    path,
                    file,
                    position,
                    entries: 0,
                    live: HashMap::new(),
                    pending: Vec::new(),
                    staged: Vec::new(),
                    unsynced: false,
                },
            );
        }
        if let Some(g) = self.files.get_mut(group) {
            encode_entry(&mut g.pending, topic, offset);
            g.staged.push((topic.clone(), offset));
        }
        Ok(())
    }

    /// Writes staged commits (not yet synced).
    pub(crate) fn write_pending(&mut self) -> Result<()> {
        for g in self.files.values_mut().filter(|g| !g.pending.is_empty()) {
            g.file
                .write_all_at(&g.pending, g.position)
                .map_err(Error::io("write group offsets", &g.path))?;
            g.position += g.pending.len() as u64;
            g.pending.clear();
            g.unsynced = true;
        }
        Ok(())
    }

    /// Files written since their last sync.
    pub(crate) fn sync_targets(&self) -> impl Iterator<Item = (&File, &Path)> {
        self.files
            .values()
            .filter(|g| g.unsynced)
            .map(|g| (&g.file, g.path.as_path()))
    }

    /// Notes that every file from [`Groups::sync_targets`] was synced.
    pub(crate) fn mark_synced(&mut self) {
        for g in self.files.values_mut() {
            g.unsynced = false;
        }
    }

    /// Writes and syncs staged commits.
    #[cfg(test)]
    fn sync(&mut self) -> Result<()> {
        self.write_pending()?;
        let files: Vec<_> = self.sync_targets().collect();
        super::segment::sync_files(&files)?;
        self.mark_synced();
        Ok(())
    }

    /// Makes synced commits visible and compacts files that grew large.
    pub(crate) fn publish(&mut self) -> Result<()> {
        let mut shared = self
            .committed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, g) in self.files.iter_mut().filter(|(_, g)| !g.staged.is_empty()) {
            let view = shared.entry(name.clone()).or_default();
            for (topic, offset) in g.staged.drain(..) {
                view.insert(topic.clone(), offset);
                g.live.insert(topic, offset);
                g.entries += 1;
            }
            if g.entries > COMPACT_MIN_ENTRIES && g.entries > COMPACT_RATIO * g.live.len() as u64 {
                let (file, position) = write_compacted(&self.dir, &g.path, &g.live)?;
                g.file = file;
                g.position = position;
                g.entries = g.live.len() as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).expect("topic")
    }

    #[test]
    fn torn_entry_is_ignored_and_the_file_compacted_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let g = GroupName::new("orchestrator").expect("group");
        let mut groups = Groups::open(dir.path()).expect("open");
        for i in 0..10 {
            groups.stage(&g, &topic("a"), i).expect("stage");
            groups.stage(&g, &topic("b"), 100 + i).expect("stage");
        }
        groups.sync().expect("sync");
        groups.publish().expect("publish");
        drop(groups);
        let path = dir.path().join("orchestrator.offsets");
        // A torn last entry, as a crash in the middle of a write leaves it.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        let mut torn = Vec::new();
        encode_entry(&mut torn, &topic("a"), 999);
        f.write_all(&torn[..torn.len() - 3]).expect("write");
        drop(f);

        let groups = Groups::open(dir.path()).expect("reopen");
        let view = groups.committed();
        let view = view.read().expect("lock");
        assert_eq!(view[&g][&topic("a")], 9);
        assert_eq!(view[&g][&topic("b")], 109);
        let size = fs::metadata(&path).expect("stat").len();
        let mut one = Vec::new();
        encode_entry(&mut one, &topic("a"), 9);
        assert_eq!(
            size,
            8 + 2 * one.len() as u64,
            "compacted to one entry per topic"
        );
    }
}
