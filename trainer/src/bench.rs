//! `trainer bench`: the speed of one pretraining step, part by part, on synthetic images in
//! memory (no dataset needed), with the same shapes as `trainer/bench/torch_msn_step.py`
//! times for the reference PyTorch code.

use std::time::Instant;

use burn::tensor::Device;

use crate::backend::Precision;
use crate::data::Images;
use crate::model::fusion::{FusionShape, MsnNet};
use crate::parallel::Local;
use crate::pretrain::{LossScale, PretrainConfig, batch_tensors, optimizer, train_step_with};
use crate::rng::Rng;
use crate::views::make_batch;
use crate::{Error, Result};

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The model, views, masking, EHR choice and batch size of the step.
    pub pretrain: PretrainConfig,
    /// Side of the synthetic source images (the pipeline's shards: 256 by default).
    pub image_side: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
}

/// Median seconds of each part of a step.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PartSeconds {
    /// Making the 12 views and masks of the batch on one thread (the trainer does this on a
    /// worker thread while the model runs).
    pub views: f64,
    pub ema: f64,
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
    /// EMA + forward + backward + optimizer.
    pub step: f64,
}

/// The benchmark's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub model: String,
    pub batch_size: usize,
    pub global_size: usize,
    pub focal_size: usize,
    pub focal_views: usize,
    pub ehr_width: usize,
    pub threads: usize,
    pub steps: usize,
    pub seconds: PartSeconds,
    /// Batch size / median model step (views excluded, as the PyTorch script).
    pub images_per_second: f64,
    /// Peak resident memory of the process (Linux), MB.
    pub peak_rss_mb: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

/// Peak resident set size of this process (VmHWM), MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs `warmup + steps` training steps of `cfg.pretrain` on random images and EHR vectors,
/// calling `on_step` after each with its index, and returns the medians of the timed ones.
pub fn bench(cfg: &BenchConfig, device: &Device, on_step: &mut dyn FnMut(usize)) -> Result<BenchResult> {
    let p = &cfg.pretrain;
    let columns = p.ehr.columns();
    let (b, side) = (p.batch_size, cfg.image_side);
    if b == 0 || cfg.steps == 0 || side < p.views.global_size.min(p.views.focal_size) {
        return Err(Error::Config(
            "bench: batch size and steps must be at least 1, the images no smaller than the views".into(),
        ));
    }
    let mut rng = Rng::new(p.seed);
    // Two batches' worth of images, reused.
    let n = 2 * b;
    let images = Images::in_memory(
        side,
        (0..n * side * side).map(|_| rng.below(256) as u8).collect(),
        (0..n * columns.len()).map(|_| rng.below(2) as f32).collect(),
        columns.clone(),
    );
    let shape = FusionShape { ehr_in: columns.len(), ehr_dim: p.ehr_dim, prototypes: p.prototypes };
    let mut net = MsnNet::new(&p.vit, shape, device, &mut rng);
    if !p.train_prototypes {
        net.prototypes = net.prototypes.set_require_grad(false);
    }
    let mut optim = optimizer();
    let mut slot = Some(net);
    // f16 steps as pretraining takes them: with the loss scale (and its finiteness check).
    let mut scale = (p.precision == Precision::F16).then(LossScale::default);
    let mut parts: [Vec<f64>; 6] = Default::default();
    for s in 0..cfg.warmup + cfg.steps {
        let indices: Vec<usize> = (0..b).map(|i| (s * b + i) % n).collect();
        let t0 = Instant::now();
        let batch = make_batch(&images, &indices, &p.views, p.masking, p.mask_ratio, p.vit.patch_size, p.seed, 0, s)?;
        let views = t0.elapsed().as_secs_f64();
        let net = slot.take().ok_or_else(|| Error::Internal("no network".into()))?;
        let views_on_device = batch_tensors(&batch, p, device);
        let out = train_step_with(
            net,
            &mut optim,
            views_on_device,
            p,
            p.schedule_at(0, s, n / b),
            &Local,
            scale.map(|l| l.scale),
        )?;
        scale = scale.map(|l| l.after(out.applied));
        let t = out.times;
        // Reading the loss makes sure the step has finished.
        let _ = out.loss.loss.into_data();
        slot = Some(out.net);
        if s >= cfg.warmup {
            let step = t.ema + t.forward + t.backward + t.optimizer;
            for (v, x) in parts.iter_mut().zip([views, t.ema, t.forward, t.backward, t.optimizer, step]) {
                v.push(x);
            }
        }
        on_step(s);
    }
    let [views, ema, forward, backward, optimizer, step] = parts.map(median);
    Ok(BenchResult {
        model: format!("{}x{} hidden, {} layers, {} heads", p.vit.image_size, p.vit.hidden, p.vit.layers, p.vit.heads),
        batch_size: b,
        global_size: p.views.global_size,
        focal_size: p.views.focal_size,
        focal_views: p.views.focal_views,
        ehr_width: columns.len(),
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        steps: cfg.steps,
        seconds: PartSeconds { views, ema, forward, backward, optimizer, step },
        images_per_second: b as f64 / step,
        peak_rss_mb: peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VitConfig;
    use crate::views::ViewConfig;

    #[test]
    fn times_every_part_of_a_tiny_step() {
        let vit = VitConfig::new(16, 1, 2, 32).with_image_size(32).with_patch_size(8);
        let mut p = PretrainConfig::paper(vit, "sex,view".parse().unwrap()).with_batch_size(4).with_prototypes(8);
        p.views = ViewConfig::new().with_global_size(32).with_focal_size(16).with_focal_views(2);
        let cfg = BenchConfig { pretrain: p, image_side: 48, warmup: 1, steps: 3 };
        let mut seen = Vec::new();
        let r = bench(&cfg, &Device::flex().autodiff(), &mut |s| seen.push(s)).unwrap();
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(r.ehr_width, 2 + cxr_dataset::features::VIEW_CATEGORIES.len());
        let s = r.seconds;
        for x in [s.views, s.ema, s.forward, s.backward, s.optimizer] {
            assert!(x > 0.0 && x < s.step.max(s.views) + 1e-9, "{s:?}");
        }
        assert!((r.images_per_second - 4.0 / s.step).abs() < 1e-9);
        assert!(r.peak_rss_mb.is_some_and(|m| m > 1.0));
    }
}
