//! What every tool that reads a record stream from stdin or files shares: how lines are told
//! apart (envelope or plain), what happens to bad ones, how many threads, the longest line,
//! and opening an input (stdin kept open and its pipe grown, a file polled only when it is not
//! a regular file).

use crate::error::{setup, usage, Result};
use crate::record::lines::StdinFile;
use crate::record::time;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputMode {
    /// Envelopes where a line has topic, partition, offset and a value; else plain objects
    Auto,
    /// Every line is an envelope (provenance optional)
    Envelope,
    /// Every line is a plain object, even one that looks like an envelope
    Plain,
}

/// The flags shared by `transform` and `window`.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    /// How to read lines: auto, envelope or plain
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub input: InputMode,
    /// fail, skip, or dead-letter FILE
    #[arg(long, num_args = 1..=2, value_names = ["MODE", "FILE"], default_value = "fail")]
    pub on_error: Vec<String>,
    /// Threads working on records [default: the number of CPUs]
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Longest input line accepted (bytes; KiB, MiB suffixes)
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub max_record_bytes: String,
}

impl RecordArgs {
    /// --jobs, checked (default: the number of CPUs).
    pub fn jobs(&self) -> Result<usize> {
        let jobs = self
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if jobs == 0 {
            return Err(usage("--jobs must be at least 1"));
        }
        Ok(jobs)
    }

    /// --max-record-bytes, checked.
    pub fn max_record_bytes(&self) -> Result<usize> {
        parse_max_record_bytes(&self.max_record_bytes)
    }
}

/// A --max-record-bytes value: a positive size.
pub fn parse_max_record_bytes(s: &str) -> Result<usize> {
    let max = time::parse_size(s).map_err(usage)? as usize;
    if max == 0 {
        return Err(usage("--max-record-bytes must be positive"));
    }
    Ok(max)
}

/// An opened input: the reader, the descriptor to poll for readiness (None for regular files,
/// always ready), and the prefix for messages (`FILE: `, empty for stdin).
pub struct Input {
    pub reader: Box<dyn Read + Send>,
    pub poll_fd: Option<i32>,
    pub label: String,
}

/// Opens `path` (`-` is stdin).
pub fn open(path: &Path) -> Result<Input> {
    if path.as_os_str() == "-" {
        return Ok(Input {
            reader: Box::new(StdinFile::open()),
            poll_fd: Some(0),
            label: String::new(),
        });
    }
    let f = std::fs::File::open(path).map_err(|e| setup(format!("{}: {e}", path.display())))?;
    let fd = f.as_raw_fd();
    let is_file = f.metadata().map(|m| m.is_file()).unwrap_or(true);
    Ok(Input {
        reader: Box::new(f),
        poll_fd: if is_file { None } else { Some(fd) },
        label: format!("{}: ", path.display()),
    })
}
