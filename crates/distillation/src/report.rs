//! `report.md`, a self-contained `report.html` (inline SVG charts) and `report.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use benchmarks::BenchmarkResult;
use llm_client::LedgerCounts;
use pipeline::report::{Section, Table, escape, write_report_files};
use records::distill::{Funnel, PatternOutcome};
use serde::{Deserialize, Serialize};

use crate::config::Phase1cConfig;
use crate::error::Result;
use crate::phase::ClusterTarget;

/// Significance level of the per-pattern paired tests.
pub const ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase1cReport {
    pub config: Phase1cConfig,
    pub targets: Vec<ClusterTarget>,
    pub funnels: BTreeMap<usize, Funnel>,
    pub judge_scores: Vec<f32>,
    pub judge_unparsed: usize,
    pub teacher_model: String,
    pub judge_model: String,
    pub calibration: Option<crate::phase::Calibration>,
    pub teacher_spend: LedgerCounts,
    pub judge_spend: LedgerCounts,
    pub teacher_usd: f64,
    pub judge_usd: f64,
    pub mix_teacher: usize,
    pub mix_original: usize,
    pub before: Vec<BenchmarkResult>,
    pub after: Vec<BenchmarkResult>,
    pub patterns: Vec<PatternOutcome>,
    pub holdout_graded: usize,
    pub holdout_total: usize,
    pub seconds: f64,
}

impl Phase1cReport {
    pub fn sections(&self) -> Vec<Section> {
        let mut sections = Vec::new();
        let mut summary = vec![format!(
            "Teacher `{}`, judge `{}`; {} teacher + {} original examples trained (mix.teacher_fraction \
             {:.0}%: originals are sampled to match; with no teacher example the model still \
             trains on originals so the rest of the phase runs); {:.0} s in all.",
            self.teacher_model,
            self.judge_model,
            self.mix_teacher,
            self.mix_original,
            100.0 * self.config.mix.teacher_fraction,
            self.seconds
        )];
        if self.teacher_model == self.judge_model {
            summary.push(
                "Warning: the judge is the teacher's own model, so it grades its own work; \
                 use a different judge for real data."
                    .into(),
            );
        }
        if self.config.teacher.kind == "serve"
            && self
                .config
                .teacher
                .serve_model
                .as_ref()
                .is_none_or(|m| *m == self.config.model.path)
        {
            summary.push(
                "The teacher is the student itself: this run demonstrates the mechanics. \
                 Rationalized answers verified against the gold are what can still teach it \
                 something; point [teacher] at a strong model for real gains."
                    .into(),
            );
        }
        let improved: Vec<&PatternOutcome> = self
            .patterns
            .iter()
            .filter(|p| {
                p.targeted && p.mcnemar_p < ALPHA && p.failure_rate_after < p.failure_rate_before
            })
            .collect();
        let regressed: Vec<&PatternOutcome> = self
            .patterns
            .iter()
            .filter(|p| p.mcnemar_p < ALPHA && p.failure_rate_after > p.failure_rate_before)
            .collect();
        summary.push(format!(
            "{} of {} targeted patterns improved significantly on holdout items (McNemar p < {ALPHA}); \
             {} patterns regressed significantly{}.",
            improved.len(),
            self.patterns.iter().filter(|p| p.targeted).count(),
            regressed.len(),
            if regressed.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    regressed
                        .iter()
                        .map(|p| p.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ));
        let refused = |key: &str| -> usize {
            self.funnels
                .values()
                .filter_map(|f| f.dropped.get(key))
                .sum()
        };
        let unsent = refused("generate: request failed (budget_exceeded)");
        let unverified = refused("verify: request failed (budget_exceeded)");
        if unsent + unverified > 0 {
            summary.push(format!(
                "Teacher budget cap of ${:.2} reached: {unsent} generation requests were \
                 not sent and {unverified} examples were dropped because their re-derivation \
                 could not be paid for; everything paid for before the cap is kept and used.",
                self.config.teacher.budget_usd.unwrap_or(0.0)
            ));
        }
        if self.holdout_graded < self.holdout_total {
            summary.push(format!(
                "{} of {} holdout items were graded after training.",
                self.holdout_graded, self.holdout_total
            ));
        }
        sections.push(Section {
            title: "Summary".into(),
            paragraphs: summary,
            ..Section::default()
        });

        sections.push(Section {
            title: "Failure patterns on holdout items (before → after)".into(),
            paragraphs: vec![
                "Holdout items were never shown to a teacher. Before = phase 1B's grades of the \
                 student; after = the trained model's, graded the same way. Fixed/broken count \
                 items wrong→right and right→wrong; the p-value is the exact McNemar test over \
                 them, the CI a paired bootstrap of the change in failure rate."
                    .into(),
            ],
            table: Some(Table {
                headers: [
                    "pattern",
                    "targeted",
                    "items",
                    "failure rate before",
                    "after",
                    "change (95% CI)",
                    "fixed",
                    "broken",
                    "McNemar p",
                    "flag",
                ]
                .map(String::from)
                .to_vec(),
                rows: self
                    .patterns
                    .iter()
                    .map(|p| {
                        let flag = if p.mcnemar_p >= ALPHA {
                            ""
                        } else if p.failure_rate_after < p.failure_rate_before {
                            "improved"
                        } else {
                            "REGRESSED"
                        };
                        vec![
                            p.label.clone(),
                            if p.targeted { "yes" } else { "no" }.into(),
                            p.items.to_string(),
                            format!("{:.3}", p.failure_rate_before),
                            format!("{:.3}", p.failure_rate_after),
                            format!(
                                "{:+.3} [{:+.3}, {:+.3}]",
                                p.failure_rate_after - p.failure_rate_before,
                                p.difference_ci95[0],
                                p.difference_ci95[1]
                            ),
                            p.fixed.to_string(),
                            p.broken.to_string(),
                            format!("{:.4}", p.mcnemar_p),
                            flag.into(),
                        ]
                    })
                    .collect(),
            }),
            markdown_extra: String::new(),
            // A chart that cannot be drawn says so in the page rather than failing the report.
            html_extra: before_after_svg(&self.patterns)
                .unwrap_or_else(|e| format!("<p>{}</p>", escape(&e.to_string()))),
        });

        if !self.after.is_empty() {
            let forgetting: Vec<String> =
                self.after
                    .iter()
                    .filter_map(|after| {
                        let before = self.before.iter().find(|b| {
                            b.benchmark == after.benchmark && b.protocol == after.protocol
                        })?;
                        let (b, a) = (before.primary()?, after.primary()?);
                        (a.mean < b.ci95[0]).then(|| {
                            format!(
                                "{} dropped below its CI: {:.3} → {:.3} (before CI [{:.3}, {:.3}])",
                                after.benchmark, b.mean, a.mean, b.ci95[0], b.ci95[1]
                            )
                        })
                    })
                    .collect();
            sections.push(Section {
                title: "Validation benchmarks (student → trained)".into(),
                paragraphs: if forgetting.is_empty() {
                    vec!["No benchmark fell below its before-CI.".into()]
                } else {
                    forgetting
                        .iter()
                        .map(|f| format!("FORGETTING: {f}"))
                        .collect()
                },
                markdown_extra: format!(
                    "{}\n",
                    benchmarks::comparison_markdown(&self.before, &self.after)
                ),
                html_extra: format!(
                    "<pre>{}</pre>\n",
                    escape(&benchmarks::comparison_markdown(&self.before, &self.after))
                ),
                ..Section::default()
            });
        }

        let stage_columns = [
            "pattern",
            "requested",
            "generated",
            "unreadable answers",
            "verified",
            "judged > threshold",
            "deduplicated",
            "decontaminated",
            "trained",
            "dropped (why)",
        ];
        sections.push(Section {
            title: "Funnel per pattern".into(),
            paragraphs: vec![format!(
                "Every example that left the gate has a row in gate.jsonl with its stage and reason; \
                 every kept example's provenance (pattern, seed items, teacher, template hash, \
                 ledger request, judge score) is in mix.jsonl. Judge threshold: score > {}.",
                self.config.judge.threshold
            )],
            table: Some(Table {
                headers: stage_columns.map(String::from).to_vec(),
                rows: self
                    .targets
                    .iter()
                    .map(|t| {
                        let f = self.funnels.get(&t.cluster).cloned().unwrap_or_default();
                        vec![
                            format!("{}: {}", t.cluster, t.label),
                            format!("{} ({} targeted, {} rationalize)", f.requested, t.targeted, t.rationalize),
                            f.generated.to_string(),
                            f.unreadable_answers.to_string(),
                            f.verified.to_string(),
                            f.judged.to_string(),
                            f.deduplicated.to_string(),
                            f.decontaminated.to_string(),
                            f.trained.to_string(),
                            f.dropped
                                .iter()
                                .map(|(why, n)| format!("{why}: {n}"))
                                .collect::<Vec<_>>()
                                .join("; "),
                        ]
                    })
                    .collect(),
            }),
            ..Section::default()
        });

        let mut histogram = [0usize; 10];
        for &score in &self.judge_scores {
            histogram[(score.round() as usize).clamp(1, 10) - 1] += 1;
        }
        sections.push(Section {
            title: "Judge scores".into(),
            paragraphs: vec![format!(
                "{} verdicts; {} judge answers did not parse as a score (retried with another seed, \
                 never read as a score).",
                self.judge_scores.len(),
                self.judge_unparsed
            )],
            table: Some(Table {
                headers: (1..=10).map(|s| s.to_string()).collect(),
                rows: vec![histogram.iter().map(|n| n.to_string()).collect()],
            }),
            ..Section::default()
        });

        if let Some(c) = &self.calibration {
            let rate = |x: Option<f64>| x.map_or("undefined".to_string(), |x| format!("{x:.2}"));
            sections.push(Section {
                title: "Judge calibration".into(),
                paragraphs: vec![format!(
                    "On {} labelled examples ({} good), the judge at threshold {} kept {} ({} of                      them good): precision {}, recall {}; {} answers never parsed as a score.                      Add your own labelled examples with judge.calibration.",
                    c.examples,
                    c.good,
                    self.config.judge.threshold,
                    c.kept,
                    c.true_keeps,
                    rate(c.precision),
                    rate(c.recall),
                    c.unparsed
                )],
                ..Section::default()
            });
        }
        sections.push(Section {
            title: "Spend".into(),
            paragraphs: vec![format!(
                "Teacher ledger: {} answers, {} failed, {} pending, {} HTTP attempts ({} given up \
                 on after a timeout, possibly billed), ${:.4}. Judge ledger: {} answers, {} \
                 failed, {} pending, {} HTTP attempts ({} given up on), ${:.4}. A rerun reads \
                 finished answers from the ledgers and pays nothing for them.",
                self.teacher_spend.done,
                self.teacher_spend.failed,
                self.teacher_spend.pending,
                self.teacher_spend.attempts,
                self.teacher_spend.abandoned,
                self.teacher_usd,
                self.judge_spend.done,
                self.judge_spend.failed,
                self.judge_spend.pending,
                self.judge_spend.attempts,
                self.judge_spend.abandoned,
                self.judge_usd
            )],
            ..Section::default()
        });
        sections
    }
}

/// Each pattern's holdout failure rate before (grey) and after (blue), targeted patterns first.
fn before_after_svg(patterns: &[PatternOutcome]) -> Result<String> {
    let rows: Vec<charts::BarPair> = patterns
        .iter()
        .map(|p| charts::BarPair {
            label: format!(
                "{}{}",
                p.label,
                if p.targeted { "" } else { " (not targeted)" }
            ),
            before: p.failure_rate_before,
            after: p.failure_rate_after,
        })
        .collect();
    let axes = charts::Axes {
        caption: "Holdout failure rate per pattern",
        x: "failure rate on holdout items no teacher saw",
        y: "",
    };
    Ok(charts::paired_bars(
        axes,
        ["before phase 1C", "after"],
        &rows,
    )?)
}

pub fn write_report(dir: &Path, report: &Phase1cReport) -> Result<(PathBuf, PathBuf)> {
    Ok(write_report_files(
        dir,
        "Phase 1C: targeted distillation",
        &report.sections(),
        report,
    )?)
}
