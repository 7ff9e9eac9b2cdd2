//! Shared test fixtures: the real SmolLM2 tokenizer and model, and a small arithmetic task
//! drawn from the assets' task pool.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assets::AssetPaths;
use llama::burn::tensor::Device;
use llama::{ChatMessage, Llama, LlamaConfig, Tokenizer};
use lora_training::data::multiple_choice_conversation;
use serde_json::{Value, json};

pub fn assets() -> AssetPaths {
    AssetPaths::locate()
}

pub fn smollm2_dir() -> PathBuf {
    let paths = assets();
    paths
        .require(&paths.smollm2_dir().join("model.safetensors"))
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    paths.smollm2_dir()
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_hf_dir(smollm2_dir()).expect("SmolLM2 tokenizer")
}

/// A small random Llama that shares SmolLM2's vocabulary (fast enough for many steps).
pub fn tiny_model(device: &Device, seed: u64) -> Llama {
    let config = LlamaConfig {
        // The test shape with SmolLM2's vocabulary, so its real tokenizer applies.
        vocab_size: 49_152,
        tie_word_embeddings: true,
        ..LlamaConfig::tiny_for_tests()
    };
    Llama::random(&config, seed, device).expect("random model")
}

/// The arithmetic items of the task pool as `(question, answer)`.
pub fn arithmetic_items() -> Vec<(String, String)> {
    let path = assets()
        .pool()
        .join("allenai__basic_arithmetic__none__validation.jsonl");
    let path = assets()
        .require(&path)
        .expect("task pool missing: run `cargo xtask assets`");
    let records: Vec<Value> = records::jsonl::read_jsonl(&path).expect("pool file");
    records
        .iter()
        .map(|r| {
            let messages: Vec<ChatMessage> =
                multiple_choice_conversation(r).expect("multiple-choice item");
            (messages[0].content.clone(), messages[1].content.clone())
        })
        .collect()
}

/// Writes `items` as chat-messages JSONL.
pub fn write_messages_jsonl(path: &Path, items: &[(String, String)]) {
    let lines: Vec<Value> = items
        .iter()
        .map(|(q, a)| {
            json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        })
        .collect();
    records::jsonl::write_jsonl_atomic(path, &lines).expect("write jsonl");
}
