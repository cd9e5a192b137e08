use std::path::PathBuf;

/// Errors of the pipeline library, by kind. Each variant names what a data engineer needs to
/// find the problem: the file, the line, the column. [`Error::exit_code`] is the `pipeline`
/// binary's exit status for it.
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
    /// Two rows of a table share the key its schema declares but differ in a cell.
    #[error(
        "{path}, lines {first} and {second}: both rows have {key} but differ ({difference}); \
         the key must identify one row: remove or correct one of them"
    )]
    DuplicateKey { path: PathBuf, key: String, first: usize, second: usize, difference: String },
    #[error("{path}: writing DICOM: {message}")]
    Dicom { path: PathBuf, message: String },
    #[error("{path}: reading the DICOM header: {message}")]
    DicomHeader { path: PathBuf, message: String },
    #[error("{path}: encoding image: {message}")]
    Image { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Config(String),
    /// An input (archive folder, table, image, built version) that is missing or unusable.
    #[error("{}", located(path, message))]
    Input { path: PathBuf, message: String },
    /// Serialising a record or report (cannot fail for our types; reported, not swallowed).
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A broken invariant of the pipeline itself: a bug to report.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{context}: {source}")]
    Polars { context: String, source: polars::error::PolarsError },
}

impl Error {
    /// The exit status of the `pipeline` binary: 3 invalid setting, 4 unusable input
    /// (missing or malformed tables, folders, images, versions), 5 I/O, 1 anything else
    /// (clap's usage errors exit with 2).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 3,
            Error::Input { .. }
            | Error::Csv { .. }
            | Error::MissingTable { .. }
            | Error::MissingColumn { .. }
            | Error::BadValue { .. }
            | Error::DuplicateKey { .. }
            | Error::DicomHeader { .. }
            | Error::Polars { .. } => 4,
            Error::Io(_) | Error::Dicom { .. } => 5,
            Error::Image { .. } | Error::Json(_) | Error::Internal(_) => 1,
        }
    }

    /// An [`Error::Input`] about `path`.
    pub fn input(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Error::Input { path: path.to_path_buf(), message: message.to_string() }
    }

    pub fn csv(path: &std::path::Path, e: csv::Error) -> Self {
        Error::Csv { path: path.to_path_buf(), message: e.to_string() }
    }
}

/// `path: message`, without repeating a path the message already starts with.
fn located(path: &std::path::Path, message: &str) -> String {
    let shown = path.display().to_string();
    if message.starts_with(&shown) { message.to_string() } else { format!("{shown}: {message}") }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
