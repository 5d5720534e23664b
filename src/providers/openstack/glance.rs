//! Glance v2 client: find images by name, create them, upload their bytes streaming (never the
//! whole image in memory) and delete them. Used by the OpenStack provider's `ensure_image`,
//! `placements` and by `ensure_machine` to check the image a machine boots from.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::keystone::{Service, Session};
use crate::providers::ProviderError;

/// Name of the image property holding the sha256 of the image's bytes.
pub(super) const SHA256_PROPERTY: &str = "palisade_sha256";

/// Most pages of a listing followed (of up to 100 images each).
const MAX_PAGES: usize = 50;

/// An image as Glance shows it (the fields this provider reads).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct Image {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// queued, saving, uploading, importing, active, killed, deactivated, pending_delete, deleted.
    pub status: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, rename = "palisade_sha256")]
    pub sha256: Option<String>,
}

impl Image {
    /// The name, or the id for unnamed images.
    pub(super) fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Deserialize)]
struct ImageList {
    images: Vec<Image>,
    #[serde(default)]
    next: Option<String>,
}

/// The Glance client of one session.
pub(super) struct Glance<'a> {
    pub session: &'a Session,
}

impl Glance<'_> {
    /// Images visible to the project, filtered by `query` (e.g. `name`, `status`).
    pub(super) async fn list(&self, query: &[(&str, String)]) -> Result<Vec<Image>, ProviderError> {
        let mut out = Vec::new();
        let mut q: Vec<(&str, String)> = query.to_vec();
        q.push(("limit", "100".into()));
        let mut page: ImageList = self
            .session
            .get(Service::Image, "/images", &q, &[], "list Glance images")
            .await?;
        for _ in 0..MAX_PAGES {
            out.append(&mut page.images);
            let Some(next) = page.next.take() else {
                break;
            };
            // `next` is a path from the API root (`/v2/images?marker=...`).
            let base = self.session.endpoint(Service::Image).await?;
            let root = base.trim_end_matches("/v2");
            page = self
                .session
                .get(
                    Service::Image,
                    &format!("{root}{next}"),
                    &[],
                    &[],
                    "list Glance images",
                )
                .await?;
        }
        Ok(out)
    }

    /// Images with this exact name.
    pub(super) async fn by_name(&self, name: &str) -> Result<Vec<Image>, ProviderError> {
        let mut found = self.list(&[("name", name.to_string())]).await?;
        found.retain(|i| i.name.as_deref() == Some(name));
        Ok(found)
    }

    /// One image; `None` when it does not exist.
    pub(super) async fn get(&self, id: &str) -> Result<Option<Image>, ProviderError> {
        self.session
            .get_opt(
                Service::Image,
                &format!("/images/{id}"),
                &[],
                &[],
                &format!("read Glance image {id}"),
            )
            .await
    }

    /// Create an image record (status `queued`) carrying the sha256 property.
    pub(super) async fn create(
        &self,
        name: &str,
        disk_format: &str,
        sha256: &str,
    ) -> Result<Image, ProviderError> {
        let body = json!({
            "name": name,
            "disk_format": disk_format,
            "container_format": "bare",
            "visibility": "private",
            SHA256_PROPERTY: sha256,
            "tags": ["palisade"],
        });
        let what = format!("create Glance image {name}");
        self.session
            .call(
                Service::Image,
                Method::POST,
                "/images",
                &[],
                Some(&body),
                &[],
            )
            .await?
            .expect_ok(&what)?
            .json(&what)
    }

    /// Upload the bytes of an image (`PUT /images/{id}/file`), streaming.
    pub(super) async fn upload(
        &self,
        client: &reqwest::Client,
        id: &str,
        name: &str,
        body: reqwest::Body,
        length: Option<u64>,
    ) -> Result<(), ProviderError> {
        self.session
            .send_stream(
                client,
                Service::Image,
                &format!("/images/{id}/file"),
                body,
                length,
                &format!("upload the bytes of Glance image {name}"),
            )
            .await
    }

    /// Delete an image; one already gone is success.
    pub(super) async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let reply = self
            .session
            .call(
                Service::Image,
                Method::DELETE,
                &format!("/images/{id}"),
                &[],
                None,
                &[],
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        reply
            .expect_ok(&format!("delete Glance image {id}"))
            .map(|_| ())
    }
}

/// Glance statuses of an image whose upload is unfinished: left by a crash, they never become
/// active by themselves.
pub(super) fn is_unfinished(status: &str) -> bool {
    matches!(
        status,
        "queued" | "saving" | "uploading" | "importing" | "killed"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_image_listing_with_the_sha256_property() {
        let body = r#"{"images": [{"id": "5b1", "name": "ubuntu-22.04", "status": "active",
            "owner": "8747", "disk_format": "qcow2", "size": 196624, "visibility": "private",
            "palisade_sha256": "ab12", "os_hash_algo": "sha512", "tags": ["palisade"]},
            {"id": "6c2", "name": null, "status": "queued", "size": null}],
            "first": "/v2/images?name=x", "next": "/v2/images?marker=6c2&limit=100", "schema": "/v2/schemas/images"}"#;
        let list: ImageList = serde_json::from_str(body).expect("listing");
        assert_eq!(list.images.len(), 2);
        assert_eq!(list.images[0].sha256.as_deref(), Some("ab12"));
        assert_eq!(list.images[0].size, Some(196624));
        assert_eq!(list.images[1].label(), "6c2");
        assert_eq!(
            list.next.as_deref(),
            Some("/v2/images?marker=6c2&limit=100")
        );
        assert!(is_unfinished(&list.images[1].status));
        assert!(!is_unfinished("active"));
    }
}
