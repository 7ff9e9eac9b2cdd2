//! `date_arithmetic` (dates N days apart, weekdays, days between dates, days in a month) and
//! `time_arithmetic` (24-hour clock times plus or minus a duration, across midnight; minutes
//! between two times; 12-hour to 24-hour). The calendar is the proleptic Gregorian one: a year is
//! a leap year when divisible by 4, except centuries not divisible by 400.

use std::fmt;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use records::mining::Grader;

use super::vocabulary::pick;
use super::{Task, integer_answer};

const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Date {
    year: i64,
    month: u32,
    day: u32,
}

impl Date {
    fn new(year: i64, month: u32, day: u32) -> Option<Date> {
        ((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month))
            .then_some(Date { year, month, day })
    }

    /// Days since 1970-01-01 (negative before). Counts whole 400-year eras (146,097 days each)
    /// from a year that starts in March, so February's leap day is the last day of its year and
    /// month lengths follow the fixed pattern 31, 30, 31, 30, 31 from March (H. Hinnant's
    /// `days_from_civil`).
    fn days_since_epoch(self) -> i64 {
        let year = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = year.div_euclid(400);
        let year_of_era = year.rem_euclid(400);
        let month_from_march = i64::from((self.month + 9) % 12);
        let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(self.day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// The inverse of [`Date::days_since_epoch`].
    fn from_days_since_epoch(days: i64) -> Date {
        let shifted = days + 719_468;
        let era = shifted.div_euclid(146_097);
        let day_of_era = shifted.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Date {
            year,
            month: month as u32,
            day: day as u32,
        }
    }

    fn plus_days(self, days: i64) -> Date {
        Date::from_days_since_epoch(self.days_since_epoch() + days)
    }

    /// Index into [`WEEKDAYS`]; 1970-01-01 was a Thursday.
    fn weekday(self) -> usize {
        (self.days_since_epoch() + 3).rem_euclid(7) as usize
    }

    /// "March 1, 2024" or "1 March 2024".
    fn in_words(self, day_first: bool) -> String {
        let month = MONTH_NAMES[self.month as usize - 1];
        if day_first {
            format!("{} {month} {}", self.day, self.year)
        } else {
            format!("{month} {}, {}", self.day, self.year)
        }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn draw_date(rng: &mut ChaCha8Rng) -> Date {
    let year = rng.random_range(1900..=2100);
    let month = rng.random_range(1..=12);
    let day = rng.random_range(1..=days_in_month(year, month));
    Date::new(year, month, day).expect("a day within its month")
}

/// The date as the question writes it: ISO most often, sometimes in words.
fn date_in_question(rng: &mut ChaCha8Rng, date: Date) -> String {
    match rng.random_range(0..4) {
        0 => date.in_words(false),
        1 => date.in_words(true),
        _ => date.to_string(),
    }
}

fn exact(expected: String) -> Grader {
    Grader::ExactText { expected }
}

pub(super) fn draw_date_task(rng: &mut ChaCha8Rng) -> Task {
    let date = draw_date(rng);
    let shown = date_in_question(rng, date);
    let (question, instruction, gold, grader) = match rng.random_range(0..6) {
        kind @ (0 | 1) => {
            let after = kind == 0;
            let days = if rng.random_bool(0.7) {
                rng.random_range(1..=400)
            } else {
                rng.random_range(401..=3000)
            };
            let answer = date.plus_days(if after { days } else { -days });
            let direction = if after { "after" } else { "before" };
            (
                format!("What date is {days} days {direction} {shown}?"),
                "Give only the date in YYYY-MM-DD format.",
                answer.to_string(),
                exact(answer.to_string()),
            )
        }
        2 | 3 => {
            let weekday = WEEKDAYS[date.weekday()];
            (
                format!("What day of the week is {shown}?"),
                "Give only the day of the week, such as Monday.",
                weekday.to_string(),
                exact(weekday.to_string()),
            )
        }
        4 => {
            let later = date.plus_days(rng.random_range(1..=2000));
            let later_shown = date_in_question(rng, later);
            let days = later.days_since_epoch() - date.days_since_epoch();
            (
                format!("How many days are there from {shown} to {later_shown}?"),
                "Count the days from the first date to the second (the first date not \
                 included). Give only the number.",
                format!("{days} days"),
                integer_answer(days),
            )
        }
        _ => {
            let month = MONTH_NAMES[date.month as usize - 1];
            let days = days_in_month(date.year, date.month);
            (
                format!("How many days does {month} {} have?", date.year),
                "Give only the number.",
                format!("{days} days"),
                integer_answer(i64::from(days)),
            )
        }
    };
    Task {
        prompt: format!("{question}\n{instruction}"),
        question,
        gold,
        grader,
    }
}

/// Minutes since midnight as "HH:MM".
fn clock(minutes: i64) -> String {
    let minutes = minutes.rem_euclid(24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// A duration as a person says it: "2 hours and 5 minutes", "1 hour", "135 minutes".
fn duration_in_words(rng: &mut ChaCha8Rng, minutes: i64) -> String {
    let (hours, rest) = (minutes / 60, minutes % 60);
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    if hours == 0 || rng.random_bool(0.15) {
        plural(minutes, "minute")
    } else if rest == 0 {
        plural(hours, "hour")
    } else {
        format!("{} and {}", plural(hours, "hour"), plural(rest, "minute"))
    }
}

const CLOCK_INSTRUCTION: &str = "Give only the time in 24-hour HH:MM format.";

pub(super) fn draw_time_task(rng: &mut ChaCha8Rng) -> Task {
    let start = rng.random_range(0..24 * 60);
    let (question, instruction, gold, grader) = match rng.random_range(0..7) {
        kind @ 0..=3 => {
            // Durations up to 26 hours: many sums cross midnight, some by more than a day.
            let minutes = if rng.random_bool(0.3) {
                rng.random_range(1..=12) * 5
            } else {
                rng.random_range(1..=26 * 60)
            };
            let after = kind < 2;
            let answer = clock(if after {
                start + minutes
            } else {
                start - minutes
            });
            let duration = duration_in_words(rng, minutes);
            let question = if after {
                format!("What time is it {duration} after {}?", clock(start))
            } else {
                format!("What time was it {duration} before {}?", clock(start))
            };
            (question, CLOCK_INSTRUCTION, answer.clone(), exact(answer))
        }
        4 | 5 => {
            let end = rng.random_range(0..24 * 60);
            if end == start {
                return draw_time_task(rng);
            }
            let minutes = (end - start).rem_euclid(24 * 60);
            let next_day = if end < start { " the next day" } else { "" };
            let event = pick(
                rng,
                &[
                    "A train leaves",
                    "A shift starts",
                    "A flight departs",
                    "A film starts",
                    "A hike begins",
                ],
            );
            let ending = match *event {
                "A train leaves" => "arrives",
                "A flight departs" => "lands",
                _ => "ends",
            };
            (
                format!(
                    "{event} at {} and {ending} at {}{next_day}. How many minutes does it last?",
                    clock(start),
                    clock(end)
                ),
                "Give only the number of minutes.",
                format!("{minutes} minutes"),
                integer_answer(minutes),
            )
        }
        _ => {
            let (hour, minute) = (start / 60, start % 60);
            let twelve = match hour % 12 {
                0 => 12,
                h => h,
            };
            let suffix = if hour < 12 { "AM" } else { "PM" };
            let answer = clock(start);
            (
                format!("What is {twelve}:{minute:02} {suffix} on a 24-hour clock?"),
                CLOCK_INSTRUCTION,
                answer.clone(),
                exact(answer),
            )
        }
    };
    Task {
        prompt: format!("{question}\n{instruction}"),
        question,
        gold,
        grader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: i64, month: u32, day: u32) -> Date {
        Date::new(year, month, day).unwrap()
    }

    #[test]
    fn leap_years_follow_the_gregorian_rule() {
        assert!(Date::new(2000, 2, 29).is_some());
        assert!(Date::new(1900, 2, 29).is_none());
        assert!(Date::new(2024, 2, 29).is_some());
        assert!(Date::new(2023, 2, 29).is_none());
        assert!(Date::new(2100, 2, 29).is_none());
        assert!(Date::new(2023, 4, 31).is_none());
        assert!(Date::new(2023, 13, 1).is_none());
        assert!(Date::new(2023, 1, 0).is_none());
    }

    #[test]
    fn known_weekdays_and_day_numbers() {
        assert_eq!(date(1970, 1, 1).days_since_epoch(), 0);
        assert_eq!(date(2000, 1, 1).days_since_epoch(), 10_957);
        assert_eq!(date(1900, 1, 1).days_since_epoch(), -25_567);
        assert_eq!(WEEKDAYS[date(2024, 1, 1).weekday()], "Monday");
        assert_eq!(WEEKDAYS[date(1970, 1, 1).weekday()], "Thursday");
        assert_eq!(WEEKDAYS[date(2000, 1, 1).weekday()], "Saturday");
        assert_eq!(WEEKDAYS[date(1969, 7, 20).weekday()], "Sunday");
        assert_eq!(WEEKDAYS[date(1900, 1, 1).weekday()], "Monday");
        assert_eq!(WEEKDAYS[date(2100, 12, 31).weekday()], "Friday");
        assert_eq!(date(2024, 2, 28).plus_days(1), date(2024, 2, 29));
        assert_eq!(date(2023, 2, 28).plus_days(1), date(2023, 3, 1));
        assert_eq!(date(2024, 3, 1).plus_days(-1), date(2024, 2, 29));
        assert_eq!(date(1999, 12, 31).plus_days(1), date(2000, 1, 1));
        assert_eq!(
            date(2024, 1, 1).days_since_epoch() - date(2000, 1, 1).days_since_epoch(),
            8766
        );
        assert_eq!(date(2024, 3, 1).to_string(), "2024-03-01");
        assert_eq!(date(2024, 3, 1).in_words(false), "March 1, 2024");
    }

    #[test]
    fn day_numbers_agree_with_walking_the_calendar_day_by_day() {
        let mut walked = date(1890, 1, 1);
        let mut days = walked.days_since_epoch();
        while walked.year < 2110 {
            assert_eq!(Date::from_days_since_epoch(days), walked);
            assert_eq!(walked.days_since_epoch(), days);
            days += 1;
            walked = if walked.day < days_in_month(walked.year, walked.month) {
                date(walked.year, walked.month, walked.day + 1)
            } else if walked.month < 12 {
                date(walked.year, walked.month + 1, 1)
            } else {
                date(walked.year + 1, 1, 1)
            };
        }
    }

    #[test]
    fn clocks_wrap_around_midnight() {
        assert_eq!(clock(22 * 60 + 30 + 3 * 60 + 45), "02:15");
        assert_eq!(clock(30 - 45), "23:45");
        assert_eq!(clock(24 * 60 * 2 + 5), "00:05");
    }
}
