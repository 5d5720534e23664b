//! Setup token, login, logout, lockout, sessions with CSRF, API tokens, password change.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, PASSWORD};

#[tokio::test]
async fn setup_token_creates_the_first_admin_once() {
    let app = TestApp::start();
    let token = app
        .setup_token
        .clone()
        .expect("setup token printed on first start");
    assert!(app
        .stdout
        .iter()
        .any(|l| l.contains(&format!("/setup?token={token}"))));
    let anon = app.anonymous();

    let (status, body) = anon
        .post(
            "/v1/setup",
            json!({"token": "setup_wrong", "username": "admin", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = anon
        .post(
            "/v1/setup",
            json!({"token": token, "username": "admin", "password": "short"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "password");

    let (status, _) = anon
        .post(
            "/v1/setup",
            json!({"token": token, "username": "admin", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // The token is void now, for anyone.
    let (status, _) = anon
        .post(
            "/v1/setup",
            json!({"token": token, "username": "second", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let admin = app.login("admin", PASSWORD).await;
    let (_, users) = admin.get("/v1/users").await;
    assert_eq!(users["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn restart_without_accounts_prints_a_new_token_and_voids_the_old() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut first = TestApp::start_in(&dir, &[]);
    let old = first.setup_token.clone().expect("token");
    first.stop();
    let second = TestApp::start_in(&dir, &[]);
    let new = second
        .setup_token
        .clone()
        .expect("new token while no account exists");
    assert_ne!(old, new);
    let (status, _) = second
        .anonymous()
        .post(
            "/v1/setup",
            json!({"token": old, "username": "admin", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    second.admin().await;
}

#[tokio::test]
async fn nothing_but_health_login_and_setup_answers_anonymously() {
    let app = TestApp::start();
    let anon = app.anonymous();
    for open in ["/healthz", "/readyz"] {
        let r = anon.send(Method::GET, open, None, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{open}");
        assert_eq!(
            r.headers
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000")
        );
        assert_eq!(
            r.headers
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff")
        );
    }
    for closed in [
        "/metrics",
        "/v1/system",
        "/v1/openapi.json",
        "/v1/tenants",
        "/v1/projects",
        "/v1/users",
        "/v1/role-bindings",
        "/v1/tokens",
        "/v1/cloud-accounts",
        "/v1/profiles",
        "/v1/clusters",
        "/v1/packs",
        "/v1/events",
        "/v1/audit",
        "/v1/audit/export",
        "/v1/me",
    ] {
        let r = anon.send(Method::GET, closed, None, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{closed}");
        assert_eq!(
            r.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{closed}"
        );
    }
    let (status, _) = anon.post("/v1/tenants", json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_logout_and_session_cookie_flags() {
    let app = TestApp::start();
    app.admin().await;
    let anon = app.anonymous();
    let r = anon
        .send(
            Method::POST,
            "/v1/login",
            Some(json!({"username": "admin", "password": PASSWORD})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let cookie = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    let mut session = anon.clone();
    session.csrf = Some(r.body["csrf_token"].as_str().expect("csrf").to_string());
    assert_eq!(session.get("/v1/me").await.0, StatusCode::OK);
    assert_eq!(
        session.call(Method::POST, "/v1/logout", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(session.get("/v1/me").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn session_changes_need_the_csrf_token() {
    let app = TestApp::start();
    app.admin().await;
    let mut session = app.login("admin", PASSWORD).await;
    let csrf = session.csrf.take();
    let (status, body) = session
        .post("/v1/tenants", json!({"name": "no-csrf"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("CSRF"));
    session.csrf = Some("csrf_wrong".into());
    assert_eq!(
        session
            .post("/v1/tenants", json!({"name": "no-csrf"}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    session.csrf = csrf;
    assert_eq!(
        session
            .post("/v1/tenants", json!({"name": "with-csrf"}))
            .await
            .0,
        StatusCode::CREATED
    );
    let (_, list) = session.get("/v1/tenants?name=no-csrf").await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(0),
        "nothing written without CSRF"
    );
}

#[tokio::test]
async fn repeated_failures_lock_the_account_even_for_the_right_password() {
    let app = TestApp::start();
    app.admin().await;
    let anon = app.anonymous();
    for i in 0..4 {
        let (status, body) = anon
            .post(
                "/v1/login",
                json!({"username": "admin", "password": format!("wrong-{i}")}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = anon
        .post(
            "/v1/login",
            json!({"username": "admin", "password": "wrong-5"}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("locked until"));
    let (status, _) = anon
        .post(
            "/v1/login",
            json!({"username": "admin", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password"
    );
    // Unknown users get the same answer as wrong passwords.
    let (status, body) = anon
        .post(
            "/v1/login",
            json!({"username": "nobody", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "wrong username or password");
}

#[tokio::test]
async fn api_tokens_are_shown_once_work_and_stop_when_revoked() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let created = admin
        .create(
            "/v1/tokens",
            json!({"name": "automation", "expires_in_days": 7}),
        )
        .await;
    let secret = created["secret"].as_str().expect("secret").to_string();
    let id = created["token"]["id"].as_str().expect("id").to_string();
    let (_, list) = admin.get("/v1/tokens").await;
    assert!(
        !list.to_string().contains(&secret),
        "the secret is never listed"
    );
    let mut auto = app.anonymous();
    auto.token = Some(secret.clone());
    assert_eq!(auto.get("/v1/me").await.0, StatusCode::OK);
    assert_eq!(
        admin
            .call(Method::DELETE, &format!("/v1/tokens/{id}"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        auto.get("/v1/me").await.0,
        StatusCode::UNAUTHORIZED,
        "revoked at once"
    );
    auto.token = Some("pst_not-a-token".into());
    assert_eq!(auto.get("/v1/me").await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = admin
        .post(
            "/v1/tokens",
            json!({"name": "long", "expires_in_days": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "expires_in_days");
}

#[tokio::test]
async fn password_change_checks_the_current_one_and_ends_sessions() {
    let app = TestApp::start();
    app.admin().await;
    let session = app.login("admin", PASSWORD).await;
    let (status, body) = session
        .post(
            "/v1/me/password",
            json!({"current_password": "wrong-password", "new_password": "another-long-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "current_password");
    let (status, _) = session
        .post(
            "/v1/me/password",
            json!({"current_password": PASSWORD, "new_password": "another-long-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        session.get("/v1/me").await.0,
        StatusCode::UNAUTHORIZED,
        "sessions end"
    );
    app.login("admin", "another-long-password").await;
}

#[tokio::test]
async fn http_redirect_listener_only_redirects_to_https() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let tmp = tempfile::tempdir().expect("tmp");
    let addr = format!("127.0.0.1:{port}");
    let app = TestApp::start_in(&tmp.path().join("data"), &["--http-redirect", &addr]);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let res = client
        .get(format!("http://{addr}/v1/tenants?x=1"))
        .send()
        .await
        .expect("http");
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    let location = res.headers()["location"].to_str().expect("location");
    let https_port = app.base.rsplit(':').next().expect("port");
    assert_eq!(
        location,
        format!("https://127.0.0.1:{https_port}/v1/tenants?x=1")
    );
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    assert_eq!(admin.get("/v1/me").await.0, StatusCode::OK);
    app.stop();
    let conn = rusqlite::Connection::open(dir.join("state.db")).expect("db");
    conn.execute("UPDATE api_tokens SET expires_at = 1000", [])
        .expect("expire");
    drop(conn);
    let app = TestApp::start_in(&dir, &[]);
    let mut expired = app.anonymous();
    expired.token = admin.token.clone();
    let (status, body) = expired.get("/v1/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}
