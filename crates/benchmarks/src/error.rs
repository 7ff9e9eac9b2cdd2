use std::path::PathBuf;

/// What a model implementation reports when a call fails (its own error type, boxed).
pub type ModelError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong loading benchmark data, running a model over it, sandboxing
/// generated programs or writing records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} is missing: run `cargo xtask assets` to download and prepare the benchmark data"
    )]
    MissingDataset { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: malformed item{}: {message}", item_id.as_ref().map(|id| format!(" `{id}`")).unwrap_or_default())]
    MalformedItem {
        path: PathBuf,
        line: usize,
        item_id: Option<String>,
        message: String,
    },
    #[error("{path}:{line}: malformed record: {message}")]
    MalformedRecord {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path} holds records made with different options ({differences}); use another output directory or delete it"
    )]
    ConfigMismatch { path: PathBuf, differences: String },
    #[error("model `{model}` failed: {source}")]
    Model {
        model: String,
        #[source]
        source: ModelError,
    },
    #[error("model `{model}` returned {got} answers for {expected} requests")]
    ModelAnswerCount {
        model: String,
        expected: usize,
        got: usize,
    },
    #[error("model `{model}` cannot score log-likelihoods ({reason}); use a generative protocol")]
    LoglikelihoodUnsupported { model: String, reason: String },
    #[error("invalid option `{option}`: {message}")]
    InvalidOption {
        option: &'static str,
        message: String,
    },
    #[error("MMLU subject `{subject}` is not in {path}")]
    UnknownSubject { subject: String, path: PathBuf },
    #[error("endpoint {url}: {message}")]
    Endpoint { url: String, message: String },
    /// A request to an endpoint failed (after the client's retries, where they apply).
    #[error("endpoint {url}: {source}")]
    EndpointRequest {
        url: String,
        #[source]
        source: llm_client::Error,
    },
    #[error("sandbox: {message}")]
    Sandbox { message: String },
    #[error(transparent)]
    Records(#[from] records::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
