//! The sparse offset index and time index of a segment. Both are caches derived from the
//! log: entries are hints that a reader checks against the frame it lands on, and recovery
//! rebuilds them whenever they are missing, short or disagree with the log.
//!
//! An entry is written for the first frame of a segment and for every frame that starts at
//! least INDEX_INTERVAL_BYTES after the previous entry, so rebuilding from the log gives
//! the same entries the writer wrote.

use crate::log::format::*;
use std::fs;
use std::io;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// The largest timestamp of every record before this frame in the segment.
    pub max_ts_before: i64,
    pub offset: u64,
    pub position: u64,
}

impl IndexEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
    }
}

impl TimeEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.max_ts_before.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
    }
}

/// Both indexes of one segment, in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub offsets: Vec<IndexEntry>,
    pub times: Vec<TimeEntry>,
}

/// Decides, frame by frame, which frames get index entries (writer and rebuild alike).
#[derive(Debug, Clone, Copy)]
pub struct IndexPolicy {
    last_position: Option<u64>,
}

impl IndexPolicy {
    pub fn new() -> IndexPolicy {
        IndexPolicy {
            last_position: None,
        }
    }

    pub fn resume(last_position: Option<u64>) -> IndexPolicy {
        IndexPolicy { last_position }
    }

    pub fn wants(&mut self, position: u64) -> bool {
        let yes = match self.last_position {
            None => true,
            Some(p) => position >= p + INDEX_INTERVAL_BYTES,
        };
        if yes {
            self.last_position = Some(position);
        }
        yes
    }
}

impl Default for IndexPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads an index file. A trailing partial entry (a write in progress or torn) is ignored;
/// a bad header is an error (the caller rebuilds or scans instead).
pub fn read_offsets(path: &Path, base_offset: u64) -> Result<Vec<IndexEntry>, String> {
    parse_offsets(&fs::read(path).map_err(|e| e.to_string())?, base_offset)
}

pub fn read_times(path: &Path, base_offset: u64) -> Result<Vec<TimeEntry>, String> {
    parse_times(&fs::read(path).map_err(|e| e.to_string())?, base_offset)
}

/// The entries of an offset index file's bytes (see `read_offsets`).
pub fn parse_offsets(file: &[u8], base_offset: u64) -> Result<Vec<IndexEntry>, String> {
    let b = entries(file, INDEX_MAGIC, base_offset)?;
    Ok(b.chunks_exact(INDEX_ENTRY_LEN)
        .map(|c| IndexEntry {
            offset: u64_at(c, 0),
            position: u64_at(c, 8),
        })
        .collect())
}

/// The entries of a time index file's bytes.
pub fn parse_times(file: &[u8], base_offset: u64) -> Result<Vec<TimeEntry>, String> {
    let b = entries(file, TIMEINDEX_MAGIC, base_offset)?;
    Ok(b.chunks_exact(TIMEINDEX_ENTRY_LEN)
        .map(|c| TimeEntry {
            max_ts_before: i64_at(c, 0),
            offset: u64_at(c, 8),
            position: u64_at(c, 16),
        })
        .collect())
}

/// The bytes after a checked file header.
fn entries<'a>(b: &'a [u8], magic: &[u8; 8], base_offset: u64) -> Result<&'a [u8], String> {
    let h = FileHeader::decode(b, magic)?;
    if h.base_offset != base_offset {
        return Err(format!(
            "header names base offset {} instead of {base_offset}",
            h.base_offset
        ));
    }
    Ok(&b[FILE_HEADER_LEN..])
}

/// Whether entries are plausible for a log whose valid frames end at `valid_len`: strictly
/// increasing offsets and positions, all inside the valid part.
pub fn offsets_plausible(e: &[IndexEntry], base_offset: u64, valid_len: u64) -> bool {
    let mut prev: Option<&IndexEntry> = None;
    for x in e {
        if x.offset < base_offset || x.position < FILE_HEADER_LEN as u64 || x.position >= valid_len
        {
            return false;
        }
        if let Some(p) = prev {
            if x.offset <= p.offset || x.position <= p.position {
                return false;
            }
        }
        prev = Some(x);
    }
    true
}

/// Writes both index files of a segment from scratch, atomically (temp and rename), so a
/// reader holding the old file keeps a consistent view.
pub fn write_files(
    log_path: &Path,
    base_offset: u64,
    idx: &SegmentIndex,
    created_ms: i64,
    sync: bool,
) -> io::Result<()> {
    let mut b = FileHeader {
        magic: *INDEX_MAGIC,
        base_offset,
        created_ms,
    }
    .encode()
    .to_vec();
    for e in &idx.offsets {
        e.encode_into(&mut b);
    }
    replace(&log_path.with_extension(INDEX_SUFFIX), &b, sync)?;
    let mut t = FileHeader {
        magic: *TIMEINDEX_MAGIC,
        base_offset,
        created_ms,
    }
    .encode()
    .to_vec();
    for e in &idx.times {
        e.encode_into(&mut t);
    }
    replace(&log_path.with_extension(TIMEINDEX_SUFFIX), &t, sync)
}

fn replace(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    if sync {
        return crate::log::meta::write_atomic(path, bytes);
    }
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    fs::write(&tmp, bytes)?;
    crate::log::trace::created(&tmp);
    crate::log::trace::renaming(&tmp, path);
    fs::rename(&tmp, path)
}

/// The last entry at or before `offset` (binary search).
pub fn floor_offset(e: &[IndexEntry], offset: u64) -> Option<IndexEntry> {
    let i = e.partition_point(|x| x.offset <= offset);
    if i == 0 {
        None
    } else {
        Some(e[i - 1])
    }
}

/// Which entry is the last whose records before it are all older than `ts` (its index).
pub fn floor_time(e: &[TimeEntry], ts: i64) -> Option<usize> {
    e.partition_point(|x| x.max_ts_before < ts).checked_sub(1)
}
