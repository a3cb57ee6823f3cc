//! ONNX `LSTM` and `GRU` on the native backend.
//!
//! tract-onnx expands a recurrent node into a `Scan` whose body is a small
//! graph run once per timestep, and it drops the attributes it does not
//! implement (`direction`, `activations`, `clip`, ...). For the native
//! backend, [`register`] replaces the `LSTM` and `GRU` parsers with one that
//! keeps the node whole, as a [`RecOp`] carrying every attribute; tract still
//! checks and types its inputs and outputs (its own `CommonRec` rules). The
//! compiler then turns a `RecOp` into a [`Recurrent`] step, or refuses it with
//! the attribute it does not cover so that the model runs on tract as before.
//!
//! A [`Recurrent`] runs in two phases:
//! - the input side of every gate, for every timestep, batch row and
//!   direction at once: one GEMM `[T·B, I] · [I, dirs·G·H]` on the packed
//!   kernel of [`fast::gemm_rows`], with the input and (where the math
//!   allows) recurrent biases in its epilogue;
//! - the recurrence, fused: per timestep, the hidden-state product
//!   `h · Rᵀ` accumulated onto that step's gate row in registers, then the
//!   gate nonlinearities and the cell update in the same pass, writing the
//!   new state in place.

use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext, optional_inputs, optional_outputs};
use tract_onnx::ops::rec::common::CommonRec;
use tract_onnx::ops::rec::{gru::GRU, lstm::LSTM};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::SpecialOps;
use tract_onnx::prelude::{
    OutletId, TDim, TVec, Tensor as TractTensor, TractResult, TypedFact, TypedModel,
};
use tract_onnx::tract_core::internal::{DatumTypeExt, EvalOp, Op, StaticName, TValue, TypedOp};
use tract_onnx::tract_core::{as_op, not_out_of_plan, op_as_typed_op};
use tract_onnx::tract_hir::internal::{Expansion, InferenceOp, Solver, TensorProxy, expand};

use edgeplug_kernels::fast::{self, AlignedBuf, Epilogue, Isa, PackedRhs};

/// The recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Cell {
    /// Gates `i, o, f, c` (ONNX order).
    Lstm,
    /// Gates `z, r, h`.
    Gru { linear_before_reset: bool },
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru { .. } => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Cell::Lstm => "LSTM",
            Cell::Gru { .. } => "GRU",
        }
    }

    /// ONNX's default activations, one direction's worth.
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru { .. } => &["Sigmoid", "Tanh"],
        }
    }
}

/// The `direction` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Direction {
    Forward,
    Reverse,
    Bidirectional,
}

impl Direction {
    fn count(self) -> usize {
        if self == Direction::Bidirectional {
            2
        } else {
            1
        }
    }

    /// Whether direction `d` (0 or 1) runs from the last timestep back.
    fn reversed(self, d: usize) -> bool {
        self == Direction::Reverse || (self == Direction::Bidirectional && d == 1)
    }
}

/// Replaces tract-onnx's `LSTM` and `GRU` parsers with ones that keep the
/// node whole (see the module documentation). Only the native backend's
/// parser uses this register; tract's own loads keep its expansion.
pub(super) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("LSTM", parse_lstm);
    reg.insert("GRU", parse_gru);
}

fn parse_lstm(
    _ctx: &ParsingContext,
    pb: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    // The body only feeds tract's shape rules (gate multipliers); it is
    // never wired.
    let body = LSTM {
        f: Box::new(tract_onnx::tract_hir::ops::nn::sigmoid()),
        g: Box::new(tract_onnx::tract_hir::ops::math::tanh()),
        h: Box::new(tract_onnx::tract_hir::ops::math::tanh()),
    };
    let common = CommonRec::from_node_and_options(pb, 3, 0, Box::new(body))?;
    Ok((
        expand(RecExpansion {
            op: RecOp::from_node(pb, Cell::Lstm),
            common,
        }),
        vec![],
    ))
}

fn parse_gru(
    _ctx: &ParsingContext,
    pb: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let linear_before_reset = attr(pb, "linear_before_reset").is_some_and(|a| a.i != 0);
    let body = GRU {
        f: Box::new(tract_onnx::tract_hir::ops::nn::sigmoid()),
        g: Box::new(tract_onnx::tract_hir::ops::math::tanh()),
        linear_before_reset,
    };
    let common = CommonRec::from_node_and_options(pb, 3, 0, Box::new(body))?;
    Ok((
        expand(RecExpansion {
            op: RecOp::from_node(
                pb,
                Cell::Gru {
                    linear_before_reset,
                },
            ),
            common,
        }),
        vec![],
    ))
}

fn attr<'a>(pb: &'a NodeProto, name: &str) -> Option<&'a tract_onnx::pb::AttributeProto> {
    pb.attribute.iter().find(|a| a.name == name)
}

/// A whole ONNX `LSTM` or `GRU` node in tract's typed graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct RecOp {
    pub cell: Cell,
    pub direction: Direction,
    /// ONNX `layout = 1`: `X` is `[batch, seq, input]`.
    pub batch_first: bool,
    /// The `hidden_size` attribute, if given.
    pub hidden_size: Option<usize>,
    /// An attribute the native backend does not implement: the node then
    /// runs on tract.
    pub refused: Option<String>,
    /// Positions among the node's inputs of `B`, `sequence_lens`,
    /// `initial_h`, `initial_c` and `P` (`X`, `W`, `R` are 0, 1, 2).
    pub optional_inputs: [Option<usize>; 5],
    /// Positions among the node's outputs of `Y`, `Y_h` and `Y_c`.
    pub outputs: [Option<usize>; 3],
}

impl RecOp {
    fn from_node(pb: &NodeProto, cell: Cell) -> RecOp {
        let mut inputs = optional_inputs(pb).skip(3);
        let optional_inputs = std::array::from_fn(|_| inputs.next().flatten());
        let mut outs = optional_outputs(pb);
        let outputs = std::array::from_fn(|_| outs.next().flatten());
        let mut refused = Vec::new();
        let direction = match attr(pb, "direction").map(|a| a.s.as_slice()) {
            None | Some(b"forward") => Direction::Forward,
            Some(b"reverse") => Direction::Reverse,
            Some(b"bidirectional") => Direction::Bidirectional,
            Some(other) => {
                refused.push(format!("direction {:?}", String::from_utf8_lossy(other)));
                Direction::Forward
            }
        };
        if let Some(a) = attr(pb, "activations") {
            let names: Vec<String> = a
                .strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            let defaults = cell.default_activations();
            let ok = names.len() == defaults.len() * direction.count()
                && names
                    .iter()
                    .zip(defaults.iter().cycle())
                    .all(|(n, d)| n.eq_ignore_ascii_case(d));
            if !ok {
                refused.push(format!("activations {names:?}"));
            }
        }
        for name in ["activation_alpha", "activation_beta"] {
            if attr(pb, name).is_some_and(|a| !a.floats.is_empty()) {
                refused.push(name.to_string());
            }
        }
        if attr(pb, "clip").is_some() {
            refused.push("clip".to_string());
        }
        if cell == Cell::Lstm && attr(pb, "input_forget").is_some_and(|a| a.i != 0) {
            refused.push("input_forget".to_string());
        }
        let batch_first = match attr(pb, "layout").map(|a| a.i) {
            None | Some(0) => false,
            Some(1) => true,
            Some(other) => {
                refused.push(format!("layout {other}"));
                false
            }
        };
        let hidden_size = attr(pb, "hidden_size").map(|a| a.i.max(0) as usize);
        RecOp {
            cell,
            direction,
            batch_first,
            hidden_size,
            refused: (!refused.is_empty()).then(|| refused.join(", ")),
            optional_inputs,
            outputs,
        }
    }

    /// The op as the error names it, e.g. `LSTM (clip)`.
    pub fn describe(&self) -> String {
        match &self.refused {
            Some(r) => format!("{} ({r})", self.cell.name()),
            None => self.cell.name().to_string(),
        }
    }
}

/// The parsed node before typing: tract's `CommonRec` checks and infers the
/// shapes, then [`Expansion::wire`] puts the whole [`RecOp`] in the typed graph.
#[derive(Clone, Debug)]
struct RecExpansion {
    op: RecOp,
    common: CommonRec,
}

impl Expansion for RecExpansion {
    fn name(&self) -> StaticName {
        self.op.cell.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        self.common.nboutputs()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        self.common.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.op.clone(), inputs)
    }
}

impl Op for RecOp {
    fn name(&self) -> StaticName {
        self.cell.name().into()
    }
    op_as_typed_op!();
}

impl EvalOp for RecOp {
    // Only the native compiler reads this op; it is never evaluated by tract.
    not_out_of_plan!();
}

impl TypedOp for RecOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (x, w, r) = (inputs[0], inputs[1], inputs[2]);
        let (seq, batch) = if self.batch_first {
            (x.shape[1].clone(), x.shape[0].clone())
        } else {
            (x.shape[0].clone(), x.shape[1].clone())
        };
        let dirs = w.shape[0].clone();
        let hidden = r.shape[2].clone();
        let dt = x.datum_type;
        let y: Vec<TDim> = if self.batch_first {
            vec![batch.clone(), seq, dirs.clone(), hidden.clone()]
        } else {
            vec![seq, dirs.clone(), batch.clone(), hidden.clone()]
        };
        let state: Vec<TDim> = if self.batch_first {
            vec![batch, dirs, hidden]
        } else {
            vec![dirs, batch, hidden]
        };
        let mut facts = TVec::new();
        for (i, o) in self.outputs.iter().enumerate() {
            if o.is_some() {
                facts.push(dt.fact(if i == 0 { y.clone() } else { state.clone() }));
            }
        }
        Ok(facts)
    }

    as_op!();
}

/// Gate columns per direction are padded to a multiple of this, so every
/// direction's gate row starts on a 64-byte boundary.
const LANES: usize = 16;

/// The step's scratch regions also start on 16-value boundaries.
fn round_up(n: usize) -> usize {
    n.div_ceil(LANES) * LANES
}

/// The weights and options of a recurrent layer, in ONNX layouts: what
/// [`Recurrent::new`] packs (and the reference implementation reads).
#[derive(Clone, Debug)]
pub(super) struct Layer<'a> {
    pub cell: Cell,
    pub direction: Direction,
    pub batch_first: bool,
    /// Timesteps, batch, input size, hidden size.
    pub t: usize,
    pub b: usize,
    pub i: usize,
    pub h: usize,
    /// `[dirs, G·H, I]`.
    pub w: &'a [f32],
    /// `[dirs, G·H, H]`.
    pub r: &'a [f32],
    /// `[dirs, 2·G·H]`: input biases, then recurrent biases.
    pub bias: Option<&'a [f32]>,
    /// One length per batch row, each in `1..=t`.
    pub seq_lens: Option<Vec<usize>>,
    /// `initial_h` (and `initial_c`, LSTM), laid out as `Y_h`.
    pub h0: Option<&'a [f32]>,
    pub c0: Option<&'a [f32]>,
    /// LSTM peepholes `[dirs, 3·H]` (`i, o, f`).
    pub p: Option<&'a [f32]>,
}

impl Layer<'_> {
    pub fn dirs(&self) -> usize {
        self.direction.count()
    }

    /// Shape of `Y`.
    #[cfg(test)]
    pub fn y_shape(&self) -> Vec<usize> {
        if self.batch_first {
            vec![self.b, self.t, self.dirs(), self.h]
        } else {
            vec![self.t, self.dirs(), self.b, self.h]
        }
    }

    /// Shape of `Y_h` and `Y_c`.
    #[cfg(test)]
    pub fn state_shape(&self) -> Vec<usize> {
        if self.batch_first {
            vec![self.b, self.dirs(), self.h]
        } else {
            vec![self.dirs(), self.b, self.h]
        }
    }

    /// Index of batch row `b`, timestep `t` among `X`'s rows.
    fn x_row(&self, t: usize, b: usize) -> usize {
        if self.batch_first {
            b * self.t + t
        } else {
            t * self.b + b
        }
    }

    /// Offset of direction `d`, batch row `b` in `Y_h`.
    fn state_at(&self, d: usize, b: usize) -> usize {
        let row = if self.batch_first {
            b * self.dirs() + d
        } else {
            d * self.b + b
        };
        row * self.h
    }

    /// Offset of timestep `t`, direction `d`, batch row `b` in `Y`.
    fn y_at(&self, t: usize, d: usize, b: usize) -> usize {
        let row = if self.batch_first {
            (b * self.t + t) * self.dirs() + d
        } else {
            (t * self.dirs() + d) * self.b + b
        };
        row * self.h
    }

    fn check(&self) -> Result<(), String> {
        let (g, dirs, h) = (self.cell.gates(), self.dirs(), self.h);
        let name = self.cell.name();
        if self.t == 0 || self.b == 0 || self.i == 0 || h == 0 {
            return Err(format!("{name} with an empty dimension"));
        }
        let want = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(format!("{name} {what}: {got} values, expected {want}"))
            }
        };
        want("W", self.w.len(), dirs * g * h * self.i)?;
        want("R", self.r.len(), dirs * g * h * h)?;
        if let Some(b) = self.bias {
            want("B", b.len(), dirs * 2 * g * h)?;
        }
        if let Some(h0) = self.h0 {
            want("initial_h", h0.len(), dirs * self.b * h)?;
        }
        if let Some(c0) = self.c0 {
            want("initial_c", c0.len(), dirs * self.b * h)?;
        }
        if let Some(p) = self.p {
            if self.cell != Cell::Lstm {
                return Err(format!("{name} with peepholes"));
            }
            want("P", p.len(), dirs * 3 * h)?;
        }
        if let Some(lens) = &self.seq_lens {
            want("sequence_lens", lens.len(), self.b)?;
            if let Some(bad) = lens.iter().find(|&&l| l == 0 || l > self.t) {
                return Err(format!(
                    "{name} sequence_lens {bad} outside 1..={} (the sequence length)",
                    self.t
                ));
            }
        }
        Ok(())
    }
}

/// Which outputs a step writes: `Y`, `Y_h`, `Y_c`.
pub(super) type Wanted = [bool; 3];

/// A compiled recurrent layer (see the module documentation).
///
/// Its output slot holds, in order: `Y_h` (the running hidden state, so at
/// offset 0: a node whose only used output is `Y_h` needs no copy), `Y_c`
/// (the LSTM cell state), `Y` if wanted, then scratch: the input-side gate
/// rows of the whole sequence and one gate row being accumulated.
#[derive(Debug)]
pub(super) struct Recurrent {
    cell: Cell,
    direction: Direction,
    batch_first: bool,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    /// Gate columns per direction, padded to [`LANES`].
    ng: usize,
    /// `W` of both directions, `[I, dirs·ng]`.
    w: PackedRhs,
    /// Input-side bias per gate column (with `R`'s bias where it adds
    /// directly: every LSTM gate, GRU `z`/`r`, and GRU `h` unless
    /// `linear_before_reset`).
    bias: Vec<f32>,
    /// Per direction, `Rᵀ` as `[H, ng]`: row `k` holds every gate's weight
    /// for `h[k]`.
    r: Vec<AlignedBuf>,
    /// GRU with `linear_before_reset`: per direction, `R`'s bias of the
    /// `h` gate, applied inside the reset gate's product.
    rb_h: Vec<Vec<f32>>,
    /// LSTM peepholes, per direction `[3·H]` (`i, o, f`).
    p: Option<Vec<Vec<f32>>>,
    seq_lens: Option<Vec<usize>>,
    h0: Option<Vec<f32>>,
    c0: Option<Vec<f32>>,
    want_y: bool,
    off_yc: usize,
    off_y: usize,
    off_pre: usize,
    len: usize,
}

impl Recurrent {
    /// Checks and packs a layer.
    pub fn new(layer: &Layer<'_>, wanted: Wanted) -> Result<Recurrent, String> {
        layer.check()?;
        let (g, dirs, h, i) = (layer.cell.gates(), layer.dirs(), layer.h, layer.i);
        let gh = g * h;
        let ng = round_up(gh);
        let zeros = vec![0f32; dirs * 2 * gh];
        let bias_in = layer.bias.unwrap_or(&zeros);
        // `W` transposed into `[I, dirs·ng]`, and the folded biases.
        let mut wt = vec![0f32; i * dirs * ng];
        let mut bias = vec![0f32; dirs * ng];
        let mut r = Vec::with_capacity(dirs);
        let mut rb_h = Vec::new();
        for d in 0..dirs {
            let (wd, rd) = (
                &layer.w[d * gh * i..][..gh * i],
                &layer.r[d * gh * h..][..gh * h],
            );
            let (wb, rb) = (
                &bias_in[d * 2 * gh..][..gh],
                &bias_in[d * 2 * gh + gh..][..gh],
            );
            for col in 0..gh {
                for k in 0..i {
                    wt[k * dirs * ng + d * ng + col] = wd[col * i + k];
                }
                let recurrent_in_product = matches!(
                    layer.cell,
                    Cell::Gru {
                        linear_before_reset: true
                    }
                ) && col >= 2 * h;
                bias[d * ng + col] = wb[col] + if recurrent_in_product { 0.0 } else { rb[col] };
            }
            let mut rt = AlignedBuf::zeroed(h * ng);
            for col in 0..gh {
                for k in 0..h {
                    rt[k * ng + col] = rd[col * h + k];
                }
            }
            r.push(rt);
            if let Cell::Gru {
                linear_before_reset: true,
            } = layer.cell
            {
                rb_h.push(rb[2 * h..3 * h].to_vec());
            }
        }
        let state = dirs * layer.b * h;
        let off_yc = round_up(state);
        let off_y = if layer.cell == Cell::Lstm {
            off_yc + round_up(state)
        } else {
            off_yc
        };
        let off_pre = off_y
            + if wanted[0] {
                round_up(layer.t * state)
            } else {
                0
            };
        let off_gates = off_pre + layer.t * layer.b * dirs * ng;
        // One gate row, plus `H` for a GRU's second product (see `gru_step`).
        let len = off_gates + round_up(ng + h);
        Ok(Recurrent {
            cell: layer.cell,
            direction: layer.direction,
            batch_first: layer.batch_first,
            t: layer.t,
            b: layer.b,
            i,
            h,
            ng,
            w: PackedRhs::pack(&wt, i, dirs * ng),
            bias,
            r,
            rb_h,
            p: layer
                .p
                .map(|p| p.chunks(3 * h).map(<[f32]>::to_vec).collect()),
            seq_lens: layer.seq_lens.clone(),
            h0: layer.h0.map(<[f32]>::to_vec),
            c0: layer.c0.map(<[f32]>::to_vec),
            want_y: wanted[0],
            off_yc,
            off_y,
            off_pre,
            len,
        })
    }

    /// Length of the output slot (outputs and scratch).
    pub fn slot_len(&self) -> usize {
        self.len
    }

    fn dirs(&self) -> usize {
        self.direction.count()
    }

    /// Where `Y`, `Y_h` and `Y_c` are in the output slot: offset and shape.
    pub fn outputs(&self) -> [Option<(usize, Vec<usize>)>; 3] {
        let (t, b, d, h) = (self.t, self.b, self.dirs(), self.h);
        let (y, state) = if self.batch_first {
            (vec![b, t, d, h], vec![b, d, h])
        } else {
            (vec![t, d, b, h], vec![d, b, h])
        };
        [
            self.want_y.then_some((self.off_y, y)),
            Some((0, state.clone())),
            (self.cell == Cell::Lstm).then_some((self.off_yc, state)),
        ]
    }

    /// `(description, FLOPs)` for the profile.
    pub fn describe(&self) -> (String, u64) {
        let (g, d) = (self.cell.gates(), self.dirs());
        let macs = d * self.t * self.b * g * self.h * (self.i + self.h);
        (
            format!(
                "{} {:?} {}->{} x{} b{}",
                self.cell.name(),
                self.direction,
                self.i,
                self.h,
                self.t,
                self.b
            ),
            2 * macs as u64,
        )
    }

    fn layer(&self) -> Layer<'static> {
        Layer {
            cell: self.cell,
            direction: self.direction,
            batch_first: self.batch_first,
            t: self.t,
            b: self.b,
            i: self.i,
            h: self.h,
            w: &[],
            r: &[],
            bias: None,
            seq_lens: None,
            h0: None,
            c0: None,
            p: None,
        }
    }

    /// Runs the layer on `x` (`X`, `[T·B, I]` in the node's layout) into
    /// `out` (the step's slot, [`Recurrent::slot_len`] values).
    pub fn run(&self, isa: Isa, x: &[f32], out: &mut [f32]) {
        let (dirs, ng) = (self.dirs(), self.ng);
        let rows = self.t * self.b;
        let (head, scratch) = out[..self.len].split_at_mut(self.off_pre);
        let (pre, gates) = scratch.split_at_mut(rows * dirs * ng);
        let ep = Epilogue {
            bias: Some(&self.bias),
            ..Epilogue::default()
        };
        fast::gemm_rows(isa, rows, x, self.i, &self.w, pre, dirs * ng, &ep);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") {
            if isa == Isa::Avx512 && isa.available() {
                // SAFETY: the CPU has AVX-512F and FMA, checked just above.
                unsafe { self.recur_avx512(head, pre, gates) };
                return;
            }
            if isa == Isa::Avx2 && isa.available() {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                unsafe { self.recur_avx2(head, pre, gates) };
                return;
            }
        }
        // Every AArch64 CPU fuses multiply-adds in one instruction.
        #[cfg(target_arch = "aarch64")]
        return self.recur::<Fused>(head, pre, gates);
        #[allow(unreachable_code)]
        self.recur::<Plain>(head, pre, gates);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    fn recur_avx512(&self, head: &mut [f32], pre: &[f32], gates: &mut [f32]) {
        self.recur::<Fused>(head, pre, gates);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn recur_avx2(&self, head: &mut [f32], pre: &[f32], gates: &mut [f32]) {
        self.recur::<Fused>(head, pre, gates);
    }

    /// The recurrence over every direction and batch row (each independent).
    #[inline(always)]
    fn recur<M: MulAdd>(&self, head: &mut [f32], pre: &[f32], gates: &mut [f32]) {
        let layer = self.layer();
        let (dirs, ng, h) = (self.dirs(), self.ng, self.h);
        let state = dirs * self.b * h;
        let (hs, rest) = head.split_at_mut(self.off_yc);
        let (cs, y) = rest.split_at_mut(self.off_y - self.off_yc);
        match &self.h0 {
            Some(h0) => hs[..state].copy_from_slice(h0),
            None => hs[..state].fill(0.0),
        }
        if self.cell == Cell::Lstm {
            match &self.c0 {
                Some(c0) => cs[..state].copy_from_slice(c0),
                None => cs[..state].fill(0.0),
            }
        }
        for d in 0..dirs {
            let r = &self.r[d][..];
            let reversed = self.direction.reversed(d);
            for b in 0..self.b {
                let len = self.seq_lens.as_ref().map_or(self.t, |l| l[b]);
                let at = layer.state_at(d, b);
                for s in 0..len {
                    let t = if reversed { len - 1 - s } else { s };
                    let row = &pre[(layer.x_row(t, b) * dirs + d) * ng..][..ng];
                    let hd = &mut hs[at..at + h];
                    match self.cell {
                        Cell::Lstm => {
                            let c = &mut cs[at..at + h];
                            let p = self.p.as_ref().map(|p| &p[d][..]);
                            lstm_step::<M>(h, row, r, ng, p, hd, c, gates);
                        }
                        Cell::Gru {
                            linear_before_reset,
                        } => {
                            let rb = linear_before_reset.then(|| &self.rb_h[d][..]);
                            gru_step::<M>(h, row, r, ng, rb, hd, gates);
                        }
                    }
                    if self.want_y {
                        y[layer.y_at(t, d, b)..][..h].copy_from_slice(&hs[at..at + h]);
                    }
                }
                if self.want_y {
                    // Past a row's length, ONNX's `Y` is zero.
                    for t in len..self.t {
                        y[layer.y_at(t, d, b)..][..h].fill(0.0);
                    }
                }
            }
        }
    }
}

/// One LSTM timestep of one batch row: `gates = row + h·Rᵀ`, then
/// `c = f⊙c + i⊙g`, `h = o⊙tanh(c)` in place.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lstm_step<M: MulAdd>(
    h: usize,
    row: &[f32],
    r: &[f32],
    ng: usize,
    p: Option<&[f32]>,
    hd: &mut [f32],
    c: &mut [f32],
    gates: &mut [f32],
) {
    let gates = &mut gates[..ng];
    gates.copy_from_slice(row);
    matvec_acc::<M>(hd, r, ng, gates);
    let (gi, rest) = gates.split_at(h);
    let (go, rest) = rest.split_at(h);
    let (gf, rest) = rest.split_at(h);
    let gc = &rest[..h];
    match p {
        None => {
            for (((((hj, cj), &i), &o), &f), &g) in hd
                .iter_mut()
                .zip(c.iter_mut())
                .zip(gi)
                .zip(go)
                .zip(gf)
                .zip(gc)
            {
                let cn = M::mul_add(sigmoid::<M>(f), *cj, sigmoid::<M>(i) * tanh::<M>(g));
                *cj = cn;
                *hj = sigmoid::<M>(o) * tanh::<M>(cn);
            }
        }
        Some(p) => {
            let (pi, rest) = p.split_at(h);
            let (po, pf) = rest.split_at(h);
            for (j, (hj, cj)) in hd.iter_mut().zip(c.iter_mut()).enumerate() {
                let i = sigmoid::<M>(M::mul_add(pi[j], *cj, gi[j]));
                let f = sigmoid::<M>(M::mul_add(pf[j], *cj, gf[j]));
                let cn = M::mul_add(f, *cj, i * tanh::<M>(gc[j]));
                let o = sigmoid::<M>(M::mul_add(po[j], cn, go[j]));
                *cj = cn;
                *hj = o * tanh::<M>(cn);
            }
        }
    }
}

/// One GRU timestep of one batch row, in place on `hd`. With `rb` (the
/// `h` gate's recurrent bias, `linear_before_reset`) the whole `h·Rᵀ` is one
/// product and the reset gate scales its `h` part; without, the `h` gate
/// needs `(r⊙h)·R_hᵀ`, a second product after the reset gate.
#[inline(always)]
fn gru_step<M: MulAdd>(
    h: usize,
    row: &[f32],
    r: &[f32],
    ng: usize,
    rb: Option<&[f32]>,
    hd: &mut [f32],
    gates: &mut [f32],
) {
    match rb {
        Some(rb) => {
            let gates = &mut gates[..ng];
            gates[..2 * h].copy_from_slice(&row[..2 * h]);
            gates[2 * h..3 * h].copy_from_slice(rb);
            gates[3 * h..].fill(0.0);
            matvec_acc::<M>(hd, r, ng, gates);
            let (gz, rest) = gates.split_at(h);
            let (gr, rest) = rest.split_at(h);
            let gh = &rest[..h];
            let xh = &row[2 * h..3 * h];
            for ((((hj, &z), &rr), &a), &x) in hd.iter_mut().zip(gz).zip(gr).zip(gh).zip(xh) {
                let n = tanh::<M>(M::mul_add(sigmoid::<M>(rr), a, x));
                let z = sigmoid::<M>(z);
                *hj = M::mul_add(z, *hj - n, n);
            }
        }
        None => {
            // `gates` (`ng + H` long): `z, r` accumulated in place, then
            // r⊙h (the second product's input), then that product
            // accumulated onto the `h` gate's input side.
            let (zr, rest) = gates.split_at_mut(2 * h);
            zr.copy_from_slice(&row[..2 * h]);
            matvec_acc::<M>(hd, r, ng, zr);
            let (rh, acc) = rest.split_at_mut(h);
            for ((v, &g), &hj) in rh.iter_mut().zip(&zr[h..]).zip(hd.iter()) {
                *v = sigmoid::<M>(g) * hj;
            }
            let acc = &mut acc[..h];
            acc.copy_from_slice(&row[2 * h..3 * h]);
            matvec_acc::<M>(rh, &r[2 * h..], ng, acc);
            for ((hj, &z), &a) in hd.iter_mut().zip(&zr[..h]).zip(acc.iter()) {
                let n = tanh::<M>(a);
                let z = sigmoid::<M>(z);
                *hj = M::mul_add(z, *hj - n, n);
            }
        }
    }
}

/// `acc[j] += Σ_k v[k] · m[k·ld + j]`: a row vector times a row-major
/// matrix, the accumulators in registers, 64 columns at a time (four
/// AVX-512 vectors; fixed-size arrays so LLVM keeps them in registers
/// across the whole `k` loop).
#[inline(always)]
fn matvec_acc<M: MulAdd>(v: &[f32], m: &[f32], ld: usize, acc: &mut [f32]) {
    let n = acc.len();
    let mut j = 0;
    while j + 64 <= n {
        matvec_block::<M, 64>(v, m, ld, j, &mut acc[j..j + 64]);
        j += 64;
    }
    while j + 16 <= n {
        matvec_block::<M, 16>(v, m, ld, j, &mut acc[j..j + 16]);
        j += 16;
    }
    for (jj, a) in acc[j..].iter_mut().enumerate() {
        for (k, &vk) in v.iter().enumerate() {
            *a = M::mul_add(vk, m[k * ld + j + jj], *a);
        }
    }
}

#[inline(always)]
fn matvec_block<M: MulAdd, const W: usize>(
    v: &[f32],
    m: &[f32],
    ld: usize,
    j: usize,
    acc: &mut [f32],
) {
    let mut a: [f32; W] = (&*acc).try_into().expect("block of W columns");
    for (k, &vk) in v.iter().enumerate() {
        let row: &[f32; W] = m[k * ld + j..][..W].try_into().expect("W columns");
        for l in 0..W {
            a[l] = M::mul_add(vk, row[l], a[l]);
        }
    }
    acc.copy_from_slice(&a);
}

/// `a·b + c`: fused where the CPU has FMA (the AVX-512, AVX2 and AArch64 paths), else a
/// multiply and an add (a software `fmaf` call would be far slower).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

struct Fused;
struct Plain;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `e^x` for the gate nonlinearities, in straight-line arithmetic (no libm
/// call) so loops over a gate vectorize: Cephes' `expf` (x = n·ln2 + r,
/// |r| ≤ ln2/2, degree-6 polynomial; relative error about 2e-7), with the
/// input clamped to where 2^n is a normal float.
#[inline(always)]
fn exp<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2^23 rounds to an integer, which then sits in the low
    // mantissa bits: n without a float-to-int conversion.
    const SHIFT: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = M::mul_add(x, LOG2E, SHIFT);
    let n = shifted - SHIFT;
    let bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let r = M::mul_add(n, -0.693_359_4, x);
    let r = M::mul_add(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    p = M::mul_add(p, r, 1.398_199_9e-3);
    p = M::mul_add(p, r, 8.333_452e-3);
    p = M::mul_add(p, r, 4.166_579_6e-2);
    p = M::mul_add(p, r, 0.166_666_65);
    p = M::mul_add(p, r, 0.5);
    let p = M::mul_add(p * r, r, r) + 1.0;
    let scale = f32::from_bits(bits.wrapping_add(127) << 23);
    p * scale
}

#[inline(always)]
fn sigmoid<M: MulAdd>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<M>(-x))
}

/// `tanh x = 2·σ(2x) − 1`: absolute error a few ulps of 1, which is what
/// the state (bounded by 1) carries.
#[inline(always)]
fn tanh<M: MulAdd>(x: f32) -> f32 {
    M::mul_add(2.0, sigmoid::<M>(2.0 * x), -1.0)
}

/// The f32 values of a constant input, or why it is not one.
fn constant(
    name: &str,
    what: &str,
    v: Option<&Option<Arc<TractTensor>>>,
) -> Result<Option<Vec<f32>>, String> {
    match v {
        None => Ok(None),
        Some(None) => Err(format!("{name} with a computed {what}")),
        Some(Some(t)) => {
            let t = t
                .cast_to::<f32>()
                .map_err(|e| format!("{name} {what}: {e}"))?;
            let view = t
                .to_plain_array_view::<f32>()
                .map_err(|e| format!("{name} {what}: {e}"))?;
            Ok(Some(view.iter().copied().collect()))
        }
    }
}

impl RecOp {
    /// Compiles the node: `x_shape` is `X`'s shape, `consts[j]` input `j`
    /// when it is a constant (`X` itself is input 0 and dynamic). An
    /// attribute or input the native backend does not cover is an error
    /// naming it.
    pub fn compile(
        &self,
        x_shape: &[usize],
        w_shape: &[usize],
        consts: &[Option<Arc<TractTensor>>],
        wanted: Wanted,
    ) -> Result<Recurrent, String> {
        let name = self.cell.name();
        if let Some(r) = &self.refused {
            return Err(format!("{name} attribute {r}"));
        }
        let &[a, bb, i] = x_shape else {
            return Err(format!("{name} input of rank {}", x_shape.len()));
        };
        let (t, b) = if self.batch_first { (bb, a) } else { (a, bb) };
        let &[dirs, gh, _] = w_shape else {
            return Err(format!("{name} W of rank {}", w_shape.len()));
        };
        if dirs != self.direction.count() {
            return Err(format!(
                "{name} direction {:?} with W for {dirs} directions",
                self.direction
            ));
        }
        let h = gh / self.cell.gates();
        if self.hidden_size.is_some_and(|hs| hs != h) {
            return Err(format!("{name} hidden_size disagrees with W"));
        }
        let w = constant(name, "W", consts.get(1))?.ok_or("no W")?;
        let r = constant(name, "R", consts.get(2))?.ok_or("no R")?;
        let [bias, seq, h0, c0, p] = self
            .optional_inputs
            .map(|o| o.map(|j| consts.get(j).cloned().unwrap_or(None)));
        let bias = constant(name, "B", bias.as_ref())?;
        let seq_lens = constant(name, "sequence_lens", seq.as_ref())?
            .map(|v| v.iter().map(|&l| l.max(0.0) as usize).collect());
        let h0 = constant(name, "initial_h", h0.as_ref())?;
        let c0 = constant(name, "initial_c", c0.as_ref())?;
        let p = constant(name, "P", p.as_ref())?;
        let layer = Layer {
            cell: self.cell,
            direction: self.direction,
            batch_first: self.batch_first,
            t,
            b,
            i,
            h,
            w: &w,
            r: &r,
            bias: bias.as_deref(),
            seq_lens,
            h0: h0.as_deref(),
            c0: c0.as_deref(),
            p: p.as_deref(),
        };
        Recurrent::new(&layer, wanted)
    }
}
