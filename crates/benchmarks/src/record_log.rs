//! Per-item records appended as items finish, so a crash loses at most the item in flight, and
//! a rerun skips what is already scored.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use records::eval::EvalRecord;

use crate::error::{Error, Result};

/// An append-only JSONL file of [`EvalRecord`]s plus a sidecar with the options that made them.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    file: std::fs::File,
    done: HashMap<String, EvalRecord>,
    /// Whether a torn last line was dropped on open (it will be recomputed).
    pub dropped_torn_line: bool,
}

impl RecordLog {
    /// Opens (or creates) `path`. `config` holds the options that change per-item results
    /// (protocol, shots, sampling); a log written with other options is refused rather than
    /// silently mixed. A last line without its newline is the trace of a crash mid-write: it is
    /// truncated away and logged.
    pub fn open(path: &Path, config: &serde_json::Value) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let config_path = path.with_extension("config.json");
        match std::fs::read_to_string(&config_path) {
            Ok(text) => {
                let previous: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::MalformedRecord {
                        path: config_path.clone(),
                        line: e.line(),
                        message: e.to_string(),
                    })?;
                if &previous != config {
                    return Err(Error::ConfigMismatch {
                        path: path.to_path_buf(),
                        differences: describe_differences(&previous, config),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                records::jsonl::write_atomic(
                    &config_path,
                    &serde_json::to_vec_pretty(config).expect("JSON value"),
                )?;
            }
            Err(e) => return Err(Error::io(&config_path, e)),
        }

        let existing = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let complete = existing
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let dropped_torn_line = complete < existing.len();
        if dropped_torn_line {
            tracing::warn!(
                "{}: dropping a torn last line ({} bytes) left by an interrupted run; that item will be recomputed",
                path.display(),
                existing.len() - complete
            );
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            file.set_len(complete as u64)
                .map_err(|e| Error::io(path, e))?;
        }
        let mut done = HashMap::new();
        let text = String::from_utf8_lossy(&existing[..complete]);
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: EvalRecord =
                serde_json::from_str(line).map_err(|e| Error::MalformedRecord {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: e.to_string(),
                })?;
            done.insert(record.item_id.clone(), record);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            done,
            dropped_torn_line,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, item_id: &str) -> Option<&EvalRecord> {
        self.done.get(item_id)
    }

    pub fn contains(&self, item_id: &str) -> bool {
        self.done.contains_key(item_id)
    }

    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    /// Appends one record as a single write of one line, flushed before returning.
    pub fn append(&mut self, record: EvalRecord) -> Result<()> {
        let mut line = serde_json::to_vec(&record).expect("records serialise");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        self.done.insert(record.item_id.clone(), record);
        Ok(())
    }
}

fn describe_differences(previous: &serde_json::Value, now: &serde_json::Value) -> String {
    match (previous.as_object(), now.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    let show = |v: Option<&serde_json::Value>| {
                        v.map_or("absent".to_string(), |v| v.to_string())
                    };
                    format!("{k}: was {}, now {}", show(a.get(k)), show(b.get(k)))
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        _ => format!("was {previous}, now {now}"),
    }
}
