//! Image shards: safetensors files holding one tensor `images`, `u8 [N, H, W]`, whose rows
//! are in the same order as the matching Parquet part of the feature table. Any safetensors
//! reader (Python `safetensors`, numpy via the header) can read them.
//!
//! Layout: an 8-byte little-endian header length, a JSON header
//! `{"images":{"dtype":"U8","shape":[N,H,W],"data_offsets":[0,N*H*W]},"__metadata__":{..}}`
//! padded with spaces to a multiple of 8 bytes, then the pixel bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Name of the tensor in every shard.
pub const TENSOR: &str = "images";

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
    /// Free-form string metadata (e.g. dataset version, dicom ids are in the Parquet part).
    pub metadata: BTreeMap<String, String>,
}

impl Shard {
    pub fn new(height: usize, width: usize) -> Self {
        Self { height, width, pixels: Vec::new(), metadata: BTreeMap::new() }
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
        let info = TensorInfo {
            dtype: "U8".into(),
            shape: vec![self.len(), self.height, self.width],
            data_offsets: [0, self.pixels.len()],
        };
        let mut header = serde_json::Map::new();
        header.insert(TENSOR.into(), serde_json::to_value(&info).map_err(|e| ShardError::Format(e.to_string()))?);
        if !self.metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(&self.metadata).map_err(|e| ShardError::Format(e.to_string()))?,
            );
        }
        let mut text = serde_json::to_vec(&header).map_err(|e| ShardError::Format(e.to_string()))?;
        while text.len() % 8 != 0 {
            text.push(b' ');
        }
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(&text)?;
        w.write_all(&self.pixels)?;
        Ok(())
    }

    /// Reads a shard written by [`Shard::write`] (or any safetensors file with a `U8` rank-3
    /// tensor named `images`).
    pub fn read(mut r: impl Read) -> Result<Self, ShardError> {
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
        if info.dtype != "U8" || info.data_offsets != [0, n * h * w] {
            return Err(ShardError::Format(format!("dtype {} with offsets {:?}", info.dtype, info.data_offsets)));
        }
        let metadata = header
            .get("__metadata__")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ShardError::Format(format!("metadata: {e}")))?
            .unwrap_or_default();
        let mut pixels = vec![0u8; n * h * w];
        r.read_exact(&mut pixels)?;
        Ok(Self { height: h, width: w, pixels, metadata })
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
        assert!(Shard::read(&bytes[..bytes.len() - 1]).is_err(), "truncated");
    }
}
