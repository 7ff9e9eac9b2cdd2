//! The loop's one report: each stage's time and status from the manifest, the benchmark table
//! after each phase, then every phase's own report sections (read back from their
//! `report.json`, so a reused stage reports exactly what it reported when it ran).

use std::path::{Path, PathBuf};

use distillation::report::Phase1cReport;
use failure_mining::report::Phase1bReport;
use lora_training::phase::Phase1aReport;
use pipeline::manifest::Manifest;
use pipeline::report::{Section, Table, benchmark_table, write_report_files};
use records::eval::BenchmarkResult;
use serde::{Deserialize, Serialize};

use crate::{Phase, Phase1Config, Result, StageOutcome, stages};

const TITLE: &str = "tuneloop: the closed loop";

/// One stage as the report lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRow {
    pub name: String,
    pub action: String,
    pub reason: String,
    pub status: Option<String>,
    pub seconds: Option<f64>,
}

/// `report.json`: what the loop did, stage by stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase1Report {
    pub stages: Vec<StageRow>,
    pub rounds_run: usize,
    pub stopped_early: Option<String>,
    /// Every failure pattern of every round: (stage, cluster id, label).
    pub patterns: Vec<(String, usize, String)>,
}

/// `sections` of a phase's report under `stage`: titles prefixed, Markdown links made relative
/// to the loop's run directory.
fn prefixed(stage: &str, sections: Vec<Section>) -> Vec<Section> {
    sections
        .into_iter()
        .map(|mut section| {
            section.title = format!("{stage} · {}", section.title);
            section.markdown_extra = section.markdown_extra.replace("](", &format!("]({stage}/"));
            section
        })
        .collect()
}

pub(crate) fn write(
    config: &Phase1Config,
    manifest: &Manifest,
    outcomes: &[StageOutcome],
    rounds_run: usize,
    stopped_early: &Option<String>,
) -> Result<(PathBuf, PathBuf)> {
    let root = &config.run_dir;
    let rows: Vec<StageRow> = outcomes
        .iter()
        .map(|outcome| {
            let record = manifest.stage(&outcome.name);
            StageRow {
                name: outcome.name.clone(),
                action: outcome.action.clone(),
                reason: outcome.reason.clone(),
                status: record.map(|r| format!("{:?}", r.status).to_lowercase()),
                seconds: record.and_then(|r| r.seconds),
            }
        })
        .collect();
    let mut summary = vec![format!(
        "Model `{}` on `{}`; {} round(s) of failure mining and targeted distillation run. Every \
         before/after claim on failure patterns is measured on the holdout split no teacher saw.",
        config.model.path.display(),
        config.model.device,
        rounds_run
    )];
    if let Some(reason) = stopped_early {
        summary.push(format!("Stopped early {reason}."));
    }
    let mut sections = vec![Section {
        title: "Stages".into(),
        paragraphs: summary,
        table: Some(Table {
            headers: vec![
                "stage".into(),
                "this call".into(),
                "why".into(),
                "status".into(),
                "seconds (when it ran)".into(),
            ],
            rows: rows
                .iter()
                .map(|row| {
                    vec![
                        row.name.clone(),
                        row.action.clone(),
                        row.reason.clone(),
                        row.status.clone().unwrap_or_else(|| "–".into()),
                        row.seconds.map_or("–".into(), |s| format!("{s:.0}")),
                    ]
                })
                .collect(),
        }),
        ..Section::default()
    }];

    let mut benchmark_columns: Vec<(String, Vec<BenchmarkResult>)> = Vec::new();
    let mut phase_sections = Vec::new();
    let mut patterns = Vec::new();
    for stage in stages(config.rounds) {
        let dir = root.join(&stage.name);
        if !manifest
            .stage(&stage.name)
            .is_some_and(|r| r.status == pipeline::manifest::StageStatus::Done)
        {
            continue;
        }
        match stage.phase {
            Phase::Train => {
                let report = read_json::<Phase1aReport>(&dir)?;
                benchmark_columns.push(("base".into(), report.before.clone()));
                benchmark_columns.push(("after 1a".into(), report.after.clone()));
                phase_sections.extend(prefixed(&stage.name, report.sections()));
            }
            Phase::Mine => {
                let report = read_json::<Phase1bReport>(&dir)?;
                patterns.extend(
                    report
                        .patterns
                        .iter()
                        .map(|p| (stage.name.clone(), p.id, p.name.clone())),
                );
                phase_sections.extend(prefixed(&stage.name, report.sections()));
            }
            Phase::Distill => {
                let report = read_json::<Phase1cReport>(&dir)?;
                benchmark_columns.push((format!("after {}", stage.name), report.after.clone()));
                phase_sections.extend(prefixed(&stage.name, report.sections()));
                // The distillation's own training run: its loss curve.
                if let Ok(train) = read_json::<Phase1aReport>(&dir.join("train")) {
                    let training = train.sections().into_iter().take(1).collect();
                    phase_sections.extend(prefixed(&format!("{}/train", stage.name), training));
                }
            }
        }
    }
    if !benchmark_columns.is_empty() {
        let columns: Vec<(&str, &[BenchmarkResult])> = benchmark_columns
            .iter()
            .map(|(label, results)| (label.as_str(), results.as_slice()))
            .collect();
        sections.push(Section {
            title: "Benchmarks after each phase".into(),
            paragraphs: vec![
                "Primary metric, 95% bootstrap interval and item count per cell; each phase's \
                 validation settings decide its item counts (see its section)."
                    .into(),
            ],
            table: Some(benchmark_table(&columns)),
            ..Section::default()
        });
    }
    sections.extend(phase_sections);
    let report = Phase1Report {
        stages: rows,
        rounds_run,
        stopped_early: stopped_early.clone(),
        patterns,
    };
    Ok(write_report_files(root, TITLE, &sections, &report)?)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).map_err(crate::io_error(&path))?;
    serde_json::from_str(&text).map_err(|error| crate::Error::Invalid {
        origin: path.display().to_string(),
        message: error.to_string(),
    })
}
