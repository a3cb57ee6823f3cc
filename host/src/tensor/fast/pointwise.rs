//! `out = epilogue(A · B)` with A packed once (weights) and B a strided
//! row-major matrix: a 1×1 convolution on NCHW planes (B = the input planes,
//! N = H·W), and the GEMM behind im2col convolutions.
//!
//! Blocking: columns in panels of up to 48 (three 16-lane vectors), rows in
//! blocks of [`MR`] = 8; the panel of B stays in cache while every row block
//! of A streams past it, and 8×3 accumulators live in registers.

use super::{Epilogue, Isa};

/// Rows of A per packed block (and per register tile).
pub const MR: usize = 8;
/// Columns per register tile.
const NR: usize = 48;

/// A row-major `[m, k]` matrix packed into blocks of [`MR`] rows, each stored
/// column by column (`[k][MR]`), the last block zero-padded.
#[derive(Clone, Debug)]
pub struct PackedLhs {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedLhs {
    /// Packs row-major `w` (`m × k`, `w.len() == m * k`).
    ///
    /// # Panics
    ///
    /// If `w.len() != m * k`.
    pub fn pack(w: &[f32], m: usize, k: usize) -> PackedLhs {
        assert_eq!(
            w.len(),
            m * k,
            "PackedLhs::pack: {m}×{k} needs {} values",
            m * k
        );
        let blocks = m.div_ceil(MR);
        let mut data = vec![0f32; blocks * k * MR];
        for (i, row) in w.chunks_exact(k.max(1)).enumerate().take(m) {
            let (blk, r) = (i / MR, i % MR);
            let base = blk * k * MR;
            for (c, &v) in row.iter().enumerate() {
                data[base + c * MR + r] = v;
            }
        }
        PackedLhs { m, k, data }
    }

    /// Rows.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    fn block(&self, blk: usize) -> &[f32] {
        &self.data[blk * self.k * MR..][..self.k * MR]
    }
}

/// `out[i*ldo + j] = epilogue(Σ_c A[i][c] · b[c*ldb + j])` for `i < m`,
/// `j < n`; the epilogue's bias has one value per row `i` and its residual
/// is indexed like `out`.
///
/// # Panics
///
/// If a slice is too short for the shapes given (an internal bug: callers
/// derive shapes from validated tensors).
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    isa: Isa,
    a: &PackedLhs,
    b: &[f32],
    ldb: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return;
    }
    let span = |rows: usize, ld: usize| (rows - 1) * ld + n;
    assert!(
        ldo >= n && out.len() >= span(m, ldo),
        "gemm_packed: out too short"
    );
    assert!(
        k == 0 || (ldb >= n && b.len() >= span(k, ldb)),
        "gemm_packed: b too short"
    );
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= m, "gemm_packed: bias too short");
    }
    if let Some(res) = ep.residual {
        assert!(res.len() >= span(m, ldo), "gemm_packed: residual too short");
    }
    match isa.usable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` checked that the CPU has AVX-512F; the asserts above
        // bound every index the kernel forms (see `avx512::gemm`).
        Isa::Avx512 => unsafe { avx512::gemm(a, b, ldb, n, out, ldo, ep) },
        _ => portable_gemm(a, b, ldb, n, out, ldo, ep),
    }
}

fn portable_gemm(
    a: &PackedLhs,
    b: &[f32],
    ldb: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let (m, k) = (a.m, a.k);
    let mut j0 = 0;
    while j0 < n {
        let cols = (n - j0).min(NR);
        for blk in 0..m.div_ceil(MR) {
            let panel = a.block(blk);
            let rows = (m - blk * MR).min(MR);
            let mut acc = [[0f32; NR]; MR];
            for c in 0..k {
                let brow = &b[c * ldb + j0..][..cols];
                let av = &panel[c * MR..][..MR];
                for (acc_r, &w) in acc.iter_mut().zip(av) {
                    for (x, &bv) in acc_r.iter_mut().zip(brow) {
                        *x += w * bv;
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate().take(rows) {
                let i = blk * MR + r;
                let bias = ep.bias.map_or(0.0, |bb| bb[i]);
                let dst = &mut out[i * ldo + j0..][..cols];
                for (j, d) in dst.iter_mut().enumerate() {
                    let mut v = acc_r[j] + bias;
                    if let Some(res) = ep.residual {
                        v += res[i * ldo + j0 + j];
                    }
                    *d = ep.clamp(v);
                }
            }
        }
        j0 += cols;
    }
}

/// `out[i] = epilogue(Σ_c w[i*k + c] · x[c])` for a row-major `[m, k]` `w`:
/// the batch-1 fully connected layer.
///
/// # Panics
///
/// If `w.len() < m * k`, `x.len() < k` or `out.len() < m`.
pub fn matvec(
    isa: Isa,
    w: &[f32],
    m: usize,
    k: usize,
    x: &[f32],
    out: &mut [f32],
    ep: &Epilogue<'_>,
) {
    assert!(
        w.len() >= m * k && x.len() >= k && out.len() >= m,
        "matvec: slices too short"
    );
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= m, "matvec: bias too short");
    }
    if let Some(res) = ep.residual {
        assert!(res.len() >= m, "matvec: residual too short");
    }
    let x = &x[..k];
    match isa.usable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (checked by `usable`); lengths asserted above.
        Isa::Avx512 => unsafe { avx512::matvec(w, m, k, x, out, ep) },
        _ => {
            for (i, o) in out[..m].iter_mut().enumerate() {
                let row = &w[i * k..][..k];
                // Eight partial sums, like the SIMD path, so LLVM can vectorize.
                let mut part = [0f32; 8];
                let mut chunks = row.chunks_exact(8);
                let mut xs = x.chunks_exact(8);
                for (rc, xc) in (&mut chunks).zip(&mut xs) {
                    for l in 0..8 {
                        part[l] += rc[l] * xc[l];
                    }
                }
                let mut s: f32 = part.iter().sum();
                for (&r, &xv) in chunks.remainder().iter().zip(xs.remainder()) {
                    s += r * xv;
                }
                let mut v = s + ep.bias.map_or(0.0, |b| b[i]);
                if let Some(res) = ep.residual {
                    v += res[i];
                }
                *o = ep.clamp(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Epilogue, MR, NR, PackedLhs};

    /// # Safety
    ///
    /// The CPU must support AVX-512F, and the slices must cover the spans
    /// `gemm_packed` asserts: `b` rows `0..k` at stride `ldb` for columns
    /// `0..n`, `out` (and the residual) rows `0..m` at stride `ldo`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm(
        a: &PackedLhs,
        b: &[f32],
        ldb: usize,
        n: usize,
        out: &mut [f32],
        ldo: usize,
        ep: &Epilogue<'_>,
    ) {
        let m = a.m;
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(NR);
            let nv = cols.div_ceil(16);
            let rem = cols - (nv - 1) * 16;
            let mask: __mmask16 = if rem == 16 { 0xffff } else { (1u16 << rem) - 1 };
            for blk in 0..m.div_ceil(MR) {
                let rows = (m - blk * MR).min(MR);
                let t = Tile {
                    k: a.k,
                    panel: a.block(blk).as_ptr(),
                    b: b.as_ptr().wrapping_add(j0),
                    ldb,
                    out: out.as_mut_ptr().wrapping_add(blk * MR * ldo + j0),
                    ldo,
                    rows,
                    mask,
                    bias: ep.bias.map(|bb| bb.as_ptr().wrapping_add(blk * MR)),
                    residual: ep
                        .residual
                        .map(|r| r.as_ptr().wrapping_add(blk * MR * ldo + j0)),
                    lo: ep.lo,
                    hi: ep.hi,
                };
                // SAFETY: rows `blk*MR..blk*MR+rows` < m and columns
                // `j0..j0+cols` <= n are inside the asserted spans; masked
                // lanes are neither read nor written.
                unsafe {
                    match nv {
                        3 => tile::<3>(&t),
                        2 => tile::<2>(&t),
                        _ => tile::<1>(&t),
                    }
                }
            }
            j0 += cols;
        }
    }

    struct Tile {
        k: usize,
        panel: *const f32,
        b: *const f32,
        ldb: usize,
        out: *mut f32,
        ldo: usize,
        rows: usize,
        /// Lanes of the last vector that are inside the matrix.
        mask: __mmask16,
        bias: Option<*const f32>,
        residual: Option<*const f32>,
        lo: f32,
        hi: f32,
    }

    /// One MR × 16·NV register tile over the whole reduction.
    ///
    /// # Safety
    ///
    /// AVX-512F; `panel` holds `k * MR` floats; `b` rows `0..k` (stride
    /// `ldb`) and `out`/`residual` rows `0..rows` (stride `ldo`) are valid for
    /// `16 * (NV - 1)` full lanes plus the masked lanes of the last vector;
    /// `bias` holds `rows` values.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const NV: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let mut bp = t.b;
        let mut ap = t.panel;
        for _ in 0..t.k {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, slot) in bv.iter_mut().enumerate() {
                // SAFETY: inside row c of b (see the function contract).
                *slot = unsafe {
                    if v + 1 == NV {
                        _mm512_maskz_loadu_ps(t.mask, bp.add(16 * v))
                    } else {
                        _mm512_loadu_ps(bp.add(16 * v))
                    }
                };
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: `ap` points at MR packed values of column c.
                let av = _mm512_set1_ps(unsafe { *ap.add(r) });
                for (x, &bb) in acc_r.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bb, *x);
                }
            }
            bp = bp.wrapping_add(t.ldb);
            ap = ap.wrapping_add(MR);
        }
        let lo = _mm512_set1_ps(t.lo);
        let hi = _mm512_set1_ps(t.hi);
        for (r, acc_r) in acc.iter().enumerate().take(t.rows) {
            // SAFETY: row r < rows of the output, residual and bias.
            unsafe {
                let bias = _mm512_set1_ps(t.bias.map_or(0.0, |b| *b.add(r)));
                let orow = t.out.add(r * t.ldo);
                for (v, &x) in acc_r.iter().enumerate() {
                    let mask = if v + 1 == NV { t.mask } else { 0xffff };
                    let mut y = _mm512_add_ps(x, bias);
                    if let Some(res) = t.residual {
                        let rv = _mm512_maskz_loadu_ps(mask, res.add(r * t.ldo + 16 * v));
                        y = _mm512_add_ps(y, rv);
                    }
                    y = _mm512_min_ps(hi, _mm512_max_ps(lo, y));
                    _mm512_mask_storeu_ps(orow.add(16 * v), mask, y);
                }
            }
        }
    }

    /// # Safety
    ///
    /// AVX-512F; `w` holds `m * k`, `x` exactly `k`, `out` at least `m`
    /// values, and the epilogue's slices at least `m`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matvec(
        w: &[f32],
        m: usize,
        k: usize,
        x: &[f32],
        out: &mut [f32],
        ep: &Epilogue<'_>,
    ) {
        let full = k / 16;
        let rem = k % 16;
        let tail: __mmask16 = ((1u32 << rem) - 1) as u16;
        for i in 0..m {
            let row = &w[i * k..][..k];
            let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            // SAFETY: every load stays inside `row` and `x` (k values each);
            // the tail load is masked to the last `rem` values.
            unsafe {
                let mut v = 0;
                while v + 1 < full {
                    s0 = _mm512_fmadd_ps(
                        _mm512_loadu_ps(row.as_ptr().add(16 * v)),
                        _mm512_loadu_ps(x.as_ptr().add(16 * v)),
                        s0,
                    );
                    s1 = _mm512_fmadd_ps(
                        _mm512_loadu_ps(row.as_ptr().add(16 * v + 16)),
                        _mm512_loadu_ps(x.as_ptr().add(16 * v + 16)),
                        s1,
                    );
                    v += 2;
                }
                if v < full {
                    s0 = _mm512_fmadd_ps(
                        _mm512_loadu_ps(row.as_ptr().add(16 * v)),
                        _mm512_loadu_ps(x.as_ptr().add(16 * v)),
                        s0,
                    );
                }
                if rem > 0 {
                    s1 = _mm512_fmadd_ps(
                        _mm512_maskz_loadu_ps(tail, row.as_ptr().add(16 * full)),
                        _mm512_maskz_loadu_ps(tail, x.as_ptr().add(16 * full)),
                        s1,
                    );
                }
            }
            let mut v = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) + ep.bias.map_or(0.0, |b| b[i]);
            if let Some(res) = ep.residual {
                v += res[i];
            }
            out[i] = ep.clamp(v);
        }
    }
}
