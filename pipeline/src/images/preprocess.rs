//! From an image file to the model's input: decode (DICOM in [`super::dicom`], JPG/PNG through
//! `image` here) to gray in display sense, optionally a global histogram equalisation, then
//! the centred square (or the image padded to a square) area-averaged to `size x size`, 8-bit.
//!
//! Bad files are not errors of the build: they come back as a [`Reject`] reason.

use std::path::Path;

// Why an image was not used (defined with the path checks, which give reasons too).
pub use crate::sources::paths::Reject;

/// Largest image accepted (pixels); anything above is treated as a hostile header.
pub const MAX_PIXELS: u64 = 100_000_000;

/// A decoded grayscale image, display sense (bright = dense), values in 0..=1.
#[derive(Debug, Clone)]
pub struct Gray {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    /// How stored values became display intensities (the `voi` column of the feature table):
    /// one of the [`crate::images::dicom`] paths, or [`RASTER`].
    pub voi: &'static str,
}

/// The intensity path of a JPG or PNG: its 8- or 16-bit values as they are.
pub const RASTER: &str = "raster values as stored";

/// How the image becomes a square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Geometry {
    /// The centred square (a 3056x2544 film loses about 17% of its height).
    #[default]
    Crop,
    /// The whole image, padded with black to a square.
    Letterbox,
}

impl Geometry {
    pub fn name(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Letterbox => "letterbox",
        }
    }
}

/// What the stage makes of a decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Output {
    /// Side of the square 8-bit output.
    pub size: usize,
    pub geometry: Geometry,
    /// Global histogram equalisation after the VOI (as MIMIC-CXR-JPG was made).
    pub equalize: bool,
}

impl Output {
    /// A centred crop of side `size`, not equalised.
    pub fn square(size: usize) -> Self {
        Self { size, geometry: Geometry::Crop, equalize: false }
    }

    /// The preprocessing, in words, recorded in the config and the manifest.
    pub fn describe(&self) -> String {
        format!(
            "modality LUT (rescale or Modality LUT Sequence); VOI: the VOI LUT Sequence, else the file's first window \
             (LINEAR, LINEAR_EXACT or SIGMOID), else the 0.5-99.5 percentile range; MONOCHROME1 inverted; {}{}, \
             area-average resize to {}x{}; 8-bit",
            if self.equalize { "global histogram equalisation; " } else { "" },
            match self.geometry {
                Geometry::Crop => "centred square",
                Geometry::Letterbox => "padded to a square (letterbox)",
            },
            self.size,
            self.size
        )
    }

    /// The 8-bit square of a decoded image.
    pub fn apply(&self, g: &Gray) -> Vec<u8> {
        let equalized;
        let g = if self.equalize {
            equalized = equalize(g);
            &equalized
        } else {
            g
        };
        match self.geometry {
            Geometry::Crop => square(g, self.size),
            Geometry::Letterbox => square(&letterbox(g), self.size),
        }
    }
}

/// `values * slope + intercept` mapped linearly from `[lo, hi]` to `[0, 1]` (clamped), inverted
/// for MONOCHROME1.
pub(super) fn linear(values: &[f32], slope: f32, intercept: f32, lo: f32, hi: f32, invert: bool) -> Vec<f32> {
    let span = (hi - lo).max(f32::EPSILON);
    let (mut a, mut k) = (slope / span, (intercept - lo) / span);
    if invert {
        (a, k) = (-a, 1.0 - k);
    }
    values.iter().map(|&v| (v * a + k).clamp(0.0, 1.0)).collect()
}

/// Decodes a JPG or PNG (8- or 16-bit gray, RGB or RGBA) to gray.
pub fn decode_raster(path: &Path) -> Result<Gray, Reject> {
    let len = fs_err::metadata(path).map_err(|e| format!("unreadable: {e}"))?.len();
    if len == 0 {
        return Err("zero-size file".into());
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| format!("unreadable: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("unreadable: {e}"))?;
    let (w, h) = reader.into_dimensions().map_err(|e| format!("not an image: {e}"))?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS || w == 0 || h == 0 {
        return Err(format!("absurd size {h}x{w}"));
    }
    let img = image::open(path).map_err(|e| format!("cannot decode: {e}"))?;
    let luma = img.to_luma32f();
    Ok(Gray { rows: h as usize, cols: w as usize, data: luma.into_raw(), voi: RASTER })
}

/// The `lo` and `hi` quantiles of the values, from a 65,536-bin histogram between min and max
/// (exact for stored integer pixel values, whatever the rescale).
pub fn percentile_range(data: &[f32], lo: f64, hi: f64) -> (f32, f32) {
    const BINS: usize = 65_536;
    let (min, max) = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if max.partial_cmp(&min) != Some(std::cmp::Ordering::Greater) {
        return (min, max);
    }
    let scale = (BINS - 1) as f32 / (max - min);
    let mut hist = vec![0u64; BINS];
    // The smallest value of each bin, so quantiles are actual data values.
    let mut lowest = vec![f32::INFINITY; BINS];
    for &v in data {
        let b = ((v - min) * scale) as usize;
        hist[b] += 1;
        lowest[b] = lowest[b].min(v);
    }
    let n = data.len() as f64;
    let at = |q: f64| {
        let target = (q * n).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, c) in hist.iter().enumerate() {
            acc += c;
            if acc >= target {
                return lowest[i];
            }
        }
        max
    };
    (at(lo), at(hi))
}

/// Area weights mapping `src` samples onto `dst` samples: for each output, the first source
/// index and the weights of the source samples it covers (summing to 1).
fn area_weights(src: usize, dst: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
            let first = a.floor() as usize;
            let last = (b.ceil() as usize).min(src).max(first + 1);
            let w: Vec<f32> =
                (first..last).map(|i| ((b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0) / scale) as f32).collect();
            (first, w)
        })
        .collect()
}

/// Global histogram equalisation of a `[0, 1]` image over 4,096 levels: each value becomes the
/// fraction of pixels at or below its level (the CDF), rescaled so the darkest level is 0.
pub fn equalize(g: &Gray) -> Gray {
    const LEVELS: usize = 4096;
    let level = |v: f32| ((v.clamp(0.0, 1.0) * (LEVELS - 1) as f32).round() as usize).min(LEVELS - 1);
    let mut hist = vec![0u64; LEVELS];
    for &v in &g.data {
        hist[level(v)] += 1;
    }
    let mut cdf = vec![0u64; LEVELS];
    let mut acc = 0;
    for (c, h) in cdf.iter_mut().zip(&hist) {
        acc += h;
        *c = acc;
    }
    let n = g.data.len() as u64;
    let first = cdf.iter().copied().find(|&c| c > 0).unwrap_or(0);
    let span = (n - first).max(1) as f32;
    let data = g.data.iter().map(|&v| (cdf[level(v)] - first) as f32 / span).collect();
    Gray { rows: g.rows, cols: g.cols, data, voi: g.voi }
}

/// The image centred on a black square whose side is its longer side.
pub fn letterbox(g: &Gray) -> Gray {
    let side = g.rows.max(g.cols);
    let (r0, c0) = ((side - g.rows) / 2, (side - g.cols) / 2);
    let mut data = vec![0f32; side * side];
    for r in 0..g.rows {
        data[(r0 + r) * side + c0..(r0 + r) * side + c0 + g.cols]
            .copy_from_slice(&g.data[r * g.cols..(r + 1) * g.cols]);
    }
    Gray { rows: side, cols: side, data, voi: g.voi }
}

/// The centred square of `g`, resampled by area averaging to `size x size`, as bytes.
pub fn square(g: &Gray, size: usize) -> Vec<u8> {
    let side = g.rows.min(g.cols);
    let (r0, c0) = ((g.rows - side) / 2, (g.cols - side) / 2);
    let wts = area_weights(side, size);
    // Horizontal pass over the square's rows.
    let mut tmp = vec![0f32; side * size];
    for r in 0..side {
        let row = &g.data[(r0 + r) * g.cols + c0..(r0 + r) * g.cols + c0 + side];
        for (o, (first, w)) in wts.iter().enumerate() {
            tmp[r * size + o] = w.iter().enumerate().map(|(k, wk)| row[first + k] * wk).sum();
        }
    }
    // Vertical pass.
    let mut out = vec![0u8; size * size];
    for (o, (first, w)) in wts.iter().enumerate() {
        for c in 0..size {
            let v: f32 = w.iter().enumerate().map(|(k, wk)| tmp[(first + k) * size + c] * wk).sum();
            out[o * size + c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_cover_each_output_once() {
        for (src, dst) in [(10, 3), (3056, 256), (7, 7), (5, 8)] {
            for (_, w) in area_weights(src, dst) {
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{src}->{dst}: {w:?}");
            }
        }
    }

    #[test]
    fn square_keeps_the_centre_and_averages() {
        // 4 rows x 6 cols: the centred 4x4 square is columns 1..5.
        let data: Vec<f32> = (0..24).map(|i| if (1..5).contains(&(i % 6)) { 1.0 } else { 0.0 }).collect();
        let out = square(&Gray { rows: 4, cols: 6, data, voi: RASTER }, 2);
        assert_eq!(out, vec![255; 4]);
        // A 2x2 checkerboard block averages to mid gray.
        let data = vec![0.0, 1.0, 1.0, 0.0];
        assert_eq!(square(&Gray { rows: 2, cols: 2, data, voi: RASTER }, 1), vec![128]);
    }

    /// Against the `image` crate's Lanczos3 resize of a smooth radiograph-like image.
    #[test]
    fn area_resize_agrees_with_a_reference_resize() {
        let (rows, cols, size) = (611usize, 509usize, 128usize);
        let f = |r: usize, c: usize| {
            let (y, x) = (r as f32 / rows as f32, c as f32 / cols as f32);
            0.5 + 0.3 * (6.0 * x).sin() * (4.0 * y).cos() + 0.15 * (1.0 - ((x - 0.5).powi(2) + (y - 0.5).powi(2)) * 4.0)
        };
        let data: Vec<f32> = (0..rows * cols).map(|i| f(i / cols, i % cols).clamp(0.0, 1.0)).collect();
        let ours = square(&Gray { rows, cols, data: data.clone(), voi: RASTER }, size);
        // Reference: crop the same centred square, resize with Lanczos3.
        let side = cols;
        let r0 = (rows - side) / 2;
        let crop: Vec<u8> =
            (0..side * side).map(|i| (data[(r0 + i / side) * cols + i % side] * 255.0).round() as u8).collect();
        let img = image::GrayImage::from_raw(side as u32, side as u32, crop).unwrap();
        let reference = image::imageops::resize(&img, size as u32, size as u32, image::imageops::FilterType::Lanczos3);
        let mad = ours.iter().zip(reference.as_raw()).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
            / ours.len() as f64;
        assert!(mad < 1.5, "mean absolute difference {mad}");
    }

    #[test]
    fn percentiles_ignore_outliers() {
        let mut data: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        data.push(1e6);
        let (lo, hi) = percentile_range(&data, 0.005, 0.995);
        assert!(lo < 20.0 && (980.0..1010.0).contains(&hi), "{lo} {hi}");
        let ints: Vec<f32> = (0..=4095).map(|i| i as f32).collect();
        let (lo, hi) = percentile_range(&ints, 0.005, 0.995);
        assert_eq!((lo, hi), (20.0, 4075.0), "exact on integer pixel values");
    }

    #[test]
    fn equalize_flattens_the_histogram_and_letterbox_pads() {
        // Three quarters of the pixels dark, one quarter bright: equalised, the dark level
        // becomes 0 and the bright one 1; a ramp stays a ramp.
        let g = Gray { rows: 2, cols: 2, data: vec![0.1, 0.1, 0.1, 0.9], voi: RASTER };
        assert_eq!(equalize(&g).data, vec![0.0, 0.0, 0.0, 1.0]);
        let ramp = Gray { rows: 1, cols: 5, data: vec![0.0, 0.1, 0.2, 0.3, 0.4], voi: RASTER };
        assert_eq!(equalize(&ramp).data, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        let wide = Gray { rows: 2, cols: 4, data: vec![1.0; 8], voi: RASTER };
        let boxed = letterbox(&wide);
        assert_eq!((boxed.rows, boxed.cols), (4, 4));
        assert_eq!(boxed.data, [[0.0; 4], [1.0; 4], [1.0; 4], [0.0; 4]].concat());
        // Cropping keeps the centre 2x2; letterboxing keeps everything and pads.
        let out = Output { size: 4, geometry: Geometry::Letterbox, equalize: false };
        assert_eq!(out.apply(&wide), [[0; 4], [255; 4], [255; 4], [0; 4]].concat());
        assert_eq!(Output::square(2).apply(&wide), vec![255; 4]);
    }
}
