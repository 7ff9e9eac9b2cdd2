//! The README's chat demo, `cargo xtask demo`, asks the embedded SmolLM2-135M-Instruct a
//! question through this binary: run it as a new user would, from a directory with nothing in it.

use std::process::Command;

#[test]
fn the_demo_question_is_answered_from_a_fresh_directory() {
    let assets = assets::AssetPaths::locate();
    let model = assets
        .require(&assets.smollm2_dir().join("config.json"))
        .expect("SmolLM2 assets missing: run `cargo xtask assets`");
    let fresh = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("--model")
        .arg(model.parent().unwrap())
        .args(["--max-new-tokens", "16", "What is the capital of France?"])
        .current_dir(fresh.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("Paris"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // Nothing is written where a user runs it.
    assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 0);
}
