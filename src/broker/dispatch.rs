//! One consumer group's delivery of one topic: reads the log, hands messages to the group's
//! members as their credit allows, tracks acks, redelivers, dead-letters and commits the
//! group's position.
//!
//! Owned by [`super::hub`], which starts one dispatcher task per (group, topic) and routes
//! members' acks to it. Rules enforced here:
//! - At least once: the committed position is the lowest offset not yet acked (or
//!   dead-lettered), so after a restart everything unacked is delivered again.
//! - Ordering per key: while a message with key K is in flight, later messages with key K go
//!   only to the same member, in offset order; when a K message must be delivered again, the
//!   later K messages in flight are delivered again after it too.
//! - Bounded memory: at most `pending_records` read-ahead records and
//!   [`READ_AHEAD_MAX_BYTES`] (but always at least one record, however large); in-flight
//!   messages are kept as offsets only and re-read from the log if they must be delivered
//!   again; ack deadlines of acked deliveries are dropped once they outnumber the live ones.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::log::{GroupName, Log, NewRecord, ReadLimits, StoredRecord, TopicName};
use super::Delivery;

/// Most bytes one read from the log returns.
const READ_BYTES: usize = 1 << 20;
/// Most bytes of records one dispatcher holds read ahead: a group stuck on a topic of large
/// messages must not hold `pending_records` of them (512 MiB of 1 MiB messages).
const READ_AHEAD_MAX_BYTES: usize = 4 << 20;
/// Ack deadlines kept beyond those of live deliveries before the stale ones are dropped.
const STALE_DEADLINES: usize = 1024;

/// A subscriber as dispatchers see it: its credit, its queue and how to wake it.
pub(crate) struct Member {
    pub(crate) id: u64,
    credit: AtomicU64,
    max_credit: u64,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    tx: mpsc::UnboundedSender<Delivery>,
    /// Dispatchers this member is attached to, woken when it gets credit or room.
    wakers: std::sync::Mutex<Vec<Arc<Notify>>>,
    closed: AtomicBool,
}

impl Member {
    pub(crate) fn new(
        id: u64,
        max_credit: u64,
        max_queued_bytes: usize,
        tx: mpsc::UnboundedSender<Delivery>,
    ) -> Member {
        Member {
            id,
            credit: AtomicU64::new(0),
            max_credit,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            tx,
            wakers: std::sync::Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Adds credit (capped), waking the dispatchers if it was exhausted.
    pub(crate) fn grant(&self, n: u64) {
        let before = self
            .credit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_add(n).min(self.max_credit))
            })
            .unwrap_or(0);
        if before == 0 && n > 0 {
            self.wake();
        }
    }

    /// The subscriber took a delivery of `bytes` off its queue.
    pub(crate) fn consumed(&self, bytes: usize) {
        let before = self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if before >= self.max_queued_bytes && before - bytes < self.max_queued_bytes {
            self.wake();
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn add_waker(&self, waker: Arc<Notify>) {
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(waker);
    }

    fn wake(&self) {
        for w in self
            .wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            w.notify_one();
        }
    }

    /// Takes one credit if the member can receive now.
    fn try_take(&self) -> bool {
        if self.closed.load(Ordering::Acquire)
            || self.queued_bytes.load(Ordering::Acquire) >= self.max_queued_bytes
        {
            return false;
        }
        self.credit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok()
    }

    fn send(&self, d: Delivery) -> bool {
        let bytes = d.payload.len();
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if self.tx.send(d).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.close();
            return false;
        }
        true
    }
}

/// Counters of one dispatcher, read by the stats endpoints.
#[derive(Debug, Default)]
pub(crate) struct DispatchStats {
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    /// The group's position: lowest offset not yet acked.
    pub(crate) position: AtomicU64,
    pub(crate) members: AtomicU64,
}

/// What members and the hub tell a dispatcher.
pub(crate) enum Cmd {
    Attach(Arc<Member>),
    Detach(u64),
    Ack {
        offset: u64,
        delivery_id: u64,
    },
    Nack {
        offset: u64,
        delivery_id: u64,
        delay: Duration,
    },
    /// Commit and stop (the group has no members left).
    Stop,
}

/// How the hub reaches a running dispatcher.
#[derive(Clone)]
pub(crate) struct Handle {
    pub(crate) cmds: mpsc::UnboundedSender<Cmd>,
    pub(crate) stats: Arc<DispatchStats>,
}

/// Fixed settings of one dispatcher.
pub(crate) struct Spec {
    pub(crate) log: Log,
    pub(crate) topic: TopicName,
    pub(crate) group: GroupName,
    /// Commit the position to the log (named groups); private subscriptions do not.
    pub(crate) durable: bool,
    pub(crate) start: u64,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) pending_records: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) delivery_ids: Arc<AtomicU64>,
}

struct Flight {
    delivery_id: u64,
    member: u64,
    key: Option<Vec<u8>>,
    attempt: u32,
}

struct Waiting {
    key: Option<Vec<u8>>,
    /// Deliveries so far.
    attempt: u32,
    not_before: Instant,
}

struct Dispatcher {
    spec: Spec,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    wake: Arc<Notify>,
    stats: Arc<DispatchStats>,
    members: Vec<Arc<Member>>,
    next_member: usize,
    next_read: u64,
    pending: VecDeque<StoredRecord>,
    /// Bytes of the records in `pending`.
    pending_bytes: usize,
    in_flight: BTreeMap<u64, Flight>,
    redeliver: BTreeMap<u64, Waiting>,
    /// Keys with a message waiting in `redeliver`: their newer messages wait behind it.
    redeliver_keys: HashMap<Vec<u8>, usize>,
    /// Member holding in-flight messages of a key, and how many.
    owners: HashMap<Vec<u8>, (u64, usize)>,
    /// Ack deadlines in delivery order (ack_wait is fixed, so this is time order). Entries of
    /// deliveries since acked stay until they expire or [`Dispatcher::drop_stale_deadlines`]
    /// removes them, so this holds at most `STALE_DEADLINES` more than `in_flight`.
    deadlines: VecDeque<(Instant, u64, u64)>,
    /// Offsets that failed too often, waiting to be copied to the dead-letter topic.
    dead: Vec<(u64, u32)>,
    committed: u64,
    last_commit: Instant,
}

/// Starts a dispatcher task for `spec`.
pub(crate) fn spawn(spec: Spec) -> Handle {
    let (d, handle) = Dispatcher::new(spec);
    tokio::spawn(d.run());
    handle
}

impl Dispatcher {
    fn new(spec: Spec) -> (Dispatcher, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let stats = Arc::new(DispatchStats::default());
        stats.position.store(spec.start, Ordering::Relaxed);
        let d = Dispatcher {
            next_read: spec.start,
            committed: spec.start,
            spec,
            cmds: rx,
            wake,
            stats: stats.clone(),
            members: Vec::new(),
            next_member: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            in_flight: BTreeMap::new(),
            redeliver: BTreeMap::new(),
            redeliver_keys: HashMap::new(),
            owners: HashMap::new(),
            deadlines: VecDeque::new(),
            dead: Vec::new(),
            last_commit: Instant::now(),
        };
        (d, Handle { cmds: tx, stats })
    }

    async fn run(mut self) {
        let mut durable = self.spec.log.durable_changes();
        loop {
            if let Err(e) = self.fill().await {
                tracing::warn!(topic = %self.spec.topic, group = %self.spec.group, error = %e, "reading the topic failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            self.dispatch().await;
            self.dead_letter().await;
            self.commit(false).await;
            let wait_for_log = !self.read_ahead_full();
            let mut timer = self.next_timer();
            if wait_for_log && !self.caught_up() {
                // The topic says there is more than the last read returned (a record can be
                // counted a moment before it is readable): look again shortly rather than wait
                // for the next append, which may never come.
                let soon = Instant::now() + Duration::from_millis(1);
                timer = Some(timer.map_or(soon, |t| t.min(soon)));
            }
            let mut stop = false;
            tokio::select! {
                biased;
                cmd = self.cmds.recv() => match cmd {
                    None => stop = true,
                    Some(cmd) => {
                        stop = self.handle(cmd);
                        while let Ok(cmd) = self.cmds.try_recv() {
                            stop |= self.handle(cmd);
                        }
                    }
                },
                _ = self.wake.notified() => {}
                changed = durable.changed(), if wait_for_log => {
                    if changed.is_err() {
                        stop = true;
                    }
                }
                _ = sleep_until(timer) => {}
            }
            self.expire();
            if stop {
                self.dead_letter().await;
                self.commit(true).await;
                return;
            }
        }
    }

    fn caught_up(&self) -> bool {
        self.spec
            .log
            .topic_stats(&self.spec.topic)
            .is_none_or(|s| self.next_read >= s.next_offset)
    }

    /// True when the read-ahead holds as many records or bytes as it may.
    fn read_ahead_full(&self) -> bool {
        self.pending.len() >= self.spec.pending_records
            || self.pending_bytes >= READ_AHEAD_MAX_BYTES
    }

    /// Reads ahead from the log into `pending`, up to `pending_records` records and about
    /// `READ_AHEAD_MAX_BYTES` (a read returns at least one record, so the last record read may
    /// pass the byte limit; a record is at most 1 MiB).
    async fn fill(&mut self) -> Result<(), super::log::Error> {
        let room = self.spec.pending_records.saturating_sub(self.pending.len());
        if self.read_ahead_full() || self.caught_up() {
            return Ok(());
        }
        let room_bytes = (READ_AHEAD_MAX_BYTES - self.pending_bytes).min(READ_BYTES);
        let records = self
            .spec
            .log
            .read(
                &self.spec.topic,
                self.next_read,
                ReadLimits {
                    max_records: room,
                    max_bytes: room_bytes,
                },
            )
            .await?;
        for r in records {
            self.next_read = r.offset + 1;
            self.pending_bytes += record_bytes(&r);
            self.pending.push_back(r);
        }
        Ok(())
    }

    /// Handles a command; returns true if the dispatcher should stop.
    fn handle(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Attach(m) => {
                m.add_waker(self.wake.clone());
                self.members.push(m);
            }
            Cmd::Detach(id) => {
                self.members.retain(|m| m.id != id);
                let theirs: Vec<u64> = self
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.member == id)
                    .map(|(o, _)| *o)
                    .collect();
                for offset in theirs {
                    // A consumer that goes away with a message unacked counts as a failed
                    // delivery, so a message that crashes its consumers ends in the dead letters.
                    self.fail(offset, Duration::ZERO, true);
                }
            }
            Cmd::Ack {
                offset,
                delivery_id,
            } => {
                if self.current(offset, delivery_id) {
                    if let Some(f) = self.in_flight.remove(&offset) {
                        self.release(&f);
                        self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Cmd::Nack {
                offset,
                delivery_id,
                delay,
            } => {
                if self.current(offset, delivery_id) {
                    self.fail(offset, delay, true);
                }
            }
            Cmd::Stop => return true,
        }
        self.stats
            .members
            .store(self.members.len() as u64, Ordering::Relaxed);
        self.stats
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        false
    }

    /// True if `delivery_id` is the live delivery of `offset` (not a stale, redelivered one).
    fn current(&self, offset: u64, delivery_id: u64) -> bool {
        self.in_flight
            .get(&offset)
            .is_some_and(|f| f.delivery_id == delivery_id)
    }

    fn release(&mut self, f: &Flight) {
        if let Some(key) = &f.key {
            if let Some(owner) = self.owners.get_mut(key) {
                owner.1 = owner.1.saturating_sub(1);
                if owner.1 == 0 {
                    self.owners.remove(key);
                }
            }
        }
    }

    /// The delivery of `offset` failed: deliver it again after `delay`, or dead-letter it if
    /// `counted` and it has failed `max_deliveries` times.
    fn fail(&mut self, offset: u64, delay: Duration, counted: bool) {
        let Some(f) = self.in_flight.remove(&offset) else {
            return;
        };
        self.release(&f);
        if counted && f.attempt >= self.spec.max_deliveries {
            self.dead.push((offset, f.attempt));
        } else {
            self.wait_again(offset, f.key.clone(), f.attempt, delay);
        }
        // Ordering per key: newer messages of this key already out are delivered again after
        // this one, and their current deliveries' acks no longer count.
        if let Some(key) = f.key {
            let later: Vec<u64> = self
                .in_flight
                .range(offset + 1..)
                .filter(|(_, g)| g.key.as_ref() == Some(&key))
                .map(|(o, _)| *o)
                .collect();
            for o in later {
                if let Some(g) = self.in_flight.remove(&o) {
                    self.release(&g);
                    self.wait_again(o, g.key, g.attempt, delay);
                }
            }
        }
    }

    fn wait_again(&mut self, offset: u64, key: Option<Vec<u8>>, attempt: u32, delay: Duration) {
        if let Some(k) = &key {
            *self.redeliver_keys.entry(k.clone()).or_default() += 1;
        }
        self.redeliver.insert(
            offset,
            Waiting {
                key,
                attempt,
                not_before: Instant::now() + delay,
            },
        );
    }

    fn unwait(&mut self, offset: u64) -> Option<Waiting> {
        let w = self.redeliver.remove(&offset)?;
        if let Some(k) = &w.key {
            if let Some(n) = self.redeliver_keys.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.redeliver_keys.remove(k);
                }
            }
        }
        Some(w)
    }

    /// Picks a member that can take a message with `key` now, taking one of its credits.
    fn pick(&mut self, key: Option<&Vec<u8>>) -> Option<Arc<Member>> {
        if let Some(owner) = key.and_then(|k| self.owners.get(k)) {
            let id = owner.0;
            return self
                .members
                .iter()
                .find(|m| m.id == id && m.try_take())
                .cloned();
        }
        let n = self.members.len();
        for i in 0..n {
            let idx = (self.next_member + i) % n;
            if self.members[idx].try_take() {
                self.next_member = (idx + 1) % n;
                return Some(self.members[idx].clone());
            }
        }
        None
    }

    fn deliver(&mut self, member: &Member, record: StoredRecord, attempt: u32) {
        let delivery_id = self.spec.delivery_ids.fetch_add(1, Ordering::Relaxed);
        let offset = record.offset;
        if let Some(key) = &record.key {
            self.owners.entry(key.clone()).or_insert((member.id, 0)).1 += 1;
        }
        self.in_flight.insert(
            offset,
            Flight {
                delivery_id,
                member: member.id,
                key: record.key.clone(),
                attempt,
            },
        );
        self.deadlines
            .push_back((Instant::now() + self.spec.ack_wait, offset, delivery_id));
        let counter = if attempt > 1 {
            &self.stats.redelivered
        } else {
            &self.stats.delivered
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // If the member is gone the delivery is lost with it; its deadline brings it back.
        member.send(Delivery {
            topic: self.spec.topic.clone(),
            offset,
            delivery_id,
            timestamp_ms: record.timestamp_ms,
            key: record.key,
            headers: record.headers,
            payload: record.payload,
            attempt,
        });
    }

    /// Hands out what credit allows: due redeliveries first, then new messages, in offset
    /// order, holding back messages whose key has an older message waiting.
    async fn dispatch(&mut self) {
        if self.members.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut blocked: HashSet<Vec<u8>> = HashSet::new();
        let waiting: Vec<u64> = self.redeliver.keys().copied().collect();
        for offset in waiting {
            let Some((key, not_before, attempt)) = self
                .redeliver
                .get(&offset)
                .map(|w| (w.key.clone(), w.not_before, w.attempt))
            else {
                continue;
            };
            if key.as_ref().is_some_and(|k| blocked.contains(k)) {
                continue;
            }
            let member = if not_before <= now {
                self.pick(key.as_ref())
            } else {
                None
            };
            let Some(member) = member else {
                match key {
                    Some(k) => {
                        blocked.insert(k);
                        continue;
                    }
                    None if not_before > now => continue,
                    None => return,
                }
            };
            let attempt = attempt + 1;
            self.unwait(offset);
            match self.reread(offset).await {
                Some(record) => self.deliver(&member, record, attempt),
                None => member.grant(1),
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let key = self.pending[i].key.clone();
            if let Some(k) = &key {
                if blocked.contains(k) || self.redeliver_keys.contains_key(k) {
                    i += 1;
                    continue;
                }
            }
            let Some(member) = self.pick(key.as_ref()) else {
                match key {
                    Some(k) => {
                        blocked.insert(k);
                        i += 1;
                        continue;
                    }
                    None => break,
                }
            };
            if let Some(record) = self.pending.remove(i) {
                self.pending_bytes = self.pending_bytes.saturating_sub(record_bytes(&record));
                self.deliver(&member, record, 1);
            }
        }
        self.stats
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
    }

    /// Reads one record again for redelivery; `None` if retention has removed it.
    async fn reread(&self, offset: u64) -> Option<StoredRecord> {
        let limits = ReadLimits {
            max_records: 1,
            max_bytes: 1,
        };
        match self.spec.log.read(&self.spec.topic, offset, limits).await {
            Ok(mut records) => match records.pop() {
                Some(r) if r.offset == offset => Some(r),
                _ => {
                    tracing::warn!(topic = %self.spec.topic, offset, "a message due for redelivery was removed by retention");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(topic = %self.spec.topic, offset, error = %e, "cannot read a message for redelivery");
                None
            }
        }
    }

    /// Delivers again what was not acked in time.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, offset, delivery_id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.current(offset, delivery_id) {
                self.fail(offset, Duration::ZERO, true);
            }
        }
        self.drop_stale_deadlines();
    }

    /// Drops the deadlines of deliveries no longer in flight (acked, failed or delivered
    /// again) once they outnumber the live ones by `STALE_DEADLINES`: otherwise a busy group
    /// keeps one per message delivered in the last `ack_wait`. Amortised O(1) per delivery.
    fn drop_stale_deadlines(&mut self) {
        if self.deadlines.len() <= self.in_flight.len() + STALE_DEADLINES {
            return;
        }
        let in_flight = &self.in_flight;
        self.deadlines.retain(|&(_, offset, delivery_id)| {
            in_flight
                .get(&offset)
                .is_some_and(|f| f.delivery_id == delivery_id)
        });
    }

    /// Copies messages that failed too often to `dead-letter.<group>`, then counts them done.
    async fn dead_letter(&mut self) {
        if self.dead.is_empty() {
            return;
        }
        let Ok(topic) = TopicName::new(format!("dead-letter.{}", self.spec.group)) else {
            // Group names are validated with the same rules; a too-long name is the only way
            // here. The message is dropped from delivery but stays in its topic.
            tracing::error!(group = %self.spec.group, "group name too long for a dead-letter topic; dropping failed messages from delivery");
            self.dead.clear();
            return;
        };
        let dead = std::mem::take(&mut self.dead);
        for (offset, attempts) in dead {
            let Some(r) = self.reread(offset).await else {
                continue;
            };
            let mut record = NewRecord::new(r.payload)
                .with_header("dead-letter-topic", self.spec.topic.as_str())
                .with_header("dead-letter-offset", offset.to_string())
                .with_header("dead-letter-deliveries", attempts.to_string());
            record.key = r.key;
            for (name, value) in r.headers {
                if !name.starts_with("dead-letter-") {
                    record.headers.insert(name, value);
                }
            }
            match self.spec.log.append(&topic, vec![record]).await {
                Ok(_) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %self.spec.topic, group = %self.spec.group, offset, attempts, "message moved to {topic} after failed deliveries");
                }
                Err(e) => {
                    // Keep it: it is retried on the next round rather than lost.
                    tracing::error!(error = %e, topic = %topic, "cannot write a dead letter; will retry");
                    self.dead.push((offset, attempts));
                }
            }
        }
    }

    /// The lowest offset not yet done: everything below it was acked or dead-lettered.
    fn position(&self) -> u64 {
        let mut p = self.next_read;
        if let Some(r) = self.pending.front() {
            p = p.min(r.offset);
        }
        if let Some((o, _)) = self.in_flight.first_key_value() {
            p = p.min(*o);
        }
        if let Some((o, _)) = self.redeliver.first_key_value() {
            p = p.min(*o);
        }
        if let Some(o) = self.dead.iter().map(|(o, _)| *o).min() {
            p = p.min(o);
        }
        p
    }

    async fn commit(&mut self, now: bool) {
        let position = self.position();
        self.stats.position.store(position, Ordering::Relaxed);
        if !self.spec.durable || position <= self.committed {
            return;
        }
        if !now && self.last_commit.elapsed() < self.spec.commit_interval {
            return;
        }
        match self
            .spec
            .log
            .commit(&self.spec.group, &self.spec.topic, position)
            .await
        {
            Ok(()) => self.committed = position,
            Err(e) => {
                tracing::warn!(group = %self.spec.group, topic = %self.spec.topic, error = %e, "cannot commit the group's position; will retry")
            }
        }
        self.last_commit = Instant::now();
    }

    /// When the loop must wake up at the latest.
    fn next_timer(&self) -> Option<Instant> {
        let mut at = self.deadlines.front().map(|d| d.0);
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(t) = self.redeliver.values().map(|w| w.not_before).min() {
            consider(t.max(Instant::now() + Duration::from_millis(1)));
        }
        if self.spec.durable && self.position() > self.committed {
            consider(self.last_commit + self.spec.commit_interval);
        }
        at
    }
}

/// What a record read ahead costs in memory, about.
fn record_bytes(r: &StoredRecord) -> usize {
    r.payload.len()
        + r.key.as_ref().map_or(0, Vec::len)
        + r.headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::log::LogConfig;

    fn spec(log: Log, topic: &str) -> Spec {
        Spec {
            log,
            topic: TopicName::new(topic).expect("topic"),
            group: GroupName::new("g").expect("group"),
            durable: false,
            start: 0,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            pending_records: 512,
            commit_interval: Duration::from_millis(100),
            delivery_ids: Arc::new(AtomicU64::new(1)),
        }
    }

    async fn log_with(
        dir: &std::path::Path,
        topic: &str,
        batches: usize,
        batch: Vec<NewRecord>,
    ) -> Log {
        let log = Log::open(LogConfig::new(dir)).await.expect("open log");
        let t = TopicName::new(topic).expect("topic");
        for _ in 0..batches {
            log.append(&t, batch.clone()).await.expect("append");
        }
        log
    }

    #[tokio::test]
    async fn read_ahead_of_large_messages_is_capped_in_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let big = vec![NewRecord::new(vec![7u8; 512 << 10]); 8];
        let log = log_with(dir.path(), "blobs", 8, big).await;
        let (mut d, _handle) = Dispatcher::new(spec(log, "blobs"));
        // No member ever takes anything: read-ahead is all the memory the group holds.
        for _ in 0..100 {
            d.fill().await.expect("fill");
        }
        let bytes: usize = d.pending.iter().map(|r| r.payload.len()).sum();
        assert!(!d.pending.is_empty(), "reads ahead at least one message");
        assert!(
            bytes <= (4 << 20) + (512 << 10),
            "{} records, {} KiB read ahead for a stuck group",
            d.pending.len(),
            bytes >> 10
        );
    }

    #[tokio::test]
    async fn acked_deliveries_leave_no_ack_deadlines_behind() {
        let dir = tempfile::tempdir().expect("tmp");
        let small = vec![NewRecord::new(b"job".to_vec()); 500];
        let log = log_with(dir.path(), "jobs", 10, small).await;
        let (mut d, _handle) = Dispatcher::new(spec(log, "jobs"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let member = Arc::new(Member::new(1, 10_000, 8 << 20, tx));
        member.grant(10_000);
        d.handle(Cmd::Attach(member.clone()));
        let mut acked = 0;
        for _ in 0..10_000 {
            if acked == 5000 {
                break;
            }
            d.fill().await.expect("fill");
            d.dispatch().await;
            while let Ok(delivery) = rx.try_recv() {
                member.consumed(delivery.payload.len());
                member.grant(1);
                d.handle(Cmd::Ack {
                    offset: delivery.offset,
                    delivery_id: delivery.delivery_id,
                });
                acked += 1;
            }
            d.expire();
        }
        assert_eq!(acked, 5000);
        assert!(d.in_flight.is_empty());
        assert!(
            d.deadlines.len() <= 1024,
            "{} ack deadlines kept for {} deliveries in flight",
            d.deadlines.len(),
            d.in_flight.len()
        );
    }
}
