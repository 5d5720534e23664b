//! State survives a clean restart and `kill -9` in the middle of writes: every acknowledged
//! write is there afterwards, the database is intact and the audit chain verifies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{run_cli, tenant_fixture, Api, TestApp, PASSWORD};

#[tokio::test]
async fn state_is_kept_across_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    let f = tenant_fixture(&admin, "acme").await;
    let (_, before) = admin.get("/v1/system").await;
    let fingerprint = app.fingerprint.clone();
    app.stop();

    let app = TestApp::start_in(&dir, &[]);
    assert_eq!(
        app.setup_token, None,
        "no setup token once an account exists"
    );
    assert_eq!(app.fingerprint, fingerprint, "the internal CA is kept");
    let admin = app.login_token("admin", PASSWORD).await;
    let (status, cluster) = admin.get(&format!("/v1/clusters/{}", f.cluster)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster["name"], "prod");
    let (_, after) = admin.get("/v1/system").await;
    assert_eq!(after["schema_version"], before["schema_version"]);
    assert!(after["schema_version"].as_i64().unwrap_or(0) >= 1);
    assert_eq!(after["ca_fingerprint"].as_str(), Some(fingerprint.as_str()));
}

async fn write_until_stopped(
    api: Api,
    worker: usize,
    acked: Arc<Mutex<Vec<String>>>,
    stop_at: Instant,
) {
    let mut i = 0;
    while Instant::now() < stop_at && i < 2_000 {
        let res = api
            .client
            .post(format!("{}/v1/tenants", api.base))
            .bearer_auth(api.token.as_deref().expect("token"))
            .json(&json!({"name": format!("w{worker}-{i}")}))
            .send()
            .await;
        match res {
            Ok(r) if r.status() == StatusCode::CREATED => {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if let Some(id) = v["id"].as_str() {
                        acked.lock().expect("lock").push(id.to_string());
                    }
                }
            }
            // The server died under us: stop writing.
            _ => return,
        }
        i += 1;
    }
}

#[tokio::test]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + Duration::from_secs(10);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(write_until_stopped(
                admin.clone(),
                w,
                acked.clone(),
                stop_at,
            ))
        })
        .collect();
    // Let writes flow, then kill without warning while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(8);
    while acked.lock().expect("lock").len() < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.kill9();
    for w in workers {
        w.await.expect("worker");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 40,
        "only {} writes before the kill",
        acked.len()
    );

    let data = dir.to_str().expect("utf-8 path");
    let (code, out, err) = run_cli(&["admin", "check", "--data-dir", data], None);
    assert_eq!(code, 0, "integrity check after kill -9: {out}{err}");
    let (code, out, err) = run_cli(&["admin", "audit-verify", "--data-dir", data], None);
    assert_eq!(code, 0, "audit chain after kill -9: {out}{err}");

    let app = TestApp::start_in(&dir, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    for id in &acked {
        let (status, _) = admin.get(&format!("/v1/tenants/{id}")).await;
        assert_eq!(status, StatusCode::OK, "acknowledged tenant {id} lost");
    }
    // Every tenant in the database, acknowledged or not, has its audit entry: requests that
    // were in flight at the kill are recorded as interrupted.
    let (_, tenants) = admin.get("/v1/tenants?limit=500").await;
    let stored = tenants["items"].as_array().expect("items").len();
    let (_, entries) = admin
        .get("/v1/audit?action=POST%20/v1/tenants&limit=1000")
        .await;
    let audited = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| {
            let outcome = e["outcome"].as_str().unwrap_or_default();
            outcome.starts_with("success") || outcome.starts_with("interrupted")
        })
        .count();
    assert!(
        audited >= stored,
        "{stored} tenants but only {audited} audited creations"
    );
    let (_, report) = admin.get("/v1/audit/verify").await;
    assert_eq!(report["problem"], serde_json::Value::Null, "{report}");
}
