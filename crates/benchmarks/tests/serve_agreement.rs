//! MMLU by log-likelihood through tuneloop's own `serve` over HTTP on loopback (the endpoint
//! model: `/v1/completions` with echo and logprobs, through llm-client) and through the
//! in-process model give the same choice per item and the same per-choice log-probabilities
//! within 1e-4. Real SmolLM2-135M-Instruct weights from the assets; a few zero-shot items so
//! it stays cheap on a CPU.

use std::time::Instant;

use benchmarks::{EvalRecord, LocalModel, MmluOptions, MmluProtocol, OpenAiEndpoint, run_mmlu};
use llama::Pretrained;
use llama::burn::tensor::Device;
use serve::{Server, ServerOptions};

fn records(dir: &std::path::Path) -> Vec<EvalRecord> {
    let mut records: Vec<EvalRecord> =
        std::fs::read_to_string(dir.join("mmlu_loglikelihood.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    records.sort_by(|a, b| a.item_id.cmp(&b.item_id));
    records
}

#[test]
fn mmlu_loglikelihood_through_serve_matches_the_in_process_model() {
    let paths = assets::AssetPaths::locate();
    let dir = paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e} (run `cargo xtask assets`)"));
    let load = || Pretrained::load(&dir, &Device::flex()).expect("SmolLM2 loads");

    let server = Server::new(
        load(),
        ServerOptions {
            model_name: "smollm2".into(),
            engine: Default::default(),
        },
    )
    .unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();

    let work = tempfile::tempdir().unwrap();
    let mut endpoint = OpenAiEndpoint::new(
        &format!("http://{addr}/v1"),
        "smollm2",
        None,
        &work.path().join("ledger.sqlite"),
    )
    .unwrap();
    // `serve` scores an echoed prompt without generating: one forward pass per request.
    endpoint.score_max_tokens = 0;
    let local = LocalModel::new("smollm2 in-process", load(), 4);

    let options = MmluOptions {
        protocol: MmluProtocol::Loglikelihood,
        shots: 0,
        subjects: Some(vec!["high_school_geography".into()]),
        limit: Some(3),
        batch_size: 4,
        ..MmluOptions::default()
    };
    let started = Instant::now();
    let served = run_mmlu(&endpoint, &options, &work.path().join("served")).unwrap();
    let served_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let in_process = run_mmlu(&local, &options, &work.path().join("local")).unwrap();
    eprintln!(
        "3 items × 4 choices: serve over HTTP {served_secs:.2} s, in-process {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(served.n, 3);
    assert_eq!(in_process.n, 3);

    let served = records(&work.path().join("served"));
    let local = records(&work.path().join("local"));
    let mut largest = 0.0f64;
    for (s, l) in served.iter().zip(&local) {
        assert_eq!(s.item_id, l.item_id);
        assert_eq!(s.extracted, l.extracted, "item {}", s.item_id);
        let (sp, lp) = (s.logprobs.as_ref().unwrap(), l.logprobs.as_ref().unwrap());
        assert_eq!(sp.len(), 4);
        for (a, b) in sp.iter().zip(lp) {
            assert!(a.is_finite() && *a < 0.0, "{sp:?}");
            largest = largest.max((a - b).abs());
            assert!(
                (a - b).abs() < 1e-4,
                "item {}: served {sp:?} vs in-process {lp:?}",
                s.item_id
            );
        }
    }
    eprintln!("largest per-choice difference: {largest:.2e}");

    // A rerun against the same ledger sends nothing to the server (its answers are recorded).
    let before = endpoint.client().ledger().counts().unwrap();
    run_mmlu(&endpoint, &options, &work.path().join("again")).unwrap();
    assert_eq!(endpoint.client().ledger().counts().unwrap(), before);

    let _ = stop_tx.send(());
    serving.join().unwrap();
}
