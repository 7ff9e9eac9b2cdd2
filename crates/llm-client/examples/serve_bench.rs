//! Throughput of the client against tuneloop's own `serve` (a real subprocess on loopback).
//!
//! `cargo build -p serve-cli && cargo run -p llm-client --example serve_bench -- MODEL [requests] [max_tokens]`
//!
//! Runs the same distinct greedy requests (each on a fresh ledger, so every one is generated)
//! at client concurrency 1 and 8, and at concurrency 8 against serve started with
//! `--max-batch 1` (requests decoded one at a time) and `--max-batch 8` (batched). Prints
//! requests/s and generated tokens/s. `TUNELOOP_SERVE_BIN` overrides where serve is found.

use std::time::Duration;

use llm_client::{ChatRequest, ClientConfig, LlmClient, Progress, ServeOptions, ServeProcess};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args
        .first()
        .expect("usage: serve_bench MODEL [requests] [max_tokens]");
    let n: usize = args.get(1).map_or(32, |a| a.parse().expect("requests"));
    let max_tokens: u32 = args.get(2).map_or(16, |a| a.parse().expect("max_tokens"));
    let binary = ServeOptions::locate_binary().unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let requests: Vec<ChatRequest> = (0..n)
        .map(|i| {
            ChatRequest::user(format!("Write one short sentence about the number {i}."))
                .with_temperature(0.0)
                .with_max_tokens(max_tokens)
        })
        .collect();
    println!(
        "requests={n} max_tokens={max_tokens} threads={}",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    for (max_batch, concurrencies) in [(8usize, &[1usize, 8][..]), (1, &[8][..])] {
        let mut options = ServeOptions::new(&binary, model);
        options.extra_args = vec!["--max-batch".into(), max_batch.to_string()];
        let process = runtime
            .block_on(ServeProcess::start(options))
            .unwrap_or_else(|e| panic!("{e}"));
        // One request first so the timed runs do not include first-call warm-up.
        let dir = tempfile::tempdir().unwrap();
        let warm = LlmClient::new(ClientConfig::new(
            process.endpoint(),
            dir.path().join("warm.sqlite"),
        ))
        .unwrap();
        runtime
            .block_on(warm.chat(ChatRequest::user("Hi").with_max_tokens(4)))
            .unwrap();
        for &concurrency in concurrencies {
            let mut config = ClientConfig::new(
                process.endpoint(),
                dir.path()
                    .join(format!("b{max_batch}-c{concurrency}.sqlite")),
            );
            config.max_concurrency = concurrency;
            config.timeout = Duration::from_secs(600);
            let client = LlmClient::new(config).unwrap();
            let report = runtime.block_on(client.chat_batch(requests.clone(), Progress::Hidden));
            assert_eq!(report.counts.ok, n, "{:?}", report.counts);
            let tokens: u64 = report
                .results
                .iter()
                .map(|r| r.as_ref().unwrap().completion_tokens)
                .sum();
            let seconds = report.elapsed.as_secs_f64();
            println!(
                "serve --max-batch {max_batch}, client concurrency {concurrency}: {:6.2} requests/s, {:6.1} generated tokens/s ({tokens} tokens in {seconds:.1} s)",
                report.rate_per_sec(),
                tokens as f64 / seconds
            );
        }
        process.stop().unwrap();
    }
}
