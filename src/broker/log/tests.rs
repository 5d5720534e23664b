//! Tests of the whole log through its public API: durability, recovery from damaged files,
//! idempotence, retention, group commit, backpressure and a `kill -9` of a writing process.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::*;

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid topic")
}

/// Small segments and a fine index so that a few records exercise rolls and index lookups.
fn small_config(root: &Path) -> LogConfig {
    let mut c = LogConfig::new(root);
    c.segment_bytes = 4096;
    c.index_interval_bytes = 256;
    c
}

/// A payload that encodes its id, so a record can be checked byte for byte.
fn payload_for(id: u64, len: usize) -> Vec<u8> {
    let seed = id.to_le_bytes();
    (0..len).map(|i| seed[i % 8] ^ (i as u8)).collect()
}

async fn open(config: LogConfig) -> Log {
    Log::open(config).await.expect("open log")
}

/// Reads the whole topic, in bounded steps.
async fn read_all(log: &Log, t: &TopicName) -> Vec<StoredRecord> {
    let mut out: Vec<StoredRecord> = Vec::new();
    let mut from = 0;
    for _ in 0..100_000 {
        let batch = log
            .read(t, from, ReadLimits::default())
            .await
            .expect("read");
        let Some(last) = batch.last() else { break };
        from = last.offset + 1;
        out.extend(batch);
    }
    out
}

async fn append_one(log: &Log, t: &TopicName, record: NewRecord) -> Appended {
    let got = log.append(t, vec![record]).await.expect("append");
    got[0]
}

fn segment_files(root: &Path, t: &TopicName) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root.join("topics").join(t.as_str()))
        .expect("list topic")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Holds the writer thread just before it collects a batch.
fn hold_writer(log: &Log) -> MutexGuard<'_, ()> {
    log.inner
        .shared
        .gate
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Polls `cond` every 5 ms for at most `limit`.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

#[tokio::test]
async fn append_then_read_returns_every_field_in_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(LogConfig::new(dir.path())).await;
    let t = topic("clusters.c1.desired");
    let records: Vec<NewRecord> = (0..5u64)
        .map(|i| {
            NewRecord::new(payload_for(i, 100 + i as usize))
                .with_key(format!("key-{}", i % 2))
                .with_header("content-type", b"application/json".to_vec())
        })
        .collect();
    let got = log.append(&t, records.clone()).await.expect("append");
    assert_eq!(
        got.iter().map(|a| a.offset).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert!(got.iter().all(|a| !a.duplicate));
    let more = append_one(&log, &t, NewRecord::new(b"sixth".to_vec())).await;
    assert_eq!(more.offset, 5);

    let back = read_all(&log, &t).await;
    assert_eq!(back.len(), 6);
    for (i, (r, sent)) in back.iter().zip(&records).enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.payload, sent.payload);
        assert_eq!(r.key, sent.key);
        assert_eq!(r.headers, sent.headers);
        assert_eq!(r.producer, None);
    }
    assert!(back
        .windows(2)
        .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
    let now = writer::now_ms();
    assert!(back[0].timestamp_ms <= now && back[0].timestamp_ms + 60_000 > now);
    assert_eq!(back[5].payload, b"sixth");

    let stats = log.topic_stats(&t).expect("stats");
    assert_eq!(
        (stats.first_offset, stats.next_offset, stats.segments),
        (0, 6, 1)
    );
    assert_eq!(log.topics(), vec![t.clone()]);
    log.close().await.expect("close");
}

#[tokio::test]
async fn acknowledgement_comes_after_an_fsync() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(LogConfig::new(dir.path())).await;
    let t = topic("a");
    let changes = log.durable_changes();
    for i in 0..5 {
        let before = log.writer_stats().syncs;
        append_one(&log, &t, NewRecord::new(vec![i; 10])).await;
        let after = log.writer_stats().syncs;
        assert_eq!(
            after,
            before + 1,
            "append {i} was acknowledged without its own sync"
        );
    }
    assert!(
        changes.has_changed().expect("watch"),
        "readers are told about durable batches"
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn reads_respect_limits_start_mid_topic_and_stop_at_the_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(small_config(dir.path())).await;
    let t = topic("reads");
    let records: Vec<NewRecord> = (0..100)
        .map(|i| NewRecord::new(payload_for(i, 100)))
        .collect();
    log.append(&t, records).await.expect("append");
    assert!(log.topic_stats(&t).expect("stats").segments > 2);

    let limits = ReadLimits {
        max_records: 10,
        max_bytes: 1 << 20,
    };
    let got = log.read(&t, 37, limits).await.expect("read");
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (37..47).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|r| r.payload == payload_for(r.offset, 100)));

    let one = ReadLimits {
        max_records: 100,
        max_bytes: 1,
    };
    let got = log.read(&t, 90, one).await.expect("read");
    assert_eq!(
        got.len(),
        1,
        "a record larger than max_bytes still comes alone"
    );
    let got = log.read(&t, 95, ReadLimits::default()).await.expect("read");
    assert_eq!(got.len(), 5);
    assert!(log
        .read(&t, 100, ReadLimits::default())
        .await
        .expect("read")
        .is_empty());
    assert!(log
        .read(&t, 1000, ReadLimits::default())
        .await
        .expect("read")
        .is_empty());
    let err = log
        .read(&topic("nope"), 0, ReadLimits::default())
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::UnknownTopic { .. }), "{err}");
    log.close().await.expect("close");
}

#[tokio::test]
async fn offsets_stay_dense_across_segment_rolls_and_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("dense");
    let mut expected = 0u64;
    for round in 0..3 {
        let log = open(small_config(dir.path())).await;
        for i in 0..40u64 {
            let id = round * 1000 + i;
            let a = append_one(&log, &t, NewRecord::new(payload_for(id, 300))).await;
            assert_eq!(a.offset, expected, "round {round}");
            expected += 1;
        }
        log.close().await.expect("close");
        if round == 1 {
            // Sidecar indexes are an optimisation: without them the segments are scanned.
            for f in fs::read_dir(dir.path().join("topics/dense")).expect("list") {
                let p = f.expect("entry").path();
                if p.extension().is_some_and(|e| e == "idx") {
                    fs::remove_file(p).expect("remove idx");
                }
            }
        }
    }
    let log = open(small_config(dir.path())).await;
    let all = read_all(&log, &t).await;
    assert_eq!(all.len() as u64, expected);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        let id = (i as u64 / 40) * 1000 + i as u64 % 40;
        assert_eq!(r.payload, payload_for(id, 300));
    }
    let stats = log.topic_stats(&t).expect("stats");
    assert!(stats.segments >= 9, "{stats:?}");
    assert_eq!(stats.segments, segment_files(dir.path(), &t).len());
    assert_eq!(stats.next_offset, expected);
    log.close().await.expect("close");
}

#[tokio::test]
async fn retried_producer_sequence_returns_the_original_offset_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("idem");
    let log = open(small_config(dir.path())).await;
    let r = |p: u64, s: u64| NewRecord::new(payload_for(p * 100 + s, 200)).with_producer(p, s);
    let got = log
        .append(&t, vec![r(7, 0), r(7, 1)])
        .await
        .expect("append");
    assert_eq!(
        got,
        [
            Appended {
                offset: 0,
                duplicate: false
            },
            Appended {
                offset: 1,
                duplicate: false
            }
        ]
    );
    assert_eq!(append_one(&log, &t, r(8, 0)).await.offset, 2);
    // A lost acknowledgement: the publisher resends seq 1, then 0..=2.
    assert_eq!(
        append_one(&log, &t, r(7, 1)).await,
        Appended {
            offset: 1,
            duplicate: true
        }
    );
    let got = log
        .append(&t, vec![r(7, 0), r(7, 1), r(7, 2)])
        .await
        .expect("append");
    assert_eq!(
        got,
        [
            Appended {
                offset: 0,
                duplicate: true
            },
            Appended {
                offset: 1,
                duplicate: true
            },
            Appended {
                offset: 3,
                duplicate: false
            }
        ]
    );
    // The same sequence twice in one append is stored once.
    let got = log
        .append(&t, vec![r(9, 5), r(9, 5)])
        .await
        .expect("append");
    assert_eq!(
        got[0],
        Appended {
            offset: 4,
            duplicate: false
        }
    );
    assert_eq!(
        got[1],
        Appended {
            offset: 4,
            duplicate: true
        }
    );
    // A gap rejects the whole append.
    let err = log
        .append(&t, vec![r(7, 3), r(7, 9)])
        .await
        .expect_err("gap");
    assert!(
        matches!(
            err,
            Error::SequenceGap {
                expected: 4,
                got: 9,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        log.topic_stats(&t).expect("stats").next_offset,
        5,
        "nothing of it stored"
    );
    assert_eq!(log.writer_stats().duplicates, 4);

    // Enough records of one producer to fill several segments.
    let total = PRODUCER_WINDOW as u64 + 28;
    for first in (0..total).step_by(16) {
        let batch: Vec<NewRecord> = (first..(first + 16).min(total)).map(|s| r(11, s)).collect();
        let offsets = log.append(&t, batch).await.expect("append");
        assert_eq!(offsets.first().map(|a| a.offset), Some(5 + first));
    }
    log.close().await.expect("close");

    for pass in ["with sidecar indexes", "after deleting them"] {
        let log = open(small_config(dir.path())).await;
        assert_eq!(
            append_one(&log, &t, r(7, 2)).await,
            Appended {
                offset: 3,
                duplicate: true
            },
            "{pass}"
        );
        assert_eq!(
            append_one(&log, &t, r(8, 0)).await,
            Appended {
                offset: 2,
                duplicate: true
            },
            "{pass}"
        );
        let oldest = total - PRODUCER_WINDOW as u64;
        assert_eq!(
            append_one(&log, &t, r(11, oldest)).await,
            Appended {
                offset: 5 + oldest,
                duplicate: true
            },
            "{pass}: a retry whose original is in a sealed segment"
        );
        let err = log
            .append(&t, vec![r(11, oldest - 1)])
            .await
            .expect_err("too old");
        assert!(matches!(err, Error::SequenceTooOld { .. }), "{pass}: {err}");
        assert_eq!(
            read_all(&log, &t).await.len() as u64,
            5 + total,
            "{pass}: no duplicate was stored"
        );
        log.close().await.expect("close");
        for f in fs::read_dir(dir.path().join("topics/idem")).expect("list") {
            let p = f.expect("entry").path();
            if p.extension().is_some_and(|e| e == "idx") {
                fs::remove_file(p).expect("remove idx");
            }
        }
    }
}

/// Appends `n` equal-sized records one by one and closes the log; returns the frame size.
async fn write_records(root: &Path, t: &TopicName, n: u64) -> u64 {
    let log = open(LogConfig::new(root)).await;
    for i in 0..n {
        append_one(&log, t, NewRecord::new(payload_for(i, 64))).await;
    }
    log.close().await.expect("close");
    NewRecord::new(payload_for(0, 64)).encoded_len() as u64
}

async fn assert_recovered(root: &Path, t: &TopicName, intact: u64) {
    let log = open(LogConfig::new(root)).await;
    let all = read_all(&log, t).await;
    assert_eq!(all.len() as u64, intact);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(
            (r.offset, &r.payload),
            (i as u64, &payload_for(i as u64, 64))
        );
    }
    assert_eq!(log.topic_stats(t).expect("stats").next_offset, intact);
    // The record the cut destroyed is written again, as a retrying publisher would.
    let a = append_one(&log, t, NewRecord::new(payload_for(intact, 64))).await;
    assert_eq!(
        a.offset, intact,
        "appends continue right after the last intact record"
    );
    let back = log
        .read(t, intact, ReadLimits::default())
        .await
        .expect("read");
    assert_eq!(back[0].payload, payload_for(intact, 64));
    log.close().await.expect("close");
}

#[tokio::test]
async fn truncated_tail_is_cut_on_open_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("torn");
    let frame = write_records(dir.path(), &t, 30).await;
    let seg = &segment_files(dir.path(), &t)[0];
    let len = fs::metadata(seg).expect("stat").len();
    // Cut inside the last record's body.
    OpenOptions::new()
        .write(true)
        .open(seg)
        .expect("open")
        .set_len(len - 5)
        .expect("cut");
    assert_recovered(dir.path(), &t, 29).await;
    // Cut inside the next record's frame header.
    let len = fs::metadata(seg).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(seg)
        .expect("open")
        .set_len(len - frame + 3)
        .expect("cut");
    assert_recovered(dir.path(), &t, 29).await;
}

#[tokio::test]
async fn bit_flipped_or_garbage_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("flipped");
    let frame = write_records(dir.path(), &t, 30).await;
    let seg = segment_files(dir.path(), &t)[0].clone();
    let mut bytes = fs::read(&seg).expect("read");
    let len = bytes.len() as u64;
    assert_eq!(len, segment::SEGMENT_HEADER + 30 * frame);
    // One bit in the payload of record 27: it and everything after it is dropped.
    let at = (len - 3 * frame + 40) as usize;
    bytes[at] ^= 0x10;
    fs::write(&seg, &bytes).expect("write");
    assert_recovered(dir.path(), &t, 27).await;

    // Garbage after a clean end (a write that reached the disk only in part).
    let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
    let garbage: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all(&garbage).expect("write");
    drop(f);
    assert_recovered(dir.path(), &t, 28).await;

    // A plausible length whose body is missing.
    let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
    f.write_all(&100u32.to_le_bytes()).expect("write");
    f.write_all(&[0; 12]).expect("write");
    drop(f);
    assert_recovered(dir.path(), &t, 29).await;
}

#[tokio::test]
async fn damage_inside_a_sealed_segment_is_reported_not_silently_dropped() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("sealed");
    let log = open(small_config(dir.path())).await;
    for i in 0..30 {
        append_one(&log, &t, NewRecord::new(payload_for(i, 500))).await;
    }
    log.close().await.expect("close");
    let first = segment_files(dir.path(), &t)[0].clone();
    let mut bytes = fs::read(&first).expect("read");
    bytes[100] ^= 1;
    fs::write(&first, &bytes).expect("write");

    let log = open(small_config(dir.path())).await;
    let err = log
        .read(&t, 0, ReadLimits::default())
        .await
        .expect_err("corrupt read");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("00000000000000000000.log"),
        "{err}"
    );
    log.close().await.expect("close");

    fs::remove_file(segment::index_path(first.parent().expect("dir"), 0)).expect("remove idx");
    let err = Log::open(small_config(dir.path()))
        .await
        .expect_err("corrupt open");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("sealed segment"), "{err}");
}

#[tokio::test]
async fn retention_by_age_deletes_old_sealed_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("aged");
    let mut config = small_config(dir.path());
    config.retention = Retention {
        max_age: Some(Duration::from_secs(1)),
        max_bytes: None,
    };
    let log = open(config).await;
    for i in 0..30 {
        append_one(&log, &t, NewRecord::new(payload_for(i, 500))).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    for i in 30..60 {
        append_one(&log, &t, NewRecord::new(payload_for(i, 500))).await;
    }
    let all = read_all(&log, &t).await;
    let old_ts = all[29].timestamp_ms;
    assert!(all[30].timestamp_ms > old_ts);
    let before = log.topic_stats(&t).expect("stats");

    let first_ts = all[0].timestamp_ms;
    assert_eq!(
        log.enforce_retention_at(first_ts + 1000)
            .await
            .expect("retention"),
        0,
        "nothing older than the age"
    );
    let deleted = log
        .enforce_retention_at(old_ts + 1001)
        .await
        .expect("retention");
    assert!(deleted >= 2, "{deleted}");
    let after = log.topic_stats(&t).expect("stats");
    assert_eq!(after.segments, before.segments - deleted);
    assert!(
        after.first_offset > 0 && after.first_offset <= 30,
        "{after:?}"
    );
    let kept = read_all(&log, &t).await;
    assert_eq!(kept[0].offset, after.first_offset);
    assert!(kept.iter().all(|r| r.payload == payload_for(r.offset, 500)));
    assert_eq!(segment_files(dir.path(), &t).len(), after.segments);

    // Everything is old now, but the active segment stays and offsets go on.
    log.enforce_retention_at(u64::MAX / 2)
        .await
        .expect("retention");
    let last = log.topic_stats(&t).expect("stats");
    assert_eq!(last.segments, 1);
    assert_eq!(last.next_offset, 60);
    assert_eq!(
        append_one(&log, &t, NewRecord::new(b"x".to_vec()))
            .await
            .offset,
        60
    );
    log.close().await.expect("close");

    let log = open(small_config(dir.path())).await;
    let reopened = log.topic_stats(&t).expect("stats");
    assert_eq!(
        (reopened.first_offset, reopened.next_offset),
        (last.first_offset, 61)
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn retention_by_size_runs_in_the_background_and_keeps_the_topic_under_its_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("sized.events");
    let other = topic("kept");
    let mut config = small_config(dir.path());
    config.retention = Retention::default();
    config.topic_retention = vec![(
        "sized".into(),
        Retention {
            max_age: None,
            max_bytes: Some(3 * 4096),
        },
    )];
    config.retention_interval = Duration::from_millis(50);
    let log = open(config).await;
    for i in 0..100 {
        append_one(&log, &t, NewRecord::new(payload_for(i, 500))).await;
        append_one(&log, &other, NewRecord::new(payload_for(i, 500))).await;
    }
    let shrunk = wait_for(Duration::from_secs(10), || {
        log.topic_stats(&t).is_some_and(|s| s.bytes <= 3 * 4096)
    })
    .await;
    let stats = log.topic_stats(&t).expect("stats");
    assert!(shrunk, "retention did not run: {stats:?}");
    assert!(
        stats.first_offset > 50 && stats.next_offset == 100,
        "{stats:?}"
    );
    assert!(log.writer_stats().segments_deleted > 0);
    let kept = read_all(&log, &t).await;
    assert_eq!(kept.len() as u64, 100 - stats.first_offset);
    let untouched = log.topic_stats(&other).expect("stats");
    assert_eq!(
        untouched.first_offset, 0,
        "a topic no rule matches keeps the default"
    );
    // Reading from before the first kept offset starts at the first kept one.
    let got = log.read(&t, 0, ReadLimits::default()).await.expect("read");
    assert_eq!(got[0].offset, stats.first_offset);
    log.close().await.expect("close");
}

#[tokio::test]
async fn offset_for_time_finds_the_first_record_at_or_after_a_time() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("timed");
    let log = open(small_config(dir.path())).await;
    let mut firsts = Vec::new();
    for g in 0..5u64 {
        let records: Vec<NewRecord> = (0..10)
            .map(|i| NewRecord::new(payload_for(g * 10 + i, 300)))
            .collect();
        let got = log.append(&t, records).await.expect("append");
        firsts.push(got[0].offset);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let all = read_all(&log, &t).await;
    check_offsets_for_time(&log, &t, &all, &firsts).await;
    log.close().await.expect("close");
    let log = open(small_config(dir.path())).await;
    check_offsets_for_time(&log, &t, &all, &firsts).await;
    log.close().await.expect("close");
}

/// Each group's first record is found by its own timestamp and by any time after the group
/// before it.
async fn check_offsets_for_time(log: &Log, t: &TopicName, all: &[StoredRecord], firsts: &[u64]) {
    for (g, &first) in firsts.iter().enumerate() {
        let ts = all[first as usize].timestamp_ms;
        assert_eq!(
            log.offset_for_time(t, ts).await.expect("lookup"),
            first,
            "group {g}"
        );
        if g > 0 {
            let prev_last = &all[first as usize - 1];
            assert!(prev_last.timestamp_ms < ts);
            let after_prev = prev_last.timestamp_ms + 1;
            assert_eq!(
                log.offset_for_time(t, after_prev).await.expect("lookup"),
                first
            );
        }
    }
    assert_eq!(log.offset_for_time(t, 0).await.expect("lookup"), 0);
    let end = all.last().map_or(0, |r| r.timestamp_ms) + 1;
    assert_eq!(
        log.offset_for_time(t, end).await.expect("lookup"),
        all.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard is the writer thread's test gate; no async task ever takes it.
#[allow(clippy::await_holding_lock)]
async fn group_commit_syncs_once_per_touched_file_for_all_queued_appends() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(LogConfig::new(dir.path())).await;
    let topics = [topic("gc.a"), topic("gc.b")];
    for t in &topics {
        append_one(&log, t, NewRecord::new(b"create".to_vec())).await;
    }
    let before = log.writer_stats();
    let per = (APPEND_OVERHEAD + NewRecord::new(vec![0; 1024]).encoded_len()) as u64;
    let gate = hold_writer(&log);
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let log = log.clone();
            let t = topics[(i % 2) as usize].clone();
            tokio::spawn(
                async move { append_one(&log, &t, NewRecord::new(payload_for(i, 1024))).await },
            )
        })
        .collect();
    let queued = wait_for(Duration::from_secs(10), || {
        log.writer_stats().queued_bytes == 64 * per
    })
    .await;
    assert!(queued, "{:?}", log.writer_stats());
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(gate);
    let mut offsets = [Vec::new(), Vec::new()];
    for (i, task) in tasks.into_iter().enumerate() {
        offsets[i % 2].push(task.await.expect("task").offset);
    }
    for o in &mut offsets {
        o.sort_unstable();
        assert_eq!(*o, (1..33).collect::<Vec<u64>>());
    }
    let after = log.writer_stats();
    let batches = after.batches - before.batches;
    let syncs = after.syncs - before.syncs;
    assert!(batches <= 2, "64 queued appends took {batches} batches");
    assert!(
        syncs <= 2 * batches,
        "{syncs} fsyncs for {batches} batches over 2 topics"
    );
    assert!(after.largest_batch >= 32, "{after:?}");
    log.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard is the writer thread's test gate; no async task ever takes it.
#[allow(clippy::await_holding_lock)]
async fn full_queue_makes_publishers_wait_and_keeps_queued_bytes_bounded() {
    let dir = tempfile::tempdir().expect("tmp");
    let per = APPEND_OVERHEAD + NewRecord::new(vec![0; 1024]).encoded_len();
    let mut config = LogConfig::new(dir.path());
    config.max_record_bytes = 2048;
    config.queue_bytes = 8 * per;
    let log = open(config).await;
    let t = topic("bp");
    let finished = Arc::new(AtomicUsize::new(0));
    let gate = hold_writer(&log);
    let tasks: Vec<_> = (0..40u64)
        .map(|i| {
            let (log, t, finished) = (log.clone(), t.clone(), finished.clone());
            tokio::spawn(async move {
                let a = append_one(&log, &t, NewRecord::new(payload_for(i, 1024))).await;
                finished.fetch_add(1, Ordering::SeqCst);
                a.offset
            })
        })
        .collect();
    let waiting = wait_for(Duration::from_secs(10), || {
        log.writer_stats().queue_waits >= 32
    })
    .await;
    let stats = log.writer_stats();
    assert!(waiting, "{stats:?}");
    assert_eq!(
        stats.queued_bytes,
        8 * per as u64,
        "exactly the queue's worth is admitted"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert!(log.writer_stats().queued_bytes <= 8 * per as u64);
    drop(gate);
    let mut offsets = Vec::new();
    for task in tasks {
        offsets.push(task.await.expect("task"));
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (0..40).collect::<Vec<u64>>());
    assert_eq!(log.writer_stats().queued_bytes, 0);

    let err = log
        .append(&t, (0..9).map(|_| NewRecord::new(vec![0; 1024])).collect())
        .await
        .expect_err("larger than the queue");
    assert!(matches!(err, Error::AppendTooLarge { .. }), "{err}");
    log.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_keep_their_order_and_readers_see_only_whole_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(small_config(dir.path())).await;
    let topics: Vec<TopicName> = (0..4).map(|i| topic(&format!("conc.t{i}"))).collect();
    for t in &topics {
        append_one(&log, t, NewRecord::new(payload_for(u64::MAX, 10))).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, t, stop) = (log.clone(), topics[0].clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = 0u64;
            let start = Instant::now();
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(30) {
                let got = log
                    .read(&t, seen, ReadLimits::default())
                    .await
                    .expect("read");
                for r in got {
                    assert_eq!(r.offset, seen, "readers see dense offsets");
                    seen += 1;
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let publishers: Vec<_> = (0..16u64)
        .map(|p| {
            let (log, t) = (log.clone(), topics[(p % 4) as usize].clone());
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for i in 0..30u64 {
                    let rec = NewRecord::new(payload_for(p * 1000 + i, 200))
                        .with_key(p.to_le_bytes().to_vec());
                    offsets.push(append_one(&log, &t, rec).await.offset);
                }
                offsets
            })
        })
        .collect();
    for (p, task) in publishers.into_iter().enumerate() {
        let offsets = task.await.expect("publisher");
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "publisher {p} out of order"
        );
    }
    stop.store(true, Ordering::SeqCst);
    assert!(reader.await.expect("reader") >= 1);
    for t in &topics {
        let all = read_all(&log, t).await;
        assert_eq!(all.len(), 1 + 4 * 30);
        let mut ids = HashSet::new();
        for r in &all[1..] {
            let p = u64::from_le_bytes(r.key.clone().expect("key").try_into().expect("8 bytes"));
            let i = (0..30)
                .find(|i| r.payload == payload_for(p * 1000 + i, 200))
                .expect("payload intact");
            assert!(ids.insert((p, i)));
        }
    }
    let stats = log.writer_stats();
    assert_eq!(stats.records, 4 + 16 * 30);
    log.close().await.expect("close");
}

#[tokio::test]
async fn consumer_group_commits_are_durable_and_checked() {
    let dir = tempfile::tempdir().expect("tmp");
    let t = topic("clusters.c1.health");
    let g = GroupName::new("orchestrator").expect("group");
    let log = open(LogConfig::new(dir.path())).await;
    assert_eq!(log.committed(&g, &t), None);
    log.append(&t, (0..10).map(|i| NewRecord::new(vec![i; 8])).collect())
        .await
        .expect("append");
    for offset in [3, 7, 10] {
        log.commit(&g, &t, offset).await.expect("commit");
        assert_eq!(log.committed(&g, &t), Some(offset));
    }
    let err = log.commit(&g, &t, 11).await.expect_err("beyond end");
    assert!(
        matches!(err, Error::CommitBeyondEnd { next: 10, .. }),
        "{err}"
    );
    let err = log
        .commit(&g, &topic("missing"), 0)
        .await
        .expect_err("unknown");
    assert!(matches!(err, Error::UnknownTopic { .. }), "{err}");
    assert_eq!(log.committed(&g, &t), Some(10));
    log.close().await.expect("close");

    let log = open(LogConfig::new(dir.path())).await;
    assert_eq!(log.committed(&g, &t), Some(10));
    assert_eq!(
        log.committed(&GroupName::new("other").expect("group"), &t),
        None
    );
    log.close().await.expect("close");
}

#[tokio::test]
async fn bad_input_is_rejected_whole_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = LogConfig::new(dir.path());
    config.max_record_bytes = 4096;
    let log = open(config).await;
    let t = topic("input");
    let err = log
        .append(
            &t,
            vec![NewRecord::new(vec![1]), NewRecord::new(vec![0; 5000])],
        )
        .await
        .expect_err("too large");
    assert!(
        matches!(err, Error::InvalidRecord { index: 1, .. }),
        "{err}"
    );
    let err = log
        .append(
            &t,
            vec![NewRecord::new(vec![1]).with_header("", b"v".to_vec())],
        )
        .await
        .expect_err("empty header name");
    assert!(
        matches!(err, Error::InvalidRecord { index: 0, .. }),
        "{err}"
    );
    assert!(log.topics().is_empty(), "no topic was created");
    assert!(log.append(&t, Vec::new()).await.expect("empty").is_empty());

    let err = Log::open(LogConfig::new(dir.path()))
        .await
        .expect_err("second open");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    log.close().await.expect("close");
    let err = log
        .append(&t, vec![NewRecord::new(vec![1])])
        .await
        .expect_err("closed");
    assert!(matches!(err, Error::Closed), "{err}");

    let mut bad = LogConfig::new(dir.path());
    bad.segment_bytes = 10;
    let err = Log::open(bad).await.expect_err("bad config");
    assert!(err.to_string().contains("segment_bytes"), "{err}");
}

/// Environment variable that turns [`kill_9_writer_child`] into the writing child process.
const KILL9_ROOT: &str = "PALISADE_BROKER_LOG_KILL9_ROOT";
const KILL9_TOPICS: [&str; 2] = ["kill9.a", "kill9.b"];

fn kill9_config(root: &Path) -> LogConfig {
    let mut c = LogConfig::new(root);
    // Small segments, so the kill can land during a roll too.
    c.segment_bytes = 256 << 10;
    c
}

fn kill9_payload(id: u64) -> Vec<u8> {
    payload_for(id, 100 + (id % 1900) as usize)
}

/// The child side of [`kill_9_loses_no_acknowledged_record`]: appends as fast as it can and
/// prints `ACK topic offset id` for every acknowledged record until it is killed.
#[test]
#[ignore = "child process of kill_9_loses_no_acknowledged_record, which starts it"]
fn kill_9_writer_child() {
    let Some(root) = std::env::var_os(KILL9_ROOT) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let log = open(kill9_config(Path::new(&root))).await;
        let publishers: Vec<_> = (0..8u64)
            .map(|p| {
                let log = log.clone();
                tokio::spawn(async move {
                    let t = topic(KILL9_TOPICS[(p % 2) as usize]);
                    let start = Instant::now();
                    // Bounded even if nobody kills us.
                    for i in 0..1_000_000u64 {
                        if start.elapsed() > Duration::from_secs(30) {
                            break;
                        }
                        let id = p * 10_000_000 + i;
                        let n = 1 + (i % 3) as usize;
                        let records = (0..n as u64)
                            .map(|k| NewRecord::new(kill9_payload(id * 4 + k)))
                            .collect();
                        let Ok(acked) = log.append(&t, records).await else {
                            break;
                        };
                        let mut out = std::io::stdout().lock();
                        for (k, a) in acked.iter().enumerate() {
                            let _ = writeln!(out, "ACK {} {} {}", t, a.offset, id * 4 + k as u64);
                        }
                        let _ = out.flush();
                    }
                })
            })
            .collect();
        for p in publishers {
            let _ = p.await;
        }
    });
}

#[test]
fn kill_9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tmp");
    let exe = std::env::current_exe().expect("current test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "broker::log::tests::kill_9_writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL9_ROOT, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start child");
    let stdout = child.stdout.take().expect("child stdout");
    let acks = Arc::new(Mutex::new(Vec::<(String, u64, u64)>::new()));
    let collector = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            // Ends at EOF, when the child dies.
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                // A line the kill cut short was never complete: skip it.
                if line.ends_with(b"\n") {
                    let text = String::from_utf8_lossy(&line);
                    let f: Vec<&str> = text.split_whitespace().collect();
                    if let ["ACK", t, offset, id] = f[..] {
                        if let (Ok(offset), Ok(id)) = (offset.parse(), id.parse()) {
                            acks.lock().unwrap_or_else(PoisonError::into_inner).push((
                                t.to_owned(),
                                offset,
                                id,
                            ));
                        }
                    }
                }
                line.clear();
            }
        })
    };
    let start = Instant::now();
    let count = || acks.lock().unwrap_or_else(PoisonError::into_inner).len();
    while start.elapsed() < Duration::from_secs(20)
        && !(count() >= 500 && start.elapsed() >= Duration::from_millis(1500))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    collector.join().expect("collector");
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(PoisonError::into_inner));
    assert!(
        acks.len() >= 500,
        "the child acknowledged only {} records",
        acks.len()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let log = open(kill9_config(dir.path())).await;
        let mut stored = std::collections::HashMap::new();
        for name in KILL9_TOPICS {
            let t = topic(name);
            let all = read_all(&log, &t).await;
            for (i, r) in all.iter().enumerate() {
                assert_eq!(r.offset, i as u64, "offsets dense after recovery");
            }
            let next = log.topic_stats(&t).expect("stats").next_offset;
            assert_eq!(next, all.len() as u64);
            assert_eq!(
                append_one(&log, &t, NewRecord::new(b"after".to_vec()))
                    .await
                    .offset,
                next
            );
            stored.insert(name.to_owned(), all);
        }
        for (t, offset, id) in &acks {
            let r = stored[t.as_str()]
                .get(*offset as usize)
                .unwrap_or_else(|| panic!("acknowledged record {t}@{offset} (id {id}) is lost"));
            assert_eq!(
                r.payload,
                kill9_payload(*id),
                "acknowledged record {t}@{offset} differs"
            );
        }
        log.close().await.expect("close");
    });
    eprintln!("kill -9: {} acknowledged records all present", acks.len());
}
