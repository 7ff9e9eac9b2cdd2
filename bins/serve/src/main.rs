//! Serve a Llama-family model (HF directory or GGUF file) over an OpenAI-compatible HTTP API.
//!
//! `serve --model assets/smollm2-135m-instruct` binds 127.0.0.1 on a free port and prints one
//! line, `listening on http://127.0.0.1:PORT`, on stdout once it accepts requests, so a parent
//! process can read the port. SIGTERM or ctrl-c (or, with `--shutdown-on-stdin-close`, the
//! parent closing our stdin) stops it gracefully: open requests finish, then it exits 0.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use llama::Pretrained;
use serve::{EngineOptions, Server, ServerOptions};
use tokio::io::AsyncReadExt;

#[derive(Debug, Parser)]
#[command(about = "Serve a Llama-family model over an OpenAI-compatible HTTP API")]
struct Args {
    /// HF model directory or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// cpu, cuda or cuda:N (cuda needs a build with the `tch` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 or bf16 (default: f32 on cpu, bf16 on cuda).
    #[arg(long)]
    precision: Option<llama::device::Precision>,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// 0 picks a free port (announced on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Most requests decoded together.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most requests waiting or running; more get 503.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// How long an idle engine waits for companions of a first request before decoding.
    #[arg(long, default_value_t = 5)]
    batch_window_ms: u64,
    /// Name clients use in `model` (default: the model's file or directory name).
    #[arg(long)]
    model_name: Option<String>,
    /// Stop when standard input reaches end of file (a parent that dies closes it).
    #[arg(long)]
    shutdown_on_stdin_close: bool,
}

fn main() -> Result<()> {
    pipeline::init_logging();
    let args = Args::parse();
    let device = llama::device::select_device(&args.device, args.precision)?;
    let started = Instant::now();
    let model = Pretrained::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let model_name = args
        .model_name
        .clone()
        .unwrap_or_else(|| serve::default_model_name(&args.model));
    tracing::info!(
        model = %args.model.display(),
        name = model_name,
        device = args.device,
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    let server = Server::new(
        model,
        ServerOptions {
            model_name,
            engine: EngineOptions {
                max_batch: args.max_batch,
                max_queue: args.max_queue,
                batch_window: Duration::from_millis(args.batch_window_ms),
            },
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = serve::bind(SocketAddr::new(args.host, args.port)).await?;
        let addr = listener.local_addr().context("reading the bound address")?;
        // The one machine-readable line a parent waits for.
        println!("listening on http://{addr}");
        use std::io::Write;
        std::io::stdout().flush().context("writing to stdout")?;
        server
            .serve(listener, shutdown_signal(args.shutdown_on_stdin_close))
            .await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Resolves on ctrl-c, SIGTERM, or (if asked) end of standard input.
async fn shutdown_signal(watch_stdin: bool) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let stdin_closed = async {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
        () = stdin_closed => tracing::info!("stdin closed: shutting down"),
    }
}
