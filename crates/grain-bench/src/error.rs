//! Errors in what the user asked for (workload and sweep specifications) and in what a server sent.

/// A specification on the command line or in a workload file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("granularity mode `{mode}`: {why}")]
    Mode { mode: String, why: String },
    #[error("weights: {0}")]
    Weights(String),
    #[error("range `{0}`: expected N or MIN-MAX with MIN <= MAX")]
    Range(String),
    #[error("image size `{0}`: expected WIDTHxHEIGHT (both >= 1), or `realistic`")]
    ImageSize(String),
    #[error("{path}:{line}: {why}")]
    Dataset {
        path: String,
        line: usize,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Why one benchmark request failed. The `kind` strings are the keys of the error counts in reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("connection: {0}")]
    Transport(String),
    #[error("timed out after {0:.0} s")]
    Timeout(f64),
    #[error("malformed response: {0}")]
    Protocol(String),
    #[error("error event in the stream: {0}")]
    Stream(String),
}

impl RequestError {
    /// A short, bounded label for error counts (`http_429`, `transport`, …).
    pub fn kind(&self) -> String {
        match self {
            RequestError::Status { status, .. } => format!("http_{status}"),
            RequestError::Transport(_) => "transport".into(),
            RequestError::Timeout(_) => "timeout".into(),
            RequestError::Protocol(_) => "protocol".into(),
            RequestError::Stream(_) => "stream_error".into(),
        }
    }
}
