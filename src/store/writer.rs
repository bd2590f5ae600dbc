//! The one writer of a table version: appends upserts and tombstones in batches, each ended
//! by a commit marker that carries the applied source offsets, so a batch and its offsets
//! become visible (and, with fsync, durable) together; skips records at or below a source's
//! high-water mark; keeps the key index fresh; compacts the changelog into a new generation.

use super::changelog::{self, Commit, NO_TS};
use super::keyindex::{self, KeyIndex};
use super::table::{TableRef, Tables};
use super::view::View;
use crate::error::{Error, Result};
use crate::log::format::RecordRef;
use crate::log::meta;
use crate::log::topic::TopicConfig;
use crate::log::writer::{FsyncMode, PartitionWriter};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// When to compact automatically.
#[derive(Debug, Clone, Copy)]
pub struct CompactPolicy {
    /// Garbage ratio (1 - live keys / records) above which the changelog is rewritten.
    pub ratio: f64,
    /// Changelogs smaller than this are never compacted automatically.
    pub min_bytes: u64,
}

/// Where a record came from, for idempotence.
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    pub sub: u64,
}

pub struct TableWriter {
    tables: Tables,
    tref: TableRef,
    pub version: u32,
    gen: u64,
    dir: PathBuf,
    pw: PartitionWriter,
    fsync: FsyncMode,
    policy: CompactPolicy,
    /// Committed state.
    commit: Commit,
    /// The batch being written: its first offset and the sources it advanced.
    batch_first: Option<u64>,
    batch_records: u64,
    batch_sources: BTreeMap<String, (u64, u64)>,
    /// Changelog bytes written since the key index was last rebuilt, and its size then.
    since_index: u64,
    size_at_index: u64,
    index_stale: bool,
    tomb: Vec<u8>,
    commit_hdr: Vec<u8>,
    id_buf: String,
    pub skipped: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub compactions: u32,
    /// Changes since the key index was written (committed, once refresh looks at them):
    /// Some(offset of the upsert) or None (deleted). The index plus these is the table.
    changes: FxHashMap<Box<[u8]>, Option<u64>>,
    /// Offset of the last commit marker.
    last_marker: Option<u64>,
    /// Sync every commit even under `--fsync never` (a consumer group is committed after it).
    pub durable_commits: bool,
    /// Old generations being removed; a leftover is swept by the next writer.
    removals: Vec<std::thread::JoinHandle<std::result::Result<(), String>>>,
    /// What recovery and compaction did, for the caller to report.
    pub notes: Vec<String>,
}

/// The changelog's segments: large, and never removed by retention.
fn changelog_config() -> TopicConfig {
    TopicConfig::new(1)
}

impl TableWriter {
    /// Opens `t` for writing (creating the table or version when missing).
    pub fn open(
        tables: Tables,
        t: &TableRef,
        fsync: FsyncMode,
        policy: CompactPolicy,
    ) -> Result<TableWriter> {
        let (version, gen, lock) = tables.resolve_for_write(t)?;
        let dir = tables.gen_dir(&t.name, version, gen);
        let pw = PartitionWriter::open(&dir, &changelog_config(), fsync, false).map_err(
            |e| match e {
                Error::Setup(m) if m.contains("locked") => crate::error::setup(format!(
                    "table {t} is being written by another store (one writer per table version)"
                )),
                e => e,
            },
        )?;
        let mut notes: Vec<String> = pw.recovery.clone();
        for p in tables.sweep(&t.name, &lock)? {
            notes.push(format!(
                "removed {} (left by an interrupted compaction)",
                p.display()
            ));
        }
        drop(lock);
        let mut view = View::open_dir(&dir)?;
        if let Some(n) = &view.index_note {
            if view.last.is_some() {
                notes.push(format!("key index {n}: rebuilt from the changelog"));
            }
        }
        let commit = view.commit().cloned().unwrap_or_default();
        let size = view.segs.bytes();
        let index_stale = view.index_note.is_some() || view.tail_records > 0;
        let mut w = TableWriter {
            tables,
            tref: TableRef {
                name: t.name.clone(),
                version: Some(version),
            },
            version,
            gen,
            dir,
            pw,
            fsync,
            policy,
            commit,
            batch_first: None,
            batch_records: 0,
            batch_sources: BTreeMap::new(),
            since_index: 0,
            size_at_index: size,
            index_stale,
            tomb: changelog::header(changelog::TOMBSTONE_HEADER),
            commit_hdr: changelog::header(changelog::COMMIT_HEADER),
            id_buf: String::new(),
            skipped: 0,
            upserts: 0,
            deletes: 0,
            compactions: 0,
            changes: FxHashMap::default(),
            last_marker: view.last.as_ref().map(|l| l.0),
            durable_commits: false,
            removals: Vec::new(),
            notes,
        };
        if view.last.is_none() {
            // No commit yet: no index can describe this changelog.
            let _ = std::fs::remove_file(w.dir.join(keyindex::FILE_NAME));
        }
        if w.index_stale && view.last.is_some() {
            let live = view.all()?;
            w.write_index(&live, view.segs.bytes())?;
        }
        Ok(w)
    }

    pub fn name(&self) -> &TableRef {
        &self.tref
    }

    /// Whether the record from `src` was applied already (at or below the high-water mark).
    fn seen(&mut self, src: &Source<'_>) -> bool {
        // The source's name in a reused buffer: no allocation per record.
        use std::fmt::Write as _;
        self.id_buf.clear();
        let _ = write!(self.id_buf, "{}/{}", src.topic, src.partition);
        let at = (src.offset, src.sub);
        if let Some(hw) = self.batch_sources.get_mut(self.id_buf.as_str()) {
            if at <= *hw {
                return true;
            }
            *hw = at;
            return false;
        }
        if self
            .commit
            .sources
            .get(self.id_buf.as_str())
            .is_some_and(|hw| at <= *hw)
        {
            return true;
        }
        self.batch_sources.insert(self.id_buf.clone(), at);
        false
    }

    /// Upserts `value` (JSON bytes) under `key`, or deletes `key` when `value` is None.
    /// Returns false when the record was skipped as already applied.
    pub fn apply(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        ts: Option<i64>,
        src: Option<&Source<'_>>,
    ) -> Result<bool> {
        if let Some(s) = src {
            if self.seen(s) {
                self.skipped += 1;
                return Ok(false);
            }
        }
        let rec = match value {
            Some(v) => RecordRef {
                timestamp: ts.unwrap_or(NO_TS),
                key: Some(key),
                value: v,
                headers: &[],
                header_count: 0,
                value_is_json: true,
            },
            None => RecordRef {
                timestamp: ts.unwrap_or(NO_TS),
                key: Some(key),
                value: &[],
                headers: &self.tomb,
                header_count: 1,
                value_is_json: false,
            },
        };
        let before = self.pw.next_offset();
        let off = self.pw.append(&rec)?;
        debug_assert_eq!(off, before);
        self.since_index += rec.encoded_len() as u64;
        let now = value.map(|_| off);
        match self.changes.get_mut(key) {
            Some(slot) => *slot = now,
            None => {
                self.changes.insert(key.into(), now);
            }
        }
        self.batch_first.get_or_insert(off);
        self.batch_records += 1;
        if value.is_some() {
            self.upserts += 1;
        } else {
            self.deletes += 1;
        }
        if self.fsync == FsyncMode::Always {
            self.commit()?;
        }
        Ok(true)
    }

    /// Records in the batch not yet committed.
    pub fn pending(&self) -> u64 {
        self.batch_records
    }

    /// Ends the batch: appends the commit marker, hands everything to the kernel and, unless
    /// fsync is `never`, makes it durable. Returns whether anything was committed.
    pub fn commit(&mut self) -> Result<bool> {
        let Some(first) = self.batch_first else {
            return Ok(false);
        };
        let mut next = Commit {
            first,
            records: self.commit.records + self.batch_records,
            sources: self.commit.sources.clone(),
        };
        next.sources.extend(std::mem::take(&mut self.batch_sources));
        let marker = append_commit(&mut self.pw, &self.commit_hdr, &next)?;
        self.last_marker = Some(marker);
        if self.fsync == FsyncMode::Never && !self.durable_commits {
            self.pw.flush()?;
        } else {
            self.pw.sync()?;
        }
        self.commit = next;
        self.batch_first = None;
        self.batch_records = 0;
        self.index_stale = true;
        // The index is rebuilt once the changes since the last one are a good part of the
        // table, so readers never scan a long tail and the rebuilds cost O(1) per record.
        if self.since_index > (64 << 20).max(self.size_at_index) {
            self.refresh()?;
        }
        Ok(true)
    }

    /// The sources' high-water marks as committed.
    pub fn sources(&self) -> &BTreeMap<String, (u64, u64)> {
        &self.commit.sources
    }

    /// Every live key as of the last commit: the key index merged with the changes since.
    fn live_now(&mut self) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut ch: Vec<(&[u8], Option<u64>)> =
            self.changes.iter().map(|(k, v)| (&**k, *v)).collect();
        ch.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let merged = match KeyIndex::open(&self.dir.join(keyindex::FILE_NAME)) {
            Ok(ix) => merge(ix.as_ref(), &ch),
            Err(e) => Err(e),
        };
        match merged {
            Ok(live) => Ok(live),
            // A damaged index: the changelog says it all.
            Err(_) => View::open_dir(&self.dir)?.all(),
        }
    }

    fn changelog_bytes(&self) -> Result<u64> {
        Ok(changelog::Segments::open(&self.dir)
            .map_err(Error::io_with(|| format!("reading {}", self.dir.display())))?
            .bytes())
    }

    /// Rebuilds the key index, or compacts when the garbage ratio calls for it.
    fn refresh(&mut self) -> Result<()> {
        let live = self.live_now()?;
        let size = self.changelog_bytes()?;
        let garbage = garbage_ratio(live.len() as u64, self.commit.records);
        if garbage > self.policy.ratio && size >= self.policy.min_bytes {
            self.compact_with(live)?;
        } else {
            self.write_index(&live, size)?;
        }
        Ok(())
    }

    /// Writes the key index as of the last commit, listing `live`.
    fn write_index(&mut self, live: &[(Vec<u8>, u64)], size: u64) -> Result<()> {
        let Some(covered) = self.last_marker else {
            return Ok(());
        };
        let bytes = keyindex::encode(
            live.iter().map(|(k, o)| (k.as_slice(), *o)),
            covered,
            self.commit.records,
        );
        let path = self.dir.join(keyindex::FILE_NAME);
        meta::write_atomic(&path, &bytes)
            .map_err(Error::io_with(|| format!("writing {}", path.display())))?;
        self.changes.clear();
        self.since_index = 0;
        self.size_at_index = size;
        self.index_stale = false;
        Ok(())
    }

    /// Rewrites the changelog to the live keys only, in key order, as a new generation, and
    /// switches the manifest to it atomically. Readers keep the generation they opened.
    pub fn compact(&mut self) -> Result<CompactReport> {
        self.commit()?;
        let live = self.live_now()?;
        self.compact_with(live)
    }

    fn compact_with(&mut self, live: Vec<(Vec<u8>, u64)>) -> Result<CompactReport> {
        let segs = changelog::Segments::open(&self.dir)
            .map_err(Error::io_with(|| format!("reading {}", self.dir.display())))?;
        let before = segs.bytes();
        let records_before = self.commit.records;
        let new_gen = self.gen + 1;
        let new_dir = self.tables.gen_dir(&self.tref.name, self.version, new_gen);
        // Made and locked under the table's lock, so another writer's sweep never takes the
        // new generation for a leftover.
        let pw = {
            let _lock = self.tables.lock(&self.tref.name, false)?;
            if new_dir.exists() {
                super::table::discard(&new_dir)?;
            }
            PartitionWriter::open(&new_dir, &changelog_config(), FsyncMode::Batch, false)?
        };
        let mut pw = pw;
        let vals = changelog::values(&segs, &self.dir, &live)?;
        let mut entries = Vec::with_capacity(live.len());
        for ((k, _), (ts, v)) in live.iter().zip(&vals) {
            let off = pw.append(&RecordRef {
                timestamp: *ts,
                key: Some(k),
                value: v,
                headers: &[],
                header_count: 0,
                value_is_json: true,
            })?;
            entries.push((k.as_slice(), off));
        }
        let c = Commit {
            first: 0,
            records: live.len() as u64,
            sources: self.commit.sources.clone(),
        };
        let covered = append_commit(&mut pw, &self.commit_hdr, &c)?;
        pw.sync()?;
        let ix = keyindex::encode(entries.into_iter(), covered, c.records);
        let ipath = new_dir.join(keyindex::FILE_NAME);
        meta::write_atomic(&ipath, &ix)
            .map_err(Error::io_with(|| format!("writing {}", ipath.display())))?;
        drop(vals);
        drop(segs);
        // The switch: one atomic manifest rewrite under the table lock.
        let lock = self.tables.lock(&self.tref.name, false)?;
        let mut m = self
            .tables
            .manifest(&self.tref.name)?
            .ok_or_else(|| Error::Data(format!("table {} vanished", self.tref.name)))?;
        if let Some(vm) = m.versions.get_mut(&self.version) {
            vm.gen = new_gen;
        }
        self.tables.write_manifest(&self.tref.name, &m, &lock)?;
        // The old generation is garbage now: no need to sync or checkpoint it, only to
        // release its lock and remove it, on a thread (unlinking large files takes a while).
        drop(std::mem::replace(&mut self.pw, pw));
        let old_dir = std::mem::replace(&mut self.dir, new_dir);
        self.gen = new_gen;
        // Out of sight in one rename first: a reader that resolved the old generation finds
        // it whole or not at all (and then resolves again), never half deleted.
        let table_dir = self.tables.table_dir(&self.tref.name);
        let gone = super::table::trash(&table_dir, &format!("v{}.g{}", self.version, new_gen - 1))?;
        std::fs::rename(&old_dir, &gone)
            .map_err(Error::io_with(|| format!("removing {}", old_dir.display())))?;
        drop(lock);
        self.removals.push(std::thread::spawn(move || {
            super::table::remove_tree(&gone).map_err(|e| e.to_string())
        }));
        self.commit = c;
        self.last_marker = Some(covered);
        self.changes.clear();
        self.since_index = 0;
        self.size_at_index = changelog::Segments::open(&self.dir)
            .map_err(Error::io_with(|| format!("reading {}", self.dir.display())))?
            .bytes();
        self.index_stale = false;
        self.compactions += 1;
        let r = CompactReport {
            keys: live.len() as u64,
            records_before,
            bytes_before: before,
            bytes_after: self.size_at_index,
        };
        self.notes.push(format!(
            "compacted {}: {} records to {} keys, {} to {}",
            self.tref,
            records_before,
            r.keys,
            crate::cli::human_bytes(r.bytes_before),
            crate::cli::human_bytes(r.bytes_after)
        ));
        Ok(r)
    }

    /// Commits, refreshes the index, compacts when due, and releases the table. Returns
    /// the notes of what it did.
    pub fn close(mut self) -> Result<Vec<String>> {
        self.commit()?;
        if self.index_stale {
            self.refresh()?;
        }
        self.pw.close()?;
        for h in std::mem::take(&mut self.removals) {
            if let Ok(Err(e)) = h.join() {
                self.notes.push(format!("{e} (removed by the next writer)"));
            }
        }
        Ok(self.notes)
    }
}

pub struct CompactReport {
    pub keys: u64,
    pub records_before: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Appends a commit marker; returns its offset.
fn append_commit(pw: &mut PartitionWriter, header: &[u8], c: &Commit) -> Result<u64> {
    let body =
        serde_json::to_vec(c).map_err(|e| Error::Data(format!("encoding a commit marker: {e}")))?;
    pw.append(&RecordRef {
        timestamp: NO_TS,
        key: None,
        value: &body,
        headers: header,
        header_count: 1,
        value_is_json: true,
    })
}

pub fn garbage_ratio(live: u64, records: u64) -> f64 {
    if records == 0 {
        0.0
    } else {
        1.0 - live as f64 / records as f64
    }
}

/// The index's entries merged with sorted changes (a change wins; None drops the key). Err
/// names a damaged index entry.
fn merge(
    ix: Option<&KeyIndex>,
    ch: &[(&[u8], Option<u64>)],
) -> Result<Vec<(Vec<u8>, u64)>, String> {
    let n = ix.map_or(0, |i| i.count);
    let mut out = Vec::with_capacity(n as usize + ch.len());
    let (mut i, mut j) = (0u64, 0usize);
    loop {
        let ie = match ix {
            Some(x) if i < n => Some(x.entry(i)?),
            _ => None,
        };
        let (key, off) = match (ie, ch.get(j)) {
            (None, None) => return Ok(out),
            (Some((k, o)), None) => {
                i += 1;
                (k, Some(o))
            }
            (None, Some(c)) => {
                j += 1;
                (c.0, c.1)
            }
            (Some((k, o)), Some(c)) => match k.cmp(c.0) {
                std::cmp::Ordering::Less => {
                    i += 1;
                    (k, Some(o))
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    (c.0, c.1)
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    (c.0, c.1)
                }
            },
        };
        if let Some(o) = off {
            out.push((key.to_vec(), o));
        }
    }
}
