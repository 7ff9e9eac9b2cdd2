//! Chat with a Llama-family model: an HF directory or a GGUF file.
//!
//! `chat --model assets/smollm2-135m-instruct "What is the capital of France?"` answers once;
//! without a question it reads one question per line from standard input, keeping the history.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use llama::generate::GenerationConfig;
use llama::{ChatMessage, Pretrained};

#[derive(Debug, Parser)]
#[command(about = "Chat with a Llama-family model directory or GGUF file")]
struct Args {
    /// HF model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda or cuda:N (cuda needs a build with the `tch` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 or bf16 (default: f32 on cpu, bf16 on cuda).
    #[arg(long)]
    precision: Option<llama::device::Precision>,
    /// System message prepended to the conversation.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The question; omit it to chat line by line on standard input.
    question: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = llama::device::select_device(&args.device, args.precision)?;
    let started = Instant::now();
    let model = Pretrained::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    eprintln!(
        "loaded {} ({} layers, hidden {}) on {} in {:.1}s",
        args.model.display(),
        model.config().num_hidden_layers,
        model.config().hidden_size,
        args.device,
        started.elapsed().as_secs_f64()
    );
    let generation = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        batch_size: 1,
        ..GenerationConfig::default()
    };
    let mut history: Vec<ChatMessage> = args.system.iter().map(ChatMessage::system).collect();
    let ask = |question: &str, history: &mut Vec<ChatMessage>| -> Result<String> {
        history.push(ChatMessage::user(question));
        let started = Instant::now();
        let answer = model
            .chat(std::slice::from_ref(history), &generation)?
            .remove(0);
        eprintln!("({:.1}s)", started.elapsed().as_secs_f64());
        history.push(ChatMessage::assistant(answer.clone()));
        Ok(answer)
    };
    if !args.question.is_empty() {
        println!("{}", ask(&args.question.join(" "), &mut history)?.trim());
        return Ok(());
    }
    let stdin = io::stdin();
    eprint!("> ");
    io::stderr().flush()?;
    for line in stdin.lock().lines() {
        let line = line?;
        if !line.trim().is_empty() {
            println!("{}", ask(line.trim(), &mut history)?.trim());
        }
        eprint!("> ");
        io::stderr().flush()?;
    }
    Ok(())
}
