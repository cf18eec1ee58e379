//! A tool call's text turned into OpenAI's `tool_calls`, whole or as a stream.
//!
//! With one forced function the choice's text is the call's arguments. Otherwise (several
//! functions, or `tool_choice: "auto"`) the engine held the text to `{"<name>": <arguments>}`:
//! the first key names the function, and the arguments are the value, without the envelope's
//! closing brace. While streaming, a run of `}` and whitespace at the end of the text so far is
//! held back, since the last `}` closes the envelope and is not part of the arguments. With
//! `"auto"` a text that opens with anything but `{` (after whitespace, held back until then) is
//! the answer's content instead.

/// The envelope's whitespace, as the JSON grammar allows it.
const WS: [char; 4] = [' ', '\t', '\n', '\r'];

/// One choice's call, read as its text arrives.
#[derive(Debug, Clone)]
pub(crate) struct CallText {
    text: String,
    /// The function, once known (from the start with one function).
    name: Option<String>,
    /// Where the arguments start in `text`, once known.
    args_start: Option<usize>,
    /// How much of the arguments went out.
    emitted: usize,
    /// The text is `{"<name>": <arguments>}`.
    envelope: bool,
    /// `tool_choice: "auto"`: the text may turn out to be content.
    auto: bool,
    /// It did (`auto` only): everything goes out as content.
    prose: bool,
}

/// What a piece of text adds to the call.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct CallDelta {
    /// Set once: the function is now known (with several functions).
    pub named: Option<String>,
    /// More of the arguments.
    pub arguments: String,
    /// More of the answer's content (`"auto"`, once the text is not a call).
    pub content: String,
}

impl CallText {
    /// `single`: the one function the call can be of; `None` for the envelope of several.
    pub fn new(single: Option<&str>) -> Self {
        Self {
            text: String::new(),
            name: single.map(str::to_owned),
            args_start: single.map(|_| 0),
            emitted: 0,
            envelope: single.is_none(),
            auto: false,
            prose: false,
        }
    }

    /// `tool_choice: "auto"`: a call in the envelope, or content.
    pub fn auto() -> Self {
        Self {
            auto: true,
            ..Self::new(None)
        }
    }

    /// Reads more of the text; returns what can go out now.
    pub fn push(&mut self, piece: &str) -> CallDelta {
        self.text.push_str(piece);
        let mut delta = CallDelta::default();
        if self.auto && !self.prose && self.name.is_none() {
            match self.text.trim_start_matches(WS).chars().next() {
                // Whitespace so far: held back until the answer shows what it is.
                None => return delta,
                Some('{') => {}
                Some(_) => self.prose = true,
            }
        }
        if self.prose {
            delta.content = self.text[self.emitted..].to_owned();
            self.emitted = self.text.len();
            return delta;
        }
        if self.name.is_none() {
            if let Some((name, start)) = envelope_head(&self.text) {
                self.name = Some(name.clone());
                self.args_start = Some(start);
                self.emitted = start;
                delta.named = Some(name);
            }
        }
        if self.args_start.is_some() {
            let end = if self.envelope {
                self.text
                    .trim_end_matches(|c| c == '}' || WS.contains(&c))
                    .len()
            } else {
                self.text.len()
            };
            if end > self.emitted {
                delta.arguments = self.text[self.emitted..end].to_owned();
                self.emitted = end;
            }
        }
        delta
    }

    /// The rest of the arguments once the text is complete. `closed`: the choice stopped, so the
    /// envelope's closing brace ends the text (a choice cut by `max_tokens` has none).
    pub fn finish(&mut self, closed: bool) -> String {
        let Some(start) = self.args_start else {
            return String::new();
        };
        let mut end = self.text.len();
        if self.envelope && closed {
            let t = self.text.trim_end_matches(WS);
            let t = t.strip_suffix('}').unwrap_or(t);
            end = t.trim_end_matches(WS).len().max(start);
        }
        let rest = self
            .text
            .get(self.emitted.max(start)..end)
            .unwrap_or_default();
        self.emitted = end.max(self.emitted);
        rest.to_owned()
    }

    /// The text, when it ended before the function's name did (no call can be made of it) and
    /// none of it went out as content.
    pub fn unnamed(&self) -> Option<&str> {
        (self.name.is_none() && !self.prose).then_some(self.text.as_str())
    }

    /// Whether the text is a call (its function is known).
    pub fn is_call(&self) -> bool {
        self.name.is_some()
    }

    /// The whole call of a complete text: the function and its arguments; `None` when the text
    /// ended before the function's name did.
    pub fn whole(single: Option<&str>, text: &str, closed: bool) -> Option<(String, String)> {
        let mut call = CallText::new(single);
        let mut arguments = call.push(text).arguments;
        arguments.push_str(&call.finish(closed));
        Some((call.name?, arguments))
    }
}

/// `{"<name>":` at the start of `text`: the name and where the value starts (its first
/// non-whitespace byte), once both are known. Names are letters, digits, `_` and `-`, so the key
/// has no escapes.
fn envelope_head(text: &str) -> Option<(String, usize)> {
    let t = text.trim_start_matches(WS).strip_prefix('{')?;
    let t = t.trim_start_matches(WS).strip_prefix('"')?;
    let close = t.find('"')?;
    let name = t[..close].to_owned();
    let after = t[close + 1..].trim_start_matches(WS).strip_prefix(':')?;
    let value = after.trim_start_matches(WS);
    if value.is_empty() {
        return None;
    }
    Some((name, text.len() - value.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_function_passes_the_text_through() {
        let mut c = CallText::new(Some("f"));
        assert_eq!(c.push("{\"a\": 1").arguments, "{\"a\": 1");
        assert_eq!(c.push("}").arguments, "}");
        assert_eq!(c.finish(true), "");
        assert_eq!(
            CallText::whole(Some("f"), "{}", true),
            Some(("f".into(), "{}".into()))
        );
    }

    #[test]
    fn the_envelope_streams_the_same_arguments_as_the_whole_text() {
        let text = " {\n \"get_weather\" : {\"days\": {\"n\": 3}, \"x\": \"}\"} \n}  ";
        let whole = CallText::whole(None, text, true);
        assert_eq!(
            whole,
            Some((
                "get_weather".into(),
                "{\"days\": {\"n\": 3}, \"x\": \"}\"}".into()
            ))
        );
        // Every way of cutting the text into two pieces gives the same stream.
        for cut in 0..=text.len() {
            let mut c = CallText::new(None);
            let (a, b) = (c.push(&text[..cut]), c.push(&text[cut..]));
            let named = a.named.or(b.named);
            let args = a.arguments + &b.arguments + &c.finish(true);
            assert_eq!(Some((named.unwrap(), args)), whole, "cut at {cut}");
        }
    }

    #[test]
    fn auto_streams_content_or_a_call_as_the_whole_text_reads_it() {
        for (text, call) in [
            ("  Hello {\"f\": 1}", None),
            ("\n {\"f\": {\"a\": 1}}", Some(("f", "{\"a\": 1}"))),
            (" \n", None),
            ("", None),
        ] {
            let whole = CallText::whole(None, text, true);
            assert_eq!(
                whole,
                call.map(|(n, a): (&str, &str)| (n.to_owned(), a.to_owned()))
            );
            for cut in 0..=text.len() {
                let mut c = CallText::auto();
                let (a, b) = (c.push(&text[..cut]), c.push(&text[cut..]));
                let args = a.arguments.clone() + &b.arguments + &c.finish(true);
                let content = a.content + &b.content + c.unnamed().unwrap_or_default();
                match &whole {
                    Some((name, arguments)) => {
                        assert_eq!(a.named.or(b.named).as_ref(), Some(name), "cut {cut}");
                        assert_eq!((&args, content.as_str()), (arguments, ""), "cut {cut}");
                        assert!(c.is_call());
                    }
                    None => {
                        assert_eq!((args.as_str(), content.as_str()), ("", text), "cut {cut}");
                        assert!(!c.is_call());
                    }
                }
            }
        }
    }

    #[test]
    fn a_text_cut_before_the_name_ends_has_no_call() {
        assert_eq!(CallText::whole(None, "{\"get_wea", false), None);
        let mut c = CallText::new(None);
        assert_eq!(c.push("{\"get_wea"), CallDelta::default());
        assert_eq!(c.finish(false), "");
        assert_eq!(c.unnamed(), Some("{\"get_wea"));
        assert_eq!(CallText::new(Some("f")).unnamed(), None);
        // Cut inside the arguments: what there is, the envelope unclosed.
        assert_eq!(
            CallText::whole(None, "{\"f\": {\"a\": [1}", false),
            Some(("f".into(), "{\"a\": [1}".into()))
        );
    }
}
