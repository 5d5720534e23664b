//! The tamper-evident audit log: each entry carries the SHA-256 of its content chained to the
//! previous entry's hash, and `audit_head` holds the newest (seq, hash). Editing, deleting or
//! reordering any entry, including the last ones, breaks the chain and `verify_audit` says where.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{from_millis, to_millis, Error, Result, Store};
use crate::model::{now, Timestamp};

/// Hash that precedes the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What to record about one request (never bodies, never secrets).
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Username, or `anonymous` / `login:<name>` for unauthenticated attempts.
    pub actor: String,
    /// Method and route template, such as `POST /v1/clusters`.
    pub action: String,
    /// Concrete path or object id acted on.
    pub object: String,
    /// Client address.
    pub source: String,
    /// `success`, `denied` or `failure` with the HTTP status.
    pub outcome: String,
    pub request_id: String,
}

/// One stored audit entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub source: String,
    pub outcome: String,
    pub request_id: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Substring of the action, such as `clusters`.
    pub action: Option<String>,
    /// Outcome prefix: `success`, `denied` or `failure`.
    pub outcome: Option<String>,
    /// Entries at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Entries before this RFC 3339 time.
    pub until: Option<String>,
    /// Entries with a sequence number greater than this (paging cursor).
    pub after_seq: Option<i64>,
    /// Entries per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// Result of verifying the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ChainReport {
    /// Entries checked.
    pub entries: i64,
    /// The first problem found, naming the entry; absent when the chain is intact.
    pub problem: Option<String>,
}

fn content_hash(prev: &str, seq: i64, at: i64, e: &AuditEntry) -> String {
    // JSON of a tuple is an unambiguous encoding of the fields (no delimiter games).
    let content = serde_json::json!([
        seq,
        at,
        e.actor,
        e.action,
        e.object,
        e.source,
        e.outcome,
        e.request_id
    ]);
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(content.to_string().as_bytes());
    hex::encode(h.finalize())
}

fn record_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        at: from_millis(r.get(1)?),
        actor: r.get(2)?,
        action: r.get(3)?,
        object: r.get(4)?,
        source: r.get(5)?,
        outcome: r.get(6)?,
        request_id: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

const COLUMNS: &str = "SELECT seq, at, actor, action, object, source, outcome, request_id, prev_hash, hash FROM audit_log";

fn parse_time(field: &str, s: &str) -> Result<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(to_millis)
        .map_err(|_| {
            crate::model::Invalid::new(
                field,
                format!("{s:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"),
            )
            .into()
        })
}

/// Verify the whole chain on one connection.
fn verify(c: &Connection) -> Result<ChainReport> {
    let mut stmt = c
        .prepare(&format!("{COLUMNS} ORDER BY seq"))
        .map_err(Error::sql("read audit log"))?;
    let rows = stmt
        .query_map([], record_row)
        .map_err(Error::sql("read audit log"))?;
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut entries = 0;
    for row in rows {
        let r = row.map_err(Error::sql("read audit log"))?;
        entries += 1;
        if r.seq != expected_seq {
            return Ok(ChainReport {
                entries,
                problem: Some(format!(
                    "entries {expected_seq} to {} are missing (deleted)",
                    r.seq - 1
                )),
            });
        }
        if r.prev_hash != prev {
            return Ok(ChainReport {
                entries,
                problem: Some(format!(
                    "entry {} does not follow entry {}: its previous-hash was changed",
                    r.seq,
                    r.seq - 1
                )),
            });
        }
        let entry = AuditEntry {
            actor: r.actor.clone(),
            action: r.action.clone(),
            object: r.object.clone(),
            source: r.source.clone(),
            outcome: r.outcome.clone(),
            request_id: r.request_id.clone(),
        };
        if content_hash(&prev, r.seq, to_millis(r.at), &entry) != r.hash {
            return Ok(ChainReport {
                entries,
                problem: Some(format!(
                    "entry {} was edited: its hash does not match its content",
                    r.seq
                )),
            });
        }
        prev = r.hash;
        expected_seq += 1;
    }
    let head: Option<(i64, String)> = c
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(Error::sql("read audit head"))?;
    let last_seq = expected_seq - 1;
    let problem = match head {
        None if last_seq == 0 => None,
        None => Some("the audit head record is missing".to_string()),
        Some((seq, _)) if seq > last_seq => Some(format!(
            "entries {} to {seq} are missing (deleted from the end)",
            last_seq + 1
        )),
        Some((seq, hash)) if seq != last_seq || hash != prev => Some(format!(
            "the audit head (entry {seq}) does not match the last entry {last_seq}"
        )),
        Some(_) => None,
    };
    Ok(ChainReport { entries, problem })
}

/// Append `entry` to the chain inside the caller's transaction.
pub(super) fn append_tx(tx: &Connection, entry: AuditEntry, at: Timestamp) -> Result<AuditRecord> {
    let head: Option<(i64, String)> = tx
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(Error::sql("read audit head"))?;
    let (prev_seq, prev_hash) = head.unwrap_or((0, GENESIS.to_string()));
    let seq = prev_seq + 1;
    let hash = content_hash(&prev_hash, seq, to_millis(at), &entry);
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, action, object, source, outcome, request_id, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![seq, to_millis(at), entry.actor, entry.action, entry.object, entry.source, entry.outcome, entry.request_id, prev_hash, hash],
    )
    .map_err(Error::sql("append audit entry"))?;
    tx.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, hash],
    )
    .map_err(Error::sql("update audit head"))?;
    Ok(AuditRecord {
        seq,
        at,
        actor: entry.actor,
        action: entry.action,
        object: entry.object,
        source: entry.source,
        outcome: entry.outcome,
        request_id: entry.request_id,
        prev_hash,
        hash,
    })
}

impl Store {
    /// Record that a mutating requestimpl Store {
    /// Record that a mutating request is about to run, before it can change anything; its
    /// chained entry (`append_audit`) replaces this record. See `recover_pending_audit`.
    pub async fn begin_audit(&self, entry: AuditEntry) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "INSERT OR REPLACE INTO audit_pending (request_id, at, actor, action, object, source) VALUES (?, ?, ?, ?, ?, ?)",
                params![entry.request_id, to_millis(now()), entry.actor, entry.action, entry.object, entry.source],
            )
            .map_err(Error::sql("record pending audit entry"))?;
            Ok(())
        })
        .await
    }

    /// Append an entry to the chain (and drop its pending record, in the same transaction).
    pub async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.write(move |tx, _| {
            tx.execute(
                "DELETE FROM audit_pending WHERE request_id = ?",
                [&entry.request_id],
            )
            .map_err(Error::sql("drop pending audit entry"))?;
            append_tx(tx, entry, now())
        })
        .await
    }

    /// Turn the pending records of requests that were in flight when the appliance stopped
    /// into chained entries with an "interrupted" outcome; returns how many. Run at start,
    /// before serving.
    pub async fn recover_pending_audit(&self) -> Result<usize> {
        self.write(|tx, _| {
            let pending = {
                let mut stmt = tx
                    .prepare("SELECT request_id, at, actor, action, object, source FROM audit_pending ORDER BY at, request_id")
                    .map_err(Error::sql("read pending audit entries"))?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, i64>(1)?,
                            AuditEntry {
                                request_id: r.get(0)?,
                                actor: r.get(2)?,
                                action: r.get(3)?,
                                object: r.get(4)?,
                                source: r.get(5)?,
                                outcome: "interrupted: the appliance stopped before answering; check the object".into(),
                            },
                        ))
                    })
                    .map_err(Error::sql("read pending audit entries"))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(Error::sql("read pending audit entries"))?;
                rows
            };
            let n = pending.len();
            for (at, entry) in pending {
                append_tx(tx, entry, from_millis(at))?;
            }
            tx.execute("DELETE FROM audit_pending", [])
                .map_err(Error::sql("clear pending audit entries"))?;
            Ok(n)
        })
        .await
    }

    /// Audit entries matching `f`, oldest first.
    pub async fn list_audit(&self, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        let limit = match f.limit {
            None => 100,
            Some(n) if (1..=1000).contains(&n) => n,
            Some(_) => {
                return Err(
                    crate::model::Invalid::new("limit", "must be between 1 and 1000").into(),
                )
            }
        };
        let since = f
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?;
        let until = f
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?;
        self.read(move |c| {
            let mut sql = format!("{COLUMNS} WHERE seq > ?");
            let mut p: Vec<rusqlite::types::Value> = vec![f.after_seq.unwrap_or(0).into()];
            if let Some(a) = f.actor {
                sql.push_str(" AND actor = ?");
                p.push(a.into());
            }
            if let Some(a) = f.action {
                sql.push_str(" AND instr(action, ?) > 0");
                p.push(a.into());
            }
            if let Some(o) = f.outcome {
                sql.push_str(" AND substr(outcome, 1, length(?)) = ?");
                p.push(o.clone().into());
                p.push(o.into());
            }
            if let Some(s) = since {
                sql.push_str(" AND at >= ?");
                p.push(s.into());
            }
            if let Some(u) = until {
                sql.push_str(" AND at < ?");
                p.push(u.into());
            }
            sql.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
            let mut stmt = c.prepare(&sql).map_err(Error::sql("list audit"))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(p.iter()), record_row)
                .map_err(Error::sql("list audit"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list audit"))?;
            Ok(rows)
        })
        .await
    }

    /// The newest `n` entries, newest first (for the console).
    pub async fn recent_audit(&self, n: u32) -> Result<Vec<AuditRecord>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("{COLUMNS} ORDER BY seq DESC LIMIT ?"))
                .map_err(Error::sql("list audit"))?;
            let rows = stmt
                .query_map([n], record_row)
                .map_err(Error::sql("list audit"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list audit"))?;
            Ok(rows)
        })
        .await
    }

    /// Verify the audit chain from the first entry to the head.
    pub async fn verify_audit(&self) -> Result<ChainReport> {
        self.read(verify).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SealingKey;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            actor: "admin".into(),
            action: "POST /v1/tenants".into(),
            object: format!("/v1/tenants/{i}"),
            source: "127.0.0.1".into(),
            outcome: "success 201".into(),
            request_id: format!("r{i}"),
        }
    }

    async fn store_with_entries(n: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tmp");
        let store =
            Store::open(&dir.path().join("db"), SealingKey::from_bytes(&[1; 32])).expect("open");
        for i in 0..n {
            store.append_audit(entry(i)).await.expect("append");
        }
        (dir, store)
    }

    fn raw(dir: &tempfile::TempDir) -> Connection {
        Connection::open(dir.path().join("db")).expect("raw")
    }

    #[tokio::test]
    async fn requests_in_flight_at_a_crash_become_interrupted_entries() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("db");
        let key = SealingKey::from_bytes(&[1; 32]);
        {
            let store = Store::open(&path, key.clone()).expect("open");
            store.append_audit(entry(0)).await.expect("append");
            // Finished request: its pending record goes with the chained entry.
            store.begin_audit(entry(1)).await.expect("begin");
            store
                .append_audit(AuditEntry {
                    outcome: "success 201".into(),
                    ..entry(1)
                })
                .await
                .expect("append");
            // In flight when the process dies.
            store
                .begin_audit(AuditEntry {
                    outcome: String::new(),
                    ..entry(2)
                })
                .await
                .expect("begin");
        }
        let store = Store::open(&path, key).expect("reopen");
        assert_eq!(store.recover_pending_audit().await.expect("recover"), 1);
        assert_eq!(
            store.recover_pending_audit().await.expect("again"),
            0,
            "recovered once"
        );
        let all = store
            .list_audit(AuditFilter::default())
            .await
            .expect("list");
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].request_id, "r2");
        assert!(
            all[2].outcome.starts_with("interrupted"),
            "{}",
            all[2].outcome
        );
        assert_eq!(store.verify_audit().await.expect("verify").problem, None);
    }

    #[tokio::test]
    async fn intact_chain_verifies() {
        let (_d, s) = store_with_entries(5).await;
        assert_eq!(
            s.verify_audit().await.expect("verify"),
            ChainReport {
                entries: 5,
                problem: None
            }
        );
    }

    #[tokio::test]
    async fn detects_edited_entry() {
        let (d, s) = store_with_entries(5).await;
        raw(&d)
            .execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3", [])
            .expect("edit");
        let report = s.verify_audit().await.expect("verify");
        assert!(report
            .problem
            .expect("problem")
            .contains("entry 3 was edited"));
    }

    #[tokio::test]
    async fn detects_deleted_middle_and_tail_entries() {
        let (d, s) = store_with_entries(5).await;
        raw(&d)
            .execute("DELETE FROM audit_log WHERE seq = 2", [])
            .expect("delete");
        assert!(s
            .verify_audit()
            .await
            .expect("verify")
            .problem
            .expect("p")
            .contains("missing"));
        let (d, s) = store_with_entries(5).await;
        raw(&d)
            .execute("DELETE FROM audit_log WHERE seq = 5", [])
            .expect("delete");
        assert!(s
            .verify_audit()
            .await
            .expect("verify")
            .problem
            .expect("p")
            .contains("deleted from the end"));
    }
}
