//! Who answers a phase's LLM calls, as its config file names it: tuneloop's own `serve` over a
//! local model (offline; started before the work and stopped after it, also when the work
//! fails) or any OpenAI-compatible endpoint. Phase 1B's labeller and Phase 1C's teacher and
//! judge are all one of these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::LlmClient;
use crate::config::{ClientConfig, Endpoint, EndpointSettings, Prices, ProviderBatch};
use crate::error::{Error, Result};
use crate::serve_process::{ServeOptions, ServeProcess};

/// One model behind the OpenAI API, as configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    /// `serve` (tuneloop's server over a local model, started and stopped by the run) or
    /// `endpoint` (any OpenAI-compatible API: base URL, model and key variable below).
    pub kind: String,
    /// For `serve`: the model to serve (default: the phase's own model).
    pub serve_model: Option<PathBuf>,
    /// For `endpoint`: base URL, model and the name of the API key's environment variable.
    pub endpoint: EndpointSettings,
    /// US dollars per million tokens; needed for a budget to mean anything on a paid API.
    pub prices: Option<Prices>,
    /// Hard cap on this ledger's total spend, in US dollars.
    pub budget_usd: Option<f64>,
    /// Requests in flight at once (`serve` on a CPU answers one at a time anyway).
    pub max_concurrency: usize,
    /// Requests and tokens per minute (the provider's limits); none = unlimited.
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// Seconds one HTTP attempt may take (a CPU `serve` writing a long answer is slow).
    pub timeout_s: u64,
    /// For `endpoint`: send the phase's batches through the provider's Batch API (half price
    /// on OpenAI, answered within the completion window). `[<section>.batch]` with its
    /// defaults: `poll_s = 30`, `completion_window = "24h"`, `price_factor = 0.5`,
    /// `max_requests = 50000`.
    pub batch: Option<ProviderBatch>,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            kind: "serve".into(),
            serve_model: None,
            endpoint: EndpointSettings::default(),
            prices: None,
            budget_usd: None,
            max_concurrency: 8,
            rpm: None,
            tpm: None,
            timeout_s: 300,
            batch: None,
        }
    }
}

impl LlmSettings {
    /// Checks what can be checked before anything starts: the kind, and for an endpoint its URL,
    /// model and key variable (a missing key is an error here, before any paid call).
    pub fn check(&self, field: &str) -> Result<()> {
        match self.kind.as_str() {
            "serve" if self.batch.is_some() => Err(Error::Config {
                field: format!("{field}.batch"),
                reason: "serve has no Batch API; use it with kind = \"endpoint\"".into(),
            }),
            "serve" => Ok(()),
            "endpoint" => {
                Endpoint::resolve(&self.endpoint)
                    .map(|_| ())
                    .map_err(|error| match error {
                        Error::Config {
                            field: inner,
                            reason,
                        } => Error::Config {
                            field: format!("{field}.endpoint.{inner}"),
                            reason,
                        },
                        other => other,
                    })
            }
            other => Err(Error::Config {
                field: format!("{field}.kind"),
                reason: format!("unknown `{other}` (accepted: serve, endpoint)"),
            }),
        }
    }

    fn client(&self, endpoint: Endpoint, ledger: &Path) -> Result<LlmClient> {
        let mut config = ClientConfig::new(endpoint, ledger);
        if let Some(prices) = self.prices {
            config.prices.insert(config.endpoint.model.clone(), prices);
        }
        config.budget_usd = self.budget_usd;
        config.max_concurrency = self.max_concurrency.max(1);
        config.rpm = self.rpm;
        config.tpm = self.tpm;
        config.timeout = Duration::from_secs(self.timeout_s.max(1));
        config.provider_batch = self.batch.clone();
        LlmClient::new(config)
    }
}

/// Runs `work` with a client for `settings`, its answers recorded in the ledger at `ledger`.
/// For `serve`, the server is started on a free loopback port over `settings.serve_model` (or
/// `default_model`) on `device` before the work and stopped after it, whatever the work returns.
pub async fn with_llm<T, E: From<Error>>(
    settings: &LlmSettings,
    default_model: &Path,
    device: &str,
    ledger: &Path,
    work: impl AsyncFnOnce(LlmClient) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    match settings.kind.as_str() {
        "serve" => {
            let binary = ServeOptions::locate_binary()?;
            let model = settings
                .serve_model
                .clone()
                .unwrap_or_else(|| default_model.to_path_buf());
            let mut options = ServeOptions::new(binary, model);
            options.device = device.to_string();
            let serve = ServeProcess::start(options).await?;
            let outcome = match settings.client(serve.endpoint(), ledger) {
                Ok(client) => work(client).await,
                Err(error) => Err(error.into()),
            };
            serve.stop()?;
            outcome
        }
        "endpoint" => {
            let client = settings.client(Endpoint::resolve(&settings.endpoint)?, ledger)?;
            work(client).await
        }
        _ => Err(settings.check("llm").unwrap_err().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_variable_and_an_unknown_kind_are_named_before_any_call() {
        let settings = LlmSettings {
            kind: "endpoint".into(),
            endpoint: EndpointSettings {
                base_url: Some("https://api.example.com/v1".into()),
                model: Some("teacher".into()),
                api_key_env: Some("TUNELOOP_TEST_SURELY_UNSET_KEY".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let error = settings.check("teacher").unwrap_err().to_string();
        assert!(
            error.contains("teacher.endpoint.api_key_env")
                && error.contains("TUNELOOP_TEST_SURELY_UNSET_KEY"),
            "{error}"
        );
        let unknown = LlmSettings {
            kind: "ollama".into(),
            ..Default::default()
        };
        let error = unknown.check("judge").unwrap_err().to_string();
        assert!(
            error.contains("judge.kind") && error.contains("ollama"),
            "{error}"
        );
        assert!(LlmSettings::default().check("teacher").is_ok());
    }

    #[test]
    fn a_batch_section_takes_defaults_and_is_refused_for_serve() {
        let settings: LlmSettings =
            serde_json::from_str(r#"{"kind": "endpoint", "batch": {"poll_s": 5}}"#).unwrap();
        let batch = settings.batch.clone().unwrap();
        assert_eq!(batch.poll_s, 5.0);
        assert_eq!(batch.price_factor, 0.5);
        assert_eq!(batch.completion_window, "24h");
        assert!(serde_json::from_str::<LlmSettings>(r#"{"batch": {"poll": 5}}"#).is_err());
        let served = LlmSettings {
            batch: Some(ProviderBatch::default()),
            ..Default::default()
        };
        let error = served.check("teacher").unwrap_err().to_string();
        assert!(error.contains("teacher.batch"), "{error}");
        // The section reaches the client that `with_llm` hands to the phase.
        let dir = tempfile::tempdir().unwrap();
        let client = settings
            .client(
                Endpoint::new("http://127.0.0.1:9/v1", "m"),
                &dir.path().join("l.sqlite"),
            )
            .unwrap();
        assert_eq!(client.config().provider_batch, Some(batch));
    }
}
