//! Image shards: safetensors files holding the tensor `images`, `u8 [N, H, W]`, whose rows
//! are in the same order as the matching Parquet part of the feature table, and (from the
//! pipeline) the tensor `features`, `f32 [N, F]`: the numeric columns of those rows (EHR
//! encodings, labels, split code, [`SUBJECT_INDEX`]; null as NaN), named in order by the metadata entry
//! `feature_columns` (a JSON list). The trainer reads only shards; Python, PyTorch and numpy
//! users read them with any safetensors reader.
//!
//! Layout: an 8-byte little-endian header length, a JSON header padded with spaces to a
//! multiple of 8 bytes, then the data: `features` first (so its f32 values are aligned), then
//! the pixel bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Name of the image tensor in every shard.
pub const TENSOR: &str = "images";

/// Name of the feature tensor.
pub const FEATURES: &str = "features";

/// Metadata key listing the feature columns (a JSON array of names).
pub const FEATURE_COLUMNS: &str = "feature_columns";

/// Feature column holding each row's patient as a dense index (0, 1, ... in order of first
/// appearance in the feature table): the unit of the trainer's patient-level bootstrap. A
/// dense index, not `subject_id` itself, because f32 holds integers exactly only up to 2^24
/// and MIMIC's subject ids reach 19,999,999.
pub const SUBJECT_INDEX: &str = "subject_index";

/// Code of each split in the `split` feature column.
pub fn split_code(split: &str) -> Option<f32> {
    match split {
        "train" => Some(0.0),
        "validate" => Some(1.0),
        "test" => Some(2.0),
        _ => None,
    }
}

/// What can go wrong reading or writing a shard.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not an image shard: {0}")]
    Format(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// A shard in memory: `n` images of `height x width` bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
    /// Free-form string metadata (e.g. dataset version, dicom ids are in the Parquet part).
    pub metadata: BTreeMap<String, String>,
    /// Names of the feature columns (empty: no `features` tensor).
    pub feature_names: Vec<String>,
    /// `[N, F]` row-major, F = `feature_names.len()`.
    pub features: Vec<f32>,
}

impl Shard {
    pub fn new(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            pixels: Vec::new(),
            metadata: BTreeMap::new(),
            feature_names: Vec::new(),
            features: Vec::new(),
        }
    }

    /// Feature row `i`.
    pub fn feature_row(&self, i: usize) -> &[f32] {
        let f = self.feature_names.len();
        &self.features[i * f..(i + 1) * f]
    }

    /// Appends one image and its feature row (`feature_names.len()` values).
    pub fn push_with_features(&mut self, image: &[u8], features: &[f32]) -> Result<(), ShardError> {
        if features.len() != self.feature_names.len() {
            return Err(ShardError::Format(format!(
                "{} feature values for {} columns",
                features.len(),
                self.feature_names.len()
            )));
        }
        self.push(image)?;
        self.features.extend_from_slice(features);
        Ok(())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.height * self.width).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Image `i` as `height * width` bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Appends one image; it must have `height * width` bytes.
    pub fn push(&mut self, image: &[u8]) -> Result<(), ShardError> {
        if image.len() != self.height * self.width {
            return Err(ShardError::Format(format!(
                "image of {} bytes in a shard of {}x{} images",
                image.len(),
                self.height,
                self.width
            )));
        }
        self.pixels.extend_from_slice(image);
        Ok(())
    }

    /// Serialises to safetensors bytes.
    pub fn write(&self, mut w: impl Write) -> Result<(), ShardError> {
        let feature_bytes = 4 * self.features.len();
        let info = TensorInfo {
            dtype: "U8".into(),
            shape: vec![self.len(), self.height, self.width],
            data_offsets: [feature_bytes, feature_bytes + self.pixels.len()],
        };
        fn json(v: &impl Serialize) -> Result<serde_json::Value, ShardError> {
            serde_json::to_value(v).map_err(|e| ShardError::Format(e.to_string()))
        }
        let mut header = serde_json::Map::new();
        header.insert(TENSOR.into(), json(&info)?);
        let mut metadata = self.metadata.clone();
        if !self.feature_names.is_empty() {
            let features = TensorInfo {
                dtype: "F32".into(),
                shape: vec![self.len(), self.feature_names.len()],
                data_offsets: [0, feature_bytes],
            };
            header.insert(FEATURES.into(), json(&features)?);
            metadata.insert(FEATURE_COLUMNS.into(), json(&self.feature_names)?.to_string());
        }
        if !metadata.is_empty() {
            header.insert("__metadata__".into(), json(&metadata)?);
        }
        let mut text = serde_json::to_vec(&header).map_err(|e| ShardError::Format(e.to_string()))?;
        while text.len() % 8 != 0 {
            text.push(b' ');
        }
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(&text)?;
        let mut floats = Vec::with_capacity(feature_bytes);
        for v in &self.features {
            floats.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&floats)?;
        w.write_all(&self.pixels)?;
        Ok(())
    }

    /// Reads a shard written by [`Shard::write`] (or any safetensors file with a `U8` rank-3
    /// tensor named `images`).
    pub fn read(mut r: impl Read) -> Result<Self, ShardError> {
        let head = Self::read_head(&mut r)?;
        let mut pixels = vec![0u8; head.rows * head.height * head.width];
        r.read_exact(&mut pixels)?;
        let ShardHead { height, width, metadata, feature_names, features, .. } = head;
        Ok(Self { height, width, pixels, metadata, feature_names, features })
    }

    /// Reads everything of a shard but its pixels (the header and the feature rows, which come
    /// first in the file), leaving `r` at the first image; [`ShardHead::pixels_offset`] says
    /// where that is, for reading images one at a time.
    pub fn read_head(r: &mut impl Read) -> Result<ShardHead, ShardError> {
        let mut len = [0u8; 8];
        r.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(ShardError::Format(format!("header of {len} bytes")));
        }
        let mut text = vec![0u8; len as usize];
        r.read_exact(&mut text)?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&text).map_err(|e| ShardError::Format(format!("header: {e}")))?;
        let info: TensorInfo = header
            .get(TENSOR)
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ShardError::Format(format!("tensor {TENSOR}: {e}")))?
            .ok_or_else(|| ShardError::Format(format!("no tensor {TENSOR:?}")))?;
        let [n, h, w] = info.shape[..] else {
            return Err(ShardError::Format(format!("shape {:?} is not [N, H, W]", info.shape)));
        };
        let [start, end] = info.data_offsets;
        if info.dtype != "U8" || end.checked_sub(start) != Some(n * h * w) {
            return Err(ShardError::Format(format!("dtype {} with offsets {:?}", info.dtype, info.data_offsets)));
        }
        let mut metadata: BTreeMap<String, String> = header
            .get("__metadata__")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ShardError::Format(format!("metadata: {e}")))?
            .unwrap_or_default();
        let feature_names: Vec<String> = match metadata.remove(FEATURE_COLUMNS) {
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| ShardError::Format(format!("{FEATURE_COLUMNS}: {e}")))?
            }
            None => Vec::new(),
        };
        let features_info: Option<TensorInfo> = header
            .get(FEATURES)
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ShardError::Format(format!("tensor {FEATURES}: {e}")))?;
        let feature_bytes = match &features_info {
            Some(fi) => {
                let want = 4 * n * feature_names.len();
                if fi.dtype != "F32" || fi.data_offsets != [0, want] || start != want {
                    return Err(ShardError::Format(format!(
                        "features: dtype {} offsets {:?} for {n} rows of {} columns",
                        fi.dtype,
                        fi.data_offsets,
                        feature_names.len()
                    )));
                }
                want
            }
            None if start == 0 => 0,
            None => return Err(ShardError::Format(format!("images start at {start} with no features tensor"))),
        };
        let mut floats = vec![0u8; feature_bytes];
        r.read_exact(&mut floats)?;
        let features = floats.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let feature_names = if feature_bytes == 0 && n > 0 { Vec::new() } else { feature_names };
        let pixels_offset = 8 + len + start as u64;
        Ok(ShardHead { rows: n, height: h, width: w, metadata, feature_names, features, pixels_offset })
    }
}

/// A shard without its pixels ([`Shard::read_head`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardHead {
    /// Number of images.
    pub rows: usize,
    pub height: usize,
    pub width: usize,
    pub metadata: BTreeMap<String, String>,
    pub feature_names: Vec<String>,
    /// `[rows, F]` row-major.
    pub features: Vec<f32>,
    /// Byte offset of image 0 in the file; image `i` is `height * width` bytes at
    /// `pixels_offset + i * height * width`.
    pub pixels_offset: u64,
}

impl ShardHead {
    /// Feature row `i`.
    pub fn feature_row(&self, i: usize) -> &[f32] {
        let f = self.feature_names.len();
        &self.features[i * f..(i + 1) * f]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_follows_the_safetensors_layout() {
        let mut s = Shard::new(2, 3);
        s.push(&[1, 2, 3, 4, 5, 6]).unwrap();
        s.push(&[7, 8, 9, 10, 11, 12]).unwrap();
        s.metadata.insert("dataset_version".into(), "abc".into());
        assert!(s.push(&[1]).is_err());
        let mut bytes = Vec::new();
        s.write(&mut bytes).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert!(header.contains(r#""images":{"data_offsets":[0,12],"dtype":"U8","shape":[2,2,3]}"#), "{header}");
        assert_eq!(&bytes[8 + n..], &s.pixels[..]);
        let back = Shard::read(&bytes[..]).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.image(1), &[7, 8, 9, 10, 11, 12]);
        let head = Shard::read_head(&mut &bytes[..]).unwrap();
        assert_eq!((head.rows, head.height, head.width), (2, 2, 3));
        let at = head.pixels_offset as usize + 6;
        assert_eq!(&bytes[at..at + 6], &[7, 8, 9, 10, 11, 12]);
        assert!(Shard::read(&bytes[..bytes.len() - 1]).is_err(), "truncated");
    }

    #[test]
    fn features_travel_with_the_images() {
        let mut s = Shard::new(1, 2);
        s.feature_names = vec!["sex_male".into(), "label_edema".into()];
        s.push_with_features(&[1, 2], &[1.0, f32::NAN]).unwrap();
        s.push_with_features(&[3, 4], &[0.0, 1.0]).unwrap();
        assert!(s.push_with_features(&[5, 6], &[0.0]).is_err());
        let mut bytes = Vec::new();
        s.write(&mut bytes).unwrap();
        let back = Shard::read(&bytes[..]).unwrap();
        assert_eq!(back.feature_names, s.feature_names);
        assert_eq!(back.feature_row(1), &[0.0, 1.0]);
        assert!(back.feature_row(0)[1].is_nan());
        assert_eq!(back.image(1), &[3, 4]);
        let head = Shard::read_head(&mut &bytes[..]).unwrap();
        assert_eq!(head.feature_row(1), &[0.0, 1.0]);
        let at = head.pixels_offset as usize;
        assert_eq!(&bytes[at..], &[1, 2, 3, 4]);
        // Any safetensors reader sees both tensors.
        let t = crate::tensors::parse(&bytes).unwrap();
        assert_eq!(t["features"].shape, vec![2, 2]);
        assert_eq!(t["images"].to_i64().unwrap(), vec![1, 2, 3, 4]);
    }
}
