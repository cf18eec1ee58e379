//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` on the request, `tool_calls` on
//! the answer, and the calls and results of earlier turns in `messages`.
//!
//! `tool_choice` naming a function, or `"required"`, forces a call: the engine holds the choice's
//! text to the function's `parameters` schema (structured outputs), and the text becomes the
//! call's `arguments`; with `"required"` and several tools the model writes `{"<name>":
//! <arguments>}`, its first key choosing the function. `"auto"` (the default when tools are given)
//! lets the model choose: an answer that opens with `{` is such a call, held to the same
//! envelope, and any other answer is text. Assistant messages may carry earlier `tool_calls`, and
//! `tool` messages their results ([`validate_history`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::RequestError;
use crate::request::{ChatCompletionRequest, ChatMessage, Role};

/// The most tools a request may define.
pub const MAX_TOOLS: usize = 128;

/// A function the request lets the model call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfferedTool<'a> {
    /// Index in `tools`.
    pub index: usize,
    pub name: &'a str,
    /// The function's `parameters` (a JSON Schema); `None` when it takes none.
    pub parameters: Option<&'a Value>,
    /// `strict: true`: the arguments must keep every keyword of `parameters` (OpenAI's default
    /// is false).
    pub strict: bool,
}

/// How `tool_choice` lets the model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// A call of the named function (finish reason `stop`, as OpenAI answers it).
    Named,
    /// `"required"`: a call of one of the tools (finish reason `tool_calls`).
    Required,
    /// `"auto"`: a call of one of the tools (finish reason `tool_calls`) or a text answer.
    Auto,
}

/// The calls a request allows: of which functions, and whether one must be made.
#[derive(Debug, Clone, PartialEq)]
pub struct CallPlan<'a> {
    /// The named function, or every tool.
    pub tools: Vec<OfferedTool<'a>>,
    pub mode: CallMode,
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
    /// The calls this request allows, once validation has passed; `None` without tools or with
    /// `tool_choice: "none"`.
    pub fn call_plan(&self) -> Option<CallPlan<'_>> {
        let tools = self.tools.as_ref()?;
        let all = tools
            .iter()
            .enumerate()
            .filter_map(|(index, t)| offered(index, t));
        let (mode, named) = match self.tool_choice.as_ref() {
            None => (CallMode::Auto, None),
            Some(Value::String(s)) if s == "auto" => (CallMode::Auto, None),
            Some(Value::String(s)) if s == "required" => (CallMode::Required, None),
            Some(Value::Object(o)) => (
                CallMode::Named,
                Some(o.get("function")?.get("name")?.as_str()?),
            ),
            _ => return None,
        };
        Some(CallPlan {
            tools: all.filter(|t| named.is_none_or(|n| t.name == n)).collect(),
            mode,
        })
    }
}

/// Tool `index` of `tools` (validated): its function's name, parameters and `strict`.
fn offered(index: usize, tool: &Value) -> Option<OfferedTool<'_>> {
    let f = tool.get("function")?;
    Some(OfferedTool {
        index,
        name: f.get("name")?.as_str()?,
        parameters: f.get("parameters"),
        strict: f.get("strict") == Some(&Value::Bool(true)),
    })
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
    let may_call = match &req.tool_choice {
        Some(Value::String(s)) if s == "none" => false,
        None => true,
        Some(Value::String(s)) if s == "required" || s == "auto" => true,
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
    if may_call && (s.ignores_eos() || s.min_tokens_value() > 0) {
        return Err(invalid(
            "tool_choice",
            "a tool call ends where its arguments close: tools (unless tool_choice is 'none') \
             cannot be combined with ignore_eos or min_tokens",
        ));
    }
    if may_call && json_format {
        return Err(invalid(
            "response_format",
            "a tool call already holds the answer to the function's parameters; response_format \
             json_object / json_schema cannot be combined with tools (unless tool_choice is \
             'none')",
        ));
    }
    Ok(())
}

/// One call of an earlier assistant message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastCall<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// As the client sent it back: normally the JSON text the model wrote.
    pub arguments: &'a str,
}

impl ChatMessage {
    /// The tool calls this (assistant) message made, once validation has passed; none for
    /// other messages.
    pub fn past_calls(&self) -> Vec<PastCall<'_>> {
        self.tool_calls
            .as_ref()
            .and_then(Value::as_array)
            .map(|calls| calls.iter().filter_map(past_call).collect())
            .unwrap_or_default()
    }
}

/// `{"id", "type": "function", "function": {"name", "arguments"}}` (other keys, such as a stream's
/// `index`, are ignored).
fn past_call(v: &Value) -> Option<PastCall<'_>> {
    if v.get("type").is_some_and(|t| t != "function") {
        return None;
    }
    let f = v.get("function")?;
    Some(PastCall {
        id: v.get("id")?.as_str()?,
        name: f.get("name")?.as_str()?,
        arguments: f.get("arguments")?.as_str()?,
    })
}

/// Earlier calls and their results, as OpenAI checks them: `tool_calls` only on assistant
/// messages, each call well formed; every `tool` message names, in `tool_call_id`, a call of the
/// assistant message it follows (other results may come between).
pub(crate) fn validate_history(req: &ChatCompletionRequest) -> Result<(), RequestError> {
    let mut open: Vec<&str> = Vec::new();
    for (i, msg) in req.messages.iter().enumerate() {
        let calls = msg.tool_calls.as_ref().filter(|v| !v.is_null());
        if let Some(calls) = calls {
            let at = format!("messages[{i}].tool_calls");
            if msg.role != Role::Assistant {
                return Err(invalid(at, "only assistant messages carry tool calls"));
            }
            let calls = calls
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| invalid(&at, "must be a non-empty array of calls"))?;
            if let Some(j) = calls.iter().position(|c| past_call(c).is_none()) {
                return Err(invalid(
                    format!("{at}[{j}]"),
                    "must be {\"id\": \"...\", \"type\": \"function\", \"function\": {\"name\": \
                     \"...\", \"arguments\": \"<JSON text>\"}}",
                ));
            }
        }
        match msg.role {
            Role::Tool => {
                let id = msg.tool_call_id.as_deref().ok_or_else(|| {
                    invalid(
                        format!("messages[{i}].tool_call_id"),
                        "a tool message must name the call it answers",
                    )
                })?;
                if !open.contains(&id) {
                    return Err(invalid(
                        format!("messages[{i}].tool_call_id"),
                        format!(
                            "'{id}' is not a call of the assistant message before it: a tool \
                             message must answer one of that message's tool_calls"
                        ),
                    ));
                }
            }
            _ if msg.tool_call_id.is_some() => {
                return Err(invalid(
                    format!("messages[{i}].tool_call_id"),
                    "only tool messages answer a call",
                ))
            }
            Role::Assistant => open = msg.past_calls().iter().map(|c| c.id).collect(),
            _ => open.clear(),
        }
    }
    Ok(())
}
