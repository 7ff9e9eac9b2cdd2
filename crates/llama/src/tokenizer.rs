//! The model's tokenizer: an HF `tokenizers::Tokenizer` plus what `tokenizer_config.json`
//! adds (special tokens, chat template), loadable from an HF directory or rebuilt from GGUF
//! metadata, and savable as an HF directory that `AutoTokenizer` opens.
//!
//! ```no_run
//! let model = llama::GgufModel::open("assets/smollm2-135m-instruct.Q4_1.gguf")?;
//! let tokenizer = llama::Tokenizer::from_gguf(&model)?;
//! let ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", false)?;
//! assert_eq!(tokenizer.decode(&ids, false)?, "<|im_start|>user\nHi<|im_end|>");
//! assert_eq!(tokenizer.eos_token_ids(), [2]);
//! # Ok::<(), llama::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::chat_template::{ChatTemplate, RenderedConversation};
use crate::gguf::GgufModel;
use crate::{Error, Result};

/// `tokenizer.ggml.token_type` value of control (special) tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// `tokenizer.ggml.token_type` value of user-defined added tokens (matched whole, not special).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's pre-tokenizer split (llama.cpp's `llama-bpe`, HF's Llama 3 tokenizer.json).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
    /// Every id that ends generation: `eos_token` plus `generation_config.json`'s `eos_token_id`.
    eos_token_ids: Vec<u32>,
    add_bos_token: Option<bool>,
    chat_template: Option<String>,
    model_max_length: Option<u64>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tokenizer_error(context: impl std::fmt::Display, error: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {error}"))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A special token in `tokenizer_config.json`: a string, or an object with `content`.
fn special_token_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(object) => object.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// GPT-2's reversible byte -> printable character map (`bytes_to_unicode`).
fn byte_level_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next_free = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[byte as usize] = if printable {
            char::from(byte)
        } else {
            let c = char::from_u32(next_free).expect("valid char");
            next_free += 1;
            c
        };
    }
    map
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` and
    /// `generation_config.json` from an HF model directory.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(Error::Tokenizer(format!(
                "{} does not exist",
                tokenizer_path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| tokenizer_error(tokenizer_path.display(), e))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            json!({})
        };
        let field = |name: &str| special_token_string(config.get(name));
        let chat_template = match config.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(template)) => Some(template.clone()),
            // Named templates ([{name, template}]): the default one is what HF applies.
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(other) => {
                return Err(Error::Tokenizer(format!(
                    "{}: chat_template is neither a string nor a list of named templates: {other}",
                    config_path.display()
                )));
            }
        };
        // Newer HF exports keep the template in its own file.
        let chat_template = match chat_template {
            Some(t) => Some(t),
            None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    Some(std::fs::read_to_string(&jinja).map_err(|source| Error::Io {
                        path: jinja,
                        source,
                    })?)
                } else {
                    None
                }
            }
        };
        let mut tokenizer = Tokenizer {
            inner,
            bos_token: field("bos_token"),
            eos_token: field("eos_token"),
            pad_token: field("pad_token"),
            unk_token: field("unk_token"),
            eos_token_ids: Vec::new(),
            add_bos_token: config.get("add_bos_token").and_then(Value::as_bool),
            chat_template,
            model_max_length: config.get("model_max_length").and_then(Value::as_u64),
        };
        if let Some(eos) = &tokenizer.eos_token {
            let id = tokenizer.token_to_id(eos).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{}: eos_token `{eos}` is not in the vocabulary",
                    config_path.display()
                ))
            })?;
            tokenizer.eos_token_ids.push(id);
        }
        let generation_path = dir.join("generation_config.json");
        if generation_path.is_file() {
            let generation = read_json(&generation_path)?;
            let ids: Vec<u32> = match generation.get("eos_token_id") {
                Some(Value::Number(n)) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
                Some(Value::Array(ids)) => ids
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|id| id as u32)
                    .collect(),
                _ => Vec::new(),
            };
            for id in ids {
                if !tokenizer.eos_token_ids.contains(&id) {
                    tokenizer.eos_token_ids.push(id);
                }
            }
        }
        Ok(tokenizer)
    }

    /// Rebuilds the tokenizer a GGUF describes. Supports llama.cpp's `gpt2` model (byte-level
    /// BPE) with the `smollm`, `gpt2`/`default` and `llama-bpe`/`llama3` pre-tokenizers.
    pub fn from_gguf(model: &GgufModel) -> Result<Self> {
        let file = model.file();
        let path = file.path().display().to_string();
        let kind = file
            .optional_str("tokenizer.ggml.model")?
            .unwrap_or("(missing)");
        if kind != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "{path}: tokenizer.ggml.model is `{kind}`; only `gpt2` (byte-level BPE) is supported"
            )));
        }
        let pre = file
            .optional_str("tokenizer.ggml.pre")?
            .unwrap_or("default");
        let pre_tokenizer = match pre {
            // SmolLM: every digit its own piece, then GPT-2's byte-level split.
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            ]}),
            "gpt2" | "default" => {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
            }
            "llama-bpe" | "llama3" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ]}),
            other => {
                return Err(Error::Tokenizer(format!(
                    "{path}: tokenizer.ggml.pre `{other}` is not supported (supported: smollm, gpt2, default, llama-bpe)"
                )));
            }
        };

        let tokens = model.tokens()?;
        let token_types = model.token_types()?.unwrap_or_default();
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(Error::Tokenizer(format!(
                "{path}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                token_types.len(),
                tokens.len()
            )));
        }
        let alphabet = byte_level_alphabet();
        let in_alphabet = |token: &str| token.chars().all(|c| alphabet.contains(&c));
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added_tokens = Vec::new();
        for (id, &token) in tokens.iter().enumerate() {
            let token_type = token_types.get(id).copied().unwrap_or(1);
            // Tokens are stored in the byte-level spelling; respell any that are not.
            let spelled = if in_alphabet(token) {
                token.to_string()
            } else {
                token.bytes().map(|b| alphabet[b as usize]).collect()
            };
            if (token_type == TOKEN_TYPE_CONTROL || token_type == TOKEN_TYPE_USER_DEFINED)
                && in_alphabet(token)
            {
                added_tokens.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": token_type == TOKEN_TYPE_CONTROL,
                }));
            }
            vocab.insert(spelled, json!(id));
        }
        let merges: Vec<Value> = model
            .merges()?
            .iter()
            .map(|merge| {
                let (left, right) = merge.split_once(' ').ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "{path}: merge `{merge}` is not two space-separated tokens"
                    ))
                })?;
                Ok(json!([left, right]))
            })
            .collect::<Result<_>>()?;

        let token_at = |key: &str| -> Result<Option<String>> {
            Ok(file
                .optional_u64(&format!("tokenizer.ggml.{key}"))?
                .and_then(|id| tokens.get(id as usize))
                .map(|t| t.to_string()))
        };
        let bos_token = token_at("bos_token_id")?;
        let add_bos_token = file.optional_bool("tokenizer.ggml.add_bos_token")?;
        let post_processor = match (&bos_token, add_bos_token) {
            (Some(bos), Some(true)) => {
                let bos_id = tokens
                    .iter()
                    .position(|t| *t == bos.as_str())
                    .expect("bos from the vocabulary");
                let mut special_tokens = serde_json::Map::new();
                special_tokens.insert(
                    bos.clone(),
                    json!({"id": bos, "ids": [bos_id], "tokens": [bos]}),
                );
                json!({
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": special_tokens,
                })
            }
            _ => {
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
            }
        };
        let tokenizer_json = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        });
        let bytes = serde_json::to_vec(&tokenizer_json).expect("json serialises");
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| tokenizer_error(&path, e))?;

        let eos_token = token_at("eos_token_id")?;
        let eos_token_ids = file
            .optional_u64("tokenizer.ggml.eos_token_id")?
            .map(|id| vec![id as u32])
            .unwrap_or_default();
        Ok(Tokenizer {
            inner,
            bos_token,
            eos_token,
            pad_token: token_at("padding_token_id")?,
            unk_token: token_at("unknown_token_id")?,
            eos_token_ids,
            add_bos_token: Some(add_bos_token.unwrap_or(false)),
            chat_template: model.chat_template()?.map(str::to_string),
            model_max_length: file.optional_u64("llama.context_length")?,
        })
    }

    /// Token ids of `text`. `add_special_tokens` applies the post-processor (e.g. Llama 3's BOS);
    /// special tokens written in the text are always matched whole.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| tokenizer_error("encode", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of a rendered conversation and, per token, whether it belongs to an assistant reply
    /// (for loss masks). A token counts as assistant when its first byte lies inside an assistant span.
    /// Special tokens are matched whole and nothing is prepended (the template already wrote BOS).
    pub fn encode_with_assistant_mask(
        &self,
        rendered: &RenderedConversation,
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let encoding = self
            .inner
            .encode(rendered.text.as_str(), false)
            .map_err(|e| tokenizer_error("encode", e))?;
        let mask = encoding
            .get_offsets()
            .iter()
            .map(|&(start, _)| {
                rendered
                    .assistant_spans
                    .iter()
                    .any(|span| span.contains(&start))
            })
            .collect();
        Ok((encoding.get_ids().to_vec(), mask))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tokenizer_error("decode", e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Every token id's bytes as they enter the text (`None` for special tokens, which are not
    /// text), for matching tokens against a grammar while decoding. Byte-level BPE only (GPT-2's
    /// printable alphabet mapped back to bytes): that is every tokenizer this crate loads from a
    /// GGUF, and Llama 3's and SmolLM2's; another kind is an error rather than a wrong guess.
    pub fn token_bytes(&self) -> Result<Vec<Option<Vec<u8>>>> {
        let byte_level = matches!(
            self.inner.get_decoder(),
            Some(tokenizers::decoders::DecoderWrapper::ByteLevel(_))
        );
        if !byte_level {
            return Err(Error::Tokenizer(
                "token bytes are known for byte-level BPE tokenizers only (the decoder is not ByteLevel)"
                    .into(),
            ));
        }
        let alphabet = byte_level_alphabet();
        let mut byte_of = std::collections::HashMap::with_capacity(256);
        for (byte, c) in alphabet.iter().enumerate() {
            byte_of.insert(*c, byte as u8);
        }
        let added = self.inner.get_added_tokens_decoder();
        Ok((0..self.vocab_size() as u32)
            .map(|id| match added.get(&id) {
                Some(token) if token.special => None,
                // A non-special added token is inserted as its text.
                Some(token) => Some(token.content.as_bytes().to_vec()),
                None => self
                    .inner
                    .id_to_token(id)?
                    .chars()
                    .map(|c| byte_of.get(&c).copied())
                    .collect(),
            })
            .collect())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The pad id: `pad_token`, else the first eos id (what HF generation falls back to).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token
            .as_deref()
            .and_then(|t| self.token_to_id(t))
            .or_else(|| self.eos_token_ids.first().copied())
    }

    /// Ids that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The chat template compiled with this tokenizer's bos/eos strings; `None` if there is none.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        self.chat_template
            .as_deref()
            .map(|source| {
                ChatTemplate::new(
                    source,
                    self.bos_token.clone().unwrap_or_default(),
                    self.eos_token.clone().unwrap_or_default(),
                )
            })
            .transpose()
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// `tokenizer.json` text.
    pub fn tokenizer_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| tokenizer_error("serialising tokenizer.json", e))
    }

    /// `tokenizer_config.json` as HF writes it, read by `AutoTokenizer` (as a fast tokenizer
    /// backed by `tokenizer.json`, so the pipeline above is used exactly).
    pub fn tokenizer_config_json(&self) -> Value {
        let added: BTreeMap<u32, tokenizers::AddedToken> =
            self.inner.get_added_tokens_decoder().into_iter().collect();
        let added_tokens_decoder: serde_json::Map<String, Value> = added
            .iter()
            .map(|(id, token)| {
                (
                    id.to_string(),
                    json!({
                        "content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                        "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special,
                    }),
                )
            })
            .collect();
        let named: Vec<&str> = [
            &self.bos_token,
            &self.eos_token,
            &self.pad_token,
            &self.unk_token,
        ]
        .into_iter()
        .filter_map(|t| t.as_deref())
        .collect();
        let additional_special_tokens: Vec<&str> = added
            .values()
            .filter(|t| t.special && !named.contains(&t.content.as_str()))
            .map(|t| t.content.as_str())
            .collect();
        let mut config = json!({
            "added_tokens_decoder": added_tokens_decoder,
            "additional_special_tokens": additional_special_tokens,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
            "model_max_length": self.model_max_length,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let object = config.as_object_mut().expect("object");
        if let Some(add_bos) = self.add_bos_token {
            object.insert("add_bos_token".into(), json!(add_bos));
        }
        object.retain(|_, v| !v.is_null());
        config
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (each atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::export::write_file_atomically(
            &dir.join("tokenizer.json"),
            self.tokenizer_json()?.as_bytes(),
        )?;
        let config =
            serde_json::to_string_pretty(&self.tokenizer_config_json()).expect("json serialises");
        crate::export::write_file_atomically(&dir.join("tokenizer_config.json"), config.as_bytes())
    }
}
