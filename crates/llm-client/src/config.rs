//! Endpoint, prices and client settings.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An API key. `Debug` and `Display` print `***`; it has no `Serialize`, so it cannot end up in a
/// JSON record, a ledger row or a run directory by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The key itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by `***` (servers do echo keys back in
    /// 401 messages).
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.0, "***")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which field carries the output-token limit on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_completion_tokens` (current OpenAI; vLLM).
    #[default]
    MaxCompletionTokens,
    /// The older `max_tokens` (Ollama, older servers).
    MaxTokens,
}

/// Where requests go: an OpenAI-compatible `/v1` base URL (OpenAI, vLLM, Ollama, or our own
/// `serve`), the model name and an optional key.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL up to and including `/v1`; `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Secret>,
    /// Whether the server accepts `response_format: {type: json_schema}`. When false, the schema
    /// goes into a system message and the answer is parsed tolerantly. When true and the server
    /// rejects the field anyway, the client falls back to the prompt once and remembers it.
    pub json_schema: bool,
    pub max_tokens_field: MaxTokensField,
}

/// Default base URL when neither the config nor `OPENAI_BASE_URL` gives one.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

impl Endpoint {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            model: model.into(),
            api_key: None,
            json_schema: true,
            max_tokens_field: MaxTokensField::default(),
        }
    }

    pub fn with_api_key(mut self, key: Secret) -> Self {
        self.api_key = Some(key);
        self
    }

    /// From the environment: `OPENAI_BASE_URL` (default OpenAI), `OPENAI_API_KEY` (optional:
    /// vLLM, Ollama and `serve` need none) and `OPENAI_MODEL` (required).
    pub fn from_env() -> Result<Self> {
        Self::resolve(&EndpointSettings::default())
    }

    /// Settings from a config file, each missing field taken from the environment.
    pub fn resolve(settings: &EndpointSettings) -> Result<Self> {
        Self::resolve_with(settings, |name| std::env::var(name).ok())
    }

    /// [`Endpoint::resolve`] with an explicit environment lookup (tests, or a non-process env).
    pub fn resolve_with(
        settings: &EndpointSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let base_url = non_empty(settings.base_url.clone())
            .or_else(|| non_empty(env("OPENAI_BASE_URL")))
            .unwrap_or_else(|| OPENAI_BASE_URL.to_owned());
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(Error::Config {
                field: "base_url (or OPENAI_BASE_URL)".into(),
                reason: format!("{base_url:?} is not an http:// or https:// URL"),
            });
        }
        let model = non_empty(settings.model.clone())
            .or_else(|| non_empty(env("OPENAI_MODEL")))
            .ok_or_else(|| Error::Config {
                field: "model (or OPENAI_MODEL)".into(),
                reason: "no model name given".into(),
            })?;
        let key_var = settings.api_key_env.as_deref().unwrap_or("OPENAI_API_KEY");
        let mut endpoint = Endpoint::new(base_url, model);
        endpoint.api_key = non_empty(env(key_var)).map(Secret::new);
        if settings.api_key_env.is_some() && endpoint.api_key.is_none() {
            return Err(Error::Config {
                field: "api_key_env".into(),
                reason: format!("environment variable {key_var} is not set"),
            });
        }
        if let Some(json_schema) = settings.json_schema {
            endpoint.json_schema = json_schema;
        }
        if let Some(field) = settings.max_tokens_field {
            endpoint.max_tokens_field = field;
        }
        Ok(endpoint)
    }
}

/// The endpoint as written in a config file. The key is never in the file, only the name of the
/// environment variable that holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// Name of the environment variable holding the key (default `OPENAI_API_KEY`, optional).
    pub api_key_env: Option<String>,
    pub json_schema: Option<bool>,
    pub max_tokens_field: Option<MaxTokensField>,
}

/// Price of one model in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Prices {
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// Prices per model name, e.g. from a `[prices."gpt-4o-mini"]` config table.
pub type PriceTable = BTreeMap<String, Prices>;

/// Exponential backoff with full jitter, never shorter than the server's `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first retry's delay.
    pub initial: Duration,
    /// Upper bound of any computed delay.
    pub max: Duration,
    /// A `Retry-After` longer than this is cut to it (a server asking for an hour is treated
    /// like a failure to retry soon, not obeyed blindly).
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// The provider's Batch API (OpenAI's `/v1/batches`): a batch's requests go up as one JSONL
/// file and their answers come back within the completion window at the batch price. Only
/// [`crate::LlmClient::chat_batch`] and [`crate::LlmClient::completion_batch`] use it; single
/// calls stay synchronous.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderBatch {
    /// Seconds between two status polls of a batch in progress.
    pub poll_s: f64,
    /// The `completion_window` sent with each batch (OpenAI accepts `24h`).
    pub completion_window: String,
    /// The batch price as a share of the synchronous price (OpenAI's batches cost half).
    pub price_factor: f64,
    /// Most requests in one batch (OpenAI's limit is 50,000); more are split.
    pub max_requests: usize,
}

impl Default for ProviderBatch {
    fn default() -> Self {
        Self {
            poll_s: 30.0,
            completion_window: "24h".into(),
            price_factor: 0.5,
            max_requests: 50_000,
        }
    }
}

/// Everything [`crate::LlmClient::new`] needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Endpoint,
    /// Limit for one HTTP attempt, from sending to the last body byte (streamed or not).
    pub timeout: Duration,
    /// For streamed answers: the longest wait for the next SSE data event (keep-alive comments
    /// do not count) before the attempt is abandoned as stalled and retried.
    pub stream_idle_timeout: Duration,
    /// Most HTTP attempts in flight at once.
    pub max_concurrency: usize,
    /// Requests per minute (every attempt counts); `None` = unlimited.
    pub rpm: Option<u32>,
    /// Tokens per minute, counted as prompt estimate + max output tokens per attempt (what
    /// OpenAI counts against the limit); `None` = unlimited.
    pub tpm: Option<u32>,
    /// Retries after the first attempt for retryable failures.
    pub max_retries: u32,
    pub backoff: Backoff,
    /// Prices per model; the endpoint's model is looked up here. A model without a price costs 0.
    pub prices: PriceTable,
    /// Hard cap on the ledger's total spend in US dollars.
    pub budget_usd: Option<f64>,
    /// The SQLite ledger file (created with its parent folder if missing).
    pub ledger_path: PathBuf,
    /// Output limit sent when a request sets none, so every request's cost has an upper bound.
    pub default_max_tokens: u32,
    /// Send batches through the provider's Batch API instead of one HTTP call per request.
    pub provider_batch: Option<ProviderBatch>,
}

impl ClientConfig {
    /// Defaults: 60 s timeout, 30 s stream idle timeout, 8 concurrent, no rate limits, 5 retries, no prices or budget,
    /// 1024 max output tokens.
    pub fn new(endpoint: Endpoint, ledger_path: impl Into<PathBuf>) -> Self {
        Self {
            endpoint,
            timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(30),
            max_concurrency: 8,
            rpm: None,
            tpm: None,
            max_retries: 5,
            backoff: Backoff::default(),
            prices: PriceTable::new(),
            budget_usd: None,
            ledger_path: ledger_path.into(),
            default_max_tokens: 1024,
            provider_batch: None,
        }
    }

    /// The endpoint model's price, if the table has one.
    pub fn model_prices(&self) -> Option<Prices> {
        self.prices.get(&self.endpoint.model).copied()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| {
            Err(Error::Config {
                field: field.into(),
                reason,
            })
        };
        if self.max_concurrency == 0 {
            return bad("max_concurrency", "must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be positive".into());
        }
        if self.stream_idle_timeout.is_zero() {
            return bad("stream_idle_timeout", "must be positive".into());
        }
        if self.rpm == Some(0) {
            return bad(
                "rpm",
                "0 would block every request; use None for no limit".into(),
            );
        }
        if self.tpm == Some(0) {
            return bad(
                "tpm",
                "0 would block every request; use None for no limit".into(),
            );
        }
        if self.default_max_tokens == 0 {
            return bad("default_max_tokens", "must be at least 1".into());
        }
        if let Some(batch) = &self.provider_batch {
            if !(batch.poll_s.is_finite() && batch.poll_s > 0.0) {
                return bad(
                    "provider_batch.poll_s",
                    format!("must be a positive number of seconds, got {}", batch.poll_s),
                );
            }
            if !(batch.price_factor.is_finite() && batch.price_factor > 0.0) {
                return bad(
                    "provider_batch.price_factor",
                    format!("must be positive, got {}", batch.price_factor),
                );
            }
            if batch.max_requests == 0 {
                return bad("provider_batch.max_requests", "must be at least 1".into());
            }
            if batch.completion_window.trim().is_empty() {
                return bad(
                    "provider_batch.completion_window",
                    "must not be empty".into(),
                );
            }
        }
        for (model, p) in &self.prices {
            if !(p.input_per_mtok >= 0.0 && p.output_per_mtok >= 0.0) {
                return bad(
                    &format!("prices.{model}"),
                    format!("prices must be finite and >= 0, got {p:?}"),
                );
            }
        }
        if let Some(cap) = self.budget_usd {
            if !(cap.is_finite() && cap >= 0.0) {
                return bad("budget_usd", format!("must be finite and >= 0, got {cap}"));
            }
            if self.model_prices().is_none() {
                return Err(Error::MissingPrice {
                    model: self.endpoint.model.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let key = Secret::new("sk-live-abcdef123456");
        assert_eq!(format!("{key}"), "***");
        assert_eq!(format!("{key:?}"), "***");
        let endpoint = Endpoint::new("http://x/v1", "m").with_api_key(key.clone());
        assert!(!format!("{endpoint:?}").contains("abcdef"));
        assert_eq!(
            key.redact("Incorrect API key provided: sk-live-abcdef123456."),
            "Incorrect API key provided: ***."
        );
    }

    #[test]
    fn endpoint_from_settings_and_env() {
        let env = |name: &str| match name {
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:8000/v1/".to_owned()),
            "OPENAI_MODEL" => Some("env-model".to_owned()),
            "OPENAI_API_KEY" => Some("sk-env".to_owned()),
            _ => None,
        };
        let e = Endpoint::resolve_with(&EndpointSettings::default(), env).unwrap();
        assert_eq!(e.base_url, "http://127.0.0.1:8000/v1");
        assert_eq!(e.model, "env-model");
        assert_eq!(e.api_key.unwrap().expose(), "sk-env");

        let settings = EndpointSettings {
            model: Some("cfg-model".into()),
            json_schema: Some(false),
            ..Default::default()
        };
        let e = Endpoint::resolve_with(&settings, env).unwrap();
        assert_eq!(e.model, "cfg-model");
        assert!(!e.json_schema);

        let err = Endpoint::resolve_with(&EndpointSettings::default(), |_| None).unwrap_err();
        assert!(err.to_string().contains("OPENAI_MODEL"), "{err}");
        let settings = EndpointSettings {
            model: Some("m".into()),
            api_key_env: Some("MY_KEY".into()),
            ..Default::default()
        };
        let err = Endpoint::resolve_with(&settings, |_| None).unwrap_err();
        assert!(err.to_string().contains("MY_KEY"), "{err}");
        let settings = EndpointSettings {
            base_url: Some("localhost:8000".into()),
            model: Some("m".into()),
            ..Default::default()
        };
        let err = Endpoint::resolve_with(&settings, |_| None).unwrap_err();
        assert!(err.to_string().contains("base_url"), "{err}");
    }

    #[test]
    fn settings_parse_from_json_and_reject_unknown_fields() {
        let s: EndpointSettings =
            serde_json::from_str(r#"{"model":"gpt-4o-mini","max_tokens_field":"max_tokens"}"#)
                .unwrap();
        assert_eq!(s.max_tokens_field, Some(MaxTokensField::MaxTokens));
        assert!(serde_json::from_str::<EndpointSettings>(r#"{"api_key":"sk-x"}"#).is_err());
    }

    #[test]
    fn budget_needs_a_price() {
        let mut c = ClientConfig::new(Endpoint::new("http://x/v1", "m"), "l.sqlite");
        c.validate().unwrap();
        c.budget_usd = Some(1.0);
        assert!(matches!(c.validate(), Err(Error::MissingPrice { .. })));
        c.prices.insert(
            "m".into(),
            Prices {
                input_per_mtok: 1.0,
                output_per_mtok: 2.0,
            },
        );
        c.validate().unwrap();
        assert!((c.model_prices().unwrap().cost_usd(1_000_000, 500_000) - 2.0).abs() < 1e-12);
        c.max_concurrency = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_concurrency")
        );
    }
}
