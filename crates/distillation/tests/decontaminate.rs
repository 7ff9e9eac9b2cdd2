//! Embedding-neighbour decontamination on real data and the real encoder: a paraphrase of an
//! MMLU item, which shares no 13-gram with it, is still found by its MiniLM neighbour, while
//! an unrelated task is not (the cosines are checked against sentence-transformers: 0.947 and
//! 0.023 for the pair below with all-MiniLM-L6-v2).

use distillation::gate::EmbeddingNeighbours;
use embeddings::SentenceEncoder;
use failure_mining::leakage::NgramIndex;

#[test]
fn an_mmlu_paraphrase_is_caught_by_its_embedding_neighbour_not_by_ngrams() {
    let assets = assets::AssetPaths::locate();
    let data = assets.root.join("data");
    let mmlu = benchmarks::data::load_mmlu(&data, benchmarks::data::MmluSplit::Test).unwrap();
    let original = mmlu
        .iter()
        .find(|item| item.question.contains("sqrt(18)"))
        .expect("MMLU abstract algebra item");
    let paraphrase = "Over the rationals Q, what is the degree of the field extension Q(sqrt(2), sqrt(3), sqrt(18))?";
    let unrelated = "Write a short poem about autumn leaves falling in a quiet park.";

    let ngrams = NgramIndex::validation_benchmarks(&data, 13).unwrap();
    assert_eq!(
        ngrams.overlap(paraphrase),
        None,
        "no 13-gram: only embeddings can catch it"
    );

    let encoder = SentenceEncoder::load(
        &assets.root.join("all-minilm-l6-v2"),
        &embeddings::burn::tensor::Device::flex(),
    )
    .unwrap();
    // The first 300 MMLU questions as the reference (the phase embeds all of them, cached).
    let references: Vec<&str> = mmlu
        .iter()
        .take(300)
        .map(|item| item.question.as_str())
        .collect();
    assert!(references.contains(&original.question.as_str()));
    let mut index = EmbeddingNeighbours::new(encoder.dim());
    index.add("mmlu", encoder.encode(&references, 64).unwrap().as_flat());
    let queries = encoder.encode(&[paraphrase, unrelated], 2).unwrap();
    let (source, cosine) = index.nearest(queries.row(0)).unwrap();
    assert_eq!(source, "mmlu");
    assert!((cosine - 0.947).abs() < 2e-3, "{cosine}");
    assert!(cosine >= 0.9, "caught at the default threshold");
    let (_, cosine) = index.nearest(queries.row(1)).unwrap();
    assert!(cosine < 0.5, "{cosine}");
}
