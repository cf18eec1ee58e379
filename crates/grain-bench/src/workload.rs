//! Workloads: the sequence of chat requests a run sends.
//!
//! Request `i` of a workload is a pure function of (seed, i): every run point, every granularity
//! mode and every peer server gets the same prompts, image sizes and output lengths. Only the image
//! pixels change between run points (the `salt`), so that a server's encoder cache never serves a
//! later run point from an earlier one; with `unique_prompts` the text gets a per-point tag too, so
//! that a prefix cache shares only what real traffic would (the chat template, system prompts).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use crate::error::SpecError;
use crate::image::{salt_data_url, synthetic_data_url, SizeSpread};
use crate::mode::{Choice, GranularityField};

/// An inclusive range of lengths, parsed from `N` or `MIN-MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LenRange {
    pub min: u32,
    pub max: u32,
}

impl LenRange {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::Range(s.to_string());
        let num = |x: &str| x.trim().parse::<u32>().map_err(|_| bad());
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if min > max {
            return Err(bad());
        }
        Ok(Self { min, max })
    }

    fn draw(&self, rng: &mut impl Rng) -> u32 {
        rng.random_range(self.min..=self.max)
    }
}

/// Where requests come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A text prompt of random words and `images` synthetic images per request.
    Synthetic {
        sizes: SizeSpread,
        images: u32,
        prompt_words: LenRange,
    },
    /// Request bodies read from a JSONL file, replayed in order (cycling if the run needs more).
    File(Vec<Map<String, Value>>),
}

/// Per-run settings of every body.
#[derive(Debug, Clone)]
pub struct BodyOptions {
    pub model: String,
    pub stream: bool,
    pub temperature: f64,
    /// Send vLLM-style `ignore_eos` and `min_tokens` so every request generates exactly its
    /// `max_tokens` (only for servers that accept these fields).
    pub ignore_eos: bool,
    /// Salt data-URL images from files too (synthetic images are always unique per salt).
    pub unique_images: bool,
    /// Start the first user text with a tag unique to the run point (`[run N] `).
    pub unique_prompts: bool,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub source: Source,
    /// Output length for requests that do not set one (synthetic requests never do).
    pub max_tokens: LenRange,
    pub seed: u64,
}

/// Words for synthetic prompts: short, common, and mostly in the tiny test vocabulary.
const WORDS: [&str; 48] = [
    "what",
    "is",
    "the",
    "in",
    "this",
    "image",
    "picture",
    "describe",
    "color",
    "of",
    "a",
    "an",
    "many",
    "how",
    "there",
    "are",
    "on",
    "left",
    "right",
    "top",
    "bottom",
    "side",
    "object",
    "shape",
    "large",
    "small",
    "red",
    "blue",
    "green",
    "near",
    "behind",
    "front",
    "people",
    "table",
    "sign",
    "text",
    "say",
    "does",
    "where",
    "which",
    "count",
    "visible",
    "background",
    "center",
    "detail",
    "scene",
    "kind",
    "and",
];

/// Independent RNG streams of one request, so that adding a draw to one never shifts another.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Stream {
    Content = 0,
    Choice = 1,
}

fn rng_for(seed: u64, index: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index.wrapping_mul(2).wrapping_add(stream as u64));
    rng
}

/// Mixes seed, request, image and salt into one image seed (SplitMix64 finaliser).
fn image_seed(seed: u64, index: u64, image: u32, salt: u64) -> u64 {
    let mut z = seed
        ^ index.rotate_left(17)
        ^ u64::from(image).rotate_left(41)
        ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Workload {
    /// The RNG that a granularity mode draws request `index`'s choice from.
    pub fn choice_rng(&self, index: u64) -> ChaCha8Rng {
        rng_for(self.seed, index, Stream::Choice)
    }

    /// The request object for request `index` (no model/stream fields): what `--dump-workload` writes.
    pub fn request(
        &self,
        index: u64,
        salt: u64,
        opts: &BodyOptions,
    ) -> Result<Map<String, Value>, SpecError> {
        let mut rng = rng_for(self.seed, index, Stream::Content);
        match &self.source {
            Source::Synthetic {
                sizes,
                images,
                prompt_words,
            } => {
                let n = prompt_words.draw(&mut rng).max(1) as usize;
                let words: Vec<&str> = (0..n)
                    .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                    .collect();
                let mut parts =
                    vec![json!({"type": "text", "text": format!("{}?", words.join(" "))})];
                for k in 0..*images {
                    let size = sizes.draw(&mut rng);
                    let url = synthetic_data_url(size, image_seed(self.seed, index, k, salt))
                        .map_err(|e| {
                            SpecError::Invalid(format!("encoding a synthetic image: {e}"))
                        })?;
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                let max_tokens = self.max_tokens.draw(&mut rng);
                let mut m = Map::new();
                m.insert(
                    "messages".into(),
                    json!([{"role": "user", "content": parts}]),
                );
                m.insert("max_tokens".into(), json!(max_tokens));
                Ok(m)
            }
            Source::File(lines) => {
                if lines.is_empty() {
                    return Err(SpecError::Invalid("the dataset has no requests".into()));
                }
                let mut m = lines[(index % lines.len() as u64) as usize].clone();
                if !m.contains_key("max_tokens") && !m.contains_key("max_completion_tokens") {
                    m.insert("max_tokens".into(), json!(self.max_tokens.draw(&mut rng)));
                }
                if opts.unique_images {
                    for_each_image(&mut m, |img| {
                        if let Some(Value::String(url)) = img.get("url") {
                            let salted = salt_data_url(url, salt)?;
                            img.insert("url".into(), Value::String(salted));
                        }
                        Ok(())
                    })?;
                }
                Ok(m)
            }
        }
    }

    /// The full JSON body of request `index` at run point `salt` with the mode's `choice` applied.
    pub fn body(
        &self,
        index: u64,
        salt: u64,
        choice: Choice,
        opts: &BodyOptions,
    ) -> Result<Vec<u8>, SpecError> {
        let mut m = self.request(index, salt, opts)?;
        if opts.unique_prompts {
            // The point's number: warm-up bodies (whose salt is the point's plus 2^40, for their
            // own images) carry their point's tag too.
            tag_first_user_text(&mut m, &format!("[run {}] ", salt as u32));
        }
        m.insert("model".into(), json!(opts.model));
        m.insert("temperature".into(), json!(opts.temperature));
        m.insert("stream".into(), json!(opts.stream));
        if opts.stream {
            m.insert("stream_options".into(), json!({"include_usage": true}));
        } else {
            m.remove("stream_options");
        }
        if opts.ignore_eos {
            let max = m
                .get("max_completion_tokens")
                .or_else(|| m.get("max_tokens"))
                .cloned()
                .unwrap_or(Value::Null);
            m.insert("ignore_eos".into(), json!(true));
            m.insert("min_tokens".into(), max);
        }
        match choice.granularity {
            Some(GranularityField::Auto) => {
                m.insert("granularity".into(), json!("auto"));
            }
            Some(GranularityField::Fixed(g)) => {
                m.insert("granularity".into(), json!(g));
            }
            None => {}
        }
        if let Some(d) = choice.detail {
            for_each_image(&mut m, |img| {
                img.insert("detail".into(), json!(d.as_str()));
                Ok(())
            })?;
        }
        serde_json::to_vec(&Value::Object(m)).map_err(|e| SpecError::Invalid(e.to_string()))
    }
}

/// Puts `tag` in front of the first text of the first user message (a string content, or its first
/// text part); a request with no user text is left as it is.
fn tag_first_user_text(m: &mut Map<String, Value>, tag: &str) {
    let Some(Value::Array(messages)) = m.get_mut("messages") else {
        return;
    };
    let Some(user) = messages
        .iter_mut()
        .find(|msg| msg.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return;
    };
    let text = match user.get_mut("content") {
        Some(Value::String(text)) => Some(text),
        Some(Value::Array(parts)) => parts
            .iter_mut()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .and_then(|p| match p.get_mut("text") {
                Some(Value::String(text)) => Some(text),
                _ => None,
            }),
        _ => None,
    };
    if let Some(text) = text {
        text.insert_str(0, tag);
    }
}

/// Calls `f` on the `image_url` object of every image part of every message.
fn for_each_image(
    m: &mut Map<String, Value>,
    mut f: impl FnMut(&mut Map<String, Value>) -> Result<(), SpecError>,
) -> Result<(), SpecError> {
    let Some(Value::Array(messages)) = m.get_mut("messages") else {
        return Ok(());
    };
    for msg in messages {
        let Some(Value::Array(parts)) = msg.get_mut("content") else {
            continue;
        };
        for part in parts {
            if part.get("type").and_then(Value::as_str) != Some("image_url") {
                continue;
            }
            if let Some(Value::Object(img)) = part.get_mut("image_url") {
                f(img)?;
            }
        }
    }
    Ok(())
}

/// Read a JSONL file of chat request bodies (one JSON object per line with a `messages` array; blank
/// lines skipped). Fields the bench sets per run (`model`, `stream`, …) are overwritten later.
pub fn read_dataset(path: &Path) -> Result<Vec<Map<String, Value>>, SpecError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SpecError::Dataset {
        path: shown.clone(),
        line: 0,
        why: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |why: String| SpecError::Dataset {
            path: shown.clone(),
            line: i + 1,
            why,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(err("not a JSON object".into()));
        };
        if !matches!(obj.get("messages"), Some(Value::Array(a)) if !a.is_empty()) {
            return Err(err("no non-empty `messages` array".into()));
        }
        out.push(obj);
    }
    if out.is_empty() {
        return Err(SpecError::Dataset {
            path: shown,
            line: 0,
            why: "no requests in the file".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Size;
    use crate::mode::Detail;

    fn synthetic(images: u32) -> Workload {
        Workload {
            source: Source::Synthetic {
                sizes: SizeSpread::List(vec![
                    Size {
                        width: 20,
                        height: 10,
                    },
                    Size {
                        width: 12,
                        height: 30,
                    },
                ]),
                images,
                prompt_words: LenRange::parse("3-9").unwrap(),
            },
            max_tokens: LenRange::parse("5-7").unwrap(),
            seed: 42,
        }
    }

    fn opts() -> BodyOptions {
        BodyOptions {
            model: "m".into(),
            stream: true,
            temperature: 0.0,
            ignore_eos: false,
            unique_images: true,
            unique_prompts: false,
        }
    }

    fn parse(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(
            LenRange::parse("64").unwrap(),
            LenRange { min: 64, max: 64 }
        );
        assert_eq!(
            LenRange::parse("8-32").unwrap(),
            LenRange { min: 8, max: 32 }
        );
        for bad in ["", "-3", "9-2", "x", "1-2-3"] {
            assert!(LenRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_depend_on_index_not_on_salt_except_for_pixels() {
        let w = synthetic(2);
        let a = w.request(3, 0, &opts()).unwrap();
        let b = w.request(3, 1, &opts()).unwrap();
        assert_eq!(a["max_tokens"], b["max_tokens"]);
        assert_eq!(
            a["messages"][0]["content"][0], b["messages"][0]["content"][0],
            "same prompt text"
        );
        assert_ne!(
            a["messages"][0]["content"][1], b["messages"][0]["content"][1],
            "different pixels"
        );
        assert_eq!(a, w.request(3, 0, &opts()).unwrap(), "deterministic");
        let parts = a["messages"][0]["content"].as_array().unwrap();
        assert_eq!(parts.len(), 3, "text + 2 images");
        let mt = a["max_tokens"].as_u64().unwrap();
        assert!((5..=7).contains(&mt));
        // Over many requests every length in the range appears.
        let lens: std::collections::BTreeSet<u64> = (0..60)
            .map(|i| {
                w.request(i, 0, &opts()).unwrap()["max_tokens"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(lens.into_iter().collect::<Vec<_>>(), vec![5, 6, 7]);
    }

    #[test]
    fn unique_prompts_tag_the_first_user_text_per_run_point() {
        let w = synthetic(1);
        let tagged = BodyOptions {
            unique_prompts: true,
            ..opts()
        };
        let text = |salt: u64, o: &BodyOptions| -> String {
            let b = parse(&w.body(5, salt, Choice::default(), o).unwrap());
            b["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let plain = text(2, &opts());
        assert_eq!(text(2, &tagged), format!("[run 2] {plain}"));
        assert_eq!(text(3, &tagged), format!("[run 3] {plain}"));
        assert_eq!(text(3 + (1 << 40), &tagged), format!("[run 3] {plain}"));
        // A dataset request with string content, after a system message.
        let mut m = Map::new();
        m.insert(
            "messages".into(),
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
        );
        tag_first_user_text(&mut m, "[run 0] ");
        assert_eq!(
            Value::Object(m)["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "[run 0] hi"}])
        );
    }

    #[test]
    fn bodies_carry_the_mode_and_stream_settings() {
        let w = synthetic(1);
        let fixed = parse(
            &w.body(
                0,
                0,
                Choice {
                    granularity: Some(GranularityField::Fixed(36)),
                    detail: None,
                },
                &opts(),
            )
            .unwrap(),
        );
        assert_eq!(fixed["granularity"], json!(36));
        assert_eq!(fixed["model"], json!("m"));
        assert_eq!(fixed["stream_options"], json!({"include_usage": true}));
        assert!(fixed.get("ignore_eos").is_none());
        let auto = parse(
            &w.body(
                0,
                0,
                Choice {
                    granularity: Some(GranularityField::Auto),
                    detail: None,
                },
                &opts(),
            )
            .unwrap(),
        );
        assert_eq!(auto["granularity"], json!("auto"));
        let low = parse(
            &w.body(
                0,
                0,
                Choice {
                    granularity: None,
                    detail: Some(Detail::Low),
                },
                &opts(),
            )
            .unwrap(),
        );
        assert!(low.get("granularity").is_none());
        assert_eq!(
            low["messages"][0]["content"][1]["image_url"]["detail"],
            json!("low")
        );
        let mut o = opts();
        o.stream = false;
        o.ignore_eos = true;
        let plain = parse(&w.body(0, 0, Choice::default(), &o).unwrap());
        assert!(plain.get("stream_options").is_none());
        assert_eq!(plain["min_tokens"], plain["max_tokens"]);
    }

    #[test]
    fn text_only_requests_have_no_image_parts() {
        let r = synthetic(0).request(0, 0, &opts()).unwrap();
        assert_eq!(r["messages"][0]["content"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn datasets_are_validated_line_by_line_and_replayed_with_salted_images() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let url = synthetic_data_url(
            Size {
                width: 4,
                height: 4,
            },
            1,
        )
        .unwrap();
        let line = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
        std::fs::write(
            &path,
            format!(
                "{line}\n\n{}\n",
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            ),
        )
        .unwrap();
        let lines = read_dataset(&path).unwrap();
        assert_eq!(lines.len(), 2);
        let w = Workload {
            source: Source::File(lines),
            max_tokens: LenRange::parse("9").unwrap(),
            seed: 0,
        };
        let first = w.request(0, 0, &opts()).unwrap();
        assert_eq!(
            first["max_tokens"],
            json!(9),
            "default output length filled in"
        );
        assert_eq!(
            first["messages"][0]["content"][0]["image_url"]["url"],
            json!(url),
            "salt 0 keeps the image"
        );
        let salted = w.request(2, 5, &opts()).unwrap();
        assert_ne!(
            salted["messages"][0]["content"][0]["image_url"]["url"],
            json!(url)
        );
        assert_eq!(
            w.request(1, 0, &opts()).unwrap()["max_tokens"],
            json!(3),
            "the file's length wins"
        );

        std::fs::write(&path, "{\"messages\": []}\n").unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(err.contains(":1:") && err.contains("messages"), "{err}");
        std::fs::write(&path, "\n[1]\n").unwrap();
        assert!(read_dataset(&path).unwrap_err().to_string().contains(":2:"));
    }
}
