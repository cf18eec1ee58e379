//! `tools`, `tool_choice` and `parallel_tool_calls`: which requests force a call, and how the
//! others are refused (param and code, as the SDKs surface them).

use serde_json::{json, Value};

mod common;
use common::{parse, refused};

fn body(tools: Value, choice: Option<Value>) -> Value {
    let mut b =
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools});
    if let Some(c) = choice {
        b["tool_choice"] = c;
    }
    b
}

fn tool(name: &str, parameters: Option<Value>) -> Value {
    let mut f = json!({"name": name, "description": "d", "strict": true});
    if let Some(p) = parameters {
        f["parameters"] = p;
    }
    json!({"type": "function", "function": f})
}

#[test]
fn a_named_or_required_choice_forces_the_call() {
    let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let tools = json!([tool("a", None), tool("weather", Some(params.clone()))]);
    let named = json!({"type": "function", "function": {"name": "weather"}});
    let req = parse(&body(tools.clone(), Some(named))).unwrap();
    let call = req.forced_call().expect("forced");
    assert!(!call.required);
    let got: Vec<_> = call
        .tools
        .iter()
        .map(|t| (t.index, t.name, t.parameters))
        .collect();
    assert_eq!(got, [(1, "weather", Some(&params))]);

    let req = parse(&body(tools, Some(json!("required")))).unwrap();
    let call = req.forced_call().expect("forced");
    assert!(call.required);
    let got: Vec<_> = call
        .tools
        .iter()
        .map(|t| (t.index, t.name, t.parameters))
        .collect();
    assert_eq!(got, [(0, "a", None), (1, "weather", Some(&params))]);

    let mut b = body(json!([tool("only", None)]), Some(json!("required")));
    b["parallel_tool_calls"] = json!(false);
    let req = parse(&b).unwrap();
    let call = req.forced_call().expect("forced");
    assert_eq!(call.tools.len(), 1);

    let none = parse(&body(json!([tool("a", None)]), Some(json!("none")))).unwrap();
    assert_eq!(none.forced_call(), None);
}

#[test]
fn what_cannot_be_forced_is_refused_by_name() {
    let one = json!([tool("a", None)]);
    let msg = refused(&body(one.clone(), None), "tool_choice", "invalid_value");
    assert!(msg.contains("'auto'"), "{msg}");
    refused(
        &body(one.clone(), Some(json!("auto"))),
        "tool_choice",
        "invalid_value",
    );
    refused(
        &body(
            one.clone(),
            Some(json!({"type": "function", "function": {"name": "zz"}})),
        ),
        "tool_choice.function.name",
        "invalid_value",
    );
    refused(
        &body(one.clone(), Some(json!({"type": "function", "name": "a"}))),
        "tool_choice",
        "invalid_value",
    );
    refused(
        &body(one.clone(), Some(json!(7))),
        "tool_choice",
        "invalid_type",
    );
    let mut no_tools = body(json!(null), Some(json!("required")));
    no_tools.as_object_mut().unwrap().remove("tools");
    refused(&no_tools, "tool_choice", "invalid_value");
    let mut with_json = body(one.clone(), Some(json!("required")));
    with_json["response_format"] = json!({"type": "json_object"});
    refused(&with_json, "response_format", "invalid_value");
    let mut ignoring = body(one, Some(json!("required")));
    ignoring["ignore_eos"] = json!(true);
    refused(&ignoring, "tool_choice", "invalid_value");
}

#[test]
fn malformed_tools_name_the_bad_part() {
    let required = Some(json!("required"));
    for (tools, param, code) in [
        (json!([]), "tools", "invalid_value"),
        (json!([7]), "tools[0]", "invalid_value"),
        (
            json!([{"type": "retrieval", "function": {"name": "a"}}]),
            "tools[0].type",
            "invalid_value",
        ),
        (
            json!([{"type": "function"}]),
            "tools[0].function",
            "invalid_value",
        ),
        (
            json!([{"type": "function", "function": {"name": "a b"}}]),
            "tools[0].function.name",
            "invalid_value",
        ),
        (
            json!([{"type": "function", "function": {"name": "a", "parameters": "x"}}]),
            "tools[0].function.parameters",
            "invalid_value",
        ),
        (
            json!([{"type": "function", "function": {"name": "a", "strict": 1}}]),
            "tools[0].function.strict",
            "invalid_value",
        ),
        (
            json!([{"type": "function", "function": {"name": "a", "params": {}}}]),
            "tools[0].function.params",
            "unknown_parameter",
        ),
        (
            json!([{"type": "function", "function": {"name": "a"}, "x": 1}]),
            "tools[0].x",
            "unknown_parameter",
        ),
        (
            json!([tool("a", None), tool("a", None)]),
            "tools[1].function.name",
            "invalid_value",
        ),
    ] {
        refused(&body(tools, required.clone()), param, code);
    }
    let many: Vec<Value> = (0..=grain_protocol::MAX_TOOLS)
        .map(|i| tool(&format!("f{i}"), None))
        .collect();
    refused(
        &body(Value::Array(many), required),
        "tools",
        "invalid_value",
    );
}
