//! Tolerant parsing of model answers: JSON embedded in prose, and judge scores.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// The first JSON object or array in `text`: the whole text, a ```` ```json ```` fenced block,
/// or the first balanced `{...}` / `[...]` that parses. `None` when there is none.
pub fn extract_json(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    json_values(text).into_iter().map(|(_, v)| v).next()
}

/// Every JSON object or array embedded in `text` that parses, with its start offset. A value
/// nested in an earlier one is not reported separately.
fn json_values(text: &str) -> Vec<(usize, Value)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        if (bytes[start] == b'{' || bytes[start] == b'[')
            && let Some(end) = balanced_end(&bytes[start..])
            && let Ok(v) = serde_json::from_str::<Value>(&text[start..start + end])
        {
            found.push((start, v));
            start += end;
            continue;
        }
        start += 1;
    }
    found
}

/// Length of the balanced bracket group at the start of `bytes` (strings and escapes skipped).
fn balanced_end(bytes: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

const NUM: &str = r"(\d+(?:\.\d+)?)";

static BRACKETS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r"\[\[\s*{NUM}\s*\]\]")).unwrap());
static FRACTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"(?i){NUM}\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?)")).unwrap()
});
static LABEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b(?:score|rating|grade)\b\**\s*(?:is|of|=|:|-)?\s*\**\s*:?\s*\**\s*\[?\[?\s*{NUM}"
    ))
    .unwrap()
});
static BARE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!(r#"^[\s*"'`]*{NUM}[\s*"'`.]*$"#)).unwrap());

/// Denominators accepted in `x/N` and `x out of N`: the usual judge scales. Anything else
/// (`3/4 of the steps`, dates like `12/05/2024`) is not a score.
const SCALES: [f64; 3] = [5.0, 10.0, 100.0];

/// A judge's score from its free-text answer.
///
/// Explicit patterns, case-insensitive:
/// - `[[8]]` (MT-Bench style);
/// - `8/10`, `8 / 10`, `8 out of 10` with a denominator of 5, 10 or 100 and `x <= N`
///   (not part of a date such as `12/05/2024`); the numerator is returned, not rescaled;
/// - `Score: 8`, `**Score:** 8`, `rating of 8`, `grade = 8`, `score is 8`;
/// - a JSON object with a `score` or `rating` key holding a number or a numeric string.
///
/// Rule: when several explicit patterns occur, the **last one in the text wins** (judges that
/// reason first and conclude last say their verdict at the end). Bare numbers inside prose are
/// never read: `"I give it a 10/10 maybe 3"` is 10, `"It has 3 errors"` is `None`. Only a text
/// that is nothing but a number (`"8"`, `"8.5."`) is read as one. Negative, non-finite or
/// out-of-scale values are `None`.
pub fn parse_judge_score(text: &str) -> Option<f32> {
    // (end offset of the pattern, value)
    let mut found: Vec<(usize, f64)> = Vec::new();
    for c in BRACKETS.captures_iter(text) {
        found.push((c.get(0)?.end(), c[1].parse().ok()?));
    }
    for c in FRACTION.captures_iter(text) {
        let whole = c.get(0)?;
        let before = text[..whole.start()].chars().next_back();
        let after = text[whole.end()..].chars().next();
        let in_date = matches!(before, Some('/' | '.'))
            || matches!(after, Some('/'))
            || (matches!(after, Some('.'))
                && text[whole.end() + 1..].starts_with(|ch: char| ch.is_ascii_digit()));
        let (x, n): (f64, f64) = (c[1].parse().ok()?, c[2].parse().ok()?);
        if !in_date && SCALES.contains(&n) && x <= n {
            found.push((whole.end(), x));
        }
    }
    for c in LABEL.captures_iter(text) {
        let num = c.get(1)?;
        // "Score: 8/10" is one pattern; "Score: 12/05/2024" is not a score.
        let rest = &text[num.end()..];
        if rest.trim_start().starts_with('/') || rest.trim_start().starts_with("out of") {
            continue;
        }
        found.push((num.end(), num.as_str().parse().ok()?));
    }
    for (start, value) in json_values(text) {
        if let Some(score) = json_score(&value) {
            found.push((start + 1, score));
        }
    }
    let value = match found.iter().max_by_key(|(end, _)| *end) {
        Some(&(_, v)) => v,
        None => BARE.captures(text)?[1].parse().ok()?,
    };
    (value.is_finite() && value >= 0.0).then_some(value as f32)
}

fn json_score(value: &Value) -> Option<f64> {
    let obj = value.as_object()?;
    obj.iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("score") || k.eq_ignore_ascii_case("rating"))
        .find_map(|(_, v)| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_scores_that_parse() {
        let cases: &[(&str, f32)] = &[
            ("8/10", 8.0),
            ("8 / 10", 8.0),
            ("[[8]]", 8.0),
            ("Rating: [[9]]", 9.0),
            (
                "The answer is correct and well explained.\n\nFinal verdict: [[6]]",
                6.0,
            ),
            ("Score: 8", 8.0),
            ("score:8", 8.0),
            ("**Score:** 9/10", 9.0),
            ("**Score**: 7", 7.0),
            ("Final score = 7.5", 7.5),
            ("I'd give it a rating of 4 out of 5.", 4.0),
            ("I'd rate it 7 out of 10.", 7.0),
            ("8.5", 8.5),
            ("  8 ", 8.0),
            ("8.", 8.0),
            ("\"7\"", 7.0),
            ("{\"score\": 8}", 8.0),
            ("{\"score\": \"8\"}", 8.0),
            ("{\"Score\": 8.5, \"reason\": \"mostly right\"}", 8.5),
            (
                "```json\n{\"reasoning\": \"covers 3 of 4 points\", \"score\": 7}\n```",
                7.0,
            ),
            (
                "Here is my evaluation: {\"rating\": 3, \"explanation\": \"wrong unit\"}",
                3.0,
            ),
            // Last explicit pattern wins.
            ("Score: 3. On reflection, final score: 5", 5.0),
            ("I give it a 10/10 maybe 3", 10.0),
            ("3/4 of the steps are right. Score: 6", 6.0),
            ("[[2]] ... actually [[9]]", 9.0),
            (
                "Score: 8\n\nExplanation: the answer covers 3 of 4 points",
                8.0,
            ),
            ("85/100", 85.0),
            ("Score: 0", 0.0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_judge_score(text), Some(*want), "{text:?}");
        }
    }

    #[test]
    fn judge_texts_that_must_not_parse() {
        let cases = [
            "",
            "N/A",
            "no score given",
            "The answer has 3 errors",
            "maybe 3",
            "3/4 of the steps are right",
            "Released on 12/05/2024, it was fine",
            "15/10 would read again",
            "score: eight",
            "Score: -3",
            "{\"reason\": \"no score key\", \"value\": 8}",
            "{\"score\": null}",
            "8 or 9",
            "[[eight]]",
        ];
        for text in cases {
            assert_eq!(parse_judge_score(text), None, "{text:?}");
        }
    }

    #[test]
    fn json_extraction_is_tolerant() {
        assert_eq!(extract_json(r#"{"a":1}"#).unwrap()["a"], 1);
        assert_eq!(
            extract_json("```json\n{\"a\": [1,2]}\n```").unwrap()["a"][1],
            2
        );
        assert_eq!(
            extract_json("Sure! Here you go: {\"a\": \"}{\", \"b\": {\"c\": 2}} hope it helps")
                .unwrap()["b"]["c"],
            2
        );
        assert_eq!(extract_json("[1, 2, 3]").unwrap()[2], 3);
        assert!(
            extract_json("{\"a\": 1").is_none(),
            "truncated JSON is not JSON"
        );
        assert!(extract_json("no json here {oops}").is_none());
        assert!(
            extract_json("42").is_none(),
            "a scalar is not an object or array"
        );
    }
}
