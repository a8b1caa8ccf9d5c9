//! The checkable demo task: rewrite a date in ISO 8601 (YYYY-MM-DD). Generates data/demo_dates.json
//! (400 rows) and data/demo_dates_eval.json (50 held-out rows) deterministically, and scores a
//! prediction by exact match. Test: tests/data.rs (`demo_dates_files_match_generator`; the ignored
//! `regenerate_demo_dates` rewrites the files).
//!
//! Input styles (all unambiguous: numeric forms say which convention they use):
//! "March 5, 2021", "5 March 2021", "Mar 5th, 2021", "5th of March 2021", "03/05/2021 (US)",
//! "05/03/2021 (EU)", "05.03.2021 (DE)", "Friday, March 5, 2021", "2021, March 5".

use crate::rng::Rng;

const MONTHS: [&str; 12] = [
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
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// The instruction every row starts with.
pub const DATE_INSTRUCTION: &str = "Rewrite this date in ISO 8601 format (YYYY-MM-DD):";

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's days_from_civil, proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// 0 = Monday. 1970-01-01 was a Thursday (3).
fn weekday(y: i64, m: u32, d: u32) -> usize {
    (days_from_civil(y, m, d) + 3).rem_euclid(7) as usize
}

fn ordinal(d: u32) -> String {
    let suffix = match (d % 10, d % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{d}{suffix}")
}

/// One date written in style `style` (0..9).
fn render(y: i64, m: u32, d: u32, style: usize) -> String {
    let name = MONTHS[m as usize - 1];
    match style {
        0 => format!("{name} {d}, {y}"),
        1 => format!("{d} {name} {y}"),
        2 => format!("{} {}, {y}", &name[..3], ordinal(d)),
        3 => format!("{} of {name} {y}", ordinal(d)),
        4 => format!("{m:02}/{d:02}/{y} (US)"),
        5 => format!("{d:02}/{m:02}/{y} (EU)"),
        6 => format!("{d:02}.{m:02}.{y} (DE)"),
        7 => format!("{}, {name} {d}, {y}", WEEKDAYS[weekday(y, m, d)]),
        _ => format!("{y}, {name} {d}"),
    }
}

/// `n` distinct (instruction, answer) pairs, e.g.
/// ("Rewrite this date in ISO 8601 format (YYYY-MM-DD): March 5, 2021", "2021-03-05").
/// Years 1950..=2049, every valid day, 9 styles. The same (n, seed) always gives the same list, and
/// a prefix of a longer list (so train = first 400, eval = the next 50 never overlap).
pub fn date_task(n: usize, seed: u64) -> Vec<(String, String)> {
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    // 100 years * 365 days * 9 styles ≈ 330k distinct rows: far more than any demo asks for.
    while out.len() < n {
        let y = 1950 + rng.below(100) as i64;
        let m = 1 + rng.below(12) as u32;
        let d = 1 + rng.below(days_in_month(y, m) as usize) as u32;
        let style = rng.below(9);
        let q = format!("{DATE_INSTRUCTION} {}", render(y, m, d, style));
        if seen.insert(q.clone()) {
            out.push((q, format!("{y:04}-{m:02}-{d:02}")));
        }
    }
    out
}

/// Exact match after trimming whitespace (a model's trailing newline is not an error).
pub fn score_dates(prediction: &str, reference: &str) -> bool {
    prediction.trim() == reference.trim()
}

/// The seed of the committed demo_dates files.
pub const DEMO_DATES_SEED: u64 = 20_240_305;
/// Train rows in data/demo_dates.json.
pub const DEMO_DATES_TRAIN: usize = 400;
/// Held-out rows in data/demo_dates_eval.json.
pub const DEMO_DATES_EVAL: usize = 50;

/// The two demo files' JSON (alpaca rows), as committed: (demo_dates.json, demo_dates_eval.json).
pub fn demo_dates_json() -> (String, String) {
    let all = date_task(DEMO_DATES_TRAIN + DEMO_DATES_EVAL, DEMO_DATES_SEED);
    let rows = |v: &[(String, String)]| {
        let a: Vec<serde_json::Value> =
            v.iter().map(|(q, a)| serde_json::json!({"instruction": q, "input": "", "output": a})).collect();
        serde_json::to_string_pretty(&a).expect("plain JSON values serialise") + "\n"
    };
    (rows(&all[..DEMO_DATES_TRAIN]), rows(&all[DEMO_DATES_TRAIN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_and_ordinals() {
        assert_eq!(WEEKDAYS[weekday(2021, 3, 5)], "Friday");
        assert_eq!(WEEKDAYS[weekday(2000, 2, 29)], "Tuesday");
        assert_eq!(WEEKDAYS[weekday(1950, 1, 1)], "Sunday");
        assert_eq!(
            [ordinal(1), ordinal(2), ordinal(3), ordinal(11), ordinal(12), ordinal(22)],
            ["1st", "2nd", "3rd", "11th", "12th", "22nd"]
        );
    }

    #[test]
    fn date_task_is_deterministic_distinct_and_prefix_stable() {
        let a = date_task(200, 7);
        assert_eq!(a, date_task(200, 7));
        assert_eq!(&date_task(250, 7)[..200], &a[..]);
        let set: std::collections::HashSet<_> = a.iter().map(|p| &p.0).collect();
        assert_eq!(set.len(), 200);
        for (q, ans) in &a {
            assert!(q.starts_with(DATE_INSTRUCTION));
            assert_eq!(ans.len(), 10, "{ans}");
        }
        assert!(score_dates(" 2021-03-05\n", "2021-03-05"));
        assert!(!score_dates("2021-3-5", "2021-03-05"));
    }
}
