//! The token cache at production scale (issue #19): renders and tokenises a chat JSONL through
//! SmolLM2's tokenizer and chat template into a fresh cache directory, the way Phase 1A does,
//! and prints one JSON line (examples, tokens, trained tokens, seconds). The peer, HF `datasets`
//! `.map` with the fast tokenizer and the same template, is `tools/bench/hf_token_cache.py`;
//! `tools/bench/token_cache_compare.sh` runs both on one file and prints the table.
//!
//! `cargo run --release -p lora-training --example token_cache -- <chat.jsonl> <cache dir>`

use std::path::PathBuf;
use std::time::Instant;

use llama::Tokenizer;
use lora_training::{DataConfig, tokenize_data};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let usage = "usage: token_cache <chat.jsonl> <cache dir (made anew)>";
    let data = PathBuf::from(args.next().ok_or(usage)?);
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    if dir.exists() {
        return Err(format!("{}: exists; give a fresh cache directory", dir.display()).into());
    }
    let assets = assets::AssetPaths::locate();
    let started = Instant::now();
    let tokenizer = Tokenizer::from_hf_dir(assets.smollm2_dir())?;
    let template = tokenizer.chat_template()?.ok_or("no chat template")?;
    let config = DataConfig {
        train: data,
        eval_examples: 0,
        max_seq_len: 2048,
        ..Default::default()
    };
    let cache = tokenize_data(&config, &tokenizer, &template, &dir)?;
    let audit = &cache.meta.train_audit;
    println!(
        "{}",
        json!({
            "bench": "token_cache",
            "side": "tuneloop",
            "examples": audit.examples,
            "tokens": audit.tokens,
            "trained_tokens": audit.trained_tokens,
            "truncated": audit.truncated,
            "skipped_no_target": audit.skipped_no_target_after_truncation,
            "threads": rayon::current_num_threads(),
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
