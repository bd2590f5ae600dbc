//! Crash points and a trace of what was made durable, for the power-cut tests only (cargo
//! feature `failpoints`; without it every function here is empty and compiles away).
//!
//! A crash of the process keeps every byte handed to the kernel; a power cut keeps only what
//! was fsynced, and a new directory entry only once its directory was fsynced. To test the
//! second, the tests stop a tool at a named point (`crash_point`, driven by the `fail`
//! crate: `FAILPOINTS=NAME=return` aborts the process there, `FAILPOINTS=NAME=3*off->return`
//! at the fourth pass) and then make the files look as a power cut would, from the trace
//! this module writes to `$KAPPA_SYNC_TRACE`, one tab-separated event per line:
//!
//! `torn_write` is a crash point inside a write: part of the bytes reach the file first.
//!
//! ```text
//! create  PATH             a new directory entry (durable after a dirsync of its directory)
//! sync    PATH  LEN        PATH's first LEN bytes are durable
//! dirsync DIR              DIR's entries are durable
//! rename  FROM  TO  OLD    FROM renamed over TO; OLD is a copy of TO from before (or -)
//! ```

use std::path::Path;

#[cfg(feature = "failpoints")]
mod on {
    use std::fs::{File, OpenOptions};
    use std::io::Write;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    fn out() -> Option<&'static Mutex<File>> {
        static OUT: OnceLock<Option<Mutex<File>>> = OnceLock::new();
        OUT.get_or_init(|| {
            let p = std::env::var_os("KAPPA_SYNC_TRACE")?;
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        })
        .as_ref()
    }

    pub fn event(fields: &[&str]) {
        if let Some(m) = out() {
            let mut line = fields.join("\t");
            line.push('\n');
            // A test-only trace: a poisoned lock or a failed write just loses the event.
            if let Ok(mut f) = m.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    /// Copies `to` aside before it is replaced, so the power cut can bring it back.
    pub fn backup(to: &Path) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let Some(base) = std::env::var_os("KAPPA_SYNC_TRACE") else {
            return "-".into();
        };
        if !to.exists() {
            return "-".into();
        }
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut b = base;
        b.push(format!(".{}.{n}", std::process::id()));
        match std::fs::copy(to, &b) {
            Ok(_) => b.to_string_lossy().into_owned(),
            Err(_) => "-".into(),
        }
    }
}

/// Aborts the process here when the `fail` crate is told so (`FAILPOINTS=name=return`).
#[inline]
pub fn crash_point(_name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(_name, |_| ()).is_some() {
        eprintln!("crash point {_name}");
        std::process::abort();
    }
}

/// A crash in the middle of a write: when `name` is armed, all of `bytes` but its last 5 is
/// written to `f` (so the last index entry, of 16 or 24 bytes, is torn), then the process
/// aborts, as a crash inside write(2) may leave a file.
#[inline]
pub fn torn_write(_name: &str, _f: &mut impl std::io::Write, _bytes: &[u8]) {
    #[cfg(feature = "failpoints")]
    if _bytes.len() > 5 && fail::eval(_name, |_| ()).is_some() {
        let _ = _f.write_all(&_bytes[.._bytes.len() - 5]);
        let _ = _f.flush();
        eprintln!("crash point {_name}");
        std::process::abort();
    }
}

#[inline]
pub fn created(_path: &Path) {
    #[cfg(feature = "failpoints")]
    on::event(&["create", &_path.to_string_lossy()]);
}

#[inline]
pub fn synced(_path: &Path, _len: u64) {
    #[cfg(feature = "failpoints")]
    on::event(&["sync", &_path.to_string_lossy(), &_len.to_string()]);
}

#[inline]
pub fn dir_synced(_dir: &Path) {
    #[cfg(feature = "failpoints")]
    on::event(&["dirsync", &_dir.to_string_lossy()]);
}

/// Call just before renaming `from` over `to`.
#[inline]
pub fn renaming(_from: &Path, _to: &Path) {
    #[cfg(feature = "failpoints")]
    {
        let old = on::backup(_to);
        on::event(&[
            "rename",
            &_from.to_string_lossy(),
            &_to.to_string_lossy(),
            &old,
        ]);
    }
}

/// Sets up the crash points from `FAILPOINTS` for the life of the process.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
