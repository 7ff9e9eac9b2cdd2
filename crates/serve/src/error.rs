use std::net::SocketAddr;
use std::path::PathBuf;

/// What can stop the server from starting or running. Per-request problems are answered as
/// HTTP errors ([`crate::openai::ApiError`]), not returned here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the model from {path}: {source}")]
    LoadModel {
        path: PathBuf,
        #[source]
        source: llama::Error,
    },
    #[error(
        "the model has no chat template, so chat requests cannot be rendered (add one to tokenizer_config.json)"
    )]
    NoChatTemplate,
    #[error("chat template: {0}")]
    ChatTemplate(#[source] llama::Error),
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP: {source}")]
    Serve {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the model thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
