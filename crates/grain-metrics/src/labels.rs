//! The closed sets of label values. Each enum lists every value its label can take.

/// `finish_reason` label of `grain_request_success_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReasonLabel {
    Stop,
    Length,
}

impl FinishReasonLabel {
    pub const ALL: [Self; 2] = [Self::Stop, Self::Length];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// `error` label of `grain_request_failure_total`: why a chat-completion request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorLabel {
    InvalidRequest,
    InvalidImage,
    ContextLengthExceeded,
    ModelNotFound,
    Unauthorized,
    Overloaded,
    ShuttingDown,
    NotReady,
    Timeout,
    /// The client went away before the response was complete.
    Cancelled,
    Internal,
}

impl ErrorLabel {
    pub const ALL: [Self; 11] = [
        Self::InvalidRequest,
        Self::InvalidImage,
        Self::ContextLengthExceeded,
        Self::ModelNotFound,
        Self::Unauthorized,
        Self::Overloaded,
        Self::ShuttingDown,
        Self::NotReady,
        Self::Timeout,
        Self::Cancelled,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidImage => "invalid_image",
            Self::ContextLengthExceeded => "context_length_exceeded",
            Self::ModelNotFound => "model_not_found",
            Self::Unauthorized => "unauthorized",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::NotReady => "not_ready",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }
}

/// `phase` label of `grain_step_duration_seconds`: what one scheduler step computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPhase {
    /// Only prefill chunks.
    Prefill,
    /// Only decode tokens.
    Decode,
    /// Prefill chunks and decode tokens together.
    Mixed,
}

impl StepPhase {
    pub const ALL: [Self; 3] = [Self::Prefill, Self::Decode, Self::Mixed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::Decode => "decode",
            Self::Mixed => "mixed",
        }
    }
}

/// `source` label of `grain_granularity_selected_total`: who chose an image's granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GranularitySourceLabel {
    Router,
    Detail,
    Request,
    Default,
    /// The load-adaptive ceiling lowered the choice.
    Ceiling,
}

impl GranularitySourceLabel {
    pub const ALL: [Self; 5] = [
        Self::Router,
        Self::Detail,
        Self::Request,
        Self::Default,
        Self::Ceiling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Router => "router",
            Self::Detail => "detail",
            Self::Request => "request",
            Self::Default => "default",
            Self::Ceiling => "ceiling",
        }
    }
}

/// Label value for a granularity that is not one of the model's candidates (should not happen;
/// kept so a bug cannot create unbounded series).
pub const OTHER_GRANULARITY: &str = "other";
