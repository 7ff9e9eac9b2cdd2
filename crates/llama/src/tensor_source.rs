//! Named host tensors in HF layout: the common currency between weight formats
//! (safetensors, GGUF) and the model, and between a model and its exports.

use std::borrow::Cow;

use crate::Result;

/// Element type of a host tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDType {
    F32,
    F16,
    BF16,
}

impl HostDType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            HostDType::F32 => 4,
            HostDType::F16 | HostDType::BF16 => 2,
        }
    }
}

/// A tensor in host memory, little-endian, row-major. `bytes` borrows from a memory map
/// where the format allows it, so loading does not copy weights it does not need to convert.
#[derive(Debug, Clone)]
pub struct HostTensor<'a> {
    pub shape: Vec<usize>,
    pub dtype: HostDType,
    pub bytes: Cow<'a, [u8]>,
}

impl HostTensor<'_> {
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (copying and converting where needed).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            HostDType::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            HostDType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            HostDType::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> HostTensor<'static> {
        HostTensor {
            shape,
            dtype: HostDType::F32,
            bytes: Cow::Owned(bytemuck::cast_slice(values).to_vec()),
        }
    }
}

/// Something that yields weights by their HF name
/// (`model.layers.0.self_attn.q_proj.weight`, `model.embed_tokens.weight`, `lm_head.weight`, ...).
///
/// Implemented by the safetensors reader, the GGUF reader (which renames, dequantises and
/// undoes llama.cpp's Q/K permutation) and by a loaded model for export.
pub trait TensorSource {
    /// HF names of every tensor this source holds, in a stable order.
    fn tensor_names(&self) -> Vec<String>;
    /// The tensor called `name`; `Error::MissingTensor` when absent.
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>>;
}

/// Memory-maps a checkpoint file read-only; an error names the file.
pub(crate) fn map_read_only(path: &std::path::Path) -> Result<memmap2::Mmap> {
    let io = |source| crate::Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; a checkpoint rewritten or truncated while it is read is
    // outside what any loader can defend against (HF's loaders map files the same way).
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}
