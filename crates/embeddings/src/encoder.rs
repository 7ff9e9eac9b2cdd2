//! [`SentenceEncoder`]: tokenizer + BERT + mean pooling + L2 normalisation, batched.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

use crate::config::BertConfig;
use crate::cpu::CpuBert;
use crate::model::{Bert, mean_pool_normalize, read_f32};
use crate::weights::Weights;
use crate::{Error, Result};
use cpu_kernels::Kernel;

/// Token limit per text, `[CLS]` and `[SEP]` included.
///
/// sentence-transformers reads it from `sentence_bert_config.json` (`max_seq_length: 256` for
/// all-MiniLM-L6-v2); the model's `tokenizer.json` says 128, and BERT's position table allows 512.
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// Files of a sentence-transformers model directory that the encoder reads.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const POOLING_CONFIG_FILE: &str = "1_Pooling/config.json";

/// `n × dim` sentence embeddings, row-major, each row of unit L2 norm; row `i` belongs to
/// input text `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    dim: usize,
    data: Vec<f32>,
}

impl Embeddings {
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, index: usize) -> &[f32] {
        &self.data[index * self.dim..(index + 1) * self.dim]
    }

    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim)
    }

    /// The row-major buffer (`len() × dim()` values).
    pub fn as_flat(&self) -> &[f32] {
        &self.data
    }

    pub fn into_flat(self) -> Vec<f32> {
        self.data
    }
}

#[derive(serde::Deserialize)]
struct PoolingConfig {
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// What runs the model.
#[derive(Debug)]
// One per encoder, never moved in a loop: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Engine {
    /// The host kernels of [`crate::cpu`]: the CPU path (`Device::flex()`).
    Cpu(CpuBert),
    /// burn tensors on a device: a LibTorch GPU, or flex through [`SentenceEncoder::load_burn`].
    Burn(Bert),
}

/// A sentence-transformers BERT model (all-MiniLM-L6-v2 and its kin) on a burn device.
///
/// On the CPU (`Device::flex()`) the model runs on this crate's own kernels (packed batches,
/// no padding; several times faster than burn's flex ops at this model's shapes, see
/// docs/benchmarks.md); on any other device it runs as burn tensors. Both agree with the numpy reference
/// (`tests/golden.rs`).
#[derive(Debug)]
pub struct SentenceEncoder {
    engine: Engine,
    config: BertConfig,
    tokenizer: Tokenizer,
    max_seq_length: usize,
    dir: PathBuf,
}

impl SentenceEncoder {
    /// Loads `model_dir/{config.json, model.safetensors, tokenizer.json}` onto `device`,
    /// truncating texts at [`DEFAULT_MAX_SEQ_LENGTH`] tokens.
    ///
    /// If `1_Pooling/config.json` exists it must ask for mean pooling, the only mode implemented.
    pub fn load(model_dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_max_seq_length(model_dir, device, DEFAULT_MAX_SEQ_LENGTH)
    }

    pub fn load_with_max_seq_length(
        model_dir: &Path,
        device: &Device,
        max_seq_length: usize,
    ) -> Result<Self> {
        Self::load_on(model_dir, device, max_seq_length, is_cpu(device))
    }

    /// As [`Self::load`], but always as burn tensors on `device`, also on `Device::flex()`
    /// (to cross-check the CPU kernels against burn, or to compare their speed).
    pub fn load_burn(model_dir: &Path, device: &Device) -> Result<Self> {
        Self::load_on(model_dir, device, DEFAULT_MAX_SEQ_LENGTH, false)
    }

    fn load_on(
        model_dir: &Path,
        device: &Device,
        max_seq_length: usize,
        host_kernels: bool,
    ) -> Result<Self> {
        let config_path = model_dir.join(CONFIG_FILE);
        let config = BertConfig::from_file(&config_path)?;
        if !(3..=config.max_position_embeddings).contains(&max_seq_length) {
            return Err(Error::InvalidConfig {
                path: config_path,
                field: "max_position_embeddings",
                message: format!(
                    "max_seq_length {max_seq_length} must lie in 3..={} (room for [CLS] x [SEP])",
                    config.max_position_embeddings
                ),
            });
        }
        check_pooling(&model_dir.join(POOLING_CONFIG_FILE))?;
        let tokenizer = load_tokenizer(&model_dir.join(TOKENIZER_FILE), max_seq_length)?;
        let weights = Weights::open(model_dir)?;
        let engine = if host_kernels {
            Engine::Cpu(CpuBert::load(&config, &weights)?)
        } else {
            Engine::Burn(Bert::load(&config, &weights, device)?)
        };
        Ok(Self {
            engine,
            config,
            tokenizer,
            max_seq_length,
            dir: model_dir.to_path_buf(),
        })
    }

    /// The burn model, when the encoder runs as burn tensors (not on the CPU kernels).
    pub fn model(&self) -> Option<&Bert> {
        match &self.engine {
            Engine::Burn(model) => Some(model),
            Engine::Cpu(_) => None,
        }
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// What runs the model, for logs and benchmark tables.
    pub fn implementation(&self) -> &'static str {
        match (&self.engine, Kernel::detect()) {
            (Engine::Burn(_), _) => "burn tensors",
            #[cfg(target_arch = "x86_64")]
            (Engine::Cpu(_), Kernel::Avx2Fma) => "CPU kernels (AVX2+FMA)",
            (Engine::Cpu(_), _) => "CPU kernels (portable)",
        }
    }

    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids per text (`[CLS] … [SEP]`, truncated, unpadded), texts in parallel.
    pub fn tokenize<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .enumerate()
            .map(|(index, text)| {
                self.tokenizer
                    .encode(text.as_ref(), true)
                    .map(|encoding| encoding.get_ids().to_vec())
                    .map_err(|error| Error::Tokenize {
                        index,
                        message: error.to_string(),
                    })
            })
            .collect()
    }

    /// Embeds `texts`, `batch_size` texts per forward pass.
    pub fn encode<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        batch_size: usize,
    ) -> Result<Embeddings> {
        self.encode_with_progress(texts, batch_size, |_, _| {})
    }

    /// As [`Self::encode`], calling `progress(done, total)` after each batch.
    pub fn encode_with_progress<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        batch_size: usize,
        progress: impl FnMut(usize, usize),
    ) -> Result<Embeddings> {
        let ids = self.tokenize(texts)?;
        self.encode_token_ids_with_progress(&ids, batch_size, progress)
    }

    /// Embeds pre-tokenised sequences (each at most `max_position_embeddings` ids).
    pub fn encode_token_ids(
        &self,
        sequences: &[Vec<u32>],
        batch_size: usize,
    ) -> Result<Embeddings> {
        self.encode_token_ids_with_progress(sequences, batch_size, |_, _| {})
    }

    /// Texts are sorted by length and cut into batches so that little padding is computed;
    /// the rows come back in input order.
    pub fn encode_token_ids_with_progress(
        &self,
        sequences: &[Vec<u32>],
        batch_size: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Embeddings> {
        if batch_size == 0 {
            return Err(Error::ZeroBatchSize);
        }
        let config = &self.config;
        for (index, ids) in sequences.iter().enumerate() {
            if ids.is_empty() || ids.len() > config.max_position_embeddings {
                return Err(Error::InvalidSequence {
                    index,
                    message: format!(
                        "{} tokens; expected 1..={} (max_position_embeddings)",
                        ids.len(),
                        config.max_position_embeddings
                    ),
                });
            }
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
                return Err(Error::InvalidSequence {
                    index,
                    message: format!(
                        "token id {id} is outside the vocabulary (size {})",
                        config.vocab_size
                    ),
                });
            }
        }

        let dim = self.dim();
        let mut data = vec![0.0f32; sequences.len() * dim];
        // Longest first: the first batch shows at once whether memory suffices.
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&index| std::cmp::Reverse(sequences[index].len()));
        let mut done = 0;
        for batch in order.chunks(batch_size) {
            let rows: Vec<&[u32]> = batch
                .iter()
                .map(|&index| sequences[index].as_slice())
                .collect();
            let pooled = match &self.engine {
                Engine::Cpu(model) => model.embed(&rows),
                Engine::Burn(model) => read_f32(embed_batch(model, &rows))?,
            };
            for (row, &index) in batch.iter().enumerate() {
                data[index * dim..(index + 1) * dim]
                    .copy_from_slice(&pooled[row * dim..(row + 1) * dim]);
            }
            done += batch.len();
            progress(done, sequences.len());
        }
        Ok(Embeddings { dim, data })
    }
}

/// Whether `device` is the CPU, where the host kernels run instead of burn's flex ops.
fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        return true;
    }
    let _ = device;
    false
}

/// One right-padded forward pass of the burn model → `[B, hidden]` unit vectors on its device.
fn embed_batch(model: &Bert, rows: &[&[u32]]) -> Tensor<2> {
    let device = model.device();
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut tokens = vec![0i64; rows.len() * width];
    let mut mask = vec![0i64; rows.len() * width];
    for (row, ids) in rows.iter().enumerate() {
        for (column, &id) in ids.iter().enumerate() {
            tokens[row * width + column] = i64::from(id);
            mask[row * width + column] = 1;
        }
    }
    let has_padding = rows.iter().any(|r| r.len() < width);
    let shape = [rows.len(), width];
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, shape), device);
    let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, shape), device);
    let hidden = model.forward(tokens, mask.clone(), has_padding);
    mean_pool_normalize(hidden, mask)
}

fn check_pooling(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let pooling: PoolingConfig = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let others = pooling.pooling_mode_cls_token
        || pooling.pooling_mode_max_tokens
        || pooling.pooling_mode_mean_sqrt_len_tokens;
    if !pooling.pooling_mode_mean_tokens || others {
        return Err(Error::InvalidConfig {
            path: path.to_path_buf(),
            field: "pooling_mode_mean_tokens",
            message: "only mean pooling (and nothing else) is implemented".to_string(),
        });
    }
    Ok(())
}

/// The model's tokenizer with its fixed padding removed (batches are padded here, with a mask)
/// and truncation set to `max_seq_length`.
fn load_tokenizer(path: &Path, max_seq_length: usize) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    let load_error = |message: String| Error::TokenizerLoad {
        path: path.to_path_buf(),
        message,
    };
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|error| load_error(error.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_seq_length,
            ..Default::default()
        }))
        .map_err(|error| load_error(error.to_string()))?;
    Ok(tokenizer)
}
