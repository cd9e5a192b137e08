//! The manifest of a dataset version (`OUT/<version>/manifest.json`), typed: the pipeline
//! writes it through [`Manifest`] and the trainer reads it through the same type. Every field
//! but the version id has a default, so manifests of older builds (and hand-written test
//! datasets) still read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::files::MANIFEST;

/// A version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub dataset_version: String,
    /// Hash of the declared input schemas (MIMIC builds).
    #[serde(default)]
    pub schema_hash: String,
    #[serde(default)]
    pub pipeline_version: String,
    /// sha256 of the data-producing source files of the pipeline that built it.
    #[serde(default)]
    pub code_digest: String,
    /// The settings, as `key=value` lines.
    #[serde(default)]
    pub config: String,
    /// Which dataset and labels; absent in the oldest manifests (MIMIC-CXR's 14 labels).
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default)]
    pub images: Option<ImagesInfo>,
    #[serde(default)]
    pub counts: Counts,
    /// File name of the rejects table.
    #[serde(default)]
    pub rejects: String,
    /// One entry per unit: a feature part and its image shard, in table order.
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// The dataset's task: its name, id column and labels (the trainer matches labels across
/// datasets by these names).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    pub dataset: String,
    pub id_column: String,
    pub labels: Vec<String>,
    pub label_columns: Vec<String>,
    pub raw_label_columns: Vec<String>,
}

impl Task {
    /// The task of `dataset` with these labels, under the contract's column names.
    pub fn new(dataset: &str, id_column: &str, labels: &[&str]) -> Self {
        Self {
            dataset: dataset.into(),
            id_column: id_column.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            label_columns: labels.iter().map(|l| crate::label_column_of(l)).collect(),
            raw_label_columns: labels.iter().map(|l| crate::raw_label_column_of(l)).collect(),
        }
    }
}

/// How the images were made.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImagesInfo {
    pub source: String,
    /// Height and width.
    pub size: [usize; 2],
    pub dtype: String,
    /// Name of the image tensor in the shards.
    pub tensor: String,
    /// Folder of the shards.
    pub dir: String,
    pub preprocessing: String,
}

/// Row counts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub images_read: usize,
    pub rows: usize,
    pub rejected: usize,
}

/// One unit of a version: its feature part and (unless table-only) its image shard.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Part {
    pub features: String,
    pub features_sha256: String,
    pub rows: usize,
    pub images: Option<String>,
    pub images_sha256: Option<String>,
    pub images_bytes: Option<u64>,
}

impl Manifest {
    /// Reads `dir/manifest.json`; the error says what is wrong and where.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: not readable ({e}); is this an OUT/<version> folder?", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_manifest_reads_with_defaults_and_round_trips() {
        let m: Manifest = serde_json::from_str(
            r#"{"dataset_version": "abc", "parts": [{"images": "images/part-00000.safetensors", "rows": 3}]}"#,
        )
        .unwrap();
        assert_eq!((m.dataset_version.as_str(), m.parts[0].rows, m.task.as_ref()), ("abc", 3, None));
        assert_eq!(m.parts[0].images_sha256, None);
        let full = Manifest { task: Some(Task::new("mimic-cxr", "dicom_id", &crate::LABELS)), ..m };
        assert_eq!(full.task.as_ref().unwrap().label_columns[9], "label_pleural_effusion");
        let back: Manifest = serde_json::from_str(&full.to_json().unwrap()).unwrap();
        assert_eq!(back, full);
        assert!(serde_json::from_str::<Manifest>(r#"{"parts": []}"#).is_err(), "the version id is required");
    }
}
