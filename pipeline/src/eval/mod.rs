//! `pipeline build-eval chexpert|nih`: CheXpert and NIH ChestX-ray14 as evaluation datasets,
//! in the same format as the MIMIC build (Parquet parts + image shards + manifest + version),
//! without EHR features.
//!
//! - CheXpert (DATA.md section 3): `train.csv` / `valid.csv`, paths relative to the parent of
//!   `CheXpert-v1.0-small/`; the 14 labels are read BY NAME and stored under the MIMIC label
//!   columns (`label_pleural_effusion`, ...), raw values and the uncertainty policy as for
//!   MIMIC; the official valid set is the test split and training patients are split into
//!   train / validate with a seed.
//! - NIH (section 4): `Data_Entry_2017.csv` or `Data_Entry_2017_v2020.csv` (11 fields under 9
//!   header names, CRLF, trailing comma, zero-padded ids, ages like `058Y`; invalid ages such as
//!   `412Y` become missing and are counted), the official patient-disjoint
//!   `train_val_list.txt` / `test_list.txt` (train_val split into train / validate by
//!   patient), images found under `images/` or `images_NNN/images/`; its own 14 labels.
//! - A path that escapes the root (absolute, `..`, or a symlink leading outside;
//!   [`crate::sources::paths::inside`], as for MIMIC) is a reject with a reason and is never
//!   read; a missing image file is a reject too.

use std::path::{Path, PathBuf};

use cxr_dataset::{LABELS, NIH_LABELS, label_column_of, raw_label_column_of};
use polars::prelude::*;
use sha2::{Digest, Sha256};

mod chexpert;
mod nih;

pub use chexpert::CHEXPERT_DIR;
pub use nih::nih_age;

use crate::build;
use crate::images::{ImageRow, RunOptions};
use crate::progress::Progress;
use crate::publish::{self, Job, Outcome, Partial};
use crate::rng::Rng;
use crate::{Error, Result};
use cxr_dataset::Uncertain;

/// Which evaluation dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalKind {
    /// CheXpert-v1.0-small (train.csv, valid.csv).
    Chexpert,
    /// NIH ChestX-ray14 (Data_Entry_2017.csv, train_val_list.txt, test_list.txt).
    Nih,
}

impl EvalKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Chexpert => "chexpert",
            Self::Nih => "nih",
        }
    }

    /// The label names the dataset carries (CheXpert: MIMIC's 14, matched by name).
    pub fn labels(self) -> &'static [&'static str; 14] {
        match self {
            Self::Chexpert => &LABELS,
            Self::Nih => &NIH_LABELS,
        }
    }
}

/// Settings of an evaluation build.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub kind: EvalKind,
    /// CheXpert: the folder holding `CheXpert-v1.0-small/` (or that folder); NIH: the folder
    /// holding `Data_Entry_2017*.csv`.
    pub root: PathBuf,
    pub out: PathBuf,
    pub uncertain: Uncertain,
    /// Fraction of training patients moved to the validation split.
    pub validate_fraction: f64,
    /// Seed of the train / validate split.
    pub seed: u64,
    pub shard_size: usize,
    pub image_size: usize,
    pub verify_inputs_full: bool,
    pub run: RunOptions,
}

impl EvalConfig {
    /// The settings that change the output, as `key=value` lines.
    pub fn describe(&self) -> String {
        format!(
            "dataset={}\nuncertain={}\nvalidate_fraction={}\nsplit_seed={}\nshard_size={}\nimage_size={}\npreprocessing={}\n",
            self.kind.name(),
            self.uncertain.name(),
            self.validate_fraction,
            self.seed,
            self.shard_size,
            self.image_size,
            crate::images::preprocess::Output::square(self.image_size).describe(),
        )
    }
}

/// What an evaluation build did.
#[derive(Debug, Clone)]
pub struct EvalSummary {
    pub version: String,
    pub dir: PathBuf,
    pub reused: bool,
    pub partial: Option<Partial>,
    /// Rows read from the CSVs (images listed).
    pub listed: usize,
    /// Images in the published dataset.
    pub images: usize,
    pub rejected: usize,
    /// NIH: rows in neither split list (dropped).
    pub unlisted: usize,
    /// NIH: ages that were not a plausible number of years (stored as missing).
    pub invalid_ages: usize,
    /// Images per split.
    pub splits: Vec<(String, usize)>,
}

/// One image row before the table is built.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) id: String,
    pub(super) image: ImageRow,
    pub(super) subject: i64,
    /// `train`, `validate` or `test`.
    pub(super) split: &'static str,
    pub(super) sex: Option<String>,
    pub(super) age: Option<f64>,
    pub(super) view: Option<String>,
    /// CheXpert `Frontal/Lateral`.
    pub(super) frontal_lateral: Option<String>,
    /// Raw label values, in the order of [`EvalKind::labels`].
    pub(super) raw: Vec<Option<f64>>,
}

fn hash_files(h: &mut Sha256, files: &[&Path]) -> Result<()> {
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(format!("table {name} {}\n", cxr_dataset::files::sha256_file(f)?));
    }
    Ok(())
}

/// Seeded patient-level split of training patients into train / validate.
pub(super) fn train_or_validate(seed: u64, subject: i64, validate_fraction: f64) -> &'static str {
    if Rng::derive(seed, 0x7A11, subject as u64).bernoulli(validate_fraction) { "validate" } else { "train" }
}

pub(super) fn parse_label(path: &Path, line: usize, column: &str, value: &str) -> Result<Option<f64>> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<f64>() {
        Ok(x) if [1.0, 0.0, -1.0].contains(&x) => Ok(Some(x)),
        _ => Err(Error::BadValue {
            path: path.to_path_buf(),
            line,
            column: column.to_string(),
            value: value.to_string(),
            expected: "a label (1.0, 0.0, -1.0 or blank)".into(),
        }),
    }
}

fn table(kind: EvalKind, rows: &[Row], uncertain: Uncertain) -> Result<DataFrame> {
    let pe = |e| Error::Polars { context: "evaluation table".into(), source: e };
    let mut cols = vec![
        Column::new("image_id".into(), rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>()),
        Column::new("subject_id".into(), rows.iter().map(|r| r.subject).collect::<Vec<_>>()),
        Column::new("split".into(), rows.iter().map(|r| r.split).collect::<Vec<_>>()),
        Column::new("sex".into(), rows.iter().map(|r| r.sex.clone()).collect::<Vec<_>>()),
        Column::new("age".into(), rows.iter().map(|r| r.age).collect::<Vec<_>>()),
        Column::new("view".into(), rows.iter().map(|r| r.view.clone()).collect::<Vec<_>>()),
    ];
    if kind == EvalKind::Chexpert {
        cols.push(Column::new(
            "frontal_lateral".into(),
            rows.iter().map(|r| r.frontal_lateral.clone()).collect::<Vec<_>>(),
        ));
    }
    for (i, label) in kind.labels().iter().enumerate() {
        let resolved: Vec<Option<f32>> = rows.iter().map(|r| uncertain.resolve(r.raw[i])).collect();
        cols.push(Column::new(label_column_of(label).into(), resolved));
    }
    for (i, label) in kind.labels().iter().enumerate() {
        let raw: Vec<Option<f64>> = rows.iter().map(|r| r.raw[i]).collect();
        cols.push(Column::new(raw_label_column_of(label).into(), raw));
    }
    DataFrame::new(rows.len(), cols).map_err(pe)
}

fn split_counts(df: &DataFrame) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    if let Ok(s) = df.column("split").and_then(|c| c.str().cloned()) {
        for v in s.iter().flatten() {
            *counts.entry(v.to_string()).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

/// Builds (or finds) the evaluation dataset version.
pub fn build_eval(cfg: &EvalConfig, progress: &dyn Progress) -> Result<EvalSummary> {
    if !(0.0..1.0).contains(&cfg.validate_fraction) {
        return Err(Error::Config(format!("--validate-fraction {}: expected 0 to below 1", cfg.validate_fraction)));
    }
    let (rows, inputs, images_root, unlisted, invalid_ages) = match cfg.kind {
        EvalKind::Chexpert => {
            let (rows, csvs, base) = chexpert::rows(cfg)?;
            (rows, csvs, base, 0, 0)
        }
        EvalKind::Nih => {
            let (rows, files, unlisted, invalid) = nih::rows(cfg)?;
            (rows, files, cfg.root.clone(), unlisted, invalid)
        }
    };
    if rows.is_empty() {
        return Err(Error::input(&cfg.root, "no images listed"));
    }
    let df = table(cfg.kind, &rows, cfg.uncertain)?;
    build::labels::check_leakage(&df)?;
    let mut h = Sha256::new();
    h.update(format!("{} build-eval\n{}", build::code_id(), cfg.describe()));
    hash_files(&mut h, &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
    let tables_hash = cxr_dataset::files::hex(&h.finalize());
    let image_rows: Vec<ImageRow> = rows.iter().map(|r| r.image.clone()).collect();
    let listed = rows.len();
    let job = Job {
        out: &cfg.out,
        table: &df,
        images_root: &images_root,
        files: Some(&image_rows),
        decode: crate::images::preprocess::decode_raster,
        source: if cfg.kind == EvalKind::Chexpert { "jpg" } else { "png" },
        tables_hash: &tables_hash,
        schema_hash: "",
        config: cfg.describe(),
        output: crate::images::preprocess::Output::square(cfg.image_size),
        shard_size: cfg.shard_size.max(1),
        verify_inputs_full: cfg.verify_inputs_full,
        run: cfg.run,
        task: cxr_dataset::manifest::Task::new(cfg.kind.name(), "image_id", cfg.kind.labels()),
        header_rejects: Vec::new(),
        images_read: listed,
    };
    let mut published = (0, 0, Vec::new());
    let outcome = publish::finish(&job, progress, &mut |kept, rejected, version| {
        published = (kept.height(), rejected, split_counts(kept));
        report(cfg, version, kept, listed, rejected, unlisted, invalid_ages)
    })?;
    let (images, rejected, splits) = published;
    let summary = |version, dir, reused, partial| EvalSummary {
        version,
        dir,
        reused,
        partial,
        listed,
        images,
        rejected,
        unlisted,
        invalid_ages,
        splits: splits.clone(),
    };
    Ok(match outcome {
        Outcome::Reused { version, dir } => summary(version, dir, true, None),
        Outcome::Partial { version, work, partial } => summary(version, work, false, Some(partial)),
        Outcome::Published { version, dir } => summary(version, dir, false, None),
    })
}

/// The report: counts, splits and label prevalence per split.
fn report(
    cfg: &EvalConfig,
    version: &str,
    kept: &DataFrame,
    listed: usize,
    rejected: usize,
    unlisted: usize,
    invalid_ages: usize,
) -> Result<(String, String)> {
    let splits = split_counts(kept);
    let split_col: Vec<String> = kept
        .column("split")
        .ok()
        .and_then(|c| c.str().ok().map(|s| s.iter().map(|v| v.unwrap_or("").to_string()).collect()))
        .unwrap_or_default();
    let mut md = format!(
        "# {} evaluation dataset {version}\n\n| | |\n|---|---|\n| images listed | {listed} |\n| in neither split list | {unlisted} |\n| rejected (see rejects.parquet) | {rejected} |\n| images in the dataset | {} |\n| invalid ages (stored as missing) | {invalid_ages} |\n\n## Positives per split\n\n| label |",
        cfg.kind.name(),
        kept.height()
    );
    for (s, n) in &splits {
        md.push_str(&format!(" {s} ({n}) |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(splits.len()));
    md.push('\n');
    let mut prevalence = serde_json::Map::new();
    for label in cfg.kind.labels() {
        let values: Vec<Option<f32>> = kept
            .column(&label_column_of(label))
            .ok()
            .and_then(|c| c.f32().ok().map(|v| v.iter().collect()))
            .unwrap_or_default();
        md.push_str(&format!("| {label} |"));
        let mut per = serde_json::Map::new();
        for (s, _) in &splits {
            let pos = values.iter().zip(&split_col).filter(|(v, sp)| *sp == s && **v == Some(1.0)).count();
            md.push_str(&format!(" {pos} |"));
            per.insert(s.clone(), pos.into());
        }
        md.push('\n');
        prevalence.insert(label.to_string(), per.into());
    }
    let json = serde_json::json!({
        "dataset_version": version,
        "dataset": cfg.kind.name(),
        "images_listed": listed,
        "unlisted": unlisted,
        "rejected": rejected,
        "images": kept.height(),
        "invalid_ages": invalid_ages,
        "splits": splits.iter().map(|(s, n)| (s.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
        "positives": prevalence,
    });
    let json = serde_json::to_string_pretty(&json)?;
    Ok((md, json))
}
