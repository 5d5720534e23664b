//! PropertyCollector reads and waits: properties of known objects, listings through a
//! container view, inventory path lookups, and waiting for a Task with `WaitForUpdatesEx`
//! (a long-poll, not a polling loop).
//!
//! Used by the rest of `providers::vsphere` only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::soap::{protocol, CallError, Client, Fault, MoRef};
use super::xml::{escape, text_el, Element};
use crate::providers::ProviderError;

/// Most pages of a continued `RetrievePropertiesEx` read before giving up.
const MAX_PAGES: usize = 10_000;
/// Seconds the server may hold a `WaitForUpdatesEx` before answering "nothing new".
const WAIT_SECONDS: u32 = 20;

/// One object's properties as read.
#[derive(Debug, Clone)]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// Property path -> value element (`<val>`).
    pub props: BTreeMap<String, Element>,
}

impl ObjectContent {
    /// Text of a scalar property.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.props.get(path).map(|v| v.text.trim())
    }

    /// A reference-valued property.
    pub fn moref(&self, path: &str) -> Option<MoRef> {
        self.props.get(path).and_then(MoRef::from_el)
    }

    /// The references of an `ArrayOfManagedObjectReference` property.
    pub fn morefs(&self, path: &str) -> Vec<MoRef> {
        self.props
            .get(path)
            .map(|v| v.children.iter().filter_map(MoRef::from_el).collect())
            .unwrap_or_default()
    }
}

fn read_objects(ret: &Element, out: &mut Vec<ObjectContent>) {
    for o in ret.children_named("objects") {
        let Some(obj) = o.child("obj").and_then(MoRef::from_el) else {
            continue;
        };
        let mut props = BTreeMap::new();
        for p in o.children_named("propSet") {
            if let (Some(name), Some(val)) = (p.child_text("name"), p.child("val")) {
                props.insert(name.to_string(), val.clone());
            }
        }
        out.push(ObjectContent { obj, props });
    }
}

fn prop_set(kind: &str, paths: &[&str]) -> String {
    let mut s = format!("<propSet>{}", text_el("type", kind));
    if paths.is_empty() {
        s.push_str("<all>false</all>");
    }
    for p in paths {
        s.push_str(&text_el("pathSet", p));
    }
    s.push_str("</propSet>");
    s
}

impl Client {
    /// Properties `paths` of objects of one type.
    pub async fn retrieve(
        &self,
        objects: &[MoRef],
        kind: &str,
        paths: &[&str],
    ) -> Result<Vec<ObjectContent>, ProviderError> {
        // vcsim lists some port groups twice in Datacenter.network.
        let mut objects = objects.to_vec();
        objects.sort();
        objects.dedup();
        if objects.is_empty() {
            return Ok(Vec::new());
        }
        let mut spec = format!("<specSet>{}", prop_set(kind, paths));
        for o in &objects {
            let _ = write!(
                spec,
                "<objectSet>{}<skip>false</skip></objectSet>",
                o.xml("obj")
            );
        }
        spec.push_str("</specSet>");
        self.retrieve_spec(&spec).await
    }

    /// Properties of one object; `None` when it no longer exists.
    pub async fn retrieve_one(
        &self,
        obj: &MoRef,
        paths: &[&str],
    ) -> Result<Option<ObjectContent>, ProviderError> {
        match self
            .retrieve(std::slice::from_ref(obj), &obj.kind, paths)
            .await
        {
            Ok(mut v) => Ok(v.pop()),
            Err(e) if e.kind == crate::providers::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object of type `kind` under `root` (recursively), with properties `paths`.
    pub async fn list(
        &self,
        root: &MoRef,
        kind: &str,
        paths: &[&str],
    ) -> Result<Vec<ObjectContent>, ProviderError> {
        let content = self.content().await?;
        let req = format!(
            "<CreateContainerView xmlns=\"urn:vim25\">{}{}{}<recursive>true</recursive></CreateContainerView>",
            content.view_manager.this(),
            root.xml("container"),
            text_el("type", kind)
        );
        let resp = self
            .call(&req)
            .await
            .map_err(|e| e.into_error(&format!("list {kind} objects under {root}")))?;
        let view = resp
            .child("returnval")
            .and_then(MoRef::from_el)
            .ok_or_else(|| protocol("CreateContainerView answered without a view"))?;
        let spec = format!(
            concat!(
                "<specSet>{}<objectSet>{}<skip>true</skip>",
                "<selectSet xsi:type=\"TraversalSpec\"><name>view</name><type>ContainerView</type>",
                "<path>view</path><skip>false</skip></selectSet></objectSet></specSet>"
            ),
            prop_set(kind, paths),
            view.xml("obj")
        );
        let result = self.retrieve_spec(&spec).await;
        let destroy = format!(
            "<DestroyView xmlns=\"urn:vim25\">{}</DestroyView>",
            view.this()
        );
        // A view left behind only costs server memory until logout; the listing matters more.
        if let Err(e) = self.call(&destroy).await {
            tracing::debug!(error = ?e, "vSphere: could not destroy a container view");
        }
        result
    }

    async fn retrieve_spec(&self, spec: &str) -> Result<Vec<ObjectContent>, ProviderError> {
        let content = self.content().await?;
        let pc = content.property_collector.clone();
        let req = format!(
            "<RetrievePropertiesEx xmlns=\"urn:vim25\">{}{spec}<options/></RetrievePropertiesEx>",
            pc.this()
        );
        let resp = self
            .call(&req)
            .await
            .map_err(|e| e.into_error("read properties"))?;
        let mut out = Vec::new();
        let mut ret = resp.child("returnval").cloned();
        for _ in 0..MAX_PAGES {
            let Some(r) = ret.take() else { break };
            read_objects(&r, &mut out);
            let Some(token) = r.child_text("token").filter(|t| !t.is_empty()) else {
                break;
            };
            let req = format!(
                "<ContinueRetrievePropertiesEx xmlns=\"urn:vim25\">{}{}</ContinueRetrievePropertiesEx>",
                pc.this(),
                text_el("token", token)
            );
            let resp = self
                .call(&req)
                .await
                .map_err(|e| e.into_error("read more properties"))?;
            ret = resp.child("returnval").cloned();
        }
        Ok(out)
    }

    /// `SearchIndex.FindByInventoryPath`: `DC0/host/DC0_C0`. `None` when nothing is there.
    pub async fn find_by_path(&self, path: &str) -> Result<Option<MoRef>, ProviderError> {
        let content = self.content().await?;
        let req = format!(
            "<FindByInventoryPath xmlns=\"urn:vim25\">{}{}</FindByInventoryPath>",
            content.search_index.this(),
            text_el("inventoryPath", path)
        );
        let resp = self
            .call(&req)
            .await
            .map_err(|e| e.into_error(&format!("look up {path}")))?;
        Ok(resp.child("returnval").and_then(MoRef::from_el))
    }

    /// The object of type `kind` named `name` directly in `folder`, read with one property
    /// collector traversal. Used instead of `FindChild` where VMs are being created at the
    /// same time: vcsim's `FindChild` drops the connection when it meets a VM that is still
    /// being created (it has no name yet); the property collector reads it as unnamed.
    pub async fn find_in_folder(
        &self,
        folder: &MoRef,
        kind: &str,
        name: &str,
    ) -> Result<Option<MoRef>, ProviderError> {
        let spec = format!(
            concat!(
                "<specSet>{}<objectSet>{}<skip>true</skip>",
                "<selectSet xsi:type=\"TraversalSpec\"><name>children</name><type>Folder</type>",
                "<path>childEntity</path><skip>false</skip></selectSet></objectSet></specSet>"
            ),
            prop_set(kind, &["name"]),
            folder.xml("obj")
        );
        Ok(self
            .retrieve_spec(&spec)
            .await?
            .into_iter()
            .find(|o| o.obj.kind == kind && o.text("name") == Some(name))
            .map(|o| o.obj))
    }

    /// `SearchIndex.FindChild`: the entity named `name` directly in `parent`.
    pub async fn find_child(
        &self,
        parent: &MoRef,
        name: &str,
    ) -> Result<Option<MoRef>, ProviderError> {
        let content = self.content().await?;
        let req = format!(
            "<FindChild xmlns=\"urn:vim25\">{}{}{}</FindChild>",
            content.search_index.this(),
            parent.xml("entity"),
            text_el("name", name)
        );
        let resp = self
            .call(&req)
            .await
            .map_err(|e| e.into_error(&format!("look up {name} in {parent}")))?;
        Ok(resp.child("returnval").and_then(MoRef::from_el))
    }

    /// Call a method that returns a Task and wait for it. Returns the task's result element
    /// (`info.result`), or the task's fault.
    pub async fn run_task(
        &self,
        request: &str,
        deadline: Duration,
    ) -> Result<Option<Element>, CallError> {
        let resp = self.call(request).await?;
        let task = resp
            .child("returnval")
            .and_then(MoRef::from_el)
            .ok_or_else(|| protocol("a task method answered without a Task"))?;
        self.wait_task(&task, deadline).await
    }

    /// Wait until `task` succeeds or fails, at most `deadline`. Each wait has a property
    /// collector to itself (taken from the session's pool, or created), so concurrent waits
    /// never consume each other's updates; the same three calls as pyvmomi's `WaitForTask`
    /// (CreateFilter, WaitForUpdatesEx until done, DestroyPropertyFilter).
    pub async fn wait_task(
        &self,
        task: &MoRef,
        deadline: Duration,
    ) -> Result<Option<Element>, CallError> {
        let (pc, filter) = match self.take_collector() {
            Some(pc) => match self.create_filter(&pc, task).await {
                Ok(f) => (pc, f),
                // A collector of an expired session: start afresh.
                Err(_) => {
                    let pc = self.new_collector().await?;
                    let f = self.create_filter(&pc, task).await?;
                    (pc, f)
                }
            },
            None => {
                let pc = self.new_collector().await?;
                let f = self.create_filter(&pc, task).await?;
                (pc, f)
            }
        };
        let result = self.wait_with(&pc, task, deadline).await;
        let destroy = format!(
            "<DestroyPropertyFilter xmlns=\"urn:vim25\">{}</DestroyPropertyFilter>",
            filter.this()
        );
        let clean = self.call(&destroy).await.is_ok();
        if clean && !matches!(result, Err(CallError::Provider(_))) {
            self.return_collector(pc);
        } else {
            let destroy = format!(
                "<DestroyPropertyCollector xmlns=\"urn:vim25\">{}</DestroyPropertyCollector>",
                pc.this()
            );
            if let Err(e) = self.call(&destroy).await {
                tracing::debug!(error = ?e, "vSphere: could not destroy a property collector");
            }
        }
        result
    }

    async fn new_collector(&self) -> Result<MoRef, CallError> {
        let content = self.content().await?;
        let create = format!(
            "<CreatePropertyCollector xmlns=\"urn:vim25\">{}</CreatePropertyCollector>",
            content.property_collector.this()
        );
        let resp = self.call(&create).await?;
        Ok(resp
            .child("returnval")
            .and_then(MoRef::from_el)
            .ok_or_else(|| protocol("CreatePropertyCollector answered without a collector"))?)
    }

    async fn create_filter(&self, pc: &MoRef, task: &MoRef) -> Result<MoRef, CallError> {
        let filter = format!(
            "<CreateFilter xmlns=\"urn:vim25\">{}<spec>{}<objectSet>{}<skip>false</skip></objectSet></spec><partialUpdates>false</partialUpdates></CreateFilter>",
            pc.this(),
            prop_set("Task", &["info.state", "info.error", "info.result"]),
            task.xml("obj")
        );
        let resp = self.call(&filter).await?;
        Ok(resp
            .child("returnval")
            .and_then(MoRef::from_el)
            .ok_or_else(|| protocol("CreateFilter answered without a filter"))?)
    }

    async fn wait_with(
        &self,
        pc: &MoRef,
        task: &MoRef,
        deadline: Duration,
    ) -> Result<Option<Element>, CallError> {
        let started = Instant::now();
        let mut version = String::new();
        let mut state = String::new();
        let mut error: Option<Element> = None;
        let mut result: Option<Element> = None;
        // Bounded by the deadline: each round trip lasts at most WAIT_SECONDS.
        while started.elapsed() < deadline {
            let left = deadline.saturating_sub(started.elapsed()).as_secs();
            let wait = WAIT_SECONDS
                .min(u32::try_from(left).unwrap_or(WAIT_SECONDS))
                .max(1);
            let req = format!(
                "<WaitForUpdatesEx xmlns=\"urn:vim25\">{}<version>{}</version><options><maxWaitSeconds>{wait}</maxWaitSeconds></options></WaitForUpdatesEx>",
                pc.this(),
                escape(&version)
            );
            let resp = self.call(&req).await?;
            let Some(set) = resp.child("returnval") else {
                continue; // nothing changed within maxWaitSeconds
            };
            if let Some(v) = set.child_text("version") {
                version = v.to_string();
            }
            for fs in set.children_named("filterSet") {
                for os in fs.children_named("objectSet") {
                    for ch in os.children_named("changeSet") {
                        let val = ch.child("val").cloned();
                        match ch.child_text("name") {
                            Some("info.state") => {
                                state = val.map(|v| v.text.trim().to_string()).unwrap_or_default()
                            }
                            Some("info.error") => error = val,
                            Some("info.result") => result = val,
                            _ => {}
                        }
                    }
                }
            }
            match state.as_str() {
                "success" => return Ok(result),
                "error" => {
                    return Err(CallError::Fault(match &error {
                        Some(e) => Fault::from_localized(e),
                        None => Fault {
                            name: "UnknownFault".into(),
                            message: "the task failed without an error".into(),
                            detail: None,
                        },
                    }))
                }
                _ => {}
            }
        }
        Err(CallError::Provider(ProviderError::transient(format!(
            "vSphere: task {} did not finish within {} s; it may still be running on vCenter, retry later",
            task.value,
            deadline.as_secs()
        ))))
    }
}
