//! The crate's one error type.
//!
//! Every message is built from values that never include the API key: texts that come from the
//! server are passed through [`crate::Secret::redact`] before they land here.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the LLM client, per request or for the whole client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cluster label answer that could not be read as a name and description.
    #[error(transparent)]
    ClusterLabel(#[from] clustering::Error),

    /// A configuration value is missing or wrong (field names the setting or environment variable).
    #[error("invalid client configuration: {field}: {reason}")]
    Config { field: String, reason: String },

    /// A budget is set but the price table has no entry for the model, so spend cannot be bounded.
    #[error("budget_usd is set but the price table has no entry for model {model:?}")]
    MissingPrice { model: String },

    /// Sending this request could cross the hard budget cap; it was not sent.
    #[error(
        "budget cap ${cap_usd:.6} would be crossed: already spent ${spent_usd:.6}, this request may cost up to ${needed_usd:.6}"
    )]
    BudgetExceeded {
        cap_usd: f64,
        spent_usd: f64,
        needed_usd: f64,
    },

    /// The server said the account's quota is used up (HTTP 429 with `insufficient_quota`).
    /// Not retried; later requests of this client fail the same way without being sent.
    #[error("quota exhausted (HTTP {status}): {message}")]
    QuotaExhausted { status: u16, message: String },

    /// HTTP 429 rate limit (retried; this is the last one seen when retries ran out).
    #[error("rate limited (HTTP 429), retry-after {retry_after:?}: {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },

    /// A 4xx other than 408/429: the request itself is wrong. Not retried.
    #[error("request rejected (HTTP {status}): {message}")]
    BadRequest { status: u16, message: String },

    /// HTTP 401/403: the key is missing or wrong. Not retried. The key itself is never shown.
    #[error("not authorised (HTTP {status}): {message}")]
    Unauthorized { status: u16, message: String },

    /// HTTP 5xx or 408 (retried; this is the last one seen when retries ran out).
    #[error("server error (HTTP {status}): {message}")]
    Server { status: u16, message: String },

    /// No complete response within the per-request timeout.
    #[error("request timed out after {timeout:?}")]
    Timeout { timeout: Duration },

    /// A streamed answer sent no data event for `idle` (retried; counted at its upper bound).
    #[error("stream stalled: no data for {idle:?}")]
    StreamStalled { idle: Duration },

    /// Connection refused, reset or closed before a status line arrived.
    #[error("transport error talking to {base_url}: {message}")]
    Transport { base_url: String, message: String },

    /// HTTP 200 whose body is not a chat completion (truncated JSON, no choices, ...).
    #[error("malformed response (HTTP {status}): {detail}")]
    MalformedResponse { status: u16, detail: String },

    /// Every attempt failed with a retryable error.
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted { attempts: u32, last: Box<Error> },

    /// The SQLite ledger failed.
    #[error("ledger {path}: {source}")]
    Ledger {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A row in the ledger could not be decoded (field says which column, hash which row).
    #[error("ledger {path}: row {hash}: bad {field}: {reason}")]
    LedgerRow {
        path: PathBuf,
        hash: String,
        field: &'static str,
        reason: String,
    },

    /// The local `serve` subprocess could not be started or did not become ready.
    #[error("serve process {binary}: {reason}")]
    ServeProcess { binary: PathBuf, reason: String },

    /// A batch task died without producing a result (a bug; reported instead of dropping the item).
    /// The provider's Batch API gave no answer for this request: the batch failed validation,
    /// expired or was cancelled, or its files could not be read.
    #[error("provider batch {batch}: {reason}")]
    ProviderBatch {
        batch: String,
        reason: String,
        retryable: bool,
    },

    #[error("batch item {index} was lost: {reason}")]
    ItemLost { index: usize, reason: String },
}

impl Error {
    /// Whether another attempt of the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Timeout { .. }
                | Error::StreamStalled { .. }
                | Error::Transport { .. }
                | Error::MalformedResponse { .. }
                | Error::ProviderBatch {
                    retryable: true,
                    ..
                }
        )
    }

    /// The error that ended the request: unwraps [`Error::RetriesExhausted`].
    pub fn root(&self) -> &Error {
        match self {
            Error::RetriesExhausted { last, .. } => last.root(),
            other => other,
        }
    }

    /// A short stable name for counting failures by kind in reports.
    pub fn kind(&self) -> &'static str {
        match self.root() {
            Error::Config { .. } => "config",
            Error::MissingPrice { .. } => "missing_price",
            Error::BudgetExceeded { .. } => "budget_exceeded",
            Error::QuotaExhausted { .. } => "quota_exhausted",
            Error::RateLimited { .. } => "rate_limited",
            Error::BadRequest { .. } => "bad_request",
            Error::Unauthorized { .. } => "unauthorized",
            Error::Server { .. } => "server",
            Error::Timeout { .. } => "timeout",
            Error::StreamStalled { .. } => "stream_stalled",
            Error::ServeProcess { .. } => "serve_process",
            Error::Transport { .. } => "transport",
            Error::MalformedResponse { .. } => "malformed_response",
            Error::RetriesExhausted { .. } => "retries_exhausted",
            Error::Ledger { .. } | Error::LedgerRow { .. } => "ledger",
            Error::ItemLost { .. } => "item_lost",
            Error::ProviderBatch { .. } => "provider_batch",
            Error::ClusterLabel(_) => "cluster_label",
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
