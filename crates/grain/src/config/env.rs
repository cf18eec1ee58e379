//! The `GRAIN_*` environment layer, parsed by the flags' own clap definitions.
//!
//! Each variable is parsed on its own (as `--flag=value`), so one bad value does not hide the
//! others and every problem is reported with the variable's name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Command, FromArgMatches};

use super::{ConfigIssue, ServeArgs};

/// Variables with the prefix that are not configuration and must not be warned about.
const NOT_CONFIG: &[&str] = &["GRAIN_BIN"];

pub(super) struct EnvLayer {
    pub args: ServeArgs,
    /// `GRAIN_CONFIG`, kept apart because it chooses the file layer below this one.
    pub config: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// `--max-body-bytes` → `GRAIN_MAX_BODY_BYTES`.
pub(super) fn env_name(long: &str) -> String {
    format!("GRAIN_{}", long.replace('-', "_").to_ascii_uppercase())
}

pub(super) fn layer(
    environment: impl IntoIterator<Item = (String, String)>,
    issues: &mut Vec<ConfigIssue>,
) -> EnvLayer {
    let command = ServeArgs::augment_args(Command::new("grain-env").no_binary_name(true));
    let names: BTreeMap<String, String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(|long| (env_name(long), long.to_owned())))
        .collect();
    // Sorted, so problems come out in a stable order.
    let vars: BTreeMap<String, String> = environment
        .into_iter()
        .filter(|(k, _)| k.starts_with("GRAIN_"))
        .collect();

    let mut args = ServeArgs::default();
    let mut warnings = Vec::new();
    for (key, value) in vars {
        let Some(long) = names.get(&key) else {
            if !NOT_CONFIG.contains(&key.as_str()) {
                warnings.push(format!("unknown environment variable {key} ignored"));
            }
            continue;
        };
        let parsed = command
            .clone()
            .try_get_matches_from([format!("--{long}={value}")])
            .and_then(|m| ServeArgs::from_arg_matches(&m));
        match parsed {
            Ok(one) => args = args.merge(one),
            Err(e) => issues.push(ConfigIssue::new(key, clap_message(&e))),
        }
    }
    let config = args.config.take();
    EnvLayer {
        args,
        config,
        warnings,
    }
}

/// clap's message without its `error: ` prefix and usage hint.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}
