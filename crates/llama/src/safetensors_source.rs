//! HF safetensors checkpoints (`model.safetensors`, or shards listed in
//! `model.safetensors.index.json`), memory-mapped: tensors borrow their bytes from the map.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata};

use crate::tensor_source::{HostDType, HostTensor, TensorSource};
use crate::{Error, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of one HF model directory.
pub struct SafetensorsSource {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// Tensor names: embedding, layers in numeric order, the rest, then `lm_head`.
    names: Vec<String>,
    shard_of: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsSource")
            .field("dir", &self.dir)
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.names.len())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsSource {
    /// Opens `model_dir/model.safetensors.index.json` (sharded) if present, else
    /// `model_dir/model.safetensors`.
    pub fn open(model_dir: &Path) -> Result<Self> {
        let index_path = model_dir.join(INDEX_FILE);
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| Error::Io {
                path: index_path.clone(),
                source,
            })?;
            let index: Index = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: index_path.clone(),
                source,
            })?;
            let mut shard_files: Vec<&String> = index.weight_map.values().collect();
            shard_files.sort();
            shard_files.dedup();
            let mut shards = Vec::with_capacity(shard_files.len());
            for file in &shard_files {
                let path = model_dir.join(file);
                if !path.exists() {
                    return Err(Error::MissingShard {
                        path: index_path.clone(),
                        shard: file.to_string(),
                    });
                }
                shards.push(Shard::open(&path)?);
            }
            let source = Self::from_shards(model_dir, shards);
            // The index must not promise tensors its shards lack.
            for (name, file) in &index.weight_map {
                if !source.shard_of.contains_key(name) {
                    return Err(Error::Safetensors {
                        path: model_dir.join(file),
                        message: format!(
                            "tensor `{name}` listed in {INDEX_FILE} is not in this shard"
                        ),
                    });
                }
            }
            Ok(source)
        } else {
            let path = model_dir.join(SINGLE_FILE);
            if !path.exists() {
                return Err(Error::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("neither {SINGLE_FILE} nor {INDEX_FILE} exists"),
                    ),
                });
            }
            let shard = Shard::open(&path)?;
            Ok(Self::from_shards(model_dir, vec![shard]))
        }
    }

    fn from_shards(dir: &Path, shards: Vec<Shard>) -> Self {
        let mut names = Vec::new();
        let mut shard_of = HashMap::new();
        for (index, shard) in shards.iter().enumerate() {
            for name in shard.metadata.offset_keys() {
                shard_of.insert(name.clone(), index);
                names.push(name);
            }
        }
        names.sort_by_key(|n| hf_order_key(n));
        Self {
            dir: dir.to_path_buf(),
            shards,
            names,
            shard_of,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Sorts `model.layers.10` after `model.layers.9` for a stable, readable order across shards.
fn hf_order_key(name: &str) -> (u8, usize, String) {
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let (number, tail) = rest.split_once('.').unwrap_or((rest, ""));
        if let Ok(layer) = number.parse::<usize>() {
            return (1, layer, tail.to_string());
        }
    }
    match name {
        "model.embed_tokens.weight" => (0, 0, String::new()),
        "lm_head.weight" => (3, 0, String::new()),
        _ => (2, 0, name.to_string()),
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let mmap = crate::tensor_source::map_read_only(path)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let missing = || Error::MissingTensor {
            name: name.to_string(),
            source_description: self.dir.display().to_string(),
        };
        let shard = &self.shards[*self.shard_of.get(name).ok_or_else(missing)?];
        let info = shard.metadata.info(name).ok_or_else(missing)?;
        let dtype = match info.dtype {
            Dtype::F32 => HostDType::F32,
            Dtype::F16 => HostDType::F16,
            Dtype::BF16 => HostDType::BF16,
            other => {
                return Err(Error::Safetensors {
                    path: shard.path.clone(),
                    message: format!(
                        "tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 are supported"
                    ),
                });
            }
        };
        let (start, end) = info.data_offsets;
        Ok(HostTensor {
            shape: info.shape.clone(),
            dtype,
            bytes: Cow::Borrowed(&shard.mmap[shard.data_start + start..shard.data_start + end]),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::tensor::{Device, Int, Tensor, TensorData};
    use safetensors::tensor::TensorView;

    use super::*;
    use crate::model::tests::{tiny_model, to_vec};
    use crate::{Llama, OwnedTensors};

    fn write_safetensors(path: &Path, tensors: &OwnedTensors, names: &[String]) {
        let views: Vec<(String, TensorView<'_>)> = names
            .iter()
            .map(|name| {
                let t = tensors.get(name).unwrap();
                let dtype = match t.dtype {
                    HostDType::F32 => Dtype::F32,
                    HostDType::F16 => Dtype::F16,
                    HostDType::BF16 => Dtype::BF16,
                };
                (
                    name.clone(),
                    TensorView::new(dtype, t.shape.clone(), &t.bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn logits(model: &Llama, device: &Device) -> Vec<f32> {
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(vec![7i64, 8, 9], [1, 3]), device);
        to_vec(model.forward(tokens, Tensor::ones([1, 3], device), None))
    }

    #[test]
    fn single_file_loads_borrowed_and_matches() {
        let (model, device) = tiny_model(31);
        let tensors = model.tensors();
        let dir = tempfile::tempdir().unwrap();
        write_safetensors(
            &dir.path().join(SINGLE_FILE),
            &tensors,
            &tensors.tensor_names(),
        );
        let source = SafetensorsSource::open(dir.path()).unwrap();
        let mut names = source.tensor_names();
        assert_eq!(names[0], "model.embed_tokens.weight");
        assert_eq!(names[1], "model.layers.0.input_layernorm.weight");
        let mut expected = tensors.tensor_names();
        names.sort();
        expected.sort();
        assert_eq!(names, expected);
        let embed = source.tensor("model.embed_tokens.weight").unwrap();
        assert!(
            matches!(embed.bytes, Cow::Borrowed(_)),
            "bytes should borrow from the mmap"
        );
        let loaded = Llama::from_source(model.config(), &source, &device).unwrap();
        assert_eq!(logits(&model, &device), logits(&loaded, &device));
        match source.tensor("no.such.weight") {
            Err(Error::MissingTensor { name, .. }) => assert_eq!(name, "no.such.weight"),
            other => panic!("expected MissingTensor, got {other:?}"),
        }
    }

    fn write_sharded(dir: &Path, tensors: &OwnedTensors) {
        let names = tensors.tensor_names();
        let (first, second) = names.split_at(names.len() / 2);
        let mut weight_map = HashMap::new();
        for (file, part) in [
            ("model-00001-of-00002.safetensors", first),
            ("model-00002-of-00002.safetensors", second),
        ] {
            write_safetensors(&dir.join(file), tensors, part);
            for name in part {
                weight_map.insert(name.clone(), file.to_string());
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        std::fs::write(dir.join(INDEX_FILE), index.to_string()).unwrap();
    }

    #[test]
    fn sharded_index_loads_in_hf_order() {
        let (model, device) = tiny_model(32);
        let tensors = model.tensors();
        let dir = tempfile::tempdir().unwrap();
        write_sharded(dir.path(), &tensors);
        let source = SafetensorsSource::open(dir.path()).unwrap();
        let names = source.tensor_names();
        assert_eq!(names.len(), tensors.len());
        assert_eq!(names[0], "model.embed_tokens.weight");
        assert_eq!(names.last().unwrap(), "lm_head.weight");
        let loaded = Llama::from_source(model.config(), &source, &device).unwrap();
        assert_eq!(logits(&model, &device), logits(&loaded, &device));
    }

    #[test]
    fn missing_shard_is_an_error() {
        let (model, _) = tiny_model(33);
        let dir = tempfile::tempdir().unwrap();
        write_sharded(dir.path(), &model.tensors());
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        match SafetensorsSource::open(dir.path()) {
            Err(Error::MissingShard { shard, path }) => {
                assert_eq!(shard, "model-00002-of-00002.safetensors");
                assert!(path.ends_with(INDEX_FILE));
            }
            other => panic!("expected MissingShard, got {other:?}"),
        }
    }

    #[test]
    fn missing_checkpoint_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = SafetensorsSource::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(SINGLE_FILE), "{err}");
    }
}
