//! Segment files as bytes: listing a partition's segments, mapping a segment read-only with
//! memmap2, and the frame scan that recovery, readers and `logd verify` all share.
//!
//! SIGBUS: touching a mapped page past the end of its file kills the process. kappa never
//! shrinks a segment file that a reader may have mapped: sealed segments are immutable
//! until retention unlinks them (an unlinked file stays mapped and readable), the active
//! segment only grows, and recovery seals a torn tail behind a new segment instead of
//! truncating it. A reader maps at most the length it saw in fstat. What remains is a
//! person or another program truncating files under a running reader; that is outside what
//! the log can defend against and is documented in docs/FORMAT.md.

use crate::log::format::*;
use crate::log::index::{IndexEntry, IndexPolicy, SegmentIndex, TimeEntry};
use memmap2::Mmap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// Base offsets of the segments in a partition directory, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        if let Some(b) = ent
            .file_name()
            .to_str()
            .and_then(|n| parse_segment_file_name(n, LOG_SUFFIX))
        {
            v.push(b);
        }
    }
    v.sort_unstable();
    Ok(v)
}

pub fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_file_name(base, LOG_SUFFIX))
}

/// A read-only mapping of a segment's first `len` bytes.
pub struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    pub fn of(file: &File) -> io::Result<Mapped> {
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: the mapping is read-only and limited to the size fstat reported; the log
        // never shrinks a file a reader may map (see the module doc).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(Mapped { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// The bytes ended exactly after a whole frame.
    End,
    /// The records reached the next segment's base offset; bytes after it are ignored.
    Limit,
    /// A frame is cut short by the end of the bytes.
    Incomplete,
    /// The bytes at `end` are not a valid frame.
    Corrupt(String),
}

#[derive(Debug, Clone)]
pub struct Scan {
    /// Position just after the last valid frame.
    pub end: usize,
    pub next_offset: u64,
    /// Largest timestamp seen up to `end` (including what the caller passed in).
    pub max_ts: i64,
    pub stop: ScanStop,
    /// Index entries for the frames scanned.
    pub index: SegmentIndex,
    pub frames: u64,
    /// Records in the frames scanned (fewer than their offsets once compacted).
    pub records: u64,
    /// Timestamp of the first record scanned, if any.
    pub first_ts: Option<i64>,
}

/// Walks frames from `start`, checking each frame's CRC and that offsets continue from
/// `offset` without a gap; stops at `limit` (the next segment's base) when given.
pub fn scan(
    bytes: &[u8],
    start: usize,
    offset: u64,
    limit: Option<u64>,
    mut policy: IndexPolicy,
    max_ts: i64,
) -> Scan {
    let mut s = Scan {
        end: start,
        next_offset: offset,
        max_ts,
        stop: ScanStop::End,
        index: SegmentIndex::default(),
        frames: 0,
        records: 0,
        first_ts: None,
    };
    loop {
        if limit == Some(s.next_offset) {
            s.stop = ScanStop::Limit;
            return s;
        }
        if s.end >= bytes.len() {
            s.stop = ScanStop::End;
            return s;
        }
        match check_frame(&bytes[s.end..]) {
            FrameCheck::Ok(info) => {
                if info.base_offset != s.next_offset {
                    s.stop = ScanStop::Corrupt(format!(
                        "frame starts at offset {} where offset {} was expected",
                        info.base_offset, s.next_offset
                    ));
                    return s;
                }
                if limit.is_some_and(|l| info.next_offset() > l) {
                    s.stop =
                        ScanStop::Corrupt("frame runs past the next segment's base offset".into());
                    return s;
                }
                let pos = s.end as u64;
                if policy.wants(pos) {
                    s.index.offsets.push(IndexEntry {
                        offset: info.base_offset,
                        position: pos,
                    });
                    s.index.times.push(TimeEntry {
                        max_ts_before: s.max_ts,
                        offset: info.base_offset,
                        position: pos,
                    });
                }
                if s.first_ts.is_none() {
                    let frame = &bytes[s.end..s.end + info.total_len];
                    s.first_ts = RecordIter::new(frame, &info).next().map(|r| r.timestamp);
                }
                s.max_ts = s.max_ts.max(info.max_ts);
                s.end += info.total_len;
                s.next_offset = info.next_offset();
                s.frames += 1;
                s.records += info.record_count as u64;
            }
            FrameCheck::Incomplete => {
                s.stop = ScanStop::Incomplete;
                return s;
            }
            FrameCheck::Corrupt(why) => {
                s.stop = if bytes[s.end..].iter().all(|&b| b == 0) {
                    // Preallocated or never-written space: no frame was ever there.
                    ScanStop::Incomplete
                } else {
                    ScanStop::Corrupt(why)
                };
                return s;
            }
        }
    }
}
