//! What phase 1C aims at: phase 1B's failure patterns, their `mine` failures and holdout items,
//! read back and checked to belong together, and each pattern's share of the generation budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use failure_mining::phase::read_judge_settings;
use llm_client::LlmSettings;
use records::clusters::{ClusterAssignment, ClusterRecord};
use records::eval::EvalRecord;
use records::jsonl::read_jsonl;
use records::mining::{FailureRecord, HoldoutMembership, Split, TestItem, TestSetManifest};

use crate::error::{Error, Result};

/// Phase 1B's outputs that phase 1C reads.
#[derive(Clone, Debug)]
pub struct Phase1bOutputs {
    pub dir: PathBuf,
    pub items: Vec<TestItem>,
    /// Index into `items` by id (items are looked up per failure and per example).
    item_index: BTreeMap<String, usize>,
    pub manifest: TestSetManifest,
    pub clusters: Vec<ClusterRecord>,
    /// `mine` failures with the cluster each was assigned to.
    pub failures: Vec<(FailureRecord, usize)>,
    pub holdout: Vec<HoldoutMembership>,
    /// Graded results of the tested model (the "before" of every holdout item).
    pub results: Vec<EvalRecord>,
    /// The judge that graded the open-answer items (`judge.json`), when the test set has any:
    /// the holdout's "after" is graded by the same one.
    pub judge: Option<LlmSettings>,
}

impl Phase1bOutputs {
    /// Reads `dir` and checks that its files describe one test set: every failure and holdout
    /// item exists in `testset.jsonl` on the right split, every assignment names a cluster.
    pub fn read(dir: &Path) -> Result<Self> {
        let (items, manifest) = failure_mining::testset::read_testset(dir)?;
        let by_id: BTreeMap<&str, &TestItem> =
            items.iter().map(|item| (item.id.as_str(), item)).collect();
        let file = |name: &str| dir.join(name);
        let mismatch = |name: &str, message: String| Error::Phase1b {
            path: file(name),
            message,
        };
        let clusters: Vec<ClusterRecord> = read_jsonl(file("clusters.jsonl"))?;
        let assignments: Vec<ClusterAssignment> = read_jsonl(file("assignments.jsonl"))?;
        let failures: Vec<FailureRecord> = read_jsonl(file("failures.jsonl"))?;
        let holdout: Vec<HoldoutMembership> = read_jsonl(file("holdout_membership.jsonl"))?;
        let results: Vec<EvalRecord> = read_jsonl(file("results.jsonl"))?;
        let cluster_of: BTreeMap<&str, usize> = assignments
            .iter()
            .map(|a| (a.item_id.as_str(), a.cluster))
            .collect();
        let cluster_ids: Vec<usize> = clusters.iter().map(|c| c.id).collect();
        let mut assigned = Vec::with_capacity(failures.len());
        for failure in failures {
            match by_id.get(failure.item_id.as_str()) {
                Some(item) if item.split == Split::Mine => {}
                Some(_) => {
                    return Err(mismatch(
                        "failures.jsonl",
                        format!(
                            "item {} is a holdout item, not a mine item",
                            failure.item_id
                        ),
                    ));
                }
                None => {
                    return Err(mismatch(
                        "failures.jsonl",
                        format!(
                            "item {} is not in {} (a file from another test set?)",
                            failure.item_id,
                            file("testset.jsonl").display()
                        ),
                    ));
                }
            }
            let cluster = *cluster_of.get(failure.item_id.as_str()).ok_or_else(|| {
                mismatch(
                    "assignments.jsonl",
                    format!("failure {} has no cluster", failure.item_id),
                )
            })?;
            if !cluster_ids.contains(&cluster) {
                return Err(mismatch(
                    "clusters.jsonl",
                    format!(
                        "cluster {cluster} of failure {} is missing",
                        failure.item_id
                    ),
                ));
            }
            assigned.push((failure, cluster));
        }
        for member in &holdout {
            match by_id.get(member.item_id.as_str()) {
                Some(item) if item.split == Split::Holdout => {}
                _ => {
                    return Err(mismatch(
                        "holdout_membership.jsonl",
                        format!(
                            "item {} is not a holdout item of {} (a file from another test set?)",
                            member.item_id,
                            file("testset.jsonl").display()
                        ),
                    ));
                }
            }
        }
        if clusters.is_empty() {
            return Err(mismatch(
                "clusters.jsonl",
                "no failure patterns to target".into(),
            ));
        }
        let item_index = items
            .iter()
            .enumerate()
            .map(|(index, item)| (item.id.clone(), index))
            .collect();
        // Before any training: the holdout's "after" needs phase 1B's judge.
        let judge = read_judge_settings(dir, &items)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            items,
            item_index,
            manifest,
            clusters,
            failures: assigned,
            holdout,
            results,
            judge,
        })
    }

    pub fn item(&self, id: &str) -> Option<&TestItem> {
        self.item_index.get(id).map(|&index| &self.items[index])
    }

    /// A cluster's name: its label, else its top keywords.
    pub fn cluster_name(&self, id: usize) -> String {
        let Some(cluster) = self.clusters.iter().find(|c| c.id == id) else {
            return format!("cluster {id}");
        };
        match &cluster.label {
            Some(label) => label.name.clone(),
            None => cluster
                .keywords
                .iter()
                .take(3)
                .map(|k| k.term.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Examples per cluster: `total` split in proportion to `failures` (cluster → count), each
/// share at least `floor` and at most `cap` (the remainder goes to the others, largest
/// fractional parts first, so the shares add up to `total` whenever the caps allow it).
pub fn allocate(
    failures: &BTreeMap<usize, usize>,
    total: usize,
    floor: usize,
    cap: usize,
) -> BTreeMap<usize, usize> {
    let clusters: Vec<usize> = failures.keys().copied().collect();
    let mut shares: BTreeMap<usize, usize> =
        clusters.iter().map(|&c| (c, floor.min(cap))).collect();
    let mut left = total.saturating_sub(shares.values().sum());
    while left > 0 {
        let open: Vec<usize> = clusters
            .iter()
            .copied()
            .filter(|c| shares[c] < cap)
            .collect();
        let weight: usize = open.iter().map(|c| failures[c]).sum();
        if open.is_empty() || weight == 0 {
            break;
        }
        // Proportional shares of what is left, floors first, then the largest remainders.
        let exact: Vec<(usize, f64)> = open
            .iter()
            .filter(|c| failures[c] > 0)
            .map(|&c| (c, left as f64 * failures[&c] as f64 / weight as f64))
            .collect();
        let mut given = 0;
        for &(c, x) in &exact {
            let add = (x.floor() as usize).min(cap - shares[&c]);
            *shares.get_mut(&c).unwrap() += add;
            given += add;
        }
        let mut by_remainder = exact.clone();
        by_remainder.sort_by(|a, b| {
            (b.1 - b.1.floor())
                .total_cmp(&(a.1 - a.1.floor()))
                .then(a.0.cmp(&b.0))
        });
        for (c, _) in by_remainder {
            if given >= left {
                break;
            }
            if shares[&c] < cap {
                *shares.get_mut(&c).unwrap() += 1;
                given += 1;
            }
        }
        if given == 0 {
            break;
        }
        left -= given.min(left);
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_failures_within_floor_and_cap() {
        let failures = BTreeMap::from([(0, 60), (1, 30), (2, 10), (3, 0)]);
        let shares = allocate(&failures, 100, 5, 50);
        assert_eq!(shares.values().sum::<usize>(), 100, "{shares:?}");
        assert!(
            shares.values().all(|&s| (5..=50).contains(&s)),
            "{shares:?}"
        );
        assert_eq!(shares[&0], 50, "capped");
        assert!(shares[&1] > shares[&2], "{shares:?}");
        assert_eq!(
            shares[&3], 5,
            "a cluster without failures gets the floor only"
        );
        // Caps that cannot hold the total leave the rest unallocated, never over a cap.
        let shares = allocate(&failures, 1000, 0, 100);
        assert_eq!(shares.values().sum::<usize>(), 300);
    }
}
