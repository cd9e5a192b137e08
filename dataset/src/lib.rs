//! The dataset contract shared by `pipeline` (which writes datasets) and `trainer` (which
//! reads them). It is deliberately small and dependency-free, so the trainer never links the
//! ETL stack and the pipeline never links the deep-learning stack.
//!
//! What lives here:
//! - [`LABELS`]: the 14 CheXpert labels in MIMIC-CXR column order, [`Uncertain`] (what an
//!   uncertain label becomes) and [`Split`];
//! - [`features`]: the catalog of EHR variables, their groups and the exact encoded column
//!   names a built dataset carries (DATA.md section 5), plus the `--ehr` selection syntax;
//! - [`files`]: the manifest's name, atomic writes and sha256 digests; [`manifest`]: the
//!   typed manifest the pipeline writes and the trainer reads;
//! - [`shard`] and [`tensors`]: the image shard format;
//! - [`log`]: how both binaries report (log lines, progress, events; human, quiet or JSON).
//!
//! ```
//! use cxr_dataset::features::EhrSelection;
//! let sel: EhrSelection = "demographics,scan".parse().unwrap();
//! assert_eq!(sel.columns()[..3], ["sex_male", "sex_female", "age_norm"]);
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod features;
pub mod files;
pub mod log;
pub mod manifest;
pub mod shard;
mod split;
pub mod tensors;

pub use split::{ParseSplitError, Split};

/// The 14 CheXpert labels, in the column order of `mimic-cxr-2.0.0-chexpert.csv.gz`.
pub const LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
];

/// Index of a label name in [`LABELS`] (exact, case-sensitive match).
pub fn label_index(name: &str) -> Option<usize> {
    LABELS.iter().position(|l| *l == name)
}

fn snake(label: &str) -> String {
    label.to_lowercase().replace([' ', '-'], "_")
}

/// Dataset column of the resolved 0/1 training target of label `i` (`label_no_finding`);
/// null where the uncertainty policy says to ignore the label.
pub fn label_column(i: usize) -> String {
    label_column_of(LABELS[i])
}

/// Dataset column of the raw label value of label `i` (`raw_label_no_finding`): 1, 0, -1 or
/// null (not mentioned / no label row).
pub fn raw_label_column(i: usize) -> String {
    raw_label_column_of(LABELS[i])
}

/// Resolved-label column of any label name, in any dataset (`Pleural_Thickening` ->
/// `label_pleural_thickening`). Datasets with the same label share the column name, which is
/// how a probe trained on one is tested on another.
pub fn label_column_of(label: &str) -> String {
    format!("label_{}", snake(label))
}

/// Raw-label column of any label name (`raw_label_<snake>`).
pub fn raw_label_column_of(label: &str) -> String {
    format!("raw_label_{}", snake(label))
}

/// How an uncertain (-1) CheXpert label becomes a target: at build time (`pipeline build
/// --uncertain`, recorded in the manifest) or again at evaluation from the raw columns
/// (`trainer linear-eval --uncertain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Uncertain {
    /// U-zeros (the reference): negative.
    Zeros,
    /// U-ones: positive.
    Ones,
    /// Left out of the loss and the metrics (a null target).
    Ignore,
}

impl Uncertain {
    pub fn name(self) -> &'static str {
        match self {
            Self::Zeros => "zeros",
            Self::Ones => "ones",
            Self::Ignore => "ignore",
        }
    }

    /// The target of a raw label value (1, 0, -1; `None` = blank, not mentioned, negative);
    /// `None` for an ignored uncertain label.
    pub fn resolve(self, raw: Option<f64>) -> Option<f32> {
        match raw {
            Some(v) if v > 0.5 => Some(1.0),
            Some(v) if v < -0.5 => match self {
                Self::Zeros => Some(0.0),
                Self::Ones => Some(1.0),
                Self::Ignore => None,
            },
            _ => Some(0.0),
        }
    }
}

/// The 14 findings of NIH ChestX-ray14, in the order of its paper.
pub const NIH_LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Positive stays positive, blank and 0 are negative; -1 follows the policy.
    #[test]
    fn uncertain_labels_follow_the_policy() {
        for policy in [Uncertain::Zeros, Uncertain::Ones, Uncertain::Ignore] {
            assert_eq!(policy.resolve(Some(1.0)), Some(1.0), "{policy:?}");
            assert_eq!(policy.resolve(Some(0.0)), Some(0.0), "{policy:?}");
            assert_eq!(policy.resolve(None), Some(0.0), "{policy:?}");
        }
        assert_eq!(Uncertain::Zeros.resolve(Some(-1.0)), Some(0.0));
        assert_eq!(Uncertain::Ones.resolve(Some(-1.0)), Some(1.0));
        assert_eq!(Uncertain::Ignore.resolve(Some(-1.0)), None);
        let names: Vec<String> = [Uncertain::Zeros, Uncertain::Ones, Uncertain::Ignore]
            .iter()
            .map(|u| serde_json::to_string(u).unwrap())
            .collect();
        assert_eq!(names, ["\"zeros\"", "\"ones\"", "\"ignore\""]);
    }
}
