//! CSV plumbing for the generator: gzip CSV writing (atomic: temp file + rename) and the
//! value formats of the real files.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime};
use flate2::Compression;
use flate2::write::GzEncoder;

use pipeline::{Error, Result};

/// A gzip CSV being written to `<path>.tmp`, renamed into place by [`GzCsv::finish`].
pub struct GzCsv {
    path: PathBuf,
    tmp: PathBuf,
    writer: csv::Writer<GzEncoder<BufWriter<fs_err::File>>>,
}

impl std::fmt::Debug for GzCsv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzCsv").field("path", &self.path).finish()
    }
}

impl GzCsv {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir)?;
        }
        let tmp = tmp_path(path);
        let file = BufWriter::with_capacity(1 << 16, fs_err::File::create(&tmp)?);
        let writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(GzEncoder::new(file, Compression::default()));
        Ok(Self { path: path.to_path_buf(), tmp, writer })
    }

    pub fn row<I, T>(&mut self, fields: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.writer.write_record(fields).map_err(|e| Error::csv(&self.path, e))
    }

    /// Flushes, closes and renames the file into place; returns its final path.
    pub fn finish(self) -> Result<PathBuf> {
        let gz = self.writer.into_inner().map_err(|e| Error::Io(e.into_error()))?;
        let buf = gz.finish()?;
        let file = buf.into_inner().map_err(|e| Error::Io(e.into_error()))?;
        file.sync_all()?;
        drop(file);
        fs_err::rename(&self.tmp, &self.path)?;
        Ok(self.path)
    }
}

/// [`cxr_dataset::files::write_atomic`] with the pipeline's error type.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(cxr_dataset::files::write_atomic(path, bytes)?)
}

use cxr_dataset::files::tmp_path;

pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

pub fn fmt_time(t: NaiveDateTime) -> String {
    t.format(TIME_FORMAT).to_string()
}

pub fn fmt_opt_time(t: Option<NaiveDateTime>) -> String {
    t.map(fmt_time).unwrap_or_default()
}

pub fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub fn parse_time(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, TIME_FORMAT).ok()
}

pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// C's `%.17g`: 17 significant digits, trailing zeros removed (how MIMIC-IV prints `los`).
pub fn fmt_g17(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let sci = format!("{:.16e}", x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-5..17).contains(&exp) {
        let m = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let point = exp + 1; // digits before the decimal point
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else {
        let p = point as usize;
        out.push_str(&digits[..p]);
        out.push('.');
        out.push_str(&digits[p..]);
    }
    let trimmed = out.trim_end_matches('0').trim_end_matches('.');
    trimmed.to_string()
}

/// StudyTime as the metadata CSV prints it: HHMMSS.fff as an unpadded float
/// (`80556.875`), shortest representation, `.0` kept for whole seconds.
pub fn fmt_study_time(t: NaiveDateTime) -> String {
    use chrono::Timelike;
    let hhmmss = t.hour() * 10000 + t.minute() * 100 + t.second();
    let millis = t.nanosecond() / 1_000_000;
    let v = f64::from(hhmmss) + f64::from(millis) / 1000.0;
    let s = format!("{v}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// StudyTime as a DICOM TM value: `HHMMSS.ffffff`-style, trailing zeros trimmed
/// (`213014.531`).
pub fn fmt_dicom_time(t: NaiveDateTime) -> String {
    use chrono::Timelike;
    let base = format!("{:02}{:02}{:02}", t.hour(), t.minute(), t.second());
    let millis = t.nanosecond() / 1_000_000;
    if millis == 0 { base } else { format!("{base}.{}", format!("{millis:03}").trim_end_matches('0')) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g17_matches_the_real_los_values() {
        // Values from the MIMIC-IV demo icustays table.
        for s in ["7.7025115740740739", "0.87268518518518523", "3.766724537037037", "0.4102662037037037"] {
            let x: f64 = s.parse().unwrap();
            assert_eq!(fmt_g17(x), s);
        }
        assert_eq!(fmt_g17(2.0), "2");
        assert_eq!(fmt_g17(0.5), "0.5");
    }

    #[test]
    fn study_time_is_an_unpadded_float() {
        let t = |h, m, s, ms| NaiveDate::from_ymd_opt(2180, 7, 23).unwrap().and_hms_milli_opt(h, m, s, ms).unwrap();
        assert_eq!(fmt_study_time(t(8, 5, 56, 875)), "80556.875");
        assert_eq!(fmt_study_time(t(21, 30, 14, 531)), "213014.531");
        assert_eq!(fmt_study_time(t(0, 0, 7, 500)), "7.5");
        assert_eq!(fmt_study_time(t(12, 0, 0, 0)), "120000.0");
        assert_eq!(fmt_dicom_time(t(8, 5, 56, 870)), "080556.87");
        assert_eq!(fmt_dicom_time(t(8, 5, 56, 0)), "080556");
    }
}
