//! The Rust side of `benches/provider_vsphere.sh`: the vSphere provider creating and deleting
//! machines on vcsim, timed. Not a `cargo test` target (`harness = false`, run by the script).
//!
//! ```text
//! provider_vsphere front BACKEND_PORT PEM_OUT        TLS terminator in front of vcsim (runs until killed)
//! provider_vsphere prepare SDK PEM USER PASSWORD     import the bench template, print its id
//! provider_vsphere run SDK PEM USER PASSWORD TEMPLATE_ID COUNT PARALLEL LABEL
//! ```
//! `run` creates COUNT machines (clone + size + guestinfo + attributes + power on, through
//! `ensure_machine`), then deletes them (power off + destroy, through `delete_machine`), with
//! PARALLEL calls in flight, and prints one JSON line with both durations.

#[path = "../tests/integration/ova_fixture.rs"]
mod ova_fixture;
#[path = "../tests/integration/tls_front.rs"]
mod tls_front;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use palisade::model::{CloudKind, Credentials, MachineSize, NodeRole};
use palisade::providers::vsphere::VsphereProvider;
use palisade::providers::{
    Account, Bootstrap, ImageFormat, ImageLocation, ImageRef, MachineSpec, OsImage, Provider,
};

fn account(sdk: &str, pem: &str, user: &str, password: &str) -> anyhow::Result<Account> {
    let placement: BTreeMap<String, String> = [
        ("datacenter", "DC0"),
        ("cluster", "DC0_C0"),
        ("datastore", "LocalDS_0"),
        ("network", "VM Network"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Ok(Account {
        kind: CloudKind::Vsphere,
        endpoint: sdk.into(),
        ca_bundle: std::fs::read_to_string(pem).with_context(|| format!("read {pem}"))?,
        credentials: Credentials {
            username: user.into(),
            password: password.into(),
            ..Credentials::default()
        },
        placement,
    })
}

/// cloud-init documents of the size the orchestrator sends (a join token, a CA, a few files).
fn bootstrap(name: &str) -> Bootstrap {
    let ca =
        "MIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGUgZm9yIGJlbmNobWFyayBvbmx5MAoGCCqGSM49BAMC".repeat(12);
    Bootstrap {
        user_data: format!(
            "#cloud-config\nhostname: {name}\nwrite_files:\n  - path: /etc/palisade/ca.pem\n    content: |\n      {ca}\nruncmd:\n  - [palisade, agent, join, --token, 0123456789abcdef]\n"
        ),
        meta_data: format!("instance-id: {name}\nlocal-hostname: {name}\n"),
        network_config: None,
    }
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    let [sdk, pem, user, password, template, count, parallel, label] = args else {
        bail!("usage: run SDK PEM USER PASSWORD TEMPLATE_ID COUNT PARALLEL LABEL");
    };
    let count: u32 = count.parse()?;
    let parallel: usize = parallel.parse()?;
    let p = VsphereProvider::new(&account(sdk, pem, user, password)?)?;
    let cluster = uuid::Uuid::new_v4().to_string();
    let image = ImageRef {
        id: template.clone(),
        name: "palisade-bench-image".into(),
    };
    let specs: Vec<MachineSpec> = (0..count)
        .map(|i| {
            let name = format!("bench-{label}-{i}");
            MachineSpec {
                name: name.clone(),
                cluster_id: cluster.clone(),
                pool: "workers".into(),
                role: NodeRole::Worker,
                size: MachineSize {
                    cpus: 2,
                    memory_mib: 4096,
                    disk_gib: 20,
                },
                image: image.clone(),
                bootstrap: bootstrap(&name),
                static_ip: None,
            }
        })
        .collect();
    // A login before the clock starts, as pyvmomi's SmartConnect does on its side.
    p.validate().await?;
    let t0 = Instant::now();
    let made: Vec<_> = futures_util::stream::iter(specs.iter().map(|s| p.ensure_machine(s)))
        .buffer_unordered(parallel)
        .collect()
        .await;
    let create_s = t0.elapsed().as_secs_f64();
    let made = made.into_iter().collect::<Result<Vec<_>, _>>()?;
    let t1 = Instant::now();
    let refs: Vec<_> = made.iter().map(|m| m.reference()).collect();
    let deleted: Vec<_> = futures_util::stream::iter(refs.iter().map(|r| p.delete_machine(r)))
        .buffer_unordered(parallel)
        .collect()
        .await;
    let delete_s = t1.elapsed().as_secs_f64();
    deleted.into_iter().collect::<Result<Vec<_>, _>>()?;
    if !p.machines(&cluster).await?.is_empty() {
        bail!("machines left behind in cluster {cluster}");
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "palisade", "label": label, "count": count, "parallel": parallel,
            "create_s": create_s, "delete_s": delete_s,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` adds `--bench`; the script passes the real arguments after it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("front") => {
            let [_, port, pem_out] = &args[..] else {
                bail!("usage: front BACKEND_PORT PEM_OUT");
            };
            let front = tls_front::start(([127, 0, 0, 1], port.parse()?).into());
            std::fs::write(pem_out, &front.cert_pem)?;
            println!("PORT={}", front.port);
            // Serves until the script kills it.
            loop {
                std::thread::park();
            }
        }
        Some("prepare") => {
            let [_, sdk, pem, user, password] = &args[..] else {
                bail!("usage: prepare SDK PEM USER PASSWORD");
            };
            rt.block_on(async {
                let p = VsphereProvider::new(&account(sdk, pem, user, password)?)?;
                let dir = tempfile::tempdir()?;
                let path = ova_fixture::build_ova(dir.path());
                let bytes = std::fs::read(&path)?;
                let img = p
                    .ensure_image(&OsImage {
                        name: "palisade-bench-image".into(),
                        format: ImageFormat::Ova,
                        size: bytes.len() as u64,
                        sha256: ova_fixture::sha256_hex(&bytes),
                        location: ImageLocation::File(path),
                    })
                    .await?;
                println!("TEMPLATE_ID={}\nTEMPLATE_NAME={}", img.id, img.name);
                anyhow::Ok(())
            })
        }
        Some("run") => rt.block_on(run(&args[1..])),
        _ => {
            eprintln!("run by benches/provider_vsphere.sh; see its header");
            Ok(())
        }
    }
}
