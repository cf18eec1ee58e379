//! Granularity modes: how each request of a run asks for its visual granularity.
//!
//! A mode is one axis value of a sweep. Fixed modes send the same knob on every request; mixes draw
//! the knob per request from weights, with a seeded RNG so that two runs send the same sequence.

use std::fmt;

use rand::Rng;
use serde::Serialize;

use crate::error::SpecError;

/// `image_url.detail`, OpenAI's per-image quality knob (Grain: low → 36, high → 576, auto → router).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Detail {
    Low,
    High,
    Auto,
}

impl Detail {
    pub fn as_str(self) -> &'static str {
        match self {
            Detail::Low => "low",
            Detail::High => "high",
            Detail::Auto => "auto",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Detail::Low),
            "high" => Some(Detail::High),
            "auto" => Some(Detail::Auto),
            _ => None,
        }
    }
}

/// The `granularity` extension field of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GranularityField {
    Auto,
    Fixed(u32),
}

/// What one request sends: at most one of the two knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Choice {
    pub granularity: Option<GranularityField>,
    pub detail: Option<Detail>,
}

/// A skewed-to-coarse mix standing in for a router's choices on a typical VQA workload: half the
/// requests at 36 and 5% at 576, so the mean visual tokens come to about one sixth of the finest
/// level. It is an illustration of "the router picks coarse most of the time", not a measured router
/// distribution; pass `mix:36=…+72=…` to use measured fractions.
pub const PAPER_MIX: [(u32, f64); 5] = [
    (36, 0.50),
    (72, 0.20),
    (144, 0.15),
    (288, 0.10),
    (576, 0.05),
];

/// One granularity mode of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Send no knob: the server's default.
    ServerDefault,
    /// `"granularity": "auto"`: the router decides.
    Auto,
    /// `"granularity": g` on every request.
    Fixed(u32),
    /// `image_url.detail` drawn per request from weights.
    Detail(Vec<(Detail, f64)>),
    /// `"granularity": g` drawn per request from weights; `paper` records that the preset was used.
    Mix {
        weights: Vec<(u32, f64)>,
        paper: bool,
    },
}

impl Mode {
    /// Parse one mode: `default`, `auto`, a granularity (`36`), `low`/`high` (detail on every image),
    /// `detail:low=0.7+high=0.3`, `mix:paper` or `mix:36=0.5+576=0.5`.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let s = s.trim();
        let bad = |why: &str| SpecError::Mode {
            mode: s.to_string(),
            why: why.to_string(),
        };
        match s {
            "default" | "none" => return Ok(Mode::ServerDefault),
            "auto" => return Ok(Mode::Auto),
            "low" => return Ok(Mode::Detail(vec![(Detail::Low, 1.0)])),
            "high" => return Ok(Mode::Detail(vec![(Detail::High, 1.0)])),
            "mix:paper" => {
                return Ok(Mode::Mix {
                    weights: PAPER_MIX.to_vec(),
                    paper: true,
                })
            }
            _ => {}
        }
        if let Some(rest) = s.strip_prefix("detail:") {
            let weights = parse_weights(rest, |k| {
                Detail::parse(k).ok_or_else(|| bad("detail must be low, high or auto"))
            })?;
            return Ok(Mode::Detail(weights));
        }
        if let Some(rest) = s.strip_prefix("mix:") {
            let weights = parse_weights(rest, |k| {
                parse_granularity(k).ok_or_else(|| bad("granularity must be a positive integer"))
            })?;
            return Ok(Mode::Mix {
                weights,
                paper: false,
            });
        }
        match parse_granularity(s) {
            Some(g) => Ok(Mode::Fixed(g)),
            None => Err(bad(
                "expected default, auto, low, high, a granularity such as 36, detail:…, or mix:…",
            )),
        }
    }

    /// Draw the knob for one request. Deterministic given the RNG state; fixed modes draw nothing.
    pub fn choose(&self, rng: &mut impl Rng) -> Choice {
        match self {
            Mode::ServerDefault => Choice::default(),
            Mode::Auto => Choice {
                granularity: Some(GranularityField::Auto),
                detail: None,
            },
            Mode::Fixed(g) => Choice {
                granularity: Some(GranularityField::Fixed(*g)),
                detail: None,
            },
            Mode::Detail(w) => Choice {
                granularity: None,
                detail: Some(draw(w, rng)),
            },
            Mode::Mix { weights, .. } => Choice {
                granularity: Some(GranularityField::Fixed(draw(weights, rng))),
                detail: None,
            },
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::ServerDefault => f.write_str("default"),
            Mode::Auto => f.write_str("auto"),
            Mode::Fixed(g) => write!(f, "{g}"),
            Mode::Detail(w) if w.len() == 1 => f.write_str(w[0].0.as_str()),
            Mode::Detail(w) => {
                let parts: Vec<String> = w
                    .iter()
                    .map(|(d, p)| format!("{}={p}", d.as_str()))
                    .collect();
                write!(f, "detail:{}", parts.join("+"))
            }
            Mode::Mix { paper: true, .. } => f.write_str("mix:paper"),
            Mode::Mix { weights, .. } => {
                let parts: Vec<String> = weights.iter().map(|(g, p)| format!("{g}={p}")).collect();
                write!(f, "mix:{}", parts.join("+"))
            }
        }
    }
}

fn parse_granularity(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|&g| g > 0)
}

/// `k=w+k=w…` with positive weights, normalised to sum 1.
fn parse_weights<K>(
    s: &str,
    mut key: impl FnMut(&str) -> Result<K, SpecError>,
) -> Result<Vec<(K, f64)>, SpecError> {
    let mut out = Vec::new();
    for part in s.split('+') {
        let (k, w) = part
            .split_once('=')
            .ok_or_else(|| SpecError::Weights(format!("`{part}` is not key=weight")))?;
        let w: f64 = w
            .trim()
            .parse()
            .map_err(|_| SpecError::Weights(format!("weight `{w}` is not a number")))?;
        if !(w.is_finite() && w >= 0.0) {
            return Err(SpecError::Weights(format!(
                "weight `{w}` must be finite and >= 0"
            )));
        }
        out.push((key(k.trim())?, w));
    }
    let total: f64 = out.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return Err(SpecError::Weights(format!("weights in `{s}` sum to zero")));
    }
    Ok(out.into_iter().map(|(k, w)| (k, w / total)).collect())
}

/// Inverse-CDF draw from normalised weights.
fn draw<K: Copy>(weights: &[(K, f64)], rng: &mut impl Rng) -> K {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for &(k, w) in weights {
        acc += w;
        if u < acc {
            return k;
        }
    }
    // Rounding can leave `acc` a hair under 1.
    weights
        .last()
        .expect("parse_weights never returns an empty list")
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn parses_every_form_and_round_trips_through_display() {
        for s in [
            "default",
            "auto",
            "36",
            "576",
            "low",
            "high",
            "mix:paper",
            "detail:low=0.5+high=0.5",
            "mix:36=0.25+576=0.75",
        ] {
            let m = Mode::parse(s).unwrap();
            assert_eq!(m.to_string(), s);
            assert_eq!(Mode::parse(&m.to_string()).unwrap(), m);
        }
        assert_eq!(Mode::parse("144").unwrap(), Mode::Fixed(144));
    }

    #[test]
    fn weights_are_normalised() {
        let Mode::Mix { weights, .. } = Mode::parse("mix:36=1+576=3").unwrap() else {
            panic!()
        };
        assert_eq!(weights, vec![(36, 0.25), (576, 0.75)]);
    }

    #[test]
    fn rejects_bad_modes_with_a_reason() {
        for s in [
            "0",
            "fine",
            "detail:medium=1",
            "mix:36",
            "mix:36=-1",
            "mix:36=0+72=0",
            "mix:x=1",
            "detail:low=nan",
        ] {
            assert!(Mode::parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn paper_mix_mean_is_about_a_sixth_of_the_finest_level() {
        // Totals for a 672×672 image from DESIGN.md: 36→192, 72→228, 144→744, 288→888, 576→2928.
        let totals = [
            (36, 192.0),
            (72, 228.0),
            (144, 744.0),
            (288, 888.0),
            (576, 2928.0),
        ];
        let mean: f64 = PAPER_MIX
            .iter()
            .map(|(g, w)| w * totals.iter().find(|t| t.0 == *g).unwrap().1)
            .sum();
        let frac = mean / 2928.0;
        assert!((0.14..0.19).contains(&frac), "{frac}");
        assert!((PAPER_MIX.iter().map(|p| p.1).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn mixes_draw_in_proportion_and_fixed_modes_never_vary() {
        let mode = Mode::parse("mix:36=0.2+576=0.8").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 20_000;
        let fine = (0..n)
            .filter(|_| mode.choose(&mut rng).granularity == Some(GranularityField::Fixed(576)))
            .count();
        // Binomial(20000, 0.8): sd ≈ 57, so ±400 is ~7 sd.
        assert!((fine as i64 - 16_000).abs() < 400, "{fine}");
        let fixed = Mode::Fixed(72);
        assert!((0..100).all(|_| fixed.choose(&mut rng)
            == Choice {
                granularity: Some(GranularityField::Fixed(72)),
                detail: None
            }));
        assert_eq!(Mode::ServerDefault.choose(&mut rng), Choice::default());
    }
}
