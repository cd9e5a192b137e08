//! Linear evaluation (METHOD.md section 9): the target (EMA) encoder of a pretraining run,
//! frozen (or fine-tuned), one linear classifier per label, and the test metrics of the
//! classifier chosen on the validation split, in-domain and on external datasets (labels
//! matched by name).
//!
//! Two probes ([`ProbeKind`]). `logistic` (the default; [`logistic`]): frozen features are
//! standardised with the training split's statistics and each label gets an L2-regularised
//! logistic regression solved to convergence, its strength chosen on validation macro AUROC:
//! the standard protocol for frozen features. `sgd` ([`sgd`]): the reference's probe, a
//! Linear(dim, labels) head trained with Adam, a per-epoch cosine schedule and early stopping
//! on validation macro AUROC (on standardised features unless `standardize` is off); it is
//! the only probe that can fine-tune the encoder or train on augmented images.
//!
//! With a frozen encoder and `cache_features` (the default) the encoder runs once per image
//! with the eval transform and the features are cached on disk, keyed by the encoder's
//! weights, the dataset version and the transform, so the probe trains in seconds; otherwise
//! every training batch is transformed with the reference probe's augmentations.
//!
//! Besides an encoder, a [`Source`] can be a baseline that shows what an encoder adds: the
//! image itself, area-downsampled (`Pixels`), or the EHR vector alone (`Ehr`).

use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use cxr_dataset::Split;
use cxr_dataset::features::EhrSelection;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{Dataset, Images};
use crate::metrics::evaluate;
use crate::model::fusion::{FusionShape, MsnNet};
use crate::model::{Vit, VitConfig};
use crate::pretrain::{CheckpointChoice, PretrainConfig, read_best, read_checkpoint};
use crate::rng::Rng;
use crate::transform::ProbeTransform;
use crate::{Error, Result};

pub mod logistic;
mod results;
pub mod sgd;
mod splits;
pub use logistic::{LogisticConfig, LogisticModel, Standardizer};
pub use results::{CPoint, EpochMetrics, ExternalResult, LinearEvalResult, TEST_SCORES, TestScores};
pub use splits::{SplitData, load_splits};

/// How the linear classifier is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// L2-regularised logistic regression per label on standardised frozen features, solved
    /// to convergence (L-BFGS), the strength chosen on validation macro AUROC.
    Logistic,
    /// A linear head trained by Adam with early stopping (the reference's probe).
    Sgd,
}

/// What uncertain (-1) labels become for the probe (`--uncertain`); blanks are negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Uncertain {
    /// The policy the dataset was built with.
    Dataset,
    /// Negatives (U-zeros).
    Zeros,
    /// Positives (U-ones).
    Ones,
    /// Left out of the loss and the metrics.
    Ignore,
}

impl Uncertain {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dataset => "dataset",
            Self::Zeros => "zeros",
            Self::Ones => "ones",
            Self::Ignore => "ignore",
        }
    }
}

/// Linear-evaluation settings; saved in the results.
#[derive(Config, Debug)]
pub struct LinearEvalConfig {
    /// The classifier on frozen features: `logistic` or `sgd`. Fine-tuning and training on
    /// augmented images (`cache_features` off) always use `sgd`.
    #[config(default = "ProbeKind::Logistic")]
    pub probe: ProbeKind,
    /// Fraction of the training images the probe trains on (1%, 5%, 10%, 100% in the paper),
    /// sampled at random with `seed`.
    #[config(default = 1.0)]
    pub fraction: f64,
    /// Train the encoder too (fine-tuning) instead of freezing it.
    #[config(default = false)]
    pub finetune: bool,
    /// Compute a frozen encoder's features once (eval transform) and cache them.
    #[config(default = true)]
    pub cache_features: bool,
    /// `sgd` on frozen features: standardise them with the training rows' mean and standard
    /// deviation first (a parameter-free normalisation, as MAE and MSN probes use).
    #[config(default = true)]
    pub standardize: bool,
    /// The pretraining checkpoint a run's encoder is read from: `lowest-loss` (the epoch with
    /// the lowest mean training loss, as the reference) or `last`.
    #[config(default = "CheckpointChoice::LowestLoss")]
    pub checkpoint: CheckpointChoice,
    /// `logistic`: the candidate strengths and the solver's tolerance.
    #[config(default = "LogisticConfig::default()")]
    pub logistic: LogisticConfig,
    /// `sgd`: most epochs; early stopping usually ends the run before.
    #[config(default = 100)]
    pub epochs: usize,
    /// `sgd`: epochs without a better validation macro AUROC before stopping.
    #[config(default = 5)]
    pub patience: usize,
    #[config(default = 64)]
    pub batch_size: usize,
    #[config(default = 1e-4)]
    pub lr: f64,
    #[config(default = 24)]
    pub seed: u64,
    /// What uncertain labels become; blanks are negatives.
    #[config(default = "Uncertain::Dataset")]
    pub uncertain: Uncertain,
    #[config(default = 1000)]
    pub bootstrap: usize,
    pub transform: ProbeTransform,
}

/// A frozen or trainable encoder and what identifies it.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub vit: Vit,
    /// Hex digest of the weights' file (or of the random-initialisation settings).
    pub id: String,
    /// The pretraining view side (the default crop).
    pub crop: usize,
    /// What the results record about it.
    pub source: serde_json::Value,
}

use cxr_dataset::files::hex;

/// The target (EMA) encoder of a pretraining run folder, from the checkpoint `choice` names
/// (the lowest-loss epoch falls back to the last checkpoint when the run has none).
pub fn load_encoder(run: &Path, choice: CheckpointChoice, device: &Device) -> Result<Encoder> {
    let path = run.join("config.json");
    let text = fs_err::read_to_string(&path)
        .map_err(|e| Error::input(&path, format!("not a pretraining run folder ({e})")))?;
    let cfg = PretrainConfig::read(&path)?;
    let saved: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::input(&path, e))?;
    let ehr_in = saved["ehr_columns"].as_array().map_or(0, Vec::len);
    let checkpoint = read_checkpoint(run)?;
    let best = match choice {
        CheckpointChoice::LowestLoss => read_best(run)?,
        CheckpointChoice::Last => None,
    };
    let (model, step, selected) = match &best {
        Some(b) => (b.model.clone(), b.step, format!("lowest-loss (epoch {}, mean loss {:.4})", b.epoch, b.mean_loss)),
        None => (checkpoint.model.clone(), checkpoint.step, "last".to_string()),
    };
    let file = run.join(&model);
    let bytes = fs_err::read(&file)?;
    let id = hex(&Sha256::digest(&bytes))[..16].to_string();
    let shape = FusionShape { ehr_in, ehr_dim: cfg.ehr_dim, prototypes: cfg.prototypes };
    let net = MsnNet::new(&cfg.vit, shape, device, &mut Rng::new(cfg.seed));
    let record = burn::store::ModuleRecord::load(&file).map_err(|e| Error::record(&file, e))?;
    let net = net.try_load_record(record).map_err(|e| Error::record(&file, e))?;
    Ok(Encoder {
        vit: net.target,
        source: serde_json::json!({
            "run": run.display().to_string(),
            "checkpoint": model,
            "selected": selected,
            "step": step,
            "weights_sha256_16": id,
            "pretraining_dataset": checkpoint.dataset_version,
            "ehr": cfg.ehr,
            "preset": cfg.preset,
            "vit": cfg.vit,
        }),
        id,
        crop: cfg.views.global_size,
    })
}

/// A randomly initialised encoder (the baseline a pretrained one must beat): exactly the
/// initial network of a pretraining run with this model and seed, whatever its EHR choice.
pub fn random_encoder(vit: &VitConfig, seed: u64, device: &Device) -> Encoder {
    let text = format!("random:{seed}:{}", serde_json::to_string(vit).unwrap_or_default());
    let shape = FusionShape { ehr_in: 0, ehr_dim: 1, prototypes: 1 };
    Encoder {
        vit: MsnNet::new(vit, shape, device, &mut Rng::new(seed)).target,
        id: hex(&Sha256::digest(text.as_bytes()))[..16].to_string(),
        crop: vit.image_size,
        source: serde_json::json!({ "random_init": true, "seed": seed, "vit": vit }),
    }
}

/// The encoder's CLS features of `rows` of `images` with the eval transform, `[rows, dim]`.
pub fn embed(vit: &Vit, images: &Images, rows: &[usize], t: &ProbeTransform, device: &Device) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rows.len() * vit.dim());
    for chunk in rows.chunks(64) {
        let x = eval_batch(images, chunk, t, device)?;
        out.extend(to_vec(vit.forward(x, None).detach()));
    }
    Ok(out)
}

fn eval_batch(images: &Images, rows: &[usize], t: &ProbeTransform, device: &Device) -> Result<Tensor<4>> {
    let n = t.len();
    let mut data = vec![0f32; rows.len() * n];
    data.par_chunks_mut(n).zip(rows.par_iter()).try_for_each(|(dst, &i)| -> Result<()> {
        t.eval(&images.image(i)?, images.side, dst);
        Ok(())
    })?;
    Ok(Tensor::from_data(TensorData::new(data, [rows.len(), t.channels, t.crop, t.crop]), device))
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// Reads or computes (and writes) the cached features `key` in `dir`: `<key>.f32` (rows of
/// `dim` little-endian f32) and `<key>.json` (`about`, plus `rows` and `dim`), which says
/// what they are to other tools (e.g. `trainer/reference/probe_sklearn.py`).
fn cached(
    dir: &Path,
    key: &str,
    about: serde_json::Value,
    compute: impl FnOnce() -> Result<Vec<f32>>,
    dim: usize,
) -> Result<Vec<f32>> {
    let path = dir.join(format!("{key}.f32"));
    if let Ok(bytes) = fs_err::read(&path)
        && bytes.len() % 4 == 0
    {
        let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if v.len().is_multiple_of(dim.max(1)) {
            return Ok(v);
        }
    }
    let v = compute()?;
    fs_err::create_dir_all(dir)?;
    let mut about = about;
    about["rows"] = (v.len() / dim.max(1)).into();
    about["dim"] = dim.into();
    fs_err::write(dir.join(format!("{key}.json")), to_json_pretty(&about)?)?;
    let tmp = path.with_extension("tmp");
    fs_err::write(&tmp, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
    fs_err::rename(&tmp, &path)?;
    Ok(v)
}

/// What the probe reads: an encoder's features, or a baseline's.
#[derive(Debug, Clone)]
pub enum Source {
    Encoder(Box<Encoder>),
    /// The stored image, area-downsampled to `side x side` and scaled to [0, 1].
    Pixels {
        side: usize,
    },
    /// The EHR vector of an `--ehr` selection (its dataset columns; DATA.md section 5).
    Ehr {
        selection: String,
    },
}

impl From<Encoder> for Source {
    fn from(e: Encoder) -> Self {
        Self::Encoder(Box::new(e))
    }
}

impl Source {
    /// The baseline choices: `pixels` (the image at 32x32) and `ehr-alone` (the EHR vector of
    /// demographics, scan and stay).
    pub const BASELINES: [&'static str; 2] = ["pixels", "ehr-alone"];

    /// The baseline of a name in [`Source::BASELINES`].
    pub fn baseline(name: &str) -> Option<Self> {
        match name {
            "pixels" => Some(Self::Pixels { side: 32 }),
            "ehr-alone" => Some(Self::Ehr { selection: "demographics,scan,stay".into() }),
            _ => None,
        }
    }

    /// What the results record about the source.
    fn describe(&self) -> serde_json::Value {
        match self {
            Self::Encoder(e) => e.source.clone(),
            Self::Pixels { side } => serde_json::json!({ "baseline": "pixels", "side": side }),
            Self::Ehr { selection } => serde_json::json!({ "baseline": "ehr", "ehr": selection }),
        }
    }

    /// The dataset columns the source reads besides the labels.
    fn columns(&self) -> Result<Vec<String>> {
        match self {
            Self::Ehr { selection } => {
                let sel: EhrSelection =
                    selection.parse().map_err(|e| Error::Config(format!("--ehr {selection}: {e}")))?;
                if sel.is_none() {
                    return Err(Error::Config("the EHR baseline needs an EHR selection other than none".into()));
                }
                Ok(sel.columns())
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// `images` area-downsampled to `side x side`, scaled to [0, 1], `[rows, side * side]`.
pub fn downsample(images: &Images, side: usize) -> Result<Vec<f32>> {
    let s = images.side;
    let bounds: Vec<(usize, usize)> =
        (0..side).map(|o| (o * s / side, ((o + 1) * s).div_ceil(side).max(o * s / side + 1))).collect();
    let rows: Vec<Vec<f32>> = (0..images.len())
        .into_par_iter()
        .map(|i| -> Result<Vec<f32>> {
            let img = images.image(i)?;
            let mut out = Vec::with_capacity(side * side);
            for &(y0, y1) in &bounds {
                for &(x0, x1) in &bounds {
                    let mut sum = 0u64;
                    for y in y0..y1 {
                        sum += img[y * s + x0..y * s + x1].iter().map(|&v| u64::from(v)).sum::<u64>();
                    }
                    out.push(sum as f32 / ((y1 - y0) * (x1 - x0)) as f32 / 255.0);
                }
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(rows.concat())
}

/// The selected feature `columns` of `data`'s rows, `[rows, columns.len()]`.
fn columns_of(data: &SplitData, columns: &[String]) -> Result<Vec<f32>> {
    let at: Vec<usize> = columns
        .iter()
        .map(|c| {
            data.images.columns.iter().rposition(|n| n == c).ok_or_else(|| Error::Internal(format!("no column {c:?}")))
        })
        .collect::<Result<_>>()?;
    Ok((0..data.len()).flat_map(|i| at.iter().map(move |&k| data.images.feature_row(i)[k])).collect())
}

/// A trained classifier over feature rows.
enum Classifier {
    Logistic { standardizer: Standardizer, model: LogisticModel },
    Linear { standardizer: Option<Standardizer>, probe: Box<sgd::Probe> },
}

impl Classifier {
    /// Sigmoid outputs `[rows, labels]` of raw feature rows `x` (`[rows, dim]`).
    fn score(&self, x: &[f32], dim: usize, device: &Device) -> Vec<f32> {
        match self {
            Self::Logistic { standardizer, model } => model.predict(&standardizer.apply(x)),
            Self::Linear { standardizer: Some(s), probe } => sgd::score_features(&probe.head, &s.apply(x), dim, device),
            Self::Linear { standardizer: None, probe } => sgd::score_features(&probe.head, x, dim, device),
        }
    }

    /// Writes `probe.json` (logistic, or the SGD probe's standardisation) and, for the SGD
    /// probe, `probe.bpk` (the head, and the encoder when fine-tuned).
    fn save(&self, out: &Path, labels: &[String]) -> Result<()> {
        let json = |s: &Standardizer| serde_json::json!({ "mean": s.mean, "scale": s.scale });
        let doc = match self {
            Self::Logistic { standardizer, model } => Some(serde_json::json!({
                "probe": "logistic",
                "labels": labels,
                "c": model.c,
                "standardize": json(standardizer),
                "weights_then_intercept": model.labels.iter().map(|f| f.params.clone()).collect::<Vec<_>>(),
            })),
            Self::Linear { standardizer, probe } => {
                probe
                    .clone()
                    .into_record()
                    .save(out.join("probe.bpk"))
                    .map_err(|e| Error::record(&out.join("probe.bpk"), e))?;
                standardizer.as_ref().map(|s| serde_json::json!({ "probe": "sgd", "standardize": json(s) }))
            }
        };
        if let Some(doc) = doc {
            let text = serde_json::to_string(&doc)?;
            fs_err::write(out.join("probe.json"), text)?;
        }
        Ok(())
    }
}

/// Fits the logistic probe at every candidate strength (warm-started from the previous one),
/// keeps the one with the best validation macro AUROC (the smaller strength on a tie), and
/// writes one `metrics.jsonl` line per strength.
#[allow(clippy::too_many_arguments)]
fn fit_logistic(
    cfg: &LinearEvalConfig,
    train: &[f32],
    train_labels: &[f32],
    val: &[f32],
    val_labels: &[f32],
    dim: usize,
    names: &[String],
    out: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(Classifier, Vec<CPoint>, f64)> {
    let l = names.len();
    if cfg.logistic.cs.is_empty() || cfg.logistic.cs.iter().any(|c| c.is_nan() || *c <= 0.0) {
        return Err(Error::Config("logistic.cs: expected one or more positive strengths".into()));
    }
    let standardizer = Standardizer::fit(train, dim);
    let (x, xv) = (standardizer.apply(train), standardizer.apply(val));
    let mut cs = cfg.logistic.cs.clone();
    cs.sort_by(f64::total_cmp);
    let mut path = Vec::new();
    let mut best: Option<(LogisticModel, f64)> = None;
    let mut previous: Option<LogisticModel> = None;
    let mut lines = String::new();
    for &c in &cs {
        let m = logistic::fit(&x, dim, train_labels, l, c, &cfg.logistic, previous.as_ref());
        let auc = macro_auroc(&m.predict(&xv), val_labels, names);
        let point = CPoint {
            c,
            train_loss: m.loss(&x, train_labels),
            validate_macro_auroc: auc,
            max_iterations: m.labels.iter().map(|f| f.iterations).max().unwrap_or(0),
            converged: m.labels.iter().all(|f| f.converged),
        };
        log(&format!(
            "C {c:.0e}: train loss {:.4}, validate macro AUROC {}, {} iterations{}",
            point.train_loss,
            auc.map_or("undefined".into(), |a| format!("{a:.4}")),
            point.max_iterations,
            if point.converged { "" } else { " (not converged)" }
        ));
        lines += &serde_json::to_string(&point)?;
        lines.push('\n');
        path.push(point);
        let a = auc.unwrap_or(f64::NEG_INFINITY);
        if best.as_ref().is_none_or(|(_, b)| a > *b) {
            best = Some((m.clone(), a));
        }
        previous = Some(m);
    }
    fs_err::write(out.join("metrics.jsonl"), lines)?;
    let (model, auc) = best.ok_or_else(|| Error::Internal("no logistic fit".into()))?;
    Ok((Classifier::Logistic { standardizer, model }, path, auc))
}

/// Test scores and features kept for the reports.
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: Vec<f32>,
    pub labels: Vec<f32>,
    pub features: Vec<f32>,
    pub dim: usize,
    pub meta: Vec<(f32, f32, String)>,
}

/// Everything a finished linear evaluation returns.
#[derive(Debug)]
pub struct LinearEvalOutput {
    pub result: LinearEvalResult,
    pub test: Scored,
    /// The SGD probe's epochs (empty for the logistic probe, whose path over strengths is
    /// in `result.regularization`).
    pub history: Vec<EpochMetrics>,
}

fn macro_auroc(scores: &[f32], labels: &[f32], names: &[String]) -> Option<f64> {
    evaluate(scores, labels, names, 0, 0).macro_auroc.map(|e| e.value)
}

/// Runs the linear evaluation of `source` (an [`Encoder`] or a baseline) on `dataset`
/// (train/validate/test splits), tests the classifier chosen on validation on the test split
/// and on each of `external` (labels by name), and writes `results.json`, `results.md`,
/// `metrics.jsonl`, `test-scores.json` and the probe (`probe.json` and/or `probe.bpk`) into
/// `out`. `cache_dir` holds cached encoder features (a run's `features/` folder).
#[allow(clippy::too_many_arguments)]
pub fn linear_eval(
    cfg: &LinearEvalConfig,
    source: impl Into<Source>,
    dataset: &Path,
    external: &[PathBuf],
    out: &Path,
    cache_dir: &Path,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<LinearEvalOutput> {
    let started = std::time::Instant::now();
    let source = source.into();
    if !(cfg.fraction > 0.0 && cfg.fraction <= 1.0) {
        return Err(Error::Config(format!("--fraction {}: expected a value in (0, 1]", cfg.fraction)));
    }
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(Error::Config("--batch-size and --epochs must be at least 1".into()));
    }
    let encoder = match &source {
        Source::Encoder(e) => Some(e.as_ref()),
        _ if cfg.finetune => {
            return Err(Error::Config("a baseline (pixels or EHR) has no encoder to fine-tune".into()));
        }
        _ => None,
    };
    let ds = Dataset::open(dataset)?;
    let names = ds.labels.clone();
    let l = names.len();
    let columns = source.columns()?;
    let splits = load_splits(&ds, &names, cfg.uncertain, &[Split::Train, Split::Validate, Split::Test], &columns)?;
    let [train, val, test]: [SplitData; 3] =
        splits.try_into().map_err(|_| Error::Internal("expected three splits".into()))?;
    for (what, s) in [("train", &train), ("validate", &val), ("test", &test)] {
        if s.is_empty() {
            return Err(Error::Dataset { path: ds.dir.clone(), message: format!("the {what} split has no images") });
        }
    }
    // The probe's training rows: a seeded random fraction of the training images.
    let mut train_rows = Rng::derive(cfg.seed, 0xF2AC, 0).permutation(train.len());
    train_rows.truncate(((train.len() as f64 * cfg.fraction).ceil() as usize).max(1));
    train_rows.sort_unstable();
    let t = &cfg.transform;
    let all = |n: usize| (0..n).collect::<Vec<usize>>();
    let frozen_vit = encoder.map(|e| e.vit.clone().no_grad());
    // Feature rows of a split of a dataset version through the source (the eval transform
    // for an encoder, cached when asked).
    let features = |split: &str, version: &str, data: &SplitData, vit: Option<&Vit>, log: &mut dyn FnMut(&str)| match (
        &source, vit,
    ) {
        (Source::Encoder(e), Some(vit)) => {
            log(&format!("embedding {} {split} images", data.len()));
            let compute = || embed(vit, &data.images, &all(data.len()), t, device);
            if cfg.cache_features && !cfg.finetune {
                let text = format!("{}|{version}|{split}|{}", e.id, serde_json::to_string(t).unwrap_or_default());
                let key = hex(&Sha256::digest(text.as_bytes()))[..24].to_string();
                let about = serde_json::json!({
                    "split": split, "dataset_version": version, "encoder": e.id, "source": e.source,
                });
                cached(cache_dir, &key, about, compute, vit.dim())
            } else {
                compute()
            }
        }
        (Source::Pixels { side }, _) => downsample(&data.images, *side),
        (Source::Ehr { .. }, _) => columns_of(data, &columns),
        (Source::Encoder(_), None) => Err(Error::Internal("an encoder source without its network".into())),
    };
    let dim = match &source {
        Source::Encoder(e) => e.vit.dim(),
        Source::Pixels { side } => side * side,
        Source::Ehr { .. } => columns.len(),
    };
    fs_err::create_dir_all(out)?;
    let on_features = !cfg.finetune && (cfg.cache_features || encoder.is_none());
    let train_labels: Vec<f32> = train_rows.iter().flat_map(|&i| train.labels[i * l..(i + 1) * l].to_vec()).collect();
    let mut history = Vec::new();
    let mut regularization = None;
    let (classifier, best_epoch, best_auc, probe_kind) = if on_features {
        let x_all = features("train", &ds.version, &train, frozen_vit.as_ref(), log)?;
        let x: Vec<f32> = train_rows.iter().flat_map(|&i| x_all[i * dim..(i + 1) * dim].to_vec()).collect();
        let xv = features("validate", &ds.version, &val, frozen_vit.as_ref(), log)?;
        match cfg.probe {
            ProbeKind::Logistic => {
                let (c, path, auc) = fit_logistic(cfg, &x, &train_labels, &xv, &val.labels, dim, &names, out, log)?;
                regularization = Some(path);
                (c, None, auc, ProbeKind::Logistic)
            }
            ProbeKind::Sgd => {
                let standardizer = cfg.standardize.then(|| Standardizer::fit(&x, dim));
                let (xs, xvs) = match &standardizer {
                    Some(s) => (s.apply(&x), s.apply(&xv)),
                    None => (x, xv),
                };
                let input = sgd::Input::Features { train: &xs, validate: &xvs };
                let rows = all(train_rows.len());
                let r =
                    sgd::train(cfg, None, &input, dim, &rows, &train_labels, &val.labels, &names, out, device, log)?;
                history = r.history;
                (
                    Classifier::Linear { standardizer, probe: Box::new(r.best) },
                    Some(r.best_epoch),
                    r.best_auc,
                    ProbeKind::Sgd,
                )
            }
        }
    } else {
        let vit = match (&frozen_vit, encoder) {
            // Fine-tuning trains the encoder: a run's target encoder is loaded frozen (the EMA
            // copy takes no gradients), so its parameters are made trainable here.
            (Some(v), Some(e)) => {
                if cfg.finetune {
                    e.vit.clone().set_require_grad(true)
                } else {
                    v.clone()
                }
            }
            _ => return Err(Error::Internal("training on images needs an encoder".into())),
        };
        let input = sgd::Input::Images { train: &train, validate: &val };
        let r =
            sgd::train(cfg, Some(vit), &input, dim, &train_rows, &train.labels, &val.labels, &names, out, device, log)?;
        history = r.history;
        (
            Classifier::Linear { standardizer: None, probe: Box::new(r.best) },
            Some(r.best_epoch),
            r.best_auc,
            ProbeKind::Sgd,
        )
    };
    // Test with the classifier chosen on validation (and, fine-tuned, its encoder).
    let test_vit = match &classifier {
        Classifier::Linear { probe, .. } if cfg.finetune => probe.encoder.clone(),
        _ => frozen_vit.clone(),
    };
    let test_feats = features("test", &ds.version, &test, test_vit.as_ref(), log)?;
    let test_scores = classifier.score(&test_feats, dim, device);
    log(&format!("testing on {} images ({} bootstrap resamples)", test.len(), cfg.bootstrap));
    let test_eval = evaluate(&test_scores, &test.labels, &names, cfg.bootstrap, cfg.seed);
    let mut externals = Vec::new();
    for dir in external {
        if matches!(source, Source::Ehr { .. }) {
            log(&format!("{}: skipped, external datasets carry no MIMIC-IV EHR", dir.display()));
            continue;
        }
        let ext = Dataset::open(dir)?;
        let unmatched: Vec<String> =
            names.iter().filter(|n| !ext.labels.iter().any(|e| e.eq_ignore_ascii_case(n))).cloned().collect();
        let [data]: [SplitData; 1] = load_splits(&ext, &names, cfg.uncertain, &[Split::Test], &[])?
            .try_into()
            .map_err(|_| Error::Internal("expected one split".into()))?;
        if data.is_empty() {
            return Err(Error::Dataset { path: ext.dir.clone(), message: "the test split has no images".into() });
        }
        let f = features("test", &ext.version, &data, test_vit.as_ref(), log)?;
        let s = classifier.score(&f, dim, device);
        log(&format!("external test on {} ({}, {} images)", ext.version, ext.kind, data.len()));
        externals.push(ExternalResult {
            dataset: dir.display().to_string(),
            version: ext.version.clone(),
            kind: ext.kind.clone(),
            unmatched_labels: unmatched,
            test: evaluate(&s, &data.labels, &names, cfg.bootstrap, cfg.seed),
        });
    }
    let saved = TestScores {
        labels: names.clone(),
        scores: test_scores.clone(),
        targets: test.labels.iter().map(|v| (!v.is_nan()).then_some(*v)).collect(),
    };
    fs_err::write(out.join(TEST_SCORES), to_json(&saved)?)?;
    classifier.save(out, &names)?;
    let chosen_c = match &classifier {
        Classifier::Logistic { model, .. } => Some(model.c),
        Classifier::Linear { .. } => None,
    };
    let result = LinearEvalResult {
        encoder: source.describe(),
        dataset: dataset.display().to_string(),
        dataset_version: ds.version.clone(),
        dataset_kind: ds.kind.clone(),
        config: serde_json::to_value(cfg)?,
        labels: names.clone(),
        probe: probe_kind,
        train_rows: train_rows.len(),
        validate_rows: val.len(),
        test_rows: test.len(),
        epochs_run: (probe_kind == ProbeKind::Sgd).then_some(history.len()),
        best_epoch,
        chosen_c,
        regularization,
        best_validate_macro_auroc: best_auc.is_finite().then_some(best_auc),
        test: test_eval,
        external: externals,
        seconds: started.elapsed().as_secs_f64(),
    };
    fs_err::write(out.join("results.json"), to_json_pretty(&result)?)?;
    fs_err::write(out.join("results.md"), result.markdown())?;
    Ok(LinearEvalOutput {
        test: Scored { scores: test_scores, labels: test.labels.clone(), features: test_feats, dim, meta: test.meta },
        result,
        history,
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(Error::from)
}

/// `v` as indented JSON; a serialisation failure is an error, never an empty file.
pub(crate) fn to_json_pretty<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The random-init baseline is the initial target encoder of a pretraining run of the
    /// same model and seed, with or without EHR.
    #[test]
    fn the_random_encoder_is_the_initial_network_of_a_run() {
        let device = Device::flex();
        let vit = VitConfig::new(16, 1, 2, 32).with_image_size(16).with_patch_size(8);
        let weights = |v: &Vit| to_vec(v.patch.weight.val());
        let shape = FusionShape { ehr_in: 13, ehr_dim: 8, prototypes: 16 };
        let run = MsnNet::new(&vit, shape, &device, &mut Rng::new(24));
        assert_eq!(weights(&random_encoder(&vit, 24, &device).vit), weights(&run.target));
        assert_ne!(weights(&random_encoder(&vit, 25, &device).vit), weights(&run.target));
    }
}
