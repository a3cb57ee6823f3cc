//! The one error type of the tensor module.

use super::ElementType;

/// Why a tensor operation refused its inputs.
///
/// Every message names the operation and the shapes involved, because these
/// errors travel back to plugin authors who cannot see the host's state.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum TensorError {
    /// Shapes (or ranks) of the operands do not fit together.
    #[error("shape mismatch: {0}")]
    ShapeMismatch(String),
    /// A parameter is out of its domain (zero stride, bad axis, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation is not implemented for this element type.
    #[error("{op}: unsupported element type {ty:?}")]
    UnsupportedType {
        /// Name of the operation.
        op: &'static str,
        /// The element type it was given.
        ty: ElementType,
    },
    /// The operation does not support this configuration (a quantized op's operand its
    /// engine cannot take).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A size overflows `usize` or exceeds [`MAX_ELEMENTS`](super::MAX_ELEMENTS).
    #[error("too large: {0}")]
    TooLarge(String),
}
