//! `edgeplug quantize`: a float ONNX model to int8 (static QDQ, per-channel weights) with
//! calibration inputs from a `.npy` file, checked on the part of that file held out from
//! calibration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use edgeplug_kernels::Tensor;
use edgeplug_models::model::Model;

use crate::cli_bench::{read_npy_f32, read_npy_labels};

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// The float ONNX model (one input).
    model: PathBuf,
    /// Inputs shaped like the model's input, stacked along a first axis: float32 `.npy`
    /// `[N, ...]` (a model input of batch 1 takes `[N, ...rest]`).
    #[arg(long)]
    calibration: PathBuf,
    /// Where to write the int8 model.
    #[arg(long)]
    out: PathBuf,
    /// The share of the inputs (taken from the end) kept out of calibration and used to
    /// measure what quantization lost.
    #[arg(long, default_value_t = 0.2)]
    held_out: f64,
    /// The true class of each input (`.npy`, int64 or float32 `[N]`), to report accuracy as
    /// well as agreement with the float model.
    #[arg(long)]
    labels: Option<PathBuf>,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    let onnx = std::fs::read(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let npy = std::fs::read(&args.calibration)
        .with_context(|| format!("cannot read {}", args.calibration.display()))?;
    let (shape, values) = read_npy_f32(&npy)
        .with_context(|| format!("calibration file {}", args.calibration.display()))?;
    let float = Model::load("float", &onnx)?;
    let [input] = float.inputs() else {
        bail!("quantize takes models with one input");
    };
    let input_shape: Vec<usize> = input.shape.iter().map(|&d| d.max(0) as usize).collect();
    let per: usize = input_shape.iter().product();
    if shape.is_empty() || per == 0 || shape[1..].iter().product::<usize>() != per {
        bail!(
            "calibration {shape:?} does not stack inputs of the model's shape {:?}",
            input.shape
        );
    }
    if !(0.0..1.0).contains(&args.held_out) {
        bail!("--held-out is a share in [0, 1)");
    }
    let samples: Vec<Vec<f32>> = values.chunks_exact(per).map(<[f32]>::to_vec).collect();
    let held = ((samples.len() as f64 * args.held_out).round() as usize).min(samples.len() - 1);
    let (calibration, held_out) = samples.split_at(samples.len() - held);
    let labels = match &args.labels {
        Some(path) => Some(read_labels(path, samples.len())?),
        None => None,
    };

    let quantized = edgeplug_models::quantize::quantize_static(&onnx, calibration)?;
    std::fs::write(&args.out, &quantized.onnx)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let int8 = Model::load("int8", &quantized.onnx)?;
    println!(
        "{} -> {}: {} calibration inputs, {} activations and {} weights quantized; {} -> {} bytes; runs on {} ({})",
        args.model.display(),
        args.out.display(),
        calibration.len(),
        quantized.activations,
        quantized.weights,
        onnx.len(),
        quantized.onnx.len(),
        int8.backend(),
        int8.precision().name(),
    );
    if held_out.is_empty() {
        println!("no inputs held out: nothing to compare");
        return Ok(ExitCode::SUCCESS);
    }
    let (mut same_top1, mut max_diff, mut right) = (0usize, 0f32, [0usize; 2]);
    for (i, x) in held_out.iter().enumerate() {
        let x = Tensor::from_f32(input_shape.clone(), x.clone())?;
        let a = float.run(&[&x])?;
        let b = int8.run(&[&x])?;
        let (a, b) = (a[0].as_f32()?, b[0].as_f32()?);
        same_top1 += usize::from(argmax(a) == argmax(b));
        for (p, q) in a.iter().zip(b) {
            max_diff = max_diff.max((p - q).abs());
        }
        if let Some(labels) = &labels {
            let label = labels[calibration.len() + i];
            right[0] += usize::from(argmax(a) as i64 == label);
            right[1] += usize::from(argmax(b) as i64 == label);
        }
    }
    let n = held_out.len();
    print!(
        "held out {n}: same top-1 as the float model on {same_top1}/{n} ({:.1} %), max |output difference| {max_diff:.4}",
        100.0 * same_top1 as f64 / n as f64
    );
    if labels.is_some() {
        print!(
            "; accuracy float {:.1} %, int8 {:.1} %",
            100.0 * right[0] as f64 / n as f64,
            100.0 * right[1] as f64 / n as f64
        );
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `n` labels from an int64 or float32 `.npy`.
fn read_labels(path: &PathBuf, n: usize) -> anyhow::Result<Vec<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let labels = read_npy_labels(&bytes).with_context(|| format!("labels {}", path.display()))?;
    if labels.len() != n {
        bail!("{} labels for {n} inputs", labels.len());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn fixture(path: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(path)
            .display()
            .to_string()
    }

    #[test]
    fn quantize_writes_a_model_that_runs_in_int8() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("digits_int8.onnx");
        let code = crate::cli::run_args([
            "edgeplug",
            "quantize",
            &fixture("models/digits_cnn.onnx"),
            "--calibration",
            &fixture("digits/digits_test.npy"),
            "--labels",
            &fixture("digits/digits_test_labels.npy"),
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(code, std::process::ExitCode::SUCCESS);
        let model =
            edgeplug_models::model::Model::load("q", &std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(model.backend(), "native");
        assert_eq!(model.precision().name(), "int8");
    }

    #[test]
    fn calibration_that_does_not_fit_the_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = crate::cli::run_args([
            "edgeplug",
            "quantize",
            &fixture("models/digits_cnn.onnx"),
            "--calibration",
            &fixture("sunspots/sunspots_test_windows.npy"),
            "--out",
            dir.path().join("x.onnx").to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("does not stack inputs"), "{err}");
        assert!(!dir.path().join("x.onnx").exists());
    }
}
