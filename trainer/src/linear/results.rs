//! What a linear evaluation writes: `results.json` ([`LinearEvalResult`]) and its Markdown,
//! `metrics.jsonl` lines ([`EpochMetrics`]) and `test-scores.json` ([`TestScores`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::Evaluation;
use crate::{Error, Result};

/// The test split's probe outputs, saved as `test-scores.json` (for paired comparisons).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestScores {
    pub labels: Vec<String>,
    /// `[rows, labels]` sigmoid outputs.
    pub scores: Vec<f32>,
    /// `[rows, labels]`; `None` = left out.
    pub targets: Vec<Option<f32>>,
}

/// File name of [`TestScores`] in a linear-evaluation folder.
pub const TEST_SCORES: &str = "test-scores.json";

impl TestScores {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(TEST_SCORES);
        let text = fs_err::read_to_string(&path)?;
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn targets_f32(&self) -> Vec<f32> {
        self.targets.iter().map(|v| v.unwrap_or(f32::NAN)).collect()
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
    pub train_rows: usize,
    pub validate_rows: usize,
    pub test_rows: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_validate_macro_auroc: Option<f64>,
    pub test: Evaluation,
    pub external: Vec<ExternalResult>,
    pub seconds: f64,
}

impl LinearEvalResult {
    /// The results as Markdown: settings, the test table, each external table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Linear evaluation\n\nEncoder: `{}`  \nDataset: `{}` ({}, version {})  \n\
             Probe: {} training images ({}% of the split), {} validation, {} test; {} epochs run, \
             best validation macro AUROC {} at epoch {}.\n\n## Test ({})\n\n",
            self.encoder,
            self.dataset,
            self.dataset_kind,
            self.dataset_version,
            self.train_rows,
            self.config["fraction"].as_f64().unwrap_or(1.0) * 100.0,
            self.validate_rows,
            self.test_rows,
            self.epochs_run,
            self.best_validate_macro_auroc.map_or("undefined".into(), |a| format!("{a:.4}")),
            self.best_epoch,
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
