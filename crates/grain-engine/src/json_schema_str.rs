//! `minLength` / `maxLength` on strings ([`crate::json_schema::Node::BoundedString`]): the length
//! of a string as written so far, counted as JSON Schema counts it (Unicode code points of the
//! decoded string: an escape is one character, a `\uD83D\uDE00` surrogate pair one), and which
//! bytes keep it within its bounds. The string's grammar itself (escapes, UTF-8, control
//! characters) is [`crate::json_grammar::JsonState`]'s; this only counts.

use crate::json_grammar::JsonState;

/// Where a bounded string's count stands after its opening quote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StrLen {
    /// Characters written (an escape counts when its last byte is read).
    chars: u32,
    /// 0: outside an escape; 1: after `\`; 2 to 5: after `\u` and that many minus 2 hex digits.
    escape: u8,
    /// The hex digits of a `\u` escape read so far.
    hex: u16,
    /// Continuation bytes still to come in a multi-byte UTF-8 character.
    cont: u8,
    /// The last character was a `\u` escape of a high surrogate: a low-surrogate escape right
    /// after it completes the same code point.
    high: bool,
}

/// What a byte does to a bounded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrStep {
    /// The string goes on.
    Open(StrLen),
    /// The closing quote: the string is complete.
    Closed,
}

/// The lowest and highest low-surrogate code units.
const LOW: std::ops::RangeInclusive<u16> = 0xDC00..=0xDFFF;

impl StrLen {
    /// The count after byte `b` of the string (past its opening quote), or `None` where `b`
    /// would take it past `max` characters or close it under `min`. Bytes the JSON grammar
    /// refuses are [`crate::json_grammar::JsonState`]'s to refuse: this assumes valid JSON.
    pub(crate) fn step(self, b: u8, (min, max): (u32, u32)) -> Option<StrStep> {
        let mut next = self;
        let room = self.chars < max;
        if self.cont > 0 {
            next.cont -= 1;
            return Some(StrStep::Open(next));
        }
        match self.escape {
            0 => match b {
                b'"' => return (self.chars >= min).then_some(StrStep::Closed),
                // Only a low surrogate after a high one adds nothing; the hex digits decide.
                b'\\' if room || self.high => next.escape = 1,
                b'\\' => return None,
                _ if room => {
                    next.chars += 1;
                    next.high = false;
                    next.cont = match b {
                        0xC0..=0xDF => 1,
                        0xE0..=0xEF => 2,
                        0xF0..=0xF7 => 3,
                        _ => 0,
                    };
                }
                _ => return None,
            },
            1 if b == b'u' => {
                next.escape = 2;
                next.hex = 0;
            }
            1 if room => {
                next.escape = 0;
                next.chars += 1;
                next.high = false;
            }
            1 => return None,
            _ => {
                let digit = (b as char).to_digit(16)? as u16;
                let read = self.escape - 1; // Digits read with this one: 1 to 4.
                next.hex = self.hex << 4 | digit;
                if !room {
                    // Full: only the low surrogate that ends the pair, which adds nothing.
                    let shift = 4 * (4 - read as u32);
                    let (lo, hi) = (LOW.start() >> shift, LOW.end() >> shift);
                    if !(lo..=hi).contains(&next.hex) {
                        return None;
                    }
                }
                if read < 4 {
                    next.escape += 1;
                } else {
                    next.escape = 0;
                    if self.high && LOW.contains(&next.hex) {
                        next.high = false;
                    } else {
                        next.chars += 1;
                        next.high = (0xD800..=0xDBFF).contains(&next.hex);
                    }
                }
            }
        }
        Some(StrStep::Open(next))
    }
}

/// Whether `bytes` all continue a string of `bounds` (its grammar `state`, its count `len`)
/// without closing it: [`crate::json_schema_state::SchemaState::accepts`] tests a token on a copy
/// of these alone, as it does for a free value.
pub(crate) fn continues(
    mut state: JsonState,
    mut len: StrLen,
    bounds: (u32, u32),
    bytes: &[u8],
) -> bool {
    bytes.iter().all(|&b| match len.step(b, bounds) {
        Some(StrStep::Open(next)) if state.feed(&[b]) => {
            len = next;
            true
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count after `text` (the string's bytes past its opening quote), or where it stopped.
    fn run(text: &str, bounds: (u32, u32)) -> Result<Option<u32>, usize> {
        let mut len = StrLen::default();
        for (i, &b) in text.as_bytes().iter().enumerate() {
            match len.step(b, bounds) {
                Some(StrStep::Open(next)) => len = next,
                Some(StrStep::Closed) if i + 1 == text.len() => return Ok(None),
                _ => return Err(i),
            }
        }
        Ok(Some(len.chars))
    }

    /// Every string JSON text here, counted against serde_json's decoding of it (the reference:
    /// its `chars().count()` is the code points JSON Schema counts).
    #[test]
    fn counts_code_points_as_the_decoded_string_has_them() {
        let texts = [
            r#""#,
            r#"abc"#,
            r#"é€😀"#,
            r#"a\nb\"c\\d\/e\u00e9"#,
            r#"\ud83d\ude00x"#,
            r#"\uD83D\uDE00\uD83D\uDE00"#,
            r#"\u0041\u00e9\u20ac"#,
        ];
        for t in texts {
            let decoded: String = serde_json::from_str(&format!("\"{t}\"")).unwrap();
            let want = decoded.chars().count() as u32;
            assert_eq!(run(t, (0, u32::MAX)), Ok(Some(want)), "{t}");
            // Closed at exactly its length; one fewer allowed refuses a byte, one more needed
            // refuses the quote.
            let quoted = format!("{t}\"");
            assert_eq!(run(&quoted, (want, want)), Ok(None), "{t}");
            assert_eq!(run(&quoted, (want + 1, u32::MAX)), Err(t.len()), "{t}");
            if want > 0 {
                assert!(run(t, (0, want - 1)).is_err(), "{t} at max {}", want - 1);
            }
        }
    }

    #[test]
    fn a_full_string_takes_only_its_quote_or_the_low_half_of_a_pair() {
        // One character allowed, written: no escape, byte or multi-byte character may follow.
        for next in ["a", "\\n", "\\u0041", "é"] {
            assert!(run(&format!("x{next}"), (0, 1)).is_err(), "{next}");
        }
        // A high surrogate counts one; its low half completes the same code point.
        assert_eq!(run(r#"\ud83d\ude00""#, (1, 1)), Ok(None));
        assert!(run(r#"\ud83d\u0041"#, (0, 1)).is_err());
        assert!(run(r#"\ud83d\ud83d"#, (0, 1)).is_err());
        assert!(run(r#"\ud83d\n"#, (0, 1)).is_err());
        // Not full: a lone high surrogate, then anything.
        assert_eq!(run(r#"\ud83d\u0041"#, (0, 2)), Ok(Some(2)));
    }
}
