//! The bare-metal (Redfish) provider against sushy-tools' emulator (fake driver, 5 systems,
//! upstream power delays of 1-11 s), started once per test process from
//! `../shared/peers/redfish.sh`. A small HTTP media host on loopback serves the boot media
//! from memory, so the emulator really downloads the installer and seed ISOs. Only the
//! lifecycle test claims systems; the others read.

use crate::support::{free_port, peers_dir};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use palisade::model::{CloudKind, Credentials, MachineSize, NodeRole};
use palisade::providers::{
    self, Account, Bootstrap, Context, ErrorKind, ImageFormat, ImageLocation, ImageRef,
    MachineSpec, MachineState, MediaHost, OsImage, PowerOp, Provider, ProviderError,
};
use serde_json::Value;

/// A running sushy-emulator.
struct Peer {
    url: String,
    user: String,
    password: String,
    /// Kept so that the watchdog is owned for the whole process (it outlives the tests).
    _watchdog: std::process::Child,
}

/// The emulator of this test process (5 systems, plain HTTP), started on first use; it stops
/// when the process ends.
fn peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(|| start_peer(&[("REDFISH_SYSTEMS", "5")]))
}

/// The emulator of the end-to-end tests through the appliance: 8 systems that power on at
/// once, enough for the lifecycle (4) and the crash test (3) running side by side.
fn e2e_peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(|| start_peer(&[("REDFISH_SYSTEMS", "8"), ("REDFISH_POWER_DELAY", "0")]))
}

/// A second BMC: 2 systems over HTTPS with a fresh self-signed certificate, as real BMCs ship.
/// Its system ids equal the first emulator's node-0 and node-1 (as iDRACs all say
/// `System.Embedded.1`).
fn tls_peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(|| start_peer(&[("REDFISH_SYSTEMS", "2"), ("REDFISH_TLS", "1")]))
}

/// The certificate a TLS emulator serves (written by redfish.sh into its run directory).
fn tls_cert(peer: &Peer) -> String {
    let port = peer.url.rsplit(':').next().expect("port");
    let dir = std::env::var_os("PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/peers")
        });
    std::fs::read_to_string(dir.join("redfish/run").join(port).join("cert.pem")).expect("cert.pem")
}

fn start_peer(env: &[(&str, &str)]) -> Peer {
    {
        let script = peers_dir().join("redfish.sh");
        assert!(
            script.exists(),
            "{} is missing: the bare-metal tests need the Redfish peer (set PALISADE_PEERS_DIR)",
            script.display()
        );
        let port = free_port();
        let out = Command::new(&script)
            .args(["start", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run redfish.sh start");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "redfish.sh start {port} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
        let pid = vars.get("PID").expect("PID line").to_string();
        // Watchdog: stop the emulator once this test process is gone.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; '{}' stop {pid}",
                std::process::id(),
                script.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watchdog");
        Peer {
            url: vars.get("URL").expect("URL line").to_string(),
            user: vars.get("USER").expect("USER line").to_string(),
            password: vars.get("PASSWORD").expect("PASSWORD line").to_string(),
            _watchdog: watchdog,
        }
    }
}

fn account(endpoint: &str, password: &str, placement: &[(&str, &str)]) -> Account {
    let p = peer();
    Account {
        kind: CloudKind::Baremetal,
        endpoint: endpoint.to_string(),
        ca_bundle: String::new(),
        credentials: Credentials {
            username: p.user.clone(),
            password: password.to_string(),
            ..Default::default()
        },
        placement: placement
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A real media host: an HTTP server on loopback serving published files from memory, and
/// counting downloads.
#[derive(Clone, Default)]
struct Files {
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    gets: Arc<Mutex<HashMap<String, usize>>>,
}

struct TestMedia {
    base: String,
    files: Files,
}

async fn serve_file(State(f): State<Files>, AxPath(name): AxPath<String>) -> impl IntoResponse {
    let body = f.files.lock().expect("lock").get(&name).cloned();
    match body {
        Some(b) => {
            *f.gets.lock().expect("lock").entry(name).or_insert(0) += 1;
            (StatusCode::OK, b).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl TestMedia {
    async fn start() -> Arc<TestMedia> {
        let files = Files::default();
        let app = axum::Router::new()
            .route("/media/{name}", axum::routing::get(serve_file))
            .with_state(files.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Arc::new(TestMedia {
            base: format!("http://{addr}/media"),
            files,
        })
    }
    fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.files.files.lock().expect("lock").get(name).cloned()
    }
    fn downloads(&self, name: &str) -> usize {
        self.files
            .gets
            .lock()
            .expect("lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
    fn names(&self) -> Vec<String> {
        self.files
            .files
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }
}

#[async_trait::async_trait]
impl MediaHost for TestMedia {
    async fn publish(&self, name: &str, bytes: Vec<u8>) -> Result<String, ProviderError> {
        self.files
            .files
            .lock()
            .expect("lock")
            .insert(name.to_string(), bytes);
        Ok(format!("{}/{name}", self.base))
    }
    async fn withdraw(&self, name: &str) -> Result<(), ProviderError> {
        self.files.files.lock().expect("lock").remove(name);
        Ok(())
    }
}

fn provider(media: Option<Arc<TestMedia>>, placement: &[(&str, &str)]) -> Box<dyn Provider> {
    let p = peer();
    let ctx = Context {
        media: media.map(|m| m as Arc<dyn MediaHost>),
    };
    providers::connect(&account(&p.url, &p.password, placement), &ctx).expect("connect")
}

/// GET a Redfish resource directly (the test's own view of the BMC).
async fn redfish(path: &str) -> Value {
    let p = peer();
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}", p.url)
    };
    reqwest::Client::new()
        .get(url)
        .basic_auth(&p.user, Some(&p.password))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json")
}

fn spec(cluster: &str, pool: &str, n: u32, image: &ImageRef) -> MachineSpec {
    let name = format!("{pool}-{n}-{}", &cluster[..6]);
    MachineSpec {
        name: name.clone(),
        cluster_id: cluster.to_string(),
        pool: pool.to_string(),
        role: NodeRole::Worker,
        size: MachineSize {
            cpus: 2,
            memory_mib: 4096,
            disk_gib: 40,
        },
        image: image.clone(),
        bootstrap: Bootstrap {
            user_data: format!("#cloud-config\nhostname: {name}\n"),
            meta_data: format!("instance-id: {name}\nlocal-hostname: {name}\n"),
            network_config: Some("version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_string()),
        },
        static_ip: None,
    }
}

/// The file name at the end of a URL.
fn file_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or("")
}

/// Poll the provider until the machine reports `want` (bounded: 60 s).
async fn wait_state(p: &dyn Provider, m: &providers::Machine, want: MachineState) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = p
            .machine(&m.reference())
            .await
            .expect("machine")
            .expect("exists");
        if now.state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} stayed {:?}, want {want:?}",
            m.name,
            now.state
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn isoinfo(args: &[&str], file: &std::path::Path) -> String {
    let out = Command::new("isoinfo")
        .args(args)
        .arg("-i")
        .arg(file)
        .output()
        .expect("isoinfo (Debian package genisoimage) must be installed");
    assert!(
        out.status.success(),
        "isoinfo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn validate_reports_the_pool_and_its_virtual_media() {
    let p = provider(None, &[]);
    let check = p.validate().await.expect("validate");
    assert!(
        check.endpoint_product.contains("Redfish 1.5.0"),
        "{check:?}"
    );
    let all = check.checks.join("\n");
    assert!(all.contains("login as admin"), "{all}");
    assert!(all.contains("5 systems in the pool: "), "{all}");
    for i in 0..5 {
        assert!(all.contains(&format!("node-{i}")), "{all}");
    }
    assert!(all.contains("installer in Cd, seed in Floppy"), "{all}");

    // Restricted to two systems by name; placements list them with their NICs.
    let p = provider(None, &[("systems", "node-1,node-3")]);
    let check = p.validate().await.expect("validate subset");
    assert!(
        check
            .checks
            .iter()
            .any(|c| c.starts_with("2 systems in the pool")),
        "{check:?}"
    );
    let choices = p.placements().await.expect("placements");
    assert_eq!(
        choices.len(),
        5,
        "placements list the whole BMC: {choices:?}"
    );
    let node1 = choices
        .iter()
        .find(|c| c.value == "node-1")
        .expect("node-1");
    assert!(node1.label.contains("52:54:00:00:00:02"), "{node1:?}");
    assert!(node1.label.contains("CPUs unknown"), "{node1:?}");
}

#[tokio::test]
async fn validate_rejects_a_wrong_password_as_credentials() {
    let pr = peer();
    let p = providers::connect(
        &account(&pr.url, "wrong-password", &[]),
        &Context::default(),
    )
    .expect("connect");
    let e = p.validate().await.expect_err("wrong password");
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
    assert!(
        e.message.contains("refused the username or password"),
        "{e}"
    );
    let e = p.machines("x").await.expect_err("wrong password");
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
}

#[tokio::test]
async fn validate_reports_an_unreachable_bmc() {
    let _ = peer();
    let url = format!("http://127.0.0.1:{}/", free_port());
    let p = providers::connect(&account(&url, "x", &[]), &Context::default()).expect("connect");
    let e = p.validate().await.expect_err("nothing listens there");
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.message.contains("cannot connect"), "{e}");
    // An extra BMC that does not answer fails validation too.
    let pr = peer();
    let p = providers::connect(
        &account(&pr.url, &pr.password, &[("bmcs", &url)]),
        &Context::default(),
    )
    .expect("connect");
    assert_eq!(
        p.validate().await.expect_err("bmcs").kind,
        ErrorKind::Unreachable
    );
}

#[tokio::test]
async fn validate_names_an_unknown_system_of_the_placement() {
    let p = provider(None, &[("systems", "node-0,node-9")]);
    let e = p.validate().await.expect_err("node-9 does not exist");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("\"node-9\""), "{e}");
    assert!(e.message.contains("node-4"), "lists what exists: {e}");
    // Ids and UUIDs are accepted as well as names.
    let ids = redfish("/redfish/v1/Systems/node-2").await;
    let id = ids["Id"].as_str().expect("id").to_string();
    let p = provider(None, &[("systems", &id)]);
    assert!(p.validate().await.is_ok());
}

#[tokio::test]
async fn ensure_image_checks_the_format_and_that_the_url_answers() {
    let media = TestMedia::start().await;
    let p = provider(Some(media.clone()), &[]);
    let url = media
        .publish("os.iso", vec![0u8; 4096])
        .await
        .expect("publish");
    let iso = OsImage {
        name: "ubuntu-22.04".into(),
        format: ImageFormat::Iso,
        size: 4096,
        sha256: String::new(),
        location: ImageLocation::Url {
            url: url.clone(),
            ca_pem: String::new(),
        },
    };
    assert_eq!(p.ensure_image(&iso).await.expect("ensure_image").id, url);
    let missing = OsImage {
        location: ImageLocation::Url {
            url: format!("{}/nope.iso", media.base),
            ca_pem: String::new(),
        },
        ..iso.clone()
    };
    let e = p.ensure_image(&missing).await.expect_err("404");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let qcow = OsImage {
        format: ImageFormat::Qcow2,
        ..iso.clone()
    };
    assert_eq!(
        p.ensure_image(&qcow).await.expect_err("qcow2").kind,
        ErrorKind::Invalid
    );
    // A file is published through the media host.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("os.iso");
    std::fs::write(&path, b"installer").expect("write");
    let from_file = OsImage {
        sha256: "ab".repeat(32),
        location: ImageLocation::File(path),
        ..iso
    };
    let r = p.ensure_image(&from_file).await.expect("file image");
    assert_eq!(
        media.get(file_of(&r.id)).as_deref(),
        Some(&b"installer"[..]),
        "{r:?}"
    );
    // Without a media host, machines cannot be made.
    let bare = provider(None, &[]);
    let image = ImageRef {
        id: url,
        name: "x".into(),
    };
    let e = bare
        .ensure_machine(&spec(
            "0193a1b2-0000-7000-8000-000000000000",
            "w",
            0,
            &image,
        ))
        .await
        .expect_err("no media host");
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
}

#[tokio::test]
async fn seed_image_is_iso9660_labelled_cidata_per_isoinfo() {
    let b = Bootstrap {
        user_data: "#cloud-config\nhostname: n1\n".into(),
        meta_data: "instance-id: n1\n".into(),
        network_config: Some("version: 2\n".into()),
    };
    let img = providers::baremetal::seed_iso(&b, 1_700_000_000).expect("seed");
    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("seed.iso");
    std::fs::write(&f, &img).expect("write");
    let d = isoinfo(&["-d"], &f);
    assert!(d.contains("Volume id: cidata"), "{d}");
    assert!(d.contains("Joliet with UCS level 3 found"), "{d}");
    let listing = isoinfo(&["-J", "-f"], &f);
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(
        names,
        ["/meta-data", "/network-config", "/user-data"],
        "{listing}"
    );
    assert_eq!(isoinfo(&["-J", "-x", "/user-data"], &f), b.user_data);
    assert_eq!(isoinfo(&["-J", "-x", "/meta-data"], &f), b.meta_data);
    assert_eq!(
        isoinfo(&["-J", "-x", "/network-config"], &f),
        "version: 2\n"
    );
}

/// The whole life of machines on the shared pool of 5, with the emulator's real power delays.
#[tokio::test]
async fn lifecycle_claims_boots_reuses_and_releases_machines() {
    let media = TestMedia::start().await;
    let p = provider(Some(media.clone()), &[]);
    let os_url = media
        .publish("installer.iso", vec![7u8; 64 * 1024])
        .await
        .expect("publish");
    let image = p
        .ensure_image(&OsImage {
            name: "installer".into(),
            format: ImageFormat::Iso,
            size: 64 * 1024,
            sha256: String::new(),
            location: ImageLocation::Url {
                url: os_url.clone(),
                ca_pem: String::new(),
            },
        })
        .await
        .expect("ensure_image");
    let a = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let b = "0193b2c3-d4e5-7f60-8b9c-1d2e3f4a5b6c";
    let c = "0193c3d4-e5f6-7071-8cad-2e3f4a5b6c7d";

    // Cluster A: three machines, each on its own system, booting.
    let t0 = Instant::now();
    let mut first = Vec::new();
    for i in 0..3 {
        // sushy answers 500 "database is locked" now and then under load: a transient error
        // the orchestrator would retry, so the test does too (ensure_machine is idempotent).
        let mut tries = 0;
        let m = loop {
            match p.ensure_machine(&spec(a, "workers", i, &image)).await {
                Ok(m) => break m,
                Err(e) if e.is_transient() && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => panic!("ensure: {e:?}"),
            }
        };
        assert_eq!(m.cluster_id, a);
        assert_eq!(m.state, MachineState::Provisioning, "{m:?}");
        first.push(m);
    }
    let claim_ms = t0.elapsed().as_millis();
    let ids: std::collections::BTreeSet<&str> = first.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "three distinct systems: {first:?}");
    for m in &first {
        let sys = redfish(&m.id).await;
        assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");
        let cd = redfish(&format!("{}/VirtualMedia/Cd", m.id)).await;
        assert_eq!(cd["Image"], os_url.as_str(), "{cd}");
        assert_eq!(cd["Inserted"], true, "{cd}");
        let floppy = redfish(&format!("{}/VirtualMedia/Floppy", m.id)).await;
        assert_eq!(floppy["Inserted"], true, "{floppy}");
        let seed_url = floppy["Image"].as_str().expect("seed url");
        let seed_name = file_of(seed_url);
        assert!(
            seed_name.starts_with(&format!("palisade_{a}_workers_{}_", m.name)),
            "{seed_name}"
        );
        assert!(media.downloads(seed_name) >= 1, "the BMC fetched the seed");
        // The seed the BMC mounted is a valid cidata image with this machine's documents.
        let bytes = media.get(seed_name).expect("seed published");
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("seed.iso");
        std::fs::write(&f, bytes).expect("write");
        assert!(isoinfo(&["-d"], &f).contains("Volume id: cidata"));
        let ud = isoinfo(&["-J", "-x", "/user-data"], &f);
        assert_eq!(ud, format!("#cloud-config\nhostname: {}\n", m.name));
        assert!(isoinfo(&["-J", "-x", "/meta-data"], &f).contains(&m.name));
    }
    assert!(media.downloads("installer.iso") >= 3);
    let t1 = Instant::now();
    for m in &first {
        wait_state(p.as_ref(), m, MachineState::Running).await;
    }
    let power_on_ms = t1.elapsed().as_millis();

    // After a "crash": a new provider instance finds the same systems, no second claim.
    let p2 = provider(Some(media.clone()), &[]);
    let seeds_before: Vec<Value> = futures_util::future::join_all(
        first
            .iter()
            .map(|m| redfish_owned(format!("{}/VirtualMedia/Floppy", m.id))),
    )
    .await;
    for (i, m) in first.iter().enumerate() {
        let again = p2
            .ensure_machine(&spec(a, "workers", i as u32, &image))
            .await
            .expect("ensure again");
        assert_eq!(again.id, m.id);
        assert_eq!(again.state, MachineState::Running);
    }
    for (m, before) in first.iter().zip(&seeds_before) {
        let now = redfish(&format!("{}/VirtualMedia/Floppy", m.id)).await;
        assert_eq!(now["Image"], before["Image"], "same claim, not a new one");
    }
    // Powered off (by an operator, or power(off)), a machine is powered on again by ensure.
    p2.power(&first[0].reference(), PowerOp::Off)
        .await
        .expect("power off");
    wait_state(p2.as_ref(), &first[0], MachineState::Off).await;
    let again = p2
        .ensure_machine(&spec(a, "workers", 0, &image))
        .await
        .expect("ensure a powered-off machine");
    assert_eq!(
        (again.id.as_str(), again.state.clone()),
        (first[0].id.as_str(), MachineState::Provisioning)
    );
    wait_state(p2.as_ref(), &first[0], MachineState::Running).await;
    let e = p2
        .power(
            &providers::MachineRef {
                id: first[0].id.clone(),
                name: "someone-else".into(),
            },
            PowerOp::Off,
        )
        .await
        .expect_err("not this machine's name");
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    let t3 = Instant::now();
    let listed = p2.machines(a).await.expect("machines");
    let list_ms = t3.elapsed().as_millis();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed
        .iter()
        .all(|m| m.pool == "workers" && m.state == MachineState::Running));

    // Cluster B takes the two remaining systems, concurrently (both start with the same free
    // candidate: the loser of the claim race moves on); a third finds the pool exhausted.
    let (sb0, sb1) = (spec(b, "cp", 0, &image), spec(b, "cp", 1, &image));
    let (b0, b1) = tokio::join!(p.ensure_machine(&sb0), p2.ensure_machine(&sb1));
    let (b0, b1) = (b0.expect("b0"), b1.expect("b1"));
    assert_ne!(b0.id, b1.id, "one system per machine");
    assert!(!ids.contains(b0.id.as_str()) && !ids.contains(b1.id.as_str()));
    assert_eq!(p.machines(b).await.expect("machines b").len(), 2);
    let e = p
        .ensure_machine(&spec(b, "cp", 2, &image))
        .await
        .expect_err("pool exhausted");
    assert_eq!(e.kind, ErrorKind::Capacity, "{e}");
    assert!(
        e.message.contains("the pool has 5 systems, 5 claimed"),
        "{e}"
    );

    // Delete A's machines (concurrently): off, ejected, seed withdrawn, released.
    let t2 = Instant::now();
    let results =
        futures_util::future::join_all(refs(&first).iter().map(|r| p.delete_machine(r))).await;
    for r in results {
        r.expect("delete");
    }
    let delete_ms = t2.elapsed().as_millis();
    for m in &first {
        assert_eq!(p.machine(&m.reference()).await.expect("machine"), None);
        let sys = redfish(&m.id).await;
        assert_eq!(sys["PowerState"], "Off", "{sys}");
        for slot in ["Cd", "Floppy"] {
            let s = redfish(&format!("{}/VirtualMedia/{slot}", m.id)).await;
            assert_eq!(s["Inserted"], false, "{s}");
            assert_eq!(s["Image"], "", "{s}");
        }
        p.delete_machine(&m.reference())
            .await
            .expect("delete is idempotent");
    }
    assert!(p.machines(a).await.expect("machines a").is_empty());
    assert!(
        !media.names().iter().any(|n| n.contains(a)),
        "A's seeds are withdrawn: {:?}",
        media.names()
    );

    // A released system is reusable by another cluster.
    let c0 = p
        .ensure_machine(&spec(c, "w", 0, &image))
        .await
        .expect("reuse");
    assert!(
        ids.contains(c0.id.as_str()),
        "{c0:?} reuses one of A's systems"
    );

    // Leave the pool as found.
    let rest = [b0, b1, c0];
    let results =
        futures_util::future::join_all(refs(&rest).iter().map(|r| p.delete_machine(r))).await;
    for r in results {
        r.expect("cleanup");
    }
    eprintln!(
        "baremetal lifecycle: 3 claims+boots {claim_ms} ms, power-on seen after {power_on_ms} ms, machines() over 5 systems {list_ms} ms, 3 deletes {delete_ms} ms"
    );
}

fn refs(ms: &[providers::Machine]) -> Vec<providers::MachineRef> {
    ms.iter().map(|m| m.reference()).collect()
}

async fn redfish_owned(path: String) -> Value {
    redfish(&path).await
}

#[tokio::test]
async fn pins_a_self_signed_bmc_and_pools_several_bmcs() {
    let (plain, tls) = (peer(), tls_peer());
    assert!(tls.url.starts_with("https://"), "{}", tls.url);
    let cert = tls_cert(tls);

    // Without the BMC's certificate the TLS handshake is refused, with a hint.
    let mut acc = account(&tls.url, &tls.password, &[]);
    let p = providers::connect(&acc, &Context::default()).expect("connect");
    let e = p.validate().await.expect_err("untrusted certificate");
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    assert!(e.message.contains("ca_bundle"), "{e}");

    // Pinned: accepted although it is self-signed.
    acc.ca_bundle = cert.clone();
    let p = providers::connect(&acc, &Context::default()).expect("connect");
    let check = p.validate().await.expect("pinned certificate");
    assert!(
        check
            .checks
            .iter()
            .any(|c| c.starts_with("2 systems in the pool")),
        "{check:?}"
    );

    // One pool over both BMCs: 7 systems; "node-0" exists on both, with distinct machine ids.
    let mut acc = account(&plain.url, &plain.password, &[("bmcs", &tls.url)]);
    acc.ca_bundle = cert;
    let p = providers::connect(&acc, &Context::default()).expect("connect");
    let check = p.validate().await.expect("two BMCs");
    assert!(
        check
            .checks
            .iter()
            .any(|c| c.starts_with("7 systems in the pool")),
        "{check:?}"
    );
    assert_eq!(
        check
            .checks
            .iter()
            .filter(|c| c.starts_with("login as"))
            .count(),
        2
    );
    let choices = p.placements().await.expect("placements");
    let node0: Vec<&str> = choices
        .iter()
        .filter(|c| c.value == "node-0")
        .map(|c| c.label.as_str())
        .collect();
    assert_eq!(node0.len(), 2, "{choices:?}");
    assert!(
        node0.iter().any(|l| l.contains(&plain.url)) && node0.iter().any(|l| l.contains(&tls.url))
    );
}

/// The scenario through the appliance: create 1 + 2, scale to 3 workers, a machine
/// released behind the appliance's back is claimed again (reconcile) or alerted (alert),
/// deletion releases every system.
#[tokio::test]
async fn provisions_scales_heals_and_deletes_a_cluster_through_the_appliance() {
    let p = e2e_peer();
    let media = TestMedia::start().await;
    let iso = media
        .publish("installer.iso", b"an installer image stands here".to_vec())
        .await
        .expect("publish installer");
    let target = crate::provisioning::Target {
        kind: "baremetal",
        endpoint: p.url.clone(),
        ca_bundle: String::new(),
        username: p.user.clone(),
        password: p.password.clone(),
        placement: serde_json::json!({ "boot_iso": iso }),
        os_values: "image:\n  name: node-installer\n".into(),
        media: Some(media.clone() as Arc<dyn MediaHost>),
    };
    crate::provisioning::full_lifecycle(&target, std::time::Duration::from_secs(180)).await;
}

pub(crate) async fn e2e_target(
    placement: serde_json::Value,
    os_values: &str,
) -> crate::provisioning::Target {
    let p = e2e_peer();
    let media = TestMedia::start().await;
    let iso = media
        .publish("installer.iso", b"an installer image stands here".to_vec())
        .await
        .expect("publish installer");
    let mut placement = placement;
    if placement.get("boot_iso").is_none() {
        placement["boot_iso"] = serde_json::Value::String(iso);
    }
    crate::provisioning::Target {
        kind: "baremetal",
        endpoint: p.url.clone(),
        ca_bundle: String::new(),
        username: p.user.clone(),
        password: p.password.clone(),
        placement,
        os_values: os_values.into(),
        media: Some(media as Arc<dyn MediaHost>),
    }
}

/// `kill -9` of the appliance mid-provisioning: no system claimed twice.
#[tokio::test]
async fn an_appliance_killed_mid_provisioning_claims_no_machine_twice() {
    let target = e2e_target(serde_json::json!({}), "image:\n  name: node-installer\n").await;
    crate::provisioning::crash_mid_provisioning(&target, 2, std::time::Duration::from_secs(180))
        .await;
}

/// Wrong credentials, an unreachable BMC and a missing installer image each say so.
#[tokio::test]
async fn broken_accounts_and_images_give_clear_errors_through_the_appliance() {
    let limit = std::time::Duration::from_secs(120);
    let mut wrong = e2e_target(serde_json::json!({}), "image:\n  name: node-installer\n").await;
    wrong.password = "not-the-password".into();
    crate::provisioning::clear_error(&wrong, Some("credentials"), "password", limit).await;

    let mut unreachable =
        e2e_target(serde_json::json!({}), "image:\n  name: node-installer\n").await;
    unreachable.endpoint = format!("http://127.0.0.1:{}", free_port());
    crate::provisioning::clear_error(&unreachable, Some("unreachable"), "127.0.0.1", limit).await;

    let mut no_image = e2e_target(serde_json::json!({}), "image:\n  name: node-installer\n").await;
    no_image.placement = serde_json::json!({});
    crate::provisioning::clear_error(&no_image, None, "no installer ISO", limit).await;
}
