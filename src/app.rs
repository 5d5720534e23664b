//! The composition root: builds the data directory, keys, store, PKI and HTTP server for
//! `palisade serve`, and hands them down as one `App`. Nothing else constructs these.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use crate::api::metrics::Metrics;
use crate::api::middleware::TokenCache;
use crate::config::ServeConfig;
use crate::datadir::{DataDir, DirLock};
use crate::pki::{self, Pki};
use crate::secrets::SealingKey;
use crate::store::Store;

/// Failures starting the appliance, each naming the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    DataDir(#[from] crate::datadir::Error),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Pki(#[from] crate::pki::Error),
    #[error("cannot open the registry's blob store")]
    Registry(#[from] crate::registry::blobs::Error),
    #[error("cannot open the message broker's log")]
    BrokerLog(#[from] crate::broker::log::Error),
    #[error("cannot set up the broker's TLS: {0}")]
    BrokerTls(#[source] rustls::Error),
    #[error("cannot listen on {addr} for the broker: {source} (is another service using the port? choose another with --broker-listen)")]
    BrokerBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source} (is another service using the port? choose another with --listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTPS server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// Everything a request handler or reconciler needs; one per running appliance.
pub struct App {
    pub config: ServeConfig,
    pub store: Store,
    pub ca_fingerprint: String,
    pub ca_pem: String,
    pub metrics: Metrics,
    pub tokens: TokenCache,
    pub lists: crate::api::list_cache::ListCache,
    pub console: crate::console::Console,
    /// The OCI registry's blob store and upload state.
    pub registry: crate::registry::Registry,
    /// The message broker core.
    pub broker: crate::broker::Broker,
    /// The appliance's own broker client (in process: same semantics, no network hop).
    pub bus: crate::broker::client::Client,
    /// Client certificates the broker accepts; updated as they are issued and revoked.
    pub broker_peers: Arc<crate::broker::peers::PeerDirectory>,
    /// The internal CA, for issuing broker client certificates.
    pub pki: Pki,
    pub started: Instant,
    /// The OpenAPI document, rendered on first request.
    pub openapi: OnceLock<String>,
    /// What the orchestrator's reconcilers share (store, bus, endpoints machines use).
    pub orchestrator: Arc<crate::orchestrator::Context>,
    /// Per-machine boot media served to BMCs at `/boot-media/{name}`.
    pub boot_media: Arc<crate::orchestrator::media::BootMedia>,
    /// Wakes the pack-source reconciler (`crate::pack_sources`) to read the sources now.
    pub pack_source_sync: tokio::sync::Notify,
    /// Resumable bundle upload sessions (`/v1/bundle-uploads`) and their expiry.
    pub bundle_uploads: crate::bundle::uploads::UploadSessions,
}

/// What `serve` prints once it is ready.
pub struct Ready {
    pub listen: SocketAddr,
    pub broker_listen: SocketAddr,
    pub console_url: String,
    pub ca_fingerprint: String,
    /// Present while no account exists: opens the setup page.
    pub setup_token: Option<String>,
}

/// A started appliance: wait on it with `serve_until`.
pub struct Appliance {
    app: Arc<App>,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    redirect: Option<std::net::TcpListener>,
    broker_listener: std::net::TcpListener,
    broker_tls: Arc<rustls::ServerConfig>,
    _lock: DirLock,
    pub ready: Ready,
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| Error::Bind { addr, source })?;
    Ok(l)
}

/// Prepare the appliance: data directory (locked), keys, migrated store, certificates,
/// listening sockets, and a setup token on first start.
pub async fn start(config: ServeConfig) -> Result<Appliance, Error> {
    let dir = DataDir::create(&config.data_dir)?;
    let lock = dir.lock()?;
    let key = SealingKey::load_or_create(&dir.sealing_key_path())?;
    let db_path = dir.db_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&db_path, key))
        .await
        .map_err(|_| Error::Store(crate::store::Error::Poisoned))??;
    let interrupted = store.recover_pending_audit().await?;
    if interrupted > 0 {
        tracing::warn!(
            requests = interrupted,
            "audited requests that were in flight when the appliance stopped (outcome: interrupted)"
        );
    }
    let pki = Pki::load_or_create(&dir.pki_dir())?;
    let registry = crate::registry::Registry::open(&dir.registry_dir())?;
    let identity = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => pki::load_identity(cert, key)?,
        _ => pki.issue_server_identity(&pki::local_names(&config.extra_names))?,
    };
    // The broker always serves a certificate of the internal CA, even when the console uses
    // an admin-supplied one: agents and gateways pin that CA.
    let broker_identity = match (&config.tls_cert, &config.tls_key) {
        (Some(_), Some(_)) => pki.issue_server_identity(&pki::local_names(&config.extra_names))?,
        _ => pki::Identity {
            chain: identity.chain.clone(),
            key: identity.key.clone_key(),
        },
    };
    let broker_tls = crate::broker::service::tls_config(broker_identity, pki.ca_der().to_vec())
        .map_err(Error::BrokerTls)?;
    let tls = pki::server_config(identity)?;
    let listener = bind(config.listen)?;
    let broker_listener = bind(config.broker_listen).map_err(|e| match e {
        Error::Bind { addr, source } => Error::BrokerBind { addr, source },
        other => other,
    })?;
    let broker_listen = broker_listener
        .local_addr()
        .map_err(|source| Error::BrokerBind {
            addr: config.broker_listen,
            source,
        })?;
    let mut log_config = crate::broker::log::LogConfig::new(dir.broker_dir());
    for rule in &config.broker_retention {
        if rule.prefix == "*" {
            log_config.retention = rule.retention;
        } else {
            log_config
                .topic_retention
                .push((rule.prefix.clone(), rule.retention));
        }
    }
    let log = crate::broker::log::Log::open(log_config).await?;
    let broker = crate::broker::Broker::new(log, crate::broker::BrokerConfig::default());
    let broker_peers = Arc::new(crate::broker::peers::PeerDirectory::new(
        store
            .broker_certificates()
            .await?
            .into_iter()
            .filter_map(|c| {
                let kind = crate::broker::access::PeerKind::parse(&c.kind)?;
                Some((
                    c.serial,
                    crate::broker::peers::KnownCert {
                        kind,
                        subject: c.subject,
                        revoked: c.revoked_at.is_some(),
                    },
                ))
            }),
    ));
    let listen = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let redirect = config.http_redirect.map(bind).transpose()?;
    let setup_token = store.new_setup_token().await?;
    let host = config.public_host.clone().unwrap_or_else(|| {
        if listen.ip().is_unspecified() {
            pki::local_names(&[])
                .into_iter()
                .find(|n| n != "localhost" && n.parse::<std::net::IpAddr>().is_err())
                .unwrap_or_else(|| "localhost".into())
        } else {
            listen.ip().to_string()
        }
    });
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let console_url = format!("https://{host}:{}/", listen.port());
    let bus = crate::broker::client::Client::local(broker.clone());
    let appliance_url = format!("https://{host}:{}", listen.port());
    let boot_media = Arc::new(crate::orchestrator::media::BootMedia::new(
        dir.root().join("boot-media"),
        appliance_url.clone(),
    ));
    let orchestrator = Arc::new(crate::orchestrator::Context {
        store: store.clone(),
        bus: bus.clone(),
        endpoints: crate::orchestrator::bootstrap::ApplianceEndpoints {
            url: appliance_url,
            registry: format!("{host}:{}", listen.port()),
            broker: format!("{host}:{}", broker_listen.port()),
            ca_pem: pki.ca_pem().to_string(),
        },
        data_dir: dir.root().to_path_buf(),
        provider_context: crate::providers::Context {
            media: Some(boot_media.clone()),
        },
        resync: std::time::Duration::from_secs(config.resync_interval),
        build_timeout: time::Duration::seconds(config.machine_build_timeout as i64),
    });
    let bundle_uploads = crate::bundle::uploads::UploadSessions::new(
        dir.staging_dir().join("uploads"),
        config.bundle_upload_expiry,
    );
    let app = Arc::new(App {
        bundle_uploads,
        ca_fingerprint: pki.ca_fingerprint(),
        ca_pem: pki.ca_pem().to_string(),
        config,
        store,
        metrics: Metrics::default(),
        tokens: TokenCache::default(),
        lists: Default::default(),
        console: crate::console::Console::default(),
        registry,
        bus,
        broker,
        orchestrator,
        boot_media,
        broker_peers,
        pki,
        started: Instant::now(),
        openapi: OnceLock::new(),
        pack_source_sync: tokio::sync::Notify::new(),
    });
    Ok(Appliance {
        ready: Ready {
            listen,
            broker_listen,
            console_url,
            ca_fingerprint: app.ca_fingerprint.clone(),
            setup_token,
        },
        app,
        listener,
        tls,
        redirect,
        broker_listener,
        broker_tls,
        _lock: lock,
    })
}

impl Appliance {
    /// Serve HTTPS (and the optional HTTP redirect) until `shutdown` completes, then drain
    /// in-flight requests for up to 10 seconds.
    pub async fn serve_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let handle = axum_server::Handle::new();
        let router = crate::api::router(self.app.clone());
        if let Some(redirect) = self.redirect {
            let port = self.ready.listen.port();
            let redirect_handle = handle.clone();
            tokio::spawn(async move {
                let router =
                    axum::Router::new().fallback(move |req: axum::extract::Request| async move {
                        redirect_to_https(&req, port)
                    });
                if let Err(e) = axum_server::from_tcp(redirect)
                    .handle(redirect_handle)
                    .serve(router.into_make_service())
                    .await
                {
                    tracing::error!(error = %e, "HTTP redirect listener stopped");
                }
            });
        }
        tokio::spawn(crate::registry::collect_garbage_periodically(
            self.app.clone(),
        ));
        tokio::spawn(crate::pack_sources::sync_periodically(self.app.clone()));
        tokio::spawn(crate::bundle::uploads::expire_periodically(
            self.app.bundle_uploads.clone(),
            self.app.store.clone(),
        ));
        let app = self.app.clone();
        tokio::spawn(async move {
            match crate::orchestrator::desired::publish_missing(&app.bus, &app.broker, &app.store)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    clusters = n,
                    "published desired state missing from the broker"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot list clusters to publish their desired state")
                }
            }
        });
        crate::orchestrator::spawn(self.app.orchestrator.clone());
        let stopper = handle.clone();
        let (stop_broker, broker_stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests in flight");
            let _ = stop_broker.send(());
            stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
        });
        let broker_listener =
            tokio::net::TcpListener::from_std(self.broker_listener).map_err(Error::Serve)?;
        let service = crate::broker::service::BrokerService::new(
            self.app.broker.clone(),
            self.app.broker_peers.clone(),
        );
        let broker_tls = self.broker_tls;
        tokio::spawn(async move {
            let stopped = async {
                let _ = broker_stopped.await;
            };
            if let Err(e) =
                crate::broker::service::serve(broker_listener, broker_tls, service, stopped).await
            {
                tracing::error!(error = %e, "the broker listener stopped");
            }
        });
        let log = self.app.broker.log().clone();
        // TCP_NODELAY: without it the small TLS 1.3 session ticket sent after the handshake holds
        // the first response back until the client's delayed ACK (about 40 ms per new connection).
        let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(self.tls))
            .acceptor(axum_server::accept::NoDelayAcceptor::new());
        axum_server::from_tcp(self.listener)
            .acceptor(acceptor)
            .handle(handle)
            .serve(router.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .map_err(Error::Serve)?;
        // Everything acknowledged is already durable; closing only stops the writer cleanly.
        if let Err(e) = log.close().await {
            tracing::warn!(error = %e, "closing the broker log failed");
        }
        Ok(())
    }
}

/// Answer a plain-HTTP request with a permanent redirect to the same path over HTTPS.
fn redirect_to_https(req: &axum::extract::Request, port: u16) -> axum::response::Response {
    use axum::response::IntoResponse;
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h).to_string())
        .unwrap_or_else(|| "localhost".into());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = format!("https://{host}:{port}{path}");
    (
        axum::http::StatusCode::PERMANENT_REDIRECT,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response()
}
