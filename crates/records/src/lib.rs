//! Typed records that cross tuneloop's phase boundaries, read and written as JSONL.
//!
//! ```
//! use records::eval::{ChatMessage, Prompt, Role};
//! let prompt = Prompt::Chat(vec![ChatMessage::new(Role::User, "What is 2+2?")]);
//! let line = serde_json::to_string(&prompt).unwrap();
//! assert_eq!(serde_json::from_str::<Prompt>(&line).unwrap(), prompt);
//! ```

pub mod eval;
