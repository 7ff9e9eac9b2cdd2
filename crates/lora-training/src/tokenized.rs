//! The token cache: every example rendered through the model's chat template, tokenised in
//! parallel and written once to flat files (token ids, a trained-token mask, an index), then
//! memory-mapped. A 600K-example file is streamed through in chunks and never sits whole in
//! memory; training reads batches by index, so the order of an epoch is a pure function of the
//! seed and resuming needs no replay.
//!
//! The loss mask comes from the template itself: each assistant reply's bytes are found by
//! rendering conversation prefixes, and a token is trained when its first byte lies inside one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use llama::{ChatMessage, ChatTemplate, Tokenizer};
use memmap2::Mmap;
use rayon::prelude::*;
use records::jsonl::JsonlReader;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::DataConfig;
use crate::data::conversation;
use crate::{Error, Result, error::io_error};

/// Lines tokenised together in parallel.
const CHUNK_LINES: usize = 2048;

/// Token counts of one role across a split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleTokens {
    pub tokens: u64,
    pub trained: u64,
}

/// What the masking did, per split: written next to the cache and into the run's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaskingAudit {
    pub examples: u64,
    pub tokens: u64,
    pub trained_tokens: u64,
    /// Tokens per role of the message they fall in (`template` = text the template adds
    /// outside any message, such as a default system prompt).
    pub per_role: BTreeMap<String, RoleTokens>,
    /// Examples longer than `max_seq_len`, cut to it (their first tokens are kept).
    pub truncated: u64,
    /// Examples whose every trained token lay past `max_seq_len`: not used, and counted here.
    pub skipped_no_target_after_truncation: u64,
    pub longest_tokens: u64,
    /// The first example with its trained spans in `[[...]]`, to eyeball the mask.
    pub sample: String,
}

/// Where one example lives in the flat files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExampleSpan {
    pub offset: u64,
    pub len: u32,
    /// 1-based line of the source file.
    pub line: u32,
}

/// One split (train or eval) of a token cache, memory-mapped.
#[derive(Debug)]
pub struct TokenizedSplit {
    tokens: Option<Mmap>,
    trained: Option<Mmap>,
    index: Vec<ExampleSpan>,
}

impl TokenizedSplit {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn span(&self, example: usize) -> ExampleSpan {
        self.index[example]
    }

    pub fn lengths(&self) -> Vec<usize> {
        self.index.iter().map(|s| s.len as usize).collect()
    }

    /// Token ids of one example.
    pub fn tokens(&self, example: usize) -> Vec<u32> {
        let span = self.index[example];
        let bytes = self.tokens.as_deref().unwrap_or(&[]);
        let start = span.offset as usize * 4;
        bytes[start..start + span.len as usize * 4]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Per token, whether it is a training target.
    pub fn trained(&self, example: usize) -> Vec<bool> {
        let span = self.index[example];
        let bytes = self.trained.as_deref().unwrap_or(&[]);
        let start = span.offset as usize;
        bytes[start..start + span.len as usize]
            .iter()
            .map(|&b| b == 1)
            .collect()
    }

    fn open(dir: &Path, name: &str) -> Result<Self> {
        let index_path = dir.join(format!("{name}.index"));
        let raw = std::fs::read(&index_path).map_err(io_error(&index_path))?;
        if raw.len() % 16 != 0 {
            return Err(Error::InvalidFile {
                path: index_path,
                message: "truncated index".into(),
            });
        }
        let index: Vec<ExampleSpan> = raw
            .chunks_exact(16)
            .map(|c| ExampleSpan {
                offset: u64::from_le_bytes(c[0..8].try_into().expect("8 bytes")),
                len: u32::from_le_bytes(c[8..12].try_into().expect("4 bytes")),
                line: u32::from_le_bytes(c[12..16].try_into().expect("4 bytes")),
            })
            .collect();
        let map = |suffix: &str| -> Result<Option<Mmap>> {
            let path = dir.join(format!("{name}.{suffix}"));
            let file = File::open(&path).map_err(io_error(&path))?;
            if file.metadata().map_err(io_error(&path))?.len() == 0 {
                return Ok(None);
            }
            // SAFETY: the cache files are written once (temp file + rename) and never modified
            // in place; a concurrent writer would replace, not change, them.
            let map = unsafe { Mmap::map(&file) }.map_err(io_error(&path))?;
            Ok(Some(map))
        };
        let split = Self {
            tokens: map("tokens")?,
            trained: map("mask")?,
            index,
        };
        let total: u64 = split.index.iter().map(|s| s.len as u64).sum();
        let have = split.tokens.as_ref().map_or(0, |m| m.len() as u64);
        if have != total * 4 {
            return Err(Error::InvalidFile {
                path: dir.join(format!("{name}.tokens")),
                message: format!("holds {have} bytes, the index implies {}", total * 4),
            });
        }
        Ok(split)
    }
}

/// A built (or reused) token cache.
#[derive(Debug)]
pub struct TokenizedData {
    pub train: TokenizedSplit,
    pub eval: TokenizedSplit,
    pub meta: CacheMeta,
}

/// What a cache was built from: reused only when all of it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub fingerprint: String,
    pub train_audit: MaskingAudit,
    pub eval_audit: MaskingAudit,
    pub seconds: f64,
}

/// Renders and tokenises `config`'s data into `dir` (or reuses a cache there built from the
/// same files, tokenizer, template and settings).
pub fn tokenize_data(
    config: &DataConfig,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    dir: &Path,
) -> Result<TokenizedData> {
    let fingerprint = fingerprint(config, tokenizer)?;
    let meta_path = dir.join("meta.json");
    if let Ok(text) = std::fs::read_to_string(&meta_path)
        && let Ok(meta) = serde_json::from_str::<CacheMeta>(&text)
        && meta.fingerprint == fingerprint
    {
        tracing::info!("reusing the token cache in {}", dir.display());
        return Ok(TokenizedData {
            train: TokenizedSplit::open(dir, "train")?,
            eval: TokenizedSplit::open(dir, "eval")?,
            meta,
        });
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let started = Instant::now();
    let renderer = Renderer {
        tokenizer,
        template,
        max_seq_len: config.max_seq_len,
    };
    let mut train = SplitWriter::create(dir, "train")?;
    let mut eval = SplitWriter::create(dir, "eval")?;
    // Eval examples: the first `eval_examples` of a separate file, or of the training file
    // (deterministic and streaming-friendly; they are never trained on).
    let mut eval_from_train = if config.eval.is_some() {
        0
    } else {
        config.eval_examples
    };
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("tokenising {pos} examples ({per_sec}) {msg}")
            .expect("valid template"),
    );
    stream_file(&config.train, config, &renderer, |example| {
        progress.inc(1);
        if eval_from_train > 0 {
            eval_from_train -= 1;
            eval.push(example)
        } else {
            train.push(example)
        }
    })?;
    if let Some(eval_path) = &config.eval {
        // At most `eval_examples` of the eval file: the eval loss runs after training (and on
        // the base model), so its size is a cost a small run should be able to cap.
        let (mut room, mut left_out) = (config.eval_examples, 0usize);
        stream_file(eval_path, config, &renderer, |example| {
            if room == 0 {
                left_out += 1;
                return Ok(());
            }
            room -= 1;
            eval.push(example)
        })?;
        if left_out > 0 {
            tracing::info!(
                "eval loss on the first {} examples of {}: {left_out} more left out \
                 (data.eval_examples)",
                config.eval_examples,
                eval_path.display()
            );
        }
    }
    progress.finish_and_clear();
    if train.audit.examples == 0 {
        return Err(Error::InvalidFile {
            path: config.train.clone(),
            message: if eval.audit.examples > 0 {
                "every example went to the eval split: lower data.eval_examples or give data.eval"
                    .into()
            } else {
                "the dataset is empty (no usable examples)".into()
            },
        });
    }
    let meta = CacheMeta {
        fingerprint,
        train_audit: train.audit.clone(),
        eval_audit: eval.audit.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    train.finish()?;
    eval.finish()?;
    records::jsonl::write_atomic(
        &meta_path,
        serde_json::to_string_pretty(&meta)
            .expect("meta serialises")
            .as_bytes(),
    )?;
    tracing::info!(
        "tokenised {} train + {} eval examples in {:.1}s ({} truncated, {} skipped)",
        meta.train_audit.examples,
        meta.eval_audit.examples,
        meta.seconds,
        meta.train_audit.truncated,
        meta.train_audit.skipped_no_target_after_truncation
    );
    Ok(TokenizedData {
        train: TokenizedSplit::open(dir, "train")?,
        eval: TokenizedSplit::open(dir, "eval")?,
        meta,
    })
}

fn fingerprint(config: &DataConfig, tokenizer: &Tokenizer) -> Result<String> {
    let mut hasher = Sha256::new();
    for path in std::iter::once(&config.train).chain(config.eval.as_ref()) {
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(meta.len().to_le_bytes());
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hasher.update(modified.to_le_bytes());
    }
    hasher.update(serde_json::to_vec(config).expect("config serialises"));
    hasher.update(tokenizer.tokenizer_json()?.as_bytes());
    hasher.update(tokenizer.chat_template_source().unwrap_or("").as_bytes());
    Ok(hex::encode(hasher.finalize()))
}

/// One example after rendering and tokenisation.
#[derive(Debug)]
struct Tokenized {
    line: usize,
    tokens: Vec<u32>,
    trained: Vec<bool>,
    /// Per token, the role of the message it falls in.
    roles: Vec<Role>,
    truncated: bool,
    rendered: String,
    spans: Vec<std::ops::Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
    Template,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Template => "template",
        }
    }

    fn of(message: &ChatMessage) -> Role {
        match message.role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => Role::Template,
        }
    }
}

struct Renderer<'a> {
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    max_seq_len: usize,
}

impl Renderer<'_> {
    fn tokenize(&self, messages: &[ChatMessage]) -> std::result::Result<Tokenized, String> {
        let rendered = self
            .template
            .render_with_assistant_spans(messages, None)
            .map_err(|e| e.to_string())?;
        // Byte where each message starts: the end of the conversation before it.
        let mut starts = Vec::with_capacity(messages.len());
        for index in 0..messages.len() {
            let before = if index == 0 {
                String::new()
            } else {
                self.template
                    .render(&messages[..index], false)
                    .map_err(|e| e.to_string())?
            };
            starts.push(if rendered.text.starts_with(&before) {
                Some(before.len())
            } else {
                None
            });
        }
        let encoding = self
            .tokenizer
            .inner()
            .encode(rendered.text.as_str(), false)
            .map_err(|e| format!("tokenizer: {e}"))?;
        let mut tokens = encoding.get_ids().to_vec();
        let mut trained = Vec::with_capacity(tokens.len());
        let mut roles = Vec::with_capacity(tokens.len());
        for &(start, _) in encoding.get_offsets() {
            trained.push(rendered.assistant_spans.iter().any(|s| s.contains(&start)));
            let message = starts
                .iter()
                .rposition(|s| s.is_some_and(|s| s <= start))
                .filter(|&i| i > 0 || starts[0].is_some());
            roles.push(message.map_or(Role::Template, |i| Role::of(&messages[i])));
        }
        if !trained.contains(&true) {
            return Err(
                "the chat template leaves no assistant token to train on (zero trained tokens)"
                    .into(),
            );
        }
        if let Some(position) = trained
            .iter()
            .zip(&roles)
            .position(|(&t, &r)| t && r != Role::Assistant && r != Role::Template)
        {
            return Err(format!(
                "masking error: token {position} is trained but lies in a {} message",
                roles[position].name()
            ));
        }
        let truncated = tokens.len() > self.max_seq_len;
        if truncated {
            tokens.truncate(self.max_seq_len);
            trained.truncate(self.max_seq_len);
            roles.truncate(self.max_seq_len);
        }
        Ok(Tokenized {
            line: 0,
            tokens,
            trained,
            roles,
            truncated,
            rendered: rendered.text,
            spans: rendered.assistant_spans,
        })
    }
}

/// Streams `path` in chunks, tokenising each chunk in parallel and handing examples to `sink`
/// in file order. The first bad line (in file order) stops it with `file:line`.
fn stream_file(
    path: &PathBuf,
    config: &DataConfig,
    renderer: &Renderer<'_>,
    mut sink: impl FnMut(Tokenized) -> Result<()>,
) -> Result<()> {
    let mut reader = JsonlReader::<Value>::open(path)?;
    loop {
        let mut chunk: Vec<(usize, Value)> = Vec::with_capacity(CHUNK_LINES);
        while chunk.len() < CHUNK_LINES {
            match reader.next() {
                None => break,
                Some(record) => chunk.push((reader.line_number(), record?)),
            }
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let results: Vec<std::result::Result<Tokenized, (usize, String)>> = chunk
            .par_iter()
            .map(|(line, record)| {
                let messages = conversation(record, config.format, config.system_prompt.as_deref())
                    .map_err(|m| (*line, m))?;
                let mut example = renderer.tokenize(&messages).map_err(|m| (*line, m))?;
                example.line = *line;
                Ok(example)
            })
            .collect();
        for result in results {
            match result {
                Ok(example) => sink(example)?,
                Err((line, message)) => {
                    return Err(Error::InvalidExample {
                        path: path.clone(),
                        line,
                        message,
                    });
                }
            }
        }
        if chunk.len() < CHUNK_LINES {
            return Ok(());
        }
    }
}

struct SplitWriter {
    dir: PathBuf,
    name: &'static str,
    tokens: BufWriter<File>,
    trained: BufWriter<File>,
    index: BufWriter<File>,
    offset: u64,
    audit: MaskingAudit,
}

impl SplitWriter {
    fn staging(dir: &Path, name: &str, suffix: &str) -> PathBuf {
        dir.join(format!(".{name}.{suffix}.partial"))
    }

    fn create(dir: &Path, name: &'static str) -> Result<Self> {
        let open = |suffix: &str| -> Result<BufWriter<File>> {
            let path = Self::staging(dir, name, suffix);
            Ok(BufWriter::new(
                File::create(&path).map_err(io_error(&path))?,
            ))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            name,
            tokens: open("tokens")?,
            trained: open("mask")?,
            index: open("index")?,
            offset: 0,
            audit: MaskingAudit::default(),
        })
    }

    fn push(&mut self, example: Tokenized) -> Result<()> {
        let audit = &mut self.audit;
        if example.truncated {
            audit.truncated += 1;
        }
        if !example.trained.contains(&true) {
            audit.skipped_no_target_after_truncation += 1;
            return Ok(());
        }
        if audit.sample.is_empty() {
            audit.sample = marked_sample(&example.rendered, &example.spans);
        }
        audit.examples += 1;
        audit.tokens += example.tokens.len() as u64;
        audit.longest_tokens = audit.longest_tokens.max(example.tokens.len() as u64);
        for (&trained, role) in example.trained.iter().zip(&example.roles) {
            let entry = audit.per_role.entry(role.name().to_string()).or_default();
            entry.tokens += 1;
            if trained {
                entry.trained += 1;
                audit.trained_tokens += 1;
            }
        }
        let path = Self::staging(&self.dir, self.name, "tokens");
        let write = |writer: &mut BufWriter<File>, bytes: &[u8]| {
            writer.write_all(bytes).map_err(io_error(&path))
        };
        for token in &example.tokens {
            write(&mut self.tokens, &token.to_le_bytes())?;
        }
        let mask: Vec<u8> = example.trained.iter().map(|&t| t as u8).collect();
        write(&mut self.trained, &mask)?;
        let mut entry = [0u8; 16];
        entry[0..8].copy_from_slice(&self.offset.to_le_bytes());
        entry[8..12].copy_from_slice(&(example.tokens.len() as u32).to_le_bytes());
        entry[12..16].copy_from_slice(&(example.line as u32).to_le_bytes());
        write(&mut self.index, &entry)?;
        self.offset += example.tokens.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        for (writer, suffix) in [
            (self.tokens, "tokens"),
            (self.trained, "mask"),
            (self.index, "index"),
        ] {
            let staging = Self::staging(&self.dir, self.name, suffix);
            let file = writer
                .into_inner()
                .map_err(|e| io_error(&staging)(e.into_error()))?;
            file.sync_all().map_err(io_error(&staging))?;
            let target = self.dir.join(format!("{}.{suffix}", self.name));
            std::fs::rename(&staging, &target).map_err(io_error(&target))?;
        }
        Ok(())
    }
}

/// The rendered text with each trained span wrapped in `[[` `]]`.
fn marked_sample(text: &str, spans: &[std::ops::Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len() + 8 * spans.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push_str("[[");
        out.push_str(&text[span.clone()]);
        out.push_str("]]");
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}
