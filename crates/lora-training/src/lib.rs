//! LoRA fine-tuning of Llama-family models on burn.
//!
//! Data in chat `messages`, alpaca or sharegpt JSONL is rendered through the model's own chat
//! template, tokenised once into a memory-mapped cache, and trained with loss on assistant
//! tokens only. Adapters follow PEFT (initialisation, file format, key names), so what comes out
//! loads in HF PEFT, and merging is checked against base + adapter logits.
//!
//! ```no_run
//! use std::path::Path;
//! use lora_training::{attach_adapters, freeze_base, tokenize_data, train, training_device};
//! use lora_training::{DataConfig, LoraConfig, TrainConfig, TrainingSetup};
//! use llama::burn::tensor::Device;
//!
//! let device = training_device(&Device::flex());
//! let pretrained = llama::Pretrained::load(Path::new("assets/smollm2-135m-instruct"), &device)?;
//! let template = pretrained.tokenizer.chat_template()?.expect("a chat model");
//! let data_config = DataConfig { train: "train.jsonl".into(), ..Default::default() };
//! let data = tokenize_data(&data_config, &pretrained.tokenizer, &template, Path::new("run/data"))?;
//! let lora = LoraConfig::default();
//! let mut model = freeze_base(pretrained.model);
//! attach_adapters(&mut model, &lora, 42)?;
//! let outcome = train(model, &TrainingSetup {
//!     data: &data,
//!     train: &TrainConfig { max_steps: Some(20), ..Default::default() },
//!     lora: &lora,
//!     run_dir: Path::new("run"),
//!     pad_token_id: 2,
//!     base_model: None,
//!     resume: false,
//!     stop_after: None,
//!     group: None, // or Some(&Group::from_env(&gpu)?) under a launcher: see `distributed`
//! })?;
//! println!("held-out loss {:?}", outcome.final_eval_loss);
//! # Ok::<(), lora_training::Error>(())
//! ```

mod error;

pub mod adapter;
pub mod batches;
pub mod config;
pub mod data;
pub mod distributed;
pub mod optim;
pub mod phase;
pub mod plot;
pub mod step_graph;
pub mod tokenized;
pub mod trainer;

pub use adapter::{
    MergeCheck, attach_adapters, load_peft_adapter, merge_verified, save_peft_adapter,
    verify_merged,
};
pub use config::{DataConfig, LoraConfig, TrainConfig};
pub use data::DataFormat;
pub use distributed::Group;
pub use error::{Error, Result};
pub use step_graph::StepGraph;
pub use tokenized::{MaskingAudit, TokenizedData, tokenize_data};
pub use trainer::{
    Batch, Metric, StepOutcome, TrainingOutcome, TrainingSetup, eval_loss, freeze_base,
    new_optimizer, optimizer_step, train, training_device,
};
