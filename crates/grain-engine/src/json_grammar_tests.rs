//! The recogniser against serde_json, an independent JSON parser: every prefix of a serialized
//! object is accepted and the whole is complete; and on thousands of mutated documents, "read to
//! the end and complete" is exactly "serde_json parses it as an object".

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::*;

fn accepts(text: &[u8]) -> Option<JsonState> {
    let mut s = JsonState::new();
    s.feed(text).then_some(s)
}

fn complete(text: &[u8]) -> bool {
    accepts(text).is_some_and(|s| s.is_done())
}

fn random_value(rng: &mut ChaCha8Rng, depth: u32) -> Value {
    let pick = if depth >= 4 {
        rng.random_range(0..6)
    } else {
        rng.random_range(0..8)
    };
    match pick {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random_range(-1_000_000i64..1_000_000)),
        3 => json!(rng.random_range(-1e6..1e6f64)),
        4 => json!(rng.random::<f64>() * 10f64.powi(rng.random_range(-30..30))),
        5 => {
            let chars = [
                'a', 'Z', ' ', '"', '\\', '\n', '\t', '\u{1}', 'é', '中', '😀', '/',
            ];
            let n = rng.random_range(0..8);
            Value::String(
                (0..n)
                    .map(|_| chars[rng.random_range(0..chars.len())])
                    .collect(),
            )
        }
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(random_object(rng, depth + 1)),
    }
}

fn random_object(rng: &mut ChaCha8Rng, depth: u32) -> Map<String, Value> {
    (0..rng.random_range(0..4))
        .map(|i| {
            (
                format!("k{i}{}", "\"".repeat(i % 2)),
                random_value(rng, depth),
            )
        })
        .collect()
}

#[test]
fn every_prefix_of_a_serialized_object_is_accepted_and_the_whole_is_complete() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..500 {
        let v = Value::Object(random_object(&mut rng, 0));
        for text in [
            serde_json::to_string(&v).unwrap(),
            serde_json::to_string_pretty(&v).unwrap(),
        ] {
            let bytes = text.as_bytes();
            for end in 0..bytes.len() {
                let s = accepts(&bytes[..end]).unwrap_or_else(|| panic!("prefix {end} of {text}"));
                assert!(
                    !s.is_done() || bytes[end..].iter().all(u8::is_ascii_whitespace),
                    "{text}"
                );
            }
            assert!(complete(bytes), "{text}");
            assert!(
                complete(format!(" \n{text}\n ").as_bytes()),
                "whitespace around"
            );
        }
    }
}

#[test]
fn on_mutated_documents_the_verdict_is_serde_jsons() {
    let alphabet = b"{}[]:,\"\\ \n0123456789-.+tfnrulsabxE";
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..20_000 {
        let v = Value::Object(random_object(&mut rng, 1));
        let mut bytes = serde_json::to_string(&v).unwrap().into_bytes();
        for _ in 0..rng.random_range(1..3) {
            let at = rng.random_range(0..=bytes.len());
            let c = alphabet[rng.random_range(0..alphabet.len())];
            match rng.random_range(0..3) {
                0 => bytes.insert(at, c),
                1 if at < bytes.len() => bytes[at] = c,
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.push(c),
            }
        }
        let reference = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v.is_object(),
            // serde_json stops at a number past f64's range, which JSON's grammar allows: no
            // verdict on the rest of the document.
            Err(e) if e.to_string().starts_with("number out of range") => continue,
            Err(_) => false,
        };
        assert_eq!(
            complete(&bytes),
            reference,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        if reference {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    assert!(
        valid > 1000 && invalid > 1000,
        "both verdicts exercised: {valid} / {invalid}"
    );
}

#[test]
fn only_an_object_at_the_top_and_the_limits_hold() {
    for top in [&b"[]"[..], b"\"a\"", b"1", b"true", b"null"] {
        assert!(accepts(top).is_none(), "{}", String::from_utf8_lossy(top));
    }
    assert!(!complete(b"{\"a\": 1"));
    assert!(accepts(b"{} {").is_none(), "one object, nothing after it");
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(63), "]".repeat(63));
    assert!(complete(deep.as_bytes()), "64 levels");
    let deeper = format!("{{\"a\":{}", "[".repeat(64));
    assert!(accepts(deeper.as_bytes()).is_none(), "65 levels");
    let spaced = |n: usize| format!("{{{}}}", " ".repeat(n));
    assert!(complete(spaced(MAX_WHITESPACE as usize).as_bytes()));
    assert!(accepts(spaced(MAX_WHITESPACE as usize + 1).as_bytes()).is_none());
    // Whitespace inside strings is text, not counted.
    let long = format!("{{\"{}\": 1}}", " ".repeat(100));
    assert!(complete(long.as_bytes()));
    assert!(complete(b"{\"\\u00e9\\n\": -0.5e+3}"));
    assert!(accepts(b"{\"\\x\"").is_none());
    assert!(accepts(b"{\"a\":01").is_none(), "no leading zeros");
}
