//! The phase 1B report: `report.md`, a self-contained `report.html` (inline SVG, no external
//! files) and `report.json` (the same facts, for the loop's combined report). Every section is
//! built once as tables and rendered twice, so the two files cannot disagree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use benchmarks::stats::summarize;
use records::clusters::{ClusterAssignment, ClusterRecord};
use records::eval::EvalRecord;
use records::mining::{FailureRecord, HoldoutMembership, Split, TestItem, TestSetManifest};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::patterns::LabelOutcome;
use crate::phase::{Phase1bConfig, index_items, index_records};
use crate::run::needs_judge;
use pipeline::report::{Section, Table, write_report_files};

/// One family's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FamilyRow {
    pub family: String,
    pub items: usize,
    pub failed: usize,
    pub failure_rate: f64,
    /// Bootstrap 95% interval of the failure rate.
    pub ci95: [f64; 2],
    pub mine: usize,
    pub holdout: usize,
}

/// One failure pattern as the report shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatternRow {
    pub id: usize,
    pub name: String,
    pub description: String,
    pub labelled_by: String,
    pub size: usize,
    pub share: f64,
    pub keywords: Vec<String>,
    /// Families of the members, most frequent first, with counts.
    pub families: Vec<(String, usize)>,
    /// Up to three members: (question, the model's answer, the right answer).
    pub examples: Vec<(String, String, String)>,
    /// Holdout items placed in this pattern, and how many of them the model failed.
    pub holdout_items: usize,
    pub holdout_failed: usize,
}

/// Everything in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase1bReport {
    pub model: String,
    pub items: usize,
    pub mine_items: usize,
    pub holdout_items: usize,
    pub failures_mined: usize,
    pub run_seconds: f64,
    pub families: Vec<FamilyRow>,
    pub patterns: Vec<PatternRow>,
    /// Holdout items near no pattern.
    pub holdout_other: usize,
    pub truncated_texts: usize,
    pub labels: LabelOutcome,
    pub manifest: TestSetManifest,
    pub map_svg: String,
    /// Open-answer items, graded by the LLM judge named here (every other item by an exact
    /// checker).
    #[serde(default)]
    pub judged_items: usize,
    #[serde(default)]
    pub judge: Option<String>,
}

impl Phase1bReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Phase1bConfig,
        manifest: &TestSetManifest,
        items: &[TestItem],
        records: &[EvalRecord],
        failures: &[FailureRecord],
        clusters: &[ClusterRecord],
        assignments: &[ClusterAssignment],
        membership: &[HoldoutMembership],
        labels: LabelOutcome,
        map_svg: String,
        run_seconds: f64,
    ) -> Self {
        let by_record = index_records(records);
        let by_item = index_items(items);
        let mut per_family: BTreeMap<&str, (Vec<f64>, usize, usize)> = BTreeMap::new();
        for item in items {
            let entry = per_family.entry(item.family.as_str()).or_default();
            if let Some(record) = by_record.get(item.id.as_str()) {
                entry.0.push(f64::from(u8::from(!record.correct)));
            }
            match item.split {
                Split::Mine => entry.1 += 1,
                Split::Holdout => entry.2 += 1,
            }
        }
        let families = per_family
            .into_iter()
            .map(|(family, (failed, mine, holdout))| {
                let summary = summarize(&failed, manifest.seed);
                FamilyRow {
                    family: family.to_string(),
                    items: failed.len(),
                    failed: failed.iter().filter(|&&f| f > 0.0).count(),
                    failure_rate: summary.mean,
                    ci95: summary.ci95,
                    mine,
                    holdout,
                }
            })
            .collect();
        let failure_by_id: BTreeMap<&str, &FailureRecord> = failures
            .iter()
            .map(|failure| (failure.item_id.as_str(), failure))
            .collect();
        let patterns = clusters
            .iter()
            .map(|cluster| {
                let mut family_counts: BTreeMap<&str, usize> = BTreeMap::new();
                for assignment in assignments.iter().filter(|a| a.cluster == cluster.id) {
                    if let Some(item) = by_item.get(assignment.item_id.as_str()) {
                        *family_counts.entry(item.family.as_str()).or_default() += 1;
                    }
                }
                let mut families: Vec<(String, usize)> = family_counts
                    .into_iter()
                    .map(|(family, count)| (family.to_string(), count))
                    .collect();
                families.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let examples = cluster
                    .representatives
                    .iter()
                    .filter_map(|member| failure_by_id.get(member.id.as_str()))
                    .take(3)
                    .map(|failure| {
                        (
                            clip(&failure.question, 220),
                            clip(failure.extracted.as_deref().unwrap_or(&failure.output), 120),
                            clip(&failure.gold, 120),
                        )
                    })
                    .collect();
                let members: Vec<&HoldoutMembership> = membership
                    .iter()
                    .filter(|m| m.cluster == Some(cluster.id))
                    .collect();
                let label =
                    cluster
                        .label
                        .clone()
                        .unwrap_or_else(|| records::clusters::ClusterLabel {
                            name: format!("cluster {}", cluster.id),
                            description: String::new(),
                            labelled_by: "unlabelled".into(),
                        });
                PatternRow {
                    id: cluster.id,
                    name: label.name,
                    description: label.description,
                    labelled_by: label.labelled_by,
                    size: cluster.size,
                    share: cluster.share,
                    keywords: cluster
                        .keywords
                        .iter()
                        .take(8)
                        .map(|k| k.term.clone())
                        .collect(),
                    families,
                    examples,
                    holdout_items: members.len(),
                    holdout_failed: members.iter().filter(|m| !m.correct).count(),
                }
            })
            .collect();
        Self {
            model: config.model.path.display().to_string(),
            items: items.len(),
            mine_items: items.iter().filter(|i| i.split == Split::Mine).count(),
            holdout_items: items.iter().filter(|i| i.split == Split::Holdout).count(),
            failures_mined: failures.len(),
            run_seconds,
            families,
            patterns,
            holdout_other: membership.iter().filter(|m| m.cluster.is_none()).count(),
            truncated_texts: failures.iter().filter(|f| f.truncated).count(),
            labels,
            manifest: manifest.clone(),
            map_svg,
            judged_items: items.iter().filter(|item| needs_judge(item)).count(),
            judge: config
                .judge
                .as_ref()
                .map(|judge| match judge.kind.as_str() {
                    "serve" => format!(
                        "`serve` over {}",
                        judge
                            .serve_model
                            .as_ref()
                            .unwrap_or(&config.model.path)
                            .display()
                    ),
                    _ => format!(
                        "`{}` at {}",
                        judge.endpoint.model.as_deref().unwrap_or("(default model)"),
                        judge
                            .endpoint
                            .base_url
                            .as_deref()
                            .unwrap_or("(default URL)")
                    ),
                }),
        }
    }

    /// The report as sections of paragraphs and tables, rendered by both writers.
    pub fn sections(&self) -> Vec<Section> {
        let mut sections = Vec::new();
        let overall_failed: usize = self.families.iter().map(|f| f.failed).sum();
        let overall_items: usize = self.families.iter().map(|f| f.items).sum();
        sections.push(Section {
            title: "Summary".into(),
            paragraphs: vec![format!(
                "Model `{}` on {} items ({} mine, {} holdout; {} families), {} failed \
                 ({:.1}%). {} failures on the mine split were clustered into {} patterns. \
                 Running and grading took {:.0} s.",
                self.model,
                self.items,
                self.mine_items,
                self.holdout_items,
                self.families.len(),
                overall_failed,
                100.0 * overall_failed as f64 / overall_items.max(1) as f64,
                self.failures_mined,
                self.patterns.len(),
                self.run_seconds
            )],
            table: None,
            ..Section::default()
        });
        let mut family_notes =
            vec!["All items of each family, both splits; 95% bootstrap intervals.".to_string()];
        if self.judged_items > 0 {
            family_notes.push(format!(
                "{} open-answer items were graded by the LLM judge {} (each answer recorded in \
                 judge-ledger.sqlite, its words in results.jsonl); every other item by an exact \
                 checker.",
                self.judged_items,
                self.judge.as_deref().unwrap_or("(unnamed)")
            ));
        }
        sections.push(Section {
            title: "Failure rate per family".into(),
            paragraphs: family_notes,
            table: Some(Table {
                headers: vec![
                    "family".into(),
                    "items".into(),
                    "failed".into(),
                    "failure rate".into(),
                    "95% CI".into(),
                    "mine / holdout".into(),
                ],
                rows: self
                    .families
                    .iter()
                    .map(|f| {
                        vec![
                            f.family.clone(),
                            f.items.to_string(),
                            f.failed.to_string(),
                            format!("{:.3}", f.failure_rate),
                            format!("[{:.3}, {:.3}]", f.ci95[0], f.ci95[1]),
                            format!("{} / {}", f.mine, f.holdout),
                        ]
                    })
                    .collect(),
            }),
            ..Section::default()
        });
        let mut pattern_notes = vec![format!(
            "{} of {} holdout items are near no pattern (\"other\"). {} embedded texts filled the \
             encoder's window and may have been cut.",
            self.holdout_other, self.holdout_items, self.truncated_texts
        )];
        if !self.labels.fallbacks.is_empty() {
            pattern_notes.push(format!(
                "{} of {} patterns carry keyword labels (`keyword-fallback`), not LLM names: {}",
                self.labels.fallbacks.len(),
                self.patterns.len(),
                self.labels
                    .fallbacks
                    .iter()
                    .map(|(id, why)| format!("pattern {id}: {}", clip(why, 160)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        sections.push(Section {
            title: "Failure patterns".into(),
            paragraphs: pattern_notes,
            table: Some(Table {
                headers: vec![
                    "id".into(),
                    "pattern".into(),
                    "labelled by".into(),
                    "failures".into(),
                    "share".into(),
                    "families".into(),
                    "keywords".into(),
                    "holdout items (failed)".into(),
                ],
                rows: self
                    .patterns
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.to_string(),
                            format!("{}: {}", p.name, p.description),
                            p.labelled_by.clone(),
                            p.size.to_string(),
                            format!("{:.1}%", 100.0 * p.share),
                            p.families
                                .iter()
                                .take(3)
                                .map(|(family, count)| format!("{family} {count}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            p.keywords.join(", "),
                            format!("{} ({})", p.holdout_items, p.holdout_failed),
                        ]
                    })
                    .collect(),
            }),
            markdown_extra: "\n![cluster map](clustering/clusters_map.svg)\n".into(),
            html_extra: format!("{}\n", self.map_svg),
        });
        for pattern in &self.patterns {
            sections.push(Section {
                title: format!("Pattern {}: {}", pattern.id, pattern.name),
                paragraphs: vec![pattern.description.clone()],
                table: Some(Table {
                    headers: vec![
                        "question".into(),
                        "model answered".into(),
                        "right answer".into(),
                    ],
                    rows: pattern
                        .examples
                        .iter()
                        .map(|(q, a, g)| vec![q.clone(), a.clone(), g.clone()])
                        .collect(),
                }),
                ..Section::default()
            });
        }
        let leakage = &self.manifest.leakage;
        let mut rows: Vec<Vec<String>> = leakage
            .reference_ngrams
            .iter()
            .map(|(benchmark, grams)| {
                vec![
                    benchmark.clone(),
                    grams.to_string(),
                    leakage
                        .dropped
                        .get(benchmark)
                        .copied()
                        .unwrap_or(0)
                        .to_string(),
                ]
            })
            .collect();
        rows.sort();
        let mut paragraphs = vec![format!(
            "Every item was checked for a shared {}-gram with the validation benchmarks; \
             overlapping items were dropped before sampling.",
            leakage.ngram
        )];
        paragraphs.extend(leakage.examples.iter().map(|e| format!("Dropped: {e}")));
        paragraphs.extend(self.manifest.notes.iter().cloned());
        sections.push(Section {
            title: "Leakage and test set".into(),
            paragraphs,
            table: Some(Table {
                headers: vec![
                    "benchmark".into(),
                    "reference n-grams".into(),
                    "items dropped".into(),
                ],
                rows,
            }),
            ..Section::default()
        });
        sections
    }
}

fn clip(text: &str, chars: usize) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// Writes `report.md`, `report.html` and `report.json` into `dir`; returns the first two paths.
pub fn write_report(dir: &Path, report: &Phase1bReport) -> Result<(PathBuf, PathBuf)> {
    Ok(write_report_files(
        dir,
        "Phase 1B: failure patterns",
        &report.sections(),
        report,
    )?)
}
