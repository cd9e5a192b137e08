//! Whole experiments on one built dataset: [`run`] (pretrain, then linear-evaluate, then the
//! report) and [`ablate`] (a grid of EHR choices with the same seed and budget, resumable,
//! with a comparison table and chart).
//!
//! A run folder holds `config.json`, `metrics.jsonl` and checkpoints (pretraining),
//! `pretrain-done.json`, `linear-eval/` (results, probe, figures), `pretrain-curves.svg`,
//! `report.html` and, last, `summary.json`.
//!
//! Every reusable stage is keyed by what made it ([`RunKey`]): the pretraining by the arm's
//! resolved pretraining config, the dataset version and the trainer's code digest
//! ([`crate::CODE_DIGEST`]); the summary by that plus the evaluation config and the external test
//! datasets' versions (cached features carry their own key, see `linear`). A folder whose
//! `summary.json` has the same key is finished and reused; one whose pretraining has the same
//! key (finished, or stopped with the same config) resumes; anything else is stale and is
//! redone from scratch, the log saying which stage and why.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use cxr_dataset::features::{EhrSelection, Group, Variable};
use cxr_dataset::files::{hex, write_atomic};
use cxr_dataset::manifest::Manifest;
use sha2::{Digest, Sha256};

use crate::linear::{
    Baseline, LinearEvalConfig, LinearEvalResult, Source, TestScores, linear_eval, load_encoder, random_encoder,
    to_json_pretty,
};
use crate::metrics::{
    BootstrapUnit, Equivalence, Estimate, paired_macro_auroc_delta, paired_mean_macro_auroc_equivalence,
};
use crate::parallel::Devices;
use crate::pretrain::{CHECKPOINT, PretrainConfig, StepMetrics, pretrain_with};
use crate::report;
use crate::{CODE_DIGEST, Error, Result};

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run: String,
    pub ehr: String,
    pub dataset_version: String,
    pub pretrain_steps: usize,
    pub pretrain_seconds: f64,
    pub macro_auroc: Option<Estimate>,
    pub macro_average_precision: Option<Estimate>,
    /// (label, AUROC) on the test split; `None` = undefined.
    pub auroc: Vec<(String, Option<Estimate>)>,
    pub linear_eval_seconds: f64,
    /// Macro AUROC minus vanilla MSN's on the same test images, with a paired bootstrap
    /// interval (filled in by [`ablate`]).
    #[serde(default)]
    pub delta_vs_vanilla: Option<Estimate>,
    /// What the intervals resample, in a sentence (patients or images, how many).
    #[serde(default)]
    pub intervals: String,
    /// The [`RunKey`] of what made this summary (empty in summaries older than the keys,
    /// which are therefore never reused).
    #[serde(default)]
    pub key: String,
}

/// Pretraining outcome kept between sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PretrainDone {
    steps: usize,
    seconds: f64,
    first_loss: f32,
    last_loss: f32,
    /// The pretraining stage's [`RunKey`].
    #[serde(default)]
    key: String,
}

/// What made one stage of a run, as a 16-hex digest of a JSON document (the stage, the
/// trainer's [`CODE_DIGEST`], the dataset version and the stage's resolved settings). A stage
/// is reused only when its saved key equals the key of what would make it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKey {
    pub digest: String,
    /// The document that was hashed (for the log line that says why a stage is redone).
    pub about: serde_json::Value,
}

impl RunKey {
    pub(crate) fn new(stage: &str, dataset_version: &str, settings: serde_json::Value) -> Self {
        let about = serde_json::json!({
            "stage": stage,
            "trainer_code": CODE_DIGEST,
            "dataset_version": dataset_version,
            "settings": settings,
        });
        let digest = hex(&Sha256::digest(about.to_string().as_bytes()))[..16].to_string();
        Self { digest, about }
    }

    /// The pretraining of `arm` with its resolved `cfg` on dataset `version`. A baseline
    /// pretrains nothing: its key is its name with the model and seed (the random encoder's).
    pub fn pretraining(arm: &Arm, cfg: &PretrainConfig, version: &str) -> Result<Self> {
        let settings = match arm {
            Arm::Msn(_) => serde_json::to_value(cfg)?,
            Arm::RandomInit | Arm::Baseline(_) => {
                serde_json::json!({ "arm": arm.to_string(), "vit": cfg.vit, "seed": cfg.seed })
            }
        };
        Ok(Self::new("pretraining", version, settings))
    }

    /// The evaluation of a pretraining stage `pretraining` with `eval` on the dataset and the
    /// external test datasets of `versions` (in order).
    pub fn summary(pretraining: &RunKey, eval: &LinearEvalConfig, version: &str, external: &[String]) -> Result<Self> {
        let settings = serde_json::json!({
            "pretraining": pretraining.digest,
            "eval": serde_json::to_value(eval)?,
            "external": external,
        });
        Ok(Self::new("summary", version, settings))
    }
}

/// The version of the dataset in `dir`, from its manifest.
fn version_of(dir: &Path) -> Result<String> {
    Manifest::read(dir).map(|m| m.dataset_version).map_err(|e| Error::Dataset { path: dir.to_path_buf(), message: e })
}

/// What differs between a saved key's document and the current one, in a few words.
pub(crate) fn why_stale(saved: Option<&serde_json::Value>, now: &serde_json::Value) -> String {
    let Some(saved) = saved else { return "made before runs were keyed".into() };
    let mut differs = Vec::new();
    for (what, field) in [("trainer code", "trainer_code"), ("dataset version", "dataset_version")] {
        if saved[field] != now[field] {
            differs.push(format!("{what} {} -> {}", saved[field], now[field]));
        }
    }
    if let (Some(a), Some(b)) = (saved["settings"].as_object(), now["settings"].as_object()) {
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort();
        names.dedup();
        let changed: Vec<String> =
            names.into_iter().filter(|n| a.get(*n) != b.get(*n)).map(|n| n.to_string()).collect();
        if !changed.is_empty() {
            differs.push(format!("settings {}", changed.join(", ")));
        }
    }
    if differs.is_empty() { "its key differs".into() } else { differs.join("; ") }
}

/// File next to a stage's outcome that holds its key document.
const KEYS: &str = "run-keys.json";

/// The saved key documents of a run folder (stage name -> document); none when the folder
/// has no `run-keys.json`. A file that is there but cannot be read is an error naming it.
pub(crate) fn saved_keys(dir: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let path = dir.join(KEYS);
    let text = match fs_err::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(serde_json::Map::new()),
        Err(e) => return Err(e.into()),
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(keys)) => Ok(keys),
        Ok(_) => Err(Error::input(&path, "expected a JSON object of stage keys; delete the run folder to redo it")),
        Err(e) => Err(Error::input(&path, format!("{e}; delete the run folder to redo it"))),
    }
}

pub(crate) fn save_key(dir: &Path, stage: &str, key: &RunKey) -> Result<()> {
    let mut keys = saved_keys(dir)?;
    keys.insert(stage.into(), key.about.clone());
    fs_err::create_dir_all(dir)?;
    write_atomic(&dir.join(KEYS), to_json_pretty(&keys)?.as_bytes())?;
    Ok(())
}

/// Files only a run folder holds: a folder with none of them is not a run's and is never
/// cleared.
const RUN_FILES: [&str; 5] = [KEYS, "summary.json", "pretrain-done.json", "config.json", CHECKPOINT];

/// Removes what a stale run folder holds (everything but the folder), so the stage starts
/// from scratch instead of resuming other settings' checkpoints. A non-empty folder that is
/// not a run folder is refused, not emptied.
fn clear(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        if !RUN_FILES.iter().any(|f| dir.join(f).is_file()) {
            return Err(Error::Config(format!(
                "{} is not empty and holds no run (none of {}); choose an empty or new folder",
                dir.display(),
                RUN_FILES.join(", ")
            )));
        }
        for entry in fs_err::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() { fs_err::remove_dir_all(&path)? } else { fs_err::remove_file(&path)? }
        }
    }
    Ok(())
}

/// What one run of an experiment does: MSN pretraining with an EHR selection, or one of the
/// baselines that pretrain nothing. Parsed from `trainer run --ehr` and the entries of
/// `trainer ablate --choices`; written back as the same word in summaries and tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arm {
    /// MSN pretraining with this `--ehr` selection (`none` = vanilla MSN), as the user spelt
    /// it, then its probe.
    Msn(EhrSelection),
    /// The probe on a randomly initialised encoder (of the configured model and seed), the
    /// baseline pretraining has to beat.
    RandomInit,
    /// The probe on a baseline without an encoder.
    Baseline(Baseline),
}

impl Arm {
    /// The word of [`Arm::RandomInit`].
    pub const RANDOM_INIT: &'static str = "random-init";

    /// Vanilla MSN (`--ehr none`), the arm the others are compared with.
    pub fn vanilla() -> Self {
        Self::Msn(EhrSelection::none())
    }

    pub fn pretrains(&self) -> bool {
        matches!(self, Self::Msn(_))
    }

    /// The folder name of this arm's run.
    pub fn run_name(&self) -> String {
        match self {
            Self::Msn(e) if e.is_none() => "vanilla-msn".into(),
            Self::Msn(e) => format!("ehr-{}", e.spelling().replace(',', "+")),
            Self::RandomInit => Self::RANDOM_INIT.into(),
            Self::Baseline(b) => format!("baseline-{}", b.name()),
        }
    }

    /// The pretraining configuration of this arm: `base` with its EHR selection (`none` for
    /// the baselines, which pretrain nothing but take the model and seed).
    fn config(&self, base: &PretrainConfig) -> PretrainConfig {
        let mut cfg = base.clone();
        cfg.ehr = match self {
            Self::Msn(e) => e.clone(),
            Self::RandomInit | Self::Baseline(_) => EhrSelection::none(),
        };
        cfg
    }
}

impl std::str::FromStr for Arm {
    type Err = Error;

    /// `random-init`, a baseline name, or an `--ehr` selection (checked here).
    fn from_str(choice: &str) -> Result<Self> {
        let choice = choice.trim();
        if choice == Self::RANDOM_INIT {
            return Ok(Self::RandomInit);
        }
        if let Some(b) = Baseline::parse(choice) {
            return Ok(Self::Baseline(b));
        }
        let selection = choice.parse::<EhrSelection>().map_err(|e| {
            Error::Config(format!(
                "{choice:?}: {e}; or a baseline without pretraining: {}, {}",
                Self::RANDOM_INIT,
                Baseline::ALL.map(Baseline::name).join(", ")
            ))
        })?;
        Ok(Self::Msn(selection))
    }
}

impl std::fmt::Display for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Msn(e) => f.write_str(e.spelling()),
            Self::RandomInit => f.write_str(Self::RANDOM_INIT),
            Self::Baseline(b) => f.write_str(b.name()),
        }
    }
}

/// What every run of an experiment shares: the dataset, the linear evaluation (with the
/// external test datasets) and the devices.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub dataset: &'a Path,
    pub eval: &'a LinearEvalConfig,
    /// Datasets the probe is also tested on (`--test-dataset`).
    pub external: &'a [PathBuf],
    pub devices: &'a Devices,
}

/// Runs `arm` with `pretrain`'s settings (its EHR selection is the arm's): pretrains
/// (resuming a stopped run), linear-evaluates the result (`setup`) and writes the report, in
/// the folder `dir`. A baseline arm pretrains nothing: the
/// probe reads a random encoder's features, or the baseline's.
pub fn run(
    arm: &Arm,
    pretrain: &PretrainConfig,
    setup: &Setup,
    dir: &Path,
    on_step: &mut dyn FnMut(&StepMetrics, usize),
    log: &mut dyn FnMut(&str),
) -> Result<RunSummary> {
    let Setup { eval, dataset, external, devices } = *setup;
    let pretrain = arm.config(pretrain);
    let version = version_of(dataset)?;
    let external_versions: Vec<String> = external.iter().map(|d| version_of(d)).collect::<Result<_>>()?;
    let pretrain_key = RunKey::pretraining(arm, &pretrain, &version)?;
    let summary_key = RunKey::summary(&pretrain_key, eval, &version, &external_versions)?;
    let summary_path = dir.join("summary.json");
    if let Ok(text) = fs_err::read_to_string(&summary_path) {
        match serde_json::from_str::<RunSummary>(&text) {
            Ok(s) if s.key == summary_key.digest => {
                log(&format!("{}: finished before with these settings (key {}), reused", dir.display(), s.key));
                return Ok(s);
            }
            _ => log(&format!(
                "{}: the results are stale ({}), evaluating again",
                dir.display(),
                why_stale(saved_keys(dir)?.get("summary"), &summary_key.about)
            )),
        }
        fs_err::remove_file(&summary_path)?;
    }
    let done = pretrain_arm(arm, &pretrain, &pretrain_key, dataset, dir, devices, on_step, log)?;
    let source: Source = match arm {
        Arm::Msn(_) => load_encoder(dir, eval.checkpoint, devices.main())?.into(),
        Arm::RandomInit => random_encoder(&pretrain.vit, pretrain.seed, devices.main()).into(),
        Arm::Baseline(b) => b.source(),
    };
    let eval_dir = dir.join("linear-eval");
    log(&format!("linear evaluation in {}", eval_dir.display()));
    let out = linear_eval(eval, source, dataset, external, &eval_dir, &dir.join("features"), devices.main(), log)?;
    report::linear_eval_report(&eval_dir, &out.result, &out.history, &out.test)?;
    run_page(arm, &pretrain, &done, &out.result, dir)?;
    let summary = RunSummary {
        run: dir.display().to_string(),
        ehr: arm.to_string(),
        dataset_version: out.result.dataset_version.clone(),
        pretrain_steps: done.steps,
        pretrain_seconds: done.seconds,
        macro_auroc: out.result.test.macro_auroc,
        macro_average_precision: out.result.test.macro_average_precision,
        auroc: out.result.test.labels.iter().map(|r| (r.label.clone(), r.auroc)).collect(),
        linear_eval_seconds: out.result.seconds,
        delta_vs_vanilla: None,
        intervals: out.result.test.interval_note(),
        key: summary_key.digest.clone(),
    };
    save_key(dir, "summary", &summary_key)?;
    write_atomic(&summary_path, to_json_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

/// The pretraining of `arm` in `dir`: read back when it finished before with the same `key`,
/// resumed when it stopped with the same key, started afresh (the folder cleared) when what
/// is there was made otherwise; none for a baseline.
#[allow(clippy::too_many_arguments)]
fn pretrain_arm(
    arm: &Arm,
    pretrain: &PretrainConfig,
    key: &RunKey,
    dataset: &Path,
    dir: &Path,
    devices: &Devices,
    on_step: &mut dyn FnMut(&StepMetrics, usize),
    log: &mut dyn FnMut(&str),
) -> Result<PretrainDone> {
    let done_path = dir.join("pretrain-done.json");
    let saved = saved_keys(dir)?;
    let same = saved.get("pretraining") == Some(&key.about);
    if same && let Some(d) = fs_err::read_to_string(&done_path).ok().and_then(|t| serde_json::from_str(&t).ok()) {
        return Ok(d);
    }
    let resume = same && dir.join(CHECKPOINT).is_file();
    if !same && fs_err::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        log(&format!(
            "{}: the pretraining there is stale ({}), starting again",
            dir.display(),
            why_stale(saved.get("pretraining"), &key.about)
        ));
        clear(dir)?;
    }
    save_key(dir, "pretraining", key)?;
    let d = if arm.pretrains() {
        log(&format!(
            "pretraining ({}) in {}{}",
            pretrain.ehr.spelling(),
            dir.display(),
            if resume { ", resuming" } else { "" }
        ));
        let s = pretrain_with(pretrain, dataset, dir, devices, resume, on_step)?;
        PretrainDone {
            steps: s.steps,
            seconds: s.seconds,
            first_loss: s.first_loss,
            last_loss: s.last_loss,
            key: key.digest.clone(),
        }
    } else {
        PretrainDone { steps: 0, seconds: 0.0, first_loss: f32::NAN, last_loss: f32::NAN, key: key.digest.clone() }
    };
    write_atomic(&done_path, to_json_pretty(&d)?.as_bytes())?;
    Ok(d)
}

/// The run's `report.html`: what ran, the probe's results and the figures.
fn run_page(
    arm: &Arm,
    pretrain: &PretrainConfig,
    done: &PretrainDone,
    result: &LinearEvalResult,
    dir: &Path,
) -> Result<()> {
    let version = &result.dataset_version;
    let about = match arm {
        Arm::RandomInit => format!(
            "<p>Baseline: a randomly initialised encoder (seed {}), no pretraining; dataset version {version}.</p>",
            pretrain.seed
        ),
        Arm::Baseline(b) => {
            format!("<p>Baseline <b>{}</b> (no encoder): {}; dataset version {version}.</p>", b.name(), result.encoder)
        }
        Arm::Msn(ehr) => {
            report::pretrain_curves(&dir.join("metrics.jsonl"), &dir.join("pretrain-curves.svg"))?;
            format!(
                "<p>EHR: <b>{}</b>; dataset version {version}; {} pretraining steps in {:.0} s (loss {:.4} &rarr; {:.4}).</p>",
                ehr.spelling(),
                done.steps,
                done.seconds,
                done.first_loss,
                done.last_loss
            )
        }
    };
    let mut sections = vec![("Run".to_string(), about)];
    sections.extend(report::linear_eval_sections(result));
    let mut figures = if arm.pretrains() { vec![("pretrain-curves.svg", "Pretraining curves")] } else { vec![] };
    figures.extend([
        ("linear-eval/probe-curves.svg", "Linear probe: loss and validation AUROC"),
        ("linear-eval/auroc.svg", "Test AUROC per label (95% CI)"),
        ("linear-eval/roc.svg", "ROC curves"),
        ("linear-eval/embedding.svg", "Test embeddings (PCA)"),
        ("linear-eval/tsne.svg", "Test embeddings (t-SNE)"),
    ]);
    let external_figs: Vec<String> =
        (0..result.external.len()).map(|k| format!("linear-eval/external-{k}-auroc.svg")).collect();
    for f in &external_figs {
        figures.push((f.as_str(), "External test AUROC per label"));
    }
    report::page(dir, "report.html", &format!("Run: ehr {arm}"), &sections, &figures)
}

/// A predefined set of arms for `trainer ablate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Grid {
    /// Vanilla MSN, each group alone, all three groups (5 runs).
    Quick,
    /// Vanilla MSN, every non-empty combination of the groups, each single variable with age
    /// as norm, 5- and 10-year age bins (16 runs).
    Paper,
}

impl Grid {
    /// The arms of the grid, vanilla MSN first.
    pub fn arms(self) -> Vec<Arm> {
        let mut v = vec![EhrSelection::none()];
        match self {
            Self::Quick => {
                v.extend(Group::ALL.iter().map(|g| EhrSelection::groups(&[*g])));
                v.push(EhrSelection::groups(&Group::ALL));
            }
            Self::Paper => {
                let mut combinations: Vec<EhrSelection> = (1..8usize)
                    .map(|mask| {
                        let chosen: Vec<Group> = Group::ALL
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| mask >> i & 1 == 1)
                            .map(|(_, g)| *g)
                            .collect();
                        EhrSelection::groups(&chosen)
                    })
                    .collect();
                combinations.sort_by_key(|s| (s.spelling().matches(',').count(), s.spelling().to_string()));
                v.extend(combinations);
                v.extend(Variable::PAPER.iter().map(|var| EhrSelection::of_variables(&[*var])));
            }
        }
        v.into_iter().map(Arm::Msn).collect()
    }
}

/// Runs every arm of `arms` into `dir/<run_name>` with the same configuration (`base`'s seed
/// and budget), skipping finished runs, then writes `ablation.md`,
/// `ablation.csv`, `ablation.svg` and `ablation.html`. Returns the summaries in order.
pub fn ablate(
    base: &PretrainConfig,
    arms: &[Arm],
    setup: &Setup,
    dir: &Path,
    on_step: &mut dyn FnMut(&StepMetrics, usize),
    log: &mut dyn FnMut(&str),
) -> Result<Vec<RunSummary>> {
    fs_err::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (k, arm) in arms.iter().enumerate() {
        log(&format!("ablation {}/{}: {arm}", k + 1, arms.len()));
        out.push(run(arm, base, setup, &dir.join(arm.run_name()), on_step, log)?);
    }
    // Paired deltas against vanilla MSN: both probes scored on the same bootstrap resamples.
    if let Some(v) = arms.iter().position(|a| *a == Arm::vanilla()) {
        let base_dir = Path::new(&out[v].run).join("linear-eval");
        let base = TestScores::read(&base_dir)?;
        let targets = base.targets_f32();
        let clusters = base.clusters(setup.eval.bootstrap_unit, &base_dir)?;
        for r in &mut out {
            let other = TestScores::read(&Path::new(&r.run).join("linear-eval"))?;
            if other.targets != base.targets || other.labels != base.labels || other.subjects != base.subjects {
                continue;
            }
            r.delta_vs_vanilla = paired_macro_auroc_delta(
                &base.scores,
                &other.scores,
                &targets,
                base.labels.len(),
                setup.eval.bootstrap,
                setup.eval.seed,
                &clusters,
            );
        }
    }
    write_table(&out, dir)?;
    Ok(out)
}

/// A difference between two arms over several pairs of probes (e.g. one pair per seed): `b - a`
/// in test macro AUROC per pair (each with its paired interval) and averaged over the pairs,
/// every pair scored on the same bootstrap resamples of the test patients (or images), with its
/// equivalence test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PooledDelta {
    /// The pairs' names (`seed 24`, ...).
    pub pairs: Vec<String>,
    pub per_pair: Vec<Option<Estimate>>,
    /// The mean over the pairs; `None` when no label is defined.
    pub pooled: Option<Equivalence>,
    /// What the intervals resample, in a sentence.
    pub intervals: String,
}

/// Which bootstrap a [`PooledDelta`] draws and the margin of its equivalence test.
#[derive(Debug, Clone, Copy)]
pub struct PairedBootstrap {
    pub resamples: usize,
    pub unit: BootstrapUnit,
    pub seed: u64,
    pub margin: f64,
}

impl PairedBootstrap {
    /// The bootstrap of `eval`, with `margin`.
    pub fn of(eval: &LinearEvalConfig, margin: f64) -> Self {
        Self { resamples: eval.bootstrap, unit: eval.bootstrap_unit, seed: eval.seed, margin }
    }
}

/// The [`PooledDelta`] of `pairs`: named pairs of linear-evaluation folders `(a, b)` (each
/// holding `test-scores.json`; all tested on the same rows and patients).
pub fn pooled_delta(pairs: &[(String, PathBuf, PathBuf)], bootstrap: PairedBootstrap) -> Result<PooledDelta> {
    if pairs.is_empty() {
        return Err(Error::Config("a pooled difference needs at least one pair of probes".into()));
    }
    let mut read: Vec<(&Path, TestScores)> = Vec::with_capacity(2 * pairs.len());
    for dir in pairs.iter().flat_map(|(_, a, b)| [a.as_path(), b.as_path()]) {
        let scores = TestScores::read(dir)?;
        if let Some((first_dir, first)) = read.first()
            && (first.targets != scores.targets || first.labels != scores.labels || first.subjects != scores.subjects)
        {
            return Err(Error::input(
                &dir.join(crate::linear::TEST_SCORES),
                format!("tested on other rows than {}; evaluate both on the same dataset", first_dir.display()),
            ));
        }
        read.push((dir, scores));
    }
    let (first_dir, first) = &read[0];
    let (targets, l) = (first.targets_f32(), first.labels.len());
    let clusters = first.clusters(bootstrap.unit, first_dir)?;
    let pair_scores: Vec<(&[f32], &[f32])> =
        read.chunks_exact(2).map(|p| (p[0].1.scores.as_slice(), p[1].1.scores.as_slice())).collect();
    let PairedBootstrap { resamples, seed, margin, .. } = bootstrap;
    let per_pair = pair_scores
        .iter()
        .map(|(a, b)| paired_macro_auroc_delta(a, b, &targets, l, resamples, seed, &clusters))
        .collect();
    let pooled = paired_mean_macro_auroc_equivalence(&pair_scores, &targets, l, resamples, seed, &clusters, margin);
    let intervals = format!(
        "Paired bootstrap: {resamples} resamples of the {} test {} (seed {seed}), the same for every pair.",
        clusters.count(),
        bootstrap.unit.plural()
    );
    Ok(PooledDelta { pairs: pairs.iter().map(|p| p.0.clone()).collect(), per_pair, pooled, intervals })
}

fn est(e: &Option<Estimate>) -> String {
    e.map_or("undefined".into(), |v| format!("{:.3} ({:.3}-{:.3})", v.value, v.low, v.high))
}

/// The comparison table (Markdown and CSV), its bar chart and page.
pub fn write_table(runs: &[RunSummary], dir: &Path) -> Result<()> {
    let vanilla = runs.iter().find(|r| r.ehr == "none").and_then(|r| r.macro_auroc).map(|e| e.value);
    let labels: Vec<String> = runs.first().map(|r| r.auroc.iter().map(|a| a.0.clone()).collect()).unwrap_or_default();
    let delta = |r: &RunSummary| match r.delta_vs_vanilla {
        Some(d) => format!("{:+.3} ({:+.3} to {:+.3})", d.value, d.low, d.high),
        None => "n/a".into(),
    };
    let mut md = String::from("| EHR | macro AUROC (95% CI) | delta vs vanilla MSN (paired 95% CI) | macro AP |");
    for l in &labels {
        md += &format!(" {l} |");
    }
    md += "\n|---|---|---|---|";
    md += &"---|".repeat(labels.len());
    md += "\n";
    let mut csv =
        String::from("ehr,macro_auroc,macro_auroc_low,macro_auroc_high,delta_vs_vanilla,delta_low,delta_high,macro_ap");
    for l in &labels {
        csv += &format!(",\"{l}\"");
    }
    csv += "\n";
    let num = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    for r in runs {
        md += &format!(
            "| {} | {} | {} | {} |",
            r.ehr,
            est(&r.macro_auroc),
            delta(r),
            r.macro_average_precision.map_or("undefined".into(), |e| format!("{:.3}", e.value))
        );
        csv += &format!(
            "{},{},{},{},{},{},{},{}",
            r.ehr.replace(',', "+"),
            num(r.macro_auroc.map(|e| e.value)),
            num(r.macro_auroc.map(|e| e.low)),
            num(r.macro_auroc.map(|e| e.high)),
            num(r.delta_vs_vanilla.map(|e| e.value)),
            num(r.delta_vs_vanilla.map(|e| e.low)),
            num(r.delta_vs_vanilla.map(|e| e.high)),
            num(r.macro_average_precision.map(|e| e.value)),
        );
        for (_, a) in &r.auroc {
            md += &format!(" {} |", a.map_or("undef.".into(), |e| format!("{:.3}", e.value)));
            csv += &format!(",{}", num(a.map(|e| e.value)));
        }
        md += "\n";
        csv += "\n";
    }
    let intervals = runs.first().map_or("", |r| r.intervals.as_str());
    if !intervals.is_empty() {
        md += &format!("\n{intervals} Deltas are paired: both probes on the same resamples.\n");
    }
    fs_err::write(dir.join("ablation.md"), &md)?;
    fs_err::write(dir.join("ablation.csv"), &csv)?;
    let rows: Vec<(String, Option<Estimate>)> = runs.iter().map(|r| (r.ehr.clone(), r.macro_auroc)).collect();
    report::bars(&dir.join("ablation.svg"), "Test macro AUROC per EHR choice (95% CI)", "macro AUROC", &rows, vanilla)?;
    let mut table = String::from(
        "<table><tr><th>EHR</th><th>macro AUROC (95% CI)</th><th>delta vs vanilla (paired 95% CI)</th><th>run</th></tr>\n",
    );
    for r in runs {
        let name = Path::new(&r.run).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        table += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{name}/report.html\">{name}</a></td></tr>\n",
            r.ehr,
            est(&r.macro_auroc),
            delta(r)
        );
    }
    table += &format!(
        "</table>\n<p>{intervals}</p>\n<p>Per label: <a href=\"ablation.md\">ablation.md</a>, <a href=\"ablation.csv\">ablation.csv</a>.</p>"
    );
    report::page(
        dir,
        "ablation.html",
        "Ablation: EHR choices",
        &[("Comparison".into(), table)],
        &[("ablation.svg", "Macro AUROC per EHR choice")],
    )
}
