//! `instruction_following`: open writing tasks on varied topics with one to three checkable
//! format constraints, in the manner of IFEval. Constraints are drawn from different kinds
//! (length, keywords, excluded words, JSON or bullets, case, start, end, no commas) and only in
//! combinations a reply can satisfy: JSON goes with no start/end phrase, commas ban or uppercase
//! (its keys are lowercase and it needs commas), and a word limit always leaves room for the
//! phrases, keywords and bullets the other constraints require.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use records::mining::{Constraint, Grader};

use super::Task;
use super::vocabulary::pick;
use crate::grade::{describe_constraint, word_count};

/// A task template (each `{}` filled from the matching slot list) and its slot lists.
type Template = (&'static str, &'static [&'static [&'static str]]);

const TEMPLATES: &[Template] = &[
    (
        "Write a short poem about {}.",
        &[&[
            "the sea at dawn",
            "a forgotten umbrella",
            "city lights",
            "the first snow",
            "an old bookshop",
            "a lighthouse keeper",
            "a garden after rain",
            "a long train ride",
            "a cat asleep in the sun",
            "the last day of summer",
            "a mountain lake",
            "a market at night",
        ]],
    ),
    (
        "Write a product description for {}.",
        &[&[
            "a reusable water bottle",
            "noise-cancelling headphones",
            "a folding bicycle",
            "a solar-powered lamp",
            "a smart thermostat",
            "a hiking backpack",
            "a cast-iron pan",
            "an electric toothbrush",
            "a standing desk",
            "a picture book for children",
            "a wool blanket",
            "a portable speaker",
        ]],
    ),
    (
        "Write an email to {} about {}.",
        &[
            &[
                "your manager",
                "a neighbor",
                "your landlord",
                "a teacher",
                "a client",
                "your team",
            ],
            &[
                "a delayed project",
                "a noisy party",
                "a broken heater",
                "an upcoming trip",
                "a schedule change",
                "their help last week",
                "a new recycling plan",
            ],
        ],
    ),
    (
        "Explain {} to a ten-year-old.",
        &[&[
            "photosynthesis",
            "gravity",
            "how vaccines work",
            "why the sky is blue",
            "inflation",
            "the water cycle",
            "how computers store data",
            "what a black hole is",
            "how bees make honey",
            "why we have seasons",
            "how airplanes fly",
            "how a bill becomes law",
        ]],
    ),
    (
        "Write a short story about {} who {}.",
        &[
            &[
                "a shy robot",
                "an old fisherman",
                "a lost puppy",
                "a young inventor",
                "a grumpy wizard",
                "a delivery driver",
            ],
            &[
                "finds a mysterious map",
                "misses the last bus",
                "wins a baking contest",
                "discovers a hidden room",
                "makes an unlikely friend",
                "gets lost in a storm",
            ],
        ],
    ),
    (
        "Give advice to someone who wants to {}.",
        &[&[
            "start running",
            "learn a new language",
            "save money",
            "sleep better",
            "grow vegetables at home",
            "speak in public",
            "read more books",
            "cook healthy meals",
            "change careers",
            "learn to play the guitar",
        ]],
    ),
    (
        "Write a review of {}.",
        &[&[
            "a neighborhood cafe",
            "a science fiction film",
            "a budget smartphone",
            "a hotel by the beach",
            "a museum of natural history",
            "a board game for families",
            "a yoga class",
            "an Italian restaurant",
        ]],
    ),
    (
        "Write a social media post announcing {}.",
        &[&[
            "the grand opening of a bakery",
            "a charity fun run",
            "a new podcast episode",
            "a library book sale",
            "a community clean-up day",
            "a school science fair",
            "a weekly farmers market",
        ]],
    ),
    (
        "Describe {} to someone who has never been there.",
        &[&[
            "a busy train station",
            "a rainforest",
            "a desert at night",
            "a fishing village",
            "a ski resort",
            "a night market",
            "an ancient library",
            "a space station",
        ]],
    ),
    (
        "Write a short speech for {}.",
        &[&[
            "a friend's wedding",
            "a retirement party",
            "a graduation ceremony",
            "the opening of a new park",
            "a team's championship win",
            "a grandparent's 90th birthday",
        ]],
    ),
    (
        "Summarize the benefits of {}.",
        &[&[
            "drinking enough water",
            "walking every day",
            "keeping a journal",
            "learning to cook",
            "limiting screen time",
            "volunteering",
            "meditation",
            "reading before bed",
        ]],
    ),
    (
        "Write a cover letter for a job as {}.",
        &[&[
            "a librarian",
            "a park ranger",
            "a barista",
            "a software tester",
            "a museum guide",
            "a nurse",
            "a delivery driver",
            "a graphic designer",
        ]],
    ),
];

const KEYWORDS: &[&str] = &[
    "light",
    "journey",
    "balance",
    "future",
    "simple",
    "together",
    "moment",
    "energy",
    "careful",
    "bright",
    "quiet",
    "promise",
    "change",
    "home",
    "honest",
    "window",
    "morning",
    "patience",
    "color",
    "community",
];

/// Filler words models overuse; disjoint from [`KEYWORDS`].
const EXCLUDABLE: &[&str] = &[
    "very",
    "really",
    "good",
    "nice",
    "thing",
    "amazing",
    "great",
    "just",
    "basically",
    "actually",
    "awesome",
    "literally",
    "stuff",
    "definitely",
];

/// Opening phrases, without commas so they combine with the no-comma constraint.
const START_PHRASES: &[&str] = &[
    "Dear reader",
    "Once upon a time",
    "Here is my answer",
    "Let me begin",
    "Imagine this",
    "To start with",
    "In short",
    "Picture this",
];

const END_PHRASES: &[&str] = &[
    "Is there anything else I can help with?",
    "Thank you for reading.",
    "That is all for now.",
    "Stay curious.",
    "See you soon.",
    "Any other questions?",
];

const JSON_KEYS: &[&str] = &[
    "title",
    "summary",
    "audience",
    "tone",
    "keywords",
    "rating",
    "highlights",
    "conclusion",
    "mood",
    "author",
];

/// Kinds of constraint; at most one constraint of each kind per task (a range of words is
/// one length constraint written as a minimum and a maximum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Length,
    Keywords,
    Excluded,
    Structure,
    Case,
    Start,
    End,
    NoCommas,
}

const KINDS: [Kind; 8] = [
    Kind::Length,
    Kind::Keywords,
    Kind::Excluded,
    Kind::Structure,
    Kind::Case,
    Kind::Start,
    Kind::End,
    Kind::NoCommas,
];

fn fill(rng: &mut ChaCha8Rng, (template, slots): &Template) -> String {
    let mut text = template.to_string();
    for slot in slots.iter() {
        let value = pick(rng, slot);
        text = text.replacen("{}", value, 1);
    }
    text
}

/// How a constraint is asked for, in one of two wordings.
fn rule_text(rng: &mut ChaCha8Rng, constraint: &Constraint) -> String {
    // `the words "a" and "b"`, `the word "a"`.
    let quoted = |noun: &str, words: &[String], last: &str| {
        let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
        match quoted.split_last() {
            Some((final_word, [])) => format!("the {noun} {final_word}"),
            Some((final_word, rest)) => {
                format!("the {noun}s {} {last} {final_word}", rest.join(", "))
            }
            None => String::new(),
        }
    };
    let first = rng.random_bool(0.5);
    match constraint {
        Constraint::MaxWords { max } if first => format!("Use at most {max} words."),
        Constraint::MaxWords { max } => format!("Keep your answer to no more than {max} words."),
        Constraint::MinWords { min } if first => format!("Write at least {min} words."),
        Constraint::MinWords { min } => format!("Your answer must be at least {min} words long."),
        Constraint::IncludeKeywords { keywords } if first => {
            format!("Include {}.", quoted("word", keywords, "and"))
        }
        Constraint::IncludeKeywords { keywords } => format!(
            "Use {} somewhere in your answer.",
            quoted("keyword", keywords, "and")
        ),
        Constraint::ExcludeWords { words } if first => {
            format!("Do not use {}.", quoted("word", words, "or"))
        }
        Constraint::ExcludeWords { words } => format!("Avoid {}.", quoted("word", words, "or")),
        Constraint::JsonObject { keys } if first => format!(
            "Format your whole answer as a JSON object with {}.",
            quoted("key", keys, "and")
        ),
        Constraint::JsonObject { keys } => format!(
            "Reply only with a JSON object that has {}.",
            quoted("key", keys, "and")
        ),
        Constraint::BulletCount { count } if first => {
            format!("Use exactly {count} bullet points, each on its own line starting with \"- \".")
        }
        Constraint::BulletCount { count } => format!(
            "Your answer must contain exactly {count} bullet points (lines starting with \"- \")."
        ),
        Constraint::AllLowercase if first => {
            "Write your entire answer in lowercase letters; no capital letters are allowed."
                .to_string()
        }
        Constraint::AllLowercase => "Use only lowercase letters.".to_string(),
        Constraint::AllUppercase if first => {
            "Write your entire answer in capital letters.".to_string()
        }
        Constraint::AllUppercase => {
            "Use only uppercase letters; no lowercase letters are allowed.".to_string()
        }
        Constraint::StartsWith { phrase } if first => {
            format!("Begin your answer with \"{phrase}\".")
        }
        Constraint::StartsWith { phrase } => {
            format!("Start your response with the words \"{phrase}\".")
        }
        Constraint::EndsWith { phrase } if first => {
            format!("End your answer with the exact phrase \"{phrase}\", with nothing after it.")
        }
        Constraint::EndsWith { phrase } => {
            format!("Finish your response with \"{phrase}\" and nothing else after it.")
        }
        Constraint::NoCommas if first => "Do not use any commas.".to_string(),
        Constraint::NoCommas => "Your answer must not contain a single comma.".to_string(),
    }
}

fn compatible(kinds: &[Kind], candidate: Kind, structure_is_json: bool) -> bool {
    let json_excludes = [Kind::Start, Kind::End, Kind::NoCommas, Kind::Length];
    if candidate == Kind::Structure && structure_is_json {
        return !kinds.iter().any(|k| json_excludes.contains(k));
    }
    let json_chosen = kinds.contains(&Kind::Structure) && structure_is_json;
    !(json_chosen && json_excludes.contains(&candidate))
}

fn words_in(phrase: &str) -> usize {
    word_count(phrase)
}

/// 1 constraint three times in ten, 2 four times, 3 three times.
fn draw_constraint_count(rng: &mut ChaCha8Rng) -> usize {
    match rng.random_range(0..10) {
        0..=2 => 1,
        3..=6 => 2,
        _ => 3,
    }
}

fn draw_constraints(rng: &mut ChaCha8Rng) -> Vec<Constraint> {
    let wanted = draw_constraint_count(rng);
    let structure_is_json = rng.random_bool(0.4);
    let mut order = KINDS;
    order.shuffle(rng);
    let mut kinds: Vec<Kind> = Vec::new();
    for kind in order {
        if kinds.len() == wanted {
            break;
        }
        if compatible(&kinds, kind, structure_is_json) {
            kinds.push(kind);
        }
    }
    // Case first: it decides how phrases are written (and JSON keys are lowercase). Length last:
    // it needs the room the others take.
    let json = structure_is_json && kinds.contains(&Kind::Structure);
    let case = kinds
        .contains(&Kind::Case)
        .then(|| json || rng.random_bool(0.6));
    let in_case = |phrase: &str| match case {
        Some(true) => phrase.to_lowercase(),
        Some(false) => phrase.to_uppercase(),
        None => phrase.to_string(),
    };
    // Words the reply needs for the non-length constraints: the budget a word limit must leave.
    let mut required_words = 0;
    let mut constraints = Vec::new();
    for kind in &kinds {
        let constraint = match kind {
            Kind::Length => continue,
            Kind::Keywords => {
                let count = rng.random_range(1..=2);
                let keywords: Vec<String> = KEYWORDS
                    .choose_multiple(rng, count)
                    .map(|k| k.to_string())
                    .collect();
                required_words += keywords.len();
                Constraint::IncludeKeywords { keywords }
            }
            Kind::Excluded => {
                let count = rng.random_range(1..=3);
                let words = EXCLUDABLE
                    .choose_multiple(rng, count)
                    .map(|w| w.to_string())
                    .collect();
                Constraint::ExcludeWords { words }
            }
            Kind::Structure if structure_is_json => {
                let count = rng.random_range(2..=3);
                let keys = JSON_KEYS
                    .choose_multiple(rng, count)
                    .map(|k| k.to_string())
                    .collect();
                Constraint::JsonObject { keys }
            }
            Kind::Structure => {
                let count = rng.random_range(2..=5);
                required_words += 2 * count;
                Constraint::BulletCount { count }
            }
            Kind::Case => match case {
                Some(true) => Constraint::AllLowercase,
                _ => Constraint::AllUppercase,
            },
            Kind::Start => {
                let phrase = pick(rng, START_PHRASES);
                let phrase = in_case(phrase);
                required_words += words_in(&phrase);
                Constraint::StartsWith { phrase }
            }
            Kind::End => {
                let phrase = pick(rng, END_PHRASES);
                let phrase = in_case(phrase);
                required_words += words_in(&phrase);
                Constraint::EndsWith { phrase }
            }
            Kind::NoCommas => Constraint::NoCommas,
        };
        constraints.push(constraint);
    }
    if kinds.contains(&Kind::Length) {
        // At least ten words of room beyond what the other constraints need.
        let floor = required_words + 10;
        let length = match rng.random_range(0..3) {
            0 => vec![Constraint::MaxWords {
                max: word_limit(rng, floor, &[20, 30, 40, 50, 60, 80, 100, 120, 150]),
            }],
            1 => vec![Constraint::MinWords {
                min: word_limit(rng, floor, &[20, 30, 50, 80, 100, 150]),
            }],
            _ => {
                let min = word_limit(rng, floor, &[30, 40, 50, 80]);
                let max = min + *pick(rng, &[30, 40, 60]);
                vec![Constraint::MinWords { min }, Constraint::MaxWords { max }]
            }
        };
        let at = rng.random_range(0..=constraints.len());
        let after = constraints.split_off(at);
        constraints.extend(length);
        constraints.extend(after);
    }
    constraints
}

/// One of `options` that is at least `floor`, or `floor` itself when none is.
fn word_limit(rng: &mut ChaCha8Rng, floor: usize, options: &[usize]) -> usize {
    let fitting: Vec<usize> = options.iter().copied().filter(|n| *n >= floor).collect();
    fitting.choose(rng).copied().unwrap_or(floor)
}

pub(super) fn draw_writing_task(rng: &mut ChaCha8Rng) -> Task {
    let template = pick(rng, TEMPLATES);
    let question = fill(rng, template);
    let constraints = draw_constraints(rng);
    let rules: Vec<String> = constraints.iter().map(|c| rule_text(rng, c)).collect();
    let prompt = if rng.random_bool(0.5) {
        format!("{question} {}", rules.join(" "))
    } else {
        let listed: Vec<String> = rules.iter().map(|rule| format!("- {rule}")).collect();
        format!("{question}\n\nRequirements:\n{}", listed.join("\n"))
    };
    let gold = constraints
        .iter()
        .map(describe_constraint)
        .collect::<Vec<_>>()
        .join("; ");
    Task {
        question,
        prompt,
        gold,
        grader: Grader::Constraints { constraints },
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::generate::generate;
    use crate::grade::grade_reply;

    /// Words for the body of a synthesised reply: none excludable, none a keyword, no commas.
    const FILLER: &[&str] = &[
        "sun", "falls", "across", "open", "fields", "while", "birds", "sing", "softly", "above",
    ];

    /// How to bend a synthesised reply: aim at the maximum number of words rather than the
    /// minimum, add (or remove) words, leave out the first keyword.
    #[derive(Clone, Copy, Default)]
    struct Bend {
        at_max: bool,
        extra_words: isize,
        drop_keyword: bool,
    }

    /// A reply written to satisfy `constraints` exactly at their limits: as many words as the
    /// minimum, else the maximum, every keyword, the phrases, bullets or JSON asked for.
    fn synthesised_reply(constraints: &[Constraint], bend: Bend) -> String {
        let mut keywords: Vec<String> = Vec::new();
        let (mut min, mut max) = (None, None);
        let (mut start, mut end, mut bullets, mut json, mut lower, mut upper) =
            (None, None, 0, None, false, false);
        for constraint in constraints {
            match constraint {
                Constraint::MaxWords { max: m } => max = Some(*m),
                Constraint::MinWords { min: m } => min = Some(*m),
                Constraint::IncludeKeywords { keywords: k } => keywords.extend(k.iter().cloned()),
                Constraint::JsonObject { keys } => json = Some(keys.clone()),
                Constraint::BulletCount { count } => bullets = *count,
                Constraint::AllLowercase => lower = true,
                Constraint::AllUppercase => upper = true,
                Constraint::StartsWith { phrase } => start = Some(phrase.clone()),
                Constraint::EndsWith { phrase } => end = Some(phrase.clone()),
                Constraint::ExcludeWords { .. } | Constraint::NoCommas => {}
            }
        }
        if bend.drop_keyword {
            keywords.remove(0);
        }
        if let Some(keys) = json {
            let object: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .map(|key| {
                    (
                        key.clone(),
                        format!("{} calm words", keywords.join(" ")).into(),
                    )
                })
                .collect();
            return serde_json::to_string_pretty(&object).unwrap();
        }
        let phrase_words =
            start.as_deref().map_or(0, word_count) + end.as_deref().map_or(0, word_count);
        let fixed = phrase_words + keywords.len() + bullets;
        let limit = if bend.at_max { max } else { min.or(max) };
        let target = limit.unwrap_or(fixed + 10) as isize + bend.extra_words;
        let body_words = usize::try_from(target - fixed as isize).expect("room for the body");
        let mut body: Vec<String> = keywords.clone();
        body.extend(
            FILLER
                .iter()
                .cycle()
                .take(body_words)
                .map(|w| w.to_string()),
        );
        let mut lines: Vec<String> = start.into_iter().collect();
        lines.push(format!("{}.", body.join(" ")));
        lines.extend((0..bullets).map(|i| format!("- {}", FILLER[i % FILLER.len()])));
        lines.extend(end);
        let text = lines.join("\n");
        if upper {
            text.to_uppercase()
        } else if lower {
            text.to_lowercase()
        } else {
            text
        }
    }

    fn constraints_of(grader: &Grader) -> &[Constraint] {
        match grader {
            Grader::Constraints { constraints } => constraints,
            other => panic!("instruction_following grades constraints, not {other:?}"),
        }
    }

    #[test]
    fn a_compliant_reply_passes_and_one_word_off_fails() {
        let drafts = generate("instruction_following", 400, 3).unwrap();
        let (mut over, mut under, mut missing) = (0, 0, 0);
        for draft in &drafts {
            let constraints = constraints_of(&draft.grader);
            assert!((1..=4).contains(&constraints.len()), "{constraints:?}");
            let reply = synthesised_reply(constraints, Bend::default());
            let grade = grade_reply(&draft.grader, &reply);
            assert!(
                grade.correct,
                "{}\n---\n{reply}\n---\n{grade:?}",
                draft.prompt
            );
            let bent =
                |bend: Bend| grade_reply(&draft.grader, &synthesised_reply(constraints, bend));
            for constraint in constraints {
                match constraint {
                    Constraint::MaxWords { max } => {
                        let grade = bent(Bend {
                            at_max: true,
                            extra_words: 1,
                            ..Bend::default()
                        });
                        let expected = format!("{} words, at most {max} allowed", max + 1);
                        assert_eq!(grade.reason.as_deref(), Some(expected.as_str()));
                        over += 1;
                    }
                    Constraint::MinWords { min } => {
                        let grade = bent(Bend {
                            extra_words: -1,
                            ..Bend::default()
                        });
                        let expected = format!("{} words, at least {min} required", min - 1);
                        assert_eq!(grade.reason.as_deref(), Some(expected.as_str()));
                        under += 1;
                    }
                    Constraint::IncludeKeywords { keywords } => {
                        let grade = bent(Bend {
                            drop_keyword: true,
                            ..Bend::default()
                        });
                        assert!(!grade.correct);
                        let reason = grade.reason.unwrap();
                        assert!(
                            reason.contains(&format!("keyword `{}` missing", keywords[0])),
                            "{reason}"
                        );
                        missing += 1;
                    }
                    _ => {}
                }
            }
        }
        assert!(
            over > 20 && under > 20 && missing > 20,
            "{over} {under} {missing}"
        );
    }

    #[test]
    fn hand_written_replies_to_generated_items() {
        let drafts = generate("instruction_following", 4, 1).unwrap();
        let grade = |index: usize, reply: &str| grade_reply(&drafts[index].grader, reply);

        assert_eq!(
            drafts[0].question,
            "Explain how airplanes fly to a ten-year-old."
        );
        assert_eq!(
            drafts[0].gold,
            "at most 30 words; includes the keyword `change`"
        );
        let thirty = "Wings are shaped so air moves faster over the top than below. That change \
                      in air pressure pushes the wing up while engines push the plane forward \
                      through the sky.";
        assert!(grade(0, thirty).correct);
        let one_more = thirty.replace("engines push", "engines quickly push");
        assert_eq!(
            grade(0, &one_more).reason.as_deref(),
            Some("31 words, at most 30 allowed")
        );

        assert_eq!(
            drafts[1].gold,
            "a JSON object with the keys `rating`, `tone`; all lowercase"
        );
        let json = "```json\n{\"rating\": \"five stars\", \"tone\": \"warm and bright\"}\n```";
        assert!(grade(1, json).correct);
        assert_eq!(
            grade(1, &json.replace("warm", "Warm")).reason.as_deref(),
            Some("not all lowercase (has `W`)")
        );

        assert_eq!(
            drafts[3].gold,
            "all lowercase; includes the keywords `quiet`, `careful`; starts with `let me begin`"
        );
        let story = "let me begin. the wizard was careful with his spells but not with time. he \
                     reached the stop as the last bus vanished into the quiet night.";
        assert!(grade(3, story).correct);
        assert_eq!(
            grade(3, &story.replace("the quiet night", "the night"))
                .reason
                .as_deref(),
            Some("keyword `quiet` missing")
        );
    }

    #[test]
    fn constraints_combine_only_where_a_reply_can_meet_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut kinds_seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let constraints = draw_constraints(&mut rng);
            let has = |f: fn(&Constraint) -> bool| constraints.iter().any(f);
            if has(|c| matches!(c, Constraint::JsonObject { .. })) {
                assert!(
                    !has(|c| matches!(
                        c,
                        Constraint::StartsWith { .. }
                            | Constraint::EndsWith { .. }
                            | Constraint::NoCommas
                            | Constraint::AllUppercase
                            | Constraint::MaxWords { .. }
                            | Constraint::MinWords { .. }
                            | Constraint::BulletCount { .. }
                    )),
                    "{constraints:?}"
                );
            }
            if has(|c| matches!(c, Constraint::AllUppercase)) {
                for constraint in &constraints {
                    if let Constraint::StartsWith { phrase } | Constraint::EndsWith { phrase } =
                        constraint
                    {
                        assert_eq!(*phrase, phrase.to_uppercase());
                    }
                }
            }
            if let (Some(min), Some(max)) = (
                constraints.iter().find_map(|c| match c {
                    Constraint::MinWords { min } => Some(*min),
                    _ => None,
                }),
                constraints.iter().find_map(|c| match c {
                    Constraint::MaxWords { max } => Some(*max),
                    _ => None,
                }),
            ) {
                assert!(min + 30 <= max, "{constraints:?}");
            }
            for constraint in &constraints {
                kinds_seen.insert(std::mem::discriminant(constraint));
            }
        }
        // Every constraint variant is used.
        assert_eq!(kinds_seen.len(), 11);
    }

    #[test]
    fn prompts_state_every_constraint() {
        for draft in generate("instruction_following", 50, 5).unwrap() {
            for constraint in constraints_of(&draft.grader) {
                let stated = match constraint {
                    Constraint::MaxWords { max } => max.to_string(),
                    Constraint::MinWords { min } => min.to_string(),
                    Constraint::IncludeKeywords { keywords } => format!("\"{}\"", keywords[0]),
                    Constraint::ExcludeWords { words } => format!("\"{}\"", words[0]),
                    Constraint::JsonObject { keys } => format!("\"{}\"", keys[0]),
                    Constraint::BulletCount { count } => format!("{count} bullet points"),
                    Constraint::AllLowercase => "lowercase".into(),
                    Constraint::AllUppercase => "capital letters".into(),
                    Constraint::StartsWith { phrase } | Constraint::EndsWith { phrase } => {
                        format!("\"{phrase}\"")
                    }
                    Constraint::NoCommas => "comma".into(),
                };
                let prompt = draft.prompt.replace("uppercase letters", "capital letters");
                assert!(prompt.contains(&stated), "{stated} not in {}", draft.prompt);
            }
            assert!(
                draft
                    .gold
                    .contains(&describe_constraint(&constraints_of(&draft.grader)[0]))
            );
        }
    }
}
