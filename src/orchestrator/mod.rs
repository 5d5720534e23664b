//! Reconcilers that turn saved specs into work. So far: publishing each cluster's desired state
//! to its agent's topic. Provisioning (machines through the providers) comes with them.
//!
//! Called by `api` after a cluster changes and by `app` at start; talks to agents only through
//! the broker, with the in-process client.

pub mod desired;
