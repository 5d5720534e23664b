//! Errors of the broker log, each naming the operation and the file or topic involved.

use std::path::PathBuf;

/// A failed broker log operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log configuration cannot work.
    #[error("invalid broker log configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and what to set instead.
        reason: String,
    },
    /// A topic name broke the naming rules; nothing was stored.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A consumer group name broke the naming rules; nothing was stored.
    #[error("invalid consumer group name {name:?}: {reason}")]
    InvalidGroup {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A record broke a size or shape limit; nothing of the append was stored.
    #[error("invalid record {index} of the append: {reason}")]
    InvalidRecord {
        /// Position of the record in the append.
        index: usize,
        /// What is wrong and the limit.
        reason: String,
    },
    /// The append is larger than the writer queue can ever hold.
    #[error(
        "the append is {size} bytes, more than the writer queue holds ({max} bytes): split it"
    )]
    AppendTooLarge {
        /// Encoded size of the append.
        size: usize,
        /// The configured queue size.
        max: usize,
    },
    /// A producer skipped sequence numbers; nothing of the append was stored.
    #[error(
        "producer {producer} sent sequence {got} on topic {topic}, expected {expected}: send the missing sequences first"
    )]
    SequenceGap {
        /// Topic of the append.
        topic: String,
        /// Producer id.
        producer: u64,
        /// The next sequence the log expects.
        expected: u64,
        /// The sequence received.
        got: u64,
    },
    /// A retried sequence is older than the window of sequences the log remembers.
    #[error(
        "producer {producer} retried sequence {sequence} on topic {topic}, but only sequences from {oldest} on are remembered: it was stored long ago"
    )]
    SequenceTooOld {
        /// Topic of the append.
        topic: String,
        /// Producer id.
        producer: u64,
        /// The retried sequence.
        sequence: u64,
        /// Oldest sequence still remembered for this producer.
        oldest: u64,
    },
    /// The topic has never been written.
    #[error("topic {topic} does not exist")]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },
    /// A consumer group tried to commit an offset past the end of the topic.
    #[error("cannot commit offset {offset} for group {group} on topic {topic}: the topic ends at {next}")]
    CommitBeyondEnd {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Offset asked for.
        offset: u64,
        /// Next offset of the topic.
        next: u64,
    },
    /// A file-system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the log directory.
    #[error("the broker log {} is in use by another process: stop it first", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Stored data failed a check that a crash cannot explain.
    #[error("broker log file {} is corrupt at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// The writer stopped after an I/O failure; reopen the log to recover from disk.
    #[error("the broker log writer stopped after an I/O error ({reason}): reopen the log")]
    Failed {
        /// The first failure.
        reason: String,
    },
    /// The log was closed.
    #[error("the broker log is closed")]
    Closed,
}

/// Result of a broker log operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the operation and path it concerns.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}
