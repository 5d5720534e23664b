//! `palisade serve`: start the appliance, print where to reach it, run until SIGINT/SIGTERM.

use std::io::Write;

use crate::config::{LogFormat, ServeConfig};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Resolve on SIGINT or SIGTERM. The handlers are installed now, before the banner is
/// printed, so a signal sent as soon as the appliance says it is ready is never lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

pub(super) async fn run(config: ServeConfig) -> anyhow::Result<i32> {
    init_logging(config.log_format);
    let data_dir = config.data_dir.clone();
    let shutdown = shutdown_signal()?;
    let appliance = crate::app::start(config).await?;
    let r = &appliance.ready;
    let mut out = std::io::stdout().lock();
    writeln!(out, "Palisade {} is ready.", crate::VERSION)?;
    writeln!(out, "  Console:        {}", r.console_url)?;
    writeln!(out, "  Listening on:   {}", r.listen)?;
    writeln!(out, "  Broker (gRPC):  {}", r.broker_listen)?;
    writeln!(out, "  CA fingerprint: SHA256 {}", r.ca_fingerprint)?;
    if let Some(token) = &r.setup_token {
        writeln!(out, "  Setup token:    {token}")?;
        writeln!(
            out,
            "  First start: open {}setup?token={token} to create the first system admin (one-time).",
            r.console_url
        )?;
    }
    writeln!(out, "  Data directory: {}", data_dir.display())?;
    out.flush()?;
    drop(out);
    tracing::info!(listen = %r.listen, "serving");
    appliance.serve_until(shutdown).await?;
    Ok(0)
}
