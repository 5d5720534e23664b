//! The cluster reconciler: makes the machines on the infrastructure match a cluster's node
//! pools, and removes them all when the cluster is deleted.
//!
//! Idempotent by construction: a machine is recorded in the store *before* the provider is
//! asked for it, providers find machines again by name and cluster tag, and records are
//! removed only after the provider confirmed the deletion. A crash at any point is resolved by
//! the next pass. Transient errors come back to the supervisor for a retry with backoff; a
//! permanent one marks the cluster Failed until its spec or its account changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::bootstrap::{self, ClusterSecrets, KubernetesSettings, MachineBootstrap};
use super::{ippool, Context};
use crate::model::{
    now, CloudAccount, Cluster, ClusterStatus, Condition, DriftPolicy, LayerType, MachinePhase,
    MachineRecord, NodeRole, Severity,
};
use crate::providers::{
    self, ImageLocation, ImageRef, Machine, MachineRef, MachineSpec, MachineState, OsImage,
    PowerOp, Provider, ProviderError,
};
use crate::store::{MachineUpdate, NewMachine};

/// Machines created or deleted at once per cluster.
const PARALLEL: usize = 8;
/// How soon to look again while machines are still coming up.
const SOON: Duration = Duration::from_secs(5);

/// What the supervisor does after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Look again after this long (or earlier if woken).
    Requeue(Duration),
    /// Nothing to do until something changes (cluster gone, or a permanent failure recorded).
    Idle,
}

/// Why a pass stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Retrying later may work (unreachable endpoint, busy infrastructure, store busy).
    #[error("{0}")]
    Transient(String),
    /// Someone must change the spec, the profile or the account.
    #[error("{0}")]
    Permanent(String),
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        if e.is_transient() {
            Failure::Transient(e.message)
        } else {
            Failure::Permanent(e.message)
        }
    }
}

impl From<crate::store::Error> for Failure {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Conflict(m) => Failure::Permanent(m),
            crate::store::Error::Invalid(i) => Failure::Permanent(i.to_string()),
            other => Failure::Transient(format!("state store: {other}")),
        }
    }
}

/// Builds of one machine before the cluster fails: the first and two replacements.
const MAX_ATTEMPTS: u32 = 3;

/// Why a machine must be deleted and built again: the infrastructure reports it failed, or it
/// has been provisioning for longer than the build timeout (a build the infrastructure lost).
fn needs_rebuild(ctx: &Context, r: &MachineRecord, m: &Machine) -> Option<String> {
    match &m.state {
        MachineState::Failed(reason) => Some(format!("the infrastructure reports: {reason}")),
        MachineState::Provisioning if r.phase == MachinePhase::Provisioning => {
            let age = now() - r.updated_at;
            (age > ctx.build_timeout).then(|| {
                format!(
                    "still provisioning after {} s (the build timeout)",
                    age.whole_seconds()
                )
            })
        }
        _ => None,
    }
}

/// One machine the spec asks for.
#[derive(Debug, Clone)]
struct Wanted {
    name: String,
    pool: String,
    ordinal: u32,
    role: NodeRole,
    size: crate::model::MachineSize,
}

/// The marker of the spec and account versions a permanent failure was recorded at.
fn failure_marker(cluster: &Cluster, account: &CloudAccount) -> String {
    format!("{}:{}", cluster.version, account.version)
}

/// One pass over one cluster.
pub async fn reconcile(ctx: &Context, cluster_id: &str) -> Result<Outcome, Failure> {
    let cluster = match ctx.store.cluster(cluster_id).await {
        Ok(c) => c,
        Err(crate::store::Error::NotFound { .. }) => return Ok(Outcome::Idle),
        Err(e) => return Err(e.into()),
    };
    let progress = ctx.store.cluster_progress(cluster_id).await?;
    let account = ctx.store.cloud_account(&cluster.cloud_account_id).await?;
    if !progress.deleting
        && progress.failed_at.as_deref() == Some(&failure_marker(&cluster, &account))
    {
        return Ok(Outcome::Idle);
    }
    let records = ctx.store.machines(cluster_id).await?;
    if progress.deleting && records.is_empty() {
        // Every machine is recorded before it is asked for: no record, no machine.
        ctx.store.finish_cluster_deletion(cluster_id).await?;
        return Ok(Outcome::Idle);
    }
    if progress.deleting {
        // Deletion is retried whatever the error: the user may fix the account meanwhile,
        // and the cluster says what blocks it.
        let result = match connect(ctx, &account).await {
            Ok(provider) => tear_down(ctx, &cluster, provider.as_ref(), records).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            let message = format!(
                "machines cannot be removed yet: {e} (retrying; fix the cloud account if the error says so)"
            );
            let conditions = vec![condition("Deleted", "False", "Blocked", &message)];
            ctx.store
                .set_cluster_status(cluster_id, ClusterStatus::Deleting, conditions, None)
                .await?;
            return Err(Failure::Transient(e.to_string()));
        }
        return result;
    }
    let provider = connect(ctx, &account).await?;
    let result = converge(ctx, &cluster, &account, provider.as_ref(), records).await;
    match &result {
        Err(Failure::Permanent(reason)) => {
            let conditions = vec![condition("Ready", "False", "Failed", reason)];
            ctx.store
                .set_cluster_status(
                    cluster_id,
                    ClusterStatus::Failed,
                    conditions,
                    Some(failure_marker(&cluster, &account)),
                )
                .await?;
            ctx.store
                .cluster_event(
                    cluster_id,
                    Severity::Error,
                    format!("provisioning failed: {reason}"),
                )
                .await?;
            Ok(Outcome::Idle)
        }
        Err(Failure::Transient(reason)) => {
            let mut conditions = cluster.conditions.clone();
            set_condition(
                &mut conditions,
                condition("InfrastructureReachable", "False", "Retrying", reason),
            );
            let status = match cluster.status {
                ClusterStatus::Pending | ClusterStatus::Failed => ClusterStatus::Provisioning,
                s => s,
            };
            ctx.store
                .set_cluster_status(cluster_id, status, conditions, None)
                .await?;
            result
        }
        Ok(_) => result,
    }
}

async fn connect(ctx: &Context, account: &CloudAccount) -> Result<Box<dyn Provider>, Failure> {
    super::provider_for(ctx, account).await?.ok_or_else(|| {
        Failure::Permanent(format!(
            "cloud account {} has no credentials: enter them on the account",
            account.name
        ))
    })
}

/// Delete every machine of the cluster (recorded or found by its tag), then the record.
async fn tear_down(
    ctx: &Context,
    cluster: &Cluster,
    provider: &dyn Provider,
    records: Vec<MachineRecord>,
) -> Result<Outcome, Failure> {
    // Every machine tagged with this cluster goes, twins of one name included (a create that
    // a crash cut off can still finish on the infrastructure), and machines whose record was
    // lost with a restored backup: they are still this cluster's.
    let found = provider.machines(&cluster.id).await?;
    let mut work: Vec<(String, Option<MachineRef>)> = found
        .iter()
        .map(|m| (m.name.clone(), Some(m.reference())))
        .collect();
    // Records whose machine is already gone are only forgotten.
    for r in &records {
        if !found.iter().any(|m| m.name == r.name) {
            work.push((r.name.clone(), None));
        }
    }
    delete_all(ctx, cluster, provider, work, "cluster deleted").await?;
    ctx.store.finish_cluster_deletion(&cluster.id).await?;
    super::desired::publish_deleted(&ctx.bus, &cluster.id, cluster.version).await;
    Ok(Outcome::Idle)
}

/// Delete machines in parallel; each record goes once its machine is gone.
async fn delete_all(
    ctx: &Context,
    cluster: &Cluster,
    provider: &dyn Provider,
    work: Vec<(String, Option<MachineRef>)>,
    why: &str,
) -> Result<(), Failure> {
    let mut jobs = Vec::new();
    for (name, machine) in work {
        jobs.push(async move {
            ctx.store
                .update_machine(
                    &cluster.id,
                    &name,
                    MachineUpdate {
                        provider_id: None,
                        phase: MachinePhase::Deleting,
                        reason: why.to_string(),
                        addresses: Vec::new(),
                    },
                )
                .await?;
            if let Some(m) = machine {
                provider.delete_machine(&m).await?;
            }
            ctx.store.remove_machine(&cluster.id, &name).await?;
            ctx.store
                .cluster_event(
                    &cluster.id,
                    Severity::Info,
                    format!("machine {name} deleted ({why})"),
                )
                .await?;
            Ok(())
        });
    }
    all_bounded(jobs).await
}

/// Create, adopt, replace and remove machines until they match the node pools; write status.
async fn converge(
    ctx: &Context,
    cluster: &Cluster,
    account: &CloudAccount,
    provider: &dyn Provider,
    records: Vec<MachineRecord>,
) -> Result<Outcome, Failure> {
    if cluster.status == ClusterStatus::Pending || cluster.status == ClusterStatus::Failed {
        ctx.store
            .set_cluster_status(
                &cluster.id,
                ClusterStatus::Provisioning,
                waiting("machines are being created"),
                None,
            )
            .await?;
    }
    let wanted = wanted_machines(cluster);
    let wanted_names: BTreeMap<&str, &Wanted> =
        wanted.iter().map(|w| (w.name.as_str(), w)).collect();
    let mut observed: HashMap<String, Machine> = HashMap::new();
    let mut twins: Vec<Machine> = Vec::new();
    for m in provider.machines(&cluster.id).await? {
        match observed.remove(&m.name) {
            None => {
                observed.insert(m.name.clone(), m);
            }
            Some(other) => {
                // Two machines of one name: a create cut off by a crash finished after its
                // retry. Keep the recorded one (else the first) and remove the other.
                let recorded = records
                    .iter()
                    .find(|r| r.name == m.name)
                    .and_then(|r| r.provider_id.clone());
                let (keep, drop) = if recorded.as_deref() == Some(m.id.as_str()) {
                    (m, other)
                } else {
                    (other, m)
                };
                observed.insert(keep.name.clone(), keep);
                twins.push(drop);
            }
        }
    }
    for twin in twins {
        provider.delete_machine(&twin.reference()).await?;
        ctx.store
            .cluster_event(
                &cluster.id,
                Severity::Warning,
                format!(
                    "removed a second machine named {} ({}) that an interrupted create left",
                    twin.name, twin.id
                ),
            )
            .await?;
    }

    // Scale down: workers first, highest ordinals first.
    let mut surplus: Vec<&MachineRecord> = records
        .iter()
        .filter(|r| !wanted_names.contains_key(r.name.as_str()))
        .collect();
    surplus.sort_by_key(|r| {
        (
            r.role == NodeRole::ControlPlane,
            std::cmp::Reverse(r.ordinal),
        )
    });
    if !surplus.is_empty() {
        let work = surplus
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    observed.get(&r.name).map(Machine::reference),
                )
            })
            .collect();
        delete_all(ctx, cluster, provider, work, "scaled down").await?;
    }

    // Decide, per wanted machine, whether it must be (re)created.
    let by_name: HashMap<&str, &MachineRecord> =
        records.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut to_create: Vec<&Wanted> = Vec::new();
    for w in &wanted {
        let record = by_name.get(w.name.as_str());
        let found = observed.get(&w.name);
        let rebuild = record
            .zip(found)
            .and_then(|(r, m)| needs_rebuild(ctx, r, m));
        match (record, found, rebuild) {
            (Some(r), Some(m), Some(why)) => {
                if r.attempts + 1 >= MAX_ATTEMPTS {
                    return Err(Failure::Permanent(format!(
                        "machine {} failed {MAX_ATTEMPTS} times on the infrastructure: {why}",
                        w.name
                    )));
                }
                provider.delete_machine(&m.reference()).await?;
                let n = ctx
                    .store
                    .machine_replaced(&cluster.id, &w.name, why.clone())
                    .await?;
                ctx.store
                    .cluster_event(
                        &cluster.id,
                        Severity::Warning,
                        format!(
                            "machine {} failed on the infrastructure ({why}); deleted and created again (attempt {} of {MAX_ATTEMPTS})",
                            w.name,
                            n + 1
                        ),
                    )
                    .await?;
                to_create.push(w);
            }
            (Some(r), Some(m), _)
                if r.phase == MachinePhase::Creating && m.state == MachineState::Off =>
            {
                // Created but never confirmed: a crash cut the create off (the
                // infrastructure may finish a clone on its own). Ensuring it again finds it
                // by name and completes it (sizing, tags, power on).
                to_create.push(w);
            }
            (_, Some(m), _) => {
                if record.is_none() {
                    // Found on the infrastructure without a record (the record was lost):
                    // adopt it rather than create a twin.
                    ctx.store
                        .reserve_machine(new_machine(cluster, w), None)
                        .await?;
                }
                ctx.store
                    .update_machine(&cluster.id, &w.name, observed_update(m))
                    .await?;
                if m.state == MachineState::Off {
                    // Created but never powered on (a crash between the two), or powered off
                    // behind the appliance's back: every machine of a cluster runs.
                    provider.power(&m.reference(), PowerOp::On).await?;
                    ctx.store
                        .cluster_event(
                            &cluster.id,
                            Severity::Info,
                            format!("machine {} was off; powered it on", w.name),
                        )
                        .await?;
                }
            }
            (None, None, _) => to_create.push(w),
            (Some(r), None, _) => match r.phase {
                MachinePhase::Creating => to_create.push(w),
                MachinePhase::Missing if cluster.drift_policy == DriftPolicy::Alert => {}
                _ => {
                    if cluster.drift_policy == DriftPolicy::Reconcile {
                        ctx.store
                            .cluster_event(&cluster.id, Severity::Warning, format!(
                                "machine {} was deleted outside Palisade; replacing it (drift policy reconcile)",
                                w.name
                            ))
                            .await?;
                        to_create.push(w);
                    } else {
                        ctx.store
                            .update_machine(&cluster.id, &w.name, MachineUpdate {
                                provider_id: None,
                                phase: MachinePhase::Missing,
                                reason: "deleted outside Palisade; not replaced (drift policy alert)".into(),
                                addresses: Vec::new(),
                            })
                            .await?;
                        ctx.store
                            .cluster_event(&cluster.id, Severity::Warning, format!(
                                "ALERT: machine {} was deleted outside Palisade; drift policy is alert, so it is not replaced \
                                 (set the drift policy to reconcile to replace it)",
                                w.name
                            ))
                            .await?;
                    }
                }
            },
        }
    }

    if !to_create.is_empty() {
        create_machines(ctx, cluster, account, provider, &wanted, to_create).await?;
    }
    write_status(ctx, cluster).await
}

/// Reserve records (and static addresses) in order, then ask the provider in parallel.
async fn create_machines(
    ctx: &Context,
    cluster: &Cluster,
    account: &CloudAccount,
    provider: &dyn Provider,
    wanted: &[Wanted],
    to_create: Vec<&Wanted>,
) -> Result<(), Failure> {
    let pool = ippool::parse(&account.placement)
        .map_err(|e| Failure::Permanent(format!("cloud account {}: {e}", account.name)))?;
    let candidates = pool.as_ref().map(ippool::IpPool::candidates);
    // The first control plane is reserved first so that its static address is known to
    // every other machine's bootstrap as the API endpoint.
    let first_cp = wanted.iter().find(|w| w.role == NodeRole::ControlPlane);
    let first_cp_record = match first_cp {
        Some(w) => Some(
            ctx.store
                .reserve_machine(new_machine(cluster, w), candidates.clone())
                .await?,
        ),
        None => None,
    };
    let mut reserved = Vec::new();
    for w in to_create {
        let r = ctx
            .store
            .reserve_machine(new_machine(cluster, w), candidates.clone())
            .await?;
        reserved.push((w, r));
    }
    let plan = Plan::prepare(
        ctx,
        cluster,
        account,
        provider,
        first_cp,
        first_cp_record.as_ref(),
    )
    .await?;
    let plan = Arc::new(plan);
    let mut jobs = Vec::new();
    for (w, record) in reserved {
        let plan = plan.clone();
        let static_ip = record
            .static_ip
            .as_deref()
            .and_then(|a| pool.as_ref().map(|p| p.static_ip(a)));
        let job = async move {
            let first = first_cp.is_some_and(|f| f.name == w.name);
            let bootstrap = bootstrap::render(&MachineBootstrap {
                appliance: &ctx.endpoints,
                cluster_id: &cluster.id,
                cluster_name: &cluster.name,
                machine_name: &w.name,
                role: w.role,
                first_control_plane: first,
                control_plane_endpoint: &plan.control_plane_endpoint,
                kubernetes: &plan.kubernetes,
                secrets: &plan.secrets,
                static_ip: static_ip.as_ref(),
            });
            let spec = MachineSpec {
                name: w.name.clone(),
                cluster_id: cluster.id.clone(),
                pool: w.pool.clone(),
                role: w.role,
                size: w.size.clone(),
                image: plan.image.clone(),
                bootstrap,
                static_ip,
            };
            let m = provider.ensure_machine(&spec).await?;
            ctx.store
                .update_machine(&cluster.id, &w.name, observed_update(&m))
                .await?;
            ctx.store
                .cluster_event(
                    &cluster.id,
                    Severity::Info,
                    format!("machine {} created ({})", w.name, m.id),
                )
                .await?;
            Ok(())
        };
        jobs.push(job);
    }
    all_bounded(jobs).await
}

/// Run jobs with at most [`PARALLEL`] at once; the first error is returned once all finished
/// (a failed machine must not abandon its siblings half-way).
async fn all_bounded<F>(jobs: Vec<F>) -> Result<(), Failure>
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let mut pending = jobs.into_iter();
    let mut running = FuturesUnordered::new();
    let mut first_error = None;
    loop {
        while running.len() < PARALLEL {
            match pending.next() {
                Some(j) => running.push(j),
                None => break,
            }
        }
        match running.next().await {
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Some(Ok(())) => {}
            None => break,
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What every new machine of one pass shares.
struct Plan {
    image: ImageRef,
    kubernetes: KubernetesSettings,
    secrets: ClusterSecrets,
    control_plane_endpoint: String,
}

impl Plan {
    async fn prepare(
        ctx: &Context,
        cluster: &Cluster,
        account: &CloudAccount,
        provider: &dyn Provider,
        first_cp: Option<&Wanted>,
        first_cp_record: Option<&MachineRecord>,
    ) -> Result<Plan, Failure> {
        let profile = ctx
            .store
            .profile_revision(&cluster.profile_id, cluster.profile_revision)
            .await?;
        let layer = |t: LayerType| profile.layers.iter().find(|l| l.layer_type == t);
        let values = |l: &crate::model::Layer| -> Result<serde_json::Value, Failure> {
            crate::pack::yaml_to_json("values", &l.values)
                .map_err(|e| Failure::Permanent(format!("layer {}: {e}", l.pack)))
        };
        let k8s = layer(LayerType::Kubernetes).ok_or_else(|| {
            Failure::Permanent(format!(
                "profile revision {} has no kubernetes layer: add one (e.g. pack kubernetes-kubeadm)",
                cluster.profile_revision
            ))
        })?;
        let kubernetes = KubernetesSettings::from_layer(&k8s.version, &values(k8s)?);
        let os = layer(LayerType::Os).ok_or_else(|| {
            Failure::Permanent(format!(
                "profile revision {} has no os layer: add one whose values name the machine image (image.name)",
                cluster.profile_revision
            ))
        })?;
        let os_values = values(os)?;
        let os_image = resolve_image(ctx, account, os, &os_values).await?;
        let image = provider.ensure_image(&os_image).await?;
        let secrets_bytes = ctx
            .store
            .cluster_secrets(&cluster.id, || {
                serde_json::to_vec(&ClusterSecrets::generate()).unwrap_or_default()
            })
            .await?;
        let secrets: ClusterSecrets = serde_json::from_slice(&secrets_bytes).map_err(|e| {
            Failure::Permanent(format!("stored bootstrap secrets are unreadable: {e}"))
        })?;
        let control_plane_endpoint = match account.placement.get("control_plane_endpoint") {
            Some(vip) if !vip.trim().is_empty() => vip.trim().to_string(),
            _ => match first_cp_record.and_then(|r| r.static_ip.as_deref()) {
                Some(ip) => ip.split('/').next().unwrap_or(ip).to_string(),
                None => first_cp.map(|w| w.name.clone()).unwrap_or_default(),
            },
        };
        Ok(Plan {
            image,
            kubernetes,
            secrets,
            control_plane_endpoint,
        })
    }
}

/// The OS image of the profile's OS layer: `image.name` on the infrastructure, uploaded from
/// the bundle artifact `image.<format>` (e.g. `image.ova`) when the layer names one.
async fn resolve_image(
    ctx: &Context,
    account: &CloudAccount,
    os: &crate::model::Layer,
    values: &serde_json::Value,
) -> Result<OsImage, Failure> {
    let format = providers::image_format(account.kind);
    let format_key = serde_json::to_value(format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let name = values["image"]["name"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
        Failure::Permanent(format!(
            "the os layer ({}) must give image.name in its values: the machine image's name on the infrastructure",
            os.pack
        ))
    })?;
    let Some(artifact) = values["image"][&format_key]
        .as_str()
        .filter(|s| !s.is_empty())
    else {
        return Ok(OsImage {
            name: name.to_string(),
            format,
            size: 0,
            sha256: String::new(),
            location: ImageLocation::Existing,
        });
    };
    let found = ctx
        .store
        .bundle_file_artifacts()
        .await?
        .into_iter()
        .find(|[_, _, n, _, _, _]| n == artifact);
    let Some([_, _, _, _, digest, location]) = found else {
        return Err(Failure::Permanent(format!(
            "the os layer names image.{format_key} = {artifact:?}, but no imported bundle has a file artifact of that name: import the bundle that carries it"
        )));
    };
    let path = ctx.data_dir.join(&location);
    let size = tokio::fs::metadata(&path)
        .await
        .map_err(|e| Failure::Transient(format!("cannot read {}: {e}", path.display())))?
        .len();
    Ok(OsImage {
        name: name.to_string(),
        format,
        size,
        sha256: digest.trim_start_matches("sha256:").to_string(),
        location: ImageLocation::File(path),
    })
}

fn wanted_machines(cluster: &Cluster) -> Vec<Wanted> {
    // Control-plane pools first: the first control plane is the one that runs kubeadm init.
    let mut pools: Vec<_> = cluster.node_pools.iter().collect();
    pools.sort_by_key(|p| p.role != NodeRole::ControlPlane);
    pools
        .into_iter()
        .flat_map(|p| {
            (0..p.count).map(move |ordinal| Wanted {
                name: providers::machine_name(&cluster.name, &cluster.id, &p.name, ordinal),
                pool: p.name.clone(),
                ordinal,
                role: p.role,
                size: p.size.clone(),
            })
        })
        .collect()
}

fn new_machine(cluster: &Cluster, w: &Wanted) -> NewMachine {
    NewMachine {
        cluster_id: cluster.id.clone(),
        name: w.name.clone(),
        pool: w.pool.clone(),
        ordinal: w.ordinal,
        role: w.role,
    }
}

fn observed_update(m: &Machine) -> MachineUpdate {
    let (phase, reason) = match &m.state {
        MachineState::Provisioning => (MachinePhase::Provisioning, String::new()),
        MachineState::Running => (MachinePhase::Running, String::new()),
        MachineState::Off => (MachinePhase::Off, "powered off".to_string()),
        MachineState::Failed(r) => (MachinePhase::Failed, r.clone()),
    };
    MachineUpdate {
        provider_id: Some(m.id.clone()),
        phase,
        reason,
        addresses: m.addresses.clone(),
    }
}

/// Status and conditions from the machine records.
async fn write_status(ctx: &Context, cluster: &Cluster) -> Result<Outcome, Failure> {
    let records = ctx.store.machines(&cluster.id).await?;
    let total = records.len();
    let running = records
        .iter()
        .filter(|r| r.phase == MachinePhase::Running)
        .count();
    let missing: Vec<&str> = records
        .iter()
        .filter(|r| r.phase == MachinePhase::Missing)
        .map(|r| r.name.as_str())
        .collect();
    let waiting_on: Vec<String> = records
        .iter()
        .filter(|r| !matches!(r.phase, MachinePhase::Running | MachinePhase::Missing))
        .map(|r| format!("{} ({})", r.name, r.phase.as_str()))
        .collect();
    let mut conditions = vec![condition("InfrastructureReachable", "True", "Reached", "")];
    let ready = waiting_on.is_empty();
    conditions.push(if ready {
        condition(
            "MachinesReady",
            "True",
            "AllRunning",
            &format!("{running} of {total} machines running"),
        )
    } else {
        condition(
            "MachinesReady",
            "False",
            "Waiting",
            &format!(
                "waiting for {} of {total} machines: {}",
                waiting_on.len(),
                waiting_on.join(", ")
            ),
        )
    });
    conditions.push(if missing.is_empty() {
        condition("MachinesPresent", "True", "AllPresent", "")
    } else {
        condition(
            "MachinesPresent",
            "False",
            "DeletedOutsidePalisade",
            &format!("missing (drift policy alert): {}", missing.join(", ")),
        )
    });
    let status = if ready {
        ClusterStatus::Running
    } else if cluster.status == ClusterStatus::Running || cluster.status == ClusterStatus::Updating
    {
        ClusterStatus::Updating
    } else {
        ClusterStatus::Provisioning
    };
    // Keep transition times of unchanged conditions.
    for c in &mut conditions {
        if let Some(old) = cluster
            .conditions
            .iter()
            .find(|o| o.condition_type == c.condition_type)
        {
            if old.status == c.status {
                c.last_transition = old.last_transition;
            }
        }
    }
    ctx.store
        .set_cluster_status(&cluster.id, status, conditions, None)
        .await?;
    if status != cluster.status {
        ctx.store
            .cluster_event(
                &cluster.id,
                Severity::Info,
                format!("status {} -> {}", cluster.status.as_str(), status.as_str()),
            )
            .await?;
    }
    Ok(Outcome::Requeue(if ready { ctx.resync } else { SOON }))
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        condition_type: kind.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition: now(),
    }
}

fn waiting(message: &str) -> Vec<Condition> {
    vec![condition("MachinesReady", "False", "Waiting", message)]
}

fn set_condition(conditions: &mut Vec<Condition>, c: Condition) {
    match conditions
        .iter_mut()
        .find(|o| o.condition_type == c.condition_type)
    {
        Some(old) => {
            if old.status == c.status {
                let at = old.last_transition;
                *old = c;
                old.last_transition = at;
            } else {
                *old = c;
            }
        }
        None => conditions.push(c),
    }
}
