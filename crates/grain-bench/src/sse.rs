//! An incremental server-sent-events parser: bytes arrive in arbitrary pieces (a TCP read may end
//! mid-line or mid-UTF-8 character), events come out whole.

/// One dispatched event: its `event:` name (empty for the default `message`) and its data lines
/// joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Feeds bytes in, yields complete events. Follows the WHATWG event-stream rules that matter for
/// OpenAI-style streams: `\n`, `\r\n` and `\r` line ends, one optional space after the colon,
/// comment lines (`:`) ignored, an event dispatched on a blank line only if it has data.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// A `\r` ended the last line; a `\n` right after it belongs to the same line end.
    after_cr: bool,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes; return the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                _ => self.buf.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: self.data.join("\n"),
                });
                self.data.clear();
            }
            self.event.clear();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = value.to_string(),
            _ => {} // id, retry and unknown fields do not matter to a benchmark
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = "data: {\"a\":1}\n\n: keep-alive\n\nevent: error\ndata: {\"error\":{}}\n\ndata: [DONE]\n\n";
        let expected = vec![
            ev("", "{\"a\":1}"),
            ev("error", "{\"error\":{}}"),
            ev("", "[DONE]"),
        ];
        for split in 0..stream.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&stream.as_bytes()[..split]);
            got.extend(p.push(&stream.as_bytes()[split..]));
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn crlf_cr_multiline_data_and_no_space_after_colon() {
        let mut p = SseParser::new();
        let got = p.push(b"data:x\r\ndata: y\r\n\r\ndata: z\r\rdata: \xc3");
        assert_eq!(got, vec![ev("", "x\ny"), ev("", "z")]);
        // The rest of a UTF-8 character split across reads.
        let got = p.push(b"\xa9\n\n");
        assert_eq!(got, vec![ev("", "é")]);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_does_not_leak_its_name() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: ping\n\n").is_empty());
        assert_eq!(p.push(b"data: 1\n\n"), vec![ev("", "1")]);
    }
}
