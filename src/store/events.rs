//! Events (what happened to one object) and the read-only pack catalogue.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_millis, to_millis, Error, ListQuery, Result, Store};
use crate::model::{new_id, now, Event, LayerType, Pack, Page, Severity, Visibility};

const EVENT_COLUMNS: &str = "SELECT id, object_kind, object_id, tenant_id, project_id, severity, message, created_at FROM events";
/// Local packs and the packs found in pack sources (external registries) as one relation;
/// `tenant_id` is NULL for local packs, which everybody sees.
const PACK_COLUMNS: &str = "SELECT id, name, version, layer_type, digest, description, created_at, source_id FROM (\
     SELECT id, name, version, layer_type, digest, description, created_at, NULL AS source_id, NULL AS tenant_id FROM packs \
     UNION ALL SELECT id, name, version, layer_type, digest, description, created_at, source_id, tenant_id FROM pack_source_packs)";

fn event_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    let severity: String = r.get(5)?;
    Ok(Event {
        id: r.get(0)?,
        object_kind: r.get(1)?,
        object_id: r.get(2)?,
        tenant_id: r.get(3)?,
        project_id: r.get(4)?,
        severity: Severity::parse(&severity).unwrap_or(Severity::Info),
        message: r.get(6)?,
        created_at: from_millis(r.get(7)?),
    })
}

fn pack_row(r: &Row<'_>) -> rusqlite::Result<Pack> {
    let layer: String = r.get(3)?;
    Ok(Pack {
        id: r.get(0)?,
        name: r.get(1)?,
        version: r.get(2)?,
        layer_type: LayerType::parse(&layer).unwrap_or(LayerType::Addon),
        digest: r.get(4)?,
        description: r.get(5)?,
        created_at: from_millis(r.get(6)?),
        source_id: r.get(7)?,
    })
}

/// Record an event in the caller's transaction, so it commits with the change it describes.
pub(crate) fn insert_event_tx(
    c: &Connection,
    kind: &str,
    object_id: &str,
    tenant_id: Option<&str>,
    project_id: Option<&str>,
    severity: Severity,
    message: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO events (id, object_kind, object_id, tenant_id, project_id, severity, message, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        params![new_id(), kind, object_id, tenant_id, project_id, severity.as_str(), message, to_millis(now())],
    )
    .map_err(Error::sql("insert event"))?;
    Ok(())
}

impl Store {
    /// Events visible under `v`, optionally of one object.
    pub async fn list_events(
        &self,
        v: Visibility,
        object_id: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<Event>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            let (cond, params) = super::visibility_clause(&v, "project_id");
            q.raw(cond, params);
            q.eq("object_id", object_id.as_deref());
            q.page(c, EVENT_COLUMNS, after.as_deref(), limit, event_row, |e| {
                e.id.clone()
            })
        })
        .await
    }

    /// Packs in the catalogue, optionally filtered by name or layer type.
    pub async fn list_packs(
        &self,
        v: Visibility,
        name: Option<String>,
        layer_type: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<Pack>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            // Local packs for everybody; a pack source's packs for those who see its tenant.
            if !v.all {
                let marks = vec!["?"; v.tenants.len()].join(",");
                q.raw(
                    format!("(tenant_id IS NULL OR tenant_id IN ({marks}))"),
                    v.tenants.clone(),
                );
            }
            q.eq("name", name.as_deref())
                .eq("layer_type", layer_type.as_deref());
            q.page(c, PACK_COLUMNS, after.as_deref(), limit, pack_row, |p| {
                p.id.clone()
            })
        })
        .await
    }

    /// One pack by id.
    pub async fn pack(&self, id: &str) -> Result<Pack> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{PACK_COLUMNS} WHERE id = ?"), [&id], pack_row)
                .optional()
                .map_err(Error::sql("read pack"))?
                .ok_or(Error::NotFound { kind: "pack" })
        })
        .await
    }
}
