//! MSN pretraining (METHOD.md sections 3-8): views and masks made on CPU threads ahead of the
//! model, the EHR-fused network, the MSN loss, AdamW with the reference's per-epoch or the
//! original MSN's per-step schedules, and the EMA target update before every step. Metrics go
//! to `metrics.jsonl`; the resolved config to `config.json` (with the dataset version); the
//! epoch with the lowest mean loss is kept as `best-model.bpk` (`best.json`).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::config::Config;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use cxr_dataset::Split;
use cxr_dataset::features::EhrSelection;

use crate::data::Dataset;
use crate::model::VitConfig;
use crate::model::fusion::{FusionShape, MsnNet, Views};
use crate::msn::{MsnLossConfig, MsnLossOutput};
use crate::rng::Rng;
use crate::views::{Batch, Masking, ViewConfig, make_batch};
use crate::{Error, Result};

/// Everything a pretraining run depends on; saved as `config.json`.
#[derive(Config, Debug)]
pub struct PretrainConfig {
    /// `paper` or `msn` (see [`PretrainConfig::paper`], [`PretrainConfig::msn`]).
    pub preset: String,
    pub vit: VitConfig,
    /// `--ehr` selection (`none`: vanilla MSN).
    pub ehr: String,
    #[config(default = 128)]
    pub ehr_dim: usize,
    #[config(default = 1024)]
    pub prototypes: usize,
    #[config(default = 100)]
    pub epochs: usize,
    #[config(default = 64)]
    pub batch_size: usize,
    #[config(default = 1e-4)]
    pub lr: f64,
    #[config(default = 1e-3)]
    pub weight_decay: f64,
    /// EMA momentum at the start and the end of training (linear ramp; equal = constant).
    #[config(default = 0.996)]
    pub ema_start: f64,
    #[config(default = 0.996)]
    pub ema_end: f64,
    /// Linear warmup epochs before the cosine schedule.
    #[config(default = 0)]
    pub warmup_epochs: usize,
    /// How the learning rate and weight decay move: `epoch` (the reference: the lr is constant
    /// within an epoch, linear warmup over `warmup_epochs`, then cosine to 0 over the other
    /// epochs; constant weight decay) or `step` (the original MSN: per step, linear warmup
    /// from `start_lr` over `warmup_epochs`, then cosine to `final_lr`; the weight decay cosine
    /// from `weight_decay` to `weight_decay_end`; both over `schedule_scale` times the run's
    /// steps).
    #[config(default = "Schedule::Epoch")]
    pub schedule: Schedule,
    /// `step` schedule: the learning rate the warmup starts from and the one the cosine ends at.
    #[config(default = 0.0)]
    pub start_lr: f64,
    #[config(default = 0.0)]
    pub final_lr: f64,
    /// `step` schedule: the weight decay at the end of the cosine (`None`: constant).
    #[config(default = "None")]
    pub weight_decay_end: Option<f64>,
    /// The `step` schedules and the EMA ramp span this many times the run's steps (1.25 in
    /// the original MSN, so they never reach their end values).
    #[config(default = 1.0)]
    pub schedule_scale: f64,
    #[config(default = false)]
    pub train_prototypes: bool,
    /// Clip the global L2 norm of the anchor branch's gradients (encoder, projection head,
    /// EHR modules; not the prototypes) to this value, as the original MSN's
    /// `clip_grad_norm_(encoder.parameters(), 3)`.
    #[config(default = "None")]
    pub grad_clip_norm: Option<f64>,
    /// No weight decay on 1-D parameters (biases, LayerNorm and BatchNorm scales and shifts)
    /// nor on trained prototypes, as the original MSN; `false` decays every trained parameter,
    /// as the reference.
    #[config(default = false)]
    pub decay_exempt_norms_biases: bool,
    pub masking: Masking,
    #[config(default = 0.15)]
    pub mask_ratio: f64,
    pub views: ViewConfig,
    pub loss: MsnLossConfig,
    #[config(default = 24)]
    pub seed: u64,
    /// Pretrain on the training split only (`train`, the default) or every image (`all`, the
    /// reference's behaviour).
    #[config(default = "String::from(\"train\")")]
    pub pretrain_split: String,
    /// Where the images are held: `memory`, `stream` (read from the shard files as batches
    /// need them: datasets larger than memory) or `auto` (streamed when they would take more
    /// than half of the available memory). The results are the same.
    #[config(default = "String::from(\"auto\")")]
    pub images: String,
    /// Stop after this many steps (benchmarks, smoke tests); the schedules still span all
    /// epochs, so a stopped run can be resumed to the same result.
    #[config(default = "None")]
    pub max_steps: Option<usize>,
    /// Drop each epoch's last, partial batch (the original MSN); `false` trains on it, as the
    /// reference's data loader does.
    #[config(default = false)]
    pub drop_last: bool,
    /// Write a checkpoint every this many steps (and always at the end of an epoch and when
    /// the run stops).
    #[config(default = 200)]
    pub checkpoint_every: usize,
}

impl PretrainConfig {
    /// The reference code's behaviour: 6-head ViT, masking of all anchor views with its
    /// off-by-one, frozen prototypes, constant EMA 0.996, lr 1e-4, wd 1e-3, batch 64, seed 24.
    pub fn paper(vit: VitConfig, ehr: &str) -> Self {
        let views = ViewConfig::for_vit(&vit);
        Self::new("paper".into(), vit, ehr.into(), Masking::Paper, views, MsnLossConfig::new())
    }

    /// The original MSN (its ViT-S/16 configuration): trained prototypes, anchor-only masking,
    /// per-step schedules over 1.25 times the run (lr warmup 2e-4 -> 1e-3 over 15 epochs, then
    /// cosine to 1e-6; weight decay 0.04 -> 0.4; EMA 0.996 -> 1), global gradient-norm
    /// clipping at 3, no weight decay on biases, norms and prototypes.
    pub fn msn(vit: VitConfig, ehr: &str) -> Self {
        let views = ViewConfig::for_vit(&vit);
        Self::new("msn".into(), vit, ehr.into(), Masking::Msn, views, MsnLossConfig::new())
            .with_train_prototypes(true)
            .with_schedule(Schedule::Step)
            .with_lr(1e-3)
            .with_start_lr(2e-4)
            .with_final_lr(1e-6)
            .with_weight_decay(0.04)
            .with_weight_decay_end(Some(0.4))
            .with_schedule_scale(1.25)
            .with_ema_end(1.0)
            .with_warmup_epochs(15)
            .with_grad_clip_norm(Some(3.0))
            .with_decay_exempt_norms_biases(true)
            .with_drop_last(true)
    }

    /// This config with the fields of `overrides` (a JSON object, possibly partial and nested,
    /// e.g. `{"lr": 0.002, "views": {"focal_views": 4}}`) replaced; `origin` names where the
    /// overrides come from in errors. A field this config does not have is an error listing
    /// the ones it has.
    pub fn with_overrides(&self, overrides: &serde_json::Value, origin: &str) -> Result<Self> {
        fn merge(base: &mut serde_json::Value, over: &serde_json::Value, path: &str, origin: &str) -> Result<()> {
            let (Some(base), Some(over)) = (base.as_object_mut(), over.as_object()) else {
                return Err(Error::Config(format!("{origin}: {path} must be a JSON object")));
            };
            for (key, value) in over {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                let Some(slot) = base.get_mut(key) else {
                    let known: Vec<&str> = base.keys().map(String::as_str).collect();
                    return Err(Error::Config(format!(
                        "{origin}: unknown field `{at}`; fields here: {}",
                        known.join(", ")
                    )));
                };
                if slot.is_object() && value.is_object() {
                    merge(slot, value, &at, origin)?;
                } else {
                    *slot = value.clone();
                }
            }
            Ok(())
        }
        let mut value = serde_json::to_value(self).map_err(|e| Error::Config(e.to_string()))?;
        merge(&mut value, overrides, "", origin)?;
        serde_json::from_value(value).map_err(|e| Error::Config(format!("{origin}: {e}")))
    }

    /// [`PretrainConfig::with_overrides`] from a JSON file (a whole `config.json` of an earlier
    /// run, or only the fields to change).
    pub fn with_overrides_from(&self, path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = fs_err::read_to_string(path)?;
        let mut value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        // What `pretrain` and `import-torch` add to the config.json they save.
        if let Some(o) = value.as_object_mut() {
            for k in ["dataset_version", "ehr_columns", "imported_from"] {
                o.remove(k);
            }
        }
        self.with_overrides(&value, &origin)
    }

    /// Reads a saved `config.json` (fields added since it was written take the `paper`
    /// preset's values).
    pub fn read(path: &Path) -> Result<Self> {
        Self::paper(VitConfig::vit_tiny(), "none").with_overrides_from(path)
    }

    /// The learning rate, weight decay and EMA momentum of `step` (0-based; in `epoch`) of a
    /// run of `per_epoch` steps an epoch.
    pub fn schedule_at(&self, epoch: usize, step: usize, per_epoch: usize) -> StepSchedule {
        let total = (per_epoch * self.epochs).max(1) as f64;
        let span = self.schedule_scale * total;
        let momentum = self.ema_start + (self.ema_end - self.ema_start) * step as f64 / span;
        let cosine = |from: f64, to: f64, t: f64| to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        match self.schedule {
            Schedule::Epoch => {
                let lr = if epoch < self.warmup_epochs {
                    self.lr * (epoch + 1) as f64 / self.warmup_epochs as f64
                } else {
                    let t = (epoch - self.warmup_epochs) as f64
                        / self.epochs.saturating_sub(self.warmup_epochs).max(1) as f64;
                    cosine(self.lr, 0.0, t)
                };
                StepSchedule { lr, weight_decay: self.weight_decay, momentum }
            }
            Schedule::Step => {
                // The original steps its schedulers before the first update: step k uses k + 1.
                let s = (step + 1) as f64;
                let warm = (self.warmup_epochs * per_epoch) as f64;
                let lr = if s < warm {
                    self.start_lr + s / warm * (self.lr - self.start_lr)
                } else {
                    cosine(self.lr, self.final_lr, (s - warm) / (span - warm).max(1.0)).max(self.final_lr)
                };
                let weight_decay = match self.weight_decay_end {
                    Some(end) => {
                        let w = cosine(self.weight_decay, end, s / span);
                        if end <= self.weight_decay { w.max(end) } else { w.min(end) }
                    }
                    None => self.weight_decay,
                };
                StepSchedule { lr, weight_decay, momentum }
            }
        }
    }
}

/// How the per-step values move (see [`PretrainConfig::schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Epoch,
    Step,
}

/// The learning rate, weight decay and EMA momentum of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSchedule {
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
}

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
}

/// What a run produced.
#[derive(Debug)]
pub struct PretrainSummary {
    pub run: PathBuf,
    pub steps: usize,
    pub images: usize,
    pub first_loss: f32,
    pub last_loss: f32,
    pub seconds: f64,
    pub net: MsnNet,
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
pub fn clip_global_norm(grads: GradientsParams, net: &MsnNet, max: f64) -> GradientsParams {
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
    let total = norm.1.map_or(0.0, |t| f64::from(scalar(t)).sqrt());
    let factor = max / (total + 1e-6);
    if factor >= 1.0 {
        return grads;
    }
    let mut r = Rescale(grads, factor);
    net.anchor.visit(&mut r);
    net.anchor_head.visit(&mut r);
    net.f_ehr.visit(&mut r);
    net.g.visit(&mut r);
    r.0
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
) -> MsnNet {
    let grads = match cfg.grad_clip_norm {
        Some(max) => clip_global_norm(grads, &net, max),
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
    optim.step(s.lr, net, grads)
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
    let t0 = Instant::now();
    let net = ema_update(net, s.momentum);
    let t1 = Instant::now();
    let out = net.forward(views)?;
    let prototypes = if cfg.train_prototypes { net.prototypes.val() } else { net.prototypes.val().detach() };
    let loss = cfg.loss.forward(out.anchors, out.targets, prototypes);
    let t2 = Instant::now();
    let grads = GradientsParams::from_grads(loss.loss.backward(), &net);
    let t3 = Instant::now();
    let net = update(net, optim, grads, cfg, s);
    let t4 = Instant::now();
    let secs = |a: Instant, b: Instant| (b - a).as_secs_f64();
    let times = StepTimes { ema: secs(t0, t1), forward: secs(t1, t2), backward: secs(t2, t3), optimizer: secs(t3, t4) };
    Ok((net, loss, times))
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
    Views {
        target: t4(&b.target, n, g),
        anchor: t4(&b.anchor, n, g),
        anchor_keep: keep(&b.anchor_keep, n, b.anchor_kept),
        focal: (v.focal_views > 0).then(|| t4(&b.focal, fv, f)),
        focal_keep: keep(&b.focal_keep, fv, b.focal_kept),
        ehr: (e > 0).then(|| Tensor::<2>::from_data(TensorData::new(b.ehr.clone(), [n, e]), device)),
    }
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_data().convert::<f32>().try_to_vec::<f32>().ok().and_then(|v| v.first().copied()).unwrap_or(f32::NAN)
}

/// Where a run stands: written atomically as `checkpoint.json` after the model and optimizer
/// files it names, so a run killed at any point resumes from a consistent state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub dataset_version: String,
    /// Steps done.
    pub step: usize,
    /// Epoch and batch index within it of the next step.
    pub epoch: usize,
    pub batch: usize,
    /// NaN (`null` in the file) before the first step.
    #[serde(deserialize_with = "f32_or_nan")]
    pub first_loss: f32,
    pub model: String,
    pub optimizer: String,
}

/// An `f32` that JSON wrote as `null` (NaN has no JSON form) reads back as NaN.
fn f32_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(<Option<f32> as serde::Deserialize>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// Name of the checkpoint state file in a run folder.
pub const CHECKPOINT: &str = "checkpoint.json";

/// The epoch with the lowest mean training loss so far, whose model is kept as
/// [`BEST_MODEL`] (the checkpoint the reference evaluates); written as `best.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BestCheckpoint {
    pub epoch: usize,
    /// Steps done at the end of that epoch.
    pub step: usize,
    pub mean_loss: f32,
    pub model: String,
}

/// File names of [`BestCheckpoint`] and its model in a run folder.
pub const BEST: &str = "best.json";
pub const BEST_MODEL: &str = "best-model.bpk";

/// Which pretraining checkpoint an evaluation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointChoice {
    /// The end of the epoch with the lowest mean training loss (the reference's choice);
    /// runs without `best.json` (imported, or stopped within the first epoch) fall back to
    /// the last checkpoint.
    LowestLoss,
    /// The last checkpoint.
    Last,
}

impl CheckpointChoice {
    pub const NAMES: [&'static str; 2] = ["lowest-loss", "last"];
}

impl std::str::FromStr for CheckpointChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lowest-loss" => Ok(Self::LowestLoss),
            "last" => Ok(Self::Last),
            other => Err(Error::Config(format!("checkpoint choice {other}: expected lowest-loss or last"))),
        }
    }
}

/// Reads a run's lowest-loss checkpoint, if it has one.
pub fn read_best(run: &Path) -> Result<Option<BestCheckpoint>> {
    let path = run.join(BEST);
    match fs_err::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(cxr_dataset::files::write_atomic(path, bytes)?)
}

/// Reads a run's checkpoint state.
pub fn read_checkpoint(run: &Path) -> Result<Checkpoint> {
    let path = run.join(CHECKPOINT);
    let text = fs_err::read_to_string(&path)
        .map_err(|e| Error::Config(format!("{}: no checkpoint to resume from ({e})", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Pretrains on `dataset` into the run folder `run`, on `device` (an autodiff device);
/// with `resume`, continues from the run's last checkpoint (same config and dataset) and ends
/// with the same weights as an uninterrupted run.
pub fn pretrain(
    cfg: &PretrainConfig,
    dataset: &Path,
    run: &Path,
    device: &Device,
    resume: bool,
) -> Result<PretrainSummary> {
    pretrain_with(cfg, dataset, run, device, resume, &mut |_, _| {})
}

/// [`pretrain`], calling `on_step` with each step's metrics and the step the run stops at
/// (for progress display).
pub fn pretrain_with(
    cfg: &PretrainConfig,
    dataset: &Path,
    run: &Path,
    device: &Device,
    resume: bool,
    on_step: &mut dyn FnMut(&StepMetrics, usize),
) -> Result<PretrainSummary> {
    let ds = Dataset::open(dataset)?;
    let selection: EhrSelection = cfg.ehr.parse().map_err(|e| Error::Config(format!("--ehr {}: {e}", cfg.ehr)))?;
    let columns: Vec<String> = selection.columns().iter().map(|c| c.to_string()).collect();
    let splits: Vec<Split> = match cfg.pretrain_split.as_str() {
        "all" => Vec::new(),
        "train" => vec![Split::Train],
        other => return Err(Error::Config(format!("--pretrain-split {other}: expected train or all"))),
    };
    let images = ds.load(&splits, &columns, cfg.images.parse()?)?;
    if images.len() < cfg.batch_size {
        return Err(Error::Config(format!(
            "{} pretraining images, fewer than one batch of {}",
            images.len(),
            cfg.batch_size
        )));
    }
    fs_err::create_dir_all(run)?;
    let checkpoint = if resume { Some(read_checkpoint(run)?) } else { None };
    if let Some(c) = &checkpoint
        && c.dataset_version != ds.version
    {
        return Err(Error::Config(format!(
            "the run was trained on dataset {}, not {}; resume with the same dataset",
            c.dataset_version, ds.version
        )));
    }
    let mut saved = serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?;
    saved["dataset_version"] = ds.version.clone().into();
    saved["ehr_columns"] = columns.clone().into();
    let text = serde_json::to_string_pretty(&saved).map_err(|e| Error::Config(e.to_string()))?;
    fs_err::write(run.join("config.json"), text)?;
    // A fresh run forgets an earlier run's lowest-loss epoch in the same folder.
    let mut best = if checkpoint.is_some() { read_best(run)? } else { None };
    if checkpoint.is_none() {
        for f in [BEST, BEST_MODEL] {
            if run.join(f).exists() {
                fs_err::remove_file(run.join(f))?;
            }
        }
    }

    let mut rng = Rng::new(cfg.seed);
    let shape = FusionShape { ehr_in: columns.len(), ehr_dim: cfg.ehr_dim, prototypes: cfg.prototypes };
    let mut net = MsnNet::new(&cfg.vit, shape, device, &mut rng);
    if !cfg.train_prototypes {
        net.prototypes = net.prototypes.set_require_grad(false);
    }
    let record_err = |what: &str, e: burn::store::RecordError| Error::Config(format!("{what}: {e}"));
    if let Some(c) = &checkpoint {
        let record = burn::store::ModuleRecord::load(run.join(&c.model)).map_err(|e| record_err(&c.model, e))?;
        net = net.try_load_record(record).map_err(|e| record_err(&c.model, e))?;
    }
    let mut optim = optimizer();
    // Taken and put back by each step (the step closure cannot move it).
    let mut slot = Some(net);
    if let Some(c) = &checkpoint {
        let record =
            burn::optim::OptimizerRecord::load(run.join(&c.optimizer)).map_err(|e| record_err(&c.optimizer, e))?;
        optim = optim.load_record(record);
    }
    let per_epoch = if cfg.drop_last { images.len() / cfg.batch_size } else { images.len().div_ceil(cfg.batch_size) };
    // The schedules span every epoch; --max-steps only stops early.
    let total = per_epoch * cfg.epochs;
    let stop = cfg.max_steps.unwrap_or(total).min(total);
    let metrics_path = run.join("metrics.jsonl");
    let (start_epoch, start_batch, mut step, mut first) = match &checkpoint {
        Some(c) => (c.epoch, c.batch, c.step, c.first_loss),
        None => (0, 0, 0, f32::NAN),
    };
    // Keep the metrics of the steps the checkpoint holds; later lines are redone.
    let kept: Vec<String> = if checkpoint.is_some() {
        fs_err::read_to_string(&metrics_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| (s as usize) < step)
            })
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    // The running sum of the current epoch's losses (from the kept lines when resuming
    // within an epoch), for the lowest-loss checkpoint.
    let (mut epoch_sum, mut epoch_steps) = (0.0f64, 0usize);
    for l in &kept {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l)
            && v["epoch"].as_u64() == Some(start_epoch as u64)
        {
            epoch_sum += v["loss"].as_f64().unwrap_or(f64::NAN);
            epoch_steps += 1;
        }
    }
    let mut metrics = std::io::BufWriter::new(fs_err::File::create(&metrics_path)?);
    for l in kept {
        writeln!(metrics, "{l}")?;
    }
    let started = Instant::now();
    let (steps_before, mut last, mut images_seen) = (step, f32::NAN, 0usize);
    let save = |net: &MsnNet,
                optim_record: burn::optim::OptimizerRecord,
                step: usize,
                epoch: usize,
                batch: usize,
                first: f32|
     -> Result<()> {
        let model = format!("model-{step:08}.bpk");
        let optimizer = format!("optimizer-{step:08}.bpk");
        let tmp = run.join("model.bpk.tmp");
        net.clone().into_record().save(&tmp).map_err(|e| record_err(&model, e))?;
        fs_err::rename(&tmp, run.join(&model))?;
        let tmp = run.join("optimizer.bpk.tmp");
        optim_record.save(&tmp).map_err(|e| record_err(&optimizer, e))?;
        fs_err::rename(&tmp, run.join(&optimizer))?;
        let c = Checkpoint {
            dataset_version: ds.version.clone(),
            step,
            epoch,
            batch,
            first_loss: first,
            model: model.clone(),
            optimizer: optimizer.clone(),
        };
        let text = serde_json::to_string_pretty(&c).map_err(|e| Error::Config(e.to_string()))?;
        write_atomic(&run.join(CHECKPOINT), text.as_bytes())?;
        // Older checkpoints are no longer referenced.
        for e in fs_err::read_dir(run)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".bpk") && name != model && name != optimizer && name != BEST_MODEL {
                fs_err::remove_file(e.path())?;
            }
        }
        Ok(())
    };
    // A fresh run asked for no steps still leaves its initial network as a checkpoint.
    if checkpoint.is_none() && stop == 0 {
        let net = slot.as_ref().ok_or_else(|| Error::Config("no network".into()))?;
        save(net, optim.to_record(), 0, 0, 0, first)?;
    }
    'epochs: for epoch in start_epoch..cfg.epochs {
        let skip = if epoch == start_epoch { start_batch } else { 0 };
        let order = Rng::derive(cfg.seed, 0xE90C, epoch as u64).permutation(images.len());
        // Views of the next batch are made on a worker thread while the model runs.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
        let result = std::thread::scope(|s| -> Result<bool> {
            let images = &images;
            let order = &order;
            s.spawn(move || {
                for (k, chunk) in order.chunks(cfg.batch_size).take(per_epoch).enumerate().skip(skip) {
                    let b = make_batch(
                        images,
                        chunk,
                        &cfg.views,
                        cfg.masking,
                        cfg.mask_ratio,
                        cfg.vit.patch_size,
                        cfg.seed,
                        epoch,
                        k,
                    );
                    if tx.send(b).is_err() {
                        break;
                    }
                }
            });
            // Owned here, so returning early drops it and stops the producer.
            let rx = rx;
            for (k, batch) in rx.iter().enumerate() {
                let batch = batch?;
                let k = k + skip;
                if step >= stop {
                    return Ok(false);
                }
                let t0 = Instant::now();
                let sched = cfg.schedule_at(epoch, step, per_epoch);
                let net = slot.take().ok_or_else(|| Error::Config("no network".into()))?;
                let (net, loss, _) = train_step(net, &mut optim, batch_tensors(&batch, cfg, device), cfg, sched)?;
                slot = Some(net);
                let m = StepMetrics {
                    epoch,
                    step,
                    loss: scalar(loss.loss),
                    cross_entropy: scalar(loss.cross_entropy),
                    me_max: scalar(loss.me_max),
                    lr: sched.lr,
                    weight_decay: sched.weight_decay,
                    momentum: sched.momentum,
                    images_per_second: batch.size as f64 / t0.elapsed().as_secs_f64(),
                };
                if step == 0 {
                    first = m.loss;
                }
                last = m.loss;
                writeln!(metrics, "{}", serde_json::to_string(&m).map_err(|e| Error::Config(e.to_string()))?)?;
                on_step(&m, stop);
                step += 1;
                images_seen += batch.size;
                epoch_sum += f64::from(m.loss);
                epoch_steps += 1;
                let (next_epoch, next_batch) = if k + 1 == per_epoch { (epoch + 1, 0) } else { (epoch, k + 1) };
                if next_batch == 0 {
                    let mean_loss = (epoch_sum / epoch_steps.max(1) as f64) as f32;
                    (epoch_sum, epoch_steps) = (0.0, 0);
                    if best.as_ref().is_none_or(|b| mean_loss < b.mean_loss) {
                        let net = slot.as_ref().ok_or_else(|| Error::Config("no network".into()))?;
                        let b = BestCheckpoint { epoch, step, mean_loss, model: BEST_MODEL.into() };
                        let tmp = run.join("best-model.bpk.tmp");
                        net.clone().into_record().save(&tmp).map_err(|e| record_err(BEST_MODEL, e))?;
                        fs_err::rename(&tmp, run.join(BEST_MODEL))?;
                        let text = serde_json::to_string_pretty(&b).map_err(|e| Error::Config(e.to_string()))?;
                        write_atomic(&run.join(BEST), text.as_bytes())?;
                        best = Some(b);
                    }
                }
                if step % cfg.checkpoint_every.max(1) == 0 || next_batch == 0 || step == stop {
                    metrics.flush()?;
                    let net = slot.as_ref().ok_or_else(|| Error::Config("no network".into()))?;
                    save(net, optim.to_record(), step, next_epoch, next_batch, first)?;
                }
            }
            Ok(true)
        })?;
        if !result || step >= stop {
            break 'epochs;
        }
    }
    metrics.flush()?;
    Ok(PretrainSummary {
        run: run.to_path_buf(),
        steps: step - steps_before,
        images: images_seen,
        first_loss: first,
        last_loss: last,
        seconds: started.elapsed().as_secs_f64(),
        net: slot.ok_or_else(|| Error::Config("no network".into()))?,
    })
}
