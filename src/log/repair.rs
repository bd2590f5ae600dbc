//! `logd repair`: makes a damaged partition whole again, saying what it cost.
//!
//! Recovery on open handles what crashes leave (a torn tail). Damage elsewhere (a flipped
//! bit in a sealed segment, a zeroed range) stops readers at the damaged frame, and only a
//! decision can end that: this module takes it. The partition is cut at its first damaged
//! frame, so every offset before the cut keeps its record and nothing damaged is ever
//! served. With `salvage`, the intact frames found after the damage (by looking for a valid
//! frame at every byte, which the CRC makes safe) are appended again after the cut, with new
//! offsets. The damaged files are first copied (or moved) into `repaired-<ms>/` inside the
//! partition directory, where readers never look, for whoever wants to study them.

use crate::error::{Error, Result};
use crate::log::compact;
use crate::log::format::*;
use crate::log::segment::{self, log_path, Mapped, ScanStop};
use crate::log::topic::TopicConfig;
use crate::log::writer::{lock_partition, FsyncMode, PartitionWriter};
use crate::record::time::now_ms;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// What `repair` found and did in one partition.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Human-readable lines, in order.
    pub notes: Vec<String>,
    /// Records lost: offsets from the cut to the last readable one, less those salvaged.
    pub lost: u64,
    pub salvaged: u64,
    pub damaged: bool,
}

/// The first damage in a partition: segment index, file position, first offset not intact.
struct Damage {
    seg: usize,
    pos: usize,
    offset: u64,
    why: String,
}

/// A record read back from a damaged area, owned (the files are about to change).
struct Salvaged {
    offset: u64,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    json: bool,
    headers: Vec<u8>,
    header_count: u32,
}

fn io(what: &str, p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("{what} {}", p.display());
    move |e| Error::io(what, e)
}

fn find_damage(dir: &Path, bases: &[u64]) -> Result<Option<Damage>> {
    let mut expect: Option<u64> = None;
    for (i, &base) in bases.iter().enumerate() {
        let path = log_path(dir, base);
        let file = File::open(&path).map_err(io("opening", &path))?;
        let map = Mapped::of(&file).map_err(io("mapping", &path))?;
        let b = map.bytes();
        let start = expect.unwrap_or(base);
        if expect.is_some_and(|e| e != base) {
            return Ok(Some(Damage {
                seg: i - 1,
                pos: usize::MAX,
                offset: start,
                why: format!("offsets {start} to {} are missing", base.saturating_sub(1)),
            }));
        }
        match FileHeader::decode(b, LOG_MAGIC) {
            Ok(h) if h.base_offset == base => {}
            Ok(_) | Err(_) if i + 1 == bases.len() && b.len() <= FILE_HEADER_LEN => {
                // A segment whose creation was cut short: recovery's business.
                return Ok(None);
            }
            Ok(h) => {
                return Ok(Some(Damage {
                    seg: i,
                    pos: 0,
                    offset: base,
                    why: format!("header names base offset {}", h.base_offset),
                }))
            }
            Err(why) => {
                return Ok(Some(Damage {
                    seg: i,
                    pos: 0,
                    offset: base,
                    why,
                }))
            }
        }
        let last = i + 1 == bases.len();
        let limit = bases.get(i + 1).copied();
        let s = segment::scan(
            b,
            FILE_HEADER_LEN,
            base,
            limit,
            crate::log::index::IndexPolicy::new(),
            i64::MIN,
        );
        let why = match s.stop {
            ScanStop::Limit => None,
            ScanStop::End if last => None,
            // A torn tail of the last segment is what recovery cuts on open.
            ScanStop::Incomplete if last => None,
            ScanStop::End => Some("segment ends before the next one begins".to_string()),
            ScanStop::Incomplete => Some("torn frame".to_string()),
            ScanStop::Corrupt(w) => Some(w),
        };
        if let Some(why) = why {
            return Ok(Some(Damage {
                seg: i,
                pos: s.end,
                offset: s.next_offset,
                why,
            }));
        }
        expect = Some(s.next_offset);
    }
    Ok(None)
}

/// Every intact frame at or after `from` in `b` with offsets at or past `min_offset`,
/// found by trying each byte position.
fn salvage_bytes(b: &[u8], from: usize, min_offset: u64, out: &mut Vec<Salvaged>) {
    let mut pos = from;
    let mut next_min = min_offset;
    while pos + FRAME_HEADER_LEN <= b.len() {
        match check_frame(&b[pos..]) {
            FrameCheck::Ok(info) if info.base_offset >= next_min => {
                let frame = &b[pos..pos + info.total_len];
                for r in RecordIter::new(frame, &info) {
                    let mut headers = Vec::new();
                    for (n, v) in r.headers() {
                        encode_header(&mut headers, n, v);
                    }
                    out.push(Salvaged {
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key.map(<[u8]>::to_vec),
                        value: r.value.to_vec(),
                        json: r.value_is_json,
                        headers,
                        header_count: r.header_count,
                    });
                }
                next_min = info.next_offset();
                pos += info.total_len;
            }
            _ => pos += 1,
        }
    }
}

/// Repairs the partition at `dir` (see the module doc). `cfg` is its topic's configuration.
pub fn partition(dir: &Path, cfg: &TopicConfig, salvage: bool) -> Result<Outcome> {
    let lock = lock_partition(dir, false)?;
    let mut out = Outcome::default();
    // Sealed segments are edited here: no compaction may run meanwhile (recovery takes the
    // lock again when the writer opens, so it is released before that).
    let compaction = compact::lock(dir)?;
    out.notes = compact::finish_interrupted(dir)?;
    if let Err(e) = compact::read_checkpoint(dir) {
        // Only where compaction stands: without it the next compaction maps more keys.
        let _ = fs::remove_file(dir.join(compact::CLEANER_FILE));
        out.notes
            .push(format!("{e}: removed (the next compaction starts over)"));
    }
    let bases = segment::list_segments(dir).map_err(io("listing", dir))?;
    let Some(d) = find_damage(dir, &bases)? else {
        drop(compaction);
        let mut w = PartitionWriter::open_locked(dir, cfg, FsyncMode::Batch, lock, true)?;
        out.notes.append(&mut w.recovery);
        w.close()?;
        return Ok(out);
    };
    out.damaged = true;
    let seg_path = log_path(dir, bases[d.seg]);
    let at = if d.pos == usize::MAX {
        "its end".to_string()
    } else {
        format!("position {}", d.pos)
    };
    out.notes.push(format!(
        "{}: damage at {at} (offset {}): {}",
        seg_path.display(),
        d.offset,
        d.why
    ));
    // Read what can be read after the damage before any file changes.
    let mut found = Vec::new();
    let mut readable_end = d.offset;
    for (i, &base) in bases.iter().enumerate().skip(d.seg) {
        let path = log_path(dir, base);
        let file = File::open(&path).map_err(io("opening", &path))?;
        let map = Mapped::of(&file).map_err(io("mapping", &path))?;
        let from = if i == d.seg {
            d.pos.saturating_add(1).min(map.len())
        } else {
            0
        };
        salvage_bytes(map.bytes(), from, d.offset, &mut found);
    }
    if let Some(r) = found.last() {
        readable_end = r.offset + 1;
    }
    // The last clean close knew how far the partition went, damaged frames included.
    if let Ok(Some(cp)) = crate::log::meta::read_checked::<crate::log::writer::Checkpoint>(
        &dir.join("checkpoint.json"),
        crate::log::writer::CHECKPOINT_KIND,
    ) {
        readable_end = readable_end.max(cp.next_offset);
    }
    // Keep the damaged files for study, out of the readers' way.
    let keep = dir.join(format!("repaired-{}", now_ms()));
    fs::create_dir_all(&keep).map_err(io("creating", &keep))?;
    for (i, &base) in bases.iter().enumerate().skip(d.seg) {
        let path = log_path(dir, base);
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        if i == d.seg {
            fs::copy(&path, keep.join(&name)).map_err(io("copying", &path))?;
        } else {
            fs::rename(&path, keep.join(&name)).map_err(io("moving", &path))?;
            out.notes
                .push(format!("moved {} to {}", path.display(), keep.display()));
        }
        for ext in [INDEX_SUFFIX, TIMEINDEX_SUFFIX] {
            let _ = fs::remove_file(path.with_extension(ext));
        }
    }
    // Cut the damaged segment: keep its intact frames, or give it a fresh header. The cut
    // copy is renamed over the segment rather than the file shrunk in place, since a reader
    // that has the segment mapped would get SIGBUS past the new end.
    if d.pos != usize::MAX {
        let tmp = dir.join(format!(
            ".{}.{}.repair.tmp",
            bases[d.seg],
            std::process::id()
        ));
        let cut = (|| -> std::io::Result<()> {
            if d.pos == 0 {
                let header = FileHeader {
                    magic: *LOG_MAGIC,
                    base_offset: bases[d.seg],
                    created_ms: now_ms(),
                };
                fs::write(&tmp, header.encode())?;
            } else {
                // Only the kept prefix is copied: the disk may be what is short.
                let mut out = File::create(&tmp)?;
                std::io::copy(
                    &mut std::io::Read::take(File::open(&seg_path)?, d.pos as u64),
                    &mut out,
                )?;
            }
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &seg_path)
        })();
        if let Err(e) = cut {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("cutting {}", seg_path.display()), e));
        }
    }
    // The recovery checkpoint may point past the cut, and offsets after the cut will be
    // written again, so the compacted part may end before where the cleaner checkpoint says.
    let _ = fs::remove_file(dir.join("checkpoint.json"));
    let _ = fs::remove_file(dir.join(compact::CLEANER_FILE));
    crate::log::meta::fsync_dir(dir).map_err(io("syncing", dir))?;
    drop(compaction);
    out.notes.push(format!(
        "cut at offset {}; the damaged files are kept in {}",
        d.offset,
        keep.display()
    ));
    let mut w = PartitionWriter::open_locked(dir, cfg, FsyncMode::Batch, lock, true)?;
    out.notes.append(&mut w.recovery);
    let cut = w.next_offset();
    if salvage && !found.is_empty() {
        for r in &found {
            w.append(&RecordRef {
                timestamp: r.timestamp,
                key: r.key.as_deref(),
                value: &r.value,
                headers: &r.headers,
                header_count: r.header_count,
                value_is_json: r.json,
            })?;
        }
        out.salvaged = found.len() as u64;
        out.notes.push(format!(
            "salvaged {} intact records from after the damage (offsets {} to {} are now {} to {})",
            found.len(),
            found[0].offset,
            found[found.len() - 1].offset,
            cut,
            cut + found.len() as u64 - 1
        ));
    }
    w.close()?;
    out.lost = readable_end
        .saturating_sub(cut)
        .saturating_sub(out.salvaged);
    out.notes.push(format!(
        "{} records lost{}{}",
        out.lost,
        if cfg.compacts() {
            " at most (a compacted partition has offsets without records)"
        } else {
            ""
        },
        if salvage || found.is_empty() {
            String::new()
        } else {
            format!(
                " ({} of them intact after the damage: --salvage keeps those)",
                found.len()
            )
        }
    ));
    Ok(out)
}
