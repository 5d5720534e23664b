//! `palisade admin` on a data directory: users, backup and restore, checks, audit tampering,
//! and secrets kept out of the audit log, the logs and the database file.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{run_cli, tenant_fixture, TestApp, PASSWORD};

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["admin", "--help"],
        vec!["admin", "create-user", "--help"],
        vec!["admin", "reset-password", "--help"],
        vec!["admin", "backup", "--help"],
        vec!["admin", "restore", "--help"],
        vec!["admin", "check", "--help"],
        vec!["admin", "audit-verify", "--help"],
    ] {
        let (code, out, _) = run_cli(&args, None);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let (code, _, err) = run_cli(&["serve", "--listen", "not-an-address"], None);
    assert_eq!(code, 2, "bad usage exits 2");
    assert!(err.contains("--listen"), "{err}");
    let (code, _, err) = run_cli(
        &["admin", "check", "--data-dir", "/nonexistent/palisade"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("no state.db"), "{err}");
}

#[tokio::test]
async fn create_user_and_reset_password_work_offline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let (code, out, err) = run_cli(&["admin", "create-user", "--data-dir", data, "ops"], None);
    assert_eq!(code, 0, "{err}");
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("generated password")
        .to_string();
    let (code, _, err) = run_cli(&["admin", "create-user", "--data-dir", data, "ops"], None);
    assert_eq!(code, 1, "duplicate user refused");
    assert!(err.contains("already exists"), "{err}");

    let app = TestApp::start_in(&dir, &[]);
    assert_eq!(
        app.setup_token, None,
        "an account exists, so no setup token"
    );
    let ops = app.login_token("ops", &generated).await;
    assert_eq!(
        ops.get("/metrics").await.0,
        StatusCode::OK,
        "created as system admin"
    );

    // Lock the account, then reset its password from the command line while the appliance runs.
    let anon = app.anonymous();
    for _ in 0..5 {
        anon.post(
            "/v1/login",
            json!({"username": "ops", "password": "wrong-password"}),
        )
        .await;
    }
    assert_eq!(
        anon.post(
            "/v1/login",
            json!({"username": "ops", "password": generated})
        )
        .await
        .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (code, _, err) = run_cli(
        &[
            "admin",
            "reset-password",
            "--data-dir",
            data,
            "ops",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(code, 0, "{err}");
    app.login("ops", PASSWORD).await;
    let (code, _, err) = run_cli(
        &[
            "admin",
            "reset-password",
            "--data-dir",
            data,
            "nobody",
            "--password-stdin",
        ],
        Some("x\n"),
    );
    assert_ne!(code, 0);
    assert!(!err.is_empty());
}

#[tokio::test]
async fn backup_while_running_then_restore_brings_back_that_state() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let backup = tmp.path().join("palisade.backup");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    let kept = tenant_fixture(&admin, "kept").await;
    let (code, out, err) = run_cli(
        &[
            "admin",
            "backup",
            "--data-dir",
            data,
            backup.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup)
            .expect("backup")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the backup holds keys");
    }
    let later = admin
        .create("/v1/tenants", json!({"name": "after-backup"}))
        .await;

    let (code, _, err) = run_cli(
        &[
            "admin",
            "restore",
            "--data-dir",
            data,
            backup.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(code, 1, "restore refused while the appliance runs");
    assert!(err.contains("in use by a running palisade serve"), "{err}");

    app.stop();
    let garbage = tmp.path().join("garbage");
    std::fs::write(&garbage, b"not a backup at all").expect("write");
    let (code, _, err) = run_cli(
        &[
            "admin",
            "restore",
            "--data-dir",
            data,
            garbage.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("not a palisade backup") || err.contains("damaged"),
        "{err}"
    );

    let (code, out, err) = run_cli(
        &[
            "admin",
            "restore",
            "--data-dir",
            data,
            backup.to_str().expect("path"),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::read_dir(&dir).expect("dir").any(|e| e
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .starts_with("pre-restore-")));

    let app = TestApp::start_in(&dir, &[]);
    let admin = app.login_token("admin", PASSWORD).await;
    assert_eq!(
        admin.get(&format!("/v1/clusters/{}", kept.cluster)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        admin
            .get(&format!(
                "/v1/tenants/{}",
                later["id"].as_str().expect("id")
            ))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (code, out, _) = run_cli(&["admin", "check", "--data-dir", data], None);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn audit_records_mutations_and_logins_and_detects_tampering() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    app.anonymous()
        .post(
            "/v1/login",
            json!({"username": "admin", "password": "wrong-password"}),
        )
        .await;
    let t = admin.create("/v1/tenants", json!({"name": "acme"})).await;
    admin
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{}", t["id"].as_str().expect("id")),
            None,
        )
        .await;

    let (_, entries) = admin.get("/v1/audit?limit=1000").await;
    let entries = entries.as_array().expect("entries").clone();
    let find = |action: &str, outcome: &str| {
        entries.iter().any(|e| {
            e["action"] == action
                && e["outcome"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(outcome)
        })
    };
    assert!(find("POST /v1/setup", "success"));
    assert!(find("POST /v1/login", "denied"), "failed login recorded");
    assert!(find("POST /v1/login", "success"));
    assert!(find("POST /v1/tenants", "success"));
    assert!(find("DELETE /v1/tenants/{id}", "success"));
    assert!(entries.iter().all(|e| e["source"] == "127.0.0.1"));
    assert!(entries.iter().any(|e| e["actor"] == "login:admin"));
    let (_, filtered) = admin.get("/v1/audit?outcome=denied").await;
    assert!(filtered
        .as_array()
        .expect("list")
        .iter()
        .all(|e| e["outcome"]
            .as_str()
            .unwrap_or_default()
            .starts_with("denied")));
    let export = admin.send(Method::GET, "/v1/audit/export", None, &[]).await;
    assert_eq!(
        export.text.lines().count(),
        entries.len(),
        "export has every entry (reads are not audited)"
    );
    let (code, out, _) = run_cli(&["admin", "audit-verify", "--data-dir", data], None);
    assert_eq!(code, 0, "{out}");

    app.stop();
    let conn = rusqlite::Connection::open(dir.join("state.db")).expect("db");
    conn.execute(
        "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3",
        [],
    )
    .expect("tamper");
    drop(conn);
    let (code, out, _) = run_cli(&["admin", "audit-verify", "--data-dir", data], None);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("entry 3 was edited"), "{out}");

    let conn = rusqlite::Connection::open(dir.join("state.db")).expect("db");
    conn.execute(
        "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)",
        [],
    )
    .expect("delete");
    drop(conn);
    let (code, out, _) = run_cli(&["admin", "audit-verify", "--data-dir", data], None);
    assert_eq!(code, 3, "{out}");
}

#[tokio::test]
async fn credentials_never_reach_the_api_audit_logs_or_database_in_clear() {
    const SECRET: &str = "S3cret-Never-Logged-9f2c";
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut app = TestApp::start_in(&dir, &["--log-format", "json"]);
    let admin = app.admin().await;
    let f = tenant_fixture(&admin, "acme").await;
    let created = admin
        .create(
            "/v1/cloud-accounts",
            json!({"project_id": f.project, "name": "os", "kind": "openstack", "endpoint": "https://keystone.local:5000/v3",
                   "credentials": {"username": "admin", "password": SECRET}}),
        )
        .await;
    assert!(!created.to_string().contains(SECRET));
    assert_eq!(created["has_credentials"], true);
    let (_, one) = admin
        .get(&format!(
            "/v1/cloud-accounts/{}",
            created["id"].as_str().expect("id")
        ))
        .await;
    let (_, list) = admin.get("/v1/cloud-accounts").await;
    let export = admin.send(Method::GET, "/v1/audit/export", None, &[]).await;
    for text in [one.to_string(), list.to_string(), export.text] {
        assert!(!text.contains(SECRET));
    }
    app.stop();
    let log = app.log();
    assert!(log.contains("\"level\""), "JSON logs were written");
    assert!(!log.contains(SECRET), "secret in the log");
    for file in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(file)) {
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "secret in clear in {file}"
            );
        }
    }
}

#[tokio::test]
async fn check_names_credentials_the_key_cannot_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let data = dir.to_str().expect("path");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    tenant_fixture(&admin, "acme").await;
    app.stop();
    let (code, out, _) = run_cli(&["admin", "check", "--data-dir", data], None);
    assert_eq!(code, 0, "{out}");
    // A sealing key from another appliance (as after restoring only the database).
    std::fs::write(dir.join("secret.key"), [7u8; 32]).expect("replace key");
    let (code, out, _) = run_cli(&["admin", "check", "--data-dir", data], None);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("credentials of cloud account vc"), "{out}");
}
