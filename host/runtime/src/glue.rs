//! The WIT glue: one `bindgen!`, and host trait impls that check arguments, convert types
//! and delegate to [`edgeplug_kernels`] and [`edgeplug_models::model`], which know nothing of WIT.
//!
//! A failure the guest caused (a bad shape, an ungranted model) is returned to it as the WIT
//! `error` record; an exhausted limit or a host bug is a trap that ends the request.

use wasmtime::component::Resource;

use super::state::{OpenModel, StoreState};
use edgeplug_kernels::{self as tensor, QTensor, Tensor, TensorError};

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../../wit",
    with: {
        "edgeplug:plugin/types.tensor": edgeplug_kernels::Tensor,
        "edgeplug:plugin/types.quantized-tensor": edgeplug_kernels::QTensor,
        "edgeplug:plugin/model.model": super::state::OpenModel,
        "edgeplug:plugin/train.head": super::glue_train::TrainHead,
    },
    imports: { default: trappable },
    trappable_error_type: {
        "edgeplug:plugin/types.error" => HostError,
    },
});

pub(crate) use edgeplug::plugin::train;
use edgeplug::plugin::{log, model, ops, types};
pub use exports::edgeplug::plugin::handler;
pub use types::{ElementType as WitElementType, Error as WitError, ErrorCode as WitErrorCode};

/// What a host function returns on failure: an error for the guest, or a trap.
#[derive(Debug)]
pub enum HostError {
    Guest(WitError),
    Trap(wasmtime::Error),
}

impl HostError {
    pub fn guest(code: WitErrorCode, message: impl Into<String>) -> HostError {
        HostError::Guest(WitError {
            code,
            message: message.into(),
        })
    }
}

impl From<TensorError> for HostError {
    fn from(e: TensorError) -> HostError {
        let code = match &e {
            TensorError::ShapeMismatch(_) => WitErrorCode::ShapeMismatch,
            TensorError::InvalidArgument(_) => WitErrorCode::InvalidArgument,
            TensorError::UnsupportedType { .. } | TensorError::Unsupported(_) => {
                WitErrorCode::Unsupported
            }
            TensorError::TooLarge(_) => WitErrorCode::ResourceExhausted,
        };
        HostError::guest(code, e.to_string())
    }
}

impl From<wasmtime::component::ResourceTableError> for HostError {
    fn from(e: wasmtime::component::ResourceTableError) -> HostError {
        HostError::Trap(wasmtime::Error::new(e))
    }
}

impl From<wasmtime::Error> for HostError {
    fn from(e: wasmtime::Error) -> HostError {
        HostError::Trap(e)
    }
}

pub(crate) type HostResult<T> = Result<T, HostError>;

pub fn to_element_type(ty: WitElementType) -> tensor::ElementType {
    match ty {
        WitElementType::Float32 => tensor::ElementType::F32,
        WitElementType::Uint8 => tensor::ElementType::U8,
        WitElementType::Int64 => tensor::ElementType::I64,
    }
}

pub fn from_element_type(ty: tensor::ElementType) -> WitElementType {
    match ty {
        tensor::ElementType::F32 => WitElementType::Float32,
        tensor::ElementType::U8 => WitElementType::Uint8,
        tensor::ElementType::I64 => WitElementType::Int64,
    }
}

fn dims(shape: &[u32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

fn wit_shape(shape: &[usize]) -> Vec<u32> {
    // Shapes are bounded by `tensor::MAX_ELEMENTS`, far below u32::MAX.
    shape.iter().map(|&d| d as u32).collect()
}

fn tensor_info(spec: &edgeplug_models::model::TensorSpec) -> types::TensorInfo {
    types::TensorInfo {
        name: spec.name.clone(),
        element_type: from_element_type(spec.element_type),
        shape: spec.shape.clone(),
    }
}

impl types::Host for StoreState {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<WitError> {
        match err {
            HostError::Guest(e) => Ok(e),
            HostError::Trap(e) => Err(e),
        }
    }
}

impl types::HostTensor for StoreState {
    fn from_f32(&mut self, shape: Vec<u32>, data: Vec<f32>) -> HostResult<Resource<Tensor>> {
        let t = Tensor::from_f32(dims(&shape), data)?;
        self.push_tensor(t)
    }

    fn from_bytes(
        &mut self,
        shape: Vec<u32>,
        element_type: WitElementType,
        data: Vec<u8>,
    ) -> HostResult<Resource<Tensor>> {
        let t = Tensor::from_le_bytes(dims(&shape), to_element_type(element_type), &data)?;
        self.push_tensor(t)
    }

    fn load(&mut self, name: String) -> HostResult<Resource<Tensor>> {
        let t = self.plugin().weight(&name)?;
        self.push_tensor(t)
    }

    fn shape(&mut self, this: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(wit_shape(self.table.get(&this)?.shape()))
    }

    fn element_type(&mut self, this: Resource<Tensor>) -> wasmtime::Result<WitElementType> {
        Ok(from_element_type(self.table.get(&this)?.element_type()))
    }

    fn to_f32(&mut self, this: Resource<Tensor>) -> HostResult<Vec<f32>> {
        Ok(self.table.get(&this)?.as_f32()?.to_vec())
    }

    fn to_bytes(&mut self, this: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&this)?.to_le_bytes())
    }

    fn drop(&mut self, this: Resource<Tensor>) -> wasmtime::Result<()> {
        self.drop_tensor(this)
    }
}

// WIT 0.1.5: quantized tensors.

fn quant_type(ty: types::QuantType) -> tensor::QuantType {
    match ty {
        types::QuantType::Uint8 => tensor::QuantType::U8,
        types::QuantType::Int8 => tensor::QuantType::I8,
    }
}

fn wit_quant_type(ty: tensor::QuantType) -> types::QuantType {
    match ty {
        tensor::QuantType::U8 => types::QuantType::Uint8,
        tensor::QuantType::I8 => types::QuantType::Int8,
    }
}

/// The kernels check the values (finite positive scales, zero points in range, the axis
/// against the shape); an axis beyond any rank is refused by that same check.
fn quant_params(p: types::QuantParams) -> tensor::QuantParams {
    tensor::QuantParams {
        scales: p.scales,
        zero_points: p.zero_points,
        axis: p.axis as usize,
    }
}

fn requantize(r: ops::Requantize) -> tensor::Requantize {
    tensor::Requantize {
        scale: r.scale,
        zero_point: r.zero_point,
    }
}

impl types::HostQuantizedTensor for StoreState {
    fn from_bytes(
        &mut self,
        shape: Vec<u32>,
        quant_type: types::QuantType,
        data: Vec<u8>,
        params: types::QuantParams,
    ) -> HostResult<Resource<QTensor>> {
        let q = QTensor::new(
            dims(&shape),
            self::quant_type(quant_type),
            data,
            quant_params(params),
        )?;
        self.push_qtensor(q)
    }

    fn from_tensor(
        &mut self,
        data: Resource<Tensor>,
        quant_type: types::QuantType,
        params: types::QuantParams,
    ) -> HostResult<Resource<QTensor>> {
        let q = QTensor::from_tensor(
            self.table.get(&data)?,
            self::quant_type(quant_type),
            quant_params(params),
        )?;
        self.push_qtensor(q)
    }

    fn shape(&mut self, this: Resource<QTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(wit_shape(self.table.get(&this)?.shape()))
    }

    fn quant_type(&mut self, this: Resource<QTensor>) -> wasmtime::Result<types::QuantType> {
        Ok(wit_quant_type(self.table.get(&this)?.quant_type()))
    }

    fn params(&mut self, this: Resource<QTensor>) -> wasmtime::Result<types::QuantParams> {
        let p = self.table.get(&this)?.params();
        Ok(types::QuantParams {
            scales: p.scales.clone(),
            zero_points: p.zero_points.clone(),
            // The kernels checked the axis against a shape of at most u32 dimensions.
            axis: p.axis as u32,
        })
    }

    fn to_bytes(&mut self, this: Resource<QTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&this)?.data().to_vec())
    }

    fn drop(&mut self, this: Resource<QTensor>) -> wasmtime::Result<()> {
        self.drop_qtensor(this)
    }
}

fn padding(p: ops::Padding) -> tensor::Padding {
    tensor::Padding {
        top: p.top as usize,
        left: p.left as usize,
        bottom: p.bottom as usize,
        right: p.right as usize,
    }
}

fn activation(a: ops::Activation) -> tensor::Activation {
    match a {
        ops::Activation::None => tensor::Activation::None,
        ops::Activation::Relu => tensor::Activation::Relu,
        ops::Activation::Relu6 => tensor::Activation::Relu6,
        ops::Activation::Sigmoid => tensor::Activation::Sigmoid,
        ops::Activation::Tanh => tensor::Activation::Tanh,
    }
}

fn pool_params(p: ops::Pool2dParams) -> tensor::Pool2dParams {
    tensor::Pool2dParams {
        kernel: [p.kernel_h as usize, p.kernel_w as usize],
        stride: [p.stride_h as usize, p.stride_w as usize],
        padding: padding(p.padding),
        dilation: [1, 1],
        count_include_pad: p.count_include_pad,
        ceil_mode: p.ceil_mode,
    }
}

impl StoreState {
    /// Runs a unary kernel on a borrowed tensor and stores the result.
    fn unary(
        &mut self,
        x: Resource<Tensor>,
        f: impl FnOnce(&Tensor) -> Result<Tensor, TensorError>,
    ) -> HostResult<Resource<Tensor>> {
        let out = f(self.table.get(&x)?)?;
        self.push_tensor(out)
    }

    fn binary(
        &mut self,
        a: Resource<Tensor>,
        b: Resource<Tensor>,
        f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor, TensorError>,
    ) -> HostResult<Resource<Tensor>> {
        let out = f(self.table.get(&a)?, self.table.get(&b)?)?;
        self.push_tensor(out)
    }
}

fn conv2d_params(params: ops::Conv2dParams) -> tensor::Conv2dParams {
    tensor::Conv2dParams {
        stride: [params.stride_h as usize, params.stride_w as usize],
        padding: padding(params.padding),
        dilation: [params.dilation_h as usize, params.dilation_w as usize],
        groups: params.groups as usize,
        activation: activation(params.activation),
    }
}

impl ops::Host for StoreState {
    fn conv2d(
        &mut self,
        input: Resource<Tensor>,
        weight: Resource<Tensor>,
        bias: Option<Resource<Tensor>>,
        params: ops::Conv2dParams,
    ) -> HostResult<Resource<Tensor>> {
        let p = conv2d_params(params);
        let bias = match &bias {
            Some(b) => Some(self.table.get(b)?),
            None => None,
        };
        let out = tensor::conv2d(self.table.get(&input)?, self.table.get(&weight)?, bias, &p)?;
        self.push_tensor(out)
    }

    fn gemm(
        &mut self,
        a: Resource<Tensor>,
        b: Resource<Tensor>,
        c: Option<Resource<Tensor>>,
        params: ops::GemmParams,
    ) -> HostResult<Resource<Tensor>> {
        let p = tensor::GemmParams {
            trans_a: params.trans_a,
            trans_b: params.trans_b,
            alpha: params.alpha,
            beta: params.beta,
            activation: activation(params.activation),
        };
        let c = match &c {
            Some(c) => Some(self.table.get(c)?),
            None => None,
        };
        let out = tensor::gemm(self.table.get(&a)?, self.table.get(&b)?, c, &p)?;
        self.push_tensor(out)
    }

    fn matmul(&mut self, a: Resource<Tensor>, b: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::matmul)
    }

    fn max_pool2d(
        &mut self,
        input: Resource<Tensor>,
        params: ops::Pool2dParams,
    ) -> HostResult<Resource<Tensor>> {
        let p = pool_params(params);
        self.unary(input, |x| tensor::max_pool2d(x, &p))
    }

    fn avg_pool2d(
        &mut self,
        input: Resource<Tensor>,
        params: ops::Pool2dParams,
    ) -> HostResult<Resource<Tensor>> {
        let p = pool_params(params);
        self.unary(input, |x| tensor::avg_pool2d(x, &p))
    }

    fn global_avg_pool(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::global_avg_pool)
    }

    fn relu(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::relu)
    }

    fn relu6(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::relu6)
    }

    fn sigmoid(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::sigmoid)
    }

    fn tanh(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::tanh)
    }

    fn clip(
        &mut self,
        input: Resource<Tensor>,
        min: f32,
        max: f32,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::clip(x, min, max))
    }

    fn softmax(&mut self, input: Resource<Tensor>, axis: i32) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::softmax(x, axis as isize))
    }

    fn add(&mut self, a: Resource<Tensor>, b: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::add)
    }

    fn mul(&mut self, a: Resource<Tensor>, b: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::mul)
    }

    fn batch_norm(
        &mut self,
        input: Resource<Tensor>,
        scale: Resource<Tensor>,
        bias: Resource<Tensor>,
        mean: Resource<Tensor>,
        variance: Resource<Tensor>,
        epsilon: f32,
    ) -> HostResult<Resource<Tensor>> {
        let out = tensor::batch_norm(
            self.table.get(&input)?,
            self.table.get(&scale)?,
            self.table.get(&bias)?,
            self.table.get(&mean)?,
            self.table.get(&variance)?,
            epsilon,
        )?;
        self.push_tensor(out)
    }

    fn reshape(
        &mut self,
        input: Resource<Tensor>,
        shape: Vec<i64>,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::reshape(x, &shape))
    }

    fn flatten(&mut self, input: Resource<Tensor>, axis: u32) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::flatten(x, axis as usize))
    }

    fn transpose(
        &mut self,
        input: Resource<Tensor>,
        perm: Vec<u32>,
    ) -> HostResult<Resource<Tensor>> {
        let perm: Vec<usize> = perm.iter().map(|&p| p as usize).collect();
        self.unary(input, |x| tensor::transpose(x, &perm))
    }

    fn concat(&mut self, inputs: Vec<Resource<Tensor>>, axis: u32) -> HostResult<Resource<Tensor>> {
        let tensors = inputs
            .iter()
            .map(|r| self.table.get(r))
            .collect::<Result<Vec<_>, _>>()?;
        let out = tensor::concat(&tensors, axis as usize)?;
        self.push_tensor(out)
    }

    fn channel_shuffle(
        &mut self,
        input: Resource<Tensor>,
        groups: u32,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::channel_shuffle(x, groups as usize))
    }

    // WIT 0.1.3: elementwise math and reductions.

    fn sqrt(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::sqrt)
    }

    fn abs(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::abs)
    }

    fn exp(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::exp)
    }

    fn log(&mut self, input: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.unary(input, tensor::log)
    }

    fn sub(&mut self, a: Resource<Tensor>, b: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::sub)
    }

    fn div(&mut self, a: Resource<Tensor>, b: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::div)
    }

    fn pow(&mut self, a: Resource<Tensor>, b: Resource<Tensor>) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::pow)
    }

    fn maximum(
        &mut self,
        a: Resource<Tensor>,
        b: Resource<Tensor>,
    ) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::maximum)
    }

    fn minimum(
        &mut self,
        a: Resource<Tensor>,
        b: Resource<Tensor>,
    ) -> HostResult<Resource<Tensor>> {
        self.binary(a, b, tensor::minimum)
    }

    fn reduce_sum(
        &mut self,
        input: Resource<Tensor>,
        axes: Vec<i32>,
        keepdims: bool,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::reduce_sum(x, &axes_of(&axes), keepdims))
    }

    fn reduce_mean(
        &mut self,
        input: Resource<Tensor>,
        axes: Vec<i32>,
        keepdims: bool,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::reduce_mean(x, &axes_of(&axes), keepdims))
    }

    fn reduce_max(
        &mut self,
        input: Resource<Tensor>,
        axes: Vec<i32>,
        keepdims: bool,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::reduce_max(x, &axes_of(&axes), keepdims))
    }

    fn argmax(
        &mut self,
        input: Resource<Tensor>,
        axis: i32,
        keepdims: bool,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::argmax(x, axis as isize, keepdims))
    }

    fn reduce_min(
        &mut self,
        input: Resource<Tensor>,
        axes: Vec<i32>,
        keepdims: bool,
    ) -> HostResult<Resource<Tensor>> {
        self.unary(input, |x| tensor::reduce_min(x, &axes_of(&axes), keepdims))
    }

    // WIT 0.1.5: quantized ops.

    fn quantize(
        &mut self,
        input: Resource<Tensor>,
        quant_type: types::QuantType,
        params: types::QuantParams,
    ) -> HostResult<Resource<QTensor>> {
        let q = tensor::quantize(
            self.table.get(&input)?,
            self::quant_type(quant_type),
            quant_params(params),
        )?;
        self.push_qtensor(q)
    }

    fn dequantize(&mut self, input: Resource<QTensor>) -> HostResult<Resource<Tensor>> {
        let out = tensor::dequantize(self.table.get(&input)?)?;
        self.push_tensor(out)
    }

    fn qconv2d(
        &mut self,
        input: Resource<QTensor>,
        weight: Resource<QTensor>,
        bias: Option<Vec<i32>>,
        params: ops::Conv2dParams,
        output: ops::Requantize,
    ) -> HostResult<Resource<QTensor>> {
        let out = tensor::qconv2d(
            self.table.get(&input)?,
            self.table.get(&weight)?,
            bias.as_deref(),
            &conv2d_params(params),
            requantize(output),
        )?;
        self.push_qtensor(out)
    }

    fn qgemm(
        &mut self,
        a: Resource<QTensor>,
        b: Resource<QTensor>,
        bias: Option<Vec<i32>>,
        trans_b: bool,
        activation: ops::Activation,
        output: ops::Requantize,
    ) -> HostResult<Resource<QTensor>> {
        let out = tensor::qgemm(
            self.table.get(&a)?,
            self.table.get(&b)?,
            bias.as_deref(),
            trans_b,
            self::activation(activation),
            requantize(output),
        )?;
        self.push_qtensor(out)
    }
}

/// WIT axes (s32) as the kernels' `isize`; the kernels check the range.
fn axes_of(axes: &[i32]) -> Vec<isize> {
    axes.iter().map(|&a| a as isize).collect()
}

impl model::Host for StoreState {}

impl model::HostModel for StoreState {
    fn open(&mut self, name: String) -> HostResult<Resource<OpenModel>> {
        let model = self.plugin().model(&name)?;
        Ok(self.table.push(OpenModel(model))?)
    }

    fn inputs(&mut self, this: Resource<OpenModel>) -> wasmtime::Result<Vec<types::TensorInfo>> {
        Ok(self
            .table
            .get(&this)?
            .0
            .inputs()
            .iter()
            .map(tensor_info)
            .collect())
    }

    fn outputs(&mut self, this: Resource<OpenModel>) -> wasmtime::Result<Vec<types::TensorInfo>> {
        Ok(self
            .table
            .get(&this)?
            .0
            .outputs()
            .iter()
            .map(tensor_info)
            .collect())
    }

    fn backend(&mut self, this: Resource<OpenModel>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.backend().to_string())
    }

    fn run(
        &mut self,
        this: Resource<OpenModel>,
        inputs: Vec<Resource<Tensor>>,
    ) -> HostResult<Vec<Resource<Tensor>>> {
        let model = self.table.get(&this)?.0.clone();
        let tensors = inputs
            .iter()
            .map(|r| self.table.get(r))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = model
            .run(&tensors)
            .map_err(|e| HostError::guest(WitErrorCode::InvalidArgument, e.to_string()))?;
        outputs.into_iter().map(|t| self.push_tensor(t)).collect()
    }

    fn drop(&mut self, this: Resource<OpenModel>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl log::Host for StoreState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.log_message(level, &message);
        Ok(())
    }
}
