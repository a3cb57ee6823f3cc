//! `edgeplug bench MODEL.onnx --backend native|tract`: times one model on one
//! backend, so anyone can check a benchmark figure on their own machine.
//!
//! The model runs on zeros (or on the first row of `--input FILE.npy`) for
//! `--warmup` runs, then `--runs` timed runs; the output is one line, or one
//! JSON object with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};

use edgeplug_kernels::Tensor;
use edgeplug_kernels::fast::Isa;
use edgeplug_models::model::Model;
use edgeplug_models::native::{NativeError, NativeModel};

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchBackend {
    /// edgeplug's own kernels (`edgeplug_models::native`).
    Native,
    /// tract-onnx, optimized.
    Tract,
}

/// Arguments of `edgeplug bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The ONNX model file.
    #[arg(required_unless_present = "peak")]
    pub model: Option<PathBuf>,
    /// Instead of a model, measure this core's FP32 peak (independent
    /// fused multiply-adds of the widest vectors) in GFLOP/s, and its int8
    /// peak (independent VNNI dot products) in GOP/s.
    #[arg(long, conflicts_with_all = ["profile", "input"])]
    pub peak: bool,
    /// Engine to time.
    #[arg(long, value_enum, default_value_t = BenchBackend::Native)]
    pub backend: BenchBackend,
    /// Timed runs (after the warm-up).
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Threads running the model concurrently (each run is still batch 1 on
    /// one thread; latency percentiles are over all runs of all threads).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Input values: a float32 `.npy` whose first row (batch 1) is used.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
    /// Native only: also time every compiled step (layer) and report its
    /// median time and GFLOP/s.
    #[arg(long)]
    pub profile: bool,
    /// Threads one native run may use when cores are idle (intra-op; 0 =
    /// every core, 1 = never split). Concurrent `--threads` runs count as
    /// busy cores, so they borrow only what the others leave idle.
    #[arg(long, default_value_t = 0)]
    pub intra_op: usize,
    /// Arithmetic of the native backend's convolutions and GEMMs: f32 or
    /// bf16 (on AMX tiles where the CPU has them, else AVX512-BF16;
    /// `EDGEPLUG_AMX=off` keeps it off AMX).
    #[arg(long, default_value = "f32")]
    pub precision: edgeplug_models::native::Precision,
    /// Instead of timing the model whole, find where to cut it between this device and a
    /// peer: every cut point's head and tail times, the tensor crossing, and the predicted
    /// latency on the link (`--peer` measures it, `--link` gives it).
    #[arg(long, conflicts_with_all = ["peak", "profile"])]
    pub split: bool,
    /// `--split`: link rates to predict for (`100mbit`, `1gbit`, `500kbit`; several by
    /// repeating or with commas).
    #[arg(long, requires = "split")]
    pub link: Vec<String>,
    /// `--split` with `--link`: the link's cost per call (round trip, connection), in ms.
    #[arg(long, default_value_t = 0.0, requires = "split")]
    pub rtt_ms: f64,
    /// `--split`: measure the link against this gateway (http://HOST:PORT), the one that
    /// would run the tail.
    #[arg(long, requires = "split")]
    pub peer: Option<String>,
    /// `--split --peer`: an active plugin on the peer to send the probes to: Open Inference
    /// Protocol requests with a float32 tensor `input` that it refuses, so only their
    /// transfer and handling are timed. Its request limit must take the probes (1 MiB, or the
    /// model input's size if larger).
    #[arg(long, requires = "peer")]
    pub peer_plugin: Option<String>,
    /// `--split`: how many times faster the peer runs the tail than this machine.
    #[arg(long, default_value_t = 1.0, requires = "split")]
    pub peer_speedup: f64,
    /// Kernel instruction set for the native backend and `--peak`: avx512,
    /// avx2, neon or portable (default: `EDGEPLUG_ISA`, else the best this
    /// CPU has).
    #[arg(long)]
    pub isa: Option<Isa>,
}

/// The result of one `bench` invocation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: BenchBackend,
    /// Kernel instruction set (native only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isa: Option<String>,
    /// Precision of the convolutions and GEMMs (native only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// What multiplied bf16 (`amx`, `avx512-bf16`, `portable`; bf16 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bf16_engine: Option<String>,
    pub runs: usize,
    pub warmup: usize,
    pub threads: usize,
    /// Threads one run may use (native; `--intra-op` resolved).
    pub intra_op_threads: usize,
    pub load_ms: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    /// Runs per second over all threads.
    pub throughput_per_s: f64,
    /// Per-step profile (`--profile`, native only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<edgeplug_models::native::StepProfile>,
}

enum Engine {
    Native(NativeModel),
    Tract(Model),
}

impl Engine {
    fn run(&self, inputs: &[&Tensor]) -> anyhow::Result<Vec<Tensor>> {
        Ok(match self {
            Engine::Native(m) => m.run(inputs)?,
            Engine::Tract(m) => m.run(inputs)?,
        })
    }
}

/// Runs `edgeplug bench`. Exit status 0 on success; 3 when the native backend
/// does not support the model (the JSON then has `error` and `unsupported_op`).
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.threads == 0 {
        bail!("--runs and --threads must be at least 1");
    }
    let isa = match args.isa {
        Some(isa) => isa
            .check_available()
            .map_err(|e| anyhow::anyhow!("--isa {isa}: {e}"))?,
        None => Isa::detect(),
    };
    edgeplug_models::native::parallel::set_intra_op_threads(args.intra_op);
    let model = match (&args.model, args.peak) {
        (_, true) => {
            // Median of five half-second bursts: the machine is shared.
            let mut runs: Vec<f64> = (0..5)
                .map(|_| edgeplug_kernels::fast::fma_peak_gflops(isa, 0.5))
                .collect();
            runs.sort_by(f64::total_cmp);
            // The int8 kernels' peak the same way: independent `vpdpbusd`s (each 64
            // multiply-adds, 128 operations), else the portable loop's rate.
            let mut int8: Vec<f64> = (0..5)
                .map(|_| edgeplug_kernels::fast::int8::vnni_peak_gops(0.5))
                .collect();
            int8.sort_by(f64::total_cmp);
            let int8_path = if edgeplug_kernels::fast::int8::vnni_available() {
                "avx512-vnni vpdpbusd"
            } else {
                "portable"
            };
            let isa = isa.name();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "peak_gflops": runs[2],
                        "isa": isa,
                        "int8_peak_gops": int8[2],
                        "int8_path": int8_path,
                    })
                );
            } else {
                println!("FP32 peak of one core ({isa} FMAs): {:.1} GFLOP/s", runs[2]);
                println!("int8 peak of one core ({int8_path}): {:.1} GOP/s", int8[2]);
            }
            return Ok(ExitCode::SUCCESS);
        }
        (Some(model), false) => model,
        (None, false) => bail!("give a model, or --peak"),
    };
    if args.split {
        let report = crate::cli_split::run(&args, model)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            crate::cli_split::print(&report);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bytes = std::fs::read(model).with_context(|| format!("reading {}", model.display()))?;
    let name = model
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let start = Instant::now();
    let engine = match args.backend {
        BenchBackend::Native => match NativeModel::load_with(&bytes, isa, args.precision) {
            Ok(m) => Engine::Native(m),
            Err(NativeError::Unsupported { op, node }) => {
                let message = format!(
                    "native backend does not support {op} (node {node:?}); tract runs this model"
                );
                if args.json {
                    let v = serde_json::json!({
                        "model": name, "backend": "native", "error": message, "unsupported_op": op, "node": node,
                    });
                    println!("{v}");
                } else {
                    eprintln!("edgeplug bench: {message}");
                }
                return Ok(ExitCode::from(3));
            }
            Err(e) => return Err(e.into()),
        },
        BenchBackend::Tract => {
            // `Model::load` prefers the native backend; this column must be tract's.
            let m = Model::load_with(&name, &bytes, false)?;
            if m.backend() != "tract" {
                bail!("asked for tract, got the {} backend", m.backend());
            }
            Engine::Tract(m)
        }
    };
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let (isa, precision, bf16_engine, spec) = match &engine {
        Engine::Native(m) => (
            Some(m.isa().name().to_string()),
            Some(m.precision().name().to_string()),
            m.precision()
                .bf16_engine(m.isa())
                .map(|e| e.name().to_string()),
            m.inputs().to_vec(),
        ),
        Engine::Tract(m) => (None, None, None, m.inputs().to_vec()),
    };
    let [spec] = spec.as_slice() else {
        bail!(
            "bench supports models with one input, this one has {}",
            spec.len()
        );
    };
    let input = bench_input(spec, args.input.as_deref())?;
    let mut times = Vec::with_capacity(args.runs);
    let wall = std::thread::scope(|s| -> anyhow::Result<f64> {
        let per_thread = args.runs.div_ceil(args.threads);
        let workers: Vec<_> = (0..args.threads)
            .map(|_| {
                let (engine, input) = (&engine, &input);
                s.spawn(move || -> anyhow::Result<(Vec<f64>, f64)> {
                    for _ in 0..args.warmup {
                        engine.run(&[input])?;
                    }
                    let t0 = Instant::now();
                    let mut t = Vec::with_capacity(per_thread);
                    for _ in 0..per_thread {
                        let r = Instant::now();
                        std::hint::black_box(engine.run(&[input])?);
                        t.push(r.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok((t, t0.elapsed().as_secs_f64()))
                })
            })
            .collect();
        let mut wall = 0f64;
        for w in workers {
            let (t, secs) = w
                .join()
                .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
            times.extend(t);
            wall = wall.max(secs);
        }
        Ok(wall)
    })?;
    times.sort_by(f64::total_cmp);
    let layers = match (&engine, args.profile) {
        (Engine::Native(m), true) => m.profile(&[&input], args.runs)?,
        _ => Vec::new(),
    };
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let report = BenchReport {
        model: name,
        backend: args.backend,
        isa,
        precision,
        bf16_engine,
        runs: times.len(),
        warmup: args.warmup,
        threads: args.threads,
        intra_op_threads: edgeplug_models::native::parallel::intra_op_threads(),
        load_ms,
        median_ms: pct(0.5),
        p90_ms: pct(0.9),
        min_ms: times[0],
        mean_ms: times.iter().sum::<f64>() / times.len() as f64,
        throughput_per_s: times.len() as f64 / wall,
        layers,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} on {:?}{}: median {:.3} ms, p90 {:.3} ms, min {:.3} ms over {} runs ({} thread{}, up to {} per run), {:.1} runs/s, load {:.0} ms",
            report.model,
            report.backend,
            match (&report.isa, &report.precision, &report.bf16_engine) {
                (Some(i), Some(p), Some(e)) => format!(" ({i}, {p} on {e})"),
                (Some(i), Some(p), None) => format!(" ({i}, {p})"),
                _ => String::new(),
            },
            report.median_ms,
            report.p90_ms,
            report.min_ms,
            report.runs,
            report.threads,
            if report.threads == 1 { "" } else { "s" },
            report.intra_op_threads,
            report.throughput_per_s,
            report.load_ms
        );
        for l in &report.layers {
            let gflops = l.flops as f64 / (l.median_ms * 1e6);
            println!(
                "  {:>8.3} ms {:>7.1} GFLOP/s  {}",
                l.median_ms, gflops, l.step
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The input a benchmark runs a model on: zeros shaped as `spec`, or the first row of the
/// float32 `.npy` at `path`.
pub fn bench_input(
    spec: &edgeplug_models::model::TensorSpec,
    path: Option<&std::path::Path>,
) -> anyhow::Result<Tensor> {
    let shape: Vec<usize> = spec
        .shape
        .iter()
        .map(|&d| usize::try_from(d).context("model input has a dynamic dimension"))
        .collect::<anyhow::Result<_>>()?;
    let Some(path) = path else {
        return Ok(Tensor::zeros(shape)?);
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, data) = read_npy_f32(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let n: usize = shape.iter().product();
    if data.len() < n {
        bail!(
            "{} holds {} values, the model input {:?} needs {n}",
            path.display(),
            data.len(),
            shape
        );
    }
    Ok(Tensor::from_f32(shape, data[..n].to_vec())?)
}

/// Shape and values of a little-endian float32 C-order `.npy` file.
pub fn read_npy_f32(bytes: &[u8]) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let (descr, shape, body) = npy_parts(bytes)?;
    if descr != "<f4" {
        bail!("only little-endian float32 .npy is supported here, not {descr:?}");
    }
    check_body(&shape, body, 4)?;
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, data))
}

/// Class labels from a C-order `.npy` file of int64 (numpy's default for integers) or
/// float32 values.
pub fn read_npy_labels(bytes: &[u8]) -> anyhow::Result<Vec<i64>> {
    let (descr, shape, body) = npy_parts(bytes)?;
    if descr != "<i8" {
        return Ok(read_npy_f32(bytes)?.1.iter().map(|&v| v as i64).collect());
    }
    check_body(&shape, body, 8)?;
    Ok(body
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// The `descr`, shape and body of a C-order `.npy` file.
fn npy_parts(bytes: &[u8]) -> anyhow::Result<(String, Vec<usize>, &[u8])> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not an .npy file");
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .context("truncated .npy header")?;
    if !header.contains("'fortran_order': False") {
        bail!("only C-order .npy is supported, header: {}", header.trim());
    }
    let descr = header
        .split("'descr': '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .context(".npy header has no descr")?
        .to_string();
    let dims = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context(".npy header has no shape")?;
    let shape: Vec<usize> = dims
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .context("bad .npy shape")?;
    Ok((descr, shape, &bytes[start + hlen..]))
}

/// Whether `body` holds `shape`'s values of `width` bytes each.
fn check_body(shape: &[usize], body: &[u8], width: usize) -> anyhow::Result<()> {
    let n = shape
        .iter()
        .try_fold(width, |a, &d| a.checked_mul(d))
        .context(".npy shape overflows")?;
    if body.len() != n {
        bail!(
            ".npy body has {} bytes, shape {:?} needs {n}",
            body.len(),
            shape
        );
    }
    Ok(())
}
