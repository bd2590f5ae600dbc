//! `--on-error fail|skip|dead-letter FILE`, shared by every tool that reads records.
//! Dead letters are NDJSON: `{"tool","error","line","input"|"input_base64","topic",
//! "partition","offset"}` (provenance when known), synced with the tool's output.

use crate::error::{usage, Error, Result};
use crate::record::json::write_str;
use base64::Engine;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnError {
    Fail,
    Skip,
    DeadLetter(PathBuf),
}

impl OnError {
    /// From the one or two values of `--on-error`.
    pub fn parse(v: &[String]) -> Result<OnError> {
        match v {
            [m] if m == "fail" => Ok(OnError::Fail),
            [m] if m == "skip" => Ok(OnError::Skip),
            [m, f] if m == "dead-letter" => Ok(OnError::DeadLetter(PathBuf::from(f))),
            [m] if m == "dead-letter" => Err(usage("--on-error dead-letter needs a FILE")),
            _ => Err(usage(format!(
                "--on-error takes fail, skip or dead-letter FILE, not {:?}",
                v.join(" ")
            ))),
        }
    }
}

/// Where bad records go, and how many there were.
pub struct BadRecords {
    tool: &'static str,
    mode: OnError,
    out: Option<BufWriter<File>>,
    pub count: u64,
}

/// Provenance of a bad record, when it came from the log.
pub struct Provenance<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
}

impl BadRecords {
    pub fn new(tool: &'static str, mode: OnError) -> Result<BadRecords> {
        let out = match &mode {
            OnError::DeadLetter(p) => Some(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        crate::error::setup(format!("dead-letter file {}: {e}", p.display()))
                    })?,
            )),
            _ => None,
        };
        Ok(BadRecords {
            tool,
            mode,
            out,
            count: 0,
        })
    }

    pub fn mode(&self) -> &OnError {
        &self.mode
    }

    /// Handles one bad record: Err in fail mode (the caller stops), else counted and kept.
    pub fn handle(
        &mut self,
        where_: &str,
        line: u64,
        error: &str,
        input: &[u8],
        prov: Option<Provenance<'_>>,
    ) -> Result<()> {
        self.count += 1;
        match &self.mode {
            OnError::Fail => Err(Error::Data(format!("{where_}line {line}: {error}"))),
            OnError::Skip => Ok(()),
            OnError::DeadLetter(p) => {
                let mut b = Vec::with_capacity(input.len() + 128);
                b.extend_from_slice(b"{\"tool\":");
                write_str(&mut b, self.tool);
                b.extend_from_slice(b",\"error\":");
                write_str(&mut b, error);
                b.extend_from_slice(b",\"line\":");
                b.extend_from_slice(line.to_string().as_bytes());
                match std::str::from_utf8(input) {
                    Ok(s) => {
                        b.extend_from_slice(b",\"input\":");
                        write_str(&mut b, s);
                    }
                    Err(_) => {
                        b.extend_from_slice(b",\"input_base64\":\"");
                        b.extend_from_slice(
                            base64::engine::general_purpose::STANDARD
                                .encode(input)
                                .as_bytes(),
                        );
                        b.push(b'"');
                    }
                }
                if let Some(pv) = prov {
                    b.extend_from_slice(b",\"topic\":");
                    write_str(&mut b, pv.topic);
                    b.extend_from_slice(
                        format!(",\"partition\":{},\"offset\":{}", pv.partition, pv.offset)
                            .as_bytes(),
                    );
                }
                b.extend_from_slice(b"}\n");
                let out = self
                    .out
                    .as_mut()
                    .expect("dead-letter mode always has a file");
                out.write_all(&b)
                    .map_err(|e| Error::io(format!("writing dead letters to {}", p.display()), e))
            }
        }
    }

    /// Flushes and (when `sync`) fsyncs the dead-letter file.
    pub fn flush(&mut self, sync: bool) -> Result<()> {
        if let Some(out) = self.out.as_mut() {
            out.flush()
                .map_err(|e| Error::io("writing dead letters", e))?;
            if sync {
                match out.get_ref().sync_data() {
                    Ok(()) => {}
                    // A pipe or terminal (`dead-letter /dev/stderr`): nothing to sync.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
                    Err(e) => return Err(Error::io("syncing dead letters", e)),
                }
            }
        }
        Ok(())
    }
}

/// The topic, partition and offset of an envelope line, for dead letters.
pub fn provenance_of(line: &[u8]) -> Option<(String, u32, u64)> {
    let mut s = crate::record::scan::Scan::default();
    if std::str::from_utf8(line).is_err() || !crate::record::scan::scan_object(line, &mut s) {
        return None;
    }
    let topic: String = serde_json::from_slice(s.get(line, b"topic")?.value(line)).ok()?;
    let num = |k: &[u8]| -> Option<u64> {
        std::str::from_utf8(s.get(line, k)?.value(line))
            .ok()?
            .parse()
            .ok()
    };
    Some((
        topic,
        u32::try_from(num(b"partition")?).ok()?,
        num(b"offset")?,
    ))
}
