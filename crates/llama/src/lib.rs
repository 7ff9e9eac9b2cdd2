//! Llama-family language models on burn.
//!
//! ```
//! use llama::burn::tensor::Device;
//! use llama::generate::{generate, GenerationConfig};
//! use llama::{Llama, LlamaConfig};
//!
//! let device = Device::flex();
//! let model = Llama::random(&LlamaConfig::tiny_for_tests(), 0, &device)?;
//! let config = GenerationConfig { max_new_tokens: 4, ..Default::default() };
//! let out = generate(&model, &[vec![1, 2, 3]], &config, &device)?;
//! assert_eq!(out[0].tokens.len(), 4);
//! # Ok::<(), llama::Error>(())
//! ```
//!
//! A real checkpoint (an HF directory or a GGUF file) loads with its tokenizer and chat
//! template through [`Pretrained::load`]; lower down, [`SafetensorsSource::open`] or
//! [`GgufModel::open`] feed [`Llama::from_source`], [`loglikelihood::loglikelihood`] scores
//! continuations as lm-evaluation-harness does, and [`write_hf_dir`] exports any weights.
//!
//! The device is chosen at run time ([`device::select_device`]: `cpu`, or `cuda[:N]` with the
//! `tch` feature, bf16 by default). On a LibTorch GPU, greedy [`generate::generate`] replays a
//! captured CUDA graph of one fixed-shape decode step (`cuda_graph`, `tch` builds only).

mod error;

pub mod causal_attention;
pub mod chat_template;
pub mod config;
mod cpu;
pub mod cross_entropy;
#[cfg(feature = "tch")]
pub mod cuda_graph;
#[cfg(feature = "tch")]
pub mod cuda_memory;
pub mod device;
pub mod export;
mod fixed_decode;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod kv_write;
pub mod layer_checkpoint;
pub mod loglikelihood;
pub mod lora;
pub mod lora_linear;
pub mod model;
#[cfg(feature = "tch")]
pub mod nccl;
#[cfg(test)]
mod op_tests;
pub mod overwrite;
pub mod pretrained;
pub mod rms_norm;
pub mod rope;
pub mod safetensors_source;
pub mod swiglu;
pub mod tensor_source;
pub mod tokenizer;
#[cfg(feature = "tch")]
pub mod torch_profiler;
#[cfg(feature = "tch")]
mod torch_shim;
pub mod weights;

/// The burn version this crate is built against (for `Device`, `Tensor`).
pub use burn;
pub use chat_template::{ChatMessage, ChatTemplate, RenderOptions, RenderedConversation};
pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use export::{
    ExportOptions, ExportSummary, convert_gguf_to_hf_dir, replace_dir_atomically, write_hf_dir,
    write_safetensors_file,
};
pub use gguf::{GgufFile, GgufModel};
pub use kv_cache::KvCache;
pub use lora::{LoraAdapter, ProjectionKind};
pub use model::Llama;
pub use pretrained::Pretrained;
pub use safetensors_source::SafetensorsSource;
pub use tensor_source::{HostDType, HostTensor, TensorSource};
pub use tokenizer::Tokenizer;
pub use weights::{OwnedTensors, host_tensor};
