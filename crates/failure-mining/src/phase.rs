//! Phase 1B as one call: build (or load) the test set → run and grade → mine failures → embed
//! and cluster → name the patterns → place holdout items → write the report. Each stage records
//! the hash of its inputs in `stages.json`; a rerun skips a stage whose inputs are unchanged, and
//! the run stage resumes item by item from `results.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use benchmarks::record_log::RecordLog;
use benchmarks::{
    GenerationRequest, LanguageModel, LocalModel, Loglikelihood, LoglikelihoodRequest,
};
use embeddings::SentenceEncoder;
use llama::Pretrained;
use llama::device::{Precision, select_device};
use llm_client::{
    ChatClusterLabeller, ChatRequest, EndpointSettings, LlmClient, LlmSettings, Progress, with_llm,
};
use pipeline::ModelSection;
use records::clusters::{ClusterAssignment, ClusterRecord};
use records::eval::EvalRecord;
use records::jsonl::{read_jsonl, write_atomic, write_jsonl_atomic};
use records::mining::{FailureRecord, HoldoutMembership, Split, TestItem, TestSetManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io_error};
use crate::patterns::{
    LabelOutcome, PatternConfig, find_patterns, holdout_membership, label_patterns, mine_failures,
};
use crate::report::{Phase1bReport, write_report};
use crate::run::{JudgeSource, RunConfig, needs_judge, run_items, run_items_judged};
use crate::testset::{TestSetConfig, build_testset, read_testset, write_testset};

/// The documented default configuration (SmolLM2 on a 240-item test set, labelled by `serve`).
pub const DEFAULT_CONFIG: &str = include_str!("../phase1b.toml");

/// Everything phase 1B needs (`crates/failure-mining/phase1b.toml` documents each field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase1bConfig {
    pub run_dir: PathBuf,
    /// The model under test: a local HF directory or GGUF file.
    pub model: ModelSection,
    pub testset: TestSetSection,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub patterns: PatternConfig,
    #[serde(default)]
    pub labels: LabelSection,
    /// The LLM judge of open-answer items (`testset.open_answer_files`): `serve` or `endpoint`,
    /// as llm-client's settings. Required when the test set has such items.
    #[serde(default)]
    pub judge: Option<LlmSettings>,
    /// The sentence encoder (all-MiniLM-L6-v2 directory).
    pub embedding_model: PathBuf,
}

/// The test set as configured (paths default to the assets folder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestSetSection {
    pub size: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_holdout")]
    pub holdout_percent: u32,
    #[serde(default)]
    pub families: Option<Vec<String>>,
    #[serde(default = "default_ngram")]
    pub ngram: usize,
    /// Default: `$TUNELOOP_ASSETS/data/pool` (or the workspace's assets).
    #[serde(default)]
    pub pool_dir: Option<PathBuf>,
    /// Default: `$TUNELOOP_ASSETS/data`.
    #[serde(default)]
    pub benchmark_data_dir: Option<PathBuf>,
    /// JSONL files of open-answer items (`{"question", "reference", "family"?}`), taken whole
    /// on top of `size` and graded by the `[judge]`.
    #[serde(default)]
    pub open_answer_files: Vec<PathBuf>,
}

fn default_seed() -> u64 {
    1234
}
fn default_holdout() -> u32 {
    20
}
fn default_ngram() -> usize {
    13
}

impl TestSetSection {
    pub fn resolve(&self) -> TestSetConfig {
        let defaults = TestSetConfig::new(self.size);
        TestSetConfig {
            size: self.size,
            seed: self.seed,
            holdout_percent: self.holdout_percent,
            families: self.families.clone(),
            ngram: self.ngram,
            pool_dir: self.pool_dir.clone().unwrap_or(defaults.pool_dir),
            benchmark_data_dir: self
                .benchmark_data_dir
                .clone()
                .unwrap_or(defaults.benchmark_data_dir),
            open_answer_files: self.open_answer_files.clone(),
        }
    }
}

/// Who names the clusters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelSection {
    /// `serve` (tuneloop's server over a local model, started and stopped by the run),
    /// `endpoint` (any OpenAI-compatible API) or `keywords` (no model: c-TF-IDF terms).
    pub labeller: String,
    /// For `serve`: the model to serve; default the model under test.
    pub serve_model: Option<PathBuf>,
    /// For `endpoint`: base URL, model and the name of the API key's environment variable.
    pub endpoint: EndpointSettings,
    /// Spend cap for labelling calls, in US dollars (endpoint prices are not known here: a cap
    /// needs prices, so it applies to serve's zero-cost calls trivially).
    pub budget_usd: Option<f64>,
}

impl Default for LabelSection {
    fn default() -> Self {
        Self {
            labeller: "serve".into(),
            serve_model: None,
            endpoint: EndpointSettings::default(),
            budget_usd: None,
        }
    }
}

/// What a phase 1B run produced, with the paths of its files.
#[derive(Debug)]
pub struct Phase1bOutcome {
    pub run_dir: PathBuf,
    pub items: usize,
    pub failures: usize,
    pub clusters: Vec<ClusterRecord>,
    pub labels: LabelOutcome,
    pub report_markdown: PathBuf,
    pub report_html: PathBuf,
}

/// Stage bookkeeping in `stages.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Stages {
    stages: BTreeMap<String, StageRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    inputs_sha256: String,
    seconds: f64,
}

impl Stages {
    fn load(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    fn is_current(&self, stage: &str, inputs: &str) -> bool {
        self.stages
            .get(stage)
            .is_some_and(|record| record.inputs_sha256 == inputs)
    }

    fn record(&mut self, path: &Path, stage: &str, inputs: String, started: Instant) -> Result<()> {
        self.stages.insert(
            stage.to_string(),
            StageRecord {
                inputs_sha256: inputs,
                seconds: started.elapsed().as_secs_f64(),
            },
        );
        let mut json = serde_json::to_vec_pretty(self).expect("stages serialise");
        json.push(b'\n');
        Ok(write_atomic(path, &json)?)
    }
}

fn sha256_json(value: &impl Serialize) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(value).expect("inputs serialise"),
    ))
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

/// Runs phase 1B. Blocking; starts its own async runtime for the labelling calls.
pub fn run_phase1b(config: &Phase1bConfig) -> Result<Phase1bOutcome> {
    let run_dir = &config.run_dir;

    // 1. The test set.
    let (items, manifest) = prepare_testset(config)?;

    // 2. Run and grade (resumes from results.jsonl; folds in shards graded by `grade_shard`).
    let started = Instant::now();
    let results_path = run_dir.join("results.jsonl");
    merge_shards(run_dir, &results_path)?;
    let model = LazyLocalModel::new(config, None)?;
    let open_answers = items.iter().filter(|item| needs_judge(item)).count();
    let judge = if open_answers == 0 {
        None
    } else {
        let settings = judge_settings(config, open_answers)?;
        write_judge_settings(run_dir, &settings)?;
        Some(settings)
    };
    let judge_ledger = run_dir.join(JUDGE_LEDGER);
    let records = run_items_judged(
        &model,
        &items,
        &results_path,
        &config.run,
        judge.as_ref().map(|settings| JudgeSource {
            settings,
            ledger: &judge_ledger,
            device: &config.model.device,
        }),
    )?;
    let run_seconds = started.elapsed().as_secs_f64();

    let stages_path = run_dir.join("stages.json");
    let mut stages = Stages::load(&stages_path);
    // 3-5. Failures → patterns → labels → holdout membership, skipped when unchanged.
    let patterns_inputs = sha256_json(&serde_json::json!({
        "results": sha256_file(&results_path)?,
        "testset": manifest.testset_sha256,
        "patterns": config.patterns,
        "labels": config.labels,
        "embedding_model": config.embedding_model,
    }));
    let (failures, clusters, assignments, membership, labels, map_svg) = if stages
        .is_current("patterns", &patterns_inputs)
        && run_dir.join("report.json").exists()
    {
        tracing::info!("failure patterns: inputs unchanged, reusing the clusters");
        let previous: Phase1bReport = serde_json::from_slice(
            &std::fs::read(run_dir.join("report.json")).map_err(io_error(run_dir))?,
        )
        .map_err(|error| Error::Config {
            field: run_dir.join("report.json").display().to_string(),
            message: error.to_string(),
        })?;
        (
            read_jsonl::<FailureRecord>(run_dir.join("failures.jsonl"))?,
            read_jsonl::<ClusterRecord>(run_dir.join("clusters.jsonl"))?,
            read_jsonl::<ClusterAssignment>(run_dir.join("assignments.jsonl"))?,
            read_jsonl::<HoldoutMembership>(run_dir.join("holdout_membership.jsonl"))?,
            previous.labels,
            previous.map_svg,
        )
    } else {
        let started = Instant::now();
        let encoder = SentenceEncoder::load(
            &config.embedding_model,
            &embeddings::burn::tensor::Device::flex(),
        )
        .map_err(|error| Error::Config {
            field: "embedding_model".into(),
            message: format!("{}: {error}", config.embedding_model.display()),
        })?;
        let failures: Vec<FailureRecord> = mine_failures(&items, &records, &config.patterns)
            .into_iter()
            .map(|(failure, _)| failure)
            .collect();
        tracing::info!(
            "{} failures on the mine split; embedding and clustering",
            failures.len()
        );
        let (patterns, membership, labels) = with_client(
            label_settings(&config.labels)?.as_ref(),
            "labels",
            &config.model.path,
            &config.model.device,
            &run_dir.join(LABEL_LEDGER),
            async |client| {
                let mut failures = failures;
                if config.patterns.describe_failures {
                    let Some(client) = &client else {
                        return Err(Error::Config {
                            field: "patterns.describe_failures".into(),
                            message: "needs a model: set labels.labeller to serve or endpoint"
                                .into(),
                        });
                    };
                    describe_failures(client, &mut failures).await;
                }
                let mut patterns = find_patterns(&encoder, failures, &config.patterns)?;
                let membership =
                    holdout_membership(&encoder, &patterns, &items, &records, &config.patterns)?;
                let labeller = client.map(ChatClusterLabeller::new);
                let labels =
                    label_patterns(labeller.as_ref(), &mut patterns.analysis.clusters).await;
                Ok((patterns, membership, labels))
            },
        )?;
        let map_svg =
            clustering::report::render_svg(&patterns.analysis.map, &patterns.analysis.clusters)?;
        write_jsonl_atomic(run_dir.join("failures.jsonl"), &patterns.failures)?;
        write_jsonl_atomic(run_dir.join("clusters.jsonl"), &patterns.analysis.clusters)?;
        write_jsonl_atomic(
            run_dir.join("assignments.jsonl"),
            &patterns.analysis.assignments,
        )?;
        write_jsonl_atomic(run_dir.join("holdout_membership.jsonl"), &membership)?;
        // The clustering crate's own report (k selection, stability, the map) beside ours.
        patterns
            .analysis
            .write(&run_dir.join("clustering"), "Phase 1B failure clusters")?;
        stages.record(&stages_path, "patterns", patterns_inputs, started)?;
        (
            patterns.failures,
            patterns.analysis.clusters,
            patterns.analysis.assignments,
            membership,
            labels,
            map_svg,
        )
    };

    let report = Phase1bReport::new(
        config,
        &manifest,
        &items,
        &records,
        &failures,
        &clusters,
        &assignments,
        &membership,
        labels.clone(),
        map_svg,
        run_seconds,
    );
    let (report_markdown, report_html) = write_report(run_dir, &report)?;
    Ok(Phase1bOutcome {
        run_dir: run_dir.clone(),
        items: items.len(),
        failures: failures.len(),
        clusters,
        labels,
        report_markdown,
        report_html,
    })
}

/// The test set of `config`: built and written, or read back when its inputs are unchanged.
pub fn prepare_testset(config: &Phase1bConfig) -> Result<(Vec<TestItem>, TestSetManifest)> {
    let run_dir = &config.run_dir;
    std::fs::create_dir_all(run_dir).map_err(io_error(run_dir))?;
    let stages_path = run_dir.join("stages.json");
    let mut stages = Stages::load(&stages_path);
    let started = Instant::now();
    let testset_config = config.testset.resolve();
    let testset_inputs = sha256_json(&serde_json::json!({
        "size": testset_config.size, "seed": testset_config.seed,
        "holdout_percent": testset_config.holdout_percent, "families": testset_config.families,
        "ngram": testset_config.ngram,
        "open_answer_files": testset_config.open_answer_files.iter()
            .map(|path| sha256_file(path)).collect::<Result<Vec<_>>>()?,
    }));
    if stages.is_current("testset", &testset_inputs) && run_dir.join("testset.jsonl").exists() {
        let (items, manifest) = read_testset(run_dir)?;
        tracing::info!("test set: {} items (unchanged, reused)", items.len());
        return Ok((items, manifest));
    }
    tracing::info!("building the test set ({} items)", testset_config.size);
    let (items, manifest) = build_testset(&testset_config)?;
    write_testset(run_dir, &items, &manifest)?;
    stages.record(&stages_path, "testset", testset_inputs, started)?;
    tracing::info!(
        "test set: {} items in {} families, {} dropped for benchmark overlap ({:.1} s)",
        items.len(),
        manifest.families.len(),
        manifest.leakage.dropped.values().sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    Ok((items, manifest))
}

/// Grades rank `rank`'s share of the test set (items `i` with `i % world == rank`) into
/// `results.rank-<rank>.jsonl`, on `device` (e.g. `cuda:<rank>`). The test set must exist
/// ([`prepare_testset`]); [`run_phase1b`] folds the shards into `results.jsonl`. Open-answer
/// items are left to that merging process, which grades them with the one judge (and ledger)
/// of the run rather than one judge per rank.
pub fn grade_shard(
    config: &Phase1bConfig,
    rank: usize,
    world: usize,
    device: &str,
) -> Result<usize> {
    let (items, _) = read_testset(&config.run_dir)?;
    let shard: Vec<TestItem> = items
        .into_iter()
        .filter(|item| !needs_judge(item))
        .enumerate()
        .filter(|(index, _)| index % world == rank)
        .map(|(_, item)| item)
        .collect();
    let model = LazyLocalModel::new(config, Some(device))?;
    let path = config.run_dir.join(format!("results.rank-{rank}.jsonl"));
    Ok(run_items(&model, &shard, &path, &config.run, None)?.len())
}

/// Appends the records of every `results.rank-*.jsonl` in `run_dir` that `results.jsonl` lacks.
/// The shards were written with the same model and settings as the main log (their settings
/// files must match, or the log refuses them), so a merged run equals a single-process one.
fn merge_shards(run_dir: &Path, results: &Path) -> Result<()> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map_err(io_error(run_dir))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("results.rank-") && name.ends_with(".jsonl"))
        })
        .collect();
    shards.sort();
    for shard in shards {
        let settings_path = shard.with_extension("config.json");
        let settings: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&settings_path).map_err(io_error(&settings_path))?,
        )
        .map_err(|error| Error::Config {
            field: settings_path.display().to_string(),
            message: error.to_string(),
        })?;
        let mut log = RecordLog::open(results, &settings).map_err(boxed)?;
        let mut added = 0;
        for record in read_jsonl::<EvalRecord>(&shard)? {
            if !log.contains(&record.item_id) {
                log.append(record).map_err(boxed)?;
                added += 1;
            }
        }
        tracing::info!(
            "{}: {added} records merged into {}",
            shard.display(),
            results.display()
        );
    }
    Ok(())
}

fn boxed(error: benchmarks::Error) -> Error {
    Error::Benchmark(Box::new(error))
}

/// The local model, loaded on its first call: a run whose items are all graded already (resumed,
/// or merged from shards) never loads it.
struct LazyLocalModel {
    path: PathBuf,
    device: String,
    precision: Option<Precision>,
    batch_size: usize,
    model: std::sync::OnceLock<LocalModel>,
}

impl LazyLocalModel {
    fn new(config: &Phase1bConfig, device: Option<&str>) -> Result<Self> {
        let precision = config
            .model
            .precision
            .as_deref()
            .map(str::parse::<Precision>)
            .transpose()
            .map_err(|error| Error::Config {
                field: "model.precision".into(),
                message: error.to_string(),
            })?;
        Ok(Self {
            path: config.model.path.clone(),
            device: device.unwrap_or(&config.model.device).to_string(),
            precision,
            batch_size: config.run.batch_size,
            model: std::sync::OnceLock::new(),
        })
    }

    fn model(&self) -> std::result::Result<&LocalModel, benchmarks::ModelError> {
        if let Some(model) = self.model.get() {
            return Ok(model);
        }
        let device = select_device(&self.device, self.precision)?;
        tracing::info!("loading {} on {}", self.path.display(), self.device);
        let pretrained = Pretrained::load(&self.path, &device)
            .map_err(|error| format!("loading {}: {error}", self.path.display()))?;
        let model = LocalModel::new(self.path.display().to_string(), pretrained, self.batch_size);
        Ok(self.model.get_or_init(|| model))
    }
}

impl LanguageModel for LazyLocalModel {
    fn name(&self) -> String {
        // The same name the loaded model reports, so settings match before and after loading.
        self.path.display().to_string()
    }

    fn supports_loglikelihood(&self) -> bool {
        true
    }

    fn loglikelihood(
        &self,
        requests: &[LoglikelihoodRequest],
    ) -> std::result::Result<Vec<Loglikelihood>, benchmarks::ModelError> {
        self.model()?.loglikelihood(requests)
    }

    fn generate(
        &self,
        requests: &[GenerationRequest],
    ) -> std::result::Result<Vec<String>, benchmarks::ModelError> {
        self.model()?.generate(requests)
    }
}

/// The labeller's client settings; `None` for `keywords` (no model).
fn label_settings(labels: &LabelSection) -> Result<Option<LlmSettings>> {
    match labels.labeller.as_str() {
        "keywords" => Ok(None),
        "serve" | "endpoint" => Ok(Some(LlmSettings {
            kind: labels.labeller.clone(),
            serve_model: labels.serve_model.clone(),
            endpoint: labels.endpoint.clone(),
            budget_usd: labels.budget_usd,
            ..LlmSettings::default()
        })),
        other => Err(Error::Config {
            field: "labels.labeller".into(),
            message: format!("unknown `{other}` (accepted: serve, endpoint, keywords)"),
        }),
    }
}

/// The ledgers of a phase 1B run directory: the labeller's and the judge's paid answers (a
/// rerun of the stage carries them over, so it never pays twice).
pub const LABEL_LEDGER: &str = "llm-ledger.sqlite";
pub const JUDGE_LEDGER: &str = "judge-ledger.sqlite";
pub const LEDGERS: &[&str] = &[LABEL_LEDGER, JUDGE_LEDGER];

/// The file in a phase 1B run directory holding its judge's settings (no key: only the name of
/// its environment variable), so phase 1C grades the holdout's open answers the same way.
pub const JUDGE_SETTINGS: &str = "judge.json";

/// Keeps the judge's settings in `run_dir` for phase 1C, which grades the holdout's open answers
/// after training with this same judge ([`read_judge_settings`]).
fn write_judge_settings(run_dir: &Path, settings: &LlmSettings) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(settings).expect("settings serialise");
    json.push(b'\n');
    Ok(write_atomic(run_dir.join(JUDGE_SETTINGS), &json)?)
}

/// The judge that graded the open answers of the phase 1B run in `run_dir` (`None` when it had
/// none). A run whose holdout (`items`) has open answers but no judge settings is an error: its
/// "after" could not be graded like its "before".
pub fn read_judge_settings(run_dir: &Path, items: &[TestItem]) -> Result<Option<LlmSettings>> {
    let path = run_dir.join(JUDGE_SETTINGS);
    let settings = match std::fs::read(&path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|error| Error::PoolRow {
                path: path.clone(),
                line: error.line(),
                message: error.to_string(),
            })?,
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io_error(&path)(error)),
    };
    if settings.is_none()
        && let Some(item) = items
            .iter()
            .find(|item| item.split == Split::Holdout && needs_judge(item))
    {
        return Err(Error::Config {
            field: path.display().to_string(),
            message: format!(
                "missing, but holdout item {} is an open answer graded by phase 1B's judge",
                item.id
            ),
        });
    }
    Ok(settings)
}

/// The `[judge]` section, required once the test set has open-answer items; a served judge
/// without its own model serves the model under test.
fn judge_settings(config: &Phase1bConfig, open_answers: usize) -> Result<LlmSettings> {
    // A served judge is named by its path, not by "the model under test", so phase 1C serves
    // the same model.
    let mut settings = config.judge.clone().ok_or_else(|| Error::Config {
        field: "judge".into(),
        message: format!(
            "the test set has {open_answers} open-answer items (testset.open_answer_files); \
             they are graded by an LLM judge: add a [judge] section (kind = \"serve\" or \
             \"endpoint\")"
        ),
    })?;
    if settings.kind == "serve" && settings.serve_model.is_none() {
        settings.serve_model = Some(config.model.path.clone());
    }
    Ok(settings)
}

/// Runs `work` with a client for `settings` (`llm_client::with_llm`: `serve` over its
/// `serve_model`, else `default_model`, on `device`, started before and stopped after, also
/// when `work` fails), its answers recorded in `ledger`; no settings give no client. A client
/// that cannot start (serve fails to load, an endpoint without its key) is an error naming
/// `field`, before any work. Blocking: runs on its own async runtime.
pub(crate) fn with_client<T>(
    settings: Option<&LlmSettings>,
    field: &str,
    default_model: &Path,
    device: &str,
    ledger: &Path,
    work: impl AsyncFnOnce(Option<LlmClient>) -> Result<T>,
) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(io_error(ledger))?;
    let Some(settings) = settings else {
        return runtime.block_on(work(None));
    };
    let client_error = |error: llm_client::Error| Error::Config {
        field: field.to_string(),
        message: error.to_string(),
    };
    settings.check(field).map_err(client_error)?;
    runtime
        .block_on(with_llm(
            settings,
            default_model,
            device,
            ledger,
            async |client| work(Some(client)).await,
        ))
        .map_err(|error| match error {
            Error::Client(error) => client_error(error),
            other => other,
        })
}

/// Asks the model for a one-line description of each failure (what skill failed and how) and
/// embeds that instead of the composed text. A failure whose description fails keeps its
/// composed text and `description: None`; the count is logged.
async fn describe_failures(client: &LlmClient, failures: &mut [FailureRecord]) {
    let requests: Vec<ChatRequest> = failures
        .iter()
        .map(|failure| {
            let mut request = ChatRequest::user(format!(
                "A model answered this task wrongly. In one line of at most 20 words, say which \
                 skill failed and how (e.g. \"Adds days across a month end without carrying into \
                 the next month\"). Reply with the line only.\n\n{}",
                failure.embedded_text
            ))
            .with_max_tokens(48);
            request.temperature = Some(0.0);
            request.seed = Some(0);
            request
        })
        .collect();
    let report = client.chat_batch(requests, Progress::Auto).await;
    let mut failed = 0;
    for (failure, result) in failures.iter_mut().zip(report.results) {
        let line = result.ok().and_then(|answer| {
            answer
                .content
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty())
                .map(str::to_string)
        });
        match line {
            Some(line) => {
                failure.embedded_text = line.clone();
                failure.description = Some(line);
            }
            None => failed += 1,
        }
    }
    if failed > 0 {
        tracing::warn!(
            "{failed} of {} failure descriptions failed; those failures are embedded as composed text",
            failures.len()
        );
    }
}

/// The items of `items` the report shows, by id.
pub(crate) fn index_items(items: &[TestItem]) -> BTreeMap<&str, &TestItem> {
    items.iter().map(|item| (item.id.as_str(), item)).collect()
}

/// The records of `records`, by item id.
pub(crate) fn index_records(records: &[EvalRecord]) -> BTreeMap<&str, &EvalRecord> {
    records
        .iter()
        .map(|record| (record.item_id.as_str(), record))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented `[judge]` example, uncommented, is a valid config.
    #[test]
    fn the_documented_judge_section_parses() {
        let start = DEFAULT_CONFIG.find("# [judge]").expect("documented");
        let judge: String = DEFAULT_CONFIG[start..]
            .lines()
            .map(|line| line.trim_start_matches("# ").split("  #").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!("{}\n{judge}", &DEFAULT_CONFIG[..start]);
        let config: Phase1bConfig = pipeline::parse_config(&text, "phase1b.toml", &[]).unwrap();
        let judge = config.judge.expect("the section is read");
        assert_eq!(judge.kind, "endpoint");
        assert_eq!(
            judge.endpoint.api_key_env.as_deref(),
            Some("OPENAI_API_KEY")
        );
        assert_eq!(judge.budget_usd, Some(5.0));
        // Absent, there is no judge.
        let config: Phase1bConfig =
            pipeline::parse_config(DEFAULT_CONFIG, "phase1b.toml", &[]).unwrap();
        assert!(config.judge.is_none());
    }
}
