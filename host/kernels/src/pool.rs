//! 2-D max/average pooling and global average pooling over NCHW.
//!
//! Windows are separable, so the in-bounds taps of every output row and
//! column are computed once per call; the loops then visit only real input
//! elements, however large the kernel or padding is.

use std::ops::Range;

use super::window::{AxisSpec, Padding, WindowAxis};
use super::{Tensor, TensorError, shape};

/// Parameters of [`max_pool2d`] and [`avg_pool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    /// `[y, x]` window size; each >= 1.
    pub kernel: [usize; 2],
    /// `[y, x]` step between windows; each >= 1.
    pub stride: [usize; 2],
    /// Padding around the input; padded cells never win a max.
    pub padding: Padding,
    /// `[y, x]` spacing between window taps; each >= 1.
    pub dilation: [usize; 2],
    /// Average pooling only: divide by the taps inside input plus padding
    /// (true) or by the taps inside the input (false).
    pub count_include_pad: bool,
    /// Round the output size up rather than down; a last window that would
    /// start in the end padding is dropped (PyTorch's rule).
    pub ceil_mode: bool,
}

impl Pool2dParams {
    /// A `kernel`-sized window with stride 1, no padding or dilation.
    pub fn new(kernel: [usize; 2]) -> Pool2dParams {
        Pool2dParams {
            kernel,
            stride: [1, 1],
            padding: Padding::default(),
            dilation: [1, 1],
            count_include_pad: false,
            ceil_mode: false,
        }
    }
}

/// A validated pooling, shared with the reference kernel.
pub(crate) struct PoolPlan<'a> {
    pub out_shape: Vec<usize>,
    pub h: WindowAxis,
    pub w: WindowAxis,
    pub input: &'a [f32],
}

pub(crate) fn plan_pool2d<'a>(
    op: &'static str,
    x: &'a Tensor,
    p: &Pool2dParams,
) -> Result<PoolPlan<'a>, TensorError> {
    let data = x.f32_for(op)?;
    let &[n, c, h, w] = x.shape() else {
        return Err(shape::rank_error(op, "input (NCHW)", x.shape(), 4));
    };
    if n == 0 || c == 0 {
        return Err(TensorError::InvalidArgument(format!(
            "{op}: batch and channels must be >= 1, got input {:?}",
            x.shape()
        )));
    }
    let axis = |name, input, i: usize, pads: (usize, usize)| {
        let a = WindowAxis::new(
            op,
            AxisSpec {
                name,
                input,
                kernel: p.kernel[i],
                stride: p.stride[i],
                dilation: p.dilation[i],
                pad_begin: pads.0,
                pad_end: pads.1,
                ceil_mode: p.ceil_mode,
            },
        )?;
        a.check_windows_nonempty(op, name)?;
        Ok::<_, TensorError>(a)
    };
    let ha = axis("height", h, 0, (p.padding.top, p.padding.bottom))?;
    let wa = axis("width", w, 1, (p.padding.left, p.padding.right))?;
    let out_shape = vec![n, c, ha.output, wa.output];
    shape::num_elements(op, &out_shape)?;
    Ok(PoolPlan {
        out_shape,
        h: ha,
        w: wa,
        input: data,
    })
}

/// Visits, for every output element in order, the in-bounds input rows of
/// its window (each as a strided row segment), letting `finish` reduce them.
fn pool_with(
    plan: &PoolPlan<'_>,
    init: f32,
    fold: impl Fn(f32, f32) -> f32,
    finish: impl Fn(f32, usize, usize) -> f32,
) -> Vec<f32> {
    let (h, w) = (&plan.h, &plan.w);
    let rows: Vec<Range<usize>> = (0..h.output).map(|o| h.taps_inside(o)).collect();
    let cols: Vec<Range<usize>> = (0..w.output).map(|o| w.taps_inside(o)).collect();
    let in_plane_len = h.input * w.input;
    let mut out = Vec::with_capacity(plan.out_shape.iter().product());
    for in_plane in plan.input.chunks_exact(in_plane_len) {
        for (oy, ry) in rows.iter().enumerate() {
            for (ox, rx) in cols.iter().enumerate() {
                let first_x = ox * w.stride + rx.start * w.dilation - w.pad_begin;
                let mut acc = init;
                for ky in ry.clone() {
                    let iy = oy * h.stride + ky * h.dilation - h.pad_begin;
                    let row = &in_plane[iy * w.input..][..w.input];
                    if w.dilation == 1 {
                        for &v in &row[first_x..first_x + rx.len()] {
                            acc = fold(acc, v);
                        }
                    } else {
                        for &v in row[first_x..].iter().step_by(w.dilation).take(rx.len()) {
                            acc = fold(acc, v);
                        }
                    }
                }
                out.push(finish(acc, oy, ox));
            }
        }
    }
    out
}

/// Max pooling over NCHW; padding never contributes.
pub fn max_pool2d(x: &Tensor, p: &Pool2dParams) -> Result<Tensor, TensorError> {
    let plan = plan_pool2d("max_pool2d", x, p)?;
    // Every window holds an input element (checked in the plan), so the
    // initial -inf never survives.
    let out = pool_with(&plan, f32::NEG_INFINITY, f32::max, |acc, _, _| acc);
    Ok(Tensor::from_f32_unchecked(plan.out_shape, out))
}

/// Average pooling over NCHW; see [`Pool2dParams::count_include_pad`].
pub fn avg_pool2d(x: &Tensor, p: &Pool2dParams) -> Result<Tensor, TensorError> {
    let plan = plan_pool2d("avg_pool2d", x, p)?;
    let (h, w) = (&plan.h, &plan.w);
    let (rows, cols): (Vec<usize>, Vec<usize>) = if p.count_include_pad {
        (
            (0..h.output).map(|o| h.taps_in_padded(o)).collect(),
            (0..w.output).map(|o| w.taps_in_padded(o)).collect(),
        )
    } else {
        (
            (0..h.output).map(|o| h.taps_inside(o).len()).collect(),
            (0..w.output).map(|o| w.taps_inside(o).len()).collect(),
        )
    };
    let out = pool_with(
        &plan,
        0.0,
        |a, v| a + v,
        |acc, oy, ox| acc / (rows[oy] * cols[ox]) as f32,
    );
    Ok(Tensor::from_f32_unchecked(plan.out_shape, out))
}

/// Checks a global pooling input; returns the spatial size per plane.
pub(crate) fn plan_global_pool(x: &Tensor) -> Result<(&[f32], usize, Vec<usize>), TensorError> {
    const OP: &str = "global_avg_pool";
    let data = x.f32_for(OP)?;
    if x.rank() < 3 {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: input must have rank >= 3 (N, C, spatial...), got shape {:?}",
            x.shape()
        )));
    }
    let spatial: usize = x.shape()[2..].iter().product();
    if spatial == 0 {
        return Err(TensorError::InvalidArgument(format!(
            "{OP}: spatial size of input {:?} is 0, the mean is undefined",
            x.shape()
        )));
    }
    let mut out_shape = x.shape().to_vec();
    out_shape[2..].fill(1);
    Ok((data, spatial, out_shape))
}

/// Mean over all spatial dimensions: `[N, C, H, W]` to `[N, C, 1, 1]`
/// (any rank of at least 3).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor, TensorError> {
    let (data, spatial, out_shape) = plan_global_pool(x)?;
    let out: Vec<f32> = data
        .chunks_exact(spatial)
        .map(|plane| {
            // Eight independent lanes vectorize and also keep the rounding
            // error of long sums down.
            let mut lanes = [0f32; 8];
            let mut chunks = plane.chunks_exact(8);
            for c in &mut chunks {
                for (l, &v) in lanes.iter_mut().zip(c) {
                    *l += v;
                }
            }
            let tail: f32 = chunks.remainder().iter().sum();
            (lanes.iter().sum::<f32>() + tail) / spatial as f32
        })
        .collect();
    Ok(Tensor::from_f32_unchecked(out_shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reference, testutil};
    use proptest::prelude::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    fn grid() -> Tensor {
        // 1 2 3
        // 4 5 6
        // 7 8 9
        t(
            &[1, 1, 3, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        )
    }

    #[test]
    fn max_pool_by_hand() {
        let p = Pool2dParams::new([2, 2]);
        let want = [5.0, 6.0, 8.0, 9.0];
        assert_eq!(max_pool2d(&grid(), &p).unwrap().as_f32().unwrap(), &want);
        assert_eq!(
            reference::max_pool2d(&grid(), &p)
                .unwrap()
                .as_f32()
                .unwrap(),
            &want
        );
        // Stride 2 with ceil mode keeps the partial last window.
        let p = Pool2dParams {
            stride: [2, 2],
            ceil_mode: true,
            ..Pool2dParams::new([2, 2])
        };
        let want = [5.0, 6.0, 8.0, 9.0];
        assert_eq!(max_pool2d(&grid(), &p).unwrap().as_f32().unwrap(), &want);
        assert_eq!(
            reference::max_pool2d(&grid(), &p)
                .unwrap()
                .as_f32()
                .unwrap(),
            &want
        );
        let p = Pool2dParams {
            stride: [2, 2],
            ..Pool2dParams::new([2, 2])
        };
        assert_eq!(max_pool2d(&grid(), &p).unwrap().as_f32().unwrap(), &[5.0]);
        // Dilation 2 picks the corners.
        let p = Pool2dParams {
            dilation: [2, 2],
            ..Pool2dParams::new([2, 2])
        };
        assert_eq!(max_pool2d(&grid(), &p).unwrap().as_f32().unwrap(), &[9.0]);
        assert_eq!(
            reference::max_pool2d(&grid(), &p)
                .unwrap()
                .as_f32()
                .unwrap(),
            &[9.0]
        );
    }

    #[test]
    fn rectangular_windows_by_hand() {
        // A 1x3 window stepping 2 down and 1 across: rows 0 and 2 of the grid, whole.
        let p = Pool2dParams {
            stride: [2, 1],
            ..Pool2dParams::new([1, 3])
        };
        // A 3x1 window stepping 1 down and 2 across: columns 0 and 2, whole.
        let q = Pool2dParams {
            stride: [1, 2],
            ..Pool2dParams::new([3, 1])
        };
        for (f, name) in [
            (max_pool2d as fn(&Tensor, &Pool2dParams) -> _, "fast"),
            (reference::max_pool2d, "reference"),
        ] {
            let y = f(&grid(), &p).unwrap();
            assert_eq!(y.shape(), &[1, 1, 2, 1], "{name}");
            assert_eq!(y.as_f32().unwrap(), &[3.0, 9.0], "{name}");
            let y = f(&grid(), &q).unwrap();
            assert_eq!(y.shape(), &[1, 1, 1, 2], "{name}");
            assert_eq!(y.as_f32().unwrap(), &[7.0, 9.0], "{name}");
        }
        assert_eq!(
            avg_pool2d(&grid(), &q).unwrap().as_f32().unwrap(),
            &[4.0, 6.0]
        );
    }

    #[test]
    fn avg_pool_by_hand() {
        let pad = Pool2dParams {
            padding: Padding::uniform(1),
            stride: [2, 2],
            ..Pool2dParams::new([3, 3])
        };
        // Top-left window covers 1,2,4,5 (4 real cells of 9).
        let excl = [3.0, 4.0, 6.0, 7.0];
        let incl = [12.0 / 9.0, 16.0 / 9.0, 24.0 / 9.0, 28.0 / 9.0];
        let p_incl = Pool2dParams {
            count_include_pad: true,
            ..pad
        };
        for (f, name) in [
            (avg_pool2d as fn(&Tensor, &Pool2dParams) -> _, "fast"),
            (reference::avg_pool2d, "reference"),
        ] {
            assert_eq!(f(&grid(), &pad).unwrap().as_f32().unwrap(), &excl, "{name}");
            let got = f(&grid(), &p_incl).unwrap();
            for (a, b) in got.as_f32().unwrap().iter().zip(incl) {
                assert!((a - b).abs() < 1e-6, "{name}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn global_avg_pool_by_hand() {
        let x = t(&[1, 2, 1, 2], &[1.0, 3.0, -1.0, -2.0]);
        let want = [2.0, -1.5];
        let y = global_avg_pool(&x).unwrap();
        assert_eq!(y.shape(), &[1, 2, 1, 1]);
        assert_eq!(y.as_f32().unwrap(), &want);
        assert_eq!(
            reference::global_avg_pool(&x).unwrap().as_f32().unwrap(),
            &want
        );
        assert!(global_avg_pool(&t(&[2, 2], &[0.0; 4])).is_err());
        assert!(global_avg_pool(&t(&[1, 1, 0], &[])).is_err());
    }

    #[test]
    fn pool_errors() {
        let x = grid();
        let big = Pool2dParams::new([4, 1]);
        assert!(
            matches!(max_pool2d(&x, &big), Err(TensorError::InvalidArgument(m)) if m.contains("< 1"))
        );
        let zero = Pool2dParams {
            stride: [0, 1],
            ..Pool2dParams::new([1, 1])
        };
        assert!(avg_pool2d(&x, &zero).is_err());
        // A window of pure padding.
        let padded = Pool2dParams {
            padding: Padding::uniform(2),
            ..Pool2dParams::new([2, 2])
        };
        assert!(
            matches!(max_pool2d(&x, &padded), Err(TensorError::InvalidArgument(m)) if m.contains("only padding"))
        );
        assert!(max_pool2d(&t(&[3, 3], &[0.0; 9]), &Pool2dParams::new([1, 1])).is_err());
        let huge = Pool2dParams {
            padding: Padding {
                top: 0,
                left: 0,
                bottom: 0,
                right: usize::MAX,
            },
            ..Pool2dParams::new([1, 1])
        };
        assert!(matches!(
            max_pool2d(&x, &huge),
            Err(TensorError::TooLarge(_))
        ));
        let u = Tensor::from_u8(vec![1, 1, 1, 1], vec![0]).unwrap();
        assert!(matches!(
            max_pool2d(&u, &Pool2dParams::new([1, 1])),
            Err(TensorError::UnsupportedType { .. })
        ));
    }

    prop_compose! {
        fn pool_case()(
            n in 1usize..3, c in 1usize..4, h in 1usize..14, w in 1usize..14,
            kernel in [1usize..5, 1usize..5], stride in [1usize..4, 1usize..4],
            dilation in [1usize..3, 1usize..3], pads in [0usize..3, 0usize..3, 0usize..3, 0usize..3],
            count_include_pad in any::<bool>(), ceil_mode in any::<bool>(), seed in any::<u64>(),
        ) -> (Tensor, Pool2dParams) {
            let p = Pool2dParams {
                kernel, stride, dilation, count_include_pad, ceil_mode,
                padding: Padding { top: pads[0], left: pads[1], bottom: pads[2], right: pads[3] },
            };
            (testutil::tensor(seed, &[n, c, h, w], 4.0), p)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn pools_match_reference((x, p) in pool_case()) {
            // Invalid geometry must be refused by both, identically.
            match (max_pool2d(&x, &p), reference::max_pool2d(&x, &p)) {
                (Ok(f), Ok(s)) => testutil::assert_close(&f, &s)?,
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (f, s) => prop_assert!(false, "fast {:?} vs reference {:?}", f.err(), s.err()),
            }
            if let Ok(f) = avg_pool2d(&x, &p) {
                testutil::assert_close(&f, &reference::avg_pool2d(&x, &p).unwrap())?;
            }
        }

        #[test]
        fn global_avg_pool_matches_reference(
            shape in prop::collection::vec(1usize..9, 3..5), seed in any::<u64>(),
        ) {
            let x = testutil::tensor(seed, &shape, 4.0);
            testutil::assert_close(&global_avg_pool(&x).unwrap(), &reference::global_avg_pool(&x).unwrap())?;
        }
    }
}
