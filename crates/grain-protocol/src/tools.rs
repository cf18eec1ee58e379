//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` on the request, `tool_calls` on
//! the answer.
//!
//! Grain calls a tool only when the request forces one: `tool_choice` naming a function, or
//! `"required"`. The engine then holds the choice's text to the function's `parameters` schema
//! (structured outputs), and the text becomes the call's `arguments`; with `"required"` and
//! several tools the model writes `{"<name>": <arguments>}`, its first key choosing the function.
//! This is what structured-extraction clients send (instructor's tools mode, LangChain's
//! `with_structured_output(method="function_calling")` and `tool_choice="any"`). `"auto"` (the
//! default when tools are given) is refused: telling a tool call from prose needs a model and chat
//! template trained for it, which LLaVA's are not. The tool definitions are not added to the
//! prompt (the chat templates have no place for them); describe the task in the messages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::RequestError;
use crate::request::ChatCompletionRequest;

/// The most tools a request may define.
pub const MAX_TOOLS: usize = 128;

/// A function the request may force a call of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForcedTool<'a> {
    /// Index in `tools`.
    pub index: usize,
    pub name: &'a str,
    /// The function's `parameters` (a JSON Schema); `None` when it takes none.
    pub parameters: Option<&'a Value>,
}

/// The call a request forces: of its one function, or (`"required"` with several tools) of the
/// one the model picks.
#[derive(Debug, Clone, PartialEq)]
pub struct ForcedCall<'a> {
    pub tools: Vec<ForcedTool<'a>>,
    /// Forced by `"required"` (finish reason `tool_calls`), not by name (finish reason `stop`,
    /// as OpenAI answers a named `tool_choice`).
    pub required: bool,
}

/// `tool_calls[]` of an answer's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as JSON text, as the model wrote them.
    pub arguments: String,
}

/// `delta.tool_calls[]` of a streamed chunk: the first names the call, the rest add to its
/// arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ChatCompletionRequest {
    /// The call this request forces, once validation has passed.
    pub fn forced_call(&self) -> Option<ForcedCall<'_>> {
        let tools = self.tools.as_ref()?;
        let all = tools.iter().enumerate().filter_map(|(index, t)| {
            let (name, parameters) = function(t)?;
            Some(ForcedTool {
                index,
                name,
                parameters,
            })
        });
        match self.tool_choice.as_ref() {
            Some(Value::String(s)) if s == "required" => Some(ForcedCall {
                tools: all.collect(),
                required: true,
            }),
            Some(Value::Object(o)) => {
                let name = o.get("function")?.get("name")?.as_str()?;
                Some(ForcedCall {
                    tools: all.filter(|t| t.name == name).collect(),
                    required: false,
                })
            }
            _ => None,
        }
    }
}

/// A tool's function name and parameters.
fn function(tool: &Value) -> Option<(&str, Option<&Value>)> {
    let f = tool.get("function")?;
    Some((f.get("name")?.as_str()?, f.get("parameters")))
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> RequestError {
    RequestError::invalid_value(param, message)
}

/// A function name as OpenAI allows it.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `tools`, `tool_choice` and their combination with `response_format`.
pub(crate) fn validate_tools(req: &ChatCompletionRequest) -> Result<(), RequestError> {
    let Some(tools) = &req.tools else {
        return match &req.tool_choice {
            None => Ok(()),
            Some(_) => Err(invalid(
                "tool_choice",
                "is only allowed when tools are given",
            )),
        };
    };
    if tools.is_empty() || tools.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("must hold 1 to {MAX_TOOLS} tools"),
        ));
    }
    let mut names: Vec<&str> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let obj = tool
            .as_object()
            .ok_or_else(|| invalid(&at, "must be an object"))?;
        if let Some(key) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "type" | "function"))
        {
            return Err(RequestError::UnknownField {
                param: format!("{at}.{key}"),
            });
        }
        if obj.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(format!("{at}.type"), "must be 'function'"));
        }
        let f = obj
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid(format!("{at}.function"), "must be an object"))?;
        if let Some(key) = f
            .keys()
            .find(|k| !matches!(k.as_str(), "name" | "description" | "parameters" | "strict"))
        {
            return Err(RequestError::UnknownField {
                param: format!("{at}.function.{key}"),
            });
        }
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_name(name) {
            return Err(invalid(
                format!("{at}.function.name"),
                "must be 1 to 64 letters, digits, underscores or dashes",
            ));
        }
        if names.contains(&name) {
            return Err(invalid(
                format!("{at}.function.name"),
                format!("'{name}' is defined twice"),
            ));
        }
        names.push(name);
        let checks = [
            (
                "description",
                f.get("description").is_none_or(Value::is_string),
                "a string",
            ),
            (
                "parameters",
                f.get("parameters").is_none_or(Value::is_object),
                "a JSON Schema object",
            ),
            (
                "strict",
                f.get("strict")
                    .is_none_or(|v| v.is_boolean() || v.is_null()),
                "a boolean",
            ),
        ];
        if let Some((key, _, what)) = checks.iter().find(|(_, ok, _)| !ok) {
            return Err(invalid(
                format!("{at}.function.{key}"),
                format!("must be {what}"),
            ));
        }
    }
    let forced = match &req.tool_choice {
        Some(Value::String(s)) if s == "none" => false,
        Some(Value::String(s)) if s == "required" => true,
        None => return Err(auto_refused()),
        Some(Value::String(s)) if s == "auto" => return Err(auto_refused()),
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            let shape_ok = o.get("type").and_then(Value::as_str) == Some("function")
                && o.len() == 2
                && o.get("function")
                    .and_then(Value::as_object)
                    .map(|f| f.len())
                    == Some(1);
            match name {
                Some(name) if shape_ok && names.contains(&name) => true,
                Some(name) if shape_ok => {
                    return Err(invalid(
                        "tool_choice.function.name",
                        format!("'{name}' is not one of the tools"),
                    ))
                }
                _ => {
                    return Err(invalid(
                        "tool_choice",
                        "must be 'none', 'auto', 'required' or {\"type\": \"function\", \
                         \"function\": {\"name\": ...}}",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": \
                 {\"name\": ...}}",
            ))
        }
    };
    let json_format = req
        .response_format
        .as_ref()
        .is_some_and(|f| f.kind != crate::request::ResponseFormat::TEXT);
    let s = req.sampling();
    if forced && (s.ignores_eos() || s.min_tokens_value() > 0) {
        return Err(invalid(
            "tool_choice",
            "a forced tool call ends where its arguments close: it cannot be combined with \
             ignore_eos or min_tokens",
        ));
    }
    if forced && json_format {
        return Err(invalid(
            "response_format",
            "a forced tool call already holds the answer to the function's parameters; \
             response_format json_object / json_schema cannot be combined with it",
        ));
    }
    Ok(())
}

fn auto_refused() -> RequestError {
    invalid(
        "tool_choice",
        "'auto' (the default when tools are given) is not supported: Grain does not parse tool \
         calls out of free text. Force a call ('required', or {\"type\": \"function\", \
         \"function\": {\"name\": ...}}), or pass 'none'",
    )
}
