//! What every phase's entry point shares: a TOML configuration read from a file or an embedded
//! default, with `--set section.field=value` overrides applied before it is checked against the
//! phase's typed config (so a typo in an override is caught like a typo in the file).
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Train { max_steps: usize }
//! #[derive(serde::Deserialize)]
//! struct Config { train: Train }
//!
//! let config: Config = pipeline::parse_config("[train]\nmax_steps = 40\n", "x.toml", &["train.max_steps=2".into()])?;
//! assert_eq!(config.train.max_steps, 2);
//! # Ok::<(), pipeline::Error>(())
//! ```

pub mod manifest;
pub mod report;

use std::path::Path;

use serde::de::DeserializeOwned;

/// The model a phase loads, as every phase's config names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF model directory or `.gguf` file.
    pub path: std::path::PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// `f32` or `bf16` (default: f32 on the CPU, bf16 on a GPU).
    #[serde(default)]
    pub precision: Option<String>,
}

fn cpu() -> String {
    "cpu".into()
}

/// A configuration that cannot be read, parsed or overridden.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file (after overrides) is not valid TOML for the phase's config; the message names
    /// the field.
    #[error("{origin}: invalid config: {message}")]
    Invalid { origin: String, message: String },
    #[error("--set {assignment}: {message}")]
    Override { assignment: String, message: String },
    /// A stage manifest that cannot be read or written.
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise: every binary's first line.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Parses `text` (from `origin`, named in errors) after applying `overrides`.
pub fn parse_config<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    overrides: &[String],
) -> Result<T> {
    let invalid = |message: String| Error::Invalid {
        origin: origin.to_string(),
        message,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    for assignment in overrides {
        apply_override(&mut table, assignment)?;
    }
    table
        .try_into()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))
}

/// `overlay` written over `base`: tables merge key by key, any other value (arrays included)
/// replaces the base's. How a loop config's `[phase1b]` table overrides that phase's defaults.
pub fn merge_tables(base: &mut toml::Table, overlay: &toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(overlay)) => {
                merge_tables(base, overlay)
            }
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Reads and parses a config file after applying `overrides`.
pub fn load_config<T: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_config(&text, &path.display().to_string(), overrides)
}

/// Sets `a.b.c` in `table` from `a.b.c=value`, the value read as TOML (`2`, `true`,
/// `["mmlu"]`, `"text"`) or, when it is not TOML, as a bare string. Missing sections are created.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let fail = |message: &str| Error::Override {
        assignment: assignment.to_string(),
        message: message.to_string(),
    };
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| fail("expected KEY=VALUE, e.g. train.max_steps=2"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut parsed| parsed.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut path: Vec<&str> = key.trim().split('.').collect();
    let last = path
        .pop()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| fail("empty key"))?;
    let mut current = table;
    for section in path {
        current = current
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| fail(&format!("`{section}` is not a section")))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn merging_overrides_leaves_and_keeps_the_rest() {
        let mut base: toml::Table =
            toml::from_str("a = 1\n[s]\nx = 1\ny = [1, 2]\n[s.t]\nz = 1\n").unwrap();
        let overlay: toml::Table = toml::from_str("[s]\ny = [3]\n[s.t]\nw = 2\n").unwrap();
        super::merge_tables(&mut base, &overlay);
        let expected: toml::Table =
            toml::from_str("a = 1\n[s]\nx = 1\ny = [3]\n[s.t]\nz = 1\nw = 2\n").unwrap();
        assert_eq!(base, expected);
    }

    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Validate {
        benchmarks: Vec<String>,
        limit: Option<usize>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        run_dir: String,
        validate: Validate,
    }

    const TEXT: &str = "run_dir = \"runs/x\"\n[validate]\nbenchmarks = [\"mmlu\", \"gsm8k\"]\n";

    #[test]
    fn overrides_set_typed_values_and_create_sections() {
        let config: Config = parse_config(
            TEXT,
            "x.toml",
            &[
                "validate.benchmarks=[\"mmlu\"]".into(),
                "validate.limit=3".into(),
                "run_dir=elsewhere/run".into(),
            ],
        )
        .unwrap();
        assert_eq!(config.validate.benchmarks, ["mmlu"]);
        assert_eq!(config.validate.limit, Some(3));
        assert_eq!(config.run_dir, "elsewhere/run");
    }

    #[test]
    fn a_bad_override_is_named() {
        let error = parse_config::<Config>(TEXT, "x.toml", &["validate.limt=3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.toml") && error.contains("limt"),
            "{error}"
        );
        let error = parse_config::<Config>(TEXT, "x.toml", &["validate".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("KEY=VALUE"), "{error}");
        let error = parse_config::<Config>(TEXT, "x.toml", &["run_dir.x=1".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`run_dir` is not a section"), "{error}");
        let error = load_config::<Config>(Path::new("no/such.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("no/such.toml"), "{error}");
    }
}
