//! The streaming detokenizer: deltas always concatenate to `decode` of the
//! whole sequence, never hold a broken character, and hold nothing back once
//! a character is complete and a non-byte token has followed it.

use grain_tokenizer::Tokenizer;

use crate::common::{both_tokenizers, fixtures, ids, read_json};

/// The fixture's special tokens (its `added_tokens`).
const SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// Streams `ids` and checks the decoder's contract at every step.
fn check_stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut dec = tok.incremental_decoder(skip_special);
    let mut emitted = String::new();
    let mut deltas = Vec::new();
    let mut last_visible_is_byte = false;
    for (i, &id) in ids.iter().enumerate() {
        if let Some(delta) = dec.step(id).unwrap() {
            assert!(!delta.is_empty(), "empty delta at {i} of {ids:?}");
            emitted.push_str(&delta);
            deltas.push(delta);
        }
        let prefix = tok.decode(&ids[..=i], skip_special).unwrap();
        assert!(
            prefix.starts_with(&emitted),
            "emitted {emitted:?} is not a prefix of decode {prefix:?} ({ids:?})"
        );
        // `decode` drops unknown ids and, when skipping, the special tokens;
        // a byte run is only closed by a token it keeps.
        match tok.id_to_token(id) {
            Some(t) if !(skip_special && SPECIALS.contains(&t.as_str())) => {
                last_visible_is_byte = t.starts_with("<0x");
            }
            _ => {}
        }
        if !last_visible_is_byte {
            assert_eq!(emitted, prefix, "text held back after token {i} of {ids:?}");
        }
    }
    if let Some(rest) = dec.finish().unwrap() {
        emitted.push_str(&rest);
        deltas.push(rest);
    }
    assert_eq!(
        emitted,
        tok.decode(ids, skip_special).unwrap(),
        "ids {ids:?}"
    );
    deltas
}

fn case_ids() -> Vec<Vec<u32>> {
    let v = read_json(&fixtures().join("tokenizer/tokenizer_cases.json"));
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["fast_ids_with_special"]))
        .collect()
}

#[test]
fn deltas_equal_decode_on_every_fixture_text() {
    let (native, json) = both_tokenizers();
    let all = case_ids();
    for tok in [&native, &json] {
        for ids in &all {
            for skip in [true, false] {
                let deltas = check_stream(tok, ids, skip);
                // Real text never needs a replacement character.
                assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
            }
        }
        // All cases back to back, separated by EOS, as one long generation.
        let joined: Vec<u32> = all
            .iter()
            .flat_map(|ids| ids.iter().copied().chain([2]))
            .collect();
        check_stream(tok, &joined, true);
        check_stream(tok, &joined, false);
    }
}

#[test]
fn emoji_split_into_byte_tokens_arrive_whole() {
    let (tok, _) = both_tokenizers();
    let text = "I love \u{1F600} and \u{1F680}!";
    let ids = tok.encode(text, false).unwrap();
    let byte_tokens = ids
        .iter()
        .filter(|&&id| tok.id_to_token(id).unwrap().starts_with("<0x"))
        .count();
    assert_eq!(
        byte_tokens, 8,
        "both emoji should be byte fallback: {ids:?}"
    );
    let deltas = check_stream(&tok, &ids, true);
    assert!(deltas.iter().any(|d| d.contains('\u{1F600}')));
    assert!(deltas.iter().any(|d| d.contains('\u{1F680}')));
    assert_eq!(deltas.concat(), text);
    // The first piece's dummy-prefix space is not emitted, as in `decode`.
    assert!(deltas[0].starts_with('I'), "{deltas:?}");
}

#[test]
fn unfinished_character_is_flushed_by_finish_only() {
    let (tok, _) = both_tokenizers();
    // The first three bytes of U+1F600 (F0 9F 98 80).
    let ids: Vec<u32> = ["<0xF0>", "<0x9F>", "<0x98>"]
        .iter()
        .map(|t| tok.token_to_id(t).unwrap())
        .collect();
    let mut dec = tok.incremental_decoder(true);
    for &id in &ids {
        assert_eq!(dec.step(id).unwrap(), None);
    }
    let rest = dec.finish().unwrap().unwrap();
    assert_eq!(rest, tok.decode(&ids, true).unwrap());
    assert!(rest.contains('\u{FFFD}'));
}

/// xorshift64*: a fixed, dependency-free pseudo-random stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn deltas_equal_decode_on_random_sequences() {
    let (tok, _) = both_tokenizers();
    let vocab = tok.vocab_size() as u64;
    // Byte tokens that form valid multi-byte characters, to make long runs.
    let utf8_runs: Vec<Vec<u32>> = ["é", "中", "\u{1F600}", "\u{1F44D}\u{1F3FD}"]
        .iter()
        .map(|s| {
            s.bytes()
                .map(|b| tok.token_to_id(&format!("<0x{b:02X}>")).unwrap())
                .collect()
        })
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..400 {
        let len = rng.below(24) as usize;
        let mut ids = Vec::with_capacity(len);
        while ids.len() < len {
            match rng.below(10) {
                // Any id at all, specials, bytes and unknown ids included.
                0..=3 => ids.push(rng.below(vocab + 3) as u32),
                // A stray byte token (often an invalid sequence).
                4 => ids.push(3 + rng.below(256) as u32),
                5 | 6 => ids.extend(&utf8_runs[rng.below(utf8_runs.len() as u64) as usize]),
                7 => ids.push(2),
                // Ordinary pieces.
                _ => ids.push(259 + rng.below(vocab - 259) as u32),
            }
        }
        check_stream(&tok, &ids, true);
        check_stream(&tok, &ids, false);
    }
}
