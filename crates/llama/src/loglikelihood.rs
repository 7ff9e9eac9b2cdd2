//! Log-likelihood of continuations given contexts, as lm-evaluation-harness's
//! `loglikelihood` request computes it (the MMLU / multiple-choice primitive).

use std::collections::HashMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use crate::generate::left_padded;
use crate::kv_cache::KvCache;
use crate::model::Llama;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoglikelihoodRequest {
    /// Tokens conditioned on; must not be empty (lm-eval-harness puts the end-of-text
    /// token here when a request has no context).
    pub context: Vec<u32>,
    /// Tokens scored; must not be empty.
    pub continuation: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Loglikelihood {
    /// Sum of the continuation tokens' log-probabilities.
    pub logprob: f64,
    /// Whether every continuation token is the argmax of its position's distribution.
    pub is_greedy: bool,
    /// Log-probability of each continuation token.
    pub token_logprobs: Vec<f32>,
}

/// Most `[rows, positions, vocab]` f32 log-softmax elements held at once (256 MiB).
const LOGPROB_BUDGET: usize = 64 << 20;

/// Inputs that share fewer leading tokens than this are computed whole: a separate forward
/// pass for a shorter prefix saves less than it costs.
const MIN_SHARED_PREFIX: usize = 32;

/// The log-probability of one token of a sequence and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionLogprobs {
    /// The token at this position.
    pub token: u32,
    /// Its log-probability given every token before it.
    pub logprob: f32,
    /// The `top_k` most likely tokens here with their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Log-probabilities of `tokens[from..]`, each given the tokens before it, with the `top_k`
/// most likely tokens at each of those positions: what an OpenAI-compatible server returns
/// for `echo` + `logprobs` (a prompt scored, `from` = 1) and for `logprobs` on an answer
/// (`from` = the prompt's length, scored after decoding). One forward pass over the
/// sequence without padding; log-softmax in f32 over the raw logits (no temperature).
pub fn score_tokens(
    model: &Llama,
    tokens: &[u32],
    from: usize,
    top_k: usize,
    device: &Device,
) -> Result<Vec<PositionLogprobs>> {
    let vocab = model.config().vocab_size;
    let max_len = model.config().max_position_embeddings;
    if from == 0 || from > tokens.len() {
        return Err(Error::InvalidArgument(format!(
            "score_tokens: from = {from} must be in 1..={} (the first token has no context)",
            tokens.len()
        )));
    }
    if tokens.len() > max_len {
        return Err(Error::InvalidArgument(format!(
            "score_tokens: {} tokens exceed the model's {max_len} positions",
            tokens.len()
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::InvalidArgument(format!(
            "score_tokens: token id {bad} outside the vocabulary of {vocab}"
        )));
    }
    if top_k > vocab {
        return Err(Error::InvalidArgument(format!(
            "score_tokens: top_k = {top_k} exceeds the vocabulary of {vocab}"
        )));
    }
    let scored = tokens.len() - from;
    if scored == 0 {
        return Ok(Vec::new());
    }
    let input = &tokens[..tokens.len() - 1];
    let (ids, mask) = left_padded(&[input], device);
    let hidden = model.forward_hidden(ids, mask, None);
    // Only the positions that predict `tokens[from..]` become logits, a window at a time.
    let step = (LOGPROB_BUDGET / vocab).clamp(1, scored);
    let mut out = Vec::with_capacity(scored);
    let mut start = 0;
    while start < scored {
        let len = step.min(scored - start);
        let window = hidden.clone().narrow(1, from - 1 + start, len);
        let logprobs = log_softmax(model.logits(window).cast(FloatDType::F32), 2);
        let targets: Vec<i64> = tokens[from + start..from + start + len]
            .iter()
            .map(|&t| t as i64)
            .collect();
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, len, 1]), device);
        let chosen = logprobs
            .clone()
            .gather(2, targets)
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 log-probs");
        let (top_values, top_ids) = if top_k > 0 {
            // The most likely token alone (what lm-evaluation-harness asks for) is a max, not
            // a sort of the vocabulary.
            let (values, ids) = if top_k == 1 {
                logprobs.max_dim_with_indices(2)
            } else {
                logprobs.topk_with_indices(top_k, 2)
            };
            (
                values.into_data().try_into_vec::<f32>().expect("f32 top"),
                ids.into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .expect("int top ids"),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        for j in 0..len {
            let top = (0..top_k)
                .map(|k| (top_ids[j * top_k + k] as u32, top_values[j * top_k + k]))
                .collect();
            out.push(PositionLogprobs {
                token: tokens[from + start + j],
                logprob: chosen[j],
                top,
            });
        }
        start += len;
    }
    Ok(out)
}

/// Work done by [`loglikelihood_with_prefix_cache`] calls, counted in token positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoglikelihoodStats {
    /// Positions the model computed, padding included.
    pub positions_computed: usize,
    /// Positions taken from a shared prefix's keys and values instead of being computed again.
    pub positions_reused: usize,
}

impl std::ops::AddAssign for LoglikelihoodStats {
    fn add_assign(&mut self, other: Self) {
        self.positions_computed += other.positions_computed;
        self.positions_reused += other.positions_reused;
    }
}

/// The keys and values of the most recent shared prefix (a few-shot prompt), kept between
/// calls so that the requests of the next call that begin with it skip recomputing it: an
/// MMLU subject's 5-shot prompt is computed once, not once per batch of questions.
///
/// It holds one model's numbers: use one cache per model.
#[derive(Debug, Default)]
pub struct PrefixCache {
    tokens: Vec<u32>,
    cache: Option<KvCache>,
    stats: LoglikelihoodStats,
}

impl PrefixCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Totals over every call that used this cache.
    pub fn stats(&self) -> LoglikelihoodStats {
        self.stats
    }

    /// How many leading tokens of `input` the cached prefix covers.
    fn covers(&self, input: &[u32]) -> usize {
        common_prefix(&self.tokens, input)
    }

    /// The cache of `prefix`, computed unless the cached prefix starts with it.
    fn get_or_compute(&mut self, model: &Llama, prefix: &[u32], device: &Device) -> &KvCache {
        if self.cache.is_none() || self.covers(prefix) < prefix.len() {
            let (tokens, mask) = left_padded(&[prefix], device);
            let mut cache = KvCache::new();
            model.forward_hidden(tokens, mask, Some(&mut cache));
            self.stats.positions_computed += prefix.len();
            self.tokens = prefix.to_vec();
            self.cache = Some(cache);
        }
        self.cache.as_ref().expect("filled above")
    }
}

/// Scores every request; results are in request order.
///
/// The model reads `(context + continuation)[..-1]`, truncated from the left to
/// `max_position_embeddings`; the log-softmax at the last `continuation.len()` positions gives
/// each continuation token's log-probability. Requests that feed the model the same tokens
/// share one forward pass, inputs that begin with the same tokens (few-shot prompts) compute
/// that prefix once, and the rest are sorted by length (longest first) and left-padded in
/// batches of `batch_size`.
pub fn loglikelihood(
    model: &Llama,
    requests: &[LoglikelihoodRequest],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Loglikelihood>> {
    loglikelihood_with_prefix_cache(model, requests, batch_size, device, &mut PrefixCache::new())
}

/// [`loglikelihood`], reusing (and updating) `prefixes` across calls.
pub fn loglikelihood_with_prefix_cache(
    model: &Llama,
    requests: &[LoglikelihoodRequest],
    batch_size: usize,
    device: &Device,
    prefixes: &mut PrefixCache,
) -> Result<Vec<Loglikelihood>> {
    if batch_size == 0 {
        return Err(Error::InvalidArgument("batch_size must be > 0".into()));
    }
    let vocab = model.config().vocab_size;
    let max_len = model.config().max_position_embeddings;
    let mut inputs = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        if request.context.is_empty() || request.continuation.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "loglikelihood request {index}: context and continuation must be non-empty"
            )));
        }
        let whole: Vec<u32> = request
            .context
            .iter()
            .chain(&request.continuation)
            .copied()
            .collect();
        if let Some(&bad) = whole.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "loglikelihood request {index}: token id {bad} outside the vocabulary of {vocab}"
            )));
        }
        if request.continuation.len() > max_len {
            return Err(Error::InvalidArgument(format!(
                "loglikelihood request {index}: continuation of {} tokens exceeds the model's {max_len} positions",
                request.continuation.len()
            )));
        }
        let input = &whole[..whole.len() - 1];
        let input = &input[input.len().saturating_sub(max_len)..];
        inputs.push(input.to_vec());
    }

    // Requests that feed the model the same tokens (multiple-choice continuations of one
    // token, like MMLU's " A".." D") share one forward pass.
    let mut unique_inputs: Vec<Vec<u32>> = Vec::new();
    let mut requests_of_input: Vec<Vec<usize>> = Vec::new();
    let mut input_index: HashMap<Vec<u32>, usize> = HashMap::new();
    for (request, input) in inputs.into_iter().enumerate() {
        let index = *input_index.entry(input.clone()).or_insert_with(|| {
            unique_inputs.push(input);
            requests_of_input.push(Vec::new());
            unique_inputs.len() - 1
        });
        requests_of_input[index].push(request);
    }
    // The last `continuation.len()` positions of an input predict its continuation, so they
    // must be computed in the batch; everything before them may come from a prefix cache.
    let shareable: Vec<usize> = unique_inputs
        .iter()
        .zip(&requests_of_input)
        .map(|(input, served)| {
            let span = served.iter().map(|&r| requests[r].continuation.len());
            input.len() - span.max().unwrap_or(0).min(input.len())
        })
        .collect();

    let mut results: Vec<Option<Loglikelihood>> = vec![None; requests.len()];
    let mut score = |batch: &[usize], prefix: Option<(&KvCache, usize)>| {
        let served: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(row, &input)| requests_of_input[input].iter().map(move |&r| (r, row)))
            .collect();
        let prefix_len = prefix.map_or(0, |(_, len)| len);
        let rows: Vec<&[u32]> = batch
            .iter()
            .map(|&i| &unique_inputs[i][prefix_len..])
            .collect();
        let scored = score_batch(model, &rows, prefix, &served, requests, device);
        for (&(request, _), result) in served.iter().zip(scored) {
            results[request] = Some(result);
        }
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        LoglikelihoodStats {
            positions_computed: rows.len() * width,
            positions_reused: rows.len() * prefix_len,
        }
    };

    let mut unshared = Vec::new();
    for run in shared_prefix_runs(&unique_inputs) {
        let cap = run.iter().map(|&i| shareable[i]).min().unwrap_or(0);
        let own = run_prefix(&unique_inputs, &run).min(cap);
        let cached = run
            .iter()
            .map(|&i| prefixes.covers(&unique_inputs[i]))
            .min()
            .unwrap_or(0)
            .min(cap);
        // The cached prefix serves unless the run shares a much longer one of its own.
        let prefix_len = if cached >= MIN_SHARED_PREFIX && 2 * cached >= own {
            cached
        } else if run.len() > 1 && own >= MIN_SHARED_PREFIX {
            own
        } else {
            unshared.extend(run);
            continue;
        };
        let prefix = &unique_inputs[run[0]][..prefix_len];
        let source = prefixes.get_or_compute(model, prefix, device).clone();
        let mut run = run;
        run.sort_by_key(|&i| std::cmp::Reverse(unique_inputs[i].len()));
        for batch in run.chunks(batch_size) {
            prefixes.stats += score(batch, Some((&source, prefix_len)));
        }
    }
    unshared.sort_by_key(|&i| std::cmp::Reverse(unique_inputs[i].len()));
    for batch in unshared.chunks(batch_size) {
        prefixes.stats += score(batch, None);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every request scored"))
        .collect())
}

/// Number of leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Leading tokens that every input of `run` shares.
fn run_prefix(inputs: &[Vec<u32>], run: &[usize]) -> usize {
    let first = &inputs[run[0]];
    run[1..]
        .iter()
        .map(|&i| common_prefix(first, &inputs[i]))
        .min()
        .unwrap_or(first.len())
}

/// The inputs in runs whose neighbours (in token order) share at least
/// [`MIN_SHARED_PREFIX`] leading tokens: the questions of one few-shot prompt end up in one run.
fn shared_prefix_runs(inputs: &[Vec<u32>]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by(|&a, &b| inputs[a].cmp(&inputs[b]));
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for index in order {
        match runs.last_mut() {
            Some(run)
                if common_prefix(
                    &inputs[*run.last().expect("runs are non-empty")],
                    &inputs[index],
                ) >= MIN_SHARED_PREFIX =>
            {
                run.push(index)
            }
            _ => runs.push(vec![index]),
        }
    }
    runs
}

/// Scores the requests `served` = (request, row) after input row `row` of `inputs`, each
/// input continuing the first `len` positions of `prefix` when one is given.
fn score_batch(
    model: &Llama,
    inputs: &[&[u32]],
    prefix: Option<(&KvCache, usize)>,
    served: &[(usize, usize)],
    requests: &[LoglikelihoodRequest],
    device: &Device,
) -> Vec<Loglikelihood> {
    let rows = served.len();
    let continuations: Vec<&[u32]> = served
        .iter()
        .map(|&(r, _)| requests[r].continuation.as_slice())
        .collect();
    let (tokens, mask) = left_padded(inputs, device);
    let row_index = Tensor::<1, Int>::from_data(
        TensorData::new(
            served
                .iter()
                .map(|&(_, row)| row as i64)
                .collect::<Vec<_>>(),
            [rows],
        ),
        device,
    );
    let width = tokens.dims()[1];
    let mut cache = prefix.map(|(cache, len)| cache.repeated_prefix(len, inputs.len(), width));
    let hidden = model.forward_hidden(tokens, mask, cache.as_mut());
    // Left padding aligns every row's end: the continuation of row r is predicted by its
    // last `continuations[r].len()` positions, so only the last `span` positions matter.
    let span = continuations.iter().map(|c| c.len()).max().unwrap_or(0);
    let vocab = model.config().vocab_size;
    let step = (LOGPROB_BUDGET / (rows * vocab)).clamp(1, span);

    let mut token_logprobs = vec![Vec::with_capacity(span); rows];
    let mut greedy = vec![true; rows];
    let mut start = 0;
    while start < span {
        let len = step.min(span - start);
        // Window positions [width - span + start, +len) ↔ continuation offsets from the end.
        let window = hidden
            .clone()
            .narrow(1, width - span + start, len)
            .select(0, row_index.clone());
        let logprobs = log_softmax(model.logits(window).cast(FloatDType::F32), 2);
        let mut targets = vec![0i64; rows * len];
        for (row, continuation) in continuations.iter().enumerate() {
            for j in 0..len {
                // Offset in the row's continuation of window position j.
                let from_end = span - (start + j);
                if from_end <= continuation.len() {
                    targets[row * len + j] = continuation[continuation.len() - from_end] as i64;
                }
            }
        }
        let targets_tensor =
            Tensor::<3, Int>::from_data(TensorData::new(targets.clone(), [rows, len, 1]), device);
        let chosen = logprobs.clone().gather(2, targets_tensor);
        let best = logprobs.argmax(2);
        let chosen = chosen
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 log-probs");
        let best = best
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("int argmax");
        for (row, continuation) in continuations.iter().enumerate() {
            for j in 0..len {
                let from_end = span - (start + j);
                if from_end <= continuation.len() {
                    token_logprobs[row].push(chosen[row * len + j]);
                    if best[row * len + j] != targets[row * len + j] {
                        greedy[row] = false;
                    }
                }
            }
        }
        start += len;
    }
    token_logprobs
        .into_iter()
        .zip(greedy)
        .map(|(token_logprobs, is_greedy)| Loglikelihood {
            logprob: token_logprobs.iter().map(|&l| l as f64).sum(),
            is_greedy,
            token_logprobs,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenerationConfig, argmax, generate};
    use crate::model::tests::{tiny_model, to_vec};

    fn requests() -> Vec<LoglikelihoodRequest> {
        let request = |context: &[u32], continuation: &[u32]| LoglikelihoodRequest {
            context: context.to_vec(),
            continuation: continuation.to_vec(),
        };
        vec![
            request(&[1, 2, 3], &[4]),
            request(&[9, 8, 7, 6, 5, 4, 3], &[2, 1, 0]),
            request(&[50], &[60, 70]),
            request(&[11, 12, 13, 14], &[15, 16, 17, 18, 19]),
            request(&[200, 201], &[202]),
        ]
    }

    #[test]
    fn matches_log_softmax_of_full_forward() {
        let (model, device) = tiny_model(51);
        let results = loglikelihood(&model, &requests(), 2, &device).unwrap();
        let vocab = model.config().vocab_size;
        for (request, result) in requests().iter().zip(&results) {
            let whole: Vec<u32> = request
                .context
                .iter()
                .chain(&request.continuation)
                .copied()
                .collect();
            let input = &whole[..whole.len() - 1];
            let (tokens, mask) = left_padded(&[input], &device);
            let logits = to_vec(model.forward(tokens, mask, None));
            let mut expected = Vec::new();
            let mut greedy = true;
            for (k, &target) in request.continuation.iter().enumerate() {
                let position = request.context.len() - 1 + k;
                let row = &logits[position * vocab..(position + 1) * vocab];
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                expected.push(row[target as usize] as f64 - lse);
                greedy &= argmax(row) == target;
            }
            assert_eq!(result.token_logprobs.len(), expected.len());
            for (got, want) in result.token_logprobs.iter().zip(&expected) {
                assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
            }
            assert!((result.logprob - expected.iter().sum::<f64>()).abs() < 1e-4);
            assert_eq!(result.is_greedy, greedy);
        }
    }

    #[test]
    fn score_tokens_agrees_with_loglikelihood_and_ranks_the_top() {
        let (model, device) = tiny_model(55);
        let tokens = vec![9u32, 8, 7, 6, 5, 4, 3, 2, 1];
        let scored = score_tokens(&model, &tokens, 1, 3, &device).unwrap();
        assert_eq!(scored.len(), tokens.len() - 1);
        let reference = loglikelihood(
            &model,
            &[LoglikelihoodRequest {
                context: tokens[..1].to_vec(),
                continuation: tokens[1..].to_vec(),
            }],
            1,
            &device,
        )
        .unwrap();
        for (position, (got, want)) in scored.iter().zip(&reference[0].token_logprobs).enumerate() {
            assert_eq!(got.token, tokens[position + 1]);
            assert!((got.logprob - want).abs() < 1e-4, "{got:?} vs {want}");
            assert_eq!(got.top.len(), 3);
            assert!(got.top.windows(2).all(|w| w[0].1 >= w[1].1), "{got:?}");
            // The token's own log-probability is at most the best one, and equals the entry
            // for it when it is among the top.
            assert!(got.logprob <= got.top[0].1 + 1e-6);
            if let Some(&(_, own)) = got.top.iter().find(|(id, _)| *id == got.token) {
                assert!((own - got.logprob).abs() < 1e-6);
            }
        }
        // A later start scores the tail only, with the same numbers.
        let tail = score_tokens(&model, &tokens, 6, 0, &device).unwrap();
        assert_eq!(tail.len(), 3);
        for (a, b) in tail.iter().zip(&scored[5..]) {
            assert!((a.logprob - b.logprob).abs() < 1e-5 && a.top.is_empty());
        }
        assert!(
            score_tokens(&model, &tokens, tokens.len(), 1, &device)
                .unwrap()
                .is_empty()
        );
        assert!(score_tokens(&model, &tokens, 0, 1, &device).is_err());
        assert!(score_tokens(&model, &[1, 100_000], 1, 1, &device).is_err());
    }

    #[test]
    fn batch_size_does_not_change_results() {
        let (model, device) = tiny_model(52);
        let one = loglikelihood(&model, &requests(), 1, &device).unwrap();
        let all = loglikelihood(&model, &requests(), 5, &device).unwrap();
        for (a, b) in one.iter().zip(&all) {
            assert!((a.logprob - b.logprob).abs() < 1e-4, "{a:?} vs {b:?}");
            assert_eq!(a.is_greedy, b.is_greedy);
        }
    }

    #[test]
    fn greedy_continuation_is_greedy() {
        let (model, device) = tiny_model(53);
        let context = vec![3u32, 1, 4, 1, 5];
        let config = GenerationConfig {
            max_new_tokens: 4,
            ..Default::default()
        };
        let continuation = generate(&model, std::slice::from_ref(&context), &config, &device)
            .unwrap()[0]
            .tokens
            .clone();
        let mut other = continuation.clone();
        other[2] = (other[2] + 1) % 256;
        let results = loglikelihood(
            &model,
            &[
                LoglikelihoodRequest {
                    context: context.clone(),
                    continuation: continuation.clone(),
                },
                LoglikelihoodRequest {
                    context,
                    continuation: other,
                },
            ],
            2,
            &device,
        )
        .unwrap();
        assert!(results[0].is_greedy);
        assert!(!results[1].is_greedy);
        assert!(results[0].token_logprobs[2] > results[1].token_logprobs[2]);
        assert!(results[0].logprob < 0.0);
    }

    #[test]
    fn empty_parts_are_rejected() {
        let (model, device) = tiny_model(54);
        let bad = LoglikelihoodRequest {
            context: vec![],
            continuation: vec![1],
        };
        assert!(matches!(
            loglikelihood(&model, &[bad], 1, &device),
            Err(Error::InvalidArgument(_))
        ));
    }

    /// Multiple-choice requests share the context's forward pass; each must still get the
    /// score it gets when scored on its own.
    #[test]
    fn shared_contexts_score_like_separate_requests() {
        let (model, device) = tiny_model(7);
        let context = vec![5, 6, 7, 8, 9];
        let choices: Vec<LoglikelihoodRequest> = [[30u32], [31], [32], [33]]
            .iter()
            .map(|c| LoglikelihoodRequest {
                context: context.clone(),
                continuation: c.to_vec(),
            })
            .chain(requests())
            .collect();
        let together = loglikelihood(&model, &choices, 3, &device).unwrap();
        for (request, shared) in choices.iter().zip(&together) {
            let alone = loglikelihood(&model, std::slice::from_ref(request), 1, &device).unwrap();
            assert!(
                (alone[0].logprob - shared.logprob).abs() < 1e-4,
                "{request:?}: {} alone vs {} shared",
                alone[0].logprob,
                shared.logprob
            );
            assert_eq!(alone[0].is_greedy, shared.is_greedy);
        }
        let distinct: std::collections::HashSet<i64> = together[..4]
            .iter()
            .map(|r| (r.logprob * 1e6) as i64)
            .collect();
        assert_eq!(distinct.len(), 4, "each choice gets its own token's score");
    }

    /// `count` pseudo-random tokens from `seed` (a prompt no two tests share by accident).
    fn tokens(seed: u32, count: usize) -> Vec<u32> {
        (0..count as u32)
            .map(|i| (seed.wrapping_mul(7919) + i * 104_729) % 251 + 1)
            .collect()
    }

    fn assert_same_scores(got: &[Loglikelihood], want: &[Loglikelihood]) {
        assert_eq!(got.len(), want.len());
        for (got, want) in got.iter().zip(want) {
            assert!(
                (got.logprob - want.logprob).abs() < 1e-4,
                "{} with a shared prefix vs {} computed whole",
                got.logprob,
                want.logprob
            );
            assert_eq!(got.is_greedy, want.is_greedy);
            assert_eq!(got.token_logprobs.len(), want.token_logprobs.len());
        }
    }

    /// Each request scored on its own, its whole input computed.
    fn scored_alone(
        model: &Llama,
        requests: &[LoglikelihoodRequest],
        device: &Device,
    ) -> Vec<Loglikelihood> {
        requests
            .iter()
            .map(|r| {
                loglikelihood(model, std::slice::from_ref(r), 1, device)
                    .unwrap()
                    .remove(0)
            })
            .collect()
    }

    /// Few-shot-like requests: one 48-token prompt, then questions of different lengths, each
    /// with a one-token and a three-token answer; plus one unrelated request.
    fn few_shot_requests(
        prompt_seed: u32,
        questions: std::ops::Range<u32>,
    ) -> Vec<LoglikelihoodRequest> {
        let prompt = tokens(prompt_seed, 48);
        let mut requests = Vec::new();
        for q in questions {
            let mut context = prompt.clone();
            context.extend(tokens(1000 + q, 1 + (q as usize * 3) % 11));
            for continuation in [vec![17], vec![40, 41, 42]] {
                requests.push(LoglikelihoodRequest {
                    context: context.clone(),
                    continuation,
                });
            }
        }
        requests.push(LoglikelihoodRequest {
            context: tokens(99, 20),
            continuation: vec![5, 6],
        });
        requests
    }

    #[test]
    fn shared_prefix_is_computed_once_and_scores_like_whole_inputs() {
        let (model, device) = tiny_model(61);
        let requests = few_shot_requests(1, 0..7);
        let mut prefixes = PrefixCache::new();
        let shared =
            loglikelihood_with_prefix_cache(&model, &requests, 3, &device, &mut prefixes).unwrap();
        assert_same_scores(&shared, &scored_alone(&model, &requests, &device));
        let stats = prefixes.stats();
        // The 48-token prompt (less the positions a 3-token answer needs) is reused by all 7
        // questions but computed once.
        assert!(stats.positions_reused >= 7 * 45, "{stats:?}");
        let whole: usize = 7 * (48 + 11) + 21;
        assert!(stats.positions_computed < whole / 2, "{stats:?}");
    }

    #[test]
    fn prefix_cache_serves_the_next_call() {
        let (model, device) = tiny_model(62);
        let mut prefixes = PrefixCache::new();
        let first = few_shot_requests(2, 0..4);
        loglikelihood_with_prefix_cache(&model, &first, 4, &device, &mut prefixes).unwrap();
        let before = prefixes.stats();
        // Even a lone question of the same prompt in the next call starts from the cache.
        let second: Vec<LoglikelihoodRequest> = few_shot_requests(2, 4..5);
        let scored =
            loglikelihood_with_prefix_cache(&model, &second, 4, &device, &mut prefixes).unwrap();
        assert_same_scores(&scored, &scored_alone(&model, &second, &device));
        let after = prefixes.stats();
        assert!(
            after.positions_reused > before.positions_reused,
            "{after:?}"
        );
        // Only the question and the unrelated request were computed, not the prompt again.
        assert!(
            after.positions_computed - before.positions_computed < 48,
            "{before:?} → {after:?}"
        );
    }

    #[test]
    fn a_long_continuation_limits_the_shared_prefix() {
        let (model, device) = tiny_model(63);
        let prompt = tokens(3, 40);
        // The continuations start inside what the other inputs share.
        let requests: Vec<LoglikelihoodRequest> = (0..3)
            .map(|q| LoglikelihoodRequest {
                context: prompt[..38].to_vec(),
                continuation: [&prompt[38..], &tokens(500 + q, 3)[..]].concat(),
            })
            .collect();
        let mut prefixes = PrefixCache::new();
        let shared =
            loglikelihood_with_prefix_cache(&model, &requests, 2, &device, &mut prefixes).unwrap();
        assert_same_scores(&shared, &scored_alone(&model, &requests, &device));
        assert_eq!(prefixes.stats().positions_reused, 3 * 37);
    }
}
