//! `response_format`: `text`, `json_object` and `json_schema` (the `json_schema` object's own
//! fields; the schema itself is the engine's to compile), and what each refuses.

use serde_json::json;

mod common;
use common::{parse, refused, with};

#[test]
fn response_format_takes_text_json_object_and_json_schema_and_names_what_it_refuses() {
    for kind in ["text", "json_object"] {
        let req = parse(&with("response_format", json!({"type": kind}))).unwrap();
        assert_eq!(req.wants_json_object(), kind == "json_object");
        assert_eq!(req.json_schema(), None);
    }
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let format = json!({"type": "json_schema", "json_schema": {"name": "x-1", "schema": schema, "strict": true}});
    let req = parse(&with("response_format", format)).unwrap();
    assert_eq!(req.json_schema(), Some(Some(&schema)));
    let bare = json!({"type": "json_schema", "json_schema": {"name": "x"}});
    assert_eq!(
        parse(&with("response_format", bare)).unwrap().json_schema(),
        Some(None)
    );
    for (field, param, code) in [
        (
            json!(null),
            "response_format.json_schema",
            "missing_required_parameter",
        ),
        (
            json!({"schema": {}}),
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
        (
            json!({"name": "a b"}),
            "response_format.json_schema.name",
            "invalid_value",
        ),
        (
            json!({"name": "a", "schema": []}),
            "response_format.json_schema.schema",
            "invalid_value",
        ),
        (
            json!({"name": "a", "strict": "yes"}),
            "response_format.json_schema.strict",
            "invalid_value",
        ),
        (
            json!({"name": "a", "shema": {}}),
            "response_format.json_schema.shema",
            "invalid_value",
        ),
    ] {
        let mut format = json!({"type": "json_schema"});
        if !field.is_null() {
            format["json_schema"] = field;
        }
        refused(&with("response_format", format), param, code);
    }
    let mut ignoring = with(
        "response_format",
        json!({"type": "json_schema", "json_schema": {"name": "x"}}),
    );
    ignoring["ignore_eos"] = json!(true);
    refused(&ignoring, "response_format", "invalid_value");
    refused(
        &with("response_format", json!({"type": "yaml"})),
        "response_format.type",
        "invalid_value",
    );
    refused(
        &with(
            "response_format",
            json!({"type": "json_object", "strict": true}),
        ),
        "response_format.strict",
        "unknown_parameter",
    );
    refused(
        &with("response_format", json!("json_object")),
        "response_format",
        "invalid_type",
    );
    let mut body = with("response_format", json!({"type": "json_object"}));
    body["ignore_eos"] = json!(true);
    refused(&body, "response_format", "invalid_value");
}
