//! Bootstrap data: the cloud-init documents (user-data, meta-data, network-config) that turn a
//! fresh machine into a node of its cluster, rendered from the profile's OS and Kubernetes
//! layers and configured from the appliance only:
//!
//! - the appliance CA is trusted (`ca_certs`), containerd pulls every image through the
//!   appliance's registry (`/etc/containerd/certs.d/_default/hosts.toml`);
//! - `kubeadm`, `kubelet` and `kubectl` come from the appliance's downloads when the OS image
//!   lacks them (`/v1/downloads/<name>/<version>`, checked against the version asked for);
//! - the first control-plane machine runs `kubeadm init`, the others `kubeadm join` (control
//!   planes with the uploaded-certificates key);
//! - the first control-plane machine installs the agent with the cluster's one-time
//!   registration token.
//!
//! Secrets in user-data are one-time or short-lived tokens only: the kubeadm bootstrap token
//! (24 h), the certificate key (kubeadm deletes the uploaded certificates after 2 h) and the
//! agent's registration token (exchanged once for a certificate). Pure: no I/O.

use serde_json::{json, Value};

use crate::model::NodeRole;
use crate::providers::{Bootstrap, StaticIp};

/// Where machines reach the appliance.
#[derive(Debug, Clone)]
pub struct ApplianceEndpoints {
    /// `https://host:port` of the API, console and registry.
    pub url: String,
    /// `host:port` of the registry (same listener as the API).
    pub registry: String,
    /// `host:port` of the broker.
    pub broker: String,
    /// PEM of the appliance's CA.
    pub ca_pem: String,
}

/// The cluster's bootstrap secrets, created once and kept sealed by the store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ClusterSecrets {
    /// kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub kubeadm_token: String,
    /// 32 random bytes, hex: encrypts the control-plane certificates kubeadm uploads.
    pub certificate_key: String,
    /// One-time token the agent exchanges for its client certificate.
    pub agent_token: String,
}

impl ClusterSecrets {
    /// Fresh random secrets.
    pub fn generate() -> ClusterSecrets {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let kubeadm_token = format!("{}.{}", pick(6), pick(16));
        let mut key = [0u8; 32];
        rand::thread_rng().fill(&mut key);
        ClusterSecrets {
            kubeadm_token,
            certificate_key: hex::encode(key),
            agent_token: crate::secrets::new_bearer_secret("pal_reg"),
        }
    }
}

/// The Kubernetes layer's settings, from its pack version and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// `1.30.4` (no leading `v`).
    pub version: String,
    pub pod_cidr: String,
    pub service_cidr: String,
}

impl KubernetesSettings {
    /// From the Kubernetes layer: its pack version and its values (`pod_cidr`, `service_cidr`).
    pub fn from_layer(version: &str, values: &Value) -> KubernetesSettings {
        let text = |key: &str, default: &str| {
            values[key]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(default)
                .to_string()
        };
        // Pack versions may carry build metadata (1.30.4+palisade1); kubeadm wants the plain one.
        let plain = version
            .trim_start_matches('v')
            .split('+')
            .next()
            .unwrap_or(version);
        KubernetesSettings {
            version: plain.to_string(),
            pod_cidr: text("pod_cidr", "10.244.0.0/16"),
            service_cidr: text("service_cidr", "10.96.0.0/12"),
        }
    }
}

/// Everything one machine's bootstrap depends on.
#[derive(Debug, Clone)]
pub struct MachineBootstrap<'a> {
    pub appliance: &'a ApplianceEndpoints,
    pub cluster_id: &'a str,
    pub cluster_name: &'a str,
    pub machine_name: &'a str,
    pub role: NodeRole,
    /// The machine that runs `kubeadm init` and the agent.
    pub first_control_plane: bool,
    /// Host or address of the Kubernetes API (a VIP, or the first control plane).
    pub control_plane_endpoint: &'a str,
    pub kubernetes: &'a KubernetesSettings,
    pub secrets: &'a ClusterSecrets,
    pub static_ip: Option<&'a StaticIp>,
}

/// Render the three cloud-init documents of one machine.
pub fn render(m: &MachineBootstrap<'_>) -> Bootstrap {
    Bootstrap {
        user_data: user_data(m),
        meta_data: meta_data(m),
        network_config: m.static_ip.map(network_config),
    }
}

fn meta_data(m: &MachineBootstrap<'_>) -> String {
    emit(&json!({
        "instance-id": format!("{}-{}", m.machine_name, m.cluster_id),
        "local-hostname": m.machine_name,
    }))
}

/// Network config version 2 for a static address on the first Ethernet interface.
fn network_config(ip: &StaticIp) -> String {
    emit(&json!({
        "version": 2,
        "ethernets": {
            "primary": {
                "match": {"name": "e*"},
                "set-name": "eth0",
                "addresses": [ip.address],
                "routes": [{"to": "default", "via": ip.gateway}],
                "nameservers": {"addresses": ip.dns},
            }
        }
    }))
}

const CA_PATH: &str = "/etc/palisade/ca.crt";

fn user_data(m: &MachineBootstrap<'_>) -> String {
    let mut files = vec![
        json!({"path": CA_PATH, "permissions": "0644", "content": m.appliance.ca_pem}),
        json!({
            "path": "/etc/containerd/certs.d/_default/hosts.toml",
            "permissions": "0644",
            "content": containerd_hosts(m.appliance),
        }),
        json!({
            "path": "/etc/palisade/kubeadm.yaml",
            "permissions": "0600",
            "content": kubeadm_config(m),
        }),
        json!({
            "path": "/etc/palisade/bootstrap.sh",
            "permissions": "0755",
            "content": bootstrap_script(m),
        }),
    ];
    if m.first_control_plane {
        files.push(json!({
            "path": "/etc/palisade/agent.toml",
            "permissions": "0600",
            "content": agent_config(m),
        }));
        files.push(json!({
            "path": "/etc/systemd/system/palisade-agent.service",
            "permissions": "0644",
            "content": AGENT_UNIT,
        }));
    }
    let doc = json!({
        "hostname": m.machine_name,
        "preserve_hostname": false,
        "manage_etc_hosts": true,
        "ca_certs": {"trusted": [m.appliance.ca_pem]},
        "write_files": files,
        "runcmd": [["/etc/palisade/bootstrap.sh"]],
    });
    format!("#cloud-config\n{}", emit(&doc))
}

fn containerd_hosts(a: &ApplianceEndpoints) -> String {
    format!(
        "# Air-gapped site: every registry is served by the Palisade appliance.\n\
         [host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{CA_PATH}\"\n",
        a.registry
    )
}

fn kubeadm_config(m: &MachineBootstrap<'_>) -> String {
    let k = m.kubernetes;
    let endpoint = format!("{}:6443", m.control_plane_endpoint);
    let node =
        json!({"name": m.machine_name, "criSocket": "unix:///run/containerd/containerd.sock"});
    if m.first_control_plane {
        let init = json!({
            "apiVersion": "kubeadm.k8s.io/v1beta3",
            "kind": "InitConfiguration",
            "bootstrapTokens": [{
                "token": m.secrets.kubeadm_token,
                "ttl": "24h0m0s",
                "usages": ["signing", "authentication"],
                "groups": ["system:bootstrappers:kubeadm:default-node-token"],
            }],
            "certificateKey": m.secrets.certificate_key,
            "nodeRegistration": node,
        });
        let cluster = json!({
            "apiVersion": "kubeadm.k8s.io/v1beta3",
            "kind": "ClusterConfiguration",
            "kubernetesVersion": format!("v{}", k.version),
            "clusterName": m.cluster_name,
            "controlPlaneEndpoint": endpoint,
            "networking": {"podSubnet": k.pod_cidr, "serviceSubnet": k.service_cidr},
        });
        format!("{}---\n{}", emit(&init), emit(&cluster))
    } else {
        // The CA hash is not known before the first control plane exists; the token's JWS
        // signature over cluster-info still authenticates the API server to the joining node.
        let mut join = json!({
            "apiVersion": "kubeadm.k8s.io/v1beta3",
            "kind": "JoinConfiguration",
            "discovery": {"bootstrapToken": {
                "token": m.secrets.kubeadm_token,
                "apiServerEndpoint": endpoint,
                "unsafeSkipCAVerification": true,
            }},
            "nodeRegistration": node,
        });
        if m.role == NodeRole::ControlPlane {
            join["controlPlane"] = json!({"certificateKey": m.secrets.certificate_key});
        }
        emit(&join)
    }
}

fn bootstrap_script(m: &MachineBootstrap<'_>) -> String {
    let url = &m.appliance.url;
    let version = &m.kubernetes.version;
    let kubeadm = if m.first_control_plane {
        "kubeadm init --config /etc/palisade/kubeadm.yaml --upload-certs"
    } else {
        "kubeadm join --config /etc/palisade/kubeadm.yaml"
    };
    let agent = if m.first_control_plane {
        format!(
            "fetch palisade \"{url}/v1/downloads/palisade\"\n\
             systemctl daemon-reload\n\
             systemctl enable --now palisade-agent.service\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"#!/bin/sh
# Written by Palisade: joins this machine to its cluster from the appliance only.
set -eu
log() {{ echo "palisade-bootstrap: $*"; logger -t palisade-bootstrap "$*" 2>/dev/null || true; }}
fetch() {{
  # fetch NAME URL: download into /usr/local/bin, trusting only the appliance CA; retried.
  n=0
  until curl --fail --silent --show-error --location --cacert {CA_PATH} -o "/usr/local/bin/$1.part" "$2"; do
    n=$((n + 1)); [ "$n" -ge 30 ] && {{ log "cannot download $1 from $2"; exit 1; }}
    sleep 10
  done
  chmod 0755 "/usr/local/bin/$1.part" && mv "/usr/local/bin/$1.part" "/usr/local/bin/$1"
}}
for b in kubeadm kubelet kubectl; do
  if ! command -v "$b" >/dev/null 2>&1 || ! "$b" version 2>/dev/null | grep -q "v{version}"; then
    log "installing $b {version} from the appliance"
    fetch "$b" "{url}/v1/downloads/$b/{version}"
  fi
done
systemctl enable --now containerd kubelet
log "running: {kubeadm}"
{kubeadm}
{agent}log "done"
"#
    )
}

fn agent_config(m: &MachineBootstrap<'_>) -> String {
    format!(
        "# The Palisade agent of cluster {name}: the registration token is one-time; the agent\n\
         # exchanges it for a client certificate at first start.\n\
         appliance = \"{url}\"\n\
         broker = \"{broker}\"\n\
         ca_file = \"{CA_PATH}\"\n\
         cluster_id = \"{id}\"\n\
         registration_token = \"{token}\"\n\
         kubeconfig = \"/etc/kubernetes/admin.conf\"\n",
        name = m.cluster_name,
        url = m.appliance.url,
        broker = m.appliance.broker,
        id = m.cluster_id,
        token = m.secrets.agent_token,
    )
}

const AGENT_UNIT: &str = "[Unit]\n\
Description=Palisade cluster agent\n\
After=network-online.target kubelet.service\n\
Wants=network-online.target\n\n\
[Service]\n\
ExecStart=/usr/local/bin/palisade agent --config /etc/palisade/agent.toml\n\
Restart=always\n\
RestartSec=5\n\n\
[Install]\n\
WantedBy=multi-user.target\n";

/// YAML text of a JSON value (block style, multi-line strings as literal blocks).
fn emit(v: &Value) -> String {
    let yaml = to_yaml(v);
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // Emitting into a String cannot fail on I/O; a failure would only be a fmt error.
    if emitter.dump(&yaml).is_err() {
        return serde_json::to_string(v).unwrap_or_default();
    }
    // The emitter starts documents with "---"; cloud-init and kubeadm do not need it.
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    format!("{body}\n")
}

fn to_yaml(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        Value::Object(o) => Yaml::Hash(
            o.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (ApplianceEndpoints, KubernetesSettings, ClusterSecrets) {
        (
            ApplianceEndpoints {
                url: "https://palisade.lan:8443".into(),
                registry: "palisade.lan:8443".into(),
                broker: "palisade.lan:8444".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            },
            KubernetesSettings::from_layer("1.30.4+palisade1", &json!({})),
            ClusterSecrets::generate(),
        )
    }

    #[test]
    fn secrets_have_kubeadm_shapes() {
        let s = ClusterSecrets::generate();
        let (id, secret) = s.kubeadm_token.split_once('.').unwrap_or_default();
        assert_eq!((id.len(), secret.len()), (6, 16));
        assert_eq!(s.certificate_key.len(), 64);
        assert_ne!(s, ClusterSecrets::generate());
    }

    #[test]
    fn first_control_plane_inits_and_installs_the_agent_others_join() {
        let (a, k, s) = fixture();
        let mut m = MachineBootstrap {
            appliance: &a,
            cluster_id: "c1",
            cluster_name: "prod",
            machine_name: "prod-cp-0-c1",
            role: NodeRole::ControlPlane,
            first_control_plane: true,
            control_plane_endpoint: "10.0.0.10",
            kubernetes: &k,
            secrets: &s,
            static_ip: None,
        };
        let first = render(&m);
        assert!(first.user_data.starts_with("#cloud-config\n"));
        assert!(first.user_data.contains("kubeadm init"));
        assert!(first.user_data.contains(&s.agent_token));
        assert!(first.user_data.contains("kubernetesVersion: v1.30.4"));
        assert!(first.network_config.is_none());
        m.first_control_plane = false;
        m.role = NodeRole::Worker;
        let worker = render(&m);
        assert!(worker.user_data.contains("kubeadm join"));
        assert!(!worker.user_data.contains(&s.agent_token));
        assert!(!worker.user_data.contains("certificateKey"));
    }

    #[test]
    fn static_address_becomes_network_config() {
        let (a, k, s) = fixture();
        let ip = StaticIp {
            address: "10.0.0.31/24".into(),
            gateway: "10.0.0.1".into(),
            dns: vec!["10.0.0.2".into()],
        };
        let b = render(&MachineBootstrap {
            appliance: &a,
            cluster_id: "c1",
            cluster_name: "prod",
            machine_name: "prod-w-0-c1",
            role: NodeRole::Worker,
            first_control_plane: false,
            control_plane_endpoint: "10.0.0.10",
            kubernetes: &k,
            secrets: &s,
            static_ip: Some(&ip),
        });
        let net = b.network_config.unwrap_or_default();
        assert!(
            net.contains("10.0.0.31/24") && net.contains("via: 10.0.0.1"),
            "{net}"
        );
        assert!(b.meta_data.contains("local-hostname: prod-w-0-c1"));
    }
}
