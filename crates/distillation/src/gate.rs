//! The quality gate's checks that need no model: reading a final answer, agreement of answers,
//! exact and near-duplicate detection (MinHash over word shingles, candidates confirmed by exact
//! Jaccard), and n-gram / embedding-neighbour decontamination.

use std::collections::{BTreeMap, HashMap, HashSet};

use benchmarks::stats::stable_hash;
use failure_mining::grade::normalize_answer;
use failure_mining::leakage::words;

/// The final answer of a reply: the text after its last `Answer:` (case-insensitive), else its
/// last non-empty line.
pub fn final_answer(reply: &str) -> Option<String> {
    let lower = reply.to_lowercase();
    let text = match lower.rfind("answer:") {
        Some(at) => reply[at + "answer:".len()..].lines().next().unwrap_or(""),
        None => reply.lines().rev().find(|line| !line.trim().is_empty())?,
    };
    let text = text.trim().trim_matches(|c| c == '*' || c == '`').trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Whether two short answers agree: equal as numbers (thousands separators, a currency sign
/// and a trailing unit ignored), else equal after SQuAD normalisation.
pub fn answers_agree(a: &str, b: &str) -> bool {
    match (leading_number(a), leading_number(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
        _ => normalize_answer(a) == normalize_answer(b),
    }
}

fn leading_number(text: &str) -> Option<f64> {
    let cleaned: String = text
        .trim()
        .trim_start_matches(['$', '€', '£'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | '-'))
        .filter(|&c| c != ',')
        .collect();
    let cleaned = cleaned.trim_end_matches('.');
    if cleaned.is_empty() || cleaned == "-" {
        return None;
    }
    cleaned.parse().ok()
}

/// Exact duplicates by normalised text hash.
pub fn exact_key(text: &str) -> u64 {
    stable_hash(&words(text).join(" "))
}

/// Word-shingle sets and MinHash banding: finds earlier texts whose Jaccard similarity with a
/// new one reaches `threshold`. Candidates come from 16 bands of 4 hashes (a pair at Jaccard 0.8
/// collides in some band with probability > 0.999); each is confirmed by the exact Jaccard.
pub struct NearDuplicates {
    shingle: usize,
    threshold: f64,
    shingles: Vec<HashSet<u64>>,
    sources: Vec<String>,
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

const BANDS: usize = 16;
const ROWS: usize = 4;

impl NearDuplicates {
    pub fn new(shingle: usize, threshold: f64) -> Self {
        Self {
            shingle: shingle.max(1),
            threshold,
            shingles: Vec::new(),
            sources: Vec::new(),
            buckets: HashMap::new(),
        }
    }

    fn shingles_of(&self, text: &str) -> HashSet<u64> {
        let words = words(text);
        if words.len() < self.shingle {
            return HashSet::from([stable_hash(&words.join(" "))]);
        }
        words
            .windows(self.shingle)
            .map(|w| stable_hash(&w.join(" ")))
            .collect()
    }

    fn bands(set: &HashSet<u64>) -> Vec<u64> {
        let mut mins = [u64::MAX; BANDS * ROWS];
        for &s in set {
            for (i, slot) in mins.iter_mut().enumerate() {
                // Independent hash functions from one mixing step per seed.
                let h = mix(s ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                *slot = (*slot).min(h);
            }
        }
        mins.chunks(ROWS)
            .map(|band| band.iter().fold(0xcbf2_9ce4_8422_2325, |h, &v| mix(h ^ v)))
            .collect()
    }

    /// The source and similarity of the most similar earlier text at or above the threshold.
    pub fn find(&self, text: &str) -> Option<(&str, f64)> {
        let set = self.shingles_of(text);
        let mut best: Option<(usize, f64)> = None;
        let mut seen = HashSet::new();
        for (band, key) in Self::bands(&set).into_iter().enumerate() {
            for &index in self.buckets.get(&(band, key)).into_iter().flatten() {
                if !seen.insert(index) {
                    continue;
                }
                let other = &self.shingles[index];
                let inter = set.intersection(other).count();
                let jaccard = inter as f64 / (set.len() + other.len() - inter).max(1) as f64;
                if jaccard >= self.threshold && best.is_none_or(|(_, b)| jaccard > b) {
                    best = Some((index, jaccard));
                }
            }
        }
        best.map(|(index, jaccard)| (self.sources[index].as_str(), jaccard))
    }

    pub fn add(&mut self, source: &str, text: &str) {
        let set = self.shingles_of(text);
        let index = self.shingles.len();
        for (band, key) in Self::bands(&set).into_iter().enumerate() {
            self.buckets.entry((band, key)).or_default().push(index);
        }
        self.shingles.push(set);
        self.sources.push(source.to_string());
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Unit-norm embeddings of reference texts, by source, for nearest-neighbour decontamination.
pub struct EmbeddingNeighbours {
    dim: usize,
    rows: Vec<f32>,
    sources: Vec<String>,
}

impl EmbeddingNeighbours {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            rows: Vec::new(),
            sources: Vec::new(),
        }
    }

    pub fn add(&mut self, source: &str, flat: &[f32]) {
        assert_eq!(flat.len() % self.dim, 0, "rows of {} floats", self.dim);
        self.rows.extend_from_slice(flat);
        self.sources.extend(std::iter::repeat_n(
            source.to_string(),
            flat.len() / self.dim,
        ));
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The source and cosine of the nearest reference (embeddings are unit-norm: a dot product).
    pub fn nearest(&self, query: &[f32]) -> Option<(&str, f32)> {
        self.rows
            .chunks_exact(self.dim)
            .map(|row| row.iter().zip(query).map(|(a, b)| a * b).sum::<f32>())
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(index, cosine)| (self.sources[index].as_str(), cosine))
    }
}

/// Adds one to `counts[key]`.
pub fn count(counts: &mut BTreeMap<String, usize>, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_are_read_and_compared_like_a_grader() {
        assert_eq!(
            final_answer("2 + 3 = 5\nAnswer: **5**").as_deref(),
            Some("5")
        );
        assert_eq!(
            final_answer("It is Paris.").as_deref(),
            Some("It is Paris.")
        );
        assert!(answers_agree("$1,000", "1000 dollars"));
        assert!(answers_agree("The Eiffel Tower", "eiffel tower"));
        assert!(!answers_agree("12", "13"));
        assert!(!answers_agree("Paris", "Lyon"));
    }

    #[test]
    fn near_duplicates_are_found_and_distinct_texts_are_not() {
        let mut index = NearDuplicates::new(3, 0.7);
        index.add(
            "generated",
            "A farmer has 12 cows and buys 7 more at the market on Monday. How many cows does the farmer have now?",
        );
        let paraphrase = "A farmer has 12 cows and buys 7 more at the market on Tuesday. How many cows does the farmer have now?";
        let (source, jaccard) = index.find(paraphrase).expect("a near duplicate");
        assert_eq!(source, "generated");
        assert!((0.7..1.0).contains(&jaccard), "{jaccard}");
        assert!(
            index
                .find("Name the capital city of Australia and explain why it was chosen.")
                .is_none()
        );
        assert_eq!(exact_key("Hello, World!"), exact_key("hello world"));
    }

    #[test]
    fn the_nearest_embedding_names_its_source() {
        let mut index = EmbeddingNeighbours::new(2);
        index.add("mmlu", &[1.0, 0.0]);
        index.add("gsm8k", &[0.0, 1.0, 0.6, 0.8]);
        let (source, cosine) = index.nearest(&[0.0, 1.0]).unwrap();
        assert_eq!((source, cosine), ("gsm8k", 1.0));
        assert_eq!(index.len(), 3);
    }
}
