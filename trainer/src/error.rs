/// Errors of the trainer library; each names the file, tensor or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("weights: {0}")]
    Weights(String),
    #[error("dataset {path}: {message}")]
    Dataset { path: std::path::PathBuf, message: String },
    #[error("report: {0}")]
    Report(String),
    #[error("device: {0}")]
    Device(String),
    #[error("invalid setting: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
