//! The OpenAPI document is a valid OpenAPI 3.1 description, its references resolve, and every
//! route it documents is served by the router (and the other way round, by construction:
//! routes are registered through the document).

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::TestApp;

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                }
                collect_refs(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_document_is_valid_and_every_documented_route_is_served() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let r = admin.send(Method::GET, "/v1/openapi.json", None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc: oas3::OpenApiV3Spec = oas3::from_json(&r.text).expect("a valid OpenAPI 3.1 document");
    assert!(doc.openapi.starts_with("3.1"), "{}", doc.openapi);

    let mut refs = Vec::new();
    collect_refs(&r.body, &mut refs);
    assert!(!refs.is_empty());
    for reference in &refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .expect("local schema ref");
        assert!(
            r.body["components"]["schemas"].get(name).is_some(),
            "dangling $ref {reference}"
        );
    }

    let paths = r.body["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            operations += 1;
            assert!(
                op["responses"].as_object().is_some_and(|m| !m.is_empty()),
                "{method} {path} documents no response"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path} has no tag"
            );
            // Probe the route with placeholder ids: it must exist (not 405, not "no such route").
            let concrete = path
                .replace("{id}", "01930000-0000-7000-8000-000000000000")
                .replace("{revision}", "1");
            if path == "/v1/logout" || path == "/v1/me/password" {
                continue; // would end the admin's own session or change its password
            }
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let res = admin.send(m, &concrete, None, &[]).await;
            assert_ne!(
                res.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_ne!(
                res.body["type"], "/problems/no-such-route",
                "{method} {path} is documented but not served"
            );
        }
    }
    assert!(operations >= 40, "only {operations} operations documented");
    for expected in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/system",
        "/v1/openapi.json",
        "/v1/setup",
        "/v1/login",
        "/v1/logout",
        "/v1/me",
        "/v1/me/password",
        "/v1/tenants",
        "/v1/tenants/{id}",
        "/v1/projects",
        "/v1/projects/{id}",
        "/v1/users",
        "/v1/users/{id}",
        "/v1/role-bindings",
        "/v1/role-bindings/{id}",
        "/v1/tokens",
        "/v1/tokens/{id}",
        "/v1/cloud-accounts",
        "/v1/cloud-accounts/{id}",
        "/v1/profiles",
        "/v1/profiles/{id}",
        "/v1/profiles/{id}/revisions",
        "/v1/profiles/{id}/revisions/{revision}",
        "/v1/clusters",
        "/v1/clusters/{id}",
        "/v1/packs",
        "/v1/packs/{id}",
        "/v1/events",
        "/v1/audit",
        "/v1/audit/export",
        "/v1/audit/verify",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = TestApp::start();
    let admin = app.admin().await;
    for _ in 0..3 {
        admin.get("/v1/tenants").await;
    }
    let r = admin.send(Method::GET, "/metrics", None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text.contains(
            r#"palisade_http_requests_total{method="GET",route="/v1/tenants",status="200"} 3"#
        ),
        "{}",
        r.text
    );
    for series in [
        "palisade_http_request_duration_seconds_bucket",
        "palisade_db_schema_version",
        "palisade_process_resident_memory_bytes",
        "palisade_db_rows{table=\"tenants\"}",
    ] {
        assert!(r.text.contains(series), "{series} missing");
    }
}
