//! The gateway's configuration: `edgeplug serve --config FILE`, a TOML file parsed strictly
//! (an unknown key anywhere is an error). Every key is optional; the defaults below are also
//! the built-in configuration `edgeplug serve` uses without `--config`.
//!
//! ```toml
//! listen = "127.0.0.1:8080"          # address to listen on
//! state_dir = "edgeplug-state"       # the plugin store: bundles, active versions, compile cache
//! trust_dir = "edgeplug-state/trust" # trusted signing keys (*.pub) and revoked.txt
//! model_dir = "edgeplug-state/models" # the model store: NAME.onnx files plugins may be granted
//! admin_token = "change-me"          # bearer token of /v1/admin/*, scope admin (legacy)
//! # admin_token_file = "/etc/edgeplug/token"  # or read it from a file (first line)
//! tokens_file = "/etc/edgeplug/tokens.toml" # scoped tokens (see `auth`); with neither this nor
//!                                    # admin_token(_file) the admin API is disabled
//! audit_log = "edgeplug-state/audit.log" # one JSON line per admin request; default: in state_dir
//! audit_max_mib = 64                     # rotate the audit log before it passes this size
//! audit_keep = 4                         # rotated audit logs kept (audit.log.1 ...)
//! default_plugin = "digits"          # the plugin answering POST /predict; unset: 404
//! keep_versions = 3                  # versions kept per plugin, the active one included
//! feedback_max_samples = 2000        # labeled samples kept per plugin (feedback), oldest go first
//! feedback_max_mib = 64              # ...and the disk they may take
//! fast_path_us = 50                  # plugins answering within this run on the reactor; 0: never
//! intra_op_threads = 0               # threads one model run may use when cores are idle; 0: all
//! precision = "f32"                  # "bf16": native models' GEMMs in bf16 (AMX or AVX512-BF16)
//! cache_max_mib = 256                # compiled components kept in state_dir/cache, MiB
//!
//! [tls]                              # optional; without it the gateway speaks plain HTTP
//! cert = "cert.pem"                  # PEM certificate chain
//! key = "key.pem"                    # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! client_ca = "clients.pem"          # optional: /v1/admin/* needs a client certificate it signed
//!
//! [admin]
//! verify = "self-test"               # what a pushed version passes before it goes live: its
//!                                    # self-tests, or "conformance": the whole conformance kit
//!                                    # (robustness, determinism, limits) as `edgeplug conformance`
//!
//! [learning]                         # plugins that learn (world learning-plugin)
//! holdout_percent = 20               # samples kept back from training for the gate
//! max_accuracy_drop = 0.02           # held-out accuracy a new head may lose against the live one
//! max_original_drop = 0.02           # ...and on the plugin's reference set (`[learn] reference`)
//! max_steps = 500                    # a fine-tune job's budget: optimizer steps,
//! max_wall_ms = 60000                # wall time (features of every sample included)
//! memory_mib = 64                    # and host tensor memory
//! schedule_secs = 0                  # fine-tune every plugin that learns this often; 0: never
//! min_new_samples = 10               # ...when it got at least this many samples since its last job
//! keep_heads = 3                     # checkpoints kept per plugin, for rollbacks
//!
//! [limits]                           # caps on what any plugin's manifest may ask for
//! memory_mib = 512
//! deadline_ms = 30000
//! concurrency = 64
//! tensor_memory_mib = 1024
//! max_request_mib = 64
//! max_response_mib = 64
//! requests_per_instance = 10000      # caps a plugin's instance reuse; 1: a fresh instance always
//! max_bundle_mib = 512               # largest bundle a push may upload
//! max_instances = 128                # wasm instances alive at once, all plugins together
//! body_timeout_ms = 30000            # a request body must arrive within this (408 after)...
//! body_min_rate_kib = 16             # ...plus one second per this many KiB received
//!
//! [upstreams.center]                 # a center plugins granted `upstream = ["center"]` escalate to
//! url = "https://center.example:8443" # an Open Inference Protocol v2 server (POST {url}/v2/models/M/infer)
//! token_file = "/etc/edgeplug/center-token"  # or token = "...": sent as a bearer token
//! timeout_ms = 1000                  # per call, within what the request's deadline leaves
//! ca = "/etc/edgeplug/center-ca.pem" # https: the CA to trust (default: the system's roots)
//! ```
//! Relative paths in a file are resolved against the file's directory; the built-in defaults
//! are relative to the working directory.
//!
//! `[fleet]`, `[mqtt]`, `[[triggers]]`, `[[cameras]]` and `[grpc]` are parsed by the crates that
//! use them (`edgeplug_fleet::config`, `edgeplug_triggers::config`, `edgeplug_grpc::config`),
//! which depend on this one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address and port to listen on. Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// The plugin store directory (created if missing). Default: `edgeplug-state`.
    pub state_dir: PathBuf,
    /// Trust store directory: `*.pub` keys and an optional `revoked.txt`; read again on every
    /// push and rollback, so adding or revoking a key needs no restart. Created empty if
    /// missing (then nothing can be installed). Default: `edgeplug-state/trust`.
    pub trust_dir: PathBuf,
    /// The model store: `NAME.onnx` files a manifest grants with `[grants] store_models`.
    /// Created empty if missing. Default: `edgeplug-state/models`.
    pub model_dir: PathBuf,
    /// Bearer token for `/v1/admin/*`. Default: none, which disables the admin API (403).
    pub admin_token: Option<String>,
    /// A file whose first line is the admin token (instead of `admin_token`). Default: none.
    pub admin_token_file: Option<PathBuf>,
    /// The token file: scoped tokens, their secrets' SHA-256 (format in [`crate::auth`]).
    /// Read again when it changes. The `admin_token` still works beside it, as a token named
    /// `admin_token` with scope `admin`. Default: none.
    pub tokens_file: Option<PathBuf>,
    /// The audit log: one JSON line per admin API request (format in [`crate::audit`]).
    /// Default: `audit.log` in `state_dir`.
    pub audit_log: Option<PathBuf>,
    /// The audit log rotates before it passes this size (MiB; see [`crate::audit`]).
    /// Default: 64.
    pub audit_max_mib: u32,
    /// Rotated audit log files kept (`audit.log.1` ...). Default: 4, so the log holds at most
    /// 5 × `audit_max_mib` of disk.
    pub audit_keep: u32,
    /// The plugin `POST /predict` runs. Default: none (`/predict` answers 404).
    pub default_plugin: Option<String>,
    /// Versions kept on disk per plugin, the active one included (at least 1). Default: 3.
    pub keep_versions: usize,
    /// Labeled samples kept per plugin from `POST /v1/admin/plugins/{name}/feedback` (the
    /// oldest go first), and the bytes they may take, MiB. Defaults: 2000 and 64.
    pub feedback_max_samples: usize,
    pub feedback_max_mib: u64,
    /// A plugin version whose last 64 requests each ran within this many microseconds runs
    /// its small requests on the reactor thread (under a 10 ms budget), saving two thread
    /// wake-ups each. About the cost of those wake-ups: longer runs gain more from running in
    /// parallel on the pool. 0 disables the fast path. Default: 50.
    pub fast_path_us: u64,
    /// Threads one native model run may use (itself and idle cores it borrows): a request on
    /// an idle gateway splits its heavy layers over the idle cores, while under load every
    /// core runs a request of its own and none is borrowed. 1 never splits; 0 (the default)
    /// allows every core.
    pub intra_op_threads: usize,
    /// Arithmetic of the native backend's convolutions and GEMMs: `"f32"` (the default) or
    /// `"bf16"` (bf16 inputs, f32 sums; on AMX tiles where the CPU has them, else AVX512-BF16,
    /// and the gateway refuses to start on a CPU with neither rather than fall back). Each
    /// model logs the precision it runs in and what multiplies it (`bf16_engine`).
    pub precision: String,
    /// Bound of the compile cache (`state_dir/cache`), MiB. Entries of versions no longer in
    /// the store are deleted after every push, removal and start; past this bound the least
    /// recently used go too, except those of loaded versions. 0 keeps only those. Default: 256.
    pub cache_max_mib: u64,
    /// TLS; without this table the gateway serves plain HTTP. Default: none.
    pub tls: Option<TlsConfig>,
    /// Caps on plugin limits and gateway-wide bounds. Defaults: see [`LimitsConfig`].
    pub limits: LimitsConfig,
    /// `[admin]`: how pushed versions are checked. Defaults: see [`AdminConfig`].
    pub admin: AdminConfig,
    /// `[learning]`: fine-tune jobs of plugins that learn, and the gate their heads pass.
    /// Defaults: see [`crate::learning::LearningConfig`].
    pub learning: crate::learning::LearningConfig,
    /// `[fleet]`: kept as an opaque table and parsed (strictly) by the `edgeplug-fleet`
    /// crate, which depends on this one and not the reverse. Default: none (no fleet agent).
    pub fleet: Option<toml::Table>,
    /// `[mqtt]` (the local broker the triggers subscribe to) and `[[triggers]]` (which messages
    /// run which plugin): opaque here like `[fleet]`, parsed by the `edgeplug-triggers` crate.
    /// Default: none (no triggers).
    pub mqtt: Option<toml::Table>,
    pub triggers: Vec<toml::Table>,
    /// `[[cameras]]`: MJPEG streams sampled into plugins, parsed by `edgeplug-triggers` too.
    pub cameras: Vec<toml::Table>,
    /// `[grpc]`: the Open Inference Protocol over gRPC, opaque here, parsed by the
    /// `edgeplug-grpc` crate. Default: none (no gRPC port).
    pub grpc: Option<toml::Table>,
    /// `[upstreams.NAME]`: centers a plugin may escalate requests to when its manifest grants
    /// NAME (`[grants] upstream`); see [`crate::upstream::UpstreamConfig`]. Default: none
    /// (every escalation is `unavailable`).
    pub upstreams: std::collections::BTreeMap<String, crate::upstream::UpstreamConfig>,
}

/// `[admin]`: what the admin API requires of a pushed version.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// What a pushed version (by `POST /v1/admin/plugins`, `serve --install` or the fleet
    /// agent) must pass before it is activated. Default: its self-tests.
    pub verify: PushVerify,
}

/// The checks a pushed version passes before it goes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushVerify {
    /// The manifest's self-test vectors.
    #[default]
    SelfTest,
    /// The whole conformance kit (self-tests, malformed-input robustness, determinism across
    /// fresh instances, limits): a plugin that traps on an empty body is refused at the door
    /// with 422 `conformance-failed`. Costs the push a few seconds.
    Conformance,
}

/// `[tls]`: certificate chain and private key, both PEM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Required.
    pub cert: PathBuf,
    /// PEM private key. Required.
    pub key: PathBuf,
    /// PEM certificates of the CA(s) that sign admin clients' certificates. When set, the
    /// server asks every client for a certificate; a client that sends one it cannot verify
    /// is refused at the handshake, and `/v1/admin/*` answers 403 to a connection without a
    /// verified one (a bearer token is still needed too). Other endpoints need none.
    /// Default: none (no client certificates).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[limits]`: every plugin limit is the smaller of its manifest's and this cap.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Linear memory of one instance, MiB. Default: 512.
    pub memory_mib: u32,
    /// Deadline of one request, ms (expiry answers 504). Default: 30000.
    pub deadline_ms: u32,
    /// Requests one plugin version serves at once (more answer 503). Default: 64.
    pub concurrency: u32,
    /// Host tensor memory of one request, MiB. Default: 1024.
    pub tensor_memory_mib: u32,
    /// Largest request body, MiB (more answers 413). Default: 64.
    pub max_request_mib: u32,
    /// Largest response, MiB. Default: 64.
    pub max_response_mib: u32,
    /// Requests one instance may serve (a plugin asks for reuse in its manifest); 1 gives
    /// every request a fresh instance whatever the manifests say. Default: 10000.
    pub requests_per_instance: u32,
    /// Largest bundle a push may upload, MiB (more answers 413). Default: 512.
    pub max_bundle_mib: u32,
    /// Wasm instances alive at once across all plugins (the pooling allocator's slots).
    /// Default: 128.
    pub max_instances: u32,
    /// A request body must arrive within this many milliseconds, plus one second for every
    /// `body_min_rate_kib` KiB received so far; past that the request answers 408 and its
    /// connection closes. A slow client therefore keeps a connection only while it sends at
    /// least that rate. Default: 30000.
    pub body_timeout_ms: u32,
    /// The upload rate, KiB/s, that keeps extending a body's deadline (see
    /// `body_timeout_ms`). Default: 16 (128 kbit/s).
    pub body_min_rate_kib: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state_dir: PathBuf::from("edgeplug-state"),
            trust_dir: PathBuf::from("edgeplug-state/trust"),
            model_dir: PathBuf::from("edgeplug-state/models"),
            admin_token: None,
            admin_token_file: None,
            tokens_file: None,
            audit_log: None,
            audit_max_mib: 64,
            audit_keep: 4,
            default_plugin: None,
            keep_versions: 3,
            feedback_max_samples: 2000,
            feedback_max_mib: 64,
            fast_path_us: 50,
            intra_op_threads: 0,
            precision: "f32".into(),
            cache_max_mib: 256,
            tls: None,
            limits: LimitsConfig::default(),
            admin: AdminConfig::default(),
            learning: Default::default(),
            fleet: None,
            mqtt: None,
            triggers: Vec::new(),
            cameras: Vec::new(),
            grpc: None,
            upstreams: Default::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_mib: 512,
            deadline_ms: 30_000,
            concurrency: 64,
            tensor_memory_mib: 1024,
            max_request_mib: 64,
            max_response_mib: 64,
            requests_per_instance: 10_000,
            max_bundle_mib: 512,
            max_instances: 128,
            body_timeout_ms: 30_000,
            body_min_rate_kib: 16,
        }
    }
}

impl Config {
    /// Parses configuration text; relative paths stay as written.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).context("invalid gateway configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration file; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration {}", path.display()))?;
        let mut config = Config::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.state_dir);
        resolve(&mut config.trust_dir);
        resolve(&mut config.model_dir);
        for p in [
            &mut config.admin_token_file,
            &mut config.tokens_file,
            &mut config.audit_log,
        ] {
            if let Some(p) = p.as_mut() {
                resolve(p);
            }
        }
        for upstream in config.upstreams.values_mut() {
            for p in [&mut upstream.token_file, &mut upstream.ca] {
                if let Some(p) = p.as_mut() {
                    resolve(p);
                }
            }
        }
        if let Some(tls) = config.tls.as_mut() {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(ca) = tls.client_ca.as_mut() {
                resolve(ca);
            }
        }
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !(self.admin_token.is_some() && self.admin_token_file.is_some()),
            "set admin_token or admin_token_file, not both"
        );
        if let Some(token) = &self.admin_token {
            anyhow::ensure!(!token.trim().is_empty(), "admin_token must not be empty");
        }
        for (name, upstream) in &self.upstreams {
            upstream.validate(name)?;
        }
        let l = &self.limits;
        for (name, value) in [
            ("memory_mib", l.memory_mib),
            ("deadline_ms", l.deadline_ms),
            ("concurrency", l.concurrency),
            ("tensor_memory_mib", l.tensor_memory_mib),
            ("max_request_mib", l.max_request_mib),
            ("max_response_mib", l.max_response_mib),
            ("requests_per_instance", l.requests_per_instance),
            ("max_bundle_mib", l.max_bundle_mib),
            ("max_instances", l.max_instances),
            ("body_timeout_ms", l.body_timeout_ms),
            ("body_min_rate_kib", l.body_min_rate_kib),
        ] {
            anyhow::ensure!(value > 0, "limits.{name} must be at least 1");
        }
        Ok(())
    }

    /// The admin token, read from `admin_token_file` if that is set.
    pub fn resolve_admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read admin_token_file {}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(!token.is_empty(), "{} holds no token", path.display());
            return Ok(Some(token));
        }
        Ok(self.admin_token.clone())
    }

    /// The caps as the runtime takes them.
    pub fn limit_caps(&self) -> edgeplug_bundle::manifest::Limits {
        let l = &self.limits;
        edgeplug_bundle::manifest::Limits {
            memory_mib: l.memory_mib,
            deadline_ms: l.deadline_ms,
            concurrency: l.concurrency,
            tensor_memory_mib: l.tensor_memory_mib,
            max_request_mib: l.max_request_mib,
            max_response_mib: l.max_response_mib,
            requests_per_instance: l.requests_per_instance,
        }
    }

    /// When the audit log rotates.
    pub fn audit_rotation(&self) -> crate::audit::Rotation {
        crate::audit::Rotation {
            max_bytes: u64::from(self.audit_max_mib.max(1)) << 20,
            keep: self.audit_keep,
        }
    }

    /// Where the audit log is: `audit_log`, or `audit.log` in the state directory.
    pub fn audit_log_path(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.log"))
    }

    /// Bounds for bundles pushed or read back from the store.
    pub fn bundle_limits(&self) -> edgeplug_bundle::BundleLimits {
        let max = u64::from(self.limits.max_bundle_mib) << 20;
        let defaults = edgeplug_bundle::BundleLimits::default();
        edgeplug_bundle::BundleLimits {
            max_bundle_bytes: max,
            max_member_bytes: defaults.max_member_bytes.min(max),
            max_members: defaults.max_members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_built_in_default() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.limits.concurrency, 64);
        assert_eq!(config.keep_versions, 3);
    }

    #[test]
    fn unknown_keys_are_errors_and_values_are_checked() {
        let err = Config::parse("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        let err = Config::parse("[limits]\nmemory = 3").unwrap_err();
        assert!(format!("{err:#}").contains("memory"), "{err:#}");
        let err = Config::parse("[tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"").unwrap_err();
        assert!(format!("{err:#}").contains("ca"), "{err:#}");
        assert!(Config::parse("[limits]\nconcurrency = 0").is_err());
        assert!(Config::parse("admin_token = \"\"").is_err());
        assert!(Config::parse("admin_token = \"a\"\nadmin_token_file = \"b\"").is_err());
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "state_dir = \"state\"\ntrust_dir = \"/abs/trust\"\ndefault_plugin = \"digits\"\n\
             [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[limits]\ndeadline_ms = 100\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.state_dir, dir.path().join("state"));
        assert_eq!(config.trust_dir, PathBuf::from("/abs/trust"));
        assert_eq!(config.tls.unwrap().cert, dir.path().join("c.pem"));
        assert_eq!(config.limits.deadline_ms, 100);
        assert_eq!(config.limits.memory_mib, 512);
        assert_eq!(config.default_plugin.as_deref(), Some("digits"));
    }

    #[test]
    fn access_control_paths_resolve_and_the_audit_log_defaults_to_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "state_dir = \"state\"\ntokens_file = \"tokens.toml\"\n\
             [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.tokens_file, Some(dir.path().join("tokens.toml")));
        assert_eq!(config.audit_log_path(), dir.path().join("state/audit.log"));
        assert_eq!(
            config.tls.unwrap().client_ca,
            Some(dir.path().join("ca.pem"))
        );
        std::fs::write(&path, "audit_log = \"/var/log/edgeplug-audit.log\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.audit_log_path(),
            PathBuf::from("/var/log/edgeplug-audit.log")
        );
        assert!(Config::parse("[tls]\ncert = \"a\"\nkey = \"b\"\nclient_cas = \"c\"").is_err());
    }
}
