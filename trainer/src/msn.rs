//! The MSN loss, exactly as METHOD.md section 7 (lightly 1.4.21's `MSNLoss`): cross-entropy
//! between the anchors' prototype assignments and the sharpened, Sinkhorn-balanced target
//! assignments, plus the mean-entropy-maximisation regulariser.

use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};

/// Settings of the loss.
#[derive(Config, Debug)]
pub struct MsnLossConfig {
    /// Softmax temperature of the prototype assignments.
    #[config(default = 0.1)]
    pub temperature: f64,
    /// Sharpening temperature of the targets (power 1/T).
    #[config(default = 0.25)]
    pub sharpen_temperature: f64,
    /// Sinkhorn-Knopp iterations on the targets (0: off).
    #[config(default = 3)]
    pub sinkhorn_iterations: usize,
    /// Weight of the me-max regulariser.
    #[config(default = 1.0)]
    pub me_max_weight: f64,
}

/// The loss and its parts (each a one-element tensor).
#[derive(Debug, Clone)]
pub struct MsnLossOutput {
    pub loss: Tensor<1>,
    pub cross_entropy: Tensor<1>,
    pub me_max: Tensor<1>,
}

/// Rows divided by their L2 norm (at least 1e-12).
fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Sinkhorn-Knopp balancing of `[B, K]` probabilities.
fn sinkhorn(p: Tensor<2>, iterations: usize) -> Tensor<2> {
    if iterations == 0 {
        return p;
    }
    let [b, k] = p.dims();
    let mut q = p.transpose(); // [K, B]
    let total = q.clone().sum().reshape([1, 1]);
    q = q / total;
    for _ in 0..iterations {
        q = q.clone() / q.clone().sum_dim(1);
        q = q.div_scalar(k as f64);
        q = q.clone() / q.clone().sum_dim(0);
        q = q.div_scalar(b as f64);
    }
    q.mul_scalar(b as f64).transpose()
}

impl MsnLossConfig {
    /// The loss of `anchors` (`[M*B, d]`, view-major: row `i` belongs to sample `i % B`) against
    /// `targets` (`[B, d]`) over `prototypes` (`[K, d]`). Gradients flow through the anchors
    /// (and the prototypes, when they require them) only.
    ///
    /// # Shapes
    /// - `anchors`: `[M*B, d]`, `targets`: `[B, d]`, `prototypes`: `[K, d]`
    pub fn forward(&self, anchors: Tensor<2>, targets: Tensor<2>, prototypes: Tensor<2>) -> MsnLossOutput {
        let [mb, _] = anchors.dims();
        let [b, _] = targets.dims();
        let [k, _] = prototypes.dims();
        let q = normalize(prototypes);
        let logits = normalize(anchors).matmul(q.clone().transpose()).div_scalar(self.temperature);
        let log_pa = log_softmax(logits.clone(), 1);
        let pa = softmax(logits, 1);
        // Targets: no gradient. Sharpening p^(1/T) / sum is a softmax at temperature tau*T.
        let target_logits = normalize(targets.detach()).matmul(q.detach().transpose());
        let pt = softmax(target_logits.div_scalar(self.temperature * self.sharpen_temperature), 1);
        let pt = sinkhorn(pt, self.sinkhorn_iterations).repeat_dim(0, mb / b);
        let cross_entropy = (pt * log_pa).sum_dim(1).mean().neg();
        let pbar = pa.mean_dim(0);
        let me_max = (pbar.clone() * pbar.log()).sum().add_scalar((k as f64).ln());
        let loss = cross_entropy.clone() + me_max.clone().mul_scalar(self.me_max_weight);
        MsnLossOutput { loss, cross_entropy, me_max }
    }
}
