//! Llama-family language models on burn.
//!
//! (Crate docs and example filled in as the modules land.)

mod error;

pub mod chat_template;
pub mod config;
pub mod export;
pub mod gguf;
pub mod tensor_source;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate, RenderOptions, RenderedConversation};
pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use export::{ExportOptions, ExportSummary, convert_gguf_to_hf_dir, write_hf_dir};
pub use gguf::{GgufFile, GgufModel};
pub use tensor_source::{HostDType, HostTensor, TensorSource};
pub use tokenizer::Tokenizer;
