//! ImageNet-1k classification of a photo: the top-5 classes with their probabilities.
//!
//! Everything up to the model input runs here, in the sandbox: decode (PNG or JPEG), resize so
//! the short side is 256 (Pillow's antialiased bilinear, bit-exact), centre-crop 224×224,
//! normalize for the model and lay out as NCHW float32. The network itself runs in the host
//! through the `model` interface (the native backend, or tract for graphs it does not cover);
//! the host turns the logits into probabilities and the plugin picks the top-5.
//!
//! # Which model: the manifest's `[grants.models]` is the configuration
//!
//! The plugin knows four models by the name they are granted under, each with its own
//! normalization ([`KNOWN_MODELS`]):
//!
//! | grant name | file shipped beside the plugin | normalization |
//! |---|---|---|
//! | `mobilenetv2` | `mobilenetv2.onnx` | `(x/255 - mean) / std`, ImageNet mean/std |
//! | `mobilenetv2-int8` | `mobilenetv2_int8_qdq.onnx` | same |
//! | `efficientnet-lite0` | `efficientnet_lite0.onnx` | `(x - 127) / 128` |
//! | `efficientnet-lite0-int8` | `efficientnet_lite0_int8_qdq.onnx` | same |
//!
//! The model used is the one the manifest grants. When it grants several, the request picks one
//! with the content-type parameter `model` (`image/png; model=efficientnet-lite0`), and without
//! the parameter the first granted one in the table's order is used. The parameter is only ever
//! a key into the grants: the host refuses anything not granted with `not-permitted`.
//!
//! # Requests
//!
//! * `image/png`, `image/jpeg`: a photo, any size up to [`DECODE_LIMITS`].
//! * a request tensor `input`, float32 `[1, 3, 224, 224]`, already preprocessed for the model
//!   (tensor protocols; the body is then ignored).
//!
//! The response body is `[{"index": 285, "label": "Egyptian cat", "probability": 0.717}, ...]`
//! (five entries, softmax of the logits, most probable first) and it carries the raw `logits`
//! `[1, 1000]` as an output tensor. With the content-type parameter `debug=true` it also carries
//! the tensors `crop` (uint8 `[1, 224, 224, 3]`, the RGB pixels that were fed to the
//! normalization) and `timings_us` (float32 `[3]`: decode, preprocess, model, measured inside
//! the sandbox).

use std::time::Instant;

use edgeplug_sdk::preprocess::image::{DynamicImage, RgbImage};
use edgeplug_sdk::preprocess::{self, DecodeLimits, IMAGENET_MEAN, IMAGENET_STD};
use edgeplug_sdk::{
    ElementType, Error, ErrorCode, Model, Plugin, PluginInfo, Request, Response, Tensor,
    TensorInfo, export,
};

/// Side of the model input.
pub const CROP: u32 = 224;
/// The short side the photo is resized to before the centre crop.
pub const RESIZE_SHORT: u32 = 256;
/// Number of classes.
pub const CLASSES: usize = 1000;
/// How many classes the answer lists.
pub const TOP_K: usize = 5;

/// Photos up to 8192 on a side and 24 Mpixel (a 24 Mpixel RGB photo is 72 MB decoded), and
/// 96 MiB of decoder allocations; the manifest's 256 MiB of linear memory covers the body, the
/// decoded image and its RGB conversion.
pub const DECODE_LIMITS: DecodeLimits = DecodeLimits {
    max_width: 8192,
    max_height: 8192,
    max_pixels: 24_000_000,
    max_alloc_bytes: 96 * 1024 * 1024,
};

// The ImageNet class names, `LABELS[i]` = class i (torchvision's list, one per line of
// imagenet_labels.txt; build.rs makes the array).
include!(concat!(env!("OUT_DIR"), "/labels.rs"));

/// How a model wants its pixels: `(pixel * scale - mean[c]) / std[c]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// torchvision's convention: 0..1, then ImageNet mean/std.
pub const TORCHVISION: Normalization = Normalization {
    scale: 1.0 / 255.0,
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
};

/// TensorFlow EfficientNet-Lite's convention: `(x - 127) / 128` on 0..255.
pub const EFFICIENTNET_LITE: Normalization = Normalization {
    scale: 1.0,
    mean: [127.0; 3],
    std: [128.0; 3],
};

/// The models this plugin can run, by grant name, in order of preference.
pub const KNOWN_MODELS: [(&str, Normalization); 4] = [
    ("mobilenetv2", TORCHVISION),
    ("efficientnet-lite0", EFFICIENTNET_LITE),
    ("mobilenetv2-int8", TORCHVISION),
    ("efficientnet-lite0-int8", EFFICIENTNET_LITE),
];

/// The normalization of a known model name.
pub fn normalization_of(name: &str) -> Option<Normalization> {
    KNOWN_MODELS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, norm)| *norm)
}

/// The value of parameter `key` in a content type (`image/png; model=x; debug=true`).
pub fn content_type_param(content_type: &str, key: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Opens the model to use: the one the request names, else the first granted known model.
fn open_model(content_type: &str) -> Result<(String, Model, Normalization), Error> {
    if let Some(name) = content_type_param(content_type, "model") {
        // The host decides whether the name is granted; only then does it need to be known.
        let model = Model::open(&name)?;
        let norm = normalization_of(&name).ok_or_else(|| {
            Error::invalid_argument(format!(
                "model {name:?} is granted but this plugin does not know its preprocessing; known models: {:?}",
                KNOWN_MODELS.map(|(n, _)| n)
            ))
        })?;
        return Ok((name, model, norm));
    }
    let mut refusals = Vec::new();
    for (name, norm) in KNOWN_MODELS {
        match Model::open(name) {
            Ok(model) => return Ok((name.to_string(), model, norm)),
            Err(e) if e.code == ErrorCode::NotPermitted || e.code == ErrorCode::NotFound => {
                refusals.push(e.message)
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::new(
        ErrorCode::NotPermitted,
        format!(
            "the manifest grants none of the models this plugin can run ({}); grant one under \
             [grants.models] (last refusal: {})",
            KNOWN_MODELS.map(|(n, _)| n).join(", "),
            refusals.last().map(String::as_str).unwrap_or("none")
        ),
    ))
}

/// Decodes a photo into 8-bit RGB (alpha dropped, 16-bit scaled, EXIF orientation applied).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, preprocess::PreprocessError> {
    Ok(match preprocess::decode(bytes, &DECODE_LIMITS)? {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => preprocess::to_rgb8(&other),
    })
}

/// Resize (short side 256) and centre crop 224: the RGB pixels the model sees.
pub fn crop(rgb: &RgbImage) -> Result<RgbImage, preprocess::PreprocessError> {
    preprocess::resize_center_crop(rgb, RESIZE_SHORT, CROP)
}

/// One entry of the answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Class {
    pub index: usize,
    pub label: &'static str,
    pub probability: f32,
}

/// The `k` most probable classes, best first, ties by index.
///
/// One pass keeps the best `k` in order instead of sorting all 1000: inside the sandbox the
/// sort and the label lookup used to cost ~0.1 ms, 2 % of a MobileNetV2 request.
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<Class> {
    // Indices of the best so far, best first; a later index never displaces an equal value,
    // so ties keep index order.
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (index, &p) in probabilities.iter().enumerate() {
        let at = best.partition_point(|&b| probabilities[b].total_cmp(&p).is_ge());
        if at < k {
            best.insert(at, index);
            best.truncate(k);
        }
    }
    best.into_iter()
        .map(|index| Class {
            index,
            label: LABELS.get(index).copied().unwrap_or("?"),
            probability: probabilities[index],
        })
        .collect()
}

fn micros(since: Instant) -> f32 {
    since.elapsed().as_secs_f64() as f32 * 1e6
}

struct ImageClassifier;

impl Plugin for ImageClassifier {
    fn describe() -> PluginInfo {
        PluginInfo::new("image-classifier", env!("CARGO_PKG_VERSION"))
            .description(
                "ImageNet-1k top-5 of a PNG/JPEG photo (MobileNetV2 or EfficientNet-Lite0, float or int8, \
                 chosen by the manifest's model grant)",
            )
            .input(TensorInfo::f32("input", &[1, 3, CROP as i64, CROP as i64]))
            .output(TensorInfo::f32("logits", &[1, CLASSES as i64]))
    }

    fn infer(mut request: Request) -> Result<Response, Error> {
        let debug = content_type_param(&request.content_type, "debug")
            .is_some_and(|v| v == "true" || v == "1");
        let (_name, model, norm) = open_model(&request.content_type)?;
        let mut timings = [0f32; 3];
        let mut crop_tensor = None;
        let input = if let Some(tensor) = request.take_tensor("input") {
            if tensor.shape() != [1, 3, CROP as usize, CROP as usize]
                || tensor.element_type() != ElementType::Float32
            {
                return Err(Error::shape_mismatch(format!(
                    "tensor \"input\" must be float32 [1, 3, {CROP}, {CROP}] (already normalized), got {:?} {:?}",
                    tensor.element_type(),
                    tensor.shape()
                )));
            }
            tensor
        } else {
            match request.mime().as_str() {
                "image/png" | "image/jpeg" | "image/jpg" => {}
                other => {
                    return Err(Error::unsupported(format!(
                        "content type {other:?} is not supported; send image/png or image/jpeg, or a \
                         float32 tensor \"input\" [1, 3, {CROP}, {CROP}]"
                    )));
                }
            }
            let start = Instant::now();
            let rgb = decode_rgb(&request.body)?;
            drop(std::mem::take(&mut request.body));
            timings[0] = micros(start);
            let start = Instant::now();
            let pixels = crop(&rgb)?;
            drop(rgb);
            let chw = preprocess::to_chw_f32(&pixels, norm.mean, norm.std, norm.scale);
            let input = Tensor::from_slice(&[1, 3, CROP as usize, CROP as usize], &chw)?;
            timings[1] = micros(start);
            if debug {
                crop_tensor = Some(Tensor::from_bytes(
                    &[1, CROP as usize, CROP as usize, 3],
                    ElementType::Uint8,
                    pixels.as_raw(),
                )?);
            }
            input
        };
        let start = Instant::now();
        let logits = model
            .run(&[&input])?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("the model gave no output"))?;
        // The softmax runs on the host: in the sandbox, 1000 software `exp`s under epoch
        // instrumentation cost more than the host call.
        let probabilities = logits.softmax(-1)?.to_vec()?;
        timings[2] = micros(start);
        if probabilities.len() != CLASSES {
            return Err(Error::internal(format!(
                "the model gave {} values, expected {CLASSES} ImageNet logits",
                probabilities.len()
            )));
        }
        let mut response =
            Response::json(&top_k(&probabilities, TOP_K))?.with_tensor("logits", logits);
        if debug {
            if let Some(crop) = crop_tensor {
                response = response.with_tensor("crop", crop);
            }
            response = response.with_tensor("timings_us", Tensor::from_slice(&[3], &timings)?);
        }
        Ok(response)
    }
}

export!(ImageClassifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_1000_imagenet_classes() {
        assert_eq!(LABELS.len(), CLASSES);
        assert_eq!(LABELS[285], "Egyptian cat");
        assert_eq!(LABELS[967], "espresso");
    }

    #[test]
    fn top_k_is_best_first_with_labels() {
        let mut probabilities = vec![0.001f32; CLASSES];
        probabilities[3] = 0.2;
        probabilities[7] = 0.1;
        probabilities[285] = 0.2;
        let top = top_k(&probabilities, 3);
        assert_eq!(top.iter().map(|c| c.index).collect::<Vec<_>>(), [3, 285, 7]);
        assert_eq!(top[1].label, "Egyptian cat");
        assert_eq!(top[2].probability, 0.1);
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        // Few distinct values, so ties are everywhere.
        let mut state = 12345u32;
        for case in 0..200 {
            let n = 1 + case % 40;
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((state >> 24) % 7) as f32 - 3.0
                })
                .collect();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            for k in [0, 1, 5, n] {
                let got: Vec<usize> = top_k(&logits, k).iter().map(|c| c.index).collect();
                assert_eq!(got, order[..k.min(n)], "logits {logits:?}, k {k}");
            }
        }
    }

    #[test]
    fn content_type_parameters() {
        let ct = "image/png; model=\"efficientnet-lite0\" ; Debug=true";
        assert_eq!(
            content_type_param(ct, "model").as_deref(),
            Some("efficientnet-lite0")
        );
        assert_eq!(content_type_param(ct, "debug").as_deref(), Some("true"));
        assert_eq!(content_type_param("image/png", "model"), None);
        assert_eq!(
            normalization_of("efficientnet-lite0-int8"),
            Some(EFFICIENTNET_LITE)
        );
        assert_eq!(normalization_of("model.onnx"), None);
    }
}
