//! Runs MMLU, GSM8K and HumanEval on a model and prints one table at the end; per-item records
//! and results JSON go to `--out`.
//!
//! Models: a local HF model directory or GGUF file (`validate assets/smollm2-135m-instruct
//! --device cpu`), or an OpenAI-compatible endpoint (`--endpoint http://127.0.0.1:8000/v1
//! --served-model NAME`, http or https; MMLU by log-likelihood where the server answers prompt
//! log-probabilities, as vLLM and `serve` do, else by the generative chat protocol). Endpoint
//! answers are kept in a ledger (`--ledger`), so an interrupted run resumes and a rerun is free.

use std::path::PathBuf;

use anyhow::{Context, bail};
use benchmarks::sandbox::SandboxLimits;
use benchmarks::{
    BenchmarkResult, Gsm8kOptions, Gsm8kProtocol, HumanEvalMode, HumanEvalOptions, LanguageModel,
    LocalModel, MmluOptions, MmluProtocol, OpenAiEndpoint,
};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Benchmark {
    Mmlu,
    Gsm8k,
    Humaneval,
}

impl Benchmark {
    /// The name people write, for messages.
    fn title(self) -> &'static str {
        match self {
            Benchmark::Mmlu => "MMLU",
            Benchmark::Gsm8k => "GSM8K",
            Benchmark::Humaneval => "HumanEval",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Run MMLU, GSM8K and HumanEval on a model and print one table")]
struct Args {
    /// Model directory (HF layout) or GGUF file.
    model: Option<PathBuf>,
    /// Device for a local model: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// OpenAI-compatible endpoint base URL, e.g. http://127.0.0.1:8000/v1 (instead of MODEL).
    #[arg(long)]
    endpoint: Option<String>,
    /// Model id sent to the endpoint.
    #[arg(long, default_value = "default")]
    served_model: String,
    /// Environment variable holding the endpoint's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// SQLite ledger of endpoint answers (default: <out>/endpoint-ledger.sqlite).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Output directory for records and results (reruns resume from it).
    #[arg(long, default_value = "runs/validate")]
    out: PathBuf,
    /// Benchmarks to run.
    #[arg(long, value_delimiter = ',', default_values = ["mmlu", "gsm8k", "humaneval"])]
    benchmarks: Vec<Benchmark>,
    /// Items per benchmark (per subject for MMLU), chosen by a seeded hash of item ids.
    #[arg(long)]
    limit: Option<usize>,
    /// MMLU subjects (comma separated); all when absent.
    #[arg(long, value_delimiter = ',')]
    subjects: Option<Vec<String>>,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    #[arg(long, value_enum, default_value = "loglikelihood")]
    mmlu_protocol: MmluProtocolArg,
    #[arg(long, value_enum, default_value = "cot-llama-chat")]
    gsm8k_protocol: Gsm8kProtocolArg,
    /// GSM8K samples per problem (k of maj@k; 1 = greedy).
    #[arg(long, default_value_t = 1)]
    gsm8k_samples: usize,
    #[arg(long, value_enum, default_value = "chat")]
    humaneval_mode: HumanEvalModeArg,
    /// HumanEval samples per problem (n of pass@k; 1 = greedy pass@1).
    #[arg(long, default_value_t = 1)]
    humaneval_samples: usize,
    /// Items per model call.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Dataset folder (default: $TUNELOOP_ASSETS/data or <workspace>/assets/data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MmluProtocolArg {
    Loglikelihood,
    GenerativeChat,
    GenerativeText,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Gsm8kProtocolArg {
    CotText,
    CotLlamaChat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HumanEvalModeArg {
    Completion,
    Chat,
}

fn main() -> anyhow::Result<()> {
    pipeline::init_logging();
    let args = Args::parse();
    let (local, endpoint) = match (&args.model, &args.endpoint) {
        (None, Some(url)) => (
            None,
            Some(OpenAiEndpoint::new(
                url,
                &args.served_model,
                Some(&args.api_key_env),
                &args
                    .ledger
                    .clone()
                    .unwrap_or_else(|| args.out.join("endpoint-ledger.sqlite")),
            )?),
        ),
        (Some(path), None) => {
            let device = llama::device::select_device(&args.device, None)?;
            let pretrained = llama::Pretrained::load(path, &device)
                .with_context(|| format!("loading {}", path.display()))?;
            let local = LocalModel::new(path.display().to_string(), pretrained, args.batch_size);
            (Some(local), None)
        }
        _ => bail!("give either a MODEL path or --endpoint"),
    };
    let model: &dyn LanguageModel = match (&local, &endpoint) {
        (Some(local), _) => local,
        (_, Some(endpoint)) => endpoint,
        (None, None) => unreachable!("one of the two was made above"),
    };
    let mut mmlu_protocol = match args.mmlu_protocol {
        MmluProtocolArg::Loglikelihood => MmluProtocol::Loglikelihood,
        MmluProtocolArg::GenerativeChat => MmluProtocol::GenerativeChat,
        MmluProtocolArg::GenerativeText => MmluProtocol::GenerativeText,
    };
    if mmlu_protocol == MmluProtocol::Loglikelihood && !model.supports_loglikelihood() {
        tracing::warn!(
            "{} cannot score log-likelihoods ({}): MMLU uses the generative chat protocol",
            model.name(),
            model.loglikelihood_unsupported_reason()
        );
        mmlu_protocol = MmluProtocol::GenerativeChat;
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(benchmarks::data::default_data_dir);
    let mut results: Vec<BenchmarkResult> = Vec::new();
    for benchmark in &args.benchmarks {
        let result = match benchmark {
            Benchmark::Mmlu => benchmarks::run_mmlu(
                model,
                &MmluOptions {
                    protocol: mmlu_protocol,
                    limit: args.limit,
                    subjects: args.subjects.clone(),
                    seed: args.seed,
                    batch_size: args.batch_size,
                    data_dir: data_dir.clone(),
                    ..MmluOptions::default()
                },
                &args.out,
            ),
            Benchmark::Gsm8k => benchmarks::run_gsm8k(
                model,
                &Gsm8kOptions {
                    protocol: match args.gsm8k_protocol {
                        Gsm8kProtocolArg::CotText => Gsm8kProtocol::CotText,
                        Gsm8kProtocolArg::CotLlamaChat => Gsm8kProtocol::CotLlamaChat,
                    },
                    samples: args.gsm8k_samples,
                    limit: args.limit,
                    seed: args.seed,
                    batch_size: args.batch_size,
                    data_dir: data_dir.clone(),
                    ..Gsm8kOptions::default()
                },
                &args.out,
            ),
            Benchmark::Humaneval => benchmarks::run_humaneval(
                model,
                &HumanEvalOptions {
                    mode: match args.humaneval_mode {
                        HumanEvalModeArg::Completion => HumanEvalMode::Completion,
                        HumanEvalModeArg::Chat => HumanEvalMode::Chat,
                    },
                    samples: args.humaneval_samples,
                    limit: args.limit,
                    seed: args.seed,
                    batch_size: args.batch_size,
                    sandbox_limits: SandboxLimits::default(),
                    data_dir: data_dir.clone(),
                    ..HumanEvalOptions::default()
                },
                &args.out,
            ),
        }
        .with_context(|| format!("{} failed", benchmark.title()))?;
        results.push(result);
    }
    println!("{}", benchmarks::results_table(&results));
    for result in &results {
        for note in &result.notes {
            println!("{}: {note}", result.benchmark);
        }
    }
    if let Some(local) = &local {
        let stats = local.loglikelihood_stats();
        let total = stats.positions_computed + stats.positions_reused;
        if total > 0 {
            println!(
                "log-likelihood: {} positions computed, {} reused from shared few-shot prompts ({:.0}% saved)",
                stats.positions_computed,
                stats.positions_reused,
                100.0 * stats.positions_reused as f64 / total as f64
            );
        }
    }
    println!("records and results in {}", args.out.display());
    Ok(())
}
