//! Batched autoregressive generation with left padding and a KV cache; greedy or seeded
//! nucleus sampling on the host from the last position's logits.

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kv_cache::KvCache;
use crate::model::Llama;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 selects greedy decoding (argmax, lowest id on ties).
    pub temperature: f32,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// `top_p` (1.0 = the whole vocabulary).
    pub top_p: f32,
    /// Each prompt draws from its own stream of this seed (stream = prompt index), so a
    /// sequence's samples do not depend on which other prompts share its batch.
    pub seed: u64,
    /// Generation of a sequence ends when it produces one of these (not included in the output).
    pub stop_token_ids: Vec<u32>,
    /// Generation of a sequence ends when its output ends with one of these token sequences
    /// (removed from the output).
    pub stop_sequences: Vec<Vec<u32>>,
    /// Prompts processed together (sorted by length to limit padding).
    pub batch_size: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_token_ids: Vec::new(),
            stop_sequences: Vec::new(),
            batch_size: 16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop sequence was produced.
    Stop,
    /// `max_new_tokens` were produced.
    Length,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// New tokens, without the stop token or stop sequence.
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
}

/// Generates a continuation for every prompt; results are in prompt order.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
) -> Result<Vec<Generation>> {
    generate_streaming(model, prompts, config, device, None, &mut |_| None)
}

/// One decode step of one sequence, as [`generate_streaming`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStep<'a> {
    /// Index of the prompt in the `prompts` slice.
    pub prompt_index: usize,
    /// The sequence's output so far (what [`Generation::tokens`] would be if it ended now).
    pub tokens: &'a [u32],
    /// Set when this step ended the sequence (stop token, stop sequence or `max_new_tokens`).
    pub finished: Option<FinishReason>,
}

/// [`generate`] with per-step reporting, for streaming servers: `on_step` is called once per
/// decode step for every sequence still running, right after its new token was taken (or
/// rejected as a stop token). Returning `Some(reason)` ends that sequence now with `reason`
/// (e.g. a text-level stop string matched, the sequence reached its own length limit, or its
/// client went away); the return value is ignored for a sequence that already finished.
///
/// `seeds` replaces the sampling streams: with `Some(seeds)`, prompt `i` draws from
/// `seeds[i]` (stream 0), exactly as it would alone under [`generate`] with `config.seed =
/// seeds[i]`, so a request's samples depend neither on its batch companions nor on its
/// place in the batch. With `None` prompt `i` draws from `config.seed`, stream `i`.
pub fn generate_streaming(
    model: &Llama,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    seeds: Option<&[u64]>,
    on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
) -> Result<Vec<Generation>> {
    if let Some(seeds) = seeds
        && seeds.len() != prompts.len()
    {
        return Err(Error::InvalidArgument(format!(
            "{} seeds for {} prompts",
            seeds.len(),
            prompts.len()
        )));
    }
    if config.batch_size == 0 {
        return Err(Error::InvalidArgument("batch_size must be > 0".into()));
    }
    if !(config.top_p > 0.0 && config.top_p <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "top_p must be in (0, 1], got {}",
            config.top_p
        )));
    }
    if config.temperature.is_nan() || config.temperature < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "temperature must be >= 0, got {}",
            config.temperature
        )));
    }
    let vocab = model.config().vocab_size;
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument(format!("prompt {index} is empty")));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "prompt {index} has token id {bad} outside the vocabulary of {vocab}"
            )));
        }
    }
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    for chunk in order.chunks(config.batch_size) {
        let generations = generate_batch(model, prompts, chunk, config, device, seeds, on_step);
        for (&index, generation) in chunk.iter().zip(generations) {
            results[index] = Some(generation);
        }
    }
    Ok(results
        .into_iter()
        .map(|g| g.expect("every prompt generated"))
        .collect())
}

struct Sequence {
    prompt_index: usize,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
}

fn generate_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    indices: &[usize],
    config: &GenerationConfig,
    device: &Device,
    seeds: Option<&[u64]>,
    on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
) -> Vec<Generation> {
    let mut sequences: Vec<Sequence> = indices
        .iter()
        .map(|&prompt_index| {
            let rng = match seeds {
                Some(seeds) => ChaCha8Rng::seed_from_u64(seeds[prompt_index]),
                None => {
                    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
                    rng.set_stream(prompt_index as u64);
                    rng
                }
            };
            Sequence {
                prompt_index,
                rng,
                tokens: Vec::new(),
                finish: (config.max_new_tokens == 0).then_some(FinishReason::Length),
            }
        })
        .collect();
    if config.max_new_tokens > 0 {
        let batch: Vec<&[u32]> = indices.iter().map(|&i| prompts[i].as_slice()).collect();
        let (tokens, mask) = left_padded(&batch, device);
        let mut cache = KvCache::new();
        let hidden = model.forward_hidden(tokens, mask, Some(&mut cache));
        // Rows of `cache` (and of `logits`) ↔ positions in `sequences`.
        let mut active: Vec<usize> = (0..sequences.len()).collect();
        let mut logits = last_logits(model, hidden);
        loop {
            let vocab = logits.len() / active.len();
            for (row, &seq) in active.iter().enumerate() {
                let row_logits = &logits[row * vocab..(row + 1) * vocab];
                let sequence = &mut sequences[seq];
                let token = sample(
                    row_logits,
                    config.temperature,
                    config.top_p,
                    &mut sequence.rng,
                );
                push_token(sequence, token, config);
                let verdict = on_step(TokenStep {
                    prompt_index: sequence.prompt_index,
                    tokens: &sequence.tokens,
                    finished: sequence.finish,
                });
                if sequence.finish.is_none() {
                    sequence.finish = verdict;
                }
            }
            let still_active: Vec<usize> = (0..active.len())
                .filter(|&row| sequences[active[row]].finish.is_none())
                .collect();
            if still_active.is_empty() {
                break;
            }
            if still_active.len() != active.len() {
                cache.retain_rows(&still_active);
                active = still_active.iter().map(|&row| active[row]).collect();
            }
            let next: Vec<i64> = active
                .iter()
                .map(|&seq| *sequences[seq].tokens.last().expect("one token per step") as i64)
                .collect();
            let rows = next.len();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(next, [rows, 1]), device);
            let mask = Tensor::<2, Int>::ones([rows, 1], device);
            let hidden = model.forward_hidden(tokens, mask, Some(&mut cache));
            logits = last_logits(model, hidden);
        }
    }
    sequences
        .into_iter()
        .map(|s| {
            debug_assert!(s.prompt_index < prompts.len());
            Generation {
                tokens: s.tokens,
                finish_reason: s.finish.expect("finished"),
            }
        })
        .collect()
}

/// Appends `token` and decides whether the sequence is done.
fn push_token(sequence: &mut Sequence, token: u32, config: &GenerationConfig) {
    if config.stop_token_ids.contains(&token) {
        sequence.finish = Some(FinishReason::Stop);
        return;
    }
    sequence.tokens.push(token);
    for stop in &config.stop_sequences {
        if !stop.is_empty() && sequence.tokens.ends_with(stop) {
            let keep = sequence.tokens.len() - stop.len();
            sequence.tokens.truncate(keep);
            sequence.finish = Some(FinishReason::Stop);
            return;
        }
    }
    if sequence.tokens.len() >= config.max_new_tokens {
        sequence.finish = Some(FinishReason::Length);
    }
}

/// Left-pads token sequences into `[B, T]` tokens and mask (padding id 0, masked out).
pub fn left_padded(batch: &[&[u32]], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let width = batch.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut tokens = Vec::with_capacity(batch.len() * width);
    let mut mask = Vec::with_capacity(batch.len() * width);
    for sequence in batch {
        let pad = width - sequence.len();
        tokens.extend(std::iter::repeat_n(0i64, pad));
        mask.extend(std::iter::repeat_n(0i64, pad));
        tokens.extend(sequence.iter().map(|&t| t as i64));
        mask.extend(std::iter::repeat_n(1i64, sequence.len()));
    }
    let shape = [batch.len(), width];
    (
        Tensor::from_data(TensorData::new(tokens, shape), device),
        Tensor::from_data(TensorData::new(mask, shape), device),
    )
}

/// f32 logits of the last position of every row, row-major `[B * vocab]`.
fn last_logits(model: &Llama, hidden: Tensor<3>) -> Vec<f32> {
    let [batch, seq, width] = hidden.dims();
    let last = hidden.narrow(1, seq - 1, 1);
    let logits = model.logits(last).cast(FloatDType::F32);
    debug_assert_eq!(width, model.config().hidden_size);
    let data = logits.into_data();
    debug_assert_eq!(data.dtype(), DType::F32);
    let values = data.try_into_vec::<f32>().expect("f32 logits");
    debug_assert_eq!(values.len() % batch, 0);
    values
}

/// Picks the next token: argmax when `temperature` is 0, else a draw from
/// softmax(logits / temperature) restricted to the top-p nucleus.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut ChaCha8Rng) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let inv_t = 1.0 / temperature as f64;
    let max = logits
        .iter()
        .filter(|x| !x.is_nan())
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let p = if x.is_nan() {
                0.0
            } else {
                ((x as f64 - max) * inv_t).exp()
            };
            (i as u32, p)
        })
        .collect();
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    if top_p < 1.0 {
        // Most probable first; ties by id so the nucleus is deterministic.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let threshold = top_p as f64 * total;
        let mut cumulative = 0.0;
        let mut keep = 0;
        for (_, p) in &probs {
            cumulative += p;
            keep += 1;
            if cumulative >= threshold {
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    let kept_total: f64 = probs.iter().map(|(_, p)| p).sum();
    let mut target = rng.random::<f64>() * kept_total;
    for &(id, p) in &probs {
        if target < p {
            return id;
        }
        target -= p;
    }
    probs
        .iter()
        .rev()
        .find(|(_, p)| *p > 0.0)
        .map_or(0, |(id, _)| *id)
}

/// Index of the largest value; the lowest index wins ties (as `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::tiny_model;

    fn prompts() -> Vec<Vec<u32>> {
        vec![
            vec![10, 20, 30],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            vec![99],
            vec![42, 42, 7, 9, 200],
        ]
    }

    #[test]
    fn greedy_batched_equals_one_by_one() {
        let (model, device) = tiny_model(41);
        let config = GenerationConfig {
            max_new_tokens: 12,
            batch_size: 4,
            ..Default::default()
        };
        let batched = generate(&model, &prompts(), &config, &device).unwrap();
        for (prompt, expected) in prompts().iter().zip(&batched) {
            let alone = generate(&model, std::slice::from_ref(prompt), &config, &device).unwrap();
            assert_eq!(&alone[0], expected);
            assert_eq!(expected.tokens.len(), 12);
            assert_eq!(expected.finish_reason, FinishReason::Length);
        }
        // The greedy continuation is the argmax of a full forward at each step.
        let prompt = &prompts()[1];
        let mut sequence = prompt.clone();
        for _ in 0..3 {
            let (tokens, mask) = left_padded(&[&sequence], &device);
            let logits = crate::model::tests::to_vec(model.forward(tokens, mask, None));
            let vocab = model.config().vocab_size;
            sequence.push(argmax(&logits[logits.len() - vocab..]));
        }
        assert_eq!(&sequence[prompt.len()..], &batched[1].tokens[..3]);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let (model, device) = tiny_model(42);
        let config = GenerationConfig {
            max_new_tokens: 16,
            temperature: 1.0,
            top_p: 0.95,
            seed: 7,
            batch_size: 4,
            ..Default::default()
        };
        let first = generate(&model, &prompts(), &config, &device).unwrap();
        let again = generate(&model, &prompts(), &config, &device).unwrap();
        assert_eq!(first, again);
        let other = generate(
            &model,
            &prompts(),
            &GenerationConfig {
                seed: 8,
                ..config.clone()
            },
            &device,
        )
        .unwrap();
        assert_ne!(first, other);
        // A prompt's samples do not depend on its batch companions.
        let smaller = generate(
            &model,
            &prompts(),
            &GenerationConfig {
                batch_size: 1,
                ..config
            },
            &device,
        )
        .unwrap();
        assert_eq!(first, smaller);
    }

    #[test]
    fn stop_tokens_and_sequences_end_each_sequence() {
        let (model, device) = tiny_model(43);
        let free = GenerationConfig {
            max_new_tokens: 10,
            ..Default::default()
        };
        let reference = generate(&model, &prompts(), &free, &device).unwrap();
        // Stop at the third token of prompt 0's greedy output.
        let stop = reference[0].tokens[2];
        let config = GenerationConfig {
            stop_token_ids: vec![stop],
            ..free.clone()
        };
        let stopped = generate(&model, &prompts(), &config, &device).unwrap();
        let cut = reference[0].tokens.iter().position(|&t| t == stop).unwrap();
        assert_eq!(stopped[0].tokens, reference[0].tokens[..cut]);
        assert_eq!(stopped[0].finish_reason, FinishReason::Stop);
        for (s, r) in stopped.iter().zip(&reference) {
            match r.tokens.iter().position(|&t| t == stop) {
                Some(cut) => assert_eq!(s.tokens, r.tokens[..cut]),
                None => assert_eq!(s, r),
            }
        }
        let sequence = reference[1].tokens[3..5].to_vec();
        let config = GenerationConfig {
            stop_sequences: vec![sequence.clone()],
            ..free
        };
        let stopped = generate(&model, &prompts(), &config, &device).unwrap();
        assert_eq!(stopped[1].finish_reason, FinishReason::Stop);
        assert!(stopped[1].tokens.len() <= 3);
        assert!(!stopped[1].tokens.ends_with(&sequence));
    }

    #[test]
    fn streaming_reports_every_step_and_can_end_a_sequence() {
        let (model, device) = tiny_model(45);
        let config = GenerationConfig {
            max_new_tokens: 8,
            batch_size: 4,
            ..Default::default()
        };
        let reference = generate(&model, &prompts(), &config, &device).unwrap();
        let mut steps: Vec<Vec<(Vec<u32>, Option<FinishReason>)>> = vec![Vec::new(); 4];
        let streamed = generate_streaming(&model, &prompts(), &config, &device, None, &mut |s| {
            steps[s.prompt_index].push((s.tokens.to_vec(), s.finished));
            None
        })
        .unwrap();
        assert_eq!(streamed, reference);
        for (calls, generation) in steps.iter().zip(&reference) {
            // One call per new token, each showing the output so far; the last one says why it ended.
            assert_eq!(calls.len(), 8);
            for (n, (tokens, finished)) in calls.iter().enumerate() {
                assert_eq!(tokens[..], generation.tokens[..n + 1]);
                let expected = (n == 7).then_some(FinishReason::Length);
                assert_eq!(*finished, expected);
            }
        }
        // Ending prompt 1 after its third token leaves the others untouched.
        let cut = generate_streaming(&model, &prompts(), &config, &device, None, &mut |s| {
            (s.prompt_index == 1 && s.tokens.len() == 3).then_some(FinishReason::Stop)
        })
        .unwrap();
        assert_eq!(cut[1].tokens, reference[1].tokens[..3]);
        assert_eq!(cut[1].finish_reason, FinishReason::Stop);
        for i in [0, 2, 3] {
            assert_eq!(cut[i], reference[i]);
        }
    }

    #[test]
    fn per_prompt_seeds_sample_as_the_prompt_alone() {
        let (model, device) = tiny_model(46);
        let config = GenerationConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            batch_size: 4,
            ..Default::default()
        };
        let seeds = [11, 12, 13, 11];
        let batched = generate_streaming(
            &model,
            &prompts(),
            &config,
            &device,
            Some(&seeds),
            &mut |_| None,
        )
        .unwrap();
        for ((prompt, &seed), got) in prompts().iter().zip(&seeds).zip(&batched) {
            let alone = GenerationConfig {
                seed,
                ..config.clone()
            };
            let expected = generate(&model, std::slice::from_ref(prompt), &alone, &device).unwrap();
            assert_eq!(&expected[0], got);
        }
        assert!(matches!(
            generate_streaming(
                &model,
                &prompts(),
                &config,
                &device,
                Some(&seeds[..2]),
                &mut |_| None
            ),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn nucleus_keeps_only_the_top_tokens() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // p ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps ids 0 and 1 only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&logits, 1.0, 0.7, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
        assert!(seen[1] > 300 && seen[0] > 1200, "{seen:?}");
        assert_eq!(sample(&logits, 0.0, 1.0, &mut rng), 0);
        assert_eq!(argmax(&[1.0, 5.0, 5.0]), 1);
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let (model, device) = tiny_model(44);
        let config = GenerationConfig::default();
        assert!(matches!(
            generate(&model, &[vec![]], &config, &device),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            generate(&model, &[vec![300]], &config, &device),
            Err(Error::InvalidArgument(_))
        ));
    }
}
