//! The message broker over real gRPC with mutual TLS: client certificates issued through the
//! API, the crate's own client (reconnect, fail-over, idempotent publish) and a raw tonic
//! client where the wire itself is under test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::broker::client::{Client, ClientSubscription, Error as ClientError, RemoteConfig};
use palisade::broker::log::{GroupName, NewRecord};
use palisade::broker::pattern::Pattern;
use palisade::broker::proto;
use palisade::broker::{Delivery, Start, SubscribeOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{tenant_fixture, Api, TestApp};

/// Issues a broker certificate through the API.
async fn issue(admin: &Api, kind: &str, subject: &str) -> Value {
    let (status, body) = admin
        .post(
            "/v1/broker/certificates",
            json!({"kind": kind, "subject": subject}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

fn config(app: &TestApp, issued: &Value) -> RemoteConfig {
    let s = |k: &str| issued[k].as_str().expect(k).to_string();
    let mut c = RemoteConfig::new(
        vec![format!("https://{}", app.broker)],
        s("ca_pem"),
        s("certificate_pem"),
        s("private_key_pem"),
    );
    c.backoff_max = Duration::from_millis(500);
    c.publish_timeout = Duration::from_secs(60);
    c
}

/// A client with a broker-peer certificate (full access).
async fn peer_client(app: &TestApp, admin: &Api, name: &str) -> Client {
    let issued = issue(admin, "broker-peer", name).await;
    Client::connect(config(app, &issued)).expect("client")
}

fn pattern(p: &str) -> Pattern {
    Pattern::parse(p).expect("pattern")
}

fn group(g: &str) -> GroupName {
    GroupName::new(g).expect("group")
}

fn msg(key: Option<&str>, body: &str) -> NewRecord {
    let r = NewRecord::new(body.as_bytes().to_vec());
    match key {
        Some(k) => r.with_key(k.as_bytes().to_vec()),
        None => r,
    }
}

/// Takes `n` deliveries (acking them if `ack`), failing after 30 s.
async fn take(sub: &mut ClientSubscription, n: usize, ack: bool) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        let d = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} deliveries arrived in 30 s", out.len()))
            .expect("subscription open")
            .expect("delivery");
        if ack {
            sub.ack(&d);
        }
        out.push(d);
    }
    out
}

/// Asserts nothing more arrives within `wait`.
async fn quiet(sub: &mut ClientSubscription, wait: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(wait, sub.next()).await {
        panic!("unexpected delivery: {d:?}");
    }
}

#[tokio::test]
async fn consumer_groups_share_messages_and_keep_each_key_in_order() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    let mut options = SubscribeOptions::new(pattern("orders.eu"));
    options.group = Some(group("workers"));
    options.start = Start::Earliest;
    options.credit = 8;
    let a = client.subscribe(options.clone()).await.expect("a");
    let b = client.subscribe(options).await.expect("b");

    let total = 300;
    for chunk in 0..(total / 50) {
        let batch = (0..50)
            .map(|i| {
                let n = chunk * 50 + i;
                msg(Some(&format!("k{}", n % 5)), &n.to_string())
            })
            .collect();
        client.publish("orders.eu", batch).await.expect("publish");
    }

    // Both consumers record what they receive, then ack: the shared record must show every
    // key's messages in offset order.
    let seen: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for (name, mut sub) in [("a", a), ("b", b)] {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let next = tokio::time::timeout_at(deadline, sub.next()).await;
                let Ok(Some(Ok(d))) = next else { break };
                let key = String::from_utf8(d.key.clone().expect("key")).expect("utf8");
                {
                    let mut s = seen.lock().expect("lock");
                    s.push((format!("{name}{}", d.attempt), key, d.offset));
                    if s.len() >= 300 {
                        sub.ack(&d);
                        break;
                    }
                }
                // Give the other consumer a chance at the next message of other keys.
                tokio::time::sleep(Duration::from_micros(200)).await;
                sub.ack(&d);
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("lock").len() < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.abort();
    }
    let seen = seen.lock().expect("lock").clone();
    let offsets: HashSet<u64> = seen.iter().map(|s| s.2).collect();
    assert_eq!(offsets.len(), total, "every message delivered");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (_, key, offset) in &seen {
        if let Some(prev) = last.insert(key, *offset) {
            assert!(
                *offset > prev,
                "key {key}: offset {offset} came after {prev}: {seen:?}"
            );
        }
    }
    let by_a = seen.iter().filter(|s| s.0.starts_with('a')).count();
    assert!(
        by_a > 0 && by_a < total,
        "both consumers of the group received messages (a got {by_a} of {total})"
    );
}

#[tokio::test]
async fn wildcards_reach_topics_created_after_subscribing() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    let mut sub = client
        .subscribe(SubscribeOptions::new(pattern("metrics.*.cpu")))
        .await
        .expect("subscribe");
    let mut rest = client
        .subscribe(SubscribeOptions::new(pattern("metrics.>")))
        .await
        .expect("subscribe");
    for topic in [
        "metrics.a.cpu",
        "metrics.a.mem",
        "metrics.b.cpu",
        "other.a.cpu",
    ] {
        client
            .publish(topic, vec![msg(None, topic)])
            .await
            .expect("publish");
    }
    let got = take(&mut sub, 2, true).await;
    let topics: HashSet<String> = got.iter().map(|d| d.topic.to_string()).collect();
    assert_eq!(
        topics,
        HashSet::from(["metrics.a.cpu".to_string(), "metrics.b.cpu".to_string()])
    );
    quiet(&mut sub, Duration::from_millis(500)).await;
    let got = take(&mut rest, 3, true).await;
    assert!(got.iter().all(|d| d.topic.as_str().starts_with("metrics.")));
    quiet(&mut rest, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn unacked_messages_come_again_and_end_in_the_dead_letters() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    let mut options = SubscribeOptions::new(pattern("jobs"));
    options.group = Some(group("runner"));
    options.ack_wait = Some(Duration::from_millis(300));
    options.max_deliveries = Some(3);
    let mut sub = client.subscribe(options).await.expect("subscribe");
    let mut dead = client
        .subscribe({
            let mut o = SubscribeOptions::new(pattern("dead-letter.runner"));
            o.start = Start::Earliest;
            o
        })
        .await
        .expect("dead letters");
    client
        .publish("jobs", vec![msg(Some("j"), "poison")])
        .await
        .expect("publish");
    // Never acked: delivered three times, 300 ms apart, then dead-lettered.
    let got = take(&mut sub, 3, false).await;
    assert_eq!(
        got.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(got.iter().all(|d| d.offset == got[0].offset));
    let letter = take(&mut dead, 1, true).await.remove(0);
    assert_eq!(letter.payload, b"poison");
    assert_eq!(letter.headers["dead-letter-topic"], b"jobs");
    assert_eq!(letter.headers["dead-letter-deliveries"], b"3");
    quiet(&mut sub, Duration::from_millis(800)).await;

    // A nack brings the message back at once, then an ack ends it.
    client
        .publish("jobs", vec![msg(None, "flaky")])
        .await
        .expect("publish");
    let first = take(&mut sub, 1, false).await.remove(0);
    sub.nack(&first, Duration::ZERO);
    let second = take(&mut sub, 1, true).await.remove(0);
    assert_eq!((second.offset, second.attempt), (first.offset, 2));
    quiet(&mut sub, Duration::from_millis(800)).await;

    let (_, groups) = admin.get("/v1/broker/groups").await;
    let row = groups
        .as_array()
        .expect("array")
        .iter()
        .find(|g| g["group"] == "runner")
        .expect("runner group")
        .clone();
    assert_eq!(row["dead_lettered"], 1, "{row}");
    assert!(row["redelivered"].as_u64() >= Some(3), "{row}");
    let (_, metrics) = admin.get_text("/metrics").await;
    assert!(
        metrics.contains("palisade_broker_group_dead_letters{group=\"runner\",topic=\"jobs\"} 1"),
        "{metrics}"
    );
}

/// A raw gRPC connection with the issued certificate, to test the wire protocol itself.
async fn raw(
    app: &TestApp,
    issued: &Value,
) -> proto::broker_client::BrokerClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let s = |k: &str| issued[k].as_str().expect(k).to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(s("ca_pem")))
        .identity(Identity::from_pem(
            s("certificate_pem"),
            s("private_key_pem"),
        ));
    let channel = Endpoint::from_shared(format!("https://{}", app.broker))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    proto::broker_client::BrokerClient::new(channel)
}

#[tokio::test]
async fn a_retried_publish_is_stored_once() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let issued = issue(&admin, "broker-peer", "b1").await;
    let mut grpc = raw(&app, &issued).await;
    let request = proto::PublishRequest {
        topic: "events.audit".into(),
        producer_id: 42,
        first_sequence: 0,
        request_id: 1,
        messages: (0..3)
            .map(|i| proto::Message {
                key: None,
                headers: Default::default(),
                payload: format!("m{i}").into_bytes(),
            })
            .collect(),
    };
    let first = grpc
        .publish(request.clone())
        .await
        .expect("publish")
        .into_inner();
    // The same batch again, as after a lost acknowledgement.
    let again = grpc.publish(request).await.expect("retry").into_inner();
    assert_eq!(first.offsets, vec![0, 1, 2]);
    assert_eq!(again.offsets, first.offsets);
    assert_eq!((first.duplicates, again.duplicates), (0, 3));
    // A gap in the sequence is refused with a message naming the expected sequence.
    let gap = grpc
        .publish(proto::PublishRequest {
            topic: "events.audit".into(),
            producer_id: 42,
            first_sequence: 7,
            request_id: 2,
            messages: vec![proto::Message {
                key: None,
                headers: Default::default(),
                payload: b"late".to_vec(),
            }],
        })
        .await
        .expect_err("gap");
    assert_eq!(gap.code(), tonic::Code::FailedPrecondition);
    assert!(gap.message().contains("expected 3"), "{}", gap.message());
    let (_, topics) = admin.get("/v1/broker/topics").await;
    let row = topics
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["topic"] == "events.audit")
        .expect("topic")
        .clone();
    assert_eq!(row["depth"], 3, "{row}");
}

#[tokio::test]
async fn a_group_resumes_where_it_left_off() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    let batch = (0..100).map(|i| msg(None, &i.to_string())).collect();
    client.publish("inventory", batch).await.expect("publish");
    let mut options = SubscribeOptions::new(pattern("inventory"));
    options.group = Some(group("sync"));
    options.start = Start::Earliest;
    options.credit = 10;
    {
        let mut sub = client.subscribe(options.clone()).await.expect("subscribe");
        let got = take(&mut sub, 40, true).await;
        assert_eq!(got.last().map(|d| d.offset), Some(39));
        // Let the acks reach the broker before the consumer goes away.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new connection (another client object) in the same group.
    let client2 = peer_client(&app, &admin, "b2").await;
    let mut sub = client2.subscribe(options).await.expect("resubscribe");
    let got = take(&mut sub, 60, true).await;
    let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
    assert_eq!(
        offsets.first(),
        Some(&40),
        "resumed after the last ack: {offsets:?}"
    );
    assert_eq!(offsets.last(), Some(&99));
    quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn agents_reach_only_their_own_cluster_and_revoked_or_unknown_certificates_are_refused() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let fx = tenant_fixture(&admin, "acme").await;
    let cluster = fx.cluster.clone();
    // An agent certificate must name an existing cluster.
    let (status, body) = admin
        .post(
            "/v1/broker/certificates",
            json!({"kind": "agent", "subject": "no-such-cluster"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "subject", "{body}");
    let agent = issue(&admin, "agent", &cluster).await;
    let mut agent_cfg = config(&app, &agent);
    agent_cfg.publish_timeout = Duration::from_secs(3);
    let a = Client::connect(agent_cfg.clone()).expect("agent client");
    let appliance = peer_client(&app, &admin, "appliance").await;

    // Its own reports: allowed. Another cluster's, or its own desired state: refused.
    a.publish(
        &format!("clusters.{cluster}.reports.health"),
        vec![msg(None, "ok")],
    )
    .await
    .expect("own reports");
    for topic in [
        "clusters.other.reports.health".to_string(),
        format!("clusters.{cluster}.desired"),
    ] {
        match a.publish(&topic, vec![msg(None, "x")]).await {
            Err(ClientError::Refused(s)) => {
                assert_eq!(s.code(), tonic::Code::PermissionDenied, "{topic}: {s:?}");
                assert!(s.message().contains("may not publish"), "{}", s.message());
            }
            other => panic!("{topic}: expected a refusal, got {other:?}"),
        }
    }
    for p in ["clusters.other.desired", "clusters.*.desired", ">"] {
        match a.subscribe(SubscribeOptions::new(pattern(p))).await {
            Err(ClientError::Refused(s)) => {
                assert_eq!(s.code(), tonic::Code::PermissionDenied, "{p}")
            }
            Err(e) => panic!("{p}: {e}"),
            Ok(_) => panic!("{p}: subscription allowed"),
        }
    }
    let desired = format!("clusters.{cluster}.desired");
    let mut sub = a
        .subscribe({
            let mut o = SubscribeOptions::new(pattern(&desired));
            o.group = Some(group(&format!("clusters.{cluster}.agent")));
            o
        })
        .await
        .expect("own desired state");
    appliance
        .publish(&desired, vec![msg(None, "spec v1")])
        .await
        .expect("appliance publishes desired state");
    let got = take(&mut sub, 1, true).await;
    assert_eq!(got[0].payload, b"spec v1");
    // A batch publisher with its stream open, as an agent reporting health has.
    let reports = format!("clusters.{cluster}.reports.health");
    let publisher = a.publisher(&reports).expect("publisher");
    publisher
        .send(vec![msg(None, "healthy")])
        .await
        .expect("send")
        .wait()
        .await
        .expect("a batch before the revocation is stored");

    // Revocation: the open subscription and publish stream end, new calls are refused.
    let serial = agent["certificate"]["serial"].as_str().expect("serial");
    let (status, body) = admin
        .post(
            &format!("/v1/broker/certificates/{serial}/revoke"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["revoked_at"].is_string(), "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the subscription ends after revocation");
    match ended {
        Some(Err(ClientError::Refused(s))) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated);
            assert!(s.message().contains("revoked"), "{}", s.message());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        publisher.send(vec![msg(None, "after")]).await?.wait().await
    })
    .await
    .expect("the open publisher answers within 10 s of the revocation");
    match after {
        Err(ClientError::Refused(s)) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            assert!(s.message().contains("revoked"), "{}", s.message());
        }
        other => panic!("the open publish stream outlived the revocation: {other:?}"),
    }
    let (_, topics) = admin.get("/v1/broker/topics").await;
    let depth = topics
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["topic"] == reports.as_str())
        .map(|t| t["depth"].clone());
    assert_eq!(
        depth,
        Some(json!(2)),
        "only the reports sent before the revocation: {topics}"
    );
    match a
        .publish(
            &format!("clusters.{cluster}.reports.health"),
            vec![msg(None, "x")],
        )
        .await
    {
        Err(ClientError::Refused(s)) => assert!(s.message().contains("revoked"), "{s:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A certificate signed by the appliance's CA but never issued through the API.
    let ca_key = std::fs::read_to_string(app.dir.join("pki/ca.key")).expect("ca key");
    let ca_cert = String::from_utf8(app.ca_pem()).expect("ca pem");
    let forged = sign_client(&ca_cert, &ca_key, &format!("urn:palisade:agent:{cluster}"));
    let mut forged_cfg = agent_cfg.clone();
    forged_cfg.cert_pem = forged.0;
    forged_cfg.key_pem = forged.1;
    match Client::connect(forged_cfg)
        .expect("client")
        .publish(
            &format!("clusters.{cluster}.reports.health"),
            vec![msg(None, "x")],
        )
        .await
    {
        Err(ClientError::Refused(s)) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated);
            assert!(s.message().contains("not issued"), "{}", s.message());
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A certificate of another CA fails the TLS handshake.
    let other_ca = rcgen::generate_simple_self_signed(vec!["other-ca".into()]).expect("ca");
    let other = sign_client(
        &other_ca.cert.pem(),
        &other_ca.key_pair.serialize_pem(),
        "urn:palisade:agent:x",
    );
    let mut stranger = agent_cfg;
    stranger.cert_pem = other.0;
    stranger.key_pem = other.1;
    match Client::connect(stranger)
        .expect("client")
        .publish(
            &format!("clusters.{cluster}.reports.health"),
            vec![msg(None, "x")],
        )
        .await
    {
        Err(ClientError::Unreachable { .. }) | Err(ClientError::Refused(_)) => {}
        other => panic!("expected the handshake to fail, got {other:?}"),
    }
}

/// A client certificate for `uri`, signed by the CA in `ca_cert`/`ca_key` (PEM).
fn sign_client(ca_cert: &str, ca_key: &str, uri: &str) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(ca_key).expect("ca key");
    let ca = rcgen::CertificateParams::from_ca_cert_pem(ca_cert)
        .expect("ca params")
        .self_signed(&ca_key)
        .expect("ca");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::Ia5String::try_from(uri).expect("uri"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_stuck_subscriber_does_not_hold_up_others_or_grow_memory() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    // The stuck one never reads: the broker may send it at most its credit.
    let mut stuck_opts = SubscribeOptions::new(pattern("telemetry"));
    stuck_opts.group = Some(group("stuck"));
    stuck_opts.credit = 16;
    let _stuck = client.subscribe(stuck_opts).await.expect("stuck");
    let mut healthy_opts = SubscribeOptions::new(pattern("telemetry"));
    healthy_opts.group = Some(group("healthy"));
    healthy_opts.credit = 512;
    let mut healthy = client.subscribe(healthy_opts).await.expect("healthy");
    let rss = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("palisade_process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .expect("rss gauge")
    };
    let before = rss(&admin.get_text("/metrics").await.1);
    // 96 MiB in 4 KiB messages, more than the broker would hold if it buffered for the
    // stuck subscriber.
    let payload = "x".repeat(4096);
    let total = 24_576;
    let publisher = client.publisher("telemetry").expect("publisher");
    let consumer = tokio::spawn(async move {
        let got = take(&mut healthy, total, true).await;
        got.len()
    });
    let mut acks = Vec::new();
    for _ in 0..(total / 64) {
        let batch = (0..64).map(|_| msg(None, &payload)).collect();
        acks.push(publisher.send(batch).await.expect("send"));
        if acks.len() >= 64 {
            for a in acks.drain(..) {
                a.wait().await.expect("durable");
            }
        }
    }
    for a in acks {
        a.wait().await.expect("durable");
    }
    assert_eq!(consumer.await.expect("consumer"), total);
    let after = rss(&admin.get_text("/metrics").await.1);
    let grown = after.saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "the broker grew by {grown} bytes while 96 MiB passed a stuck subscriber"
    );
    let (_, groups) = admin.get("/v1/broker/groups").await;
    let stuck = groups
        .as_array()
        .expect("array")
        .iter()
        .find(|g| g["group"] == "stuck")
        .expect("stuck group")
        .clone();
    assert!(stuck["in_flight"].as_u64() <= Some(16), "{stuck}");
    assert!(stuck["lag"].as_u64() >= Some(total as u64 - 16), "{stuck}");
}

#[tokio::test]
async fn no_acknowledged_message_is_lost_when_the_broker_is_killed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut app = TestApp::start_in(&dir, &["--broker-listen", &listen]);
    let admin = app.admin().await;
    let issued = issue(&admin, "broker-peer", "b1").await;
    let client = Client::connect(config(&app, &issued)).expect("client");

    // Four publishers, each pipelining batches of 10 numbered messages, record what was
    // acknowledged. The broker is killed while they run and restarted on the same port.
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in 0..4 {
        let client = client.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = client.publisher("load.test").expect("publisher");
            let mut pending = std::collections::VecDeque::new();
            for b in 0..150 {
                let ids: Vec<String> = (0..10).map(|i| format!("p{p}-{}", b * 10 + i)).collect();
                let batch = ids.iter().map(|id| msg(Some(id), id)).collect();
                let ack = publisher.send(batch).await.expect("send");
                pending.push_back((ids, ack));
                if pending.len() > 8 {
                    if let Some((ids, ack)) = pending.pop_front() {
                        let offsets = ack.wait().await.expect("durable");
                        let mut a = acked.lock().expect("lock");
                        for (id, o) in ids.into_iter().zip(offsets) {
                            a.insert(id, o);
                        }
                    }
                }
            }
            for (ids, ack) in pending {
                let offsets = ack.wait().await.expect("durable");
                let mut a = acked.lock().expect("lock");
                for (id, o) in ids.into_iter().zip(offsets) {
                    a.insert(id, o);
                }
            }
        }));
    }
    // Kill once some, but not all, messages are acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("lock").len() < 1500 {
        assert!(tokio::time::Instant::now() < deadline, "publishing stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_kill = acked.lock().expect("lock").len();
    app.kill9();
    let app = TestApp::start_in(&dir, &["--broker-listen", &listen]);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("publishers finish after the restart")
            .expect("publisher task");
    }
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), 6000, "every message acknowledged in the end");
    assert!(before_kill < 6000, "the kill happened mid-way");

    // Read the whole topic back: every acknowledged message is there, at its offset, once.
    let reader = Client::connect(config(&app, &issued)).expect("reader");
    let mut options = SubscribeOptions::new(pattern("load.test"));
    options.start = Start::Earliest;
    options.credit = 1000;
    let mut sub = reader.subscribe(options).await.expect("subscribe");
    let got = take(&mut sub, 6000, true).await;
    quiet(&mut sub, Duration::from_millis(500)).await;
    let mut stored: HashMap<String, u64> = HashMap::new();
    for d in got {
        let id = String::from_utf8(d.payload).expect("utf8");
        assert!(
            stored.insert(id.clone(), d.offset).is_none(),
            "{id} stored twice"
        );
    }
    for (id, offset) in &acked {
        assert_eq!(
            stored.get(id),
            Some(offset),
            "acknowledged {id} missing or moved"
        );
    }
}

#[tokio::test]
async fn cluster_changes_reach_the_agent_as_desired_state() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let fx = tenant_fixture(&admin, "acme").await;
    let agent = issue(&admin, "agent", &fx.cluster).await;
    let a = Client::connect(config(&app, &agent)).expect("agent client");
    let mut options = SubscribeOptions::new(pattern(&format!("clusters.{}.desired", fx.cluster)));
    options.group = Some(group(&format!("clusters.{}.agent", fx.cluster)));
    options.start = Start::Earliest;
    let mut sub = a.subscribe(options).await.expect("subscribe");
    let state = |d: &Delivery| -> Value { serde_json::from_slice(&d.payload).expect("json") };

    let created = state(&take(&mut sub, 1, true).await[0]);
    assert_eq!(created["kind"], "cluster-desired-state");
    assert_eq!(created["version"], 1, "{created}");
    assert_eq!(created["cluster"]["name"], "prod", "{created}");
    assert_eq!(
        created["profile"]["layers"][2]["pack"], "cilium",
        "{created}"
    );

    let r = admin
        .send(
            reqwest::Method::PUT,
            &format!("/v1/clusters/{}", fx.cluster),
            Some(json!({
                "profile_revision": 1,
                "node_pools": [
                    {"name": "cp", "role": "control-plane", "count": 3, "size": {"cpus": 2, "memory_mib": 4096, "disk_gib": 40}}
                ],
                "drift_policy": "reconcile"
            })),
            &[("if-match", "\"v1\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let updated = state(&take(&mut sub, 1, true).await[0]);
    assert_eq!(updated["version"], 2, "{updated}");
    assert_eq!(updated["cluster"]["drift_policy"], "reconcile", "{updated}");

    let r = admin
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/clusters/{}", fx.cluster),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let deleted = state(&take(&mut sub, 1, true).await[0]);
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["version"], 3, "{deleted}");
}

#[tokio::test]
async fn the_client_fails_over_to_the_next_endpoint() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let issued = issue(&admin, "broker-peer", "b1").await;
    // Nothing listens on the first endpoint.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("probe")
        .local_addr()
        .expect("addr");
    let mut cfg = config(&app, &issued);
    cfg.endpoints.insert(0, format!("https://{dead}"));
    let client = Client::connect(cfg).expect("client");
    let offsets = client
        .publish("failover.check", vec![msg(None, "a"), msg(None, "b")])
        .await
        .expect("published through the second endpoint");
    assert_eq!(offsets, vec![0, 1]);
    let mut options = SubscribeOptions::new(pattern("failover.check"));
    options.start = Start::Earliest;
    let mut sub = client.subscribe(options).await.expect("subscribe");
    assert_eq!(take(&mut sub, 2, true).await.len(), 2);

    // A bad retention flag is refused with the rule it broke, before anything starts.
    let (code, _, err) =
        crate::support::run_cli(&["serve", "--broker-retention", "clusters=3w:1GiB"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the unit must be s, m, h or d"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_waiting_for_a_new_topic_gets_each_message_once_and_promptly() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    for round in 0..10 {
        let topic = format!("fresh.t{round}");
        let mut options = SubscribeOptions::new(pattern(&topic));
        options.credit = 1000;
        let mut sub = client.subscribe(options).await.expect("subscribe");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let publisher = client.publisher(&topic).expect("publisher");
        let started = std::time::Instant::now();
        let mut acks = Vec::new();
        for i in 0..200 {
            acks.push(
                publisher
                    .send(vec![msg(None, &i.to_string())])
                    .await
                    .expect("send"),
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for a in acks {
            a.wait().await.expect("durable");
        }
        let got = take(&mut sub, 200, true).await;
        assert!(
            got.iter().all(|d| d.attempt == 1),
            "round {round}: redeliveries where none were due"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn subscriptions_start_at_an_offset_or_a_time() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    let first = (0..10).map(|i| msg(None, &format!("early{i}"))).collect();
    client.publish("history", first).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let later = (0..5).map(|i| msg(None, &format!("late{i}"))).collect();
    client.publish("history", later).await.expect("publish");

    let mut at_offset = SubscribeOptions::new(pattern("history"));
    at_offset.start = Start::Offset(7);
    let mut sub = client.subscribe(at_offset).await.expect("subscribe");
    let got: Vec<u64> = take(&mut sub, 8, true)
        .await
        .iter()
        .map(|d| d.offset)
        .collect();
    assert_eq!(got, (7..15).collect::<Vec<u64>>());
    quiet(&mut sub, Duration::from_millis(300)).await;

    let mut at_time = SubscribeOptions::new(pattern("history"));
    at_time.start = Start::Time(cut);
    let mut sub = client.subscribe(at_time).await.expect("subscribe");
    let got = take(&mut sub, 5, true).await;
    assert_eq!(got[0].offset, 10, "the first message stamped after the cut");
    assert_eq!(got[0].payload, b"late0");
    quiet(&mut sub, Duration::from_millis(300)).await;

    // A named group that has a committed position ignores the start it is given.
    let mut group_opts = SubscribeOptions::new(pattern("history"));
    group_opts.group = Some(group("replay"));
    group_opts.start = Start::Earliest;
    {
        let mut sub = client
            .subscribe(group_opts.clone())
            .await
            .expect("subscribe");
        take(&mut sub, 15, true).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .publish("history", vec![msg(None, "new")])
        .await
        .expect("publish");
    let mut sub = client.subscribe(group_opts).await.expect("resubscribe");
    let got = take(&mut sub, 1, true).await;
    assert_eq!(
        (got[0].offset, got[0].payload.as_slice()),
        (15, &b"new"[..])
    );
}

/// What the [`Proxy`] does with a connection.
const PASS: u8 = 0;
/// Forward what the client sends, throw away what the broker answers.
const LOSE_ANSWERS: u8 = 1;
/// Refuse new connections (accepted and closed at once).
const DOWN: u8 = 2;

/// A TCP proxy in front of the broker that can lose the broker's answers, as a network that
/// fails after a request went out does. TLS runs end to end through it.
struct Proxy {
    addr: std::net::SocketAddr,
    mode: Arc<std::sync::atomic::AtomicU8>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(PASS));
        let cut = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (m, c) = (mode.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if m.load(Ordering::SeqCst) == DOWN {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let mut cut = c.subscribe();
                let m = m.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = async {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if m.load(Ordering::SeqCst) == PASS
                                && cw.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, mode, cut }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every open connection and refuses new ones until `set(PASS)`.
    fn cut(&self) {
        self.set(DOWN);
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Waits until `topic` holds `depth` messages, for at most 10 s.
async fn wait_for_depth(admin: &Api, topic: &str, depth: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topics) = admin.get("/v1/broker/topics").await;
        let now = topics
            .as_array()
            .and_then(|a| a.iter().find(|t| t["topic"] == topic))
            .and_then(|t| t["depth"].as_u64())
            .unwrap_or(0);
        if now >= depth {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} holds {now} messages after 10 s, expected {depth}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_publish_whose_answer_was_lost_is_stored_once_and_does_not_swallow_the_next() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let issued = issue(&admin, "broker-peer", "b1").await;
    let proxy = Proxy::start(app.broker.clone()).await;
    let mut cfg = config(&app, &issued);
    cfg.endpoints = vec![format!("https://{}", proxy.addr)];
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.publish_timeout = Duration::from_secs(3);
    let client = Client::connect(cfg).expect("client");
    let topic = "ledger.entries";
    client
        .publish(topic, vec![msg(None, "warm-up")])
        .await
        .expect("publish");

    // The batch is stored but its answer lost; the client's own retry, once the network is
    // back, is recognised and answered with the original offsets.
    proxy.set(LOSE_ANSWERS);
    let publishing = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .publish(topic, vec![msg(None, "a1"), msg(None, "a2")])
                .await
        }
    });
    wait_for_depth(&admin, topic, 3).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(PASS);
    let offsets = publishing
        .await
        .expect("task")
        .expect("the retry is answered");
    assert_eq!(offsets, vec![1, 2]);

    // Stored, answer lost, and the network stays down past publish_timeout: the publish
    // fails. The next, different batch must be stored, not answered as a duplicate.
    proxy.set(LOSE_ANSWERS);
    let publishing = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .publish(topic, vec![msg(None, "b1"), msg(None, "b2")])
                .await
        }
    });
    wait_for_depth(&admin, topic, 5).await;
    proxy.cut();
    match publishing.await.expect("task") {
        Err(ClientError::Unreachable { .. }) => {}
        other => panic!("expected the publish to give up, got {other:?}"),
    }
    proxy.set(PASS);
    let offsets = client
        .publish(topic, vec![msg(None, "c1"), msg(None, "c2")])
        .await
        .expect("publish after a failed one");
    assert_eq!(offsets, vec![5, 6], "c1, c2 stored as new messages");

    let mut options = SubscribeOptions::new(pattern(topic));
    options.start = Start::Earliest;
    let mut sub = client.subscribe(options).await.expect("subscribe");
    let got: Vec<String> = take(&mut sub, 7, true)
        .await
        .into_iter()
        .map(|d| String::from_utf8(d.payload).expect("utf8"))
        .collect();
    assert_eq!(got, ["warm-up", "a1", "a2", "b1", "b2", "c1", "c2"]);
    quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_batch_larger_than_the_producer_window_is_stored_once_across_a_lost_answer() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let issued = issue(&admin, "broker-peer", "b1").await;
    let proxy = Proxy::start(app.broker.clone()).await;
    let mut cfg = config(&app, &issued);
    cfg.endpoints = vec![format!("https://{}", proxy.addr)];
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    let client = Client::connect(cfg).expect("client");
    let topic = "bulk.import";
    client
        .publish(topic, vec![msg(None, "warm-up")])
        .await
        .expect("publish");
    let total = 3000;
    proxy.set(LOSE_ANSWERS);
    let publishing = tokio::spawn({
        let client = client.clone();
        async move {
            let batch = (0..total).map(|i| msg(None, &i.to_string())).collect();
            client.publish(topic, batch).await
        }
    });
    // The first request's answer is lost once something of the batch is stored.
    wait_for_depth(&admin, topic, 2).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(PASS);
    let offsets = tokio::time::timeout(Duration::from_secs(30), publishing)
        .await
        .expect("answered within 30 s")
        .expect("task")
        .expect("the whole batch is stored");
    assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>());
    wait_for_depth(&admin, topic, total as u64 + 1).await;
    let (_, topics) = admin.get("/v1/broker/topics").await;
    let depth = topics
        .as_array()
        .and_then(|a| a.iter().find(|t| t["topic"] == topic))
        .map(|t| t["depth"].clone());
    assert_eq!(depth, Some(json!(total + 1)), "stored once: {topics}");
}

#[tokio::test]
async fn a_publisher_refused_for_a_revoked_certificate_fails_its_batches_promptly() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let issued = issue(&admin, "broker-peer", "b1").await;
    let client = Client::connect(config(&app, &issued)).expect("client");
    client
        .publish("events.ops", vec![msg(None, "before")])
        .await
        .expect("publish before the revocation");
    let serial = issued["certificate"]["serial"].as_str().expect("serial");
    let (status, body) = admin
        .post(
            &format!("/v1/broker/certificates/{serial}/revoke"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The broker refuses the PublishStream call itself: every batch queued fails with that
    // refusal, promptly, and so does a batch sent later.
    let publisher = client.publisher("events.ops").expect("publisher");
    let mut acks = Vec::new();
    for i in 0..5 {
        acks.push(
            publisher
                .send(vec![msg(None, &format!("after{i}"))])
                .await
                .expect("send"),
        );
    }
    for ack in acks {
        let answer = tokio::time::timeout(Duration::from_secs(10), ack.wait())
            .await
            .expect("a refused batch is answered within 10 s");
        match answer {
            Err(ClientError::Refused(s)) => {
                assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
                assert!(s.message().contains("revoked"), "{}", s.message());
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
    let later = tokio::time::timeout(Duration::from_secs(10), async {
        publisher.send(vec![msg(None, "later")]).await?.wait().await
    })
    .await
    .expect("a later batch is answered within 10 s");
    assert!(
        matches!(&later, Err(ClientError::Refused(s)) if s.message().contains("revoked")),
        "{later:?}"
    );
}

#[tokio::test]
async fn a_stuck_subscriber_on_large_messages_costs_a_bounded_read_ahead() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let client = peer_client(&app, &admin, "b1").await;
    let mut stuck_opts = SubscribeOptions::new(pattern("blobs"));
    stuck_opts.group = Some(group("stuck"));
    stuck_opts.credit = 4;
    let _stuck = client.subscribe(stuck_opts).await.expect("stuck");
    let rss = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("palisade_process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .expect("rss gauge")
    };
    let before = rss(&admin.get_text("/metrics").await.1);
    // 160 MiB in 512 KiB messages: fewer than the 512 messages a group reads ahead.
    let payload = "x".repeat(512 << 10);
    let total = 320;
    for _ in 0..(total / 8) {
        let batch = (0..8).map(|_| msg(None, &payload)).collect();
        client.publish("blobs", batch).await.expect("publish");
    }
    // Let the stuck group's dispatcher read ahead as far as it will.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(&admin.get_text("/metrics").await.1);
    let grown = after.saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the broker grew by {} MiB while 160 MiB of large messages waited for a stuck subscriber",
        grown >> 20
    );
    let (_, groups) = admin.get("/v1/broker/groups").await;
    let stuck = groups
        .as_array()
        .expect("array")
        .iter()
        .find(|g| g["group"] == "stuck")
        .expect("stuck group")
        .clone();
    assert!(stuck["in_flight"].as_u64() <= Some(4), "{stuck}");
    assert!(stuck["lag"].as_u64() >= Some(total - 4), "{stuck}");
}
