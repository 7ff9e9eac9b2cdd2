//! The phase 1B test set: pool families and generated families, stratified, checked for overlap
//! with the validation benchmarks, deduplicated and split by hashed id into `mine` and `holdout`.
//!
//! Stratification is water-filling: every family gets the same quota, a family with fewer items
//! than that gives all it has, and what it leaves is shared among the others (generated families
//! never run out). At 50,000 items the small pool families (CB, COPA, ARC-Challenge, ...) are
//! taken whole, the large ones (HellaSwag, TriviaQA) are capped near 3,000, and generated
//! families fill the rest; a small `size` gives a proportionally small, still stratified set.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use benchmarks::stats::{SplitMix64, stable_hash};
use records::jsonl::{read_jsonl, write_atomic, write_jsonl_atomic};
use records::mining::{FamilyCounts, LeakageReport, Split, TestItem, TestSetManifest};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::generate;
use crate::item::ItemDraft;
use crate::judge::read_open_answers;
use crate::leakage::NgramIndex;
use crate::patterns::clip;
use crate::pool::{POOL_FAMILIES, pool_family};

/// How a test set is built.
#[derive(Clone, Debug, PartialEq)]
pub struct TestSetConfig {
    /// Items to build (both splits).
    pub size: usize,
    pub seed: u64,
    /// Share of items in the holdout split, in percent.
    pub holdout_percent: u32,
    /// Families to include; all pool and generated families when `None`.
    pub families: Option<Vec<String>>,
    /// Word n-gram length of the leakage check.
    pub ngram: usize,
    /// The task pool (`assets/data/pool`).
    pub pool_dir: PathBuf,
    /// Where MMLU, GSM8K and HumanEval are (`assets/data`).
    pub benchmark_data_dir: PathBuf,
    /// JSONL files of open-answer items (question + reference, graded by an LLM judge), taken
    /// whole on top of `size` after the same leakage check and deduplication.
    pub open_answer_files: Vec<PathBuf>,
}

impl TestSetConfig {
    /// 50,000 items, 20% holdout, 13-grams, every family, data from the assets folder.
    pub fn new(size: usize) -> Self {
        let data = assets::AssetPaths::locate();
        Self {
            size,
            seed: 1234,
            holdout_percent: 20,
            families: None,
            ngram: 13,
            pool_dir: data.pool(),
            benchmark_data_dir: data.data(),
            open_answer_files: Vec::new(),
        }
    }

    /// The families this config builds from, checked against the known ones.
    pub fn family_names(&self) -> Result<Vec<String>> {
        let known = builtin_families();
        let Some(chosen) = &self.families else {
            return Ok(known.iter().map(|name| name.to_string()).collect());
        };
        for name in chosen {
            if !known.contains(&name.as_str()) {
                return Err(Error::UnknownFamily {
                    family: name.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(chosen.clone())
    }
}

/// The pool and generated families, each with its exact grader.
pub fn builtin_families() -> Vec<&'static str> {
    POOL_FAMILIES
        .iter()
        .map(|family| family.name)
        .chain(generate::FAMILIES.iter().copied())
        .collect()
}

/// Which split an id falls in: a hash of the id alone (no seed), so an item stays on its side
/// in every build and every round of the loop.
pub fn split_of(id: &str, holdout_percent: u32) -> Split {
    let bucket = SplitMix64::new(stable_hash(id) ^ 0x5EED_5A17).next_u64() % 100;
    if bucket < u64::from(holdout_percent) {
        Split::Holdout
    } else {
        Split::Mine
    }
}

/// Builds the test set described by `config`.
pub fn build_testset(config: &TestSetConfig) -> Result<(Vec<TestItem>, TestSetManifest)> {
    if config.size == 0 {
        return Err(Error::EmptyTestSet("size is 0".into()));
    }
    if config.holdout_percent == 0 || config.holdout_percent >= 100 {
        return Err(Error::Config {
            field: "holdout_percent".into(),
            message: format!(
                "{} leaves one split empty; use 1 to 99",
                config.holdout_percent
            ),
        });
    }
    let families = config.family_names()?;
    let index = NgramIndex::validation_benchmarks(&config.benchmark_data_dir, config.ngram)?;
    let mut leakage = LeakageReport {
        ngram: config.ngram,
        reference_ngrams: index.per_source().clone(),
        ..LeakageReport::default()
    };
    let mut counts: BTreeMap<String, FamilyCounts> = BTreeMap::new();
    let mut notes = Vec::new();

    // Clean candidates per family (leaked and duplicate items removed). Pool families are read
    // first, since their sizes set the quotas; generated families are then made to measure.
    let mut seen: HashSet<String> = HashSet::new();
    let mut clean = |drafts: Vec<ItemDraft>, entry: &mut FamilyCounts| {
        let mut kept = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let id = draft.id();
            if !seen.insert(id.clone()) {
                entry.duplicates += 1;
                continue;
            }
            if let Some(benchmark) = index.overlap(&format!("{} {}", draft.question, draft.gold)) {
                entry.leaked += 1;
                *leakage.dropped.entry(benchmark.to_string()).or_default() += 1;
                if leakage.examples.len() < 10 {
                    leakage.examples.push(format!(
                        "{} ({benchmark}): {}",
                        draft.family,
                        clip(&draft.question, 160)
                    ));
                }
                continue;
            }
            kept.push((id, draft));
        }
        kept
    };
    let mut pool: BTreeMap<String, Vec<(String, ItemDraft)>> = BTreeMap::new();
    for name in &families {
        let Some(family) = pool_family(name) else {
            continue;
        };
        let entry = counts.entry(name.clone()).or_default();
        let read = family.read(&config.pool_dir)?;
        entry.unusable = read.unusable.len();
        entry.available = read.drafts.len() + read.unusable.len();
        if let Some((line, why)) = read.unusable.first() {
            notes.push(format!(
                "{}: {} unusable rows, first at line {line}: {why}",
                family.file,
                read.unusable.len()
            ));
        }
        pool.insert(name.clone(), clean(read.drafts, entry));
    }
    let available: Vec<Option<usize>> = families
        .iter()
        .map(|name| pool.get(name).map(Vec::len))
        .collect();
    let quotas = water_fill(config.size, &available);

    let mut items = Vec::with_capacity(config.size);
    for (name, quota) in families.iter().zip(quotas) {
        let entry = counts.entry(name.clone()).or_default();
        let candidates = match pool.remove(name) {
            Some(candidates) => candidates,
            None => {
                // A margin over the quota covers what the leakage check and dedup remove.
                let drafts = generate::generate(name, quota + quota / 10 + 16, config.seed)?;
                entry.available = drafts.len();
                clean(drafts, entry)
            }
        };
        entry.not_sampled = candidates.len() - quota.min(candidates.len());
        if candidates.len() < quota {
            notes.push(format!(
                "{name}: quota {quota}, {} clean items available",
                candidates.len()
            ));
        }
        let chosen = benchmarks::select(candidates, Some(quota), config.seed, |(id, _)| id);
        for (id, draft) in chosen {
            let split = split_of(&id, config.holdout_percent);
            match split {
                Split::Mine => entry.mine += 1,
                Split::Holdout => entry.holdout += 1,
            }
            items.push(draft.into_item(id, split));
        }
    }
    let sampled = items.len();
    // Open-answer files are taken whole: a user's own questions are not sampled away.
    for path in &config.open_answer_files {
        let mut by_family: BTreeMap<String, Vec<ItemDraft>> = BTreeMap::new();
        for draft in read_open_answers(path, &builtin_families())? {
            by_family
                .entry(draft.family.clone())
                .or_default()
                .push(draft);
        }
        for (name, drafts) in by_family {
            let entry = counts.entry(name).or_default();
            entry.available += drafts.len();
            for (id, draft) in clean(drafts, entry) {
                let split = split_of(&id, config.holdout_percent);
                match split {
                    Split::Mine => entry.mine += 1,
                    Split::Holdout => entry.holdout += 1,
                }
                items.push(draft.into_item(id, split));
            }
        }
    }
    if items.is_empty() {
        return Err(Error::EmptyTestSet(format!(
            "no usable items in families {}",
            families.join(", ")
        )));
    }
    if sampled < config.size {
        notes.push(format!(
            "{} items asked for, {sampled} available after the leakage check and deduplication",
            config.size,
        ));
    }
    let manifest = TestSetManifest {
        seed: config.seed,
        requested: config.size,
        total: items.len(),
        holdout_percent: config.holdout_percent,
        families: counts,
        leakage,
        testset_sha256: testset_sha256(&items),
        notes,
    };
    Ok((items, manifest))
}

/// Quotas summing to `total` (or to all there is): equal shares, each capped by what a family
/// has (`None` = unlimited), the remainder shared among the families with room, and a share
/// that does not divide evenly given one item at a time to the first families.
pub fn water_fill(total: usize, available: &[Option<usize>]) -> Vec<usize> {
    let mut quotas = vec![0usize; available.len()];
    let mut left = total;
    loop {
        let open: Vec<usize> = (0..available.len())
            .filter(|&i| available[i].is_none_or(|cap| quotas[i] < cap))
            .collect();
        if left == 0 || open.is_empty() {
            return quotas;
        }
        let share = (left / open.len()).max(1);
        for &i in &open {
            let room = available[i].map_or(usize::MAX, |cap| cap - quotas[i]);
            let give = share.min(room).min(left);
            quotas[i] += give;
            left -= give;
            if left == 0 {
                break;
            }
        }
    }
}

/// sha256 of the items as `testset.jsonl` holds them.
pub fn testset_sha256(items: &[TestItem]) -> String {
    let mut hasher = Sha256::new();
    for item in items {
        hasher.update(serde_json::to_vec(item).expect("items serialise"));
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Writes `testset.jsonl` and `manifest.json` into `dir`.
pub fn write_testset(dir: &Path, items: &[TestItem], manifest: &TestSetManifest) -> Result<()> {
    write_jsonl_atomic(dir.join("testset.jsonl"), items)?;
    let mut json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    json.push(b'\n');
    write_atomic(dir.join("manifest.json"), &json)?;
    Ok(())
}

/// Reads `testset.jsonl` and `manifest.json` from `dir`, checking that the items are the ones
/// the manifest describes (a hand-edited or swapped file is an error, not a silent reuse).
pub fn read_testset(dir: &Path) -> Result<(Vec<TestItem>, TestSetManifest)> {
    let items: Vec<TestItem> = read_jsonl(dir.join("testset.jsonl"))?;
    let manifest_path = dir.join("manifest.json");
    let text =
        std::fs::read_to_string(&manifest_path).map_err(crate::error::io_error(&manifest_path))?;
    let manifest: TestSetManifest =
        serde_json::from_str(&text).map_err(|error| Error::PoolRow {
            path: manifest_path.clone(),
            line: error.line(),
            message: error.to_string(),
        })?;
    let actual = testset_sha256(&items);
    if actual != manifest.testset_sha256 {
        return Err(Error::Config {
            field: dir.join("testset.jsonl").display().to_string(),
            message: format!(
                "its content (sha256 {actual}) is not the test set manifest.json describes \
                 ({}); rebuild it rather than edit it",
                manifest.testset_sha256
            ),
        });
    }
    Ok((items, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_caps_small_families_and_shares_the_rest() {
        assert_eq!(water_fill(10, &[Some(1), Some(100), None]), vec![1, 5, 4]);
        assert_eq!(water_fill(9, &[Some(3), Some(3), Some(3)]), vec![3, 3, 3]);
        // Less available than asked for: everything, no more.
        assert_eq!(water_fill(50, &[Some(3), Some(4)]), vec![3, 4]);
        assert_eq!(water_fill(0, &[None]), vec![0]);
        let quotas = water_fill(50_000, &[Some(56), Some(10_042), None, None]);
        assert_eq!(quotas.iter().sum::<usize>(), 50_000);
        assert_eq!(quotas[0], 56);
        assert!(
            quotas[1] == 10_042 && quotas[2].abs_diff(quotas[3]) <= 1,
            "{quotas:?}"
        );
    }

    #[test]
    fn splits_depend_on_the_id_alone_and_follow_the_percentage() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("tl-{i:016x}")).collect();
        let holdout = ids
            .iter()
            .filter(|id| split_of(id, 20) == Split::Holdout)
            .count();
        assert!((1_800..2_200).contains(&holdout), "{holdout}");
        assert!(ids.iter().all(|id| split_of(id, 20) == split_of(id, 20)));
        // A larger holdout contains a smaller one: raising the share never moves an item to mine.
        assert!(
            ids.iter()
                .filter(|id| split_of(id, 10) == Split::Holdout)
                .all(|id| split_of(id, 20) == Split::Holdout)
        );
    }
}
