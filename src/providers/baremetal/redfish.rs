//! A small Redfish client for one BMC: HTTP Basic on every request, JSON in and out, links
//! (`@odata.id`) followed rather than paths guessed, actions posted to the `target` the
//! resource advertises, task monitors (202 + `Location`) polled to their end. Plus the parsing
//! of the few resources the bare-metal provider reads (ComputerSystem, VirtualMedia,
//! EthernetInterface), kept as plain functions on `serde_json::Value` so that vendor
//! differences (missing summaries, extra OEM fields) never fail a whole read.
//!
//! Only `providers::baremetal` uses it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::providers::http;
use crate::providers::{ErrorKind, ProviderError};

/// Whole-request bound for ordinary calls.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-request bound for InsertMedia: some BMCs (sushy-tools among them) download the whole
/// image before they answer.
const INSERT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a task monitor is polled.
const TASK_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest response body read (a Redfish resource is a few KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// One BMC: its origin (`scheme://host[:port]`) and credentials.
pub struct Bmc {
    /// `scheme://host[:port]`, no trailing slash; every path is resolved against it.
    pub origin: String,
    user: String,
    password: String,
    http: reqwest::Client,
    slow: reqwest::Client,
}

impl std::fmt::Debug for Bmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bmc")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The origin of an `http(s)://host[:port][/path]` URL, or `None` when it is not one.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

impl Bmc {
    /// A client for the BMC at `url` (its service root or just its origin).
    pub fn new(
        setting: &str,
        url: &str,
        user: &str,
        password: &str,
        ca_bundle: &str,
    ) -> Result<Bmc, ProviderError> {
        let origin = origin_of(url.trim()).ok_or_else(|| {
            ProviderError::invalid(
                setting,
                format!("{url:?} is not an http(s) URL of a BMC: give for example \"https://10.0.0.21/\""),
            )
        })?;
        Ok(Bmc {
            origin,
            user: user.to_string(),
            password: password.to_string(),
            http: http::client(ca_bundle, TIMEOUT)?,
            slow: http::client(ca_bundle, INSERT_TIMEOUT)?,
        })
    }

    /// Absolute URL of a link. Links are paths on this BMC; a full URL is accepted only when
    /// it points at this BMC, so credentials never go to another host.
    pub fn url(&self, link: &str) -> Result<String, ProviderError> {
        if link.starts_with('/') && !link.starts_with("//") {
            return Ok(format!("{}{link}", self.origin));
        }
        match origin_of(link) {
            Some(o) if o.eq_ignore_ascii_case(&self.origin) => Ok(link.to_string()),
            _ => Err(ProviderError::new(
                ErrorKind::Protocol,
                format!(
                    "{}: the BMC links to {link:?}, which is not on this BMC; refusing to send credentials there",
                    self.origin
                ),
            )),
        }
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        let req = client
            .request(method, url)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        if self.user.is_empty() {
            req
        } else {
            req.basic_auth(&self.user, Some(&self.password))
        }
    }

    /// The service root, read without credentials (Redfish serves it to anyone).
    pub async fn service_root(&self) -> Result<Value, ProviderError> {
        let url = format!("{}/redfish/v1/", self.origin);
        let res = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| http::transport_error(&self.origin, &e))?;
        let status = res.status();
        let body = read_body(&self.origin, res).await?;
        if !status.is_success() {
            return Err(status_error(
                &self.origin,
                "GET",
                "/redfish/v1/",
                status,
                &body,
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Protocol,
                format!(
                    "{}: /redfish/v1/ is not a Redfish service root ({e}); is the endpoint a BMC?",
                    self.origin
                ),
            )
        })
    }

    /// GET a resource by its link.
    pub async fn get(&self, link: &str) -> Result<Value, ProviderError> {
        let url = self.url(link)?;
        let res = self
            .request(&self.http, Method::GET, &url)
            .send()
            .await
            .map_err(|e| http::transport_error(&self.origin, &e))?;
        let status = res.status();
        let body = read_body(&self.origin, res).await?;
        if !status.is_success() {
            return Err(status_error(&self.origin, "GET", link, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                ErrorKind::Protocol,
                format!("{}: GET {link} did not return JSON: {e}", self.origin),
            )
        })
    }

    /// PATCH a resource.
    pub async fn patch(&self, link: &str, body: &Value) -> Result<(), ProviderError> {
        self.send(&self.http, Method::PATCH, link, body).await
    }

    /// POST an action to its target.
    pub async fn action(&self, target: &str, body: &Value) -> Result<(), ProviderError> {
        self.send(&self.http, Method::POST, target, body).await
    }

    /// POST VirtualMedia.InsertMedia (with the long timeout: the BMC may fetch the image first).
    pub async fn insert_media(&self, target: &str, body: &Value) -> Result<(), ProviderError> {
        self.send(&self.slow, Method::POST, target, body).await
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        method: Method,
        link: &str,
        body: &Value,
    ) -> Result<(), ProviderError> {
        let url = self.url(link)?;
        let res = self
            .request(client, method.clone(), &url)
            .json(body)
            .send()
            .await
            .map_err(|e| http::transport_error(&self.origin, &e))?;
        let status = res.status();
        let location = res
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = read_body(&self.origin, res).await?;
        if !status.is_success() {
            return Err(status_error(
                &self.origin,
                method.as_str(),
                link,
                status,
                &text,
            ));
        }
        if status == StatusCode::ACCEPTED {
            if let Some(monitor) = location {
                self.wait_task(&monitor, link).await?;
            }
        }
        Ok(())
    }

    /// Poll a task monitor until the task leaves the running states (bounded).
    async fn wait_task(&self, monitor: &str, what: &str) -> Result<(), ProviderError> {
        let url = self.url(monitor)?;
        let deadline = Instant::now() + TASK_TIMEOUT;
        for _ in 0..1000 {
            let res = self
                .request(&self.http, Method::GET, &url)
                .send()
                .await
                .map_err(|e| http::transport_error(&self.origin, &e))?;
            let status = res.status();
            let body = read_body(&self.origin, res).await?;
            if status == StatusCode::ACCEPTED {
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if !status.is_success() {
                return Err(status_error(&self.origin, "task", what, status, &body));
            }
            let task: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return match task["TaskState"].as_str() {
                Some("Exception" | "Killed" | "Cancelled") => Err(ProviderError::new(
                    ErrorKind::Protocol,
                    format!(
                        "{}: the task of {what} ended in {}: {}",
                        self.origin,
                        task["TaskState"].as_str().unwrap_or("?"),
                        message_of(&body).unwrap_or_default()
                    ),
                )),
                Some("New" | "Starting" | "Running" | "Pending" | "Stopping") => {
                    if Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                _ => Ok(()),
            };
        }
        Err(ProviderError::transient(format!(
            "{}: the task of {what} did not finish within {} s; it may still complete, try again later",
            self.origin,
            TASK_TIMEOUT.as_secs()
        )))
    }
}

async fn read_body(origin: &str, res: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    if res.content_length().is_some_and(|n| n as usize > MAX_BODY) {
        return Err(ProviderError::new(
            ErrorKind::Protocol,
            format!("{origin}: a response is larger than {MAX_BODY} bytes"),
        ));
    }
    let bytes = res
        .bytes()
        .await
        .map_err(|e| http::transport_error(origin, &e))?;
    if bytes.len() > MAX_BODY {
        return Err(ProviderError::new(
            ErrorKind::Protocol,
            format!("{origin}: a response is larger than {MAX_BODY} bytes"),
        ));
    }
    Ok(bytes.to_vec())
}

/// The human message of a Redfish error body (`error.@Message.ExtendedInfo[].Message`, else
/// `error.message`), or the body itself when it is short text.
pub fn message_of(body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let err = &v["error"];
        let extended: Vec<&str> = err["@Message.ExtendedInfo"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["Message"].as_str()).collect())
            .unwrap_or_default();
        if !extended.is_empty() {
            return Some(extended.join("; "));
        }
        if let Some(m) = err["message"].as_str() {
            return Some(m.to_string());
        }
        return None;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.len() > 300 || text.starts_with('<') {
        None
    } else {
        Some(text.to_string())
    }
}

/// Map an HTTP error status to a provider error naming the BMC, the call and the fix.
pub fn status_error(
    origin: &str,
    method: &str,
    link: &str,
    status: StatusCode,
    body: &[u8],
) -> ProviderError {
    let detail = message_of(body)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let code = status.as_u16();
    match code {
        401 => ProviderError::new(
            ErrorKind::Credentials,
            format!("{origin}: the BMC refused the username or password (401){detail}; check the account's credentials"),
        ),
        403 => ProviderError::new(
            ErrorKind::Permission,
            format!("{origin}: {method} {link} is forbidden (403){detail}; the BMC user needs the Administrator (or Operator with virtual media) role"),
        ),
        404 => ProviderError::not_found(format!("{origin}: {method} {link}: not found (404){detail}")),
        405 | 501 => ProviderError::new(
            ErrorKind::Protocol,
            format!("{origin}: {method} {link} is not supported by this BMC ({code}){detail}"),
        ),
        409 | 429 | 503 => ProviderError::transient(format!(
            "{origin}: {method} {link}: the BMC is busy ({code}){detail}; try again later"
        )),
        500..=599 => ProviderError::transient(format!(
            "{origin}: {method} {link}: the BMC failed ({code}){detail}"
        )),
        _ => ProviderError::new(
            ErrorKind::Protocol,
            format!("{origin}: {method} {link} was refused ({code}){detail}"),
        ),
    }
}

/// The `@odata.id` of a link property (`{"@odata.id": "..."}`).
pub fn link(v: &Value) -> Option<String> {
    v["@odata.id"].as_str().map(str::to_string)
}

/// The member links of a collection.
pub fn members(collection: &Value) -> Vec<String> {
    collection["Members"]
        .as_array()
        .map(|a| a.iter().filter_map(link).collect())
        .unwrap_or_default()
}

/// What the provider reads of a ComputerSystem.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemInfo {
    /// The resource's path (`@odata.id`).
    pub path: String,
    /// `Id` (unique on its BMC only).
    pub id: String,
    /// `Name` (`node-0` on sushy-tools, often just `System` on real BMCs).
    pub name: String,
    /// `UUID` (SMBIOS system UUID), empty when not reported.
    pub uuid: String,
    /// `On`, `Off`, `PoweringOn`, `PoweringOff`, or empty when not reported.
    pub power_state: String,
    /// ProcessorSummary.Count (logical processors where the BMC reports them), when reported.
    pub cpus: Option<u32>,
    /// MemorySummary.TotalSystemMemoryGiB in MiB, when reported.
    pub memory_mib: Option<u64>,
    /// The System's own VirtualMedia link (sushy-tools, newer BMCs).
    pub virtual_media: Option<String>,
    /// Managers of the system (iDRAC/iLO keep VirtualMedia there).
    pub managed_by: Vec<String>,
    /// The EthernetInterfaces collection (NIC MACs).
    pub ethernet: Option<String>,
    /// ComputerSystem.Reset target.
    pub reset_target: String,
    /// Allowed ResetType values (empty: not advertised).
    pub reset_types: Vec<String>,
}

/// Parse a ComputerSystem resource.
pub fn parse_system(v: &Value) -> Result<SystemInfo, String> {
    let path = link(v).ok_or("the ComputerSystem has no @odata.id")?;
    let id = v["Id"]
        .as_str()
        .ok_or("the ComputerSystem has no Id")?
        .to_string();
    let reset = &v["Actions"]["#ComputerSystem.Reset"];
    let reset_target = reset["target"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "{}/Actions/ComputerSystem.Reset",
                path.trim_end_matches('/')
            )
        });
    Ok(SystemInfo {
        name: v["Name"].as_str().unwrap_or("").to_string(),
        uuid: v["UUID"].as_str().unwrap_or("").to_string(),
        power_state: v["PowerState"].as_str().unwrap_or("").to_string(),
        cpus: v["ProcessorSummary"]["LogicalProcessorCount"]
            .as_u64()
            .or_else(|| v["ProcessorSummary"]["Count"].as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0),
        memory_mib: v["MemorySummary"]["TotalSystemMemoryGiB"]
            .as_f64()
            .filter(|g| *g > 0.0)
            .map(|g| (g * 1024.0).round() as u64),
        virtual_media: link(&v["VirtualMedia"]),
        managed_by: v["Links"]["ManagedBy"]
            .as_array()
            .map(|a| a.iter().filter_map(link).collect())
            .unwrap_or_default(),
        ethernet: link(&v["EthernetInterfaces"]),
        reset_types: reset["ResetType@Redfish.AllowableValues"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        reset_target,
        path,
        id,
    })
}

/// What the provider reads of a VirtualMedia resource (one slot).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaSlot {
    /// The resource's path (`@odata.id`).
    pub path: String,
    /// `Id`: `Cd`, `Floppy` (sushy-tools), `CD`, `RemovableDisk` (iDRAC), `1`, `2` (iLO).
    pub id: String,
    /// `CD`, `DVD`, `Floppy`, `USBStick`, ...
    pub media_types: Vec<String>,
    /// The URL the slot is connected to; empty when nothing is inserted.
    pub image: String,
    /// `Inserted` as reported.
    pub inserted: bool,
    /// VirtualMedia.InsertMedia target.
    pub insert_target: String,
    /// VirtualMedia.EjectMedia target.
    pub eject_target: String,
}

impl MediaSlot {
    /// Whether the slot takes CD/DVD images (bootable installer media).
    pub fn is_cd(&self) -> bool {
        self.media_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case("CD") || t.eq_ignore_ascii_case("DVD"))
    }
    /// Whether the slot takes removable disks (USB stick, floppy).
    pub fn is_removable(&self) -> bool {
        self.media_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case("USBStick") || t.eq_ignore_ascii_case("Floppy"))
    }
    /// The image URL when something is inserted.
    pub fn current(&self) -> Option<&str> {
        (self.inserted || !self.image.is_empty())
            .then_some(self.image.as_str())
            .filter(|s| !s.is_empty())
    }
}

/// Parse a VirtualMedia resource.
pub fn parse_media(v: &Value) -> Result<MediaSlot, String> {
    let path = link(v).ok_or("a VirtualMedia resource has no @odata.id")?;
    let base = path.trim_end_matches('/').to_string();
    let actions = &v["Actions"];
    Ok(MediaSlot {
        id: v["Id"].as_str().unwrap_or("").to_string(),
        media_types: v["MediaTypes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        image: v["Image"].as_str().unwrap_or("").to_string(),
        inserted: v["Inserted"].as_bool().unwrap_or(false),
        insert_target: actions["#VirtualMedia.InsertMedia"]["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{base}/Actions/VirtualMedia.InsertMedia")),
        eject_target: actions["#VirtualMedia.EjectMedia"]["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{base}/Actions/VirtualMedia.EjectMedia")),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_sushy_system_without_inventory() {
        let v = json!({
            "Id": "a819", "Name": "node-0", "UUID": "a819", "PowerState": "Off",
            "ProcessorSummary": {"Status": {"State": "Enabled"}},
            "MemorySummary": {"Status": {"State": "Enabled"}},
            "EthernetInterfaces": {"@odata.id": "/redfish/v1/Systems/a819/EthernetInterfaces"},
            "VirtualMedia": {"@odata.id": "/redfish/v1/Systems/a819/VirtualMedia"},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/a819"}]},
            "Actions": {"#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/a819/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]}},
            "@odata.id": "/redfish/v1/Systems/a819"
        });
        let s = parse_system(&v).expect("system");
        assert_eq!(s.name, "node-0");
        assert_eq!(s.power_state, "Off");
        assert_eq!(s.cpus, None);
        assert_eq!(s.memory_mib, None);
        assert_eq!(
            s.virtual_media.as_deref(),
            Some("/redfish/v1/Systems/a819/VirtualMedia")
        );
        assert_eq!(s.managed_by, ["/redfish/v1/Managers/a819"]);
        assert_eq!(s.reset_types, ["On", "ForceOff"]);
    }

    #[test]
    fn parses_inventory_of_an_idrac_like_system() {
        let v = json!({
            "Id": "System.Embedded.1", "Name": "System", "PowerState": "On",
            "ProcessorSummary": {"Count": 2, "LogicalProcessorCount": 64},
            "MemorySummary": {"TotalSystemMemoryGiB": 256},
            "@odata.id": "/redfish/v1/Systems/System.Embedded.1"
        });
        let s = parse_system(&v).expect("system");
        assert_eq!(s.cpus, Some(64));
        assert_eq!(s.memory_mib, Some(256 * 1024));
        assert_eq!(s.virtual_media, None);
        assert_eq!(
            s.reset_target,
            "/redfish/v1/Systems/System.Embedded.1/Actions/ComputerSystem.Reset"
        );
        assert!(parse_system(&json!({"Id": "x"})).is_err());
    }

    #[test]
    fn parses_virtual_media_slots() {
        let v = json!({
            "Id": "Floppy", "MediaTypes": ["Floppy", "USBStick"], "Image": "", "Inserted": false,
            "Actions": {"#VirtualMedia.InsertMedia": {"target": "/x/Floppy/Actions/VirtualMedia.InsertMedia"}},
            "@odata.id": "/x/Floppy"
        });
        let m = parse_media(&v).expect("media");
        assert!(m.is_removable() && !m.is_cd());
        assert_eq!(m.current(), None);
        assert_eq!(m.eject_target, "/x/Floppy/Actions/VirtualMedia.EjectMedia");
        let cd = parse_media(&json!({"Id": "CD", "MediaTypes": ["CD", "DVD"],
            "Image": "http://h/a.iso", "Inserted": true, "@odata.id": "/m/CD"}))
        .expect("cd");
        assert!(cd.is_cd());
        assert_eq!(cd.current(), Some("http://h/a.iso"));
    }

    #[test]
    fn error_messages_come_from_the_redfish_body() {
        let body = br#"{"error":{"code":"Base.1.0.GeneralError","message":"Incorrect username or password"}}"#;
        let e = status_error(
            "http://b",
            "GET",
            "/redfish/v1/Systems",
            StatusCode::UNAUTHORIZED,
            body,
        );
        assert_eq!(e.kind, ErrorKind::Credentials);
        assert!(
            e.message.contains("Incorrect username or password"),
            "{}",
            e.message
        );
        let ext = br#"{"error":{"message":"x","@Message.ExtendedInfo":[{"Message":"Virtual media is already attached"}]}}"#;
        assert_eq!(
            message_of(ext).as_deref(),
            Some("Virtual media is already attached")
        );
        let e = status_error(
            "http://b",
            "POST",
            "/a",
            StatusCode::SERVICE_UNAVAILABLE,
            b"",
        );
        assert!(e.is_transient());
        assert_eq!(
            status_error("http://b", "GET", "/a", StatusCode::NOT_FOUND, b"").kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn links_never_leave_the_bmc() {
        let bmc = Bmc::new("endpoint", "https://10.0.0.5/redfish/v1/", "u", "p", "").expect("bmc");
        assert_eq!(bmc.origin, "https://10.0.0.5");
        assert_eq!(
            bmc.url("/redfish/v1/Systems").expect("path"),
            "https://10.0.0.5/redfish/v1/Systems"
        );
        assert!(bmc.url("https://10.0.0.5/redfish/v1/x").is_ok());
        assert!(bmc.url("https://evil.example/redfish/v1/x").is_err());
        assert!(bmc.url("//evil.example/x").is_err());
        assert!(Bmc::new("endpoint", "ftp://x", "u", "p", "").is_err());
        assert!(Bmc::new("endpoint", "https://user@x/", "u", "p", "").is_err());
    }
}
