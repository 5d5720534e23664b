//! The writer thread: the only code that changes log files after open.
//!
//! Publishers put requests on a channel (bounded in bytes by the semaphore in [`super::Log`])
//! and wait for a reply. The thread takes the first request, then everything else already
//! queued (up to `max_batch_bytes`), writes it all, syncs each touched file once, then makes the
//! new records visible to readers and replies. This is group commit: the cost of an fsync is
//! shared by every append that arrived while the previous one ran. A failed write or sync
//! stops the writer for good (fail-stop): after an fsync error the page cache can no longer
//! be trusted, so only a reopen, which recovers from what is really on disk, may continue.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::error::{Error, Result};
use super::groups::Groups;
use super::names::{GroupName, TopicName};
use super::record::NewRecord;
use super::segment;
use super::topic::{self, TopicWriter};
use super::{Appended, Shared};

/// A request to the writer thread.
pub(crate) enum Request {
    Append {
        topic: TopicName,
        records: Vec<NewRecord>,
        bytes: usize,
        reply: oneshot::Sender<Result<Vec<Appended>>>,
        /// Held until the request is done, so queued bytes stay bounded.
        permit: OwnedSemaphorePermit,
    },
    Commit {
        group: GroupName,
        topic: TopicName,
        offset: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Retention {
        now_ms: u64,
        reply: oneshot::Sender<Result<usize>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::Append { bytes, .. } => *bytes,
            _ => 64,
        }
    }

    /// Answers with the writer's failure.
    fn fail(self, reason: &str) {
        let err = || Error::Failed {
            reason: reason.to_owned(),
        };
        match self {
            Request::Append { reply, .. } => drop(reply.send(Err(err()))),
            Request::Commit { reply, .. } => drop(reply.send(Err(err()))),
            Request::Retention { reply, .. } => drop(reply.send(Err(err()))),
            Request::Close { reply } => drop(reply.send(())),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An error and its sources on one line.
fn chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// State owned by the writer thread.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub topics: HashMap<TopicName, TopicWriter>,
    pub groups: Groups,
    pub rx: mpsc::Receiver<Request>,
    /// The root's lock file, held for as long as the writer runs.
    pub lock: File,
    pub failed: Option<String>,
}

/// Work accepted in a batch, answered once the batch is durable.
enum Done {
    Append(
        oneshot::Sender<Result<Vec<Appended>>>,
        Vec<Appended>,
        OwnedSemaphorePermit,
    ),
    Commit(oneshot::Sender<Result<()>>),
}

impl Writer {
    /// Runs until closed or until every [`super::Log`] handle is gone.
    pub(crate) fn run(mut self) {
        let interval = self.shared.config.retention_interval;
        let mut last_retention = Instant::now();
        loop {
            let wait = interval
                .saturating_sub(last_retention.elapsed())
                .max(Duration::from_millis(1));
            let first = match self.rx.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut close = false;
            if let Some(first) = first {
                #[cfg(test)]
                let gate = self.shared.clone();
                #[cfg(test)]
                let _held = gate.gate.lock().unwrap_or_else(PoisonError::into_inner);
                let mut bytes = first.bytes();
                let mut batch = vec![first];
                while bytes < self.shared.config.max_batch_bytes {
                    match self.rx.try_recv() {
                        Ok(r) => {
                            bytes += r.bytes();
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
                close = self.process(batch);
            }
            if last_retention.elapsed() >= interval {
                last_retention = Instant::now();
                if self.failed.is_none() {
                    if let Err(e) = self.enforce_retention(now_ms()) {
                        tracing::warn!(error = %chain(&e), "retention of the broker log failed");
                    }
                }
            }
            if close {
                break;
            }
        }
        drop(self.lock);
    }

    fn topic_writer(&mut self, name: &TopicName) -> Result<&mut TopicWriter> {
        if !self.topics.contains_key(name) {
            let dir = self.shared.config.root.join("topics").join(name.as_str());
            let tw = topic::create(&dir, name.clone(), &self.shared.config)?;
            self.shared
                .topics
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.clone(), tw.topic.clone());
            self.topics.insert(name.clone(), tw);
        }
        self.topics
            .get_mut(name)
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.to_string(),
            })
    }

    /// Handles one batch; returns true if it asked to close.
    fn process(&mut self, batch: Vec<Request>) -> bool {
        if let Some(reason) = &self.failed {
            let mut close = false;
            for r in batch {
                close |= matches!(r, Request::Close { .. });
                r.fail(reason);
            }
            return close;
        }
        let now = now_ms();
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let mut done = Vec::with_capacity(batch.len());
        let mut dirty: BTreeSet<TopicName> = BTreeSet::new();
        let mut later = Vec::new();
        let mut fatal: Option<Error> = None;
        let mut appends = 0u64;
        let mut requests = batch.into_iter();
        for req in requests.by_ref() {
            match req {
                Request::Append {
                    topic,
                    records,
                    reply,
                    permit,
                    bytes: _,
                } => {
                    appends += 1;
                    let tw = match self.topic_writer(&topic) {
                        Ok(tw) => tw,
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    };
                    let decisions = match tw.decide(&records) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    };
                    match tw.append(&records, &decisions, now, &shared.config) {
                        Ok(appended) => {
                            dirty.insert(topic);
                            done.push(Done::Append(reply, appended, permit));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(Error::Failed { reason: chain(&e) }));
                            fatal = Some(e);
                            break;
                        }
                    }
                }
                Request::Commit {
                    group,
                    topic,
                    offset,
                    reply,
                } => {
                    let Some(tw) = self.topics.get(&topic) else {
                        let _ = reply.send(Err(Error::UnknownTopic {
                            topic: topic.to_string(),
                        }));
                        continue;
                    };
                    if offset > tw.next_offset() {
                        let _ = reply.send(Err(Error::CommitBeyondEnd {
                            group: group.to_string(),
                            topic: topic.to_string(),
                            offset,
                            next: tw.next_offset(),
                        }));
                        continue;
                    }
                    match self.groups.stage(&group, &topic, offset) {
                        Ok(()) => done.push(Done::Commit(reply)),
                        Err(e) => drop(reply.send(Err(e))),
                    }
                }
                other => later.push(other),
            }
        }

        if fatal.is_none() {
            match self.sync_batch(&dirty) {
                Ok(n) => {
                    counters.syncs.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => fatal = Some(e),
            }
        }
        if let Some(e) = fatal {
            let reason = chain(&e);
            tracing::error!(error = %reason, "the broker log writer failed and stops accepting writes");
            *self
                .shared
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
            for d in done {
                match d {
                    Done::Append(reply, ..) => drop(reply.send(Err(Error::Failed {
                        reason: reason.clone(),
                    }))),
                    Done::Commit(reply) => drop(reply.send(Err(Error::Failed {
                        reason: reason.clone(),
                    }))),
                }
            }
            let mut close = false;
            for r in later.into_iter().chain(requests) {
                close |= matches!(r, Request::Close { .. });
                r.fail(&reason);
            }
            self.failed = Some(reason);
            return close;
        }

        // Durable: show readers, then acknowledge.
        for name in &dirty {
            if let Some(tw) = self.topics.get_mut(name) {
                tw.publish();
            }
        }
        if let Err(e) = self.groups.publish() {
            tracing::warn!(error = %chain(&e), "cannot compact a consumer group offsets file");
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.appends.fetch_add(appends, Ordering::Relaxed);
        counters.largest_batch.fetch_max(appends, Ordering::Relaxed);
        self.shared.durable.send_modify(|n| *n += 1);
        for d in done {
            match d {
                Done::Append(reply, appended, permit) => {
                    let stored = appended.iter().filter(|a| !a.duplicate).count() as u64;
                    counters.records.fetch_add(stored, Ordering::Relaxed);
                    counters
                        .duplicates
                        .fetch_add(appended.len() as u64 - stored, Ordering::Relaxed);
                    // Room in the queue first, so a publisher that sees its answer also sees
                    // the queue without its bytes.
                    drop(permit);
                    let _ = reply.send(Ok(appended));
                }
                Done::Commit(reply) => drop(reply.send(Ok(()))),
            }
        }

        let mut close = false;
        for r in later {
            match r {
                Request::Retention { now_ms, reply } => {
                    let _ = reply.send(self.enforce_retention(now_ms));
                }
                Request::Close { reply } => {
                    close = true;
                    let _ = reply.send(());
                }
                other => other.fail("internal error: request left unhandled"),
            }
        }
        close
    }

    /// Writes what the batch encoded and syncs every touched file once; returns the number of
    /// files synced.
    fn sync_batch(&mut self, dirty: &BTreeSet<TopicName>) -> Result<u64> {
        for name in dirty {
            if let Some(tw) = self.topics.get_mut(name) {
                tw.flush()?;
            }
        }
        self.groups.write_pending()?;
        let mut files: Vec<(&File, &std::path::Path)> = dirty
            .iter()
            .filter_map(|name| self.topics.get(name).and_then(|tw| tw.sync_target()))
            .collect();
        files.extend(self.groups.sync_targets());
        segment::sync_files(&files)?;
        let n = files.len() as u64;
        for name in dirty {
            if let Some(tw) = self.topics.get_mut(name) {
                tw.mark_synced();
            }
        }
        self.groups.mark_synced();
        Ok(n)
    }

    /// Applies retention to every topic; returns the number of segments deleted.
    fn enforce_retention(&mut self, now_ms: u64) -> Result<usize> {
        let mut deleted = 0;
        let mut first_err = None;
        for tw in self.topics.values_mut() {
            match tw.enforce_retention(now_ms) {
                Ok(n) => deleted += n,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.shared
            .counters
            .segments_deleted
            .fetch_add(deleted as u64, Ordering::Relaxed);
        match first_err {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }
}
