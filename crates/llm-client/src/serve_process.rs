//! tuneloop's own `serve` binary as a subprocess: the offline teacher and judge.
//!
//! It is started on 127.0.0.1 with port 0, announces the port it bound on stdout
//! (`listening on http://127.0.0.1:PORT`), and is ready once `GET /v1/models` answers. Stopping
//! sends SIGTERM (serve finishes open requests and exits), then SIGKILL after a grace period.
//! Serve also runs with `--shutdown-on-stdin-close` and its stdin is a pipe held here, so if
//! this process dies without stopping it (even by SIGKILL), the pipe closes and serve exits.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::config::Endpoint;
use crate::error::{Error, Result};

/// How to start `serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOptions {
    /// The `serve` executable (see [`ServeOptions::locate_binary`]).
    pub binary: PathBuf,
    /// HF model directory or `.gguf` file.
    pub model: PathBuf,
    /// `--model-name`; by default serve names the model after its file or directory.
    pub model_name: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// More arguments, e.g. `["--max-batch", "16"]`.
    pub extra_args: Vec<String>,
    /// Limit for loading the model, binding and the first `/v1/models` answer.
    pub ready_timeout: Duration,
    /// After SIGTERM, how long serve may take to finish open requests before SIGKILL.
    pub stop_grace: Duration,
}

impl ServeOptions {
    /// Defaults: CPU, 120 s to become ready, 10 s grace on stop.
    pub fn new(binary: impl Into<PathBuf>, model: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            model: model.into(),
            model_name: None,
            device: "cpu".into(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
        }
    }

    /// The `serve` executable: `TUNELOOP_SERVE_BIN` if set, else `serve` next to the running
    /// executable or one folder up (cargo puts test binaries in `target/<profile>/deps/`).
    pub fn locate_binary() -> Result<PathBuf> {
        if let Some(path) = std::env::var_os("TUNELOOP_SERVE_BIN") {
            let path = PathBuf::from(path);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error::ServeProcess {
                    binary: path,
                    reason: "TUNELOOP_SERVE_BIN names no file".into(),
                })
            };
        }
        let exe = std::env::current_exe().map_err(|e| Error::ServeProcess {
            binary: PathBuf::from("serve"),
            reason: format!("cannot find the running executable: {e}"),
        })?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        [Some(dir), dir.parent()]
            .into_iter()
            .flatten()
            .map(|d| d.join("serve"))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::ServeProcess {
                binary: dir.join("serve"),
                reason: "not found next to this executable; build it with \
                         `cargo build -p serve-cli` or set TUNELOOP_SERVE_BIN"
                    .into(),
            })
    }
}

/// A running `serve` child process; stopped (SIGTERM, then SIGKILL) on [`ServeProcess::stop`]
/// or drop.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    /// Held open: serve exits when it closes.
    stdin: Option<ChildStdin>,
    binary: PathBuf,
    base_url: String,
    model_name: String,
    stop_grace: Duration,
    exit: Option<ExitStatus>,
}

impl ServeProcess {
    /// Starts serve and waits until it answers `GET /v1/models`.
    pub async fn start(options: ServeOptions) -> Result<Self> {
        let fail = |reason: String| Error::ServeProcess {
            binary: options.binary.clone(),
            reason,
        };
        let mut command = Command::new(&options.binary);
        command
            .arg("--model")
            .arg(&options.model)
            .args(["--host", "127.0.0.1", "--port", "0", "--device"])
            .arg(&options.device)
            .arg("--shutdown-on-stdin-close");
        if let Some(name) = &options.model_name {
            command.arg("--model-name").arg(name);
        }
        command
            .args(&options.extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            // One log line per request would drown the parent's own output.
            command.env("RUST_LOG", "warn");
        }
        let mut child = command
            .spawn()
            .map_err(|e| fail(format!("cannot start: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        // From here on, dropping `process` stops the child.
        let mut process = Self {
            child,
            stdin,
            binary: options.binary.clone(),
            base_url: String::new(),
            model_name: String::new(),
            stop_grace: options.stop_grace,
            exit: None,
        };
        let (announce, mut announced) = tokio::sync::oneshot::channel::<String>();
        std::thread::Builder::new()
            .name("serve-stdout".into())
            .spawn(move || read_stdout(stdout, announce))
            .map_err(|e| fail(format!("cannot start the stdout reader: {e}")))?;

        let deadline = Instant::now() + options.ready_timeout;
        let origin = loop {
            tokio::select! {
                got = &mut announced => match got {
                    Ok(origin) => break origin,
                    Err(_) => {
                        let status = process.child.wait().ok();
                        process.exit = status;
                        return Err(fail(format!(
                            "exited ({}) without announcing its address; its stderr is above",
                            status.map_or("unknown status".into(), |s| s.to_string())
                        )));
                    }
                },
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Ok(Some(status)) = process.child.try_wait() {
                        process.exit = Some(status);
                        return Err(fail(format!(
                            "exited ({status}) before it was ready; its stderr is above"
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(fail(format!(
                            "did not announce its address within {:?}",
                            options.ready_timeout
                        )));
                    }
                }
            }
        };
        process.base_url = format!("{}/v1", origin.trim_end_matches('/'));
        process.model_name = wait_ready(&process.base_url, deadline, options.model_name.as_deref())
            .await
            .map_err(fail)?;
        Ok(process)
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The name to send as `model`.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An endpoint for [`crate::ClientConfig`]: no key; serve accepts `response_format`
    /// (enforced while decoding: structured outputs) and `max_completion_tokens`.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.base_url, &self.model_name)
    }

    /// Stops serve: SIGTERM, then SIGKILL if it has not exited after the grace period.
    /// Blocks until the process is gone (and reaped).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let fail = |reason: String| Error::ServeProcess {
            binary: self.binary.clone(),
            reason,
        };
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exit = Some(status);
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| fail(e.to_string()))?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped (try_wait above returned
        // None), so it cannot name a recycled process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.stdin.take();
        let deadline = Instant::now() + self.stop_grace;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    tracing::warn!(pid, grace = ?self.stop_grace, "serve ignored SIGTERM; killing it");
                    let _ = self.child.kill();
                    break self
                        .child
                        .wait()
                        .map_err(|e| fail(format!("waiting after SIGKILL: {e}")))?;
                }
                Err(e) => return Err(fail(format!("waiting for exit: {e}"))),
            }
        };
        self.exit = Some(status);
        Ok(status)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Err(error) = self.terminate() {
            tracing::error!("stopping serve: {error}");
        }
    }
}

/// Reads serve's stdout: hands over the announced origin, then keeps draining so serve never
/// blocks on a full pipe.
fn read_stdout(stdout: std::process::ChildStdout, announce: tokio::sync::oneshot::Sender<String>) {
    let mut announce = Some(announce);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        match line.strip_prefix("listening on ") {
            Some(origin) if announce.is_some() => {
                let _ = announce
                    .take()
                    .expect("checked")
                    .send(origin.trim().to_owned());
            }
            _ => tracing::debug!(target: "serve", "{line}"),
        }
    }
}

/// Polls `GET /v1/models` until it lists a model; returns the model name to use.
async fn wait_ready(
    base_url: &str,
    deadline: Instant,
    wanted: Option<&str>,
) -> std::result::Result<String, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let url = format!("{base_url}/models");
    let mut last_error = String::from("no answer yet");
    while Instant::now() < deadline {
        match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| format!("{url}: reading the body: {e}"))?;
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not JSON: {e}"))?;
                let ids: Vec<&str> = body["data"]
                    .as_array()
                    .map(|models| models.iter().filter_map(|m| m["id"].as_str()).collect())
                    .unwrap_or_default();
                return match (wanted, ids.first()) {
                    (Some(name), _) if ids.contains(&name) => Ok(name.to_owned()),
                    (Some(name), _) => Err(format!("{url} lists {ids:?}, not {name:?}")),
                    (None, Some(first)) => Ok((*first).to_owned()),
                    (None, None) => Err(format!("{url} lists no model")),
                };
            }
            Ok(response) => last_error = format!("HTTP {}", response.status()),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} did not answer in time: {last_error}"))
}
