//! What the orchestrator writes: machines of clusters, cluster status and deletion, sealed
//! per-cluster bootstrap secrets, and the results of cloud-account checks.
//!
//! Users never write these; the API reads them.

use rusqlite::{params, OptionalExtension, Row};

use super::events::insert_event_tx;
use super::{from_millis, to_millis, Error, Result, Store};
use crate::model::{
    now, AccountCheckResult, CheckState, ClusterStatus, Condition, MachinePhase, MachineRecord,
    NodeRole, PlacementOption, Severity,
};

const MACHINE_COLUMNS: &str = "SELECT cluster_id, name, pool, ordinal, role, provider_id, phase, reason, addresses, static_ip, created_at, updated_at, attempts FROM machines";

fn machine_row(r: &Row<'_>) -> rusqlite::Result<MachineRecord> {
    let role: String = r.get(4)?;
    let phase: String = r.get(6)?;
    let addresses: String = r.get(8)?;
    Ok(MachineRecord {
        cluster_id: r.get(0)?,
        name: r.get(1)?,
        pool: r.get(2)?,
        ordinal: r.get(3)?,
        role: if role == "control-plane" {
            NodeRole::ControlPlane
        } else {
            NodeRole::Worker
        },
        provider_id: r.get(5)?,
        phase: MachinePhase::parse(&phase).unwrap_or(MachinePhase::Failed),
        reason: r.get(7)?,
        addresses: serde_json::from_str(&addresses).unwrap_or_default(),
        static_ip: r.get(9)?,
        created_at: from_millis(r.get(10)?),
        updated_at: from_millis(r.get(11)?),
        attempts: r.get(12)?,
    })
}

fn role_str(role: NodeRole) -> &'static str {
    match role {
        NodeRole::ControlPlane => "control-plane",
        NodeRole::Worker => "worker",
    }
}

/// A machine the orchestrator is about to ask a provider for.
#[derive(Debug, Clone)]
pub struct NewMachine {
    pub cluster_id: String,
    pub name: String,
    pub pool: String,
    pub ordinal: u32,
    pub role: NodeRole,
}

/// What the orchestrator learned of a machine from its provider.
#[derive(Debug, Clone)]
pub struct MachineUpdate {
    pub provider_id: Option<String>,
    pub phase: MachinePhase,
    pub reason: String,
    pub addresses: Vec<String>,
}

/// What the orchestrator knows of a cluster besides its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterProgress {
    /// The user asked to delete it.
    pub deleting: bool,
    /// `<cluster version>:<account version>` at which a permanent error stopped the orchestrator.
    pub failed_at: Option<String>,
}

impl Store {
    /// The machines recorded for a cluster, by pool and ordinal.
    pub async fn machines(&self, cluster_id: &str) -> Result<Vec<MachineRecord>> {
        let id = cluster_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "{MACHINE_COLUMNS} WHERE cluster_id = ? ORDER BY pool, ordinal"
                ))
                .map_err(Error::sql("list machines"))?;
            let rows = stmt
                .query_map([&id], machine_row)
                .map_err(Error::sql("list machines"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list machines"))?;
            Ok(rows)
        })
        .await
    }

    /// Record a machine before asking the provider for it, so that a crash in between is
    /// resolved by looking it up by name. When `candidates` is given (the account's IP pool),
    /// the first address no machine of any cluster on the same account holds is reserved for
    /// it, in the same transaction. An existing record is returned unchanged.
    pub async fn reserve_machine(
        &self,
        m: NewMachine,
        candidates: Option<Vec<String>>,
    ) -> Result<MachineRecord> {
        self.write(move |tx, _| {
            if let Some(found) = tx
                .query_row(
                    &format!("{MACHINE_COLUMNS} WHERE cluster_id = ? AND name = ?"),
                    params![m.cluster_id, m.name],
                    machine_row,
                )
                .optional()
                .map_err(Error::sql("read machine"))?
            {
                return Ok(found);
            }
            let static_ip = match candidates {
                None => None,
                Some(candidates) => {
                    let mut stmt = tx
                        .prepare(
                            "SELECT m.static_ip FROM machines m JOIN clusters c ON c.id = m.cluster_id
                             WHERE m.static_ip IS NOT NULL AND c.cloud_account_id =
                               (SELECT cloud_account_id FROM clusters WHERE id = ?)",
                        )
                        .map_err(Error::sql("read used addresses"))?;
                    let used: std::collections::HashSet<String> = stmt
                        .query_map([&m.cluster_id], |r| r.get::<_, String>(0))
                        .map_err(Error::sql("read used addresses"))?
                        .collect::<rusqlite::Result<_>>()
                        .map_err(Error::sql("read used addresses"))?;
                    let free = candidates.into_iter().find(|a| !used.contains(a));
                    match free {
                        Some(a) => Some(a),
                        None => {
                            return Err(Error::Conflict(format!(
                                "the cloud account's IP pool has no free address for machine {}: \
                                 widen ip_pool on the account or remove machines",
                                m.name
                            )))
                        }
                    }
                }
            };
            let t = to_millis(now());
            tx.execute(
                "INSERT INTO machines (cluster_id, name, pool, ordinal, role, phase, static_ip, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![m.cluster_id, m.name, m.pool, m.ordinal, role_str(m.role),
                    MachinePhase::Creating.as_str(), static_ip, t, t],
            )
            .map_err(Error::sql("insert machine"))?;
            tx.query_row(
                &format!("{MACHINE_COLUMNS} WHERE cluster_id = ? AND name = ?"),
                params![m.cluster_id, m.name],
                machine_row,
            )
            .map_err(Error::sql("read machine"))
        })
        .await
    }

    /// Write what the provider said of a machine.
    pub async fn update_machine(
        &self,
        cluster_id: &str,
        name: &str,
        u: MachineUpdate,
    ) -> Result<()> {
        let (cluster_id, name) = (cluster_id.to_string(), name.to_string());
        self.write(move |tx, _| {
            let addresses =
                serde_json::to_string(&u.addresses).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE machines SET provider_id = COALESCE(?1, provider_id),
                   updated_at = CASE WHEN phase = ?2 THEN updated_at ELSE ?5 END,
                   phase = ?2, reason = ?3, addresses = ?4
                 WHERE cluster_id = ?6 AND name = ?7",
                params![
                    u.provider_id,
                    u.phase.as_str(),
                    u.reason,
                    addresses,
                    to_millis(now()),
                    cluster_id,
                    name
                ],
            )
            .map_err(Error::sql("update machine"))?;
            Ok(())
        })
        .await
    }

    /// Count one more replacement of a machine that failed on the infrastructure; returns the
    /// count. Its phase starts again (`creating`, now).
    pub async fn machine_replaced(
        &self,
        cluster_id: &str,
        name: &str,
        reason: String,
    ) -> Result<u32> {
        let (cluster_id, name) = (cluster_id.to_string(), name.to_string());
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE machines SET attempts = attempts + 1, phase = 'creating', reason = ?, provider_id = NULL,
                   updated_at = ? WHERE cluster_id = ? AND name = ?",
                params![reason, to_millis(now()), cluster_id, name],
            )
            .map_err(Error::sql("update machine"))?;
            tx.query_row(
                "SELECT attempts FROM machines WHERE cluster_id = ? AND name = ?",
                params![cluster_id, name],
                |r| r.get(0),
            )
            .map_err(Error::sql("read machine"))
        })
        .await
    }

    /// Forget a machine the provider has deleted.
    pub async fn remove_machine(&self, cluster_id: &str, name: &str) -> Result<()> {
        let (cluster_id, name) = (cluster_id.to_string(), name.to_string());
        self.write(move |tx, _| {
            tx.execute(
                "DELETE FROM machines WHERE cluster_id = ? AND name = ?",
                params![cluster_id, name],
            )
            .map_err(Error::sql("delete machine"))?;
            Ok(())
        })
        .await
    }

    /// Record an event about a cluster.
    pub async fn cluster_event(
        &self,
        cluster_id: &str,
        severity: Severity,
        message: String,
    ) -> Result<()> {
        let id = cluster_id.to_string();
        self.write(move |tx, _| {
            let found: Option<(String, String)> = tx
                .query_row(
                    "SELECT tenant_id, project_id FROM clusters WHERE id = ?",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(Error::sql("read cluster"))?;
            let (tenant, project) = found.ok_or(Error::NotFound { kind: "cluster" })?;
            insert_event_tx(
                tx,
                "cluster",
                &id,
                Some(&tenant),
                Some(&project),
                severity,
                &message,
            )
        })
        .await
    }

    /// Write a cluster's observed status and conditions (the orchestrator's, never the user's:
    /// the spec version does not change, so a user's If-Match stays valid). A cluster being
    /// deleted stays `Deleting` whatever a late writer says.
    pub async fn set_cluster_status(
        &self,
        id: &str,
        status: ClusterStatus,
        conditions: Vec<Condition>,
        failed_at: Option<String>,
    ) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let conditions =
                serde_json::to_string(&conditions).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE clusters SET status = CASE WHEN deleting = 1 THEN 'Deleting' ELSE ? END,
                     conditions = ?, failed_at_version = ? WHERE id = ?",
                params![status.as_str(), conditions, failed_at, id],
            )
            .map_err(Error::sql("update cluster status"))?;
            Ok(())
        })
        .await
    }

    /// Deletion flag and permanent-failure marker of a cluster.
    pub async fn cluster_progress(&self, id: &str) -> Result<ClusterProgress> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT deleting, failed_at_version FROM clusters WHERE id = ?",
                [&id],
                |r| {
                    Ok(ClusterProgress {
                        deleting: r.get::<_, i64>(0)? != 0,
                        failed_at: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(Error::sql("read cluster"))?
            .ok_or(Error::NotFound { kind: "cluster" })
        })
        .await
    }

    /// The last step of deleting a cluster, once its machines are gone: remove the record
    /// (its machines, secrets and desired state go with it).
    pub async fn finish_cluster_deletion(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let found: Option<(String, String, String)> = tx
                .query_row(
                    "SELECT tenant_id, project_id, name FROM clusters WHERE id = ? AND deleting = 1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(Error::sql("read cluster"))?;
            let Some((tenant, project, name)) = found else {
                return Ok(());
            };
            tx.execute("DELETE FROM clusters WHERE id = ?", [&id])
                .map_err(Error::sql("delete cluster"))?;
            insert_event_tx(
                tx,
                "cluster",
                &id,
                Some(&tenant),
                Some(&project),
                Severity::Info,
                &format!("cluster {name} deleted: every machine it had is gone"),
            )
        })
        .await
    }

    /// The cluster's bootstrap secrets (one-time tokens), sealed at rest; created by `make`
    /// on first use so that every machine of the cluster gets the same ones.
    pub async fn cluster_secrets(
        &self,
        id: &str,
        make: impl FnOnce() -> Vec<u8> + Send + 'static,
    ) -> Result<Vec<u8>> {
        let id = id.to_string();
        self.write(move |tx, key| {
            let sealed: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT sealed FROM cluster_secrets WHERE cluster_id = ?",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(Error::sql("read cluster secrets"))?;
            if let Some(sealed) = sealed {
                return key.open(&sealed).map_err(|e| Error::Seal(e.to_string()));
            }
            let plain = make();
            tx.execute(
                "INSERT INTO cluster_secrets (cluster_id, sealed, created_at) VALUES (?, ?, ?)",
                params![id, key.seal(&plain), to_millis(now())],
            )
            .map_err(Error::sql("insert cluster secrets"))?;
            Ok(plain)
        })
        .await
    }

    /// Ask for a cloud account to be checked against its infrastructure (the orchestrator does it).
    pub async fn request_account_check(&self, account_id: &str) -> Result<AccountCheckResult> {
        let id = account_id.to_string();
        self.write(move |tx, _| {
            tx.execute(
                "INSERT INTO cloud_account_checks (account_id, state, requested_at) VALUES (?, 'pending', ?)
                 ON CONFLICT (account_id) DO UPDATE SET state = 'pending', requested_at = excluded.requested_at,
                   error = '', error_kind = '', finished_at = NULL",
                params![id, to_millis(now())],
            )
            .map_err(Error::sql("request account check"))?;
            read_check(tx, &id)?.ok_or(Error::NotFound { kind: "cloud account" })
        })
        .await
    }

    /// The last check of an account, if any was asked for.
    pub async fn account_check(&self, account_id: &str) -> Result<Option<AccountCheckResult>> {
        let id = account_id.to_string();
        self.read(move |c| read_check(c, &id)).await
    }

    /// Accounts whose check was asked for and not done.
    pub async fn pending_account_checks(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT account_id FROM cloud_account_checks WHERE state = 'pending'")
                .map_err(Error::sql("list account checks"))?;
            let ids = stmt
                .query_map([], |r| r.get(0))
                .map_err(Error::sql("list account checks"))?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(Error::sql("list account checks"))?;
            Ok(ids)
        })
        .await
    }

    /// Write the outcome of an account check.
    pub async fn finish_account_check(&self, r: AccountCheckResult) -> Result<()> {
        self.write(move |tx, _| {
            let checks =
                serde_json::to_string(&r.checks).map_err(|e| Error::Corrupt(e.to_string()))?;
            let placements =
                serde_json::to_string(&r.placements).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE cloud_account_checks SET state = ?, endpoint_product = ?, checks = ?, error = ?, error_kind = ?,
                   placements = ?, finished_at = ? WHERE account_id = ?",
                params![r.state.as_str(), r.endpoint_product, checks, r.error, r.error_kind, placements,
                    to_millis(now()), r.account_id],
            )
            .map_err(Error::sql("finish account check"))?;
            let found: Option<(String, String, String)> = tx
                .query_row(
                    "SELECT tenant_id, project_id, name FROM cloud_accounts WHERE id = ?",
                    [&r.account_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(Error::sql("read cloud account"))?;
            if let Some((tenant, project, name)) = found {
                let (severity, message) = match r.state {
                    CheckState::Failed => (
                        Severity::Warning,
                        format!("check of cloud account {name} failed: {}", r.error),
                    ),
                    _ => (
                        Severity::Info,
                        format!("check of cloud account {name} passed ({})", r.endpoint_product),
                    ),
                };
                insert_event_tx(tx, "cloud-account", &r.account_id, Some(&tenant), Some(&project), severity, &message)?;
            }
            Ok(())
        })
        .await
    }
}

fn read_check(c: &rusqlite::Connection, id: &str) -> Result<Option<AccountCheckResult>> {
    c.query_row(
        "SELECT account_id, state, endpoint_product, checks, error, error_kind, placements, requested_at, finished_at
         FROM cloud_account_checks WHERE account_id = ?",
        [id],
        |r| {
            let state: String = r.get(1)?;
            let checks: String = r.get(3)?;
            let placements: String = r.get(6)?;
            let finished: Option<i64> = r.get(8)?;
            Ok(AccountCheckResult {
                account_id: r.get(0)?,
                state: CheckState::parse(&state).unwrap_or(CheckState::Failed),
                endpoint_product: r.get(2)?,
                checks: serde_json::from_str(&checks).unwrap_or_default(),
                error: r.get(4)?,
                error_kind: r.get(5)?,
                placements: serde_json::from_str::<Vec<PlacementOption>>(&placements)
                    .unwrap_or_default(),
                requested_at: from_millis(r.get(7)?),
                finished_at: finished.map(from_millis),
            })
        },
    )
    .optional()
    .map_err(Error::sql("read account check"))
}
