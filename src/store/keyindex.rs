//! The key index of a table generation (`keys.idx`): every live key, sorted, with the
//! changelog offset of its latest upsert, as of one commit marker. It is a cache: readers
//! check it against the changelog (the marker must be at `covered` with the same record
//! count) and apply the committed changes after it; a damaged, missing or stale index is
//! rebuilt from the changelog. Written whole by the writer (temp file, fsync, rename).
//!
//! ```text
//! header (64 bytes)
//!   0  8  magic          b"KAPPAKEY"
//!   8  2  version        1
//!  10  2  flags          0
//!  12  4  reserved       0
//!  16  8  count          u64, entries
//!  24  8  covered        u64, offset of the commit marker the index reflects
//!  32  8  records        u64, the marker's record count
//!  40  8  keys_len       u64, bytes of the key area
//!  48 12  reserved       0
//!  60  4  header_crc     crc32 of bytes 0..60
//! entry (24 bytes each, sorted by key bytes)
//!   0  8  key_pos        u64, position in the key area
//!   8  4  key_len        u32
//!  12  4  crc            crc32 of bytes 0..12, 16..24 and the key
//!  16  8  offset         u64, changelog offset of the key's latest upsert
//! key area
//! ```
//!
//! Each entry carries its own CRC so a lookup checks only the entries it touches.

use crate::log::format::{u32_at, u64_at};
use crate::log::segment::Mapped;
use std::cmp::Ordering;
use std::fs::File;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"KAPPAKEY";
pub const VERSION: u16 = 1;
pub const FILE_NAME: &str = "keys.idx";

const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_COUNT: usize = 16;
const H_COVERED: usize = 24;
const H_RECORDS: usize = 32;
const H_KEYS_LEN: usize = 40;
const H_CRC: usize = 60;
pub const HEADER_LEN: usize = 64;

const E_KEY_POS: usize = 0;
const E_KEY_LEN: usize = 8;
const E_CRC: usize = 12;
const E_OFFSET: usize = 16;
pub const ENTRY_LEN: usize = 24;

/// An index file, mapped and its header checked.
pub struct KeyIndex {
    map: Mapped,
    pub count: u64,
    pub covered: u64,
    pub records: u64,
    keys_at: usize,
}

fn entry_crc(e: &[u8], key: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&e[..E_CRC]);
    h.update(&e[E_OFFSET..ENTRY_LEN]);
    h.update(key);
    h.finalize()
}

impl KeyIndex {
    /// Ok(None) when there is no index; Err(why) when it cannot be used.
    pub fn open(path: &Path) -> Result<Option<KeyIndex>, String> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let map = Mapped::of(&f).map_err(|e| e.to_string())?;
        let b = map.bytes();
        if b.len() < HEADER_LEN || &b[H_MAGIC..H_MAGIC + 8] != MAGIC {
            return Err("not a key index".into());
        }
        if crc32fast::hash(&b[..H_CRC]) != u32_at(b, H_CRC) {
            return Err("header checksum mismatch".into());
        }
        if u16::from_le_bytes([b[H_VERSION], b[H_VERSION + 1]]) != VERSION {
            return Err("unknown index version".into());
        }
        let count = u64_at(b, H_COUNT);
        let keys_len = u64_at(b, H_KEYS_LEN);
        let expect = (count as u128) * ENTRY_LEN as u128 + HEADER_LEN as u128 + keys_len as u128;
        if expect != b.len() as u128 {
            return Err(format!("size {} where {expect} was expected", b.len()));
        }
        Ok(Some(KeyIndex {
            count,
            covered: u64_at(b, H_COVERED),
            records: u64_at(b, H_RECORDS),
            keys_at: HEADER_LEN + count as usize * ENTRY_LEN,
            map,
        }))
    }

    /// Entry `i`: its key and offset, checked.
    pub fn entry(&self, i: u64) -> Result<(&[u8], u64), String> {
        let b = self.map.bytes();
        let at = HEADER_LEN + i as usize * ENTRY_LEN;
        let e = &b[at..at + ENTRY_LEN];
        let kp = u64_at(e, E_KEY_POS) as usize;
        let kl = u32_at(e, E_KEY_LEN) as usize;
        let keys = &b[self.keys_at..];
        let key = kp
            .checked_add(kl)
            .and_then(|end| keys.get(kp..end))
            .ok_or_else(|| format!("entry {i} points outside the key area"))?;
        if entry_crc(e, key) != u32_at(e, E_CRC) {
            return Err(format!("entry {i} checksum mismatch"));
        }
        Ok((key, u64_at(e, E_OFFSET)))
    }

    /// The offset stored for `key` (binary search; every entry touched is checked).
    pub fn find(&self, key: &[u8]) -> Result<Option<u64>, String> {
        let i = self.lower_bound(key)?;
        if i < self.count {
            let (k, off) = self.entry(i)?;
            if k == key {
                return Ok(Some(off));
            }
        }
        Ok(None)
    }

    /// The first entry whose key is not less than `key`.
    pub fn lower_bound(&self, key: &[u8]) -> Result<u64, String> {
        let (mut lo, mut hi) = (0u64, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (k, _) = self.entry(mid)?;
            match k.cmp(key) {
                Ordering::Less => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }
}

/// Builds an index file's bytes from sorted, unique (key, offset) pairs.
pub fn encode<'a>(
    entries: impl ExactSizeIterator<Item = (&'a [u8], u64)>,
    covered: u64,
    records: u64,
) -> Vec<u8> {
    let count = entries.len();
    let mut table = Vec::with_capacity(count * ENTRY_LEN);
    let mut keys = Vec::new();
    for (k, off) in entries {
        let mut e = [0u8; ENTRY_LEN];
        e[E_KEY_POS..E_KEY_POS + 8].copy_from_slice(&(keys.len() as u64).to_le_bytes());
        e[E_KEY_LEN..E_KEY_LEN + 4].copy_from_slice(&(k.len() as u32).to_le_bytes());
        e[E_OFFSET..E_OFFSET + 8].copy_from_slice(&off.to_le_bytes());
        let crc = entry_crc(&e, k);
        e[E_CRC..E_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        table.extend_from_slice(&e);
        keys.extend_from_slice(k);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + table.len() + keys.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&(count as u64).to_le_bytes());
    out.extend_from_slice(&covered.to_le_bytes());
    out.extend_from_slice(&records.to_le_bytes());
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    out.extend_from_slice(&[0u8; 12]);
    let crc = crc32fast::hash(&out[..H_CRC]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&table);
    out.extend_from_slice(&keys);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(entries: &[(Vec<u8>, u64)]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(FILE_NAME);
        let bytes = encode(entries.iter().map(|(k, o)| (k.as_slice(), *o)), 9, 4);
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    proptest! {
        #[test]
        fn finds_every_key(keys in prop::collection::btree_set(prop::collection::vec(any::<u8>(), 0..12), 0..60), probe in prop::collection::vec(any::<u8>(), 0..12)) {
            let entries: Vec<(Vec<u8>, u64)> = keys.iter().cloned().zip(0u64..).collect();
            let (_d, p) = write(&entries);
            let ix = KeyIndex::open(&p).unwrap().unwrap();
            prop_assert_eq!(ix.count, entries.len() as u64);
            prop_assert_eq!((ix.covered, ix.records), (9, 4));
            for (k, o) in &entries {
                prop_assert_eq!(ix.find(k).unwrap(), Some(*o));
            }
            let want = entries.iter().find(|(k, _)| *k == probe).map(|e| e.1);
            prop_assert_eq!(ix.find(&probe).unwrap(), want);
        }

        #[test]
        fn damage_is_detected(at in 0usize..200, bit in 0u8..8) {
            let entries: Vec<(Vec<u8>, u64)> =
                (0..5u64).map(|i| (format!("key-{i}").into_bytes(), i * 10)).collect();
            let (_d, p) = write(&entries);
            let mut b = std::fs::read(&p).unwrap();
            let at = at % b.len();
            b[at] ^= 1 << bit;
            std::fs::write(&p, &b).unwrap();
            // Either the header check refuses the file, or every entry read is either
            // checked bad or exactly the one written.
            if let Ok(Some(ix)) = KeyIndex::open(&p) {
                if (ix.covered, ix.records, ix.count) == (9, 4, 5) {
                    for i in 0..ix.count {
                        if let Ok((k, o)) = ix.entry(i) {
                            prop_assert_eq!((k.to_vec(), o), entries[i as usize].clone());
                        }
                    }
                }
            }
        }
    }
}
