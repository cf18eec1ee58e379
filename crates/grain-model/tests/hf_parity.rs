//! Parity with HF transformers on the committed tiny LLaVA-NeXT fixtures (`tests/parity/README.md`).
//!
//! Every case of `tests/fixtures/hf-tiny-ref/cases.json` goes through the same flow as
//! `grain inspect` (chat template → tokenizer → decode → AnyRes → tower → projector → merge →
//! paged prefill → greedy decode) and is compared stage by stage with what transformers produced:
//! crops (u8, exact), pixel values, projector features, the packed image tokens, prompt ids, image
//! token counts, last-position logits and 8 greedy ids. The expected values come only from the
//! fixtures; nothing here is computed by the code under test on both sides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use grain_model::image::{anyres, decode_rgb, DecodeLimits, Rgb8};
use grain_model::{DType, Device, LlavaModel, SeqChunk, Tensor};
use grain_tokenizer::{ChatMessage, ChatTemplate, ContentPart, Tokenizer, IMAGE_PLACEHOLDER};
use serde::Deserialize;

const PIXEL_TOL: f32 = 1e-5;
const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Cases {
    question: String,
    new_tokens: usize,
    image_token_id: u32,
    image_mean: [f32; 3],
    image_std: [f32; 3],
    feature_cases: Vec<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    image: String,
    width: u32,
    height: u32,
    prompt: String,
    prompt_ids: Vec<u32>,
    num_image_tokens: usize,
    input_len: usize,
    n_crops: usize,
    crops_png: String,
    greedy_ids: Vec<u32>,
    last_logits_argmax: u32,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load_cases() -> Cases {
    let path = fixtures().join("hf-tiny-ref/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn reference_tensors(case: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(format!("hf-tiny-ref/case_{case}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference crop strip (336 wide, one 336-row block per crop), decoded independently of
/// `grain_model::image`.
fn reference_crops(rel: &str, tile: usize) -> Vec<Rgb8> {
    let path = fixtures().join(rel);
    let strip = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = (strip.width() as usize, strip.height() as usize);
    assert_eq!(w, tile, "{rel}: strip width");
    assert_eq!(h % tile, 0, "{rel}: strip height");
    let raw = strip.into_raw();
    raw.chunks(tile * tile * 3)
        .map(|c| Rgb8 {
            width: tile,
            height: tile,
            data: c.to_vec(),
        })
        .collect()
}

/// Pixel values from the reference crops with transformers' arithmetic, as the README specifies:
/// `f32(f32(u8 as f64 * (1/255)) - mean32[c]) / std32[c]`, channels first.
fn reference_pixels(crops: &[Rgb8], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let mut out = Vec::new();
    for c in crops {
        for ch in 0..3 {
            for px in c.data.chunks(3) {
                let v = (f64::from(px[ch]) * (1.0 / 255.0)) as f32;
                out.push((v - mean[ch]) / std[ch]);
            }
        }
    }
    out
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// What `grain inspect` computes for one image + question, kept in memory.
struct Inspected {
    rendered: String,
    prompt_ids: Vec<u32>,
    crops: Vec<Rgb8>,
    pixels: Vec<f32>,
    features: Tensor,
    packed: Tensor,
    input_len: usize,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
}

/// A checkpoint with its tokenizer and chat template, loaded the way `grain inspect` loads them.
struct Pipeline {
    model: LlavaModel,
    tok: Tokenizer,
    template: ChatTemplate,
}

impl Pipeline {
    fn load(dir: &Path) -> Self {
        let model = LlavaModel::load(dir, DType::F32, &Device::Cpu).unwrap();
        let tok = Tokenizer::from_dir(dir).unwrap();
        let template = ChatTemplate::from_dir(dir, &tok)
            .unwrap()
            .expect("the fixture ships a chat template");
        Self {
            model,
            tok,
            template,
        }
    }

    /// The in-process equivalent of `grain inspect --granularity 576 --max-new-tokens n`.
    fn inspect(&self, image: &Path, question: &str, granularity: u32, n: usize) -> Inspected {
        let messages = [ChatMessage {
            role: "user".into(),
            content: vec![ContentPart::Image, ContentPart::Text(question.into())],
        }];
        let rendered = self.template.render(&messages, true).unwrap();
        let prompt_ids = self
            .tok
            .encode_prompt(&rendered, IMAGE_PLACEHOLDER)
            .unwrap();
        let image_token = self
            .model
            .config()
            .image_token_id
            .expect("HF layout has an image token id");

        let bytes = std::fs::read(image).unwrap();
        let img = decode_rgb(&bytes, DecodeLimits::default(), self.model.config().alpha).unwrap();
        let (w, h) = (img.width as u32, img.height as u32);
        let crops = anyres::crops(&img, self.model.config()).unwrap();
        let (n_crops, pixels) = self.model.preprocess(&img).unwrap();
        assert_eq!(n_crops, crops.len());
        let features = self
            .model
            .encode_crops(&self.model.pixels_tensor(n_crops, &pixels).unwrap())
            .unwrap();
        let packed = self
            .model
            .image_tokens(&features, granularity, w, h)
            .unwrap();
        let embeds = self
            .model
            .prompt_embeddings(&prompt_ids, image_token, std::slice::from_ref(&packed))
            .unwrap();
        let input_len = embeds.dim(0).unwrap();
        let (last_logits, greedy) = self.generate(&embeds, n);
        Inspected {
            rendered,
            prompt_ids,
            crops,
            pixels,
            features,
            packed,
            input_len,
            last_logits,
            greedy,
        }
    }

    /// Prefill through the paged cache in one chunk, then greedy-decode one token at a time.
    fn generate(&self, embeds: &Tensor, n: usize) -> (Vec<f32>, Vec<u32>) {
        let block = 16;
        let len = embeds.dim(0).unwrap();
        let blocks = (len + n).div_ceil(block);
        let cache = self.model.new_kv_cache(blocks, block).unwrap();
        let table: Vec<u32> = (0..blocks as u32).collect();
        let chunk = SeqChunk {
            start: 0,
            len,
            block_table: &table,
            want_logits: true,
        };
        let last = flat(&self.model.forward(embeds, &[chunk], &cache).unwrap());
        let mut next = argmax(&last);
        let mut out = vec![next];
        for step in 0..n - 1 {
            let e = self.model.lm().embed(&[next]).unwrap();
            let chunk = SeqChunk {
                start: len + step,
                len: 1,
                block_table: &table,
                want_logits: true,
            };
            next = argmax(&flat(&self.model.forward(&e, &[chunk], &cache).unwrap()));
            out.push(next);
        }
        (last, out)
    }
}

/// Compare one case end to end; returns the failures (empty when it matches) and prints the
/// measured differences.
fn check_case(p: &Pipeline, cases: &Cases, case: &Case) -> Vec<String> {
    let mut errs = Vec::new();
    let refs = reference_tensors(&case.name);
    let image = fixtures().join(&case.image);
    let got = p.inspect(&image, &cases.question, 576, cases.new_tokens);

    if got.rendered != case.prompt {
        errs.push(format!(
            "rendered prompt differs:\n ours {:?}\n ref  {:?}",
            got.rendered, case.prompt
        ));
    }
    if got.prompt_ids != case.prompt_ids {
        errs.push(format!(
            "prompt ids differ:\n ours {:?}\n ref  {:?}",
            got.prompt_ids, case.prompt_ids
        ));
    }
    let visual = p.model.visual_tokens(case.width, case.height, 576).unwrap();
    if visual != case.num_image_tokens || got.packed.dim(0).unwrap() != case.num_image_tokens {
        errs.push(format!(
            "image tokens: counted {visual}, merged {}, reference {}",
            got.packed.dim(0).unwrap(),
            case.num_image_tokens
        ));
    }
    if got.input_len != case.input_len {
        errs.push(format!(
            "input length {} vs {}",
            got.input_len, case.input_len
        ));
    }

    let tile = p.model.config().vision.image_size;
    let ref_crops = reference_crops(&case.crops_png, tile);
    let mut crop_diff = 0u8;
    let mut crop_pixels_off = 0usize;
    if ref_crops.len() != case.n_crops || got.crops.len() != case.n_crops {
        errs.push(format!(
            "crops: ours {}, strip {}, cases.json {}",
            got.crops.len(),
            ref_crops.len(),
            case.n_crops
        ));
    } else {
        // Per crop: values that differ, and the first differing (x, y), to localise a resampler bug.
        let mut where_off = Vec::new();
        for (k, (a, b)) in got.crops.iter().zip(&ref_crops).enumerate() {
            let mut first = None;
            let mut off = 0usize;
            for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
                crop_diff = crop_diff.max(x.abs_diff(*y));
                if x != y {
                    off += 1;
                    first.get_or_insert((i / 3 % tile, i / 3 / tile));
                }
            }
            if let Some(xy) = first {
                where_off.push(format!("crop {k}: {off} values from (x, y) = {xy:?}"));
            }
            crop_pixels_off += off;
        }
        if crop_diff != 0 {
            errs.push(format!(
                "crops differ from the reference: max |Δu8| {crop_diff} in {crop_pixels_off} values ({})",
                where_off.join("; ")
            ));
        }
    }
    let ref_px = reference_pixels(&ref_crops, cases.image_mean, cases.image_std);
    let px_diff = if ref_px.len() == got.pixels.len() {
        max_abs(&got.pixels, &ref_px)
    } else {
        f32::INFINITY
    };
    if px_diff > PIXEL_TOL {
        errs.push(format!("pixel values: max |Δ| {px_diff}"));
    }

    let mut feat_diff = None;
    if let Some(want) = refs.get("image_features") {
        let d = max_abs(&flat(&got.features), &flat(want));
        if d > FEATURE_TOL {
            errs.push(format!("image_features: max |Δ| {d}"));
        }
        let want = &refs["packed_features"];
        let dp = max_abs(&flat(&got.packed), &flat(want));
        if dp > FEATURE_TOL {
            errs.push(format!("packed_features: max |Δ| {dp}"));
        }
        feat_diff = Some((d, dp));
    }

    let want_logits = flat(&refs["last_logits"]);
    let logit_diff = max_abs(&got.last_logits, &want_logits);
    if logit_diff > LOGIT_TOL {
        errs.push(format!("last_logits: max |Δ| {logit_diff}"));
    }
    if argmax(&got.last_logits) != case.last_logits_argmax {
        errs.push(format!(
            "last logits argmax {} vs {}",
            argmax(&got.last_logits),
            case.last_logits_argmax
        ));
    }
    if got.greedy != case.greedy_ids {
        errs.push(format!(
            "greedy ids differ:\n ours {:?}\n ref  {:?}",
            got.greedy, case.greedy_ids
        ));
    }
    let input_ids = refs["input_ids"].dims2().unwrap();
    if input_ids != (1, case.input_len) {
        errs.push(format!("reference input_ids shape {input_ids:?}"));
    }
    eprintln!(
        "{:<14} crops max|Δu8| {crop_diff}  pixels {px_diff:.2e}  features/packed {}  last_logits {logit_diff:.2e}",
        case.name,
        feat_diff.map_or("-".to_string(), |(a, b)| format!("{a:.2e}/{b:.2e}")),
    );
    errs.into_iter()
        .map(|e| format!("{}: {e}", case.name))
        .collect()
}

fn assert_cases(dir: &Path, names: &[&str]) {
    let cases = load_cases();
    let p = Pipeline::load(dir);
    assert_eq!(p.model.config().image_token_id, Some(cases.image_token_id));
    let mut errs = Vec::new();
    let mut ran = 0;
    for case in &cases.cases {
        if !names.contains(&case.name.as_str()) {
            continue;
        }
        ran += 1;
        errs.extend(check_case(&p, &cases, case));
    }
    assert_eq!(ran, names.len(), "unknown case names in {names:?}");
    assert!(
        errs.is_empty(),
        "{} mismatches:\n{}",
        errs.len(),
        errs.join("\n")
    );
}

/// The ten images, split in two tests so the two halves run in parallel.
#[test]
fn hf_tiny_matches_transformers_first_half() {
    assert_cases(
        &fixtures().join("hf-tiny"),
        &[
            "square672",
            "wide1000x500",
            "tall400x900",
            "tiny20x30",
            "odd337x211",
        ],
    );
}

#[test]
fn hf_tiny_matches_transformers_second_half() {
    assert_cases(
        &fixtures().join("hf-tiny"),
        &[
            "strip1500x120",
            "pole90x1000",
            "base336",
            "rgba500x400",
            "gray300x600",
        ],
    );
}

#[test]
fn every_reference_case_is_covered() {
    let cases = load_cases();
    let names: Vec<&str> = cases.cases.iter().map(|c| c.name.as_str()).collect();
    let covered = [
        "square672",
        "wide1000x500",
        "tall400x900",
        "tiny20x30",
        "odd337x211",
        "strip1500x120",
        "pole90x1000",
        "base336",
        "rgba500x400",
        "gray300x600",
    ];
    assert_eq!(names, covered);
    for f in &cases.feature_cases {
        assert!(reference_tensors(f).contains_key("packed_features"), "{f}");
    }
}

/// The sharded copy of the same weights gives the same answers (a case with reference features).
#[test]
fn hf_tiny_sharded_matches_transformers() {
    assert_cases(&fixtures().join("hf-tiny-sharded"), &["wide1000x500"]);
}

/// The tower alone, fed the reference pixel values (not ours), matches transformers' projector
/// output: separates a resampling mismatch from a network mismatch.
#[test]
fn features_from_reference_pixels_match() {
    let cases = load_cases();
    let p = Pipeline::load(&fixtures().join("hf-tiny"));
    let tile = p.model.config().vision.image_size;
    for name in &cases.feature_cases {
        let case = cases.cases.iter().find(|c| &c.name == name).unwrap();
        let crops = reference_crops(&case.crops_png, tile);
        let px = reference_pixels(&crops, cases.image_mean, cases.image_std);
        let features = p
            .model
            .encode_crops(&p.model.pixels_tensor(crops.len(), &px).unwrap())
            .unwrap();
        let refs = reference_tensors(name);
        let d = max_abs(&flat(&features), &flat(&refs["image_features"]));
        let packed = p
            .model
            .image_tokens(&features, 576, case.width, case.height)
            .unwrap();
        let dp = max_abs(&flat(&packed), &flat(&refs["packed_features"]));
        eprintln!("{name}: features {d:.2e}, packed {dp:.2e}");
        assert!(
            d <= FEATURE_TOL && dp <= FEATURE_TOL,
            "{name}: features {d}, packed {dp}"
        );
    }
}
