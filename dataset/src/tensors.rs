//! Reading any safetensors file (F32, F64, I64, U8 tensors): the golden reference cases, and
//! weights exported from PyTorch. The format: an 8-byte little-endian header length, a JSON
//! header `{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {..}}`, then the data.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::shard::ShardError;

#[derive(Debug, Deserialize)]
struct Info {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// One tensor: its dtype name as in the file (`F32`, `I64`, ...), shape and raw little-endian
/// bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as `f32` (from F32 or F64; integers converted).
    pub fn to_f32(&self) -> Result<Vec<f32>, ShardError> {
        Ok(match self.dtype.as_str() {
            "F32" => self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            "F64" => self.to_f64()?.into_iter().map(|v| v as f32).collect(),
            "I64" => self.to_i64()?.into_iter().map(|v| v as f32).collect(),
            "U8" => self.bytes.iter().map(|&b| f32::from(b)).collect(),
            other => return Err(ShardError::Format(format!("cannot read {other} as f32"))),
        })
    }

    /// The values as `f64` (F64 or F32).
    pub fn to_f64(&self) -> Result<Vec<f64>, ShardError> {
        Ok(match self.dtype.as_str() {
            "F64" => self
                .bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            "F32" => self.to_f32()?.into_iter().map(f64::from).collect(),
            other => return Err(ShardError::Format(format!("cannot read {other} as f64"))),
        })
    }

    /// The values as `i64` (I64, I32 or U8).
    pub fn to_i64(&self) -> Result<Vec<i64>, ShardError> {
        Ok(match self.dtype.as_str() {
            "I64" => self
                .bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            "I32" => {
                self.bytes.chunks_exact(4).map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
            }
            "U8" => self.bytes.iter().map(|&b| i64::from(b)).collect(),
            other => return Err(ShardError::Format(format!("cannot read {other} as i64"))),
        })
    }
}

/// Every tensor of a safetensors file, by name.
pub fn read(path: &Path) -> Result<BTreeMap<String, RawTensor>, ShardError> {
    let bytes = std::fs::read(path).map_err(|e| ShardError::Format(format!("{}: {e}", path.display())))?;
    parse(&bytes).map_err(|e| ShardError::Format(format!("{}: {e}", path.display())))
}

/// Every tensor of safetensors bytes, by name.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>, ShardError> {
    let bad = |m: &str| ShardError::Format(m.to_string());
    let head: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("shorter than 8 bytes"))?;
    let n = usize::try_from(u64::from_le_bytes(head)).map_err(|_| bad("header length overflows"))?;
    let header = bytes.get(8..8usize.saturating_add(n)).ok_or_else(|| bad("header runs past the end"))?;
    let data = &bytes[8 + n..];
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| bad(&format!("header is not JSON: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, value) in map {
        if name == "__metadata__" {
            continue;
        }
        let info: Info = serde_json::from_value(value).map_err(|e| bad(&format!("tensor {name}: {e}")))?;
        let [a, b] = info.data_offsets;
        let raw = data.get(a..b).ok_or_else(|| bad(&format!("tensor {name}: data offsets {a}..{b} out of range")))?;
        out.insert(name, RawTensor { dtype: info.dtype, shape: info.shape, bytes: raw.to_vec() });
    }
    Ok(out)
}

/// Safetensors bytes of `tensors` (name, shape, `F32` values), in name order.
pub fn to_bytes(tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<Vec<u8>, ShardError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, (shape, values)) in tensors {
        if shape.iter().product::<usize>() != values.len() {
            return Err(ShardError::Format(format!(
                "tensor {name}: shape {shape:?} holds not {} values",
                values.len()
            )));
        }
        let end = offset + 4 * values.len();
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut text = serde_json::to_vec(&header).map_err(|e| ShardError::Format(e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + text.len() + offset);
    bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&text);
    for (_, values) in tensors.values() {
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tensors_read_back() {
        let mut t = BTreeMap::new();
        t.insert("w".to_string(), (vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        t.insert("b".to_string(), (vec![1], vec![-0.5]));
        let back = parse(&to_bytes(&t).unwrap()).unwrap();
        assert_eq!(back["w"].shape, vec![2, 3]);
        assert_eq!(back["w"].to_f32().unwrap(), t["w"].1);
        assert_eq!(back["b"].to_f32().unwrap(), vec![-0.5]);
        t.insert("bad".to_string(), (vec![2], vec![1.0]));
        assert!(to_bytes(&t).is_err());
    }

    #[test]
    fn reads_f32_and_i64_tensors() {
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},"__metadata__":{"x":"y"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        bytes.extend_from_slice(&(-2.0f32).to_le_bytes());
        bytes.extend_from_slice(&7i64.to_le_bytes());
        let t = parse(&bytes).unwrap();
        assert_eq!(t["a"].to_f32().unwrap(), vec![1.5, -2.0]);
        assert_eq!(t["b"].to_i64().unwrap(), vec![7]);
        assert!(parse(&bytes[..20]).is_err());
    }
}
