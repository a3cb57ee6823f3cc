//! Resampling that reproduces Pillow's `Image.resize(size, Image.BILINEAR)` on 8-bit images,
//! and centre cropping that reproduces torchvision's `CenterCrop` on PIL images.
//!
//! Pillow (`libImaging/Resample.c`) resizes with a separable convolution:
//!
//! * per output column `x`, `scale = in / out`, `filterscale = max(scale, 1)`, support
//!   `= 1.0 * filterscale` (the triangle filter widens when downscaling: antialiasing),
//!   centre `= (x + 0.5) * scale`, taps `xmin = (int)(centre - support + 0.5)` ..
//!   `(int)(centre + support + 0.5)` clamped to the image, weights
//!   `triangle((i - centre + 0.5) / filterscale)` normalised to sum 1;
//! * weights converted to fixed point with 22 fractional bits (rounded half away from zero);
//! * horizontal pass first, into an 8-bit intermediate image (rounded: the accumulator starts
//!   at `1 << 21`, then is clipped to 0..255 and shifted), then the vertical pass likewise;
//! * a pass is skipped when its dimension does not change.
//!
//! This module does exactly that, so its output matches Pillow's bit for bit (measured on the
//! test photos: see the tests).

use image::{ImageBuffer, Pixel, RgbImage};

use super::PreprocessError;

/// Largest image, in pixels, that the resize functions produce (also bounds their
/// intermediate buffer). Beyond it they return [`PreprocessError::InvalidArgument`].
pub const MAX_RESIZE_PIXELS: u64 = 64_000_000;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's per-output-pixel filter taps: `(first input index, count)` and fixed-point weights.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` from Pillow's Resample.c (box = whole image).
fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear (triangle) filter has support 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero, as does `as`.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = triangle(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let f = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Taps {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow-exact bilinear resize of interleaved 8-bit data with `ch` channels.
fn resample(src: &[u8], w: usize, h: usize, ch: usize, nw: usize, nh: usize) -> Vec<u8> {
    let need_h = nw != w;
    let need_v = nh != h;
    let vert = taps(h, nh);
    let mut cur: std::borrow::Cow<[u8]> = std::borrow::Cow::Borrowed(src);
    let mut cur_w = w;
    let mut vbounds = vert.bounds.clone();
    if need_h {
        // Only the rows the vertical pass will read.
        let first = vbounds[0].0;
        let last = vbounds.last().map(|&(a, n)| a + n).unwrap_or(h);
        for b in &mut vbounds {
            b.0 -= first;
        }
        let hz = taps(w, nw);
        let rows = last - first;
        let mut out = vec![0u8; nw * rows * ch];
        for y in 0..rows {
            let srow = &src[(y + first) * w * ch..(y + first + 1) * w * ch];
            let drow = &mut out[y * nw * ch..(y + 1) * nw * ch];
            for (xx, &(xmin, n)) in hz.bounds.iter().enumerate() {
                let k = &hz.weights[xx * hz.ksize..xx * hz.ksize + n];
                for c in 0..ch {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += i64::from(srow[(x + xmin) * ch + c]) * i64::from(kx);
                    }
                    drow[xx * ch + c] = clip8(ss);
                }
            }
        }
        cur = std::borrow::Cow::Owned(out);
        cur_w = nw;
    }
    if !need_v {
        return cur.into_owned();
    }
    let stride = cur_w * ch;
    let mut out = vec![0u8; stride * nh];
    for (yy, &(ymin, n)) in vbounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        let drow = &mut out[yy * stride..(yy + 1) * stride];
        for (i, d) in drow.iter_mut().enumerate() {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss += i64::from(cur[(y + ymin) * stride + i]) * i64::from(ky);
            }
            *d = clip8(ss);
        }
    }
    out
}

/// Resizes to exactly `width`×`height` with Pillow's bilinear filter (`Image.BILINEAR`,
/// antialiased when downscaling), bit-identical to Pillow for 8-bit images.
///
/// Works for any 8-bit pixel type (`RgbImage`, `GrayImage`, ...). Channels are filtered
/// independently (an alpha channel is not premultiplied, unlike Pillow's RGBA path).
/// A zero-sized input or output, or an output (or intermediate) above [`MAX_RESIZE_PIXELS`],
/// is [`PreprocessError::InvalidArgument`].
pub fn resize_exact<P: Pixel<Subpixel = u8>>(
    img: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
) -> Result<ImageBuffer<P, Vec<u8>>, PreprocessError> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || width == 0 || height == 0 {
        return Err(PreprocessError::InvalidArgument(format!(
            "cannot resize {w}x{h} to {width}x{height}: sizes must be non-zero"
        )));
    }
    let biggest = u64::from(width) * u64::from(height.max(h));
    if biggest > MAX_RESIZE_PIXELS {
        return Err(PreprocessError::InvalidArgument(format!(
            "resizing {w}x{h} to {width}x{height} needs more than {MAX_RESIZE_PIXELS} pixels"
        )));
    }
    let ch = usize::from(P::CHANNEL_COUNT);
    let data = resample(
        img.as_raw(),
        w as usize,
        h as usize,
        ch,
        width as usize,
        height as usize,
    );
    Ok(ImageBuffer::from_raw(width, height, data).expect("buffer size matches"))
}

/// Resizes so that the shorter side becomes `short`, keeping the aspect ratio like torchvision's
/// `Resize(short)`: the long side is `int(short * long / short_side)` (truncated), then
/// [`resize_exact`] (Pillow bilinear with antialiasing).
///
/// A 1×1 image becomes `short`×`short`; a 4000×1 strip would become 1024000×256 and is refused
/// ([`PreprocessError::InvalidArgument`], see [`MAX_RESIZE_PIXELS`]).
pub fn resize_short_side(img: &RgbImage, short: u32) -> Result<RgbImage, PreprocessError> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || short == 0 {
        return Err(PreprocessError::InvalidArgument(format!(
            "cannot resize {w}x{h} to short side {short}: sizes must be non-zero"
        )));
    }
    // Python: int(short * h / w) in double precision, then truncation.
    let long = |l: u32, s: u32| (f64::from(short) * f64::from(l) / f64::from(s)) as u64;
    let (nw, nh) = if w <= h {
        (u64::from(short), long(h, w))
    } else {
        (long(w, h), u64::from(short))
    };
    if nw * nh.max(u64::from(h)) > MAX_RESIZE_PIXELS {
        return Err(PreprocessError::InvalidArgument(format!(
            "resizing {w}x{h} to short side {short} gives {nw}x{nh}, more than {MAX_RESIZE_PIXELS} pixels"
        )));
    }
    resize_exact(img, nw as u32, nh as u32)
}

/// Python's `round(n / 2)` for a non-negative integer `n` (halves round to even).
fn half_round_even(n: u32) -> u32 {
    let q = n / 2;
    if n % 2 == 1 && q % 2 == 1 { q + 1 } else { q }
}

/// Cuts the centred `width`×`height` window, at `left = round((W - width) / 2)`,
/// `top = round((H - height) / 2)` with Python's `round` (halves to even), as torchvision's
/// `CenterCrop` and the reference fixtures do.
///
/// A zero size or a window larger than the image is [`PreprocessError::InvalidArgument`]
/// (no implicit padding).
pub fn center_crop<P: Pixel + 'static>(
    img: &ImageBuffer<P, Vec<P::Subpixel>>,
    width: u32,
    height: u32,
) -> Result<ImageBuffer<P, Vec<P::Subpixel>>, PreprocessError> {
    let (w, h) = img.dimensions();
    if width == 0 || height == 0 || width > w || height > h {
        return Err(PreprocessError::InvalidArgument(format!(
            "cannot centre-crop {width}x{height} out of a {w}x{h} image"
        )));
    }
    let left = half_round_even(w - width);
    let top = half_round_even(h - height);
    Ok(image::imageops::crop_imm(img, left, top, width, height).to_image())
}

/// The standard ImageNet geometry: [`resize_short_side`] to `short` then [`center_crop`] to
/// `crop`×`crop` (torchvision `Resize(256)` + `CenterCrop(224)` with PIL).
pub fn resize_center_crop(
    img: &RgbImage,
    short: u32,
    crop: u32,
) -> Result<RgbImage, PreprocessError> {
    if crop > short {
        return Err(PreprocessError::InvalidArgument(format!(
            "crop {crop} is larger than the resized short side {short}"
        )));
    }
    center_crop(&resize_short_side(img, short)?, crop, crop)
}
