//! Durable append throughput and latency of the broker log.
//!
//! `cargo bench --bench broker_log` appends 1 KiB records, one record per append, each append
//! waiting until it is durable, from 1 and 16 concurrent publishers, and prints a Markdown table.
//! A raw `pwrite` + `fdatasync` loop on the same disk gives the machine's limit for one
//! publisher. `PALISADE_BENCH_SECS` sets the seconds per case (default 5) and
//! `PALISADE_BENCH_DIR` the directory to write in (default: the system temporary directory,
//! which must be on the disk being measured, not tmpfs). Every loop is bounded in time and count.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use palisade::broker::log::{Log, LogConfig, NewRecord, TopicName, WriterStats};

const RECORD: usize = 1024;
const MAX_APPENDS_PER_PUBLISHER: u64 = 10_000_000;

struct Outcome {
    appends: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    stats: Option<WriterStats>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// One `pwrite` of a 1 KiB frame and one `fdatasync` per iteration.
fn raw_fdatasync(dir: &Path, secs: Duration) -> anyhow::Result<Outcome> {
    let path = dir.join("raw.dat");
    let file = File::create(&path).context("create raw file")?;
    let buf = vec![7u8; RECORD + 64];
    let mut latencies_us = Vec::new();
    let start = Instant::now();
    let mut pos = 0u64;
    while start.elapsed() < secs && (latencies_us.len() as u64) < MAX_APPENDS_PER_PUBLISHER {
        let t = Instant::now();
        file.write_all_at(&buf, pos).context("pwrite")?;
        file.sync_data().context("fdatasync")?;
        pos += buf.len() as u64;
        latencies_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    Ok(Outcome {
        appends: latencies_us.len() as u64,
        elapsed: start.elapsed(),
        latencies_us,
        stats: None,
    })
}

/// `publishers` tasks append one durable 1 KiB record at a time for `secs`, after a warm-up.
async fn run_log(
    dir: &Path,
    publishers: usize,
    topics: usize,
    secs: Duration,
) -> anyhow::Result<Outcome> {
    let log = Log::open(LogConfig::new(dir)).await?;
    let names: Vec<TopicName> = (0..topics)
        .map(|t| TopicName::new(format!("bench.t{t}")))
        .collect::<Result<_, _>>()?;
    let payload = Arc::new(vec![0x5au8; RECORD]);
    // Warm-up: create the topics and let the page cache and the allocator settle.
    let warm_until = Instant::now() + Duration::from_millis(500);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (log, t, payload) = (log.clone(), names[p % topics].clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < warm_until {
                log.append(&t, vec![NewRecord::new(payload.to_vec())])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let before = log.writer_stats();
    let start = Instant::now();
    let deadline = start + secs;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (log, t, payload) = (log.clone(), names[p % topics].clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut n = 0u64;
            while Instant::now() < deadline && n < MAX_APPENDS_PER_PUBLISHER {
                let record = NewRecord::new(payload.to_vec());
                let t0 = Instant::now();
                log.append(&t, vec![record]).await?;
                lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                n += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let after = log.writer_stats();
    log.close().await?;
    Ok(Outcome {
        appends: latencies_us.len() as u64,
        elapsed,
        latencies_us,
        stats: Some(WriterStats {
            batches: after.batches - before.batches,
            syncs: after.syncs - before.syncs,
            appends: after.appends - before.appends,
            ..after
        }),
    })
}

fn row(name: &str, mut o: Outcome) {
    o.latencies_us.sort_unstable();
    let rate = o.appends as f64 / o.elapsed.as_secs_f64();
    let (batches, per_sync) = match o.stats {
        Some(s) if s.syncs > 0 => (
            s.batches.to_string(),
            format!("{:.1}", s.appends as f64 / s.syncs as f64),
        ),
        _ => ("-".into(), "1.0".into()),
    };
    println!(
        "| {name} | {rate:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {batches} | {per_sync} |",
        rate * RECORD as f64 / 1e6,
        percentile(&o.latencies_us, 0.50),
        percentile(&o.latencies_us, 0.99),
        percentile(&o.latencies_us, 0.999),
    );
}

fn main() -> anyhow::Result<()> {
    let secs = std::env::var("PALISADE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    let secs = Duration::from_secs(secs.clamp(1, 60));
    let base = match std::env::var_os("PALISADE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .context("create benchmark directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;

    println!(
        "broker log: 1 KiB records, one record per append, {} s per case, in {}",
        secs.as_secs(),
        base.path().display()
    );
    println!();
    println!(
        "| case | appends/s | MB/s | p50 ms | p99 ms | p99.9 ms | batches | appends per fsync |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    row(
        "raw pwrite + fdatasync (machine limit, 1 writer)",
        raw_fdatasync(base.path(), secs)?,
    );
    for (publishers, topics) in [(1, 1), (16, 1), (16, 16)] {
        let dir = base.path().join(format!("p{publishers}-t{topics}"));
        let o = rt.block_on(run_log(&dir, publishers, topics, secs))?;
        let name = format!(
            "log, {publishers} publisher{}, {topics} topic{}",
            if publishers == 1 { "" } else { "s" },
            if topics == 1 { "" } else { "s" }
        );
        row(&name, o);
    }
    Ok(())
}
