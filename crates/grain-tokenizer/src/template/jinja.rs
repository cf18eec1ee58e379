//! Jinja chat templates rendered with minijinja, set up to behave like
//! transformers' `apply_chat_template` environment: `trim_blocks` and
//! `lstrip_blocks` on, `{% break %}`/`{% continue %}`, Python string and dict
//! methods, a `tojson` that writes what Python's `json.dumps` writes,
//! `raise_exception`, and the `{% generation %}` tag transformers adds.

use std::borrow::Cow;
use std::fmt;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use super::{ChatMessage, ContentPart};
use crate::error::TemplateError;

const NAME: &str = "chat_template";

/// How message content is handed to the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentFormat {
    /// A string: text-only templates concatenate `message['content']`.
    String,
    /// A list of `{"type": "text", "text": ..}` / `{"type": "image"}` parts:
    /// multimodal templates loop over the content.
    Parts,
}

pub(crate) struct JinjaTemplate {
    env: Environment<'static>,
    format: ContentFormat,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// The error `raise_exception` attaches, so rendering can tell a deliberate
/// template error from a broken template.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl JinjaTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
        });
        let source = rewrite_generation_tags(source).into_owned();
        let format = detect_content_format(&source);
        env.add_template_owned(NAME, source)
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(Self {
            env,
            format,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let messages: Vec<MessageValue<'_>> = messages
            .iter()
            .map(|m| MessageValue {
                role: &m.role,
                content: content_value(&m.content, self.format),
            })
            .collect();
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
            // transformers passes these as None when unused; templates test
            // `tools is not none`, which an undefined variable would pass.
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        template.render(ctx).map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = source {
                if let Some(raised) = err.downcast_ref::<Raised>() {
                    return TemplateError::Raised(raised.0.clone());
                }
                source = err.source();
            }
            TemplateError::Render(e.to_string())
        })
    }
}

#[derive(Serialize)]
struct MessageValue<'a> {
    role: &'a str,
    content: ContentValue<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ContentValue<'a> {
    Text(String),
    Parts(Vec<PartValue<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum PartValue<'a> {
    Text { text: &'a str },
    Image {},
}

fn content_value(parts: &[ContentPart], format: ContentFormat) -> ContentValue<'_> {
    match format {
        ContentFormat::Parts => ContentValue::Parts(
            parts
                .iter()
                .map(|p| match p {
                    ContentPart::Text(text) => PartValue::Text { text },
                    ContentPart::Image => PartValue::Image {},
                })
                .collect(),
        ),
        // A text-only template cannot place images itself; put one
        // placeholder line per image first, as LLaVA prompts do.
        ContentFormat::String => ContentValue::Text(super::flatten_content(parts)),
    }
}

/// A template that loops over `message['content']` (or `message.content`)
/// expects a list of parts; any other template expects a string. This is the
/// same distinction vLLM draws, made on the `{% for %}` tags' text.
fn detect_content_format(source: &str) -> ContentFormat {
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("%}") else { break };
        let tag = after[..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        if let Some(head) = tag.strip_prefix("for") {
            if head.starts_with(char::is_whitespace) {
                if let Some((_, iterable)) = head.split_once(" in ") {
                    if iterable.contains("content") {
                        return ContentFormat::Parts;
                    }
                }
            }
        }
        rest = &after[end + 2..];
    }
    ContentFormat::String
}

/// transformers' `AssistantTracker` extension adds `{% generation %}` …
/// `{% endgeneration %}`, which only marks assistant text for training masks
/// and renders its body unchanged. minijinja has no such tag, so it becomes
/// an always-true `if`, keeping any whitespace-control markers.
fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("%}") else {
            rest = &rest[start..];
            break;
        };
        let inner = &after[..end];
        let (left, body) = split_marker(inner, str::strip_prefix);
        let (right, body) = split_marker(body, str::strip_suffix);
        let keyword = body.trim();
        match keyword {
            "generation" => out.push_str(&format!("{{%{left} if true {right}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{left} endif {right}%}}")),
            _ => {
                out.push_str("{%");
                out.push_str(inner);
                out.push_str("%}");
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Splits a whitespace-control marker (`-` or `+`) off one end of a tag body.
fn split_marker<'a>(
    body: &'a str,
    strip: fn(&'a str, char) -> Option<&'a str>,
) -> (&'static str, &'a str) {
    for (marker, c) in [("-", '-'), ("+", '+')] {
        if let Some(rest) = strip(body, c) {
            return (marker, rest);
        }
    }
    ("", body)
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent, sort_keys=sort_keys)`. Unlike minijinja's built-in it does
/// not HTML-escape, and it uses Python's separators (`", "`, `": "`).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value, indent, sort_keys.unwrap_or(false), 0)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    // Python uses ", " between items only without indentation.
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&value.to_string()),
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key_text = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => key.to_string(),
                };
                write_json_string(out, &key_text);
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of kind {}", value.kind()),
            ))
        }
    }
    Ok(())
}

/// A JSON string the way Python writes it with `ensure_ascii=False`.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: Value) -> Result<String, Error> {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        env.render_str(src, ctx)
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let ctx = minijinja::context! { s => "x\"<é>\n\u{1}" };
        let v = r#"{"b": [1, 2.5, true, none], "a": s}"#;
        // Python: json.dumps({"b": [1, 2.5, True, None], "a": 'x"<é>\n\x01'}, ensure_ascii=False)
        assert_eq!(
            render(&format!("{{{{ {v} | tojson }}}}"), ctx.clone()).unwrap(),
            r#"{"b": [1, 2.5, true, null], "a": "x\"<é>\n\u0001"}"#
        );
        // Python: json.dumps(..., ensure_ascii=False, indent=2, sort_keys=True)
        assert_eq!(
            render(&format!("{{{{ {v} | tojson(indent=2, sort_keys=true) }}}}"), ctx).unwrap(),
            "{\n  \"a\": \"x\\\"<é>\\n\\u0001\",\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null\n  ]\n}"
        );
    }

    #[test]
    fn generation_tags_become_transparent_blocks() {
        let src = "{%- generation -%} x {% endgeneration %}|{% if a %}{% endif %}";
        assert_eq!(
            rewrite_generation_tags(src),
            "{%- if true -%} x {% endif %}|{% if a %}{% endif %}"
        );
        // Degenerate tags pass through untouched (and do not panic).
        for src in ["{%-%} generation", "{%%}generation", "{%- generation"] {
            assert_eq!(rewrite_generation_tags(src), src);
        }
    }

    #[test]
    fn content_format_follows_loops_over_content() {
        use ContentFormat::*;
        assert_eq!(detect_content_format("{{ m['content'] }}"), String);
        assert_eq!(
            detect_content_format("{% for m in messages %}{{ m.content }}{% endfor %}"),
            String
        );
        assert_eq!(
            detect_content_format(
                "{%- for c in message['content'] | selectattr('type', 'equalto', 'image') -%}"
            ),
            Parts
        );
    }
}
