//! Write edgeplug inference plugins.
//!
//! A plugin is a Rust library compiled to `wasm32-wasip2`. It does its preprocessing in the
//! sandbox ([`preprocess`]), hands tensors to the host, and lets the host do the heavy math:
//! native kernels ([`Tensor`] methods, [`Conv2d`], [`Gemm`]) and whole ONNX models
//! ([`Model`]). Tensors live in host memory; a [`Tensor`] is a handle.
//!
//! ```ignore
//! use edgeplug_sdk::{export, Error, Model, Plugin, PluginInfo, Request, Response, Tensor};
//!
//! struct Doubler;
//!
//! impl Plugin for Doubler {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("doubler", env!("CARGO_PKG_VERSION"))
//!     }
//!     fn infer(request: Request) -> Result<Response, Error> {
//!         let values: Vec<f32> = request.json()?;
//!         let x = Tensor::from_slice(&[values.len()], &values)?;
//!         let y = x.add(&x)?;
//!         Response::json(&y.to_vec()?)
//!     }
//! }
//!
//! export!(Doubler);
//! ```
#![deny(missing_docs)]

extern crate self as edgeplug_sdk;

#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    //! Generated bindings of the `edgeplug:plugin/plugin` world; internal to the SDK.
    wit_bindgen::generate!({
        world: "plugin",
        // The crate's own copy of `wit/edgeplug.wit` (the source of truth), so the SDK packages
        // and builds outside this repository; `tests/tests/it/author.rs` fails if they differ.
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::edgeplug_sdk::bindings",
        runtime_path: "::edgeplug_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub mod log;
mod model;
pub mod npy;
mod ops;
mod plugin;
/// Decoding and preprocessing of photos, bit-exact with Pillow (the `edgeplug-preprocess`
/// crate, which wasi:nn guests can use without this SDK).
pub use edgeplug_preprocess as preprocess;
#[cfg(test)]
mod preprocess_tests;
mod tensor;
pub mod train;
pub mod upstream;

pub use model::Model;
pub use ops::{Activation, Conv2d, Gemm, Padding, Pool2d};
pub use plugin::{Error, ErrorCode, Plugin, PluginInfo, Request, Response, TensorInfo};
pub use tensor::{ElementType, Tensor};

#[doc(hidden)]
pub mod __private {
    //! Used by [`export!`](crate::export); not part of the API.
    pub use crate::plugin::{describe_export, infer_export};
}

/// Exports a type implementing [`Plugin`] as the plugin's handler. Use it once per plugin.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __EdgeplugHandler;

        impl $crate::bindings::exports::edgeplug::plugin::handler::Guest for __EdgeplugHandler {
            fn describe() -> $crate::bindings::exports::edgeplug::plugin::handler::PluginInfo {
                $crate::__private::describe_export::<$plugin>()
            }

            fn infer(
                request: $crate::bindings::exports::edgeplug::plugin::handler::Request,
            ) -> ::core::result::Result<
                $crate::bindings::exports::edgeplug::plugin::handler::Response,
                $crate::Error,
            > {
                $crate::__private::infer_export::<$plugin>(request)
            }
        }

        // Export names such as `edgeplug:plugin/handler@0.1.0#infer` only exist in a
        // component; a native build (the plugin's own unit tests) links without them.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_plugin_world!(__EdgeplugHandler with_types_in $crate::bindings);

        /// The handler's entry points, so a native build (unit tests) still sees them as used.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __edgeplug_native_handler() -> (
            fn() -> $crate::bindings::exports::edgeplug::plugin::handler::PluginInfo,
            fn(
                $crate::bindings::exports::edgeplug::plugin::handler::Request,
            ) -> ::core::result::Result<
                $crate::bindings::exports::edgeplug::plugin::handler::Response,
                $crate::Error,
            >,
        ) {
            use $crate::bindings::exports::edgeplug::plugin::handler::Guest as _;
            (__EdgeplugHandler::describe, __EdgeplugHandler::infer)
        }
    };
}
