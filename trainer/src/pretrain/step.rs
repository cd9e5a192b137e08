//! One training step: the EMA target update, forward with the MSN loss, backward, gradient
//! clipping and the AdamW update with per-group weight decay; the batch as tensors.

use std::collections::HashSet;
use std::time::Instant;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::{PretrainConfig, StepSchedule};
use crate::model::fusion::{MsnNet, Views};
use crate::msn::MsnLossOutput;
use crate::parallel::{Collective, Local, all_reduce_gradients};
use crate::views::Batch;
use crate::{Error, Result};

/// Collects a module's float parameters, flattened, in visiting order.
struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().detach();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

/// `target = m * target + (1 - m) * anchor`, parameter by parameter in visiting order.
struct Ema {
    anchor: Vec<Tensor<1>>,
    next: usize,
    momentum: f64,
}

impl ModuleMapper for Ema {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let a = self.anchor[self.next].clone();
        self.next += 1;
        let m = self.momentum;
        param.map(|t| {
            let dims = t.dims();
            (t.mul_scalar(m) + a.reshape(dims).mul_scalar(1.0 - m)).detach()
        })
    }
}

/// The EMA update of the target encoder and head from the anchor's.
pub fn ema_update(net: MsnNet, momentum: f64) -> MsnNet {
    let mut c = Collect(Vec::new());
    net.anchor.visit(&mut c);
    net.anchor_head.visit(&mut c);
    let MsnNet { anchor, anchor_head, target, target_head, f_ehr, g, prototypes } = net;
    let mut ema = Ema { anchor: c.0, next: 0, momentum };
    let target = target.map(&mut ema);
    let target_head = target_head.map(&mut ema);
    MsnNet { anchor, anchor_head, target, target_head, f_ehr, g, prototypes }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepMetrics {
    pub epoch: usize,
    pub step: usize,
    pub loss: f32,
    pub cross_entropy: f32,
    pub me_max: f32,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub images_per_second: f64,
    /// f16 runs: the loss scale after the step (halved when the step was skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
}

/// Adam with AdamW's betas and eps; the decoupled weight decay and the gradient clipping are
/// applied by [`update`], so both can follow a schedule and clipping can be global.
pub fn optimizer() -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(0.0).with_epsilon(1e-8).init()
}

/// Ids of the parameters weight decay applies to: every trained parameter of the anchor
/// branch and the prototypes, less the 1-D ones and the prototypes when
/// `decay_exempt_norms_biases`.
fn decayed(cfg: &PretrainConfig, net: &MsnNet) -> HashSet<ParamId> {
    struct Ids<'a>(&'a mut HashSet<ParamId>, bool);
    impl ModuleVisitor for Ids<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() && !(self.1 && D == 1) {
                self.0.insert(param.id);
            }
        }
    }
    let exempt = cfg.decay_exempt_norms_biases;
    let mut ids = HashSet::new();
    net.anchor.visit(&mut Ids(&mut ids, exempt));
    net.anchor_head.visit(&mut Ids(&mut ids, exempt));
    net.f_ehr.visit(&mut Ids(&mut ids, exempt));
    net.g.visit(&mut Ids(&mut ids, exempt));
    if !exempt && net.prototypes.is_require_grad() {
        ids.insert(net.prototypes.id);
    }
    ids
}

/// Multiplies the parameters `ids` by `factor`.
struct Scale<'a> {
    ids: &'a HashSet<ParamId>,
    factor: f64,
}

impl ModuleMapper for Scale<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.ids.contains(&param.id) {
            return param;
        }
        let f = self.factor;
        param.map(|t| t.mul_scalar(f).detach().require_grad())
    }
}

/// Scales the gradients of the anchor branch (encoder, head, EHR modules) so their global L2
/// norm is at most `max` (torch's `clip_grad_norm_`: factor `max / (norm + 1e-6)` when below 1).
pub fn clip_global_norm(grads: GradientsParams, net: &MsnNet, max: f64) -> Result<GradientsParams> {
    struct Norm<'a>(&'a GradientsParams, Option<Tensor<1>>);
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let sq = g.powf_scalar(2.0).sum();
                self.1 = Some(match self.1.take() {
                    Some(t) => t + sq,
                    None => sq,
                });
            }
        }
    }
    struct Rescale(GradientsParams, f64);
    impl ModuleVisitor for Rescale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, g.mul_scalar(self.1));
            }
        }
    }
    let mut norm = Norm(&grads, None);
    net.anchor.visit(&mut norm);
    net.anchor_head.visit(&mut norm);
    net.f_ehr.visit(&mut norm);
    net.g.visit(&mut norm);
    let total = match norm.1 {
        Some(t) => f64::from(scalar(t, "the gradient norm")?).sqrt(),
        None => 0.0,
    };
    let factor = max / (total + 1e-6);
    if factor >= 1.0 {
        return Ok(grads);
    }
    let mut r = Rescale(grads, factor);
    net.anchor.visit(&mut r);
    net.anchor_head.visit(&mut r);
    net.f_ehr.visit(&mut r);
    net.g.visit(&mut r);
    Ok(r.0)
}

/// The parameter update of one step: global gradient clipping (`grad_clip_norm`), decoupled
/// weight decay `p *= 1 - lr * wd` on the decayed parameters (as AdamW, before the Adam
/// step), then the Adam step at `lr`.
pub fn update(
    net: MsnNet,
    optim: &mut ModuleOptimizer,
    grads: GradientsParams,
    cfg: &PretrainConfig,
    s: StepSchedule,
) -> Result<MsnNet> {
    let grads = match cfg.grad_clip_norm {
        Some(max) => clip_global_norm(grads, &net, max)?,
        None => grads,
    };
    let net = if s.weight_decay > 0.0 {
        // The trained modules only: the EMA target is a clone of the anchor and shares its
        // parameter ids.
        let ids = decayed(cfg, &net);
        let mut scale = Scale { ids: &ids, factor: 1.0 - s.lr * s.weight_decay };
        MsnNet {
            anchor: net.anchor.map(&mut scale),
            anchor_head: net.anchor_head.map(&mut scale),
            f_ehr: net.f_ehr.map(|m| m.map(&mut scale)),
            g: net.g.map(|m| m.map(&mut scale)),
            prototypes: scale.map_float(net.prototypes),
            ..net
        }
    } else {
        net
    };
    Ok(optim.step(s.lr, net, grads))
}

/// Seconds spent in each part of a training step (exact on an eager backend such as
/// burn-flex, where each part has finished when the next starts).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StepTimes {
    pub ema: f64,
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

/// One training step: the EMA update of the target, the forward pass and MSN loss, backward,
/// and the [`update`] with the step's schedule.
pub fn train_step(
    net: MsnNet,
    optim: &mut ModuleOptimizer,
    views: Views,
    cfg: &PretrainConfig,
    s: StepSchedule,
) -> Result<(MsnNet, MsnLossOutput, StepTimes)> {
    let out = train_step_with(net, optim, views, cfg, s, &Local, None)?;
    Ok((out.net, out.loss, out.times))
}

/// What [`train_step_with`] returns.
#[derive(Debug)]
pub struct StepOutput {
    pub net: MsnNet,
    /// The global loss (values; with [`Local`] also its graph).
    pub loss: MsnLossOutput,
    pub times: StepTimes,
    /// False when a loss-scaled step's gradients were not finite and the update was skipped.
    pub applied: bool,
}

/// [`train_step`] on one device's shard of a batch split over the devices of `collective`:
/// the loss over the global batch, the gradients summed over the devices before the update
/// (the same on every device, so the replicas stay equal). With `loss_scale` (f16; see
/// [`super::LossScale`]) the backward pass starts from the loss times the scale and the
/// gradients are divided by it; if one is then not finite, the update is skipped (the EMA
/// update at the step's start is not).
pub fn train_step_with(
    net: MsnNet,
    optim: &mut ModuleOptimizer,
    views: Views,
    cfg: &PretrainConfig,
    s: StepSchedule,
    collective: &impl Collective,
    loss_scale: Option<f64>,
) -> Result<StepOutput> {
    let t0 = Instant::now();
    let net = ema_update(net, s.momentum);
    let t1 = Instant::now();
    let out = net.forward(views)?;
    let prototypes = if cfg.train_prototypes { net.prototypes.val() } else { net.prototypes.val().detach() };
    let loss = cfg.loss.forward_sharded(out.anchors, out.targets, prototypes, collective);
    let t2 = Instant::now();
    let backward = match loss_scale {
        Some(scale) => loss.backward.mul_scalar(scale),
        None => loss.backward,
    };
    let grads = GradientsParams::from_grads(backward.backward(), &net);
    let grads = all_reduce_gradients(grads, &net, collective);
    let grads = match loss_scale {
        Some(scale) => unscaled(grads, &net, scale)?,
        None => Some(grads),
    };
    let t3 = Instant::now();
    let (net, applied) = match grads {
        Some(grads) => (update(net, optim, grads, cfg, s)?, true),
        None => (net, false),
    };
    let t4 = Instant::now();
    let secs = |a: Instant, b: Instant| (b - a).as_secs_f64();
    let times = StepTimes { ema: secs(t0, t1), forward: secs(t1, t2), backward: secs(t2, t3), optimizer: secs(t3, t4) };
    Ok(StepOutput { net, loss: loss.loss, times, applied })
}

/// The gradients divided by `scale`, or `None` when one of them is not finite (the scaled
/// backward pass overflowed). Every parameter's gradient once: the EMA target is a clone of
/// the anchor and shares its parameter ids (it has no gradients itself).
fn unscaled(grads: GradientsParams, net: &MsnNet, scale: f64) -> Result<Option<GradientsParams>> {
    struct Unscale {
        grads: GradientsParams,
        factor: f64,
        seen: HashSet<ParamId>,
        squares: Option<Tensor<1>>,
    }
    impl ModuleVisitor for Unscale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !self.seen.insert(param.id) {
                return;
            }
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let g = g.mul_scalar(self.factor);
                let sq = g.clone().powf_scalar(2.0).sum();
                self.squares = Some(match self.squares.take() {
                    Some(t) => t + sq,
                    None => sq,
                });
                self.grads.register(param.id, g);
            }
        }
    }
    let mut u = Unscale { grads, factor: 1.0 / scale, seen: HashSet::new(), squares: None };
    net.visit(&mut u);
    let finite = match u.squares {
        Some(t) => scalar(t, "the gradients' sum of squares")?.is_finite(),
        None => true,
    };
    Ok(finite.then_some(u.grads))
}

/// The views of a batch as tensors on `device`.
pub fn batch_tensors(b: &Batch, cfg: &PretrainConfig, device: &Device) -> Views {
    let v = &cfg.views;
    let (n, c, g, f) = (b.size, v.channels, v.global_size, v.focal_size);
    let t4 = |data: &[f32], rows: usize, side: usize| {
        Tensor::<4>::from_data(TensorData::new(data.to_vec(), [rows, c, side, side]), device)
    };
    let keep = |data: &[i64], rows: usize, kept: usize| {
        (!data.is_empty()).then(|| Tensor::<2, Int>::from_data(TensorData::new(data.to_vec(), [rows, kept]), device))
    };
    let fv = v.focal_views * n;
    let e = b.ehr.len() / n.max(1);
    // The networks compute in the float type of their input (mixed precision; `model`).
    let dtype = cfg.precision.dtype();
    Views {
        target: t4(&b.target, n, g).cast(dtype),
        anchor: t4(&b.anchor, n, g).cast(dtype),
        anchor_keep: keep(&b.anchor_keep, n, b.anchor_kept),
        focal: (v.focal_views > 0).then(|| t4(&b.focal, fv, f).cast(dtype)),
        focal_keep: keep(&b.focal_keep, fv, b.focal_kept),
        ehr: (e > 0).then(|| Tensor::<2>::from_data(TensorData::new(b.ehr.clone(), [n, e]), device).cast(dtype)),
    }
}

/// The first value of `t` (named `what` in the error when it cannot be read back).
pub(super) fn scalar(t: Tensor<1>, what: &str) -> Result<f32> {
    let v = t.into_data().convert::<f32>().try_to_vec::<f32>();
    let v = v.map_err(|e| Error::Device(format!("reading {what} back from the device: {e:?}")))?;
    v.first().copied().ok_or_else(|| Error::Device(format!("reading {what} back from the device: no value")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, Precision};
    use crate::model::VitConfig;
    use crate::model::fusion::FusionShape;
    use crate::rng::Rng;

    /// The gradients of `scale * Σ anchor(x)²`.
    fn grads(net: &MsnNet, device: &Device, scale: f64) -> GradientsParams {
        let out = net.anchor.forward(Tensor::<4>::ones([2, 3, 16, 16], device), None);
        GradientsParams::from_grads(out.powf_scalar(2.0).sum().mul_scalar(scale).backward(), net)
    }

    /// The largest difference between two sets of gradients of `net`'s parameters, each id once.
    fn largest_difference(net: &MsnNet, a: &GradientsParams, b: &GradientsParams) -> f32 {
        struct Diff<'a>(&'a GradientsParams, &'a GradientsParams, f32, usize);
        impl ModuleVisitor for Diff<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let (Some(x), Some(y)) = (self.0.get::<D>(param.id), self.1.get::<D>(param.id)) {
                    let d = (x - y).abs().max().into_scalar();
                    self.2 = self.2.max(d);
                    self.3 += 1;
                }
            }
        }
        let mut d = Diff(a, b, 0.0, 0);
        net.visit(&mut d);
        assert!(d.3 > 0, "no gradients compared");
        d.2
    }

    #[test]
    fn unscaled_gradients_are_divided_once_each_and_non_finite_ones_refused() {
        let device = Backend::Cpu.autodiff(Precision::F32).unwrap();
        let cfg = VitConfig::new(16, 1, 2, 32).with_image_size(16).with_patch_size(8);
        let shape = FusionShape { ehr_in: 0, ehr_dim: 0, prototypes: 4 };
        let net = MsnNet::new(&cfg, shape, &device, &mut Rng::new(3));
        let plain = grads(&net, &device, 1.0);
        // The target shares the anchor's ids: dividing per visit would divide twice.
        let back = unscaled(grads(&net, &device, 1024.0), &net, 1024.0).unwrap().expect("finite gradients");
        let worst = largest_difference(&net, &plain, &back);
        assert!(worst < 1e-5, "unscaled gradients differ from the plain ones by {worst}");
        // A loss times 1e39 is infinite in f32: no update.
        assert!(unscaled(grads(&net, &device, 1e39), &net, 1e39).unwrap().is_none());
    }
}
