//! Checking a log without changing it (`logd verify`): every segment header, every frame's
//! length, CRC and offset continuity, every index and time index entry against the frames,
//! and the checksums of topic, group and checkpoint files. Each problem names its file and
//! position.

use crate::log::format::*;
use crate::log::index::{self, IndexPolicy};
use crate::log::segment::{self, log_path, Mapped, ScanStop};
use crate::log::{compact, groups, meta, topic, writer};
use std::fs::File;
use std::path::Path;

#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    pub segments: u64,
    pub frames: u64,
    pub records: u64,
    pub bytes: u64,
}

/// Whether the partition's writer lock names a running process. Taking the lock to find out
/// would make a writer starting at that moment fail.
fn writer_running(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(".lock"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| {
            pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        })
}

/// Verifies one partition directory.
pub fn partition(dir: &Path, r: &mut Report) {
    // A compaction swapping segments in holds this lock; between its steps the files are a
    // valid log, but not one that matches its indexes everywhere.
    let mut swap = compact::swap_shared(dir);
    loop {
        let mut one = Report::default();
        partition_once(dir, &mut one);
        // A first compaction creates the lock file: if it appeared meanwhile, look again.
        if swap.is_none() {
            swap = compact::swap_shared(dir);
            if swap.is_some() {
                continue;
            }
        }
        r.problems.append(&mut one.problems);
        r.notes.append(&mut one.notes);
        r.segments += one.segments;
        r.frames += one.frames;
        r.records += one.records;
        r.bytes += one.bytes;
        return;
    }
}

fn partition_once(dir: &Path, r: &mut Report) {
    let bases = match segment::list_segments(dir) {
        Ok(b) => b,
        Err(e) => {
            r.problems
                .push(format!("{}: cannot list: {e}", dir.display()));
            return;
        }
    };
    let live = writer_running(dir);
    let cp_path = dir.join("checkpoint.json");
    if let Err(e) = meta::read_checked::<writer::Checkpoint>(&cp_path, writer::CHECKPOINT_KIND) {
        r.problems.push(e);
    }
    if let Err(e) = compact::read_checkpoint(dir) {
        r.problems.push(e);
    }
    match meta::read_checked::<compact::Marker>(
        &dir.join(compact::MARKER_FILE),
        compact::MARKER_KIND,
    ) {
        Ok(Some(_)) => r.notes.push(format!(
            "{}: a compaction is being swapped in (finished by the next compaction or writer)",
            dir.display()
        )),
        Ok(None) => {}
        Err(e) => r.problems.push(e),
    }
    let mut expect: Option<u64> = None;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = log_path(dir, base);
        // Indexes first: a writer writes entries after the log bytes they point to, so
        // entries read now point into what the log mapping below will show.
        let idx = (
            [INDEX_SUFFIX, TIMEINDEX_SUFFIX]
                .iter()
                .any(|x| !path.with_extension(x).exists()),
            index::read_offsets(&path.with_extension(INDEX_SUFFIX), base),
            index::read_times(&path.with_extension(TIMEINDEX_SUFFIX), base),
        );
        r.segments += 1;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Retention removed it since the listing (only ever the oldest ones).
                r.segments -= 1;
                expect = None;
                continue;
            }
            Err(e) => {
                r.problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let map = match Mapped::of(&file) {
            Ok(m) => m,
            Err(e) => {
                r.problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let b = map.bytes();
        r.bytes += b.len() as u64;
        match FileHeader::decode(b, LOG_MAGIC) {
            Ok(h) if h.base_offset == base => {}
            Ok(h) => {
                r.problems.push(format!(
                    "{}: position 0: header names base offset {}",
                    path.display(),
                    h.base_offset
                ));
                continue;
            }
            Err(_) if last && live && b.len() < FILE_HEADER_LEN => {
                r.notes.push(format!(
                    "{}: being created by the running writer",
                    path.display()
                ));
                continue;
            }
            Err(why) => {
                r.problems
                    .push(format!("{}: position 0: {why}", path.display()));
                continue;
            }
        }
        if let Some(e) = expect {
            if e != base {
                r.problems.push(format!(
                    "{}: segment starts at offset {base} but the previous one ends at offset {e}",
                    path.display()
                ));
            }
        }
        let limit = bases.get(i + 1).copied();
        let s = segment::scan(
            b,
            FILE_HEADER_LEN,
            base,
            limit,
            IndexPolicy::new(),
            i64::MIN,
        );
        r.frames += s.frames;
        r.records += s.records;
        match &s.stop {
            ScanStop::End if last => {}
            ScanStop::Limit => {
                if s.end < b.len() {
                    r.notes.push(format!(
                        "{}: position {}: {} bytes of a tail sealed by recovery (not served)",
                        path.display(),
                        s.end,
                        b.len() - s.end
                    ));
                }
            }
            ScanStop::End => r.problems.push(format!(
                "{}: position {}: segment ends at offset {} but the next segment starts at {}",
                path.display(),
                s.end,
                s.next_offset,
                limit.unwrap_or(0)
            )),
            ScanStop::Incomplete if last && live => r.notes.push(format!(
                "{}: position {}: a frame being written by the running writer",
                path.display(),
                s.end
            )),
            ScanStop::Incomplete => r.problems.push(format!(
                "{}: position {} (offset {}): torn tail, {} bytes of an incomplete frame",
                path.display(),
                s.end,
                s.next_offset,
                b.len() - s.end
            )),
            ScanStop::Corrupt(why) => r.problems.push(format!(
                "{}: position {} (offset {}): {why}",
                path.display(),
                s.end,
                s.next_offset
            )),
        }
        expect = Some(s.next_offset);
        check_index(&path, idx, &s, last, last && live, r);
    }
}

/// (an index file is missing, the offset index, the time index), read before the log.
type IndexRead = (
    bool,
    Result<Vec<index::IndexEntry>, String>,
    Result<Vec<index::TimeEntry>, String>,
);

/// `writing`: the active segment of a running writer, whose indexes may be mid-creation.
fn check_index(
    path: &Path,
    idx: IndexRead,
    s: &segment::Scan,
    last: bool,
    writing: bool,
    r: &mut Report,
) {
    let ip = path.with_extension(INDEX_SUFFIX);
    let tp = path.with_extension(TIMEINDEX_SUFFIX);
    let (offs, times) = match idx {
        (false, Ok(o), Ok(t)) => (o, t),
        // Indexes are caches: a missing one is rebuilt from the log, nothing is lost.
        (true, _, _) => {
            r.notes.push(format!(
                "{}: index missing (rebuilt by recovery)",
                path.display()
            ));
            return;
        }
        (_, Err(e), _) | (_, _, Err(e)) if writing => {
            r.notes
                .push(format!("{}: {e} (being written)", ip.display()));
            return;
        }
        // What fails to read is the file header (entries are read whatever they hold).
        (_, Err(e), _) => {
            r.problems
                .push(format!("{}: position 0: {e}", ip.display()));
            return;
        }
        (_, _, Err(e)) => {
            r.problems
                .push(format!("{}: position 0: {e}", tp.display()));
            return;
        }
    };
    for (k, (got, want)) in offs.iter().zip(&s.index.offsets).enumerate() {
        if got != want {
            let at = FILE_HEADER_LEN + k * INDEX_ENTRY_LEN;
            r.problems.push(format!(
                "{}: position {at}: entry ({}, {}) does not match the log ({}, {})",
                ip.display(),
                got.offset,
                got.position,
                want.offset,
                want.position
            ));
            break;
        }
    }
    for (k, (got, want)) in times.iter().zip(&s.index.times).enumerate() {
        if got != want {
            let at = FILE_HEADER_LEN + k * TIMEINDEX_ENTRY_LEN;
            r.problems.push(format!(
                "{}: position {at}: entry does not match the log",
                tp.display()
            ));
            break;
        }
    }
    let (no, nt) = (s.index.offsets.len(), s.index.times.len());
    if offs.len() > no {
        r.problems.push(format!(
            "{}: position {}: {} entries point past the valid log",
            ip.display(),
            FILE_HEADER_LEN + no * INDEX_ENTRY_LEN,
            offs.len() - no
        ));
    }
    if times.len() > nt {
        r.problems.push(format!(
            "{}: position {}: {} entries point past the valid log",
            tp.display(),
            FILE_HEADER_LEN + nt * TIMEINDEX_ENTRY_LEN,
            times.len() - nt
        ));
    }
    // A short index on the active segment is normal while a writer runs.
    if !last && offs.len() < no {
        r.problems.push(format!(
            "{}: position {}: index is short (rebuilt by `logd recover`)",
            ip.display(),
            FILE_HEADER_LEN + offs.len() * INDEX_ENTRY_LEN
        ));
    }
    if !last && times.len() < nt {
        r.problems.push(format!(
            "{}: position {}: index is short (rebuilt by `logd recover`)",
            tp.display(),
            FILE_HEADER_LEN + times.len() * TIMEINDEX_ENTRY_LEN
        ));
    }
}

/// Topic metadata, then each partition.
pub fn topic(log: &topic::Log, name: &str, r: &mut Report) {
    let Ok(dir) = log.topic_dir(name) else { return };
    let cfg = match meta::read_checked::<topic::TopicConfig>(
        &dir.join("topic.json"),
        topic::TOPIC_KIND,
    ) {
        Ok(Some(c)) => c,
        Ok(None) => {
            r.problems
                .push(format!("{}: missing", dir.join("topic.json").display()));
            return;
        }
        Err(e) => {
            r.problems.push(e);
            return;
        }
    };
    for p in 0..cfg.partitions {
        let pd = dir.join(p.to_string());
        if pd.is_dir() {
            partition(&pd, r);
        } else {
            r.problems
                .push(format!("{}: partition directory missing", pd.display()));
        }
    }
    // `produce --source` checkpoints (a damaged one is only a lost hint, but damage all the same).
    let sd = crate::log::sources::dir(&dir);
    for e in std::fs::read_dir(&sd).into_iter().flatten().flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "json") {
            if let Err(e) = meta::read_checked::<crate::log::sources::SourceCheckpoint>(
                &path,
                crate::log::sources::KIND,
            ) {
                r.problems.push(e);
            }
        }
    }
}

pub fn groups(log: &topic::Log, r: &mut Report) {
    let g = groups::Groups::new(log);
    for name in g.list().unwrap_or_default() {
        if let Err(e) = g.load(&name) {
            r.problems.push(e.to_string());
        }
    }
}
