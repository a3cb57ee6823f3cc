use std::path::PathBuf;

use image::{
    DynamicImage, GenericImageView, GrayAlphaImage, GrayImage, ImageBuffer, LumaA, Rgb, RgbImage,
    Rgba, RgbaImage,
};

use crate::npy::{self, NpyData};
use crate::preprocess::*;

/// `tests/fixtures/images`, found by walking up from the crate's manifest directory (the crate
/// lives at different depths in the workspace and in scratch builds).
fn images_dir() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let cand = dir.join("tests/fixtures/images");
        if cand.is_dir() {
            return cand;
        }
        assert!(
            dir.pop(),
            "no tests/fixtures/images above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

fn read(rel: &str) -> Vec<u8> {
    let p = images_dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn dec(rel: &str) -> Result<DynamicImage, PreprocessError> {
    decode(&read(rel), &DecodeLimits::default())
}

#[test]
fn adversarial_errors() {
    assert_eq!(dec("adversarial/empty.png"), Err(PreprocessError::Empty));
    assert!(matches!(
        dec("adversarial/not-an-image.png"),
        Err(PreprocessError::UnsupportedFormat(_))
    ));
    for (f, name) in [
        ("adversarial/coffee.gif", "GIF"),
        ("adversarial/coffee.bmp", "BMP"),
    ] {
        let e = dec(f).unwrap_err();
        assert_eq!(e, PreprocessError::UnsupportedFormat(name.into()), "{f}");
        assert!(
            e.to_string().contains("supported formats: PNG, JPEG"),
            "{e}"
        );
    }
    for f in ["adversarial/truncated.png", "adversarial/truncated.jpg"] {
        let e = dec(f).unwrap_err();
        assert!(matches!(e, PreprocessError::Truncated(_)), "{f}: {e:?}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    // Refused from the header alone: no decoder is even constructed.
    for (f, side) in [
        ("adversarial/bomb-30000x30000.png", 30000),
        ("adversarial/header-only-65535.png", 65535),
    ] {
        let t = std::time::Instant::now();
        let e = dec(f).unwrap_err();
        assert_eq!(
            e,
            PreprocessError::TooLarge {
                width: side,
                height: side,
                limit: "the limit of 8192x8192 pixels".into()
            },
            "{f}"
        );
        assert!(t.elapsed().as_millis() < 50, "{f} took {:?}", t.elapsed());
    }
    // With the per-side and pixel limits lifted, the allocation budget still refuses the bomb
    // (900 MB decoded) before decoding, and header-only runs out of data in the decoder.
    let loose = DecodeLimits {
        max_width: 65535,
        max_height: 65535,
        max_pixels: u64::MAX,
        max_alloc_bytes: 64 << 20,
    };
    let e = decode(&read("adversarial/bomb-30000x30000.png"), &loose).unwrap_err();
    assert!(
        matches!(
            e,
            PreprocessError::TooLarge {
                width: 30000,
                height: 30000,
                ..
            }
        ),
        "{e:?}"
    );
    let e = decode(&read("adversarial/header-only-65535.png"), &loose).unwrap_err();
    assert!(
        matches!(
            e,
            PreprocessError::Truncated(_) | PreprocessError::TooLarge { .. }
        ),
        "{e:?}"
    );
    // A PNG signature alone, or a JPEG cut in its headers.
    assert!(matches!(
        decode(b"\x89PNG\r\n\x1a\n", &loose),
        Err(PreprocessError::Truncated(_))
    ));
    let rocket = read("rocket.jpg");
    for cut in [3, 4, 20, 200, 600] {
        let e = decode(&rocket[..cut], &loose).unwrap_err();
        assert!(
            matches!(e, PreprocessError::Truncated(_)),
            "cut {cut}: {e:?}"
        );
    }
    // Every prefix of a small PNG that cuts into its image data is an error, never a panic
    // (a file that loses only its 12-byte IEND trailer still holds the whole image).
    let digit = read("adversarial/digit1-palette.png");
    for cut in 0..digit.len() - 12 {
        assert!(decode(&digit[..cut], &loose).is_err(), "cut {cut}");
    }
}

#[test]
fn decodes_unusual_encodings() {
    let reference = to_gray8(&dec("adversarial/digit1-gray8.png").unwrap());
    assert_eq!(reference.dimensions(), (28, 28));
    assert_eq!(reference.get_pixel(13, 10).0, [255]);
    assert_eq!(reference.get_pixel(2, 2).0, [0]);
    for f in [
        "digit1-gray16.png",
        "digit1-gray-alpha.png",
        "digit1-palette.png",
    ] {
        let img = dec(&format!("adversarial/{f}")).unwrap();
        assert_eq!(to_gray8(&img), reference, "{f} ({:?})", img.color());
    }
    let coffee = to_rgb8(&dec("coffee.png").unwrap());
    for f in [
        "coffee-rgba.png",
        "coffee-cmyk.jpg",
        "coffee-progressive.jpg",
        "coffee-exif-rotated.jpg",
    ] {
        let img = to_rgb8(&dec(&format!("adversarial/{f}")).unwrap());
        // EXIF orientation 6 is applied: the rotated file comes back upright, 600x400.
        assert_eq!(img.dimensions(), coffee.dimensions(), "{f}");
        let mad = mean_abs_diff(img.as_raw(), coffee.as_raw());
        eprintln!("{f}: mean abs diff vs coffee.png {mad:.2}");
        assert!(mad < 4.0, "{f}: mean abs diff {mad}");
    }
}

#[test]
fn degenerate_sizes() {
    let tiny = to_rgb8(&dec("adversarial/tiny-1x1.png").unwrap());
    let crop = resize_center_crop(&tiny, 256, 224).unwrap();
    assert_eq!(crop.dimensions(), (224, 224));
    assert!(crop.pixels().all(|p| p.0 == [128, 128, 128]));
    let wide = to_rgb8(&dec("adversarial/wide-4000x1.png").unwrap());
    assert_eq!(wide.dimensions(), (4000, 1));
    assert!(matches!(
        resize_center_crop(&wide, 256, 224),
        Err(PreprocessError::InvalidArgument(_))
    ));
    // A defined answer for the strip when the caller asks for an explicit size.
    let sq = resize_exact(&wide, 224, 224).unwrap();
    assert!(sq.pixels().all(|p| p.0 == [10, 200, 30]));

    let empty = RgbImage::new(0, 0);
    assert!(resize_exact(&empty, 4, 4).is_err());
    assert!(resize_short_side(&empty, 4).is_err());
    assert!(resize_exact(&tiny, 0, 4).is_err());
    assert!(resize_short_side(&tiny, 0).is_err());
    assert!(resize_exact(&tiny, 100_000, 100_000).is_err());
    assert!(center_crop(&tiny, 2, 1).is_err());
    assert!(center_crop(&tiny, 0, 0).is_err());
    assert!(center_crop(&empty, 1, 1).is_err());
    assert!(resize_center_crop(&tiny, 224, 256).is_err());
    assert_eq!(center_crop(&tiny, 1, 1).unwrap(), tiny);
}

#[test]
fn center_crop_rounds_half_to_even() {
    // Python: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4.
    let img = RgbImage::from_fn(10, 1, |x, _| Rgb([x as u8, 0, 0]));
    for (w, left) in [(9, 0), (7, 2), (5, 2), (3, 4), (10, 0), (8, 1)] {
        assert_eq!(
            center_crop(&img, w, 1).unwrap().get_pixel(0, 0).0[0],
            left,
            "crop width {w}"
        );
    }
}

#[test]
fn resize_properties() {
    // Identity, constant images, and a known Pillow result.
    let img = RgbImage::from_fn(7, 5, |x, y| Rgb([(x * 30) as u8, (y * 50) as u8, 7]));
    assert_eq!(resize_exact(&img, 7, 5).unwrap(), img);
    let flat = RgbImage::from_pixel(13, 9, Rgb([200, 3, 77]));
    for (w, h) in [(1, 1), (5, 3), (26, 18), (100, 2)] {
        assert!(
            resize_exact(&flat, w, h)
                .unwrap()
                .pixels()
                .all(|p| p.0 == [200, 3, 77])
        );
    }
    // Worked by hand from Resample.c: 4 -> 2 uses 3 taps of weights (3, 3, 1) / 7 per output
    // (support 2, antialiased); 4 -> 8 interpolates with weights (3, 1) / 4.
    let row = GrayImage::from_raw(4, 1, vec![0, 100, 200, 255]).unwrap();
    assert_eq!(resize_exact(&row, 2, 1).unwrap().into_raw(), vec![71, 209]);
    assert_eq!(
        resize_exact(&row, 8, 1).unwrap().into_raw(),
        vec![0, 25, 75, 125, 175, 214, 241, 255]
    );
}

#[test]
fn tensor_layout() {
    let img = RgbImage::from_fn(2, 1, |x, _| Rgb([x as u8 * 255, 51, 0]));
    let t = to_chw_f32(&img, [0.5; 3], [0.5; 3], 1.0 / 255.0);
    let want = [-1.0, 1.0, -0.6, -0.6, -1.0, -1.0];
    assert!(
        t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{t:?}"
    );
    let t = to_chw_f32(&img, [127.0; 3], [128.0; 3], 1.0);
    assert_eq!(t[1], 1.0);
    let hwc = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    assert_eq!(
        hwc_to_chw(&hwc, 2, 2, 3).unwrap(),
        vec![1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12]
    );
    assert!(hwc_to_chw(&hwc, 2, 3, 3).is_err());
    assert!(hwc_to_chw(&hwc, usize::MAX, 2, 3).is_err());
}

#[test]
fn gray_conversion_matches_pil() {
    let rgb = DynamicImage::ImageRgb8(
        RgbImage::from_raw(3, 1, vec![255, 0, 0, 0, 255, 0, 10, 20, 30]).unwrap(),
    );
    // PIL convert("L"): (255,0,0) -> 76, (0,255,0) -> 150, (10,20,30) -> 18.
    assert_eq!(to_gray8(&rgb).into_raw(), vec![76, 150, 18]);
    let mut g = GrayImage::from_raw(2, 1, vec![0, 200]).unwrap();
    invert(&mut g);
    assert_eq!(g.into_raw(), vec![255, 55]);
}

#[test]
fn compositing_over_white_and_black() {
    let img = DynamicImage::ImageRgba8(
        RgbaImage::from_raw(
            3,
            1,
            vec![200, 100, 0, 128, 200, 100, 0, 0, 200, 100, 0, 255],
        )
        .unwrap(),
    );
    // Worked by hand: (200*128 + 255*127) / 255 = 227.4, (100*128 + 255*127) / 255 = 177.2,
    // (0*128 + 255*127) / 255 = 127; over black 200*128/255 = 100.4 and 100*128/255 = 50.2.
    // Transparent pixels take the background, opaque ones keep their colour.
    assert_eq!(
        composite_to_rgb8(&img, [255, 255, 255]).into_raw(),
        vec![227, 177, 127, 255, 255, 255, 200, 100, 0]
    );
    assert_eq!(
        composite_to_rgb8(&img, [0, 0, 0]).into_raw(),
        vec![100, 50, 0, 0, 0, 0, 200, 100, 0]
    );
    // Any background colour, channel by channel.
    assert_eq!(
        composite_to_rgb8(&img, [10, 20, 30]).get_pixel(1, 0).0,
        [10, 20, 30]
    );
    // Gray: the luma of (200, 100, 0) is 118, blended like a channel:
    // (118*128 + 255*127) / 255 = 186.2 and 118*128/255 = 59.2.
    assert_eq!(
        composite_to_gray8(&img, 255).into_raw(),
        vec![186, 255, 118]
    );
    assert_eq!(composite_to_gray8(&img, 0).into_raw(), vec![59, 0, 118]);

    // Gray+alpha: ink 40 at half opacity, on white and on black; same in the RGB result.
    let gray_alpha =
        DynamicImage::ImageLumaA8(GrayAlphaImage::from_raw(2, 1, vec![40, 128, 40, 0]).unwrap());
    assert_eq!(
        composite_to_gray8(&gray_alpha, 255).into_raw(),
        vec![147, 255]
    );
    assert_eq!(composite_to_gray8(&gray_alpha, 0).into_raw(), vec![20, 0]);
    assert_eq!(
        composite_to_rgb8(&gray_alpha, [255, 255, 255]).into_raw(),
        vec![147, 147, 147, 255, 255, 255]
    );
}

#[test]
fn compositing_rounds_to_nearest() {
    let (colour, alpha): (Vec<u8>, Vec<u8>) = (0..=255u8)
        .flat_map(|c| (0..=255u8).map(move |a| (c, a)))
        .unzip();
    let gray_alpha: Vec<u8> = colour
        .iter()
        .zip(&alpha)
        .flat_map(|(&c, &a)| [c, a])
        .collect();
    let img = DynamicImage::ImageLumaA8(GrayAlphaImage::from_raw(256, 256, gray_alpha).unwrap());
    for background in [0u8, 97, 255] {
        let got = composite_to_gray8(&img, background);
        for ((&c, &a), &g) in colour.iter().zip(&alpha).zip(got.as_raw()) {
            let exact =
                (f64::from(c) * f64::from(a) + f64::from(background) * f64::from(255 - a)) / 255.0;
            assert_eq!(g, exact.round() as u8, "c {c} a {a} over {background}");
        }
    }
}

#[test]
fn compositing_leaves_opaque_images_alone() {
    for f in [
        "adversarial/coffee-rgba.png",
        "coffee.png",
        "adversarial/digit1-gray-alpha.png",
        "adversarial/digit1-gray16.png",
    ] {
        let img = dec(f).unwrap();
        assert_eq!(composite_to_rgb8(&img, [255, 0, 0]), to_rgb8(&img), "{f}");
        assert_eq!(composite_to_gray8(&img, 255), to_gray8(&img), "{f}");
    }
    // 16-bit alpha is reduced to 8 bits like the colour (65535 -> 255, 32896 -> 128).
    let wide =
        ImageBuffer::<LumaA<u16>, Vec<u16>>::from_raw(2, 1, vec![65535, 32896, 0, 65535]).unwrap();
    assert_eq!(
        composite_to_gray8(&DynamicImage::ImageLumaA16(wide), 0).into_raw(),
        vec![128, 0]
    );
}

#[test]
fn gray_compositing_is_within_one_level_of_rgb_compositing() {
    // Luma first (composite_to_gray8) or composite first (composite_to_rgb8, then to_gray8):
    // each rounds once, so they may differ by one level on translucent colour, never more.
    let img = RgbaImage::from_fn(256, 64, |x, y| {
        Rgba([
            x as u8,
            (x * 7 + y * 13) as u8,
            (255 - x) as u8,
            (y * 4) as u8,
        ])
    });
    let img = DynamicImage::ImageRgba8(img);
    for background in [0u8, 255] {
        let gray = composite_to_gray8(&img, background);
        let via_rgb = to_gray8(&DynamicImage::ImageRgb8(composite_to_rgb8(
            &img,
            [background; 3],
        )));
        let max = gray
            .as_raw()
            .iter()
            .zip(via_rgb.as_raw())
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        assert!(max <= 1, "over {background}: max diff {max}");
    }
}

#[test]
fn question_mark_turns_a_preprocess_error_into_invalid_argument() {
    fn infer_like(bytes: &[u8]) -> Result<RgbImage, crate::Error> {
        Ok(to_rgb8(&decode(bytes, &DecodeLimits::default())?))
    }
    let e = infer_like(&read("adversarial/coffee.gif")).unwrap_err();
    assert_eq!(e.code, crate::ErrorCode::InvalidArgument);
    assert_eq!(
        e.message,
        PreprocessError::UnsupportedFormat("GIF".into()).to_string()
    );
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// The ImageNet geometry (short side 256 + centre crop 224) against the crops made with Pillow.
#[test]
fn matches_pillow_reference_crops() {
    let refs = npy::parse(&read("imagenet_crops_u8_nhwc.npy")).unwrap();
    assert_eq!(refs.shape, vec![4, 224, 224, 3]);
    let NpyData::U8(refs) = refs.data else {
        panic!("expected uint8 crops")
    };
    let n = 224 * 224 * 3;
    // Measured: the three PNGs are bit-exact (max 0); rocket.jpg differs by at most 2 LSB
    // (zune-jpeg vs libjpeg-turbo), mean 0.0069. The image crate's
    // `resize(.., Triangle)` measured max 1, mean 0.12-0.18 on all four: Pillow's algorithm is kept.
    for (i, (name, bound)) in [
        ("chelsea.png", 0),
        ("coffee.png", 0),
        ("rocket.jpg", 3),
        ("astronaut.png", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let img = to_rgb8(&dec(name).unwrap());
        let crop = resize_center_crop(&img, 256, 224).unwrap();
        assert_eq!(crop.dimensions(), (224, 224));
        let want = &refs[i * n..(i + 1) * n];
        let max = crop
            .as_raw()
            .iter()
            .zip(want)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        let mad = mean_abs_diff(crop.as_raw(), want);
        eprintln!("{name}: max abs diff {max} LSB, mean {mad:.4}");
        assert!(max <= bound, "{name}: max abs diff {max} > {bound}");
    }
}

#[test]
fn error_messages() {
    let e = PreprocessError::TooLarge {
        width: 9,
        height: 9,
        limit: "x".into(),
    };
    assert_eq!(e.to_string(), "image too large: 9x9 exceeds x");
    assert!(PreprocessError::Empty.to_string().contains("empty"));
    let e: Box<dyn std::error::Error> = Box::new(PreprocessError::Truncated("t".into()));
    assert_eq!(e.to_string(), "truncated image: t");
    let d = DecodeLimits::default();
    assert_eq!(
        (d.max_width, d.max_height, d.max_pixels),
        (8192, 8192, 40_000_000)
    );
    // The image view trait is usable on decoded images (re-exported types are the image crate's).
    let img = dec("adversarial/tiny-1x1.png").unwrap();
    assert_eq!(img.dimensions(), (1, 1));
}
