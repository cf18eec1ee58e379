//! Per-request granularity policy: how an image's granularity is chosen from OpenAI's
//! `image_url.detail`, the request's `granularity` extension, the server default, the router, and
//! an optional server-wide cap. Pure and small so the scheduler and `inspect` share it.

/// What a request (or the server default) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GranularityChoice {
    /// Let the router decide (or the no-router fallback).
    Auto,
    /// A fixed candidate (36, 72, 144, 288 or 576).
    #[serde(untagged)]
    Fixed(u32),
}

/// OpenAI's per-image `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    #[default]
    Auto,
    Low,
    High,
}

/// Why an image got its granularity (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GranularitySource {
    Router,
    Detail,
    Request,
    Default,
}

impl GranularitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Router => "router",
            Self::Detail => "detail",
            Self::Request => "request",
            Self::Default => "default",
        }
    }
}

/// The outcome of applying the policy before the router has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Run the router; apply [`Policy::after_router`] to its choice.
    Router,
    Fixed {
        granularity: u32,
        source: GranularitySource,
    },
}

/// Server-side policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Candidates, coarsest first (from the checkpoint).
    pub candidates: Vec<u32>,
    /// What `auto` means when the request says nothing.
    pub default: GranularityChoice,
    /// Granularity for `auto` when the checkpoint has no router.
    pub no_router_fallback: u32,
    /// Never exceed this granularity (applies to every source).
    pub cap: Option<u32>,
}

impl Policy {
    pub fn new(candidates: Vec<u32>) -> Self {
        let finest = candidates.iter().copied().max().unwrap_or(576);
        Self {
            candidates,
            default: GranularityChoice::Auto,
            no_router_fallback: finest,
            cap: None,
        }
    }

    pub fn coarsest(&self) -> u32 {
        self.candidates.iter().copied().min().unwrap_or(36)
    }

    pub fn finest(&self) -> u32 {
        self.candidates.iter().copied().max().unwrap_or(576)
    }

    /// Is `g` one of the candidates?
    pub fn is_candidate(&self, g: u32) -> bool {
        self.candidates.contains(&g)
    }

    /// Decide for one image. `request` is the request-level extension field.
    pub fn resolve(
        &self,
        detail: Detail,
        request: GranularityChoice,
        has_router: bool,
    ) -> Resolved {
        let fixed = |g: u32, source| Resolved::Fixed {
            granularity: self.capped(g),
            source,
        };
        // An explicit request-level granularity is the caller's deliberate choice for every image;
        // `detail` is OpenAI's coarser per-image hint and applies when the request says `auto`.
        match request {
            GranularityChoice::Fixed(g) => return fixed(g, GranularitySource::Request),
            GranularityChoice::Auto => {}
        }
        match detail {
            Detail::Low => return fixed(self.coarsest(), GranularitySource::Detail),
            Detail::High => return fixed(self.finest(), GranularitySource::Detail),
            Detail::Auto => {}
        }
        match self.default {
            GranularityChoice::Fixed(g) => fixed(g, GranularitySource::Default),
            GranularityChoice::Auto if has_router => Resolved::Router,
            GranularityChoice::Auto => fixed(self.no_router_fallback, GranularitySource::Default),
        }
    }

    /// The router's pick after the cap.
    pub fn after_router(&self, g: u32) -> u32 {
        self.capped(g)
    }

    /// Apply the cap: the largest candidate not above it (or the coarsest when none is).
    pub fn capped(&self, g: u32) -> u32 {
        match self.cap {
            Some(cap) if g > cap => self
                .candidates
                .iter()
                .copied()
                .filter(|&c| c <= cap)
                .max()
                .unwrap_or_else(|| self.coarsest()),
            _ => g,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GranularitySource as S;

    fn policy() -> Policy {
        Policy::new(vec![36, 72, 144, 288, 576])
    }

    #[test]
    fn detail_maps_to_extremes() {
        let p = policy();
        assert_eq!(
            p.resolve(Detail::Low, GranularityChoice::Auto, true),
            Resolved::Fixed {
                granularity: 36,
                source: S::Detail
            }
        );
        // An explicit request-level granularity wins over the per-image hint.
        assert_eq!(
            p.resolve(Detail::High, GranularityChoice::Fixed(72), true),
            Resolved::Fixed {
                granularity: 72,
                source: S::Request
            }
        );
    }

    #[test]
    fn request_then_default_then_router() {
        let mut p = policy();
        assert_eq!(
            p.resolve(Detail::Auto, GranularityChoice::Fixed(144), true),
            Resolved::Fixed {
                granularity: 144,
                source: S::Request
            }
        );
        assert_eq!(
            p.resolve(Detail::Auto, GranularityChoice::Auto, true),
            Resolved::Router
        );
        assert_eq!(
            p.resolve(Detail::Auto, GranularityChoice::Auto, false),
            Resolved::Fixed {
                granularity: 576,
                source: S::Default
            }
        );
        p.default = GranularityChoice::Fixed(72);
        assert_eq!(
            p.resolve(Detail::Auto, GranularityChoice::Auto, true),
            Resolved::Fixed {
                granularity: 72,
                source: S::Default
            }
        );
    }

    #[test]
    fn cap_applies_everywhere() {
        let mut p = policy();
        p.cap = Some(144);
        assert_eq!(
            p.resolve(Detail::High, GranularityChoice::Auto, true),
            Resolved::Fixed {
                granularity: 144,
                source: S::Detail
            }
        );
        assert_eq!(p.after_router(288), 144);
        assert_eq!(p.after_router(72), 72);
        p.cap = Some(10);
        assert_eq!(p.after_router(576), 36);
    }

    #[test]
    fn choice_deserialises_from_json() {
        assert_eq!(
            serde_json::from_str::<GranularityChoice>("\"auto\"").unwrap(),
            GranularityChoice::Auto
        );
        assert_eq!(
            serde_json::from_str::<GranularityChoice>("144").unwrap(),
            GranularityChoice::Fixed(144)
        );
    }
}
