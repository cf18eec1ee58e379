//! Fixture locations and loaders shared by the test modules.

use std::path::{Path, PathBuf};

use grain_tokenizer::Tokenizer;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// A copy of `src` without `tokenizer.json`, so loading has to convert
/// `tokenizer.model`.
pub fn without_tokenizer_json(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(src).expect("fixture dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().expect("file name");
        if name == "tokenizer.json" || name == "model.safetensors" || !path.is_file() {
            continue;
        }
        std::fs::copy(&path, dir.path().join(name)).expect("copy fixture file");
    }
    dir
}

/// The tokenizer fixture loaded both ways: (from tokenizer.model, from tokenizer.json).
pub fn both_tokenizers() -> (Tokenizer, Tokenizer) {
    let src = fixtures().join("tokenizer");
    let spm_dir = without_tokenizer_json(&src);
    let native = Tokenizer::from_dir(spm_dir.path()).expect("load tokenizer.model");
    let json = Tokenizer::from_dir(&src).expect("load tokenizer.json");
    (native, json)
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}
