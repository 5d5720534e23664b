//! The pack-source reconciler: reads every tenant's pack sources (external OCI registries) and
//! records the packs found there, so they show up beside the local ones in `GET /v1/packs`.
//!
//! Runs in `palisade serve` (spawned by `crate::app`), every [`SYNC_INTERVAL`] and whenever
//! `App::pack_source_sync` is notified (a source was created, changed, or a sync was asked
//! for). Registry calls happen here, never in a request handler. A source whose registry
//! cannot be read keeps the packs found last, and its `sync_error` says why.

use std::time::Duration;

use crate::api::AppState;
use crate::model::{check_name, pack_source_host, PackSource, RegistryCredentials, SourcePack};
use crate::oci_pull::{Client, Credentials, PullOptions, Reference};

/// How often every pack source is read again.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Most repositories read from one source.
const MAX_REPOSITORIES: usize = 500;
/// Most tags read from one repository.
const MAX_TAGS: usize = 200;

/// Read every pack source now, and then every [`SYNC_INTERVAL`] or when notified.
pub async fn sync_periodically(app: AppState) {
    loop {
        sync_all(&app).await;
        tokio::select! {
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            _ = app.pack_source_sync.notified() => {}
        }
    }
}

/// Read every pack source once and record what was found (or why it failed).
pub async fn sync_all(app: &AppState) {
    let sources = match app.store.pack_sources_for_sync().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pack sources");
            return;
        }
    };
    for (source, credentials) in sources {
        let found = read_source(&source, credentials).await;
        match &found {
            Ok(packs) => {
                tracing::info!(source = %source.name, packs = packs.len(), "pack source read")
            }
            Err(e) => {
                tracing::warn!(source = %source.name, error = %e, "pack source cannot be read")
            }
        }
        if let Err(e) = app.store.record_pack_source_sync(&source.id, found).await {
            tracing::error!(source = %source.name, error = %e, "cannot record the packs of a pack source");
        }
    }
}

/// The packs in `source`'s registry: every repository `<prefix>/<name>` whose tags name pack
/// artifacts (`artifactType` `application/vnd.palisade.pack.v1`) of that name.
pub async fn read_source(
    source: &PackSource,
    credentials: Option<RegistryCredentials>,
) -> Result<Vec<SourcePack>, String> {
    let host = pack_source_host(&source.url).to_string();
    let mut options = PullOptions {
        timeout: Some(Duration::from_secs(20)),
        ..PullOptions::default()
    };
    if !source.ca_bundle.trim().is_empty() {
        options.ca_pem = Some(source.ca_bundle.clone().into_bytes());
    }
    if let Some(c) = credentials {
        options.credentials.insert(
            host.clone(),
            Credentials {
                username: c.username,
                password: c.password,
            },
        );
    }
    let client = Client::new(&options).map_err(|e| e.to_string())?;
    let prefix = if source.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", source.prefix)
    };
    let repositories = client
        .catalog(&host, 100_000)
        .await
        .map_err(|e| e.to_string())?;
    let mut packs = Vec::new();
    for repo in repositories
        .iter()
        .filter(|r| r.starts_with(&prefix))
        .take(MAX_REPOSITORIES)
    {
        let name = &repo[prefix.len()..];
        if name.contains('/') || check_name("name", name).is_err() {
            continue;
        }
        for tag in client
            .tags(&host, repo, MAX_TAGS)
            .await
            .map_err(|e| e.to_string())?
        {
            let reference = Reference {
                host: host.clone(),
                repository: repo.clone(),
                tag: Some(tag.clone()),
                digest: None,
            };
            let m = client
                .fetch_manifest(&reference)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(p) = pack_of(name, &tag, &m.bytes, &m.digest) {
                packs.push(p);
            }
        }
    }
    Ok(packs)
}

/// The pack a manifest describes, if it is a pack artifact of `name` tagged by its version.
fn pack_of(name: &str, tag: &str, manifest: &[u8], digest: &str) -> Option<SourcePack> {
    let e = crate::pack::catalogue_entry(manifest).ok()?;
    if e.name != name || crate::pack::version_tag(&e.version) != tag {
        return None;
    }
    Some(SourcePack {
        name: e.name,
        version: e.version,
        layer_type: e.layer,
        digest: digest.to_string(),
        description: e.description,
    })
}
