//! Clusters: users write the spec through these functions; only the orchestrator writes status.

use rusqlite::{params, OptionalExtension, Row, Transaction};

use super::events::insert_event_tx;
use super::{bump_version, from_millis, to_millis, Error, ListQuery, Result, Store};
use crate::model::{
    new_id, now, Cluster, ClusterStatus, Condition, DriftPolicy, Invalid, NewCluster, Page,
    Severity, UpdateCluster, Visibility,
};

const COLUMNS: &str = "SELECT id, tenant_id, project_id, name, profile_id, profile_revision, cloud_account_id, node_pools, drift_policy, status, conditions, version, created_at, updated_at FROM clusters";

fn row(r: &Row<'_>) -> rusqlite::Result<Cluster> {
    let pools: String = r.get(7)?;
    let drift: String = r.get(8)?;
    let status: String = r.get(9)?;
    let conditions: String = r.get(10)?;
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("stored {what} is not valid").into(),
        )
    };
    Ok(Cluster {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        project_id: r.get(2)?,
        name: r.get(3)?,
        profile_id: r.get(4)?,
        profile_revision: r.get(5)?,
        cloud_account_id: r.get(6)?,
        node_pools: serde_json::from_str(&pools).map_err(|_| bad(7, "node pools"))?,
        drift_policy: DriftPolicy::parse(&drift).ok_or_else(|| bad(8, "drift policy"))?,
        status: ClusterStatus::parse(&status).ok_or_else(|| bad(9, "status"))?,
        conditions: serde_json::from_str::<Vec<Condition>>(&conditions)
            .map_err(|_| bad(10, "conditions"))?,
        version: r.get(11)?,
        created_at: from_millis(r.get(12)?),
        updated_at: from_millis(r.get(13)?),
    })
}

/// Optional equality filters of `GET /v1/clusters`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClusterFilter {
    pub project_id: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub profile_id: Option<String>,
    pub cloud_account_id: Option<String>,
}

/// Check that the profile revision and the cloud account exist in `project_id`. Objects of other
/// projects are reported exactly like missing ones, so nothing leaks across tenants.
fn check_references(
    tx: &Transaction<'_>,
    project_id: &str,
    profile_id: &str,
    revision: Option<i64>,
    cloud_account_id: &str,
) -> Result<i64> {
    let latest: Option<i64> = tx
        .query_row(
            "SELECT latest_revision FROM profiles WHERE id = ? AND project_id = ?",
            params![profile_id, project_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(Error::sql("read profile"))?;
    let latest = latest
        .ok_or_else(|| Invalid::new("profile_id", "no such profile in this cluster's project"))?;
    let revision = revision.unwrap_or(latest);
    if revision > latest {
        return Err(Invalid::new(
            "profile_revision",
            format!("the profile has revisions 1 to {latest}"),
        )
        .into());
    }
    let account: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM cloud_accounts WHERE id = ? AND project_id = ?)",
            params![cloud_account_id, project_id],
            |r| r.get(0),
        )
        .map_err(Error::sql("read cloud account"))?;
    if !account {
        return Err(Invalid::new(
            "cloud_account_id",
            "no such cloud account in this cluster's project",
        )
        .into());
    }
    Ok(revision)
}

impl Store {
    /// Create a cluster (status Pending) after checking its references.
    pub async fn insert_cluster(&self, tenant_id: String, new: NewCluster) -> Result<Cluster> {
        self.write(move |tx, _| {
            let revision = check_references(
                tx,
                &new.project_id,
                &new.profile_id,
                new.profile_revision,
                &new.cloud_account_id,
            )?;
            let t = now();
            let id = new_id();
            let pools = serde_json::to_string(&new.node_pools).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.execute(
                "INSERT INTO clusters (id, tenant_id, project_id, name, profile_id, profile_revision, cloud_account_id, node_pools, drift_policy, status, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    id, tenant_id, new.project_id, new.name, new.profile_id, revision,
                    new.cloud_account_id, pools, new.drift_policy.as_str(),
                    ClusterStatus::Pending.as_str(), to_millis(t), to_millis(t)
                ],
            )
            .map_err(Error::unique(
                "insert cluster",
                format!("the project already has a cluster named {:?}: choose another name", new.name),
            ))?;
            insert_event_tx(tx, "cluster", &id, Some(&tenant_id), Some(&new.project_id), Severity::Info,
                &format!("cluster {} created with profile revision {revision}", new.name))?;
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read cluster"))
        })
        .await
    }

    /// One cluster by id.
    pub async fn cluster(&self, id: &str) -> Result<Cluster> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .optional()
                .map_err(Error::sql("read cluster"))?
                .ok_or(Error::NotFound { kind: "cluster" })
        })
        .await
    }

    /// Every cluster, for reconcilers (not paged: one row is small and clusters are few).
    pub async fn all_clusters(&self) -> Result<Vec<Cluster>> {
        self.read(|c| {
            let mut stmt = c
                .prepare(&format!("{COLUMNS} ORDER BY id"))
                .map_err(Error::sql("list clusters"))?;
            let rows = stmt
                .query_map([], row)
                .map_err(Error::sql("list clusters"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list clusters"))?;
            Ok(rows)
        })
        .await
    }

    /// Clusters visible under `v`, filtered.
    pub async fn list_clusters(
        &self,
        v: Visibility,
        filter: ClusterFilter,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<Cluster>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            let (cond, params) = super::visibility_clause(&v, "project_id");
            q.raw(cond, params);
            q.eq("project_id", filter.project_id.as_deref())
                .eq("name", filter.name.as_deref())
                .eq("status", filter.status.as_deref())
                .eq("profile_id", filter.profile_id.as_deref())
                .eq("cloud_account_id", filter.cloud_account_id.as_deref());
            q.page(c, COLUMNS, after.as_deref(), limit, row, |c| c.id.clone())
        })
        .await
    }

    /// Change a cluster's spec.
    pub async fn update_cluster(
        &self,
        id: &str,
        expected: Option<i64>,
        update: UpdateCluster,
    ) -> Result<Cluster> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let version = bump_version(tx, "clusters", &id, expected)?;
            let deleting: bool = tx
                .query_row("SELECT deleting FROM clusters WHERE id = ?", [&id], |r| r.get::<_, i64>(0))
                .map_err(Error::sql("read cluster"))?
                != 0;
            if deleting {
                return Err(Error::Conflict(
                    "the cluster is being deleted: its spec can no longer change".into(),
                ));
            }
            let current = tx
                .query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read cluster"))?;
            check_references(tx, &current.project_id, &current.profile_id, Some(update.profile_revision), &current.cloud_account_id)?;
            let pools = serde_json::to_string(&update.node_pools).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.execute(
                "UPDATE clusters SET profile_revision = ?, node_pools = ?, drift_policy = ?, version = ?, updated_at = ? WHERE id = ?",
                params![update.profile_revision, pools, update.drift_policy.as_str(), version, to_millis(now()), id],
            )
            .map_err(Error::sql("update cluster"))?;
            insert_event_tx(tx, "cluster", &id, Some(&current.tenant_id), Some(&current.project_id), Severity::Info,
                &format!("spec updated (profile revision {})", update.profile_revision))?;
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read cluster"))
        })
        .await
    }

    /// Ask for a cluster to be deleted: it turns `Deleting`, and the orchestrator removes its
    /// machines and then the record ([`Store::finish_cluster_deletion`]).
    pub async fn delete_cluster(&self, id: &str, expected: Option<i64>) -> Result<Cluster> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let version = bump_version(tx, "clusters", &id, expected)?;
            let (tenant, project, name, deleting): (String, String, String, bool) = tx
                .query_row(
                    "SELECT tenant_id, project_id, name, deleting FROM clusters WHERE id = ?",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0)),
                )
                .map_err(Error::sql("read cluster"))?;
            if !deleting {
                tx.execute(
                    "UPDATE clusters SET deleting = 1, status = 'Deleting', version = ?, updated_at = ? WHERE id = ?",
                    params![version, to_millis(now()), id],
                )
                .map_err(Error::sql("delete cluster"))?;
                insert_event_tx(
                    tx,
                    "cluster",
                    &id,
                    Some(&tenant),
                    Some(&project),
                    Severity::Info,
                    &format!("deletion of cluster {name} requested: its machines are being removed"),
                )?;
            }
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read cluster"))
        })
        .await
    }
}
