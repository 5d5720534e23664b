//! A cluster's pull credential: skopeo pulls with it from the cluster's tenant's and the shared
//! repositories, and can neither push, nor see another tenant, nor use the REST API; revoking
//! it takes effect at once; minting is audited and needs edit rights on the cluster.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::packs::skopeo;
use crate::registry::{registry_host, run, run_ok, Image};
use crate::support::{
    call, push_image, tenant_fixture, user_with_role, Api, TestApp, OCI_MANIFEST,
};

#[tokio::test]
async fn a_clusters_pull_credential_pulls_its_tenant_and_shared_repositories_and_nothing_else() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let acme = tenant_fixture(&admin, "acme").await;
    tenant_fixture(&admin, "globex").await;
    let (app_digest, _) = push_image(&admin, "acme/app", "v1", "a").await;
    push_image(&admin, "shared/base", "v1", "s").await;
    push_image(&admin, "globex/private", "v1", "g").await;

    let path = format!("/v1/clusters/{}/pull-credentials", acme.cluster);
    let created = admin.create(&path, json!({"expires_in_days": 30})).await;
    let secret = created["secret"].as_str().expect("secret").to_string();
    let username = created["username"].as_str().expect("username").to_string();
    let credential_id = created["id"].as_str().expect("id").to_string();
    assert!(secret.starts_with("ppl_"), "{secret}");
    assert_eq!(created["cluster_id"], acme.cluster.as_str());

    let tmp = tempfile::tempdir().expect("tmp");
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    std::fs::write(certs.join("ca.crt"), app.ca_pem()).expect("ca");
    let host = registry_host(&app);
    let creds = format!("{username}:{secret}");

    // Pulls from its tenant and from shared/.
    let out = tmp.path().join("out");
    run_ok(
        skopeo(tmp.path())
            .args([
                "copy",
                "--preserve-digests",
                "--src-creds",
                &creds,
                "--src-cert-dir",
            ])
            .arg(&certs)
            .arg(format!("docker://{host}/acme/app:v1"))
            .arg(format!("oci:{}:v1", out.display())),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(index["manifests"][0]["digest"], app_digest.as_str());
    let inspect = |image: &str| {
        let mut c = skopeo(tmp.path());
        c.args(["inspect", "--raw", "--creds", &creds, "--cert-dir"])
            .arg(&certs)
            .arg(format!("docker://{host}/{image}"));
        c
    };
    run_ok(&mut inspect("shared/base:v1"));
    // Another tenant's repository is invisible to it.
    let denied = run(
        &mut inspect("globex/private:v1"),
        std::time::Duration::from_secs(60),
    );
    assert!(!denied.status.success());

    // skopeo cannot push with it: refused before any handler runs.
    let image = Image::build(tmp.path());
    let layout = tmp.path().join("layout");
    image.write_layout(&layout, "v1");
    let push = run(
        skopeo(tmp.path())
            .args(["copy", "--dest-creds", &creds, "--dest-cert-dir"])
            .arg(&certs)
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{host}/acme/pushed:v1")),
        std::time::Duration::from_secs(120),
    );
    assert!(!push.status.success(), "a pull credential pushed");
    let stderr = String::from_utf8_lossy(&push.stderr).to_lowercase();
    assert!(stderr.contains("denied"), "{stderr}");
    let as_bearer = Api {
        client: app.client(),
        base: app.base.clone(),
        token: Some(secret.clone()),
        csrf: None,
    };
    let r = call(
        &as_bearer,
        Method::PUT,
        "/v2/acme/app/manifests/v2",
        &[("content-type", OCI_MANIFEST)],
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.describe());
    assert_eq!(r.code(), "DENIED");
    assert!(r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("can only pull"));
    let r = call(
        &as_bearer,
        Method::DELETE,
        &format!("/v2/acme/app/manifests/{app_digest}"),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Nor is it an API credential.
    let (status, _) = as_bearer.get("/v1/tenants").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = as_bearer.get(&path).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Listed without its secret; minting was audited.
    let (status, list) = admin.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert!(list[0].get("secret").is_none());
    assert_eq!(list[0]["revoked_at"], Value::Null);
    let (_, audit) = admin.get("/v1/audit?action=pull-credentials").await;
    let minted = audit
        .as_array()
        .expect("audit list")
        .iter()
        .find(|e| e["action"] == "POST /v1/clusters/{id}/pull-credentials")
        .unwrap_or_else(|| panic!("no audit entry: {audit}"));
    assert!(minted["object"]
        .as_str()
        .unwrap_or_default()
        .ends_with(&credential_id));
    assert_eq!(minted["outcome"], "success 201");

    // A project viewer may not mint one; a bad lifetime names the field.
    let viewer = user_with_role(
        &app,
        &admin,
        "acme-viewer",
        Some(&acme.tenant),
        "project-viewer",
        json!({"project_id": acme.project}),
    )
    .await;
    let (status, _) = viewer.post(&path, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = admin.post(&path, json!({"expires_in_days": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("expires_in_days"), "{body}");

    // Revoked: the next pull is refused.
    let r = admin
        .send(
            Method::DELETE,
            &format!("{path}/{credential_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let refused = run(
        &mut inspect("acme/app:v1"),
        std::time::Duration::from_secs(60),
    );
    assert!(
        !refused.status.success(),
        "a revoked credential still pulls"
    );
    let r = call(
        &as_bearer,
        Method::GET,
        "/v2/acme/app/manifests/v1",
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
