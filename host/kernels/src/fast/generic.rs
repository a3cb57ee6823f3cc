//! The fast kernels written once over [`Simd`], for AVX2 and NEON: the
//! register-tiled GEMM (packed weights times NCHW planes, row-major
//! activations times packed weights, gathered patches), the batch-1 matrix
//! by vector, the channels-last depthwise convolution and the FMA peak burst.
//!
//! They follow the AVX-512 kernels' blocking (the same packed layouts, bias,
//! residual and clamp epilogue) with the tile shape taken from the ISA
//! ([`Simd::TILE_ROWS`] × [`Simd::TILE_VECS`]). The AVX-512 path keeps its
//! hand-written kernels, which add what only it has room for: a 12-row
//! gather tile, panel prefetch and the depthwise slab.
//!
//! Every function here is `#[inline(always)]` and reaches the CPU through
//! [`Simd::vectorize`], which compiles it with the ISA's features.

use super::depthwise_nhwc::{col_of, rows_of};
use super::pointwise::{ARows, NR};
use super::simd::{Kernel, Simd};
use super::{DwGeometry, Epilogue, MR, PEAK_CHAINS, PackedLhs, PackedRhs};

/// One register tile's operands; element `(r, c)` of A is at
/// `a + r * a_rs + c * a_cs`, or with `a_offsets`, `a + r * a_rs + a_offsets[c]`.
struct Tile {
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    a_offsets: *const usize,
    b: *const f32,
    ldb: usize,
    out: *mut f32,
    ldo: usize,
    /// Rows stored (the tile computes `R`; `rows <= R`).
    rows: usize,
    /// Columns of the tile inside the matrix (`<= NV · LANES`).
    cols: usize,
    /// `b` is a packed panel, zero-padded past `cols`: its rows are read
    /// whole, without masks.
    b_padded: bool,
    row_bias: Option<*const f32>,
    col_bias: Option<*const f32>,
    residual: Option<*const f32>,
    lo: f32,
    hi: f32,
}

/// One `R × NV·LANES` register tile over the whole reduction.
///
/// # Safety
///
/// A's rows `0..R`, columns `0..k` are readable; `b` rows `0..k` (stride
/// `ldb`) are valid for columns `0..cols` (`0..NV·LANES` when `b_padded`),
/// and `out`/`residual` rows `0..rows` (stride `ldo`) for columns `0..cols`;
/// a row bias holds `rows` values, a column bias `cols`.
#[inline(always)]
unsafe fn tile<S: Simd, const R: usize, const NV: usize, const GATHER: bool>(s: S, t: &Tile) {
    let mut masks = [s.mask(S::LANES); NV];
    for (v, m) in masks.iter_mut().enumerate() {
        *m = s.mask((t.cols - v * S::LANES).min(S::LANES));
    }
    // A masked load costs more than a plain one on AVX2 (`vmaskmovps`).
    let partial = t.cols < NV * S::LANES && !t.b_padded;
    let mut acc = [[s.zero(); NV]; R];
    let mut bp = t.b;
    let mut ap = t.a;
    for c in 0..t.k {
        let ak = if GATHER {
            // SAFETY: `a_offsets` holds `k` offsets when gathering.
            t.a.wrapping_add(unsafe { *t.a_offsets.add(c) })
        } else {
            ap
        };
        let mut bv = [s.zero(); NV];
        for (v, slot) in bv.iter_mut().enumerate() {
            // SAFETY: columns of row c of b inside the tile (contract).
            *slot = unsafe {
                if v + 1 == NV && partial {
                    s.load_masked(bp.add(S::LANES * v), masks[v])
                } else {
                    s.load(bp.add(S::LANES * v))
                }
            };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: element (r, c) of A, r < R (contract).
            let av = s.splat(unsafe { *ak.add(r * t.a_rs) });
            for (x, &bb) in acc_r.iter_mut().zip(&bv) {
                *x = s.fma(av, bb, *x);
            }
        }
        bp = bp.wrapping_add(t.ldb);
        ap = ap.wrapping_add(t.a_cs);
    }
    let (lo, hi) = (s.splat(t.lo), s.splat(t.hi));
    let mut col_bias = [s.zero(); NV];
    if let Some(cb) = t.col_bias {
        for (v, slot) in col_bias.iter_mut().enumerate() {
            // SAFETY: the tile's columns of the bias (contract).
            *slot = unsafe { s.load_masked(cb.add(S::LANES * v), masks[v]) };
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(t.rows) {
        // SAFETY: row r < rows of the output, residual and row bias (contract).
        unsafe {
            let row_bias = s.splat(t.row_bias.map_or(0.0, |b| *b.add(r)));
            let orow = t.out.add(r * t.ldo);
            for (v, &x) in acc_r.iter().enumerate() {
                let mut y = s.add(x, s.add(row_bias, col_bias[v]));
                if let Some(res) = t.residual {
                    let rv = s.load_masked(res.add(r * t.ldo + S::LANES * v), masks[v]);
                    y = s.add(y, rv);
                }
                y = s.min(hi, s.max(lo, y));
                s.store_masked(orow.add(S::LANES * v), masks[v], y);
            }
        }
    }
}

/// Runs the tile for `rows` (a constant up to 8) and `nv` (up to 3).
///
/// # Safety
///
/// As [`tile`]'s, with `R = rows` and `NV = nv`.
#[inline(always)]
unsafe fn dispatch<S: Simd, const GATHER: bool>(s: S, rows: usize, nv: usize, t: &Tile) {
    macro_rules! rows {
        ($nv:literal) => {
            // SAFETY: the caller's contract for R = rows, NV = nv.
            unsafe {
                match rows {
                    8 => tile::<S, 8, $nv, GATHER>(s, t),
                    7 => tile::<S, 7, $nv, GATHER>(s, t),
                    6 => tile::<S, 6, $nv, GATHER>(s, t),
                    5 => tile::<S, 5, $nv, GATHER>(s, t),
                    4 => tile::<S, 4, $nv, GATHER>(s, t),
                    3 => tile::<S, 3, $nv, GATHER>(s, t),
                    2 => tile::<S, 2, $nv, GATHER>(s, t),
                    _ => tile::<S, 1, $nv, GATHER>(s, t),
                }
            }
        };
    }
    debug_assert!((1..=8).contains(&rows) && (1..=3).contains(&nv));
    match nv {
        3 => rows!(3),
        2 => rows!(2),
        _ => rows!(1),
    }
}

/// Columns per tile.
fn tile_cols<S: Simd>() -> usize {
    // Tiles split packed panels and blocks exactly.
    const { assert!(NR.is_multiple_of(S::TILE_VECS * S::LANES) && S::TILE_ROWS <= 8) };
    S::TILE_VECS * S::LANES
}

/// [`super::gemm_packed`]: packed A (blocks of [`MR`] rows) times strided B.
///
/// # Safety
///
/// The slices cover the spans `gemm_packed` asserts.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_packed_body<S: Simd>(
    s: S,
    a: &PackedLhs,
    b: &[f32],
    ldb: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let m = a.m();
    let tc = tile_cols::<S>();
    for j0 in (0..n).step_by(tc) {
        let cols = (n - j0).min(tc);
        for blk in 0..m.div_ceil(MR) {
            let block_rows = (m - blk * MR).min(MR);
            for r0 in (0..block_rows).step_by(S::TILE_ROWS) {
                let rows = (block_rows - r0).min(S::TILE_ROWS);
                let i0 = blk * MR + r0;
                let t = Tile {
                    k: a.k(),
                    a: a.block(blk).as_ptr().wrapping_add(r0),
                    a_rs: 1,
                    a_cs: MR,
                    a_offsets: std::ptr::null(),
                    b: b.as_ptr().wrapping_add(j0),
                    ldb,
                    out: out.as_mut_ptr().wrapping_add(i0 * ldo + j0),
                    ldo,
                    rows,
                    cols,
                    b_padded: false,
                    row_bias: ep.bias.map(|bb| bb.as_ptr().wrapping_add(i0)),
                    col_bias: None,
                    residual: ep.residual.map(|r| r.as_ptr().wrapping_add(i0 * ldo + j0)),
                    lo: ep.lo,
                    hi: ep.hi,
                };
                // SAFETY: rows `i0..i0+rows` < m and columns `j0..j0+cols`
                // <= n are inside the asserted spans; the packed block holds
                // all MR rows, so rows r0..r0+rows of it are readable.
                unsafe { dispatch::<S, false>(s, rows, cols.div_ceil(S::LANES), &t) };
            }
        }
    }
}

/// [`super::gemm_rows`] and [`super::gemm_gather`]: A read in place times
/// packed B (panels of [`NR`] columns).
///
/// # Safety
///
/// The slices cover the spans `gemm_rows` (or `gemm_gather`) asserts.
#[inline(always)]
unsafe fn gemm_rows_body<S: Simd>(
    s: S,
    m: usize,
    a: ARows<'_>,
    b: &PackedRhs,
    out: &mut [f32],
    ldo: usize,
    ep: &Epilogue<'_>,
) {
    let (k, n) = (b.k(), b.n());
    let (base, step, offsets) = match a {
        ARows::Strided { a, lda } => (a.as_ptr(), lda, std::ptr::null()),
        ARows::Gather {
            a,
            row_step,
            offsets,
        } => (a.as_ptr(), row_step, offsets.as_ptr()),
    };
    let gather = !offsets.is_null();
    let tc = tile_cols::<S>();
    for p0 in (0..n).step_by(NR) {
        let panel = b.panel(p0 / NR).as_ptr();
        for g0 in (0..(n - p0).min(NR)).step_by(tc) {
            let j0 = p0 + g0;
            let cols = (n - j0).min(tc);
            for i0 in (0..m).step_by(S::TILE_ROWS) {
                let rows = (m - i0).min(S::TILE_ROWS);
                let t = Tile {
                    k,
                    a: base.wrapping_add(i0 * step),
                    a_rs: step,
                    a_cs: 1,
                    a_offsets: offsets,
                    b: panel.wrapping_add(g0),
                    ldb: NR,
                    out: out.as_mut_ptr().wrapping_add(i0 * ldo + j0),
                    ldo,
                    rows,
                    cols,
                    b_padded: true,
                    row_bias: None,
                    col_bias: ep.bias.map(|bb| bb.as_ptr().wrapping_add(j0)),
                    residual: ep.residual.map(|r| r.as_ptr().wrapping_add(i0 * ldo + j0)),
                    lo: ep.lo,
                    hi: ep.hi,
                };
                let nv = cols.div_ceil(S::LANES);
                // SAFETY: the tile reads rows `i0..i0+rows` < m of A (columns
                // < k) and the panel's columns g0..g0+cols (zero-padded to
                // NR), and writes rows `i0..i0+rows`, columns `j0..j0+cols`
                // <= n of `out`: all inside the asserted spans.
                unsafe {
                    if gather {
                        dispatch::<S, true>(s, rows, nv, &t)
                    } else {
                        dispatch::<S, false>(s, rows, nv, &t)
                    }
                }
            }
        }
    }
}

/// [`super::matvec`]: `out[i] = epilogue(w[i] · x)`.
///
/// # Safety
///
/// `w` holds `m * k`, `x` exactly `k`, `out` at least `m` values, and the
/// epilogue's slices at least `m`.
#[inline(always)]
unsafe fn matvec_body<S: Simd>(
    s: S,
    w: &[f32],
    m: usize,
    k: usize,
    x: &[f32],
    out: &mut [f32],
    ep: &Epilogue<'_>,
) {
    // Four rows at a time share each load of `x` and keep four streams of
    // weights in flight (a classifier head's weights come from DRAM).
    const ROWS: usize = 4;
    let full = k / S::LANES;
    let tail = s.mask(k % S::LANES);
    {
        for i0 in (0..m).step_by(ROWS) {
            let nr = (m - i0).min(ROWS);
            let mut acc = [s.zero(); ROWS];
            // Rows past the end repeat the last row (computed, not stored).
            let mut rows = [w.as_ptr(); ROWS];
            for (r, row) in rows.iter_mut().enumerate() {
                *row = w.as_ptr().wrapping_add((i0 + r.min(nr - 1)) * k);
            }
            // SAFETY: every load stays inside a row of `w` and inside `x` (k
            // values each); the tail load is masked to the last values.
            unsafe {
                for v in 0..full {
                    let xv = s.load(x.as_ptr().add(S::LANES * v));
                    for (a, row) in acc.iter_mut().zip(&rows) {
                        *a = s.fma(s.load(row.add(S::LANES * v)), xv, *a);
                    }
                }
                let xv = s.load_masked(x.as_ptr().add(S::LANES * full), tail);
                for (a, row) in acc.iter_mut().zip(&rows) {
                    *a = s.fma(s.load_masked(row.add(S::LANES * full), tail), xv, *a);
                }
            }
            for (r, &a) in acc.iter().enumerate().take(nr) {
                let i = i0 + r;
                let mut v = s.sum(a) + ep.bias.map_or(0.0, |b| b[i]);
                if let Some(res) = ep.residual {
                    v += res[i];
                }
                out[i] = ep.clamp(v);
            }
        }
    }
}

/// The FMA peak burst: `iters` rounds of FMAs on
/// `PEAK_CHAINS` independent vectors; returns the FLOPs done and a sum the
/// caller keeps alive.
#[inline(always)]
fn fma_burst_body<S: Simd>(s: S, iters: usize) -> (u64, f32) {
    {
        let mut acc = [s.splat(1.0); PEAK_CHAINS];
        let a = s.splat(std::hint::black_box(0.999_99));
        let b = s.splat(std::hint::black_box(1e-6));
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = s.fma(*v, a, b);
            }
        }
        let flops = (iters * PEAK_CHAINS * S::LANES * 2) as u64;
        let mut sum = 0.0;
        for &v in &acc {
            sum += s.sum(v);
        }
        (flops, sum)
    }
}

/// Output pixels computed together in the depthwise interior.
const PX: usize = 4;

/// One output row's channel block of the depthwise convolution.
struct DwBlock<'a, S: Simd> {
    g: &'a DwGeometry,
    input: *const f32,
    /// Weights of tap 0 at this block's first channel.
    w: *const f32,
    out: *mut f32,
    residual: Option<*const f32>,
    oy: usize,
    /// Offset of this output row's first pixel, this block's first channel.
    obase: usize,
    c0: usize,
    mask: S::Mask,
    bias: S::V,
    lo: S::V,
    hi: S::V,
}

/// [`super::depthwise_nhwc`]: `cols_lo..cols_hi` are the output columns
/// whose taps are all inside the image horizontally.
///
/// # Safety
///
/// The slices cover the spans `depthwise_nhwc` asserts; `cols_lo..cols_hi`
/// is as described.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn depthwise_nhwc_body<S: Simd>(
    s: S,
    g: &DwGeometry,
    cols_lo: usize,
    cols_hi: usize,
    input: &[f32],
    weight: &[f32],
    ep: &Epilogue<'_>,
    out: &mut [f32],
) {
    let c = g.c;
    for oy in 0..g.oh {
        for c0 in (0..c).step_by(S::LANES) {
            let mask = s.mask((c - c0).min(S::LANES));
            let b = DwBlock::<S> {
                g,
                input: input.as_ptr(),
                w: weight.as_ptr().wrapping_add(c0),
                out: out.as_mut_ptr(),
                residual: ep.residual.map(|r| r.as_ptr()),
                oy,
                obase: oy * g.ow * c + c0,
                c0,
                mask,
                bias: match ep.bias {
                    // SAFETY: the block's channels of the bias (masked tail).
                    Some(bv) => unsafe { s.load_masked(bv.as_ptr().add(c0), mask) },
                    None => s.zero(),
                },
                lo: s.splat(ep.lo),
                hi: s.splat(ep.hi),
            };
            // SAFETY: every pixel is inside the output and every tap read is
            // inside the image or masked off; only the block's channel lanes
            // are touched.
            unsafe {
                match (g.kh, g.kw) {
                    (3, 3) => dw_row::<S, 3, 3>(s, &b, cols_lo, cols_hi),
                    (5, 5) => dw_row::<S, 5, 5>(s, &b, cols_lo, cols_hi),
                    _ => dw_row_any(s, &b),
                }
            }
        }
    }
}

/// Bias was the accumulator's start; adds the residual, clamps, stores.
///
/// # Safety
///
/// Pixel `ox` is in the block's output row.
#[inline(always)]
unsafe fn dw_finish<S: Simd>(s: S, b: &DwBlock<'_, S>, acc: S::V, ox: usize) {
    let o = b.obase + ox * b.g.c;
    // SAFETY: pixel `ox` of the block's row, its channel lanes (caller).
    unsafe {
        let mut y = acc;
        if let Some(r) = b.residual {
            y = s.add(y, s.load_masked(r.add(o), b.mask));
        }
        y = s.min(b.hi, s.max(b.lo, y));
        s.store_masked(b.out.add(o), b.mask, y);
    }
}

/// One output row's block for a `KH × KW` kernel: the taps' weights stay in
/// registers for the row; a row or column outside the image loads nothing
/// (an empty mask), so border pixels need no branch per tap, and interior
/// pixels go [`PX`] at a time.
///
/// # Safety
///
/// As [`depthwise_nhwc`]'s.
#[inline(always)]
unsafe fn dw_row<S: Simd, const KH: usize, const KW: usize>(
    s: S,
    b: &DwBlock<'_, S>,
    cols_lo: usize,
    cols_hi: usize,
) {
    let g = b.g;
    let c = g.c;
    let xs = g.stride[1] * c;
    let xd = g.dilation[1] * c;
    let empty = s.mask(0);
    let mut w = [[s.zero(); KW]; KH];
    // Each row's base at channel c0 and its load mask: empty for a row
    // outside the image, whose base is then row 0 (in bounds, never read).
    let mut xrow = [(b.input.wrapping_add(b.c0), empty); KH];
    for (ky, (wr, xr)) in w.iter_mut().zip(xrow.iter_mut()).enumerate() {
        let iy = (b.oy * g.stride[0] + ky * g.dilation[0])
            .checked_sub(g.pad.top)
            .filter(|&iy| iy < g.h);
        if let Some(iy) = iy {
            *xr = (b.input.wrapping_add(iy * g.w * c + b.c0), b.mask);
        }
        for (kx, wv) in wr.iter_mut().enumerate() {
            // SAFETY: tap (ky, kx) of the block's channels (masked tail).
            *wv = unsafe { s.load_masked(b.w.add((ky * KW + kx) * c), b.mask) };
        }
    }
    for ox in 0..cols_lo {
        // SAFETY: as the caller's.
        unsafe { dw_finish(s, b, dw_pixel(s, b, &w, &xrow, ox), ox) };
    }
    let mut ox = cols_lo;
    while ox + PX <= cols_hi {
        let x0 = (ox * g.stride[1] - g.pad.left) * c;
        let mut acc = [b.bias; PX];
        for (wr, &(xr, row_mask)) in w.iter().zip(&xrow) {
            for (kx, &wv) in wr.iter().enumerate() {
                let xp = xr.wrapping_add(x0 + kx * xd);
                for (p, a) in acc.iter_mut().enumerate() {
                    // SAFETY: every tap of pixels `ox..ox+PX` is inside the
                    // image horizontally; a row outside it has an empty mask.
                    let x = unsafe { s.load_masked(xp.wrapping_add(p * xs), row_mask) };
                    *a = s.fma(x, wv, *a);
                }
            }
        }
        for (p, &a) in acc.iter().enumerate() {
            // SAFETY: as the caller's.
            unsafe { dw_finish(s, b, a, ox + p) };
        }
        ox += PX;
    }
    for ox in ox..g.ow {
        // SAFETY: as the caller's.
        unsafe { dw_finish(s, b, dw_pixel(s, b, &w, &xrow, ox), ox) };
    }
}

/// One border pixel of [`dw_row`]: a tap outside the image loads nothing
/// (its mask is empty), so there is no branch per tap.
///
/// # Safety
///
/// `xrow` as `dw_row` builds it: each row's base and mask, empty outside
/// the image.
#[inline(always)]
unsafe fn dw_pixel<S: Simd, const KH: usize, const KW: usize>(
    s: S,
    b: &DwBlock<'_, S>,
    w: &[[S::V; KW]; KH],
    xrow: &[(*const f32, S::Mask); KH],
    ox: usize,
) -> S::V {
    let g = b.g;
    let empty = s.mask(0);
    let mut acc = b.bias;
    let base = (ox * g.stride[1]) as isize - g.pad.left as isize;
    for (wr, &(xr, row_mask)) in w.iter().zip(xrow) {
        for (kx, &wv) in wr.iter().enumerate() {
            let ix = base + (kx * g.dilation[1]) as isize;
            let mask = if ix >= 0 && (ix as usize) < g.w {
                row_mask
            } else {
                empty
            };
            // SAFETY: with a non-empty mask, column ix of a row inside the
            // image; with an empty one, no access.
            let x = unsafe { s.load_masked(xr.wrapping_offset(ix * g.c as isize), mask) };
            acc = s.fma(x, wv, acc);
        }
    }
    acc
}

/// One output row's block, any kernel size: each tap tested against the
/// image's edges.
///
/// # Safety
///
/// As [`depthwise_nhwc`]'s.
#[inline(always)]
unsafe fn dw_row_any<S: Simd>(s: S, b: &DwBlock<'_, S>) {
    let g = b.g;
    for ox in 0..g.ow {
        let mut acc = b.bias;
        for (ky, iy) in rows_of(g, b.oy) {
            for kx in 0..g.kw {
                if let Some(ix) = col_of(g, ox, kx) {
                    // SAFETY: (iy, ix) is inside the image; tap (ky, kx).
                    unsafe {
                        let x = s.load_masked(b.input.add((iy * g.w + ix) * g.c + b.c0), b.mask);
                        let w = s.load_masked(b.w.add((ky * g.kw + kx) * g.c), b.mask);
                        acc = s.fma(x, w, acc);
                    }
                }
            }
        }
        // SAFETY: as the caller's.
        unsafe { dw_finish(s, b, acc, ox) };
    }
}

/// Wraps a kernel body as a [`Kernel`] for [`Simd::vectorize`]: `$name`
/// takes the ISA token and the body's arguments (their lifetimes all `'a`),
/// and its safety contract is the body's.
macro_rules! entry_point {
    ($(#[$doc:meta])* $name:ident => $body:ident -> $out:ty, ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        ///
        /// # Safety
        ///
        /// As the body's (none for a safe body).
        #[allow(clippy::too_many_arguments, clippy::extra_unused_lifetimes, unused_unsafe)]
        pub(crate) unsafe fn $name<'a, S: Simd>(s: S, $($arg: $ty),*) -> $out {
            struct Args<'a> {
                $($arg: $ty,)*
                _borrows: std::marker::PhantomData<&'a ()>,
            }
            impl Kernel for Args<'_> {
                type Out = $out;
                #[inline(always)]
                fn run<T: Simd>(self, s: T) -> $out {
                    // SAFETY: `Args` is only built below, by a caller that
                    // upholds the body's contract.
                    unsafe { $body(s, $(self.$arg),*) }
                }
            }
            s.vectorize(Args { $($arg,)* _borrows: std::marker::PhantomData })
        }
    };
}

entry_point!(
    /// [`super::gemm_packed`] on `s`.
    gemm_packed => gemm_packed_body -> (),
    (a: &'a PackedLhs, b: &'a [f32], ldb: usize, n: usize, out: &'a mut [f32], ldo: usize, ep: &'a Epilogue<'a>)
);
entry_point!(
    /// [`super::gemm_rows`] and [`super::gemm_gather`] on `s`.
    gemm_rows => gemm_rows_body -> (),
    (m: usize, a: ARows<'a>, b: &'a PackedRhs, out: &'a mut [f32], ldo: usize, ep: &'a Epilogue<'a>)
);
entry_point!(
    /// [`super::matvec`] on `s`.
    matvec => matvec_body -> (),
    (w: &'a [f32], m: usize, k: usize, x: &'a [f32], out: &'a mut [f32], ep: &'a Epilogue<'a>)
);
entry_point!(
    /// [`super::depthwise_nhwc`] on `s`.
    depthwise_nhwc => depthwise_nhwc_body -> (),
    (g: &'a DwGeometry, cols_lo: usize, cols_hi: usize, input: &'a [f32], weight: &'a [f32], ep: &'a Epilogue<'a>, out: &'a mut [f32])
);
entry_point!(
    /// [`super::fma_peak_gflops`]'s burst on `s`.
    fma_burst_unchecked => fma_burst_body -> (u64, f32),
    (iters: usize)
);

/// [`super::fma_peak_gflops`]'s burst on `s`.
pub(crate) fn fma_burst<S: Simd>(s: S, iters: usize) -> (u64, f32) {
    // SAFETY: the burst touches no memory.
    unsafe { fma_burst_unchecked(s, iters) }
}
