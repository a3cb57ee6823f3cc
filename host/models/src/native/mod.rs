//! The native model backend: ONNX graphs run on edgeplug's own kernels
//! ([`edgeplug_kernels::fast`]).
//!
//! tract-onnx parses and types the graph (so shapes are known and ONNX
//! expansions such as `Clip` → `Max`/`Min` are already done); `compile` then
//! walks the typed nodes in evaluation order and turns them into a flat list
//! of steps: constants are folded (with tract's own evaluator), a convolution
//! absorbs the activation and the residual `Add` that follow it, weights are
//! packed for the GEMM kernel, and every intermediate value gets a buffer
//! slot, slots being reused once their value is dead. A graph with a node the
//! compiler does not cover is refused with [`NativeError::Unsupported`], which
//! callers take as "run this one on tract".
//!
//! [`NativeModel`] is `Send + Sync`: each run borrows an arena (the buffers
//! of every slot plus kernel scratch) from a pool, so steady-state runs do not
//! allocate or page-fault, and concurrent runs do not contend.

mod block;
mod compile;
mod exec;
#[cfg(test)]
mod graph_tests;
pub mod parallel;
mod recurrent;
#[cfg(test)]
mod recurrent_tests;
mod step;
#[cfg(test)]
mod tests;

use std::sync::Mutex;

use crate::model::TensorSpec;
use edgeplug_kernels::Tensor;
use edgeplug_kernels::fast::Isa;

use exec::{Arena, Program};

/// Why the native backend cannot load or run a model.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// The graph has a node the native backend does not cover; run it on tract.
    #[error("native backend does not support {op} (node {node:?})")]
    Unsupported {
        /// The operation, as tract names it (with a detail when useful).
        op: String,
        /// The node's name in the graph.
        node: String,
    },
    /// tract could not parse or type the ONNX bytes.
    #[error("cannot load ONNX model: {0}")]
    Load(String),
    /// The inputs do not match the model's declared inputs.
    #[error("input {index} ({name}): expected {expected}, got {got}")]
    Input {
        /// Position of the input.
        index: usize,
        /// The input's name.
        name: String,
        /// Declared type and shape.
        expected: String,
        /// What was passed.
        got: String,
    },
    /// The precision asked for needs arithmetic this kernel path lacks.
    #[error("{0}")]
    Precision(String),
}

/// The arithmetic of a model's convolutions and GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout: the default, never replaced without being asked.
    #[default]
    F32,
    /// bf16 inputs and weights, f32 sums (AVX512-BF16), for the
    /// pointwise, dense-conv and block GEMMs; depthwise, pooling and
    /// elementwise steps stay f32.
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`, as configured and reported.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// What multiplies bf16 on `isa` (AMX where the CPU has it and the
    /// process may use it); `None` for f32.
    pub fn bf16_engine(self, isa: Isa) -> Option<edgeplug_kernels::fast::bf16::Engine> {
        use edgeplug_kernels::fast::bf16::Engine;
        match (self, isa) {
            (Precision::F32, _) => None,
            (Precision::Bf16, Isa::Portable) => Some(Engine::Portable),
            (Precision::Bf16, _) => Some(Engine::best()),
        }
    }

    /// Whether `isa` can run this precision: bf16 needs AVX512-BF16 on the
    /// AVX-512 path (the portable path emulates it, for tests).
    pub fn check(self, isa: Isa) -> Result<(), String> {
        let ok = match self {
            Precision::F32 => true,
            Precision::Bf16 => {
                isa == Isa::Portable
                    || (isa == Isa::Avx512 && edgeplug_kernels::fast::bf16::bf16_hardware())
            }
        };
        if ok {
            Ok(())
        } else if edgeplug_kernels::fast::bf16::bf16_hardware() {
            Err(format!(
                "precision bf16 runs on the avx512 kernel path; this process runs {isa}"
            ))
        } else {
            Err("precision bf16 needs a CPU with AVX512-BF16; this one has none".to_string())
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("{other:?} is no precision: use f32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision models load with when none is given (the gateway's
/// `precision` setting); bf16 when true.
static DEFAULT_BF16: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the precision [`NativeModel::load`] uses, after checking this
/// process's kernel path can run it.
pub fn set_default_precision(p: Precision) -> Result<(), String> {
    p.check(Isa::detect())?;
    DEFAULT_BF16.store(p == Precision::Bf16, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The precision [`NativeModel::load`] uses.
pub fn default_precision() -> Precision {
    if DEFAULT_BF16.load(std::sync::atomic::Ordering::Relaxed) {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// One compiled step's share of a run, from [`NativeModel::profile`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepProfile {
    /// Kind and shape, e.g. `conv1x1 32->16 @12544`.
    pub step: String,
    /// Floating-point operations per run (2 per multiply-add).
    pub flops: u64,
    /// Median wall time per run.
    pub median_ms: f64,
}

/// A compiled model, ready to run from any thread.
pub struct NativeModel {
    program: Program,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    isa: Isa,
    precision: Precision,
    arenas: Mutex<Vec<Arena>>,
}

impl std::fmt::Debug for NativeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeModel")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("isa", &self.isa)
            .field("precision", &self.precision)
            .field("steps", &self.program.steps.len())
            .finish()
    }
}

impl NativeModel {
    /// Parses, types and compiles ONNX bytes, with the best kernels this CPU has.
    pub fn load(onnx: &[u8]) -> Result<NativeModel, NativeError> {
        NativeModel::load_with_isa(onnx, Isa::detect())
    }

    /// Like [`NativeModel::load`], with the kernels' instruction set chosen
    /// (for tests and benchmarks; an ISA the CPU lacks runs portable code).
    pub fn load_with_isa(onnx: &[u8], isa: Isa) -> Result<NativeModel, NativeError> {
        NativeModel::load_with(onnx, isa, default_precision())
    }

    /// Like [`NativeModel::load_with_isa`], with the precision chosen; one
    /// the ISA cannot run is an error, never a silent f32.
    pub fn load_with(
        onnx: &[u8],
        isa: Isa,
        precision: Precision,
    ) -> Result<NativeModel, NativeError> {
        let isa = isa.check_available().unwrap_or(Isa::Portable);
        precision.check(isa).map_err(NativeError::Precision)?;
        let mut compiled = compile::compile(onnx)?;
        if precision == Precision::Bf16 {
            for w in compiled.program.gemm_weights_mut() {
                w.enable_bf16();
            }
            compiled.program.enable_bf16_dense();
        }
        Ok(NativeModel {
            program: compiled.program,
            inputs: compiled.inputs,
            outputs: compiled.outputs,
            isa,
            precision,
            arenas: Mutex::new(Vec::new()),
        })
    }

    /// The precision the model's convolutions and GEMMs run in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The model's inputs.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The model's outputs.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The engine name, for `describe`, logs and metrics.
    pub fn backend(&self) -> &'static str {
        "native"
    }

    /// The instruction set the kernels run with.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Number of compiled steps (after folding and fusion).
    pub fn step_count(&self) -> usize {
        self.program.steps.len()
    }

    /// Runs the model `runs` times and returns, per compiled step, its
    /// description, floating-point operations per run and median time:
    /// the per-layer profile behind the benchmark report.
    pub fn profile(
        &self,
        inputs: &[&Tensor],
        runs: usize,
    ) -> Result<Vec<StepProfile>, NativeError> {
        let data = self.check_inputs(inputs)?;
        let mut arena = self.program.new_arena();
        let n = self.program.steps.len();
        let mut samples = vec![Vec::with_capacity(runs); n];
        let _busy = parallel::busy();
        let helpers = parallel::borrow_idle();
        self.program
            .run(self.isa, helpers.threads(), &mut arena, &data);
        for _ in 0..runs.max(1) {
            let mut t = vec![0f64; n];
            self.program
                .run_timed(self.isa, helpers.threads(), &mut arena, &data, Some(&mut t));
            for (s, v) in samples.iter_mut().zip(t) {
                s.push(v);
            }
        }
        Ok(self
            .program
            .steps
            .iter()
            .zip(samples)
            .map(|(step, mut s)| {
                s.sort_by(f64::total_cmp);
                let (what, flops) = step.describe();
                StepProfile {
                    step: what,
                    flops,
                    median_ms: s[s.len() / 2] * 1e3,
                }
            })
            .collect())
    }

    fn check_inputs<'a>(&self, inputs: &[&'a Tensor]) -> Result<Vec<&'a [f32]>, NativeError> {
        if inputs.len() != self.inputs.len() {
            return Err(NativeError::Input {
                index: inputs.len().min(self.inputs.len()),
                name: String::new(),
                expected: format!("{} inputs", self.inputs.len()),
                got: format!("{} inputs", inputs.len()),
            });
        }
        let mut data = Vec::with_capacity(inputs.len());
        for (index, (t, spec)) in inputs.iter().zip(&self.inputs).enumerate() {
            let shape_ok = t.shape().len() == spec.shape.len()
                && t.shape()
                    .iter()
                    .zip(&spec.shape)
                    .all(|(&g, &w)| g as i64 == w);
            let values = t.as_f32().ok().filter(|_| shape_ok);
            let Some(values) = values else {
                return Err(NativeError::Input {
                    index,
                    name: spec.name.clone(),
                    expected: format!("{:?} {:?}", spec.element_type, spec.shape),
                    got: format!("{:?} {:?}", t.element_type(), t.shape()),
                });
            };
            data.push(values);
        }
        Ok(data)
    }

    /// Runs the model; inputs are checked against [`NativeModel::inputs`].
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, NativeError> {
        let data = self.check_inputs(inputs)?;
        let mut arena = self
            .arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| self.program.new_arena());
        // This run's core counts as busy, and it borrows the idle ones.
        let _busy = parallel::busy();
        let helpers = parallel::borrow_idle();
        let outputs = self
            .program
            .run(self.isa, helpers.threads(), &mut arena, &data);
        drop(helpers);
        self.arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(arena);
        Ok(outputs)
    }
}
