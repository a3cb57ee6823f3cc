//! Shared-subscription scaling (issue 15): N = 1, 2 and 4 gateway processes in one MQTT 5
//! shared subscription (`share = "bench"`: each subscribes `$share/bench/devices/+/digits`)
//! split one device's stream of digits messages (`seven.json`, QoS 1). Per N: messages/s and
//! p50/p99 from the device's publish to its result's arrival at a collector, efficiency =
//! throughput / (N × single-gateway throughput), how many results each gateway produced (from
//! the records' `gateway`), and the CPU the broker, the gateways and this process (device and
//! collector) used, in cores.
//!
//! `cargo bench -p edgeplug-tests --bench shared_subscription` (each run `EDGEPLUG_BENCH_SECS`,
//! default 5 s, after a 1 s warm-up; `EDGEPLUG_BENCH_ROUNDS` rounds, default 3, each running
//! N = 1, 2, 4 in turn; medians printed). Needs Debian's `mosquitto`, started here on a free
//! port.
//!
//! Each gateway is `edgeplug serve` in a child process (this benchmark's own binary again,
//! release build, calling `edgeplug::cli_serve::run_serve`), with its own state directory, and
//! limited to ONE CORE: the child pins itself with `sched_setaffinity` to one CPU before it
//! starts any thread (gateway i on the i-th CPU this process may use, modulo their count), runs
//! one tokio worker (`TOKIO_WORKER_THREADS=1`; the blocking pool that runs wasm is pinned with
//! it) and `intra_op_threads = 1` (a model run borrows no idle core). So "one gateway" means
//! "one core's worth of gateway", and N gateways could at best do N times as much, if the
//! machine had the cores. On a 2-core machine it has not: with N = 1 the broker, device and
//! collector (unpinned) have the other core to themselves; with N = 2 they compete with both
//! gateways; with N = 4 two gateways share each core, so throughput cannot pass the N = 2
//! figure and efficiency is at most 2/4. What the figure shows is how evenly mosquitto spreads
//! the stream over the members and what the broker hop costs (its CPU column).
//!
//! The device keeps `OUTSTANDING` messages in flight (closed loop: each answered one is
//! replaced), enough to keep 4 gateways busy (each takes up to `in_flight` = 32 at once).
//! After each run the device stops and the outstanding messages are awaited; every result must
//! carry label 7, and lost (no result within 30 s) and duplicated results are counted and must
//! be 0. Every configuration starts fresh processes with fresh client ids and a 1 s session
//! expiry, so that the stopped members of the previous configuration leave the group (mosquitto
//! keeps handing messages to a disconnected member whose session lives).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgeplug_tests::bench::median;
use edgeplug_tests::gateway::{digits_bundle, write_gateway_dir};
use edgeplug_tests::mqtt::{Collector, Device};
use edgeplug_tests::pinned::{PinnedGateway, allowed_cpus, load_average};
use edgeplug_tests::servers::TestBroker;

const OUTSTANDING: usize = 32;
const SIZES: [usize; 3] = [1, 2, 4];
const WARM_UP: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_secs(30);

/// CPU time (user + system) a process has used so far; `None` once it is gone.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(Duration::from_secs_f64(ticks as f64 / per_second))
}

/// One gateway's directory, kept for the whole benchmark (its compile cache too).
struct Member {
    dir: tempfile::TempDir,
    bundle: PathBuf,
}

/// Starts `serve` for `member` as MQTT client `name` on `cpu` and waits until it listens.
fn serve_member(member: &Member, broker: &TestBroker, name: &str, cpu: usize) -> PinnedGateway {
    let config = format!(
        "intra_op_threads = 1\n\n[mqtt]\nbroker = \"{}\"\nclient_id = \"{name}\"\n\
         session_expiry_secs = 1\nkeep_alive_secs = 5\n\n[[triggers]]\n\
         topic = \"devices/+/digits\"\nshare = \"bench\"\nplugin = \"digits\"\n\
         content_type = \"application/json\"\nresult_topic = \"results/{{device}}/{{plugin}}\"\n",
        broker.url()
    );
    let path = member.dir.path().join("gateway.toml");
    std::fs::write(&path, edgeplug_tests::gateway::gateway_toml(&config)).unwrap();
    PinnedGateway::start(name, cpu, &path, None, &member.bundle)
}

/// One run's figures.
#[derive(Default)]
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: usize,
    duplicates: usize,
    wrong: usize,
    /// Results in the measured window, by gateway.
    by_gateway: BTreeMap<String, usize>,
    /// CPU used during the measured window, in cores: broker, gateways, this process.
    broker_cores: f64,
    gateway_cores: f64,
    client_cores: f64,
}

/// What a record says: its id, gateway and label.
fn parse(record: &edgeplug_tests::mqtt::Received) -> (String, String, Option<i64>) {
    let json = record.json();
    (
        json["id"].as_str().unwrap_or_default().to_string(),
        json["gateway"].as_str().unwrap_or_default().to_string(),
        json["output"]["label"].as_i64(),
    )
}

/// Closed loop of `OUTSTANDING` messages with ids `{prefix}-K` for `duration`, then waits for
/// the outstanding ones. `pids` are the processes whose CPU is measured over the window:
/// broker, gateways.
async fn run_load(
    device: &Device,
    collector: &Collector,
    body: &[u8],
    prefix: &str,
    duration: Duration,
    broker_pid: &str,
    gateway_pids: &[String],
) -> Figures {
    let cpu = |pids: &[String]| -> Duration { pids.iter().filter_map(|p| cpu_time(p)).sum() };
    let broker = [broker_pid.to_string()];
    let me = ["self".to_string()];
    let before = (cpu(&broker), cpu(gateway_pids), cpu(&me));
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut answered: HashSet<String> = HashSet::new();
    let mut figures = Figures::default();
    let mut latencies = Vec::new();
    let mut next = 0usize;
    let mut seen = collector.count();
    let started = Instant::now();
    let mut window_end = None;
    loop {
        let in_window = started.elapsed() < duration;
        if !in_window && window_end.is_none() {
            window_end = Some((started.elapsed(), cpu(&broker), cpu(gateway_pids), cpu(&me)));
        }
        if !in_window && (sent.is_empty() || started.elapsed() > duration + DRAIN) {
            break;
        }
        while in_window && sent.len() < OUTSTANDING {
            let id = format!("{prefix}-{next}");
            next += 1;
            sent.insert(id.clone(), Instant::now());
            device
                .publish_with_id("devices/bench/digits", body.to_vec(), &id)
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), collector.arrived.notified()).await;
        let received = collector.received.lock().unwrap()[seen..].to_vec();
        seen += received.len();
        for record in received {
            let (id, gateway, label) = parse(&record);
            if !id.starts_with(&format!("{prefix}-")) {
                continue; // a probe, or a previous phase's
            }
            if label != Some(7) {
                figures.wrong += 1;
                eprintln!(
                    "a wrong answer: {}",
                    String::from_utf8_lossy(&record.payload)
                );
            }
            if let Some(at) = sent.remove(&id) {
                answered.insert(id);
                if record.at - started < duration {
                    latencies.push(record.at - at);
                    *figures.by_gateway.entry(gateway).or_default() += 1;
                }
            } else {
                // Answered already, or never sent.
                figures.duplicates += 1;
            }
        }
    }
    // Late duplicates of what was answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for record in collector.received.lock().unwrap()[seen..].iter() {
        if parse(record).0.starts_with(&format!("{prefix}-")) {
            figures.duplicates += 1;
        }
    }
    figures.lost = sent.len();
    let (elapsed, broker_end, gateways_end, me_end) = window_end.unwrap();
    let cores =
        |a: Duration, b: Duration| (a.saturating_sub(b)).as_secs_f64() / elapsed.as_secs_f64();
    figures.broker_cores = cores(broker_end, before.0);
    figures.gateway_cores = cores(gateways_end, before.1);
    figures.client_cores = cores(me_end, before.2);
    latencies.sort();
    let quantile =
        |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    figures.per_second = latencies.len() as f64 / elapsed.as_secs_f64();
    figures.p50_ms = quantile(0.5);
    figures.p99_ms = quantile(0.99);
    figures
}

/// Sends probes (ids `probe-K`) until every gateway of `names` has answered one: the broker
/// hands a member messages only once its subscription exists.
async fn await_members(device: &Device, collector: &Collector, body: &[u8], names: &[String]) {
    let seen_from = collector.count();
    let started = Instant::now();
    let mut probe = 0;
    loop {
        let answering: HashSet<String> = collector.received.lock().unwrap()[seen_from..]
            .iter()
            .map(|r| parse(r).1)
            .collect();
        if names.iter().all(|n| answering.contains(n)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {answering:?} of {names:?} answered probes"
        );
        device
            .publish_with_id(
                "devices/bench/digits",
                body.to_vec(),
                &format!("probe-{probe}"),
            )
            .await;
        probe += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last probes come back before the load starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn main() {
    edgeplug_tests::pinned::serve_child();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (duration, rounds) = edgeplug_tests::bench::settings();
    let begun = Instant::now();
    let cpus = allowed_cpus();
    let load_before = load_average();
    let clients = edgeplug_tests::bench::server_runtime();
    let broker = TestBroker::start_with("max_queued_messages 1000000\n");
    let members: Vec<Member> = (0..SIZES[SIZES.len() - 1])
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let (key, _) = write_gateway_dir(dir.path(), "");
            let bundle = dir.path().join("digits.epk");
            std::fs::write(&bundle, digits_bundle(&key, "1.0.0")).unwrap();
            Member { dir, bundle }
        })
        .collect();
    let seven = std::fs::read(edgeplug_tests::fixture("digits/seven.json")).unwrap();
    let (device, collector) = clients.block_on(async {
        (
            Device::connect(broker.port, "bench-device").await,
            Collector::start(broker.port, "bench-center", &["results/#"], false).await,
        )
    });
    let broker_pid = broker.pid().to_string();
    // Per N, the rounds' figures.
    let mut runs: BTreeMap<usize, Vec<Figures>> = BTreeMap::new();
    for round in 1..=rounds {
        for n in SIZES {
            let names: Vec<String> = (0..n).map(|i| format!("gw-r{round}-n{n}-{i}")).collect();
            let served: Vec<PinnedGateway> = names
                .iter()
                .enumerate()
                .map(|(i, name)| serve_member(&members[i], &broker, name, cpus[i % cpus.len()]))
                .collect();
            let pids: Vec<String> = served.iter().map(|s| s.pid().to_string()).collect();
            let figures = clients.block_on(async {
                await_members(&device, &collector, &seven, &names).await;
                let prefix = format!("w{round}-{n}");
                let warm = run_load(
                    &device,
                    &collector,
                    &seven,
                    &prefix,
                    WARM_UP,
                    &broker_pid,
                    &pids,
                )
                .await;
                assert_eq!(warm.lost + warm.duplicates + warm.wrong, 0, "warm-up");
                let prefix = format!("r{round}-{n}");
                run_load(
                    &device,
                    &collector,
                    &seven,
                    &prefix,
                    duration,
                    &broker_pid,
                    &pids,
                )
                .await
            });
            eprintln!(
                "round {round}, {n} gateway(s): {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, by gateway {:?}, lost {}, duplicates {}, wrong {}",
                figures.per_second,
                figures.p50_ms,
                figures.p99_ms,
                figures.by_gateway.values().collect::<Vec<_>>(),
                figures.lost,
                figures.duplicates,
                figures.wrong
            );
            for gateway in served {
                gateway.stop();
            }
            // Their sessions (1 s expiry), and with them their places in the group, go.
            std::thread::sleep(Duration::from_millis(2500));
            runs.entry(n).or_default().push(figures);
        }
    }
    println!(
        "digits on seven.json over $share/bench/devices/+/digits, {OUTSTANDING} outstanding, \
         each gateway pinned to 1 of {} CPU(s), {rounds} rounds of {duration:?}, medians:",
        cpus.len()
    );
    println!(
        "{:>2} {:>8} {:>6} {:>8} {:>8} {:>18} {:>7} {:>7} {:>7} {:>5} {:>5} {:>5}",
        "N",
        "msg/s",
        "eff",
        "p50 ms",
        "p99 ms",
        "split %",
        "broker",
        "gws",
        "device",
        "lost",
        "dups",
        "wrong"
    );
    let mut json = serde_json::Map::new();
    let mut single = None;
    let mut failures = 0;
    for (n, figures) in &runs {
        let med =
            |f: &dyn Fn(&Figures) -> f64| median(&mut figures.iter().map(f).collect::<Vec<_>>());
        let per_second = med(&|f| f.per_second);
        let single = *single.get_or_insert(per_second);
        let efficiency = per_second / (*n as f64 * single);
        let total: usize = figures.iter().flat_map(|f| f.by_gateway.values()).sum();
        let mut split = vec![0usize; *n];
        for f in figures {
            for (i, count) in f.by_gateway.values().enumerate() {
                split[i] += count;
            }
        }
        let split: Vec<f64> = split
            .iter()
            .map(|&c| c as f64 * 100.0 / total as f64)
            .collect();
        let lost: usize = figures.iter().map(|f| f.lost).sum();
        let duplicates: usize = figures.iter().map(|f| f.duplicates).sum();
        let wrong: usize = figures.iter().map(|f| f.wrong).sum();
        failures += lost + duplicates + wrong;
        let (p50, p99) = (med(&|f| f.p50_ms), med(&|f| f.p99_ms));
        let (broker_cores, gateway_cores, client_cores) = (
            med(&|f| f.broker_cores),
            med(&|f| f.gateway_cores),
            med(&|f| f.client_cores),
        );
        let split_text = split
            .iter()
            .map(|s| format!("{s:.0}"))
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{n:>2} {per_second:>8.0} {efficiency:>6.2} {p50:>8.2} {p99:>8.2} {split_text:>18} \
             {broker_cores:>7.2} {gateway_cores:>7.2} {client_cores:>7.2} {lost:>5} {duplicates:>5} {wrong:>5}"
        );
        json.insert(
            n.to_string(),
            serde_json::json!({
                "per_second": per_second, "efficiency": efficiency, "p50_ms": p50, "p99_ms": p99,
                "split_percent": split, "broker_cores": broker_cores,
                "gateway_cores": gateway_cores, "client_cores": client_cores,
                "lost": lost, "duplicates": duplicates, "wrong": wrong,
                "per_round": figures.iter().map(|f| serde_json::json!({
                    "per_second": f.per_second, "by_gateway": f.by_gateway,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    println!(
        "eff = msg/s / (N x msg/s at N=1); split = each gateway's share of the results; \
         broker/gws/device = CPU used, in cores (gws: all gateways together); lost/dups/wrong \
         summed over rounds. Total {:.0?}; load average (1 min) {load_before} before, {} after: \
         anything else running shares the cores.",
        begun.elapsed(),
        load_average()
    );
    edgeplug_tests::bench::write_json("shared_subscription.json", &json);
    assert_eq!(failures, 0, "lost, duplicated or wrong results");
}
