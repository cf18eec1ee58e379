//! Installs the global tracing subscriber from [`LoggingSettings`].

use tracing_subscriber::EnvFilter;

use super::resolve::LoggingSettings;
use super::LogFormat;

/// Installs the process-wide subscriber: JSON lines or human-readable lines, filtered by
/// `settings.filter`. Fails if the filter is invalid or a subscriber is already installed.
pub fn init_logging(settings: &LoggingSettings) -> Result<(), String> {
    let filter = EnvFilter::try_new(&settings.filter)
        .map_err(|e| format!("invalid log filter '{}': {e}", settings.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        // Span fields (request_id) are included in every line of both formats.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(true).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
