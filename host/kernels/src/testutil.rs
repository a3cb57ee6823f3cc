//! Helpers shared by the tests of the kernel modules.

use proptest::test_runner::TestCaseError;

use super::{Activation, Tensor};

/// splitmix64 from `seed`: a deterministic stream, so a failing case reproduces from its seed.
fn splitmix64(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Deterministic pseudo-random values in `[-scale, scale)`; a seed keeps
/// proptest strategies simple (shapes are drawn first, data follows).
pub fn data(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    splitmix64(seed)
        .take(n)
        .map(|z| {
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Deterministic pseudo-random bytes (the low byte of each [`splitmix64`] value), for the
/// int8 kernels' operands.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    splitmix64(seed).take(n).map(|z| z as u8).collect()
}

/// An f32 tensor of `shape` filled by [`data`].
pub fn tensor(seed: u64, shape: &[usize], scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), data(seed, n, scale)).expect("test shape")
}

/// Same shape and every element within `1e-4 * max(1, |expected|)`.
pub fn assert_close(actual: &Tensor, expected: &Tensor) -> Result<(), TestCaseError> {
    if actual.shape() != expected.shape() {
        return Err(TestCaseError::fail(format!(
            "shape {:?} != expected {:?}",
            actual.shape(),
            expected.shape()
        )));
    }
    let (a, e) = (
        actual.as_f32().expect("f32 actual"),
        expected.as_f32().expect("f32 expected"),
    );
    for (i, (x, y)) in a.iter().zip(e).enumerate() {
        // Written so that NaN on either side fails.
        let ok = (x - y).abs() <= 1e-4 * y.abs().max(1.0);
        if !ok {
            return Err(TestCaseError::fail(format!(
                "element {i} of shape {:?}: {x} != expected {y}",
                actual.shape()
            )));
        }
    }
    Ok(())
}

/// Maps a drawn number onto every [`Activation`] variant.
pub fn activation(i: u8) -> Activation {
    match i % 5 {
        0 => Activation::None,
        1 => Activation::Relu,
        2 => Activation::Relu6,
        3 => Activation::Sigmoid,
        _ => Activation::Tanh,
    }
}
