//! A table's changelog: records of the log's own format, read through mappings of every
//! segment taken at once (so a compaction that removes the files cannot pull them from under
//! a reader), and the three kinds of entry in it.
//!
//! ```text
//! upsert     key = table key, value = the JSON value, timestamp = the record's event time
//!            (i64::MIN when the input had none)
//! tombstone  key = table key, empty value, header "kappa.tombstone"
//! commit     no key, header "kappa.commit", value = {"first":F,"records":R,"sources":{..}}
//! ```
//!
//! A batch is visible only once its commit marker is in the log: readers keep the entries
//! from `first` up to the marker and drop anything before `first` that no marker covered
//! (a batch cut short by a crash, left in place because recovery never truncates) and
//! anything after the last marker (a batch still being written). `records` counts the
//! upserts and tombstones of the generation so far (for the garbage ratio), and `sources`
//! is the whole map of applied high-water marks, `"topic/partition": [offset, sub]`.

use crate::error::{Error, Result};
use crate::log::format::*;
use crate::log::index::{self, IndexEntry};
use crate::log::segment::{self, log_path, Mapped};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const COMMIT_HEADER: &[u8] = b"kappa.commit";
pub const TOMBSTONE_HEADER: &[u8] = b"kappa.tombstone";
/// The timestamp of an upsert whose input had none.
pub const NO_TS: i64 = i64::MIN;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Commit {
    pub first: u64,
    pub records: u64,
    pub sources: BTreeMap<String, (u64, u64)>,
}

/// One changelog record, classified.
pub enum Entry<'a> {
    Upsert { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
    Commit(Commit),
}

/// Classifies a record; None for a record that is none of the three (damage of meaning
/// rather than of bytes, reported by the caller).
pub fn classify<'a>(r: &Record<'a>) -> Option<Entry<'a>> {
    let mut hs = r.headers();
    match (r.key, hs.next()) {
        (Some(key), None) => Some(Entry::Upsert {
            key,
            value: r.value,
        }),
        (Some(key), Some((n, _))) if n == TOMBSTONE_HEADER => Some(Entry::Delete { key }),
        (None, Some((n, _))) if n == COMMIT_HEADER => {
            serde_json::from_slice(r.value).ok().map(Entry::Commit)
        }
        _ => None,
    }
}

/// The header bytes of a tombstone and of a commit marker, in the record layout.
pub fn header(name: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    encode_header(&mut h, name, b"");
    h
}

struct Seg {
    base: u64,
    path: PathBuf,
    map: Mapped,
}

/// Every segment of a changelog directory, mapped.
pub struct Segments {
    segs: Vec<Seg>,
}

/// A frame and where it is.
pub struct Frame<'a> {
    pub bytes: &'a [u8],
    pub info: FrameInfo,
    pub seg: usize,
    pub pos: usize,
}

impl<'a> Frame<'a> {
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter::new(self.bytes, &self.info)
    }
}

impl Segments {
    /// Maps every segment. A missing directory or segment is `NotFound` in the error's
    /// source, which callers take as "the generation was replaced: resolve again".
    pub fn open(dir: &Path) -> std::io::Result<Segments> {
        let mut segs = Vec::new();
        let bases = segment::list_segments(dir)?;
        for (i, &base) in bases.iter().enumerate() {
            let path = log_path(dir, base);
            let file = File::open(&path)?;
            let map = Mapped::of(&file)?;
            // The newest segment may be caught between its creation and its header being
            // written: it holds nothing yet.
            if i + 1 == bases.len() && map.len() < FILE_HEADER_LEN {
                break;
            }
            segs.push(Seg { base, path, map });
        }
        Ok(Segments { segs })
    }

    pub fn bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.map.len() as u64).sum()
    }

    pub fn earliest(&self) -> u64 {
        self.segs.first().map_or(0, |s| s.base)
    }

    fn damage(&self, seg: usize, pos: usize, offset: u64, why: &str) -> Error {
        Error::Data(format!(
            "{}: position {pos} (offset {offset}): {why}",
            self.segs[seg].path.display()
        ))
    }

    /// Frames from the one holding `offset` (or the first after it) to the end.
    pub fn frames_from(&self, offset: u64) -> Result<Frames<'_>> {
        let si = self
            .segs
            .partition_point(|s| s.base <= offset)
            .saturating_sub(1);
        let Some(seg) = self.segs.get(si) else {
            return Ok(Frames {
                segs: self,
                si,
                pos: 0,
                next: offset,
                want: offset,
            });
        };
        let b = seg.map.bytes();
        FileHeader::decode(b, LOG_MAGIC)
            .map_err(|e| self.damage(si, 0, seg.base, &format!("bad file header: {e}")))?;
        let (mut pos, mut next) = (FILE_HEADER_LEN, seg.base);
        let hints = index::read_offsets(&seg.path.with_extension(INDEX_SUFFIX), seg.base)
            .unwrap_or_default();
        if let Some(IndexEntry {
            offset: o,
            position,
        }) = index::floor_offset(&hints, offset)
        {
            let p = position as usize;
            // The index is a hint: used only when a valid frame with that offset is there.
            if p >= FILE_HEADER_LEN
                && p < b.len()
                && matches!(check_frame(&b[p..]), FrameCheck::Ok(i) if i.base_offset == o)
            {
                (pos, next) = (p, o);
            }
        }
        Ok(Frames {
            segs: self,
            si,
            pos,
            next,
            want: offset,
        })
    }
}

/// Iterates frames, every CRC checked; the end is the last complete frame (a frame still
/// being written is not yet there). Damage is an error naming file, position and offset.
pub struct Frames<'a> {
    segs: &'a Segments,
    si: usize,
    pos: usize,
    next: u64,
    /// Frames ending before this offset are skipped.
    want: u64,
}

impl<'a> Frames<'a> {
    /// The offset the next frame must start at.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame<'a>>> {
        loop {
            let Some(seg) = self.segs.segs.get(self.si) else {
                return Ok(None);
            };
            let next_base = self.segs.segs.get(self.si + 1).map(|s| s.base);
            let b = seg.map.bytes();
            if self.pos == 0 {
                FileHeader::decode(b, LOG_MAGIC).map_err(|e| {
                    self.segs
                        .damage(self.si, 0, seg.base, &format!("bad file header: {e}"))
                })?;
                self.pos = FILE_HEADER_LEN;
                self.next = seg.base;
            }
            // A segment ends at the next one's base; bytes after it are a sealed tail.
            if next_base.is_some_and(|nb| self.next >= nb) {
                self.si += 1;
                self.pos = 0;
                continue;
            }
            let check = if self.pos >= b.len() {
                FrameCheck::Incomplete
            } else {
                check_frame(&b[self.pos..])
            };
            match check {
                FrameCheck::Ok(info) => {
                    if info.base_offset != self.next {
                        return Err(self.segs.damage(
                            self.si,
                            self.pos,
                            self.next,
                            &format!("frame starts at offset {}", info.base_offset),
                        ));
                    }
                    let pos = self.pos;
                    self.pos += info.total_len;
                    self.next = info.next_offset();
                    if info.next_offset() <= self.want {
                        continue;
                    }
                    return Ok(Some(Frame {
                        bytes: &b[pos..pos + info.total_len],
                        info,
                        seg: self.si,
                        pos,
                    }));
                }
                FrameCheck::Incomplete | FrameCheck::Corrupt(_) if next_base == Some(self.next) => {
                    // A torn tail that recovery sealed behind the next segment.
                    self.si += 1;
                    self.pos = 0;
                }
                FrameCheck::Incomplete if next_base.is_none() => return Ok(None),
                FrameCheck::Incomplete => {
                    return Err(self.segs.damage(
                        self.si,
                        self.pos,
                        self.next,
                        "segment ends inside a frame",
                    ))
                }
                FrameCheck::Corrupt(why) => {
                    return Err(self.segs.damage(self.si, self.pos, self.next, &why))
                }
            }
        }
    }
}

/// The record at `offset`, when the changelog holds it.
pub fn record_at(segs: &Segments, offset: u64) -> Result<Option<Record<'_>>> {
    let mut fr = segs.frames_from(offset)?;
    let Some(f) = fr.next_frame()? else {
        return Ok(None);
    };
    if f.info.base_offset > offset {
        return Ok(None);
    }
    Ok(RecordIter::new(f.bytes, &f.info).find(|r| r.offset == offset))
}

/// Calls `each(i, record)` for the records at `offsets[i]`, visiting the changelog in
/// offset order: a sequential read for many keys, a few seeks for a few.
pub fn fetch<'s>(
    segs: &'s Segments,
    dir: &Path,
    offsets: &[u64],
    mut each: impl FnMut(usize, &Record<'s>) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..offsets.len()).collect();
    order.sort_unstable_by_key(|&i| offsets[i]);
    let mut frames: Option<Frames<'s>> = None;
    let mut cur: Option<Frame<'s>> = None;
    // The records of the current frame not yet passed: wanted offsets ascend, so each
    // frame's records are walked once.
    let mut recs: Option<crate::log::format::RecordIter<'s>> = None;
    // Jumping through the offset index beats reading frames in between past this gap.
    const JUMP: u64 = 4096;
    for i in order {
        let want = offsets[i];
        loop {
            if let Some(f) = &cur {
                if want < f.info.next_offset() && want >= f.info.base_offset {
                    break;
                }
            }
            let near = frames
                .as_ref()
                .is_some_and(|fr| want >= fr.next_offset() && want - fr.next_offset() < JUMP);
            if !near {
                frames = Some(segs.frames_from(want)?);
            }
            // Set just above.
            cur = frames.as_mut().expect("frames set").next_frame()?;
            recs = cur.as_ref().map(|f| f.records());
            if cur.is_none() || cur.as_ref().is_some_and(|f| f.info.base_offset > want) {
                return Err(Error::Data(format!(
                    "{}: offset {want} named by the key index is not in the changelog",
                    dir.display()
                )));
            }
        }
        let rec = recs
            .as_mut()
            .and_then(|it| it.by_ref().find(|r| r.offset >= want))
            .filter(|r| r.offset == want);
        match rec {
            Some(r) => each(i, &r)?,
            None => {
                return Err(Error::Data(format!(
                    "{}: offset {want} is missing from its frame",
                    dir.display()
                )))
            }
        }
    }
    Ok(())
}

/// The (timestamp, value) of each live key in `live`, in the same order, borrowed from
/// the mappings. Each record is checked to be the upsert of its key: the index is a
/// cache, and a wrong answer from it is damage, not data.
pub fn values<'s>(
    segs: &'s Segments,
    dir: &Path,
    live: &[(Vec<u8>, u64)],
) -> Result<Vec<(i64, &'s [u8])>> {
    let offsets: Vec<u64> = live.iter().map(|e| e.1).collect();
    let mut vals: Vec<(i64, &[u8])> = vec![(NO_TS, &[][..]); live.len()];
    fetch(segs, dir, &offsets, |i, r| match classify(r) {
        Some(Entry::Upsert { key, value }) if key == live[i].0.as_slice() => {
            vals[i] = (r.timestamp, value);
            Ok(())
        }
        _ => Err(Error::Data(format!(
            "{}: offset {} is not the upsert of key {:?} (the key index is damaged: remove {})",
            dir.display(),
            r.offset,
            String::from_utf8_lossy(&live[i].0),
            super::keyindex::FILE_NAME
        ))),
    })?;
    Ok(vals)
}
