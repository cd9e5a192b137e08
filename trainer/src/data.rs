//! A dataset version built by `pipeline`, as the trainer sees it: the manifest (verified
//! against every shard's sha256 before use), and the image shards with their feature columns.
//! The trainer never reads Parquet: the shards carry the numeric columns it needs.

use std::path::{Path, PathBuf};

use cxr_dataset::Split;
use cxr_dataset::shard::{Shard, split_code};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// An opened, verified dataset version.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    /// The content-addressed version id.
    pub version: String,
    /// `mimic-cxr`, `chexpert` or `nih`.
    pub kind: String,
    /// Label names and their columns, from the manifest's `task`.
    pub labels: Vec<String>,
    pub label_columns: Vec<String>,
    /// Image shard files (relative to `dir`) and their rows.
    pub shards: Vec<(String, usize)>,
}

/// Images of one split in memory, with the selected feature columns.
#[derive(Debug, Clone)]
pub struct Images {
    pub side: usize,
    /// `[n, side, side]` bytes.
    pub pixels: Vec<u8>,
    /// `[n, columns.len()]`.
    pub features: Vec<f32>,
    pub columns: Vec<String>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.side * self.side).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.side * self.side;
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn feature_row(&self, i: usize) -> &[f32] {
        let f = self.columns.len();
        &self.features[i * f..(i + 1) * f]
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = fs_err::File::open(path).map_err(|e| Error::Dataset { path: path.into(), message: e.to_string() })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Dataset {
    /// Opens `dir` (an `OUT/<version>` folder), checking every image shard against the sha256
    /// in its manifest; a dataset that does not verify is refused.
    pub fn open(dir: &Path) -> Result<Self> {
        let bad = |message: String| Error::Dataset { path: dir.to_path_buf(), message };
        let text = fs_err::read_to_string(dir.join("manifest.json"))
            .map_err(|e| bad(format!("no readable manifest.json ({e}); is this an OUT/<version> folder?")))?;
        let m: Value = serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
        let version = m["dataset_version"].as_str().ok_or_else(|| bad("manifest without dataset_version".into()))?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        let (labels, label_columns) = match m.get("task") {
            Some(t) => (strings(&t["labels"]), strings(&t["label_columns"])),
            None => (
                cxr_dataset::LABELS.iter().map(|s| s.to_string()).collect(),
                (0..14).map(cxr_dataset::label_column).collect(),
            ),
        };
        let mut shards = Vec::new();
        for part in m["parts"].as_array().cloned().unwrap_or_default() {
            let Some(file) = part["images"].as_str() else {
                return Err(bad("a part without image shards; build the dataset with images".into()));
            };
            let sha = sha256_file(&dir.join(file))?;
            if Some(sha.as_str()) != part["images_sha256"].as_str() {
                return Err(bad(format!(
                    "{file}: sha256 {sha} differs from the manifest; the dataset does not verify"
                )));
            }
            shards.push((file.to_string(), part["rows"].as_u64().unwrap_or(0) as usize));
        }
        if shards.is_empty() {
            return Err(bad("the manifest lists no image shards".into()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            version: version.to_string(),
            kind: m["task"]["dataset"].as_str().unwrap_or("mimic-cxr").to_string(),
            labels,
            label_columns,
            shards,
        })
    }

    /// The feature columns the shards carry.
    pub fn feature_columns(&self) -> Result<Vec<String>> {
        Ok(self.read_shard(0)?.feature_names)
    }

    fn read_shard(&self, i: usize) -> Result<Shard> {
        let path = self.dir.join(&self.shards[i].0);
        let f = fs_err::File::open(&path).map_err(|e| Error::Dataset { path: path.clone(), message: e.to_string() })?;
        Shard::read(std::io::BufReader::new(f)).map_err(|e| Error::Dataset { path, message: e.to_string() })
    }

    /// Loads the images of `splits` (all when empty) with the feature `columns`; an unknown
    /// column is an error listing the available ones.
    pub fn load(&self, splits: &[Split], columns: &[String]) -> Result<Images> {
        let mut out = Images { side: 0, pixels: Vec::new(), features: Vec::new(), columns: columns.to_vec() };
        let codes: Vec<f32> = splits.iter().filter_map(|s| split_code(s.as_str())).collect();
        for i in 0..self.shards.len() {
            let shard = self.read_shard(i)?;
            if shard.height != shard.width {
                return Err(Error::Dataset { path: self.dir.clone(), message: "images are not square".into() });
            }
            out.side = shard.height;
            let index = |name: &str| shard.feature_names.iter().position(|n| n == name);
            let mut cols = Vec::new();
            for c in columns {
                cols.push(index(c).ok_or_else(|| Error::Dataset {
                    path: self.dir.join(&self.shards[i].0),
                    message: format!("no column {c:?}; the dataset has: {}", shard.feature_names.join(", ")),
                })?);
            }
            let split = index("split");
            for r in 0..shard.len() {
                let row = shard.feature_row(r);
                if !codes.is_empty() && !split.is_some_and(|s| codes.contains(&row[s])) {
                    continue;
                }
                out.pixels.extend_from_slice(shard.image(r));
                out.features.extend(cols.iter().map(|&c| row[c]));
            }
        }
        Ok(out)
    }
}
