//! The MSN loss, exactly as METHOD.md section 7 (lightly 1.4.21's `MSNLoss`): cross-entropy
//! between the anchors' prototype assignments and the sharpened, Sinkhorn-balanced target
//! assignments, plus the mean-entropy-maximisation regulariser.
//!
//! Data parallelism: with the batch split over devices, the Sinkhorn normalisation and the
//! me-max mean run over the global batch, as lightly's `gather_distributed` does, through a
//! [`Collective`] (an all-reduce sum, see [`crate::parallel`]). [`MsnLossConfig::forward_sharded`] returns, on each
//! device, a term whose gradients, summed over the devices, equal the gradients of the loss of
//! one device on the concatenated batch (shards of any sizes); [`Local`] is the one-device
//! case and gives [`MsnLossConfig::forward`] exactly.

use burn::config::Config;
use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};

use crate::parallel::{Collective, Local};

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

/// Sinkhorn-Knopp balancing of `[B, K]` probabilities, over the global batch: the column
/// count and the row sums are all-reduced (lightly's `sinkhorn(..., gather_distributed)`).
fn sinkhorn(p: Tensor<2>, iterations: usize, c: &impl Collective) -> Tensor<2> {
    if iterations == 0 {
        return p;
    }
    let [b, k] = p.dims();
    let device = p.device();
    let global_b = c.all_reduce_sum(Tensor::<1>::from_floats([b as f32], &device)).reshape([1, 1]);
    let mut q = p.transpose(); // [K, B]
    let total = c.all_reduce_sum(q.clone().sum().reshape([1, 1]));
    q = q / total;
    for _ in 0..iterations {
        q = q.clone() / c.all_reduce_sum(q.clone().sum_dim(1));
        q = q.div_scalar(k as f64);
        q = q.clone() / q.clone().sum_dim(0);
        q = q / global_b.clone();
    }
    (q * global_b).transpose()
}

/// What one device of a data-parallel group gets from [`MsnLossConfig::forward_sharded`].
#[derive(Debug, Clone)]
pub struct ShardedLossOutput {
    /// The term to backpropagate on this device: its gradients, summed over the devices,
    /// are those of the global loss (divide by nothing; an averaging all-reduce of the
    /// gradients needs this term multiplied by the number of devices).
    pub backward: Tensor<1>,
    /// The global loss and its parts, the same on every device (for logging).
    pub loss: MsnLossOutput,
}

impl MsnLossConfig {
    /// The loss of `anchors` (`[M*B, d]`, view-major: row `i` belongs to sample `i % B`) against
    /// `targets` (`[B, d]`) over `prototypes` (`[K, d]`). Gradients flow through the anchors
    /// (and the prototypes, when they require them) only.
    ///
    /// # Shapes
    /// - `anchors`: `[M*B, d]`, `targets`: `[B, d]`, `prototypes`: `[K, d]`
    pub fn forward(&self, anchors: Tensor<2>, targets: Tensor<2>, prototypes: Tensor<2>) -> MsnLossOutput {
        // One device: this shard's shares are the whole loss, with their graph.
        let (parts, _) = self.shard_terms(anchors, targets, prototypes, &Local);
        parts
    }

    /// [`forward`](Self::forward) on this device's shard of a batch split over the devices of
    /// `collective` (the same prototypes everywhere; shards may differ in size).
    pub fn forward_sharded(
        &self,
        anchors: Tensor<2>,
        targets: Tensor<2>,
        prototypes: Tensor<2>,
        collective: &impl Collective,
    ) -> ShardedLossOutput {
        let (shares, loss) = self.shard_terms(anchors, targets, prototypes, collective);
        ShardedLossOutput { backward: shares.loss, loss }
    }

    /// This shard's terms (with their graph: the cross-entropy share, the me-max with the
    /// gradient through this shard's rows, their weighted sum) and the global values.
    fn shard_terms(
        &self,
        anchors: Tensor<2>,
        targets: Tensor<2>,
        prototypes: Tensor<2>,
        collective: &impl Collective,
    ) -> (MsnLossOutput, MsnLossOutput) {
        let [mb, _] = anchors.dims();
        let [b, _] = targets.dims();
        let [k, _] = prototypes.dims();
        let device = anchors.device();
        let q = normalize(prototypes);
        let logits = normalize(anchors).matmul(q.clone().transpose()).div_scalar(self.temperature);
        let log_pa = log_softmax(logits.clone(), 1);
        let pa = softmax(logits, 1);
        // Targets: no gradient. Sharpening p^(1/T) / sum is a softmax at temperature tau*T.
        let target_logits = normalize(targets.detach()).matmul(q.detach().transpose());
        let pt = softmax(target_logits.div_scalar(self.temperature * self.sharpen_temperature), 1);
        let pt = sinkhorn(pt, self.sinkhorn_iterations, collective).repeat_dim(0, mb / b);
        // The global anchor count, for the means over the global batch.
        let rows = collective.all_reduce_sum(Tensor::<1>::from_floats([mb as f32], &device));
        // This shard's share of the cross-entropy mean, and the global mean (for the value).
        let ce_share = (pt * log_pa).sum().neg() / rows.clone();
        let cross_entropy = collective.all_reduce_sum(ce_share.clone().detach());
        // The mean probabilities over the global batch: the value all-reduced, the gradient
        // through this shard's rows only (the other devices carry theirs).
        let local_sum = pa.sum_dim(0).reshape([k]) / rows.clone().expand([k]);
        let pbar = local_sum.clone() + (collective.all_reduce_sum(local_sum.clone().detach()) - local_sum.detach());
        // sum p log p with 0 log 0 = 0, as the reference's log(p^-p): a mean probability that
        // underflowed to 0 (half precision) must not turn the loss or its gradient into NaN.
        let safe = pbar.clone().mask_fill(pbar.clone().lower_equal_elem(0.0), 1.0);
        let me_max = (pbar * safe.log()).sum().add_scalar((k as f64).ln());
        let share = ce_share.clone() + me_max.clone().mul_scalar(self.me_max_weight);
        let global_me_max = me_max.clone().detach();
        let loss = cross_entropy.clone() + global_me_max.clone().mul_scalar(self.me_max_weight);
        (
            MsnLossOutput { loss: share, cross_entropy: ce_share, me_max },
            MsnLossOutput { loss, cross_entropy, me_max: global_me_max },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::HostAllReduce;
    use burn::tensor::{Device, TensorData};

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// The loss and gradients of one device on a whole batch equal, for k = 2 and 3 shards of
    /// uneven sizes driven by threads with an in-process all-reduce, the global values each
    /// device reports and the sums of the shards' gradients (anchors: each shard's rows;
    /// prototypes: summed over the shards).
    #[test]
    fn sharded_loss_and_gradients_equal_one_device_on_the_whole_batch() {
        let (views, b, d, k) = (3usize, 7usize, 8usize, 5usize);
        let mut rng = crate::rng::Rng::new(11);
        let mut draw = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let (anchors, targets, prototypes) = (draw(views * b * d), draw(b * d), draw(k * d));
        let cfg = MsnLossConfig::new();
        // Anchor rows of samples `s` in every view (view-major).
        let rows_of =
            |s: &[usize]| -> Vec<usize> { (0..views).flat_map(|v| s.iter().map(move |i| v * b + i)).collect() };
        let pick = |x: &[f32], rows: &[usize]| -> Vec<f32> {
            rows.iter().flat_map(|r| x[r * d..(r + 1) * d].to_vec()).collect()
        };
        let run = |samples: &[usize], collective: &dyn Fn(Tensor<2>, Tensor<2>, Tensor<2>) -> (Tensor<1>, f32)| {
            let dev = Device::flex().autodiff();
            let t = |v: Vec<f32>, n: usize| Tensor::<2>::from_data(TensorData::new(v, [n, d]), &dev);
            let a = t(pick(&anchors, &rows_of(samples)), views * samples.len()).require_grad();
            let p = t(prototypes.clone(), k).require_grad();
            let (backward, loss) = collective(a.clone(), t(pick(&targets, samples), samples.len()), p.clone());
            let grads = backward.backward();
            (loss, values(a.grad(&grads).unwrap()), values(p.grad(&grads).unwrap()))
        };
        let all: Vec<usize> = (0..b).collect();
        let (loss, anchor_grad, proto_grad) = run(&all, &|a, t, p| {
            let out = cfg.forward(a, t, p);
            let v = values(out.loss.clone())[0];
            (out.loss, v)
        });
        for shards in [vec![vec![0, 1, 2, 3], vec![4, 5, 6]], vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]] {
            let group = HostAllReduce::new(shards.len());
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = shards
                    .iter()
                    .enumerate()
                    .map(|(rank, s)| {
                        let (group, cfg, run) = (&group, &cfg, &run);
                        scope.spawn(move || {
                            run(s, &|a, t, p| {
                                let out = cfg.forward_sharded(a, t, p, &group.rank(rank));
                                (out.backward, values(out.loss.loss)[0])
                            })
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
            let mut summed = vec![0f32; proto_grad.len()];
            for (s, (l, ga, gp)) in shards.iter().zip(&results) {
                assert!(close(*l, loss), "{} shards: global loss {l} vs {loss}", shards.len());
                let want = pick(&anchor_grad, &rows_of(s));
                assert!(
                    ga.iter().zip(&want).all(|(g, w)| close(*g, *w)),
                    "{} shards: anchor gradients of {s:?}",
                    shards.len()
                );
                summed.iter_mut().zip(gp).for_each(|(acc, g)| *acc += g);
            }
            assert!(
                summed.iter().zip(&proto_grad).all(|(g, w)| close(*g, *w)),
                "{} shards: prototype gradients",
                shards.len()
            );
        }
    }

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
