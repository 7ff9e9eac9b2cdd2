//! Clustering of embedded items (e.g. failed test items) into described, labelled groups.
//!
//! ```
//! use clustering::{analyse, AnalysisConfig, ClusterItem, KChoice, Points};
//! use clustering::label::label_clusters_with_keywords;
//!
//! let rows = [[0.0f32, 0.1], [0.1, 0.0], [5.0, 5.1], [5.1, 5.0], [0.05, 0.05], [5.05, 5.05]];
//! let texts = ["add fractions", "fraction sum", "python list", "list index", "fractions", "python"];
//! let items: Vec<ClusterItem> = texts.iter().enumerate()
//!     .map(|(i, t)| ClusterItem { id: format!("item-{i}"), text: t.to_string() }).collect();
//! let mut analysis = analyse(&Points::from_rows(&rows)?, &items, &AnalysisConfig::new(KChoice::Silhouette(vec![2, 3])))?;
//! label_clusters_with_keywords(&mut analysis.clusters); // offline; an LLM labeller plugs in via `label::ClusterLabeller`
//! assert_eq!(analysis.model.k(), 2);
//! # let dir = tempfile::tempdir()?;
//! analysis.write(dir.path(), "Failure clusters")?; // clusters.jsonl, assignments.jsonl, report.{md,html}
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Pieces: [`KMeans`] (k-means++, restarts, GEMM assignment, independent of input order),
//! [`metrics`] (silhouette, adjusted Rand index), [`selection`] (choice of k, bootstrap
//! stability), [`keywords`] (c-TF-IDF), [`describe`], [`label`], [`pca`], [`report`].

mod canonical;
mod error;
mod linalg;

pub mod analysis;
pub mod describe;
pub mod keywords;
pub mod kmeans;
pub mod label;
pub mod metrics;
pub mod pca;
pub mod points;
pub mod report;
pub mod selection;

pub use analysis::{Analysis, AnalysisConfig, KChoice, OutputFiles, analyse};
pub use describe::ClusterItem;
pub use error::{Error, Result};
pub use kmeans::{KMeans, KMeansConfig};
pub use points::Points;
