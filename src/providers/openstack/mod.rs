//! The OpenStack provider: Keystone v3 login, Glance images, Nova servers and the Neutron ports
//! of machines with a static address. Built by [`crate::providers::connect`] for accounts of
//! kind `openstack`; the orchestrator, the installer and the gateway call it through the
//! [`Provider`] trait.
//!
//! The account's `endpoint` is the Keystone v3 URL (`https://keystone.example:5000/v3`).
//! Credentials: `username` + `password`, or `application_credential_id` +
//! `application_credential_secret` (the credential carries its project, so `project` is then
//! only checked, not used to scope).
//!
//! Placement keys (all optional unless said otherwise):
//!
//! | key | meaning |
//! | --- | --- |
//! | `project` | project name (or its 32-hex-digit id); required with a password |
//! | `user_domain` | domain of the user, default `Default` |
//! | `project_domain` | domain of the project, default `Default` |
//! | `region` | catalog region; default: the first region that has the service |
//! | `interface` | catalog interface: `public` (default), `internal` or `admin` |
//! | `flavor` | flavor name or id for every machine; unset: for each machine the smallest enabled flavor with at least the pool's vCPUs, memory and disk (by memory, then vCPUs, then disk, then name) |
//! | `network` | network name or id machines attach to; unset: the project's only non-external network |
//! | `security_group` | security group name or id; unset: Neutron's `default` |
//! | `availability_zone` | Nova availability zone |
//! | `anti_affinity` | `true` (or `hard`): the control-plane machines of one cluster pool go into a server group with the `anti-affinity` policy (never two on one host; needs Nova's `ServerGroupAntiAffinityFilter`, on by default); `soft`: the `soft-anti-affinity` policy (spread when possible); default `false` |
//! | `config_drive` | `true`: boot with a config drive (sites without the metadata service); default `false` |
//!
//! Machines are Nova servers named after [`MachineSpec::name`] with metadata
//! `palisade-cluster`, `palisade-pool`, `palisade-role` (and `palisade-server-group`), and the
//! same as Nova tags (`palisade-cluster=<id>`, ...) when they fit Nova's 60 characters. A
//! machine with a static address boots on a Neutron port named after the machine, created
//! with that fixed IP and found again on retry; deleting the machine deletes the port.

mod glance;
mod keystone;
mod neutron;
mod nova;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use self::glance::Glance;
use self::keystone::{AuthMethod, Service, Session};
use self::neutron::{Network, Neutron};
use self::nova::{Flavor, Nova, Server};
use super::{
    Account, AccountCheck, ErrorKind, ImageFormat, ImageLocation, ImageRef, Machine, MachineRef,
    MachineSpec, MachineState, OsImage, PlacementChoice, PowerOp, Provider, ProviderError,
    TAG_CLUSTER, TAG_POOL, TAG_ROLE,
};
use crate::model::{MachineSize, NodeRole};

/// Metadata key holding the id of the anti-affinity server group a machine was created in.
pub const TAG_SERVER_GROUP: &str = "palisade-server-group";
/// Metadata key holding the id of the Neutron port created for a machine's static address.
pub const TAG_PORT: &str = "palisade-port";

/// How long resolved settings (flavors, network, security group, active images) are reused
/// before being read again: the orchestrator creates many machines in a row.
const CACHE_TTL: Duration = Duration::from_secs(60);

/// A value read from the cloud and when.
type Cached<T> = tokio::sync::Mutex<Option<(Instant, T)>>;

/// Resolve `fetch` once per [`CACHE_TTL`]; concurrent callers wait for one fetch.
async fn cached<T: Clone, F, Fut>(slot: &Cached<T>, fetch: F) -> Result<T, ProviderError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut guard = slot.lock().await;
    if let Some((at, v)) = guard.as_ref() {
        if at.elapsed() < CACHE_TTL {
            return Ok(v.clone());
        }
    }
    let v = fetch().await?;
    *guard = Some((Instant::now(), v.clone()));
    Ok(v)
}

/// Settings resolved against the cloud, reused for [`CACHE_TTL`].
#[derive(Default)]
struct Resolved {
    flavors: Cached<Vec<Flavor>>,
    network: Cached<Network>,
    security_group: Cached<Option<neutron::SecurityGroup>>,
    /// Glance image ids seen active.
    images: Cached<Vec<String>>,
}

impl Resolved {
    /// Forget everything (after a create failed: a setting may have changed).
    async fn clear(&self) {
        *self.flavors.lock().await = None;
        *self.network.lock().await = None;
        *self.security_group.lock().await = None;
        *self.images.lock().await = None;
    }
}

/// Placement keys this provider reads.
const PLACEMENT_KEYS: &[&str] = &[
    "project",
    "user_domain",
    "project_domain",
    "region",
    "interface",
    "flavor",
    "network",
    "security_group",
    "availability_zone",
    "anti_affinity",
    "config_drive",
];

/// Timeout of one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `delete_machine` waits for Nova to remove a server.
const DELETE_WAIT: Duration = Duration::from_secs(180);
/// How long `ensure_image` waits for an uploaded image to become active.
const IMAGE_ACTIVE_WAIT: Duration = Duration::from_secs(300);
/// Nova's limit on user data (base64-encoded).
const MAX_USER_DATA: usize = 65535;

/// Placement settings after parsing.
#[derive(Debug, Clone, Default)]
struct Settings {
    project: Option<String>,
    flavor: Option<String>,
    network: Option<String>,
    security_group: Option<String>,
    availability_zone: Option<String>,
    /// Server group policy for control planes.
    anti_affinity: Option<&'static str>,
    config_drive: bool,
}

/// A connected OpenStack account (logs in lazily, on the first call).
pub struct OpenStack {
    session: Session,
    upload: reqwest::Client,
    settings: Settings,
    microversion: tokio::sync::OnceCell<(u32, u32)>,
    application_credential: bool,
    resolved: Resolved,
}

impl std::fmt::Debug for OpenStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStack")
            .field("auth_url", &self.session.auth_url())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ProviderError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" | "" => Ok(false),
        _ => Err(ProviderError::invalid(
            key,
            format!("{value:?} is not a boolean: write true or false"),
        )),
    }
}

/// The server group policy of the `anti_affinity` setting.
fn parse_anti_affinity(value: &str) -> Result<Option<&'static str>, ProviderError> {
    if value.trim().eq_ignore_ascii_case("soft") {
        return Ok(Some("soft-anti-affinity"));
    }
    if value.trim().eq_ignore_ascii_case("hard") {
        return Ok(Some("anti-affinity"));
    }
    parse_bool("anti_affinity", value)
        .map(|on| on.then_some("anti-affinity"))
        .map_err(|_| {
            ProviderError::invalid(
                "anti_affinity",
                format!("{value:?}: write true (or hard), soft or false"),
            )
        })
}

impl OpenStack {
    /// Check the account's settings (no network call) and build the provider.
    pub fn new(account: &Account) -> Result<OpenStack, ProviderError> {
        let url = reqwest::Url::parse(account.endpoint.trim()).map_err(|e| {
            ProviderError::invalid(
                "endpoint",
                format!(
                    "{:?} is not a URL ({e}); give the Keystone v3 URL, e.g. https://keystone.example:5000/v3",
                    account.endpoint
                ),
            )
        })?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(ProviderError::invalid(
                "endpoint",
                "give the Keystone v3 URL with https:// and a host, e.g. https://keystone.example:5000/v3",
            ));
        }
        let p = &account.placement;
        if let Some(unknown) = p.keys().find(|k| {
            !PLACEMENT_KEYS.contains(&k.as_str())
                && !super::ORCHESTRATOR_PLACEMENT_KEYS.contains(&k.as_str())
        }) {
            return Err(ProviderError::invalid(
                "placement",
                format!(
                    "unknown OpenStack placement key {unknown:?}; the keys are {}",
                    PLACEMENT_KEYS.join(", ")
                ),
            ));
        }
        let get = |k: &str| {
            p.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let c = &account.credentials;
        let application_credential =
            !c.application_credential_id.is_empty() && !c.application_credential_secret.is_empty();
        let auth = if application_credential {
            AuthMethod::ApplicationCredential {
                id: c.application_credential_id.clone(),
                secret: c.application_credential_secret.clone(),
            }
        } else if !c.username.is_empty() && !c.password.is_empty() {
            let project = get("project").ok_or_else(|| {
                ProviderError::invalid(
                    "project",
                    "set the placement key `project` to the project machines are created in (or use an application credential)",
                )
            })?;
            AuthMethod::Password {
                username: c.username.clone(),
                password: c.password.clone(),
                user_domain: get("user_domain").unwrap_or_else(|| "Default".into()),
                project,
                project_domain: get("project_domain").unwrap_or_else(|| "Default".into()),
            }
        } else {
            return Err(ProviderError::invalid(
                "credentials",
                "give username and password, or application_credential_id and application_credential_secret",
            ));
        };
        let interface = get("interface").unwrap_or_else(|| "public".into());
        if !matches!(interface.as_str(), "public" | "internal" | "admin") {
            return Err(ProviderError::invalid(
                "interface",
                format!("{interface:?}: write public, internal or admin"),
            ));
        }
        let settings = Settings {
            project: get("project"),
            flavor: get("flavor"),
            network: get("network"),
            security_group: get("security_group"),
            availability_zone: get("availability_zone"),
            anti_affinity: parse_anti_affinity(&get("anti_affinity").unwrap_or_default())?,
            config_drive: parse_bool("config_drive", &get("config_drive").unwrap_or_default())?,
        };
        let http = super::http::client(&account.ca_bundle, REQUEST_TIMEOUT)?;
        let upload = super::http::upload_client(&account.ca_bundle)?;
        Ok(OpenStack {
            session: Session::new(
                http,
                account.endpoint.trim(),
                auth,
                get("region"),
                interface,
            ),
            upload,
            settings,
            microversion: tokio::sync::OnceCell::new(),
            application_credential,
            resolved: Resolved::default(),
        })
    }

    /// The current Keystone token (renewed when close to expiry), for callers that reach an
    /// OpenStack API this provider does not wrap. It is a secret: never log it.
    pub async fn token(&self) -> Result<String, ProviderError> {
        Ok(self.session.token().await?.value.clone())
    }

    async fn nova(&self) -> Result<Nova<'_>, ProviderError> {
        let version = *self
            .microversion
            .get_or_try_init(|| nova::negotiate(&self.session))
            .await?;
        Ok(Nova {
            session: &self.session,
            version,
        })
    }

    fn glance(&self) -> Glance<'_> {
        Glance {
            session: &self.session,
        }
    }

    fn neutron(&self) -> Neutron<'_> {
        Neutron {
            session: &self.session,
        }
    }

    /// The network machines attach to: the `network` setting, or the project's only
    /// non-external network.
    async fn network(&self) -> Result<Network, ProviderError> {
        let neutron = self.neutron();
        if let Some(n) = &self.settings.network {
            return neutron.find_network(n).await;
        }
        let all = neutron.networks(&[]).await?;
        let internal: Vec<&Network> = all.iter().filter(|n| !n.external).collect();
        match internal.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ProviderError::not_found(
                "the project has no network machines can attach to: create one (with a subnet) or set the placement key `network`",
            )),
            many => Err(ProviderError::invalid(
                "network",
                format!(
                    "is not set and the project sees {} networks ({}): set it to the one machines attach to",
                    many.len(),
                    many.iter().map(|n| n.label()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// The project's servers with this exact name and cluster metadata, oldest first.
    async fn servers_named(
        &self,
        nova: &Nova<'_>,
        name: &str,
        cluster_id: &str,
    ) -> Result<Vec<Server>, ProviderError> {
        let mut found = nova
            .servers(&[("name", nova::exact_name_filter(name))])
            .await?;
        found.retain(|s| {
            s.name == name && s.metadata.get(TAG_CLUSTER).map(String::as_str) == Some(cluster_id)
        });
        found.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
        Ok(found)
    }

    /// The server group of a cluster's control-plane pool, created when missing.
    async fn anti_affinity_group(
        &self,
        nova: &Nova<'_>,
        cluster_id: &str,
        pool: &str,
        policy: &str,
    ) -> Result<String, ProviderError> {
        let name = format!("palisade-{cluster_id}-{pool}-{policy}");
        let pick = |groups: Vec<nova::ServerGroup>| {
            // Two concurrent callers may both create one: all settle on the same group.
            groups
                .into_iter()
                .filter(|g| g.name == name)
                .min_by(|a, b| (a.members.is_empty(), &a.id).cmp(&(b.members.is_empty(), &b.id)))
                .map(|g| g.id)
        };
        if let Some(id) = pick(nova.server_groups().await?) {
            return Ok(id);
        }
        let created = nova.create_server_group(&name, policy).await?;
        Ok(pick(nova.server_groups().await?).unwrap_or(created.id))
    }

    /// The port of a machine with a static address: found by name and description, created
    /// with the fixed IP when missing.
    async fn static_port(
        &self,
        spec: &MachineSpec,
        address: &str,
        network: &Network,
        security_group: Option<&str>,
    ) -> Result<String, ProviderError> {
        let neutron = self.neutron();
        let marker = port_description(&spec.name, &spec.cluster_id);
        let ip = neutron::bare_address(address);
        for p in neutron.ports_named(&spec.name).await? {
            if p.description != marker {
                continue;
            }
            if p.network_id == network.id && p.fixed_ips.iter().any(|f| f.ip_address == ip) {
                return Ok(p.id);
            }
            if p.device_id.is_empty() {
                // Left by an earlier spec with another address or network, and unused.
                neutron.delete_port(&p.id).await?;
            } else {
                return Err(ProviderError::invalid(
                    "static_ip",
                    format!(
                        "machine {}'s port {} has another address and is in use by {}; delete that server first",
                        spec.name, p.id, p.device_id
                    ),
                ));
            }
        }
        let port = neutron
            .create_port(&spec.name, &network.id, ip, &marker, security_group)
            .await?;
        let tags: Vec<String> = machine_tags(spec);
        if let Err(e) = neutron.set_port_tags(&port.id, &tags).await {
            tracing::warn!(port = %port.id, error = %e, "cannot tag the port of a machine; it is found by its name and description");
        }
        Ok(port.id)
    }
}

/// The description of a machine's pre-created port (how it is found again).
fn port_description(name: &str, cluster_id: &str) -> String {
    format!("palisade machine {name} of cluster {cluster_id}")
}

/// Nova/Neutron tags of a machine (those that fit the 60-character limit).
fn machine_tags(spec: &MachineSpec) -> Vec<String> {
    [
        format!("{TAG_CLUSTER}={}", spec.cluster_id),
        format!("{TAG_POOL}={}", spec.pool),
        format!("{TAG_ROLE}={}", role_name(spec.role)),
    ]
    .into_iter()
    .filter(|t| nova::valid_tag(t))
    .collect()
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::ControlPlane => "control-plane",
        NodeRole::Worker => "worker",
    }
}

/// The flavor of a machine: the `flavor` setting (name or id), else the smallest enabled flavor
/// that has at least the requested vCPUs, memory and disk.
fn choose_flavor(
    flavors: &[Flavor],
    setting: Option<&str>,
    size: &MachineSize,
) -> Result<Flavor, ProviderError> {
    let labels = || {
        flavors
            .iter()
            .map(Flavor::label)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(want) = setting {
        return flavors
            .iter()
            .find(|f| f.id == want)
            .or_else(|| flavors.iter().find(|f| f.name == want))
            .cloned()
            .ok_or_else(|| {
                ProviderError::not_found(format!(
                    "flavor {want:?} does not exist (or the project may not use it); the flavors are: {}. Fix the placement key `flavor`",
                    labels()
                ))
            });
    }
    flavors
        .iter()
        .filter(|f| {
            !f.disabled
                && f.vcpus >= size.cpus
                && f.ram >= u64::from(size.memory_mib)
                && f.disk >= u64::from(size.disk_gib)
        })
        .min_by(|a, b| (a.ram, a.vcpus, a.disk, &a.name).cmp(&(b.ram, b.vcpus, b.disk, &b.name)))
        .cloned()
        .ok_or_else(|| {
            ProviderError::not_found(format!(
                "no flavor has at least {} vCPU, {} MiB of memory and {} GiB of disk; the flavors are: {}. Make the node pool smaller, ask the cloud's admin for a flavor, or set the placement key `flavor`",
                size.cpus, size.memory_mib, size.disk_gib, labels()
            ))
        })
}

/// A machine's state from a Nova status.
fn machine_state(s: &Server) -> MachineState {
    match s.status.as_str() {
        "ACTIVE" => MachineState::Running,
        "BUILD" | "REBUILD" | "REBOOT" | "HARD_REBOOT" | "MIGRATING" | "RESIZE"
        | "VERIFY_RESIZE" | "REVERT_RESIZE" | "PASSWORD" => MachineState::Provisioning,
        "SHUTOFF" | "STOPPED" | "PAUSED" | "SUSPENDED" | "SHELVED" | "SHELVED_OFFLOADED" => {
            MachineState::Off
        }
        "ERROR" => MachineState::Failed(
            s.fault
                .as_ref()
                .map(|f| f.message.trim().to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "Nova reports ERROR without a fault message".into()),
        ),
        other => MachineState::Failed(format!("Nova reports status {other}")),
    }
}

fn to_machine(s: &Server) -> Machine {
    Machine {
        id: s.id.clone(),
        name: s.name.clone(),
        cluster_id: s.metadata.get(TAG_CLUSTER).cloned().unwrap_or_default(),
        pool: s.metadata.get(TAG_POOL).cloned().unwrap_or_default(),
        state: machine_state(s),
        addresses: s.ip_addresses(),
    }
}

/// Lowercase hex digits, 64 of them.
fn check_sha256(sha: &str) -> Result<(), ProviderError> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            "image.sha256",
            format!("{sha:?} is not 64 lowercase hex digits"),
        ))
    }
}

/// What an upload stream has seen.
#[derive(Default)]
struct Seen {
    hasher: Sha256,
    bytes: u64,
}

impl Seen {
    fn add(shared: &Mutex<Seen>, chunk: &[u8]) {
        if let Ok(mut s) = shared.lock() {
            s.hasher.update(chunk);
            s.bytes += chunk.len() as u64;
        }
    }
}

/// An upload body that streams the image's bytes and hashes them on the way, and its length
/// when known.
async fn image_body(
    image: &OsImage,
    seen: Arc<Mutex<Seen>>,
) -> Result<(reqwest::Body, Option<u64>), ProviderError> {
    match &image.location {
        ImageLocation::Existing => Err(ProviderError::not_found(format!(
            "image {} has no bytes to upload",
            image.name
        ))),
        ImageLocation::File(path) => {
            let file = tokio::fs::File::open(path).await.map_err(|e| {
                ProviderError::invalid(
                    "image.location",
                    format!("cannot open {}: {e}", path.display()),
                )
            })?;
            let len = file
                .metadata()
                .await
                .map_err(|e| {
                    ProviderError::invalid(
                        "image.location",
                        format!("cannot read the size of {}: {e}", path.display()),
                    )
                })?
                .len();
            let stream =
                futures_util::stream::try_unfold((file, seen), |(mut f, seen)| async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(None);
                    }
                    buf.truncate(n);
                    Seen::add(&seen, &buf);
                    Ok(Some((buf, (f, seen))))
                });
            Ok((reqwest::Body::wrap_stream(stream), Some(len)))
        }
        ImageLocation::Url { url, ca_pem } => {
            let client = super::http::upload_client(ca_pem)?;
            let reply = client
                .get(url)
                .send()
                .await
                .map_err(|e| super::http::transport_error(url, &e))?;
            if !reply.status().is_success() {
                return Err(ProviderError::new(
                    if reply.status().is_server_error() {
                        ErrorKind::Transient
                    } else {
                        ErrorKind::NotFound
                    },
                    format!("image source {url} answered {}", reply.status()),
                ));
            }
            let len = reply.content_length();
            let stream = reply.bytes_stream().map(move |chunk| {
                if let Ok(c) = &chunk {
                    Seen::add(&seen, c);
                }
                chunk
            });
            Ok((reqwest::Body::wrap_stream(stream), len))
        }
    }
}

#[async_trait::async_trait]
impl Provider for OpenStack {
    async fn validate(&self) -> Result<AccountCheck, ProviderError> {
        let token = self.session.relogin().await?;
        let mut checks = vec![format!(
            "logged in to Keystone as {} with {} (roles: {})",
            if token.user.is_empty() {
                "the application credential's user"
            } else {
                &token.user
            },
            if self.application_credential {
                "an application credential"
            } else {
                "a password"
            },
            token.roles.join(", ")
        )];
        checks.push(format!(
            "scoped to project {} ({}) in domain {}",
            token.project_name, token.project_id, token.project_domain
        ));
        if let Some(p) = &self.settings.project {
            if p != &token.project_name && p != &token.project_id {
                return Err(ProviderError::invalid(
                    "project",
                    format!(
                        "is {p:?} but the application credential belongs to project {} ({}); fix the setting or use a credential of that project",
                        token.project_name, token.project_id
                    ),
                ));
            }
        }
        for service in [Service::Compute, Service::Image, Service::Network] {
            let url = self.session.endpoint(service).await?;
            checks.push(format!(
                "{} ({}) endpoint {url}",
                service.product(),
                service.catalog_type()
            ));
        }
        let nova = self.nova().await?;
        checks.push(format!(
            "Nova API microversion {}.{}",
            nova.version.0, nova.version.1
        ));
        let flavors = nova.flavors().await?;
        match &self.settings.flavor {
            Some(f) => {
                let flavor = choose_flavor(&flavors, Some(f), &MachineSize {
                    cpus: 0,
                    memory_mib: 0,
                    disk_gib: 0,
                })?;
                checks.push(format!("flavor {}", flavor.label()));
            }
            None if flavors.is_empty() => {
                return Err(ProviderError::not_found(
                    "the project may use no flavor: ask the cloud's admin for one, or set the placement key `flavor`",
                ))
            }
            None => checks.push(format!(
                "flavor chosen per node pool size among {} flavors",
                flavors.len()
            )),
        }
        let network = self.network().await?;
        checks.push(format!("network {} ({})", network.label(), network.id));
        if let Some(sg) = &self.settings.security_group {
            let g = self.neutron().find_security_group(sg).await?;
            checks.push(format!("security group {} ({})", g.name, g.id));
        }
        if let Some(az) = &self.settings.availability_zone {
            let zones = nova.availability_zones().await?;
            if !zones.contains(az) {
                return Err(neutron::missing("availability_zone", az, &zones));
            }
            checks.push(format!("availability zone {az}"));
        }
        self.session
            .call(
                Service::Image,
                reqwest::Method::GET,
                "/images",
                &[("limit", "1".into())],
                None,
                &[],
            )
            .await?
            .expect_ok("list Glance images")?;
        checks.push("Glance answers".into());
        if let Some(policy) = self.settings.anti_affinity {
            let groups = nova.server_groups().await?.len();
            checks.push(format!(
                "{policy} server groups for control planes ({groups} server groups in the project)"
            ));
        }
        let region = self
            .session
            .region()
            .map(|r| format!(", region {r}"))
            .unwrap_or_default();
        Ok(AccountCheck {
            endpoint_product: format!("OpenStack Keystone v3{region}"),
            checks,
        })
    }

    async fn placements(&self) -> Result<Vec<PlacementChoice>, ProviderError> {
        let nova = self.nova().await?;
        let mut out = Vec::new();
        let choice = |key: &str, value: &str, label: String| PlacementChoice {
            key: key.into(),
            value: value.into(),
            label,
        };
        let mut flavors = nova.flavors().await?;
        flavors.retain(|f| !f.disabled);
        flavors.sort_by(|a, b| {
            (a.ram, a.vcpus, a.disk, &a.name).cmp(&(b.ram, b.vcpus, b.disk, &b.name))
        });
        for f in &flavors {
            out.push(choice("flavor", &f.name, f.label()));
        }
        let networks = self.neutron().networks(&[]).await?;
        for n in &networks {
            let unique = networks.iter().filter(|m| m.name == n.name).count() == 1;
            let value = if unique && !n.name.is_empty() {
                &n.name
            } else {
                &n.id
            };
            let ext = if n.external { ", external" } else { "" };
            out.push(choice(
                "network",
                value,
                format!("{} ({}{ext})", n.label(), n.id),
            ));
        }
        let groups = self.neutron().security_groups().await?;
        for g in &groups {
            let unique = groups.iter().filter(|m| m.name == g.name).count() == 1;
            let value = if unique && !g.name.is_empty() {
                &g.name
            } else {
                &g.id
            };
            out.push(choice(
                "security_group",
                value,
                format!("{} ({})", g.name, g.id),
            ));
        }
        for z in nova.availability_zones().await? {
            out.push(choice("availability_zone", &z, z.clone()));
        }
        for i in self.glance().list(&[("status", "active".into())]).await? {
            let size = i
                .size
                .map(|s| format!(", {} MiB", s.div_ceil(1 << 20)))
                .unwrap_or_default();
            out.push(choice(
                "image",
                &i.id,
                format!(
                    "{} ({}{size})",
                    i.label(),
                    i.disk_format.as_deref().unwrap_or("?")
                ),
            ));
        }
        Ok(out)
    }

    async fn ensure_image(&self, image: &OsImage) -> Result<ImageRef, ProviderError> {
        let disk_format = match image.format {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            other => {
                return Err(ProviderError::invalid(
                    "image.format",
                    format!("OpenStack machines boot from qcow2 or raw images, not {other:?}"),
                ))
            }
        };
        let glance = self.glance();
        if image.location == ImageLocation::Existing {
            // Nothing to upload: an active image of that name must be there already.
            let mut found = glance.by_name(&image.name).await?;
            found.sort_by(|a, b| a.id.cmp(&b.id));
            return found
                .into_iter()
                .find(|i| i.status == "active")
                .map(|i| ImageRef {
                    id: i.id,
                    name: image.name.clone(),
                })
                .ok_or_else(|| {
                    ProviderError::not_found(format!(
                        "OpenStack: no active Glance image named {:?}: upload it, or name a qcow2 artifact as image.qcow2 in the profile's os layer",
                        image.name
                    ))
                });
        }
        check_sha256(&image.sha256)?;
        let token = self.session.token().await?;
        let mut existing = glance.by_name(&image.name).await?;
        existing.sort_by(|a, b| a.id.cmp(&b.id));
        for found in existing {
            if found.sha256.as_deref() != Some(image.sha256.as_str()) {
                continue;
            }
            if found.status == "active" {
                return Ok(ImageRef {
                    id: found.id,
                    name: image.name.clone(),
                });
            }
            if glance::is_unfinished(&found.status)
                && found.owner.as_deref() == Some(token.project_id.as_str())
            {
                tracing::warn!(image = %found.id, status = %found.status, name = %image.name,
                    "deleting an unfinished Glance image (an interrupted upload) before uploading again");
                glance.delete(&found.id).await?;
            }
        }
        let created = glance
            .create(&image.name, disk_format, &image.sha256)
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let uploaded = async {
            let (body, len) = image_body(image, seen.clone()).await?;
            glance
                .upload(&self.upload, &created.id, &image.name, body, len)
                .await
        }
        .await;
        if let Err(e) = uploaded {
            // Leave no queued image behind (a later call would delete it anyway).
            let _ = glance.delete(&created.id).await;
            return Err(e);
        }
        let (digest, bytes) = match seen.lock() {
            Ok(s) => (hex::encode(s.hasher.clone().finalize()), s.bytes),
            Err(_) => (String::new(), 0),
        };
        if digest != image.sha256 || (image.size > 0 && bytes != image.size) {
            let _ = glance.delete(&created.id).await;
            return Err(ProviderError::invalid(
                "image",
                format!(
                    "the bytes of {} have sha256 {digest} and {bytes} bytes, but the image is declared with sha256 {} and {} bytes; the uploaded copy was deleted",
                    image.name, image.sha256, image.size
                ),
            ));
        }
        let start = Instant::now();
        for attempt in 0u32..1000 {
            match glance.get(&created.id).await? {
                Some(i) if i.status == "active" => {
                    return Ok(ImageRef {
                        id: i.id,
                        name: image.name.clone(),
                    })
                }
                Some(i) if i.status == "killed" || i.status == "deleted" => {
                    return Err(ProviderError::transient(format!(
                        "Glance image {} ({}) went to status {} after the upload; try again",
                        image.name, i.id, i.status
                    )))
                }
                None => {
                    return Err(ProviderError::transient(format!(
                        "Glance image {} ({}) disappeared after the upload; try again",
                        image.name, created.id
                    )))
                }
                Some(_) if start.elapsed() > IMAGE_ACTIVE_WAIT => break,
                Some(_) => tokio::time::sleep(keystone::poll_interval(attempt)).await,
            }
        }
        Err(ProviderError::transient(format!(
            "Glance image {} ({}) is not active {} s after its upload; try again later",
            image.name,
            created.id,
            IMAGE_ACTIVE_WAIT.as_secs()
        )))
    }

    async fn ensure_machine(&self, spec: &MachineSpec) -> Result<Machine, ProviderError> {
        let nova = self.nova().await?;
        // Found again by name and cluster metadata: a retry after a crash, or after a create
        // whose answer was lost, returns the first server instead of making a second.
        let found = self
            .servers_named(&nova, &spec.name, &spec.cluster_id)
            .await?;
        if let Some(first) = found.first() {
            // Two racing callers may both have created one: the oldest stays, the others go.
            for extra in found.iter().skip(1) {
                tracing::warn!(server = %extra.id, name = %spec.name, "deleting a duplicate server of a machine");
                nova.delete_server(&extra.id).await?;
            }
            return Ok(to_machine(first));
        }
        let result = self.create_machine(&nova, spec).await;
        if result.is_err() {
            self.resolved.clear().await;
        }
        result
    }

    async fn machine(&self, id: &MachineRef) -> Result<Option<Machine>, ProviderError> {
        let nova = self.nova().await?;
        Ok(nova.server(&id.id).await?.as_ref().map(to_machine))
    }

    async fn power(&self, id: &MachineRef, op: PowerOp) -> Result<(), ProviderError> {
        self.power_op(id, op).await
    }

    async fn delete_machine(&self, id: &MachineRef) -> Result<(), ProviderError> {
        self.delete(id).await
    }

    async fn machines(&self, cluster_id: &str) -> Result<Vec<Machine>, ProviderError> {
        self.list_machines(cluster_id).await
    }
}

impl OpenStack {
    /// Check the image a machine boots from is active in Glance (cached for a minute).
    async fn check_image(&self, image: &ImageRef) -> Result<(), ProviderError> {
        {
            let known = self.resolved.images.lock().await;
            if let Some((at, ids)) = known.as_ref() {
                if at.elapsed() < CACHE_TTL && ids.contains(&image.id) {
                    return Ok(());
                }
            }
        }
        let glance = self.glance();
        match glance.get(&image.id).await? {
            Some(i) if i.status == "active" => {
                let mut known = self.resolved.images.lock().await;
                match known.as_mut() {
                    Some((at, ids)) if at.elapsed() < CACHE_TTL => ids.push(image.id.clone()),
                    _ => *known = Some((Instant::now(), vec![image.id.clone()])),
                }
                Ok(())
            }
            Some(i) => Err(ProviderError::transient(format!(
                "image {} ({}) is {} in Glance, not active; run ensure_image again",
                image.name, image.id, i.status
            ))),
            None => {
                let names: Vec<String> = glance
                    .list(&[("status", "active".into())])
                    .await?
                    .iter()
                    .map(|i| i.label().to_string())
                    .collect();
                Err(ProviderError::not_found(format!(
                    "image {} ({}) does not exist in Glance (upload it with ensure_image); the active images are: {}",
                    image.name,
                    image.id,
                    if names.is_empty() { "none".into() } else { names.join(", ") }
                )))
            }
        }
    }

    /// Create the server of a machine (none exists).
    async fn create_machine(
        &self,
        nova: &Nova<'_>,
        spec: &MachineSpec,
    ) -> Result<Machine, ProviderError> {
        let flavors = cached(&self.resolved.flavors, || nova.flavors()).await?;
        let flavor = choose_flavor(&flavors, self.settings.flavor.as_deref(), &spec.size)?;
        self.check_image(&spec.image).await?;
        let network = cached(&self.resolved.network, || self.network()).await?;
        let security_group = cached(&self.resolved.security_group, || async {
            match &self.settings.security_group {
                Some(sg) => self.neutron().find_security_group(sg).await.map(Some),
                None => Ok(None),
            }
        })
        .await?;
        let user_data = base64::engine::general_purpose::STANDARD.encode(&spec.bootstrap.user_data);
        if user_data.len() > MAX_USER_DATA {
            return Err(ProviderError::invalid(
                "bootstrap.user_data",
                format!(
                    "is {} bytes in base64, Nova takes at most {MAX_USER_DATA}",
                    user_data.len()
                ),
            ));
        }
        let mut metadata = BTreeMap::from([
            (TAG_CLUSTER.to_string(), spec.cluster_id.clone()),
            (TAG_POOL.to_string(), spec.pool.clone()),
            (TAG_ROLE.to_string(), role_name(spec.role).to_string()),
        ]);
        let mut hints = None;
        if let (Some(policy), NodeRole::ControlPlane) = (self.settings.anti_affinity, spec.role) {
            let group = self
                .anti_affinity_group(nova, &spec.cluster_id, &spec.pool, policy)
                .await?;
            hints = Some(json!({"group": group}));
            metadata.insert(TAG_SERVER_GROUP.to_string(), group);
        }
        let networks = match &spec.static_ip {
            Some(ip) => {
                let port = self
                    .static_port(
                        spec,
                        &ip.address,
                        &network,
                        security_group.as_ref().map(|g| g.id.as_str()),
                    )
                    .await?;
                metadata.insert(TAG_PORT.to_string(), port.clone());
                json!([{"port": port}])
            }
            None => json!([{"uuid": network.id}]),
        };
        let mut server = json!({
            "name": spec.name,
            "imageRef": spec.image.id,
            "flavorRef": flavor.id,
            "networks": networks,
            "user_data": user_data,
            "metadata": metadata,
            "tags": machine_tags(spec),
        });
        if let Some(az) = &self.settings.availability_zone {
            server["availability_zone"] = json!(az);
        }
        if let (Some(g), None) = (&security_group, &spec.static_ip) {
            // With a pre-created port the group is set on the port instead.
            server["security_groups"] = json!([{"name": g.id}]);
        }
        if self.settings.config_drive {
            server["config_drive"] = json!(true);
        }
        let id = match nova.create_server(&spec.name, server, hints).await {
            Ok(id) => id,
            Err(e) if e.is_transient() => {
                // The create may have happened although its answer was lost.
                match self.servers_named(nova, &spec.name, &spec.cluster_id).await {
                    Ok(found) if !found.is_empty() => return Ok(to_machine(&found[0])),
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        // Should another caller have raced this one, the next ensure keeps the oldest server.
        Ok(Machine {
            id,
            name: spec.name.clone(),
            cluster_id: spec.cluster_id.clone(),
            pool: spec.pool.clone(),
            state: MachineState::Provisioning,
            addresses: Vec::new(),
        })
    }

    async fn power_op(&self, id: &MachineRef, op: PowerOp) -> Result<(), ProviderError> {
        let nova = self.nova().await?;
        let gone = || {
            ProviderError::not_found(format!(
                "machine {} ({}) does not exist any more",
                id.name, id.id
            ))
        };
        let server = nova.server(&id.id).await?.ok_or_else(gone)?;
        let done = |s: &Server| match op {
            PowerOp::On => s.status == "ACTIVE" || s.task_state.as_deref() == Some("powering-on"),
            PowerOp::Off => {
                s.status == "SHUTOFF" || s.task_state.as_deref() == Some("powering-off")
            }
            PowerOp::Reset => false,
        };
        if done(&server) {
            return Ok(());
        }
        let body = match op {
            PowerOp::On => json!({"os-start": null}),
            PowerOp::Off => json!({"os-stop": null}),
            PowerOp::Reset => json!({"reboot": {"type": "HARD"}}),
        };
        let reply = nova.action(&id.id, body).await?;
        if reply.ok() {
            return Ok(());
        }
        let what = format!("power {op:?} machine {}", id.name).to_lowercase();
        if reply.status == reqwest::StatusCode::NOT_FOUND {
            return Err(gone());
        }
        if reply.status == reqwest::StatusCode::CONFLICT {
            // Another change raced ours; it may be the one asked for.
            if let Some(s) = nova.server(&id.id).await? {
                if done(&s) {
                    return Ok(());
                }
            }
        }
        Err(reply.error(&what))
    }

    async fn delete(&self, id: &MachineRef) -> Result<(), ProviderError> {
        let nova = self.nova().await?;
        let server = nova.server(&id.id).await?;
        let port = server
            .as_ref()
            .and_then(|s| s.metadata.get(TAG_PORT).cloned());
        let group = server.as_ref().and_then(|s| {
            s.server_groups
                .as_ref()
                .and_then(|g| g.first().cloned())
                .or_else(|| s.metadata.get(TAG_SERVER_GROUP).cloned())
        });
        if server.is_some() {
            nova.delete_server(&id.id).await?;
            let start = Instant::now();
            let mut attempt = 0u32;
            // Gone means 404: the peer showed a server DELETED that a failed delete later
            // turned back into ERROR.
            while let Some(left) = nova.server_record(&id.id).await? {
                // A delete that failed inside Nova leaves the server (often in ERROR) with no
                // task running: ask again, every tenth poll.
                if attempt % 10 == 9 && left.task_state.is_none() {
                    match nova.delete_server(&id.id).await {
                        Err(e) if !e.is_transient() => return Err(e),
                        _ => {}
                    }
                }
                if start.elapsed() > DELETE_WAIT || attempt > 1000 {
                    return Err(ProviderError::transient(format!(
                        "Nova server {} ({}) is still being deleted after {} s; try again",
                        id.name,
                        id.id,
                        DELETE_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(keystone::poll_interval(attempt)).await;
                attempt += 1;
            }
        }
        // The pre-created port of a static address (Nova only unbinds it): named in the
        // server's metadata, or, when the server was already gone, found by name.
        let neutron = self.neutron();
        if let Some(p) = &port {
            neutron.delete_port(p).await?;
        } else if server.is_none() {
            self.delete_orphan_ports(id).await?;
        }
        if let Some(g) = group {
            if let Some(sg) = nova.server_group(&g).await? {
                if sg.members.iter().all(|m| m == &id.id) {
                    nova.delete_server_group(&g).await?;
                }
            }
        }
        Ok(())
    }

    /// Delete the ports created for a machine whose server is gone (a retry of a delete that
    /// was interrupted after the server went).
    async fn delete_orphan_ports(&self, id: &MachineRef) -> Result<(), ProviderError> {
        let neutron = self.neutron();
        let marker = format!("palisade machine {} of cluster ", id.name);
        for p in neutron.ports_named(&id.name).await? {
            if p.description.starts_with(&marker)
                && (p.device_id.is_empty() || p.device_id == id.id)
            {
                neutron.delete_port(&p.id).await?;
            }
        }
        Ok(())
    }

    async fn list_machines(&self, cluster_id: &str) -> Result<Vec<Machine>, ProviderError> {
        let nova = self.nova().await?;
        let tag = format!("{TAG_CLUSTER}={cluster_id}");
        let query = if nova::valid_tag(&tag) {
            vec![("tags", tag)]
        } else {
            Vec::new()
        };
        let mut servers = nova.servers(&query).await?;
        servers.retain(|s| s.metadata.get(TAG_CLUSTER).map(String::as_str) == Some(cluster_id));
        // A server Nova has deleted is gone, even while a list still shows it for a moment.
        servers.retain(|s| !matches!(s.status.as_str(), "DELETED" | "SOFT_DELETED"));
        servers.sort_by(|a, b| (&a.name, &a.created, &a.id).cmp(&(&b.name, &b.created, &b.id)));
        Ok(servers.iter().map(to_machine).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CloudKind, Credentials};

    fn flavor(id: &str, name: &str, vcpus: u32, ram: u64, disk: u64) -> Flavor {
        Flavor {
            id: id.into(),
            name: name.into(),
            vcpus,
            ram,
            disk,
            disabled: false,
        }
    }

    #[test]
    fn chooses_the_smallest_flavor_that_fits() {
        let flavors = vec![
            flavor("1", "m1.tiny", 1, 512, 1),
            flavor("3", "m1.medium", 2, 4096, 40),
            flavor("2", "m1.small", 1, 2048, 20),
            flavor("4", "m1.large", 4, 8192, 80),
        ];
        let size = |cpus, memory_mib, disk_gib| MachineSize {
            cpus,
            memory_mib,
            disk_gib,
        };
        assert_eq!(
            choose_flavor(&flavors, None, &size(1, 1024, 10))
                .expect("fits")
                .name,
            "m1.small"
        );
        assert_eq!(
            choose_flavor(&flavors, None, &size(2, 2048, 10))
                .expect("fits")
                .name,
            "m1.medium"
        );
        let err = choose_flavor(&flavors, None, &size(8, 1024, 10)).expect_err("too big");
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(
            err.message.contains("m1.large (4 vCPU, 8192 MiB, 80 GiB)"),
            "{}",
            err.message
        );
        // The setting wins over the size, by id or name.
        assert_eq!(
            choose_flavor(&flavors, Some("1"), &size(8, 1024, 10))
                .expect("id")
                .name,
            "m1.tiny"
        );
        assert_eq!(
            choose_flavor(&flavors, Some("m1.large"), &size(1, 1024, 10))
                .expect("name")
                .id,
            "4"
        );
        let err =
            choose_flavor(&flavors, Some("m9.huge"), &size(1, 1024, 10)).expect_err("missing");
        assert!(
            err.message.contains("\"m9.huge\"") && err.message.contains("`flavor`"),
            "{}",
            err.message
        );
    }

    fn server(status: &str, fault: Option<&str>) -> Server {
        serde_json::from_value(json!({
            "id": "s1", "name": "n", "status": status,
            "metadata": {"palisade-cluster": "c1", "palisade-pool": "w"},
            "fault": fault.map(|m| json!({"message": m, "code": 500})),
        }))
        .expect("server")
    }

    #[test]
    fn maps_nova_statuses_to_machine_states() {
        assert_eq!(
            machine_state(&server("ACTIVE", None)),
            MachineState::Running
        );
        assert_eq!(
            machine_state(&server("BUILD", None)),
            MachineState::Provisioning
        );
        assert_eq!(machine_state(&server("SHUTOFF", None)), MachineState::Off);
        assert_eq!(
            machine_state(&server("ERROR", Some("No valid host was found. "))),
            MachineState::Failed("No valid host was found.".into())
        );
        assert!(
            matches!(machine_state(&server("ERROR", None)), MachineState::Failed(m) if m.contains("without"))
        );
        assert!(matches!(
            machine_state(&server("UNKNOWN", None)),
            MachineState::Failed(_)
        ));
        let m = to_machine(&server("ACTIVE", None));
        assert_eq!((m.cluster_id.as_str(), m.pool.as_str()), ("c1", "w"));
    }

    fn account(placement: &[(&str, &str)], creds: Credentials) -> Account {
        Account {
            kind: CloudKind::Openstack,
            endpoint: "http://127.0.0.1:5000/v3".into(),
            ca_bundle: String::new(),
            credentials: creds,
            placement: placement
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn password() -> Credentials {
        Credentials {
            username: "demo".into(),
            password: "pw".into(),
            ..Credentials::default()
        }
    }

    #[test]
    fn settings_are_checked_without_a_network_call() {
        assert!(OpenStack::new(&account(&[("project", "demo")], password())).is_ok());
        let e = OpenStack::new(&account(&[], password())).expect_err("no project");
        assert!(e.message.starts_with("project:"), "{}", e.message);
        let e = OpenStack::new(&account(
            &[("project", "demo"), ("flavour", "x")],
            password(),
        ))
        .expect_err("typo");
        assert!(e.message.contains("\"flavour\""), "{}", e.message);
        let e = OpenStack::new(&account(
            &[("project", "demo"), ("anti_affinity", "maybe")],
            password(),
        ))
        .expect_err("bool");
        assert!(e.message.starts_with("anti_affinity:"), "{}", e.message);
        let app = Credentials {
            application_credential_id: "id".into(),
            application_credential_secret: "s".into(),
            ..Credentials::default()
        };
        assert!(OpenStack::new(&account(&[], app)).is_ok());
        let mut bad = account(&[("project", "demo")], password());
        bad.endpoint = "keystone:5000".into();
        assert_eq!(
            OpenStack::new(&bad).expect_err("url").kind,
            ErrorKind::Invalid
        );
    }

    #[test]
    fn tags_fit_novas_limit() {
        let spec = MachineSpec {
            name: "c-w-0-abc".into(),
            cluster_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            pool: "p".repeat(63),
            role: NodeRole::Worker,
            size: MachineSize {
                cpus: 1,
                memory_mib: 1024,
                disk_gib: 10,
            },
            image: ImageRef {
                id: "i".into(),
                name: "i".into(),
            },
            bootstrap: crate::providers::Bootstrap {
                user_data: String::new(),
                meta_data: String::new(),
                network_config: None,
            },
            static_ip: None,
        };
        assert_eq!(
            machine_tags(&spec),
            vec![
                "palisade-cluster=0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_string(),
                "palisade-role=worker".to_string()
            ]
        );
    }

    #[test]
    fn anti_affinity_is_hard_soft_or_off() {
        assert_eq!(
            parse_anti_affinity("true").expect("true"),
            Some("anti-affinity")
        );
        assert_eq!(
            parse_anti_affinity("Hard").expect("hard"),
            Some("anti-affinity")
        );
        assert_eq!(
            parse_anti_affinity("soft").expect("soft"),
            Some("soft-anti-affinity")
        );
        assert_eq!(parse_anti_affinity("").expect("unset"), None);
        assert_eq!(parse_anti_affinity("false").expect("false"), None);
        let e = parse_anti_affinity("sometimes").expect_err("bad");
        assert!(e.message.contains("soft"), "{}", e.message);
    }

    #[test]
    fn sha256_must_be_lowercase_hex() {
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256("abc").is_err());
    }
}
