//! Validated names of topics and consumer groups.
//!
//! A name is also a file name under the log's root, so these newtypes are the rule that keeps
//! untrusted input from reaching outside it: levels of `[A-Za-z0-9_-]` joined by single dots,
//! which can hold no `/`, no `..`, no leading dot and no wildcard.

use std::fmt;

use super::error::{Error, Result};

/// Longest topic or group name in bytes; leaves room for file suffixes within NAME_MAX (255).
pub const MAX_NAME_BYTES: usize = 200;
/// Longest single level of a name.
pub const MAX_LEVEL_BYTES: usize = 64;
/// Most levels a name may have.
pub const MAX_LEVELS: usize = 16;

/// Checks a dotted name; returns the broken rule.
fn check(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("it is longer than 200 bytes");
    }
    let mut levels = 0;
    for level in name.split('.') {
        levels += 1;
        if level.is_empty() {
            return Err("a level between dots is empty");
        }
        if level.len() > MAX_LEVEL_BYTES {
            return Err("a level is longer than 64 bytes");
        }
        if !level
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("only letters, digits, '_' and '-' may appear between dots (wildcards '*' and '>' are for subscriptions)");
        }
    }
    if levels > MAX_LEVELS {
        return Err("it has more than 16 levels");
    }
    Ok(())
}

/// A topic name such as `clusters.7f3a.desired`: dot-separated levels of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name` as a topic name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match check(&name) {
            Ok(()) => Ok(Self(name)),
            Err(reason) => Err(Error::InvalidTopic { name, reason }),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TopicName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// A consumer group name; same rules as a topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    /// Validates `name` as a consumer group name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match check(&name) {
            Ok(()) => Ok(Self(name)),
            Err(reason) => Err(Error::InvalidGroup { name, reason }),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hierarchical_names() {
        let deepest = "x.".repeat(MAX_LEVELS - 1) + "y";
        for ok in ["a", "clusters.7f3a-9b.desired", "A_b-c.d", &deepest] {
            assert!(TopicName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_names_that_could_escape_the_root_or_look_like_wildcards() {
        let long_level = "a".repeat(65);
        let too_many = "a.".repeat(16) + "a";
        let too_long = format!("{0}.{0}.{0}.{0}", "b".repeat(60));
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "a/b",
            "../etc",
            "a.*",
            "a.>",
            "a b",
            "é",
            &long_level,
            &too_many,
            &too_long,
        ] {
            let err = TopicName::new(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid topic name"), "{err}");
            assert!(GroupName::new(bad).is_err(), "{bad}");
        }
    }
}
