//! Idempotent producers: per topic, the last batch (`Producer-Id`, `Producer-Seq`) each
//! producer sent, with the offset ranges it was given, in
//! `LOGDIR/server/producers/<topic>.journal`.
//!
//! An entry is written (and, unless `--fsync never`, fsynced) *before* the batch's records
//! are written, so whenever the records can have survived a crash, so has the entry. After a
//! restart each entry is checked against the recovered log: the part of each range that is
//! below the partition's end landed, the rest did not (recovery cuts at frame boundaries, so
//! a batch can have landed in part). A retry of the same (id, seq) is then answered with
//! the stored ranges, appending only what had not landed: no duplicate, no gap.
//!
//! The file is NDJSON, one entry per line, each with a `crc` over the rest of the line; a torn
//! or damaged line is ignored (its batch was never acknowledged). It is rewritten compactly
//! (last entry per producer, at most `MAX_PRODUCERS`, idle ones expire) at open and when it
//! grows past `COMPACT_BYTES`.

use crate::log::meta;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const COMPACT_BYTES: u64 = 8 << 20;
const MAX_PRODUCERS: usize = 100_000;
/// A producer silent for this long is forgotten (Kafka keeps producer state about a week).
const EXPIRE_MS: i64 = 7 * 86_400_000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub partition: u32,
    pub first: u64,
    pub count: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Entry {
    pub producer: String,
    pub seq: u64,
    /// Where this batch's unkeyed records went, so a retry puts the rest in the same place.
    pub unkeyed: u32,
    pub ranges: Vec<Range>,
    pub at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    crc: u32,
    #[serde(flatten)]
    e: Entry,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    pub last: HashMap<String, Entry>,
}

fn line_crc(e: &Entry) -> u32 {
    // serde_json writes struct fields in declaration order: the same bytes every time.
    crc32fast::hash(&serde_json::to_vec(e).unwrap_or_default())
}

fn encode(e: &Entry, out: &mut Vec<u8>) {
    let l = Line {
        crc: line_crc(e),
        e: e.clone(),
    };
    // Serializing plain strings and integers cannot fail.
    serde_json::to_writer(&mut *out, &l).expect("journal entry serializes");
    out.push(b'\n');
}

impl Journal {
    /// Loads the journal of `topic` and trims every entry to what landed: `ends[p]` is the
    /// recovered end offset of partition p.
    pub fn open(root: &Path, topic: &str, ends: &[u64], now: i64) -> std::io::Result<Journal> {
        let dir = root.join("server").join("producers");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{topic}.journal"));
        let mut last: HashMap<String, Entry> = HashMap::new();
        if let Ok(bytes) = fs::read(&path) {
            for line in bytes.split(|b| *b == b'\n') {
                let Ok(l) = serde_json::from_slice::<Line>(line) else {
                    continue;
                };
                if l.crc != line_crc(&l.e) {
                    continue;
                }
                let newer = last.get(&l.e.producer).is_none_or(|o| o.seq <= l.e.seq);
                if newer {
                    last.insert(l.e.producer.clone(), l.e);
                }
            }
        }
        for e in last.values_mut() {
            for r in &mut e.ranges {
                let end = ends.get(r.partition as usize).copied().unwrap_or(0);
                r.count = end.saturating_sub(r.first).min(r.count);
            }
            e.ranges.retain(|r| r.count > 0);
        }
        let mut j = Journal {
            file: File::open("/dev/null")?,
            path,
            len: 0,
            last,
        };
        j.rewrite(now)?;
        Ok(j)
    }

    /// Rewrites the file atomically with the live entries only.
    fn rewrite(&mut self, now: i64) -> std::io::Result<()> {
        self.last.retain(|_, e| now - e.at_ms < EXPIRE_MS);
        if self.last.len() > MAX_PRODUCERS {
            let mut ats: Vec<i64> = self.last.values().map(|e| e.at_ms).collect();
            ats.sort_unstable();
            let cut = ats[ats.len() - MAX_PRODUCERS];
            self.last.retain(|_, e| e.at_ms >= cut);
        }
        let mut out = Vec::new();
        for e in self.last.values() {
            encode(e, &mut out);
        }
        meta::write_atomic(&self.path, &out)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = out.len() as u64;
        Ok(())
    }

    /// Writes entries before their batches' records are written; `sync` fdatasyncs them.
    pub fn record(&mut self, entries: Vec<Entry>, sync: bool, now: i64) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for e in &entries {
            encode(e, &mut out);
        }
        self.file.write_all(&out)?;
        if sync {
            self.file.sync_data()?;
        }
        self.len += out.len() as u64;
        for e in entries {
            self.last.insert(e.producer.clone(), e);
        }
        if self.len > COMPACT_BYTES {
            self.rewrite(now)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str, seq: u64, ranges: &[(u32, u64, u64)]) -> Entry {
        Entry {
            producer: p.into(),
            seq,
            unkeyed: 0,
            ranges: ranges
                .iter()
                .map(|&(partition, first, count)| Range {
                    partition,
                    first,
                    count,
                })
                .collect(),
            at_ms: 1000,
        }
    }

    #[test]
    fn reopen_trims_to_what_landed_and_skips_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "t", &[0, 0], 1000).unwrap();
        j.record(vec![entry("a", 1, &[(0, 0, 10)])], true, 1000)
            .unwrap();
        j.record(
            vec![
                entry("a", 2, &[(0, 10, 5), (1, 0, 4)]),
                entry("b", 7, &[(1, 4, 3)]),
            ],
            true,
            1000,
        )
        .unwrap();
        drop(j);
        let path = dir.path().join("server/producers/t.journal");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"crc\":1,\"producer\":\"c\"").unwrap();
        // Partition 0 kept 12 records (2 of a's second batch), partition 1 kept 5.
        let j = Journal::open(dir.path(), "t", &[12, 5], 2000).unwrap();
        let a = &j.last["a"];
        assert_eq!(a.seq, 2);
        assert_eq!(
            a.ranges,
            vec![
                Range {
                    partition: 0,
                    first: 10,
                    count: 2
                },
                Range {
                    partition: 1,
                    first: 0,
                    count: 4
                }
            ]
        );
        assert_eq!(j.last["b"].ranges[0].count, 1);
        assert!(!j.last.contains_key("c"));
    }

    #[test]
    fn a_flipped_digit_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "t", &[0], 1000).unwrap();
        j.record(vec![entry("a", 1, &[(0, 0, 10)])], true, 1000)
            .unwrap();
        drop(j);
        let path = dir.path().join("server/producers/t.journal");
        let s = fs::read_to_string(&path)
            .unwrap()
            .replace("\"seq\":1", "\"seq\":2");
        fs::write(&path, s).unwrap();
        let j = Journal::open(dir.path(), "t", &[10], 1000).unwrap();
        assert!(j.last.is_empty());
    }
}
