//! The gateway over HTTP/1.1 keep-alive on loopback, next to a bare hyper hello-world
//! measured in the same run:
//!
//! * requests/s and p50/p99 of the trivial plugin (`echo`, which keeps its instance for up to
//!   1000 requests, and the same plugin on a gateway that caps that at one) and of the digits
//!   plugin;
//! * p99 of the digits plugin while new versions are pushed back to back, vs steady state;
//! * p99 of `echo` while misbehaving plugins (an infinite loop, a memory hog, a panic) are
//!   hammered at the same time, vs `echo` alone.
//!
//! `cargo bench -p edgeplug-tests --bench gateway` (each figure runs `EDGEPLUG_BENCH_SECS`,
//! default 5 s). Prints a table and writes `target/bench/gateway.json`. The server runs on
//! one tokio worker (plus the blocking pool that runs wasm); the load generator in a child
//! process per load (one thread, 8 connections), as an outside client would be
//! (`EDGEPLUG_BENCH_IN_PROCESS_CLIENT=1` runs it on a thread of this process instead, where
//! it shares the server's TLB flushes; see `load::run_in_child`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgeplug_tests::gateway::{
    TestGateway, assert_status, bundle_with, digits_bundle, test_plugin_bundle,
};
use edgeplug_tests::load::{self, LoadResult, Target};
use hyper::body::Bytes;
use serde_json::json;

const CONNECTIONS: usize = 8;

/// The echo plugin with the instance reuse its manifest asks for turned off by the gateway.
const FRESH_ECHO: &str = "gateway echo, a fresh instance per request";

/// The test plugins that misbehave at run time (`forbidden-import` never loads).
const MISBEHAVING: [&str; 8] = [
    "panic",
    "unreachable",
    "infinite-loop",
    "memory-hog",
    "deep-recursion",
    "huge-output",
    "tensor-hog",
    "wrong-shape",
];

fn main() {
    load::serve_child_load();
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` asks for a listing; there is nothing to list.
        return;
    }
    let seconds: u64 = std::env::var("EDGEPLUG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let server = edgeplug_tests::bench::server_runtime();
    let hello = server.block_on(hello_world());
    let gw = server.block_on(async {
        let gw = TestGateway::start("[limits]\nconcurrency = 64\n").await;
        let key = gw.key.clone();
        let bundles = tokio::task::spawn_blocking(move || {
            let digits = bundle_with(&key, "1.0.0", |dir| {
                let path = dir.join("plugin.toml");
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, text.replace("concurrency = 8", "concurrency = 32")).unwrap();
            });
            let mut bundles = vec![("digits", digits)];
            for name in MISBEHAVING.iter().chain(&["echo"]) {
                bundles.push((*name, test_plugin_bundle(&key, name)));
            }
            bundles
        })
        .await
        .unwrap();
        for (name, bundle) in bundles {
            assert_status(&gw.push(name, bundle).await, 200);
        }
        gw
    });

    // What a client of each misbehaving plugin sees, and after how long (one request each,
    // before any load, so none is demoted yet).
    println!(
        "{:<16} {:>6} {:<26} {:>12}",
        "misbehaviour", "status", "error code", "time ms"
    );
    for name in MISBEHAVING {
        let started = std::time::Instant::now();
        let response = server.block_on(gw.post(
            &format!("/v1/plugins/{name}/infer"),
            "application/json",
            "[1, 2, 3]",
        ));
        let elapsed = started.elapsed();
        println!(
            "{name:<16} {:>6} {:<26} {:>12.2}",
            response.status().as_u16(),
            edgeplug_tests::gateway::error_code(&response),
            elapsed.as_secs_f64() * 1e3
        );
    }
    println!();

    // The same echo plugin on a gateway whose cap gives every request a fresh instance (echo's
    // manifest asks to keep instances for up to 1000 requests).
    let fresh = server.block_on(async {
        let fresh =
            TestGateway::start("[limits]\nconcurrency = 64\nrequests_per_instance = 1\n").await;
        let key = fresh.key.clone();
        let echo = tokio::task::spawn_blocking(move || test_plugin_bundle(&key, "echo"))
            .await
            .unwrap();
        assert_status(&fresh.push("echo", echo).await, 200);
        fresh
    });

    let seven = Bytes::from(std::fs::read(edgeplug_tests::fixture("digits/seven.json")).unwrap());
    let echo_body = Bytes::from_static(br#"{"hello": "edge"}"#);
    let echo = Target::post(
        gw.addr,
        "/v1/plugins/echo/infer",
        "application/json",
        echo_body.clone(),
    );
    let echo_fresh = Target::post(
        fresh.addr,
        "/v1/plugins/echo/infer",
        "application/json",
        echo_body,
    );
    let digits = Target::post(
        gw.addr,
        "/v1/plugins/digits/infer",
        "application/json",
        seven,
    );
    let mut table = Table::default();

    table.add(
        "bare hyper hello-world",
        client_load(&Target::get(hello, "/"), CONNECTIONS, duration),
    );
    table.add(
        "gateway GET /v2/health/live (no plugin)",
        client_load(
            &Target::get(gw.addr, "/v2/health/live"),
            CONNECTIONS,
            duration,
        ),
    );
    table.add(
        "gateway echo (trivial plugin)",
        client_load(&echo, CONNECTIONS, duration),
    );
    table.add(FRESH_ECHO, client_load(&echo_fresh, CONNECTIONS, duration));
    if std::env::var_os("EDGEPLUG_BENCH_RUNTIME_LOOP").is_some() {
        // Only the runtime, no HTTP: for counting what one request costs (strace, perf).
        let echo_plugin = gw.gateway.registry.get("echo").expect("echo is active");
        let request = edgeplug_runtime::InferRequest {
            content_type: "application/json".into(),
            body: br#"{"hello": "edge"}"#.to_vec(),
            tensors: Vec::new(),
        };
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            echo_plugin.plugin.infer(request.clone()).unwrap();
        }
        println!(
            "10000 echo requests through the runtime: {:?}",
            started.elapsed()
        );
        return;
    }
    if std::env::var_os("EDGEPLUG_BENCH_ECHO_ONLY").is_some() {
        // For profiling the trivial plugin's path: the two figures its target compares.
        table.print();
        for row in ["gateway echo (trivial plugin)", FRESH_ECHO] {
            let r = table.get(row).per_second() / table.get("bare hyper hello-world").per_second();
            println!("{row} / hello-world requests/s: {r:.2} (target >= 0.5)");
        }
        return;
    }
    table.add(
        "gateway digits (JSON 8x8)",
        client_load(&digits, CONNECTIONS, duration),
    );

    // Digits while versions are pushed back to back from another thread.
    let pushing = Arc::new(AtomicBool::new(true));
    let pusher = {
        let (pushing, key, url) = (pushing.clone(), gw.key.clone(), gw.url());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut pushes = 0u32;
            for n in 101..999u32 {
                if !pushing.load(Ordering::Relaxed) {
                    break;
                }
                let version = format!("{}.{}.{}", n / 100, (n / 10) % 10, n % 10);
                let bundle = digits_bundle(&key, &version);
                let status = runtime.block_on(push(&url, bundle));
                assert_eq!(status, 200, "push of {version}");
                pushes += 1;
            }
            pushes
        })
    };
    let swapping = client_load(&digits, CONNECTIONS, 3 * duration);
    pushing.store(false, Ordering::Relaxed);
    let pushes = pusher.join().unwrap();
    table.add(&format!("gateway digits during {pushes} pushes"), swapping);

    // The neighbour alone, beside a well-behaved load of the same shape (the control: what
    // sharing two cores costs anyway), then beside each misbehaving plugin under load.
    table.add("echo alone", client_load(&echo, CONNECTIONS, duration));
    for name in ["echo", "infinite-loop", "memory-hog", "panic"] {
        let bad = Target::post(
            gw.addr,
            &format!("/v1/plugins/{name}/infer"),
            "application/json",
            "[1, 2, 3]",
        );
        let hammer = std::thread::spawn(move || client_load(&bad, 4, duration));
        let neighbour = client_load(&echo, CONNECTIONS, duration);
        let bad_result = hammer.join().unwrap();
        table.add(&format!("echo beside {name} under load"), neighbour);
        table.add(&format!("  ({name} itself)"), bad_result);
    }

    table.print();
    // The runtime alone, without HTTP, in this thread: echo on a kept instance, and on a
    // fresh instance per request (instantiate + call + drop).
    let request = edgeplug_runtime::InferRequest {
        content_type: "application/json".into(),
        body: br#"{"hello": "edge"}"#.to_vec(),
        tensors: Vec::new(),
    };
    for (what, gateway) in [("kept instance", &gw), ("fresh instance", &fresh)] {
        let echo_plugin = gateway
            .gateway
            .registry
            .get("echo")
            .expect("echo is active");
        let mut times: Vec<Duration> = (0..20_000)
            .map(|_| {
                let started = std::time::Instant::now();
                echo_plugin.plugin.infer(request.clone()).unwrap();
                started.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "echo through the runtime alone, {what} (no HTTP): median {:.1} us, p99 {:.1} us",
            times[times.len() / 2].as_secs_f64() * 1e6,
            times[times.len() * 99 / 100].as_secs_f64() * 1e6
        );
    }
    let ratio = |a: &str, b: &str, f: fn(&LoadResult) -> f64| f(table.get(a)) / f(table.get(b));
    let rps = |r: &LoadResult| r.per_second();
    let p99 = |r: &LoadResult| r.quantile(0.99).as_secs_f64();
    let swap_name = format!("gateway digits during {pushes} pushes");
    println!();
    println!(
        "echo / hello-world requests/s: {:.2} (target >= 0.5)",
        ratio(
            "gateway echo (trivial plugin)",
            "bare hyper hello-world",
            rps
        )
    );
    println!(
        "echo, fresh instance per request / hello-world requests/s: {:.2}",
        ratio(FRESH_ECHO, "bare hyper hello-world", rps)
    );
    println!(
        "digits p99 during swaps / steady: {:.2} (target <= 2)",
        ratio(&swap_name, "gateway digits (JSON 8x8)", p99)
    );
    for name in ["echo", "infinite-loop", "memory-hog", "panic"] {
        println!(
            "echo p99 beside {name} / alone: {:.2}",
            ratio(&format!("echo beside {name} under load"), "echo alone", p99)
        );
    }
    table.write_json("gateway.json");
}

/// One load against `target`, from a child process unless `EDGEPLUG_BENCH_IN_PROCESS_CLIENT`
/// is set.
fn client_load(target: &Target, connections: usize, duration: Duration) -> LoadResult {
    if std::env::var_os("EDGEPLUG_BENCH_IN_PROCESS_CLIENT").is_some() {
        load::run(target, connections, duration)
    } else {
        load::run_in_child(target, connections, duration)
    }
}

async fn hello_world() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"hello")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn push(url: &hyper::Uri, bundle: Vec<u8>) -> u16 {
    use edgeplug::client::{ChunkedBody, Connection};
    let mut connection = Connection::open(url, None).await.unwrap();
    let response = connection
        .send(
            edgeplug_tests::gateway::req("PUT", "/v1/admin/plugins/digits")
                .header(
                    "authorization",
                    format!("Bearer {}", edgeplug_tests::gateway::TOKEN),
                )
                .body(ChunkedBody::new(bundle))
                .unwrap(),
        )
        .await
        .unwrap();
    response.status().as_u16()
}

#[derive(Default)]
struct Table {
    rows: Vec<(String, LoadResult)>,
}

impl Table {
    fn add(&mut self, name: &str, result: LoadResult) {
        eprintln!("measured: {name}");
        self.rows.push((name.to_string(), result));
    }

    fn get(&self, name: &str) -> &LoadResult {
        &self
            .rows
            .iter()
            .find(|(n, _)| n == name)
            .expect("row exists")
            .1
    }

    fn print(&self) {
        println!(
            "{:<44} {:>10} {:>10} {:>10} {:>8}",
            "load", "req/s", "p50 ms", "p99 ms", "failed"
        );
        for (name, r) in &self.rows {
            println!(
                "{name:<44} {:>10.0} {:>10.3} {:>10.3} {:>8}",
                r.per_second(),
                r.quantile(0.5).as_secs_f64() * 1e3,
                r.quantile(0.99).as_secs_f64() * 1e3,
                r.failed()
            );
        }
    }

    fn write_json(&self, file: &str) {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|(name, r)| {
                json!({
                    "load": name,
                    "requests_per_second": r.per_second(),
                    "p50_ms": r.quantile(0.5).as_secs_f64() * 1e3,
                    "p99_ms": r.quantile(0.99).as_secs_f64() * 1e3,
                    "requests": r.requests(),
                    "failed": r.failed(),
                    "statuses": r.statuses,
                })
            })
            .collect();
        let path = edgeplug_tests::bench::write_json(file, &rows);
        println!("wrote {}", path.display());
    }
}
