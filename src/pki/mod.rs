//! The appliance's internal certificate authority and TLS configuration.
//!
//! On first boot a CA key pair is generated and kept in the data directory (key mode 0600); it
//! signs the HTTPS server certificate now, and agent, gateway and broker-peer certificates later.
//! The server certificate is issued afresh at every start for the host's current names and
//! addresses, so a changed IP never leaves the console with a mismatched certificate; clients
//! pin the CA, whose fingerprint `serve` prints. An admin may instead supply their own
//! certificate and key (`--tls-cert`, `--tls-key`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::secrets::write_private_file;

/// Failures of the PKI, naming the file or step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}", path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op}: {source}")]
    Generate {
        op: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{} holds no PEM certificate: give a PEM file with the server certificate first, then its chain", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("the TLS certificate and key do not go together, or are unsupported: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the stored CA in {} is damaged ({reason}): restore the data directory from a backup", path.display())]
    DamagedCa { path: PathBuf, reason: String },
}

/// Result of a PKI operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The internal CA: its certificate and the key that signs with it.
pub struct Pki {
    ca_cert_pem: String,
    ca_der: Vec<u8>,
    ca_key: KeyPair,
    ca_params: CertificateParams,
}

/// A certificate chain and private key, ready for rustls.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::File {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

impl Pki {
    /// Load the CA from `dir`, generating it on first boot.
    pub fn load_or_create(dir: &Path) -> Result<Pki> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if !cert_path.exists() || !key_path.exists() {
            std::fs::create_dir_all(dir).map_err(|source| Error::File {
                op: "create",
                path: dir.to_path_buf(),
                source,
            })?;
            let (cert_pem, key_pem) = generate_ca()?;
            // Key first: a crash between the two writes leaves no certificate without its key.
            write_private_file(&key_path, key_pem.as_bytes()).map_err(|source| Error::File {
                op: "write",
                path: key_path.clone(),
                source,
            })?;
            // The certificate is public, but the CA's files are kept together at mode 0600.
            write_private_file(&cert_path, cert_pem.as_bytes()).map_err(|source| Error::File {
                op: "write",
                path: cert_path.clone(),
                source,
            })?;
            tracing::info!(path = %cert_path.display(), "generated the internal certificate authority");
        }
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let damaged = |reason: String| Error::DamagedCa {
            path: dir.to_path_buf(),
            reason,
        };
        let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| damaged(e.to_string()))?;
        let ca_params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| damaged(e.to_string()))?;
        let ca_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| damaged("no certificate in ca.crt".into()))?
            .map_err(|e| damaged(e.to_string()))?
            .to_vec();
        Ok(Pki {
            ca_cert_pem: cert_pem,
            ca_der,
            ca_key,
            ca_params,
        })
    }

    /// The CA certificate in PEM, for clients to pin.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// SHA-256 of the CA certificate (DER), as colon-separated upper-case hex.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// Issue a server certificate for `names` (DNS names and IP addresses), signed by the CA.
    pub fn issue_server_identity(&self, names: &[String]) -> Result<Identity> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "palisade appliance");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .filter_map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Some(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().ok().map(SanType::DnsName),
            })
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(397);
        let (cert, key) = self.sign(params)?;
        Ok(Identity {
            chain: vec![
                cert.der().clone(),
                CertificateDer::from(self.ca_der.clone()),
            ],
            key: PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?,
        })
    }
}

/// A client certificate issued for the broker, with its freshly generated key.
pub struct ClientCertificate {
    /// Serial number as lower-case hex, as the broker looks it up.
    pub serial: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: time::OffsetDateTime,
}

impl Pki {
    /// Generates a key pair and signs `params` with the CA.
    fn sign(&self, params: CertificateParams) -> Result<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::generate().map_err(|source| Error::Generate {
            op: "generate the new certificate's key",
            source,
        })?;
        let issuer = self
            .ca_params
            .clone()
            .self_signed(&self.ca_key)
            .map_err(|source| Error::Generate {
                op: "load CA for signing",
                source,
            })?;
        let cert = params
            .signed_by(&key, &issuer, &self.ca_key)
            .map_err(|source| Error::Generate {
                op: "sign the new certificate",
                source,
            })?;
        Ok((cert, key))
    }

    /// The CA certificate in DER, for TLS verifiers.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// Issue a client certificate named by the URI `uri` (`urn:palisade:<kind>:<subject>`),
    /// valid for `days`. Broker peers (`server_too`) may also serve with it.
    pub fn issue_client_certificate(
        &self,
        common_name: &str,
        uri: &str,
        days: i64,
        server_too: bool,
    ) -> Result<ClientCertificate> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Palisade");
        params.distinguished_name = dn;
        let uri = rcgen::Ia5String::try_from(uri).map_err(|source| Error::Generate {
            op: "name the client certificate",
            source,
        })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server_too {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        // A positive serial whose first byte is non-zero, so its DER bytes are exactly these.
        let mut serial: [u8; 16] = rand::random();
        serial[0] = (serial[0] & 0x7f).max(1);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        let not_after = now + time::Duration::days(days);
        params.not_after = not_after;
        let (cert, key) = self.sign(params)?;
        Ok(ClientCertificate {
            serial: hex::encode(serial),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// SHA-256 of DER bytes as colon-separated upper-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn generate_ca() -> Result<(String, String)> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Palisade internal CA");
    dn.push(DnType::OrganizationName, "Palisade");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    // Air-gapped sites cannot renew on a whim: the CA lasts 20 years.
    params.not_after = now + time::Duration::days(365 * 20);
    let key = KeyPair::generate().map_err(|source| Error::Generate {
        op: "generate CA key",
        source,
    })?;
    let cert = params.self_signed(&key).map_err(|source| Error::Generate {
        op: "self-sign CA",
        source,
    })?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Load an admin-supplied certificate chain and key from PEM files.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity> {
    let cert_pem = std::fs::read(cert).map_err(|source| Error::File {
        op: "read",
        path: cert.to_path_buf(),
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| Error::File {
        op: "read",
        path: key.to_path_buf(),
        source,
    })?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::File {
            op: "parse",
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| Error::File {
            op: "parse",
            path: key.to_path_buf(),
            source,
        })?
        .ok_or_else(|| Error::NoKey {
            path: key.to_path_buf(),
        })?;
    Ok(Identity { chain, key })
}

/// A rustls server configuration (TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1) for `identity`.
pub fn server_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The names a server certificate should cover: localhost, the host name, every local address,
/// and any extra names the admin gave.
pub fn local_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    if let Ok(addrs) = if_addrs::get_if_addrs() {
        names.extend(addrs.into_iter().map(|a| a.ip().to_string()));
    }
    names.push("127.0.0.1".into());
    names.push("::1".into());
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let a = Pki::load_or_create(dir.path()).expect("create");
        let b = Pki::load_or_create(dir.path()).expect("load");
        assert_eq!(a.ca_fingerprint(), b.ca_fingerprint());
        assert_eq!(a.ca_fingerprint().len(), 32 * 3 - 1);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn issues_a_server_certificate_rustls_accepts() {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = Pki::load_or_create(dir.path()).expect("create");
        let id = pki
            .issue_server_identity(&local_names(&["palisade.example".into()]))
            .expect("issue");
        assert_eq!(id.chain.len(), 2);
        server_config(id).expect("rustls config");
    }

    #[test]
    fn damaged_ca_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        Pki::load_or_create(dir.path()).expect("create");
        std::fs::write(dir.path().join("ca.key"), "garbage").expect("write");
        let err = Pki::load_or_create(dir.path()).err().expect("error");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
