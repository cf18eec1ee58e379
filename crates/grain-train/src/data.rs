//! Training data: JSONL lines `{"image": PATH, "question": TEXT, "answer": TEXT}`. Relative image
//! paths are resolved against the JSONL file's folder.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{io, Result, TrainError};

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Example {
    pub image: PathBuf,
    pub question: String,
    pub answer: String,
    /// Optional tag (e.g. `fine`/`coarse`): reports break the router's choices down by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| TrainError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let mut ex: Example = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let img = ex.image.to_string_lossy();
        if img.starts_with("http://") || img.starts_with("https://") {
            return Err(err(
                "image URLs are not supported yet; download the images and give paths".into(),
            ));
        }
        if ex.answer.trim().is_empty() {
            return Err(err("the answer is empty: there is nothing to score".into()));
        }
        if ex.image.is_relative() {
            ex.image = base.join(&ex.image);
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(TrainError::Setup(format!(
            "{} has no examples",
            path.display()
        )));
    }
    Ok(out)
}

/// Shuffle with `seed` and split off `val_fraction` (at least one validation example when the
/// fraction is positive, and always at least one training example). Returns (train, val) indices.
pub fn split(n: usize, val_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(TrainError::Setup(format!(
            "--val-split must be in [0, 1), got {val_fraction}"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut n_val = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 {
        n_val = n_val.max(1);
    }
    if n_val >= n {
        return Err(TrainError::Setup(format!(
            "{n} examples are too few for a validation split of {val_fraction}"
        )));
    }
    let train = idx.split_off(n_val);
    Ok((train, idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_a_partition_and_reproducible() {
        let (t, v) = split(10, 0.2, 7).unwrap();
        assert_eq!((t.len(), v.len()), (8, 2));
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(split(10, 0.2, 7).unwrap(), (t, v));
        assert!(split(1, 0.5, 0).is_err());
        assert_eq!(split(3, 0.0, 0).unwrap().1.len(), 0);
    }

    #[test]
    fn reads_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"image\":\"a.png\",\"question\":\"q\",\"answer\":\"x\"}\n\n{\"image\":\"/abs/b.png\",\"question\":\"q2\",\"answer\":\"y\"}\n",
        )
        .unwrap();
        let ex = read_jsonl(&p).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].image, dir.path().join("a.png"));
        assert_eq!(ex[1].image, PathBuf::from("/abs/b.png"));
        std::fs::write(&p, "{\"image\":\"a.png\",\"question\":\"q\"}\n").unwrap();
        let e = read_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
