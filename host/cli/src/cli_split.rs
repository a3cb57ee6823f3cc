//! `edgeplug bench MODEL --split`: where to cut a model between two devices. For every
//! place the model can be cut (`edgeplug_models::split`), the head's and the tail's times are
//! measured here and the cut tensor's bytes counted; the link is either measured (`--peer`:
//! the gateway that would run the tail, probed with requests of two sizes over fresh
//! connections, as an escalation makes them) or given (`--link 100mbit --rtt-ms 2`). The
//! predicted latency of a cut is
//!
//! ```text
//! head + fixed + (bytes + answer bytes) / bandwidth + tail
//! ```
//!
//! where `fixed` is the link's per-call cost (connection, round trip, the peer's request
//! handling), `bytes` the cut tensor as the Open Inference Protocol's binary extension carries
//! it and `answer bytes` the tail's outputs coming back. Two more rows: `local` (everything on this device) and `remote` (the input sent, the
//! whole model on the peer). The tail is timed on this machine: for a peer of another speed,
//! scale `--peer-speedup`.

use std::time::Instant;

use anyhow::{Context as _, bail};
use edgeplug_kernels::Tensor;
use edgeplug_models::model::Model;
use edgeplug_models::split;
use hyper::Uri;
use serde::Serialize;

use crate::cli_bench::{BenchArgs, bench_input};
use crate::client::{ChunkedBody, Connection};

/// What the binary extension adds to a tensor's bytes: the JSON header naming it, its shape
/// and datatype, and the HTTP request around it (measured on edgeplug's v2 requests).
const REQUEST_OVERHEAD_BYTES: usize = 400;

/// A link: its per-call cost and its bandwidth.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Link {
    pub fixed_ms: f64,
    pub megabits_per_s: f64,
}

impl Link {
    fn transfer_ms(&self, bytes: usize) -> f64 {
        self.fixed_ms + bytes as f64 * 8.0 / (self.megabits_per_s * 1e6) * 1e3
    }
}

/// Parses `100mbit`, `1gbit`, `500kbit` or a bare number of Mbit/s.
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, scale) = if let Some(n) = lower.strip_suffix("gbit") {
        (n, 1e3)
    } else if let Some(n) = lower.strip_suffix("mbit") {
        (n, 1.0)
    } else if let Some(n) = lower.strip_suffix("kbit") {
        (n, 1e-3)
    } else {
        (lower.as_str(), 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a link rate such as 100mbit"))?;
    anyhow::ensure!(
        value > 0.0 && value.is_finite(),
        "{text:?}: must be above 0"
    );
    Ok(value * scale)
}

/// One cut's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CutRow {
    /// `local`, `remote`, or the cut tensor's name.
    pub cut: String,
    /// Nodes on this device.
    pub head_nodes: usize,
    pub shape: Vec<usize>,
    /// What crosses the link to the peer, request overhead included.
    pub bytes: usize,
    /// What comes back: the tail's outputs, answer overhead included.
    pub answer_bytes: usize,
    pub head_ms: f64,
    pub tail_ms: f64,
    /// Predicted latency on each link, in the order of the report's links.
    pub predicted_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub model: String,
    pub links: Vec<Link>,
    /// Where each link came from: `measured against URL` or `given`.
    pub link_source: String,
    pub rows: Vec<CutRow>,
    /// For each link, the row with the lowest predicted latency.
    pub best: Vec<String>,
}

fn median_ms(model: &Model, input: &Tensor, runs: usize, warmup: usize) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        model.run(&[input])?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        model.run(&[input])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Measures the link to `peer` by sending its plugin `plugin` Open Inference Protocol requests
/// of two sizes, each on a fresh connection, `rounds` times alternated: what a split's call
/// does (the binary tensor data extension, a float32 tensor `input` the peer decodes), except
/// that the plugin refuses the tensor (a flat vector fits no model's tail), so only transfer
/// and handling are timed. The fixed cost is the intercept, the bandwidth the slope.
pub fn probe_link(peer: &Uri, plugin: &str, big: usize, rounds: usize) -> anyhow::Result<Link> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let small = 1024;
    let path = format!("/v2/models/{plugin}/infer");
    let time = |bytes: usize| -> anyhow::Result<f64> {
        let values = bytes / 4;
        let header = serde_json::json!({
            "inputs": [{"name": "input", "shape": [values], "datatype": "FP32",
                        "parameters": {"binary_data_size": values * 4}}],
            "parameters": {"binary_data_output": true},
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.resize(header.len() + values * 4, 0);
        runtime.block_on(async {
            let started = Instant::now();
            let mut connection = Connection::open(peer, None).await?;
            let request = hyper::Request::builder()
                .method("POST")
                .uri(&path)
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", header.len())
                .body(ChunkedBody::new(body))?;
            let response = connection.send(request).await?;
            if matches!(response.status().as_u16(), 404 | 413 | 415) {
                bail!(
                    "the peer answered {} to a {bytes}-byte probe of plugin {plugin:?}: give an \
                     active plugin that takes a tensor \"input\" and whose request limit takes \
                     {big} bytes",
                    response.status()
                );
            }
            Ok(started.elapsed().as_secs_f64() * 1e3)
        })
    };
    let (mut t_small, mut t_big) = (Vec::new(), Vec::new());
    time(small)?;
    for _ in 0..rounds {
        t_small.push(time(small)?);
        t_big.push(time(big)?);
    }
    t_small.sort_by(f64::total_cmp);
    t_big.sort_by(f64::total_cmp);
    let (s, b) = (t_small[rounds / 2], t_big[rounds / 2]);
    let per_byte_ms = ((b - s) / (big - small) as f64).max(1e-12);
    let megabits_per_s = 8.0 / per_byte_ms * 1e3 / 1e6;
    Ok(Link {
        fixed_ms: (s - small as f64 * per_byte_ms).max(0.0),
        megabits_per_s,
    })
}

/// `edgeplug bench MODEL --split`.
pub fn run(args: &BenchArgs, model_path: &std::path::Path) -> anyhow::Result<SplitReport> {
    let onnx =
        std::fs::read(model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let name = model_path
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let whole = Model::load(&name, &onnx)?;
    let [spec] = whole.inputs() else {
        bail!("--split takes models with one input");
    };
    let input = bench_input(spec, args.input.as_deref())?;
    let (links, link_source) = match (&args.peer, args.link.is_empty()) {
        (Some(peer), true) => {
            let uri: Uri = peer.parse().with_context(|| format!("--peer {peer:?}"))?;
            let plugin = args
                .peer_plugin
                .as_deref()
                .context("--peer needs --peer-plugin: an active plugin on the peer to probe")?;
            let big = input.byte_size().max(1 << 20);
            let link = probe_link(&uri, plugin, big, args.runs.clamp(5, 31))?;
            (vec![link], format!("measured against {peer}"))
        }
        (None, false) => {
            let links = args
                .link
                .iter()
                .flat_map(|l| l.split(','))
                .map(|rate| {
                    Ok(Link {
                        fixed_ms: args.rtt_ms,
                        megabits_per_s: parse_rate(rate)?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            (links, "given".to_string())
        }
        (Some(_), false) => bail!("give --peer or --link, not both"),
        (None, true) => {
            bail!("--split needs the link: --peer URL --peer-plugin NAME, or --link 100mbit")
        }
    };
    let speedup = args.peer_speedup;
    anyhow::ensure!(speedup > 0.0, "--peer-speedup must be above 0");
    let whole_ms = median_ms(&whole, &input, args.runs, args.warmup)?;
    let input_bytes = input.byte_size() + REQUEST_OVERHEAD_BYTES;
    let answer_bytes = whole
        .run(&[&input])?
        .iter()
        .map(Tensor::byte_size)
        .sum::<usize>()
        + REQUEST_OVERHEAD_BYTES;
    // The answer crosses the same link back: its bytes, but not a second call's fixed cost.
    let predict = |head: f64, bytes: Option<usize>, tail: f64| -> Vec<f64> {
        links
            .iter()
            .map(|l| {
                let link = bytes.map_or(0.0, |b| l.transfer_ms(b + answer_bytes));
                head + link + tail / speedup
            })
            .collect()
    };
    let mut rows = vec![CutRow {
        cut: "local".into(),
        head_nodes: usize::MAX,
        shape: Vec::new(),
        bytes: 0,
        answer_bytes: 0,
        head_ms: whole_ms,
        tail_ms: 0.0,
        predicted_ms: predict(whole_ms, None, 0.0),
    }];
    for point in split::cut_points(&onnx)? {
        let shape = split::tensor_shape(&onnx, &point.tensor, &input)?;
        let (head, tail) = split::split(&onnx, &point.tensor, Some(&shape))?;
        let head = Model::load("head", &head)?;
        let tail = Model::load("tail", &tail)?;
        let middle = head.run(&[&input])?.remove(0);
        let head_ms = median_ms(&head, &input, args.runs, args.warmup)?;
        let tail_ms = median_ms(&tail, &middle, args.runs, args.warmup)?;
        let bytes = middle.byte_size() + REQUEST_OVERHEAD_BYTES;
        rows.push(CutRow {
            cut: point.tensor,
            head_nodes: point.head_nodes,
            shape,
            bytes,
            answer_bytes,
            head_ms,
            tail_ms,
            predicted_ms: predict(head_ms, Some(bytes), tail_ms),
        });
    }
    rows.push(CutRow {
        cut: "remote".into(),
        head_nodes: 0,
        shape: input.shape().to_vec(),
        bytes: input_bytes,
        answer_bytes,
        head_ms: 0.0,
        tail_ms: whole_ms,
        predicted_ms: predict(0.0, Some(input_bytes), whole_ms),
    });
    let best = (0..links.len())
        .map(|i| {
            rows.iter()
                .min_by(|a, b| a.predicted_ms[i].total_cmp(&b.predicted_ms[i]))
                .map(|r| r.cut.clone())
                .unwrap_or_default()
        })
        .collect();
    Ok(SplitReport {
        model: name,
        links,
        link_source,
        rows,
        best,
    })
}

/// The report as a table.
pub fn print(report: &SplitReport) {
    println!(
        "{}: split points, link {}",
        report.model, report.link_source
    );
    for (i, link) in report.links.iter().enumerate() {
        println!(
            "  link {i}: {:.1} Mbit/s, {:.2} ms per call",
            link.megabits_per_s, link.fixed_ms
        );
    }
    print!(
        "{:>5} {:>10} {:>9} {:>9}",
        "nodes", "bytes", "head ms", "tail ms"
    );
    for i in 0..report.links.len() {
        print!(" {:>10}", format!("link {i} ms"));
    }
    println!("  cut");
    for row in &report.rows {
        let nodes = match row.head_nodes {
            usize::MAX => "all".to_string(),
            n => n.to_string(),
        };
        print!(
            "{nodes:>5} {:>10} {:>9.3} {:>9.3}",
            row.bytes, row.head_ms, row.tail_ms
        );
        for p in &row.predicted_ms {
            print!(" {p:>10.2}");
        }
        println!("  {}", row.cut);
    }
    for (i, best) in report.best.iter().enumerate() {
        println!("best on link {i}: {best}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rates_read_as_written() {
        assert_eq!(parse_rate("100mbit").unwrap(), 100.0);
        assert_eq!(parse_rate("1Gbit").unwrap(), 1000.0);
        assert_eq!(parse_rate("500kbit").unwrap(), 0.5);
        assert_eq!(parse_rate("20").unwrap(), 20.0);
        assert!(parse_rate("fast").is_err() && parse_rate("0mbit").is_err());
        let link = Link {
            fixed_ms: 1.0,
            megabits_per_s: 8.0,
        };
        // 1 MB at 8 Mbit/s: one second, plus the call.
        assert!((link.transfer_ms(1_000_000) - 1001.0).abs() < 1e-9);
    }
}
