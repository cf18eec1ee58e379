//! Parity with the independent PyTorch reference for the AVG-LLaVA parts (`tests/parity/avg_README.md`):
//! token counts, multi-granularity pooling and the `spatial_unpad` merge, the granularity router
//! module on its own (D = 16), and image → router end to end on `tests/fixtures/avg-tiny`.
//! Every expected value is read from `tests/fixtures/avg-ref/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use grain_model::granularity::{self, tile_map_shape, unpad_window};
use grain_model::image::{anyres, decode_rgb, DecodeLimits};
use grain_model::router::Router;
use grain_model::weights::Weights;
use grain_model::{DType, Device, LlavaConfig, LlavaModel, RouterInput, Tensor};
use grain_tokenizer::IMAGE_TOKEN_SENTINEL;
use serde::Deserialize;

const ROUTER_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read_json<T: serde::de::DeserializeOwned>(rel: &str) -> T {
    let path = fixtures().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_st(rel: &str) -> std::collections::HashMap<String, Tensor> {
    let path = fixtures().join(rel);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `__metadata__` map of a safetensors file (8-byte little-endian header length, then JSON).
fn st_metadata(rel: &str) -> BTreeMap<String, String> {
    let bytes = std::fs::read(fixtures().join(rel)).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_value(header["__metadata__"].clone()).unwrap()
}

fn csv(s: &str) -> Vec<usize> {
    s.split(',').map(|x| x.parse().unwrap()).collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn avg_tiny_dir() -> PathBuf {
    fixtures().join("avg-tiny")
}

fn avg_config() -> LlavaConfig {
    LlavaConfig::from_dir(&avg_tiny_dir()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Token counts

#[derive(Deserialize)]
struct TokenCounts {
    pinpoints: Vec<[u32; 2]>,
    granularities: Vec<u32>,
    images: Vec<CountCase>,
}

#[derive(Deserialize)]
struct CountCase {
    size: [u32; 2],
    best_resolution: [u32; 2],
    grid: [usize; 2],
    totals: BTreeMap<String, usize>,
}

#[test]
fn token_counts_match_reference() {
    let want: TokenCounts = read_json("avg-ref/token_counts.json");
    let config = avg_config();
    // The reference reads pinpoints as [width, height]; the config stores (height, width).
    let swapped: Vec<[u32; 2]> = config.grid_pinpoints.iter().map(|&(h, w)| [w, h]).collect();
    assert_eq!(swapped, want.pinpoints);
    assert_eq!(config.granularities, want.granularities);
    assert!(want.images.len() >= 90, "{} sizes", want.images.len());
    let mut errs = Vec::new();
    for case in &want.images {
        let [w, h] = case.size;
        let (bh, bw) = anyres::select_best_resolution(w, h, &config.grid_pinpoints);
        if [bw, bh] != case.best_resolution {
            errs.push(format!(
                "{w}x{h}: best resolution {bw}x{bh}, want {:?}",
                case.best_resolution
            ));
        }
        let (gh, gw) = anyres::grid_shape(w, h, &config);
        if [gw, gh] != case.grid {
            errs.push(format!("{w}x{h}: grid {gw}x{gh}, want {:?}", case.grid));
        }
        for &g in &want.granularities {
            let got = granularity::visual_tokens(w, h, g, &config).unwrap();
            let expected = case.totals[&g.to_string()];
            if got != expected {
                errs.push(format!("{w}x{h} @ {g}: {got} tokens, want {expected}"));
            }
        }
    }
    assert!(
        errs.is_empty(),
        "{} mismatches:\n{}",
        errs.len(),
        errs.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Pooling and merge

#[derive(Deserialize)]
struct MergeCases {
    cases: Vec<MergeCase>,
}

#[derive(Deserialize)]
struct MergeCase {
    name: String,
    size: [u32; 2],
    n_crops: usize,
    granularities: BTreeMap<String, MergeGran>,
}

#[derive(Deserialize)]
struct MergeGran {
    total: usize,
    tile_hw: [usize; 2],
    stitched_hw: [usize; 2],
    kept_rows: [usize; 2],
    kept_cols: [usize; 2],
}

/// The fixture values are exact in f16 (small integers and their window means), so pooling and
/// merging must reproduce them with zero tolerance.
#[test]
fn pool_and_merge_match_reference_exactly() {
    let meta: MergeCases = read_json("avg-ref/merge_cases.json");
    let t = load_st("avg-ref/merge_cases.safetensors");
    let config = avg_config();
    assert_eq!(meta.cases.len(), 3);
    for case in &meta.cases {
        let [w, h] = case.size;
        let f32_of = |k: &str| {
            t[&format!("{}.{k}", case.name)]
                .to_dtype(DType::F32)
                .unwrap()
        };
        let features = f32_of("features");
        let newline = f32_of("newline");
        assert_eq!(features.dim(0).unwrap(), case.n_crops, "{}", case.name);
        for (g_str, want) in &case.granularities {
            let g: u32 = g_str.parse().unwrap();
            let label = format!("{} ({w}x{h}) @ {g}", case.name);
            assert_eq!(
                tile_map_shape(g as usize),
                (want.tile_hw[0], want.tile_hw[1]),
                "{label}: tile map"
            );
            let (gh, gw) = anyres::grid_shape(w, h, &config);
            let stitched = (gh * want.tile_hw[0], gw * want.tile_hw[1]);
            assert_eq!(
                stitched,
                (want.stitched_hw[0], want.stitched_hw[1]),
                "{label}: stitched map"
            );
            let (r0, rows, c0, cols) =
                unpad_window(stitched.0, stitched.1, w, h, config.unpad_rounding);
            assert_eq!([r0, r0 + rows], want.kept_rows, "{label}: kept rows");
            assert_eq!([c0, c0 + cols], want.kept_cols, "{label}: kept cols");

            let pooled = granularity::pool(&features, g).unwrap();
            let pooled0 = flat(&pooled.get(0).unwrap());
            assert_eq!(
                pooled0,
                flat(&f32_of(&format!("pooled0.{g}"))),
                "{label}: pooled crop 0"
            );
            let merged = granularity::merge(&pooled, w, h, &newline, &config).unwrap();
            assert_eq!(merged.dim(0).unwrap(), want.total, "{label}: merged length");
            assert_eq!(
                granularity::visual_tokens(w, h, g, &config).unwrap(),
                want.total,
                "{label}: count"
            );
            let want_merged = flat(&f32_of(&format!("merged.{g}")));
            let got = flat(&merged);
            if got != want_merged {
                let first = got
                    .iter()
                    .zip(&want_merged)
                    .position(|(a, b)| a != b)
                    .unwrap();
                let d = newline.dim(0).unwrap();
                panic!(
                    "{label}: merged tensors differ first at token {} (max |Δ| {})",
                    first / d,
                    max_abs(&got, &want_merged)
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Router module (D = 16, random weights)

/// A router built from `router_module.safetensors` through the normal weight loader.
fn fixture_router(meta: &BTreeMap<String, String>) -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("avg-ref/router_module.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let grans: Vec<u32> = csv(&meta["granularities"])
        .into_iter()
        .map(|g| g as u32)
        .collect();
    let config = LlavaConfig::from_json(&serde_json::json!({
        "hidden_size": 16,
        "num_attention_heads": 8,
        "intermediate_size": 16,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "router_select": true,
        "filtered_text_num": meta["filtered_text_num"].parse::<u64>().unwrap(),
        "vis_token_granularity": grans,
    }))
    .unwrap();
    let rc = config
        .router
        .clone()
        .expect("router_select makes a router config");
    assert_eq!(rc.merger_heads.to_string(), meta["merger_heads"]);
    let w = Weights::from_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let router = Router::load(&w, &config, &rc).unwrap();
    (dir, router)
}

/// Recover the order of the selected text rows by finding each in the prompt's embeddings (the
/// selection copies rows, so the match is exact). Zero padding rows are not matched.
fn order_of(selected: &Tensor, text: &Tensor) -> Vec<Option<usize>> {
    let text: Vec<Vec<f32>> = text.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    let sel: Vec<Vec<f32>> = selected.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    sel.iter()
        .map(|row| text.iter().position(|t| t == row))
        .collect()
}

#[test]
fn router_module_matches_reference() {
    let rel = "avg-ref/router_module.safetensors";
    let meta = st_metadata(rel);
    let t = load_st(rel);
    let (_dir, router) = fixture_router(&meta);
    let features = &t["image_features"];
    let grans = router.granularities().to_vec();

    for variant in ["", "pad10."] {
        let text = &t[&format!("{variant}text_embeds")];
        let n_text = text.dim(0).unwrap();
        // Text selection: the same rows in the same order, zero-padded to 32.
        let selected = router.select_text(&features.get(0).unwrap(), text).unwrap();
        let d_sel = max_abs(
            &flat(&selected),
            &flat(&t[&format!("{variant}text_selected")]),
        );
        let order: Vec<usize> = order_of(&selected, text)
            .into_iter()
            .take(n_text.min(32))
            .map(Option::unwrap)
            .collect();
        assert_eq!(
            order,
            csv(&meta[&format!("{variant}text_order")]),
            "{variant}text order"
        );
        assert_eq!(d_sel, 0.0, "{variant}text_selected");

        let input = RouterInput {
            features: features.clone(),
            text_embeds: text.clone(),
        };
        let router_input = router.build_input(&input).unwrap();
        let merged = router.merger(&router_input).unwrap();
        let out = router.route(&[input]).unwrap().remove(0);
        let (d_in, d_merge) = if variant.is_empty() {
            let d_in = max_abs(&flat(&router_input), &flat(&t["router_input"]));
            (d_in, max_abs(&flat(&merged), &flat(&t["merger_out"])))
        } else {
            // Only the 32 text rows of the variant's merger output are stored; the others equal
            // the main run's (the merger mixes crops only, never positions).
            let seq = router_input.dim(1).unwrap();
            let text_rows = merged.narrow(1, seq - 32, 32).unwrap();
            let d_merge = max_abs(&flat(&text_rows), &flat(&t["pad10.merger_out_text"]));
            let head = merged.narrow(1, 0, seq - 32).unwrap();
            let main_head = t["merger_out"].narrow(1, 0, seq - 32).unwrap();
            (0.0, d_merge.max(max_abs(&flat(&head), &flat(&main_head))))
        };
        let d_logits = max_abs(&out.logits, &flat(&t[&format!("{variant}router_logits")]));
        eprintln!(
            "router {variant:<7} input {d_in:.2e}  merger {d_merge:.2e}  logits {d_logits:.2e}"
        );
        assert!(d_in <= 1e-5, "{variant}router_input: {d_in}");
        assert!(d_merge <= ROUTER_TOL, "{variant}merger_out: {d_merge}");
        assert!(d_logits <= ROUTER_TOL, "{variant}router_logits: {d_logits}");
        let want_index: usize = meta[&format!("{variant}granularity_index")]
            .parse()
            .unwrap();
        assert_eq!(
            out.choice, want_index,
            "{variant}decision (granularities {grans:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// End to end on tests/fixtures/avg-tiny

#[derive(Deserialize)]
struct E2e {
    granularities: Vec<u32>,
    filtered_text_num: usize,
    cases: Vec<E2eCase>,
}

#[derive(Deserialize)]
struct E2eCase {
    name: String,
    image: String,
    prompt_ids: Vec<i64>,
    image_token_id: i64,
    text_ids: Vec<u32>,
    image_size: [u32; 2],
    grid: [usize; 2],
    n_crops: usize,
    router_logits: Vec<f32>,
    granularity_index: usize,
    granularity: u32,
    token_counts: BTreeMap<String, usize>,
    visual_tokens: usize,
    text_order: Vec<usize>,
    text_score_min_gap: Option<f32>,
    feature_mean_per_crop: Vec<f32>,
    feature_norm_per_crop: Vec<f32>,
}

/// Score gaps below this may legitimately reorder text rows between two f32 implementations.
const TINY_GAP: f32 = 1e-5;

#[test]
fn router_end_to_end_matches_reference() {
    let e2e: E2e = read_json("avg-ref/e2e/e2e.json");
    let model = LlavaModel::load(&avg_tiny_dir(), DType::F32, &Device::Cpu).unwrap();
    let config = model.config();
    assert_eq!(config.granularities, e2e.granularities);
    assert_eq!(
        config.router.as_ref().unwrap().text_queries,
        e2e.filtered_text_num
    );
    assert_eq!(e2e.cases.len(), 12);
    let mut errs = Vec::new();
    let mut features_cache: BTreeMap<String, Tensor> = BTreeMap::new();
    for case in &e2e.cases {
        let label = &case.name;
        let [w, h] = case.image_size;
        let features = features_cache.entry(case.image.clone()).or_insert_with(|| {
            let bytes = std::fs::read(fixtures().join("avg-ref/e2e").join(&case.image)).unwrap();
            let img = decode_rgb(&bytes, DecodeLimits::default(), config.alpha).unwrap();
            assert_eq!(
                (img.width as u32, img.height as u32),
                (w, h),
                "{label}: image size"
            );
            let (n, px) = model.preprocess(&img).unwrap();
            model
                .encode_crops(&model.pixels_tensor(n, &px).unwrap())
                .unwrap()
        });
        let (gh, gw) = anyres::grid_shape(w, h, config);
        if [gw, gh] != case.grid || features.dim(0).unwrap() != case.n_crops {
            errs.push(format!(
                "{label}: grid {gw}x{gh} / {} crops",
                features.dim(0).unwrap()
            ));
            continue;
        }
        // Tower + projector fingerprints, to localise a mismatch before the router.
        let d = features.dim(2).unwrap();
        let mut fp_err = 0f32;
        for k in 0..case.n_crops {
            let crop = flat(&features.get(k).unwrap());
            let mean = crop.iter().sum::<f32>() / crop.len() as f32;
            let norm = crop.iter().map(|x| x * x).sum::<f32>().sqrt();
            fp_err = fp_err.max((mean - case.feature_mean_per_crop[k]).abs());
            fp_err = fp_err
                .max((norm - case.feature_norm_per_crop[k]).abs() / case.feature_norm_per_crop[k]);
        }
        if fp_err > 1e-4 {
            errs.push(format!("{label}: feature fingerprints off by {fp_err:.2e}"));
        }

        // Text embeddings from the recorded prompt ids, placeholder included, as inspect does.
        assert!(case.prompt_ids.contains(&case.image_token_id), "{label}");
        let ids: Vec<u32> = case
            .prompt_ids
            .iter()
            .map(|&i| {
                if i == case.image_token_id {
                    IMAGE_TOKEN_SENTINEL
                } else {
                    u32::try_from(i).unwrap()
                }
            })
            .collect();
        let text = model.text_embeddings(&ids, IMAGE_TOKEN_SENTINEL).unwrap();
        assert_eq!(
            text.dim(0).unwrap(),
            case.text_ids.len(),
            "{label}: text rows"
        );
        let input = RouterInput {
            features: features.clone(),
            text_embeds: text.clone(),
        };

        // Text order first: compare rows, since repeated ids make indices ambiguous.
        let router_input = model
            .router_input(&input)
            .unwrap()
            .expect("avg-tiny has a router");
        let seq = router_input.dim(1).unwrap();
        let q = e2e.filtered_text_num;
        let selected = router_input.get(0).unwrap().narrow(0, seq - q, q).unwrap();
        let ours: Vec<Vec<f32>> = selected.to_vec2().unwrap();
        let rows: Vec<Vec<f32>> = text.to_vec2().unwrap();
        let order_ok = case
            .text_order
            .iter()
            .enumerate()
            .all(|(k, &i)| ours[k] == rows[i])
            && ours[case.text_order.len()..]
                .iter()
                .all(|r| r.iter().all(|&x| x == 0.0));
        if !order_ok {
            let gap = case.text_score_min_gap.unwrap_or(f32::INFINITY);
            errs.push(format!(
                "{label}: text order differs (reference min score gap {gap:.2e})"
            ));
            if gap >= TINY_GAP {
                continue;
            }
        }

        let out = model.route(&[input]).unwrap().remove(0);
        let dl = max_abs(&out.logits, &case.router_logits);
        if dl > ROUTER_TOL {
            errs.push(format!(
                "{label}: router logits max |Δ| {dl:.2e}: {:?} vs {:?}",
                out.logits, case.router_logits
            ));
        }
        if out.choice != case.granularity_index
            || config.granularities[out.choice] != case.granularity
        {
            errs.push(format!(
                "{label}: chose index {} vs {}",
                out.choice, case.granularity_index
            ));
        }
        for &g in &config.granularities {
            let got = model.visual_tokens(w, h, g).unwrap();
            if got != case.token_counts[&g.to_string()] {
                errs.push(format!(
                    "{label}: {got} tokens at {g}, want {}",
                    case.token_counts[&g.to_string()]
                ));
            }
        }
        let merged = model
            .image_tokens(features, case.granularity, w, h)
            .unwrap();
        if merged.dims2().unwrap() != (case.visual_tokens, d) {
            errs.push(format!(
                "{label}: merged {:?}, want {} tokens",
                merged.dims(),
                case.visual_tokens
            ));
        }
        eprintln!(
            "{label:<28} fingerprints {fp_err:.1e}  router logits {dl:.2e}  choice {} ({})",
            out.choice, case.granularity
        );
    }
    assert!(
        errs.is_empty(),
        "{} mismatches:\n{}",
        errs.len(),
        errs.join("\n")
    );
}
