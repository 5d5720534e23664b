//! Palisade's broker against NATS JetStream, in the same run, on loopback.
//!
//! Starts a release `palisade serve` (broker over gRPC + mTLS, durable = fdatasync before the
//! ack) and a `nats-server -js` with file storage, then measures for 1 KiB messages:
//! durable publish throughput with 1 and 16 publishers (each keeping up to 256 messages in
//! flight), end-to-end latency (publish to delivery, p50/p99, at a fixed rate), and fan-out to
//! 1,000 subscribers. Prints a table with the ratio Palisade / JetStream.
//!
//! Run: `cargo bench --bench broker_compare` (needs Debian's nats-server; see
//! docs/benchmarks.md). Environment: `PALISADE_BIN` (default: target/release/palisade, built
//! first by the bench script), `BENCH_SECONDS` (per throughput run, default 5).

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use palisade::broker::client::{Client, RemoteConfig};
use palisade::broker::log::NewRecord;
use palisade::broker::pattern::Pattern;
use palisade::broker::SubscribeOptions;

const MESSAGE: usize = 1024;
const WINDOW: usize = 256;
const FANOUT: usize = 1000;
const FANOUT_MESSAGES: usize = 100;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

type Fail = Box<dyn std::error::Error + Send + Sync>;

/// Starts the appliance, completes setup and issues a broker-peer certificate.
async fn start_palisade(dir: &std::path::Path) -> Result<(Killed, RemoteConfig), Fail> {
    use std::io::BufRead;
    let bin = std::env::var("PALISADE_BIN").unwrap_or_else(|_| "target/release/palisade".into());
    let broker_port = free_port();
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--broker-listen"])
        .arg(format!("127.0.0.1:{broker_port}"))
        .arg("--data-dir")
        .arg(dir)
        .env("PALISADE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let (mut listen, mut token) = (None, None);
    for line in lines.by_ref() {
        let line = line?;
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Listening on:") {
            listen = Some(v.trim().to_string());
        }
        if let Some(v) = t.strip_prefix("Setup token:") {
            token = Some(v.trim().to_string());
        }
        if t.starts_with("Data directory:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let child = Killed(child);
    let base = format!("https://{}", listen.ok_or("no listen line")?);
    let ca = std::fs::read(dir.join("pki/ca.crt"))?;
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .cookie_store(true)
        .build()?;
    let password = "bench-password-long-enough";
    http.post(format!("{base}/v1/setup"))
        .json(&serde_json::json!({"token": token, "username": "admin", "password": password}))
        .send()
        .await?
        .error_for_status()?;
    let login: serde_json::Value = http
        .post(format!("{base}/v1/login"))
        .json(&serde_json::json!({"username": "admin", "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let csrf = login["csrf_token"].as_str().ok_or("no csrf")?.to_string();
    let issued: serde_json::Value = http
        .post(format!("{base}/v1/broker/certificates"))
        .header("x-csrf-token", csrf)
        .json(&serde_json::json!({"kind": "broker-peer", "subject": "bench"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let s = |k: &str| -> Result<String, Fail> {
        Ok(issued[k].as_str().ok_or("missing field")?.to_string())
    };
    let config = RemoteConfig::new(
        vec![format!("https://127.0.0.1:{broker_port}")],
        s("ca_pem")?,
        s("certificate_pem")?,
        s("private_key_pem")?,
    );
    Ok((child, config))
}

async fn start_nats(dir: &std::path::Path) -> Result<(Killed, async_nats::Client), Fail> {
    let port = free_port();
    let child = Killed(
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::connect(format!("127.0.0.1:{port}")).await {
            Ok(c) => return Ok((child, c)),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn payload() -> Vec<u8> {
    vec![b'x'; MESSAGE]
}

/// Messages per second over `seconds` with `publishers` pipelined Palisade publishers.
async fn palisade_throughput(client: &Client, topic: &str, publishers: usize, seconds: f64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (client, count, topic) = (client.clone(), count.clone(), topic.to_string());
        tasks.push(tokio::spawn(async move {
            let publisher = client.publisher(&topic).expect("publisher");
            let mut pending = VecDeque::new();
            while Instant::now() < stop {
                pending.push_back(
                    publisher
                        .send(vec![NewRecord::new(payload())])
                        .await
                        .expect("send"),
                );
                if pending.len() >= WINDOW {
                    if let Some(a) = pending.pop_front() {
                        a.wait().await.expect("durable");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for a in pending {
                a.wait().await.expect("durable");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.expect("publisher task");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn nats_throughput(
    js: &async_nats::jetstream::Context,
    subject: &str,
    publishers: usize,
    seconds: f64,
) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (js, count, subject) = (js.clone(), count.clone(), subject.to_string());
        tasks.push(tokio::spawn(async move {
            let mut pending = VecDeque::new();
            while Instant::now() < stop {
                pending.push_back(
                    js.publish(subject.clone(), payload().into())
                        .await
                        .expect("publish"),
                );
                if pending.len() >= WINDOW {
                    if let Some(a) = pending.pop_front() {
                        a.await.expect("ack");
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for a in pending {
                a.await.expect("ack");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.expect("publisher task");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Milliseconds since the Unix epoch, comparable with the log's timestamps.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Publishes `n` messages at `rate` per second, each stamped with its send time, and returns
/// the sorted publish-to-delivery latencies in milliseconds.
async fn palisade_latency(client: &Client, n: usize, rate: f64) -> Vec<f64> {
    let origin = Instant::now();
    let mut options = SubscribeOptions::new(Pattern::parse("bench.latency").expect("pattern"));
    options.credit = 1000;
    let mut sub = client.subscribe(options).await.expect("subscribe");
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await
            else {
                break;
            };
            sub.ack(&d);
            if d.attempt > 1 {
                eprintln!("redelivered: offset {} attempt {}", d.offset, d.attempt);
            }
            // Where the time went: send -> stored (the log's stamp) and stored -> received.
            let sent_wall = u64::from_le_bytes(d.payload[8..16].try_into().unwrap_or([0; 8]));
            let now_wall = wall_ms();
            if d.timestamp_ms.saturating_sub(sent_wall) > 1000
                || now_wall.saturating_sub(d.timestamp_ms) > 1000
            {
                eprintln!(
                    "slow: offset {} send->stored {} ms, stored->received {} ms",
                    d.offset,
                    d.timestamp_ms as i64 - sent_wall as i64,
                    now_wall as i64 - d.timestamp_ms as i64
                );
            }
            let sent = u64::from_le_bytes(d.payload[..8].try_into().unwrap_or([0; 8]));
            lat.push((origin.elapsed().as_nanos() as u64 - sent) as f64 / 1e6);
        }
        lat
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let publisher = client.publisher("bench.latency").expect("publisher");
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut acks = Vec::new();
    for _ in 0..n {
        ticker.tick().await;
        let mut p = payload();
        p[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
        p[8..16].copy_from_slice(&wall_ms().to_le_bytes());
        acks.push(publisher.send(vec![NewRecord::new(p)]).await.expect("send"));
    }
    for a in acks {
        a.wait().await.expect("durable");
    }
    let mut lat = receiver.await.expect("receiver");
    lat.sort_by(f64::total_cmp);
    lat
}

async fn nats_latency(
    js: &async_nats::jetstream::Context,
    stream: &async_nats::jetstream::stream::Stream,
    n: usize,
    rate: f64,
) -> Vec<f64> {
    use async_nats::jetstream::consumer;
    let origin = Instant::now();
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: format!("deliver.latency.{}", std::process::id()),
            filter_subject: "bench.latency".into(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_secs(30), messages.next()).await
            else {
                break;
            };
            let sent = u64::from_le_bytes(m.payload[..8].try_into().unwrap_or([0; 8]));
            lat.push((origin.elapsed().as_nanos() as u64 - sent) as f64 / 1e6);
        }
        lat
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut acks = Vec::new();
    for _ in 0..n {
        ticker.tick().await;
        let mut p = payload();
        p[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
        acks.push(
            js.publish("bench.latency", p.into())
                .await
                .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("ack");
    }
    let mut lat = receiver.await.expect("receiver");
    lat.sort_by(f64::total_cmp);
    lat
}

/// Deliveries per second to `FANOUT` subscribers of one topic, `FANOUT_MESSAGES` messages each.
async fn palisade_fanout(client: &Client) -> f64 {
    let received = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for _ in 0..FANOUT {
        let mut options = SubscribeOptions::new(Pattern::parse("bench.fanout").expect("pattern"));
        options.credit = FANOUT_MESSAGES as u64;
        subs.push(client.subscribe(options).await.expect("subscribe"));
    }
    let done = Arc::new(tokio::sync::Notify::new());
    for mut sub in subs {
        let (received, done) = (received.clone(), done.clone());
        tokio::spawn(async move {
            for _ in 0..FANOUT_MESSAGES {
                let Some(Ok(d)) = sub.next().await else {
                    return;
                };
                sub.ack(&d);
                if received.fetch_add(1, Ordering::Relaxed) + 1 == (FANOUT * FANOUT_MESSAGES) as u64
                {
                    done.notify_one();
                }
            }
        });
    }
    let started = Instant::now();
    let batch = (0..FANOUT_MESSAGES)
        .map(|_| NewRecord::new(payload()))
        .collect();
    client
        .publish("bench.fanout", batch)
        .await
        .expect("publish");
    let _ = tokio::time::timeout(Duration::from_secs(120), done.notified()).await;
    received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn nats_fanout(
    js: &async_nats::jetstream::Context,
    stream: &async_nats::jetstream::stream::Stream,
) -> f64 {
    use async_nats::jetstream::consumer;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    for i in 0..FANOUT {
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: format!("deliver.fanout.{i}"),
                filter_subject: "bench.fanout".into(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let (received, done) = (received.clone(), done.clone());
        tokio::spawn(async move {
            for _ in 0..FANOUT_MESSAGES {
                let Some(Ok(_)) = messages.next().await else {
                    return;
                };
                if received.fetch_add(1, Ordering::Relaxed) + 1 == (FANOUT * FANOUT_MESSAGES) as u64
                {
                    done.notify_one();
                }
            }
        });
    }
    let started = Instant::now();
    let mut acks = Vec::new();
    for _ in 0..FANOUT_MESSAGES {
        acks.push(
            js.publish("bench.fanout", payload().into())
                .await
                .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("ack");
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), done.notified()).await;
    received.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Flushes every dirty page to disk, so one system's unsynced writes do not slow the other's
/// syncs in the next measurement.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

fn row(name: &str, ours: f64, theirs: f64, unit: &str, higher_is_better: bool) {
    let ratio = ours / theirs;
    let verdict = if (higher_is_better && ratio >= 1.0) || (!higher_is_better && ratio <= 1.0) {
        "meets target"
    } else {
        "below target"
    };
    println!("| {name} | {ours:.2} {unit} | {theirs:.2} {unit} | {ratio:.2} | {verdict} |");
}

fn main() -> Result<(), Fail> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Fail> {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let tmp = tempfile::tempdir()?;
    let (_palisade, config) = start_palisade(&tmp.path().join("palisade")).await?;
    let (_nats, nc) = start_nats(&tmp.path().join("nats")).await?;
    let client = Client::connect(config)?;
    let js = async_nats::jetstream::new(nc);
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let phase = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
    // Warm both up (connections, files).
    palisade_throughput(&client, "bench.warmup", 1, 0.5).await;
    nats_throughput(&js, "bench.warmup", 1, 0.5).await;

    println!("| 1 KiB messages | Palisade | JetStream | ratio | target |");
    println!("|---|---|---|---|---|");
    for publishers in [1, 16].into_iter().filter(|_| phase("throughput")) {
        settle();
        let ours = palisade_throughput(
            &client,
            &format!("bench.tp{publishers}"),
            publishers,
            seconds,
        )
        .await;
        settle();
        let theirs =
            nats_throughput(&js, &format!("bench.tp{publishers}"), publishers, seconds).await;
        row(
            &format!("durable publish, {publishers} publisher(s)"),
            ours,
            theirs,
            "msg/s",
            true,
        );
    }
    let (n, rate) = (3000, 1000.0);
    if phase("latency") {
        settle();
        let ours = palisade_latency(&client, n, rate).await;
        settle();
        let theirs = nats_latency(&js, &stream, n, rate).await;
        assert_eq!(ours.len(), n, "Palisade delivered every latency message");
        assert_eq!(theirs.len(), n, "JetStream delivered every latency message");
        row(
            "end-to-end latency p50 (1,000 msg/s)",
            percentile(&ours, 0.5),
            percentile(&theirs, 0.5),
            "ms",
            false,
        );
        row(
            "end-to-end latency p99 (1,000 msg/s)",
            percentile(&ours, 0.99),
            percentile(&theirs, 0.99),
            "ms",
            false,
        );
    }
    if phase("fanout") {
        settle();
        let ours = palisade_fanout(&client).await;
        settle();
        let theirs = nats_fanout(&js, &stream).await;
        row(
            "fan-out to 1,000 subscribers",
            ours,
            theirs,
            "deliveries/s",
            true,
        );
    }
    println!();
    println!("Palisade acknowledges after fdatasync; JetStream (nats-server {}) acknowledges after writing to its files, fsyncing on its own schedule.",
        String::from_utf8_lossy(&Command::new("nats-server").arg("--version").output()?.stdout).trim());
    Ok(())
}
