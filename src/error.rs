//! The one error type of every tool, and the exit code each kind of failure maps to.
//!
//! Exit codes (DESIGN.md): 0 success; 1 the work failed (bad data in fail mode, damage found,
//! a full disk or fsync error during the work); 2 usage or setup (bad flags, lock held,
//! missing topic, unreadable log directory). A closed stdout (`| head`) is not an error.

use std::fmt;
use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// Bad flags or arguments (exit 2).
    Usage(String),
    /// The environment is not fit for the work: lock held, no such topic, unreadable
    /// directory (exit 2).
    Setup(String),
    /// Bad input data in fail mode, or damage found in the log (exit 1).
    Data(String),
    /// An I/O failure during the work, with what was being done (exit 1).
    Io(String, io::Error),
    /// stdout was closed by the reader: end quietly with status 0.
    BrokenPipe,
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Setup(_) => 2,
            Error::Data(_) | Error::Io(..) => 1,
            Error::BrokenPipe => 0,
        }
    }

    /// Wraps an I/O error with context; a broken pipe becomes the quiet `BrokenPipe`.
    pub fn io(context: impl Into<String>, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Error::BrokenPipe
        } else {
            Error::Io(context.into(), e)
        }
    }

    /// For `map_err`: `.map_err(Error::io_with(|| format!("reading {path}")))`.
    pub fn io_with<F: FnOnce() -> String>(f: F) -> impl FnOnce(io::Error) -> Error {
        move |e| Error::io(f(), e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Setup(m) | Error::Data(m) => f.write_str(m),
            Error::Io(c, e) => write!(f, "{c}: {e}"),
            Error::BrokenPipe => f.write_str("broken pipe"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthands used across the crate.
pub fn usage(m: impl Into<String>) -> Error {
    Error::Usage(m.into())
}
pub fn setup(m: impl Into<String>) -> Error {
    Error::Setup(m.into())
}
pub fn data(m: impl Into<String>) -> Error {
    Error::Data(m.into())
}
