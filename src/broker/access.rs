//! Who may publish and subscribe to what: the broker's authorisation rule.
//!
//! Every caller has a [`Peer`] identity: the appliance's own components (in process), or the
//! subject of a client certificate issued by the appliance's CA. Rule enforced here: an agent
//! of cluster A only reaches `clusters.A....` topics (and groups), a gateway only
//! `gateways.G....`; the appliance and broker peers reach everything. Direction matters: an
//! agent reads its desired state but cannot write it, and writes reports nobody else can forge.

use std::fmt;

use super::log::{GroupName, TopicName};
use super::pattern::Pattern;

/// The kinds of certificate the broker accepts, as written in the certificate's URI SAN
/// `urn:palisade:<kind>:<subject>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// A workload cluster's agent; the subject is the cluster id.
    Agent,
    /// A private cloud gateway; the subject is the gateway's id.
    Gateway,
    /// Another broker of this appliance (a secondary certificate type for broker-to-broker
    /// links); full access.
    BrokerPeer,
}

impl PeerKind {
    /// The kind's name in URIs, the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Agent => "agent",
            PeerKind::Gateway => "gateway",
            PeerKind::BrokerPeer => "broker-peer",
        }
    }

    /// Parses a kind's name.
    pub fn parse(s: &str) -> Option<PeerKind> {
        match s {
            "agent" => Some(PeerKind::Agent),
            "gateway" => Some(PeerKind::Gateway),
            "broker-peer" => Some(PeerKind::BrokerPeer),
            _ => None,
        }
    }
}

/// An authenticated broker caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The appliance's own components, in process.
    Appliance,
    /// A certificate holder.
    Certified { kind: PeerKind, subject: String },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Appliance => f.write_str("appliance"),
            Peer::Certified { kind, subject } => write!(f, "{}:{subject}", kind.as_str()),
        }
    }
}

/// True if `subject` can be one level of a topic name (so it cannot widen a grant).
pub fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= 64
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a peer may do, as patterns.
struct Grants {
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    /// Group names must lie under this prefix; `None`: any group.
    group_prefix: Option<String>,
}

fn grants(peer: &Peer) -> Option<Grants> {
    let pats = |list: &[String]| -> Vec<Pattern> {
        list.iter().filter_map(|p| Pattern::parse(p).ok()).collect()
    };
    match peer {
        Peer::Appliance
        | Peer::Certified {
            kind: PeerKind::BrokerPeer,
            ..
        } => None,
        Peer::Certified {
            kind: PeerKind::Agent,
            subject: c,
        } => Some(Grants {
            publish: pats(&[format!("clusters.{c}.reports.>")]),
            subscribe: pats(&[
                format!("clusters.{c}.desired"),
                format!("clusters.{c}.commands.>"),
            ]),
            group_prefix: Some(format!("clusters.{c}.")),
        }),
        Peer::Certified {
            kind: PeerKind::Gateway,
            subject: g,
        } => Some(Grants {
            publish: pats(&[
                format!("gateways.{g}.replies.>"),
                format!("gateways.{g}.reports.>"),
            ]),
            subscribe: pats(&[format!("gateways.{g}.requests.>")]),
            group_prefix: Some(format!("gateways.{g}.")),
        }),
    }
}

/// A refused operation, naming what was asked and what the identity may do.
#[derive(Debug, thiserror::Error)]
#[error("{peer} may not {action} {target}: {hint}")]
pub struct Denied {
    pub peer: String,
    pub action: &'static str,
    pub target: String,
    pub hint: String,
}

fn deny(peer: &Peer, action: &'static str, target: &str, allowed: &[Pattern]) -> Denied {
    let list: Vec<&str> = allowed.iter().map(Pattern::as_str).collect();
    Denied {
        peer: peer.to_string(),
        action,
        target: target.to_string(),
        hint: format!("its certificate allows only {}", list.join(", ")),
    }
}

/// May `peer` publish to `topic`?
pub fn check_publish(peer: &Peer, topic: &TopicName) -> Result<(), Denied> {
    let Some(g) = grants(peer) else { return Ok(()) };
    if g.publish.iter().any(|p| p.matches(topic)) {
        Ok(())
    } else {
        Err(deny(peer, "publish to", topic.as_str(), &g.publish))
    }
}

/// May `peer` subscribe with `pattern` in `group`?
pub fn check_subscribe(
    peer: &Peer,
    pattern: &Pattern,
    group: Option<&GroupName>,
) -> Result<(), Denied> {
    let Some(g) = grants(peer) else { return Ok(()) };
    if !g.subscribe.iter().any(|p| pattern.within(p)) {
        return Err(deny(peer, "subscribe to", pattern.as_str(), &g.subscribe));
    }
    if let (Some(group), Some(prefix)) = (group, &g.group_prefix) {
        if !group.as_str().starts_with(prefix.as_str()) {
            return Err(Denied {
                peer: peer.to_string(),
                action: "use consumer group",
                target: group.to_string(),
                hint: format!("its groups must be named {prefix}<name>"),
            });
        }
    }
    Ok(())
}

/// May `peer` receive messages of `topic`? Checked again per topic a wildcard brings in.
pub fn may_read(peer: &Peer, topic: &TopicName) -> bool {
    match grants(peer) {
        None => true,
        Some(g) => g.subscribe.iter().any(|p| p.matches(topic)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(c: &str) -> Peer {
        Peer::Certified {
            kind: PeerKind::Agent,
            subject: c.into(),
        }
    }
    fn t(s: &str) -> TopicName {
        TopicName::new(s).expect("topic")
    }
    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("pattern")
    }

    #[test]
    fn an_agent_reaches_only_its_own_cluster() {
        let a = agent("a");
        assert!(check_publish(&a, &t("clusters.a.reports.health")).is_ok());
        assert!(check_publish(&a, &t("clusters.b.reports.health")).is_err());
        // It reads its desired state but may not write it.
        assert!(check_publish(&a, &t("clusters.a.desired")).is_err());
        assert!(check_subscribe(&a, &p("clusters.a.desired"), None).is_ok());
        assert!(check_subscribe(&a, &p("clusters.a.commands.>"), None).is_ok());
        assert!(check_subscribe(&a, &p("clusters.*.desired"), None).is_err());
        assert!(check_subscribe(&a, &p("clusters.b.desired"), None).is_err());
        assert!(check_subscribe(&a, &p(">"), None).is_err());
        let own = GroupName::new("clusters.a.agent").expect("group");
        let other = GroupName::new("orchestrator").expect("group");
        assert!(check_subscribe(&a, &p("clusters.a.desired"), Some(&own)).is_ok());
        let e =
            check_subscribe(&a, &p("clusters.a.desired"), Some(&other)).expect_err("foreign group");
        assert!(e.to_string().contains("clusters.a."), "{e}");
    }

    #[test]
    fn the_appliance_and_broker_peers_reach_everything() {
        let peer = Peer::Certified {
            kind: PeerKind::BrokerPeer,
            subject: "b2".into(),
        };
        for who in [Peer::Appliance, peer] {
            assert!(check_publish(&who, &t("clusters.a.desired")).is_ok());
            assert!(check_subscribe(&who, &p(">"), None).is_ok());
        }
    }

    #[test]
    fn subjects_cannot_smuggle_levels() {
        assert!(valid_subject("7f3a-9b_c"));
        for bad in ["", "a.b", "*", ">", "a/b", &"x".repeat(65)] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }
}
