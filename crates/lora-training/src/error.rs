use std::path::PathBuf;

/// Everything that can go wrong preparing data, training, exporting or merging an adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A training example that cannot be used; `line` is 1-based.
    #[error("{path}:{line}: {message}")]
    InvalidExample {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    InvalidFile { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The merged model's logits differ from base + adapter beyond tolerance.
    #[error("merge verification failed: {0}")]
    MergeMismatch(String),
    /// A benchmark that could not run on the model (phase 1A's validation).
    #[error("{benchmark} on the {model} model: {source}")]
    Validation {
        benchmark: String,
        model: String,
        #[source]
        source: Box<benchmarks::Error>,
    },
    #[error(transparent)]
    Model(#[from] llama::Error),
    #[error(transparent)]
    Records(#[from] records::Error),
    #[error(transparent)]
    Chart(#[from] charts::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
