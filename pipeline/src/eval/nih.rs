//! NIH ChestX-ray14 (DATA.md section 4) as an evaluation dataset: the quirks of
//! `Data_Entry_2017*.csv`, the official patient-disjoint lists, images under `images/` or
//! `images_NNN/images/`, its own 14 findings.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use cxr_dataset::NIH_LABELS;

use super::{EvalConfig, Row, train_or_validate};
use crate::images::ImageRow;
use crate::sources::paths;
use crate::{Error, Result};

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
pub(super) fn rows(cfg: &EvalConfig) -> Result<(Vec<Row>, Vec<PathBuf>, usize, usize)> {
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
