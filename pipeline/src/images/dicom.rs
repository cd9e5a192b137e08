//! DICOM decoding (dicom-pixeldata): the header checks, then the stored values through the
//! modality LUT (Rescale Slope/Intercept or the Modality LUT Sequence) and the VOI (the VOI LUT
//! Sequence, else the file's first window with its VOI LUT Function LINEAR, LINEAR_EXACT or
//! SIGMOID, else the 0.5-99.5 percentile range; PS3.3 C.11.1-C.11.2), MONOCHROME1 inverted so
//! bone is bright.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, DecodedPixelData, ModalityLutOption, PhotometricInterpretation, PixelDecoder};

use super::preprocess::{Gray, MAX_PIXELS, Reject, linear, percentile_range};

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
fn lut(obj: &DefaultDicomObject, seq: dicom_core::Tag, signed: bool) -> Result<Option<Lut>, Reject> {
    let name = if seq == tags::MODALITY_LUT_SEQUENCE { "Modality LUT Sequence" } else { "VOI LUT Sequence" };
    let bad = |why: &str| format!("{name}: {why}");
    // Present but unreadable, or not a sequence: an error, never read as absent.
    let element = obj.element_opt(seq).map_err(|e| bad(&format!("unreadable: {e}")))?;
    let Some(element) = element else { return Ok(None) };
    let Some(items) = element.items() else { return Err(bad("the element is not a sequence")) };
    let Some(item) = items.first() else { return Ok(None) };
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

/// The intensity paths (the `voi` column): the VOI LUT Sequence, the file's first window
/// through its VOI LUT Function, or the 0.5-99.5 percentile range when there is neither.
pub const VOI_LUT: &str = "VOI LUT Sequence";
pub const WINDOW_LINEAR: &str = "window, LINEAR";
pub const PERCENTILES: &str = "percentiles 0.5-99.5 (no window)";
/// A colour image: its luma over the percentile range.
pub const COLOR_LUMA: &str = "colour luma, percentiles 0.5-99.5";

/// The VOI LUT Function (0028,1056) of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl VoiFunction {
    /// The intensity path of a window through this function, as the feature table records it.
    fn path(self) -> &'static str {
        match self {
            Self::Linear => WINDOW_LINEAR,
            Self::LinearExact => "window, LINEAR_EXACT",
            Self::Sigmoid => "window, SIGMOID",
        }
    }

    /// A modality value through the window `(center, width)`, in `[0, 1]` (PS3.3 C.11.2.1.2-3).
    fn apply(self, x: f32, c: f32, w: f32) -> f32 {
        match self {
            Self::Linear => ((x - (c - 0.5)) / (w - 1.0).max(f32::EPSILON) + 0.5).clamp(0.0, 1.0),
            Self::LinearExact => ((x - c) / w.max(f32::EPSILON) + 0.5).clamp(0.0, 1.0),
            Self::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w.max(f32::EPSILON)).exp()),
        }
    }
}

/// Decodes a DICOM file to gray: the stored values through the modality LUT and the VOI, in
/// display sense; colour images as their luma.
pub fn decode_dicom(path: &Path) -> Result<Gray, Reject> {
    let signed = check_header(path)?;
    let obj = dicom_object::open_file(path).map_err(|e| format!("not a readable DICOM file: {}", why(&e)))?;
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err("no pixel data".into());
    }
    let decoded = obj.decode_pixel_data_frame(0).map_err(|e| format!("cannot decode pixel data: {}", why(&e)))?;
    let (rows, cols) = (decoded.rows() as usize, decoded.columns() as usize);
    let (data, voi) = if decoded.samples_per_pixel() == 3 {
        (luma(&decoded)?, COLOR_LUMA)
    } else {
        grayscale(&obj, &decoded, signed)?
    };
    Ok(Gray { rows, cols, data, voi })
}

/// Reads the header only (so a hostile size never allocates) and refuses what cannot be
/// decoded; returns whether the stored values are signed.
fn check_header(path: &Path) -> Result<bool, Reject> {
    let len = fs_err::metadata(path).map_err(|e| format!("unreadable: {e}"))?.len();
    if len == 0 {
        return Err("zero-size file".into());
    }
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
    Ok(int(tags::PIXEL_REPRESENTATION) == Some(1))
}

/// `samples` when it holds one value per pixel and sample of `d`.
fn sized<T>(samples: Vec<T>, d: &DecodedPixelData<'_>) -> Result<Vec<T>, Reject> {
    let (rows, cols, spp) = (d.rows() as usize, d.columns() as usize, usize::from(d.samples_per_pixel()));
    if samples.len() == rows * cols * spp {
        Ok(samples)
    } else {
        Err(format!("pixel data holds {} samples for {rows}x{cols}x{spp}", samples.len()))
    }
}

fn conversion(e: dicom_pixeldata::Error) -> Reject {
    format!("cannot convert pixel data: {}", why(&e))
}

fn monochrome1(d: &DecodedPixelData<'_>) -> bool {
    matches!(d.photometric_interpretation(), PhotometricInterpretation::Monochrome1)
}

/// A colour image (secondary capture and the like, interleaved samples): its luma, or the Y
/// of YBR, over its 0.5-99.5 percentile range.
fn luma(d: &DecodedPixelData<'_>) -> Result<Vec<f32>, Reject> {
    let samples: Vec<f32> = sized(d.to_vec_frame(0).map_err(conversion)?, d)?;
    let ybr = d.photometric_interpretation().as_str().starts_with("YBR");
    let at = |i: usize, c: usize| samples[i * 3 + c];
    let luma: Vec<f32> = (0..samples.len() / 3)
        .map(|i| if ybr { at(i, 0) } else { 0.299 * at(i, 0) + 0.587 * at(i, 1) + 0.114 * at(i, 2) })
        .collect();
    let (lo, hi) = percentile_range(&luma, 0.005, 0.995);
    Ok(linear(&luma, 1.0, 0.0, lo, hi, monochrome1(d)))
}

/// The file's VOI LUT Function (LINEAR when absent or blank).
fn voi_function(obj: &DefaultDicomObject) -> Result<VoiFunction, Reject> {
    let Some(f) = obj.element_opt(tags::VOILUT_FUNCTION).ok().flatten().and_then(|e| e.to_str().ok()) else {
        return Ok(VoiFunction::Linear);
    };
    match f.trim_matches(|c: char| c == '\0' || c.is_whitespace()) {
        "LINEAR" | "" => Ok(VoiFunction::Linear),
        "LINEAR_EXACT" => Ok(VoiFunction::LinearExact),
        "SIGMOID" => Ok(VoiFunction::Sigmoid),
        other => Err(format!("VOI LUT Function {other:?}: expected LINEAR, LINEAR_EXACT or SIGMOID")),
    }
}

/// A grayscale image: the stored integers, then the modality LUT, the VOI and MONOCHROME1;
/// and which VOI path it took.
fn grayscale(
    obj: &DefaultDicomObject,
    d: &DecodedPixelData<'_>,
    signed: bool,
) -> Result<(Vec<f32>, &'static str), Reject> {
    let stored_only = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    let stored: Vec<i32> = sized(d.to_vec_frame_with_options(0, &stored_only).map_err(conversion)?, d)?;
    let modality_lut = lut(obj, tags::MODALITY_LUT_SEQUENCE, signed)?;
    let voi_lut = lut(obj, tags::VOILUT_SEQUENCE, signed)?;
    let function = voi_function(obj)?;
    let mono1 = monochrome1(d);
    let window = d.window().ok().flatten().and_then(|w| w.first().copied()).filter(|w| w.width > 1.0);
    let rescale = d.rescale().ok().and_then(|r| r.first().copied());
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
        let path = if window.is_some() { WINDOW_LINEAR } else { PERCENTILES };
        return Ok((stored_linear(&stored, slope, intercept, lo, hi, mono1), path));
    }
    let modality: Vec<f32> = match &modality_lut {
        Some(l) => stored.iter().map(|&v| l.get(v)).collect(),
        None => stored.iter().map(|&v| v as f32 * slope + intercept).collect(),
    };
    let (mut data, path): (Vec<f32>, _) = match (&voi_lut, window) {
        // A VOI LUT's input is the modality value (an integer when it comes from a table).
        (Some(l), _) => (modality.iter().map(|&m| l.get(m.round() as i32) / l.max_out).collect(), VOI_LUT),
        (None, Some(w)) => {
            let (c, w) = (w.center as f32, w.width as f32);
            (modality.iter().map(|&m| function.apply(m, c, w)).collect(), function.path())
        }
        (None, None) => {
            let (lo, hi) = percentile_range(&modality, 0.005, 0.995);
            (linear(&modality, 1.0, 0.0, lo, hi, false), PERCENTILES)
        }
    };
    if mono1 {
        data.iter_mut().for_each(|v| *v = 1.0 - *v);
    }
    Ok((data, path))
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

#[cfg(test)]
mod tests {
    use super::*;

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
