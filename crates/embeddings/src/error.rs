use std::path::PathBuf;

/// Everything that can go wrong loading the encoder or embedding text.
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
    #[error("{path}: field `{field}`: {message}")]
    InvalidConfig {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    /// Opening or reading the checkpoint (through llama's safetensors reader).
    #[error("{0}")]
    Weights(#[from] llama::Error),
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: cannot load tokenizer: {message}")]
    TokenizerLoad { path: PathBuf, message: String },
    #[error("tokenizing text #{index}: {message}")]
    Tokenize { index: usize, message: String },
    #[error("sequence #{index}: {message}")]
    InvalidSequence { index: usize, message: String },
    #[error("batch_size must be at least 1")]
    ZeroBatchSize,
    #[error(
        "the backend's attention ignores boolean masks (probe output {probe}): padding cannot be masked"
    )]
    AttentionMaskIgnored { probe: f32 },
    #[error("reading a tensor back from the device: {0}")]
    Readback(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
