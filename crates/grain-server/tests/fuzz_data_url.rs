//! Property-based fuzzing of data-URL decoding and format sniffing (`grain_server::images`).
//!
//! Any string after `data:` decodes to bytes within the limit or to an `ImageError`, never a
//! panic; what a client encodes comes back byte for byte; payloads over the limit are refused
//! whatever their content; sniffing never panics.
//!
//! CI runs the default budget (256 cases per property). A longer run:
//! `PROPTEST_CASES=20000 cargo test --release -p grain-server --test fuzz_data_url`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use grain_server::images::{decode_data_url, sniff_format, ImageError};
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_data_urls_never_panic(
        meta in prop_oneof![
            Just("image/png;base64".to_owned()),
            Just(";base64".to_owned()),
            Just("image/png".to_owned()),
            "[ -~]{0,30}",
        ],
        payload in "[A-Za-z0-9+/=\\s%@\u{80}-\u{10ffff}]{0,200}",
        limit in 0usize..256,
    ) {
        match decode_data_url(&format!("{meta},{payload}"), limit) {
            Ok(bytes) => prop_assert!(bytes.len() <= limit),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn anything_without_a_comma_is_refused(s in "[^,]{0,100}") {
        prop_assert!(matches!(decode_data_url(&s, 1 << 20), Err(ImageError::InvalidDataUrl(_))));
    }

    #[test]
    fn encoded_bytes_round_trip(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        wrap in prop::option::of(4usize..80),
    ) {
        let mut encoded = STANDARD.encode(&bytes);
        if let Some(width) = wrap {
            // MIME-style line breaks, as some clients send.
            let chars: Vec<char> = encoded.chars().collect();
            encoded = chars.chunks(width).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("\r\n");
        }
        let decoded = decode_data_url(&format!("image/png;base64,{encoded}"), bytes.len())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decoded, bytes);
    }

    #[test]
    fn payloads_over_the_limit_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 8..600),
        short_by in 1usize..8,
    ) {
        let limit = bytes.len() - short_by;
        let url = format!("image/jpeg;base64,{}", STANDARD.encode(&bytes));
        prop_assert!(
            matches!(decode_data_url(&url, limit), Err(ImageError::TooLarge { .. })),
            "limit {} for {} bytes", limit, bytes.len()
        );
    }

    #[test]
    fn sniffing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        let _ = sniff_format(&bytes);
    }
}

#[test]
fn regressions() {
    // A payload of only padding or whitespace, and non-ASCII after the comma.
    for s in [
        "image/png;base64,====",
        "image/png;base64, \n\t",
        "image/png;base64,é",
        ";base64,",
    ] {
        match decode_data_url(s, 1024) {
            Ok(bytes) => assert!(bytes.is_empty(), "{s}"),
            Err(e) => assert!(matches!(e, ImageError::InvalidBase64), "{s}: {e}"),
        }
    }
    // Found by `encoded_bytes_round_trip`: 120 bytes, MIME-wrapped, with a limit of exactly 120
    // were refused because the size estimate counted the line breaks.
    let bytes = vec![0u8; 120];
    let wrapped = STANDARD
        .encode(&bytes)
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect::<Vec<_>>()
        .join("\r\n");
    assert_eq!(
        decode_data_url(&format!("image/png;base64,{wrapped}"), 120).expect("within the limit"),
        bytes
    );
    assert!(sniff_format(b"RIFF").is_err());
    assert!(sniff_format(b"\x89PNG").is_err());
}
