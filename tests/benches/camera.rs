//! A camera through the image classifier (issue 15): a 30 s MJPEG stream at 30 frames/s (900
//! frames, served over HTTP by `edgeplug_tests::camera::mjpeg_camera`) read by a gateway's
//! `[[cameras]]` entry that samples it into the image-classifier example plugin (MobileNetV2)
//! and publishes each result record to mosquitto, where a collector takes them. Three runs:
//!   * `tests/fixtures/images/rocket.jpg` (640x427, 112 KB) at `fps = 5`: a rate the classifier
//!     keeps up with on one core: every sampled frame runs, the others are dropped for the rate;
//!   * the same at `fps = 30`, the camera's own rate (the classifier takes ~20 ms a frame here,
//!     so it nearly keeps up: what drops is the two clocks' jitter);
//!   * rocket.jpg scaled up to 1620x1080 (a 1080p camera's frame, 150 KB) at `fps = 30`,
//!     faster than the plugin (~50 ms a frame): overload, frames are dropped because the plugin
//!     is busy, never queued.
//!
//! Per run it prints frames sent (the camera), frames read, run and dropped (for the rate, and
//! busy) from the gateway's `/metrics` (`edgeplug_camera_frames_*`), frames dropped as the
//! result records see them (gaps in the frame numbers in their ids), results received and
//! their top-1 class (all the same photo: they must all agree, and be 540 "drilling
//! platform", MobileNetV2's class for rocket.jpg), latency p50/p99 from the records'
//! `latency_ms` (from the sampler taking the frame to its record: decode, preprocess, model),
//! and the gateway's RSS (VmRSS) sampled every second: at the stream's start, after 5 s, at
//! the end, the max, and the growth from 5 s to the end (a flat memory is a small growth).
//!
//! `cargo bench -p edgeplug-tests --bench camera` (about 100 s of runs). Needs Debian's
//! `mosquitto`, started here on a free port.
//!
//! The gateway is `edgeplug serve` in a child process (this benchmark's own binary again,
//! calling `edgeplug::cli_serve::run_serve` with the classifier's bundle to install), so its
//! RSS is its own and not the camera's, the collector's or this harness's. It is limited to
//! ONE CORE: the child pins itself with `sched_setaffinity` to the last CPU this process may
//! use before it starts any thread, runs one tokio worker (`TOKIO_WORKER_THREADS=1`) and
//! `intra_op_threads = 1`. The camera, broker and collector run on the other cores.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgeplug_tests::camera::mjpeg_camera;
use edgeplug_tests::gateway::{TOKEN, example_bundle, write_gateway_dir};
use edgeplug_tests::mqtt::Collector;
use edgeplug_tests::pinned::{PinnedGateway, allowed_cpus, load_average};
use edgeplug_tests::servers::{TestBroker, free_port};

/// The camera: 30 s at 30 frames/s.
const CAMERA_FPS: u32 = 30;
const FRAMES: usize = 30 * CAMERA_FPS as usize;
/// MobileNetV2's top-1 class for rocket.jpg (the models README, onnxruntime).
const EXPECTED_CLASS: u64 = 540;
const EXPECTED_LABEL: &str = "drilling platform";

/// VmRSS of `pid`, KiB; `None` once it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `GET /metrics` of the gateway at `addr` (HTTP/1.0, the whole answer's body).
fn metrics(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"));
    answer.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// `edgeplug_camera_frames_*` of camera `name` in a `/metrics` text, by family.
fn camera_frames(text: &str, name: &str) -> BTreeMap<String, u64> {
    let label = format!("{{camera=\"{name}\",");
    text.lines()
        .filter(|l| l.starts_with("edgeplug_camera_frames") && l.contains(&label))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let family = series.split('{').next()?.to_string();
            Some((family, value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One run: the camera's 30 s stream through a fresh gateway sampling at `fps`.
fn run(
    runtime: &tokio::runtime::Runtime,
    jpeg: &[u8],
    bundle: &std::path::Path,
    dir: &std::path::Path,
    fps: u32,
) {
    let name = format!("cam-{fps}fps-{}", jpeg.len());
    let broker = TestBroker::start();
    let (camera, sent) = runtime.block_on(mjpeg_camera(jpeg.to_vec(), FRAMES, CAMERA_FPS));
    let collector = runtime.block_on(Collector::start(
        broker.port,
        &format!("center-{name}"),
        &["results/#"],
        false,
    ));
    let config = format!(
        "intra_op_threads = 1\n\n[mqtt]\nbroker = \"{}\"\nclient_id = \"gw-{name}\"\n\n\
         [[cameras]]\nname = \"{name}\"\nurl = \"http://{camera}/video.mjpg\"\n\
         plugin = \"image-classifier\"\nfps = {fps}.0\ncontent_type = \"image/jpeg\"\n\
         result_topic = \"results/{{device}}/{{plugin}}\"\n",
        broker.url()
    );
    std::fs::write(
        dir.join("gateway.toml"),
        edgeplug_tests::gateway::gateway_toml(&config),
    )
    .unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cpu = *allowed_cpus().last().expect("a CPU");
    let gateway = PinnedGateway::start(
        "the gateway",
        cpu,
        &dir.join("gateway.toml"),
        Some(listen),
        bundle,
    );
    let pid = gateway.pid();

    // RSS every second from the stream's first frame until every frame is accounted for.
    let waited = Instant::now();
    while sent.load(Ordering::SeqCst) == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the gateway did not open the stream: {}",
            gateway.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let mut rss: Vec<(Duration, u64)> = Vec::new();
    let mut counters = BTreeMap::new();
    loop {
        rss.push((started.elapsed(), rss_kib(pid).expect("the gateway runs")));
        if sent.load(Ordering::SeqCst) == FRAMES {
            counters = camera_frames(&metrics(listen), &name);
            let get = |f: &str| counters.get(f).copied().unwrap_or(0);
            let read = get("edgeplug_camera_frames_total");
            let run = get("edgeplug_camera_frames_run_total");
            let rate = get("edgeplug_camera_frames_dropped_rate_total");
            let busy = get("edgeplug_camera_frames_dropped_busy_total");
            if read == FRAMES as u64 && read == run + rate + busy && collector.count() as u64 == run
            {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the stream was not accounted for within 90 s: sent {}, {counters:?}, {} results: {}",
            sent.load(Ordering::SeqCst),
            collector.count(),
            gateway.stderr()
        );
        let next = Duration::from_secs(rss.len() as u64);
        std::thread::sleep(next.saturating_sub(started.elapsed()));
    }
    let elapsed = started.elapsed();
    gateway.stop();

    let get = |f: &str| counters.get(f).copied().unwrap_or(0);
    let (read, run, rate, busy, failed) = (
        get("edgeplug_camera_frames_total"),
        get("edgeplug_camera_frames_run_total"),
        get("edgeplug_camera_frames_dropped_rate_total"),
        get("edgeplug_camera_frames_dropped_busy_total"),
        get("edgeplug_camera_frames_failed_total"),
    );
    let records = collector.on(&format!("results/{name}/image-classifier"));
    let mut latencies = Vec::new();
    let mut seqs = Vec::new();
    let mut classes: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for record in &records {
        let json = record.json();
        latencies.push(json["latency_ms"].as_f64().expect("latency_ms"));
        // `{camera}-{unix ms}-{frame number}`: the frame numbers count every frame read.
        let id = json["id"].as_str().expect("id");
        seqs.push(id.rsplit('-').next().unwrap().parse::<u64>().unwrap());
        let top = &json["output"][0];
        let class = (
            top["index"].as_u64().unwrap_or(u64::MAX),
            top["label"].as_str().unwrap_or("(none)").to_string(),
        );
        if class.0 != EXPECTED_CLASS {
            eprintln!("an unexpected answer: {json}");
        }
        *classes.entry(class).or_default() += 1;
    }
    latencies.sort_by(f64::total_cmp);
    seqs.sort_unstable();
    seqs.dedup();
    // Frames read up to the last one run that were not run, and those read after it.
    let last = seqs.last().copied().unwrap_or(0);
    let dropped_before_last = last - seqs.len() as u64;
    let after_last = read.saturating_sub(last);
    let kib = |k: u64| k as f64 / 1024.0;
    let at = |secs: u64| {
        rss.iter()
            .find(|(t, _)| *t >= Duration::from_secs(secs))
            .map_or(rss[rss.len() - 1].1, |s| s.1)
    };
    let (start_rss, five_rss, end_rss) = (rss[0].1, at(5), rss[rss.len() - 1].1);
    let max_rss = rss.iter().map(|s| s.1).max().unwrap();

    println!("  load average {}", load_average());
    println!(
        "  frames: sent {} | gateway /metrics: read {read}, run {run}, dropped {} ({rate} for the rate, {busy} busy), failed {failed}",
        sent.load(Ordering::SeqCst),
        rate + busy
    );
    println!(
        "  results: {} records, {} distinct frames; dropped by their frame numbers: {dropped_before_last} up to frame {last}, + {after_last} read after it = {}",
        records.len(),
        seqs.len(),
        dropped_before_last + after_last
    );
    println!(
        "  run rate: {:.2} frames/s over the {:.1} s stream; latency_ms p50 {:.1}, p99 {:.1}, max {:.1}",
        run as f64 / (FRAMES as f64 / f64::from(CAMERA_FPS)),
        FRAMES as f64 / f64::from(CAMERA_FPS),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    for ((index, label), n) in &classes {
        println!("  top-1: {index} {label:?} in {n} records");
    }
    println!(
        "  gateway RSS (VmRSS, {} samples over {:.1} s): start {:.1} MiB, after 5 s {:.1}, end {:.1}, max {:.1}; growth 5 s -> end {:+.1} MiB",
        rss.len(),
        elapsed.as_secs_f64(),
        kib(start_rss),
        kib(five_rss),
        kib(end_rss),
        kib(max_rss),
        kib(end_rss) - kib(five_rss)
    );

    assert_eq!(sent.load(Ordering::SeqCst), FRAMES);
    assert_eq!(records.len() as u64, run, "one record per frame run");
    assert_eq!(seqs.len(), records.len(), "no frame answered twice");
    assert_eq!(failed, 0, "no frame failed");
    assert_eq!(
        classes.keys().collect::<Vec<_>>(),
        [&(EXPECTED_CLASS, EXPECTED_LABEL.to_string())],
        "every record names the same class, the expected one"
    );
}

fn main() {
    edgeplug_tests::pinned::serve_child();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let jpeg = std::fs::read(edgeplug_tests::fixture("images/rocket.jpg")).unwrap();
    // The same photo as a 1080p camera's frame: scaled up 2.53 times, JPEG quality 75.
    let mut large = Vec::new();
    image::load_from_memory(&jpeg)
        .unwrap()
        .resize(1620, 1080, image::imageops::FilterType::Triangle)
        .write_to(
            &mut std::io::Cursor::new(&mut large),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    println!(
        "camera: {FRAMES} frames at {CAMERA_FPS} frames/s into image-classifier (MobileNetV2), gateway on 1 core (intra_op_threads = 1)"
    );
    let runs = [
        ("rocket.jpg 640x427", &jpeg, 5),
        ("rocket.jpg 640x427", &jpeg, 30),
        ("rocket.jpg scaled to 1620x1080", &large, 30),
    ];
    for (photo, jpeg, fps) in runs {
        println!("{photo} ({} bytes), fps = {fps}:", jpeg.len());
        // A fresh gateway directory per run: the key, its trust and state.
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = write_gateway_dir(dir.path(), "");
        let bundle = dir.path().join("image-classifier.bundle");
        std::fs::write(
            &bundle,
            example_bundle(
                &key,
                "image-classifier",
                edgeplug_tests::IMAGE_CLASSIFIER_WASM,
            ),
        )
        .unwrap();
        run(&runtime, jpeg, &bundle, dir.path(), fps);
    }
}
