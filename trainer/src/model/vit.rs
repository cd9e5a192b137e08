//! The Vision Transformer backbone (Dosovitskiy et al., "An Image is Worth 16x16 Words",
//! ICLR 2021), as torchvision's `VisionTransformer` computes it and METHOD.md section 2 fixes
//! it: a patch embedding, a learned CLS token and position embedding, pre-norm encoder blocks
//! (exact GELU, LayerNorm eps 1e-6, no dropout), a final LayerNorm, and the CLS output.
//!
//! Token masking takes explicit kept-token indices into the sequence [CLS, patch 0, ...] after
//! the position embedding, so tests can pass the reference's indices. Inputs smaller than
//! `image_size` get a bicubically resized position grid ([`super::pos`]).

use super::fused::{attention, gelu};
use super::norm::LayerNorm;
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor};

use crate::rng::Rng;

/// A ViT's shape. Presets: [`VitConfig::vit_tiny`], [`VitConfig::vit_small`],
/// [`VitConfig::vit_tiny_deit`], [`VitConfig::vit_micro`] (by name: [`VitPreset`]).
#[derive(Config, Debug)]
pub struct VitConfig {
    /// Side of the square input the position embedding is learned for.
    #[config(default = 224)]
    pub image_size: usize,
    #[config(default = 16)]
    pub patch_size: usize,
    /// Input channels (3: gray replicated to RGB, as the reference).
    #[config(default = 3)]
    pub channels: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp: usize,
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
}

impl VitConfig {
    /// ViT-Tiny as the paper's code runs it: 192 wide, 12 layers, 6 heads (head dim 32).
    pub fn vit_tiny() -> Self {
        Self::new(192, 12, 6, 768)
    }

    /// ViT-Small as the paper's code runs it: 384 wide, 12 layers, 6 heads.
    pub fn vit_small() -> Self {
        Self::new(384, 12, 6, 1536)
    }

    /// Standard DeiT-Ti: 192 wide, 12 layers, 3 heads.
    pub fn vit_tiny_deit() -> Self {
        Self::new(192, 12, 3, 768)
    }

    /// A small ViT for demos, tests and laptops: 64x64 input, 8x8 patches, 96 wide, 4 layers,
    /// 3 heads.
    pub fn vit_micro() -> Self {
        Self::new(96, 4, 3, 384).with_image_size(64).with_patch_size(8)
    }

    /// The preset name of this configuration, or its width, depth and heads when it is none.
    pub fn name(&self) -> String {
        let same = |p: &Self| serde_json::to_value(p).ok() == serde_json::to_value(self).ok();
        VitPreset::ALL.iter().find(|p| same(&p.config())).map_or_else(
            || format!("ViT {} wide, {} layers, {} heads", self.hidden, self.layers, self.heads),
            |p| p.name().to_string(),
        )
    }

    /// Patches per side at `image_size`.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// A randomly initialised ViT (torchvision's initialisation) drawn from `rng`.
    pub fn init(&self, device: &Device, rng: &mut Rng) -> Vit {
        let d = self.hidden;
        let patch_in = self.channels * self.patch_size * self.patch_size;
        let tokens = 1 + self.grid() * self.grid();
        let init = super::init::Init::new(device, rng);
        Vit {
            patch: init.linear_trunc_normal(patch_in, d, (1.0 / patch_in as f64).sqrt()),
            cls: Param::from_tensor(Tensor::zeros([1, 1, d], device)),
            pos: Param::from_tensor(init.normal([1, tokens, d], 0.02)),
            blocks: (0..self.layers)
                .map(|_| Block {
                    norm1: init.layer_norm(d, self.layer_norm_eps),
                    attn: Attention {
                        qkv: init.linear_xavier(d, 3 * d, 0.0),
                        out: init.linear_default_zero_bias(d, d),
                        heads: self.heads,
                    },
                    norm2: init.layer_norm(d, self.layer_norm_eps),
                    fc1: init.linear_xavier(d, self.mlp, 1e-6),
                    fc2: init.linear_xavier(self.mlp, d, 1e-6),
                })
                .collect(),
            norm: init.layer_norm(d, self.layer_norm_eps),
            patch_size: self.patch_size,
            channels: self.channels,
        }
    }
}

/// Multi-head self-attention with stacked q, k, v projections (torchvision's
/// `nn.MultiheadAttention`: `in_proj_weight` = [q; k; v]).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub out: Linear,
    pub heads: usize,
}

impl Attention {
    /// # Shapes
    /// - `x`: `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let qkv = super::linear(&self.qkv, x);
        super::linear(&self.out, attention(qkv, self.heads))
    }
}

/// Pre-norm encoder block: `x + MHA(LN1(x))`, then `x + MLP(LN2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Block {
    /// # Shapes
    /// - `x`: `[batch, tokens, dim]` -> `[batch, tokens, dim]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        let y = super::linear(&self.fc2, gelu(super::linear(&self.fc1, self.norm2.forward(x.clone()))));
        x + y
    }
}

/// The ViT encoder.
#[derive(Module, Debug)]
pub struct Vit {
    /// The 16x16 stride-16 patch convolution, as a linear map of flattened patches
    /// (`[channels * p * p] -> [hidden]`, channel-major like the conv weight).
    pub patch: Linear,
    pub cls: Param<Tensor<3>>,
    /// `[1, 1 + grid*grid, hidden]`, CLS first.
    pub pos: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub patch_size: usize,
    pub channels: usize,
}

impl Vit {
    /// Width of the output.
    pub fn dim(&self) -> usize {
        self.cls.dims()[2]
    }

    /// Patch tokens plus CLS with position embeddings, before the encoder.
    ///
    /// # Shapes
    /// - `images`: `[batch, channels, h, w]` (square, a multiple of the patch size)
    /// - output: `[batch, 1 + (h/p)*(w/p), hidden]`
    pub fn embed(&self, images: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = images.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, c * p * p]);
        let tokens = super::linear(&self.patch, patches);
        let d = self.dim();
        let cls = super::like(self.cls.val(), &tokens).expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, tokens], 1);
        let pos = super::like(self.position_embedding(gh), &x);
        x + pos
    }

    /// The position embedding for a `side x side` patch grid (resized when not the learned one).
    ///
    /// # Shapes
    /// - output: `[1, 1 + side*side, hidden]`
    pub fn position_embedding(&self, side: usize) -> Tensor<3> {
        let pos = self.pos.val();
        let device = pos.device();
        super::pos::resize(pos, side, &device)
    }

    /// Runs the encoder on token sequences and returns every token after the final norm.
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, hidden]` -> `[batch, tokens, hidden]`
    pub fn encode(&self, mut x: Tensor<3>) -> Tensor<3> {
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }

    /// Every output token (CLS first), without masking.
    ///
    /// # Shapes
    /// - `images`: `[batch, channels, h, w]` -> `[batch, 1 + patches, hidden]`
    pub fn tokens(&self, images: Tensor<4>) -> Tensor<3> {
        self.encode(self.embed(images))
    }

    /// The CLS output, keeping only the tokens `keep` (per sample, indices into
    /// [CLS, patch 0, ...]; index 0 should be kept) when given.
    ///
    /// # Shapes
    /// - `images`: `[batch, channels, h, w]`
    /// - `keep`: `[batch, kept]`
    /// - output: `[batch, hidden]`
    pub fn forward(&self, images: Tensor<4>, keep: Option<Tensor<2, Int>>) -> Tensor<2> {
        let x = self.embed(images);
        let x = match keep {
            Some(idx) => {
                let [b, k] = idx.dims();
                let d = self.dim();
                let idx = idx.unsqueeze_dim::<3>(2).expand([b, k, d]);
                x.gather(1, idx)
            }
            None => x,
        };
        let [b, _, d] = x.dims();
        self.encode(x).narrow(1, 0, 1).reshape([b, d])
    }
}

/// The named ViT configurations, as `--model` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VitPreset {
    /// 192 wide, 12 layers, 6 heads: the paper's ViT-Tiny.
    VitTiny,
    /// 384 wide, 12 layers, 6 heads: the paper's ViT-Small.
    VitSmall,
    /// 192 wide, 12 layers, 3 heads: DeiT-Ti.
    VitTinyDeit,
    /// 96 wide, 4 layers, 3 heads, 64x64 input: demos, tests and laptops.
    VitMicro,
}

impl VitPreset {
    pub const ALL: [Self; 4] = [Self::VitTiny, Self::VitSmall, Self::VitTinyDeit, Self::VitMicro];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::VitTiny => "vit-tiny",
            Self::VitSmall => "vit-small",
            Self::VitTinyDeit => "vit-tiny-deit",
            Self::VitMicro => "vit-micro",
        }
    }

    pub fn config(self) -> VitConfig {
        match self {
            Self::VitTiny => VitConfig::vit_tiny(),
            Self::VitSmall => VitConfig::vit_small(),
            Self::VitTinyDeit => VitConfig::vit_tiny_deit(),
            Self::VitMicro => VitConfig::vit_micro(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_named_by_its_preset_or_its_shape() {
        use clap::ValueEnum;
        for p in VitPreset::ALL {
            assert_eq!(p.config().name(), p.name());
            assert_eq!(p.to_possible_value().unwrap().get_name(), p.name(), "--model spells it");
        }
        assert_eq!(VitConfig::new(96, 2, 3, 384).name(), "ViT 96 wide, 2 layers, 3 heads");
    }
}
