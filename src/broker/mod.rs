//! The message broker: durable publish/subscribe with consumer groups, flow control and
//! mutual TLS, described in `docs/broker.md`.
//!
//! - [`log`]: the storage engine (segments, group commit, idempotent producers, retention).
//! - [`hub`]: the core every caller goes through: access control, subscriptions, consumer
//!   groups; [`dispatch`] delivers one topic to one group.
//! - [`service`]: the gRPC service (`proto/broker.proto`) and its mTLS listener.
//! - [`client`]: the client the agent, the gateway and the appliance itself use, in process
//!   or over gRPC with reconnect and fail-over.
//! - [`access`] and [`pattern`]: who may use which topics, and wildcard patterns.

pub mod access;
pub mod client;
mod dispatch;
pub mod hub;
pub mod log;
pub mod pattern;
pub mod peers;
pub mod service;

pub use hub::{
    Broker, BrokerConfig, GroupStats, Start, SubscribeOptions, Subscription, TopicStats,
};

/// The generated gRPC types of `proto/broker.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("palisade.broker.v1");
}

use std::collections::BTreeMap;

/// One message handed to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: log::TopicName,
    pub offset: u64,
    /// Identifies this delivery; an ack naming an older delivery of the same message is ignored.
    pub delivery_id: u64,
    pub timestamp_ms: u64,
    pub key: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
    pub payload: Vec<u8>,
    /// 1 on the first delivery.
    pub attempt: u32,
}
