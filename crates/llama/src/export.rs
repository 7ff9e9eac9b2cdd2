//! Writing a model as an HF directory (config.json, safetensors weights, tokenizer, generation
//! config) that transformers and our own loader open, and converting a GGUF into one.
//!
//! The directory appears whole or not at all: everything is written into a temporary sibling
//! directory that is renamed into place at the end.
//!
//! ```no_run
//! let summary = llama::convert_gguf_to_hf_dir(
//!     "assets/smollm2-135m-instruct.Q4_1.gguf",
//!     "assets/smollm2-135m-instruct",
//!     llama::HostDType::F32,
//! )?;
//! assert_eq!(summary.weight_files, ["model.safetensors"]);
//! # Ok::<(), llama::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::json;

use crate::config::EosTokenId;
use crate::gguf::GgufModel;
use crate::tensor_source::{HostDType, HostTensor, TensorSource};
use crate::tokenizer::Tokenizer;
use crate::{Error, LlamaConfig, Result};

/// How to write the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    pub dtype: HostDType,
    /// A shard holds at most this many bytes of tensor data (a larger single tensor gets a shard
    /// of its own). Everything in one file when the total fits, as HF does.
    pub max_shard_bytes: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: HostDType::F32,
            // HF's `save_pretrained` default ("5GB").
            max_shard_bytes: 5_000_000_000,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Weight files, relative to the directory.
    pub weight_files: Vec<String>,
    pub tensor_count: usize,
    /// Bytes of tensor data (the index's `total_size`).
    pub total_tensor_bytes: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (the project's one helper:
/// [`records::jsonl::write_atomic`]).
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(records::jsonl::write_atomic(path, bytes)?)
}

/// A tensor converted to the export dtype, ready for safetensors.
struct EncodedTensor {
    shape: Vec<usize>,
    dtype: HostDType,
    bytes: Vec<u8>,
}

impl safetensors::View for &EncodedTensor {
    fn dtype(&self) -> safetensors::Dtype {
        match self.dtype {
            HostDType::F32 => safetensors::Dtype::F32,
            HostDType::F16 => safetensors::Dtype::F16,
            HostDType::BF16 => safetensors::Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// `tensor` in `dtype`, little-endian (converted in parallel when the dtype changes).
fn encode(tensor: HostTensor<'_>, dtype: HostDType) -> EncodedTensor {
    let bytes = if tensor.dtype == dtype {
        tensor.bytes.into_owned()
    } else {
        let values = tensor.to_f32_vec();
        match dtype {
            HostDType::F32 => bytemuck::cast_slice(&values).to_vec(),
            HostDType::BF16 => {
                let converted: Vec<bf16> = values.par_iter().map(|&v| bf16::from_f32(v)).collect();
                bytemuck::cast_slice(&converted).to_vec()
            }
            HostDType::F16 => {
                let converted: Vec<f16> = values.par_iter().map(|&v| f16::from_f32(v)).collect();
                bytemuck::cast_slice(&converted).to_vec()
            }
        }
    };
    EncodedTensor {
        shape: tensor.shape,
        dtype,
        bytes,
    }
}

fn torch_dtype_name(dtype: HostDType) -> &'static str {
    match dtype {
        HostDType::F32 => "float32",
        HostDType::F16 => "float16",
        HostDType::BF16 => "bfloat16",
    }
}

fn write_shard(path: &Path, tensors: &[(String, EncodedTensor)]) -> Result<()> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(
        tensors.iter().map(|(name, tensor)| (name.as_str(), tensor)),
        Some(metadata),
        path,
    )
    .map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // safetensors writes through a private (0600) temp file; give it the usual file mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(io_error(path))?;
    }
    Ok(())
}

/// Writes weights into `dir` as `model.safetensors`, or as `model-0000i-of-0000n.safetensors`
/// shards plus `model.safetensors.index.json` when they exceed `max_shard_bytes`.
fn write_weights(
    dir: &Path,
    weights: &dyn TensorSource,
    options: &ExportOptions,
) -> Result<ExportSummary> {
    let names = weights.tensor_names();
    // Shards are filled in name order and written as they fill, so at most one shard is in memory;
    // their final names need the shard count, so they are renamed at the end.
    let mut shards: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let mut current: Vec<(String, EncodedTensor)> = Vec::new();
    let mut current_bytes = 0u64;
    let mut total_bytes = 0u64;
    let flush = |shards: &mut Vec<(PathBuf, Vec<String>)>,
                 current: &mut Vec<(String, EncodedTensor)>|
     -> Result<()> {
        let path = dir.join(format!(".shard-{}.safetensors", shards.len()));
        write_shard(&path, current)?;
        shards.push((path, current.drain(..).map(|(n, _)| n).collect()));
        Ok(())
    };
    for name in &names {
        let tensor = encode(weights.tensor(name)?, options.dtype);
        let size = tensor.bytes.len() as u64;
        if !current.is_empty() && current_bytes + size > options.max_shard_bytes {
            flush(&mut shards, &mut current)?;
            current_bytes = 0;
        }
        current_bytes += size;
        total_bytes += size;
        current.push((name.clone(), tensor));
    }
    if !current.is_empty() || shards.is_empty() {
        flush(&mut shards, &mut current)?;
    }

    let count = shards.len();
    let mut weight_files = Vec::with_capacity(count);
    let mut weight_map = BTreeMap::new();
    for (index, (temp_path, shard_names)) in shards.iter().enumerate() {
        let file_name = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", index + 1)
        };
        let final_path = dir.join(&file_name);
        std::fs::rename(temp_path, &final_path).map_err(io_error(&final_path))?;
        for name in shard_names {
            weight_map.insert(name.clone(), file_name.clone());
        }
        weight_files.push(file_name);
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map});
        write_file_atomically(
            &dir.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)
                .expect("json")
                .as_bytes(),
        )?;
    }
    Ok(ExportSummary {
        weight_files,
        tensor_count: names.len(),
        total_tensor_bytes: total_bytes,
    })
}

fn generation_config_json(config: &LlamaConfig, tokenizer: &Tokenizer) -> serde_json::Value {
    let eos: Vec<u32> = if tokenizer.eos_token_ids().is_empty() {
        config.eos_token_ids()
    } else {
        tokenizer.eos_token_ids().to_vec()
    };
    let mut generation = serde_json::Map::new();
    if let Some(bos) = config.bos_token_id.or_else(|| tokenizer.bos_token_id()) {
        generation.insert("bos_token_id".into(), json!(bos));
    }
    match eos.as_slice() {
        [] => {}
        [one] => {
            generation.insert("eos_token_id".into(), json!(one));
        }
        many => {
            generation.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(pad) = config.pad_token_id.or_else(|| tokenizer.pad_token_id()) {
        generation.insert("pad_token_id".into(), json!(pad));
    }
    serde_json::Value::Object(generation)
}

pub use records::jsonl::replace_dir_atomically;

/// Writes a complete HF model directory at `dir`, replacing any directory already there only
/// once the new one is complete.
pub fn write_hf_dir(
    dir: impl AsRef<Path>,
    config: &LlamaConfig,
    weights: &dyn TensorSource,
    tokenizer: &Tokenizer,
    options: ExportOptions,
) -> Result<ExportSummary> {
    replace_dir_atomically(dir, |staging| {
        let mut hf_config = config.clone();
        hf_config.torch_dtype = Some(torch_dtype_name(options.dtype).to_string());
        if hf_config.eos_token_id.is_none() && !tokenizer.eos_token_ids().is_empty() {
            hf_config.eos_token_id = Some(EosTokenId::Many(tokenizer.eos_token_ids().to_vec()));
        }
        let write_json = |file: &str, value: &serde_json::Value| {
            write_file_atomically(
                &staging.join(file),
                serde_json::to_string_pretty(value)
                    .expect("json")
                    .as_bytes(),
            )
        };
        write_json("config.json", &hf_config.to_hf_json())?;
        write_json(
            "generation_config.json",
            &generation_config_json(config, tokenizer),
        )?;
        tokenizer.save(staging)?;
        write_weights(staging, weights, &options)
    })
}

/// Writes every tensor of `tensors` into one safetensors file (header metadata
/// `format: pt`, as PyTorch-side loaders such as PEFT expect).
pub fn write_safetensors_file(
    path: &Path,
    tensors: &dyn TensorSource,
    dtype: HostDType,
) -> Result<()> {
    let encoded: Vec<(String, EncodedTensor)> = tensors
        .tensor_names()
        .into_iter()
        .map(|name| Ok((name.clone(), encode(tensors.tensor(&name)?, dtype))))
        .collect::<Result<_>>()?;
    write_shard(path, &encoded)
}

/// Converts a llama.cpp Llama GGUF into an HF directory (weights dequantised, Q/K permutation
/// undone, tokenizer rebuilt, chat template kept) with weights stored as `dtype`.
pub fn convert_gguf_to_hf_dir(
    gguf_path: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
    dtype: HostDType,
) -> Result<ExportSummary> {
    let model = GgufModel::open(gguf_path.as_ref())?;
    let tokenizer = Tokenizer::from_gguf(&model)?;
    write_hf_dir(
        out_dir,
        model.config(),
        &model,
        &tokenizer,
        ExportOptions {
            dtype,
            ..ExportOptions::default()
        },
    )
}
