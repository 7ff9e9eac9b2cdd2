//! The stage manifest of a multi-stage run (`manifest.json`): for each stage the content hash of
//! its inputs, the content hashes of the outputs it wrote, its status and its times.
//!
//! A stage is reused only when it finished, its inputs hash is the one recorded, and every
//! output it recorded still has the recorded hash: an output edited or deleted by hand makes
//! the stage run again ([`Freshness::OutputChanged`]), never a silent reuse. The file is
//! rewritten atomically after every change, so a kill leaves the last consistent state
//! (a stage killed mid-run stays `running`, which [`Manifest::freshness`] reports as
//! interrupted).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Running,
    Done,
    Failed,
}

/// One stage's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub status: StageStatus,
    /// sha256 over the stage's typed config and the hashes of everything it reads.
    pub inputs_sha256: String,
    /// What the inputs hash covers, for a person reading the manifest.
    pub inputs: BTreeMap<String, String>,
    /// Output path (relative to the run directory) → sha256 of the file or directory tree.
    pub outputs: BTreeMap<String, String>,
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

/// Whether a stage's recorded result can be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Done, same inputs, every output unchanged.
    Fresh,
    /// Never started in this run directory.
    NotRun,
    /// Started and never finished (killed): its own resume state continues it.
    Interrupted,
    Failed(String),
    InputsChanged,
    /// An output was edited, replaced or deleted since the stage wrote it.
    OutputChanged(String),
}

/// The manifest file and its stages.
#[derive(Clone, Debug)]
pub struct Manifest {
    path: PathBuf,
    root: PathBuf,
    stages: BTreeMap<String, StageRecord>,
}

#[derive(Serialize, Deserialize)]
struct ManifestFile {
    stages: BTreeMap<String, StageRecord>,
}

impl Manifest {
    /// Reads `root/manifest.json`, or starts an empty manifest when there is none; a file that
    /// does not parse is an error naming it (never silently started over).
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join("manifest.json");
        let stages = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<ManifestFile>(&text)
                    .map_err(|error| Error::Manifest {
                        path: path.display().to_string(),
                        message: error.to_string(),
                    })?
                    .stages
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(Error::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Ok(Self {
            path,
            root: root.to_path_buf(),
            stages,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.get(name)
    }

    pub fn stages(&self) -> &BTreeMap<String, StageRecord> {
        &self.stages
    }

    /// Whether `stage` can be reused for inputs hashing to `inputs_sha256` (re-hashes its
    /// recorded outputs).
    pub fn freshness(&self, stage: &str, inputs_sha256: &str) -> Result<Freshness> {
        let Some(record) = self.stages.get(stage) else {
            return Ok(Freshness::NotRun);
        };
        // Changed inputs first: a killed stage is continued only with the inputs it began with.
        if record.inputs_sha256 != inputs_sha256 {
            return Ok(Freshness::InputsChanged);
        }
        match record.status {
            StageStatus::Running => return Ok(Freshness::Interrupted),
            StageStatus::Failed => {
                return Ok(Freshness::Failed(record.error.clone().unwrap_or_default()));
            }
            StageStatus::Done => {}
        }
        for (output, recorded) in &record.outputs {
            let path = self.root.join(output);
            if !path.exists() || sha256_path(&path)? != *recorded {
                return Ok(Freshness::OutputChanged(output.clone()));
            }
        }
        Ok(Freshness::Fresh)
    }

    /// Records that `stage` starts with these inputs (status `running`).
    pub fn begin(&mut self, stage: &str, inputs: BTreeMap<String, String>) -> Result<()> {
        let inputs_sha256 = sha256_json(&inputs);
        self.stages.insert(
            stage.to_string(),
            StageRecord {
                status: StageStatus::Running,
                inputs_sha256,
                inputs,
                outputs: BTreeMap::new(),
                started_unix_ms: unix_ms(),
                ended_unix_ms: None,
                seconds: None,
                error: None,
            },
        );
        self.save()
    }

    /// Records that `stage` finished and hashes `outputs` (paths under the run directory).
    pub fn finish(&mut self, stage: &str, outputs: &[PathBuf]) -> Result<()> {
        let mut hashed = BTreeMap::new();
        for output in outputs {
            let relative = output.strip_prefix(&self.root).unwrap_or(output);
            hashed.insert(
                relative.to_string_lossy().into_owned(),
                sha256_path(output)?,
            );
        }
        let record = self.record_mut(stage)?;
        record.status = StageStatus::Done;
        record.outputs = hashed;
        Self::close(record);
        self.save()
    }

    /// Records that `stage` failed with `error`.
    pub fn fail(&mut self, stage: &str, error: &str) -> Result<()> {
        let record = self.record_mut(stage)?;
        record.status = StageStatus::Failed;
        record.error = Some(error.to_string());
        Self::close(record);
        self.save()
    }

    /// The hash recorded for one output of a finished stage.
    pub fn output_sha256(&self, stage: &str, output: &str) -> Option<&str> {
        self.stages
            .get(stage)
            .and_then(|record| record.outputs.get(output))
            .map(String::as_str)
    }

    fn record_mut(&mut self, stage: &str) -> Result<&mut StageRecord> {
        let path = self.path.display().to_string();
        self.stages.get_mut(stage).ok_or_else(|| Error::Manifest {
            path,
            message: format!("stage `{stage}` was never begun"),
        })
    }

    fn close(record: &mut StageRecord) {
        let ended = unix_ms();
        record.ended_unix_ms = Some(ended);
        record.seconds = Some(ended.saturating_sub(record.started_unix_ms) as f64 / 1000.0);
    }

    fn save(&self) -> Result<()> {
        let file = ManifestFile {
            stages: self.stages.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("the manifest serialises");
        json.push(b'\n');
        records::jsonl::write_atomic(&self.path, &json).map_err(|error| Error::Manifest {
            path: self.path.display().to_string(),
            message: error.to_string(),
        })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// sha256 of a value's JSON.
pub fn sha256_json(value: &impl Serialize) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(value).expect("the value serialises"),
    ))
}

/// sha256 of a file's bytes, or of a directory tree: every file's relative path and content
/// hash, in sorted order (so renaming, adding or editing any file changes it).
pub fn sha256_path(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(io)?;
    if !metadata.is_dir() {
        return sha256_file(path);
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut tree = Sha256::new();
    for relative in files {
        tree.update(relative.as_bytes());
        tree.update([0]);
        tree.update(sha256_file(&path.join(&relative))?.as_bytes());
        tree.update([b'\n']);
    }
    Ok(hex::encode(tree.finalize()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_type().map_err(io)?.is_dir() {
            collect_files(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root).expect("under the root");
            files.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("config".to_string(), value.to_string())])
    }

    #[test]
    fn a_stage_is_fresh_only_with_the_same_inputs_and_untouched_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut manifest = Manifest::open(root).unwrap();
        let key = sha256_json(&inputs("a"));
        assert_eq!(manifest.freshness("s", &key).unwrap(), Freshness::NotRun);
        manifest.begin("s", inputs("a")).unwrap();
        // Killed here: reopened, the stage reads as interrupted.
        let reopened = Manifest::open(root).unwrap();
        assert_eq!(
            reopened.freshness("s", &key).unwrap(),
            Freshness::Interrupted
        );

        std::fs::create_dir_all(root.join("out/sub")).unwrap();
        std::fs::write(root.join("out/sub/w.bin"), b"weights").unwrap();
        std::fs::write(root.join("result.jsonl"), b"{}\n").unwrap();
        manifest
            .finish("s", &[root.join("out"), root.join("result.jsonl")])
            .unwrap();
        let manifest = Manifest::open(root).unwrap();
        assert_eq!(manifest.freshness("s", &key).unwrap(), Freshness::Fresh);
        assert_eq!(
            manifest.freshness("s", &sha256_json(&inputs("b"))).unwrap(),
            Freshness::InputsChanged
        );
        assert!(manifest.output_sha256("s", "result.jsonl").is_some());

        // A file inside an output directory edited by hand.
        std::fs::write(root.join("out/sub/w.bin"), b"weightz").unwrap();
        assert_eq!(
            manifest.freshness("s", &key).unwrap(),
            Freshness::OutputChanged("out".into())
        );
        std::fs::write(root.join("out/sub/w.bin"), b"weights").unwrap();
        // A file added to it, or an output deleted.
        std::fs::write(root.join("out/extra"), b"").unwrap();
        assert_eq!(
            manifest.freshness("s", &key).unwrap(),
            Freshness::OutputChanged("out".into())
        );
        std::fs::remove_file(root.join("out/extra")).unwrap();
        std::fs::remove_file(root.join("result.jsonl")).unwrap();
        assert_eq!(
            manifest.freshness("s", &key).unwrap(),
            Freshness::OutputChanged("result.jsonl".into())
        );
    }

    #[test]
    fn failures_are_recorded_and_a_corrupt_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = Manifest::open(dir.path()).unwrap();
        manifest.begin("s", inputs("a")).unwrap();
        manifest.fail("s", "out of memory").unwrap();
        let manifest = Manifest::open(dir.path()).unwrap();
        assert_eq!(
            manifest.freshness("s", &sha256_json(&inputs("a"))).unwrap(),
            Freshness::Failed("out of memory".into())
        );
        assert!(manifest.stage("s").unwrap().seconds.is_some());
        std::fs::write(dir.path().join("manifest.json"), "{not json").unwrap();
        let error = Manifest::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("manifest.json"), "{error}");
    }
}
