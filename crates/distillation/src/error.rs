use std::path::PathBuf;

/// Everything that can go wrong in phase 1C.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {field}: {message}")]
    Config { field: String, message: String },
    /// A prompt template names a placeholder the strategy does not fill.
    #[error("{template}: unknown placeholder {{{{{placeholder}}}}} (known: {known})")]
    Template {
        template: String,
        placeholder: String,
        known: String,
    },
    /// Phase 1B's outputs are missing or do not belong together.
    #[error("{path}: {message}")]
    Phase1b { path: PathBuf, message: String },
    #[error(transparent)]
    Records(#[from] records::Error),
    #[error(transparent)]
    Chart(#[from] charts::Error),
    #[error(transparent)]
    Client(#[from] llm_client::Error),
    #[error(transparent)]
    FailureMining(#[from] failure_mining::Error),
    #[error(transparent)]
    Training(#[from] lora_training::Error),
    #[error(transparent)]
    Embeddings(#[from] embeddings::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
