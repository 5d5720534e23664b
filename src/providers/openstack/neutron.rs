//! Neutron (network v2.0) client: networks and security groups (to resolve placement settings)
//! and ports (pre-created for machines with a static IP). Used by the OpenStack provider.

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::keystone::{Service, Session};
use crate::providers::{ErrorKind, ProviderError};

/// A network.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct Network {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, rename = "router:external")]
    pub external: bool,
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub subnets: Vec<String>,
}

impl Network {
    /// The name, or the id for unnamed networks.
    pub(super) fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            &self.name
        }
    }
}

/// A security group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct SecurityGroup {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// A fixed IP of a port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct FixedIp {
    #[serde(default)]
    pub subnet_id: String,
    pub ip_address: String,
}

/// A port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(super) struct Port {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub status: String,
}

/// The Neutron client of one session.
pub(super) struct Neutron<'a> {
    pub session: &'a Session,
}

impl Neutron<'_> {
    /// Networks visible to the project, filtered by `query`.
    pub(super) async fn networks(
        &self,
        query: &[(&str, String)],
    ) -> Result<Vec<Network>, ProviderError> {
        #[derive(Deserialize)]
        struct L {
            networks: Vec<Network>,
        }
        let l: L = self
            .session
            .get(
                Service::Network,
                "/networks",
                query,
                &[],
                "list Neutron networks",
            )
            .await?;
        Ok(l.networks)
    }

    /// The network a placement value names: an id, or else a unique name.
    pub(super) async fn find_network(&self, value: &str) -> Result<Network, ProviderError> {
        let by_id = self.networks(&[("id", value.to_string())]).await?;
        if let Some(n) = by_id.into_iter().next() {
            return Ok(n);
        }
        let by_name = self.networks(&[("name", value.to_string())]).await?;
        match by_name.as_slice() {
            [one] => Ok(one.clone()),
            [] => {
                let all = self.networks(&[]).await?;
                let names: Vec<String> = all.iter().map(|n| n.label().to_string()).collect();
                Err(missing("network", value, &names))
            }
            many => Err(ProviderError::invalid(
                "network",
                format!(
                    "{} networks are named {value:?}; give the id of the one to use",
                    many.len()
                ),
            )),
        }
    }

    /// Security groups of the project.
    pub(super) async fn security_groups(&self) -> Result<Vec<SecurityGroup>, ProviderError> {
        #[derive(Deserialize)]
        struct L {
            security_groups: Vec<SecurityGroup>,
        }
        let token = self.session.token().await?;
        let l: L = self
            .session
            .get(
                Service::Network,
                "/security-groups",
                &[
                    ("project_id", token.project_id.clone()),
                    ("fields", "id".into()),
                    ("fields", "name".into()),
                ],
                &[],
                "list Neutron security groups",
            )
            .await?;
        Ok(l.security_groups)
    }

    /// The security group a placement value names (id or unique name).
    pub(super) async fn find_security_group(
        &self,
        value: &str,
    ) -> Result<SecurityGroup, ProviderError> {
        let all = self.security_groups().await?;
        if let Some(g) = all.iter().find(|g| g.id == value) {
            return Ok(g.clone());
        }
        let named: Vec<&SecurityGroup> = all.iter().filter(|g| g.name == value).collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                let names: Vec<String> = all.iter().map(|g| g.name.clone()).collect();
                Err(missing("security_group", value, &names))
            }
            many => Err(ProviderError::invalid(
                "security_group",
                format!(
                    "{} security groups are named {value:?}; give the id of the one to use",
                    many.len()
                ),
            )),
        }
    }

    /// Ports of the project with this name.
    pub(super) async fn ports_named(&self, name: &str) -> Result<Vec<Port>, ProviderError> {
        #[derive(Deserialize)]
        struct L {
            ports: Vec<Port>,
        }
        let l: L = self
            .session
            .get(
                Service::Network,
                "/ports",
                &[("name", name.to_string())],
                &[],
                &format!("list Neutron ports named {name}"),
            )
            .await?;
        Ok(l.ports.into_iter().filter(|p| p.name == name).collect())
    }

    /// Create a port with one fixed IP address.
    pub(super) async fn create_port(
        &self,
        name: &str,
        network_id: &str,
        ip: &str,
        description: &str,
        security_group: Option<&str>,
    ) -> Result<Port, ProviderError> {
        let mut port = json!({
            "name": name,
            "network_id": network_id,
            "fixed_ips": [{"ip_address": ip}],
            "description": description,
        });
        if let Some(sg) = security_group {
            port["security_groups"] = json!([sg]);
        }
        #[derive(Deserialize)]
        struct B {
            port: Port,
        }
        let what = format!("create Neutron port {name} with address {ip}");
        let reply = self
            .session
            .call(
                Service::Network,
                Method::POST,
                "/ports",
                &[],
                Some(&json!({"port": port})),
                &[],
            )
            .await?;
        let b: B = reply.expect_ok(&what)?.json(&what)?;
        Ok(b.port)
    }

    /// Replace the tags of a port (the `standard-attr-tag` extension).
    pub(super) async fn set_port_tags(
        &self,
        id: &str,
        tags: &[String],
    ) -> Result<(), ProviderError> {
        self.session
            .call(
                Service::Network,
                Method::PUT,
                &format!("/ports/{id}/tags"),
                &[],
                Some(&json!({"tags": tags})),
                &[],
            )
            .await?
            .expect_ok(&format!("tag Neutron port {id}"))
            .map(|_| ())
    }

    /// Delete a port; one already gone is success.
    pub(super) async fn delete_port(&self, id: &str) -> Result<(), ProviderError> {
        let reply = self
            .session
            .call(
                Service::Network,
                Method::DELETE,
                &format!("/ports/{id}"),
                &[],
                None,
                &[],
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        reply
            .expect_ok(&format!("delete Neutron port {id}"))
            .map(|_| ())
    }
}

/// "network \"x\" does not exist; networks: a, b".
pub(super) fn missing(setting: &str, value: &str, existing: &[String]) -> ProviderError {
    let list = if existing.is_empty() {
        "none".to_string()
    } else {
        existing.join(", ")
    };
    ProviderError::new(
        ErrorKind::NotFound,
        format!(
            "{setting} {value:?} does not exist in the project; the {setting} values that exist are: {list}. Fix the placement key `{setting}`"
        ),
    )
}

/// The address part of `10.20.0.31/24`.
pub(super) fn bare_address(address: &str) -> &str {
    address.split('/').next().unwrap_or(address).trim()
}

/// Whether this JSON is a Neutron port list (for tests of the parser).
#[cfg(test)]
fn parse_ports(v: &serde_json::Value) -> Vec<Port> {
    serde_json::from_value(v["ports"].clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn parses_ports_and_networks() {
        let v: Value = serde_json::from_str(
            r#"{"ports": [{"id": "p1", "name": "c1-w-0-abc", "network_id": "n1",
              "tenant_id": "t", "mac_address": "fa:16:3e:7d:6c:01", "admin_state_up": true,
              "status": "DOWN", "device_id": "", "device_owner": "",
              "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.77.0.50"}],
              "description": "palisade machine", "tags": ["palisade"],
              "binding:vif_type": "unbound", "security_groups": ["g"]}]}"#,
        )
        .expect("json");
        let ports = parse_ports(&v);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].fixed_ips[0].ip_address, "10.77.0.50");
        let n: Network = serde_json::from_str(
            r#"{"id": "n1", "name": "", "status": "ACTIVE", "router:external": true, "subnets": ["s1"], "shared": false, "mtu": 1450}"#,
        )
        .expect("network");
        assert!(n.external);
        assert_eq!(n.label(), "n1");
        assert_eq!(bare_address("10.20.0.31/24"), "10.20.0.31");
        assert_eq!(bare_address("10.20.0.31"), "10.20.0.31");
    }

    #[test]
    fn missing_settings_name_what_exists() {
        let e = missing("network", "nope", &["a".into(), "b".into()]);
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(
            e.message.contains("\"nope\"") && e.message.contains("a, b"),
            "{}",
            e.message
        );
    }
}
