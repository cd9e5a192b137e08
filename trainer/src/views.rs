//! The MSN views of an image (METHOD.md section 3) and the token masks (section 4), made on
//! CPU threads from the u8 shard images, deterministic for a seed, epoch and image.
//!
//! Per image: a target and an anchor view (random resized crop to `global_size`, scale
//! 0.3-1.0, ratio 3/4-4/3), `focal_views` focal views (to `focal_size`, scale 0.05-0.3), each
//! flipped horizontally with probability 0.5, antialiased bilinear resampling (as
//! torchvision's `RandomResizedCrop(antialias=True)`, the reference's), gray replicated to
//! `channels` and normalised with `mean`/`std`. The reference resizes the u8 image and rounds
//! to gray levels; here the resized values stay in f32 (golden case `resized_crop_aa`: equal
//! to torchvision's float path to 1.2e-7, within 0.91 gray levels of its u8 path).

use burn::config::Config;
use rayon::prelude::*;

use crate::Result;
use crate::data::Images;
use crate::rng::Rng;

/// View settings.
#[derive(Config, Debug)]
pub struct ViewConfig {
    #[config(default = 224)]
    pub global_size: usize,
    #[config(default = 96)]
    pub focal_size: usize,
    #[config(default = 10)]
    pub focal_views: usize,
    #[config(default = "(0.3, 1.0)")]
    pub global_scale: (f64, f64),
    #[config(default = "(0.05, 0.3)")]
    pub focal_scale: (f64, f64),
    #[config(default = "(0.75, 1.3333333333333333)")]
    pub ratio: (f64, f64),
    #[config(default = 0.5)]
    pub flip: f64,
    /// Input channels of the ViT (gray replicated).
    #[config(default = 3)]
    pub channels: usize,
    /// Per-channel normalisation (ImageNet's, as the reference's pretraining).
    #[config(default = "[0.485, 0.456, 0.406]")]
    pub mean: [f32; 3],
    #[config(default = "[0.229, 0.224, 0.225]")]
    pub std: [f32; 3],
}

impl ViewConfig {
    /// The paper's proportions for a ViT: global views at its `image_size` (224), focal views
    /// at 96/224 of that, rounded to a multiple of the patch size.
    pub fn for_vit(vit: &crate::model::VitConfig) -> Self {
        let p = vit.patch_size.max(1);
        let focal = ((vit.image_size as f64 * 96.0 / 224.0 / p as f64).round() as usize).max(1) * p;
        Self::new().with_global_size(vit.image_size).with_focal_size(focal)
    }
}

/// Which tokens the anchor branch keeps.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Masking {
    /// The reference: per sample, on the anchor and every focal view, `int(P * (1 - r))`
    /// tokens counting CLS, drawn among [CLS, patch 1..P-1] (the last patch never kept).
    Paper,
    /// The original MSN: `int(P * (1 - r))` patches plus CLS among all P, one draw for the whole
    /// batch, on the anchor view only.
    Msn,
    /// No masking.
    None,
}

/// A batch of views on the CPU, ready to become tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    pub size: usize,
    /// `[B, C, G, G]`.
    pub target: Vec<f32>,
    /// `[B, C, G, G]`.
    pub anchor: Vec<f32>,
    /// `[F * B, C, g, g]`, view-major.
    pub focal: Vec<f32>,
    /// `[B, kept]` (empty: no mask).
    pub anchor_keep: Vec<i64>,
    pub anchor_kept: usize,
    /// `[F * B, kept]` (empty: no mask).
    pub focal_keep: Vec<i64>,
    pub focal_kept: usize,
    /// `[B, E]`.
    pub ehr: Vec<f32>,
}

impl Batch {
    /// The samples `rows` of this batch (one device's shard), with their views and masks;
    /// `focal_views` is the number of focal views per sample.
    pub fn shard(&self, rows: std::ops::Range<usize>, focal_views: usize) -> Batch {
        let b = self.size;
        let n = rows.len();
        // Per-sample rows of `data`: `[B, ...]` when `views` is 1, view-major `[views * B, ...]`.
        fn pick<T: Copy>(data: &[T], b: usize, views: usize, rows: &std::ops::Range<usize>) -> Vec<T> {
            if data.is_empty() || b == 0 {
                return Vec::new();
            }
            let width = data.len() / (views * b);
            (0..views).flat_map(|v| &data[(v * b + rows.start) * width..(v * b + rows.end) * width]).copied().collect()
        }
        Batch {
            size: n,
            target: pick(&self.target, b, 1, &rows),
            anchor: pick(&self.anchor, b, 1, &rows),
            focal: pick(&self.focal, b, focal_views, &rows),
            anchor_keep: pick(&self.anchor_keep, b, 1, &rows),
            anchor_kept: self.anchor_kept,
            focal_keep: pick(&self.focal_keep, b, focal_views, &rows),
            focal_kept: self.focal_kept,
            ehr: pick(&self.ehr, b, 1, &rows),
        }
    }
}

/// `(y0, x0, h, w)` of a random resized crop of a `side x side` image (torchvision's
/// `RandomResizedCrop.get_params`: ten tries, then the centre crop).
fn crop_box(side: usize, scale: (f64, f64), ratio: (f64, f64), rng: &mut Rng) -> (usize, usize, usize, usize) {
    let area = (side * side) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(lr0, lr1).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= side as f64 && h <= side as f64 {
            let (h, w) = (h as usize, w as usize);
            let y0 = rng.below(side - h + 1);
            let x0 = rng.below(side - w + 1);
            return (y0, x0, h, w);
        }
    }
    (0, 0, side, side)
}

/// The source pixels one output pixel of an axis reads, and their weights (summing to 1).
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The antialiased bilinear taps of resizing `len` source pixels starting at `offset` to
/// `out` pixels, as PyTorch's `interpolate(mode="bilinear", antialias=True)` (torchvision's
/// `resize` with `antialias=True`) computes them: a triangle filter stretched by the
/// downscale factor, so a downscale averages every source pixel it covers; an upscale is
/// plain bilinear interpolation. Weights past the edges are dropped and the rest renormalised.
fn axis_taps(offset: usize, len: usize, out: usize) -> Vec<Taps> {
    let scale = len as f64 / out as f64;
    let (support, inv) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    (0..out)
        .map(|i| {
            let centre = scale * (i as f64 + 0.5);
            // Truncation toward zero, as the reference's integer casts.
            let lo = ((centre - support + 0.5) as i64).max(0) as usize;
            let hi = ((centre + support + 0.5) as i64).clamp(0, len as i64) as usize;
            let raw: Vec<f64> = (lo..hi).map(|j| (1.0 - ((j as f64 - centre + 0.5) * inv).abs()).max(0.0)).collect();
            let total: f64 = raw.iter().sum();
            let weights = raw.iter().map(|w| if total > 0.0 { (w / total) as f32 } else { 0.0 }).collect();
            Taps { first: offset + lo, weights }
        })
        .collect()
}

/// The `(top, left, height, width)` box of a `side x side` u8 image resized to `out x out`
/// in [0, 1] with antialiased bilinear filtering, flipped horizontally when `flip`: what
/// torchvision's `resized_crop(..., antialias=True)` then `hflip` give for the image as
/// float. A horizontal pass over the box's rows, then a vertical one, as the reference.
pub fn resized_crop(img: &[u8], side: usize, crop: (usize, usize, usize, usize), out: usize, flip: bool) -> Vec<f32> {
    let (top, left, h, w) = crop;
    let (ys, xs) = (axis_taps(top, h, out), axis_taps(left, w, out));
    let mut across = vec![0f32; h * out];
    for (r, row) in across.chunks_exact_mut(out).enumerate() {
        let src = &img[(top + r) * side..(top + r + 1) * side];
        for (dst, t) in row.iter_mut().zip(&xs) {
            *dst = t.weights.iter().zip(&src[t.first..]).map(|(w, &p)| w * f32::from(p)).sum::<f32>() / 255.0;
        }
    }
    let mut plane = vec![0f32; out * out];
    for (row, t) in plane.chunks_exact_mut(out).zip(&ys) {
        let first = t.first - top;
        for (ox, dst) in row.iter_mut().enumerate() {
            let tx = if flip { out - 1 - ox } else { ox };
            *dst = t.weights.iter().enumerate().map(|(k, w)| w * across[(first + k) * out + tx]).sum();
        }
    }
    plane
}

/// One view: a random crop box and flip, [`resized_crop`] to `out`, gray replicated to the
/// channels and normalised.
fn view(img: &[u8], side: usize, out: usize, scale: (f64, f64), cfg: &ViewConfig, rng: &mut Rng, dst: &mut [f32]) {
    let crop = crop_box(side, scale, cfg.ratio, rng);
    let flip = rng.f64() < cfg.flip;
    let plane = resized_crop(img, side, crop, out, flip);
    for (c, dst) in dst.chunks_exact_mut(out * out).take(cfg.channels).enumerate() {
        let (mean, std) = (cfg.mean[c.min(2)], cfg.std[c.min(2)]);
        for (d, &v) in dst.iter_mut().zip(&plane) {
            *d = (v - mean) / std;
        }
    }
}

/// Kept-token indices of one masked view of `patches` patches.
fn keep_paper(patches: usize, ratio: f64, rng: &mut Rng) -> Vec<i64> {
    let keep = ((patches as f64) * (1.0 - ratio)) as usize;
    // Candidates 0..P-1 of the P+1-token sequence, CLS (0) forced: patch P is never kept.
    let mut idx: Vec<i64> = vec![0];
    let perm = rng.permutation(patches.saturating_sub(1));
    idx.extend(perm.into_iter().take(keep.saturating_sub(1)).map(|p| p as i64 + 1));
    idx.sort_unstable();
    idx
}

fn keep_msn(patches: usize, ratio: f64, rng: &mut Rng) -> Vec<i64> {
    let keep = ((patches as f64) * (1.0 - ratio)) as usize;
    let mut idx: Vec<i64> = vec![0];
    idx.extend(rng.permutation(patches).into_iter().take(keep).map(|p| p as i64 + 1));
    idx.sort_unstable();
    idx
}

/// Makes the batch of `indices` (rows of `images`), for `(seed, epoch, step)`; fails only
/// when a streamed image cannot be read.
#[allow(clippy::too_many_arguments)]
pub fn make_batch(
    images: &Images,
    indices: &[usize],
    cfg: &ViewConfig,
    masking: Masking,
    mask_ratio: f64,
    patch_size: usize,
    seed: u64,
    epoch: usize,
    step: usize,
) -> Result<Batch> {
    let b = indices.len();
    let (g, f, c) = (cfg.global_size, cfg.focal_size, cfg.channels);
    let (gsz, fsz) = (c * g * g, c * f * f);
    let side = images.side;
    // Per image: target, anchor, focal views, each from the image's own random stream.
    let per_image: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = indices
        .par_iter()
        .map(|&i| {
            let mut rng = Rng::derive(seed, 1 + epoch as u64, i as u64);
            let img = images.image(i)?;
            let img = &img[..];
            let mut t = vec![0f32; gsz];
            let mut a = vec![0f32; gsz];
            view(img, side, g, cfg.global_scale, cfg, &mut rng, &mut t);
            view(img, side, g, cfg.global_scale, cfg, &mut rng, &mut a);
            let mut fo = vec![0f32; fsz * cfg.focal_views];
            for k in 0..cfg.focal_views {
                view(img, side, f, cfg.focal_scale, cfg, &mut rng, &mut fo[k * fsz..(k + 1) * fsz]);
            }
            Ok((t, a, fo))
        })
        .collect::<Result<_>>()?;
    let mut batch = Batch {
        size: b,
        target: Vec::with_capacity(b * gsz),
        anchor: Vec::with_capacity(b * gsz),
        focal: vec![0f32; cfg.focal_views * b * fsz],
        anchor_keep: Vec::new(),
        anchor_kept: 0,
        focal_keep: Vec::new(),
        focal_kept: 0,
        ehr: Vec::new(),
    };
    for (j, (t, a, fo)) in per_image.into_iter().enumerate() {
        batch.target.extend(t);
        batch.anchor.extend(a);
        for k in 0..cfg.focal_views {
            // View-major: focal view k of image j is row k * B + j.
            let row = k * b + j;
            batch.focal[row * fsz..(row + 1) * fsz].copy_from_slice(&fo[k * fsz..(k + 1) * fsz]);
        }
        batch.ehr.extend_from_slice(images.feature_row(indices[j]));
    }
    let (pg, pf) = ((g / patch_size).pow(2), (f / patch_size).pow(2));
    let mut rng = Rng::derive(seed, 0x3A5C, (epoch as u64) << 32 | step as u64);
    match masking {
        Masking::Paper => {
            for _ in 0..b {
                batch.anchor_keep.extend(keep_paper(pg, mask_ratio, &mut rng));
            }
            for _ in 0..cfg.focal_views * b {
                batch.focal_keep.extend(keep_paper(pf, mask_ratio, &mut rng));
            }
            batch.anchor_kept = batch.anchor_keep.len() / b.max(1);
            batch.focal_kept = batch.focal_keep.len() / (cfg.focal_views * b).max(1);
        }
        Masking::Msn => {
            let shared = keep_msn(pg, mask_ratio, &mut rng);
            batch.anchor_kept = shared.len();
            for _ in 0..b {
                batch.anchor_keep.extend(&shared);
            }
        }
        Masking::None => {}
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_masking_keeps_cls_and_never_the_last_patch() {
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let k = keep_paper(196, 0.15, &mut rng);
            assert_eq!(k.len(), 166, "CLS + 165 at 224");
            assert_eq!(k[0], 0);
            assert!(!k.contains(&196));
            let mut d = k.clone();
            d.dedup();
            assert_eq!(d.len(), k.len());
        }
        assert_eq!(keep_paper(36, 0.15, &mut rng).len(), 30, "CLS + 29 at 96");
        let m = keep_msn(196, 0.15, &mut rng);
        assert_eq!(m.len(), 167, "CLS + 166 patches");
    }

    #[test]
    fn taps_are_identity_at_scale_one_and_stretched_triangles_when_downscaling() {
        for t in axis_taps(3, 10, 10) {
            assert_eq!(t.weights.iter().filter(|w| **w != 0.0).count(), 1);
        }
        assert_eq!(axis_taps(3, 10, 10)[4], Taps { first: 7, weights: vec![1.0, 0.0] });
        // Halving: four taps 1/8, 3/8, 3/8, 1/8 inside; at the edge the outside one is dropped.
        let half = axis_taps(0, 8, 4);
        assert_eq!(half[1], Taps { first: 1, weights: vec![0.125, 0.375, 0.375, 0.125] });
        assert_eq!(half[0].first, 0);
        assert!((half[0].weights[0] - 3.0 / 7.0).abs() < 1e-6, "{:?}", half[0]);
        for t in axis_taps(5, 37, 9).iter().chain(&axis_taps(0, 5, 12)) {
            assert!((t.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(t.first + t.weights.len() <= 42);
        }
    }

    #[test]
    fn a_downscaled_stripe_pattern_averages_instead_of_aliasing() {
        // One-pixel vertical stripes, 0 and 255, downscaled 4x: every output pixel covers as
        // many dark as bright columns, so it is mid-gray (point sampling would give 0 or 1).
        let side = 64;
        let img: Vec<u8> = (0..side * side).map(|i| if i % 2 == 0 { 0 } else { 255 }).collect();
        let out = resized_crop(&img, side, (0, 0, side, side), 16, false);
        assert!(out.iter().all(|v| (v - 0.5).abs() < 0.07), "{:?}", &out[..16]);
        let flat = vec![77u8; side * side];
        let out = resized_crop(&flat, side, (5, 9, 40, 23), 12, true);
        assert!(out.iter().all(|v| (v - 77.0 / 255.0).abs() < 1e-6));
    }

    #[test]
    fn crops_stay_inside_and_views_are_reproducible() {
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let (y, x, h, w) = crop_box(64, (0.05, 0.3), (0.75, 4.0 / 3.0), &mut rng);
            assert!(y + h <= 64 && x + w <= 64 && h >= 1 && w >= 1);
        }
        let images = Images::in_memory(
            16,
            (0..512).map(|i| (i % 251) as u8).collect(),
            vec![1.0, 0.0, 0.0, 1.0],
            vec!["a".into(), "b".into()],
        );
        let cfg = ViewConfig::new().with_global_size(8).with_focal_size(4).with_focal_views(2);
        let a = make_batch(&images, &[1, 0], &cfg, Masking::Paper, 0.15, 4, 7, 0, 0).unwrap();
        let b = make_batch(&images, &[1, 0], &cfg, Masking::Paper, 0.15, 4, 7, 0, 0).unwrap();
        assert_eq!(a.target, b.target);
        assert_eq!(a.focal.len(), 2 * 2 * 3 * 16);
        assert_eq!(a.ehr, vec![0.0, 1.0, 1.0, 0.0], "feature rows follow the batch order");
        let c = make_batch(&images, &[1, 0], &cfg, Masking::Paper, 0.15, 4, 7, 1, 0).unwrap();
        assert_ne!(a.target, c.target, "another epoch, other crops");
        // A shard holds its samples' rows of every view and mask (focal views view-major).
        let one = a.shard(1..2, 2);
        let (g, f) = (3 * 64, 3 * 16);
        assert_eq!(one.size, 1);
        assert_eq!(one.target, a.target[g..2 * g]);
        assert_eq!(one.anchor, a.anchor[g..2 * g]);
        assert_eq!(one.focal, [&a.focal[f..2 * f], &a.focal[3 * f..4 * f]].concat());
        let k = a.anchor_kept;
        assert_eq!(one.anchor_keep, a.anchor_keep[k..2 * k]);
        let k = a.focal_kept;
        assert_eq!(one.focal_keep, [&a.focal_keep[k..2 * k], &a.focal_keep[3 * k..4 * k]].concat());
        assert_eq!(one.ehr, vec![1.0, 0.0]);
    }
}
