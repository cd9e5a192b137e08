//! The linear-evaluation transforms (METHOD.md section 9), on the u8 shard images.
//!
//! Eval: resize the (square) image to `resize`, centre-crop `crop`, replicate gray to the
//! channels and normalise. Train: the same with a random horizontal flip and a random affine
//! map (rotation, translation, scale, about the centre of the resized image, zero fill)
//! between the resize and the crop. Each output pixel is mapped back to the source image and
//! sampled bilinearly, so the resize, the affine map and the crop cost one pass.

use burn::config::Config;

use crate::rng::Rng;

/// Transform settings (the reference's probe values by default).
#[derive(Config, Debug)]
pub struct ProbeTransform {
    /// Output side (224 in the paper; by default a run's pretraining view size).
    pub crop: usize,
    /// Side the image is resized to before cropping (256 for a 224 crop).
    pub resize: usize,
    #[config(default = 3)]
    pub channels: usize,
    #[config(default = "[0.4884, 0.4550, 0.4171]")]
    pub mean: [f32; 3],
    #[config(default = "[0.2596, 0.2530, 0.2556]")]
    pub std: [f32; 3],
    #[config(default = 0.5)]
    pub flip: f64,
    /// Rotation drawn uniformly in +-degrees.
    #[config(default = 45.0)]
    pub degrees: f64,
    /// Translation drawn uniformly in +-fraction of the resized side, per axis.
    #[config(default = 0.15)]
    pub translate: f64,
    #[config(default = "(0.85, 1.15)")]
    pub scale: (f64, f64),
}

impl ProbeTransform {
    /// The paper's proportions for a `crop`: resize to `crop * 256 / 224`.
    pub fn for_crop(crop: usize) -> Self {
        Self::new(crop, ((crop as f64) * 256.0 / 224.0).round() as usize)
    }

    /// Floats per transformed image.
    pub fn len(&self) -> usize {
        self.channels * self.crop * self.crop
    }

    /// Always false (a transform makes at least one value).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The eval transform of a `side x side` image into `dst` (`[channels, crop, crop]`).
    pub fn eval(&self, img: &[u8], side: usize, dst: &mut [f32]) {
        self.apply(img, side, Affine::IDENTITY, false, dst);
    }

    /// The train transform, drawing its randomness from `rng`.
    pub fn train(&self, img: &[u8], side: usize, rng: &mut Rng, dst: &mut [f32]) {
        let flip = rng.f64() < self.flip;
        let angle = rng.uniform(-self.degrees, self.degrees).to_radians();
        let max_t = self.translate * self.resize as f64;
        let tx = rng.uniform(-max_t, max_t).round();
        let ty = rng.uniform(-max_t, max_t).round();
        let scale = rng.uniform(self.scale.0, self.scale.1);
        self.apply(img, side, Affine { angle, tx, ty, scale }, flip, dst);
    }

    fn apply(&self, img: &[u8], side: usize, a: Affine, flip: bool, dst: &mut [f32]) {
        let (crop, resize) = (self.crop, self.resize as f64);
        // Centre crop offset in the resized image (torchvision rounds it).
        let off = ((resize - crop as f64) / 2.0).round();
        let centre = resize / 2.0;
        let (sin, cos) = a.angle.sin_cos();
        let to_src = side as f64 / resize;
        let px = |y: usize, x: usize| f32::from(img[y * side + x]) / 255.0;
        let plane = crop * crop;
        for oy in 0..crop {
            for ox in 0..crop {
                // Pixel centre in the resized image, mirrored when flipped.
                let mut x = off + ox as f64 + 0.5;
                let y = off + oy as f64 + 0.5;
                if flip {
                    x = resize - x;
                }
                // Inverse of q = c + t + s R (p - c).
                let (qx, qy) = (x - centre - a.tx, y - centre - a.ty);
                let px_r = (cos * qx + sin * qy) / a.scale + centre;
                let py_r = (-sin * qx + cos * qy) / a.scale + centre;
                let v = if px_r < 0.0 || py_r < 0.0 || px_r > resize || py_r > resize {
                    0.0
                } else {
                    let sx = (px_r * to_src - 0.5).clamp(0.0, side as f64 - 1.0);
                    let sy = (py_r * to_src - 0.5).clamp(0.0, side as f64 - 1.0);
                    let (xa, ya) = (sx.floor() as usize, sy.floor() as usize);
                    let (fx, fy) = ((sx - xa as f64) as f32, (sy - ya as f64) as f32);
                    let (xb, yb) = ((xa + 1).min(side - 1), (ya + 1).min(side - 1));
                    let top = px(ya, xa) * (1.0 - fx) + px(ya, xb) * fx;
                    let bottom = px(yb, xa) * (1.0 - fx) + px(yb, xb) * fx;
                    top * (1.0 - fy) + bottom * fy
                };
                for c in 0..self.channels {
                    dst[c * plane + oy * crop + ox] = (v - self.mean[c.min(2)]) / self.std[c.min(2)];
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Affine {
    angle: f64,
    tx: f64,
    ty: f64,
    scale: f64,
}

impl Affine {
    const IDENTITY: Self = Self { angle: 0.0, tx: 0.0, ty: 0.0, scale: 1.0 };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_is_a_centre_crop_and_train_varies() {
        // A 16x16 ramp: with resize 16 and crop 8 the eval view is the centre 8x8 exactly.
        let img: Vec<u8> = (0..256).map(|i| i as u8).collect();
        let t = ProbeTransform::new(8, 16).with_channels(1).with_mean([0.0; 3]).with_std([1.0; 3]);
        let mut out = vec![0f32; t.len()];
        t.eval(&img, 16, &mut out);
        for y in 0..8 {
            for x in 0..8 {
                let want = f32::from(img[(y + 4) * 16 + x + 4]) / 255.0;
                assert!((out[y * 8 + x] - want).abs() < 1e-6, "({y},{x})");
            }
        }
        let mut rng = Rng::new(1);
        let mut a = vec![0f32; t.len()];
        t.train(&img, 16, &mut rng, &mut a);
        assert_ne!(a, out, "a random affine map moves pixels");
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        // Flip only: the mirror image of the eval view.
        let f = t.clone().with_degrees(0.0).with_translate(0.0).with_scale((1.0, 1.0)).with_flip(1.0);
        f.train(&img, 16, &mut rng, &mut a);
        for y in 0..8 {
            for x in 0..8 {
                assert!((a[y * 8 + x] - out[y * 8 + 7 - x]).abs() < 1e-6);
            }
        }
    }
}
