//! Loading PyTorch weights by name: torchvision's `VisionTransformer` state dict into [`Vit`],
//! lightly's `MSNProjectionHead` into [`ProjectionHead`], `nn.Linear` layers; and a [`Vit`]
//! as such a state dict ([`vit_state_dict`]). PyTorch stores linear weights `[out, in]`;
//! burn's [`Linear`] holds `[in, out]`, so they are transposed. A missing tensor or a shape
//! that does not match is an error naming it.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use cxr_dataset::tensors::RawTensor;

use crate::model::head::BatchNorm1d;
use crate::model::norm::LayerNorm;
use crate::model::{ProjectionHead, Vit, VitConfig};
use crate::{Error, Result};

/// Named tensors (a state dict), read from safetensors.
pub type StateDict = BTreeMap<String, RawTensor>;

/// Reads `name` as an f32 tensor of exactly `shape`.
pub fn tensor<const D: usize>(sd: &StateDict, name: &str, shape: [usize; D], device: &Device) -> Result<Tensor<D>> {
    let t = sd.get(name).ok_or_else(|| Error::Weights(format!("missing tensor {name}")))?;
    if t.shape != shape {
        return Err(Error::Weights(format!("{name}: shape {:?}, expected {shape:?}", t.shape)));
    }
    let values = t.to_f32().map_err(|e| Error::Weights(format!("{name}: {e}")))?;
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// A PyTorch `nn.Linear` (`{prefix}.weight` `[out, in]`, optional `{prefix}.bias`).
pub fn load_linear(l: &mut Linear, sd: &StateDict, prefix: &str, device: &Device) -> Result<()> {
    let [d_in, d_out] = l.weight.dims();
    let w: Tensor<2> = tensor(sd, &format!("{prefix}.weight"), [d_out, d_in], device)?;
    l.weight = Param::from_tensor(w.transpose());
    if l.bias.is_some() {
        l.bias = Some(Param::from_tensor(tensor(sd, &format!("{prefix}.bias"), [d_out], device)?));
    }
    Ok(())
}

fn load_layer_norm(n: &mut LayerNorm, sd: &StateDict, prefix: &str, device: &Device) -> Result<()> {
    let [d] = n.gamma.dims();
    n.gamma = Param::from_tensor(tensor(sd, &format!("{prefix}.weight"), [d], device)?);
    n.beta = Some(Param::from_tensor(tensor(sd, &format!("{prefix}.bias"), [d], device)?));
    Ok(())
}

fn load_batch_norm(n: &mut BatchNorm1d, sd: &StateDict, prefix: &str, device: &Device) -> Result<()> {
    let [d] = n.gamma.dims();
    n.gamma = Param::from_tensor(tensor(sd, &format!("{prefix}.weight"), [d], device)?);
    n.beta = Param::from_tensor(tensor(sd, &format!("{prefix}.bias"), [d], device)?);
    Ok(())
}

/// torchvision `VisionTransformer` weights under `prefix` (e.g. `w.` or `backbone.`); the
/// classification head (`heads.*`) is ignored.
pub fn load_vit(vit: &mut Vit, sd: &StateDict, prefix: &str, device: &Device) -> Result<()> {
    let d = vit.dim();
    let [patch_in, _] = vit.patch.weight.dims();
    let p = vit.patch_size;
    let conv: Tensor<4> = tensor(sd, &format!("{prefix}conv_proj.weight"), [d, vit.channels, p, p], device)?;
    vit.patch.weight = Param::from_tensor(conv.reshape([d, patch_in]).transpose());
    vit.patch.bias = Some(Param::from_tensor(tensor(sd, &format!("{prefix}conv_proj.bias"), [d], device)?));
    vit.cls = Param::from_tensor(tensor(sd, &format!("{prefix}class_token"), [1, 1, d], device)?);
    let tokens = vit.pos.dims()[1];
    vit.pos = Param::from_tensor(tensor(sd, &format!("{prefix}encoder.pos_embedding"), [1, tokens, d], device)?);
    for (i, block) in vit.blocks.iter_mut().enumerate() {
        let b = format!("{prefix}encoder.layers.encoder_layer_{i}");
        load_layer_norm(&mut block.norm1, sd, &format!("{b}.ln_1"), device)?;
        let w: Tensor<2> = tensor(sd, &format!("{b}.self_attention.in_proj_weight"), [3 * d, d], device)?;
        block.attn.qkv.weight = Param::from_tensor(w.transpose());
        block.attn.qkv.bias =
            Some(Param::from_tensor(tensor(sd, &format!("{b}.self_attention.in_proj_bias"), [3 * d], device)?));
        load_linear(&mut block.attn.out, sd, &format!("{b}.self_attention.out_proj"), device)?;
        load_layer_norm(&mut block.norm2, sd, &format!("{b}.ln_2"), device)?;
        load_linear(&mut block.fc1, sd, &format!("{b}.mlp.0"), device)?;
        load_linear(&mut block.fc2, sd, &format!("{b}.mlp.3"), device)?;
    }
    load_layer_norm(&mut vit.norm, sd, &format!("{prefix}encoder.ln"), device)
}

/// lightly `MSNProjectionHead` weights under `prefix` (`layers.0`, `.1`, `.3`, `.4`, `.6`).
pub fn load_head(head: &mut ProjectionHead, sd: &StateDict, prefix: &str, device: &Device) -> Result<()> {
    load_linear(&mut head.fc1, sd, &format!("{prefix}layers.0"), device)?;
    load_batch_norm(&mut head.bn1, sd, &format!("{prefix}layers.1"), device)?;
    load_linear(&mut head.fc2, sd, &format!("{prefix}layers.3"), device)?;
    load_batch_norm(&mut head.bn2, sd, &format!("{prefix}layers.4"), device)?;
    load_linear(&mut head.fc3, sd, &format!("{prefix}layers.6"), device)
}

/// f32 tensors by name: `(shape, values)`.
pub type ShapedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The tensors of `vit` under torchvision's `VisionTransformer` names (what [`load_vit`]
/// reads), `prefix` before each: the conv patch embedding, class token, position embedding,
/// each encoder layer's norms, attention and MLP, and the final norm; `[out, in]` weights.
/// A tensor that cannot be read back is an error naming it.
pub fn vit_state_dict(vit: &Vit, prefix: &str) -> Result<ShapedTensors> {
    type Values = std::result::Result<Vec<f32>, String>;
    fn values<const D: usize>(t: Tensor<D>) -> Values {
        t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))
    }
    let mut sd = BTreeMap::new();
    let mut failed: Option<Error> = None;
    let mut put = |name: String, shape: Vec<usize>, v: Values| match v {
        Ok(v) => {
            sd.insert(format!("{prefix}{name}"), (shape, v));
        }
        Err(e) => {
            failed.get_or_insert(Error::Weights(format!("{prefix}{name}: reading the tensor back failed: {e}")));
        }
    };
    let linear = |put: &mut dyn FnMut(String, Vec<usize>, Values), name: &str, l: &Linear| {
        let [d_in, d_out] = l.weight.dims();
        put(format!("{name}.weight"), vec![d_out, d_in], values(l.weight.val().transpose()));
        if let Some(b) = &l.bias {
            put(format!("{name}.bias"), vec![d_out], values(b.val()));
        }
    };
    let norm = |put: &mut dyn FnMut(String, Vec<usize>, Values), name: &str, n: &LayerNorm| {
        let [d] = n.gamma.dims();
        put(format!("{name}.weight"), vec![d], values(n.gamma.val()));
        if let Some(b) = &n.beta {
            put(format!("{name}.bias"), vec![d], values(b.val()));
        }
    };
    let d = vit.dim();
    let p = vit.patch_size;
    put("conv_proj.weight".into(), vec![d, vit.channels, p, p], values(vit.patch.weight.val().transpose()));
    if let Some(b) = &vit.patch.bias {
        put("conv_proj.bias".into(), vec![d], values(b.val()));
    }
    put("class_token".into(), vec![1, 1, d], values(vit.cls.val()));
    put("encoder.pos_embedding".into(), vit.pos.dims().to_vec(), values(vit.pos.val()));
    for (i, block) in vit.blocks.iter().enumerate() {
        let b = format!("encoder.layers.encoder_layer_{i}");
        norm(&mut put, &format!("{b}.ln_1"), &block.norm1);
        put(
            format!("{b}.self_attention.in_proj_weight"),
            vec![3 * d, d],
            values(block.attn.qkv.weight.val().transpose()),
        );
        if let Some(bias) = &block.attn.qkv.bias {
            put(format!("{b}.self_attention.in_proj_bias"), vec![3 * d], values(bias.val()));
        }
        linear(&mut put, &format!("{b}.self_attention.out_proj"), &block.attn.out);
        norm(&mut put, &format!("{b}.ln_2"), &block.norm2);
        linear(&mut put, &format!("{b}.mlp.0"), &block.fc1);
        linear(&mut put, &format!("{b}.mlp.3"), &block.fc2);
    }
    norm(&mut put, "encoder.ln", &vit.norm);
    match failed {
        Some(e) => Err(e),
        None => Ok(sd),
    }
}

/// The names torchvision's `VisionTransformer` state dict has for `vit`, under `prefix`.
pub fn vit_tensor_names(vit: &VitConfig, prefix: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [
        "conv_proj.weight",
        "conv_proj.bias",
        "class_token",
        "encoder.pos_embedding",
        "encoder.ln.weight",
        "encoder.ln.bias",
    ]
    .iter()
    .map(|n| format!("{prefix}{n}"))
    .collect();
    for i in 0..vit.layers {
        for n in [
            "ln_1.weight",
            "ln_1.bias",
            "self_attention.in_proj_weight",
            "self_attention.in_proj_bias",
            "self_attention.out_proj.weight",
            "self_attention.out_proj.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.0.weight",
            "mlp.0.bias",
            "mlp.3.weight",
            "mlp.3.bias",
        ] {
            names.insert(format!("{prefix}encoder.layers.encoder_layer_{i}.{n}"));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VitConfig;
    use crate::rng::Rng;

    /// A ViT written under torchvision's names and read back is the same network.
    #[test]
    fn a_vit_round_trips_through_its_state_dict() {
        let device = Device::flex();
        let cfg = VitConfig::new(16, 2, 2, 32).with_image_size(16).with_patch_size(8);
        let a = cfg.init(&device, &mut Rng::new(1));
        let mut b = cfg.init(&device, &mut Rng::new(2));
        let bytes = cxr_dataset::tensors::to_bytes(&vit_state_dict(&a, "backbone.").unwrap()).unwrap();
        let sd = cxr_dataset::tensors::parse(&bytes).unwrap();
        assert_eq!(sd.len(), vit_tensor_names(&cfg, "backbone.").len());
        load_vit(&mut b, &sd, "backbone.", &device).unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..768).map(|i| (i % 7) as f32 / 7.0).collect(), [1, 3, 16, 16]),
            &device,
        );
        let out = |v: &Vit| v.forward(x.clone(), None).into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        assert_eq!(out(&a), out(&b));
    }
}
