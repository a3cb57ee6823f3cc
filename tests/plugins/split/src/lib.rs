//! Split inference, for the split benchmark (`tests/benches/split.rs`): a model cut in two
//! (`edgeplug_models::split`) runs its head on one gateway and its tail on another.
//!
//! One component, two roles, chosen by the manifest's grants: granted a model `head` (and the
//! upstream `tail`), it runs the head on the request's tensor `input` and sends the cut tensor
//! to the upstream's model `split` as its `input`, answering with what comes back; granted a
//! model `tail` only, it is that upstream model: it runs the tail on `input` and answers its
//! outputs.

use edgeplug_sdk::{
    ElementType, Error, Model, Plugin, PluginInfo, Request, Response, TensorInfo, export, upstream,
};

struct Split;

impl Plugin for Split {
    fn describe() -> PluginInfo {
        // The cut tensor's rank depends on the cut: v2 checks input names only.
        PluginInfo::new("split", env!("CARGO_PKG_VERSION"))
            .description("Split inference: a model's head here, its tail upstream")
            .input(TensorInfo::new(
                "input",
                ElementType::Float32,
                &[-1, -1, -1, -1],
            ))
    }

    fn infer(mut request: Request) -> Result<Response, Error> {
        let input = request.f32_input("input")?;
        let outputs = match Model::open("head") {
            Ok(head) => {
                let middle = head.run(&[&input])?.remove(0);
                upstream::infer("tail", "split", &[("input", &middle)])?
            }
            Err(_) => {
                let tail = Model::open("tail")?;
                let names: Vec<String> = tail.outputs().into_iter().map(|o| o.name).collect();
                names.into_iter().zip(tail.run(&[&input])?).collect()
            }
        };
        let mut response = Response::new("application/octet-stream", Vec::new());
        for (name, tensor) in outputs {
            response = response.with_tensor(&name, tensor);
        }
        Ok(response)
    }
}

export!(Split);
