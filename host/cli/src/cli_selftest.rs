//! `edgeplug selftest record`: writes each self-test's expected answer from what the plugin
//! answers now, in the form the self-test runner and the conformance kit read (the response
//! body's JSON), for the author to review before committing it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use edgeplug_bundle::manifest::Manifest;
use edgeplug_runtime::{InferRequest, PluginFiles};

#[derive(Debug, clap::Args)]
pub struct SelftestArgs {
    #[command(subcommand)]
    pub command: SelftestCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SelftestCommand {
    /// Runs the plugin on each `[[self-test]]` input of plugin.toml and writes its JSON answer
    /// to the vector's `expect` file (pretty-printed, created if missing). Review the
    /// differences before you commit them: they become what the gateway checks.
    Record(RecordArgs),
}

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The plugin directory.
    pub dir: PathBuf,
    /// Read the component from this file instead of the path plugin.toml names.
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// Directory for compiled components (default: $XDG_CACHE_HOME/edgeplug or ~/.cache/edgeplug).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The model store directory for models the manifest grants with `store_models`.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

/// What recording did to one expect file.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The file did not exist.
    New,
    /// The file held a different answer (compared as JSON values, exactly).
    Changed,
    /// The file held this answer already.
    Unchanged,
}

/// Records every vector of the plugin in `args.dir`; returns (expect path, outcome) per vector.
pub fn record(args: &RecordArgs) -> anyhow::Result<Vec<(String, Recorded)>> {
    let dir = &args.dir;
    if args.component.is_none() {
        crate::cli_build::refuse_stale_component(dir)?;
    }
    let manifest = Manifest::load(dir)
        .with_context(|| format!("{} is not a plugin directory", dir.display()))?;
    if manifest.self_tests.is_empty() {
        bail!(
            "plugin.toml in {} has no [[self-test]] vectors to record",
            dir.display()
        );
    }
    // Like PluginFiles::from_dir, except that the expect files may not exist yet: they are
    // what this writes.
    let expects: Vec<&str> = manifest
        .self_tests
        .iter()
        .map(|t| t.expect.as_str())
        .collect();
    let mut files = BTreeMap::new();
    for path in manifest.referenced_files() {
        let on_disk = match &args.component {
            Some(c) if path == manifest.component => c.clone(),
            _ => dir.join(path),
        };
        match std::fs::read(&on_disk) {
            Ok(bytes) => {
                files.insert(path.to_string(), Arc::<[u8]>::from(bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && expects.contains(&path) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read {} (named in plugin.toml)", on_disk.display())
                });
            }
        }
    }
    let files = PluginFiles { manifest, files };
    let runtime = crate::cli::local_runtime(args.cache_dir.clone(), args.model_dir.clone())?;
    let plugin = runtime
        .load(&files)
        .with_context(|| format!("cannot load the plugin in {}", dir.display()))?;
    let mut outcomes = Vec::new();
    for test in &files.manifest.self_tests {
        let input = files.files.get(&test.input).with_context(|| {
            format!("self-test {:?}: input {} is missing", test.name, test.input)
        })?;
        let response = plugin
            .infer(InferRequest {
                content_type: edgeplug_runtime::selftest::input_content_type(test),
                body: input.to_vec(),
                tensors: Vec::new(),
            })
            .map_err(|e| anyhow::anyhow!("self-test {:?}: the plugin failed: {e}", test.name))?;
        let answer: serde_json::Value = serde_json::from_slice(&response.body).map_err(|e| {
            anyhow::anyhow!(
                "self-test {:?}: the answer ({}) is not JSON, which a self-test needs: {e}",
                test.name,
                response.content_type
            )
        })?;
        let path = dir.join(&test.expect);
        let outcome = match std::fs::read(&path) {
            Err(_) => Recorded::New,
            Ok(old) => match serde_json::from_slice::<serde_json::Value>(&old) {
                Ok(old) if old == answer => Recorded::Unchanged,
                _ => Recorded::Changed,
            },
        };
        if outcome != Recorded::Unchanged {
            let mut text = serde_json::to_string_pretty(&answer)?;
            text.push('\n');
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            edgeplug_bundle::write_file_atomic(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        outcomes.push((test.expect.clone(), outcome));
    }
    Ok(outcomes)
}

/// `edgeplug selftest ...`.
pub fn run(args: SelftestArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SelftestCommand::Record(args) => {
            for (path, outcome) in record(&args)? {
                let what = match outcome {
                    Recorded::New => "written (new): review it",
                    Recorded::Changed => "rewritten (the answer changed): review the difference",
                    Recorded::Unchanged => "unchanged",
                };
                println!("{path}: {what}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
