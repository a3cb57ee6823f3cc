//! The int8 ops between convolutions in a quantized CNN: the residual `Add`
//! of two `u8` tensors with their own scales and zero points, and the global
//! average pool before the classifier. Both read each byte once and are
//! bound by memory, so they are plain loops (LLVM vectorizes the `Add`);
//! they follow onnxruntime's QLinearAdd and QLinearGlobalAveragePool
//! arithmetic: `f32` values, rounded half to even, offset and clamped.

/// Quantization of an int8 `Add`: `out = clamp(round(a_scale·(a - a_zero) +
/// b_scale·(b - b_zero)) + zero, lo, hi)`, with `a_scale = s_a / s_out` and
/// `b_scale = s_b / s_out`. A fused ReLU is `lo = zero`.
#[derive(Clone, Copy, Debug)]
pub struct AddQuant {
    /// `s_a / s_out`.
    pub a_scale: f32,
    /// Zero point of `a`.
    pub a_zero: u8,
    /// `s_b / s_out`.
    pub b_scale: f32,
    /// Zero point of `b`.
    pub b_zero: u8,
    /// Output zero point.
    pub zero: u8,
    /// Lower clamp (0 for none).
    pub lo: u8,
    /// Upper clamp (255 for none).
    pub hi: u8,
}

impl AddQuant {
    /// One output byte.
    #[inline(always)]
    pub fn add(&self, a: u8, b: u8) -> u8 {
        let x = (i32::from(a) - i32::from(self.a_zero)) as f32 * self.a_scale;
        let y = (i32::from(b) - i32::from(self.b_zero)) as f32 * self.b_scale;
        let z = f32::from(self.zero);
        // Clamped before rounding: the bounds are integers, so this equals
        // clamping after, and the conversion cannot overflow.
        let v = (x + y)
            .max(f32::from(self.lo) - z)
            .min(f32::from(self.hi) - z);
        (v.round_ties_even() as i32 + i32::from(self.zero)) as u8
    }
}

/// `out[i] = q.add(a[i], b[i])` (same shapes, same layout).
///
/// # Panics
///
/// If the slices differ in length or `lo > hi`.
pub fn add_u8(a: &[u8], b: &[u8], q: &AddQuant, out: &mut [u8]) {
    assert!(
        a.len() == b.len() && a.len() == out.len(),
        "add_u8: lengths differ"
    );
    assert!(q.lo <= q.hi, "add_u8: clamp lo > hi");
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = q.add(x, y);
    }
}

/// Global average pool of a channels-last `[pixels, c]` image into `[c]`:
/// `out[ch] = clamp(round(scale · Σ_p (x[p][ch] - a_zero)) + zero, 0, 255)`
/// with `scale = s_in / (s_out · pixels)`.
///
/// # Panics
///
/// If `input.len() != pixels * c` or `out.len() != c`, or a sum could
/// overflow `i32` (more than 2^23 pixels).
pub fn global_avg_pool_u8(
    input: &[u8],
    pixels: usize,
    c: usize,
    a_zero: u8,
    scale: f32,
    zero: u8,
    out: &mut [u8],
) {
    assert!(
        input.len() == pixels * c && out.len() == c,
        "global_avg_pool_u8: lengths"
    );
    assert!(pixels < 1 << 23, "global_avg_pool_u8: too many pixels");
    let mut sums = vec![0i32; c];
    for px in input.chunks_exact(c.max(1)).take(pixels) {
        for (s, &x) in sums.iter_mut().zip(px) {
            *s += i32::from(x);
        }
    }
    let offset = i32::from(a_zero) * pixels as i32;
    let z = f32::from(zero);
    for (o, &s) in out.iter_mut().zip(&sums) {
        let v = ((s - offset) as f32 * scale).max(-z).min(255.0 - z);
        *o = (v.round_ties_even() as i32 + i32::from(zero)) as u8;
    }
}
