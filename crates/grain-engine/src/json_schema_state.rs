//! How far a choice's text got through a compiled JSON Schema ([`crate::json_schema`]), byte by
//! byte: [`SchemaState`] says whether the text is still the prefix of a document the schema
//! accepts. Like [`JsonState`] it is `Copy` (a fixed stack of containers), so
//! [`crate::json_mode`] tests each candidate token on a copy.
//!
//! Strings, numbers and free values (`{}` schemas) go through [`JsonState`]; bounded integers,
//! numbers and strings through [`crate::json_schema_int`], [`crate::json_schema_num`] and
//! [`crate::json_schema_str`]; the schema's own objects, arrays and literals through the stack
//! here. Objects write their properties in the
//! schema's order, optional ones may be skipped; whitespace between tokens is allowed as in
//! [`JsonState`] (at most [`MAX_WHITESPACE`] bytes in a row). Schema containers nest at most
//! [`MAX_NESTING`] deep: a recursive schema's document ends there.

use crate::json_grammar::{is_json_ws, JsonState, MAX_WHITESPACE};
use crate::json_schema::{Compiled, Node, NodeId, Prop};
use crate::json_schema_num::MAX_DIGITS;
use crate::json_schema_str::{continues, StrAt, StrNext};

/// Deepest nesting of the schema's own objects and arrays.
pub(crate) const MAX_NESTING: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Just after `{` or `[`.
    AfterOpen,
    /// After a `,`.
    AfterComma,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the end.
    AfterValue,
}

/// One open object or array of the schema.
#[derive(Debug, Clone, Copy)]
struct Frame {
    node: NodeId,
    phase: Phase,
    /// Objects: the index of the first property that may still be written. Arrays: the values
    /// written (or begun).
    count: u32,
    /// Objects: the property whose key was read last.
    current: u8,
}

/// What reads the next byte before the innermost container.
#[derive(Debug, Clone, Copy)]
enum Leaf {
    /// Nothing: the innermost container.
    None,
    /// A value of `node` comes next, after optional whitespace.
    Pending(NodeId),
    /// One of node `node`'s literals, or (`keys`) its property names: the candidates left (a
    /// bit set) and the bytes read.
    Lit {
        node: NodeId,
        keys: bool,
        cands: u64,
        read: u16,
    },
    /// A string, number or free value, through the plain grammar.
    Free { state: JsonState, integer: bool },
    /// An integer of node `node` ([`Node::Integer`]): a `-` read (`neg`), then `digits` digits
    /// worth `mag`.
    Int {
        node: NodeId,
        neg: bool,
        mag: u64,
        digits: u8,
    },
    /// A number of node `node` ([`Node::BoundedNumber`]).
    Num { node: NodeId, num: NumText },
    /// A string of node `node` ([`Node::BoundedString`]) after its opening quote.
    Str { node: NodeId, at: StrAt },
}

/// A bounded number as written so far: a `-` (`neg`), then `len` digits, the last `frac` of them
/// after a `.` (`dot`).
#[derive(Debug, Clone, Copy)]
struct NumText {
    neg: bool,
    digits: [u8; MAX_DIGITS],
    len: u8,
    dot: bool,
    frac: u8,
}

impl NumText {
    const EMPTY: NumText = NumText {
        neg: false,
        digits: [0; MAX_DIGITS],
        len: 0,
        dot: false,
        frac: 0,
    };

    /// The text with byte `b` added, if the grammar takes it (no exponent, at most
    /// [`MAX_DIGITS`] digits, no digit after a leading `0`).
    fn with(mut self, b: u8) -> Option<NumText> {
        let len = self.len as usize;
        match b {
            b'-' if len == 0 && !self.neg && !self.dot => self.neg = true,
            b'.' if len > 0 && !self.dot => self.dot = true,
            b'0'..=b'9' if len < MAX_DIGITS && (self.dot || len != 1 || self.digits[0] != 0) => {
                self.digits[len] = b - b'0';
                self.len += 1;
                self.frac += u8::from(self.dot);
            }
            _ => return None,
        }
        Some(self)
    }

    fn parts(&self) -> (bool, &[u8], bool, usize) {
        (
            self.neg,
            &self.digits[..self.len as usize],
            self.dot,
            self.frac as usize,
        )
    }
}

/// A text's progress through a schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchemaState {
    stack: [Frame; MAX_NESTING],
    depth: u8,
    leaf: Leaf,
    whitespace: u8,
    done: bool,
}

/// The candidates `range` as a bit set.
fn bits(range: std::ops::Range<usize>) -> u64 {
    range.fold(0, |m, i| m | 1 << i)
}

impl SchemaState {
    pub fn new(s: &Compiled) -> Self {
        let empty = Frame {
            node: 0,
            phase: Phase::AfterOpen,
            count: 0,
            current: 0,
        };
        Self {
            stack: [empty; MAX_NESTING],
            depth: 0,
            leaf: Leaf::Pending(s.root),
            whitespace: 0,
            done: false,
        }
    }

    /// The document is complete (trailing whitespace aside).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Reads `bytes`; `false` (leaving the state unspecified) as soon as one cannot continue a
    /// document of the schema.
    pub fn feed(&mut self, s: &Compiled, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.step(s, b))
    }

    /// Whether `bytes` continue the document, tested on a copy. Inside a string or a free value
    /// only the leaf's small state is copied, as long as the bytes stay inside it (most tokens
    /// there do).
    pub fn accepts(&self, s: &Compiled, bytes: &[u8]) -> bool {
        if let Leaf::Free { state, integer } = self.leaf {
            let mut leaf = state;
            let inside = bytes.iter().all(|&b| {
                let fraction = integer && leaf.in_number() && matches!(b, b'.' | b'e' | b'E');
                !fraction && leaf.feed(&[b]) && !leaf.is_done()
            });
            if inside {
                return true;
            }
        }
        if let Leaf::Str { node, at } = self.leaf {
            if let Node::BoundedString(rule) = &s.nodes[node as usize] {
                if continues(at, rule, &s.patterns, bytes) {
                    return true;
                }
            }
        }
        let mut next = *self;
        next.feed(s, bytes)
    }

    fn step(&mut self, s: &Compiled, b: u8) -> bool {
        match self.leaf {
            Leaf::Lit {
                node,
                keys,
                cands,
                read,
            } => return self.literal(s, (node, keys, cands, read), b),
            Leaf::Free { state, integer } => {
                let mut next = state;
                let fraction = integer && state.in_number() && matches!(b, b'.' | b'e' | b'E');
                if !fraction && next.feed(&[b]) {
                    if next.is_done() {
                        self.leaf = Leaf::None;
                        self.value_done();
                    } else {
                        self.leaf = Leaf::Free {
                            state: next,
                            integer,
                        };
                    }
                    return true;
                }
                // A number ends at the first byte that cannot continue it.
                if state.can_end() && !state.is_done() {
                    self.leaf = Leaf::None;
                    self.value_done();
                    return self.step(s, b);
                }
                return false;
            }
            Leaf::Int {
                node,
                neg,
                mag,
                digits,
            } => return self.int_byte(s, node, (neg, mag, digits), b),
            Leaf::Num { node, num } => return self.num_byte(s, node, num, b),
            Leaf::Str { node, at } => return self.str_byte(s, (node, at), b),
            Leaf::None | Leaf::Pending(_) => {}
        }
        if is_json_ws(b) {
            self.whitespace = self.whitespace.saturating_add(1);
            return self.whitespace <= MAX_WHITESPACE;
        }
        self.whitespace = 0;
        if self.done {
            return false;
        }
        if let Leaf::Pending(node) = self.leaf {
            self.leaf = Leaf::None;
            return self.start(s, node, b);
        }
        let Some(top) = (self.depth as usize).checked_sub(1) else {
            return false;
        };
        let f = self.stack[top];
        match &s.nodes[f.node as usize] {
            Node::Object(props) => self.object_byte(s, props, f, b),
            &Node::Array { items, min, max } => self.array_byte(s, (items, min, max), f, b),
            // Objects told apart by their first key: that key, of any of them, comes first.
            Node::Union(_) if f.phase == Phase::AfterOpen && b == b'"' => {
                let keyed = &s.keyed[f.node as usize];
                let cands = (0..keyed.len())
                    .filter(|&i| keyed[i].is_some())
                    .fold(0u64, |m, i| m | 1 << i);
                self.leaf = Leaf::Lit {
                    node: f.node,
                    keys: true,
                    cands,
                    read: 0,
                };
                self.step(s, b)
            }
            _ => false,
        }
    }

    /// The first byte `b` of a value of `node`.
    fn start(&mut self, s: &Compiled, node: NodeId, b: u8) -> bool {
        if !s.starts(node, b) {
            return false;
        }
        let free = |state, integer| Leaf::Free { state, integer };
        match &s.nodes[node as usize] {
            Node::Union(_) if b == b'{' && !s.keyed[node as usize].is_empty() => self.open(node),
            Node::Union(alts) => match alts.iter().find(|&&a| s.starts(a, b)) {
                Some(&alt) => self.start(s, alt, b),
                None => false,
            },
            Node::Object(_) | Node::Array { .. } => self.open(node),
            Node::Literals(lits) => {
                self.leaf = Leaf::Lit {
                    node,
                    keys: false,
                    cands: bits(0..lits.len()),
                    read: 0,
                };
                self.step(s, b)
            }
            Node::Any { object_only: true } => {
                self.leaf = free(JsonState::new(), false);
                self.step(s, b)
            }
            Node::Any { object_only: false } | Node::String => {
                self.leaf = free(JsonState::any_value(), false);
                self.step(s, b)
            }
            &Node::Number { integer } => {
                self.leaf = free(JsonState::any_value(), integer);
                self.step(s, b)
            }
            Node::BoundedString(rule) => {
                // `starts` let only the opening quote through.
                let at = StrAt::open(rule, &s.patterns);
                self.leaf = Leaf::Str { node, at };
                true
            }
            Node::BoundedNumber(_) => {
                self.leaf = Leaf::Num {
                    node,
                    num: NumText::EMPTY,
                };
                self.step(s, b)
            }
            Node::Integer(_) => {
                self.leaf = Leaf::Int {
                    node,
                    neg: false,
                    mag: 0,
                    digits: 0,
                };
                self.step(s, b)
            }
        }
    }

    /// A byte of a bounded string: one the grammar takes that keeps it within its rule.
    fn str_byte(&mut self, s: &Compiled, (node, at): (NodeId, StrAt), b: u8) -> bool {
        let Node::BoundedString(rule) = &s.nodes[node as usize] else {
            return false;
        };
        match at.step(rule, &s.patterns, b) {
            Some(StrNext::Open(at)) => self.leaf = Leaf::Str { node, at },
            Some(StrNext::Closed) => {
                self.leaf = Leaf::None;
                self.value_done();
            }
            None => return false,
        }
        true
    }

    /// A byte of a bounded number: one that can still lead to a value in the range, or else the
    /// end of the number when it is one.
    fn num_byte(&mut self, s: &Compiled, node: NodeId, num: NumText, b: u8) -> bool {
        let Node::BoundedNumber(range) = &s.nodes[node as usize] else {
            return false;
        };
        let next = num.with(b).filter(|n| {
            let (neg, digits, dot, frac) = n.parts();
            range.reachable(neg, digits, dot, frac)
        });
        if let Some(num) = next {
            self.leaf = Leaf::Num { node, num };
            return true;
        }
        let (neg, digits, dot, frac) = num.parts();
        if range.contains(neg, digits, dot, frac) {
            self.leaf = Leaf::None;
            self.value_done();
            return self.step(s, b);
        }
        false
    }

    /// A byte of a bounded integer: a digit (or the first `-`) that can still lead to a value
    /// in the range, or else the end of the integer when it is one.
    fn int_byte(
        &mut self,
        s: &Compiled,
        node: NodeId,
        (neg, mag, digits): (bool, u64, u8),
        b: u8,
    ) -> bool {
        let Node::Integer(range) = s.nodes[node as usize] else {
            return false;
        };
        let next = match b {
            b'-' if digits == 0 && !neg => Some((true, 0, 0)),
            // After a leading `0` no digit may follow.
            b'0'..=b'9' if digits == 0 || mag != 0 => mag
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(b - b'0')))
                .map(|m| (neg, m, digits.saturating_add(1))),
            _ => None,
        };
        if let Some((neg, mag, digits)) = next.filter(|&(n, m, d)| range.reachable(n, m, d)) {
            self.leaf = Leaf::Int {
                node,
                neg,
                mag,
                digits,
            };
            return true;
        }
        if range.contains(neg, mag, digits) {
            self.leaf = Leaf::None;
            self.value_done();
            return self.step(s, b);
        }
        false
    }

    /// Opens a container (or a union of keyed objects) of `node`.
    fn open(&mut self, node: NodeId) -> bool {
        if self.depth as usize == MAX_NESTING {
            return false;
        }
        self.stack[self.depth as usize] = Frame {
            node,
            phase: Phase::AfterOpen,
            count: 0,
            current: 0,
        };
        self.depth += 1;
        true
    }

    /// A byte of a literal or a key.
    fn literal(
        &mut self,
        s: &Compiled,
        (node, keys, cands, read): (NodeId, bool, u64, u16),
        b: u8,
    ) -> bool {
        let text = |i: usize| -> &[u8] {
            match &s.nodes[node as usize] {
                Node::Object(props) if keys => &props[i].key,
                Node::Union(_) if keys => match s.keyed[node as usize][i] {
                    Some(o) => match &s.nodes[o as usize] {
                        Node::Object(props) => &props[0].key,
                        _ => &[],
                    },
                    None => &[],
                },
                Node::Literals(lits) => &lits[i],
                _ => &[],
            }
        };
        let at = read as usize;
        let (mut next, mut complete) = (0u64, None);
        for i in (0..64).filter(|i| cands & (1 << i) != 0) {
            let t = text(i);
            if t.len() == at {
                complete = Some(i);
            } else if t[at] == b {
                next |= 1 << i;
            }
        }
        if next != 0 {
            let read = read + 1;
            let all_end = (0..64)
                .filter(|i| next & (1 << i) != 0)
                .all(|i| text(i).len() == read as usize);
            if all_end {
                self.literal_done(s, keys, next.trailing_zeros() as usize);
            } else {
                self.leaf = Leaf::Lit {
                    node,
                    keys,
                    cands: next,
                    read,
                };
            }
            return true;
        }
        match complete {
            // A literal that another one extends (`1` and `12`) ends at the byte after it.
            Some(i) => {
                self.literal_done(s, keys, i);
                self.step(s, b)
            }
            None => false,
        }
    }

    fn literal_done(&mut self, s: &Compiled, keys: bool, i: usize) {
        self.leaf = Leaf::None;
        if keys {
            let f = &mut self.stack[self.depth as usize - 1];
            // A union's first key picked one of its objects: go on as that object.
            let (node, i) = match s.keyed.get(f.node as usize).and_then(|k| k.get(i)) {
                Some(Some(object)) => (*object, 0),
                _ => (f.node, i),
            };
            f.node = node;
            f.current = i as u8;
            f.count = i as u32 + 1;
            f.phase = Phase::Colon;
        } else {
            self.value_done();
        }
    }

    fn object_byte(&mut self, s: &Compiled, props: &[Prop], mut f: Frame, b: u8) -> bool {
        let top = self.depth as usize - 1;
        let from = f.count as usize;
        let rest_optional = props[from.min(props.len())..].iter().all(|p| !p.required);
        match (f.phase, b) {
            (Phase::AfterOpen | Phase::AfterComma, b'"') if from < props.len() => {
                // Any property up to and including the next required one.
                let to = props[from..]
                    .iter()
                    .position(|p| p.required)
                    .map_or(props.len(), |i| from + i + 1);
                self.leaf = Leaf::Lit {
                    node: f.node,
                    keys: true,
                    cands: bits(from..to),
                    read: 0,
                };
                self.step(s, b)
            }
            (Phase::AfterOpen | Phase::AfterValue, b'}') if rest_optional => self.pop(),
            (Phase::Colon, b':') => {
                f.phase = Phase::AfterValue;
                self.stack[top] = f;
                self.leaf = Leaf::Pending(props[f.current as usize].value);
                true
            }
            (Phase::AfterValue, b',') if from < props.len() => {
                f.phase = Phase::AfterComma;
                self.stack[top] = f;
                true
            }
            _ => false,
        }
    }

    fn array_byte(
        &mut self,
        s: &Compiled,
        (items, min, max): (NodeId, u32, u32),
        mut f: Frame,
        b: u8,
    ) -> bool {
        let top = self.depth as usize - 1;
        match (f.phase, b) {
            (Phase::AfterOpen, b']') if min == 0 => self.pop(),
            (Phase::AfterValue, b']') if f.count >= min => self.pop(),
            (Phase::AfterValue, b',') if f.count < max => {
                f.phase = Phase::AfterComma;
                self.stack[top] = f;
                true
            }
            (Phase::AfterOpen | Phase::AfterComma, _) if f.count < max => {
                f.count += 1;
                f.phase = Phase::AfterValue;
                self.stack[top] = f;
                self.start(s, items, b)
            }
            _ => false,
        }
    }

    fn pop(&mut self) -> bool {
        self.depth -= 1;
        self.value_done();
        true
    }

    /// A value ended; its container already waits for what follows it.
    fn value_done(&mut self) {
        if self.depth == 0 {
            self.done = true;
        }
    }
}

#[cfg(test)]
#[path = "json_schema_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "json_schema_bounds_tests.rs"]
mod bounds_tests;
