//! Bad requests are answered as problem+json naming the problem, and change nothing;
//! optimistic concurrency with ETag and If-Match.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{cluster_body, profile_body, tenant_fixture, Api, TestApp};

async fn tenant_count(admin: &Api) -> usize {
    let (_, list) = admin.get("/v1/tenants?limit=500").await;
    list["items"].as_array().map(Vec::len).expect("items")
}

#[tokio::test]
async fn malformed_bodies_are_problems_and_write_nothing() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let before = tenant_count(&admin).await;
    // (what, body, content type, expected status, field named)
    type Case<'a> = (&'a str, Vec<u8>, &'a str, StatusCode, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            b"{\"name\": ".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "unknown field",
            br#"{"name":"ok-name","colour":"red"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("colour"),
        ),
        (
            "missing field",
            br#"{"description":"x"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("name"),
        ),
        (
            "invalid name",
            br#"{"name":"../etc"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("name"),
        ),
        (
            "upper-case name",
            br#"{"name":"Acme"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            Some("name"),
        ),
        (
            "wrong type",
            br#"{"name":42}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "not JSON",
            b"name=acme".to_vec(),
            "application/x-www-form-urlencoded",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            "oversized",
            format!(
                r#"{{"name":"big","description":"{}"}}"#,
                "x".repeat(2 * 1024 * 1024)
            )
            .into_bytes(),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
    ];
    for (what, body, content_type, status, field) in cases {
        let res = admin
            .client
            .post(format!("{}/v1/tenants", admin.base))
            .bearer_auth(admin.token.as_deref().expect("token"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), status, "{what}");
        assert_eq!(
            res.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
        let request_id = res
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let problem: serde_json::Value = res.json().await.expect("problem json");
        assert_eq!(problem["status"], status.as_u16(), "{what}: {problem}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {problem}"
        );
        assert_eq!(
            problem["request_id"].as_str(),
            request_id.as_deref(),
            "{what}: request id in body and header"
        );
        if let Some(f) = field {
            assert_eq!(problem["field"], f, "{what}: {problem}");
        }
    }
    assert_eq!(tenant_count(&admin).await, before, "nothing was written");
}

#[tokio::test]
async fn invalid_nested_fields_are_named_with_their_path() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let f = tenant_fixture(&admin, "acme").await;
    let mut bad = cluster_body(&f.project, "c2", &f.profile, &f.cloud_account);
    bad["node_pools"][0]["count"] = json!(2);
    let (status, body) = admin.post("/v1/clusters", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "node_pools[0].count");
    assert!(body["detail"].as_str().unwrap_or_default().contains("odd"));

    let mut bad = profile_body(&f.project, "p2");
    bad["layers"][1]["values"] = json!("- not\n- a mapping");
    let (status, body) = admin.post("/v1/profiles", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "layers[1].values");

    let mut bad = cluster_body(&f.project, "c3", &f.profile, &f.cloud_account);
    bad["profile_revision"] = json!(7);
    let (status, body) = admin.post("/v1/clusters", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "profile_revision");

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "query"),
    ] {
        let (status, body) = admin.get(&format!("/v1/clusters?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["field"], field, "{query}");
    }
    let (_, clusters) = admin.get("/v1/clusters").await;
    assert_eq!(
        clusters["items"].as_array().map(Vec::len),
        Some(1),
        "only the fixture's cluster"
    );
}

#[tokio::test]
async fn stale_etag_gets_412_and_the_newer_write_survives() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let t = admin.create("/v1/tenants", json!({"name": "acme"})).await;
    let path = format!("/v1/tenants/{}", t["id"].as_str().expect("id"));
    let read = admin.send(Method::GET, &path, None, &[]).await;
    let etag = read
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("etag")
        .to_string();
    assert_eq!(etag, "\"v1\"");

    let first = admin
        .send(
            Method::PUT,
            &path,
            Some(json!({"description": "first"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some("\"v2\"")
    );

    let stale = admin
        .send(
            Method::PUT,
            &path,
            Some(json!({"description": "second"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text
    );
    assert_eq!(stale.body["type"], "/problems/version-mismatch");
    assert_eq!(
        (admin.get(&path).await.1)["description"],
        "first",
        "the stale write changed nothing"
    );

    let stale_delete = admin
        .send(Method::DELETE, &path, None, &[("if-match", &etag)])
        .await;
    assert_eq!(stale_delete.status, StatusCode::PRECONDITION_FAILED);
    let bad = admin
        .send(
            Method::PUT,
            &path,
            Some(json!({"description": "x"})),
            &[("if-match", "v2")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["field"], "If-Match");
}

#[tokio::test]
async fn profile_revisions_are_immutable_and_numbered() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let f = tenant_fixture(&admin, "acme").await;
    let path = format!("/v1/profiles/{}/revisions", f.profile);
    let layers = json!([{"type": "os", "pack": "ubuntu", "version": "24.04.1"}]);
    let r2 = admin.create(&path, json!({"layers": layers})).await;
    assert_eq!(r2["revision"]["revision"], 2);
    assert_eq!(r2["profile"]["latest_revision"], 2);
    let (_, r1) = admin.get(&format!("{path}/1")).await;
    assert_eq!(
        r1["layers"].as_array().map(Vec::len),
        Some(3),
        "revision 1 unchanged"
    );
    // A revision cannot be changed in place: there is no route for it.
    let put = admin
        .send(
            Method::PUT,
            &format!("{path}/1"),
            Some(json!({"layers": layers})),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    // The cluster moves to revision 2 through its spec.
    let cluster = format!("/v1/clusters/{}", f.cluster);
    let mut spec = cluster_body(&f.project, "prod", &f.profile, &f.cloud_account);
    let spec = json!({"profile_revision": 2, "node_pools": spec["node_pools"].take(), "drift_policy": "reconcile"});
    let (status, body) = admin.call(Method::PUT, &cluster, Some(spec)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["profile_revision"], 2);
    assert_eq!(
        body["status"], "Pending",
        "status is the orchestrator's, not the user's"
    );
    let (_, events) = admin
        .get(&format!("/v1/events?object_id={}", f.cluster))
        .await;
    assert_eq!(
        events["items"].as_array().map(Vec::len),
        Some(2),
        "created + updated: {events}"
    );
}

#[tokio::test]
async fn conflicts_are_409_naming_what_to_do() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let f = tenant_fixture(&admin, "acme").await;
    let (status, body) = admin.post("/v1/tenants", json!({"name": "acme"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("already exists"));
    for (path, what) in [
        (format!("/v1/cloud-accounts/{}", f.cloud_account), "cluster"),
        (format!("/v1/profiles/{}", f.profile), "cluster"),
        (format!("/v1/projects/{}", f.project), "cluster"),
        (format!("/v1/tenants/{}", f.tenant), "project"),
    ] {
        let (status, body) = admin.call(Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(what),
            "{path}: {body}"
        );
    }
    assert_eq!(
        admin
            .call(Method::DELETE, &format!("/v1/clusters/{}", f.cluster), None)
            .await
            .0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn pages_follow_the_cursor_without_gaps_or_repeats() {
    let app = TestApp::start();
    let admin = app.admin().await;
    for i in 0..7 {
        admin
            .create("/v1/tenants", json!({"name": format!("t{i}")}))
            .await;
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let (_, page) = admin.get(&format!("/v1/tenants?limit=3{after}")).await;
        for t in page["items"].as_array().expect("items") {
            seen.push(t["name"].as_str().expect("name").to_string());
        }
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    let (_, filtered) = admin.get("/v1/tenants?name=t3").await;
    assert_eq!(filtered["items"].as_array().map(Vec::len), Some(1));
}
