//! The `edgeplug` command line: parses arguments and maps results to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use edgeplug_runtime::content_type::content_type_for;
use edgeplug_runtime::{ComponentCache, InferRequest, PluginFiles, Runtime, RuntimeConfig};

/// edgeplug runs signed WebAssembly inference plugins on edge hosts: preprocessing in the
/// sandbox, tensor math in native host kernels.
#[derive(Debug, Parser)]
#[command(name = "edgeplug", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a plugin on input files and prints one JSON result per file, one per line.
    ///
    /// PLUGIN is a plugin directory (holding plugin.toml) or a signed bundle (.epk, verified
    /// against --trust before anything in it is used). The content type of each file comes
    /// from its extension: .png, .jpg/.jpeg, .json, .npy, .csv, anything else is
    /// application/octet-stream. Exit status 0 if every file gave a result, 2 if any gave an
    /// error.
    Run(RunArgs),
    #[command(flatten)]
    Bundle(crate::cli_bundle::BundleCommand),
    /// Runs the HTTP gateway: invoke, Open Inference Protocol v2, admin, metrics, web page.
    Serve(crate::cli_serve::ServeArgs),
    /// Uploads a signed bundle to a gateway (with a progress bar).
    Push(crate::cli_serve::PushArgs),
    /// Rolls a plugin back to its previous version on a gateway.
    Rollback(crate::cli_serve::RollbackArgs),
    /// Pushes a signed bundle to an OCI registry and announces it to a fleet group (or, with
    /// --pin, one gateway) with a signed, retained MQTT notice; the gateways follow.
    Publish(crate::cli_publish::PublishArgs),
    /// The fleet seen from the broker: `edgeplug fleet status --broker URL --group G`.
    Fleet(crate::cli_fleet::FleetArgs),
    /// A staged rollout to a fleet group: waves by pins, each gated on the error rate (and
    /// p99) the gateways report; a failed gate sends the waves done back with signed
    /// rollbacks. Resumable with --state.
    Rollout(crate::cli_rollout::RolloutArgs),
    /// Federated averaging of a plugin's head over a fleet group: opens rounds, averages the
    /// gateways' deltas weighted by their sample counts, publishes each round's head signed.
    Aggregate(crate::cli_aggregate::AggregateArgs),
    /// Prints the mosquitto bridge configuration that stores this gateway's results on its
    /// local broker and forwards them to the center's (persistent, QoS 1), for the local
    /// broker's mosquitto.conf.
    BridgeConfig(crate::cli_bridge::BridgeConfigArgs),
    /// Makes a scoped admin token for a gateway's tokens_file: prints the secret once, and
    /// the entry (its SHA-256 and scopes) or appends it to --tokens-file.
    Token(crate::cli_token::TokenArgs),
    /// Times one ONNX model on one backend (native or tract) and prints the median latency.
    Bench(crate::cli_bench::BenchArgs),
    /// Quantizes a float ONNX model to int8 (static QDQ, per-channel weights) with calibration
    /// inputs, writes it, and prints what it lost on the inputs held out from calibration.
    Quantize(crate::cli_quantize::QuantizeArgs),
    /// Checks a plugin before it is deployed: manifest and signature, describe(), self-tests,
    /// robustness against malformed input, determinism, limits and latency. Exit status 0
    /// when every check passed.
    Conformance(crate::cli_conformance::ConformanceArgs),
    /// Creates a plugin directory from a template (Cargo.toml, src/lib.rs, plugin.toml, a
    /// self-test) that builds, passes conformance and signs as is.
    New(crate::cli_new::NewArgs),
    /// Builds a Rust plugin's component for wasm32-wasip2 with the `plugin` profile and puts
    /// it where plugin.toml says; refuses a Cargo.toml whose version is not plugin.toml's.
    Build(crate::cli_build::BuildArgs),
    /// Self-test vectors: `edgeplug selftest record DIR` writes their expected answers.
    Selftest(crate::cli_selftest::SelftestArgs),
    /// Extracts the initializers of an ONNX model into a safetensors weights file and lists
    /// the graph's nodes, for porting a model to the native `ops` interface.
    Weights(WeightsArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The plugin directory or bundle file.
    plugin: PathBuf,
    /// Trust store directory for verifying a bundle (`*.pub` keys, optional `revoked.txt`).
    #[arg(long, default_value = "trust")]
    trust: PathBuf,
    /// Input files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Read the component from this file instead of the path plugin.toml names
    /// (for example a fresh build output).
    #[arg(long)]
    component: Option<PathBuf>,
    /// Directory for compiled components (default: $XDG_CACHE_HOME/edgeplug or ~/.cache/edgeplug).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The model store directory for models the manifest grants with `store_models`.
    #[arg(long)]
    model_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct WeightsArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Where to write the safetensors file.
    #[arg(long)]
    out: PathBuf,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes, outermost first, joined by ": ", leaving out a cause whose text the
/// message so far already ends with: many of our errors name their cause in their own message
/// (so that a gateway's error body, which shows only the outermost, says why), and anyhow's
/// `{:#}` would print that cause twice.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Logs to stderr, filtered by `EDGEPLUG_LOG` (default `warn`); what the binary does first.
/// Colours only on a terminal (and without `NO_COLOR`): a log redirected to a file or a
/// journal gets plain text, not escape codes.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEPLUG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// Parses `args` (the program name first) and runs them, in this process: what the binary does,
/// for tests. A command line clap refuses is an error with clap's message.
pub fn run_args<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Cli::try_parse_from(args)?)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A forced kernel ISA this CPU lacks (or a misspelt one) is refused here,
    // not silently replaced by the best one.
    edgeplug_kernels::fast::Isa::from_env().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Run(args) => run_plugin(args),
        Command::Weights(args) => extract_weights(args),
        Command::Bundle(cmd) => crate::cli_bundle::run(cmd),
        Command::Bench(args) => crate::cli_bench::run(args),
        Command::Quantize(args) => crate::cli_quantize::run(args),
        Command::Serve(args) => crate::cli_serve::run_serve(args),
        Command::Push(args) => crate::cli_serve::run_push(args),
        Command::Rollback(args) => crate::cli_serve::run_rollback(args),
        Command::Token(args) => crate::cli_token::run(args),
        Command::BridgeConfig(args) => crate::cli_bridge::run(args),
        Command::Publish(args) => crate::cli_publish::run(args),
        Command::Fleet(args) => crate::cli_fleet::run(args),
        Command::Rollout(args) => crate::cli_rollout::run(args),
        Command::Aggregate(args) => crate::cli_aggregate::run(args),
        Command::Conformance(args) => crate::cli_conformance::run(args),
        Command::New(args) => crate::cli_new::run(args),
        Command::Build(args) => crate::cli_build::run(args),
        Command::Selftest(args) => crate::cli_selftest::run(args),
    }
}

/// The default directory for compiled components.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("edgeplug"))
}

/// The runtime of a command that runs plugins in this process: compiled components cached in
/// `cache_dir` (default [`default_cache_dir`]), store models from `model_dir`.
pub fn local_runtime(
    cache_dir: Option<PathBuf>,
    model_dir: Option<PathBuf>,
) -> anyhow::Result<Runtime> {
    let cache = match cache_dir.or_else(default_cache_dir) {
        Some(dir) => ComponentCache::in_dir(dir),
        None => ComponentCache::disabled(),
    };
    Runtime::new(RuntimeConfig {
        cache,
        models: std::sync::Arc::new(edgeplug_runtime::model_store::ModelStore::new(model_dir)),
        ..RuntimeConfig::default()
    })
}

fn run_plugin(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Said before anything else: a mistyped path is not a trust-store problem.
    if !args.plugin.exists() {
        anyhow::bail!(
            "{} is neither a plugin directory nor a bundle file: it does not exist",
            args.plugin.display()
        );
    }
    let runtime = local_runtime(args.cache_dir, args.model_dir)?;
    let files = if args.plugin.is_dir() {
        PluginFiles::from_dir(&args.plugin, args.component.as_deref())?
    } else {
        let trust = edgeplug_bundle::TrustStore::load(&args.trust)
            .with_context(|| format!("cannot load the trust store {}", args.trust.display()))?;
        let bundle = edgeplug_bundle::verify_file(
            &args.plugin,
            &trust,
            &edgeplug_bundle::BundleLimits::default(),
        )
        .with_context(|| format!("bundle {} refused", args.plugin.display()))?;
        PluginFiles::from_bundle(&bundle)
    };
    let plugin = runtime.load(&files)?;
    let mut failed = false;
    for path in &args.files {
        let line = match std::fs::read(path) {
            Err(e) => {
                failed = true;
                serde_json::json!({"file": path, "error": {"code": "io", "message": e.to_string()}})
            }
            Ok(body) => {
                let request = InferRequest {
                    content_type: content_type_for(path).to_string(),
                    body,
                    tensors: Vec::new(),
                };
                match plugin.infer(request) {
                    Ok(response) => {
                        let result = if response.content_type.starts_with("application/json") {
                            serde_json::from_slice(&response.body).unwrap_or_else(|_| {
                                serde_json::Value::String(
                                    String::from_utf8_lossy(&response.body).into(),
                                )
                            })
                        } else {
                            serde_json::json!({
                                "content_type": response.content_type,
                                "bytes": response.body.len(),
                            })
                        };
                        serde_json::json!({"file": path, "result": result})
                    }
                    Err(e) => {
                        failed = true;
                        serde_json::json!({"file": path, "error": e.to_json()})
                    }
                }
            }
        };
        println!("{line}");
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn extract_weights(args: WeightsArgs) -> anyhow::Result<ExitCode> {
    let onnx = std::fs::read(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let (bytes, nodes) = edgeplug_models::weights::extract_onnx_weights(&onnx)?;
    std::fs::write(&args.out, bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    for node in nodes {
        println!("{}", serde_json::to_string(&node)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn running_a_plugin_that_does_not_exist_says_so() {
        let err = super::run_args(["edgeplug", "run", "/nonexistent/plugin", "x.png"]).unwrap_err();
        let text = super::error_chain(&err);
        assert!(text.contains("does not exist"), "{text}");
        assert!(!text.contains("trust"), "{text}");
    }

    /// An error that names its cause in its own message, as the bundle crate's do.
    #[derive(Debug)]
    struct ReadError(std::io::Error);

    impl std::fmt::Display for ReadError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot read /k.key: {}", self.0)
        }
    }

    impl std::error::Error for ReadError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_the_message_already_names_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(ReadError(io)).context("loading the signing key");
        assert_eq!(
            super::error_chain(&e),
            "loading the signing key: cannot read /k.key: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(super::error_chain(&plain), "outer: middle: inner");
    }
}
