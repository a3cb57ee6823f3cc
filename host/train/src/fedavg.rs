//! Federated averaging's arithmetic (issue 16), pure and without I/O, so the fleet's
//! aggregator, the gateways and offline experiments compute the same thing:
//!
//! - a [`Delta`]: what a gateway's training changed, `local − global` per parameter;
//! - clipping a delta to a global L2 norm and adding Gaussian noise (σ = noise multiplier ×
//!   clip) from a seeded [`Gaussian`] stream: the Gaussian mechanism, applied by each gateway
//!   to its own upload;
//! - [`average`]: FedAvg, `global + Σ n_k·Δ_k / Σ n_k`, weighted by sample counts;
//! - [`privacy_spent`]: the (ε, δ) that rounds of the Gaussian mechanism cost, by Rényi DP.
//!
//! Sums run in f64 in the order given, so the same inputs give bit-identical heads.

use crate::TrainError;
use crate::head::{Head, HeadSpec};
use crate::rng::SplitMix64;
use edgeplug_kernels::Tensor;

/// What training changed in a head: `local − global` for each parameter, in
/// [`HeadSpec::param_shapes`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    spec: HeadSpec,
    params: Vec<Vec<f32>>,
}

fn values(tensor: &Tensor) -> Result<&[f32], TrainError> {
    Ok(tensor.as_f32()?)
}

fn same_spec(what: &str, ours: HeadSpec, theirs: HeadSpec) -> Result<(), TrainError> {
    if ours != theirs {
        return Err(TrainError::Shape(format!(
            "{what}: a head of {theirs:?} does not match {ours:?}"
        )));
    }
    Ok(())
}

impl Delta {
    /// `local − global`, parameter by parameter; both heads must have the same spec.
    pub fn between(local: &Head, global: &Head) -> Result<Delta, TrainError> {
        same_spec("delta", global.spec(), local.spec())?;
        let params = local
            .params()
            .iter()
            .zip(global.params())
            .map(|(l, g)| {
                Ok(values(l)?
                    .iter()
                    .zip(values(g)?)
                    .map(|(l, g)| l - g)
                    .collect())
            })
            .collect::<Result<Vec<Vec<f32>>, TrainError>>()?;
        Delta::from_params(local.spec(), params)
    }

    /// A delta from its values (as received from a gateway): every parameter must have its
    /// spec's size and every value must be finite.
    pub fn from_params(spec: HeadSpec, params: Vec<Vec<f32>>) -> Result<Delta, TrainError> {
        let shapes = spec.param_shapes();
        if params.len() != shapes.len() {
            return Err(TrainError::Shape(format!(
                "a delta of {spec:?} has {} parameters, got {}",
                shapes.len(),
                params.len()
            )));
        }
        for (i, (values, shape)) in params.iter().zip(&shapes).enumerate() {
            let size: usize = shape.iter().product();
            if values.len() != size {
                return Err(TrainError::Shape(format!(
                    "parameter {i} of a delta of {spec:?} has {size} values, got {}",
                    values.len()
                )));
            }
        }
        if params.iter().flatten().any(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite("a delta's value"));
        }
        Ok(Delta { spec, params })
    }

    pub fn spec(&self) -> HeadSpec {
        self.spec
    }

    /// The values, in [`HeadSpec::param_shapes`] order.
    pub fn params(&self) -> &[Vec<f32>] {
        &self.params
    }

    /// The global L2 norm over every parameter.
    pub fn norm(&self) -> f64 {
        self.params
            .iter()
            .flatten()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt()
    }

    /// Scales the delta down to global L2 norm `max_norm` if it is longer (never up), and
    /// returns its norm before.
    pub fn clip(&mut self, max_norm: f64) -> Result<f64, TrainError> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(TrainError::Config(format!(
                "a clip norm must be a positive number, got {max_norm}"
            )));
        }
        let norm = self.norm();
        if norm > max_norm {
            let scale = max_norm / norm;
            for v in self.params.iter_mut().flatten() {
                *v = (f64::from(*v) * scale) as f32;
            }
        }
        Ok(norm)
    }

    /// Adds independent N(0, σ²) noise to every value, drawn from `noise` in parameter order.
    pub fn add_noise(&mut self, sigma: f64, noise: &mut Gaussian) -> Result<(), TrainError> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(TrainError::Config(format!(
                "a noise deviation must be a non-negative number, got {sigma}"
            )));
        }
        for v in self.params.iter_mut().flatten() {
            *v = (f64::from(*v) + sigma * noise.next()) as f32;
        }
        if self.params.iter().flatten().any(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite("a noised delta's value"));
        }
        Ok(())
    }

    /// The Gaussian mechanism on this delta: clip to `clip`, then add noise of deviation
    /// `noise_multiplier × clip` from the stream seeded with `seed`. Returns the norm before
    /// clipping.
    pub fn privatize(
        &mut self,
        clip: f64,
        noise_multiplier: f64,
        seed: u64,
    ) -> Result<f64, TrainError> {
        if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(TrainError::Config(format!(
                "a noise multiplier must be a non-negative number, got {noise_multiplier}"
            )));
        }
        let norm = self.clip(clip)?;
        self.add_noise(noise_multiplier * clip, &mut Gaussian::new(seed))?;
        Ok(norm)
    }
}

/// `head + delta`.
pub fn apply(head: &Head, delta: &Delta) -> Result<Head, TrainError> {
    same_spec("apply", head.spec(), delta.spec)?;
    let params = head
        .params()
        .iter()
        .zip(&delta.params)
        .map(|(p, d)| Ok(values(p)?.iter().zip(d).map(|(p, d)| p + d).collect()))
        .collect::<Result<Vec<Vec<f32>>, TrainError>>()?;
    Head::from_params(head.spec(), params)
}

/// One gateway's part in a round: its delta and how many samples it trained on.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    pub samples: u64,
    pub delta: &'a Delta,
}

/// FedAvg: `global + Σ n_k·Δ_k / Σ n_k`, each delta weighted by its sample count. Refuses no
/// contributions, a total of zero samples, a delta of another spec, and a non-finite result.
pub fn average(global: &Head, contributions: &[Contribution<'_>]) -> Result<Head, TrainError> {
    let total: u128 = contributions.iter().map(|c| u128::from(c.samples)).sum();
    if total == 0 {
        return Err(TrainError::Shape(
            "an average needs at least one contribution with samples".into(),
        ));
    }
    for c in contributions {
        same_spec("average", global.spec(), c.delta.spec)?;
    }
    let total = total as f64;
    let params = global
        .params()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut sum: Vec<f64> = vec![0.0; values(p)?.len()];
            for c in contributions {
                let weight = c.samples as f64;
                for (s, d) in sum.iter_mut().zip(&c.delta.params[i]) {
                    *s += weight * f64::from(*d);
                }
            }
            Ok(values(p)?
                .iter()
                .zip(sum)
                .map(|(g, s)| (f64::from(*g) + s / total) as f32)
                .collect())
        })
        .collect::<Result<Vec<Vec<f32>>, TrainError>>()?;
    Head::from_params(global.spec(), params).map_err(|e| match e {
        TrainError::NonFinite(_) => TrainError::NonFinite("the averaged head"),
        other => other,
    })
}

/// Standard normal draws by Box–Muller over [`SplitMix64`]: a stream that never changes for
/// a seed (a library's normal sampler may change between versions), so a noised delta can be
/// reproduced from its seed.
#[derive(Debug, Clone)]
pub struct Gaussian {
    uniform: SplitMix64,
    spare: Option<f64>,
}

impl Gaussian {
    pub fn new(seed: u64) -> Gaussian {
        Gaussian {
            uniform: SplitMix64::new(seed),
            spare: None,
        }
    }

    /// Uniform in (0, 1] from the top 53 bits: never 0, whose logarithm Box–Muller takes.
    fn unit(&mut self) -> f64 {
        ((self.uniform.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// The next N(0, 1) draw; each pair of uniforms gives two.
    #[allow(
        clippy::should_implement_trait,
        reason = "an infinite stream, not an Iterator"
    )]
    pub fn next(&mut self) -> f64 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let radius = (-2.0 * self.unit().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.unit();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// The Rényi orders the accountant tries (the grid Opacus and TensorFlow Privacy use).
pub fn rdp_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((12..64).map(f64::from))
        .collect()
}

/// The privacy that `rounds` releases of the Gaussian mechanism cost, noise multiplier `z`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Privacy {
    pub epsilon: f64,
    pub delta: f64,
    /// The Rényi order that gave the smallest ε.
    pub order: f64,
}

/// (ε, δ) after `rounds` uploads, each clipped and noised with multiplier `z`. One release
/// is (α, α/(2z²))-Rényi DP (Mironov 2017, Gaussian mechanism of sensitivity `clip` and
/// deviation `z·clip`); `rounds` compose by adding, and the conversion to (ε, δ) is
/// `min over α of rounds·α/(2z²) + ln(1/δ)/(α − 1)` over [`rdp_orders`]. No subsampling
/// amplification is claimed: a gateway's upload is its whole data's delta.
pub fn privacy_spent(z: f64, rounds: u64, delta: f64) -> Result<Privacy, TrainError> {
    if !(z.is_finite() && z > 0.0) {
        return Err(TrainError::Config(format!(
            "ε needs a positive noise multiplier, got {z}"
        )));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(TrainError::Config(format!(
            "δ must be in (0, 1), got {delta}"
        )));
    }
    if rounds == 0 {
        return Ok(Privacy {
            epsilon: 0.0,
            delta,
            order: f64::INFINITY,
        });
    }
    let t = rounds as f64;
    let (epsilon, order) = rdp_orders()
        .into_iter()
        .map(|a| (t * a / (2.0 * z * z) + (1.0 / delta).ln() / (a - 1.0), a))
        .fold((f64::INFINITY, f64::NAN), |best, e| {
            if e.0 < best.0 { e } else { best }
        });
    Ok(Privacy {
        epsilon,
        delta,
        order,
    })
}

#[cfg(test)]
#[path = "fedavg_tests.rs"]
mod tests;
