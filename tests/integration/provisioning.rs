//! Provisioning end to end: the real appliance, its orchestrator and a provider against a
//! real peer. For each kind: create a cluster of 1 control plane + 2 workers and see the
//! machines on the peer, scale to 3 workers, delete a machine behind the appliance's back and
//! see it replaced (drift policy reconcile) or alerted (alert), delete the cluster and see the
//! peer clean. The peer is read through a provider instance of the test's own, not the
//! appliance's.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{Api, TestApp};
use palisade::providers::{self, Account, Machine, Provider};

/// A cloud account on a peer, as the tests create it through the API.
pub(crate) struct Target {
    pub kind: &'static str,
    pub endpoint: String,
    pub ca_bundle: String,
    pub username: String,
    pub password: String,
    pub placement: Value,
    /// Values of the profile's OS layer (names the machine image).
    pub os_values: String,
    /// Boot media host of the test's own provider (bare metal).
    pub media: Option<std::sync::Arc<dyn providers::MediaHost>>,
}

impl Target {
    /// The same account, for the test's own provider.
    pub fn account(&self) -> Account {
        Account {
            kind: palisade::model::CloudKind::parse(self.kind).expect("kind"),
            endpoint: self.endpoint.clone(),
            ca_bundle: self.ca_bundle.clone(),
            credentials: palisade::model::Credentials {
                username: self.username.clone(),
                password: self.password.clone(),
                ..Default::default()
            },
            placement: self
                .placement
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The peer as the test sees it.
    pub fn provider(&self) -> Box<dyn Provider> {
        let ctx = providers::Context {
            media: self.media.clone(),
        };
        providers::connect(&self.account(), &ctx).expect("provider")
    }
}

/// Orchestrator settings for tests: resync every 2 s; a build the peer lost (the OpenStack
/// peer's SQLite loses some under load) is redone after 90 s.
const FAST: [&str; 4] = ["--resync-interval", "2", "--machine-build-timeout", "90"];

/// A started appliance with a project, a validated account on the target and a profile.
pub(crate) struct Setup {
    /// Kept running for the test's duration.
    pub _app: TestApp,
    pub admin: Api,
    pub project: String,
    pub account: String,
    pub profile: String,
}

/// Start the appliance (fast resync) and create what a cluster needs on `target`.
pub(crate) async fn setup(target: &Target) -> Setup {
    let app = TestApp::start_with(&FAST);
    let admin = app.admin().await;
    let tenant = admin.create("/v1/tenants", json!({"name": "site"})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let project = admin
        .create("/v1/projects", json!({"tenant_id": tenant, "name": "main"}))
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let account = admin
        .create(
            "/v1/cloud-accounts",
            json!({"project_id": project, "name": "peer", "kind": target.kind,
                   "endpoint": target.endpoint, "ca_bundle": target.ca_bundle,
                   "credentials": {"username": target.username, "password": target.password},
                   "placement": target.placement}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let profile = admin
        .create(
            "/v1/profiles",
            json!({"project_id": project, "name": "k8s", "layers": [
                {"type": "os", "pack": "node-image", "version": "1.0.0", "values": target.os_values},
                {"type": "kubernetes", "pack": "kubernetes-kubeadm", "version": "1.30.4", "values": "pod_cidr: 10.42.0.0/16\n"},
            ]}),
        )
        .await["profile"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    Setup {
        _app: app,
        admin,
        project,
        account,
        profile,
    }
}

/// Ask for the account check and wait for its outcome.
pub(crate) async fn validate(admin: &Api, account: &str) -> Value {
    let (status, body) = admin
        .post(&format!("/v1/cloud-accounts/{account}/validate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for("account check", Duration::from_secs(120), || async {
        let (_, v) = admin
            .get(&format!("/v1/cloud-accounts/{account}/validation"))
            .await;
        (v["state"] != "pending").then_some(v)
    })
    .await
}

/// Poll `probe` every 250 ms until it returns Some, or panic after `limit`.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) fn pools(workers: u32) -> Value {
    json!([
        {"name": "cp", "role": "control-plane", "count": 1, "size": {"cpus": 2, "memory_mib": 2048, "disk_gib": 20}},
        {"name": "workers", "role": "worker", "count": workers, "size": {"cpus": 1, "memory_mib": 1024, "disk_gib": 10}},
    ])
}

/// Create a cluster of 1 control plane and `workers` workers.
pub(crate) async fn create_cluster(s: &Setup, name: &str, workers: u32, drift: &str) -> String {
    s.admin
        .create(
            "/v1/clusters",
            json!({"project_id": s.project, "name": name, "profile_id": s.profile,
                   "cloud_account_id": s.account, "node_pools": pools(workers), "drift_policy": drift}),
        )
        .await["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Wait until the cluster has this status; returns the cluster.
pub(crate) async fn wait_status(admin: &Api, id: &str, status: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (_, c) = admin.get(&format!("/v1/clusters/{id}")).await;
        if c["status"] == status {
            return c;
        }
        if c["status"] == "Failed" && status != "Failed" {
            panic!("cluster failed: {c}\nevents: {}", events(admin, id).await);
        }
        assert!(
            start.elapsed() < limit,
            "cluster not {status} after {limit:?}: {c}\nevents: {}",
            events(admin, id).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until the deleted cluster is gone; on timeout say where it stands (cluster, machine
/// records, events and the end of the appliance's log).
pub(crate) async fn wait_gone(admin: &Api, app: &TestApp, id: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let (status, c) = admin.get(&format!("/v1/clusters/{id}")).await;
        if status == StatusCode::NOT_FOUND {
            return;
        }
        if start.elapsed() >= limit {
            let (_, machines) = admin.get(&format!("/v1/clusters/{id}/machines")).await;
            let log = app.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "cluster not gone after {limit:?}: {c}\nmachines: {machines}\nevents:\n{}\nlog:\n{}",
                events(admin, id).await,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The cluster's events, as text, for failure messages and checks.
pub(crate) async fn events(admin: &Api, id: &str) -> String {
    let (_, e) = admin
        .get(&format!("/v1/events?object_id={id}&limit=500"))
        .await;
    e["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "[{}] {}",
                        e["severity"],
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The cluster's machines as the peer reports them, by name.
pub(crate) async fn on_peer(peer: &dyn Provider, cluster: &str) -> Vec<Machine> {
    let mut m = peer
        .machines(cluster)
        .await
        .expect("list machines on the peer");
    m.sort_by(|a, b| a.name.cmp(&b.name));
    m
}

/// Change the worker count (and drift policy) through the API.
pub(crate) async fn update(admin: &Api, id: &str, workers: u32, drift: &str) {
    let (_, c) = admin.get(&format!("/v1/clusters/{id}")).await;
    let (status, body) = admin
        .call(
            Method::PUT,
            &format!("/v1/clusters/{id}"),
            Some(json!({"profile_revision": c["profile_revision"], "node_pools": pools(workers), "drift_policy": drift})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The whole scenario of the issue on one target.
pub(crate) async fn full_lifecycle(target: &Target, limit: Duration) {
    let s = setup(target).await;
    let check = validate(&s.admin, &s.account).await;
    assert_eq!(check["state"], "ok", "{check}");
    assert!(
        check["placements"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "the check fills the placement pickers: {check}"
    );
    let peer = target.provider();
    let id = create_cluster(&s, "lab", 2, "reconcile").await;
    wait_status(&s.admin, &id, "Running", limit).await;
    let machines = on_peer(peer.as_ref(), &id).await;
    assert_eq!(
        machines.len(),
        3,
        "1 control plane + 2 workers on the peer: {machines:?}"
    );
    let (_, recorded) = s.admin.get(&format!("/v1/clusters/{id}/machines")).await;
    let recorded = recorded.as_array().cloned().unwrap_or_default();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    for m in &machines {
        assert!(
            recorded
                .iter()
                .any(|r| r["name"] == m.name.as_str() && r["provider_id"] == m.id.as_str()),
            "{} is recorded with its provider id: {recorded:?}",
            m.name
        );
        assert!(m.pool == "cp" || m.pool == "workers", "{m:?}");
    }

    // Scale the workers to 3.
    update(&s.admin, &id, 3, "reconcile").await;
    wait_for("4 machines on the peer", limit, || async {
        (on_peer(peer.as_ref(), &id).await.len() == 4).then_some(())
    })
    .await;
    wait_status(&s.admin, &id, "Running", limit).await;

    // Delete a worker behind the appliance's back: replaced (policy reconcile).
    let victim = on_peer(peer.as_ref(), &id)
        .await
        .into_iter()
        .find(|m| m.pool == "workers")
        .expect("a worker");
    peer.delete_machine(&victim.reference())
        .await
        .expect("delete behind the back");
    // The appliance notices at its next pass and says so, then the name is back on the peer.
    let replacing = format!(
        "machine {} was deleted outside Palisade; replacing it",
        victim.name
    );
    wait_for("the replacement event", limit, || async {
        events(&s.admin, &id)
            .await
            .contains(&replacing)
            .then_some(())
    })
    .await;
    // The event is written once the peer no longer lists the machine: its name back on the
    // peer is the replacement.
    wait_for("the deleted worker to be replaced", limit, || async {
        let now = on_peer(peer.as_ref(), &id).await;
        now.iter().any(|m| m.name == victim.name).then_some(())
    })
    .await;
    wait_status(&s.admin, &id, "Running", limit).await;

    // With drift policy alert, a machine deleted behind the back is reported, not replaced.
    update(&s.admin, &id, 3, "alert").await;
    let victim = on_peer(peer.as_ref(), &id)
        .await
        .into_iter()
        .find(|m| m.pool == "workers")
        .expect("a worker");
    peer.delete_machine(&victim.reference())
        .await
        .expect("delete behind the back");
    wait_for("the alert", limit, || async {
        events(&s.admin, &id).await.contains("ALERT").then_some(())
    })
    .await;
    let (_, recorded) = s.admin.get(&format!("/v1/clusters/{id}/machines")).await;
    assert!(
        recorded.as_array().is_some_and(|a| a
            .iter()
            .any(|r| r["name"] == victim.name.as_str() && r["phase"] == "missing")),
        "{recorded}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        on_peer(peer.as_ref(), &id).await.len(),
        3,
        "not replaced under policy alert"
    );

    // Delete the cluster: every machine goes, then the cluster.
    let (status, body) = s
        .admin
        .call(Method::DELETE, &format!("/v1/clusters/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "Deleting");
    wait_gone(&s.admin, &s._app, &id, limit).await;
    assert!(
        on_peer(peer.as_ref(), &id).await.is_empty(),
        "the peer is clean"
    );
}

/// `kill -9` the appliance while it creates machines, start it again on the same data: the
/// cluster ends Running with exactly its machines on the peer, none twice.
pub(crate) async fn crash_mid_provisioning(target: &Target, workers: u32, limit: Duration) {
    let mut s = setup(target).await;
    let peer = target.provider();
    let id = create_cluster(&s, "crash", workers, "reconcile").await;
    // Kill as soon as the first machine is recorded (before the provider has answered for all).
    wait_for("the first machine record", limit, || async {
        let (_, m) = s.admin.get(&format!("/v1/clusters/{id}/machines")).await;
        m.as_array().is_some_and(|a| !a.is_empty()).then_some(())
    })
    .await;
    s._app.kill9();
    let dir = s._app.dir.clone();
    let app = TestApp::start_in(&dir, &FAST);
    let admin = app.login_token("admin", crate::support::PASSWORD).await;
    wait_status(&admin, &id, "Running", limit).await;
    let machines = on_peer(peer.as_ref(), &id).await;
    let mut names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    names.dedup();
    assert_eq!(
        machines.len(),
        1 + workers as usize,
        "no duplicate machines: {machines:?}"
    );
    assert_eq!(names.len(), machines.len(), "no name twice: {machines:?}");
    let (status, _) = admin
        .call(Method::DELETE, &format!("/v1/clusters/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_gone(&admin, &app, &id, limit).await;
    assert!(
        on_peer(peer.as_ref(), &id).await.is_empty(),
        "the peer is clean"
    );
    drop(app);
}

/// A broken account or profile gives a clear error on the account check and on the cluster.
/// `expect` is a piece of the message that names the problem.
pub(crate) async fn clear_error(
    target: &Target,
    check_kind: Option<&str>,
    expect: &str,
    limit: Duration,
) {
    let s = setup(target).await;
    if let Some(kind) = check_kind {
        let check = validate(&s.admin, &s.account).await;
        assert_eq!(check["state"], "failed", "{check}");
        assert_eq!(check["error_kind"], kind, "{check}");
        assert!(
            check["error"].as_str().unwrap_or("").contains(expect),
            "the account check names the problem ({expect}): {check}"
        );
    }
    let id = create_cluster(&s, "broken", 1, "reconcile").await;
    let cluster = wait_for("a clear error on the cluster", limit, || async {
        let (_, c) = s.admin.get(&format!("/v1/clusters/{id}")).await;
        let said = c["conditions"].as_array().is_some_and(|a| {
            a.iter()
                .any(|k| k["message"].as_str().unwrap_or("").contains(expect))
        });
        said.then_some(c)
    })
    .await;
    assert_ne!(cluster["status"], "Running", "{cluster}");
    // Deleting a cluster whose provisioning failed still works.
    let (status, _) = s
        .admin
        .call(Method::DELETE, &format!("/v1/clusters/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}
