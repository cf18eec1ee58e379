//! A hand-written reader for SentencePiece's `ModelProto` (`tokenizer.model`).
//!
//! Only the fields needed to rebuild the tokenizer are decoded; everything else
//! is skipped by wire type, so newer SentencePiece versions that add fields
//! still load. Field numbers follow `sentencepiece_model.proto`.

use thiserror::Error;

/// Why a `tokenizer.model` could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("truncated protobuf at byte {offset}: {what}")]
    Truncated { offset: usize, what: &'static str },
    #[error("varint longer than 10 bytes at byte {offset}")]
    VarintTooLong { offset: usize },
    #[error("unsupported protobuf wire type {wire_type} for field {field} at byte {offset}")]
    WireType {
        field: u64,
        wire_type: u64,
        offset: usize,
    },
    #[error("field {field} is not valid UTF-8")]
    Utf8 { field: &'static str },
    #[error("invalid field number 0 at byte {offset}")]
    FieldZero { offset: usize },
}

/// `SentencePiece.Type`. `UNUSED` (5) is kept distinct because such pieces are
/// in the id space but must never be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    /// A value this reader does not know; treated like `Normal`.
    Other(i32),
}

impl PieceType {
    fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            other => Self::Other(other),
        }
    }
}

/// `TrainerSpec.ModelType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
    Other(i32),
}

impl ModelType {
    fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Unigram,
            2 => Self::Bpe,
            3 => Self::Word,
            4 => Self::Char,
            other => Self::Other(other),
        }
    }
}

/// One vocabulary entry; its id is its index in [`ModelProto::pieces`].
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The `TrainerSpec` fields the conversion uses. Defaults are the proto's.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    pub model_type: ModelType,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: ModelType::Unigram,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
        }
    }
}

/// The `NormalizerSpec` field the conversion uses. (Like transformers' LLaMA
/// converter, the conversion ignores the normalization rules themselves;
/// LLaMA-family models use the identity normalizer.)
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    pub add_dummy_prefix: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            add_dummy_prefix: true,
        }
    }
}

/// The decoded parts of a SentencePiece `ModelProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelProto {
    pub pieces: Vec<Piece>,
    pub trainer_spec: TrainerSpec,
    pub normalizer_spec: NormalizerSpec,
}

impl ModelProto {
    /// Decodes a serialized `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtoError> {
        let mut model = ModelProto::default();
        let mut r = Reader::new(bytes, 0);
        while let Some((field, value)) = r.next_field()? {
            match (field, value) {
                (1, Value::Bytes(b, at)) => model.pieces.push(parse_piece(b, at)?),
                (2, Value::Bytes(b, at)) => model.trainer_spec = parse_trainer_spec(b, at)?,
                (3, Value::Bytes(b, at)) => model.normalizer_spec = parse_normalizer_spec(b, at)?,
                _ => {}
            }
        }
        Ok(model)
    }
}

fn parse_piece(bytes: &[u8], base: usize) -> Result<Piece, ProtoError> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut r = Reader::new(bytes, base);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b, _)) => piece.piece = utf8(b, "SentencePiece.piece")?,
            (2, Value::Fixed32(v)) => piece.score = f32::from_bits(v),
            (3, Value::Varint(v)) => piece.kind = PieceType::from_i32(as_i32(v)),
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer_spec(bytes: &[u8], base: usize) -> Result<TrainerSpec, ProtoError> {
    let mut spec = TrainerSpec::default();
    let mut r = Reader::new(bytes, base);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (3, Value::Varint(v)) => spec.model_type = ModelType::from_i32(as_i32(v)),
            (40, Value::Varint(v)) => spec.unk_id = as_i32(v),
            (41, Value::Varint(v)) => spec.bos_id = as_i32(v),
            (42, Value::Varint(v)) => spec.eos_id = as_i32(v),
            (43, Value::Varint(v)) => spec.pad_id = as_i32(v),
            _ => {}
        }
    }
    Ok(spec)
}

fn parse_normalizer_spec(bytes: &[u8], base: usize) -> Result<NormalizerSpec, ProtoError> {
    let mut spec = NormalizerSpec::default();
    let mut r = Reader::new(bytes, base);
    while let Some((field, value)) = r.next_field()? {
        if let (3, Value::Varint(v)) = (field, value) {
            spec.add_dummy_prefix = v != 0;
        }
    }
    Ok(spec)
}

/// proto `int32`/`enum` values are sign-extended to 64 bits on the wire
/// (-1 takes ten bytes); truncating recovers the original value.
fn as_i32(v: u64) -> i32 {
    v as i64 as i32
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::Utf8 { field })
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    /// Payload and its absolute offset (for error messages in nested messages).
    Bytes(&'a [u8], usize),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` within the whole file.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let start = self.offset();
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(ProtoError::Truncated {
                    offset: start,
                    what: "varint",
                });
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::VarintTooLong { offset: start })
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        let start = self.offset();
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(ProtoError::Truncated {
                offset: start,
                what,
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.offset();
        let key = self.varint()?;
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 0 {
            return Err(ProtoError::FieldZero { offset: at });
        }
        let value = match wire_type {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8, "fixed64")?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                let payload_at = self.offset();
                Value::Bytes(self.take(len, "length-delimited field")?, payload_at)
            }
            5 => {
                let b = self.take(4, "fixed32")?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            // 3/4 are the long-deprecated groups; SentencePiece never writes them.
            _ => {
                return Err(ProtoError::WireType {
                    field,
                    wire_type,
                    offset: at,
                })
            }
        };
        Ok(Some((field, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-assembled protobuf bytes: each comment gives the (field << 3 | wire) key.
    fn piece_msg(piece: &str, score: f32, kind: u8) -> Vec<u8> {
        let mut m = vec![0x0a, piece.len() as u8]; // field 1, wire 2
        m.extend_from_slice(piece.as_bytes());
        m.push(0x15); // field 2, wire 5
        m.extend_from_slice(&score.to_le_bytes());
        m.extend_from_slice(&[0x18, kind]); // field 3, wire 0
        m
    }

    #[test]
    fn parses_pieces_specs_and_negative_ids() {
        let mut bytes = Vec::new();
        for (p, s, k) in [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("▁a", -1.5, 1)] {
            let m = piece_msg(p, s, k);
            bytes.push(0x0a);
            bytes.push(m.len() as u8);
            bytes.extend(m);
        }
        // trainer_spec: model_type=2 (key 0x18), byte_fallback=1 (field 35, key 0x118 =
        // [0x98,0x02], not read: skipped as an unknown field),
        // pad_id=-1 (field 43 → key 0x158 = [0xd8,0x02], ten-byte varint).
        let mut ts = vec![0x18, 0x02, 0x98, 0x02, 0x01, 0xd8, 0x02];
        ts.extend_from_slice(&[0xff; 9]);
        ts.push(0x01);
        bytes.push(0x12);
        bytes.push(ts.len() as u8);
        bytes.extend(ts);
        // normalizer_spec: add_dummy_prefix=0 (key 0x18), an unknown field 9 varint (key 0x48).
        let ns = [0x18, 0x00, 0x48, 0x07];
        bytes.push(0x1a);
        bytes.push(ns.len() as u8);
        bytes.extend(ns);

        let m = ModelProto::parse(&bytes).unwrap();
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(m.pieces[1].kind, PieceType::Control);
        assert_eq!(m.pieces[2].piece, "▁a");
        assert_eq!(m.pieces[2].score, -1.5);
        assert_eq!(m.trainer_spec.model_type, ModelType::Bpe);
        assert_eq!(m.trainer_spec.pad_id, -1);
        assert_eq!(m.trainer_spec.bos_id, 1, "unset fields keep proto defaults");
        assert!(!m.normalizer_spec.add_dummy_prefix);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        // Declares a 10-byte piece but ends after 2.
        let err = ModelProto::parse(&[0x0a, 0x0a, 0x0a, 0x01]).unwrap_err();
        assert!(matches!(err, ProtoError::Truncated { .. }), "{err:?}");
        let err = ModelProto::parse(&[0x08, 0x80]).unwrap_err();
        assert!(matches!(err, ProtoError::Truncated { .. }), "{err:?}");
        let err = ModelProto::parse(&[0x0b]).unwrap_err();
        assert!(matches!(err, ProtoError::WireType { .. }), "{err:?}");
    }
}
