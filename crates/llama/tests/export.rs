//! HF-directory export: the converted SmolLM2 re-read with the `safetensors` crate equals the GGUF
//! source; sharding and the index; atomic replacement.

mod common;

use std::borrow::Cow;
use std::time::Instant;

use llama::{
    Error, ExportOptions, HostDType, HostTensor, LlamaConfig, Result, TensorSource, Tokenizer,
    convert_gguf_to_hf_dir, write_hf_dir,
};
use safetensors::SafeTensors;

#[test]
fn converted_smollm2_round_trips() {
    let model = common::smollm2();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("smollm2");
    let started = Instant::now();
    let summary =
        convert_gguf_to_hf_dir(common::smollm2_gguf_path(), &out, HostDType::F32).unwrap();
    eprintln!(
        "convert_gguf_to_hf_dir (f32) took {:.2?}",
        started.elapsed()
    );
    assert_eq!(summary.weight_files, vec!["model.safetensors".to_string()]);
    assert_eq!(summary.tensor_count, 272);
    // 134.5M parameters (tied embeddings) as f32.
    assert_eq!(summary.total_tensor_bytes, 4 * 134_515_008);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let safetensors = SafeTensors::deserialize(&bytes).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o644,
            "weights are readable like the other files"
        );
    }
    let mut names = safetensors
        .names()
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    names.sort();
    assert_eq!(names, model.tensor_names());
    for name in &names {
        let view = safetensors.tensor(name).unwrap();
        let source = model.tensor(name).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(view.shape(), source.shape.as_slice(), "{name}");
        assert!(view.data() == source.bytes.as_ref(), "{name}: bytes differ");
    }

    let mut config = LlamaConfig::from_file(&out.join("config.json")).unwrap();
    assert_eq!(config.torch_dtype.as_deref(), Some("float32"));
    config.torch_dtype = None;
    assert_eq!(&config, model.config());
    let raw_config = common::read_json(&out.join("config.json"));
    assert_eq!(raw_config["architectures"][0], "LlamaForCausalLM");
    let generation = common::read_json(&out.join("generation_config.json"));
    assert_eq!(
        (
            generation["bos_token_id"].as_u64(),
            generation["eos_token_id"].as_u64()
        ),
        (Some(1), Some(2))
    );

    let tokenizer = Tokenizer::from_hf_dir(&out).unwrap();
    let ids = tokenizer
        .encode("<|im_start|>user\nWhat is 12345?<|im_end|>", false)
        .unwrap();
    assert_eq!(
        ids,
        Tokenizer::from_gguf(model)
            .unwrap()
            .encode("<|im_start|>user\nWhat is 12345?<|im_end|>", false)
            .unwrap()
    );
    assert!(tokenizer.chat_template().unwrap().is_some());

    // Nothing but the target is left in the parent directory.
    let leftovers: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("smollm2")]);
}

/// A small in-memory source; `fail_on` makes one tensor error, to test atomicity.
struct SmallSource {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    fail_on: Option<String>,
}

impl SmallSource {
    fn new() -> Self {
        let tensors = (0..6)
            .map(|i| {
                let shape = vec![8 + i, 16];
                let values = (0..shape[0] * shape[1])
                    .map(|v| (v as f32 * 0.37 + i as f32).sin())
                    .collect();
                (
                    format!("model.layers.{i}.mlp.up_proj.weight"),
                    shape,
                    values,
                )
            })
            .collect();
        Self {
            tensors,
            fail_on: None,
        }
    }
}

impl TensorSource for SmallSource {
    fn tensor_names(&self) -> Vec<String> {
        self.tensors.iter().map(|(n, _, _)| n.clone()).collect()
    }
    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        if self.fail_on.as_deref() == Some(name) {
            return Err(Error::InvalidArgument(format!("refusing {name}")));
        }
        let (_, shape, values) = self.tensors.iter().find(|(n, _, _)| n == name).unwrap();
        Ok(HostTensor {
            shape: shape.clone(),
            dtype: HostDType::F32,
            bytes: Cow::Owned(bytemuck::cast_slice(values).to_vec()),
        })
    }
}

fn small_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_gguf(common::smollm2()).unwrap())
}

#[test]
fn sharded_bf16_export_has_a_consistent_index() {
    let source = SmallSource::new();
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("sharded");
    let options = ExportOptions {
        dtype: HostDType::BF16,
        max_shard_bytes: 800, // each tensor is 256..416 bf16 bytes: two or three per shard
    };
    let summary = write_hf_dir(
        &out,
        &LlamaConfig::tiny_for_tests(),
        &source,
        small_tokenizer(),
        options,
    )
    .unwrap();
    let count = summary.weight_files.len();
    assert!(count >= 3, "{:?}", summary.weight_files);
    for (i, file) in summary.weight_files.iter().enumerate() {
        assert_eq!(
            file,
            &format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        );
    }
    assert!(!out.join("model.safetensors").exists());
    let index = common::read_json(&out.join("model.safetensors.index.json"));
    let weight_map = index["weight_map"].as_object().unwrap();
    assert_eq!(weight_map.len(), 6);
    let mut total = 0u64;
    for (name, _, values) in &source.tensors {
        let file = weight_map[name].as_str().unwrap();
        let bytes = std::fs::read(out.join(file)).unwrap();
        let shard = SafeTensors::deserialize(&bytes).unwrap();
        let view = shard.tensor(name).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::BF16);
        let expected: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(view.data(), expected.as_slice(), "{name}");
        total += view.data().len() as u64;
    }
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    assert_eq!(summary.total_tensor_bytes, total);
    assert_eq!(
        common::read_json(&out.join("config.json"))["torch_dtype"],
        "bfloat16"
    );
}

#[test]
fn failed_export_leaves_the_previous_directory_untouched() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("model");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("marker"), "previous").unwrap();
    let mut source = SmallSource::new();
    source.fail_on = Some("model.layers.4.mlp.up_proj.weight".into());
    let error = write_hf_dir(
        &out,
        &LlamaConfig::tiny_for_tests(),
        &source,
        small_tokenizer(),
        ExportOptions::default(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("refusing"), "{error}");
    assert_eq!(
        std::fs::read_to_string(out.join("marker")).unwrap(),
        "previous"
    );
    let entries: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("model")],
        "no staging directory left behind"
    );

    // A successful export replaces it whole.
    source.fail_on = None;
    write_hf_dir(
        &out,
        &LlamaConfig::tiny_for_tests(),
        &source,
        small_tokenizer(),
        ExportOptions::default(),
    )
    .unwrap();
    assert!(!out.join("marker").exists());
    assert!(out.join("model.safetensors").exists());
    let entries: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1);
}
