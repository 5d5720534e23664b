//! The `guestinfo.*` extraConfig keys that hand a machine its cloud-init documents through
//! cloud-init's VMware datasource: `guestinfo.metadata` (instance-id, local-hostname and the
//! network config), `guestinfo.userdata`, each with a `.encoding` of `gzip+base64`.
//!
//! Also records the machine's static address under [`ADDRESS_KEY`] so the provider can report
//! it while VMware Tools does not (yet) report the guest's addresses.

use std::io::Write as _;

use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::providers::{MachineSpec, ProviderError, StaticIp};

/// extraConfig key holding the machine's static address (`10.20.0.31/24`).
pub const ADDRESS_KEY: &str = "guestinfo.palisade.address";
/// cloud-init's encoding name for gzip then base64.
const ENCODING: &str = "gzip+base64";

/// The extraConfig entries (key, value) for a machine.
pub fn entries(spec: &MachineSpec) -> Result<Vec<(String, String)>, ProviderError> {
    let network = match (&spec.bootstrap.network_config, &spec.static_ip) {
        (Some(n), _) => Some(n.clone()),
        (None, Some(ip)) => Some(network_config(ip)),
        (None, None) => None,
    };
    let metadata = metadata(&spec.bootstrap.meta_data, &spec.name, network.as_deref());
    let mut out = vec![
        ("guestinfo.metadata".to_string(), encode(&metadata)?),
        (
            "guestinfo.metadata.encoding".to_string(),
            ENCODING.to_string(),
        ),
        (
            "guestinfo.userdata".to_string(),
            encode(&spec.bootstrap.user_data)?,
        ),
        (
            "guestinfo.userdata.encoding".to_string(),
            ENCODING.to_string(),
        ),
    ];
    if let Some(ip) = &spec.static_ip {
        out.push((ADDRESS_KEY.to_string(), ip.address.clone()));
    }
    Ok(out)
}

/// The metadata document: the orchestrator's meta-data, plus `local-hostname` when it has
/// none, plus the network config (base64, as the datasource's `network.encoding` allows) so
/// that no YAML is spliced into YAML.
fn metadata(meta_data: &str, hostname: &str, network: Option<&str>) -> String {
    let mut md = meta_data.trim_end().to_string();
    let has_key = |md: &str, k: &str| md.lines().any(|l| l.starts_with(&format!("{k}:")));
    if !has_key(&md, "local-hostname") {
        md.push_str(&format!("\nlocal-hostname: {hostname}"));
    }
    if let Some(net) = network {
        if !has_key(&md, "network") {
            let b64 = base64::engine::general_purpose::STANDARD.encode(net.as_bytes());
            md.push_str(&format!("\nnetwork: {b64}\nnetwork.encoding: base64"));
        }
    }
    md.push('\n');
    md.trim_start_matches('\n').to_string()
}

/// A network config version 2 for a static address on the machine's first NIC, when the
/// orchestrator gave an address but no network config of its own. JSON is valid YAML.
pub fn network_config(ip: &StaticIp) -> String {
    serde_json::json!({
        "version": 2,
        "ethernets": {
            "nic0": {
                "match": { "name": "e*" },
                "addresses": [ip.address],
                "routes": [{ "to": "default", "via": ip.gateway }],
                "nameservers": { "addresses": ip.dns },
            }
        }
    })
    .to_string()
}

/// gzip then base64.
pub fn encode(text: &str) -> Result<String, ProviderError> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(text.as_bytes())
        .and_then(|_| gz.finish())
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
        .map_err(|e| ProviderError::transient(format!("cannot compress guestinfo: {e}")))
}

/// Reverse of [`encode`] for `base64` and `gzip+base64` values (tests and diagnostics).
pub fn decode(value: &str, encoding: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    match encoding {
        "base64" => String::from_utf8(bytes).ok(),
        "gzip+base64" => {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
                .ok()?;
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MachineSize, NodeRole};
    use crate::providers::{Bootstrap, ImageRef};

    fn spec(static_ip: Option<StaticIp>, network_config: Option<String>) -> MachineSpec {
        MachineSpec {
            name: "c1-cp-0-abc123".into(),
            cluster_id: "abc123".into(),
            pool: "cp".into(),
            role: NodeRole::ControlPlane,
            size: MachineSize {
                cpus: 2,
                memory_mib: 4096,
                disk_gib: 20,
            },
            image: ImageRef {
                id: "vm-1".into(),
                name: "img".into(),
            },
            bootstrap: Bootstrap {
                user_data: "#cloud-config\nruncmd: [echo hi]\n".into(),
                meta_data: "instance-id: c1-cp-0-abc123\nlocal-hostname: c1-cp-0-abc123\n".into(),
                network_config,
            },
            static_ip,
        }
    }

    fn get<'a>(e: &'a [(String, String)], k: &str) -> &'a str {
        e.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k}"))
    }

    #[test]
    fn dhcp_machines_get_metadata_and_userdata_only() {
        let e = entries(&spec(None, None)).expect("entries");
        assert_eq!(e.len(), 4);
        let md = decode(
            get(&e, "guestinfo.metadata"),
            get(&e, "guestinfo.metadata.encoding"),
        )
        .expect("metadata");
        assert_eq!(
            md,
            "instance-id: c1-cp-0-abc123\nlocal-hostname: c1-cp-0-abc123\n"
        );
        let ud = decode(get(&e, "guestinfo.userdata"), "gzip+base64").expect("userdata");
        assert!(ud.starts_with("#cloud-config"));
    }

    #[test]
    fn static_machines_carry_a_network_config_and_their_address() {
        let ip = StaticIp {
            address: "10.20.0.31/24".into(),
            gateway: "10.20.0.1".into(),
            dns: vec!["10.20.0.2".into()],
        };
        let e = entries(&spec(Some(ip.clone()), None)).expect("entries");
        assert_eq!(get(&e, ADDRESS_KEY), "10.20.0.31/24");
        let md = decode(get(&e, "guestinfo.metadata"), "gzip+base64").expect("metadata");
        let net_line = md
            .lines()
            .find_map(|l| l.strip_prefix("network: "))
            .expect("network line");
        assert!(md.contains("\nnetwork.encoding: base64\n"));
        let net = decode(net_line, "base64").expect("network");
        let v: serde_json::Value = serde_json::from_str(&net).expect("json");
        assert_eq!(v["version"], 2);
        assert_eq!(v["ethernets"]["nic0"]["addresses"][0], "10.20.0.31/24");
        assert_eq!(v["ethernets"]["nic0"]["routes"][0]["via"], "10.20.0.1");

        // The orchestrator's own network config wins over the rendered one.
        let e =
            entries(&spec(Some(ip), Some("version: 2\nethernets: {}\n".into()))).expect("entries");
        let md = decode(get(&e, "guestinfo.metadata"), "gzip+base64").expect("metadata");
        let net_line = md
            .lines()
            .find_map(|l| l.strip_prefix("network: "))
            .expect("line");
        assert_eq!(
            decode(net_line, "base64").as_deref(),
            Some("version: 2\nethernets: {}\n")
        );
    }

    #[test]
    fn adds_the_hostname_when_meta_data_lacks_it() {
        assert_eq!(
            metadata("instance-id: x", "host-1", None),
            "instance-id: x\nlocal-hostname: host-1\n"
        );
    }
}
