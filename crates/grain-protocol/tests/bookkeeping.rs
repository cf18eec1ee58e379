//! `user`, `safety_identifier`, `metadata`, `store`, `service_tier` and `prompt_cache_key`:
//! accepted where Grain does what they ask, refused by name where it cannot.

use serde_json::{json, Value};

mod common;
use common::{base, parse, refused, with};

#[test]
fn bookkeeping_fields_are_taken() {
    let mut body = base();
    let metadata: serde_json::Map<String, Value> = (0..16)
        .map(|i| (format!("k{i}"), json!("v".repeat(512))))
        .collect();
    for (field, value) in [
        ("user", json!("u-1")),
        ("safety_identifier", json!("hash-of-user")),
        ("metadata", Value::Object(metadata)),
        ("store", json!(false)),
        ("service_tier", json!("auto")),
        ("prompt_cache_key", json!("tenant-7")),
    ] {
        body[field] = value;
    }
    let req = parse(&body).unwrap();
    assert_eq!(req.metadata.as_ref().map(|m| m.len()), Some(16));
    assert_eq!(req.service_tier.as_deref(), Some("auto"));
    parse(&with("service_tier", json!("default"))).unwrap();
    parse(&with("metadata", json!({}))).unwrap();
}

#[test]
fn what_grain_cannot_do_is_refused_by_name() {
    let msg = refused(&with("store", json!(true)), "store", "invalid_value");
    assert!(msg.contains("does not store"), "{msg}");
    refused(
        &with("service_tier", json!("flex")),
        "service_tier",
        "invalid_value",
    );
    refused(
        &with("service_tier", json!(1)),
        "service_tier",
        "invalid_type",
    );
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    refused(
        &with("metadata", Value::Object(many)),
        "metadata",
        "invalid_value",
    );
    refused(
        &with("metadata", json!({"k": 1})),
        "metadata.k",
        "invalid_value",
    );
    refused(
        &with("metadata", json!({"k": "v".repeat(513)})),
        "metadata.k",
        "invalid_value",
    );
    let long_key = "k".repeat(65);
    refused(
        &with("metadata", json!({long_key.clone(): "v"})),
        &format!("metadata.{long_key}"),
        "invalid_value",
    );
    refused(&with("metadata", json!([])), "metadata", "invalid_type");
    refused(
        &with("user", json!("u".repeat(513))),
        "user",
        "invalid_value",
    );
    // Still refused: what would change the answer and cannot be done.
    for field in [
        "reasoning_effort",
        "verbosity",
        "web_search_options",
        "prediction",
    ] {
        refused(&with(field, json!("low")), field, "unsupported_parameter");
    }
}
