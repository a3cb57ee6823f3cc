//! Learning at the edge (WIT 0.1.4): a plugin whose answers end in a classifier head can let the
//! gateway fine-tune that head on labeled samples its clients send
//! (`POST /v1/plugins/NAME/feedback`).
//!
//! The plugin implements [`Learner`] beside [`Plugin`], exports both with
//! `export!(MyPlugin, learner)`, and names `world = "edgeplug:plugin/learning-plugin@0.1.4"` in
//! its manifest. The gateway runs [`Learner::finetune`] as a job with a step budget, checks the
//! head it returns on held-out samples (through [`Learner::features`]) and the plugin's
//! self-tests, and then [`live_head`] returns it to every request:
//!
//! ```ignore
//! use edgeplug_sdk::learn::{self, Dataset, Job, Learner};
//! use edgeplug_sdk::train::{Head, HeadSpec, Optimizer};
//!
//! impl Learner for MyPlugin {
//!     fn features(request: Request) -> Result<Tensor, Error> {
//!         embed(&input(&request)?)                         // [1, 128]
//!     }
//!     fn finetune(job: Job) -> Result<Head, Error> {
//!         let spec = HeadSpec::dense(128, 10).seed(job.seed);
//!         let mut head = Head::create(spec, Optimizer::adamw(1e-3))?;
//!         head.load(&learn::start_weights().map_or_else(shipped_head, Ok)?)?;
//!         learn::dataset::<MyPlugin>()?.train(&mut head, &job, 32)?;
//!         Ok(head)
//!     }
//! }
//! export!(MyPlugin, learner);
//! ```
//!
//! and in `infer`, `learn::live_head()` (when it is `Some`) replaces the shipped head.

use crate::learning_bindings::edgeplug::plugin::learn as wit;
use crate::learning_bindings::exports::edgeplug::plugin::learner;
use crate::train::{Head, StepReport};
use crate::{Error, ErrorCode, Plugin, Request, Tensor};

/// A labeled sample a client sent: the label and the same content type and body the plugin
/// gets in a request (turn it into one with [`Sample::into_request`]).
#[doc(inline)]
pub use wit::Sample;

/// A fine-tuning job's budget and seed, set by the gateway's operator: at most `max_steps`
/// [`Head::step`] calls (the one past it is refused with `resource-exhausted`), and `seed` for
/// whatever the job draws at random (initialization, batch order).
#[doc(inline)]
pub use learner::Job;

/// The plugin's live head: the last head a `finetune` job trained that passed the gateway's
/// gate, shared with every request (a [`Head::step`] on it trains a private copy). `None`
/// while the plugin has learned nothing (and under `edgeplug run`): answer with the head the
/// plugin ships.
pub fn live_head() -> Option<Head> {
    wit::live_head().map(Head)
}

/// In a `finetune` job: the weights to start from, in [`Head::load`]'s order (the live head's,
/// or in a federated round the round's averaged head). `None`: start from the head the plugin
/// ships. Outside a job: `None`.
pub fn start_weights() -> Option<Vec<Tensor>> {
    wit::start_weights().map(|weights| weights.into_iter().map(Tensor).collect())
}

/// In a `finetune` job: the training samples, one host call each as the iterator reaches them
/// (the gateway keeps a part of its samples back for its held-out check). Outside a job: none.
pub fn samples() -> Samples {
    Samples {
        next: 0,
        count: wit::sample_count(),
    }
}

/// The job's training samples in order; see [`samples`].
#[derive(Debug)]
pub struct Samples {
    next: u32,
    count: u32,
}

impl Iterator for Samples {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        while self.next < self.count {
            let index = self.next;
            self.next += 1;
            // The count is taken once; a sample the host no longer has is skipped rather than
            // ending the iteration early, so the rest still train.
            if let Some(sample) = wit::get_sample(index) {
                return Some(sample);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some((self.count - self.next) as usize))
    }
}

impl Sample {
    /// The sample as the request a client would have sent (no tensors), for the same parsing
    /// code `infer` uses.
    pub fn into_request(self) -> Request {
        Request {
            content_type: self.content_type,
            body: self.input,
            tensors: Vec::new(),
        }
    }
}

/// What a plugin that learns implements beside [`Plugin`]; export both with
/// `export!(MyPlugin, learner)`.
pub trait Learner: Plugin {
    /// The feature vector the head takes for one input, `[1, features]` float32: what
    /// `infer` feeds its head. The gateway's held-out check runs the live and the new head
    /// on it. `request` has the content type and body a client sent, and no tensors.
    fn features(request: Request) -> Result<Tensor, Error>;

    /// Trains a head on the job's [`samples`] from [`start_weights`] (or the shipped head)
    /// within `job.max_steps` steps and returns it; the gateway gates it before it goes live,
    /// and an error leaves the live head as it is.
    fn finetune(job: Job) -> Result<Head, Error>;
}

/// Whether `error` is about one sample's input (a client's body the plugin cannot read:
/// `invalid-argument`, `shape-mismatch`, `unsupported`), which a job should skip, rather than
/// about the plugin or the host, which should end it. [`dataset`] skips by it; a plugin that
/// computes its features in batches of its own decides with it too.
pub fn is_bad_sample(error: &Error) -> bool {
    matches!(
        error.code,
        ErrorCode::InvalidArgument | ErrorCode::ShapeMismatch | ErrorCode::Unsupported
    )
}

/// Every training sample's features through [`Learner::features`], one sample at a time. A
/// sample whose body the plugin cannot read (`invalid-argument`, `shape-mismatch`,
/// `unsupported`) is logged and skipped; any other error ends the job.
pub fn dataset<L: Learner>() -> Result<Dataset, Error> {
    let mut dataset: Option<Dataset> = None;
    for (index, sample) in samples().enumerate() {
        let label = sample.label;
        let features = match L::features(sample.into_request()) {
            Ok(features) => features,
            Err(e) if is_bad_sample(&e) => {
                crate::log::warn(&format!("training sample {index} skipped: {}", e.message));
                continue;
            }
            Err(e) => return Err(e),
        };
        let shape = features.shape();
        let width = shape.last().copied().unwrap_or(0);
        dataset
            .get_or_insert_with(|| Dataset::new(width))
            .push(&features, &[label])?;
    }
    Ok(dataset.unwrap_or_else(|| Dataset::new(0)))
}

/// Labeled feature rows kept in the plugin's memory, and the training loop over them:
/// shuffled batches, epoch after epoch, until the job's budget is spent.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    width: usize,
    rows: Vec<f32>,
    labels: Vec<u32>,
}

/// One training batch: `labels.len()` rows of features, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[labels.len(), features]` values, row-major.
    pub rows: Vec<f32>,
    /// One label per row.
    pub labels: Vec<u32>,
}

/// What [`Dataset::train`] did.
#[derive(Debug, Clone, Copy)]
pub struct Training {
    /// Optimizer steps taken.
    pub steps: u32,
    /// The last step's report (its loss is the batch's before that step); `None` if no step
    /// ran.
    pub last: Option<StepReport>,
}

impl Dataset {
    /// An empty dataset of rows of `features` values.
    pub fn new(features: usize) -> Dataset {
        Dataset {
            width: features,
            rows: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// How many values a row has.
    pub fn features(&self) -> usize {
        self.width
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The labels, in the order the rows were added.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Adds the rows of `features`, a `[labels.len(), features]` float32 tensor (a batch the
    /// plugin's network computed at once), copied out of the host.
    pub fn push(&mut self, features: &Tensor, labels: &[u32]) -> Result<(), Error> {
        let shape = features.shape();
        if shape.len() != 2 || shape[0] != labels.len() || shape[1] != self.width {
            return Err(Error::shape_mismatch(format!(
                "features must be [{}, {}] for {} labels, got {shape:?}",
                labels.len(),
                self.width,
                labels.len()
            )));
        }
        self.push_rows(&features.to_vec()?, labels)
    }

    /// Adds `labels.len()` rows of `features` values each, row-major.
    pub fn push_rows(&mut self, rows: &[f32], labels: &[u32]) -> Result<(), Error> {
        if rows.len() != labels.len() * self.width {
            return Err(Error::shape_mismatch(format!(
                "{} values are not {} rows of {}",
                rows.len(),
                labels.len(),
                self.width
            )));
        }
        self.rows.extend_from_slice(rows);
        self.labels.extend_from_slice(labels);
        Ok(())
    }

    /// Endless batches of up to `batch_size` rows: each epoch visits every row once, in an
    /// order drawn from `seed` (a new order each epoch); an epoch's last batch holds what is
    /// left. Nothing if the dataset is empty or `batch_size` is 0.
    pub fn batches(&self, batch_size: usize, seed: u64) -> Batches<'_> {
        Batches {
            dataset: self,
            batch_size,
            rng: SplitMix64(seed),
            order: Vec::new(),
            at: 0,
        }
    }

    /// Steps `head` on shuffled batches of `batch_size` rows (see [`Dataset::batches`], seeded
    /// by the job) until `job.max_steps` steps ran or the host refuses one with
    /// `resource-exhausted` (the job's budget is spent: the head is kept as it is). An empty
    /// dataset takes no step, leaving `head` as it was loaded. Any other error is returned.
    pub fn train(&self, head: &mut Head, job: &Job, batch_size: usize) -> Result<Training, Error> {
        self.drive(job.max_steps, batch_size, job.seed, |batch| {
            let features = Tensor::from_slice(&[batch.labels.len(), self.width], &batch.rows)?;
            head.step(&features, &batch.labels)
        })
    }

    /// The loop of [`Dataset::train`], with the step as a function so its logic is tested
    /// without a host.
    fn drive(
        &self,
        max_steps: u32,
        batch_size: usize,
        seed: u64,
        mut step: impl FnMut(&Batch) -> Result<StepReport, Error>,
    ) -> Result<Training, Error> {
        let mut training = Training {
            steps: 0,
            last: None,
        };
        for batch in self.batches(batch_size, seed) {
            if training.steps >= max_steps {
                break;
            }
            match step(&batch) {
                Ok(report) => {
                    training.steps += 1;
                    training.last = Some(report);
                }
                Err(e) if e.code == ErrorCode::ResourceExhausted => break,
                Err(e) => return Err(e),
            }
        }
        Ok(training)
    }
}

/// The batches of [`Dataset::batches`].
#[derive(Debug)]
pub struct Batches<'a> {
    dataset: &'a Dataset,
    batch_size: usize,
    rng: SplitMix64,
    order: Vec<usize>,
    at: usize,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let n = self.dataset.len();
        if n == 0 || self.batch_size == 0 {
            return None;
        }
        if self.at == self.order.len() {
            // A new epoch: Fisher-Yates over every row, from the one stream of the seed.
            self.order = (0..n).collect();
            for i in (1..n).rev() {
                let j = (self.rng.next() % (i as u64 + 1)) as usize;
                self.order.swap(i, j);
            }
            self.at = 0;
        }
        let end = (self.at + self.batch_size).min(n);
        let width = self.dataset.width;
        let mut batch = Batch {
            rows: Vec::with_capacity((end - self.at) * width),
            labels: Vec::with_capacity(end - self.at),
        };
        for &row in &self.order[self.at..end] {
            batch
                .rows
                .extend_from_slice(&self.dataset.rows[row * width..(row + 1) * width]);
            batch.labels.push(self.dataset.labels[row]);
        }
        self.at = end;
        Some(batch)
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): small, seedable, and the same on every target,
/// so a job's batch order depends on its seed alone.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[doc(hidden)]
pub fn features_export<L: Learner>(content_type: String, input: Vec<u8>) -> Result<Tensor, Error> {
    L::features(Request {
        content_type,
        body: input,
        tensors: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows` rows of width 2 whose values and label are the row's number.
    fn numbered(rows: u32) -> Dataset {
        let mut data = Dataset::new(2);
        for i in 0..rows {
            data.push_rows(&[i as f32, i as f32], &[i]).unwrap();
        }
        data
    }

    fn report(loss: f32) -> StepReport {
        StepReport {
            loss,
            grad_norm: 0.0,
            clipped: false,
        }
    }

    #[test]
    fn each_epoch_visits_every_row_once_with_its_label() {
        let data = numbered(10);
        let batches: Vec<Batch> = data.batches(4, 7).take(6).collect();
        let sizes: Vec<usize> = batches.iter().map(|b| b.labels.len()).collect();
        assert_eq!(sizes, [4, 4, 2, 4, 4, 2]);
        for epoch in batches.chunks(3) {
            let mut seen: Vec<u32> = epoch.iter().flat_map(|b| b.labels.clone()).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..10).collect::<Vec<_>>());
        }
        for batch in &batches {
            let expected: Vec<f32> = batch
                .labels
                .iter()
                .flat_map(|&l| [l as f32, l as f32])
                .collect();
            assert_eq!(batch.rows, expected, "a row travels with its label");
        }
    }

    #[test]
    fn the_order_is_the_seeds_and_changes_between_epochs() {
        let data = numbered(32);
        let order = |seed| -> Vec<u32> {
            data.batches(32, seed)
                .take(2)
                .flat_map(|b| b.labels)
                .collect()
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
        let both = order(1);
        let (first, second) = both.split_at(32);
        assert_ne!(first, second, "each epoch draws a new order");
        assert_ne!(first, (0..32).collect::<Vec<_>>(), "the rows are shuffled");
    }

    #[test]
    fn nothing_to_batch_gives_no_batch() {
        assert_eq!(Dataset::new(3).batches(8, 0).next(), None);
        assert_eq!(numbered(3).batches(0, 0).next(), None);
    }

    #[test]
    fn rows_that_do_not_fit_the_width_are_refused_and_change_nothing() {
        let mut data = numbered(2);
        let e = data.push_rows(&[1.0, 2.0, 3.0], &[1, 2]).unwrap_err();
        assert_eq!(e.code, ErrorCode::ShapeMismatch);
        assert_eq!(data, numbered(2));
        assert_eq!(data.len(), 2);
        assert_eq!(data.labels(), [0, 1]);
    }

    #[test]
    fn training_stops_at_the_step_budget() {
        let data = numbered(5);
        let mut calls = 0;
        let training = data
            .drive(7, 2, 0, |_| {
                calls += 1;
                Ok(report(calls as f32))
            })
            .unwrap();
        assert_eq!((calls, training.steps), (7, 7));
        assert_eq!(training.last.map(|r| r.loss), Some(7.0));
    }

    #[test]
    fn resource_exhausted_ends_training_with_the_head_kept() {
        let data = numbered(5);
        let mut calls = 0;
        let training = data
            .drive(100, 2, 0, |_| {
                calls += 1;
                if calls > 3 {
                    Err(Error::new(ErrorCode::ResourceExhausted, "budget spent"))
                } else {
                    Ok(report(0.5))
                }
            })
            .unwrap();
        assert_eq!((calls, training.steps), (4, 3));
    }

    #[test]
    fn another_error_ends_training_with_that_error() {
        let e = numbered(5)
            .drive(100, 2, 0, |_| Err(Error::invalid_argument("not finite")))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn no_samples_take_no_step() {
        let training = Dataset::new(4)
            .drive(100, 8, 0, |_| panic!("no batch to step on"))
            .unwrap();
        assert_eq!(training.steps, 0);
        assert!(training.last.is_none());
    }

    #[test]
    fn a_clients_bad_body_is_skipped_and_anything_else_ends_the_job() {
        assert!(is_bad_sample(&Error::invalid_argument("not a PNG")));
        assert!(is_bad_sample(&Error::unsupported("text/plain")));
        assert!(is_bad_sample(&Error::shape_mismatch("3 values")));
        assert!(!is_bad_sample(&Error::internal("bug")));
        assert!(!is_bad_sample(&Error::new(
            ErrorCode::ResourceExhausted,
            "budget"
        )));
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for seed 0 of the reference implementation (Vigna's splitmix64.c).
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next(), 0x6e78_9e6a_a1b9_65f4);
    }
}
