//! Graders: read a model's reply and decide whether it is right, saying why when it is not.
//!
//! Chat models are verbose ("The answer is **$1,000**."), so each grader first finds the part of
//! the reply that is the answer, by the rule written on its function, and then compares exactly.
//! Rules shared by every grader:
//! - a reasoning block is not part of the answer: the answer is what follows the last
//!   `</think>`, and a reply that opens `<think>` and never closes it has no answer (its
//!   generation was cut off while thinking);
//! - an empty reply is wrong, even where its constraints would hold vacuously;
//! - an *answer marker* is `answer is`, `answer:` or `answer =` (any case, so `The final answer
//!   is` and `**Answer:**` count); where a reply has several, the last one is the answer, since
//!   models restate and correct themselves before concluding.

mod choice;
mod constraints;
mod number;

use std::sync::LazyLock;

use records::mining::Grader;
use regex::Regex;

pub use constraints::describe_constraint;
pub(crate) use constraints::word_count;

/// The verdict on one reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Grade {
    pub correct: bool,
    /// What the grader read from the reply (a letter, a number, a normalised answer);
    /// `None` when nothing matched.
    pub extracted: Option<String>,
    /// Why it is wrong (`None` when correct), e.g. "expected 1000, read 100".
    pub reason: Option<String>,
}

impl Grade {
    pub(crate) fn right(extracted: impl Into<String>) -> Self {
        Grade {
            correct: true,
            extracted: Some(extracted.into()),
            reason: None,
        }
    }

    pub(crate) fn wrong(extracted: Option<String>, reason: impl Into<String>) -> Self {
        Grade {
            correct: false,
            extracted,
            reason: Some(reason.into()),
        }
    }
}

/// Grades a generated reply with any exact grader. [`Grader::Judge`] needs an LLM and is graded
/// elsewhere; here it is reported as not gradable.
pub fn grade_reply(grader: &Grader, reply: &str) -> Grade {
    if let Grader::Judge { .. } = grader {
        return Grade::wrong(None, "needs an LLM judge");
    }
    let text = match answer_text(reply) {
        Ok(text) => text,
        Err(grade) => return grade,
    };
    match grader {
        Grader::MultipleChoice { choices, answer } => choice::grade(choices, *answer, text),
        Grader::ShortAnswer { aliases } => grade_short_answer(aliases, text),
        Grader::Number { value, tolerance } => number::grade(*value, *tolerance, text),
        Grader::ExactText { expected } => grade_exact_text(expected, text),
        Grader::Constraints { constraints } => constraints::grade(constraints, text),
        Grader::Judge { .. } => unreachable!("returned above"),
    }
}

/// SQuAD's answer normalisation: lowercase, punctuation removed, the articles a/an/the removed,
/// whitespace collapsed to single spaces. Punctuation is ASCII punctuation plus the typographic
/// quotes, dashes and ellipsis that models emit, so `“Paris”` and `"Paris"` agree.
pub fn normalize_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    let without_punctuation: String = lower.chars().filter(|c| !is_punctuation(*c)).collect();
    without_punctuation
        .split_whitespace()
        .filter(|word| !matches!(*word, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '‘' | '’'
                | '“'
                | '”'
                | '–'
                | '—'
                | '…'
                | '«'
                | '»'
                | '¿'
                | '¡'
                | '·'
                | '′'
                | '″'
        )
}

/// The part of a reply any grader reads: without its reasoning block, or the wrong grade of a
/// reply with nothing to read (a `<think>` block never closed, or nothing after it).
pub(crate) fn answer_text(reply: &str) -> Result<&str, Grade> {
    match strip_reasoning(reply) {
        None => Err(Grade::wrong(
            None,
            "the reply never closes its <think> block",
        )),
        Some(text) if text.trim().is_empty() => Err(Grade::wrong(None, "empty reply")),
        Some(text) => Ok(text),
    }
}

/// The reply without its reasoning block (see the module docs); `None` when it never left it.
fn strip_reasoning(reply: &str) -> Option<&str> {
    if let Some(end) = reply.rfind("</think>") {
        return Some(&reply[end + "</think>".len()..]);
    }
    if reply.trim_start().starts_with("<think>") {
        return None;
    }
    Some(reply)
}

static ANSWER_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\banswer(?:\s+is\b\s*:?|\s*[:=])").expect("valid regex"));

/// The text after the last answer marker, up to the end of its line; when the marker ends its
/// line ("Answer:\n42") the next non-empty line. `None` when there is no marker or nothing after it.
fn after_answer_marker(text: &str) -> Option<&str> {
    let marker = ANSWER_MARKER.find_iter(text).last()?;
    let rest = text[marker.end()..].trim_start();
    let line = rest.lines().next()?.trim();
    (!line.is_empty()).then_some(line)
}

/// Markdown bold markers (`**`, `__`) removed: emphasis is not content.
fn strip_bold(text: &str) -> String {
    text.replace("**", "").replace("__", "")
}

/// Non-empty trimmed lines, without code-fence lines (```` ``` ```` or ```` ```json ````).
fn content_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("```"))
        .collect()
}

static SHORT_ANSWER_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:the\s+)?(?:final\s+|correct\s+|short\s+)?answer(?:\s+is\b)?\s*[:\-=]?\s*")
        .expect("valid regex")
});

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "neither", "nor", "isnt", "wasnt", "arent", "werent", "dont", "doesnt",
    "didnt", "cannot", "cant", "wont",
];

/// Most words a reply's answer line may have for an alias inside it to count (see
/// [`grade_short_answer`]).
const SHORT_REPLY_WORDS: usize = 8;

/// Short answers (TriviaQA, NQ). The answer line is the text after the last answer marker, else
/// the reply's first non-empty line with a leading "Answer:"/"The answer is" removed (models put
/// the answer first and explain after). After [`normalize_answer`] it is right when:
/// - it equals some alias, or
/// - it has at most 8 words, contains some alias as whole words, and has no negation word
///   ("not", "never", ...) outside the alias.
///
/// The second rule accepts a short sentence around the answer ("It was Abraham Lincoln.") but
/// not a paragraph, where listing several candidates would count as right; the negation check
/// keeps "Not Paris" from passing as "Paris".
fn grade_short_answer(aliases: &[String], text: &str) -> Grade {
    let normalized_aliases: Vec<String> = aliases
        .iter()
        .map(|alias| normalize_answer(alias))
        .filter(|alias| !alias.is_empty())
        .collect();
    if normalized_aliases.is_empty() {
        return Grade::wrong(None, "the item has no usable alias");
    }
    let Some(line) = short_answer_line(text) else {
        return Grade::wrong(None, "no answer in the reply");
    };
    let candidate = normalize_answer(&line);
    if candidate.is_empty() {
        return Grade::wrong(None, format!("no answer in `{line}`"));
    }
    if normalized_aliases.contains(&candidate) {
        return Grade::right(candidate);
    }
    let words: Vec<&str> = candidate.split(' ').collect();
    if words.len() <= SHORT_REPLY_WORDS {
        for alias in &normalized_aliases {
            let alias_words: Vec<&str> = alias.split(' ').collect();
            let Some(start) = find_words(&words, &alias_words) else {
                continue;
            };
            let mut outside = words[..start]
                .iter()
                .chain(&words[start + alias_words.len()..]);
            if !outside.any(|word| NEGATIONS.contains(word)) {
                return Grade::right(candidate);
            }
        }
    }
    let expected = list_for_reason(&normalized_aliases);
    Grade::wrong(
        Some(candidate.clone()),
        format!("read `{candidate}`, expected {expected}"),
    )
}

fn short_answer_line(text: &str) -> Option<String> {
    let text = strip_bold(text);
    if let Some(line) = after_answer_marker(&text) {
        return Some(line.to_string());
    }
    let lines = content_lines(&text);
    let first = lines.first()?;
    let stripped = SHORT_ANSWER_PREFIX.replace(first, "");
    if stripped.trim().is_empty() {
        // "Answer:" alone on its line: the answer is on the next one.
        return lines.get(1).map(|line| line.to_string());
    }
    Some(stripped.into_owned())
}

/// Where `needle` occurs in `haystack` as consecutive whole words.
fn find_words(haystack: &[&str], needle: &[&str]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// "`a`, `b`, `c` or 4 more" for reasons: enough to see what was expected, never a wall of text.
fn list_for_reason(values: &[String]) -> String {
    const SHOWN: usize = 3;
    let shown: Vec<String> = values
        .iter()
        .take(SHOWN)
        .map(|v| format!("`{v}`"))
        .collect();
    let mut listed = shown.join(", ");
    if values.len() > SHOWN {
        listed.push_str(&format!(" or {} more", values.len() - SHOWN));
    }
    listed
}

static EMPHASIS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\*\*(.+?)\*\*|__(.+?)__|`([^`]+)`|"([^"]+)"|“([^”]+)”"#).expect("valid regex")
});

/// Where a sentence ends and its answer begins: "The reversed word is tenalp", "Sorted: 1, 2".
const ANSWER_CUES: &[&str] = &[
    " is ",
    " are ",
    " was ",
    " would be ",
    ": ",
    " = ",
    "-> ",
    "→ ",
];

/// Exact strings (string and list manipulation, dates, times), case-sensitive because those tasks
/// are about case. The answer lines are the text after the last answer marker; without a marker,
/// the first and the last non-empty lines (code fences skipped): models put the answer either
/// first and explain after, or explain first and conclude. Each line gives three readings, and the
/// reply is right when one equals `expected`:
/// 1. the whole line, cleaned;
/// 2. its last emphasised span (`**x**`, `` `x` ``, `"x"`), cleaned;
/// 3. the text after its last cue (" is ", " are ", ": ", " = ", ...), cleaned.
///
/// Cleaning trims whitespace and removes, repeatedly, a final period and surrounding markdown
/// bold, backticks and quotes. Everything else must match exactly: "1,2,3" is not "1, 2, 3".
fn grade_exact_text(expected: &str, text: &str) -> Grade {
    let expected_clean = clean_exact(expected);
    let lines: Vec<&str> = match after_answer_marker(text) {
        Some(line) => vec![line],
        None => {
            let lines = content_lines(text);
            match (lines.first(), lines.last()) {
                (Some(first), Some(last)) if first != last => vec![*first, *last],
                (Some(first), _) => vec![*first],
                _ => vec![],
            }
        }
    };
    let mut readings = Vec::new();
    for line in lines {
        readings.push(clean_exact(line));
        if let Some(span) = EMPHASIS.captures_iter(line).last() {
            let inner = span
                .iter()
                .skip(1)
                .flatten()
                .next()
                .map_or("", |m| m.as_str());
            readings.push(clean_exact(inner));
        }
        let unbolded = strip_bold(line);
        let after_cue = ANSWER_CUES
            .iter()
            .filter_map(|cue| unbolded.rfind(cue).map(|at| at + cue.len()))
            .max();
        if let Some(at) = after_cue {
            readings.push(clean_exact(&unbolded[at..]));
        }
    }
    readings.retain(|reading| !reading.is_empty());
    if readings.contains(&expected_clean) {
        return Grade::right(expected_clean);
    }
    match readings.into_iter().next() {
        Some(first) => Grade::wrong(
            Some(first.clone()),
            format!("read `{first}`, expected `{expected_clean}`"),
        ),
        None => Grade::wrong(None, "no answer in the reply"),
    }
}

/// Trims whitespace, a final period and surrounding bold/backticks/quotes until none is left.
fn clean_exact(text: &str) -> String {
    const PAIRS: &[(&str, &str)] = &[
        ("**", "**"),
        ("__", "__"),
        ("`", "`"),
        ("\"", "\""),
        ("'", "'"),
        ("“", "”"),
        ("‘", "’"),
        ("*", "*"),
    ];
    let mut current = text.trim();
    loop {
        let before = current;
        current = current.strip_suffix('.').unwrap_or(current).trim();
        for (open, close) in PAIRS {
            if current.len() >= open.len() + close.len()
                && let Some(inner) = current
                    .strip_prefix(open)
                    .and_then(|rest| rest.strip_suffix(close))
            {
                current = inner.trim();
            }
        }
        if current == before {
            return current.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(aliases: &[&str], reply: &str) -> Grade {
        let grader = Grader::ShortAnswer {
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        };
        grade_reply(&grader, reply)
    }

    fn exact(expected: &str, reply: &str) -> Grade {
        let grader = Grader::ExactText {
            expected: expected.into(),
        };
        grade_reply(&grader, reply)
    }

    #[test]
    fn normalization_is_squads() {
        assert_eq!(normalize_answer("The  Beatles!"), "beatles");
        assert_eq!(normalize_answer("An Apple a day"), "apple day");
        assert_eq!(normalize_answer("“Paris”, France."), "paris france");
        assert_eq!(normalize_answer("U.S.A."), "usa");
        assert_eq!(normalize_answer("Theatre"), "theatre");
        assert_eq!(normalize_answer(" ... "), "");
    }

    #[test]
    fn short_answer_accepts_any_alias_despite_case_articles_and_punctuation() {
        let aliases = ["John F. Kennedy", "JFK", "Kennedy"];
        assert!(short(&aliases, "JFK").correct);
        assert!(short(&aliases, "jfk.").correct);
        assert!(short(&aliases, "**Kennedy**").correct);
        assert!(short(&aliases, "The answer is John F Kennedy.").correct);
        assert!(short(&aliases, "Answer: john f. kennedy").correct);
        assert!(short(&["The Beatles"], "Beatles").correct);
        assert!(short(&["Beatles"], "the beatles!").correct);
        let wrong = short(&aliases, "Lyndon B. Johnson");
        assert!(!wrong.correct);
        assert_eq!(wrong.extracted.as_deref(), Some("lyndon b johnson"));
        let reason = wrong.reason.unwrap();
        assert!(reason.contains("`jfk`"), "{reason}");
    }

    #[test]
    fn short_answer_reads_the_first_line_or_the_marked_answer() {
        assert!(short(&["Canberra"], "Canberra.\n\nIt became the capital in 1913.").correct);
        assert!(short(&["Canberra"], "Answer:\nCanberra").correct);
        assert!(
            short(
                &["Canberra"],
                "Let me think.\nSydney is big.\nAnswer: Canberra"
            )
            .correct
        );
        assert!(!short(&["Canberra"], "Sydney.\n\nSome say Canberra.").correct);
    }

    #[test]
    fn short_answer_accepts_a_short_sentence_but_not_a_long_one_or_a_negation() {
        assert!(short(&["Abraham Lincoln"], "It was Abraham Lincoln.").correct);
        assert!(!short(&["Paris"], "Not Paris.").correct);
        assert!(!short(&["Paris"], "It is definitely not Paris").correct);
        let long = "The capital of France, which many people visit every year, is Paris.";
        assert!(!short(&["Paris"], long).correct);
        // An alias is matched as whole words only.
        assert!(!short(&["Rome"], "Romeo").correct);
        assert!(!short(&["", "!!"], "anything").correct);
    }

    #[test]
    fn reasoning_blocks_and_empty_replies() {
        assert!(short(&["Paris"], "<think>France... capital?</think>\nParis").correct);
        assert!(short(&["Paris"], "France... capital?</think>Paris").correct);
        let cut = short(&["Paris"], "<think>France... capital? It could be Par");
        assert!(!cut.correct);
        assert!(cut.reason.unwrap().contains("<think>"));
        let empty = exact("x", "  \n ");
        assert_eq!(empty.reason.as_deref(), Some("empty reply"));
    }

    #[test]
    fn judge_is_not_gradable_here() {
        let grade = grade_reply(
            &Grader::Judge {
                reference: "a".into(),
            },
            "a",
        );
        assert!(!grade.correct);
        assert_eq!(grade.reason.as_deref(), Some("needs an LLM judge"));
    }

    #[test]
    fn exact_text_strips_decoration_but_keeps_case() {
        assert!(exact("tenalp", "tenalp").correct);
        assert!(exact("tenalp", "`tenalp`.").correct);
        assert!(exact("tenalp", "**\"tenalp\"**").correct);
        assert!(exact("tenalp", "The answer is **tenalp**.").correct);
        assert!(exact("tenalp", "The reversed word is \"tenalp\".").correct);
        assert!(exact("tenalp", "Reversed: tenalp").correct);
        assert!(exact("2024-03-01", "2024-03-01.").correct);
        assert!(exact("Friday", "March 1, 2024 was a Friday.\n\nAnswer: Friday").correct);
        assert!(exact("02:15", "22:30 + 3 hours 45 minutes = 02:15").correct);
        assert!(exact("02:15", "```\n02:15\n```").correct);
        let case = exact("Tenalp", "tenalp");
        assert!(!case.correct);
        assert_eq!(
            case.reason.as_deref(),
            Some("read `tenalp`, expected `Tenalp`")
        );
        assert!(!exact("1, 2, 3", "1,2,3").correct);
        assert!(exact("1, 2, 3", "The sorted list is 1, 2, 3.").correct);
    }

    #[test]
    fn exact_text_reads_first_and_last_lines_without_a_marker() {
        assert!(exact("olleh", "olleh\n\nI reversed h-e-l-l-o.").correct);
        assert!(exact("olleh", "Reversing hello letter by letter:\nolleh").correct);
        assert!(!exact("olleh", "Reversing:\nthe letters\nare olleh\nthat is all").correct);
        // With a marker only the marked line counts.
        assert!(!exact("olleh", "olleh\nAnswer: ollhe").correct);
    }

    #[test]
    fn clean_exact_removes_nested_decoration() {
        assert_eq!(clean_exact(" **`abc`**. "), "abc");
        assert_eq!(clean_exact("\"abc.\""), "abc");
        assert_eq!(clean_exact("a*b"), "a*b");
        assert_eq!(clean_exact("\""), "\"");
    }
}
