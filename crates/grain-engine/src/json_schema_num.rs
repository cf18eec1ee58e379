//! `{"type": "number"}` with `minimum`, `maximum`, `exclusiveMinimum` or `exclusiveMaximum`
//! (what pydantic writes for `Field(ge=…, le=…)` on a `float`), and a fractional `multipleOf`
//! (`Field(multiple_of=0.5)`): whether a number written so far can still end on a multiple inside
//! the bounds, so that decoding never writes a digit that leads out of them or away from every
//! multiple. A multiple of `a · 10^-p` is written with at most `p` fraction digits
//! ([`crate::json_schema_step`]).
//!
//! Each bound is the exact decimal of its shortest round-trip digits (the number its author
//! wrote: `0.1` is 0.1), and the comparisons are exact on decimal digits. Bounded numbers are
//! written without an exponent and with at most [`MAX_DIGITS`] digits.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::json_schema_int::BOUNDS;
use crate::json_schema_step::{Step, MAX_STEP_FRACTION};

/// Most digits (integer and fraction parts together) of a bounded number.
pub(crate) const MAX_DIGITS: usize = 40;

/// Room for a bound's digits or a written number's, plus one for a carry.
const CAP: usize = MAX_DIGITS + 1;

/// A non-negative decimal `digits × 10^exp`: no leading zeros, and zero has no digits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dec {
    pub(crate) digits: [u8; CAP],
    pub(crate) len: u8,
    pub(crate) exp: i16,
}

impl Dec {
    const ZERO: Dec = Dec {
        digits: [0; CAP],
        len: 0,
        exp: 0,
    };

    /// `digits` (values 0–9, at most [`CAP`] after leading zeros) × 10^`exp`.
    pub(crate) fn new(digits: &[u8], exp: i16) -> Dec {
        let digits = &digits[digits.iter().take_while(|&&d| d == 0).count()..];
        let mut d = Dec { exp, ..Dec::ZERO };
        d.digits[..digits.len()].copy_from_slice(digits);
        d.len = digits.len() as u8;
        d
    }

    fn digit(&self, i: usize) -> u8 {
        if i < self.len as usize {
            self.digits[i]
        } else {
            0
        }
    }

    /// One past the position of the leading digit: the value is below 10^top.
    fn top(&self) -> i32 {
        i32::from(self.len) + i32::from(self.exp)
    }

    /// `|x|` as the decimal its author wrote: the shortest digits that give back `x` (`0.1` is
    /// 0.1).
    pub(crate) fn of_abs(x: f64) -> Dec {
        // `{:e}`: the shortest digits, then the exponent of the first.
        let text = format!("{:e}", x.abs());
        let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
        let digits: Vec<u8> = mantissa
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        let exp = exp.parse::<i16>().unwrap_or(0) - (digits.len() as i16 - 1);
        Dec::new(&digits, exp)
    }

    /// `self · 10^k`.
    fn shifted(mut self, k: i16) -> Dec {
        self.exp = self.exp.saturating_add(k);
        self
    }

    /// `self + 10^exp`, where `exp` is `self`'s own (its last digit plus one).
    fn next(self) -> Dec {
        let mut d = self.digits;
        let n = self.len as usize;
        let mut i = n;
        while i > 0 && d[i - 1] == 9 {
            d[i - 1] = 0;
            i -= 1;
        }
        if i == 0 {
            let mut out = [1u8; CAP];
            out[1..=n].copy_from_slice(&d[..n]);
            return Dec::new(&out[..=n.min(CAP - 1)], self.exp);
        }
        d[i - 1] += 1;
        Dec::new(&d[..n], self.exp)
    }
}

impl PartialEq for Dec {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Dec {}
impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Dec {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.len, other.len) {
            (0, 0) => return Ordering::Equal,
            (0, _) => return Ordering::Less,
            (_, 0) => return Ordering::Greater,
            _ => {}
        }
        self.top().cmp(&other.top()).then_with(|| {
            let n = self.len.max(other.len) as usize;
            (0..n)
                .map(|i| self.digit(i).cmp(&other.digit(i)))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        })
    }
}

/// One end of a range: a signed decimal, and whether it is in the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    neg: bool,
    mag: Dec,
    closed: bool,
}

impl End {
    fn of(x: f64, closed: bool) -> End {
        End {
            neg: x < 0.0,
            mag: Dec::of_abs(x),
            closed,
        }
    }

    fn is_zero(&self) -> bool {
        self.mag.len == 0
    }
}

/// Numbers between two ends (`None`: unbounded on that side), multiples of `step` where it is
/// set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NumRange {
    lo: Option<End>,
    hi: Option<End>,
    step: Option<Step>,
}

/// The magnitudes one sign can take: from `a` (closed or not) up to `b` (`None`: unbounded).
#[derive(Debug, Clone, Copy)]
struct Side {
    a: (Dec, bool),
    b: Option<(Dec, bool)>,
}

/// The numbers a written prefix can still become, as magnitudes: `[x, y)` (`y` `None`: up to
/// infinity), or exactly `x`.
#[derive(Debug, Clone, Copy)]
enum Span {
    From(Dec, Option<Dec>),
    Point(Dec),
}

impl Side {
    /// Whether some magnitude of `span` is on this side (and a multiple of `step`, where set).
    fn meets(&self, span: Span, step: Option<Step>) -> bool {
        self.intersect(span)
            .is_some_and(|(low, high)| step.is_none_or(|s| s.meets(low, high)))
    }

    /// The magnitudes of `span` on this side, `low` to `high` (`None`: infinity), each with
    /// whether it is included; `None` when there are none.
    #[allow(clippy::type_complexity)]
    fn intersect(&self, span: Span) -> Option<((Dec, bool), Option<(Dec, bool)>)> {
        let (x, high) = match span {
            Span::From(x, y) => (x, y.map(|y| (y, false))),
            Span::Point(x) => (x, Some((x, true))),
        };
        // The greater low end, and the lesser high end (`None`: infinity), each with whether it
        // is included.
        let low = match x.cmp(&self.a.0) {
            Ordering::Greater => (x, true),
            Ordering::Less => self.a,
            Ordering::Equal => (x, self.a.1),
        };
        let high = match (high, self.b) {
            (None, b) => b,
            (h, None) => h,
            (Some(h), Some(b)) => Some(match h.0.cmp(&b.0) {
                Ordering::Less => h,
                Ordering::Greater => b,
                Ordering::Equal => (h.0, h.1 && b.1),
            }),
        };
        let some = match high {
            None => true,
            Some(high) => match low.0.cmp(&high.0) {
                Ordering::Less => true,
                Ordering::Equal => low.1 && high.1,
                Ordering::Greater => false,
            },
        };
        some.then_some((low, high))
    }
}

impl NumRange {
    /// The range `map`'s bounds and fractional `multipleOf` give a number; `None` when it has
    /// neither. A `multipleOf` that [`Step::of`] does not take is an error when strict and passed
    /// over otherwise (a whole one never comes here: it is written as an integer).
    pub fn of(
        map: &Map<String, Value>,
        path: &str,
        best_effort: bool,
    ) -> Result<Option<Self>, String> {
        let step = match map.get("multipleOf") {
            None => None,
            Some(v) => match v.as_f64().and_then(Step::of) {
                Some(step) => Some(step),
                None if best_effort => None,
                None => {
                    return Err(format!(
                        "{path}/multipleOf: must be a positive number with at most \
                         {MAX_STEP_FRACTION} fraction digits"
                    ))
                }
            },
        };
        if !BOUNDS.iter().any(|k| map.contains_key(*k)) && step.is_none() {
            return Ok(None);
        }
        let mut range = NumRange {
            lo: None,
            hi: None,
            step,
        };
        for k in BOUNDS {
            let Some(v) = map.get(k) else { continue };
            let x = v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or(format!("{path}/{k}: must be a number"))?;
            let end = End::of(x, !k.starts_with("exclusive"));
            let (slot, lower) = if k.ends_with("inimum") {
                (&mut range.lo, true)
            } else {
                (&mut range.hi, false)
            };
            // The tighter of two bounds on one side.
            let tighter = match *slot {
                None => true,
                Some(old) => {
                    let o = signed_cmp(&end, &old);
                    let o = if lower { o } else { o.reverse() };
                    o.is_gt() || (o.is_eq() && !end.closed)
                }
            };
            if tighter {
                *slot = Some(end);
            }
        }
        let writable = (0..=9u8).any(|d| {
            range.reachable(false, &[d], false, 0) || range.reachable(true, &[d], false, 0)
        });
        if !writable {
            let what = if step.is_some() { "multiple" } else { "number" };
            return Err(format!(
                "{path}: no {what} of at most {MAX_DIGITS} digits (without an exponent) lies \
                 within its bounds"
            ));
        }
        Ok(Some(range))
    }

    /// The magnitudes of the range's numbers of one sign (`neg`; zero belongs to both).
    fn side(&self, neg: bool) -> Option<Side> {
        // In the sign's own orientation: the bound below the magnitudes and the one above.
        let (below, above) = if neg {
            (self.hi.map(flip), self.lo.map(flip))
        } else {
            (self.lo, self.hi)
        };
        let a = match below {
            Some(e) if !e.neg && !e.is_zero() => (e.mag, e.closed),
            Some(e) if e.is_zero() => (Dec::ZERO, e.closed),
            _ => (Dec::ZERO, true),
        };
        let b = match above {
            None => None,
            Some(e) if e.neg && !e.is_zero() => return None,
            Some(e) => Some((e.mag, e.closed)),
        };
        Some(Side { a, b })
    }

    /// Whether a number written as `-` (`neg`), then `buf` digits of which the last `frac`
    /// follow a `.` (`dot`), can still end inside the range.
    pub fn reachable(&self, neg: bool, buf: &[u8], dot: bool, frac: usize) -> bool {
        let Some(side) = self.side(neg) else {
            return false;
        };
        let step = self.step;
        // A multiple of `a · 10^-p` needs no more than `p` fraction digits; none are written.
        if step.is_some_and(|s| frac > s.fraction_digits()) {
            return false;
        }
        let meets = |span| side.meets(span, step);
        let room = MAX_DIGITS - buf.len();
        if buf.is_empty() {
            return meets(Span::From(Dec::ZERO, None));
        }
        let x = Dec::new(buf, -(frac as i16));
        if dot {
            // `x` itself (once a fraction digit is written), or more fraction digits:
            // [x, x + 10^-frac).
            let here = frac > 0 && meets(Span::Point(x));
            return here || (room > 0 && meets(Span::From(x, Some(x.next()))));
        }
        if x.len == 0 {
            // A leading `0`: 0, or 0.…
            return meets(Span::From(Dec::ZERO, Some(Dec::new(&[1], 0))));
        }
        // More integer digits, then perhaps a fraction: [x·10ᵏ, (x + 1)·10ᵏ), growing with k.
        for k in 0..=room as i16 {
            let low = x.shifted(k);
            if side.b.is_some_and(|(b, _)| low > b) {
                return false;
            }
            if meets(Span::From(low, Some(x.next().shifted(k)))) {
                return true;
            }
        }
        false
    }

    /// Whether the number written so far is in the range (it may end here).
    pub fn contains(&self, neg: bool, buf: &[u8], dot: bool, frac: usize) -> bool {
        let x = Dec::new(buf, -(frac as i16));
        !buf.is_empty()
            && (!dot || frac > 0)
            && self.step.is_none_or(|s| s.divides(x))
            && self
                .side(neg)
                .is_some_and(|s| s.meets(Span::Point(x), None))
    }
}

/// `-e`.
fn flip(e: End) -> End {
    End { neg: !e.neg, ..e }
}

/// Signed comparison of two ends' values.
fn signed_cmp(a: &End, b: &End) -> Ordering {
    let zero = |e: &End| e.is_zero();
    match (a.neg && !zero(a), b.neg && !zero(b)) {
        (false, false) => a.mag.cmp(&b.mag),
        (true, true) => b.mag.cmp(&a.mag),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    }
}
