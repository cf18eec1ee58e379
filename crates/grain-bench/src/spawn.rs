//! `--spawn`: start `grain serve` for the benchmark and stop it afterwards, so that one command
//! reproduces a table.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A server process that is killed when this is dropped.
pub struct Spawned {
    child: Child,
    pub base_url: String,
    pub log: PathBuf,
    pub command: Vec<String>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (there is a short window in which another process could take it).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Start `bin serve --host 127.0.0.1 --port P [--model DIR] EXTRA…` and wait until `/ready` answers 200.
pub async fn spawn(
    bin: &Path,
    model: Option<&Path>,
    port: u16,
    extra: &[String],
    timeout: Duration,
    log: Option<&Path>,
    http: &reqwest::Client,
) -> anyhow::Result<Spawned> {
    let port = if port == 0 {
        free_port().context("finding a free port")?
    } else {
        port
    };
    let log = match log {
        Some(p) => p.to_path_buf(),
        None => std::env::temp_dir().join(format!("grain-bench-server-{port}.log")),
    };
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
    ];
    if let Some(m) = model {
        args.push("--model".into());
        args.push(m.display().to_string());
    }
    args.extend(extra.iter().cloned());
    let child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut command = vec![bin.display().to_string()];
    command.extend(args);
    let mut spawned = Spawned {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
        log,
        command,
    };
    let ready = format!("{}/ready", spawned.base_url);
    let started = Instant::now();
    loop {
        if let Some(status) = spawned.child.try_wait()? {
            bail!(
                "the server exited ({status}) before it was ready; last lines of {}:\n{}",
                spawned.log.display(),
                tail(&spawned.log, 20)
            );
        }
        if let Ok(r) = http
            .get(&ready)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(spawned);
            }
        }
        if started.elapsed() > timeout {
            bail!(
                "the server was not ready after {:.0} s; last lines of {}:\n{}",
                timeout.as_secs_f64(),
                spawned.log.display(),
                tail(&spawned.log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
