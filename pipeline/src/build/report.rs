//! The cohort report: how many images each step kept, and the distribution and missingness
//! of every raw variable, as JSON and Markdown.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Counts of a categorical variable, `(missing)` for nulls.
pub type Counts = BTreeMap<String, usize>;

/// Summary of a numeric variable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Numeric {
    pub count: usize,
    pub missing: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Rows per split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SplitCount {
    pub images: usize,
    pub subjects: usize,
}

/// The cohort at each step of the build.
/// Serialised (with its table-stage counts, before [`Cohort::finish`]) into a build plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cohort {
    /// Exact duplicate rows dropped from the input tables, per table that had any.
    pub duplicate_rows: Vec<crate::sources::ingest::Duplicates>,
    pub images_read: usize,
    /// Images without a StudyTime (a null `study_datetime`; linked to nothing under
    /// `--match datetime`).
    pub missing_study_time: usize,
    pub subjects_read: usize,
    /// Images whose study has no label row (dropped unless `--keep-unlabeled`).
    pub unlabeled_images: usize,
    pub dropped_unlabeled: usize,
    pub dropped_missing_sex: usize,
    /// Sex recorded as something other than M or F.
    pub dropped_other_sex: usize,
    pub dropped_rare_view: usize,
    /// Rare views kept (`--keep-rare-views`), flagged in `view_other`.
    pub kept_rare_view: usize,
    pub dropped_missing_scan: usize,
    pub rejected_images: usize,
    pub images_out: usize,
    pub linked_admission: usize,
    pub linked_icu: usize,
    pub splits: BTreeMap<String, SplitCount>,
    pub categorical: BTreeMap<String, Counts>,
    pub numeric: BTreeMap<String, Numeric>,
}

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

fn text_values(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    let c = df.column(name).map_err(pe(name))?.cast(&DataType::String).map_err(pe(name))?;
    Ok(c.str().map_err(pe(name))?.iter().map(|v| v.map(str::to_string)).collect())
}

fn counts(values: &[Option<String>]) -> Counts {
    let mut c = Counts::new();
    for v in values {
        *c.entry(v.clone().unwrap_or_else(|| "(missing)".into())).or_default() += 1;
    }
    c
}

fn numeric(df: &DataFrame, name: &str) -> Result<Numeric> {
    let c = df.column(name).map_err(pe(name))?.cast(&DataType::Float64).map_err(pe(name))?;
    let vals: Vec<Option<f64>> = c.f64().map_err(pe(name))?.iter().collect();
    let present: Vec<f64> = vals.iter().flatten().copied().collect();
    let n = present.len();
    Ok(Numeric {
        count: n,
        missing: vals.len() - n,
        mean: if n > 0 { present.iter().sum::<f64>() / n as f64 } else { f64::NAN },
        min: present.iter().copied().fold(f64::INFINITY, f64::min),
        max: present.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

impl Cohort {
    /// Starts the report from the linked table before any filter.
    pub fn new(images_read: usize, linked: &DataFrame) -> Result<Self> {
        let subjects = linked.column("subject_id").map_err(pe("subject_id"))?.n_unique().map_err(pe("subject_id"))?;
        Ok(Self { images_read, subjects_read: subjects, ..Self::default() })
    }

    /// Fills the output counts and distributions from the final table.
    pub fn finish(&mut self, df: &DataFrame) -> Result<()> {
        self.images_out = df.height();
        self.linked_admission = df.height() - df.column("hadm_id").map_err(pe("hadm_id"))?.null_count();
        self.linked_icu = df.height() - df.column("stay_id").map_err(pe("stay_id"))?.null_count();
        let split = text_values(df, "split")?;
        let subject = text_values(df, "subject_id")?;
        let mut subjects: BTreeMap<String, std::collections::HashSet<String>> = BTreeMap::new();
        for (s, sub) in split.iter().zip(&subject) {
            let s = s.clone().unwrap_or_default();
            self.splits.entry(s.clone()).or_default().images += 1;
            subjects.entry(s).or_default().insert(sub.clone().unwrap_or_default());
        }
        for (s, set) in subjects {
            self.splits.entry(s).or_default().subjects = set.len();
        }
        for name in ["sex", "race", "view", "orientation", "died_in_stay", "icu_stay", "match_rule"] {
            self.categorical.insert(name.into(), counts(&text_values(df, name)?));
        }
        for name in ["age", "icu_los"] {
            self.numeric.insert(name.into(), numeric(df, name)?);
        }
        Ok(())
    }

    /// The report as JSON; `config` is the settings' text ([`crate::build::BuildConfig::describe`]).
    pub fn to_json(&self, version: &str, config: &str) -> Result<String> {
        #[derive(Serialize)]
        struct Doc<'a> {
            dataset_version: &'a str,
            config: String,
            cohort: &'a Cohort,
        }
        serde_json::to_string_pretty(&Doc { dataset_version: version, config: config.to_string(), cohort: self })
            .map_err(Error::from)
    }

    /// The report as Markdown; `config` as for [`Cohort::to_json`].
    pub fn to_markdown(&self, version: &str, config: &str) -> String {
        let mut s = format!("# Cohort report, dataset {version}\n\n## Config\n\n```\n{config}```\n\n");
        s.push_str("## Rows at each step\n\n| step | images |\n|---|---|\n");
        let steps = [
            ("images read", self.images_read),
            ("subjects read", self.subjects_read),
            ("images without a StudyTime (unlinked under --match datetime)", self.missing_study_time),
            ("images whose study has no label row", self.unlabeled_images),
            ("dropped: study has no label row (unlabelled)", self.dropped_unlabeled),
            ("dropped: missing sex", self.dropped_missing_sex),
            ("dropped: sex other than M/F", self.dropped_other_sex),
            ("dropped: rare view", self.dropped_rare_view),
            ("kept: rare view, encoded as view_other (--keep-rare-views)", self.kept_rare_view),
            ("dropped: missing view/orientation (drop policy)", self.dropped_missing_scan),
            ("rejected: image unreadable or unusable (see rejects.parquet)", self.rejected_images),
            ("images out", self.images_out),
            ("linked to an admission", self.linked_admission),
            ("linked to an ICU stay", self.linked_icu),
        ];
        for (k, v) in steps {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        if !self.duplicate_rows.is_empty() {
            s.push_str("\n## Duplicate rows dropped from the inputs\n\n| table | key | rows |\n|---|---|---|\n");
            for d in &self.duplicate_rows {
                s.push_str(&format!("| {} | {} | {} |\n", d.file, d.key.join(" + "), d.rows));
            }
        }
        s.push_str("\n## Splits\n\n| split | images | subjects |\n|---|---|---|\n");
        for (k, v) in &self.splits {
            s.push_str(&format!("| {k} | {} | {} |\n", v.images, v.subjects));
        }
        s.push_str("\n## Variables\n");
        for (name, c) in &self.categorical {
            s.push_str(&format!("\n### {name}\n\n| value | images |\n|---|---|\n"));
            for (k, v) in c {
                s.push_str(&format!("| {k} | {v} |\n"));
            }
        }
        s.push_str("\n| variable | count | missing | mean | min | max |\n|---|---|---|---|---|---|\n");
        for (name, n) in &self.numeric {
            s.push_str(&format!(
                "| {name} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
                n.count, n.missing, n.mean, n.min, n.max
            ));
        }
        s
    }
}
