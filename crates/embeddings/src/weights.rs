//! Reads a HF `model.safetensors` through a memory map into host `f32` buffers, checking each
//! tensor's name and shape against what the config implies.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

use crate::{Error, Result};

/// A host copy of one tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// `[rows, cols]` → `[cols, rows]` (HF `Linear` stores `[out, in]`; burn's `linear` takes `[in, out]`).
    pub fn transposed(&self) -> Self {
        let [rows, cols] = [self.shape[0], self.shape[1]];
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        Self {
            shape: vec![cols, rows],
            data,
        }
    }
}

/// A memory-mapped safetensors file. Tensors are converted to `f32` on request.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Checkpoints saved from `BertForX` heads prefix every encoder name with `bert.`.
    prefix: &'static str,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("bytes", &self.mmap.len())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the file is opened read-only and only read through this map; like every
        // mmap-based loader we rely on nobody truncating a checkpoint while it is loaded.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut this = Self {
            path: path.to_path_buf(),
            mmap,
            prefix: "",
        };
        let names: Vec<String> = this
            .parse()?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        let bare = names.iter().any(|n| n.starts_with("embeddings."));
        if !bare && names.iter().any(|n| n.starts_with("bert.embeddings.")) {
            this.prefix = "bert.";
        }
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|error| Error::Safetensors {
            path: self.path.clone(),
            message: error.to_string(),
        })
    }

    /// The tensor `name` (without any `bert.` prefix) as `f32`, checked to have `expected` shape.
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let tensors = self.parse()?;
        let full_name = format!("{}{name}", self.prefix);
        let view = tensors
            .tensor(&full_name)
            .map_err(|_| Error::MissingTensor {
                path: self.path.clone(),
                name: full_name.clone(),
            })?;
        if view.shape() != expected {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                name: full_name,
                expected: expected.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        let bytes = view.data();
        // Safetensors data is little-endian and may sit at any alignment in the map: decode
        // element by element rather than casting the slice.
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDType {
                    path: self.path.clone(),
                    name: full_name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(HostTensor {
            shape: expected.to_vec(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::TensorView;

    use super::*;

    fn write(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> PathBuf {
        let views: HashMap<String, TensorView<'_>> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                (
                    name.to_string(),
                    TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        path
    }

    fn le_f32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_f32_f16_bf16_and_strips_bert_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let f16: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = [0.25f32, 3.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let path = write(
            dir.path(),
            &[
                (
                    "bert.embeddings.a",
                    Dtype::F32,
                    vec![2, 3],
                    le_f32(&[1., 2., 3., 4., 5., 6.]),
                ),
                ("bert.embeddings.h", Dtype::F16, vec![2], f16),
                ("bert.embeddings.b", Dtype::BF16, vec![2], bf16),
            ],
        );
        let file = SafetensorsFile::open(&path).unwrap();
        let a = file.tensor("embeddings.a", &[2, 3]).unwrap();
        assert_eq!(a.data, vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(a.transposed().data, vec![1., 4., 2., 5., 3., 6.]);
        assert_eq!(a.transposed().shape, vec![3, 2]);
        assert_eq!(
            file.tensor("embeddings.h", &[2]).unwrap().data,
            vec![1.5, -2.0]
        );
        assert_eq!(
            file.tensor("embeddings.b", &[2]).unwrap().data,
            vec![0.25, 3.0]
        );
    }

    #[test]
    fn errors_name_the_tensor_shape_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &[
                ("embeddings.a", Dtype::F32, vec![2], le_f32(&[1., 2.])),
                (
                    "embeddings.i",
                    Dtype::I64,
                    vec![1],
                    7i64.to_le_bytes().to_vec(),
                ),
            ],
        );
        let file = SafetensorsFile::open(&path).unwrap();

        let missing = file.tensor("embeddings.b", &[2]).unwrap_err().to_string();
        assert!(missing.contains("model.safetensors"), "{missing}");
        assert!(missing.contains("`embeddings.b` is missing"), "{missing}");

        let shape = file.tensor("embeddings.a", &[3]).unwrap_err().to_string();
        assert!(
            shape.contains("`embeddings.a` has shape [2], expected [3]"),
            "{shape}"
        );

        let dtype = file.tensor("embeddings.i", &[1]).unwrap_err().to_string();
        assert!(dtype.contains("`embeddings.i` has dtype I64"), "{dtype}");

        std::fs::write(
            dir.path().join("garbage.safetensors"),
            b"not a safetensors file",
        )
        .unwrap();
        let garbage = SafetensorsFile::open(&dir.path().join("garbage.safetensors")).unwrap_err();
        assert!(matches!(garbage, Error::Safetensors { .. }), "{garbage}");
    }
}
