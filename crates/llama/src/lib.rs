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
//! Real checkpoints load with [`SafetensorsSource::open`] and [`Llama::from_source`];
//! [`loglikelihood::loglikelihood`] scores continuations as lm-evaluation-harness does.

mod error;

pub mod config;
pub mod generate;
pub mod kv_cache;
pub mod loglikelihood;
pub mod model;
pub mod rope;
pub mod safetensors_source;
pub mod tensor_source;
pub mod weights;

/// The burn version this crate is built against (for `Device`, `Tensor`).
pub use burn;
pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use kv_cache::KvCache;
pub use model::Llama;
pub use safetensors_source::SafetensorsSource;
pub use tensor_source::{HostDType, HostTensor, TensorSource};
pub use weights::OwnedTensors;
