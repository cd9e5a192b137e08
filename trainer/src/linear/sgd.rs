//! The SGD probe: a Linear(dim, labels) head (and, fine-tuning, the encoder) trained with Adam
//! and a per-epoch cosine schedule on masked binary cross-entropy, early stopping on the
//! validation macro AUROC, the best-validation probe kept. It trains on feature rows (cached
//! frozen features, standardised or not) or on augmented images through the encoder.

use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData, activation::sigmoid};
use rayon::prelude::*;

use super::results::EpochMetrics;
use super::source::{eval_batch, to_vec};
use super::{LinearEvalConfig, SplitData};
use crate::metrics::macro_auroc;
use crate::model::Vit;
use crate::model::init::Init;
use crate::rng::Rng;
use crate::transform::ProbeTransform;
use crate::{Error, Result};

/// The probe: an encoder (absent when training on features) and the linear head.
#[derive(Module, Debug)]
pub struct Probe {
    pub encoder: Option<Vit>,
    pub head: Linear,
}

/// What the probe reads.
pub(super) enum Input<'a> {
    /// `[rows, dim]` feature rows of the training and validation splits.
    Features { train: &'a [f32], validate: &'a [f32] },
    /// The splits' images through the probe's encoder (augmented for training).
    Images { train: &'a SplitData, validate: &'a SplitData },
}

impl Input<'_> {
    /// The head's input for the training rows `chunk` in `epoch`: feature rows, or augmented
    /// images through `encoder` (detached unless fine-tuning).
    fn training(
        &self,
        encoder: Option<&Vit>,
        chunk: &[usize],
        dim: usize,
        cfg: &LinearEvalConfig,
        epoch: usize,
        device: &Device,
    ) -> Result<Tensor<2>> {
        match (self, encoder) {
            (Self::Features { train, .. }, _) => Ok(rows_of(train, chunk, dim, device)),
            (Self::Images { train, .. }, Some(vit)) => {
                let f = vit.forward(train_batch(&train.images, chunk, &cfg.transform, cfg.seed, epoch, device)?, None);
                Ok(if cfg.finetune { f } else { f.detach() })
            }
            (Self::Images { .. }, None) => Err(Error::Internal("an image probe without an encoder".into())),
        }
    }

    /// The probe's scores on the validation split (`[rows, labels]`).
    fn validation_scores(&self, p: &Probe, dim: usize, t: &ProbeTransform, device: &Device) -> Result<Vec<f32>> {
        match (self, &p.encoder) {
            (Self::Features { validate, .. }, _) => score_features(&p.head, validate, dim, device),
            (Self::Images { validate, .. }, Some(vit)) => {
                let rows: Vec<usize> = (0..validate.len()).collect();
                let mut s = Vec::new();
                for chunk in rows.chunks(256) {
                    let x = vit.forward(eval_batch(&validate.images, chunk, t, device)?, None).detach();
                    s.extend(to_vec(sigmoid(p.head.forward(x)).detach())?);
                }
                Ok(s)
            }
            (Self::Images { .. }, None) => Err(Error::Internal("an image probe without an encoder".into())),
        }
    }
}

/// What training returns: the best-validation probe and the history.
pub(super) struct Trained {
    pub best: Probe,
    pub best_epoch: usize,
    pub best_auc: f64,
    pub history: Vec<EpochMetrics>,
}

/// Sigmoid outputs `[rows, labels]` of the head on feature rows `x` (`[rows, dim]`).
pub(super) fn score_features(head: &Linear, x: &[f32], dim: usize, device: &Device) -> Result<Vec<f32>> {
    let mut s = Vec::with_capacity(x.len() / dim.max(1) * head.weight.dims()[1]);
    for chunk in x.chunks(256 * dim) {
        let t = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [chunk.len() / dim, dim]), device);
        s.extend(to_vec(sigmoid(head.forward(t)).detach())?);
    }
    Ok(s)
}

fn rows_of(x: &[f32], rows: &[usize], dim: usize, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = rows.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect();
    Tensor::<2>::from_data(TensorData::new(v, [rows.len(), dim]), device)
}

fn train_batch(
    images: &crate::data::Images,
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

/// Trains a fresh head of `dim` inputs (with `encoder` when it reads images) on `train_rows`
/// of `labels` (the training split's, `[n, names.len()]`), validating on `val_labels`,
/// writing one `metrics.jsonl` line per epoch into `out`.
#[allow(clippy::too_many_arguments)]
pub(super) fn train(
    cfg: &LinearEvalConfig,
    encoder: Option<Vit>,
    input: &Input,
    dim: usize,
    train_rows: &[usize],
    labels: &[f32],
    val_labels: &[f32],
    names: &[String],
    out: &Path,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<Trained> {
    let l = names.len();
    let t = &cfg.transform;
    let mut init_rng = Rng::derive(cfg.seed, 0x4EAD, 0);
    let head = Init::new(device, &mut init_rng).linear_default(dim, l, true);
    let mut probe = Probe { encoder, head };
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut history = Vec::new();
    let (mut best, mut best_auc, mut best_epoch, mut since) = (probe.clone(), f64::NEG_INFINITY, 0, 0);
    let mut metrics = std::io::BufWriter::new(fs_err::File::create(out.join("metrics.jsonl"))?);
    for epoch in 0..cfg.epochs {
        let lr = 0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * epoch as f64 / cfg.epochs as f64).cos());
        let perm = Rng::derive(cfg.seed, 0x0DE2, epoch as u64).permutation(train_rows.len());
        let order: Vec<usize> = perm.into_iter().map(|k| train_rows[k]).collect();
        let (mut loss_sum, mut batches) = (0.0f64, 0usize);
        for chunk in order.chunks(cfg.batch_size) {
            let x = input.training(probe.encoder.as_ref(), chunk, dim, cfg, epoch, device)?;
            let (y, m) = label_tensors(labels, chunk, l, device);
            let loss = bce(probe.head.forward(x), y, m);
            loss_sum += f64::from(to_vec(loss.clone().detach())?.first().copied().unwrap_or(f32::NAN));
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &probe);
            probe = optim.step(lr, probe, grads);
        }
        let auc = macro_auroc(&input.validation_scores(&probe, dim, t, device)?, val_labels, names);
        let m = EpochMetrics { epoch, lr, train_loss: loss_sum / batches.max(1) as f64, validate_macro_auroc: auc };
        writeln!(metrics, "{}", serde_json::to_string(&m)?)?;
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
    Ok(Trained { best, best_epoch, best_auc, history })
}
