//! What a request's tools become for the engine: the schema a call is held to, the tools
//! described in the system prompt, and earlier calls and results written into the conversation.
//!
//! LLaVA's chat templates have no tool roles, so Grain writes tools, calls and results as text, in
//! the same shape the model is held to when it calls:
//! - the tools go into the system message, or before the first user text when there is none:
//!   what the model may call, and how ([`tools_prompt`], [`add_tools_prompt`]);
//! - an assistant message's earlier `tool_calls` become its text, one `{"<name>": <arguments>}`
//!   per line ([`call_text`]);
//! - `tool` messages become a user turn, one `{"tool_result": {"name": ..., "content": ...}}` per
//!   line, consecutive results in one turn ([`result_text`]).

use grain_engine as engine;
use grain_protocol as wire;
use serde_json::{json, Value};

use crate::errors::ApiError;

/// The one function a call's text is the arguments of (a named choice, or `"required"` with one
/// tool); `None` when the text is `{"<name>": <arguments>}` (several tools, or `"auto"`, where
/// a call must be told from text).
pub(crate) fn single<'a>(plan: &'a wire::CallPlan<'_>) -> Option<&'a wire::OfferedTool<'a>> {
    match (plan.mode, plan.tools.as_slice()) {
        (wire::CallMode::Auto, _) => None,
        (_, [one]) => Some(one),
        _ => None,
    }
}

/// The schema a call's text is held to: the function's parameters (none: `{}`) when one function
/// is forced, or else (several functions, or `"auto"`) `{"<name>": <parameters>}` for one of them,
/// its first key naming it ([`crate::tool_calls`]). Each function's parameters are compiled alone
/// first, so that an unsupported one is named; as its `strict` asks
/// ([`crate::convert::compile_schema`]).
pub(crate) fn call_schema(call: &wire::CallPlan<'_>) -> Result<engine::JsonSchema, ApiError> {
    let none = json!({"type": "object", "properties": {}, "additionalProperties": false});
    let compile = |schema: &Value, strict: bool, param: String| {
        crate::convert::compile_schema(schema, strict).map_err(|message| {
            ApiError::from(wire::RequestError::InvalidValue {
                param,
                message: format!("unsupported JSON Schema: {message}"),
            })
        })
    };
    let param = |t: &wire::OfferedTool<'_>| format!("tools[{}].function.parameters", t.index);
    if let Some(one) = single(call) {
        return compile(one.parameters.unwrap_or(&none), one.strict, param(one));
    }
    let mut alternatives = Vec::with_capacity(call.tools.len());
    // Each function's definitions (`$defs`, `definitions`) move to the envelope's root, where
    // its `$ref`s now point.
    let mut defs = serde_json::Map::new();
    for t in &call.tools {
        let parameters = t.parameters.unwrap_or(&none);
        compile(parameters, t.strict, param(t))?;
        let mut parameters = parameters.clone();
        if let Some(obj) = parameters.as_object_mut() {
            for key in ["$defs", "definitions"] {
                let Some(Value::Object(own)) = obj.remove(key) else {
                    continue;
                };
                let slot = definitions(&mut defs, key);
                for (name, schema) in own {
                    match slot.get(&name) {
                        Some(other) if *other != schema => {
                            return Err(wire::RequestError::InvalidValue {
                                param: param(t),
                                message: format!(
                                    "'{key}/{name}' differs from another tool's definition of \
                                     the same name"
                                ),
                            }
                            .into())
                        }
                        _ => {
                            slot.insert(name, schema);
                        }
                    }
                }
            }
        }
        // The function's own root is no longer the schema's: where its `$ref`s point to `#`,
        // it becomes a definition and they point there.
        let home = format!("grain_tool_{}", t.name);
        let target = format!("#/$defs/{home}");
        if point_root_refs(&mut parameters, &target) {
            let slot = definitions(&mut defs, "$defs");
            if slot.contains_key(&home) {
                return Err(wire::RequestError::InvalidValue {
                    param: param(t),
                    message: format!("'$defs/{home}' is a name Grain keeps for itself"),
                }
                .into());
            }
            slot.insert(home, parameters);
            parameters = json!({"$ref": target});
        }
        alternatives.push(json!({
            "type": "object",
            "properties": {t.name: parameters},
            "required": [t.name],
            "additionalProperties": false,
        }));
    }
    let mut envelope = json!({"anyOf": alternatives});
    envelope.as_object_mut().expect("an object").extend(defs);
    // Each strict function compiled strictly on its own, so it has no keyword that best effort
    // would leave unenforced: the envelope is strict only where every function is.
    compile(
        &envelope,
        call.tools.iter().all(|t| t.strict),
        "tools".into(),
    )
}

/// The envelope's definitions under `key` (`$defs` or `definitions`), made on first use.
fn definitions<'a>(
    defs: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> &'a mut serde_json::Map<String, Value> {
    let slot = defs
        .entry(key)
        .or_insert_with(|| Value::Object(Default::default()));
    slot.as_object_mut().expect("an object")
}

/// Points every `$ref` to the schema's root (`#`) at `target`; whether there was one.
fn point_root_refs(v: &mut Value, target: &str) -> bool {
    let mut found = false;
    match v {
        Value::Object(m) => {
            if m.get("$ref").and_then(|r| r.as_str()) == Some("#") {
                m.insert("$ref".into(), Value::String(target.to_owned()));
                found = true;
            }
            for v in m.values_mut() {
                found |= point_root_refs(v, target);
            }
        }
        Value::Array(a) => {
            for v in a {
                found |= point_root_refs(v, target);
            }
        }
        _ => {}
    }
    found
}

/// The system prompt's part that offers the tools: each as one line of JSON (name, description,
/// parameters), and how to call.
pub(crate) fn tools_prompt(plan: &wire::CallPlan<'_>, tools: &[Value]) -> String {
    let mut text = String::from(match (plan.mode, single(plan)) {
        (wire::CallMode::Auto, _) => {
            "You can call these tools. To call one, answer with only a JSON object whose one key \
             is the tool's name and whose value is its arguments, {\"<name>\": <arguments>}; \
             otherwise answer in text."
        }
        (_, Some(_)) => "Call this tool: answer with only its arguments, as a JSON object.",
        (_, None) => {
            "Call one of these tools: answer with only a JSON object whose one key is the tool's \
             name and whose value is its arguments, {\"<name>\": <arguments>}."
        }
    });
    text.push_str("\nTools:");
    for t in &plan.tools {
        let f = tools.get(t.index).and_then(|v| v.get("function"));
        let mut line = json!({"name": t.name});
        if let Some(d) = f.and_then(|f| f.get("description")) {
            line["description"] = d.clone();
        }
        if let Some(p) = t.parameters {
            line["parameters"] = p.clone();
        }
        text.push('\n');
        text.push_str(&line.to_string());
    }
    text
}

/// An earlier call as the model writes one: `{"<name>": <arguments>}`. Arguments that are not
/// JSON (a client's own) go in as a JSON string.
pub(crate) fn call_text(call: &wire::PastCall<'_>) -> String {
    let arguments = serde_json::from_str::<Value>(call.arguments)
        .unwrap_or_else(|_| Value::String(call.arguments.to_owned()));
    let mut envelope = serde_json::Map::new();
    envelope.insert(call.name.to_owned(), arguments);
    Value::Object(envelope).to_string()
}

/// A tool's result: `{"tool_result": {"name": ..., "content": ...}}`, the content as JSON when it
/// is JSON text, else as a string.
pub(crate) fn result_text(name: &str, content: &str) -> String {
    let content = serde_json::from_str::<Value>(content)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
        .unwrap_or_else(|| Value::String(content.to_owned()));
    json!({"tool_result": {"name": name, "content": content}}).to_string()
}

/// Adds `text` to a message's last text part after `sep`, or as a part of its own (after an
/// image, or in a message with no parts).
pub(crate) fn append_text(parts: &mut Vec<engine::Part>, sep: &str, text: &str) {
    match parts.last_mut() {
        Some(engine::Part::Text(last)) => {
            last.push_str(sep);
            last.push_str(text);
        }
        _ => parts.push(engine::Part::Text(text.to_owned())),
    }
}

/// Adds `prompt` to the conversation's system message. Where there is none, it goes before the
/// first user message's text (after any image there) rather than into a new system message:
/// a template's default system text (Vicuna's) would give way to it, and some templates take no
/// system message at all.
pub(crate) fn add_tools_prompt(messages: &mut Vec<engine::Message>, prompt: String) {
    if let Some(m) = messages
        .first_mut()
        .filter(|m| m.role == engine::Role::System)
    {
        return append_text(&mut m.parts, "\n\n", &prompt);
    }
    let Some(user) = messages.iter_mut().find(|m| m.role == engine::Role::User) else {
        let parts = vec![engine::Part::Text(prompt)];
        let role = engine::Role::System;
        return messages.insert(0, engine::Message { role, parts });
    };
    match user.parts.iter_mut().find_map(|p| match p {
        engine::Part::Text(t) => Some(t),
        engine::Part::Image { .. } => None,
    }) {
        Some(text) => *text = format!("{prompt}\n\n{text}"),
        None => user.parts.push(engine::Part::Text(prompt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_results_are_written_as_json_lines() {
        let call = wire::PastCall {
            id: "call_1",
            name: "get_weather",
            arguments: "{\"city\": \"Paris\"}",
        };
        assert_eq!(call_text(&call), r#"{"get_weather":{"city":"Paris"}}"#);
        let odd = wire::PastCall {
            arguments: "city=Paris",
            ..call
        };
        assert_eq!(call_text(&odd), r#"{"get_weather":"city=Paris"}"#);
        assert_eq!(
            result_text("get_weather", "{\"temp\": 21}"),
            r#"{"tool_result":{"name":"get_weather","content":{"temp":21}}}"#
        );
        assert_eq!(
            result_text("get_weather", "21 degrees"),
            r#"{"tool_result":{"name":"get_weather","content":"21 degrees"}}"#
        );
        // A bare JSON scalar stays the client's text.
        assert_eq!(
            result_text("f", "21"),
            r#"{"tool_result":{"name":"f","content":"21"}}"#
        );
    }

    /// A function whose parameters refer to their own root (a recursive schema) keeps that
    /// recursion inside the envelope: its root becomes a definition. The envelope accepts the
    /// same documents under the function's name.
    #[test]
    fn a_recursive_function_keeps_its_recursion_in_the_envelope() {
        let node = json!({"type": "object",
            "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
            "required": ["v", "next"], "additionalProperties": false});
        let plan = wire::CallPlan {
            tools: vec![wire::OfferedTool {
                index: 0,
                name: "walk",
                parameters: Some(&node),
                strict: true,
            }],
            mode: wire::CallMode::Auto,
        };
        let schema = call_schema(&plan).expect("compiles");
        let ok = br#"{"walk": {"v": 1, "next": {"v": 2, "next": null}}}"#;
        assert!(schema.matches(ok));
        let bad = br#"{"walk": {"v": 1, "next": {"v": 2}}}"#;
        assert!(!schema.matches(bad));
    }

    #[test]
    fn the_prompt_lists_the_offered_tools_and_says_how_to_call() {
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let tools = vec![
            json!({"type": "function", "function": {"name": "a", "description": "first"}}),
            json!({"type": "function", "function": {"name": "b", "parameters": params}}),
        ];
        let offered = |index, name, parameters| wire::OfferedTool {
            index,
            name,
            parameters,
            strict: false,
        };
        let all = vec![offered(0, "a", None), offered(1, "b", Some(&params))];
        let auto = wire::CallPlan {
            tools: all.clone(),
            mode: wire::CallMode::Auto,
        };
        let text = tools_prompt(&auto, &tools);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("otherwise answer in text"), "{text}");
        assert_eq!(lines[1], "Tools:");
        let listed: Vec<Value> = lines[2..]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            listed,
            [
                json!({"name": "a", "description": "first"}),
                json!({"name": "b", "parameters": params})
            ]
        );
        let named = wire::CallPlan {
            tools: vec![offered(1, "b", Some(&params))],
            mode: wire::CallMode::Named,
        };
        let text = tools_prompt(&named, &tools);
        assert!(text.starts_with("Call this tool"), "{text}");
        assert_eq!(text.lines().count(), 3);
        assert!(single(&named).is_some() && single(&auto).is_none());
    }

    #[test]
    fn the_prompt_joins_the_system_message_or_the_first_user_text() {
        let text = |t: &str| engine::Part::Text(t.into());
        let image = engine::Part::Image {
            data: vec![1],
            detail: engine::Detail::Auto,
        };
        let message = |role, parts| engine::Message { role, parts };
        let (system, user, assistant) = (
            engine::Role::System,
            engine::Role::User,
            engine::Role::Assistant,
        );
        let cases = [
            (
                vec![
                    message(system, vec![text("Be brief.")]),
                    message(user, vec![text("hi")]),
                ],
                vec![
                    message(system, vec![text("Be brief.\n\nT")]),
                    message(user, vec![text("hi")]),
                ],
            ),
            // No system message: before the first user text, after its image.
            (
                vec![
                    message(user, vec![image.clone(), text("what is it?")]),
                    message(assistant, vec![text("a cat")]),
                    message(user, vec![text("sure?")]),
                ],
                vec![
                    message(user, vec![image.clone(), text("T\n\nwhat is it?")]),
                    message(assistant, vec![text("a cat")]),
                    message(user, vec![text("sure?")]),
                ],
            ),
            (
                vec![message(user, vec![image.clone()])],
                vec![message(user, vec![image.clone(), text("T")])],
            ),
            (
                vec![message(assistant, vec![text("x")])],
                vec![
                    message(system, vec![text("T")]),
                    message(assistant, vec![text("x")]),
                ],
            ),
        ];
        for (mut messages, want) in cases {
            add_tools_prompt(&mut messages, "T".into());
            assert_eq!(messages, want);
        }
        let mut parts = vec![image.clone()];
        append_text(&mut parts, "\n", "a");
        append_text(&mut parts, "\n", "b");
        assert_eq!(parts, [image, engine::Part::Text("a\nb".into())]);
    }
}
