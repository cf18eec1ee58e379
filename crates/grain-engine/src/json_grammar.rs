//! A byte-level recogniser of one JSON object (RFC 8259), for `response_format: json_object`.
//!
//! [`JsonState`] reads a choice's text byte by byte and says whether it is still the prefix of a
//! JSON object. It is `Copy` (the container stack is a bit set), so testing a candidate token is a
//! copy and a few byte steps, with no allocation: [`crate::json_mode`] does that for every token of
//! the vocabulary before each sampled token.
//!
//! Two limits keep a model from running away inside the grammar: containers nest at most
//! [`MAX_DEPTH`] deep, and at most [`MAX_WHITESPACE`] whitespace bytes may follow each other outside
//! strings (JSON allows any amount, and a model can loop on newlines). Strings must be valid
//! UTF-8, byte by byte, so a token that ends inside a character is allowed only when the
//! character can still be completed.

/// Deepest nesting of objects and arrays.
pub const MAX_DEPTH: u8 = 64;
/// Longest run of whitespace outside strings.
pub const MAX_WHITESPACE: u8 = 32;

/// JSON's whitespace (RFC 8259: space, tab, line feed, carriage return).
pub(crate) fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the top-level object.
    Start,
    /// A value must come (after `:`, or `,` in an array).
    Value,
    /// Just after `[`: a value or `]`.
    ValueOrClose,
    /// Just after `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// Inside a string; `key` says whether a `:` follows it.
    Str {
        key: bool,
        escape: Escape,
    },
    /// After a key: `:`.
    Colon,
    Number(Number),
    /// Inside `true`, `false` or `null`: which one, and how many bytes were read.
    Literal {
        word: u8,
        read: u8,
    },
    /// After a value inside a container: `,` or the container's end.
    After,
    /// The top-level object is complete: only whitespace may follow.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    Backslash,
    /// Hex digits still to read after `\u`.
    Unicode(u8),
    /// Inside a multi-byte UTF-8 character: `left` bytes to come, the next one in `lo ..= hi`.
    Utf8 {
        left: u8,
        lo: u8,
        hi: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Number {
    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(
            self,
            Number::Zero | Number::Int | Number::Frac | Number::ExpDigits
        )
    }
}

const WORDS: [&[u8]; 3] = [b"true", b"false", b"null"];

/// How far a text got through the grammar of one JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonState {
    mode: Mode,
    /// Bit `i` set: the container at depth `i` is an object (else an array).
    objects: u64,
    depth: u8,
    whitespace: u8,
}

impl Default for JsonState {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonState {
    pub fn new() -> Self {
        Self {
            mode: Mode::Start,
            objects: 0,
            depth: 0,
            whitespace: 0,
        }
    }

    /// One JSON value of any kind instead of an object (`json_schema`'s free values): `{}`
    /// schemas, strings and numbers. A number at the top ends where a byte cannot continue it
    /// ([`Self::can_end`]).
    pub fn any_value() -> Self {
        Self {
            mode: Mode::Value,
            ..Self::new()
        }
    }

    /// The object is complete (trailing whitespace aside).
    pub fn is_done(&self) -> bool {
        self.mode == Mode::Done
    }

    /// The value is complete, or is a top-level number that may end here.
    pub fn can_end(&self) -> bool {
        match self.mode {
            Mode::Done => true,
            Mode::Number(n) => self.depth == 0 && n.complete(),
            _ => false,
        }
    }

    /// Inside a number (whose fraction and exponent `integer` schemas refuse).
    pub fn in_number(&self) -> bool {
        matches!(self.mode, Mode::Number(_))
    }

    /// Reads `bytes`; `false` (leaving the state unspecified) as soon as one cannot continue a
    /// JSON object.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.step(b))
    }

    fn step(&mut self, b: u8) -> bool {
        if let Mode::Number(n) = self.mode {
            match (n, b) {
                (Number::Minus, b'0') => self.mode = Mode::Number(Number::Zero),
                (Number::Minus | Number::Int, b'1'..=b'9') => self.mode = Mode::Number(Number::Int),
                (Number::Int, b'0') => {}
                (Number::Zero | Number::Int, b'.') => self.mode = Mode::Number(Number::Dot),
                (Number::Dot | Number::Frac, b'0'..=b'9') => self.mode = Mode::Number(Number::Frac),
                (Number::Zero | Number::Int | Number::Frac, b'e' | b'E') => {
                    self.mode = Mode::Number(Number::Exp)
                }
                (Number::Exp, b'+' | b'-') => self.mode = Mode::Number(Number::ExpSign),
                (Number::Exp | Number::ExpSign | Number::ExpDigits, b'0'..=b'9') => {
                    self.mode = Mode::Number(Number::ExpDigits)
                }
                // Anything else ends the number, if it may end, and is read after it.
                _ if n.complete() => {
                    self.value_done();
                    return self.step(b);
                }
                _ => return false,
            }
            self.whitespace = 0;
            return true;
        }
        if let Mode::Str { key, escape } = self.mode {
            self.mode = match (escape, b) {
                (Escape::None, b'"') if key => Mode::Colon,
                (Escape::None, b'"') => {
                    self.value_done();
                    return true;
                }
                (Escape::None, b'\\') => Mode::Str {
                    key,
                    escape: Escape::Backslash,
                },
                (Escape::None, 0..=0x1f) => return false,
                (Escape::None, 0x20..=0x7f) => return true,
                // The first byte of a multi-byte character fixes the range of the next one
                // (no overlong forms, no surrogates, nothing past U+10FFFF).
                (Escape::None, _) => {
                    let (left, lo, hi) = match b {
                        0xc2..=0xdf => (1, 0x80, 0xbf),
                        0xe0 => (2, 0xa0, 0xbf),
                        0xed => (2, 0x80, 0x9f),
                        0xe1..=0xef => (2, 0x80, 0xbf),
                        0xf0 => (3, 0x90, 0xbf),
                        0xf4 => (3, 0x80, 0x8f),
                        0xf1..=0xf3 => (3, 0x80, 0xbf),
                        _ => return false,
                    };
                    Mode::Str {
                        key,
                        escape: Escape::Utf8 { left, lo, hi },
                    }
                }
                (Escape::Utf8 { left, lo, hi }, _) if (lo..=hi).contains(&b) => Mode::Str {
                    key,
                    escape: if left == 1 {
                        Escape::None
                    } else {
                        Escape::Utf8 {
                            left: left - 1,
                            lo: 0x80,
                            hi: 0xbf,
                        }
                    },
                },
                (Escape::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                    Mode::Str {
                        key,
                        escape: Escape::None,
                    }
                }
                (Escape::Backslash, b'u') => Mode::Str {
                    key,
                    escape: Escape::Unicode(4),
                },
                (Escape::Unicode(left), _) if b.is_ascii_hexdigit() => Mode::Str {
                    key,
                    escape: if left == 1 {
                        Escape::None
                    } else {
                        Escape::Unicode(left - 1)
                    },
                },
                _ => return false,
            };
            return true;
        }
        if let Mode::Literal { word, read } = self.mode {
            let w = WORDS[word as usize];
            if w[read as usize] != b {
                return false;
            }
            if read as usize + 1 == w.len() {
                self.value_done();
            } else {
                self.mode = Mode::Literal {
                    word,
                    read: read + 1,
                };
            }
            return true;
        }
        if is_json_ws(b) {
            self.whitespace += 1;
            return self.whitespace <= MAX_WHITESPACE;
        }
        self.whitespace = 0;
        match (self.mode, b) {
            (Mode::Start, b'{') => self.push(true, Mode::KeyOrClose),
            (Mode::Value | Mode::ValueOrClose, _) => {
                if self.mode == Mode::ValueOrClose && b == b']' {
                    return self.pop(false);
                }
                self.value(b)
            }
            (Mode::KeyOrClose, b'}') => self.pop(true),
            (Mode::KeyOrClose | Mode::Key, b'"') => {
                self.mode = Mode::Str {
                    key: true,
                    escape: Escape::None,
                };
                true
            }
            (Mode::Colon, b':') => {
                self.mode = Mode::Value;
                true
            }
            (Mode::After, b',') => {
                self.mode = if self.top_is_object() {
                    Mode::Key
                } else {
                    Mode::Value
                };
                true
            }
            (Mode::After, b'}') => self.pop(true),
            (Mode::After, b']') => self.pop(false),
            _ => false,
        }
    }

    /// The first byte of a value.
    fn value(&mut self, b: u8) -> bool {
        self.mode = match b {
            b'{' => return self.push(true, Mode::KeyOrClose),
            b'[' => return self.push(false, Mode::ValueOrClose),
            b'"' => Mode::Str {
                key: false,
                escape: Escape::None,
            },
            b'-' => Mode::Number(Number::Minus),
            b'0' => Mode::Number(Number::Zero),
            b'1'..=b'9' => Mode::Number(Number::Int),
            b't' => Mode::Literal { word: 0, read: 1 },
            b'f' => Mode::Literal { word: 1, read: 1 },
            b'n' => Mode::Literal { word: 2, read: 1 },
            _ => return false,
        };
        true
    }

    fn push(&mut self, object: bool, then: Mode) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if object {
            self.objects |= 1 << self.depth;
        } else {
            self.objects &= !(1 << self.depth);
        }
        self.depth += 1;
        self.mode = then;
        true
    }

    /// Closes the innermost container, if it is of the given kind.
    fn pop(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.top_is_object() != object {
            return false;
        }
        self.depth -= 1;
        self.value_done();
        true
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && self.objects & (1 << (self.depth - 1)) != 0
    }

    fn value_done(&mut self) {
        self.mode = if self.depth == 0 {
            Mode::Done
        } else {
            Mode::After
        };
    }
}

#[cfg(test)]
#[path = "json_grammar_tests.rs"]
mod tests;
