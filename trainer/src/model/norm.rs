//! LayerNorm over the last axis, as burn's `nn::LayerNorm` computes it and with the same
//! fields (so records and the weight loaders are unchanged), but through
//! [`super::fused::layer_norm`]: one pass forward and one backward on burn-flex instead of
//! burn's nine element-wise ops, which took about a ninth of a `trainer bench` step.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// `(x - mean) / sqrt(var + epsilon) * gamma + beta` over the last axis (biased variance).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// The scale, `[d]`.
    pub gamma: Param<Tensor<1>>,
    /// The shift, `[d]`.
    pub beta: Option<Param<Tensor<1>>>,
    pub epsilon: f64,
}

impl LayerNorm {
    /// Scale 1 and shift 0, made now (not lazily: burn's lazy parameters share their pending
    /// state between clones, so freezing a clone, the EMA target, would freeze the original).
    pub fn new(d: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([d], device)),
            beta: Some(Param::from_tensor(Tensor::zeros([d], device))),
            epsilon,
        }
    }

    /// # Shapes
    /// - `x`: `[..., d]` -> `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        super::in_f32(x, |x| {
            super::fused::layer_norm(x, self.gamma.val(), self.beta.as_ref().map(Param::val), self.epsilon)
        })
    }
}
