//! stdout for record streams: one large buffer written with plain write(2) (Rust's stdout is
//! line-buffered, which costs a scan per line), flushed when it is full or when the tool says
//! its input has nothing more ready, and per record on a terminal. A closed pipe surfaces as
//! `Error::BrokenPipe`, which ends the tool quietly with status 0.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

const CAPACITY: usize = 256 << 10;
const PIPE_SIZE: i32 = 1 << 20;

pub struct Output {
    file: ManuallyDrop<File>,
    pub buf: Vec<u8>,
    tty: bool,
}

impl Output {
    pub fn stdout() -> Output {
        // SAFETY: fd 1 is open for the whole process; ManuallyDrop keeps us from closing it.
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        let tty = std::io::stdout().is_terminal();
        if !tty {
            grow_pipe(&file);
        }
        Output {
            file,
            buf: Vec::with_capacity(CAPACITY),
            tty,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.tty
    }

    /// Call after each whole record: writes out when the buffer is full (or per line on a tty).
    #[inline]
    pub fn record_done(&mut self) -> Result<bool> {
        if self.tty || self.buf.len() >= CAPACITY - 4096 {
            self.flush()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Appends one whole line (or record) and flushes when the buffer is full.
    pub fn line(&mut self, bytes: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(bytes);
        self.record_done().map(|_| ())
    }

    /// Writes what is buffered, then `bytes` straight from the caller's buffer (a large
    /// chunk needs no copy into ours).
    pub fn write_through(&mut self, bytes: &[u8]) -> Result<()> {
        self.flush()?;
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io("writing stdout", e))
    }

    /// Writes everything buffered. Returns only once the bytes were handed to the kernel.
    pub fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r.map_err(|e| Error::io("writing stdout", e))
    }
}

/// Raises a pipe's buffer to 1 MiB: it halves the number of context switches between the
/// tools of a pipeline. Failure (not a pipe, no permission) is harmless.
pub fn grow_pipe(f: &File) {
    use nix::fcntl::{fcntl, FcntlArg};
    let _ = fcntl(
        std::os::fd::AsRawFd::as_raw_fd(f),
        FcntlArg::F_SETPIPE_SZ(PIPE_SIZE),
    );
}
