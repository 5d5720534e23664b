//! Configuration of `palisade serve`: flags, each with an environment variable, and defaults
//! that work on a fresh machine with nothing configured.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Settings of a running appliance.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Data directory: database, keys, internal CA. Created on first start.
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "./palisade-data")]
    pub data_dir: PathBuf,

    /// Address and port for HTTPS.
    #[arg(long, env = "PALISADE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address and port of the message broker (gRPC, mutual TLS with client certificates
    /// issued by the appliance).
    #[arg(long, env = "PALISADE_BROKER_LISTEN", default_value = "0.0.0.0:8444")]
    pub broker_listen: SocketAddr,

    /// PEM certificate chain to serve instead of one issued by the internal CA (needs --tls-key).
    #[arg(long, env = "PALISADE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "PALISADE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Also listen with plain HTTP on this address, answering only with a redirect to HTTPS.
    #[arg(long, env = "PALISADE_HTTP_REDIRECT")]
    pub http_redirect: Option<SocketAddr>,

    /// Extra DNS names or addresses for the internal server certificate (repeatable).
    #[arg(long = "san", env = "PALISADE_SAN", value_delimiter = ',')]
    pub extra_names: Vec<String>,

    /// Host name or address printed in the console URL (default: this host's name).
    #[arg(long, env = "PALISADE_PUBLIC_HOST")]
    pub public_host: Option<String>,

    /// Log format on standard error.
    #[arg(long, env = "PALISADE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "PALISADE_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
}
