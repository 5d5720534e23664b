//! Cluster profiles and their immutable revisions.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::events::insert_event_tx;
use super::{bump_version, from_millis, to_millis, Error, ListQuery, Result, Store};
use crate::model::{
    new_id, now, Layer, NewProfile, Page, Profile, ProfileRevision, Severity, UpdateProfile,
    Visibility,
};

const COLUMNS: &str = "SELECT id, tenant_id, project_id, name, description, latest_revision, version, created_at, updated_at FROM profiles";

fn row(r: &Row<'_>) -> rusqlite::Result<Profile> {
    Ok(Profile {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        project_id: r.get(2)?,
        name: r.get(3)?,
        description: r.get(4)?,
        latest_revision: r.get(5)?,
        version: r.get(6)?,
        created_at: from_millis(r.get(7)?),
        updated_at: from_millis(r.get(8)?),
    })
}

fn revision_row(r: &Row<'_>) -> rusqlite::Result<(String, i64, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn to_revision(
    (profile_id, revision, layers, created_by, created_at): (String, i64, String, String, i64),
) -> Result<ProfileRevision> {
    let layers: Vec<Layer> = serde_json::from_str(&layers).map_err(|e| {
        Error::Corrupt(format!(
            "layers of profile {profile_id} revision {revision}: {e}"
        ))
    })?;
    Ok(ProfileRevision {
        profile_id,
        revision,
        layers,
        created_by,
        created_at: from_millis(created_at),
    })
}

fn insert_revision_tx(
    c: &Connection,
    profile_id: &str,
    revision: i64,
    layers: &[Layer],
    created_by: &str,
) -> Result<ProfileRevision> {
    let t = now();
    let json = serde_json::to_string(layers).map_err(|e| Error::Corrupt(e.to_string()))?;
    c.execute(
        "INSERT INTO profile_revisions (profile_id, revision, layers, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
        params![profile_id, revision, json, created_by, to_millis(t)],
    )
    .map_err(Error::sql("insert profile revision"))?;
    Ok(ProfileRevision {
        profile_id: profile_id.to_string(),
        revision,
        layers: layers.to_vec(),
        created_by: created_by.to_string(),
        created_at: t,
    })
}

impl Store {
    /// Create a profile with its first revision.
    pub async fn insert_profile(
        &self,
        tenant_id: String,
        new: NewProfile,
        created_by: String,
    ) -> Result<(Profile, ProfileRevision)> {
        self.write(move |tx, _| {
            let t = now();
            let id = new_id();
            tx.execute(
                "INSERT INTO profiles (id, tenant_id, project_id, name, description, latest_revision, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                params![id, tenant_id, new.project_id, new.name, new.description, to_millis(t), to_millis(t)],
            )
            .map_err(Error::unique(
                "insert profile",
                format!("the project already has a profile named {:?}: choose another name", new.name),
            ))?;
            let revision = insert_revision_tx(tx, &id, 1, &new.layers, &created_by)?;
            insert_event_tx(tx, "profile", &id, Some(&tenant_id), Some(&new.project_id), Severity::Info, &format!("profile {} created at revision 1", new.name))?;
            let profile = tx
                .query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read profile"))?;
            Ok((profile, revision))
        })
        .await
    }

    /// One profile by id.
    pub async fn profile(&self, id: &str) -> Result<Profile> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .optional()
                .map_err(Error::sql("read profile"))?
                .ok_or(Error::NotFound { kind: "profile" })
        })
        .await
    }

    /// Profiles visible under `v`.
    pub async fn list_profiles(
        &self,
        v: Visibility,
        project_id: Option<String>,
        name: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> Result<Page<Profile>> {
        self.read(move |c| {
            let mut q = ListQuery::new();
            let (cond, params) = super::visibility_clause(&v, "project_id");
            q.raw(cond, params);
            q.eq("project_id", project_id.as_deref())
                .eq("name", name.as_deref());
            q.page(c, COLUMNS, after.as_deref(), limit, row, |p| p.id.clone())
        })
        .await
    }

    /// Update a profile's description (layers change only through new revisions).
    pub async fn update_profile(
        &self,
        id: &str,
        expected: Option<i64>,
        update: UpdateProfile,
    ) -> Result<Profile> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let version = bump_version(tx, "profiles", &id, expected)?;
            tx.execute(
                "UPDATE profiles SET description = ?, version = ?, updated_at = ? WHERE id = ?",
                params![update.description, version, to_millis(now()), id],
            )
            .map_err(Error::sql("update profile"))?;
            tx.query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read profile"))
        })
        .await
    }

    /// Add the next revision to a profile.
    pub async fn insert_profile_revision(
        &self,
        id: &str,
        expected: Option<i64>,
        layers: Vec<Layer>,
        created_by: String,
    ) -> Result<(Profile, ProfileRevision)> {
        let id = id.to_string();
        self.write(move |tx, _| {
            let version = bump_version(tx, "profiles", &id, expected)?;
            let latest: i64 = tx
                .query_row(
                    "SELECT latest_revision FROM profiles WHERE id = ?",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(Error::sql("read latest revision"))?;
            let revision = insert_revision_tx(tx, &id, latest + 1, &layers, &created_by)?;
            tx.execute(
                "UPDATE profiles SET latest_revision = ?, version = ?, updated_at = ? WHERE id = ?",
                params![latest + 1, version, to_millis(now()), id],
            )
            .map_err(Error::sql("update profile"))?;
            let profile = tx
                .query_row(&format!("{COLUMNS} WHERE id = ?"), [&id], row)
                .map_err(Error::sql("read profile"))?;
            insert_event_tx(
                tx,
                "profile",
                &id,
                Some(&profile.tenant_id),
                Some(&profile.project_id),
                Severity::Info,
                &format!("revision {} created", latest + 1),
            )?;
            Ok((profile, revision))
        })
        .await
    }

    /// One revision of a profile.
    pub async fn profile_revision(&self, id: &str, revision: i64) -> Result<ProfileRevision> {
        let id = id.to_string();
        self.read(move |c| {
            let raw = c
                .query_row(
                    "SELECT profile_id, revision, layers, created_by, created_at FROM profile_revisions WHERE profile_id = ? AND revision = ?",
                    params![id, revision],
                    revision_row,
                )
                .optional()
                .map_err(Error::sql("read profile revision"))?
                .ok_or(Error::NotFound { kind: "profile revision" })?;
            to_revision(raw)
        })
        .await
    }

    /// Every revision of a profile, oldest first.
    pub async fn profile_revisions(&self, id: &str) -> Result<Vec<ProfileRevision>> {
        let id = id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT profile_id, revision, layers, created_by, created_at FROM profile_revisions WHERE profile_id = ? ORDER BY revision")
                .map_err(Error::sql("list profile revisions"))?;
            let raws = stmt
                .query_map([&id], revision_row)
                .map_err(Error::sql("list profile revisions"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::sql("list profile revisions"))?;
            raws.into_iter().map(to_revision).collect()
        })
        .await
    }

    /// Delete a profile that no cluster uses, with its revisions.
    pub async fn delete_profile(&self, id: &str, expected: Option<i64>) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx, _| {
            bump_version(tx, "profiles", &id, expected)?;
            let n: i64 = tx
                .query_row("SELECT count(*) FROM clusters WHERE profile_id = ?", [&id], |r| r.get(0))
                .map_err(Error::sql("count clusters"))?;
            if n > 0 {
                return Err(Error::Conflict(format!(
                    "{n} cluster(s) use this profile: delete them or move them to another profile first"
                )));
            }
            tx.execute("DELETE FROM profiles WHERE id = ?", [&id])
                .map_err(Error::sql("delete profile"))?;
            Ok(())
        })
        .await
    }
}
