//! Writes what `tools/reference/peft_check.py` checks with HF transformers + PEFT: a small
//! random Llama base (HF directory, SmolLM2's tokenizer), a LoRA adapter on all seven
//! projections with random non-zero factors saved in PEFT format, the merged model, and our
//! logits (base + adapter, and merged) on probe prompts.
//!
//! `cargo run -p lora-training --example peft_export -- OUT_DIR`

use std::path::PathBuf;

use llama::burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use llama::{
    ExportOptions, Llama, LlamaConfig, LoraAdapter, OwnedTensors, ProjectionKind, Tokenizer,
    host_tensor,
};
use lora_training::{LoraConfig, save_peft_adapter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: peft_export OUT_DIR")?,
    );
    let assets = assets::AssetPaths::locate();
    let tokenizer = Tokenizer::from_hf_dir(assets.smollm2_dir())?;
    let config = LlamaConfig {
        // The test shape with SmolLM2's vocabulary, so its real tokenizer applies.
        vocab_size: 49_152,
        tie_word_embeddings: true,
        ..LlamaConfig::tiny_for_tests()
    };
    let device = Device::flex();
    let mut model = Llama::random(&config, 21, &device)?;
    llama::write_hf_dir(
        out.join("base"),
        &config,
        &model.tensors(),
        &tokenizer,
        ExportOptions::default(),
    )?;
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..Default::default()
    };
    device.seed(5);
    for layer in 0..config.num_hidden_layers {
        for kind in ProjectionKind::ALL {
            let [input, output] = model.projection(layer, kind).dims();
            let a = Tensor::<2>::random([input, 4], Distribution::Normal(0.0, 0.2), &device);
            let b = Tensor::<2>::random([4, output], Distribution::Normal(0.0, 0.2), &device);
            model.projection_mut(layer, kind).lora =
                Some(LoraAdapter::new(a, b, lora.scale(), 0.0)?);
        }
    }
    save_peft_adapter(&model, &lora, Some("base"), &out.join("adapter"))?;
    let merged = model.clone().merge_adapters();
    llama::write_hf_dir(
        out.join("merged"),
        &config,
        &merged.tensors(),
        &tokenizer,
        ExportOptions::default(),
    )?;

    let probe = [1u32, 504, 2143, 7, 91, 30, 12_000, 48_000];
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new(probe.iter().map(|&t| t as i64).collect(), [1, probe.len()]),
        &device,
    );
    let mask = Tensor::<2, Int>::ones([1, probe.len()], &device);
    let mut logits = OwnedTensors::new("logits");
    logits.insert(
        "adapted",
        host_tensor(model.forward(tokens.clone(), mask.clone(), None)),
    );
    logits.insert(
        "merged",
        host_tensor(merged.forward(tokens.clone(), mask.clone(), None)),
    );
    logits.insert(
        "probe",
        llama::HostTensor::from_f32(vec![probe.len()], &probe.map(|t| t as f32)),
    );
    llama::write_safetensors_file(
        &out.join("ours.safetensors"),
        &logits,
        llama::HostDType::F32,
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
