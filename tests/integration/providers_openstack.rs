//! The OpenStack provider against a real OpenStack (Keystone, Glance, Nova with its fake compute
//! driver, Neutron) from `../shared/peers/openstack.sh`, as the `demo` project's member user.
//!
//! The stack takes 90 s and 1.6 GB to start, so it is shared: the fixture reuses a running one
//! (`openstack.sh start` on a running stack only prints its settings), or reads the settings
//! `.ci/run` writes when it starts the stack in the background (`PALISADE_OPENSTACK_PEER_ENV`),
//! and leaves it running. Every test uses its own names and deletes what it creates.

use crate::support::peers_dir;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use palisade::model::{CloudKind, Credentials, MachineSize, NodeRole};
use palisade::providers::{
    self, Account, Bootstrap, Context, ErrorKind, ImageFormat, ImageLocation, ImageRef, Machine,
    MachineRef, MachineSpec, MachineState, OsImage, PowerOp, Provider, StaticIp,
};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// The running peer and what the fixture set up in it.
struct Peer {
    env: BTreeMap<String, String>,
    app_id: String,
    app_secret: String,
    /// The Glance image (raw, 1 KiB) the machine tests boot from.
    boot_image: String,
}

impl Peer {
    fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("peer output lacks {k}"))
    }
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The KEY=VALUE settings of the running stack.
fn peer_settings() -> BTreeMap<String, String> {
    let script = peers_dir().join("openstack.sh");
    assert!(
        script.exists(),
        "{} is missing: the OpenStack tests need the shared peers (set PALISADE_PEERS_DIR)",
        script.display()
    );
    if let Some(file) = std::env::var_os("PALISADE_OPENSTACK_PEER_ENV") {
        // .ci/run starts the stack in the background and writes its settings here when done.
        let file = PathBuf::from(file);
        let failed = file.with_extension("failed");
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                let env = parse_env(&text);
                if env.contains_key("OS_PEER_DIR") {
                    return env;
                }
            }
            assert!(
                !failed.exists(),
                "the OpenStack peer failed to start in the background: {}",
                std::fs::read_to_string(&failed).unwrap_or_default()
            );
            assert!(
                Instant::now() < deadline,
                "the OpenStack peer did not write {} within 900 s",
                file.display()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    // Starts the stack, or (when it runs) only prints its settings; it stays up after the
    // tests: the next run reuses it.
    let out = Command::new(&script)
        .arg("start")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run openstack.sh start");
    assert!(
        out.status.success(),
        "openstack.sh start failed ({}); install the peer with `{} install` (root)",
        out.status,
        script.display()
    );
    parse_env(&String::from_utf8_lossy(&out.stdout))
}

/// One Python run with the system's openstacksdk: as admin, give the demo project room for
/// parallel tests; as demo, a network with a subnet, a small boot image and an application
/// credential for this process; and remove what crashed earlier runs left behind.
const SETUP: &str = r#"
import json, os, sys, tempfile, datetime
import openstack
pid = sys.argv[1]
admin = openstack.connect(cloud='peer-admin')
demo = openstack.connect(cloud='peer-demo')
project = admin.identity.find_project('demo', ignore_missing=False)
admin.set_compute_quotas(project.id, instances=60, cores=120, ram=400000, server_groups=60, server_group_members=60)
net = demo.network.find_network('palisade-test-net')
if net is None:
    net = demo.network.create_network(name='palisade-test-net')
# Neutron allocates .2-.99; the static addresses of the tests are .100-.250.
pools = [{'start': '10.77.0.2', 'end': '10.77.0.99'}]
subnets = list(demo.network.subnets(network_id=net.id))
if not subnets:
    demo.network.create_subnet(name='palisade-test-subnet', network_id=net.id, ip_version=4, cidr='10.77.0.0/24', allocation_pools=pools)
elif subnets[0].allocation_pools != pools:
    demo.network.update_subnet(subnets[0], allocation_pools=pools)
img = demo.image.find_image('palisade-test-boot')
if img is not None and img.status != 'active':
    demo.image.delete_image(img)
    img = None
if img is None:
    with tempfile.NamedTemporaryFile(suffix='.raw') as f:
        f.write(b'\0' * 1024); f.flush()
        img = demo.create_image('palisade-test-boot', filename=f.name, disk_format='raw', container_format='bare', wait=True)
old = datetime.datetime.utcnow() - datetime.timedelta(minutes=30)
for s in demo.compute.servers():
    if s.name.startswith('pt-') and datetime.datetime.strptime(s.created_at[:19], '%Y-%m-%dT%H:%M:%S') < old:
        demo.compute.delete_server(s)
for g in demo.compute.server_groups():
    if g.name.startswith('palisade-') and not g.member_ids:
        demo.compute.delete_server_group(g)
for p in demo.network.ports():
    if (p.description or '').startswith('palisade machine pt-') and not p.device_id:
        demo.network.delete_port(p)
user = demo.current_user_id
for ac in demo.identity.application_credentials(user=user):
    owner = ac.name.rsplit('-', 1)[-1]
    if ac.name.startswith('palisade-test-') and not os.path.exists('/proc/' + owner):
        demo.identity.delete_application_credential(user, ac)
ac = demo.identity.create_application_credential(user=user, name='palisade-test-' + pid)
print(json.dumps({'app_id': ac.id, 'app_secret': ac.secret, 'boot_image': img.id}))
"#;

fn peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(|| {
        let env = peer_settings();
        let out = Command::new("/usr/bin/python3")
            .args(["-c", SETUP, &std::process::id().to_string()])
            .env("OS_CLIENT_CONFIG_FILE", &env["OS_CLIENT_CONFIG_FILE"])
            .env_remove("OS_CLOUD")
            .stdin(Stdio::null())
            .output()
            .expect("run /usr/bin/python3");
        assert!(
            out.status.success(),
            "test setup in the OpenStack peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("setup output");
        Peer {
            app_id: v["app_id"].as_str().expect("app_id").to_string(),
            app_secret: v["app_secret"].as_str().expect("app_secret").to_string(),
            boot_image: v["boot_image"].as_str().expect("boot_image").to_string(),
            env,
        }
    })
}

fn account(placement: &[(&str, &str)], credentials: Credentials) -> Account {
    let p = peer();
    Account {
        kind: CloudKind::Openstack,
        endpoint: p.var("OS_AUTH_URL").to_string(),
        ca_bundle: String::new(),
        credentials,
        placement: placement
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn demo_password(password: &str) -> Credentials {
    Credentials {
        username: peer().var("DEMO_USERNAME").to_string(),
        password: password.to_string(),
        ..Credentials::default()
    }
}

/// The demo project with a password and the test network.
fn demo(extra: &[(&str, &str)]) -> Box<dyn Provider> {
    let mut placement = vec![("project", "demo"), ("network", "palisade-test-net")];
    placement.extend_from_slice(extra);
    let password = peer().var("DEMO_PASSWORD").to_string();
    providers::connect(
        &account(&placement, demo_password(&password)),
        &Context::default(),
    )
    .expect("connect")
}

fn unique(what: &str) -> String {
    format!(
        "pt-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn spec(name: &str, cluster: &str, pool: &str, role: NodeRole) -> MachineSpec {
    MachineSpec {
        name: name.to_string(),
        cluster_id: cluster.to_string(),
        pool: pool.to_string(),
        role,
        size: MachineSize {
            cpus: 1,
            memory_mib: 1024,
            disk_gib: 10,
        },
        image: ImageRef {
            id: peer().boot_image.clone(),
            name: "palisade-test-boot".into(),
        },
        bootstrap: Bootstrap {
            user_data: format!("#cloud-config\nhostname: {name}\n"),
            meta_data: format!("instance-id: {name}\n"),
            network_config: None,
        },
        static_ip: None,
    }
}

/// Poll a machine until `done` holds (at most 120 s).
async fn wait_for(
    p: &dyn Provider,
    m: &MachineRef,
    what: &str,
    done: impl Fn(&Option<Machine>) -> bool,
) -> Option<Machine> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = p.machine(m).await.expect("read machine");
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became {what}: {now:?}",
            m.name
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Tests that build servers take a permit: the peer's Nova keeps its cell database in SQLite,
/// which drops builds ("database is locked") when many overlap.
static BUILDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Ensure a machine and wait until it runs. The peer's SQLite-backed Nova sometimes fails a
/// build under concurrent writes ("database is locked"): the server goes to ERROR ("Exceeded
/// maximum number of retries") or stays in BUILD for good. Such a machine is deleted and
/// ensured again, as the orchestrator does with a failed or stuck machine (3 tries at most).
async fn ensure_running(p: &dyn Provider, spec: &MachineSpec) -> Machine {
    ensure_settled(p, spec, |s| *s == MachineState::Running).await
}

/// [`ensure_running`] for any final state `done` accepts.
async fn ensure_settled(
    p: &dyn Provider,
    spec: &MachineSpec,
    done: impl Fn(&MachineState) -> bool,
) -> Machine {
    for attempt in 1..=3 {
        let m = retried("ensure", || p.ensure_machine(spec))
            .await
            .reference();
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let now = p
                .machine(&m)
                .await
                .expect("read machine")
                .expect("machine exists");
            match &now.state {
                s if done(s) => return now,
                MachineState::Failed(why)
                    if !why.contains("Exceeded maximum number of retries") =>
                {
                    panic!("{} failed: {why}", spec.name)
                }
                MachineState::Failed(_) => break now.state,
                _ if Instant::now() > deadline => break now.state,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        assert!(
            attempt < 3,
            "{} did not settle in 3 tries: {state:?}",
            spec.name
        );
        eprintln!(
            "{}: the peer lost the build ({state:?}); deleting and ensuring again",
            spec.name
        );
        retried("delete failed machine", || p.delete_machine(&m)).await;
    }
    unreachable!("the loop returns or panics")
}

async fn running(p: &dyn Provider, m: &MachineRef) -> Machine {
    wait_for(p, m, "running", |m| {
        assert!(
            !matches!(
                m,
                Some(Machine {
                    state: MachineState::Failed(_),
                    ..
                })
            ),
            "machine failed: {m:?}"
        );
        matches!(
            m,
            Some(Machine {
                state: MachineState::Running,
                ..
            })
        )
    })
    .await
    .expect("machine")
}

/// A token of the admin project, for checks the demo user may not make.
async fn admin_token(http: &reqwest::Client) -> String {
    let p = peer();
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": p.var("OS_USERNAME"), "domain": {"name": "Default"}, "password": p.var("OS_PASSWORD")}}},
        "scope": {"project": {"name": p.var("OS_PROJECT_NAME"), "domain": {"name": "Default"}}}}});
    let r = http
        .post(format!("{}/auth/tokens", p.var("OS_AUTH_URL")))
        .json(&body)
        .send()
        .await
        .expect("admin login");
    assert!(r.status().is_success(), "admin login: {}", r.status());
    r.headers()["x-subject-token"]
        .to_str()
        .expect("token")
        .to_string()
}

/// `GET` an admin API path with a Nova microversion.
async fn admin_get(url: &str, microversion: &str) -> Value {
    let http = reqwest::Client::new();
    let token = admin_token(&http).await;
    let r = http
        .get(url)
        .header("X-Auth-Token", token)
        .header("OpenStack-API-Version", format!("compute {microversion}"))
        .send()
        .await
        .expect("admin get");
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.expect("json")
}

#[tokio::test]
async fn validate_accepts_a_password_and_an_application_credential() {
    let check = demo(&[
        ("flavor", "m1.tiny"),
        ("security_group", "default"),
        ("availability_zone", "nova"),
    ])
    .validate()
    .await
    .expect("validate with a password");
    let text = check.checks.join("\n");
    assert!(text.contains("project demo"), "{text}");
    assert!(text.contains("flavor m1.tiny"), "{text}");
    assert!(text.contains("network palisade-test-net"), "{text}");
    assert!(text.contains("security group default"), "{text}");
    assert!(
        text.contains("Nova (compute) endpoint http://127.0.0.1:8774/v2.1"),
        "{text}"
    );
    assert!(
        check.endpoint_product.contains("Keystone v3"),
        "{}",
        check.endpoint_product
    );

    let p = peer();
    let app = Credentials {
        application_credential_id: p.app_id.clone(),
        application_credential_secret: p.app_secret.clone(),
        ..Credentials::default()
    };
    let provider = providers::connect(
        &account(
            &[("project", "demo"), ("network", "palisade-test-net")],
            app.clone(),
        ),
        &Context::default(),
    )
    .expect("connect");
    let check = provider
        .validate()
        .await
        .expect("validate with an application credential");
    assert!(
        check
            .checks
            .join("\n")
            .contains("an application credential"),
        "{check:?}"
    );

    // The credential belongs to demo: naming another project is caught.
    let other = providers::connect(&account(&[("project", "admin")], app), &Context::default())
        .expect("connect");
    let err = other.validate().await.expect_err("wrong project");
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains("project demo"), "{err}");
}

#[tokio::test]
async fn validate_rejects_a_wrong_password_and_a_wrong_secret() {
    let p = providers::connect(
        &account(&[("project", "demo")], demo_password("not-the-password")),
        &Context::default(),
    )
    .expect("connect");
    let err = p.validate().await.expect_err("wrong password");
    assert_eq!(err.kind, ErrorKind::Credentials, "{err}");
    assert!(err.message.contains("user demo"), "{err}");
    assert!(err.message.contains("password"), "{err}");

    let app = Credentials {
        application_credential_id: peer().app_id.clone(),
        application_credential_secret: "wrong".into(),
        ..Credentials::default()
    };
    let p = providers::connect(&account(&[], app), &Context::default()).expect("connect");
    let err = p.validate().await.expect_err("wrong secret");
    assert_eq!(err.kind, ErrorKind::Credentials, "{err}");
    assert!(err.message.contains("application credential"), "{err}");

    // Right password, but a project the user has no role on.
    let password = peer().var("DEMO_PASSWORD").to_string();
    let p = providers::connect(
        &account(&[("project", "admin")], demo_password(&password)),
        &Context::default(),
    )
    .expect("connect");
    let err = p.validate().await.expect_err("no role on admin");
    assert_eq!(err.kind, ErrorKind::Permission, "{err}");
    assert!(err.message.contains("no role on project admin"), "{err}");
}

#[tokio::test]
async fn validate_reports_an_unreachable_keystone() {
    let mut acc = account(&[("project", "demo")], demo_password("x"));
    // A loopback port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    acc.endpoint = format!("http://127.0.0.1:{port}/v3");
    let p = providers::connect(&acc, &Context::default()).expect("connect");
    let err = p.validate().await.expect_err("unreachable");
    assert_eq!(err.kind, ErrorKind::Unreachable, "{err}");
    assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn validate_names_a_missing_flavor_network_and_security_group() {
    let err = demo(&[("flavor", "m9.huge")])
        .validate()
        .await
        .expect_err("flavor");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(
        err.message.contains("\"m9.huge\"") && err.message.contains("m1.tiny"),
        "{err}"
    );

    let err = demo(&[("network", "no-such-net")])
        .validate()
        .await
        .expect_err("network");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(
        err.message.contains("network \"no-such-net\"")
            && err.message.contains("palisade-test-net"),
        "{err}"
    );

    let err = demo(&[("security_group", "no-such-group")])
        .validate()
        .await
        .expect_err("group");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains("default"), "{err}");

    let err = demo(&[("availability_zone", "moon")])
        .validate()
        .await
        .expect_err("zone");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains("nova"), "{err}");
}

#[tokio::test]
async fn ensure_machine_names_a_missing_image() {
    let p = demo(&[]);
    let mut s = spec(
        &unique("noimg"),
        &uuid::Uuid::now_v7().to_string(),
        "w",
        NodeRole::Worker,
    );
    s.image = ImageRef {
        id: "00000000-0000-4000-8000-000000000000".into(),
        name: "ubuntu-missing".into(),
    };
    let err = p.ensure_machine(&s).await.expect_err("missing image");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(
        err.message.contains("ubuntu-missing") && err.message.contains("palisade-test-boot"),
        "{err}"
    );
    assert!(p.machines(&s.cluster_id).await.expect("list").is_empty());
}

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

#[tokio::test]
async fn ensure_image_uploads_a_qcow2_once_and_redoes_a_half_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("64M")
        .status()
        .expect("qemu-img (Debian package qemu-utils)");
    assert!(st.success());
    let size = std::fs::metadata(&path).expect("size").len();
    let name = unique("img");
    let image = OsImage {
        name: name.clone(),
        format: ImageFormat::Qcow2,
        size,
        sha256: sha256_file(&path),
        location: ImageLocation::File(path.clone()),
    };
    let p = demo(&[]);
    let http = reqwest::Client::new();
    let token = admin_token(&http).await;
    let glance = peer().var("IMAGE_URL").to_string();
    let by_name = |token: String| {
        let http = http.clone();
        let url = format!("{glance}/v2/images?name={name}");
        async move {
            let v: Value = http
                .get(url)
                .header("X-Auth-Token", token)
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("json");
            v["images"].as_array().cloned().unwrap_or_default()
        }
    };

    // A crash during an earlier upload left a queued image with the same name and checksum.
    let concrete = palisade::providers::openstack::OpenStack::new(&account(
        &[("project", "demo")],
        demo_password(peer().var("DEMO_PASSWORD")),
    ))
    .expect("provider");
    let user_token = concrete.token().await.expect("token");
    let r = http
        .post(format!("{glance}/v2/images"))
        .header("X-Auth-Token", &user_token)
        .json(
            &json!({"name": name, "disk_format": "qcow2", "container_format": "bare",
                      "palisade_sha256": image.sha256}),
        )
        .send()
        .await
        .expect("create queued image");
    assert_eq!(r.status(), 201);
    let queued: Value = r.json().await.expect("json");
    let queued_id = queued["id"].as_str().expect("id").to_string();

    let first = p.ensure_image(&image).await.expect("upload");
    assert_ne!(first.id, queued_id, "the half-uploaded image is not reused");
    let images = by_name(token.clone()).await;
    assert_eq!(images.len(), 1, "the queued image is deleted: {images:?}");
    assert_eq!(images[0]["status"], "active");
    assert_eq!(images[0]["size"], size);
    assert_eq!(images[0]["disk_format"], "qcow2");
    let updated = images[0]["updated_at"].clone();

    let second = p.ensure_image(&image).await.expect("again");
    assert_eq!(second, first);
    let images = by_name(token.clone()).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["updated_at"], updated, "no second upload");

    // Bytes that do not match the declared checksum are refused and not left behind.
    let wrong = OsImage {
        name: unique("img-bad"),
        sha256: "0".repeat(64),
        ..image.clone()
    };
    let err = p.ensure_image(&wrong).await.expect_err("checksum");
    assert_eq!(err.kind, ErrorKind::Invalid, "{err}");
    assert!(err.message.contains(&image.sha256), "{err}");

    let r = http
        .delete(format!("{glance}/v2/images/{}", first.id))
        .header("X-Auth-Token", &user_token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn creates_a_cluster_finds_it_again_and_deletes_it() {
    // Soft anti-affinity: the peer's scheduler lacks the filter the hard policy needs.
    let p = demo(&[("anti_affinity", "soft")]);
    let cluster = uuid::Uuid::now_v7().to_string();
    let base = unique("cl");
    let specs = [
        spec(
            &format!("{base}-cp-0"),
            &cluster,
            "cp",
            NodeRole::ControlPlane,
        ),
        spec(&format!("{base}-w-0"), &cluster, "w", NodeRole::Worker),
        spec(&format!("{base}-w-1"), &cluster, "w", NodeRole::Worker),
    ];
    let _permit = BUILDS.acquire().await.expect("permit");
    let mut machines = Vec::new();
    for s in &specs {
        let m = ensure_running(p.as_ref(), s).await;
        assert_eq!(
            (m.name.as_str(), m.cluster_id.as_str()),
            (s.name.as_str(), cluster.as_str())
        );
        assert!(
            m.addresses.iter().any(|a| a.starts_with("10.77.0.")),
            "{m:?}"
        );
        machines.push(m);
    }

    // What Nova holds, read as admin (user data needs it, at microversion 2.3 or later).
    let compute = peer().var("COMPUTE_URL").to_string();
    for (s, m) in specs.iter().zip(&machines) {
        let v = admin_get(&format!("{compute}/servers/{}", m.id), "2.71").await;
        let v = &v["server"];
        assert_eq!(
            v["flavor"]["original_name"], "m1.small",
            "smallest flavor with 1024 MiB and 10 GiB"
        );
        assert_eq!(v["image"]["id"], peer().boot_image);
        assert!(v["addresses"]["palisade-test-net"].is_array(), "{v}");
        assert_eq!(v["metadata"]["palisade-cluster"], cluster);
        assert_eq!(v["metadata"]["palisade-pool"], s.pool);
        let role = if s.role == NodeRole::ControlPlane {
            "control-plane"
        } else {
            "worker"
        };
        assert_eq!(v["metadata"]["palisade-role"], role);
        let tags: Vec<&str> = v["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            tags.contains(&format!("palisade-cluster={cluster}").as_str()),
            "{tags:?}"
        );
        assert!(
            tags.contains(&format!("palisade-role={role}").as_str()),
            "{tags:?}"
        );
        let groups = v["server_groups"].as_array().expect("server_groups").len();
        assert_eq!(
            groups,
            usize::from(s.role == NodeRole::ControlPlane),
            "anti-affinity group for control planes only"
        );
        let user_data = v["OS-EXT-SRV-ATTR:user_data"].as_str().expect("user_data");
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(user_data)
            .expect("base64");
        assert_eq!(
            String::from_utf8(decoded).expect("utf8"),
            s.bootstrap.user_data
        );
    }
    let cp = admin_get(&format!("{compute}/servers/{}", machines[0].id), "2.71").await;
    let group_id = cp["server"]["server_groups"][0]
        .as_str()
        .expect("group")
        .to_string();
    let group = admin_get(&format!("{compute}/os-server-groups/{group_id}"), "2.64").await;
    assert_eq!(group["server_group"]["policy"], "soft-anti-affinity");

    // Ensure again: the same machines, no duplicates.
    for (s, m) in specs.iter().zip(&machines) {
        let again = retried("ensure again", || p.ensure_machine(s)).await;
        assert_eq!(again.id, m.id);
    }
    let listed = p.machines(&cluster).await.expect("machines");
    let mut names: Vec<&str> = listed.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            specs[0].name.as_str(),
            specs[1].name.as_str(),
            specs[2].name.as_str()
        ]
    );
    assert!(listed.iter().all(|m| m.state == MachineState::Running));
    assert!(p
        .machines(&uuid::Uuid::now_v7().to_string())
        .await
        .expect("other")
        .is_empty());

    for m in &machines {
        let r = m.reference();
        retried("delete", || p.delete_machine(&r)).await;
        assert_eq!(p.machine(&m.reference()).await.expect("read"), None);
        p.delete_machine(&m.reference())
            .await
            .expect("delete again: gone is fine");
    }
    let left = p.machines(&cluster).await.expect("machines");
    assert!(left.is_empty(), "{left:?}");
    let http = reqwest::Client::new();
    let token = admin_token(&http).await;
    let r = http
        .get(format!("{compute}/os-server-groups/{group_id}"))
        .header("X-Auth-Token", token)
        .send()
        .await
        .expect("group");
    assert_eq!(r.status(), 404, "the empty server group is deleted");
}

#[tokio::test]
async fn a_lost_create_answer_and_a_racing_duplicate_leave_one_server() {
    // The first create reached Nova but the answer never came back: the server exists with the
    // machine's name and metadata, made here directly with the demo user's token.
    let concrete = palisade::providers::openstack::OpenStack::new(&account(
        &[("project", "demo"), ("network", "palisade-test-net")],
        demo_password(peer().var("DEMO_PASSWORD")),
    ))
    .expect("provider");
    let token = concrete.token().await.expect("token");
    let cluster = uuid::Uuid::now_v7().to_string();
    let s = spec(&unique("lost"), &cluster, "w", NodeRole::Worker);
    let _permit = BUILDS.acquire().await.expect("permit");
    let http = reqwest::Client::new();
    let net: Value = http
        .get(format!(
            "{}/v2.0/networks?name=palisade-test-net",
            peer().var("NETWORK_URL")
        ))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .expect("networks")
        .json()
        .await
        .expect("json");
    let create = || async {
        let r = http
            .post(format!("{}/servers", peer().var("COMPUTE_URL")))
            .header("X-Auth-Token", &token)
            .header("OpenStack-API-Version", "compute 2.52")
            .json(&json!({"server": {"name": s.name, "imageRef": peer().boot_image, "flavorRef": "2",
                "networks": [{"uuid": net["networks"][0]["id"]}],
                "tags": [format!("palisade-cluster={cluster}")],
                "metadata": {"palisade-cluster": cluster, "palisade-pool": "w", "palisade-role": "worker"}}}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.expect("json");
        v["server"]["id"].as_str().expect("id").to_string()
    };
    let first_id = create().await;
    // And a second caller raced the first: two servers for one machine.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second_id = create().await;
    assert_eq!(concrete.machines(&cluster).await.expect("list").len(), 2);

    let m = retried("ensure", || concrete.ensure_machine(&s)).await;
    assert_eq!(m.id, first_id, "the oldest server is the machine");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: Vec<String> = concrete
            .machines(&cluster)
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.id)
            .collect();
        if ids == vec![first_id.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the duplicate {second_id} is not deleted: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = m.reference();
    retried("delete", || concrete.delete_machine(&r)).await;
    assert!(concrete.machines(&cluster).await.expect("list").is_empty());
}

/// An address of 10.77.0.100-250 no port of the test network holds.
async fn free_static_address() -> String {
    let concrete = palisade::providers::openstack::OpenStack::new(&account(
        &[("project", "demo")],
        demo_password(peer().var("DEMO_PASSWORD")),
    ))
    .expect("provider");
    let token = concrete.token().await.expect("token");
    let ports: Value = reqwest::Client::new()
        .get(format!("{}/v2.0/ports", peer().var("NETWORK_URL")))
        .header("X-Auth-Token", &token)
        .send()
        .await
        .expect("ports")
        .json()
        .await
        .expect("json");
    let used: Vec<String> = ports["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .flat_map(|p| p["fixed_ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["ip_address"].as_str().map(str::to_string))
        .collect();
    let start = 100 + uuid::Uuid::new_v4().as_u128() % 151;
    (0..151)
        .map(|i| format!("10.77.0.{}", 100 + (start - 100 + i) % 151))
        .find(|a| !used.contains(a))
        .expect("a free address in 10.77.0.100-250")
}

/// Run a provider call, again after a transient error (at most 3 tries), as the orchestrator
/// does: the peer's SQLite-backed Nova answers 500 now and then under concurrent writes.
async fn retried<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, providers::ProviderError>>,
{
    for attempt in 1..=3 {
        match call().await {
            Ok(v) => return v,
            Err(e) if e.is_transient() && attempt < 3 => {
                eprintln!("{what}: transient error, trying again: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

#[tokio::test]
async fn a_static_address_boots_on_its_own_port_which_goes_with_the_machine() {
    let p = demo(&[("security_group", "default")]);
    let cluster = uuid::Uuid::now_v7().to_string();
    let mut s = spec(&unique("ip"), &cluster, "w", NodeRole::Worker);
    // Outside the subnet's allocation pool (.2-.99), and unused: the subnet is shared.
    let address = free_static_address().await;
    s.static_ip = Some(StaticIp {
        address: format!("{address}/24"),
        gateway: "10.77.0.1".into(),
        dns: vec!["10.77.0.1".into()],
    });
    let _permit = BUILDS.acquire().await.expect("permit");
    let m = ensure_running(p.as_ref(), &s).await;
    assert_eq!(m.addresses, vec![address.clone()]);
    assert_eq!(retried("again", || p.ensure_machine(&s)).await.id, m.id);

    let concrete = palisade::providers::openstack::OpenStack::new(&account(
        &[("project", "demo")],
        demo_password(peer().var("DEMO_PASSWORD")),
    ))
    .expect("provider");
    let token = concrete.token().await.expect("token");
    let ports_url = format!("{}/v2.0/ports?name={}", peer().var("NETWORK_URL"), s.name);
    let http = reqwest::Client::new();
    let ports: Value = http
        .get(&ports_url)
        .header("X-Auth-Token", &token)
        .send()
        .await
        .expect("ports")
        .json()
        .await
        .expect("json");
    let ports = ports["ports"].as_array().expect("ports").clone();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["device_id"], m.id.as_str());
    assert_eq!(ports[0]["fixed_ips"][0]["ip_address"], address.as_str());
    let tags: Vec<&str> = ports[0]["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tags.contains(&format!("palisade-cluster={cluster}").as_str()),
        "{tags:?}"
    );

    let r = m.reference();
    retried("delete", || p.delete_machine(&r)).await;
    let ports: Value = http
        .get(&ports_url)
        .header("X-Auth-Token", &token)
        .send()
        .await
        .expect("ports")
        .json()
        .await
        .expect("json");
    assert_eq!(
        ports["ports"],
        json!([]),
        "the machine's port is deleted with it"
    );
}

#[tokio::test]
async fn powers_a_machine_off_and_on() {
    let p = demo(&[("flavor", "m1.tiny"), ("security_group", "default")]);
    let cluster = uuid::Uuid::now_v7().to_string();
    let s = spec(&unique("pw"), &cluster, "w", NodeRole::Worker);
    let _permit = BUILDS.acquire().await.expect("permit");
    let m = ensure_running(p.as_ref(), &s).await.reference();
    let v = admin_get(
        &format!("{}/servers/{}", peer().var("COMPUTE_URL"), m.id),
        "2.71",
    )
    .await;
    assert_eq!(v["server"]["security_groups"][0]["name"], "default");
    assert_eq!(
        v["server"]["flavor"]["original_name"], "m1.tiny",
        "the flavor setting wins"
    );
    retried("off", || p.power(&m, PowerOp::Off)).await;
    retried("off twice is fine", || p.power(&m, PowerOp::Off)).await;
    wait_for(p.as_ref(), &m, "off", |m| {
        matches!(
            m,
            Some(Machine {
                state: MachineState::Off,
                ..
            })
        )
    })
    .await;
    retried("off when off", || p.power(&m, PowerOp::Off)).await;
    retried("on", || p.power(&m, PowerOp::On)).await;
    running(p.as_ref(), &m).await;
    retried("reset", || p.power(&m, PowerOp::Reset)).await;
    running(p.as_ref(), &m).await;
    retried("delete", || p.delete_machine(&m)).await;
    let err = p.power(&m, PowerOp::On).await.expect_err("gone");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn a_revoked_token_is_renewed_once() {
    let concrete = palisade::providers::openstack::OpenStack::new(&account(
        &[("project", "demo")],
        demo_password(peer().var("DEMO_PASSWORD")),
    ))
    .expect("provider");
    let token = concrete.token().await.expect("token");
    let http = reqwest::Client::new();
    let r = http
        .delete(format!("{}/auth/tokens", peer().var("OS_AUTH_URL")))
        .header("X-Auth-Token", &token)
        .header("X-Subject-Token", &token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    let cluster = uuid::Uuid::now_v7().to_string();
    assert!(concrete
        .machines(&cluster)
        .await
        .expect("list after revocation")
        .is_empty());
    assert_ne!(concrete.token().await.expect("token"), token);
}

#[tokio::test]
async fn placements_list_flavors_networks_groups_zones_and_images() {
    let choices = demo(&[]).placements().await.expect("placements");
    let has = |key: &str, value: &str| choices.iter().any(|c| c.key == key && c.value == value);
    assert!(
        has("flavor", "m1.tiny") && has("flavor", "m1.small"),
        "{choices:?}"
    );
    assert!(has("network", "palisade-test-net"), "{choices:?}");
    assert!(has("security_group", "default"), "{choices:?}");
    assert!(has("availability_zone", "nova"), "{choices:?}");
    assert!(has("image", &peer().boot_image), "{choices:?}");
    let tiny = choices.iter().find(|c| c.value == "m1.tiny").expect("tiny");
    assert_eq!(tiny.label, "m1.tiny (1 vCPU, 512 MiB, 1 GiB)");
}

#[tokio::test]
async fn hard_anti_affinity_puts_control_planes_in_a_group_the_scheduler_enforces() {
    let p = demo(&[("anti_affinity", "true")]);
    let cluster = uuid::Uuid::now_v7().to_string();
    let s = spec(&unique("aa"), &cluster, "cp", NodeRole::ControlPlane);
    let _permit = BUILDS.acquire().await.expect("permit");
    // The peer's scheduler runs without ServerGroupAntiAffinityFilter (a real Nova has it by
    // default): there the hint reaches the scheduler, which refuses it by name.
    let settled = ensure_settled(p.as_ref(), &s, |state| match state {
        MachineState::Running => true,
        MachineState::Failed(why) => why.contains("ServerGroupAntiAffinityFilter"),
        _ => false,
    })
    .await;
    let m = settled.reference();
    let compute = peer().var("COMPUTE_URL").to_string();
    let v = admin_get(&format!("{compute}/servers/{}", m.id), "2.71").await;
    let group_id = v["server"]["server_groups"][0]
        .as_str()
        .expect("in a group")
        .to_string();
    assert_eq!(
        v["server"]["metadata"]["palisade-server-group"],
        group_id.as_str()
    );
    let group = admin_get(&format!("{compute}/os-server-groups/{group_id}"), "2.64").await;
    assert_eq!(group["server_group"]["policy"], "anti-affinity");
    retried("delete", || p.delete_machine(&m)).await;
    assert!(p.machines(&cluster).await.expect("machines").is_empty());
}

/// An account on the demo project for the end-to-end tests through the appliance: machines
/// boot from the fixture's image on the test network.
fn e2e_target(password: &str, os_image: &str) -> crate::provisioning::Target {
    let p = peer();
    crate::provisioning::Target {
        kind: "openstack",
        endpoint: p.var("OS_AUTH_URL").to_string(),
        ca_bundle: String::new(),
        username: p.var("DEMO_USERNAME").to_string(),
        password: password.to_string(),
        placement: json!({"project": "demo", "network": "palisade-test-net", "flavor": "m1.small"}),
        os_values: format!("image:\n  name: {os_image}\n"),
        media: None,
    }
}

/// The issue's scenario through the appliance on the OpenStack peer.
#[tokio::test]
async fn provisions_scales_heals_and_deletes_a_cluster_through_the_appliance() {
    // The peer's SQLite loses builds when too many run at once: take every build slot the
    // provider tests share for the whole scenario.
    let _slots = BUILDS.acquire_many(2).await.expect("build slots");
    let target = e2e_target(peer().var("DEMO_PASSWORD"), "palisade-test-boot");
    crate::provisioning::full_lifecycle(&target, Duration::from_secs(300)).await;
}

/// `kill -9` of the appliance mid-provisioning: no server created twice.
#[tokio::test]
async fn an_appliance_killed_mid_provisioning_creates_no_server_twice() {
    // The peer's SQLite loses builds when too many run at once: take every build slot the
    // provider tests share for the whole scenario.
    let _slots = BUILDS.acquire_many(2).await.expect("build slots");
    let target = e2e_target(peer().var("DEMO_PASSWORD"), "palisade-test-boot");
    crate::provisioning::crash_mid_provisioning(&target, 2, Duration::from_secs(300)).await;
}

/// Wrong credentials, an unreachable Keystone, a missing image, flavor and network each say so,
/// on the account check and on the cluster.
#[tokio::test]
async fn broken_accounts_and_images_give_clear_errors_through_the_appliance() {
    // The peer's SQLite loses builds when too many run at once: take every build slot the
    // provider tests share for the whole scenario.
    let _slots = BUILDS.acquire_many(2).await.expect("build slots");
    let limit = Duration::from_secs(120);
    let wrong = e2e_target("not-the-password", "palisade-test-boot");
    crate::provisioning::clear_error(&wrong, Some("credentials"), "password", limit).await;
    let mut unreachable = e2e_target(peer().var("DEMO_PASSWORD"), "palisade-test-boot");
    let closed = crate::support::free_port();
    unreachable.endpoint = format!("http://127.0.0.1:{closed}/v3");
    crate::provisioning::clear_error(&unreachable, Some("unreachable"), "127.0.0.1", limit).await;
    let no_image = e2e_target(peer().var("DEMO_PASSWORD"), "no-such-image");
    crate::provisioning::clear_error(&no_image, None, "no-such-image", limit).await;
    let mut no_flavor = e2e_target(peer().var("DEMO_PASSWORD"), "palisade-test-boot");
    no_flavor.placement["flavor"] = json!("no-such-flavor");
    crate::provisioning::clear_error(&no_flavor, Some("not-found"), "no-such-flavor", limit).await;
    let mut no_network = e2e_target(peer().var("DEMO_PASSWORD"), "palisade-test-boot");
    no_network.placement["network"] = json!("no-such-network");
    crate::provisioning::clear_error(&no_network, Some("not-found"), "no-such-network", limit)
        .await;
}
