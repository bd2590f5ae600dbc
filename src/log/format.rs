//! The on-disk format of the log, version 1, as code: every width, offset and magic number
//! that docs/FORMAT.md describes lives here and nowhere else.
//!
//! All integers are little-endian. Three binary file kinds share one 32-byte file header
//! (segment `.log`, offset `.index`, `.timeindex`); metadata files are JSON with a checksum
//! (see `log::meta`).
//!
//! ```text
//! file header (32 bytes)
//!   0  8  magic            b"KAPPALOG" | b"KAPPAIDX" | b"KAPPATIX"
//!   8  2  version          1
//!  10  2  flags            0
//!  12  8  base_offset      u64, equal to the number in the file name
//!  20  8  created_ms       i64, wall-clock time the segment was created (roll by age)
//!  28  4  header_crc       crc32 of bytes 0..28
//!
//! frame (a batch of records under one CRC)
//!   0  4  length           u32, bytes after the crc field (FRAME_HEADER - 8 + records)
//!   4  4  crc              crc32 over the 4 length bytes and the `length` bytes after crc
//!   8  1  frame_version    1
//!   9  1  attributes       bit 0: the frame ends with a source mark
//!                          bit 1: sparse, the frame was rewritten by compaction (others reserved)
//!  10  2  reserved         0
//!  12  8  base_offset      u64, offset of the first record (dense) or of the range (sparse)
//!  20  4  record_count     u32, >= 1 (a sparse frame may hold 0)
//!  24  8  min_ts           i64 (i64::MAX in a sparse frame with no record)
//!  32  8  max_ts           i64 (i64::MIN in a sparse frame with no record)
//!  40  .. records
//!  ..  .. offset table     only with attribute bit 1 (below)
//!  ..  .. source mark      only with attribute bit 0 (below)
//!
//! offset table (a sparse frame: compaction removed some of its offsets' records)
//!   0  4n offset_delta     u32 per record, offset - base_offset, strictly increasing
//!  4n  4  offset_span      u32, the frame covers base_offset .. base_offset + offset_span
//!                          (the next frame starts there); greater than every delta
//!
//! source mark (after a frame's last record: where in its input that record ended)
//!   0  8  input_bytes      u64, input bytes of the file taken through the last record
//!   8  8  input_lines      u64, input lines of the file taken through it
//!  16  8  records          u64, records of the source through it
//!  24  4  file_index       u32, which input file of the command (0 = the first)
//!  28  2  id_len           u16
//!  30  .. id               the source id
//!  ..  4  mark_len         u32, 30 + id_len: the frame's last 4 bytes
//!
//! record
//!   0  4  record_len       u32, bytes after this field
//!   4  1  attributes       bit 0: value bytes are validated JSON
//!   5  8  timestamp        i64, ms since the Unix epoch
//!  13  4  key_len          i32, -1 = no key
//!  17  4  value_len        u32
//!  21  4  header_count     u32
//!  25  .. key, value, then per header: u32 name_len, name, u32 value_len, value
//!
//! offset index entry (16 bytes, after the file header)
//!   0  8  offset           u64, base offset of a frame
//!   8  8  position         u64, file position of that frame
//!
//! time index entry (24 bytes, after the file header)
//!   0  8  max_ts_before    i64, largest timestamp of every record before this frame
//!   8  8  offset           u64, base offset of the frame
//!  16  8  position         u64, file position of the frame
//! ```

use serde::{Deserialize, Serialize};

pub const VERSION: u16 = 1;

pub const LOG_MAGIC: &[u8; 8] = b"KAPPALOG";
pub const INDEX_MAGIC: &[u8; 8] = b"KAPPAIDX";
pub const TIMEINDEX_MAGIC: &[u8; 8] = b"KAPPATIX";

pub const FILE_HEADER_LEN: usize = 32;
pub const FH_MAGIC: usize = 0;
pub const FH_VERSION: usize = 8;
pub const FH_FLAGS: usize = 10;
pub const FH_BASE_OFFSET: usize = 12;
pub const FH_CREATED_MS: usize = 20;
pub const FH_CRC: usize = 28;

pub const FRAME_LENGTH: usize = 0;
pub const FRAME_CRC: usize = 4;
pub const FRAME_VERSION_AT: usize = 8;
pub const FRAME_ATTRIBUTES: usize = 9;
pub const FRAME_BASE_OFFSET: usize = 12;
pub const FRAME_RECORD_COUNT: usize = 20;
pub const FRAME_MIN_TS: usize = 24;
pub const FRAME_MAX_TS: usize = 32;
pub const FRAME_HEADER_LEN: usize = 40;
pub const FRAME_VERSION: u8 = 1;
pub const FRAME_ATTR_SOURCE: u8 = 1;
pub const FRAME_ATTR_SPARSE: u8 = 2;
/// Width of one offset delta, and of the span after them, in a sparse frame's offset table.
pub const DELTA_LEN: usize = 4;
/// Bytes covered by `length`: everything after the crc field.
pub const FRAME_PREFIX_LEN: usize = 8;
/// A frame's length field is checked against this before it is trusted.
pub const MAX_FRAME_LEN: usize = 256 << 20;

pub const REC_LEN: usize = 0;
pub const REC_ATTRIBUTES: usize = 4;
pub const REC_TIMESTAMP: usize = 5;
pub const REC_KEY_LEN: usize = 13;
pub const REC_VALUE_LEN: usize = 17;
pub const REC_HEADER_COUNT: usize = 21;
pub const REC_FIXED_LEN: usize = 25;
pub const REC_ATTR_JSON: u8 = 1;

pub const MARK_INPUT_BYTES: usize = 0;
pub const MARK_INPUT_LINES: usize = 8;
pub const MARK_RECORDS: usize = 16;
pub const MARK_FILE_INDEX: usize = 24;
pub const MARK_ID_LEN: usize = 28;
pub const MARK_FIXED_LEN: usize = 30;
/// The trailing u32 that says how long the mark is.
pub const MARK_LEN_FIELD: usize = 4;
/// Source ids follow the topic name rule, so they fit well within this.
pub const MAX_SOURCE_ID: usize = 249;

pub const INDEX_ENTRY_LEN: usize = 16;
pub const TIMEINDEX_ENTRY_LEN: usize = 24;
/// A new index entry is added once this many log bytes were written since the last one.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIMEINDEX_SUFFIX: &str = "timeindex";

/// The largest record a frame can carry (a frame holds at least one record).
pub const MAX_RECORD_BYTES: usize = MAX_FRAME_LEN - FRAME_HEADER_LEN - REC_FIXED_LEN - 1024;

/// `00000000000000001042.log`
pub fn segment_file_name(base_offset: u64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

/// Parses a segment file name back into its base offset when it has the given suffix.
pub fn parse_segment_file_name(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub fn i32_at(b: &[u8], at: usize) -> i32 {
    u32_at(b, at) as i32
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub fn i64_at(b: &[u8], at: usize) -> i64 {
    u64_at(b, at) as i64
}

/// The 32-byte header every binary file of the log starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub magic: [u8; 8],
    pub base_offset: u64,
    pub created_ms: i64,
}

impl FileHeader {
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut b = [0u8; FILE_HEADER_LEN];
        b[FH_MAGIC..FH_MAGIC + 8].copy_from_slice(&self.magic);
        b[FH_VERSION..FH_VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
        b[FH_FLAGS..FH_FLAGS + 2].copy_from_slice(&0u16.to_le_bytes());
        b[FH_BASE_OFFSET..FH_BASE_OFFSET + 8].copy_from_slice(&self.base_offset.to_le_bytes());
        b[FH_CREATED_MS..FH_CREATED_MS + 8].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[..FH_CRC]);
        b[FH_CRC..FH_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header; the error says what is wrong with it.
    pub fn decode(b: &[u8], magic: &[u8; 8]) -> Result<FileHeader, String> {
        if b.len() < FILE_HEADER_LEN {
            return Err(format!(
                "file header is short ({} of {FILE_HEADER_LEN} bytes)",
                b.len()
            ));
        }
        if &b[FH_MAGIC..FH_MAGIC + 8] != magic {
            return Err("bad magic number in file header".into());
        }
        let crc = u32_at(b, FH_CRC);
        if crc != crc32fast::hash(&b[..FH_CRC]) {
            return Err("file header CRC mismatch".into());
        }
        let version = u16_at(b, FH_VERSION);
        if version != VERSION {
            return Err(format!(
                "unsupported format version {version} (this build reads {VERSION})"
            ));
        }
        let mut m = [0u8; 8];
        m.copy_from_slice(&b[..8]);
        Ok(FileHeader {
            magic: m,
            base_offset: u64_at(b, FH_BASE_OFFSET),
            created_ms: i64_at(b, FH_CREATED_MS),
        })
    }
}

/// One record as it goes into a frame (borrowed parts).
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    /// Header pairs encoded back to back as in the record layout (see `encode_headers`).
    pub headers: &'a [u8],
    pub header_count: u32,
    pub value_is_json: bool,
}

impl RecordRef<'_> {
    pub fn encoded_len(&self) -> usize {
        4 + (REC_FIXED_LEN - 4)
            + self.key.map_or(0, |k| k.len())
            + self.value.len()
            + self.headers.len()
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let body = self.encoded_len() - 4;
        out.extend_from_slice(&(body as u32).to_le_bytes());
        out.push(if self.value_is_json { REC_ATTR_JSON } else { 0 });
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        match self.key {
            Some(k) => out.extend_from_slice(&(k.len() as i32).to_le_bytes()),
            None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        }
        out.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.header_count.to_le_bytes());
        if let Some(k) = self.key {
            out.extend_from_slice(k);
        }
        out.extend_from_slice(self.value);
        out.extend_from_slice(self.headers);
    }
}

/// Appends one header pair in the record layout.
pub fn encode_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// A record decoded from a frame, borrowing the frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub value_is_json: bool,
    pub header_count: u32,
    headers: &'a [u8],
}

impl<'a> Record<'a> {
    /// A record from its parts; `headers` encoded as in the record layout.
    pub fn from_parts(
        offset: u64,
        timestamp: i64,
        key: Option<&'a [u8]>,
        value: &'a [u8],
        value_is_json: bool,
        headers: &'a [u8],
        header_count: u32,
    ) -> Record<'a> {
        Record {
            offset,
            timestamp,
            key,
            value,
            value_is_json,
            header_count,
            headers,
        }
    }

    /// The header pairs as encoded in the record layout (see `encode_header`).
    pub fn raw_headers(&self) -> &'a [u8] {
        self.headers
    }

    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            rest: self.headers,
            left: self.header_count,
        }
    }
}

pub struct HeaderIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Bounds were checked by `decode_records` when the frame was read.
        let (name, rest) = take_len_prefixed(self.rest)?;
        let (value, rest) = take_len_prefixed(rest)?;
        self.rest = rest;
        Some((name, value))
    }
}

fn take_len_prefixed(b: &[u8]) -> Option<(&[u8], &[u8])> {
    if b.len() < 4 {
        return None;
    }
    let n = u32_at(b, 0) as usize;
    let rest = &b[4..];
    if rest.len() < n {
        return None;
    }
    Some((&rest[..n], &rest[n..]))
}

/// The frame header fields, read from a frame whose CRC was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub base_offset: u64,
    pub record_count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Total bytes of the frame, prefix included.
    pub total_len: usize,
    /// Where the records end (before an offset table or a source mark, if any).
    pub records_end: usize,
    /// Offsets the frame covers: record_count when dense; more in a sparse frame.
    pub span: u64,
    /// Whether the records carry offsets of their own (the offset table after them).
    pub sparse: bool,
    /// Where the source mark starts (total_len when there is none).
    pub mark_start: usize,
}

impl FrameInfo {
    /// The first offset after the frame: where the next frame starts.
    pub fn next_offset(&self) -> u64 {
        // check_frame refused a frame whose range would overflow.
        self.base_offset + self.span
    }
}

/// What is at a position where a frame is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameCheck {
    Ok(FrameInfo),
    /// The bytes end before the frame does (a torn tail, or a write still in progress).
    Incomplete,
    /// The bytes that are there are not a valid frame.
    Corrupt(String),
}

/// Checks the frame at the start of `b`: length bound, CRC, header sanity and that the
/// records inside parse. Only a frame that passes every check is ever decoded for readers.
pub fn check_frame(b: &[u8]) -> FrameCheck {
    if b.len() < FRAME_PREFIX_LEN {
        return FrameCheck::Incomplete;
    }
    let len = u32_at(b, FRAME_LENGTH) as usize;
    if !(FRAME_HEADER_LEN - FRAME_PREFIX_LEN..=MAX_FRAME_LEN).contains(&len) {
        return FrameCheck::Corrupt(format!("frame length {len} out of bounds"));
    }
    let total = FRAME_PREFIX_LEN + len;
    if b.len() < total {
        return FrameCheck::Incomplete;
    }
    let stored = u32_at(b, FRAME_CRC);
    let mut h = crc32fast::Hasher::new();
    h.update(&b[FRAME_LENGTH..FRAME_LENGTH + 4]);
    h.update(&b[FRAME_PREFIX_LEN..total]);
    if h.finalize() != stored {
        return FrameCheck::Corrupt("frame CRC mismatch".into());
    }
    if b[FRAME_VERSION_AT] != FRAME_VERSION {
        return FrameCheck::Corrupt(format!("unknown frame version {}", b[FRAME_VERSION_AT]));
    }
    let attributes = b[FRAME_ATTRIBUTES];
    if attributes & !(FRAME_ATTR_SOURCE | FRAME_ATTR_SPARSE) != 0 {
        return FrameCheck::Corrupt(format!("unknown frame attributes {attributes}"));
    }
    let mark_start = if attributes & FRAME_ATTR_SOURCE != 0 {
        match mark_span(&b[FRAME_HEADER_LEN..total]) {
            Some(at) => FRAME_HEADER_LEN + at,
            None => return FrameCheck::Corrupt("frame's source mark is malformed".into()),
        }
    } else {
        total
    };
    let mut records_end = mark_start;
    let record_count = u32_at(b, FRAME_RECORD_COUNT);
    let sparse = attributes & FRAME_ATTR_SPARSE != 0;
    let mut span = record_count as u64;
    if sparse {
        let table = (record_count as usize + 1) * DELTA_LEN;
        if records_end < FRAME_HEADER_LEN + table {
            return FrameCheck::Corrupt("sparse frame's offset table is malformed".into());
        }
        records_end -= table;
        match check_deltas(&b[records_end..records_end + table]) {
            Some(s) => span = s,
            None => return FrameCheck::Corrupt("sparse frame's offsets are not ascending".into()),
        }
    } else if record_count == 0 {
        return FrameCheck::Corrupt("frame holds no records".into());
    }
    let info = FrameInfo {
        base_offset: u64_at(b, FRAME_BASE_OFFSET),
        record_count,
        min_ts: i64_at(b, FRAME_MIN_TS),
        max_ts: i64_at(b, FRAME_MAX_TS),
        total_len: total,
        records_end,
        span,
        sparse,
        mark_start,
    };
    if info.base_offset.checked_add(span).is_none() {
        return FrameCheck::Corrupt("frame's offsets run past the largest offset".into());
    }
    if let Err(e) = walk_records(&b[FRAME_HEADER_LEN..records_end], info.record_count) {
        return FrameCheck::Corrupt(e);
    }
    FrameCheck::Ok(info)
}

/// Checks a sparse frame's offset table (deltas, then the span): strictly ascending deltas
/// below a span of at least 1. Returns the span.
fn check_deltas(table: &[u8]) -> Option<u64> {
    let (deltas, span) = table.split_at(table.len() - DELTA_LEN);
    let span = u32_at(span, 0) as u64;
    let mut prev: Option<u32> = None;
    for c in deltas.chunks_exact(DELTA_LEN) {
        let d = u32_at(c, 0);
        if prev.is_some_and(|p| d <= p) {
            return None;
        }
        prev = Some(d);
    }
    (span >= 1 && prev.is_none_or(|p| (p as u64) < span)).then_some(span)
}

/// Where the source mark starts in a frame body (bytes after the frame header), when the
/// body ends with a well-formed one.
fn mark_span(body: &[u8]) -> Option<usize> {
    let n = body.len().checked_sub(MARK_LEN_FIELD)?;
    let len = u32_at(body, n) as usize;
    let start = n.checked_sub(len)?;
    let mark = &body[start..n];
    if len < MARK_FIXED_LEN || u16_at(mark, MARK_ID_LEN) as usize != len - MARK_FIXED_LEN {
        return None;
    }
    Some(start)
}

/// Where one source's input stood after a record: the position a rerun resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourcePos {
    /// Which input file of the command (0 = the first).
    pub file: u32,
    /// Input bytes and lines of that file taken.
    pub bytes: u64,
    pub lines: u64,
    /// Records of the source so far (all files).
    pub records: u64,
}

impl SourcePos {
    /// Input order: whether a record ending at `self` is at or before `other`.
    pub fn at_or_before(&self, other: &SourcePos) -> bool {
        (self.file, self.bytes) <= (other.file, other.bytes)
    }

    fn encode_mark(&self, id: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out.extend_from_slice(&self.lines.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&self.file.to_le_bytes());
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&((MARK_FIXED_LEN + id.len()) as u32).to_le_bytes());
    }
}

/// The source mark of a frame that `check_frame` accepted: (source id, position).
pub fn source_mark<'a>(frame: &'a [u8], info: &FrameInfo) -> Option<(&'a [u8], SourcePos)> {
    if info.mark_start == info.total_len {
        return None;
    }
    let m = &frame[info.mark_start..info.total_len - MARK_LEN_FIELD];
    let pos = SourcePos {
        bytes: u64_at(m, MARK_INPUT_BYTES),
        lines: u64_at(m, MARK_INPUT_LINES),
        records: u64_at(m, MARK_RECORDS),
        file: u32_at(m, MARK_FILE_INDEX),
    };
    Some((&m[MARK_FIXED_LEN..], pos))
}

/// Checks that `count` records tile `body` exactly.
fn walk_records(body: &[u8], count: u32) -> Result<(), String> {
    let mut at = 0usize;
    for i in 0..count {
        let r = parse_record(&body[at..], 0)
            .ok_or_else(|| format!("record {i} of frame is malformed"))?;
        at += r.1;
    }
    if at != body.len() {
        return Err("frame has bytes after its last record".into());
    }
    Ok(())
}

/// Parses one record at the start of `b`; returns it and its encoded length.
fn parse_record(b: &[u8], offset: u64) -> Option<(Record<'_>, usize)> {
    if b.len() < REC_FIXED_LEN {
        return None;
    }
    let body = u32_at(b, REC_LEN) as usize;
    let total = body.checked_add(4)?;
    if total < REC_FIXED_LEN || b.len() < total {
        return None;
    }
    let rec = &b[..total];
    let key_len = i32_at(rec, REC_KEY_LEN);
    let value_len = u32_at(rec, REC_VALUE_LEN) as usize;
    let header_count = u32_at(rec, REC_HEADER_COUNT);
    let mut at = REC_FIXED_LEN;
    let key = if key_len < 0 {
        if key_len != -1 {
            return None;
        }
        None
    } else {
        let k = rec.get(at..at + key_len as usize)?;
        at += key_len as usize;
        Some(k)
    };
    let value = rec.get(at..at.checked_add(value_len)?)?;
    at += value_len;
    let headers = &rec[at..];
    let mut rest = headers;
    for _ in 0..header_count {
        let (_, r) = take_len_prefixed(rest)?;
        let (_, r) = take_len_prefixed(r)?;
        rest = r;
    }
    if !rest.is_empty() {
        return None;
    }
    Some((
        Record {
            offset,
            timestamp: i64_at(rec, REC_TIMESTAMP),
            key,
            value,
            value_is_json: rec[REC_ATTRIBUTES] & REC_ATTR_JSON != 0,
            header_count,
            headers,
        },
        total,
    ))
}

/// The offset of the last record of a frame that `check_frame` accepted (None when a sparse
/// frame kept none). A sparse frame's last record may sit well before its next offset.
pub fn last_record_offset(frame: &[u8], info: &FrameInfo) -> Option<u64> {
    if !info.sparse {
        return Some(info.next_offset() - 1);
    }
    let n = (info.record_count as usize).checked_sub(1)?;
    let at = info.records_end + n * DELTA_LEN;
    Some(info.base_offset + u32_at(frame, at) as u64)
}

/// Iterates the records of a frame that `check_frame` accepted.
pub struct RecordIter<'a> {
    body: &'a [u8],
    base: u64,
    next_offset: u64,
    left: u32,
    /// A sparse frame's offset deltas not yet used (empty in a dense frame).
    deltas: &'a [u8],
}

impl<'a> RecordIter<'a> {
    /// `frame` is the whole frame (prefix included) as accepted by `check_frame`.
    pub fn new(frame: &'a [u8], info: &FrameInfo) -> Self {
        let deltas = if info.sparse {
            let at = info.records_end;
            &frame[at..at + info.record_count as usize * DELTA_LEN]
        } else {
            &[]
        };
        RecordIter {
            body: &frame[FRAME_HEADER_LEN..info.records_end],
            base: info.base_offset,
            next_offset: info.base_offset,
            left: info.record_count,
            deltas,
        }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Record<'a>;
    fn next(&mut self) -> Option<Record<'a>> {
        if self.left == 0 {
            return None;
        }
        if self.deltas.len() >= DELTA_LEN {
            self.next_offset = self.base + u32_at(self.deltas, 0) as u64;
            self.deltas = &self.deltas[DELTA_LEN..];
        }
        // check_frame walked these exact bytes, so parsing cannot fail here.
        let (rec, len) = parse_record(self.body, self.next_offset)?;
        self.body = &self.body[len..];
        self.next_offset += 1;
        self.left -= 1;
        Some(rec)
    }
}

/// Builds one frame from records appended to it.
pub struct FrameBuilder {
    buf: Vec<u8>,
    base_offset: u64,
    count: u32,
    min_ts: i64,
    max_ts: i64,
    /// Offset deltas of a sparse frame's records (`push_at`); empty for a dense frame.
    deltas: Vec<u8>,
}

impl FrameBuilder {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(64 << 10);
        buf.resize(FRAME_HEADER_LEN, 0);
        FrameBuilder {
            buf,
            base_offset: 0,
            count: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            deltas: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn max_ts(&self) -> i64 {
        self.max_ts
    }

    /// Starts a new frame whose first record gets `base_offset`.
    pub fn reset(&mut self, base_offset: u64) {
        self.buf.truncate(FRAME_HEADER_LEN);
        self.base_offset = base_offset;
        self.count = 0;
        self.min_ts = i64::MAX;
        self.max_ts = i64::MIN;
        self.deltas.clear();
    }

    pub fn push(&mut self, rec: &RecordRef<'_>) {
        rec.encode_into(&mut self.buf);
        self.count += 1;
        self.min_ts = self.min_ts.min(rec.timestamp);
        self.max_ts = self.max_ts.max(rec.timestamp);
    }

    /// Appends a record of a sparse frame at its own offset (ascending, at least the base
    /// offset, within u32 of it); the frame is then finished with `finish_sparse`.
    pub fn push_at(&mut self, rec: &RecordRef<'_>, offset: u64) {
        self.push(rec);
        let delta = (offset - self.base_offset) as u32;
        self.deltas.extend_from_slice(&delta.to_le_bytes());
    }

    /// Finishes a sparse frame covering `span` offsets from the base offset (records pushed
    /// with `push_at`, maybe none), ending with a source mark when one is given.
    pub fn finish_sparse(&mut self, span: u32, mark: Option<(&str, &SourcePos)>) -> &[u8] {
        let deltas = std::mem::take(&mut self.deltas);
        self.buf.extend_from_slice(&deltas);
        self.buf.extend_from_slice(&span.to_le_bytes());
        self.deltas = deltas;
        self.finish_with(mark, FRAME_ATTR_SPARSE)
    }

    /// Fills in the header and CRC; returns the finished frame bytes.
    pub fn finish(&mut self) -> &[u8] {
        self.finish_marked(None)
    }

    /// Like `finish`, ending the frame with a source mark when one is given: the mark is
    /// under the frame's CRC, so it is durable exactly when the records are.
    pub fn finish_marked(&mut self, mark: Option<(&str, &SourcePos)>) -> &[u8] {
        self.finish_with(mark, 0)
    }

    fn finish_with(&mut self, mark: Option<(&str, &SourcePos)>, attributes: u8) -> &[u8] {
        if let Some((id, pos)) = mark {
            pos.encode_mark(id, &mut self.buf);
        }
        let len = (self.buf.len() - FRAME_PREFIX_LEN) as u32;
        let b = &mut self.buf;
        b[FRAME_LENGTH..FRAME_LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        b[FRAME_VERSION_AT] = FRAME_VERSION;
        b[FRAME_ATTRIBUTES] = attributes | if mark.is_some() { FRAME_ATTR_SOURCE } else { 0 };
        b[10] = 0;
        b[11] = 0;
        b[FRAME_BASE_OFFSET..FRAME_BASE_OFFSET + 8]
            .copy_from_slice(&self.base_offset.to_le_bytes());
        b[FRAME_RECORD_COUNT..FRAME_RECORD_COUNT + 4].copy_from_slice(&self.count.to_le_bytes());
        b[FRAME_MIN_TS..FRAME_MIN_TS + 8].copy_from_slice(&self.min_ts.to_le_bytes());
        b[FRAME_MAX_TS..FRAME_MAX_TS + 8].copy_from_slice(&self.max_ts.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b[FRAME_LENGTH..FRAME_LENGTH + 4]);
        h.update(&b[FRAME_PREFIX_LEN..]);
        let crc = h.finalize();
        b[FRAME_CRC..FRAME_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

impl Default for FrameBuilder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    type TestRecord = (i64, Option<Vec<u8>>, Vec<u8>, Headers);

    fn build(recs: &[TestRecord], base: u64) -> Vec<u8> {
        build_marked(recs, base, None)
    }

    fn build_marked(recs: &[TestRecord], base: u64, mark: Option<(&str, &SourcePos)>) -> Vec<u8> {
        let mut fb = FrameBuilder::new();
        fb.reset(base);
        for (ts, k, v, hs) in recs {
            let mut hb = Vec::new();
            for (n, hv) in hs {
                encode_header(&mut hb, n, hv);
            }
            fb.push(&RecordRef {
                timestamp: *ts,
                key: k.as_deref(),
                value: v,
                headers: &hb,
                header_count: hs.len() as u32,
                value_is_json: false,
            });
        }
        fb.finish_marked(mark).to_vec()
    }

    #[test]
    fn zero_filled_bytes_are_never_a_frame() {
        for n in [8usize, 40, 4096] {
            assert!(matches!(check_frame(&vec![0u8; n]), FrameCheck::Corrupt(_)));
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = FileHeader {
            magic: *LOG_MAGIC,
            base_offset: 42,
            created_ms: 7,
        };
        let mut b = h.encode();
        assert_eq!(FileHeader::decode(&b, LOG_MAGIC), Ok(h));
        assert!(FileHeader::decode(&b, INDEX_MAGIC).is_err());
        b[13] ^= 1;
        assert!(FileHeader::decode(&b, LOG_MAGIC).is_err());
    }

    #[test]
    fn file_names() {
        assert_eq!(
            segment_file_name(1042, LOG_SUFFIX),
            "00000000000000001042.log"
        );
        assert_eq!(
            parse_segment_file_name("00000000000000001042.log", LOG_SUFFIX),
            Some(1042)
        );
        assert_eq!(
            parse_segment_file_name("00000000000000001042.index", LOG_SUFFIX),
            None
        );
        assert_eq!(parse_segment_file_name("1042.log", LOG_SUFFIX), None);
    }

    proptest! {
        #[test]
        fn frames_round_trip(
            base in 0u64..u64::MAX / 2,
            recs in prop::collection::vec((
                any::<i64>(),
                prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
                prop::collection::vec(any::<u8>(), 0..200),
                prop::collection::vec((prop::collection::vec(any::<u8>(), 0..8), prop::collection::vec(any::<u8>(), 0..8)), 0..3),
            ), 1..20)
        ) {
            let frame = build(&recs, base);
            let info = match check_frame(&frame) { FrameCheck::Ok(i) => i, other => panic!("{other:?}") };
            prop_assert_eq!(info.base_offset, base);
            prop_assert_eq!(info.record_count as usize, recs.len());
            prop_assert_eq!(info.total_len, frame.len());
            let got: Vec<_> = RecordIter::new(&frame, &info).collect();
            prop_assert_eq!(got.len(), recs.len());
            for (i, (r, (ts, k, v, hs))) in got.iter().zip(&recs).enumerate() {
                prop_assert_eq!(r.offset, base + i as u64);
                prop_assert_eq!(r.timestamp, *ts);
                prop_assert_eq!(r.key, k.as_deref());
                prop_assert_eq!(r.value, &v[..]);
                let h: Vec<(Vec<u8>, Vec<u8>)> = r.headers().map(|(a, b)| (a.to_vec(), b.to_vec())).collect();
                prop_assert_eq!(&h, hs);
            }
            // every strict prefix is incomplete or corrupt, never a frame
            for cut in 0..frame.len() {
                prop_assert!(!matches!(check_frame(&frame[..cut]), FrameCheck::Ok(_)));
            }
        }

        #[test]
        fn marked_frames_round_trip(
            id in "[A-Za-z0-9._-]{1,40}",
            file in any::<u32>(), bytes in any::<u64>(), lines in any::<u64>(), records in any::<u64>(),
            n in 1usize..5,
        ) {
            let recs: Vec<TestRecord> = (0..n).map(|i| (i as i64, None, vec![b'x'; i], vec![])).collect();
            let pos = SourcePos { file, bytes, lines, records };
            let frame = build_marked(&recs, 3, Some((&id, &pos)));
            let info = match check_frame(&frame) { FrameCheck::Ok(i) => i, other => panic!("{other:?}") };
            prop_assert_eq!(RecordIter::new(&frame, &info).count(), n);
            prop_assert_eq!(source_mark(&frame, &info), Some((id.as_bytes(), pos)));
            for cut in 0..frame.len() {
                prop_assert!(!matches!(check_frame(&frame[..cut]), FrameCheck::Ok(_)));
            }
            let plain = build(&recs, 3);
            let pinfo = match check_frame(&plain) { FrameCheck::Ok(i) => i, other => panic!("{other:?}") };
            prop_assert_eq!(source_mark(&plain, &pinfo), None);
        }

        #[test]
        fn sparse_frames_round_trip(
            base in 0u64..u64::MAX / 2,
            offs in prop::collection::btree_set(0u32..5000, 0..12),
            extra in 1u32..100,
            marked in any::<bool>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let offs: Vec<u32> = offs.into_iter().collect();
            let span = offs.last().map_or(0, |d| d + 1) + extra - 1;
            let span = span.max(1);
            let mark = SourcePos { file: 0, bytes: 10, lines: 1, records: 1 };
            let mut fb = FrameBuilder::new();
            fb.reset(base);
            for (i, d) in offs.iter().enumerate() {
                let v = vec![b'v'; i];
                fb.push_at(&RecordRef { timestamp: *d as i64, key: Some(b"k"), value: &v, headers: &[], header_count: 0, value_is_json: false }, base + *d as u64);
            }
            let frame = fb.finish_sparse(span, marked.then_some(("src", &mark))).to_vec();
            let info = match check_frame(&frame) { FrameCheck::Ok(i) => i, other => panic!("{other:?}") };
            prop_assert!(info.sparse);
            prop_assert_eq!(info.record_count as usize, offs.len());
            prop_assert_eq!(info.next_offset(), base + span as u64);
            let got: Vec<u64> = RecordIter::new(&frame, &info).map(|r| r.offset).collect();
            let want: Vec<u64> = offs.iter().map(|d| base + *d as u64).collect();
            prop_assert_eq!(got, want);
            for (i, r) in RecordIter::new(&frame, &info).enumerate() {
                prop_assert_eq!(r.value.len(), i);
            }
            prop_assert_eq!(source_mark(&frame, &info), marked.then_some((&b"src"[..], mark)));
            for cut in 0..frame.len() {
                prop_assert!(!matches!(check_frame(&frame[..cut]), FrameCheck::Ok(_)));
            }
            let mut bad = frame.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(!matches!(check_frame(&bad), FrameCheck::Ok(_)));
        }

        #[test]
        fn any_flipped_bit_in_a_marked_frame_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mark = SourcePos { file: 1, bytes: 99, lines: 3, records: 7 };
            let frame = build_marked(&[(5, None, b"{}".to_vec(), vec![])], 9, Some(("dump", &mark)));
            let mut bad = frame.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(!matches!(check_frame(&bad), FrameCheck::Ok(_)));
        }

        #[test]
        fn any_flipped_bit_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let frame = build(&[(5, Some(b"k".to_vec()), b"{\"a\":1}".to_vec(), vec![])], 9);
            let mut bad = frame.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(!matches!(check_frame(&bad), FrameCheck::Ok(_)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = check_frame(&b);
            let _ = FileHeader::decode(&b, LOG_MAGIC);
        }
    }
}
