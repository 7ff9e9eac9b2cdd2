//! Cluster keywords by class-based TF-IDF (c-TF-IDF, as BERTopic's `ClassTfidfTransformer`).
//!
//! All documents of a cluster form one class. For term t and class c with counts `count(t, c)`:
//! `tf(t, c) = count(t, c) / Σ_t' count(t', c)` (L1-normalised per class),
//! `idf(t) = ln(1 + A / f_t)` where `f_t = Σ_c count(t, c)` is the term's frequency over all
//! classes and `A = ⌊mean over classes of Σ_t count(t, c)⌋` (BERTopic truncates it to an integer),
//! score = tf · idf.
//!
//! Tokens: the text is lowercased, split into maximal runs of alphanumeric characters, runs
//! shorter than two characters and English stop words are dropped (scikit-learn's
//! `CountVectorizer(token_pattern=r"(?u)[^\W_]{2,}", stop_words="english")`).

use std::collections::BTreeMap;

use records::clusters::Keyword;

/// Lowercased alphanumeric words of at least two characters, stop words removed.
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.chars().count() >= 2 && !is_stop_word(word))
        .map(str::to_owned)
        .collect()
}

fn is_stop_word(word: &str) -> bool {
    ENGLISH_STOP_WORDS.binary_search(&word).is_ok()
}

/// The `top_n` highest-scoring terms of each class, best first (ties by term).
///
/// `classes[c]` holds the documents of class `c`. Terms with a score of 0 are not returned.
pub fn class_tfidf<S: AsRef<str>>(classes: &[Vec<S>], top_n: usize) -> Vec<Vec<Keyword>> {
    let class_counts: Vec<BTreeMap<String, u64>> = classes
        .iter()
        .map(|documents| {
            let mut counts = BTreeMap::new();
            for document in documents {
                for token in tokenize(document.as_ref()) {
                    *counts.entry(token).or_insert(0u64) += 1;
                }
            }
            counts
        })
        .collect();
    let mut frequency: BTreeMap<&str, u64> = BTreeMap::new();
    for counts in &class_counts {
        for (term, &count) in counts {
            *frequency.entry(term.as_str()).or_insert(0) += count;
        }
    }
    let class_totals: Vec<u64> = class_counts.iter().map(|c| c.values().sum()).collect();
    let average_words = if classes.is_empty() {
        0
    } else {
        class_totals.iter().sum::<u64>() / classes.len() as u64
    };
    class_counts
        .iter()
        .zip(&class_totals)
        .map(|(counts, &total)| {
            let mut scored: Vec<(f64, &str)> = counts
                .iter()
                .map(|(term, &count)| {
                    let tf = count as f64 / total as f64;
                    let idf = (1.0 + average_words as f64 / frequency[term.as_str()] as f64).ln();
                    (tf * idf, term.as_str())
                })
                .filter(|(score, _)| *score > 0.0)
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            scored
                .into_iter()
                .take(top_n)
                .map(|(score, term)| Keyword {
                    term: term.to_owned(),
                    score: score as f32,
                })
                .collect()
        })
        .collect()
}

/// scikit-learn's English stop-word list (`sklearn.feature_extraction.text.ENGLISH_STOP_WORDS`,
/// from the Glasgow Information Retrieval Group), sorted for binary search.
pub const ENGLISH_STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "across",
    "after",
    "afterwards",
    "again",
    "against",
    "all",
    "almost",
    "alone",
    "along",
    "already",
    "also",
    "although",
    "always",
    "am",
    "among",
    "amongst",
    "amoungst",
    "amount",
    "an",
    "and",
    "another",
    "any",
    "anyhow",
    "anyone",
    "anything",
    "anyway",
    "anywhere",
    "are",
    "around",
    "as",
    "at",
    "back",
    "be",
    "became",
    "because",
    "become",
    "becomes",
    "becoming",
    "been",
    "before",
    "beforehand",
    "behind",
    "being",
    "below",
    "beside",
    "besides",
    "between",
    "beyond",
    "bill",
    "both",
    "bottom",
    "but",
    "by",
    "call",
    "can",
    "cannot",
    "cant",
    "co",
    "con",
    "could",
    "couldnt",
    "cry",
    "de",
    "describe",
    "detail",
    "do",
    "done",
    "down",
    "due",
    "during",
    "each",
    "eg",
    "eight",
    "either",
    "eleven",
    "else",
    "elsewhere",
    "empty",
    "enough",
    "etc",
    "even",
    "ever",
    "every",
    "everyone",
    "everything",
    "everywhere",
    "except",
    "few",
    "fifteen",
    "fifty",
    "fill",
    "find",
    "fire",
    "first",
    "five",
    "for",
    "former",
    "formerly",
    "forty",
    "found",
    "four",
    "from",
    "front",
    "full",
    "further",
    "get",
    "give",
    "go",
    "had",
    "has",
    "hasnt",
    "have",
    "he",
    "hence",
    "her",
    "here",
    "hereafter",
    "hereby",
    "herein",
    "hereupon",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "however",
    "hundred",
    "i",
    "ie",
    "if",
    "in",
    "inc",
    "indeed",
    "interest",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "keep",
    "last",
    "latter",
    "latterly",
    "least",
    "less",
    "ltd",
    "made",
    "many",
    "may",
    "me",
    "meanwhile",
    "might",
    "mill",
    "mine",
    "more",
    "moreover",
    "most",
    "mostly",
    "move",
    "much",
    "must",
    "my",
    "myself",
    "name",
    "namely",
    "neither",
    "never",
    "nevertheless",
    "next",
    "nine",
    "no",
    "nobody",
    "none",
    "noone",
    "nor",
    "not",
    "nothing",
    "now",
    "nowhere",
    "of",
    "off",
    "often",
    "on",
    "once",
    "one",
    "only",
    "onto",
    "or",
    "other",
    "others",
    "otherwise",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "part",
    "per",
    "perhaps",
    "please",
    "put",
    "rather",
    "re",
    "same",
    "see",
    "seem",
    "seemed",
    "seeming",
    "seems",
    "serious",
    "several",
    "she",
    "should",
    "show",
    "side",
    "since",
    "sincere",
    "six",
    "sixty",
    "so",
    "some",
    "somehow",
    "someone",
    "something",
    "sometime",
    "sometimes",
    "somewhere",
    "still",
    "such",
    "system",
    "take",
    "ten",
    "than",
    "that",
    "the",
    "their",
    "them",
    "themselves",
    "then",
    "thence",
    "there",
    "thereafter",
    "thereby",
    "therefore",
    "therein",
    "thereupon",
    "these",
    "they",
    "thick",
    "thin",
    "third",
    "this",
    "those",
    "though",
    "three",
    "through",
    "throughout",
    "thru",
    "thus",
    "to",
    "together",
    "too",
    "top",
    "toward",
    "towards",
    "twelve",
    "twenty",
    "two",
    "un",
    "under",
    "until",
    "up",
    "upon",
    "us",
    "very",
    "via",
    "was",
    "we",
    "well",
    "were",
    "what",
    "whatever",
    "when",
    "whence",
    "whenever",
    "where",
    "whereafter",
    "whereas",
    "whereby",
    "wherein",
    "whereupon",
    "wherever",
    "whether",
    "which",
    "while",
    "whither",
    "who",
    "whoever",
    "whole",
    "whom",
    "whose",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "yet",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_and_complete() {
        assert_eq!(ENGLISH_STOP_WORDS.len(), 318);
        assert!(ENGLISH_STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn tokenizer_lowercases_splits_and_filters() {
        assert_eq!(
            tokenize("The model's GSM8K answer: 42 apples, x_y and a café!"),
            vec!["model", "gsm8k", "answer", "42", "apples", "café"]
        );
    }

    #[test]
    fn distinctive_terms_rank_first() {
        let classes = vec![
            vec!["fraction addition fraction", "fraction of a cake"],
            vec![
                "python function returns python list",
                "python list index error",
            ],
        ];
        let keywords = class_tfidf(&classes, 3);
        assert_eq!(keywords[0][0].term, "fraction");
        assert_eq!(keywords[1][0].term, "python");
        assert!(keywords[0][0].score > keywords[0][1].score);
        assert!(keywords.iter().all(|k| k.len() == 3));
    }
}
