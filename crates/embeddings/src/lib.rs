//! Sentence embeddings with all-MiniLM-L6-v2 (a 6-layer BERT) on burn: the model's own
//! safetensors and tokenizer.json, mean pooling over real tokens, L2 normalisation, batches
//! sorted by length. Runs on the CPU (`flex`, default feature) or, with `tch`, a LibTorch GPU.
//!
//! ```no_run
//! use embeddings::burn::tensor::Device;
//! use embeddings::SentenceEncoder;
//!
//! let encoder = SentenceEncoder::load("assets/all-minilm-l6-v2".as_ref(), &Device::flex())?;
//! let vectors = encoder.encode(&["A man is playing a guitar.", "What is the capital of France?"], 32)?;
//! assert_eq!((vectors.len(), vectors.dim()), (2, 384));
//! # Ok::<(), embeddings::Error>(())
//! ```
//!
//! Rows have unit length, so a dot product is the cosine similarity.

mod error;

pub mod config;
mod cpu;
pub mod encoder;
pub mod model;
pub mod weights;

/// The burn version this crate is built against (for `Device`).
pub use burn;
pub use config::BertConfig;
pub use encoder::{DEFAULT_MAX_SEQ_LENGTH, Embeddings, SentenceEncoder};
pub use error::{Error, Result};
pub use model::{Bert, MaskPolarity};

/// The assets folder: `$TUNELOOP_ASSETS`, else `<workspace root>/assets`.
pub fn assets_dir() -> std::path::PathBuf {
    match std::env::var_os("TUNELOOP_ASSETS") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets"),
    }
}

/// Where all-MiniLM-L6-v2 lives inside [`assets_dir`].
pub fn default_model_dir() -> std::path::PathBuf {
    assets_dir().join("all-minilm-l6-v2")
}
