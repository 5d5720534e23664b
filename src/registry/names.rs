//! Defensive types for the untrusted strings of the distribution API: repository names, tags,
//! digests and references. Each can only hold a value of the spec's grammar, so a name can
//! never carry `..`, a leading `/` or an upper-case letter into a path or a query.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::errors::RegistryError;

/// Longest repository name accepted (the spec leaves it to the registry; 255 keeps
/// `host:port/name:tag` references usable by every client).
pub const MAX_NAME: usize = 255;

/// A repository name of the spec's grammar,
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, with at least a
/// namespace and one more component (`shared/demo`, `team-a/app`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName(String);

/// Whether `c` is one path component of the grammar: alphanumeric runs joined by `.`, `_`,
/// `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", followed by an alphanumeric (checked by the
        // last-byte rule and the next loop turn).
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl RepoName {
    /// Parse a repository name, naming what is wrong with it.
    pub fn parse(s: &str) -> Result<RepoName, RegistryError> {
        let invalid = |reason: &'static str| RegistryError::NameInvalid {
            name: s.chars().take(MAX_NAME).collect(),
            reason,
        };
        if s.len() > MAX_NAME {
            return Err(invalid("it is longer than 255 characters"));
        }
        if !s.split('/').all(valid_component) {
            return Err(invalid(
                "use path components of lower-case letters and digits, joined by '.', '_', '__' or '-' (for example shared/demo or team-a/app)",
            ));
        }
        if !s.contains('/') {
            return Err(invalid(
                "a name needs a namespace: shared/<name> or <tenant-name>/<name>",
            ));
        }
        Ok(RepoName(s.to_string()))
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component: `shared` or a tenant name.
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A content digest: `sha256:` and 64 lower-case hex digits (the only algorithm served).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parse a digest; anything but a sha256 digest in canonical form is refused.
    pub fn parse(s: &str) -> Result<Digest, RegistryError> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(RegistryError::DigestInvalid(format!(
                "{:?} is not a digest: give sha256:<64 hex digits>",
                truncate(s)
            )));
        };
        if algorithm != "sha256" {
            return Err(RegistryError::DigestInvalid(format!(
                "digest algorithm {:?} is not supported: this registry stores sha256 digests only",
                truncate(algorithm)
            )));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(RegistryError::DigestInvalid(format!(
                "{:?} is not a sha256 digest: it needs exactly 64 lower-case hex digits after sha256:",
                truncate(s)
            )));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of a finished hash.
    pub fn from_hasher(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    /// Parse a tag of the spec's grammar.
    pub fn parse(s: &str) -> Option<Tag> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        ok.then(|| Tag(s.to_string()))
    }

    /// The tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `<reference>` of a manifest route: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// Parse a reference: with a `:` it must be a digest, otherwise a tag.
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        if s.contains(':') {
            return Digest::parse(s).map(Reference::Digest);
        }
        Tag::parse(s).map(Reference::Tag).ok_or_else(|| {
            RegistryError::ManifestInvalid(format!(
                "{:?} is neither a tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}) nor a sha256 digest",
                truncate(s)
            ))
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t.as_str()),
            Reference::Digest(d) => f.write_str(d.as_str()),
        }
    }
}

/// At most 80 characters of untrusted input, for messages.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_of_the_spec_grammar() {
        for ok in [
            "shared/demo",
            "team-a/app",
            "shared/a.b/c_d/e__f/g---h",
            "shared/0",
            "tenant1/x/y/z",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_names_outside_the_grammar() {
        for bad in [
            "",
            "demo",
            "shared/",
            "/shared/demo",
            "shared//demo",
            "Shared/demo",
            "shared/../etc",
            "shared/a..b",
            "shared/a___b",
            "shared/-a",
            "shared/a-",
            "shared/a.",
            "shared/a b",
            "shared/a%2fb",
            "shared/a/",
            "shared/_a",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(RepoName::parse(&format!("shared/{}", "a".repeat(250))).is_err());
    }

    #[test]
    fn namespace_is_the_first_component() {
        let n = RepoName::parse("team-a/apps/web").expect("valid");
        assert_eq!(n.namespace(), "team-a");
    }

    #[test]
    fn digests_are_sha256_with_64_lower_case_hex_digits() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).expect("valid").hex(), "a".repeat(64));
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{}", "a".repeat(128)),
            format!("sha256:{}g", "a".repeat(63)),
            "a".repeat(64),
            "sha256:".into(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(
            Reference::parse("v1.0_rc-1"),
            Ok(Reference::Tag(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("sha256:{}", "0".repeat(64))),
            Ok(Reference::Digest(_))
        ));
        assert!(Reference::parse("-v1").is_err());
        assert!(Reference::parse(&"a".repeat(129)).is_err());
        assert!(Reference::parse("sha256:short").is_err());
        assert!(Reference::parse(".hidden").is_err());
    }
}
