//! Naming clusters: the prompt and JSON schema an LLM labeller uses, tolerant parsing of its
//! answer, and a deterministic keyword-based fallback for offline runs.
//!
//! The LLM call itself lives behind [`ClusterLabeller`], implemented by the llm-client crate
//! (OpenAI-compatible API with JSON-schema output): it sends [`label_prompt`] with
//! [`label_json_schema`] and turns the reply into a label with [`parse_label_response`].

use std::future::Future;

use records::clusters::{ClusterLabel, ClusterRecord};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest name kept from a reply, in characters.
pub const MAX_NAME_CHARS: usize = 60;
/// Longest description kept from a reply, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 300;
/// `labelled_by` of labels made by [`KeywordFallbackLabeller`].
pub const KEYWORD_FALLBACK: &str = "keyword-fallback";

/// What a labeller is told about one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterDescription {
    pub cluster_id: usize,
    pub size: usize,
    pub share: f64,
    /// Top c-TF-IDF terms, best first.
    pub keywords: Vec<String>,
    /// Texts of the members nearest the centroid, nearest first (each cut to a length limit).
    pub representatives: Vec<String>,
    /// The other clusters, one line each (their keywords), so a labeller can name what sets this
    /// one apart rather than what all of them share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_clusters: Vec<String>,
}

impl ClusterDescription {
    /// Keeps at most `max_keywords` keywords and `max_representatives` examples of at most
    /// `max_chars` characters each, so prompts stay small whatever the inputs.
    pub fn from_record(
        record: &ClusterRecord,
        max_keywords: usize,
        max_representatives: usize,
        max_chars: usize,
    ) -> Self {
        Self {
            cluster_id: record.id,
            size: record.size,
            share: record.share,
            keywords: record
                .keywords
                .iter()
                .take(max_keywords)
                .map(|k| k.term.clone())
                .collect(),
            representatives: record
                .representatives
                .iter()
                .take(max_representatives)
                .map(|m| truncate_chars(&collapse_whitespace(&m.text), max_chars))
                .collect(),
            other_clusters: Vec::new(),
        }
    }
}

/// A system and a user message for a chat model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelPrompt {
    pub system: String,
    pub user: String,
}

/// Produces a name and description for a cluster. Implemented by the LLM client; see
/// [`KeywordFallbackLabeller`] for the offline stand-in.
pub trait ClusterLabeller {
    type Error: std::error::Error + Send + Sync + 'static;

    fn label(
        &self,
        description: &ClusterDescription,
    ) -> impl Future<Output = std::result::Result<ClusterLabel, Self::Error>> + Send;
}

/// The chat messages asking for a label of one cluster.
pub fn label_prompt(description: &ClusterDescription) -> LabelPrompt {
    let system = format!(
        "You name clusters of failed test items for an ML engineer. Reply with a JSON object \
         {{\"name\": ..., \"description\": ...}} only: \"name\" is a short noun phrase of at most \
         {} characters (e.g. \"Multi-step fraction arithmetic\"), \"description\" is one sentence \
         saying what the items have in common and what skill they test. Base both on the \
         keywords and examples; do not invent topics that are not there.",
        MAX_NAME_CHARS / 2
    );
    let mut user = format!(
        "Cluster {} has {} items ({:.1}% of all failures).\nKeywords (most distinctive first): {}\n\
         Representative items (closest to the cluster centre first):\n",
        description.cluster_id,
        description.size,
        description.share * 100.0,
        if description.keywords.is_empty() {
            "(none)".to_owned()
        } else {
            description.keywords.join(", ")
        },
    );
    for (index, text) in description.representatives.iter().enumerate() {
        user.push_str(&format!("{}. {}\n", index + 1, text));
    }
    if !description.other_clusters.is_empty() {
        user.push_str(
            "The other clusters, for contrast (name what sets this cluster apart from them):\n",
        );
        for line in &description.other_clusters {
            user.push_str(&format!("- {line}\n"));
        }
    }
    user.push_str("Answer with the JSON object only.");
    LabelPrompt { system, user }
}

/// JSON schema of the reply (usable as an OpenAI `response_format` json_schema with strict mode).
pub fn label_json_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": MAX_NAME_CHARS,
                "description": "Short noun phrase naming the cluster."
            },
            "description": {
                "type": "string",
                "maxLength": MAX_DESCRIPTION_CHARS,
                "description": "One sentence: what the items share and which skill they test."
            }
        },
        "required": ["name", "description"],
        "additionalProperties": false
    })
}

/// Parses a model's reply into a label, tolerating what models do around JSON: code fences,
/// `<think>` blocks, prose before or after the object, other key spellings (`title`, `label`,
/// `summary`, any case), a nested object, or plain `Name: … / Description: …` lines.
pub fn parse_label_response(response: &str, labelled_by: &str) -> Result<ClusterLabel> {
    let cleaned = strip_think_blocks(response);
    let (name, description) = json_fields(&cleaned)
        .or_else(|| line_fields(&cleaned))
        .ok_or_else(|| Error::LabelResponse {
            reason: "no JSON object with a name and no `Name:` line",
            excerpt: truncate_chars(response.trim(), 200),
        })?;
    let name = truncate_chars(
        collapse_whitespace(&name)
            .trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c.is_whitespace()),
        MAX_NAME_CHARS,
    );
    let description = truncate_chars(
        collapse_whitespace(&description).trim_matches(|c: char| c == '"' || c.is_whitespace()),
        MAX_DESCRIPTION_CHARS,
    );
    if name.is_empty() {
        return Err(Error::LabelResponse {
            reason: "the name is empty",
            excerpt: truncate_chars(response.trim(), 200),
        });
    }
    Ok(ClusterLabel {
        name,
        description,
        labelled_by: labelled_by.to_owned(),
    })
}

fn strip_think_blocks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => rest = &rest[start + end + "</think>".len()..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

const NAME_KEYS: &[&str] = &["name", "label", "title", "cluster_name", "topic"];
const DESCRIPTION_KEYS: &[&str] = &["description", "summary", "explanation", "desc"];

/// The first JSON object in `text` (balanced braces, strings respected) that yields a name.
fn json_fields(text: &str) -> Option<(String, String)> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(offset) = text[start..].find('{') {
        let open = start + offset;
        if let Some(close) = matching_brace(bytes, open)
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text[open..=close])
            && let Some(fields) = fields_from_value(&value, 0)
        {
            return Some(fields);
        }
        start = open + 1;
    }
    None
}

fn matching_brace(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (index, &byte) in bytes.iter().enumerate().skip(open) {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(index);
                }
            }
            _ => {}
        }
    }
    None
}

fn fields_from_value(value: &serde_json::Value, depth: usize) -> Option<(String, String)> {
    let object = value.as_object()?;
    let find = |keys: &[&str]| {
        object.iter().find_map(|(key, value)| {
            let key = key.to_lowercase();
            keys.contains(&key.as_str())
                .then(|| value.as_str().map(str::to_owned))
                .flatten()
        })
    };
    if let Some(name) = find(NAME_KEYS) {
        return Some((name, find(DESCRIPTION_KEYS).unwrap_or_default()));
    }
    // One level of wrapping, e.g. {"cluster": {"name": ..., "description": ...}}.
    if depth == 0 {
        return object.values().find_map(|v| fields_from_value(v, 1));
    }
    None
}

/// `Name: …` and `Description: …` lines (any case, optional markdown bold or bullets).
fn line_fields(text: &str) -> Option<(String, String)> {
    let mut name = None;
    let mut description = None;
    for line in text.lines() {
        let line = line.trim().trim_start_matches(['-', '*', '#', ' ']);
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches('*').trim().to_lowercase();
        let value = value.trim().trim_start_matches('*').trim();
        if name.is_none() && NAME_KEYS.contains(&key.as_str()) && !value.is_empty() {
            name = Some(value.to_owned());
        } else if description.is_none() && DESCRIPTION_KEYS.contains(&key.as_str()) {
            description = Some(value.to_owned());
        }
    }
    Some((name?, description.unwrap_or_default()))
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
    }
}

/// Offline labeller with no model: names a cluster after its top keywords. Its labels say
/// `labelled_by: "keyword-fallback"` so nobody mistakes them for an LLM's.
#[derive(Debug, Clone, Default)]
pub struct KeywordFallbackLabeller;

impl KeywordFallbackLabeller {
    pub fn label_now(&self, description: &ClusterDescription) -> ClusterLabel {
        let name = if description.keywords.is_empty() {
            format!("Cluster {}", description.cluster_id)
        } else {
            truncate_chars(
                &description
                    .keywords
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" / "),
                MAX_NAME_CHARS,
            )
        };
        let description_text = if description.keywords.is_empty() {
            format!(
                "{} items ({:.1}%) with no distinctive keywords.",
                description.size,
                description.share * 100.0
            )
        } else {
            format!(
                "{} items ({:.1}%) most distinguished by the terms: {}.",
                description.size,
                description.share * 100.0,
                description
                    .keywords
                    .iter()
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        ClusterLabel {
            name,
            description: description_text,
            labelled_by: KEYWORD_FALLBACK.to_owned(),
        }
    }
}

impl ClusterLabeller for KeywordFallbackLabeller {
    type Error = std::convert::Infallible;

    fn label(
        &self,
        description: &ClusterDescription,
    ) -> impl Future<Output = std::result::Result<ClusterLabel, Self::Error>> + Send {
        std::future::ready(Ok(self.label_now(description)))
    }
}

/// Prompt limits used by [`label_clusters`].
pub const PROMPT_KEYWORDS: usize = 10;
pub const PROMPT_REPRESENTATIVES: usize = 5;
pub const PROMPT_CHARS_PER_EXAMPLE: usize = 400;

/// Labels every cluster in turn with `labeller`, storing the label in the record.
pub async fn label_clusters<L: ClusterLabeller>(
    labeller: &L,
    clusters: &mut [ClusterRecord],
) -> Result<()> {
    for record in clusters.iter_mut() {
        let description = ClusterDescription::from_record(
            record,
            PROMPT_KEYWORDS,
            PROMPT_REPRESENTATIVES,
            PROMPT_CHARS_PER_EXAMPLE,
        );
        let label = labeller
            .label(&description)
            .await
            .map_err(|source| Error::Labeller {
                cluster: record.id,
                source: Box::new(source),
            })?;
        record.label = Some(label);
    }
    Ok(())
}

/// Labels every cluster with `labeller`, showing it each cluster against the others' keywords.
/// A cluster the labeller fails on gets the keyword label instead (marked
/// [`KEYWORD_FALLBACK`]); the result lists each cluster's id with the error's text, if any, so
/// nothing falls back unseen.
pub async fn label_clusters_contrastive<L: ClusterLabeller>(
    labeller: &L,
    clusters: &mut [ClusterRecord],
) -> Vec<(usize, std::result::Result<(), String>)> {
    let summaries: Vec<String> = clusters
        .iter()
        .map(|record| {
            let keywords: Vec<&str> = record
                .keywords
                .iter()
                .take(PROMPT_KEYWORDS)
                .map(|k| k.term.as_str())
                .collect();
            format!(
                "cluster {} ({} items): {}",
                record.id,
                record.size,
                keywords.join(", ")
            )
        })
        .collect();
    let mut outcomes = Vec::with_capacity(clusters.len());
    for (index, record) in clusters.iter_mut().enumerate() {
        let mut description = ClusterDescription::from_record(
            record,
            PROMPT_KEYWORDS,
            PROMPT_REPRESENTATIVES,
            PROMPT_CHARS_PER_EXAMPLE,
        );
        description.other_clusters = summaries
            .iter()
            .enumerate()
            .filter(|&(other, _)| other != index)
            .map(|(_, line)| line.clone())
            .collect();
        let labelled = match labeller.label(&description).await {
            Ok(label) => match copied_from_prompt(&label, &description) {
                Some(copied) => Err(Error::LabelResponse {
                    reason: "the label copies its prompt or schema instead of naming the cluster",
                    excerpt: truncate_chars(copied, 200),
                }
                .to_string()),
                None => Ok(label),
            },
            Err(error) => Err(error.to_string()),
        };
        match labelled {
            Ok(label) => {
                record.label = Some(label);
                outcomes.push((record.id, Ok(())));
            }
            Err(error) => {
                record.label = Some(KeywordFallbackLabeller.label_now(&description));
                outcomes.push((record.id, Err(error)));
            }
        }
    }
    outcomes
}

/// Copied text this long or longer is not a name a model wrote (a short phrase such as "date
/// arithmetic" may appear in the prompt and still be a fair name).
const COPY_MIN_CHARS: usize = 20;

/// The label's name or description when it is a verbatim copy (case and spacing aside) of the
/// prompt it was asked with or of the schema's own descriptions: what a small model does
/// ("1. Task: ... Model answered: B", "One sentence: what the items share ..."). Such a label
/// would read as the LLM's in the report, so it falls back to keywords instead, visibly.
fn copied_from_prompt<'a>(
    label: &'a ClusterLabel,
    description: &ClusterDescription,
) -> Option<&'a str> {
    let normalise = |text: &str| collapse_whitespace(text).to_lowercase();
    let prompt = label_prompt(description);
    let asked = normalise(&format!(
        "{}\n{}\n{}",
        prompt.system,
        prompt.user,
        label_json_schema()
    ));
    [label.name.as_str(), label.description.as_str()]
        .into_iter()
        .find(|text| {
            let text = normalise(text);
            let text = text.trim_end_matches('.');
            text.chars().count() >= COPY_MIN_CHARS && asked.contains(text)
        })
}

/// Labels every cluster with [`KeywordFallbackLabeller`] (no model, no async runtime).
pub fn label_clusters_with_keywords(clusters: &mut [ClusterRecord]) {
    for record in clusters.iter_mut() {
        let description = ClusterDescription::from_record(
            record,
            PROMPT_KEYWORDS,
            PROMPT_REPRESENTATIVES,
            PROMPT_CHARS_PER_EXAMPLE,
        );
        record.label = Some(KeywordFallbackLabeller.label_now(&description));
    }
}
