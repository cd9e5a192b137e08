//! Linear evaluation (METHOD.md section 9): the target (EMA) encoder of a pretraining run,
//! frozen (or fine-tuned), a Linear(dim, labels) head, sigmoid + binary cross-entropy, Adam
//! with a per-epoch cosine schedule, early stopping on validation macro AUROC, and the test
//! metrics of the best-validation head, in-domain and on external datasets (labels matched by
//! name).
//!
//! With a frozen encoder and `cache_features` (the default) the encoder runs once per image
//! with the eval transform and the features are cached on disk, keyed by the encoder's
//! weights, the dataset version and the transform, so the probe trains in seconds; otherwise
//! every training batch is transformed with the reference probe's augmentations.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::config::Config;
use burn::module::Module;
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData, activation::sigmoid};
use cxr_dataset::Split;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::data::{Dataset, Images};
use crate::metrics::evaluate;
use crate::model::fusion::{FusionShape, MsnNet};
use crate::model::init::Init;
use crate::model::{Vit, VitConfig};
use crate::pretrain::{PretrainConfig, read_checkpoint};
use crate::rng::Rng;
use crate::transform::ProbeTransform;
use crate::{Error, Result};

mod results;
mod splits;
pub use results::{EpochMetrics, ExternalResult, LinearEvalResult, TEST_SCORES, TestScores};
pub use splits::{SplitData, load_splits};

/// Linear-evaluation settings; saved in the results.
#[derive(Config, Debug)]
pub struct LinearEvalConfig {
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
    /// Most epochs; early stopping usually ends the run before.
    #[config(default = 100)]
    pub epochs: usize,
    /// Epochs without a better validation macro AUROC before stopping.
    #[config(default = 5)]
    pub patience: usize,
    #[config(default = 64)]
    pub batch_size: usize,
    #[config(default = 1e-4)]
    pub lr: f64,
    #[config(default = 24)]
    pub seed: u64,
    /// Uncertain labels: `dataset` (the policy the dataset was built with), `zeros`, `ones`
    /// or `ignore` (left out of the loss and the metrics); blanks are negatives.
    #[config(default = "String::from(\"dataset\")")]
    pub uncertain: String,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The target (EMA) encoder of the last checkpoint of a pretraining run folder.
pub fn load_encoder(run: &Path, device: &Device) -> Result<Encoder> {
    let path = run.join("config.json");
    let text = fs_err::read_to_string(&path)
        .map_err(|e| Error::Config(format!("{}: not a pretraining run folder ({e})", path.display())))?;
    let cfg = PretrainConfig::read(&path)?;
    let saved: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config(e.to_string()))?;
    let ehr_in = saved["ehr_columns"].as_array().map_or(0, Vec::len);
    let checkpoint = read_checkpoint(run)?;
    let file = run.join(&checkpoint.model);
    let bytes = fs_err::read(&file)?;
    let id = hex(&Sha256::digest(&bytes))[..16].to_string();
    let shape = FusionShape { ehr_in, ehr_dim: cfg.ehr_dim, prototypes: cfg.prototypes };
    let net = MsnNet::new(&cfg.vit, shape, device, &mut Rng::new(cfg.seed));
    let record =
        burn::store::ModuleRecord::load(&file).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    let net = net.try_load_record(record).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    Ok(Encoder {
        vit: net.target,
        id,
        crop: cfg.views.global_size,
        source: serde_json::json!({
            "run": run.display().to_string(),
            "checkpoint": checkpoint.model,
            "step": checkpoint.step,
            "weights_sha256_16": hex(&Sha256::digest(&bytes))[..16],
            "pretraining_dataset": checkpoint.dataset_version,
            "ehr": cfg.ehr,
            "preset": cfg.preset,
            "vit": cfg.vit,
        }),
    })
}

/// A randomly initialised encoder (the baseline a pretrained one must beat).
pub fn random_encoder(vit: &VitConfig, seed: u64, device: &Device) -> Encoder {
    let text = format!("random:{seed}:{}", serde_json::to_string(vit).unwrap_or_default());
    Encoder {
        vit: vit.init(device, &mut Rng::new(seed)),
        id: hex(&Sha256::digest(text.as_bytes()))[..16].to_string(),
        crop: vit.image_size,
        source: serde_json::json!({ "random_init": true, "seed": seed, "vit": vit }),
    }
}

/// The probe: an encoder (absent when training on cached features) and the linear head.
#[derive(Module, Debug)]
pub struct Probe {
    pub encoder: Option<Vit>,
    pub head: Linear,
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

fn train_batch(
    images: &Images,
    rows: &[usize],
    t: &ProbeTransform,
    seed: u64,
    epoch: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    let n = t.len();
    let mut data = vec![0f32; rows.len() * n];
    data.par_chunks_mut(n).zip(rows.par_iter()).try_for_each(|(dst, &i)| -> Result<()> {
        let mut rng = Rng::derive(seed, 0x7A11 + epoch as u64, i as u64);
        t.train(&images.image(i)?, images.side, &mut rng, dst);
        Ok(())
    })?;
    Ok(Tensor::from_data(TensorData::new(data, [rows.len(), t.channels, t.crop, t.crop]), device))
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

/// Reads or computes (and writes) the cached features `key` in `dir`.
fn cached(dir: &Path, key: &str, compute: impl FnOnce() -> Result<Vec<f32>>, dim: usize) -> Result<Vec<f32>> {
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
    let tmp = path.with_extension("tmp");
    fs_err::write(&tmp, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
    fs_err::rename(&tmp, &path)?;
    Ok(v)
}

/// Masked binary cross-entropy with logits: mean over the defined (mask 1) entries.
pub fn bce(logits: Tensor<2>, targets: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let stable =
        logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().add_scalar(1.0).log();
    (stable * mask.clone()).sum() / mask.sum().clamp_min(1.0)
}

fn label_tensors(labels: &[f32], rows: &[usize], l: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut y = Vec::with_capacity(rows.len() * l);
    let mut m = Vec::with_capacity(rows.len() * l);
    for &i in rows {
        for &v in &labels[i * l..(i + 1) * l] {
            y.push(if v.is_nan() { 0.0 } else { v });
            m.push(if v.is_nan() { 0.0 } else { 1.0 });
        }
    }
    let t = |d: Vec<f32>| Tensor::<2>::from_data(TensorData::new(d, [rows.len(), l]), device);
    (t(y), t(m))
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
    pub history: Vec<EpochMetrics>,
}

fn macro_auroc(scores: &[f32], labels: &[f32], names: &[String]) -> Option<f64> {
    evaluate(scores, labels, names, 0, 0).macro_auroc.map(|e| e.value)
}

/// Runs the linear evaluation of `encoder` on `dataset` (train/validate/test splits), tests
/// the best-validation probe on the test split and on each of `external` (labels by name),
/// and writes `results.json`, `results.md`, `metrics.jsonl` and `probe.bpk` into `out`.
/// `cache_dir` holds cached features (a run's `features/` folder).
#[allow(clippy::too_many_arguments)]
pub fn linear_eval(
    cfg: &LinearEvalConfig,
    encoder: Encoder,
    dataset: &Path,
    external: &[PathBuf],
    out: &Path,
    cache_dir: &Path,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<LinearEvalOutput> {
    let started = std::time::Instant::now();
    if !(cfg.fraction > 0.0 && cfg.fraction <= 1.0) {
        return Err(Error::Config(format!("--fraction {}: expected a value in (0, 1]", cfg.fraction)));
    }
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(Error::Config("--batch-size and --epochs must be at least 1".into()));
    }
    let ds = Dataset::open(dataset)?;
    let names = ds.labels.clone();
    let l = names.len();
    let splits = load_splits(&ds, &names, &cfg.uncertain, &[Split::Train, Split::Validate, Split::Test])?;
    let [train, val, test]: [SplitData; 3] =
        splits.try_into().map_err(|_| Error::Config("expected three splits".into()))?;
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
    let dim = encoder.vit.dim();
    let frozen = !cfg.finetune;
    let use_cache = frozen && cfg.cache_features;
    let key = |split: &str, version: &str| {
        let text = format!("{}|{version}|{split}|{}", encoder.id, serde_json::to_string(t).unwrap_or_default());
        hex(&Sha256::digest(text.as_bytes()))[..24].to_string()
    };
    let all = |n: usize| (0..n).collect::<Vec<usize>>();
    let features = |split: &str, version: &str, data: &SplitData, vit: &Vit, log: &mut dyn FnMut(&str)| {
        log(&format!("embedding {} {split} images", data.len()));
        let compute = || embed(vit, &data.images, &all(data.len()), t, device);
        if use_cache { cached(cache_dir, &key(split, version), compute, dim) } else { compute() }
    };
    let vit = if frozen { encoder.vit.clone().no_grad() } else { encoder.vit.clone() };
    let train_feats = if use_cache { Some(features("train", &ds.version, &train, &vit, log)?) } else { None };
    let val_feats_frozen = if frozen { Some(features("validate", &ds.version, &val, &vit, log)?) } else { None };
    let mut init_rng = Rng::derive(cfg.seed, 0x4EAD, 0);
    let head = Init::new(device, &mut init_rng).linear_default(dim, l, true);
    let mut probe = Probe { encoder: (!use_cache).then_some(vit), head };
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut history = Vec::new();
    let (mut best, mut best_auc, mut best_epoch, mut since) = (probe.clone(), f64::NEG_INFINITY, 0, 0);
    fs_err::create_dir_all(out)?;
    let mut metrics = std::io::BufWriter::new(fs_err::File::create(out.join("metrics.jsonl"))?);
    let score = |p: &Probe, feats: Option<&[f32]>, data: &SplitData| -> Result<Vec<f32>> {
        let rows = all(data.len());
        let mut s = Vec::with_capacity(data.len() * l);
        for chunk in rows.chunks(256) {
            let x = match (feats, &p.encoder) {
                (Some(f), _) => {
                    let v: Vec<f32> = chunk.iter().flat_map(|&i| f[i * dim..(i + 1) * dim].iter().copied()).collect();
                    Tensor::<2>::from_data(TensorData::new(v, [chunk.len(), dim]), device)
                }
                (None, Some(vit)) => vit.forward(eval_batch(&data.images, chunk, t, device)?, None),
                (None, None) => Tensor::zeros([chunk.len(), dim], device),
            };
            s.extend(to_vec(sigmoid(p.head.forward(x.detach())).detach()));
        }
        Ok(s)
    };
    for epoch in 0..cfg.epochs {
        let lr = 0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * epoch as f64 / cfg.epochs as f64).cos());
        let mut order = train_rows.clone();
        let perm = Rng::derive(cfg.seed, 0x0DE2, epoch as u64).permutation(order.len());
        order = perm.into_iter().map(|k| order[k]).collect();
        let (mut loss_sum, mut batches) = (0.0f64, 0usize);
        for chunk in order.chunks(cfg.batch_size) {
            let x = match (&train_feats, &probe.encoder) {
                (Some(f), _) => {
                    let v: Vec<f32> = chunk.iter().flat_map(|&i| f[i * dim..(i + 1) * dim].iter().copied()).collect();
                    Tensor::<2>::from_data(TensorData::new(v, [chunk.len(), dim]), device)
                }
                (None, Some(vit)) => {
                    let f = vit.forward(train_batch(&train.images, chunk, t, cfg.seed, epoch, device)?, None);
                    if frozen { f.detach() } else { f }
                }
                (None, None) => return Err(Error::Config("probe without an encoder or features".into())),
            };
            let (y, m) = label_tensors(&train.labels, chunk, l, device);
            let loss = bce(probe.head.forward(x), y, m);
            loss_sum += f64::from(to_vec(loss.clone().detach()).first().copied().unwrap_or(f32::NAN));
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &probe);
            probe = optim.step(lr, probe, grads);
        }
        let val_scores = score(&probe, val_feats_frozen.as_deref(), &val)?;
        let auc = macro_auroc(&val_scores, &val.labels, &names);
        let m = EpochMetrics { epoch, lr, train_loss: loss_sum / batches.max(1) as f64, validate_macro_auroc: auc };
        writeln!(metrics, "{}", serde_json::to_string(&m).unwrap_or_default())?;
        metrics.flush()?;
        log(&format!(
            "epoch {epoch}: loss {:.4}, validate macro AUROC {}",
            m.train_loss,
            auc.map_or("undefined".into(), |a| format!("{a:.4}"))
        ));
        history.push(m);
        let a = auc.unwrap_or(f64::NEG_INFINITY);
        if a > best_auc || epoch == 0 {
            best_auc = a;
            best_epoch = epoch;
            best = probe.clone();
            since = 0;
        } else {
            since += 1;
            if since >= cfg.patience {
                break;
            }
        }
    }
    // Test with the best-validation probe.
    let test_vit = best.encoder.clone().unwrap_or_else(|| encoder.vit.clone().no_grad());
    let test_feats = if frozen {
        features("test", &ds.version, &test, &test_vit, log)?
    } else {
        embed(&test_vit, &test.images, &all(test.len()), t, device)?
    };
    let head_only = Probe { encoder: None, head: best.head.clone() };
    let test_scores = score(&head_only, Some(&test_feats), &test)?;
    log(&format!("testing on {} images ({} bootstrap resamples)", test.len(), cfg.bootstrap));
    let test_eval = evaluate(&test_scores, &test.labels, &names, cfg.bootstrap, cfg.seed);
    let mut externals = Vec::new();
    for dir in external {
        let ext = Dataset::open(dir)?;
        let unmatched: Vec<String> =
            names.iter().filter(|n| !ext.labels.iter().any(|e| e.eq_ignore_ascii_case(n))).cloned().collect();
        let [data]: [SplitData; 1] = load_splits(&ext, &names, &cfg.uncertain, &[Split::Test])?
            .try_into()
            .map_err(|_| Error::Config("expected one split".into()))?;
        if data.is_empty() {
            return Err(Error::Dataset { path: ext.dir.clone(), message: "the test split has no images".into() });
        }
        let f = if frozen {
            features("test", &ext.version, &data, &test_vit, log)?
        } else {
            embed(&test_vit, &data.images, &all(data.len()), t, device)?
        };
        let s = score(&head_only, Some(&f), &data)?;
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
    fs_err::write(out.join(TEST_SCORES), serde_json::to_string(&saved).unwrap_or_default())?;
    best.clone().into_record().save(out.join("probe.bpk")).map_err(|e| Error::Config(format!("probe.bpk: {e}")))?;
    let result = LinearEvalResult {
        encoder: encoder.source.clone(),
        dataset: dataset.display().to_string(),
        dataset_version: ds.version.clone(),
        dataset_kind: ds.kind.clone(),
        config: serde_json::to_value(cfg).unwrap_or_default(),
        labels: names.clone(),
        train_rows: train_rows.len(),
        validate_rows: val.len(),
        test_rows: test.len(),
        epochs_run: history.len(),
        best_epoch,
        best_validate_macro_auroc: best_auc.is_finite().then_some(best_auc),
        test: test_eval,
        external: externals,
        seconds: started.elapsed().as_secs_f64(),
    };
    fs_err::write(out.join("results.json"), serde_json::to_string_pretty(&result).unwrap_or_default())?;
    fs_err::write(out.join("results.md"), result.markdown())?;
    Ok(LinearEvalOutput {
        test: Scored { scores: test_scores, labels: test.labels.clone(), features: test_feats, dim, meta: test.meta },
        result,
        history,
    })
}
