//! The vSphere account's placement settings, read and checked without a network call, and
//! the static IP pool (`ip_pool`, `ip_prefix`, `gateway`, `dns`) that the orchestrator
//! allocates from: [`ip_pool`] and [`IpPoolSettings`] are public for it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::providers::{ProviderError, StaticIp};

/// Base folder for machines when the account names none.
pub const DEFAULT_FOLDER: &str = "palisade";
/// Most addresses one pool may hold (a /16).
const MAX_POOL: usize = 65_536;

/// Where machines go: names and inventory paths relative to the datacenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Datacenter name (or path from the root folder).
    pub datacenter: String,
    /// The cluster or standalone host machines run on.
    pub compute: Compute,
    /// Resource pool path below the cluster's root pool, when not the root pool itself.
    pub resource_pool: Option<String>,
    /// Datastore name (or path under the datacenter's datastore folder).
    pub datastore: String,
    /// Port group name (standard or distributed), under the datacenter's network folder.
    pub network: String,
    /// Base VM folder path under the datacenter's VM folder.
    pub folder: String,
    /// Whether `folder` was set by the account (then it must exist) or is the default
    /// (then it is created on first use).
    pub folder_explicit: bool,
    /// An existing template to clone from instead of importing the image.
    pub template: Option<String>,
    /// Static addresses, when the account has an IP pool.
    pub ip_pool: Option<IpPoolSettings>,
}

/// The compute resource placement key that was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compute {
    /// `cluster`: a cluster path under the datacenter's host folder.
    Cluster(String),
    /// `host`: a standalone host (or a host inside a cluster) path under the host folder.
    Host(String),
}

impl Compute {
    /// The placement key and value.
    pub fn key_value(&self) -> (&'static str, &str) {
        match self {
            Compute::Cluster(c) => ("cluster", c),
            Compute::Host(h) => ("host", h),
        }
    }
}

fn get<'a>(placement: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    placement
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

fn required<'a>(
    placement: &'a BTreeMap<String, String>,
    key: &str,
    example: &str,
) -> Result<&'a str, ProviderError> {
    get(placement, key).ok_or_else(|| {
        ProviderError::invalid(
            key,
            format!("is required for a vSphere account, e.g. {key} = \"{example}\""),
        )
    })
}

/// A folder or object path: `/`-separated, no empty or `..` component.
fn check_path(key: &str, value: &str) -> Result<String, ProviderError> {
    let trimmed = value.trim_matches('/');
    if trimmed
        .split('/')
        .any(|c| c.trim().is_empty() || c == "." || c == "..")
    {
        return Err(ProviderError::invalid(
            key,
            format!("{value:?} is not an inventory path: use names separated by '/', without empty or '..' parts"),
        ));
    }
    Ok(trimmed.to_string())
}

impl Placement {
    /// Read and check the account's placement map.
    pub fn parse(placement: &BTreeMap<String, String>) -> Result<Placement, ProviderError> {
        const KNOWN: &[&str] = &[
            "datacenter",
            "cluster",
            "host",
            "resource_pool",
            "datastore",
            "network",
            "folder",
            "template",
            "ip_pool",
            "ip_prefix",
            "gateway",
            "dns",
        ];
        if let Some(k) = placement.keys().find(|k| {
            !KNOWN.contains(&k.as_str())
                && !crate::providers::ORCHESTRATOR_PLACEMENT_KEYS.contains(&k.as_str())
        }) {
            return Err(ProviderError::invalid(
                k,
                format!(
                    "is not a vSphere placement key; the keys are {}",
                    KNOWN.join(", ")
                ),
            ));
        }
        let datacenter = check_path("datacenter", required(placement, "datacenter", "DC0")?)?;
        let compute = match (get(placement, "cluster"), get(placement, "host")) {
            (Some(c), None) => Compute::Cluster(check_path("cluster", c)?),
            (None, Some(h)) => Compute::Host(check_path("host", h)?),
            (Some(_), Some(_)) => {
                return Err(ProviderError::invalid(
                    "cluster",
                    "set either cluster or host, not both",
                ))
            }
            (None, None) => {
                return Err(ProviderError::invalid(
                    "cluster",
                    "a vSphere account needs a cluster (or a standalone host in the key host), e.g. cluster = \"Cluster1\"",
                ))
            }
        };
        let resource_pool = get(placement, "resource_pool")
            .map(|p| check_path("resource_pool", p))
            .transpose()?;
        let datastore = check_path("datastore", required(placement, "datastore", "datastore1")?)?;
        let network = required(placement, "network", "VM Network")?.to_string();
        let (folder, folder_explicit) = match get(placement, "folder") {
            Some(f) => (check_path("folder", f)?, true),
            None => (DEFAULT_FOLDER.to_string(), false),
        };
        let template = get(placement, "template")
            .map(|t| check_path("template", t))
            .transpose()?;
        Ok(Placement {
            datacenter,
            compute,
            resource_pool,
            datastore,
            network,
            folder,
            folder_explicit,
            template,
            ip_pool: IpPoolSettings::parse(placement)?,
        })
    }
}

/// The account's static address settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPoolSettings {
    /// Every address of the pool, in order, without duplicates.
    pub addresses: Vec<Ipv4Addr>,
    /// Prefix length of the machines' subnet.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Ipv4Addr,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
}

impl IpPoolSettings {
    /// Read `ip_pool`, `ip_prefix`, `gateway` and `dns`; `None` when `ip_pool` is not set.
    pub fn parse(
        placement: &BTreeMap<String, String>,
    ) -> Result<Option<IpPoolSettings>, ProviderError> {
        let Some(pool) = get(placement, "ip_pool") else {
            for k in ["ip_prefix", "gateway", "dns"] {
                if get(placement, k).is_some() {
                    return Err(ProviderError::invalid(
                        k,
                        "only applies with an ip_pool; set ip_pool (e.g. 10.20.0.10-10.20.0.60) or remove it",
                    ));
                }
            }
            return Ok(None);
        };
        let prefix_s = required(placement, "ip_prefix", "24")?;
        let prefix: u8 = prefix_s
            .trim_start_matches('/')
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| {
                ProviderError::invalid(
                    "ip_prefix",
                    format!("{prefix_s:?} is not a prefix length from 8 to 30, e.g. 24"),
                )
            })?;
        let gw_s = required(placement, "gateway", "10.20.0.1")?;
        let gateway: Ipv4Addr = gw_s.parse().map_err(|_| {
            ProviderError::invalid("gateway", format!("{gw_s:?} is not an IPv4 address"))
        })?;
        let dns = match get(placement, "dns") {
            None => Vec::new(),
            Some(d) => d
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<Ipv4Addr>().map_err(|_| {
                        ProviderError::invalid(
                            "dns",
                            format!(
                                "{s:?} is not an IPv4 address; list servers separated by commas"
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let mask = u32::MAX << (32 - u32::from(prefix));
        let net = u32::from(gateway) & mask;
        let broadcast = net | !mask;
        let mut addresses = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for part in pool.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let parse = |s: &str| {
                s.parse::<Ipv4Addr>().map_err(|_| {
                    ProviderError::invalid(
                        "ip_pool",
                        format!("{s:?} is not an IPv4 address; write ranges as 10.20.0.10-10.20.0.60, separated by commas"),
                    )
                })
            };
            let (start, end) = (u32::from(parse(a)?), u32::from(parse(b)?));
            if start > end {
                return Err(ProviderError::invalid(
                    "ip_pool",
                    format!("range {part} ends before it starts"),
                ));
            }
            if (end - start) as usize >= MAX_POOL
                || addresses.len() + ((end - start) as usize) >= MAX_POOL
            {
                return Err(ProviderError::invalid(
                    "ip_pool",
                    format!("holds more than {MAX_POOL} addresses"),
                ));
            }
            for n in start..=end {
                let ip = Ipv4Addr::from(n);
                if n & mask != net {
                    return Err(ProviderError::invalid(
                        "ip_pool",
                        format!(
                            "{ip} is outside the gateway's subnet {}/{prefix}",
                            Ipv4Addr::from(net)
                        ),
                    ));
                }
                if n == net || n == broadcast {
                    return Err(ProviderError::invalid(
                        "ip_pool",
                        format!(
                            "{ip} is the network or broadcast address of {}/{prefix}",
                            Ipv4Addr::from(net)
                        ),
                    ));
                }
                if ip == gateway {
                    return Err(ProviderError::invalid(
                        "ip_pool",
                        format!("{ip} is the gateway; leave it out of the pool"),
                    ));
                }
                if seen.insert(n) {
                    addresses.push(ip);
                }
            }
        }
        if addresses.is_empty() {
            return Err(ProviderError::invalid("ip_pool", "holds no address"));
        }
        Ok(Some(IpPoolSettings {
            addresses,
            prefix,
            gateway,
            dns,
        }))
    }

    /// The static settings of one machine given the address allocated to it.
    pub fn static_ip(&self, address: Ipv4Addr) -> StaticIp {
        StaticIp {
            address: format!("{address}/{}", self.prefix),
            gateway: self.gateway.to_string(),
            dns: self.dns.iter().map(Ipv4Addr::to_string).collect(),
        }
    }
}

/// The addresses of the account's IP pool, in order; empty when the account has none.
/// The orchestrator allocates from it (it knows every machine) and passes the result as
/// [`crate::providers::MachineSpec::static_ip`], built with [`IpPoolSettings::static_ip`].
pub fn ip_pool(placement: &BTreeMap<String, String>) -> Result<Vec<Ipv4Addr>, ProviderError> {
    Ok(IpPoolSettings::parse(placement)?
        .map(|p| p.addresses)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorKind;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("datacenter", "DC0"),
            ("cluster", "DC0_C0"),
            ("datastore", "LocalDS_0"),
            ("network", "VM Network"),
        ]
    }

    #[test]
    fn reads_a_minimal_placement_with_defaults() {
        let p = Placement::parse(&map(&base())).expect("placement");
        assert_eq!(p.compute, Compute::Cluster("DC0_C0".into()));
        assert_eq!(
            (p.folder.as_str(), p.folder_explicit),
            (DEFAULT_FOLDER, false)
        );
        assert!(p.ip_pool.is_none() && p.template.is_none());
    }

    #[test]
    fn names_the_missing_or_wrong_key() {
        let mut m = map(&base());
        m.remove("datastore");
        let e = Placement::parse(&m).expect_err("no datastore");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.starts_with("datastore:"), "{}", e.message);
        let mut m = map(&base());
        m.insert("host".into(), "h1".into());
        assert!(Placement::parse(&m)
            .expect_err("both")
            .message
            .contains("not both"));
        let mut m = map(&base());
        m.insert("flavor".into(), "x".into());
        assert!(Placement::parse(&m)
            .expect_err("unknown")
            .message
            .starts_with("flavor:"));
        let mut m = map(&base());
        m.insert("folder".into(), "a/../b".into());
        assert!(Placement::parse(&m)
            .expect_err("dotdot")
            .message
            .starts_with("folder:"));
    }

    #[test]
    fn parses_ip_pools() {
        let mut m = map(&base());
        m.extend(map(&[
            ("ip_pool", "10.20.0.10-10.20.0.12, 10.20.0.20,10.20.0.11"),
            ("ip_prefix", "24"),
            ("gateway", "10.20.0.1"),
            ("dns", "10.20.0.2, 10.20.0.3"),
        ]));
        let addrs = ip_pool(&m).expect("pool");
        let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            shown,
            ["10.20.0.10", "10.20.0.11", "10.20.0.12", "10.20.0.20"]
        );
        let p = Placement::parse(&m)
            .expect("placement")
            .ip_pool
            .expect("pool");
        let s = p.static_ip(addrs[0]);
        assert_eq!(s.address, "10.20.0.10/24");
        assert_eq!(s.gateway, "10.20.0.1");
        assert_eq!(s.dns, ["10.20.0.2", "10.20.0.3"]);
        assert!(ip_pool(&map(&base())).expect("none").is_empty());
    }

    #[test]
    fn rejects_bad_ip_pools() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[
                    ("ip_pool", "10.20.0.10-10.20.0.5"),
                    ("ip_prefix", "24"),
                    ("gateway", "10.20.0.1"),
                ],
                "ends before",
            ),
            (
                &[
                    ("ip_pool", "10.20.1.10"),
                    ("ip_prefix", "24"),
                    ("gateway", "10.20.0.1"),
                ],
                "outside",
            ),
            (
                &[
                    ("ip_pool", "10.20.0.1-10.20.0.3"),
                    ("ip_prefix", "24"),
                    ("gateway", "10.20.0.1"),
                ],
                "gateway",
            ),
            (
                &[
                    ("ip_pool", "10.20.0.250-10.20.0.255"),
                    ("ip_prefix", "24"),
                    ("gateway", "10.20.0.1"),
                ],
                "broadcast",
            ),
            (
                &[
                    ("ip_pool", "10.20.0.x"),
                    ("ip_prefix", "24"),
                    ("gateway", "10.20.0.1"),
                ],
                "not an IPv4",
            ),
            (
                &[("ip_pool", "10.20.0.10"), ("gateway", "10.20.0.1")],
                "ip_prefix",
            ),
            (
                &[
                    ("ip_pool", "10.20.0.10"),
                    ("ip_prefix", "33"),
                    ("gateway", "10.20.0.1"),
                ],
                "prefix length",
            ),
            (
                &[
                    ("ip_pool", "10.0.0.2-10.3.0.1"),
                    ("ip_prefix", "8"),
                    ("gateway", "10.0.0.1"),
                ],
                "more than",
            ),
            (&[("gateway", "10.20.0.1")], "only applies"),
        ];
        for (pairs, expect) in cases {
            let e = ip_pool(&map(pairs)).expect_err(expect);
            assert_eq!(e.kind, ErrorKind::Invalid);
            assert!(e.message.contains(expect), "{expect}: {}", e.message);
        }
    }
}
