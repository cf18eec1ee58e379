//! Checks of single values: host names, origins, devices, model sources, key files.

use std::path::Path;

use super::resolve::{Device, ModelSource};

pub(super) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An IP address or an RFC 1123 host name.
pub(super) fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// `scheme://host[:port]`, nothing after.
pub(super) fn valid_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.contains(['/', '?', '#', '@']) {
        return false;
    }
    let valid_port = |p: &str| p.parse::<u16>().is_ok();
    if let Some(v6) = rest.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return false;
        };
        return ip.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port));
    }
    match rest.split_once(':') {
        Some((host, port)) => valid_host(host) && valid_port(port),
        None => valid_host(rest),
    }
}

pub(crate) fn parse_device(value: &str) -> Result<Device, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(Device::Auto),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("'{value}' is not auto, cpu, cuda or cuda:N")),
    }
}

/// A path that exists is a local model; `owner/name` otherwise is a Hugging Face repo id.
pub(super) fn model_source(model: &str, revision: &str) -> Result<ModelSource, String> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(ModelSource::Local(path.to_path_buf()));
    }
    if path.exists() {
        return Err(format!("'{model}' is a file; expected a model directory"));
    }
    let looks_like_path = model.starts_with(['/', '.', '~']) || model.matches('/').count() != 1;
    let repo_chars = |s: &str| {
        !s.is_empty()
            && s.len() <= 96
            && !s.starts_with(['-', '.'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match model.split_once('/') {
        Some((owner, name)) if !looks_like_path && repo_chars(owner) && repo_chars(name) => {
            Ok(ModelSource::HuggingFace {
                repo: model.to_owned(),
                revision: revision.to_owned(),
            })
        }
        _ => Err(format!(
            "'{model}' is not an existing directory nor a Hugging Face repo id (owner/name)"
        )),
    }
}

pub(super) fn read_keys_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}
