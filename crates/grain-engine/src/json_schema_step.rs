//! A number's fractional `multipleOf` (`Field(multiple_of=0.5)`) for [`crate::json_schema_num`]:
//! `a · 10^-p`, whose multiples are written with at most `p` fraction digits, and whether a
//! multiple lies between two decimal ends. Exact: in `u128` units of 10^-p where both ends fit,
//! on decimal digits where they do not.

use std::cmp::Ordering;

use crate::json_schema_num::Dec;

/// A fractional `multipleOf`, `a · 10^-p` (`p ≥ 1`, `a` not a multiple of 10). Its multiples
/// are the numbers `j · 10^-p` with `a | j`: written with at most `p` fraction digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    a: u64,
    p: u8,
}

/// Most fraction digits of a `multipleOf` (`0.` and 20 digits).
pub(crate) const MAX_STEP_FRACTION: u8 = 20;

impl Step {
    /// `multipleOf` `m` as `a · 10^-p`, when it has a fraction (a whole one is written as an
    /// integer: [`crate::json_schema_int`]). `None` when it is not a positive number with at most
    /// [`MAX_STEP_FRACTION`] fraction digits.
    pub(crate) fn of(m: f64) -> Option<Step> {
        if !(m.is_finite() && m > 0.0) {
            return None;
        }
        let d = Dec::of_abs(m);
        let p = -i32::from(d.exp);
        if p < 1 || p > i32::from(MAX_STEP_FRACTION) {
            return None;
        }
        let a = d.digits[..d.len as usize]
            .iter()
            .try_fold(0u64, |a, &g| a.checked_mul(10)?.checked_add(u64::from(g)))?;
        Some(Step { a, p: p as u8 })
    }

    /// The most fraction digits a multiple is written with (`p`).
    pub(crate) fn fraction_digits(self) -> usize {
        usize::from(self.p)
    }

    /// Whether a multiple lies between `low` and `high` (`None`: no upper end), each with
    /// whether it is included.
    pub(crate) fn meets(self, low: (Dec, bool), high: Option<(Dec, bool)>) -> bool {
        let Some(high) = high else {
            return true;
        };
        self.meets_u128(low, high)
            .unwrap_or_else(|| self.meets_digits(low, high))
    }

    /// [`Self::meets`] in machine integers, where both ends fit in units of 10^-p (numbers of up
    /// to about 38 digits in units); `None` elsewhere.
    fn meets_u128(self, low: (Dec, bool), (h, closed): (Dec, bool)) -> Option<bool> {
        let (l, l_exact) = scaled_u128(low.0, self.p, true)?;
        let (hf, h_exact) = scaled_u128(h, self.p, false)?;
        let a = u128::from(self.a);
        // The least multiple of `a` at or above `low` (above, if it is open).
        let mut first = l.div_ceil(a).checked_mul(a)?;
        if l_exact && first == l && !low.1 {
            first = first.checked_add(a)?;
        }
        Some(first < hf || (first == hf && (closed || !h_exact)))
    }

    /// [`Self::meets`] on decimal digits, for ends of any length.
    fn meets_digits(self, low: (Dec, bool), (h, closed): (Dec, bool)) -> bool {
        // In units of 10^-p: the least multiple of `a` at or above `low` (above, if it is open).
        let (l, exact) = scaled(low.0, self.p, true);
        let (q, r) = div_small(&l, self.a);
        let at_low = exact && r == 0;
        let mut q = if r == 0 { q } else { add_one(&q) };
        if at_low && !low.1 {
            q = add_one(&q);
        }
        let first = mul_small(&q, self.a);
        // `first ≤ high` (or `<`): against ⌊high⌋ in units, and whether high is a whole unit.
        let (hf, h_exact) = scaled(h, self.p, false);
        match cmp_digits(&first, &hf) {
            Ordering::Less => true,
            Ordering::Equal => closed || !h_exact,
            Ordering::Greater => false,
        }
    }

    /// Whether the decimal `x` is a multiple.
    pub(crate) fn divides(self, x: Dec) -> bool {
        let (units, exact) = scaled(x, self.p, false);
        exact && div_small(&units, self.a).1 == 0
    }
}

/// [`scaled`] as a `u128`, where it fits (`None` otherwise).
fn scaled_u128(x: Dec, p: u8, ceil: bool) -> Option<(u128, bool)> {
    let digits = &x.digits[..x.len as usize];
    let shift = i32::from(x.exp) + i32::from(p);
    let keep = (digits.len() as i32 + shift.min(0)).max(0) as usize;
    let mut v = digits[..keep]
        .iter()
        .try_fold(0u128, |v, &d| v.checked_mul(10)?.checked_add(u128::from(d)))?;
    for _ in 0..shift.max(0) {
        v = v.checked_mul(10)?;
    }
    let whole = digits[keep..].iter().all(|&d| d == 0);
    if ceil && !whole {
        v = v.checked_add(1)?;
    }
    Some((v, whole))
}

/// `x · 10^p` as integer digits, rounded up (`ceil`) or down, and whether it was whole.
fn scaled(x: Dec, p: u8, ceil: bool) -> (Vec<u8>, bool) {
    let digits = &x.digits[..x.len as usize];
    let shift = i32::from(x.exp) + i32::from(p);
    if shift >= 0 {
        let mut v = digits.to_vec();
        v.resize(digits.len() + shift as usize, 0);
        return (v, true);
    }
    let keep = (digits.len() as i32 + shift).max(0) as usize;
    let whole = digits[keep..].iter().all(|&d| d == 0);
    let v = digits[..keep].to_vec();
    (if ceil && !whole { add_one(&v) } else { v }, whole)
}

/// `v / a` (decimal digits, most significant first) and the remainder.
fn div_small(v: &[u8], a: u64) -> (Vec<u8>, u64) {
    let (mut q, mut r) = (Vec::with_capacity(v.len()), 0u128);
    for &d in v {
        r = r * 10 + u128::from(d);
        q.push((r / u128::from(a)) as u8);
        r %= u128::from(a);
    }
    (q, r as u64)
}

fn mul_small(v: &[u8], a: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 20);
    let mut carry = 0u128;
    for &d in v.iter().rev() {
        let t = u128::from(d) * u128::from(a) + carry;
        out.push((t % 10) as u8);
        carry = t / 10;
    }
    while carry > 0 {
        out.push((carry % 10) as u8);
        carry /= 10;
    }
    out.reverse();
    out
}

fn add_one(v: &[u8]) -> Vec<u8> {
    let mut out = v.to_vec();
    for d in out.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return out;
        }
    }
    out.insert(0, 1);
    out
}

/// Compares two non-negative integers given as digits (leading zeros allowed).
fn cmp_digits(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |v: &[u8]| v.iter().position(|&d| d != 0).map_or(0, |i| v.len() - i);
    let (la, lb) = (strip(a), strip(b));
    la.cmp(&lb)
        .then_with(|| a[a.len() - la..].cmp(&b[b.len() - lb..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digit path of [`Step::meets`] (ends of any length) agrees with the machine-integer
    /// path on every end pair drawn from a grid of short decimals, open and closed, for several
    /// steps; and on ends beyond `u128` it still finds (or rules out) a multiple.
    #[test]
    fn multiples_are_found_the_same_on_digits_and_in_machine_integers() {
        let ends: Vec<Dec> = (0..=60u32)
            .flat_map(|v| {
                [-2i16, -1, 0].map(|e| {
                    let digits: Vec<u8> = v.to_string().bytes().map(|b| b - b'0').collect();
                    Dec::new(&digits, e)
                })
            })
            .collect();
        let mut compared = 0;
        for m in [0.5, 0.25, 0.3, 0.05, 2.5, 0.7, 0.125] {
            let step = Step::of(m).unwrap();
            for &l in &ends {
                for &h in &ends {
                    for (lc, hc) in [(true, true), (true, false), (false, true), (false, false)] {
                        let fast = step.meets_u128((l, lc), (h, hc)).unwrap();
                        assert_eq!(
                            step.meets_digits((l, lc), (h, hc)),
                            fast,
                            "{m}: {l:?} {lc} .. {h:?} {hc}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 100_000);
        // 10^39 and 10^39 + t/10 (no u128 holds them in units of 0.1).
        let big = |t: Option<u8>| {
            let mut d = vec![1u8];
            d.extend(std::iter::repeat_n(0, 39));
            match t {
                None => Dec::new(&d, 0),
                Some(t) => {
                    d.push(t);
                    Dec::new(&d, -1)
                }
            }
        };
        let step = Step::of(0.5).unwrap();
        let (at, half) = (big(None), big(Some(5)));
        assert!(step.meets_u128((at, true), (half, true)).is_none());
        assert!(step.meets_digits((at, true), (half, true)));
        assert!(step.meets_digits((at, false), (half, true)));
        assert!(!step.meets_digits((at, false), (half, false)));
        let step = Step::of(0.3).unwrap();
        // 10^39 is 10^40 ≡ 1 (mod 3) units of 0.1: the next multiple is 10^39 + 0.2.
        assert!(!step.meets_digits((at, false), (big(Some(1)), true)));
        assert!(step.meets_digits((at, false), (big(Some(2)), true)));
    }
}
