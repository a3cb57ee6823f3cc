//! MQTT triggers next to HTTP for the same plugin (digits, on `seven.json`), measured in one
//! run, alternated: messages/s and p50/p99 from a device's publish to its result's arrival,
//! against requests/s and p50/p99 of `POST /v1/plugins/digits/infer`, both closed loops with 8
//! outstanding.
//!
//! `cargo bench -p edgeplug-tests --bench triggers` (each run `EDGEPLUG_BENCH_SECS`, default
//! 5 s; `EDGEPLUG_BENCH_ROUNDS` rounds, default 3; medians printed). Needs Debian's
//! `mosquitto`, started here on a free port. The gateway runs on one tokio worker (plus the
//! blocking pool that runs wasm); the HTTP load in a child process (`load::run_in_child`); the
//! MQTT device and collector on a thread of this process, with the broker as a third process.
//! A trigger's latency includes two broker hops (device → broker → gateway, gateway → broker
//! → collector) that an HTTP request does not make.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use edgeplug_tests::gateway::{TestGateway, digits_bundle};
use edgeplug_tests::load::{self, Target};
use edgeplug_tests::mqtt::{Collector, Device};
use edgeplug_tests::servers::TestBroker;
use hyper::body::Bytes;

const OUTSTANDING: usize = 8;

/// A path's name and its per-round messages/s, p50 and p99 (ms).
type Row = (&'static str, Vec<f64>, Vec<f64>, Vec<f64>);

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Closed loop: `OUTSTANDING` messages in flight; each answered one is replaced.
async fn trigger_load(
    device: &Device,
    collector: &Collector,
    body: &[u8],
    run: usize,
    duration: Duration,
) -> Figures {
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut next = 0usize;
    let mut seen = collector.count();
    let started = Instant::now();
    while started.elapsed() < duration {
        while sent.len() < OUTSTANDING {
            let id = format!("r{run}-{next}");
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
            let json = record.json();
            assert!(json["output"]["label"] == 7, "a wrong answer: {json}");
            if let Some(at) = json["id"].as_str().and_then(|id| sent.remove(id)) {
                latencies.push(record.at - at);
            }
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(0.5),
        p99: quantile(0.99),
    }
}

fn main() {
    load::serve_child_load();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (duration, rounds) = edgeplug_tests::bench::settings();
    let server = edgeplug_tests::bench::server_runtime();
    let clients = edgeplug_tests::bench::server_runtime();
    let broker = TestBroker::start_with("max_queued_messages 1000000\n");
    let config = format!(
        "[mqtt]\nbroker = \"{}\"\nclient_id = \"gw-bench\"\n\n[[triggers]]\n\
         topic = \"devices/+/digits\"\nplugin = \"digits\"\ncontent_type = \"application/json\"\n\
         result_topic = \"results/{{device}}/{{plugin}}\"\n",
        broker.url()
    );
    let (gw, _triggers) = server.block_on(async {
        let gw = TestGateway::start(&config).await;
        let pushed = gw.push("digits", digits_bundle(&gw.key, "1.0.0")).await;
        assert_eq!(pushed.status(), 200);
        let triggers = edgeplug_triggers::start_if_configured(gw.gateway.clone(), gw.dir.path())
            .unwrap()
            .unwrap();
        (gw, triggers)
    });
    let seven = std::fs::read(edgeplug_tests::fixture("digits/seven.json")).unwrap();
    let (device, collector) = clients.block_on(async {
        (
            Device::connect(broker.port, "bench-device").await,
            Collector::start(broker.port, "bench-center", &["results/#"], false).await,
        )
    });
    let target = Target::post(
        gw.addr,
        "/v1/plugins/digits/infer",
        "application/json",
        Bytes::from(seven.clone()),
    );
    // Warm both paths.
    clients.block_on(trigger_load(
        &device,
        &collector,
        &seven,
        0,
        Duration::from_secs(1),
    ));
    load::run_in_child(&target, OUTSTANDING, Duration::from_secs(1));
    let mut rows: [Row; 2] = [
        ("MQTT trigger", Vec::new(), Vec::new(), Vec::new()),
        ("HTTP /v1 infer", Vec::new(), Vec::new(), Vec::new()),
    ];
    for round in 1..=rounds {
        let mqtt = clients.block_on(trigger_load(&device, &collector, &seven, round, duration));
        let http = load::run_in_child(&target, OUTSTANDING, duration);
        assert_eq!(http.failed(), 0, "HTTP failures: {:?}", http.statuses);
        for (row, figures) in rows.iter_mut().zip([
            mqtt,
            Figures {
                per_second: http.per_second(),
                p50: http.quantile(0.5),
                p99: http.quantile(0.99),
            },
        ]) {
            row.1.push(figures.per_second);
            row.2.push(figures.p50.as_secs_f64() * 1e3);
            row.3.push(figures.p99.as_secs_f64() * 1e3);
        }
    }
    println!(
        "digits on seven.json, {OUTSTANDING} outstanding, {rounds} rounds of {duration:?}, medians:"
    );
    println!(
        "{:<16} {:>10} {:>9} {:>9}",
        "path", "per s", "p50 ms", "p99 ms"
    );
    let mut json = serde_json::Map::new();
    for (name, per_second, p50, p99) in &mut rows {
        let (per_second, p50, p99) = (
            edgeplug_tests::bench::median(per_second),
            edgeplug_tests::bench::median(p50),
            edgeplug_tests::bench::median(p99),
        );
        println!("{name:<16} {per_second:>10.0} {p50:>9.3} {p99:>9.3}");
        json.insert(
            name.to_string(),
            serde_json::json!({"per_second": per_second, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    edgeplug_tests::bench::write_json("triggers.json", &json);
    drop(gw);
}
