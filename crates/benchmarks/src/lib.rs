//! MMLU, GSM8K and HumanEval for tuneloop.
pub mod error;
pub mod sandbox;
pub use error::{Error, Result};
