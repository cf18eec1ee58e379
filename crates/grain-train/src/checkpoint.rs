//! Writing the trained checkpoint: every safetensors file that holds router tensors is rewritten
//! with the new values (in each tensor's original dtype); every other file but the base's own
//! training reports is hard-linked (or copied when linking is impossible, e.g. across file
//! systems).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use grain_model::weights::{canonical_name, safetensors_files};

use crate::error::{io, Result, TrainError};

/// The reports `train-router` and `train-lmm` write next to a checkpoint: not carried over.
const REPORT_FILES: [&str; 2] = [crate::cli::REPORT_FILE, crate::finetune::LMM_REPORT_FILE];

/// Writes `contents` to `path` as a new file. `path` may be a hard link into the base checkpoint
/// (every file that is not rewritten is linked): writing through it would change the base too,
/// so any existing file is removed first.
pub fn write_new_file(path: &Path, contents: &[u8]) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, e)),
    }
    std::fs::write(path, contents).map_err(|e| io(path, e))
}

/// Write `src` with the router tensors replaced by `router` (canonical names `router.…`) to `out`.
/// Returns the names of the files that were rewritten.
pub fn write_checkpoint(
    src: &Path,
    out: &Path,
    router: &BTreeMap<String, Tensor>,
) -> Result<Vec<String>> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| io(out, e))?
            .next()
            .is_some()
    {
        return Err(TrainError::Setup(format!(
            "output directory {} exists and is not empty",
            out.display()
        )));
    }
    if src.canonicalize().map_err(|e| io(src, e))?
        == out.canonicalize().unwrap_or_else(|_| out.to_path_buf())
    {
        return Err(TrainError::Setup("--out must differ from --model".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let shards = safetensors_files(src)?;
    let mut rewritten = Vec::new();
    let mut written = 0usize;
    for entry in std::fs::read_dir(src).map_err(|e| io(src, e))? {
        let entry = entry.map_err(|e| io(src, e))?;
        let path = entry.path();
        if !path.is_file() {
            // Checkpoints are flat; sub-folders (caches, git metadata) are not part of the model.
            continue;
        }
        if REPORT_FILES.iter().any(|r| entry.file_name() == *r) {
            // The base's own training report describes the base, not this checkpoint.
            continue;
        }
        let dest = out.join(entry.file_name());
        if shards.contains(&path) {
            let mut tensors: HashMap<String, Tensor> =
                candle_core::safetensors::load(&path, &Device::Cpu)?;
            let mut changed = false;
            for (raw, t) in tensors.iter_mut() {
                let Some(new) = canonical_name(raw).and_then(|c| router.get(&c)) else {
                    continue;
                };
                if new.dims() != t.dims() {
                    return Err(TrainError::Setup(format!(
                        "trained `{raw}` has shape {:?}, the checkpoint {:?}",
                        new.dims(),
                        t.dims()
                    )));
                }
                *t = new.to_device(&Device::Cpu)?.to_dtype(t.dtype())?;
                changed = true;
                written += 1;
            }
            if changed {
                candle_core::safetensors::save(&tensors, &dest)?;
                rewritten.push(entry.file_name().to_string_lossy().into_owned());
                continue;
            }
        }
        if std::fs::hard_link(&path, &dest).is_err() {
            std::fs::copy(&path, &dest).map_err(|e| io(&dest, e))?;
        }
    }
    if written != router.len() {
        return Err(TrainError::Setup(format!(
            "wrote {written} of {} router tensors: the checkpoint's names did not all match",
            router.len()
        )));
    }
    Ok(rewritten)
}
