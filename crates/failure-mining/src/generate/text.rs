//! `string_manipulation` (reverse, count, index, change case, remove vowels, concatenate, ...)
//! and `list_manipulation` (sort, dedupe, k-th largest, sum, filter, ...). Words are common
//! English words or, one time in three, made-up ones, so a model cannot answer from memory of
//! the word's spelling. Lists are written and answered as items separated by ", ".

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use records::mining::Grader;

use super::vocabulary::{WORDS, made_up_word, pick};
use super::{Task, integer_answer};

const VOWELS: &[char] = &['a', 'e', 'i', 'o', 'u'];

fn draw_word(rng: &mut ChaCha8Rng) -> String {
    if rng.random_bool(1.0 / 3.0) {
        made_up_word(rng)
    } else {
        pick(rng, WORDS).to_string()
    }
}

/// "1st", "2nd", "3rd", "4th", "11th", "22nd".
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// The word with each letter's case drawn at random (at least one of each case).
fn mixed_case(rng: &mut ChaCha8Rng, word: &str) -> String {
    loop {
        let mixed: String = word
            .chars()
            .map(|c| {
                if rng.random_bool(0.5) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        if mixed.chars().any(|c| c.is_ascii_uppercase())
            && mixed.chars().any(|c| c.is_ascii_lowercase())
        {
            return mixed;
        }
    }
}

/// What a string task asks and how its answer is graded.
struct Asked {
    question: String,
    instruction: &'static str,
    gold: String,
    grader: Grader,
}

fn text_answer(question: String, instruction: &'static str, expected: String) -> Asked {
    Asked {
        question,
        instruction,
        gold: expected.clone(),
        grader: Grader::ExactText { expected },
    }
}

fn number_answer(question: String, instruction: &'static str, value: i64) -> Asked {
    Asked {
        question,
        instruction,
        gold: value.to_string(),
        grader: integer_answer(value),
    }
}

const WORD_RESULT: &str = "Give only the resulting word.";
const NUMBER_RESULT: &str = "Give only the number.";

pub(super) fn draw_string_task(rng: &mut ChaCha8Rng) -> Task {
    let word = draw_word(rng);
    let asked = match rng.random_range(0..12) {
        0 => text_answer(
            format!("Reverse the letters of the word \"{word}\"."),
            WORD_RESULT,
            word.chars().rev().collect(),
        ),
        1 => {
            let letters: Vec<char> = word.chars().collect();
            let letter = if rng.random_bool(0.8) {
                *pick(rng, &letters)
            } else {
                char::from(rng.random_range(b'a'..=b'z'))
            };
            let count = word.chars().filter(|c| *c == letter).count();
            number_answer(
                format!(
                    "How many times does the letter \"{letter}\" appear in the word \"{word}\"?"
                ),
                NUMBER_RESULT,
                count as i64,
            )
        }
        2 => {
            let letters: Vec<char> = word.chars().collect();
            let at = rng.random_range(0..letters.len());
            text_answer(
                format!(
                    "What is the {} letter of the word \"{word}\"?",
                    ordinal(at + 1)
                ),
                "Give only the letter.",
                letters[at].to_string(),
            )
        }
        3 => text_answer(
            format!("Write the word \"{word}\" in uppercase letters."),
            WORD_RESULT,
            word.to_uppercase(),
        ),
        4 => {
            let mixed = mixed_case(rng, &word);
            text_answer(
                format!("Write \"{mixed}\" in lowercase letters."),
                WORD_RESULT,
                word.clone(),
            )
        }
        5 => {
            let shown = if rng.random_bool(0.5) {
                word.to_uppercase()
            } else {
                word.clone()
            };
            text_answer(
                format!(
                    "Capitalize \"{shown}\": make its first letter uppercase and every other letter lowercase."
                ),
                WORD_RESULT,
                capitalized(&word),
            )
        }
        6 => text_answer(
            format!("Remove every vowel (a, e, i, o, u) from the word \"{word}\"."),
            WORD_RESULT,
            word.chars().filter(|c| !VOWELS.contains(c)).collect(),
        ),
        7 => {
            let mut words = vec![word.clone(), draw_word(rng)];
            if rng.random_bool(0.4) {
                words.push(draw_word(rng));
            }
            let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
            text_answer(
                format!(
                    "Join the words {} into one word, in this order, with nothing between them.",
                    quoted.join(", ")
                ),
                WORD_RESULT,
                words.concat(),
            )
        }
        8 => number_answer(
            format!("How many letters does the word \"{word}\" have?"),
            NUMBER_RESULT,
            word.chars().count() as i64,
        ),
        9 => {
            let mut words = vec![word.clone()];
            for _ in 0..rng.random_range(2..=5) {
                words.push(pick(rng, WORDS).to_string());
            }
            let initials: String = words.iter().filter_map(|w| w.chars().next()).collect();
            text_answer(
                format!(
                    "Write the first letter of each of these words, in order, as one lowercase string: {}.",
                    words.join(", ")
                ),
                "Give only that string.",
                initials,
            )
        }
        10 => {
            let mut letters: Vec<char> = word.chars().collect();
            letters.sort_unstable();
            text_answer(
                format!("Sort the letters of the word \"{word}\" in alphabetical order."),
                "Give only the sorted letters as one word.",
                letters.into_iter().collect(),
            )
        }
        _ => {
            let letters: Vec<char> = word.chars().collect();
            let from = *pick(rng, &letters);
            let to = loop {
                let to = char::from(rng.random_range(b'a'..=b'z'));
                if to != from {
                    break to;
                }
            };
            text_answer(
                format!("Replace every \"{from}\" in the word \"{word}\" with \"{to}\"."),
                WORD_RESULT,
                word.replace(from, &to.to_string()),
            )
        }
    };
    task(asked)
}

fn task(asked: Asked) -> Task {
    Task {
        prompt: format!("{}\n{}", asked.question, asked.instruction),
        question: asked.question,
        gold: asked.gold,
        grader: asked.grader,
    }
}

fn joined<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

const LIST_RESULT: &str =
    "Give only the resulting list, with items separated by a comma and a space (like: a, b, c).";

fn draw_numbers(rng: &mut ChaCha8Rng, length: usize) -> Vec<i64> {
    let negatives = rng.random_bool(0.25);
    (0..length)
        .map(|_| {
            if negatives {
                rng.random_range(-50..=99)
            } else {
                rng.random_range(1..=99)
            }
        })
        .collect()
}

fn draw_distinct_numbers(rng: &mut ChaCha8Rng, length: usize) -> Vec<i64> {
    let mut pool: Vec<i64> = if rng.random_bool(0.25) {
        (-50..=99).collect()
    } else {
        (1..=99).collect()
    };
    pool.shuffle(rng);
    pool.truncate(length);
    pool
}

fn draw_words(rng: &mut ChaCha8Rng, length: usize) -> Vec<&'static str> {
    WORDS.choose_multiple(rng, length).copied().collect()
}

pub(super) fn draw_list_task(rng: &mut ChaCha8Rng) -> Task {
    let length = rng.random_range(4..=10);
    let asked = match rng.random_range(0..13) {
        kind @ (0 | 1) => {
            let numbers = draw_numbers(rng, length);
            let mut sorted = numbers.clone();
            sorted.sort_unstable();
            let order = if kind == 0 {
                "ascending"
            } else {
                sorted.reverse();
                "descending"
            };
            text_answer(
                format!("Sort these numbers in {order} order: {}.", joined(&numbers)),
                LIST_RESULT,
                joined(&sorted),
            )
        }
        2 => {
            let words = draw_words(rng, length.min(8));
            let mut sorted = words.clone();
            sorted.sort_unstable();
            text_answer(
                format!(
                    "Sort these words in alphabetical order: {}.",
                    joined(&words)
                ),
                LIST_RESULT,
                joined(&sorted),
            )
        }
        3 => {
            // Duplicates made certain: some items are drawn again from the list itself.
            let mut numbers = draw_numbers(rng, length);
            for _ in 0..rng.random_range(1..=3) {
                let repeated = *pick(rng, &numbers);
                let at = rng.random_range(0..=numbers.len());
                numbers.insert(at, repeated);
            }
            let mut kept: Vec<i64> = Vec::new();
            for n in &numbers {
                if !kept.contains(n) {
                    kept.push(*n);
                }
            }
            text_answer(
                format!(
                    "Remove the duplicates from this list, keeping the first occurrence of each number in its place: {}.",
                    joined(&numbers)
                ),
                LIST_RESULT,
                joined(&kept),
            )
        }
        kind @ (4 | 5) => {
            let numbers = draw_distinct_numbers(rng, length);
            let k = rng.random_range(2..=3.min(length));
            let mut sorted = numbers.clone();
            sorted.sort_unstable();
            let (which, value) = if kind == 4 {
                ("largest", sorted[sorted.len() - k])
            } else {
                ("smallest", sorted[k - 1])
            };
            number_answer(
                format!(
                    "What is the {} {which} number in this list: {}?",
                    ordinal(k),
                    joined(&numbers)
                ),
                NUMBER_RESULT,
                value,
            )
        }
        6 => {
            let numbers = draw_numbers(rng, length);
            number_answer(
                format!("What is the sum of these numbers: {}?", joined(&numbers)),
                NUMBER_RESULT,
                numbers.iter().sum(),
            )
        }
        7 => {
            let words: Vec<String> = (0..rng.random_range(5..=20))
                .map(|_| draw_word(rng))
                .collect();
            number_answer(
                format!("How many items are in this list: {}?", joined(&words)),
                NUMBER_RESULT,
                words.len() as i64,
            )
        }
        8 => {
            let words = draw_words(rng, length);
            let at = rng.random_range(0..words.len());
            let position = if at + 1 == words.len() && rng.random_bool(0.5) {
                "last".to_string()
            } else {
                ordinal(at + 1)
            };
            text_answer(
                format!(
                    "What is the {position} item in this list: {}?",
                    joined(&words)
                ),
                "Give only that item.",
                words[at].to_string(),
            )
        }
        9 => {
            let numbers = draw_numbers(rng, length);
            let evens: Vec<i64> = numbers.iter().copied().filter(|n| n % 2 == 0).collect();
            if evens.is_empty() || evens.len() == numbers.len() {
                return draw_list_task(rng);
            }
            text_answer(
                format!(
                    "Keep only the even numbers of this list, in their order: {}.",
                    joined(&numbers)
                ),
                LIST_RESULT,
                joined(&evens),
            )
        }
        10 => {
            let words: Vec<String> = (0..length).map(|_| draw_word(rng)).collect();
            let reversed: Vec<String> = words.iter().rev().cloned().collect();
            text_answer(
                format!("Write this list in reverse order: {}.", joined(&words)),
                LIST_RESULT,
                joined(&reversed),
            )
        }
        11 => {
            let numbers = draw_numbers(rng, length);
            let (which, value) = if rng.random_bool(0.5) {
                ("largest", *numbers.iter().max().expect("non-empty"))
            } else {
                ("smallest", *numbers.iter().min().expect("non-empty"))
            };
            number_answer(
                format!(
                    "What is the {which} number in this list: {}?",
                    joined(&numbers)
                ),
                NUMBER_RESULT,
                value,
            )
        }
        _ => {
            let numbers: Vec<i64> = (0..length + 4).map(|_| rng.random_range(1..=9)).collect();
            let target = *pick(rng, &numbers);
            number_answer(
                format!(
                    "How many times does {target} appear in this list: {}?",
                    joined(&numbers)
                ),
                NUMBER_RESULT,
                numbers.iter().filter(|n| **n == target).count() as i64,
            )
        }
    };
    task(asked)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn helpers() {
        let names: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].map(ordinal).to_vec();
        assert_eq!(
            names,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"
            ]
        );
        assert_eq!(capitalized("pLANET"), "Planet");
        assert_eq!(joined(&[3, -1]), "3, -1");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mixed = mixed_case(&mut rng, "planet");
        assert_eq!(mixed.to_lowercase(), "planet");
        assert_ne!(mixed, "planet");
        assert_ne!(mixed, "PLANET");
    }

    #[test]
    fn a_string_task_states_its_answer() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut seen_reverse = false;
        for _ in 0..300 {
            let task = draw_string_task(&mut rng);
            if let Some(word) = task
                .question
                .strip_prefix("Reverse the letters of the word \"")
            {
                let word = word.trim_end_matches("\".");
                let reversed: String = word.chars().rev().collect();
                assert_eq!(task.gold, reversed);
                seen_reverse = true;
            }
        }
        assert!(seen_reverse);
    }
}
