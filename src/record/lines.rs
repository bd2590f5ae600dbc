//! Splits an input into lines with bounded memory: a line longer than the limit is not kept
//! whole (its first bytes are, for the error report) and reading goes on after it. Line
//! numbers count from 1. A trailing `\r` (CRLF input) is not part of the line, nor is a
//! UTF-8 byte order mark at the start of the input.
//!
//! `Next::Idle` tells a live tool that nothing more is ready on a pipe, so it can flush what
//! it holds before blocking: that is what keeps `produce | consume --follow` pipelines live.

use memchr::memchr;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, RawFd};

const CHUNK: usize = 1 << 20;
/// A UTF-8 byte order mark, which some Windows tools put at the start of a file: skipped
/// there, and only there.
const BOM: &[u8] = b"\xef\xbb\xbf";
/// How much of an oversize line is kept for the error report.
pub const OVERSIZE_PREFIX: usize = 1024;

pub struct LineReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    line_no: u64,
    max: usize,
    /// Set while skipping the rest of an oversize line.
    discarding: bool,
    oversize_prefix: Vec<u8>,
    /// A descriptor to poll for readiness; None for files (always ready).
    poll_fd: Option<RawFd>,
    pub bytes_read: u64,
}

pub struct Line<'a> {
    pub no: u64,
    pub bytes: &'a [u8],
    /// The line was longer than the limit; `bytes` holds only its first bytes.
    pub oversize: bool,
    /// Input bytes taken through this line (its newline included).
    pub end: u64,
}

pub enum Next<'a> {
    Line(Line<'a>),
    /// Nothing is ready right now (pipes and terminals only).
    Idle,
    Eof,
}

impl<R: Read> LineReader<R> {
    pub fn new(r: R, max_line: usize, poll_fd: Option<RawFd>) -> Self {
        LineReader {
            r,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            eof: false,
            line_no: 0,
            max: max_line,
            discarding: false,
            oversize_prefix: Vec::new(),
            poll_fd,
            bytes_read: 0,
        }
    }

    /// A reader of input that starts `bytes` (and `lines` lines) into a file: line numbers
    /// and `consumed` go on from there.
    pub fn starting_at(mut self, lines: u64, bytes: u64) -> Self {
        self.line_no = lines;
        self.bytes_read = bytes;
        self
    }

    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// Input bytes taken as lines so far (read, less what is buffered for the next line).
    pub fn consumed(&self) -> u64 {
        self.bytes_read - (self.end - self.start) as u64
    }

    /// Waits until input is ready or `timeout_ms` passes (-1: no limit). True when ready.
    pub fn wait(&self, timeout_ms: i32) -> bool {
        let Some(fd) = self.poll_fd else { return true };
        ready(fd, timeout_ms)
    }

    pub fn next_line(&mut self) -> io::Result<Next<'_>> {
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[self.start..self.end]) {
                let s = self.start;
                let e = s + i;
                self.start = e + 1;
                self.line_no += 1;
                if self.discarding {
                    self.discarding = false;
                    let (buf, no) = (&self.oversize_prefix, self.line_no);
                    return Ok(Next::Line(Line {
                        no,
                        bytes: buf,
                        oversize: true,
                        end: self.consumed(),
                    }));
                }
                let mut line = &self.buf[s..e];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if self.line_no == 1 {
                    line = line.strip_prefix(BOM).unwrap_or(line);
                }
                if line.len() > self.max {
                    self.oversize_prefix = line[..OVERSIZE_PREFIX.min(line.len())].to_vec();
                    let (buf, no) = (&self.oversize_prefix, self.line_no);
                    return Ok(Next::Line(Line {
                        no,
                        bytes: buf,
                        oversize: true,
                        end: self.consumed(),
                    }));
                }
                return Ok(Next::Line(Line {
                    no: self.line_no,
                    bytes: line,
                    oversize: false,
                    end: self.consumed(),
                }));
            }
            if self.eof {
                if self.start < self.end || self.discarding {
                    // A last line without a newline.
                    let (s, e) = (self.start, self.end);
                    self.start = self.end;
                    self.line_no += 1;
                    if self.discarding || e - s > self.max {
                        if !self.discarding {
                            self.oversize_prefix =
                                self.buf[s..s + OVERSIZE_PREFIX.min(e - s)].to_vec();
                        }
                        self.discarding = false;
                        return Ok(Next::Line(Line {
                            no: self.line_no,
                            bytes: &self.oversize_prefix,
                            oversize: true,
                            end: self.consumed(),
                        }));
                    }
                    let mut line = &self.buf[s..e];
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    if self.line_no == 1 {
                        line = line.strip_prefix(BOM).unwrap_or(line);
                    }
                    return Ok(Next::Line(Line {
                        no: self.line_no,
                        bytes: line,
                        oversize: false,
                        end: self.consumed(),
                    }));
                }
                return Ok(Next::Eof);
            }
            // Make room: move the partial line to the front, grow up to the limit, or start
            // discarding an oversize line.
            let partial = self.end - self.start;
            if self.discarding {
                self.start = 0;
                self.end = 0;
            } else if partial > self.max + 1 {
                self.oversize_prefix = self.buf[self.start..self.start + OVERSIZE_PREFIX].to_vec();
                self.discarding = true;
                self.start = 0;
                self.end = 0;
            } else {
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.start = 0;
                    self.end = partial;
                }
                if self.end == self.buf.len() {
                    let n = (self.buf.len() * 2).min(self.max + CHUNK);
                    self.buf.resize(n.max(self.buf.len() + CHUNK / 4), 0);
                }
            }
            if let Some(fd) = self.poll_fd {
                if !ready(fd, 0) {
                    return Ok(Next::Idle);
                }
            }
            let n = loop {
                match self.r.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
            self.bytes_read += n as u64;
        }
    }
}

/// Whether `fd` has input ready (or is at EOF / in error) within `timeout_ms`.
pub fn ready(fd: RawFd, timeout_ms: i32) -> bool {
    // SAFETY: the descriptor belongs to an open input for the life of the reader.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(bfd.as_fd(), PollFlags::POLLIN)];
    let t = if timeout_ms < 0 {
        PollTimeout::NONE
    } else {
        PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::MAX)
    };
    match poll(&mut fds, t) {
        Ok(0) => false,
        Ok(_) => true,
        Err(_) => true,
    }
}

/// stdin as a plain file: no userspace buffer, so poll(2) sees exactly what is unread.
pub struct StdinFile(std::mem::ManuallyDrop<std::fs::File>);

impl StdinFile {
    pub fn open() -> StdinFile {
        use std::os::fd::FromRawFd;
        // SAFETY: fd 0 is open for the life of the process; ManuallyDrop keeps it open.
        let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
        crate::cli::output::grow_pipe(&f);
        StdinFile(f)
    }
}

impl Read for StdinFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<(u64, Vec<u8>, bool)> {
        let mut r = LineReader::new(input, max, None);
        let mut v = Vec::new();
        while let Next::Line(l) = r.next_line().unwrap() {
            v.push((l.no, l.bytes.to_vec(), l.oversize));
        }
        v
    }

    #[test]
    fn splits_and_numbers() {
        let v = lines(b"a\r\nbb\n\nccc", 10);
        assert_eq!(
            v,
            vec![
                (1, b"a".to_vec(), false),
                (2, b"bb".to_vec(), false),
                (3, vec![], false),
                (4, b"ccc".to_vec(), false)
            ]
        );
    }

    #[test]
    fn a_bom_is_skipped_at_the_start_only() {
        let v = lines(b"\xef\xbb\xbfa\n\xef\xbb\xbfb\n", 10);
        assert_eq!(
            v,
            vec![
                (1, b"a".to_vec(), false),
                (2, b"\xef\xbb\xbfb".to_vec(), false)
            ]
        );
        assert_eq!(lines(b"\xef\xbb\xbf", 10), vec![(1, vec![], false)]);
    }

    #[test]
    fn oversize_lines_are_bounded() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5 * CHUNK));
        input.extend_from_slice(b"\nafter\n");
        let v = lines(&input, 100);
        assert_eq!(v.len(), 3);
        assert!(v[1].2 && v[1].1.len() == OVERSIZE_PREFIX && v[1].0 == 2);
        assert_eq!(v[2], (3, b"after".to_vec(), false));
    }

    #[test]
    fn long_lines_within_limit_grow_the_buffer() {
        let long = vec![b'y'; 3 * CHUNK];
        let mut input = long.clone();
        input.push(b'\n');
        let v = lines(&input, 4 * CHUNK);
        assert_eq!(v[0].1, long);
    }
}
