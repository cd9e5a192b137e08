//! From an image file to the model's input: decode (DICOM through dicom-pixeldata, JPG/PNG
//! through `image`), the modality LUT (Rescale Slope/Intercept or the Modality LUT Sequence),
//! the VOI (the VOI LUT Sequence, else the file's first window with its VOI LUT Function
//! LINEAR, LINEAR_EXACT or SIGMOID, else the 0.5-99.5 percentile range; PS3.3 C.11.1-C.11.2),
//! MONOCHROME1 inverted so bone is bright, optionally a global histogram equalisation, then
//! the centred square (or the image padded to a square) area-averaged to `size x size`, 8-bit.
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

/// How the image becomes a square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A lookup table of the Modality or VOI LUT Sequence (PS3.3 C.11.1.1, C.11.2.1.1).
#[derive(Debug, Clone)]
struct Lut {
    /// The stored (or modality) value mapped to the first entry.
    first: i32,
    data: Vec<f32>,
    /// Largest output value the table can hold (`2^bits - 1`, or the data's maximum if
    /// larger): the VOI output is divided by it.
    max_out: f32,
}

impl Lut {
    /// Values below the first input map to the first entry, above the last to the last.
    fn get(&self, x: i32) -> f32 {
        let i = (i64::from(x) - i64::from(self.first)).clamp(0, self.data.len() as i64 - 1);
        self.data[i as usize]
    }
}

/// The first item of a LUT sequence, if the file has one; an error when it is malformed.
fn lut(obj: &dicom_object::DefaultDicomObject, seq: dicom_core::Tag, signed: bool) -> Result<Option<Lut>, Reject> {
    let Some(items) = obj.element_opt(seq).ok().flatten().and_then(|e| e.items()) else { return Ok(None) };
    let Some(item) = items.first() else { return Ok(None) };
    let name = if seq == tags::MODALITY_LUT_SEQUENCE { "Modality LUT Sequence" } else { "VOI LUT Sequence" };
    let bad = |why: &str| format!("{name}: {why}");
    let desc: Vec<i64> = item
        .element(tags::LUT_DESCRIPTOR)
        .ok()
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .ok_or_else(|| bad("no readable LUT Descriptor (0028,3002)"))?;
    let [entries, first, bits] = desc[..] else { return Err(bad("LUT Descriptor must hold 3 values")) };
    // 0 entries means 65,536; a first value written as US in a signed image is a negative one.
    let entries = if entries == 0 { 65_536 } else { entries as usize };
    let first = if signed && first > 32_767 { first - 65_536 } else { first } as i32;
    let data: Vec<f32> = item
        .element(tags::LUT_DATA)
        .ok()
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .ok_or_else(|| bad("no readable LUT Data (0028,3006)"))?
        .into_iter()
        .map(|v| v as f32)
        .collect();
    if data.len() < entries || data.is_empty() || !(1..=16).contains(&bits) {
        return Err(bad(&format!("{} LUT entries for {entries} declared, {bits} bits", data.len())));
    }
    let max_out = data.iter().copied().fold(((1u32 << bits) - 1) as f32, f32::max);
    Ok(Some(Lut { first, data: data[..entries].to_vec(), max_out }))
}

/// The VOI LUT Function (0028,1056) of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl VoiFunction {
    /// A modality value through the window `(center, width)`, in `[0, 1]` (PS3.3 C.11.2.1.2-3).
    fn apply(self, x: f32, c: f32, w: f32) -> f32 {
        match self {
            Self::Linear => ((x - (c - 0.5)) / (w - 1.0).max(f32::EPSILON) + 0.5).clamp(0.0, 1.0),
            Self::LinearExact => ((x - c) / w.max(f32::EPSILON) + 0.5).clamp(0.0, 1.0),
            Self::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w.max(f32::EPSILON)).exp()),
        }
    }
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
    let bits_stored = int(tags::BITS_STORED).unwrap_or(8);
    if syntax == "1.2.840.10008.1.2.4.51" && bits_stored > 8 {
        return Err(format!(
            "unsupported transfer syntax {syntax} with {bits_stored}-bit samples (12-bit JPEG Extended: \
             no maintained Rust decoder reads 12-bit lossy JPEG)"
        ));
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
    // Grayscale: the stored integers, then modality LUT, VOI and MONOCHROME1.
    let stored_only = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    let stored: Vec<i32> = decoded.to_vec_frame_with_options(0, &stored_only).map_err(convert)?;
    size_check(stored.len())?;
    let signed = int(tags::PIXEL_REPRESENTATION) == Some(1);
    let modality_lut = lut(&obj, tags::MODALITY_LUT_SEQUENCE, signed)?;
    let voi_lut = lut(&obj, tags::VOILUT_SEQUENCE, signed)?;
    let function = match obj.element_opt(tags::VOILUT_FUNCTION).ok().flatten().and_then(|e| e.to_str().ok()) {
        Some(f) => match f.trim_matches(|c: char| c == '\0' || c.is_whitespace()) {
            "LINEAR" | "" => VoiFunction::Linear,
            "LINEAR_EXACT" => VoiFunction::LinearExact,
            "SIGMOID" => VoiFunction::Sigmoid,
            other => return Err(format!("VOI LUT Function {other:?}: expected LINEAR, LINEAR_EXACT or SIGMOID")),
        },
        None => VoiFunction::Linear,
    };
    let rescale = decoded.rescale().ok().and_then(|r| r.first().copied());
    let (slope, intercept) = rescale.map_or((1.0, 0.0), |r| (r.slope as f32, r.intercept as f32));
    if modality_lut.is_none() && voi_lut.is_none() && function == VoiFunction::Linear {
        // The common case in one pass over the stored values.
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
        return Ok(Gray { rows, cols, data: stored_linear(&stored, slope, intercept, lo, hi, mono1) });
    }
    let modality: Vec<f32> = match &modality_lut {
        Some(l) => stored.iter().map(|&v| l.get(v)).collect(),
        None => stored.iter().map(|&v| v as f32 * slope + intercept).collect(),
    };
    let mut data: Vec<f32> = match (&voi_lut, window) {
        // A VOI LUT's input is the modality value (an integer when it comes from a table).
        (Some(l), _) => modality.iter().map(|&m| l.get(m.round() as i32) / l.max_out).collect(),
        (None, Some(w)) => {
            let (c, w) = (w.center as f32, w.width as f32);
            modality.iter().map(|&m| function.apply(m, c, w)).collect()
        }
        (None, None) => {
            let (lo, hi) = percentile_range(&modality, 0.005, 0.995);
            linear(&modality, 1.0, 0.0, lo, hi, false)
        }
    };
    if mono1 {
        data.iter_mut().for_each(|v| *v = 1.0 - *v);
    }
    Ok(Gray { rows, cols, data })
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
    Gray { rows: g.rows, cols: g.cols, data }
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
    Gray { rows: side, cols: side, data }
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
    fn equalize_flattens_the_histogram_and_letterbox_pads() {
        // Three quarters of the pixels dark, one quarter bright: equalised, the dark level
        // becomes 0 and the bright one 1; a ramp stays a ramp.
        let g = Gray { rows: 2, cols: 2, data: vec![0.1, 0.1, 0.1, 0.9] };
        assert_eq!(equalize(&g).data, vec![0.0, 0.0, 0.0, 1.0]);
        let ramp = Gray { rows: 1, cols: 5, data: vec![0.0, 0.1, 0.2, 0.3, 0.4] };
        assert_eq!(equalize(&ramp).data, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        let wide = Gray { rows: 2, cols: 4, data: vec![1.0; 8] };
        let boxed = letterbox(&wide);
        assert_eq!((boxed.rows, boxed.cols), (4, 4));
        assert_eq!(boxed.data, [[0.0; 4], [1.0; 4], [1.0; 4], [0.0; 4]].concat());
        // Cropping keeps the centre 2x2; letterboxing keeps everything and pads.
        let out = Output { size: 4, geometry: Geometry::Letterbox, equalize: false };
        assert_eq!(out.apply(&wide), [[0; 4], [255; 4], [255; 4], [0; 4]].concat());
        assert_eq!(Output::square(2).apply(&wide), vec![255; 4]);
    }

    #[test]
    fn voi_functions_follow_ps3_3() {
        // LINEAR: c=100, w=21 maps 89.5 -> 0 and 109.5 -> 1 (x <= c - 0.5 - (w-1)/2 is 0).
        assert_eq!(VoiFunction::Linear.apply(89.5, 100.0, 21.0), 0.0);
        assert_eq!(VoiFunction::Linear.apply(109.5, 100.0, 21.0), 1.0);
        assert!((VoiFunction::Linear.apply(99.5, 100.0, 21.0) - 0.5).abs() < 1e-6);
        // LINEAR_EXACT: c=100, w=20 maps 90 -> 0, 100 -> 0.5, 110 -> 1.
        assert_eq!(VoiFunction::LinearExact.apply(90.0, 100.0, 20.0), 0.0);
        assert_eq!(VoiFunction::LinearExact.apply(100.0, 100.0, 20.0), 0.5);
        assert_eq!(VoiFunction::LinearExact.apply(110.0, 100.0, 20.0), 1.0);
        // SIGMOID: 1 / (1 + exp(-4 (x - c) / w)).
        assert_eq!(VoiFunction::Sigmoid.apply(100.0, 100.0, 20.0), 0.5);
        assert!((VoiFunction::Sigmoid.apply(110.0, 100.0, 20.0) - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn linear_maps_window_and_inverts() {
        let v = stored_linear(&[0, 50, 100, 200], 1.0, 0.0, 0.0, 100.0, false);
        assert_eq!(v, vec![0.0, 0.5, 1.0, 1.0]);
        let inv = stored_linear(&[0, 50, 100], 2.0, -100.0, -100.0, 100.0, true);
        assert_eq!(inv, vec![1.0, 0.5, 0.0]);
    }
}
