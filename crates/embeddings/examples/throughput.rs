//! Sentences per second for all-MiniLM-L6-v2, on pool questions of realistic length.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run -p embeddings --example throughput -- \
//!     [--sentences 2000] [--batch-sizes 16,32,64] [--repeats 1] \
//!     [--model-dir assets/all-minilm-l6-v2] [--pool-dir assets/data/pool] \
//!     [--dump-sentences FILE] [--dump-embeddings FILE] [--device flex|cuda] [--compare-cpu] \
//!     [--burn]
//! ```
//!
//! Sentences are taken round-robin from the pool files (the first text field of each line
//! among question, question_stem, goal, sentence, sentence1, premise, ctx, context) so short
//! arithmetic prompts, trivia questions and long HellaSwag contexts all appear. `--dump-sentences`
//! writes them (JSON array) for the sentence-transformers comparison script; `--dump-embeddings`
//! writes the batch-32 embeddings (little-endian f32, row-major) for a parity check there.
//! `--device cuda` (feature `tch`) runs on LibTorch GPU 0; `--compare-cpu` also runs the flex CPU
//! backend and prints the worst cosine between the two. `--burn` runs the model as burn tensors
//! even on `flex` (the CPU path before the host kernels), for a before/after comparison.
//! tools/bench/minilm_cpu_compare.sh runs this and sentence-transformers alternately.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use embeddings::SentenceEncoder;
use embeddings::burn::tensor::Device;

const TEXT_FIELDS: [&str; 8] = [
    "question",
    "question_stem",
    "goal",
    "sentence",
    "sentence1",
    "premise",
    "ctx",
    "context",
];

struct Args {
    sentences: usize,
    batch_sizes: Vec<usize>,
    repeats: usize,
    model_dir: PathBuf,
    pool_dir: PathBuf,
    dump_sentences: Option<PathBuf>,
    dump_embeddings: Option<PathBuf>,
    device: String,
    compare_cpu: bool,
    burn: bool,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        sentences: 2000,
        batch_sizes: vec![16, 32, 64],
        repeats: 1,
        model_dir: embeddings::default_model_dir(),
        pool_dir: embeddings::assets_dir().join("data/pool"),
        dump_sentences: None,
        dump_embeddings: None,
        device: "flex".to_string(),
        compare_cpu: false,
        burn: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--compare-cpu" {
            args.compare_cpu = true;
            continue;
        }
        if flag == "--burn" {
            args.burn = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--sentences" => args.sentences = value.parse()?,
            "--batch-sizes" => {
                args.batch_sizes = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--repeats" => args.repeats = value.parse()?,
            "--model-dir" => args.model_dir = value.into(),
            "--pool-dir" => args.pool_dir = value.into(),
            "--dump-sentences" => args.dump_sentences = Some(value.into()),
            "--dump-embeddings" => args.dump_embeddings = Some(value.into()),
            "--device" => args.device = value,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(args)
}

/// Round-robin over the pool files, one text per line, until `count` texts.
fn pool_sentences(dir: &PathBuf, count: usize) -> Result<Vec<String>, Box<dyn Error>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut per_file: Vec<Vec<String>> = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)?;
        let texts: Vec<String> = text
            .lines()
            .filter_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                TEXT_FIELDS
                    .iter()
                    .find_map(|field| value.get(field)?.as_str().map(str::to_string))
            })
            .filter(|t| !t.trim().is_empty())
            .collect();
        per_file.push(texts);
    }
    let mut out = Vec::with_capacity(count);
    for line in 0.. {
        let before = out.len();
        for texts in &per_file {
            if out.len() == count {
                return Ok(out);
            }
            if let Some(text) = texts.get(line) {
                out.push(text.clone());
            }
        }
        if out.len() == before {
            break;
        }
    }
    Err(format!("{} holds only {} texts", dir.display(), out.len()).into())
}

fn device(name: &str) -> Result<Device, Box<dyn Error>> {
    match name {
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "tch")]
        "cuda" => Ok(Device::libtorch_cuda(0)),
        other => Err(format!("unknown device {other} (flex, or cuda with feature tch)").into()),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let sentences = pool_sentences(&args.pool_dir, args.sentences)?;
    if let Some(path) = &args.dump_sentences {
        std::fs::write(path, serde_json::to_string(&sentences)?)?;
    }
    let device = device(&args.device)?;
    let start = Instant::now();
    let encoder = if args.burn {
        SentenceEncoder::load_burn(&args.model_dir, &device)?
    } else {
        SentenceEncoder::load(&args.model_dir, &device)?
    };
    println!(
        "device {:?}, {}, rayon threads {}, load {:.2}s",
        device,
        encoder.implementation(),
        rayon::current_num_threads(),
        start.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let ids = encoder.tokenize(&sentences)?;
    let tokenize_s = start.elapsed().as_secs_f64();
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    println!(
        "{} sentences, {} tokens (mean {:.1}, max {}), tokenize {:.3}s",
        sentences.len(),
        tokens,
        tokens as f64 / sentences.len() as f64,
        longest,
        tokenize_s
    );

    // Warm-up: first-touch allocations and thread pools out of the timings.
    encoder.encode(&sentences[..64.min(sentences.len())], 32)?;
    let mut kept = None;
    for &batch_size in &args.batch_sizes {
        for repeat in 0..args.repeats {
            let start = Instant::now();
            let embeddings = encoder.encode(&sentences, batch_size)?;
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "batch {batch_size:>3} run {repeat}: {:.2}s, {:.1} sentences/s (tokenize + forward + pool)",
                seconds,
                sentences.len() as f64 / seconds
            );
            if batch_size == 32 || kept.is_none() {
                kept = Some(embeddings);
            }
        }
    }
    let kept = kept.ok_or("no batch sizes")?;
    if let Some(path) = &args.dump_embeddings {
        let bytes: Vec<u8> = kept
            .as_flat()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(path, bytes)?;
    }
    if args.compare_cpu {
        let cpu =
            SentenceEncoder::load(&args.model_dir, &Device::flex())?.encode(&sentences, 32)?;
        let worst = kept
            .rows()
            .zip(cpu.rows())
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
            .fold(f32::INFINITY, f32::min);
        let max_diff = kept
            .as_flat()
            .iter()
            .zip(cpu.as_flat())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{} vs flex CPU: worst cosine {worst:.7}, max abs diff {max_diff:.2e}",
            args.device
        );
    }
    Ok(())
}
