//! Input preparation for the digits model (`digits_cnn.onnx`, trained on scikit-learn's
//! `load_digits`, i.e. the UCI "optdigits" 8×8 images).
//!
//! The model takes float32 `[1, 1, 16, 16]`: the 8×8 digit with values 0..16 (16 = full ink),
//! divided by 16, then upsampled 2× by nearest neighbour (each value becomes a 2×2 block).
//! Every entry point here produces that tensor, row-major, as `[f32; INPUT_LEN]`:
//!
//! * [`from_raw_8x8`]: 64 values 0..=16 (what the data set stores);
//! * [`from_json`]: a JSON array of 64 numbers or of 8 rows of 8 numbers;
//! * [`from_npy`]: a `.npy` array of shape (8, 8), (64,) or (1, 8, 8);
//! * [`from_image`]: a PNG/JPEG of a digit drawn in any polarity, at any size.
//!
//! ## How `from_image` maps a picture onto the data set's 8×8 grid
//!
//! The optdigits images are 32×32 bitmaps of size-normalised digits, counted in 4×4 blocks:
//! every one of the 540 test digits touches both the top and the bottom row of its 8×8 grid,
//! and is about 6 columns wide. `from_image` reproduces that framing:
//!
//! 1. decode ([`DIGIT_DECODE_LIMITS`]), composite any alpha over white (so a drawing on a
//!    transparent canvas works), convert to gray with PIL's luma weights;
//! 2. **polarity**: the model wants bright ink on black. If the median of the border pixels is
//!    above 127 (light paper), the image is inverted;
//! 3. **background**: that border median (after inversion) is taken as the paper level and
//!    subtracted, rescaling the rest to 0..255 (a no-op on a clean black background);
//! 4. **framing**: the ink's bounding box (pixels above 1/16 of the brightest one) gives a
//!    square window whose side is the box's longer side, centred on the box and shifted to stay
//!    inside the image when it fits (areas outside the image count as background). So a digit
//!    drawn small in a big canvas (MNIST-style margins, or the crude 28×28 test "1"s) is
//!    enlarged to fill the grid's height like the data set's digits, with its aspect ratio kept;
//!    and a picture whose ink already spans the full height or width of a square image (any
//!    rendering of a data-set digit) keeps its exact framing;
//! 5. **area averaging**: the window is reduced to 8×8 with an exact fractional box filter
//!    (integer arithmetic on the pixel/cell overlaps), so an 8×8 digit upscaled by nearest
//!    neighbour with any integer factor maps back to its values (up to the 8-bit quantisation
//!    of `v * 255 / 16`), and other sizes average correctly;
//! 6. values are scaled to 0..16 (not rounded to integers: the fraction carries information),
//!    then divided by 16 and upsampled 2×, like [`from_raw_8x8`].
//!
//! A picture with no ink at all (uniform) is [`DigitError::Blank`].

use std::fmt;

use edgeplug_sdk::npy::{self, NpyData, NpyError};
use edgeplug_sdk::preprocess::image::GrayImage;
use edgeplug_sdk::preprocess::{self, DecodeLimits, PreprocessError};
use edgeplug_sdk::{Error, Request};

/// Number of input values of the model: 1×1×16×16.
pub const INPUT_LEN: usize = 256;

/// Decode limits for digit pictures: 4096×4096 at most, 16 Mpixel, 96 MiB of decoder memory.
pub const DIGIT_DECODE_LIMITS: DecodeLimits = DecodeLimits {
    max_width: 4096,
    max_height: 4096,
    max_pixels: 16 * 1024 * 1024,
    max_alloc_bytes: 96 * 1024 * 1024,
};

/// Largest JSON body [`from_json`] reads (64 numbers need far less).
pub const MAX_JSON_BYTES: usize = 16 * 1024;

/// Why a digit input was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum DigitError {
    /// The picture could not be decoded (format, size, truncation, ...).
    Image(PreprocessError),
    /// The `.npy` body could not be read.
    Npy(NpyError),
    /// The JSON body is too long to be a digit. (Malformed JSON is reported by
    /// [`Request::json`].)
    Json(String),
    /// Right kind of data, wrong number of values or wrong shape.
    Shape(String),
    /// A value is NaN, infinite, or outside 0..=16. `index` is the row-major position (0..64).
    OutOfRange {
        /// Row-major position in the 8×8 grid.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The picture is uniform: there is no digit to read.
    Blank,
}

impl fmt::Display for DigitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigitError::Image(e) => write!(f, "digit image: {e}"),
            DigitError::Npy(e) => write!(f, "digit array: {e}"),
            DigitError::Json(m) => write!(
                f,
                "digit JSON: {m} (expected an array of 64 numbers or 8 arrays of 8 numbers, 0..16)"
            ),
            DigitError::Shape(m) => write!(f, "digit input: {m}"),
            DigitError::OutOfRange { index, value } => write!(
                f,
                "digit value {value} at row {}, column {} is outside 0..=16",
                index / 8,
                index % 8
            ),
            DigitError::Blank => write!(f, "digit image is blank: no ink found"),
        }
    }
}

impl std::error::Error for DigitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DigitError::Image(e) => Some(e),
            DigitError::Npy(e) => Some(e),
            _ => None,
        }
    }
}

impl From<PreprocessError> for DigitError {
    fn from(e: PreprocessError) -> Self {
        DigitError::Image(e)
    }
}

impl From<NpyError> for DigitError {
    fn from(e: NpyError) -> Self {
        DigitError::Npy(e)
    }
}

/// Every [`DigitError`] is about what the client sent: invalid-argument (HTTP 400).
impl From<DigitError> for Error {
    fn from(e: DigitError) -> Error {
        Error::invalid_argument(e.to_string())
    }
}

/// Builds the model input from 64 row-major values in 0..=16: `x = v / 16` (in `f32`, as the
/// training script's NumPy code), each value repeated into a 2×2 block of the 16×16 output.
///
/// Bit-identical to the data set's `digits_test.npy`. NaN, infinities, values outside 0..=16
/// and lengths other than 64 are errors.
pub fn from_raw_8x8(values: &[f32]) -> Result<[f32; INPUT_LEN], DigitError> {
    if values.len() != 64 {
        return Err(DigitError::Shape(format!(
            "expected 64 values (8x8), got {}",
            values.len()
        )));
    }
    let mut out = [0f32; INPUT_LEN];
    for (i, &v) in values.iter().enumerate() {
        if !(0.0..=16.0).contains(&v) {
            return Err(DigitError::OutOfRange {
                index: i,
                value: f64::from(v),
            });
        }
        let x = v / 16.0;
        let (r, c) = (i / 8, i % 8);
        for (dr, dc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            out[(2 * r + dr) * 16 + 2 * c + dc] = x;
        }
    }
    Ok(out)
}

fn check_f64(values: &[f64]) -> Result<Vec<f32>, DigitError> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if (0.0..=16.0).contains(&v) {
                Ok(v as f32)
            } else {
                Err(DigitError::OutOfRange { index: i, value: v })
            }
        })
        .collect()
}

/// Reads a JSON body: either `[v0, ..., v63]` (row-major) or `[[8 numbers], ... 8 rows]`,
/// values 0..=16, then [`from_raw_8x8`].
///
/// Strict JSON ([`Request::json`]: no trailing commas, comments, `NaN` or trailing text);
/// bodies over [`MAX_JSON_BYTES`] are refused.
pub fn from_json(request: &Request) -> Result<[f32; INPUT_LEN], Error> {
    if request.body.len() > MAX_JSON_BYTES {
        return Err(DigitError::Json(format!(
            "body of {} bytes exceeds {MAX_JSON_BYTES}",
            request.body.len()
        ))
        .into());
    }
    let wrong_length = |n: usize| -> Error {
        DigitError::Shape(format!(
            "array of {n} elements, expected 64 numbers or 8 rows"
        ))
        .into()
    };
    let values = match request.json()? {
        JsonDigit::Flat(values) if values.len() == 64 => values,
        JsonDigit::Rows(rows) if rows.len() == 8 => {
            if let Some(r) = rows.iter().position(|row| row.len() != 8) {
                return Err(DigitError::Shape(format!(
                    "row {r} has {} values, expected 8",
                    rows[r].len()
                ))
                .into());
            }
            rows.concat()
        }
        JsonDigit::Flat(values) => return Err(wrong_length(values.len())),
        JsonDigit::Rows(rows) => return Err(wrong_length(rows.len())),
    };
    Ok(from_raw_8x8(&check_f64(&values)?)?)
}

/// A JSON digit in either form, any length: [`from_json`] checks the lengths itself, so that
/// its message says which one is wrong.
#[derive(serde::Deserialize)]
#[serde(
    untagged,
    expecting = "an array of 64 numbers or 8 arrays of 8 numbers, 0..16"
)]
enum JsonDigit {
    Flat(Vec<f64>),
    Rows(Vec<Vec<f64>>),
}

/// Reads a `.npy` body holding the 8×8 digit: shape (8, 8), (64,) or (1, 8, 8), dtype uint8,
/// float32 or int64, values 0..=16; then [`from_raw_8x8`].
pub fn from_npy(body: &[u8]) -> Result<[f32; INPUT_LEN], DigitError> {
    let a = npy::parse(body)?;
    if !matches!(a.shape.as_slice(), [8, 8] | [64] | [1, 8, 8]) {
        return Err(DigitError::Shape(format!(
            "array of shape {:?}, expected (8, 8), (64,) or (1, 8, 8)",
            a.shape
        )));
    }
    let values: Vec<f64> = match a.data {
        NpyData::U8(v) => v.into_iter().map(f64::from).collect(),
        NpyData::F32(v) => v.into_iter().map(f64::from).collect(),
        NpyData::I64(v) => v.into_iter().map(|x| x as f64).collect(),
    };
    from_raw_8x8(&check_f64(&values)?)
}

/// Reads a picture of a digit (PNG or JPEG, any size and polarity) and builds the model input.
/// See the module documentation for the steps.
pub fn from_image(bytes: &[u8]) -> Result<[f32; INPUT_LEN], DigitError> {
    from_raw_8x8(&image_to_8x8(bytes)?)
}

/// The first half of [`from_image`]: the picture reduced to the data set's 8×8 grid, values
/// 0..=16 (fractional), row-major.
pub fn image_to_8x8(bytes: &[u8]) -> Result<[f32; 64], DigitError> {
    let img = preprocess::decode(bytes, &DIGIT_DECODE_LIMITS)?;
    // Over white: a drawing on a transparent canvas is ink on paper.
    gray_to_8x8(&preprocess::composite_to_gray8(&img, 255))
}

fn median(mut v: Vec<u8>) -> u8 {
    let mid = v.len() / 2;
    *v.select_nth_unstable(mid).1
}

/// Polarity, background, framing and area averaging (steps 2-6 of the module docs).
fn gray_to_8x8(img: &GrayImage) -> Result<[f32; 64], DigitError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px = img.as_raw();
    // The border's pixels, edge by edge (the median does not depend on their order).
    let mut border: Vec<u8> = Vec::with_capacity(2 * (w + h));
    border.extend_from_slice(&px[..w]);
    if h > 1 {
        border.extend_from_slice(&px[(h - 1) * w..]);
    }
    for y in 1..h.saturating_sub(1) {
        border.push(px[y * w]);
        if w > 1 {
            border.push(px[y * w + w - 1]);
        }
    }
    let bmed = median(border);
    let invert = bmed > 127;
    let bg = u32::from(if invert { 255 - bmed } else { bmed });
    // Ink level of every pixel, background removed: 0..=255-bg. Computed once: the passes
    // below read it about three times per pixel, and this runs on every request.
    let inks: Vec<u32> = px
        .iter()
        .map(|&p| {
            let p = u32::from(if invert { 255 - p } else { p });
            p.saturating_sub(bg)
        })
        .collect();
    let ink = |x: usize, y: usize| inks[y * w + x];

    // Bounding box of the ink (above 1/16 of the brightest pixel).
    let max = inks.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return Err(DigitError::Blank);
    }
    let (mut x0, mut x1, mut y0, mut y1) = (w, 0, h, 0);
    for (y, row) in inks.chunks_exact(w).enumerate() {
        let mut inked = row.iter().enumerate().filter(|&(_, &v)| v * 16 >= max);
        let Some((first, _)) = inked.next() else {
            continue;
        };
        let last = inked.next_back().map_or(first, |(x, _)| x);
        x0 = x0.min(first);
        x1 = x1.max(last + 1);
        y0 = y0.min(y);
        y1 = y1.max(y + 1);
    }
    // Square window: side = longer side of the box, centred on it, kept inside the image
    // along an axis where it fits.
    let side = (x1 - x0).max(y1 - y0) as i64;
    let place = |lo: usize, hi: usize, len: usize| -> i64 {
        let start = (lo as i64 + hi as i64 - side).div_euclid(2);
        if side <= len as i64 {
            start.clamp(0, len as i64 - side)
        } else {
            start
        }
    };
    let (wx, wy) = (place(x0, x1, w), place(y0, y1, h));

    // Exact area averaging: in units of 1/8 source pixel, pixel i spans [8i, 8i+8) and cell j
    // spans [8*start + j*side, 8*start + (j+1)*side).
    let overlaps = |start: i64, len: usize| -> Vec<Vec<(usize, u64)>> {
        (0..8i64)
            .map(|j| {
                let (c0, c1) = (8 * start + j * side, 8 * start + (j + 1) * side);
                let first = c0.div_euclid(8).max(0);
                let last = ((c1 + 7).div_euclid(8)).min(len as i64);
                (first..last)
                    .filter_map(|i| {
                        let o = (8 * i + 8).min(c1) - (8 * i).max(c0);
                        (o > 0).then_some((i as usize, o as u64))
                    })
                    .collect()
            })
            .collect()
    };
    let (ox, oy) = (overlaps(wx, w), overlaps(wy, h));
    let denom = (side * side) as f64 * (255 - bg) as f64;
    let mut out = [0f32; 64];
    for (r, rows) in oy.iter().enumerate() {
        for (c, cols) in ox.iter().enumerate() {
            let mut sum = 0u64;
            for &(y, wy) in rows {
                for &(x, wx) in cols {
                    sum += u64::from(ink(x, y)) * wx * wy;
                }
            }
            out[r * 8 + c] = ((sum as f64 * 16.0 / denom) as f32).clamp(0.0, 16.0);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplug_sdk::ErrorCode;
    use edgeplug_sdk::preprocess::image::{self, ImageEncoder, Luma, Rgba, RgbaImage};
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        loop {
            let cand = dir.join("tests/fixtures");
            if cand.join("images").is_dir() {
                return cand;
            }
            assert!(
                dir.pop(),
                "no tests/fixtures above {}",
                env!("CARGO_MANIFEST_DIR")
            );
        }
    }

    fn read(rel: &str) -> Vec<u8> {
        std::fs::read(fixtures().join(rel)).unwrap()
    }

    fn raw_digits() -> Vec<[f32; 64]> {
        let a = npy::parse(&read("digits/digits_test_raw.npy")).unwrap();
        assert_eq!(a.shape, vec![540, 8, 8]);
        let NpyData::U8(d) = a.data else {
            panic!("expected uint8")
        };
        d.chunks_exact(64)
            .map(|c| std::array::from_fn(|i| f32::from(c[i])))
            .collect()
    }

    fn png(img: &GrayImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::L8,
            )
            .unwrap();
        out
    }

    fn max_abs(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn raw_matches_the_reference_tensor_bit_for_bit() {
        let t = npy::parse(&read("digits/digits_test.npy")).unwrap();
        assert_eq!(t.shape, vec![540, 1, 16, 16]);
        let NpyData::F32(t) = t.data else {
            panic!("expected float32")
        };
        for (k, raw) in raw_digits().iter().enumerate() {
            let x = from_raw_8x8(raw).unwrap();
            let want = &t[k * INPUT_LEN..(k + 1) * INPUT_LEN];
            assert!(
                x.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "digit {k}"
            );
        }
    }

    #[test]
    fn raw_validation() {
        assert!(matches!(
            from_raw_8x8(&[0.0; 63]),
            Err(DigitError::Shape(_))
        ));
        let mut v = [1.0f32; 64];
        v[9] = f32::NAN;
        assert!(matches!(
            from_raw_8x8(&v),
            Err(DigitError::OutOfRange { index: 9, .. })
        ));
        v[9] = 16.5;
        let e = from_raw_8x8(&v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "digit value 16.5 at row 1, column 1 is outside 0..=16"
        );
        v[9] = -0.0;
        assert!(from_raw_8x8(&v).is_ok());
        v[0] = f32::INFINITY;
        assert!(from_raw_8x8(&v).is_err());
    }

    /// Renders every test digit at several sizes and both polarities, reads it back with
    /// `from_image`, and compares with `from_raw_8x8`.
    #[test]
    fn image_roundtrip_of_the_test_set() {
        let digits = raw_digits();
        // (size, nearest?, bound on the max abs diff in model units)
        let cases: [(u32, bool); 5] = [(8, true), (32, true), (56, true), (100, true), (50, false)];
        for (size, nearest) in cases {
            for dark_ink in [false, true] {
                let (mut sum, mut max, mut n) = (0f64, 0f32, 0usize);
                for raw in &digits {
                    let small = GrayImage::from_fn(8, 8, |x, y| {
                        let v = (raw[(y * 8 + x) as usize] * 255.0 / 16.0).round() as u8;
                        Luma([if dark_ink { 255 - v } else { v }])
                    });
                    let big = if nearest {
                        image::imageops::resize(
                            &small,
                            size,
                            size,
                            image::imageops::FilterType::Nearest,
                        )
                    } else {
                        preprocess::resize_exact(&small, size, size).unwrap()
                    };
                    let got = from_image(&png(&big)).unwrap();
                    let want = from_raw_8x8(raw).unwrap();
                    let m = max_abs(&got, &want);
                    max = max.max(m);
                    sum += got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| f64::from((a - b).abs()))
                        .sum::<f64>();
                    n += INPUT_LEN;
                }
                let mean = sum / n as f64;
                eprintln!(
                    "{size}x{size} {} {}: max abs diff {max:.5}, mean {mean:.5}",
                    if nearest { "nearest" } else { "bilinear" },
                    if dark_ink { "dark ink" } else { "light ink" }
                );
                match (size % 8 == 0 && nearest, size) {
                    (true, _) => assert!(max <= 0.05 / 16.0, "{size}: max {max}"),
                    // Measured (both polarities): 8/32/56 nearest max 0.00196 (= 0.5 * 16/255 / 16,
                    // the 8-bit quantisation), mean 0.00041; 100x100 nearest (12.5x: blocks of 12
                    // and 13 pixels) max 0.0757, mean 0.0083; 50x50 Pillow-bilinear (blurs each
                    // edge over about one source pixel) max 0.399, mean 0.0712.
                    (false, 100) => {
                        assert!(max <= 0.1 && mean <= 0.01, "{size}: max {max} mean {mean}")
                    }
                    _ => assert!(max <= 0.45 && mean <= 0.08, "{size}: max {max} mean {mean}"),
                }
            }
        }
    }

    fn show(v: &[f32; 64]) -> String {
        v.chunks(8)
            .map(|r| r.iter().map(|x| format!("{:3.0}", x)).collect::<String>() + "\n")
            .collect()
    }

    #[test]
    fn crude_ones_look_like_data_set_ones() {
        let files = [
            "digit1-gray8.png",
            "digit1-gray16.png",
            "digit1-gray-alpha.png",
            "digit1-palette.png",
        ];
        let first = image_to_8x8(&read(&format!("images/adversarial/{}", files[0]))).unwrap();
        eprintln!("crude 1 as 8x8:\n{}", show(&first));
        for f in &files[1..] {
            assert_eq!(
                image_to_8x8(&read(&format!("images/adversarial/{f}"))).unwrap(),
                first,
                "{f}"
            );
        }
        // The 20x4 stroke fills the grid's height, centred, about 1.6 columns wide.
        for r in 0..8 {
            let row = &first[r * 8..r * 8 + 8];
            assert!(
                row[0..3].iter().chain(&row[5..8]).all(|&v| v == 0.0),
                "row {r}: {row:?}"
            );
            assert!(
                (row[3] - 12.8).abs() < 0.01 && (row[4] - 12.8).abs() < 0.01,
                "row {r}: {row:?}"
            );
        }
        // Same digit as dark ink on paper, and as black strokes on a transparent canvas.
        let light = image::load_from_memory(&read("images/adversarial/digit1-gray8.png"))
            .unwrap()
            .to_luma8();
        let mut paper = light.clone();
        preprocess::invert(&mut paper);
        assert_eq!(image_to_8x8(&png(&paper)).unwrap(), first);
        let canvas = RgbaImage::from_fn(28, 28, |x, y| Rgba([0, 0, 0, light.get_pixel(x, y).0[0]]));
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(canvas.as_raw(), 28, 28, image::ExtendedColorType::Rgba8)
            .unwrap();
        assert_eq!(image_to_8x8(&bytes).unwrap(), first);
        // Grey ink (40) on grey paper (200): the paper level becomes 0 and the ink keeps its
        // contrast relative to it, (215 - 55) / (255 - 55) = 0.8 of full ink (no stretching).
        let grey = GrayImage::from_fn(28, 28, |x, y| {
            Luma([if light.get_pixel(x, y).0[0] > 0 {
                40
            } else {
                200
            }])
        });
        let g = image_to_8x8(&png(&grey)).unwrap();
        let scaled: Vec<f32> = first.iter().map(|v| v * 0.8).collect();
        assert!(max_abs(&g, &scaled) < 1e-4, "{}", show(&g));
    }

    #[test]
    fn image_errors() {
        let blank = GrayImage::from_pixel(20, 20, Luma([255]));
        assert_eq!(from_image(&png(&blank)), Err(DigitError::Blank));
        let e = from_image(&read("images/adversarial/bomb-30000x30000.png")).unwrap_err();
        assert!(
            matches!(e, DigitError::Image(PreprocessError::TooLarge { .. })),
            "{e}"
        );
        assert!(from_image(b"").unwrap_err().to_string().contains("empty"));
        // A 1x1 image is all border, hence all paper: blank. A dotted 4000x1 strip: a defined
        // answer (the dots fill one row of the grid), no panic.
        let dot = GrayImage::from_pixel(1, 1, Luma([255]));
        assert_eq!(from_image(&png(&dot)), Err(DigitError::Blank));
        assert_eq!(
            from_image(&read("images/adversarial/tiny-1x1.png")),
            Err(DigitError::Blank)
        );
        let strip = GrayImage::from_fn(4000, 1, |x, _| Luma([if x % 7 == 0 { 255 } else { 0 }]));
        assert!(from_image(&png(&strip)).is_ok());
    }

    #[test]
    fn json_inputs() {
        let raw = &raw_digits()[0];
        let want = from_raw_8x8(raw).unwrap();
        let flat = format!(
            "[{}]",
            raw.iter()
                .map(|v| format!("{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert_eq!(json(flat.as_bytes()).unwrap(), want);
        let nested = format!(
            " [\n{}\n] ",
            raw.chunks(8)
                .map(|r| format!(
                    "[{}]",
                    r.iter()
                        .map(|v| format!("{v}.0"))
                        .collect::<Vec<_>>()
                        .join(",")
                ))
                .collect::<Vec<_>>()
                .join(",\n")
        );
        assert_eq!(json(nested.as_bytes()).unwrap(), want);
        let ok = |s: String| json(s.as_bytes());
        assert!(ok(format!("[{}1.6e1]", "0,".repeat(63))).is_ok());
        assert!(ok(format!("[{}-0]", "0,".repeat(63))).is_ok());
        let bad = [
            String::new(),
            "[]".into(),
            "5".into(),
            format!("[{}0]", "0,".repeat(62)),
            format!("[{}0]", "0,".repeat(64)),
            format!("[{}0,]", "0,".repeat(63)),
            format!("[{}17]", "0,".repeat(63)),
            format!("[{}-1]", "0,".repeat(63)),
            format!("[{}NaN]", "0,".repeat(63)),
            format!("[{}01]", "0,".repeat(63)),
            format!("[{}1.]", "0,".repeat(63)),
            format!("[{}.5]", "0,".repeat(63)),
            format!("[{}1e]", "0,".repeat(63)),
            format!("[{}+1]", "0,".repeat(63)),
            format!("[{}\"1\"]", "0,".repeat(63)),
            format!("[{}0] x", "0,".repeat(63)),
            format!("[{}0", "0,".repeat(63)),
            format!("[{}[0]]", "0,".repeat(63)),
            "[[[0]]]".into(),
            format!("[{}[0,0,0,0,0,0,0]]", "[0,0,0,0,0,0,0,0],".repeat(7)),
            format!("[{}1]", "[0,0,0,0,0,0,0,0],".repeat(7)),
            format!("[{}0 0]", "0,".repeat(62)),
            format!("[{}1e999]", "0,".repeat(63)),
            "[".repeat(100_000),
        ];
        for b in &bad {
            match json(b.as_bytes()) {
                Err(e) => assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message),
                Ok(_) => panic!("accepted {:?}", &b[..b.len().min(80)]),
            }
        }
        // The sample request body of `make run` is test digit 7.
        let seven = from_raw_8x8(&raw_digits()[7]).unwrap();
        assert_eq!(json(&read("digits/seven.json")).unwrap(), seven);
        let message = |b: String| json(b.as_bytes()).unwrap_err().message;
        let out_of_range = DigitError::OutOfRange {
            index: 63,
            value: 17.0,
        };
        assert_eq!(
            message(format!("[{}17]", "0,".repeat(63))),
            out_of_range.to_string()
        );
        // The messages say what a digit looks like, or which length is wrong.
        for (body, says) in [
            (
                "[1, 2, 3]".into(),
                "array of 3 elements, expected 64 numbers or 8 rows",
            ),
            (format!("[{}0]", "0,".repeat(64)), "array of 65 elements"),
            (
                format!("[{}[0,0,0,0,0,0,0]]", "[0,0,0,0,0,0,0,0],".repeat(7)),
                "row 7 has 7 values, expected 8",
            ),
            ("not json".into(), "body is not the expected JSON"),
            (format!("[{}0,]", "0,".repeat(63)), "trailing comma"),
            (
                r#"[[1,2,3,4,5,6,7,"x"]]"#.into(),
                "an array of 64 numbers or 8 arrays of 8 numbers, 0..16",
            ),
            (
                "[[[0]]]".into(),
                "an array of 64 numbers or 8 arrays of 8 numbers",
            ),
            (
                "5".into(),
                "an array of 64 numbers or 8 arrays of 8 numbers",
            ),
            (
                format!("[{}[0]]", "0,".repeat(63)),
                "an array of 64 numbers",
            ),
            (" ".repeat(MAX_JSON_BYTES + 1), "exceeds 16384"),
        ] {
            let got = message(body);
            assert!(got.contains(says), "{got:?} should say {says:?}");
        }
    }

    fn json(body: &[u8]) -> Result<[f32; INPUT_LEN], Error> {
        from_json(&Request {
            content_type: "application/json".into(),
            body: body.to_vec(),
            tensors: Vec::new(),
        })
    }

    fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
            .into_bytes();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(&h);
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn npy_inputs() {
        let raw = &raw_digits()[1];
        let want = from_raw_8x8(raw).unwrap();
        let u8s: Vec<u8> = raw.iter().map(|&v| v as u8).collect();
        let f32s: Vec<u8> = raw.iter().flat_map(|v| v.to_le_bytes()).collect();
        let i64s: Vec<u8> = raw.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect();
        for shape in ["(8, 8)", "(64,)", "(1, 8, 8)"] {
            assert_eq!(from_npy(&npy_bytes("|u1", shape, &u8s)).unwrap(), want);
            assert_eq!(from_npy(&npy_bytes("<f4", shape, &f32s)).unwrap(), want);
            assert_eq!(from_npy(&npy_bytes("<i8", shape, &i64s)).unwrap(), want);
        }
        assert!(matches!(
            from_npy(&npy_bytes("|u1", "(4, 16)", &u8s)),
            Err(DigitError::Shape(_))
        ));
        assert!(matches!(
            from_npy(&npy_bytes("|u1", "(8, 8)", &u8s[..10])),
            Err(DigitError::Npy(_))
        ));
        let mut big = u8s.clone();
        big[5] = 255;
        assert!(matches!(
            from_npy(&npy_bytes("|u1", "(64,)", &big)),
            Err(DigitError::OutOfRange { index: 5, .. })
        ));
        let nan: Vec<u8> = (0..64)
            .flat_map(|i| if i == 3 { f32::NAN } else { 0.0 }.to_le_bytes())
            .collect();
        assert!(matches!(
            from_npy(&npy_bytes("<f4", "(64,)", &nan)),
            Err(DigitError::OutOfRange { index: 3, .. })
        ));
        let neg: Vec<u8> = (0..64)
            .flat_map(|i| if i == 0 { -1i64 } else { 0 }.to_le_bytes())
            .collect();
        assert!(from_npy(&npy_bytes("<i8", "(8, 8)", &neg)).is_err());
        // The whole test set is not one digit.
        assert!(matches!(
            from_npy(&read("digits/digits_test_raw.npy")),
            Err(DigitError::Shape(_))
        ));
    }
}
