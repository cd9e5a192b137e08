//! From an image file to the model's input: decode (DICOM through dicom-pixeldata, JPG/PNG
//! through `image`), modality LUT, VOI (the file's window when present, else the 0.5-99.5
//! percentile range), MONOCHROME1 inverted so bone is bright, then an aspect-preserving
//! area-average downscale of the centred square to `size x size`, 8-bit.
//!
//! Bad files are not errors of the build: they come back as a [`Reject`] reason.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PhotometricInterpretation, PixelDecoder};

/// Why an image was not used.
pub type Reject = String;

/// Largest image accepted (pixels); anything above is treated as a hostile header.
pub const MAX_PIXELS: u64 = 100_000_000;

/// A decoded grayscale image, display sense (bright = dense), values in 0..=1.
#[derive(Debug, Clone)]
pub struct Gray {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// Decodes a DICOM file.
pub fn decode_dicom(path: &Path) -> Result<Gray, Reject> {
    let len = fs_err::metadata(path).map_err(|e| format!("unreadable: {e}"))?.len();
    if len == 0 {
        return Err("zero-size file".into());
    }
    // Headers first, so a hostile size never allocates.
    let head = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| format!("not a readable DICOM file: {}", why(&e)))?;
    let int = |tag| head.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok());
    let (rows, cols) = (int(tags::ROWS).unwrap_or(0), int(tags::COLUMNS).unwrap_or(0));
    if rows == 0 || cols == 0 {
        return Err(format!("no image: Rows {rows}, Columns {cols}"));
    }
    if rows * cols > MAX_PIXELS {
        return Err(format!("absurd size {rows}x{cols}"));
    }
    let spp = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if spp != 1 && spp != 3 {
        return Err(format!("SamplesPerPixel {spp}: expected 1 (grayscale) or 3 (color)"));
    }
    let syntax = head.meta().transfer_syntax().trim_end_matches('\0').to_string();
    if let Some(name) = unsupported_syntax(&syntax) {
        return Err(format!("unsupported transfer syntax {syntax} ({name})"));
    }
    let obj = dicom_object::open_file(path).map_err(|e| format!("not a readable DICOM file: {}", why(&e)))?;
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err("no pixel data".into());
    }
    let decoded = obj.decode_pixel_data_frame(0).map_err(|e| format!("cannot decode pixel data: {}", why(&e)))?;
    let (rows, cols) = (decoded.rows() as usize, decoded.columns() as usize);
    let spp = usize::from(decoded.samples_per_pixel());
    let convert = |e: dicom_pixeldata::Error| format!("cannot convert pixel data: {}", why(&e));
    let size_check = |n: usize| {
        if n == rows * cols * spp {
            Ok(())
        } else {
            Err(format!("pixel data holds {n} samples for {rows}x{cols}x{spp}"))
        }
    };
    let mono1 = matches!(decoded.photometric_interpretation(), PhotometricInterpretation::Monochrome1);
    let window = decoded.window().ok().flatten().and_then(|w| w.first().copied()).filter(|w| w.width > 1.0);
    if spp == 3 {
        // Color (secondary capture and the like), interleaved samples: luma, or the Y of YBR.
        let samples: Vec<f32> = decoded.to_vec_frame(0).map_err(convert)?;
        size_check(samples.len())?;
        let ybr = decoded.photometric_interpretation().as_str().starts_with("YBR");
        let at = |i: usize, c: usize| samples[i * 3 + c];
        let luma: Vec<f32> = (0..rows * cols)
            .map(|i| if ybr { at(i, 0) } else { 0.299 * at(i, 0) + 0.587 * at(i, 1) + 0.114 * at(i, 2) })
            .collect();
        let (lo, hi) = percentile_range(&luma, 0.005, 0.995);
        return Ok(Gray { rows, cols, data: linear(&luma, 1.0, 0.0, lo, hi, mono1) });
    }
    // Grayscale: the stored integers, then modality LUT, VOI and MONOCHROME1 in one pass.
    let stored_only = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    let stored: Vec<i32> = decoded.to_vec_frame_with_options(0, &stored_only).map_err(convert)?;
    size_check(stored.len())?;
    let rescale = decoded.rescale().ok().and_then(|r| r.first().copied());
    let (slope, intercept) = rescale.map_or((1.0, 0.0), |r| (r.slope as f32, r.intercept as f32));
    let (lo, hi) = match window {
        // The DICOM linear VOI function maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] to [0, 1].
        Some(w) => {
            let (c, w) = (w.center as f32, w.width as f32);
            (c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0)
        }
        None => {
            // Percentiles of the stored values are those of the rescaled values (the
            // modality LUT is linear), mapped through it.
            let (a, b) = stored_percentiles(&stored, 0.005, 0.995);
            let (a, b) = (a as f32 * slope + intercept, b as f32 * slope + intercept);
            (a.min(b), a.max(b))
        }
    };
    Ok(Gray { rows, cols, data: stored_linear(&stored, slope, intercept, lo, hi, mono1) })
}

/// `values * slope + intercept` mapped linearly from `[lo, hi]` to `[0, 1]` (clamped), inverted
/// for MONOCHROME1.
fn linear(values: &[f32], slope: f32, intercept: f32, lo: f32, hi: f32, invert: bool) -> Vec<f32> {
    let span = (hi - lo).max(f32::EPSILON);
    let (mut a, mut k) = (slope / span, (intercept - lo) / span);
    if invert {
        (a, k) = (-a, 1.0 - k);
    }
    values.iter().map(|&v| (v * a + k).clamp(0.0, 1.0)).collect()
}

/// [`linear`] over stored integer values.
fn stored_linear(values: &[i32], slope: f32, intercept: f32, lo: f32, hi: f32, invert: bool) -> Vec<f32> {
    let span = (hi - lo).max(f32::EPSILON);
    let (mut a, mut k) = (slope / span, (intercept - lo) / span);
    if invert {
        (a, k) = (-a, 1.0 - k);
    }
    values.iter().map(|&v| (v as f32 * a + k).clamp(0.0, 1.0)).collect()
}

/// The `lo` and `hi` quantiles of stored integer values, exact: one histogram bin per value
/// when the range allows (always for 16-bit pixels), else through [`percentile_range`].
pub fn stored_percentiles(values: &[i32], lo: f64, hi: f64) -> (i32, i32) {
    let (min, max) = values.iter().fold((i32::MAX, i32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if values.is_empty() || min == max {
        return (min.min(max), max);
    }
    let range = (i64::from(max) - i64::from(min)) as usize;
    if range >= 1 << 20 {
        let f: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let (a, b) = percentile_range(&f, lo, hi);
        return (a as i32, b as i32);
    }
    let mut hist = vec![0u32; range + 1];
    for &v in values {
        hist[(i64::from(v) - i64::from(min)) as usize] += 1;
    }
    let n = values.len() as f64;
    let at = |q: f64| {
        let target = (q * n).ceil().max(1.0) as u64;
        let mut acc = 0u64;
        for (i, &c) in hist.iter().enumerate() {
            acc += u64::from(c);
            if acc >= target {
                return (i64::from(min) + i as i64) as i32;
            }
        }
        max
    };
    (at(lo), at(hi))
}

/// An error and its causes on one line.
fn why(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Transfer syntaxes this build cannot decode, with their names (JPEG-LS needs the CharLS C++
/// library, which is not built in).
fn unsupported_syntax(uid: &str) -> Option<&'static str> {
    Some(match uid {
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.101" | "1.2.840.10008.1.2.4.102" => "MPEG-2 video",
        "1.2.840.10008.1.2.4.103" | "1.2.840.10008.1.2.4.104" | "1.2.840.10008.1.2.4.105" => "MPEG-4 video",
        "1.2.840.10008.1.2.4.106" | "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "MPEG-4 video",
        "1.2.840.10008.1.2.4.110" | "1.2.840.10008.1.2.4.111" | "1.2.840.10008.1.2.4.112" => "JPEG XL",
        "1.2.840.10008.1.2.4.201" | "1.2.840.10008.1.2.4.202" | "1.2.840.10008.1.2.4.203" => "HTJ2K",
        _ => return None,
    })
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
    Ok(Gray { rows: h as usize, cols: w as usize, data: luma.into_raw() })
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
        let out = square(&Gray { rows: 4, cols: 6, data }, 2);
        assert_eq!(out, vec![255; 4]);
        // A 2x2 checkerboard block averages to mid gray.
        let data = vec![0.0, 1.0, 1.0, 0.0];
        assert_eq!(square(&Gray { rows: 2, cols: 2, data }, 1), vec![128]);
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
        let ours = square(&Gray { rows, cols, data: data.clone() }, size);
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
    fn stored_percentiles_are_exact() {
        let ints: Vec<i32> = (0..=4095).collect();
        assert_eq!(stored_percentiles(&ints, 0.005, 0.995), (20, 4075));
        let mut signed: Vec<i32> = (-1000..1000).collect();
        signed.push(30_000);
        assert_eq!(stored_percentiles(&signed, 0.0, 1.0), (-1000, 30_000));
        assert_eq!(stored_percentiles(&[7, 7, 7], 0.005, 0.995), (7, 7));
    }

    #[test]
    fn linear_maps_window_and_inverts() {
        let v = stored_linear(&[0, 50, 100, 200], 1.0, 0.0, 0.0, 100.0, false);
        assert_eq!(v, vec![0.0, 0.5, 1.0, 1.0]);
        let inv = stored_linear(&[0, 50, 100], 2.0, -100.0, -100.0, 100.0, true);
        assert_eq!(inv, vec![1.0, 0.5, 0.0]);
    }
}
