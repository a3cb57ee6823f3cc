//! The gateway, `edgeplug serve`: plugins behind HTTP, swapped without dropping a request.
//!
//! - [`config`]: the TOML configuration and its built-in defaults.
//! - [`registry`]: name → active version (`ArcSwap`), and the push / rollback / remove
//!   pipeline (verify → compile → pre-instantiate → self-test → store → swap).
//! - [`http`]: routes, status codes and JSON; the only module that knows HTTP.
//! - [`body`]: the request-body policy every endpoint goes through (size limit refused
//!   before reading, read deadline).
//! - [`oip`]: the Open Inference Protocol v2's meaning (JSON and binary tensors,
//!   classification), apart from its transport; [`multipart`]: `/predict`'s form;
//!   [`media`]: what an unlabeled body holds.
//! - [`metrics`]: Prometheus counters and histograms; [`activity`]: each plugin's last ten
//!   minutes and version history, for the web page.
//!
//! The server is a function, [`serve`], over a bound listener, so tests run it on
//! `127.0.0.1:0`.

pub mod activity;
pub mod audit;
pub mod auth;
pub mod body;
pub mod config;
pub mod http;
pub mod lanes;
pub mod learning;
pub mod media;
pub mod metrics;
pub mod multipart;
pub mod oip;
pub mod registry;
pub mod shadow;
pub mod units;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

pub use config::Config;
pub use registry::{ActivePlugin, AdminError, AdminOutcome, Registry};

use edgeplug_bundle::{PluginStore, StoreConfig};
use edgeplug_runtime::{ComponentCache, Runtime, RuntimeConfig};

/// Everything a request handler needs.
pub struct Gateway {
    pub config: Config,
    pub registry: Registry,
    pub metrics: Arc<metrics::Metrics>,
    /// Who may use the admin API, and for what.
    pub access: auth::Access,
    /// One line per admin API request.
    pub audit: audit::AuditLog,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where demoted versions' requests run.
    pub demoted: lanes::LowPriorityPool,
    /// Where pushes, rollbacks and removals run.
    pub admin: lanes::LowPriorityPool,
    /// Each plugin's labeled samples (`state_dir/samples/NAME.samples`), opened on first use.
    pub samples:
        std::sync::Mutex<std::collections::BTreeMap<String, edgeplug_train::samples::SampleStore>>,
    /// Escalations: the `[upstreams]` plugins call through the runtime, and their metrics.
    pub upstreams: Arc<upstream::GatewayUpstreams>,
    /// Fine-tune jobs, the gate of trained heads, and the heads on disk.
    pub learning: Arc<learning::Learning>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .field("plugins", &self.registry.names())
            .finish()
    }
}

impl Gateway {
    /// Opens the state directory, loads the TLS key if configured, starts the runtime and
    /// loads the active version of every stored plugin (re-verified and self-tested; one that
    /// fails is logged and left out). Blocking.
    pub fn open(config: Config) -> anyhow::Result<Arc<Gateway>> {
        edgeplug_models::native::parallel::set_intra_op_threads(config.intra_op_threads);
        let precision: edgeplug_models::native::Precision = config
            .precision
            .parse()
            .map_err(|e| anyhow::anyhow!("precision: {e}"))?;
        edgeplug_models::native::set_default_precision(precision)
            .map_err(|e| anyhow::anyhow!("precision = \"{precision}\": {e}"))?;
        std::fs::create_dir_all(&config.trust_dir)
            .with_context(|| format!("cannot create trust_dir {}", config.trust_dir.display()))?;
        std::fs::create_dir_all(&config.model_dir)
            .with_context(|| format!("cannot create model_dir {}", config.model_dir.display()))?;
        let store = PluginStore::open(
            &config.state_dir,
            StoreConfig {
                keep_versions: config.keep_versions.max(1),
                limits: config.bundle_limits(),
            },
        )
        .with_context(|| format!("cannot open state_dir {}", config.state_dir.display()))?;
        let upstreams = Arc::new(upstream::GatewayUpstreams::open(&config.upstreams)?);
        let runtime = Runtime::new(RuntimeConfig {
            limit_caps: config.limit_caps(),
            max_instances: config.limits.max_instances,
            cache: ComponentCache::in_dir(config.state_dir.join("cache"))
                .with_max_bytes(config.cache_max_mib.saturating_mul(1 << 20)),
            // Compile on the admin thread only: parallel compilation would take every core
            // from the requests being served during a hot swap.
            parallel_compilation: false,
            models: Arc::new(edgeplug_runtime::model_store::ModelStore::new(Some(
                config.model_dir.clone(),
            ))),
            upstreams: Some(upstreams.clone()),
        })?;
        let tls = config.tls.as_ref().map(load_tls).transpose()?;
        let access = auth::Access::new(
            config.resolve_admin_token()?.as_deref(),
            config.tokens_file.as_deref(),
            config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        )?;
        let audit_path = config.audit_log_path();
        let audit = audit::AuditLog::open(&audit_path, config.audit_rotation())
            .with_context(|| format!("cannot open the audit log {}", audit_path.display()))?;
        let metrics = Arc::new(metrics::Metrics::default());
        metrics.add_source(upstreams.metrics.clone());
        let registry = Registry::new(
            runtime,
            store,
            config.trust_dir.clone(),
            config.bundle_limits(),
            config.keep_versions,
            metrics.clone(),
        )
        .verifying(config.admin.verify);
        for (name, error) in registry.load_store()? {
            tracing::error!(plugin = %name, %error, "not serving this plugin");
        }
        let learning_metrics = Arc::new(learning::metrics::LearningMetrics::default());
        metrics.add_source(learning_metrics.clone());
        let learning = Arc::new(learning::Learning::open(
            &config,
            registry.runtime().live_heads().clone(),
            learning_metrics,
        )?);
        learning.restore(&registry.names());
        Ok(Arc::new(Gateway {
            config,
            registry,
            metrics,
            access,
            audit,
            tls,
            // One low-priority thread: demoted versions share it, and four more of their
            // requests may wait; beyond that they are refused with 503.
            demoted: lanes::LowPriorityPool::new("edgeplug-demoted", 1, 4, 19)?,
            // Nice 10 still gets ~10% of a busy core, so a push under full load finishes.
            admin: lanes::LowPriorityPool::new("edgeplug-admin", 1, 16, 10)?,
            samples: std::sync::Mutex::default(),
            upstreams,
            learning,
        }))
    }

    /// Keeps a labeled sample of plugin `name` on disk; how many samples and bytes it then
    /// holds. Blocking (an fsync): call it off the reactor.
    pub fn add_sample(
        &self,
        name: &str,
        sample: &edgeplug_train::samples::Sample,
    ) -> Result<(usize, u64), edgeplug_train::samples::SampleError> {
        let mut stores = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let store = self.sample_store(&mut stores, name)?;
        store.add(sample)?;
        Ok((store.len(), store.bytes()))
    }

    /// Plugin `name`'s sample store, opened on first use.
    fn sample_store<'a>(
        &self,
        stores: &'a mut std::collections::BTreeMap<String, edgeplug_train::samples::SampleStore>,
        name: &str,
    ) -> Result<&'a mut edgeplug_train::samples::SampleStore, edgeplug_train::samples::SampleError>
    {
        use edgeplug_train::samples::{Retention, SampleStore};
        Ok(match stores.entry(name.to_string()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let dir = self.config.state_dir.join("samples");
                std::fs::create_dir_all(&dir)?;
                let retention = Retention {
                    max_samples: self.config.feedback_max_samples,
                    max_bytes: self.config.feedback_max_mib << 20,
                };
                e.insert(SampleStore::open(
                    &dir.join(format!("{name}.samples")),
                    retention,
                )?)
            }
        })
    }

    /// Every labeled sample of plugin `name`, oldest first. Blocking (reads the store).
    pub fn samples_of(
        &self,
        name: &str,
    ) -> Result<Vec<edgeplug_train::samples::Sample>, edgeplug_train::samples::SampleError> {
        let mut stores = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        self.sample_store(&mut stores, name)?.samples()
    }

    /// How many labeled samples plugin `name` holds: kept in memory once its store is open
    /// (opening it the first time reads the file).
    pub fn sample_count(&self, name: &str) -> Result<usize, edgeplug_train::samples::SampleError> {
        let mut stores = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        Ok(self.sample_store(&mut stores, name)?.len())
    }

    /// Whether this gateway speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn load_tls(tls: &config::TlsConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read TLS certificate {}: {e}", tls.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        tls.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| anyhow::anyhow!("cannot read TLS key {}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| anyhow::anyhow!("cannot read client_ca {}: {e}", ca.display()))?;
            anyhow::ensure!(!cas.is_empty(), "{} holds no certificate", ca.display());
            for cert in cas {
                roots
                    .add(cert)
                    .with_context(|| format!("client_ca {}: not a CA certificate", ca.display()))?;
            }
            // A client certificate is asked for on every connection but required by none:
            // only the admin API needs one, and `http` refuses an admin request on a
            // connection without one. A certificate that is sent must verify, or the
            // handshake fails.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .with_context(|| format!("client_ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// How long a connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP (or HTTPS, if the gateway has TLS) on `listener` until `shutdown` completes;
/// then stops accepting, lets the requests in flight finish, closes idle connections and
/// returns.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let tls = gateway.tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Armed by an answer that left a request body unread: the connection then
            // lingers a little when it closes (see `body::Lingering`).
            let linger = body::Linger::default();
            let stream = body::Lingering::new(stream, linger.clone());
            // Every request carries what its connection knows of the client (the admin API
            // reads it), known once the TLS handshake is done.
            let service = move |conn: auth::ConnInfo| {
                service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(conn.clone());
                    let gw = gw.clone();
                    let linger = linger.clone();
                    async move {
                        let response = http::handle(gw, request).await;
                        linger.watch(&response);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                })
            };
            let plain = auth::ConnInfo {
                peer,
                client_cert: None,
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let result = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service(plain)))
                        .await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            // Present only if verified: with `client_ca` set, the handshake
                            // fails on a certificate that does not chain to it; without it,
                            // none is asked for.
                            let client_cert =
                                stream.get_ref().1.peer_certificates().and_then(|chain| {
                                    chain.first().map(|leaf| auth::ClientCert {
                                        sha256: edgeplug_bundle::manifest::Sha256::of(leaf),
                                    })
                                });
                            let conn = auth::ConnInfo {
                                client_cert,
                                ..plain
                            };
                            watcher
                                .watch(
                                    builder.serve_connection(TokioIo::new(stream), service(conn)),
                                )
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    graceful.shutdown().await;
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
