//! Overlap with the validation benchmarks, by word n-grams (13 by default, as GPT-3's and
//! lm-evaluation-harness's decontamination do): an item that shares any n-gram with a benchmark
//! is dropped and counted against that benchmark. Phase 1C checks its generated data against the
//! same index (plus the holdout split).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use benchmarks::data::{MmluSplit, load_gsm8k, load_humaneval, load_mmlu};
use benchmarks::stats::stable_hash;

use crate::error::{Error, Result};

/// The n-grams of several reference sources, each n-gram mapped to the first source that had it.
#[derive(Debug, Clone)]
pub struct NgramIndex {
    n: usize,
    sources: Vec<String>,
    grams: HashMap<u64, u16>,
    per_source: BTreeMap<String, usize>,
}

impl NgramIndex {
    pub fn new(n: usize) -> Self {
        assert!(n > 0, "n-grams need n >= 1");
        Self {
            n,
            sources: Vec::new(),
            grams: HashMap::new(),
            per_source: BTreeMap::new(),
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Adds every n-gram of `texts` under `source`.
    pub fn add<'a>(&mut self, source: &str, texts: impl IntoIterator<Item = &'a str>) {
        let index = match self.sources.iter().position(|s| s == source) {
            Some(index) => index,
            None => {
                self.sources.push(source.to_string());
                self.sources.len() - 1
            }
        } as u16;
        let mut added = 0;
        for text in texts {
            for gram in ngram_hashes(text, self.n) {
                if let std::collections::hash_map::Entry::Vacant(slot) = self.grams.entry(gram) {
                    slot.insert(index);
                    added += 1;
                }
            }
        }
        *self.per_source.entry(source.to_string()).or_default() += added;
    }

    /// The source of the first n-gram of `text` found in the index.
    pub fn overlap(&self, text: &str) -> Option<&str> {
        ngram_hashes(text, self.n)
            .find_map(|gram| self.grams.get(&gram))
            .map(|&index| self.sources[index as usize].as_str())
    }

    /// Distinct n-grams each source contributed (an n-gram two sources share counts for the first).
    pub fn per_source(&self) -> &BTreeMap<String, usize> {
        &self.per_source
    }

    /// MMLU (dev, validation and test: questions and choices), GSM8K test (questions and
    /// solutions) and HumanEval (prompts and canonical solutions) from `data_dir`.
    pub fn validation_benchmarks(data_dir: &Path, n: usize) -> Result<Self> {
        let benchmark = |source: benchmarks::Error| Error::Benchmark(Box::new(source));
        let mut index = Self::new(n);
        for split in [MmluSplit::Dev, MmluSplit::Validation, MmluSplit::Test] {
            let items = load_mmlu(data_dir, split).map_err(benchmark)?;
            let texts: Vec<String> = items
                .iter()
                .map(|item| format!("{} {}", item.question, item.choices.join(" ")))
                .collect();
            index.add("mmlu", texts.iter().map(String::as_str));
        }
        let gsm8k = load_gsm8k(data_dir).map_err(benchmark)?;
        index.add(
            "gsm8k",
            gsm8k
                .iter()
                .flat_map(|item| [item.question.as_str(), item.solution.as_str()]),
        );
        let humaneval = load_humaneval(data_dir).map_err(benchmark)?;
        index.add(
            "humaneval",
            humaneval
                .iter()
                .flat_map(|p| [p.prompt.as_str(), p.canonical_solution.as_str()]),
        );
        Ok(index)
    }
}

/// Lowercased words of letters and digits (punctuation and spacing do not hide an overlap).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Hashes of the word n-grams of `text`; a text shorter than n words has none.
fn ngram_hashes(text: &str, n: usize) -> impl Iterator<Item = u64> {
    let words = words(text);
    let count = words.len().saturating_sub(n - 1);
    (0..count)
        .map(move |start| stable_hash(&words[start..start + n].join(" ")))
        .collect::<Vec<_>>()
        .into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_ngram_is_found_whatever_the_punctuation_and_case() {
        let mut index = NgramIndex::new(5);
        index.add(
            "mmlu",
            ["Which of the following is the body cavity that contains the pituitary gland?"],
        );
        index.add("gsm8k", ["Janet's ducks lay 16 eggs per day."]);
        assert_eq!(
            index.overlap("QUESTION: which of the following, is the BODY cavity?"),
            Some("mmlu")
        );
        assert_eq!(index.overlap("janets ducks lay 16 eggs"), None);
        assert_eq!(index.overlap("Janet s ducks lay 16 eggs"), Some("gsm8k"));
        assert_eq!(index.overlap("four words only here"), None);
        assert_eq!(index.per_source()["mmlu"], 9);
        // A source added twice keeps one name; its n-grams are not counted twice.
        index.add("mmlu", ["Which of the following is the body cavity"]);
        assert_eq!(index.per_source()["mmlu"], 9);
    }
}
