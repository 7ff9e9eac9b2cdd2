//! The local model behind the harness's trait, on the real SmolLM2: chat prompts go through the
//! chat template, stop strings end generation, and requests with different settings in one call
//! come back in request order.

use benchmarks::{ChatMessage, GenerationRequest, LanguageModel, LocalModel, Prompt, Role};
use llama::Pretrained;
use llama::burn::tensor::Device;

fn model() -> LocalModel {
    let paths = assets::AssetPaths::locate();
    let dir = paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e}"));
    LocalModel::new(
        "smollm2",
        Pretrained::load(&dir, &Device::flex()).unwrap(),
        4,
    )
}

fn request(prompt: Prompt, stop: &[&str]) -> GenerationRequest {
    GenerationRequest {
        prompt,
        max_new_tokens: 16,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        temperature: 0.0,
        seed: 0,
    }
}

#[test]
fn chat_and_text_prompts_with_stops_come_back_in_order() {
    let model = model();
    let question = Prompt::Chat(vec![ChatMessage::new(
        Role::User,
        "What is the capital of France?",
    )]);
    let requests = vec![
        request(question.clone(), &[]),
        request(Prompt::Text("The capital of France is".into()), &["."]),
        request(question, &[" France"]),
    ];
    let out = model.generate(&requests).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].trim(), "The capital of France is Paris.");
    assert!(
        out[1].contains("Paris") && !out[1].contains('.'),
        "{:?}",
        out[1]
    );
    assert_eq!(out[2].trim(), "The capital of", "stops before ' France'");
}
