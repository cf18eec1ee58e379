//! Chat templates: the checkpoint's Jinja template when it ships one, or the
//! built-in `vicuna_v1` conversation format of the original LLaVA code.

mod jinja;
mod vicuna;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::TemplateError;
use crate::tokenizer::Tokenizer;

/// The text that marks where an image goes in a rendered prompt.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentPart {
    Text(String),
    /// An image; the template decides where its placeholder goes.
    Image,
}

/// A chat message as the template sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (Jinja templates may accept others).
    pub role: String,
    pub content: Vec<ContentPart>,
}

impl ChatMessage {
    /// A message with a single text part.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: vec![ContentPart::Text(text.into())],
        }
    }

    pub fn image_count(&self) -> usize {
        self.content
            .iter()
            .filter(|p| matches!(p, ContentPart::Image))
            .count()
    }
}

/// Renders a conversation into the prompt text the model was trained on.
#[derive(Debug)]
pub struct ChatTemplate {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Jinja(Box<jinja::JinjaTemplate>),
    VicunaV1,
}

impl ChatTemplate {
    /// The checkpoint's own template, looked up as transformers does:
    /// `chat_template.jinja`, then `chat_template.json` (`{"chat_template": ..}`),
    /// then the `chat_template` field of `tokenizer_config.json` (a string, or
    /// a list of `{name, template}` of which "default" is used).
    /// `Ok(None)` when the checkpoint has none (use [`ChatTemplate::vicuna_v1`]).
    /// `bos_token` / `eos_token` inside the template are the tokenizer's.
    pub fn from_dir(dir: &Path, tokenizer: &Tokenizer) -> Result<Option<Self>, TemplateError> {
        let Some(source) = find_source(dir)? else {
            return Ok(None);
        };
        Self::from_source(&source, tokenizer.bos_token(), tokenizer.eos_token()).map(Some)
    }

    /// A Jinja template from its source text.
    pub fn from_source(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, TemplateError> {
        Ok(Self {
            kind: Kind::Jinja(Box::new(jinja::JinjaTemplate::new(
                source, bos_token, eos_token,
            )?)),
        })
    }

    /// LLaVA's `conv_vicuna_v1` format, for original-layout checkpoints that
    /// ship no template. See the `vicuna` module for the exact rules.
    pub fn vicuna_v1() -> Self {
        Self {
            kind: Kind::VicunaV1,
        }
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where
    /// the assistant's answer starts. Images become [`IMAGE_PLACEHOLDER`]
    /// wherever the template puts them.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        match &self.kind {
            Kind::Jinja(t) => t.render(messages, add_generation_prompt),
            Kind::VicunaV1 => vicuna::render(messages, add_generation_prompt),
        }
    }
}

/// Content as one string, for formats that take text: one placeholder line
/// per image first (LLaVA's convention), then the text parts joined by
/// newlines.
pub(crate) fn flatten_content(parts: &[ContentPart]) -> String {
    let mut out = String::new();
    for part in parts {
        if matches!(part, ContentPart::Image) {
            out.push_str(IMAGE_PLACEHOLDER);
            out.push('\n');
        }
    }
    let texts: Vec<&str> = parts
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text(t) => Some(t.as_str()),
            ContentPart::Image => None,
        })
        .collect();
    out.push_str(&texts.join("\n"));
    out
}

fn find_source(dir: &Path) -> Result<Option<String>, TemplateError> {
    let jinja = dir.join("chat_template.jinja");
    if let Some(text) = read_optional(&jinja)? {
        return Ok(Some(text));
    }
    let json = dir.join("chat_template.json");
    if let Some(value) = read_json(&json)? {
        if let Some(field) = value.get("chat_template") {
            return template_field(field, &json).map(Some);
        }
    }
    let config = dir.join("tokenizer_config.json");
    if let Some(value) = read_json(&config)? {
        match value.get("chat_template") {
            None | Some(Value::Null) => {}
            Some(field) => return template_field(field, &config).map(Some),
        }
    }
    Ok(None)
}

fn template_field(field: &Value, path: &Path) -> Result<String, TemplateError> {
    let bad = || TemplateError::BadField {
        path: path.to_path_buf(),
    };
    match field {
        Value::String(s) => Ok(s.clone()),
        Value::Array(list) => {
            let mut names = Vec::new();
            for entry in list {
                let name = entry.get("name").and_then(Value::as_str).ok_or_else(bad)?;
                let template = entry
                    .get("template")
                    .and_then(Value::as_str)
                    .ok_or_else(bad)?;
                if name == "default" {
                    return Ok(template.to_string());
                }
                names.push(name.to_string());
            }
            Err(TemplateError::NoDefault {
                path: path.to_path_buf(),
                names,
            })
        }
        _ => Err(bad()),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, TemplateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TemplateError::Io {
            path: PathBuf::from(path),
            source,
        }),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, TemplateError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TemplateError::Json {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_template_lists_pick_default() {
        let p = Path::new("tokenizer_config.json");
        let list = serde_json::json!([
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"}
        ]);
        assert_eq!(template_field(&list, p).unwrap(), "D");
        let no_default = serde_json::json!([{"name": "rag", "template": "R"}]);
        assert!(matches!(
            template_field(&no_default, p),
            Err(TemplateError::NoDefault { names, .. }) if names == ["rag"]
        ));
        assert!(matches!(
            template_field(&serde_json::json!(3), p),
            Err(TemplateError::BadField { .. })
        ));
    }

    #[test]
    fn flattened_content_puts_images_first() {
        let parts = [
            ContentPart::Text("a".into()),
            ContentPart::Image,
            ContentPart::Text("b".into()),
            ContentPart::Image,
        ];
        assert_eq!(flatten_content(&parts), "<image>\n<image>\na\nb");
    }
}
