//! The run folder's state files: `checkpoint.json` (where a run stands, for `--resume`) and
//! `best.json` (the epoch with the lowest mean loss), written atomically.

use std::path::Path;

use crate::{Error, Result};

/// Where a run stands: written atomically as `checkpoint.json` after the model and optimizer
/// files it names, so a run killed at any point resumes from a consistent state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub dataset_version: String,
    /// Steps done.
    pub step: usize,
    /// Epoch and batch index within it of the next step.
    pub epoch: usize,
    pub batch: usize,
    /// NaN (`null` in the file) before the first step.
    #[serde(deserialize_with = "f32_or_nan")]
    pub first_loss: f32,
    pub model: String,
    pub optimizer: String,
}

/// An `f32` that JSON wrote as `null` (NaN has no JSON form) reads back as NaN.
fn f32_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(<Option<f32> as serde::Deserialize>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// Name of the checkpoint state file in a run folder.
pub const CHECKPOINT: &str = "checkpoint.json";

/// The epoch with the lowest mean training loss so far, whose model is kept as
/// [`BEST_MODEL`] (the checkpoint the reference evaluates); written as `best.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BestCheckpoint {
    pub epoch: usize,
    /// Steps done at the end of that epoch.
    pub step: usize,
    pub mean_loss: f32,
    pub model: String,
}

/// File names of [`BestCheckpoint`] and its model in a run folder.
pub const BEST: &str = "best.json";
pub const BEST_MODEL: &str = "best-model.bpk";

/// Which pretraining checkpoint an evaluation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointChoice {
    /// The end of the epoch with the lowest mean training loss (the reference's choice);
    /// runs without `best.json` (imported, or stopped within the first epoch) fall back to
    /// the last checkpoint.
    LowestLoss,
    /// The last checkpoint.
    Last,
}

/// Reads a run's lowest-loss checkpoint, if it has one.
pub fn read_best(run: &Path) -> Result<Option<BestCheckpoint>> {
    let path = run.join(BEST);
    match fs_err::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| Error::input(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(cxr_dataset::files::write_atomic(path, bytes)?)
}

/// Reads a run's checkpoint state.
pub fn read_checkpoint(run: &Path) -> Result<Checkpoint> {
    let path = run.join(CHECKPOINT);
    let text = fs_err::read_to_string(&path)
        .map_err(|e| Error::input(&path, format!("no checkpoint to resume from ({e})")))?;
    serde_json::from_str(&text).map_err(|e| Error::input(&path, e))
}
