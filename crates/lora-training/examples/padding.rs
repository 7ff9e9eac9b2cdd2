//! How much padding each batching choice computes on a mixed-length instruction set built from
//! the assets (GSM8K question → worked answer, HumanEval prompt → solution, the task pool's
//! multiple-choice items → answer), tokenised through SmolLM2's chat template.
//!
//! `cargo run --release -p lora-training --example padding`

use llama::Tokenizer;
use lora_training::batches::{epoch_batches, padding_fraction};
use lora_training::data::multiple_choice_conversation;
use lora_training::{DataConfig, tokenize_data};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let assets = assets::AssetPaths::locate();
    let tokenizer = Tokenizer::from_hf_dir(assets.smollm2_dir())?;
    let template = tokenizer.chat_template()?.ok_or("no chat template")?;
    let chat = |user: &str, assistant: &str| json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]});
    let mut examples: Vec<Value> = Vec::new();
    let gsm8k: Vec<Value> = records::jsonl::read_jsonl(assets.gsm8k_test())?;
    examples.extend(gsm8k.iter().map(|r| {
        chat(
            r["question"].as_str().unwrap(),
            r["answer"].as_str().unwrap(),
        )
    }));
    let humaneval: Vec<Value> = records::jsonl::read_jsonl(assets.humaneval())?;
    examples.extend(humaneval.iter().map(|r| {
        chat(
            r["prompt"].as_str().unwrap(),
            r["canonical_solution"].as_str().unwrap(),
        )
    }));
    for entry in std::fs::read_dir(assets.pool())? {
        let records: Vec<Value> = records::jsonl::read_jsonl(entry?.path())?;
        examples.extend(
            records
                .iter()
                .filter_map(multiple_choice_conversation)
                .take(600)
                .map(|m| chat(&m[0].content, &m[1].content)),
        );
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mixed.jsonl");
    records::jsonl::write_jsonl_atomic(&path, &examples)?;
    let config = DataConfig {
        train: path,
        eval_examples: 0,
        max_seq_len: 2048,
        ..Default::default()
    };
    let data = tokenize_data(&config, &tokenizer, &template, &dir.path().join("cache"))?;
    let lengths = data.train.lengths();
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    println!(
        "{} examples, {} tokens; length min {} median {} p95 {} max {}",
        lengths.len(),
        lengths.iter().sum::<usize>(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 95 / 100],
        sorted[sorted.len() - 1]
    );
    println!(
        "{:>11} {:>13} {:>18}",
        "micro-batch", "group (mb)", "padding computed"
    );
    for micro_batch in [4, 8, 16] {
        for group in [1, 8, 64] {
            let batches = epoch_batches(&lengths, micro_batch, group, 42, 0);
            println!(
                "{micro_batch:>11} {group:>13} {:>17.1}%",
                100.0 * padding_fraction(&batches, &lengths, None)
            );
        }
    }
    Ok(())
}
