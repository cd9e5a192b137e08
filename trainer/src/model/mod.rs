//! The networks: the ViT backbone, its position-embedding resize, the MSN projection head and
//! their initialisation; [`norm`] (LayerNorm) and [`fused`] (GELU, softmax, LayerNorm,
//! multi-head attention and linear layers as fused, multithreaded kernels on burn-flex,
//! through a backend extension).

pub mod fused;
pub mod fusion;
pub mod head;
pub mod init;
pub mod norm;
pub mod pos;
pub mod vit;

pub use head::ProjectionHead;
pub use vit::{Vit, VitConfig, VitPreset};

use burn::nn::Linear;
use burn::tensor::{DType, Tensor};

// Mixed precision (`--precision bf16`): parameters, gradients, the optimizer's state and the EMA
// target stay f32; a batch enters the networks in bf16, and each layer computes in the float
// type of its input, casting its parameters to it (a no-op in f32, where every function below
// is the plain op). LayerNorm, BatchNorm and softmax statistics are taken in f32 and cast back;
// the MSN loss and Sinkhorn run in f32 on outputs cast up.

/// `nn::Linear` in the float type of `x`.
pub fn linear<const D: usize>(l: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if l.weight.val().dtype() == dtype {
        return fused::linear(x, l.weight.val(), l.bias.as_ref().map(|b| b.val()));
    }
    burn::tensor::module::linear(x, l.weight.val().cast(dtype), l.bias.as_ref().map(|b| b.val().cast(dtype)))
}

/// `t` in the float type of `like` (a parameter joining an activation).
pub fn like<const D: usize, const E: usize>(t: Tensor<D>, like: &Tensor<E>) -> Tensor<D> {
    t.cast(like.dtype())
}

/// `f` computed in f32 on `x`, the result cast back to `x`'s float type (statistics that half
/// precision would round away: softmax, LayerNorm, BatchNorm).
pub fn in_f32<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return f(x);
    }
    f(x.cast(DType::F32)).cast(dtype)
}
