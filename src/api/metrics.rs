//! Prometheus metrics: request counts and latencies by route, plus database and process
//! figures read at scrape time. The registry lives in `App` (no global recorder).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of one route's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Labels of per-route latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub method: String,
    pub route: String,
}

/// The appliance's HTTP metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RouteLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(
        [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]
        .into_iter(),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template",
            latency.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
        }
    }
}

/// Database and process figures gathered for one scrape.
pub struct Gauges {
    pub uptime_seconds: f64,
    pub schema_version: i64,
    pub db_bytes: u64,
    pub rows: Vec<(&'static str, i64)>,
    pub topics: Vec<crate::broker::TopicStats>,
    pub groups: Vec<crate::broker::GroupStats>,
}

impl Metrics {
    /// Count one answered request.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The text exposition: registered metrics, then the scrape-time gauges.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        }
        // The encoder closes with an EOF marker; the scrape-time gauges go before it.
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        let mut gauge = |name: &str, help: &str, lines: Vec<(String, String)>| {
            out.push_str(&format!(
                "# HELP palisade_{name} {help}\n# TYPE palisade_{name} gauge\n"
            ));
            for (labels, value) in lines {
                out.push_str(&format!("palisade_{name}{labels} {value}\n"));
            }
        };
        gauge(
            "uptime_seconds",
            "Seconds since the appliance started",
            vec![(String::new(), format!("{:.3}", g.uptime_seconds))],
        );
        gauge(
            "db_schema_version",
            "Schema version of the database",
            vec![(String::new(), g.schema_version.to_string())],
        );
        gauge(
            "db_size_bytes",
            "Size of the database file and its WAL",
            vec![(String::new(), g.db_bytes.to_string())],
        );
        gauge(
            "db_rows",
            "Rows per table",
            g.rows
                .iter()
                .map(|(t, n)| (format!("{{table=\"{t}\"}}"), n.to_string()))
                .collect(),
        );
        let per_topic = |f: &dyn Fn(&crate::broker::TopicStats) -> u64| {
            g.topics
                .iter()
                .map(|t| (format!("{{topic=\"{}\"}}", t.topic), f(t).to_string()))
                .collect::<Vec<_>>()
        };
        gauge(
            "broker_topic_depth",
            "Messages kept in a broker topic",
            per_topic(&|t| t.depth),
        );
        gauge(
            "broker_topic_bytes",
            "Bytes of a broker topic's segments",
            per_topic(&|t| t.bytes),
        );
        let per_group = |f: &dyn Fn(&crate::broker::GroupStats) -> u64| {
            g.groups
                .iter()
                .map(|s| {
                    (
                        format!("{{group=\"{}\",topic=\"{}\"}}", s.group, s.topic),
                        f(s).to_string(),
                    )
                })
                .collect::<Vec<_>>()
        };
        gauge(
            "broker_group_lag",
            "Messages of the topic after the consumer group's position",
            per_group(&|s| s.lag),
        );
        gauge(
            "broker_group_in_flight",
            "Deliveries of the group awaiting an ack",
            per_group(&|s| s.in_flight),
        );
        gauge(
            "broker_group_redeliveries",
            "Messages delivered again to the group (since its dispatcher started)",
            per_group(&|s| s.redelivered),
        );
        gauge(
            "broker_group_dead_letters",
            "Messages of the group moved to its dead-letter topic (since its dispatcher started)",
            per_group(&|s| s.dead_lettered),
        );
        let (rss, threads, fds) = process_figures();
        gauge(
            "process_resident_memory_bytes",
            "Resident memory of the appliance process",
            vec![(String::new(), rss.to_string())],
        );
        gauge(
            "process_threads",
            "Threads of the appliance process",
            vec![(String::new(), threads.to_string())],
        );
        gauge(
            "process_open_fds",
            "Open file descriptors",
            vec![(String::new(), fds.to_string())],
        );
        out.push_str("# EOF\n");
        out
    }
}

/// Resident bytes, thread count and open descriptors of this process, from /proc.
fn process_figures() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (field("VmRSS:") * 1024, field("Threads:"), fds)
}
