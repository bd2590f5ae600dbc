//! Where each `produce --source ID` stands in its input, so that rerunning the same command
//! after a crash appends no duplicate and skips nothing.
//!
//! The truth lives in the log itself: every frame a source writes ends with a mark of the
//! input position after its last record (see `format`), under the frame's CRC, so the mark
//! is durable exactly when the records are. A partition's last mark says which of the
//! source's records it already holds. `sources/ID.json` beside topic.json is only a floor
//! and a scan hint, written once every partition was synced: every record of the source up
//! to `pos` is in the log, and partition p's marks after it start at offset `next[p]`.

use crate::error::{Error, Result};
use crate::log::format::{source_mark, SourcePos};
use crate::log::meta;
use crate::log::reader::PartitionReader;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const KIND: &str = "kappa.source";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    pub pos: SourcePos,
    /// Each partition's end offset when `pos` was durable.
    pub next: Vec<u64>,
}

pub fn dir(topic_dir: &Path) -> PathBuf {
    topic_dir.join("sources")
}

pub fn path(topic_dir: &Path, id: &str) -> PathBuf {
    dir(topic_dir).join(format!("{id}.json"))
}

pub fn read(topic_dir: &Path, id: &str) -> Result<Option<SourceCheckpoint>> {
    meta::read_checked(&path(topic_dir, id), KIND).map_err(Error::Data)
}

/// Replaces the checkpoint atomically (temp file, fsync, rename, directory fsync).
pub fn write(topic_dir: &Path, id: &str, cp: &SourceCheckpoint) -> Result<()> {
    let d = dir(topic_dir);
    std::fs::create_dir_all(&d).map_err(Error::io_with(|| format!("creating {}", d.display())))?;
    let p = path(topic_dir, id);
    meta::write_checked(&p, KIND, cp).map_err(Error::io_with(|| format!("writing {}", p.display())))
}

/// The last mark of source `id` in a partition, reading frames from offset `from` on.
pub fn last_mark(dir: &Path, from: u64, id: &str) -> Result<Option<SourcePos>> {
    let mut r = PartitionReader::open(dir)?;
    r.seek(from)?;
    let mut last = None;
    while let Some(f) = r.next_frame()? {
        if let Some((mid, pos)) = source_mark(f.bytes, &f.info) {
            if mid == id.as_bytes() {
                last = Some(pos);
            }
        }
    }
    Ok(last)
}
