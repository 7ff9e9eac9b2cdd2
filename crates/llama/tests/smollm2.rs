//! SmolLM2-135M-Instruct with real weights from `assets/smollm2-135m-instruct/` (HF layout,
//! made by `cargo xtask assets`). Token ids come from the model's own tokenizer (GPT-2
//! byte-level BPE), written out here so that this test depends on the model alone.

use std::path::PathBuf;

use llama::burn::tensor::Device;
use llama::generate::{FinishReason, GenerationConfig, generate};
use llama::loglikelihood::{LoglikelihoodRequest, loglikelihood};
use llama::{Llama, LlamaConfig, SafetensorsSource};

fn model_dir() -> PathBuf {
    let paths = assets::AssetPaths::locate();
    paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn load() -> (Llama, Device) {
    let dir = model_dir();
    let config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let source = SafetensorsSource::open(&dir).unwrap();
    let device = Device::flex();
    let model = Llama::from_source(&config, &source, &device).unwrap();
    (model, device)
}

/// `<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n`
const CHAT_PROMPT: [u32; 16] = [
    1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];
/// "The capital of France is Paris." (`<|im_end|>` = 2 follows).
const CHAT_ANSWER: [u32; 7] = [504, 3575, 282, 4649, 314, 7042, 30];
/// "The capital of France is"
const FRANCE: [u32; 5] = [504, 3575, 282, 4649, 314];
const PARIS: u32 = 7042;
const LONDON: u32 = 4528;
const BERLIN: u32 = 11452;
/// "Once upon a time"
const ONCE: [u32; 4] = [6403, 1980, 253, 655];

#[test]
fn smollm2_answers_paris_alone_and_in_a_padded_batch() {
    let (model, device) = load();
    let config = GenerationConfig {
        max_new_tokens: 12,
        stop_token_ids: vec![2],
        ..Default::default()
    };
    let prompts = vec![CHAT_PROMPT.to_vec(), ONCE.to_vec()];
    let batched = generate(&model, &prompts, &config, &device).unwrap();
    assert_eq!(batched[0].tokens, CHAT_ANSWER);
    assert_eq!(batched[0].finish_reason, FinishReason::Stop);
    let alone = generate(&model, &prompts[1..], &config, &device).unwrap();
    assert_eq!(alone[0], batched[1]);
}

#[test]
fn smollm2_prefers_paris_in_loglikelihood() {
    let (model, device) = load();
    let request = |token| LoglikelihoodRequest {
        context: FRANCE.to_vec(),
        continuation: vec![token],
    };
    let results = loglikelihood(
        &model,
        &[request(PARIS), request(LONDON), request(BERLIN)],
        3,
        &device,
    )
    .unwrap();
    assert!(results[0].is_greedy, "{results:?}");
    assert!(results[0].logprob > results[1].logprob && results[0].logprob > results[2].logprob);
    assert!(!results[1].is_greedy && !results[2].is_greedy);
}

#[test]
fn smollm2_host_kernels_match_the_burn_path() {
    use llama::KvCache;
    use llama::burn::tensor::{Int, Tensor};
    use llama::generate::left_padded;

    let (mut model, device) = load();
    let prompts = [CHAT_PROMPT.to_vec(), FRANCE.to_vec()];
    let batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let (tokens, mask) = left_padded(&batch, &device);
    let run = |model: &Llama| {
        // A padded prefill and two cached decode steps; logits of every position.
        let mut cache = KvCache::new();
        let mut logits = vec![model.forward(tokens.clone(), mask.clone(), Some(&mut cache))];
        for token in [PARIS, LONDON] {
            let next = Tensor::<2, Int>::from_data([[token as i64], [token as i64]], &device);
            let one = Tensor::<2, Int>::ones([2, 1], &device);
            logits.push(model.forward(next, one, Some(&mut cache)));
        }
        logits
            .into_iter()
            .map(|l| l.into_data().try_into_vec::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    model.host_kernels = false;
    let burn = run(&model);
    model.host_kernels = true;
    let host = run(&model);
    let vocab = model.config().vocab_size;
    let width = CHAT_PROMPT.len();
    for (step, (b, h)) in burn.iter().zip(&host).enumerate() {
        for (position, (b, h)) in b.chunks(vocab).zip(h.chunks(vocab)).enumerate() {
            // Row 1's left padding (positions 0..11 of the prefill) is not a real position.
            if step == 0 && position >= width && position < 2 * width - FRANCE.len() {
                continue;
            }
            let diff = b
                .iter()
                .zip(h)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                diff < 2e-3,
                "step {step} position {position}: max diff {diff}"
            );
        }
    }
}
