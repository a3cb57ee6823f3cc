//! Trains a head with edgeplug's own code for `tests/benches/learning_experiments.py`, so
//! the experiments measure the head a gateway would train, not a numpy or torch stand-in.
//!
//! `cargo run --release -p edgeplug-train --example head_experiment -- JOB.json OUT.json`
//!
//! The job (JSON) names `.npy` files (float32 features `[n, features]`, int64 or int32
//! labels `[n]`):
//!
//! ```json
//! {"mode": "train", "features": 128, "classes": 10, "hidden": null, "seed": 1,
//!  "init": ["w.npy", "b.npy"],            // or null: Glorot from `seed`
//!  "optimizer": {"kind": "adam", "lr": 0.01, "clip_norm": null, "weight_decay": 0.0},
//!  "steps": 300, "batch": 32, "sampling": "balanced", "sample_seed": 3,
//!  "train": {"x": "x.npy", "y": "y.npy"},
//!  "eval": {"test": {"x": "tx.npy", "y": "ty.npy"}}}
//! ```
//!
//! `sampling` is `epochs` (a new shuffle of the training set every pass) or `balanced` (each
//! row of a batch draws a class uniformly, then a sample of it, so a class with K samples
//! weighs as much as one with hundreds). The output holds the trained weights (in
//! `HeadSpec::param_shapes` order), and for each evaluation set its loss, accuracy and
//! predicted classes.
//!
//! `"mode": "fedavg"` trains one global head by federated averaging over `clients` (a list of
//! `{"x", "y"}`): each round, every client online that round trains a copy of the global head
//! for `local_epochs` passes over its data (a fresh optimizer each round, as a gateway starts
//! a job from the head it was sent), uploads `local − global`, optionally clipped to
//! `clip` and noised (`noise_multiplier`), and the server averages the deltas weighted by
//! sample count (`edgeplug_train::fedavg::average`). `offline` maps a client's index to the
//! rounds (1-based) it misses. The global head is evaluated after every round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeplug_kernels::Tensor;
use edgeplug_train::fedavg::{self, Contribution, Delta};
use edgeplug_train::rng::SplitMix64;
use edgeplug_train::{Head, HeadSpec, Optimizer, OptimizerConfig, OptimizerKind};
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error>;

#[derive(Deserialize)]
struct Data {
    x: PathBuf,
    y: PathBuf,
}

#[derive(Deserialize)]
struct OptimizerJob {
    kind: String,
    lr: f32,
    #[serde(default)]
    clip_norm: Option<f32>,
    #[serde(default)]
    weight_decay: f32,
    #[serde(default = "default_momentum")]
    momentum: f32,
}

fn default_momentum() -> f32 {
    0.9
}

#[derive(Deserialize)]
struct Job {
    mode: String,
    features: usize,
    classes: usize,
    #[serde(default)]
    hidden: Option<usize>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    init: Option<Vec<PathBuf>>,
    optimizer: OptimizerJob,
    #[serde(default = "default_batch")]
    batch: usize,
    #[serde(default)]
    sample_seed: u64,
    #[serde(default = "default_sampling")]
    sampling: String,
    /// `train`: the number of steps.
    #[serde(default)]
    steps: usize,
    #[serde(default)]
    train: Option<Data>,
    #[serde(default)]
    eval: BTreeMap<String, Data>,
    /// `fedavg` only.
    #[serde(default)]
    clients: Vec<Data>,
    #[serde(default)]
    rounds: usize,
    #[serde(default = "default_local_epochs")]
    local_epochs: usize,
    #[serde(default)]
    offline: BTreeMap<usize, Vec<usize>>,
    #[serde(default)]
    clip: Option<f64>,
    #[serde(default)]
    noise_multiplier: f64,
}

fn default_batch() -> usize {
    32
}

fn default_sampling() -> String {
    "epochs".into()
}

fn default_local_epochs() -> usize {
    1
}

/// Features and labels in memory.
struct Set {
    features: usize,
    x: Vec<f32>,
    y: Vec<usize>,
}

impl Set {
    fn len(&self) -> usize {
        self.y.len()
    }

    fn load(data: &Data, features: usize) -> Result<Set, Error> {
        let (shape, x) = read_npy_f32(&data.x)?;
        let (yshape, y) = read_npy_labels(&data.y)?;
        if shape.len() != 2 || shape[1] != features || yshape != [shape[0]] {
            return Err(format!(
                "{}: features {shape:?} and labels {yshape:?} do not make [n, {features}] and [n]",
                data.x.display()
            )
            .into());
        }
        Ok(Set { features, x, y })
    }

    fn batch(&self, rows: &[usize]) -> Result<(Tensor, Vec<usize>), Error> {
        let mut x = Vec::with_capacity(rows.len() * self.features);
        for &r in rows {
            x.extend_from_slice(&self.x[r * self.features..(r + 1) * self.features]);
        }
        let labels = rows.iter().map(|&r| self.y[r]).collect();
        Ok((
            Tensor::from_f32(vec![rows.len(), self.features], x)?,
            labels,
        ))
    }
}

/// The header of a `.npy` file (format 1.x or 2.x): dtype, shape, and where the data start.
fn npy_header(bytes: &[u8], path: &Path) -> Result<(String, Vec<usize>, usize), Error> {
    let bad = || format!("{}: not a .npy file this reader knows", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad().into());
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad().into()),
    };
    let header = std::str::from_utf8(bytes.get(start..start + len).ok_or_else(bad)?)?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr").ok_or_else(bad)?;
    let descr = descr.split('\'').nth(1).ok_or_else(bad)?.to_string();
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(format!("{}: Fortran order is not supported", path.display()).into());
    }
    let shape = field("shape").ok_or_else(bad)?;
    let shape = &shape[1..shape.find(')').ok_or_else(bad)?];
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr, shape, start + len))
}

fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (descr, shape, start) = npy_header(&bytes, path)?;
    if descr != "<f4" {
        return Err(format!("{}: float32 expected, got {descr}", path.display()).into());
    }
    let values = bytes[start..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect::<Vec<_>>();
    if values.len() != shape.iter().product::<usize>() {
        return Err(format!("{}: size does not match shape {shape:?}", path.display()).into());
    }
    Ok((shape, values))
}

fn read_npy_labels(path: &Path) -> Result<(Vec<usize>, Vec<usize>), Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (descr, shape, start) = npy_header(&bytes, path)?;
    let data = &bytes[start..];
    let values: Vec<i64> = match descr.as_str() {
        "<i8" => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect(),
        "<i4" => data
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        _ => {
            return Err(format!("{}: int64 or int32 expected, got {descr}", path.display()).into());
        }
    };
    if values.len() != shape.iter().product::<usize>() {
        return Err(format!("{}: size does not match shape {shape:?}", path.display()).into());
    }
    let labels = values
        .into_iter()
        .map(usize::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{}: a negative label", path.display()))?;
    Ok((shape, labels))
}

fn optimizer(job: &OptimizerJob) -> Result<Optimizer, Error> {
    let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
    let kind = match job.kind.as_str() {
        "sgd" => OptimizerKind::Sgd,
        "momentum" => OptimizerKind::Momentum { beta: job.momentum },
        "adam" => OptimizerKind::Adam { beta1, beta2, eps },
        "adamw" => OptimizerKind::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay: job.weight_decay,
        },
        other => return Err(format!("unknown optimizer {other}").into()),
    };
    Ok(Optimizer::new(OptimizerConfig {
        kind,
        lr: job.lr,
        clip_norm: job.clip_norm,
    })?)
}

/// Draws the rows of each batch.
enum Sampler {
    /// Passes over a shuffled order, reshuffled at the end of every pass.
    Epochs { order: Vec<usize>, at: usize },
    /// A class uniformly, then one of its rows, with replacement.
    Balanced { by_class: Vec<Vec<usize>> },
}

impl Sampler {
    fn new(kind: &str, set: &Set) -> Result<Sampler, Error> {
        match kind {
            "epochs" => Ok(Sampler::Epochs {
                order: (0..set.len()).collect(),
                // Past the end, so the first batch shuffles first.
                at: set.len(),
            }),
            "balanced" => {
                let classes = set.y.iter().max().map_or(0, |m| m + 1);
                let mut by_class = vec![Vec::new(); classes];
                for (row, &label) in set.y.iter().enumerate() {
                    by_class[label].push(row);
                }
                by_class.retain(|rows| !rows.is_empty());
                Ok(Sampler::Balanced { by_class })
            }
            other => Err(format!("unknown sampling {other}").into()),
        }
    }

    fn below(rng: &mut SplitMix64, n: usize) -> usize {
        (rng.next_u64() % n as u64) as usize
    }

    fn next(&mut self, rng: &mut SplitMix64, batch: usize) -> Vec<usize> {
        match self {
            Sampler::Epochs { order, at } => {
                let mut rows = Vec::with_capacity(batch);
                while rows.len() < batch.min(order.len()) {
                    if *at == order.len() {
                        // Fisher–Yates, from the job's seed, so a run is reproducible.
                        for i in (1..order.len()).rev() {
                            order.swap(i, Self::below(rng, i + 1));
                        }
                        *at = 0;
                    }
                    rows.push(order[*at]);
                    *at += 1;
                }
                rows
            }
            Sampler::Balanced { by_class } => (0..batch)
                .map(|_| {
                    let class = &by_class[Self::below(rng, by_class.len())];
                    class[Self::below(rng, class.len())]
                })
                .collect(),
        }
    }
}

/// Trains `head` for `steps` steps of `batch` rows of `set`; returns the mean loss of the last
/// tenth of the steps.
fn train(
    head: &mut Head,
    optimizer: &mut Optimizer,
    set: &Set,
    sampler: &mut Sampler,
    rng: &mut SplitMix64,
    steps: usize,
    batch: usize,
) -> Result<f32, Error> {
    let tail = (steps / 10).max(1);
    let mut tail_loss = 0.0;
    for step in 0..steps {
        let rows = sampler.next(rng, batch);
        let (x, labels) = set.batch(&rows)?;
        let (loss, grads) = head.loss_and_grad(&x, &labels)?;
        optimizer.step(head, &grads)?;
        if step + tail >= steps {
            tail_loss += loss / tail as f32;
        }
    }
    Ok(tail_loss)
}

#[derive(Serialize)]
struct EvalOut {
    loss: f32,
    accuracy: f64,
    correct: usize,
    total: usize,
    predictions: Vec<usize>,
}

fn evaluate(head: &Head, set: &Set) -> Result<EvalOut, Error> {
    let rows: Vec<usize> = (0..set.len()).collect();
    let (x, labels) = set.batch(&rows)?;
    let evaluation = head.evaluate(&x, &labels)?;
    let logits = head.forward(&x)?;
    let classes = head.spec().classes;
    let predictions = logits
        .as_f32()?
        .chunks_exact(classes)
        .map(|row| {
            // Ties go to the lower class, as in `Head::evaluate`.
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best
        })
        .collect();
    Ok(EvalOut {
        loss: evaluation.loss,
        accuracy: evaluation.accuracy(),
        correct: evaluation.correct,
        total: evaluation.total,
        predictions,
    })
}

fn weights(head: &Head) -> Result<Vec<Vec<f32>>, Error> {
    head.params()
        .iter()
        .map(|p| Ok(p.as_f32()?.to_vec()))
        .collect()
}

fn evaluate_all(
    head: &Head,
    evals: &BTreeMap<String, Set>,
) -> Result<BTreeMap<String, EvalOut>, Error> {
    evals
        .iter()
        .map(|(name, set)| Ok((name.clone(), evaluate(head, set)?)))
        .collect()
}

#[derive(Serialize)]
struct RoundOut {
    round: usize,
    online: Vec<usize>,
    /// Each online client's delta norm before clipping.
    delta_norms: Vec<f64>,
    eval: BTreeMap<String, EvalOut>,
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [job_path, out_path] = args.as_slice() else {
        return Err("usage: head_experiment JOB.json OUT.json".into());
    };
    let job: Job = serde_json::from_slice(&std::fs::read(job_path)?)?;
    let spec = HeadSpec {
        features: job.features,
        classes: job.classes,
        hidden: job.hidden,
    };
    let mut head = match &job.init {
        None => Head::new(spec, job.seed)?,
        Some(paths) => {
            let params = paths
                .iter()
                .map(|p| Ok(read_npy_f32(p)?.1))
                .collect::<Result<Vec<_>, Error>>()?;
            Head::from_params(spec, params)?
        }
    };
    let evals = job
        .eval
        .iter()
        .map(|(name, data)| Ok((name.clone(), Set::load(data, job.features)?)))
        .collect::<Result<BTreeMap<_, _>, Error>>()?;
    let mut rng = SplitMix64::new(job.sample_seed);
    let out = match job.mode.as_str() {
        "train" => {
            let data = job.train.as_ref().ok_or("mode train needs `train`")?;
            let set = Set::load(data, job.features)?;
            let before = evaluate_all(&head, &evals)?;
            let mut optimizer = optimizer(&job.optimizer)?;
            let mut sampler = Sampler::new(&job.sampling, &set)?;
            let started = std::time::Instant::now();
            let final_loss = train(
                &mut head,
                &mut optimizer,
                &set,
                &mut sampler,
                &mut rng,
                job.steps,
                job.batch,
            )?;
            let seconds = started.elapsed().as_secs_f64();
            serde_json::json!({
                "steps": job.steps,
                "train_samples": set.len(),
                "final_loss": final_loss,
                "train_seconds": seconds,
                "before": before,
                "eval": evaluate_all(&head, &evals)?,
                "weights": weights(&head)?,
            })
        }
        "fedavg" => {
            let clients = job
                .clients
                .iter()
                .map(|d| Set::load(d, job.features))
                .collect::<Result<Vec<_>, Error>>()?;
            let mut rounds = Vec::new();
            for round in 1..=job.rounds {
                let online: Vec<usize> = (0..clients.len())
                    .filter(|c| !job.offline.get(c).is_some_and(|r| r.contains(&round)))
                    .collect();
                let mut deltas = Vec::new();
                let mut delta_norms = Vec::new();
                for &c in &online {
                    let set = &clients[c];
                    let mut local = head.clone();
                    let mut optimizer = optimizer(&job.optimizer)?;
                    let mut sampler = Sampler::new("epochs", set)?;
                    // Each client's batches come from its own stream, seeded by job, client
                    // and round, so a client's work does not depend on who else is online.
                    let mut rng = SplitMix64::new(
                        job.sample_seed ^ ((c as u64 + 1) << 32) ^ (round as u64) << 48,
                    );
                    let steps = job.local_epochs * set.len().div_ceil(job.batch);
                    train(
                        &mut local,
                        &mut optimizer,
                        set,
                        &mut sampler,
                        &mut rng,
                        steps,
                        job.batch,
                    )?;
                    let mut delta = Delta::between(&local, &head)?;
                    let norm = match job.clip {
                        Some(clip) => delta.privatize(
                            clip,
                            job.noise_multiplier,
                            job.sample_seed ^ ((c as u64) << 16) ^ round as u64,
                        )?,
                        None => delta.norm(),
                    };
                    delta_norms.push(norm);
                    deltas.push((set.len() as u64, delta));
                }
                if !deltas.is_empty() {
                    let contributions: Vec<Contribution<'_>> = deltas
                        .iter()
                        .map(|(samples, delta)| Contribution {
                            samples: *samples,
                            delta,
                        })
                        .collect();
                    head = fedavg::average(&head, &contributions)?;
                }
                rounds.push(RoundOut {
                    round,
                    online,
                    delta_norms,
                    eval: evaluate_all(&head, &evals)?,
                });
            }
            serde_json::json!({
                "rounds": rounds,
                "weights": weights(&head)?,
            })
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    std::fs::write(out_path, serde_json::to_vec(&out)?)?;
    Ok(())
}
