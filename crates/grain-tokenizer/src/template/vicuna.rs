//! The `vicuna_v1` conversation format of LLaVA's `conversation.py`
//! (`conv_vicuna_v1`: roles USER/ASSISTANT, `SeparatorStyle.TWO`, sep " ",
//! sep2 `"</s>"`). Its `get_prompt` builds
//!
//! ```text
//! system + " " + for each turn: role + ": " + message + (" " after USER, "</s>" after ASSISTANT)
//! ```
//!
//! and a turn with no message yet (the generation prompt) is just `role + ":"`.
//! LLaVA puts `<image>\n` in front of the question that carries the image;
//! here every message gets one such line per image it carries.

use super::{flatten_content, ChatMessage};
use crate::error::TemplateError;

const DEFAULT_SYSTEM: &str =
    "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";
const SEP: &str = " ";
const SEP2: &str = "</s>";

pub(crate) fn render(
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String, TemplateError> {
    // System messages replace the default system text (several are joined).
    let system: Vec<String> = messages
        .iter()
        .filter(|m| m.role == "system")
        .map(|m| flatten_content(&m.content))
        .collect();
    let mut out = if system.is_empty() {
        DEFAULT_SYSTEM.to_string()
    } else {
        system.join("\n")
    };
    out.push_str(SEP);
    for m in messages {
        let (role, sep) = match m.role.as_str() {
            "system" => continue,
            "user" => ("USER", SEP),
            "assistant" => ("ASSISTANT", SEP2),
            other => return Err(TemplateError::UnsupportedRole(other.to_string())),
        };
        let content = flatten_content(&m.content);
        out.push_str(role);
        // conversation.py writes an empty message as a bare `role + ":"`.
        if content.is_empty() {
            out.push(':');
        } else {
            out.push_str(": ");
            out.push_str(&content);
            out.push_str(sep);
        }
    }
    if add_generation_prompt {
        out.push_str("ASSISTANT:");
    }
    Ok(out)
}
