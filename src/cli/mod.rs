//! Command-line interface: one file per subcommand; arguments, progress and output only.
//!
//! Exit codes scripts can rely on: 0 success; 1 the operation failed (the message says why);
//! 2 bad usage (clap's own); 3 a check found problems (`admin check`, `admin audit-verify`,
//! `bundle verify`).

mod admin;
mod backup;
mod bundle;
mod pack;
mod serve;

use clap::{Parser, Subcommand};

/// Exit code for a check that ran and found problems.
pub const EXIT_PROBLEMS: i32 = 3;

/// Palisade: a Kubernetes management plane for air-gapped data centres, in one executable.
#[derive(Debug, Parser)]
#[command(name = "palisade", version = crate::VERSION, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance: web console, REST API, state, on HTTPS.
    Serve(crate::config::ServeConfig),
    /// Offline tasks on a data directory: users, backup, restore, checks.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Pack authoring, offline: check, render and package a pack directory.
    #[command(subcommand)]
    Pack(pack::PackCommand),
    /// Offline bundles: keygen, build, verify, inspect, import, trusted keys.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
}

/// Run the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // Database calls run on the blocking pool; a few more threads than SQLite connections is
    // enough, and a bounded pool avoids dozens of threads waking for each other under load.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()?;
    match cli.command {
        Command::Serve(config) => runtime.block_on(serve::run(config)),
        Command::Admin(cmd) => runtime.block_on(admin::run(cmd)),
        Command::Pack(cmd) => pack::run(cmd),
        Command::Bundle(cmd) => runtime.block_on(bundle::run(cmd)),
    }
}
