//! `cargo bench -p edgeplug-host --bench native`: the fast conv kernels on
//! every ISA this CPU has, and the fixture models on the native backend and
//! on tract (batch 1, one thread, the first fixture input row).
//!
//! The `channels_last` group times the kernels the native backend runs on
//! MobileNet-class models, at their layer shapes; its throughput ("elem/s")
//! counts FLOPs (a multiply-add is two), so it reads as GFLOP/s, to set
//! beside `edgeplug bench --peak`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use edgeplug_kernels::fast::{self, AlignedBuf, DwGeometry, Epilogue, Isa, PackedLhs, PackedRhs};
use edgeplug_kernels::{Padding, Tensor};
use edgeplug_models::model::Model;
use edgeplug_models::native::NativeModel;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// `data` in a 64-byte aligned buffer, as the native backend's arenas hold
/// activations (a plain `Vec` splits every 16-lane load across two lines).
fn aligned(n: usize, seed: u32) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(n);
    buf.copy_from_slice(&data(n, seed));
    buf
}

/// Times `run` as `name/<ISA>` on every ISA this CPU has.
fn per_isa(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut run: impl FnMut(Isa)) {
    for isa in Isa::all_available() {
        g.bench_function(BenchmarkId::new(name, format!("{isa:?}")), |b| {
            b.iter(|| run(isa))
        });
    }
}

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    let relu6 = Epilogue {
        lo: 0.0,
        hi: 6.0,
        ..Epilogue::default()
    };
    for (name, ch, hw, stride) in [
        ("dw3x3_s1_32x112", 32, 112, 1),
        ("dw3x3_s2_96x112", 96, 112, 2),
        ("dw3x3_s1_576x14", 576, 14, 1),
    ] {
        let geom =
            DwGeometry::new(ch, hw, hw, [3, 3], [stride; 2], [1, 1], Padding::uniform(1)).unwrap();
        let x = data(ch * hw * hw, 1);
        let w = data(ch * 9, 2);
        let bias = data(ch, 3);
        let mut out = vec![0f32; ch * geom.oh * geom.ow];
        let mut scratch = Vec::new();
        let ep = Epilogue {
            bias: Some(&bias),
            ..relu6
        };
        per_isa(&mut g, name, |isa| {
            fast::depthwise(isa, &geom, black_box(&x), &w, &ep, &mut out, &mut scratch);
        });
    }
    for (name, cin, cout, hw) in [
        ("pw_32to16_112", 32, 16, 112 * 112),
        ("pw_16to96_112", 16, 96, 112 * 112),
        ("pw_96to576_14", 96, 576, 14 * 14),
        ("pw_960to320_7", 960, 320, 7 * 7),
    ] {
        let x = data(cin * hw, 4);
        let w = PackedLhs::pack(&data(cin * cout, 5), cout, cin);
        let bias = data(cout, 6);
        let mut out = vec![0f32; cout * hw];
        let ep = Epilogue {
            bias: Some(&bias),
            ..relu6
        };
        per_isa(&mut g, name, |isa| {
            fast::gemm_packed(isa, &w, black_box(&x), hw, hw, &mut out, hw, &ep);
        });
    }
    g.finish();
}

fn channels_last(c: &mut Criterion) {
    let mut g = c.benchmark_group("channels_last");
    let relu6 = Epilogue {
        lo: 0.0,
        hi: 6.0,
        ..Epilogue::default()
    };
    // Dense 3x3 convolutions reading an NCHW image: MobileNetV2's and
    // EfficientNet-Lite0's stem (3 -> 32, stride 2, 224x224).
    for (name, cin, cout, hw, stride) in [
        ("stem3x3_s2_3to32_224", 3, 32, 224, 2),
        ("dense3x3_s1_3to32_224", 3, 32, 224, 1),
    ] {
        let geom = DwGeometry::new(
            cin,
            hw,
            hw,
            [3, 3],
            [stride; 2],
            [1, 1],
            Padding::uniform(1),
        )
        .unwrap();
        let x = aligned(cin * hw * hw, 7);
        let w = PackedRhs::pack_transposed(&data(cout * cin * 9, 8), cout, cin * 9);
        let bias = data(cout, 9);
        let mut out = AlignedBuf::zeroed(geom.oh * geom.ow * cout);
        let mut col = AlignedBuf::zeroed(0);
        let ep = Epilogue {
            bias: Some(&bias),
            ..relu6
        };
        g.throughput(Throughput::Elements(
            (2 * geom.oh * geom.ow * cout * cin * 9) as u64,
        ));
        per_isa(&mut g, name, |isa| {
            fast::conv_nchw(isa, &geom, black_box(&x), &w, &ep, &mut out, &mut col);
        });
    }
    for (name, cin, cout, pixels) in [
        ("pw_16to96_112", 16, 96, 112 * 112),
        ("pw_32to16_112", 32, 16, 112 * 112),
        ("pw_144to24_56", 144, 24, 56 * 56),
        ("pw_96to576_14", 96, 576, 14 * 14),
        ("pw_192to1152_7", 192, 1152, 7 * 7),
        ("pw_1152to192_7", 1152, 192, 7 * 7),
    ] {
        let x = aligned(pixels * cin, 4);
        let w = PackedRhs::pack(&data(cin * cout, 5), cin, cout);
        let bias = data(cout, 6);
        let mut out = AlignedBuf::zeroed(pixels * cout);
        let ep = Epilogue {
            bias: Some(&bias),
            ..relu6
        };
        g.throughput(Throughput::Elements((2 * pixels * cin * cout) as u64));
        per_isa(&mut g, name, |isa| {
            fast::gemm_rows(isa, pixels, black_box(&x), cin, &w, &mut out, cout, &ep);
        });
    }
    // Depthwise convolutions, channels-last, at EfficientNet-Lite0's 5x5 shapes and
    // MobileNetV2's first 3x3.
    // The `_prepadded` cases read an input already padded with zeros: every
    // window inside the image, the same output size and work.
    for (name, ch, hw, k, stride, pad) in [
        ("dw3x3_s1_c32_112", 32, 112, 3, 1, 1),
        ("dw5x5_s1_c240_28", 240, 28, 5, 1, 2),
        ("dw5x5_s1_c672_14", 672, 14, 5, 1, 2),
        ("dw5x5_s1_c672_14_prepadded", 672, 18, 5, 1, 0),
        ("dw5x5_s1_c1152_7", 1152, 7, 5, 1, 2),
        ("dw5x5_s1_c1152_7_prepadded", 1152, 11, 5, 1, 0),
        ("dw3x3_s2_c96_112", 96, 112, 3, 2, 1),
        ("dw3x3_s1_c144_56", 144, 56, 3, 1, 1),
        ("dw3x3_s1_c192_28", 192, 28, 3, 1, 1),
        ("dw3x3_s1_c576_14", 576, 14, 3, 1, 1),
        ("dw3x3_s1_c960_7", 960, 7, 3, 1, 1),
    ] {
        let pad = Padding::uniform(pad);
        let geom = DwGeometry::new(ch, hw, hw, [k, k], [stride; 2], [1, 1], pad).unwrap();
        let x = aligned(hw * hw * ch, 10);
        let mut w = AlignedBuf::zeroed(ch * k * k);
        w.copy_from_slice(&fast::depthwise_nhwc_weights(
            &data(ch * k * k, 11),
            ch,
            k * k,
        ));
        let bias = data(ch, 12);
        let mut out = AlignedBuf::zeroed(geom.oh * geom.ow * ch);
        let ep = Epilogue {
            bias: Some(&bias),
            ..relu6
        };
        g.throughput(Throughput::Elements(
            (2 * geom.oh * geom.ow * ch * k * k) as u64,
        ));
        per_isa(&mut g, name, |isa| {
            fast::depthwise_nhwc(isa, &geom, black_box(&x), &w, &ep, &mut out);
        });
    }
    g.finish();
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn models(c: &mut Criterion) {
    let mut g = c.benchmark_group("models");
    g.sample_size(30);
    for name in [
        "digits_cnn",
        "mobilenetv2",
        "efficientnet_lite0",
        "sunspots_lstm",
    ] {
        let Ok(bytes) = std::fs::read(fixture(&format!("{name}.onnx"))) else {
            eprintln!("skipping {name}: fixture missing");
            continue;
        };
        let tract = Model::load(name, &bytes).expect("tract loads every fixture");
        let shape: Vec<usize> = tract.inputs()[0]
            .shape
            .iter()
            .map(|&d| d as usize)
            .collect();
        let input = Tensor::zeros(shape).unwrap();
        g.bench_function(BenchmarkId::new(name, "tract"), |b| {
            b.iter(|| tract.run(&[black_box(&input)]).unwrap())
        });
        match NativeModel::load(&bytes) {
            Ok(native) => {
                g.bench_function(BenchmarkId::new(name, "native"), |b| {
                    b.iter(|| native.run(&[black_box(&input)]).unwrap())
                });
            }
            Err(e) => eprintln!("{name}: native backend falls back to tract: {e}"),
        }
    }
    g.finish();
}

criterion_group!(benches, channels_last, kernels, models);
criterion_main!(benches);
