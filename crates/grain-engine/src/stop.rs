//! Stop strings without ever streaming a partial one.
//!
//! Text that could still become the beginning of a stop string is held back until the next token
//! decides it. An occurrence can only start inside the held-back text (anything earlier was proven
//! not to be a prefix of a stop string), so only that small tail is ever searched.

#[derive(Debug, Clone, Default)]
pub struct StopChecker {
    stops: Vec<String>,
    held: String,
}

/// What `push` allows out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Text safe to send now.
    pub text: String,
    /// A stop string was found: `text` ends right before it and the sequence must stop.
    pub stopped: bool,
}

impl StopChecker {
    pub fn new(stops: &[String]) -> Self {
        Self {
            // An empty stop string would match everywhere; the server rejects it, ignore it here.
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, delta: &str) -> Checked {
        if self.stops.is_empty() {
            return Checked {
                text: delta.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let mut text = std::mem::take(&mut self.held);
            text.truncate(at);
            return Checked {
                text,
                stopped: true,
            };
        }
        let keep_from = self.partial_match_start();
        let rest = self.held.split_off(keep_from);
        Checked {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// Releases whatever is held (the sequence ended for another reason).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Start of the longest suffix of `held` that is a proper prefix of some stop string.
    fn partial_match_start(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(stops: &[&str]) -> StopChecker {
        StopChecker::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Feeds `pieces` and returns everything emitted plus whether it stopped (and where).
    fn run(c: &mut StopChecker, pieces: &[&str]) -> (Vec<String>, Option<usize>) {
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let r = c.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, Some(i));
            }
        }
        out.push(c.flush());
        (out, None)
    }

    #[test]
    fn no_stops_passes_through() {
        let mut c = checker(&[]);
        assert_eq!(run(&mut c, &["ab", "c"]).0, ["ab", "c", ""]);
    }

    #[test]
    fn stop_split_across_tokens_never_leaks() {
        let mut c = checker(&["END"]);
        let (out, stopped) = run(&mut c, &["hello E", "N", "D tail"]);
        assert_eq!(out, ["hello ", "", ""]);
        assert_eq!(stopped, Some(2));
    }

    #[test]
    fn held_text_is_released_when_the_match_fails() {
        let mut c = checker(&["END"]);
        let (out, stopped) = run(&mut c, &["xE", "N", "Y", "z"]);
        assert_eq!(out, ["x", "", "ENY", "z", ""]);
        assert_eq!(stopped, None);
    }

    #[test]
    fn overlapping_prefix_is_rechecked() {
        // "aab": after "aa" fails as "ab", the second "a" may still start it.
        let mut c = checker(&["ab"]);
        let (out, stopped) = run(&mut c, &["a", "a", "b"]);
        assert_eq!(out.concat(), "a");
        assert_eq!(stopped, Some(2));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut c = checker(&["world", "lo w"]);
        let r = c.push("hello world");
        assert_eq!(
            r,
            Checked {
                text: "hel".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn stop_inside_one_token_cuts_the_token() {
        let mut c = checker(&["\n\n"]);
        let r = c.push("line\n\nnext");
        assert_eq!(r.text, "line");
        assert!(r.stopped);
    }

    #[test]
    fn multibyte_text_splits_on_char_boundaries() {
        let mut c = checker(&["é!"]);
        let (out, stopped) = run(&mut c, &["café", "?", "é", "!"]);
        assert_eq!(out, ["caf", "é?", "", ""]);
        assert_eq!(stopped, Some(3));
    }

    #[test]
    fn flush_returns_a_dangling_prefix() {
        let mut c = checker(&["STOP"]);
        assert_eq!(c.push("ST").text, "");
        assert_eq!(c.flush(), "ST");
    }
}
