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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use cxr_dataset::{LABELS, NIH_LABELS, label_column_of, raw_label_column_of};
use polars::prelude::*;
use sha2::{Digest, Sha256};

use crate::build::{self, Job, Outcome, Partial};
use crate::images::{ImageRow, RunOptions};
use crate::progress::Progress;
use crate::rng::Rng;
use crate::sources::paths;
use crate::{Error, Result};
use cxr_dataset::Uncertain;

/// The CheXpert folder name.
pub const CHEXPERT_DIR: &str = "CheXpert-v1.0-small";

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
struct Row {
    id: String,
    image: ImageRow,
    subject: i64,
    /// `train`, `validate` or `test`.
    split: &'static str,
    sex: Option<String>,
    age: Option<f64>,
    view: Option<String>,
    /// CheXpert `Frontal/Lateral`.
    frontal_lateral: Option<String>,
    /// Raw label values, in the order of [`EvalKind::labels`].
    raw: Vec<Option<f64>>,
}

fn hash_files(h: &mut Sha256, files: &[&Path]) -> Result<()> {
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(format!("table {name} {}\n", cxr_dataset::files::sha256_file(f)?));
    }
    Ok(())
}

/// Seeded patient-level split of training patients into train / validate.
fn train_or_validate(seed: u64, subject: i64, validate_fraction: f64) -> &'static str {
    if Rng::derive(seed, 0x7A11, subject as u64).bernoulli(validate_fraction) { "validate" } else { "train" }
}

fn parse_label(path: &Path, line: usize, column: &str, value: &str) -> Result<Option<f64>> {
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

/// The CheXpert folder and its parent (which CSV paths are relative to).
fn chexpert_base(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let is_dir = |p: &Path| p.join("train.csv").is_file() && p.join("valid.csv").is_file();
    if is_dir(root) {
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        return Ok((root.to_path_buf(), parent));
    }
    for name in [CHEXPERT_DIR, "CheXpert-v1.0"] {
        if is_dir(&root.join(name)) {
            return Ok((root.join(name), root.to_path_buf()));
        }
    }
    Err(Error::input(root, "no CheXpert-v1.0-small/ (or CheXpert-v1.0/) with train.csv and valid.csv here"))
}

fn chexpert_rows(cfg: &EvalConfig) -> Result<(Vec<Row>, Vec<PathBuf>, PathBuf)> {
    let (dir, base) = chexpert_base(&cfg.root)?;
    let mut rows = Vec::new();
    let csvs = vec![dir.join("train.csv"), dir.join("valid.csv")];
    for path in &csvs {
        let test = path.ends_with("valid.csv");
        let mut r = csv::ReaderBuilder::new().from_path(path).map_err(|e| Error::csv(path, e))?;
        let header: Vec<String> = r.headers().map_err(|e| Error::csv(path, e))?.iter().map(str::to_string).collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| Error::MissingColumn { path: path.clone(), column: name.to_string() })
        };
        let (pi, si, ai, fi, vi) = (col("Path")?, col("Sex")?, col("Age")?, col("Frontal/Lateral")?, col("AP/PA")?);
        let label_cols: Vec<usize> = LABELS.iter().map(|l| col(l)).collect::<Result<_>>()?;
        for (k, rec) in r.records().enumerate() {
            let line = k + 2;
            let rec = rec.map_err(|e| Error::csv(path, e))?;
            let get = |i: usize| rec.get(i).unwrap_or("").trim();
            let rel = get(pi).to_string();
            // A path without a patient folder cannot be split by patient: a reject, with a
            // subject of its own so it cannot look like a leak.
            let patient = rel.split('/').find_map(|c| c.strip_prefix("patient")).and_then(|n| n.parse::<i64>().ok());
            let mut invalid = paths::inside(&base, &rel).err();
            if patient.is_none() && invalid.is_none() {
                invalid = Some(format!("path {rel:?} has no patientNNNNN folder"));
            }
            let subject = patient.unwrap_or(-((rows.len() + 1) as i64));
            let raw = label_cols
                .iter()
                .zip(LABELS)
                .map(|(&i, name)| parse_label(path, line, name, get(i)))
                .collect::<Result<Vec<_>>>()?;
            let age = get(ai);
            let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
            rows.push(Row {
                id: rel.trim_start_matches(&format!("{}/", CHEXPERT_DIR)).to_string(),
                image: ImageRow { id: rel.clone(), path: rel.clone(), invalid },
                subject,
                split: if test { "test" } else { train_or_validate(cfg.seed, subject, cfg.validate_fraction) },
                sex: match get(si) {
                    "Male" => Some("M".into()),
                    "Female" => Some("F".into()),
                    _ => None,
                },
                age: if age.is_empty() {
                    None
                } else {
                    Some(age.parse::<f64>().map_err(|_| Error::BadValue {
                        path: path.clone(),
                        line,
                        column: "Age".into(),
                        value: age.into(),
                        expected: "a number".into(),
                    })?)
                },
                view: nonempty(get(vi)),
                frontal_lateral: nonempty(get(fi)),
                raw,
            });
        }
    }
    Ok((rows, csvs, base))
}

/// NIH `Patient Age`: `58`, `058Y`, months `010M` or days `020D` in years; implausible values
/// (over 120 years) are `None`.
pub fn nih_age(value: &str) -> Option<f64> {
    let v = value.trim();
    let (digits, per_year) = match v.as_bytes().last() {
        Some(b'Y' | b'y') => (&v[..v.len() - 1], 1.0),
        Some(b'M' | b'm') => (&v[..v.len() - 1], 12.0),
        Some(b'D' | b'd') => (&v[..v.len() - 1], 365.25),
        _ => (v, 1.0),
    };
    let n: f64 = digits.parse().ok()?;
    let years = n / per_year;
    (0.0..=120.0).contains(&years).then_some(years)
}

/// The `Data_Entry_2017*.csv` of an NIH root (the v2020 file when both are there).
fn nih_entries(root: &Path) -> Result<PathBuf> {
    ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::input(root, "no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv here"))
}

fn read_list(path: &Path) -> Result<HashSet<String>> {
    let text = fs_err::read_to_string(path)?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// File name -> path relative to the root, for `images/*` and `images_NNN/images/*`.
fn nih_image_index(root: &Path) -> Result<HashMap<String, String>> {
    let mut dirs = vec!["images".to_string()];
    for e in fs_err::read_dir(root)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with("images_") && root.join(&name).join("images").is_dir() {
            dirs.push(format!("{name}/images"));
        }
    }
    dirs.sort();
    let mut index = HashMap::new();
    for d in dirs {
        let Ok(entries) = fs_err::read_dir(root.join(&d)) else { continue };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            index.entry(name.clone()).or_insert(format!("{d}/{name}"));
        }
    }
    Ok(index)
}

const NIH_HEADER: [&str; 7] =
    ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position"];

/// Rows of the NIH entries file, with the counts of unlisted rows and invalid ages.
fn nih_rows(cfg: &EvalConfig) -> Result<(Vec<Row>, Vec<PathBuf>, usize, usize)> {
    let path = nih_entries(&cfg.root)?;
    let (tv_path, test_path) = (cfg.root.join("train_val_list.txt"), cfg.root.join("test_list.txt"));
    let (train_val, test) = (read_list(&tv_path)?, read_list(&test_path)?);
    let index = nih_image_index(&cfg.root)?;
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(&path)
        .map_err(|e| Error::csv(&path, e))?;
    let mut records = r.records();
    let header = records.next().ok_or_else(|| Error::input(&path, "empty file"))?.map_err(|e| Error::csv(&path, e))?;
    for (i, name) in NIH_HEADER.iter().enumerate() {
        if header.get(i).map(str::trim) != Some(name) {
            return Err(Error::MissingColumn { path: path.clone(), column: format!("{name} (as field {})", i + 1) });
        }
    }
    let (mut rows, mut unlisted, mut invalid_ages) = (Vec::new(), 0, 0);
    for (k, rec) in records.enumerate() {
        let line = k + 2;
        let rec = rec.map_err(|e| Error::csv(&path, e))?;
        let fields: Vec<&str> = rec.iter().collect();
        // 11 fields (two header names hold a comma); some exports add an empty 12th.
        let n = fields.len() - usize::from(fields.len() == 12 && fields[11].trim().is_empty());
        if n != 11 {
            return Err(Error::BadValue {
                path: path.clone(),
                line,
                column: "(row)".into(),
                value: rec.iter().collect::<Vec<_>>().join(","),
                expected: format!("11 fields (found {n})"),
            });
        }
        let bad = |column: &str, value: &str, expected: &str| Error::BadValue {
            path: path.clone(),
            line,
            column: column.into(),
            value: value.into(),
            expected: expected.into(),
        };
        let name = fields[0].trim().to_string();
        let subject: i64 = fields[3].trim().parse().map_err(|_| bad("Patient ID", fields[3], "an integer id"))?;
        let raw = nih_findings(fields[1])
            .ok_or_else(|| bad("Finding Labels", fields[1], "`|`-joined NIH findings or No Finding"))?;
        let age = nih_age(fields[4]);
        invalid_ages += usize::from(age.is_none());
        let split = if test.contains(&name) {
            "test"
        } else if train_val.contains(&name) {
            train_or_validate(cfg.seed, subject, cfg.validate_fraction)
        } else {
            unlisted += 1;
            continue;
        };
        let image = nih_image(&name, &index, &cfg.root);
        let gender = fields[5].trim();
        rows.push(Row {
            id: name,
            image,
            subject,
            split,
            sex: matches!(gender, "M" | "F").then(|| gender.to_string()),
            age,
            view: Some(fields[6].trim().to_string()).filter(|v| !v.is_empty()),
            frontal_lateral: None,
            raw,
        });
    }
    Ok((rows, vec![path, tv_path, test_path], unlisted, invalid_ages))
}

/// The 14 NIH labels of a `Finding Labels` field (`|`-joined findings or `No Finding`): 1 for
/// a listed finding, else 0; `None` for an unknown finding.
fn nih_findings(field: &str) -> Option<Vec<Option<f64>>> {
    let mut raw = vec![Some(0.0); NIH_LABELS.len()];
    for f in field.split('|').map(str::trim).filter(|f| *f != "No Finding") {
        raw[NIH_LABELS.iter().position(|l| *l == f)?] = Some(1.0);
    }
    Some(raw)
}

/// The image of an `Image Index` entry, found through `index` (file name -> path under
/// `root`); invalid when the name is not a plain file name or no such file exists.
fn nih_image(name: &str, index: &HashMap<String, String>, root: &Path) -> ImageRow {
    let invalid = |path: String, why: String| ImageRow { id: name.to_string(), path, invalid: Some(why) };
    if name.contains(['/', '\\']) || name.contains("..") || name.is_empty() {
        return invalid(name.to_string(), format!("image name {name:?} is not a file name"));
    }
    match index.get(name) {
        Some(rel) => ImageRow { id: name.to_string(), path: rel.clone(), invalid: paths::inside(root, rel).err() },
        None => invalid(format!("images/{name}"), "image file not found under images/ or images_NNN/images/".into()),
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
            let (rows, csvs, base) = chexpert_rows(cfg)?;
            (rows, csvs, base, 0, 0)
        }
        EvalKind::Nih => {
            let (rows, files, unlisted, invalid) = nih_rows(cfg)?;
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
    let outcome = build::finish(&job, progress, &mut |kept, rejected, version| {
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
