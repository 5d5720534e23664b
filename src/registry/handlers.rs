//! The distribution API's endpoints. One axum handler takes every `/v2/` request, parses the
//! path into a [`Route`] (repository names contain `/`), and calls the endpoint's function.
//!
//! Each endpoint authenticates (the middleware put the principal in the request), authorises
//! with [`super::authorize`], validates names, digests and parameters, calls the store and the
//! blob store, and renders. Request bodies are streamed to disk, never buffered, except
//! manifests, which are read up to [`MAX_MANIFEST_BYTES`].

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::Sha256;

use super::blobs::AppendError;
use super::errors::RegistryError;
use super::manifests::{self, MAX_MANIFEST_BYTES, OCI_INDEX};
use super::names::{Digest, Reference, RepoName};
use super::{authorize, catalog_scope, Need, MAX_BLOB_BYTES, MAX_OPEN_UPLOADS};
use crate::api::extract::AuthContext;
use crate::api::middleware::{AuditObject, RequestId};
use crate::api::AppState;
use crate::app::App;
use crate::model::Principal;
use crate::store::{DeleteManifest, NewManifest, PutManifest, UnlinkBlob};

/// Longest page of `_catalog` and tags lists (also the page size when `n` is not given).
pub const MAX_PAGE: u32 = 1000;
/// Most referrers listed for one subject.
pub const MAX_REFERRERS: u32 = 1000;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The shapes of `/v2/` paths.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, String),
    Blob(RepoName, String),
    UploadStart(RepoName),
    Upload(RepoName, String),
    Referrers(RepoName, String),
}

impl Route {
    /// Parse the path of a request under `/v2`.
    fn parse(path: &str) -> Result<Route> {
        let rest = match path.strip_prefix("/v2") {
            Some("") | Some("/") => return Ok(Route::Base),
            Some(r) => r.strip_prefix('/').ok_or(RegistryError::NoRoute)?,
            None => return Err(RegistryError::NoRoute),
        };
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Route::Tags(RepoName::parse(name)?));
        }
        if let Some(name) = rest.strip_suffix("/blobs/uploads") {
            return Ok(Route::UploadStart(RepoName::parse(name)?));
        }
        // The last occurrence of the marker splits name and argument, so a repository may
        // have a component named like a marker (shared/blobs/x).
        let split = |marker: &str| {
            rest.rsplit_once(marker)
                .filter(|(_, arg)| !arg.contains('/'))
                .map(|(name, arg)| (name.to_string(), decode(arg)))
        };
        if let Some((name, id)) = split("/blobs/uploads/") {
            let name = RepoName::parse(&name)?;
            return Ok(if id.is_empty() {
                Route::UploadStart(name)
            } else {
                Route::Upload(name, id)
            });
        }
        if let Some((name, d)) = split("/blobs/") {
            return Ok(Route::Blob(RepoName::parse(&name)?, d));
        }
        if let Some((name, r)) = split("/manifests/") {
            return Ok(Route::Manifest(RepoName::parse(&name)?, r));
        }
        if let Some((name, d)) = split("/referrers/") {
            return Ok(Route::Referrers(RepoName::parse(&name)?, d));
        }
        Err(RegistryError::NoRoute)
    }
}

/// Undo the one escape clients apply to references and digests (`:` as `%3A`).
fn decode(arg: &str) -> String {
    arg.replace("%3A", ":").replace("%3a", ":")
}

/// Query parameters (the last value of a repeated name wins).
struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Query> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or(""))
            .map_err(|e| RegistryError::BadParameter(format!("malformed query string: {e}")))?;
        Ok(Query(pairs.into_iter().collect()))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// `n` and `last` of a paged list.
    fn page(&self) -> Result<(u32, Option<String>)> {
        let n = match self.get("n") {
            None => MAX_PAGE,
            Some(v) => v
                .parse::<u32>()
                .map_err(|_| {
                    RegistryError::BadParameter(format!(
                        "n={v:?} is not a page size: give a whole number (at most {MAX_PAGE} are returned per page)"
                    ))
                })?
                .min(MAX_PAGE),
        };
        Ok((n, self.get("last").map(str::to_string)))
    }
}

/// `Range` value for an upload holding `size` bytes (`0-0` for an empty one, as clients expect).
pub(super) fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// A response with `status`, no body, and `headers`.
fn empty(status: StatusCode, headers: Vec<(HeaderName, String)>) -> Response {
    let mut res = status.into_response();
    let h = res.headers_mut();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    if !h.contains_key(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    res
}

/// A JSON response with a `Link` to the next page when there is one.
fn json_page(body: Value, next: Option<String>) -> Response {
    let mut res = (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response();
    if let Some(next) = next {
        if let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
            res.headers_mut().insert(header::LINK, v);
        }
    }
    res
}

fn docker_digest(d: &Digest) -> (HeaderName, String) {
    (
        HeaderName::from_static("docker-content-digest"),
        d.to_string(),
    )
}

fn upload_uuid(id: &uuid::Uuid) -> (HeaderName, String) {
    (
        HeaderName::from_static("docker-upload-uuid"),
        id.to_string(),
    )
}

fn header_str(h: &HeaderMap, name: HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>> {
    match header_str(h, header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            RegistryError::SizeInvalid(format!("Content-Length {v:?} is not a byte count"))
        }),
    }
}

/// The one `/v2/` handler: dispatch, then render errors in the spec's format.
pub(super) async fn dispatch(State(app): State<AppState>, req: Request) -> Response {
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let mut res = match handle(&app, req).await {
        Ok(res) => res,
        Err(e) => e.render(request_id.as_deref()),
    };
    res.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    res
}

async fn handle(app: &App, req: Request) -> Result<Response> {
    let principal = req
        .extensions()
        .get::<AuthContext>()
        .map(|c| c.principal.clone())
        .ok_or(RegistryError::Unauthorized)?;
    let (parts, body) = req.into_parts();
    let route = Route::parse(parts.uri.path())?;
    let q = Query::parse(parts.uri.query())?;
    let h = &parts.headers;
    let p = &principal;
    let m = &parts.method;
    let not_allowed = |allowed: &str| {
        Err(RegistryError::Unsupported(format!(
            "{m} is not supported here: this endpoint takes {allowed}"
        )))
    };
    let mut res = match route {
        Route::Base => match *m {
            Method::GET | Method::HEAD => Ok(json_page(json!({}), None)),
            _ => not_allowed("GET and HEAD"),
        },
        Route::Catalog => match *m {
            Method::GET => catalog(app, p, &q).await,
            _ => not_allowed("GET"),
        },
        Route::Tags(name) => match *m {
            Method::GET => tags(app, p, &name, &q).await,
            _ => not_allowed("GET"),
        },
        Route::Manifest(name, r) => match *m {
            Method::GET => get_manifest(app, p, &name, &r, false).await,
            Method::HEAD => get_manifest(app, p, &name, &r, true).await,
            Method::PUT => put_manifest(app, p, &name, &r, h, body).await,
            Method::DELETE => delete_manifest(app, p, &name, &r).await,
            _ => not_allowed("GET, HEAD, PUT and DELETE"),
        },
        Route::Blob(name, d) => match *m {
            Method::GET => get_blob(app, p, &name, &d, h, false).await,
            Method::HEAD => get_blob(app, p, &name, &d, h, true).await,
            Method::DELETE => delete_blob(app, p, &name, &d).await,
            _ => not_allowed("GET, HEAD and DELETE"),
        },
        Route::UploadStart(name) => match *m {
            Method::POST => start_upload(app, p, &name, &q, h, body).await,
            _ => not_allowed("POST"),
        },
        Route::Upload(name, id) => match *m {
            Method::GET => upload_status(app, p, &name, &id).await,
            Method::PATCH => patch_upload(app, p, &name, &id, h, body).await,
            Method::PUT => finish_upload(app, p, &name, &id, &q, h, body).await,
            Method::DELETE => cancel_upload(app, p, &name, &id).await,
            _ => not_allowed("GET, PATCH, PUT and DELETE"),
        },
        Route::Referrers(name, d) => match *m {
            Method::GET => referrers(app, p, &name, &d, &q).await,
            _ => not_allowed("GET"),
        },
    }?;
    if let Some(d) = res.headers().get("docker-content-digest").cloned() {
        // Name the content in the audit record of a push or delete.
        if let Ok(d) = d.to_str() {
            res.extensions_mut().insert(AuditObject(d.to_string()));
        }
    }
    Ok(res)
}

/// The id of an existing repository the caller may `need`; absent answers `NAME_UNKNOWN`.
async fn repository(app: &App, p: &Principal, name: &RepoName, need: Need) -> Result<i64> {
    let tenant = authorize(&app.store, p, name, need).await?;
    app.store
        .registry_repository(&tenant, name.as_str())
        .await?
        .ok_or_else(|| RegistryError::NameUnknown {
            name: name.to_string(),
        })
}

/// The id of a repository the caller may write, created if needed.
async fn writable_repository(app: &App, p: &Principal, name: &RepoName) -> Result<i64> {
    let tenant = authorize(&app.store, p, name, Need::Write).await?;
    Ok(app
        .store
        .registry_ensure_repository(&tenant, name.as_str())
        .await?)
}

async fn catalog(app: &App, p: &Principal, q: &Query) -> Result<Response> {
    let (n, last) = q.page()?;
    if n == 0 {
        return Ok(json_page(json!({ "repositories": [] }), None));
    }
    let (names, more) = app
        .store
        .registry_catalog(catalog_scope(p), last.as_deref(), n)
        .await?;
    let next = match (more, names.last()) {
        (true, Some(l)) => Some(format!("/v2/_catalog?n={n}&last={l}")),
        _ => None,
    };
    Ok(json_page(json!({ "repositories": names }), next))
}

async fn tags(app: &App, p: &Principal, name: &RepoName, q: &Query) -> Result<Response> {
    let repo = repository(app, p, name, Need::Read).await?;
    let (n, last) = q.page()?;
    let (tags, more) = if n == 0 {
        (vec![], false)
    } else {
        app.store.registry_tags(repo, last.as_deref(), n).await?
    };
    let next = match (more, tags.last()) {
        (true, Some(l)) => Some(format!("/v2/{name}/tags/list?n={n}&last={l}")),
        _ => None,
    };
    Ok(json_page(
        json!({ "name": name.as_str(), "tags": tags }),
        next,
    ))
}

async fn get_manifest(
    app: &App,
    p: &Principal,
    name: &RepoName,
    reference: &str,
    head: bool,
) -> Result<Response> {
    let repo = repository(app, p, name, Need::Read).await?;
    let reference = Reference::parse(reference)?;
    let found = match &reference {
        Reference::Tag(t) => app.store.registry_manifest_by_tag(repo, t.as_str()).await?,
        Reference::Digest(d) => app.store.registry_manifest(repo, d.as_str()).await?,
    };
    let unknown = || RegistryError::ManifestUnknown {
        reference: reference.to_string(),
    };
    let m = found.ok_or_else(unknown)?;
    let digest = Digest::parse(&m.digest)?;
    let mut headers = vec![
        (header::CONTENT_TYPE, m.media_type.clone()),
        (header::CONTENT_LENGTH, m.size.to_string()),
        (header::ETAG, format!("\"{digest}\"")),
        docker_digest(&digest),
    ];
    if head {
        return Ok(empty(StatusCode::OK, headers));
    }
    let Some(bytes) = app.registry.blobs.read_blob(&digest).await? else {
        tracing::error!(%digest, "a recorded manifest has no file in the blob store");
        return Err(unknown());
    };
    headers.retain(|(k, _)| k != header::CONTENT_LENGTH);
    let mut res = Body::from(bytes).into_response();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            res.headers_mut().insert(k, v);
        }
    }
    Ok(res)
}

/// Read a manifest body, refusing one larger than [`MAX_MANIFEST_BYTES`]. The rest of an
/// oversized body is read and dropped, up to as much again, so that the client (still
/// sending) receives the 413 rather than a reset connection; beyond that the connection is
/// simply closed.
async fn read_manifest_body(h: &HeaderMap, body: Body) -> Result<Bytes> {
    let too_large = RegistryError::ManifestTooLarge {
        limit: MAX_MANIFEST_BYTES,
    };
    let drain_limit = 2 * MAX_MANIFEST_BYTES as u64;
    let announced = content_length(h)?;
    if announced.is_some_and(|n| n > drain_limit) {
        return Err(too_large);
    }
    let mut out = Vec::new();
    let mut seen = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::ManifestInvalid(format!("the request body was cut off: {e}"))
        })?;
        seen += chunk.len() as u64;
        if seen > drain_limit {
            return Err(too_large);
        }
        if seen <= MAX_MANIFEST_BYTES as u64 {
            out.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_MANIFEST_BYTES as u64 {
        return Err(too_large);
    }
    Ok(Bytes::from(out))
}

async fn put_manifest(
    app: &App,
    p: &Principal,
    name: &RepoName,
    reference: &str,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    // Authorise and validate everything before reading the body.
    let tenant = authorize(&app.store, p, name, Need::Write).await?;
    let reference = Reference::parse(reference)?;
    let bytes = read_manifest_body(h, body).await?;
    let parsed = manifests::parse(header_str(h, header::CONTENT_TYPE), &bytes)?;
    let digest = Digest::of(&bytes);
    if let Reference::Digest(d) = &reference {
        if *d != digest {
            return Err(RegistryError::DigestInvalid(format!(
                "the manifest's sha256 is {digest}, not {d}: push it by tag or by its own digest"
            )));
        }
    }
    let repo = app
        .store
        .registry_ensure_repository(&tenant, name.as_str())
        .await?;
    let record = NewManifest {
        digest: digest.to_string(),
        media_type: parsed.media_type.to_string(),
        size: bytes.len() as u64,
        artifact_type: parsed.artifact_type.clone(),
        subject: parsed.subject.as_ref().map(Digest::to_string),
        annotations: parsed.annotations.clone(),
        blobs: parsed.blobs.iter().map(Digest::to_string).collect(),
        manifests: parsed.manifests.iter().map(Digest::to_string).collect(),
    };
    let tag = match &reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    let outcome = {
        // Shared side of the collector's lock, from writing the file to committing its row.
        // If the manifest is refused, its file stays unrecorded and the collector removes it.
        let _reachable = app.registry.gc.read().await;
        app.registry.blobs.put_bytes(bytes, &digest).await?;
        app.store.registry_put_manifest(repo, record, tag).await?
    };
    if let PutManifest::MissingReferences(missing) = outcome {
        return Err(RegistryError::ManifestBlobUnknown { missing });
    }
    let mut headers = vec![
        (header::LOCATION, format!("/v2/{name}/manifests/{digest}")),
        docker_digest(&digest),
    ];
    if let Some(s) = &parsed.subject {
        headers.push((HeaderName::from_static("oci-subject"), s.to_string()));
    }
    Ok(empty(StatusCode::CREATED, headers))
}

async fn delete_manifest(
    app: &App,
    p: &Principal,
    name: &RepoName,
    reference: &str,
) -> Result<Response> {
    let repo = repository(app, p, name, Need::Write).await?;
    let reference = Reference::parse(reference)?;
    let unknown = || RegistryError::ManifestUnknown {
        reference: reference.to_string(),
    };
    match &reference {
        Reference::Tag(t) => {
            if !app.store.registry_delete_tag(repo, t.as_str()).await? {
                return Err(unknown());
            }
        }
        Reference::Digest(d) => match app.store.registry_delete_manifest(repo, d.as_str()).await? {
            DeleteManifest::Deleted => {}
            DeleteManifest::NotFound => return Err(unknown()),
            DeleteManifest::Referenced { index } => {
                return Err(RegistryError::Conflict(format!(
                    "manifest {d} is referenced by index {index} of this repository: delete the index first"
                )))
            }
        },
    }
    Ok(empty(StatusCode::ACCEPTED, vec![]))
}

/// A single byte range of a blob of `size` bytes, from a `Range: bytes=...` header. `Ok(None)`
/// means "send everything": no header, a form this server ignores (several ranges), or one
/// it cannot parse (RFC 9110 lets a server ignore those).
fn byte_range(h: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = header_str(h, header::RANGE).and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let unsatisfiable = RegistryError::RangeNotSatisfiable { size };
    let (start, end) = if a.is_empty() {
        // Suffix: the last b bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            u64::MAX
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e,
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(unsatisfiable);
        }
        (start, end.min(size - 1))
    };
    Ok(Some((start, end)))
}

async fn get_blob(
    app: &App,
    p: &Principal,
    name: &RepoName,
    digest: &str,
    h: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let repo = repository(app, p, name, Need::Read).await?;
    let digest = Digest::parse(digest)?;
    let unknown = || RegistryError::BlobUnknown {
        digest: digest.to_string(),
    };
    let size = app
        .store
        .registry_blob(repo, digest.as_str())
        .await?
        .ok_or_else(unknown)?;
    let range = byte_range(h, size)?;
    let (status, start, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, len.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::ETAG, format!("\"{digest}\"")),
        docker_digest(&digest),
    ];
    if let Some((s, e)) = range {
        headers.push((header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}")));
    }
    if head {
        return Ok(empty(status, headers));
    }
    // Once open, the file stays readable even if the collector removes it meanwhile.
    let Some(mut file) = app.registry.blobs.open_blob(&digest).await? else {
        tracing::error!(%digest, "a recorded blob has no file in the blob store");
        return Err(unknown());
    };
    if start > 0 {
        // lseek only moves the file offset: no I/O to keep off the runtime.
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))
            .map_err(RegistryError::internal)?;
    }
    let stream = super::blobs::read_chunks(file, len);
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = status;
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            res.headers_mut().insert(k, v);
        }
    }
    Ok(res)
}

async fn delete_blob(app: &App, p: &Principal, name: &RepoName, digest: &str) -> Result<Response> {
    let repo = repository(app, p, name, Need::Write).await?;
    let digest = Digest::parse(digest)?;
    match app.store.registry_unlink_blob(repo, digest.as_str()).await? {
        UnlinkBlob::Unlinked => Ok(empty(StatusCode::ACCEPTED, vec![docker_digest(&digest)])),
        UnlinkBlob::NotLinked => Err(RegistryError::BlobUnknown {
            digest: digest.to_string(),
        }),
        UnlinkBlob::Referenced { manifest } => Err(RegistryError::Conflict(format!(
            "blob {digest} is referenced by manifest {manifest} of this repository: delete the manifest first"
        ))),
    }
}

fn upload_location(name: &RepoName, id: &uuid::Uuid) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// Open a new upload in `repo` (its database row first, then its file: see the collector).
async fn open_upload(app: &App, repo: i64) -> Result<uuid::Uuid> {
    let id = uuid::Uuid::new_v4();
    if !app
        .store
        .registry_create_upload(repo, &id.to_string(), MAX_OPEN_UPLOADS)
        .await?
    {
        return Err(RegistryError::TooManyUploads {
            limit: MAX_OPEN_UPLOADS,
        });
    }
    app.registry.blobs.create_upload(&id).await?;
    Ok(id)
}

async fn start_upload(
    app: &App,
    p: &Principal,
    name: &RepoName,
    q: &Query,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let repo = writable_repository(app, p, name).await?;
    if let Some(mount) = q.get("mount") {
        let digest = Digest::parse(mount)?;
        if let Some(res) = mount_blob(app, p, name, repo, &digest, q.get("from")).await? {
            return Ok(res);
        }
        // Not mountable (unknown source, not readable, or not there): the spec's answer is an
        // ordinary upload session.
    } else if let Some(d) = q.get("digest") {
        // Monolithic upload in one POST.
        let expected = Digest::parse(d)?;
        let id = open_upload(app, repo).await?;
        return write_and_commit(app, name, repo, id, h, body, Some(expected)).await;
    }
    let id = open_upload(app, repo).await?;
    Ok(empty(
        StatusCode::ACCEPTED,
        vec![
            (header::LOCATION, upload_location(name, &id)),
            (header::RANGE, range_header(0)),
            upload_uuid(&id),
        ],
    ))
}

/// Link `digest` from repository `from` into `repo`, if the caller may read `from` and `from`
/// holds it; `None` when it cannot be mounted.
async fn mount_blob(
    app: &App,
    p: &Principal,
    name: &RepoName,
    repo: i64,
    digest: &Digest,
    from: Option<&str>,
) -> Result<Option<Response>> {
    let Some(from) = from.and_then(|f| RepoName::parse(f).ok()) else {
        return Ok(None);
    };
    let source = match repository(app, p, &from, Need::Read).await {
        Ok(id) => id,
        Err(RegistryError::NameUnknown { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mounted = {
        let _reachable = app.registry.gc.read().await;
        app.store
            .registry_mount_blob(source, repo, digest.as_str())
            .await?
    };
    if mounted.is_none() {
        return Ok(None);
    }
    tracing::info!(%digest, from = %from, to = %name, "blob mounted");
    Ok(Some(empty(
        StatusCode::CREATED,
        vec![
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            docker_digest(digest),
        ],
    )))
}

/// The open upload `id` of a repository the caller may write.
async fn open_upload_of(
    app: &App,
    p: &Principal,
    name: &RepoName,
    id: &str,
) -> Result<(i64, uuid::Uuid)> {
    let repo = repository(app, p, name, Need::Write).await?;
    let unknown = || RegistryError::BlobUploadUnknown { id: id.to_string() };
    // Only a canonical UUID reaches a file path.
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| unknown())?;
    if uuid.to_string() != id {
        return Err(unknown());
    }
    Ok((repo, uuid))
}

async fn upload_status(app: &App, p: &Principal, name: &RepoName, id: &str) -> Result<Response> {
    let (repo, uuid) = open_upload_of(app, p, name, id).await?;
    let unknown = || RegistryError::BlobUploadUnknown { id: id.to_string() };
    app.store
        .registry_upload(repo, id)
        .await?
        .ok_or_else(unknown)?;
    let size = app
        .registry
        .blobs
        .upload_size(&uuid)
        .await?
        .ok_or_else(unknown)?;
    Ok(empty(
        StatusCode::NO_CONTENT,
        vec![
            (header::LOCATION, upload_location(name, &uuid)),
            (header::RANGE, range_header(size)),
            upload_uuid(&uuid),
        ],
    ))
}

/// A chunk's `Content-Range: <start>-<end>` (inclusive), as the spec writes it; `bytes ` and
/// `bytes=` prefixes and a `/<total>` suffix are tolerated.
fn content_range(h: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(v) = header_str(h, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        RegistryError::BlobUploadInvalid(format!(
            "Content-Range {v:?} is not <start>-<end> (inclusive byte offsets, such as 0-1023)"
        ))
    };
    let s = v.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if b < a {
        return Err(bad());
    }
    Ok(Some((a, b)))
}

/// Append a request body to upload `id` under the upload's guard: checks `Content-Range`
/// against the bytes held, streams the body to disk while hashing, and returns the guard with
/// the new hash state and size.
async fn append_body<'a>(
    app: &'a App,
    name: &RepoName,
    repo: i64,
    id: uuid::Uuid,
    h: &HeaderMap,
    body: Body,
) -> Result<(super::uploads::UploadGuard<'a>, Sha256, u64)> {
    let unknown = || RegistryError::BlobUploadUnknown { id: id.to_string() };
    let mut guard = app.registry.uploads.begin(id).ok_or_else(|| {
        RegistryError::BlobUploadInvalid(
            "another request is writing to this upload: wait for it to finish, then ask for the upload's status".into(),
        )
    })?;
    // The touch also proves the upload is still open (the collector skips busy uploads).
    if !app
        .store
        .registry_touch_upload(repo, &id.to_string())
        .await?
    {
        return Err(unknown());
    }
    let size = app
        .registry
        .blobs
        .upload_size(&id)
        .await?
        .ok_or_else(unknown)?;
    let (mut hasher, offset) = match guard.take_cached() {
        Some((h, n)) if n == size => (h, n),
        _ => app.registry.blobs.hash_upload(&id).await?,
    };
    let announced = content_length(h)?;
    let expected = match content_range(h)? {
        Some((start, end)) => {
            if start != offset {
                guard.keep(hasher, offset);
                return Err(RegistryError::ChunkOutOfOrder {
                    offset,
                    location: upload_location(name, &id),
                });
            }
            let len = end - start + 1;
            if announced.is_some_and(|n| n != len) {
                guard.keep(hasher, offset);
                return Err(RegistryError::BlobUploadInvalid(format!(
                    "Content-Range {start}-{end} announces {len} bytes but Content-Length says {}",
                    announced.unwrap_or_default()
                )));
            }
            Some(len)
        }
        None => announced,
    };
    let appended = app
        .registry
        .blobs
        .append(
            &id,
            offset,
            &mut hasher,
            body.into_data_stream(),
            MAX_BLOB_BYTES,
            expected,
        )
        .await;
    match appended {
        Ok(size) => Ok((guard, hasher, size)),
        Err(e) => {
            // Nothing changed (the file was cut back): keep the state for a retry.
            let err = match e {
                AppendError::Store(e) => return Err(e.into()),
                AppendError::TooLarge { limit } => RegistryError::BlobTooLarge { limit },
                AppendError::LengthMismatch { .. } => RegistryError::BlobUploadInvalid(format!(
                    "{e}: send exactly the bytes the Content-Range (or Content-Length) announces"
                )),
                AppendError::Body(_) => RegistryError::BlobUploadInvalid(format!(
                    "{e}: ask for the upload's status and resume from the offset it gives"
                )),
            };
            guard.keep(hasher, offset);
            Err(err)
        }
    }
}

async fn patch_upload(
    app: &App,
    p: &Principal,
    name: &RepoName,
    id: &str,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let (repo, uuid) = open_upload_of(app, p, name, id).await?;
    let (mut guard, hasher, size) = append_body(app, name, repo, uuid, h, body).await?;
    guard.keep(hasher, size);
    Ok(empty(
        StatusCode::ACCEPTED,
        vec![
            (header::LOCATION, upload_location(name, &uuid)),
            (header::RANGE, range_header(size)),
            upload_uuid(&uuid),
        ],
    ))
}

async fn finish_upload(
    app: &App,
    p: &Principal,
    name: &RepoName,
    id: &str,
    q: &Query,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let (repo, uuid) = open_upload_of(app, p, name, id).await?;
    // The digest is checked before any byte of the body is taken.
    let expected = Digest::parse(q.get("digest").ok_or_else(|| {
        RegistryError::DigestInvalid(
            "completing an upload needs ?digest=sha256:<hex> of the whole blob".into(),
        )
    })?)?;
    write_and_commit(app, name, repo, uuid, h, body, Some(expected)).await
}

/// Append the body to upload `id`, then verify its digest and make it a blob of `repo`.
async fn write_and_commit(
    app: &App,
    name: &RepoName,
    repo: i64,
    id: uuid::Uuid,
    h: &HeaderMap,
    body: Body,
    expected: Option<Digest>,
) -> Result<Response> {
    let (guard, hasher, size) = append_body(app, name, repo, id, h, body).await?;
    let actual = Digest::from_hasher(hasher);
    if expected.as_ref().is_some_and(|e| *e != actual) {
        // Refused: the upload is discarded, so nothing of it is stored.
        app.store.registry_delete_upload(&id.to_string()).await?;
        app.registry.blobs.remove_upload(&id).await?;
        drop(guard);
        return Err(RegistryError::DigestInvalid(format!(
            "the uploaded content has digest {actual}, not {}: the upload was discarded; push the blob again",
            expected.map(|e| e.to_string()).unwrap_or_default()
        )));
    }
    {
        // Shared side of the collector's lock, from placing the file to committing its link.
        let _reachable = app.registry.gc.read().await;
        app.registry.blobs.commit_upload(&id, &actual).await?;
        app.store
            .registry_commit_blob(repo, Some(&id.to_string()), actual.as_str(), size)
            .await?;
    }
    drop(guard);
    Ok(empty(
        StatusCode::CREATED,
        vec![
            (header::LOCATION, format!("/v2/{name}/blobs/{actual}")),
            docker_digest(&actual),
        ],
    ))
}

async fn cancel_upload(app: &App, p: &Principal, name: &RepoName, id: &str) -> Result<Response> {
    let (repo, uuid) = open_upload_of(app, p, name, id).await?;
    let unknown = || RegistryError::BlobUploadUnknown { id: id.to_string() };
    let guard = app.registry.uploads.begin(uuid).ok_or_else(|| {
        RegistryError::BlobUploadInvalid("another request is writing to this upload".into())
    })?;
    app.store
        .registry_upload(repo, id)
        .await?
        .ok_or_else(unknown)?;
    // Row first, then file: a file without a row is swept by the collector.
    app.store.registry_delete_upload(id).await?;
    app.registry.blobs.remove_upload(&uuid).await?;
    drop(guard);
    Ok(empty(StatusCode::NO_CONTENT, vec![]))
}

async fn referrers(
    app: &App,
    p: &Principal,
    name: &RepoName,
    digest: &str,
    q: &Query,
) -> Result<Response> {
    let repo = repository(app, p, name, Need::Read).await?;
    let subject = Digest::parse(digest)?;
    let filter = q.get("artifactType");
    let found = app
        .store
        .registry_referrers(repo, subject.as_str(), filter, MAX_REFERRERS)
        .await?;
    let manifests: Vec<Value> = found
        .into_iter()
        .map(|r| {
            let mut d = json!({ "mediaType": r.media_type, "digest": r.digest, "size": r.size });
            if let Some(t) = r.artifact_type {
                d["artifactType"] = json!(t);
            }
            if let Some(a) = r
                .annotations
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut res = (
        [(header::CONTENT_TYPE, OCI_INDEX)],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response();
    if filter.is_some() {
        res.headers_mut().insert(
            HeaderName::from_static("oci-filters-applied"),
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).expect("name")
    }

    #[test]
    fn paths_are_split_at_the_last_marker() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Route::parse("/v2/").expect("base"), Route::Base);
        assert_eq!(Route::parse("/v2").expect("base"), Route::Base);
        assert_eq!(
            Route::parse("/v2/_catalog").expect("catalog"),
            Route::Catalog
        );
        assert_eq!(
            Route::parse("/v2/shared/a/b/tags/list").expect("tags"),
            Route::Tags(name("shared/a/b"))
        );
        assert_eq!(
            Route::parse("/v2/shared/manifests/manifests/v1").expect("manifest"),
            Route::Manifest(name("shared/manifests"), "v1".into())
        );
        assert_eq!(
            Route::parse(&format!("/v2/shared/blobs/uploads/blobs/{d}")).expect("blob"),
            Route::Blob(name("shared/blobs/uploads"), d.clone())
        );
        assert_eq!(
            Route::parse("/v2/shared/x/blobs/uploads/").expect("start"),
            Route::UploadStart(name("shared/x"))
        );
        assert_eq!(
            Route::parse("/v2/shared/x/blobs/uploads/abc").expect("upload"),
            Route::Upload(name("shared/x"), "abc".into())
        );
        assert_eq!(
            Route::parse(&format!("/v2/shared/x/referrers/{}", d.replace(':', "%3A")))
                .expect("referrers"),
            Route::Referrers(name("shared/x"), d)
        );
        assert!(matches!(
            Route::parse("/v2/shared/x/whatever"),
            Err(RegistryError::NoRoute)
        ));
        assert!(matches!(
            Route::parse("/v2/Bad/x/tags/list"),
            Err(RegistryError::NameInvalid { .. })
        ));
        assert!(matches!(
            Route::parse("/v2/shared/../x/manifests/v1"),
            Err(RegistryError::NameInvalid { .. })
        ));
    }

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).expect("value"));
        byte_range(&h, size)
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        assert_eq!(range("bytes=0-3", 10).expect("ok"), Some((0, 3)));
        assert_eq!(range("bytes=4-", 10).expect("ok"), Some((4, 9)));
        assert_eq!(range("bytes=-3", 10).expect("ok"), Some((7, 9)));
        assert_eq!(range("bytes=5-100", 10).expect("ok"), Some((5, 9)));
        assert_eq!(range("bytes=-100", 10).expect("ok"), Some((0, 9)));
        assert_eq!(range("bytes=0-1,4-5", 10).expect("ok"), None);
        assert_eq!(range("items=0-1", 10).expect("ok"), None);
        assert_eq!(range("bytes=3-1", 10).expect("ok"), None);
        assert!(matches!(
            range("bytes=10-", 10),
            Err(RegistryError::RangeNotSatisfiable { size: 10 })
        ));
        assert!(range("bytes=-0", 10).is_err());
    }

    #[test]
    fn content_ranges_of_chunks() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(v).expect("value"),
            );
            content_range(&h)
        };
        assert_eq!(parse("0-9").expect("ok"), Some((0, 9)));
        assert_eq!(parse("bytes 10-19/*").expect("ok"), Some((10, 19)));
        assert!(parse("9-0").is_err());
        assert!(parse("abc").is_err());
        assert_eq!(range_header(0), "0-0");
        assert_eq!(range_header(10), "0-9");
    }
}
