//! Write edgeplug inference plugins.
//!
//! A plugin is a Rust library compiled to `wasm32-wasip2`. It does its preprocessing in the
//! sandbox ([`preprocess`]), hands tensors to the host, and lets the host do the heavy math:
//! native kernels ([`Tensor`] methods, [`Conv2d`], [`Gemm`]) and whole ONNX models
//! ([`Model`]). Tensors live in host memory; a [`Tensor`] is a handle. Quantized layers run
//! there too: a [`QuantizedTensor`] (8-bit integers with ONNX's scales and zero points) through
//! [`QConv2d`] and [`QGemm`] on the host's int8 engine (WIT 0.1.5). A plugin can train a
//! classifier head in the host ([`train`]) and let the gateway fine-tune it on its clients'
//! labeled samples ([`learn`]).
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
    //! Generated bindings of the `edgeplug:plugin/plugin` world; internal to the SDK. Every
    //! import the SDK wraps comes from here.
    //!
    //! Its export macros stay private to the SDK (`pub_export_macro: false`): both worlds
    //! export `handler`, and two public sets of the macros wit-bindgen names after the
    //! interface would collide at the crate root, so [`export!`](crate::export) uses the
    //! `learning-plugin` world's. What this one still contributes is its custom section: the
    //! `plugin` world with its `handler` export, which every plugin links (a plugin that does
    //! not learn is a component of this world).
    wit_bindgen::generate!({
        world: "plugin",
        // The crate's own copy of `wit/edgeplug.wit` (the source of truth), so the SDK packages
        // and builds outside this repository; `tests/tests/it/author.rs` fails if they differ.
        path: "wit",
        default_bindings_module: "::edgeplug_sdk::bindings",
        runtime_path: "::edgeplug_sdk::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
#[allow(missing_docs)]
pub mod learning_bindings {
    //! Generated bindings of the `edgeplug:plugin/learning-plugin` world; internal to the SDK.
    //!
    //! Every interface the two worlds share is the `plugin` world's (`with`), so a tensor or a
    //! head is one Rust type whichever world a plugin targets; only `learn` and the exports are
    //! generated here. A plugin that does not learn never calls `learn`, and a component
    //! imports only what its code calls, so its imports do not change.
    wit_bindgen::generate!({
        world: "learning-plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_learning_plugin_world",
        default_bindings_module: "::edgeplug_sdk::learning_bindings",
        runtime_path: "::edgeplug_sdk::__wit_bindgen::rt",
        with: {
            "edgeplug:plugin/types@0.1.5": crate::bindings::edgeplug::plugin::types,
            "edgeplug:plugin/ops@0.1.5": crate::bindings::edgeplug::plugin::ops,
            "edgeplug:plugin/model@0.1.5": crate::bindings::edgeplug::plugin::model,
            "edgeplug:plugin/log@0.1.5": crate::bindings::edgeplug::plugin::log,
            "edgeplug:plugin/train@0.1.5": crate::bindings::edgeplug::plugin::train,
            "edgeplug:plugin/upstream@0.1.5": crate::bindings::edgeplug::plugin::upstream,
        },
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub mod learn;
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
pub use ops::{Activation, Conv2d, Gemm, Padding, Pool2d, QConv2d, QGemm, Requantize};
pub use plugin::{Error, ErrorCode, Plugin, PluginInfo, Request, Response, TensorInfo};
pub use tensor::{ElementType, QuantParams, QuantType, QuantizedTensor, Tensor};

#[doc(hidden)]
pub mod __private {
    //! Used by [`export!`](crate::export); not part of the API.
    pub use crate::plugin::{describe_export, infer_export};

    use crate::bindings::edgeplug::plugin::{train, types};
    use crate::learn::{Job, Learner};

    /// `learner.features`: the plugin's features as the handle the export returns.
    pub fn features_export<L: Learner>(
        content_type: String,
        input: Vec<u8>,
    ) -> Result<types::Tensor, crate::Error> {
        Ok(crate::learn::features_export::<L>(content_type, input)?.0)
    }

    /// `learner.finetune`: the trained head as the handle the export returns.
    pub fn finetune_export<L: Learner>(job: Job) -> Result<train::Head, crate::Error> {
        Ok(L::finetune(job)?.0)
    }
}

/// Exports a type implementing [`Plugin`] as the plugin's handler: `export!(MyPlugin)`. Use it
/// once per plugin.
///
/// A plugin that learns (implements [`learn::Learner`] too, and names
/// `world = "edgeplug:plugin/learning-plugin@0.1.5"` in its manifest) exports both with
/// `export!(MyPlugin, learner)`; see [`learn`].
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        $crate::__export_handler!($plugin);

        // Export names such as `edgeplug:plugin/handler@0.1.5#infer` only exist in a
        // component; a native build (the plugin's own unit tests) links without them. The
        // handler's macro is the `learning-plugin` world's (the only public one, see the SDK's
        // `bindings`), named after the WIT package's version.
        #[cfg(target_arch = "wasm32")]
        $crate::__export_edgeplug_plugin_handler_0_1_5_cabi!(
            __EdgeplugHandler with_types_in $crate::learning_bindings::exports::edgeplug::plugin::handler
        );
    };
    ($plugin:ty, learner) => {
        $crate::__export_handler!($plugin);

        impl $crate::learning_bindings::exports::edgeplug::plugin::learner::Guest
            for __EdgeplugHandler
        {
            fn features(
                content_type: ::std::string::String,
                input: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<
                $crate::bindings::edgeplug::plugin::types::Tensor,
                $crate::Error,
            > {
                $crate::__private::features_export::<$plugin>(content_type, input)
            }

            fn finetune(
                job: $crate::learn::Job,
            ) -> ::core::result::Result<$crate::bindings::edgeplug::plugin::train::Head, $crate::Error>
            {
                $crate::__private::finetune_export::<$plugin>(job)
            }
        }

        // Both exports, and the `learning-plugin` world's custom section (with `learn`).
        #[cfg(target_arch = "wasm32")]
        $crate::learning_bindings::__export_learning_plugin_world!(
            __EdgeplugHandler with_types_in $crate::learning_bindings
        );

        /// The learner's entry points, so a native build (unit tests) still sees them as used.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __edgeplug_native_learner() -> (
            fn(
                ::std::string::String,
                ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<
                $crate::bindings::edgeplug::plugin::types::Tensor,
                $crate::Error,
            >,
            fn(
                $crate::learn::Job,
            ) -> ::core::result::Result<$crate::bindings::edgeplug::plugin::train::Head, $crate::Error>,
        ) {
            use $crate::learning_bindings::exports::edgeplug::plugin::learner::Guest as _;
            (__EdgeplugHandler::features, __EdgeplugHandler::finetune)
        }
    };
}

/// The handler half of [`export!`]: `__EdgeplugHandler` implementing `handler`'s trait for
/// `$plugin`. Not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_handler {
    ($plugin:ty) => {
        #[doc(hidden)]
        struct __EdgeplugHandler;

        impl $crate::learning_bindings::exports::edgeplug::plugin::handler::Guest
            for __EdgeplugHandler
        {
            fn describe()
            -> $crate::learning_bindings::exports::edgeplug::plugin::handler::PluginInfo {
                $crate::__private::describe_export::<$plugin>()
            }

            fn infer(
                request: $crate::learning_bindings::exports::edgeplug::plugin::handler::Request,
            ) -> ::core::result::Result<
                $crate::learning_bindings::exports::edgeplug::plugin::handler::Response,
                $crate::Error,
            > {
                $crate::__private::infer_export::<$plugin>(request)
            }
        }

        /// The handler's entry points, so a native build (unit tests) still sees them as used.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __edgeplug_native_handler() -> (
            fn() -> $crate::learning_bindings::exports::edgeplug::plugin::handler::PluginInfo,
            fn(
                $crate::learning_bindings::exports::edgeplug::plugin::handler::Request,
            ) -> ::core::result::Result<
                $crate::learning_bindings::exports::edgeplug::plugin::handler::Response,
                $crate::Error,
            >,
        ) {
            use $crate::learning_bindings::exports::edgeplug::plugin::handler::Guest as _;
            (__EdgeplugHandler::describe, __EdgeplugHandler::infer)
        }
    };
}
