//! [`super::SchemaState`] and [`crate::json_schema`]'s compiler. The end-to-end check, against
//! Python's `jsonschema` and the OpenAI SDK's pydantic parsing, is `tests/e2e/test_json_schema.py`.

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;
use crate::json_schema::JsonSchema;

pub(super) fn compile(v: Value) -> JsonSchema {
    JsonSchema::compile(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// `schema` does not compile, and the error says `says`.
pub(super) fn refused(schema: &Value, says: &str) {
    let e = JsonSchema::compile(schema).expect_err(&schema.to_string());
    assert!(e.contains(says), "{schema}: {e}");
}

/// Whether all of `text` is accepted, and whether it is then complete.
pub(super) fn run(schema: &JsonSchema, text: &str) -> (bool, bool) {
    let mut st = SchemaState::new(&schema.0);
    let ok = st.feed(&schema.0, text.as_bytes());
    (ok, ok && st.is_done())
}

/// What pydantic writes for a model with a nested model, an optional field, an enum, a list and
/// a recursive reference.
fn pydantic_like() -> Value {
    json!({
        "$defs": {
            "Color": {"enum": ["red", "green", "blue"], "title": "Color", "type": "string"},
            "Part": {
                "properties": {
                    "name": {"title": "Name", "type": "string"},
                    "count": {"title": "Count", "type": "integer"},
                    "sub": {"anyOf": [{"$ref": "#/$defs/Part"}, {"type": "null"}]}
                },
                "required": ["name", "count", "sub"],
                "title": "Part",
                "type": "object",
                "additionalProperties": false
            }
        },
        "properties": {
            "title": {"type": "string"},
            "color": {"$ref": "#/$defs/Color"},
            "parts": {"type": "array", "items": {"$ref": "#/$defs/Part"}, "maxItems": 3},
            "price": {"type": ["number", "null"]},
            "ok": {"type": "boolean"},
            "note": {"type": "string", "description": "optional"},
            "extra": {}
        },
        "required": ["title", "color", "parts", "price", "ok"],
        "type": "object",
        "additionalProperties": false
    })
}

#[test]
fn documents_of_the_schema_are_accepted_and_complete() {
    let s = compile(pydantic_like());
    for doc in [
        r#"{"title": "a \"q\" é", "color": "green", "parts": [], "price": null, "ok": true}"#,
        r#"{"title":"","color":"red","parts":[{"name":"x","count":-3,"sub":null}],"price":1.5e3,"ok":false,"note":"n"}"#,
        r#"{ "title" : "t" , "color" : "blue" , "parts" : [ {"name": "a", "count": 0, "sub": {"name": "b", "count": 12, "sub": null}} ] , "price" : -0.25 , "ok" : true , "extra" : [1, {"k": null}] }"#,
        r#"{"title": "t", "color": "red", "parts": [], "price": 7, "ok": true, "note": "x", "extra": 12}"#,
    ] {
        assert_eq!(run(&s, doc), (true, true), "{doc}");
        serde_json::from_str::<Value>(doc).expect("the test documents are JSON");
    }
}

#[test]
fn documents_that_break_the_schema_are_refused() {
    let s = compile(pydantic_like());
    let head = r#"{"title": "t", "color": "red", "parts": [], "price": null, "ok": true"#;
    assert_eq!(run(&s, &format!("{head}}}")), (true, true));
    for bad in [
        // Properties out of order, unknown, missing or repeated.
        r#"{"color": "red""#.to_owned(),
        r#"{"titel""#.to_owned(),
        r#"{"title": "t", "parts""#.to_owned(),
        r#"{"title": "t", "title""#.to_owned(),
        format!("{head}, \"unknown\""),
        // Wrong types and values.
        r#"{"title": 3"#.to_owned(),
        r#"{"title": "t", "color": "pink""#.to_owned(),
        r#"{"title": "t", "color": "red", "parts": [{"name": "x", "count": 1.5"#.to_owned(),
        r#"{"title": "t", "color": "red", "parts": [{"name": "x", "count": 1e2"#.to_owned(),
        r#"{"title": "t", "color": "red", "parts": {}"#.to_owned(),
        r#"{"title": "t", "color": "red", "parts": [], "price": "1""#.to_owned(),
        format!("{head}, \"note\": null"),
        // Too many items, trailing commas, anything after the end.
        r#"{"title": "t", "color": "red", "parts": [{"name":"a","count":1,"sub":null},{"name":"a","count":1,"sub":null},{"name":"a","count":1,"sub":null},"#.to_owned(),
        r#"{"title": "t", "color": "red", "parts": [,"#.to_owned(),
        format!("{head},}}"),
        format!("{head}}} x"),
        format!("{head}}}}}"),
    ] {
        assert!(!run(&s, &bad).0, "accepted: {bad}");
    }
    // The required properties come before the end.
    assert!(!run(&s, r#"{"title": "t"}"#).0);
}

#[test]
fn numeric_literals_that_extend_each_other_end_at_the_next_byte() {
    let s = compile(json!({
        "type": "object",
        "properties": {"v": {"type": "array", "items": {"enum": [1, 12, "1"]}}},
        "required": ["v"]
    }));
    assert_eq!(run(&s, r#"{"v": [1, 12, "1", 12 ,1]}"#), (true, true));
    assert!(!run(&s, r#"{"v": [123"#).0);
    assert!(!run(&s, r#"{"v": [2"#).0);
}

#[test]
fn unsupported_schemas_are_refused_by_name() {
    for (schema, says) in [
        // More fraction digits than a multiple is written with.
        (
            json!({"type": "object", "properties": {"a": {"type": "number", "multipleOf": 1e-30}}}),
            "multipleOf",
        ),
        // Look-around is beyond a DFA.
        (
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "a(?=b)"}}}),
            "pattern",
        ),
        (json!({"type": "string"}), "root must be an object"),
        (
            json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "object"}, {"type": "object", "properties": {}}]}}}),
            "same byte",
        ),
        (
            json!({"type": "object", "properties": {}, "required": ["a"]}),
            "'a' is not in properties",
        ),
        (
            json!({"type": "object", "properties": {"a": {"$ref": "https://x/y"}}}),
            "$ref",
        ),
        (
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/B"}}}),
            "no such definition",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "date"}}}),
            "unknown type 'date'",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "array", "minItems": 3, "maxItems": 2}}}),
            "minItems",
        ),
    ] {
        refused(&schema, says);
    }
}

#[test]
fn a_free_object_schema_takes_any_object_and_an_empty_closed_one_only_braces() {
    let free = compile(json!({"type": "object"}));
    assert_eq!(run(&free, r#"{"a": [1, {"b": null}]}"#), (true, true));
    assert!(!run(&free, "[").0);
    let closed =
        compile(json!({"type": "object", "properties": {}, "additionalProperties": false}));
    assert_eq!(run(&closed, "{ }"), (true, true));
    assert!(!run(&closed, "{\"").0);
}

/// Random walks through the schema (each step a random byte the state accepts) end as JSON
/// documents with the schema's shape: serde_json parses them, and the properties, their order,
/// types and enum values are checked here.
#[test]
fn random_walks_write_documents_of_the_schema() {
    let s = compile(pydantic_like());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut finished = 0;
    for _ in 0..300 {
        let mut st = SchemaState::new(&s.0);
        let mut text = Vec::new();
        for _ in 0..400 {
            if st.is_done() {
                break;
            }
            let ok: Vec<u8> = (0..=255u8)
                .filter(|&b| {
                    let mut next = st;
                    next.feed(&s.0, &[b])
                })
                .collect();
            assert!(
                !ok.is_empty(),
                "a dead end after {:?}",
                String::from_utf8_lossy(&text)
            );
            // `accepts` (which may copy only the leaf) agrees with feeding a copy, on tokens of
            // one to six bytes drawn from what may come next and what closes things.
            for _ in 0..4 {
                let token: Vec<u8> = (0..rng.random_range(1..=6))
                    .map(|_| b"\"a1.e-}],: {[ntf"[rng.random_range(0..16)])
                    .collect();
                let mut copy = st;
                assert_eq!(
                    st.accepts(&s.0, &token),
                    copy.feed(&s.0, &token),
                    "{token:?}"
                );
            }
            // Favour structure over long strings and whitespace, as a model would.
            let closing: Vec<u8> = ok
                .iter()
                .copied()
                .filter(|b| b"\"}],".contains(b))
                .collect();
            let pool = if !closing.is_empty() && rng.random_bool(0.3) {
                &closing
            } else {
                &ok
            };
            let b = pool[rng.random_range(0..pool.len())];
            assert!(st.feed(&s.0, &[b]));
            text.push(b);
        }
        if !st.is_done() {
            continue;
        }
        finished += 1;
        let text = String::from_utf8(text).expect("strings are valid UTF-8");
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            // JSON numbers have no range; serde_json's are f64 (a walk may write `1E362`).
            Err(e) if e.to_string().starts_with("number out of range") => continue,
            Err(e) => panic!("{text}: {e}"),
        };
        check_document(&v, &text);
    }
    assert!(finished > 50, "only {finished} of 300 walks finished");
}

fn check_document(v: &Value, text: &str) {
    let o = v.as_object().expect("an object");
    let order = ["title", "color", "parts", "price", "ok", "note", "extra"];
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    let mut at = 0;
    for k in &keys {
        let i = order
            .iter()
            .position(|o| o == k)
            .unwrap_or_else(|| panic!("key {k}: {text}"));
        assert!(i >= at, "keys out of order: {text}");
        at = i + 1;
    }
    for k in ["title", "color", "parts", "price", "ok"] {
        assert!(o.contains_key(k), "{k} missing: {text}");
    }
    assert!(o["title"].is_string() && o["ok"].is_boolean(), "{text}");
    assert!(
        ["red", "green", "blue"].contains(&o["color"].as_str().unwrap_or("")),
        "{text}"
    );
    assert!(o["price"].is_number() || o["price"].is_null(), "{text}");
    assert!(o.get("note").is_none_or(Value::is_string), "{text}");
    let parts = o["parts"].as_array().expect("parts");
    assert!(parts.len() <= 3, "{text}");
    fn part(p: &Value, text: &str) {
        let p = p.as_object().expect("a part");
        let keys: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "count", "sub"], "{text}");
        let count = p["count"].as_f64().expect("a number");
        assert!(p["name"].is_string() && count.fract() == 0.0, "{text}");
        if !p["sub"].is_null() {
            part(&p["sub"], text);
        }
    }
    parts.iter().for_each(|p| part(p, text));
}

#[test]
fn objects_told_apart_by_their_first_required_key_may_share_an_any_of() {
    let s = compile(json!({
        "type": "object",
        "properties": {"pet": {"anyOf": [
            {"type": "object", "properties": {"cat": {"type": "boolean"}, "age": {"type": "integer"}},
             "required": ["cat"]},
            {"$ref": "#/$defs/Dog"},
            {"type": "null"}
        ]}},
        "required": ["pet"],
        "$defs": {"Dog": {"type": "object", "properties": {"dog": {"enum": ["big", "small"]}},
                          "required": ["dog"], "additionalProperties": false}}
    }));
    for doc in [
        r#"{"pet": {"cat": true, "age": 3}}"#,
        r#"{"pet": { "dog" : "big"}}"#,
        r#"{"pet": null}"#,
    ] {
        assert_eq!(run(&s, doc), (true, true), "{doc}");
    }
    for bad in [
        r#"{"pet": {}"#,
        r#"{"pet": {"age""#,
        r#"{"pet": {"dog": true"#,
        r#"{"pet": {"cat": true, "dog""#,
    ] {
        assert!(!run(&s, bad).0, "accepted: {bad}");
    }
    for (schema, says) in [
        (
            json!({"type": "object", "properties": {"p": {"anyOf": [
                {"type": "object", "properties": {"a": {}}, "required": ["a"]},
                {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["a"]}]}}}),
            "same required property \"a\"",
        ),
        (
            json!({"type": "object", "properties": {"p": {"anyOf": [
                {"type": "object", "properties": {"a": {}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {}}, "required": ["b"]},
                {}]}}}),
            "besides objects",
        ),
    ] {
        refused(&schema, says);
    }
    // 65 alternatives, 64 of them keyed objects: more than the key's bit set holds.
    let mut alts: Vec<Value> = (0..64)
        .map(|i| json!({"type": "object", "properties": {format!("k{i}"): {}}, "required": [format!("k{i}")]}))
        .collect();
    alts.insert(0, json!({"type": "null"}));
    let schema = json!({"type": "object", "properties": {"p": {"anyOf": alts}}});
    refused(&schema, "at most 64");
}

#[test]
fn object_and_array_keywords_without_a_type_are_enforced() {
    let s = compile(json!({"type": "object", "properties": {
        "o": {"required": ["a"], "properties": {"a": {"type": "integer"}}},
        "l": {"minItems": 2, "items": {"type": "boolean"}}
    }, "required": ["o", "l"]}));
    assert_eq!(
        run(&s, r#"{"o": {"a": 1}, "l": [true, false]}"#),
        (true, true)
    );
    assert!(!run(&s, r#"{"o": {}"#).0, "required holds without a type");
    assert!(
        !run(&s, r#"{"o": {"a": 1}, "l": [true]}"#).0,
        "minItems holds without a type"
    );
    assert!(!run(&s, r#"{"o": 3"#).0);
}

/// OpenAI's non-strict schemas: keywords that only narrow a value's range are left unenforced,
/// the structure is held; a strict compile refuses the same schema by keyword. Keywords that do
/// more than narrow one value (`patternProperties`, `not`, `if`) are refused either way.
#[test]
fn best_effort_passes_over_narrowing_keywords_and_holds_the_structure() {
    let schema = json!({"type": "object", "properties": {
        "age": {"type": "number", "multipleOf": 1e-30},
        "name": {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^[A-Z]"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
        "meta": {"type": "object", "maxProperties": 2, "readOnly": true}
    }, "required": ["age", "name"], "additionalProperties": false});
    let e = JsonSchema::compile(&schema).expect_err("strict refuses");
    assert!(e.contains("multipleOf"), "{e}");
    let s = JsonSchema::compile_best_effort(&schema).unwrap();
    // The ones it cannot enforce are not: 99.37 passes `multipleOf: 1e-30`.
    assert_eq!(run(&s, r#"{"age": 99.37, "name": "Tom"}"#), (true, true));
    // A string's length and pattern are, in both modes: not empty, at most eight characters,
    // a capital first.
    assert!(!run(&s, r##"{"age": 3, "name": """##).0);
    assert!(!run(&s, r#"{"age": 3, "name": "Abcdefghi"#).0);
    assert!(!run(&s, r#"{"age": 3, "name": "t"#).0);
    // A number's bounds are, in both modes.
    let bounded = json!({"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": 5}}, "required": ["n"]});
    for s in [
        JsonSchema::compile(&bounded).unwrap(),
        JsonSchema::compile_best_effort(&bounded).unwrap(),
    ] {
        assert_eq!(run(&s, r#"{"n": 5}"#), (true, true));
        assert!(!run(&s, r#"{"n": 6"#).0 && !run(&s, r#"{"n": 0"#).0);
    }
    assert_eq!(
        run(
            &s,
            r#"{"age": 3, "name": "Tom", "tags": ["a", "a"], "meta": {}}"#
        ),
        (true, true)
    );
    // The structure is.
    for bad in [
        r#"{"age": "3""#,
        r#"{"age": true"#,
        r#"{"age": 3, "nick""#,
        r#"{"age": 3, "name": 1"#,
        r#"{"age": 3, "tags": [1"#,
    ] {
        assert!(!run(&s, bad).0, "accepted: {bad}");
    }
    assert_eq!(run(&s, r#"{"age": 3}"#), (false, false), "name is required");
    // Annotations are annotations in both modes.
    compile(
        json!({"type": "object", "properties": {"a": {"type": "integer", "deprecated": true,
        "writeOnly": false}}}),
    );
    for (kw, sub) in [
        ("patternProperties", json!({"^x": {"type": "integer"}})),
        ("not", json!({"type": "null"})),
        ("if", json!({"type": "integer"})),
    ] {
        let mut schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        schema["properties"]["a"][kw] = sub;
        let e = JsonSchema::compile_best_effort(&schema).expect_err(kw);
        assert!(e.contains(kw), "{e}");
    }
}
