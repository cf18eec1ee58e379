//! `minLength`, `maxLength` and `pattern` on strings ([`crate::json_schema::Node::BoundedString`]):
//! - [`StrLen`] counts a string's length as JSON Schema counts it (Unicode code points of the
//!   decoded string: an escape is one character, a `\uD83D\uDE00` surrogate pair one) and says
//!   which bytes keep it within its bounds;
//! - [`Pattern`] follows the decoded text through the pattern's DFA;
//! - [`StrAt`] is both, with the string's grammar (escapes, UTF-8, control characters), which is
//!   [`crate::json_grammar::JsonState`]'s.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::nfa::thompson;
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

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

/// What a schema asks of a string: `minLength ..= maxLength` characters and, where it gives
/// one, a `pattern` (an index into [`crate::json_schema::Compiled::patterns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StrRule {
    pub min: u32,
    pub max: u32,
    pub pattern: Option<u16>,
}

/// A bounded string after its opening quote: its grammar, its length and, with a pattern, where
/// the pattern's automaton stands on the decoded text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StrAt {
    state: JsonState,
    len: StrLen,
    dfa: StateID,
}

/// What a byte does to a bounded string ([`StrAt::step`]).
pub(crate) enum StrNext {
    Open(StrAt),
    Closed,
}

impl StrAt {
    /// The string just opened (its quote read).
    pub(crate) fn open(rule: &StrRule, patterns: &[Pattern]) -> StrAt {
        let mut state = JsonState::any_value();
        let opened = state.feed(b"\"");
        debug_assert!(opened);
        let dfa = rule
            .pattern
            .map_or(StateID::ZERO, |i| patterns[i as usize].start);
        StrAt {
            state,
            len: StrLen::default(),
            dfa,
        }
    }

    /// The string after byte `b`, where the grammar, the bounds and the pattern all allow it.
    pub(crate) fn step(self, rule: &StrRule, patterns: &[Pattern], b: u8) -> Option<StrNext> {
        let mut next = self;
        if !next.state.feed(&[b]) {
            return None;
        }
        if let Some(i) = rule.pattern {
            next.dfa = patterns[i as usize].step(self.dfa, self.len.role(b))?;
        }
        match self.len.step(b, (rule.min, rule.max))? {
            StrStep::Open(len) => {
                next.len = len;
                Some(StrNext::Open(next))
            }
            StrStep::Closed => Some(StrNext::Closed),
        }
    }
}

/// Whether `bytes` all continue the string at `at` without closing it:
/// [`crate::json_schema_state::SchemaState::accepts`] tests a token on a copy of the string's
/// state alone, as it does for a free value.
pub(crate) fn continues(at: StrAt, rule: &StrRule, patterns: &[Pattern], bytes: &[u8]) -> bool {
    let mut at = at;
    bytes.iter().all(|&b| match at.step(rule, patterns, b) {
        Some(StrNext::Open(next)) => {
            at = next;
            true
        }
        _ => false,
    })
}

/// The part a byte plays in a string, from the count's view of what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A byte of the decoded text: a raw byte, or what a one-letter escape stands for.
    Text(u8),
    /// The `\` that opens an escape.
    Escape,
    /// The `u` of a `\u` escape, or one of its hex digits.
    Unicode,
    /// The closing quote.
    Close,
}

/// The bytes the one-letter escapes stand for.
const ESCAPED: [u8; 8] = [b'"', b'\\', b'/', 0x08, 0x0C, b'\n', b'\r', b'\t'];

impl StrLen {
    /// The part byte `b` plays after the string's bytes so far.
    pub(crate) fn role(&self, b: u8) -> Role {
        if self.cont > 0 {
            return Role::Text(b);
        }
        match (self.escape, b) {
            (0, b'"') => Role::Close,
            (0, b'\\') => Role::Escape,
            (0, _) => Role::Text(b),
            (1, b'u') | (2.., _) => Role::Unicode,
            (1, _) => Role::Text(match b {
                b'b' => 0x08,
                b'f' => 0x0C,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                other => other,
            }),
        }
    }
}

/// A string's `pattern` as a DFA over its decoded UTF-8 text. JSON Schema patterns are ECMA-262
/// regular expressions that match anywhere in the string; this compiles `(?s:.)*(?:P)(?s:.)*`
/// with the `regex` crate's syntax (the common subset: classes, groups, alternation, counted
/// repetition, `^` and `$`; no look-around or back-references; `\d` and `\w` ASCII, as in
/// ECMA-262, [`ecma_classes`]), and a string matches when the
/// whole text takes the DFA to a match. Bytes that lead it to its dead state are not written;
/// escapes in such a string are the one-letter ones (`\n`, `\"`, …), not `\u`.
#[derive(Debug)]
pub(crate) struct Pattern {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
}

/// `pattern` with ECMA-262's ASCII meaning of `\d` and `\w` (and their negations), which the
/// `regex` crate reads as Unicode classes: `\d` is `[0-9]`, as JSON Schema means it, so a
/// pattern's digits are ASCII digits. Inside a class the replacement is a nested class.
fn ecma_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("[0-9]"),
            Some('D') => out.push_str("[^0-9]"),
            Some('w') => out.push_str("[0-9A-Za-z_]"),
            Some('W') => out.push_str("[^0-9A-Za-z_]"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The largest DFA a pattern may compile to.
const DFA_BYTES: usize = 1 << 20;

impl Pattern {
    pub(crate) fn compile(pattern: &str) -> Result<Pattern, String> {
        let refused = |e: &dyn std::fmt::Display| format!("pattern {pattern:?}: {e}");
        let wrapped = format!("(?s:.)*(?:{})(?s:.)*", ecma_classes(pattern));
        let dfa = dense::Builder::new()
            .thompson(thompson::Config::new().nfa_size_limit(Some(DFA_BYTES)))
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::All)
                    .minimize(true)
                    .start_kind(StartKind::Anchored)
                    .dfa_size_limit(Some(DFA_BYTES))
                    .determinize_size_limit(Some(DFA_BYTES)),
            )
            .build(&wrapped)
            .map_err(|e| refused(&e))?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .map_err(|e| refused(&e))?;
        Ok(Pattern { dfa, start })
    }

    /// The bytes its DFA takes.
    pub(crate) fn memory_usage(&self) -> usize {
        self.dfa.memory_usage()
    }

    /// The state after a byte in role `role`, or `None` where no completion can match.
    fn step(&self, at: StateID, role: Role) -> Option<StateID> {
        let alive = |s: StateID| (!self.dfa.is_dead_state(s)).then_some(s);
        match role {
            Role::Text(b) => alive(self.dfa.next_state(at, b)),
            // Some one-letter escape must keep it alive; the letter then decides.
            Role::Escape => ESCAPED
                .iter()
                .any(|&b| !self.dfa.is_dead_state(self.dfa.next_state(at, b)))
                .then_some(at),
            Role::Unicode => None,
            Role::Close => self
                .dfa
                .is_match_state(self.dfa.next_eoi_state(at))
                .then_some(at),
        }
    }
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
    fn perl_classes_take_their_ascii_meaning() {
        assert_eq!(
            ecma_classes(r"^\d{3}-\w[^\D]\s\\d$"),
            r"^[0-9]{3}-[0-9A-Za-z_][^[^0-9]]\s\\d$"
        );
        let p = Pattern::compile(r"^\d$").unwrap();
        let matches = |text: &str| {
            let mut at = p.start;
            for &b in text.as_bytes() {
                at = p.dfa.next_state(at, b);
            }
            p.dfa.is_match_state(p.dfa.next_eoi_state(at))
        };
        assert!(matches("7") && !matches("\u{0968}") && !matches("77"));
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
