//! Prompt-processing and decode throughput of a model.
//!
//! ```text
//! cargo run --release -p llama --example llama_bench -- [--model DIR | --random tiny|smollm2|llama31-8b]
//!     [--batch 1] [--prompt 128] [--decode 32] [--device flex|cuda] [--bf16] [--burn]
//! ```
//! `--burn` runs burn's ops on the CPU instead of the host kernels (the path before them).
//! `--device cuda` needs the `tch` feature. Random weights use the named architecture's shape.

use std::time::Instant;

use llama::burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use llama::{KvCache, Llama, LlamaConfig, SafetensorsSource};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter().position(|a| a == flag).map(|i| {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone()
        })
    };
    let number = |flag: &str, default: usize| {
        value(flag).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag}: not a number: {v}"))
        })
    };
    let batch = number("--batch", 1);
    let prompt = number("--prompt", 128);
    let decode = number("--decode", 32);
    let mut device = match value("--device").as_deref() {
        None | Some("flex") => Device::flex(),
        #[cfg(feature = "tch")]
        Some("cuda") => Device::libtorch_cuda(0),
        Some(other) => panic!("unknown or disabled device `{other}`"),
    };
    if args.iter().any(|a| a == "--bf16") {
        device
            .configure(FloatDType::BF16)
            .expect("configure bf16 before any tensor");
    }

    let started = Instant::now();
    let mut model = match (value("--model"), value("--random")) {
        (Some(dir), _) => {
            let dir = std::path::PathBuf::from(dir);
            let config = LlamaConfig::from_file(&dir.join("config.json")).expect("config.json");
            let source = SafetensorsSource::open(&dir).expect("safetensors");
            Llama::from_source(&config, &source, &device).expect("load")
        }
        (None, name) => {
            let config = match name.as_deref().unwrap_or("tiny") {
                "tiny" => LlamaConfig::tiny_for_tests(),
                "llama31-8b" => LlamaConfig::llama31_8b(),
                "smollm2" => smollm2_135m(),
                other => panic!("unknown --random architecture `{other}`"),
            };
            Llama::random(&config, 0, &device).expect("random init")
        }
    };
    model.host_kernels = !args.iter().any(|a| a == "--burn");
    device.sync().expect("sync");
    println!("load: {:.2}s", started.elapsed().as_secs_f64());
    let vocab = model.config().vocab_size as i64;

    let ids: Vec<i64> = (0..batch * prompt)
        .map(|i| (i as i64 * 7919 + 13) % vocab)
        .collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, prompt]), &device);
    let mask = Tensor::<2, Int>::ones([batch, prompt], &device);

    // Warm-up on a short input (allocator, kernel selection).
    let _ = model.forward_hidden(
        tokens.clone().narrow(1, 0, prompt.min(8)),
        mask.clone().narrow(1, 0, prompt.min(8)),
        None,
    );
    device.sync().expect("sync");

    let mut cache = KvCache::new();
    let started = Instant::now();
    let hidden = model.forward_hidden(tokens, mask, Some(&mut cache));
    let seq = hidden.dims()[1];
    let logits = model.logits(hidden.narrow(1, seq - 1, 1));
    let _ = logits.argmax(2).into_data();
    let prefill = started.elapsed().as_secs_f64();
    println!(
        "prefill: batch {batch} x {prompt} tokens in {prefill:.3}s = {:.1} tokens/s",
        (batch * prompt) as f64 / prefill
    );

    let started = Instant::now();
    let mut next = Tensor::<2, Int>::zeros([batch, 1], &device);
    for _ in 0..decode {
        let hidden =
            model.forward_hidden(next, Tensor::ones([batch, 1], &device), Some(&mut cache));
        next = model.logits(hidden).argmax(2).reshape([batch, 1]);
        let _ = next.to_data();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "decode: batch {batch} x {decode} steps in {elapsed:.3}s = {:.1} new tokens/s ({:.1} ms/step)",
        (batch * decode) as f64 / elapsed,
        1000.0 * elapsed / decode.max(1) as f64
    );
}

fn smollm2_135m() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: Some(3),
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        ..LlamaConfig::tiny_for_tests()
    }
}
