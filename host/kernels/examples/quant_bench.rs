//! `cargo run --release -p edgeplug-kernels --example quant_bench`: `qconv2d` (the `ops`
//! interface's QLinearConv, NCHW in and out) beside the float `conv2d` at MobileNetV2-like
//! layer shapes, batch 1, one thread: the median of 31 runs after 3 warm-ups, in ms. Both
//! include what one call of the op does (weight packing, layout changes, the output tensor).

use edgeplug_kernels::{
    Activation, Conv2dParams, Padding, QuantParams, QuantType, Requantize, Tensor, conv2d, fast,
    qconv2d, quantize,
};
use std::time::Instant;

/// The median of 31 timed runs after 3 warm-ups, in ms.
fn time(f: &mut dyn FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut v: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[15]
}

/// Deterministic values in [-scale, scale).
fn tensor(seed: u32, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let d = (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2_654_435_761) ^ seed).rotate_right(13) % 1000) as f32 / 500.0
                - 1.0
        })
        .map(|v| v * scale)
        .collect();
    Tensor::from_f32(shape.to_vec(), d).unwrap()
}

fn main() {
    println!(
        "isa {:?} vnni {}",
        fast::Isa::detect(),
        fast::int8::vnni_available()
    );
    for (name, c, o, hw, k, groups) in [
        (
            "pointwise 96->24 @56",
            96usize,
            24usize,
            56usize,
            1usize,
            1usize,
        ),
        ("pointwise 144->32 @28", 144, 32, 28, 1, 1),
        ("dense 3x3 32->64 @28", 32, 64, 28, 3, 1),
        ("depthwise 3x3 144 @56", 144, 144, 56, 3, 144),
        ("grouped 3x3 64->64 g4 @28", 64, 64, 28, 3, 4),
    ] {
        let x = tensor(1, &[1, c, hw, hw], 2.0);
        let w = tensor(2, &[o, c / groups, k, k], 0.1);
        let pad = k / 2;
        let p = Conv2dParams {
            stride: [1, 1],
            padding: Padding {
                top: pad,
                left: pad,
                bottom: pad,
                right: pad,
            },
            dilation: [1, 1],
            groups,
            activation: Activation::None,
        };
        let xq = quantize(&x, QuantType::U8, QuantParams::per_tensor(4.0 / 255.0, 128)).unwrap();
        let wq = quantize(&w, QuantType::I8, QuantParams::per_tensor(0.1 / 127.0, 0)).unwrap();
        let out = Requantize {
            scale: 0.05,
            zero_point: 128,
        };
        let tf = time(&mut || {
            std::hint::black_box(conv2d(&x, &w, None, &p).unwrap());
        });
        let tq = time(&mut || {
            std::hint::black_box(qconv2d(&xq, &wq, None, &p, out).unwrap());
        });
        println!("{name}: f32 conv2d {tf:.3} ms, qconv2d {tq:.3} ms");
    }
}
