//! Static addresses for sites without DHCP: the IP pool a cloud account defines in its
//! placement (`ip_pool`, `ip_prefix`, `gateway`, `dns`). The store reserves addresses from it
//! (first free one, in the same transaction as the machine record); this module only parses.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::providers::StaticIp;

/// Most addresses one pool may hold (a /22 worth): keeps the candidate list small.
const MAX_POOL: u32 = 1024;

/// A parsed IP pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPool {
    pub addresses: Vec<Ipv4Addr>,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
}

impl IpPool {
    /// Candidates in the form the store records (`10.20.0.31/24`).
    pub fn candidates(&self) -> Vec<String> {
        self.addresses
            .iter()
            .map(|a| format!("{a}/{}", self.prefix))
            .collect()
    }

    /// Network settings of a reserved address.
    pub fn static_ip(&self, reserved: &str) -> StaticIp {
        StaticIp {
            address: reserved.to_string(),
            gateway: self.gateway.to_string(),
            dns: self.dns.iter().map(|d| d.to_string()).collect(),
        }
    }
}

/// The account's pool, `None` when it has no `ip_pool` (machines use DHCP).
pub fn parse(placement: &BTreeMap<String, String>) -> Result<Option<IpPool>, String> {
    let Some(range) = placement.get("ip_pool").filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let mut addresses = Vec::new();
    for part in range.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (ip("ip_pool", a)?, ip("ip_pool", b)?),
            None => {
                let a = ip("ip_pool", part)?;
                (a, a)
            }
        };
        let (lo, hi) = (u32::from(first), u32::from(last));
        if lo > hi {
            return Err(format!(
                "ip_pool: range {part:?} ends before it starts: write the lower address first"
            ));
        }
        if (hi - lo) as usize + addresses.len() >= MAX_POOL as usize {
            return Err(format!(
                "ip_pool: more than {MAX_POOL} addresses; give a smaller range"
            ));
        }
        addresses.extend((lo..=hi).map(Ipv4Addr::from));
    }
    let prefix: u8 = placement
        .get("ip_prefix")
        .ok_or("ip_prefix: required with ip_pool (the network's prefix length, e.g. 24)")?
        .trim()
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or("ip_prefix: give the prefix length of the machines' network, 8 to 30")?;
    let gateway = ip(
        "gateway",
        placement
            .get("gateway")
            .ok_or("gateway: required with ip_pool (the default route's address)")?,
    )?;
    let dns = placement
        .get("dns")
        .map(|d| {
            d.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| ip("dns", s))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let mask = u32::MAX << (32 - prefix);
    if let Some(outside) = addresses
        .iter()
        .find(|a| u32::from(**a) & mask != u32::from(gateway) & mask)
    {
        return Err(format!(
            "ip_pool: {outside} is not in the gateway's network {gateway}/{prefix}: fix ip_pool, ip_prefix or gateway"
        ));
    }
    addresses.retain(|a| *a != gateway);
    Ok(Some(IpPool {
        addresses,
        prefix,
        gateway,
        dns,
    }))
}

fn ip(key: &str, text: &str) -> Result<Ipv4Addr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{key}: {text:?} is not an IPv4 address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_ranges_and_skips_the_gateway() {
        let p = parse(&placement(&[
            ("ip_pool", "10.0.0.1-10.0.0.3, 10.0.0.9"),
            ("ip_prefix", "24"),
            ("gateway", "10.0.0.1"),
            ("dns", "10.0.0.2"),
        ]))
        .ok()
        .flatten()
        .map(|p| p.candidates());
        assert_eq!(
            p,
            Some(vec![
                "10.0.0.2/24".to_string(),
                "10.0.0.3/24".into(),
                "10.0.0.9/24".into()
            ])
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(parse(&placement(&[])), Ok(None));
        let e = parse(&placement(&[("ip_pool", "10.0.0.5-10.0.0.1")])).expect_err("invalid");
        assert!(e.contains("ends before"), "{e}");
        let e = parse(&placement(&[("ip_pool", "10.0.0.5")])).expect_err("invalid");
        assert!(e.starts_with("ip_prefix"), "{e}");
        let e = parse(&placement(&[
            ("ip_pool", "10.1.0.5"),
            ("ip_prefix", "24"),
            ("gateway", "10.0.0.1"),
        ]))
        .expect_err("invalid");
        assert!(e.contains("not in the gateway's network"), "{e}");
    }
}
