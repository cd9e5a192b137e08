//! Pretraining settings: the model, views, masking, EHR choice, optimiser and schedules, the
//! presets (the reference's and the original MSN's) and JSON overrides.

use cxr_dataset::features::EhrSelection;
use std::path::Path;

use burn::config::Config;

use crate::backend::Precision;
use crate::data::ImageSource;
use crate::model::VitConfig;
use crate::msn::MsnLossConfig;
use crate::views::{Masking, ViewConfig};
use crate::{Error, Result};

/// Everything a pretraining run depends on; saved as `config.json`.
#[derive(Config, Debug)]
pub struct PretrainConfig {
    /// The preset the other fields started from.
    pub preset: Preset,
    pub vit: VitConfig,
    /// `--ehr` selection (`none`: vanilla MSN), saved as it was spelt.
    pub ehr: EhrSelection,
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
    /// The images pretrained on.
    #[config(default = "PretrainSplit::Train")]
    pub pretrain_split: PretrainSplit,
    /// Where the images are held while training (the results are the same).
    #[config(default = "ImageSource::Auto")]
    pub images: ImageSource,
    /// The float type the networks compute in: f32, or bf16 or f16 (mixed precision: f32
    /// parameters, optimizer state and EMA target; f16 with a dynamic loss scale;
    /// `--precision`).
    #[config(default = "Precision::F32")]
    pub precision: Precision,
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
    pub fn paper(vit: VitConfig, ehr: EhrSelection) -> Self {
        let views = ViewConfig::for_vit(&vit);
        Self::new(Preset::Paper, vit, ehr, Masking::Paper, views, MsnLossConfig::new())
    }

    /// The original MSN (its ViT-S/16 configuration): trained prototypes, anchor-only masking,
    /// per-step schedules over 1.25 times the run (lr warmup 2e-4 -> 1e-3 over 15 epochs, then
    /// cosine to 1e-6; weight decay 0.04 -> 0.4; EMA 0.996 -> 1), global gradient-norm
    /// clipping at 3, no weight decay on biases, norms and prototypes.
    pub fn msn(vit: VitConfig, ehr: EhrSelection) -> Self {
        let views = ViewConfig::for_vit(&vit);
        Self::new(Preset::Msn, vit, ehr, Masking::Msn, views, MsnLossConfig::new())
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
        let mut value = serde_json::to_value(self)?;
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
        Self::paper(VitConfig::vit_tiny(), EhrSelection::none()).with_overrides_from(path)
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

/// The configuration a run starts from (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The reference code's behaviour ([`PretrainConfig::paper`]).
    Paper,
    /// The original MSN's ViT-S/16 configuration ([`PretrainConfig::msn`]).
    Msn,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::Msn => "msn",
        }
    }

    /// This preset's config for `vit` and the `--ehr` selection `ehr`.
    pub fn config(self, vit: VitConfig, ehr: EhrSelection) -> PretrainConfig {
        match self {
            Self::Paper => PretrainConfig::paper(vit, ehr),
            Self::Msn => PretrainConfig::msn(vit, ehr),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The images a run pretrains on (`--pretrain-split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PretrainSplit {
    /// The training split's images only (the default).
    Train,
    /// Every image, as the reference.
    All,
}

impl PretrainSplit {
    /// The dataset splits to load (empty: all of them).
    pub fn splits(self) -> Vec<cxr_dataset::Split> {
        match self {
            Self::Train => vec![cxr_dataset::Split::Train],
            Self::All => Vec::new(),
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
