//! Generated task families with exact answers, deterministic for a seed.
//!
//! Each family draws tasks from its own random stream (ChaCha8 seeded with the build's seed
//! mixed with a hash of the family's name), so adding a family or changing one family's count
//! changes no other family's items. Tasks are drawn until `count` distinct ones are found: two
//! draws are the same task when their bare question and gold agree, whatever the wording of
//! their instructions.

mod arithmetic;
mod calendar;
mod instructions;
mod text;
mod units;
mod vocabulary;

use std::collections::HashSet;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use records::mining::Grader;

use crate::error::{Error, Result};
use crate::item::ItemDraft;

/// The families this module generates.
pub const FAMILIES: &[&str] = &[
    "arithmetic_multistep",
    "word_problems",
    "unit_conversion",
    "date_arithmetic",
    "time_arithmetic",
    "string_manipulation",
    "list_manipulation",
    "instruction_following",
];

/// One generated task, before it is given its family and source.
struct Task {
    question: String,
    prompt: String,
    gold: String,
    grader: Grader,
}

type Draw = fn(&mut ChaCha8Rng) -> Task;

fn draw_for(family: &str) -> Option<Draw> {
    let draw: Draw = match family {
        "arithmetic_multistep" => arithmetic::draw_expression,
        "word_problems" => arithmetic::draw_word_problem,
        "unit_conversion" => units::draw_conversion,
        "date_arithmetic" => calendar::draw_date_task,
        "time_arithmetic" => calendar::draw_time_task,
        "string_manipulation" => text::draw_string_task,
        "list_manipulation" => text::draw_list_task,
        "instruction_following" => instructions::draw_writing_task,
        _ => return None,
    };
    Some(draw)
}

/// Draws allowed per requested item before a family counts as exhausted. Every family's space is
/// far larger than a test set needs; the cap turns a bug that repeats tasks into an error instead
/// of an endless loop.
const DRAWS_PER_ITEM: usize = 50;

/// `count` items of `family`, the same for the same `seed`.
pub fn generate(family: &str, count: usize, seed: u64) -> Result<Vec<ItemDraft>> {
    let draw = draw_for(family).ok_or_else(|| Error::UnknownFamily {
        family: family.to_string(),
        known: FAMILIES.join(", "),
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(family));
    let mut seen = HashSet::new();
    let mut drafts = Vec::with_capacity(count);
    let max_draws = count.saturating_mul(DRAWS_PER_ITEM).saturating_add(1000);
    let mut draws = 0;
    while drafts.len() < count {
        if draws == max_draws {
            return Err(Error::FamilyExhausted {
                family: family.to_string(),
                requested: count,
                distinct: drafts.len(),
                draws,
            });
        }
        draws += 1;
        let task = draw(&mut rng);
        if !seen.insert((task.question.clone(), task.gold.clone())) {
            continue;
        }
        drafts.push(ItemDraft {
            family: family.to_string(),
            source: format!("generated:{family}"),
            prompt: task.prompt,
            question: task.question,
            gold: task.gold,
            grader: task.grader,
        });
    }
    Ok(drafts)
}

/// FNV-1a: a hash of the family's name that is the same in every build and Rust version
/// (std's hasher promises neither).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A number as a person writes it: at most `decimals` decimals, no trailing zeros, no "-0".
fn format_number(value: f64, decimals: u32) -> String {
    let scale = 10f64.powi(decimals as i32);
    let rounded = (value * scale).round() / scale;
    let text = format!("{rounded:.prec$}", prec = decimals as usize);
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    if text == "-0" { "0".to_string() } else { text }
}

/// A Number grader for an exact integer answer.
fn integer_answer(value: i64) -> Grader {
    Grader::Number {
        value: value as f64,
        tolerance: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::grade_reply;

    #[test]
    fn unknown_family_names_the_known_ones() {
        let error = generate("poetry", 3, 1).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("`poetry`"), "{message}");
        assert!(
            message.contains("word_problems, unit_conversion"),
            "{message}"
        );
    }

    #[test]
    fn every_family_is_deterministic_distinct_and_sized() {
        for family in FAMILIES {
            let first = generate(family, 300, 7).unwrap();
            assert_eq!(first.len(), 300, "{family}");
            assert_eq!(first, generate(family, 300, 7).unwrap(), "{family}");
            let other = generate(family, 300, 8).unwrap();
            assert_ne!(first, other, "{family}");
            let prompts: HashSet<&str> = first.iter().map(|d| d.prompt.as_str()).collect();
            assert_eq!(prompts.len(), first.len(), "{family}: duplicate prompts");
            // A smaller request is a prefix of a larger one: the stream does not depend on count.
            assert_eq!(
                generate(family, 20, 7).unwrap()[..],
                first[..20],
                "{family}"
            );
            for draft in &first {
                assert_eq!(draft.family, *family);
                assert_eq!(draft.source, format!("generated:{family}"));
                assert!(
                    !draft.gold.is_empty() && !draft.question.is_empty(),
                    "{draft:?}"
                );
                assert!(draft.prompt.contains(&draft.question), "{draft:?}");
            }
        }
        assert!(generate("word_problems", 0, 1).unwrap().is_empty());
    }

    /// The gold answer as a chat model would write it.
    fn typical_reply(grader: &Grader) -> String {
        match grader {
            Grader::Number { value, .. } => format!("The answer is {}.", format_number(*value, 6)),
            Grader::ExactText { expected } => format!("Answer: {expected}"),
            other => panic!("generated families use exact graders, not {other:?}"),
        }
    }

    /// A near miss: one more than the number, or the text with one character changed.
    fn perturbed_reply(grader: &Grader) -> String {
        match grader {
            Grader::Number { value, tolerance } => {
                format!(
                    "The answer is {}.",
                    format_number(value + 1.0 + tolerance, 6)
                )
            }
            Grader::ExactText { expected } => {
                let mut chars: Vec<char> = expected.chars().collect();
                let last = chars.len() - 1;
                chars[last] = if chars[last] == '7' { '8' } else { '7' };
                format!("Answer: {}", chars.into_iter().collect::<String>())
            }
            other => panic!("generated families use exact graders, not {other:?}"),
        }
    }

    #[test]
    fn gold_as_a_reply_is_right_and_a_near_miss_is_wrong() {
        for family in FAMILIES.iter().filter(|f| **f != "instruction_following") {
            for draft in generate(family, 400, 11).unwrap() {
                let right = grade_reply(&draft.grader, &typical_reply(&draft.grader));
                assert!(right.correct, "{family}: {draft:?} {right:?}");
                let near_miss = perturbed_reply(&draft.grader);
                let wrong = grade_reply(&draft.grader, &near_miss);
                assert!(!wrong.correct, "{family}: {draft:?} `{near_miss}`");
            }
        }
    }

    #[test]
    fn numbers_are_written_plainly() {
        assert_eq!(format_number(2.0, 2), "2");
        assert_eq!(format_number(2.346, 2), "2.35");
        assert_eq!(format_number(-0.001, 2), "0");
        assert_eq!(format_number(1234.5, 2), "1234.5");
        assert_ne!(fnv1a("word_problems"), fnv1a("unit_conversion"));
    }
}
