//! `[grpc]` in the gateway's configuration:
//!
//! ```toml
//! [grpc]
//! listen = "127.0.0.1:8081"        # where the gRPC form of the protocol is served
//! max_concurrent_streams = 64      # calls in flight per connection (HTTP/2 streams)
//! ```

use std::net::SocketAddr;

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address and port. Required.
    pub listen: SocketAddr,
    /// HTTP/2 streams a connection may have open at once; more wait in the client. Each
    /// plugin's `concurrency` still bounds what runs. Default: 64.
    #[serde(default = "default_streams")]
    pub max_concurrent_streams: u32,
}

fn default_streams() -> u32 {
    64
}

impl GrpcConfig {
    /// Parses `[grpc]`, if the configuration has it.
    pub fn from_gateway(table: Option<&toml::Table>) -> anyhow::Result<Option<GrpcConfig>> {
        let Some(table) = table else {
            return Ok(None);
        };
        let config: GrpcConfig = table.clone().try_into().context("[grpc]")?;
        anyhow::ensure!(
            config.max_concurrent_streams > 0,
            "[grpc] max_concurrent_streams must be at least 1"
        );
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strictly_with_defaults() {
        let table: toml::Table = toml::from_str("listen = \"127.0.0.1:8081\"").unwrap();
        let config = GrpcConfig::from_gateway(Some(&table)).unwrap().unwrap();
        assert_eq!(config.listen.port(), 8081);
        assert_eq!(config.max_concurrent_streams, 64);
        assert!(GrpcConfig::from_gateway(None).unwrap().is_none());
        for bad in [
            "listen = \"127.0.0.1:8081\"\nlisten_on = 1",
            "max_concurrent_streams = 4",
            "listen = \"127.0.0.1:8081\"\nmax_concurrent_streams = 0",
        ] {
            let table: toml::Table = toml::from_str(bad).unwrap();
            assert!(GrpcConfig::from_gateway(Some(&table)).is_err(), "{bad}");
        }
    }
}
