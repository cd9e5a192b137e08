//! The MSN projection head (lightly's `MSNProjectionHead`, METHOD.md section 6):
//! Linear(dim, 4dim, no bias) -> BatchNorm1d -> GELU -> Linear(4dim, 4dim, no bias) ->
//! BatchNorm1d -> GELU -> Linear(4dim, dim). BatchNorm runs in training mode (batch
//! statistics, biased variance, eps 1e-5), as in pretraining; the head is discarded after it,
//! so running statistics are not kept.

use super::fused::gelu;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::init::Init;
use crate::rng::Rng;

/// Batch normalisation over the rows of a `[n, c]` input with batch statistics.
#[derive(Module, Debug)]
pub struct BatchNorm1d {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub eps: f64,
}

impl BatchNorm1d {
    pub fn new(c: usize, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([c], device)),
            beta: Param::from_tensor(Tensor::zeros([c], device)),
            eps: 1e-5,
        }
    }

    /// # Shapes
    /// - `x`: `[n, c]` -> `[n, c]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [_, c] = x.dims();
        super::in_f32(x, |x| {
            let mean = x.clone().mean_dim(0);
            let centred = x - mean;
            let var = centred.clone().powf_scalar(2.0).mean_dim(0);
            let normed = centred / var.add_scalar(self.eps).sqrt();
            normed * self.gamma.val().reshape([1, c]) + self.beta.val().reshape([1, c])
        })
    }
}

/// The projection head.
#[derive(Module, Debug)]
pub struct ProjectionHead {
    pub fc1: Linear,
    pub bn1: BatchNorm1d,
    pub fc2: Linear,
    pub bn2: BatchNorm1d,
    pub fc3: Linear,
}

impl ProjectionHead {
    /// `input -> hidden -> hidden -> output` with PyTorch's default linear initialisation.
    pub fn new(input: usize, hidden: usize, output: usize, device: &Device, rng: &mut Rng) -> Self {
        let init = Init::new(device, rng);
        Self {
            fc1: init.linear_default(input, hidden, false),
            bn1: BatchNorm1d::new(hidden, device),
            fc2: init.linear_default(hidden, hidden, false),
            bn2: BatchNorm1d::new(hidden, device),
            fc3: init.linear_default(hidden, output, true),
        }
    }

    /// # Shapes
    /// - `x`: `[n, input]` -> `[n, output]` (BatchNorm statistics over all `n` rows)
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = gelu(self.bn1.forward(super::linear(&self.fc1, x)));
        let x = gelu(self.bn2.forward(super::linear(&self.fc2, x)));
        super::linear(&self.fc3, x)
    }
}
