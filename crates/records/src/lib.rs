//! Typed records that cross tuneloop's phase boundaries, read and written as JSONL.
//!
//! ```
//! use records::clusters::ClusterAssignment;
//! use records::jsonl::{read_jsonl, write_jsonl_atomic};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("assignments.jsonl");
//! let rows = vec![ClusterAssignment { item_id: "a".into(), cluster: 0, distance: 0.5 }];
//! write_jsonl_atomic(&path, &rows)?;
//! assert_eq!(read_jsonl::<ClusterAssignment>(&path)?, rows);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;

pub mod clusters;
pub mod distill;
pub mod eval;
pub mod jsonl;
pub mod mining;

pub use error::{Error, Result};
