//! The encoder's tensors from a HF checkpoint (`model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), read through llama's memory-mapped
//! [`SafetensorsSource`] (each header parsed once) and checked against the shapes the config
//! implies.

use std::path::{Path, PathBuf};

use llama::safetensors_source::{INDEX_FILE, SINGLE_FILE};
use llama::{SafetensorsSource, TensorSource};

use crate::{Error, Result};

/// A host copy of one tensor as `f32`, row-major.
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

/// The checkpoint of one model directory.
pub struct Weights {
    source: SafetensorsSource,
    /// The file errors name: `model.safetensors`, or the shard index.
    path: PathBuf,
    /// Checkpoints saved from `BertForX` heads prefix every encoder name with `bert.`.
    prefix: &'static str,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Weights {
    /// Opens `model_dir/model.safetensors.index.json` (sharded) if present, else
    /// `model_dir/model.safetensors`.
    pub fn open(model_dir: &Path) -> Result<Self> {
        let source = SafetensorsSource::open(model_dir)?;
        let path = match model_dir.join(INDEX_FILE) {
            index if index.exists() => index,
            _ => model_dir.join(SINGLE_FILE),
        };
        let names = source.tensor_names();
        let bare = names.iter().any(|n| n.starts_with("embeddings."));
        let prefix = if !bare && names.iter().any(|n| n.starts_with("bert.embeddings.")) {
            "bert."
        } else {
            ""
        };
        Ok(Self {
            source,
            path,
            prefix,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor `name` (without any `bert.` prefix) as `f32`, checked to have `expected` shape.
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let full_name = format!("{}{name}", self.prefix);
        let tensor = match self.source.tensor(&full_name) {
            Ok(tensor) => tensor,
            Err(llama::Error::MissingTensor { .. }) => {
                return Err(Error::MissingTensor {
                    path: self.path.clone(),
                    name: full_name,
                });
            }
            Err(other) => return Err(other.into()),
        };
        if tensor.shape != expected {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                name: full_name,
                expected: expected.to_vec(),
                actual: tensor.shape.clone(),
            });
        }
        Ok(HostTensor {
            shape: expected.to_vec(),
            data: tensor.to_f32_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::{Dtype, TensorView};

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
        let path = dir.join(SINGLE_FILE);
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
        write(
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
        let weights = Weights::open(dir.path()).unwrap();
        let a = weights.tensor("embeddings.a", &[2, 3]).unwrap();
        assert_eq!(a.data, vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(a.transposed().data, vec![1., 4., 2., 5., 3., 6.]);
        assert_eq!(a.transposed().shape, vec![3, 2]);
        assert_eq!(
            weights.tensor("embeddings.h", &[2]).unwrap().data,
            vec![1.5, -2.0]
        );
        assert_eq!(
            weights.tensor("embeddings.b", &[2]).unwrap().data,
            vec![0.25, 3.0]
        );
    }

    #[test]
    fn errors_name_the_tensor_shape_and_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
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
        let weights = Weights::open(dir.path()).unwrap();

        let missing = weights
            .tensor("embeddings.b", &[2])
            .unwrap_err()
            .to_string();
        assert!(missing.contains(SINGLE_FILE), "{missing}");
        assert!(missing.contains("`embeddings.b` is missing"), "{missing}");

        let shape = weights
            .tensor("embeddings.a", &[3])
            .unwrap_err()
            .to_string();
        assert!(
            shape.contains("`embeddings.a` has shape [2], expected [3]"),
            "{shape}"
        );

        let dtype = weights
            .tensor("embeddings.i", &[1])
            .unwrap_err()
            .to_string();
        assert!(
            dtype.contains(SINGLE_FILE) && dtype.contains("`embeddings.i` has dtype I64"),
            "{dtype}"
        );

        let garbage = tempfile::tempdir().unwrap();
        std::fs::write(garbage.path().join(SINGLE_FILE), b"not a safetensors file").unwrap();
        let error = Weights::open(garbage.path()).unwrap_err();
        assert!(
            matches!(error, Error::Weights(llama::Error::Safetensors { .. })),
            "{error}"
        );
        assert!(error.to_string().contains(SINGLE_FILE), "{error}");
    }
}
