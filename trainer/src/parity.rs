//! Learning parity with the reference PyTorch MSN (`trainer compare-reference`): both
//! implementations pretrain on the same dataset version with the same configuration and
//! seeds; the target encoder of each is saved at fractions of the budget (0, 1/8, 1/4, 1/2,
//! all by default); every checkpoint is probed with the same [`linear_eval`]; and the
//! comparison gives, per checkpoint, both probes' test macro AUROC, their paired difference
//! (burn minus the reference, on the same bootstrap resamples, averaged over the seeds), and
//! the loss curves of both with their seed-to-seed spread.
//!
//! The reference side is any [`Reference`]: in the command, `trainer/reference/train_msn.py`
//! (torchvision and lightly) run by Python. Every stage is skipped when its output exists, so
//! a stopped comparison resumes; what exists is keyed (`run-keys.json`): a seed's two
//! pretrainings by its resolved config, the checkpoint steps, the dataset version and the
//! trainer's code, the probes by the evaluation settings too. What was made otherwise is
//! removed and redone, the log saying why. (The reference script's own code is not in the
//! key: after changing it, delete `reference-seed*/`.)
//!
//! Writes into the output folder: `burn-seed<S>/` (the run, `step-<N>/` snapshots),
//! `reference-seed<S>/` (its `metrics.jsonl`, `step-<N>.safetensors`, imported `step-<N>/`),
//! `probes/<impl>-seed<S>-step<N>/` (each linear evaluation), and `comparison.md`,
//! `comparison.json`, `probe-auroc.svg`, `loss-curves.svg`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, ImageSource};
use crate::experiment::{RunKey, save_key, saved_keys, why_stale};
use crate::import::import_torch;
use crate::linear::{LinearEvalConfig, LinearEvalResult, TestScores, linear_eval, load_encoder};
use crate::metrics::{BootstrapUnit, Clusters, Equivalence, Estimate, paired_mean_macro_auroc_equivalence};
use crate::pretrain::{CHECKPOINT, CheckpointChoice, PretrainConfig, StepMetrics, pretrain_with, read_checkpoint};
use crate::report;
use crate::{Error, Result};

/// Trains the reference implementation: given the burn run's `config.json`, an output folder
/// and the steps to save at, it writes `metrics.jsonl` (one line per step with `epoch`,
/// `loss`, `cross_entropy`, `me_max`) and `step-<N:08>.safetensors` (the target encoder under
/// `backbone.`, torchvision's names) for each step.
pub type Reference<'a> = dyn FnMut(&Path, &Path, &[usize]) -> Result<()> + 'a;

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub pretrain: PretrainConfig,
    pub eval: LinearEvalConfig,
    pub seeds: Vec<u64>,
    /// Checkpoints as fractions of the pretraining steps, `(numerator, denominator)`.
    pub fractions: Vec<(usize, usize)>,
    /// The equivalence margin in macro AUROC: burn and the reference are equivalent at a
    /// checkpoint when the 90% interval of their difference lies within +-margin.
    pub margin: f64,
}

impl CompareConfig {
    /// 0, 1/8, 1/4, 1/2 and all of the budget.
    pub const FRACTIONS: [(usize, usize); 5] = [(0, 1), (1, 8), (1, 4), (1, 2), (1, 1)];
    /// The default equivalence margin, 0.01 macro AUROC.
    pub const MARGIN: f64 = 0.01;
}

/// One implementation's probe at one checkpoint of one seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub implementation: String,
    pub seed: u64,
    pub step: usize,
    pub macro_auroc: Option<Estimate>,
}

/// One checkpoint: both implementations' probes and their paired difference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub step: usize,
    pub fraction: String,
    /// Mean over the seeds of each probe's test macro AUROC.
    pub burn: Option<f64>,
    pub reference: Option<f64>,
    /// Burn minus the reference, averaged over the seeds, with its paired 95% and 90%
    /// intervals and the equivalence test's verdict at the configured margin.
    pub equivalence: Option<Equivalence>,
}

/// One implementation's loss curve: per epoch, the mean over steps of each part, and its
/// spread over the seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossCurve {
    pub implementation: String,
    /// `[seed][epoch]` mean loss, cross-entropy and me-max.
    pub per_seed: Vec<Vec<[f64; 3]>>,
}

/// What `compare-reference` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    pub dataset_version: String,
    pub seeds: Vec<u64>,
    pub steps: usize,
    /// What the paired bootstraps resample: test patients or test images, and how many.
    pub bootstrap_unit: BootstrapUnit,
    pub bootstrap_clusters: usize,
    /// The equivalence margin of the verdicts.
    pub margin: f64,
    pub rows: Vec<CheckpointRow>,
    pub probes: Vec<Probe>,
    /// Each implementation's last checkpoint minus its first (the untrained encoder), paired,
    /// averaged over the seeds: whether pretraining learned.
    pub burn_learns: Option<Estimate>,
    pub reference_learns: Option<Estimate>,
    pub losses: Vec<LossCurve>,
    /// Per epoch: |mean burn loss - mean reference loss| and the larger of the two seed
    /// spreads (max - min over seeds), and how many epochs are within the spread.
    pub loss_gap: Vec<(f64, f64)>,
    pub loss_epochs_within_spread: usize,
}

const BURN: &str = "burn";
const REFERENCE: &str = "reference";

/// The pretraining steps of `cfg` on `dataset` (its pretraining split, `batch_size`,
/// `drop_last`, `epochs`).
pub fn pretraining_steps(cfg: &PretrainConfig, dataset: &Path) -> Result<usize> {
    let ds = Dataset::open(dataset)?;
    let n = ds.load(&cfg.pretrain_split.splits(), &[], ImageSource::Stream)?.len();
    Ok(crate::pretrain::batches_per_epoch(n, cfg.batch_size.max(1), cfg.drop_last, 1) * cfg.epochs)
}

/// Copies the run folder's current checkpoint (config, state and model) into `to`.
fn snapshot(run: &Path, to: &Path) -> Result<()> {
    let c = read_checkpoint(run)?;
    fs_err::create_dir_all(to)?;
    for f in ["config.json", CHECKPOINT, c.model.as_str()] {
        fs_err::copy(run.join(f), to.join(f))?;
    }
    Ok(())
}

fn step_dir(steps: usize) -> String {
    format!("step-{steps:08}")
}

/// Burn's pretraining of one seed, stopped at each checkpoint step and snapshotted there
/// (stopped and resumed runs equal uninterrupted ones).
fn train_burn(
    cfg: &PretrainConfig,
    dataset: &Path,
    dir: &Path,
    checkpoints: &[usize],
    device: &Device,
    on_step: &mut dyn FnMut(&StepMetrics, usize),
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    for &c in checkpoints {
        let snap = dir.join(step_dir(c));
        if snap.join(CHECKPOINT).is_file() {
            continue;
        }
        let resume = dir.join(CHECKPOINT).is_file();
        log(&format!("burn: pretraining {} to step {c}", dir.display()));
        pretrain_with(&cfg.clone().with_max_steps(Some(c)), dataset, dir, &device.into(), resume, on_step)?;
        let at = read_checkpoint(dir)?.step;
        if at != c {
            return Err(Error::input(
                dir,
                format!("the run is at step {at}, not {c}; delete the folder to start the comparison again"),
            ));
        }
        snapshot(dir, &snap)?;
    }
    Ok(())
}

/// The probes are keyed by the evaluation settings (and, through [`RunKey`], the dataset
/// version and the trainer's code): made otherwise, they are all removed, saying why.
fn forget_stale_probes(cfg: &CompareConfig, version: &str, out: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    let key = RunKey::new("compare-probes", version, serde_json::json!({ "eval": cfg.eval }));
    let saved = saved_keys(out)?;
    let probes = out.join("probes");
    if saved.get("probes") != Some(&key.about) && probes.is_dir() {
        log(&format!("{}: stale ({}), probing again", probes.display(), why_stale(saved.get("probes"), &key.about)));
        fs_err::remove_dir_all(&probes)?;
    }
    save_key(out, "probes", &key)
}

/// One seed's two pretrainings (and their probes) are keyed by the seed's resolved config and
/// the checkpoint steps: made otherwise, they are removed, saying why.
fn forget_stale_seed(
    cfg: &PretrainConfig,
    checkpoints: &[usize],
    version: &str,
    out: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let seed = cfg.seed;
    let stage = format!("seed-{seed}");
    let key =
        RunKey::new("compare-pretraining", version, serde_json::json!({ "pretrain": cfg, "checkpoints": checkpoints }));
    let saved = saved_keys(out)?;
    if saved.get(&stage) != Some(&key.about) {
        let mut stale: Vec<PathBuf> = [format!("burn-seed{seed}"), format!("reference-seed{seed}")]
            .iter()
            .map(|d| out.join(d))
            .filter(|d| d.is_dir())
            .collect();
        if let Ok(entries) = fs_err::read_dir(out.join("probes")) {
            for e in entries {
                let e = e?;
                if e.file_name().to_string_lossy().contains(&format!("-seed{seed}-")) {
                    stale.push(e.path());
                }
            }
        }
        if !stale.is_empty() {
            log(&format!(
                "seed {seed}: stale ({}), training and probing again",
                why_stale(saved.get(&stage), &key.about)
            ));
        }
        for d in stale {
            fs_err::remove_dir_all(&d)?;
        }
    }
    save_key(out, &stage, &key)
}

/// Per epoch, the means of loss, cross-entropy and me-max of a `metrics.jsonl`.
fn epoch_means(path: &Path) -> Result<Vec<[f64; 3]>> {
    let text = fs_err::read_to_string(path)?;
    let mut sums: Vec<([f64; 3], usize)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |what: &str| Error::input(path, format!("line {}: {what}", n + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let epoch = v["epoch"].as_u64().ok_or_else(|| bad("no \"epoch\""))? as usize;
        if sums.len() <= epoch {
            sums.resize(epoch + 1, ([0.0; 3], 0));
        }
        for (k, key) in ["loss", "cross_entropy", "me_max"].iter().enumerate() {
            // A non-finite loss is written as null (JSON has no NaN): it stays NaN here.
            sums[epoch].0[k] += match &v[key] {
                serde_json::Value::Null if v.get(key).is_some() => f64::NAN,
                x => x.as_f64().ok_or_else(|| bad(&format!("no number {key:?}")))?,
            };
        }
        sums[epoch].1 += 1;
    }
    Ok(sums.into_iter().map(|(s, n)| s.map(|x| x / n.max(1) as f64)).collect())
}

/// Runs the comparison into `out` (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn compare_reference(
    cfg: &CompareConfig,
    dataset: &Path,
    out: &Path,
    reference: &mut Reference,
    device: &Device,
    on_step: &mut dyn FnMut(&StepMetrics, usize),
    log: &mut dyn FnMut(&str),
) -> Result<Comparison> {
    if cfg.seeds.is_empty() {
        return Err(Error::Config("--seeds: give at least one seed".into()));
    }
    let steps = pretraining_steps(&cfg.pretrain, dataset)?;
    let mut checkpoints: Vec<usize> = cfg.fractions.iter().map(|&(a, b)| steps * a / b.max(1)).collect();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    fs_err::create_dir_all(out)?;
    let version = Dataset::open(dataset)?.version;
    forget_stale_probes(cfg, &version, out, log)?;
    let mut probed = Probed::default();
    for &seed in &cfg.seeds {
        let pre = cfg.pretrain.clone().with_seed(seed);
        let dirs =
            [(BURN, out.join(format!("burn-seed{seed}"))), (REFERENCE, out.join(format!("reference-seed{seed}")))];
        forget_stale_seed(&pre, &checkpoints, &version, out, log)?;
        train_burn(&pre, dataset, &dirs[0].1, &checkpoints, device, on_step, log)?;
        train_reference(&pre, &dirs[0].1.join("config.json"), &dirs[1].1, &checkpoints, reference, device, log)?;
        for (implementation, root) in &dirs {
            for &c in &checkpoints {
                let dir = out.join("probes").join(format!("{implementation}-seed{seed}-{}", step_dir(c)));
                if TestScores::read(&dir).is_err() {
                    log(&format!("probing {implementation}, seed {seed}, step {c}"));
                    let encoder = load_encoder(&root.join(step_dir(c)), CheckpointChoice::Last, device)?;
                    linear_eval(&cfg.eval, encoder, dataset, &[], &dir, &dir.join("features"), device, log)?;
                }
                probed.read(implementation, seed, c, &dir, cfg.eval.bootstrap_unit)?;
            }
        }
    }
    let rows = checkpoints
        .iter()
        .map(|&c| {
            let equivalence = probed.pooled(cfg, |s| Some((probed.find(REFERENCE, s, c)?, probed.find(BURN, s, c)?)));
            CheckpointRow {
                step: c,
                fraction: fraction_label(&cfg.fractions, steps, c),
                burn: probed.mean_auroc(BURN, c),
                reference: probed.mean_auroc(REFERENCE, c),
                equivalence,
            }
        })
        .collect();
    let (c0, c1) = (checkpoints[0], checkpoints[checkpoints.len() - 1]);
    let learns =
        |i: &str| probed.pooled(cfg, |s| Some((probed.find(i, s, c0)?, probed.find(i, s, c1)?))).map(|e| e.delta);
    let mut losses = Vec::new();
    for (implementation, prefix) in [(BURN, "burn"), (REFERENCE, "reference")] {
        let per_seed = cfg
            .seeds
            .iter()
            .map(|s| epoch_means(&out.join(format!("{prefix}-seed{s}")).join("metrics.jsonl")))
            .collect::<Result<Vec<_>>>()?;
        losses.push(LossCurve { implementation: implementation.into(), per_seed });
    }
    let loss_gap = loss_gap(&losses[0], &losses[1]);
    let comparison = Comparison {
        dataset_version: version,
        seeds: cfg.seeds.clone(),
        steps,
        bootstrap_unit: cfg.eval.bootstrap_unit,
        bootstrap_clusters: probed.clusters.as_ref().map_or(0, Clusters::count),
        margin: cfg.margin,
        loss_epochs_within_spread: loss_gap.iter().filter(|(gap, spread)| gap <= spread).count(),
        loss_gap,
        rows,
        burn_learns: learns(BURN),
        reference_learns: learns(REFERENCE),
        probes: probed.probes,
        losses,
    };
    write(&comparison, out)?;
    Ok(comparison)
}

/// The reference's pretraining of `config` into `dir` (unless its checkpoints are there), each
/// checkpoint imported as a run folder `dir/step-N`.
fn train_reference(
    pre: &PretrainConfig,
    config: &Path,
    dir: &Path,
    checkpoints: &[usize],
    reference: &mut Reference,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let file = |c: usize| dir.join(format!("{}.safetensors", step_dir(c)));
    if !checkpoints.iter().all(|&c| file(c).is_file()) {
        log(&format!("reference: pretraining into {}", dir.display()));
        fs_err::create_dir_all(dir)?;
        reference(config, dir, checkpoints)?;
    }
    for &c in checkpoints {
        let run = dir.join(step_dir(c));
        if !run.join(CHECKPOINT).is_file() {
            import_torch(&file(c), &pre.vit, "backbone.", &run, device)?;
        }
    }
    Ok(())
}

/// How a checkpoint's step is shown: the fraction of the run it was asked as (`0`, `1/4`,
/// `1`), else `step/steps`.
fn fraction_label(fractions: &[(usize, usize)], steps: usize, c: usize) -> String {
    match fractions.iter().find(|&&(a, b)| steps * a / b.max(1) == c) {
        None => format!("{c}/{steps}"),
        Some(&(0, _)) => "0".into(),
        Some(&(a, b)) if a == b => "1".into(),
        Some(&(a, b)) => format!("{a}/{b}"),
    }
}

/// The probes' results, per implementation, seed and checkpoint.
#[derive(Default)]
struct Probed {
    probes: Vec<Probe>,
    scores: Vec<(String, u64, usize, TestScores)>,
    /// What the paired bootstraps resample: the test rows' clusters, from the first probe.
    clusters: Option<Clusters>,
}

impl Probed {
    /// Reads the results of the probe in `dir`; every probe must have tested the same rows
    /// (and patients) as the first.
    fn read(&mut self, implementation: &str, seed: u64, step: usize, dir: &Path, unit: BootstrapUnit) -> Result<()> {
        let path = dir.join("results.json");
        let text = fs_err::read_to_string(&path)?;
        let result: LinearEvalResult = serde_json::from_str(&text).map_err(|e| Error::input(&path, e))?;
        let macro_auroc = result.test.macro_auroc;
        let scores = TestScores::read(dir)?;
        match self.scores.first() {
            None => self.clusters = Some(scores.clusters(unit, dir)?),
            Some((.., first)) if first.targets != scores.targets || first.subjects != scores.subjects => {
                return Err(Error::input(
                    &dir.join(crate::linear::TEST_SCORES),
                    "tested on other rows than the first probe; delete the probes folder to probe again",
                ));
            }
            Some(_) => {}
        }
        self.probes.push(Probe { implementation: implementation.into(), seed, step, macro_auroc });
        self.scores.push((implementation.into(), seed, step, scores));
        Ok(())
    }

    fn find(&self, implementation: &str, seed: u64, step: usize) -> Option<&TestScores> {
        self.scores.iter().find(|s| s.0 == implementation && s.1 == seed && s.2 == step).map(|s| &s.3)
    }

    /// The seeds' mean test macro AUROC of `implementation` at `step`.
    fn mean_auroc(&self, implementation: &str, step: usize) -> Option<f64> {
        let v: Vec<f64> = self
            .probes
            .iter()
            .filter(|p| p.implementation == implementation && p.step == step)
            .filter_map(|p| p.macro_auroc.map(|e| e.value))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// Paired, averaged over the seeds: b minus a for each seed's `(a, b)` (none when a seed
    /// lacks one), with its equivalence test at `cfg.margin`.
    fn pooled<'a>(
        &'a self,
        cfg: &CompareConfig,
        pair: impl Fn(u64) -> Option<(&'a TestScores, &'a TestScores)>,
    ) -> Option<Equivalence> {
        let pairs: Vec<(&TestScores, &TestScores)> = cfg.seeds.iter().map(|&s| pair(s)).collect::<Option<_>>()?;
        let first = &self.scores.first()?.3;
        let slices: Vec<(&[f32], &[f32])> =
            pairs.iter().map(|(a, b)| (a.scores.as_slice(), b.scores.as_slice())).collect();
        let (targets, l, eval) = (first.targets_f32(), first.labels.len(), &cfg.eval);
        let clusters = self.clusters.as_ref()?;
        paired_mean_macro_auroc_equivalence(&slices, &targets, l, eval.bootstrap, eval.seed, clusters, cfg.margin)
    }
}

/// Per epoch: |difference of the seed-mean losses| and the larger seed spread.
fn loss_gap(a: &LossCurve, b: &LossCurve) -> Vec<(f64, f64)> {
    let epochs = a.per_seed.iter().chain(&b.per_seed).map(Vec::len).min().unwrap_or(0);
    let stats = |c: &LossCurve, e: usize| {
        let v: Vec<f64> = c.per_seed.iter().map(|s| s[e][0]).collect();
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let spread =
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max) - v.iter().copied().fold(f64::INFINITY, f64::min);
        (mean, spread)
    };
    (0..epochs)
        .map(|e| {
            let ((ma, sa), (mb, sb)) = (stats(a, e), stats(b, e));
            ((ma - mb).abs(), sa.max(sb))
        })
        .collect()
}

fn est(e: &Option<Estimate>) -> String {
    e.map_or("n/a".into(), |d| format!("{:+.3} ({:+.3} to {:+.3})", d.value, d.low, d.high))
}

/// `comparison.md`, `comparison.json` and the two figures.
fn write(c: &Comparison, out: &Path) -> Result<()> {
    let num = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.3}"));
    let mut md = format!(
        "# Learning parity: burn vs the reference PyTorch MSN\n\nDataset {}, {} pretraining steps, seeds {:?}; \
         probe macro AUROC on the test split (mean over seeds) and burn minus the reference, paired on the same \
         bootstrap resamples of the {} test {}, averaged over seeds. Equivalence: two one-sided tests at level \
         0.05 with a margin of +-{}, i.e. the 90% interval within the margin (equivalent); otherwise a 95% interval \
         without 0 is a shown difference (different), and anything else is undecided.\n\n\
         | checkpoint | step | burn | reference | burn - reference (paired 95% CI) | 90% CI | verdict |\n\
         |---|---|---|---|---|---|---|\n",
        c.dataset_version,
        c.steps,
        c.seeds,
        c.bootstrap_clusters,
        c.bootstrap_unit.plural(),
        c.margin,
    );
    for r in &c.rows {
        let e = r.equivalence.as_ref();
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.fraction,
            r.step,
            num(r.burn),
            num(r.reference),
            est(&e.map(|e| e.delta)),
            e.map_or("n/a".into(), |e| format!("{:+.3} to {:+.3}", e.low90, e.high90)),
            e.map_or("n/a", |e| e.verdict.name()),
        );
    }
    md += &format!(
        "\nLearning (last checkpoint minus the untrained encoder, paired): burn {}, reference {}.\n",
        est(&c.burn_learns),
        est(&c.reference_learns)
    );
    md += &format!(
        "\nTraining loss per epoch: the seed-mean curves differ by at most the larger seed-to-seed spread in \
         {} of {} epochs.\n\n| epoch | burn loss (mean) | reference loss (mean) | |difference| | larger seed spread |\n\
         |---|---|---|---|---|\n",
        c.loss_epochs_within_spread,
        c.loss_gap.len()
    );
    let seed_mean = |curve: &LossCurve, e: usize, k: usize| {
        curve.per_seed.iter().map(|s| s[e][k]).sum::<f64>() / curve.per_seed.len().max(1) as f64
    };
    for (e, (gap, spread)) in c.loss_gap.iter().enumerate() {
        md += &format!(
            "| {e} | {:.4} | {:.4} | {gap:.4} | {spread:.4} |\n",
            seed_mean(&c.losses[0], e, 0),
            seed_mean(&c.losses[1], e, 0)
        );
    }
    fs_err::write(out.join("comparison.md"), &md)?;
    let json = serde_json::to_string_pretty(c)?;
    fs_err::write(out.join("comparison.json"), json)?;
    // Probe AUROC against the step, one line per implementation and seed.
    let mut lines = Vec::new();
    for implementation in [BURN, REFERENCE] {
        for &seed in &c.seeds {
            let points: Vec<(f64, f64)> = c
                .probes
                .iter()
                .filter(|p| p.implementation == implementation && p.seed == seed)
                .filter_map(|p| Some((p.step as f64, p.macro_auroc?.value)))
                .collect();
            lines.push((format!("{implementation} seed {seed}"), points));
        }
    }
    report::overlay_panels(
        &out.join("probe-auroc.svg"),
        "Probe test macro AUROC against pretraining step",
        "pretraining step",
        &[("macro AUROC", lines)],
    )?;
    let curves = |k: usize| -> Vec<report::Line> {
        let mut v = Vec::new();
        for curve in &c.losses {
            for (s, seed) in curve.per_seed.iter().zip(&c.seeds) {
                let points = s.iter().enumerate().map(|(e, m)| (e as f64, m[k])).collect();
                v.push((format!("{} seed {seed}", curve.implementation), points));
            }
        }
        v
    };
    report::overlay_panels(
        &out.join("loss-curves.svg"),
        "Training loss per epoch (mean over its steps)",
        "epoch",
        &[("loss", curves(0)), ("cross-entropy", curves(1)), ("me-max", curves(2))],
    )
}

/// The reference run by Python: `python script --dataset D --config C --out O --save-steps S`.
pub fn python_reference(
    python: PathBuf,
    script: PathBuf,
    dataset: PathBuf,
) -> impl FnMut(&Path, &Path, &[usize]) -> Result<()> {
    move |config, out, steps| {
        let saves: Vec<String> = steps.iter().map(usize::to_string).collect();
        let status = std::process::Command::new(&python)
            .arg(&script)
            .arg("--dataset")
            .arg(&dataset)
            .arg("--config")
            .arg(config)
            .arg("--out")
            .arg(out)
            .arg("--save-steps")
            .arg(saves.join(","))
            .status()
            .map_err(|e| {
                Error::Reference(format!(
                    "running {} {}: {e} (install the reference with `pip install -r trainer/reference/requirements.txt`, \
                     or pass --python)",
                    python.display(),
                    script.display()
                ))
            })?;
        if !status.success() {
            return Err(Error::Reference(format!("{} {} failed ({status})", python.display(), script.display())));
        }
        Ok(())
    }
}
