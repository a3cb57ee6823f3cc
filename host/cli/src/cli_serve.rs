//! `edgeplug serve | push | rollback`: run the gateway, and talk to its admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hyper::{Method, Request, Uri};

use crate::client::{ChunkedBody, ClientTls, Connection};
use edgeplug_gateway::registry::StartInstall;
use edgeplug_gateway::{Config, Gateway};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Gateway configuration (TOML; every key documented in `edgeplug_gateway::config`).
    /// Without it the built-in defaults apply: listen 127.0.0.1:8080, state in
    /// ./edgeplug-state, trusted keys in ./edgeplug-state/trust, admin API disabled.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen on this address instead of the configuration's `listen`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Install these signed bundles before listening (verified, compiled and self-tested like
    /// a push), so a restart with the same command line comes back whatever was pushed since.
    /// Each file is verified first, always (a tampered or untrusted one is an error). A
    /// bundle older than the active version of its plugin, or the active version itself
    /// (the same content, even signed by another trusted key), counts as already satisfied:
    /// the active version stays. The active version with other content under the same
    /// version number is an error (two bundles must not share a version); the active
    /// version stays and nothing starts. Repeatable.
    #[arg(long = "install", value_name = "BUNDLE")]
    pub install: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The signed bundle to push.
    pub file: PathBuf,
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub to: String,
    /// The gateway's admin token (default: $EDGEPLUG_ADMIN_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: ClientTls,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The plugin to roll back to its previous version.
    pub name: String,
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub to: String,
    /// The gateway's admin token (default: $EDGEPLUG_ADMIN_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: ClientTls,
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgeplug-io")
        .build()?)
}

/// `edgeplug serve`: runs until SIGTERM or SIGINT, then finishes the requests in flight and
/// exits 0.
pub fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listen = config.listen;
    tokio_runtime()?.block_on(async move {
        let gateway = tokio::task::spawn_blocking(move || Gateway::open(config)).await??;
        gateway.spawn_learning_schedule();
        for path in args.install {
            let gw = gateway.clone();
            let shown = path.display().to_string();
            match tokio::task::spawn_blocking(move || gw.registry.install_file(&path)).await?? {
                StartInstall::Installed(outcome) => eprintln!(
                    "installed {} {}",
                    outcome.name,
                    outcome.version.unwrap_or_default()
                ),
                StartInstall::Satisfied {
                    name,
                    version,
                    active,
                } => eprintln!(
                    "already satisfied: {shown} is {name} {version}; the active version {active} stays"
                ),
            }
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let scheme = if gateway.is_tls() { "https" } else { "http" };
        eprintln!(
            "edgeplug gateway on {scheme}://{} serving {:?} (state {}, trust {})",
            listener.local_addr()?,
            gateway.registry.names(),
            gateway.config.state_dir.display(),
            gateway.config.trust_dir.display(),
        );
        // With a [fleet] table, the fleet agent follows the broker (edgeplug_fleet::agent);
        // its relative paths resolve against the configuration file's directory.
        let config_dir = args.config.as_deref().and_then(std::path::Path::parent);
        let fleet = edgeplug_fleet::start_if_configured(
            gateway.clone(),
            config_dir.unwrap_or(std::path::Path::new(".")),
        )
        .await?;
        // With [[triggers]], messages on the local broker run plugins (edgeplug_triggers).
        let triggers = edgeplug_triggers::start_if_configured(
            gateway.clone(),
            config_dir.unwrap_or(std::path::Path::new(".")),
        )?;
        // With [grpc], the Open Inference Protocol is served over gRPC too (edgeplug_grpc).
        let grpc = edgeplug_grpc::start_if_configured(gateway.clone()).await?;
        if let Some(grpc) = &grpc {
            eprintln!("gRPC (inference.GRPCInferenceService) on {}", grpc.addr);
        }
        edgeplug_gateway::serve(listener, gateway, edgeplug_gateway::shutdown_signal()).await?;
        if let Some(grpc) = grpc {
            grpc.stop().await;
        }
        if let Some(triggers) = triggers {
            triggers.stop().await;
        }
        if let Some(agent) = fleet {
            agent.stop().await;
        }
        eprintln!("edgeplug gateway stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn token(given: Option<String>) -> anyhow::Result<String> {
    given
        .or_else(|| std::env::var("EDGEPLUG_ADMIN_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .context("pass --token or set EDGEPLUG_ADMIN_TOKEN")
}

fn admin_url(base: &str, path: &str) -> anyhow::Result<Uri> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    url.parse()
        .with_context(|| format!("{url:?} is not a valid URL"))
}

async fn admin_request(
    url: Uri,
    method: Method,
    token: &str,
    tls: &ClientTls,
    body: ChunkedBody,
    content_type: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut connection = Connection::open_with(&url, tls).await?;
    let path = url
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = connection.send(request.body(body)?).await?;
    let status = response.status();
    let text = String::from_utf8_lossy(response.body());
    if status.is_success() {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let e = &v["error"];
                Some(format!(
                    "{}: {}",
                    e["code"].as_str()?,
                    e["message"].as_str()?
                ))
            })
            .unwrap_or_else(|| text.to_string());
        eprintln!("error: the gateway answered {status}: {reason}");
        Ok(ExitCode::FAILURE)
    }
}

/// `edgeplug push FILE --to URL --token T`: uploads a bundle with a progress bar.
pub fn run_push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let inspection = edgeplug_bundle::inspect(&bytes, &edgeplug_bundle::BundleLimits::default())
        .with_context(|| format!("{} is not a bundle", args.file.display()))?;
    let manifest = inspection
        .manifest
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let url = admin_url(&args.to, &format!("/v1/admin/plugins/{}", manifest.name))?;
    let bar = indicatif::ProgressBar::new(bytes.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("pushing {} {}", manifest.name, manifest.version));
    let progress = bar.clone();
    let body = ChunkedBody::new(bytes).with_progress(move |sent| progress.set_position(sent));
    let result = tokio_runtime()?.block_on(admin_request(
        url,
        Method::PUT,
        &token(args.token)?,
        &args.tls,
        body,
        Some("application/vnd.edgeplug.bundle"),
    ));
    bar.finish_and_clear();
    result
}

/// `edgeplug rollback NAME --to URL --token T`.
pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let url = admin_url(
        &args.to,
        &format!("/v1/admin/plugins/{}/rollback", args.name),
    )?;
    tokio_runtime()?.block_on(admin_request(
        url,
        Method::POST,
        &token(args.token)?,
        &args.tls,
        ChunkedBody::new(Vec::new()),
        None,
    ))
}
