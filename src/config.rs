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

    /// Broker retention, repeatable: `PREFIX=AGE:SIZE`, where PREFIX is a topic prefix matched
    /// at level boundaries (`*` for every other topic), AGE like `30m`, `12h`, `7d` and SIZE
    /// like `512MiB`, `2GiB`, either `none`. Default `*=7d:1GiB`.
    #[arg(long = "broker-retention", env = "PALISADE_BROKER_RETENTION", value_delimiter = ',', value_parser = parse_retention)]
    pub broker_retention: Vec<RetentionRule>,

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

    /// Seconds between two full passes of the orchestrator over every cluster (a machine
    /// deleted behind the appliance's back is noticed within this time).
    #[arg(long, env = "PALISADE_RESYNC_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub resync_interval: u64,

    /// Seconds a machine may stay provisioning on the infrastructure before the orchestrator
    /// deletes it and builds it again (a build the infrastructure lost); two rebuilds at most.
    #[arg(long, env = "PALISADE_MACHINE_BUILD_TIMEOUT", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub machine_build_timeout: u64,

    /// Log format on standard error.
    #[arg(long, env = "PALISADE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "PALISADE_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a bundle upload session (`/v1/bundle-uploads`) may go without a chunk before it
    /// expires and its partial file is removed: `30m`, `24h`, `7d`.
    #[arg(long, env = "PALISADE_BUNDLE_UPLOAD_EXPIRY", default_value = "24h", value_parser = parse_expiry)]
    pub bundle_upload_expiry: std::time::Duration,
}

/// Parses a positive age such as `90s`, `30m`, `24h` or `7d`.
pub fn parse_expiry(s: &str) -> Result<std::time::Duration, String> {
    match parse_age(s)? {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{s:?}: give a time longer than zero, such as 30m, 24h or 7d"
        )),
    }
}

/// One `--broker-retention` rule: a topic prefix (`*`: the default) and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub prefix: String,
    pub retention: crate::broker::log::Retention,
}

fn parse_age(s: &str) -> Result<Option<std::time::Duration>, String> {
    if s == "none" {
        return Ok(None);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("age {s:?} is not a number with a unit (30m, 12h, 7d) or none"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("age {s:?}: the unit must be s, m, h or d")),
    };
    Ok(Some(std::time::Duration::from_secs(secs)))
}

fn parse_size(s: &str) -> Result<Option<u64>, String> {
    if s == "none" {
        return Ok(None);
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with a unit (512MiB, 2GiB) or none"))?;
    let factor: u64 = match unit {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "size {s:?}: the unit must be B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(factor)
        .map(Some)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses `PREFIX=AGE:SIZE`.
pub fn parse_retention(s: &str) -> Result<RetentionRule, String> {
    let (prefix, limits) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not PREFIX=AGE:SIZE (for example clusters=3d:256MiB)"))?;
    let (age, size) = limits
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: give both limits as AGE:SIZE, either may be none"))?;
    if prefix != "*" {
        crate::broker::log::TopicName::new(prefix).map_err(|e| e.to_string())?;
    }
    Ok(RetentionRule {
        prefix: prefix.to_string(),
        retention: crate::broker::log::Retention {
            max_age: parse_age(age)?,
            max_bytes: parse_size(size)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_expiry_is_a_positive_time() {
        assert_eq!(
            parse_expiry("24h"),
            Ok(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(parse_expiry("90s"), Ok(std::time::Duration::from_secs(90)));
        for bad in ["0h", "none", "24", "1w", "h"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_rules_parse_and_explain_mistakes() {
        let r = parse_retention("clusters=3d:256MiB").expect("valid");
        assert_eq!(r.prefix, "clusters");
        assert_eq!(
            r.retention.max_age,
            Some(std::time::Duration::from_secs(3 * 86_400))
        );
        assert_eq!(r.retention.max_bytes, Some(256 << 20));
        let d = parse_retention("*=none:1GiB").expect("valid");
        assert_eq!(d.retention.max_age, None);
        for (bad, says) in [
            ("clusters", "PREFIX=AGE:SIZE"),
            ("clusters=3d", "AGE:SIZE"),
            ("clusters=3w:1GiB", "unit"),
            ("clusters=3d:1GB", "unit"),
            ("a..b=1d:1GiB", "invalid topic name"),
        ] {
            let e = parse_retention(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
