//! `store`: records from stdin upserted into a keyed table, and the table read back (get,
//! scan, export, stats, diff), its versions (promote, drop) and its compaction.

use crate::cli::input::InputMode;
use crate::cli::onerror::{BadRecords, OnError, Provenance};
use crate::cli::output::Output;
use crate::cli::{self, progress, LogArgs};
use crate::error::{data, setup, usage, Error, Result};
use crate::log::format::MAX_RECORD_BYTES;
use crate::log::groups::Groups;
use crate::log::{FsyncMode, Log};
use crate::record::json::write_str;
use crate::record::lines::{LineReader, Next, StdinFile};
use crate::record::scan::{self, Kind, Scan};
use crate::record::time;
use crate::store::changelog::NO_TS;
use crate::store::input::{KeySpec, Reader};
use crate::store::table::{self, TableRef, Tables};
use crate::store::view::View;
use crate::store::writer::{garbage_ratio, CompactPolicy, Source, TableWriter};
use crate::store::{diff, sqlite, Row};
use clap::{CommandFactory, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ABOUT: &str = "Upsert records into a keyed table; read, export, compare and version tables";

const LONG_ABOUT: &str = "\
Without a subcommand, `store --table NAME` reads records on stdin and upserts each under its
key into table NAME of the log directory (LOGDIR/tables/NAME). The key is the envelope's key,
or --key FIELD[,FIELD...] of the value (several fields joined with `|`). A record whose value
is null, or for which the jq expression --delete-when is true, deletes its key. Last write
wins in input order.

Input: envelopes (from consume, transform or window) or plain JSON objects (stored whole; they
need --key). In auto mode a line is an envelope when it has a value and nothing but envelope
members (topic, partition, offset, sub, ts, key, key_base64, value, value_str, headers). A
value_str is stored as a JSON string; value_base64 is refused.

Idempotence: for each source (topic, partition) named by an envelope's provenance, the table
keeps the highest (offset, sub) applied, atomically with the data. Records at or below it are
skipped and counted, so rerunning a `consume | transform | store` pipeline after a crash, or
replaying an overlapping range, leaves the table exactly as one clean run would. Records
without provenance (window results) are plain upserts, idempotent by key.

Batches: records are applied in batches, each ended by a commit marker that carries the
source offsets; a batch becomes visible to readers, and durable, as a whole. A batch ends
when the input stalls (at most every 50 ms), every 32 MiB, and at the end. --fsync batch (the
default) fdatasyncs each commit: exit 0 means every record read is in the table and survives
a power cut; `always` commits and syncs every record; `never` survives a crash of store, not
of the machine. A killed store loses only its last, uncommitted batch, which a rerun applies.

--commit-group G commits, after each durable batch, consumer group G's offsets for the
sources applied (the last offset applied while running, so a flat map's remaining outputs are
redelivered and the applied ones skipped; the next offset at the end of input). Each commit
is then fdatasynced whatever --fsync says, and dead letters are synced before the batch after
them, so the group never claims what the table or the dead-letter file could lose. Pair it
with `consume --group G --no-commit` for an exactly-once effect end to end.

Tables are versioned for reprocessing: `--table NAME@v2` writes version 2 beside the live one;
`store promote NAME@v2` makes it the version NAME reads, atomically; `store versions NAME`
lists them; `store drop NAME@v1` deletes one. NAME alone writes the live version (creating v1
for a new table).

Storage: an append-only changelog in the log's segment format (CRC per frame) with a sorted
key index that is rebuilt from the changelog when missing or damaged. The changelog is
compacted to live keys (a new generation switched in atomically; readers keep working) by
`store compact NAME`, and automatically once more than --compact-ratio of it is garbage and it
is larger than --compact-min-bytes.

Exit status: 0 success; 1 bad input in fail mode, damage found, a difference found by diff,
a key missing for get; 2 usage or setup errors (bad flags, no such table, table being written
by another store).";

const EXAMPLES: &str = "\
Examples:
  consume -t telemetry --group live --follow --no-commit | transform -f etl.jq | store --table trips --commit-group live
  window --tumbling 1m --by vehicle --agg 'avg(.speed)' < t.ndjson | store --table speed_1m
  store --table devices --key device_id < devices.ndjson
  store get speed_1m truck-17
  store scan trips --prefix truck-
  store export speed_1m --csv > expected.csv
  store diff speed_1m expected.csv --tolerance 1e-9
  store --table trips@v2 < replayed.ndjson && store diff trips trips@v2 && store promote trips@v2
  store export trips --sqlite trips.db && sqlite3 trips.db 'select count(*) from trips'";

#[derive(Parser, Debug)]
#[command(
    name = "store",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES
)]
pub struct Args {
    /// Log directory [env: KAPPA_LOG] [default: ./kappa-log]
    #[arg(long = "log", value_name = "DIR", global = true)]
    pub log: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(clap::Args, Debug)]
pub struct WriteArgs {
    /// Table to write: NAME (its live version) or NAME@vN
    #[arg(long, value_name = "NAME[@vN]")]
    pub table: Option<String>,
    /// Key from these fields of the value (names or /pointers), joined with `|` [default: the envelope's key]
    #[arg(long, value_name = "FIELD[,FIELD...]")]
    pub key: Option<String>,
    /// Delete the key when this jq expression is true for the value
    #[arg(long, value_name = "EXPR")]
    pub delete_when: Option<String>,
    /// When to fdatasync
    #[arg(long, value_enum, default_value = "batch", value_name = "MODE")]
    pub fsync: FsyncMode,
    /// Commit consumer group G's offsets after each durable batch
    #[arg(long, value_name = "G")]
    pub commit_group: Option<String>,
    /// How to read lines: auto, envelope or plain
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub input: InputMode,
    /// fail, skip, or dead-letter FILE
    #[arg(long, num_args = 1..=2, value_names = ["MODE", "FILE"], default_value = "fail")]
    pub on_error: Vec<String>,
    /// Longest input line accepted (bytes; KiB, MiB suffixes)
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub max_record_bytes: String,
    /// Compact automatically once this share of the changelog is garbage (1 = never)
    #[arg(long, default_value = "0.5", value_name = "RATIO")]
    pub compact_ratio: f64,
    /// ...and only once the changelog is at least this large
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    pub compact_min_bytes: String,
    /// No summary on stderr
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: progress::ProgressArgs,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Print the records of KEYs (exit 1 when one is absent)
    Get {
        /// NAME or NAME@vN
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
        /// Print only the values
        #[arg(long)]
        value: bool,
    },
    /// Print records in key order, optionally within a prefix or range
    Scan {
        table: String,
        /// Keys starting with P
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Keys from K (inclusive)
        #[arg(long, value_name = "K")]
        from: Option<String>,
        /// Keys before K (exclusive)
        #[arg(long, value_name = "K")]
        to: Option<String>,
        /// At most N records
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Print only the values
        #[arg(long)]
        value: bool,
    },
    /// Write the whole table sorted by key: NDJSON rows (default), CSV, or a SQLite database
    Export {
        table: String,
        /// One JSON object per row: the key column, then the value's fields
        #[arg(long, group = "format")]
        ndjson: bool,
        /// CSV with a header row
        #[arg(long, group = "format")]
        csv: bool,
        /// Into table T (--table) of the SQLite database FILE, replacing it
        #[arg(long, group = "format", value_name = "FILE")]
        sqlite: Option<PathBuf>,
        /// SQL table name for --sqlite [default: the table's name]
        #[arg(long = "table", value_name = "T", requires = "sqlite")]
        sql_table: Option<String>,
        /// CSV columns after the key, in this order [default: every field, in order of first appearance]
        #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Name of the key column
        #[arg(long, default_value = "key", value_name = "NAME")]
        key_column: String,
    },
    /// Keys, bytes, garbage ratio, applied offsets per source, as JSON; checks every CRC
    Stats { table: String },
    /// List the tables
    List {},
    /// Compare a table with an expected CSV/NDJSON file or another table (exit 1 on a difference)
    Diff {
        table: String,
        /// A file when it contains `/` or ends in .csv or .ndjson, else a table
        other: String,
        /// The expected file's key field(s), joined with `|` like the table's keys
        #[arg(
            long,
            value_name = "FIELD[,FIELD...]",
            default_value = "key",
            value_delimiter = ','
        )]
        key: Vec<String>,
        /// Numbers are equal when |a-b| <= T * max(1, |a|, |b|)
        #[arg(long, default_value = "0", value_name = "T")]
        tolerance: f64,
        /// Say nothing; only the exit status tells
        #[arg(short, long)]
        quiet: bool,
    },
    /// Rewrite a table version's changelog to its live keys
    Compact { table: String },
    /// Make NAME@vN the version NAME reads
    Promote {
        /// NAME@vN
        table: String,
    },
    /// List a table's versions (the live one marked)
    Versions { name: String },
    /// Delete a version (NAME@vN), or a whole table (NAME)
    Drop { table: String },
}

pub fn command() -> clap::Command {
    Args::command()
}

pub fn run(a: Args) -> Result<()> {
    let log = LogArgs { log: a.log };
    let log = &log;
    let w = &a.write;
    if a.cmd.is_some()
        && (w.table.is_some()
            || w.key.is_some()
            || w.delete_when.is_some()
            || w.commit_group.is_some())
    {
        return Err(usage(
            "--table, --key, --delete-when and --commit-group are for writing; a subcommand takes the table as an argument",
        ));
    }
    match a.cmd {
        None => write(log, a.write),
        Some(Cmd::Get { table, keys, value }) => get(log, &table, &keys, value),
        Some(Cmd::Scan {
            table,
            prefix,
            from,
            to,
            limit,
            value,
        }) => scan_cmd(log, &table, prefix, from, to, limit, value),
        Some(Cmd::Export {
            table,
            ndjson: _,
            csv,
            sqlite,
            sql_table,
            columns,
            key_column,
        }) => export(log, &table, csv, sqlite, sql_table, columns, &key_column),
        Some(Cmd::Stats { table }) => stats(log, &table),
        Some(Cmd::List {}) => list(log),
        Some(Cmd::Diff {
            table,
            other,
            key,
            tolerance,
            quiet,
        }) => diff_cmd(log, &table, &other, key, tolerance, quiet),
        Some(Cmd::Compact { table }) => compact(log, &table),
        Some(Cmd::Promote { table }) => promote(log, &table),
        Some(Cmd::Versions { name }) => versions(log, &name),
        Some(Cmd::Drop { table }) => drop_cmd(log, &table),
    }
}

fn tables(log: &LogArgs) -> Tables {
    Tables::new(&log.dir())
}

/// Under --fsync batch a commit waits this long for more input before it syncs...
const COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// ...and a batch ends at this size whatever the input does.
const BATCH_BYTES: u64 = 32 << 20;

fn write(log_args: &LogArgs, a: WriteArgs) -> Result<()> {
    let Some(name) = a.table.as_deref() else {
        return Err(usage(
            "give --table NAME to write, or a subcommand (get, scan, export, stats, list, diff, compact, promote, versions, drop); see --help",
        ));
    };
    let tref = TableRef::parse(name)?;
    let max = crate::cli::input::parse_max_record_bytes(&a.max_record_bytes)?;
    if max == 0 || max > MAX_RECORD_BYTES {
        return Err(usage(format!(
            "--max-record-bytes must be 1 to {MAX_RECORD_BYTES}"
        )));
    }
    if !(0.0..=1.0).contains(&a.compact_ratio) {
        return Err(usage("--compact-ratio must be between 0 and 1"));
    }
    let min_bytes = time::parse_size(&a.compact_min_bytes).map_err(usage)?;
    let on_error = OnError::parse(&a.on_error)?;
    let key = match &a.key {
        Some(k) => {
            let f: Vec<String> = k.split(',').map(|s| s.trim().to_string()).collect();
            if f.iter().any(|s| s.is_empty()) {
                return Err(usage(format!("--key {k:?}: an empty field name")));
            }
            KeySpec::Fields(f)
        }
        None if a.input == InputMode::Plain => {
            return Err(usage(
                "--input plain needs --key FIELD (plain records have no key)",
            ))
        }
        None => KeySpec::Envelope,
    };
    let delete_when = match &a.delete_when {
        Some(e) => Some(crate::transform::Predicate::new(e, "--delete-when").map_err(usage)?),
        None => None,
    };
    let log = Log::new(log_args.dir());
    let groups = match &a.commit_group {
        Some(g) => {
            crate::log::names::validate("group", g)?;
            Some((Groups::new(&log), g.clone()))
        }
        None => None,
    };
    let mut bad = BadRecords::new("store", on_error)?;
    let policy = CompactPolicy {
        ratio: a.compact_ratio,
        min_bytes,
    };
    let mut w = TableWriter::open(tables(log_args), &tref, a.fsync, policy)?;
    // The group's offsets may only ever claim what the table holds durably.
    w.durable_commits = groups.is_some();
    let sync_dead_letters = a.fsync != FsyncMode::Never || groups.is_some();
    for n in std::mem::take(&mut w.notes) {
        cli::note(a.quiet, "store", &format!("{tref}: {n}"));
    }
    let reader = Reader::new(a.input, key, delete_when);
    let pb = progress::records_spinner(a.progress.wanted(), "store");
    let started = Instant::now();
    let mut st = Sink {
        w,
        groups,
        committed: BTreeMap::new(),
        last_commit: Instant::now(),
        batch_bytes: 0,
        records: 0,
    };
    // Lines are read and parsed on their own thread while this one writes the table.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(16);
    let parser = std::thread::spawn(move || {
        let r = parse_input(reader, &mut bad, max, sync_dead_letters, &tx);
        (r, bad)
    });
    let applied = st.apply_all(&rx, &pb);
    drop(rx);
    if let Err(e) = applied {
        // The writer failed (rule 6: no retry): the input thread may be blocked on a live
        // input, so it is not waited for. Committed batches stand; recovery does the rest.
        pb.finish_and_clear();
        return Err(e);
    }
    // The writer saw the channel close: the input thread has returned.
    let (parsed, mut bad) = parser
        .join()
        .map_err(|_| data("the input thread stopped unexpectedly"))?;
    let r = parsed;
    pb.finish_and_clear();
    // Whatever stopped the input, what was read before it is committed (valid data around a
    // bad record is never lost); a failed writer refuses, and recovery decides.
    let end = st.commit(r.is_ok());
    let flushed = bad.flush(a.fsync != FsyncMode::Never);
    let Sink { w, records, .. } = st;
    let (skipped, upserts, deletes, tname) = (w.skipped, w.upserts, w.deletes, w.name().clone());
    let closed = if r.is_ok() && end.is_ok() {
        w.close()
    } else {
        Ok(Vec::new())
    };
    r?;
    end?;
    flushed?;
    for n in closed? {
        cli::note(a.quiet, "store", &n);
    }
    if !a.quiet {
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let mut msg = format!(
            "{records} records to {tname} in {secs:.2} s, {}records/s: {upserts} upserts, {deletes} deletes, {skipped} already applied",
            cli::human_count(records as f64 / secs),
        );
        if bad.count > 0 {
            msg.push_str(&format!(", {} bad", bad.count));
        }
        cli::note(false, "store", &msg);
    }
    Ok(())
}

struct Sink {
    w: TableWriter,
    groups: Option<(Groups, String)>,
    /// Group offsets already committed, per (topic, partition).
    committed: BTreeMap<(String, u32), u64>,
    last_commit: Instant,
    batch_bytes: u64,
    records: u64,
}

/// Parsed lines on their way to the writer: keys, values and topics copied into one
/// buffer, so a batch owns everything it refers to.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    recs: Vec<Item>,
    /// Input bytes the batch stands for.
    bytes: u64,
}

struct Item {
    key: (usize, usize),
    value: Option<(usize, usize)>,
    ts: Option<i64>,
    /// topic span, partition, offset, sub
    src: Option<((usize, usize), u32, u64, u64)>,
}

enum Msg {
    Batch(Batch),
    /// The input has nothing ready: a moment to commit.
    Idle,
}

/// Batches are handed over at about this size.
const HANDOFF_BYTES: usize = 1 << 20;

fn push(buf: &mut Vec<u8>, b: &[u8]) -> (usize, usize) {
    let at = buf.len();
    buf.extend_from_slice(b);
    (at, buf.len())
}

/// The input thread: reads lines, parses them, handles bad ones, and sends batches. Returns
/// early (Ok) when the writer has gone away.
fn parse_input(
    mut reader: Reader,
    bad: &mut BadRecords,
    max: usize,
    sync_dead_letters: bool,
    tx: &std::sync::mpsc::SyncSender<Msg>,
) -> Result<()> {
    let mut lr = LineReader::new(StdinFile::open(), max, Some(0));
    let mut b = Batch::default();
    let mut bad_flushed = 0u64;
    // Dead letters are made durable before the batch after them goes to the writer: once
    // that batch commits (and perhaps the group's offsets past them), they must not be lost.
    let mut send = |b: &mut Batch, bad: &mut BadRecords| -> Result<bool> {
        if bad.count > bad_flushed {
            bad.flush(sync_dead_letters)?;
            bad_flushed = bad.count;
        }
        if b.recs.is_empty() {
            return Ok(true);
        }
        Ok(tx.send(Msg::Batch(std::mem::take(b))).is_ok())
    };
    loop {
        let next = lr.next_line();
        let line = match next.map_err(|e| Error::io("reading input", e)) {
            Err(e) => {
                send(&mut b, bad)?;
                return Err(e);
            }
            Ok(Next::Eof) => {
                send(&mut b, bad)?;
                return Ok(());
            }
            Ok(Next::Idle) => {
                if !send(&mut b, bad)? || tx.send(Msg::Idle).is_err() {
                    return Ok(());
                }
                lr.wait(-1);
                continue;
            }
            Ok(Next::Line(line)) => line,
        };
        if line.bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let handled = if line.oversize {
            let msg = format!("record is larger than --max-record-bytes ({max} bytes)");
            bad.handle("", line.no, &msg, line.bytes, None)
        } else {
            // The key goes straight into the batch buffer.
            let key_at = b.buf.len();
            let parsed = reader.parse(line.bytes, &mut b.buf).and_then(|p| {
                // A key taken from the value can make the record larger than the line.
                let size = b.buf.len() - key_at + p.value.map_or(0, <[u8]>::len);
                if size > MAX_RECORD_BYTES {
                    return Err(format!(
                        "key and value together are larger than a record can be ({MAX_RECORD_BYTES} bytes)"
                    ));
                }
                Ok(p)
            });
            match parsed {
                Ok(p) => {
                    let key = (key_at, b.buf.len());
                    let value = p.value.map(|v| push(&mut b.buf, v));
                    let src = p
                        .source
                        .map(|(t, part, o, sub)| (push(&mut b.buf, t.as_bytes()), part, o, sub));
                    b.recs.push(Item {
                        key,
                        value,
                        ts: p.ts,
                        src,
                    });
                    b.bytes += line.bytes.len() as u64;
                    Ok(())
                }
                Err(msg) => {
                    // A key partly written before the error is not kept.
                    b.buf.truncate(key_at);
                    let prov = crate::cli::onerror::provenance_of(line.bytes);
                    let pv = prov.as_ref().map(|(t, p, o)| Provenance {
                        topic: t,
                        partition: *p,
                        offset: *o,
                    });
                    bad.handle("", line.no, &msg, line.bytes, pv)
                }
            }
        };
        if let Err(e) = handled {
            // Fail mode: what came before the bad line still goes in.
            send(&mut b, bad)?;
            return Err(e);
        }
        if b.buf.len() >= HANDOFF_BYTES && !send(&mut b, bad)? {
            return Ok(());
        }
    }
}

impl Sink {
    /// The writer's side: applies batches, commits every BATCH_BYTES and when the input
    /// stalls (waiting up to COMMIT_INTERVAL for more, so a trickle is group-committed).
    fn apply_all(
        &mut self,
        rx: &std::sync::mpsc::Receiver<Msg>,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        use std::sync::mpsc::RecvTimeoutError;
        let mut next = rx.recv().ok();
        while let Some(msg) = next.take() {
            match msg {
                Msg::Batch(b) => {
                    for it in &b.recs {
                        let src = it.src.map(|(t, partition, offset, sub)| Source {
                            // Copied from a &str by the input thread.
                            topic: std::str::from_utf8(&b.buf[t.0..t.1]).unwrap_or_default(),
                            partition,
                            offset,
                            sub,
                        });
                        let key = &b.buf[it.key.0..it.key.1];
                        let value = it.value.map(|v| &b.buf[v.0..v.1]);
                        self.w.apply(key, value, it.ts, src.as_ref())?;
                    }
                    self.records += b.recs.len() as u64;
                    self.batch_bytes += b.bytes;
                    if self.batch_bytes >= BATCH_BYTES {
                        self.commit(false)?;
                        pb.set_position(self.records);
                    }
                    next = rx.recv().ok();
                }
                Msg::Idle => {
                    pb.set_position(self.records);
                    if self.w.pending() == 0 {
                        // Nothing to commit, but the group may be behind what the table
                        // holds (--fsync always commits each record; skipped records).
                        self.commit(false)?;
                        next = rx.recv().ok();
                        continue;
                    }
                    let since = self.last_commit.elapsed();
                    if since < COMMIT_INTERVAL {
                        match rx.recv_timeout(COMMIT_INTERVAL - since) {
                            Ok(m) => {
                                next = Some(m);
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => return Ok(()),
                            Err(RecvTimeoutError::Timeout) => {}
                        }
                    }
                    self.commit(false)?;
                    next = rx.recv().ok();
                }
            }
        }
        Ok(())
    }

    /// Commits the batch, then the consumer group's offsets (`at_end`: the input ended, so
    /// every source's last record is complete and the group may move past it).
    fn commit(&mut self, at_end: bool) -> Result<()> {
        self.w.commit()?;
        self.last_commit = Instant::now();
        self.batch_bytes = 0;
        let Some((groups, g)) = &self.groups else {
            return Ok(());
        };
        let mut by_topic: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        for (id, (off, _)) in self.w.sources() {
            let Some((topic, p)) = id.rsplit_once('/') else {
                continue;
            };
            let Ok(p) = p.parse::<u32>() else { continue };
            let next = if at_end { off + 1 } else { *off };
            let k = (topic.to_string(), p);
            if self.committed.get(&k).is_some_and(|c| *c >= next) {
                continue;
            }
            self.committed.insert(k, next);
            by_topic
                .entry(topic.to_string())
                .or_default()
                .insert(p, next);
        }
        for (topic, offs) in by_topic {
            groups.commit(g, &topic, &offs)?;
        }
        Ok(())
    }
}

/// Writes one record line: `{"key":K,"ts":T,"value":V}` (ts left out when unknown), or V.
fn record_line(out: &mut Vec<u8>, key: &[u8], ts: i64, value: &[u8], value_only: bool) {
    if value_only {
        out.extend_from_slice(value);
        out.push(b'\n');
        return;
    }
    out.extend_from_slice(b"{\"key\":");
    write_str(out, &String::from_utf8_lossy(key));
    if ts != NO_TS {
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
    }
    out.extend_from_slice(b",\"value\":");
    out.extend_from_slice(value);
    out.extend_from_slice(b"}\n");
}

fn stdout_write(buf: &[u8]) -> Result<()> {
    let mut out = Output::stdout();
    out.buf.extend_from_slice(buf);
    out.flush()
}

fn get(log: &LogArgs, table: &str, keys: &[String], value_only: bool) -> Result<()> {
    let t = TableRef::parse(table)?;
    let mut v = View::open_ref(&tables(log), &t)?;
    let mut live = Vec::new();
    let mut missing = Vec::new();
    for k in keys {
        match v.lookup(k.as_bytes())? {
            Some(o) => live.push((k.as_bytes().to_vec(), o)),
            None => missing.push(k.as_str()),
        }
    }
    let vals = v.values(&live)?;
    let mut out = Vec::new();
    // Printed in the order asked, as grep prints matches in input order.
    for ((key, _), (ts, val)) in live.iter().zip(&vals) {
        record_line(&mut out, key, *ts, val, value_only);
    }
    stdout_write(&out)?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("{m:?}")).collect();
        return Err(data(format!("{t}: no key {}", list.join(", "))));
    }
    Ok(())
}

fn scan_cmd(
    log: &LogArgs,
    table: &str,
    prefix: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u64>,
    value_only: bool,
) -> Result<()> {
    let t = TableRef::parse(table)?;
    let mut v = View::open_ref(&tables(log), &t)?;
    let p = prefix.unwrap_or_default();
    let start = match &from {
        Some(f) if f.as_bytes() > p.as_bytes() => f.clone(),
        _ => p.clone(),
    };
    let limit = limit.unwrap_or(u64::MAX);
    let live = v.range(
        start.as_bytes(),
        |k| k.starts_with(p.as_bytes()) && to.as_ref().is_none_or(|t| k < t.as_bytes()),
        limit,
    )?;
    print_records(&v, &live, value_only)
}

fn print_records(v: &View, live: &[(Vec<u8>, u64)], value_only: bool) -> Result<()> {
    stream_rows(v, live, |out, k, ts, val| {
        record_line(out, k, ts, val, value_only)
    })
}

/// Writes a line per live key through the tools' stdout writer, reading values in slices so
/// a large table streams instead of collecting every value first.
fn stream_rows(
    v: &View,
    live: &[(Vec<u8>, u64)],
    mut line: impl FnMut(&mut Vec<u8>, &[u8], i64, &[u8]),
) -> Result<()> {
    let mut out = Output::stdout();
    for chunk in live.chunks(64 << 10) {
        let vals = v.values(chunk)?;
        for ((k, _), (ts, val)) in chunk.iter().zip(&vals) {
            line(&mut out.buf, k, *ts, val);
            out.record_done()?;
        }
    }
    out.flush()
}

/// Appends one export row: the key column, then the value's members (a member named like
/// the key column is left out: the table key wins); a value that is not an object is one
/// column named `value`.
fn ndjson_row(out: &mut Vec<u8>, key: &[u8], value: &[u8], key_column: &[u8], sc: &mut Scan) {
    out.push(b'{');
    write_str(out, &String::from_utf8_lossy(key_column));
    out.push(b':');
    write_str(out, &String::from_utf8_lossy(key));
    if scan::scan_object(value, sc) {
        for m in &sc.members {
            if scan::key_is(value, m, key_column) {
                continue;
            }
            out.push(b',');
            out.extend_from_slice(m.whole(value));
        }
    } else {
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(value);
    }
    out.extend_from_slice(b"}\n");
}

fn export(
    log: &LogArgs,
    table: &str,
    csv: bool,
    sqlite_file: Option<PathBuf>,
    sql_table: Option<String>,
    columns: Option<Vec<String>>,
    key_column: &str,
) -> Result<()> {
    let t = TableRef::parse(table)?;
    let mut v = View::open_ref(&tables(log), &t)?;
    let live = v.all()?;
    if let Some(file) = sqlite_file {
        let vals = v.values(&live)?;
        let keys: Vec<String> = live
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        let rows: Vec<Row<'_>> = keys
            .iter()
            .zip(&vals)
            .map(|(k, (_, val))| Row { key: k, value: val })
            .collect();
        let name = sql_table.unwrap_or_else(|| t.name.clone());
        sqlite::export(&file, &name, key_column, &rows)?;
        return Ok(());
    }
    let mut sc = Scan::default();
    if !csv {
        let kc = key_column.as_bytes();
        return stream_rows(&v, &live, |out, k, _, val| {
            ndjson_row(out, k, val, kc, &mut sc)
        });
    }
    let vals = v.values(&live)?;
    let cols: Vec<String> = match columns {
        // `--columns ''` names no field; an empty name is no column.
        Some(c) => c.into_iter().filter(|c| !c.is_empty()).collect(),
        None => {
            // Names are compared as their raw bytes; a new one is decoded once.
            let mut seen: rustc_hash::FxHashSet<Vec<u8>> = Default::default();
            let mut cols = Vec::new();
            for (_, val) in &vals {
                if scan::scan_object(val, &mut sc) {
                    for m in &sc.members {
                        let raw = &val[m.key.0 - 1..m.key.1 + 1];
                        if !seen.contains(raw) {
                            seen.insert(raw.to_vec());
                            let name = member_name(val, m);
                            if name != key_column && !cols.contains(&name) {
                                cols.push(name);
                            }
                        }
                    }
                } else if seen.insert(b"value".to_vec()) && !cols.iter().any(|c| c == "value") {
                    cols.push("value".into());
                }
            }
            cols
        }
    };
    let mut wtr = csv::WriterBuilder::new().from_writer(std::io::stdout().lock());
    let csv_err = |e: csv::Error| match e.into_kind() {
        csv::ErrorKind::Io(e) => Error::io("writing output", e),
        k => data(format!("writing CSV: {k:?}")),
    };
    let mut header = vec![key_column.to_string()];
    header.extend(cols.iter().cloned());
    wtr.write_record(&header).map_err(csv_err)?;
    let index: rustc_hash::FxHashMap<Vec<u8>, usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_bytes().to_vec(), i))
        .collect();
    // Cell buffers reused across rows; most cells are copied straight from the value's text.
    let mut cells: Vec<Vec<u8>> = vec![Vec::new(); cols.len() + 1];
    for ((k, _), (_, val)) in live.iter().zip(&vals) {
        cells.iter_mut().for_each(Vec::clear);
        cells[0].extend_from_slice(k);
        if scan::scan_object(val, &mut sc) {
            for m in &sc.members {
                let at = if m.key_escaped {
                    index.get(member_name(val, m).as_bytes())
                } else {
                    index.get(&val[m.key.0..m.key.1])
                };
                if let Some(&i) = at {
                    let cell = &mut cells[i + 1];
                    cell.clear();
                    cell_into(cell, m.value(val), m.kind);
                }
            }
        } else if let Some(&i) = index.get(&b"value"[..]) {
            let kind = if val.first() == Some(&b'"') {
                Kind::Str
            } else {
                Kind::Num
            };
            cell_into(&mut cells[i + 1], val, kind);
        }
        wtr.write_record(&cells).map_err(csv_err)?;
    }
    wtr.flush().map_err(|e| Error::io("writing output", e))
}

fn member_name(text: &[u8], m: &scan::Member) -> String {
    let raw = &text[m.key.0..m.key.1];
    if m.key_escaped {
        let quoted = &text[m.key.0 - 1..m.key.1 + 1];
        serde_json::from_slice::<String>(quoted)
            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned())
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

/// A CSV cell: a string's contents, a number's or boolean's literal, empty for null,
/// compact JSON text for objects and arrays.
fn cell_into(out: &mut Vec<u8>, raw: &[u8], kind: Kind) {
    match kind {
        Kind::Null => {}
        Kind::Str if !raw.contains(&b'\\') => out.extend_from_slice(&raw[1..raw.len() - 1]),
        Kind::Str => out.extend_from_slice(
            serde_json::from_slice::<String>(raw)
                .unwrap_or_default()
                .as_bytes(),
        ),
        Kind::Obj | Kind::Arr => match serde_json::from_slice::<serde_json::Value>(raw) {
            Ok(v) => out.extend_from_slice(v.to_string().as_bytes()),
            Err(_) => out.extend_from_slice(raw),
        },
        _ => out.extend_from_slice(raw),
    }
}

#[derive(serde::Serialize)]
struct Stats {
    table: String,
    version: u32,
    live: bool,
    keys: u64,
    records: u64,
    garbage_ratio: f64,
    changelog_bytes: u64,
    index_bytes: u64,
    index: String,
    uncommitted_records: u64,
    sources: Vec<SourceStat>,
}

#[derive(serde::Serialize)]
struct SourceStat {
    topic: String,
    partition: u32,
    offset: u64,
    sub: u64,
}

fn stats(log: &LogArgs, table: &str) -> Result<()> {
    let t = TableRef::parse(table)?;
    let tables = tables(log);
    let m = tables.existing(&t.name)?;
    let mut v = View::open_ref(&tables, &t)?;
    let (version, _) = tables.resolve(&t)?;
    // Stats reads every frame, so damage anywhere in the changelog is found here.
    v.check_all()?;
    let live = v.all()?;
    // And every live key's record is checked to be its upsert.
    v.values(&live)?;
    let records = v.commit().map_or(0, |c| c.records);
    let index_bytes = std::fs::metadata(v.dir.join(crate::store::keyindex::FILE_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    let s = Stats {
        table: t.name.clone(),
        version,
        live: m.live == Some(version),
        keys: live.len() as u64,
        records,
        garbage_ratio: garbage_ratio(live.len() as u64, records),
        changelog_bytes: v.segs.bytes(),
        index_bytes,
        index: match &v.index_note {
            None if v.tail_records == 0 => "current".into(),
            None => format!("current but for {} records after it", v.tail_records),
            Some(n) => n.clone(),
        },
        uncommitted_records: v.uncommitted,
        sources: v
            .commit()
            .map(|c| {
                c.sources
                    .iter()
                    .filter_map(|(id, (o, s))| {
                        let (topic, p) = id.rsplit_once('/')?;
                        Some(SourceStat {
                            topic: topic.into(),
                            partition: p.parse().ok()?,
                            offset: *o,
                            sub: *s,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut out = serde_json::to_vec_pretty(&s).map_err(|e| data(e.to_string()))?;
    out.push(b'\n');
    stdout_write(&out)
}

fn list(log: &LogArgs) -> Result<()> {
    let tables = tables(log);
    let mut out = String::new();
    for name in tables.list()? {
        let m = tables.manifest(&name)?.unwrap_or_default();
        let live = m.live.map_or("-".to_string(), |v| format!("v{v}"));
        out.push_str(&format!(
            "{name}\tlive {live}\tversions {}\n",
            table::version_list(&m)
        ));
    }
    stdout_write(out.as_bytes())
}

/// DESIGN's rule: OTHER is a file when it contains `/` or ends in .csv or .ndjson.
fn is_file_arg(s: &str) -> bool {
    s.contains('/') || s.ends_with(".csv") || s.ends_with(".ndjson")
}

fn table_rows(tables: &Tables, t: &TableRef) -> Result<Vec<diff::Keyed>> {
    let mut v = View::open_ref(tables, t)?;
    let live = v.all()?;
    let vals = v.values(&live)?;
    let keys: Vec<String> = live
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    let rows: Vec<Row<'_>> = keys
        .iter()
        .zip(&vals)
        .map(|(k, (_, val))| Row { key: k, value: val })
        .collect();
    diff::from_table(&rows)
}

fn diff_cmd(
    log: &LogArgs,
    table: &str,
    other: &str,
    key: Vec<String>,
    tolerance: f64,
    quiet: bool,
) -> Result<()> {
    if !tolerance.is_finite() || tolerance < 0.0 {
        return Err(usage("--tolerance must be a number >= 0"));
    }
    let tables = tables(log);
    let t = TableRef::parse(table)?;
    let left = table_rows(&tables, &t)?;
    let right = if is_file_arg(other) {
        diff::read_expected(std::path::Path::new(other), &key)?
    } else {
        table_rows(&tables, &TableRef::parse(other)?)?
    };
    let opts = diff::Options {
        tolerance,
        key_fields: key,
    };
    let mut sink: Box<dyn Write> = if quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    };
    let s = diff::diff(&left, &right, &opts, (&t.to_string(), other), &mut sink)
        .and_then(|s| sink.flush().map(|_| s))
        .map_err(|e| Error::io("writing output", e))?;
    if s.differs() {
        return Err(data(format!(
            "{t} and {other} differ: {} only in {t}, {} only in {other}, {} changed, {} equal",
            s.only_left, s.only_right, s.changed, s.same
        )));
    }
    if !quiet {
        cli::note(
            false,
            "store",
            &format!("{t} and {other} are equal ({} keys)", s.same),
        );
    }
    Ok(())
}

fn compact(log: &LogArgs, table: &str) -> Result<()> {
    let t = TableRef::parse(table)?;
    let tables = tables(log);
    // Compacting never creates a table or a version.
    tables.resolve(&t)?;
    let policy = CompactPolicy {
        ratio: 1.0,
        min_bytes: u64::MAX,
    };
    let mut w = TableWriter::open(tables, &t, FsyncMode::Batch, policy)?;
    for n in std::mem::take(&mut w.notes) {
        cli::note(false, "store", &format!("{t}: {n}"));
    }
    w.compact()?;
    for n in w.close()? {
        cli::note(false, "store", &n);
    }
    Ok(())
}

fn promote(log: &LogArgs, table: &str) -> Result<()> {
    let t = TableRef::parse(table)?;
    let Some(v) = t.version else {
        return Err(usage(format!("promote takes NAME@vN, not {table:?}")));
    };
    let tables = tables(log);
    let lock = tables.lock_existing(&t.name)?;
    let mut m = tables.existing(&t.name)?;
    if !m.versions.contains_key(&v) {
        return Err(setup(format!(
            "no version {t} (versions: {})",
            table::version_list(&m)
        )));
    }
    let before = m.live.replace(v);
    tables.write_manifest(&t.name, &m, &lock)?;
    let was = before.map_or("nothing".to_string(), |b| format!("v{b}"));
    cli::note(
        false,
        "store",
        &format!("{} now reads v{v} (was {was})", t.name),
    );
    Ok(())
}

fn versions(log: &LogArgs, name: &str) -> Result<()> {
    let t = TableRef::parse(name)?;
    let tables = tables(log);
    let m = tables.existing(&t.name)?;
    let mut out = String::new();
    for (v, vm) in &m.versions {
        let live = if m.live == Some(*v) { "\tlive" } else { "" };
        out.push_str(&format!(
            "v{v}\tcreated {}{live}\n",
            time::format_rfc3339(vm.created_ms)
        ));
    }
    stdout_write(out.as_bytes())
}

fn drop_cmd(log: &LogArgs, table: &str) -> Result<()> {
    let t = TableRef::parse(table)?;
    let tables = tables(log);
    let lock = tables.lock_existing(&t.name)?;
    let mut m = tables.existing(&t.name)?;
    let dirs: Vec<PathBuf> = match t.version {
        Some(v) => {
            let Some(vm) = m.versions.get(&v) else {
                return Err(setup(format!(
                    "no version {t} (versions: {})",
                    table::version_list(&m)
                )));
            };
            if m.live == Some(v) {
                return Err(setup(format!(
                    "{t} is the live version of {}: promote another first, or drop the whole table with `store drop {}`",
                    t.name, t.name
                )));
            }
            vec![tables.gen_dir(&t.name, v, vm.gen)]
        }
        None => m
            .versions
            .iter()
            .map(|(v, vm)| tables.gen_dir(&t.name, *v, vm.gen))
            .collect(),
    };
    for d in &dirs {
        if !crate::log::writer::try_lock_partition(d)? {
            return Err(setup(format!(
                "{} is being written by a store; stop it first",
                d.display()
            )));
        }
    }
    match t.version {
        Some(v) => {
            m.versions.remove(&v);
            tables.write_manifest(&t.name, &m, &lock)?;
            for d in &dirs {
                table::discard(d)?;
            }
        }
        None => {
            // One rename under the lock: the table is there whole, or not at all; a writer
            // waiting for the lock then fails instead of writing into a table being deleted.
            let dir = tables.table_dir(&t.name);
            let parent = dir.parent().unwrap_or(std::path::Path::new("."));
            let gone = table::trash(parent, &t.name)?;
            std::fs::rename(&dir, &gone)
                .map_err(Error::io_with(|| format!("removing {}", dir.display())))?;
            drop(lock);
            table::remove_tree(&gone)?;
        }
    }
    cli::note(false, "store", &format!("dropped {t}"));
    Ok(())
}
