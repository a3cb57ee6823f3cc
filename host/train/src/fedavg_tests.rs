use super::*;

const SPEC: HeadSpec = HeadSpec {
    features: 2,
    classes: 2,
    hidden: None,
};

fn head(w: [f32; 4], b: [f32; 2]) -> Head {
    Head::from_params(SPEC, vec![w.to_vec(), b.to_vec()]).unwrap()
}

fn delta(w: [f32; 4], b: [f32; 2]) -> Delta {
    Delta::from_params(SPEC, vec![w.to_vec(), b.to_vec()]).unwrap()
}

fn flat(head: &Head) -> Vec<f32> {
    head.params()
        .iter()
        .flat_map(|p| p.as_f32().unwrap().to_vec())
        .collect()
}

#[test]
fn a_delta_is_local_minus_global_and_applying_it_gives_local_back() {
    let global = head([1.0, 2.0, 3.0, 4.0], [0.5, -0.5]);
    let local = head([1.5, 1.0, 3.0, 6.0], [0.0, 0.25]);
    let d = Delta::between(&local, &global).unwrap();
    assert_eq!(d.params(), &[vec![0.5, -1.0, 0.0, 2.0], vec![-0.5, 0.75]]);
    assert_eq!(flat(&apply(&global, &d).unwrap()), flat(&local));
}

#[test]
fn the_average_is_weighted_by_sample_counts() {
    let global = head([1.0, 2.0, 3.0, 4.0], [0.5, -0.5]);
    let a = delta([1.0, 1.0, 1.0, 1.0], [1.0, -2.0]);
    let b = delta([3.0, 3.0, 3.0, -1.0], [3.0, 2.0]);
    // By hand: (1·a + 3·b) / 4 = [2.5, 2.5, 2.5, -0.5], [2.5, 1.0]; plus the global head.
    let averaged = average(
        &global,
        &[
            Contribution {
                samples: 1,
                delta: &a,
            },
            Contribution {
                samples: 3,
                delta: &b,
            },
        ],
    )
    .unwrap();
    assert_eq!(flat(&averaged), vec![3.5, 4.5, 5.5, 3.5, 3.0, 0.5]);
    // One contribution alone is applied whole, whatever its count.
    let alone = average(
        &global,
        &[Contribution {
            samples: 7,
            delta: &a,
        }],
    )
    .unwrap();
    assert_eq!(flat(&alone), vec![2.0, 3.0, 4.0, 5.0, 1.5, -2.5]);
}

#[test]
fn clipping_scales_down_to_the_norm_and_never_up() {
    let mut d = delta([3.0, 0.0, 0.0, 0.0], [4.0, 0.0]);
    assert_eq!(d.norm(), 5.0);
    assert_eq!(d.clip(1.0).unwrap(), 5.0);
    assert!((d.norm() - 1.0).abs() < 1e-6, "{}", d.norm());
    assert!((d.params()[0][0] - 0.6).abs() < 1e-6);
    assert!((d.params()[1][0] - 0.8).abs() < 1e-6);
    let before = d.clone();
    assert!((d.clip(10.0).unwrap() - 1.0).abs() < 1e-6);
    assert_eq!(d, before);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(d.clip(bad), Err(TrainError::Config(_))), "{bad}");
    }
}

#[test]
fn the_gaussian_stream_has_mean_zero_and_variance_one() {
    let mut g = Gaussian::new(42);
    let n = 200_000;
    let draws: Vec<f64> = (0..n).map(|_| g.next()).collect();
    let mean = draws.iter().sum::<f64>() / n as f64;
    let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // The standard error of the mean is 1/sqrt(n) ≈ 0.0022, of the variance sqrt(2/n) ≈ 0.0032.
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var - 1.0).abs() < 0.015, "variance {var}");
    // About 68.27 % within one deviation, 95.45 % within two.
    let within = |k: f64| draws.iter().filter(|x| x.abs() < k).count() as f64 / n as f64;
    assert!((within(1.0) - 0.6827).abs() < 0.005, "{}", within(1.0));
    assert!((within(2.0) - 0.9545).abs() < 0.003, "{}", within(2.0));
}

#[test]
fn privatized_noise_has_deviation_multiplier_times_clip() {
    let spec = HeadSpec {
        features: 100,
        classes: 100,
        hidden: None,
    };
    let zero = |spec: HeadSpec| {
        Delta::from_params(
            spec,
            spec.param_shapes()
                .iter()
                .map(|s| vec![0.0; s.iter().product()])
                .collect(),
        )
        .unwrap()
    };
    let mut d = zero(spec);
    assert_eq!(d.privatize(2.0, 0.5, 9).unwrap(), 0.0);
    let values: Vec<f64> = d.params().iter().flatten().map(|v| f64::from(*v)).collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // σ = 0.5 × 2 = 1 over 10 100 values: the deviation's standard error is ≈ 0.007.
    assert!(mean.abs() < 0.04, "mean {mean}");
    assert!((sd - 1.0).abs() < 0.03, "deviation {sd}");
}

#[test]
fn the_same_seed_gives_bit_identical_noise_and_another_seed_does_not() {
    let noisy = |seed| {
        let mut d = delta([3.0, 1.0, -2.0, 0.5], [4.0, 0.0]);
        d.privatize(1.0, 1.1, seed).unwrap();
        d.params()
            .iter()
            .flatten()
            .map(|v| v.to_bits())
            .collect::<Vec<u32>>()
    };
    assert_eq!(noisy(5), noisy(5));
    assert_ne!(noisy(5), noisy(6));
}

#[test]
fn the_accountant_matches_an_independent_computation() {
    // Computed in python3 with numpy over the same grid of orders:
    //   alphas = np.concatenate([1 + np.arange(1, 100) / 10.0, np.arange(12, 64)])
    //   eps = T * alphas / (2 * z * z) + np.log(1 / d) / (alphas - 1); eps.min(), alphas[argmin]
    for (z, rounds, delta, epsilon, order) in [
        (1.0, 5, 1e-5, 13.232345459509633, 3.1),
        (1.1, 100, 1e-5, 85.00932200432061, 1.5),
        (4.0, 1, 1e-5, 1.230943445524749, 20.0),
        (0.5, 10, 1e-6, 53.26938819745534, 1.8),
    ] {
        let p = privacy_spent(z, rounds, delta).unwrap();
        assert!(
            (p.epsilon - epsilon).abs() < 1e-9,
            "z {z} T {rounds}: {p:?}"
        );
        assert!((p.order - order).abs() < 1e-9, "{p:?}");
        assert_eq!(p.delta, delta);
    }
    // More rounds never cost less.
    let eps = |t| privacy_spent(1.0, t, 1e-5).unwrap().epsilon;
    assert!(eps(1) < eps(2) && eps(2) < eps(10));
    assert_eq!(eps(0), 0.0);
    assert!(privacy_spent(0.0, 1, 1e-5).is_err());
    assert!(privacy_spent(1.0, 1, 1.0).is_err());
    assert!(privacy_spent(1.0, 1, 0.0).is_err());
}

#[test]
fn mismatched_specs_and_non_finite_values_are_refused() {
    let global = head([1.0, 2.0, 3.0, 4.0], [0.5, -0.5]);
    let other_spec = HeadSpec {
        features: 2,
        classes: 2,
        hidden: Some(3),
    };
    let other = Head::new(other_spec, 1).unwrap();
    assert!(matches!(
        Delta::between(&other, &global),
        Err(TrainError::Shape(_))
    ));
    let foreign = Delta::between(&other, &other).unwrap();
    let contribution = |delta| Contribution { samples: 1, delta };
    assert!(matches!(
        average(&global, &[contribution(&foreign)]),
        Err(TrainError::Shape(_))
    ));
    assert!(matches!(
        apply(&global, &foreign),
        Err(TrainError::Shape(_))
    ));
    // Wrong sizes and non-finite values.
    assert!(Delta::from_params(SPEC, vec![vec![0.0; 4]]).is_err());
    assert!(Delta::from_params(SPEC, vec![vec![0.0; 3], vec![0.0; 2]]).is_err());
    assert!(matches!(
        Delta::from_params(SPEC, vec![vec![0.0, f32::NAN, 0.0, 0.0], vec![0.0; 2]]),
        Err(TrainError::NonFinite(_))
    ));
    assert!(matches!(
        Delta::from_params(SPEC, vec![vec![0.0; 4], vec![f32::INFINITY, 0.0]]),
        Err(TrainError::NonFinite(_))
    ));
    // No samples to weigh by, and an average that overflows f32.
    let d = delta([1.0; 4], [1.0; 2]);
    assert!(average(&global, &[]).is_err());
    assert!(
        average(
            &global,
            &[Contribution {
                samples: 0,
                delta: &d
            }]
        )
        .is_err()
    );
    let huge = delta([f32::MAX; 4], [0.0; 2]);
    let big = head([f32::MAX; 4], [0.0; 2]);
    assert!(matches!(
        average(&big, &[contribution(&huge)]),
        Err(TrainError::NonFinite(_))
    ));
    // Noise settings.
    let mut d = delta([1.0; 4], [1.0; 2]);
    assert!(d.privatize(1.0, -1.0, 1).is_err());
    assert!(d.privatize(1.0, f64::NAN, 1).is_err());
    assert!(d.add_noise(f64::INFINITY, &mut Gaussian::new(1)).is_err());
}
