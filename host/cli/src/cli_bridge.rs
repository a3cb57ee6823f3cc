//! `edgeplug bridge-config`: the mosquitto bridge that stores a gateway's results and forwards
//! them to the center (`edgeplug_triggers::bridge` says how and what its limits are).

use std::path::PathBuf;
use std::process::ExitCode;

use edgeplug_triggers::bridge::{BridgeOptions, mosquitto_conf};

#[derive(Debug, clap::Args)]
pub struct BridgeConfigArgs {
    /// The center's broker: `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    #[arg(long)]
    pub center: String,
    /// The bridge's client id at the center: one per gateway (its session there holds what is
    /// in transit), e.g. the gateway's id.
    #[arg(long)]
    pub client_id: String,
    /// Topic filters carried to the center. Repeatable.
    #[arg(long = "topic", value_name = "FILTER", default_value = "results/#")]
    pub topics: Vec<String>,
    /// The bridge's name in mosquitto.
    #[arg(long, default_value = "edgeplug-center")]
    pub name: String,
    /// User name at the center's broker.
    #[arg(long)]
    pub username: Option<String>,
    /// A file whose first line is the password at the center's broker (written into the
    /// configuration: keep its mode 0600).
    #[arg(long, requires = "username")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates for an mqtts:// center (default: the system's roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Results the gateway's broker queues while the uplink is down, at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_queued_messages: u64,
    /// MiB it queues, at most.
    #[arg(long, default_value_t = 1024)]
    pub max_queued_mib: u64,
    /// Longest wait between reconnection attempts while the uplink is down, seconds (also how
    /// late delivery may resume once it is back).
    #[arg(long, default_value_t = 60)]
    pub retry_max_secs: u32,
}

pub fn run(args: BridgeConfigArgs) -> anyhow::Result<ExitCode> {
    let options = BridgeOptions {
        name: args.name,
        center: edgeplug_mqtt::BrokerUrl::parse(&args.center)?,
        client_id: args.client_id,
        topics: args.topics,
        username: args.username,
        password: args
            .password_file
            .as_deref()
            .map(edgeplug_mqtt::read_secret)
            .transpose()?,
        ca_file: args.ca_file,
        max_queued_messages: args.max_queued_messages,
        max_queued_bytes: args.max_queued_mib.saturating_mul(1 << 20),
        retry_max_secs: args.retry_max_secs,
    };
    print!("{}", mosquitto_conf(&options)?);
    Ok(ExitCode::SUCCESS)
}
