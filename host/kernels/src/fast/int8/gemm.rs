//! `out = requant((A - a_zero) · W)` for `u8` activations A (row-major, one
//! row per pixel, channels-last: the layout of a 1×1 convolution or of an
//! im2col matrix) and `s8` weights W packed once into the order `vpdpbusd`
//! reads.
//!
//! `vpdpbusd` multiplies four consecutive `u8` of one operand by the four
//! `s8` in the same 32-bit lane of the other and adds the sum to that lane's
//! `i32`. So W is packed in panels of 16 output columns, each a run of
//! 64-byte lines, one per group of four reduction steps: line `q` of a panel
//! holds `w[4q + r][j]` at byte `4j + r`. A tile broadcasts four bytes of a
//! row of A to every lane and does one `vpdpbusd` per panel: a register tile
//! of [`MR`] rows × up to four panels is 24 accumulators.
//!
//! The activation zero point is not subtracted per product: `Σ (a - z)·w =
//! Σ a·w - z·Σ w`, and the column sums `Σ w` are kept with the packed weights.

use super::{Isa, Requant, use_vnni};

/// Rows of A per register tile.
const MR: usize = 6;
/// Output columns per panel (one vector of 16 `i32`).
const LANES: usize = 16;
/// Panels per register tile.
#[cfg(target_arch = "x86_64")]
const NV: usize = 4;

/// One 64-byte line: four reduction steps of a 16-column panel.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// `s8` weights `[k, n]` packed for [`gemm_u8s8`], with their column sums.
#[derive(Clone, Debug)]
pub struct PackedI8 {
    k: usize,
    n: usize,
    /// `panels × ceil(k / 4)` lines, panel-major; padding is zero.
    lines: Vec<Line>,
    /// `Σ_k w[k][j]`, padded with zeros to whole panels.
    col_sums: Vec<i32>,
}

impl PackedI8 {
    /// Packs row-major `w` (`k × n`: input channel major, as a weight matrix
    /// `[in, out]`).
    ///
    /// # Panics
    ///
    /// If `w.len() != k * n`.
    pub fn pack(w: &[i8], k: usize, n: usize) -> PackedI8 {
        assert_eq!(w.len(), k * n, "PackedI8::pack: {} != {k}·{n}", w.len());
        PackedI8::pack_with(k, n, |c, j| w[c * n + j])
    }

    /// Packs `w` given transposed, row-major `n × k`: ONNX's out-channel-major
    /// weights (`[o, c]` of a 1×1 convolution, `[o, c, kh, kw]` of a dense one
    /// read as `(c, ky, kx)` rows, `[o, c]` of a `Gemm` with `transB`).
    ///
    /// # Panics
    ///
    /// If `w.len() != n * k`.
    pub fn pack_transposed(w: &[i8], n: usize, k: usize) -> PackedI8 {
        assert_eq!(
            w.len(),
            n * k,
            "PackedI8::pack_transposed: {} != {n}·{k}",
            w.len()
        );
        PackedI8::pack_with(k, n, |c, j| w[j * k + c])
    }

    fn pack_with(k: usize, n: usize, at: impl Fn(usize, usize) -> i8) -> PackedI8 {
        let (panels, k4) = (n.div_ceil(LANES), k.div_ceil(4));
        let mut lines = vec![Line([0; 64]); panels * k4];
        let mut col_sums = vec![0i32; panels * LANES];
        for (j, sum) in col_sums.iter_mut().enumerate().take(n) {
            let (p, jj) = (j / LANES, j % LANES);
            for c in 0..k {
                let v = at(c, j);
                lines[p * k4 + c / 4].0[4 * jj + c % 4] = v;
                *sum += i32::from(v);
            }
        }
        PackedI8 {
            k,
            n,
            lines,
            col_sums,
        }
    }

    /// Rows (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (output channels).
    pub fn n(&self) -> usize {
        self.n
    }
}

/// `out[i*ldo + j] = rq(Σ_c (a[i*lda + c] - a_zero) · w[c][j], j)` for
/// `i < m`, `j < n` (see [`Requant`]); bytes of `out` between `n` and `ldo`
/// are left alone.
///
/// # Panics
///
/// If a slice is too short for the shapes given, or `rq` has the wrong
/// number of scales or biases.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8s8(
    isa: Isa,
    m: usize,
    a: &[u8],
    lda: usize,
    a_zero: u8,
    w: &PackedI8,
    out: &mut [u8],
    ldo: usize,
    rq: &Requant<'_>,
) {
    let (k, n) = (w.k, w.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k == 0 || (lda >= k && a.len() >= (m - 1) * lda + k),
        "gemm_u8s8: a too short"
    );
    assert!(
        ldo >= n && out.len() >= (m - 1) * ldo + n,
        "gemm_u8s8: out too short"
    );
    rq.check(n, "gemm_u8s8");
    if use_vnni(isa) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `use_vnni` checked AVX-512F/BW/VL/VNNI at run time; the
        // asserts above bound every row of `a` and `out` the kernel reads or
        // writes (see `vnni::gemm`).
        unsafe {
            vnni::gemm(m, a, lda, a_zero, w, out, ldo, rq)
        };
        return;
    }
    portable(m, a, lda, a_zero, w, out, ldo, rq);
}

#[allow(clippy::too_many_arguments)]
fn portable(
    m: usize,
    a: &[u8],
    lda: usize,
    a_zero: u8,
    w: &PackedI8,
    out: &mut [u8],
    ldo: usize,
    rq: &Requant<'_>,
) {
    let (k, n) = (w.k, w.n);
    let k4 = k.div_ceil(4);
    let mut acc = [[0i32; LANES]; MR];
    for p in 0..n.div_ceil(LANES) {
        let panel = &w.lines[p * k4..][..k4];
        let cols = LANES.min(n - p * LANES);
        for i0 in (0..m).step_by(MR) {
            let rows = MR.min(m - i0);
            for row in acc.iter_mut() {
                *row = [0; LANES];
            }
            for (r, row) in acc.iter_mut().enumerate().take(rows) {
                let arow = &a[(i0 + r) * lda..][..k];
                // Whole quads, then the zero-padded tail.
                let mut quads = arow.chunks_exact(4);
                for (quad, line) in (&mut quads).zip(panel) {
                    dot_line(row, [quad[0], quad[1], quad[2], quad[3]], line);
                }
                let tail = quads.remainder();
                if !tail.is_empty() {
                    let mut quad = [0u8; 4];
                    quad[..tail.len()].copy_from_slice(tail);
                    dot_line(row, quad, &panel[k4 - 1]);
                }
            }
            for (r, row) in acc.iter().enumerate().take(rows) {
                let o = &mut out[(i0 + r) * ldo + p * LANES..][..cols];
                for (jj, dst) in o.iter_mut().enumerate() {
                    let j = p * LANES + jj;
                    let s = row[jj].wrapping_sub(i32::from(a_zero) * w.col_sums[j]);
                    *dst = rq.quantize(j, s);
                }
            }
        }
    }
}

/// `row[jj] += Σ_t quad[t] · line[4jj + t]`: one `vpdpbusd`, in plain Rust.
#[inline(always)]
fn dot_line(row: &mut [i32; LANES], quad: [u8; 4], line: &Line) {
    let q = quad.map(i32::from);
    for (s, l) in row.iter_mut().zip(line.0.chunks_exact(4)) {
        *s += q[0] * i32::from(l[0])
            + q[1] * i32::from(l[1])
            + q[2] * i32::from(l[2])
            + q[3] * i32::from(l[3]);
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{LANES, MR, NV, PackedI8, Requant};

    /// Everything a tile's epilogue needs, per call.
    struct Ctx<'a> {
        a: *const u8,
        lda: usize,
        k: usize,
        a_zero: __m512i,
        w: &'a PackedI8,
        out: *mut u8,
        ldo: usize,
        rq: &'a Requant<'a>,
        /// Whether no scaled sum can leave `i32`, so that whole 64-column
        /// rows can be stored by saturating packs (see [`store_row`]).
        packed_store: bool,
        /// Reduction quads read as whole `i32`s: every quad when each row has
        /// the bytes up to `4·ceil(k / 4)` (the packed weights are zero past
        /// `k`, so whatever those bytes hold adds nothing), else the quads
        /// inside `k`, the last partial one then read byte by byte.
        whole_quads: usize,
    }

    /// Whether `|acc · scale|` stays well inside `i32` for every sum this
    /// call can make: `|Σ (a - z)·w| <= k·255·128`, plus the bias.
    fn sums_fit(k: usize, rq: &Requant<'_>) -> bool {
        let bias = rq
            .bias
            .map_or(0, |b| b.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0));
        let acc = k as f64 * 255.0 * 128.0 + f64::from(bias);
        let scale = rq.scale.iter().fold(0f64, |m, s| m.max(f64::from(s.abs())));
        // `scale` may be NaN (then `fold` skips it) or infinite: the check fails.
        rq.scale.iter().all(|s| s.is_finite()) && acc * scale < f64::from(1u32 << 30)
    }

    /// # Safety
    ///
    /// The CPU has AVX-512F/BW/VL/VNNI; `a` holds rows `0..m` of `w.k` bytes
    /// at stride `lda`, `out` rows `0..m` of `w.n` bytes at stride `ldo`;
    /// `rq` was checked against `w.n`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn gemm(
        m: usize,
        a: &[u8],
        lda: usize,
        a_zero: u8,
        w: &PackedI8,
        out: &mut [u8],
        ldo: usize,
        rq: &Requant<'_>,
    ) {
        let panels = w.n.div_ceil(LANES);
        let k4 = w.k.div_ceil(4);
        let cx = Ctx {
            a: a.as_ptr(),
            lda,
            k: w.k,
            a_zero: _mm512_set1_epi32(i32::from(a_zero)),
            w,
            out: out.as_mut_ptr(),
            ldo,
            rq,
            packed_store: sums_fit(w.k, rq),
            whole_quads: if lda >= 4 * k4 && a.len() >= (m - 1) * lda + 4 * k4 {
                k4
            } else {
                w.k / 4
            },
        };
        for p0 in (0..panels).step_by(NV) {
            let nv = NV.min(panels - p0);
            for i0 in (0..m).step_by(MR) {
                let rows = MR.min(m - i0);
                macro_rules! go {
                    ($($r:literal),*) => {
                        match (rows, nv) {
                            $(
                                // SAFETY: rows `i0..i0 + r` < m and panels
                                // `p0..p0 + nv` <= panels, within the caller's
                                // bounds.
                                ($r, 1) => unsafe { tile::<$r, 1>(&cx, i0, p0) },
                                // SAFETY: as above.
                                ($r, 2) => unsafe { tile::<$r, 2>(&cx, i0, p0) },
                                // SAFETY: as above.
                                ($r, 3) => unsafe { tile::<$r, 3>(&cx, i0, p0) },
                                // SAFETY: as above.
                                ($r, 4) => unsafe { tile::<$r, 4>(&cx, i0, p0) },
                            )*
                            _ => unreachable!("rows <= MR, nv <= NV"),
                        }
                    };
                }
                go!(1, 2, 3, 4, 5, 6);
            }
        }
    }

    /// Four bytes of row `r` at reduction step `4q`, zero past `k`.
    #[inline(always)]
    unsafe fn quad(cx: &Ctx<'_>, row: usize, q: usize) -> i32 {
        // SAFETY: the caller passes a row of `a`, which holds `k > 4q` bytes.
        let p = unsafe { cx.a.add(row * cx.lda + 4 * q) };
        if 4 * q + 4 <= cx.k {
            // SAFETY: the four bytes lie inside the row.
            unsafe { p.cast::<i32>().read_unaligned() }
        } else {
            let mut b = [0u8; 4];
            for (t, v) in b.iter_mut().enumerate().take(cx.k - 4 * q) {
                // SAFETY: `4q + t < k`, inside the row.
                *v = unsafe { *p.add(t) };
            }
            i32::from_le_bytes(b)
        }
    }

    /// Rows `i0..i0 + R` × panels `p0..p0 + V`.
    ///
    /// # Safety
    ///
    /// As for [`gemm`], and the rows and panels exist.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const R: usize, const V: usize>(cx: &Ctx<'_>, i0: usize, p0: usize) {
        let k4 = cx.k.div_ceil(4);
        let full = cx.whole_quads;
        let lines = cx.w.lines.as_ptr();
        let n = cx.w.n;
        let rq = cx.rq;
        let masks: [__mmask16; V] = std::array::from_fn(|v| {
            let cols = LANES.min(n - (p0 + v) * LANES);
            if cols == LANES {
                !0
            } else {
                (1u16 << cols) - 1
            }
        });
        // The sums start at `bias - a_zero·Σ w`: `Σ (a - z)·w = Σ a·w - z·Σ w`.
        let corr: [__m512i; V] = std::array::from_fn(|v| {
            let j0 = (p0 + v) * LANES;
            // SAFETY: `col_sums` is padded to whole panels.
            let sums = unsafe { _mm512_loadu_si512(cx.w.col_sums.as_ptr().add(j0).cast()) };
            let corr =
                _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_mullo_epi32(sums, cx.a_zero));
            match rq.bias {
                // SAFETY: `bias` has `n` values (checked); the mask stops at `n`.
                Some(b) => _mm512_add_epi32(corr, unsafe {
                    _mm512_maskz_loadu_epi32(masks[v], b.as_ptr().add(j0))
                }),
                None => corr,
            }
        });
        let mut acc = [corr; R];
        let step = |acc: &mut [[__m512i; V]; R], q: usize, a4: [i32; R]| {
            let mut b = [_mm512_setzero_si512(); V];
            for (v, bv) in b.iter_mut().enumerate() {
                // SAFETY: panel `p0 + v` exists and has `k4 > q` lines of 64
                // aligned bytes.
                *bv = unsafe { _mm512_load_si512(lines.add((p0 + v) * k4 + q).cast()) };
            }
            for r in 0..R {
                let av = _mm512_set1_epi32(a4[r]);
                for v in 0..V {
                    acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, b[v]);
                }
            }
        };
        for q in 0..full {
            let mut a4 = [0i32; R];
            for (r, x) in a4.iter_mut().enumerate() {
                // SAFETY: `4q + 4 <= k`, or `<= lda` with the row's bytes in
                // `a` (`whole_quads`): inside row `i0 + r`.
                *x = unsafe {
                    cx.a.add((i0 + r) * cx.lda + 4 * q)
                        .cast::<i32>()
                        .read_unaligned()
                };
            }
            step(&mut acc, q, a4);
        }
        if full < k4 {
            let mut a4 = [0i32; R];
            for (r, x) in a4.iter_mut().enumerate() {
                // SAFETY: row `i0 + r` exists; `quad` stops at `k`.
                *x = unsafe { quad(cx, i0 + r, full) };
            }
            step(&mut acc, full, a4);
        }
        let scales: [__m512; V] = std::array::from_fn(|v| {
            if rq.scale.len() == 1 {
                _mm512_set1_ps(rq.scale[0])
            } else {
                // SAFETY: `scale` has `n` values (checked); the mask stops at `n`.
                unsafe { _mm512_maskz_loadu_ps(masks[v], rq.scale.as_ptr().add((p0 + v) * LANES)) }
            }
        });
        if V == 4 && cx.packed_store && (p0 + 4) * LANES <= n {
            for (r, row) in acc.iter().enumerate() {
                // SAFETY: row `i0 + r` of `out` has `n >= (p0 + 4)·16` bytes.
                unsafe {
                    store_row(
                        cx,
                        cx.out.add((i0 + r) * cx.ldo + p0 * LANES),
                        row[..].try_into().expect("V == 4"),
                        scales[..].try_into().expect("V == 4"),
                    )
                };
            }
            return;
        }
        let bounds = super::super::simd::Bounds::new(rq);
        for v in 0..V {
            let j0 = (p0 + v) * LANES;
            for (r, row) in acc.iter().enumerate() {
                let q = bounds.quantize(row[v], scales[v]);
                // SAFETY: row `i0 + r` of `out` has `n >= j0 + cols` bytes.
                unsafe {
                    _mm_mask_storeu_epi8(cx.out.add((i0 + r) * cx.ldo + j0).cast(), masks[v], q)
                };
            }
        }
    }

    /// Sixty-four requantized sums of one row (four panels) in one store:
    /// scaled and rounded in `f32` as [`super::super::simd::Bounds::quantize`]
    /// does, then narrowed by saturating packs, which clamp to `[0, 255]`
    /// on the way (the packs interleave 128-bit lanes; one permutation puts
    /// the columns back in order). Exact only when no scaled sum leaves
    /// `i32` ([`sums_fit`]): then clamping after rounding equals clamping
    /// before, the order the other store uses.
    ///
    /// # Safety
    ///
    /// The CPU has AVX-512F/BW/VNNI; `dst` has 64 writable bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn store_row(cx: &Ctx<'_>, dst: *mut u8, row: [__m512i; 4], scales: [__m512; 4]) {
        let q: [__m512i; 4] = std::array::from_fn(|v| {
            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(row[v]), scales[v]);
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f)
        });
        let zero = _mm512_set1_epi16(i16::from(cx.rq.zero));
        // i32 -> i16 saturating, plus the zero point saturating: a value
        // outside i16 stays outside [0, 255] and saturates the same way.
        let lo = _mm512_adds_epi16(_mm512_packs_epi32(q[0], q[1]), zero);
        let hi = _mm512_adds_epi16(_mm512_packs_epi32(q[2], q[3]), zero);
        let bytes = _mm512_packus_epi16(lo, hi);
        // Dword `4L + s` holds panel `s`, lane `L`: gather panel-major.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let bytes = _mm512_permutexvar_epi32(order, bytes);
        let bytes = _mm512_max_epu8(bytes, _mm512_set1_epi8(cx.rq.lo as i8));
        let bytes = _mm512_min_epu8(bytes, _mm512_set1_epi8(cx.rq.hi as i8));
        // SAFETY: the caller's 64 bytes.
        unsafe { _mm512_storeu_si512(dst.cast(), bytes) };
    }
}
