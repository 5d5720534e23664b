//! Subscription patterns: a topic name whose levels may be wildcards.
//!
//! `*` stands for exactly one level; `>` (only as the last level) for one or more levels, as
//! in NATS. `clusters.*.reports.>` matches `clusters.a.reports.health` but not
//! `clusters.a.reports`. A pattern without wildcards matches only the topic of that name.

use std::fmt;

use super::log::{Error as LogError, TopicName};

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Level {
    Literal(String),
    /// `*`
    One,
    /// `>`
    Rest,
}

/// A validated subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    levels: Vec<Level>,
}

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid subscription pattern {pattern:?}: {reason}")]
pub struct InvalidPattern {
    /// The refused pattern.
    pub pattern: String,
    /// The rule it broke and what to write instead.
    pub reason: String,
}

impl Pattern {
    /// Parses `text`: levels of `[A-Za-z0-9_-]`, `*`, or a final `>`, joined by dots.
    pub fn parse(text: &str) -> Result<Pattern, InvalidPattern> {
        let bad = |reason: String| InvalidPattern {
            pattern: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.split('.').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "*" => levels.push(Level::One),
                ">" if i + 1 == parts.len() => levels.push(Level::Rest),
                ">" => return Err(bad("'>' may only be the last level".into())),
                literal => levels.push(Level::Literal(literal.to_string())),
            }
        }
        // The literal parts follow the topic naming rules: check them by checking the name
        // with every wildcard replaced by a valid level.
        let probe: Vec<&str> = levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::One | Level::Rest => "x",
            })
            .collect();
        TopicName::new(probe.join(".")).map_err(|e| match e {
            LogError::InvalidTopic { reason, .. } => bad(reason.to_string()),
            other => bad(other.to_string()),
        })?;
        Ok(Pattern {
            text: text.to_string(),
            levels,
        })
    }

    /// A pattern matching exactly `topic`.
    pub fn exact(topic: &TopicName) -> Pattern {
        Pattern {
            text: topic.as_str().to_string(),
            levels: topic
                .as_str()
                .split('.')
                .map(|l| Level::Literal(l.to_string()))
                .collect(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The topic this pattern names if it has no wildcard.
    pub fn literal(&self) -> Option<TopicName> {
        if self.levels.iter().all(|l| matches!(l, Level::Literal(_))) {
            TopicName::new(self.text.clone()).ok()
        } else {
            None
        }
    }

    /// True if `topic` matches.
    pub fn matches(&self, topic: &TopicName) -> bool {
        let mut names = topic.as_str().split('.');
        for level in &self.levels {
            match level {
                Level::Rest => return names.next().is_some(),
                Level::One => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(want) => {
                    if names.next() != Some(want.as_str()) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// True if every topic this pattern can match is also matched by `outer`. Used by access
    /// control: a subscription is allowed only if it lies inside a granted pattern.
    pub fn within(&self, outer: &Pattern) -> bool {
        let mut mine = self.levels.iter();
        for level in &outer.levels {
            match level {
                // Whatever remains of ours (at least one level) fits under '>'.
                Level::Rest => return mine.next().is_some(),
                Level::One => match mine.next() {
                    Some(Level::Literal(_) | Level::One) => {}
                    Some(Level::Rest) | None => return false,
                },
                Level::Literal(want) => match mine.next() {
                    Some(Level::Literal(have)) if have == want => {}
                    _ => return false,
                },
            }
        }
        mine.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> TopicName {
        TopicName::new(s).expect("valid topic in test")
    }
    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).expect("valid pattern in test")
    }

    #[test]
    fn wildcards_match_levels() {
        let p = pat("clusters.*.reports.>");
        assert!(p.matches(&topic("clusters.a.reports.health")));
        assert!(p.matches(&topic("clusters.a.reports.health.nodes")));
        assert!(!p.matches(&topic("clusters.a.reports")));
        assert!(!p.matches(&topic("clusters.a.b.reports.x")));
        assert!(pat("a.b").matches(&topic("a.b")));
        assert!(!pat("a.b").matches(&topic("a.b.c")));
        assert!(pat("a.*").matches(&topic("a.b")));
        assert!(!pat("a.*").matches(&topic("a.b.c")));
        assert!(pat(">").matches(&topic("anything.at.all")));
    }

    #[test]
    fn refuses_malformed_patterns() {
        for bad in ["", "a..b", "a.>.b", "a/b", "a.b*", "../x", ".a"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn containment_of_patterns() {
        let grant = pat("clusters.c1.reports.>");
        assert!(pat("clusters.c1.reports.health").within(&grant));
        assert!(pat("clusters.c1.reports.*").within(&grant));
        assert!(pat("clusters.c1.reports.>").within(&grant));
        assert!(!pat("clusters.c1.reports").within(&grant));
        assert!(!pat("clusters.*.reports.health").within(&grant));
        assert!(!pat("clusters.>").within(&grant));
        assert!(!pat("clusters.c2.reports.x").within(&grant));
        let exact = pat("clusters.c1.desired");
        assert!(pat("clusters.c1.desired").within(&exact));
        assert!(!pat("clusters.c1.*").within(&exact));
        assert!(pat("a.b").within(&pat("a.*")));
        assert!(!pat("a.>").within(&pat("a.*")));
    }
}
