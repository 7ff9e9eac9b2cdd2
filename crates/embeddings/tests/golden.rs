//! all-MiniLM-L6-v2 on the real weights against the independent float64 numpy reference
//! (`tools/reference/minilm_numpy.py` → `fixtures/golden/minilm_embeddings.json`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use embeddings::burn::tensor::Device;
use embeddings::{DEFAULT_MAX_SEQ_LENGTH, Error, SentenceEncoder};

#[derive(serde::Deserialize)]
struct Golden {
    max_seq_length: usize,
    dimension: usize,
    sentences: Vec<GoldenSentence>,
}

#[derive(serde::Deserialize)]
struct GoldenSentence {
    text: String,
    token_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn model_dir() -> PathBuf {
    let dir = embeddings::default_model_dir();
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run `cargo xtask assets` (or set TUNELOOP_ASSETS)",
        dir.display()
    );
    dir
}

fn golden() -> &'static Golden {
    static GOLDEN: OnceLock<Golden> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/golden/minilm_embeddings.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    })
}

fn encoder() -> &'static SentenceEncoder {
    static ENCODER: OnceLock<SentenceEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| SentenceEncoder::load(&model_dir(), &Device::flex()).unwrap())
}

fn texts() -> Vec<&'static str> {
    golden().sentences.iter().map(|s| s.text.as_str()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn golden_covers_mixed_lengths_and_truncation() {
    let golden = golden();
    assert!(golden.sentences.len() >= 20);
    assert_eq!(golden.max_seq_length, DEFAULT_MAX_SEQ_LENGTH);
    assert_eq!(golden.dimension, encoder().dim());
    let lengths: Vec<usize> = golden.sentences.iter().map(|s| s.token_ids.len()).collect();
    assert!(lengths.iter().any(|&n| n <= 4), "{lengths:?}");
    assert!(lengths.contains(&DEFAULT_MAX_SEQ_LENGTH), "{lengths:?}");
}

#[test]
fn token_ids_match_reference_exactly() {
    let ids = encoder().tokenize(&texts()).unwrap();
    for (sentence, ids) in golden().sentences.iter().zip(&ids) {
        assert_eq!(ids, &sentence.token_ids, "{:?}", sentence.text);
    }
}

#[test]
fn embeddings_match_reference() {
    assert!(
        encoder().implementation().starts_with("CPU kernels"),
        "{}",
        encoder().implementation()
    );
    let embeddings = encoder().encode(&texts(), 7).unwrap();
    assert_eq!(embeddings.len(), golden().sentences.len());
    let mut worst_cosine = 1.0f64;
    let mut worst_diff = 0.0f32;
    for (row, sentence) in embeddings.rows().zip(&golden().sentences) {
        let cos = cosine(row, &sentence.embedding);
        assert!(cos >= 0.999, "cosine {cos} for {:?}", sentence.text);
        worst_cosine = worst_cosine.min(cos);
        worst_diff = worst_diff.max(max_abs_diff(row, &sentence.embedding));
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    // Much tighter than the 0.999: f32 against float64 should differ by ~1e-6.
    assert!(worst_cosine > 1.0 - 1e-6, "worst cosine {worst_cosine}");
    assert!(worst_diff < 1e-4, "worst max abs diff {worst_diff}");
    eprintln!("worst cosine {worst_cosine:.9}, worst max abs diff {worst_diff:.2e}");
}

/// The burn-tensor path (what runs on a GPU) on flex, against the same reference: the CPU
/// kernels replaced it on the CPU, so this keeps its model code checked in CI.
#[test]
fn burn_tensors_match_reference() {
    let encoder = SentenceEncoder::load_burn(&model_dir(), &Device::flex()).unwrap();
    assert_eq!(encoder.implementation(), "burn tensors");
    assert!(encoder.model().is_some());
    let embeddings = encoder.encode(&texts(), 7).unwrap();
    let mut worst_cosine = 1.0f64;
    for (row, sentence) in embeddings.rows().zip(&golden().sentences) {
        worst_cosine = worst_cosine.min(cosine(row, &sentence.embedding));
        assert!(
            max_abs_diff(row, &sentence.embedding) < 1e-4,
            "{:?}",
            sentence.text
        );
    }
    assert!(worst_cosine > 1.0 - 1e-6, "worst cosine {worst_cosine}");
}

#[test]
fn batch_size_does_not_change_embeddings() {
    let texts = texts();
    let encoder = encoder();
    let one = encoder.encode(&texts, 1).unwrap();
    let seven = encoder.encode(&texts, 7).unwrap();
    let all = encoder.encode(&texts, texts.len()).unwrap();
    let diff_seven = max_abs_diff(one.as_flat(), seven.as_flat());
    let diff_all = max_abs_diff(one.as_flat(), all.as_flat());
    assert!(diff_seven < 1e-5, "batch 1 vs 7: {diff_seven}");
    assert!(diff_all < 1e-5, "batch 1 vs {}: {diff_all}", texts.len());
    // Different sentences give different vectors, so the comparisons above can fail.
    assert!(max_abs_diff(one.row(0), one.row(1)) > 1e-2);
}

#[test]
fn rows_follow_input_order() {
    let texts = texts();
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let subset = &reversed[..5];
    let embeddings = encoder().encode(subset, 2).unwrap();
    for (row, text) in embeddings.rows().zip(subset) {
        let sentence = golden().sentences.iter().find(|s| s.text == *text).unwrap();
        assert!(cosine(row, &sentence.embedding) > 0.9999, "{text:?}");
    }
}

#[test]
fn similar_sentences_are_closer() {
    let e = encoder()
        .encode(
            &[
                "What is the capital of France?",
                "Paris is the capital and most populous city of France.",
                "A woman is slicing an onion.",
            ],
            8,
        )
        .unwrap();
    let related = cosine(e.row(0), e.row(1));
    let unrelated = cosine(e.row(0), e.row(2));
    assert!(
        related > unrelated + 0.3,
        "related {related}, unrelated {unrelated}"
    );
}

#[test]
fn empty_input_and_bad_arguments() {
    let encoder = encoder();
    let empty = encoder.encode::<&str>(&[], 16).unwrap();
    assert!(empty.is_empty());
    assert_eq!((empty.len(), empty.dim()), (0, 384));

    assert!(matches!(
        encoder.encode(&["x"], 0),
        Err(Error::ZeroBatchSize)
    ));
    let out_of_vocab = encoder.encode_token_ids(&[vec![101, 102], vec![101, 40_000, 102]], 4);
    let message = out_of_vocab.unwrap_err().to_string();
    assert!(
        message.contains("sequence #1") && message.contains("40000"),
        "{message}"
    );
    let too_long = encoder
        .encode_token_ids(&[vec![101; 513]], 4)
        .unwrap_err()
        .to_string();
    assert!(too_long.contains("513 tokens"), "{too_long}");
}

#[test]
fn truncation_matches_sentence_transformers_config() {
    let path = model_dir().join("sentence_bert_config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(config["max_seq_length"], DEFAULT_MAX_SEQ_LENGTH);
    let long = "word ".repeat(1000);
    let ids = encoder().tokenize(&[long.as_str(), "short"]).unwrap();
    assert_eq!(ids[0].len(), DEFAULT_MAX_SEQ_LENGTH);
    assert_eq!(*ids[0].last().unwrap(), 102, "[SEP] survives truncation");
    assert_eq!(ids[1].len(), 3, "no padding");
}

/// A directory with symlinks to some of the model's files.
fn partial_model_dir(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        std::os::unix::fs::symlink(model_dir().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

#[test]
fn missing_files_are_named() {
    let device = Device::flex();
    let no_config = partial_model_dir(&["tokenizer.json", "model.safetensors"]);
    let error = SentenceEncoder::load(no_config.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(error.contains("config.json"), "{error}");

    let no_tokenizer = partial_model_dir(&["config.json", "model.safetensors"]);
    let error = SentenceEncoder::load(no_tokenizer.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(error.contains("tokenizer.json"), "{error}");

    let no_weights = partial_model_dir(&["config.json", "tokenizer.json"]);
    let error = SentenceEncoder::load(no_weights.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(error.contains("model.safetensors"), "{error}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    use safetensors::tensor::{Dtype, TensorView};
    let device = Device::flex();
    let dir = partial_model_dir(&["config.json", "tokenizer.json"]);
    let bytes = vec![0u8; 2 * 384 * 4];
    let view = TensorView::new(Dtype::F32, vec![2, 384], &bytes).unwrap();
    let weights = dir.path().join("model.safetensors");

    safetensors::serialize_to_file(
        [("embeddings.word_embeddings.weight", view.clone())],
        None,
        &weights,
    )
    .unwrap();
    let error = SentenceEncoder::load(dir.path(), &device)
        .unwrap_err()
        .to_string();
    assert!(error.contains("model.safetensors"), "{error}");
    assert!(
        error.contains("`encoder.layer.0.attention.self.query.weight` is missing"),
        "{error}"
    );

    let mut tensors = vec![("embeddings.word_embeddings.weight".to_string(), view)];
    // Every encoder tensor present with the right shape, so loading reaches the embeddings.
    let encoder_bytes: Vec<(String, Vec<usize>, Vec<u8>)> = (0..6)
        .flat_map(|layer| {
            let p = format!("encoder.layer.{layer}");
            [
                (format!("{p}.attention.self.query.weight"), vec![384, 384]),
                (format!("{p}.attention.self.query.bias"), vec![384]),
                (format!("{p}.attention.self.key.weight"), vec![384, 384]),
                (format!("{p}.attention.self.key.bias"), vec![384]),
                (format!("{p}.attention.self.value.weight"), vec![384, 384]),
                (format!("{p}.attention.self.value.bias"), vec![384]),
                (format!("{p}.attention.output.dense.weight"), vec![384, 384]),
                (format!("{p}.attention.output.dense.bias"), vec![384]),
                (format!("{p}.attention.output.LayerNorm.weight"), vec![384]),
                (format!("{p}.attention.output.LayerNorm.bias"), vec![384]),
                (format!("{p}.intermediate.dense.weight"), vec![1536, 384]),
                (format!("{p}.intermediate.dense.bias"), vec![1536]),
                (format!("{p}.output.dense.weight"), vec![384, 1536]),
                (format!("{p}.output.dense.bias"), vec![384]),
                (format!("{p}.output.LayerNorm.weight"), vec![384]),
                (format!("{p}.output.LayerNorm.bias"), vec![384]),
            ]
        })
        .chain([(
            "embeddings.token_type_embeddings.weight".to_string(),
            vec![2, 384],
        )])
        .map(|(name, shape)| {
            let len = shape.iter().product::<usize>() * 4;
            (name, shape, vec![0u8; len])
        })
        .collect();
    for (name, shape, bytes) in &encoder_bytes {
        tensors.push((
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
        ));
    }
    safetensors::serialize_to_file(tensors, None, &weights).unwrap();
    let error = SentenceEncoder::load(dir.path(), &device).unwrap_err();
    match &error {
        Error::ShapeMismatch {
            path,
            name,
            expected,
            actual,
        } => {
            assert_eq!(path, &weights);
            assert_eq!(name, "embeddings.word_embeddings.weight");
            assert_eq!(
                (expected.as_slice(), actual.as_slice()),
                (&[30522, 384][..], &[2, 384][..])
            );
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    assert!(
        error.to_string().contains("expected [30522, 384]"),
        "{error}"
    );
}
