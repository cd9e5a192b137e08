//! A dataset version built by `pipeline`, as the trainer sees it: the manifest (verified
//! against every shard's sha256 before use), and the image shards with their feature columns.
//! The trainer never reads Parquet: the shards carry the numeric columns it needs.

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cxr_dataset::Split;
use cxr_dataset::manifest::Manifest;
use cxr_dataset::shard::{Shard, ShardHead, split_code};

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

/// Where the images' bytes are.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// `[n, side, side]` bytes in memory.
    Memory(Vec<u8>),
    /// Read from the shard files when needed (datasets larger than memory): per image, the
    /// index of its file and its byte offset there.
    Files { files: Vec<Arc<Mutex<fs_err::File>>>, rows: Vec<(usize, u64)> },
}

/// How [`Dataset::load`] holds the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// In memory.
    Memory,
    /// Read from the shard files image by image as batches need them ([`Pixels::Files`]):
    /// datasets larger than memory.
    Stream,
    /// In memory when they take at most half of the memory available now, else streamed.
    Auto,
}

/// Images of one split, with the selected feature columns (always in memory).
#[derive(Debug, Clone)]
pub struct Images {
    pub side: usize,
    pub pixels: Pixels,
    /// `[n, columns.len()]`.
    pub features: Vec<f32>,
    pub columns: Vec<String>,
}

impl Images {
    /// Images held in memory: `pixels` is `[n, side, side]`, `features` `[n, columns.len()]`.
    pub fn in_memory(side: usize, pixels: Vec<u8>, features: Vec<f32>, columns: Vec<String>) -> Self {
        Self { side, pixels: Pixels::Memory(pixels), features, columns }
    }

    pub fn len(&self) -> usize {
        match &self.pixels {
            Pixels::Memory(p) => p.len() / (self.side * self.side).max(1),
            Pixels::Files { rows, .. } => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the pixels are read from the shard files.
    pub fn is_streamed(&self) -> bool {
        matches!(self.pixels, Pixels::Files { .. })
    }

    /// Image `i`, `side * side` bytes (read from its shard when streamed).
    pub fn image(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let n = self.side * self.side;
        match &self.pixels {
            Pixels::Memory(p) => Ok(Cow::Borrowed(&p[i * n..(i + 1) * n])),
            Pixels::Files { files, rows } => {
                let (file, offset) = rows[i];
                let mut buf = vec![0u8; n];
                let mut f = files[file].lock().map_err(|_| Error::Internal("an image reader panicked".into()))?;
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(&mut buf)?;
                Ok(Cow::Owned(buf))
            }
        }
    }

    pub fn feature_row(&self, i: usize) -> &[f32] {
        let f = self.columns.len();
        &self.features[i * f..(i + 1) * f]
    }

    /// The images `rows` (indices into these), with the same columns; streamed images stay
    /// streamed.
    pub fn subset(&self, rows: &[usize]) -> Result<Self> {
        let pixels = match &self.pixels {
            Pixels::Memory(_) => {
                let mut p = Vec::with_capacity(rows.len() * self.side * self.side);
                for &i in rows {
                    p.extend_from_slice(&self.image(i)?);
                }
                Pixels::Memory(p)
            }
            Pixels::Files { files, rows: all } => {
                Pixels::Files { files: files.clone(), rows: rows.iter().map(|&i| all[i]).collect() }
            }
        };
        let features = rows.iter().flat_map(|&i| self.feature_row(i).iter().copied()).collect();
        Ok(Self { side: self.side, pixels, features, columns: self.columns.clone() })
    }
}

/// Memory available now (Linux `MemAvailable`), bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn sha256_file(path: &Path) -> Result<String> {
    cxr_dataset::files::sha256_file(path).map_err(|e| Error::Dataset { path: path.into(), message: e.to_string() })
}

impl Dataset {
    /// Opens `dir` (an `OUT/<version>` folder), checking every image shard against the sha256
    /// in its manifest; a dataset that does not verify is refused.
    pub fn open(dir: &Path) -> Result<Self> {
        let bad = |message: String| Error::Dataset { path: dir.to_path_buf(), message };
        let m = Manifest::read(dir).map_err(bad)?;
        let (labels, label_columns) = match &m.task {
            Some(t) => (t.labels.clone(), t.label_columns.clone()),
            None => (
                cxr_dataset::LABELS.iter().map(|s| s.to_string()).collect(),
                (0..14).map(cxr_dataset::label_column).collect(),
            ),
        };
        let mut shards = Vec::new();
        for part in &m.parts {
            let Some(file) = &part.images else {
                return Err(bad("a part without image shards; build the dataset with images".into()));
            };
            let sha = sha256_file(&dir.join(file))?;
            if Some(&sha) != part.images_sha256.as_ref() {
                return Err(bad(format!(
                    "{file}: sha256 {sha} differs from the manifest; the dataset does not verify"
                )));
            }
            shards.push((file.clone(), part.rows));
        }
        if shards.is_empty() {
            return Err(bad("the manifest lists no image shards".into()));
        }
        let kind = m.task.as_ref().map_or("mimic-cxr", |t| t.dataset.as_str()).to_string();
        Ok(Self { dir: dir.to_path_buf(), version: m.dataset_version, kind, labels, label_columns, shards })
    }

    /// The feature columns the shards carry.
    pub fn feature_columns(&self) -> Result<Vec<String>> {
        Ok(self.read_head(0)?.0.feature_names)
    }

    /// The columns an EHR selection reads from this dataset: its variables' columns and the
    /// optional ones this build made (`view_unknown`, `view_other`, `orientation_unknown`).
    pub fn ehr_columns(&self, selection: &cxr_dataset::features::EhrSelection) -> Result<Vec<String>> {
        if selection.is_none() {
            return Ok(Vec::new());
        }
        Ok(selection.columns_in(&self.feature_columns()?))
    }

    /// Shard `i`'s header and features, and the open file positioned at its first image.
    fn read_head(&self, i: usize) -> Result<(ShardHead, fs_err::File)> {
        let path = self.dir.join(&self.shards[i].0);
        let mut f =
            fs_err::File::open(&path).map_err(|e| Error::Dataset { path: path.clone(), message: e.to_string() })?;
        let head = Shard::read_head(&mut std::io::BufReader::new(&mut f))
            .map_err(|e| Error::Dataset { path, message: e.to_string() })?;
        Ok((head, f))
    }

    /// Checks that the EHR `columns` are finite in every row of `splits` (all when empty): the
    /// first NaN or infinite value is an error naming the column, the shard and the row
    /// (the same row of the same-numbered features part). Reads every shard's features: call
    /// it to locate a value already found non-finite, or before loading only those columns.
    pub fn require_finite(&self, splits: &[Split], columns: &[String]) -> Result<()> {
        if columns.is_empty() {
            return Ok(());
        }
        let codes: Vec<f32> = splits.iter().filter_map(|s| split_code(s.as_str())).collect();
        for i in 0..self.shards.len() {
            let (head, _) = self.read_head(i)?;
            let index = |name: &str| head.feature_names.iter().position(|n| n == name);
            let split = index("split");
            for c in columns {
                let Some(k) = index(c) else { continue };
                for r in 0..head.rows {
                    let row = head.feature_row(r);
                    let selected = codes.is_empty() || split.is_some_and(|s| codes.contains(&row[s]));
                    if selected && !row[k].is_finite() {
                        return Err(Error::Dataset {
                            path: self.dir.clone(),
                            message: format!(
                                "EHR column {c:?} is {} in row {r} of {}; the EHR vector must be finite: leave the \
                                 column out of --ehr, or rebuild the dataset so that it is filled",
                                row[k], self.shards[i].0
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Loads the images of `splits` (all when empty) with the feature `columns`, held as
    /// `source` says; an unknown column is an error listing the available ones.
    pub fn load(&self, splits: &[Split], columns: &[String], source: ImageSource) -> Result<Images> {
        let codes: Vec<f32> = splits.iter().filter_map(|s| split_code(s.as_str())).collect();
        let (mut side, mut features, mut rows, mut files) = (0, Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.shards.len() {
            let path = self.dir.join(&self.shards[i].0);
            let (head, file) = self.read_head(i)?;
            if head.height != head.width || (side != 0 && head.height != side) {
                return Err(Error::Dataset {
                    path,
                    message: "images are not square, or differ in size between shards".into(),
                });
            }
            side = head.height;
            let index = |name: &str| head.feature_names.iter().position(|n| n == name);
            let mut cols = Vec::new();
            for c in columns {
                cols.push(index(c).ok_or_else(|| Error::Dataset {
                    path: path.clone(),
                    message: format!("no column {c:?}; the dataset has: {}", head.feature_names.join(", ")),
                })?);
            }
            let split = index("split");
            let bytes = (side * side) as u64;
            for r in 0..head.rows {
                let row = head.feature_row(r);
                if !codes.is_empty() && !split.is_some_and(|s| codes.contains(&row[s])) {
                    continue;
                }
                rows.push((files.len(), head.pixels_offset + r as u64 * bytes));
                features.extend(cols.iter().map(|&c| row[c]));
            }
            files.push(Arc::new(Mutex::new(file)));
        }
        let total = rows.len() as u64 * (side * side) as u64;
        let stream = match source {
            ImageSource::Memory => false,
            ImageSource::Stream => true,
            ImageSource::Auto => available_memory().is_some_and(|m| total > m / 2),
        };
        let pixels = if stream {
            Pixels::Files { files, rows }
        } else {
            Pixels::Memory(read_runs(&files, &rows, side * side, total as usize)?)
        };
        Ok(Images { side, pixels, features, columns: columns.to_vec() })
    }
}

/// The images at `rows` (file, byte offset), `bytes` each, read with one seek and read per run
/// of consecutive images in a file (a whole shard is one read when every row is selected).
fn read_runs(files: &[Arc<Mutex<fs_err::File>>], rows: &[(usize, u64)], bytes: usize, total: usize) -> Result<Vec<u8>> {
    let mut pixels = vec![0u8; total];
    let mut i = 0;
    while i < rows.len() {
        let (file, start) = rows[i];
        let mut n = 1;
        while rows.get(i + n).is_some_and(|&(f, o)| f == file && o == start + (n * bytes) as u64) {
            n += 1;
        }
        let mut f = files[file].lock().map_err(|_| Error::Internal("an image reader panicked".into()))?;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut pixels[i * bytes..(i + n) * bytes])?;
        i += n;
    }
    Ok(pixels)
}
