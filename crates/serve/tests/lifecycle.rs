//! A full queue answers 503 in OpenAI's shape with Retry-After, and a graceful shutdown lets
//! an open stream finish before `serve` returns. Real SmolLM2 weights, real loopback HTTP.

use std::time::Duration;

use llama::Pretrained;
use llama::burn::tensor::Device;
use serde_json::{Value, json};
use serve::{EngineOptions, Server, ServerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_503_and_shutdown_waits_for_open_streams() {
    let paths = assets::AssetPaths::locate();
    let dir = paths
        .require(&paths.smollm2_dir())
        .unwrap_or_else(|e| panic!("{e} (run `cargo xtask assets`)"));
    let model = Pretrained::load(&dir, &Device::flex()).unwrap();
    let server = Server::new(
        model,
        ServerOptions {
            model_name: "m".into(),
            engine: EngineOptions {
                max_batch: 1,
                max_queue: 1,
                batch_window: Duration::ZERO,
            },
        },
    )
    .unwrap();
    let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    // reqwest is built without a bundled crypto provider (see llm-client); any is fine here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let body = |stream: bool| {
        json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Count from one to fifty in words."}],
            "temperature": 0,
            "max_tokens": 24,
            "stream": stream,
        })
    };
    // The first request takes the only queue slot, streaming.
    let mut first = http
        .post(format!("{base}/chat/completions"))
        .json(&body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let role_chunk = first.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&role_chunk).contains("\"role\":\"assistant\""));

    let refused = http
        .post(format!("{base}/chat/completions"))
        .json(&body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(error["error"]["code"], "server_overloaded");

    // Shut down while the stream is open: it still ends with [DONE], then serve returns.
    stop.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = first.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .expect("serve returns after the stream ends")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(http.get(format!("{base}/models")).send().await.is_err());
}
