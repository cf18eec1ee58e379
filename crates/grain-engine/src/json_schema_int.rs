//! `{"type": "integer"}` with `minimum`, `maximum`, `exclusiveMinimum` or `exclusiveMaximum`
//! (what pydantic writes for `Field(ge=…, le=…)`), and `multipleOf` (`Field(multiple_of=…)`; on a
//! `number` too when it is whole, since every multiple of a whole number is an integer): the
//! bounds as one inclusive range and a step, and whether a JSON integer written so far can still
//! end on a multiple of the step inside the range, so that decoding never writes a digit that
//! leads out of it.

use serde_json::{Map, Value};

/// The keywords read here.
pub(crate) const BOUNDS: [&str; 4] = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

/// Integers `lo ..= hi` that are multiples of `step` (1 without `multipleOf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IntRange {
    pub lo: i64,
    pub hi: i64,
    pub step: u64,
}

/// A `multipleOf` that is a positive whole number (below 10¹⁸), as one.
pub(crate) fn whole_step(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|x| x.fract() == 0.0 && *x >= 1.0 && *x < 1e18)
                .map(|x| x as u64)
        })
        .filter(|&m| m > 0)
}

/// `multipleOf` on an integer: a positive whole number. Best effort takes any other as no step
/// (OpenAI's non-strict schemas promise no more); strict refuses it.
fn step_of(map: &Map<String, Value>, path: &str, best_effort: bool) -> Result<u64, String> {
    let Some(v) = map.get("multipleOf") else {
        return Ok(1);
    };
    match whole_step(v) {
        Some(m) => Ok(m),
        None if best_effort => Ok(1),
        None => Err(format!(
            "{path}/multipleOf: on an integer, must be a positive whole number"
        )),
    }
}

impl IntRange {
    /// The range `map`'s bounds and step give an integer; `None` when it has none.
    pub fn of(
        map: &Map<String, Value>,
        path: &str,
        best_effort: bool,
    ) -> Result<Option<Self>, String> {
        if !BOUNDS.iter().any(|k| map.contains_key(*k)) && !map.contains_key("multipleOf") {
            return Ok(None);
        }
        let step = step_of(map, path, best_effort)?;
        let (mut lo, mut hi) = (i128::from(i64::MIN), i128::from(i64::MAX));
        for k in BOUNDS {
            let Some(v) = map.get(k) else { continue };
            let lower = k.ends_with("inimum");
            let exclusive = k.starts_with("exclusive");
            // The nearest integer on the range's side of the bound.
            let bound = match v.as_i64() {
                Some(i) => {
                    let i = i128::from(i);
                    match (lower, exclusive) {
                        (true, true) => i + 1,
                        (false, true) => i - 1,
                        _ => i,
                    }
                }
                None => {
                    let x = v
                        .as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or(format!("{path}/{k}: must be a number"))?;
                    let x = match (lower, exclusive) {
                        (true, false) => x.ceil(),
                        (true, true) => x.floor() + 1.0,
                        (false, false) => x.floor(),
                        (false, true) => x.ceil() - 1.0,
                    };
                    // Saturating: beyond i64 the bound excludes nothing (or everything).
                    x.clamp(-1e20, 1e20) as i128
                }
            };
            if lower {
                lo = lo.max(bound);
            } else {
                hi = hi.min(bound);
            }
        }
        if lo > hi {
            return Err(format!("{path}: no integer lies within its bounds"));
        }
        let range = Self {
            lo: lo as i64,
            hi: hi as i64,
            step,
        };
        if !range.reachable(false, 0, 0) {
            return Err(format!(
                "{path}: no multiple of {step} lies within its bounds"
            ));
        }
        Ok(Some(range))
    }

    /// Whether a JSON integer begun as `-` (`neg`) and `digits` digits whose value is `mag` can
    /// still end on a multiple of the step inside the range (`0` and `-0` take no more digits).
    pub fn reachable(self, neg: bool, mag: u64, digits: u8) -> bool {
        let (lo, hi) = (i128::from(self.lo), i128::from(self.hi));
        let m = i128::from(self.step);
        // A multiple of the step within `x ..= y`.
        let multiple_in = |x: i128, y: i128| x <= y && (x + m - 1).div_euclid(m) * m <= y;
        if digits == 0 {
            // Anything left: zero, or a magnitude of either sign.
            return if neg {
                multiple_in(lo, hi.min(0))
            } else {
                multiple_in(lo, hi)
            };
        }
        if mag == 0 {
            return lo <= 0 && 0 <= hi;
        }
        // The magnitudes it can end with: `mag`, then `mag·10ᵏ ..= mag·10ᵏ + 10ᵏ − 1`.
        let (a, b) = if neg {
            ((-hi).max(1), -lo)
        } else {
            (lo.max(1), hi)
        };
        let (mut low, mut high) = (i128::from(mag), i128::from(mag));
        while low <= b {
            if multiple_in(low.max(a), high.min(b)) {
                return true;
            }
            (low, high) = (low * 10, high * 10 + 9);
        }
        false
    }

    /// Whether the integer written so far is a multiple of the step in the range (it may end
    /// here).
    pub fn contains(self, neg: bool, mag: u64, digits: u8) -> bool {
        let v = if neg {
            -i128::from(mag)
        } else {
            i128::from(mag)
        };
        digits > 0
            && i128::from(self.lo) <= v
            && v <= i128::from(self.hi)
            && v % i128::from(self.step) == 0
    }
}
