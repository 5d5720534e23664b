//! The vim25 SOAP transport: one HTTPS session with vCenter (or ESXi), request envelopes,
//! the `vmware_soap_session` cookie, transparent re-login, and SOAP faults turned into
//! [`ProviderError`]s of the right [`ErrorKind`].
//!
//! Used by the rest of `providers::vsphere` only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{Mutex, OnceCell};

use super::xml::{self, escape, text_el, Element};
use crate::providers::http;
use crate::providers::{ErrorKind, ProviderError};

/// Cookie vCenter keeps the session in.
const SESSION_COOKIE: &str = "vmware_soap_session";
/// API version used when the server does not list its versions.
const DEFAULT_VERSION: &str = "6.5";
/// Largest SOAP answer read; the biggest ones are inventory listings.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Bound of one HTTP exchange; long-polls ask the server to answer well before this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A managed object reference: type and id (`VirtualMachine`, `vm-42`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    /// Managed object type.
    pub kind: String,
    /// Server-side id.
    pub value: String,
}

impl MoRef {
    /// A reference of this type and id.
    pub fn new(kind: &str, value: &str) -> MoRef {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }

    /// Read a reference from an element such as `<obj type="Folder">group-d1</obj>`.
    pub fn from_el(el: &Element) -> Option<MoRef> {
        let kind = el.attr("type")?;
        let value = el.text.trim();
        (!value.is_empty()).then(|| MoRef::new(kind, value))
    }

    /// `<tag type="Kind">id</tag>`.
    pub fn xml(&self, tag: &str) -> String {
        format!(
            r#"<{tag} type="{}">{}</{tag}>"#,
            escape(&self.kind),
            escape(&self.value)
        )
    }

    /// `<_this type="Kind">id</_this>`, the target of a method call.
    pub fn this(&self) -> String {
        self.xml("_this")
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// A vim25 fault: its type name (`InvalidLogin`, `NoPermission`...) and message.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Fault type without the `Fault` suffix of the detail element.
    pub name: String,
    /// The server's message (`faultstring` or `localizedMessage`).
    pub message: String,
    /// The fault's detail object, for fields such as `privilegeId` or `name`.
    pub detail: Option<Box<Element>>,
}

impl Fault {
    /// Read a SOAP `Fault` element.
    pub fn from_soap(fault: &Element) -> Fault {
        let message = fault
            .child_text("faultstring")
            .unwrap_or("")
            .trim()
            .to_string();
        let detail = fault
            .child("detail")
            .and_then(|d| d.children.first())
            .cloned()
            .map(Box::new);
        let name = detail
            .as_ref()
            .map(|d| {
                d.xsi_type
                    .clone()
                    .unwrap_or_else(|| d.name.trim_end_matches("Fault").to_string())
            })
            .or_else(|| fault.child_text("faultcode").map(str::to_string))
            .unwrap_or_else(|| "UnknownFault".into());
        Fault {
            name,
            message,
            detail,
        }
    }

    /// Read a `LocalizedMethodFault` (a task's `info.error`).
    pub fn from_localized(el: &Element) -> Fault {
        let detail = el.child("fault").cloned().map(Box::new);
        let name = detail
            .as_ref()
            .and_then(|d| d.xsi_type.clone())
            .unwrap_or_else(|| "UnknownFault".into());
        let message = el
            .child_text("localizedMessage")
            .unwrap_or("")
            .trim()
            .to_string();
        Fault {
            name,
            message,
            detail,
        }
    }

    /// Whether the fault is of this type.
    pub fn is(&self, name: &str) -> bool {
        self.name == name
    }

    /// The provider error for this fault raised by `operation` ("clone vm-42 to web-1").
    pub fn to_error(&self, operation: &str) -> ProviderError {
        let mut msg = if self.message.is_empty() {
            self.name.clone()
        } else {
            format!("{} ({})", self.message, self.name)
        };
        // NoPermission names the missing privilege: the one thing the admin needs to know.
        if let Some(privilege) = self
            .detail
            .as_ref()
            .and_then(|d| d.child_text("privilegeId"))
        {
            msg.push_str(&format!(", missing privilege {privilege}"));
        }
        let (kind, hint) = match self.name.as_str() {
            "InvalidLogin" | "InvalidLocale" => (
                ErrorKind::Credentials,
                "check the account's username and password (and that the user is not locked out)",
            ),
            "NoPermission" | "NotAuthenticated" | "RestrictedVersion" => (
                ErrorKind::Permission,
                "grant the account's user the vSphere privileges listed in docs/providers.md on the placement objects",
            ),
            "ManagedObjectNotFound" | "NotFound" => (
                ErrorKind::NotFound,
                "the object was removed meanwhile; check the account's placement settings",
            ),
            "InsufficientResourcesFault"
            | "InsufficientMemoryResourcesFault"
            | "InsufficientCpuResourcesFault"
            | "InsufficientHostCapacityFault"
            | "NoDiskSpace"
            | "OutOfSpace"
            | "NotEnoughLicenses"
            | "InsufficientStorageSpace" => (
                ErrorKind::Capacity,
                "free capacity on the cluster or datastore, or choose another placement",
            ),
            "InvalidPowerState" | "InvalidState" | "TaskInProgress" | "ConcurrentAccess"
            | "ResourceInUse" | "HostCommunication" | "HostNotConnected" | "Timedout"
            | "RequestCanceled" | "DuplicateName" | "FileLocked" | "SystemError" => {
                (ErrorKind::Transient, "retry later")
            }
            "InvalidDatastore" | "InvalidDatastorePath" | "InvalidName" | "InvalidFolder"
            | "DisallowedOperationOnFailoverHostFault" | "VmConfigFault" | "InvalidDeviceSpec"
            | "OvfImport" | "OvfInvalidPackage" | "OvfUnsupportedPackage" => (
                ErrorKind::Invalid,
                "check the image and the account's placement settings",
            ),
            _ => (
                ErrorKind::Protocol,
                "vCenter refused a request of this client; see the message",
            ),
        };
        ProviderError::new(kind, format!("vSphere: {operation} failed: {msg}; {hint}"))
    }
}

/// What a call can fail with: a fault the caller may want to inspect, or an error already
/// in provider terms (transport, protocol).
#[derive(Debug, Clone)]
pub enum CallError {
    /// The server answered with a SOAP fault.
    Fault(Fault),
    /// Transport, HTTP or parsing problem.
    Provider(ProviderError),
}

impl CallError {
    /// Provider error for a failure of `operation`.
    pub fn into_error(self, operation: &str) -> ProviderError {
        match self {
            CallError::Fault(f) => f.to_error(operation),
            CallError::Provider(e) => e,
        }
    }

    /// The fault, when it is one of this type.
    pub fn fault(&self, name: &str) -> Option<&Fault> {
        match self {
            CallError::Fault(f) if f.is(name) => Some(f),
            _ => None,
        }
    }
}

impl From<ProviderError> for CallError {
    fn from(e: ProviderError) -> Self {
        CallError::Provider(e)
    }
}

/// The service content's managers this client uses, and the product it talks to.
#[derive(Debug, Clone)]
pub struct ServiceContent {
    /// Root folder of the inventory.
    pub root_folder: MoRef,
    /// The session's default property collector.
    pub property_collector: MoRef,
    /// Container views for listings.
    pub view_manager: MoRef,
    /// Login and logout.
    pub session_manager: MoRef,
    /// Inventory path lookups.
    pub search_index: MoRef,
    /// Custom attributes (absent on a standalone ESXi).
    pub custom_fields_manager: Option<MoRef>,
    /// OVF descriptor parsing.
    pub ovf_manager: MoRef,
    /// `about.fullName`, e.g. "VMware vCenter Server 6.5.0 build-5973321".
    pub full_name: String,
}

impl ServiceContent {
    fn parse(ret: &Element) -> Result<ServiceContent, ProviderError> {
        let moref = |name: &str| {
            ret.child(name).and_then(MoRef::from_el).ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Protocol,
                    format!("vSphere: the service content has no {name}; is the endpoint a vCenter or ESXi /sdk URL?"),
                )
            })
        };
        let about = ret.child("about");
        let about_text = |n: &str| {
            about
                .and_then(|a| a.child_text(n))
                .unwrap_or("")
                .to_string()
        };
        Ok(ServiceContent {
            root_folder: moref("rootFolder")?,
            property_collector: moref("propertyCollector")?,
            view_manager: moref("viewManager")?,
            session_manager: moref("sessionManager")?,
            search_index: moref("searchIndex")?,
            custom_fields_manager: ret.child("customFieldsManager").and_then(MoRef::from_el),
            ovf_manager: moref("ovfManager")?,
            full_name: about_text("fullName"),
        })
    }
}

/// One logged-in vim25 session. Safe to share between tasks: calls run concurrently, a lost
/// session is re-established once by whichever call notices it first.
pub struct Client {
    http: reqwest::Client,
    /// `https://host[:port]/sdk`.
    sdk: String,
    username: String,
    password: String,
    content: OnceCell<ServiceContent>,
    /// `SOAPAction` header value, `urn:vim25/<version>`.
    action: OnceCell<String>,
    /// Current session cookie value and its generation (bumped at each login).
    cookie: RwLock<Option<(u64, String)>>,
    generation: AtomicU64,
    login_lock: Mutex<()>,
    /// Key of the current session (vCenter's session list shows it).
    session_key: RwLock<String>,
    /// Idle property collectors for task waits, with the session generation they belong to.
    collectors: std::sync::Mutex<Vec<(u64, MoRef)>>,
}

impl Client {
    /// A client for the SDK URL; no network traffic until the first call.
    pub fn new(
        sdk: &str,
        ca_bundle: &str,
        username: &str,
        password: &str,
    ) -> Result<Client, ProviderError> {
        Ok(Client {
            http: http::client(ca_bundle, REQUEST_TIMEOUT)?,
            sdk: sdk.trim_end_matches('/').to_string(),
            username: username.to_string(),
            password: password.to_string(),
            content: OnceCell::new(),
            action: OnceCell::new(),
            cookie: RwLock::new(None),
            generation: AtomicU64::new(0),
            login_lock: Mutex::new(()),
            session_key: RwLock::new(String::new()),
            collectors: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The SDK URL this client talks to.
    pub fn sdk_url(&self) -> &str {
        &self.sdk
    }

    /// The user this client logs in as.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// An idle property collector of the current session, if any.
    pub fn take_collector(&self) -> Option<MoRef> {
        let current = self.generation.load(Ordering::SeqCst);
        let mut pool = self.collectors.lock().ok()?;
        pool.retain(|(g, _)| *g == current);
        pool.pop().map(|(_, pc)| pc)
    }

    /// Give back a collector whose filters are all destroyed.
    pub fn return_collector(&self, pc: MoRef) {
        /// More idle collectors than concurrent waits are never needed.
        const MAX_IDLE: usize = 32;
        let current = self.generation.load(Ordering::SeqCst);
        if let Ok(mut pool) = self.collectors.lock() {
            if pool.len() < MAX_IDLE {
                pool.push((current, pc));
            }
        }
    }

    /// Key of the current session, empty before the first login.
    pub fn session_key(&self) -> String {
        self.session_key
            .read()
            .map(|k| k.clone())
            .unwrap_or_default()
    }

    /// The service content (fetched once).
    pub async fn content(&self) -> Result<&ServiceContent, ProviderError> {
        self.content
            .get_or_try_init(|| async {
                let ret = self
                    .post(
                        &format!(
                            "<RetrieveServiceContent xmlns=\"urn:vim25\">{}</RetrieveServiceContent>",
                            MoRef::new("ServiceInstance", "ServiceInstance").this()
                        ),
                        None,
                    )
                    .await
                    .map_err(|e| e.into_error("read the service content"))?;
                let ret = ret.child("returnval").ok_or_else(|| {
                    protocol("RetrieveServiceContent answered without a returnval")
                })?;
                ServiceContent::parse(ret)
            })
            .await
    }

    /// Call a method: `request` is the method element (e.g. `<Login xmlns="urn:vim25">...`).
    /// Returns the response element (`<LoginResponse>`). A `NotAuthenticated` fault (an
    /// expired or dropped session) triggers one transparent re-login and retry.
    pub async fn call(&self, request: &str) -> Result<Element, CallError> {
        let (generation, cookie) = self.session().await?;
        let first = self.post(request, Some(&cookie)).await.and_then(|resp| {
            if unauthenticated_reads(&resp) {
                Err(CallError::Fault(Fault {
                    name: "NotAuthenticated".into(),
                    message: "the session is not authenticated".into(),
                    detail: None,
                }))
            } else {
                Ok(resp)
            }
        });
        match first {
            Err(CallError::Fault(f)) if f.is("NotAuthenticated") => {
                tracing::debug!(sdk = %self.sdk, "vSphere session lost; logging in again");
                let (_, cookie) = self.relogin(generation).await?;
                self.post(request, Some(&cookie)).await
            }
            other => other,
        }
    }

    /// Log in now (validate uses it to report credential errors before anything else).
    pub async fn ensure_session(&self) -> Result<(), ProviderError> {
        self.session().await.map(|_| ())
    }

    /// Log out; the session cookie is dropped. Errors are ignored: the session expires anyway.
    pub async fn logout(&self) {
        let current = self.cookie.read().ok().and_then(|c| c.clone());
        let Some((_, cookie)) = current else { return };
        if let Ok(content) = self.content().await {
            let req = format!(
                "<Logout xmlns=\"urn:vim25\">{}</Logout>",
                content.session_manager.this()
            );
            let _ = self.post(&req, Some(&cookie)).await;
        }
        if let Ok(mut c) = self.cookie.write() {
            *c = None;
        }
    }

    /// Current session, logging in when there is none.
    async fn session(&self) -> Result<(u64, String), ProviderError> {
        if let Some(c) = self.cookie.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        self.relogin(u64::MAX).await
    }

    /// Log in unless another task already replaced the session of generation `stale`.
    async fn relogin(&self, stale: u64) -> Result<(u64, String), ProviderError> {
        let _guard = self.login_lock.lock().await;
        if let Some((g, c)) = self.cookie.read().ok().and_then(|c| c.clone()) {
            if g != stale {
                return Ok((g, c));
            }
        }
        let content = self.content().await?;
        self.soap_action().await?;
        let req = format!(
            "<Login xmlns=\"urn:vim25\">{}{}{}</Login>",
            content.session_manager.this(),
            text_el("userName", &self.username),
            text_el("password", &self.password)
        );
        // A login never carries an old cookie: vCenter refuses a second Login on one.
        let (resp, cookie) = self.post_raw(&req, None).await?;
        let parsed = parse_envelope(&resp.1, resp.0);
        match parsed {
            Ok(r) => {
                let key = r.path(&["returnval", "key"]).map(|k| k.text.clone()).unwrap_or_default();
                if let Ok(mut k) = self.session_key.write() {
                    *k = key;
                }
            }
            Err(CallError::Fault(f)) if f.is("InvalidLogin") => {
                return Err(ProviderError::new(
                    ErrorKind::Credentials,
                    format!(
                        "vSphere: {} refused the login of user {:?}: check the account's username and password",
                        self.sdk, self.username
                    ),
                ))
            }
            Err(e) => return Err(e.into_error("log in")),
        }
        let cookie = cookie
            .ok_or_else(|| protocol("the login succeeded but set no vmware_soap_session cookie"))?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(mut c) = self.cookie.write() {
            *c = Some((generation, cookie.clone()));
        }
        Ok((generation, cookie))
    }

    /// `urn:vim25/<version>` from `/sdk/vimServiceVersions.xml`, else 6.5.
    async fn soap_action(&self) -> Result<&str, ProviderError> {
        self.action
            .get_or_try_init(|| async {
                let url = format!("{}/vimServiceVersions.xml", self.sdk);
                let resp = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| http::transport_error(&self.sdk, &e))?;
                let version = if resp.status().is_success() {
                    let body = resp
                        .text()
                        .await
                        .map_err(|e| http::transport_error(&self.sdk, &e))?;
                    service_version(&body).unwrap_or_else(|| DEFAULT_VERSION.to_string())
                } else {
                    DEFAULT_VERSION.to_string()
                };
                Ok::<_, ProviderError>(format!("urn:vim25/{version}"))
            })
            .await
            .map(String::as_str)
    }

    async fn post(&self, request: &str, cookie: Option<&str>) -> Result<Element, CallError> {
        let ((status, body), _) = self.post_raw(request, cookie).await?;
        parse_envelope(&body, status)
    }

    /// Send one envelope; returns (status, body) and the session cookie the server set.
    async fn post_raw(
        &self,
        request: &str,
        cookie: Option<&str>,
    ) -> Result<((u16, String), Option<String>), ProviderError> {
        let action = match self.action.get() {
            Some(a) => a.as_str(),
            None => "urn:vim25/6.5",
        };
        let body = xml::envelope(request);
        let send = || {
            let mut req = self
                .http
                .post(&self.sdk)
                .header("Content-Type", "text/xml; charset=utf-8")
                .header("SOAPAction", action)
                .body(body.clone());
            if let Some(c) = cookie {
                req = req.header("Cookie", format!("{SESSION_COOKIE}={c}"));
            }
            req.send()
        };
        let resp = match send().await {
            Ok(r) => r,
            // A pooled keep-alive connection the server closed as the request went out (or a
            // server that dropped the connection mid-answer: vcsim does when a lookup races a
            // VM being created). Sent once more on a fresh connection. Every call this client
            // makes tolerates a repeat: repeated creations end in DuplicateName, repeated power
            // changes in InvalidPowerState, repeated deletions in ManagedObjectNotFound, and
            // each of those is handled as success by its caller.
            Err(e) if dropped_connection(&e) => {
                tracing::debug!(sdk = %self.sdk, error = %e, "vSphere: connection dropped; sending again");
                tokio::time::sleep(Duration::from_millis(50)).await;
                send()
                    .await
                    .map_err(|e| http::transport_error(&self.sdk, &e))?
            }
            Err(e) => return Err(http::transport_error(&self.sdk, &e)),
        };
        let status = resp.status().as_u16();
        let set_cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session_cookie);
        if status == 404 {
            return Err(ProviderError::invalid(
                "endpoint",
                format!(
                    "{} answers 404: the endpoint must be the vCenter SDK URL, e.g. https://vcenter.example/sdk",
                    self.sdk
                ),
            ));
        }
        let body = read_capped(resp)
            .await
            .map_err(|e| http::transport_error(&self.sdk, &e))?;
        let body = body.ok_or_else(|| {
            protocol(&format!(
                "an answer of {} was larger than {MAX_RESPONSE} bytes",
                self.sdk
            ))
        })?;
        Ok(((status, body), set_cookie))
    }
}

/// Whether a request failed because an established connection closed under it (not a
/// refused connection, a timeout or a TLS failure).
fn dropped_connection(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() {
        return false;
    }
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

async fn read_capped(resp: reqwest::Response) -> Result<Option<String>, reqwest::Error> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > MAX_RESPONSE {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Whether a property read came back with every property refused as `NotAuthenticated`:
/// how vcsim answers reads on a dead session (vCenter raises a fault instead).
fn unauthenticated_reads(resp: &Element) -> bool {
    if !resp.name.starts_with("RetrieveProperties")
        && !resp.name.starts_with("ContinueRetrieveProperties")
    {
        return false;
    }
    resp.children_named("returnval")
        .flat_map(|r| r.children_named("objects"))
        .flat_map(|o| o.children_named("missingSet"))
        .any(|m| {
            m.path(&["fault", "fault"])
                .and_then(|f| f.xsi_type.as_deref())
                == Some("NotAuthenticated")
        })
}

/// The value of a `vmware_soap_session` cookie in a `Set-Cookie` header.
fn session_cookie(header: &str) -> Option<String> {
    let first = header.split(';').next()?.trim();
    let value = first.strip_prefix(SESSION_COOKIE)?.strip_prefix('=')?;
    Some(value.trim_matches('"').to_string()).filter(|v| !v.is_empty())
}

/// The `urn:vim25` version listed in `vimServiceVersions.xml`.
fn service_version(doc: &str) -> Option<String> {
    let root = xml::parse(doc).ok()?;
    let version = root
        .children_named("namespace")
        .find(|ns| ns.child_text("name").map(str::trim) == Some("urn:vim25"))
        .and_then(|ns| ns.child_text("version"))
        .map(|v| v.trim().to_string());
    version.filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
}

/// The response element of an envelope, or its fault.
pub fn parse_envelope(body: &str, status: u16) -> Result<Element, CallError> {
    let root = xml::parse(body).map_err(|e| {
        CallError::Provider(if status >= 500 && !body.trim_start().starts_with('<') {
            ProviderError::transient(format!("vSphere: HTTP {status} without a SOAP answer"))
        } else {
            protocol(&format!("unreadable SOAP answer (HTTP {status}): {e}"))
        })
    })?;
    let body_el = root
        .child("Body")
        .ok_or_else(|| CallError::Provider(protocol("SOAP answer without a Body")))?;
    if let Some(fault) = body_el.child("Fault") {
        return Err(CallError::Fault(Fault::from_soap(fault)));
    }
    if !(200..300).contains(&status) {
        return Err(CallError::Provider(if status >= 500 {
            ProviderError::transient(format!("vSphere: HTTP {status}; retry later"))
        } else {
            protocol(&format!("HTTP {status} without a SOAP fault"))
        }));
    }
    body_el
        .children
        .first()
        .cloned()
        .ok_or_else(|| CallError::Provider(protocol("SOAP Body is empty")))
}

/// A protocol error: the endpoint answered something this client cannot read.
pub fn protocol(what: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Protocol,
        format!("vSphere: {what}; is the endpoint a vCenter or ESXi SDK URL?"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAULT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

    #[test]
    fn faults_map_to_error_kinds() {
        let Err(CallError::Fault(f)) = parse_envelope(FAULT, 500) else {
            panic!("expected a fault");
        };
        assert_eq!(f.name, "InvalidLogin");
        assert_eq!(f.message, "Login failure");
        assert_eq!(f.to_error("log in").kind, ErrorKind::Credentials);
        let perm = Fault {
            name: "NoPermission".into(),
            message: "Permission to perform this operation was denied.".into(),
            detail: None,
        };
        let e = perm.to_error("clone vm-1");
        assert_eq!(e.kind, ErrorKind::Permission);
        assert!(e.message.contains("clone vm-1"), "{}", e.message);
        let busy = Fault {
            name: "InvalidPowerState".into(),
            message: String::new(),
            detail: None,
        };
        assert!(busy.to_error("destroy").is_transient());
    }

    #[test]
    fn a_fault_without_detail_uses_the_faultcode() {
        let doc = r#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body><e:Fault><faultcode>ServerFaultCode</faultcode><faultstring>boom</faultstring></e:Fault></e:Body></e:Envelope>"#;
        let Err(CallError::Fault(f)) = parse_envelope(doc, 500) else {
            panic!("expected a fault");
        };
        assert_eq!(
            (f.name.as_str(), f.message.as_str()),
            ("ServerFaultCode", "boom")
        );
    }

    #[test]
    fn reads_task_errors() {
        let el = xml::parse(r#"<error xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><fault xsi:type="InvalidPowerState"><requestedState>poweredOn</requestedState></fault><localizedMessage>The attempted operation cannot be performed in the current state (Powered on).</localizedMessage></error>"#).expect("parse");
        let f = Fault::from_localized(&el);
        assert_eq!(f.name, "InvalidPowerState");
        assert!(f.message.starts_with("The attempted operation"));
    }

    #[test]
    fn answers_and_http_errors() {
        let ok = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><LoginResponse xmlns="urn:vim25"><returnval><key>k</key></returnval></LoginResponse></soapenv:Body></soapenv:Envelope>"#;
        let el = parse_envelope(ok, 200).expect("answer");
        assert_eq!(el.name, "LoginResponse");
        let Err(CallError::Provider(e)) = parse_envelope("Service Unavailable", 503) else {
            panic!("expected an error");
        };
        assert_eq!(e.kind, ErrorKind::Transient);
        let Err(CallError::Provider(e)) = parse_envelope("<html>", 200) else {
            panic!("expected an error");
        };
        assert_eq!(e.kind, ErrorKind::Protocol);
    }

    #[test]
    fn finds_the_session_cookie_and_version() {
        assert_eq!(
            session_cookie(r#"vmware_soap_session="abc123"; Path=/; HttpOnly; Secure"#),
            Some("abc123".into())
        );
        assert_eq!(session_cookie("other=1; Path=/"), None);
        let doc = r#"<?xml version="1.0"?><namespaces version="1.0"><namespace><name>urn:vim25</name><version>6.5</version><priorVersions><version>6.0</version></priorVersions></namespace><namespace><name>urn:pbm</name><version>6.5</version></namespace></namespaces>"#;
        assert_eq!(service_version(doc), Some("6.5".into()));
        assert_eq!(service_version("<namespaces/>"), None);
    }

    #[test]
    fn morefs_are_escaped() {
        assert_eq!(
            MoRef::new("Folder", "a<b").xml("folder"),
            r#"<folder type="Folder">a&lt;b</folder>"#
        );
    }
}
