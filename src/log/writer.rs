//! The one writer of a partition: the advisory lock that makes it the only one, recovery on
//! open, appending frames, rolling segments, fsync policy points and retention.
//!
//! Recovery trusts the log over everything else. It scans from the recovery checkpoint (the
//! position up to which data was fsynced at the last clean close) to the end, checking every
//! frame's CRC and offset continuity. A torn or corrupt tail is sealed: a new segment starts at
//! the first offset that was not intact, and readers bound every segment by the next one's
//! base offset, so no file that a reader may have mapped is ever truncated. Indexes that are
//! missing, short or disagree with the scan are rebuilt.

use crate::error::{setup, Error, Result};
use crate::log::compact;
use crate::log::format::*;
use crate::log::index::{self, IndexEntry, IndexPolicy, SegmentIndex, TimeEntry};
use crate::log::meta;
use crate::log::segment::{self, log_path, Mapped, ScanStop};
use crate::log::topic::TopicConfig;
use crate::log::trace;
use crate::record::time::now_ms;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Frames are sealed once they reach this size (or when the input stalls).
pub const FRAME_TARGET: usize = 64 << 10;
/// Finished frames are written out in chunks of about this size.
const WRITE_CHUNK: usize = 1 << 20;
pub const CHECKPOINT_KIND: &str = "kappa.checkpoint";
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint.json";
const LOCK_FILE: &str = ".lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// write(2) only: survives a crash of the process, not a power cut.
    Never,
    /// fdatasync grouped over many records; at exit everything is synced.
    Batch,
    /// fdatasync after every record before the next is read.
    Always,
}

/// The recovery checkpoint: everything before `position` in segment `segment` was fsynced.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub segment: u64,
    pub position: u64,
    pub next_offset: u64,
    pub max_ts: i64,
}

struct Active {
    base: u64,
    path: PathBuf,
    file: File,
    index: File,
    timeindex: File,
    len: u64,
    created_ms: i64,
    policy: IndexPolicy,
    /// Largest record timestamp in the segment so far.
    max_ts: i64,
}

pub struct PartitionWriter {
    dir: PathBuf,
    _lock: Flock<File>,
    cfg: TopicConfig,
    fsync: FsyncMode,
    seg: Active,
    next_offset: u64,
    frame: FrameBuilder,
    wbuf: Vec<u8>,
    ibuf: Vec<u8>,
    tbuf: Vec<u8>,
    /// Bytes written since the last fdatasync.
    unsynced: u64,
    /// Set by any write or sync failure: the writer refuses further work (rule 6).
    failed: bool,
    /// What recovery did on open, for the caller to report.
    pub recovery: Vec<String>,
    /// `produce --source ID`: every frame ends with a mark of where the input stood
    /// after its last record.
    source: Option<String>,
    mark: Option<SourcePos>,
}

fn io_err<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::io(format!("{what} {}", path.display()), e)
}

impl PartitionWriter {
    /// Opens (creating if needed) a partition directory for writing: takes the lock, then
    /// recovers. `wait` blocks on a held lock instead of failing.
    pub fn open(
        dir: &Path,
        cfg: &TopicConfig,
        fsync: FsyncMode,
        wait: bool,
    ) -> Result<PartitionWriter> {
        Self::open_with(dir, cfg, fsync, wait, false)
    }

    /// `full`: ignore the recovery checkpoint and check every segment (`logd recover`).
    pub fn open_with(
        dir: &Path,
        cfg: &TopicConfig,
        fsync: FsyncMode,
        wait: bool,
        full: bool,
    ) -> Result<PartitionWriter> {
        fs::create_dir_all(dir).map_err(|e| setup(format!("{}: {e}", dir.display())))?;
        let lock = lock_partition(dir, wait)?;
        Self::open_locked(dir, cfg, fsync, lock, full)
    }

    /// Opens a partition whose lock the caller already holds (`logd repair` edits the files
    /// first, under the same lock).
    pub fn open_locked(
        dir: &Path,
        cfg: &TopicConfig,
        fsync: FsyncMode,
        lock: Flock<File>,
        full: bool,
    ) -> Result<PartitionWriter> {
        let mut recovery = Vec::new();
        let seg = recover(dir, fsync, full, &mut recovery)?;
        let next_offset = seg.1;
        let mut w = PartitionWriter {
            dir: dir.to_path_buf(),
            _lock: lock,
            cfg: cfg.clone(),
            fsync,
            seg: seg.0,
            next_offset,
            frame: FrameBuilder::new(),
            wbuf: Vec::with_capacity(WRITE_CHUNK + FRAME_TARGET),
            ibuf: Vec::new(),
            tbuf: Vec::new(),
            unsynced: 0,
            failed: false,
            recovery,
            source: None,
            mark: None,
        };
        w.frame.reset(next_offset);
        Ok(w)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records appended but not yet handed to the kernel.
    pub fn pending_records(&self) -> u32 {
        self.frame.count()
    }

    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced + self.wbuf.len() as u64 + self.frame.len() as u64
    }

    fn check_ok(&self) -> Result<()> {
        if self.failed {
            return Err(Error::Data(format!(
                "writer of {} stopped after an earlier I/O error",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Appends one record; returns its offset. It reaches the file at the next `flush`
    /// (or sooner, when a frame fills).
    pub fn append(&mut self, rec: &RecordRef<'_>) -> Result<u64> {
        self.check_ok()?;
        if self.would_seal(rec) {
            self.seal_frame()?;
        }
        let off = self.next_offset;
        self.frame.push(rec);
        self.next_offset += 1;
        if self.wbuf.len() >= WRITE_CHUNK {
            self.write_out()?;
        }
        Ok(off)
    }

    /// From now on frames carry a mark of source `id` (see `mark`).
    pub fn set_source(&mut self, id: &str) {
        self.source = Some(id.to_string());
    }

    /// Where the input of the source stood after the record just appended; the frame
    /// holding that record carries the last such position as its mark.
    pub fn mark(&mut self, pos: SourcePos) {
        self.mark = Some(pos);
    }

    /// Whether appending `rec` would seal the frame being built (sticky partitioning moves
    /// on to the next partition then, as Kafka's producer does when a batch is full).
    pub fn would_seal(&self, rec: &RecordRef<'_>) -> bool {
        !self.frame.is_empty() && self.frame.len() + rec.encoded_len() > FRAME_TARGET
    }

    fn seal_frame(&mut self) -> Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let in_seg = self.seg.len + self.wbuf.len() as u64;
        let has_data = in_seg > FILE_HEADER_LEN as u64;
        let too_big = in_seg + self.frame.len() as u64 > self.cfg.segment_bytes;
        let too_old = now_ms().saturating_sub(self.seg.created_ms) >= self.cfg.segment_ms as i64;
        if has_data && (too_big || too_old) {
            let base = self.next_offset - self.frame.count() as u64;
            self.roll(base)?;
        }
        let pos = self.seg.len + self.wbuf.len() as u64;
        let base = self.next_offset - self.frame.count() as u64;
        if self.seg.policy.wants(pos) {
            IndexEntry {
                offset: base,
                position: pos,
            }
            .encode_into(&mut self.ibuf);
            TimeEntry {
                max_ts_before: self.seg.max_ts,
                offset: base,
                position: pos,
            }
            .encode_into(&mut self.tbuf);
        }
        self.seg.max_ts = self.seg.max_ts.max(self.frame.max_ts());
        let mark = self.source.as_deref().zip(self.mark.take());
        let frame = self
            .frame
            .finish_marked(mark.as_ref().map(|(id, p)| (*id, p)));
        self.wbuf.extend_from_slice(frame);
        self.frame.reset(self.next_offset);
        Ok(())
    }

    /// Hands everything appended so far to the kernel: readers see it from now on.
    pub fn flush(&mut self) -> Result<()> {
        self.check_ok()?;
        self.seal_frame()?;
        self.write_out()
    }

    fn write_out(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.seg.file.write_all(&self.wbuf) {
            self.failed = true;
            // A short write (a full disk) leaves part of a frame: take it back, so the file
            // ends at its last whole frame and the space is free again. If even that fails,
            // the next open's recovery cuts it.
            let _ = self.seg.file.set_len(self.seg.len);
            return Err(Error::io(
                format!("appending to {}", self.seg.path.display()),
                e,
            ));
        }
        self.seg.len += self.wbuf.len() as u64;
        self.unsynced += self.wbuf.len() as u64;
        self.wbuf.clear();
        trace::crash_point("log-written-before-index");
        // Index entries go after the log bytes they point to; a crash in between leaves a
        // short index, which recovery completes.
        trace::torn_write("index-write-torn", &mut self.seg.index, &self.ibuf);
        let r = self.seg.index.write_all(&self.ibuf).and_then(|_| {
            trace::crash_point("index-written-before-timeindex");
            trace::torn_write("timeindex-write-torn", &mut self.seg.timeindex, &self.tbuf);
            self.seg.timeindex.write_all(&self.tbuf)
        });
        self.ibuf.clear();
        self.tbuf.clear();
        if let Err(e) = r {
            self.failed = true;
            return Err(Error::io(
                format!("writing index of {}", self.seg.path.display()),
                e,
            ));
        }
        Ok(())
    }

    /// Flushes and fdatasyncs the active segment: everything appended is durable on return.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.sync_written()
    }

    /// fdatasyncs what was written to the active segment (not the frame being built).
    fn sync_written(&mut self) -> Result<()> {
        if self.unsynced == 0 {
            return Ok(());
        }
        trace::crash_point("written-before-fsync");
        if let Err(e) = self.seg.file.sync_data() {
            self.failed = true;
            return Err(Error::io(
                format!("fsync of {}", self.seg.path.display()),
                e,
            ));
        }
        trace::synced(&self.seg.path, self.seg.len);
        self.unsynced = 0;
        Ok(())
    }

    fn roll(&mut self, base: u64) -> Result<()> {
        self.write_out()?;
        if self.fsync != FsyncMode::Never {
            self.sync_written()?;
        }
        let seg = create_segment(&self.dir, base, self.fsync != FsyncMode::Never)?;
        self.seg = seg;
        self.unsynced = 0;
        let msgs = self.apply_retention(now_ms())?;
        self.recovery.extend(msgs);
        Ok(())
    }

    /// Deletes whole sealed segments that retention no longer keeps. Returns what it did.
    /// A compaction under way has the sealed segments: retention waits for a later round.
    pub fn apply_retention(&mut self, now: i64) -> Result<Vec<String>> {
        let (rb, rm) = (self.cfg.retention_bytes, self.cfg.retention_ms);
        if (rb.is_none() && rm.is_none()) || !self.cfg.deletes() {
            return Ok(Vec::new());
        }
        let Some(_compaction) = compact::try_lock(&self.dir)? else {
            return Ok(Vec::new());
        };
        // A compaction killed mid-swap (beside this writer) left segments that its marker
        // names: finish it first, or deleting one of them would leave a swap that cannot be
        // finished. If it cannot be finished now, delete nothing.
        let mut done = match compact::finish_interrupted(&self.dir) {
            Ok(notes) => notes,
            Err(e) => return Ok(vec![format!("retention skipped: {e}")]),
        };
        let bases = segment::list_segments(&self.dir).map_err(io_err("listing", &self.dir))?;
        let mut sizes = Vec::with_capacity(bases.len());
        for b in &bases {
            sizes.push(
                fs::metadata(log_path(&self.dir, *b))
                    .map(|m| m.len())
                    .unwrap_or(0),
            );
        }
        let mut total: u64 = sizes.iter().sum();
        for i in 0..bases.len().saturating_sub(1) {
            let by_bytes = rb.is_some_and(|rb| total - sizes[i] >= rb);
            let by_age = match rm {
                Some(rm) => match segment_max_ts(&self.dir, bases[i], bases[i + 1]) {
                    Some(ts) => ts < now - rm as i64,
                    None => false,
                },
                None => false,
            };
            if !(by_bytes || by_age) {
                break;
            }
            let p = log_path(&self.dir, bases[i]);
            fs::remove_file(&p).map_err(io_err("deleting", &p))?;
            let _ = fs::remove_file(p.with_extension(INDEX_SUFFIX));
            let _ = fs::remove_file(p.with_extension(TIMEINDEX_SUFFIX));
            total -= sizes[i];
            done.push(format!(
                "retention deleted segment {} (offsets {}..{}, {} bytes)",
                p.display(),
                bases[i],
                bases[i + 1],
                sizes[i]
            ));
        }
        if !done.is_empty() && self.fsync != FsyncMode::Never {
            meta::fsync_dir(&self.dir).map_err(io_err("syncing", &self.dir))?;
        }
        Ok(done)
    }

    /// Flushes, syncs (unless `never`) and moves the recovery checkpoint; releases the lock.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        self.checkpoint()
    }

    /// Syncs and moves the recovery checkpoint to the end of what was written (not under
    /// `never`: a checkpoint may only cover fsynced data).
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.fsync == FsyncMode::Never {
            return Ok(());
        }
        self.sync()?;
        let cp = Checkpoint {
            segment: self.seg.base,
            position: self.seg.len,
            next_offset: self.next_offset,
            max_ts: self.seg.max_ts,
        };
        let p = self.dir.join(CHECKPOINT_FILE);
        meta::write_checked(&p, CHECKPOINT_KIND, &cp).map_err(io_err("writing", &p))
    }

    /// Background work of a long-lived writer (`logd serve`): rolls an active segment that
    /// has data and is past the topic's segment age (a quiet topic otherwise never rolls),
    /// then applies retention. Returns what it did.
    pub fn maintain(&mut self, now: i64) -> Result<Vec<String>> {
        self.flush()?;
        let has_data = self.seg.len > FILE_HEADER_LEN as u64;
        if has_data && now.saturating_sub(self.seg.created_ms) >= self.cfg.segment_ms as i64 {
            self.roll(self.next_offset)?;
            return Ok(std::mem::take(&mut self.recovery));
        }
        self.apply_retention(now)
    }

    /// Takes a changed topic configuration (segment and retention settings) into use.
    pub fn set_config(&mut self, cfg: &TopicConfig) {
        self.cfg = cfg.clone();
    }
}

/// Takes the partition's advisory lock; the holder's pid is written into the lock file so a
/// second writer can name it.
/// Whether no writer holds the partition at `dir` (taking and at once releasing its lock).
pub fn try_lock_partition(dir: &Path) -> Result<bool> {
    let path = dir.join(LOCK_FILE);
    let f = match OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        // Never locked: a directory whose writer died before creating the lock file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(setup(format!("{}: {e}", path.display()))),
    };
    Ok(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok())
}

pub fn lock_partition(dir: &Path, wait: bool) -> Result<Flock<File>> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| setup(format!("{}: {e}", path.display())))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    let mut lock = match Flock::lock(f, arg) {
        Ok(l) => l,
        Err((mut f, _)) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            let by = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(setup(format!(
                "{} is locked by another writer{by}; one writer per partition (use --wait-lock to wait)",
                dir.display()
            )));
        }
    };
    let _ = lock.set_len(0);
    let _ = lock.seek(SeekFrom::Start(0));
    let _ = write!(lock, "{}", std::process::id());
    Ok(lock)
}

fn create_segment(dir: &Path, base: u64, sync: bool) -> Result<Active> {
    let path = log_path(dir, base);
    let created_ms = now_ms();
    let mut f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_err("creating", &path))?;
    trace::created(&path);
    f.write_all(
        &FileHeader {
            magic: *LOG_MAGIC,
            base_offset: base,
            created_ms,
        }
        .encode(),
    )
    .map_err(io_err("writing", &path))?;
    if sync {
        f.sync_all().map_err(io_err("fsync of", &path))?;
        trace::synced(&path, FILE_HEADER_LEN as u64);
        trace::crash_point("segment-created-before-dirsync");
        meta::fsync_dir(dir).map_err(io_err("syncing", dir))?;
    }
    index::write_files(&path, base, &SegmentIndex::default(), created_ms, false)
        .map_err(io_err("indexing", &path))?;
    let (index, timeindex) = open_indexes(&path)?;
    Ok(Active {
        base,
        path,
        file: f,
        index,
        timeindex,
        len: FILE_HEADER_LEN as u64,
        created_ms,
        policy: IndexPolicy::new(),
        max_ts: i64::MIN,
    })
}

fn open_indexes(path: &Path) -> Result<(File, File)> {
    let ip = path.with_extension(INDEX_SUFFIX);
    let tp = path.with_extension(TIMEINDEX_SUFFIX);
    let i = OpenOptions::new()
        .append(true)
        .open(&ip)
        .map_err(io_err("opening", &ip))?;
    let t = OpenOptions::new()
        .append(true)
        .open(&tp)
        .map_err(io_err("opening", &tp))?;
    Ok((i, t))
}

/// Largest record timestamp of a sealed segment (frame headers only).
pub fn segment_max_ts(dir: &Path, base: u64, limit: u64) -> Option<i64> {
    let f = File::open(log_path(dir, base)).ok()?;
    let m = Mapped::of(&f).ok()?;
    let s = segment::scan(
        m.bytes(),
        FILE_HEADER_LEN.min(m.len()),
        base,
        Some(limit),
        IndexPolicy::new(),
        i64::MIN,
    );
    if s.frames == 0 {
        None
    } else {
        Some(s.max_ts)
    }
}

/// Removes leftovers of interrupted work: temp files, and indexes without a segment.
fn clean_leftovers(dir: &Path, bases: &[u64]) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let orphan = [INDEX_SUFFIX, TIMEINDEX_SUFFIX].iter().any(|s| {
            parse_segment_file_name(name, s).is_some_and(|b| bases.binary_search(&b).is_err())
        });
        if name.ends_with(".tmp") || orphan {
            let _ = fs::remove_file(ent.path());
        }
    }
}

/// Recovery on open (the lock is held). Returns the active segment and the next offset.
fn recover(
    dir: &Path,
    fsync: FsyncMode,
    full: bool,
    notes: &mut Vec<String>,
) -> Result<(Active, u64)> {
    let sync = fsync != FsyncMode::Never;
    // Sealed segments are compaction's while it runs: wait for it, then finish a swap that
    // a crash interrupted before looking at any segment.
    let _compaction = compact::lock(dir)?;
    notes.extend(compact::finish_interrupted(dir)?);
    let mut bases = segment::list_segments(dir).map_err(io_err("listing", dir))?;
    clean_leftovers(dir, &bases);
    if bases.is_empty() {
        return Ok((create_segment(dir, 0, sync)?, 0));
    }
    let cp: Option<Checkpoint> =
        match meta::read_checked(&dir.join(CHECKPOINT_FILE), CHECKPOINT_KIND) {
            Ok(c) => c,
            Err(e) => {
                notes.push(format!(
                    "ignoring recovery checkpoint ({e}); scanning the whole partition"
                ));
                None
            }
        };
    let cp = cp.filter(|_| !full);
    // Compaction rewrites sealed segments: a checkpoint into one of those (the writer rolled
    // after it was written) keeps its offsets but not its file positions.
    let compacted_to = compact::clean_end(dir);
    // The segment holding the checkpoint's offsets (compaction may have merged it into the
    // one before); segments before it were checked when they were sealed.
    let start_i = cp
        .map(|c| bases.partition_point(|b| *b <= c.segment).saturating_sub(1))
        .unwrap_or(0);
    let cp = cp.filter(|c| c.segment >= compacted_to && bases.binary_search(&c.segment).is_ok());
    let mut i = start_i;
    let mut expect: Option<u64> = None;
    loop {
        let base = bases[i];
        let last = i + 1 == bases.len();
        let path = log_path(dir, base);
        let file = File::open(&path).map_err(io_err("opening", &path))?;
        let map = Mapped::of(&file).map_err(io_err("mapping", &path))?;
        let bytes = map.bytes();
        if let Err(why) = FileHeader::decode(bytes, LOG_MAGIC).and_then(|h| {
            if h.base_offset == base {
                Ok(h)
            } else {
                Err(format!("header names base offset {}", h.base_offset))
            }
        }) {
            if last && bytes.len() <= FILE_HEADER_LEN {
                // A segment whose creation was cut short: it never held a record.
                notes.push(format!("recreated {} ({why})", path.display()));
                drop(map);
                remove_segment(&path)?;
                if expect.is_some_and(|e| e != base) {
                    return Err(Error::Data(format!(
                        "{}: offsets before {base} are missing",
                        dir.display()
                    )));
                }
                return Ok((create_segment(dir, base, sync)?, base));
            }
            return Err(Error::Data(format!(
                "{}: {why}; run `logd verify` for details",
                path.display()
            )));
        }
        if expect.is_some_and(|e| e != base) {
            return Err(Error::Data(format!(
                "{}: segment starts at offset {base} but the previous one ends at {}",
                path.display(),
                expect.unwrap_or(0)
            )));
        }
        let created_ms = i64_at(bytes, FH_CREATED_MS);
        let limit = if last { None } else { Some(bases[i + 1]) };
        // Where to start checking: the checkpoint when it is in this segment.
        let (mut start, mut off, mut max_ts) = (FILE_HEADER_LEN, base, i64::MIN);
        if let Some(c) = cp.filter(|c| c.segment == base && i == start_i) {
            // In a sealed segment (the writer rolled after the checkpoint) the position
            // must still be where the frame of `next_offset` starts, or the end: compaction
            // may have rewritten the segment since, and with cleaner.json lost nothing else
            // says so. The active segment is never compacted, and may end in a torn frame.
            let pos = c.position as usize;
            let at_frame = last
                || (pos == bytes.len() && limit == Some(c.next_offset))
                || (pos < bytes.len()
                    && matches!(check_frame(&bytes[pos..]),
                        FrameCheck::Ok(f) if f.base_offset == c.next_offset));
            if pos <= bytes.len() && pos >= FILE_HEADER_LEN && c.next_offset >= base && at_frame {
                (start, off, max_ts) = (c.position as usize, c.next_offset, c.max_ts);
            }
        }
        let old = index::read_offsets(&path.with_extension(INDEX_SUFFIX), base).unwrap_or_default();
        let old_t =
            index::read_times(&path.with_extension(TIMEINDEX_SUFFIX), base).unwrap_or_default();
        let kept: Vec<IndexEntry> = old
            .iter()
            .copied()
            .filter(|e| (e.position as usize) < start)
            .collect();
        let kept_t: Vec<TimeEntry> = old_t
            .iter()
            .copied()
            .filter(|e| (e.position as usize) < start)
            .collect();
        let trusted = start > FILE_HEADER_LEN
            && index::offsets_plausible(&kept, base, start as u64)
            && kept.len() == kept_t.len()
            && kept
                .iter()
                .zip(&kept_t)
                .all(|(a, b)| a.offset == b.offset && a.position == b.position)
            && kept
                .first()
                .is_some_and(|e| e.position == FILE_HEADER_LEN as u64);
        let (kept, kept_t) = if trusted {
            (kept, kept_t)
        } else {
            (start, off, max_ts) = (FILE_HEADER_LEN, base, i64::MIN);
            (Vec::new(), Vec::new())
        };
        let policy = IndexPolicy::resume(kept.last().map(|e| e.position));
        let s = segment::scan(bytes, start, off, limit, policy, max_ts);
        let mut idx = SegmentIndex {
            offsets: kept,
            times: kept_t,
        };
        idx.offsets.extend(&s.index.offsets);
        idx.times.extend(&s.index.times);
        let missing = [INDEX_SUFFIX, TIMEINDEX_SUFFIX]
            .iter()
            .any(|x| !path.with_extension(x).exists());
        if idx.offsets != old || idx.times != old_t || missing {
            if !old.is_empty() || s.frames > 0 {
                notes.push(format!("rebuilt indexes of {}", path.display()));
            }
            index::write_files(&path, base, &idx, created_ms, false)
                .map_err(io_err("rebuilding index of", &path))?;
        }
        if !last && matches!(s.stop, ScanStop::Corrupt(_)) {
            // Damage inside a sealed segment is not what a crash leaves (sealed segments
            // were synced before the next one began): cutting here would drop every later
            // segment. Readers stop at it, `logd verify` reports it, `logd repair` decides.
            notes.push(format!(
                "{}: damage at position {} (offset {}) left for `logd repair`",
                path.display(),
                s.end,
                s.next_offset
            ));
            expect = None;
            i += 1;
            continue;
        }
        let clean = matches!(s.stop, ScanStop::End | ScanStop::Limit)
            && (last || s.stop == ScanStop::Limit);
        if clean {
            if last {
                drop(map);
                let (index, timeindex) = open_indexes(&path)?;
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err("opening", &path))?;
                let active = Active {
                    base,
                    path,
                    file,
                    index,
                    timeindex,
                    len: s.end as u64,
                    created_ms,
                    policy: IndexPolicy::resume(idx.offsets.last().map(|e| e.position)),
                    max_ts: s.max_ts,
                };
                return Ok((active, s.next_offset));
            }
            expect = Some(s.next_offset);
            i += 1;
            continue;
        }
        // A torn or damaged tail at s.end: everything from there on is cut.
        let why = match &s.stop {
            ScanStop::Corrupt(w) => w.clone(),
            ScanStop::Incomplete => "torn frame".into(),
            _ => "records missing before the next segment".into(),
        };
        let dropped = bytes.len() - s.end;
        drop(map);
        for later in bases.drain(i + 1..) {
            let p = log_path(dir, later);
            notes.push(format!("removed {} (after the cut)", p.display()));
            remove_segment(&p)?;
        }
        notes.push(format!(
            "cut {} at position {} (offset {}): {why}; {dropped} bytes after it are ignored",
            path.display(),
            s.end,
            s.next_offset
        ));
        if s.next_offset == base {
            // Nothing intact in it: replace the whole segment.
            remove_segment(&path)?;
        }
        if compacted_to > s.next_offset {
            // Offsets from the cut on will be written again: they are not compacted.
            let _ = fs::remove_file(dir.join(compact::CLEANER_FILE));
        }
        if sync {
            meta::fsync_dir(dir).map_err(io_err("syncing", dir))?;
        }
        return Ok((create_segment(dir, s.next_offset, sync)?, s.next_offset));
    }
}

fn remove_segment(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(io_err("removing", path))?;
    let _ = fs::remove_file(path.with_extension(INDEX_SUFFIX));
    let _ = fs::remove_file(path.with_extension(TIMEINDEX_SUFFIX));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::{read_all, PartitionReader};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Whatever the batching, segment size and reopenings, a reader gets back every
        /// record in order with dense offsets, and a time seek finds the first record at or
        /// after the time.
        #[test]
        fn append_reopen_read_back(
            batches in prop::collection::vec(prop::collection::vec((0i64..10_000, prop::collection::vec(any::<u8>(), 0..300)), 1..60), 1..6),
            seg_bytes in 4096u64..20_000,
            target in 0i64..10_000,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("p");
            let mut cfg = TopicConfig::new(1);
            cfg.segment_bytes = seg_bytes;
            let mut want = Vec::new();
            for batch in &batches {
                let mut w = PartitionWriter::open(&dir, &cfg, FsyncMode::Never, false).unwrap();
                for (i, (ts, v)) in batch.iter().enumerate() {
                    let key = if i % 2 == 0 { Some(&b"k"[..]) } else { None };
                    let rec = RecordRef { timestamp: *ts, key, value: v, headers: &[], header_count: 0, value_is_json: false };
                    let off = w.append(&rec).unwrap();
                    prop_assert_eq!(off, want.len() as u64);
                    want.push((off, *ts, key.map(|k| k.to_vec()), v.clone()));
                    if i % 7 == 0 {
                        w.flush().unwrap();
                    }
                }
                w.close().unwrap();
            }
            prop_assert_eq!(read_all(&dir), want.clone());
            let mut r = PartitionReader::open(&dir).unwrap();
            r.seek_time(target).unwrap();
            let first = want.iter().find(|x| x.1 >= target).map(|x| x.0);
            let got = r.next_frame().unwrap().and_then(|f| f.records().next().map(|x| x.offset));
            prop_assert_eq!(got, first);
        }
    }

    #[test]
    fn rolls_by_age() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = TopicConfig::new(1);
        cfg.segment_ms = 1;
        let mut w = PartitionWriter::open(tmp.path(), &cfg, FsyncMode::Never, false).unwrap();
        for i in 0..3 {
            let rec = RecordRef {
                timestamp: i,
                key: None,
                value: b"v",
                headers: &[],
                header_count: 0,
                value_is_json: false,
            };
            w.append(&rec).unwrap();
            w.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        w.close().unwrap();
        assert_eq!(segment::list_segments(tmp.path()).unwrap(), vec![0, 1, 2]);
        assert_eq!(read_all(tmp.path()).len(), 3);
    }
}
