//! Phase 1C, distillation: for each failure pattern phase 1B found, a teacher model (any
//! OpenAI-compatible API, or tuneloop's own `serve`) writes targeted examples; only verified,
//! well-judged, deduplicated and decontaminated ones are kept; the student is trained on them
//! plus a share of its original data; and each pattern's failure rate is compared before and
//! after on holdout items no teacher saw, with a paired test.
//!
//! ```no_run
//! use distillation::{Phase1cConfig, run_phase1c, config::DEFAULT_CONFIG};
//!
//! let config = Phase1cConfig::parse_with_overrides(DEFAULT_CONFIG, "phase1c.toml", &[
//!     "generate.total_examples=400".into(),
//! ])?;
//! let outcome = run_phase1c(&config)?;
//! for pattern in &outcome.patterns {
//!     println!("{}: {:.2} -> {:.2} (McNemar p {:.3})", pattern.label,
//!         pattern.failure_rate_before, pattern.failure_rate_after, pattern.mcnemar_p);
//! }
//! # Ok::<(), distillation::Error>(())
//! ```

mod error;

pub mod compare;
pub mod config;
pub mod gate;
pub mod phase;
pub mod report;
pub mod targets;
pub mod template;

pub use config::Phase1cConfig;
pub use error::{Error, Result};
pub use phase::{Phase1cOutcome, run_phase1c};
