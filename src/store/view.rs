//! A consistent read of one table generation: the key index (when it checks out) plus the
//! committed changes after it, over mappings of the changelog taken at open. Every reader
//! (get, scan, export, stats, diff) and the writer's index rebuild go through here, so there
//! is one definition of what a table holds.

use super::changelog::{self, Commit, Entry, Segments};
use super::keyindex::{self, KeyIndex};
use super::table::{TableRef, Tables};
use crate::error::{Error, Result};
use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};

/// The live state of a generation.
pub struct View {
    pub dir: PathBuf,
    pub segs: Segments,
    /// The key index, when present and consistent with the changelog.
    index: Option<KeyIndex>,
    /// Why the index was not used (missing, damaged, stale), for stats.
    pub index_note: Option<String>,
    /// Committed changes after the index, sorted by key: Some(offset) or None (deleted).
    overlay: Vec<(Vec<u8>, Option<u64>)>,
    /// The last commit marker and its offset.
    pub last: Option<(u64, Commit)>,
    /// Records after the last commit marker (a batch being written or cut short).
    pub uncommitted: u64,
    /// Records scanned after the index (or all of them without one).
    pub tail_records: u64,
}

impl View {
    /// Opens the version a reference names, retrying when a compaction replaced the
    /// generation between resolving the name and mapping its files.
    pub fn open_ref(tables: &Tables, t: &TableRef) -> Result<View> {
        let mut tries = 0;
        loop {
            let (_, dir) = tables.resolve(t)?;
            // The index first: one written after it is newer than the segments mapped next
            // could not describe them, and would be taken for stale.
            let ix = KeyIndex::open(&dir.join(keyindex::FILE_NAME));
            match Segments::open(&dir) {
                Ok(segs) => return View::build(dir, segs, ix),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 5 => tries += 1,
                Err(e) => return Err(Error::io(format!("reading table {t}"), e)),
            }
        }
    }

    /// Opens a generation directory directly (the writer, which holds its lock).
    pub fn open_dir(dir: &Path) -> Result<View> {
        let ix = KeyIndex::open(&dir.join(keyindex::FILE_NAME));
        let segs =
            Segments::open(dir).map_err(Error::io_with(|| format!("reading {}", dir.display())))?;
        View::build(dir.to_path_buf(), segs, ix)
    }

    fn build(
        dir: PathBuf,
        segs: Segments,
        ix: std::result::Result<Option<KeyIndex>, String>,
    ) -> Result<View> {
        let mut v = View {
            index: None,
            index_note: None,
            overlay: Vec::new(),
            last: None,
            uncommitted: 0,
            tail_records: 0,
            dir,
            segs,
        };
        let mut from = v.segs.earliest();
        match ix {
            Ok(None) => v.index_note = Some("missing".into()),
            Err(why) => v.index_note = Some(format!("damaged ({why})")),
            Ok(Some(ix)) => match changelog::record_at(&v.segs, ix.covered)?
                .as_ref()
                .and_then(changelog::classify)
            {
                Some(Entry::Commit(c)) if c.records == ix.records => {
                    from = ix.covered + 1;
                    v.last = Some((ix.covered, c));
                    v.index = Some(ix);
                }
                _ => v.index_note = Some("stale (its commit is not in the changelog)".into()),
            },
        }
        v.scan_tail(from)?;
        Ok(v)
    }

    fn scan_tail(&mut self, from: u64) -> Result<()> {
        let mut changes: FxHashMap<Vec<u8>, Option<u64>> = FxHashMap::default();
        let mut pending: Vec<(&[u8], Option<u64>, u64)> = Vec::new();
        let mut frames = self.segs.frames_from(from)?;
        let mut records = 0u64;
        let mut last = None;
        while let Some(f) = frames.next_frame()? {
            for r in f.records() {
                if r.offset < from {
                    continue;
                }
                records += 1;
                match changelog::classify(&r) {
                    Some(Entry::Upsert { key, .. }) => {
                        pending.push((key, Some(r.offset), r.offset))
                    }
                    Some(Entry::Delete { key }) => pending.push((key, None, r.offset)),
                    Some(Entry::Commit(c)) => {
                        for (k, v, at) in pending.drain(..) {
                            if at >= c.first {
                                // Most keys repeat: update in place, allocate only new ones.
                                match changes.get_mut(k) {
                                    Some(slot) => *slot = v,
                                    None => {
                                        changes.insert(k.to_vec(), v);
                                    }
                                }
                            }
                        }
                        last = Some((r.offset, c));
                    }
                    None => {
                        return Err(Error::Data(format!(
                            "{}: offset {}: not a table record",
                            self.dir.display(),
                            r.offset
                        )))
                    }
                }
            }
        }
        self.uncommitted = pending.len() as u64;
        self.tail_records = records;
        if last.is_some() {
            self.last = last;
        }
        let mut overlay: Vec<(Vec<u8>, Option<u64>)> = changes.into_iter().collect();
        overlay.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.overlay = overlay;
        Ok(())
    }

    /// A damaged index entry was met: forget the index and read the whole changelog, as
    /// if there were none (it is a cache; the next write rebuilds it).
    fn drop_index(&mut self, why: String) -> Result<()> {
        self.index = None;
        self.index_note = Some(format!("damaged ({why})"));
        self.last = None;
        let from = self.segs.earliest();
        self.scan_tail(from)
    }

    /// The offset of `key`'s live upsert.
    pub fn lookup(&mut self, key: &[u8]) -> Result<Option<u64>> {
        if let Ok(i) = self.overlay.binary_search_by(|e| e.0.as_slice().cmp(key)) {
            return Ok(self.overlay[i].1);
        }
        let found = match &self.index {
            Some(ix) => ix.find(key),
            None => return Ok(None),
        };
        match found {
            Ok(o) => Ok(o),
            Err(why) => {
                self.drop_index(why)?;
                self.lookup(key)
            }
        }
    }

    /// Live keys in order from `from` (inclusive) while `keep` holds, at most `limit`.
    pub fn range(
        &mut self,
        from: &[u8],
        keep: impl Fn(&[u8]) -> bool,
        limit: u64,
    ) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        if let Err(why) = self.walk(from, &keep, limit, &mut out) {
            self.drop_index(why)?;
            out.clear();
            self.walk(from, &keep, limit, &mut out)
                .map_err(|w| Error::Data(format!("{}: {w}", self.dir.display())))?;
        }
        Ok(out)
    }

    /// The index and the overlay merged, deletions dropped; Err is a damaged index entry.
    fn walk(
        &self,
        from: &[u8],
        keep: &impl Fn(&[u8]) -> bool,
        limit: u64,
        out: &mut Vec<(Vec<u8>, u64)>,
    ) -> Result<(), String> {
        let mut oi = self.overlay.partition_point(|e| e.0.as_slice() < from);
        let (mut ii, n) = match &self.index {
            Some(ix) => (ix.lower_bound(from)?, ix.count),
            None => (0, 0),
        };
        while (out.len() as u64) < limit {
            let ie = match &self.index {
                Some(ix) if ii < n => Some(ix.entry(ii)?),
                _ => None,
            };
            let oe = self.overlay.get(oi);
            let (key, off) = match (ie, oe) {
                (None, None) => return Ok(()),
                (Some((k, o)), None) => {
                    ii += 1;
                    (k, Some(o))
                }
                (None, Some(e)) => {
                    oi += 1;
                    (e.0.as_slice(), e.1)
                }
                (Some((k, o)), Some(e)) => match k.cmp(e.0.as_slice()) {
                    std::cmp::Ordering::Less => {
                        ii += 1;
                        (k, Some(o))
                    }
                    std::cmp::Ordering::Greater => {
                        oi += 1;
                        (e.0.as_slice(), e.1)
                    }
                    std::cmp::Ordering::Equal => {
                        ii += 1;
                        oi += 1;
                        (e.0.as_slice(), e.1)
                    }
                },
            };
            if !keep(key) {
                return Ok(());
            }
            if let Some(off) = off {
                out.push((key.to_vec(), off));
            }
        }
        Ok(())
    }

    /// Every live key, in order.
    pub fn all(&mut self) -> Result<Vec<(Vec<u8>, u64)>> {
        self.range(b"", |_| true, u64::MAX)
    }

    pub fn commit(&self) -> Option<&Commit> {
        self.last.as_ref().map(|l| &l.1)
    }

    /// The (timestamp, value) of each live key in `live`; see [`changelog::values`].
    pub fn values(&self, live: &[(Vec<u8>, u64)]) -> Result<Vec<(i64, &[u8])>> {
        changelog::values(&self.segs, &self.dir, live)
    }

    /// Checks every frame of the changelog (stats, verify).
    pub fn check_all(&self) -> Result<u64> {
        let mut frames = self.segs.frames_from(self.segs.earliest())?;
        let mut n = 0;
        while let Some(f) = frames.next_frame()? {
            n += f.info.record_count as u64;
        }
        Ok(n)
    }
}
