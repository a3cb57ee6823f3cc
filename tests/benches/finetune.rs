//! Inference latency of the digits plugin while fine-tune jobs run (issue 16's bar: p99 within
//! +10 % of idle), alternated in one run on the same cores:
//!   * idle: `CONNECTIONS` clients in closed loops on `/v1/plugins/digits/infer`, nothing else;
//!   * training: the same clients while fine-tune jobs run back to back on the gateway's
//!     training lane (one thread at nice 19, 1,080 samples, 2,000 steps each).
//!
//! `cargo bench -p edgeplug-tests --bench finetune` (each run `EDGEPLUG_BENCH_SECS`, default
//! 5 s; `EDGEPLUG_BENCH_ROUNDS` rounds, default 3; medians printed, and written to
//! `target/bench/finetune.json`). The load comes from a child process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use edgeplug::client::ChunkedBody;
use edgeplug_gateway::learning::JobSpec;
use edgeplug_tests::gateway::{TOKEN, TestGateway, example_bundle, req};
use edgeplug_tests::load::{self, Target};
use hyper::body::Bytes;

/// One client per core: the gateway is busy but not queueing.
const CONNECTIONS: usize = 2;
const JOB_STEPS: u32 = 2_000;

fn main() {
    load::serve_child_load();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (duration, rounds) = edgeplug_tests::bench::settings();
    let server = edgeplug_tests::bench::server_runtime();
    let data = edgeplug_tests::digits_test_bodies();
    let gw = server.block_on(async {
        let gw = TestGateway::start("feedback_max_samples = 5000\n").await;
        let bundle = example_bundle(&gw.key, "digits", edgeplug_tests::DIGITS_WASM);
        assert_eq!(gw.push("digits", bundle).await.status(), 200);
        // Every digit twice: 1,080 samples, ~810 of them for training.
        for (input, label) in data.iter().chain(&data) {
            let body = serde_json::json!({
                "label": label, "content_type": "application/json",
                "input": base64::engine::general_purpose::STANDARD.encode(input),
            });
            let r = gw
                .send(
                    req("POST", "/v1/admin/plugins/digits/feedback")
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .body(ChunkedBody::new(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                )
                .await;
            assert_eq!(r.status(), 200);
        }
        gw
    });
    let target = Target::post(
        gw.addr,
        "/v1/plugins/digits/infer",
        "application/json",
        Bytes::from(data[0].0.clone()),
    );
    let training = Arc::new(AtomicBool::new(false));
    let (jobs, steps) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (gateway, training, jobs, steps) = (
            gw.gateway.clone(),
            training.clone(),
            jobs.clone(),
            steps.clone(),
        );
        server.spawn(async move {
            let mut seed = 0;
            loop {
                if !training.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                seed += 1;
                let job = JobSpec {
                    max_steps: JOB_STEPS,
                    max_wall: Duration::from_secs(120),
                    seed,
                    start: None,
                };
                let trained = gateway.finetune("digits", job).await.expect("the job runs");
                jobs.fetch_add(1, Ordering::Relaxed);
                steps.fetch_add(u64::from(trained.steps), Ordering::Relaxed);
            }
        });
    }
    load::run_in_child(&target, CONNECTIONS, Duration::from_secs(1));
    let mut p99 = [Vec::new(), Vec::new()];
    let mut p50 = [Vec::new(), Vec::new()];
    let mut rps = [Vec::new(), Vec::new()];
    let mut job_rate = Vec::new();
    for _ in 0..rounds {
        for (case, train) in [false, true].into_iter().enumerate() {
            training.store(train, Ordering::Relaxed);
            // Let a job start before measuring, and the last one finish after.
            std::thread::sleep(Duration::from_millis(if train { 300 } else { 0 }));
            let (j0, s0) = (jobs.load(Ordering::Relaxed), steps.load(Ordering::Relaxed));
            let result = load::run_in_child(&target, CONNECTIONS, duration);
            assert_eq!(result.failed(), 0, "failed requests: {:?}", result.statuses);
            if train {
                let (j1, s1) = (jobs.load(Ordering::Relaxed), steps.load(Ordering::Relaxed));
                job_rate.push(((j1 - j0) as f64, (s1 - s0) as f64 / duration.as_secs_f64()));
                training.store(false, Ordering::Relaxed);
                // Wait out the running job so the next idle run is idle.
                server.block_on(async {
                    let _ = gw
                        .gateway
                        .finetune(
                            "digits",
                            JobSpec {
                                max_steps: 0,
                                max_wall: Duration::from_secs(10),
                                seed: 0,
                                start: None,
                            },
                        )
                        .await;
                });
            }
            p99[case].push(result.quantile(0.99).as_secs_f64() * 1e3);
            p50[case].push(result.quantile(0.5).as_secs_f64() * 1e3);
            rps[case].push(result.per_second());
        }
    }
    let med = edgeplug_tests::bench::median;
    let (idle99, train99) = (med(&mut p99[0].clone()), med(&mut p99[1].clone()));
    let mut step_rates: Vec<f64> = job_rate.iter().map(|(_, s)| *s).collect();
    println!("digits on /v1, {CONNECTIONS} connections, {rounds} rounds of {duration:?}, medians:");
    println!(
        "  idle:     p50 {:.3} ms  p99 {:.3} ms  {:.0} req/s",
        med(&mut p50[0]),
        idle99,
        med(&mut rps[0])
    );
    println!(
        "  training: p50 {:.3} ms  p99 {:.3} ms  {:.0} req/s  ({:.0} optimizer steps/s on the training lane)",
        med(&mut p50[1]),
        train99,
        med(&mut rps[1]),
        med(&mut step_rates)
    );
    println!(
        "  p99 training / idle: {:.3} (bar: at most 1.10); p99 per round idle {:?} training {:?}",
        train99 / idle99,
        p99[0],
        p99[1]
    );
    let path = edgeplug_tests::bench::write_json(
        "finetune.json",
        &serde_json::json!({
            "connections": CONNECTIONS, "seconds": duration.as_secs_f64(),
            "p99_ms": {"idle": p99[0], "training": p99[1]},
            "p50_ms": {"idle": p50[0], "training": p50[1]},
            "req_per_s": {"idle": rps[0], "training": rps[1]},
            "jobs_and_steps_per_s": job_rate,
        }),
    );
    println!("written to {}", path.display());
}
