//! KMeans speed and quality against scikit-learn on the same data and machine.
//!
//! ```text
//! python3 tools/bench/make_kmeans_data.py /tmp/kmeans_bench
//! cargo bench -p clustering --bench kmeans -- --data /tmp/kmeans_bench/sphere_50000x384.npy \
//!     --k 10 --n-init 1,10 --sklearn
//! ```
//!
//! Prints a Markdown table: our time / iterations / inertia next to scikit-learn's (run through
//! tools/bench/kmeans_sklearn.py in the same invocation). Times are the best of `--repeat` fits
//! (seeds `seed..seed+repeat`), iterations and inertia their mean, and `z` the difference of the
//! two mean inertias in standard errors (|z| < 2: the seeds explain it);
//! restrict both to the same cores with `taskset` (rayon and OpenMP both follow the affinity mask).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clustering::{KMeans, KMeansConfig, Points};

struct Args {
    data: Vec<PathBuf>,
    ks: Vec<usize>,
    n_inits: Vec<usize>,
    repeat: usize,
    seed: u64,
    sklearn: bool,
    analysis: bool,
    python: String,
    script: PathBuf,
}

fn parse_list(value: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a number list: {value}"))
        })
        .collect()
}

fn parse_args() -> Args {
    let default_script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/bench/kmeans_sklearn.py");
    let mut args = Args {
        data: Vec::new(),
        ks: vec![10],
        n_inits: vec![1, 10],
        repeat: 1,
        seed: 0,
        sklearn: false,
        analysis: false,
        python: "python3".into(),
        script: if default_script.exists() {
            default_script
        } else {
            PathBuf::from("tools/bench/kmeans_sklearn.py")
        },
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = || {
            iter.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--data" => args.data.push(PathBuf::from(value())),
            "--k" => args.ks = parse_list(&value()),
            "--n-init" => args.n_inits = parse_list(&value()),
            "--repeat" => args.repeat = value().parse().expect("--repeat"),
            "--seed" => args.seed = value().parse().expect("--seed"),
            "--sklearn" => args.sklearn = true,
            "--analysis" => args.analysis = true,
            "--python" => args.python = value(),
            "--script" => args.script = PathBuf::from(value()),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    if args.data.is_empty() {
        // `cargo test --all-targets` runs this binary without arguments: nothing to measure.
        eprintln!(
            "kmeans bench: give at least one --data FILE.npy (tools/bench/make_kmeans_data.py makes them)"
        );
        std::process::exit(0);
    }
    args
}

/// Minimal .npy reader: little-endian f32, C order, 2-D.
fn read_npy(path: &Path) -> Points {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: need float32: {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: need C order",
        path.display()
    );
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert_eq!(dims.len(), 2, "{}: need a 2-D array", path.display());
    let payload = &bytes[header_start + header_len..];
    assert_eq!(payload.len(), dims[0] * dims[1] * 4);
    let data: Vec<f32> = payload
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Points::from_flat(data, dims[1]).expect("valid points")
}

struct Measurement {
    time_s: f64,
    n_iter: usize,
    /// Mean over the repeats.
    inertia: f64,
    /// Standard error of `inertia` (0 for one repeat).
    inertia_se: f64,
}

/// Mean and standard error of the mean.
fn mean_and_se(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt())
}

fn sklearn(args: &Args, data: &Path) -> Vec<(usize, usize, Measurement, String)> {
    let list = |values: &[usize]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    let output = Command::new(&args.python)
        .arg(&args.script)
        .arg(data)
        .arg("--k")
        .args(list(&args.ks))
        .arg("--n-init")
        .args(list(&args.n_inits))
        .args([
            "--repeat",
            &args.repeat.to_string(),
            "--seed",
            &args.seed.to_string(),
        ])
        .output()
        .expect("run the scikit-learn script");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["k"].as_u64().unwrap() as usize,
                v["n_init"].as_u64().unwrap() as usize,
                Measurement {
                    time_s: v["time_s"].as_f64().unwrap(),
                    n_iter: v["n_iter"].as_u64().unwrap() as usize,
                    inertia: v["inertia"].as_f64().unwrap(),
                    inertia_se: v["inertia_se"].as_f64().unwrap_or(0.0),
                },
                v["sklearn"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// Times the steps after fitting at the first k: sampled silhouette, bootstrap, PCA map.
fn time_analysis(points: &Points, k: usize) {
    use clustering::metrics::{SilhouetteConfig, silhouette_score};
    use clustering::report::cluster_map;
    use clustering::selection::{StabilityConfig, bootstrap_stability};
    let config = KMeansConfig {
        n_init: 1,
        ..KMeansConfig::new(k)
    };
    let model = KMeans::fit(points, &config).expect("fit");
    let start = Instant::now();
    let silhouette =
        silhouette_score(points, model.labels(), &SilhouetteConfig::default()).expect("silhouette");
    let silhouette_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let stability =
        bootstrap_stability(points, model.labels(), &config, &StabilityConfig::default())
            .expect("stability");
    let stability_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let map = cluster_map(points, &model, 3000);
    let map_s = start.elapsed().as_secs_f64();
    println!(
        "analysis k={k}: silhouette {:.4} on {} points in {silhouette_s:.3} s; bootstrap ARI mean {:.3} (10 × n_init 1) in {stability_s:.3} s; PCA map ({} points, {:.1}%+{:.1}% variance) in {map_s:.3} s",
        silhouette.score,
        silhouette.n_evaluated,
        stability.mean,
        map.points.len(),
        map.explained_variance_ratio[0] * 100.0,
        map.explained_variance_ratio[1] * 100.0
    );
}

fn main() {
    let args = parse_args();
    println!("threads: {} (rayon)", rayon::current_num_threads());
    println!(
        "| data | n×d | k | n_init | ours s | ours iter | ours inertia | sklearn s | sklearn iter | sklearn inertia | inertia ours/sk | z | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for data in &args.data {
        let points = read_npy(data);
        let reference = if args.sklearn {
            sklearn(&args, data)
        } else {
            Vec::new()
        };
        let name = data.file_stem().unwrap().to_string_lossy();
        for &k in &args.ks {
            for &n_init in &args.n_inits {
                let mut best: Option<Measurement> = None;
                let (mut inertias, mut iter_sum) = (Vec::new(), 0);
                for repeat in 0..args.repeat {
                    let config = KMeansConfig {
                        n_init,
                        seed: args.seed + repeat as u64,
                        ..KMeansConfig::new(k)
                    };
                    let start = Instant::now();
                    let model = KMeans::fit(&points, &config).expect("fit");
                    let time_s = start.elapsed().as_secs_f64();
                    inertias.push(model.inertia());
                    iter_sum += model.n_iter();
                    if best.as_ref().is_none_or(|b| time_s < b.time_s) {
                        best = Some(Measurement {
                            time_s,
                            n_iter: model.n_iter(),
                            inertia: model.inertia(),
                            inertia_se: 0.0,
                        });
                    }
                }
                // Best time; mean inertia and iterations over the repeats (seeds seed..seed+repeat).
                let (inertia, inertia_se) = mean_and_se(&inertias);
                let ours = Measurement {
                    time_s: best.unwrap().time_s,
                    n_iter: iter_sum / args.repeat,
                    inertia,
                    inertia_se,
                };
                let theirs = reference
                    .iter()
                    .find(|(rk, rn, _, _)| *rk == k && *rn == n_init);
                let (sk, ratio, z, speedup) = match theirs {
                    Some((_, _, m, version)) => {
                        let se = (ours.inertia_se.powi(2) + m.inertia_se.powi(2)).sqrt();
                        (
                            format!(
                                "{:.3} | {} | {:.6e} (sklearn {version})",
                                m.time_s, m.n_iter, m.inertia
                            ),
                            format!("{:.5}", ours.inertia / m.inertia),
                            if se > 0.0 {
                                format!("{:+.2}", (ours.inertia - m.inertia) / se)
                            } else {
                                "-".into()
                            },
                            format!("{:.2}×", m.time_s / ours.time_s),
                        )
                    }
                    None => ("- | - | -".into(), "-".into(), "-".into(), "-".into()),
                };
                println!(
                    "| {name} | {}×{} | {k} | {n_init} | {:.3} | {} | {:.6e} | {sk} | {ratio} | {z} | {speedup} |",
                    points.n_rows(),
                    points.dim(),
                    ours.time_s,
                    ours.n_iter,
                    ours.inertia
                );
            }
        }
        if args.analysis {
            time_analysis(&points, args.ks[0]);
        }
    }
}
