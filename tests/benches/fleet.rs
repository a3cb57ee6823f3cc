//! The fleet (issue 14), measured with real servers and real gateway processes: Debian's
//! `docker-registry` (CNCF distribution 2.8) and `mosquitto`, each started here on a free
//! loopback port, and N = 5 and N = 20 `edgeplug serve` processes on loopback (and N = 1, the
//! baseline of one gateway alone on the box), each with its own state directory and `[fleet]`
//! table, trusting one publisher key.
//!
//! `cargo bench -p edgeplug-tests --bench fleet` (`EDGEPLUG_BENCH_ROUNDS` publishes per
//! configuration after a first, unmeasured install, default 3, at most 8). The gateways run
//! `target/release/edgeplug`, built here with `cargo build --release -p edgeplug` (the bench
//! profile's dependencies are the release ones, so that is mostly a link), or the binary
//! `EDGEPLUG_BIN` names. Needs `docker-registry` and `mosquitto` (`make test` installs both).
//! It takes about three minutes; the results also go to `target/bench/fleet.json`.
//!
//! What it prints:
//! - **publish → installed**, per gateway: from the start of the publish (the push of the
//!   bundle to the registry, then the signed notice on the broker, as `publish::publish`
//!   does them) to the gateway's retained status saying the new version is active (each
//!   gateway publishes it right after the hot swap; a collector subscribed to the group's
//!   statuses timestamps its arrival). p50, p99 and max over every gateway of every round,
//!   for N = 1, 5 and 20, with `pull_jitter_ms = 0` (the mechanism itself) and with the default
//!   `pull_jitter_ms = 10000` (a random wait of 0-10 s before each pull, what a fleet
//!   configured by default sees). All N gateways share this machine's cores, so at jitter 0
//!   they verify, compile and self-test the new version at the same time: the figures are an
//!   upper bound of what N separate boxes would see.
//! - **pull + verify of a 20 MB bundle**: the agent's pull by digest (`oci::Registry::
//!   pull_bundle`: manifest checked against the digest, the layer streamed and hashed) and
//!   the bundle's verification (`edgeplug_bundle::verify`: signature, members' digests), as
//!   library calls, median over rounds, next to the ~1 MB digits bundle; and publish →
//!   installed of the 20 MB bundle on 5 gateways (jitter 0), alternated with the small one.
//! - **RSS** (VmRSS, and VmHWM as the peak) of the registry and the broker after each step,
//!   and of the gateway processes.
//! - **the registry's cost per gateway and publish**, measured from its access log (requests
//!   and response bytes of the gateways' pulls) and its CPU time (/proc), and from those a
//!   table for **1,000 gateways**, computed, not measured: bytes and requests per publish and,
//!   spread over the jitter window, the mean request rate and bandwidth.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplug::client::{ChunkedBody, Connection};
use edgeplug_bundle::{BundleLimits, SecretKey, TrustStore};
use edgeplug_fleet::oci::{Pushed, Registry, RegistryOptions};
use edgeplug_fleet::publish::{self, Audience};
use edgeplug_mqtt::BrokerOptions;
use edgeplug_tests::bench::{median, write_json};
use edgeplug_tests::gateway::{bundle_with, digits_bundle, json_of, req};
use edgeplug_tests::mqtt::Collector;
use edgeplug_tests::servers::{TestBroker, TestRegistry, free_port};
use serde_json::{Value, json};

const REPOSITORY: &str = "edgeplug/digits";
/// The gateways' default `pull_jitter_ms` (`edgeplug_fleet::config`).
const DEFAULT_JITTER_MS: u64 = 10_000;
/// The padding file that makes the large bundle ~20 MB.
const LARGE_PADDING: usize = 20 << 20;
/// Only there to turn a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(180);

// ---- the gateway processes ----

/// One `edgeplug serve` process following a group.
struct GatewayProcess {
    id: String,
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl GatewayProcess {
    fn start(
        binary: &Path,
        id: &str,
        group: &str,
        jitter_ms: u64,
        registry: &TestRegistry,
        broker: &TestBroker,
        publisher: &SecretKey,
    ) -> GatewayProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("trust")).unwrap();
        std::fs::write(
            dir.path().join("trust/publisher.pub"),
            publisher.public_key().to_pem(),
        )
        .unwrap();
        let port = free_port();
        // The fleet's defaults but the jitter (retries, keep-alive, status interval).
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\ntrust_dir = \"trust\"\n\n\
             [fleet]\nbroker = \"{}\"\nclient_id = \"{id}\"\ngroup = \"{group}\"\n\
             registry = \"{}\"\nregistry_plain_http = true\npull_jitter_ms = {jitter_ms}\n",
            broker.url(),
            registry.host()
        );
        std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("gateway.toml"))
            .env("EDGEPLUG_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} serve: {e}", binary.display()));
        GatewayProcess {
            id: id.to_string(),
            port,
            child,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The WARN and ERROR lines of its log.
    fn complaints(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(String::from)
            .collect()
    }

    /// The active version of `digits`, asked over HTTP (`GET /v1/plugins`).
    async fn active_version(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/", self.port).parse().unwrap();
        let mut connection = Connection::open(&url, None).await.ok()?;
        let response = connection
            .send(
                req("GET", "/v1/plugins")
                    .body(ChunkedBody::new(Vec::new()))
                    .unwrap(),
            )
            .await
            .ok()?;
        json_of(&response)["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "digits")
            .and_then(|p| p["active"]["version"].as_str().map(String::from))
    }
}

/// SIGTERM to every process, then waits for each (SIGKILL after 10 s).
fn stop_all(gateways: Vec<GatewayProcess>) {
    for gateway in &gateways {
        // SAFETY: kill takes plain integers and touches no memory; the pid is our own child,
        // not yet reaped (it is only reaped below), so it cannot name another process.
        unsafe { libc::kill(gateway.child.id() as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for mut gateway in gateways {
        loop {
            match gateway.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = gateway.child.kill();
                    let _ = gateway.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

// ---- /proc figures ----

/// When, then the registry's and the broker's (VmRSS, VmHWM), KiB.
type MemoryRow = (String, (u64, u64), (u64, u64));

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time of `pid` (its threads included), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf takes an integer and touches no memory.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

// ---- the registry's access log ----

/// The registry's access log (its stdout, found through /proc/PID/fd/1) from a mark on.
struct AccessLog {
    path: PathBuf,
}

/// The GET requests of a stretch of the access log: count and response bytes by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    manifests: (u64, u64),
    blobs: (u64, u64),
    /// `GET /v2/`: oci-client's authentication probe.
    probes: (u64, u64),
}

impl Traffic {
    fn requests(&self) -> u64 {
        self.manifests.0 + self.blobs.0 + self.probes.0
    }
    fn bytes(&self) -> u64 {
        self.manifests.1 + self.blobs.1 + self.probes.1
    }
}

impl AccessLog {
    fn of(pid: u32) -> AccessLog {
        AccessLog {
            path: std::fs::read_link(format!("/proc/{pid}/fd/1")).expect("the registry's stdout"),
        }
    }

    fn mark(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// The GETs logged since `mark` (combined log format: `"GET PATH HTTP/1.1" STATUS BYTES`).
    fn since(&self, mark: u64) -> Traffic {
        let mut file = std::fs::File::open(&self.path).unwrap();
        file.seek(std::io::SeekFrom::Start(mark)).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        let mut traffic = Traffic::default();
        for line in text.lines() {
            let parts: Vec<&str> = line.split('"').collect();
            let (Some(request), Some(result)) = (parts.get(1), parts.get(2)) else {
                continue;
            };
            let mut request = request.split_whitespace();
            if request.next() != Some("GET") {
                continue;
            }
            let path = request.next().unwrap_or("");
            let bytes: u64 = result
                .split_whitespace()
                .nth(1)
                .and_then(|b| b.parse().ok())
                .unwrap_or(0);
            let slot = if path.contains("/manifests/") {
                &mut traffic.manifests
            } else if path.contains("/blobs/") {
                &mut traffic.blobs
            } else if path == "/v2/" {
                &mut traffic.probes
            } else {
                continue;
            };
            slot.0 += 1;
            slot.1 += bytes;
        }
        traffic
    }
}

// ---- publishing and waiting ----

/// Everything a round needs that does not change.
struct Bench {
    binary: PathBuf,
    registry: TestRegistry,
    broker: TestBroker,
    registry_options: RegistryOptions,
    broker_options: BrokerOptions,
    publisher: Arc<SecretKey>,
    log: AccessLog,
}

/// One publish's figures.
struct Round {
    /// Publish start → each gateway's status with the version active, ms.
    installed_ms: Vec<f64>,
    /// The push to the registry and the signed notice, ms.
    push_ms: f64,
    announce_ms: f64,
    /// The gateways' GETs at the registry, and its CPU time, for this publish.
    traffic: Traffic,
    registry_cpu: Duration,
    pushed: Pushed,
}

impl Bench {
    /// Pushes `bundle` and announces it to `group`, then waits until every gateway's status
    /// says `version` is active.
    async fn publish_and_wait(
        &self,
        group: &str,
        gateways: &[GatewayProcess],
        collector: &Collector,
        version: &str,
        bundle: &[u8],
    ) -> Round {
        let seen = collector.count();
        let started = Instant::now();
        let (name, parsed) = publish::bundle_identity(bundle).unwrap();
        let pushed = Registry::new(&self.registry_options)
            .unwrap()
            .push_bundle(REPOSITORY, &name, &parsed, bundle)
            .await
            .unwrap();
        let push_ms = started.elapsed().as_secs_f64() * 1e3;
        // What the gateways fetch from here on is this round's.
        let mark = self.log.mark();
        let cpu_before = cpu_time(self.registry.pid());
        let audience = Audience {
            group: group.to_string(),
            gateway: None,
        };
        publish::announce(
            &pushed,
            &name,
            &parsed,
            &self.broker_options,
            &audience,
            &self.publisher,
        )
        .await
        .unwrap();
        let announce_ms = started.elapsed().as_secs_f64() * 1e3 - push_ms;
        let mut installed: BTreeMap<String, Instant> = BTreeMap::new();
        let mut scanned = seen;
        while installed.len() < gateways.len() {
            let fresh = collector.received.lock().unwrap()[scanned..].to_vec();
            scanned += fresh.len();
            for message in fresh {
                let Ok(status) = serde_json::from_slice::<Value>(&message.payload) else {
                    continue;
                };
                let Some(id) = status["gateway"].as_str() else {
                    continue;
                };
                if status["plugins"]["digits"]["active"] == version {
                    installed.entry(id.to_string()).or_insert(message.at);
                }
            }
            if started.elapsed() > DEADLINE {
                let missing: Vec<&GatewayProcess> = gateways
                    .iter()
                    .filter(|g| !installed.contains_key(&g.id))
                    .collect();
                panic!(
                    "{} gateways not on {version} after {DEADLINE:?}; {}'s log:\n{}",
                    missing.len(),
                    missing[0].id,
                    missing[0].log()
                );
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(50), collector.arrived.notified()).await;
        }
        // The last response is logged as it completes; give the log a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Round {
            installed_ms: installed
                .values()
                .map(|at| (*at - started).as_secs_f64() * 1e3)
                .collect(),
            push_ms,
            announce_ms,
            traffic: self.log.since(mark),
            registry_cpu: cpu_time(self.registry.pid()) - cpu_before,
            pushed,
        }
    }

    /// Starts `n` gateways in `group`, waits until each published its status (connected and
    /// subscribed: its SUBSCRIBE went out before that PUBLISH).
    async fn join(
        &self,
        group: &str,
        n: usize,
        jitter_ms: u64,
    ) -> (Vec<GatewayProcess>, Collector, Duration) {
        let collector = Collector::start(
            self.broker.port,
            &format!("bench-{group}"),
            &[&format!("edgeplug/fleet/{group}/gateways/+/status")],
            false,
        )
        .await;
        let started = Instant::now();
        let gateways: Vec<GatewayProcess> = (0..n)
            .map(|i| {
                GatewayProcess::start(
                    &self.binary,
                    &format!("gw-{i:02}"),
                    group,
                    jitter_ms,
                    &self.registry,
                    &self.broker,
                    &self.publisher,
                )
            })
            .collect();
        loop {
            let online: std::collections::BTreeSet<String> = collector
                .received
                .lock()
                .unwrap()
                .iter()
                .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
                .filter(|s| s["health"] != "offline")
                .filter_map(|s| s["gateway"].as_str().map(String::from))
                .collect();
            if online.len() == n {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{} of {n} gateways online after {DEADLINE:?}; gw-00's log:\n{}",
                online.len(),
                gateways[0].log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (gateways, collector, started.elapsed())
    }
}

/// The nearest-rank quantile of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A ~20 MB signed digits bundle: the digits plugin with a second weights file of
/// pseudo-random bytes (incompressible, loaded and kept like real weights).
fn large_bundle(key: &SecretKey, version: &str) -> Vec<u8> {
    bundle_with(key, version, |dir| {
        let header = format!(
            "{{\"padding\":{{\"dtype\":\"U8\",\"shape\":[{LARGE_PADDING}],\"data_offsets\":[0,{LARGE_PADDING}]}}}}"
        );
        let header = format!("{header:<width$}", width = header.len().div_ceil(8) * 8);
        let mut file = Vec::with_capacity(8 + header.len() + LARGE_PADDING);
        file.extend_from_slice(&(header.len() as u64).to_le_bytes());
        file.extend_from_slice(header.as_bytes());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        while file.len() < 8 + header.len() + LARGE_PADDING {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            file.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        file.truncate(8 + header.len() + LARGE_PADDING);
        std::fs::write(dir.join("padding.safetensors"), file).unwrap();
        let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
        let manifest = manifest.replace(
            "weights = [\"weights.safetensors\"]",
            "weights = [\"weights.safetensors\", \"padding.safetensors\"]",
        );
        assert!(manifest.contains("padding.safetensors"));
        std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    })
}

/// Each gateway process's (VmRSS, VmHWM), KiB.
fn gateway_memory(gateways: &[GatewayProcess]) -> Vec<(u64, u64)> {
    gateways.iter().map(|g| memory_kib(g.child.id())).collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One configuration's measured figures.
struct Measured {
    label: String,
    n: usize,
    jitter_ms: u64,
    installed_ms: Vec<f64>,
    push_ms: Vec<f64>,
    announce_ms: Vec<f64>,
    /// Per gateway and publish.
    requests: f64,
    probes: f64,
    bytes: f64,
    manifest_bytes: f64,
    blob_bytes: f64,
    registry_cpu_ms: f64,
    bundle_bytes: u64,
    /// Each gateway's (VmRSS, VmHWM) after its last publish of this bundle.
    gateway_rss_kib: Vec<(u64, u64)>,
    join: Duration,
}

impl Measured {
    fn new(label: &str, n: usize, jitter_ms: u64) -> Measured {
        Measured {
            label: label.to_string(),
            n,
            jitter_ms,
            installed_ms: Vec::new(),
            push_ms: Vec::new(),
            announce_ms: Vec::new(),
            requests: 0.0,
            probes: 0.0,
            bytes: 0.0,
            manifest_bytes: 0.0,
            blob_bytes: 0.0,
            registry_cpu_ms: 0.0,
            bundle_bytes: 0,
            gateway_rss_kib: Vec::new(),
            join: Duration::ZERO,
        }
    }

    fn add(&mut self, round: &Round) {
        self.installed_ms.extend(&round.installed_ms);
        self.push_ms.push(round.push_ms);
        self.announce_ms.push(round.announce_ms);
        let rounds = self.push_ms.len() as f64;
        let per = |total: u64| total as f64 / self.n as f64;
        // Running means over the rounds.
        let mean = |old: f64, new: f64| old + (new - old) / rounds;
        self.requests = mean(self.requests, per(round.traffic.requests()));
        self.probes = mean(self.probes, per(round.traffic.probes.0));
        self.bytes = mean(self.bytes, per(round.traffic.bytes()));
        self.manifest_bytes = mean(
            self.manifest_bytes,
            round.traffic.manifests.1 as f64 / round.traffic.manifests.0.max(1) as f64,
        );
        self.blob_bytes = mean(self.blob_bytes, per(round.traffic.blobs.1));
        self.registry_cpu_ms = mean(
            self.registry_cpu_ms,
            round.registry_cpu.as_secs_f64() * 1e3 / self.n as f64,
        );
        self.bundle_bytes = round.pushed.size;
    }

    fn json(&self) -> Value {
        let mut sorted = self.installed_ms.clone();
        sorted.sort_by(f64::total_cmp);
        json!({
            "label": self.label, "gateways": self.n, "pull_jitter_ms": self.jitter_ms,
            "bundle_bytes": self.bundle_bytes, "samples": sorted.len(),
            "installed_ms": {"p50": quantile(&sorted, 0.5), "p99": quantile(&sorted, 0.99),
                             "max": sorted.last()},
            "push_ms_median": median(&mut self.push_ms.clone()),
            "announce_ms_median": median(&mut self.announce_ms.clone()),
            "per_gateway_publish": {"requests": self.requests, "probes": self.probes,
                                    "bytes": self.bytes,
                                    "manifest_bytes": self.manifest_bytes,
                                    "blob_bytes": self.blob_bytes,
                                    "registry_cpu_ms": self.registry_cpu_ms},
            "gateway_rss_kib": self.gateway_rss_kib,
            "join_ms": self.join.as_secs_f64() * 1e3,
        })
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (_, rounds) = edgeplug_tests::bench::settings();
    assert!(
        (1..=8).contains(&rounds),
        "EDGEPLUG_BENCH_ROUNDS must be 1 to 8"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let binary = edgeplug_tests::bench::edgeplug_binary();
    let registry = TestRegistry::start();
    let broker = TestBroker::start();
    let bench = Bench {
        binary,
        registry_options: RegistryOptions::new(&registry.host(), true),
        broker_options: BrokerOptions::from_url(&broker.url()).unwrap(),
        publisher: Arc::new(SecretKey::generate()),
        log: AccessLog::of(registry.pid()),
        registry,
        broker,
    };
    let mut memory: Vec<MemoryRow> = Vec::new();
    let mut note_memory = |when: &str, bench: &Bench| {
        memory.push((
            when.to_string(),
            memory_kib(bench.registry.pid()),
            memory_kib(bench.broker.pid()),
        ));
    };
    note_memory("started, empty", &bench);

    // Versions: configuration c, round r (0: the first install, not measured) is `c.r.0`; the
    // 20 MB bundle of round r is `c.r.5`, between two small ones.
    let small = |c: usize, r: usize| digits_bundle(&bench.publisher, &format!("{c}.{r}.0"));
    let configurations: [(&str, usize, u64); 5] = [
        ("N=1, jitter 0", 1, 0),
        ("N=5, jitter 0", 5, 0),
        ("N=20, jitter 0", 20, 0),
        ("N=5, jitter 10 s (default)", 5, DEFAULT_JITTER_MS),
        ("N=20, jitter 10 s (default)", 20, DEFAULT_JITTER_MS),
    ];
    let mut measured = Vec::new();
    // Configuration 2 (N=5, jitter 0) also publishes the 20 MB bundle.
    const LARGE_CONFIGURATION: usize = 2;
    let mut large = Measured::new("20 MB bundle, N=5, jitter 0", 5, 0);
    let mut large_pushed: Option<Pushed> = None;
    let mut small_pushed: Option<Pushed> = None;
    for (c, &(label, n, jitter_ms)) in configurations.iter().enumerate() {
        let c = c + 1;
        let group = format!("bench-{c}");
        let mut figures = Measured::new(label, n, jitter_ms);
        runtime.block_on(async {
            let (gateways, collector, join) = bench.join(&group, n, jitter_ms).await;
            figures.join = join;
            let first = small(c, 0);
            bench
                .publish_and_wait(&group, &gateways, &collector, &format!("{c}.0.0"), &first)
                .await;
            for r in 1..=rounds {
                let version = format!("{c}.{r}.0");
                let bundle = small(c, r);
                let round = bench
                    .publish_and_wait(&group, &gateways, &collector, &version, &bundle)
                    .await;
                figures.add(&round);
                small_pushed = Some(round.pushed.clone());
                figures.gateway_rss_kib = gateway_memory(&gateways);
                // The 20 MB bundle, alternated with the small one, on N=5 at jitter 0.
                if c == LARGE_CONFIGURATION {
                    let version = format!("{c}.{r}.5");
                    let bundle = large_bundle(&bench.publisher, &version);
                    let round = bench
                        .publish_and_wait(&group, &gateways, &collector, &version, &bundle)
                        .await;
                    large.add(&round);
                    large.gateway_rss_kib = gateway_memory(&gateways);
                    large_pushed = Some(round.pushed.clone());
                }
            }
            let last = if c == LARGE_CONFIGURATION {
                format!("{c}.{rounds}.5")
            } else {
                format!("{c}.{rounds}.0")
            };
            for gateway in &gateways {
                assert_eq!(
                    gateway.active_version().await.as_deref(),
                    Some(last.as_str()),
                    "{} over HTTP",
                    gateway.id
                );
            }
            note_memory(&format!("{label}, {n} gateways on"), &bench);
            let complaints: Vec<String> = gateways.iter().flat_map(|g| g.complaints()).collect();
            if let Some(first) = complaints.first() {
                eprintln!(
                    "{label}: {} warnings in the gateways' logs, the first: {first}",
                    complaints.len()
                );
            }
            stop_all(gateways);
        });
        eprintln!("{label}: done");
        measured.push(figures);
    }

    // Pull + verify as library calls, the agent's two steps, alternated small / large.
    let trust_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        trust_dir.path().join("publisher.pub"),
        bench.publisher.public_key().to_pem(),
    )
    .unwrap();
    let trust = TrustStore::load(trust_dir.path()).unwrap();
    let limits = BundleLimits::default();
    let client = Registry::new(&bench.registry_options).unwrap();
    let bundles = [small_pushed.unwrap(), large_pushed.unwrap()];
    // Per bundle: its size, and the pull and verify times of each round, ms.
    let mut pull_verify: Vec<(u64, Vec<f64>, Vec<f64>)> = bundles
        .iter()
        .map(|p| (p.size, Vec::new(), Vec::new()))
        .collect();
    for _ in 0..rounds.max(5) {
        for (pushed, (_, pulls, verifies)) in bundles.iter().zip(&mut pull_verify) {
            let started = Instant::now();
            let bytes = runtime
                .block_on(client.pull_bundle(
                    &pushed.repository,
                    &pushed.digest,
                    pushed.size,
                    limits.max_bundle_bytes,
                ))
                .unwrap();
            pulls.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            let verified = edgeplug_bundle::verify(bytes, &trust, &limits).unwrap();
            verifies.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(verified.size(), pushed.size);
        }
    }
    note_memory("end", &bench);
    let report = print_report(rounds, &measured, &large, &mut pull_verify, &memory);
    let path = write_json("fleet.json", &report);
    println!("\n(also in {})", path.display());
}

fn print_report(
    rounds: usize,
    measured: &[Measured],
    large: &Measured,
    pull_verify: &mut [(u64, Vec<f64>, Vec<f64>)],
    memory: &[MemoryRow],
) -> Value {
    println!(
        "publish -> installed on every gateway (edgeplug serve processes on loopback, one 2-core box),\n\
         {rounds} publishes per configuration after a first install; from the push's start to each\n\
         gateway's status saying the version is active; samples = gateways x publishes"
    );
    println!(
        "{:<29} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "configuration", "bundle", "samples", "p50 ms", "p99 ms", "max ms", "push ms", "notice ms"
    );
    for m in measured.iter().chain([large]) {
        let mut sorted = m.installed_ms.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "{:<29} {:>7.2}MB {:>7} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0}",
            m.label,
            m.bundle_bytes as f64 / 1e6,
            sorted.len(),
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.99),
            sorted.last().unwrap(),
            median(&mut m.push_ms.clone()),
            median(&mut m.announce_ms.clone()),
        );
    }
    println!(
        "(push and notice: medians; the notice includes the publisher's 500 ms wait for the topic's retained notice)"
    );

    println!(
        "\npull + verify as library calls (oci::Registry::pull_bundle by digest, then edgeplug_bundle::verify),\n\
         median of {} rounds, alternated:",
        pull_verify[0].1.len()
    );
    println!(
        "{:>10} {:>9} {:>10} {:>9} {:>9}",
        "bundle", "pull ms", "verify ms", "total ms", "MB/s"
    );
    let mut pull_json = Vec::new();
    for (size, pulls, verifies) in pull_verify.iter_mut() {
        let totals: Vec<f64> = pulls
            .iter()
            .zip(verifies.iter())
            .map(|(p, v)| p + v)
            .collect();
        let (pull, verify, total) = (median(pulls), median(verifies), median(&mut totals.clone()));
        println!(
            "{:>8.2}MB {:>9.1} {:>10.1} {:>9.1} {:>9.0}",
            *size as f64 / 1e6,
            pull,
            verify,
            total,
            *size as f64 / 1e6 / (total / 1e3)
        );
        pull_json.push(
            json!({"bundle_bytes": size, "pull_ms": pull, "verify_ms": verify, "total_ms": total}),
        );
    }

    println!("\nmemory (VmRSS, and VmHWM = peak so far), MiB:");
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "after", "registry", "reg.peak", "broker", "brk.peak"
    );
    for (when, (reg_rss, reg_hwm), (brk_rss, brk_hwm)) in memory {
        println!(
            "{:<44} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            when,
            mib(*reg_rss),
            mib(*reg_hwm),
            mib(*brk_rss),
            mib(*brk_hwm)
        );
    }
    println!(
        "\nthe gateway processes (edgeplug serve), MiB, after their last publish of the bundle:"
    );
    println!(
        "{:<29} {:>10} {:>10} {:>10} {:>8}",
        "configuration", "RSS med.", "RSS max", "peak max", "up in s"
    );
    for m in measured.iter().chain([large]) {
        let mut rss: Vec<f64> = m.gateway_rss_kib.iter().map(|k| mib(k.0)).collect();
        let peak = m.gateway_rss_kib.iter().map(|k| k.1).max().unwrap_or(0);
        println!(
            "{:<29} {:>10.1} {:>10.1} {:>10.1} {:>8.1}",
            m.label,
            median(&mut rss),
            rss.last().unwrap(),
            mib(peak),
            m.join.as_secs_f64()
        );
    }

    println!(
        "\nthe registry per gateway and publish, measured (its access log: the gateways' GETs and\n\
         response body bytes, HTTP headers not counted; its CPU time from /proc):"
    );
    println!(
        "{:<29} {:>8} {:>7} {:>10} {:>11} {:>11} {:>8}",
        "configuration", "requests", "probes", "manifest B", "blob B", "total B", "CPU ms"
    );
    for m in measured.iter().chain([large]) {
        println!(
            "{:<29} {:>8.2} {:>7.2} {:>10.0} {:>11.0} {:>11.0} {:>8.2}",
            m.label,
            m.requests,
            m.probes,
            m.manifest_bytes,
            m.blob_bytes,
            m.bytes,
            m.registry_cpu_ms
        );
    }
    println!(
        "(probes: GET /v2/, which oci-client sends before every manifest and blob GET when the\n\
         registry asks for no authentication: it caches no answer that carries no token)"
    );

    // The derived table: the default-jitter N=20 figures for the small bundle (pulls spread as
    // a fleet's are), the 20 MB ones for the large.
    const FLEET: f64 = 1000.0;
    let bases = [&measured[measured.len() - 1], large];
    println!(
        "\n1,000 gateways: COMPUTED from the measured per-gateway figures above (not measured):\n\
         per publish, and spread evenly over the pull jitter window (each gateway waits a uniform\n\
         random 0..pull_jitter_ms before its pull, default {DEFAULT_JITTER_MS} ms)"
    );
    println!(
        "{:>9} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10} {:>10}",
        "bundle", "requests", "GB", "CPU s", "jitter", "req/s", "MB/s", "CPU cores"
    );
    let mut derived = Vec::new();
    for base in bases {
        let requests = base.requests * FLEET;
        let bytes = base.bytes * FLEET;
        let cpu_s = base.registry_cpu_ms * FLEET / 1e3;
        for jitter_s in [DEFAULT_JITTER_MS as f64 / 1e3, 60.0, 600.0] {
            println!(
                "{:>7.2}MB {:>10.0} {:>10.2} {:>10.1} {:>7.0}s {:>9.1} {:>10.1} {:>10.2}",
                base.bundle_bytes as f64 / 1e6,
                requests,
                bytes / 1e9,
                cpu_s,
                jitter_s,
                requests / jitter_s,
                bytes / 1e6 / jitter_s,
                cpu_s / jitter_s
            );
            derived.push(json!({
                "bundle_bytes": base.bundle_bytes, "gateways": FLEET, "pull_jitter_s": jitter_s,
                "requests": requests, "bytes": bytes, "registry_cpu_s": cpu_s,
                "mean_requests_per_s": requests / jitter_s, "mean_bytes_per_s": bytes / jitter_s,
                "mean_registry_cores": cpu_s / jitter_s,
            }));
        }
    }
    println!(
        "(the broker carries one retained notice per publish, fanned out to 1,000 sessions, and\n\
         each gateway's status on every change and every status_interval_ms, default 10 s)"
    );

    json!({
        "rounds": rounds,
        "publish_to_installed": measured.iter().chain([large]).map(Measured::json).collect::<Vec<_>>(),
        "pull_verify": pull_json,
        "memory_kib": memory.iter().map(|(when, reg, brk)| json!({
            "after": when, "registry_rss": reg.0, "registry_hwm": reg.1,
            "broker_rss": brk.0, "broker_hwm": brk.1,
        })).collect::<Vec<_>>(),
        "derived_1000_gateways": derived,
    })
}
