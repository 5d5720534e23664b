//! The message broker: durable topics and, later, the gRPC publish/subscribe service on top.
//!
//! [`log`] is the storage engine: append-only segment files per topic, group-commit durability,
//! idempotent publish, recovery after a crash, reads by offset or time, retention and consumer
//! group offsets. The gRPC layer, the in-process client and access control will sit above it and
//! are the only intended callers.

pub mod log;
