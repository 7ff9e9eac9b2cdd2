//! Batched autoregressive generation with left padding and a KV cache; greedy or seeded
//! nucleus sampling on the host from the last position's logits.

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fixed_decode::FixedDecoder;
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

/// Restricts each running sequence's next token before it is chosen: called with the prompt's
/// index and that sequence's next-token logits (f32, the model's whole vocabulary). An entry
/// set to -inf is never chosen, greedy or sampled (constrained decoding, e.g. a JSON schema).
pub type LogitsMask<'a> = dyn FnMut(usize, &mut [f32]) + 'a;

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
    generate_streaming_with(
        model,
        &DecodeGraphs::new(),
        prompts,
        config,
        device,
        seeds,
        None,
        on_step,
    )
}

/// [`generate`] for a caller that keeps `graphs` beside `model` across calls (a server, a
/// benchmark harness): greedy batches on a LibTorch GPU replay the decode step captured by an
/// earlier call of the same batch size and cache length instead of capturing it again.
pub fn generate_with(
    model: &Llama,
    graphs: &DecodeGraphs,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
) -> Result<Vec<Generation>> {
    generate_streaming_with(
        model,
        graphs,
        prompts,
        config,
        device,
        None,
        None,
        &mut |_| None,
    )
}

/// [`generate_streaming`] with [`generate_with`]'s kept graphs and an optional `logits_mask` on every
/// step's logits. A masked batch is decoded from host logits (no device argmax, no captured
/// graph), since the mask needs each row's logits before the token is chosen.
#[allow(clippy::too_many_arguments)]
pub fn generate_streaming_with(
    model: &Llama,
    graphs: &DecodeGraphs,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    seeds: Option<&[u64]>,
    mut logits_mask: Option<&mut LogitsMask<'_>>,
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
        let generations = generate_batch(
            model,
            graphs,
            prompts,
            chunk,
            config,
            device,
            seeds,
            logits_mask.as_deref_mut(),
            on_step,
        );
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

/// How greedy batches were decoded on LibTorch CUDA devices since the process started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodeStats {
    /// Batches decoded by replaying a captured CUDA graph of one step.
    pub graph_batches: usize,
    /// Steps captured as a graph (a batch that restarts a kept decoder captures none).
    pub graph_captures: usize,
    /// Steps run as graph replays.
    pub graph_replays: usize,
    /// Batches where capture or replay failed and eager decoding took over.
    pub graph_failures: usize,
    /// The last failure's message.
    pub last_failure: Option<String>,
    /// Wall time of eager warm-up steps (the first graph batch on a device runs one).
    pub warmup_seconds: f64,
    /// Wall time of captures (one host pass over the step's ops, no kernels run).
    pub capture_seconds: f64,
    /// Wall time of replays, each followed by reading the chosen ids back to the host.
    pub replay_seconds: f64,
}

static DECODE_STATS: std::sync::Mutex<DecodeStats> = std::sync::Mutex::new(DecodeStats {
    graph_batches: 0,
    graph_captures: 0,
    graph_replays: 0,
    graph_failures: 0,
    last_failure: None,
    warmup_seconds: 0.0,
    capture_seconds: 0.0,
    replay_seconds: 0.0,
});

/// (GPU, batch size) pairs whose side stream has run an eager step (kernels for those shapes
/// loaded, cuBLAS workspace made), so that later batches of that size capture directly.
#[cfg(feature = "tch")]
static WARM_GPUS: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// See [`DecodeStats`].
pub fn decode_stats() -> DecodeStats {
    DECODE_STATS.lock().expect("decode stats lock").clone()
}

/// Captured CUDA graphs of greedy decode steps, kept across `generate` calls for one model
/// (see [`generate_with`]): a later batch of the same size whose prompt plus new tokens fit
/// the same cache length (rounded up to [`GRAPH_CACHE_STEP`] positions) restarts a kept
/// decoder in place and replays its graph, with no eager warm-up and no capture.
///
/// A graph replays the weights it was captured with: keep one `DecodeGraphs` per model, and
/// a new one after changing its weights. It holds each kept decoder's key/value buffers on
/// the GPU; at most [`KEPT_GRAPHS`] are kept, the least recently used dropped first. On other
/// devices it stays empty.
#[derive(Default)]
pub struct DecodeGraphs {
    #[cfg(feature = "tch")]
    kept: std::sync::Mutex<Vec<KeptGraph>>,
}

/// Decode graphs [`DecodeGraphs`] keeps at most.
pub const KEPT_GRAPHS: usize = 2;

/// Fixed decoding sizes its cache in multiples of this many positions, so that calls whose
/// prompts differ a little in length share a graph (masked positions add exact zeros).
pub const GRAPH_CACHE_STEP: usize = 64;

impl DecodeGraphs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decoders with a captured graph kept now.
    pub fn len(&self) -> usize {
        #[cfg(feature = "tch")]
        return self.kept.lock().map(|kept| kept.len()).unwrap_or(0);
        #[cfg(not(feature = "tch"))]
        0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept decoder for this shape, taken out while a batch uses it.
    #[cfg(feature = "tch")]
    fn take(&self, gpu: usize, batch: usize, capacity: usize) -> Option<KeptGraph> {
        let mut kept = self.kept.lock().ok()?;
        let index = kept
            .iter()
            .position(|k| (k.gpu, k.batch, k.capacity) == (gpu, batch, capacity))?;
        Some(kept.remove(index))
    }

    /// Keeps a decoder and its graph as the most recently used.
    #[cfg(feature = "tch")]
    fn put(&self, graph: KeptGraph) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.push(graph);
            while kept.len() > KEPT_GRAPHS {
                kept.remove(0);
            }
        }
    }
}

impl std::fmt::Debug for DecodeGraphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeGraphs")
            .field("kept", &self.len())
            .finish()
    }
}

/// A decoder whose step was captured, with its graph.
#[cfg(feature = "tch")]
struct KeptGraph {
    gpu: usize,
    batch: usize,
    capacity: usize,
    decoder: FixedDecoder,
    graph: crate::cuda_graph::CudaGraph,
}

fn new_sequences(
    indices: &[usize],
    config: &GenerationConfig,
    seeds: Option<&[u64]>,
) -> Vec<Sequence> {
    indices
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
        .collect()
}

fn finished(sequences: Vec<Sequence>, prompts: &[Vec<u32>]) -> Vec<Generation> {
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

#[allow(clippy::too_many_arguments)]
fn generate_batch(
    model: &Llama,
    graphs: &DecodeGraphs,
    prompts: &[Vec<u32>],
    indices: &[usize],
    config: &GenerationConfig,
    device: &Device,
    seeds: Option<&[u64]>,
    logits_mask: Option<&mut LogitsMask<'_>>,
    on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
) -> Vec<Generation> {
    // Greedy decoding on a LibTorch GPU replays one captured step (launching ~1,500 kernels
    // from the host per step is what bounds eager decoding there). TUNELOOP_CUDA_GRAPHS=0
    // turns this off (eager steps, as on the CPU).
    #[cfg(feature = "tch")]
    if config.temperature <= 0.0
        && logits_mask.is_none()
        && config.max_new_tokens > 1
        && std::env::var_os("TUNELOOP_CUDA_GRAPHS").is_none_or(|v| v != "0")
        && let Some(gpu) = crate::cuda_graph::cuda_index(device)
    {
        let mut reported = ReportedSteps::default();
        let result = generate_batch_fixed(
            model,
            prompts,
            indices,
            config,
            device,
            Some((gpu, graphs)),
            &mut |step| reported.forward(step, on_step),
        );
        match result {
            Ok(generations) => return generations,
            Err(error) => {
                let mut stats = DECODE_STATS.lock().expect("decode stats lock");
                stats.graph_failures += 1;
                stats.last_failure = Some(error.to_string());
            }
        }
        return eager_batch_resuming(
            model, prompts, indices, config, device, seeds, &reported, on_step,
        );
    }
    #[cfg(not(feature = "tch"))]
    let _ = graphs; // kept graphs exist on LibTorch GPUs only
    eager_batch(
        model,
        prompts,
        indices,
        config,
        device,
        seeds,
        logits_mask,
        on_step,
    )
}

/// The verdicts a caller's `on_step` gave, per prompt in step order.
#[cfg_attr(not(any(feature = "tch", test)), allow(dead_code))]
#[derive(Default)]
struct ReportedSteps(std::collections::HashMap<usize, Vec<Option<FinishReason>>>);

#[cfg_attr(not(any(feature = "tch", test)), allow(dead_code))]
impl ReportedSteps {
    fn forward(
        &mut self,
        step: TokenStep<'_>,
        on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
    ) -> Option<FinishReason> {
        let prompt_index = step.prompt_index;
        let verdict = on_step(step);
        self.0.entry(prompt_index).or_default().push(verdict);
        verdict
    }

    fn verdict(&self, prompt_index: usize, step: usize) -> Option<Option<FinishReason>> {
        self.0.get(&prompt_index)?.get(step).copied()
    }
}

/// [`eager_batch`] after a graph decode failed part-way: eager decoding starts over, and as
/// greedy choices are the same, the steps the caller has already seen are answered from
/// `reported` instead of being reported twice.
#[cfg_attr(not(any(feature = "tch", test)), allow(dead_code))]
#[allow(clippy::too_many_arguments)]
fn eager_batch_resuming(
    model: &Llama,
    prompts: &[Vec<u32>],
    indices: &[usize],
    config: &GenerationConfig,
    device: &Device,
    seeds: Option<&[u64]>,
    reported: &ReportedSteps,
    on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
) -> Vec<Generation> {
    let mut replayed = vec![0usize; prompts.len()];
    eager_batch(
        model,
        prompts,
        indices,
        config,
        device,
        seeds,
        None,
        &mut |step| match reported.verdict(step.prompt_index, replayed[step.prompt_index]) {
            Some(verdict) => {
                replayed[step.prompt_index] += 1;
                verdict
            }
            None => on_step(step),
        },
    )
}

/// Decoding with a cache that grows by one column per step and drops finished rows; sampling
/// or greedy, on any device.
#[allow(clippy::too_many_arguments)]
fn eager_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    indices: &[usize],
    config: &GenerationConfig,
    device: &Device,
    seeds: Option<&[u64]>,
    mut logits_mask: Option<&mut LogitsMask<'_>>,
    on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
) -> Vec<Generation> {
    let host_logits = logits_mask.is_some();
    let mut sequences = new_sequences(indices, config, seeds);
    if config.max_new_tokens > 0 {
        let batch: Vec<&[u32]> = indices.iter().map(|&i| prompts[i].as_slice()).collect();
        let (tokens, mask) = left_padded(&batch, device);
        let mut cache = KvCache::with_capacity(tokens.dims()[1] + config.max_new_tokens);
        let hidden = model.forward_hidden(tokens, mask, Some(&mut cache));
        // Rows of `cache` (and of `next`) ↔ positions in `sequences`.
        let mut active: Vec<usize> = (0..sequences.len()).collect();
        let mut next = NextTokens::pick(model, hidden, config.temperature, host_logits);
        loop {
            let chosen: Vec<u32> = match &mut next {
                NextTokens::Greedy { host, .. } => host.clone(),
                NextTokens::Logits(logits) => {
                    let vocab = logits.len() / active.len();
                    active
                        .iter()
                        .enumerate()
                        .map(|(row, &seq)| {
                            let row_logits = &mut logits[row * vocab..(row + 1) * vocab];
                            let sequence = &mut sequences[seq];
                            if let Some(logits_mask) = logits_mask.as_deref_mut() {
                                logits_mask(sequence.prompt_index, row_logits);
                            }
                            sample(
                                row_logits,
                                config.temperature,
                                config.top_p,
                                &mut sequence.rng,
                            )
                        })
                        .collect()
                }
            };
            for (&seq, &token) in active.iter().zip(&chosen) {
                take_token(&mut sequences[seq], token, config, on_step);
            }
            let still_active: Vec<usize> = (0..active.len())
                .filter(|&row| sequences[active[row]].finish.is_none())
                .collect();
            if still_active.is_empty() {
                break;
            }
            let rows = still_active.len();
            let tokens = match next {
                // Greedy with every row still going: feed the device's argmax straight back
                // (no host-to-device copy).
                NextTokens::Greedy { device: ids, .. } if rows == active.len() => *ids,
                _ => {
                    let ids: Vec<i64> =
                        still_active.iter().map(|&row| chosen[row] as i64).collect();
                    Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, 1]), device)
                }
            };
            if rows != active.len() {
                cache.retain_rows(&still_active);
                active = still_active.iter().map(|&row| active[row]).collect();
            }
            let mask = Tensor::<2, Int>::ones([rows, 1], device);
            let hidden = model.forward_hidden(tokens, mask, Some(&mut cache));
            next = NextTokens::pick(model, hidden, config.temperature, host_logits);
        }
    }
    finished(sequences, prompts)
}

#[cfg_attr(not(any(feature = "tch", test)), allow(dead_code))]
/// Greedy decoding with [`FixedDecoder`]: eager steps on the CPU (`gpu` = None, used by the
/// tests); on a LibTorch GPU one step is captured as a CUDA graph and replayed for the rest,
/// or, when `graphs` kept a decoder of this shape from an earlier call, that decoder restarts
/// in place and its graph replays from the first step. Rows that finish early keep being
/// computed (shapes stay fixed); their extra tokens are dropped.
fn generate_batch_fixed(
    model: &Llama,
    prompts: &[Vec<u32>],
    indices: &[usize],
    config: &GenerationConfig,
    device: &Device,
    gpu: Option<(usize, &DecodeGraphs)>,
    on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
) -> Result<Vec<Generation>> {
    #[cfg(feature = "tch")]
    let _stream = gpu
        .map(|(gpu, _)| crate::cuda_graph::SideStream::enter(gpu))
        .transpose()?;
    #[cfg(not(feature = "tch"))]
    let _ = gpu; // graphs are captured on LibTorch GPUs only
    // Greedy: no sampling streams to seed.
    let mut sequences = new_sequences(indices, config, None);
    let batch: Vec<&[u32]> = indices.iter().map(|&i| prompts[i].as_slice()).collect();
    let (tokens, mask) = left_padded(&batch, device);
    let width = tokens.dims()[1];
    // The first new token comes from the prefill; each step adds one key/value column.
    let capacity = (width + config.max_new_tokens).next_multiple_of(GRAPH_CACHE_STEP);
    #[cfg(feature = "tch")]
    let mut kept = gpu.and_then(|(gpu, graphs)| graphs.take(gpu, batch.len(), capacity));
    #[cfg(feature = "tch")]
    let mut cache = match kept.as_mut() {
        Some(kept) => kept.decoder.take_cache(),
        None => KvCache::on_device_with_capacity(capacity),
    };
    #[cfg(not(feature = "tch"))]
    let mut cache = KvCache::on_device_with_capacity(capacity);
    let hidden = model.forward_hidden(tokens, mask.clone(), Some(&mut cache));
    let first = match NextTokens::pick(model, hidden, 0.0, false) {
        NextTokens::Greedy { device, .. } => *device,
        NextTokens::Logits(_) => unreachable!("temperature 0 picks on the device"),
    };
    #[cfg(feature = "tch")]
    let (mut decoder, mut graph) = match kept {
        Some(mut kept) => {
            kept.decoder.restart(cache, mask, first);
            (kept.decoder, Some(kept.graph))
        }
        None => (FixedDecoder::new(model, cache, mask, first), None),
    };
    #[cfg(not(feature = "tch"))]
    let mut decoder = FixedDecoder::new(model, cache, mask, first);
    let mut steps = 0usize;
    let mut chosen = host_ids(decoder.ids());
    loop {
        for (sequence, &token) in sequences.iter_mut().zip(&chosen) {
            if sequence.finish.is_none() {
                take_token(sequence, token, config, on_step);
            }
        }
        if sequences.iter().all(|s| s.finish.is_some()) {
            break;
        }
        if width + steps + 1 > decoder.capacity() {
            return Err(Error::InvalidArgument(format!(
                "fixed decoding ran past its {} positions",
                decoder.capacity()
            )));
        }
        // The first batch of a size on a GPU runs one eager step (it loads the kernels for
        // those shapes and makes cuBLAS's workspace on the side stream); then one step is
        // captured, and every step after is a replay.
        #[cfg(feature = "tch")]
        if let Some((gpu, _)) = gpu {
            let key = (gpu, sequences.len());
            let started = std::time::Instant::now();
            if graph.is_none() && !WARM_GPUS.lock().expect("warm GPUs lock").contains(&key) {
                decoder.step(model);
                chosen = host_ids(decoder.ids());
                WARM_GPUS.lock().expect("warm GPUs lock").push(key);
                DECODE_STATS
                    .lock()
                    .expect("decode stats lock")
                    .warmup_seconds += started.elapsed().as_secs_f64();
                steps += 1;
                continue;
            }
            if graph.is_none() {
                let (captured, ()) = crate::cuda_graph::CudaGraph::capture(|| decoder.step(model))?;
                graph = Some(captured);
                let mut stats = DECODE_STATS.lock().expect("decode stats lock");
                stats.graph_captures += 1;
                stats.capture_seconds += started.elapsed().as_secs_f64();
            }
            let started = std::time::Instant::now();
            graph.as_ref().expect("captured").replay()?;
            // Reading the ids waits for the replay to finish.
            chosen = host_ids(decoder.ids());
            // A graph replays fixed addresses: if a step had replaced a tensor it updates
            // (an op that did not run in place), the replay would advance a copy nobody reads
            // and decode garbage. The position is the cheapest witness; the eager path takes
            // over before this step's tokens are reported.
            let column = decoder.column();
            if column != width + steps + 1 {
                return Err(Error::CudaGraph(format!(
                    "a replayed step left the decode position at {column}, expected {}",
                    width + steps + 1
                )));
            }
            let mut stats = DECODE_STATS.lock().expect("decode stats lock");
            stats.graph_replays += 1;
            stats.replay_seconds += started.elapsed().as_secs_f64();
            steps += 1;
            continue;
        }
        decoder.step(model);
        chosen = host_ids(decoder.ids());
        steps += 1;
    }
    #[cfg(feature = "tch")]
    if let Some((gpu, graphs)) = gpu {
        DECODE_STATS
            .lock()
            .expect("decode stats lock")
            .graph_batches += 1;
        if let Some(graph) = graph {
            graphs.put(KeptGraph {
                gpu,
                batch: sequences.len(),
                capacity,
                decoder,
                graph,
            });
        }
    }
    Ok(finished(sequences, prompts))
}

#[cfg_attr(not(any(feature = "tch", test)), allow(dead_code))]
fn host_ids(ids: Tensor<2, Int>) -> Vec<u32> {
    ids.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("int ids")
        .into_iter()
        .map(|id| id as u32)
        .collect()
}

/// [`push_token`], then reports the step to `on_step`, which may end the sequence.
fn take_token(
    sequence: &mut Sequence,
    token: u32,
    config: &GenerationConfig,
    on_step: &mut dyn FnMut(TokenStep<'_>) -> Option<FinishReason>,
) {
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

/// The next token of every row, from the last position's hidden state.
enum NextTokens {
    /// Greedy decoding takes the argmax on the device: only `B` ids cross to the host instead
    /// of `B × vocab` logits (33 MB per step at batch 64 with a 128K vocabulary).
    Greedy {
        device: Box<Tensor<2, Int>>,
        host: Vec<u32>,
    },
    /// f32 logits row-major `[B * vocab]`, for sampling on the host.
    Logits(Vec<f32>),
}

impl NextTokens {
    /// `host_logits`: return the logits even for greedy decoding (a mask must see them).
    fn pick(model: &Llama, hidden: Tensor<3>, temperature: f32, host_logits: bool) -> Self {
        let [batch, seq, width] = hidden.dims();
        debug_assert_eq!(width, model.config().hidden_size);
        let logits = model.logits(hidden.narrow(1, seq - 1, 1));
        if temperature <= 0.0 && !host_logits {
            // Ties go to the lowest id on every backend, as [`argmax`] on the host.
            let ids = logits.argmax(2).reshape([batch, 1]);
            let host = ids
                .to_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .expect("int argmax")
                .into_iter()
                .map(|id| id as u32)
                .collect();
            return Self::Greedy {
                device: Box::new(ids),
                host,
            };
        }
        let data = logits.cast(FloatDType::F32).into_data();
        debug_assert_eq!(data.dtype(), DType::F32);
        Self::Logits(data.try_into_vec::<f32>().expect("f32 logits"))
    }
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

    /// The fixed-shape decoder (what a GPU captures as a CUDA graph) chooses the same tokens
    /// as the growing-cache path, with left padding, stop tokens and rows finishing early.
    #[test]
    fn fixed_shape_decoding_matches_growing_cache() {
        let (model, device) = tiny_model(45);
        let prompts = prompts();
        let indices: Vec<usize> = (0..prompts.len()).collect();
        let free = GenerationConfig {
            max_new_tokens: 10,
            batch_size: 4,
            ..Default::default()
        };
        let mut eager_steps = Vec::new();
        let reference = generate_streaming(&model, &prompts, &free, &device, None, &mut |s| {
            eager_steps.push((s.prompt_index, s.tokens.to_vec(), s.finished));
            None
        })
        .unwrap();
        let mut fixed_steps = Vec::new();
        let fixed =
            generate_batch_fixed(&model, &prompts, &indices, &free, &device, None, &mut |s| {
                fixed_steps.push((s.prompt_index, s.tokens.to_vec(), s.finished));
                None
            })
            .unwrap();
        assert_eq!(fixed, reference);
        // The same reports, step for step (the order within a step may differ).
        let by_prompt_and_length = |a: &(usize, Vec<u32>, _), b: &(usize, Vec<u32>, _)| {
            (a.0, a.1.len()).cmp(&(b.0, b.1.len()))
        };
        eager_steps.sort_by(by_prompt_and_length);
        fixed_steps.sort_by(by_prompt_and_length);
        assert_eq!(fixed_steps, eager_steps);
        // A stop token that ends one row early while the others go on.
        let stop = reference[2].tokens[3];
        let config = GenerationConfig {
            stop_token_ids: vec![stop],
            ..free
        };
        let stopped = generate(&model, &prompts, &config, &device).unwrap();
        let fixed = generate_batch_fixed(
            &model,
            &prompts,
            &indices,
            &config,
            &device,
            None,
            &mut |_| None,
        )
        .unwrap();
        assert_eq!(fixed, stopped);
        assert_eq!(stopped[2].finish_reason, FinishReason::Stop);
    }

    /// Prefills `prompts` into `cache` and decodes `steps` tokens with a fresh decoder, or with
    /// `reused` restarted in place; returns the decoder and the ids of every step.
    fn decode_fixed(
        model: &Llama,
        prompts: &[Vec<u32>],
        reused: Option<FixedDecoder>,
        steps: usize,
        device: &Device,
    ) -> (FixedDecoder, Vec<Vec<u32>>) {
        let batch: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let (tokens, mask) = left_padded(&batch, device);
        let mut reused = reused;
        let mut cache = match reused.as_mut() {
            Some(decoder) => decoder.take_cache(),
            None => KvCache::on_device_with_capacity(GRAPH_CACHE_STEP),
        };
        let hidden = model.forward_hidden(tokens, mask.clone(), Some(&mut cache));
        let NextTokens::Greedy { device: first, .. } = NextTokens::pick(model, hidden, 0.0, false)
        else {
            unreachable!("greedy")
        };
        let mut decoder = match reused {
            Some(mut decoder) => {
                decoder.restart(cache, mask, *first);
                decoder
            }
            None => FixedDecoder::new(model, cache, mask, *first),
        };
        let mut ids = vec![host_ids(decoder.ids())];
        let width = batch.iter().map(|p| p.len()).max().unwrap_or(0);
        for step in 0..steps {
            assert_eq!(
                decoder.column(),
                width + step,
                "the position each step writes"
            );
            decoder.step(model);
            ids.push(host_ids(decoder.ids()));
        }
        (decoder, ids)
    }

    /// A decoder kept from one prompt batch and restarted for another (what a kept CUDA graph
    /// replays) chooses the same tokens as a fresh decoder: the state a step reads is reset,
    /// and the earlier batch's keys past the new prompt stay masked.
    #[test]
    fn restarted_decoder_decodes_like_a_fresh_one() {
        let (model, device) = tiny_model(46);
        let first_batch = vec![vec![5u32; 20], (1..18).collect(), vec![9, 8, 7]];
        let second_batch = vec![vec![40u32, 41], (100..109).collect(), vec![3; 6]];
        let (used, _) = decode_fixed(&model, &first_batch, None, 12, &device);
        let (_, restarted) = decode_fixed(&model, &second_batch, Some(used), 12, &device);
        let (_, fresh) = decode_fixed(&model, &second_batch, None, 12, &device);
        assert_eq!(restarted, fresh);
        // The second batch's tokens differ from the first's (the test would not notice stale
        // state otherwise).
        let (_, first_again) = decode_fixed(&model, &first_batch, None, 12, &device);
        assert_ne!(first_again, fresh);
    }

    /// After a graph decode fails part-way, the eager restart answers the steps the caller
    /// already saw from the record (including a verdict that ended a sequence) and reports
    /// only the new ones.
    #[test]
    fn eager_restart_reports_each_step_once() {
        let (model, device) = tiny_model(45);
        let prompts = prompts();
        let indices: Vec<usize> = (0..prompts.len()).collect();
        let config = GenerationConfig {
            max_new_tokens: 6,
            batch_size: 4,
            ..Default::default()
        };
        let reference = generate(&model, &prompts, &config, &device).unwrap();
        // What the failed graph decode had reported: two steps of every prompt, and prompt 1
        // ended by its caller at its second token.
        let mut reported = ReportedSteps::default();
        for (prompt_index, generation) in reference.iter().enumerate() {
            for n in 1..=2 {
                let step = TokenStep {
                    prompt_index,
                    tokens: &generation.tokens[..n],
                    finished: None,
                };
                reported.forward(step, &mut |s| {
                    (s.prompt_index == 1 && s.tokens.len() == 2).then_some(FinishReason::Stop)
                });
            }
        }
        let mut seen = Vec::new();
        let resumed = eager_batch_resuming(
            &model,
            &prompts,
            &indices,
            &config,
            &device,
            None,
            &reported,
            &mut |s| {
                seen.push((s.prompt_index, s.tokens.len()));
                None
            },
        );
        assert_eq!(resumed[1].tokens, reference[1].tokens[..2]);
        assert_eq!(resumed[1].finish_reason, FinishReason::Stop);
        for i in [0, 2, 3] {
            assert_eq!(resumed[i], reference[i]);
        }
        seen.sort();
        let expected: Vec<(usize, usize)> = [0, 2, 3]
            .into_iter()
            .flat_map(|i| (3..=6).map(move |n| (i, n)))
            .collect();
        assert_eq!(seen, expected);
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
}
