//! `cargo run --release -p edgeplug-kernels --example int8_bench [SECS]`: the
//! int8 kernels at MobileNetV2's layer shapes (batch 1, one thread, every ISA
//! this CPU has), in GOP/s (a multiply-add is two operations) beside this
//! core's VNNI peak measured in the same run, as `edgeplug bench --peak`
//! does for FP32. Times are the median and best of repeated timed batches;
//! GOP/s and %peak use the best (see `time_secs`).

use std::hint::black_box;
use std::time::Instant;

use edgeplug_kernels::Padding;
use edgeplug_kernels::fast::int8::{
    PackedI8, Requant, depthwise_u8, depthwise_u8_weights, gemm_u8s8, vnni_available,
    vnni_peak_gops,
};
use edgeplug_kernels::fast::{DwGeometry, Isa, fma_peak_gflops};

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed).rotate_right(13) as u8)
        .collect()
}

/// (median, best) seconds per call of `run`, over 15 batches filling about
/// `secs`. On a shared, loaded machine the best batch is the one least
/// disturbed by other processes, so %peak is taken best against best.
fn time_secs(secs: f64, mut run: impl FnMut()) -> (f64, f64) {
    run();
    let t = Instant::now();
    run();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let per_batch = ((secs / 15.0) / once).ceil().max(1.0) as usize;
    let mut samples: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                run();
            }
            t.elapsed().as_secs_f64() / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[0])
}

/// The best of `n` short peak measurements (see [`time_secs`] on why best).
fn best_of(n: usize, f: impl Fn() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(0.0, f64::max)
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.3);
    let peak = best_of(20, || vnni_peak_gops(0.05));
    let fma = best_of(20, || fma_peak_gflops(Isa::detect(), 0.05));
    println!(
        "peak: int8 {peak:.1} GOP/s ({}), fp32 {fma:.1} GFLOP/s ({:?}), ratio {:.2}",
        if vnni_available() {
            "AVX-512 VNNI vpdpbusd"
        } else {
            "portable"
        },
        Isa::detect(),
        peak / fma
    );
    let scale = [0.0005f32];
    let rq = Requant {
        scale: &scale,
        bias: None,
        zero: 3,
        lo: 3,
        hi: 255,
    };
    println!(
        "{:<24} {:>8} {:>9} {:>9} {:>9} {:>7}",
        "kernel", "isa", "median us", "best us", "GOP/s", "%peak"
    );
    let report = |name: &str, isa: Isa, ops: f64, (median, best): (f64, f64)| {
        let gops = ops / best / 1e9;
        println!(
            "{name:<24} {:>8} {:>9.1} {:>9.1} {gops:>9.1} {:>6.1}%",
            format!("{isa:?}"),
            median * 1e6,
            best * 1e6,
            100.0 * gops / peak
        );
    };
    // Pointwise (1×1) layers of MobileNetV2: (pixels, in, out).
    for (m, k, n) in [
        (112 * 112, 16, 96),
        (56 * 56, 24, 144),
        (56 * 56, 144, 24),
        (28 * 28, 32, 192),
        (14 * 14, 64, 384),
        (14 * 14, 384, 64),
        (7 * 7, 160, 960),
        (7 * 7, 960, 320),
        (7 * 7, 320, 1280),
        (1, 1280, 1000),
    ] {
        let a = bytes(m * k, 1);
        let w: Vec<i8> = bytes(k * n, 2).into_iter().map(|b| b as i8).collect();
        let packed = PackedI8::pack(&w, k, n);
        let mut out = vec![0u8; m * n];
        for isa in Isa::all_available() {
            let t = time_secs(secs, || {
                gemm_u8s8(isa, m, black_box(&a), k, 7, &packed, &mut out, n, &rq);
                black_box(&out);
            });
            report(
                &format!("gemm {m}x{k}x{n}"),
                isa,
                2.0 * (m * k * n) as f64,
                t,
            );
        }
    }
    // Depthwise 3×3 layers: (channels, size, stride).
    for (c, hw, s) in [
        (32, 112, 1),
        (96, 112, 2),
        (144, 56, 1),
        (576, 14, 1),
        (960, 7, 1),
    ] {
        let g = DwGeometry::new(c, hw, hw, [3, 3], [s, s], [1, 1], Padding::uniform(1)).unwrap();
        let x = bytes(hw * hw * c, 3);
        let w: Vec<i8> = bytes(c * 9, 4).into_iter().map(|b| b as i8).collect();
        let w = depthwise_u8_weights(&w, c, 9);
        let mut out = vec![0u8; g.oh * g.ow * c];
        for isa in Isa::all_available() {
            let t = time_secs(secs, || {
                depthwise_u8(isa, &g, black_box(&x), 5, &w, &rq, &mut out);
                black_box(&out);
            });
            let ops = 2.0 * (g.oh * g.ow * c * 9) as f64;
            report(&format!("dw3x3 s{s} {c}x{hw}"), isa, ops, t);
        }
    }
}
