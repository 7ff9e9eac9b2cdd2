//! Paired before/after comparison of holdout items: the exact McNemar test over discordant
//! pairs and a paired bootstrap CI of the failure-rate difference.

use std::collections::BTreeMap;

use benchmarks::stats::bootstrap_ci95;
use records::distill::PatternOutcome;
use records::mining::HoldoutMembership;

/// Exact two-sided McNemar p-value: with `b` and `c` discordant pairs, twice the binomial tail
/// P(X ≤ min(b, c)) for X ~ Bin(b + c, 1/2), capped at 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum of C(n, i) / 2^n in log space (n can be thousands).
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// One outcome per pattern (and `None` = "other"): holdout items' correctness before (phase
/// 1B) and after (`after`: item id → correct). `names` labels the clusters, `targeted` says
/// which got data. Items missing from `after` are left out of the pair and counted by the caller.
pub fn pattern_outcomes(
    holdout: &[HoldoutMembership],
    after: &BTreeMap<String, bool>,
    names: &dyn Fn(usize) -> String,
    targeted: &dyn Fn(usize) -> bool,
    seed: u64,
) -> Vec<PatternOutcome> {
    let mut groups: BTreeMap<Option<usize>, Vec<(bool, bool)>> = BTreeMap::new();
    for member in holdout {
        if let Some(&now) = after.get(&member.item_id) {
            groups
                .entry(member.cluster)
                .or_default()
                .push((member.correct, now));
        }
    }
    groups
        .into_iter()
        .map(|(cluster, pairs)| {
            let n = pairs.len();
            let failed = |correct: bool| if correct { 0.0 } else { 1.0 };
            let before = pairs.iter().map(|p| failed(p.0)).sum::<f64>() / n as f64;
            let after_rate = pairs.iter().map(|p| failed(p.1)).sum::<f64>() / n as f64;
            let fixed = pairs.iter().filter(|p| !p.0 && p.1).count();
            let broken = pairs.iter().filter(|p| p.0 && !p.1).count();
            let differences: Vec<f64> = pairs.iter().map(|p| failed(p.1) - failed(p.0)).collect();
            PatternOutcome {
                cluster,
                label: cluster.map_or_else(|| "other (no pattern)".to_string(), names),
                targeted: cluster.is_some_and(targeted),
                items: n,
                failure_rate_before: before,
                failure_rate_after: after_rate,
                fixed,
                broken,
                mcnemar_p: mcnemar_exact(fixed, broken),
                difference_ci95: bootstrap_ci95(&differences, 1000, seed),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_tail() {
        // b=0, c=6: 2 * 0.5^6 = 0.03125 (scipy.stats.binomtest(0, 6).pvalue).
        assert!((mcnemar_exact(0, 6) - 0.03125).abs() < 1e-12);
        // b=2, c=8: 2 * P(X <= 2 | n=10) = 2 * 56/1024 = 0.109375.
        assert!((mcnemar_exact(2, 8) - 0.109375).abs() < 1e-12);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // Large n stays finite and symmetric.
        let p = mcnemar_exact(400, 600);
        assert!(p > 0.0 && p < 1e-9, "{p}");
        assert_eq!(mcnemar_exact(600, 400), p);
    }

    #[test]
    fn outcomes_pair_items_per_pattern() {
        let member = |id: &str, cluster: Option<usize>, correct: bool| HoldoutMembership {
            item_id: id.into(),
            family: "f".into(),
            cluster,
            distance: 0.1,
            correct,
        };
        let holdout = vec![
            member("a", Some(0), false),
            member("b", Some(0), false),
            member("c", Some(0), true),
            member("d", None, true),
            member("e", Some(1), true),
        ];
        let after = BTreeMap::from([
            ("a".to_string(), true),
            ("b".to_string(), false),
            ("c".to_string(), true),
            ("d".to_string(), false),
        ]);
        let outcomes = pattern_outcomes(&holdout, &after, &|c| format!("p{c}"), &|c| c == 0, 1);
        assert_eq!(
            outcomes.len(),
            2,
            "cluster 1's only item was not graded after"
        );
        let other = &outcomes[0];
        assert_eq!(
            (other.cluster, other.broken, other.targeted),
            (None, 1, false)
        );
        let zero = &outcomes[1];
        assert_eq!(zero.label, "p0");
        assert!(zero.targeted);
        assert_eq!((zero.items, zero.fixed, zero.broken), (3, 1, 0));
        assert!((zero.failure_rate_before - 2.0 / 3.0).abs() < 1e-12);
        assert!((zero.failure_rate_after - 1.0 / 3.0).abs() < 1e-12);
        assert!(zero.difference_ci95[0] <= -1.0 / 3.0 && zero.difference_ci95[1] <= 0.0);
    }
}
