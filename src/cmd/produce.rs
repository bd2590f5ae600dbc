//! `produce`: records from stdin or files appended to a topic.
//!
//! Each input line (or CSV row) becomes one record whose value bytes are stored exactly as
//! read: NDJSON lines are validated, never re-serialized. Records are batched into frames per
//! partition; frames are written when they fill or the input stalls (so a live
//! `produce | consume --follow` stays live), and fsynced per `--fsync`.

use crate::cli::onerror::{BadRecords, OnError};
use crate::cli::{self, progress, LogArgs};
use crate::error::{usage, Error, Result};
use crate::log::format::{RecordRef, MAX_RECORD_BYTES};
use crate::log::partitioner::partition_for_key;
use crate::log::{FsyncMode, Log, PartitionWriter, TopicConfig};
use crate::record::fields::{self, FieldPath, RawText};
use crate::record::lines::{LineReader, Next, StdinFile};
use crate::record::{csvrow, envelope, time};
use clap::{CommandFactory, Parser};
use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Under `--fsync batch`, sync once this many bytes are unsynced...
const SYNC_BYTES: u64 = 8 << 20;
/// ...or when the input stalls and the last sync is this old.
const SYNC_INTERVAL: Duration = Duration::from_millis(50);

const ABOUT: &str = "Append records read from stdin or files to a topic of the log";

const LONG_ABOUT: &str = "\
Append records read from stdin (or FILEs, `-` for stdin) to a topic of the log, creating the
topic when it does not exist.

Input formats: NDJSON objects, one per line (the default); CSV with a header row (--csv: a
cell that is a JSON number becomes a number, true/false booleans, an empty cell null, else a
string); raw lines (--lines: each line is the value, any bytes); envelopes as `consume`
writes them (--envelope: key, timestamp, headers and value bytes kept). Blank NDJSON lines are
ignored; a trailing CR (CRLF input) is not part of a line.

Values are stored byte for byte: an NDJSON line is validated, not re-serialized, so
`produce < f.ndjson` then `consume --value` gives back the lines of f exactly.

Keys: --key FIELD (a name or a JSON pointer such as /meta/id): a string's contents, or a
number's or boolean's text. Keyed records go to partition murmur2(key) mod N, as Kafka's
default partitioner, so a key lands on the same partition number as in Kafka. Records
without a key fill one partition's batch, then move to the next (round-robin by batch),
starting with the partition that holds the fewest records.

Timestamps: --ts FIELD holds RFC 3339 text or epoch seconds, milliseconds, microseconds or
nanoseconds (told apart by magnitude), or text in --ts-format (strftime, UTC unless the format
has an offset). Without --ts a record gets its append time.

Durability (--fsync): `batch` (the default) fdatasyncs grouped writes (every 8 MiB, when the
input stalls at most every 50 ms, and before exit) so exit 0 means every record read is on
disk and survives a power cut, at a small cost; `always` syncs each record before reading the
next (thousands of records/s, not millions); `never` only hands bytes to the kernel: they
survive a crash of produce but not of the machine. Exit 0 means every record read was
appended and flushed to the stated level.

Bad input (not JSON, not an object, invalid UTF-8, a missing key or timestamp field, an
unparsable timestamp, a record over --max-record-bytes): --on-error fail (the default) stops
with exit 1 naming the line, after making every earlier record durable; skip counts and goes
on; dead-letter FILE appends the raw line and the reason as NDJSON to FILE and goes on.

One writer per partition: a second produce on the same partitions fails with exit 2, or waits
with --wait-lock. Opening a partition recovers it after a crash (a torn tail is cut, indexes
are rebuilt); what recovery did is said on stderr.";

const AFTER: &str = "\
Exit status: 0 every record appended; 1 bad input in fail mode, or an I/O error (disk full,
fsync failure); 2 bad flags, a lock held by another writer, an unusable log directory.

Examples:
  sensor-feed | produce -t telemetry --key vehicle_id --ts ts
  produce -t meters --csv --key meter --ts time readings.csv
  produce -t raw --lines --fsync never < syslog.txt
  consume -t a | produce -t b --envelope";

#[derive(Parser, Debug)]
#[command(name = "produce", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER)]
pub struct Args {
    #[command(flatten)]
    pub log: LogArgs,
    /// Topic to append to
    #[arg(short = 't', long, value_name = "TOPIC")]
    pub topic: String,
    /// Input files (default: stdin; `-` is stdin)
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Input is NDJSON objects (the default)
    #[arg(long, group = "format")]
    pub ndjson: bool,
    /// Input is CSV with a header row
    #[arg(long, group = "format")]
    pub csv: bool,
    /// Each input line is a value as is
    #[arg(long, group = "format")]
    pub lines: bool,
    /// Input is envelopes as `consume` writes them
    #[arg(long, group = "format")]
    pub envelope: bool,
    /// Key field: a name or a JSON pointer (/a/b)
    #[arg(long, value_name = "FIELD")]
    pub key: Option<String>,
    /// Timestamp field: a name or a JSON pointer
    #[arg(long, value_name = "FIELD")]
    pub ts: Option<String>,
    /// strftime format of the timestamp field's text (e.g. "%Y-%m-%d %H:%M:%S")
    #[arg(long, value_name = "FORMAT", requires = "ts")]
    pub ts_format: Option<String>,
    /// Partition count when the topic is created [default: 1]
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
    /// Append every record to this partition
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// When to fdatasync
    #[arg(long, value_enum, default_value = "batch", value_name = "MODE")]
    pub fsync: FsyncMode,
    /// fail, skip, or dead-letter FILE
    #[arg(long, num_args = 1..=2, value_names = ["MODE", "FILE"], default_value = "fail")]
    pub on_error: Vec<String>,
    /// Largest record accepted (bytes; KiB, MiB suffixes)
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub max_record_bytes: String,
    /// Wait for another writer's lock instead of failing
    #[arg(long)]
    pub wait_lock: bool,
    /// No summary on stderr
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: progress::ProgressArgs,
}

pub fn command() -> clap::Command {
    Args::command()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Ndjson,
    Csv,
    Lines,
    Envelope,
}

/// One record ready to append.
struct Prepared<'a> {
    key: Option<Cow<'a, [u8]>>,
    ts: Option<i64>,
    value: Cow<'a, [u8]>,
    json: bool,
    headers: Cow<'a, [u8]>,
    header_count: u32,
}

struct Producer {
    topic: String,
    format: Format,
    key: Option<FieldPath>,
    ts: Option<FieldPath>,
    ts_format: Option<String>,
    partitions: u32,
    forced: Option<u32>,
    writers: Vec<Option<PartitionWriter>>,
    sticky: u32,
    fsync: FsyncMode,
    bad: BadRecords,
    counts: Vec<u64>,
    records: u64,
    bytes: u64,
    last_sync: Instant,
    csv_headers: Option<Vec<String>>,
    pb: indicatif::ProgressBar,
    quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let format = if a.csv {
        Format::Csv
    } else if a.lines {
        Format::Lines
    } else if a.envelope {
        Format::Envelope
    } else {
        Format::Ndjson
    };
    if matches!(format, Format::Lines | Format::Envelope) && (a.key.is_some() || a.ts.is_some()) {
        return Err(usage(
            "--key and --ts need NDJSON or CSV input (envelopes carry their own)",
        ));
    }
    let max_record = time::parse_size(&a.max_record_bytes).map_err(usage)?;
    if max_record == 0 || max_record as usize > MAX_RECORD_BYTES {
        return Err(usage(format!(
            "--max-record-bytes must be 1 to {MAX_RECORD_BYTES}"
        )));
    }
    let on_error = OnError::parse(&a.on_error)?;
    let log = Log::new(a.log.dir());
    let topic = a.topic.clone();
    if !log.topic_exists(&topic)? {
        log.create_topic(&topic, &TopicConfig::new(a.partitions.unwrap_or(1)))?;
    }
    let cfg = log.topic_config(&topic)?;
    if let Some(n) = a.partitions {
        if n != cfg.partitions {
            return Err(crate::error::setup(format!(
                "topic {topic:?} has {} partitions, not {n} (--partitions applies on creation)",
                cfg.partitions
            )));
        }
    }
    if let Some(p) = a.partition {
        if p >= cfg.partitions {
            return Err(usage(format!(
                "--partition {p}: topic {topic:?} has partitions 0 to {}",
                cfg.partitions - 1
            )));
        }
    }
    let bad = BadRecords::new("produce", on_error)?;
    let mut writers = Vec::new();
    for p in 0..cfg.partitions {
        if a.partition.is_some_and(|f| f != p) {
            writers.push(None);
            continue;
        }
        let w = PartitionWriter::open(&log.partition_dir(&topic, p)?, &cfg, a.fsync, a.wait_lock)?;
        for n in &w.recovery {
            cli::note(a.quiet, "produce", &format!("partition {p}: {n}"));
        }
        writers.push(Some(w));
    }
    let sticky = writers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.as_ref().map(|w| (w.next_offset(), i as u32)))
        .min()
        .map_or(0, |(_, i)| i);
    let show = a.progress.wanted();
    let mut pr = Producer {
        topic,
        format,
        key: a.key.as_deref().map(FieldPath::parse),
        ts: a.ts.as_deref().map(FieldPath::parse),
        ts_format: a.ts_format.clone(),
        partitions: cfg.partitions,
        forced: a.partition,
        writers,
        sticky,
        fsync: a.fsync,
        bad,
        counts: vec![0; cfg.partitions as usize],
        records: 0,
        bytes: 0,
        last_sync: Instant::now(),
        csv_headers: None,
        pb: progress::records_spinner(show, "produce"),
        quiet: a.quiet,
    };
    let started = Instant::now();
    let files = if a.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        a.files.clone()
    };
    let mut result = Ok(());
    for f in &files {
        pr.csv_headers = None;
        result = pr.read_source(f, max_record as usize);
        if result.is_err() {
            break;
        }
    }
    // Whatever happened, everything appended so far is made durable per --fsync.
    let closed = pr.close();
    pr.pb.finish_and_clear();
    result?;
    closed?;
    pr.summary(started.elapsed());
    Ok(())
}

impl Producer {
    fn read_source(&mut self, path: &PathBuf, max: usize) -> Result<()> {
        let stdin = path.as_os_str() == "-";
        let (reader, fd, label): (Box<dyn Read>, Option<i32>, String) = if stdin {
            (Box::new(StdinFile::open()), Some(0), String::new())
        } else {
            let f = File::open(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let fd = f.as_raw_fd();
            let is_file = f.metadata().map(|m| m.is_file()).unwrap_or(true);
            (
                Box::new(f),
                if is_file { None } else { Some(fd) },
                format!("{}: ", path.display()),
            )
        };
        let mut lr = LineReader::new(reader, max, fd);
        let mut csv_buf: Vec<u8> = Vec::new();
        let mut csv_first_line = 0u64;
        loop {
            match lr
                .next_line()
                .map_err(|e| Error::io(format!("{label}reading input"), e))?
            {
                Next::Eof => break,
                Next::Idle => {
                    self.on_idle(&lr)?;
                }
                Next::Line(line) => {
                    if line.oversize {
                        let msg = format!("record is larger than --max-record-bytes ({max} bytes)");
                        self.bad.handle(&label, line.no, &msg, line.bytes, None)?;
                        continue;
                    }
                    if self.format == Format::Csv {
                        // A CSV record ends at a newline outside quotes: an even quote count.
                        if csv_buf.is_empty() {
                            csv_first_line = line.no;
                        } else {
                            csv_buf.push(b'\n');
                        }
                        csv_buf.extend_from_slice(line.bytes);
                        if csv_buf.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
                            if csv_buf.len() > max {
                                let msg = "unterminated quoted CSV field".to_string();
                                let prefix = csv_buf[..csv_buf.len().min(1024)].to_vec();
                                csv_buf.clear();
                                self.bad
                                    .handle(&label, csv_first_line, &msg, &prefix, None)?;
                            }
                            continue;
                        }
                        let rec = std::mem::take(&mut csv_buf);
                        self.csv_record(&label, csv_first_line, &rec)?;
                        continue;
                    }
                    let no = line.no;
                    let bytes = line.bytes;
                    if self.format != Format::Lines && bytes.iter().all(|b| b.is_ascii_whitespace())
                    {
                        continue;
                    }
                    match self.prepare(bytes) {
                        Ok(p) => self.append(p)?,
                        Err(msg) => self.bad.handle(&label, no, &msg, bytes, None)?,
                    }
                }
            }
        }
        if !csv_buf.is_empty() {
            let prefix = csv_buf[..csv_buf.len().min(1024)].to_vec();
            self.bad.handle(
                &label,
                csv_first_line,
                "unterminated quoted CSV field at end of input",
                &prefix,
                None,
            )?;
        }
        Ok(())
    }

    /// Input has nothing ready: make what we have visible, and durable when it is time.
    fn on_idle<R: Read>(&mut self, lr: &LineReader<R>) -> Result<()> {
        self.flush_all()?;
        if self.fsync == FsyncMode::Batch && self.unsynced() > 0 {
            let since = self.last_sync.elapsed();
            if since < SYNC_INTERVAL {
                let wait = (SYNC_INTERVAL - since).as_millis() as i32 + 1;
                if lr.wait(wait) {
                    return Ok(());
                }
            }
            self.sync_all()?;
        }
        lr.wait(-1);
        Ok(())
    }

    fn prepare<'a>(&self, line: &'a [u8]) -> Result<Prepared<'a>, String> {
        match self.format {
            Format::Lines => Ok(Prepared {
                key: None,
                ts: None,
                value: Cow::Borrowed(line),
                json: false,
                headers: Cow::Borrowed(&[]),
                header_count: 0,
            }),
            Format::Envelope => {
                let e = envelope::parse(line)?;
                // An envelope's numeric ts is milliseconds by definition.
                let ts = match e.ts {
                    Some(t) => match t.parse::<i64>() {
                        Ok(ms) => Some(ms),
                        Err(_) => Some(fields::ts_ms(&RawText::Borrowed(t), None)?),
                    },
                    None => None,
                };
                Ok(Prepared {
                    key: e.key.map(Cow::Owned),
                    ts,
                    value: e.value,
                    json: e.value_is_json,
                    headers: Cow::Owned(e.headers),
                    header_count: e.header_count,
                })
            }
            Format::Ndjson | Format::Csv => {
                let f = fields::find(line, self.key.as_ref(), self.ts.as_ref())?;
                let key = match (&self.key, &f.key) {
                    (None, _) => None,
                    (Some(k), None) => return Err(format!("missing key field {k}")),
                    (Some(k), Some(raw)) => match key_bytes(raw) {
                        Some(b) => Some(b),
                        None => return Err(format!("key field {k} is null")),
                    },
                };
                let ts = match (&self.ts, &f.ts) {
                    (None, _) => None,
                    (Some(t), None) => return Err(format!("missing timestamp field {t}")),
                    (Some(t), Some(raw)) => Some(
                        fields::ts_ms(raw, self.ts_format.as_deref())
                            .map_err(|e| format!("field {t}: {e}"))?,
                    ),
                };
                Ok(Prepared {
                    key,
                    ts,
                    value: Cow::Borrowed(line),
                    json: true,
                    headers: Cow::Borrowed(&[]),
                    header_count: 0,
                })
            }
        }
    }

    fn csv_record(&mut self, label: &str, line_no: u64, rec: &[u8]) -> Result<()> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(rec);
        let mut row = csv::StringRecord::new();
        let parsed = match rdr.read_record(&mut row) {
            Ok(true) => Ok(()),
            Ok(false) => return Ok(()),
            Err(e) => Err(match e.kind() {
                csv::ErrorKind::Utf8 { .. } => "invalid UTF-8 in CSV".to_string(),
                _ => format!("bad CSV: {e}"),
            }),
        };
        if let Err(m) = parsed {
            return self.bad.handle(label, line_no, &m, rec, None);
        }
        let Some(headers) = &self.csv_headers else {
            let h: Vec<String> = row
                .iter()
                .map(|s| s.trim_start_matches('\u{feff}').to_string())
                .collect();
            self.csv_headers = Some(h);
            return Ok(());
        };
        if row.len() == 1 && row.get(0) == Some("") && headers.len() > 1 {
            return Ok(()); // blank line
        }
        if row.len() != headers.len() {
            let m = format!(
                "CSV row has {} fields, the header has {}",
                row.len(),
                headers.len()
            );
            return self.bad.handle(label, line_no, &m, rec, None);
        }
        let mut obj = Vec::with_capacity(rec.len() + 16 * headers.len());
        let cells: Vec<&str> = row.iter().collect();
        csvrow::write_object(&mut obj, headers, &cells);
        let found = self
            .prepare(&obj)
            .map(|p| (p.key.map(|k| k.into_owned()), p.ts));
        match found {
            Ok((key, ts)) => {
                let p = Prepared {
                    key: key.map(Cow::Owned),
                    ts,
                    value: Cow::Owned(obj),
                    json: true,
                    headers: Cow::Borrowed(&[]),
                    header_count: 0,
                };
                self.append(p)
            }
            Err(m) => self.bad.handle(label, line_no, &m, rec, None),
        }
    }

    fn append(&mut self, p: Prepared<'_>) -> Result<()> {
        let ts = p.ts.unwrap_or_else(time::now_ms);
        let rec = RecordRef {
            timestamp: ts,
            key: p.key.as_deref(),
            value: &p.value,
            headers: &p.headers,
            header_count: p.header_count,
            value_is_json: p.json,
        };
        let part = match (self.forced, &p.key) {
            (Some(f), _) => f,
            (None, Some(k)) => partition_for_key(k, self.partitions),
            (None, None) => {
                // Every partition has a writer when no --partition is forced.
                if self.writers[self.sticky as usize]
                    .as_ref()
                    .is_some_and(|w| w.would_seal(&rec))
                {
                    self.sticky = (self.sticky + 1) % self.partitions;
                }
                self.sticky
            }
        };
        let w = self.writers[part as usize]
            .as_mut()
            .expect("a writer is open for every partition records can go to");
        w.append(&rec)?;
        self.counts[part as usize] += 1;
        self.records += 1;
        self.bytes += p.value.len() as u64;
        if self.records % 4096 == 0 {
            self.pb.set_position(self.records);
        }
        match self.fsync {
            FsyncMode::Always => self.writers[part as usize]
                .as_mut()
                .expect("opened above")
                .sync()?,
            FsyncMode::Batch if self.records % 1024 == 0 && self.unsynced() >= SYNC_BYTES => {
                self.sync_all()?
            }
            _ => {}
        }
        Ok(())
    }

    fn unsynced(&self) -> u64 {
        self.writers
            .iter()
            .flatten()
            .map(|w| w.unsynced_bytes())
            .sum()
    }

    fn flush_all(&mut self) -> Result<()> {
        for w in self.writers.iter_mut().flatten() {
            w.flush()?;
        }
        self.bad.flush(false)
    }

    fn sync_all(&mut self) -> Result<()> {
        for w in self.writers.iter_mut().flatten() {
            if w.unsynced_bytes() > 0 {
                w.sync()?;
            }
        }
        self.bad.flush(true)?;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        let mut first_err = None;
        for w in self.writers.iter_mut() {
            if let Some(w) = w.take() {
                if let Err(e) = w.close() {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.bad.flush(self.fsync != FsyncMode::Never) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    fn summary(&self, took: Duration) {
        if self.quiet {
            return;
        }
        let secs = took.as_secs_f64().max(1e-9);
        let parts: Vec<String> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(p, c)| format!("{p}:{c}"))
            .collect();
        let mut msg = format!(
            "{} records ({}) to {} in {:.2} s, {}records/s; partitions {}",
            self.records,
            cli::human_bytes(self.bytes),
            self.topic,
            secs,
            cli::human_count(self.records as f64 / secs),
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(" ")
            }
        );
        if self.bad.count > 0 {
            let what = match self.bad.mode() {
                OnError::DeadLetter(p) => format!("dead-lettered to {}", p.display()),
                _ => "skipped".into(),
            };
            msg.push_str(&format!("; {} bad records {what}", self.bad.count));
        }
        cli::note(false, "produce", &msg);
    }
}

/// The key bytes of a field, borrowed when the JSON text needs no unescaping.
fn key_bytes<'a>(raw: &RawText<'a>) -> Option<Cow<'a, [u8]>> {
    if let RawText::Borrowed(s) = raw {
        let b = s.as_bytes();
        if b.len() >= 2 && b[0] == b'"' && !b.contains(&b'\\') {
            return Some(Cow::Borrowed(&b[1..b.len() - 1]));
        }
        if b.first().is_some_and(|c| c.is_ascii_digit() || *c == b'-') {
            return Some(Cow::Borrowed(b));
        }
    }
    fields::key_bytes(raw).map(Cow::Owned)
}
