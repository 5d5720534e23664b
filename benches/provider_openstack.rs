//! One round of the OpenStack provider benchmark (`benches/provider_openstack.sh` runs it):
//! create `BENCH_SERVERS` machines through [`palisade::providers`] with at most
//! `BENCH_CONCURRENCY` in flight, each until Nova reports it ACTIVE, then delete them all
//! (`delete_machine` returns once the server is gone). Prints one JSON line:
//! `{"create_s": .., "delete_s": .., "failed": ..}`. Not part of `cargo test`.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use palisade::model::{CloudKind, Credentials, MachineSize, NodeRole};
use palisade::providers::{
    self, Account, Bootstrap, Context, ImageRef, MachineRef, MachineSpec, MachineState, Provider,
};

type Fail = Box<dyn std::error::Error>;

fn var(name: &str) -> Result<String, Fail> {
    std::env::var(name)
        .map_err(|_| format!("{name} is not set (run benches/provider_openstack.sh)").into())
}

fn num(name: &str, default: usize) -> Result<usize, Fail> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

/// Poll until the machine runs or fails (at most 180 s); true when it runs.
async fn until_running(p: &dyn Provider, m: &MachineRef) -> bool {
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        match p.machine(m).await {
            Ok(Some(x)) if x.state == MachineState::Running => return true,
            Ok(Some(x)) if matches!(x.state, MachineState::Failed(_)) => return false,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    false
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Fail> {
    let servers = num("BENCH_SERVERS", 50)?;
    let concurrency = num("BENCH_CONCURRENCY", 10)?;
    let prefix = var("BENCH_PREFIX")?;
    let account = Account {
        kind: CloudKind::Openstack,
        endpoint: var("OS_AUTH_URL")?,
        ca_bundle: String::new(),
        credentials: Credentials {
            username: var("BENCH_USER")?,
            password: var("BENCH_PASSWORD")?,
            ..Credentials::default()
        },
        placement: [
            ("project", var("BENCH_PROJECT")?),
            ("network", var("BENCH_NETWORK")?),
            ("flavor", var("BENCH_FLAVOR")?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    let provider = providers::connect(&account, &Context::default())?;
    let p = provider.as_ref();
    let cluster = uuid::Uuid::now_v7().to_string();
    let specs: Vec<MachineSpec> = (0..servers)
        .map(|i| MachineSpec {
            name: format!("{prefix}-{i}"),
            cluster_id: cluster.clone(),
            pool: "bench".into(),
            role: NodeRole::Worker,
            size: MachineSize {
                cpus: 1,
                memory_mib: 512,
                disk_gib: 1,
            },
            image: ImageRef {
                id: std::env::var("BENCH_IMAGE").unwrap_or_default(),
                name: "bench".into(),
            },
            bootstrap: Bootstrap {
                user_data: format!("#cloud-config\nhostname: {prefix}-{i}\n"),
                meta_data: String::new(),
                network_config: None,
            },
            static_ip: None,
        })
        .collect();

    let t0 = Instant::now();
    let results: Vec<Option<MachineRef>> = futures_util::stream::iter(specs.iter())
        .map(|s| async move {
            match p.ensure_machine(s).await {
                Ok(m) => {
                    let r = m.reference();
                    until_running(p, &r).await.then_some(r)
                }
                Err(e) => {
                    eprintln!("{}: {e}", s.name);
                    None
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let create = t0.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| r.is_none()).count();

    // Delete every machine of the round, the failed ones too.
    let all = p.machines(&cluster).await?;
    let t1 = Instant::now();
    let errors: Vec<String> = futures_util::stream::iter(all.iter())
        .map(|m| async move {
            p.delete_machine(&m.reference())
                .await
                .err()
                .map(|e| e.to_string())
        })
        .buffer_unordered(concurrency)
        .filter_map(|e| async move { e })
        .collect()
        .await;
    let delete = t1.elapsed().as_secs_f64();
    for e in &errors {
        eprintln!("delete: {e}");
    }
    println!(
        "{{\"create_s\": {create:.3}, \"delete_s\": {delete:.3}, \"failed\": {failed}, \"delete_errors\": {}}}",
        errors.len()
    );
    Ok(())
}
