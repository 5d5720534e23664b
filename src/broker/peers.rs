//! The client certificates the broker knows: which identity each serial number stands for and
//! whether it is revoked. Loaded from the store at start and updated by the API as
//! certificates are issued and revoked.
//!
//! Rule enforced here: a certificate is accepted only if this appliance issued it (its serial
//! is on record) and it is not revoked. The TLS handshake has already checked it chains to the
//! appliance's CA and is within its validity period.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use tokio::sync::watch;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::access::{Peer, PeerKind};

/// What the directory knows of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCert {
    pub kind: PeerKind,
    pub subject: String,
    pub revoked: bool,
}

/// Why a client certificate was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("no client certificate was presented: connect with the certificate the appliance issued to this agent, gateway or broker")]
    NoCertificate,
    #[error("the client certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("certificate {serial} was not issued by this appliance's broker (or was issued before the data directory was restored): ask an administrator for a new one")]
    Unknown { serial: String },
    #[error("certificate {serial} has been revoked: ask an administrator for a new one")]
    Revoked { serial: String },
    #[error("certificate {serial} names {named}, but the appliance issued it to {issued}")]
    Mismatch {
        serial: String,
        named: String,
        issued: String,
    },
}

/// Serial numbers of issued client certificates; shared by the API and the broker service.
pub struct PeerDirectory {
    certs: RwLock<HashMap<String, KnownCert>>,
    /// Bumped at every revocation so open streams re-check their certificate.
    revocations: watch::Sender<u64>,
}

impl Default for PeerDirectory {
    fn default() -> Self {
        Self::new(std::iter::empty())
    }
}

impl PeerDirectory {
    /// A directory holding `certs` (serial in lower-case hex, certificate).
    pub fn new(certs: impl IntoIterator<Item = (String, KnownCert)>) -> PeerDirectory {
        PeerDirectory {
            certs: RwLock::new(certs.into_iter().collect()),
            revocations: watch::channel(0).0,
        }
    }

    /// Records a newly issued certificate.
    pub fn insert(&self, serial: String, cert: KnownCert) {
        self.certs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(serial, cert);
    }

    /// Marks a certificate revoked; streams opened with it are closed.
    pub fn revoke(&self, serial: &str) {
        if let Some(c) = self
            .certs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(serial)
        {
            c.revoked = true;
        }
        self.revocations.send_modify(|n| *n += 1);
    }

    /// Notified after every revocation.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    /// The identity of a certificate by serial, if it is known and not revoked.
    pub fn check(&self, serial: &str) -> Result<Peer, Refused> {
        let certs = self.certs.read().unwrap_or_else(PoisonError::into_inner);
        match certs.get(serial) {
            None => Err(Refused::Unknown {
                serial: serial.to_string(),
            }),
            Some(c) if c.revoked => Err(Refused::Revoked {
                serial: serial.to_string(),
            }),
            Some(c) => Ok(Peer::Certified {
                kind: c.kind,
                subject: c.subject.clone(),
            }),
        }
    }

    /// Identifies the holder of the leaf certificate `der`: its serial must be on record and
    /// not revoked, and its URI name must agree with the record. Returns the peer and serial.
    pub fn identify(&self, der: &[u8]) -> Result<(Peer, String), Refused> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| Refused::Unreadable(e.to_string()))?;
        let serial = hex::encode(cert.raw_serial());
        let peer = self.check(&serial)?;
        let named = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
            })
            .unwrap_or_default();
        let issued = peer_uri(&peer);
        if named != issued {
            return Err(Refused::Mismatch {
                serial,
                named,
                issued,
            });
        }
        Ok((peer, serial))
    }
}

/// The URI name a certificate of `peer` carries: `urn:palisade:<kind>:<subject>`.
pub fn peer_uri(peer: &Peer) -> String {
    match peer {
        Peer::Appliance => "urn:palisade:appliance".into(),
        Peer::Certified { kind, subject } => format!("urn:palisade:{}:{subject}", kind.as_str()),
    }
}
