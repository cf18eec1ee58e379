//! The engine's `TokenDecoder` over Grain's tokenizer.

use grain_engine::TokenDecoder;
use grain_tokenizer::Tokenizer;

pub struct TokDecoder(pub Tokenizer);

impl TokenDecoder for TokDecoder {
    fn decode(&self, ids: &[u32]) -> String {
        // Decoding never fails for in-vocabulary ids; an unknown id decodes to nothing rather than
        // failing a stream.
        self.0.decode(ids, true).unwrap_or_default()
    }

    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let piece = self.0.id_to_token(id).unwrap_or_default();
        // Byte-fallback pieces `<0xNN>` stand for one raw byte.
        if let Some(hex) = piece.strip_prefix("<0x").and_then(|s| s.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return (String::from_utf8_lossy(&[b]).into_owned(), vec![b]);
            }
        }
        let text = self
            .0
            .decode(&[id], false)
            .unwrap_or_else(|_| piece.replace('\u{2581}', " "));
        let text = if piece.starts_with('\u{2581}') && !text.starts_with(' ') {
            format!(" {text}")
        } else {
            text
        };
        let bytes = text.as_bytes().to_vec();
        (text, bytes)
    }
}
