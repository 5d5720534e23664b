//! One topic: its directory of segments, recovery on open, and the writer-side state that
//! assigns offsets, encodes records, rolls segments and enforces retention.
//!
//! [`Topic`] is shared with readers and only holds published (durable) state behind a short
//! lock; [`TopicWriter`] belongs to the writer thread alone.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::error::{Error, Result};
use super::names::TopicName;
use super::producers::{ProducerState, Producers, SeqCheck};
use super::record::{self, NewRecord};
use super::segment::{self, corrupt, Extent, IndexEntry, Segment, Sidecar, SEGMENT_HEADER};
use super::{Appended, LogConfig, Retention, TopicStats};

/// A topic as readers see it: the list of segments, oldest first.
#[derive(Debug)]
pub(crate) struct Topic {
    pub name: TopicName,
    pub dir: PathBuf,
    segments: RwLock<Vec<Arc<Segment>>>,
}

impl Topic {
    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The segment holding `offset`, or the oldest one if `offset` is older than the topic.
    pub(crate) fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.read_segments();
        let i = segs.partition_point(|s| s.base <= offset);
        segs.get(i.saturating_sub(1)).cloned()
    }

    /// The segment following the one starting at `base`.
    pub(crate) fn segment_after(&self, base: u64) -> Option<Arc<Segment>> {
        let segs = self.read_segments();
        let i = segs.partition_point(|s| s.base <= base);
        segs.get(i).cloned()
    }

    /// All segments, oldest first.
    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        self.read_segments().clone()
    }

    /// Sizes and offsets of the durable part.
    pub(crate) fn stats(&self) -> TopicStats {
        let segs = self.read_segments();
        let first_offset = segs.first().map_or(0, |s| s.base);
        let next_offset = segs.last().map_or(0, |s| s.extent().next_offset);
        TopicStats {
            first_offset,
            next_offset,
            bytes: segs.iter().map(|s| s.extent().len).sum(),
            segments: segs.len(),
        }
    }

    fn push_segment(&self, seg: Arc<Segment>) {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seg);
    }

    fn remove_oldest(&self, n: usize) -> Vec<Arc<Segment>> {
        let mut segs = self
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        segs.drain(..n).collect()
    }
}

/// Writer-side state of a topic.
#[derive(Debug)]
pub(crate) struct TopicWriter {
    pub topic: Arc<Topic>,
    active: Arc<Segment>,
    /// Bytes written to the active segment, durable or not.
    position: u64,
    /// Next offset to assign.
    next_offset: u64,
    /// Timestamp of the last record assigned; timestamps never go backwards.
    last_ts: u64,
    last_indexed: Option<u64>,
    pending_index: Vec<IndexEntry>,
    producers: Producers,
    /// Producers that wrote to the active segment (their windows go into its sidecar).
    active_ids: HashSet<u64>,
    /// Encoded frames not yet written, and the file position they go to.
    buf: Vec<u8>,
    buf_pos: u64,
    /// Written since the last sync.
    dirty: bool,
    /// Retention that applies to this topic.
    pub retention: Retention,
}

/// How one record of an append is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Store,
    Duplicate(u64),
}

/// Lists a topic directory: bases of `.log` files, sorted; removes leftover temporary files.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("list topic directory", dir))? {
        let entry = entry.map_err(Error::io("list topic directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            // A segment or index that was never renamed into place: never acknowledged data.
            fs::remove_file(entry.path())
                .map_err(Error::io("remove temporary file", entry.path()))?;
        } else if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<u64>() {
                bases.push(base);
            }
        } else if let Some(stem) = name.strip_suffix(".idx") {
            if let Ok(base) = stem.parse::<u64>() {
                indexes.push(base);
            }
        }
    }
    bases.sort_unstable();
    // An index whose segment retention removed before a crash.
    for base in indexes {
        if bases.binary_search(&base).is_err() {
            let _ = fs::remove_file(segment::index_path(dir, base));
        }
    }
    Ok(bases)
}

/// Opens a topic directory: loads sealed segments from their sidecars (or scans them), scans
/// the last segment and cuts off a torn or corrupt tail, and rebuilds producer state.
pub(crate) fn recover(dir: &Path, name: TopicName, config: &LogConfig) -> Result<TopicWriter> {
    let bases = list_segments(dir)?;
    let Some((&last_base, sealed)) = bases.split_last() else {
        // Created but its first segment never made it to disk: no record was acknowledged.
        return create(dir, name, config);
    };
    let mut producers = Producers::new();
    let mut segments = Vec::with_capacity(bases.len());
    let mut last_ts = 0;
    for (i, &base) in sealed.iter().enumerate() {
        let path = segment::segment_path(dir, base);
        let (file, len) = Segment::open_file(&path, base)?;
        let (extent, index) = match Sidecar::read(dir, base, len) {
            Some(sc) => {
                sc.merge_into(&mut producers);
                (sc.extent, sc.index)
            }
            None => {
                let seg = Segment::new(
                    base,
                    path.clone(),
                    file.try_clone().map_err(Error::io("open segment", &path))?,
                    Extent {
                        len,
                        next_offset: base,
                        last_ts: 0,
                    },
                    Vec::new(),
                );
                let s = segment::scan(&seg, len, config.index_interval_bytes)?;
                if let Some((pos, reason)) = s.bad {
                    // Sealed segments were synced before the next one was created, so a crash
                    // cannot explain this.
                    return Err(corrupt(
                        &path,
                        pos,
                        format!("{reason} in a sealed segment; move the file aside to skip it"),
                    ));
                }
                let extent = Extent {
                    len,
                    next_offset: s.next_offset,
                    last_ts: s.last_ts,
                };
                let ids: Vec<u64> = s.producers.keys().copied().collect();
                let sidecar = Sidecar {
                    base,
                    extent,
                    index: s.index.clone(),
                    producers: Sidecar::producer_windows(&s.producers, &ids),
                };
                sidecar.merge_into(&mut producers);
                if let Err(e) = sidecar.write(dir) {
                    tracing::warn!(error = %e, "cannot rewrite a segment index; it will be rebuilt at the next open");
                }
                (extent, s.index)
            }
        };
        let next_base = bases[i + 1];
        if extent.next_offset != next_base {
            return Err(corrupt(
                &path,
                extent.len,
                format!(
                    "the segment ends at offset {} but the next segment starts at {next_base}",
                    extent.next_offset
                ),
            ));
        }
        last_ts = last_ts.max(extent.last_ts);
        segments.push(Arc::new(Segment::new(base, path, file, extent, index)));
    }

    let path = segment::segment_path(dir, last_base);
    let (file, len) = Segment::open_file(&path, last_base)?;
    let seg = Segment::new(
        last_base,
        path.clone(),
        file,
        Extent {
            len: SEGMENT_HEADER,
            next_offset: last_base,
            last_ts: 0,
        },
        Vec::new(),
    );
    let s = segment::scan(&seg, len, config.index_interval_bytes)?;
    if let Some((pos, reason)) = s.bad {
        // A write the crash interrupted, never acknowledged: everything from here is dropped.
        tracing::warn!(
            segment = %path.display(),
            position = pos,
            dropped_bytes = len - s.valid_len,
            reason,
            "cutting a torn or corrupt tail off the log"
        );
        seg.file
            .set_len(s.valid_len)
            .and_then(|()| seg.file.sync_all())
            .map_err(Error::io("truncate torn tail of segment", &path))?;
    }
    let extent = Extent {
        len: s.valid_len,
        next_offset: s.next_offset,
        last_ts: s.last_ts,
    };
    last_ts = last_ts.max(s.last_ts);
    for (id, state) in &s.producers {
        producers.entry(*id).or_default().merge(state.pairs());
    }
    let mut index = s.index;
    seg.publish(extent, &mut index);
    let active = Arc::new(seg);
    segments.push(active.clone());
    let topic = Arc::new(Topic {
        name,
        dir: dir.to_path_buf(),
        segments: RwLock::new(segments),
    });
    let last_indexed = active.index().last().map(|e| e.position);
    Ok(TopicWriter {
        retention: config.retention_for(&topic.name),
        topic,
        active,
        position: s.valid_len,
        next_offset: s.next_offset,
        last_ts,
        last_indexed,
        pending_index: Vec::new(),
        producers,
        active_ids: s.producers.keys().copied().collect(),
        buf: Vec::new(),
        buf_pos: s.valid_len,
        dirty: false,
    })
}

/// Creates a new, empty topic directory with its first segment, durably.
pub(crate) fn create(dir: &Path, name: TopicName, config: &LogConfig) -> Result<TopicWriter> {
    fs::create_dir_all(dir).map_err(Error::io("create topic directory", dir))?;
    if let Some(parent) = dir.parent() {
        segment::sync_dir(parent)?;
    }
    let active = Arc::new(Segment::create(dir, 0)?);
    let topic = Arc::new(Topic {
        name,
        dir: dir.to_path_buf(),
        segments: RwLock::new(vec![active.clone()]),
    });
    Ok(TopicWriter {
        retention: config.retention_for(&topic.name),
        topic,
        active,
        position: SEGMENT_HEADER,
        next_offset: 0,
        last_ts: 0,
        last_indexed: None,
        pending_index: Vec::new(),
        producers: Producers::new(),
        active_ids: HashSet::new(),
        buf: Vec::new(),
        buf_pos: SEGMENT_HEADER,
        dirty: false,
    })
}

impl TopicWriter {
    /// Next offset to assign (including records not yet durable).
    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Decides, without changing anything, how each record of an append is handled: stored,
    /// or a duplicate of a stored record. Fails the whole append on a sequence error.
    pub(crate) fn decide(&self, records: &[NewRecord]) -> Result<Vec<Decision>> {
        let mut overlay: HashMap<u64, ProducerState> = HashMap::new();
        let mut next = self.next_offset;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let Some(p) = r.producer else {
                out.push(Decision::Store);
                next += 1;
                continue;
            };
            let state = overlay
                .entry(p.producer)
                .or_insert_with(|| self.producers.get(&p.producer).cloned().unwrap_or_default());
            match state.check(p.sequence) {
                SeqCheck::New => {
                    state.record(p.sequence, next);
                    out.push(Decision::Store);
                    next += 1;
                }
                SeqCheck::Duplicate(offset) => out.push(Decision::Duplicate(offset)),
                SeqCheck::Gap(expected) => {
                    return Err(Error::SequenceGap {
                        topic: self.topic.name.to_string(),
                        producer: p.producer,
                        expected,
                        got: p.sequence,
                    })
                }
                SeqCheck::TooOld(oldest) => {
                    return Err(Error::SequenceTooOld {
                        topic: self.topic.name.to_string(),
                        producer: p.producer,
                        sequence: p.sequence,
                        oldest,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Assigns offsets and encodes the records to store; rolls segments as they fill. The
    /// records are not durable until [`TopicWriter::flush`] and [`TopicWriter::sync`].
    pub(crate) fn append(
        &mut self,
        records: &[NewRecord],
        decisions: &[Decision],
        now_ms: u64,
        config: &LogConfig,
    ) -> Result<Vec<Appended>> {
        let mut out = Vec::with_capacity(records.len());
        for (r, d) in records.iter().zip(decisions) {
            if let Decision::Duplicate(offset) = *d {
                out.push(Appended {
                    offset,
                    duplicate: true,
                });
                continue;
            }
            let len = r.encoded_len() as u64;
            if self.position > SEGMENT_HEADER && self.position + len > config.segment_bytes {
                self.roll()?;
            }
            let offset = self.next_offset;
            let ts = now_ms.max(self.last_ts);
            if self.buf.is_empty() {
                self.buf_pos = self.position;
            }
            record::encode(&mut self.buf, offset, ts, r);
            if self
                .last_indexed
                .is_none_or(|l| self.position - l >= config.index_interval_bytes)
            {
                self.pending_index.push(IndexEntry {
                    offset,
                    position: self.position,
                    timestamp_ms: ts,
                });
                self.last_indexed = Some(self.position);
            }
            if let Some(p) = r.producer {
                self.producers
                    .entry(p.producer)
                    .or_default()
                    .record(p.sequence, offset);
                self.active_ids.insert(p.producer);
            }
            self.position += len;
            self.next_offset += 1;
            self.last_ts = ts;
            self.dirty = true;
            out.push(Appended {
                offset,
                duplicate: false,
            });
        }
        Ok(out)
    }

    /// Writes encoded frames to the active segment (not yet synced).
    pub(crate) fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.active
                .file
                .write_all_at(&self.buf, self.buf_pos)
                .map_err(Error::io("write segment", &self.active.path))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Makes written frames durable; returns whether a sync was needed.
    pub(crate) fn sync(&mut self) -> Result<bool> {
        if !self.dirty {
            return Ok(false);
        }
        self.flush()?;
        self.active
            .file
            .sync_data()
            .map_err(Error::io("sync segment", &self.active.path))?;
        self.dirty = false;
        Ok(true)
    }

    /// The file to sync for this batch, if anything was written since the last sync; call
    /// [`TopicWriter::flush`] first and [`TopicWriter::mark_synced`] after the sync.
    pub(crate) fn sync_target(&self) -> Option<(&std::fs::File, &Path)> {
        self.dirty
            .then_some((&self.active.file, self.active.path.as_path()))
    }

    /// Notes that the file returned by [`TopicWriter::sync_target`] was synced.
    pub(crate) fn mark_synced(&mut self) {
        self.dirty = false;
    }

    /// Shows readers everything synced so far.
    pub(crate) fn publish(&mut self) {
        self.active.publish(
            Extent {
                len: self.position,
                next_offset: self.next_offset,
                last_ts: self.last_ts,
            },
            &mut self.pending_index,
        );
    }

    /// Seals the active segment (synced, published, sidecar written) and starts a new one.
    fn roll(&mut self) -> Result<()> {
        self.sync()?;
        self.publish();
        let sealed = &self.active;
        let sidecar = Sidecar {
            base: sealed.base,
            extent: sealed.extent(),
            index: sealed.index(),
            producers: Sidecar::producer_windows(&self.producers, &self.active_ids),
        };
        if let Err(e) = sidecar.write(&self.topic.dir) {
            // Not fatal: the segment is scanned on the next open instead.
            tracing::warn!(error = %e, "cannot write a segment index");
        }
        let next = Arc::new(Segment::create(&self.topic.dir, self.next_offset)?);
        self.topic.push_segment(next.clone());
        self.active = next;
        self.position = SEGMENT_HEADER;
        self.buf_pos = SEGMENT_HEADER;
        self.last_indexed = None;
        self.active_ids.clear();
        Ok(())
    }

    /// Deletes whole sealed segments that are older than the retention age or that put the topic
    /// over its size limit; never the active one. Returns how many were deleted.
    pub(crate) fn enforce_retention(&mut self, now_ms: u64) -> Result<usize> {
        let segs = self.topic.segments();
        let Some((_, sealed)) = segs.split_last() else {
            return Ok(0);
        };
        let mut total: u64 = segs.iter().map(|s| s.extent().len).sum();
        let mut delete = 0;
        for s in sealed {
            let e = s.extent();
            let too_old = self
                .retention
                .max_age
                .is_some_and(|age| e.last_ts.saturating_add(age.as_millis() as u64) < now_ms);
            let too_big = self.retention.max_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            total -= e.len;
            delete += 1;
        }
        if delete == 0 {
            return Ok(0);
        }
        // Out of the readers' view first; readers that already hold a segment keep reading it
        // through their open file after the unlink.
        for s in self.topic.remove_oldest(delete) {
            fs::remove_file(&s.path).map_err(Error::io("delete expired segment", &s.path))?;
            match fs::remove_file(segment::index_path(&self.topic.dir, s.base)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(error = %e, "cannot delete the index of an expired segment");
                }
                _ => {}
            }
        }
        Ok(delete)
    }
}
