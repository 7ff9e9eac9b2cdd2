//! stats.rs against numpy: tools/golden/benchmarks_stats.py wrote tests/golden/stats.json.

use benchmarks::stats::{bootstrap_ci95, mean, pass_at_k, standard_error};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1.0)
}

#[test]
fn mean_stderr_bootstrap_and_pass_at_k_match_numpy() {
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("golden/stats.json")).expect("golden JSON");
    let summaries = golden["summaries"].as_array().unwrap();
    assert!(summaries.len() >= 8);
    for case in summaries {
        let values: Vec<f64> = serde_json::from_value(case["values"].clone()).unwrap();
        let seed = case["seed"].as_u64().unwrap();
        let resamples = case["resamples"].as_u64().unwrap() as usize;
        let name = format!("{} seed {seed}", case["name"]);
        assert!(
            close(mean(&values), case["mean"].as_f64().unwrap()),
            "{name} mean"
        );
        assert!(
            close(standard_error(&values), case["stderr"].as_f64().unwrap()),
            "{name} stderr"
        );
        let ci = bootstrap_ci95(&values, resamples, seed);
        let expected: Vec<f64> = serde_json::from_value(case["ci95"].clone()).unwrap();
        assert!(
            close(ci[0], expected[0]) && close(ci[1], expected[1]),
            "{name}: {ci:?} vs {expected:?}"
        );
        assert!(ci[0] < ci[1], "{name}: a real interval");
    }
    for case in golden["pass_at_k"].as_array().unwrap() {
        let (n, c, k) = (
            case["n"].as_u64().unwrap() as usize,
            case["c"].as_u64().unwrap() as usize,
            case["k"].as_u64().unwrap() as usize,
        );
        let expected = case["pass_at_k"].as_f64().unwrap();
        assert!(
            close(pass_at_k(n, c, k), expected),
            "pass@{k} n={n} c={c}: {} vs {expected}",
            pass_at_k(n, c, k)
        );
    }
}
