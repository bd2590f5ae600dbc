//! Key compaction of topics whose cleanup policy includes `compact` (Kafka's
//! `cleanup.policy=compact`): the sealed segments of a partition are rewritten keeping, for
//! every key, only its latest record, so the topic stays a complete snapshot of the latest
//! value per key (a device's last configuration, a meter's last reading) at a size bounded
//! by the number of keys rather than by history.
//!
//! What it keeps: every record without a key; for each key, the record with its highest
//! offset among the segments compacted; a tombstone (value JSON `null`) until its segment
//! was last written more than `delete_retention_ms` ago; each source's last mark (`produce
//! --source` resumes from it). Offsets never change: a compacted frame is sparse (its records
//! carry their own offsets, see `format`) and covers exactly the offsets of the frames it
//! replaces, so consumer groups, `--from OFFSET` and every index stay meaningful. The
//! active segment is never touched, and a compacted frame never spans two original segments.
//!
//! How (after Kafka's log cleaner): a *cleaner checkpoint* (`cleaner.json`) says where the
//! already-compacted part ends. A pass maps each key of the dirty part (the sealed segments
//! after it, as many as fit in the map's memory budget) to its latest offset, then rewrites
//! every sealed segment up to the end of the mapped part, grouping neighbours whose current
//! sizes fit in one segment. Outputs are written beside the originals as `<base>.log.cleaned`
//! and fsynced; then a marker (`compacting.json`, written atomically) lists the swaps; then
//! each output is renamed over its group's first segment, its indexes rewritten and the rest
//! of the group deleted; then the checkpoint moves and the marker goes. A crash before the
//! marker leaves only `.cleaned` files, which are deleted; after it, whoever next holds the
//! compaction lock (a compactor or a writer's recovery) finishes the swap from the marker.
//!
//! Concurrency: compaction needs no writer lock, so it runs beside a live `produce` or inside
//! `logd serve`. It holds `.compact.lock`, which retention also takes (retention skips a
//! round rather than wait) and recovery waits for, so no two of them edit sealed segments at
//! once. The swap itself holds `.swap.lock`, which `logd verify` takes shared, so verify never
//! sees half a swap. Readers take no lock: a reader holding an old segment keeps reading its
//! mapping (a renamed-over or deleted file stays mapped), and one that reaches its end finds
//! the offsets that follow in the new files; every state in between is a valid log because
//! compacted frames end at the original segment boundaries.

use crate::error::{Error, Result};
use crate::log::format::*;
use crate::log::index::{self, IndexPolicy, SegmentIndex};
use crate::log::meta;
use crate::log::segment::{self, log_path, Mapped, ScanStop};
use crate::log::topic::TopicConfig;
use crate::log::trace;
use crate::log::writer::FRAME_TARGET;
use nix::fcntl::{Flock, FlockArg};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const CLEANER_KIND: &str = "kappa.cleaner";
pub const CLEANER_FILE: &str = "cleaner.json";
pub const MARKER_KIND: &str = "kappa.compacting";
pub const MARKER_FILE: &str = "compacting.json";
const COMPACT_LOCK: &str = ".compact.lock";
const SWAP_LOCK: &str = ".swap.lock";
/// `<base>.log.cleaned`: a compacted segment not yet swapped in.
pub const CLEANED_SUFFIX: &str = "log.cleaned";
/// Memory for the key map of one pass (Kafka's dedupe buffer); more keys take more passes.
pub const DEFAULT_MAP_BYTES: usize = 256 << 20;
/// Estimated bytes a map entry costs beyond its key (box, offset, hash table slot).
const ENTRY_OVERHEAD: usize = 48;

/// Where the compacted part of a partition ends: every sealed segment before `clean_end`
/// holds at most one record per key (for the keys that appear only there).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CleanerCheckpoint {
    pub clean_end: u64,
}

/// One output segment and the segments it replaces (its own base first): offsets
/// [base, end).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Swap {
    pub base: u64,
    pub end: u64,
    pub replaces: Vec<u64>,
}

/// A compaction between its outputs being durable and its swaps being done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub swaps: Vec<Swap>,
    pub clean_end: u64,
}

pub struct Options<'a> {
    /// Compact whatever is dirty, whatever the topic's minimum dirty ratio.
    pub force: bool,
    pub now_ms: i64,
    pub map_bytes: usize,
    /// Set to stop a compaction early (before its swap; a swap under way is finished).
    pub cancel: Option<&'a AtomicBool>,
}

/// What one compaction of a partition did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Offsets rewritten: [first, end).
    pub first: u64,
    pub end: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_before: u64,
    pub records_after: u64,
    pub tombstones_removed: u64,
    pub dirty_ratio: f64,
}

impl Outcome {
    pub fn describe(&self) -> String {
        format!(
            "compacted offsets {}..{}: {} segments into {}, {} records into {} ({} tombstones removed), {} bytes into {}",
            self.first,
            self.end,
            self.segments_before,
            self.segments_after,
            self.records_before,
            self.records_after,
            self.tombstones_removed,
            self.bytes_before,
            self.bytes_after
        )
    }
}

pub enum Compaction {
    Done(Outcome),
    /// Nothing to do, or not now; says why.
    Skipped(String),
}

fn io<'a>(what: &'a str, p: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(format!("{what} {}", p.display()), e)
}

pub fn cleaned_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_file_name(base, CLEANED_SUFFIX))
}

fn lock_file(dir: &Path, name: &str, arg: FlockArg) -> Result<Option<Flock<File>>> {
    let path = dir.join(name);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io("opening", &path))?;
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io(
            format!("locking {}", path.display()),
            std::io::Error::from(e),
        )),
    }
}

/// The compaction lock without waiting: None when a compactor, retention or recovery holds it.
pub fn try_lock(dir: &Path) -> Result<Option<Flock<File>>> {
    lock_file(dir, COMPACT_LOCK, FlockArg::LockExclusiveNonblock)
}

/// The compaction lock, waiting for a compaction under way to end.
pub fn lock(dir: &Path) -> Result<Flock<File>> {
    lock_file(dir, COMPACT_LOCK, FlockArg::LockExclusive)?.ok_or_else(|| {
        Error::Data(format!(
            "{}: could not take the compaction lock",
            dir.display()
        ))
    })
}

/// The swap lock shared (for `logd verify`), when the partition was ever compacted; None
/// otherwise (nothing is created: verify only reads).
pub fn swap_shared(dir: &Path) -> Option<Flock<File>> {
    let f = File::open(dir.join(SWAP_LOCK)).ok()?;
    Flock::lock(f, FlockArg::LockShared).ok()
}

pub fn read_checkpoint(dir: &Path) -> std::result::Result<Option<CleanerCheckpoint>, String> {
    meta::read_checked(&dir.join(CLEANER_FILE), CLEANER_KIND)
}

/// Records a partition holds from `earliest` to `latest`: the offset range, unless compaction
/// has thinned it (the topic compacts, or did: a cleaner checkpoint is there), when every
/// frame is read and its records counted.
pub fn records_held(
    dir: &Path,
    cfg: &TopicConfig,
    r: &mut crate::log::PartitionReader,
    (earliest, latest): (u64, u64),
) -> Result<u64> {
    if !cfg.compacts() && !dir.join(CLEANER_FILE).exists() {
        return Ok(latest - earliest);
    }
    r.seek(earliest)?;
    let mut n = 0u64;
    while let Some(f) = r.next_frame()? {
        n += f.records().count() as u64;
    }
    Ok(n)
}

/// Where the compacted part ends (0 when never compacted or the checkpoint is unreadable:
/// that only costs the next pass more memory).
pub fn clean_end(dir: &Path) -> u64 {
    read_checkpoint(dir)
        .ok()
        .flatten()
        .map_or(0, |c| c.clean_end)
}

/// Finishes (or rolls back) a compaction that a crash interrupted. The caller holds the
/// compaction lock. Returns what it did.
pub fn finish_interrupted(dir: &Path) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mp = dir.join(MARKER_FILE);
    match meta::read_checked::<Marker>(&mp, MARKER_KIND) {
        Ok(Some(m)) => {
            swap(dir, &m, None)?;
            notes.push(format!(
                "finished an interrupted compaction ({} segments swapped in)",
                m.swaps.len()
            ));
        }
        Ok(None) => {}
        Err(e) => {
            // An atomically written file that does not check is damage, not a crash: undo
            // what had not begun (outputs not yet renamed) and rebuild every sealed index,
            // since a renamed output's indexes may be stale. Every state of a swap is a
            // valid log, so nothing is lost; the next compaction redoes the rest.
            remove_cleaned(dir);
            let bases = segment::list_segments(dir).map_err(io("listing", dir))?;
            for w in bases.windows(2) {
                rebuild_index(dir, w[0], Some(w[1]))?;
            }
            fs::remove_file(&mp).map_err(io("removing", &mp))?;
            meta::fsync_dir(dir).map_err(io("syncing", dir))?;
            notes.push(format!(
                "{e}: rolled back the compaction it described and rebuilt the indexes"
            ));
        }
    }
    if remove_cleaned(dir) > 0 {
        notes.push("removed the outputs of a compaction interrupted before its swap".into());
    }
    Ok(notes)
}

/// Deletes `.cleaned` outputs; returns how many.
fn remove_cleaned(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    for ent in rd.flatten() {
        let name = ent.file_name();
        if name
            .to_str()
            .is_some_and(|s| parse_segment_file_name(s, CLEANED_SUFFIX).is_some())
            && fs::remove_file(ent.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Rewrites a segment's indexes from its log (up to `limit`, the next segment's base).
/// Returns the offset its valid frames reach.
fn rebuild_index(dir: &Path, base: u64, limit: Option<u64>) -> Result<u64> {
    let path = log_path(dir, base);
    let file = File::open(&path).map_err(io("opening", &path))?;
    let map = Mapped::of(&file).map_err(io("mapping", &path))?;
    let b = map.bytes();
    let h = FileHeader::decode(b, LOG_MAGIC)
        .map_err(|why| Error::Data(format!("{}: {why}", path.display())))?;
    let s = segment::scan(
        b,
        FILE_HEADER_LEN,
        base,
        limit,
        IndexPolicy::new(),
        i64::MIN,
    );
    index::write_files(&path, base, &s.index, h.created_ms, true)
        .map_err(io("writing the indexes of", &path))?;
    Ok(s.next_offset)
}

/// Does the swaps of a marker (each step idempotent, so a crash anywhere in here is
/// finished by running it again), then moves the checkpoint and removes the marker.
/// `built`: the outputs' indexes when the caller has them.
fn swap(dir: &Path, m: &Marker, built: Option<&[SegmentIndex]>) -> Result<()> {
    let mut clean_end = m.clean_end;
    {
        let _swapping = lock_file(dir, SWAP_LOCK, FlockArg::LockExclusive)?;
        for (i, s) in m.swaps.iter().enumerate() {
            let target = log_path(dir, s.base);
            let cleaned = cleaned_path(dir, s.base);
            if cleaned.exists() {
                trace::renaming(&cleaned, &target);
                fs::rename(&cleaned, &target).map_err(io("renaming", &cleaned))?;
                trace::crash_point("compact-renamed-before-index");
            }
            let reaches = match built.and_then(|b| b.get(i)) {
                Some(idx) => {
                    let created = created_ms(&target)?;
                    index::write_files(&target, s.base, idx, created, true)
                        .map_err(io("writing the indexes of", &target))?;
                    s.end
                }
                None => rebuild_index(dir, s.base, Some(s.end))?,
            };
            if reaches != s.end {
                // The output is not there (a rename undone by a power cut together with its
                // source, which no crash leaves but a damaged file system might): the
                // originals stay, whole, and from this group on nothing counts as compacted.
                clean_end = clean_end.min(s.base);
                continue;
            }
            for &old in s.replaces.iter().filter(|b| **b != s.base) {
                let p = log_path(dir, old);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(format!("removing {}", p.display()), e)),
                }
                let _ = fs::remove_file(p.with_extension(INDEX_SUFFIX));
                let _ = fs::remove_file(p.with_extension(TIMEINDEX_SUFFIX));
            }
        }
        meta::fsync_dir(dir).map_err(io("syncing", dir))?;
    }
    trace::crash_point("compact-swapped-before-checkpoint");
    let cp = dir.join(CLEANER_FILE);
    meta::write_checked(&cp, CLEANER_KIND, &CleanerCheckpoint { clean_end })
        .map_err(io("writing", &cp))?;
    let mp = dir.join(MARKER_FILE);
    match fs::remove_file(&mp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", mp.display()), e)),
    }
    meta::fsync_dir(dir).map_err(io("syncing", dir))
}

fn created_ms(path: &Path) -> Result<i64> {
    let mut f = File::open(path).map_err(io("opening", path))?;
    let mut h = [0u8; FILE_HEADER_LEN];
    std::io::Read::read_exact(&mut f, &mut h).map_err(io("reading", path))?;
    FileHeader::decode(&h, LOG_MAGIC)
        .map(|h| h.created_ms)
        .map_err(|why| Error::Data(format!("{}: {why}", path.display())))
}

fn mtime(path: &Path) -> Result<SystemTime> {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(io("reading the time of", path))
}

fn ms_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A sealed segment, mapped.
struct Sealed {
    base: u64,
    limit: u64,
    path: PathBuf,
    map: Mapped,
}

impl Sealed {
    fn open(dir: &Path, base: u64, limit: u64) -> Result<Sealed> {
        let path = log_path(dir, base);
        let file = File::open(&path).map_err(io("opening", &path))?;
        let map = Mapped::of(&file).map_err(io("mapping", &path))?;
        match FileHeader::decode(map.bytes(), LOG_MAGIC) {
            Ok(h) if h.base_offset == base => {}
            Ok(h) => {
                return Err(Error::Data(format!(
                    "{}: header names base offset {}; run `logd repair` before compacting",
                    path.display(),
                    h.base_offset
                )))
            }
            Err(why) => {
                return Err(Error::Data(format!(
                    "{}: {why}; run `logd repair` before compacting",
                    path.display()
                )))
            }
        }
        Ok(Sealed {
            base,
            limit,
            path,
            map,
        })
    }

    /// Every frame (position, info) from the first to the limit. Damage, a gap or a segment
    /// that ends early is an error: compaction never rewrites what it cannot read whole.
    fn frames(&self) -> Result<Vec<(usize, FrameInfo)>> {
        let b = self.map.bytes();
        let (mut pos, mut off) = (FILE_HEADER_LEN, self.base);
        let mut out = Vec::new();
        while off != self.limit {
            let why = match b.get(pos..).map(check_frame) {
                Some(FrameCheck::Ok(info)) if info.base_offset == off => {
                    if info.next_offset() > self.limit {
                        "frame runs past the next segment's base offset".to_string()
                    } else {
                        out.push((pos, info));
                        pos += info.total_len;
                        off = info.next_offset();
                        continue;
                    }
                }
                Some(FrameCheck::Ok(info)) => format!(
                    "frame starts at offset {} where {off} was expected",
                    info.base_offset
                ),
                Some(FrameCheck::Corrupt(w)) => w,
                Some(FrameCheck::Incomplete) | None => {
                    format!("segment ends before offset {}", self.limit)
                }
            };
            return Err(Error::Data(format!(
                "{}: position {pos} (offset {off}): {why}; run `logd repair` before compacting",
                self.path.display()
            )));
        }
        Ok(out)
    }

    fn frame(&self, pos: usize, info: &FrameInfo) -> &[u8] {
        &self.map.bytes()[pos..pos + info.total_len]
    }
}

fn is_tombstone(r: &Record<'_>) -> bool {
    r.value_is_json && r.value == b"null"
}

fn cancelled(o: &Options<'_>) -> bool {
    o.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
}

/// The records of sparse output frames being gathered: one or more whole input frames.
struct Gather {
    fb: FrameBuilder,
    /// Offsets covered so far: [base, end); None when nothing is gathered.
    range: Option<(u64, u64)>,
    bytes: usize,
}

impl Gather {
    fn start(&mut self, base: u64) {
        if self.range.is_none() {
            self.fb.reset(base);
            self.range = Some((base, base));
            self.bytes = FRAME_HEADER_LEN;
        }
    }

    /// Writes what is gathered as one sparse frame (with the mark, when given).
    fn flush(
        &mut self,
        out: &mut impl Write,
        written: &mut u64,
        mark: Option<(&str, &SourcePos)>,
    ) -> std::io::Result<()> {
        let Some((base, end)) = self.range.take() else {
            return Ok(());
        };
        // `take` keeps every gathered range within u32 of its base (see `fits`).
        let frame = self.fb.finish_sparse((end - base) as u32, mark);
        out.write_all(frame)?;
        *written += frame.len() as u64;
        Ok(())
    }

    fn fits(&self, bytes: usize, end: u64) -> bool {
        match self.range {
            None => true,
            Some((base, _)) => self.bytes + bytes <= FRAME_TARGET && end - base <= u32::MAX as u64,
        }
    }
}

/// Compacts one partition directory if it is due (or `force`). Needs no writer lock;
/// returns Skipped when another compaction, retention or recovery holds the partition.
pub fn partition(dir: &Path, cfg: &TopicConfig, o: &Options<'_>) -> Result<Compaction> {
    let Some(_lock) = try_lock(dir)? else {
        return Ok(Compaction::Skipped(
            "busy (compaction, retention or recovery)".into(),
        ));
    };
    finish_interrupted(dir)?;
    let bases = segment::list_segments(dir).map_err(io("listing", dir))?;
    if bases.len() < 2 {
        return Ok(Compaction::Skipped("no sealed segment".into()));
    }
    let sealed = bases.len() - 1;
    let mut sizes = Vec::with_capacity(sealed);
    for &b in &bases[..sealed] {
        let p = log_path(dir, b);
        sizes.push(fs::metadata(&p).map_err(io("reading", &p))?.len());
    }
    let clean_end = clean_end(dir);
    let Some(first_dirty) = (0..sealed).find(|&i| bases[i + 1] > clean_end) else {
        return Ok(Compaction::Skipped(
            "nothing new since the last compaction".into(),
        ));
    };
    let total: u64 = sizes.iter().sum();
    let dirty: u64 = sizes[first_dirty..].iter().sum();
    let ratio = if total == 0 {
        0.0
    } else {
        dirty as f64 / total as f64
    };
    if !o.force && ratio < cfg.min_cleanable_dirty_ratio {
        return Ok(Compaction::Skipped(format!(
            "dirty ratio {ratio:.2} below the topic's {}",
            cfg.min_cleanable_dirty_ratio
        )));
    }

    // Pass 1: each dirty key's latest offset, and each source's last mark.
    let mut latest: FxHashMap<Box<[u8]>, u64> = FxHashMap::default();
    let mut map_bytes = 0usize;
    let mut marks: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
    let mut end_i = sealed;
    let mut out = Outcome {
        dirty_ratio: ratio,
        first: bases[0],
        ..Outcome::default()
    };
    for i in 0..sealed {
        if i > first_dirty && map_bytes >= o.map_bytes {
            end_i = i;
            break;
        }
        if cancelled(o) {
            return Ok(Compaction::Skipped("stopped".into()));
        }
        let seg = Sealed::open(dir, bases[i], bases[i + 1])?;
        for (pos, info) in seg.frames()? {
            let frame = seg.frame(pos, &info);
            if let Some((id, _)) = source_mark(frame, &info) {
                marks.insert(id.to_vec(), info.base_offset);
            }
            out.records_before += info.record_count as u64;
            if i < first_dirty {
                continue;
            }
            for r in RecordIter::new(frame, &info) {
                let Some(k) = r.key else { continue };
                match latest.get_mut(k) {
                    Some(off) => *off = r.offset,
                    None => {
                        map_bytes += k.len() + ENTRY_OVERHEAD;
                        latest.insert(k.into(), r.offset);
                    }
                }
            }
        }
    }
    let dirty_end = bases[end_i];
    out.end = dirty_end;
    out.segments_before = end_i;
    out.bytes_before = sizes[..end_i].iter().sum();

    // Groups of neighbours whose current sizes fit in one segment.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < end_i {
        let (start, mut sum) = (i, sizes[i]);
        i += 1;
        while i < end_i && sum + sizes[i] <= cfg.segment_bytes {
            sum += sizes[i];
            i += 1;
        }
        groups.push((start, i));
    }

    // Pass 2: write each group's output.
    let horizon = o.now_ms.saturating_sub(cfg.delete_retention_ms as i64);
    let mut swaps = Vec::new();
    let mut built = Vec::new();
    let mut gather = Gather {
        fb: FrameBuilder::new(),
        range: None,
        bytes: 0,
    };
    let result = (|| -> Result<bool> {
        for &(gs, ge) in &groups {
            let gbase = bases[gs];
            let cleaned = cleaned_path(dir, gbase);
            let werr = |e: std::io::Error| Error::io(format!("writing {}", cleaned.display()), e);
            let mut changed = ge - gs > 1;
            let mut newest = UNIX_EPOCH;
            let file = File::create(&cleaned).map_err(io("creating", &cleaned))?;
            trace::created(&cleaned);
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let header = FileHeader {
                magic: *LOG_MAGIC,
                base_offset: gbase,
                created_ms: created_ms(&log_path(dir, gbase))?,
            };
            w.write_all(&header.encode()).map_err(werr)?;
            let mut written = FILE_HEADER_LEN as u64;
            for si in gs..ge {
                if cancelled(o) {
                    return Ok(false);
                }
                let seg = Sealed::open(dir, bases[si], bases[si + 1])?;
                let modified = mtime(&seg.path)?;
                newest = newest.max(modified);
                let expired = ms_of(modified) < horizon;
                for (pos, info) in seg.frames()? {
                    let frame = seg.frame(pos, &info);
                    let mark = source_mark(frame, &info);
                    let kept_mark = match mark {
                        Some((id, p)) if marks.get(id) == Some(&info.base_offset) => {
                            let id = std::str::from_utf8(id).map_err(|_| {
                                Error::Data(format!(
                                    "{}: position {pos}: a source id that is not UTF-8",
                                    seg.path.display()
                                ))
                            })?;
                            Some((id, p))
                        }
                        _ => None,
                    };
                    let (mut kept, mut kept_bytes) = (0u32, 0usize);
                    for r in RecordIter::new(frame, &info) {
                        match keep(&r, &latest, expired) {
                            Keep::Yes => {
                                kept += 1;
                                kept_bytes += record_len(&r) + DELTA_LEN;
                            }
                            Keep::Superseded => {}
                            Keep::ExpiredTombstone => out.tombstones_removed += 1,
                        }
                    }
                    out.records_after += kept as u64;
                    if kept == info.record_count
                        && (mark.is_none() || kept_mark.is_some())
                        && gather.range.is_none()
                    {
                        // Nothing to take out: the frame is copied as it is.
                        w.write_all(frame).map_err(werr)?;
                        written += frame.len() as u64;
                        continue;
                    }
                    changed = true;
                    if !gather.fits(kept_bytes, info.next_offset()) {
                        gather.flush(&mut w, &mut written, None).map_err(werr)?;
                    }
                    gather.start(info.base_offset);
                    for r in RecordIter::new(frame, &info) {
                        if keep(&r, &latest, expired) == Keep::Yes {
                            let rec = RecordRef {
                                timestamp: r.timestamp,
                                key: r.key,
                                value: r.value,
                                headers: r.raw_headers(),
                                header_count: r.header_count,
                                value_is_json: r.value_is_json,
                            };
                            gather.fb.push_at(&rec, r.offset);
                        }
                    }
                    gather.bytes += kept_bytes;
                    if let Some(g) = gather.range.as_mut() {
                        g.1 = info.next_offset();
                    }
                    if let Some((id, p)) = kept_mark {
                        gather
                            .flush(&mut w, &mut written, Some((id, &p)))
                            .map_err(werr)?;
                    }
                }
                // A compacted frame never spans two original segments.
                gather.flush(&mut w, &mut written, None).map_err(werr)?;
            }
            let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
            if !changed {
                drop(file);
                let _ = fs::remove_file(&cleaned);
                continue;
            }
            // Tombstones age from when their segment was last written, not from now.
            let _ = file.set_modified(newest);
            file.sync_all().map_err(io("fsync of", &cleaned))?;
            trace::synced(&cleaned, written);
            let idx = check_output(&cleaned, gbase, bases[ge])?;
            out.bytes_after += written;
            swaps.push(Swap {
                base: gbase,
                end: bases[ge],
                replaces: bases[gs..ge].to_vec(),
            });
            built.push(idx);
        }
        Ok(true)
    })();
    match result {
        Ok(true) => {}
        Ok(false) => {
            remove_cleaned(dir);
            return Ok(Compaction::Skipped("stopped".into()));
        }
        Err(e) => {
            remove_cleaned(dir);
            return Err(e);
        }
    }
    // Groups left as they were still count in the result.
    let unchanged: u64 = groups
        .iter()
        .filter(|(gs, _)| !swaps.iter().any(|s| s.base == bases[*gs]))
        .map(|&(gs, ge)| sizes[gs..ge].iter().sum::<u64>())
        .sum();
    out.bytes_after += unchanged;
    out.segments_after = groups.len();
    meta::fsync_dir(dir).map_err(io("syncing", dir))?;
    trace::crash_point("compact-written-before-marker");
    let marker = Marker {
        swaps,
        clean_end: dirty_end,
    };
    if !marker.swaps.is_empty() {
        let mp = dir.join(MARKER_FILE);
        meta::write_checked(&mp, MARKER_KIND, &marker).map_err(io("writing", &mp))?;
        trace::crash_point("compact-marker-written");
    }
    swap(dir, &marker, Some(&built))?;
    Ok(Compaction::Done(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Yes,
    /// A later record of the same key was mapped.
    Superseded,
    /// The key's latest record is a tombstone past the delete retention.
    ExpiredTombstone,
}

fn keep(r: &Record<'_>, latest: &FxHashMap<Box<[u8]>, u64>, expired: bool) -> Keep {
    let Some(k) = r.key else { return Keep::Yes };
    if latest.get(k).is_some_and(|&o| o > r.offset) {
        Keep::Superseded
    } else if expired && is_tombstone(r) {
        Keep::ExpiredTombstone
    } else {
        Keep::Yes
    }
}

fn record_len(r: &Record<'_>) -> usize {
    REC_FIXED_LEN + r.key.map_or(0, |k| k.len()) + r.value.len() + r.raw_headers().len()
}

/// Reads an output back as a reader would: every frame valid, offsets covering exactly
/// [base, end). Returns its indexes.
fn check_output(path: &Path, base: u64, end: u64) -> Result<SegmentIndex> {
    let file = File::open(path).map_err(io("opening", path))?;
    let map = Mapped::of(&file).map_err(io("mapping", path))?;
    let s = segment::scan(
        map.bytes(),
        FILE_HEADER_LEN,
        base,
        Some(end),
        IndexPolicy::new(),
        i64::MIN,
    );
    if s.stop != ScanStop::Limit || s.end != map.len() {
        return Err(Error::Data(format!(
            "{}: the compacted segment does not read back whole ({:?} at position {}); nothing was swapped",
            path.display(),
            s.stop,
            s.end
        )));
    }
    Ok(s.index)
}

/// How long the server's compactor waits between looks at a partition.
pub const INTERVAL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::{read_all, PartitionReader, Row};
    use crate::log::writer::{FsyncMode, PartitionWriter};
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A partition directory of a `compact` topic with 4 KiB segments.
    fn compact_topic() -> (tempfile::TempDir, PathBuf, TopicConfig) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        let mut cfg = TopicConfig::new(1);
        cfg.segment_bytes = 4096;
        cfg.cleanup_policy = "compact".into();
        (tmp, dir, cfg)
    }

    fn opts(force: bool, map_bytes: usize) -> Options<'static> {
        Options {
            force,
            now_ms: crate::record::time::now_ms(),
            map_bytes,
            cancel: None,
        }
    }

    /// Compacts until there is nothing new to compact; returns the passes done.
    fn compact_all(dir: &Path, cfg: &TopicConfig, map_bytes: usize) -> usize {
        let mut n = 0;
        while let Compaction::Done(_) = partition(dir, cfg, &opts(true, map_bytes)).unwrap() {
            n += 1;
            assert!(n < 1000, "compaction does not converge");
        }
        n
    }

    fn verify_clean(dir: &Path) {
        let mut r = crate::log::verify::Report::default();
        crate::log::verify::partition(dir, &mut r);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    /// What a compacted partition must hold: every record past the compacted part; before
    /// it, unkeyed records and each key's last record (less expired tombstones).
    fn expected(all: &[Row], compacted_to: u64, drop_tombstones: bool) -> Vec<Row> {
        let mut last: HashMap<&[u8], u64> = HashMap::new();
        for r in all.iter().filter(|r| r.0 < compacted_to) {
            if let Some(k) = &r.2 {
                last.insert(k, r.0);
            }
        }
        all.iter()
            .filter(|r| {
                if r.0 >= compacted_to {
                    return true;
                }
                match &r.2 {
                    None => true,
                    Some(k) => {
                        last.get(&k[..]) == Some(&r.0) && !(drop_tombstones && r.3 == b"null")
                    }
                }
            })
            .cloned()
            .collect()
    }

    fn write(dir: &Path, cfg: &TopicConfig, rows: &[(Option<u8>, Vec<u8>)], all: &mut Vec<Row>) {
        let mut w = PartitionWriter::open(dir, cfg, FsyncMode::Never, false).unwrap();
        for (i, (k, v)) in rows.iter().enumerate() {
            let key = k.map(|k| vec![b'k', k]);
            let ts = all.len() as i64 * 10;
            let off = w
                .append(&RecordRef {
                    timestamp: ts,
                    key: key.as_deref(),
                    value: v,
                    headers: &[],
                    header_count: 0,
                    value_is_json: v == b"null",
                })
                .unwrap();
            all.push((off, ts, key, v.clone()));
            if i % 5 == 0 {
                w.flush().unwrap();
            }
        }
        w.close().unwrap();
    }

    fn sealed_end(dir: &Path) -> u64 {
        *segment::list_segments(dir).unwrap().last().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever the keys, batches, segment size and map budget: compaction keeps exactly
        /// the unkeyed records and each key's last record of the sealed segments, every
        /// record of the active segment, every offset unchanged; reads, seeks and verify
        /// agree; and appending and compacting again keep that true.
        #[test]
        fn keeps_the_latest_record_per_key(
            batches in prop::collection::vec(prop::collection::vec((prop::option::weighted(0.8, 0u8..12), prop::collection::vec(b'a'..=b'z', 0..120)), 1..80), 1..4),
            seg_bytes in 4096u64..12_000,
            small_map in any::<bool>(),
            seek_at in 0u64..400,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("p");
            let mut cfg = TopicConfig::new(1);
            cfg.segment_bytes = seg_bytes;
            cfg.cleanup_policy = "compact".into();
            let map_bytes = if small_map { 1 } else { DEFAULT_MAP_BYTES };
            let mut all = Vec::new();
            for b in &batches {
                write(&dir, &cfg, b, &mut all);
                compact_all(&dir, &cfg, map_bytes);
                let want = expected(&all, sealed_end(&dir), false);
                prop_assert_eq!(read_all(&dir), want.clone());
                verify_clean(&dir);
                let mut r = PartitionReader::open(&dir).unwrap();
                // Every offset: a seek into a compacted frame that kept nothing at or after
                // it must still find the next record.
                for at in 0..=all.len() as u64 {
                    r.seek(at).unwrap();
                    let got = r.next_frame().unwrap().and_then(|f| f.records().next().map(|x| x.offset));
                    prop_assert_eq!(got, want.iter().find(|x| x.0 >= at).map(|x| x.0), "seek {}", at);
                }
                let ts = seek_at as i64 * 10;
                r.seek_time(ts).unwrap();
                let got = r.next_frame().unwrap().and_then(|f| f.records().next().map(|x| x.offset));
                prop_assert_eq!(got, want.iter().find(|x| x.1 >= ts).map(|x| x.0));
            }
            // A writer reopening a compacted partition recovers it as it is.
            let w = PartitionWriter::open_with(&dir, &cfg, FsyncMode::Batch, false, true).unwrap();
            prop_assert_eq!(w.next_offset(), all.len() as u64);
            w.close().unwrap();
            prop_assert_eq!(read_all(&dir), expected(&all, sealed_end(&dir), false));
        }
    }

    #[test]
    fn tombstones_go_after_the_delete_retention() {
        let (_tmp, dir, mut cfg) = compact_topic();
        let mut all = Vec::new();
        let rows: Vec<(Option<u8>, Vec<u8>)> = (0..400u32)
            .map(|i| {
                let k = (i % 7) as u8;
                let v = if i % 11 == 0 {
                    b"null".to_vec()
                } else {
                    vec![b'v'; 40]
                };
                (Some(k), v)
            })
            .collect();
        write(&dir, &cfg, &rows, &mut all);
        compact_all(&dir, &cfg, DEFAULT_MAP_BYTES);
        let end = sealed_end(&dir);
        assert_eq!(read_all(&dir), expected(&all, end, false));
        assert!(read_all(&dir).iter().any(|r| r.0 < end && r.3 == b"null"));
        // A day later (the default delete retention), the tombstones go too.
        cfg.delete_retention_ms = 0;
        let later = Options {
            now_ms: crate::record::time::now_ms() + 1000,
            ..opts(true, DEFAULT_MAP_BYTES)
        };
        // Nothing is dirty any more: a pass over the clean part still drops tombstones once
        // new data arrives; force one by appending.
        write(&dir, &cfg, &[(None, b"x".to_vec())], &mut all);
        write(&dir, &cfg, &vec![(None, vec![b'y'; 100]); 60], &mut all);
        let Compaction::Done(out) = partition(&dir, &cfg, &later).unwrap() else {
            panic!("not compacted");
        };
        assert!(out.tombstones_removed > 0);
        let end = sealed_end(&dir);
        assert_eq!(read_all(&dir), expected(&all, end, true));
        verify_clean(&dir);
    }

    #[test]
    fn a_source_keeps_its_last_mark() {
        // The source's key is either its own, or one a later writer supersedes: then its
        // last marked frame keeps no record, only the mark, and must still be found.
        for (key, superseded) in [(&b"same"[..], false), (&b"k\x01"[..], true)] {
            let (_tmp, dir, cfg) = compact_topic();
            let mut w = PartitionWriter::open(&dir, &cfg, FsyncMode::Never, false).unwrap();
            w.set_source("dump");
            let mut last = SourcePos::default();
            for i in 0..500u64 {
                let v = vec![b'v'; 50];
                w.append(&RecordRef {
                    timestamp: i as i64,
                    key: Some(key),
                    value: &v,
                    headers: &[],
                    header_count: 0,
                    value_is_json: false,
                })
                .unwrap();
                last = SourcePos {
                    file: 0,
                    bytes: (i + 1) * 51,
                    lines: i + 1,
                    records: i + 1,
                };
                w.mark(last);
                if i % 3 == 0 {
                    w.flush().unwrap();
                }
            }
            w.close().unwrap();
            // Another writer seals the source's segments behind unmarked ones.
            let mut all = Vec::new();
            write(&dir, &cfg, &vec![(Some(1), vec![b'z'; 100]); 100], &mut all);
            let before = crate::log::sources::last_mark(&dir, 0, "dump").unwrap();
            assert_eq!(before, Some(last));
            compact_all(&dir, &cfg, DEFAULT_MAP_BYTES);
            for from in [0, 250, 499] {
                assert_eq!(
                    crate::log::sources::last_mark(&dir, from, "dump").unwrap(),
                    Some(last),
                    "superseded {superseded}, from {from}"
                );
            }
            verify_clean(&dir);
            let rows = read_all(&dir);
            assert!(rows.len() < 100, "{} records left", rows.len());
            let kept = rows.iter().filter(|r| r.3 == vec![b'v'; 50]).count();
            assert_eq!(kept, usize::from(!superseded), "superseded {superseded}");
        }
    }

    /// Stages what a compaction killed in mid-swap leaves: outputs, marker, the first output
    /// renamed in. Returns the segment bases compaction produces and a copy compacted whole.
    fn stage_interrupted_swap(tmp: &Path, dir: &Path, cfg: &TopicConfig) -> (Vec<u64>, PathBuf) {
        let copy = tmp.join("copy");
        std::fs::create_dir(&copy).unwrap();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_file() && !e.file_name().to_string_lossy().starts_with('.') {
                std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
        }
        let bases = segment::list_segments(dir).unwrap();
        assert!(matches!(
            partition(&copy, cfg, &opts(true, DEFAULT_MAP_BYTES)).unwrap(),
            Compaction::Done(_)
        ));
        // The state just after the marker: outputs staged, originals untouched.
        let after = segment::list_segments(&copy).unwrap();
        let mut swaps = Vec::new();
        for (i, &b) in after.iter().enumerate() {
            let end = after.get(i + 1).copied().unwrap_or(u64::MAX);
            if i + 1 == after.len() {
                break;
            }
            std::fs::copy(log_path(&copy, b), cleaned_path(dir, b)).unwrap();
            swaps.push(Swap {
                base: b,
                end,
                replaces: bases
                    .iter()
                    .copied()
                    .filter(|x| *x >= b && *x < end)
                    .collect(),
            });
        }
        let marker = Marker {
            swaps,
            clean_end: *after.last().unwrap(),
        };
        meta::write_checked(&dir.join(MARKER_FILE), MARKER_KIND, &marker).unwrap();
        // Rename the first output already, as a crash in mid-swap would leave it.
        let first = marker.swaps[0].base;
        std::fs::rename(cleaned_path(dir, first), log_path(dir, first)).unwrap();
        (after, copy)
    }

    fn interrupted_rows() -> Vec<(Option<u8>, Vec<u8>)> {
        (0..600u32)
            .map(|i| (Some((i % 5) as u8), vec![b'v'; 30]))
            .collect()
    }

    #[test]
    fn an_interrupted_swap_is_finished_by_recovery() {
        let (tmp, dir, cfg) = compact_topic();
        let mut all = Vec::new();
        write(&dir, &cfg, &interrupted_rows(), &mut all);
        let (after, copy) = stage_interrupted_swap(tmp.path(), &dir, &cfg);
        let w = PartitionWriter::open(&dir, &cfg, FsyncMode::Batch, false).unwrap();
        assert!(
            w.recovery
                .iter()
                .any(|n| n.contains("interrupted compaction")),
            "{:?}",
            w.recovery
        );
        w.close().unwrap();
        assert!(!dir.join(MARKER_FILE).exists());
        assert_eq!(segment::list_segments(&dir).unwrap(), after);
        assert_eq!(read_all(&dir), read_all(&copy));
        assert_eq!(
            read_all(&dir),
            expected(&all, *after.last().unwrap(), false)
        );
        verify_clean(&dir);
    }

    #[test]
    fn retention_beside_a_writer_finishes_an_interrupted_swap_first() {
        // A writer runs on; a `logd compact` beside it is killed in mid-swap; the writer's
        // next retention round must not delete a segment the swap still names.
        let (tmp, dir, mut cfg) = compact_topic();
        cfg.cleanup_policy = "compact,delete".into();
        let mut all = Vec::new();
        write(&dir, &cfg, &interrupted_rows(), &mut all);
        let keep_little = TopicConfig {
            retention_bytes: Some(1),
            ..cfg.clone()
        };
        let mut w = PartitionWriter::open(&dir, &keep_little, FsyncMode::Batch, false).unwrap();
        let (after, _copy) = stage_interrupted_swap(tmp.path(), &dir, &cfg);
        let notes = w.apply_retention(crate::record::time::now_ms()).unwrap();
        assert!(
            notes.iter().any(|n| n.contains("interrupted compaction")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("retention deleted")),
            "{notes:?}"
        );
        assert!(!dir.join(MARKER_FILE).exists());
        w.close().unwrap();
        // Only the active segment is left, and the partition opens and checks clean.
        assert_eq!(
            segment::list_segments(&dir).unwrap(),
            [*after.last().unwrap()]
        );
        let w = PartitionWriter::open(&dir, &cfg, FsyncMode::Batch, false).unwrap();
        assert_eq!(w.next_offset(), all.len() as u64);
        w.close().unwrap();
        verify_clean(&dir);
    }

    #[test]
    fn a_stale_recovery_checkpoint_into_a_compacted_segment_is_not_trusted_without_cleaner_json() {
        // A writer checkpoints, rolls past that segment and dies before its next checkpoint;
        // compaction rewrites the segment; cleaner.json is lost (repair removes a damaged
        // one). The checkpoint's position means nothing in the new file.
        let (_tmp, dir, cfg) = compact_topic();
        let mut all = Vec::new();
        let rows: Vec<(Option<u8>, Vec<u8>)> = (0..200u32)
            .map(|i| (if i % 10 == 0 { Some(1) } else { None }, vec![b'v'; 30]))
            .collect();
        write(&dir, &cfg, &rows, &mut all);
        // A synced close writes the checkpoint (the helper's writers never sync).
        PartitionWriter::open(&dir, &cfg, FsyncMode::Batch, false)
            .unwrap()
            .close()
            .unwrap();
        let cp = dir.join(crate::log::writer::CHECKPOINT_FILE);
        let stale = std::fs::read(&cp).unwrap();
        write(&dir, &cfg, &rows, &mut all);
        compact_all(&dir, &cfg, DEFAULT_MAP_BYTES);
        std::fs::write(&cp, stale).unwrap();
        std::fs::remove_file(dir.join(CLEANER_FILE)).unwrap();
        let w = PartitionWriter::open(&dir, &cfg, FsyncMode::Batch, false).unwrap();
        assert!(
            !w.recovery.iter().any(|n| n.contains("damage")),
            "{:?}",
            w.recovery
        );
        assert_eq!(w.next_offset(), all.len() as u64);
        w.close().unwrap();
        verify_clean(&dir);
        assert_eq!(read_all(&dir), expected(&all, sealed_end(&dir), false));
    }

    #[test]
    fn outputs_without_a_marker_are_rolled_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        let mut cfg = TopicConfig::new(1);
        cfg.segment_bytes = 4096;
        let mut all = Vec::new();
        write(&dir, &cfg, &vec![(Some(1), vec![b'v'; 100]); 100], &mut all);
        std::fs::write(cleaned_path(&dir, 0), b"half a compaction").unwrap();
        let w = PartitionWriter::open(&dir, &cfg, FsyncMode::Batch, false).unwrap();
        w.close().unwrap();
        assert!(!cleaned_path(&dir, 0).exists());
        assert_eq!(read_all(&dir), all);
    }

    #[test]
    fn damage_is_never_compacted() {
        let (_tmp, dir, cfg) = compact_topic();
        let mut all = Vec::new();
        write(&dir, &cfg, &vec![(Some(1), vec![b'v'; 100]); 200], &mut all);
        let p = log_path(&dir, 0);
        let mut b = std::fs::read(&p).unwrap();
        b[FILE_HEADER_LEN + 60] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let e = match partition(&dir, &cfg, &opts(true, DEFAULT_MAP_BYTES)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("compacted damage"),
        };
        assert!(e.contains("logd repair"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b);
        assert!(!cleaned_path(&dir, 0).exists());
    }
}
