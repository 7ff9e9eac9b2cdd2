//! The encoder on the CPU without burn: the same BERT as [`crate::Bert`] (post-LayerNorm,
//! exact GELU, absolute positions), on host `f32` buffers with the kernels of
//! [`cpu_kernels`].
//!
//! A batch runs packed: the sequences' tokens are concatenated, so the four projections of each
//! layer are single GEMMs over every real token and no padding is ever computed; attention runs
//! per sequence. Rows are split into chunks across rayon's threads, and each chunk's
//! element-wise tail (GELU, residual + LayerNorm) runs right after its GEMM, while those rows
//! are still in cache.

use rayon::prelude::*;

use crate::Result;
use crate::config::BertConfig;
use crate::weights::Weights;
use cpu_kernels::{self as kernels, MR, PackedLinear};

#[derive(Debug)]
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

#[derive(Debug)]
struct Layer {
    /// Query, key and value fused into one `[hidden → 3·hidden]` projection.
    qkv: PackedLinear,
    attention_output: PackedLinear,
    attention_norm: Norm,
    intermediate: PackedLinear,
    output: PackedLinear,
    output_norm: Norm,
}

/// A BERT encoder in host memory, weights packed for [`kernels::PackedLinear`].
#[derive(Debug)]
pub(crate) struct CpuBert {
    config: BertConfig,
    eps: f32,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// Row 0 of `token_type_embeddings`: sentence embeddings use a single segment.
    token_type_zero: Vec<f32>,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
}

/// What runs on a chunk of output rows right after its GEMM.
enum Tail<'a> {
    None,
    Gelu,
    /// `residual ← LayerNorm(residual + output)`.
    AddNorm {
        residual: &'a mut [f32],
        norm: &'a Norm,
        eps: f32,
    },
}

impl CpuBert {
    /// Reads every encoder tensor, checking names and shapes, in the same order as
    /// [`crate::Bert::load`] so both report the same first problem.
    pub(crate) fn load(config: &BertConfig, weights: &Weights) -> Result<Self> {
        let hidden = config.hidden_size;
        let vector = |name: &str, len: usize| weights.tensor(name, &[len]).map(|t| t.data);
        let dense = |prefix: &str, inputs: usize, outputs: usize| -> Result<PackedLinear> {
            let weight = weights.tensor(&format!("{prefix}.weight"), &[outputs, inputs])?;
            let bias = vector(&format!("{prefix}.bias"), outputs)?;
            Ok(PackedLinear::from_out_in(&weight.data, bias, inputs))
        };
        let norm = |prefix: &str| -> Result<Norm> {
            Ok(Norm {
                gamma: vector(&format!("{prefix}.weight"), hidden)?,
                beta: vector(&format!("{prefix}.bias"), hidden)?,
            })
        };

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{index}");
            // HF `[out, in]` blocks stacked along `out`: outputs 0..h are q, then k, then v.
            let mut qkv_weight = Vec::with_capacity(3 * hidden * hidden);
            let mut qkv_bias = Vec::with_capacity(3 * hidden);
            for part in ["query", "key", "value"] {
                let p = format!("{prefix}.attention.self.{part}");
                qkv_weight.extend(
                    weights
                        .tensor(&format!("{p}.weight"), &[hidden, hidden])?
                        .data,
                );
                qkv_bias.extend(vector(&format!("{p}.bias"), hidden)?);
            }
            layers.push(Layer {
                qkv: PackedLinear::from_out_in(&qkv_weight, qkv_bias, hidden),
                attention_output: dense(
                    &format!("{prefix}.attention.output.dense"),
                    hidden,
                    hidden,
                )?,
                attention_norm: norm(&format!("{prefix}.attention.output.LayerNorm"))?,
                intermediate: dense(
                    &format!("{prefix}.intermediate.dense"),
                    hidden,
                    config.intermediate_size,
                )?,
                output: dense(
                    &format!("{prefix}.output.dense"),
                    config.intermediate_size,
                    hidden,
                )?,
                output_norm: norm(&format!("{prefix}.output.LayerNorm"))?,
            });
        }

        let token_types = weights.tensor(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, hidden],
        )?;
        Ok(Self {
            config: config.clone(),
            eps: config.layer_norm_eps as f32,
            word_embeddings: weights
                .tensor(
                    "embeddings.word_embeddings.weight",
                    &[config.vocab_size, hidden],
                )?
                .data,
            position_embeddings: weights
                .tensor(
                    "embeddings.position_embeddings.weight",
                    &[config.max_position_embeddings, hidden],
                )?
                .data,
            token_type_zero: token_types.data[..hidden].to_vec(),
            embeddings_norm: norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    /// Mean-pooled, L2-normalised embeddings of `sequences` (ids checked by the caller:
    /// non-empty, in the vocabulary, at most `max_position_embeddings` long), row-major
    /// `[sequences.len(), hidden]`.
    pub(crate) fn embed(&self, sequences: &[&[u32]]) -> Vec<f32> {
        let hidden = self.config.hidden_size;
        let tokens: usize = sequences.iter().map(|s| s.len()).sum();

        let mut x = vec![0.0f32; tokens * hidden];
        let mut rows = x.chunks_exact_mut(hidden);
        for ids in sequences {
            for (position, (&id, row)) in ids.iter().zip(&mut rows).enumerate() {
                let word = &self.word_embeddings[id as usize * hidden..][..hidden];
                let place = &self.position_embeddings[position * hidden..][..hidden];
                for (((r, w), p), t) in row
                    .iter_mut()
                    .zip(word)
                    .zip(place)
                    .zip(&self.token_type_zero)
                {
                    // HF's order: (word + token type) + position.
                    *r = (w + t) + p;
                }
            }
        }
        let norm = &self.embeddings_norm;
        x.par_chunks_mut(chunk_rows(tokens) * hidden)
            .for_each(|rows| kernels::layer_norm(rows, &norm.gamma, &norm.beta, self.eps));

        let mut qkv = vec![0.0f32; tokens * 3 * hidden];
        let mut context = vec![0.0f32; tokens * hidden];
        let mut projected = vec![0.0f32; tokens * hidden];
        let mut intermediate = vec![0.0f32; tokens * self.config.intermediate_size];
        for layer in &self.layers {
            linear(&x, &layer.qkv, &mut qkv, Tail::None);
            self.attention(&qkv, sequences, &mut context);
            let tail = Tail::AddNorm {
                residual: &mut x,
                norm: &layer.attention_norm,
                eps: self.eps,
            };
            linear(&context, &layer.attention_output, &mut projected, tail);
            linear(&x, &layer.intermediate, &mut intermediate, Tail::Gelu);
            let tail = Tail::AddNorm {
                residual: &mut x,
                norm: &layer.output_norm,
                eps: self.eps,
            };
            linear(&intermediate, &layer.output, &mut projected, tail);
        }

        let mut pooled = vec![0.0f32; sequences.len() * hidden];
        let mut rest = x.as_slice();
        for (ids, out) in sequences.iter().zip(pooled.chunks_exact_mut(hidden)) {
            let (rows, tail) = rest.split_at(ids.len() * hidden);
            kernels::mean_pool_normalise(rows, out);
            rest = tail;
        }
        pooled
    }

    /// Self-attention of each sequence over its own tokens only, sequences in parallel.
    fn attention(&self, qkv: &[f32], sequences: &[&[u32]], context: &mut [f32]) {
        let hidden = self.config.hidden_size;
        let mut parts = Vec::with_capacity(sequences.len());
        let (mut qkv_rest, mut context_rest) = (qkv, context);
        for ids in sequences {
            let (q, q_tail) = qkv_rest.split_at(ids.len() * 3 * hidden);
            let (c, c_tail) = context_rest.split_at_mut(ids.len() * hidden);
            parts.push((q, c));
            (qkv_rest, context_rest) = (q_tail, c_tail);
        }
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.head_dim();
        parts.into_par_iter().for_each_init(
            kernels::AttentionScratch::default,
            |scratch, (qkv, context)| kernels::attend(qkv, context, heads, head_dim, scratch),
        );
    }
}

/// Rows per parallel chunk: about 96 (a `96 × 384` slice of activations is 144 KiB, so it
/// stays in L2 while every weight panel passes over it), a multiple of the microkernel's rows,
/// and enough chunks to give every thread the same number.
fn chunk_rows(rows: usize) -> usize {
    const TARGET: usize = 96;
    let threads = rayon::current_num_threads().max(1);
    let chunks = rows.div_ceil(TARGET).div_ceil(threads) * threads;
    rows.div_ceil(chunks.max(1)).next_multiple_of(MR).max(MR)
}

/// `out = a·W + b` over all rows, chunks in parallel, then `tail` on each chunk.
fn linear(a: &[f32], weight: &PackedLinear, out: &mut [f32], tail: Tail<'_>) {
    let (k, n) = (weight.inputs(), weight.outputs());
    let rows = a.len() / k;
    if rows == 0 {
        return;
    }
    let chunk = chunk_rows(rows);
    let work = out.par_chunks_mut(chunk * n).zip(a.par_chunks(chunk * k));
    match tail {
        Tail::None => work.for_each(|(out, a)| weight.forward_rows(a, out)),
        Tail::Gelu => work.for_each(|(out, a)| {
            weight.forward_rows(a, out);
            kernels::gelu(out);
        }),
        Tail::AddNorm {
            residual,
            norm,
            eps,
        } => work
            .zip(residual.par_chunks_mut(chunk * n))
            .for_each(|((out, a), residual)| {
                weight.forward_rows(a, out);
                kernels::add_layer_norm(residual, out, &norm.gamma, &norm.beta, eps);
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_rows_evenly() {
        for rows in [1, 5, 6, 7, 95, 96, 97, 500, 4096] {
            let chunk = chunk_rows(rows);
            assert!(chunk.is_multiple_of(MR) && chunk >= MR, "{rows}: {chunk}");
            assert!(chunk <= 96.max(MR) + MR, "{rows}: {chunk}");
        }
    }
}
