//! The whole clustering step in one call: choose k (or take it), fit, check stability,
//! describe clusters, map them, and write `clusters.jsonl`, `assignments.jsonl` and the report.

use std::path::{Path, PathBuf};

use records::clusters::{ClusterAssignment, ClusterRecord};
use records::jsonl::write_jsonl_atomic;

use crate::describe::{ClusterItem, DescribeConfig, assignments, describe_clusters};
use crate::error::{Error, Result};
use crate::kmeans::{KMeans, KMeansConfig};
use crate::metrics::{Silhouette, SilhouetteConfig, silhouette_score};
use crate::points::Points;
use crate::report::{ClusterMap, ReportFiles, ReportInput, cluster_map, write_report};
use crate::selection::{KSelection, Stability, StabilityConfig, bootstrap_stability, choose_k};

/// How k is decided.
#[derive(Debug, Clone, PartialEq)]
pub enum KChoice {
    Fixed(usize),
    /// Best silhouette among these k.
    Silhouette(Vec<usize>),
}

/// Settings of [`analyse`]; `kmeans.k` is ignored in favour of `k`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisConfig {
    pub k: KChoice,
    pub kmeans: KMeansConfig,
    pub silhouette: SilhouetteConfig,
    /// `None` skips the bootstrap.
    pub stability: Option<StabilityConfig>,
    pub describe: DescribeConfig,
    /// Most points drawn on the map.
    pub map_points: usize,
}

impl AnalysisConfig {
    pub fn new(k: KChoice) -> Self {
        Self {
            k,
            kmeans: KMeansConfig::new(2),
            silhouette: SilhouetteConfig::default(),
            stability: Some(StabilityConfig::default()),
            describe: DescribeConfig::default(),
            map_points: 3000,
        }
    }
}

/// The outcome of [`analyse`], ready to label and write.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub model: KMeans,
    pub selection: Option<KSelection>,
    /// Silhouette of the final partition (`None` when k = 1 or k = n).
    pub silhouette: Option<Silhouette>,
    pub stability: Option<Stability>,
    pub clusters: Vec<ClusterRecord>,
    pub assignments: Vec<ClusterAssignment>,
    pub map: ClusterMap,
    pub dim: usize,
}

/// Clusters `points` (`items[i]` describes row `i`).
pub fn analyse(
    points: &Points,
    items: &[ClusterItem],
    config: &AnalysisConfig,
) -> Result<Analysis> {
    if items.len() != points.n_rows() {
        return Err(Error::LengthMismatch {
            what: "items",
            expected: points.n_rows(),
            actual: items.len(),
        });
    }
    let (model, selection) = match &config.k {
        KChoice::Fixed(k) => (
            KMeans::fit(
                points,
                &KMeansConfig {
                    k: *k,
                    ..config.kmeans.clone()
                },
            )?,
            None,
        ),
        KChoice::Silhouette(ks) => {
            let (selection, model) = choose_k(points, ks, &config.kmeans, &config.silhouette)?;
            (model, Some(selection))
        }
    };
    let k = model.k();
    let silhouette = if k >= 2 && k < points.n_rows() {
        Some(silhouette_score(
            points,
            model.labels(),
            &config.silhouette,
        )?)
    } else {
        None
    };
    let stability = match &config.stability {
        Some(stability) => Some(bootstrap_stability(
            points,
            model.labels(),
            &KMeansConfig {
                k,
                ..config.kmeans.clone()
            },
            stability,
        )?),
        None => None,
    };
    let clusters = describe_clusters(&model, items, &config.describe)?;
    let assignments = assignments(&model, items)?;
    let map = cluster_map(points, &model, config.map_points);
    Ok(Analysis {
        model,
        selection,
        silhouette,
        stability,
        clusters,
        assignments,
        map,
        dim: points.dim(),
    })
}

/// Paths written by [`Analysis::write`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFiles {
    pub clusters: PathBuf,
    pub assignments: PathBuf,
    pub report: ReportFiles,
}

impl Analysis {
    /// Writes `clusters.jsonl`, `assignments.jsonl`, `report.md`, `report.html` and
    /// `clusters_map.svg` into `dir` (created if missing), each atomically.
    pub fn write(&self, dir: &Path, title: &str) -> Result<OutputFiles> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let clusters = dir.join("clusters.jsonl");
        let assignments = dir.join("assignments.jsonl");
        write_jsonl_atomic(&clusters, &self.clusters)?;
        write_jsonl_atomic(&assignments, &self.assignments)?;
        let report = write_report(
            dir,
            &ReportInput {
                title,
                n_items: self.assignments.len(),
                dim: self.dim,
                inertia: self.model.inertia(),
                n_iter: self.model.n_iter(),
                clusters: &self.clusters,
                selection: self.selection.as_ref(),
                stability: self.stability.as_ref(),
                map: &self.map,
            },
        )?;
        Ok(OutputFiles {
            clusters,
            assignments,
            report,
        })
    }
}
