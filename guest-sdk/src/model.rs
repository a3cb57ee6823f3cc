//! Whole ONNX models run by the host.

use crate::bindings::edgeplug::plugin::model;
use crate::{Error, Tensor, TensorInfo};

/// A model the plugin's manifest grants, loaded and optimized once in the host and shared by
/// every instance of the plugin.
#[derive(Debug)]
pub struct Model(model::Model);

impl Model {
    /// Opens a granted model by its name in the manifest (`[grants.models]`).
    pub fn open(name: &str) -> Result<Model, Error> {
        Ok(Model(model::Model::open(name)?))
    }

    /// The model's inputs, in the order [`Model::run`] takes them.
    pub fn inputs(&self) -> Vec<TensorInfo> {
        self.0.inputs()
    }

    /// The model's outputs, in the order [`Model::run`] returns them.
    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.0.outputs()
    }

    /// Which engine runs the model.
    pub fn backend(&self) -> String {
        self.0.backend()
    }

    /// Runs the model.
    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, Error> {
        let handles: Vec<&_> = inputs.iter().map(|t| &t.0).collect();
        Ok(self.0.run(&handles)?.into_iter().map(Tensor).collect())
    }
}
