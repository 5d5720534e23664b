//! The broker client used by the agent, the gateway and the appliance's own components.
//!
//! One API, two transports: [`Client::local`] calls the broker core in process (no network
//! hop, same semantics), [`Client::connect`] speaks gRPC over mutual TLS to one or more broker
//! endpoints. Over gRPC the client reconnects with exponential backoff, moving to the next
//! endpoint on each failure; publishes carry a producer id and consecutive sequence numbers,
//! so a retry after a lost answer never stores a message twice; subscriptions in a named group
//! resume from the group's committed position.
//!
//! Rule enforced here: a producer sequence is never reused for different content. After a
//! publish fails, its batch may or may not be stored, so the next batch to that topic goes
//! out under a fresh producer id; otherwise the broker would answer it as a duplicate of the
//! failed one and drop it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::access::Peer;
use super::hub::{Broker, Start, SubscribeOptions};
use super::log::{NewRecord, TopicName, PRODUCER_WINDOW};
use super::proto::broker_client::BrokerClient;
use super::{proto, Delivery};

/// A failed client operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker refused the request; retrying the same request will not help.
    #[error("the broker refused the request: {}", .0.message())]
    Refused(Box<Status>),
    /// No endpoint could be reached (or none answered) in time.
    #[error("no broker endpoint answered within {waited:?} (last error: {last}); check the endpoints and the network")]
    Unreachable { waited: Duration, last: String },
    /// The configuration cannot work.
    #[error("invalid broker client configuration: {0}")]
    Config(String),
    /// A local operation failed.
    #[error(transparent)]
    Broker(#[from] super::hub::Error),
    /// The client or subscription was closed.
    #[error("the broker client is closed")]
    Closed,
}

/// Where and how to reach the broker over gRPC.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Broker URLs such as `https://10.0.0.5:8444`, tried in order on failure.
    pub endpoints: Vec<String>,
    /// The appliance CA (PEM) that the brokers' certificates chain to.
    pub ca_pem: String,
    /// This client's certificate and key (PEM), issued by the appliance.
    pub cert_pem: String,
    pub key_pem: String,
    /// Name to check the brokers' certificates against, if not the endpoint's host.
    pub server_name: Option<String>,
    /// First retry delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a publish keeps retrying before it fails.
    pub publish_timeout: Duration,
}

impl RemoteConfig {
    /// Defaults: backoff 100 ms to 5 s, publishes retried for 5 minutes.
    pub fn new(endpoints: Vec<String>, ca_pem: String, cert_pem: String, key_pem: String) -> Self {
        Self {
            endpoints,
            ca_pem,
            cert_pem,
            key_pem,
            server_name: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(300),
        }
    }
}

enum Transport {
    Local(Broker),
    Remote(Box<Remote>),
}

struct Remote {
    config: RemoteConfig,
    /// The connected channel and the index of its endpoint.
    channel: tokio::sync::Mutex<Option<(usize, Channel)>>,
    next_endpoint: AtomicU64,
}

struct Inner {
    transport: Transport,
    /// Producer id and next sequence per topic; the async lock keeps one publish per topic in
    /// flight so sequences reach the broker in order.
    sequences: Mutex<HashMap<TopicName, Arc<tokio::sync::Mutex<Producer>>>>,
}

/// The producer id [`Client::publish`] uses on one topic, and its next sequence.
struct Producer {
    id: u64,
    next: u64,
}

impl Default for Producer {
    fn default() -> Self {
        Producer {
            id: random_producer(),
            next: 0,
        }
    }
}

/// A broker client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A permanent gRPC error: retrying cannot change the answer.
fn permanent(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::Unimplemented
    )
}

fn random_producer() -> u64 {
    // Zero means "no producer" on the wire.
    rand::random::<u64>().max(1)
}

impl Client {
    /// A client of the broker in this process, acting as the appliance.
    pub fn local(broker: Broker) -> Client {
        Client::with(Transport::Local(broker))
    }

    /// A client of remote brokers. Connects lazily; fails only on a bad configuration.
    pub fn connect(config: RemoteConfig) -> Result<Client, Error> {
        if config.endpoints.is_empty() {
            return Err(Error::Config("give at least one broker endpoint".into()));
        }
        for e in &config.endpoints {
            Endpoint::from_shared(e.clone())
                .map_err(|err| Error::Config(format!("endpoint {e:?}: {err}")))?;
        }
        Ok(Client::with(Transport::Remote(Box::new(Remote {
            config,
            channel: tokio::sync::Mutex::new(None),
            next_endpoint: AtomicU64::new(0),
        }))))
    }

    fn with(transport: Transport) -> Client {
        Client {
            inner: Arc::new(Inner {
                transport,
                sequences: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Publishes `messages` to `topic`; returns their offsets once they are durable. Over gRPC
    /// it retries through failures (reconnecting, failing over) until `publish_timeout`,
    /// without ever storing a message twice. A batch of more than [`PRODUCER_WINDOW`] messages
    /// goes out as several requests, each within the window the broker recognises retries in.
    ///
    /// On an error the batch (or, for a split batch, part of it) may have been stored; a
    /// caller that publishes it again may store it twice (at least once).
    pub async fn publish(&self, topic: &str, messages: Vec<NewRecord>) -> Result<Vec<u64>, Error> {
        let topic = TopicName::new(topic).map_err(super::hub::Error::from)?;
        let slot = self
            .inner
            .sequences
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.clone())
            .or_default()
            .clone();
        let mut producer = slot.lock().await;
        let published = self.publish_as(&mut producer, &topic, messages).await;
        if published.is_err() {
            // Whatever was sent may be stored under these sequences: never send them again
            // with other content.
            *producer = Producer::default();
        }
        published
    }

    /// Publishes under `producer`, advancing its sequence past every request answered.
    async fn publish_as(
        &self,
        producer: &mut Producer,
        topic: &TopicName,
        messages: Vec<NewRecord>,
    ) -> Result<Vec<u64>, Error> {
        match &self.inner.transport {
            Transport::Local(broker) => {
                // In process there is no lost answer to retry, so no window to keep within.
                let n = messages.len() as u64;
                let records = messages
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| m.with_producer(producer.id, producer.next + i as u64))
                    .collect();
                let offsets = broker
                    .publish(&Peer::Appliance, topic, records)
                    .await?
                    .into_iter()
                    .map(|a| a.offset)
                    .collect();
                producer.next += n;
                Ok(offsets)
            }
            Transport::Remote(remote) => {
                let mut offsets = Vec::with_capacity(messages.len());
                let mut rest = messages;
                // At least one request, even for an empty batch, so that a refusal is reported.
                loop {
                    let tail = rest.split_off(rest.len().min(PRODUCER_WINDOW));
                    let chunk = std::mem::replace(&mut rest, tail);
                    let n = chunk.len() as u64;
                    let req = request(topic, producer.id, producer.next, chunk, 0);
                    offsets.extend(remote.publish(req).await?);
                    producer.next += n;
                    if rest.is_empty() {
                        return Ok(offsets);
                    }
                }
            }
        }
    }

    /// A publisher for one topic that keeps many batches in flight (pipelining): each
    /// [`Publisher::send`] returns once the batch is queued, with a handle that resolves when
    /// it is durable.
    pub fn publisher(&self, topic: &str) -> Result<Publisher, Error> {
        let topic = TopicName::new(topic).map_err(super::hub::Error::from)?;
        let (tx, rx) = mpsc::channel(PIPELINE);
        let producer = random_producer();
        match &self.inner.transport {
            Transport::Local(broker) => {
                tokio::spawn(local_pipeline(broker.clone(), topic, producer, rx));
            }
            Transport::Remote(_) => {
                tokio::spawn(remote_pipeline(self.clone(), topic, producer, rx));
            }
        }
        Ok(Publisher { tx })
    }

    /// Opens a subscription. Over gRPC it reconnects by itself; a subscription in a named
    /// group resumes from the group's position, a private one from after the last message it
    /// received.
    pub async fn subscribe(&self, options: SubscribeOptions) -> Result<ClientSubscription, Error> {
        let window = options.credit.clamp(1, 10_000);
        let (tx, rx) = mpsc::channel(window as usize);
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        match &self.inner.transport {
            Transport::Local(broker) => {
                let mut options = options;
                options.credit = window;
                let sub = broker.subscribe(&Peer::Appliance, options).await?;
                tokio::spawn(local_subscription(sub, tx, ctl_rx));
            }
            Transport::Remote(_) => {
                // The first connection is made here so that a refusal (bad pattern, not
                // allowed) is reported to the caller instead of retried for ever.
                let (stream, requests) = self.open_remote(&options, window, None).await?;
                tokio::spawn(remote_subscription(
                    self.clone(),
                    options,
                    window,
                    stream,
                    requests,
                    tx,
                    ctl_rx,
                ));
            }
        }
        Ok(ClientSubscription {
            rx,
            ctl,
            window,
            taken: 0,
        })
    }

    fn remote(&self) -> Result<&Remote, Error> {
        match &self.inner.transport {
            Transport::Remote(r) => Ok(r),
            Transport::Local(_) => Err(Error::Closed),
        }
    }

    /// Opens a Subscribe stream, retrying unreachable endpoints until `publish_timeout`.
    async fn open_remote(
        &self,
        options: &SubscribeOptions,
        window: u64,
        resume: Option<Start>,
    ) -> Result<
        (
            tonic::Streaming<proto::SubscribeResponse>,
            mpsc::Sender<proto::SubscribeRequest>,
        ),
        Error,
    > {
        let remote = self.remote()?;
        remote
            .retry(|channel| {
                let open = open_request(options, window, resume);
                async move {
                    let (requests, rx) = mpsc::channel(64);
                    requests
                        .send(open)
                        .await
                        .map_err(|_| Status::cancelled("closed"))?;
                    let mut stream = BrokerClient::new(channel)
                        .subscribe(ReceiverStream::new(rx))
                        .await?
                        .into_inner();
                    // The server answers `subscribed` first; errors (refusals) come instead.
                    match stream.message().await? {
                        Some(_) => Ok((stream, requests)),
                        None => Err(Status::unavailable("the subscription closed at once")),
                    }
                }
            })
            .await
    }
}

/// Batches a pipelined publisher keeps in flight.
const PIPELINE: usize = 256;

type Reply = oneshot::Sender<Result<Vec<u64>, Error>>;

/// A pipelined publisher to one topic; see [`Client::publisher`].
pub struct Publisher {
    tx: mpsc::Sender<(Vec<NewRecord>, Reply)>,
}

/// Resolves when a batch sent by a [`Publisher`] is durable.
pub struct PublishAck(oneshot::Receiver<Result<Vec<u64>, Error>>);

impl PublishAck {
    /// The batch's offsets, once durable.
    pub async fn wait(self) -> Result<Vec<u64>, Error> {
        self.0.await.map_err(|_| Error::Closed)?
    }
}

impl Publisher {
    /// Queues a batch; waits only while the pipeline is full.
    pub async fn send(&self, messages: Vec<NewRecord>) -> Result<PublishAck, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((messages, reply))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(PublishAck(rx))
    }
}

async fn local_pipeline(
    broker: Broker,
    topic: TopicName,
    producer: u64,
    mut rx: mpsc::Receiver<(Vec<NewRecord>, Reply)>,
) {
    let mut next = 0u64;
    while let Some((messages, reply)) = rx.recv().await {
        let n = messages.len() as u64;
        let records = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.with_producer(producer, next + i as u64))
            .collect();
        match broker.submit(&Peer::Appliance, &topic, records).await {
            Ok(pending) => {
                next += n;
                tokio::spawn(async move {
                    let result = pending
                        .durable()
                        .await
                        .map(|a| a.into_iter().map(|a| a.offset).collect())
                        .map_err(|e| Error::Broker(e.into()));
                    let _ = reply.send(result);
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }
}

/// Most records, and about the most bytes, one coalesced request carries.
const COALESCE_RECORDS: usize = 256;
const COALESCE_BYTES: usize = 1 << 20;

/// Batches queued on a pipelined publisher and not yet sent, merged into one request: the
/// callers' batches in order, each with its size and where to send its offsets.
#[derive(Default)]
struct Coalesced {
    messages: Vec<NewRecord>,
    bytes: usize,
    replies: Vec<(usize, Reply)>,
}

impl Coalesced {
    fn fits(&self, batch: &[NewRecord]) -> bool {
        let bytes: usize = batch.iter().map(NewRecord::encoded_len).sum();
        self.messages.is_empty()
            || (self.messages.len() + batch.len() <= COALESCE_RECORDS
                && self.bytes + bytes <= COALESCE_BYTES)
    }

    fn push(&mut self, batch: Vec<NewRecord>, reply: Reply) {
        self.bytes += batch.iter().map(NewRecord::encoded_len).sum::<usize>();
        self.replies.push((batch.len(), reply));
        self.messages.extend(batch);
    }
}

type Sent = (proto::PublishRequest, Vec<(usize, Reply)>);

/// Refusals that end a pipelined publisher for good: the broker will not take anything from
/// this certificate on this topic (revoked, unknown, not allowed).
fn refuses_publisher(s: &Status) -> bool {
    matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
}

/// How one PublishStream call ended.
enum StreamEnd {
    /// The input is closed and every batch answered.
    Done,
    /// The connection or the stream failed; reconnect and resend.
    Lost(Status),
    /// The broker refused this publisher; see [`refuses_publisher`].
    Refused(Status),
}

/// The state of a pipelined publisher that outlives one PublishStream call.
struct Pipeline {
    topic: TopicName,
    producer: u64,
    next_seq: u64,
    next_id: u64,
    /// Requests sent and not yet answered, oldest first; resent after a reconnect.
    unanswered: VecDeque<Sent>,
    /// Records sent but not answered stay within the log's producer window, so that after a
    /// reconnect every one of them can be resent and recognised if it was already stored.
    in_flight_records: usize,
    held: Coalesced,
    /// A batch that did not fit into `held`; it starts the next one.
    overflow: Option<(Vec<NewRecord>, Reply)>,
    input_open: bool,
    /// An answer arrived since this was last cleared.
    progress: bool,
}

impl Pipeline {
    fn idle(&self) -> bool {
        self.unanswered.is_empty() && self.held.messages.is_empty() && self.overflow.is_none()
    }

    /// Answers every batch the pipeline holds with `error()`. Those sent may have been stored
    /// under their sequences, so later batches go out under a fresh producer id.
    fn fail_all(&mut self, error: impl Fn() -> Error) {
        let held = std::mem::take(&mut self.held).replies;
        let replies = self
            .unanswered
            .drain(..)
            .flat_map(|(_, replies)| replies)
            .chain(held)
            .map(|(_, reply)| reply)
            .chain(self.overflow.take().map(|(_, reply)| reply));
        for reply in replies {
            let _ = reply.send(Err(error()));
        }
        self.in_flight_records = 0;
        self.producer = random_producer();
        self.next_seq = 0;
    }

    /// Runs one PublishStream call on `channel` until it ends.
    async fn run(
        &mut self,
        channel: Channel,
        rx: &mut mpsc::Receiver<(Vec<NewRecord>, Reply)>,
    ) -> StreamEnd {
        let (requests, req_rx) = mpsc::channel(PIPELINE * 2);
        for (req, _) in &self.unanswered {
            let _ = requests.try_send(req.clone());
        }
        let mut answers = match BrokerClient::new(channel)
            .publish_stream(ReceiverStream::new(req_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            // The call itself refused: nothing this publisher sends can be taken.
            Err(s) if permanent(&s) => return StreamEnd::Refused(s),
            Err(s) => return StreamEnd::Lost(s),
        };
        loop {
            if !self.held.messages.is_empty()
                && self.in_flight_records + self.held.messages.len() <= PRODUCER_WINDOW
                && self.unanswered.len() < PIPELINE
            {
                let batch = std::mem::take(&mut self.held);
                let n = batch.messages.len();
                let req = request(
                    &self.topic,
                    self.producer,
                    self.next_seq,
                    batch.messages,
                    self.next_id,
                );
                self.next_seq += n as u64;
                self.next_id += 1;
                self.in_flight_records += n;
                let _ = requests.send(req.clone()).await;
                self.unanswered.push_back((req, batch.replies));
                if let Some((messages, reply)) = self.overflow.take() {
                    self.held.push(messages, reply);
                }
            }
            if !self.input_open && self.idle() {
                return StreamEnd::Done;
            }
            tokio::select! {
                input = rx.recv(), if self.input_open && self.overflow.is_none() => match input {
                    Some(first) => {
                        let mut next = Some(first);
                        while let Some((messages, reply)) = next.take() {
                            if messages.len() > PRODUCER_WINDOW {
                                let _ = reply.send(Err(Error::Config(format!(
                                    "a batch of {} messages is more than a publisher may have in flight ({PRODUCER_WINDOW}): split it",
                                    messages.len()
                                ))));
                            } else if self.held.fits(&messages) {
                                self.held.push(messages, reply);
                            } else {
                                self.overflow = Some((messages, reply));
                                break;
                            }
                            // Take what else is already queued, to send it in one request.
                            next = rx.try_recv().ok();
                        }
                    }
                    None => self.input_open = false,
                },
                answer = answers.message() => match answer {
                    Ok(Some(a)) => {
                        self.progress = true;
                        if self.unanswered.front().is_some_and(|(r, _)| r.request_id == a.request_id) {
                            if let Some((r, replies)) = self.unanswered.pop_front() {
                                self.in_flight_records -= r.messages.len();
                                let mut offsets = a.offsets.into_iter();
                                for (n, reply) in replies {
                                    let _ = reply.send(Ok(offsets.by_ref().take(n).collect()));
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        return StreamEnd::Lost(Status::unavailable("the broker ended the publish stream"))
                    }
                    Err(s) if refuses_publisher(&s) => return StreamEnd::Refused(s),
                    Err(s) if permanent(&s) => {
                        // The first unanswered request was refused (a bad message, a sequence
                        // the broker does not expect); it cannot be retried, and later ones
                        // would now leave a gap in the sequence. The broker stopped reading
                        // after it, so the publisher goes on with a fresh producer.
                        if let Some((_, replies)) = self.unanswered.pop_front() {
                            refuse_all(replies, &s);
                        }
                        let aborted = Status::aborted(format!(
                            "an earlier batch of this publisher was refused: {}",
                            s.message()
                        ));
                        self.fail_all(|| Error::Refused(Box::new(aborted.clone())));
                        return StreamEnd::Lost(s);
                    }
                    Err(s) => return StreamEnd::Lost(s),
                },
            }
        }
    }
}

fn refuse_all(replies: Vec<(usize, Reply)>, status: &Status) {
    for (_, reply) in replies {
        let _ = reply.send(Err(Error::Refused(Box::new(status.clone()))));
    }
}

/// Runs a pipelined publisher over PublishStream. Batches queued while earlier ones are in
/// flight are merged into one request (fewer, larger appends), and every unanswered request
/// is resent with the same sequences after a reconnect, so nothing is lost or stored twice.
///
/// Failures: a transient one (broker unreachable, stream lost) is retried with exponential
/// backoff; batches that stay unanswered for `publish_timeout` fail with
/// [`Error::Unreachable`]. A refusal of the publisher itself (revoked or unknown certificate,
/// topic not allowed) fails every batch queued or in flight, and every later one, with
/// [`Error::Refused`]. After a failure later batches use a fresh producer id, so a sequence is
/// never reused for different content.
async fn remote_pipeline(
    client: Client,
    topic: TopicName,
    producer: u64,
    mut rx: mpsc::Receiver<(Vec<NewRecord>, Reply)>,
) {
    let Ok(remote) = client.remote() else { return };
    let mut pipe = Pipeline {
        topic,
        producer,
        next_seq: 0,
        next_id: 1,
        unanswered: VecDeque::new(),
        in_flight_records: 0,
        held: Coalesced::default(),
        overflow: None,
        input_open: true,
        progress: false,
    };
    let mut backoff = remote.config.backoff_min;
    // Since when batches have been waiting without an answer.
    let mut stalled_since: Option<tokio::time::Instant> = None;
    loop {
        let end = match remote.channel().await {
            Ok(channel) => pipe.run(channel, &mut rx).await,
            Err(s) => StreamEnd::Lost(s),
        };
        let lost = match end {
            StreamEnd::Done => return,
            StreamEnd::Refused(s) => {
                tracing::warn!(topic = %pipe.topic, error = %s, "the broker refused a publisher");
                pipe.fail_all(|| Error::Refused(Box::new(s.clone())));
                // Batches already queued and any sent later get the same answer, until the
                // owner drops the publisher.
                while let Some((_, reply)) = rx.recv().await {
                    let _ = reply.send(Err(Error::Refused(Box::new(s.clone()))));
                }
                return;
            }
            StreamEnd::Lost(s) => s,
        };
        tracing::debug!(topic = %pipe.topic, error = %lost, "publish stream lost; publisher retrying");
        if std::mem::take(&mut pipe.progress) {
            backoff = remote.config.backoff_min;
            stalled_since = None;
        }
        if pipe.idle() && rx.is_empty() {
            stalled_since = None;
        } else {
            let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() + backoff > remote.config.publish_timeout {
                let waited = since.elapsed();
                let last = lost.message().to_string();
                let unreachable = || Error::Unreachable {
                    waited,
                    last: last.clone(),
                };
                pipe.fail_all(unreachable);
                while let Ok((_, reply)) = rx.try_recv() {
                    let _ = reply.send(Err(unreachable()));
                }
                stalled_since = None;
            }
        }
        if !pipe.input_open && pipe.idle() {
            return;
        }
        remote.forget().await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(remote.config.backoff_max);
    }
}

fn request(
    topic: &TopicName,
    producer: u64,
    first_sequence: u64,
    messages: Vec<NewRecord>,
    request_id: u64,
) -> proto::PublishRequest {
    proto::PublishRequest {
        topic: topic.to_string(),
        producer_id: producer,
        first_sequence,
        request_id,
        messages: messages
            .into_iter()
            .map(|m| proto::Message {
                key: m.key,
                headers: m.headers.into_iter().collect(),
                payload: m.payload,
            })
            .collect(),
    }
}

fn open_request(
    options: &SubscribeOptions,
    window: u64,
    resume: Option<Start>,
) -> proto::SubscribeRequest {
    use proto::start_position::At;
    let at = match resume.unwrap_or(options.start) {
        Start::Latest => At::Latest(proto::Empty {}),
        Start::Earliest => At::Earliest(proto::Empty {}),
        Start::Offset(o) => At::Offset(o),
        Start::Time(t) => At::TimeMs(t),
    };
    proto::SubscribeRequest {
        kind: Some(proto::subscribe_request::Kind::Open(proto::Open {
            pattern: options.pattern.to_string(),
            group: options
                .group
                .as_ref()
                .map(|g| g.to_string())
                .unwrap_or_default(),
            start: Some(proto::StartPosition { at: Some(at) }),
            ack_wait_ms: options
                .ack_wait
                .map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32),
            max_deliveries: options.max_deliveries.unwrap_or(0),
            credit: window.min(u32::MAX as u64) as u32,
        })),
    }
}

impl Remote {
    /// The current channel, connecting (with fail-over) if there is none.
    async fn channel(&self) -> Result<Channel, Status> {
        let mut current = self.channel.lock().await;
        if let Some((_, c)) = current.as_ref() {
            return Ok(c.clone());
        }
        let n = self.config.endpoints.len();
        let start = self.next_endpoint.load(Ordering::Relaxed) as usize;
        let mut last = Status::unavailable("no endpoint tried");
        for i in 0..n {
            let idx = (start + i) % n;
            match self.dial(idx).await {
                Ok(c) => {
                    *current = Some((idx, c.clone()));
                    return Ok(c);
                }
                Err(e) => {
                    tracing::debug!(endpoint = %self.config.endpoints[idx], error = %e, "broker endpoint unreachable");
                    last = Status::unavailable(format!("{}: {e}", self.config.endpoints[idx]));
                }
            }
        }
        Err(last)
    }

    async fn dial(&self, idx: usize) -> Result<Channel, tonic::transport::Error> {
        let url = &self.config.endpoints[idx];
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.config.ca_pem))
            .identity(Identity::from_pem(
                &self.config.cert_pem,
                &self.config.key_pem,
            ));
        if let Some(name) = &self.config.server_name {
            tls = tls.domain_name(name.clone());
        }
        Endpoint::from_shared(url.clone())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect()
            .await
    }

    /// Drops the current channel so the next call reconnects, starting at the next endpoint.
    async fn forget(&self) {
        let mut current = self.channel.lock().await;
        if let Some((idx, _)) = current.take() {
            self.next_endpoint.store(
                (idx as u64 + 1) % self.config.endpoints.len() as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// Runs `call` on a channel until it succeeds, fails permanently, or `publish_timeout`
    /// passes; reconnects and fails over between attempts.
    async fn retry<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = self.config.backoff_min;
        loop {
            let outcome = match self.channel().await {
                Ok(c) => call(c).await,
                Err(s) => Err(s),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(s) if permanent(&s) => return Err(Error::Refused(Box::new(s))),
                Err(s) => {
                    self.forget().await;
                    if started.elapsed() + backoff > self.config.publish_timeout {
                        return Err(Error::Unreachable {
                            waited: started.elapsed(),
                            last: s.message().to_string(),
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    async fn publish(&self, req: proto::PublishRequest) -> Result<Vec<u64>, Error> {
        self.retry(|channel| {
            let req = req.clone();
            async move {
                Ok(BrokerClient::new(channel)
                    .publish(req)
                    .await?
                    .into_inner()
                    .offsets)
            }
        })
        .await
    }
}

enum Control {
    Credit(u64),
    Ack(TopicName, u64, u64),
    Nack(TopicName, u64, u64, Duration),
}

/// A subscription opened by a [`Client`]. Credit is managed for the caller: it keeps up to
/// the window given at subscribe time on its way.
pub struct ClientSubscription {
    rx: mpsc::Receiver<Result<Delivery, Error>>,
    ctl: mpsc::UnboundedSender<Control>,
    window: u64,
    taken: u64,
}

impl ClientSubscription {
    /// The next delivery; an error if the broker refused the subscription on reconnect
    /// (for instance, the certificate was revoked); `None` once closed.
    pub async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        let d = self.rx.recv().await?;
        self.taken += 1;
        if self.taken >= (self.window / 4).max(1) {
            let _ = self.ctl.send(Control::Credit(self.taken));
            self.taken = 0;
        }
        Some(d)
    }

    /// Acknowledges `d`: the group is done with it.
    pub fn ack(&self, d: &Delivery) {
        let _ = self
            .ctl
            .send(Control::Ack(d.topic.clone(), d.offset, d.delivery_id));
    }

    /// `d` failed: have it delivered again after `delay`.
    pub fn nack(&self, d: &Delivery, delay: Duration) {
        let _ = self.ctl.send(Control::Nack(
            d.topic.clone(),
            d.offset,
            d.delivery_id,
            delay,
        ));
    }
}

async fn local_subscription(
    mut sub: super::hub::Subscription,
    tx: mpsc::Sender<Result<Delivery, Error>>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) {
    loop {
        tokio::select! {
            d = sub.next() => match d {
                Some(d) => {
                    if tx.send(Ok(d)).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            c = ctl.recv() => match c {
                Some(c) => apply_local(&sub, c),
                None => return,
            },
        }
    }
}

fn apply_local(sub: &super::hub::Subscription, c: Control) {
    match c {
        Control::Credit(n) => sub.credit(n),
        Control::Ack(t, o, id) => sub.ack(&t, o, id),
        Control::Nack(t, o, id, delay) => sub.nack(&t, o, id, delay),
    }
}

fn control_request(c: Control) -> proto::SubscribeRequest {
    use proto::subscribe_request::Kind;
    let dref = |t: TopicName, offset, delivery_id| proto::DeliveryRef {
        topic: t.to_string(),
        offset,
        delivery_id,
    };
    let kind = match c {
        Control::Credit(n) => Kind::Credit(proto::Credit {
            messages: n.min(u32::MAX as u64) as u32,
        }),
        Control::Ack(t, o, id) => Kind::Ack(proto::Ack {
            deliveries: vec![dref(t, o, id)],
        }),
        Control::Nack(t, o, id, delay) => Kind::Nack(proto::Nack {
            deliveries: vec![dref(t, o, id)],
            delay_ms: delay.as_millis().min(u32::MAX as u128) as u32,
        }),
    };
    proto::SubscribeRequest { kind: Some(kind) }
}

/// Ends a subscription the owner dropped: half-closes the request stream so the acks already
/// queued reach the broker before it lets the member go (cancelling the call instead would
/// drop them and have those messages delivered again), then waits briefly for the end.
async fn close_gracefully(
    mut stream: tonic::Streaming<proto::SubscribeResponse>,
    requests: mpsc::Sender<proto::SubscribeRequest>,
) {
    drop(requests);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
}

/// Keeps a remote subscription going across reconnects.
async fn remote_subscription(
    client: Client,
    options: SubscribeOptions,
    window: u64,
    mut stream: tonic::Streaming<proto::SubscribeResponse>,
    mut requests: mpsc::Sender<proto::SubscribeRequest>,
    tx: mpsc::Sender<Result<Delivery, Error>>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) {
    // For a private subscription to one topic: where to resume after a reconnect.
    let mut resume: Option<u64> = None;
    let literal = options.pattern.literal().is_some();
    loop {
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(proto::SubscribeResponse { kind: Some(kind) })) => {
                        use proto::subscribe_response::Kind;
                        let batch = match kind {
                            Kind::Delivery(d) => vec![d],
                            Kind::Batch(b) => b.deliveries,
                            Kind::Subscribed(_) => continue,
                        };
                        for d in batch {
                            let Ok(topic) = TopicName::new(d.topic) else { continue };
                            resume = Some(d.offset + 1);
                            let d = Delivery {
                                topic,
                                offset: d.offset,
                                delivery_id: d.delivery_id,
                                timestamp_ms: d.timestamp_ms,
                                key: d.key,
                                headers: d.headers.into_iter().collect(),
                                payload: d.payload,
                                attempt: d.attempt,
                            };
                            if tx.send(Ok(d)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(s) if permanent(&s) => {
                        let _ = tx.send(Err(Error::Refused(Box::new(s)))).await;
                        return;
                    }
                    Err(_) => break,
                },
                c = ctl.recv() => match c {
                    Some(c) => {
                        if requests.send(control_request(c)).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        close_gracefully(stream, requests).await;
                        return;
                    }
                },
            }
        }
        // Reconnect. Deliveries not yet acked come again (at least once).
        let Ok(remote) = client.remote() else { return };
        remote.forget().await;
        let start = match (&options.group, literal, resume) {
            (None, true, Some(next)) => Some(Start::Offset(next)),
            _ => None,
        };
        loop {
            match client.open_remote(&options, window, start).await {
                Ok((s, r)) => {
                    stream = s;
                    requests = r;
                    break;
                }
                // Subscriptions wait for the broker as long as their owner does.
                Err(Error::Unreachable { .. }) if !tx.is_closed() => continue,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}
