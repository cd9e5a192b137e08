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
use cxr_dataset::features::EhrSelection;

use crate::data::Dataset;
use crate::model::fusion::{FusionShape, MsnNet};
use crate::parallel::{Devices, Replicas};
use crate::rng::Rng;
use crate::views::{Batch, make_batch};
use crate::{Error, Result};

mod checkpoint;
mod config;
mod step;

pub use checkpoint::*;
pub use config::*;
pub use step::*;

use checkpoint::write_atomic;
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
    let device = devices.main();
    // Settings first: a bad one is reported before any data is read.
    let selection: EhrSelection = cfg.ehr.parse().map_err(|e| Error::Config(format!("--ehr {}: {e}", cfg.ehr)))?;
    let ds = Dataset::open(dataset)?;
    let columns: Vec<String> = selection.columns().iter().map(|c| c.to_string()).collect();
    let images = ds.load(&cfg.pretrain_split.splits(), &columns, cfg.images)?;
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
        return Err(Error::input(
            run,
            format!(
                "the run was trained on dataset {}, not {}; resume with the same dataset",
                c.dataset_version, ds.version
            ),
        ));
    }
    let mut saved = serde_json::to_value(cfg)?;
    saved["dataset_version"] = ds.version.clone().into();
    saved["ehr_columns"] = columns.clone().into();
    let text = serde_json::to_string_pretty(&saved)?;
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
    let record_err = |what: &str, e: burn::store::RecordError| Error::record(&run.join(what), e);
    if let Some(c) = &checkpoint {
        let record = burn::store::ModuleRecord::load(run.join(&c.model)).map_err(|e| record_err(&c.model, e))?;
        net = net.try_load_record(record).map_err(|e| record_err(&c.model, e))?;
    }
    let mut replicas = Replicas::new(net, devices);
    if let Some(c) = &checkpoint {
        replicas.load_optimizer(|| {
            burn::optim::OptimizerRecord::load(run.join(&c.optimizer)).map_err(|e| record_err(&c.optimizer, e))
        })?;
    }
    let per_epoch = batches_per_epoch(images.len(), cfg.batch_size, cfg.drop_last, devices.len());
    // The schedules span every epoch; --max-steps only stops early.
    let total = per_epoch * cfg.epochs;
    let stop = cfg.max_steps.unwrap_or(total).min(total);
    let metrics_path = run.join("metrics.jsonl");
    let (start_epoch, start_batch, mut step, mut first) = match &checkpoint {
        Some(c) => (c.epoch, c.batch, c.step, c.first_loss),
        None => (0, 0, 0, f32::NAN),
    };
    // Keep the metrics of the steps the checkpoint holds; later lines are redone.
    // A missing file has no lines to keep; any other read error stops the resume (the file
    // is rewritten below, so reading it as empty would lose the metrics).
    let kept: Vec<String> = if checkpoint.is_some() {
        let previous = match fs_err::read_to_string(&metrics_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        previous
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
        let text = serde_json::to_string_pretty(&c)?;
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
        save(replicas.net(), replicas.optimizer_record(), 0, 0, 0, first)?;
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
                let (loss, _) = replicas.step(&batch, cfg, sched)?;
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
                writeln!(metrics, "{}", serde_json::to_string(&m)?)?;
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
                        let b = BestCheckpoint { epoch, step, mean_loss, model: BEST_MODEL.into() };
                        let tmp = run.join("best-model.bpk.tmp");
                        replicas.net().clone().into_record().save(&tmp).map_err(|e| record_err(BEST_MODEL, e))?;
                        fs_err::rename(&tmp, run.join(BEST_MODEL))?;
                        let text = serde_json::to_string_pretty(&b)?;
                        write_atomic(&run.join(BEST), text.as_bytes())?;
                        best = Some(b);
                    }
                }
                if step % cfg.checkpoint_every.max(1) == 0 || next_batch == 0 || step == stop {
                    metrics.flush()?;
                    save(replicas.net(), replicas.optimizer_record(), step, next_epoch, next_batch, first)?;
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
        net: replicas.into_net(),
    })
}

/// Steps in an epoch of `n` images: a partial last batch is trained unless `drop_last`, or
/// when it has fewer images than there are devices (it cannot be split over them).
pub fn batches_per_epoch(n: usize, batch_size: usize, drop_last: bool, devices: usize) -> usize {
    let rest = n % batch_size;
    if drop_last || rest < devices { n / batch_size } else { n.div_ceil(batch_size) }
}
