/// Errors of the trainer library, by kind; each names the file, tensor or setting at fault.
/// [`Error::exit_code`] is the `trainer` binary's exit status for it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Pretrained weights that do not fit the model (names, shapes).
    #[error("weights: {0}")]
    Weights(String),
    /// A dataset version that does not verify or lacks what is asked of it.
    #[error("dataset {path}: {message}")]
    Dataset { path: std::path::PathBuf, message: String },
    /// A run folder, config, checkpoint or results file that cannot be used.
    #[error("{}", located(path, message))]
    Input { path: std::path::PathBuf, message: String },
    /// A model or optimizer record that cannot be loaded or saved.
    #[error("{file}: {message}")]
    Record { file: std::path::PathBuf, message: String },
    /// A device or backend that cannot run (missing driver, NCCL, a failed data-parallel step).
    #[error("device: {0}")]
    Device(String),
    /// A setting (flag or config field) that is invalid or does not fit the data.
    #[error("invalid setting: {0}")]
    Config(String),
    /// Training diverged: a step's loss is NaN or infinite. The run stops there; its last
    /// checkpoint (saved before that step) is kept.
    #[error(
        "{}: the loss of step {step} (epoch {epoch}) is {loss}; pretraining stopped there, {}; lower --lr, check the \
         EHR columns, or keep gradient clipping on",
        run.display(),
        match kept { Some(s) => format!("the checkpoint of step {s} is kept"), None => "no checkpoint was saved".into() }
    )]
    NonFiniteLoss { run: std::path::PathBuf, step: usize, epoch: usize, loss: f32, kept: Option<usize> },
    /// The reference PyTorch code (`compare-reference`) failed or cannot run.
    #[error("reference: {0}")]
    Reference(String),
    /// A report could not be drawn.
    #[error("report: {0}")]
    Report(String),
    /// Serialising a result (cannot fail for our types; reported, not swallowed).
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A broken invariant of the trainer itself: a bug to report.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The exit status of the `trainer` binary: 3 invalid setting, 4 unusable input (dataset,
    /// run folder, weights, records), 5 I/O, 6 device, 7 reference code, 8 a non-finite loss,
    /// 1 anything else (clap's usage errors exit with 2).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NonFiniteLoss { .. } => 8,
            Error::Config(_) => 3,
            Error::Dataset { .. } | Error::Input { .. } | Error::Weights(_) | Error::Record { .. } => 4,
            Error::Io(_) => 5,
            Error::Device(_) => 6,
            Error::Reference(_) => 7,
            Error::Report(_) | Error::Json(_) | Error::Internal(_) => 1,
        }
    }

    /// An [`Error::Input`] about `path`.
    pub fn input(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Error::Input { path: path.to_path_buf(), message: message.to_string() }
    }

    /// An [`Error::Record`] about `file`.
    pub fn record(file: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Error::Record { file: file.to_path_buf(), message: message.to_string() }
    }
}

/// `path: message`, without repeating a path the message already starts with.
fn located(path: &std::path::Path, message: &str) -> String {
    let shown = path.display().to_string();
    if message.starts_with(&shown) { message.to_string() } else { format!("{shown}: {message}") }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
