//! SmolLM2-135M-Instruct against the independent numpy reference (tools/reference/llama_numpy.py):
//! every logit at every position of four prompts, the tokenizer's ids for them, and greedy
//! decoding through the chat template. The HF directory under test is the one the assets step
//! converted from the GGUF with this crate's own importer; the reference read the GGUF with
//! the `gguf` Python package.

use std::path::{Path, PathBuf};

use llama::burn::tensor::{Device, Int, Tensor, TensorData};
use llama::generate::{GenerationConfig, generate};
use llama::{ChatMessage, Pretrained};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden")
}

fn load(path: PathBuf) -> Pretrained {
    let paths = assets::AssetPaths::locate();
    let path = paths.require(&path).unwrap_or_else(|e| panic!("{e}"));
    Pretrained::load(&path, &Device::flex()).expect("SmolLM2 loads")
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(golden_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn logits_for(model: &Pretrained, ids: &[u32]) -> Vec<f32> {
    let device = model.model.device();
    let n = ids.len();
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
        &device,
    );
    let mask = Tensor::<2, Int>::ones([1, n], &device);
    let logits = model.model.forward(tokens, mask, None);
    logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn check_every_logit(model: &Pretrained) {
    let meta = read_json("smollm2_logits.json");
    let bytes = std::fs::read(golden_dir().join("smollm2_logits.safetensors")).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for prompt in meta["prompts"].as_array().unwrap() {
        let text = prompt["prompt"].as_str().unwrap();
        let expected_ids: Vec<u32> = serde_json::from_value(prompt["token_ids"].clone()).unwrap();
        assert_eq!(
            model.tokenizer.encode(text, false).unwrap(),
            expected_ids,
            "ids of {text:?}"
        );

        let view = golden.tensor(prompt["name"].as_str().unwrap()).unwrap();
        let expected: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let actual = logits_for(model, &expected_ids);
        assert_eq!(actual.len(), expected.len(), "{text:?}");
        let (worst, at) = actual
            .iter()
            .zip(&expected)
            .map(|(a, e)| (a - e).abs())
            .enumerate()
            .fold(
                (0f32, 0),
                |(w, at), (i, d)| if d > w { (d, i) } else { (w, at) },
            );
        assert!(
            worst < 1e-3,
            "{text:?}: max |logit - reference| = {worst} at flat index {at} (position {}, token {})",
            at / model.config().vocab_size,
            at % model.config().vocab_size
        );
    }
}

#[test]
fn every_logit_matches_the_numpy_reference_from_the_hf_directory() {
    let model = load(assets::AssetPaths::locate().smollm2_dir());
    check_every_logit(&model);
}

#[test]
fn every_logit_matches_the_numpy_reference_straight_from_the_gguf() {
    let model = load(assets::AssetPaths::locate().smollm2_gguf());
    check_every_logit(&model);
}

#[test]
fn greedy_decoding_matches_the_reference_and_names_paris() {
    let model = load(assets::AssetPaths::locate().smollm2_dir());
    let golden = read_json("smollm2_greedy.json");
    for case in golden["cases"].as_array().unwrap() {
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_token_ids"].clone()).unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["new_token_ids"].clone()).unwrap();
        let config = GenerationConfig {
            max_new_tokens: expected.len(),
            ..GenerationConfig::default()
        };
        let out = generate(&model.model, &[prompt], &config, &model.model.device()).unwrap();
        assert_eq!(out[0].tokens, expected, "{}", case["label"]);
    }

    // Through the chat template, stopping at <|im_end|>, as the chat binary does.
    let question = vec![ChatMessage::user("What is the capital of France?")];
    let config = GenerationConfig {
        max_new_tokens: 24,
        ..GenerationConfig::default()
    };
    let answer = model.chat(&[question], &config).unwrap().remove(0);
    assert_eq!(answer.trim(), "The capital of France is Paris.");
}
