//! Reconcilers that turn saved specs into work: publishing each cluster's desired state to
//! its agent ([`desired`]), provisioning machines through the providers ([`reconcile`]) and
//! checking cloud accounts ([`accounts`]).
//!
//! One supervisor task runs them. It is woken through the broker: by every cluster's
//! desired-state message (`clusters.<id>.desired`, published on each spec change) and by
//! account-check requests (`cloud-accounts.<id>.check`), and it resyncs every cluster
//! periodically, so a missed message only delays work. At most one pass runs per cluster at a
//! time; failures are retried with exponential backoff.

pub mod accounts;
pub mod bootstrap;
pub mod desired;
pub mod ippool;
pub mod media;
pub mod reconcile;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::broker::client::Client;
use crate::broker::pattern::Pattern;
use crate::broker::SubscribeOptions;
use crate::store::Store;
use bootstrap::ApplianceEndpoints;
use reconcile::{Failure, Outcome};

/// Longest wait between retries of a failing cluster.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Account checks running at once.
const PARALLEL_CHECKS: usize = 4;

/// What the reconcilers share.
pub struct Context {
    pub store: Store,
    pub bus: Client,
    /// How machines reach the appliance (bootstrap data).
    pub endpoints: ApplianceEndpoints,
    /// The data directory (bundle artifacts are read from it).
    pub data_dir: PathBuf,
    /// What providers are built with (boot media host).
    pub provider_context: crate::providers::Context,
    /// Period of the full resync.
    pub resync: Duration,
    /// How long a machine may stay provisioning before it is deleted and built again.
    pub build_timeout: time::Duration,
}

/// The provider of a stored cloud account, with its decrypted credentials (`None` when the
/// account has none).
pub async fn provider_for(
    ctx: &Context,
    account: &crate::model::CloudAccount,
) -> Result<Option<Box<dyn crate::providers::Provider>>, crate::providers::ProviderError> {
    let credentials = ctx
        .store
        .cloud_account_credentials(&account.id)
        .await
        .map_err(|e| crate::providers::ProviderError::transient(format!("state store: {e}")))?;
    let Some(credentials) = credentials else {
        return Ok(None);
    };
    let spec = crate::providers::Account {
        kind: account.kind,
        endpoint: account.endpoint.clone(),
        ca_bundle: account.ca_bundle.clone(),
        credentials,
        placement: account.placement.clone(),
    };
    crate::providers::connect(&spec, &ctx.provider_context).map(Some)
}

/// The topic that asks for a cloud account to be checked.
pub fn account_check_topic(account_id: &str) -> String {
    format!("cloud-accounts.{account_id}.check")
}

/// Ask the orchestrator to check an account now (the request is already recorded in the store;
/// a lost message only delays it to the next start).
pub async fn request_account_check(bus: &Client, account_id: &str) {
    let record = crate::broker::log::NewRecord::new(account_id.as_bytes().to_vec())
        .with_key(account_id.as_bytes().to_vec());
    if let Err(e) = bus
        .publish(&account_check_topic(account_id), vec![record])
        .await
    {
        tracing::warn!(account = account_id, error = %e, "cannot publish the account check request; it runs at the next start");
    }
}

/// Start the supervisor; it runs until the runtime stops.
pub fn spawn(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { Supervisor::new(ctx).run().await })
}

struct Supervisor {
    ctx: Arc<Context>,
    /// When each cluster is due for a pass.
    due: HashMap<String, Instant>,
    /// Consecutive transient failures per cluster (backoff).
    failures: HashMap<String, u32>,
    running: HashSet<String>,
    /// Woken while running: run again right after.
    again: HashSet<String>,
    checks_running: HashSet<String>,
    done_tx: mpsc::UnboundedSender<(String, Result<Outcome, Failure>)>,
    done_rx: mpsc::UnboundedReceiver<(String, Result<Outcome, Failure>)>,
    check_tx: mpsc::UnboundedSender<String>,
    check_rx: mpsc::UnboundedReceiver<String>,
}

impl Supervisor {
    fn new(ctx: Arc<Context>) -> Supervisor {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (check_tx, check_rx) = mpsc::unbounded_channel();
        Supervisor {
            ctx,
            due: HashMap::new(),
            failures: HashMap::new(),
            running: HashSet::new(),
            again: HashSet::new(),
            checks_running: HashSet::new(),
            done_tx,
            done_rx,
            check_tx,
            check_rx,
        }
    }

    async fn run(mut self) {
        let mut clusters = self.subscribe("clusters.*.desired").await;
        let mut checks = self.subscribe("cloud-accounts.*.check").await;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut next_scan = Instant::now();
        loop {
            tokio::select! {
                d = next_delivery(&mut clusters) => {
                    if let Some(id) = d {
                        self.wake(id);
                        self.start_due();
                    }
                }
                d = next_delivery(&mut checks) => {
                    if let Some(id) = d {
                        self.start_check(id);
                    }
                }
                Some((id, result)) = self.done_rx.recv() => {
                    self.finished(id, result);
                    self.start_due();
                }
                Some(id) = self.check_rx.recv() => {
                    self.checks_running.remove(&id);
                }
                _ = tick.tick() => {
                    if Instant::now() >= next_scan {
                        next_scan = Instant::now() + self.ctx.resync;
                        self.scan().await;
                    }
                    self.start_due();
                }
            }
        }
    }

    async fn subscribe(&self, pattern: &str) -> Option<crate::broker::client::ClientSubscription> {
        let pattern = match Pattern::parse(pattern) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "orchestrator: bad pattern");
                return None;
            }
        };
        match self.ctx.bus.subscribe(SubscribeOptions::new(pattern)).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "orchestrator: cannot subscribe; relying on the periodic resync");
                None
            }
        }
    }

    /// Every cluster becomes due (those waiting on a backoff keep their time), and every
    /// pending account check starts.
    async fn scan(&mut self) {
        match self.ctx.store.all_clusters().await {
            Ok(all) => {
                let now = Instant::now();
                for c in all {
                    self.due.entry(c.id).or_insert(now);
                }
            }
            Err(e) => tracing::error!(error = %e, "orchestrator: cannot list clusters"),
        }
        match self.ctx.store.pending_account_checks().await {
            Ok(ids) => ids.into_iter().for_each(|id| self.start_check(id)),
            Err(e) => tracing::error!(error = %e, "orchestrator: cannot list account checks"),
        }
    }

    fn wake(&mut self, id: String) {
        if self.running.contains(&id) {
            self.again.insert(id);
        } else {
            self.failures.remove(&id);
            self.due.insert(id, Instant::now());
        }
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let ready: Vec<String> = self
            .due
            .iter()
            .filter(|(id, at)| **at <= now && !self.running.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            self.due.remove(&id);
            self.running.insert(id.clone());
            let ctx = self.ctx.clone();
            let tx = self.done_tx.clone();
            tokio::spawn(async move {
                let result = reconcile::reconcile(&ctx, &id).await;
                let _ = tx.send((id, result));
            });
        }
    }

    fn finished(&mut self, id: String, result: Result<Outcome, Failure>) {
        self.running.remove(&id);
        let now = Instant::now();
        match result {
            Ok(Outcome::Requeue(after)) => {
                self.failures.remove(&id);
                self.due.insert(id.clone(), now + after);
            }
            Ok(Outcome::Idle) => {
                self.failures.remove(&id);
            }
            Err(e) => {
                let n = self.failures.entry(id.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let backoff = Duration::from_secs(1u64 << (*n).min(9)).min(MAX_BACKOFF);
                tracing::warn!(cluster = %id, error = %e, retry_in_s = backoff.as_secs(), "cluster reconcile failed; retrying");
                self.due.insert(id.clone(), now + backoff);
            }
        }
        if self.again.remove(&id) {
            self.due.insert(id, now);
        }
    }

    fn start_check(&mut self, id: String) {
        if self.checks_running.len() >= PARALLEL_CHECKS || !self.checks_running.insert(id.clone()) {
            // Still pending in the store: the next scan starts it.
            return;
        }
        let ctx = self.ctx.clone();
        let tx = self.check_tx.clone();
        tokio::spawn(async move {
            accounts::check(&ctx, &id).await;
            let _ = tx.send(id);
        });
    }
}

/// The next delivery's key (a cluster or account id), acknowledged; pends forever when the
/// subscription is absent or closed, so `select!` keeps serving the other branches.
async fn next_delivery(
    sub: &mut Option<crate::broker::client::ClientSubscription>,
) -> Option<String> {
    let Some(s) = sub.as_mut() else {
        return std::future::pending().await;
    };
    match s.next().await {
        Some(Ok(d)) => {
            s.ack(&d);
            // Desired-state messages are keyed by cluster id; check requests by account id.
            let id = d
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(str::to_string);
            id.or_else(|| d.topic.as_str().split('.').nth(1).map(str::to_string))
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "orchestrator: subscription error");
            None
        }
        None => {
            *sub = None;
            None
        }
    }
}
