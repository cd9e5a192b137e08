//! Reading input tables against their declared schema into typed polars frames.
//!
//! Every cell is checked: a missing column, a value of the wrong type, an unparsable
//! timestamp or a truncated gzip stops with an error naming the file, the line and the
//! column. Columns the schema does not declare are ignored; declared columns may come in any
//! order. Rows are checked by the key the schema declares: a repeat of an earlier row (same
//! key, same declared cells) is dropped and counted; a row with an earlier row's key and other
//! values stops the read naming both lines.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::Read;
use std::path::Path;

use chrono::{NaiveDate, NaiveDateTime};
use polars::prelude::*;

use crate::sources::schema::{ColumnType, Schema, parse_date, parse_datetime, parse_hhmmss, parse_yyyymmdd};
use crate::{Error, Result};

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");

/// Days since 1970-01-01.
pub fn date_days(d: NaiveDate) -> i32 {
    (d - EPOCH).num_days() as i32
}

/// Milliseconds since 1970-01-01 00:00.
pub fn datetime_ms(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp_millis()
}

enum Builder {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Str(Vec<Option<String>>),
    Date(Vec<Option<i32>>),
    DateTime(Vec<Option<i64>>),
    Flag(Vec<Option<bool>>),
}

impl Builder {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Int => Self::Int(Vec::new()),
            ColumnType::Float | ColumnType::HhMmSs | ColumnType::Label => Self::Float(Vec::new()),
            ColumnType::String => Self::Str(Vec::new()),
            ColumnType::Date | ColumnType::YyyyMmDd => Self::Date(Vec::new()),
            ColumnType::DateTime => Self::DateTime(Vec::new()),
            ColumnType::Flag => Self::Flag(Vec::new()),
        }
    }

    /// Parses and appends a cell of type `ty`; false (nothing appended) when the cell is not
    /// a value of that type, or is empty and the column is not `nullable`.
    fn push(&mut self, ty: ColumnType, nullable: bool, cell: &str) -> bool {
        if cell.is_empty() {
            match self {
                Self::Int(v) => v.push(None),
                Self::Float(v) => v.push(None),
                Self::Str(v) => v.push(None),
                Self::Date(v) => v.push(None),
                Self::DateTime(v) => v.push(None),
                Self::Flag(v) => v.push(None),
            }
            return nullable;
        }
        fn put<T>(v: &mut Vec<Option<T>>, x: Option<T>) -> bool {
            let ok = x.is_some();
            if ok {
                v.push(x);
            }
            ok
        }
        match self {
            Self::Int(v) => put(v, cell.parse().ok()),
            Self::Float(v) => put(
                v,
                match ty {
                    ColumnType::HhMmSs => parse_hhmmss(cell),
                    ColumnType::Label if !ty.accepts(cell) => None,
                    _ => cell.parse::<f64>().ok().filter(|x| x.is_finite()),
                },
            ),
            Self::Str(v) => put(v, Some(cell.to_string())),
            Self::Date(v) => {
                let d = if ty == ColumnType::YyyyMmDd { parse_yyyymmdd(cell) } else { parse_date(cell) };
                put(v, d.map(date_days))
            }
            Self::DateTime(v) => put(v, parse_datetime(cell).map(datetime_ms)),
            Self::Flag(v) => put(
                v,
                match cell {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                },
            ),
        }
    }

    fn finish(self, name: &str) -> Column {
        let name = PlSmallStr::from(name);
        match self {
            Self::Int(v) => Column::new(name, v),
            Self::Float(v) => Column::new(name, v),
            Self::Str(v) => Column::new(name, v),
            Self::Flag(v) => Column::new(name, v),
            Self::Date(v) => Int32Chunked::from_iter_options(name, v.into_iter()).into_date().into_column(),
            Self::DateTime(v) => Int64Chunked::from_iter_options(name, v.into_iter())
                .into_datetime(TimeUnit::Milliseconds, None)
                .into_column(),
        }
    }
}

/// Opens a table, gunzipping `.gz`.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = std::io::BufReader::with_capacity(1 << 20, fs_err::File::open(path)?);
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// Rows dropped from one table as exact repeats of an earlier row, as the cohort report lists
/// them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Duplicates {
    pub file: String,
    /// The columns of the table's key.
    pub key: Vec<String>,
    pub rows: usize,
}

/// A table read against its schema.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The declared columns, one row per distinct row of the file.
    pub frame: DataFrame,
    /// Rows dropped as exact repeats of an earlier row (same key, same declared cells).
    pub duplicates: usize,
}

impl Ingested {
    /// What the read dropped, for the report; none when it dropped nothing.
    pub fn dropped(&self, path: &Path, schema: &Schema) -> Option<Duplicates> {
        (self.duplicates > 0).then(|| Duplicates {
            file: path.display().to_string(),
            key: schema.key.clone(),
            rows: self.duplicates,
        })
    }
}

/// 128 bits (xxh3) of the cells `index` of a row, each with its length (`buf` is reused
/// between calls): equal for equal cells, different (but for a chance of 2^-128) otherwise.
fn digest(rec: &csv::StringRecord, index: impl Iterator<Item = usize>, buf: &mut Vec<u8>) -> u128 {
    buf.clear();
    for i in index {
        let cell = rec.get(i).unwrap_or("");
        buf.extend_from_slice(&(cell.len() as u32).to_le_bytes());
        buf.extend_from_slice(cell.as_bytes());
    }
    xxhash_rust::xxh3::xxh3_128(buf)
}

/// A map hasher for keys that are digests already: their low 64 bits.
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used (u128 keys); fold anything else in.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type DigestMap<V> = HashMap<u128, V, std::hash::BuildHasherDefault<DigestHasher>>;

/// The record of `path` that starts on `line`, read again (only to explain an error).
fn record_at(path: &Path, line: usize) -> Result<Option<csv::StringRecord>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(open(path)?);
    for rec in reader.records() {
        let rec = rec.map_err(|e| Error::csv(path, e))?;
        if rec.position().is_some_and(|p| p.line() as usize == line) {
            return Ok(Some(rec));
        }
    }
    Ok(None)
}

/// Which columns a schema's key is made of, as indices into the declared columns.
fn key_columns(schema: &Schema, cols: &[&crate::sources::schema::Column]) -> Vec<usize> {
    schema.key.iter().filter_map(|k| cols.iter().position(|c| &c.name == k)).collect()
}

/// The error for two rows sharing a key: names both lines, the key and the first declared
/// column whose cells differ.
fn conflict(
    path: &Path,
    cols: &[&crate::sources::schema::Column],
    index: &[usize],
    key: &[usize],
    (first, second): (usize, usize),
    rec: &csv::StringRecord,
) -> Error {
    let cell = |r: &csv::StringRecord, j: usize| r.get(index[j]).unwrap_or("").to_string();
    let key_text = key.iter().map(|&j| format!("{}={}", cols[j].name, cell(rec, j))).collect::<Vec<_>>().join(", ");
    let difference = match record_at(path, first) {
        Ok(Some(earlier)) => (0..cols.len())
            .find(|&j| cell(&earlier, j) != cell(rec, j))
            .map(|j| format!("column {}: {:?} then {:?}", cols[j].name, cell(&earlier, j), cell(rec, j)))
            .unwrap_or_else(|| "in a declared column".into()),
        _ => "in a declared column".into(),
    };
    Error::DuplicateKey { path: path.to_path_buf(), key: key_text, first, second, difference }
}

/// Reads `path` as the table `schema` of release `version` into a frame with the declared
/// columns (types: int -> i64, float/label/hhmmss -> f64 (hhmmss as seconds after
/// midnight), date/yyyymmdd -> Date, datetime -> Datetime(ms), flag -> bool, string -> str),
/// checking the schema's key (module docs).
pub fn read(path: &Path, schema: &Schema, version: &str) -> Result<Ingested> {
    let cols = schema.columns_for(version);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(open(path)?);
    let header = reader.headers().map_err(|e| Error::csv(path, e))?.clone();
    let mut index = Vec::with_capacity(cols.len());
    for c in &cols {
        let i = header.iter().position(|h| h == c.name).ok_or_else(|| Error::MissingColumn {
            path: path.to_path_buf(),
            column: format!("{} (declared in {schema} for release {version})", c.name),
        })?;
        index.push(i);
    }
    let key = key_columns(schema, &cols);
    // Each key seen (by its digest): the line of its first row and that row's digest.
    let mut seen: DigestMap<(usize, u128)> = DigestMap::default();
    let mut buf = Vec::with_capacity(256);
    let mut duplicates = 0usize;
    let mut builders: Vec<Builder> = cols.iter().map(|c| Builder::new(c.ty)).collect();
    let mut rec = csv::StringRecord::new();
    let mut rows = 0usize;
    let mut records = 0usize;
    loop {
        match reader.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let message = match e.kind() {
                    // The line the reader had reached: where the file stops making sense.
                    csv::ErrorKind::Io(io) => {
                        format!("line {}: {io} (truncated or corrupt file?)", reader.position().line())
                    }
                    _ => e.to_string(),
                };
                return Err(Error::Csv { path: path.to_path_buf(), message });
            }
        }
        records += 1;
        // The file's line where the record starts (a quoted field may span lines).
        let line = rec.position().map_or(records + 1, |p| p.line() as usize);
        if !key.is_empty() {
            let row = digest(&rec, index.iter().copied(), &mut buf);
            match seen.entry(digest(&rec, key.iter().map(|&j| index[j]), &mut buf)) {
                Entry::Vacant(e) => {
                    e.insert((line, row));
                }
                Entry::Occupied(e) if e.get().1 == row => {
                    duplicates += 1;
                    continue;
                }
                Entry::Occupied(e) => return Err(conflict(path, &cols, &index, &key, (e.get().0, line), &rec)),
            }
        }
        rows += 1;
        for ((c, &i), b) in cols.iter().zip(&index).zip(&mut builders) {
            let cell = rec.get(i).unwrap_or("");
            if !b.push(c.ty, c.nullable, cell) {
                return Err(Error::BadValue {
                    path: path.to_path_buf(),
                    line,
                    column: c.name.clone(),
                    value: cell.to_string(),
                    expected: format!("{}{}", type_name(c.ty), if c.nullable { " or empty" } else { "" }),
                });
            }
        }
    }
    let columns: Vec<Column> = builders.into_iter().zip(&cols).map(|(b, c)| b.finish(&c.name)).collect();
    let frame =
        DataFrame::new(rows, columns).map_err(|e| Error::Polars { context: path.display().to_string(), source: e })?;
    Ok(Ingested { frame, duplicates })
}

fn type_name(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Int => "an integer",
        ColumnType::Float => "a number",
        ColumnType::String => "text",
        ColumnType::Date => "a date YYYY-MM-DD",
        ColumnType::DateTime => "a timestamp YYYY-MM-DD HH:MM:SS",
        ColumnType::YyyyMmDd => "a date YYYYMMDD",
        ColumnType::HhMmSs => "a time HHMMSS.fff",
        ColumnType::Label => "1.0, 0.0 or -1.0",
        ColumnType::Flag => "0 or 1",
    }
}
