//! Rendered list pages, reused until the next write.
//!
//! Automation polls lists (`GET /v1/clusters`) far more often than anything changes. A page is
//! keyed by route, raw query and the caller's visibility (the only inputs of a list), and
//! tagged with the store's write generation read *before* the data: any write committed
//! meanwhile makes the entry stale, so a cached page is never older than the last write this
//! process acknowledged. Only lists whose tables are written by this process alone are cached
//! (not users: `palisade admin` changes those from another process).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use crate::model::Visibility;
use crate::store::Store;

/// Most pages kept; the cache is emptied when full (pages are cheap to render again).
const MAX_ENTRIES: usize = 1024;
/// Most bytes of pages kept, so that many distinct queries cannot grow memory without bound.
const MAX_TOTAL_BYTES: usize = 8 * 1024 * 1024;
/// Pages larger than this are not kept.
const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// The cache of rendered list pages.
#[derive(Default)]
pub struct ListCache {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    pages: HashMap<String, (u64, Bytes)>,
    bytes: usize,
}

/// The cache key of one list request.
pub fn key(route: &str, query: Option<&str>, v: &Visibility) -> String {
    let mut tenants = v.tenants.clone();
    let mut projects = v.projects.clone();
    tenants.sort();
    projects.sort();
    format!(
        "{route}?{}|{}|{}|{}",
        query.unwrap_or(""),
        v.all,
        tenants.join(","),
        projects.join(",")
    )
}

fn json(bytes: Bytes) -> Response {
    let mut res = bytes.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

impl ListCache {
    /// The page for `key`: from the cache when no write happened since it was rendered,
    /// otherwise loaded with `load`, rendered and kept.
    pub async fn page<T, F>(
        &self,
        store: &Store,
        key: String,
        load: F,
    ) -> Result<Response, ApiError>
    where
        T: Serialize,
        F: Future<Output = Result<T, ApiError>>,
    {
        let generation = store.generation();
        if let Ok(entries) = self.entries.lock() {
            if let Some((g, bytes)) = entries.pages.get(&key) {
                if *g == generation {
                    return Ok(json(bytes.clone()));
                }
            }
        }
        let value = load.await?;
        let mut buf = Vec::with_capacity(16 * 1024);
        serde_json::to_writer(&mut buf, &value).map_err(ApiError::internal)?;
        let bytes = Bytes::from(buf);
        if bytes.len() <= MAX_PAGE_BYTES {
            if let Ok(mut entries) = self.entries.lock() {
                if entries.pages.len() >= MAX_ENTRIES
                    || entries.bytes + bytes.len() > MAX_TOTAL_BYTES
                {
                    entries.pages.clear();
                    entries.bytes = 0;
                }
                entries.bytes += bytes.len();
                if let Some((_, old)) = entries.pages.insert(key, (generation, bytes.clone())) {
                    entries.bytes -= old.len();
                }
            }
        }
        Ok(json(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_does_not_depend_on_grant_order() {
        let a = Visibility {
            all: false,
            tenants: vec!["b".into(), "a".into()],
            projects: vec!["p".into()],
        };
        let b = Visibility {
            all: false,
            tenants: vec!["a".into(), "b".into()],
            projects: vec!["p".into()],
        };
        assert_eq!(
            key("/v1/clusters", Some("limit=5"), &a),
            key("/v1/clusters", Some("limit=5"), &b)
        );
        assert_ne!(
            key("/v1/clusters", Some("limit=5"), &a),
            key("/v1/clusters", Some("limit=6"), &a)
        );
        let all = Visibility {
            all: true,
            ..Default::default()
        };
        assert_ne!(
            key("/v1/clusters", None, &a),
            key("/v1/clusters", None, &all)
        );
    }

    #[tokio::test]
    async fn a_write_makes_cached_pages_stale() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(
            &dir.path().join("db"),
            crate::secrets::SealingKey::from_bytes(&[3; 32]),
        )
        .expect("open");
        let cache = ListCache::default();
        let v = Visibility {
            all: true,
            ..Default::default()
        };
        let list = |s: Store| async move {
            s.list_tenants(
                Visibility {
                    all: true,
                    ..Default::default()
                },
                None,
                None,
                100,
            )
            .await
            .map_err(ApiError::from)
        };
        let body = |r: Response| async move {
            axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .expect("body")
        };
        let first = body(
            cache
                .page(&store, key("/t", None, &v), list(store.clone()))
                .await
                .expect("page"),
        )
        .await;
        assert_eq!(first.as_ref(), br#"{"items":[]}"#);
        store
            .insert_tenant(crate::model::NewTenant {
                name: "acme".into(),
                description: String::new(),
            })
            .await
            .expect("insert");
        let second = body(
            cache
                .page(&store, key("/t", None, &v), list(store.clone()))
                .await
                .expect("page"),
        )
        .await;
        assert!(
            String::from_utf8_lossy(&second).contains("acme"),
            "stale page served after a write"
        );
    }
}
