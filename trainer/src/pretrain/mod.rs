//! MSN pretraining (METHOD.md sections 3-8): views and masks made on CPU threads ahead of the
//! model, the EHR-fused network, the MSN loss, AdamW with the reference's per-epoch or the
//! original MSN's per-step schedules, and the EMA target update before every step. Metrics go
//! to `metrics.jsonl`; the resolved config to `config.json` (with the dataset version); the
//! epoch with the lowest mean loss is kept as `best-model.bpk` (`best.json`).
//!
//! `config` (settings and presets), `step` (one training step), `checkpoint` (the state
//! files), and here the run loop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;

use crate::data::{Dataset, Images};
use crate::model::fusion::{FusionShape, MsnNet};
use crate::parallel::Devices;
use crate::rng::Rng;
use crate::views::{Batch, make_batch};
use crate::{Error, Result};

mod checkpoint;
mod config;
mod replicas;
mod scale;
mod step;

pub use checkpoint::*;
pub use config::*;
pub use replicas::Replicas;
pub use scale::LossScale;
pub use step::*;

use checkpoint::RunFiles;
use step::scalar;

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

/// Pretrains on `dataset` into the run folder `run`, on `devices` (an autodiff device, or
/// [`Devices`] for data parallelism over several); with `resume`, continues from the run's
/// last checkpoint (same config and dataset) and ends with the same weights as an
/// uninterrupted run on as many devices.
pub fn pretrain(
    cfg: &PretrainConfig,
    dataset: &Path,
    run: &Path,
    devices: impl Into<Devices>,
    resume: bool,
) -> Result<PretrainSummary> {
    pretrain_with(cfg, dataset, run, &devices.into(), resume, &mut |_, _| {})
}

/// [`pretrain`], calling `on_step` with each step's metrics and the step the run stops at
/// (for progress display).
pub fn pretrain_with(
    cfg: &PretrainConfig,
    dataset: &Path,
    run: &Path,
    devices: &Devices,
    resume: bool,
    on_step: &mut dyn FnMut(&StepMetrics, usize),
) -> Result<PretrainSummary> {
    // Settings first: a bad one is reported before any data is read.
    let half = cfg.precision != crate::backend::Precision::F32;
    if let Some(d) = devices.list.iter().find(|d| half && !crate::backend::computes_in(d, cfg.precision)) {
        return Err(Error::Device(format!(
            "{d:?} cannot compute in {:?} (the run's precision); pretrain in f32 there",
            cfg.precision.dtype()
        )));
    }
    let ds = Dataset::open(dataset)?;
    let columns = ds.ehr_columns(&cfg.ehr)?;
    let images = ds.load(&cfg.pretrain_split.splits(), &columns, cfg.images)?;
    // The loaded features are exactly the EHR columns; a non-finite one is located and named.
    if images.features.iter().any(|v| !v.is_finite()) {
        ds.require_finite(&cfg.pretrain_split.splits(), &columns)?;
    }
    if images.len() < cfg.batch_size {
        return Err(Error::Config(format!(
            "{} pretraining images, fewer than one batch of {}",
            images.len(),
            cfg.batch_size
        )));
    }
    let files = RunFiles::open(run, &ds.version, resume)?;
    files.write_config(cfg, &columns)?;
    let mut replicas = start_network(cfg, columns.len(), devices, &files)?;
    let per_epoch = batches_per_epoch(images.len(), cfg.batch_size, cfg.drop_last, devices.len());
    // The schedules span every epoch; --max-steps only stops early.
    let total = per_epoch * cfg.epochs;
    let stop = cfg.max_steps.unwrap_or(total).min(total);
    let mut state = RunState::start(&files)?;
    // A fresh run asked for no steps still leaves its initial network as a checkpoint.
    if files.checkpoint.is_none() && stop == 0 {
        files.save(replicas.net(), replicas.optimizer_record(), 0, (0, 0), state.first, replicas.loss_scale())?;
    }
    let started = Instant::now();
    let steps_before = state.step;
    let start = files.checkpoint.as_ref().map_or((0, 0), |c| (c.epoch, c.batch));
    for epoch in start.0..cfg.epochs {
        let epoch_run = EpochRun { cfg, images: &images, epoch, skip: if epoch == start.0 { start.1 } else { 0 } };
        let finished = epoch_run.train(per_epoch, stop, &mut replicas, &mut state, &files, on_step)?;
        if !finished || state.step >= stop {
            break;
        }
    }
    state.metrics.flush()?;
    Ok(PretrainSummary {
        run: run.to_path_buf(),
        steps: state.step - steps_before,
        images: state.images_seen,
        first_loss: state.first,
        last_loss: state.last,
        seconds: started.elapsed().as_secs_f64(),
        net: replicas.into_net(),
    })
}

/// The network of a run on `devices`: freshly initialised from the seed, or the checkpoint's
/// weights and optimizer state when resuming.
fn start_network(cfg: &PretrainConfig, ehr_in: usize, devices: &Devices, files: &RunFiles) -> Result<Replicas> {
    let mut rng = Rng::new(cfg.seed);
    let shape = FusionShape { ehr_in, ehr_dim: cfg.ehr_dim, prototypes: cfg.prototypes };
    let mut net = MsnNet::new(&cfg.vit, shape, devices.main(), &mut rng);
    if !cfg.train_prototypes {
        net.prototypes = net.prototypes.set_require_grad(false);
    }
    // f16 trains with dynamic loss scaling (`scale.rs`); a resumed run goes on from its state.
    let f16 = cfg.precision == crate::backend::Precision::F16;
    let Some(c) = &files.checkpoint else {
        return Ok(Replicas::new(net, devices).with_loss_scale(f16.then(LossScale::default)));
    };
    let model = files.run.join(&c.model);
    let record = model_record(&model, fs_err::read(&model)?)?;
    let net = net.try_load_record(record).map_err(|e| Error::record(&model, e))?;
    let scale = f16.then(|| c.loss_scale.unwrap_or_default());
    let mut replicas = Replicas::new(net, devices).with_loss_scale(scale);
    let optimizer = files.run.join(&c.optimizer);
    // Read once; each device's replica gets its own record of the same bytes.
    let bytes = fs_err::read(&optimizer)?;
    replicas.load_optimizer(|| optimizer_record(&optimizer, bytes.clone()))?;
    Ok(replicas)
}

/// Where a run stands between steps: the step count, losses, the metrics file and the
/// running mean of the current epoch's loss (for the lowest-loss checkpoint).
struct RunState {
    step: usize,
    first: f32,
    last: f32,
    images_seen: usize,
    metrics: std::io::BufWriter<fs_err::File>,
    epoch_sum: f64,
    epoch_steps: usize,
    best: Option<BestCheckpoint>,
    /// The step of the newest checkpoint on disk.
    saved: Option<usize>,
}

impl RunState {
    /// A fresh state, or the checkpoint's: the metrics lines of the steps it holds are kept
    /// (later lines are redone) and the current epoch's loss sum is rebuilt from them.
    fn start(files: &RunFiles) -> Result<Self> {
        let path = files.run.join("metrics.jsonl");
        let (step, first, epoch) =
            files.checkpoint.as_ref().map_or((0, f32::NAN, 0), |c| (c.step, c.first_loss, c.epoch));
        // A missing file has no lines to keep; any other read error stops the resume (the
        // file is rewritten below, so reading it as empty would lose the metrics).
        let previous = match (&files.checkpoint, fs_err::read_to_string(&path)) {
            (None, _) => String::new(),
            (Some(_), Ok(text)) => text,
            (Some(_), Err(e)) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            (Some(_), Err(e)) => return Err(e.into()),
        };
        let parsed = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
        let kept: Vec<&str> = previous
            .lines()
            .filter(|l| parsed(l).and_then(|v| v["step"].as_u64()).is_some_and(|s| (s as usize) < step))
            .collect();
        let (mut epoch_sum, mut epoch_steps) = (0.0f64, 0usize);
        for v in kept.iter().filter_map(|l| parsed(l)).filter(|v| v["epoch"].as_u64() == Some(epoch as u64)) {
            epoch_sum += v["loss"].as_f64().unwrap_or(f64::NAN);
            epoch_steps += 1;
        }
        let mut metrics = std::io::BufWriter::new(fs_err::File::create(&path)?);
        for l in kept {
            writeln!(metrics, "{l}")?;
        }
        let best = if files.checkpoint.is_some() { read_best(&files.run)? } else { None };
        let saved = files.checkpoint.as_ref().map(|c| c.step);
        Ok(Self { step, first, last: f32::NAN, images_seen: 0, metrics, epoch_sum, epoch_steps, best, saved })
    }

    /// Records a step's metrics.
    fn record(&mut self, m: &StepMetrics, images: usize) -> Result<()> {
        if self.step == 0 {
            self.first = m.loss;
        }
        self.last = m.loss;
        writeln!(self.metrics, "{}", serde_json::to_string(m)?)?;
        self.step += 1;
        self.images_seen += images;
        self.epoch_sum += f64::from(m.loss);
        self.epoch_steps += 1;
        Ok(())
    }

    /// At an epoch's end: the epoch's mean loss, when it is the lowest so far.
    fn end_epoch(&mut self, epoch: usize) -> Option<BestCheckpoint> {
        let mean_loss = (self.epoch_sum / self.epoch_steps.max(1) as f64) as f32;
        (self.epoch_sum, self.epoch_steps) = (0.0, 0);
        let lower = self.best.as_ref().is_none_or(|b| mean_loss < b.mean_loss);
        lower.then(|| BestCheckpoint { epoch, step: self.step, mean_loss, model: BEST_MODEL.into() })
    }
}

/// One epoch of a run, from batch `skip` on.
struct EpochRun<'a> {
    cfg: &'a PretrainConfig,
    images: &'a Images,
    epoch: usize,
    skip: usize,
}

impl EpochRun<'_> {
    /// Trains the epoch's batches (views made on a worker thread while the model runs),
    /// checkpointing as configured; false when the run stopped (`stop` steps) within it.
    fn train(
        &self,
        per_epoch: usize,
        stop: usize,
        replicas: &mut Replicas,
        state: &mut RunState,
        files: &RunFiles,
        on_step: &mut dyn FnMut(&StepMetrics, usize),
    ) -> Result<bool> {
        let (cfg, epoch) = (self.cfg, self.epoch);
        let order = Rng::derive(cfg.seed, 0xE90C, epoch as u64).permutation(self.images.len());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
        std::thread::scope(|s| -> Result<bool> {
            let order = &order;
            s.spawn(move || {
                for (k, chunk) in order.chunks(cfg.batch_size).take(per_epoch).enumerate().skip(self.skip) {
                    let v = &cfg.views;
                    let b = make_batch(
                        self.images,
                        chunk,
                        v,
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
                if state.step >= stop {
                    return Ok(false);
                }
                let t0 = Instant::now();
                let sched = cfg.schedule_at(epoch, state.step, per_epoch);
                let (loss, _) = replicas.step(&batch, cfg, sched)?;
                let m = StepMetrics {
                    epoch,
                    step: state.step,
                    loss: scalar(loss.loss, "the loss")?,
                    cross_entropy: scalar(loss.cross_entropy, "the cross-entropy")?,
                    me_max: scalar(loss.me_max, "the me-max term")?,
                    lr: sched.lr,
                    weight_decay: sched.weight_decay,
                    momentum: sched.momentum,
                    images_per_second: batch.size as f64 / t0.elapsed().as_secs_f64(),
                    loss_scale: replicas.loss_scale().map(|l| l.scale),
                };
                state.record(&m, batch.size)?;
                on_step(&m, stop);
                if !m.loss.is_finite() {
                    // The update of this step is not saved: the last checkpoint stays the
                    // one before it.
                    state.metrics.flush()?;
                    let kept = state.saved;
                    return Err(Error::NonFiniteLoss {
                        run: files.run.clone(),
                        step: m.step,
                        epoch,
                        loss: m.loss,
                        kept,
                    });
                }
                let k = k + self.skip;
                let next = if k + 1 == per_epoch { (epoch + 1, 0) } else { (epoch, k + 1) };
                if next.1 == 0
                    && let Some(b) = state.end_epoch(epoch)
                {
                    files.save_best(replicas.net(), &b)?;
                    state.best = Some(b);
                }
                if state.step.is_multiple_of(cfg.checkpoint_every.max(1)) || next.1 == 0 || state.step == stop {
                    state.metrics.flush()?;
                    let scale = replicas.loss_scale();
                    files.save(replicas.net(), replicas.optimizer_record(), state.step, next, state.first, scale)?;
                    state.saved = Some(state.step);
                }
            }
            Ok(true)
        })
    }
}

/// Steps in an epoch of `n` images: a partial last batch is trained unless `drop_last`, or
/// when it has fewer images than there are devices (it cannot be split over them).
pub fn batches_per_epoch(n: usize, batch_size: usize, drop_last: bool, devices: usize) -> usize {
    let rest = n % batch_size;
    if drop_last || rest < devices { n / batch_size } else { n.div_ceil(batch_size) }
}
