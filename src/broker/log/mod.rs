//! The broker's durable storage engine: topics as directories of append-only segment files.
//!
//! Owns everything under its root directory. The gRPC service and the in-process client are the
//! intended callers; nothing else should read or write these files.
//!
//! - [`Log::append`] resolves once the records are durable (fdatasync). One writer thread
//!   batches appends from all publishers and topics and syncs once per touched file per batch
//!   (group commit). Queued bytes are bounded; publishers wait when the writer falls behind.
//! - Idempotent publish: a record with a producer id and a sequence already stored is not
//!   stored again, and the original offset is returned. The state is rebuilt from the log.
//! - On open, the last segment of each topic is scanned and a torn or corrupt tail (a crash in
//!   the middle of a write, never acknowledged) is cut off.
//! - Readers see only durable records and never wait for the writer's I/O.
//! - Retention deletes whole sealed segments by age and by topic size.
//! - Consumer groups commit offsets durably through the same writer.
//!
//! The on-disk format is described in `docs/broker-log.md`.

mod error;
mod groups;
mod names;
mod producers;
mod record;
mod segment;
mod topic;
mod writer;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use names::{GroupName, TopicName};
pub use producers::PRODUCER_WINDOW;
pub use record::{NewRecord, ProducerSeq, StoredRecord, MAX_HEADERS, MAX_HEADER_NAME, MAX_KEY};

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use fs4::fs_std::FileExt;
use tokio::sync::{oneshot, watch, Semaphore};

use groups::{Committed, Groups};
use segment::Step;
use topic::Topic;
use writer::{Request, Writer};

/// Bytes an append costs in the writer queue beyond its records' frames.
const APPEND_OVERHEAD: usize = 64;

/// How long records of a topic are kept; `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete a sealed segment once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the topic is larger than this many bytes.
    pub max_bytes: Option<u64>,
}

/// Settings of a [`Log`]; [`LogConfig::new`] gives defaults that suit the appliance.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory holding `topics/`, `groups/` and the lock file.
    pub root: PathBuf,
    /// A segment is sealed and a new one started once the next record would pass this size.
    pub segment_bytes: u64,
    /// One sparse index entry per this many bytes of segment.
    pub index_interval_bytes: u64,
    /// Largest record, framing included.
    pub max_record_bytes: usize,
    /// Most bytes of appends waiting for the writer; publishers wait beyond it.
    pub queue_bytes: usize,
    /// The writer takes at most about this many bytes into one batch.
    pub max_batch_bytes: usize,
    /// Retention of topics that no rule in `topic_retention` matches.
    pub retention: Retention,
    /// Retention by topic prefix, matched at level boundaries (`clusters` matches `clusters`
    /// and `clusters.a.desired`); the longest matching prefix wins.
    pub topic_retention: Vec<(String, Retention)>,
    /// How often the writer applies retention when it is not asked to.
    pub retention_interval: Duration,
}

impl LogConfig {
    /// Defaults: 64 MiB segments, 4 KiB index interval, 1 MiB records, 32 MiB queue, 4 MiB
    /// batches, retention of 7 days and 1 GiB per topic checked every minute.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            segment_bytes: 64 << 20,
            index_interval_bytes: 4 << 10,
            max_record_bytes: 1 << 20,
            queue_bytes: 32 << 20,
            max_batch_bytes: 4 << 20,
            retention: Retention {
                max_age: Some(Duration::from_secs(7 * 24 * 3600)),
                max_bytes: Some(1 << 30),
            },
            topic_retention: Vec::new(),
            retention_interval: Duration::from_secs(60),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidConfig { reason });
        if self.segment_bytes < 4096 {
            return bad(format!(
                "segment_bytes is {}, at least 4096 is needed",
                self.segment_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1".into());
        }
        if self.max_record_bytes > record::MAX_BODY {
            return bad(format!(
                "max_record_bytes is {}, at most {} is supported",
                self.max_record_bytes,
                record::MAX_BODY
            ));
        }
        if self.queue_bytes < self.max_record_bytes + APPEND_OVERHEAD
            || self.queue_bytes > u32::MAX as usize
        {
            return bad(format!(
                "queue_bytes is {}, it must hold one largest record ({} bytes) and be below 4 GiB",
                self.queue_bytes,
                self.max_record_bytes + APPEND_OVERHEAD
            ));
        }
        if self.retention_interval.is_zero() {
            return bad("retention_interval must not be zero".into());
        }
        Ok(())
    }

    /// The retention rule that applies to `topic`.
    pub fn retention_for(&self, topic: &TopicName) -> Retention {
        let name = topic.as_str();
        self.topic_retention
            .iter()
            .filter(|(prefix, _)| {
                name == prefix
                    || name
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.retention, |(_, r)| *r)
    }
}

/// The outcome of appending one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's offset.
    pub offset: u64,
    /// True if the producer sequence was already stored: nothing new was written and `offset`
    /// is the original one.
    pub duplicate: bool,
}

/// Limits of one read; at least one record is returned if any is available, even if it alone
/// passes `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most records to return.
    pub max_records: usize,
    /// Most bytes (frames on disk) to return.
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_bytes: 1 << 20,
        }
    }
}

/// Offsets and sizes of a topic's durable records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicStats {
    /// Oldest offset still kept.
    pub first_offset: u64,
    /// Offset the next record will get.
    pub next_offset: u64,
    /// Bytes of segment files.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: usize,
}

/// Counters of the writer since open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Batches made durable (one group commit each).
    pub batches: u64,
    /// fdatasync calls that completed batches (each segment roll adds one more, not counted).
    pub syncs: u64,
    /// Append requests handled.
    pub appends: u64,
    /// Most append requests in one batch.
    pub largest_batch: u64,
    /// Records stored.
    pub records: u64,
    /// Records recognised as retries and not stored again.
    pub duplicates: u64,
    /// Times a publisher had to wait for room in the writer queue.
    pub queue_waits: u64,
    /// Bytes of appends queued or being written now.
    pub queued_bytes: u64,
    /// Segments deleted by retention.
    pub segments_deleted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    syncs: AtomicU64,
    appends: AtomicU64,
    largest_batch: AtomicU64,
    records: AtomicU64,
    duplicates: AtomicU64,
    queue_waits: AtomicU64,
    segments_deleted: AtomicU64,
}

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    config: LogConfig,
    topics: RwLock<HashMap<TopicName, Arc<Topic>>>,
    committed: Committed,
    counters: Counters,
    failure: Mutex<Option<String>>,
    durable: watch::Sender<u64>,
    /// Lets tests hold the writer between taking a batch's first request and the rest.
    #[cfg(test)]
    gate: Mutex<()>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    queue: Arc<Semaphore>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Handle to an open broker log; cheap to clone. Dropping the last handle stops the writer
/// after it finishes what is queued; [`Log::close`] also waits for it.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("root", &self.inner.shared.config.root)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (creating if needed) the log at `config.root`, recovering every topic, and starts
    /// the writer thread. Fails if another process has it open.
    pub async fn open(config: LogConfig) -> Result<Log> {
        config.validate()?;
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| Error::Failed {
                reason: format!("opening the log panicked: {e}"),
            })?
    }

    fn open_blocking(config: LogConfig) -> Result<Log> {
        let root = &config.root;
        let topics_dir = root.join("topics");
        fs::create_dir_all(&topics_dir).map_err(Error::io("create log directory", &topics_dir))?;
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("open lock file", &lock_path))?;
        match lock.try_lock_exclusive() {
            Ok(true) => {}
            Ok(false) => return Err(Error::Locked { path: lock_path }),
            Err(e) => return Err(Error::io("lock", &lock_path)(e)),
        }

        let mut writers = HashMap::new();
        let mut topics = HashMap::new();
        for entry in fs::read_dir(&topics_dir).map_err(Error::io("list topics", &topics_dir))? {
            let entry = entry.map_err(Error::io("list topics", &topics_dir))?;
            let path = entry.path();
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| TopicName::new(n).ok())
            else {
                tracing::warn!(path = %path.display(), "ignoring a directory that is not a valid topic name");
                continue;
            };
            if !path.is_dir() {
                continue;
            }
            let tw = topic::recover(&path, name.clone(), &config)?;
            topics.insert(name.clone(), tw.topic.clone());
            writers.insert(name, tw);
        }
        let groups = Groups::open(&root.join("groups"))?;

        let (durable, _) = watch::channel(0);
        let queue = Arc::new(Semaphore::new(config.queue_bytes));
        let shared = Arc::new(Shared {
            committed: groups.committed(),
            config,
            topics: RwLock::new(topics),
            counters: Counters::default(),
            failure: Mutex::new(None),
            durable,
            #[cfg(test)]
            gate: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            topics: writers,
            groups,
            rx,
            lock,
            failed: None,
        };
        let thread = std::thread::Builder::new()
            .name("broker-log-writer".into())
            .spawn(move || writer.run())
            .map_err(Error::io(
                "start the writer thread for",
                &shared.config.root,
            ))?;
        Ok(Log {
            inner: Arc::new(Inner {
                shared,
                tx,
                queue,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn closed_error(&self) -> Error {
        match self
            .inner
            .shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            Some(reason) => Error::Failed { reason },
            None => Error::Closed,
        }
    }

    fn send(&self, req: Request) -> Result<()> {
        self.inner.tx.send(req).map_err(|_| self.closed_error())
    }

    async fn reply<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Appends `records` to `topic` (created on first use) and returns their offsets, in order,
    /// once they are durable. Records whose producer sequence is already stored are not stored
    /// again. The append is all or nothing: an invalid record or a sequence error rejects it
    /// whole. Waits while the writer queue is full.
    pub async fn append(
        &self,
        topic: &TopicName,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>> {
        self.submit(topic, records).await?.durable().await
    }

    /// Queues an append and returns as soon as it is queued (waiting only for room in the
    /// writer queue); [`PendingAppend::durable`] then waits for it to be on disk. Appends
    /// queued one after another are stored in that order, so a caller can keep several in
    /// flight (pipelining) and still keep producer sequences consecutive.
    pub async fn submit(
        &self,
        topic: &TopicName,
        records: Vec<NewRecord>,
    ) -> Result<PendingAppend> {
        let max = self.inner.shared.config.max_record_bytes;
        let mut bytes = APPEND_OVERHEAD;
        for (index, r) in records.iter().enumerate() {
            r.check(max)
                .map_err(|reason| Error::InvalidRecord { index, reason })?;
            bytes += r.encoded_len();
        }
        if records.is_empty() {
            return Ok(PendingAppend {
                log: self.clone(),
                rx: None,
            });
        }
        let queue_bytes = self.inner.shared.config.queue_bytes;
        if bytes > queue_bytes {
            return Err(Error::AppendTooLarge {
                size: bytes,
                max: queue_bytes,
            });
        }
        // Fits in u32: queue_bytes is checked below 4 GiB.
        let n = bytes as u32;
        let permit = match self.inner.queue.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                self.inner
                    .shared
                    .counters
                    .queue_waits
                    .fetch_add(1, Ordering::Relaxed);
                self.inner
                    .queue
                    .clone()
                    .acquire_many_owned(n)
                    .await
                    .map_err(|_| Error::Closed)?
            }
        };
        let (reply, rx) = oneshot::channel();
        self.send(Request::Append {
            topic: topic.clone(),
            records,
            bytes,
            reply,
            permit,
        })?;
        Ok(PendingAppend {
            log: self.clone(),
            rx: Some(rx),
        })
    }

    /// Reads durable records of `topic` from `from` on, within `limits`. If `from` is older than
    /// the oldest record kept, reading starts at the oldest (compare the first offset returned);
    /// at or past the end, the result is empty.
    pub async fn read(
        &self,
        topic: &TopicName,
        from: u64,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>> {
        let topic = self.topic(topic)?;
        tokio::task::spawn_blocking(move || read_blocking(&topic, from, limits))
            .await
            .map_err(|e| Error::Failed {
                reason: format!("a read panicked: {e}"),
            })?
    }

    /// The offset of the first record of `topic` stamped at or after `timestamp_ms`, or the
    /// topic's next offset if every record is older.
    pub async fn offset_for_time(&self, topic: &TopicName, timestamp_ms: u64) -> Result<u64> {
        let topic = self.topic(topic)?;
        tokio::task::spawn_blocking(move || offset_for_time_blocking(&topic, timestamp_ms))
            .await
            .map_err(|e| Error::Failed {
                reason: format!("a lookup panicked: {e}"),
            })?
    }

    /// Durably records that `group` has consumed `topic` up to, not including, `offset`.
    pub async fn commit(&self, group: &GroupName, topic: &TopicName, offset: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Commit {
            group: group.clone(),
            topic: topic.clone(),
            offset,
            reply,
        })?;
        self.reply(rx).await
    }

    /// The last durable commit of `group` on `topic`.
    pub fn committed(&self, group: &GroupName, topic: &TopicName) -> Option<u64> {
        self.inner
            .shared
            .committed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(group)
            .and_then(|g| g.get(topic))
            .copied()
    }

    /// Applies retention now; returns the number of segments deleted.
    pub async fn enforce_retention(&self) -> Result<usize> {
        self.enforce_retention_at(writer::now_ms()).await
    }

    /// Applies retention as if the time were `now_ms`.
    pub(crate) async fn enforce_retention_at(&self, now_ms: u64) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Retention { now_ms, reply })?;
        self.reply(rx).await
    }

    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>> {
        self.inner
            .shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.to_string(),
            })
    }

    /// Names of all topics.
    pub fn topics(&self) -> Vec<TopicName> {
        let mut names: Vec<_> = self
            .inner
            .shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// How many topics exist; cheap, for noticing new topics.
    pub fn topic_count(&self) -> usize {
        self.inner
            .shared
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Offsets and sizes of `topic`, if it exists.
    pub fn topic_stats(&self, topic: &TopicName) -> Option<TopicStats> {
        self.topic(topic).ok().map(|t| t.stats())
    }

    /// The writer's counters.
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.inner.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            batches: get(&c.batches),
            syncs: get(&c.syncs),
            appends: get(&c.appends),
            largest_batch: get(&c.largest_batch),
            records: get(&c.records),
            duplicates: get(&c.duplicates),
            queue_waits: get(&c.queue_waits),
            queued_bytes: (self.inner.shared.config.queue_bytes
                - self.inner.queue.available_permits()) as u64,
            segments_deleted: get(&c.segments_deleted),
        }
    }

    /// A counter bumped after every durable batch, for readers waiting for new records.
    pub fn durable_changes(&self) -> watch::Receiver<u64> {
        self.inner.shared.durable.subscribe()
    }

    /// Finishes queued work, stops the writer and releases the directory lock.
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.send(Request::Close { reply }).is_ok() {
            let _ = rx.await;
        }
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| Error::Failed {
                    reason: format!("joining the writer failed: {e}"),
                })?
                .map_err(|_| Error::Failed {
                    reason: "the writer thread panicked".into(),
                })?;
        }
        self.inner.queue.close();
        Ok(())
    }
}

/// An append queued by [`Log::submit`].
pub struct PendingAppend {
    log: Log,
    rx: Option<oneshot::Receiver<Result<Vec<Appended>>>>,
}

impl PendingAppend {
    /// Waits until the append is durable; returns the records' offsets in order.
    pub async fn durable(self) -> Result<Vec<Appended>> {
        match self.rx {
            None => Ok(Vec::new()),
            Some(rx) => self.log.reply(rx).await,
        }
    }
}

/// Reads records of `topic` from `from` on.
fn read_blocking(topic: &Topic, from: u64, limits: ReadLimits) -> Result<Vec<StoredRecord>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut from = from;
    let mut seg = topic.segment_for(from);
    while let Some(s) = seg {
        let (start, extent) = s.locate(from);
        if from < extent.next_offset {
            let mut frames = s.frames(start, extent.len);
            loop {
                match frames.next_frame()? {
                    Step::End => break,
                    Step::Bad { pos, reason } => {
                        return Err(segment::corrupt(&s.path, pos, reason))
                    }
                    Step::Frame { pos, len, body } => {
                        let meta = record::decode_meta(body)
                            .map_err(|r| segment::corrupt(&s.path, pos, r))?;
                        if meta.offset < from {
                            continue;
                        }
                        let len = len as usize;
                        if !out.is_empty()
                            && (out.len() >= limits.max_records || bytes + len > limits.max_bytes)
                        {
                            return Ok(out);
                        }
                        out.push(
                            record::decode(body).map_err(|r| segment::corrupt(&s.path, pos, r))?,
                        );
                        bytes += len;
                    }
                }
            }
            from = extent.next_offset;
        }
        if out.len() >= limits.max_records {
            break;
        }
        seg = topic.segment_after(s.base);
    }
    Ok(out)
}

/// Finds the first offset of `topic` stamped at or after `timestamp_ms`.
fn offset_for_time_blocking(topic: &Topic, timestamp_ms: u64) -> Result<u64> {
    let segs = topic.segments();
    let next = segs.last().map_or(0, |s| s.extent().next_offset);
    // Timestamps never decrease, so the first segment whose newest record is recent enough
    // holds the answer.
    let Some(s) = segs.iter().find(|s| {
        let e = s.extent();
        e.next_offset > s.base && e.last_ts >= timestamp_ms
    }) else {
        return Ok(next);
    };
    let (start, extent) = s.locate_time(timestamp_ms);
    let mut frames = s.frames(start, extent.len);
    loop {
        match frames.next_frame()? {
            Step::End => return Ok(extent.next_offset),
            Step::Bad { pos, reason } => return Err(segment::corrupt(&s.path, pos, reason)),
            Step::Frame { pos, body, .. } => {
                let meta =
                    record::decode_meta(body).map_err(|r| segment::corrupt(&s.path, pos, r))?;
                if meta.timestamp_ms >= timestamp_ms {
                    return Ok(meta.offset);
                }
            }
        }
    }
}
