//! The vSphere provider: machines as VMs cloned from a template on vCenter, through a focused
//! vim25 SOAP client written here (`soap`, `xml`, `props`, `ovf`), since no maintained vSphere
//! crate exists. Only `providers::connect` builds it.
//!
//! # Account
//! `endpoint` is the vCenter (or ESXi) SDK URL, `https://vcenter.example/sdk` (`/sdk` is
//! added when missing). Trust comes from the account's `ca_bundle` (the vCenter's CA, or its
//! own self-signed certificate, pinned). Credentials are a vCenter user and password.
//!
//! # Placement keys
//! Paths are inventory paths relative to the datacenter's folders, `/` separating folders.
//!
//! | key | required | meaning |
//! | --- | --- | --- |
//! | `datacenter` | yes | datacenter name, e.g. `DC0` |
//! | `cluster` or `host` | one of them | cluster (under the host folder), or a standalone host |
//! | `resource_pool` | no | pool path below the cluster's root pool (default: the root pool) |
//! | `datastore` | yes | datastore for the machines' disks and imported templates |
//! | `network` | yes | port group (standard or distributed) every machine's first NIC joins |
//! | `folder` | no | base VM folder (default `palisade`, created when missing; a folder set here must exist) |
//! | `template` | no | an existing template to clone from instead of importing the image |
//! | `ip_pool` | no | static addresses, e.g. `10.20.0.10-10.20.0.60, 10.20.0.70` |
//! | `ip_prefix`, `gateway`, `dns` | with `ip_pool` | prefix length, default gateway, DNS servers (comma-separated) |
//!
//! The orchestrator allocates addresses from the pool ([`ip_pool`], [`IpPoolSettings`]) and
//! passes the result in `MachineSpec::static_ip`.
//!
//! # Tagging and idempotency
//! Each cluster's machines live in `<folder>/<cluster id>` and carry the custom attributes
//! `palisade-cluster`, `palisade-pool` and `palisade-role` (`TAG_*`). `ensure_machine` looks a
//! machine up by name in its cluster's folder before cloning, and repairs what a crash left
//! half done (attributes, size, power). Images are imported under `<name>-importing` and only
//! renamed to their final name once complete and marked as template, so an interrupted import
//! is never mistaken for a finished one.
//!
//! # Bootstrap
//! cloud-init's VMware datasource reads `guestinfo.metadata` / `guestinfo.userdata` (gzip +
//! base64) from the VM's extraConfig; the metadata carries the network config for static
//! addresses (see `guestinfo`).

mod guestinfo;
mod ovf;
mod placement;
mod props;
mod soap;
/// The small XML tree and envelope helpers (public for tests that read vCenter directly).
pub mod xml;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OnceCell};

/// Decoding of guestinfo values and the key holding a machine's static address.
pub use guestinfo::{decode as decode_guestinfo, ADDRESS_KEY};
/// Placement settings and the IP pool the orchestrator allocates from.
pub use placement::{ip_pool, Compute, IpPoolSettings, Placement, DEFAULT_FOLDER};

use self::props::ObjectContent;
use self::soap::{CallError, Client, MoRef};
use self::xml::{escape, text_el, Element};
use super::{
    http, Account, AccountCheck, ErrorKind, ImageFormat, ImageLocation, ImageRef, Machine,
    MachineRef, MachineSpec, MachineState, OsImage, PlacementChoice, PowerOp, Provider,
    ProviderError, TAG_CLUSTER, TAG_POOL, TAG_ROLE,
};
use crate::model::NodeRole;

/// Longest a clone or import task may run.
const LONG_TASK: Duration = Duration::from_secs(3600);
/// Longest a power, reconfigure or destroy task may run.
const SHORT_TASK: Duration = Duration::from_secs(600);
/// Suffix of a template while it is being imported.
const IMPORTING: &str = "-importing";
/// Properties read to describe a machine.
const MACHINE_PROPS: &[&str] = &[
    "name",
    "runtime.powerState",
    "runtime.connectionState",
    "guest.net",
    "guest.ipAddress",
    "customValue",
    "config.extraConfig",
    "config.template",
];
/// Device types that are network cards.
const NIC_TYPES: &[&str] = &[
    "VirtualE1000",
    "VirtualE1000e",
    "VirtualVmxnet",
    "VirtualVmxnet2",
    "VirtualVmxnet3",
    "VirtualVmxnet3Vrdma",
    "VirtualPCNet32",
    "VirtualSriovEthernetCard",
];

/// How a NIC joins the account's network.
#[derive(Debug, Clone)]
enum NetBacking {
    /// A standard port group.
    Standard { name: String, network: MoRef },
    /// A distributed port group.
    Distributed {
        switch_uuid: String,
        portgroup: String,
    },
}

impl NetBacking {
    fn xml(&self) -> String {
        match self {
            NetBacking::Standard { name, network } => format!(
                r#"<backing xsi:type="VirtualEthernetCardNetworkBackingInfo">{}{}</backing>"#,
                text_el("deviceName", name),
                network.xml("network")
            ),
            NetBacking::Distributed {
                switch_uuid,
                portgroup,
            } => format!(
                r#"<backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port>{}{}</port></backing>"#,
                text_el("switchUuid", switch_uuid),
                text_el("portgroupKey", portgroup)
            ),
        }
    }

    fn element(&self) -> Result<Element, ProviderError> {
        let doc = self.xml().replacen(
            "<backing ",
            r#"<backing xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" "#,
            1,
        );
        xml::parse(&doc).map_err(|e| soap::protocol(&format!("building a NIC backing: {e}")))
    }
}

/// The account's placement, resolved to managed objects.
#[derive(Debug, Clone)]
struct Resolved {
    vm_folder: MoRef,
    /// The host the `host` key names, when it is a host inside a cluster.
    host: Option<MoRef>,
    pool: MoRef,
    datastore: MoRef,
    network: MoRef,
    backing: NetBacking,
}

/// Keys of the three custom attributes.
#[derive(Debug, Clone, Copy)]
struct FieldKeys {
    cluster: i32,
    pool: i32,
    role: i32,
}

/// The vSphere [`Provider`].
pub struct VsphereProvider {
    client: Client,
    placement: Placement,
    upload: reqwest::Client,
    resolved: Mutex<Option<Arc<Resolved>>>,
    fields: OnceCell<Option<FieldKeys>>,
    /// Folders found or made: the base folder under "", cluster folders under their id.
    /// Dropped with the placement when a call reports something missing.
    folders: std::sync::Mutex<BTreeMap<String, MoRef>>,
    /// Devices of templates by id (a template does not change while it is one).
    template_devices: std::sync::Mutex<BTreeMap<String, Arc<Vec<Element>>>>,
}

fn role_str(role: NodeRole) -> &'static str {
    match role {
        NodeRole::ControlPlane => "control-plane",
        NodeRole::Worker => "worker",
    }
}

/// The SDK URL of an account endpoint: https only, `/sdk` added when the path is empty.
fn sdk_url(endpoint: &str) -> Result<String, ProviderError> {
    let url = reqwest::Url::parse(endpoint.trim()).map_err(|e| {
        ProviderError::invalid(
            "endpoint",
            format!("{endpoint:?} is not a URL ({e}); use https://vcenter.example/sdk"),
        )
    })?;
    if url.scheme() != "https" {
        return Err(ProviderError::invalid(
            "endpoint",
            format!("{endpoint:?} must use https (vCenter's SDK is served over TLS)"),
        ));
    }
    if url.host_str().is_none() {
        return Err(ProviderError::invalid("endpoint", "has no host"));
    }
    let mut s = url.to_string();
    if url.path() == "/" || url.path().is_empty() {
        s = format!("{}sdk", s.trim_end_matches('/').to_string() + "/");
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// A name that is safe as a VM or folder name and in an inventory path.
fn check_name(what: &str, name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && name.len() <= 80
        && !name.contains(['/', '\\', '%'])
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ProviderError::invalid(
            what,
            format!(
                "{name:?} must be 1 to 80 characters without '/', '\\', '%' or control characters"
            ),
        ))
    }
}

fn not_found(key: &str, value: &str, place: &str, choices: &[String]) -> ProviderError {
    let list = if choices.is_empty() {
        "there are none".to_string()
    } else {
        format!("the choices are: {}", choices.join(", "))
    };
    ProviderError::not_found(format!(
        "vSphere: {key} {value:?} not found {place}; {list}. Set the account's placement key {key} to one of them"
    ))
}

impl VsphereProvider {
    /// Build the provider; checks the settings that need no network call.
    pub fn new(account: &Account) -> Result<VsphereProvider, ProviderError> {
        let sdk = sdk_url(&account.endpoint)?;
        let creds = &account.credentials;
        if creds.username.is_empty() || creds.password.is_empty() {
            return Err(ProviderError::invalid(
                "credentials",
                "a vSphere account needs a username and a password",
            ));
        }
        let placement = Placement::parse(&account.placement)?;
        Ok(VsphereProvider {
            client: Client::new(&sdk, &account.ca_bundle, &creds.username, &creds.password)?,
            placement,
            upload: http::upload_client(&account.ca_bundle)?,
            resolved: Mutex::new(None),
            fields: OnceCell::new(),
            folders: std::sync::Mutex::new(BTreeMap::new()),
            template_devices: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The parsed placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Key of the vCenter session in use (as vCenter's session list shows it); empty before
    /// the first call. For diagnostics and the session-loss test.
    pub fn session_key(&self) -> String {
        self.client.session_key()
    }

    /// Log out of vCenter (sessions also expire by themselves).
    pub async fn logout(&self) {
        self.client.logout().await
    }

    fn dc_path(&self, folder: &str, rest: &str) -> String {
        format!("{}/{folder}/{rest}", self.placement.datacenter)
    }

    async fn names(&self, root: &MoRef, kind: &str) -> Result<Vec<String>, ProviderError> {
        let mut names: Vec<String> = self
            .client
            .list(root, kind, &["name"])
            .await?
            .iter()
            .filter_map(|o| o.text("name").map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Resolve (once) the placement to managed objects; every missing object is a NotFound
    /// error naming the key and the choices that exist.
    async fn resolve(&self) -> Result<Arc<Resolved>, ProviderError> {
        let mut cached = self.resolved.lock().await;
        if let Some(r) = cached.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(self.resolve_uncached().await?);
        *cached = Some(r.clone());
        Ok(r)
    }

    async fn forget_placement(&self) {
        *self.resolved.lock().await = None;
        if let Ok(mut f) = self.folders.lock() {
            f.clear();
        }
        if let Ok(mut t) = self.template_devices.lock() {
            t.clear();
        }
    }

    fn cached_folder(&self, key: &str) -> Option<MoRef> {
        self.folders.lock().ok().and_then(|f| f.get(key).cloned())
    }

    fn cache_folder(&self, key: &str, folder: &MoRef) {
        if let Ok(mut f) = self.folders.lock() {
            f.insert(key.to_string(), folder.clone());
        }
    }

    /// The cluster's folder under the base folder, created when missing.
    async fn cluster_folder(&self, base: &MoRef, cluster_id: &str) -> Result<MoRef, ProviderError> {
        if let Some(f) = self.cached_folder(cluster_id) {
            return Ok(f);
        }
        let f = self.child_folder(base, cluster_id).await?;
        self.cache_folder(cluster_id, &f);
        Ok(f)
    }

    async fn resolve_uncached(&self) -> Result<Resolved, ProviderError> {
        let c = &self.client;
        let p = &self.placement;
        let content = c.content().await?.clone();
        let datacenter = match c.find_by_path(&p.datacenter).await? {
            Some(m) if m.kind == "Datacenter" => m,
            _ => {
                let names = self.names(&content.root_folder, "Datacenter").await?;
                return Err(not_found(
                    "datacenter",
                    &p.datacenter,
                    "in the inventory",
                    &names,
                ));
            }
        };
        let dc = c
            .retrieve_one(
                &datacenter,
                &["vmFolder", "hostFolder", "datastore", "network"],
            )
            .await?
            .ok_or_else(|| ProviderError::transient("the datacenter vanished; retry"))?;
        let vm_folder = dc
            .moref("vmFolder")
            .ok_or_else(|| soap::protocol("a datacenter without a vmFolder"))?;
        let host_folder = dc
            .moref("hostFolder")
            .ok_or_else(|| soap::protocol("a datacenter without a hostFolder"))?;
        let in_dc = format!("in datacenter {}", p.datacenter);

        let (key, value) = p.compute.key_value();
        let found = c.find_by_path(&self.dc_path("host", value)).await?;
        let (compute, host) = match (&p.compute, found) {
            (Compute::Cluster(_), Some(m)) if m.kind == "ClusterComputeResource" => (m, None),
            (Compute::Host(_), Some(m))
                if m.kind == "ComputeResource" || m.kind == "ClusterComputeResource" =>
            {
                (m, None)
            }
            (Compute::Host(_), Some(m)) if m.kind == "HostSystem" => {
                let h = c
                    .retrieve_one(&m, &["parent"])
                    .await?
                    .and_then(|o| o.moref("parent"))
                    .ok_or_else(|| soap::protocol("a host without a parent"))?;
                (h, Some(m))
            }
            _ => {
                let names = match &p.compute {
                    Compute::Cluster(_) => {
                        self.names(&host_folder, "ClusterComputeResource").await?
                    }
                    Compute::Host(_) => self.names(&host_folder, "HostSystem").await?,
                };
                return Err(not_found(key, value, &in_dc, &names));
            }
        };
        let cr = c
            .retrieve_one(&compute, &["resourcePool"])
            .await?
            .ok_or_else(|| ProviderError::transient("the compute resource vanished; retry"))?;
        let root_pool = cr
            .moref("resourcePool")
            .ok_or_else(|| soap::protocol("a compute resource without a resource pool"))?;
        let pool = match &p.resource_pool {
            None => root_pool,
            Some(rp) => match c
                .find_by_path(&format!("{}/Resources/{rp}", self.dc_path("host", value)))
                .await?
            {
                Some(m) if m.kind == "ResourcePool" || m.kind == "VirtualApp" => m,
                _ => {
                    let names = self.names(&root_pool, "ResourcePool").await?;
                    return Err(not_found(
                        "resource_pool",
                        rp,
                        &format!("in {key} {value}"),
                        &names,
                    ));
                }
            },
        };

        let datastore = match c
            .find_by_path(&self.dc_path("datastore", &p.datastore))
            .await?
        {
            Some(m) if m.kind == "Datastore" => m,
            _ => {
                let mut names: Vec<String> = c
                    .retrieve(&dc.morefs("datastore"), "Datastore", &["name"])
                    .await?
                    .iter()
                    .filter_map(|o| o.text("name").map(str::to_string))
                    .collect();
                names.sort();
                return Err(not_found("datastore", &p.datastore, &in_dc, &names));
            }
        };

        let network_ref = c.find_by_path(&self.dc_path("network", &p.network)).await?;
        let (network, backing) = match network_ref {
            Some(m) if m.kind == "Network" => (
                m.clone(),
                NetBacking::Standard {
                    name: p.network.rsplit('/').next().unwrap_or(&p.network).to_string(),
                    network: m,
                },
            ),
            Some(m) if m.kind == "DistributedVirtualPortgroup" => {
                let pg = c
                    .retrieve_one(&m, &["key", "config.distributedVirtualSwitch"])
                    .await?
                    .ok_or_else(|| ProviderError::transient("the port group vanished; retry"))?;
                let dvs = pg
                    .moref("config.distributedVirtualSwitch")
                    .ok_or_else(|| soap::protocol("a distributed port group without a switch"))?;
                let uuid = c
                    .retrieve_one(&dvs, &["uuid"])
                    .await?
                    .and_then(|o| o.text("uuid").map(str::to_string))
                    .ok_or_else(|| soap::protocol("a distributed switch without a uuid"))?;
                (
                    m,
                    NetBacking::Distributed {
                        switch_uuid: uuid,
                        portgroup: pg.text("key").unwrap_or_default().to_string(),
                    },
                )
            }
            Some(m) => {
                return Err(ProviderError::invalid(
                    "network",
                    format!("{:?} is a {}, which this provider cannot attach; choose a standard or distributed port group", p.network, m.kind),
                ))
            }
            None => {
                let mut names: Vec<String> = c
                    .retrieve(
                        &dc.morefs("network")
                            .into_iter()
                            .filter(|m| m.kind == "Network")
                            .collect::<Vec<_>>(),
                        "Network",
                        &["name"],
                    )
                    .await?
                    .iter()
                    .filter_map(|o| o.text("name").map(str::to_string))
                    .collect();
                let pgs: Vec<MoRef> = dc
                    .morefs("network")
                    .into_iter()
                    .filter(|m| m.kind == "DistributedVirtualPortgroup")
                    .collect();
                names.extend(
                    c.retrieve(&pgs, "DistributedVirtualPortgroup", &["name"])
                        .await?
                        .iter()
                        .filter_map(|o| o.text("name").map(str::to_string)),
                );
                names.sort();
                return Err(not_found("network", &p.network, &in_dc, &names));
            }
        };

        Ok(Resolved {
            vm_folder,
            host,
            pool,
            datastore,
            network,
            backing,
        })
    }

    /// The base folder; created when it is the default and missing. `None` only when
    /// `create` is false and it does not exist.
    async fn base_folder(
        &self,
        r: &Resolved,
        create: bool,
    ) -> Result<Option<MoRef>, ProviderError> {
        if let Some(f) = self.cached_folder("") {
            return Ok(Some(f));
        }
        let found = self.base_folder_uncached(r, create).await?;
        if let Some(f) = &found {
            self.cache_folder("", f);
        }
        Ok(found)
    }

    async fn base_folder_uncached(
        &self,
        r: &Resolved,
        create: bool,
    ) -> Result<Option<MoRef>, ProviderError> {
        let p = &self.placement;
        if let Some(f) = self
            .client
            .find_by_path(&self.dc_path("vm", &p.folder))
            .await?
        {
            if f.kind != "Folder" {
                return Err(ProviderError::invalid(
                    "folder",
                    format!("{:?} is a {}, not a VM folder", p.folder, f.kind),
                ));
            }
            return Ok(Some(f));
        }
        if p.folder_explicit {
            let names = self.names(&r.vm_folder, "Folder").await?;
            return Err(not_found(
                "folder",
                &p.folder,
                &format!("in datacenter {}", p.datacenter),
                &names,
            ));
        }
        if !create {
            return Ok(None);
        }
        self.child_folder(&r.vm_folder, &p.folder).await.map(Some)
    }

    /// The folder `name` directly in `parent`, created when missing (a concurrent creator's
    /// folder is found again).
    async fn child_folder(&self, parent: &MoRef, name: &str) -> Result<MoRef, ProviderError> {
        if let Some(f) = self.client.find_child(parent, name).await? {
            return Ok(f);
        }
        let req = format!(
            "<CreateFolder xmlns=\"urn:vim25\">{}{}</CreateFolder>",
            parent.this(),
            text_el("name", name)
        );
        match self.client.call(&req).await {
            Ok(resp) => resp
                .child("returnval")
                .and_then(MoRef::from_el)
                .ok_or_else(|| soap::protocol("CreateFolder answered without a folder")),
            Err(e) if e.fault("DuplicateName").is_some() => {
                self.client.find_child(parent, name).await?.ok_or_else(|| {
                    ProviderError::transient(format!("folder {name} is being created; retry"))
                })
            }
            Err(e) => Err(e.into_error(&format!("create folder {name}"))),
        }
    }

    /// The custom attribute keys, created when missing; `None` on an endpoint without
    /// custom attributes (a standalone ESXi).
    async fn fields(&self) -> Result<Option<FieldKeys>, ProviderError> {
        self.fields
            .get_or_try_init(|| async {
                let content = self.client.content().await?.clone();
                let Some(cfm) = content.custom_fields_manager else {
                    return Ok(None);
                };
                let mut keys = BTreeMap::new();
                for attempt in 0..2 {
                    keys = self.field_defs(&cfm).await?;
                    let mut raced = false;
                    for name in [TAG_CLUSTER, TAG_POOL, TAG_ROLE] {
                        if keys.contains_key(name) {
                            continue;
                        }
                        let req = format!(
                            "<AddCustomFieldDef xmlns=\"urn:vim25\">{}{}<moType>VirtualMachine</moType></AddCustomFieldDef>",
                            cfm.this(),
                            text_el("name", name)
                        );
                        match self.client.call(&req).await {
                            Ok(resp) => {
                                let key = resp
                                    .path(&["returnval", "key"])
                                    .and_then(|k| k.text.trim().parse().ok())
                                    .ok_or_else(|| soap::protocol("AddCustomFieldDef answered without a key"))?;
                                keys.insert(name.to_string(), key);
                            }
                            Err(e) if e.fault("DuplicateName").is_some() && attempt == 0 => raced = true,
                            Err(e) => {
                                return Err(e.into_error(&format!("create the custom attribute {name}")))
                            }
                        }
                    }
                    if !raced {
                        break;
                    }
                }
                let get = |n: &str| {
                    keys.get(n).copied().ok_or_else(|| {
                        ProviderError::transient(format!("custom attribute {n} is being created; retry"))
                    })
                };
                Ok(Some(FieldKeys {
                    cluster: get(TAG_CLUSTER)?,
                    pool: get(TAG_POOL)?,
                    role: get(TAG_ROLE)?,
                }))
            })
            .await
            .copied()
    }

    async fn field_defs(&self, cfm: &MoRef) -> Result<BTreeMap<String, i32>, ProviderError> {
        let obj = self.client.retrieve_one(cfm, &["field"]).await?;
        let mut out = BTreeMap::new();
        if let Some(field) = obj.as_ref().and_then(|o| o.props.get("field")) {
            for def in &field.children {
                let mo_type = def.child_text("managedObjectType").unwrap_or("");
                if !(mo_type.is_empty() || mo_type == "VirtualMachine") {
                    continue;
                }
                if let (Some(name), Some(key)) = (
                    def.child_text("name"),
                    def.child_text("key").and_then(|k| k.trim().parse().ok()),
                ) {
                    out.insert(name.to_string(), key);
                }
            }
        }
        Ok(out)
    }

    /// A VM's custom values by key (the last value wins: vcsim appends on every SetField).
    fn custom_values(obj: &ObjectContent) -> BTreeMap<i32, String> {
        let mut out = BTreeMap::new();
        if let Some(cv) = obj.props.get("customValue") {
            for v in &cv.children {
                if let Some(key) = v.child_text("key").and_then(|k| k.trim().parse().ok()) {
                    out.insert(key, v.child_text("value").unwrap_or("").to_string());
                }
            }
        }
        out
    }

    /// Build a [`Machine`] from its properties; `folder_cluster` is the cluster id of the
    /// folder it was found in, used when the attribute is missing.
    fn to_machine(
        &self,
        obj: &ObjectContent,
        fields: Option<FieldKeys>,
        folder_cluster: &str,
    ) -> Machine {
        let values = Self::custom_values(obj);
        let tag = |k: Option<i32>| {
            k.and_then(|k| values.get(&k).cloned())
                .filter(|v| !v.is_empty())
        };
        let cluster_id =
            tag(fields.map(|f| f.cluster)).unwrap_or_else(|| folder_cluster.to_string());
        let pool = tag(fields.map(|f| f.pool)).unwrap_or_default();
        let connection = obj.text("runtime.connectionState").unwrap_or("connected");
        let state = match (connection, obj.text("runtime.powerState")) {
            ("orphaned" | "inaccessible" | "invalid", _) => {
                MachineState::Failed(format!("vCenter reports the VM as {connection}"))
            }
            (_, Some("poweredOn")) => MachineState::Running,
            (_, Some("poweredOff" | "suspended")) => MachineState::Off,
            _ => MachineState::Provisioning,
        };
        let mut addresses: Vec<String> = Vec::new();
        if let Some(net) = obj.props.get("guest.net") {
            for nic in &net.children {
                for ip in nic.children_named("ipAddress") {
                    let ip = ip.text.trim();
                    if !ip.is_empty()
                        && !ip.starts_with("fe80:")
                        && !addresses.iter().any(|a| a == ip)
                    {
                        addresses.push(ip.to_string());
                    }
                }
            }
        }
        if addresses.is_empty() {
            if let Some(ip) = obj.text("guest.ipAddress").filter(|s| !s.is_empty()) {
                addresses.push(ip.to_string());
            }
        }
        if addresses.is_empty() {
            // No VMware Tools report (yet): the static address the machine was given.
            if let Some(ip) = extra_config(obj, ADDRESS_KEY) {
                let bare = ip.split('/').next().unwrap_or(&ip).to_string();
                addresses.push(bare);
            }
        }
        Machine {
            id: obj.obj.value.clone(),
            name: obj.text("name").unwrap_or_default().to_string(),
            cluster_id,
            pool,
            state,
            addresses,
        }
    }

    async fn read_vm(&self, vm: &MoRef) -> Result<Option<ObjectContent>, ProviderError> {
        self.client.retrieve_one(vm, MACHINE_PROPS).await
    }

    /// Whether `vm` sits in a cluster folder that Palisade made (named by a cluster id, under
    /// the base folder): a clone cut off by a crash before it was tagged is still ours.
    async fn in_a_cluster_folder(&self, vm: &MoRef) -> Result<bool, ProviderError> {
        let r = self.resolve().await?;
        let Some(base) = self.base_folder(&r, false).await? else {
            return Ok(false);
        };
        let Some(folder) = self
            .client
            .retrieve_one(vm, &["parent"])
            .await?
            .and_then(|o| o.moref("parent"))
        else {
            return Ok(false);
        };
        let Some(f) = self
            .client
            .retrieve_one(&folder, &["name", "parent"])
            .await?
        else {
            return Ok(false);
        };
        let named_by_a_cluster = f
            .text("name")
            .is_some_and(|n| uuid::Uuid::parse_str(n).is_ok());
        Ok(named_by_a_cluster && f.moref("parent").as_ref() == Some(&base))
    }

    fn vm_ref(id: &str) -> MoRef {
        MoRef::new("VirtualMachine", id)
    }

    /// Run a task on `vm`: `method` with extra parameters `params`.
    async fn vm_task(
        &self,
        vm: &MoRef,
        method: &str,
        params: &str,
        deadline: Duration,
    ) -> Result<Option<Element>, CallError> {
        let req = format!(
            "<{method} xmlns=\"urn:vim25\">{}{params}</{method}>",
            vm.this()
        );
        self.client.run_task(&req, deadline).await
    }

    async fn power_on(&self, vm: &MoRef, name: &str) -> Result<(), ProviderError> {
        match self.vm_task(vm, "PowerOnVM_Task", "", SHORT_TASK).await {
            Ok(_) => Ok(()),
            // Already on (a concurrent call won): the goal is reached.
            Err(e) if e.fault("InvalidPowerState").is_some() => Ok(()),
            Err(e) => Err(e.into_error(&format!("power on {name}"))),
        }
    }

    async fn power_off(&self, vm: &MoRef, name: &str) -> Result<(), ProviderError> {
        match self.vm_task(vm, "PowerOffVM_Task", "", SHORT_TASK).await {
            Ok(_) => Ok(()),
            Err(e) if e.fault("InvalidPowerState").is_some() => Ok(()),
            Err(e) => Err(e.into_error(&format!("power off {name}"))),
        }
    }

    /// Find a template or VM by inventory path, or by name anywhere in the datacenter.
    async fn find_vm(
        &self,
        r: &Resolved,
        path_or_name: &str,
    ) -> Result<Option<MoRef>, ProviderError> {
        if let Some(m) = self
            .client
            .find_by_path(&self.dc_path("vm", path_or_name))
            .await?
        {
            if m.kind == "VirtualMachine" {
                return Ok(Some(m));
            }
        }
        if path_or_name.contains('/') {
            return Ok(None);
        }
        let all = self
            .client
            .list(&r.vm_folder, "VirtualMachine", &["name"])
            .await?;
        Ok(all
            .into_iter()
            .find(|o| o.text("name") == Some(path_or_name))
            .map(|o| o.obj))
    }

    /// The template's virtual devices (read once per template).
    async fn template_devices(
        &self,
        template: &MoRef,
        image: &ImageRef,
    ) -> Result<Arc<Vec<Element>>, ProviderError> {
        let cached = self
            .template_devices
            .lock()
            .ok()
            .and_then(|t| t.get(&template.value).cloned());
        if let Some(d) = cached {
            return Ok(d);
        }
        let tpl = self
            .client
            .retrieve_one(template, &["config.hardware.device"])
            .await?
            .ok_or_else(|| {
                ProviderError::not_found(format!(
                    "vSphere: image {} ({}) no longer exists; ensure the image again",
                    image.name, image.id
                ))
            })?;
        let devices = Arc::new(
            tpl.props
                .get("config.hardware.device")
                .map(|d| d.children.clone())
                .unwrap_or_default(),
        );
        if let Ok(mut t) = self.template_devices.lock() {
            t.insert(template.value.clone(), devices.clone());
        }
        Ok(devices)
    }

    /// Clone the image's template into the cluster folder; returns the new VM.
    async fn clone_vm(
        &self,
        r: &Resolved,
        folder: &MoRef,
        spec: &MachineSpec,
    ) -> Result<MoRef, ProviderError> {
        let template = Self::vm_ref(&spec.image.id);
        let devices = self.template_devices(&template, &spec.image).await?;

        let mut changes = String::new();
        let want_kb = u64::from(spec.size.disk_gib) * 1024 * 1024;
        if let Some(disk) = devices
            .iter()
            .find(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))
        {
            let have_kb: u64 = disk
                .child_text("capacityInKB")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            // Grow only: a template disk larger than asked keeps its size.
            if have_kb < want_kb {
                let mut d = disk.clone();
                d.set_child_text("capacityInKB", &want_kb.to_string());
                if d.child("capacityInBytes").is_some() {
                    d.set_child_text("capacityInBytes", &(want_kb * 1024).to_string());
                }
                changes.push_str("<deviceChange><operation>edit</operation>");
                d.write_as("device", &mut changes);
                changes.push_str("</deviceChange>");
            }
        }
        let backing = r.backing.element()?;
        match devices.iter().find(|d| {
            d.xsi_type
                .as_deref()
                .is_some_and(|t| NIC_TYPES.contains(&t))
        }) {
            Some(nic) => {
                let mut n = nic.clone();
                match n.children.iter().position(|c| c.name == "backing") {
                    Some(i) => n.children[i] = backing,
                    // backing comes right after key and deviceInfo
                    None => {
                        let at = n
                            .children
                            .iter()
                            .position(|c| c.name != "key" && c.name != "deviceInfo")
                            .unwrap_or(n.children.len());
                        n.children.insert(at, backing);
                    }
                }
                changes.push_str("<deviceChange><operation>edit</operation>");
                n.write_as("device", &mut changes);
                changes.push_str("</deviceChange>");
            }
            None => {
                changes.push_str(&format!(
                    concat!(
                        "<deviceChange><operation>add</operation><device xsi:type=\"VirtualVmxnet3\"><key>-100</key>{}",
                        "<connectable><startConnected>true</startConnected><allowGuestControl>true</allowGuestControl><connected>true</connected></connectable>",
                        "<addressType>generated</addressType></device></deviceChange>"
                    ),
                    r.backing.xml()
                ));
            }
        }
        let mut extra = String::new();
        for (k, v) in guestinfo::entries(spec)? {
            extra.push_str(&format!(
                "<extraConfig>{}<value xsi:type=\"xsd:string\">{}</value></extraConfig>",
                text_el("key", &k),
                escape(&v)
            ));
        }
        let annotation = format!(
            "Palisade machine of cluster {}, pool {} ({}). Managed by Palisade: do not edit.",
            spec.cluster_id,
            spec.pool,
            role_str(spec.role)
        );
        let host = r.host.as_ref().map(|h| h.xml("host")).unwrap_or_default();
        let params = format!(
            concat!(
                "{folder}{name}<spec><location>{ds}{pool}{host}</location><template>false</template>",
                "<config>{annotation}<numCPUs>{cpus}</numCPUs><memoryMB>{mem}</memoryMB>{changes}{extra}</config>",
                "<powerOn>false</powerOn></spec>"
            ),
            folder = folder.xml("folder"),
            name = text_el("name", &spec.name),
            ds = r.datastore.xml("datastore"),
            pool = r.pool.xml("pool"),
            host = host,
            annotation = text_el("annotation", &annotation),
            cpus = spec.size.cpus,
            mem = spec.size.memory_mib,
            changes = changes,
            extra = extra,
        );
        match self
            .vm_task(&template, "CloneVM_Task", &params, LONG_TASK)
            .await
        {
            Ok(Some(result)) => MoRef::from_el(&result)
                .ok_or_else(|| soap::protocol("the clone task answered without a VM")),
            Ok(None) => Err(soap::protocol("the clone task answered without a VM")),
            // Another call is cloning the same machine: find its VM (or retry later).
            Err(e) if e.fault("DuplicateName").is_some() => self
                .client
                .find_in_folder(folder, "VirtualMachine", &spec.name)
                .await?
                .ok_or_else(|| {
                    ProviderError::transient(format!("{} is being created; retry", spec.name))
                }),
            Err(e) => Err(e.into_error(&format!(
                "clone {} from template {} into datastore {}",
                spec.name, spec.image.name, self.placement.datastore
            ))),
        }
    }

    /// Bring an existing VM to the spec: size while off, attributes, power on.
    async fn converge(
        &self,
        vm: &MoRef,
        spec: &MachineSpec,
        cluster_folder: &str,
    ) -> Result<Machine, ProviderError> {
        let mut paths = MACHINE_PROPS.to_vec();
        paths.extend(["config.hardware.numCPU", "config.hardware.memoryMB"]);
        let obj = self.client.retrieve_one(vm, &paths).await?.ok_or_else(|| {
            ProviderError::transient(format!("{} vanished while being created; retry", spec.name))
        })?;
        if obj.text("config.template") == Some("true") {
            return Err(ProviderError::invalid(
                "name",
                format!(
                    "{} names a template in the cluster's folder, not a machine",
                    spec.name
                ),
            ));
        }
        let off = obj.text("runtime.powerState") != Some("poweredOn");
        let cpus = obj
            .text("config.hardware.numCPU")
            .and_then(|v| v.parse::<u32>().ok());
        let mem = obj
            .text("config.hardware.memoryMB")
            .and_then(|v| v.parse::<u32>().ok());
        if off && (cpus != Some(spec.size.cpus) || mem != Some(spec.size.memory_mib)) {
            // vcsim (and a half-done earlier attempt) may leave the template's size.
            let params = format!(
                "<spec><numCPUs>{}</numCPUs><memoryMB>{}</memoryMB></spec>",
                spec.size.cpus, spec.size.memory_mib
            );
            self.vm_task(vm, "ReconfigVM_Task", &params, SHORT_TASK)
                .await
                .map_err(|e| e.into_error(&format!("size {}", spec.name)))?;
        }
        let fields = self.fields().await?;
        if let Some(f) = fields {
            let values = Self::custom_values(&obj);
            let content = self.client.content().await?.clone();
            let cfm = content
                .custom_fields_manager
                .ok_or_else(|| soap::protocol("custom attributes without a manager"))?;
            for (key, want) in [
                (f.cluster, spec.cluster_id.as_str()),
                (f.pool, spec.pool.as_str()),
                (f.role, role_str(spec.role)),
            ] {
                if values.get(&key).map(String::as_str) == Some(want) {
                    continue;
                }
                let req = format!(
                    "<SetField xmlns=\"urn:vim25\">{}{}<key>{key}</key>{}</SetField>",
                    cfm.this(),
                    vm.xml("entity"),
                    text_el("value", want)
                );
                self.client
                    .call(&req)
                    .await
                    .map_err(|e| e.into_error(&format!("tag {}", spec.name)))?;
            }
        }
        let mut machine = self.to_machine(&obj, fields, cluster_folder);
        if off {
            self.power_on(vm, &spec.name).await?;
            machine.state = MachineState::Running;
        }
        // What was just set, without reading the VM again.
        machine.cluster_id = spec.cluster_id.clone();
        machine.pool = spec.pool.clone();
        Ok(machine)
    }

    /// Import an OVA into the base folder as template `name`; crash-safe (see module doc).
    async fn import_image(
        &self,
        r: &Resolved,
        base: &MoRef,
        image: &OsImage,
    ) -> Result<MoRef, ProviderError> {
        let temp_name = format!("{}{IMPORTING}", image.name);
        if let Some(stale) = self.client.find_child(base, &temp_name).await? {
            tracing::info!(vm = %stale, "vSphere: removing an interrupted image import");
            match self.vm_task(&stale, "Destroy_Task", "", SHORT_TASK).await {
                Ok(_) => {}
                Err(e) if e.fault("ManagedObjectNotFound").is_some() => {}
                Err(e) => {
                    return Err(e.into_error(&format!("remove the interrupted import {temp_name}")))
                }
            }
        }
        let tmp;
        let path = match &image.location {
            ImageLocation::File(p) => p.clone(),
            ImageLocation::Existing => {
                return Err(ProviderError::not_found(format!(
                    "vSphere: image {} has no OVA to import",
                    image.name
                )))
            }
            ImageLocation::Url { url, ca_pem } => {
                tmp = tempfile::tempdir().map_err(|e| {
                    ProviderError::transient(format!("cannot make a temporary directory: {e}"))
                })?;
                ovf::download(url, ca_pem, &image.sha256, tmp.path()).await?
            }
        };
        let target = ovf::ImportTarget {
            pool: &r.pool,
            folder: base,
            datastore: &r.datastore,
            network: &r.network,
        };
        let vm = ovf::import(&self.client, &self.upload, &path, &temp_name, target).await?;
        let req = format!(
            "<MarkAsTemplate xmlns=\"urn:vim25\">{}</MarkAsTemplate>",
            vm.this()
        );
        self.client
            .call(&req)
            .await
            .map_err(|e| e.into_error(&format!("mark {temp_name} as a template")))?;
        self.vm_task(
            &vm,
            "Rename_Task",
            &text_el("newName", &image.name),
            SHORT_TASK,
        )
        .await
        .map_err(|e| e.into_error(&format!("rename {temp_name} to {}", image.name)))?;
        Ok(vm)
    }

    /// Map a NotFound of a cached object to a fresh resolve next time.
    async fn checked<T>(&self, r: Result<T, ProviderError>) -> Result<T, ProviderError> {
        if let Err(e) = &r {
            if e.kind == ErrorKind::NotFound {
                self.forget_placement().await;
            }
        }
        r
    }
}

/// The value of an extraConfig key.
fn extra_config(obj: &ObjectContent, key: &str) -> Option<String> {
    obj.props.get("config.extraConfig").and_then(|ec| {
        ec.children
            .iter()
            .find(|o| o.child_text("key") == Some(key))
            .and_then(|o| o.child_text("value").map(str::to_string))
    })
}

#[async_trait::async_trait]
impl Provider for VsphereProvider {
    async fn validate(&self) -> Result<AccountCheck, ProviderError> {
        self.client.ensure_session().await?;
        let content = self.client.content().await?.clone();
        let mut checks = vec![format!(
            "logged in to {} as {}",
            self.client.sdk_url(),
            self.client.username()
        )];
        self.forget_placement().await;
        let r = self.resolve().await?;
        let p = &self.placement;
        let (key, value) = p.compute.key_value();
        checks.push(format!("datacenter {} found", p.datacenter));
        checks.push(format!("{key} {value} found"));
        if let Some(rp) = &p.resource_pool {
            checks.push(format!("resource pool {rp} found"));
        }
        checks.push(format!("datastore {} found", p.datastore));
        checks.push(format!("network {} found", p.network));
        match self.base_folder(&r, false).await? {
            Some(_) => checks.push(format!("folder {} found", p.folder)),
            None => checks.push(format!("folder {} will be created on first use", p.folder)),
        }
        if let Some(t) = &p.template {
            match self.find_vm(&r, t).await? {
                Some(_) => checks.push(format!("template {t} found")),
                None => {
                    let templates: Vec<String> = self
                        .client
                        .list(&r.vm_folder, "VirtualMachine", &["name", "config.template"])
                        .await?
                        .iter()
                        .filter(|o| o.text("config.template") == Some("true"))
                        .filter_map(|o| o.text("name").map(str::to_string))
                        .collect();
                    return Err(not_found(
                        "template",
                        t,
                        &format!("in datacenter {}", p.datacenter),
                        &templates,
                    ));
                }
            }
        }
        if let Some(pool) = &p.ip_pool {
            checks.push(format!(
                "IP pool of {} addresses, gateway {}/{}",
                pool.addresses.len(),
                pool.gateway,
                pool.prefix
            ));
        }
        // Read only: validating an account changes nothing on vCenter.
        match &content.custom_fields_manager {
            Some(cfm) => {
                let defs = self.field_defs(cfm).await?;
                let missing: Vec<&str> = [TAG_CLUSTER, TAG_POOL, TAG_ROLE]
                    .into_iter()
                    .filter(|n| !defs.contains_key(*n))
                    .collect();
                if missing.is_empty() {
                    checks.push(format!(
                        "custom attributes {TAG_CLUSTER}, {TAG_POOL}, {TAG_ROLE} found"
                    ));
                } else {
                    checks.push(format!(
                        "custom attributes {} will be created on first use",
                        missing.join(", ")
                    ));
                }
            }
            None => checks.push(
                "no custom attributes on this endpoint: machines are found by folder only".into(),
            ),
        }
        Ok(AccountCheck {
            endpoint_product: content.full_name.clone(),
            checks,
        })
    }

    async fn placements(&self) -> Result<Vec<PlacementChoice>, ProviderError> {
        let c = &self.client;
        let content = c.content().await?.clone();
        let mut out = Vec::new();
        let dcs = c
            .list(
                &content.root_folder,
                "Datacenter",
                &["name", "vmFolder", "hostFolder", "datastore", "network"],
            )
            .await?;
        let choice = |key: &str, value: &str, label: String| PlacementChoice {
            key: key.into(),
            value: value.into(),
            label,
        };
        for dc in &dcs {
            let dc_name = dc.text("name").unwrap_or_default().to_string();
            out.push(choice("datacenter", &dc_name, dc_name.clone()));
            if dc_name != self.placement.datacenter && dcs.len() > 1 {
                continue; // the other keys are relative to the account's datacenter
            }
            if let Some(hf) = dc.moref("hostFolder") {
                for cr in c
                    .list(&hf, "ComputeResource", &["name", "summary.numHosts"])
                    .await?
                {
                    let name = cr.text("name").unwrap_or_default();
                    let hosts = cr.text("summary.numHosts").unwrap_or("?");
                    if cr.obj.kind == "ClusterComputeResource" {
                        out.push(choice("cluster", name, format!("{name} ({hosts} hosts)")));
                    } else {
                        out.push(choice("host", name, format!("{name} (standalone host)")));
                    }
                }
            }
            let stores = c
                .retrieve(
                    &dc.morefs("datastore"),
                    "Datastore",
                    &["name", "summary.freeSpace", "summary.capacity"],
                )
                .await?;
            for ds in stores {
                let name = ds.text("name").unwrap_or_default();
                let gib = |p: &str| {
                    ds.text(p).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) / (1 << 30)
                };
                out.push(choice(
                    "datastore",
                    name,
                    format!(
                        "{name} ({} GiB free of {} GiB)",
                        gib("summary.freeSpace"),
                        gib("summary.capacity")
                    ),
                ));
            }
            for kind in ["Network", "DistributedVirtualPortgroup"] {
                let nets: Vec<MoRef> = dc
                    .morefs("network")
                    .into_iter()
                    .filter(|m| m.kind == kind)
                    .collect();
                for n in c.retrieve(&nets, kind, &["name"]).await? {
                    let name = n.text("name").unwrap_or_default();
                    let label = if kind == "Network" {
                        name.to_string()
                    } else {
                        format!("{name} (distributed)")
                    };
                    out.push(choice("network", name, label));
                }
            }
            if let Some(vf) = dc.moref("vmFolder") {
                for vm in c
                    .list(&vf, "VirtualMachine", &["name", "config.template"])
                    .await?
                {
                    if vm.text("config.template") == Some("true") {
                        let name = vm.text("name").unwrap_or_default();
                        if !name.ends_with(IMPORTING) {
                            out.push(choice("template", name, name.to_string()));
                        }
                    }
                }
                for f in c.list(&vf, "Folder", &["name"]).await? {
                    let name = f.text("name").unwrap_or_default();
                    out.push(choice("folder", name, name.to_string()));
                }
            }
        }
        Ok(out)
    }

    async fn ensure_image(&self, image: &OsImage) -> Result<ImageRef, ProviderError> {
        let r = self.resolve().await?;
        if let Some(t) = &self.placement.template {
            let vm = self
                .checked(self.find_vm(&r, t).await)
                .await?
                .ok_or_else(|| {
                    ProviderError::not_found(format!(
                    "vSphere: template {t:?} (placement key template) not found in datacenter {}",
                    self.placement.datacenter
                ))
                })?;
            return Ok(ImageRef {
                id: vm.value,
                name: t.clone(),
            });
        }
        check_name("image name", &image.name)?;
        if image.format != ImageFormat::Ova {
            return Err(ProviderError::invalid(
                "image",
                format!("{} is {:?}; vSphere machines are created from OVA images (or set the placement key template)", image.name, image.format),
            ));
        }
        let base = self
            .base_folder(&r, true)
            .await?
            .ok_or_else(|| soap::protocol("the base folder could not be created"))?;
        if let Some(vm) = self.client.find_child(&base, &image.name).await? {
            return Ok(ImageRef {
                id: vm.value,
                name: image.name.clone(),
            });
        }
        if let Some(vm) = self.find_vm(&r, &image.name).await? {
            return Ok(ImageRef {
                id: vm.value,
                name: image.name.clone(),
            });
        }
        if image.location == ImageLocation::Existing {
            return Err(ProviderError::not_found(format!(
                "vSphere: no template or VM named {:?} in datacenter {}: create the template, set the placement key template, \
                 or name an OVA artifact as image.ova in the profile's os layer",
                image.name, self.placement.datacenter
            )));
        }
        let vm = self.import_image(&r, &base, image).await?;
        Ok(ImageRef {
            id: vm.value,
            name: image.name.clone(),
        })
    }

    async fn ensure_machine(&self, spec: &MachineSpec) -> Result<Machine, ProviderError> {
        check_name("name", &spec.name)?;
        check_name("cluster_id", &spec.cluster_id)?;
        let r = self.resolve().await?;
        let base = self
            .base_folder(&r, true)
            .await?
            .ok_or_else(|| soap::protocol("the base folder could not be created"))?;
        let folder = self
            .checked(self.cluster_folder(&base, &spec.cluster_id).await)
            .await?;
        let found = self
            .checked(
                self.client
                    .find_in_folder(&folder, "VirtualMachine", &spec.name)
                    .await,
            )
            .await?;
        let vm = match found {
            Some(vm) => vm,
            None => self.checked(self.clone_vm(&r, &folder, spec).await).await?,
        };
        self.converge(&vm, spec, &spec.cluster_id).await
    }

    async fn machine(&self, id: &MachineRef) -> Result<Option<Machine>, ProviderError> {
        let vm = Self::vm_ref(&id.id);
        let Some(obj) = self.read_vm(&vm).await? else {
            return Ok(None);
        };
        if !id.name.is_empty() && obj.text("name") != Some(id.name.as_str()) {
            // The id was reused for another VM: the machine asked for is gone.
            return Ok(None);
        }
        let fields = self.fields().await?;
        Ok(Some(self.to_machine(&obj, fields, "")))
    }

    async fn power(&self, id: &MachineRef, op: PowerOp) -> Result<(), ProviderError> {
        let vm = Self::vm_ref(&id.id);
        let obj = self
            .client
            .retrieve_one(&vm, &["name", "runtime.powerState"])
            .await?
            .filter(|o| id.name.is_empty() || o.text("name") == Some(id.name.as_str()))
            .ok_or_else(|| {
                ProviderError::not_found(format!(
                    "vSphere: machine {} ({}) does not exist",
                    id.name, id.id
                ))
            })?;
        let on = obj.text("runtime.powerState") == Some("poweredOn");
        match (op, on) {
            (PowerOp::On, true) | (PowerOp::Off, false) => Ok(()),
            (PowerOp::On, false) | (PowerOp::Reset, false) => self.power_on(&vm, &id.name).await,
            (PowerOp::Off, true) => self.power_off(&vm, &id.name).await,
            (PowerOp::Reset, true) => self
                .vm_task(&vm, "ResetVM_Task", "", SHORT_TASK)
                .await
                .map(|_| ())
                .map_err(|e| e.into_error(&format!("reset {}", id.name))),
        }
    }

    async fn delete_machine(&self, id: &MachineRef) -> Result<(), ProviderError> {
        let vm = Self::vm_ref(&id.id);
        let Some(obj) = self.read_vm(&vm).await? else {
            return Ok(());
        };
        let name = obj.text("name").unwrap_or_default().to_string();
        if !id.name.is_empty() && name != id.name {
            // The id now names another VM: ours is gone, and that one is not ours to delete.
            return Ok(());
        }
        if let Some(f) = self.fields().await? {
            if Self::custom_values(&obj)
                .get(&f.cluster)
                .is_none_or(|v| v.is_empty())
                && !self.in_a_cluster_folder(&vm).await?
            {
                return Err(ProviderError::invalid(
                    "machine",
                    format!("VM {name} ({}) carries no {TAG_CLUSTER} attribute: it is not a Palisade machine, so it is not deleted", id.id),
                ));
            }
        }
        if obj.text("runtime.powerState") != Some("poweredOff") {
            self.power_off(&vm, &name).await?;
        }
        match self.vm_task(&vm, "Destroy_Task", "", SHORT_TASK).await {
            Ok(_) => Ok(()),
            Err(e) if e.fault("ManagedObjectNotFound").is_some() => Ok(()),
            Err(e) => Err(e.into_error(&format!("destroy {name}"))),
        }
    }

    async fn machines(&self, cluster_id: &str) -> Result<Vec<Machine>, ProviderError> {
        check_name("cluster_id", cluster_id)?;
        let r = self.resolve().await?;
        let Some(base) = self.base_folder(&r, false).await? else {
            return Ok(Vec::new());
        };
        let Some(folder) = self.client.find_child(&base, cluster_id).await? else {
            return Ok(Vec::new());
        };
        let fields = self.fields().await?;
        let vms = self
            .client
            .list(&folder, "VirtualMachine", MACHINE_PROPS)
            .await?;
        let mut out: Vec<Machine> = vms
            .iter()
            .filter(|o| o.text("config.template") != Some("true"))
            .map(|o| self.to_machine(o, fields, cluster_id))
            .filter(|m| m.cluster_id == cluster_id)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_urls_are_https_and_end_in_sdk() {
        assert_eq!(
            sdk_url("https://vc.lab").expect("url"),
            "https://vc.lab/sdk"
        );
        assert_eq!(
            sdk_url("https://vc.lab:8989/sdk/").expect("url"),
            "https://vc.lab:8989/sdk"
        );
        assert_eq!(
            sdk_url("http://vc.lab/sdk").expect_err("http").kind,
            ErrorKind::Invalid
        );
        assert!(sdk_url("vc.lab").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("name", "c1-workers-0-abc123").is_ok());
        assert!(check_name("name", "a/b").is_err());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", &"x".repeat(81)).is_err());
    }

    #[test]
    fn not_found_errors_list_the_choices() {
        let e = not_found(
            "datastore",
            "nope",
            "in datacenter DC0",
            &["LocalDS_0".into()],
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("datastore \"nope\""), "{}", e.message);
        assert!(e.message.contains("LocalDS_0"), "{}", e.message);
    }

    #[test]
    fn nic_backings_parse_as_elements() {
        let b = NetBacking::Distributed {
            switch_uuid: "u-1".into(),
            portgroup: "dvportgroup-13".into(),
        };
        let el = b.element().expect("element");
        assert_eq!(
            el.xsi_type.as_deref(),
            Some("VirtualEthernetCardDistributedVirtualPortBackingInfo")
        );
        let mut out = String::new();
        el.write_as("backing", &mut out);
        assert_eq!(out, b.xml());
    }
}
