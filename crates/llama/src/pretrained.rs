//! One entry point for a real checkpoint: an HF directory or a GGUF file, with its tokenizer
//! and chat template, ready to chat or score.

use std::path::Path;

use burn::tensor::Device;

use crate::chat_template::ChatMessage;
use crate::generate::{GenerationConfig, generate};
use crate::gguf::GgufModel;
use crate::model::Llama;
use crate::safetensors_source::SafetensorsSource;
use crate::tokenizer::Tokenizer;
use crate::{Error, LlamaConfig, Result};

/// A loaded model with the tokenizer it was trained with.
#[derive(Debug)]
pub struct Pretrained {
    pub model: Llama,
    pub tokenizer: Tokenizer,
}

impl Pretrained {
    /// Loads `path`: a `.gguf` file (dequantised on load) or an HF model directory
    /// (`config.json`, `model.safetensors` or a sharded index, `tokenizer.json`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf {
            let gguf = GgufModel::open(path)?;
            let tokenizer = Tokenizer::from_gguf(&gguf)?;
            let model = Llama::from_source(gguf.config(), &gguf, device)?;
            return Ok(Self { model, tokenizer });
        }
        if !path.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: not a model directory or a .gguf file",
                path.display()
            )));
        }
        let config = LlamaConfig::from_file(&path.join("config.json"))?;
        let weights = SafetensorsSource::open(path)?;
        let model = Llama::from_source(&config, &weights, device)?;
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        Ok(Self { model, tokenizer })
    }

    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    /// Renders `messages` through the chat template with the assistant turn opened.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let template = self.tokenizer.chat_template()?.ok_or_else(|| {
            Error::ChatTemplate("this model has no chat template; use raw prompts".into())
        })?;
        let text = template.render(messages, true)?;
        // The template writes any BOS itself.
        self.tokenizer.encode(&text, false)
    }

    /// The stop ids for chat: the tokenizer's end-of-sequence tokens and the config's.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids = self.tokenizer.eos_token_ids().to_vec();
        ids.extend(self.config().eos_token_ids());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Answers each conversation (batched); stop tokens default to [`Self::stop_token_ids`].
    pub fn chat(
        &self,
        conversations: &[Vec<ChatMessage>],
        config: &GenerationConfig,
    ) -> Result<Vec<String>> {
        let prompts = conversations
            .iter()
            .map(|messages| self.chat_prompt(messages))
            .collect::<Result<Vec<_>>>()?;
        let mut config = config.clone();
        if config.stop_token_ids.is_empty() {
            config.stop_token_ids = self.stop_token_ids();
        }
        let generations = generate(&self.model, &prompts, &config, &self.model.device())?;
        generations
            .iter()
            .map(|g| self.tokenizer.decode(&g.tokens, true))
            .collect()
    }
}
