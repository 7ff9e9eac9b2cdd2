use std::path::PathBuf;

/// Everything that can go wrong reading or writing records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line that is not valid JSON for the expected record type; `line` is 1-based.
    #[error("{path}:{line}: {source}")]
    InvalidLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// A record that could not be serialised (e.g. a map with non-string keys); `index` is 0-based.
    #[error("{path}: record {index} cannot be serialised: {source}")]
    Serialise {
        path: PathBuf,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
