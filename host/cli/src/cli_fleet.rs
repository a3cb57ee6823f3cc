//! `edgeplug fleet status`: every gateway of a group, read from their retained status topics
//! (`edgeplug_fleet::status`), as a table or as JSON lines.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli_publish::BrokerArgs;

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Prints each gateway of a group: health, active and desired versions, last error.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The group.
    #[arg(long)]
    pub group: String,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// One JSON status per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for more retained statuses after the last one, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub quiet_ms: u64,
}

pub fn run(args: FleetArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        FleetCommand::Status(args) => status(args),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let broker = args.broker.options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let statuses = runtime.block_on(edgeplug_fleet::status::read_fleet(
        &broker,
        &args.group,
        Duration::from_millis(args.quiet_ms),
    ))?;
    if args.json {
        for status in &statuses {
            match status {
                Ok(s) => println!("{}", serde_json::to_string(s)?),
                Err((topic, reason)) => {
                    println!("{}", serde_json::json!({"topic": topic, "error": reason}))
                }
            }
        }
    } else if statuses.is_empty() {
        eprintln!("no gateway has reported in group {:?}", args.group);
    } else {
        print!("{}", edgeplug_fleet::status::render_table(&statuses));
    }
    Ok(ExitCode::SUCCESS)
}
