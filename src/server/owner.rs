//! Who serves a log directory: a running `logd serve` holds an flock on `LOGDIR/serve.lock`
//! for its whole life and names its URL in `LOGDIR/serve.json`. A local writer that finds
//! the lock held fails with that URL instead of a bare "partition locked"; a second server
//! on the same directory is refused the same way. The lock, not the JSON file, is the truth:
//! a file left by a killed server names nobody.

use crate::error::{setup, Error, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::path::Path;

const LOCK: &str = "serve.lock";
const INFO: &str = "serve.json";

/// Held while serving; dropping it releases the directory.
pub struct Owner {
    _lock: Flock<File>,
    info: std::path::PathBuf,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.info);
    }
}

/// Takes the directory for a server at `url`.
pub fn claim(root: &Path, url: &str) -> Result<Owner> {
    std::fs::create_dir_all(root).map_err(|e| setup(format!("{}: {e}", root.display())))?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(LOCK))
        .map_err(|e| setup(format!("{}: {e}", root.join(LOCK).display())))?;
    let lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err(_) => {
            let by = served_url(root).unwrap_or_else(|| "another server".into());
            return Err(setup(format!(
                "{} is already served by logd serve at {by}",
                root.display()
            )));
        }
    };
    let info = root.join(INFO);
    let body = serde_json::json!({"url": url, "pid": std::process::id()}).to_string();
    crate::log::meta::write_atomic(&info, body.as_bytes())
        .map_err(Error::io_with(|| format!("writing {}", info.display())))?;
    Ok(Owner { _lock: lock, info })
}

/// The URL of the server holding `root`, if one is running.
pub fn served_by(root: &Path) -> Option<String> {
    let f = OpenOptions::new().write(true).open(root.join(LOCK)).ok()?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(_) => None,
        Err(_) => Some(served_url(root).unwrap_or_else(|| "(unknown URL)".into())),
    }
}

fn served_url(root: &Path) -> Option<String> {
    let s = std::fs::read_to_string(root.join(INFO)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    v.get("url")?.as_str().map(str::to_string)
}

/// Refuses local writing to a served directory, naming the server.
pub fn refuse_if_served(root: &Path, tool: &str) -> Result<()> {
    match served_by(root) {
        None => Ok(()),
        Some(url) => Err(setup(format!(
            "{} is served by logd serve at {url}: write through it with `{tool} --server {url}`",
            root.display()
        ))),
    }
}
