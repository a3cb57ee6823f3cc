//! `out = epilogue(A · B)` for B a strided row-major matrix, with A either
//! packed once ([`gemm_packed`]: weights times NCHW planes, B = the input
//! planes, N = H·W) or row-major ([`gemm_rows`]: NHWC activations, one row per
//! pixel, times row-major weights `[K, Cout]`). Both 1×1 convolutions and the
//! GEMM behind im2col convolutions run here.
//!
//! Blocking: columns in panels of up to 48 (three 16-lane vectors), rows in
//! blocks of [`MR`] = 8; the panel of B stays in cache while every row block
//! of A streams past it, and 8×3 accumulators live in registers.

use super::bf16::{self, Bf16Rhs};
use super::{AlignedBuf, Epilogue, Isa};

/// Rows of A per packed block (and per register tile).
pub const MR: usize = 8;
/// Columns per register tile.
pub(super) const NR: usize = 48;

/// The 16-lane vectors `cols` columns (at most [`NR`]) take, and the mask
/// of the last one's lanes that hold columns: how every AVX-512 and AMX
/// panel kernel covers a panel's columns.
#[cfg(target_arch = "x86_64")]
pub(super) fn vectors_and_tail_mask(cols: usize) -> (usize, u16) {
    let vectors = cols.div_ceil(16);
    let rem = cols - (vectors - 1) * 16;
    (vectors, if rem == 16 { 0xffff } else { (1u16 << rem) - 1 })
}

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

    pub(super) fn block(&self, blk: usize) -> &[f32] {
        &self.data[blk * self.k * MR..][..self.k * MR]
    }
}

/// A row-major `[k, n]` matrix (weights `[in, out]`) packed into panels of
/// 48 columns, each stored row by row (`[k][48]`), the last panel
/// zero-padded: a tile then streams its weights contiguously instead of
/// striding across rows up to several KiB apart.
#[derive(Clone, Debug)]
pub struct PackedRhs {
    k: usize,
    n: usize,
    data: AlignedBuf,
    /// The same weights as bf16 pairs, when a model runs in bf16.
    bf16: Option<Bf16Rhs>,
}

impl PackedRhs {
    /// Packs row-major `w` (`k × n`).
    ///
    /// # Panics
    ///
    /// If `w.len() != k * n`.
    pub fn pack(w: &[f32], k: usize, n: usize) -> PackedRhs {
        assert_eq!(w.len(), k * n, "PackedRhs::pack: {} != {k}·{n}", w.len());
        let panels = n.div_ceil(NR);
        let mut data = AlignedBuf::zeroed(panels * k * NR);
        for c in 0..k {
            for j in 0..n {
                let (p, jj) = (j / NR, j % NR);
                data[(p * k + c) * NR + jj] = w[c * n + j];
            }
        }
        PackedRhs {
            k,
            n,
            data,
            bf16: None,
        }
    }

    /// Also keeps the weights as bf16: [`gemm_rows`] then multiplies in bf16
    /// (f32 sums) on AVX512-BF16, and emulates that on the portable path; the
    /// other paths, which have no bf16 arithmetic, stay f32 (a model asking
    /// for bf16 on them is refused when it loads).
    pub fn enable_bf16(&mut self) {
        self.bf16 = Some(Bf16Rhs::pack(self));
    }

    /// Whether [`PackedRhs::enable_bf16`] was called.
    pub fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// Packs `w` given transposed, row-major `n × k`: ONNX's out-channel-major
    /// weights (`[o, c]` of a 1×1 convolution, `[o, c, kh, kw]` of a dense one,
    /// read as `(c, ky, kx)` rows).
    ///
    /// # Panics
    ///
    /// If `w.len() != n * k`.
    pub fn pack_transposed(w: &[f32], n: usize, k: usize) -> PackedRhs {
        assert_eq!(
            w.len(),
            n * k,
            "PackedRhs::pack_transposed: {} != {n}·{k}",
            w.len()
        );
        let mut t = vec![0f32; k * n];
        super::transpose(w, n, k, &mut t);
        PackedRhs::pack(&t, k, n)
    }

    /// Rows (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (output channels).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Panel `p`: `[k][NR]`.
    pub(super) fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * NR..][..self.k * NR]
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
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the asserts above bound every index the kernel forms.
        Isa::Avx2 if let Some(s) = super::simd::Avx2::new() => unsafe {
            super::generic::gemm_packed(s, a, b, ldb, n, out, ldo, ep)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for AVX2.
        Isa::Neon if let Some(s) = super::simd::Neon::new() => unsafe {
            super::generic::gemm_packed(s, a, b, ldb, n, out, ldo, ep)
        },
        _ => portable_gemm(a, b, ldb, n, out, ldo, ep),
    }
}

/// `out[i*ldo + j] = epilogue(Σ_c a[i*lda + c] · b[c][j])` for `i < m`,
/// `j < n`: row-major activations (one row per pixel, channels-last) times
/// packed weights `[k, n]`. The epilogue's bias has one value per column
/// `j` (the output channel) and its residual is indexed like `out`.
///
/// # Panics
///
/// If a slice is too short for the shapes given.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows(
    isa: Isa,
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedRhs,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let k = b.k;
    if m > 0 {
        assert!(
            k == 0 || (lda >= k && a.len() >= (m - 1) * lda + k),
            "gemm_rows: a too short"
        );
    }
    if let Some(b16) = &b.bf16 {
        match isa.usable() {
            Isa::Avx512 if bf16::bf16_hardware() => {
                return bf16::gemm_rows(bf16::Engine::best(), m, a, lda, b, b16, out, ldo, ep);
            }
            Isa::Portable => {
                return bf16::gemm_rows(bf16::Engine::Portable, m, a, lda, b, b16, out, ldo, ep);
            }
            _ => {}
        }
    }
    gemm_a_rows(isa, m, ARows::Strided { a, lda }, b, out, ldo, ep);
}

/// [`gemm_rows`] with A read in place: element `(i, c)` is
/// `a[i * row_step + offsets[c]]`. A dense convolution of an NCHW image
/// reads its patches this way, without a patch matrix: `row_step` is the
/// horizontal stride and `offsets` the taps' positions.
///
/// # Panics
///
/// If `offsets.len() != b.k()` or a slice is too short for the shapes given.
#[allow(clippy::too_many_arguments)]
pub fn gemm_gather(
    isa: Isa,
    m: usize,
    a: &[f32],
    row_step: usize,
    offsets: &[usize],
    b: &PackedRhs,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    assert_eq!(
        offsets.len(),
        b.k,
        "gemm_gather: one offset per reduction step"
    );
    if m > 0
        && let Some(&max) = offsets.iter().max()
    {
        assert!(
            a.len() > (m - 1) * row_step + max,
            "gemm_gather: a too short"
        );
    }
    let a = ARows::Gather {
        a,
        row_step,
        offsets,
    };
    gemm_a_rows(isa, m, a, b, out, ldo, ep);
}

/// Where the row-major GEMM finds A's element `(i, c)`.
#[derive(Clone, Copy)]
pub(super) enum ARows<'a> {
    /// `a[i * lda + c]`.
    Strided { a: &'a [f32], lda: usize },
    /// `a[i * row_step + offsets[c]]`.
    Gather {
        a: &'a [f32],
        row_step: usize,
        offsets: &'a [usize],
    },
}

impl ARows<'_> {
    #[inline(always)]
    fn at(&self, i: usize, c: usize) -> f32 {
        match *self {
            ARows::Strided { a, lda } => a[i * lda + c],
            ARows::Gather {
                a,
                row_step,
                offsets,
            } => a[i * row_step + offsets[c]],
        }
    }
}

/// The checks and dispatch shared by [`gemm_rows`] and [`gemm_gather`]
/// (which check A themselves).
fn gemm_a_rows(
    isa: Isa,
    m: usize,
    a: ARows<'_>,
    b: &PackedRhs,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let n = b.n;
    if m == 0 || n == 0 {
        return;
    }
    let span = |rows: usize, ld: usize, cols: usize| (rows - 1) * ld + cols;
    assert!(
        ldo >= n && out.len() >= span(m, ldo, n),
        "gemm_rows: out too short"
    );
    if let Some(bias) = ep.bias {
        assert!(bias.len() >= n, "gemm_rows: bias too short");
    }
    if let Some(res) = ep.residual {
        assert!(
            res.len() >= span(m, ldo, n),
            "gemm_rows: residual too short"
        );
    }
    match isa.usable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `usable` checked that the CPU has AVX-512F; the asserts above
        // bound every index the kernel forms (see `avx512::gemm_rows`).
        Isa::Avx512 => unsafe { avx512::gemm_rows(m, a, b, out, ldo, ep) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the asserts above (and the callers') bound every index.
        Isa::Avx2 if let Some(s) = super::simd::Avx2::new() => unsafe {
            super::generic::gemm_rows(s, m, a, b, out, ldo, ep)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for AVX2.
        Isa::Neon if let Some(s) = super::simd::Neon::new() => unsafe {
            super::generic::gemm_rows(s, m, a, b, out, ldo, ep)
        },
        _ => portable_gemm_rows(m, a, b, out, ldo, ep),
    }
}

fn portable_gemm_rows(
    m: usize,
    a: ARows<'_>,
    b: &PackedRhs,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let (k, n) = (b.k, b.n);
    let mut j0 = 0;
    while j0 < n {
        let cols = (n - j0).min(NR);
        let panel = b.panel(j0 / NR);
        for i0 in (0..m).step_by(MR) {
            let rows = (m - i0).min(MR);
            let mut acc = [[0f32; NR]; MR];
            for c in 0..k {
                let brow = &panel[c * NR..][..cols];
                for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
                    let av = a.at(i0 + r, c);
                    for (x, &bv) in acc_r.iter_mut().zip(brow) {
                        *x += av * bv;
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate().take(rows) {
                let i = i0 + r;
                let dst = &mut out[i * ldo + j0..][..cols];
                for (j, d) in dst.iter_mut().enumerate() {
                    let mut v = acc_r[j] + ep.bias.map_or(0.0, |bb| bb[j0 + j]);
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
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths asserted above.
        Isa::Avx2 if let Some(s) = super::simd::Avx2::new() => unsafe {
            super::generic::matvec(s, w, m, k, x, out, ep)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: lengths asserted above.
        Isa::Neon if let Some(s) = super::simd::Neon::new() => unsafe {
            super::generic::matvec(s, w, m, k, x, out, ep)
        },
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

    use super::{ARows, Epilogue, MR, NR, PackedLhs, PackedRhs};

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
            let (nv, mask) = super::vectors_and_tail_mask(cols);
            for blk in 0..m.div_ceil(MR) {
                let rows = (m - blk * MR).min(MR);
                let t = Tile {
                    k: a.k,
                    a: a.block(blk).as_ptr(),
                    a_rs: 1,
                    a_cs: MR,
                    a_offsets: std::ptr::null(),
                    b: b.as_ptr().wrapping_add(j0),
                    ldb,
                    out: out.as_mut_ptr().wrapping_add(blk * MR * ldo + j0),
                    ldo,
                    rows,
                    mask,
                    row_bias: ep.bias.map(|bb| bb.as_ptr().wrapping_add(blk * MR)),
                    col_bias: None,
                    residual: ep
                        .residual
                        .map(|r| r.as_ptr().wrapping_add(blk * MR * ldo + j0)),
                    lo: ep.lo,
                    hi: ep.hi,
                    prefetch: std::ptr::null(),
                };
                // SAFETY: rows `blk*MR..blk*MR+rows` < m and columns
                // `j0..j0+cols` <= n are inside the asserted spans; masked
                // lanes are neither read nor written; the packed block holds
                // all MR rows (zero-padded).
                unsafe {
                    match nv {
                        3 => tile::<MR, 3, false, 0>(&t),
                        2 => tile::<MR, 2, false, 0>(&t),
                        _ => tile::<MR, 1, false, 0>(&t),
                    }
                }
            }
            j0 += cols;
        }
    }

    /// Rows (for a tail block) as a const: the tile then computes exactly the
    /// rows it may read.
    macro_rules! tile_for_rows {
        ($rows:expr, $nv:literal, $g:literal, $t:expr) => {
            tile_for_rows!($rows, $nv, $g, 0, $t)
        };
        ($rows:expr, $nv:literal, $g:literal, $step:literal, $t:expr) => {
            match $rows {
                8 => tile::<8, $nv, $g, $step>($t),
                7 => tile::<7, $nv, $g, $step>($t),
                6 => tile::<6, $nv, $g, $step>($t),
                5 => tile::<5, $nv, $g, $step>($t),
                4 => tile::<4, $nv, $g, $step>($t),
                3 => tile::<3, $nv, $g, $step>($t),
                2 => tile::<2, $nv, $g, $step>($t),
                _ => tile::<1, $nv, $g, $step>($t),
            }
        };
    }

    /// Rows of a gather tile with a constant step (see `gemm_rows`).
    const MR_GATHER: usize = 12;

    macro_rules! tall_tile {
        ($rows:expr, $step:literal, $t:expr) => {
            match $rows {
                12 => tile::<12, 2, true, $step>($t),
                11 => tile::<11, 2, true, $step>($t),
                10 => tile::<10, 2, true, $step>($t),
                _ => tile::<9, 2, true, $step>($t),
            }
        };
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512F, and the slices must cover the spans
    /// `gemm_rows` asserts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm_rows(
        m: usize,
        a: ARows<'_>,
        b: &PackedRhs,
        out: &mut [f32],
        ldo: usize,
        ep: &Epilogue<'_>,
    ) {
        const { assert!(MR == 8) };
        let (k, n) = (b.k, b.n);
        let (base, step, offsets) = match a {
            ARows::Strided { a, lda } => (a.as_ptr(), lda, std::ptr::null()),
            ARows::Gather {
                a,
                row_step,
                offsets,
            } => (a.as_ptr(), row_step, offsets.as_ptr()),
        };
        let gather = !offsets.is_null();
        let mut j0 = 0;
        while j0 < n {
            let cols = (n - j0).min(NR);
            let (nv, mask) = super::vectors_and_tail_mask(cols);
            // A gather of two vectors with a constant step has the address
            // registers to spare for a taller tile (the stem: 12 rows are
            // ~9 % faster than 8).
            let fixed_step = gather && nv == 2 && (step == 1 || step == 2);
            let mr = if fixed_step { MR_GATHER } else { MR };
            for i0 in (0..m).step_by(mr) {
                let rows = (m - i0).min(mr);
                let t = Tile {
                    k,
                    a: base.wrapping_add(i0 * step),
                    a_rs: step,
                    a_cs: 1,
                    a_offsets: offsets,
                    b: b.panel(j0 / NR).as_ptr(),
                    ldb: NR,
                    out: out.as_mut_ptr().wrapping_add(i0 * ldo + j0),
                    ldo,
                    rows,
                    mask,
                    row_bias: None,
                    col_bias: ep.bias.map(|bb| bb.as_ptr().wrapping_add(j0)),
                    residual: ep.residual.map(|r| r.as_ptr().wrapping_add(i0 * ldo + j0)),
                    lo: ep.lo,
                    hi: ep.hi,
                    // The first row tile of a panel pulls the next panel into L2,
                    // so the other row tiles hide its latency: the weights of a
                    // network's late layers are read once per inference and come
                    // from L3.
                    prefetch: if i0 == 0 && j0 + NR < n {
                        b.panel(j0 / NR + 1).as_ptr()
                    } else if gather && ldo == n && n <= NR {
                        // A stem convolution writes an output larger than L2
                        // that was last touched an inference ago: pulling the
                        // next tiles' output rows in ahead of their stores made
                        // MobileNetV2's stem ~10 % faster.
                        out.as_ptr().wrapping_add((i0 + mr) * ldo)
                    } else {
                        std::ptr::null()
                    },
                };
                // A gather's row step as a constant (a stem convolution's
                // stride) makes each row's tap a fixed displacement from the
                // tap's address instead of an address computed per tap.
                // SAFETY: the tile reads rows `i0..i0+rows` < m of `a`
                // (columns < k) and writes rows `i0..i0+rows` of `out`, columns
                // `j0..j0+cols` <= n, all inside the asserted spans; masked
                // lanes are neither read nor written.
                unsafe {
                    match (nv, gather, step) {
                        (3, false, _) => tile_for_rows!(rows, 3, false, &t),
                        (2, false, _) => tile_for_rows!(rows, 2, false, &t),
                        (_, false, _) => tile_for_rows!(rows, 1, false, &t),
                        (2, true, 2) if rows > MR => tall_tile!(rows, 2, &t),
                        (2, true, 1) if rows > MR => tall_tile!(rows, 1, &t),
                        (2, true, 2) => tile_for_rows!(rows, 2, true, 2, &t),
                        (2, true, 1) => tile_for_rows!(rows, 2, true, 1, &t),
                        (3, true, _) => tile_for_rows!(rows, 3, true, &t),
                        (2, true, _) => tile_for_rows!(rows, 2, true, &t),
                        (_, true, _) => tile_for_rows!(rows, 1, true, &t),
                    }
                }
            }
            j0 += cols;
        }
    }

    struct Tile {
        k: usize,
        /// Row 0, column 0 of A; element `(r, c)` is at `r * a_rs + c * a_cs`.
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        /// With `GATHER`, element `(r, c)` is at `a + r * a_rs + a_offsets[c]`.
        a_offsets: *const usize,
        b: *const f32,
        ldb: usize,
        out: *mut f32,
        ldo: usize,
        rows: usize,
        /// Lanes of the last vector that are inside the matrix.
        mask: __mmask16,
        /// One value per row, or one per column (at most one is set).
        row_bias: Option<*const f32>,
        col_bias: Option<*const f32>,
        residual: Option<*const f32>,
        lo: f32,
        hi: f32,
        /// Memory to prefetch into L2, [`NR`] floats per reduction step (the
        /// next packed panel, or the output rows of the next tiles), or null.
        prefetch: *const f32,
    }

    /// One R × 16·NV register tile over the whole reduction; rows `0..rows`
    /// (≤ R) are stored.
    ///
    /// # Safety
    ///
    /// AVX-512F; A's rows `0..R`, columns `0..k` are readable; `b` rows
    /// `0..k` (stride `ldb`) and `out`/`residual` rows `0..rows` (stride
    /// `ldo`) are valid for `16 * (NV - 1)` full lanes plus the masked lanes
    /// of the last vector; a row bias holds `rows` values, a column bias the
    /// tile's columns.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const NV: usize, const GATHER: bool, const STEP: usize>(
        t: &Tile,
    ) {
        // `STEP` > 0 is `t.a_rs`, known at compile time.
        let a_rs = if STEP > 0 { STEP } else { t.a_rs };
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let mut bp = t.b;
        let mut ap = t.a;
        for c in 0..t.k {
            let ak = if GATHER {
                // SAFETY: `a_offsets` holds `k` offsets when gathering.
                t.a.wrapping_add(unsafe { *t.a_offsets.add(c) })
            } else {
                ap
            };
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
                // SAFETY: element (r, c) of A, r < R (see the function contract).
                let av = _mm512_set1_ps(unsafe { *ak.add(r * a_rs) });
                for (x, &bb) in acc_r.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bb, *x);
                }
            }
            if !t.prefetch.is_null() {
                const { assert!(NR * 4 == 3 * 64) };
                let line = t.prefetch.wrapping_add(c * NR).cast::<i8>();
                // A prefetch is a hint: it never faults, even past the end of
                // the panel or the output.
                _mm_prefetch::<_MM_HINT_T1>(line);
                _mm_prefetch::<_MM_HINT_T1>(line.wrapping_add(64));
                _mm_prefetch::<_MM_HINT_T1>(line.wrapping_add(128));
            }
            bp = bp.wrapping_add(t.ldb);
            ap = ap.wrapping_add(t.a_cs);
        }
        let lo = _mm512_set1_ps(t.lo);
        let hi = _mm512_set1_ps(t.hi);
        let mut col_bias = [_mm512_setzero_ps(); NV];
        if let Some(cb) = t.col_bias {
            for (v, slot) in col_bias.iter_mut().enumerate() {
                let mask = if v + 1 == NV { t.mask } else { 0xffff };
                // SAFETY: the tile's columns of the bias (masked tail).
                *slot = unsafe { _mm512_maskz_loadu_ps(mask, cb.add(16 * v)) };
            }
        }
        for (r, acc_r) in acc.iter().enumerate().take(t.rows) {
            // SAFETY: row r < rows of the output, residual and bias.
            unsafe {
                let row_bias = _mm512_set1_ps(t.row_bias.map_or(0.0, |b| *b.add(r)));
                let orow = t.out.add(r * t.ldo);
                for (v, &x) in acc_r.iter().enumerate() {
                    let mask = if v + 1 == NV { t.mask } else { 0xffff };
                    let mut y = _mm512_add_ps(x, _mm512_add_ps(row_bias, col_bias[v]));
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
        // Four rows at a time: four independent streams of weights keep more
        // memory requests in flight (the weights of a classifier head, ~5 MB,
        // come from DRAM), and `x` is loaded once for all four.
        const ROWS: usize = 4;
        let mut i0 = 0;
        while i0 < m {
            let nr = (m - i0).min(ROWS);
            let mut acc = [_mm512_setzero_ps(); ROWS];
            // Rows past the end repeat the last row (computed, not stored).
            let rows: [*const f32; ROWS] =
                std::array::from_fn(|r| w.as_ptr().wrapping_add((i0 + r.min(nr - 1)) * k));
            // SAFETY: every load stays inside a row of `w` and inside `x` (k
            // values each); the tail load is masked to the last `rem` values.
            unsafe {
                for v in 0..full {
                    let xv = _mm512_loadu_ps(x.as_ptr().add(16 * v));
                    for (a, row) in acc.iter_mut().zip(&rows) {
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(row.add(16 * v)), xv, *a);
                    }
                }
                if rem > 0 {
                    let xv = _mm512_maskz_loadu_ps(tail, x.as_ptr().add(16 * full));
                    for (a, row) in acc.iter_mut().zip(&rows) {
                        *a = _mm512_fmadd_ps(
                            _mm512_maskz_loadu_ps(tail, row.add(16 * full)),
                            xv,
                            *a,
                        );
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(nr) {
                let i = i0 + r;
                let mut v = _mm512_reduce_add_ps(*a) + ep.bias.map_or(0.0, |b| b[i]);
                if let Some(res) = ep.residual {
                    v += res[i];
                }
                out[i] = ep.clamp(v);
            }
            i0 += nr;
        }
    }
}
