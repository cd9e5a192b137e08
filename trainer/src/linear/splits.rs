//! The evaluation splits of a dataset: images (in memory, or streamed when larger than
//! memory), labels under an uncertainty policy
//! (matched by name), and the metadata the reports colour embeddings by.

use std::path::Path;

use cxr_dataset::Split;
use cxr_dataset::shard::{SUBJECT_INDEX, split_code};

use super::ProbeUncertain;
use crate::data::{Dataset, ImageSource, Images};
use crate::metrics::{BootstrapUnit, Clusters};
use crate::{Error, Result};

/// One split of an evaluation dataset: images, labels (NaN = left out) and the
/// metadata the reports colour embeddings by.
#[derive(Debug, Clone)]
pub struct SplitData {
    pub images: Images,
    /// `[n, labels]`.
    pub labels: Vec<f32>,
    /// Per row: sex (1 male, 0 female, NaN unknown), age in years, view name.
    pub meta: Vec<(f32, f32, String)>,
    /// Per row: the patient ([`SUBJECT_INDEX`]); `None` in datasets built before the column.
    pub subjects: Option<Vec<u32>>,
}

impl SplitData {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The clusters the bootstrap resamples on these rows; patients need the dataset's
    /// [`SUBJECT_INDEX`] column (`dir` names the dataset in the error).
    pub fn clusters(&self, unit: BootstrapUnit, dir: &Path) -> Result<Clusters> {
        Clusters::new(unit, self.len(), self.subjects.as_deref()).ok_or_else(|| Error::Dataset {
            path: dir.to_path_buf(),
            message: format!(
                "no {SUBJECT_INDEX:?} column, so the bootstrap cannot resample patients: rebuild the dataset with this \
                 pipeline (a new version), or pass --bootstrap-unit image"
            ),
        })
    }
}

/// Loads the `splits` of `ds` with the labels `names` (matched by name to the dataset's
/// labels; a name the dataset lacks is an all-NaN column) under the `uncertain` policy, plus
/// the feature columns `extra` (in `images.columns`; e.g. an EHR vector). Returns one
/// [`SplitData`] per split, in order.
pub fn load_splits(
    ds: &Dataset,
    names: &[String],
    uncertain: ProbeUncertain,
    splits: &[Split],
    extra: &[String],
) -> Result<Vec<SplitData>> {
    let available = ds.feature_columns()?;
    let has = |c: &str| available.iter().any(|a| a == c);
    let raw_policy = uncertain.policy();
    // Column of each requested label in the dataset (by name), if any.
    let mut columns = vec!["split".to_string()];
    let mut label_at = Vec::new();
    for name in names {
        let pos = ds.labels.iter().position(|l| l.eq_ignore_ascii_case(name));
        let col = pos.map(|p| {
            let built = ds.label_columns[p].clone();
            if raw_policy.is_some() { format!("raw_{built}") } else { built }
        });
        match col {
            Some(c) if has(&c) => {
                label_at.push(Some(columns.len()));
                columns.push(c);
            }
            Some(c) => {
                return Err(Error::Dataset {
                    path: ds.dir.clone(),
                    message: format!("no column {c:?} for label {name:?} (--uncertain {})", uncertain.name()),
                });
            }
            None => label_at.push(None),
        }
    }
    let sex_col = has("sex_male").then(|| {
        columns.push("sex_male".into());
        columns.len() - 1
    });
    let age_col = has("age").then(|| {
        columns.push("age".into());
        columns.len() - 1
    });
    let subject_col = has(SUBJECT_INDEX).then(|| {
        columns.push(SUBJECT_INDEX.into());
        columns.len() - 1
    });
    let views: Vec<(usize, String)> = available
        .iter()
        .filter(|c| c.starts_with("view_") && *c != "view_imputed")
        .map(|c| {
            columns.push(c.clone());
            (columns.len() - 1, c["view_".len()..].to_string())
        })
        .collect();
    columns.extend(extra.iter().cloned());
    let all = ds.load(&[], &columns, ImageSource::Auto)?;
    let mut out = Vec::new();
    for split in splits {
        let code = split_code(split.as_str());
        let rows: Vec<usize> = (0..all.len()).filter(|&i| Some(all.feature_row(i)[0]) == code).collect();
        let mut labels = Vec::with_capacity(rows.len() * names.len());
        let mut meta = Vec::with_capacity(rows.len());
        for &i in &rows {
            let f = all.feature_row(i);
            for at in &label_at {
                let v = at.map_or(f32::NAN, |c| f[c]);
                labels.push(match raw_policy {
                    // A raw value: 1, 0, -1 or blank (NaN); an ignored label is NaN.
                    Some(p) => p.resolve((!v.is_nan()).then_some(f64::from(v))).unwrap_or(f32::NAN),
                    None => v,
                });
            }
            let view = views.iter().find(|(c, _)| f[*c] > 0.5).map(|(_, n)| n.clone()).unwrap_or_default();
            meta.push((sex_col.map_or(f32::NAN, |c| f[c]), age_col.map_or(f32::NAN, |c| f[c]), view));
        }
        let subjects = subject_col.map(|c| rows.iter().map(|&i| all.feature_row(i)[c] as u32).collect());
        out.push(SplitData { images: all.subset(&rows)?, labels, meta, subjects });
    }
    Ok(out)
}
