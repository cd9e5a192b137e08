use std::path::PathBuf;

/// Errors of the pipeline library. Each variant names what a data engineer needs to find the
/// problem: the file, the line, the column.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{path}: {message}")]
    Csv { path: PathBuf, message: String },
    #[error("no table {stem}.csv.gz or {stem}.csv in {dir}")]
    MissingTable { dir: PathBuf, stem: String },
    #[error("{path}: missing column {column:?}")]
    MissingColumn { path: PathBuf, column: String },
    #[error("{path}, line {line}, column {column:?}: {value:?} is not {expected}")]
    BadValue { path: PathBuf, line: usize, column: String, value: String, expected: String },
    #[error("{path}: writing DICOM: {message}")]
    Dicom { path: PathBuf, message: String },
    #[error("{path}: reading the DICOM header: {message}")]
    DicomHeader { path: PathBuf, message: String },
    #[error("{path}: encoding image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Polars { context: String, source: polars::error::PolarsError },
}

impl Error {
    pub fn csv(path: &std::path::Path, e: csv::Error) -> Self {
        Error::Csv { path: path.to_path_buf(), message: e.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
