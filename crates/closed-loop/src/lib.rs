//! The closed loop: phase 1A (LoRA training, merge, validation) → 1B (failure mining) → 1C
//! (targeted distillation), and optionally further rounds of 1B → 1C, as one resumable
//! pipeline in one run directory with one report.
//!
//! Each phase is its own library call with its own typed config ([`lora_training::phase`],
//! [`failure_mining`], [`distillation`]); this crate only derives those configs from one
//! [`Phase1Config`], chains the calls and keeps the stage manifest
//! ([`pipeline::manifest::Manifest`]): a stage whose inputs (its typed config and the content
//! hashes of what it reads) and outputs are unchanged is reused, a stage killed mid-run is
//! continued with `resume` (each phase resumes from its own files: checkpoints, per-item
//! results, the paid-call ledgers), and anything else runs the stage again in a fresh directory
//! (the previous one is kept as `<stage>.superseded`, and phase 1C's ledgers move with the
//! stage, so an answer already paid for is never paid again).
//!
//! ```no_run
//! use closed_loop::{DEFAULT_CONFIG, Phase1Config, Phase1Options, run_phase1};
//!
//! let config = Phase1Config::parse(DEFAULT_CONFIG, "phase1.toml", &["rounds=2".into()])?;
//! let outcome = run_phase1(&config, &Phase1Options::default())?;
//! println!("{}", outcome.report_html.display());
//! # Ok::<(), closed_loop::Error>(())
//! ```

mod report;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use distillation::Phase1cConfig;
use failure_mining::Phase1bConfig;
use lora_training::phase::{Phase1aConfig, Phase1aOptions};
use pipeline::ModelSection;
use pipeline::manifest::{Freshness, Manifest, sha256_json, sha256_path};
use serde::{Deserialize, Serialize};

pub use report::{Phase1Report, StageRow};

/// The documented default configuration (the whole loop on SmolLM2 and the task pool, with an
/// offline `serve` teacher and judge).
pub const DEFAULT_CONFIG: &str = include_str!("../phase1.toml");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] pipeline::Error),
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("phase 1A: {0}")]
    Phase1a(#[from] lora_training::Error),
    #[error("phase 1B: {0}")]
    Phase1b(#[from] failure_mining::Error),
    #[error("phase 1C: {0}")]
    Phase1c(#[from] distillation::Error),
    #[error(transparent)]
    Records(#[from] records::Error),
    #[error(transparent)]
    Model(#[from] llama::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Starting or running the ranks of a stage on several GPUs failed.
    #[error("stage {stage} on {gpus} GPUs: {source}")]
    Ranks {
        stage: String,
        gpus: usize,
        #[source]
        source: lora_training::Error,
    },
    /// A stage that was killed or failed, met again without `--resume`.
    #[error(
        "stage {stage} {state} (see {manifest}): pass --resume to continue it where it stopped, \
         or --from {stage} to start it over"
    )]
    Unfinished {
        stage: String,
        state: String,
        manifest: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The loop's configuration (`phase1.toml` documents every field).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase1Config {
    pub run_dir: PathBuf,
    /// The base model phase 1A trains; its device and precision are every phase's.
    pub model: ModelSection,
    #[serde(default = "one")]
    pub rounds: usize,
    pub embedding_model: PathBuf,
    #[serde(default)]
    pub demo_data: bool,
    #[serde(default)]
    pub endpoints: EndpointsSection,
    /// Overrides of `crates/lora-training/phase1a.toml`.
    #[serde(default)]
    pub phase1a: toml::Table,
    /// Overrides of `crates/failure-mining/phase1b.toml`.
    #[serde(default)]
    pub phase1b: toml::Table,
    /// Overrides of `crates/distillation/phase1c.toml`.
    #[serde(default)]
    pub phase1c: toml::Table,
}

fn one() -> usize {
    1
}

/// The language models the loop calls, each in its phase's own shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsSection {
    /// Phase 1B's `[labels]` fields.
    pub labeller: Option<toml::Table>,
    /// Phase 1C's `[teacher]` fields.
    pub teacher: Option<toml::Table>,
    /// Phase 1C's `[judge.llm]` fields.
    pub judge: Option<toml::Table>,
}

/// One stage of the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    /// `1a`, `1b`, `1c`, then `1b-r2`, `1c-r2`, ... for later rounds.
    pub name: String,
    pub phase: Phase,
    pub round: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Train,
    Mine,
    Distill,
}

/// Every stage of a loop of `rounds` rounds, in order.
pub fn stages(rounds: usize) -> Vec<Stage> {
    let mut stages = vec![Stage {
        name: "1a".into(),
        phase: Phase::Train,
        round: 0,
    }];
    for round in 1..=rounds {
        let suffix = if round == 1 {
            String::new()
        } else {
            format!("-r{round}")
        };
        stages.push(Stage {
            name: format!("1b{suffix}"),
            phase: Phase::Mine,
            round,
        });
        stages.push(Stage {
            name: format!("1c{suffix}"),
            phase: Phase::Distill,
            round,
        });
    }
    stages
}

impl Phase1Config {
    /// Parses `text` (from `origin`, named in errors) after `--set` overrides, and checks that
    /// each phase's derived config is valid, so a typo in any table fails before any work.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let config: Self = pipeline::parse_config(text, origin, overrides)?;
        config.check(origin)?;
        Ok(config)
    }

    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    fn check(&self, origin: &str) -> Result<()> {
        if self.rounds == 0 {
            return Err(Error::Invalid {
                origin: origin.into(),
                message: "rounds: must be at least 1".into(),
            });
        }
        let merged = self.run_dir.join("1a/merged");
        self.phase1a_config()?;
        self.phase1b_config(&stages(1)[1], &merged)?;
        self.phase1c_config(&stages(1)[2], &merged)?;
        Ok(())
    }

    fn stage_dir(&self, stage: &Stage) -> PathBuf {
        self.run_dir.join(&stage.name)
    }

    /// Where the demo data lives (outside every stage directory, so rerunning 1A keeps it).
    fn demo_data_dir(&self) -> PathBuf {
        self.run_dir.join("demo-data")
    }

    fn model_table(&self, path: &Path) -> toml::Value {
        let mut model = self.model.clone();
        model.path = path.to_path_buf();
        toml::Value::try_from(model).expect("the model section serialises")
    }

    /// Phase 1A's config: its documented default, the `[phase1a]` overrides, then the loop's
    /// run directory, model and (with `demo_data`) data.
    pub fn phase1a_config(&self) -> Result<Phase1aConfig> {
        let mut table = defaults(lora_training::phase::DEFAULT_CONFIG, "phase1a.toml")?;
        pipeline::merge_tables(&mut table, &self.phase1a);
        table.insert("run_dir".into(), path_value(&self.run_dir.join("1a")));
        table.insert("model".into(), self.model_table(&self.model.path));
        if self.demo_data {
            let data = table
                .entry("data")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(data) = data.as_table_mut() {
                let dir = self.demo_data_dir();
                data.insert("train".into(), path_value(&dir.join("train.jsonl")));
                data.insert("eval".into(), path_value(&dir.join("eval.jsonl")));
            }
        }
        let text = toml::to_string(&table).expect("a table serialises");
        Ok(Phase1aConfig::parse_with_overrides(
            &text,
            "phase1.toml [phase1a]",
            &[],
        )?)
    }

    /// Phase 1B's config for `stage`, testing `model`.
    pub fn phase1b_config(&self, stage: &Stage, model: &Path) -> Result<Phase1bConfig> {
        let mut table = defaults(failure_mining::phase::DEFAULT_CONFIG, "phase1b.toml")?;
        pipeline::merge_tables(&mut table, &self.phase1b);
        if let Some(labeller) = &self.endpoints.labeller {
            merge_at(&mut table, &["labels"], labeller);
        }
        table.insert("run_dir".into(), path_value(&self.stage_dir(stage)));
        table.insert("model".into(), self.model_table(model));
        table.insert("embedding_model".into(), path_value(&self.embedding_model));
        let text = toml::to_string(&table).expect("a table serialises");
        Ok(pipeline::parse_config(&text, "phase1.toml [phase1b]", &[])?)
    }

    /// Phase 1C's config for `stage`, training `model` on the patterns of the same round's 1B.
    pub fn phase1c_config(&self, stage: &Stage, model: &Path) -> Result<Phase1cConfig> {
        let mut table = defaults(distillation::config::DEFAULT_CONFIG, "phase1c.toml")?;
        pipeline::merge_tables(&mut table, &self.phase1c);
        if let Some(teacher) = &self.endpoints.teacher {
            merge_at(&mut table, &["teacher"], teacher);
        }
        if let Some(judge) = &self.endpoints.judge {
            merge_at(&mut table, &["judge", "llm"], judge);
        }
        let mine = Stage {
            name: stage.name.replacen("1c", "1b", 1),
            phase: Phase::Mine,
            round: stage.round,
        };
        table.insert("run_dir".into(), path_value(&self.stage_dir(stage)));
        table.insert("phase1b_dir".into(), path_value(&self.stage_dir(&mine)));
        table.insert("model".into(), self.model_table(model));
        table.insert("embedding_model".into(), path_value(&self.embedding_model));
        let original = self.phase1a_config()?.data.train;
        merge_at(
            &mut table,
            &["mix"],
            &toml::Table::from_iter([("original_data".to_string(), path_value(&original))]),
        );
        merge_at(
            &mut table,
            &["decontaminate"],
            &toml::Table::from_iter([(
                "cache_dir".to_string(),
                path_value(&self.run_dir.join("cache")),
            )]),
        );
        let text = toml::to_string(&table).expect("a table serialises");
        Ok(Phase1cConfig::parse_with_overrides(
            &text,
            "phase1.toml [phase1c]",
            &[],
        )?)
    }
}

fn defaults(text: &str, origin: &str) -> Result<toml::Table> {
    toml::from_str(text).map_err(|error| Error::Invalid {
        origin: origin.into(),
        message: error.to_string(),
    })
}

fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.display().to_string())
}

/// Merges `overlay` into the table at `keys` (created when absent).
fn merge_at(table: &mut toml::Table, keys: &[&str], overlay: &toml::Table) {
    let mut current = table;
    for key in keys {
        current = current
            .entry(*key)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a section is a table");
    }
    pipeline::merge_tables(current, overlay);
}

/// How to treat a run directory that already holds stages, and how wide to run.
#[derive(Clone, Debug, Default)]
pub struct Phase1Options {
    /// Continue a stage that was killed or failed from its own resume state.
    pub resume: bool,
    /// Run this stage and every later one again, whatever the manifest says.
    pub from: Option<String>,
    /// GPUs of this host for phase 1A's training (data-parallel, NCCL; the model's device must
    /// be `cuda`) and phase 1B's runner (items sharded by rank, one merged result). 0 or 1: one
    /// process. Phase 1C trains in one process.
    pub gpus: usize,
    /// With `gpus > 1`: the arguments that start this executable on the same configuration
    /// (e.g. `--config FILE --set ...`). Each rank runs it with [`RANK_STAGE_ARG`] and the
    /// stage's name appended (and `--resume` when the stage resumes) under torchrun's variables,
    /// and the executable must then call [`run_rank_stage`].
    pub relaunch_args: Vec<OsString>,
}

/// The argument (followed by a stage name) that starts one rank of a stage; see
/// [`Phase1Options::relaunch_args`].
pub const RANK_STAGE_ARG: &str = "--rank-stage";

/// What one stage did in this call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageOutcome {
    pub name: String,
    /// `reused`, `ran`, `resumed` or `skipped` (after an early stop).
    pub action: String,
    /// Why it ran (new inputs, an edited output, ...), for the log and the report.
    pub reason: String,
}

/// What a loop call produced.
#[derive(Clone, Debug)]
pub struct Phase1Outcome {
    pub run_dir: PathBuf,
    pub stages: Vec<StageOutcome>,
    pub rounds_run: usize,
    /// Set when the loop stopped before its last round.
    pub stopped_early: Option<String>,
    pub report_markdown: PathBuf,
    pub report_html: PathBuf,
}

/// Outputs each phase's stage records in the manifest (hashed: editing one reruns the stage).
fn stage_outputs(phase: Phase) -> &'static [&'static str] {
    match phase {
        Phase::Train => &["merged", "adapter", "report.json"],
        Phase::Mine => &[
            "testset.jsonl",
            "results.jsonl",
            "failures.jsonl",
            "clusters.jsonl",
            "assignments.jsonl",
            "holdout_membership.jsonl",
            "report.json",
        ],
        Phase::Distill => &[
            "generated.jsonl",
            "gate.jsonl",
            "judged.jsonl",
            "mix.jsonl",
            "train/merged",
            "report.json",
        ],
    }
}

/// The merged model a finished stage leaves for the next one.
fn merged_model(config: &Phase1Config, stage: &Stage) -> PathBuf {
    match stage.phase {
        Phase::Train => config.stage_dir(stage).join("merged"),
        _ => config.stage_dir(stage).join("train/merged"),
    }
}

/// The model stage `all[index]` starts from: the merged model of the last training stage
/// before it (1A or a 1C), else the configured base model.
fn model_for(config: &Phase1Config, all: &[Stage], index: usize) -> PathBuf {
    all[..index]
        .iter()
        .rev()
        .find(|stage| stage.phase != Phase::Mine)
        .map_or_else(
            || config.model.path.clone(),
            |stage| merged_model(config, stage),
        )
}

/// Runs `stage` as `gpus` processes of this executable (see [`Phase1Options::relaunch_args`])
/// and waits for all of them.
fn launch_ranks(options: &Phase1Options, stage: &Stage, resume: bool) -> Result<()> {
    let mut args = options.relaunch_args.clone();
    args.extend([RANK_STAGE_ARG.into(), stage.name.clone().into()]);
    if resume {
        args.push("--resume".into());
    }
    tracing::info!("stage {}: {} ranks", stage.name, options.gpus);
    lora_training::distributed::launch(options.gpus, &args).map_err(|source| Error::Ranks {
        stage: stage.name.clone(),
        gpus: options.gpus,
        source,
    })
}

/// One rank's share of a stage run on several GPUs (`RANK`, `WORLD_SIZE` and `LOCAL_RANK` set by
/// the launch): phase 1A trains data-parallel (rank 0 writes, merges and validates), phase 1B
/// grades its shard of the test set, which the launching process then merges and mines.
pub fn run_rank_stage(config: &Phase1Config, stage_name: &str, resume: bool) -> Result<()> {
    let all = stages(config.rounds);
    let index = all
        .iter()
        .position(|stage| stage.name == stage_name)
        .ok_or_else(|| Error::Invalid {
            origin: RANK_STAGE_ARG.into(),
            message: format!("unknown stage `{stage_name}`"),
        })?;
    let stage = &all[index];
    match stage.phase {
        Phase::Train => train(config, &config.phase1a_config()?, resume)?,
        Phase::Mine => {
            let rank_of = |name: &str| -> Result<usize> {
                std::env::var(name)
                    .ok()
                    .and_then(|value| value.parse().ok())
                    .ok_or_else(|| Error::Invalid {
                        origin: RANK_STAGE_ARG.into(),
                        message: format!(
                            "{name} is not set to a number: ranks are started by --gpus"
                        ),
                    })
            };
            let (rank, world) = (rank_of("RANK")?, rank_of("WORLD_SIZE")?);
            let phase_config = config.phase1b_config(stage, &model_for(config, &all, index))?;
            let device = lora_training::distributed::rank_device(&phase_config.model.device);
            let graded = failure_mining::phase::grade_shard(&phase_config, rank, world, &device)?;
            tracing::info!("stage {stage_name}, rank {rank}/{world}: {graded} items graded");
        }
        Phase::Distill => {
            return Err(Error::Invalid {
                origin: RANK_STAGE_ARG.into(),
                message: format!("stage {stage_name} (phase 1C) runs in one process"),
            });
        }
    }
    Ok(())
}

/// Phase 1A in this process: alone, or as one rank of `--gpus N` (the device and the NCCL group
/// come from torchrun's variables when they are set, see [`lora_training::Group::from_env`]).
fn train(config: &Phase1Config, phase_config: &Phase1aConfig, resume: bool) -> Result<()> {
    let device = llama::device::select_device_named(
        &lora_training::distributed::rank_device(&config.model.device),
        config.model.precision.as_deref(),
    )?;
    let group = lora_training::Group::from_env(&device)?;
    let options = Phase1aOptions {
        resume,
        train_only: false,
    };
    lora_training::phase::run_phase1a(phase_config, &options, &device, &group)?;
    Ok(())
}

/// Runs the loop. Blocking.
pub fn run_phase1(config: &Phase1Config, options: &Phase1Options) -> Result<Phase1Outcome> {
    let all = stages(config.rounds);
    let from = match &options.from {
        Some(name) => {
            Some(
                all.iter()
                    .position(|s| &s.name == name)
                    .ok_or_else(|| Error::Invalid {
                        origin: "--from".into(),
                        message: format!(
                            "unknown stage `{name}` (stages of this config: {})",
                            all.iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })?,
            )
        }
        None => None,
    };
    std::fs::create_dir_all(&config.run_dir).map_err(io_error(&config.run_dir))?;
    let mut manifest = Manifest::open(&config.run_dir)?;

    let mut outcomes = Vec::new();
    let mut model_sha256 = String::new();
    let mut rounds_run = 0;
    let mut stopped_early = None;
    for (index, stage) in all.iter().enumerate() {
        if stopped_early.is_some() {
            outcomes.push(StageOutcome {
                name: stage.name.clone(),
                action: "skipped".into(),
                reason: "the loop stopped early".into(),
            });
            continue;
        }
        let forced = from.is_some_and(|from| index >= from);
        let dir = config.stage_dir(stage);
        let model = model_for(config, &all, index);
        let mut inputs = BTreeMap::new();
        let mut precondition = Ok(());
        // Each phase: what its stage reads (hashed), which files survive a rerun, the call.
        type Work<'a> = Box<dyn FnOnce(bool) -> Result<()> + 'a>;
        let (keep, work): (&[&str], Work) = match stage.phase {
            Phase::Train => {
                let phase_config = config.phase1a_config()?;
                if config.demo_data && !phase_config.data.train.exists() {
                    lora_training::phase::write_demo_data(&config.demo_data_dir())?;
                }
                inputs.insert("config".into(), sha256_json(&phase_config));
                inputs.insert("base model".into(), sha256_path(&config.model.path)?);
                inputs.insert("train".into(), sha256_path(&phase_config.data.train)?);
                if let Some(eval) = &phase_config.data.eval {
                    inputs.insert("eval".into(), sha256_path(eval)?);
                }
                if options.gpus > 1 && config.model.device != "cuda" {
                    // Checked before the stage's directory is touched.
                    precondition = Err(Error::Invalid {
                        origin: "--gpus".into(),
                        message: format!(
                            "{} GPUs train one process per GPU (NCCL): set model.device = \
                             \"cuda\" (it is \"{}\")",
                            options.gpus, config.model.device
                        ),
                    });
                }
                let work = move |resume| {
                    if options.gpus > 1 {
                        return launch_ranks(options, stage, resume);
                    }
                    train(config, &phase_config, resume)
                };
                (&[], Box::new(work))
            }
            Phase::Mine => {
                let phase_config = config.phase1b_config(stage, &model)?;
                inputs.insert("config".into(), sha256_json(&phase_config));
                inputs.insert("model".into(), model_sha256.clone());
                // Phase 1B always continues from its per-item results (and folds in the
                // shards its ranks graded).
                let work = move |resume| {
                    if options.gpus > 1 {
                        failure_mining::phase::prepare_testset(&phase_config)?;
                        launch_ranks(options, stage, resume)?;
                    }
                    failure_mining::run_phase1b(&phase_config)?;
                    Ok(())
                };
                (failure_mining::phase::LEDGERS, Box::new(work))
            }
            Phase::Distill => {
                let phase_config = config.phase1c_config(stage, &model)?;
                let mine = &all[index - 1];
                inputs.insert("config".into(), sha256_json(&phase_config));
                inputs.insert("model".into(), model_sha256.clone());
                // 1B's data, not its report (which holds timings): a 1B rerun that mines the
                // same patterns leaves 1C fresh.
                let patterns: BTreeMap<&String, &String> = manifest
                    .stage(&mine.name)
                    .map(|record| {
                        record
                            .outputs
                            .iter()
                            .filter(|(path, _)| !path.ends_with("report.json"))
                            .collect()
                    })
                    .unwrap_or_default();
                inputs.insert("failure patterns".into(), sha256_json(&patterns));
                inputs.insert(
                    "original data".into(),
                    sha256_path(&phase_config.mix.original_data)?,
                );
                // Phase 1C always continues from its ledgers and its mix.
                let work = move |_| {
                    distillation::run_phase1c(&phase_config)?;
                    Ok(())
                };
                (distillation::phase::LEDGERS, Box::new(work))
            }
        };
        let outcome = run_stage(
            &mut manifest,
            stage,
            &dir,
            inputs,
            options,
            forced,
            keep,
            precondition,
            work,
        )?;
        outcomes.push(outcome);
        if stage.phase != Phase::Mine {
            let model = merged_model(config, stage);
            let relative = model
                .strip_prefix(&config.run_dir)
                .unwrap_or(&model)
                .display()
                .to_string();
            model_sha256 = match manifest.output_sha256(&stage.name, &relative) {
                Some(hash) => hash.to_string(),
                None => sha256_path(&model)?,
            };
        }
        if stage.phase == Phase::Distill {
            rounds_run = stage.round;
            let report: distillation::report::Phase1cReport = report::read_json(&dir)?;
            if stage.round < config.rounds {
                stopped_early = early_stop(&report.patterns, stage.round);
            }
        }
    }
    // Written with the report, so it is always the config that produced what the report shows
    // (a call that fails on its inputs leaves the previous one).
    let resolved = toml::to_string_pretty(config).expect("the config serialises");
    records::jsonl::write_atomic(config.run_dir.join("config.toml"), resolved.as_bytes())?;
    let (report_markdown, report_html) =
        report::write(config, &manifest, &outcomes, rounds_run, &stopped_early)?;
    Ok(Phase1Outcome {
        run_dir: config.run_dir.clone(),
        stages: outcomes,
        rounds_run,
        stopped_early,
        report_markdown,
        report_html,
    })
}

/// Why the loop stops after `round`, if it does: no pattern that round targeted improved on the
/// holdout, i.e. none has the 95% CI of its failure-rate change entirely below zero. A round that
/// moved nothing would only spend a teacher's budget on the same patterns again.
fn early_stop(patterns: &[records::distill::PatternOutcome], round: usize) -> Option<String> {
    let improved = patterns
        .iter()
        .filter(|p| p.targeted && p.difference_ci95[1] < 0.0)
        .count();
    (improved == 0).then(|| {
        format!(
            "after round {round}: no targeted pattern improved on the holdout (95% CI of the \
             failure-rate change below zero)"
        )
    })
}

/// Runs one stage unless the manifest shows it fresh; records it either way.
#[allow(clippy::too_many_arguments)]
fn run_stage(
    manifest: &mut Manifest,
    stage: &Stage,
    dir: &Path,
    inputs: BTreeMap<String, String>,
    options: &Phase1Options,
    forced: bool,
    keep: &[&str],
    precondition: Result<()>,
    work: Box<dyn FnOnce(bool) -> Result<()> + '_>,
) -> Result<StageOutcome> {
    let key = sha256_json(&inputs);
    let freshness = manifest.freshness(&stage.name, &key)?;
    let (resume, action, reason) = match freshness {
        _ if forced => (false, "ran", "--from".to_string()),
        Freshness::Fresh => {
            tracing::info!("stage {}: inputs and outputs unchanged, reused", stage.name);
            return Ok(StageOutcome {
                name: stage.name.clone(),
                action: "reused".into(),
                reason: "inputs and outputs unchanged".into(),
            });
        }
        Freshness::Interrupted | Freshness::Failed(_) if !options.resume => {
            let state = match freshness {
                Freshness::Failed(error) => format!("failed ({error})"),
                _ => "was interrupted".into(),
            };
            return Err(Error::Unfinished {
                stage: stage.name.clone(),
                state,
                manifest: manifest.path().display().to_string(),
            });
        }
        Freshness::Interrupted => (true, "resumed", "continued after a kill".to_string()),
        Freshness::Failed(error) => (true, "resumed", format!("continued after: {error}")),
        Freshness::NotRun => (false, "ran", "first run".to_string()),
        Freshness::InputsChanged => (false, "ran", "its inputs changed".to_string()),
        Freshness::OutputChanged(output) => (
            false,
            "ran",
            format!("its output {output} changed since it was written"),
        ),
    };
    // What must hold for the stage to run is checked once it is known to run, before its
    // directory is touched.
    precondition?;
    tracing::info!("stage {}: {action} ({reason})", stage.name);
    if !resume {
        supersede(dir, keep)?;
    }
    manifest.begin(&stage.name, inputs)?;
    if let Err(error) = work(resume) {
        manifest.fail(&stage.name, &error.to_string())?;
        return Err(error);
    }
    let outputs: Vec<PathBuf> = stage_outputs(stage.phase)
        .iter()
        .map(|output| dir.join(output))
        .collect();
    manifest.finish(&stage.name, &outputs)?;
    Ok(StageOutcome {
        name: stage.name.clone(),
        action: action.into(),
        reason,
    })
}

/// Moves a stage's previous directory to `<dir>.superseded` (replacing an older one) so the
/// stage starts clean, carrying over the `keep` files (the phases' paid-call ledgers), each with
/// its SQLite `-wal` and `-shm` companions when present.
fn supersede(dir: &Path, keep: &[&str]) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut old = dir.as_os_str().to_owned();
    old.push(".superseded");
    let old = PathBuf::from(old);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    }
    std::fs::rename(dir, &old).map_err(io_error(dir))?;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for name in keep {
        for file in [
            name.to_string(),
            format!("{name}-wal"),
            format!("{name}-shm"),
        ] {
            let from = old.join(&file);
            if from.exists() {
                std::fs::copy(&from, dir.join(&file)).map_err(io_error(&from))?;
            }
        }
    }
    tracing::info!("previous {} kept as {}", dir.display(), old.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_derives_every_phase_and_connects_them() {
        let config = Phase1Config::parse(DEFAULT_CONFIG, "phase1.toml", &[]).unwrap();
        let all = stages(config.rounds);
        assert_eq!(
            all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["1a", "1b", "1c"]
        );
        let a = config.phase1a_config().unwrap();
        assert_eq!(a.run_dir, Path::new("runs/phase1/1a"));
        assert_eq!(a.data.train, Path::new("runs/phase1/demo-data/train.jsonl"));
        // The loop's [phase1a] table overrides one field and keeps the rest of the default.
        assert_eq!(a.validate.gsm8k_limit, Some(2));
        assert_eq!(a.validate.batch_size, 8);
        let merged = Path::new("runs/phase1/1a/merged");
        let b = config.phase1b_config(&all[1], merged).unwrap();
        assert_eq!((b.testset.size, b.model.path.as_path()), (120, merged));
        let c = config.phase1c_config(&all[2], merged).unwrap();
        assert_eq!(c.phase1b_dir, Path::new("runs/phase1/1b"));
        assert_eq!(c.mix.original_data, a.data.train);
        assert_eq!(c.generate.total_examples, 16);

        let later = stages(3);
        assert_eq!(later[3].name, "1b-r2");
        let c2 = config.phase1c_config(&later[4], merged).unwrap();
        assert_eq!(c2.phase1b_dir, Path::new("runs/phase1/1b-r2"));

        // Each stage starts from the last trained model before it (what a rank is given too).
        let models: Vec<PathBuf> = (0..later.len())
            .map(|index| model_for(&config, &later, index))
            .collect();
        assert_eq!(models[0], config.model.path);
        assert_eq!(models[1], merged);
        assert_eq!(models[2], merged);
        assert_eq!(models[3], Path::new("runs/phase1/1c/train/merged"));
        assert_eq!(models[5], Path::new("runs/phase1/1c-r2/train/merged"));
    }

    #[test]
    fn a_stage_that_may_not_run_is_refused_before_its_directory_is_touched() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("1a");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter"), "trained").unwrap();
        let mut manifest = Manifest::open(root.path()).unwrap();
        let refused = Error::Invalid {
            origin: "--gpus".into(),
            message: "needs cuda".into(),
        };
        let error = run_stage(
            &mut manifest,
            &stages(1)[0],
            &dir,
            BTreeMap::new(),
            &Phase1Options::default(),
            true,
            &[],
            Err(refused),
            Box::new(|_| panic!("the work ran")),
        )
        .unwrap_err();
        assert!(error.to_string().contains("needs cuda"), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.join("adapter")).unwrap(),
            "trained"
        );
        assert!(!root.path().join("1a.superseded").exists());
        let key = sha256_json(&BTreeMap::<String, String>::new());
        assert!(matches!(
            manifest.freshness("1a", &key).unwrap(),
            Freshness::NotRun
        ));
    }

    /// What the stage's work saw: how often it ran, and whether the last run was a resume.
    #[derive(Default)]
    struct Probe {
        calls: std::cell::Cell<usize>,
        resumed: std::cell::Cell<bool>,
    }

    /// A 1B stage whose work writes every output it records (or fails, as if killed).
    fn mine_stage(
        manifest: &mut Manifest,
        dir: &Path,
        inputs: &str,
        options: &Phase1Options,
        forced: bool,
        probe: &Probe,
        fail: bool,
    ) -> Result<StageOutcome> {
        let stage = &stages(1)[1];
        let outputs_dir = dir.to_path_buf();
        run_stage(
            manifest,
            stage,
            dir,
            BTreeMap::from([("config".to_string(), inputs.to_string())]),
            options,
            forced,
            &["keep.sqlite"],
            Ok(()),
            Box::new(move |resume| {
                probe.calls.set(probe.calls.get() + 1);
                probe.resumed.set(resume);
                std::fs::create_dir_all(&outputs_dir).unwrap();
                let calls_so_far = outputs_dir.join("keep.sqlite");
                let paid = std::fs::read_to_string(&calls_so_far).unwrap_or_default();
                std::fs::write(&calls_so_far, format!("{paid}x")).unwrap();
                if fail {
                    return Err(Error::Invalid {
                        origin: "test".into(),
                        message: "killed".into(),
                    });
                }
                for name in stage_outputs(Phase::Mine) {
                    std::fs::write(outputs_dir.join(name), "{}\n").unwrap();
                }
                Ok(())
            }),
        )
    }

    #[test]
    fn a_stage_reruns_only_when_something_changed_and_resumes_only_when_asked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("1b");
        let mut manifest = Manifest::open(root.path()).unwrap();
        let probe = Probe::default();
        let plain = Phase1Options::default();
        let stage =
            |manifest: &mut Manifest, inputs: &str, options: &Phase1Options, forced, fail| {
                mine_stage(manifest, &dir, inputs, options, forced, &probe, fail)
            };
        let action = |outcome: Result<StageOutcome>| outcome.unwrap().action;

        assert_eq!(
            action(stage(&mut manifest, "a", &plain, false, false)),
            "ran"
        );
        assert_eq!(
            action(stage(&mut manifest, "a", &plain, false, false)),
            "reused"
        );
        assert_eq!(probe.calls.get(), 1);

        // An output edited by hand: the stage reruns in a clean directory, the old one kept
        // aside, the kept file (a ledger) carried over with its write-ahead log.
        std::fs::write(dir.join("failures.jsonl"), "{\"edited\": true}\n").unwrap();
        std::fs::write(dir.join("keep.sqlite-wal"), "pending pages").unwrap();
        let outcome = stage(&mut manifest, "a", &plain, false, false).unwrap();
        assert_eq!(outcome.action, "ran");
        assert!(
            outcome.reason.contains("1b/failures.jsonl"),
            "{}",
            outcome.reason
        );
        assert!(root.path().join("1b.superseded/failures.jsonl").is_file());
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.sqlite")).unwrap(),
            "xx"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.sqlite-wal")).unwrap(),
            "pending pages"
        );
        assert!(!dir.join("keep.sqlite-shm").exists());
        assert!(!probe.resumed.get());

        // New inputs rerun it; --from reruns it whatever the manifest says.
        assert_eq!(
            action(stage(&mut manifest, "b", &plain, false, false)),
            "ran"
        );
        assert_eq!(
            action(stage(&mut manifest, "b", &plain, true, false)),
            "ran"
        );
        assert_eq!(probe.calls.get(), 4);

        // A stage that died is not silently redone or reused: --resume continues it in place.
        assert!(stage(&mut manifest, "c", &plain, false, true).is_err());
        let error = stage(&mut manifest, "c", &plain, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--resume") && error.contains("1b"),
            "{error}"
        );
        let resume = Phase1Options {
            resume: true,
            ..Phase1Options::default()
        };
        assert_eq!(
            action(stage(&mut manifest, "c", &resume, false, false)),
            "resumed"
        );
        assert!(probe.resumed.get());
        assert_eq!(probe.calls.get(), 6);
        // What the failed attempt wrote is still there: the stage continued, not restarted.
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.sqlite")).unwrap(),
            "xxxxxx"
        );
        assert_eq!(
            action(stage(&mut manifest, "c", &plain, false, false)),
            "reused"
        );
    }

    #[test]
    fn the_loop_stops_early_only_when_no_targeted_pattern_improved() {
        let pattern = |targeted: bool, high: f64| records::distill::PatternOutcome {
            cluster: Some(0),
            label: "p".into(),
            targeted,
            items: 10,
            failure_rate_before: 0.5,
            failure_rate_after: 0.3,
            fixed: 2,
            broken: 0,
            mcnemar_p: 0.5,
            difference_ci95: [-0.4, high],
        };
        // A CI that reaches zero is no improvement; an untargeted pattern's is not ours.
        let stop = early_stop(&[pattern(true, 0.0), pattern(false, -0.1)], 1).unwrap();
        assert!(stop.starts_with("after round 1:"), "{stop}");
        assert!(
            early_stop(&[], 2).is_some(),
            "nothing targeted, nothing improved"
        );
        assert_eq!(
            early_stop(&[pattern(true, 0.1), pattern(true, -0.01)], 1),
            None
        );
    }

    #[test]
    fn bad_fields_are_named_with_their_table() {
        let error =
            Phase1Config::parse(DEFAULT_CONFIG, "x.toml", &["phase1b.testset.sise=3".into()])
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("phase1b") && error.contains("sise"),
            "{error}"
        );
        let error = Phase1Config::parse(DEFAULT_CONFIG, "x.toml", &["rounds=0".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("rounds"), "{error}");
        let error = Phase1Config::parse(
            DEFAULT_CONFIG,
            "x.toml",
            &["endpoints.teacher={kind = \"endpoint\", colour = 1}".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("colour"), "{error}");
    }
}
