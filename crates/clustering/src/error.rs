/// Everything that can go wrong clustering, describing, labelling or reporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("empty input: clustering needs at least one vector")]
    EmptyInput,
    #[error("vectors have dimension 0")]
    ZeroDimension,
    /// `row` is the 0-based index of the first vector whose length differs from the first one's.
    #[error("row {row}: expected {expected} dimensions (as row 0), got {actual}")]
    DimensionMismatch {
        row: usize,
        expected: usize,
        actual: usize,
    },
    #[error("flat buffer of {len} values is not a whole number of rows of dimension {dim}")]
    RaggedBuffer { len: usize, dim: usize },
    #[error("row {row}, column {column}: non-finite value {value}")]
    NonFinite {
        row: usize,
        column: usize,
        value: f32,
    },
    #[error("k = {k} is larger than the number of points n = {n}")]
    KLargerThanN { k: usize, n: usize },
    #[error("k = {k} but the input has only {distinct} distinct vectors")]
    TooFewDistinctPoints { k: usize, distinct: usize },
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{what}: expected {expected} entries (one per point), got {actual}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error(
        "silhouette needs between 2 and n-1 clusters; got {n_labels} clusters for n = {n_samples}"
    )]
    SilhouetteLabelCount { n_labels: usize, n_samples: usize },
    #[error("label response unusable: {reason}; response starts with {excerpt:?}")]
    LabelResponse {
        reason: &'static str,
        excerpt: String,
    },
    #[error("labelling cluster {cluster} failed: {source}")]
    Labeller {
        cluster: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Records(#[from] records::Error),
    #[error(transparent)]
    Chart(#[from] charts::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
