//! The seam between the harness and whatever answers: the local model or an OpenAI-compatible
//! endpoint (log-likelihood where the server answers prompt log-probabilities, and generation).
//!
//! Requests are text-level: the implementation tokenises, including lm-evaluation-harness's
//! context/continuation split (tokenise `context + continuation`, score the tokens after the
//! context's). Calls take whole batches so an implementation can batch on the device.

pub use records::eval::{ChatMessage, Prompt, Role};

use crate::error::ModelError;

/// Score `continuation` given `context`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoglikelihoodRequest {
    pub context: String,
    pub continuation: String,
}

/// Sum of log-probabilities of the continuation's tokens, and whether greedy decoding from the
/// context would have produced exactly them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Loglikelihood {
    pub logprob: f64,
    pub is_greedy: bool,
}

/// Generate text for a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
    pub prompt: Prompt,
    pub max_new_tokens: usize,
    /// Stop before the first occurrence of any of these; the output excludes the stop string.
    /// (The harness truncates again, so an endpoint limited to a few stop strings is fine.)
    pub stop: Vec<String>,
    /// 0 means greedy.
    pub temperature: f32,
    /// Seed for sampling, fixed per item and sample so reruns and resumes agree.
    pub seed: u64,
}

/// A language model the benchmarks can score.
pub trait LanguageModel: Sync {
    /// Name recorded in results (model path or endpoint model id).
    fn name(&self) -> String;

    /// Whether [`LanguageModel::loglikelihood`] works (an endpoint only where the server
    /// answers prompt log-probabilities).
    fn supports_loglikelihood(&self) -> bool;

    /// Why [`LanguageModel::supports_loglikelihood`] is false, for the error that says so.
    fn loglikelihood_unsupported_reason(&self) -> String {
        "it scores generations only".into()
    }

    /// One answer per request, in order.
    fn loglikelihood(
        &self,
        requests: &[LoglikelihoodRequest],
    ) -> Result<Vec<Loglikelihood>, ModelError>;

    /// One completion per request, in order (the generated text only, not the prompt).
    fn generate(&self, requests: &[GenerationRequest]) -> Result<Vec<String>, ModelError>;
}

/// Cuts `text` before the earliest stop string.
pub fn truncate_at_stop<'a>(text: &'a str, stop: &[String]) -> &'a str {
    let end = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_earliest_stop() {
        let stops = vec!["\ndef".to_string(), "\nprint".to_string()];
        assert_eq!(
            truncate_at_stop("  return 1\nprint(2)\ndef f", &stops),
            "  return 1"
        );
        assert_eq!(truncate_at_stop("  return 1", &stops), "  return 1");
    }
}
