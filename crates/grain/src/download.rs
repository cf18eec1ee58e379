//! `--model <hf repo id>`: fetch a checkpoint snapshot through the Hugging Face Hub cache
//! (`HF_HOME`), with a progress bar, and return the local snapshot directory.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use hf_hub::api::tokio::ApiBuilder;
use hf_hub::{Repo, RepoType};

/// Files a checkpoint needs; everything else in the repo (README, images, .bin duplicates) is skipped.
fn wanted(name: &str) -> bool {
    !name.contains('/')
        && (name.ends_with(".safetensors")
            || name.ends_with(".json")
            || name.ends_with(".jinja")
            || name == "tokenizer.model")
}

pub fn snapshot(repo_id: &str, revision: &str) -> anyhow::Result<PathBuf> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let api = ApiBuilder::from_env().with_progress(true).build().context("setting up the Hugging Face Hub client")?;
        let repo = api.repo(Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string()));
        let info = repo.info().await.map_err(|e| {
            anyhow!(
                "cannot reach the Hugging Face Hub for `{repo_id}` ({e}). Without network access, download the \
                 checkpoint elsewhere and pass its local directory with --model"
            )
        })?;
        let mut dir = None;
        for s in info.siblings.iter().filter(|s| wanted(&s.rfilename)) {
            let path = repo.get(&s.rfilename).await.with_context(|| format!("downloading {}", s.rfilename))?;
            dir = path.parent().map(PathBuf::from);
        }
        dir.ok_or_else(|| anyhow!("`{repo_id}` has no safetensors checkpoint files"))
    })
}
