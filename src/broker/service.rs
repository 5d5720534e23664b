//! The broker's gRPC service (`proto/broker.proto`) and its mutual-TLS listener.
//!
//! Every call is authenticated by the client certificate of its connection: the TLS
//! handshake requires one chaining to the appliance's CA, and [`PeerDirectory`] maps its
//! serial to an identity (or refuses it as unknown or revoked). Open subscriptions and publish
//! streams end with `UNAUTHENTICATED` when their certificate is revoked. Handlers only
//! translate between protobuf and [`Broker`].

// tonic's own API returns `Status` (176 bytes) as the error everywhere; boxing it only here
// would mean unboxing at every handler's return.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::access::Peer;
use super::hub::{self, Broker, Start, SubscribeOptions};
use super::log::{self, GroupName, NewRecord, TopicName};
use super::pattern::Pattern;
use super::peers::{PeerDirectory, Refused};
use super::proto;
use super::Delivery;

/// Most batches of one PublishStream queued but not yet durable; the stream stops reading
/// beyond it, so a fast publisher cannot grow the broker's memory.
const PUBLISH_WINDOW: usize = 256;
/// Largest request accepted: one append as large as the log's write queue (32 MiB) allows.
const MAX_REQUEST_BYTES: usize = 33 << 20;
/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC service.
#[derive(Clone)]
pub struct BrokerService {
    broker: Broker,
    peers: Arc<PeerDirectory>,
}

impl BrokerService {
    /// A service over `broker` accepting the certificates in `peers`.
    pub fn new(broker: Broker, peers: Arc<PeerDirectory>) -> Self {
        Self { broker, peers }
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<(Peer, String), Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated(Refused::NoCertificate.to_string()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated(Refused::NoCertificate.to_string()))?;
        self.peers
            .identify(leaf)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }
}

/// Maps a broker error to the gRPC status a client can act on.
pub fn status(e: hub::Error) -> Status {
    use log::Error as L;
    match e {
        hub::Error::Denied(d) => Status::permission_denied(d.to_string()),
        hub::Error::Pattern(p) => Status::invalid_argument(p.to_string()),
        hub::Error::AckWait(_) => Status::invalid_argument(e.to_string()),
        hub::Error::Log(l) => match l {
            L::InvalidTopic { .. }
            | L::InvalidGroup { .. }
            | L::InvalidRecord { .. }
            | L::AppendTooLarge { .. } => Status::invalid_argument(l.to_string()),
            L::SequenceGap { .. } | L::SequenceTooOld { .. } => {
                Status::failed_precondition(l.to_string())
            }
            L::Closed => Status::unavailable(l.to_string()),
            other => {
                tracing::error!(error = %other, "broker log failure");
                Status::internal(
                    "the broker could not store or read the message; see the appliance log",
                )
            }
        },
    }
}

fn topic(name: &str) -> Result<TopicName, Status> {
    TopicName::new(name).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The records of a publish request, with producer sequences if it has a producer id.
pub(crate) fn records(req: proto::PublishRequest) -> Vec<NewRecord> {
    let producer = req.producer_id;
    let first = req.first_sequence;
    req.messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = NewRecord::new(m.payload);
            r.key = m.key;
            r.headers = m.headers.into_iter().collect();
            if producer != 0 {
                r = r.with_producer(producer, first + i as u64);
            }
            r
        })
        .collect()
}

fn answer(request_id: u64, appended: Vec<log::Appended>) -> proto::PublishResponse {
    proto::PublishResponse {
        request_id,
        duplicates: appended.iter().filter(|a| a.duplicate).count() as u32,
        offsets: appended.into_iter().map(|a| a.offset).collect(),
    }
}

pub(crate) fn delivery_to_proto(d: Delivery) -> proto::Delivery {
    proto::Delivery {
        topic: d.topic.to_string(),
        offset: d.offset,
        delivery_id: d.delivery_id,
        timestamp_ms: d.timestamp_ms,
        key: d.key,
        headers: d.headers.into_iter().collect(),
        payload: d.payload,
        attempt: d.attempt,
    }
}

/// Turns an Open request into subscription options.
pub(crate) fn options(open: proto::Open) -> Result<SubscribeOptions, Status> {
    let pattern =
        Pattern::parse(&open.pattern).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let group = if open.group.is_empty() {
        None
    } else {
        Some(GroupName::new(open.group).map_err(|e| Status::invalid_argument(e.to_string()))?)
    };
    use proto::start_position::At;
    let start = match open.start.and_then(|s| s.at) {
        None | Some(At::Latest(_)) => Start::Latest,
        Some(At::Earliest(_)) => Start::Earliest,
        Some(At::Offset(o)) => Start::Offset(o),
        Some(At::TimeMs(t)) => Start::Time(t),
    };
    Ok(SubscribeOptions {
        pattern,
        group,
        start,
        ack_wait: (open.ack_wait_ms > 0).then(|| Duration::from_millis(open.ack_wait_ms.into())),
        max_deliveries: (open.max_deliveries > 0).then_some(open.max_deliveries),
        credit: open.credit.into(),
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl proto::broker_server::Broker for BrokerService {
    async fn publish(
        &self,
        req: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishResponse>, Status> {
        let (peer, _) = self.authenticate(&req)?;
        let req = req.into_inner();
        let t = topic(&req.topic)?;
        let id = req.request_id;
        let appended = self
            .broker
            .publish(&peer, &t, records(req))
            .await
            .map_err(status)?;
        Ok(Response::new(answer(id, appended)))
    }

    type PublishStreamStream = BoxStream<proto::PublishResponse>;

    async fn publish_stream(
        &self,
        req: Request<Streaming<proto::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let (peer, serial) = self.authenticate(&req)?;
        let mut inbound = req.into_inner();
        let (answers, rx) = mpsc::channel(PUBLISH_WINDOW);
        let (queued, mut waiting) = mpsc::channel(PUBLISH_WINDOW);
        let broker = self.broker.clone();
        // Rule: a revoked certificate publishes nothing more, also on a stream opened before
        // the revocation. The reader stops taking batches, and the answerer ends the stream
        // with UNAUTHENTICATED (batches submitted before the revocation but not yet answered
        // get that answer too: the publisher cannot rely on them).
        let (peers, mut revocations) = (self.peers.clone(), self.peers.revocations());
        let (reader_peers, mut reader_revocations) = (peers.clone(), peers.revocations());
        let reader_serial = serial.clone();
        // Batches are queued in the order they arrive (keeping producer sequences in order)
        // and answered in that order once durable; many can be in flight at once. A refusal
        // goes through the same queue, so it is answered after the batches before it and the
        // publisher can tell which batch it belongs to.
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    biased;
                    changed = reader_revocations.changed() => {
                        if changed.is_err() || reader_peers.check(&reader_serial).is_err() {
                            break;
                        }
                        continue;
                    }
                    _ = queued.closed() => break,
                    m = inbound.message() => m,
                };
                let req = match message {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "publish stream ended");
                        break;
                    }
                };
                let submitted = match topic(&req.topic) {
                    Ok(t) => {
                        let id = req.request_id;
                        broker
                            .submit(&peer, &t, records(req))
                            .await
                            .map(|p| (id, p))
                            .map_err(status)
                    }
                    Err(s) => Err(s),
                };
                let refused = submitted.is_err();
                if queued.send(submitted).await.is_err() || refused {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let submitted = tokio::select! {
                    biased;
                    changed = revocations.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        if let Err(e) = peers.check(&serial) {
                            let _ = answers.send(Err(Status::unauthenticated(e.to_string()))).await;
                            break;
                        }
                        continue;
                    }
                    submitted = waiting.recv() => match submitted {
                        Some(s) => s,
                        None => break,
                    },
                };
                let answer = match submitted {
                    Ok((id, pending)) => pending
                        .durable()
                        .await
                        .map(|a| answer(id, a))
                        .map_err(|e| status(e.into())),
                    Err(s) => Err(s),
                };
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SubscribeStream = BoxStream<proto::SubscribeResponse>;

    async fn subscribe(
        &self,
        req: Request<Streaming<proto::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (peer, serial) = self.authenticate(&req)?;
        let mut inbound = req.into_inner();
        let open = match inbound.message().await? {
            Some(proto::SubscribeRequest {
                kind: Some(proto::subscribe_request::Kind::Open(open)),
            }) => open,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a subscription must be `open`",
                ))
            }
        };
        let mut sub = self
            .broker
            .subscribe(&peer, options(open)?)
            .await
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(16);
        let subscribed = proto::SubscribeResponse {
            kind: Some(proto::subscribe_response::Kind::Subscribed(
                proto::Subscribed {
                    group: sub.group().to_string(),
                },
            )),
        };
        let _ = tx.send(Ok(subscribed)).await;
        let peers = self.peers.clone();
        let mut revocations = peers.revocations();
        tokio::spawn(async move {
            let mut next: Option<Delivery> = None;
            loop {
                tokio::select! {
                    permit = tx.reserve(), if next.is_some() => {
                        let Ok(permit) = permit else { break };
                        if let Some(d) = next.take() {
                            permit.send(Ok(response_with_ready(d, &mut sub)));
                        }
                    }
                    d = sub.next(), if next.is_none() => match d {
                        Some(d) => next = Some(d),
                        None => break,
                    },
                    m = inbound.message() => match m {
                        Ok(Some(m)) => control(&sub, m),
                        Ok(None) | Err(_) => break,
                    },
                    changed = revocations.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        if let Err(e) = peers.check(&serial) {
                            let _ = tx.send(Err(Status::unauthenticated(e.to_string()))).await;
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Most deliveries merged into one response, and their most payload bytes.
const BATCH_MAX: usize = 128;
const BATCH_MAX_BYTES: usize = 1024 * 1024;

/// `first`, plus every delivery already waiting (up to the batch limits), as one response.
fn response_with_ready(first: Delivery, sub: &mut hub::Subscription) -> proto::SubscribeResponse {
    use proto::subscribe_response::Kind;
    let mut bytes = first.payload.len();
    let mut batch = vec![delivery_to_proto(first)];
    while batch.len() < BATCH_MAX && bytes < BATCH_MAX_BYTES {
        let Some(d) = sub.try_next() else { break };
        bytes += d.payload.len();
        batch.push(delivery_to_proto(d));
    }
    let kind = if batch.len() == 1 {
        batch.pop().map(Kind::Delivery)
    } else {
        Some(Kind::Batch(proto::Deliveries { deliveries: batch }))
    };
    proto::SubscribeResponse { kind }
}

/// Applies a subscriber's credit, acks and nacks.
fn control(sub: &hub::Subscription, m: proto::SubscribeRequest) {
    use proto::subscribe_request::Kind;
    match m.kind {
        Some(Kind::Credit(c)) => sub.credit(c.messages.into()),
        Some(Kind::Ack(a)) => {
            for d in a.deliveries {
                if let Ok(t) = TopicName::new(d.topic) {
                    sub.ack(&t, d.offset, d.delivery_id);
                }
            }
        }
        Some(Kind::Nack(n)) => {
            let delay = Duration::from_millis(n.delay_ms.into());
            for d in n.deliveries {
                if let Ok(t) = TopicName::new(d.topic) {
                    sub.nack(&t, d.offset, d.delivery_id, delay);
                }
            }
        }
        // A second open is ignored: one subscription per stream.
        Some(Kind::Open(_)) | None => {}
    }
}

/// The rustls configuration of the broker listener: the server's identity, and client
/// certificates required, chaining to the appliance's CA.
pub fn tls_config(
    identity: crate::pki::Identity,
    ca_der: Vec<u8>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca_der))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the broker on `listener` with mutual TLS until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: BrokerService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (tx, rx) = mpsc::channel::<Result<_, std::io::Error>>(64);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, addr): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "broker accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(peer = %addr, error = %e, "broker connection refused in the TLS handshake")
                    }
                    Err(_) => tracing::info!(peer = %addr, "broker TLS handshake timed out"),
                }
            });
        }
    });
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(
            proto::broker_server::BrokerServer::new(service)
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept_loop.abort();
    result
}
