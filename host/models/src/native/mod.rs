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
mod int8;
pub(crate) use int8::is_quantized;
pub mod parallel;
mod recurrent;
#[cfg(test)]
mod recurrent_tests;
mod step;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Mutex;

use tract_onnx::prelude::Framework;

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
    /// The model's own: a quantized (QDQ) graph runs on the int8 kernels,
    /// `u8` activations and `s8` weights, whatever precision was asked for.
    Int8,
}

impl Precision {
    /// `f32` or `bf16`, as configured and reported.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// What multiplies bf16 on `isa` (AMX where the CPU has it and the
    /// process may use it); `None` for f32.
    pub fn bf16_engine(self, isa: Isa) -> Option<edgeplug_kernels::fast::bf16::Engine> {
        use edgeplug_kernels::fast::bf16::Engine;
        match (self, isa) {
            (Precision::F32 | Precision::Int8, _) => None,
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
            Precision::Int8 => return Err(INT8_IS_THE_MODELS.to_string()),
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

const INT8_IS_THE_MODELS: &str = "int8 is not asked for but comes with the model: \
     a quantized (QDQ) ONNX model runs in int8 whatever the precision setting";

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Err(INT8_IS_THE_MODELS.to_string()),
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
    body: Body,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    isa: Isa,
    precision: Precision,
}

/// The compiled steps and a pool of arenas to run them in.
enum Body {
    Float {
        program: Program,
        arenas: Mutex<Vec<Arena>>,
    },
    Int8 {
        program: int8::QProgram,
        arenas: Mutex<Vec<int8::QArena>>,
    },
}

/// Takes an arena from `pool`, or makes one.
fn borrow_arena<A>(pool: &Mutex<Vec<A>>, make: impl FnOnce() -> A) -> A {
    pool.lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_else(make)
}

/// Gives `arena` back to `pool`.
fn return_arena<A>(pool: &Mutex<Vec<A>>, arena: A) {
    pool.lock().unwrap_or_else(|e| e.into_inner()).push(arena);
}

impl std::fmt::Debug for NativeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeModel")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("isa", &self.isa)
            .field("precision", &self.precision)
            .field("steps", &self.step_count())
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
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut std::io::Cursor::new(onnx))
            .map_err(|e| NativeError::Load(format!("{e:#}")))?;
        NativeModel::load_proto(&proto, isa, precision)
    }

    /// Like [`NativeModel::load_with`], from a model whose protobuf the caller has already
    /// decoded (`Model::load` reads it first for its own checks).
    pub(crate) fn load_proto(
        proto: &tract_onnx::pb::ModelProto,
        isa: Isa,
        precision: Precision,
    ) -> Result<NativeModel, NativeError> {
        let isa = isa.check_available().unwrap_or(Isa::Portable);
        precision.check(isa).map_err(NativeError::Precision)?;
        if int8::is_quantized(proto) {
            let compiled = int8::compile(proto)?;
            return Ok(NativeModel {
                body: Body::Int8 {
                    program: compiled.program,
                    arenas: Mutex::new(Vec::new()),
                },
                inputs: compiled.inputs,
                outputs: compiled.outputs,
                isa,
                precision: Precision::Int8,
            });
        }
        let mut compiled = compile::compile(proto)?;
        if precision == Precision::Bf16 {
            for w in compiled.program.gemm_weights_mut() {
                w.enable_bf16();
            }
            compiled.program.enable_bf16_dense();
        }
        Ok(NativeModel {
            body: Body::Float {
                program: compiled.program,
                arenas: Mutex::new(Vec::new()),
            },
            inputs: compiled.inputs,
            outputs: compiled.outputs,
            isa,
            precision,
        })
    }

    /// The float program, for tests that look at its steps.
    #[cfg(test)]
    fn float_program(&self) -> &Program {
        match &self.body {
            Body::Float { program, .. } => program,
            Body::Int8 { .. } => panic!("an int8 model has no float program"),
        }
    }

    /// The precision the model's convolutions and GEMMs run in: `int8`
    /// for a quantized model.
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
        match &self.body {
            Body::Float { program, .. } => program.steps.len(),
            Body::Int8 { program, .. } => program.step_count(),
        }
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
        let n = self.step_count();
        let mut samples = vec![Vec::with_capacity(runs); n];
        let _busy = parallel::busy();
        let helpers = parallel::borrow_idle();
        let described: Vec<(String, u64)> = match &self.body {
            Body::Float { program, .. } => {
                let mut arena = program.new_arena();
                program.run(self.isa, helpers.threads(), &mut arena, &data);
                for _ in 0..runs.max(1) {
                    let mut t = vec![0f64; n];
                    program.run_timed(self.isa, helpers.threads(), &mut arena, &data, Some(&mut t));
                    samples.iter_mut().zip(t).for_each(|(s, v)| s.push(v));
                }
                program.steps.iter().map(|s| s.describe()).collect()
            }
            Body::Int8 { program, .. } => {
                let mut arena = program.new_arena();
                program.run_timed(self.isa, &mut arena, &data, None);
                for _ in 0..runs.max(1) {
                    let mut t = vec![0f64; n];
                    program.run_timed(self.isa, &mut arena, &data, Some(&mut t));
                    samples.iter_mut().zip(t).for_each(|(s, v)| s.push(v));
                }
                program.describe()
            }
        };
        Ok(described
            .into_iter()
            .zip(samples)
            .map(|((what, flops), mut s)| {
                s.sort_by(f64::total_cmp);
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
        // This run's core counts as busy, and it borrows the idle ones.
        let _busy = parallel::busy();
        Ok(match &self.body {
            Body::Float { program, arenas } => {
                let mut arena = borrow_arena(arenas, || program.new_arena());
                let helpers = parallel::borrow_idle();
                let outputs = program.run(self.isa, helpers.threads(), &mut arena, &data);
                drop(helpers);
                return_arena(arenas, arena);
                outputs
            }
            Body::Int8 { program, arenas } => {
                let mut arena = borrow_arena(arenas, || program.new_arena());
                let outputs = program.run_timed(self.isa, &mut arena, &data, None);
                return_arena(arenas, arena);
                outputs
            }
        })
    }
}
