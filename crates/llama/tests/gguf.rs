//! GGUF reader against the `gguf` Python package (tools/golden/gguf_golden.py), on a synthetic file
//! of every supported quantisation type and on the real SmolLM2 file; error cases on hand-built files.

mod common;

use std::path::Path;

use llama::gguf::{GgmlType, GgufFile};
use llama::{Error, GgufModel, HostDType, TensorSource};

fn assert_close(actual: f32, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (f64::from(actual) - expected).abs() <= tolerance * expected.abs().max(1.0),
        "{what}: got {actual}, expected {expected}"
    );
}

#[test]
fn every_quant_type_dequantises_like_gguf_py() {
    let file = GgufFile::open(&common::fixture("gguf/quant_types.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64, "general.alignment is honoured");
    let golden = common::read_json(&common::fixture("golden/quant_types.json"));
    let golden = golden.as_object().unwrap();
    assert_eq!(golden.len(), 8);
    for (name, expected) in golden {
        let info = file
            .tensor_info(name)
            .unwrap_or_else(|| panic!("tensor {name} missing"));
        assert_eq!(
            format!("{:?}", info.ggml_type).to_uppercase(),
            expected["type"].as_str().unwrap()
        );
        let shape: Vec<usize> = expected["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            info.shape(),
            shape,
            "{name}: HF shape is the reversed GGUF dims"
        );
        let values = file.dequantize(info).unwrap();
        let expected_values = expected["values"].as_array().unwrap();
        assert_eq!(values.len(), expected_values.len(), "{name}");
        for (i, (actual, expected)) in values.iter().zip(expected_values).enumerate() {
            // gguf-py computes in float32 numpy; the same operations in the same order give equal bits
            // except where numpy fuses differently, so allow one part in 10^6.
            assert_close(
                *actual,
                expected.as_f64().unwrap(),
                1e-6,
                &format!("{name}[{i}]"),
            );
        }
    }
}

#[test]
fn smollm2_config_comes_from_metadata() {
    let model = common::smollm2();
    let config = model.config();
    assert_eq!(config.vocab_size, 49_152);
    assert_eq!(config.hidden_size, 576);
    assert_eq!(config.intermediate_size, 1536);
    assert_eq!(config.num_hidden_layers, 30);
    assert_eq!(config.num_attention_heads, 9);
    assert_eq!(config.num_kv_heads(), 3);
    assert_eq!(config.head_dim(), 64);
    assert_eq!(config.rope_theta, 100_000.0);
    assert_eq!(config.rms_norm_eps, 1e-5);
    assert_eq!(config.max_position_embeddings, 8192);
    assert!(config.tie_word_embeddings, "no output.weight in the file");
    assert_eq!(config.bos_token_id, Some(1));
    assert_eq!(config.eos_token_ids(), vec![2]);
    assert_eq!(config.pad_token_id, Some(2));
    let names = model.tensor_names();
    assert_eq!(names.len(), 2 + 30 * 9);
    assert!(names.contains(&"model.layers.29.mlp.down_proj.weight".to_string()));
    assert!(!names.contains(&"lm_head.weight".to_string()));
}

#[test]
fn smollm2_tensors_match_gguf_py_in_hf_layout() {
    let model = common::smollm2();
    let golden = common::read_json(&common::fixture("golden/smollm2_tensors.json"));
    for entry in golden.as_array().unwrap() {
        let name = entry["hf_name"].as_str().unwrap();
        let tensor = model.tensor(name).unwrap();
        assert_eq!(tensor.dtype, HostDType::F32);
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(tensor.shape, shape, "{name}");
        let values = tensor.to_f32_vec();
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let abs_sum: f64 = values.iter().map(|&v| f64::from(v).abs()).sum();
        assert!(
            (sum - entry["sum"].as_f64().unwrap()).abs() <= 1e-6 * abs_sum,
            "{name}: sum {sum}"
        );
        assert!(
            (abs_sum / entry["abs_sum"].as_f64().unwrap() - 1.0).abs() < 1e-9,
            "{name}: abs sum {abs_sum}"
        );
        let columns: usize = shape[1..].iter().product();
        for (row, expected) in entry["first_row_sums"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let row_sum: f64 = values[row * columns..(row + 1) * columns]
                .iter()
                .map(|&v| f64::from(v))
                .sum();
            assert_close(
                row_sum as f32,
                expected.as_f64().unwrap(),
                1e-5,
                &format!("{name} row {row} sum"),
            );
        }
        for sample in entry["samples"].as_array().unwrap() {
            let index: Vec<usize> = sample["index"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let flat = index
                .iter()
                .zip(&shape)
                .fold(0, |acc, (&i, &d)| acc * d + i);
            assert_close(
                values[flat],
                sample["value"].as_f64().unwrap(),
                1e-6,
                &format!("{name}{index:?}"),
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Hand-built files for error cases.

enum Kv {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

struct RawTensor {
    name: &'static str,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

fn push_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF v3 file: header, key/values, tensor infos, 32-byte alignment, data.
fn build_gguf(version: u32, kvs: &[(&str, Kv)], tensors: &[RawTensor]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        push_string(&mut out, key);
        match value {
            Kv::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Kv::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Kv::Str(s) => {
                out.extend(8u32.to_le_bytes());
                push_string(&mut out, s);
            }
        }
    }
    let mut offset = 0u64;
    for tensor in tensors {
        push_string(&mut out, tensor.name);
        out.extend((tensor.dims.len() as u32).to_le_bytes());
        for d in &tensor.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(tensor.ggml_type.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (tensor.data.len() as u64).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for tensor in tensors {
        out.extend(&tensor.data);
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    out
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gguf_message(error: Error, path: &Path) -> String {
    match error {
        Error::Gguf {
            path: error_path,
            message,
        } => {
            assert_eq!(error_path, path, "the error names the file");
            message
        }
        other => panic!("expected a GGUF error, got {other:?}"),
    }
}

fn f32_tensor(name: &'static str, n: usize) -> RawTensor {
    RawTensor {
        name,
        dims: vec![n as u64],
        ggml_type: 0,
        data: (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect(),
    }
}

#[test]
fn bad_magic_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = build_gguf(3, &[], &[f32_tensor("x", 4)]);
    bytes[..4].copy_from_slice(b"GGML");
    let path = write_temp(dir.path(), "bad_magic.gguf", &bytes);
    let message = gguf_message(GgufFile::open(&path).unwrap_err(), &path);
    assert!(
        message.contains("bad magic") && message.contains("GGML"),
        "{message}"
    );
}

#[test]
fn unsupported_version_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(dir.path(), "v1.gguf", &build_gguf(1, &[], &[]));
    let message = gguf_message(GgufFile::open(&path).unwrap_err(), &path);
    assert!(message.contains("unsupported GGUF version 1"), "{message}");
}

#[test]
fn truncation_anywhere_is_reported_not_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let full = build_gguf(
        3,
        &[
            ("general.architecture", Kv::Str("llama")),
            ("general.name", Kv::Str("tiny")),
        ],
        &[f32_tensor("a", 8), f32_tensor("b", 8)],
    );
    assert!(GgufFile::open(&write_temp(dir.path(), "full.gguf", &full)).is_ok());
    for cut in [0, 3, 7, 20, 30, 60, 100, full.len() - 40, full.len() - 1] {
        let path = write_temp(dir.path(), &format!("cut{cut}.gguf"), &full[..cut]);
        let message = gguf_message(GgufFile::open(&path).unwrap_err(), &path);
        assert!(message.contains("truncated"), "cut at {cut}: {message}");
    }
    // A cut inside tensor data names the tensor.
    let path = write_temp(dir.path(), "cut_data.gguf", &full[..full.len() - 1]);
    let message = gguf_message(GgufFile::open(&path).unwrap_err(), &path);
    assert!(message.contains("`b`"), "{message}");
}

#[test]
fn unsupported_tensor_type_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let q5_k = RawTensor {
        name: "blk.0.attn_q.weight",
        dims: vec![256],
        ggml_type: 13, // Q5_K: known size, no dequantiser
        data: vec![0; 176],
    };
    let iq = RawTensor {
        name: "mystery",
        dims: vec![256],
        ggml_type: 16, // IQ2_XXS: unknown to this reader
        data: vec![0; 66],
    };
    let path = write_temp(dir.path(), "types.gguf", &build_gguf(3, &[], &[q5_k, iq]));
    let file = GgufFile::open(&path).unwrap();
    let info = file.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Q5_K);
    let message = gguf_message(file.dequantize(info).unwrap_err(), &path);
    assert!(
        message.contains("blk.0.attn_q.weight") && message.contains("Q5_K"),
        "{message}"
    );
    let message = gguf_message(
        file.dequantize(file.tensor_info("mystery").unwrap())
            .unwrap_err(),
        &path,
    );
    assert!(
        message.contains("mystery") && message.contains("ggml type 16"),
        "{message}"
    );
}

#[test]
fn missing_metadata_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(
        dir.path(),
        "no_blocks.gguf",
        &build_gguf(
            3,
            &[
                ("general.architecture", Kv::Str("llama")),
                ("llama.embedding_length", Kv::U32(8)),
                ("llama.attention.head_count", Kv::U32(2)),
                ("llama.vocab_size", Kv::U32(4)),
                ("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5)),
            ],
            &[f32_tensor("output_norm.weight", 8)],
        ),
    );
    let message = gguf_message(GgufModel::open(&path).unwrap_err(), &path);
    assert!(
        message.contains("missing metadata key `llama.feed_forward_length`"),
        "{message}"
    );
}

#[test]
fn non_llama_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(
        dir.path(),
        "qwen.gguf",
        &build_gguf(3, &[("general.architecture", Kv::Str("qwen2"))], &[]),
    );
    let message = gguf_message(GgufModel::open(&path).unwrap_err(), &path);
    assert!(message.contains("qwen2"), "{message}");
}
