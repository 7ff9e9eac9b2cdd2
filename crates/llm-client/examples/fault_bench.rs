//! Throughput of the client against the loopback fault server (same process, separate runtimes).
//!
//! `cargo run --release -p llm-client --example fault_bench -- [requests] [concurrency]`
//!
//! Three runs, each on a fresh ledger: no faults; 20% of calls failing (500, 503, 429 with
//! `retry-after-ms: 0`, truncated 200 bodies); then a rerun of the second batch served entirely
//! from the ledger. Prints requests per second (answered items / wall time).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use llm_client::{ChatRequest, LlmClient, Progress};
use support::{Fault, FaultServer, ServerConfig, client_config, set_prices};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are integers"))
        .collect();
    let n = args.first().copied().unwrap_or(5000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    // The server gets its own runtime so its work does not queue behind the client's tasks.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let faults = vec![
        Fault::Status(500),
        Fault::Status(503),
        Fault::RateLimit {
            retry_after: None,
            retry_after_ms: Some(0),
        },
        Fault::Truncated,
    ];
    let clean = server_rt.block_on(FaultServer::start(ServerConfig::default()));
    let faulty = server_rt.block_on(FaultServer::start(ServerConfig {
        fail_rate: 0.2,
        random_faults: faults,
        seed: 1,
        prices: (1.0, 2.0),
        ..Default::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let requests: Vec<ChatRequest> = (0..n)
        .map(|i| ChatRequest::user(format!("benchmark prompt number {i}")).with_max_tokens(16))
        .collect();
    println!(
        "requests={n} concurrency={concurrency} threads={}",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    for (name, server, ledger) in [
        ("no faults", &clean, "clean.sqlite"),
        ("20% faults", &faulty, "faulty.sqlite"),
        ("rerun from ledger", &faulty, "faulty.sqlite"),
    ] {
        let mut config = client_config(server, &dir.path().join(ledger));
        config.max_concurrency = concurrency;
        config.max_retries = 10;
        config.backoff.initial = Duration::from_millis(1);
        config.backoff.max = Duration::from_millis(10);
        set_prices(&mut config, 1.0, 2.0);
        config.budget_usd = Some(100.0);
        let client = LlmClient::new(config).unwrap();
        let sent_before = server.request_count();
        let report = client_rt.block_on(client.chat_batch(requests.clone(), Progress::Auto));
        println!(
            "{name:>18}: {:8.0} requests/s  ok {} failed {} from_ledger {} http_calls {} elapsed {:.2}s",
            report.rate_per_sec(),
            report.counts.ok,
            report.counts.failed,
            report.counts.from_ledger,
            server.request_count() - sent_before,
            report.elapsed.as_secs_f64()
        );
    }
}
