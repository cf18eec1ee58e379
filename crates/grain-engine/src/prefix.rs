//! Content keys for the prefix cache (see `blocks.rs` and `State::add_with_prefix`).
//!
//! A prompt is a sequence of positions, each a text token or one visual token of an image. The
//! K/V of a position depends on the contents of every position up to it, so block `i`'s key is a
//! hash of block `i`'s contents chained with block `i - 1`'s key: equal keys mean equal prefixes.
//! A visual position is identified by its image's content hash, the granularity the image was
//! given and its index among the image's visual tokens; these determine its embedding.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::runner::{ImageInput, PreparedPrompt};

/// What one prompt position holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content<'a> {
    Token(u32),
    Visual {
        image: &'a [u8; 32],
        granularity: u32,
        index: u32,
    },
}

/// Keys the full blocks of prompts. Randomly seeded per process (SipHash with a random key), so
/// that nobody can craft a prompt whose key collides with another user's.
#[derive(Debug, Clone)]
pub(crate) struct PrefixKeyer {
    hasher: RandomState,
    block_size: usize,
}

impl PrefixKeyer {
    pub fn new(block_size: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            block_size,
        }
    }

    /// One key per full block of a prepared prompt; none when the runner did not say where the
    /// visual positions are (or its account does not add up to the prompt length).
    pub fn prompt_keys(
        &self,
        prompt_ids: &[u32],
        images: &[ImageInput],
        prepared: &PreparedPrompt,
    ) -> Vec<u64> {
        let spans = &prepared.visual_spans;
        if spans.len() != images.len() || prepared.images.len() != images.len() {
            return Vec::new();
        }
        let mut content = Vec::with_capacity(prepared.prompt_len);
        let mut next = spans.iter().zip(images).zip(&prepared.images).peekable();
        for (at, &token) in prompt_ids.iter().enumerate() {
            match next.peek() {
                Some(&((&(span_at, len), image), usage)) if span_at == at => {
                    content.extend((0..len as u32).map(|index| Content::Visual {
                        image: &image.hash,
                        granularity: usage.granularity,
                        index,
                    }));
                    next.next();
                }
                _ => content.push(Content::Token(token)),
            }
        }
        if next.next().is_some() || content.len() != prepared.prompt_len {
            return Vec::new();
        }
        self.keys(&content)
    }

    fn keys(&self, content: &[Content<'_>]) -> Vec<u64> {
        let mut prev = 0u64;
        content
            .chunks_exact(self.block_size)
            .map(|block| {
                let mut h = self.hasher.build_hasher();
                h.write_u64(prev);
                for c in block {
                    match *c {
                        Content::Token(t) => {
                            h.write_u8(0);
                            h.write_u32(t);
                        }
                        Content::Visual {
                            image,
                            granularity,
                            index,
                        } => {
                            h.write_u8(1);
                            h.write(image);
                            h.write_u32(granularity);
                            h.write_u32(index);
                        }
                    }
                }
                prev = h.finish();
                prev
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::{Detail, GranularitySource, ImageUsage};

    fn text(ids: &[u32]) -> Vec<Content<'static>> {
        ids.iter().map(|&t| Content::Token(t)).collect()
    }

    #[test]
    fn keys_identify_whole_prefixes_block_by_block() {
        let k = PrefixKeyer::new(4);
        let a = k.keys(&text(&[1, 2, 3, 4, 5, 6, 7, 8, 9]));
        assert_eq!(a.len(), 2, "the partial last block has no key");
        assert_eq!(k.keys(&text(&[1, 2, 3, 4, 5, 6, 7, 8])), a);
        let b = k.keys(&text(&[1, 2, 3, 4, 5, 6, 7, 0]));
        assert_eq!(b[0], a[0]);
        assert_ne!(b[1], a[1]);
        // The same second block after a different first one is a different prefix.
        let c = k.keys(&text(&[0, 2, 3, 4, 5, 6, 7, 8]));
        assert_ne!(c[0], a[0]);
        assert_ne!(c[1], a[1]);
        assert!(k.keys(&text(&[1, 2, 3])).is_empty());
    }

    fn image(byte: u8) -> ImageInput {
        ImageInput {
            width: 10,
            height: 10,
            hash: [byte; 32],
            pixel_values: Arc::new(Vec::new()),
            n_crops: 1,
            detail: Detail::Auto,
        }
    }

    fn prepared(prompt_len: usize, spans: &[(usize, usize)], grans: &[u32]) -> PreparedPrompt {
        PreparedPrompt {
            prompt_len,
            images: grans
                .iter()
                .map(|&granularity| ImageUsage {
                    granularity,
                    source: GranularitySource::Request,
                })
                .collect(),
            visual_tokens_full: 0,
            visual_spans: spans.to_vec(),
        }
    }

    #[test]
    fn image_positions_are_keyed_by_image_granularity_and_index() {
        let k = PrefixKeyer::new(4);
        // Text 1, 2, the image (6 visual positions), text 3, 4: 10 positions, 2 full blocks.
        let ids = [1, 2, 99, 3, 4];
        let one = [image(7)];
        let keys = k.prompt_keys(&ids, &one, &prepared(10, &[(2, 6)], &[36]));
        assert_eq!(keys.len(), 2);
        assert_eq!(
            k.prompt_keys(&ids, &one, &prepared(10, &[(2, 6)], &[36])),
            keys
        );
        let other_image = k.prompt_keys(&ids, &[image(8)], &prepared(10, &[(2, 6)], &[36]));
        assert_ne!(other_image[0], keys[0], "the image differs inside block 0");
        let other_level = k.prompt_keys(&ids, &one, &prepared(10, &[(2, 6)], &[72]));
        assert_ne!(other_level[0], keys[0], "so does its granularity");
        let text_after = k.prompt_keys(&[1, 2, 99, 3, 5], &one, &prepared(10, &[(2, 6)], &[36]));
        assert_eq!(
            text_after, keys,
            "positions 8 and 9 are not in a full block"
        );
        // Accounts that do not add up give no keys rather than wrong ones.
        assert!(k
            .prompt_keys(&ids, &one, &prepared(11, &[(2, 6)], &[36]))
            .is_empty());
        assert!(k
            .prompt_keys(&ids, &one, &prepared(10, &[], &[36]))
            .is_empty());
        // Text-only prompts need no spans.
        let t = k.prompt_keys(&[1, 2, 3, 4], &[], &prepared(4, &[], &[]));
        assert_eq!(t, k.keys(&text(&[1, 2, 3, 4])));
    }
}
