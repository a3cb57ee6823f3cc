//! The row-major GEMM ([`super::gemm_rows`]) with bf16 inputs and f32
//! accumulation, for models that opt in (`precision = "bf16"`): weights and
//! activations are rounded to bf16 (8 significant bits), each product is
//! exact in f32 and sums stay f32.
//!
//! On AVX512-BF16, `vdpbf16ps` does two multiply-adds per f32 lane (a pair
//! of reduction steps), so weights are packed as pairs: in a panel of
//! 48 columns, one `u32` per (reduction pair, column) holding the even
//! step's bf16 in its low half and the odd step's in its high half. The
//! activations of a call are converted to the same pairs first (one row of
//! `k` values → `k/2` pairs, on the calling thread's scratch). The portable
//! path computes the same rounded products in plain Rust, so the numerics
//! are tested on any CPU.
//!
//! Where the CPU has AMX ([`super::amx`]), its tiles run the GEMM instead,
//! from the same packed pairs. Both accumulate each pair's two products
//! into f32, so the engines agree closely.

use super::pointwise::NR;
use super::{Epilogue, PackedRhs};

/// A [`PackedRhs`]'s weights as bf16 pairs, panel by panel (`[stride][NR]`
/// `u32`s per panel, the last pair's odd half zero when `k` is odd).
#[derive(Clone, Debug)]
pub struct Bf16Rhs {
    /// Pairs that hold weights: `k/2` rounded up.
    pairs: usize,
    /// Pairs per panel and per row of converted activations: `pairs`
    /// rounded up to whole AMX blocks, the rest zero, so a tile never
    /// reads past a panel and needs no second shape for a partial block.
    stride: usize,
    data: Vec<u32>,
}

/// Reduction pairs one AMX tile multiplies (64 bytes of a tile row).
pub(super) const PAIR_BLOCK: usize = 16;

/// `x` rounded to bf16 (to nearest, ties to even; NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for.
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Reduction step `c`'s value `v` as bf16 in its half of a pair: the low
/// half for an even step, the high half for an odd one.
fn in_pair(c: usize, v: f32) -> u32 {
    u32::from(to_bf16(v)) << (16 * (c % 2))
}

/// A pair's two values, even step first.
fn halves(p: u32) -> (f32, f32) {
    (from_bf16(p as u16), from_bf16((p >> 16) as u16))
}

/// `values` as bf16 pairs into `dst` (zeroed, `values.len().div_ceil(2)` long).
fn pack_pairs(values: &[f32], dst: &mut [u32]) {
    for (c, &v) in values.iter().enumerate() {
        dst[c / 2] |= in_pair(c, v);
    }
}

impl Bf16Rhs {
    /// Rounds `b`'s packed weights to bf16 pairs.
    pub fn pack(b: &PackedRhs) -> Bf16Rhs {
        let (k, n) = (b.k(), b.n());
        let pairs = k.div_ceil(2);
        let stride = pairs.next_multiple_of(PAIR_BLOCK);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * stride * NR];
        for p in 0..panels {
            let panel = b.panel(p);
            let dst = &mut data[p * stride * NR..][..stride * NR];
            for c in 0..k {
                for (j, &v) in panel[c * NR..][..NR].iter().enumerate() {
                    dst[(c / 2) * NR + j] |= in_pair(c, v);
                }
            }
        }
        Bf16Rhs {
            pairs,
            stride,
            data,
        }
    }

    /// Panel `p`: `stride` rows of `NR` pairs.
    pub(super) fn panel(&self, p: usize) -> &[u32] {
        &self.data[p * self.stride * NR..][..self.stride * NR]
    }

    /// Pairs per panel row block and per converted activation row.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn stride(&self) -> usize {
        self.stride
    }
}

/// Whether this CPU runs the bf16 GEMM in hardware (AVX512-BF16).
pub fn bf16_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// What multiplies a bf16 GEMM's pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Plain Rust emulating the hardware's rounding, on any CPU.
    Portable,
    /// AVX-512 `vdpbf16ps`, 16 columns × one pair per instruction.
    Avx512Bf16,
    /// AMX tiles, 16 rows × 16 columns × 32 reduction steps per multiply.
    Amx,
}

impl Engine {
    /// The fastest engine this process can use.
    pub fn best() -> Engine {
        [Engine::Amx, Engine::Avx512Bf16]
            .into_iter()
            .find(|e| e.is_available())
            .unwrap_or(Engine::Portable)
    }

    /// Whether this process can run it.
    pub fn is_available(self) -> bool {
        match self {
            Engine::Portable => true,
            Engine::Avx512Bf16 => bf16_hardware(),
            #[cfg(target_arch = "x86_64")]
            Engine::Amx => super::amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Engine::Amx => false,
        }
    }

    /// As logs, metrics and `bench` print it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Portable => "portable",
            Engine::Avx512Bf16 => "avx512-bf16",
            Engine::Amx => "amx",
        }
    }
}

/// `out = epilogue(bf16(a) · bf16(b))`, shapes as [`super::gemm_rows`]
/// (`b` the same weights as `w`), on `engine` when this process can run it
/// ([`Engine::is_available`]), else on the portable emulation.
///
/// # Panics
///
/// If a slice is too short for the shapes given.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_rows(
    engine: Engine,
    m: usize,
    a: &[f32],
    lda: usize,
    w: &PackedRhs,
    b: &Bf16Rhs,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let (k, n) = (w.k(), w.n());
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k == 0 || (lda >= k && a.len() >= (m - 1) * lda + k),
        "gemm_rows: a too short"
    );
    let span = (m - 1) * ldo + n;
    assert!(ldo >= n && out.len() >= span, "gemm_rows: out too short");
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n, "gemm_rows: bias too short");
    }
    if let Some(res) = ep.residual {
        assert!(res.len() >= span, "gemm_rows: residual too short");
    }
    let stride = b.stride;
    // AMX converts one block of rows at a time into the scratch (so it is
    // still in L1 when the tiles load it); the other paths convert all
    // their rows first.
    let amx = engine == Engine::Amx && engine.is_available();
    let scratch_rows = if amx { 16 } else { m };
    with_pairs(scratch_rows * stride, |pairs| {
        #[cfg(target_arch = "x86_64")]
        if amx {
            // SAFETY: AMX is available (checked with the engine); the
            // asserts bound every row and column; the scratch holds 16
            // zeroed rows of `stride` pairs.
            unsafe { super::amx::gemm(m, a, lda, k, b, n, pairs, out, ldo, ep) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if engine != Engine::Portable && engine.is_available() {
            // SAFETY: AVX512-BF16 (and F, BW, VL) checked just above; the
            // asserts bound every row, column and pair the kernels touch.
            unsafe {
                avx512::convert(a, lda, m, k, stride, pairs);
                avx512::gemm(m, pairs, b, n, out, ldo, ep);
            }
            return;
        }
        let _ = engine;
        for (i, row) in pairs.chunks_exact_mut(stride.max(1)).enumerate().take(m) {
            pack_pairs(&a[i * lda..][..k], row);
        }
        portable_gemm(m, pairs, b, n, out, ldo, ep);
    });
}

/// The bf16 products summed in f32, in the hardware's order per pair.
fn portable_gemm(
    m: usize,
    a: &[u32],
    b: &Bf16Rhs,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    for i in 0..m {
        let arow = &a[i * b.stride..][..b.pairs];
        for j in 0..n {
            let panel = b.panel(j / NR);
            let mut acc = 0f32;
            for (kp, &ap) in arow.iter().enumerate() {
                let ((a0, a1), (b0, b1)) = (halves(ap), halves(panel[kp * NR + j % NR]));
                acc += a0 * b0 + a1 * b1;
            }
            let mut v = acc + ep.bias.map_or(0.0, |bb| bb[j]);
            if let Some(res) = ep.residual {
                v += res[i * ldo + j];
            }
            out[i * ldo + j] = ep.clamp(v);
        }
    }
}

/// A row-major `[m, k]` matrix (a dense layer's weights) as bf16 pairs,
/// `k/2` per row (the last pair's odd half zero when `k` is odd): half the
/// bytes a batch-1 matrix by vector streams from memory.
#[derive(Clone, Debug)]
pub struct Bf16Rows {
    m: usize,
    k: usize,
    pairs: usize,
    data: Vec<u32>,
}

impl Bf16Rows {
    /// Rounds row-major `w` (`m × k`) to bf16 pairs.
    ///
    /// # Panics
    ///
    /// If `w.len() < m * k`.
    pub fn pack(w: &[f32], m: usize, k: usize) -> Bf16Rows {
        assert!(
            w.len() >= m * k,
            "Bf16Rows::pack: {m}×{k} needs {} values",
            m * k
        );
        let pairs = k.div_ceil(2);
        let mut data = vec![0u32; m * pairs];
        for (row, dst) in w
            .chunks_exact(k.max(1))
            .take(m)
            .zip(data.chunks_exact_mut(pairs.max(1)))
        {
            pack_pairs(row, dst);
        }
        Bf16Rows { m, k, pairs, data }
    }

    /// Rows.
    pub fn m(&self) -> usize {
        self.m
    }
}

/// `out[i] = epilogue(bf16(w[rows.start + i]) · bf16(x))` for the rows
/// `rows` of `w`; the epilogue's bias and residual are indexed like `out`.
/// On AVX512-BF16 when `hardware` (checked with [`bf16_hardware`]), else
/// the portable emulation.
///
/// # Panics
///
/// If `x` is shorter than `w`'s rows, `rows` ends past them, or `out` or the
/// epilogue's slices are shorter than `rows`.
pub fn matvec(
    hardware: bool,
    w: &Bf16Rows,
    rows: std::ops::Range<usize>,
    x: &[f32],
    out: &mut [f32],
    ep: &Epilogue<'_>,
) {
    let m = rows.len();
    assert!(
        rows.end <= w.m && x.len() >= w.k && out.len() >= m,
        "matvec: slices too short"
    );
    if let Some(b) = ep.bias {
        assert!(b.len() >= m, "matvec: bias too short");
    }
    if let Some(r) = ep.residual {
        assert!(r.len() >= m, "matvec: residual too short");
    }
    let data = &w.data[rows.start * w.pairs..rows.end * w.pairs];
    with_pairs(w.pairs, |xp| {
        pack_pairs(&x[..w.k], xp);
        #[cfg(target_arch = "x86_64")]
        if hardware && bf16_hardware() {
            // SAFETY: AVX512-BF16 checked just above; `data` holds `m` rows
            // of `pairs` pairs, `xp` one, `out` `m` values (asserted).
            unsafe { avx512::matvec(data, w.pairs, xp, &mut out[..m]) };
            return;
        }
        let _ = hardware;
        for (o, row) in out[..m].iter_mut().zip(data.chunks_exact(w.pairs.max(1))) {
            let mut acc = 0f32;
            for (&wp, &xv) in row.iter().zip(xp.iter()) {
                let ((w0, w1), (x0, x1)) = (halves(wp), halves(xv));
                acc += w0 * x0 + w1 * x1;
            }
            *o = acc;
        }
    });
    finish(out, m, ep);
}

/// Runs `f` on this thread's scratch of `len` zeroed pairs, kept between
/// calls so a GEMM or dense layer allocates nothing per run.
pub(super) fn with_pairs<R>(len: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    thread_local! {
        static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PAIRS.with_borrow_mut(|pairs| {
        pairs.clear();
        pairs.resize(len, 0);
        f(pairs)
    })
}

/// Adds the bias and residual to the `m` sums in `out` and clamps them.
fn finish(out: &mut [f32], m: usize, ep: &Epilogue<'_>) {
    for (i, o) in out[..m].iter_mut().enumerate() {
        let mut v = *o + ep.bias.map_or(0.0, |b| b[i]);
        if let Some(r) = ep.residual {
            v += r[i];
        }
        *o = ep.clamp(v);
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::{Bf16Rhs, Epilogue, NR};

    /// Rows of a register tile.
    const MR: usize = 8;

    /// Rows `0..m` of `a` (`k` values each, stride `lda`) as bf16 pairs,
    /// `pairs` per row, into `dst` (zeroed, `m * pairs` long).
    ///
    /// # Safety
    ///
    /// AVX512-F/BW/VL/BF16; `a` holds the rows, `dst` the pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(in super::super) unsafe fn convert(
        a: &[f32],
        lda: usize,
        m: usize,
        k: usize,
        pairs: usize,
        dst: &mut [u32],
    ) {
        for i in 0..m {
            let src = a[i * lda..][..k].as_ptr();
            let row = dst[i * pairs..][..pairs].as_mut_ptr().cast::<u16>();
            for c0 in (0..k).step_by(16) {
                let n = (k - c0).min(16);
                let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
                // SAFETY: the first `n` values from c0 are in the row, and the
                // row of pairs holds `2 * pairs >= k` halves.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(mask, src.add(c0));
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    _mm256_mask_storeu_epi16(row.add(c0).cast(), mask, h);
                }
            }
        }
    }

    /// # Safety
    ///
    /// AVX512-F/BF16; `a` holds `m` rows of `b.stride()` pairs; `out` and the
    /// residual rows `0..m` at stride `ldo` cover columns `0..n`; the bias
    /// holds `n` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn gemm(
        m: usize,
        a: &[u32],
        b: &Bf16Rhs,
        n: usize,
        out: &mut [f32],
        ldo: usize,
        ep: &Epilogue<'_>,
    ) {
        for j0 in (0..n).step_by(NR) {
            let cols = (n - j0).min(NR);
            let (nv, mask) = super::super::pointwise::vectors_and_tail_mask(cols);
            let panel = b.panel(j0 / NR).as_ptr();
            for i0 in (0..m).step_by(MR) {
                let t = Tile {
                    pairs: b.pairs,
                    stride: b.stride,
                    a: a[i0 * b.stride..].as_ptr(),
                    b: panel,
                    out: out.as_mut_ptr().wrapping_add(i0 * ldo + j0),
                    ldo,
                    rows: (m - i0).min(MR),
                    mask,
                    bias: ep.bias.map(|bb| bb.as_ptr().wrapping_add(j0)),
                    residual: ep.residual.map(|r| r.as_ptr().wrapping_add(i0 * ldo + j0)),
                    lo: ep.lo,
                    hi: ep.hi,
                };
                // SAFETY: rows i0..i0+rows < m, columns j0..j0+cols <= n, all
                // inside the caller's spans; the panel holds NR columns.
                unsafe {
                    match (t.rows, nv) {
                        (MR, 3) => tile::<MR, 3>(&t),
                        (MR, 2) => tile::<MR, 2>(&t),
                        (MR, _) => tile::<MR, 1>(&t),
                        (_, 3) => tile::<1, 3>(&t),
                        (_, 2) => tile::<1, 2>(&t),
                        _ => tile::<1, 1>(&t),
                    }
                }
            }
        }
    }

    /// `out[i] = Σ w[i] · x` over bf16 pairs, four rows at a time (four
    /// weight streams in flight, `x` loaded once for all four).
    ///
    /// # Safety
    ///
    /// AVX512-F/BF16; `w` holds `out.len()` rows of `pairs` pairs, `x` `pairs`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn matvec(w: &[u32], pairs: usize, x: &[u32], out: &mut [f32]) {
        const ROWS: usize = 4;
        let m = out.len();
        let (full, rem) = (pairs / 16, pairs % 16);
        let tail: __mmask16 = ((1u32 << rem) - 1) as u16;
        for i0 in (0..m).step_by(ROWS) {
            let nr = (m - i0).min(ROWS);
            let mut acc = [_mm512_setzero_ps(); ROWS];
            // Rows past the end repeat the last row (computed, not stored).
            let rows: [*const u32; ROWS] =
                std::array::from_fn(|r| w.as_ptr().wrapping_add((i0 + r.min(nr - 1)) * pairs));
            for v in 0..=full {
                let mask = if v < full { 0xffff } else { tail };
                if mask == 0 {
                    break;
                }
                // SAFETY: pairs 16·v.. of `x` and of each row, masked to
                // the row's `pairs`; 512 bits reinterpreted as 32 bf16s.
                unsafe {
                    let xv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(
                        mask,
                        x.as_ptr().add(16 * v).cast(),
                    ));
                    for (a, row) in acc.iter_mut().zip(&rows) {
                        let wv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(
                            mask,
                            row.add(16 * v).cast(),
                        ));
                        *a = _mm512_dpbf16_ps(*a, wv, xv);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(nr) {
                out[i0 + r] = _mm512_reduce_add_ps(*a);
            }
        }
    }

    struct Tile {
        pairs: usize,
        /// Pairs per row of `a`.
        stride: usize,
        /// Row 0 of the tile's activations (pairs).
        a: *const u32,
        b: *const u32,
        out: *mut f32,
        ldo: usize,
        rows: usize,
        mask: __mmask16,
        bias: Option<*const f32>,
        residual: Option<*const f32>,
        lo: f32,
        hi: f32,
    }

    /// `R` rows (a full tile) or one row at a time (`R == 1`, looping over
    /// `rows`) × `16·NV` columns.
    ///
    /// # Safety
    ///
    /// As `gemm`'s, for the tile's rows and columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn tile<const R: usize, const NV: usize>(t: &Tile) {
        let blocks = if R == 1 { t.rows } else { 1 };
        for r0 in 0..blocks {
            let mut acc = [[_mm512_setzero_ps(); NV]; R];
            for kp in 0..t.pairs {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, slot) in bv.iter_mut().enumerate() {
                    // SAFETY: pair kp of the panel, 16 columns per vector
                    // (the panel is zero-padded to NR columns).
                    *slot = unsafe {
                        _mm512_castsi512_ps(_mm512_loadu_si512(t.b.add(kp * NR + 16 * v).cast()))
                    };
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    // SAFETY: pair kp of row r0 + r < rows.
                    let ap = unsafe { *t.a.add((r0 + r) * t.stride + kp) };
                    // SAFETY: reinterpreting 512 bits as 32 bf16s.
                    let av: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(ap as i32)) };
                    for (x, &bb) in acc_r.iter_mut().zip(&bv) {
                        // SAFETY: reinterpreting 512 bits as 32 bf16s.
                        let bh: __m512bh = unsafe { std::mem::transmute(bb) };
                        *x = _mm512_dpbf16_ps(*x, av, bh);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let row = r0 + r;
                // SAFETY: row < rows of the output and residual, the tile's
                // columns of the bias (masked tail).
                unsafe {
                    store_row(
                        acc_r,
                        t.mask,
                        t.bias,
                        t.residual.map(|res| res.add(row * t.ldo)),
                        t.out.add(row * t.ldo),
                        t.lo,
                        t.hi,
                    )
                };
            }
        }
    }

    /// Stores one output row's accumulators, `16·NV` columns (the last
    /// vector's masked by `mask`), after adding the bias and residual rows
    /// and clamping: the epilogue both bf16 engines share.
    ///
    /// # Safety
    ///
    /// AVX512-F; `out`, the bias and the residual row hold the columns.
    #[target_feature(enable = "avx512f")]
    pub(in super::super) unsafe fn store_row<const NV: usize>(
        acc: &[__m512; NV],
        mask: __mmask16,
        bias: Option<*const f32>,
        residual: Option<*const f32>,
        out: *mut f32,
        lo: f32,
        hi: f32,
    ) {
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        for (v, &x) in acc.iter().enumerate() {
            let mask = if v + 1 == NV { mask } else { 0xffff };
            let mut y = x;
            // SAFETY: the caller's columns 16·v.. (masked tail).
            unsafe {
                if let Some(bias) = bias {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, bias.add(16 * v)));
                }
                if let Some(res) = residual {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, res.add(16 * v)));
                }
                y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));
                _mm512_mask_storeu_ps(out.add(16 * v), mask, y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::{Isa, gemm_rows};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn bf16_matvec_matches_rounded_products() {
        let mut paths = vec![false];
        if bf16_hardware() {
            paths.push(true);
        }
        for (m, k) in [(1, 1), (5, 3), (9, 32), (17, 33), (1000, 1280)] {
            let w = values(m * k, 11 + k as u64);
            let x = values(k, 13);
            let bias = values(m, 17);
            let residual = values(m, 19);
            let rows = 2.min(m - 1)..m;
            let ep = Epilogue {
                bias: Some(&bias[rows.start..]),
                residual: Some(&residual[rows.start..]),
                lo: -50.0,
                hi: 50.0,
            };
            let packed = Bf16Rows::pack(&w, m, k);
            let r = |v: f32| f64::from(from_bf16(to_bf16(v)));
            for &hardware in &paths {
                let mut got = vec![f32::NAN; rows.len()];
                matvec(hardware, &packed, rows.clone(), &x, &mut got, &ep);
                for (o, i) in rows.clone().enumerate() {
                    let (mut sum, mut mag) = (0f64, 0f64);
                    for c in 0..k {
                        let p = r(w[i * k + c]) * r(x[c]);
                        sum += p;
                        mag += p.abs();
                    }
                    let want = (sum
                        + f64::from(bias[rows.start + o])
                        + f64::from(residual[rows.start + o]))
                    .clamp(-50.0, 50.0);
                    let g = f64::from(got[o]);
                    assert!(
                        (g - want).abs() <= 1e-5 * (mag + 1.0),
                        "hw {hardware} {m}x{k} row {i}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(
            from_bf16(to_bf16(1.0 + 1.0 / 512.0)),
            1.0,
            "a tie goes to even"
        );
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 512.0)), 1.0 + 4.0 / 512.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(-0.0)).to_bits(), (-0.0f32).to_bits());
    }

    /// Every bf16 path against the exact sum (f64) of the bf16-rounded
    /// products, and against f32 within bf16's rounding of the inputs.
    #[test]
    fn bf16_gemm_matches_rounded_products() {
        let engines: Vec<Engine> = [Engine::Portable, Engine::Avx512Bf16, Engine::Amx]
            .into_iter()
            .filter(|e| e.is_available())
            .collect();
        println!("bf16 GEMM engines under test: {engines:?}");
        // Row counts below, at and past AMX's 16-row blocks; reductions
        // inside one 32-value block, odd, and over several; panels full,
        // partial and several.
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 17),
            (9, 16, 48),
            (17, 33, 50),
            (8, 64, 96),
            (13, 7, 100),
            (16, 32, 16),
            (48, 3, 17),
            (37, 70, 100),
            (64, 96, 24),
            (32, 161, 144),
        ] {
            let a = values(m * k, 1 + m as u64);
            let w = values(k * n, 7 + n as u64);
            let bias = values(n, 3);
            let residual = values(m * n, 5);
            let ep = Epilogue {
                bias: Some(&bias),
                residual: Some(&residual),
                lo: -3.0,
                hi: 3.0,
            };
            let packed = PackedRhs::pack(&w, k, n);
            let mut exact = vec![0f32; m * n];
            gemm_rows(Isa::Portable, m, &a, k, &packed, &mut exact, n, &ep);
            let b16 = Bf16Rhs::pack(&packed);
            let r = |x: f32| f64::from(from_bf16(to_bf16(x)));
            for &engine in &engines {
                let mut got = vec![f32::NAN; m * n];
                super::gemm_rows(engine, m, &a, k, &packed, &b16, &mut got, n, &ep);
                for i in 0..m {
                    for j in 0..n {
                        let (mut sum, mut mag, mut mag32) = (0f64, 0f64, 0f64);
                        for c in 0..k {
                            let p = r(a[i * k + c]) * r(w[c * n + j]);
                            sum += p;
                            mag += p.abs();
                            mag32 += f64::from(a[i * k + c] * w[c * n + j]).abs();
                        }
                        let want = (sum + f64::from(bias[j]) + f64::from(residual[i * n + j]))
                            .clamp(-3.0, 3.0);
                        let g = f64::from(got[i * n + j]);
                        assert!(
                            (g - want).abs() <= 1e-5 * (mag + 1.0),
                            "{engine:?} {m}x{k}x{n} ({i},{j}): {g} vs {want}"
                        );
                        // Each input is within 2^-9 of itself after rounding.
                        let f = f64::from(exact[i * n + j]);
                        assert!(
                            (g - f).abs() <= 2.0 * mag32 / 256.0 + 1e-5,
                            "{engine:?}: {g} vs f32 {f}"
                        );
                    }
                }
            }
        }
    }
}
