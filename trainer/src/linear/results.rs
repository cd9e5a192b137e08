//! What a linear evaluation writes: `results.json` ([`LinearEvalResult`]) and its Markdown,
//! `metrics.jsonl` lines ([`EpochMetrics`]) and `test-scores.json` ([`TestScores`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ProbeKind;
use crate::metrics::{BootstrapUnit, Clusters, Evaluation};
use crate::{Error, Result};

/// The test split's probe outputs, saved as `test-scores.json` (for paired comparisons).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestScores {
    pub labels: Vec<String>,
    /// `[rows, labels]` sigmoid outputs.
    pub scores: Vec<f32>,
    /// `[rows, labels]`; `None` = left out.
    pub targets: Vec<Option<f32>>,
    /// Per row, its patient (the dataset's subject index); `None` when the dataset has none.
    #[serde(default)]
    pub subjects: Option<Vec<u32>>,
}

/// File name of [`TestScores`] in a linear-evaluation folder.
pub const TEST_SCORES: &str = "test-scores.json";

impl TestScores {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(TEST_SCORES);
        let text = fs_err::read_to_string(&path)?;
        serde_json::from_str(&text).map_err(|e| Error::input(&path, e))
    }

    pub fn targets_f32(&self) -> Vec<f32> {
        self.targets.iter().map(|v| v.unwrap_or(f32::NAN)).collect()
    }

    /// The clusters a paired bootstrap on these rows resamples (`dir`: where the scores were
    /// read, for the error).
    pub fn clusters(&self, unit: BootstrapUnit, dir: &Path) -> Result<Clusters> {
        let rows = self.targets.len() / self.labels.len().max(1);
        Clusters::new(unit, rows, self.subjects.as_deref()).ok_or_else(|| {
            Error::input(
                &dir.join(TEST_SCORES),
                "no patient of each row, so a paired bootstrap cannot resample patients: evaluate again on a \
                 dataset built by this pipeline, or pass --bootstrap-unit image",
            )
        })
    }
}

/// One line of the probe's `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub validate_macro_auroc: Option<f64>,
}

/// One strength on the logistic probe's regularisation path (a `metrics.jsonl` line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CPoint {
    /// Inverse regularisation strength (scikit-learn's `C`).
    pub c: f64,
    /// Mean binary cross-entropy on the training rows.
    pub train_loss: f64,
    pub validate_macro_auroc: Option<f64>,
    /// The most L-BFGS iterations any label took.
    pub max_iterations: usize,
    /// Whether every label met the gradient tolerance.
    pub converged: bool,
}

/// An external test set's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalResult {
    pub dataset: String,
    pub version: String,
    pub kind: String,
    /// Probe labels the external dataset has no column for.
    pub unmatched_labels: Vec<String>,
    pub test: Evaluation,
}

/// What `linear-eval` writes as `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearEvalResult {
    pub encoder: serde_json::Value,
    pub dataset: String,
    pub dataset_version: String,
    pub dataset_kind: String,
    pub config: serde_json::Value,
    pub labels: Vec<String>,
    /// The classifier that ran.
    pub probe: ProbeKind,
    pub train_rows: usize,
    pub validate_rows: usize,
    pub test_rows: usize,
    /// SGD probe: epochs run and the best-validation epoch.
    pub epochs_run: Option<usize>,
    pub best_epoch: Option<usize>,
    /// Logistic probe: the strength chosen on validation, and every strength tried.
    pub chosen_c: Option<f64>,
    pub regularization: Option<Vec<CPoint>>,
    pub best_validate_macro_auroc: Option<f64>,
    pub test: Evaluation,
    pub external: Vec<ExternalResult>,
    pub seconds: f64,
}

impl LinearEvalResult {
    /// One sentence on how the classifier was chosen.
    pub fn probe_summary(&self) -> String {
        let auc = self.best_validate_macro_auroc.map_or("undefined".into(), |a| format!("{a:.4}"));
        match (self.probe, self.chosen_c, self.epochs_run, self.best_epoch) {
            (ProbeKind::Logistic, Some(c), _, _) => format!(
                "logistic regression per label on standardised features (L-BFGS to convergence), C = {c:.0e} of {} \
                 strengths chosen on validation macro AUROC {auc}",
                self.regularization.as_ref().map_or(0, Vec::len)
            ),
            (kind, _, Some(run), Some(best)) => {
                let on = if kind == ProbeKind::Paper { " on augmented images (the paper's protocol)" } else { "" };
                format!(
                    "linear head trained by Adam{on}, {run} epochs run, best validation macro AUROC {auc} at epoch {best}"
                )
            }
            _ => format!("best validation macro AUROC {auc}"),
        }
    }

    /// The results as Markdown: settings, the test table, each external table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Linear evaluation\n\nEncoder: `{}`  \nDataset: `{}` ({}, version {})  \n\
             Probe: {} training images ({}% of the split), {} validation, {} test; {}.\n\n## Test ({})\n\n",
            self.encoder,
            self.dataset,
            self.dataset_kind,
            self.dataset_version,
            self.train_rows,
            self.config["fraction"].as_f64().unwrap_or(1.0) * 100.0,
            self.validate_rows,
            self.test_rows,
            self.probe_summary(),
            self.dataset_kind,
        );
        s += &self.test.markdown();
        for e in &self.external {
            s += &format!("\n## External test: {} (version {})\n\n", e.kind, e.version);
            if !e.unmatched_labels.is_empty() {
                s += &format!("Labels the dataset lacks (undefined): {}.\n\n", e.unmatched_labels.join(", "));
            }
            s += &e.test.markdown();
        }
        s
    }
}
