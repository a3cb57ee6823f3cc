//! Matrix products: ONNX `Gemm`, numpy `matmul`, and the safe wrapper around
//! the `gemm` crate that convolution also uses.
//!
//! The `gemm` crate picks AVX2/AVX-512/NEON kernels at run time; it is called
//! single-threaded because the host runs many plugins side by side and does
//! its own scheduling.

use super::activation::Activation;
use super::{Tensor, TensorError, shape};

/// A strided read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `dst = (accumulate ? dst : 0) + alpha * lhs * rhs` for an `m×k` lhs and a
/// `k×n` rhs, where `dst` is row-major with row stride `dst_rs`.
pub(crate) struct Product<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs: Mat<'a>,
    pub rhs: Mat<'a>,
    pub alpha: f32,
}

impl Product<'_> {
    /// Runs the product into `dst`.
    ///
    /// # Panics
    ///
    /// If a view does not cover its matrix; callers derive the views from
    /// validated shapes, so this is an internal bug, never bad user input.
    pub fn run(&self, dst: &mut [f32], dst_rs: usize, accumulate: bool) {
        let (m, n, k) = (self.m, self.n, self.k);
        if m == 0 || n == 0 {
            return;
        }
        let span =
            |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
        assert!(
            span(m, n, dst_rs, 1) < dst.len(),
            "gemm: dst view out of bounds"
        );
        if k == 0 {
            if !accumulate {
                for row in dst.chunks_mut(dst_rs).take(m) {
                    row[..n].fill(0.0);
                }
            }
            return;
        }
        assert!(
            span(m, k, self.lhs.rs, self.lhs.cs) < self.lhs.data.len(),
            "gemm: lhs view out of bounds"
        );
        assert!(
            span(k, n, self.rhs.rs, self.rhs.cs) < self.rhs.data.len(),
            "gemm: rhs view out of bounds"
        );
        // SAFETY: the asserts above keep every index the views describe inside
        // their slices; `dst` is a unique borrow, so it aliases neither input;
        // strides fit in isize because they index existing allocations.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                dst_rs as isize,
                accumulate,
                self.lhs.data.as_ptr(),
                self.lhs.cs as isize,
                self.lhs.rs as isize,
                self.rhs.data.as_ptr(),
                self.rhs.cs as isize,
                self.rhs.rs as isize,
                1.0,
                self.alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// Parameters of [`gemm`](fn@gemm): `Y = alpha * A' * B' + beta * C`, where `A'` is
/// `A` or its transpose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmParams {
    /// Use `Aᵀ` (A stored as `[K, M]`).
    pub trans_a: bool,
    /// Use `Bᵀ` (B stored as `[N, K]`).
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `C`.
    pub beta: f32,
    /// Applied to `Y`.
    pub activation: Activation,
}

impl Default for GemmParams {
    fn default() -> Self {
        GemmParams {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 1.0,
            activation: Activation::None,
        }
    }
}

/// Validated operands of a `gemm` call, shared with the reference kernel.
pub(crate) struct GemmPlan<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A' as a strided view.
    pub a: Mat<'a>,
    /// B' as a strided view.
    pub b: Mat<'a>,
    /// C as a view broadcast to `[M, N]` (zero strides along broadcast axes).
    pub c: Option<Mat<'a>>,
}

pub(crate) fn plan_gemm<'a>(
    a: &'a Tensor,
    b: &'a Tensor,
    c: Option<&'a Tensor>,
    p: &GemmParams,
) -> Result<GemmPlan<'a>, TensorError> {
    const OP: &str = "gemm";
    let (da, db) = (a.f32_for(OP)?, b.f32_for(OP)?);
    shape::expect_rank(OP, "A", a.shape(), 2)?;
    shape::expect_rank(OP, "B", b.shape(), 2)?;
    let (ar, ac) = (a.shape()[0], a.shape()[1]);
    let (br, bc) = (b.shape()[0], b.shape()[1]);
    let (m, k, a_view) = if p.trans_a {
        (
            ac,
            ar,
            Mat {
                data: da,
                rs: 1,
                cs: ac,
            },
        )
    } else {
        (
            ar,
            ac,
            Mat {
                data: da,
                rs: ac,
                cs: 1,
            },
        )
    };
    let (k2, n, b_view) = if p.trans_b {
        (
            bc,
            br,
            Mat {
                data: db,
                rs: 1,
                cs: bc,
            },
        )
    } else {
        (
            br,
            bc,
            Mat {
                data: db,
                rs: bc,
                cs: 1,
            },
        )
    };
    if k != k2 {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: inner dimensions differ: A {:?} (trans_a={}) gives [{m}, {k}], B {:?} (trans_b={}) gives [{k2}, {n}]",
            a.shape(),
            p.trans_a,
            b.shape(),
            p.trans_b
        )));
    }
    shape::num_elements(OP, &[m, n])?;
    let c_view = match c {
        None => None,
        Some(c) => {
            let dc = c.f32_for(OP)?;
            let cs = c.shape();
            let fits = cs.len() <= 2
                && cs
                    .iter()
                    .rev()
                    .zip([n, m])
                    .all(|(&d, want)| d == 1 || d == want);
            if !fits {
                return Err(TensorError::ShapeMismatch(format!(
                    "{OP}: C of shape {cs:?} does not broadcast to the output [{m}, {n}]"
                )));
            }
            let st = shape::broadcast_strides(cs, &[m, n]);
            Some(Mat {
                data: dc,
                rs: st[0],
                cs: st[1],
            })
        }
    };
    Ok(GemmPlan {
        m,
        n,
        k,
        a: a_view,
        b: b_view,
        c: c_view,
    })
}

/// ONNX `Gemm`: `Y = activation(alpha * A' * B' + beta * C)` for 2-D `A`, `B`,
/// with `C` unidirectionally broadcastable to `[M, N]` (`[N]`, `[1, N]`,
/// `[M, 1]`, `[M, N]` or a scalar).
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    p: &GemmParams,
) -> Result<Tensor, TensorError> {
    let plan = plan_gemm(a, b, c, p)?;
    let (m, n) = (plan.m, plan.n);
    Ok(Tensor::f32_output(vec![m, n], |out| {
        if let Some(cv) = plan.c {
            // Seeding the output with beta*C lets the product accumulate onto it.
            for (i, row) in out.chunks_exact_mut(n.max(1)).enumerate().take(m) {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = p.beta * cv.data[i * cv.rs + j * cv.cs];
                }
            }
        }
        Product {
            m,
            n,
            k: plan.k,
            lhs: plan.a,
            rhs: plan.b,
            alpha: p.alpha,
        }
        .run(out, n, plan.c.is_some());
        p.activation.apply_slice(out);
    }))
}

/// Validated operands of a `matmul` call, shared with the reference kernel.
pub(crate) struct MatmulPlan {
    pub out_shape: Vec<usize>,
    /// Broadcast batch shape (dimensions before the last two).
    pub batch: Vec<usize>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `a` and `b` viewed with at least two dimensions (1-D promoted).
    pub a_shape: Vec<usize>,
    pub b_shape: Vec<usize>,
}

pub(crate) fn plan_matmul(a: &Tensor, b: &Tensor) -> Result<MatmulPlan, TensorError> {
    const OP: &str = "matmul";
    a.f32_for(OP)?;
    b.f32_for(OP)?;
    if a.rank() == 0 || b.rank() == 0 {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: operands must have rank >= 1, got {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    // numpy: a 1-D left operand is a row vector, a 1-D right one a column,
    // and the promoted dimension is dropped from the result.
    let a_shape = if a.rank() == 1 {
        vec![1, a.shape()[0]]
    } else {
        a.shape().to_vec()
    };
    let b_shape = if b.rank() == 1 {
        vec![b.shape()[0], 1]
    } else {
        b.shape().to_vec()
    };
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k) = (a_shape[ra - 2], a_shape[ra - 1]);
    let (k2, n) = (b_shape[rb - 2], b_shape[rb - 1]);
    if k != k2 {
        return Err(TensorError::ShapeMismatch(format!(
            "{OP}: inner dimensions differ: {:?} has {k} columns, {:?} has {k2} rows",
            a.shape(),
            b.shape()
        )));
    }
    let batch = shape::broadcast_shapes(OP, &a_shape[..ra - 2], &b_shape[..rb - 2])?;
    let mut out_shape = batch.clone();
    if a.rank() > 1 {
        out_shape.push(m);
    }
    if b.rank() > 1 {
        out_shape.push(n);
    }
    shape::num_elements(OP, &out_shape)?;
    Ok(MatmulPlan {
        out_shape,
        batch,
        m,
        n,
        k,
        a_shape,
        b_shape,
    })
}

/// numpy `matmul`: matrix product over the last two dimensions, with the
/// leading (batch) dimensions broadcast; 1-D operands are promoted.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, TensorError> {
    let plan = plan_matmul(a, b)?;
    let (da, db) = (a.f32_for("matmul")?, b.f32_for("matmul")?);
    let (m, n, k) = (plan.m, plan.n, plan.k);
    let batches: usize = plan.batch.iter().product();
    Ok(Tensor::f32_output(plan.out_shape.clone(), |out| {
        let a_batch = &plan.a_shape[..plan.a_shape.len() - 2];
        let b_batch = &plan.b_shape[..plan.b_shape.len() - 2];
        let b_batches: usize = b_batch.iter().product();
        if b_batches == 1 && a_batch.iter().product::<usize>() == batches {
            // A shared right operand (a linear layer on [B, S, K]): the batch
            // folds into the rows of one big product.
            Product {
                m: batches * m,
                n,
                k,
                lhs: Mat {
                    data: da,
                    rs: k,
                    cs: 1,
                },
                rhs: Mat {
                    data: db,
                    rs: n,
                    cs: 1,
                },
                alpha: 1.0,
            }
            .run(out, n, false);
        } else if m * n > 0 {
            let sa = shape::broadcast_strides(a_batch, &plan.batch);
            let sb = shape::broadcast_strides(b_batch, &plan.batch);
            for (bi, dst) in out.chunks_exact_mut(m * n).enumerate() {
                let (mut oa, mut ob, mut rest) = (0, 0, bi);
                for d in (0..plan.batch.len()).rev() {
                    let i = rest % plan.batch[d];
                    rest /= plan.batch[d];
                    oa += i * sa[d];
                    ob += i * sb[d];
                }
                Product {
                    m,
                    n,
                    k,
                    lhs: Mat {
                        data: &da[oa * m * k..],
                        rs: k,
                        cs: 1,
                    },
                    rhs: Mat {
                        data: &db[ob * k * n..],
                        rs: n,
                        cs: 1,
                    },
                    alpha: 1.0,
                }
                .run(dst, n, false);
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reference, testutil};
    use proptest::prelude::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn gemm_by_hand() {
        // [[1,2],[3,4]] x [[5,6],[7,8]] = [[19,22],[43,50]].
        let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[2, 2], &[5.0, 6.0, 7.0, 8.0]);
        let c = t(&[2], &[1.0, -100.0]);
        let p = GemmParams {
            alpha: 2.0,
            beta: 0.5,
            activation: Activation::Relu,
            ..GemmParams::default()
        };
        let want = [38.5, 0.0, 86.5, 50.0];
        assert_eq!(gemm(&a, &b, Some(&c), &p).unwrap().as_f32().unwrap(), &want);
        assert_eq!(
            reference::gemm(&a, &b, Some(&c), &p)
                .unwrap()
                .as_f32()
                .unwrap(),
            &want
        );
        // Transposes: Aᵀ = [[1,3],[2,4]], Bᵀ = [[5,7],[6,8]].
        let p = GemmParams {
            trans_a: true,
            trans_b: true,
            ..GemmParams::default()
        };
        let want = [23.0, 31.0, 34.0, 46.0];
        assert_eq!(gemm(&a, &b, None, &p).unwrap().as_f32().unwrap(), &want);
        assert_eq!(
            reference::gemm(&a, &b, None, &p).unwrap().as_f32().unwrap(),
            &want
        );
    }

    #[test]
    fn gemm_errors() {
        let a = t(&[2, 3], &[0.0; 6]);
        let p = GemmParams::default();
        let err = gemm(&a, &a, None, &p).unwrap_err();
        assert!(
            matches!(&err, TensorError::ShapeMismatch(m) if m.contains("inner")),
            "{err}"
        );
        let v = t(&[3], &[0.0; 3]);
        assert!(
            matches!(gemm(&v, &a, None, &p), Err(TensorError::ShapeMismatch(m)) if m.contains("rank 2"))
        );
        let p_t = GemmParams { trans_b: true, ..p };
        let bad_c = t(&[3], &[0.0; 3]);
        assert!(
            matches!(gemm(&a, &a, Some(&bad_c), &p_t), Err(TensorError::ShapeMismatch(m)) if m.contains("C of shape"))
        );
        let c3 = t(&[1, 2, 2], &[0.0; 4]);
        assert!(gemm(&a, &a, Some(&c3), &p_t).is_err());
        assert!(gemm(&a, &a, Some(&t(&[2, 1], &[1.0, 2.0])), &p_t).is_ok());
    }

    #[test]
    fn gemm_empty_inner_dimension() {
        let a = t(&[2, 0], &[]);
        let b = t(&[0, 3], &[]);
        let c = t(&[1], &[2.0]);
        let y = gemm(&a, &b, Some(&c), &GemmParams::default()).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[2.0; 6]);
        let y = gemm(&a, &b, None, &GemmParams::default()).unwrap();
        assert_eq!(y.as_f32().unwrap(), &[0.0; 6]);
    }

    #[test]
    fn matmul_by_hand() {
        let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let v = t(&[2], &[1.0, 1.0]);
        assert_eq!(matmul(&a, &v).unwrap().as_f32().unwrap(), &[3.0, 7.0]);
        assert_eq!(matmul(&a, &v).unwrap().shape(), &[2]);
        assert_eq!(matmul(&v, &a).unwrap().as_f32().unwrap(), &[4.0, 6.0]);
        assert_eq!(matmul(&v, &v).unwrap().shape(), &[] as &[usize]);
        // Batch [2,1,2] x [2,2] broadcast: the second matrix is the identity doubled.
        let batch = t(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let two = t(&[2, 2], &[2.0, 0.0, 0.0, 2.0]);
        let want = [2.0, 4.0, 6.0, 8.0];
        assert_eq!(matmul(&batch, &two).unwrap().as_f32().unwrap(), &want);
        assert_eq!(
            reference::matmul(&batch, &two).unwrap().as_f32().unwrap(),
            &want
        );
        assert_eq!(
            reference::matmul(&a, &v).unwrap().as_f32().unwrap(),
            &[3.0, 7.0]
        );
    }

    #[test]
    fn matmul_errors() {
        let a = t(&[2, 3], &[0.0; 6]);
        assert!(
            matches!(matmul(&a, &a), Err(TensorError::ShapeMismatch(m)) if m.contains("inner"))
        );
        let s = t(&[], &[1.0]);
        assert!(matmul(&s, &a).is_err());
        let b1 = t(&[2, 3, 2], &[0.0; 12]);
        let b2 = t(&[3, 2, 3], &[0.0; 18]);
        assert!(
            matches!(matmul(&b1, &b2), Err(TensorError::ShapeMismatch(m)) if m.contains("broadcast"))
        );
        let i = Tensor::from_i64(vec![3, 2], vec![0; 6]).unwrap();
        assert!(matches!(
            matmul(&a, &i),
            Err(TensorError::UnsupportedType { op: "matmul", .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn gemm_matches_reference(
            m in 1usize..20, n in 1usize..20, k in 1usize..40,
            trans_a in any::<bool>(), trans_b in any::<bool>(),
            alpha in -2.0f32..2.0, beta in -2.0f32..2.0,
            c_kind in 0u8..5, act in 0u8..5, seed in any::<u64>(),
        ) {
            let a = testutil::tensor(seed, &if trans_a { [k, m] } else { [m, k] }, 1.0);
            let b = testutil::tensor(seed ^ 1, &if trans_b { [n, k] } else { [k, n] }, 1.0);
            let c_shape: Option<Vec<usize>> = match c_kind {
                0 => None,
                1 => Some(vec![n]),
                2 => Some(vec![1, n]),
                3 => Some(vec![m, 1]),
                _ => Some(vec![m, n]),
            };
            let c = c_shape.map(|s| testutil::tensor(seed ^ 2, &s, 1.0));
            let p = GemmParams { trans_a, trans_b, alpha, beta, activation: testutil::activation(act) };
            let fast = gemm(&a, &b, c.as_ref(), &p).unwrap();
            let slow = reference::gemm(&a, &b, c.as_ref(), &p).unwrap();
            testutil::assert_close(&fast, &slow)?;
        }

        #[test]
        fn matmul_matches_reference(
            batch in prop::collection::vec((1usize..4, 0u8..3), 0..3),
            m in 1usize..9, n in 1usize..9, k in 1usize..17,
            a_vec in any::<bool>(), b_vec in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut sa: Vec<usize> = batch.iter().map(|&(d, w)| if w == 1 { 1 } else { d }).collect();
            let mut sb: Vec<usize> = batch.iter().map(|&(d, w)| if w == 2 { 1 } else { d }).collect();
            // Sometimes drop b's batch dims entirely (the folded fast path).
            if b_vec && !a_vec {
                sb.clear();
            }
            sa.extend([m, k]);
            sb.extend([k, n]);
            if a_vec && batch.is_empty() {
                sa = vec![k];
            }
            let a = testutil::tensor(seed, &sa, 1.0);
            let b = testutil::tensor(seed ^ 1, &sb, 1.0);
            let fast = matmul(&a, &b).unwrap();
            let slow = reference::matmul(&a, &b).unwrap();
            testutil::assert_close(&fast, &slow)?;
        }
    }
}
