//! The bare-metal provider: a pool of physical servers known by their Redfish BMCs. It
//! inventories them (CPU, memory, NICs), claims and releases them, drives power and the
//! one-time boot override, and boots them from virtual media: the OS installer ISO in a CD
//! slot and a per-machine cloud-init NoCloud seed (an ISO 9660 image labelled `cidata`, written
//! by [`iso`]) in a second slot. The seed is published through the caller's
//! [`MediaHost`](crate::providers::MediaHost), because a BMC downloads what it mounts.
//!
//! Only `providers::connect` builds it; the orchestrator, installer and gateway call it through
//! the [`Provider`] trait.
//!
//! # Account
//! - `endpoint`: a Redfish service root (`https://bmc/` or `https://bmc/redfish/v1/`).
//! - `credentials`: HTTP Basic `username` / `password`, the same on every BMC of the pool.
//! - `ca_bundle`: the BMCs' CA, or their self-signed certificates (pinned).
//!
//! # Placement keys
//! - `systems` (optional): comma-separated system ids, names or UUIDs restricting the pool;
//!   absent = every system the BMCs list.
//! - `bmcs` (optional): comma-separated base URLs of further BMCs with the same credentials
//!   (real servers each have their own BMC); the pool is the union of all their systems.
//! - `boot_iso` (optional): URL of the OS installer ISO, used when a machine spec's image id
//!   is empty (that is, when the image was not registered through `ensure_image`).
//!
//! # Claims
//! There is no store: a claim lives on the machine, in the BMC, so that a crash loses nothing
//! and every appliance process sees it. It is the seed media itself: the seed slot holds the
//! URL of a file named `palisade_<cluster id>_<pool>_<machine name>_<token>.iso`. A system is
//! *free* when it is powered off and no slot holds any media; it is *claimed* by the cluster
//! and machine its seed name says. Claiming = publish the seed, InsertMedia, read the slot
//! back, and read it again after a short pause: a racing claimant's later insert replaces
//! ours, and the loser sees a foreign name and moves on to the next free system. (Redfish
//! offers no compare-and-set on media; many real BMCs refuse an insert into an occupied
//! slot, which closes the race there.) Releasing = power off, eject every slot, withdraw the
//! seed. `AssetTag` would be the natural place, but sushy-tools does not keep it (its PATCH
//! takes only `Boot` and `IndicatorLED`) and real BMCs cap it at 32-48 characters.
//!
//! # Machine ids
//! A machine's id is the absolute URL of its ComputerSystem resource
//! (`https://bmc/redfish/v1/Systems/1`), unique across BMCs whose system ids repeat.

pub mod iso;
pub mod redfish;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;

use self::redfish::{Bmc, MediaSlot, SystemInfo};
use super::{
    http, Account, AccountCheck, Bootstrap, Context, ErrorKind, ImageFormat, ImageLocation,
    ImageRef, Machine, MachineRef, MachineSpec, MachineState, MediaHost, OsImage, PlacementChoice,
    PowerOp, Provider, ProviderError,
};

/// Prefix of every seed media name; what marks a claim.
const CLAIM_PREFIX: &str = "palisade_";
/// How long a power change may take before the call gives up (sushy: 1-11 s; servers: POST).
const POWER_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause before the second read-back of a fresh claim.
const CLAIM_SETTLE: Duration = Duration::from_millis(500);
/// Requests in flight per scan.
const PARALLEL: usize = 8;
/// Most systems one account may hold (bounds every scan).
const MAX_SYSTEMS: usize = 2000;

/// The bare-metal provider of one account.
pub struct Baremetal {
    bmcs: Vec<Bmc>,
    /// Entries of the `systems` placement key (empty: every system).
    filter: Vec<String>,
    boot_iso: Option<String>,
    user: String,
    media: Option<Arc<dyn MediaHost>>,
}

/// Who claimed a system, read from (or written into) its seed media name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    cluster_id: String,
    pool: String,
    machine: String,
    token: String,
}

impl Claim {
    /// The file name the seed is published under.
    fn media_name(&self) -> String {
        format!(
            "{CLAIM_PREFIX}{}_{}_{}_{}.iso",
            self.cluster_id, self.pool, self.machine, self.token
        )
    }

    /// The claim encoded in a media URL, if it is one of ours.
    fn from_image(url: &str) -> Option<Claim> {
        let path = url.split(['?', '#']).next()?;
        let file = path.rsplit('/').next()?;
        let rest = file.strip_prefix(CLAIM_PREFIX)?.strip_suffix(".iso")?;
        let parts: Vec<&str> = rest.split('_').collect();
        let [cluster_id, pool, machine, token] = parts.as_slice() else {
            return None;
        };
        if [cluster_id, pool, machine, token]
            .iter()
            .any(|p| !is_field(p))
        {
            return None;
        }
        Some(Claim {
            cluster_id: cluster_id.to_string(),
            pool: pool.to_string(),
            machine: machine.to_string(),
            token: token.to_string(),
        })
    }

    fn is(&self, cluster_id: &str, machine: &str) -> bool {
        self.cluster_id == cluster_id && self.machine == machine
    }
}

/// A claim field: letters, digits and '-' (so that '_' separates fields unambiguously).
fn is_field(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One system of the pool as last read.
#[derive(Debug, Clone)]
struct Node {
    bmc: usize,
    system: SystemInfo,
    slots: Vec<MediaSlot>,
    claim: Option<Claim>,
}

impl Node {
    fn label(&self) -> &str {
        if self.system.name.is_empty() || self.system.name == "System" {
            &self.system.id
        } else {
            &self.system.name
        }
    }
    /// Index of the slot holding the claim.
    fn claim_slot(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.current().and_then(Claim::from_image).is_some())
    }
    fn has_media(&self) -> bool {
        self.slots.iter().any(|s| s.current().is_some())
    }
}

/// Which slot takes the installer (a CD/DVD slot) and which the seed (a USB stick/floppy slot,
/// else a second CD slot).
fn pick_slots(slots: &[MediaSlot]) -> Result<(usize, usize), String> {
    let os = slots.iter().position(MediaSlot::is_cd).ok_or_else(|| {
        format!(
            "has no CD/DVD virtual media slot (slots: {}); enable virtual media on the BMC (it may need a license)",
            slot_list(slots)
        )
    })?;
    let seed = slots
        .iter()
        .enumerate()
        .position(|(i, s)| i != os && s.is_removable())
        .or_else(|| slots.iter().enumerate().position(|(i, s)| i != os && s.is_cd()))
        .ok_or_else(|| {
            format!(
                "has only one usable virtual media slot ({}); Palisade needs two, one for the installer ISO and one for the cloud-init seed: enable the BMC's virtual USB/removable-disk device",
                slot_list(slots)
            )
        })?;
    Ok((os, seed))
}

fn slot_list(slots: &[MediaSlot]) -> String {
    if slots.is_empty() {
        return "none".into();
    }
    slots
        .iter()
        .map(|s| format!("{} ({})", s.id, s.media_types.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Split a comma-separated placement value.
fn list(v: Option<&String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// The NoCloud seed image of a machine.
pub fn seed_iso(bootstrap: &Bootstrap, unix_time: i64) -> Result<Vec<u8>, ProviderError> {
    let mut files = vec![
        iso::IsoFile {
            name: "user-data",
            data: bootstrap.user_data.as_bytes(),
        },
        iso::IsoFile {
            name: "meta-data",
            data: bootstrap.meta_data.as_bytes(),
        },
    ];
    if let Some(net) = &bootstrap.network_config {
        files.push(iso::IsoFile {
            name: "network-config",
            data: net.as_bytes(),
        });
    }
    iso::build("cidata", &files, unix_time).map_err(|e| {
        ProviderError::invalid("bootstrap", format!("cannot build the seed image: {e}"))
    })
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn random_token() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl Baremetal {
    /// Build the provider from an account; checks settings that need no network call.
    pub fn new(account: &Account, ctx: &Context) -> Result<Baremetal, ProviderError> {
        let c = &account.credentials;
        if c.username.is_empty() != c.password.is_empty() {
            return Err(ProviderError::invalid(
                "credentials",
                "give both username and password of the BMCs",
            ));
        }
        let mut bmcs = vec![Bmc::new(
            "endpoint",
            &account.endpoint,
            &c.username,
            &c.password,
            &account.ca_bundle,
        )?];
        for url in list(account.placement.get("bmcs")) {
            let bmc = Bmc::new(
                "placement.bmcs",
                &url,
                &c.username,
                &c.password,
                &account.ca_bundle,
            )?;
            if !bmcs
                .iter()
                .any(|b| b.origin.eq_ignore_ascii_case(&bmc.origin))
            {
                bmcs.push(bmc);
            }
        }
        let boot_iso = account
            .placement
            .get("boot_iso")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        if let Some(u) = &boot_iso {
            if redfish::origin_of(u).is_none() {
                return Err(ProviderError::invalid(
                    "placement.boot_iso",
                    format!("{u:?} is not an http(s) URL of an ISO"),
                ));
            }
        }
        for k in account.placement.keys() {
            if !matches!(k.as_str(), "systems" | "bmcs" | "boot_iso")
                && !super::ORCHESTRATOR_PLACEMENT_KEYS.contains(&k.as_str())
            {
                return Err(ProviderError::invalid(
                    &format!("placement.{k}"),
                    "is not a bare-metal placement key (known: systems, bmcs, boot_iso)",
                ));
            }
        }
        Ok(Baremetal {
            bmcs,
            filter: list(account.placement.get("systems")),
            boot_iso,
            user: c.username.clone(),
            media: ctx.media.clone(),
        })
    }

    fn media(&self) -> Result<&Arc<dyn MediaHost>, ProviderError> {
        self.media.as_ref().ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Invalid,
                "the bare-metal provider needs a media host to publish boot media; this caller did not lend one",
            )
        })
    }

    fn in_filter(&self, s: &SystemInfo) -> bool {
        self.filter.is_empty()
            || self.filter.iter().any(|f| {
                *f == s.id
                    || *f == s.name
                    || (!s.uuid.is_empty() && f.eq_ignore_ascii_case(&s.uuid))
            })
    }

    fn node_id(&self, n: &Node) -> String {
        format!("{}{}", self.bmcs[n.bmc].origin, n.system.path)
    }

    /// Links of every system of one BMC.
    async fn system_links(&self, bmc: &Bmc) -> Result<Vec<String>, ProviderError> {
        let root = bmc.service_root().await?;
        let systems = redfish::link(&root["Systems"]).ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Protocol,
                format!(
                    "{}: the Redfish service root has no Systems collection",
                    bmc.origin
                ),
            )
        })?;
        let coll = bmc.get(&systems).await?;
        let mut links = redfish::members(&coll);
        links.truncate(MAX_SYSTEMS);
        Ok(links)
    }

    /// The VirtualMedia slots of a system: the System's own collection (sushy-tools, newer
    /// BMCs) or, when absent, its Manager's (iDRAC, iLO).
    async fn read_slots(&self, bmc: &Bmc, s: &SystemInfo) -> Result<Vec<MediaSlot>, ProviderError> {
        let mut coll = s.virtual_media.clone();
        if coll.is_none() {
            for m in s.managed_by.iter().take(4) {
                let manager = bmc.get(m).await?;
                if let Some(l) = redfish::link(&manager["VirtualMedia"]) {
                    coll = Some(l);
                    break;
                }
            }
        }
        let Some(coll) = coll else {
            return Ok(Vec::new());
        };
        let coll = match bmc.get(&coll).await {
            Ok(v) => v,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut slots = Vec::new();
        for m in redfish::members(&coll).iter().take(16) {
            let v = bmc.get(m).await?;
            let slot = redfish::parse_media(&v).map_err(|e| {
                ProviderError::new(ErrorKind::Protocol, format!("{}: {m}: {e}", bmc.origin))
            })?;
            slots.push(slot);
        }
        Ok(slots)
    }

    async fn read_node(&self, bmc_idx: usize, link: &str) -> Result<Node, ProviderError> {
        let bmc = &self.bmcs[bmc_idx];
        let v = bmc.get(link).await?;
        let system = redfish::parse_system(&v).map_err(|e| {
            ProviderError::new(ErrorKind::Protocol, format!("{}: {link}: {e}", bmc.origin))
        })?;
        let slots = self.read_slots(bmc, &system).await?;
        let claim = slots
            .iter()
            .find_map(|s| s.current().and_then(Claim::from_image));
        Ok(Node {
            bmc: bmc_idx,
            system,
            slots,
            claim,
        })
    }

    /// Every system of every BMC, with its slots and claim (unfiltered).
    async fn scan_all(&self) -> Result<Vec<Node>, ProviderError> {
        let mut links = Vec::new();
        for (i, bmc) in self.bmcs.iter().enumerate() {
            for l in self.system_links(bmc).await? {
                links.push((i, l));
            }
        }
        let results: Vec<Result<Node, ProviderError>> = futures_util::stream::iter(links)
            .map(|(i, l)| async move { self.read_node(i, &l).await })
            .buffered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// The systems of the pool (after the `systems` filter).
    async fn scan(&self) -> Result<Vec<Node>, ProviderError> {
        let mut nodes = self.scan_all().await?;
        nodes.retain(|n| self.in_filter(&n.system));
        Ok(nodes)
    }

    /// Read one system by machine id; `None` when the id is not in this pool or is gone.
    async fn node_by_id(&self, id: &str) -> Result<Option<Node>, ProviderError> {
        let Some(origin) = redfish::origin_of(id) else {
            return Ok(None);
        };
        let Some(bmc) = self
            .bmcs
            .iter()
            .position(|b| b.origin.eq_ignore_ascii_case(&origin))
        else {
            return Ok(None);
        };
        let path = &id[origin.len()..];
        if !path.starts_with("/redfish/") {
            return Ok(None);
        }
        match self.read_node(bmc, path).await {
            Ok(n) if self.in_filter(&n.system) => Ok(Some(n)),
            Ok(_) => Ok(None),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn reread(&self, n: &Node) -> Result<Node, ProviderError> {
        self.read_node(n.bmc, &n.system.path).await
    }

    fn machine_of(&self, n: &Node, claim: &Claim, state: MachineState) -> Machine {
        Machine {
            id: self.node_id(n),
            name: claim.machine.clone(),
            cluster_id: claim.cluster_id.clone(),
            pool: claim.pool.clone(),
            state,
            addresses: Vec::new(),
        }
    }

    async fn reset(&self, n: &Node, kind: &str) -> Result<(), ProviderError> {
        let bmc = &self.bmcs[n.bmc];
        // Some BMCs list only ForceOn, or only On.
        let kind = if !n.system.reset_types.is_empty()
            && !n.system.reset_types.iter().any(|t| t == kind)
        {
            match kind {
                "On" if n.system.reset_types.iter().any(|t| t == "ForceOn") => "ForceOn",
                "ForceRestart" if n.system.reset_types.iter().any(|t| t == "PowerCycle") => {
                    "PowerCycle"
                }
                k => k,
            }
        } else {
            kind
        };
        bmc.action(&n.system.reset_target, &json!({ "ResetType": kind }))
            .await
    }

    /// Poll until the system reports `target` (bounded by [`POWER_TIMEOUT`]).
    async fn wait_power(&self, n: &Node, target: &str) -> Result<(), ProviderError> {
        let bmc = &self.bmcs[n.bmc];
        let deadline = Instant::now() + POWER_TIMEOUT;
        for _ in 0..(POWER_TIMEOUT.as_millis() / 500 + 1) {
            let v = bmc.get(&n.system.path).await?;
            if v["PowerState"].as_str() == Some(target) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(ProviderError::transient(format!(
            "system {} on {} did not reach PowerState {target} within {} s; try again later",
            n.label(),
            bmc.origin,
            POWER_TIMEOUT.as_secs()
        )))
    }

    async fn insert(&self, n: &Node, slot: &MediaSlot, url: &str) -> Result<(), ProviderError> {
        self.bmcs[n.bmc]
            .insert_media(
                &slot.insert_target,
                &json!({"Image": url, "Inserted": true, "WriteProtected": true}),
            )
            .await
    }

    async fn eject(&self, n: &Node, slot: &MediaSlot) -> Result<(), ProviderError> {
        self.bmcs[n.bmc]
            .action(&slot.eject_target, &json!({}))
            .await
    }

    /// Publish the seed of `spec` under the claim's name and return its URL.
    async fn publish_seed(
        &self,
        claim: &Claim,
        spec: &MachineSpec,
    ) -> Result<String, ProviderError> {
        let media = self.media()?;
        let name = claim.media_name();
        let url = media
            .publish(&name, seed_iso(&spec.bootstrap, now_unix())?)
            .await?;
        // The claim is read back from the URL's file name, so the host must keep it there.
        if Claim::from_image(&url).as_ref() != Some(claim) {
            let _ = media.withdraw(&name).await;
            return Err(ProviderError::new(
                ErrorKind::Protocol,
                format!("the media host served {name} at {url}, which does not end with that name; the bare-metal provider reads claims back from it"),
            ));
        }
        Ok(url)
    }

    /// Try to claim a free system for `spec`. `None`: another claimant won it.
    async fn claim(
        &self,
        n: &Node,
        spec: &MachineSpec,
    ) -> Result<Option<(Node, Claim)>, ProviderError> {
        let (_, seed) = pick_slots(&n.slots).map_err(|e| ProviderError::invalid("systems", e))?;
        let claim = Claim {
            cluster_id: spec.cluster_id.clone(),
            pool: spec.pool.clone(),
            machine: spec.name.clone(),
            token: random_token(),
        };
        let name = claim.media_name();
        let media = self.media()?;
        let url = self.publish_seed(&claim, spec).await?;
        // Look again right before inserting: the scan may be seconds old, and the shorter the
        // gap between this read and the insert, the surer a racing claim shows up below.
        let before = self.reread(n).await?;
        if before.claim.is_some() || before.has_media() || before.system.power_state != "Off" {
            let _ = media.withdraw(&name).await;
            return Ok(None);
        }
        if let Err(e) = self.insert(n, &n.slots[seed], &url).await {
            let _ = media.withdraw(&name).await;
            // An occupied slot answers 4xx on many BMCs: someone was faster.
            let now = self.reread(n).await?;
            if now.claim.is_some() {
                return Ok(None);
            }
            return Err(e);
        }
        // Read back at once, then again after a pause: a racing claimant's insert that
        // landed after ours shows up in one of the two reads.
        let mut now = self.reread(n).await?;
        if now.claim.as_ref() == Some(&claim) {
            tokio::time::sleep(CLAIM_SETTLE).await;
            now = self.reread(n).await?;
        }
        if now.claim.as_ref() != Some(&claim) {
            let _ = media.withdraw(&name).await;
            return Ok(None);
        }
        Ok(Some((now, claim)))
    }

    /// Bring a claimed system to "installer and seed inserted, booting": idempotent.
    async fn boot(
        &self,
        n: Node,
        claim: &Claim,
        spec: &MachineSpec,
        os_url: &str,
        fresh: bool,
    ) -> Result<Machine, ProviderError> {
        let (os, seed) = pick_slots(&n.slots).map_err(|e| ProviderError::invalid("systems", e))?;
        if !fresh {
            // The media host may have restarted since the claim; serve the seed again (same
            // name, so the slot's URL stays valid).
            self.publish_seed(claim, spec).await?;
        }
        let claim_slot = n.claim_slot().unwrap_or(seed);
        let os = if os == claim_slot { seed } else { os };
        let slot = &n.slots[os];
        // The installer is inserted right before the first boot; finding it missing means
        // that boot never happened (a crash in between), so it is the first boot still.
        let mut first_boot = fresh;
        if slot.current() != Some(os_url) {
            if slot.current().is_some() {
                self.eject(&n, slot).await?;
            }
            self.insert(&n, slot, os_url).await?;
            first_boot = true;
        }
        let state = match n.system.power_state.as_str() {
            "On" => MachineState::Running,
            "PoweringOn" => MachineState::Provisioning,
            _ => {
                // Only the first boot is forced onto the installer: a machine found powered
                // off later (by an operator, or `power(off)`) boots in its own boot order,
                // which reaches the installed disk instead of installing again.
                if first_boot {
                    self.bmcs[n.bmc]
                        .patch(
                            &n.system.path,
                            &json!({"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}),
                        )
                        .await?;
                }
                self.reset(&n, "On").await?;
                MachineState::Provisioning
            }
        };
        Ok(self.machine_of(&n, claim, state))
    }

    /// Which OS ISO a spec boots.
    fn os_url<'a>(&'a self, spec: &'a MachineSpec) -> Result<&'a str, ProviderError> {
        if !spec.image.id.trim().is_empty() {
            return Ok(spec.image.id.trim());
        }
        self.boot_iso.as_deref().ok_or_else(|| {
            ProviderError::invalid(
                "image",
                "no installer ISO: register one with ensure_image or set the account's placement key boot_iso",
            )
        })
    }

    /// MAC addresses of a system's EthernetInterfaces (for inventory labels).
    async fn macs(&self, n: &Node) -> Vec<String> {
        let bmc = &self.bmcs[n.bmc];
        let Some(l) = &n.system.ethernet else {
            return Vec::new();
        };
        let Ok(coll) = bmc.get(l).await else {
            return Vec::new();
        };
        let mut macs = Vec::new();
        for m in redfish::members(&coll).iter().take(16) {
            if let Ok(v) = bmc.get(m).await {
                if let Some(mac) = v["MACAddress"]
                    .as_str()
                    .or(v["PermanentMACAddress"].as_str())
                {
                    macs.push(mac.to_ascii_lowercase());
                }
            }
        }
        macs
    }
}

fn state_of(power: &str) -> MachineState {
    match power {
        "On" => MachineState::Running,
        "PoweringOn" => MachineState::Provisioning,
        _ => MachineState::Off,
    }
}

fn inventory(s: &SystemInfo) -> String {
    let cpus = s
        .cpus
        .map(|c| format!("{c} CPUs"))
        .unwrap_or_else(|| "CPUs unknown".into());
    let mem = s
        .memory_mib
        .map(|m| format!("{} GiB", m / 1024))
        .unwrap_or_else(|| "memory unknown".into());
    format!("{cpus}, {mem}")
}

/// Check that an ISO URL answers (HEAD, else a one-byte range GET).
async fn check_url(url: &str, ca_pem: &str) -> Result<(), ProviderError> {
    let client = http::client(ca_pem, Duration::from_secs(30))?;
    let origin = redfish::origin_of(url)
        .ok_or_else(|| ProviderError::invalid("image", format!("{url:?} is not an http(s) URL")))?;
    let head = client
        .head(url)
        .send()
        .await
        .map_err(|e| http::transport_error(&origin, &e))?;
    if head.status().is_success() {
        return Ok(());
    }
    let get = client
        .get(url)
        .header("Range", "bytes=0-0")
        .send()
        .await
        .map_err(|e| http::transport_error(&origin, &e))?;
    let status = get.status();
    drop(get);
    if status.is_success() {
        return Ok(());
    }
    Err(ProviderError::not_found(format!(
        "the ISO {url} answers {status}; check the URL (the BMCs download it from there)"
    )))
}

#[async_trait::async_trait]
impl Provider for Baremetal {
    async fn validate(&self) -> Result<AccountCheck, ProviderError> {
        let mut checks = Vec::new();
        let mut product = String::new();
        for bmc in &self.bmcs {
            let root = bmc.service_root().await?;
            if product.is_empty() {
                let version = root["RedfishVersion"].as_str().unwrap_or("?");
                let name = root["Product"]
                    .as_str()
                    .or(root["Name"].as_str())
                    .unwrap_or("Redfish service");
                let vendor = root["Vendor"]
                    .as_str()
                    .map(|v| format!("{v} "))
                    .unwrap_or_default();
                product = format!("{vendor}{name}, Redfish {version}");
            }
            // The collection needs credentials; a wrong password fails here with Credentials.
            self.system_links(bmc).await?;
            checks.push(format!("login as {} on {}", self.user, bmc.origin));
        }
        let all = self.scan_all().await?;
        for f in &self.filter {
            let found = all.iter().any(|n| {
                *f == n.system.id || *f == n.system.name || f.eq_ignore_ascii_case(&n.system.uuid)
            });
            if !found {
                let names: Vec<String> = all
                    .iter()
                    .map(|n| format!("{} ({})", n.system.name, n.system.id))
                    .collect();
                return Err(ProviderError::not_found(format!(
                    "placement.systems: no system {f:?} on the pool's BMCs; they list: {}",
                    if names.is_empty() {
                        "nothing".into()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
        let pool: Vec<&Node> = all.iter().filter(|n| self.in_filter(&n.system)).collect();
        if pool.is_empty() {
            return Err(ProviderError::not_found(
                "the BMCs list no ComputerSystem; check the endpoint and the BMC user's rights",
            ));
        }
        let names: Vec<&str> = pool.iter().map(|n| n.label()).collect();
        checks.push(format!(
            "{} systems in the pool: {}",
            pool.len(),
            names.join(", ")
        ));
        let mut slots_seen = String::new();
        for n in &pool {
            let (os, seed) = pick_slots(&n.slots).map_err(|e| {
                ProviderError::invalid(
                    "systems",
                    format!("system {} on {} {e}", n.label(), self.bmcs[n.bmc].origin),
                )
            })?;
            if slots_seen.is_empty() {
                slots_seen = format!(
                    "virtual media on every system: installer in {}, seed in {}",
                    n.slots[os].id, n.slots[seed].id
                );
            }
        }
        checks.push(slots_seen);
        let claimed = pool.iter().filter(|n| n.claim.is_some()).count();
        checks.push(format!(
            "{claimed} claimed, {} unclaimed",
            pool.len() - claimed
        ));
        if let Some(u) = &self.boot_iso {
            check_url(u, "").await?;
            checks.push(format!("boot_iso {u} answers"));
        }
        Ok(AccountCheck {
            endpoint_product: product,
            checks,
        })
    }

    async fn placements(&self) -> Result<Vec<PlacementChoice>, ProviderError> {
        let nodes = self.scan_all().await?;
        let mut out = Vec::with_capacity(nodes.len());
        for n in &nodes {
            let status = match &n.claim {
                Some(c) => format!("claimed by cluster {} as {}", c.cluster_id, c.machine),
                None if n.has_media() || n.system.power_state != "Off" => {
                    format!(
                        "in use (power {}, media inserted: {})",
                        n.system.power_state,
                        n.has_media()
                    )
                }
                None => "free".into(),
            };
            let macs = self.macs(n).await;
            out.push(PlacementChoice {
                key: "systems".into(),
                value: if n.system.name.is_empty() || n.system.name == "System" {
                    n.system.id.clone()
                } else {
                    n.system.name.clone()
                },
                label: format!(
                    "{} ({}): {status}; {}; NICs {}",
                    n.label(),
                    self.bmcs[n.bmc].origin,
                    inventory(&n.system),
                    if macs.is_empty() {
                        "unknown".into()
                    } else {
                        macs.join(" ")
                    }
                ),
            });
        }
        Ok(out)
    }

    async fn ensure_image(&self, image: &OsImage) -> Result<ImageRef, ProviderError> {
        if image.format != ImageFormat::Iso {
            return Err(ProviderError::invalid(
                "image",
                format!(
                    "{} is a {:?} image; bare-metal machines boot an installer ISO",
                    image.name, image.format
                ),
            ));
        }
        match &image.location {
            ImageLocation::Url { url, ca_pem } => {
                check_url(url, ca_pem).await?;
                Ok(ImageRef {
                    id: url.clone(),
                    name: image.name.clone(),
                })
            }
            ImageLocation::Existing => {
                let url = self.boot_iso.clone().ok_or_else(|| {
                    ProviderError::not_found(format!(
                        "no installer ISO for image {}: name a bundle artifact as image.iso in the os layer, or set boot_iso on the cloud account",
                        image.name
                    ))
                })?;
                check_url(&url, "").await?;
                Ok(ImageRef {
                    id: url,
                    name: image.name.clone(),
                })
            }
            ImageLocation::File(path) => {
                let clean: String = image
                    .name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .take(64)
                    .collect();
                let digest: String = image
                    .sha256
                    .chars()
                    .filter(char::is_ascii_hexdigit)
                    .take(12)
                    .collect();
                // Never starts with the claim prefix, so an installer is never taken for a claim.
                let name = format!("image-{clean}-{digest}.iso");
                let url = self.media()?.publish_file(&name, path).await?;
                Ok(ImageRef {
                    id: url,
                    name: image.name.clone(),
                })
            }
        }
    }

    async fn ensure_machine(&self, spec: &MachineSpec) -> Result<Machine, ProviderError> {
        for (field, v) in [
            ("cluster_id", &spec.cluster_id),
            ("pool", &spec.pool),
            ("name", &spec.name),
        ] {
            if !is_field(v) {
                return Err(ProviderError::invalid(
                    field,
                    format!("{v:?} must be 1 to 64 letters, digits or '-'"),
                ));
            }
        }
        self.media()?;
        let os_url = self.os_url(spec)?.to_string();
        let nodes = self.scan().await?;
        if let Some(n) = nodes.iter().find(|n| {
            n.claim
                .as_ref()
                .is_some_and(|c| c.is(&spec.cluster_id, &spec.name))
        }) {
            let claim = n
                .claim
                .clone()
                .ok_or_else(|| ProviderError::transient("claim vanished"))?;
            return self.boot(n.clone(), &claim, spec, &os_url, false).await;
        }
        let want_mib = u64::from(spec.size.memory_mib);
        let (mut claimed, mut busy, mut small, mut no_slots) = (0, 0, 0, 0);
        let mut candidates = Vec::new();
        for n in &nodes {
            if n.claim.is_some() {
                claimed += 1;
            } else if n.has_media() || n.system.power_state != "Off" {
                busy += 1;
            } else if pick_slots(&n.slots).is_err() {
                no_slots += 1;
            } else if n.system.cpus.is_some_and(|c| c < spec.size.cpus)
                || n.system.memory_mib.is_some_and(|m| m < want_mib)
            {
                small += 1;
            } else {
                candidates.push(n);
            }
        }
        for n in candidates {
            if let Some((node, claim)) = self.claim(n, spec).await? {
                return self.boot(node, &claim, spec, &os_url, true).await;
            }
            claimed += 1;
        }
        Err(ProviderError::new(
            ErrorKind::Capacity,
            format!(
                "no free machine for {} ({} CPUs, {} MiB): the pool has {} systems, {claimed} claimed, {busy} powered on or holding media without a claim, {small} too small, {no_slots} without two virtual media slots; release a machine or add systems to the account",
                spec.name,
                spec.size.cpus,
                spec.size.memory_mib,
                nodes.len()
            ),
        ))
    }

    async fn machine(&self, id: &MachineRef) -> Result<Option<Machine>, ProviderError> {
        let Some(n) = self.node_by_id(&id.id).await? else {
            return Ok(None);
        };
        Ok(match &n.claim {
            Some(c) if c.machine == id.name => {
                Some(self.machine_of(&n, c, state_of(&n.system.power_state)))
            }
            _ => None,
        })
    }

    async fn power(&self, id: &MachineRef, op: PowerOp) -> Result<(), ProviderError> {
        let n = match self.node_by_id(&id.id).await? {
            Some(n) if n.claim.as_ref().is_some_and(|c| c.machine == id.name) => n,
            _ => {
                return Err(ProviderError::not_found(format!(
                    "machine {} ({}) is not claimed in this pool",
                    id.name, id.id
                )))
            }
        };
        let on = n.system.power_state == "On" || n.system.power_state == "PoweringOn";
        match (op, on) {
            (PowerOp::On, false) => self.reset(&n, "On").await,
            (PowerOp::Off, true) => self.reset(&n, "ForceOff").await,
            (PowerOp::Reset, true) => self.reset(&n, "ForceRestart").await,
            (PowerOp::Reset, false) => self.reset(&n, "On").await,
            _ => Ok(()),
        }
    }

    async fn delete_machine(&self, id: &MachineRef) -> Result<(), ProviderError> {
        let Some(n) = self.node_by_id(&id.id).await? else {
            return Ok(());
        };
        let Some(claim) = n.claim.clone().filter(|c| c.machine == id.name) else {
            return Ok(());
        };
        if n.system.power_state != "Off" {
            self.reset(&n, "ForceOff").await?;
            self.wait_power(&n, "Off").await?;
        }
        let claim_slot = n.claim_slot();
        for (i, slot) in n.slots.iter().enumerate() {
            if Some(i) != claim_slot && slot.current().is_some() {
                self.eject(&n, slot).await?;
            }
        }
        self.media()?.withdraw(&claim.media_name()).await?;
        // Last: ejecting the seed is what releases the claim.
        if let Some(i) = claim_slot {
            self.eject(&n, &n.slots[i]).await?;
        }
        Ok(())
    }

    async fn machines(&self, cluster_id: &str) -> Result<Vec<Machine>, ProviderError> {
        let nodes = self.scan().await?;
        let mut out: Vec<Machine> = nodes
            .iter()
            .filter_map(|n| {
                let c = n.claim.as_ref()?;
                (c.cluster_id == cluster_id)
                    .then(|| self.machine_of(n, c, state_of(&n.system.power_state)))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn slot(id: &str, types: &[&str], image: &str) -> MediaSlot {
        MediaSlot {
            path: format!("/m/{id}"),
            id: id.into(),
            media_types: types.iter().map(|s| s.to_string()).collect(),
            image: image.into(),
            inserted: !image.is_empty(),
            insert_target: String::new(),
            eject_target: String::new(),
        }
    }

    #[test]
    fn claims_round_trip_through_the_media_url() {
        let c = Claim {
            cluster_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            pool: "workers".into(),
            machine: "prod-workers-2-0193a1".into(),
            token: "00ff".into(),
        };
        let url = format!("https://appliance:8443/v1/media/{}", c.media_name());
        assert_eq!(Claim::from_image(&url), Some(c.clone()));
        assert_eq!(Claim::from_image(&format!("{url}?x=1")), Some(c));
        for other in [
            "http://h/boot.iso",
            "http://h/palisade_a_b_c.iso",
            "http://h/palisade_a_b_c_d_e.iso",
            "http://h/palisade_a_b_c_d.img",
            "http://h/image-palisade_a_b_c_d.iso",
            "",
        ] {
            assert_eq!(Claim::from_image(other), None, "{other}");
        }
    }

    #[test]
    fn installer_goes_to_a_cd_and_the_seed_to_a_removable_slot() {
        let sushy = [
            slot("Cd", &["CD", "DVD"], ""),
            slot("Floppy", &["Floppy", "USBStick"], ""),
        ];
        assert_eq!(pick_slots(&sushy), Ok((0, 1)));
        let ilo = [
            slot("1", &["Floppy", "USBStick"], ""),
            slot("2", &["CD", "DVD"], ""),
        ];
        assert_eq!(pick_slots(&ilo), Ok((1, 0)));
        let two_cds = [slot("CD1", &["CD"], ""), slot("CD2", &["DVD"], "")];
        assert_eq!(pick_slots(&two_cds), Ok((0, 1)));
        let one = [slot("CD", &["CD", "DVD"], "")];
        let e = pick_slots(&one).expect_err("one slot");
        assert!(e.contains("only one usable virtual media slot"), "{e}");
        assert!(pick_slots(&[]).expect_err("none").contains("no CD/DVD"));
    }

    #[test]
    fn placement_keys_are_checked_without_network() {
        let mut placement = BTreeMap::new();
        placement.insert("systems".to_string(), "node-0, node-1".to_string());
        placement.insert(
            "bmcs".to_string(),
            "http://127.0.0.1:1/,http://127.0.0.1:2".to_string(),
        );
        let mut account = Account {
            kind: crate::model::CloudKind::Baremetal,
            endpoint: "http://127.0.0.1:1/redfish/v1/".into(),
            ca_bundle: String::new(),
            credentials: crate::model::Credentials {
                username: "admin".into(),
                password: "pw".into(),
                ..Default::default()
            },
            placement: placement.clone(),
        };
        let p = Baremetal::new(&account, &Context::default()).expect("provider");
        assert_eq!(p.bmcs.len(), 2, "the endpoint's BMC is not added twice");
        assert_eq!(p.filter, ["node-0", "node-1"]);
        account.placement.insert("datastore".into(), "x".into());
        let e = Baremetal::new(&account, &Context::default())
            .err()
            .expect("unknown key");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("placement.datastore"), "{}", e.message);
        account.placement = placement;
        account
            .placement
            .insert("boot_iso".into(), "not a url".into());
        assert!(Baremetal::new(&account, &Context::default()).is_err());
    }

    #[test]
    fn seed_image_holds_the_three_documents() {
        let b = Bootstrap {
            user_data: "#cloud-config\n".into(),
            meta_data: "instance-id: x\n".into(),
            network_config: Some("version: 2\n".into()),
        };
        let img = seed_iso(&b, 0).expect("seed");
        let t = iso::read::tree(&img, true);
        assert_eq!(t.label, "cidata");
        let names: Vec<&str> = t.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        let b = Bootstrap {
            network_config: None,
            ..b
        };
        assert_eq!(
            iso::read::tree(&seed_iso(&b, 0).expect("seed"), true)
                .files
                .len(),
            2
        );
    }
}
