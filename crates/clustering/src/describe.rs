//! Turning a partition into cluster records: size, share, distance statistics, c-TF-IDF
//! keywords and the members nearest each centroid.

use records::clusters::{ClusterAssignment, ClusterRecord, DistanceStats, MemberRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keywords::class_tfidf;
use crate::kmeans::KMeans;

/// One clustered item: its id and the text keywords and examples are drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterItem {
    pub id: String,
    pub text: String,
}

/// How much to say about each cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeConfig {
    pub n_keywords: usize,
    pub n_representatives: usize,
}

impl Default for DescribeConfig {
    fn default() -> Self {
        Self {
            n_keywords: 10,
            n_representatives: 5,
        }
    }
}

fn check_items(model: &KMeans, items: &[ClusterItem]) -> Result<()> {
    if items.len() != model.labels().len() {
        return Err(Error::LengthMismatch {
            what: "items",
            expected: model.labels().len(),
            actual: items.len(),
        });
    }
    Ok(())
}

/// One record per cluster, ordered by cluster id; `items[i]` is the item of fitted point `i`.
pub fn describe_clusters(
    model: &KMeans,
    items: &[ClusterItem],
    config: &DescribeConfig,
) -> Result<Vec<ClusterRecord>> {
    check_items(model, items)?;
    let n = items.len();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); model.k()];
    for (index, &label) in model.labels().iter().enumerate() {
        members[label].push(index);
    }
    let texts: Vec<Vec<&str>> = members
        .iter()
        .map(|m| m.iter().map(|&i| items[i].text.as_str()).collect())
        .collect();
    let keywords = class_tfidf(&texts, config.n_keywords);
    let distances = model.distances();
    let records = members
        .iter()
        .zip(keywords)
        .enumerate()
        .map(|(id, (member_indices, keywords))| {
            let mut nearest = member_indices.clone();
            // Nearest first; ties by item id so the choice does not depend on input order.
            nearest.sort_by(|&a, &b| {
                distances[a]
                    .total_cmp(&distances[b])
                    .then_with(|| items[a].id.cmp(&items[b].id))
            });
            let representatives = nearest
                .iter()
                .take(config.n_representatives)
                .map(|&i| MemberRef {
                    id: items[i].id.clone(),
                    text: items[i].text.clone(),
                    distance: distances[i],
                })
                .collect();
            let mut sorted: Vec<f64> = nearest.iter().map(|&i| distances[i] as f64).collect();
            sorted.sort_by(f64::total_cmp);
            ClusterRecord {
                id,
                size: member_indices.len(),
                share: member_indices.len() as f64 / n as f64,
                centroid_distance: distance_stats(&sorted),
                keywords,
                representatives,
                label: None,
            }
        })
        .collect();
    Ok(records)
}

fn distance_stats(sorted: &[f64]) -> DistanceStats {
    if sorted.is_empty() {
        return DistanceStats {
            mean: 0.0,
            median: 0.0,
            max: 0.0,
        };
    }
    let len = sorted.len();
    let median = if len % 2 == 1 {
        sorted[len / 2]
    } else {
        (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0
    };
    DistanceStats {
        mean: sorted.iter().sum::<f64>() / len as f64,
        median,
        max: sorted[len - 1],
    }
}

/// Each item's cluster and distance to its centroid, in item order.
pub fn assignments(model: &KMeans, items: &[ClusterItem]) -> Result<Vec<ClusterAssignment>> {
    check_items(model, items)?;
    Ok(items
        .iter()
        .zip(model.labels())
        .zip(model.distances())
        .map(|((item, &cluster), &distance)| ClusterAssignment {
            item_id: item.id.clone(),
            cluster,
            distance,
        })
        .collect())
}
