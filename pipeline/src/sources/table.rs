//! A CSV table read whole (`.csv` or `.csv.gz`), addressed by header name, with errors that
//! name the file, line and column: the record list of the DICOM headers, and the generator's
//! import of real MIMIC-IV tables.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A table read whole into memory: header and rows of strings (empty = NULL).
#[derive(Debug)]
pub struct Table {
    pub path: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<csv::StringRecord>,
}

impl Table {
    /// Reads a `.csv.gz` or `.csv` table.
    pub fn from_path(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let file = fs_err::File::open(&path)?;
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        let mut csv = csv::ReaderBuilder::new().has_headers(true).from_reader(reader);
        let header = csv.headers().map_err(|e| Error::csv(&path, e))?.iter().map(str::to_string).collect();
        let mut rows = Vec::new();
        for rec in csv.records() {
            rows.push(rec.map_err(|e| Error::csv(&path, e))?);
        }
        Ok(Self { path, header, rows })
    }

    /// Index of a required column.
    pub fn col(&self, name: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::MissingColumn { path: self.path.clone(), column: name.to_string() })
    }

    /// Parses a cell, naming file, row (1-based, header = line 1) and column on failure.
    pub fn parse<T>(&self, row: usize, col: usize, f: impl FnOnce(&str) -> Option<T>) -> Result<T> {
        let cell = self.rows[row].get(col).unwrap_or("");
        f(cell).ok_or_else(|| Error::BadValue {
            path: self.path.clone(),
            line: row + 2,
            column: self.header[col].clone(),
            value: cell.to_string(),
            expected: "a valid value".to_string(),
        })
    }
}
