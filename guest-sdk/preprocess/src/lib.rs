//! Image preprocessing that runs inside the plugin sandbox: decode, convert, resize, crop and
//! lay out tensors before handing them to the host.
//!
//! Typical ImageNet pipeline (MobileNetV2):
//!
//! ```ignore
//! use edgeplug_sdk::preprocess::*;
//! let img = decode(bytes, &DecodeLimits::default())?;
//! let crop = resize_center_crop(&to_rgb8(&img), 256, 224)?;
//! let input = to_chw_f32(&crop, IMAGENET_MEAN, IMAGENET_STD, 1.0 / 255.0);
//! ```
//!
//! * Formats: PNG (every colour type and bit depth) and JPEG (baseline, progressive, CMYK),
//!   detected from the magic bytes, never from a file name.
//! * Untrusted input: dimensions are read from the header and checked against
//!   [`DecodeLimits`] before any pixel buffer is allocated; a JPEG without an end-of-image
//!   marker is refused as truncated instead of being decoded as a partial image.
//! * EXIF orientation is honoured (JPEG APP1 `Exif` and PNG `eXIf`): the decoded image is
//!   returned upright.
//! * Alpha is dropped by [`to_rgb8`] and [`to_gray8`] (same as PIL's `convert("RGB")`);
//!   [`composite_to_rgb8`] and [`composite_to_gray8`] composite it over a background colour
//!   instead, for pictures drawn on a transparent canvas.
//! * Resizing reproduces PIL's `Image.resize(size, BILINEAR)` bit for bit on 8-bit RGB
//!   (see [`resize_exact`]).

use std::borrow::Cow;
use std::fmt;

use image::{DynamicImage, GrayImage, RgbImage};

mod decode;
mod resize;

pub use decode::decode;
pub use resize::{
    MAX_RESIZE_PIXELS, center_crop, resize_center_crop, resize_exact, resize_short_side,
};

/// The `image` crate this module is built on (0.25, PNG + JPEG only), re-exported so that plugin
/// crates use the same version without depending on it themselves.
pub use image;

/// ImageNet channel means (RGB) for inputs scaled to 0..1 (torchvision convention).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB) for inputs scaled to 0..1 (torchvision convention).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Bounds on what [`decode`] accepts, checked against the image header before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
    /// Largest decoder allocation in bytes (the decoded buffer counts; a 16-bit RGBA image
    /// needs 8 bytes per pixel).
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    /// 8192×8192 at most per side, 40 Mpixel in total, 256 MiB of decoder allocations:
    /// enough for any phone photo (a 40 Mpixel RGB8 image is 120 MB decoded).
    fn default() -> Self {
        DecodeLimits {
            max_width: 8192,
            max_height: 8192,
            max_pixels: 40_000_000,
            max_alloc_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why preprocessing failed. Every variant is the client's fault: `?` in a plugin's `infer`
/// turns it into an `edgeplug_sdk::Error` with code invalid-argument (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreprocessError {
    /// The input has zero bytes.
    Empty,
    /// The input is not PNG or JPEG; the string names what it looks like.
    UnsupportedFormat(String),
    /// The header announces an image larger than the [`DecodeLimits`] allow.
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit that was exceeded, in words.
        limit: String,
    },
    /// The data ends before the image does.
    Truncated(String),
    /// The data is corrupt or inconsistent.
    Malformed(String),
    /// A caller-supplied argument is out of range (zero size, crop larger than the image, ...).
    InvalidArgument(String),
}

impl fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreprocessError::Empty => write!(f, "empty input: expected a PNG or JPEG image"),
            PreprocessError::UnsupportedFormat(what) => {
                write!(
                    f,
                    "unsupported image format ({what}); supported formats: PNG, JPEG"
                )
            }
            PreprocessError::TooLarge {
                width,
                height,
                limit,
            } => {
                write!(f, "image too large: {width}x{height} exceeds {limit}")
            }
            PreprocessError::Truncated(m) => write!(f, "truncated image: {m}"),
            PreprocessError::Malformed(m) => write!(f, "malformed image: {m}"),
            PreprocessError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl std::error::Error for PreprocessError {}

/// Converts to 8-bit RGB. Alpha is dropped (not composited), gray is replicated, 16-bit
/// samples are scaled to 8 bits (`round(v / 257)`).
pub fn to_rgb8(img: &DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb.clone(),
        other => other.to_rgb8(),
    }
}

/// Converts to 8-bit grayscale. Gray images keep their values (16-bit scaled by 1/257, alpha
/// dropped); colour images use PIL's `convert("L")` weights (ITU-R 601-2 luma,
/// `L = (19595 R + 38470 G + 7471 B + 32768) >> 16`), not the image crate's Rec. 709 ones.
pub fn to_gray8(img: &DynamicImage) -> GrayImage {
    match img {
        DynamicImage::ImageLuma8(g) => g.clone(),
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLumaA16(_) => img.to_luma8(),
        other => {
            let rgb = to_rgb8(other);
            let (w, h) = rgb.dimensions();
            let data = rgb
                .as_raw()
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2]))
                .collect();
            GrayImage::from_raw(w, h, data).expect("buffer size matches")
        }
    }
}

/// PIL's `convert("L")` luma (ITU-R 601-2, 16-bit fixed point, rounded).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    let l = 19595 * u32::from(r) + 38470 * u32::from(g) + 7471 * u32::from(b);
    ((l + 32768) >> 16) as u8
}

/// `colour` at opacity `alpha` over an opaque `background`, rounded to nearest:
/// `(colour * alpha + background * (255 - alpha)) / 255`.
fn blend(colour: u8, alpha: u8, background: u8) -> u8 {
    let (c, a, b) = (u32::from(colour), u32::from(alpha), u32::from(background));
    ((c * a + b * (255 - a) + 127) / 255) as u8
}

/// Converts to 8-bit RGB like [`to_rgb8`], but composites any alpha over the opaque
/// `background` colour instead of dropping it, so that a transparent area takes the background
/// colour rather than whatever colour its invisible pixels happen to hold.
///
/// Each channel becomes `round((c * a + background * (255 - a)) / 255)` (straight, not
/// premultiplied, alpha). 16-bit and float samples are reduced to 8 bits first; gray+alpha is
/// replicated to RGB. An image without alpha gives exactly [`to_rgb8`].
///
/// ```ignore
/// // A logo on a transparent canvas, flattened onto white as a viewer shows it.
/// let rgb = composite_to_rgb8(&img, [255, 255, 255]);
/// ```
pub fn composite_to_rgb8(img: &DynamicImage, background: [u8; 3]) -> RgbImage {
    if !img.color().has_alpha() {
        return to_rgb8(img);
    }
    let rgba = match img {
        DynamicImage::ImageRgba8(rgba) => Cow::Borrowed(rgba),
        other => Cow::Owned(other.to_rgba8()),
    };
    let (w, h) = rgba.dimensions();
    let data = rgba
        .as_raw()
        .chunks_exact(4)
        .flat_map(|p| [0, 1, 2].map(|c| blend(p[c], p[3], background[c])))
        .collect();
    RgbImage::from_raw(w, h, data).expect("buffer size matches")
}

/// Converts to 8-bit grayscale like [`to_gray8`], but composites any alpha over the opaque
/// gray level `background` instead of dropping it (a drawing on a transparent canvas becomes
/// ink on paper: `background = 255` for white paper, `0` for black).
///
/// The colour is reduced to gray first ([`to_gray8`]'s PIL luma weights), then blended as in
/// [`composite_to_rgb8`]; for colour pixels that are partly transparent this may differ by one
/// level from compositing in RGB first, for gray+alpha it is identical. An image without alpha
/// gives exactly [`to_gray8`].
pub fn composite_to_gray8(img: &DynamicImage, background: u8) -> GrayImage {
    if !img.color().has_alpha() {
        return to_gray8(img);
    }
    let (w, h) = (img.width(), img.height());
    let data = if img.color().has_color() {
        let rgba = match img {
            DynamicImage::ImageRgba8(rgba) => Cow::Borrowed(rgba),
            other => Cow::Owned(other.to_rgba8()),
        };
        rgba.as_raw()
            .chunks_exact(4)
            .map(|p| blend(luma(p[0], p[1], p[2]), p[3], background))
            .collect()
    } else {
        let gray_alpha = match img {
            DynamicImage::ImageLumaA8(gray_alpha) => Cow::Borrowed(gray_alpha),
            other => Cow::Owned(other.to_luma_alpha8()),
        };
        gray_alpha
            .as_raw()
            .chunks_exact(2)
            .map(|p| blend(p[0], p[1], background))
            .collect()
    };
    GrayImage::from_raw(w, h, data).expect("buffer size matches")
}

/// Inverts a grayscale image in place (`v -> 255 - v`).
pub fn invert(img: &mut GrayImage) {
    for p in img.iter_mut() {
        *p = 255 - *p;
    }
}

/// Lays out an RGB image as a CHW float tensor: `(pixel * scale - mean[c]) / std[c]`, computed
/// in `f32` in that order (bit-identical to NumPy's float32 `(x * scale - mean) / std`).
///
/// * MobileNetV2 (torchvision): `scale = 1.0 / 255.0`, [`IMAGENET_MEAN`], [`IMAGENET_STD`].
/// * EfficientNet-Lite0: `scale = 1.0`, `mean = [127.0; 3]`, `std = [128.0; 3]`.
///
/// The result has `3 * height * width` elements; prepend a batch dimension of 1 for NCHW.
pub fn to_chw_f32(img: &RgbImage, mean: [f32; 3], std: [f32; 3], scale: f32) -> Vec<f32> {
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(p[c]) * scale - mean[c]) / std[c];
        }
    }
    out
}

/// Transposes interleaved HWC data (`height * width * channels` elements) into planar CHW.
///
/// Errors with [`PreprocessError::InvalidArgument`] when the length does not match the shape.
pub fn hwc_to_chw<T: Copy>(
    hwc: &[T],
    height: usize,
    width: usize,
    channels: usize,
) -> Result<Vec<T>, PreprocessError> {
    let plane = height.checked_mul(width);
    let n = plane.and_then(|p| p.checked_mul(channels));
    if n != Some(hwc.len()) {
        return Err(PreprocessError::InvalidArgument(format!(
            "hwc_to_chw: {} elements do not make a {height}x{width}x{channels} array",
            hwc.len()
        )));
    }
    let plane = height * width;
    let mut out = Vec::with_capacity(hwc.len());
    for c in 0..channels {
        out.extend((0..plane).map(|i| hwc[i * channels + c]));
    }
    Ok(out)
}
