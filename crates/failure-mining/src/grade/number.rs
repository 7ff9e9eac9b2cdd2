//! Numbers: which number is the reply's answer, and is it within tolerance?
//!
//! The answer is, in this order:
//! 1. after the last answer marker (or `####`, or `\boxed{`): the first number of that sentence,
//!    or the first number after the sentence's last `=` when it has one ("Answer: 3 + 4 = 7"
//!    reads 7, "The answer is 12. Check: 12 - 2 = 10" reads 12);
//! 2. else the last number inside markdown bold (`**$1,000**`), the way chat models flag results;
//! 3. else the last number in the reply (worked steps come before their result).
//!
//! A number is read with thousands separators ("1,000", groups of exactly three digits after a
//! first group of one to three), a currency sign before it ("$1,000", "-$5", "$-5"), a sign
//! ("-5", "−5", only where the sign is not a binary minus: not after a letter, digit or closing
//! bracket), decimals ("2.5", ".5"), a simple fraction written tight ("3/4" reads 0.75; "3 / 4" reads
//! 3 and 4, and "3/4/2024" is a date, not a fraction), and anything after it (a percent sign, a
//! unit). "50%" reads 50: prompts that want a percentage ask for the number of percent. Number
//! words ("five") and scientific notation are not read: prompts ask for digits.

use std::sync::LazyLock;

use regex::Regex;

use super::{ANSWER_MARKER, Grade};

static NUMBER_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"####|\\boxed\{").expect("valid regex"));

static SENTENCE_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[.;!?]\s").expect("valid regex"));

static BOLD_SPAN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\*\*([^*]+)\*\*|__([^_]+)__").expect("valid regex"));

/// Float slack on top of an item's tolerance, relative to the expected value: answers computed in
/// f64 (unit conversions) should not fail on the last bit.
const RELATIVE_SLACK: f64 = 1e-9;

pub(super) fn grade(value: f64, tolerance: f64, text: &str) -> Grade {
    let Some(read) = read_answer_number(text) else {
        return Grade::wrong(None, format!("no number in the reply, expected {value}"));
    };
    let slack = tolerance.abs() + RELATIVE_SLACK * value.abs().max(1.0);
    let extracted = read.to_string();
    if (read - value).abs() <= slack {
        Grade::right(extracted)
    } else if tolerance > 0.0 {
        Grade::wrong(
            Some(extracted.clone()),
            format!("expected {value} (±{tolerance}), read {extracted}"),
        )
    } else {
        Grade::wrong(
            Some(extracted.clone()),
            format!("expected {value}, read {extracted}"),
        )
    }
}

/// The reply's answer number by the rule in the module docs.
pub(crate) fn read_answer_number(text: &str) -> Option<f64> {
    let last_marker_end = ANSWER_MARKER
        .find_iter(text)
        .chain(NUMBER_MARKER.find_iter(text))
        .map(|m| m.end())
        .max();
    if let Some(end) = last_marker_end {
        let rest = text[end..].trim_start();
        let line = rest.lines().next().unwrap_or("");
        // The answer's sentence only: "12. Check: 12 - 2 = 10" answers 12.
        let sentence = SENTENCE_END.split(line).next().unwrap_or(line);
        let after_equals = sentence
            .rfind('=')
            .map_or(sentence, |at| &sentence[at + 1..]);
        if let Some(number) = scan_numbers(after_equals).first() {
            return Some(*number);
        }
    }
    let bold = BOLD_SPAN
        .captures_iter(text)
        .filter_map(|c| {
            let inner = c.get(1).or_else(|| c.get(2))?;
            scan_numbers(inner.as_str()).last().copied()
        })
        .last();
    bold.or_else(|| scan_numbers(text).last().copied())
}

fn is_sign(c: char) -> bool {
    c == '-' || c == '−'
}

fn is_currency(c: char) -> bool {
    matches!(c, '$' | '€' | '£' | '¥')
}

/// Every number in `text`, in order, read as the module docs say.
pub(crate) fn scan_numbers(text: &str) -> Vec<f64> {
    let chars: Vec<char> = text.chars().collect();
    let digit_at = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    let mut numbers = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_with_point = chars[i] == '.' && digit_at(i + 1) && (i == 0 || !digit_at(i - 1));
        if !chars[i].is_ascii_digit() && !starts_with_point {
            i += 1;
            continue;
        }
        let start = i;
        let mut literal = String::new();
        let mut is_integer = true;
        while digit_at(i) {
            literal.push(chars[i]);
            i += 1;
        }
        // Thousands groups: only after a first group of 1-3 digits, and only exactly three digits
        // not followed by a fourth ("1,2,3" is a list, "1,0000" is not 10000).
        if (1..=3).contains(&literal.len()) {
            while chars.get(i) == Some(&',') && (1..=3).all(|k| digit_at(i + k)) && !digit_at(i + 4)
            {
                literal.extend(&chars[i + 1..i + 4]);
                i += 4;
            }
        }
        if chars.get(i) == Some(&'.') && digit_at(i + 1) {
            is_integer = false;
            literal.push('.');
            i += 1;
            while digit_at(i) {
                literal.push(chars[i]);
                i += 1;
            }
        }
        let Ok(mut value) = literal.parse::<f64>() else {
            continue;
        };
        // "4" in "3/4/2024" is a date's part, not the numerator of "4/2024".
        let after_slash = start >= 2 && chars[start - 1] == '/' && digit_at(start - 2);
        let tight_fraction =
            is_integer && !after_slash && chars.get(i) == Some(&'/') && digit_at(i + 1);
        if tight_fraction {
            let mut end = i + 1;
            while digit_at(end) {
                end += 1;
            }
            let is_date = chars.get(end) == Some(&'/') && digit_at(end + 1);
            let denominator: String = chars[i + 1..end].iter().collect();
            if let (false, Ok(denominator)) = (is_date, denominator.parse::<f64>())
                && denominator != 0.0
            {
                value /= denominator;
                i = end;
            }
        }
        if negative_before(&chars, start) {
            value = -value;
        }
        numbers.push(value);
    }
    numbers
}

/// Whether a minus sign belongs to the number starting at `start`: "-5", "-$5", "$-5", "(-5)",
/// "= -5"; not "5-3" or "x-3", where it is an operator or a hyphen.
fn negative_before(chars: &[char], start: usize) -> bool {
    let mut at = start;
    let mut step_back = |test: fn(char) -> bool| {
        let found = at > 0 && test(chars[at - 1]);
        if found {
            at -= 1;
        }
        found
    };
    let had_currency = step_back(is_currency);
    if !step_back(is_sign) {
        return false;
    }
    if !had_currency {
        step_back(is_currency);
    }
    at == 0 || {
        let before = chars[at - 1];
        !(before.is_alphanumeric() || matches!(before, ')' | ']' | '.' | '_'))
    }
}

#[cfg(test)]
mod tests {
    use records::mining::Grader;

    use super::*;
    use crate::grade::grade_reply;

    fn number(value: f64, tolerance: f64, reply: &str) -> Grade {
        grade_reply(&Grader::Number { value, tolerance }, reply)
    }

    #[test]
    fn scans_separators_currency_signs_decimals_fractions() {
        assert_eq!(scan_numbers("$1,000"), [1000.0]);
        assert_eq!(scan_numbers("-$1,234.50 and $-7"), [-1234.5, -7.0]);
        assert_eq!(scan_numbers("12,345,678 people"), [12345678.0]);
        assert_eq!(scan_numbers("1,2,3"), [1.0, 2.0, 3.0]);
        assert_eq!(scan_numbers("1000,000"), [1000.0, 0.0]);
        assert_eq!(scan_numbers("3/4 of .5"), [0.75, 0.5]);
        assert_eq!(scan_numbers("3 / 4"), [3.0, 4.0]);
        assert_eq!(scan_numbers("on 3/4/2024"), [3.0, 4.0, 2024.0]);
        assert_eq!(scan_numbers("1/0"), [1.0, 0.0]);
        assert_eq!(
            scan_numbers("5-3 = 2, x-3, (-4), −6"),
            [5.0, 3.0, 2.0, 3.0, -4.0, -6.0]
        );
        assert_eq!(scan_numbers("50% and 2.5kg."), [50.0, 2.5]);
        assert_eq!(scan_numbers("2.5.3"), [2.5, 3.0]);
        assert!(scan_numbers("no digits").is_empty());
    }

    #[test]
    fn reads_the_marked_bold_or_last_number() {
        assert_eq!(
            read_answer_number("The answer is **$1,000**."),
            Some(1000.0)
        );
        assert_eq!(read_answer_number("3 + 4 = 7, times 2 = 14"), Some(14.0));
        assert_eq!(read_answer_number("Answer: 3 + 4 = 7"), Some(7.0));
        assert_eq!(
            read_answer_number("The answer is 12. Check: 12 - 2 = 10"),
            Some(12.0)
        );
        assert_eq!(read_answer_number("Answer:\n\n42"), Some(42.0));
        assert_eq!(read_answer_number("steps 1 2 3\n#### 1,234"), Some(1234.0));
        assert_eq!(read_answer_number(r"so $\boxed{-3/4}$"), Some(-0.75));
        assert_eq!(read_answer_number("**17** apples (12 + 5)"), Some(17.0));
        assert_eq!(
            read_answer_number("She pays 12 dollars for 3 pens"),
            Some(3.0)
        );
        // A marker with no number after it falls through to the other rules.
        assert_eq!(
            read_answer_number("The answer is below.\n 8 + 1 = 9"),
            Some(9.0)
        );
    }

    #[test]
    fn grades_with_tolerance_and_says_what_it_read() {
        assert!(number(1000.0, 0.0, "The answer is **$1,000**.").correct);
        assert!(number(1000.0, 0.0, "$1,000.00").correct);
        assert!(number(-17.0, 0.0, "The result is -17.").correct);
        assert!(number(0.75, 0.0, "3/4").correct);
        assert!(number(2.35, 0.01, "about 2.3456 miles").correct);
        assert!(!number(2.35, 0.01, "2.3 miles").correct);
        assert!(number(0.1 + 0.2, 0.0, "0.3").correct);
        let wrong = number(1000.0, 0.0, "It costs $100.");
        assert!(!wrong.correct);
        assert_eq!(wrong.extracted.as_deref(), Some("100"));
        assert_eq!(wrong.reason.as_deref(), Some("expected 1000, read 100"));
        let tolerant = number(2.35, 0.01, "2.5");
        assert_eq!(
            tolerant.reason.as_deref(),
            Some("expected 2.35 (±0.01), read 2.5")
        );
        let none = number(3.0, 0.0, "three");
        assert_eq!(
            none.reason.as_deref(),
            Some("no number in the reply, expected 3")
        );
        // A binary minus is not a sign: 5-8 is the expression, -3 its value.
        assert!(!number(-8.0, 0.0, "5-8").correct);
    }
}
