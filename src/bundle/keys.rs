//! Signing keys and signatures: ed25519 (RFC 8032) over the exact bytes of `bundle.json`.
//!
//! Private keys are PKCS#8 PEM files and public keys SPKI PEM files, the formats OpenSSL reads
//! and writes, so a third-party producer can sign with `openssl pkeyutl -sign -rawin`. A key's
//! id is the hex sha256 of its raw 32-byte public key.

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::{io, Error, Result};
use super::format::{is_sha256_hex, KeySpec};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `bundle.sig`: one or more signatures over the bytes of `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub signatures: Vec<SignatureEntry>,
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// sha256 of the raw public key, hex.
    pub key_id: String,
    /// The raw 32-byte ed25519 public key, base64.
    pub public_key: String,
    /// The 64-byte ed25519 signature over the exact bytes of `bundle.json`, base64.
    pub signature: String,
}

/// The id of a public key: hex sha256 of its 32 raw bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The raw public key, base64, as `bundle.sig` and the trusted-key list carry it.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// A new random signing key.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Write `key` as a PKCS#8 PEM file readable by its owner only; refuses to overwrite.
pub fn write_private(path: &Path, key: &SigningKey) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| Error::Key {
            path: path.to_path_buf(),
            reason: format!("cannot encode the key: {e}"),
        })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Key {
            path: path.to_path_buf(),
            reason: if e.kind() == std::io::ErrorKind::AlreadyExists {
                "it exists already: give another -o (keys are never overwritten)".into()
            } else {
                format!("cannot create it: {e}")
            },
        })?;
    f.write_all(pem.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io("write key file", path))
}

/// Write the SPKI PEM of `key` to `path` (public: mode 0644); refuses to overwrite.
pub fn write_public(path: &Path, key: &VerifyingKey) -> Result<()> {
    use std::io::Write;
    let pem = public_pem(key).map_err(|reason| Error::Key {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::Key {
            path: path.to_path_buf(),
            reason: format!("cannot create it: {e}"),
        })?;
    f.write_all(pem.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io("write key file", path))
}

/// The SPKI PEM text of a public key.
pub fn public_pem(key: &VerifyingKey) -> std::result::Result<String, String> {
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| format!("cannot encode the public key: {e}"))
}

/// Read a PKCS#8 PEM ed25519 private key.
pub fn read_private(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| Error::Key {
        path: path.to_path_buf(),
        reason: format!(
            "not an ed25519 private key in PKCS#8 PEM ({e}): create one with palisade bundle keygen"
        ),
    })
}

/// Read a public key: an SPKI PEM file (`-----BEGIN PUBLIC KEY-----`), or the base64 of the
/// raw 32 bytes on one line.
pub fn read_public(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    parse_public(&text).map_err(|reason| Error::Key {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parse a public key given as SPKI PEM or raw base64.
pub fn parse_public(text: &str) -> std::result::Result<VerifyingKey, String> {
    let t = text.trim();
    if t.starts_with("-----BEGIN PUBLIC KEY-----") {
        return VerifyingKey::from_public_key_pem(t)
            .map_err(|e| format!("not an ed25519 public key in PEM: {e}"));
    }
    if t.contains("PRIVATE KEY") {
        return Err(
            "this is a private key: give the public key (the .pub file keygen wrote)".into(),
        );
    }
    raw_public(t)
}

fn raw_public(b64: &str) -> std::result::Result<VerifyingKey, String> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| format!("the public key is neither PEM nor base64: {e}"))?;
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "an ed25519 public key has 32 bytes, this one {}",
            bytes.len()
        )
    })?;
    VerifyingKey::from_bytes(&arr).map_err(|e| format!("not a valid ed25519 public key: {e}"))
}

/// The key of a rotation statement, checked against its id.
pub fn key_spec_to_verifying(k: &KeySpec) -> std::result::Result<VerifyingKey, String> {
    let key = raw_public(&k.public_key)?;
    if key_id(&key) != k.key_id {
        return Err(format!(
            "key id {} does not match its public key (whose id is {})",
            k.key_id,
            key_id(&key)
        ));
    }
    Ok(key)
}

/// Sign `manifest` (the exact bytes of `bundle.json`) with each key.
pub fn sign(manifest: &[u8], keys: &[&SigningKey]) -> SignatureFile {
    SignatureFile {
        signatures: keys
            .iter()
            .map(|k| SignatureEntry {
                key_id: key_id(&k.verifying_key()),
                public_key: public_key_base64(&k.verifying_key()),
                signature: B64.encode(k.sign(manifest).to_bytes()),
            })
            .collect(),
    }
}

/// Check every signature of `sigs` over `manifest`; returns the ids of the keys that signed.
/// Any signature that does not verify refuses the bundle (a forged or altered signature is
/// never ignored just because another one is good); no signature at all is [`Error::Unsigned`].
pub fn verify(sigs_bytes: &[u8], manifest: &[u8]) -> Result<Vec<String>> {
    let sigs: SignatureFile =
        serde_json::from_slice(sigs_bytes).map_err(|e| Error::SignatureInvalid {
            reason: format!("bundle.sig is not a signature file: {e}"),
        })?;
    if sigs.signatures.is_empty() {
        return Err(Error::Unsigned);
    }
    if sigs.signatures.len() > 16 {
        return Err(Error::SignatureInvalid {
            reason: format!(
                "{} signatures is more than the limit of 16",
                sigs.signatures.len()
            ),
        });
    }
    let mut ids = Vec::new();
    for s in &sigs.signatures {
        if !is_sha256_hex(&s.key_id) {
            return Err(Error::SignatureInvalid {
                reason: format!("{:?} is not a key id", s.key_id),
            });
        }
        let key = raw_public(&s.public_key).map_err(|reason| Error::SignatureInvalid {
            reason: format!("key {}: {reason}", s.key_id),
        })?;
        if key_id(&key) != s.key_id {
            return Err(Error::SignatureInvalid {
                reason: format!(
                    "key id {} does not match the public key given with it",
                    s.key_id
                ),
            });
        }
        let sig = B64
            .decode(&s.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| Error::BadSignature {
                key_id: s.key_id.clone(),
            })?;
        key.verify_strict(manifest, &sig)
            .map_err(|_| Error::BadSignature {
                key_id: s.key_id.clone(),
            })?;
        if !ids.contains(&s.key_id) {
            ids.push(s.key_id.clone());
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let k = generate();
        let sigs = serde_json::to_vec(&sign(b"manifest", &[&k])).expect("json");
        assert_eq!(
            verify(&sigs, b"manifest").expect("valid"),
            vec![key_id(&k.verifying_key())]
        );
        assert!(matches!(
            verify(&sigs, b"manifesT"),
            Err(Error::BadSignature { .. })
        ));
        assert!(matches!(
            verify(br#"{"signatures":[]}"#, b"manifest"),
            Err(Error::Unsigned)
        ));
    }

    #[test]
    fn keys_round_trip_through_pem_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = generate();
        let p = dir.path().join("k.pem");
        write_private(&p, &k).expect("write");
        assert!(write_private(&p, &k).is_err(), "never overwritten");
        assert_eq!(read_private(&p).expect("read").to_bytes(), k.to_bytes());
        let pubp = dir.path().join("k.pub");
        write_public(&pubp, &k.verifying_key()).expect("write pub");
        assert_eq!(read_public(&pubp).expect("read pub"), k.verifying_key());
        assert!(
            read_public(&p).is_err(),
            "a private key is not a public key"
        );
    }
}
