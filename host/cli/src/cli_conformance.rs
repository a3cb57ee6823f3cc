//! `edgeplug conformance`: runs the conformance kit on a plugin and reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use edgeplug_runtime::conformance::{self, Options, Target};

#[derive(Debug, clap::Args)]
pub struct ConformanceArgs {
    /// A signed bundle (.epk), a plugin directory (holding plugin.toml) or a bare component
    /// (.wasm).
    pub plugin: PathBuf,
    /// Trust store directory for a bundle's signature (`*.pub` keys, optional `revoked.txt`).
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// For a plugin directory: read the component from here instead of the directory (a
    /// build output such as target/wasm32-wasip2/plugin/my_plugin.wasm).
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// Also write the report as JUnit XML to this file.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Requests timed for the latency figure.
    #[arg(long, default_value_t = 20)]
    pub latency_runs: usize,
    /// The model store directory for models the manifest grants with `store_models`.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Directory for compiled components (default: $XDG_CACHE_HOME/edgeplug or ~/.cache/edgeplug).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// Prints the report; exit status 0 when every check passed, 1 otherwise.
pub fn run(args: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::cli::local_runtime(args.cache_dir, args.model_dir)?;
    let mut target = Target::from_path(&args.plugin);
    if let Target::Dir { dir, .. } = &target
        && args.component.is_none()
    {
        crate::cli_build::refuse_stale_component(dir)?;
    }
    if let Some(component) = args.component {
        match &mut target {
            Target::Dir { component: c, .. } => *c = Some(component),
            _ => anyhow::bail!("--component applies to a plugin directory only"),
        }
    }
    let options = Options {
        trust_dir: args.trust,
        latency_runs: args.latency_runs,
        ..Options::default()
    };
    let report = conformance::run(&runtime, &target, &options);
    print!("{}", report.to_text());
    if let Some(path) = &args.junit {
        std::fs::write(path, conformance::junit::to_junit(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
