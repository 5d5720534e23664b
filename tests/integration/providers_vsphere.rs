//! The vSphere provider against vcsim (govmomi's vCenter simulator, `../shared/peers/vcsim.sh`),
//! started once per test process on a free loopback port with a fixed login. vcsim's own
//! certificate is an RSA-1024 key that rustls refuses, so vcsim runs on plain HTTP behind a
//! TLS terminator (`tls_front`) whose certificate the accounts pin in their `ca_bundle`.
//!
//! What the tests read back (CPU, memory, disk, NIC, guestinfo, attributes, folders) is read
//! with a separate raw SOAP session, not through the provider.

use crate::support::{free_port, peers_dir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::ova_fixture::{build_ova, sha256_hex};
use palisade::model::{CloudKind, Credentials, MachineSize, NodeRole};
use palisade::providers::vsphere::{decode_guestinfo, xml, VsphereProvider, ADDRESS_KEY};
use palisade::providers::{
    Account, Bootstrap, ErrorKind, ImageFormat, ImageLocation, ImageRef, MachineRef, MachineSpec,
    MachineState, OsImage, PowerOp, Provider, StaticIp, TAG_CLUSTER, TAG_POOL, TAG_ROLE,
};

const USER: &str = "palisade-admin";
const PASSWORD: &str = "vcsim-test-secret";

/// A running vcsim.
struct Vcsim {
    sdk: String,
    cert_pem: String,
    log: PathBuf,
}

/// The vcsim shared by every test of this process.
fn vcsim() -> &'static Vcsim {
    static VCSIM: OnceLock<Vcsim> = OnceLock::new();
    VCSIM.get_or_init(start_vcsim)
}

fn start_vcsim() -> Vcsim {
    let script = peers_dir().join("vcsim.sh");
    assert!(
        script.exists(),
        "vcsim peer script not found at {} (set PALISADE_PEERS_DIR)",
        script.display()
    );
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(port.to_string())
            .env("VCSIM_USER", USER)
            .env("VCSIM_TLS", "0")
            .env("VCSIM_PASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run vcsim.sh start");
        if !out.status.success() {
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            continue;
        }
        let vars: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pid = vars.get("PID").expect("PID from vcsim.sh start").clone();
        // The peer dies with this test process: the watchdog outlives it on purpose, so it is
        // never waited for.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; bash '{}' stop {pid} >/dev/null 2>&1",
                std::process::id(),
                script.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the vcsim watchdog");
        let peers_cache = std::env::var_os("PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/peers")
            });
        let front = crate::tls_front::start(([127, 0, 0, 1], port).into());
        return Vcsim {
            sdk: format!("https://127.0.0.1:{}/sdk", front.port),
            cert_pem: front.cert_pem,
            log: peers_cache.join(format!("vcsim/run/vcsim-{port}.log")),
        };
    }
    panic!("vcsim could not be started: {last}");
}

fn placement(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("datacenter", "DC0"),
        ("cluster", "DC0_C0"),
        ("datastore", "LocalDS_0"),
        ("network", "VM Network"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        if v.is_empty() {
            m.remove(*k);
        } else {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m
}

fn account(extra: &[(&str, &str)]) -> Account {
    let v = vcsim();
    Account {
        kind: CloudKind::Vsphere,
        endpoint: v.sdk.clone(),
        ca_bundle: v.cert_pem.clone(),
        credentials: Credentials {
            username: USER.into(),
            password: PASSWORD.into(),
            ..Credentials::default()
        },
        placement: placement(extra),
    }
}

fn provider(extra: &[(&str, &str)]) -> VsphereProvider {
    VsphereProvider::new(&account(extra)).expect("provider")
}

fn os_image(name: &str, path: &Path) -> OsImage {
    let bytes = std::fs::read(path).expect("read ova");
    OsImage {
        name: name.into(),
        format: ImageFormat::Ova,
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        location: ImageLocation::File(path.to_path_buf()),
    }
}

fn spec(
    cluster: &str,
    pool: &str,
    n: u32,
    role: NodeRole,
    size: (u32, u32, u32),
    image: &ImageRef,
) -> MachineSpec {
    let name = format!("c-{pool}-{n}-{}", &cluster[..6]);
    MachineSpec {
        name: name.clone(),
        cluster_id: cluster.into(),
        pool: pool.into(),
        role,
        size: MachineSize {
            cpus: size.0,
            memory_mib: size.1,
            disk_gib: size.2,
        },
        image: image.clone(),
        bootstrap: Bootstrap {
            user_data: format!(
                "#cloud-config\nhostname: {name}\nruncmd:\n  - echo 'join <&> {cluster}'\n"
            ),
            meta_data: format!("instance-id: {name}\nlocal-hostname: {name}\n"),
            network_config: None,
        },
        static_ip: None,
    }
}

fn cluster_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A raw SOAP session for reading back what the provider did.
struct Raw {
    http: reqwest::Client,
    sdk: String,
    cookie: String,
}

impl Raw {
    async fn login() -> Raw {
        let v = vcsim();
        let http = palisade::providers::http::client(&v.cert_pem, Duration::from_secs(30))
            .expect("client");
        let mut raw = Raw {
            http,
            sdk: v.sdk.clone(),
            cookie: String::new(),
        };
        let resp = raw
            .http
            .post(&raw.sdk)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(xml::envelope(&format!(
                r#"<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>{USER}</userName><password>{PASSWORD}</password></Login>"#
            )))
            .send()
            .await
            .expect("raw login");
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("session cookie")
            .to_string();
        assert_eq!(resp.status(), 200, "raw login failed");
        raw.cookie = cookie;
        raw
    }

    async fn call(&self, body: &str) -> xml::Element {
        let resp = self
            .http
            .post(&self.sdk)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .header("Cookie", &self.cookie)
            .body(xml::envelope(body))
            .send()
            .await
            .expect("raw call");
        let text = resp.text().await.expect("raw body");
        let root = xml::parse(&text).expect("raw xml");
        let body = root.child("Body").expect("Body").clone();
        assert!(body.child("Fault").is_none(), "raw call faulted: {text}");
        body.children.first().cloned().expect("response")
    }

    /// Properties of one object: path -> value element; missing object panics.
    async fn props(&self, kind: &str, id: &str, paths: &[&str]) -> BTreeMap<String, xml::Element> {
        let path_set: String = paths
            .iter()
            .map(|p| format!("<pathSet>{p}</pathSet>"))
            .collect();
        let resp = self
            .call(&format!(
                r#"<RetrieveProperties xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><specSet><propSet><type>{kind}</type>{path_set}</propSet><objectSet><obj type="{kind}">{id}</obj></objectSet></specSet></RetrieveProperties>"#
            ))
            .await;
        let obj = resp.child("returnval").expect("object");
        obj.children_named("propSet")
            .filter_map(|p| Some((p.child_text("name")?.to_string(), p.child("val")?.clone())))
            .collect()
    }

    async fn find(&self, path: &str) -> Option<String> {
        let resp = self
            .call(&format!(
                r#"<FindByInventoryPath xmlns="urn:vim25"><_this type="SearchIndex">SearchIndex</_this><inventoryPath>{path}</inventoryPath></FindByInventoryPath>"#
            ))
            .await;
        resp.child("returnval").map(|r| r.text.clone())
    }

    /// What vCenter leaves when the appliance is killed while its clone task runs: a clone of
    /// `source` in the cluster's `folder`, untagged and powered off. Returns its id.
    async fn clone_untagged(
        &self,
        source: &str,
        folder: &str,
        cluster: &str,
        name: &str,
    ) -> String {
        self.call(&format!(
            r#"<CloneVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">{source}</_this><folder type="Folder">{folder}</folder><name>{name}</name><spec><location/><template>false</template><powerOn>false</powerOn></spec></CloneVM_Task>"#
        ))
        .await;
        let path = format!("DC0/vm/palisade/{cluster}/{name}");
        crate::provisioning::wait_for("the raw clone", Duration::from_secs(30), || {
            self.find(&path)
        })
        .await
    }

    async fn field_keys(&self) -> BTreeMap<String, String> {
        let p = self
            .props("CustomFieldsManager", "CustomFieldsManager", &["field"])
            .await;
        p.get("field")
            .map(|f| {
                f.children
                    .iter()
                    .filter_map(|d| {
                        Some((
                            d.child_text("key")?.to_string(),
                            d.child_text("name")?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn extra(props: &BTreeMap<String, xml::Element>) -> BTreeMap<String, String> {
    props
        .get("config.extraConfig")
        .map(|ec| {
            ec.children
                .iter()
                .filter_map(|o| {
                    Some((
                        o.child_text("key")?.to_string(),
                        o.child_text("value")?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Disk uploads vcsim logged for an image (its NFC handler logs one line per file).
fn nfc_uploads(image: &str) -> usize {
    std::fs::read_to_string(&vcsim().log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("nfc PUT") || l.contains("nfc POST"))
        .filter(|l| l.contains(&format!("/{image}-importing/")))
        .count()
}

#[tokio::test]
async fn validate_accepts_the_vcsim_account() {
    let check = provider(&[]).validate().await.expect("validate");
    assert!(check.endpoint_product.contains("vCenter"), "{check:?}");
    for want in [
        "datastore LocalDS_0 found",
        "network VM Network found",
        "cluster DC0_C0 found",
    ] {
        assert!(
            check.checks.iter().any(|c| c == want),
            "{want} missing in {:?}",
            check.checks
        );
    }
}

#[tokio::test]
async fn validate_rejects_a_wrong_password_as_credentials() {
    let mut a = account(&[]);
    a.credentials.password = "not-the-password".into();
    let e = VsphereProvider::new(&a)
        .expect("provider")
        .validate()
        .await
        .expect_err("wrong password");
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
    assert!(e.message.contains(USER), "{e}");
    assert!(
        !e.message.contains("not-the-password"),
        "the password leaked: {e}"
    );
}

#[tokio::test]
async fn validate_reports_an_unreachable_endpoint() {
    let mut a = account(&[]);
    a.endpoint = format!("https://127.0.0.1:{}/sdk", free_port());
    let e = VsphereProvider::new(&a)
        .expect("provider")
        .validate()
        .await
        .expect_err("nobody listens");
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
}

#[tokio::test]
async fn an_unpinned_certificate_is_refused_with_a_hint() {
    let mut a = account(&[]);
    a.ca_bundle = String::new();
    let e = VsphereProvider::new(&a)
        .expect("provider")
        .validate()
        .await
        .expect_err("untrusted");
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.message.contains("ca_bundle"), "{e}");
}

#[tokio::test]
async fn validate_names_each_missing_placement_and_its_choices() {
    let cases: &[(&str, &str, &str)] = &[
        ("datastore", "NoSuchDS", "LocalDS_0"),
        ("network", "No Such Net", "VM Network"),
        ("cluster", "NoCluster", "DC0_C0"),
        ("datacenter", "DC9", "DC0"),
        ("folder", "not/there", "palisade"),
        ("template", "no-template", "none"),
    ];
    for (key, value, choice) in cases {
        let e = provider(&[(key, value)]).validate().await.expect_err(key);
        assert_eq!(e.kind, ErrorKind::NotFound, "{key}: {e}");
        assert!(
            e.message.contains(&format!("{key} {value:?}")),
            "{key}: {e}"
        );
        if *choice != "none" && *key != "folder" {
            assert!(
                e.message.contains(choice),
                "{key} should list {choice}: {e}"
            );
        }
    }
}

#[tokio::test]
async fn ova_deploy_makes_a_template_found_again_without_a_second_upload() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = os_image("palisade-img-deploy", &build_ova(dir.path()));
    let p = provider(&[]);
    assert_eq!(nfc_uploads(&image.name), 0);
    let first = p.ensure_image(&image).await.expect("ensure_image");
    assert_eq!(first.name, image.name);
    assert_eq!(nfc_uploads(&image.name), 1, "the disk was uploaded once");

    let raw = Raw::login().await;
    let props = raw
        .props(
            "VirtualMachine",
            &first.id,
            &[
                "name",
                "config.template",
                "parent",
                "config.hardware.device",
            ],
        )
        .await;
    assert_eq!(props["name"].text, image.name);
    assert_eq!(props["config.template"].text, "true");
    let base = raw.find("DC0/vm/palisade").await.expect("base folder");
    assert_eq!(props["parent"].text, base);
    let disks = props["config.hardware.device"]
        .children
        .iter()
        .filter(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))
        .count();
    assert_eq!(disks, 1, "the OVF's disk is on the template");
    assert!(raw
        .find(&format!("DC0/vm/palisade/{}-importing", image.name))
        .await
        .is_none());

    let again = provider(&[])
        .ensure_image(&image)
        .await
        .expect("ensure_image again");
    assert_eq!(again, first);
    assert_eq!(nfc_uploads(&image.name), 1, "no second upload");
}

#[tokio::test]
async fn a_broken_ova_or_a_wrong_format_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("broken.ova");
    let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
    let mut h = tar::Header::new_ustar();
    h.set_size(4);
    h.set_cksum();
    b.append_data(&mut h, "disk1.vmdk", &b"data"[..])
        .expect("append");
    b.finish().expect("finish");
    drop(b);
    let p = provider(&[]);
    let e = p
        .ensure_image(&os_image("palisade-img-broken", &path))
        .await
        .expect_err("no ovf");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert!(e.message.contains(".ovf"), "{e}");
    let mut qcow = os_image("palisade-img-qcow", &path);
    qcow.format = ImageFormat::Qcow2;
    let e = p.ensure_image(&qcow).await.expect_err("qcow2");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
}

#[tokio::test]
async fn machines_lifecycle_create_tag_list_power_and_delete() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = os_image("palisade-img-lifecycle", &build_ova(dir.path()));
    let p = provider(&[]);
    let img = p.ensure_image(&image).await.expect("image");
    let cluster = cluster_id();
    let specs = [
        spec(
            &cluster,
            "cp",
            0,
            NodeRole::ControlPlane,
            (4, 8192, 40),
            &img,
        ),
        spec(
            &cluster,
            "workers",
            0,
            NodeRole::Worker,
            (2, 4096, 20),
            &img,
        ),
        spec(
            &cluster,
            "workers",
            1,
            NodeRole::Worker,
            (2, 4096, 20),
            &img,
        ),
    ];
    // Created concurrently: task waits must not steal each other's updates.
    let made = futures_util::future::join_all(specs.iter().map(|s| p.ensure_machine(s))).await;
    let made: Vec<_> = made
        .into_iter()
        .map(|m| m.expect("ensure_machine"))
        .collect();

    let raw = Raw::login().await;
    let fields = raw.field_keys().await;
    let folder = raw
        .find(&format!("DC0/vm/palisade/{cluster}"))
        .await
        .expect("the cluster's folder");
    for (m, s) in made.iter().zip(&specs) {
        assert_eq!(m.name, s.name);
        assert_eq!(m.cluster_id, cluster);
        assert_eq!(m.pool, s.pool);
        assert_eq!(m.state, MachineState::Running, "{m:?}");
        let props = raw
            .props(
                "VirtualMachine",
                &m.id,
                &[
                    "config.hardware.numCPU",
                    "config.hardware.memoryMB",
                    "config.hardware.device",
                    "config.extraConfig",
                    "customValue",
                    "runtime.powerState",
                    "parent",
                ],
            )
            .await;
        assert_eq!(
            props["config.hardware.numCPU"].text,
            s.size.cpus.to_string()
        );
        assert_eq!(
            props["config.hardware.memoryMB"].text,
            s.size.memory_mib.to_string()
        );
        assert_eq!(props["runtime.powerState"].text, "poweredOn");
        assert_eq!(props["parent"].text, folder);
        let devices = &props["config.hardware.device"].children;
        let disk = devices
            .iter()
            .find(|d| d.xsi_type.as_deref() == Some("VirtualDisk"))
            .expect("a disk");
        assert_eq!(
            disk.child_text("capacityInKB"),
            Some(
                (u64::from(s.size.disk_gib) * 1024 * 1024)
                    .to_string()
                    .as_str()
            ),
            "disk resized"
        );
        let nic = devices
            .iter()
            .find(|d| d.xsi_type.as_deref() == Some("VirtualVmxnet3"))
            .expect("a vmxnet3 NIC");
        assert_eq!(
            nic.path(&["backing", "deviceName"])
                .map(|e| e.text.as_str()),
            Some("VM Network")
        );
        let ec = extra(&props);
        let userdata = decode_guestinfo(
            &ec["guestinfo.userdata"],
            &ec["guestinfo.userdata.encoding"],
        )
        .expect("userdata decodes");
        assert_eq!(userdata, s.bootstrap.user_data);
        let metadata = decode_guestinfo(
            &ec["guestinfo.metadata"],
            &ec["guestinfo.metadata.encoding"],
        )
        .expect("metadata decodes");
        assert!(
            metadata.contains(&format!("instance-id: {}", s.name)),
            "{metadata}"
        );
        assert!(
            metadata.contains(&format!("local-hostname: {}", s.name)),
            "{metadata}"
        );
        let tags: BTreeMap<String, String> = props["customValue"]
            .children
            .iter()
            .filter_map(|v| {
                Some((
                    fields.get(v.child_text("key")?)?.clone(),
                    v.child_text("value")?.to_string(),
                ))
            })
            .collect();
        assert_eq!(tags.get(TAG_CLUSTER), Some(&cluster));
        assert_eq!(tags.get(TAG_POOL), Some(&s.pool));
        let role = if s.role == NodeRole::ControlPlane {
            "control-plane"
        } else {
            "worker"
        };
        assert_eq!(tags.get(TAG_ROLE).map(String::as_str), Some(role));
    }

    // Same spec again: the same VM, no duplicate.
    let again = p.ensure_machine(&specs[1]).await.expect("ensure again");
    assert_eq!(again.id, made[1].id);
    let listed = p.machines(&cluster).await.expect("machines");
    let mut want: Vec<(String, String)> = made
        .iter()
        .map(|m| (m.id.clone(), m.name.clone()))
        .collect();
    want.sort_by(|a, b| a.1.cmp(&b.1));
    let got: Vec<(String, String)> = listed
        .iter()
        .map(|m| (m.id.clone(), m.name.clone()))
        .collect();
    assert_eq!(got, want, "machines() lists exactly the cluster's machines");
    assert!(p
        .machines(&cluster_id())
        .await
        .expect("other cluster")
        .is_empty());

    // Power off and on.
    let w0 = made[1].reference();
    p.power(&w0, PowerOp::Off).await.expect("off");
    assert_eq!(
        p.machine(&w0).await.expect("read").expect("exists").state,
        MachineState::Off
    );
    p.power(&w0, PowerOp::Off).await.expect("off twice is fine");
    p.power(&w0, PowerOp::On).await.expect("on");
    assert_eq!(
        p.machine(&w0).await.expect("read").expect("exists").state,
        MachineState::Running
    );
    p.power(&w0, PowerOp::Reset).await.expect("reset");

    // Delete one (powered on): gone, and deleting again is fine.
    p.delete_machine(&w0).await.expect("delete");
    assert_eq!(p.machine(&w0).await.expect("read"), None);
    p.delete_machine(&w0).await.expect("delete again");
    assert_eq!(p.machines(&cluster).await.expect("machines").len(), 2);

    for m in &made {
        p.delete_machine(&m.reference()).await.expect("delete all");
    }
    let children = raw.props("Folder", &folder, &["childEntity"]).await;
    assert!(
        children
            .get("childEntity")
            .is_none_or(|c| c.children.is_empty()),
        "the cluster's folder is empty: {children:?}"
    );
    assert!(p.machines(&cluster).await.expect("machines").is_empty());
}

#[tokio::test]
async fn a_static_address_reaches_the_guest_and_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = os_image("palisade-img-static", &build_ova(dir.path()));
    let ip: &[(&str, &str)] = &[
        ("ip_pool", "10.20.0.10-10.20.0.60"),
        ("ip_prefix", "24"),
        ("gateway", "10.20.0.1"),
        ("dns", "10.20.0.2"),
    ];
    let p = provider(ip);
    let img = p.ensure_image(&image).await.expect("image");
    let cluster = cluster_id();
    let pool = palisade::providers::vsphere::IpPoolSettings::parse(&placement(ip))
        .expect("pool")
        .expect("configured");
    let mut s = spec(
        &cluster,
        "cp",
        0,
        NodeRole::ControlPlane,
        (2, 4096, 20),
        &img,
    );
    s.static_ip = Some(pool.static_ip(pool.addresses[21]));
    assert_eq!(
        s.static_ip,
        Some(StaticIp {
            address: "10.20.0.31/24".into(),
            gateway: "10.20.0.1".into(),
            dns: vec!["10.20.0.2".into()],
        })
    );
    let m = p.ensure_machine(&s).await.expect("ensure");
    // vcsim has no guest tools: the address comes from what the provider recorded.
    assert_eq!(m.addresses, ["10.20.0.31"]);
    let raw = Raw::login().await;
    let ec = extra(
        &raw.props("VirtualMachine", &m.id, &["config.extraConfig"])
            .await,
    );
    assert_eq!(ec[ADDRESS_KEY], "10.20.0.31/24");
    let md = decode_guestinfo(&ec["guestinfo.metadata"], "gzip+base64").expect("metadata");
    let net = md
        .lines()
        .find_map(|l| l.strip_prefix("network: "))
        .and_then(|b| decode_guestinfo(b, "base64"))
        .expect("network config in the metadata");
    assert!(
        net.contains("10.20.0.31/24") && net.contains("10.20.0.1"),
        "{net}"
    );
    p.delete_machine(&m.reference()).await.expect("delete");
}

#[tokio::test]
async fn clones_onto_a_distributed_port_group() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = os_image("palisade-img-dvs", &build_ova(dir.path()));
    let p = provider(&[("network", "DC0_DVPG0")]);
    let img = p.ensure_image(&image).await.expect("image");
    let cluster = cluster_id();
    let m = p
        .ensure_machine(&spec(
            &cluster,
            "w",
            0,
            NodeRole::Worker,
            (2, 2048, 10),
            &img,
        ))
        .await
        .expect("ensure");
    let raw = Raw::login().await;
    let props = raw
        .props("VirtualMachine", &m.id, &["config.hardware.device"])
        .await;
    let nic = props["config.hardware.device"]
        .children
        .iter()
        .find(|d| d.xsi_type.as_deref() == Some("VirtualVmxnet3"))
        .expect("nic");
    let backing = nic.child("backing").expect("backing");
    assert_eq!(
        backing.xsi_type.as_deref(),
        Some("VirtualEthernetCardDistributedVirtualPortBackingInfo")
    );
    let pg = raw.find("DC0/network/DC0_DVPG0").await.expect("port group");
    assert_eq!(
        backing
            .path(&["port", "portgroupKey"])
            .map(|e| e.text.clone()),
        Some(pg)
    );
    p.delete_machine(&m.reference()).await.expect("delete");
}

#[tokio::test]
async fn deleting_a_vm_palisade_did_not_create_is_refused() {
    let raw = Raw::login().await;
    let id = raw.find("DC0/vm/DC0_H0_VM0").await.expect("vcsim's own VM");
    let e = provider(&[])
        .delete_machine(&MachineRef {
            id: id.clone(),
            name: "DC0_H0_VM0".into(),
        })
        .await
        .expect_err("not ours");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
    assert_eq!(raw.find("DC0/vm/DC0_H0_VM0").await, Some(id));
}

/// A clone that finished on vCenter after the appliance died (untagged, powered off, in the
/// cluster's folder) is completed by the next ensure, never cloned twice, and can be deleted.
#[tokio::test]
async fn a_clone_cut_off_before_tagging_is_completed_or_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = os_image("palisade-img-cutoff", &build_ova(dir.path()));
    let p = provider(&[]);
    let img = p.ensure_image(&image).await.expect("image");
    let cluster = cluster_id();
    let first = spec(
        &cluster,
        "cp",
        0,
        NodeRole::ControlPlane,
        (2, 2048, 20),
        &img,
    );
    p.ensure_machine(&first).await.expect("first machine");
    let raw = Raw::login().await;
    let folder = raw
        .find(&format!("DC0/vm/palisade/{cluster}"))
        .await
        .expect("the cluster's folder");
    let source = raw.find("DC0/vm/DC0_H0_VM0").await.expect("vcsim's own VM");
    let cut_off = spec(
        &cluster,
        "workers",
        0,
        NodeRole::Worker,
        (1, 1024, 10),
        &img,
    );
    let cut_off_id = raw
        .clone_untagged(&source, &folder, &cluster, &cut_off.name)
        .await;
    let listed = p.machines(&cluster).await.expect("list");
    let found = listed
        .iter()
        .find(|m| m.name == cut_off.name)
        .expect("the cut-off clone is listed by its folder");
    assert_eq!(found.state, MachineState::Off, "{found:?}");

    let m = p
        .ensure_machine(&cut_off)
        .await
        .expect("ensure completes it");
    assert_eq!(m.id, cut_off_id, "the same VM, not a second clone");
    assert_eq!(p.machines(&cluster).await.expect("list").len(), 2);
    let props = raw
        .props(
            "VirtualMachine",
            &m.id,
            &["customValue", "runtime.powerState"],
        )
        .await;
    assert_eq!(props["runtime.powerState"].text, "poweredOn");
    let fields = raw.field_keys().await;
    let tagged_cluster = props["customValue"].children.iter().any(|v| {
        v.child_text("key")
            .and_then(|k| fields.get(k))
            .is_some_and(|n| n == "palisade-cluster")
            && v.child_text("value") == Some(cluster.as_str())
    });
    assert!(tagged_cluster, "tagged with its cluster: {props:?}");

    // An untagged clone in the cluster's folder is Palisade's and may be deleted.
    let orphan = format!("c-workers-1-{}", &cluster[..6]);
    let orphan_id = raw
        .clone_untagged(&source, &folder, &cluster, &orphan)
        .await;
    p.delete_machine(&MachineRef {
        id: orphan_id,
        name: orphan.clone(),
    })
    .await
    .expect("an untagged clone in the cluster's folder is deleted");
    assert_eq!(
        raw.find(&format!("DC0/vm/palisade/{cluster}/{orphan}"))
            .await,
        None
    );
    for m in p.machines(&cluster).await.expect("list") {
        p.delete_machine(&m.reference()).await.expect("clean up");
    }
}

#[tokio::test]
async fn a_lost_session_is_reestablished_transparently() {
    let p = provider(&[]);
    p.validate().await.expect("first login");
    let key = p.session_key();
    assert!(!key.is_empty());
    // End the provider's session on the server side, as an expiry or a restart would.
    let raw = Raw::login().await;
    raw.call(&format!(
        r#"<TerminateSession xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><sessionId>{key}</sessionId></TerminateSession>"#
    ))
    .await;
    let check = p.validate().await.expect("the next call logs in again");
    assert!(
        check
            .checks
            .iter()
            .any(|c| c == "datastore LocalDS_0 found"),
        "{check:?}"
    );
    assert_ne!(p.session_key(), key, "a new session was made");
}

/// An account on the shared vcsim for the end-to-end tests through the appliance: machines
/// cloned from one of vcsim's own VMs, with static addresses from an IP pool.
fn e2e_target(password: &str, os_image: &str) -> crate::provisioning::Target {
    let v = vcsim();
    crate::provisioning::Target {
        kind: "vsphere",
        endpoint: v.sdk.clone(),
        ca_bundle: v.cert_pem.clone(),
        username: USER.into(),
        password: password.into(),
        placement: serde_json::json!({
            "datacenter": "DC0", "cluster": "DC0_C0", "datastore": "LocalDS_0",
            "network": "VM Network",
            "ip_pool": "10.20.0.10-10.20.0.40", "ip_prefix": "24", "gateway": "10.20.0.1",
            "dns": "10.20.0.2",
        }),
        os_values: format!("image:\n  name: {os_image}\n"),
        media: None,
    }
}

/// The issue's scenario through the appliance on vcsim.
#[tokio::test]
async fn provisions_scales_heals_and_deletes_a_cluster_through_the_appliance() {
    let target = e2e_target(PASSWORD, "DC0_C0_RP0_VM0");
    crate::provisioning::full_lifecycle(&target, Duration::from_secs(180)).await;
}

/// `kill -9` of the appliance mid-provisioning: no VM created twice.
#[tokio::test]
async fn an_appliance_killed_mid_provisioning_creates_no_vm_twice() {
    let target = e2e_target(PASSWORD, "DC0_C0_RP0_VM0");
    crate::provisioning::crash_mid_provisioning(&target, 4, Duration::from_secs(180)).await;
}

/// Wrong credentials, an unreachable vCenter, a missing template and network each say so.
#[tokio::test]
async fn broken_accounts_and_templates_give_clear_errors_through_the_appliance() {
    let limit = Duration::from_secs(120);
    let wrong = e2e_target("not-the-password", "DC0_C0_RP0_VM0");
    crate::provisioning::clear_error(&wrong, Some("credentials"), "username and password", limit)
        .await;
    let mut unreachable = e2e_target(PASSWORD, "DC0_C0_RP0_VM0");
    let closed = crate::support::free_port();
    unreachable.endpoint = format!("https://127.0.0.1:{closed}/sdk");
    crate::provisioning::clear_error(&unreachable, Some("unreachable"), "127.0.0.1", limit).await;
    let no_template = e2e_target(PASSWORD, "no-such-template");
    crate::provisioning::clear_error(&no_template, None, "no-such-template", limit).await;
    let mut no_network = e2e_target(PASSWORD, "DC0_C0_RP0_VM0");
    no_network.placement["network"] = serde_json::json!("no-such-network");
    crate::provisioning::clear_error(&no_network, Some("not-found"), "no-such-network", limit)
        .await;
}
