//! Llama-family language models on burn.
//!
//! (Crate docs and example filled in as the modules land.)

mod error;

pub mod config;
pub mod tensor_source;

pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use tensor_source::{HostDType, HostTensor, TensorSource};
