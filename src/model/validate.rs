//! Validation helpers shared by every domain type: one error type that names the field.

use std::fmt;

/// A request field that failed validation: which field, and what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// JSON path of the field, such as `node_pools[1].count`.
    pub field: String,
    /// What is wrong and what to do, in words for the user.
    pub reason: String,
}

impl Invalid {
    /// A validation failure of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same failure, nested under a parent field (`layers[2]` + `type`).
    pub fn under(self, parent: &str) -> Self {
        Invalid {
            field: format!("{parent}.{}", self.field),
            reason: self.reason,
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}

/// Longest object name; names follow DNS labels so they can be used in hostnames and tags.
pub const MAX_NAME: usize = 63;

/// Check an object name: a DNS label (lower-case letters, digits, '-', 1 to 63 characters,
/// starting and ending with a letter or digit).
pub fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "{name:?} is not a valid name: use 1 to {MAX_NAME} lower-case letters, digits and '-', \
                 starting and ending with a letter or digit (for example \"team-a\")"
            ),
        ))
    }
}

/// Check free text (descriptions, display names): at most `max` characters, no control characters.
pub fn check_text(field: &str, text: &str, max: usize) -> Result<(), Invalid> {
    if text.chars().count() > max {
        return Err(Invalid::new(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Invalid::new(field, "contains control characters"));
    }
    Ok(())
}

/// Check that an id looks like one this appliance issues (a UUID), so that a typo is named as such.
pub fn check_id(field: &str, id: &str) -> Result<(), Invalid> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| Invalid::new(field, format!("{id:?} is not an id (ids are UUIDs)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for name in ["a", "team-a", "x1", &"a".repeat(63)] {
            assert!(check_name("name", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_names_that_are_not_dns_labels() {
        for name in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "../x",
            &"a".repeat(64),
            "é",
        ] {
            let err = check_name("name", name).expect_err(name);
            assert_eq!(err.field, "name");
        }
    }

    #[test]
    fn text_limits_length_and_control_characters() {
        assert!(check_text("d", "hello\nworld", 20).is_ok());
        assert!(check_text("d", "x\u{0}", 20).is_err());
        assert!(check_text("d", &"x".repeat(21), 20).is_err());
    }
}
