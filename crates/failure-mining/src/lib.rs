//! Phase 1B, failure mining: build a diverse, automatically graded test set (the assets' task
//! pool plus generated families with exact checkers), split it by hashed id into `mine` and
//! `holdout`, run a model over it, grade every reply, and turn the `mine` failures into named
//! failure patterns (embedded with all-MiniLM-L6-v2, clustered with KMeans, labelled by an LLM).

mod error;

pub mod generate;
pub mod grade;
pub mod item;
pub mod judge;
pub mod leakage;
pub mod patterns;
pub mod phase;
pub mod pool;
pub mod report;
pub mod run;
pub mod testset;

pub use error::{Error, Result};
pub use item::ItemDraft;
pub use phase::{Phase1bConfig, Phase1bOutcome, run_phase1b};
