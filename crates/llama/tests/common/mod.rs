//! Shared paths for integration tests: the real assets and the committed fixtures.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use llama::GgufModel;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(relative: &str) -> PathBuf {
    workspace_root().join("fixtures").join(relative)
}

pub fn assets_dir() -> PathBuf {
    std::env::var_os("TUNELOOP_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("assets"))
}

/// The SmolLM2 GGUF; panics with the command that fetches it when it is missing.
pub fn smollm2_gguf_path() -> PathBuf {
    let path = assets_dir().join("smollm2-135m-instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask assets` (or set TUNELOOP_ASSETS)",
        path.display()
    );
    path
}

/// The real model, opened once per test binary.
pub fn smollm2() -> &'static GgufModel {
    static MODEL: OnceLock<GgufModel> = OnceLock::new();
    MODEL.get_or_init(|| GgufModel::open(smollm2_gguf_path()).expect("SmolLM2 GGUF opens"))
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
