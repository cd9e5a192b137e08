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
        // sum p log p with 0 log 0 = 0, as the reference's log(p^-p): a mean probability that
        // underflowed to 0 (half precision) must not turn the loss or its gradient into NaN.
        let safe = pbar.clone().mask_fill(pbar.clone().lower_equal_elem(0.0), 1.0);
        let me_max = (pbar * safe.log()).sum().add_scalar((k as f64).ln());
        let loss = cross_entropy.clone() + me_max.clone().mul_scalar(self.me_max_weight);
        MsnLossOutput { loss, cross_entropy, me_max }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// Prototype probabilities that underflow to exactly 0 (a very sharp softmax) leave the
    /// me-max term, the loss and the anchors' gradient finite.
    #[test]
    fn me_max_of_underflowed_probabilities_is_finite() {
        let dev = Device::flex().autodiff();
        let t = |v: Vec<f32>, shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, shape), &dev);
        // Two anchors on prototype 0, targets on prototype 0; prototypes 1 and 2 far away.
        let anchors = t(vec![1.0, 0.0, 1.0, 0.01], [2, 2]).require_grad();
        let targets = t(vec![1.0, 0.0], [1, 2]);
        let prototypes = t(vec![1.0, 0.0, -1.0, 0.0, 0.0, -1.0], [3, 2]);
        let cfg = MsnLossConfig::new().with_temperature(1e-3).with_sinkhorn_iterations(0);
        let out = cfg.forward(anchors.clone(), targets, prototypes);
        let value = |x: Tensor<1>| x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
        let me_max = value(out.me_max.clone());
        // pbar = (1, 0, 0): sum p log p = 0, so me-max = log 3.
        assert!((me_max - 3f32.ln()).abs() < 1e-5, "{me_max}");
        let grads = out.loss.backward();
        let g = anchors.grad(&grads).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }
}
