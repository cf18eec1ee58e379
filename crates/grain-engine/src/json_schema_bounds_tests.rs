//! Bounded integers and numbers ([`crate::json_schema_int`], [`crate::json_schema_num`]) through
//! [`super::SchemaState`]: brute force over short texts, and the bounds' edge cases.

use serde_json::{json, Value};

use super::tests::{compile, refused, run};
use super::SchemaState;
use crate::json_schema::JsonSchema;

/// Bounded integers against brute force: over small ranges (some with a `multipleOf`), every
/// text of up to four bytes from `-0123456789` is a whole value exactly when it is a JSON integer
/// inside the range that is a multiple of the step, and a prefix is taken exactly when some
/// completion is.
#[test]
fn bounded_integers_write_only_values_in_range() {
    fn valid(t: &str, (lo, hi, step): (i64, i64, i64)) -> bool {
        json_integer(t).is_some_and(|v| lo <= v && v <= hi && v % step == 0)
    }
    let texts = short_texts(b"-0123456789", 4);
    let cases = [
        (0, 20, 1),
        (-150, -3, 1),
        (-7, 99, 1),
        (5, 5, 1),
        (1, 1000, 1),
        (-999, 0, 1),
        (0, 20, 3),
        (-150, -3, 7),
        (-7, 99, 5),
        (1, 1000, 11),
        (-999, 0, 4),
        (-50, 50, 25),
        (35, 35, 7),
    ];
    for (lo, hi, step) in cases {
        let mut a = json!({"type": "integer", "minimum": lo, "maximum": hi});
        if step > 1 {
            a["multipleOf"] = json!(step);
        }
        let s = compile(json!({"type": "object", "properties": {"a": a}, "required": ["a"]}));
        let rule = (lo, hi, step);
        holds(&s, &texts, &texts, |t| valid(t, rule), &format!("{rule:?}"));
    }
    // Without bounds a multiple is still all it writes (within i64); none in range is refused.
    let s = compile(json!({"type": "object", "properties": {
        "a": {"type": "integer", "multipleOf": 6}}, "required": ["a"]}));
    assert_eq!(run(&s, r#"{"a":-120}"#), (true, true));
    assert!(!run(&s, r#"{"a":-121}"#).1);
    refused(
        &json!({"type": "object", "properties": {
            "a": {"type": "integer", "minimum": 6, "maximum": 9, "multipleOf": 10}}}),
        "no multiple of 10",
    );
    let halves = json!({"type": "object", "properties": {
        "a": {"type": "integer", "multipleOf": 0.5}}, "required": ["a"]});
    refused(&halves, "positive whole number");
    // Not strict, it is passed over: any integer.
    let s = JsonSchema::compile_best_effort(&halves).unwrap();
    assert_eq!(run(&s, r#"{"a":7}"#), (true, true));
}

/// `s` (an object whose property `a` is the schema under test) against brute force: each of
/// `texts` is a whole value of `a` exactly when `valid` says so, and is taken as a prefix exactly
/// when it begins some valid text of `completions`. Those are `texts` themselves, or texts a byte
/// longer: then only the texts shorter than the longest are checked as prefixes (a prefix's
/// completions must all be among them).
fn holds(
    s: &JsonSchema,
    texts: &[String],
    completions: &[String],
    valid: impl Fn(&str) -> bool,
    what: &str,
) {
    for t in texts {
        let whole = run(s, &format!("{{\"a\":{t}}}"));
        assert_eq!(whole.1, valid(t), "{what} {t:?}");
    }
    let completed: std::collections::HashSet<&str> = completions
        .iter()
        .filter(|u| valid(u))
        .flat_map(|u| (0..=u.len()).map(move |i| &u[..i]))
        .collect();
    let longest = texts.iter().map(String::len).max().unwrap_or(0);
    let prefixes = if completions.len() > texts.len() {
        longest - 1
    } else {
        longest
    };
    for t in texts.iter().filter(|t| t.len() <= prefixes) {
        assert_eq!(
            run(s, &format!("{{\"a\":{t}")).0,
            completed.contains(t.as_str()),
            "{what} prefix {t:?}"
        );
    }
}

/// `t`'s value, if it is a JSON integer (no `+`, no leading zero, no fraction or exponent).
fn json_integer(t: &str) -> Option<i64> {
    let digits = t.strip_prefix('-').unwrap_or(t);
    let json = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    json.then(|| t.parse().ok()).flatten()
}

/// Every text of at most `max` bytes from `alphabet`, the empty one included.
fn short_texts(alphabet: &[u8], max: usize) -> Vec<String> {
    let mut texts = vec![String::new()];
    for len in 1..=max {
        let mut more = Vec::new();
        for t in texts.iter().filter(|t| t.len() == len - 1) {
            for &b in alphabet {
                more.push(format!("{t}{}", b as char));
            }
        }
        texts.extend(more);
    }
    texts
}

/// A number with a whole `multipleOf` is written as an integer multiple inside its bounds (every
/// multiple of a whole number is an integer): against brute force over texts of up to four bytes
/// from `-.0123456789`, as for integers.
#[test]
fn numbers_with_a_whole_multiple_of_are_written_as_integer_multiples() {
    fn valid(t: &str, (lo, hi, step): (f64, f64, i64)) -> bool {
        json_integer(t).is_some_and(|v| lo <= v as f64 && v as f64 <= hi && v % step == 0)
    }
    let texts = short_texts(b"-.0123456789", 4);
    // Bounds as written (fractional, exclusive) and the inclusive range they leave.
    let cases = [
        (
            json!({"minimum": -20.5, "exclusiveMaximum": 40}),
            (-20.5, 39.0, 5),
        ),
        (
            json!({"exclusiveMinimum": 0, "maximum": 99.9}),
            (1.0, 99.9, 7),
        ),
        (json!({"minimum": -999, "maximum": -2.5}), (-999.0, -2.5, 4)),
        (json!({"minimum": -99, "maximum": 99.5}), (-99.0, 99.5, 3)),
    ];
    for (bounds, rule) in cases {
        let mut a = bounds.clone();
        a["type"] = json!("number");
        // A float `multipleOf` (as pydantic writes `multiple_of=7.0`) counts as whole too.
        a["multipleOf"] = if rule.2 == 7 {
            json!(7.0)
        } else {
            json!(rule.2)
        };
        let s = compile(json!({"type": "object", "properties": {"a": a}, "required": ["a"]}));
        holds(&s, &texts, &texts, |t| valid(t, rule), &bounds.to_string());
    }
    refused(
        &json!({"type": "object", "properties": {
            "a": {"type": "number", "minimum": 0.5, "maximum": 0.9, "multipleOf": 5}}}),
        "no integer lies within its bounds",
    );
    refused(
        &json!({"type": "object", "properties": {
            "a": {"type": "number", "minimum": 6.5, "maximum": 9.5, "multipleOf": 10}}}),
        "no multiple of 10",
    );
}

#[test]
fn integer_bounds_read_as_json_schema_2020_12_says() {
    let range = |bounds: Value| {
        let mut m = bounds.as_object().unwrap().clone();
        m.insert("type".into(), json!("integer"));
        crate::json_schema_int::IntRange::of(&m, "#", false).map(|r| r.map(|r| (r.lo, r.hi)))
    };
    assert_eq!(
        range(json!({"minimum": 0.5, "maximum": 9.5})),
        Ok(Some((1, 9)))
    );
    assert_eq!(
        range(json!({"exclusiveMinimum": 0, "exclusiveMaximum": 10})),
        Ok(Some((1, 9)))
    );
    assert_eq!(
        range(json!({"exclusiveMinimum": -0.5, "exclusiveMaximum": 2.5})),
        Ok(Some((0, 2)))
    );
    assert_eq!(range(json!({"minimum": 3})), Ok(Some((3, i64::MAX))));
    assert_eq!(range(json!({})), Ok(None));
    assert!(range(json!({"minimum": 3, "maximum": 2})).is_err());
    assert!(range(json!({"minimum": "3"})).is_err());
    // At the ends of i64 (exact, not through f64).
    let s = compile(json!({"type": "object", "properties": {
        "a": {"type": "integer", "minimum": i64::MAX - 1}}}));
    assert_eq!(run(&s, &format!("{{\"a\":{}}}", i64::MAX)), (true, true));
    assert!(!run(&s, &format!("{{\"a\":{}", i64::MAX - 2)).0);
    assert!(!run(&s, "{\"a\":-").0);
    // Strict schemas may bound integers and numbers (with `null` too), not other values.
    compile(json!({"type": "object", "properties": {
        "a": {"type": ["integer", "null"], "exclusiveMinimum": 0},
        "b": {"type": "number", "minimum": 0}}}));
    refused(
        &json!({"type": "object", "properties": {"a": {"type": ["string", "number"], "minimum": 0}}}),
        "minimum",
    );
}

/// Bounded numbers against brute force: every text of up to four bytes from `-.0123456789` is
/// a whole value exactly when it is a JSON number (no exponent) inside the range, and every
/// prefix of up to three bytes is taken exactly when a text of up to five bytes completes it.
#[test]
fn bounded_numbers_write_only_values_in_range() {
    type Range = (Option<(f64, bool)>, Option<(f64, bool)>);
    fn valid(t: &str, (lo, hi): Range) -> bool {
        let body = t.strip_prefix('-').unwrap_or(t);
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (body, None),
        };
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let json = digits(int) && (int == "0" || !int.starts_with('0')) && frac.is_none_or(digits);
        let Ok(v) = t.parse::<f64>() else {
            return false;
        };
        json && lo.is_none_or(|(l, closed)| v > l || (closed && v == l))
            && hi.is_none_or(|(h, closed)| v < h || (closed && v == h))
    }
    let texts = |max| short_texts(b"-.0123456789", max);
    let (short, long) = (texts(4), texts(5));
    let ranges: [Range; 7] = [
        (Some((0.0, true)), Some((1.0, true))),
        (Some((-2.5, false)), Some((3.0, true))),
        (Some((0.25, true)), Some((0.75, false))),
        (Some((-1.0, true)), Some((-0.5, true))),
        (Some((10.0, true)), Some((10.0, true))),
        (Some((0.0, false)), None),
        (None, Some((-0.05, true))),
    ];
    for range in ranges {
        let mut bounds = serde_json::Map::new();
        let ends = [
            (range.0, "minimum", "exclusiveMinimum"),
            (range.1, "maximum", "exclusiveMaximum"),
        ];
        for (end, closed_key, open_key) in ends {
            if let Some((v, closed)) = end {
                let key = if closed { closed_key } else { open_key };
                bounds.insert(key.into(), json!(v));
            }
        }
        let mut a = json!({"type": "number"});
        a.as_object_mut().unwrap().extend(bounds);
        let s = compile(json!({"type": "object", "properties": {"a": a}, "required": ["a"]}));
        holds(
            &s,
            &short,
            &long,
            |t| valid(t, range),
            &format!("{range:?}"),
        );
    }
}

#[test]
fn number_bounds_hold_at_extreme_magnitudes() {
    let s = compile(json!({"type": "object", "properties": {
        "tiny": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e-30},
        "big": {"type": "number", "minimum": 1e38}}}));
    let tiny = format!("0.{}1", "0".repeat(29));
    assert_eq!(run(&s, &format!("{{\"tiny\":{tiny}}}")), (true, true));
    let over = format!("0.{}11", "0".repeat(29));
    assert!(!run(&s, &format!("{{\"tiny\":{over}}}")).1);
    assert!(!run(&s, "{\"tiny\":0}").1 && !run(&s, "{\"tiny\":1").0);
    let big = format!("1{}", "0".repeat(38));
    assert_eq!(run(&s, &format!("{{\"big\":{big}}}")), (true, true));
    assert!(!run(&s, "{\"big\":1.").0, "a fraction keeps it below 1e38");
    // 1e300 needs 301 digits, more than a bounded number may have.
    refused(
        &json!({"type": "object", "properties": {"a": {"type": "number", "minimum": 1e300}}}),
        "at most 40 digits",
    );
    for (bounds, ok) in [
        (json!({"minimum": 3, "maximum": 2}), false),
        (json!({"exclusiveMinimum": 1, "maximum": 1}), false),
        (json!({"minimum": 1, "maximum": 1}), true),
        (json!({"minimum": "1"}), false),
    ] {
        let mut a = json!({"type": "number"});
        a.as_object_mut()
            .unwrap()
            .extend(bounds.as_object().unwrap().clone());
        let schema = json!({"type": "object", "properties": {"a": a}});
        assert_eq!(JsonSchema::compile(&schema).is_ok(), ok, "{schema}");
    }
}

/// Every sequence of up to `most` indices below `pieces`, the empty one included.
fn sequences(pieces: usize, most: usize) -> Vec<Vec<usize>> {
    let mut seqs: Vec<Vec<usize>> = vec![Vec::new()];
    for len in 1..=most {
        let longer: Vec<Vec<usize>> = seqs
            .iter()
            .filter(|s| s.len() == len - 1)
            .flat_map(|s| (0..pieces).map(move |p| [s.clone(), vec![p]].concat()))
            .collect();
        seqs.extend(longer);
    }
    seqs
}

/// Bounded strings against brute force: every sequence of up to four pieces (plain, two- and
/// four-byte characters, escapes, a surrogate pair, the quote) is a whole value exactly when
/// serde_json reads it as one string whose code points are within the bounds, and a string left
/// open is taken exactly when it is not already too long.
#[test]
fn bounded_strings_write_only_lengths_in_range() {
    let pieces = ["a", "é", "😀", "\\n", "\\u00e9", "\\ud83d\\ude00", "\""];
    let seqs = sequences(pieces.len(), 4);
    for (min, max) in [(0, 0), (1, 1), (2, 3), (0, 2), (3, u32::MAX)] {
        let mut bounds = json!({"type": "string", "minLength": min});
        if max != u32::MAX {
            bounds["maxLength"] = json!(max);
        }
        let s = compile(json!({"type": "object", "properties": {"s": bounds}, "required": ["s"]}));
        let within = |n: usize| (min as usize..=max as usize).contains(&n);
        for seq in &seqs {
            let body: String = seq.iter().map(|&p| pieces[p]).collect();
            let text = format!("{{\"s\":\"{body}}}");
            let want = match serde_json::from_str::<Value>(&text) {
                Ok(v) => within(v["s"].as_str().unwrap().chars().count()),
                Err(_) => false,
            };
            assert_eq!(run(&s, &text).1, want, "[{min}, {max}] {text}");
            if !body.contains('"') {
                let open = format!("{{\"s\":\"{body}");
                let n = serde_json::from_str::<String>(&format!("\"{body}\""))
                    .unwrap()
                    .chars()
                    .count();
                assert_eq!(run(&s, &open).0, n <= max as usize, "[{min}, {max}] {open}");
                // `accepts` (the leaf's copy alone) agrees with feeding the whole state, with
                // the closing quote too.
                let mut at = SchemaState::new(&s.0);
                assert!(at.feed(&s.0, b"{\"s\":\""));
                for token in [body.clone(), format!("{body}\"")] {
                    let mut copy = at;
                    let fed = copy.feed(&s.0, token.as_bytes());
                    assert_eq!(at.accepts(&s.0, token.as_bytes()), fed, "{token}");
                }
            }
        }
    }
    // Strict schemas take the lengths on a string (or a string or null), not elsewhere.
    compile(json!({"type": "object", "properties": {
        "a": {"type": ["string", "null"], "maxLength": 2}}}));
    refused(
        &json!({"type": "object", "properties": {"a": {"enum": ["x"], "maxLength": 2}}}),
        "maxLength",
    );
    refused(
        &json!({"type": "object", "properties": {"a": {"type": "string", "minLength": 3,
        "maxLength": 2}}}),
        "minLength is above maxLength",
    );
    refused(
        &json!({"type": "object", "properties": {"a": {"type": "string", "maxLength": -1}}}),
        "must be a count",
    );
}

/// Patterns against the `regex` crate's own search on the decoded string (which runs its own
/// engines, not this DFA): every sequence of up to four pieces (ASCII, a digit, a two-byte
/// character, one-letter escapes, the quote) is a whole value exactly when serde_json reads it
/// as one string the pattern matches somewhere in, and every prefix of such a value is taken.
#[test]
fn patterns_hold_as_a_regex_search_of_the_decoded_string() {
    let pieces = ["a", "b", "1", "é", "\\n", "\\\"", "\\/", "\""];
    let seqs = sequences(pieces.len(), 4);
    // (the schema's pattern, the same in the `regex` crate's syntax: ECMA-262's `\d` and `\w`
    // are ASCII, the crate's Unicode).
    let patterns = [
        ("^[ab]+$", "^[ab]+$"),
        ("b", "b"),
        ("^a|1$", "^a|1$"),
        ("^(ab)*$", "^(ab)*$"),
        ("^.{2}$", "^.{2}$"),
        ("é", "é"),
        (r"^\d\w", "^[0-9][0-9A-Za-z_]"),
        ("\n", "\n"),
        ("^a/?b", "^a/?b"),
        ("\"", "\""),
        ("^[^a]*$", "^[^a]*$"),
        ("x", "x"),
    ];
    for (pattern, reference) in patterns {
        let s = compile(json!({"type": "object", "properties": {
            "s": {"type": "string", "pattern": pattern}}, "required": ["s"]}));
        let re = regex::Regex::new(reference).unwrap();
        for seq in &seqs {
            let body: String = seq.iter().map(|&p| pieces[p]).collect();
            let text = format!("{{\"s\":\"{body}}}");
            let want = serde_json::from_str::<Value>(&text)
                .is_ok_and(|v| re.is_match(v["s"].as_str().unwrap()));
            assert_eq!(run(&s, &text).1, want, "{pattern:?} {text}");
            if want {
                for cut in 0..text.len() {
                    if text.is_char_boundary(cut) {
                        assert!(run(&s, &text[..cut]).0, "{pattern:?} {}", &text[..cut]);
                    }
                }
            }
            // `accepts` (the string's state alone) agrees with feeding the whole state.
            let mut at = SchemaState::new(&s.0);
            assert!(at.feed(&s.0, b"{\"s\":\""));
            let mut copy = at;
            let fed = copy.feed(&s.0, body.as_bytes());
            assert_eq!(at.accepts(&s.0, body.as_bytes()), fed, "{pattern:?} {body}");
        }
    }
    // A schema compiles at most 16 patterns, in both modes (each request compiles its own).
    let many: serde_json::Map<String, Value> = (0..17)
        .map(|i| (format!("p{i}"), json!({"type": "string", "pattern": "^a"})))
        .collect();
    let many = json!({"type": "object", "properties": many});
    refused(&many, "at most 16 patterns");
    assert!(JsonSchema::compile_best_effort(&many).is_err());
    // An unsatisfiable string (no text of length 0 starts with `a`): nothing may follow its
    // opening quote.
    let never = compile(json!({"type": "object", "properties": {
        "s": {"type": "string", "pattern": "^a", "maxLength": 0}}, "required": ["s"]}));
    assert!(!run(&never, "{\"s\":\"\"").0 && !run(&never, "{\"s\":\"a").0);
}

/// A number with a fractional `multipleOf` `a · 10^-p` is written as a multiple inside its bounds,
/// in at most `p` fraction digits: against brute force as for bounded numbers (whole texts of up
/// to four bytes from `-.0123456789`; prefixes of up to three, against the prefixes of the valid
/// texts of up to five). What cannot be enforced is refused when strict, passed over otherwise.
#[test]
fn numbers_with_a_fractional_multiple_of_are_written_as_multiples() {
    type Range = (Option<(f64, bool)>, Option<(f64, bool)>);
    /// `t` as a JSON number in the range, a multiple of `a · 10^-p` with at most `p` fraction
    /// digits; exact, in units of 10^-p.
    fn valid(t: &str, (lo, hi): Range, (a, p): (i64, u32)) -> bool {
        let (neg, body) = match t.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, t),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let json = !int.is_empty()
            && digits(int)
            && (int == "0" || !int.starts_with('0'))
            && digits(frac)
            && (body.contains('.') != frac.is_empty());
        if !json || frac.len() > p as usize {
            return false;
        }
        let units = int.parse::<i64>().unwrap() * 10i64.pow(p)
            + format!("{frac:0<width$}", width = p as usize)
                .parse::<i64>()
                .unwrap_or(0);
        let units = if neg { -units } else { units };
        let scale = 10f64.powi(p as i32);
        let v = units as f64 / scale;
        units % a == 0
            && lo.is_none_or(|(l, closed)| v > l || (closed && v == l))
            && hi.is_none_or(|(h, closed)| v < h || (closed && v == h))
    }
    let texts = |max| short_texts(b"-.0123456789", max);
    let (short, long) = (texts(4), texts(5));
    let cases: [(f64, (i64, u32), Range); 9] = [
        (0.5, (5, 1), (Some((0.0, true)), Some((3.0, true)))),
        (0.25, (25, 2), (Some((-1.0, false)), Some((1.0, false)))),
        (0.1, (1, 1), (Some((0.05, true)), Some((0.95, false)))),
        (0.3, (3, 1), (Some((-2.0, true)), Some((2.0, true)))),
        (0.05, (5, 2), (Some((0.0, true)), Some((0.5, true)))),
        (2.5, (25, 1), (Some((-10.0, true)), Some((10.0, true)))),
        (0.5, (5, 1), (Some((0.0, false)), None)),
        (1.5, (15, 1), (None, Some((3.0, true)))),
        // An open lower bound between multiples: 0.5 is the first.
        (0.5, (5, 1), (Some((0.45, false)), Some((2.0, true)))),
    ];
    for (m, step, range) in cases {
        let mut a = json!({"type": "number", "multipleOf": m});
        let ends = [
            (range.0, "minimum", "exclusiveMinimum"),
            (range.1, "maximum", "exclusiveMaximum"),
        ];
        for (end, closed_key, open_key) in ends {
            if let Some((v, closed)) = end {
                a[if closed { closed_key } else { open_key }] = json!(v);
            }
        }
        let s = compile(json!({"type": "object", "properties": {"a": a}, "required": ["a"]}));
        holds(
            &s,
            &short,
            &long,
            |t| valid(t, range, step),
            &format!("{m} {range:?}"),
        );
    }
    // Without bounds: any multiple, of any length.
    let s = compile(json!({"type": "object", "properties": {
        "a": {"type": "number", "multipleOf": 0.05}}, "required": ["a"]}));
    assert_eq!(run(&s, r#"{"a":-123456.35}"#), (true, true));
    assert!(!run(&s, r#"{"a":-123456.36}"#).1);
    assert!(!run(&s, r#"{"a":0.051"#).0, "a third fraction digit");
    refused(
        &json!({"type": "object", "properties": {
            "a": {"type": "number", "minimum": 0.6, "maximum": 0.9, "multipleOf": 0.5}}}),
        "no multiple",
    );
    for bad in [json!(-0.5), json!(1e-30), json!(0)] {
        let schema = json!({"type": "object", "properties": {
            "a": {"type": "number", "multipleOf": bad}}, "required": ["a"]});
        refused(&schema, "multipleOf");
        // Not strict, it is passed over: any number.
        let s = JsonSchema::compile_best_effort(&schema).unwrap();
        assert_eq!(run(&s, r#"{"a":2.75}"#), (true, true));
    }
}
