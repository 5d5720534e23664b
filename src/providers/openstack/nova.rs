//! Nova (compute v2.1) client: microversion negotiation, flavors, servers (list, show, create,
//! delete, power actions), server groups and availability zones. Used by the OpenStack provider.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::keystone::{Reply, Service, Session};
use crate::providers::{ErrorKind, ProviderError};

/// The newest microversion this client is written for: 2.71 shows a server's groups.
pub(super) const WANTED_MICROVERSION: (u32, u32) = (2, 71);
/// The oldest it works with: 2.52 takes tags at server create (Queens).
pub(super) const MIN_MICROVERSION: (u32, u32) = (2, 52);
/// Most pages of a server listing followed.
const MAX_PAGES: usize = 100;

/// A microversion such as `2.71`.
pub(super) fn parse_version(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The microversion to use against a Nova that supports up to `max` (from its version
/// document); an empty `max` means a Nova without microversions.
pub(super) fn choose_microversion(max: &str) -> Result<(u32, u32), ProviderError> {
    let max = parse_version(max).unwrap_or((2, 0));
    if max < MIN_MICROVERSION {
        return Err(ProviderError::new(
            ErrorKind::Protocol,
            format!(
                "Nova supports compute API microversions up to {}.{}; Palisade needs {}.{} or newer (OpenStack Queens or later)",
                max.0, max.1, MIN_MICROVERSION.0, MIN_MICROVERSION.1
            ),
        ));
    }
    Ok(max.min(WANTED_MICROVERSION))
}

/// A flavor.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    /// MiB.
    pub ram: u64,
    /// GiB; 0 means "the size of the image".
    pub disk: u64,
    #[serde(default, rename = "OS-FLV-DISABLED:disabled")]
    pub disabled: bool,
}

impl Flavor {
    /// "m1.small (1 vCPU, 2048 MiB, 20 GiB)".
    pub(super) fn label(&self) -> String {
        format!(
            "{} ({} vCPU, {} MiB, {} GiB)",
            self.name, self.vcpus, self.ram, self.disk
        )
    }
}

/// One address of a server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct Address {
    pub addr: String,
    #[serde(default, rename = "OS-EXT-IPS:type")]
    pub kind: Option<String>,
}

/// Why a server is in ERROR.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct Fault {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: Option<u32>,
}

/// A server (the fields this provider reads).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct Server {
    pub id: String,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<Address>>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, rename = "OS-EXT-STS:task_state")]
    pub task_state: Option<String>,
    #[serde(default, rename = "OS-EXT-AZ:availability_zone")]
    pub availability_zone: Option<String>,
    /// Microversion 2.71 and later.
    #[serde(default)]
    pub server_groups: Option<Vec<String>>,
    /// `{"id": ...}`, or `""` for servers booted from a volume.
    #[serde(default)]
    pub image: Value,
    /// From 2.47 the flavor's content (`original_name`, `vcpus`, `ram`, `disk`, ...).
    #[serde(default)]
    pub flavor: Value,
}

impl Server {
    /// Addresses, fixed ones first, each once.
    pub(super) fn ip_addresses(&self) -> Vec<String> {
        let mut fixed = Vec::new();
        let mut other = Vec::new();
        for a in self.addresses.values().flatten() {
            let list = if a.kind.as_deref() == Some("floating") {
                &mut other
            } else {
                &mut fixed
            };
            if !list.contains(&a.addr) {
                list.push(a.addr.clone());
            }
        }
        for a in other {
            if !fixed.contains(&a) {
                fixed.push(a);
            }
        }
        fixed
    }
}

#[derive(Deserialize)]
struct ServerBody {
    server: Server,
}

#[derive(Deserialize)]
struct ServerList {
    servers: Vec<Server>,
    #[serde(default)]
    servers_links: Vec<Link>,
}

#[derive(Deserialize)]
struct Link {
    rel: String,
    href: String,
}

/// A server group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct ServerGroup {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
    /// 2.64 and later.
    #[serde(default)]
    pub policy: Option<String>,
    /// Before 2.64.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// The Nova client of one session, at one microversion.
pub(super) struct Nova<'a> {
    pub session: &'a Session,
    pub version: (u32, u32),
}

/// Ask Nova which microversions it supports and pick ours.
pub(super) async fn negotiate(session: &Session) -> Result<(u32, u32), ProviderError> {
    let base = session.endpoint(Service::Compute).await?;
    let token = session.token().await?;
    // A catalog URL may end in the project id (`/v2.1/<project>`); the version document is
    // at `/v2.1/`.
    let mut doc_url = base.clone();
    if let Some(stripped) = base.strip_suffix(&format!("/{}", token.project_id)) {
        doc_url = stripped.to_string();
    }
    let reply = session
        .call(
            Service::Compute,
            Method::GET,
            &format!("{doc_url}/"),
            &[],
            None,
            &[],
        )
        .await?
        .expect_ok("read Nova's API version")?;
    let doc: Value = reply.json("read Nova's API version")?;
    let max = doc
        .pointer("/version/version")
        .and_then(Value::as_str)
        .unwrap_or("");
    choose_microversion(max)
}

impl Nova<'_> {
    fn headers(&self) -> [(&'static str, String); 2] {
        let v = format!("{}.{}", self.version.0, self.version.1);
        [
            ("X-OpenStack-Nova-API-Version", v.clone()),
            ("OpenStack-API-Version", format!("compute {v}")),
        ]
    }

    /// Whether server groups take `policy` (2.64+) rather than `policies`.
    fn single_policy(&self) -> bool {
        self.version >= (2, 64)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ProviderError> {
        self.session
            .call(Service::Compute, method, path, query, body, &self.headers())
            .await
    }

    /// Every flavor the project may use.
    pub(super) async fn flavors(&self) -> Result<Vec<Flavor>, ProviderError> {
        #[derive(Deserialize)]
        struct Flavors {
            flavors: Vec<Flavor>,
        }
        let list: Flavors = self
            .session
            .get(
                Service::Compute,
                "/flavors/detail",
                &[("limit", "1000".into())],
                &self.headers(),
                "list Nova flavors",
            )
            .await?;
        Ok(list.flavors)
    }

    /// Servers of the project matching `query` (Nova filters: `name` is a regular
    /// expression, `tags` needs all the listed tags).
    pub(super) async fn servers(
        &self,
        query: &[(&str, String)],
    ) -> Result<Vec<Server>, ProviderError> {
        let mut out = Vec::new();
        let reply = self
            .call(Method::GET, "/servers/detail", query, None)
            .await?
            .expect_ok("list Nova servers")?;
        let mut page: ServerList = reply.json("list Nova servers")?;
        for _ in 0..MAX_PAGES {
            out.append(&mut page.servers);
            let Some(next) = page.servers_links.iter().find(|l| l.rel == "next") else {
                break;
            };
            let href = next.href.clone();
            page = self
                .call(Method::GET, &href, &[], None)
                .await?
                .expect_ok("list Nova servers")?
                .json("list Nova servers")?;
        }
        Ok(out)
    }

    /// One server; `None` when it does not exist (or is deleted).
    pub(super) async fn server(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        Ok(self
            .server_record(id)
            .await?
            .filter(|s| !matches!(s.status.as_str(), "DELETED" | "SOFT_DELETED")))
    }

    /// One server as long as Nova answers for it, status `DELETED` included (a delete that
    /// fails inside Nova can still turn it back into ERROR).
    pub(super) async fn server_record(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        let body: Option<ServerBody> = self
            .session
            .get_opt(
                Service::Compute,
                &format!("/servers/{id}"),
                &[],
                &self.headers(),
                &format!("read Nova server {id}"),
            )
            .await?;
        Ok(body.map(|b| b.server))
    }

    /// `POST /servers`; returns the new server's id.
    pub(super) async fn create_server(
        &self,
        name: &str,
        server: Value,
        hints: Option<Value>,
    ) -> Result<String, ProviderError> {
        let mut body = json!({ "server": server });
        if let Some(h) = hints {
            body["os:scheduler_hints"] = h;
        }
        let what = format!("create Nova server {name}");
        let reply = self
            .call(Method::POST, "/servers", &[], Some(&body))
            .await?
            .expect_ok(&what)?;
        let created: Value = reply.json(&what)?;
        created
            .pointer("/server/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Protocol,
                    format!("{what}: the answer carries no server id"),
                )
            })
    }

    /// `DELETE /servers/{id}`; a server already gone is success.
    pub(super) async fn delete_server(&self, id: &str) -> Result<(), ProviderError> {
        let reply = self
            .call(Method::DELETE, &format!("/servers/{id}"), &[], None)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        reply
            .expect_ok(&format!("delete Nova server {id}"))
            .map(|_| ())
    }

    /// `POST /servers/{id}/action`; the answer is returned whatever its status.
    pub(super) async fn action(&self, id: &str, body: Value) -> Result<Reply, ProviderError> {
        self.call(
            Method::POST,
            &format!("/servers/{id}/action"),
            &[],
            Some(&body),
        )
        .await
    }

    /// The project's server groups.
    pub(super) async fn server_groups(&self) -> Result<Vec<ServerGroup>, ProviderError> {
        #[derive(Deserialize)]
        struct Groups {
            server_groups: Vec<ServerGroup>,
        }
        let list: Groups = self
            .session
            .get(
                Service::Compute,
                "/os-server-groups",
                &[("limit", "1000".into())],
                &self.headers(),
                "list Nova server groups",
            )
            .await?;
        Ok(list.server_groups)
    }

    /// One server group; `None` when it does not exist.
    pub(super) async fn server_group(
        &self,
        id: &str,
    ) -> Result<Option<ServerGroup>, ProviderError> {
        #[derive(Deserialize)]
        struct Group {
            server_group: ServerGroup,
        }
        let g: Option<Group> = self
            .session
            .get_opt(
                Service::Compute,
                &format!("/os-server-groups/{id}"),
                &[],
                &self.headers(),
                &format!("read Nova server group {id}"),
            )
            .await?;
        Ok(g.map(|g| g.server_group))
    }

    /// Create a server group with this policy (`anti-affinity`, `soft-anti-affinity`).
    pub(super) async fn create_server_group(
        &self,
        name: &str,
        policy: &str,
    ) -> Result<ServerGroup, ProviderError> {
        let group = if self.single_policy() {
            json!({"name": name, "policy": policy})
        } else {
            json!({"name": name, "policies": [policy]})
        };
        let what = format!("create Nova server group {name}");
        let v: Value = self
            .call(
                Method::POST,
                "/os-server-groups",
                &[],
                Some(&json!({"server_group": group})),
            )
            .await?
            .expect_ok(&what)?
            .json(&what)?;
        serde_json::from_value(v.get("server_group").cloned().unwrap_or(Value::Null)).map_err(|e| {
            ProviderError::new(
                ErrorKind::Protocol,
                format!("{what}: unexpected answer: {e}"),
            )
        })
    }

    /// Delete a server group; one already gone is success.
    pub(super) async fn delete_server_group(&self, id: &str) -> Result<(), ProviderError> {
        let reply = self
            .call(
                Method::DELETE,
                &format!("/os-server-groups/{id}"),
                &[],
                None,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        reply
            .expect_ok(&format!("delete Nova server group {id}"))
            .map(|_| ())
    }

    /// Names of the availability zones the project may use.
    pub(super) async fn availability_zones(&self) -> Result<Vec<String>, ProviderError> {
        let v: Value = self
            .session
            .get(
                Service::Compute,
                "/os-availability-zone",
                &[],
                &self.headers(),
                "list Nova availability zones",
            )
            .await?;
        Ok(v.get("availabilityZoneInfo")
            .and_then(Value::as_array)
            .map(|zones| {
                zones
                    .iter()
                    .filter(|z| {
                        z.pointer("/zoneState/available")
                            .and_then(Value::as_bool)
                            .unwrap_or(true)
                    })
                    .filter_map(|z| z.get("zoneName").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Nova tags: at most 60 characters, no `/` and no `,`.
pub(super) fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.chars().count() <= 60 && !tag.contains('/') && !tag.contains(',')
}

/// Escape a server name for Nova's `name` filter (a regular expression), anchored at both ends.
pub(super) fn exact_name_filter(name: &str) -> String {
    let mut out = String::from("^");
    for c in name.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_the_microversion() {
        assert_eq!(choose_microversion("2.93").expect("zed"), (2, 71));
        assert_eq!(choose_microversion("2.60").expect("queens"), (2, 60));
        let err = choose_microversion("2.38").expect_err("too old");
        assert!(err.message.contains("2.52"), "{}", err.message);
        assert!(choose_microversion("").is_err());
    }

    #[test]
    fn parses_a_server_with_fault_groups_and_addresses() {
        let body = r#"{"server": {"id": "9f1", "name": "c1-cp-0-abc", "status": "ERROR",
            "metadata": {"palisade-cluster": "c1", "palisade-pool": "cp"},
            "addresses": {"net1": [
                {"version": 4, "addr": "10.0.0.5", "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"},
                {"version": 4, "addr": "172.24.4.9", "OS-EXT-IPS:type": "floating"}],
              "net2": [{"version": 6, "addr": "fd00::5", "OS-EXT-IPS:type": "fixed"}]},
            "fault": {"code": 500, "created": "2026-11-21T10:00:00Z", "message": "No valid host was found. "},
            "created": "2026-11-21T10:00:00Z", "tags": ["palisade"],
            "OS-EXT-STS:task_state": null, "OS-EXT-STS:vm_state": "error",
            "OS-EXT-AZ:availability_zone": "nova",
            "server_groups": ["g1"], "image": {"id": "img"},
            "flavor": {"vcpus": 1, "ram": 512, "disk": 1, "original_name": "m1.tiny"}}}"#;
        let s: ServerBody = serde_json::from_str(body).expect("server");
        let s = s.server;
        assert_eq!(
            s.fault.as_ref().map(|f| f.message.trim()),
            Some("No valid host was found.")
        );
        assert_eq!(s.server_groups, Some(vec!["g1".to_string()]));
        assert_eq!(s.ip_addresses(), vec!["10.0.0.5", "fd00::5", "172.24.4.9"]);
        assert_eq!(
            s.metadata.get("palisade-pool").map(String::as_str),
            Some("cp")
        );
        // Servers booted from a volume have "image": "".
        let vol = r#"{"id": "1", "name": "n", "status": "BUILD", "image": ""}"#;
        let s: Server = serde_json::from_str(vol).expect("volume-backed");
        assert!(s.ip_addresses().is_empty());
    }

    #[test]
    fn follows_server_list_links() {
        let body = r#"{"servers": [], "servers_links": [{"href": "http://127.0.0.1:8774/v2.1/servers/detail?limit=1&marker=9f1", "rel": "next"}]}"#;
        let l: ServerList = serde_json::from_str(body).expect("list");
        assert_eq!(l.servers_links[0].rel, "next");
    }

    #[test]
    fn tags_and_name_filters() {
        assert!(valid_tag(
            "palisade-cluster=0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        ));
        assert!(!valid_tag(&"x".repeat(61)));
        assert!(!valid_tag("a,b"));
        assert_eq!(exact_name_filter("a.b-1"), "^a\\.b-1$");
    }

    #[test]
    fn parses_flavors() {
        let f: Flavor = serde_json::from_str(
            r#"{"id": "2", "name": "m1.small", "ram": 2048, "disk": 20, "swap": "", "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": false, "vcpus": 1, "os-flavor-access:is_public": true}"#,
        )
        .expect("flavor");
        assert_eq!(f.label(), "m1.small (1 vCPU, 2048 MiB, 20 GiB)");
    }
}
