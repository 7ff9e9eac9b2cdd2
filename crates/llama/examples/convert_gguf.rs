//! Converts a Llama GGUF into an HF directory and reports the time taken.
//!
//! `cargo run -p llama --example convert_gguf -- <model.gguf> <out dir> [f32|bf16|f16]`

use std::time::Instant;

use llama::HostDType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gguf, out, rest @ ..] = args.as_slice() else {
        return Err("usage: convert_gguf <model.gguf> <out dir> [f32|bf16|f16]".into());
    };
    let dtype = match rest.first().map(String::as_str) {
        None | Some("f32") => HostDType::F32,
        Some("bf16") => HostDType::BF16,
        Some("f16") => HostDType::F16,
        Some(other) => return Err(format!("unknown dtype `{other}` (f32, bf16, f16)").into()),
    };
    let started = Instant::now();
    let summary = llama::convert_gguf_to_hf_dir(gguf, out, dtype)?;
    println!(
        "wrote {} tensors ({} bytes) to {out} as {:?} in {:.2?}",
        summary.tensor_count,
        summary.total_tensor_bytes,
        summary.weight_files,
        started.elapsed()
    );
    Ok(())
}
