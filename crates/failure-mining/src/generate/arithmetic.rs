//! `arithmetic_multistep` (expressions with 3-5 operations) and `word_problems` (templated
//! multi-step problems about shopping, rates, ages, sharing, ...). Answers are computed in exact
//! integer arithmetic (money in cents), so a gold is never off by a rounding.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use records::mining::Grader;

use super::vocabulary::{NAMES, PRODUCTS, THINGS, distinct_names, pick};
use super::{Task, integer_answer};

const NUMBER_INSTRUCTIONS: &[&str] = &[
    "Give only the final number.",
    "Answer with only the final number.",
    "Reply with just the number.",
];

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    fn precedence(self) -> u8 {
        match self {
            Op::Add | Op::Sub => 1,
            Op::Mul | Op::Div => 2,
        }
    }
}

enum Expr {
    Number(i64),
    Binary(Box<Expr>, Op, Box<Expr>),
}

/// Largest magnitude of any intermediate value: keeps the task about order of operations, not
/// about multiplying big numbers.
const MAX_MAGNITUDE: i64 = 20_000;

/// An expression with `operations` operators and its value, or `None` when a random choice made
/// it too large.
fn build_expression(rng: &mut ChaCha8Rng, operations: usize) -> Option<(Expr, i64)> {
    if operations == 0 {
        let magnitude = if rng.random_bool(0.8) {
            rng.random_range(1..=20)
        } else {
            rng.random_range(21..=99)
        };
        let value = if rng.random_bool(0.1) {
            -magnitude
        } else {
            magnitude
        };
        return Some((Expr::Number(value), value));
    }
    let left_operations = rng.random_range(0..operations);
    let (left, left_value) = build_expression(rng, left_operations)?;
    let right_operations = operations - 1 - left_operations;
    let mut op = *pick(rng, &[Op::Add, Op::Sub, Op::Sub, Op::Mul, Op::Mul, Op::Div]);
    if op == Op::Div {
        // Exact division: the divisor is a small factor of the left value, drawn here rather
        // than hoped for; with one operation left it is written as a sum, "(5 + 2)".
        let divisors: Vec<i64> = (2..=12)
            .filter(|d| left_value != 0 && left_value % d == 0)
            .collect();
        if !divisors.is_empty() && right_operations <= 1 {
            let divisor = *pick(rng, &divisors);
            let right = if right_operations == 0 {
                Expr::Number(divisor)
            } else {
                let part = rng.random_range(1..divisor);
                Expr::Binary(
                    Box::new(Expr::Number(part)),
                    Op::Add,
                    Box::new(Expr::Number(divisor - part)),
                )
            };
            let value = left_value / divisor;
            return Some((
                Expr::Binary(Box::new(left), Op::Div, Box::new(right)),
                value,
            ));
        }
        op = *pick(rng, &[Op::Add, Op::Sub, Op::Mul]);
    }
    let (right, right_value) = build_expression(rng, right_operations)?;
    let value = match op {
        Op::Add => left_value + right_value,
        Op::Sub => left_value - right_value,
        Op::Mul => left_value.checked_mul(right_value)?,
        Op::Div => unreachable!("handled above"),
    };
    (value.abs() <= MAX_MAGNITUDE)
        .then_some((Expr::Binary(Box::new(left), op, Box::new(right)), value))
}

/// The expression with only the parentheses its meaning needs.
fn render(expr: &Expr, symbols: &Symbols) -> String {
    fn go(expr: &Expr, symbols: &Symbols, parent: u8, right_of_inverse: bool) -> String {
        match expr {
            Expr::Number(n) if *n < 0 => format!("({n})"),
            Expr::Number(n) => n.to_string(),
            Expr::Binary(left, op, right) => {
                let precedence = op.precedence();
                let inverse = matches!(op, Op::Sub | Op::Div);
                let text = format!(
                    "{} {} {}",
                    go(left, symbols, precedence, false),
                    symbols.of(*op),
                    go(right, symbols, precedence, inverse)
                );
                if precedence < parent || (precedence == parent && right_of_inverse) {
                    format!("({text})")
                } else {
                    text
                }
            }
        }
    }
    go(expr, symbols, 0, false)
}

struct Symbols {
    times: &'static str,
    divide: &'static str,
}

impl Symbols {
    fn of(&self, op: Op) -> &'static str {
        match op {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => self.times,
            Op::Div => self.divide,
        }
    }
}

pub(super) fn draw_expression(rng: &mut ChaCha8Rng) -> Task {
    loop {
        let operations = rng.random_range(3..=5);
        let Some((expr, value)) = build_expression(rng, operations) else {
            continue;
        };
        let symbols = if rng.random_bool(0.75) {
            Symbols {
                times: "*",
                divide: "/",
            }
        } else {
            Symbols {
                times: "×",
                divide: "÷",
            }
        };
        let question = format!("What is {}?", render(&expr, &symbols));
        let instruction = pick(rng, NUMBER_INSTRUCTIONS);
        return Task {
            prompt: format!("{question}\n{instruction}"),
            question,
            gold: value.to_string(),
            grader: integer_answer(value),
        };
    }
}

/// A word problem's text, its answer, and the answer as the gold says it ("$12.50", "42 km").
struct Problem {
    text: String,
    answer: f64,
    gold: String,
}

type Template = fn(&mut ChaCha8Rng) -> Option<Problem>;

const TEMPLATES: &[Template] = &[
    change_after_shopping,
    discounted_total,
    two_leg_trip,
    age_from_multiple,
    age_from_sum,
    ratio_share,
    weeks_of_saving,
    recipe_scaling,
    shop_inventory,
    overtime_pay,
    fence_or_tiles,
    factory_output,
    bulk_saving,
];

pub(super) fn draw_word_problem(rng: &mut ChaCha8Rng) -> Task {
    loop {
        let template = pick(rng, TEMPLATES);
        let Some(problem) = template(rng) else {
            continue;
        };
        let instruction = pick(rng, NUMBER_INSTRUCTIONS);
        return Task {
            prompt: format!("{}\n{instruction}", problem.text),
            question: problem.text,
            gold: problem.gold,
            grader: Grader::Number {
                value: problem.answer,
                tolerance: 0.0,
            },
        };
    }
}

fn dollars(cents: i64) -> String {
    if cents % 100 == 0 {
        format!("${}", cents / 100)
    } else {
        format!("${}.{:02}", cents / 100, cents % 100)
    }
}

fn money_problem(text: String, cents: i64) -> Option<Problem> {
    Some(Problem {
        text,
        answer: cents as f64 / 100.0,
        gold: dollars(cents),
    })
}

fn counted_problem(text: String, answer: i64, unit: &str) -> Option<Problem> {
    Some(Problem {
        text,
        answer: answer as f64,
        gold: format!("{answer} {unit}"),
    })
}

fn quantity(count: i64, (singular, plural): (&str, &str)) -> String {
    if count == 1 {
        format!("1 {singular}")
    } else {
        format!("{count} {plural}")
    }
}

fn change_after_shopping(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let name = pick(rng, NAMES);
    let first = *pick(rng, THINGS);
    let second = *pick(rng, THINGS);
    if first == second {
        return None;
    }
    let (a, b) = (rng.random_range(2..=6), rng.random_range(1..=4));
    let (p, q) = (rng.random_range(4..=40) * 25, rng.random_range(4..=60) * 25);
    let total = a * p + b * q;
    let bill = [2000, 5000, 10000].into_iter().find(|bill| *bill > total)?;
    let text = format!(
        "{name} buys {} at {} each and {} at {} each, and pays with a {} bill. \
         How much change, in dollars, does {name} get back?",
        quantity(a, first),
        dollars(p),
        quantity(b, second),
        dollars(q),
        dollars(bill)
    );
    money_problem(text, bill - total)
}

fn discounted_total(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let name = pick(rng, NAMES);
    let (singular, plural) = *pick(rng, THINGS);
    let price = *pick(rng, &[12, 16, 20, 24, 30, 36, 40, 45, 60, 80, 120]);
    let off = *pick(rng, &[10, 15, 20, 25, 30, 40, 50]);
    let count = rng.random_range(2..=6);
    // Price in dollars times percent still to pay is cents.
    let total = count * price * (100 - off);
    let text = format!(
        "A {singular} normally costs ${price}. This week every {singular} is {off}% off. \
         {name} buys {count} {plural}. How much does {name} pay in total, in dollars?"
    );
    money_problem(text, total)
}

fn two_leg_trip(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let name = pick(rng, NAMES);
    let (s1, h1) = (rng.random_range(6..=22) * 5, rng.random_range(1..=4));
    let (s2, m2) = (
        rng.random_range(5..=30) * 4,
        *pick(rng, &[15, 30, 45, 75, 90, 105]),
    );
    let vehicle = pick(rng, &["drives", "rides a motorbike", "cycles"]);
    let (s1, s2) = if *vehicle == "cycles" {
        (s1 / 5, s2 / 4)
    } else {
        (s1, s2)
    };
    if (s2 * m2) % 60 != 0 {
        return None;
    }
    let hours = if h1 == 1 { "hour" } else { "hours" };
    let text = format!(
        "{name} {vehicle} at {s1} km/h for {h1} {hours}, then at {s2} km/h for {m2} minutes. \
         How many kilometers does {name} travel in total?"
    );
    counted_problem(text, s1 * h1 + s2 * m2 / 60, "km")
}

fn age_from_multiple(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let names = distinct_names(rng, 2);
    let (older, younger) = (names[0], names[1]);
    let (age, times, years) = (
        rng.random_range(3..=15),
        rng.random_range(2..=5),
        rng.random_range(2..=12),
    );
    let text = format!(
        "{older} is {times} times as old as {younger}. In {years} years, {older} will be {} \
         years old. How old is {younger} now?",
        times * age + years
    );
    counted_problem(text, age, "years")
}

fn age_from_sum(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let names = distinct_names(rng, 2);
    let (older, younger) = (names[0], names[1]);
    let (age, gap, years) = (
        rng.random_range(5..=40),
        rng.random_range(1..=15),
        rng.random_range(1..=20),
    );
    let text = format!(
        "The ages of {older} and {younger} add up to {}. {older} is {gap} years older than \
         {younger}. How old will {younger} be in {years} years?",
        2 * age + gap
    );
    counted_problem(text, age + years, "years")
}

fn ratio_share(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let names = distinct_names(rng, 2);
    let (a, b) = (rng.random_range(1..=6), rng.random_range(2..=9));
    // A ratio in lowest terms, as people write it.
    if a >= b || gcd(a, b) != 1 {
        return None;
    }
    let unit = rng.random_range(5..=60);
    let text = format!(
        "{} and {} share ${} in the ratio {a}:{b}. How many dollars more than {} does {} get?",
        names[0],
        names[1],
        (a + b) * unit,
        names[0],
        names[1]
    );
    money_problem(text, (b - a) * unit * 100)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn weeks_of_saving(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let name = pick(rng, NAMES);
    let (has, saves) = (rng.random_range(0..=40) * 5, rng.random_range(5..=60));
    let goal = has + rng.random_range(50..=1000);
    let weeks = (goal - has + saves - 1) / saves;
    let item = pick(
        rng,
        &["a bicycle", "a tablet", "a guitar", "a trip", "new shoes"],
    );
    let text = format!(
        "{name} has ${has} and saves ${saves} every week to buy {item} that costs ${goal}. \
         After how many weeks will {name} first have enough money?"
    );
    counted_problem(text, weeks, "weeks")
}

fn recipe_scaling(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let servings = rng.random_range(2..=8);
    let per_serving = rng.random_range(2..=16) * 5;
    let wanted = rng.random_range(1..=20);
    if wanted == servings {
        return None;
    }
    let ingredient = pick(
        rng,
        &[
            "flour", "sugar", "butter", "rice", "oats", "cheese", "cocoa", "lentils",
        ],
    );
    let text = format!(
        "A recipe for {servings} servings uses {} grams of {ingredient}. How many grams of \
         {ingredient} are needed for {wanted} servings?",
        servings * per_serving
    );
    counted_problem(text, per_serving * wanted, "grams")
}

fn shop_inventory(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let (_, plural) = *pick(rng, THINGS);
    let stock = rng.random_range(40..=400);
    let morning = rng.random_range(5..=stock / 2);
    let delivered = rng.random_range(10..=200);
    let (parts, fraction) = *pick(rng, &[(2, "half"), (3, "a third"), (4, "a quarter")]);
    let before_afternoon = stock - morning + delivered;
    if before_afternoon % parts != 0 {
        return None;
    }
    let text = format!(
        "A shop has {stock} {plural}. In the morning it sells {morning} of them. At noon a \
         delivery brings {delivered} more, and in the afternoon it sells {fraction} of what it \
         then has. How many {plural} are left at closing time?"
    );
    counted_problem(text, before_afternoon - before_afternoon / parts, plural)
}

fn overtime_pay(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let name = pick(rng, NAMES);
    let wage = rng.random_range(10..=40);
    let base_hours = *pick(rng, &[35, 38, 40]);
    let worked = base_hours + rng.random_range(1..=12);
    let (rate_percent, rate_text) = *pick(rng, &[(150, "one and a half times"), (200, "twice")]);
    let cents = wage * 100 * base_hours + (worked - base_hours) * wage * rate_percent;
    let text = format!(
        "{name} earns ${wage} per hour for the first {base_hours} hours worked in a week and \
         {rate_text} that rate for every hour beyond {base_hours}. Last week {name} worked \
         {worked} hours. How much did {name} earn, in dollars?"
    );
    money_problem(text, cents)
}

fn fence_or_tiles(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let place = pick(
        rng,
        &["garden", "playground", "yard", "courtyard", "parking lot"],
    );
    let length = rng.random_range(5..=60);
    let width = rng.random_range(3..=length);
    let shape = format!("A rectangular {place} is {length} meters long and {width} meters wide.");
    if rng.random_bool(0.5) {
        let per_meter = rng.random_range(3..=25);
        let text = format!(
            "{shape} Fencing costs ${per_meter} per meter. How much does it cost, in dollars, \
             to put a fence around the whole {place}?"
        );
        money_problem(text, 2 * (length + width) * per_meter * 100)
    } else {
        let per_box = rng.random_range(5..=20);
        let text = format!(
            "{shape} It is to be covered with tiles of one square meter each, sold in boxes of \
             {per_box}. How many boxes must be bought?"
        );
        counted_problem(text, (length * width + per_box - 1) / per_box, "boxes")
    }
}

fn factory_output(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let product = pick(rng, PRODUCTS);
    let per_hour = rng.random_range(12..=90);
    let (hours, days) = (rng.random_range(4..=12), rng.random_range(2..=7));
    let faulty_percent = *pick(rng, &[2, 4, 5, 10, 20, 25]);
    let made = per_hour * hours * days;
    if (made * faulty_percent) % 100 != 0 {
        return None;
    }
    let text = format!(
        "A machine makes {per_hour} {product} per hour and runs {hours} hours a day. After \
         {days} days, {faulty_percent}% of the {product} it made turn out to be faulty. How \
         many of the {product} are not faulty?"
    );
    counted_problem(text, made - made * faulty_percent / 100, product)
}

fn bulk_saving(rng: &mut ChaCha8Rng) -> Option<Problem> {
    let (singular, plural) = *pick(rng, THINGS);
    let small = rng.random_range(2..=6);
    let large = rng.random_range(small + 2..=24);
    let small_each = rng.random_range(30..=300);
    let large_each = rng.random_range(10..small_each);
    let text = format!(
        "A pack of {small} {plural} costs {} and a pack of {large} {plural} costs {}. How many \
         cents per {singular} do you save by buying the bigger pack?",
        dollars(small * small_each),
        dollars(large * large_each)
    );
    counted_problem(text, small_each - large_each, "cents")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::generate::format_number;

    fn evaluate(expr: &Expr) -> i64 {
        match expr {
            Expr::Number(n) => *n,
            Expr::Binary(left, op, right) => {
                let (l, r) = (evaluate(left), evaluate(right));
                match op {
                    Op::Add => l + r,
                    Op::Sub => l - r,
                    Op::Mul => l * r,
                    Op::Div => {
                        assert_eq!(l % r, 0, "inexact division");
                        l / r
                    }
                }
            }
        }
    }

    fn count_operations(expr: &Expr) -> usize {
        match expr {
            Expr::Number(_) => 0,
            Expr::Binary(left, _, right) => 1 + count_operations(left) + count_operations(right),
        }
    }

    /// A tiny precedence-climbing evaluator of the rendered text, independent of the tree.
    fn parse_and_evaluate(text: &str) -> i64 {
        fn expression(tokens: &[String], at: &mut usize) -> i64 {
            let mut value = term(tokens, at);
            while let Some(op) = tokens.get(*at).filter(|t| *t == "+" || *t == "-") {
                let op = op.clone();
                *at += 1;
                let right = term(tokens, at);
                value = if op == "+" {
                    value + right
                } else {
                    value - right
                };
            }
            value
        }
        fn term(tokens: &[String], at: &mut usize) -> i64 {
            let mut value = factor(tokens, at);
            while let Some(op) = tokens.get(*at).filter(|t| matches!(t.as_str(), "*" | "/")) {
                let op = op.clone();
                *at += 1;
                let right = factor(tokens, at);
                value = if op == "*" {
                    value * right
                } else {
                    value / right
                };
            }
            value
        }
        fn factor(tokens: &[String], at: &mut usize) -> i64 {
            let token = tokens[*at].clone();
            *at += 1;
            if token == "(" {
                let value = expression(tokens, at);
                assert_eq!(tokens[*at], ")");
                *at += 1;
                value
            } else {
                token.parse().unwrap()
            }
        }
        let spaced = text.replace('(', " ( ").replace(')', " ) ");
        let tokens: Vec<String> = spaced.split_whitespace().map(String::from).collect();
        let mut at = 0;
        // "( -3 )" parses as a parenthesised number.
        let value = expression(&tokens, &mut at);
        assert_eq!(at, tokens.len(), "{text}");
        value
    }

    #[test]
    fn expressions_render_to_text_with_the_same_value() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let ascii = Symbols {
            times: "*",
            divide: "/",
        };
        let (mut negative, mut parenthesised, mut divisions) = (0, 0, 0);
        for _ in 0..500 {
            let operations = rng.random_range(3..=5);
            let Some((expr, value)) = build_expression(&mut rng, operations) else {
                continue;
            };
            assert_eq!(count_operations(&expr), operations);
            assert_eq!(evaluate(&expr), value);
            let text = render(&expr, &ascii);
            assert_eq!(parse_and_evaluate(&text), value, "{text}");
            negative += usize::from(value < 0);
            let grouped = text
                .match_indices('(')
                .any(|(at, _)| !text[at + 1..].starts_with('-'));
            parenthesised += usize::from(grouped);
            divisions += usize::from(text.contains('/'));
        }
        assert!(negative > 50, "{negative} negative results");
        assert!(parenthesised > 50, "{parenthesised} with parentheses");
        assert!(divisions > 50, "{divisions} with divisions");
    }

    #[test]
    fn rendering_keeps_needed_parentheses_only() {
        let n = |v| Box::new(Expr::Number(v));
        let ascii = Symbols {
            times: "*",
            divide: "/",
        };
        let nested = Expr::Binary(n(10), Op::Sub, Box::new(Expr::Binary(n(2), Op::Sub, n(3))));
        assert_eq!(render(&nested, &ascii), "10 - (2 - 3)");
        let product = Expr::Binary(Box::new(Expr::Binary(n(1), Op::Add, n(2))), Op::Mul, n(-4));
        assert_eq!(render(&product, &ascii), "(1 + 2) * (-4)");
        let left = Expr::Binary(Box::new(Expr::Binary(n(6), Op::Div, n(2))), Op::Mul, n(3));
        assert_eq!(render(&left, &ascii), "6 / 2 * 3");
    }

    #[test]
    fn every_word_problem_template_is_reachable_and_sound() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (index, template) in TEMPLATES.iter().enumerate() {
            let mut made = 0;
            for _ in 0..200 {
                if let Some(problem) = template(&mut rng) {
                    made += 1;
                    assert!(problem.answer >= 0.0, "template {index}: {}", problem.text);
                    assert!(problem.text.ends_with('?'), "{}", problem.text);
                }
            }
            assert!(made > 20, "template {index} rarely succeeds: {made}/200");
        }
        assert_eq!(dollars(1250), "$12.50");
        assert_eq!(format_number(12.5, 2), "12.5");
    }
}
