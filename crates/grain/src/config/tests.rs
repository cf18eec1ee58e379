//! Merge order, validation, redaction and the shipped config files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn flags(args: &[&str]) -> ServeArgs {
    let argv = std::iter::once("grain").chain(args.iter().copied());
    Cli::try_parse_from(argv).expect("flags parse").serve
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A file under the system temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "grain-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write temp file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn repo_file(name: &str) -> String {
    format!("{}/../../config/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn keys_of(errors: &ConfigErrors) -> Vec<&str> {
    errors.0.iter().map(|i| i.key.as_str()).collect()
}

#[test]
fn defaults_without_any_layer() {
    let cfg = load_from(&ServeArgs::default(), env(&[])).unwrap();
    assert_eq!(cfg.server.host, "127.0.0.1");
    assert_eq!(cfg.server.port, 8000);
    assert_eq!(cfg.server.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(cfg.server.request_timeout, Duration::from_secs(600));
    assert_eq!(cfg.model.source, ModelSource::EmbeddedTiny);
    assert_eq!(cfg.model.device, Device::Auto);
    assert_eq!(cfg.granularity.default, GranularityPolicy::Auto);
    assert_eq!(cfg.engine, grain_engine::EngineConfig::default());
    assert!(cfg.images.http.is_none());
    assert!(cfg.api_keys.is_empty());
    assert_eq!(cfg.logging.format, LogFormat::Pretty);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn file_then_env_then_flags() {
    let file =
        TempFile::new("[server]\nport = 1111\nmax_n = 3\n[logging]\nlog_filter = \"warn\"\n");
    let file_only = flags(&["--config", file.path()]);
    let with_env = env(&[("GRAIN_PORT", "2222"), ("GRAIN_MAX_N", "4")]);

    let cfg = load_from(&file_only, env(&[])).unwrap();
    assert_eq!((cfg.server.port, cfg.server.max_n), (1111, 3));
    assert_eq!(cfg.logging.filter, "warn");
    assert_eq!(cfg.source_file.as_deref(), Some(file.0.as_path()));

    let cfg = load_from(&file_only, with_env.clone()).unwrap();
    assert_eq!((cfg.server.port, cfg.server.max_n), (2222, 4));
    assert_eq!(
        cfg.logging.filter, "warn",
        "file value kept where env is silent"
    );

    let cfg = load_from(
        &flags(&["--config", file.path(), "--port", "3333"]),
        with_env,
    )
    .unwrap();
    assert_eq!((cfg.server.port, cfg.server.max_n), (3333, 4));
}

#[test]
fn config_file_can_come_from_the_environment() {
    let file = TempFile::new("[server]\nport = 4444\n");
    let cfg = load_from(&ServeArgs::default(), env(&[("GRAIN_CONFIG", file.path())])).unwrap();
    assert_eq!(cfg.server.port, 4444);
    // The flag beats the variable.
    let other = TempFile::new("[server]\nport = 5555\n");
    let cfg = load_from(
        &flags(&["--config", other.path()]),
        env(&[("GRAIN_CONFIG", file.path())]),
    )
    .unwrap();
    assert_eq!(cfg.server.port, 5555);
}

#[test]
fn env_lists_and_booleans_use_the_flag_parsers() {
    let cfg = load_from(
        &ServeArgs::default(),
        env(&[
            ("GRAIN_API_KEYS", "key-one-123,key-two-456"),
            ("GRAIN_ALLOW_HTTP_IMAGES", "true"),
            ("GRAIN_IMAGE_FETCH_ALLOWED_HOSTS", ".example.com,cdn.test"),
            ("GRAIN_LOG_FORMAT", "json"),
            ("GRAIN_DEVICE", "cuda:1"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.api_keys.len(), 2);
    assert_eq!(cfg.api_keys[1].expose(), "key-two-456");
    let http = cfg.images.http.expect("http fetch enabled");
    assert_eq!(http.allowed_hosts, vec![".example.com", "cdn.test"]);
    assert!(!http.allow_private);
    assert_eq!(cfg.logging.format, LogFormat::Json);
    assert_eq!(cfg.model.device, Device::Cuda(1));
}

#[test]
fn bare_boolean_flags_mean_true() {
    let cfg = load_from(
        &flags(&["--allow-http-images", "--image-fetch-allow-private"]),
        env(&[]),
    )
    .unwrap();
    assert!(cfg.images.http.expect("enabled").allow_private);
    let cfg = load_from(&flags(&["--allow-http-images=false"]), env(&[])).unwrap();
    assert!(cfg.images.http.is_none());
}

#[test]
fn every_problem_is_reported_at_once() {
    let file = TempFile::new("[server]\nmax_n = 0\n[engine]\nblock_size = 0\n");
    let err = load_from(
        &flags(&[
            "--config",
            file.path(),
            "--device",
            "tpu",
            "--default-granularity",
            "100",
        ]),
        env(&[
            ("GRAIN_PORT", "not-a-port"),
            ("GRAIN_LOG_FILTER", "info,[bad"),
        ]),
    )
    .unwrap_err();
    let keys = keys_of(&err);
    for expected in [
        "GRAIN_PORT",
        "server.max_n",
        "model.device",
        "engine",
        "granularity.default_granularity",
        "logging.log_filter",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {err}");
    }
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{} configuration problem(s):", err.0.len())),
        "{text}"
    );
    assert!(text.contains("block_size"), "{text}");
}

#[test]
fn unknown_file_keys_and_bad_toml_are_errors() {
    let file = TempFile::new("[server]\nprot = 1\n");
    let err = load_from(&flags(&["--config", file.path()]), env(&[])).unwrap_err();
    assert!(err.0[0].message.contains("prot"), "{err}");
    let file = TempFile::new("[server\nport = 1\n");
    assert!(load_from(&flags(&["--config", file.path()]), env(&[])).is_err());
    let err = load_from(&flags(&["--config", "/nonexistent/grain.toml"]), env(&[])).unwrap_err();
    assert!(err.0[0].message.contains("cannot read"), "{err}");
}

#[test]
fn cross_field_rules() {
    let err = load_from(
        &flags(&[
            "--max-body-bytes",
            "1000000",
            "--max-image-bytes",
            "1000000",
        ]),
        env(&[]),
    )
    .unwrap_err();
    assert_eq!(keys_of(&err), vec!["server.max_body_bytes"]);

    let err = load_from(
        &flags(&["--num-kv-blocks", "10", "--kv-cache-memory-mib", "10"]),
        env(&[]),
    )
    .unwrap_err();
    assert_eq!(keys_of(&err), vec!["engine.kv_cache_memory_mib"]);

    let err = load_from(
        &flags(&["--default-granularity", "576", "--max-granularity", "144"]),
        env(&[]),
    )
    .unwrap_err();
    assert_eq!(keys_of(&err), vec!["granularity.default_granularity"]);

    let err = load_from(
        &flags(&["--cors-allowed-origins", "https://ok.example,not an origin"]),
        env(&[]),
    )
    .unwrap_err();
    assert_eq!(keys_of(&err), vec!["server.cors_allowed_origins"]);
    assert!(load_from(
        &flags(&["--cors-allowed-origins", "http://[::1]:3000,*"]),
        env(&[])
    )
    .is_ok());
}

#[test]
fn model_sources() {
    let cfg = load_from(&flags(&["--model", "zhibinlan/AVG-LLaVA"]), env(&[])).unwrap();
    assert_eq!(
        cfg.model.source,
        ModelSource::HuggingFace {
            repo: "zhibinlan/AVG-LLaVA".into(),
            revision: "main".into()
        }
    );
    let dir = std::env::temp_dir();
    let cfg = load_from(&flags(&["--model", dir.to_str().unwrap()]), env(&[])).unwrap();
    assert_eq!(cfg.model.source, ModelSource::Local(dir));
    for bad in ["./no/such/dir", "a/b/c", "/nonexistent-grain-model"] {
        let err = load_from(&flags(&["--model", bad]), env(&[])).unwrap_err();
        assert_eq!(keys_of(&err), vec!["model.model"], "{bad}");
    }
}

#[test]
fn secrets_are_redacted_everywhere() {
    let key = "sk-very-secret-value";
    let cfg = load_from(&ServeArgs::default(), env(&[("GRAIN_API_KEYS", key)])).unwrap();
    let logged = format!("{cfg:?}");
    assert!(!logged.contains(key), "{logged}");
    assert!(logged.contains("[redacted]"), "{logged}");
    // The server still gets the real key.
    assert_eq!(cfg.server_config().api_keys, vec![key.to_owned()]);
    // Errors about keys name their position, never their value.
    let err = load_from(
        &ServeArgs::default(),
        env(&[("GRAIN_API_KEYS", "sk-ok-123456,has space")]),
    )
    .unwrap_err();
    assert!(!err.to_string().contains("has space"), "{err}");
    assert!(err.to_string().contains("key #2"), "{err}");
}

#[test]
fn api_keys_file_is_read() {
    let file = TempFile::new("# comment\nkey-from-file-1\n\n  key-from-file-2  \n");
    let cfg = load_from(
        &flags(&[
            "--api-keys-file",
            file.path(),
            "--api-keys",
            "key-from-flag",
        ]),
        env(&[]),
    )
    .unwrap();
    let keys: Vec<&str> = cfg.api_keys.iter().map(resolve::Secret::expose).collect();
    assert_eq!(
        keys,
        vec!["key-from-flag", "key-from-file-1", "key-from-file-2"]
    );
}

#[test]
fn unknown_environment_variables_are_warnings() {
    let cfg = load_from(
        &ServeArgs::default(),
        env(&[
            ("GRAIN_PROT", "1"),
            ("GRAIN_BIN", "/x/grain"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(
        cfg.warnings,
        vec!["unknown environment variable GRAIN_PROT ignored"]
    );
}

#[test]
fn shipped_default_toml_equals_the_built_in_defaults() {
    let built_in = load_from(&ServeArgs::default(), env(&[])).unwrap();
    let path = repo_file("default.toml");
    let from_file = load_from(&flags(&["--config", &path]), env(&[])).unwrap();
    assert_eq!(from_file.server, built_in.server);
    assert_eq!(from_file.model, built_in.model);
    assert_eq!(from_file.engine, built_in.engine);
    assert_eq!(from_file.granularity, built_in.granularity);
    assert_eq!(from_file.images, built_in.images);
    assert_eq!(from_file.logging, built_in.logging);
    assert!(from_file.api_keys.is_empty());
}

#[test]
fn shipped_gpu_config_is_valid() {
    let path = repo_file("avg-llava-7b-gpu.toml");
    let cfg = load_from(
        &flags(&["--config", &path]),
        env(&[("GRAIN_API_KEYS", "sk-test-1234")]),
    )
    .unwrap();
    assert_eq!(cfg.model.device, Device::Cuda(0));
    assert_eq!(cfg.model.dtype, Dtype::Bf16);
    assert!(matches!(cfg.model.source, ModelSource::HuggingFace { .. }));
    assert_eq!(cfg.kv_cache_memory_bytes, Some(40 * 1024 * 1024 * 1024));
    assert_eq!(cfg.listen_addr(), "0.0.0.0:8000");
    let server = cfg.server_config();
    assert_eq!(server.limits.max_n, 8);
    assert_eq!(server.model_aliases, vec!["zhibinlan/AVG-LLaVA"]);
}
