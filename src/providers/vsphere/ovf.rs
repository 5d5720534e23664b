//! OVA deploy: read an OVA (a tar of an `.ovf` descriptor, a `.mf` manifest and disks)
//! without loading it into memory, have vCenter build an import spec from the descriptor
//! (`OvfManager.CreateImportSpec`), import it (`ResourcePool.ImportVApp`), stream each disk
//! to the `HttpNfcLease`'s device URL while reporting progress, and complete (or abort) the
//! lease.
//!
//! Used by the vSphere provider's `ensure_image` only.

use std::collections::BTreeMap;
use std::io::{BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::soap::{protocol, Client, MoRef};
use super::xml::{self, text_el, Element};
use crate::providers::{http, ErrorKind, ProviderError};

/// Largest `.ovf` descriptor read.
const MAX_DESCRIPTOR: u64 = 16 * 1024 * 1024;
/// Most entries an OVA may hold.
const MAX_ENTRIES: usize = 1000;
/// Upload chunk size.
const CHUNK: usize = 256 * 1024;
/// How often the lease hears about upload progress (vCenter drops a silent lease).
const PROGRESS_EVERY: Duration = Duration::from_secs(15);
/// How long the lease may take to become ready.
const LEASE_READY: Duration = Duration::from_secs(600);

/// Where each file of an OVA lies.
#[derive(Debug)]
pub struct OvaIndex {
    /// The `.ovf` descriptor.
    pub descriptor: String,
    /// File name -> (byte offset in the OVA, size).
    pub files: BTreeMap<String, (u64, u64)>,
}

fn bad_ova(path: &Path, what: impl std::fmt::Display) -> ProviderError {
    ProviderError::new(
        ErrorKind::Invalid,
        format!(
            "image {}: {what}; an OVA is a tar holding an .ovf descriptor and its disks",
            path.display()
        ),
    )
}

/// Index an OVA file: read its descriptor and note where the other files lie (seeking past
/// their data, never reading it).
pub fn index_ova(path: &Path) -> Result<OvaIndex, ProviderError> {
    let file = std::fs::File::open(path).map_err(|e| bad_ova(path, format!("cannot open: {e}")))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| bad_ova(path, format!("is not a tar archive: {e}")))?;
    let mut descriptor = None;
    let mut files = BTreeMap::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(bad_ova(
                path,
                format!("holds more than {MAX_ENTRIES} files"),
            ));
        }
        let mut entry = entry.map_err(|e| bad_ova(path, format!("unreadable tar entry: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| bad_ova(path, format!("bad entry name: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        // OVA members are flat; a path is never followed, names only match file references.
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." {
            return Err(bad_ova(
                path,
                format!("entry {name:?} is not a plain file name"),
            ));
        }
        let size = entry.size();
        if name.to_ascii_lowercase().ends_with(".ovf") && descriptor.is_none() {
            if size > MAX_DESCRIPTOR {
                return Err(bad_ova(
                    path,
                    format!("descriptor {name} is larger than 16 MiB"),
                ));
            }
            let mut s = String::new();
            entry
                .read_to_string(&mut s)
                .map_err(|e| bad_ova(path, format!("descriptor {name} is not UTF-8 text: {e}")))?;
            descriptor = Some(s);
        }
        files.insert(name, (entry.raw_file_position(), size));
    }
    let descriptor = descriptor.ok_or_else(|| bad_ova(path, "holds no .ovf descriptor"))?;
    Ok(OvaIndex { descriptor, files })
}

/// Names of the networks an OVF descriptor's NICs connect to.
pub fn ovf_networks(descriptor: &str) -> Vec<String> {
    let Ok(root) = xml::parse(descriptor) else {
        return Vec::new();
    };
    root.find("NetworkSection")
        .map(|s| {
            s.children_named("Network")
                .filter_map(|n| n.attr("name").map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Download an OVA from an HTTPS URL into a temporary file (streamed to disk), checking its
/// sha256 when one is given.
pub async fn download(
    url: &str,
    ca_pem: &str,
    sha256: &str,
    into: &Path,
) -> Result<PathBuf, ProviderError> {
    let client = http::upload_client(ca_pem)?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| http::transport_error(url, &e))?;
    if !resp.status().is_success() {
        return Err(ProviderError::new(
            if resp.status().is_server_error() {
                ErrorKind::Transient
            } else {
                ErrorKind::NotFound
            },
            format!("image {url}: HTTP {}", resp.status()),
        ));
    }
    let path = into.join("image.ova");
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ProviderError::transient(format!("cannot write {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| http::transport_error(url, &e))?;
        hasher.update(&chunk);
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
            .await
            .map_err(|e| {
                ProviderError::transient(format!("cannot write {}: {e}", path.display()))
            })?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| ProviderError::transient(format!("cannot write {}: {e}", path.display())))?;
    let actual = hex::encode(hasher.finalize());
    if !sha256.is_empty() && !actual.eq_ignore_ascii_case(sha256) {
        return Err(ProviderError::new(
            ErrorKind::Invalid,
            format!("image {url}: sha256 is {actual}, expected {sha256}; the download is corrupt or the image was replaced"),
        ));
    }
    Ok(path)
}

/// Where an import lands.
pub struct ImportTarget<'a> {
    /// Resource pool that owns the new VM.
    pub pool: &'a MoRef,
    /// VM folder it is created in.
    pub folder: &'a MoRef,
    /// Datastore of its disks.
    pub datastore: &'a MoRef,
    /// Network every OVF network is mapped to.
    pub network: &'a MoRef,
}

/// Import the OVA at `path` as a VM named `entity_name`; returns the VM.
pub async fn import(
    client: &Client,
    http_client: &reqwest::Client,
    path: &Path,
    entity_name: &str,
    target: ImportTarget<'_>,
) -> Result<MoRef, ProviderError> {
    let p = path.to_path_buf();
    let index = tokio::task::spawn_blocking(move || index_ova(&p))
        .await
        .map_err(|e| ProviderError::transient(format!("OVA indexing stopped: {e}")))??;
    let content = client.content().await?;

    let mut mapping = String::new();
    for net in ovf_networks(&index.descriptor) {
        mapping.push_str(&format!(
            "<networkMapping>{}{}</networkMapping>",
            text_el("name", &net),
            target.network.xml("network")
        ));
    }
    let req = format!(
        concat!(
            "<CreateImportSpec xmlns=\"urn:vim25\">{}{}{}{}",
            "<cisp><locale></locale><deploymentOption></deploymentOption>{}{}",
            "<diskProvisioning>thin</diskProvisioning></cisp></CreateImportSpec>"
        ),
        content.ovf_manager.this(),
        text_el("ovfDescriptor", &index.descriptor),
        target.pool.xml("resourcePool"),
        target.datastore.xml("datastore"),
        text_el("entityName", entity_name),
        mapping
    );
    let what = format!("read the OVF descriptor of {}", path.display());
    let resp = client.call(&req).await.map_err(|e| e.into_error(&what))?;
    let ret = resp
        .child("returnval")
        .ok_or_else(|| protocol("CreateImportSpec answered without a result"))?;
    let errors: Vec<&str> = ret
        .children_named("error")
        .map(|e| e.child_text("localizedMessage").unwrap_or("unknown error"))
        .collect();
    if !errors.is_empty() {
        return Err(ProviderError::new(
            ErrorKind::Invalid,
            format!(
                "image {}: vCenter cannot import this OVF: {}",
                path.display(),
                errors.join("; ")
            ),
        ));
    }
    let spec = ret
        .child("importSpec")
        .ok_or_else(|| protocol("CreateImportSpec answered without an import spec"))?;
    let items: Vec<&Element> = ret.children_named("fileItem").collect();
    for item in &items {
        let file = item.child_text("path").unwrap_or("");
        if !index.files.contains_key(file) {
            return Err(bad_ova(
                path,
                format!("the descriptor references {file:?}, which the OVA does not hold"),
            ));
        }
    }

    let mut spec_xml = String::new();
    spec.write_as("spec", &mut spec_xml);
    let req = format!(
        "<ImportVApp xmlns=\"urn:vim25\">{}{spec_xml}{}</ImportVApp>",
        target.pool.this(),
        target.folder.xml("folder")
    );
    let resp = client
        .call(&req)
        .await
        .map_err(|e| e.into_error(&format!("import {entity_name}")))?;
    let lease = resp
        .child("returnval")
        .and_then(MoRef::from_el)
        .ok_or_else(|| protocol("ImportVApp answered without a lease"))?;

    let info = wait_lease_ready(client, &lease).await;
    let result = match info {
        Ok(info) => upload_all(client, http_client, &lease, &info, &items, &index, path)
            .await
            .map(|_| info),
        Err(e) => Err(e),
    };
    match result {
        Ok(info) => {
            let req = format!(
                "<HttpNfcLeaseComplete xmlns=\"urn:vim25\">{}</HttpNfcLeaseComplete>",
                lease.this()
            );
            client
                .call(&req)
                .await
                .map_err(|e| e.into_error(&format!("complete the import of {entity_name}")))?;
            info.child("entity")
                .and_then(MoRef::from_el)
                .ok_or_else(|| protocol("the import lease names no VM"))
        }
        Err(e) => {
            let req = format!(
                "<HttpNfcLeaseAbort xmlns=\"urn:vim25\">{}</HttpNfcLeaseAbort>",
                lease.this()
            );
            if let Err(abort) = client.call(&req).await {
                tracing::warn!(error = ?abort, "vSphere: could not abort an import lease");
            }
            Err(e)
        }
    }
}

/// Wait until the lease is `ready`; returns its `info`.
async fn wait_lease_ready(client: &Client, lease: &MoRef) -> Result<Element, ProviderError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    while started.elapsed() < LEASE_READY {
        let obj = client
            .retrieve_one(lease, &["state", "error", "info"])
            .await?
            .ok_or_else(|| ProviderError::transient("the import lease vanished; retry"))?;
        match obj.text("state") {
            Some("ready") => {
                return obj
                    .props
                    .get("info")
                    .cloned()
                    .ok_or_else(|| protocol("a ready lease without info"))
            }
            Some("error") => {
                let msg = obj
                    .props
                    .get("error")
                    .and_then(|e| e.child_text("localizedMessage"))
                    .unwrap_or("unknown error")
                    .to_string();
                return Err(ProviderError::new(
                    ErrorKind::Invalid,
                    format!("vSphere refused the import: {msg}"),
                ));
            }
            // initializing (or done, which cannot happen before we complete it)
            _ => {}
        }
        // The lease is usually ready at once; back off while vCenter prepares the disks.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    Err(ProviderError::transient(
        "the import lease did not become ready within 10 minutes; retry later",
    ))
}

/// The URL to send a device to: `*` stands for the endpoint's host (and then its scheme,
/// since vcsim always says https).
fn device_url(url: &str, sdk: &str) -> String {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return url.to_string();
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host != "*" {
        return url.to_string();
    }
    let (scheme, sdk_rest) = sdk.split_once("://").unwrap_or(("https", sdk));
    let sdk_host = sdk_rest.split('/').next().unwrap_or(sdk_rest);
    format!("{scheme}://{sdk_host}/{path}")
}

async fn upload_all(
    client: &Client,
    http_client: &reqwest::Client,
    lease: &MoRef,
    info: &Element,
    items: &[&Element],
    index: &OvaIndex,
    path: &Path,
) -> Result<(), ProviderError> {
    let urls: BTreeMap<&str, &str> = info
        .children_named("deviceUrl")
        .filter_map(|d| Some((d.child_text("importKey")?, d.child_text("url")?)))
        .collect();
    let total: u64 = items
        .iter()
        .filter_map(|i| index.files.get(i.child_text("path").unwrap_or("")))
        .map(|(_, size)| *size)
        .sum();
    let sent = Arc::new(AtomicU64::new(0));
    let uploads = async {
        for item in items {
            let device = item.child_text("deviceId").unwrap_or("");
            let file = item.child_text("path").unwrap_or("");
            let url = urls.get(device).ok_or_else(|| {
                protocol(&format!("the import lease has no URL for device {device}"))
            })?;
            let (offset, size) = index.files.get(file).copied().unwrap_or((0, 0));
            let create = item.child_text("create") == Some("true");
            upload_file(
                http_client,
                &device_url(url, client.sdk_url()),
                path,
                offset,
                size,
                create,
                sent.clone(),
            )
            .await?;
        }
        Ok::<(), ProviderError>(())
    };
    let progress = async {
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let percent = sent.load(Ordering::Relaxed).saturating_mul(100) / total.max(1);
            let req = format!(
                "<HttpNfcLeaseProgress xmlns=\"urn:vim25\">{}<percent>{}</percent></HttpNfcLeaseProgress>",
                lease.this(),
                percent.min(99)
            );
            if let Err(e) = client.call(&req).await {
                tracing::warn!(error = ?e, "vSphere: lease progress not accepted");
            }
        }
    };
    tokio::select! {
        r = uploads => r?,
        _ = progress => {}
    }
    let req = format!(
        "<HttpNfcLeaseProgress xmlns=\"urn:vim25\">{}<percent>100</percent></HttpNfcLeaseProgress>",
        lease.this()
    );
    client
        .call(&req)
        .await
        .map_err(|e| e.into_error("report import progress"))?;
    Ok(())
}

/// Stream `size` bytes at `offset` of the OVA to the device URL.
async fn upload_file(
    http_client: &reqwest::Client,
    url: &str,
    ova: &Path,
    offset: u64,
    size: u64,
    create: bool,
    sent: Arc<AtomicU64>,
) -> Result<(), ProviderError> {
    let io_err =
        |e: std::io::Error| ProviderError::transient(format!("cannot read {}: {e}", ova.display()));
    let mut file = tokio::fs::File::open(ova).await.map_err(io_err)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(io_err)?;
    let reader = file.take(size);
    let stream = futures_util::stream::unfold((reader, sent), |(mut r, sent)| async move {
        let mut buf = vec![0u8; CHUNK];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                sent.fetch_add(n as u64, Ordering::Relaxed);
                Some((Ok::<_, std::io::Error>(buf), (r, sent)))
            }
            Err(e) => Some((Err(e), (r, sent))),
        }
    });
    // As govc does: a file the lease creates is PUT, a stream-optimized disk is POSTed.
    let req = if create {
        http_client.put(url).header("Overwrite", "t")
    } else {
        http_client.post(url)
    };
    let resp = req
        .header("Content-Type", "application/x-vnd.vmware-streamVmdk")
        .header("Content-Length", size)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .map_err(|e| http::transport_error(url, &e))?;
    if !resp.status().is_success() {
        return Err(ProviderError::new(
            if resp.status().is_server_error() {
                ErrorKind::Transient
            } else {
                ErrorKind::Protocol
            },
            format!(
                "vSphere: uploading a disk of {} to {url} answered HTTP {}",
                ova.display(),
                resp.status()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_urls_get_the_endpoint_host_for_a_star() {
        assert_eq!(
            device_url(
                "https://*/nfc/52a1/disk-0.vmdk",
                "http://127.0.0.1:8989/sdk"
            ),
            "http://127.0.0.1:8989/nfc/52a1/disk-0.vmdk"
        );
        assert_eq!(
            device_url(
                "https://esx1.lab/nfc/52a1/disk-0.vmdk",
                "https://vc.lab/sdk"
            ),
            "https://esx1.lab/nfc/52a1/disk-0.vmdk"
        );
    }

    #[test]
    fn indexes_an_ova_without_reading_disks() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("a.ova");
        let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
        let ovf = br#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><NetworkSection><Network ovf:name="VM Network"/></NetworkSection></Envelope>"#;
        for (name, data) in [("a.ovf", &ovf[..]), ("disk.vmdk", &[7u8; 3000][..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).expect("append");
        }
        b.finish().expect("finish");
        drop(b);
        let idx = index_ova(&path).expect("index");
        assert_eq!(ovf_networks(&idx.descriptor), ["VM Network"]);
        let (off, size) = idx.files["disk.vmdk"];
        assert_eq!(size, 3000);
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[off as usize..off as usize + 3000], &[7u8; 3000][..]);
        assert!(index_ova(&dir.path().join("missing.ova")).is_err());
    }
}
