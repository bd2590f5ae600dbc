//! The one writer of a table version: appends upserts and tombstones in batches, each ended
//! by a commit marker that carries the applied source offsets, so a batch and its offsets
//! become visible (and, with fsync, durable) together; skips records at or below a source's
//! high-water mark; keeps the key index fresh; compacts the changelog into a new generation.

use super::changelog::{self, Commit, NO_TS};
use super::keyindex;
use super::table::{TableRef, Tables};
use super::view::View;
use crate::error::{Error, Result};
use crate::log::format::RecordRef;
use crate::log::meta;
use crate::log::topic::TopicConfig;
use crate::log::writer::{FsyncMode, PartitionWriter};
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
    pub skipped: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub compactions: u32,
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
                Error::Setup(_) => crate::error::setup(format!(
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
            skipped: 0,
            upserts: 0,
            deletes: 0,
            compactions: 0,
            notes,
        };
        if w.index_stale && view.last.is_some() {
            w.write_index(&mut view)?;
        }
        Ok(w)
    }

    pub fn name(&self) -> &TableRef {
        &self.tref
    }

    /// Whether the record from `src` was applied already (at or below the high-water mark).
    fn seen(&mut self, src: &Source<'_>) -> bool {
        let id = format!("{}/{}", src.topic, src.partition);
        let hw = self
            .batch_sources
            .get(&id)
            .or_else(|| self.commit.sources.get(&id))
            .copied();
        if hw.is_some_and(|hw| (src.offset, src.sub) <= hw) {
            return true;
        }
        self.batch_sources.insert(id, (src.offset, src.sub));
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
        let body = serde_json::to_vec(&next)
            .map_err(|e| Error::Data(format!("encoding a commit marker: {e}")))?;
        self.pw.append(&RecordRef {
            timestamp: NO_TS,
            key: None,
            value: &body,
            headers: &self.commit_hdr,
            header_count: 1,
            value_is_json: true,
        })?;
        if self.fsync == FsyncMode::Never {
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
        if self.since_index > (32 << 20).max(self.size_at_index / 2) {
            self.refresh()?;
        }
        Ok(true)
    }

    /// The sources' high-water marks as committed.
    pub fn sources(&self) -> &BTreeMap<String, (u64, u64)> {
        &self.commit.sources
    }

    /// Rebuilds the key index and compacts when the garbage ratio calls for it.
    fn refresh(&mut self) -> Result<()> {
        let mut view = View::open_dir(&self.dir)?;
        let size = view.segs.bytes();
        let live = self.write_index(&mut view)?;
        let garbage = garbage_ratio(live, self.commit.records);
        if garbage > self.policy.ratio && size >= self.policy.min_bytes {
            drop(view);
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the key index for `view` (whose last commit must be the writer's); returns the
    /// number of live keys.
    fn write_index(&mut self, view: &mut View) -> Result<u64> {
        // Listed first: a damaged index met on the way is dropped and the commit re-read.
        let live = view.all()?;
        let Some((covered, c)) = &view.last else {
            return Ok(0);
        };
        let bytes = keyindex::encode(
            live.iter().map(|(k, o)| (k.as_slice(), *o)),
            *covered,
            c.records,
        );
        let path = self.dir.join(keyindex::FILE_NAME);
        meta::write_atomic(&path, &bytes)
            .map_err(Error::io_with(|| format!("writing {}", path.display())))?;
        self.since_index = 0;
        self.size_at_index = view.segs.bytes();
        self.index_stale = false;
        Ok(live.len() as u64)
    }

    /// Rewrites the changelog to the live keys only, in key order, as a new generation, and
    /// switches the manifest to it atomically. Readers keep the generation they opened.
    pub fn compact(&mut self) -> Result<CompactReport> {
        self.commit()?;
        let mut view = View::open_dir(&self.dir)?;
        let live = view.all()?;
        let before = view.segs.bytes();
        let records_before = self.commit.records;
        let new_gen = self.gen + 1;
        let new_dir = self.tables.gen_dir(&self.tref.name, self.version, new_gen);
        if new_dir.exists() {
            std::fs::remove_dir_all(&new_dir)
                .map_err(Error::io_with(|| format!("removing {}", new_dir.display())))?;
        }
        let mut pw = PartitionWriter::open(&new_dir, &changelog_config(), FsyncMode::Batch, false)?;
        let vals = view.values(&live)?;
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
        let body = serde_json::to_vec(&c)
            .map_err(|e| Error::Data(format!("encoding a commit marker: {e}")))?;
        let covered = pw.append(&RecordRef {
            timestamp: NO_TS,
            key: None,
            value: &body,
            headers: &self.commit_hdr,
            header_count: 1,
            value_is_json: true,
        })?;
        pw.sync()?;
        let ix = keyindex::encode(entries.into_iter(), covered, c.records);
        let ipath = new_dir.join(keyindex::FILE_NAME);
        meta::write_atomic(&ipath, &ix)
            .map_err(Error::io_with(|| format!("writing {}", ipath.display())))?;
        drop(vals);
        drop(view);
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
        let old = std::mem::replace(&mut self.pw, pw);
        let old_dir = std::mem::replace(&mut self.dir, new_dir);
        old.close()?;
        self.gen = new_gen;
        std::fs::remove_dir_all(&old_dir)
            .map_err(Error::io_with(|| format!("removing {}", old_dir.display())))?;
        drop(lock);
        self.commit = c;
        self.since_index = 0;
        self.size_at_index = View::open_dir(&self.dir)?.segs.bytes();
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
        Ok(self.notes)
    }
}

pub struct CompactReport {
    pub keys: u64,
    pub records_before: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

pub fn garbage_ratio(live: u64, records: u64) -> f64 {
    if records == 0 {
        0.0
    } else {
        1.0 - live as f64 / records as f64
    }
}
