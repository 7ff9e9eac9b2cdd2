//! Failures into patterns: compose a text per failure that says what went wrong (not only what
//! the question was about), embed it with all-MiniLM-L6-v2, cluster with KMeans, and name each
//! cluster. Every holdout item is then placed in its nearest pattern with the same text
//! composition and embedding, so Phase 1C can measure each pattern on items no teacher saw.

use std::collections::HashMap;

use clustering::label::{ClusterLabeller, label_clusters_contrastive};
use clustering::{Analysis, AnalysisConfig, ClusterItem, KChoice, KMeansConfig, Points};
use embeddings::SentenceEncoder;
use records::clusters::ClusterRecord;
use records::eval::EvalRecord;
use records::mining::{FailureRecord, HoldoutMembership, Split, TestItem};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many clusters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KSetting {
    Fixed(usize),
    /// `"auto"`: the best silhouette over k = 2..=max (bootstrap stability reported beside it).
    Auto(String),
}

impl Default for KSetting {
    fn default() -> Self {
        KSetting::Fixed(10)
    }
}

/// Settings of [`find_patterns`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatternConfig {
    pub k: KSetting,
    /// Largest k tried by `k = "auto"`.
    pub max_auto_k: usize,
    pub seed: u64,
    /// Texts per encoder forward pass.
    pub embed_batch_size: usize,
    /// Characters of the question kept in the embedded text (the failure facts come first, so
    /// a long question is what the encoder's window cuts).
    pub question_chars: usize,
    /// Characters of the model's reply kept in the embedded text.
    pub reply_chars: usize,
    /// Ask the labelling model for a one-line description of each failure (what skill failed
    /// and how) and embed that instead of the composed text: one call per failure.
    pub describe_failures: bool,
}

impl Default for PatternConfig {
    fn default() -> Self {
        Self {
            k: KSetting::default(),
            max_auto_k: 20,
            seed: 1234,
            embed_batch_size: 32,
            question_chars: 600,
            reply_chars: 240,
            describe_failures: false,
        }
    }
}

impl PatternConfig {
    fn k_choice(&self, failures: usize) -> Result<KChoice> {
        match &self.k {
            KSetting::Fixed(k) if *k == 0 || *k > failures => Err(Error::Config {
                field: "patterns.k".into(),
                message: format!(
                    "k = {k} clusters cannot be made from {failures} failures (need 1 <= k <= failures)"
                ),
            }),
            KSetting::Fixed(k) => Ok(KChoice::Fixed(*k)),
            KSetting::Auto(word) if word == "auto" => {
                let top = self.max_auto_k.min(failures.saturating_sub(1));
                if top < 2 {
                    return Err(Error::Config {
                        field: "patterns.k".into(),
                        message: format!("k = \"auto\" needs at least 3 failures, got {failures}"),
                    });
                }
                Ok(KChoice::Silhouette((2..=top).collect()))
            }
            KSetting::Auto(other) => Err(Error::Config {
                field: "patterns.k".into(),
                message: format!("`{other}`: give a number of clusters or \"auto\""),
            }),
        }
    }
}

/// The text a failure (or a holdout item) is embedded as: the failure facts first (family, the
/// model's answer, the right one), then the question, so truncation cuts the question's tail.
pub fn compose_text(item: &TestItem, record: &EvalRecord, config: &PatternConfig) -> String {
    let reply = record
        .extracted
        .as_deref()
        .filter(|answer| !answer.trim().is_empty())
        .unwrap_or(record.output.as_str());
    format!(
        "Task: {}. Model answered: {}. Correct answer: {}. Question: {}",
        item.family.replace('_', " "),
        clip(&collapse(reply), config.reply_chars),
        clip(&collapse(&item.gold), config.reply_chars),
        clip(&collapse(&item.question), config.question_chars),
    )
}

/// What [`find_patterns`] found.
#[derive(Debug)]
pub struct Patterns {
    pub failures: Vec<FailureRecord>,
    pub analysis: Analysis,
    /// Failures whose text filled the encoder's window (and may have been cut).
    pub truncated: usize,
    pub max_seq_length: usize,
}

/// The `mine` failures among `items` (graded in `records`, matched by id), as failure records.
pub fn mine_failures(
    items: &[TestItem],
    records: &[EvalRecord],
    config: &PatternConfig,
) -> Vec<(FailureRecord, usize)> {
    let by_id: HashMap<&str, &EvalRecord> = records
        .iter()
        .map(|record| (record.item_id.as_str(), record))
        .collect();
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.split == Split::Mine)
        .filter_map(|(index, item)| {
            let record = by_id.get(item.id.as_str())?;
            (!record.correct).then(|| {
                let failure = FailureRecord {
                    item_id: item.id.clone(),
                    family: item.family.clone(),
                    question: item.question.clone(),
                    output: record.output.clone(),
                    extracted: record.extracted.clone(),
                    gold: item.gold.clone(),
                    reason: record
                        .detail
                        .clone()
                        .unwrap_or_else(|| "graded wrong".to_string()),
                    description: None,
                    embedded_text: compose_text(item, record, config),
                    truncated: false,
                };
                (failure, index)
            })
        })
        .collect()
}

/// Embeds the failures' texts and clusters them.
pub fn find_patterns(
    encoder: &SentenceEncoder,
    mut failures: Vec<FailureRecord>,
    config: &PatternConfig,
) -> Result<Patterns> {
    if failures.is_empty() {
        return Err(Error::EmptyTestSet(
            "the model failed no `mine` item: there is nothing to cluster".into(),
        ));
    }
    let k = config.k_choice(failures.len())?;
    let texts: Vec<&str> = failures.iter().map(|f| f.embedded_text.as_str()).collect();
    let (points, truncated_flags) = embed(encoder, &texts, config.embed_batch_size, "failures")?;
    for (failure, truncated) in failures.iter_mut().zip(&truncated_flags) {
        failure.truncated = *truncated;
    }
    let items: Vec<ClusterItem> = failures
        .iter()
        .map(|failure| ClusterItem {
            id: failure.item_id.clone(),
            text: failure.embedded_text.clone(),
        })
        .collect();
    let mut analysis_config = AnalysisConfig::new(k);
    analysis_config.kmeans = KMeansConfig {
        seed: config.seed,
        ..KMeansConfig::new(2)
    };
    let analysis = clustering::analyse(&points, &items, &analysis_config)?;
    Ok(Patterns {
        failures,
        analysis,
        truncated: truncated_flags.iter().filter(|&&t| t).count(),
        max_seq_length: encoder.max_seq_length(),
    })
}

/// Embeds `texts`, logging progress; returns the points and which texts filled the window.
fn embed(
    encoder: &SentenceEncoder,
    texts: &[&str],
    batch_size: usize,
    what: &str,
) -> Result<(Points, Vec<bool>)> {
    let started = std::time::Instant::now();
    let ids = encoder.tokenize(texts)?;
    // The tokenizer truncates at the window: a text that fills it was (or may have been) cut.
    let truncated: Vec<bool> = ids
        .iter()
        .map(|ids| ids.len() >= encoder.max_seq_length())
        .collect();
    let mut last_log = std::time::Instant::now();
    let embeddings = encoder.encode_token_ids_with_progress(&ids, batch_size, |done, total| {
        if last_log.elapsed().as_secs() >= 15 || done == total {
            last_log = std::time::Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                "embedding {what}: {done}/{total} ({rate:.0}/s, ETA {:.0} s)",
                (total - done) as f64 / rate.max(1e-9)
            );
        }
    })?;
    let dim = embeddings.dim();
    Ok((Points::from_flat(embeddings.into_flat(), dim)?, truncated))
}

/// Places every holdout item in its nearest failure pattern. An item farther from that centroid
/// than the farthest of the pattern's own failures is "other" (`cluster: None`): it resembles no
/// pattern, so it measures none.
pub fn holdout_membership(
    encoder: &SentenceEncoder,
    patterns: &Patterns,
    items: &[TestItem],
    records: &[EvalRecord],
    config: &PatternConfig,
) -> Result<Vec<HoldoutMembership>> {
    let by_id: HashMap<&str, &EvalRecord> = records
        .iter()
        .map(|record| (record.item_id.as_str(), record))
        .collect();
    let holdout: Vec<(&TestItem, &EvalRecord)> = items
        .iter()
        .filter(|item| item.split == Split::Holdout)
        .filter_map(|item| Some((item, *by_id.get(item.id.as_str())?)))
        .collect();
    if holdout.is_empty() {
        return Ok(Vec::new());
    }
    let texts: Vec<String> = holdout
        .iter()
        .map(|(item, record)| compose_text(item, record, config))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (points, _) = embed(encoder, &texts, config.embed_batch_size, "holdout items")?;
    let model = &patterns.analysis.model;
    let radius: Vec<f32> = patterns
        .analysis
        .clusters
        .iter()
        .map(|cluster| cluster.centroid_distance.max as f32)
        .collect();
    Ok(holdout
        .iter()
        .enumerate()
        .map(|(row, (item, record))| {
            let point = points.row(row);
            let (nearest, distance) = (0..model.k())
                .map(|cluster| (cluster, euclidean(point, model.centroid(cluster))))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("k >= 1");
            HoldoutMembership {
                item_id: item.id.clone(),
                family: item.family.clone(),
                cluster: (distance <= radius[nearest]).then_some(nearest),
                distance,
                correct: record.correct,
            }
        })
        .collect())
}

fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// How the clusters got their names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelOutcome {
    /// Clusters named by the LLM.
    pub by_llm: usize,
    /// Clusters that fell back to keyword labels, with why (the report shows each).
    pub fallbacks: Vec<(usize, String)>,
}

/// Names every cluster with `labeller`, shown each cluster against the others (contrastive); a
/// cluster the labeller fails on gets the keyword label, marked `keyword-fallback`, and the
/// failure is counted with its reason. Without a labeller, every cluster falls back.
pub async fn label_patterns<L: ClusterLabeller>(
    labeller: Option<&L>,
    clusters: &mut [ClusterRecord],
) -> LabelOutcome {
    let mut outcome = LabelOutcome::default();
    let Some(labeller) = labeller else {
        clustering::label::label_clusters_with_keywords(clusters);
        outcome.fallbacks = clusters
            .iter()
            .map(|c| (c.id, "no labeller configured".to_string()))
            .collect();
        return outcome;
    };
    for (cluster, result) in label_clusters_contrastive(labeller, clusters).await {
        match result {
            Ok(()) => outcome.by_llm += 1,
            Err(reason) => outcome.fallbacks.push((cluster, reason)),
        }
    }
    outcome
}

/// `text` with every run of whitespace made one space.
pub(crate) fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first `chars` characters of `text`, with `…` where it was cut.
pub(crate) fn clip(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use records::mining::Grader;
    use std::collections::BTreeMap;

    fn item(question: &str) -> TestItem {
        TestItem {
            id: "tl-1".into(),
            family: "date_arithmetic".into(),
            source: "generated:date_arithmetic".into(),
            split: Split::Mine,
            prompt: question.into(),
            question: question.into(),
            gold: "2024-03-01".into(),
            grader: Grader::ExactText {
                expected: "2024-03-01".into(),
            },
        }
    }

    fn record(output: &str, extracted: Option<&str>) -> EvalRecord {
        EvalRecord {
            benchmark: "phase1b".into(),
            protocol: "exact_text/generative".into(),
            item_id: "tl-1".into(),
            subject: Some("date_arithmetic".into()),
            prompt: records::eval::Prompt::Text(String::new()),
            output: output.into(),
            extracted: extracted.map(str::to_string),
            gold: "2024-03-01".into(),
            correct: false,
            metrics: BTreeMap::new(),
            logprobs: None,
            samples: Vec::new(),
            detail: Some("expected 2024-03-01, read 2024-02-30".into()),
        }
    }

    #[test]
    fn composed_text_leads_with_the_failure_and_clips_the_question() {
        let config = PatternConfig {
            question_chars: 20,
            ..PatternConfig::default()
        };
        let question = "What date is 30 days after 2024-01-31?   Answer in YYYY-MM-DD.";
        let text = compose_text(
            &item(question),
            &record("It is 2024-02-30", Some("2024-02-30")),
            &config,
        );
        assert_eq!(
            text,
            "Task: date arithmetic. Model answered: 2024-02-30. Correct answer: 2024-03-01. \
             Question: What date is 30 days…"
        );
        // Without an extraction, the reply itself stands in.
        let text = compose_text(&item(question), &record("no idea\n\n", None), &config);
        assert!(text.contains("Model answered: no idea."), "{text}");
    }

    #[test]
    fn k_must_fit_the_failures() {
        let config = PatternConfig {
            k: KSetting::Fixed(10),
            ..PatternConfig::default()
        };
        let error = config.k_choice(4).unwrap_err().to_string();
        assert!(
            error.contains("patterns.k") && error.contains("4 failures"),
            "{error}"
        );
        let auto = PatternConfig {
            k: KSetting::Auto("auto".into()),
            max_auto_k: 6,
            ..PatternConfig::default()
        };
        assert_eq!(
            auto.k_choice(100).unwrap(),
            KChoice::Silhouette(vec![2, 3, 4, 5, 6])
        );
        assert_eq!(auto.k_choice(4).unwrap(), KChoice::Silhouette(vec![2, 3]));
        let typo = PatternConfig {
            k: KSetting::Auto("atuo".into()),
            ..PatternConfig::default()
        };
        assert!(typo.k_choice(100).unwrap_err().to_string().contains("atuo"));
        let parsed: PatternConfig = serde_json::from_str(r#"{"k": "auto"}"#).unwrap();
        assert_eq!(parsed.k, KSetting::Auto("auto".into()));
        let parsed: PatternConfig = serde_json::from_str(r#"{"k": 7}"#).unwrap();
        assert_eq!(parsed.k, KSetting::Fixed(7));
    }

    #[test]
    fn only_failed_mine_items_become_failures() {
        let config = PatternConfig::default();
        let mut holdout = item("q");
        holdout.id = "tl-2".into();
        holdout.split = Split::Holdout;
        let mut right = item("q");
        right.id = "tl-3".into();
        let items = vec![item("q"), holdout, right];
        let mut records = vec![record("x", None), record("x", None), record("x", None)];
        records[1].item_id = "tl-2".into();
        records[2].item_id = "tl-3".into();
        records[2].correct = true;
        let failures = mine_failures(&items, &records, &config);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0.item_id, "tl-1");
        assert_eq!(failures[0].0.reason, "expected 2024-03-01, read 2024-02-30");
    }
}
