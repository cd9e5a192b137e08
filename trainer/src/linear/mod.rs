//! Linear evaluation (METHOD.md section 9): the target (EMA) encoder of a pretraining run,
//! frozen (or fine-tuned), one linear classifier per label, and the test metrics of the
//! classifier chosen on the validation split, in-domain and on external datasets (labels
//! matched by name).
//!
//! Three probes ([`ProbeKind`]). `logistic` (the default; [`logistic`]): frozen features are
//! standardised with the training split's statistics and each label gets an L2-regularised
//! logistic regression solved to convergence, its strength chosen on validation macro AUROC:
//! the standard protocol for frozen features. `sgd` ([`sgd`]): the reference's probe, a
//! Linear(dim, labels) head trained with Adam, a per-epoch cosine schedule and early stopping
//! on validation macro AUROC (on standardised features unless `standardize` is off); it is
//! the only probe that can fine-tune the encoder or train on augmented images. `paper`: the
//! paper's protocol (METHOD.md section 9), the `sgd` head trained on augmented images through
//! the frozen encoder, on its raw features, whatever `cache_features` and `standardize` say.
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
use burn::tensor::Device;
use cxr_dataset::{Split, Uncertain};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::metrics::{BootstrapUnit, evaluate, macro_auroc};
use crate::model::Vit;
use crate::pretrain::CheckpointChoice;
use crate::rng::Rng;
use crate::transform::ProbeTransform;
use crate::{Error, Result};

pub mod logistic;
mod results;
pub mod sgd;
mod source;
mod splits;
pub use logistic::{LogisticConfig, LogisticModel, Standardizer};
pub use results::{CPoint, EpochMetrics, ExternalResult, LinearEvalResult, TEST_SCORES, TestScores};
use source::Features;
pub use source::{Baseline, Encoder, Source, downsample, embed, load_encoder, random_encoder};
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
    /// The paper's linear evaluation: the Adam head trained on augmented images (flip and
    /// affine map) through the frozen encoder, raw features, early stopping on validation
    /// macro AUROC. A baseline without an encoder trains the head on its raw features.
    Paper,
}

impl ProbeKind {
    /// Whether the classifier is the Adam-trained linear head.
    pub fn is_linear_head(self) -> bool {
        matches!(self, Self::Sgd | Self::Paper)
    }
}

/// What uncertain (-1) labels become for the probe (`--uncertain`): the dataset's targets as
/// built, or the raw labels under another policy; blanks are negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProbeUncertain {
    /// The policy the dataset was built with.
    Dataset,
    /// Negatives (U-zeros).
    Zeros,
    /// Positives (U-ones).
    Ones,
    /// Left out of the loss and the metrics.
    Ignore,
}

impl ProbeUncertain {
    pub fn name(self) -> &'static str {
        self.policy().map_or("dataset", Uncertain::name)
    }

    /// The policy applied to the raw labels; `None`: the dataset's built targets.
    pub fn policy(self) -> Option<Uncertain> {
        match self {
            Self::Dataset => None,
            Self::Zeros => Some(Uncertain::Zeros),
            Self::Ones => Some(Uncertain::Ones),
            Self::Ignore => Some(Uncertain::Ignore),
        }
    }
}

/// Linear-evaluation settings; saved in the results.
#[derive(Config, Debug)]
pub struct LinearEvalConfig {
    /// The classifier: `logistic` or `sgd` on frozen features, or `paper` (the `sgd` head on
    /// augmented images, raw features). Fine-tuning and training on augmented images
    /// (`cache_features` off) always train the linear head.
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
    #[config(default = "ProbeUncertain::Dataset")]
    pub uncertain: ProbeUncertain,
    #[config(default = 1000)]
    pub bootstrap: usize,
    /// What a bootstrap resample draws: patients (each with all of its images) or images.
    #[config(default = "BootstrapUnit::Patient")]
    pub bootstrap_unit: BootstrapUnit,
    pub transform: ProbeTransform,
}

/// A trained classifier over feature rows.
enum Classifier {
    Logistic { standardizer: Standardizer, model: LogisticModel },
    Linear { standardizer: Option<Standardizer>, probe: Box<sgd::Probe> },
}

impl Classifier {
    /// Sigmoid outputs `[rows, labels]` of raw feature rows `x` (`[rows, dim]`).
    fn score(&self, x: &[f32], dim: usize, device: &Device) -> Result<Vec<f32>> {
        match self {
            Self::Logistic { standardizer, model } => Ok(model.predict(&standardizer.apply(x))),
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
    check_settings(cfg, &source)?;
    let ds = Dataset::open(dataset)?;
    let names = ds.labels.clone();
    let columns = source.columns(&ds)?;
    ds.require_finite(&[], &columns)?;
    let [train, val, test] = three_splits(&ds, &names, cfg.uncertain, &columns)?;
    let train_rows = probe_rows(cfg, train.len());
    let cache = (cfg.cache_features && !cfg.finetune).then_some(cache_dir);
    let features = Features { source: &source, columns: &columns, transform: &cfg.transform, cache, device };
    fs_err::create_dir_all(out)?;
    let fit = fit(cfg, &features, &ds.version, (&train, &train_rows), &val, &names, out, log)?;
    // Test with the classifier chosen on validation (and, fine-tuned, its encoder).
    let test_vit = match &fit.classifier {
        Classifier::Linear { probe, .. } if cfg.finetune => probe.encoder.clone(),
        _ => frozen(&source),
    };
    let dim = features.dim();
    let test_feats = features.rows("test", &ds.version, &test, test_vit.as_ref(), log)?;
    let test_scores = fit.classifier.score(&test_feats, dim, device)?;
    let clusters = test.clusters(cfg.bootstrap_unit, &ds.dir)?;
    log(&format!(
        "testing on {} images ({} bootstrap resamples of {} {})",
        test.len(),
        cfg.bootstrap,
        clusters.count(),
        cfg.bootstrap_unit.plural()
    ));
    let test_eval = evaluate(&test_scores, &test.labels, &names, cfg.bootstrap, cfg.seed, &clusters);
    let externals = external_tests(cfg, &features, &fit.classifier, test_vit.as_ref(), external, &names, log)?;
    let saved = TestScores {
        labels: names.clone(),
        scores: test_scores.clone(),
        targets: test.labels.iter().map(|v| (!v.is_nan()).then_some(*v)).collect(),
        subjects: test.subjects.clone(),
    };
    fs_err::write(out.join(TEST_SCORES), to_json(&saved)?)?;
    fit.classifier.save(out, &names)?;
    let chosen_c = match &fit.classifier {
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
        probe: fit.kind,
        train_rows: train_rows.len(),
        validate_rows: val.len(),
        test_rows: test.len(),
        epochs_run: fit.kind.is_linear_head().then_some(fit.history.len()),
        best_epoch: fit.best_epoch,
        chosen_c,
        regularization: fit.regularization,
        best_validate_macro_auroc: fit.best_auc.is_finite().then_some(fit.best_auc),
        test: test_eval,
        external: externals,
        seconds: started.elapsed().as_secs_f64(),
    };
    fs_err::write(out.join("results.json"), to_json_pretty(&result)?)?;
    fs_err::write(out.join("results.md"), result.markdown())?;
    Ok(LinearEvalOutput {
        test: Scored { scores: test_scores, labels: test.labels.clone(), features: test_feats, dim, meta: test.meta },
        result,
        history: fit.history,
    })
}

/// The train, validate and test splits of `ds`, none of them empty.
fn three_splits(
    ds: &Dataset,
    names: &[String],
    uncertain: ProbeUncertain,
    columns: &[String],
) -> Result<[SplitData; 3]> {
    let splits = load_splits(ds, names, uncertain, &[Split::Train, Split::Validate, Split::Test], columns)?;
    let splits: [SplitData; 3] = splits.try_into().map_err(|_| Error::Internal("expected three splits".into()))?;
    for (what, s) in ["train", "validate", "test"].iter().zip(&splits) {
        if s.is_empty() {
            return Err(Error::Dataset { path: ds.dir.clone(), message: format!("the {what} split has no images") });
        }
    }
    Ok(splits)
}

/// The probe's training rows: a seeded random `cfg.fraction` of the `n` training images, in
/// order.
fn probe_rows(cfg: &LinearEvalConfig, n: usize) -> Vec<usize> {
    let mut rows = Rng::derive(cfg.seed, 0xF2AC, 0).permutation(n);
    rows.truncate(((n as f64 * cfg.fraction).ceil() as usize).max(1));
    rows.sort_unstable();
    rows
}

/// The settings that cannot work, refused before any data is read.
fn check_settings(cfg: &LinearEvalConfig, source: &Source) -> Result<()> {
    if !(cfg.fraction > 0.0 && cfg.fraction <= 1.0) {
        return Err(Error::Config(format!("--fraction {}: expected a value in (0, 1]", cfg.fraction)));
    }
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(Error::Config("--batch-size and --epochs must be at least 1".into()));
    }
    if cfg.finetune && !matches!(source, Source::Encoder(_)) {
        return Err(Error::Config("a baseline (pixels or EHR) has no encoder to fine-tune".into()));
    }
    Ok(())
}

/// The frozen encoder of an encoder source.
fn frozen(source: &Source) -> Option<Vit> {
    match source {
        Source::Encoder(e) => Some(e.vit.clone().no_grad()),
        _ => None,
    }
}

/// The classifier chosen on validation, with how it was found.
struct Fit {
    classifier: Classifier,
    kind: ProbeKind,
    best_epoch: Option<usize>,
    best_auc: f64,
    /// The SGD probe's epochs.
    history: Vec<EpochMetrics>,
    /// The logistic probe's path over the L2 strengths.
    regularization: Option<Vec<CPoint>>,
}

/// Trains the probe on `rows` of `train` (on cached or computed features; or, fine-tuning or
/// without the cache, on augmented images) and picks it on `val`.
#[allow(clippy::too_many_arguments)]
fn fit(
    cfg: &LinearEvalConfig,
    features: &Features,
    version: &str,
    (train, rows): (&SplitData, &[usize]),
    val: &SplitData,
    names: &[String],
    out: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Fit> {
    let (l, dim, device) = (names.len(), features.dim(), features.device);
    let frozen_vit = frozen(features.source);
    let paper = cfg.probe == ProbeKind::Paper;
    let on_features = !cfg.finetune && ((cfg.cache_features && !paper) || frozen_vit.is_none());
    let labels: Vec<f32> = rows.iter().flat_map(|&i| train.labels[i * l..(i + 1) * l].to_vec()).collect();
    let kind = if paper { ProbeKind::Paper } else { ProbeKind::Sgd };
    if paper {
        log(&match frozen_vit {
            Some(_) => format!(
                "paper probe: a linear head trained by Adam (lr {:e}, cosine, at most {} epochs, patience {}) on \
                 augmented images through the frozen encoder",
                cfg.lr, cfg.epochs, cfg.patience
            ),
            None => "paper probe: a baseline has no encoder, so the head trains on its raw features".into(),
        });
    }
    let linear = |r: sgd::Trained, standardizer| Fit {
        classifier: Classifier::Linear { standardizer, probe: Box::new(r.best) },
        kind,
        best_epoch: Some(r.best_epoch),
        best_auc: r.best_auc,
        history: r.history,
        regularization: None,
    };
    if !on_features {
        let vit = match (&frozen_vit, features.source) {
            // Fine-tuning trains the encoder: a run's target encoder is loaded frozen (the EMA
            // copy takes no gradients), so its parameters are made trainable here.
            (Some(_), Source::Encoder(e)) if cfg.finetune => e.vit.clone().set_require_grad(true),
            (Some(v), _) => v.clone(),
            _ => return Err(Error::Internal("training on images needs an encoder".into())),
        };
        let input = sgd::Input::Images { train, validate: val };
        let r = sgd::train(cfg, Some(vit), &input, dim, rows, &train.labels, &val.labels, names, out, device, log)?;
        return Ok(linear(r, None));
    }
    let x_all = features.rows("train", version, train, frozen_vit.as_ref(), log)?;
    let x: Vec<f32> = rows.iter().flat_map(|&i| x_all[i * dim..(i + 1) * dim].to_vec()).collect();
    let xv = features.rows("validate", version, val, frozen_vit.as_ref(), log)?;
    match cfg.probe {
        ProbeKind::Logistic => {
            let (classifier, path, best_auc) = fit_logistic(cfg, &x, &labels, &xv, &val.labels, dim, names, out, log)?;
            Ok(Fit {
                classifier,
                kind: ProbeKind::Logistic,
                best_epoch: None,
                best_auc,
                history: Vec::new(),
                regularization: Some(path),
            })
        }
        ProbeKind::Sgd | ProbeKind::Paper => {
            let standardizer = (cfg.standardize && !paper).then(|| Standardizer::fit(&x, dim));
            let (xs, xvs) = match &standardizer {
                Some(s) => (s.apply(&x), s.apply(&xv)),
                None => (x, xv),
            };
            let input = sgd::Input::Features { train: &xs, validate: &xvs };
            let all: Vec<usize> = (0..rows.len()).collect();
            let r = sgd::train(cfg, None, &input, dim, &all, &labels, &val.labels, names, out, device, log)?;
            Ok(linear(r, standardizer))
        }
    }
}

/// The classifier on the test split of each `external` dataset (labels matched by name).
fn external_tests(
    cfg: &LinearEvalConfig,
    features: &Features,
    classifier: &Classifier,
    vit: Option<&Vit>,
    external: &[PathBuf],
    names: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<ExternalResult>> {
    let mut results = Vec::new();
    for dir in external {
        if matches!(features.source, Source::Ehr { .. }) {
            log(&format!("{}: skipped, external datasets carry no MIMIC-IV EHR", dir.display()));
            continue;
        }
        let ext = Dataset::open(dir)?;
        let unmatched: Vec<String> =
            names.iter().filter(|n| !ext.labels.iter().any(|e| e.eq_ignore_ascii_case(n))).cloned().collect();
        let [data]: [SplitData; 1] = load_splits(&ext, names, cfg.uncertain, &[Split::Test], &[])?
            .try_into()
            .map_err(|_| Error::Internal("expected one split".into()))?;
        if data.is_empty() {
            return Err(Error::Dataset { path: ext.dir.clone(), message: "the test split has no images".into() });
        }
        let f = features.rows("test", &ext.version, &data, vit, log)?;
        let s = classifier.score(&f, features.dim(), features.device)?;
        log(&format!("external test on {} ({}, {} images)", ext.version, ext.kind, data.len()));
        results.push(ExternalResult {
            dataset: dir.display().to_string(),
            version: ext.version.clone(),
            kind: ext.kind.clone(),
            unmatched_labels: unmatched,
            test: evaluate(&s, &data.labels, names, cfg.bootstrap, cfg.seed, &data.clusters(cfg.bootstrap_unit, dir)?),
        });
    }
    Ok(results)
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(Error::from)
}

/// `v` as indented JSON; a serialisation failure is an error, never an empty file.
pub(crate) fn to_json_pretty<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(Error::from)
}
