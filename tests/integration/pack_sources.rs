//! Pack sources: a tenant registers an external registry (Debian's docker-registry on loopback,
//! HTTPS with a private CA and htpasswd credentials); the packs pushed there join the tenant's
//! packs listing, invisible to other tenants; bad credentials are reported on the source.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::oci_pull::{test_tls_identity, Auth, DockerRegistry};
use crate::support::{tenant_fixture, user_with_role, Api};

async fn external_packs(api: &Api) -> Vec<Value> {
    let (status, page) = api.get("/v1/packs").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.get("source_id").is_some())
        .collect()
}

/// Poll `check` for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_of_a_tenants_external_registry_join_its_packs_listing_only() {
    let app = crate::support::TestApp::start();
    let admin = app.admin().await;
    let acme = tenant_fixture(&admin, "acme").await;
    let globex = tenant_fixture(&admin, "globex").await;
    let acme_admin = user_with_role(
        &app,
        &admin,
        "acme-admin",
        Some(&acme.tenant),
        "tenant-admin",
        json!({"tenant_id": acme.tenant}),
    )
    .await;
    let acme_viewer = user_with_role(
        &app,
        &admin,
        "acme-viewer",
        Some(&acme.tenant),
        "project-viewer",
        json!({"project_id": acme.project}),
    )
    .await;
    let globex_admin = user_with_role(
        &app,
        &admin,
        "globex-admin",
        Some(&globex.tenant),
        "tenant-admin",
        json!({"tenant_id": globex.tenant}),
    )
    .await;

    // The partner's registry: HTTPS with its own CA, htpasswd credentials.
    let (ca_pem, tls) = test_tls_identity();
    let registry = DockerRegistry::start_with(
        Auth::Htpasswd("partner".into(), "partner-pass".into()),
        Some(tls),
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let bundles = Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/packs");
    let mut digests = Vec::new();
    for name in ["metrics-server", "csi-local-path"] {
        let layout = tmp.path().join(name);
        let packed =
            palisade::pack::package_to_layout(&bundles.join(name), &layout).expect("package");
        registry.push(&layout, &packed.version, &format!("partner/packs/{name}"));
        digests.push(packed.manifest_digest);
    }
    // An image among the packs and a pack outside the prefix are not listed.
    let image = crate::registry::Image::build(tmp.path());
    let img = tmp.path().join("image");
    image.write_layout(&img, "v1");
    registry.push(&img, "v1", "partner/packs/not-a-pack");
    let outside = tmp.path().join("outside");
    palisade::pack::package_to_layout(&bundles.join("cni-flannel"), &outside).expect("package");
    registry.push(&outside, "0.25.5", "elsewhere/cni-flannel");

    // Validation and permissions first.
    let body = |url: &str, password: &str| {
        json!({"tenant_id": acme.tenant, "name": "partner", "url": url, "prefix": "partner/packs",
               "credentials": {"username": "partner", "password": password}, "ca_bundle": ca_pem})
    };
    let (status, problem) = acme_admin
        .post(
            "/v1/pack-sources",
            body(&format!("http://{}", registry.host), "x"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(problem.to_string().contains("url"), "{problem}");
    let (status, _) = acme_viewer
        .post(
            "/v1/pack-sources",
            body(&format!("https://{}", registry.host), "x"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = globex_admin
        .post(
            "/v1/pack-sources",
            body(&format!("https://{}", registry.host), "x"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let source = acme_admin
        .create(
            "/v1/pack-sources",
            body(&format!("https://{}", registry.host), "partner-pass"),
        )
        .await;
    let id = source["id"].as_str().expect("id").to_string();
    assert_eq!(source["has_credentials"], true);
    assert!(
        !source.to_string().contains("partner-pass"),
        "credentials are never returned"
    );

    let found = eventually("the partner's packs", || {
        let api = acme_viewer.clone();
        async move {
            let packs = external_packs(&api).await;
            (packs.len() == 2).then_some(Value::Array(packs))
        }
    })
    .await;
    let mut names: Vec<&str> = found
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["csi-local-path", "metrics-server"]);
    for p in found.as_array().expect("list") {
        assert_eq!(p["source_id"], id.as_str());
        assert!(
            digests.contains(&p["digest"].as_str().unwrap_or_default().to_string()),
            "{p}"
        );
    }
    let metrics = found
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["name"] == "metrics-server")
        .expect("metrics-server");
    assert_eq!(metrics["version"], "0.7.1");
    assert_eq!(metrics["layer_type"], "addon");
    let pack_id = metrics["id"].as_str().expect("id").to_string();
    let (status, _) = acme_viewer.get(&format!("/v1/packs/{pack_id}")).await;
    assert_eq!(status, StatusCode::OK);

    // Another tenant sees neither the source nor its packs.
    assert!(external_packs(&globex_admin).await.is_empty());
    let (status, _) = globex_admin.get(&format!("/v1/pack-sources/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = globex_admin.get(&format!("/v1/packs/{pack_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = globex_admin.get("/v1/pack-sources").await;
    assert_eq!(list, json!([]));
    // A viewer of the tenant reads but does not manage it.
    let (status, _) = acme_viewer
        .post(&format!("/v1/pack-sources/{id}/sync"), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Wrong credentials: the source says why, the packs found before stay.
    let r = acme_admin
        .send(
            Method::PUT,
            &format!("/v1/pack-sources/{id}"),
            Some(json!({"url": format!("https://{}", registry.host), "prefix": "partner/packs",
                        "credentials": {"username": "partner", "password": "wrong"}, "ca_bundle": ca_pem})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let failed = eventually("the sync error", || {
        let api = acme_admin.clone();
        let id = id.clone();
        async move {
            let (_, s) = api.get(&format!("/v1/pack-sources/{id}")).await;
            (!s["sync_error"].as_str().unwrap_or_default().is_empty()).then_some(s)
        }
    })
    .await;
    assert!(
        failed["sync_error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused the credentials of user \"partner\""),
        "{failed}"
    );
    assert_eq!(external_packs(&acme_viewer).await.len(), 2);

    // Deleted: its packs leave the listing.
    let r = acme_admin
        .send(Method::DELETE, &format!("/v1/pack-sources/{id}"), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(external_packs(&acme_viewer).await.is_empty());
}
