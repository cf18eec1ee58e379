//! Summaries of one run point: latency percentiles, throughput, token counts and errors.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::client::RequestRecord;

/// Percentile `q` in [0, 1] of sorted data with linear interpolation between closest ranks (the
/// definition numpy's `percentile` uses by default). `None` for no data.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Distribution of one latency, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dist {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: percentile(&v, 0.50)?,
            p90: percentile(&v, 0.90)?,
            p99: percentile(&v, 0.99)?,
            max: *v.last()?,
        })
    }
}

/// Everything measured at one run point, from the client's side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub completed: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, usize>,
    /// From the first request sent to the last response finished.
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Prompt plus completion tokens per second (prompt counts as the server reports it).
    pub total_tokens_per_s: f64,
    pub ttft_s: Option<Dist>,
    /// Gaps between consecutive streamed tokens, over all requests.
    pub itl_s: Option<Dist>,
    /// Per request: (e2e − TTFT) / (completion tokens − 1).
    pub tpot_s: Option<Dist>,
    pub e2e_s: Option<Dist>,
    pub mean_prompt_tokens: Option<f64>,
    /// Prompt tokens served from the server's prefix cache, per request (when it reports them).
    pub mean_cached_tokens: Option<f64>,
    pub mean_visual_tokens: Option<f64>,
    /// What the same images would have cost at the finest granularity (Grain's usage extension).
    pub mean_visual_tokens_full: Option<f64>,
    pub mean_completion_tokens: f64,
    pub total_completion_tokens: u64,
    /// Requests per granularity the server reported choosing (per image).
    pub granularity_counts: BTreeMap<u32, usize>,
}

fn mean_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut n, mut s) = (0usize, 0.0);
    for v in values {
        n += 1;
        s += v;
    }
    (n > 0).then(|| s / n as f64)
}

impl Summary {
    /// `duration_s` is the wall time of the measured phase.
    pub fn from_records(records: &[RequestRecord], duration_s: f64) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let mut errors = BTreeMap::new();
        for r in records {
            if let Some(e) = &r.error {
                *errors.entry(e.kind()).or_insert(0) += 1;
            }
        }
        let completion: u64 = ok.iter().map(|r| u64::from(r.completion_tokens)).sum();
        let prompt: u64 = ok
            .iter()
            .filter_map(|r| r.prompt_tokens)
            .map(u64::from)
            .sum();
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        let mut granularity_counts = BTreeMap::new();
        for r in &ok {
            for g in &r.granularity {
                *granularity_counts.entry(*g).or_insert(0) += 1;
            }
        }
        Self {
            completed: ok.len(),
            failed: records.len() - ok.len(),
            errors,
            duration_s,
            requests_per_s: per_s(ok.len() as f64),
            output_tokens_per_s: per_s(completion as f64),
            total_tokens_per_s: per_s((completion + prompt) as f64),
            ttft_s: Dist::of(ok.iter().filter_map(|r| r.ttft_s)),
            itl_s: Dist::of(ok.iter().flat_map(|r| r.itl_s.iter().copied())),
            tpot_s: Dist::of(ok.iter().filter_map(|r| r.tpot_s())),
            e2e_s: Dist::of(ok.iter().map(|r| r.e2e_s)),
            mean_prompt_tokens: mean_of(ok.iter().filter_map(|r| r.prompt_tokens).map(f64::from)),
            mean_cached_tokens: mean_of(ok.iter().filter_map(|r| r.cached_tokens).map(f64::from)),
            mean_visual_tokens: mean_of(ok.iter().filter_map(|r| r.visual_tokens).map(f64::from)),
            mean_visual_tokens_full: mean_of(
                ok.iter()
                    .filter_map(|r| r.visual_tokens_full)
                    .map(f64::from),
            ),
            mean_completion_tokens: if ok.is_empty() {
                0.0
            } else {
                completion as f64 / ok.len() as f64
            },
            total_completion_tokens: completion,
            granularity_counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RequestError;

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4, 10], [50, 90, 99]) == [3.0, 7.6, 9.76]
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert!((percentile(&v, 0.9).unwrap() - 7.6).abs() < 1e-12);
        assert!((percentile(&v, 0.99).unwrap() - 9.76).abs() < 1e-12);
        // numpy.percentile([5, 1], 50) == 3.0 (sorted first by Dist::of)
        assert_eq!(Dist::of([5.0, 1.0]).unwrap().p50, 3.0);
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[2.5], 0.99), Some(2.5));
    }

    fn rec(e2e: f64, ttft: f64, tokens: u32, prompt: u32) -> RequestRecord {
        RequestRecord {
            e2e_s: e2e,
            ttft_s: Some(ttft),
            itl_s: vec![(e2e - ttft) / f64::from(tokens - 1); tokens as usize - 1],
            completion_tokens: tokens,
            prompt_tokens: Some(prompt),
            visual_tokens: Some(prompt - 10),
            granularity: vec![36],
            ..RequestRecord::default()
        }
    }

    #[test]
    fn summary_counts_only_successes_in_throughput() {
        let failed = RequestRecord {
            error: Some(RequestError::Status {
                status: 429,
                message: "busy".into(),
            }),
            completion_tokens: 99, // ignored: the request failed
            ..RequestRecord::default()
        };
        let records = vec![rec(2.0, 0.5, 4, 100), rec(4.0, 1.0, 7, 200), failed];
        let s = Summary::from_records(&records, 5.0);
        assert_eq!((s.completed, s.failed), (2, 1));
        assert_eq!(s.errors.get("http_429"), Some(&1));
        assert_eq!(s.total_completion_tokens, 11);
        assert!((s.output_tokens_per_s - 11.0 / 5.0).abs() < 1e-12);
        assert!((s.total_tokens_per_s - 311.0 / 5.0).abs() < 1e-12);
        assert!((s.requests_per_s - 0.4).abs() < 1e-12);
        assert_eq!(s.mean_prompt_tokens, Some(150.0));
        assert_eq!(s.mean_visual_tokens, Some(140.0));
        assert_eq!(s.mean_visual_tokens_full, None);
        // TPOT: (2-0.5)/3 = 0.5 and (4-1)/6 = 0.5.
        let tpot = s.tpot_s.unwrap();
        assert!((tpot.p50 - 0.5).abs() < 1e-12 && tpot.count == 2);
        assert_eq!(s.itl_s.unwrap().count, 3 + 6);
        assert_eq!(s.granularity_counts.get(&36), Some(&2));
    }
}
