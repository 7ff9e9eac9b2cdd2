//! What every benchmark run shares: item selection, the batch loop with resume and progress,
//! model-call checks, and aggregation into a [`BenchmarkResult`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use records::eval::{BenchmarkResult, EvalRecord, SubjectResult};

use crate::error::{Error, Result};
use crate::model::{
    GenerationRequest, LanguageModel, Loglikelihood, LoglikelihoodRequest, truncate_at_stop,
};
use crate::progress::Progress;
use crate::record_log::RecordLog;
use crate::stats::{SplitMix64, stable_hash, summarize};

/// Picks `limit` items by a seeded hash of their ids (all items when `limit` is `None`), keeping
/// dataset order. The choice depends only on the seed and the ids, so a larger limit contains a
/// smaller one and a resumed run picks the same items.
pub fn select<T>(
    items: Vec<T>,
    limit: Option<usize>,
    seed: u64,
    id: impl Fn(&T) -> &str,
) -> Vec<T> {
    let Some(limit) = limit else {
        return items;
    };
    if limit >= items.len() {
        return items;
    }
    let mut keyed: Vec<(u64, usize)> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            (
                SplitMix64::new(seed ^ stable_hash(id(item))).next_u64(),
                index,
            )
        })
        .collect();
    keyed.sort();
    let chosen: BTreeSet<usize> = keyed[..limit].iter().map(|&(_, index)| index).collect();
    items
        .into_iter()
        .enumerate()
        .filter(|(index, _)| chosen.contains(index))
        .map(|(_, item)| item)
        .collect()
}

/// Sampling seed for sample `sample` of an item: fixed by the run seed and the item id.
pub fn item_seed(seed: u64, item_id: &str, sample: usize) -> u64 {
    SplitMix64::new(
        seed ^ stable_hash(item_id).rotate_left(17) ^ (sample as u64).wrapping_mul(0x9E37_79B9),
    )
    .next_u64()
}

pub fn generate(model: &dyn LanguageModel, requests: &[GenerationRequest]) -> Result<Vec<String>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let outputs = model.generate(requests).map_err(|source| Error::Model {
        model: model.name(),
        source,
    })?;
    if outputs.len() != requests.len() {
        return Err(Error::ModelAnswerCount {
            model: model.name(),
            expected: requests.len(),
            got: outputs.len(),
        });
    }
    Ok(outputs
        .iter()
        .zip(requests)
        .map(|(output, request)| truncate_at_stop(output, &request.stop).to_string())
        .collect())
}

pub fn loglikelihood(
    model: &dyn LanguageModel,
    requests: &[LoglikelihoodRequest],
) -> Result<Vec<Loglikelihood>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let answers = model
        .loglikelihood(requests)
        .map_err(|source| Error::Model {
            model: model.name(),
            source,
        })?;
    if answers.len() != requests.len() {
        return Err(Error::ModelAnswerCount {
            model: model.name(),
            expected: requests.len(),
            got: answers.len(),
        });
    }
    Ok(answers)
}

/// Scores the items not yet in `log`, `batch_size` at a time, appending each record as its
/// batch finishes. Returns the records of all `items` in order.
pub fn score_pending<T>(
    label: &str,
    items: &[T],
    id: impl Fn(&T) -> &str,
    log: &mut RecordLog,
    batch_size: usize,
    mut score_batch: impl FnMut(&[&T]) -> Result<Vec<EvalRecord>>,
) -> Result<Vec<EvalRecord>> {
    let pending: Vec<&T> = items
        .iter()
        .filter(|item| !log.contains(id(item)))
        .collect();
    let mut progress = Progress::new(label, items.len(), items.len() - pending.len());
    for batch in pending.chunks(batch_size.max(1)) {
        let records = score_batch(batch)?;
        debug_assert_eq!(records.len(), batch.len());
        for record in records {
            log.append(record)?;
        }
        progress.advance(batch.len());
    }
    progress.finish();
    Ok(items
        .iter()
        .map(|item| log.get(id(item)).cloned().expect("every item was scored"))
        .collect())
}

/// What [`aggregate`] needs besides the records.
pub(crate) struct RunInfo<'a> {
    pub benchmark: &'a str,
    pub protocol: &'a str,
    pub model: String,
    pub primary_metric: String,
    pub config: serde_json::Value,
    pub seed: u64,
    pub notes: Vec<String>,
}

/// Micro averages of every metric; per-subject accuracy and their macro average when items have
/// subjects.
pub(crate) fn aggregate(info: RunInfo<'_>, records: &[EvalRecord]) -> BenchmarkResult {
    let mut names: BTreeSet<&String> = BTreeSet::new();
    for record in records {
        names.extend(record.metrics.keys());
    }
    let metrics = names
        .into_iter()
        .map(|name| {
            let values: Vec<f64> = records
                .iter()
                .filter_map(|r| r.metrics.get(name).copied())
                .collect();
            (name.clone(), summarize(&values, info.seed))
        })
        .collect();
    let mut per_subject: BTreeMap<String, SubjectResult> = BTreeMap::new();
    for record in records {
        if let Some(subject) = &record.subject {
            let entry = per_subject.entry(subject.clone()).or_insert(SubjectResult {
                n: 0,
                correct: 0,
                accuracy: 0.0,
            });
            entry.n += 1;
            entry.correct += record.correct as usize;
        }
    }
    for subject in per_subject.values_mut() {
        subject.accuracy = subject.correct as f64 / subject.n as f64;
    }
    let macro_average = (!per_subject.is_empty())
        .then(|| per_subject.values().map(|s| s.accuracy).sum::<f64>() / per_subject.len() as f64);
    BenchmarkResult {
        benchmark: info.benchmark.to_string(),
        protocol: info.protocol.to_string(),
        model: info.model,
        n: records.len(),
        primary_metric: info.primary_metric,
        metrics,
        per_subject,
        macro_average,
        config: info.config,
        notes: info.notes,
    }
}

/// `<out_dir>/<benchmark>_<protocol>.jsonl` and the matching results path.
pub(crate) fn output_paths(
    out_dir: &Path,
    benchmark: &str,
    protocol: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let stem = format!("{benchmark}_{protocol}");
    (
        out_dir.join(format!("{stem}.jsonl")),
        out_dir.join(format!("{stem}.results.json")),
    )
}

pub(crate) fn write_result(path: &Path, result: &BenchmarkResult) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(result).expect("results serialise");
    bytes.push(b'\n');
    Ok(records::jsonl::write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_is_seeded_nested_and_order_preserving() {
        let items: Vec<String> = (0..100).map(|i| format!("item/{i}")).collect();
        let ten = select(items.clone(), Some(10), 3, |s| s.as_str());
        let twenty = select(items.clone(), Some(20), 3, |s| s.as_str());
        assert_eq!(ten.len(), 10);
        assert!(ten.iter().all(|i| twenty.contains(i)));
        let positions: Vec<usize> = ten
            .iter()
            .map(|i| items.iter().position(|x| x == i).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(ten, select(items.clone(), Some(10), 4, |s| s.as_str()));
        assert_eq!(ten, select(items, Some(10), 3, |s| s.as_str()));
    }
}
