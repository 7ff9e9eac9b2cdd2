//! The local Llama model behind [`LanguageModel`]: tokenisation (with lm-evaluation-harness's
//! context/continuation split), batched log-likelihood and batched generation on the model's
//! device.

use std::sync::Mutex;

use llama::generate::{DecodeGraphs, GenerationConfig, generate_with};
use llama::loglikelihood::{
    self, LoglikelihoodStats, PrefixCache, loglikelihood_with_prefix_cache,
};
use llama::{ChatMessage as LlamaMessage, Pretrained};

use crate::error::ModelError;
use crate::model::{
    ChatMessage, GenerationRequest, LanguageModel, Loglikelihood, LoglikelihoodRequest, Prompt,
    Role,
};

/// A loaded checkpoint scored in batches of `batch_size`.
#[derive(Debug)]
pub struct LocalModel {
    name: String,
    batch_size: usize,
    // burn modules are Send but not necessarily Sync; the harness calls one batch at a time.
    model: Mutex<Pretrained>,
    /// The last few-shot prompt's keys and values: an MMLU subject's 5-shot prompt is
    /// computed once, not once per batch.
    prefixes: Mutex<PrefixCache>,
    /// Greedy decode steps captured on a GPU, replayed by later batches of the same shape.
    graphs: DecodeGraphs,
}

impl LocalModel {
    pub fn new(name: impl Into<String>, model: Pretrained, batch_size: usize) -> Self {
        Self {
            name: name.into(),
            batch_size: batch_size.max(1),
            model: Mutex::new(model),
            prefixes: Mutex::new(PrefixCache::new()),
            graphs: DecodeGraphs::new(),
        }
    }

    /// Positions computed and reused by every log-likelihood call so far.
    pub fn loglikelihood_stats(&self) -> LoglikelihoodStats {
        self.prefixes.lock().map(|p| p.stats()).unwrap_or_default()
    }

    /// lm-evaluation-harness's `_encode_pair`: trailing whitespace of the context moves to the
    /// continuation; the continuation's tokens are those of `context + continuation` after the
    /// context's own tokens.
    pub fn encode_pair(
        model: &Pretrained,
        context: &str,
        continuation: &str,
    ) -> llama::Result<(Vec<u32>, Vec<u32>)> {
        let trimmed = context.trim_end();
        let moved = &context[trimmed.len()..];
        let continuation = format!("{moved}{continuation}");
        let whole = model
            .tokenizer
            .encode(&format!("{trimmed}{continuation}"), false)?;
        let context_ids = model.tokenizer.encode(trimmed, false)?;
        let split = context_ids.len().min(whole.len());
        Ok((whole[..split].to_vec(), whole[split..].to_vec()))
    }

    fn prompt_ids(model: &Pretrained, prompt: &Prompt) -> llama::Result<Vec<u32>> {
        match prompt {
            Prompt::Text(text) => model.tokenizer.encode(text, false),
            Prompt::Chat(messages) => {
                let messages: Vec<LlamaMessage> = messages.iter().map(to_llama_message).collect();
                model.chat_prompt(&messages)
            }
        }
    }
}

fn to_llama_message(message: &ChatMessage) -> LlamaMessage {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    LlamaMessage::new(role, message.content.clone())
}

impl LanguageModel for LocalModel {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn supports_loglikelihood(&self) -> bool {
        true
    }

    fn loglikelihood(
        &self,
        requests: &[LoglikelihoodRequest],
    ) -> Result<Vec<Loglikelihood>, ModelError> {
        let model = self.model.lock().map_err(|_| "model lock poisoned")?;
        let mut encoded = Vec::with_capacity(requests.len());
        for request in requests {
            let (context, continuation) =
                Self::encode_pair(&model, &request.context, &request.continuation)?;
            // lm-eval scores an empty context from the end-of-text token.
            let context = if context.is_empty() {
                model.stop_token_ids().into_iter().take(1).collect()
            } else {
                context
            };
            encoded.push(loglikelihood::LoglikelihoodRequest {
                context,
                continuation,
            });
        }
        let device = model.model.device();
        let mut prefixes = self
            .prefixes
            .lock()
            .map_err(|_| "prefix cache lock poisoned")?;
        let scores = loglikelihood_with_prefix_cache(
            &model.model,
            &encoded,
            self.batch_size,
            &device,
            &mut prefixes,
        )?;
        Ok(scores
            .into_iter()
            .map(|s| Loglikelihood {
                logprob: s.logprob,
                is_greedy: s.is_greedy,
            })
            .collect())
    }

    fn generate(&self, requests: &[GenerationRequest]) -> Result<Vec<String>, ModelError> {
        let model = self.model.lock().map_err(|_| "model lock poisoned")?;
        let device = model.model.device();
        let mut outputs = vec![String::new(); requests.len()];
        // One generate call per distinct decoding setting; prompts within it are batched.
        let mut groups: Vec<(&GenerationRequest, Vec<usize>)> = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            let same_setting = |r: &GenerationRequest| {
                (r.max_new_tokens, r.temperature, r.seed, &r.stop)
                    == (
                        request.max_new_tokens,
                        request.temperature,
                        request.seed,
                        &request.stop,
                    )
            };
            match groups.iter_mut().find(|(first, _)| same_setting(first)) {
                Some((_, members)) => members.push(index),
                None => groups.push((request, vec![index])),
            }
        }
        for (setting, members) in groups {
            let prompts = members
                .iter()
                .map(|&i| Self::prompt_ids(&model, &requests[i].prompt))
                .collect::<llama::Result<Vec<_>>>()?;
            // Stop strings become token sequences only as an early exit; the harness cuts the
            // text at the exact stop string afterwards.
            let stop_sequences = setting
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| model.tokenizer.encode(s, false))
                .collect::<llama::Result<Vec<_>>>()?;
            let config = GenerationConfig {
                max_new_tokens: setting.max_new_tokens,
                temperature: setting.temperature,
                seed: setting.seed,
                stop_token_ids: model.stop_token_ids(),
                stop_sequences,
                batch_size: self.batch_size,
                ..GenerationConfig::default()
            };
            let generations =
                generate_with(&model.model, &self.graphs, &prompts, &config, &device)?;
            for (&index, generation) in members.iter().zip(generations) {
                outputs[index] = model.tokenizer.decode(&generation.tokens, true)?;
            }
        }
        Ok(outputs)
    }
}
