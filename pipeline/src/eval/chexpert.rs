//! CheXpert (DATA.md section 3) as an evaluation dataset: `train.csv` / `valid.csv`, labels
//! read by name, paths relative to the parent of `CheXpert-v1.0-small/`.

use std::path::{Path, PathBuf};

use cxr_dataset::LABELS;

use super::{EvalConfig, Row, parse_label, train_or_validate};
use crate::images::ImageRow;
use crate::sources::paths;
use crate::{Error, Result};

/// The CheXpert folder name.
pub const CHEXPERT_DIR: &str = "CheXpert-v1.0-small";

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

pub(super) fn rows(cfg: &EvalConfig) -> Result<(Vec<Row>, Vec<PathBuf>, PathBuf)> {
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
