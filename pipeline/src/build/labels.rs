//! Labels and splits (DATA.md section 6): every image inherits its study's 14 labels, raw and
//! resolved by the uncertainty policy; the split is the official one, a custom file or a
//! seeded patient-level re-split; no subject may be in two splits.

use std::collections::HashMap;
use std::path::Path;

use cxr_dataset::{LABELS, Uncertain, label_column, raw_label_column};
use polars::prelude::*;

use crate::rng;
use crate::{Error, Result};

/// Which report labeller's table to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Labeler {
    /// `mimic-cxr-2.0.0-chexpert.csv.gz`.
    Chexpert,
    /// `mimic-cxr-2.0.0-negbio.csv.gz`.
    Negbio,
}

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

fn ints(df: &DataFrame, name: &str) -> Result<Vec<Option<i64>>> {
    let c = df.column(name).map_err(pe(name))?.cast(&DataType::Int64).map_err(pe(name))?;
    Ok(c.i64().map_err(pe(name))?.iter().collect())
}

/// Images whose study has no row in the label table: the reference drops them (its merge);
/// they are unlabelled, not negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlabeled {
    Drop,
    /// Kept with null raw labels and null targets.
    Keep,
}

impl Unlabeled {
    pub fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Keep => "keep (null labels)",
        }
    }
}

/// Adds `raw_label_*` and `label_*` columns from a label table (read with the chexpert or
/// negbio schema) joined on its key, `subject_id` and `study_id`. Returns the frame and the number of images whose
/// study has no label row, which are dropped or kept with null labels as `unlabeled` says.
pub fn attach_labels(
    df: &DataFrame,
    labels: &DataFrame,
    policy: Uncertain,
    unlabeled: Unlabeled,
) -> Result<(DataFrame, usize)> {
    let studies: Vec<(Option<i64>, Option<i64>)> =
        ints(labels, "subject_id")?.into_iter().zip(ints(labels, "study_id")?).collect();
    let mut values: Vec<Vec<Option<f64>>> = Vec::with_capacity(14);
    for name in LABELS {
        let c = labels.column(name).map_err(pe(name))?.f64().map_err(pe(name))?;
        values.push(c.iter().collect());
    }
    // The label table's key (subject_id, study_id) is unique: checked when it was read.
    let mut row_of: HashMap<(i64, i64), usize> = HashMap::with_capacity(studies.len());
    for (r, key) in studies.iter().enumerate() {
        if let (Some(p), Some(s)) = key {
            row_of.insert((*p, *s), r);
        }
    }
    let image_study = ints(df, "subject_id")?.into_iter().zip(ints(df, "study_id")?);
    let rows: Vec<Option<usize>> = image_study
        .map(|key| match key {
            (Some(p), Some(s)) => row_of.get(&(p, s)).copied(),
            _ => None,
        })
        .collect();
    let missing = rows.iter().filter(|r| r.is_none()).count();
    let mut out = df.clone();
    for (k, vals) in values.iter().enumerate() {
        let raw: Vec<Option<f64>> = rows.iter().map(|r| r.and_then(|r| vals[r])).collect();
        let target: Vec<Option<f32>> = rows.iter().zip(&raw).map(|(r, v)| r.and_then(|_| policy.resolve(*v))).collect();
        out.with_column(Column::new(raw_label_column(k).into(), raw)).map_err(pe("labels"))?;
        out.with_column(Column::new(label_column(k).into(), target)).map_err(pe("labels"))?;
    }
    if unlabeled == Unlabeled::Drop && missing > 0 {
        let mask: BooleanChunked = rows.iter().map(|r| Some(r.is_some())).collect();
        out = out.filter(&mask).map_err(pe("unlabelled images"))?;
    }
    Ok((out, missing))
}

/// Where the split comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitSource {
    /// `mimic-cxr-2.0.0-split.csv.gz`.
    Official,
    /// A CSV with `subject_id,split` or `dicom_id,split`.
    File(std::path::PathBuf),
    /// Seeded patient-level re-split with train/validate/test fractions.
    Resplit { seed: u64, fractions: [f64; 3] },
}

impl SplitSource {
    /// The source as the version id hashes it: a split file by its content (hashed with the
    /// tables), not by where it lies.
    pub fn describe(&self) -> String {
        match self {
            Self::Official => "official".into(),
            Self::File(_) => "file (its content is hashed with the tables)".into(),
            Self::Resplit { seed, fractions } => format!("resplit(seed={seed}, fractions={fractions:?})"),
        }
    }
}

const SPLITS: [&str; 3] = ["train", "validate", "test"];

/// Random stream of the seeded re-split.
const RESPLIT_STREAM: u64 = 0x5917;

/// A split value other than train, validate or test, named by file and line.
fn check_split_value(value: &str, path: &Path, line: usize, column: &str) -> Result<()> {
    if SPLITS.contains(&value) {
        return Ok(());
    }
    Err(Error::BadValue {
        path: path.to_path_buf(),
        line,
        column: column.to_string(),
        value: value.to_string(),
        expected: "a split: train, validate or test".into(),
    })
}

/// Adds a `split` column. `official` is the split table (read with its schema) and its path
/// when the source is [`SplitSource::Official`].
pub fn attach_split(df: &DataFrame, source: &SplitSource, official: Option<(&DataFrame, &Path)>) -> Result<DataFrame> {
    let dicoms = df.column("dicom_id").map_err(pe("dicom_id"))?.str().map_err(pe("dicom_id"))?;
    let subjects = ints(df, "subject_id")?;
    let code = |s: &str| SPLITS.iter().copied().find(|c| *c == s);
    let split: Vec<&'static str> = match source {
        SplitSource::Official => {
            let (t, path) = official.ok_or_else(|| Error::Config("the official split file was not found".into()))?;
            let keys = t.column("dicom_id").map_err(pe("dicom_id"))?.str().map_err(pe("dicom_id"))?;
            let values = t.column("split").map_err(pe("split"))?.str().map_err(pe("split"))?;
            let mut map: HashMap<&str, &'static str> = HashMap::with_capacity(t.height());
            for (row, (k, v)) in keys.iter().zip(values.iter()).enumerate() {
                let v = v.unwrap_or("");
                // Line 1 is the header.
                check_split_value(v, path, row + 2, "split")?;
                if let (Some(k), Some(c)) = (k, code(v)) {
                    map.insert(k, c);
                }
            }
            dicoms
                .iter()
                .map(|d| {
                    let d = d.unwrap_or("");
                    map.get(d).copied().ok_or_else(|| {
                        Error::Config(format!(
                            "image {d} has no row in {}; pass --split-file or --resplit",
                            path.display()
                        ))
                    })
                })
                .collect::<Result<_>>()?
        }
        SplitSource::File(path) => {
            let dicoms: Vec<&str> = dicoms.iter().map(|d| d.unwrap_or("")).collect();
            custom_split(path, &dicoms, &subjects)?.iter().map(|s| code(s).unwrap_or("train")).collect()
        }
        SplitSource::Resplit { seed, fractions } => subjects
            .iter()
            .map(|s| {
                let mut r = rng::Rng::derive(*seed, RESPLIT_STREAM, s.unwrap_or(0) as u64);
                SPLITS[r.weighted(fractions)]
            })
            .collect(),
    };
    let mut out = df.clone();
    out.with_column(Column::new("split".into(), split)).map_err(pe("split"))?;
    Ok(out)
}

fn custom_split(path: &Path, dicoms: &[&str], subjects: &[Option<i64>]) -> Result<Vec<String>> {
    let mut r = csv::Reader::from_path(path).map_err(|e| Error::csv(path, e))?;
    let header: Vec<String> = r.headers().map_err(|e| Error::csv(path, e))?.iter().map(str::to_string).collect();
    let key = ["dicom_id", "subject_id"]
        .into_iter()
        .find(|k| header.iter().any(|h| h == k))
        .ok_or_else(|| Error::MissingColumn { path: path.to_path_buf(), column: "dicom_id or subject_id".into() })?;
    let ki = header.iter().position(|h| h == key).unwrap_or(0);
    let si = header
        .iter()
        .position(|h| h == "split")
        .ok_or_else(|| Error::MissingColumn { path: path.to_path_buf(), column: "split".into() })?;
    let mut map = HashMap::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| Error::csv(path, e))?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let split = rec.get(si).unwrap_or("");
        check_split_value(split, path, line, "split")?;
        let k = rec.get(ki).unwrap_or("").to_string();
        match map.entry(k) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((split.to_string(), line));
            }
            std::collections::hash_map::Entry::Occupied(e) if e.get().0 == split => {}
            std::collections::hash_map::Entry::Occupied(e) => {
                return Err(Error::DuplicateKey {
                    path: path.to_path_buf(),
                    key: format!("{key}={}", e.key()),
                    first: e.get().1,
                    second: line,
                    difference: format!("column split: {:?} then {split:?}", e.get().0),
                });
            }
        }
    }
    let mut out = Vec::with_capacity(dicoms.len());
    for (d, s) in dicoms.iter().zip(subjects) {
        let k = if key == "dicom_id" { d.to_string() } else { s.map(|s| s.to_string()).unwrap_or_default() };
        out.push(
            map.get(&k).map(|(s, _)| s.clone()).ok_or_else(|| Error::input(path, format!("no split for {key} {k}")))?,
        );
    }
    Ok(out)
}

/// Fails when a subject has images in two splits, naming up to five such subjects.
pub fn check_leakage(df: &DataFrame) -> Result<()> {
    let subjects = ints(df, "subject_id")?;
    let split = df.column("split").map_err(pe("split"))?;
    let split = split.str().map_err(pe("split"))?;
    // One bit per split a subject has images in.
    let mut seen: HashMap<i64, u8> = HashMap::new();
    for (s, sp) in subjects.iter().zip(split.iter()) {
        if let (Some(s), Some(bit)) = (s, sp.and_then(|sp| SPLITS.iter().position(|c| *c == sp))) {
            *seen.entry(*s).or_default() |= 1 << bit;
        }
    }
    let mut leaking: Vec<i64> = seen.iter().filter(|(_, v)| v.count_ones() > 1).map(|(k, _)| *k).collect();
    leaking.sort_unstable();
    if leaking.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = leaking.iter().take(5).map(i64::to_string).collect();
    Err(Error::Config(format!(
        "split leakage: {} subject(s) have images in more than one split (e.g. {})",
        leaking.len(),
        shown.join(", ")
    )))
}
