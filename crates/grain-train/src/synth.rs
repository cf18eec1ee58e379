//! A synthetic fine-vs-coarse visual question set (`grain make-rglf-data`), the test bed for RGLF.
//!
//! Every image is 336×336 (so the CLIP patch grid is 24×24 cells of 14 px, aligned with the image)
//! with one *dominant* colour (jittered per cell), a few *confetti* cells of random colours, and one
//! *mark*: a single cell of a colour other than the dominant one, framed in black. Two kinds of
//! question:
//!
//! - `coarse`: "what colour is the picture?" → the dominant colour, visible at any granularity;
//! - `fine`: "what colour is the small shape?" → the mark's colour. Only at 576 tokens per crop does
//!   the mark keep a token of its own; pooled 4×4 (36 tokens) it is 1/16 of a token, mixed with
//!   jittered background and confetti.
//!
//! That `mark` layout proved too hard for a tiny LM (it must find one token among ~1176 by its
//! content); the default `solid` layout ([`solid`]) spreads the fine detail over many tokens while
//! keeping every 4×4 pooling window's colour mix independent of the answer.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::Example;
use crate::error::{io, Result, TrainError};

pub mod order;
pub mod solid;
pub use order::OrderScene;
pub use solid::SolidScene;

/// Image side in pixels and the patch cell size of the vision tower.
pub const SIDE: u32 = 336;
pub const CELL: u32 = 14;
const CELLS: u32 = SIDE / CELL;
/// Width of the mark's black frame in pixels.
const FRAME: u32 = 3;

/// The answer vocabulary: words of the tiny tokenizer and their RGB values.
pub const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [210, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [40, 70, 210]),
    ("yellow", [225, 210, 40]),
];
/// A palette colour with a brightness jitter `j` added to each channel (clamped to 0..=255).
fn shade(c: [u8; 3], j: i16) -> [u8; 3] {
    c.map(|v| (i16::from(v) + j).clamp(0, 255) as u8)
}

pub const COARSE_QUESTION: &str = "what colour is the picture?";
pub const FINE_QUESTION: &str = "what colour is the small shape?";

/// Where the fine detail sits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum FineLayout {
    /// One framed cell at a random place among confetti (`Scene`).
    Mark,
    /// Solid cells among two-tone ones, balanced per pooling window (`SolidScene`).
    Solid,
    /// The colour of the top-left cell, hidden in the order of a horizontal pair (`OrderScene`).
    Order,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Kind {
    Coarse,
    Fine,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Coarse => "coarse",
            Kind::Fine => "fine",
        }
    }
}

/// What one synthetic image shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scene {
    pub background: usize,
    pub mark: usize,
    /// Cell (column, row) of the mark.
    pub mark_cell: (u32, u32),
    /// Cells of further marks (same colour and frame), when asked for.
    pub extra_marks: Vec<(u32, u32)>,
    /// Cells and colours of the confetti.
    pub confetti: Vec<((u32, u32), usize)>,
    /// Per-cell brightness jitter, row-major.
    pub jitter: Vec<i16>,
}

#[derive(Debug, Clone, Copy)]
pub struct SceneConfig {
    pub confetti: usize,
    /// Marks per image (at least one).
    pub marks: usize,
    /// Max absolute per-cell jitter added to every channel of the background.
    pub jitter: i16,
    pub layout: FineLayout,
    /// `solid` layout: side of the balanced windows, 4 or 2 (see [`SolidScene::sample`]).
    pub solid_block: u32,
    /// `order` layout: pairs, row-major from the top-left, that show the fine order (see
    /// [`OrderScene::sample`]).
    pub order_pairs: u32,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            confetti: 24,
            marks: 1,
            jitter: 40,
            layout: FineLayout::Solid,
            solid_block: 4,
            order_pairs: 1,
        }
    }
}

impl Scene {
    pub fn sample(rng: &mut impl Rng, cfg: SceneConfig) -> Self {
        let n = COLOURS.len();
        let background = rng.random_range(0..n);
        let mut mark = rng.random_range(0..n - 1);
        if mark >= background {
            // The mark never has the background's colour: it must be visible at full detail.
            mark += 1;
        }
        // Keep the mark one cell away from the border so its frame is never cut.
        let mark_cell = (
            rng.random_range(1..CELLS - 1),
            rng.random_range(1..CELLS - 1),
        );
        let mut confetti = Vec::with_capacity(cfg.confetti);
        while confetti.len() < cfg.confetti {
            let cell = (rng.random_range(0..CELLS), rng.random_range(0..CELLS));
            if cell != mark_cell && !confetti.iter().any(|(c, _)| *c == cell) {
                confetti.push((cell, rng.random_range(0..n)));
            }
        }
        let jitter = (0..CELLS * CELLS)
            .map(|_| rng.random_range(-cfg.jitter..=cfg.jitter))
            .collect();
        // Drawn last, so one mark gives the same scenes as before this option existed.
        let mut extra_marks = Vec::new();
        while extra_marks.len() + 1 < cfg.marks {
            let cell = (
                rng.random_range(1..CELLS - 1),
                rng.random_range(1..CELLS - 1),
            );
            if cell != mark_cell
                && !extra_marks.contains(&cell)
                && !confetti.iter().any(|(c, _)| *c == cell)
            {
                extra_marks.push(cell);
            }
        }
        Self {
            background,
            mark,
            mark_cell,
            extra_marks,
            confetti,
            jitter,
        }
    }

    pub fn render(&self) -> RgbImage {
        let mut img = RgbImage::new(SIDE, SIDE);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let (cx, cy) = (x / CELL, y / CELL);
            let j = self.jitter[(cy * CELLS + cx) as usize];
            let colour = if (cx, cy) == self.mark_cell || self.extra_marks.contains(&(cx, cy)) {
                let (ix, iy) = (x % CELL, y % CELL);
                let frame = ix < FRAME || iy < FRAME || ix >= CELL - FRAME || iy >= CELL - FRAME;
                if frame {
                    [0, 0, 0]
                } else {
                    COLOURS[self.mark].1
                }
            } else if let Some((_, c)) = self.confetti.iter().find(|(cell, _)| *cell == (cx, cy)) {
                shade(COLOURS[*c].1, j)
            } else {
                shade(COLOURS[self.background].1, j)
            };
            *px = Rgb(colour);
        }
        img
    }

    pub fn answer(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Coarse => COLOURS[self.background].0,
            Kind::Fine => COLOURS[self.mark].0,
        }
    }
}

pub fn question(kind: Kind) -> &'static str {
    match kind {
        Kind::Coarse => COARSE_QUESTION,
        Kind::Fine => FINE_QUESTION,
    }
}

/// The question of `kind` for scenes of `layout` (`order` asks for the top-left cell).
pub fn layout_question(kind: Kind, layout: FineLayout) -> &'static str {
    match (kind, layout) {
        (Kind::Fine, FineLayout::Order) => order::ORDER_FINE_QUESTION,
        _ => question(kind),
    }
}

/// Write `n` images under `dir/images/` (prefix `name`) and `dir/{name}.jsonl`, each image asked
/// one question, a `fine_fraction` of them fine (spread evenly); with `pairs`, every image is asked
/// both questions instead (two lines, coarse first). Returns the JSONL path. The same `seed` writes
/// the same bytes.
pub fn write_set(
    dir: &Path,
    name: &str,
    n: usize,
    fine_fraction: f64,
    seed: u64,
    cfg: SceneConfig,
    pairs: bool,
) -> Result<PathBuf> {
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(TrainError::Setup(format!("bad set name `{name}`")));
    }
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| io(&images, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut lines = String::new();
    for i in 0..n {
        let (img, answers) = match cfg.layout {
            FineLayout::Mark => {
                let s = Scene::sample(&mut rng, cfg);
                (s.render(), [s.answer(Kind::Coarse), s.answer(Kind::Fine)])
            }
            FineLayout::Solid => {
                let s = SolidScene::sample(&mut rng, cfg.jitter, cfg.solid_block);
                (s.render(), [s.answer(Kind::Coarse), s.answer(Kind::Fine)])
            }
            FineLayout::Order => {
                let s = OrderScene::sample(&mut rng, cfg.jitter, cfg.order_pairs);
                (s.render(), [s.answer(Kind::Coarse), s.answer(Kind::Fine)])
            }
        };
        // Fine whenever the running count of fine questions falls behind the fraction.
        let fine_so_far = (i as f64 * fine_fraction).ceil();
        let kind = if ((i + 1) as f64 * fine_fraction).ceil() > fine_so_far {
            Kind::Fine
        } else {
            Kind::Coarse
        };
        let file = format!("images/{name}-{i:05}.png");
        let path = dir.join(&file);
        img.save(&path)
            .map_err(|e| TrainError::Setup(format!("{}: {e}", path.display())))?;
        let kinds: &[Kind] = if pairs {
            &[Kind::Coarse, Kind::Fine]
        } else {
            std::slice::from_ref(&kind)
        };
        for &kind in kinds {
            let ex = Example {
                image: PathBuf::from(&file),
                question: layout_question(kind, cfg.layout).into(),
                answer: answers[usize::from(kind == Kind::Fine)].into(),
                kind: Some(kind.name().into()),
            };
            lines.push_str(&serde_json::to_string(&ex).expect("serialisable"));
            lines.push('\n');
        }
    }
    let path = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, lines).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// `grain make-rglf-data`: the synthetic fine-vs-coarse set.
#[derive(Debug, Clone, clap::Args)]
pub struct MakeRglfDataArgs {
    /// Output folder (images/ and one JSONL file per set).
    #[arg(long)]
    pub out: PathBuf,
    /// Examples for fine-tuning the small LMM (`lmm.jsonl`).
    #[arg(long, default_value_t = 600)]
    pub lmm: usize,
    /// Images for router training, validation split included (`router.jsonl`; one example each,
    /// two with `--router-pairs`).
    #[arg(long, default_value_t = 240)]
    pub router: usize,
    /// Ask every image of `router.jsonl` both questions (two lines per image), so that only the
    /// question tells the two kinds apart.
    #[arg(long)]
    pub router_pairs: bool,
    /// Fraction of fine questions in `lmm.jsonl`.
    #[arg(long, default_value_t = 0.5)]
    pub lmm_fine_fraction: f64,
    /// Where the fine detail sits: `solid` (default), `order` or the older `mark`.
    #[arg(long, value_enum, default_value_t = FineLayout::Solid)]
    pub fine_layout: FineLayout,
    /// `solid` layout: side in cells of the windows whose colour mix hides the answer (4: from
    /// 36-token pooling; 2: meant to hide it from 72 and 144 too, see docs/rglf.md).
    #[arg(long, default_value_t = SceneConfig::default().solid_block)]
    pub solid_block: u32,
    /// `order` layout: horizontal cell pairs, row-major from the top-left (12 per row), that show
    /// the fine colour pair in the same order (1: only the top-left cell and its right
    /// neighbour; 12: the top row; at most 144).
    #[arg(long, default_value_t = SceneConfig::default().order_pairs)]
    pub order_pairs: u32,
    /// Max per-cell brightness jitter.
    #[arg(long, default_value_t = SceneConfig::default().jitter)]
    pub jitter: i16,
    /// Confetti cells per image (`mark` layout: distractors around the mark).
    #[arg(long, default_value_t = SceneConfig::default().confetti)]
    pub confetti: usize,
    /// Framed marks per image (`mark` layout; all of the answer's colour).
    #[arg(long, default_value_t = SceneConfig::default().marks)]
    pub marks: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn main(a: MakeRglfDataArgs) -> Result<()> {
    if a.solid_block != 2 && a.solid_block != 4 {
        return Err(TrainError::Setup("--solid-block must be 2 or 4".into()));
    }
    if !(1..=order::MAX_FINE_PAIRS).contains(&a.order_pairs) {
        return Err(TrainError::Setup(format!(
            "--order-pairs must be 1..={}",
            order::MAX_FINE_PAIRS
        )));
    }
    let cfg = SceneConfig {
        confetti: a.confetti,
        marks: a.marks,
        jitter: a.jitter,
        layout: a.fine_layout,
        solid_block: a.solid_block,
        order_pairs: a.order_pairs,
    };
    // Different seeds per set: the router's examples are images the LMM never saw.
    let lmm = write_set(
        &a.out,
        "lmm",
        a.lmm,
        a.lmm_fine_fraction,
        a.seed.wrapping_mul(2),
        cfg,
        false,
    )?;
    let router = write_set(
        &a.out,
        "router",
        a.router,
        0.5,
        a.seed.wrapping_mul(2) + 1,
        cfg,
        a.router_pairs,
    )?;
    let per_image = if a.router_pairs { 2 } else { 1 };
    println!(
        "wrote {} ({} examples) and {} ({} examples)",
        lmm.display(),
        a.lmm,
        router.display(),
        a.router * per_image
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_reproducible_and_the_mark_is_where_the_scene_says() {
        let cfg = SceneConfig::default();
        let a = Scene::sample(&mut ChaCha8Rng::seed_from_u64(5), cfg);
        let b = Scene::sample(&mut ChaCha8Rng::seed_from_u64(5), cfg);
        assert_eq!(a, b);
        assert_ne!(a.mark, a.background);
        assert_eq!(a.confetti.len(), cfg.confetti);
        let img = a.render();
        let (cx, cy) = a.mark_cell;
        // Frame corner black, centre the mark's colour.
        assert_eq!(img.get_pixel(cx * CELL, cy * CELL).0, [0, 0, 0]);
        let c = img.get_pixel(cx * CELL + CELL / 2, cy * CELL + CELL / 2).0;
        assert_eq!(c, COLOURS[a.mark].1);
        // The dominant colour covers most of the image.
        let bg = COLOURS[a.background].1;
        let near = img
            .pixels()
            .filter(|p| {
                p.0.iter()
                    .zip(bg)
                    .all(|(&v, w)| (i16::from(v) - i16::from(w)).abs() <= cfg.jitter)
            })
            .count();
        assert!(near as f64 > 0.8 * f64::from(SIDE * SIDE), "{near}");
    }

    #[test]
    fn order_sets_ask_for_the_top_left_cell_and_answer_with_its_pixel() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SceneConfig {
            layout: FineLayout::Order,
            ..SceneConfig::default()
        };
        let p = write_set(dir.path(), "o", 4, 0.5, 2, cfg, true).unwrap();
        let again = tempfile::tempdir().unwrap();
        let q = write_set(again.path(), "o", 4, 0.5, 2, cfg, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
        for e in crate::data::read_jsonl(&p).unwrap() {
            let img = image::open(&e.image).unwrap().to_rgb8();
            let again = image::open(
                again
                    .path()
                    .join("images")
                    .join(e.image.file_name().unwrap()),
            );
            assert_eq!(img, again.unwrap().to_rgb8());
            let (_, rgb) = COLOURS.iter().find(|(w, _)| *w == e.answer).unwrap();
            if e.kind.as_deref() == Some("fine") {
                assert_eq!(e.question, order::ORDER_FINE_QUESTION);
                let p = img.get_pixel(CELL / 2, CELL / 2).0;
                let near = p.iter().zip(rgb).all(|(&a, &b)| a.abs_diff(b) <= 40);
                assert!(near, "{p:?} vs {rgb:?}");
            } else {
                assert_eq!(e.question, COARSE_QUESTION);
            }
        }
    }

    #[test]
    fn write_set_alternates_kinds_with_matching_answers() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_set(dir.path(), "t", 4, 0.5, 9, SceneConfig::default(), false).unwrap();
        let ex = crate::data::read_jsonl(&p).unwrap();
        assert_eq!(ex.len(), 4);
        let kinds: Vec<_> = ex.iter().map(|e| e.kind.clone().unwrap()).collect();
        assert_eq!(kinds, ["fine", "coarse", "fine", "coarse"]);
        for e in &ex {
            assert!(e.image.is_file());
            assert!(COLOURS.iter().any(|(w, _)| *w == e.answer));
        }
    }

    #[test]
    fn pairs_ask_every_image_both_questions_with_the_single_set_answers() {
        let dir = tempfile::tempdir().unwrap();
        let single = write_set(dir.path(), "s", 4, 0.5, 9, SceneConfig::default(), false).unwrap();
        let paired = write_set(dir.path(), "p", 4, 0.5, 9, SceneConfig::default(), true).unwrap();
        let single = crate::data::read_jsonl(&single).unwrap();
        let paired = crate::data::read_jsonl(&paired).unwrap();
        assert_eq!(paired.len(), 8);
        for (i, pair) in paired.chunks(2).enumerate() {
            assert_eq!(pair[0].image, pair[1].image);
            assert_eq!(pair[0].kind.as_deref(), Some("coarse"));
            assert_eq!(pair[1].kind.as_deref(), Some("fine"));
            assert_ne!(pair[0].question, pair[1].question);
            // Same seed, same scenes: the single set's question for image i has the same answer.
            let s = &single[i];
            let same = if s.kind.as_deref() == Some("fine") {
                &pair[1]
            } else {
                &pair[0]
            };
            assert_eq!(same.answer, s.answer);
        }
    }
}
