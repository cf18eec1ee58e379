//! `response_format` `json_object` and `json_schema`: before each sampled token, every token
//! that cannot continue the choice's text as one JSON object ([`JsonState`]), or as one document
//! of the request's schema ([`SchemaState`]), gets a -inf logit; once the document is complete,
//! only EOS may follow. The choice's text is therefore always a prefix of such a document and,
//! when it ends with `stop`, a whole one.
//!
//! `tool_choice: "auto"` ([`JsonConstraint::call_or_text`]) leaves the choice free until its first
//! byte that is not JSON whitespace: a `{` opens a call, held to the calls' schema from there on;
//! any other byte makes the answer free text.

use crate::api::EngineError;
use crate::json_grammar::{is_json_ws, JsonState};
use crate::json_schema::JsonSchema;
use crate::json_schema_state::SchemaState;
use crate::runner::TokenDecoder;

/// Each vocabulary token's bytes as they appear in the text, `None` for tokens that add no text
/// (special tokens, which decoding skips): what the mask tests against the grammar.
#[derive(Debug)]
pub(crate) struct TokenTable {
    bytes: Vec<Option<Box<[u8]>>>,
}

impl TokenTable {
    pub fn build(decoder: &dyn TokenDecoder, vocab: usize) -> Self {
        let bytes = (0..vocab as u32)
            .map(|id| {
                let (_, bytes) = decoder.token_text(id);
                let adds_text = !bytes.is_empty() && !decoder.decode(&[id]).is_empty();
                adds_text.then(|| bytes.into_boxed_slice())
            })
            .collect();
        Self { bytes }
    }

    fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }
}

/// One choice's progress through its JSON object or schema document.
#[derive(Debug, Clone)]
pub(crate) enum JsonConstraint {
    Object(JsonState),
    Schema {
        schema: JsonSchema,
        state: SchemaState,
    },
    /// A call or free text, not yet decided: only JSON whitespace so far (fed to `state`).
    CallOrText {
        schema: JsonSchema,
        state: SchemaState,
    },
    /// Decided for free text: nothing is masked.
    Text,
}

/// Sets the logit of every token that `allowed` refuses to -inf. Fails, naming `param`, when no
/// token the model gives a chance is left.
fn keep_only(
    row: &mut [f32],
    allowed: impl Fn(u32) -> bool,
    message: &str,
    param: &str,
) -> Result<(), EngineError> {
    let mut any = false;
    for (id, logit) in (0u32..).zip(row.iter_mut()) {
        if !allowed(id) {
            *logit = f32::NEG_INFINITY;
        } else if *logit > f32::NEG_INFINITY {
            any = true;
        }
    }
    if any {
        Ok(())
    } else {
        Err(EngineError::invalid(message, Some(param)))
    }
}

/// Where a token's text stands on the call-or-text choice: all JSON whitespace (`None`, what may
/// come before a call's `{` without making the answer text), or its first other byte.
fn first_non_ws(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|&b| !is_json_ws(b))
}

impl Default for JsonConstraint {
    fn default() -> Self {
        Self::object()
    }
}

impl JsonConstraint {
    pub fn object() -> Self {
        Self::Object(JsonState::new())
    }

    pub fn schema(schema: &JsonSchema) -> Self {
        Self::Schema {
            state: SchemaState::new(&schema.0),
            schema: schema.clone(),
        }
    }

    /// A tool call (a document of `schema`, the calls' envelope) when the text opens with `{`
    /// after any JSON whitespace, free text otherwise (`tool_choice: "auto"`).
    pub fn call_or_text(schema: &JsonSchema) -> Self {
        Self::CallOrText {
            state: SchemaState::new(&schema.0),
            schema: schema.clone(),
        }
    }

    /// Whether `bytes` continue the document (tested on a copy of the state).
    fn accepts(&self, bytes: &[u8]) -> bool {
        match self {
            Self::Object(state) => {
                let mut next = *state;
                next.feed(bytes)
            }
            Self::Schema { schema, state } => state.accepts(&schema.0, bytes),
            Self::CallOrText { schema, state } => match first_non_ws(bytes) {
                Some(b'{') => state.accepts(&schema.0, bytes),
                None | Some(_) => true,
            },
            Self::Text => true,
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Self::Object(state) => state.is_done(),
            Self::Schema { state, .. } => state.is_done(),
            Self::CallOrText { .. } | Self::Text => false,
        }
    }

    /// Sets the logit of every token that cannot come next to -inf. Fails when none that the
    /// model gives a chance can (a vocabulary or model that cannot write the document).
    pub fn mask(
        &self,
        row: &mut [f32],
        table: &TokenTable,
        eos: &[u32],
    ) -> Result<(), EngineError> {
        match self {
            Self::Text => return Ok(()),
            Self::CallOrText { .. } => return self.mask_call_or_text(row, table),
            Self::Object(_) | Self::Schema { .. } => {}
        }
        let done = self.is_done();
        // Most tokens fail on their first byte: test each byte value once.
        let first: [bool; 256] = std::array::from_fn(|b| !done && self.accepts(&[b as u8]));
        let allowed = |id| {
            if eos.contains(&id) {
                done
            } else {
                table
                    .bytes(id)
                    .is_some_and(|b| first[b[0] as usize] && (b.len() == 1 || self.accepts(b)))
            }
        };
        keep_only(
            row,
            allowed,
            "the model has no token that continues the JSON document here",
            "response_format",
        )
    }

    /// [`Self::mask`] before a call or text is decided: a token that opens a call must continue
    /// its document; EOS, tokens without text and tokens that open text are all free. Whitespace
    /// the call's grammar would not take is text.
    fn mask_call_or_text(&self, row: &mut [f32], table: &TokenTable) -> Result<(), EngineError> {
        keep_only(
            row,
            |id| table.bytes(id).is_none_or(|b| self.accepts(b)),
            "the model has no token that can start the answer",
            "tool_choice",
        )
    }

    /// Reads the sampled token's text.
    pub fn advance(&mut self, token: u32, table: &TokenTable) {
        let Some(b) = table.bytes(token) else {
            return;
        };
        // The mask only let through tokens that continue the document.
        let ok = match self {
            Self::Object(state) => state.feed(b),
            Self::Schema { schema, state } => state.feed(&schema.0, b),
            Self::CallOrText { schema, state } => match first_non_ws(b) {
                Some(b'{') => {
                    let ok = state.feed(&schema.0, b);
                    *self = Self::Schema {
                        schema: schema.clone(),
                        state: *state,
                    };
                    ok
                }
                None if state.accepts(&schema.0, b) => state.feed(&schema.0, b),
                _ => {
                    *self = Self::Text;
                    true
                }
            },
            Self::Text => true,
        };
        debug_assert!(ok, "a masked-out token was sampled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::{ToyDecoder, BOS, EOS, VOCAB};

    fn allowed(c: &JsonConstraint, table: &TokenTable) -> Vec<u32> {
        let mut row = vec![0.0; VOCAB];
        c.mask(&mut row, table, &[EOS]).unwrap();
        (0..VOCAB as u32)
            .filter(|&i| row[i as usize] == 0.0)
            .collect()
    }

    #[test]
    fn only_continuations_of_the_object_and_then_only_eos_survive() {
        let table = TokenTable::build(&ToyDecoder, VOCAB);
        assert!(table.bytes(BOS).is_none(), "special tokens add no text");
        let mut c = JsonConstraint::default();
        let ws: Vec<u32> = b" \t\n\r".iter().map(|&b| u32::from(b)).collect();
        let mut start = ws.clone();
        start.push(u32::from(b'{'));
        start.sort_unstable();
        assert_eq!(allowed(&c, &table), start);
        for &b in b"{\"k\": [1, true]" {
            c.advance(u32::from(b), &table);
        }
        let mut next = ws.clone();
        next.extend([u32::from(b','), u32::from(b'}')]);
        next.sort_unstable();
        assert_eq!(
            allowed(&c, &table),
            next,
            "a comma or the end of the object"
        );
        c.advance(u32::from(b'}'), &table);
        assert_eq!(allowed(&c, &table), vec![EOS]);
    }

    /// `tool_choice: "auto"`: whitespace keeps the choice open, a `{` holds the rest to the
    /// calls' schema, anything else frees it; before that, only `{`-opening tokens the schema
    /// refuses are masked.
    #[test]
    fn call_or_text_is_decided_by_the_first_byte_after_whitespace() {
        let table = TokenTable::build(&ToyDecoder, VOCAB);
        let schema = crate::json_schema::JsonSchema::compile(&serde_json::json!({
            "anyOf": [{"type": "object", "properties": {"f": {"type": "object"}},
                       "required": ["f"], "additionalProperties": false}]
        }))
        .unwrap();
        let start = JsonConstraint::call_or_text(&schema);
        let everything: Vec<u32> = (0..VOCAB as u32).collect();
        assert_eq!(allowed(&start, &table), everything, "text, a call or EOS");
        // Whitespace: still open, and the call's grammar has taken it.
        let mut c = start.clone();
        for &b in b" \n" {
            c.advance(u32::from(b), &table);
        }
        assert!(matches!(c, JsonConstraint::CallOrText { .. }));
        assert_eq!(allowed(&c, &table), everything);
        // `{`: a call, exactly as the schema's own constraint after the same text.
        let mut call = c.clone();
        let mut doc = JsonConstraint::schema(&schema);
        for &b in b" \n{" {
            doc.advance(u32::from(b), &table);
        }
        call.advance(u32::from(b'{'), &table);
        assert_eq!(allowed(&call, &table), allowed(&doc, &table));
        assert!(!allowed(&call, &table).contains(&u32::from(b'x')));
        for &b in b"\"f\": {}}" {
            call.advance(u32::from(b), &table);
        }
        assert_eq!(allowed(&call, &table), vec![EOS], "the call is complete");
        // Anything else: free text, `{` included later on.
        let mut text = c;
        text.advance(u32::from(b'h'), &table);
        assert!(matches!(text, JsonConstraint::Text));
        text.advance(u32::from(b'{'), &table);
        assert_eq!(allowed(&text, &table), everything);
    }

    /// What the mask costs per sampled token on a LLaMA-sized vocabulary of random 1–8-byte
    /// tokens (`cargo test --release -p grain-engine --lib json_mode -- --ignored --nocapture`).
    #[test]
    #[ignore = "timing, not a check"]
    fn mask_speed_on_a_32k_vocabulary() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz {}[]\":,0123456789\n";
        let bytes = (0..32_000)
            .map(|_| {
                let n = rng.random_range(1..=8);
                Some(
                    (0..n)
                        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                        .collect(),
                )
            })
            .collect();
        let table = TokenTable { bytes };
        let toy = TokenTable::build(&ToyDecoder, VOCAB);
        let mut in_string = JsonConstraint::default();
        for &b in b"{\"name\": \"a cat" {
            in_string.advance(u32::from(b), &toy);
        }
        let schema = crate::json_schema::JsonSchema::compile(&serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"]
        }))
        .unwrap();
        let mut schema_string = JsonConstraint::schema(&schema);
        let mut schema_value = JsonConstraint::schema(&schema);
        for &b in b"{\"name\": \"a cat" {
            schema_string.advance(u32::from(b), &toy);
        }
        for &b in b"{\"name\": \"a cat\", \"age\":" {
            schema_value.advance(u32::from(b), &toy);
        }
        let bounded = crate::json_schema::JsonSchema::compile(&serde_json::json!({
            "type": "object",
            "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1}}
        }))
        .unwrap();
        let mut in_bounded = JsonConstraint::schema(&bounded);
        for &b in b"{\"p\": 0.1" {
            in_bounded.advance(u32::from(b), &toy);
        }
        let stepped = crate::json_schema::JsonSchema::compile(&serde_json::json!({
            "type": "object",
            "properties": {"p": {"type": "number", "minimum": -50, "maximum": 1e6, "multipleOf": 0.05}}
        }))
        .unwrap();
        let mut in_stepped = JsonConstraint::schema(&stepped);
        for &b in b"{\"p\": 12" {
            in_stepped.advance(u32::from(b), &toy);
        }
        for (what, c) in [
            ("schema, inside a bounded number", in_bounded),
            ("schema, inside a multiple of 0.05", in_stepped),
            ("inside a string", in_string),
            ("at the start", JsonConstraint::default()),
            ("schema, inside a string", schema_string),
            ("schema, before an integer", schema_value),
        ] {
            let mut row = vec![0.0f32; 32_000];
            let started = std::time::Instant::now();
            for _ in 0..100 {
                row.fill(0.0);
                c.mask(&mut row, &table, &[2]).unwrap();
                std::hint::black_box(&row);
            }
            eprintln!(
                "{what}: {:.3} ms per mask",
                started.elapsed().as_secs_f64() * 10.0
            );
        }
    }

    #[test]
    fn a_model_that_rules_out_every_continuation_is_an_error() {
        let table = TokenTable::build(&ToyDecoder, VOCAB);
        let mut row = vec![f32::NEG_INFINITY; VOCAB];
        row[b'a' as usize] = 1.0;
        let e = JsonConstraint::default()
            .mask(&mut row, &table, &[EOS])
            .unwrap_err();
        assert!(
            matches!(&e, EngineError::InvalidRequest { param: Some(p), .. } if p == "response_format")
        );
    }
}
