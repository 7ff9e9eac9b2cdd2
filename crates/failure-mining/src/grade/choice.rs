//! Multiple choice, graded generatively: which choice does the reply name?
//!
//! The reply is read in tiers, the first tier that names anything decides, and two different
//! choices named in that tier make the reply ambiguous (wrong):
//! 1. declared letters: "answer is B", "Answer: (B)", "the correct option is B";
//! 2. the whole reply is one choice's text (normalised as SQuAD does);
//! 3. lines that start with a letter form: "B", "(B)", "B.", "B)", "B:";
//! 4. parenthesised letters anywhere: "so (B)." (explanations mention the other choices' texts,
//!    so a marked letter is the stronger signal);
//! 5. choices whose full text appears in the reply as whole words (an occurrence inside an
//!    occurrence of a longer choice, "red" inside "red wine", does not count);
//! 6. lone capital letters anywhere: "I pick B.".
//!
//! Letters are capitals only, so the article "a" is never read as choice A; in tier 6 a bare "A"
//! or "I" followed by a lowercase word ("A dog", "I think") is read as a word, not a letter.
//! Letters beyond the number of choices are ignored.

use std::sync::LazyLock;

use regex::Regex;

use super::{Grade, normalize_answer, strip_bold};

static DECLARED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i:\b(?:answer|(?:correct|best|right)\s+(?:option|choice))\b)(?:\s+(?i:is|would\s+be|should\s+be)\b)?\s*[:\-=]?\s*[\(\[]?([A-Z])(?:[\)\]\.:,;!?]|\s|$)",
    )
    .expect("valid regex")
});

static PARENTHESISED_LETTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\(([A-Z])\)").expect("valid regex"));

static LINE_START_LETTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\(\[]?([A-Z])(?:[\)\]\.:]|$)").expect("valid regex"));

fn letter(index: usize) -> char {
    char::from(b'A' + index as u8)
}

fn index_of(letter: char, choices: usize) -> Option<usize> {
    let index = (letter as usize).checked_sub('A' as usize)?;
    (index < choices.min(26)).then_some(index)
}

pub(super) fn grade(choices: &[String], answer: usize, text: &str) -> Grade {
    let text = strip_bold(text);
    let named = named_choices(choices, &text);
    let describe = |index: usize| match choices.get(index) {
        Some(choice) => format!("{} ({choice})", letter(index)),
        None => letter(index).to_string(),
    };
    match named.as_slice() {
        [] => Grade::wrong(None, "names no choice"),
        [one] if *one == answer => Grade::right(letter(*one).to_string()),
        [one] => Grade::wrong(
            Some(letter(*one).to_string()),
            format!("names {}, expected {}", describe(*one), describe(answer)),
        ),
        several => {
            let letters: Vec<String> = several.iter().map(|i| letter(*i).to_string()).collect();
            Grade::wrong(
                None,
                format!(
                    "ambiguous: names {}; expected {}",
                    letters.join(" and "),
                    describe(answer)
                ),
            )
        }
    }
}

/// The distinct choices the first tier that names anything names, in order of appearance.
fn named_choices(choices: &[String], text: &str) -> Vec<usize> {
    let count = choices.len();
    let tiers: [&dyn Fn() -> Vec<usize>; 6] = [
        &|| {
            DECLARED
                .captures_iter(text)
                .filter_map(|c| c[1].chars().next())
                .filter_map(|l| index_of(l, count))
                .collect()
        },
        &|| whole_reply_choice(choices, text).into_iter().collect(),
        &|| {
            text.lines()
                .filter_map(|line| LINE_START_LETTER.captures(line.trim()))
                .filter_map(|c| c[1].chars().next())
                .filter_map(|l| index_of(l, count))
                .collect()
        },
        &|| {
            PARENTHESISED_LETTER
                .captures_iter(text)
                .filter_map(|c| c[1].chars().next())
                .filter_map(|l| index_of(l, count))
                .collect()
        },
        &|| contained_choices(choices, text),
        &|| lone_letters(text, count),
    ];
    for tier in tiers {
        let mut named: Vec<usize> = Vec::new();
        for index in tier() {
            if !named.contains(&index) {
                named.push(index);
            }
        }
        if !named.is_empty() {
            return named;
        }
    }
    Vec::new()
}

fn whole_reply_choice(choices: &[String], text: &str) -> Option<usize> {
    let reply = normalize_answer(text);
    if reply.is_empty() {
        return None;
    }
    choices
        .iter()
        .position(|choice| normalize_answer(choice) == reply)
}

fn contained_choices(choices: &[String], text: &str) -> Vec<usize> {
    let reply = normalize_answer(text);
    let words: Vec<&str> = reply.split(' ').collect();
    // Word ranges where each choice's normalised text occurs in the reply.
    let occurrences: Vec<Vec<(usize, usize)>> = choices
        .iter()
        .map(|choice| {
            let normalized = normalize_answer(choice);
            if normalized.is_empty() {
                return Vec::new();
            }
            let needle: Vec<&str> = normalized.split(' ').collect();
            if needle.len() > words.len() {
                return Vec::new();
            }
            words
                .windows(needle.len())
                .enumerate()
                .filter(|(_, window)| *window == needle.as_slice())
                .map(|(start, _)| (start, start + needle.len()))
                .collect()
        })
        .collect();
    let inside_longer = |i: usize, (start, end): (usize, usize)| {
        occurrences.iter().enumerate().any(|(j, spans)| {
            j != i
                && spans
                    .iter()
                    .any(|&(s, e)| s <= start && end <= e && e - s > end - start)
        })
    };
    (0..choices.len())
        .filter(|&i| occurrences[i].iter().any(|&span| !inside_longer(i, span)))
        .collect()
}

fn lone_letters(text: &str, count: usize) -> Vec<usize> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut found = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        let core = token
            .trim_start_matches(['(', '['])
            .trim_end_matches([')', ']', '.', ',', ':', ';', '!', '?']);
        let mut chars = core.chars();
        let (Some(l), None) = (chars.next(), chars.next()) else {
            continue;
        };
        if !l.is_ascii_uppercase() {
            continue;
        }
        let decorated = core.len() != token.len();
        let next_is_lowercase_word = tokens
            .get(at + 1)
            .and_then(|next| next.chars().next())
            .is_some_and(char::is_lowercase);
        if matches!(l, 'A' | 'I') && !decorated && next_is_lowercase_word {
            continue;
        }
        if let Some(index) = index_of(l, count) {
            found.push(index);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use records::mining::Grader;

    use crate::grade::grade_reply;

    fn grade(reply: &str) -> crate::grade::Grade {
        let grader = Grader::MultipleChoice {
            choices: vec![
                "London".into(),
                "Paris".into(),
                "Lyon".into(),
                "the city of Nice".into(),
            ],
            answer: 1,
        };
        grade_reply(&grader, reply)
    }

    #[test]
    fn letter_forms() {
        for reply in [
            "B",
            "(B)",
            "B.",
            "B) Paris",
            "Answer: B",
            "answer: (B)",
            "The answer is B) Paris.",
            "The correct answer is **B**.",
            "**B**",
            "I think the best choice is B, since Paris is the capital.",
            "Looking at the options, London and Lyon are not capitals... so (B).",
        ] {
            let grade = grade(reply);
            assert!(grade.correct, "{reply}: {grade:?}");
            assert_eq!(grade.extracted.as_deref(), Some("B"), "{reply}");
        }
    }

    #[test]
    fn choice_text_instead_of_letter() {
        assert!(grade("Paris").correct);
        assert!(grade("paris.").correct);
        assert!(grade("It is Paris, the capital of France.").correct);
        let nice = grade("the city of nice");
        assert_eq!(nice.extracted.as_deref(), Some("D"));
        assert!(!nice.correct);
    }

    #[test]
    fn wrong_none_and_ambiguous_say_which() {
        let wrong = grade("The answer is C.");
        assert!(!wrong.correct);
        assert_eq!(wrong.extracted.as_deref(), Some("C"));
        assert_eq!(
            wrong.reason.as_deref(),
            Some("names C (Lyon), expected B (Paris)")
        );
        let none = grade("I do not know.");
        assert_eq!(none.reason.as_deref(), Some("names no choice"));
        let two = grade("Answer: A\nAnswer: B");
        assert!(!two.correct);
        assert_eq!(
            two.reason.as_deref(),
            Some("ambiguous: names A and B; expected B (Paris)")
        );
        assert!(!grade("Either London or Paris.").correct);
    }

    #[test]
    fn articles_and_pronouns_are_not_letters() {
        // "a" and "I" as words; the answer comes from the choice's text.
        assert!(grade("I would say a visit to Paris settles it.").correct);
        assert!(!grade("A capital city of France").correct);
        // Declared letters win over the text of another choice.
        assert!(grade("The answer is B, not London.").correct);
        // A letter beyond the choices is not a choice.
        assert_eq!(
            grade("Answer: E").reason.as_deref(),
            Some("names no choice")
        );
    }

    #[test]
    fn a_choice_inside_a_longer_choice_is_not_counted_twice() {
        let grader = Grader::MultipleChoice {
            choices: vec!["red".into(), "red wine".into(), "water".into()],
            answer: 1,
        };
        assert!(grade_reply(&grader, "I would drink red wine with it.").correct);
        assert!(!grade_reply(&grader, "Red, obviously, but not red wine").correct);
    }
}
