//! Log-likelihood of continuations given contexts, as lm-evaluation-harness's
//! `loglikelihood` request computes it (the MMLU / multiple-choice primitive).

use std::collections::HashMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use crate::generate::left_padded;
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

/// Scores every request; results are in request order.
///
/// The model reads `(context + continuation)[..-1]`, truncated from the left to
/// `max_position_embeddings`; the log-softmax at the last `continuation.len()` positions gives
/// each continuation token's log-probability. Requests are sorted by length (longest first)
/// and left-padded in batches of `batch_size`.
pub fn loglikelihood(
    model: &Llama,
    requests: &[LoglikelihoodRequest],
    batch_size: usize,
    device: &Device,
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

    let mut order: Vec<usize> = (0..unique_inputs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(unique_inputs[i].len()));
    let mut results: Vec<Option<Loglikelihood>> = vec![None; requests.len()];
    for chunk in order.chunks(batch_size) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| unique_inputs[i].as_slice()).collect();
        let served: Vec<(usize, usize)> = chunk
            .iter()
            .enumerate()
            .flat_map(|(row, &input)| requests_of_input[input].iter().map(move |&r| (r, row)))
            .collect();
        let rows: Vec<usize> = served.iter().map(|&(_, row)| row).collect();
        let continuations: Vec<&[u32]> = served
            .iter()
            .map(|&(r, _)| requests[r].continuation.as_slice())
            .collect();
        let scored = score_batch(model, &batch, &rows, &continuations, device);
        for (&(request, _), result) in served.iter().zip(scored) {
            results[request] = Some(result);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every request scored"))
        .collect())
}

/// Scores `continuations[i]` after input row `rows[i]` of `inputs`.
fn score_batch(
    model: &Llama,
    inputs: &[&[u32]],
    input_rows: &[usize],
    continuations: &[&[u32]],
    device: &Device,
) -> Vec<Loglikelihood> {
    let rows = continuations.len();
    let (tokens, mask) = left_padded(inputs, device);
    let row_index = Tensor::<1, Int>::from_data(
        TensorData::new(
            input_rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [rows],
        ),
        device,
    );
    let width = tokens.dims()[1];
    let hidden = model.forward_hidden(tokens, mask, None);
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
}
