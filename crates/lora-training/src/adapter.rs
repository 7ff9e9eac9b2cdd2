//! Attaching adapters with PEFT's initialisation, saving and loading them in PEFT's format,
//! and merging them into the base with a logits check.

use std::path::Path;

use llama::burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use llama::{HostDType, HostTensor, Llama, LoraAdapter, OwnedTensors, ProjectionKind, host_tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::LoraConfig;
use crate::{Error, Result, error::io_error};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Adds a fresh adapter to every targeted projection of every layer, initialised as PEFT does:
/// A from Kaiming-uniform (a = √5, i.e. U(−1/√in, 1/√in)), B zero, so training starts at the
/// base model exactly. A is drawn on the host from `seed`, so every device gets the same start.
pub fn attach_adapters(model: &mut Llama, config: &LoraConfig, seed: u64) -> Result<()> {
    config.validate()?;
    let targets = config.targets()?;
    let device = model.device();
    for layer in 0..model.layers.len() {
        for &kind in &targets {
            let [input, output] = model.projection(layer, kind).dims();
            let bound = 1.0 / (input as f32).sqrt();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream((layer * ProjectionKind::ALL.len() + kind as usize) as u64);
            let a: Vec<f32> = (0..input * config.rank)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = f32_tensor(a, [input, config.rank], &device);
            let b = Tensor::<2>::zeros([config.rank, output], (&device, DType::F32));
            model.projection_mut(layer, kind).lora =
                Some(LoraAdapter::new(a, b, config.scale(), config.dropout)?);
        }
    }
    Ok(())
}

pub(crate) fn f32_tensor(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
}

/// PEFT's `adapter_config.json` (the fields PEFT 0.21 reads for a LoRA adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    pub peft_type: String,
    pub task_type: String,
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub bias: String,
    pub fan_in_fan_out: bool,
    pub inference_mode: bool,
    pub init_lora_weights: bool,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub modules_to_save: Option<Vec<String>>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
}

impl PeftAdapterConfig {
    pub fn from_lora(config: &LoraConfig, base_model: Option<&str>) -> Result<Self> {
        Ok(Self {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            base_model_name_or_path: base_model.map(str::to_string),
            r: config.rank,
            lora_alpha: config.alpha,
            lora_dropout: config.dropout,
            target_modules: config
                .targets()?
                .iter()
                .map(|k| k.hf_name().to_string())
                .collect(),
            bias: "none".into(),
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: true,
            use_rslora: false,
            use_dora: false,
            modules_to_save: None,
            layers_to_transform: None,
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
        })
    }
}

/// PEFT's tensor name for one factor (`which` = "lora_A" or "lora_B").
pub fn peft_tensor_name(layer: usize, kind: ProjectionKind, which: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{which}.weight",
        kind.module_path()
    )
}

/// The adapters as PEFT names them, in PEFT's layout (`lora_A` `[r, in]`, `lora_B` `[out, r]`), f32.
pub fn adapter_tensors(model: &Llama) -> OwnedTensors {
    let mut tensors = OwnedTensors::new("LoRA adapter");
    for (layer, kind) in model.adapted_projections() {
        let adapter = model
            .projection(layer, kind)
            .lora
            .as_ref()
            .expect("listed as adapted");
        tensors.insert(
            &peft_tensor_name(layer, kind, "lora_A"),
            host_tensor(adapter.a.val().transpose()),
        );
        tensors.insert(
            &peft_tensor_name(layer, kind, "lora_B"),
            host_tensor(adapter.b.val().transpose()),
        );
    }
    tensors
}

/// Writes `dir` as a PEFT adapter directory (whole or not at all).
pub fn save_peft_adapter(
    model: &Llama,
    config: &LoraConfig,
    base_model: Option<&str>,
    dir: &Path,
) -> Result<()> {
    let peft = PeftAdapterConfig::from_lora(config, base_model)?;
    if model.adapted_projections().is_empty() {
        return Err(Error::InvalidConfig(
            "the model carries no adapter to save".into(),
        ));
    }
    llama::replace_dir_atomically(dir, |staging| write_peft_files(staging, model, &peft))
}

/// `adapter_model.safetensors` and `adapter_config.json` into `dir`.
pub(crate) fn write_peft_files(dir: &Path, model: &Llama, peft: &PeftAdapterConfig) -> Result<()> {
    llama::write_safetensors_file(
        &dir.join(ADAPTER_WEIGHTS_FILE),
        &adapter_tensors(model),
        HostDType::F32,
    )?;
    llama::export::write_file_atomically(
        &dir.join(ADAPTER_CONFIG_FILE),
        serde_json::to_string_pretty(peft)
            .expect("config serialises")
            .as_bytes(),
    )?;
    Ok(())
}

/// Loads a PEFT LoRA adapter directory onto `model` (replacing any adapters it has). Returns
/// its configuration. Every tensor the config implies must be present with the right shape.
pub fn load_peft_adapter(model: &mut Llama, dir: &Path) -> Result<LoraConfig> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let peft: PeftAdapterConfig = serde_json::from_str(&text).map_err(|e| Error::InvalidFile {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    if peft.peft_type != "LORA" || peft.use_dora || peft.use_rslora || peft.fan_in_fan_out {
        return Err(Error::InvalidFile {
            path: config_path,
            message: "only plain LoRA adapters are supported (no DoRA, rsLoRA or fan_in_fan_out)"
                .into(),
        });
    }
    let config = LoraConfig {
        rank: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
        target_modules: peft.target_modules.clone(),
    };
    let targets = config.targets()?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(io_error(&weights_path))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::InvalidFile {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;
    let device = model.device();
    let read = |name: &str, shape| read_matrix(&file, &weights_path, name, shape, &device);
    let mut loaded = model.clone().remove_adapters();
    for layer in 0..loaded.layers.len() {
        for &kind in &targets {
            let [input, output] = loaded.projection(layer, kind).dims();
            let a = read(
                &peft_tensor_name(layer, kind, "lora_A"),
                [config.rank, input],
            )?;
            let b = read(
                &peft_tensor_name(layer, kind, "lora_B"),
                [output, config.rank],
            )?;
            loaded.projection_mut(layer, kind).lora = Some(LoraAdapter::new(
                a.transpose(),
                b.transpose(),
                config.scale(),
                config.dropout,
            )?);
        }
    }
    *model = loaded;
    Ok(config)
}

/// The 2-d tensor `name` of a safetensors file (f32, bf16 or f16) as an f32 device tensor,
/// checked against the `shape` the caller expects; errors name the file and the tensor.
pub(crate) fn read_matrix(
    file: &safetensors::SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: [usize; 2],
    device: &Device,
) -> Result<Tensor<2>> {
    let invalid = |message: String| Error::InvalidFile {
        path: path.to_path_buf(),
        message,
    };
    let view = file
        .tensor(name)
        .map_err(|_| invalid(format!("tensor `{name}` is missing")))?;
    if view.shape() != shape {
        return Err(invalid(format!(
            "tensor `{name}` has shape {:?}, expected {shape:?}",
            view.shape()
        )));
    }
    let dtype = match view.dtype() {
        safetensors::Dtype::F32 => HostDType::F32,
        safetensors::Dtype::BF16 => HostDType::BF16,
        safetensors::Dtype::F16 => HostDType::F16,
        other => {
            return Err(invalid(format!(
                "tensor `{name}` has unsupported dtype {other:?}"
            )));
        }
    };
    let host = HostTensor {
        shape: shape.to_vec(),
        dtype,
        bytes: std::borrow::Cow::Borrowed(view.data()),
    };
    Ok(f32_tensor(host.to_f32_vec(), shape, device))
}

/// How far the merged model's logits are from base + adapter's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergeCheck {
    pub max_abs_diff: f32,
    pub max_abs_logit: f32,
    pub tolerance: f32,
    pub probes: usize,
}

/// Folds the adapters into the base weights and checks with [`verify_merged`] that the merged
/// model's logits match base + adapter's on `probes`.
pub fn merge_verified(model: &Llama, probes: &[Vec<u32>]) -> Result<(Llama, MergeCheck)> {
    if model.adapted_projections().is_empty() {
        return Err(Error::InvalidConfig(
            "the model carries no adapter to merge".into(),
        ));
    }
    let merged = model.clone().merge_adapters();
    let check = verify_merged(model, &merged, probes)?;
    Ok((merged, check))
}

/// Compares `merged`'s logits with `adapted`'s (base + adapter) on `probes` (token sequences);
/// a difference beyond tolerance is an error.
///
/// Tolerance: in f32 the two differ only by summation order (1e-3 relative to the largest
/// logit). In bf16 the merged weight is rounded once to bf16 (relative error 2⁻⁹ per weight)
/// where base + adapter keeps the update in f32: accumulated over a layer stack this moves
/// logits by about 1% of their scale, so bf16 allows 3e-2 of the largest logit.
pub fn verify_merged(adapted: &Llama, merged: &Llama, probes: &[Vec<u32>]) -> Result<MergeCheck> {
    if probes.is_empty() {
        return Err(Error::InvalidConfig(
            "merge verification needs at least one probe".into(),
        ));
    }
    let device = adapted.device();
    let mut max_abs_diff = 0.0f32;
    let mut max_abs_logit = 0.0f32;
    for probe in probes {
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(probe.iter().map(|&t| t as i64).collect(), [1, probe.len()]),
            &device,
        );
        let mask = Tensor::<2, Int>::ones([1, probe.len()], &device);
        let reference = f32_values(adapted.forward(tokens.clone(), mask.clone(), None));
        let candidate = f32_values(merged.forward(tokens, mask, None));
        for (r, c) in reference.iter().zip(&candidate) {
            max_abs_diff = max_abs_diff.max((r - c).abs());
            max_abs_logit = max_abs_logit.max(r.abs());
        }
    }
    let relative = if adapted.embed_tokens.weight.val().dtype() == DType::F32 {
        1e-3
    } else {
        3e-2
    };
    let check = MergeCheck {
        max_abs_diff,
        max_abs_logit,
        tolerance: relative * max_abs_logit.max(1.0),
        probes: probes.len(),
    };
    // A NaN difference fails too.
    if check.max_abs_diff.is_nan() || check.max_abs_diff > check.tolerance {
        return Err(Error::MergeMismatch(format!(
            "merged logits differ from base + adapter by up to {} (tolerance {}, largest logit {})",
            check.max_abs_diff, check.tolerance, check.max_abs_logit
        )));
    }
    Ok(check)
}

/// An adapter's factors as f32 host values, A then B (for comparisons and tests).
pub fn adapter_values(adapter: &LoraAdapter) -> Vec<f32> {
    let mut values = f32_values(adapter.a.val());
    values.extend(f32_values(adapter.b.val()));
    values
}

pub(crate) fn f32_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .cast(FloatDType::F32)
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 data")
}
