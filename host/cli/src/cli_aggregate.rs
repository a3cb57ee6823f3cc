//! `edgeplug aggregate`: the center of federated averaging for one plugin of a fleet group.
//! The work is `edgeplug_fleet::federated::aggregator`; this file maps arguments to it and
//! prints its events (one JSON object a line on stderr) and a round summary on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use edgeplug_fleet::federated::DpSettings;
use edgeplug_fleet::federated::aggregator::{self, AggregatorOptions, Event, Outcome};

use crate::cli_publish::BrokerArgs;

#[derive(Debug, clap::Args)]
pub struct AggregateArgs {
    /// The group whose gateways take part.
    #[arg(long)]
    pub group: String,
    /// The plugin whose head is averaged.
    #[arg(long)]
    pub plugin: String,
    /// The private key signing round notices and heads (gateways must trust its public key).
    #[arg(long)]
    pub key: PathBuf,
    /// Rounds to run (a run resumed from --state continues up to this round).
    #[arg(long, default_value_t = 5)]
    pub rounds: u64,
    /// How long a round collects uploads, in seconds.
    #[arg(long, default_value_t = 60)]
    pub round_secs: u64,
    /// Uploads a round needs before it is averaged; with fewer it is extended.
    #[arg(long, default_value_t = 1)]
    pub quorum: u32,
    /// How many times a round short of its quorum is extended before the run gives up.
    #[arg(long, default_value_t = 3)]
    pub max_extensions: u32,
    /// Round 1's global head (a signed checkpoint); without it round 1 is a bootstrap round.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// The trust directory that must hold --init's signer (default: --key's own public key).
    #[arg(long, requires = "init")]
    pub init_trust: Option<PathBuf>,
    /// Differential privacy: each gateway clips its delta to this global L2 norm ...
    #[arg(long, requires = "dp_noise")]
    pub dp_clip: Option<f64>,
    /// ... and adds Gaussian noise of deviation this multiplier times the clip.
    #[arg(long, requires = "dp_clip")]
    pub dp_noise: Option<f64>,
    /// The δ of the (ε, δ) recorded with each round.
    #[arg(long, default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// Where each round's head is written (round-N.ckpt).
    #[arg(long, default_value = "federated-heads")]
    pub out: PathBuf,
    /// Where the aggregator records its progress; the same command resumes from it.
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

impl AggregateArgs {
    pub fn options(&self) -> anyhow::Result<AggregatorOptions> {
        let dp = match (self.dp_clip, self.dp_noise) {
            (Some(clip), Some(noise_multiplier)) => {
                let dp = DpSettings {
                    clip,
                    noise_multiplier,
                    delta: self.dp_delta,
                };
                dp.check().context("--dp-clip, --dp-noise, --dp-delta")?;
                Some(dp)
            }
            _ => None,
        };
        anyhow::ensure!(self.round_secs >= 1, "--round-secs must be at least 1");
        Ok(AggregatorOptions {
            broker: self.broker.options()?,
            client_id: format!("edgeplug-aggregate-{}-{}", self.group, self.plugin),
            group: self.group.clone(),
            plugin: self.plugin.clone(),
            rounds: self.rounds,
            round_time: std::time::Duration::from_secs(self.round_secs),
            quorum: self.quorum,
            max_extensions: self.max_extensions,
            dp,
            out_dir: Some(self.out.clone()),
            state_file: self.state.clone(),
        })
    }
}

/// Exit status 0 when every round completed, 3 when one never reached its quorum.
pub fn run(args: AggregateArgs) -> anyhow::Result<ExitCode> {
    let key = edgeplug_bundle::SecretKey::load(&args.key)?;
    let options = args.options()?;
    let init = args
        .init
        .as_deref()
        .map(|path| aggregator::load_init(path, &key, args.init_trust.as_deref()))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut on_event = |event: &Event| {
        eprintln!(
            "{}",
            serde_json::to_string(event).expect("events serialize")
        );
        if let Event::RoundClosed { record, checkpoint } = event {
            let privacy = record
                .epsilon
                .zip(record.dp)
                .map(|(e, dp)| format!(", ε = {e:.3} at δ = {}", dp.delta))
                .unwrap_or_default();
            println!(
                "round {}: {} participants ({}), {} samples, {} ignored{privacy}{}",
                record.round,
                record.participants.len(),
                record.participants.join(", "),
                record.samples,
                record.ignored,
                checkpoint
                    .as_ref()
                    .map(|p| format!(" -> {}", p.display()))
                    .unwrap_or_default(),
            );
        }
    };
    let report = runtime.block_on(aggregator::run(&options, &key, init, &mut on_event))?;
    Ok(match report.outcome {
        Outcome::Completed => ExitCode::SUCCESS,
        Outcome::NoQuorum { round, arrived } => {
            eprintln!(
                "round {round} reached {arrived} of {} uploads after {} extensions: stopped",
                options.quorum, options.max_extensions
            );
            ExitCode::from(3)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AggregateArgs,
    }

    fn parse(extra: &[&str]) -> Result<AggregateArgs, clap::Error> {
        let mut argv = vec![
            "aggregate",
            "--group",
            "g1",
            "--plugin",
            "digits",
            "--key",
            "k.pem",
            "--broker",
            "mqtt://127.0.0.1:1883",
        ];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn arguments_map_to_options() {
        let options = parse(&["--rounds", "3", "--round-secs", "20", "--quorum", "2"])
            .unwrap()
            .options()
            .unwrap();
        assert_eq!(options.rounds, 3);
        assert_eq!(options.round_time, std::time::Duration::from_secs(20));
        assert_eq!(options.quorum, 2);
        assert_eq!(options.dp, None);
        let dp = parse(&["--dp-clip", "1.5", "--dp-noise", "1.1"])
            .unwrap()
            .options()
            .unwrap()
            .dp
            .unwrap();
        assert_eq!((dp.clip, dp.noise_multiplier, dp.delta), (1.5, 1.1, 1e-5));
    }

    #[test]
    fn incomplete_or_bad_settings_are_refused() {
        assert!(parse(&["--dp-clip", "1"]).is_err());
        assert!(parse(&["--init-trust", "dir"]).is_err());
        let bad = parse(&["--dp-clip=-1", "--dp-noise", "1"]).unwrap();
        assert!(format!("{:#}", bad.options().unwrap_err()).contains("clip"));
        let bad = parse(&["--dp-clip", "1", "--dp-noise", "1", "--dp-delta", "2"]).unwrap();
        assert!(bad.options().is_err());
        let bad = parse(&["--round-secs", "0"]).unwrap();
        assert!(bad.options().is_err());
    }
}
