//! Desired state: what a cluster's agent must make true, published to
//! `clusters.<cluster-id>.desired` (key: the cluster id) whenever the cluster changes, and for
//! every cluster whose latest state is missing at start, so that a change whose publication a crash cut off still reaches the
//! agent. Agents apply the message with the highest `version` and ignore older ones, so
//! publishing the same state twice is harmless.

use serde::Serialize;

use crate::broker::client::Client;
use crate::broker::log::{NewRecord, ReadLimits, TopicName};
use crate::broker::Broker;
use crate::model::{Cluster, ProfileRevision};
use crate::store::Store;

/// The message on `clusters.<id>.desired`.
#[derive(Debug, Serialize)]
pub struct DesiredState<'a> {
    /// Always `cluster-desired-state`.
    pub kind: &'static str,
    pub cluster_id: &'a str,
    /// The cluster's version: newer wins.
    pub version: i64,
    /// True once the cluster is deleted: the agent tears down what it applied.
    pub deleted: bool,
    pub cluster: Option<&'a Cluster>,
    /// The profile revision the cluster pins: its ordered layers of packs and values.
    pub profile: Option<&'a ProfileRevision>,
}

/// The topic of a cluster's desired state.
pub fn topic(cluster_id: &str) -> String {
    format!("clusters.{cluster_id}.desired")
}

fn record(state: &DesiredState<'_>) -> Result<NewRecord, serde_json::Error> {
    Ok(NewRecord::new(serde_json::to_vec(state)?)
        .with_key(state.cluster_id.as_bytes().to_vec())
        .with_header("content-type", "application/json"))
}

/// Publishes the desired state of `cluster`. Errors are logged, not returned: the cluster is
/// saved, and the next start publishes it again.
pub async fn publish(bus: &Client, store: &Store, cluster: &Cluster) {
    let profile = match store
        .profile_revision(&cluster.profile_id, cluster.profile_revision)
        .await
    {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(cluster = %cluster.id, error = %e, "the cluster's profile revision is unreadable; publishing the spec without it");
            None
        }
    };
    let state = DesiredState {
        kind: "cluster-desired-state",
        cluster_id: &cluster.id,
        version: cluster.version,
        // Deletion is requested: the agent tears down what it applied while the
        // orchestrator removes the machines.
        deleted: cluster.status == crate::model::ClusterStatus::Deleting,
        cluster: Some(cluster),
        profile: profile.as_ref(),
    };
    send(bus, &state).await;
}

/// Publishes that a cluster was deleted.
pub async fn publish_deleted(bus: &Client, cluster_id: &str, version: i64) {
    let state = DesiredState {
        kind: "cluster-desired-state",
        cluster_id,
        version: version + 1,
        deleted: true,
        cluster: None,
        profile: None,
    };
    send(bus, &state).await;
}

async fn send(bus: &Client, state: &DesiredState<'_>) {
    let result = match record(state) {
        Ok(r) => bus.publish(&topic(state.cluster_id), vec![r]).await,
        Err(e) => {
            tracing::error!(cluster = %state.cluster_id, error = %e, "cannot encode desired state");
            return;
        }
    };
    if let Err(e) = result {
        tracing::error!(cluster = %state.cluster_id, error = %e, "cannot publish desired state; it is published again at the next start");
    }
}

/// The version of the last desired state published for `cluster_id`, if any.
async fn last_published(broker: &Broker, cluster_id: &str) -> Option<i64> {
    let topic = TopicName::new(topic(cluster_id)).ok()?;
    let stats = broker.log().topic_stats(&topic)?;
    let last = stats.next_offset.checked_sub(1)?;
    let limits = ReadLimits {
        max_records: 1,
        max_bytes: 1,
    };
    let record = broker.log().read(&topic, last, limits).await.ok()?.pop()?;
    let value: serde_json::Value = serde_json::from_slice(&record.payload).ok()?;
    value["version"].as_i64()
}

/// Publishes the desired state of every cluster whose latest state is not yet on its topic
/// (at start); returns how many were published.
pub async fn publish_missing(
    bus: &Client,
    broker: &Broker,
    store: &Store,
) -> Result<usize, crate::store::Error> {
    let mut published = 0;
    for c in store.all_clusters().await? {
        if last_published(broker, &c.id).await != Some(c.version) {
            publish(bus, store, &c).await;
            published += 1;
        }
    }
    Ok(published)
}
