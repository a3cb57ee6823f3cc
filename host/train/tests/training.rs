//! The head and the optimizers against references: finite differences for the gradient,
//! numpy for three steps of each optimizer (fixtures/make_fixtures.py), and the refusals.

use edgeplug_kernels::Tensor;
use edgeplug_train::{
    Grads, Head, HeadSpec, Optimizer, OptimizerConfig, OptimizerKind, TrainError,
};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn kind_of(opt: &Value) -> OptimizerKind {
    let f = |k: &str| opt[k].as_f64().unwrap() as f32;
    match opt["kind"].as_str().unwrap() {
        "sgd" => OptimizerKind::Sgd,
        "momentum" => OptimizerKind::Momentum { beta: f("beta") },
        "adam" => OptimizerKind::Adam {
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
        },
        "adamw" => OptimizerKind::AdamW {
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        },
        other => panic!("unknown optimizer {other}"),
    }
}

#[test]
fn three_steps_of_each_optimizer_match_numpy_within_1e_5() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/optimizer_steps.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let spec = HeadSpec {
            features: case["features"].as_u64().unwrap() as usize,
            classes: case["classes"].as_u64().unwrap() as usize,
            hidden: case["hidden"].as_u64().map(|h| h as usize),
        };
        let params = case["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let mut head = Head::from_params(spec, params).unwrap();
        let labels: Vec<usize> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_u64().unwrap() as usize)
            .collect();
        let x = Tensor::from_f32(vec![labels.len(), spec.features], floats(&case["x"])).unwrap();
        let opt = &case["optimizer"];
        let mut optimizer = Optimizer::new(OptimizerConfig {
            kind: kind_of(opt),
            lr: opt["lr"].as_f64().unwrap() as f32,
            clip_norm: opt["clip_norm"].as_f64().map(|c| c as f32),
        })
        .unwrap();
        for (t, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let (loss, grads) = head.loss_and_grad(&x, &labels).unwrap();
            let want_loss = step["loss"].as_f64().unwrap() as f32;
            assert!(
                (loss - want_loss).abs() <= 1e-5,
                "{opt} step {t}: loss {loss} vs {want_loss}"
            );
            let report = optimizer.step(&mut head, &grads).unwrap();
            if opt["clip_norm"].is_number() {
                assert!(report.clipped, "the clip norm is below the gradient's");
            }
            for (p, (got, want)) in head
                .params()
                .iter()
                .zip(step["params"].as_array().unwrap())
                .enumerate()
            {
                let worst = got
                    .as_f32()
                    .unwrap()
                    .iter()
                    .zip(floats(want))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst <= 1e-5, "{opt} step {t} param {p}: off by {worst}");
            }
        }
        assert_eq!(optimizer.steps(), 3);
    }
}

/// The loss in f64, straight from the definition, for finite differences.
fn loss_f64(spec: HeadSpec, params: &[Vec<f64>], x: &[f64], labels: &[usize]) -> f64 {
    let n = labels.len();
    let affine = |input: &[f64], w: &[f64], b: &[f64], ins: usize, outs: usize| {
        let mut out = vec![0.0; n * outs];
        for r in 0..n {
            for o in 0..outs {
                out[r * outs + o] = b[o]
                    + (0..ins)
                        .map(|i| input[r * ins + i] * w[i * outs + o])
                        .sum::<f64>();
            }
        }
        out
    };
    let logits = match spec.hidden {
        None => affine(x, &params[0], &params[1], spec.features, spec.classes),
        Some(h) => {
            let hidden: Vec<f64> = affine(x, &params[0], &params[1], spec.features, h)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            affine(&hidden, &params[2], &params[3], h, spec.classes)
        }
    };
    let mut loss = 0.0;
    for (row, label) in logits.chunks(spec.classes).zip(labels) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss += sum.ln() - (row[*label] - max);
    }
    loss / n as f64
}

#[test]
fn the_gradient_matches_finite_differences_within_1e_3() {
    for hidden in [None, Some(7)] {
        let spec = HeadSpec {
            features: 9,
            classes: 5,
            hidden,
        };
        let head = Head::new(spec, 42).unwrap();
        let mut rng = edgeplug_train::rng::SplitMix64::new(3);
        let n = 6;
        let x: Vec<f32> = (0..n * spec.features)
            .map(|_| rng.next_symmetric() * 2.0)
            .collect();
        let labels: Vec<usize> = (0..n).map(|i| (i * 3) % spec.classes).collect();
        let (_, Grads(grads)) = head
            .loss_and_grad(
                &Tensor::from_f32(vec![n, spec.features], x.clone()).unwrap(),
                &labels,
            )
            .unwrap();
        let params: Vec<Vec<f64>> = head
            .params()
            .iter()
            .map(|p| p.as_f32().unwrap().iter().map(|&v| f64::from(v)).collect())
            .collect();
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let eps = 1e-6;
        let mut worst = 0f64;
        for (p, grad) in grads.iter().enumerate() {
            for i in 0..grad.len() {
                let mut plus = params.clone();
                plus[p][i] += eps;
                let mut minus = params.clone();
                minus[p][i] -= eps;
                let numeric = (loss_f64(spec, &plus, &x64, &labels)
                    - loss_f64(spec, &minus, &x64, &labels))
                    / (2.0 * eps);
                let analytic = f64::from(grad[i]);
                let relative =
                    (analytic - numeric).abs() / numeric.abs().max(analytic.abs()).max(1e-3);
                worst = worst.max(relative);
            }
        }
        assert!(worst < 1e-3, "{spec:?}: worst relative error {worst:e}");
    }
}

#[test]
fn the_same_seed_gives_bit_identical_weights_after_training() {
    let train = |seed: u64| {
        let spec = HeadSpec {
            features: 16,
            classes: 10,
            hidden: Some(12),
        };
        let mut head = Head::new(spec, seed).unwrap();
        let mut optimizer = Optimizer::new(OptimizerConfig {
            kind: OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            lr: 0.01,
            clip_norm: Some(1.0),
        })
        .unwrap();
        let mut rng = edgeplug_train::rng::SplitMix64::new(99);
        let x: Vec<f32> = (0..32 * 16).map(|_| rng.next_symmetric()).collect();
        let x = Tensor::from_f32(vec![32, 16], x).unwrap();
        let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();
        for _ in 0..20 {
            let (_, grads) = head.loss_and_grad(&x, &labels).unwrap();
            optimizer.step(&mut head, &grads).unwrap();
        }
        head.params()
            .iter()
            .flat_map(|p| {
                p.as_f32()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<u32>>()
    };
    assert_eq!(train(7), train(7));
    assert_ne!(train(7), train(8), "another seed, other weights");
}

#[test]
fn a_non_finite_input_or_step_is_refused_and_changes_nothing() {
    let spec = HeadSpec {
        features: 4,
        classes: 3,
        hidden: None,
    };
    let mut head = Head::new(spec, 1).unwrap();
    let before: Vec<Vec<f32>> = head
        .params()
        .iter()
        .map(|p| p.as_f32().unwrap().to_vec())
        .collect();
    let mut optimizer = Optimizer::new(OptimizerConfig {
        kind: OptimizerKind::Momentum { beta: 0.9 },
        lr: 0.1,
        clip_norm: None,
    })
    .unwrap();
    let nan = Tensor::from_f32(vec![1, 4], vec![1.0, f32::NAN, 0.0, 0.0]).unwrap();
    assert_eq!(
        head.loss_and_grad(&nan, &[0]).unwrap_err(),
        TrainError::NonFinite("an input feature")
    );
    // A gradient that is not finite (as a NaN input would give) is refused by the step.
    let poisoned = Grads(vec![vec![f32::NAN; 12], vec![0.0; 3]]);
    assert_eq!(
        optimizer.step(&mut head, &poisoned).unwrap_err(),
        TrainError::NonFinite("the gradient")
    );
    // So is a step that would overflow the weights.
    let huge = Grads(vec![vec![f32::MAX; 12], vec![0.0; 3]]);
    assert!(optimizer.step(&mut head, &huge).is_err());
    let after: Vec<Vec<f32>> = head
        .params()
        .iter()
        .map(|p| p.as_f32().unwrap().to_vec())
        .collect();
    assert_eq!(before, after, "the weights are untouched");
    assert_eq!(optimizer.steps(), 0, "and so is the optimizer's state");
    assert_eq!(optimizer.byte_size(), 0);
    // Labels and shapes are checked too.
    let x = Tensor::from_f32(vec![1, 4], vec![0.0; 4]).unwrap();
    assert!(matches!(
        head.loss_and_grad(&x, &[3]),
        Err(TrainError::Label { label: 3, .. })
    ));
    let wide = Tensor::from_f32(vec![1, 5], vec![0.0; 5]).unwrap();
    assert!(matches!(
        head.loss_and_grad(&wide, &[0]),
        Err(TrainError::Shape(_))
    ));
    assert!(
        Optimizer::new(OptimizerConfig {
            kind: OptimizerKind::Sgd,
            lr: -1.0,
            clip_norm: None
        })
        .is_err()
    );
}

#[test]
fn training_learns_a_separable_problem() {
    // Ten well-separated clusters: a few hundred Adam steps classify them all.
    let spec = HeadSpec {
        features: 8,
        classes: 10,
        hidden: None,
    };
    let mut head = Head::new(spec, 5).unwrap();
    let mut optimizer = Optimizer::new(OptimizerConfig {
        kind: OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        lr: 0.05,
        clip_norm: None,
    })
    .unwrap();
    let mut rng = edgeplug_train::rng::SplitMix64::new(11);
    let centers: Vec<f32> = (0..10 * 8).map(|_| rng.next_symmetric() * 3.0).collect();
    let labels: Vec<usize> = (0..200).map(|i| i % 10).collect();
    let x: Vec<f32> = labels
        .iter()
        .flat_map(|&l| {
            (0..8)
                .map(|j| centers[l * 8 + j] + 0.1 * rng.next_symmetric())
                .collect::<Vec<_>>()
        })
        .collect();
    let x = Tensor::from_f32(vec![200, 8], x).unwrap();
    let before = head.evaluate(&x, &labels).unwrap();
    for _ in 0..300 {
        let (_, grads) = head.loss_and_grad(&x, &labels).unwrap();
        optimizer.step(&mut head, &grads).unwrap();
    }
    let after = head.evaluate(&x, &labels).unwrap();
    assert!(after.loss < before.loss / 10.0, "{before:?} -> {after:?}");
    assert_eq!(after.correct, 200, "{after:?}");
    assert_eq!(
        optimizer.byte_size(),
        2 * head.byte_size(),
        "Adam keeps two moments"
    );
}
