//! Reading a partition without a lock, through memmap2: seeks by offset and by time with the
//! sparse indexes as hints, then frame by frame with every CRC checked. A reader of a
//! partition being appended to sees every complete frame and never a partial one: a frame
//! that runs past the end of the file is "not yet written", and a frame inside the file
//! that fails its checks is damage, reported with file, position and offset.
//!
//! Segment k is bounded by segment k+1's base offset: bytes after that point are a tail that
//! recovery sealed and are never read.

use crate::error::{Error, Result};
use crate::log::format::*;
use crate::log::index;
use crate::log::segment::{self, log_path, Mapped};
use std::fs::File;
use std::path::{Path, PathBuf};

struct OpenSegment {
    base: u64,
    path: PathBuf,
    file: File,
    map: Mapped,
    pos: usize,
}

/// A frame handed to the caller, borrowing the mapping.
pub struct FrameRef<'a> {
    pub bytes: &'a [u8],
    pub info: FrameInfo,
    /// Records below this offset are before the requested start and are skipped.
    pub from: u64,
}

impl<'a> FrameRef<'a> {
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        let from = self.from;
        RecordIter::new(self.bytes, &self.info).filter(move |r| r.offset >= from)
    }
}

pub struct PartitionReader {
    dir: PathBuf,
    segments: Vec<u64>,
    cur: Option<OpenSegment>,
    /// Offset of the next frame to read.
    next_offset: u64,
    /// Records below this are skipped (a seek into the middle of a frame, or past the end).
    from: u64,
    /// Records removed by retention while this reader was behind them.
    pub skipped_by_retention: u64,
}

impl PartitionReader {
    pub fn open(dir: &Path) -> Result<PartitionReader> {
        let segments = segment::list_segments(dir)
            .map_err(Error::io_with(|| format!("listing {}", dir.display())))?;
        let mut r = PartitionReader {
            dir: dir.to_path_buf(),
            segments,
            cur: None,
            next_offset: 0,
            from: 0,
            skipped_by_retention: 0,
        };
        let first = r.earliest();
        r.next_offset = first;
        r.from = first;
        Ok(r)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first offset still in the log.
    pub fn earliest(&self) -> u64 {
        self.segments.first().copied().unwrap_or(0)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn segment_bases(&self) -> &[u64] {
        &self.segments
    }

    /// The offset the next record returned will have at least.
    pub fn position(&self) -> u64 {
        self.from.max(self.next_offset)
    }

    /// The offset after the frames read so far: every record below it that is at or after
    /// the position has been returned. Unlike `position`, never past the log's end.
    pub fn read_to(&self) -> u64 {
        self.next_offset
    }

    fn refresh_segments(&mut self) -> Result<bool> {
        let s = segment::list_segments(&self.dir)
            .map_err(Error::io_with(|| format!("listing {}", self.dir.display())))?;
        let changed = s != self.segments;
        self.segments = s;
        Ok(changed)
    }

    fn next_base_after(&self, base: u64) -> Option<u64> {
        let i = self.segments.partition_point(|b| *b <= base);
        self.segments.get(i).copied()
    }

    fn open_segment(&mut self, base: u64) -> Result<Option<OpenSegment>> {
        let path = log_path(&self.dir, base);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        let map =
            Mapped::of(&file).map_err(Error::io_with(|| format!("mapping {}", path.display())))?;
        Ok(Some(OpenSegment {
            base,
            path,
            file,
            map,
            pos: FILE_HEADER_LEN,
        }))
    }

    /// Positions at `offset` (clamped to the earliest record still kept). Offsets past the
    /// end are allowed: records before them are skipped as they arrive.
    pub fn seek(&mut self, offset: u64) -> Result<()> {
        self.refresh_segments()?;
        let target = offset.max(self.earliest());
        let i = self.segments.partition_point(|b| *b <= target);
        let base = if i == 0 {
            self.earliest()
        } else {
            self.segments[i - 1]
        };
        self.cur = None;
        self.next_offset = base;
        self.from = target;
        if let Some(mut seg) = self.open_segment(base)? {
            let entries = index::read_offsets(&seg.path.with_extension(INDEX_SUFFIX), base)
                .unwrap_or_default();
            if let Some(e) = index::floor_offset(&entries, target) {
                if hint_ok(seg.map.bytes(), e.position as usize, e.offset) {
                    seg.pos = e.position as usize;
                    self.next_offset = e.offset;
                }
            }
            self.cur = Some(seg);
        }
        Ok(())
    }

    /// Positions at the first record whose timestamp is at or after `ts` (the log end when
    /// there is none), using each segment's time index.
    pub fn seek_time(&mut self, ts: i64) -> Result<()> {
        self.refresh_segments()?;
        let segs = self.segments.clone();
        for (i, &base) in segs.iter().enumerate() {
            let limit = segs.get(i + 1).copied();
            let Some(seg) = self.open_segment(base)? else {
                continue;
            };
            let bytes = seg.map.bytes();
            let times = index::read_times(&seg.path.with_extension(TIMEINDEX_SUFFIX), base)
                .unwrap_or_default();
            let (mut pos, mut off) = (FILE_HEADER_LEN, base);
            if let Some(h) = time_hint(bytes, &times, ts) {
                (pos, off) = h;
            }
            loop {
                if limit == Some(off) || pos >= bytes.len() {
                    break;
                }
                let FrameCheck::Ok(info) = check_frame(&bytes[pos..]) else {
                    break;
                };
                if info.max_ts >= ts {
                    let frame = &bytes[pos..pos + info.total_len];
                    let hit = RecordIter::new(frame, &info)
                        .find(|r| r.timestamp >= ts)
                        .map(|r| r.offset);
                    if let Some(o) = hit {
                        drop(seg);
                        return self.seek(o);
                    }
                }
                pos += info.total_len;
                off = info.next_offset();
            }
        }
        let end = self.end_offset()?;
        self.seek(end)
    }

    /// The offset the next appended record will get (the log end offset).
    pub fn end_offset(&mut self) -> Result<u64> {
        self.refresh_segments()?;
        let Some(&base) = self.segments.last() else {
            return Ok(0);
        };
        let Some(seg) = self.open_segment(base)? else {
            return Ok(base);
        };
        let bytes = seg.map.bytes();
        let entries =
            index::read_offsets(&seg.path.with_extension(INDEX_SUFFIX), base).unwrap_or_default();
        let (mut pos, mut off) = (FILE_HEADER_LEN, base);
        if let Some(e) = entries.last() {
            if hint_ok(bytes, e.position as usize, e.offset) {
                (pos, off) = (e.position as usize, e.offset);
            }
        }
        let s = segment::scan(
            bytes,
            pos.min(bytes.len()),
            off,
            None,
            index::IndexPolicy::new(),
            i64::MIN,
        );
        Ok(s.next_offset)
    }

    /// The next frame with records at or after the position (or a compacted frame keeping
    /// only a source mark), or None when caught up.
    /// Damage is an error naming the file, position and offset.
    pub fn next_frame(&mut self) -> Result<Option<FrameRef<'_>>> {
        loop {
            if self.cur.is_none() {
                if !self.enter_segment()? {
                    return Ok(None);
                }
                continue;
            }
            let next_base = {
                let seg = self.cur.as_ref().map(|s| s.base).unwrap_or(0);
                self.next_base_after(seg)
            };
            if next_base.is_some_and(|nb| self.next_offset >= nb) {
                self.cur = None;
                continue;
            }
            // The borrow checker wants the frame check done on a short-lived borrow first.
            let (pos, check, len) = {
                let seg = self.cur.as_ref().expect("checked above");
                let b = seg.map.bytes();
                let pos = seg.pos;
                (
                    pos,
                    if pos >= b.len() {
                        FrameCheck::Incomplete
                    } else {
                        check_frame(&b[pos..])
                    },
                    b.len(),
                )
            };
            match check {
                FrameCheck::Ok(info) => {
                    if info.base_offset != self.next_offset {
                        return Err(self.damage(
                            pos,
                            &format!(
                                "frame has offset {} where {} was expected",
                                info.base_offset, self.next_offset
                            ),
                        ));
                    }
                    if next_base.is_some_and(|nb| info.next_offset() > nb) {
                        return Err(
                            self.damage(pos, "frame runs past the next segment's base offset")
                        );
                    }
                    let seg = self.cur.as_mut().expect("checked above");
                    seg.pos = pos + info.total_len;
                    self.next_offset = info.next_offset();
                    if info.next_offset() <= self.from {
                        continue;
                    }
                    let from = self.from.max(info.base_offset);
                    // A compacted frame may keep nothing at or after `from`: read on, unless
                    // it carries a source mark (kept for `produce --source` to find).
                    if info.sparse && info.mark_start == info.total_len && {
                        let seg = self.cur.as_ref().expect("checked above");
                        let frame = &seg.map.bytes()[pos..pos + info.total_len];
                        last_record_offset(frame, &info).is_none_or(|o| o < from)
                    } {
                        continue;
                    }
                    let seg = self.cur.as_ref().expect("checked above");
                    let bytes = &seg.map.bytes()[pos..pos + info.total_len];
                    return Ok(Some(FrameRef { bytes, info, from }));
                }
                FrameCheck::Incomplete | FrameCheck::Corrupt(_) => {
                    let zero_tail = matches!(check, FrameCheck::Corrupt(_)) && {
                        let seg = self.cur.as_ref().expect("checked above");
                        seg.map.bytes()[pos..].iter().all(|&b| b == 0)
                    };
                    let torn = matches!(check, FrameCheck::Incomplete) || zero_tail;
                    // The mapping may predate the segment's last frames (written just before
                    // the writer rolled): look at the file as it is now first.
                    if torn && self.remap_if_grown(len)? {
                        continue;
                    }
                    if next_base.is_some() && torn {
                        // Retention may have removed this segment and the ones after it
                        // while they were being read: move on to what is left.
                        self.refresh_segments()?;
                        let base = self.cur.as_ref().map_or(0, |s| s.base);
                        if self.segments.binary_search(&base).is_err() || self.replaced() {
                            // Gone, or compaction put a new file in its place (holding the
                            // same offsets and those of the segments it absorbed): read on
                            // from what is there now.
                            self.cur = None;
                            continue;
                        }
                    }
                    if next_base.is_some() {
                        let why = match &check {
                            FrameCheck::Corrupt(w) if !zero_tail => w.clone(),
                            _ => format!("segment ends before offset {}", next_base.unwrap_or(0)),
                        };
                        return Err(self.damage(pos, &why));
                    }
                    // The last segment: has it grown, or been sealed by a newer one?
                    if self.remap_if_grown(len)? {
                        continue;
                    }
                    if self.refresh_segments()?
                        && self
                            .next_base_after(self.cur.as_ref().map_or(0, |s| s.base))
                            .is_some()
                    {
                        continue;
                    }
                    if torn {
                        return Ok(None);
                    }
                    let why = match check {
                        FrameCheck::Corrupt(w) => w,
                        _ => unreachable!("torn handled above"),
                    };
                    return Err(self.damage(pos, &why));
                }
            }
        }
    }

    /// Whether the open segment's file is no longer the one at its path.
    fn replaced(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(seg) = self.cur.as_ref() else {
            return false;
        };
        match (seg.file.metadata(), std::fs::metadata(&seg.path)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
            _ => true,
        }
    }

    fn remap_if_grown(&mut self, seen: usize) -> Result<bool> {
        let seg = self.cur.as_mut().expect("caller has a segment");
        let now = seg
            .file
            .metadata()
            .map_err(Error::io_with(|| format!("reading {}", seg.path.display())))?
            .len() as usize;
        if now > seen {
            seg.map = Mapped::of(&seg.file)
                .map_err(Error::io_with(|| format!("mapping {}", seg.path.display())))?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Opens the segment holding `next_offset`. False when there is none yet.
    fn enter_segment(&mut self) -> Result<bool> {
        for attempt in 0..2 {
            let i = self.segments.partition_point(|b| *b <= self.next_offset);
            let base = if i == 0 {
                match self.segments.first() {
                    Some(&b) => b,
                    // A partition with no segment yet (a topic just created): look again,
                    // a writer may have made the first one since.
                    None if attempt == 0 => {
                        self.refresh_segments()?;
                        continue;
                    }
                    None => return Ok(false),
                }
            } else {
                self.segments[i - 1]
            };
            if base > self.next_offset {
                // Retention removed what this reader had not read yet.
                self.skipped_by_retention += base - self.next_offset;
                self.next_offset = base;
                self.from = self.from.max(base);
            }
            match self.open_segment(base)? {
                Some(mut seg) => {
                    let hdr = FileHeader::decode(seg.map.bytes(), LOG_MAGIC);
                    match hdr {
                        Ok(h) if h.base_offset == base => {}
                        Ok(_) | Err(_)
                            if seg.map.len() < FILE_HEADER_LEN && i == self.segments.len() =>
                        {
                            // Being created right now.
                            return Ok(false);
                        }
                        Ok(h) => {
                            return Err(Error::Data(format!(
                                "{}: header names base offset {} instead of {base}",
                                seg.path.display(),
                                h.base_offset
                            )))
                        }
                        Err(why) => {
                            return Err(Error::Data(format!("{}: {why}", seg.path.display())))
                        }
                    }
                    if base < self.next_offset {
                        // Entering mid-segment (after a seek): use the index hint.
                        let entries =
                            index::read_offsets(&seg.path.with_extension(INDEX_SUFFIX), base)
                                .unwrap_or_default();
                        let mut off = base;
                        if let Some(e) = index::floor_offset(&entries, self.next_offset) {
                            if hint_ok(seg.map.bytes(), e.position as usize, e.offset) {
                                seg.pos = e.position as usize;
                                off = e.offset;
                            }
                        }
                        self.from = self.from.max(self.next_offset);
                        self.next_offset = off;
                    }
                    self.cur = Some(seg);
                    return Ok(true);
                }
                None if attempt == 0 => {
                    self.refresh_segments()?;
                }
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    fn damage(&self, pos: usize, why: &str) -> Error {
        let path = self
            .cur
            .as_ref()
            .map(|s| s.path.display().to_string())
            .unwrap_or_default();
        Error::Data(format!(
            "{path}: position {pos} (offset {}): {why}",
            self.next_offset
        ))
    }
}

/// Where to start looking for the first record at or after `ts`: the last time index entry
/// whose `max_ts_before` is below `ts`, if it checks out. A wrong position or offset would
/// only cost a scan, but a `max_ts_before` damaged downwards would skip records, so the entry
/// is checked against the one before it: the frames between them must lead exactly to it, and
/// the larger of the earlier entry's `max_ts_before` and their `max_ts` must be its own. One
/// damaged entry, whichever, fails that, and the segment is then read from its start.
fn time_hint(bytes: &[u8], times: &[index::TimeEntry], ts: i64) -> Option<(usize, u64)> {
    // No entry, or the first (which is the start of the segment anyway): no hint.
    let k = index::floor_time(times, ts).filter(|k| *k > 0)?;
    let (prev, e) = (times[k - 1], times[k]);
    if !hint_ok(bytes, prev.position as usize, prev.offset) {
        return None;
    }
    let (mut pos, mut off, mut max) = (prev.position as usize, prev.offset, prev.max_ts_before);
    while (pos as u64) < e.position {
        let FrameCheck::Ok(info) = check_frame(&bytes[pos..]) else {
            return None;
        };
        if info.base_offset != off {
            return None;
        }
        max = max.max(info.max_ts);
        pos += info.total_len;
        off = info.next_offset();
    }
    (pos as u64 == e.position && off == e.offset && max == e.max_ts_before && pos < bytes.len())
        .then_some((pos, off))
}

/// An index hint is used only when a valid frame with that base offset is really there.
fn hint_ok(bytes: &[u8], pos: usize, offset: u64) -> bool {
    pos >= FILE_HEADER_LEN
        && pos < bytes.len()
        && matches!(check_frame(&bytes[pos..]), FrameCheck::Ok(i) if i.base_offset == offset)
}

/// A record as the log's tests compare them: (offset, timestamp, key, value).
#[cfg(test)]
pub(crate) type Row = (u64, i64, Option<Vec<u8>>, Vec<u8>);

/// Every record of a partition, for the log's tests.
#[cfg(test)]
pub(crate) fn read_all(dir: &Path) -> Vec<Row> {
    let mut r = PartitionReader::open(dir).unwrap();
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().unwrap() {
        for rec in f.records() {
            out.push((
                rec.offset,
                rec.timestamp,
                rec.key.map(|k| k.to_vec()),
                rec.value.to_vec(),
            ));
        }
    }
    out
}
