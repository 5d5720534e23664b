//! The OCI registry under `/v2/`: real container tools (skopeo, containerd's ctr) push to and
//! pull from the appliance over loopback HTTPS, and reqwest checks the protocol's edges
//! (chunked uploads, digests, ranges, paging, referrers) and the access rules.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{
    call, files_under, plain, push_blob, push_image, put_manifest, sha256, tenant_fixture,
    user_with_role, Api, TestApp, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};

fn blob_files(app: &TestApp) -> Vec<PathBuf> {
    files_under(&app.dir.join("registry/blobs"))
}

fn upload_files(app: &TestApp) -> Vec<PathBuf> {
    files_under(&app.dir.join("registry/uploads"))
}

#[tokio::test]
async fn unauthenticated_requests_get_a_basic_challenge_and_tokens_work_as_basic_passwords() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let anon = app.anonymous();
    for path in ["/v2/", "/v2/_catalog", "/v2/shared/demo/tags/list"] {
        let r = plain(&anon, Method::GET, path).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{path}: {}",
            r.describe()
        );
        assert_eq!(r.header("www-authenticate"), r#"Basic realm="palisade""#);
        assert_eq!(r.code(), "UNAUTHORIZED", "{path}");
    }
    let token = admin.token.clone().expect("token");
    let basic = |user: &str, password: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let wrong = call(
        &anon,
        Method::GET,
        "/v2/",
        &[("authorization", &basic("admin", "not-a-token"))],
        None,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.header("www-authenticate"),
        r#"Basic realm="palisade""#
    );
    assert_eq!(wrong.code(), "UNAUTHORIZED");
    let wrong_bearer = call(
        &anon,
        Method::GET,
        "/v2/",
        &[("authorization", "Bearer pal_nonsense")],
        None,
    )
    .await;
    assert_eq!(wrong_bearer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_bearer.code(), "UNAUTHORIZED");
    // Any user name, the token as password.
    let ok = call(
        &anon,
        Method::GET,
        "/v2/",
        &[("authorization", &basic("whoever", &token))],
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.describe());
    assert_eq!(ok.header("docker-distribution-api-version"), "registry/2.0");
    let bearer = plain(&admin, Method::GET, "/v2/").await;
    assert_eq!(bearer.status, StatusCode::OK);
    // The REST API does not take Basic; the registry does not take console sessions.
    let r = call(
        &anon,
        Method::GET,
        "/v1/tenants",
        &[("authorization", &basic("admin", &token))],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let session = app.login("admin", crate::support::PASSWORD).await;
    let r = plain(&session, Method::GET, "/v2/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.describe());
    let (status, _) = session.get("/v1/tenants").await;
    assert_eq!(status, StatusCode::OK, "the session itself works on /v1");
}

#[tokio::test]
async fn chunked_upload_refuses_out_of_order_ranges_and_assembles_chunks_in_order() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let content: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256(&content);
    let start = plain(&admin, Method::POST, "/v2/shared/chunks/blobs/uploads/").await;
    assert_eq!(start.status, StatusCode::ACCEPTED, "{}", start.describe());
    assert_eq!(start.header("range"), "0-0");
    let location = start.header("location");
    assert!(
        location.starts_with("/v2/shared/chunks/blobs/uploads/"),
        "{location}"
    );
    assert!(!start.header("docker-upload-uuid").is_empty());

    let patch = |range: String, bytes: Vec<u8>| {
        let admin = admin.clone();
        let location = location.clone();
        async move {
            call(
                &admin,
                Method::PATCH,
                &location,
                &[
                    ("content-range", &range),
                    ("content-type", "application/octet-stream"),
                ],
                Some(bytes),
            )
            .await
        }
    };
    let r = patch("0-999".into(), content[..1000].to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.describe());
    assert_eq!(r.header("range"), "0-999");
    // A gap, an overlap and a restart are all refused with the offset to resume from.
    for (range, bytes) in [
        ("2000-2999", &content[2000..]),
        ("500-1499", &content[500..1500]),
        ("0-999", &content[..1000]),
    ] {
        let r = patch(range.into(), bytes.to_vec()).await;
        assert_eq!(
            r.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}: {}",
            r.describe()
        );
        assert_eq!(r.code(), "BLOB_UPLOAD_INVALID");
        assert_eq!(r.header("range"), "0-999", "{range}");
        assert_eq!(r.header("location"), location);
    }
    // A chunk whose body disagrees with its Content-Range is refused and changes nothing.
    let r = patch("1000-1999".into(), content[1000..1500].to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.describe());
    let status = plain(&admin, Method::GET, &location).await;
    assert_eq!(status.status, StatusCode::NO_CONTENT);
    assert_eq!(status.header("range"), "0-999");

    let r = patch("1000-2999".into(), content[1000..].to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.describe());
    assert_eq!(r.header("range"), "0-2999");
    // Nothing is visible before the upload is completed.
    let head = plain(
        &admin,
        Method::HEAD,
        &format!("/v2/shared/chunks/blobs/{digest}"),
    )
    .await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    let done = plain(&admin, Method::PUT, &format!("{location}?digest={digest}")).await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.describe());
    assert_eq!(done.header("docker-content-digest"), digest);
    assert_eq!(
        done.header("location"),
        format!("/v2/shared/chunks/blobs/{digest}")
    );
    let got = plain(
        &admin,
        Method::GET,
        &format!("/v2/shared/chunks/blobs/{digest}"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, content);
    let head = plain(
        &admin,
        Method::HEAD,
        &format!("/v2/shared/chunks/blobs/{digest}"),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), "3000");
    assert_eq!(head.header("docker-content-digest"), digest);
    let gone = plain(&admin, Method::GET, &location).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.code(), "BLOB_UPLOAD_UNKNOWN");

    // Streamed PATCH without Content-Range, then the last bytes with the PUT.
    let start = plain(&admin, Method::POST, "/v2/shared/chunks/blobs/uploads/").await;
    let location = start.header("location");
    let r = call(
        &admin,
        Method::PATCH,
        &location,
        &[],
        Some(content[..2500].to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), "0-2499");
    let done = call(
        &admin,
        Method::PUT,
        &format!("{location}?digest={digest}"),
        &[("content-range", "2500-2999")],
        Some(content[2500..].to_vec()),
    )
    .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.describe());
    // Same content: stored once.
    assert_eq!(blob_files(&app).len(), 1, "{:?}", blob_files(&app));
    assert!(upload_files(&app).is_empty(), "{:?}", upload_files(&app));

    // A cancelled upload leaves nothing behind.
    let start = plain(&admin, Method::POST, "/v2/shared/chunks/blobs/uploads/").await;
    let location = start.header("location");
    call(
        &admin,
        Method::PATCH,
        &location,
        &[],
        Some(b"partial".to_vec()),
    )
    .await;
    let r = plain(&admin, Method::DELETE, &location).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(upload_files(&app).is_empty());
}

#[tokio::test]
async fn blobs_larger_than_the_api_body_limit_stream_through_and_manifests_are_capped() {
    let app = TestApp::start();
    let admin = app.admin().await;
    // 5 MiB: five times the API's default body limit (1 MiB), which the registry must not apply.
    let content: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let d = push_blob(&admin, "shared/large", &content).await;
    let r = plain(&admin, Method::GET, &format!("/v2/shared/large/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), content.len());
    assert!(r.body == content, "the large blob came back different");
    // Two large chunks.
    let start = plain(&admin, Method::POST, "/v2/shared/large/blobs/uploads/").await;
    let location = start.header("location");
    let half = content.len() / 2;
    let r = call(
        &admin,
        Method::PATCH,
        &location,
        &[("content-range", &format!("0-{}", half - 1))],
        Some(content[..half].to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.describe());
    let r = call(
        &admin,
        Method::PATCH,
        &location,
        &[("content-range", &format!("{half}-{}", content.len() - 1))],
        Some(content[half..].to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.describe());
    let r = plain(&admin, Method::PUT, &format!("{location}?digest={d}")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.describe());
    assert_eq!(blob_files(&app).len(), 1);
    // A manifest over 4 MiB is refused.
    let huge = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": d, "size": content.len()},
        "layers": [],
        "annotations": {"padding": "x".repeat(4 * 1024 * 1024)}
    });
    let r = put_manifest(&admin, "shared/large", "huge", OCI_MANIFEST, &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.describe());
    assert_eq!(r.code(), "MANIFEST_INVALID");
}

#[tokio::test]
async fn an_upload_in_progress_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut app = TestApp::start_in(&dir, &[]);
    let admin = app.admin().await;
    let content: Vec<u8> = (0..2000u32).map(|i| (i % 199) as u8).collect();
    let digest = sha256(&content);
    let start = plain(&admin, Method::POST, "/v2/shared/resume/blobs/uploads/").await;
    let location = start.header("location");
    let r = call(
        &admin,
        Method::PATCH,
        &location,
        &[("content-range", "0-999")],
        Some(content[..1000].to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    app.stop();

    let app = TestApp::start_in(&dir, &[]);
    let admin = Api {
        client: app.client(),
        base: app.base.clone(),
        token: admin.token.clone(),
        csrf: None,
    };
    let r = plain(&admin, Method::GET, &location).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.describe());
    assert_eq!(r.header("range"), "0-999");
    let r = call(
        &admin,
        Method::PATCH,
        &location,
        &[("content-range", "1000-1999")],
        Some(content[1000..].to_vec()),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.describe());
    let r = plain(&admin, Method::PUT, &format!("{location}?digest={digest}")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.describe());
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/shared/resume/blobs/{digest}"),
    )
    .await;
    assert_eq!(r.body, content);
}

#[tokio::test]
async fn wrong_digest_is_refused_and_nothing_is_stored() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let content = b"the real content".to_vec();
    let claimed = sha256(b"something else");
    let real = sha256(&content);
    let r = call(
        &admin,
        Method::POST,
        &format!("/v2/shared/digests/blobs/uploads/?digest={claimed}"),
        &[],
        Some(content.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.describe());
    assert_eq!(r.code(), "DIGEST_INVALID");

    // Chunked, refused at the PUT: the upload is discarded too.
    let start = plain(&admin, Method::POST, "/v2/shared/digests/blobs/uploads/").await;
    let location = start.header("location");
    call(&admin, Method::PATCH, &location, &[], Some(content.clone())).await;
    let r = plain(&admin, Method::PUT, &format!("{location}?digest={claimed}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = plain(&admin, Method::GET, &location).await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    for d in [&claimed, &real] {
        let r = plain(
            &admin,
            Method::HEAD,
            &format!("/v2/shared/digests/blobs/{d}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{d}");
    }
    assert!(blob_files(&app).is_empty(), "{:?}", blob_files(&app));
    assert!(upload_files(&app).is_empty(), "{:?}", upload_files(&app));

    // Malformed digests and names are refused before anything is read.
    for bad in [
        format!("sha512:{}", "a".repeat(128)),
        format!("sha256:{}", "A".repeat(64)),
        "sha256:abc".to_string(),
    ] {
        let r = call(
            &admin,
            Method::POST,
            &format!("/v2/shared/digests/blobs/uploads/?digest={bad}"),
            &[],
            Some(content.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.code(), "DIGEST_INVALID", "{bad}");
        let r = plain(
            &admin,
            Method::GET,
            &format!("/v2/shared/digests/blobs/{bad}"),
        )
        .await;
        assert_eq!(r.code(), "DIGEST_INVALID", "{bad}");
    }
    for bad in ["Shared/x", "shared/a..b", "nonamespace"] {
        let r = plain(&admin, Method::GET, &format!("/v2/{bad}/tags/list")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.code(), "NAME_INVALID", "{bad}");
    }
    assert!(blob_files(&app).is_empty());
    assert!(upload_files(&app).is_empty());
}

#[tokio::test]
async fn range_reads_return_partial_content() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let content: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = push_blob(&admin, "shared/ranges", &content).await;
    let path = format!("/v2/shared/ranges/blobs/{d}");
    for (range, from, to) in [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=990-", 990, 999),
        ("bytes=-5", 995, 999),
        ("bytes=100-2000", 100, 999),
    ] {
        let r = call(&admin, Method::GET, &path, &[("range", range)], None).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.header("content-range"), format!("bytes {from}-{to}/1000"));
        assert_eq!(r.header("content-length"), (to - from + 1).to_string());
        assert_eq!(r.body, content[from..=to], "{range}");
    }
    let r = call(
        &admin,
        Method::GET,
        &path,
        &[("range", "bytes=1000-")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), "bytes */1000");
    let r = plain(&admin, Method::GET, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("accept-ranges"), "bytes");
    assert_eq!(r.body, content);
    let r = call(&admin, Method::HEAD, &path, &[("range", "bytes=0-9")], None).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-length"), "10");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn manifests_are_served_by_tag_and_digest_and_tags_page_with_n_and_last() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let repo = "shared/paged";
    let (digest, layer) = push_image(&admin, repo, "e", "paged").await;
    for tag in ["c", "a", "d", "b"] {
        let m = plain(&admin, Method::GET, &format!("/v2/{repo}/manifests/e")).await;
        let r = call(
            &admin,
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", OCI_MANIFEST)],
            Some(m.body),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.header("docker-content-digest"), digest);
    }
    for method in [Method::GET, Method::HEAD] {
        for reference in ["a", digest.as_str()] {
            let r = call(
                &admin,
                method.clone(),
                &format!("/v2/{repo}/manifests/{reference}"),
                &[],
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{method} {reference}");
            assert_eq!(r.header("content-type"), OCI_MANIFEST);
            assert_eq!(r.header("docker-content-digest"), digest);
            let len: usize = r.header("content-length").parse().expect("length");
            if method == Method::GET {
                assert_eq!(len, r.body.len());
                assert_eq!(sha256(&r.body), digest);
            } else {
                assert!(len > 0 && r.body.is_empty());
            }
        }
    }

    let r = plain(&admin, Method::GET, &format!("/v2/{repo}/tags/list?n=2")).await;
    assert_eq!(r.json(), json!({"name": repo, "tags": ["a", "b"]}));
    let link = r.header("link");
    assert_eq!(
        link,
        format!("</v2/{repo}/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let mut next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("url")
        .to_string();
    let mut pages = vec![];
    for _ in 0..10 {
        let r = plain(&admin, Method::GET, &next).await;
        assert_eq!(r.status, StatusCode::OK);
        pages.push(r.json()["tags"].clone());
        let link = r.header("link");
        if link.is_empty() {
            break;
        }
        next = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .expect("url")
            .to_string();
    }
    assert_eq!(pages, vec![json!(["c", "d"]), json!(["e"])]);
    let r = plain(&admin, Method::GET, &format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.json()["tags"], json!(["a", "b", "c", "d", "e"]));
    assert!(r.header("link").is_empty());
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/{repo}/tags/list?n=2&last=d"),
    )
    .await;
    assert_eq!(r.json()["tags"], json!(["e"]));
    let r = plain(&admin, Method::GET, &format!("/v2/{repo}/tags/list?n=0")).await;
    assert_eq!(r.json()["tags"], json!([]));
    let r = plain(&admin, Method::GET, &format!("/v2/{repo}/tags/list?n=x")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // A blob a manifest references cannot be deleted from under it.
    let r = plain(&admin, Method::DELETE, &format!("/v2/{repo}/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.describe());
    // Deleting a tag leaves the manifest; deleting the manifest takes every tag with it.
    let r = plain(&admin, Method::DELETE, &format!("/v2/{repo}/manifests/a")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = plain(&admin, Method::GET, &format!("/v2/{repo}/manifests/a")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let r = plain(
        &admin,
        Method::DELETE,
        &format!("/v2/{repo}/manifests/{digest}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = plain(&admin, Method::GET, &format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.json()["tags"], json!([]));
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/{repo}/manifests/{digest}"),
    )
    .await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let r = plain(&admin, Method::DELETE, &format!("/v2/{repo}/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = plain(&admin, Method::GET, &format!("/v2/{repo}/blobs/{layer}")).await;
    assert_eq!(r.code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn manifests_must_reference_content_of_their_own_repository() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let config = b"{}".to_vec();
    let c = push_blob(&admin, "shared/refs", &config).await;
    let elsewhere = push_blob(&admin, "shared/other", b"layer elsewhere").await;
    let missing = sha256(b"never pushed");
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": c, "size": 2},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": missing, "size": 12},
            {"mediaType": OCI_LAYER, "digest": elsewhere, "size": 15}
        ]
    });
    let r = put_manifest(&admin, "shared/refs", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.describe());
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    let mut named: Vec<String> = r.json()["errors"][0]["detail"]["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    named.sort();
    let mut want = vec![missing.clone(), elsewhere.clone()];
    want.sort();
    assert_eq!(named, want);
    let r = plain(&admin, Method::GET, "/v2/shared/refs/manifests/v1").await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");

    for (ct, body, code) in [
        (OCI_MANIFEST, b"{not json".to_vec(), "MANIFEST_INVALID"),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            serde_json::to_vec(&m).expect("json"),
            "MANIFEST_INVALID",
        ),
        (
            OCI_INDEX,
            serde_json::to_vec(&m).expect("json"),
            "MANIFEST_INVALID",
        ),
    ] {
        let r = call(
            &admin,
            Method::PUT,
            "/v2/shared/refs/manifests/v1",
            &[("content-type", ct)],
            Some(body),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ct}: {}", r.describe());
        assert_eq!(r.code(), code, "{ct}");
    }

    // An image and an index of it; pushing by digest checks the digest.
    let (image, _) = push_image(&admin, "shared/refs", "image", "refs").await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": image, "size": 1,
                       "platform": {"architecture": "amd64", "os": "linux"}}]
    });
    let bytes = serde_json::to_vec(&index).expect("json");
    let wrong = sha256(b"not the index");
    let r = call(
        &admin,
        Method::PUT,
        &format!("/v2/shared/refs/manifests/{wrong}"),
        &[("content-type", OCI_INDEX)],
        Some(bytes.clone()),
    )
    .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = call(
        &admin,
        Method::PUT,
        &format!("/v2/shared/refs/manifests/{}", sha256(&bytes)),
        &[("content-type", OCI_INDEX)],
        Some(bytes.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.describe());
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/shared/refs/manifests/{}", sha256(&bytes)),
    )
    .await;
    assert_eq!(r.header("content-type"), OCI_INDEX);
    assert_eq!(r.body, bytes);
    // The same index cannot go where the image is not.
    let r = put_manifest(&admin, "shared/other", "idx", OCI_INDEX, &index).await;
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
    // The image cannot be deleted while the index references it.
    let r = plain(
        &admin,
        Method::DELETE,
        &format!("/v2/shared/refs/manifests/{image}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn referrers_list_the_manifests_whose_subject_is_the_digest() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let repo = "shared/signed";
    let (subject, _) = push_image(&admin, repo, "v1", "signed").await;
    let subject_size = plain(&admin, Method::HEAD, &format!("/v2/{repo}/manifests/v1"))
        .await
        .header("content-length");
    let empty = push_blob(&admin, repo, b"{}").await;
    let mut pushed = vec![];
    for (kind, note) in [
        ("application/vnd.example.sbom.v1+json", "sbom"),
        ("application/vnd.example.signature.v1", "signature"),
    ] {
        let m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": kind,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject,
                        "size": subject_size.parse::<u64>().expect("size")},
            "annotations": {"org.example.note": note}
        });
        let bytes = serde_json::to_vec(&m).expect("json");
        let r = call(
            &admin,
            Method::PUT,
            &format!("/v2/{repo}/manifests/{}", sha256(&bytes)),
            &[("content-type", OCI_MANIFEST)],
            Some(bytes.clone()),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.describe());
        assert_eq!(r.header("oci-subject"), subject);
        pushed.push((sha256(&bytes), kind, note, bytes.len()));
    }
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/{repo}/referrers/{subject}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.describe());
    assert_eq!(r.header("content-type"), OCI_INDEX);
    let index = r.json();
    assert_eq!(index["mediaType"], OCI_INDEX);
    let mut listed: Vec<Value> = index["manifests"].as_array().expect("manifests").clone();
    listed.sort_by_key(|m| m["artifactType"].as_str().map(str::to_string));
    let want: Vec<Value> = pushed
        .iter()
        .map(|(d, kind, note, size)| {
            json!({"mediaType": OCI_MANIFEST, "digest": d, "size": size,
                   "artifactType": kind, "annotations": {"org.example.note": note}})
        })
        .collect();
    assert_eq!(listed, want);
    let r = plain(
        &admin,
        Method::GET,
        &format!(
            "/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.signature.v1"
        ),
    )
    .await;
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    let only = r.json()["manifests"].as_array().expect("manifests").clone();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["digest"], pushed[1].0.as_str());
    // No referrers: an empty index, not an error.
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/{repo}/referrers/{}", sha256(b"nothing")),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["manifests"], json!([]));
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/{repo}/referrers/sha256:nope"),
    )
    .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
}

#[tokio::test]
async fn tenant_admin_of_a_cannot_pull_or_see_tenant_b_repositories_but_pulls_shared() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let a = tenant_fixture(&admin, "rega").await;
    let _b = tenant_fixture(&admin, "regb").await;
    let (b_manifest, b_layer) = push_image(&admin, "regb/app", "v1", "b").await;
    let (shared_manifest, shared_layer) = push_image(&admin, "shared/base", "v1", "base").await;
    push_image(&admin, "rega/own", "v1", "a").await;
    let a_admin = user_with_role(
        &app,
        &admin,
        "rega-admin",
        Some(&a.tenant),
        "tenant-admin",
        json!({"tenant_id": a.tenant}),
    )
    .await;

    // Tenant B's repository answers exactly like one that does not exist.
    let absent = plain(&a_admin, Method::GET, "/v2/nosuch/app/tags/list").await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND);
    assert_eq!(absent.code(), "NAME_UNKNOWN");
    let probes: Vec<(Method, String)> = vec![
        (Method::GET, "/v2/regb/app/manifests/v1".into()),
        (Method::HEAD, "/v2/regb/app/manifests/v1".into()),
        (Method::GET, format!("/v2/regb/app/manifests/{b_manifest}")),
        (Method::GET, format!("/v2/regb/app/blobs/{b_layer}")),
        (Method::GET, "/v2/regb/app/tags/list".into()),
        (Method::GET, format!("/v2/regb/app/referrers/{b_manifest}")),
        (Method::POST, "/v2/regb/app/blobs/uploads/".into()),
        (
            Method::DELETE,
            format!("/v2/regb/app/manifests/{b_manifest}"),
        ),
        (Method::DELETE, format!("/v2/regb/app/blobs/{b_layer}")),
    ];
    for (method, path) in &probes {
        let r = call(&a_admin, method.clone(), path, &[], None).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            r.describe()
        );
        if *method != Method::HEAD {
            assert_eq!(r.code(), "NAME_UNKNOWN", "{method} {path}");
            assert_eq!(
                r.json()["errors"][0]["message"]
                    .as_str()
                    .map(|m| m.replace("regb/app", "X")),
                absent.json()["errors"][0]["message"]
                    .as_str()
                    .map(|m| m.replace("nosuch/app", "X")),
                "the message must not tell an invisible repository from an absent one"
            );
        }
    }
    let r = put_manifest(&a_admin, "regb/app", "v2", OCI_MANIFEST, &json!({})).await;
    assert_eq!(r.code(), "NAME_UNKNOWN");
    // B's manifest is still there for its owner.
    let r = plain(&admin, Method::GET, "/v2/regb/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);

    let r = plain(&a_admin, Method::GET, "/v2/_catalog").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"repositories": ["rega/own", "shared/base"]})
    );
    let r = plain(&admin, Method::GET, "/v2/_catalog").await;
    assert_eq!(
        r.json(),
        json!({"repositories": ["rega/own", "regb/app", "shared/base"]})
    );
    let r = plain(&admin, Method::GET, "/v2/_catalog?n=1&last=rega/own").await;
    assert_eq!(r.json(), json!({"repositories": ["regb/app"]}));
    assert!(r.header("link").contains("last=regb/app"));

    // shared/ is readable, not writable, by a tenant admin.
    let r = plain(&a_admin, Method::GET, "/v2/shared/base/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), shared_manifest);
    let r = plain(&a_admin, Method::POST, "/v2/shared/base/blobs/uploads/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "DENIED");

    // Its own tenant is writable; mounting needs read access to the source.
    push_image(&a_admin, "rega/new", "v1", "new").await;
    let r = plain(
        &a_admin,
        Method::POST,
        &format!("/v2/rega/new/blobs/uploads/?mount={b_layer}&from=regb/app"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "no mount, an upload session instead"
    );
    assert!(r
        .header("location")
        .starts_with("/v2/rega/new/blobs/uploads/"));
    let r = plain(
        &a_admin,
        Method::HEAD,
        &format!("/v2/rega/new/blobs/{b_layer}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = plain(
        &a_admin,
        Method::POST,
        &format!("/v2/rega/new/blobs/uploads/?mount={shared_layer}&from=shared/base"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.describe());
    assert_eq!(r.header("docker-content-digest"), shared_layer);
    let r = plain(
        &a_admin,
        Method::GET,
        &format!("/v2/rega/new/blobs/{shared_layer}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, b"layer of base");
}

#[tokio::test]
async fn viewer_can_pull_but_not_push_and_editor_can_push() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let t = tenant_fixture(&admin, "regv").await;
    let (digest, _) = push_image(&admin, "regv/app", "v1", "v").await;
    let viewer = user_with_role(
        &app,
        &admin,
        "regv-viewer",
        Some(&t.tenant),
        "project-viewer",
        json!({"project_id": t.project}),
    )
    .await;
    let editor = user_with_role(
        &app,
        &admin,
        "regv-editor",
        Some(&t.tenant),
        "project-editor",
        json!({"project_id": t.project}),
    )
    .await;
    let r = plain(&viewer, Method::GET, "/v2/regv/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = plain(&viewer, Method::GET, "/v2/_catalog").await;
    assert_eq!(r.json()["repositories"], json!(["regv/app"]));
    for (method, path) in [
        (Method::POST, "/v2/regv/app/blobs/uploads/".to_string()),
        (
            Method::POST,
            "/v2/regv/brand-new/blobs/uploads/".to_string(),
        ),
        (Method::DELETE, format!("/v2/regv/app/manifests/{digest}")),
        (Method::DELETE, "/v2/regv/app/manifests/v1".to_string()),
    ] {
        let r = call(&viewer, method.clone(), &path, &[], None).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.describe()
        );
        assert_eq!(r.code(), "DENIED");
    }
    let m = plain(&viewer, Method::GET, "/v2/regv/app/manifests/v1").await;
    let r = call(
        &viewer,
        Method::PUT,
        "/v2/regv/app/manifests/v2",
        &[("content-type", OCI_MANIFEST)],
        Some(m.body.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "DENIED");
    let r = plain(&viewer, Method::GET, "/v2/regv/app/tags/list").await;
    assert_eq!(r.json()["tags"], json!(["v1"]));

    let r = call(
        &editor,
        Method::PUT,
        "/v2/regv/app/manifests/v2",
        &[("content-type", OCI_MANIFEST)],
        Some(m.body),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.describe());
    push_image(&editor, "regv/editor-own", "v1", "editor").await;
    let r = plain(&editor, Method::POST, "/v2/shared/x/blobs/uploads/").await;
    assert_eq!(r.code(), "DENIED");
}

// ---- real clients -------------------------------------------------------------------------

/// Run `cmd`, killing it if it takes longer than `limit`.
pub(crate) fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "{cmd:?} did not finish within {limit:?}:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Run `cmd` and require success; returns stdout.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A small OCI image: a gzip'd tar layer with one file, its config and manifest.
pub(crate) struct Image {
    pub(crate) layer: Vec<u8>,
    pub(crate) config: Vec<u8>,
    pub(crate) manifest: Vec<u8>,
}

impl Image {
    pub(crate) fn build(dir: &Path) -> Image {
        let mut tar = tar::Builder::new(Vec::new());
        let text = b"hello from the palisade registry\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, "hello.txt", &text[..])
            .expect("tar entry");
        let tar = tar.into_inner().expect("tar");
        let plain = dir.join("layer.tar");
        std::fs::write(&plain, &tar).expect("write tar");
        // Debian's gzip (an essential package); -n keeps the output reproducible.
        let gz = Command::new("gzip")
            .args(["-n", "-c"])
            .arg(&plain)
            .output()
            .expect("gzip");
        assert!(gz.status.success());
        let layer = gz.stdout;
        let config = serde_json::to_vec(&json!({
            "architecture": go_arch(),
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]}
        }))
        .expect("config");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}]
        }))
        .expect("manifest");
        Image {
            layer,
            config,
            manifest,
        }
    }

    /// Write the image as an OCI image layout with tag `tag`.
    pub(crate) fn write_layout(&self, dir: &Path, tag: &str) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        for b in [&self.layer, &self.config, &self.manifest] {
            std::fs::write(blobs.join(&sha256(b)["sha256:".len()..]), b).expect("blob");
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": sha256(&self.manifest),
                "size": self.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }]
        });
        std::fs::write(dir.join("index.json"), index.to_string()).expect("index.json");
    }

    pub(crate) fn digests(&self) -> (String, String, String) {
        (
            sha256(&self.manifest),
            sha256(&self.config),
            sha256(&self.layer),
        )
    }
}

/// The host:port of the appliance, as container tools name a registry.
pub(crate) fn registry_host(app: &TestApp) -> String {
    app.base.trim_start_matches("https://").to_string()
}

#[tokio::test]
async fn skopeo_copies_an_image_in_and_out_mounts_it_inspects_and_deletes_it() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let token = admin.token.clone().expect("token");
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    std::fs::write(certs.join("ca.crt"), app.ca_pem()).expect("ca.crt");
    let policy = tmp.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("policy");
    let image = Image::build(tmp.path());
    let layout = tmp.path().join("layout");
    image.write_layout(&layout, "v1");
    let (manifest, config, layer) = image.digests();
    let host = registry_host(&app);
    let creds = format!("admin:{token}");
    let skopeo = || {
        let mut c = Command::new("skopeo");
        c.arg("--policy").arg(&policy);
        // Its own home: no credentials or caches of the machine's user are read.
        c.env("HOME", tmp.path());
        c
    };

    // Push.
    run_ok(
        skopeo()
            .args(["copy", "--dest-creds", &creds, "--dest-cert-dir"])
            .arg(&certs)
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{host}/shared/demo:v1")),
    );
    let r = plain(&admin, Method::GET, "/v2/shared/demo/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), manifest);
    assert_eq!(
        r.body, image.manifest,
        "the manifest is stored byte for byte"
    );
    assert_eq!(blob_files(&app).len(), 3, "{:?}", blob_files(&app));

    // Pull back into a new layout: same manifest, same blobs.
    let back = tmp.path().join("back");
    run_ok(
        skopeo()
            .args(["copy", "--src-creds", &creds, "--src-cert-dir"])
            .arg(&certs)
            .arg(format!("docker://{host}/shared/demo:v1"))
            .arg(format!("oci:{}:v1", back.display())),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(index["manifests"][0]["digest"], manifest.as_str());
    for (d, content) in [
        (&manifest, &image.manifest),
        (&config, &image.config),
        (&layer, &image.layer),
    ] {
        let got = std::fs::read(back.join("blobs/sha256").join(&d["sha256:".len()..]))
            .unwrap_or_else(|e| panic!("{d} missing from the pulled layout: {e}"));
        assert_eq!(&got, content, "{d}");
    }

    // Registry to registry: skopeo mounts the blobs from shared/demo, nothing is stored twice.
    let before = blob_files(&app);
    run_ok(
        skopeo()
            .args(["copy", "--src-creds", &creds, "--dest-creds", &creds])
            .arg("--src-cert-dir")
            .arg(&certs)
            .arg("--dest-cert-dir")
            .arg(&certs)
            .arg(format!("docker://{host}/shared/demo:v1"))
            .arg(format!("docker://{host}/shared/copy:v1")),
    );
    assert_eq!(
        blob_files(&app),
        before,
        "the copy must reuse the stored blobs"
    );
    assert!(
        app.log().contains("blob mounted"),
        "skopeo was expected to mount the blobs from shared/demo"
    );
    let r = plain(&admin, Method::GET, "/v2/shared/copy/manifests/v1").await;
    assert_eq!(r.header("docker-content-digest"), manifest);

    // Inspect.
    let out = run_ok(
        skopeo()
            .args(["inspect", "--creds", &creds, "--cert-dir"])
            .arg(&certs)
            .arg(format!("docker://{host}/shared/demo:v1")),
    );
    let inspected: Value = serde_json::from_str(&out).expect("inspect json");
    assert_eq!(inspected["Digest"], manifest.as_str());
    assert_eq!(inspected["Layers"], json!([layer]));
    assert_eq!(inspected["Architecture"], go_arch());
    assert_eq!(inspected["RepoTags"], json!(["v1"]));

    // Delete the copy: its tag and manifest go, the original is untouched.
    run_ok(
        skopeo()
            .args(["delete", "--creds", &creds, "--cert-dir"])
            .arg(&certs)
            .arg(format!("docker://{host}/shared/copy:v1")),
    );
    let r = plain(&admin, Method::GET, "/v2/shared/copy/manifests/v1").await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let r = plain(
        &admin,
        Method::GET,
        &format!("/v2/shared/copy/manifests/{manifest}"),
    )
    .await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let r = plain(&admin, Method::GET, "/v2/shared/demo/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A private containerd on a socket in a temporary directory, killed when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                opt = dir.join("opt").display(),
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start containerd (apt-get install containerd)");
        let c = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not open its socket within 30 s:\n{}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "palisade-test"]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn containerd_pulls_an_image_from_the_appliance() {
    let app = TestApp::start();
    let admin = app.admin().await;
    let token = admin.token.clone().expect("token");
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = Image::build(tmp.path());
    let (manifest, config, layer) = image.digests();
    // Push over plain HTTP calls: this test is about containerd's pull.
    push_blob(&admin, "shared/demo", &image.config).await;
    push_blob(&admin, "shared/demo", &image.layer).await;
    let r = call(
        &admin,
        Method::PUT,
        "/v2/shared/demo/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        Some(image.manifest.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let ca = tmp.path().join("ca.crt");
    std::fs::write(&ca, app.ca_pem()).expect("ca");

    // containerd talks plain HTTP to a registry on 127.0.0.1 unless its hosts configuration
    // names the HTTPS server.
    let host = registry_host(&app);
    let hosts = tmp.path().join("hosts");
    std::fs::create_dir_all(hosts.join(&host)).expect("hosts dir");
    std::fs::write(
        hosts.join(&host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            ca.display()
        ),
    )
    .expect("hosts.toml");
    let containerd = Containerd::start(&tmp.path().join("containerd"));
    let reference = format!("{host}/shared/demo:v1");
    let pull = |user: &str| {
        let mut c = containerd.ctr();
        c.args(["images", "pull", "--snapshotter", "native", "--user", user])
            .arg("--hosts-dir")
            .arg(&hosts)
            .arg("--tlscacert")
            .arg(&ca)
            .arg(&reference);
        c
    };
    run_ok(&mut pull(&format!("admin:{token}")));
    let images = run_ok(containerd.ctr().args(["images", "ls"]));
    let line = images
        .lines()
        .find(|l| l.starts_with(&reference))
        .unwrap_or_else(|| panic!("{reference} not in:\n{images}"));
    assert!(line.contains(&manifest), "{line}");
    let content = run_ok(containerd.ctr().args(["content", "ls", "-q"]));
    for d in [&manifest, &config, &layer] {
        assert!(
            content.lines().any(|l| l.trim() == d),
            "{d} not in:\n{content}"
        );
    }
    // A wrong token is refused: containerd reports the failure instead of pulling.
    let out = run(&mut pull("admin:wrong-token"), Duration::from_secs(120));
    assert!(!out.status.success(), "a pull with a wrong token succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
