//! The broker's core: publish with access control, subscriptions, consumer groups and the
//! dispatchers that serve them. The gRPC service and the in-process client both call this, so
//! there is one messaging model whether or not a network is in between.
//!
//! Owns the [`Log`] handle after `app` builds it. A group has one dispatcher per topic its
//! members' patterns match; a watcher attaches members to topics created after they
//! subscribed (those are read from their first message).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::access::{self, Denied, Peer};
use super::dispatch::{self, Cmd, Handle, Member};
use super::log::{self, Appended, GroupName, Log, NewRecord, PendingAppend, TopicName};
use super::pattern::{InvalidPattern, Pattern};
use super::Delivery;

/// Settings of the broker core.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Ack deadline when a subscriber asks for none.
    pub default_ack_wait: Duration,
    /// Failed deliveries before a message goes to the dead letters, when not asked.
    pub default_max_deliveries: u32,
    /// Most credit a subscriber can hold (deliveries sent but not yet taken by it).
    pub max_credit: u64,
    /// A subscriber's queue of sent deliveries stops growing beyond this many payload bytes.
    pub max_queued_bytes: usize,
    /// Read-ahead records per dispatcher.
    pub pending_records: usize,
    /// How often a group's position is committed at most.
    pub commit_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            default_ack_wait: Duration::from_secs(30),
            default_max_deliveries: 5,
            max_credit: 10_000,
            max_queued_bytes: 8 << 20,
            pending_records: 512,
            commit_interval: Duration::from_millis(100),
        }
    }
}

/// Where a group without a committed position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Only messages published from now on.
    #[default]
    Latest,
    /// From the oldest message kept.
    Earliest,
    /// From this offset (of every matched topic).
    Offset(u64),
    /// From the first message stamped at or after this time (ms since the epoch).
    Time(u64),
}

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub pattern: Pattern,
    /// Named group (shared, durable position) or `None` for a private subscription.
    pub group: Option<GroupName>,
    pub start: Start,
    pub ack_wait: Option<Duration>,
    pub max_deliveries: Option<u32>,
    /// Credit granted at once.
    pub credit: u64,
}

impl SubscribeOptions {
    /// A private subscription to `pattern` from the latest message, with 256 credit.
    pub fn new(pattern: Pattern) -> Self {
        Self {
            pattern,
            group: None,
            start: Start::Latest,
            ack_wait: None,
            max_deliveries: None,
            credit: 256,
        }
    }
}

/// A failed broker operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Pattern(#[from] InvalidPattern),
    #[error(transparent)]
    Log(#[from] log::Error),
    #[error("ack wait of {0} ms is too short: give at least 100 ms")]
    AckWait(u128),
}

/// Counters of one group on one topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct GroupStats {
    pub group: String,
    pub topic: String,
    /// Named (durable) group, or a private subscription.
    pub durable: bool,
    pub members: u64,
    /// Lowest offset not yet acked.
    pub position: u64,
    /// Messages of the topic after the position.
    pub lag: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub dead_lettered: u64,
}

/// Offsets and size of one topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TopicStats {
    pub topic: String,
    pub first_offset: u64,
    pub next_offset: u64,
    /// Messages kept.
    pub depth: u64,
    pub bytes: u64,
    pub segments: u64,
}

struct MemberEntry {
    member: Arc<Member>,
    pattern: Pattern,
    peer: Peer,
    routes: Routes,
}

type Routes = Arc<Mutex<HashMap<TopicName, Handle>>>;

struct Group {
    durable: bool,
    ack_wait: Duration,
    max_deliveries: u32,
    members: HashMap<u64, MemberEntry>,
    dispatchers: HashMap<TopicName, Handle>,
}

struct Inner {
    log: Log,
    config: BrokerConfig,
    groups: Mutex<HashMap<GroupName, Group>>,
    member_ids: AtomicU64,
    delivery_ids: Arc<AtomicU64>,
}

/// The broker core; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Broker {
    /// A broker over `log`; starts the watcher that brings new topics to wildcard subscribers.
    pub fn new(log: Log, config: BrokerConfig) -> Broker {
        let broker = Broker {
            inner: Arc::new(Inner {
                log,
                config,
                groups: Mutex::new(HashMap::new()),
                member_ids: AtomicU64::new(1),
                delivery_ids: Arc::new(AtomicU64::new(1)),
            }),
        };
        tokio::spawn(watch_new_topics(Arc::downgrade(&broker.inner)));
        broker
    }

    /// The log underneath.
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// Appends `records` to `topic` for `peer`; resolves once they are durable.
    pub async fn publish(
        &self,
        peer: &Peer,
        topic: &TopicName,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, Error> {
        Ok(self.submit(peer, topic, records).await?.durable().await?)
    }

    /// Queues an append for `peer` (see [`Log::submit`]); batches queued in turn are stored in
    /// that order.
    pub async fn submit(
        &self,
        peer: &Peer,
        topic: &TopicName,
        records: Vec<NewRecord>,
    ) -> Result<PendingAppend, Error> {
        access::check_publish(peer, topic)?;
        Ok(self.inner.log.submit(topic, records).await?)
    }

    /// Opens a subscription for `peer`.
    pub async fn subscribe(
        &self,
        peer: &Peer,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        access::check_subscribe(peer, &options.pattern, options.group.as_ref())?;
        let ack_wait = options
            .ack_wait
            .unwrap_or(self.inner.config.default_ack_wait);
        if ack_wait < Duration::from_millis(100) {
            return Err(Error::AckWait(ack_wait.as_millis()));
        }
        let (durable, group) = match options.group {
            Some(g) => (true, g),
            None => (
                false,
                GroupName::new(format!("private.{}", uuid::Uuid::new_v4().simple()))?,
            ),
        };
        let id = self.inner.member_ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let member = Arc::new(Member::new(
            id,
            self.inner.config.max_credit,
            self.inner.config.max_queued_bytes,
            tx,
        ));
        member.grant(options.credit);
        let routes: Routes = Arc::default();
        // Resolve starting offsets before taking the lock: they may read the log.
        let topics = self.inner.log.topics();
        let mut starts = HashMap::new();
        for topic in topics
            .iter()
            .filter(|t| options.pattern.matches(t) && access::may_read(peer, t))
        {
            let committed = durable
                .then(|| self.inner.log.committed(&group, topic))
                .flatten();
            let start = match committed {
                Some(c) => c,
                None => self.start_offset(topic, options.start).await?,
            };
            starts.insert(topic.clone(), start);
        }
        {
            let mut groups = lock(&self.inner.groups);
            let g = groups.entry(group.clone()).or_insert_with(|| Group {
                durable,
                ack_wait,
                max_deliveries: options
                    .max_deliveries
                    .filter(|n| *n > 0)
                    .unwrap_or(self.inner.config.default_max_deliveries),
                members: HashMap::new(),
                dispatchers: HashMap::new(),
            });
            for (topic, start) in starts {
                let handle = self.dispatcher(&group, g, &topic, start);
                attach(&member, &routes, topic, handle);
            }
            // A topic created after the list above may already have been seen by the watcher
            // (before this member was registered): attach to such topics now.
            let latest = self.inner.log.topics();
            self.attach_to_new_topics(&group, g, &member, &options.pattern, peer, &routes, &latest);
            g.members.insert(
                id,
                MemberEntry {
                    member: member.clone(),
                    pattern: options.pattern,
                    peer: peer.clone(),
                    routes: routes.clone(),
                },
            );
        }
        Ok(Subscription {
            broker: self.clone(),
            group,
            member,
            routes,
            rx,
        })
    }

    /// The running dispatcher of `group` on `topic`, started at `start` if there is none.
    fn dispatcher(&self, name: &GroupName, g: &mut Group, topic: &TopicName, start: u64) -> Handle {
        g.dispatchers
            .entry(topic.clone())
            .or_insert_with(|| {
                dispatch::spawn(dispatch::Spec {
                    log: self.inner.log.clone(),
                    topic: topic.clone(),
                    group: name.clone(),
                    durable: g.durable,
                    start,
                    ack_wait: g.ack_wait,
                    max_deliveries: g.max_deliveries,
                    pending_records: self.inner.config.pending_records,
                    commit_interval: self.inner.config.commit_interval,
                    delivery_ids: self.inner.delivery_ids.clone(),
                })
            })
            .clone()
    }

    async fn start_offset(&self, topic: &TopicName, start: Start) -> Result<u64, Error> {
        let stats = self.inner.log.topic_stats(topic);
        let (first, next) = stats.map_or((0, 0), |s| (s.first_offset, s.next_offset));
        Ok(match start {
            Start::Latest => next,
            Start::Earliest => first,
            Start::Offset(o) => o.clamp(first, next),
            Start::Time(t) => self.inner.log.offset_for_time(topic, t).await?,
        })
    }

    fn detach(&self, group: &GroupName, id: u64) {
        let mut groups = lock(&self.inner.groups);
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        if let Some(entry) = g.members.remove(&id) {
            entry.member.close();
            for handle in lock(&entry.routes).values() {
                let _ = handle.cmds.send(Cmd::Detach(id));
            }
        }
        if g.members.is_empty() {
            for handle in g.dispatchers.values() {
                let _ = handle.cmds.send(Cmd::Stop);
            }
            groups.remove(group);
        }
    }

    /// Attaches members to topics created since they subscribed.
    fn attach_new_topics(&self, known: &mut usize) {
        let count = self.inner.log.topic_count();
        if count == *known {
            return;
        }
        *known = count;
        let topics = self.inner.log.topics();
        let mut groups = lock(&self.inner.groups);
        for (name, g) in groups.iter_mut() {
            let members: Vec<(Arc<Member>, Pattern, Peer, Routes)> = g
                .members
                .values()
                .map(|m| {
                    (
                        m.member.clone(),
                        m.pattern.clone(),
                        m.peer.clone(),
                        m.routes.clone(),
                    )
                })
                .collect();
            for (member, pattern, peer, routes) in members {
                self.attach_to_new_topics(name, g, &member, &pattern, &peer, &routes, &topics);
            }
        }
    }

    /// Attaches `member` to those of `topics` it matches and is not attached to yet.
    #[allow(clippy::too_many_arguments)]
    fn attach_to_new_topics(
        &self,
        name: &GroupName,
        g: &mut Group,
        member: &Arc<Member>,
        pattern: &Pattern,
        peer: &Peer,
        routes: &Routes,
        topics: &[TopicName],
    ) {
        for topic in topics {
            if lock(routes).contains_key(topic)
                || !pattern.matches(topic)
                || !access::may_read(peer, topic)
            {
                continue;
            }
            // A topic that appeared after the subscription: all of it is new to the
            // subscriber, so read it from its first message (or the group's position).
            let start = g
                .durable
                .then(|| self.inner.log.committed(name, topic))
                .flatten()
                .unwrap_or(0);
            let handle = self.dispatcher(name, g, topic, start);
            attach(member, routes, topic.clone(), handle);
        }
    }

    /// Counters of every active group on every topic.
    pub fn group_stats(&self) -> Vec<GroupStats> {
        let groups = lock(&self.inner.groups);
        let mut out = Vec::new();
        for (name, g) in groups.iter() {
            for (topic, h) in &g.dispatchers {
                let s = &h.stats;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let position = get(&s.position);
                let next = self
                    .inner
                    .log
                    .topic_stats(topic)
                    .map_or(0, |t| t.next_offset);
                out.push(GroupStats {
                    group: name.to_string(),
                    topic: topic.to_string(),
                    durable: g.durable,
                    members: get(&s.members),
                    position,
                    lag: next.saturating_sub(position),
                    in_flight: get(&s.in_flight),
                    delivered: get(&s.delivered),
                    redelivered: get(&s.redelivered),
                    acked: get(&s.acked),
                    dead_lettered: get(&s.dead_lettered),
                });
            }
        }
        out.sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
        out
    }

    /// Offsets and sizes of every topic.
    pub fn topic_stats(&self) -> Vec<TopicStats> {
        self.inner
            .log
            .topics()
            .into_iter()
            .filter_map(|t| {
                self.inner.log.topic_stats(&t).map(|s| TopicStats {
                    topic: t.to_string(),
                    first_offset: s.first_offset,
                    next_offset: s.next_offset,
                    depth: s.next_offset - s.first_offset,
                    bytes: s.bytes,
                    segments: s.segments as u64,
                })
            })
            .collect()
    }
}

fn attach(member: &Arc<Member>, routes: &Routes, topic: TopicName, handle: Handle) {
    let _ = handle.cmds.send(Cmd::Attach(member.clone()));
    lock(routes).insert(topic, handle);
}

async fn watch_new_topics(inner: std::sync::Weak<Inner>) {
    let Some(mut durable) = inner.upgrade().map(|i| i.log.durable_changes()) else {
        return;
    };
    let mut known = 0;
    loop {
        if durable.changed().await.is_err() {
            return;
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        Broker { inner }.attach_new_topics(&mut known);
        // New topics are rare; looking at most every 20 ms keeps this off the hot path.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An open subscription: take deliveries with [`Subscription::next`], then ack or nack them.
/// Dropping it leaves the group; its unacked deliveries go to other members (or wait for the
/// group's next member).
pub struct Subscription {
    broker: Broker,
    group: GroupName,
    member: Arc<Member>,
    routes: Routes,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Subscription {
    /// The group's name (generated for a private subscription).
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The next delivery; `None` once the broker has stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await?;
        self.member.consumed(d.payload.len());
        Some(d)
    }

    /// The next delivery if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Delivery> {
        let d = self.rx.try_recv().ok()?;
        self.member.consumed(d.payload.len());
        Some(d)
    }

    /// Allows `n` more deliveries.
    pub fn credit(&self, n: u64) {
        self.member.grant(n);
    }

    fn send(&self, topic: &TopicName, cmd: Cmd) {
        if let Some(h) = lock(&self.routes).get(topic) {
            let _ = h.cmds.send(cmd);
        }
    }

    /// Acknowledges a delivery: the group is done with it. A stale delivery (one already
    /// delivered again) is ignored.
    pub fn ack(&self, topic: &TopicName, offset: u64, delivery_id: u64) {
        self.send(
            topic,
            Cmd::Ack {
                offset,
                delivery_id,
            },
        );
    }

    /// The delivery failed: deliver it again after `delay` (or dead-letter it).
    pub fn nack(&self, topic: &TopicName, offset: u64, delivery_id: u64, delay: Duration) {
        self.send(
            topic,
            Cmd::Nack {
                offset,
                delivery_id,
                delay,
            },
        );
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.broker.detach(&self.group, self.member.id);
    }
}
