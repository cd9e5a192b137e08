//! Fused CPU kernels for the hot spots of a ViT step on burn-flex, forward and backward: exact
//! GELU, softmax over the last axis and LayerNorm, each one vectorised pass over the data
//! spread over all cores ([`kernels`]); multi-head self-attention, one pass per image and head
//! ([`attention`](mod@attention)); and linear layers, their products on blocks of rows
//! ([`linear`](mod@linear)). The matrix products of the last two go through
//! [`products`], the module's one `unsafe` code.
//!
//! Why: burn-flex computes GELU with scalar `erf` and `exp` on one thread, and burn's autodiff
//! builds softmax and LayerNorm from separate element-wise ops (five and nine); in `trainer
//! bench` GELU and softmax took about a third of the main thread's time, LayerNorm a ninth of
//! the step. They reach burn through
//! a backend extension (`#[backend_extension]`): [`FusedOps`] is implemented for `Flex` and
//! for `Autodiff<Flex>`, whose backward passes are written here. Every other backend (wgpu,
//! CUDA, ndarray) and every non-f32 tensor keeps burn's own ops (GELU excepted, whose backward
//! burn approximates off burn-flex: [`exact_gelu`]): [`gelu`], [`softmax`], [`layer_norm`],
//! [`attention()`] and [`linear()`] choose by the tensor's device and float type.
//!
//! The maths: GELU(x) = x Φ(x) with Φ(x) = erfc(-x/√2)/2, erfc from the Chebyshev fit of
//! Numerical Recipes (fractional error below 1.2e-7 everywhere, so Φ is as exact in the tails
//! as near 0, where `1 + erf` loses digits), `exp` by Cody-Waite range reduction and a degree-6
//! polynomial (Cephes' `expf`). `tests` bound both against libm in f64.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor, activation};

mod attention;
mod kernels;
mod linear;
mod math;
mod products;
use attention::{attention_backward, attention_forward};
use kernels::{
    RowStats, gelu_backward, gelu_forward, layer_norm_backward, layer_norm_forward, softmax_backward, softmax_forward,
};
use linear::{Wanted, linear_backward, linear_forward};

/// Burn operations with a fused kernel on burn-flex (and autodiff over it).
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// Exact (erf) GELU, element-wise.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Softmax over the last axis.
    fn fused_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// LayerNorm over the last axis: (x - mean) / sqrt(var + epsilon) * gamma + beta.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
    /// Multi-head self-attention of the packed projections `qkv` `[batch, tokens, 3 * dim]`
    /// into `[batch, tokens, dim]` ([`attention`]).
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
    /// `x W + b` over the last axis, `weight` `[d_in, d_out]` ([`linear`]).
    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Exact GELU, forward and backward: fused on burn-flex in f32, burn-flex's own in half
/// precision (its backward is exact), [`exact_gelu`] on every other backend.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if fused(&x) {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_gelu(x.into_dispatch()))
    } else if x.device() == Device::flex() {
        activation::gelu(x)
    } else {
        exact_gelu(x)
    }
}

/// GELU, x Φ(x) with Φ(x) = (1 + erf(x/√2))/2, from element-wise ops, so that autodiff
/// differentiates the function itself: burn's `gelu` (burn-backend 0.22's default
/// `gelu_backward`, which the CubeCL backends keep, wgpu and CUDA) takes the derivative of
/// the tanh approximation instead, 4-8e-4 off the exact one (relative, measured on wgpu),
/// which left the EHR-fused golden step's gradients past 1e-4 there. burn-flex overrides it
/// exactly, so the CPU never showed it (and keeps its own, one op instead of five).
fn exact_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let phi = (x.clone() / std::f64::consts::SQRT_2).erf().add_scalar(1.0).mul_scalar(0.5);
    x * phi
}

/// Softmax along `dim` (`burn::tensor::activation::softmax`), fused on burn-flex in f32 when
/// `dim` is the last axis.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if dim + 1 == D && fused(&x) {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax_last(x.into_dispatch()))
    } else {
        activation::softmax(x, dim)
    }
}

/// LayerNorm over the last axis (`burn::tensor::module::layer_norm`), fused on burn-flex in
/// f32 when it has a shift.
pub fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Option<Tensor<1>>, epsilon: f64) -> Tensor<D> {
    match beta {
        Some(beta) if fused(&x) => Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
        )),
        beta => burn::tensor::module::layer_norm(x, gamma, beta, epsilon),
    }
}

/// A linear layer, `x W + b` over the last axis (`burn::tensor::module::linear`, weight
/// `[d_in, d_out]`), fused on burn-flex in f32 when it has a bias ([`linear`](self::linear)
/// module): matrixmultiply on blocks of rows, the bias as the product's starting value.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match bias {
        Some(bias) if fused(&x) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 => Tensor::from_dispatch(
            <Dispatch as FusedOps>::fused_linear(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch()),
        ),
        bias => burn::tensor::module::linear(x, weight, bias),
    }
}

/// Multi-head self-attention, `softmax(q kᵀ / √head_dim) v` per head, of the packed
/// projections `qkv` `[batch, tokens, 3 * dim]` (per token: q of every head, then k, then v,
/// as torchvision's stacked `in_proj`) into `[batch, tokens, dim]`, heads side by side. Fused
/// on burn-flex in f32 (one pass per image and head, [`attention`](self::attention) module);
/// elsewhere burn's ops, the softmax in f32.
pub fn attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    if fused(&qkv) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(qkv.into_dispatch(), heads));
    }
    composed_attention(qkv, heads)
}

/// [`attention`] from burn's ops.
fn composed_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let [b, n, packed] = qkv.dims();
    let (d, h) = (packed / 3, heads);
    let hd = d / h;
    // [b, n, 3, h, hd] -> [3, b, h, n, hd]
    let qkv = qkv.reshape([b, n, 3, h, hd]).permute([2, 0, 3, 1, 4]);
    let q = qkv.clone().narrow(0, 0, 1).reshape([b, h, n, hd]);
    let k = qkv.clone().narrow(0, 1, 1).reshape([b, h, n, hd]);
    let v = qkv.narrow(0, 2, 1).reshape([b, h, n, hd]);
    let scores = q.mul_scalar(1.0 / (hd as f64).sqrt()).matmul(k.swap_dims(2, 3));
    let attn = super::in_f32(scores, |s| softmax(s, 3));
    attn.matmul(v).swap_dims(1, 2).reshape([b, n, d])
}

/// Whether `x` takes the fused path: an f32 tensor on burn-flex (with or without autodiff).
fn fused<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device() == Device::flex()
}

impl FusedOps for Flex {
    fn fused_gelu(x: FlexTensor) -> FlexTensor {
        gelu_forward(&x)
    }

    fn fused_softmax_last(x: FlexTensor) -> FlexTensor {
        softmax_forward(&x)
    }

    fn fused_layer_norm(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> FlexTensor {
        layer_norm_forward(&x, &gamma, &beta, epsilon).0
    }

    fn fused_attention(qkv: FlexTensor, heads: usize) -> FlexTensor {
        attention_forward(&qkv, heads, false).0
    }

    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        linear_forward(&x, &weight, &bias)
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let output = gelu_forward(&input);
                prep.finish(input, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(gelu_forward(&x.into_primitive())),
        }
    }

    fn fused_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SoftmaxBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = softmax_forward(&x.into_primitive());
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(softmax_forward(&x.into_primitive())),
        }
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (x.into_primitive(), gamma.into_primitive(), beta.into_primitive());
        match LayerNormBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (output, stats) = layer_norm_forward(&x, &gamma, &beta, epsilon);
                prep.finish(LayerNormState { x, gamma, stats }, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(layer_norm_forward(&x, &gamma, &beta, epsilon).0),
        }
    }

    fn fused_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        match AttentionBackward.prepare::<C>([qkv.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let qkv = qkv.into_primitive();
                let (output, probs) = attention_forward(&qkv, heads, true);
                let probs = probs.expect("attention_forward keeps the probabilities when asked");
                prep.finish(AttentionState { qkv, probs, heads }, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(attention_forward(&qkv.into_primitive(), heads, false).0),
        }
    }

    fn fused_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
        match LinearBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = linear_forward(&x, &weight, &bias);
                prep.finish(LinearState { x, weight }, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(linear_forward(&x, &weight, &bias)),
        }
    }
}

/// What the linear layer's backward needs: its input and weight.
#[derive(Debug, Clone)]
struct LinearState {
    x: FlexTensor,
    weight: FlexTensor,
}

/// The linear layer's backward: the gradients of the input, the weight and the bias, each
/// only where a parent tracks it.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [x_node, weight_node, bias_node] = ops.parents;
        let LinearState { x, weight } = ops.state;
        let wanted = Wanted { x: x_node.is_some(), weight: weight_node.is_some(), bias: bias_node.is_some() };
        let (dx, dw, db) = linear_backward(&x, &weight, &grad, wanted);
        for (node, grad) in [(x_node, dx), (weight_node, dw), (bias_node, db)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// What the attention's backward needs: its input, its probabilities and the head count.
#[derive(Debug, Clone)]
struct AttentionState {
    qkv: FlexTensor,
    probs: FlexTensor,
    heads: usize,
}

/// The attention's backward: the gradient of the packed projections.
#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let AttentionState { qkv, probs, heads } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| attention_backward(&qkv, &probs, heads, &grad));
    }
}

/// GELU's backward: keeps the input.
#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| gelu_backward(&x, grad));
    }
}

/// Softmax's backward: keeps the output.
#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let y = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| softmax_backward(&y, grad));
    }
}

/// What LayerNorm's backward needs: the input, the scale and each row's mean and 1/std.
#[derive(Debug, Clone)]
struct LayerNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: RowStats,
}

/// LayerNorm's backward: gradients for the input, the scale and the shift.
#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<LayerNormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [x_node, gamma_node, beta_node] = ops.parents;
        let LayerNormState { x, gamma, stats } = ops.state;
        let (dx, dgamma, dbeta) = layer_norm_backward(&x, &gamma, &stats, grad);
        for (node, grad) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use burn::tensor::TensorData;

    fn random(shape: [usize; 3], seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..shape.iter().product::<usize>()).map(|_| rng.normal() as f32 * scale).collect()
    }

    fn close(a: &Tensor<3>, b: &Tensor<3>, tol: f32) {
        let a = a.to_data().try_to_vec::<f32>().expect("f32");
        let b = b.to_data().try_to_vec::<f32>().expect("f32");
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tol, "worst difference {worst:e} > {tol:e}");
    }

    /// The fused ops and burn's own give the same values and the same gradients (through a
    /// weighted sum, so every element's gradient differs), on contiguous and strided inputs.
    #[test]
    fn fused_gelu_and_softmax_equal_burns_ops_forward_and_backward() {
        let device = Device::flex().autodiff();
        let shape = [3, 37, 129];
        let x0 = random(shape, 1, 3.0);
        let w = random(shape, 2, 1.0);
        for strided in [false, true] {
            type Op = fn(Tensor<3>) -> Tensor<3>;
            let pairs: [(Op, Op, f32); 2] = [
                (|x| gelu(x), |x| activation::gelu(x), 2e-6),
                (|x| softmax(x, 2), |x| activation::softmax(x, 2), 1e-6),
            ];
            for (fused_op, burn_op, tol) in pairs {
                let run = |op: Op| {
                    let x = Tensor::<3>::from_data(TensorData::new(x0.clone(), shape), &device).require_grad();
                    let input = if strided { x.clone().swap_dims(1, 2).swap_dims(1, 2) * 1.0 } else { x.clone() };
                    let input = if strided { input.narrow(2, 1, shape[2] - 1) } else { input };
                    let y = op(input);
                    let weights = Tensor::<3>::from_data(TensorData::new(w.clone(), shape), &device);
                    let weights = if strided { weights.narrow(2, 1, shape[2] - 1) } else { weights };
                    let grads = (y.clone() * weights).sum().backward();
                    (y.detach(), x.grad(&grads).expect("x has a gradient"))
                };
                let (y_fused, g_fused) = run(fused_op);
                let (y_burn, g_burn) = run(burn_op);
                close(&y_fused, &y_burn, tol);
                close(&g_fused, &g_burn, tol);
            }
        }
    }

    /// GELU from element-wise ops, as every backend but burn-flex in f32 runs it, gives the
    /// fused (exact) GELU's values and gradients; on the CPU burn's own `gelu` does too, but
    /// elsewhere its backward is the tanh approximation's (`exact_gelu`).
    #[test]
    fn gelu_from_element_wise_ops_has_the_exact_gradient() {
        let device = Device::flex().autodiff();
        let shape = [2, 19, 67];
        let (x0, w) = (random(shape, 7, 3.0), random(shape, 8, 1.0));
        let run = |op: fn(Tensor<3>) -> Tensor<3>| {
            let x = Tensor::<3>::from_data(TensorData::new(x0.clone(), shape), &device).require_grad();
            let y = op(x.clone());
            let weights = Tensor::<3>::from_data(TensorData::new(w.clone(), shape), &device);
            let grads = (y.clone() * weights).sum().backward();
            (y.detach(), x.grad(&grads).expect("x has a gradient"))
        };
        let (y_ops, g_ops) = run(exact_gelu);
        let (y_fused, g_fused) = run(gelu);
        close(&y_ops, &y_fused, 2e-6);
        close(&g_ops, &g_fused, 2e-6);
    }

    /// The fused LayerNorm and burn's give the same output and the same gradients for the
    /// input, the scale and the shift, on a contiguous and a strided input.
    #[test]
    fn fused_layer_norm_equals_burns_forward_and_backward() {
        let device = Device::flex().autodiff();
        let shape = [4, 33, 96];
        let (x0, w) = (random(shape, 3, 2.0), random(shape, 4, 1.0));
        let (gamma0, beta0) = (random([1, 1, 96], 5, 1.0), random([1, 1, 96], 6, 1.0));
        for strided in [false, true] {
            type Norm = fn(Tensor<3>, Tensor<1>, Option<Tensor<1>>, f64) -> Tensor<3>;
            let run = |norm: Norm| {
                let x = Tensor::<3>::from_data(TensorData::new(x0.clone(), shape), &device).require_grad();
                let gamma = Tensor::<1>::from_data(TensorData::new(gamma0.clone(), [96]), &device).require_grad();
                let beta = Tensor::<1>::from_data(TensorData::new(beta0.clone(), [96]), &device).require_grad();
                // Strided: the first two axes swapped, a view without a copy.
                let (input, out_shape) = if strided {
                    (x.clone().swap_dims(0, 1), [shape[1], shape[0], shape[2]])
                } else {
                    (x.clone(), shape)
                };
                let y = norm(input, gamma.clone(), Some(beta.clone()), 1e-6);
                let weights = Tensor::<3>::from_data(TensorData::new(w.clone(), out_shape), &device);
                let grads = (y.clone() * weights).sum().backward();
                let g = |t: &Tensor<1>| t.grad(&grads).expect("a gradient").reshape([1, 1, 96]);
                (y.detach(), x.grad(&grads).expect("x has a gradient"), g(&gamma), g(&beta))
            };
            let fused_run = run(layer_norm);
            let burn_run = run(burn::tensor::module::layer_norm);
            close(&fused_run.0, &burn_run.0, 2e-6);
            close(&fused_run.1, &burn_run.1, 2e-5);
            close(&fused_run.2, &burn_run.2, 2e-4);
            close(&fused_run.3, &burn_run.3, 2e-4);
        }
    }

    /// The fused attention and burn's composed one give the same output and the same gradient
    /// of the packed projections, on a contiguous input and on a strided view, for several
    /// heads and one, and a token count that is no multiple of a SIMD width.
    #[test]
    fn fused_attention_equals_the_composed_one_forward_and_backward() {
        let device = Device::flex().autodiff();
        for (b, n, heads, head_dim) in [(3, 37, 3, 16), (2, 5, 1, 8)] {
            let dim = heads * head_dim;
            let x0 = random([b, n, 3 * dim], 7, 1.5);
            let w = random([b, n, dim], 8, 1.0);
            for strided in [false, true] {
                type Op = fn(Tensor<3>, usize) -> Tensor<3>;
                let run = |op: Op| {
                    // Strided: stored as [n, b, 3 dim], seen as [b, n, 3 dim] without a copy.
                    let stored = if strided { [n, b, 3 * dim] } else { [b, n, 3 * dim] };
                    let x = Tensor::<3>::from_data(TensorData::new(x0.clone(), stored), &device).require_grad();
                    let input = if strided { x.clone().swap_dims(0, 1) } else { x.clone() };
                    let y = op(input, heads);
                    let weights = Tensor::<3>::from_data(TensorData::new(w.clone(), [b, n, dim]), &device);
                    let grads = (y.clone() * weights).sum().backward();
                    (y.detach(), x.grad(&grads).expect("qkv has a gradient"))
                };
                let (y_fused, g_fused) = run(attention);
                let (y_burn, g_burn) = run(composed_attention);
                assert_eq!(y_fused.dims(), [b, n, dim]);
                close(&y_fused, &y_burn, 2e-6);
                close(&g_fused, &g_burn, 1e-5);
            }
        }
    }

    /// The fused linear layer and burn's give the same output and the same gradients of the
    /// input, the weight and the bias, for a 3-d input (rows across images, more rows than one
    /// block) and a strided one; without a tracked input only the parameters get gradients.
    #[test]
    fn fused_linear_equals_burns_forward_and_backward() {
        let device = Device::flex().autodiff();
        let (b, n, d_in, d_out) = (3, 111, 20, 13);
        let x0 = random([b, n, d_in], 10, 1.0);
        let w0 = random([1, d_in, d_out], 11, 0.3);
        let b0 = random([1, 1, d_out], 12, 1.0);
        let g0 = random([b, n, d_out], 13, 1.0);
        type Op = fn(Tensor<3>, Tensor<2>, Option<Tensor<1>>) -> Tensor<3>;
        for (strided, track_x) in [(false, true), (true, true), (false, false)] {
            let run = |op: Op| {
                let stored = if strided { [n, b, d_in] } else { [b, n, d_in] };
                let mut x = Tensor::<3>::from_data(TensorData::new(x0.clone(), stored), &device);
                if track_x {
                    x = x.require_grad();
                }
                let w = Tensor::<2>::from_data(TensorData::new(w0.clone(), [d_in, d_out]), &device).require_grad();
                let bias = Tensor::<1>::from_data(TensorData::new(b0.clone(), [d_out]), &device).require_grad();
                let input = if strided { x.clone().swap_dims(0, 1) } else { x.clone() };
                let y = op(input, w.clone(), Some(bias.clone()));
                let weights = Tensor::<3>::from_data(TensorData::new(g0.clone(), [b, n, d_out]), &device);
                let grads = (y.clone() * weights).sum().backward();
                let dx = x.grad(&grads);
                assert_eq!(dx.is_some(), track_x, "an untracked input gets no gradient");
                let dw = w.grad(&grads).expect("the weight has a gradient").reshape([1, d_in, d_out]);
                let db = bias.grad(&grads).expect("the bias has a gradient").reshape([1, 1, d_out]);
                (y.detach(), dx, dw, db)
            };
            let fused_run = run(linear);
            let burn_run = run(burn::tensor::module::linear);
            close(&fused_run.0, &burn_run.0, 2e-6);
            if let (Some(a), Some(b)) = (&fused_run.1, &burn_run.1) {
                close(a, b, 2e-6);
            }
            // The parameters' gradients are sums over 333 rows (tens in magnitude), added in
            // another order: f32 rounding of a few 1e-5.
            close(&fused_run.2, &burn_run.2, 1e-4);
            close(&fused_run.3, &burn_run.3, 1e-4);
        }
    }

    /// The fused linear layer gives the same bits on 1, 2 and 5 threads: its blocks of rows
    /// (a count that is a multiple of the thread count) change only which thread computes a row.
    #[test]
    fn fused_linear_does_not_depend_on_the_thread_count() {
        let device = Device::flex().autodiff();
        let (b, n, d_in, d_out) = (2, 300, 24, 40);
        let (x0, w0, b0, g0) = (
            random([b, n, d_in], 14, 1.0),
            random([1, d_in, d_out], 15, 0.3),
            random([1, 1, d_out], 16, 1.0),
            random([b, n, d_out], 17, 1.0),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
            pool.install(|| {
                let x = Tensor::<3>::from_data(TensorData::new(x0.clone(), [b, n, d_in]), &device).require_grad();
                let w = Tensor::<2>::from_data(TensorData::new(w0.clone(), [d_in, d_out]), &device).require_grad();
                let bias = Tensor::<1>::from_data(TensorData::new(b0.clone(), [d_out]), &device).require_grad();
                let y = linear(x.clone(), w.clone(), Some(bias.clone()));
                let weights = Tensor::<3>::from_data(TensorData::new(g0.clone(), [b, n, d_out]), &device);
                let grads = (y.clone() * weights).sum().backward();
                let bits = |t: TensorData| {
                    t.try_to_vec::<f32>().expect("f32").iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
                };
                [
                    bits(y.detach().to_data()),
                    bits(x.grad(&grads).expect("dx").to_data()),
                    bits(w.grad(&grads).expect("dW").to_data()),
                    bits(bias.grad(&grads).expect("db").to_data()),
                ]
            })
        };
        let one = run(1);
        for threads in [2, 5] {
            assert!(run(threads) == one, "{threads} threads give other values than one");
        }
    }

    /// Without autodiff (evaluation, feature extraction) the fused attention gives the same
    /// values as with it.
    #[test]
    fn fused_attention_without_autodiff_equals_it_with() {
        let x0 = random([2, 9, 24], 9, 1.0);
        let plain = attention(Tensor::<3>::from_data(TensorData::new(x0.clone(), [2, 9, 24]), &Device::flex()), 2);
        let tracked = attention(Tensor::<3>::from_data(TensorData::new(x0, [2, 9, 24]), &Device::flex().autodiff()), 2);
        close(&plain, &tracked.detach(), 0.0);
    }

    #[test]
    fn a_fully_masked_softmax_row_is_nan_as_in_burn() {
        let device = Device::flex();
        let x = Tensor::<3>::from_data(TensorData::new(vec![f32::NEG_INFINITY; 4], [1, 1, 4]), &device);
        let y = softmax(x, 2).to_data().try_to_vec::<f32>().expect("f32");
        assert!(y.iter().all(|v| v.is_nan()));
    }
}
