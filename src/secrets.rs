//! Secret material: the key that seals stored credentials, password hashing (argon2id),
//! and random bearer secrets (session ids, API tokens, setup tokens) stored only as digests.

use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Failures handling secret material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} sealing key {}", path.display())]
    KeyFile {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sealing key {} is not 32 bytes: restore it from a backup of the data directory", path.display())]
    KeyLength { path: PathBuf },
    #[error("a sealed value is corrupt or was sealed with another key")]
    Unseal,
    #[error("cannot hash password: {0}")]
    Hash(String),
}

/// The 32-byte key that encrypts secrets at rest (XChaCha20-Poly1305).
#[derive(Clone)]
pub struct SealingKey {
    cipher: XChaCha20Poly1305,
}

/// Write `bytes` to `path` with owner-only permissions, atomically (temp file + rename).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl SealingKey {
    /// Load the key from `path`, creating a new random one (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<SealingKey, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.try_into().map_err(|_| Error::KeyLength {
                    path: path.to_path_buf(),
                })?;
                Ok(SealingKey::from_bytes(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private_file(path, &key).map_err(|source| Error::KeyFile {
                    op: "create",
                    path: path.to_path_buf(),
                    source,
                })?;
                Ok(SealingKey::from_bytes(&key))
            }
            Err(source) => Err(Error::KeyFile {
                op: "read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// A key from raw bytes.
    pub fn from_bytes(key: &[u8; 32]) -> SealingKey {
        SealingKey {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Encrypt and authenticate `plain`; the output is nonce (24 bytes) followed by ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a valid key and a 24-byte nonce cannot fail for in-memory input.
        match self.cipher.encrypt(XNonce::from_slice(&nonce), plain) {
            Ok(ct) => out.extend(ct),
            Err(_) => out.clear(),
        }
        out
    }

    /// Decrypt what `seal` produced.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        if sealed.len() < 24 {
            return Err(Error::Unseal);
        }
        let (nonce, ct) = sealed.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| Error::Unseal)
    }
}

/// Hash a password with argon2id and a random salt (PHC string format).
pub fn hash_password(password: &str) -> Result<String, Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

/// Check a password against a stored argon2 hash; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a fixed dummy password, verified against when a login names an unknown user so
/// that the answer takes as long as for a known one (no user enumeration by timing).
pub fn dummy_verify(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("dummy-password-for-timing").unwrap_or_default());
    let _ = verify_password(password, hash);
}

/// A new random bearer secret with a readable prefix, such as `pst_3q2...`.
pub fn new_bearer_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}_{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
    )
}

/// The digest under which a bearer secret is stored (secrets are 256-bit random, so a fast
/// hash suffices: no dictionary to attack).
pub fn secret_digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time comparison of two byte strings (for CSRF tokens).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_detects_tampering() {
        let key = SealingKey::from_bytes(&[7u8; 32]);
        let sealed = key.seal(b"secret");
        assert_eq!(key.open(&sealed).expect("open"), b"secret");
        let mut bad = sealed.clone();
        if let Some(last) = bad.last_mut() {
            *last ^= 1;
        }
        assert!(key.open(&bad).is_err());
        assert!(SealingKey::from_bytes(&[8u8; 32]).open(&sealed).is_err());
    }

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let h = hash_password("correct horse battery").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("k");
        let a = SealingKey::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SealingKey::load_or_create(&path).expect("load");
        assert_eq!(b.open(&a.seal(b"x")).expect("open"), b"x");
    }
}
