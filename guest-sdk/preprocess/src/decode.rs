//! Safe decoding of untrusted PNG/JPEG bytes: format sniffing, header-first size checks,
//! truncation detection, error mapping and EXIF orientation.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::{DecodeLimits, PreprocessError};

/// The two formats [`decode`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
}

/// Identifies the format from the magic bytes.
fn sniff(bytes: &[u8]) -> Result<Format, PreprocessError> {
    const OTHERS: &[(&[u8], &str)] = &[
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"BM", "BMP"),
        (b"RIFF", "RIFF/WebP"),
        (b"II*\0", "TIFF"),
        (b"MM\0*", "TIFF"),
        (b"\0\0\x01\0", "ICO"),
        (b"qoif", "QOI"),
        (b"8BPS", "PSD"),
        (b"%PDF", "PDF"),
        (b"\x76\x2f\x31\x01", "OpenEXR"),
    ];
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Err(PreprocessError::UnsupportedFormat(
            "ISO-BMFF (HEIC/AVIF)".into(),
        ));
    }
    for (magic, name) in OTHERS {
        if bytes.starts_with(magic) {
            return Err(PreprocessError::UnsupportedFormat((*name).into()));
        }
    }
    if bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(PreprocessError::Truncated(
            "the file ends inside its signature".into(),
        ));
    }
    let head = &bytes[..bytes.len().min(16)];
    if head
        .iter()
        .all(|&c| c.is_ascii_graphic() || c == b' ' || c == b'\n' || c == b'\t' || c == b'\r')
    {
        let text = String::from_utf8_lossy(head);
        return Err(PreprocessError::UnsupportedFormat(format!(
            "text starting {text:?}"
        )));
    }
    Err(PreprocessError::UnsupportedFormat(format!(
        "unrecognised leading bytes {head:02x?}"
    )))
}

/// Width and height from a PNG's IHDR chunk (which must come first).
fn png_header(bytes: &[u8]) -> Result<(u32, u32), PreprocessError> {
    let ihdr = bytes
        .get(8..24)
        .ok_or_else(|| PreprocessError::Truncated("PNG ends before its IHDR header".into()))?;
    if &ihdr[4..8] != b"IHDR" {
        return Err(PreprocessError::Malformed(
            "PNG does not start with an IHDR chunk".into(),
        ));
    }
    let w = u32::from_be_bytes(ihdr[8..12].try_into().expect("4 bytes"));
    let h = u32::from_be_bytes(ihdr[12..16].try_into().expect("4 bytes"));
    Ok((w, h))
}

/// Walks a JPEG's marker segments: returns the frame size from the first SOFn marker and
/// whether an EOI marker follows the first scan. Linear in the input, no allocation.
fn jpeg_header(b: &[u8]) -> Result<((u32, u32), bool), PreprocessError> {
    let trunc = |m: &str| PreprocessError::Truncated(format!("JPEG {m}"));
    let mut size = None;
    let mut i = 2; // after SOI
    loop {
        // Markers: one or more 0xFF fill bytes, then the marker code.
        if i >= b.len() {
            return match size {
                Some(s) => Ok((s, false)),
                None => Err(trunc("ends before its frame header (SOF)")),
            };
        }
        if b[i] != 0xFF {
            return Err(PreprocessError::Malformed(format!(
                "JPEG: expected a marker at byte {i}"
            )));
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else { continue };
        i += 1;
        match m {
            0xD9 => {
                return match size {
                    Some(s) => Ok((s, true)),
                    None => Err(PreprocessError::Malformed(
                        "JPEG has no frame header".into(),
                    )),
                };
            }
            0x01 | 0xD0..=0xD8 => continue, // stand-alone markers
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            i = b.len(); // loops back and reports truncation
            continue;
        };
        if len < 2 {
            return Err(PreprocessError::Malformed(format!(
                "JPEG segment length {len} < 2"
            )));
        }
        let seg = i + 2;
        let is_sof = matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC);
        if is_sof && size.is_none() {
            let f = b
                .get(seg..seg + 5)
                .ok_or_else(|| trunc("ends inside its frame header"))?;
            let h = u32::from(u16::from_be_bytes([f[1], f[2]]));
            let w = u32::from(u16::from_be_bytes([f[3], f[4]]));
            size = Some((w, h));
        }
        i += len;
        if m == 0xDA {
            if size.is_none() {
                return Err(PreprocessError::Malformed(
                    "JPEG scan before its frame header".into(),
                ));
            }
            // Entropy-coded data: runs until a 0xFF that is not a stuffed 0xFF00 or an RSTn.
            while i + 1 < b.len()
                && !(b[i] == 0xFF && b[i + 1] != 0 && !(0xD0..=0xD7).contains(&b[i + 1]))
            {
                i += 1;
            }
            if i + 1 >= b.len() {
                i = b.len();
            }
        }
    }
}

fn check_limits(w: u32, h: u32, l: &DecodeLimits) -> Result<(), PreprocessError> {
    let too_large = |limit: String| PreprocessError::TooLarge {
        width: w,
        height: h,
        limit,
    };
    if w > l.max_width || h > l.max_height {
        return Err(too_large(format!(
            "the limit of {}x{} pixels",
            l.max_width, l.max_height
        )));
    }
    if u64::from(w) * u64::from(h) > l.max_pixels {
        return Err(too_large(format!(
            "the limit of {} pixels in total",
            l.max_pixels
        )));
    }
    if w == 0 || h == 0 {
        return Err(PreprocessError::Malformed(format!(
            "image header says {w}x{h}"
        )));
    }
    Ok(())
}

/// Maps the image crate's errors onto [`PreprocessError`].
fn map_image_error(e: image::ImageError, (w, h): (u32, u32)) -> PreprocessError {
    use image::ImageError as E;
    let truncated_words = [
        "eof",
        "end of file",
        "unexpected end",
        "truncated",
        "no more bytes",
        "exhausted",
    ];
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            PreprocessError::Truncated(format!("the data ends early ({io})"))
        }
        E::IoError(io) => PreprocessError::Malformed(io.to_string()),
        E::Decoding(d) => {
            let m = d.to_string();
            let lower = m.to_ascii_lowercase();
            if truncated_words.iter().any(|w| lower.contains(w)) {
                PreprocessError::Truncated(m)
            } else {
                PreprocessError::Malformed(m)
            }
        }
        E::Limits(l) => PreprocessError::TooLarge {
            width: w,
            height: h,
            limit: format!("a decoder limit ({l})"),
        },
        E::Unsupported(u) => PreprocessError::UnsupportedFormat(u.to_string()),
        E::Parameter(p) => PreprocessError::Malformed(p.to_string()),
        E::Encoding(x) => PreprocessError::Malformed(x.to_string()),
    }
}

/// Decodes a PNG or JPEG image from memory, safely for untrusted input.
///
/// * The format is taken from the magic bytes; anything but PNG and JPEG (GIF, BMP, WebP,
///   text, ...) is [`PreprocessError::UnsupportedFormat`]. Zero bytes is [`PreprocessError::Empty`].
/// * The width and height are read from the header (PNG IHDR, JPEG SOFn) and checked against
///   `limits` **before** the decoder allocates anything: a decompression bomb or a header that
///   claims 65535×65535 is refused with [`PreprocessError::TooLarge`] at no cost. The image
///   crate's own [`image::Limits`] are set too, as a second line.
/// * A file that ends early is [`PreprocessError::Truncated`] (for JPEG, also when the
///   end-of-image marker is missing: no half-grey partial images).
/// * EXIF orientation (JPEG APP1 and PNG eXIf) **is honoured**: the result is upright, with
///   width and height swapped for the 90° orientations.
/// * The colour type is kept as decoded (gray, gray+alpha, RGB, RGBA; 8 or 16 bits; PNG
///   palettes are expanded, CMYK JPEGs converted to RGB). Use [`to_rgb8`](super::to_rgb8) / [`to_gray8`](super::to_gray8).
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let format = sniff(bytes)?;
    let (dims, complete) = match format {
        Format::Png => (png_header(bytes)?, true),
        Format::Jpeg => jpeg_header(bytes)?,
    };
    check_limits(dims.0, dims.1, limits)?;
    if !complete {
        return Err(PreprocessError::Truncated(
            "JPEG has no end-of-image marker after its scan data".into(),
        ));
    }

    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Malformed(e.to_string()))?;
    let expected = match format {
        Format::Png => ImageFormat::Png,
        Format::Jpeg => ImageFormat::Jpeg,
    };
    if reader.format() != Some(expected) {
        return Err(PreprocessError::UnsupportedFormat(format!(
            "{:?}",
            reader.format()
        )));
    }
    let mut reader = reader;
    let mut il = image::Limits::default();
    il.max_image_width = Some(limits.max_width);
    il.max_image_height = Some(limits.max_height);
    il.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(il);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(e, dims))?;
    let dims = decoder.dimensions();
    check_limits(dims.0, dims.1, limits)?;
    let needed = decoder.total_bytes();
    if needed > limits.max_alloc_bytes {
        return Err(PreprocessError::TooLarge {
            width: dims.0,
            height: dims.1,
            limit: format!(
                "the decode budget of {} bytes ({needed} needed)",
                limits.max_alloc_bytes
            ),
        });
    }
    // A malformed Exif block is not worth refusing the picture for.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, dims))?;
    img.apply_orientation(orientation);
    Ok(img)
}
