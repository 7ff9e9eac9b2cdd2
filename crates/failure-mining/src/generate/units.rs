//! `unit_conversion`: length, mass, time, volume and temperature, with exact conversion factors
//! (the inch is 0.0254 m, the pound 0.45359237 kg, the US gallon 3.785411784 L).
//!
//! Answers are asked rounded to two decimals; the grader takes the value rounded to two decimals
//! with a tolerance of 0.01, so a model that rounds, truncates or gives more decimals is right and
//! one that is off by more than the last asked digit is wrong.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use records::mining::Grader;

use super::vocabulary::pick;
use super::{Task, format_number};

/// A unit: its name in the singular and plural and its size in its quantity's base unit.
struct Unit {
    singular: &'static str,
    plural: &'static str,
    in_base: f64,
}

const fn unit(singular: &'static str, plural: &'static str, in_base: f64) -> Unit {
    Unit {
        singular,
        plural,
        in_base,
    }
}

/// Units of one quantity (base: meter, kilogram, second, liter).
const QUANTITIES: &[&[Unit]] = &[
    &[
        unit("millimeter", "millimeters", 0.001),
        unit("centimeter", "centimeters", 0.01),
        unit("meter", "meters", 1.0),
        unit("kilometer", "kilometers", 1000.0),
        unit("inch", "inches", 0.0254),
        unit("foot", "feet", 0.3048),
        unit("yard", "yards", 0.9144),
        unit("mile", "miles", 1609.344),
    ],
    &[
        unit("milligram", "milligrams", 1e-6),
        unit("gram", "grams", 0.001),
        unit("kilogram", "kilograms", 1.0),
        unit("metric ton", "metric tons", 1000.0),
        unit("ounce", "ounces", 0.028_349_523_125),
        unit("pound", "pounds", 0.453_592_37),
    ],
    &[
        unit("second", "seconds", 1.0),
        unit("minute", "minutes", 60.0),
        unit("hour", "hours", 3600.0),
        unit("day", "days", 86_400.0),
        unit("week", "weeks", 604_800.0),
    ],
    &[
        unit("milliliter", "milliliters", 0.001),
        unit("liter", "liters", 1.0),
        unit("US cup", "US cups", 0.236_588_236_5),
        unit("US fluid ounce", "US fluid ounces", 0.029_573_529_562_5),
        unit("US gallon", "US gallons", 3.785_411_784),
        unit("cubic meter", "cubic meters", 1000.0),
    ],
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Temperature {
    Celsius,
    Fahrenheit,
    Kelvin,
}

impl Temperature {
    fn name(self) -> &'static str {
        match self {
            Temperature::Celsius => "degrees Celsius",
            Temperature::Fahrenheit => "degrees Fahrenheit",
            Temperature::Kelvin => "kelvins",
        }
    }

    fn to_celsius(self, value: f64) -> f64 {
        match self {
            Temperature::Celsius => value,
            Temperature::Fahrenheit => (value - 32.0) * 5.0 / 9.0,
            Temperature::Kelvin => value - 273.15,
        }
    }

    fn celsius_to(self, celsius: f64) -> f64 {
        match self {
            Temperature::Celsius => celsius,
            Temperature::Fahrenheit => celsius * 9.0 / 5.0 + 32.0,
            Temperature::Kelvin => celsius + 273.15,
        }
    }
}

/// Answers outside this range would round to nothing or be unwieldy at two decimals.
const ANSWER_RANGE: std::ops::RangeInclusive<f64> = 0.1..=10_000_000.0;

const ROUNDING: &str = "Round to 2 decimal places and give only the number.";

pub(super) fn draw_conversion(rng: &mut ChaCha8Rng) -> Task {
    loop {
        // One draw in five is a temperature, the rest spread over the four quantities.
        let conversion = if rng.random_bool(0.2) {
            temperature(rng)
        } else {
            scaled(rng)
        };
        let Some((question, answer, unit_name)) = conversion else {
            continue;
        };
        let value = (answer * 100.0).round() / 100.0;
        return Task {
            prompt: format!("{question}\n{ROUNDING}"),
            question,
            gold: format!("{} {unit_name}", format_number(value, 2)),
            grader: Grader::Number {
                value,
                tolerance: 0.01,
            },
        };
    }
}

/// A value as a person would give it: a whole number or one with one or two decimals.
fn draw_amount(rng: &mut ChaCha8Rng) -> f64 {
    match rng.random_range(0..3) {
        0 => f64::from(rng.random_range(1..=1000)),
        1 => f64::from(rng.random_range(1..=500)) / 10.0 + 0.5 * f64::from(rng.random_range(0..2)),
        _ => f64::from(rng.random_range(1..=9999)) / 100.0,
    }
}

fn scaled(rng: &mut ChaCha8Rng) -> Option<(String, f64, &'static str)> {
    let units = pick(rng, QUANTITIES);
    let from = pick(rng, units);
    let to = pick(rng, units);
    if from.singular == to.singular {
        return None;
    }
    let amount = draw_amount(rng);
    let answer = amount * from.in_base / to.in_base;
    if !ANSWER_RANGE.contains(&answer) {
        return None;
    }
    let amount_text = format_number(amount, 2);
    let from_name = if amount == 1.0 {
        from.singular
    } else {
        from.plural
    };
    let question = match rng.random_range(0..3) {
        0 => format!("Convert {amount_text} {from_name} to {}.", to.plural),
        1 => format!("How many {} are in {amount_text} {from_name}?", to.plural),
        _ => format!("{amount_text} {from_name} is how many {}?", to.plural),
    };
    Some((question, answer, to.plural))
}

fn temperature(rng: &mut ChaCha8Rng) -> Option<(String, f64, &'static str)> {
    let scales = [
        Temperature::Celsius,
        Temperature::Fahrenheit,
        Temperature::Kelvin,
    ];
    let from = *pick(rng, &scales);
    let to = *pick(rng, &scales);
    if from == to {
        return None;
    }
    let amount = match from {
        Temperature::Celsius => f64::from(rng.random_range(-40..=200)),
        Temperature::Fahrenheit => f64::from(rng.random_range(-40..=400)),
        Temperature::Kelvin => f64::from(rng.random_range(200..=500)),
    };
    let answer = to.celsius_to(from.to_celsius(amount));
    let question = format!(
        "Convert {} {} to {}.",
        format_number(amount, 2),
        from.name(),
        to.name()
    );
    // Temperatures may be negative; the range check is for the scaled quantities only.
    Some((question, answer, to.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(name: &str) -> &'static Unit {
        QUANTITIES
            .iter()
            .flat_map(|units| units.iter())
            .find(|unit| unit.singular == name)
            .unwrap()
    }

    #[test]
    fn known_conversions() {
        let convert =
            |amount: f64, from: &str, to: &str| amount * find(from).in_base / find(to).in_base;
        assert!((convert(1.0, "mile", "kilometer") - 1.609344).abs() < 1e-12);
        assert!((convert(12.0, "inch", "foot") - 1.0).abs() < 1e-12);
        assert!((convert(16.0, "ounce", "pound") - 1.0).abs() < 1e-12);
        assert!((convert(1.0, "US gallon", "US cup") - 16.0).abs() < 1e-9);
        assert!((convert(1.0, "US cup", "US fluid ounce") - 8.0).abs() < 1e-9);
        assert!((convert(2.0, "week", "hour") - 336.0).abs() < 1e-12);
        let f = Temperature::Fahrenheit;
        assert!((f.celsius_to(100.0) - 212.0).abs() < 1e-12);
        assert!((f.to_celsius(-40.0) + 40.0).abs() < 1e-12);
        assert!((Temperature::Kelvin.celsius_to(0.0) - 273.15).abs() < 1e-12);
    }

    #[test]
    fn every_unit_name_is_distinct() {
        let mut names: Vec<&str> = QUANTITIES
            .iter()
            .flat_map(|units| units.iter().flat_map(|u| [u.singular, u.plural]))
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all);
    }
}
