//! IFEval-style format constraints, each checked exactly on the whole reply.
//!
//! Definitions (the records' doc comments say the same):
//! - a word is a whitespace-separated token with at least one letter or digit, so bullet dashes
//!   and stray punctuation are not words;
//! - keywords and excluded words match case-insensitively as whole words (a phrase's words in
//!   order, any whitespace between): "rivers" does not contain the keyword "river";
//! - a bullet line starts, after indentation, with `-`, `*` or `•` and a space; nested bullets
//!   count ("**bold**" and "---" are not bullets);
//! - starts/ends-with compare case-insensitively (as IFEval does) after trimming whitespace and
//!   surrounding double quotes; the phrase's own punctuation must match;
//! - JSON: the whole reply, or the first ```` ``` ```` fence whose content parses, must be an
//!   object with the keys at its top level.

use records::mining::Constraint;
use regex::Regex;
use serde_json::Value;

use super::Grade;

/// A constraint in words, for gold texts and reports: "at most 50 words".
pub fn describe_constraint(constraint: &Constraint) -> String {
    // "the keyword `a`", "the keywords `a`, `b`"
    let quoted = |noun: &str, words: &[String]| {
        let listed: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
        let plural = if words.len() == 1 { "" } else { "s" };
        format!("the {noun}{plural} {}", listed.join(", "))
    };
    match constraint {
        Constraint::MaxWords { max } => format!("at most {max} words"),
        Constraint::MinWords { min } => format!("at least {min} words"),
        Constraint::IncludeKeywords { keywords } => {
            format!("includes {}", quoted("keyword", keywords))
        }
        Constraint::ExcludeWords { words } => format!("avoids {}", quoted("word", words)),
        Constraint::JsonObject { keys } => format!("a JSON object with {}", quoted("key", keys)),
        Constraint::BulletCount { count } => format!("exactly {count} bullet points"),
        Constraint::AllLowercase => "all lowercase".to_string(),
        Constraint::AllUppercase => "all uppercase".to_string(),
        Constraint::EndsWith { phrase } => format!("ends with `{phrase}`"),
        Constraint::StartsWith { phrase } => format!("starts with `{phrase}`"),
        Constraint::NoCommas => "no commas".to_string(),
    }
}

pub(super) fn grade(constraints: &[Constraint], text: &str) -> Grade {
    let violations: Vec<String> = constraints
        .iter()
        .filter_map(|constraint| violation(constraint, text))
        .collect();
    let summary = counted(word_count(text), "word");
    if violations.is_empty() {
        Grade::right(summary)
    } else {
        Grade::wrong(Some(summary), violations.join("; "))
    }
}

pub(crate) fn word_count(text: &str) -> usize {
    text.split_whitespace()
        .filter(|token| token.chars().any(char::is_alphanumeric))
        .count()
}

/// What is wrong with `text` under `constraint`, or `None` when it holds.
fn violation(constraint: &Constraint, text: &str) -> Option<String> {
    match constraint {
        Constraint::MaxWords { max } => {
            let words = word_count(text);
            (words > *max).then(|| format!("{}, at most {max} allowed", counted(words, "word")))
        }
        Constraint::MinWords { min } => {
            let words = word_count(text);
            (words < *min).then(|| format!("{}, at least {min} required", counted(words, "word")))
        }
        Constraint::IncludeKeywords { keywords } => {
            let missing: Vec<String> = keywords
                .iter()
                .filter(|keyword| !contains_phrase(text, keyword))
                .map(|keyword| format!("keyword `{keyword}` missing"))
                .collect();
            (!missing.is_empty()).then(|| missing.join("; "))
        }
        Constraint::ExcludeWords { words } => {
            let present: Vec<String> = words
                .iter()
                .filter(|word| contains_phrase(text, word))
                .map(|word| format!("excluded word `{word}` used"))
                .collect();
            (!present.is_empty()).then(|| present.join("; "))
        }
        Constraint::JsonObject { keys } => json_violation(text, keys),
        Constraint::BulletCount { count } => {
            let bullets = text.lines().filter(|line| is_bullet(line)).count();
            (bullets != *count).then(|| {
                format!(
                    "{}, exactly {count} required",
                    counted(bullets, "bullet point")
                )
            })
        }
        Constraint::AllLowercase => text
            .chars()
            .find(|c| c.is_uppercase())
            .map(|c| format!("not all lowercase (has `{c}`)")),
        Constraint::AllUppercase => text
            .chars()
            .find(|c| c.is_lowercase())
            .map(|c| format!("not all uppercase (has `{c}`)")),
        Constraint::StartsWith { phrase } => {
            let reply = trimmed_for_affix(text).to_lowercase();
            (!reply.starts_with(&phrase.trim().to_lowercase()))
                .then(|| format!("does not start with `{phrase}`"))
        }
        Constraint::EndsWith { phrase } => {
            let reply = trimmed_for_affix(text).to_lowercase();
            (!reply.ends_with(&phrase.trim().to_lowercase()))
                .then(|| format!("does not end with `{phrase}`"))
        }
        Constraint::NoCommas => {
            let commas = text.matches(',').count();
            (commas > 0).then(|| format!("{}, none allowed", counted(commas, "comma")))
        }
    }
}

/// "1 word", "2 words".
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn trimmed_for_affix(text: &str) -> &str {
    let trimmed = text.trim();
    trimmed
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .map_or(trimmed, str::trim)
}

/// Whether `phrase` occurs in `text` as whole words, case-insensitively.
fn contains_phrase(text: &str, phrase: &str) -> bool {
    let words: Vec<String> = phrase.split_whitespace().map(regex::escape).collect();
    if words.is_empty() {
        return true;
    }
    // Letters and digits on either side would make it part of a longer word; `\b` is not used
    // because a phrase may itself start or end with punctuation ("C++").
    let pattern = format!(
        r"(?i)(?:^|[^\p{{L}}\p{{N}}_]){}(?:$|[^\p{{L}}\p{{N}}_])",
        words.join(r"\s+")
    );
    Regex::new(&pattern).is_ok_and(|re| re.is_match(text))
}

fn is_bullet(line: &str) -> bool {
    let line = line.trim_start();
    ["- ", "* ", "• "]
        .iter()
        .any(|marker| line.starts_with(marker))
}

fn json_violation(text: &str, keys: &[String]) -> Option<String> {
    let Some(value) = find_json(text) else {
        return Some("not a JSON object (nor one in a ``` fence)".to_string());
    };
    let Value::Object(object) = value else {
        return Some("the JSON is not an object".to_string());
    };
    let missing: Vec<String> = keys
        .iter()
        .filter(|key| !object.contains_key(key.as_str()))
        .map(|key| format!("`{key}`"))
        .collect();
    (!missing.is_empty()).then(|| format!("JSON object lacks keys {}", missing.join(", ")))
}

/// The whole reply parsed as JSON, or else the first code fence whose content parses.
fn find_json(text: &str) -> Option<Value> {
    if let Ok(value) = serde_json::from_str(text.trim()) {
        return Some(value);
    }
    let mut rest = text;
    while let Some(open) = rest.find("```") {
        let after_open = &rest[open + 3..];
        // The fence's info string ("json") runs to the end of its line.
        let body_start = after_open.find('\n').map_or(after_open.len(), |at| at + 1);
        let body = &after_open[body_start..];
        let Some(close) = body.find("```") else {
            break;
        };
        if let Ok(value) = serde_json::from_str(body[..close].trim()) {
            return Some(value);
        }
        rest = &body[close + 3..];
    }
    None
}

#[cfg(test)]
mod tests {
    use records::mining::{Constraint, Grader};

    use super::*;
    use crate::grade::grade_reply;

    fn check(constraints: Vec<Constraint>, reply: &str) -> Grade {
        grade_reply(&Grader::Constraints { constraints }, reply)
    }

    fn words(n: usize) -> String {
        vec!["word"; n].join(" ")
    }

    #[test]
    fn word_limits_are_exact_to_one_word() {
        let max = || vec![Constraint::MaxWords { max: 50 }];
        assert!(check(max(), &words(50)).correct);
        let over = check(max(), &words(51));
        assert!(!over.correct);
        assert_eq!(over.reason.as_deref(), Some("51 words, at most 50 allowed"));
        let min = || vec![Constraint::MinWords { min: 10 }];
        assert!(check(min(), &words(10)).correct);
        assert_eq!(
            check(min(), &words(9)).reason.as_deref(),
            Some("9 words, at least 10 required")
        );
        // Bullet dashes and a lone em dash are not words.
        assert_eq!(word_count("- one\n- two — three"), 3);
    }

    #[test]
    fn reasons_name_every_violation() {
        let constraints = vec![
            Constraint::MaxWords { max: 5 },
            Constraint::IncludeKeywords {
                keywords: vec!["river".into(), "old stone".into()],
            },
            Constraint::NoCommas,
        ];
        let grade = check(
            constraints,
            "The rivers run past the old   Stone bridge, slowly.",
        );
        assert!(!grade.correct);
        assert_eq!(
            grade.reason.as_deref(),
            Some("9 words, at most 5 allowed; keyword `river` missing; 1 comma, none allowed")
        );
    }

    #[test]
    fn keywords_and_excluded_words_are_whole_words_any_case() {
        let keywords = || {
            vec![Constraint::IncludeKeywords {
                keywords: vec!["River".into(), "C++".into()],
            }]
        };
        assert!(check(keywords(), "the river, written in c++.").correct);
        assert!(!check(keywords(), "the riverbank in C++").correct);
        let exclude = || {
            vec![Constraint::ExcludeWords {
                words: vec!["very".into()],
            }]
        };
        assert!(check(exclude(), "Every day is everything.").correct);
        assert_eq!(
            check(exclude(), "It was Very nice.").reason.as_deref(),
            Some("excluded word `very` used")
        );
    }

    #[test]
    fn json_whole_or_fenced_with_keys() {
        let json = || {
            vec![Constraint::JsonObject {
                keys: vec!["title".into(), "summary".into()],
            }]
        };
        assert!(check(json(), r#"{"title": "A", "summary": "B", "extra": 1}"#).correct);
        let fenced = "Here you go:\n```json\n{\"title\": \"A\", \"summary\": \"B\"}\n```\nEnjoy!";
        assert!(check(json(), fenced).correct);
        let skipped = "```\nnot json\n```\n```json\n{\"title\": 1, \"summary\": 2}\n```";
        assert!(check(json(), skipped).correct);
        assert_eq!(
            check(json(), r#"{"title": "A"}"#).reason.as_deref(),
            Some("JSON object lacks keys `summary`")
        );
        assert_eq!(
            check(json(), "[1, 2]").reason.as_deref(),
            Some("the JSON is not an object")
        );
        assert_eq!(
            check(json(), "title: A").reason.as_deref(),
            Some("not a JSON object (nor one in a ``` fence)")
        );
    }

    #[test]
    fn bullets_case_affixes_and_commas() {
        let bullets = || vec![Constraint::BulletCount { count: 3 }];
        let three = "Intro\n- one\n* two\n  • three\n**bold** line\n---";
        assert!(check(bullets(), three).correct);
        assert_eq!(
            check(bullets(), "- one\n- two").reason.as_deref(),
            Some("2 bullet points, exactly 3 required")
        );
        assert!(check(vec![Constraint::AllLowercase], "all lower, 123!").correct);
        assert_eq!(
            check(vec![Constraint::AllLowercase], "all lower but One")
                .reason
                .as_deref(),
            Some("not all lowercase (has `O`)")
        );
        assert!(check(vec![Constraint::AllUppercase], "ALL UPPER 1!").correct);
        assert!(!check(vec![Constraint::AllUppercase], "ALL UPPEr").correct);
        let ends = || {
            vec![Constraint::EndsWith {
                phrase: "Is there anything else?".into(),
            }]
        };
        assert!(check(ends(), "Text.\n\nis there anything else?  ").correct);
        assert!(check(ends(), "\"Text. Is there anything else?\"").correct);
        assert_eq!(
            check(ends(), "Text. Is there anything else? Bye")
                .reason
                .as_deref(),
            Some("does not end with `Is there anything else?`")
        );
        let starts = || {
            vec![Constraint::StartsWith {
                phrase: "Dear friend".into(),
            }]
        };
        assert!(check(starts(), "  DEAR FRIEND, hello").correct);
        assert!(!check(starts(), "Hello dear friend").correct);
        assert!(check(vec![Constraint::NoCommas], "no commas here.").correct);
    }

    #[test]
    fn descriptions_read_as_words() {
        assert_eq!(
            describe_constraint(&Constraint::IncludeKeywords {
                keywords: vec!["a".into(), "b".into()]
            }),
            "includes the keywords `a`, `b`"
        );
        assert_eq!(
            describe_constraint(&Constraint::ExcludeWords {
                words: vec!["very".into()]
            }),
            "avoids the word `very`"
        );
        assert_eq!(
            describe_constraint(&Constraint::MaxWords { max: 3 }),
            "at most 3 words"
        );
    }
}
