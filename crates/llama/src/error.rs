use std::path::PathBuf;

/// Everything that can go wrong loading, converting or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid model config: {message}")]
    InvalidConfig { path: PathBuf, message: String },
    #[error("tensor `{name}` is missing from {source_description}")]
    MissingTensor {
        name: String,
        source_description: String,
    },
    #[error("tensor `{name}` has shape {actual:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: shard `{shard}` named in the index is missing")]
    MissingShard { path: PathBuf, shard: String },
    #[error("{path}: GGUF: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error(
        "rope_scaling type `{rope_type}` is not supported (supported: default, linear, llama3)"
    )]
    UnsupportedRopeScaling { rope_type: String },
    #[error("{0}")]
    InvalidArgument(String),
    /// CUDA graph capture or replay failed (LibTorch GPU decoding falls back to eager ops).
    #[error("CUDA graph: {0}")]
    CudaGraph(String),
    /// Making, joining or using an NCCL group failed.
    #[error("NCCL: {0}")]
    Nccl(String),
    /// Starting PyTorch's profiler or saving its trace failed.
    #[error("profiler: {0}")]
    Profiler(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The records crate's writers (the project's one atomic writer) fail only on I/O for the bytes
/// and directories llama hands them; anything else is reported as an invalid argument.
impl From<records::Error> for Error {
    fn from(error: records::Error) -> Self {
        match error {
            records::Error::Io { path, source } => Error::Io { path, source },
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}
