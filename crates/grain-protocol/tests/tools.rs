//! `tools`, `tool_choice` and `parallel_tool_calls`: which calls a request allows, and how bad
//! ones are refused (param and code, as the SDKs surface them); earlier calls and their results
//! in `messages`.

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
fn each_tool_choice_gives_its_plan() {
    use grain_protocol::CallMode;
    let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
    let tools = json!([tool("a", None), tool("weather", Some(params.clone()))]);
    let plan_of = |choice: Option<Value>| {
        let req = parse(&body(tools.clone(), choice)).unwrap();
        req.call_plan().map(|p| {
            let tools: Vec<_> = p
                .tools
                .iter()
                .map(|t| (t.index, t.name.to_owned(), t.parameters.cloned()))
                .collect();
            (p.mode, tools)
        })
    };
    let both = vec![
        (0, "a".to_owned(), None),
        (1, "weather".to_owned(), Some(params.clone())),
    ];
    let named = json!({"type": "function", "function": {"name": "weather"}});
    assert_eq!(
        plan_of(Some(named)),
        Some((CallMode::Named, vec![both[1].clone()]))
    );
    assert_eq!(
        plan_of(Some(json!("required"))),
        Some((CallMode::Required, both.clone()))
    );
    // "auto", and no tool_choice at all (OpenAI's default with tools), let the model choose.
    assert_eq!(
        plan_of(Some(json!("auto"))),
        Some((CallMode::Auto, both.clone()))
    );
    assert_eq!(plan_of(None), Some((CallMode::Auto, both)));
    assert_eq!(plan_of(Some(json!("none"))), None);

    let mut b = body(json!([tool("only", None)]), Some(json!("required")));
    b["parallel_tool_calls"] = json!(false);
    let req = parse(&b).unwrap();
    assert_eq!(req.call_plan().expect("a plan").tools.len(), 1);
}

#[test]
fn what_cannot_be_called_is_refused_by_name() {
    let one = json!([tool("a", None)]);
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
        &body(one.clone(), Some(json!("sometimes"))),
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
    for choice in [Some(json!("required")), Some(json!("auto")), None] {
        let mut with_json = body(one.clone(), choice.clone());
        with_json["response_format"] = json!({"type": "json_object"});
        refused(&with_json, "response_format", "invalid_value");
        let mut ignoring = body(one.clone(), choice);
        ignoring["ignore_eos"] = json!(true);
        refused(&ignoring, "tool_choice", "invalid_value");
    }
    // With "none" the answer is text: either is fine.
    let mut none = body(one.clone(), Some(json!("none")));
    none["ignore_eos"] = json!(true);
    parse(&none).unwrap();
    let mut none = body(one, Some(json!("none")));
    none["response_format"] = json!({"type": "json_object"});
    parse(&none).unwrap();
}

fn conversation(messages: Value) -> Value {
    json!({"model": "m", "messages": messages, "tools": [tool("get_weather", None)]})
}

fn call(id: &str) -> Value {
    json!({"id": id, "type": "function",
           "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}})
}

#[test]
fn earlier_calls_and_their_results_are_taken() {
    let req = parse(&conversation(json!([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [call("c1"), call("c2")]},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sun"}]},
        {"role": "assistant", "content": "Sun in Paris, rain in Rome."},
        {"role": "user", "content": "And tomorrow?"},
        // A streamed call as a client gathered it: `index` is ignored.
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"index": 0, "id": "c3", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c3", "content": "snow"}
    ])))
    .unwrap();
    let calls: Vec<_> = req.messages.iter().map(|m| m.past_calls().len()).collect();
    assert_eq!(calls, [0, 2, 0, 0, 0, 0, 1, 0]);
    let first = req.messages[1].past_calls()[0];
    assert_eq!(
        (first.id, first.name, first.arguments),
        ("c1", "get_weather", "{\"city\": \"Paris\"}")
    );
}

#[test]
fn results_that_answer_no_call_and_malformed_calls_are_refused() {
    let user = json!({"role": "user", "content": "hi"});
    let asked = json!({"role": "assistant", "content": null, "tool_calls": [call("c1")]});
    let cases = [
        // A result with no call before it, or for another call.
        (
            json!([user, {"role": "tool", "tool_call_id": "c1", "content": "x"}]),
            "messages[1].tool_call_id",
        ),
        (
            json!([user, asked, {"role": "tool", "tool_call_id": "c9", "content": "x"}]),
            "messages[2].tool_call_id",
        ),
        // The call's turn is over once someone else speaks.
        (
            json!([user, asked, user, {"role": "tool", "tool_call_id": "c1", "content": "x"}]),
            "messages[3].tool_call_id",
        ),
        (
            json!([user, asked, {"role": "tool", "content": "x"}]),
            "messages[2].tool_call_id",
        ),
        (
            json!([user, {"role": "user", "content": "x", "tool_call_id": "c1"}]),
            "messages[1].tool_call_id",
        ),
        (
            json!([{"role": "user", "content": "x", "tool_calls": [call("c1")]}]),
            "messages[0].tool_calls",
        ),
        (
            json!([user, {"role": "assistant", "content": null, "tool_calls": []}]),
            "messages[1].tool_calls",
        ),
        (
            json!([user, {"role": "assistant", "content": null,
                          "tool_calls": [{"id": "c1", "function": {"name": "f"}}]}]),
            "messages[1].tool_calls[0]",
        ),
        (
            json!([user, {"role": "assistant", "content": null,
                          "tool_calls": [{"id": "c1", "type": "retrieval",
                                          "function": {"name": "f", "arguments": "{}"}}]}]),
            "messages[1].tool_calls[0]",
        ),
        // No content and no calls.
        (
            json!([user, {"role": "assistant", "content": null}]),
            "messages[1].content",
        ),
        (
            json!([user, asked, {"role": "tool", "tool_call_id": "c1", "content": null}]),
            "messages[2].content",
        ),
        (
            json!([user, asked, {"role": "tool", "tool_call_id": "c1", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
            "messages[2].content[0]",
        ),
        (
            json!([user, {"role": "function", "name": "f", "content": "x"}]),
            "messages[1].role",
        ),
    ];
    for (messages, param) in cases {
        refused(&conversation(messages), param, "invalid_value");
    }
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
