//! Importing a PyTorch checkpoint of the reference code (a Lightning `.ckpt` whose
//! `state_dict` holds the target encoder as `backbone.*`, torchvision's ViT layout), or a
//! safetensors file of the same names, as a run folder `linear-eval --checkpoint` reads.
//!
//! Every tensor the ViT needs must be there with its shape, and every tensor under the prefix
//! must be one the ViT uses (the classification head `heads.*` excepted): otherwise the import
//! fails listing the missing and unexpected names.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use cxr_dataset::features::EhrSelection;
use cxr_dataset::tensors::RawTensor;
use sha2::{Digest, Sha256};

use crate::model::VitConfig;
use crate::model::fusion::{FusionShape, MsnNet};
use crate::pretrain::{CHECKPOINT, Checkpoint, PretrainConfig};
use crate::rng::Rng;
use crate::weights::{StateDict, load_vit, vit_tensor_names};
use crate::{Error, Result};

fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let shift = f.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | ((f << shift) & 0x3ff) << 13
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Reads the tensors of a `.ckpt`/`.pt`/`.pth` (PyTorch's containers; a Lightning checkpoint's
/// `state_dict` when it has one) or a `.safetensors` file, as f32/f64 raw tensors.
pub fn read_state_dict(file: &Path) -> Result<StateDict> {
    let err = |m: String| Error::Weights(format!("{}: {m}", file.display()));
    if file.extension().is_some_and(|e| e == "safetensors") {
        return cxr_dataset::tensors::read(file).map_err(|e| err(e.to_string()));
    }
    let reader = pytorch_reader::PytorchReader::with_top_level_key(file, "state_dict")
        .or_else(|_| pytorch_reader::PytorchReader::new(file))
        .map_err(|e| err(e.to_string()))?;
    let mut sd = StateDict::new();
    for (name, t) in reader.tensors() {
        use pytorch_reader::DType;
        let bytes = t.read().map_err(|e| err(format!("{name}: {e}")))?;
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => ("F32", bytes),
            DType::F64 => ("F64", bytes),
            DType::F16 => (
                "F32",
                bytes
                    .chunks_exact(2)
                    .flat_map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => ("F32", bytes.chunks_exact(2).flat_map(|c| [0, 0, c[0], c[1]]).collect()),
            // Integer buffers (e.g. BatchNorm's num_batches_tracked) are not weights the ViT uses.
            _ => continue,
        };
        sd.insert(name.clone(), RawTensor { dtype: dtype.into(), shape: t.shape().to_vec(), bytes });
    }
    Ok(sd)
}

/// What an import wrote.
#[derive(Debug)]
pub struct Imported {
    pub tensors: usize,
    pub sha256: String,
    /// Tensors outside the prefix (other modules of the checkpoint), not read.
    pub other: usize,
}

/// Imports the ViT under `prefix` of `file` as the target (and anchor) encoder of a new run
/// folder `out` (`config.json`, a model checkpoint and `checkpoint.json`).
pub fn import_torch(file: &Path, vit_cfg: &VitConfig, prefix: &str, out: &Path, device: &Device) -> Result<Imported> {
    let sd = read_state_dict(file)?;
    let expected = vit_tensor_names(vit_cfg, prefix);
    let head = format!("{prefix}heads.");
    let present: BTreeSet<String> =
        sd.keys().filter(|k| k.starts_with(prefix) && !k.starts_with(&head)).cloned().collect();
    let missing: Vec<&String> = expected.difference(&present).collect();
    let unexpected: Vec<&String> = present.difference(&expected).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let list = |v: &[&String]| {
            if v.is_empty() { "none".to_string() } else { v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ") }
        };
        return Err(Error::Weights(format!(
            "{}: the checkpoint does not match a {}-layer, {}-wide ViT under {prefix:?}; missing: {}; unexpected: {}",
            file.display(),
            vit_cfg.layers,
            vit_cfg.hidden,
            list(&missing),
            list(&unexpected)
        )));
    }
    let mut vit = vit_cfg.init(device, &mut Rng::new(0));
    load_vit(&mut vit, &sd, prefix, device)?;
    let bytes = fs_err::read(file)?;
    let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let cfg = PretrainConfig::paper(vit_cfg.clone(), EhrSelection::none());
    let mut net = MsnNet::new(
        vit_cfg,
        FusionShape { ehr_in: 0, ehr_dim: cfg.ehr_dim, prototypes: cfg.prototypes },
        device,
        &mut Rng::new(0),
    );
    net.anchor = vit.clone();
    net.target = vit;
    fs_err::create_dir_all(out)?;
    let mut saved = serde_json::to_value(&cfg)?;
    let source = format!("imported:{}", &sha[..16]);
    saved["dataset_version"] = source.clone().into();
    saved["ehr_columns"] = serde_json::json!([]);
    saved["imported_from"] = file.display().to_string().into();
    let text = serde_json::to_string_pretty(&saved)?;
    fs_err::write(out.join("config.json"), text)?;
    let model = "model-00000000.bpk".to_string();
    net.into_record().save(out.join(&model)).map_err(|e| Error::Weights(format!("{model}: {e}")))?;
    let c = Checkpoint {
        dataset_version: source,
        step: 0,
        epoch: 0,
        batch: 0,
        first_loss: 0.0,
        model,
        optimizer: String::new(),
        loss_scale: None,
    };
    let text = serde_json::to_string_pretty(&c)?;
    fs_err::write(out.join(CHECKPOINT), text)?;
    Ok(Imported { tensors: expected.len(), sha256: sha, other: sd.keys().filter(|k| !k.starts_with(prefix)).count() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_convert() {
        for (h, f) in [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x3555, 0.333_251_95), (0x0001, 5.960_464_5e-8), (0, 0.0)]
        {
            assert_eq!(f16_to_f32(h), f, "{h:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
