//! `edgeplug rollout`: a staged rollout of a signed bundle to a fleet group, wave by wave,
//! each gated on the error rate (and p99) the gateways report, rolled back by signed rollback
//! notices when a gate fails. The work is `edgeplug_fleet::rollout`; this file only maps
//! arguments to it and prints its events.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use edgeplug_fleet::rollout::{self, Gate, Outcome, RolloutOptions};

use crate::cli_publish::{BrokerArgs, RegistryArgs};

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// The signed bundle (.epk) to roll out.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The group to roll it out to (its gateways are those with a live retained status).
    #[arg(long)]
    pub group: String,
    /// Cumulative waves: gateway counts or shares, ending at 100%.
    #[arg(long, default_value = "1,10%,50%,100%")]
    pub stages: String,
    /// The gate: errors over requests of the new version on the gateways reached so far.
    #[arg(long, default_value = "1%")]
    pub max_error_rate: String,
    /// The gate: the highest p99 latency a gateway on the new version may report, in ms.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Requests the gateways must have served on the new version before a soak can pass.
    #[arg(long, default_value_t = 0)]
    pub min_requests: u64,
    /// How long each wave is watched once installed (60s, 5m, ...).
    #[arg(long, default_value = "60s")]
    pub soak: String,
    /// How long a wave may take to install before its gate fails.
    #[arg(long, default_value = "10m")]
    pub install_timeout: String,
    /// How often the gateways' statuses are read.
    #[arg(long, default_value = "1s")]
    pub poll: String,
    /// The private key signing the notices (gateways must trust its public key).
    #[arg(long)]
    pub key: PathBuf,
    /// Where the rollout records its progress; run the same command again to resume it.
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

impl RolloutArgs {
    /// The library's options (everything but the bundle and the key).
    pub fn options(&self) -> anyhow::Result<RolloutOptions> {
        let (registry, repository) = self.registry.options(self.broker.cacert.clone())?;
        Ok(RolloutOptions {
            registry,
            repository,
            broker: self.broker.options()?,
            group: self.group.clone(),
            stages: rollout::parse_stages(&self.stages).context("--stages")?,
            gate: Gate {
                max_error_rate: rollout::parse_rate(&self.max_error_rate)
                    .context("--max-error-rate")?,
                max_p99_ms: self.max_p99_ms,
                min_requests: self.min_requests,
            },
            soak: rollout::parse_duration(&self.soak).context("--soak")?,
            install_timeout: rollout::parse_duration(&self.install_timeout)
                .context("--install-timeout")?,
            poll: rollout::parse_duration(&self.poll).context("--poll")?,
            state_file: self.state.clone(),
        })
    }
}

/// Exit status 0 when every wave passed, 3 when a gate failed and the rollout rolled back.
pub fn run(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let bundle = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let key = edgeplug_bundle::SecretKey::load(&args.key)?;
    if let Some(p) = args.max_p99_ms {
        anyhow::ensure!(p.is_finite() && p > 0.0, "--max-p99-ms must be above 0");
    }
    let options = args.options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Progress on stderr, one JSON object a line; the report on stdout.
    let mut on_event = |event: &rollout::Event| {
        eprintln!(
            "{}",
            serde_json::to_string(event).expect("events serialize")
        );
    };
    let report = runtime.block_on(rollout::run(&bundle, &options, &key, &mut on_event))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("reports serialize")
    );
    Ok(match report.outcome {
        Outcome::Completed => ExitCode::SUCCESS,
        Outcome::RolledBack { .. } => ExitCode::from(3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: RolloutArgs,
    }

    #[test]
    fn arguments_map_to_options_and_bad_ones_name_their_flag() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "x",
                "b.epk",
                "--registry",
                "127.0.0.1:5000/edgeplug/digits",
                "--broker",
                "mqtt://127.0.0.1:1883",
                "--group",
                "g1",
                "--key",
                "k.pem",
            ];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args.options()
        };
        let options = parse(&[
            "--stages",
            "1,50%,100%",
            "--max-error-rate",
            "0.5%",
            "--soak",
            "2s",
        ])
        .unwrap();
        assert_eq!(options.stages.len(), 3);
        assert_eq!(options.gate.max_error_rate, 0.005);
        assert_eq!(options.soak, std::time::Duration::from_secs(2));
        assert_eq!(options.repository, "edgeplug/digits");
        for (flag, value) in [
            ("--stages", "1,50%"),
            ("--max-error-rate", "1"),
            ("--soak", "soon"),
        ] {
            let err = parse(&[flag, value]).unwrap_err();
            assert!(format!("{err:#}").contains(flag), "{flag}: {err:#}");
        }
    }
}
