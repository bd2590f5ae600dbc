//! Metadata files (topic.json, group offsets, recovery checkpoints): JSON wrapped with a kind,
//! a version and a CRC32 over the exact bytes of the body, so a flipped digit in otherwise
//! valid JSON is detected. Written by the only safe recipe for replacing a file: temp file,
//! fsync, rename, fsync the directory.
//!
//! ```text
//! {"kind":"kappa.topic","version":1,"crc32":3735928559,"body":{...}}
//! ```

use crate::log::trace;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub const META_VERSION: u32 = 1;

#[derive(Serialize)]
struct Out<'a> {
    kind: &'a str,
    version: u32,
    crc32: u32,
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct In<'a> {
    kind: String,
    version: u32,
    crc32: u32,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// fsync a directory so that entries created or renamed in it survive a power cut.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    trace::dir_synced(dir);
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // A bare file name has an empty parent: the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("meta");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let r = (|| {
        let mut f = File::create(&tmp)?;
        trace::created(&tmp);
        trace::torn_write("atomic-write-torn", &mut f, bytes);
        f.write_all(bytes)?;
        trace::crash_point("atomic-write-before-sync");
        f.sync_all()?;
        trace::synced(&tmp, bytes.len() as u64);
        trace::crash_point("atomic-write-before-rename");
        trace::renaming(&tmp, path);
        fs::rename(&tmp, path)?;
        trace::crash_point("atomic-rename-before-dirsync");
        fsync_dir(dir)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Serializes `body` with its checksum and writes it atomically.
pub fn write_checked<T: Serialize>(path: &Path, kind: &str, body: &T) -> io::Result<()> {
    write_atomic(path, &encode_checked(kind, body)?)
}

pub fn encode_checked<T: Serialize>(kind: &str, body: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_string(body).map_err(io::Error::other)?;
    let raw = RawValue::from_string(body).map_err(io::Error::other)?;
    let crc32 = crc32fast::hash(raw.get().as_bytes());
    let mut out = serde_json::to_vec(&Out {
        kind,
        version: META_VERSION,
        crc32,
        body: &raw,
    })
    .map_err(io::Error::other)?;
    out.push(b'\n');
    Ok(out)
}

/// Decodes a checked file; the error says what is wrong (for `logd verify`).
pub fn decode_checked<T: DeserializeOwned>(bytes: &[u8], kind: &str) -> Result<T, String> {
    let w: In<'_> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid metadata file: {e}"))?;
    if w.kind != kind {
        return Err(format!("expected a {kind} file, found {}", w.kind));
    }
    if w.version != META_VERSION {
        return Err(format!("unsupported metadata version {}", w.version));
    }
    if crc32fast::hash(w.body.get().as_bytes()) != w.crc32 {
        return Err("checksum mismatch".into());
    }
    serde_json::from_str(w.body.get()).map_err(|e| format!("bad body: {e}"))
}

/// Reads a checked file: Ok(None) when it does not exist.
pub fn read_checked<T: DeserializeOwned>(path: &Path, kind: &str) -> Result<Option<T>, String> {
    match fs::read(path) {
        Ok(b) => decode_checked(&b, kind)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn round_trip_and_flipped_digit() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), 12345u64);
        let b = encode_checked("kappa.test", &m).unwrap();
        let back: BTreeMap<String, u64> = decode_checked(&b, "kappa.test").unwrap();
        assert_eq!(back, m);
        let s = String::from_utf8(b).unwrap().replace("12345", "12346");
        assert!(decode_checked::<BTreeMap<String, u64>>(s.as_bytes(), "kappa.test").is_err());
        assert!(decode_checked::<BTreeMap<String, u64>>(b"{}", "kappa.test").is_err());
    }
}
