//! Declared input schemas (`schemas/` at the repository root), embedded at compile time.
//!
//! Each table's file lists its columns in order with a type, nullability and the releases that
//! have the column (format in `schemas/README.md`). Readers check headers and cells against
//! them; the synthetic generator's tests check that it writes exactly these tables.

use std::fmt;

use chrono::{NaiveDate, NaiveDateTime};

use crate::{Error, Result};

/// The cell types a schema can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Int,
    Float,
    String,
    /// `YYYY-MM-DD`.
    Date,
    /// `YYYY-MM-DD HH:MM:SS`.
    DateTime,
    /// An integer date `YYYYMMDD`.
    YyyyMmDd,
    /// StudyTime: `HHMMSS.fff` printed as an unpadded float.
    HhMmSs,
    /// A label cell: `1.0`, `0.0`, `-1.0` (or empty when nullable).
    Label,
    /// `0` or `1`.
    Flag,
}

impl ColumnType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "int" => Self::Int,
            "float" => Self::Float,
            "string" => Self::String,
            "date" => Self::Date,
            "datetime" => Self::DateTime,
            "yyyymmdd" => Self::YyyyMmDd,
            "hhmmss" => Self::HhMmSs,
            "label" => Self::Label,
            "flag" => Self::Flag,
            _ => return None,
        })
    }

    /// Whether a non-empty cell is a valid value of this type.
    pub fn accepts(self, v: &str) -> bool {
        match self {
            Self::Int => v.parse::<i64>().is_ok(),
            Self::Float => v.parse::<f64>().is_ok_and(f64::is_finite),
            Self::String => true,
            Self::Date => parse_date(v).is_some(),
            Self::DateTime => parse_datetime(v).is_some(),
            Self::YyyyMmDd => parse_yyyymmdd(v).is_some(),
            Self::HhMmSs => parse_hhmmss(v).is_some(),
            Self::Label => matches!(v, "1.0" | "0.0" | "-1.0"),
            Self::Flag => matches!(v, "0" | "1"),
        }
    }
}

/// The number written with exactly these ASCII digits.
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// A `YYYY-MM-DD` cell (fixed width, as MIMIC writes them).
pub fn parse_date(v: &str) -> Option<NaiveDate> {
    let b = v.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(&b[..4])? as i32, digits(&b[5..7])?, digits(&b[8..])?)
}

/// A `YYYY-MM-DD HH:MM:SS` cell.
pub fn parse_datetime(v: &str) -> Option<NaiveDateTime> {
    let b = v.as_bytes();
    if b.len() != 19 || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    parse_date(&v[..10])?.and_hms_opt(digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..])?)
}

/// A `YYYYMMDD` cell.
pub fn parse_yyyymmdd(v: &str) -> Option<NaiveDate> {
    let b = v.as_bytes();
    if b.len() != 8 {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(&b[..4])? as i32, digits(&b[4..6])?, digits(&b[6..])?)
}

/// Seconds after midnight of a StudyTime cell (`80556.875` = 08:05:56.875).
pub fn parse_hhmmss(v: &str) -> Option<f64> {
    let x: f64 = v.parse().ok()?;
    if !(0.0..240_000.0).contains(&x) || v.starts_with('-') {
        return None;
    }
    let whole = x.trunc() as u32;
    let (h, m, s) = (whole / 10_000, whole / 100 % 100, whole % 100);
    (h < 24 && m < 60 && s < 60).then(|| f64::from(h * 3600 + m * 60 + s) + x.fract())
}

/// Which releases have a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versions {
    All,
    Exactly(Vec<u32>),
    AtLeast(Vec<u32>),
    Below(Vec<u32>),
}

fn version_key(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse().ok()).collect()
}

impl Versions {
    fn parse(s: &str) -> Option<Self> {
        if s == "all" {
            Some(Self::All)
        } else if let Some(v) = s.strip_suffix('+') {
            version_key(v).map(Self::AtLeast)
        } else if let Some(v) = s.strip_prefix('<') {
            version_key(v).map(Self::Below)
        } else {
            version_key(s).map(Self::Exactly)
        }
    }

    /// Whether release `version` (e.g. `2.2`) has the column.
    pub fn includes(&self, version: &str) -> bool {
        let Some(v) = version_key(version) else { return false };
        match self {
            Self::All => true,
            Self::Exactly(x) => &v == x,
            Self::AtLeast(x) => &v >= x,
            Self::Below(x) => &v < x,
        }
    }
}

/// One declared column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub versions: Versions,
}

impl Column {
    /// Whether a cell is valid: empty only when nullable, else of the declared type.
    pub fn accepts(&self, cell: &str) -> bool {
        if cell.is_empty() { self.nullable } else { self.ty.accepts(cell) }
    }
}

/// A table's declared schema.
#[derive(Debug, Clone)]
pub struct Schema {
    /// e.g. `mimic-iv/admissions`.
    pub name: &'static str,
    /// The file's text, hashed into dataset versions.
    pub text: &'static str,
    pub columns: Vec<Column>,
    /// The columns that identify a row (`@key` line): no two rows may share them. Empty when
    /// the table declares none.
    pub key: Vec<String>,
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schemas/{}.schema", self.name)
    }
}

/// Every embedded schema: (name, text).
pub const FILES: &[(&str, &str)] = &[
    ("mimic-iv/patients", include_str!("../../../schemas/mimic-iv/patients.schema")),
    ("mimic-iv/admissions", include_str!("../../../schemas/mimic-iv/admissions.schema")),
    ("mimic-iv/transfers", include_str!("../../../schemas/mimic-iv/transfers.schema")),
    ("mimic-iv/icustays", include_str!("../../../schemas/mimic-iv/icustays.schema")),
    ("mimic-cxr/metadata", include_str!("../../../schemas/mimic-cxr/metadata.schema")),
    ("mimic-cxr/split", include_str!("../../../schemas/mimic-cxr/split.schema")),
    ("mimic-cxr/chexpert", include_str!("../../../schemas/mimic-cxr/chexpert.schema")),
    ("mimic-cxr/negbio", include_str!("../../../schemas/mimic-cxr/negbio.schema")),
    ("mimic-cxr/record-list", include_str!("../../../schemas/mimic-cxr/record-list.schema")),
    ("mimic-cxr/study-list", include_str!("../../../schemas/mimic-cxr/study-list.schema")),
];

impl Schema {
    /// The embedded schema called `name` (e.g. `mimic-iv/admissions`).
    pub fn get(name: &str) -> Result<Self> {
        let (name, text) = FILES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| Error::Internal(format!("no declared schema {name:?}")))?;
        Self::parse(name, text)
    }

    /// Parses a schema file.
    pub fn parse(name: &'static str, text: &'static str) -> Result<Self> {
        let mut columns = Vec::new();
        let mut key = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| Error::Internal(format!("schemas/{name}.schema line {}: {why}: {raw:?}", i + 1));
            if let Some(names) = line.strip_prefix("@key") {
                if !key.is_empty() {
                    return Err(bad("a second @key line"));
                }
                key = names.split_whitespace().map(str::to_string).collect();
                if key.is_empty() {
                    return Err(bad("@key names no column"));
                }
                continue;
            }
            let (col_name, rest) = if let Some(quoted) = line.strip_prefix('"') {
                let end = quoted.find('"').ok_or_else(|| bad("unclosed quote"))?;
                (quoted[..end].to_string(), &quoted[end + 1..])
            } else {
                let end = line.find(char::is_whitespace).unwrap_or(line.len());
                (line[..end].to_string(), &line[end..])
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let [ty, nullable, versions] = fields[..] else {
                return Err(bad("expected: column type nullable versions"));
            };
            columns.push(Column {
                name: col_name,
                ty: ColumnType::parse(ty).ok_or_else(|| bad("unknown type"))?,
                nullable: match nullable {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(bad("nullable must be yes or no")),
                },
                versions: Versions::parse(versions).ok_or_else(|| bad("bad versions"))?,
            });
        }
        for k in &key {
            match columns.iter().find(|c| &c.name == k) {
                Some(c) if !c.nullable && c.versions == Versions::All => {}
                Some(_) => {
                    return Err(Error::Internal(format!(
                        "schemas/{name}.schema: key column {k} must be non-nullable in all releases"
                    )));
                }
                None => return Err(Error::Internal(format!("schemas/{name}.schema: key column {k} is not declared"))),
            }
        }
        Ok(Self { name, text, columns, key })
    }

    /// The columns of release `version`, in file order.
    pub fn columns_for(&self, version: &str) -> Vec<&Column> {
        self.columns.iter().filter(|c| c.versions.includes(version)).collect()
    }

    /// Column names of release `version`, in file order.
    pub fn header_for(&self, version: &str) -> Vec<&str> {
        self.columns_for(version).into_iter().map(|c| c.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_schema_parses() {
        for (name, text) in FILES {
            let s = Schema::parse(name, text).unwrap();
            assert!(!s.columns.is_empty(), "{name}");
        }
    }

    #[test]
    fn versions_select_columns() {
        let adm = Schema::get("mimic-iv/admissions").unwrap();
        assert_eq!(adm.header_for("1.0").len(), 15);
        assert!(adm.header_for("1.0").contains(&"ethnicity"));
        assert!(adm.header_for("2.1").contains(&"race") && !adm.header_for("2.1").contains(&"admit_provider_id"));
        assert_eq!(adm.header_for("2.2")[6], "admit_provider_id");
        assert_eq!(adm.header_for("3.1").len(), 16);
        let chex = Schema::get("mimic-cxr/chexpert").unwrap();
        assert_eq!(chex.header_for("2.0.0")[10], "No Finding");
    }

    #[test]
    fn cell_types() {
        assert!(ColumnType::HhMmSs.accepts("80556.875") && ColumnType::HhMmSs.accepts("213014.531"));
        assert!(!ColumnType::HhMmSs.accepts("256000.0") && !ColumnType::HhMmSs.accepts("12:00"));
        assert_eq!(parse_hhmmss("80556.5"), Some(8.0 * 3600.0 + 5.0 * 60.0 + 56.5));
        assert!(ColumnType::DateTime.accepts("2180-05-06 22:23:00") && !ColumnType::DateTime.accepts("2180-05-06"));
        for bad in ["2180-05-06 24:00:00", "2180-5-06 22:23:00", "2180-05-06T22:23:00", "2180-02-30 00:00:00"] {
            assert!(!ColumnType::DateTime.accepts(bad), "{bad}");
        }
        assert_eq!(
            parse_datetime("2116-06-27 17:35:34"),
            NaiveDate::from_ymd_opt(2116, 6, 27).unwrap().and_hms_opt(17, 35, 34)
        );
        assert!(
            ColumnType::YyyyMmDd.accepts("21800506")
                && !ColumnType::YyyyMmDd.accepts("2180056")
                && !ColumnType::YyyyMmDd.accepts("2180-5-6")
        );
        assert!(!ColumnType::Date.accepts("+2180-05-06") && !ColumnType::Date.accepts("2180-05-6 "));
        assert!(ColumnType::Label.accepts("-1.0") && !ColumnType::Label.accepts("-1"));
        let c = Column { name: "dod".into(), ty: ColumnType::Date, nullable: true, versions: Versions::All };
        assert!(c.accepts("") && c.accepts("2180-09-09") && !c.accepts("09/09/2180"));
        let bad = Schema::parse("x", "a int maybe all\n").unwrap_err().to_string();
        assert!(bad.contains("schemas/x.schema line 1"), "{bad}");
    }
}
