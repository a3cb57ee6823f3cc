//! The head: `logits = x·W1 + b1`, or `logits = relu(x·W1 + b1)·W2 + b2`, trained with the
//! mean softmax cross-entropy over a batch. Weights are `[inputs, outputs]`, biases
//! `[outputs]`. The backward pass of each layer is two GEMMs on the host kernels:
//! `dW = xᵀ·dz` and `dx = dz·Wᵀ`.

use edgeplug_kernels::{Activation, GemmParams, Tensor, gemm};

use super::TrainError;
use super::rng::SplitMix64;

/// A head's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSpec {
    /// Width of a feature vector.
    pub features: usize,
    pub classes: usize,
    /// With a hidden layer of this width (dense-ReLU-dense); without, one dense layer.
    pub hidden: Option<usize>,
}

impl HeadSpec {
    /// `(inputs, outputs)` of each layer.
    fn layers(&self) -> Vec<(usize, usize)> {
        match self.hidden {
            None => vec![(self.features, self.classes)],
            Some(h) => vec![(self.features, h), (h, self.classes)],
        }
    }

    /// The shape of each parameter: weight then bias, layer by layer.
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        self.layers()
            .into_iter()
            .flat_map(|(i, o)| [vec![i, o], vec![o]])
            .collect()
    }
}

/// A classifier head and its weights.
#[derive(Debug, Clone)]
pub struct Head {
    spec: HeadSpec,
    params: Vec<Tensor>,
}

/// The gradient of the loss with respect to each parameter, in [`Head::params`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads(pub Vec<Vec<f32>>);

impl Grads {
    pub fn byte_size(&self) -> usize {
        self.0.iter().map(|g| g.len() * 4).sum()
    }
}

/// Loss and accuracy on a labeled batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f32,
    pub correct: usize,
    pub total: usize,
}

impl Evaluation {
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

fn product(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor, TrainError> {
    let params = GemmParams {
        trans_a,
        trans_b,
        alpha: 1.0,
        beta: 1.0,
        activation: Activation::None,
    };
    Ok(gemm(a, b, None, &params)?)
}

impl Head {
    /// A head with weights drawn uniformly from ±sqrt(6 / (inputs + outputs)) (Glorot) from
    /// `seed`, and zero biases.
    pub fn new(spec: HeadSpec, seed: u64) -> Result<Head, TrainError> {
        if spec.features == 0 || spec.classes < 2 || spec.hidden == Some(0) {
            return Err(TrainError::Shape(format!(
                "a head needs features > 0, at least 2 classes and a non-empty hidden layer, got {spec:?}"
            )));
        }
        let mut rng = SplitMix64::new(seed);
        let mut params = Vec::new();
        for (inputs, outputs) in spec.layers() {
            let limit = (6.0 / (inputs + outputs) as f32).sqrt();
            let weights = (0..inputs * outputs)
                .map(|_| limit * rng.next_symmetric())
                .collect();
            params.push(Tensor::from_f32(vec![inputs, outputs], weights)?);
            params.push(Tensor::from_f32(vec![outputs], vec![0.0; outputs])?);
        }
        Ok(Head { spec, params })
    }

    /// A head with the given weights (each in [`HeadSpec::param_shapes`] order and shape).
    pub fn from_params(spec: HeadSpec, params: Vec<Vec<f32>>) -> Result<Head, TrainError> {
        let shapes = spec.param_shapes();
        if params.len() != shapes.len() {
            return Err(TrainError::Shape(format!(
                "{spec:?} has {} parameters, got {}",
                shapes.len(),
                params.len()
            )));
        }
        let params = params
            .into_iter()
            .zip(shapes)
            .map(|(values, shape)| Tensor::from_f32(shape, values))
            .collect::<Result<Vec<_>, _>>()?;
        if params
            .iter()
            .any(|p| p.as_f32().is_ok_and(|v| v.iter().any(|x| !x.is_finite())))
        {
            return Err(TrainError::NonFinite("a given weight"));
        }
        Ok(Head { spec, params })
    }

    pub fn spec(&self) -> HeadSpec {
        self.spec
    }

    /// Weight then bias, layer by layer.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    pub(crate) fn set_params(&mut self, params: Vec<Tensor>) {
        self.params = params;
    }

    /// Bytes of the weights.
    pub fn byte_size(&self) -> usize {
        self.params.iter().map(Tensor::byte_size).sum()
    }

    fn check_batch(&self, x: &Tensor, labels: Option<&[usize]>) -> Result<usize, TrainError> {
        let [n, features] = x.shape() else {
            return Err(TrainError::Shape(format!(
                "features must be [batch, {}], got {:?}",
                self.spec.features,
                x.shape()
            )));
        };
        if *features != self.spec.features {
            return Err(TrainError::Shape(format!(
                "features must be [batch, {}], got {:?}",
                self.spec.features,
                x.shape()
            )));
        }
        if x.as_f32()?.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite("an input feature"));
        }
        if let Some(labels) = labels {
            if labels.len() != *n {
                return Err(TrainError::Shape(format!(
                    "{n} feature rows but {} labels",
                    labels.len()
                )));
            }
            if let Some((row, &label)) = labels
                .iter()
                .enumerate()
                .find(|(_, l)| **l >= self.spec.classes)
            {
                return Err(TrainError::Label {
                    row,
                    label,
                    classes: self.spec.classes,
                });
            }
        }
        Ok(*n)
    }

    /// `x·W + b` for layer `layer`.
    fn affine(&self, x: &Tensor, layer: usize) -> Result<Tensor, TrainError> {
        let (w, b) = (&self.params[2 * layer], &self.params[2 * layer + 1]);
        let params = GemmParams {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 1.0,
            activation: Activation::None,
        };
        Ok(gemm(x, w, Some(b), &params)?)
    }

    /// The logits `[batch, classes]` of a batch of features `[batch, features]`, and the
    /// hidden pre-activation when there is a hidden layer.
    fn forward_keep(&self, x: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>), TrainError> {
        match self.spec.hidden {
            None => Ok((self.affine(x, 0)?, None)),
            Some(_) => {
                let z1 = self.affine(x, 0)?;
                let h = edgeplug_kernels::relu(&z1)?;
                Ok((self.affine(&h, 1)?, Some((z1, h))))
            }
        }
    }

    /// The logits `[batch, classes]` of a batch of features `[batch, features]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        self.check_batch(x, None)?;
        Ok(self.forward_keep(x)?.0)
    }

    /// The mean softmax cross-entropy of the batch and its gradient.
    pub fn loss_and_grad(&self, x: &Tensor, labels: &[usize]) -> Result<(f32, Grads), TrainError> {
        let n = self.check_batch(x, Some(labels))?;
        if n == 0 {
            return Err(TrainError::Shape("an empty batch has no gradient".into()));
        }
        let (logits, hidden) = self.forward_keep(x)?;
        let (loss, dlogits) = softmax_cross_entropy(logits.as_f32()?, labels, self.spec.classes);
        let dz = Tensor::from_f32(vec![n, self.spec.classes], dlogits)?;
        let mut grads = Vec::with_capacity(self.params.len());
        match hidden {
            None => {
                grads.push(product(x, &dz, true, false)?.as_f32()?.to_vec());
                grads.push(column_sums(dz.as_f32()?, self.spec.classes));
            }
            Some((z1, h)) => {
                let width = self.spec.hidden.unwrap_or_default();
                let dw2 = product(&h, &dz, true, false)?.as_f32()?.to_vec();
                let db2 = column_sums(dz.as_f32()?, self.spec.classes);
                let dh = product(&dz, &self.params[2], false, true)?;
                let dz1: Vec<f32> = dh
                    .as_f32()?
                    .iter()
                    .zip(z1.as_f32()?)
                    .map(|(g, z)| if *z > 0.0 { *g } else { 0.0 })
                    .collect();
                let dz1 = Tensor::from_f32(vec![n, width], dz1)?;
                grads.push(product(x, &dz1, true, false)?.as_f32()?.to_vec());
                grads.push(column_sums(dz1.as_f32()?, width));
                grads.push(dw2);
                grads.push(db2);
            }
        }
        Ok((loss, Grads(grads)))
    }

    /// Loss and accuracy on a labeled batch (ties go to the lower class).
    pub fn evaluate(&self, x: &Tensor, labels: &[usize]) -> Result<Evaluation, TrainError> {
        let n = self.check_batch(x, Some(labels))?;
        if n == 0 {
            return Ok(Evaluation {
                loss: 0.0,
                correct: 0,
                total: 0,
            });
        }
        let logits = self.forward_keep(x)?.0;
        let values = logits.as_f32()?;
        let (loss, _) = softmax_cross_entropy(values, labels, self.spec.classes);
        let correct = values
            .chunks_exact(self.spec.classes)
            .zip(labels)
            .filter(|(row, label)| argmax(row) == **label)
            .count();
        Ok(Evaluation {
            loss,
            correct,
            total: n,
        })
    }
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

fn column_sums(rows: &[f32], width: usize) -> Vec<f32> {
    let mut sums = vec![0.0; width];
    for row in rows.chunks_exact(width) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    sums
}

/// The mean cross-entropy of `softmax(logits)` against `labels`, and its gradient with
/// respect to the logits, `(softmax - onehot) / batch`.
fn softmax_cross_entropy(logits: &[f32], labels: &[usize], classes: usize) -> (f32, Vec<f32>) {
    let n = labels.len();
    let mut grad = vec![0.0f32; logits.len()];
    let mut loss = 0.0f64;
    for ((row, label), out) in logits
        .chunks_exact(classes)
        .zip(labels)
        .zip(grad.chunks_exact_mut(classes))
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (o, v) in out.iter_mut().zip(row) {
            *o = (v - max).exp();
            sum += *o;
        }
        loss += f64::from(sum.ln() - (row[*label] - max));
        for o in out.iter_mut() {
            *o /= sum * n as f32;
        }
        out[*label] -= 1.0 / n as f32;
    }
    ((loss / n as f64) as f32, grad)
}
