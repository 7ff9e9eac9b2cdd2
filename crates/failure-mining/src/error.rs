use std::path::PathBuf;

/// Everything that can go wrong building a test set, running it or mining its failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Records(#[from] records::Error),
    #[error(transparent)]
    Embeddings(#[from] embeddings::Error),
    #[error(transparent)]
    Clustering(#[from] clustering::Error),
    /// A pool row that cannot be read as its family's format; `line` is 1-based.
    #[error("{path}:{line}: {message}")]
    PoolRow {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("unknown task family `{family}` (known: {known})")]
    UnknownFamily { family: String, known: String },
    /// A generated family could not find `requested` distinct tasks (a generator bug: every
    /// family's space is far larger than a test set).
    #[error(
        "generated family `{family}` found only {distinct} distinct tasks of {requested} in {draws} draws"
    )]
    FamilyExhausted {
        family: String,
        requested: usize,
        distinct: usize,
        draws: usize,
    },
    #[error("invalid configuration: {field}: {message}")]
    Config { field: String, message: String },
    #[error("the test set is empty: {0}")]
    EmptyTestSet(String),
    /// The LLM client (a labeller's or judge's) could not start or answer.
    #[error(transparent)]
    Client(#[from] llm_client::Error),
    /// A validation benchmark (for the leakage check) or a model call failed.
    #[error(transparent)]
    Benchmark(Box<benchmarks::Error>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
