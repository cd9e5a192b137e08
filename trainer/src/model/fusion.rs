//! The EHR-augmented MSN network (METHOD.md section 5): an anchor ViT + projection head that
//! sees the masked anchor view and the masked focal views, fused with an embedding of the
//! image's EHR vector; a target (EMA) ViT + head that sees the full target view; and the
//! prototypes. Vanilla MSN (no EHR) skips `f_ehr` and `g`.
//!
//! ```text
//! e   = tile(f_ehr(ehr), 11)               Linear(ehr_in -> ehr_dim), one copy per view
//! h   = anchor(masked views)               (11B, dim) CLS outputs, view-major
//! z_a = anchor_head(g(concat(h, e)))       g: Linear(dim + ehr_dim -> dim); BN over all 11B rows
//! z_t = target_head(target(target view))   (B, dim), no gradient
//! ```

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Device, Int, Tensor};

use super::head::ProjectionHead;
use super::init::Init;
use super::vit::{Vit, VitConfig};
use crate::rng::Rng;
use crate::{Error, Result};

/// The network's shape besides the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusionShape {
    /// Width of the EHR vector (0: vanilla MSN).
    pub ehr_in: usize,
    /// Width of the EHR embedding (128 in the paper).
    pub ehr_dim: usize,
    /// Number of prototypes (1024 in the paper).
    pub prototypes: usize,
}

/// The network.
#[derive(Module, Debug)]
pub struct MsnNet {
    pub anchor: Vit,
    pub anchor_head: ProjectionHead,
    pub target: Vit,
    pub target_head: ProjectionHead,
    pub f_ehr: Option<Linear>,
    pub g: Option<Linear>,
    /// `[K, dim]`.
    pub prototypes: Param<Tensor<2>>,
}

/// What a forward pass gives the loss.
#[derive(Debug, Clone)]
pub struct MsnOutput {
    /// `[views * B, dim]`, view-major: anchor rows first, then each focal view's rows.
    pub anchors: Tensor<2>,
    /// `[B, dim]`, detached.
    pub targets: Tensor<2>,
}

/// The views of a batch of `B` images, with the kept-token indices of the masked ones.
#[derive(Debug, Clone)]
pub struct Views {
    /// `[B, C, S, S]`.
    pub target: Tensor<4>,
    /// `[B, C, S, S]`.
    pub anchor: Tensor<4>,
    /// `[B, kept]`, indices into [CLS, patches...]; `None`: unmasked.
    pub anchor_keep: Option<Tensor<2, Int>>,
    /// `[F * B, C, s, s]`, view-major (focal view 1 of every image, then view 2, ...).
    pub focal: Option<Tensor<4>>,
    /// `[F * B, kept]`.
    pub focal_keep: Option<Tensor<2, Int>>,
    /// `[B, ehr_in]` (ignored without EHR fusion).
    pub ehr: Option<Tensor<2>>,
}

impl MsnNet {
    /// A new network: anchor and target start identical; prototypes U(-1/sqrt(dim), 1/sqrt(dim)).
    /// Each module draws from its own stream of one seed taken from `rng`, so networks that
    /// differ only in the EHR modules (vanilla and EHR runs of one seed) share the backbone,
    /// the head and the prototypes.
    pub fn new(vit: &VitConfig, shape: FusionShape, device: &Device, rng: &mut Rng) -> Self {
        let d = vit.hidden;
        let seed = rng.next_u64();
        let stream = |k: u64| Rng::derive(seed, 0xF05E, k);
        let anchor = vit.init(device, &mut stream(0));
        let anchor_head = ProjectionHead::new(d, 4 * d, d, device, &mut stream(1));
        let mut proto_rng = stream(2);
        let prototypes = Param::from_tensor(
            Init::new(device, &mut proto_rng).uniform([shape.prototypes, d], 1.0 / (d as f64).sqrt()),
        );
        let (f_ehr, g) = if shape.ehr_in > 0 {
            let mut ehr_rng = stream(3);
            let init = Init::new(device, &mut ehr_rng);
            (
                Some(init.linear_default(shape.ehr_in, shape.ehr_dim, true)),
                Some(init.linear_default(d + shape.ehr_dim, d, true)),
            )
        } else {
            (None, None)
        };
        Self {
            target: anchor.clone().no_grad(),
            target_head: anchor_head.clone().no_grad(),
            anchor,
            anchor_head,
            f_ehr,
            g,
            prototypes,
        }
    }

    /// Anchor-branch outputs and target outputs of a batch. A network with EHR modules given
    /// a batch without an EHR vector, or the reverse, is an error (never a silent fallback to
    /// the vanilla path).
    pub fn forward(&self, views: Views) -> Result<MsnOutput> {
        let [b, _, _, _] = views.anchor.dims();
        let want = self.f_ehr.as_ref().map_or(0, |f| f.weight.dims()[0]);
        let got = views.ehr.as_ref().map_or(0, |e| e.dims()[1]);
        if want != got {
            return Err(Error::Config(format!(
                "the network fuses an EHR vector of width {want} but the batch carries one of width {got}; \
                 pretrain and evaluate with the same --ehr"
            )));
        }
        let h_anchor = self.anchor.forward(views.anchor, views.anchor_keep);
        let h_focal = views.focal.map(|f| self.anchor.forward(f, views.focal_keep));
        let anchors = match (&self.f_ehr, &self.g, views.ehr) {
            (Some(f_ehr), Some(g), Some(ehr)) => {
                let mut rows = vec![h_anchor];
                rows.extend(h_focal);
                let h = Tensor::cat(rows, 0);
                let [n, _] = h.dims();
                let e = super::linear(f_ehr, super::like(ehr, &h)).repeat_dim(0, n / b);
                self.anchor_head.forward(super::linear(g, Tensor::cat(vec![h, e], 1)))
            }
            // Vanilla MSN: the reference runs the head on the anchors and on the focal rows
            // separately (BatchNorm statistics per group).
            _ => {
                let mut rows = vec![self.anchor_head.forward(h_anchor)];
                rows.extend(h_focal.map(|h| self.anchor_head.forward(h)));
                Tensor::cat(rows, 0)
            }
        };
        let targets = self.target_head.forward(self.target.forward(views.target, None)).detach();
        // The loss and Sinkhorn in f32 (a no-op in f32).
        Ok(MsnOutput { anchors: anchors.cast(DType::F32), targets: targets.cast(DType::F32) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn data<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn net(ehr_in: usize) -> MsnNet {
        let vit = VitConfig::new(16, 1, 2, 32).with_image_size(16).with_patch_size(8);
        let shape = FusionShape { ehr_in, ehr_dim: 4, prototypes: 8 };
        MsnNet::new(&vit, shape, &Device::flex(), &mut Rng::new(24))
    }

    /// Vanilla and EHR networks of one seed differ only in the EHR modules.
    #[test]
    fn vanilla_and_ehr_networks_share_all_but_the_ehr_modules() {
        let (a, b) = (net(0), net(5));
        assert_eq!(data(a.prototypes.val()), data(b.prototypes.val()));
        assert_eq!(data(a.anchor.patch.weight.val()), data(b.anchor.patch.weight.val()));
        assert_eq!(data(a.anchor.pos.val()), data(b.anchor.pos.val()));
        let w = |n: &MsnNet| data(n.anchor_head.fc1.weight.val());
        assert_eq!(w(&a), w(&b));
        assert!(a.f_ehr.is_none() && b.f_ehr.is_some());
    }

    /// The ViT's initial weights follow torchvision's: attention in-projection xavier-uniform,
    /// out-projection PyTorch's default Linear bound 1/sqrt(d) (not xavier), MLP xavier.
    #[test]
    fn the_initial_attention_and_mlp_weights_have_torchvisions_bounds() {
        let n = net(0);
        let d = 16f32;
        let max = |t: Tensor<2>| data(t).iter().fold(0f32, |m, v| m.max(v.abs()));
        let b = &n.anchor.blocks[0];
        let (qkv, out, fc1) = (max(b.attn.qkv.weight.val()), max(b.attn.out.weight.val()), max(b.fc1.weight.val()));
        assert!(qkv <= (6.0 / (4.0 * d)).sqrt() && qkv > 0.8 * (6.0 / (4.0 * d)).sqrt(), "in-projection {qkv}");
        assert!(out <= 1.0 / d.sqrt() && out > 0.8 / d.sqrt(), "out-projection {out}");
        assert!(fc1 <= (6.0 / (d + 32.0)).sqrt() && fc1 > 0.8 * (6.0 / (d + 32.0)).sqrt(), "fc1 {fc1}");
    }

    /// An EHR vector the network was not built for (or none when it was) is an error.
    #[test]
    fn a_batch_without_the_networks_ehr_is_an_error() {
        let dev = Device::flex();
        let views = |ehr: Option<usize>| Views {
            target: Tensor::zeros([2, 3, 16, 16], &dev),
            anchor: Tensor::zeros([2, 3, 16, 16], &dev),
            anchor_keep: None,
            focal: None,
            focal_keep: None,
            ehr: ehr.map(|w| Tensor::from_data(TensorData::new(vec![0.5f32; 2 * w], [2, w]), &dev)),
        };
        assert!(net(5).forward(views(Some(5))).is_ok());
        assert!(net(0).forward(views(None)).is_ok());
        let e = net(5).forward(views(None)).unwrap_err().to_string();
        assert!(e.contains("width 5") && e.contains("width 0"), "{e}");
        assert!(net(0).forward(views(Some(5))).is_err());
        assert!(net(5).forward(views(Some(3))).is_err());
    }
}
