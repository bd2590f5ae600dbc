//! `window`: event-time windowed aggregation with watermarks, stdin (or files) to stdout.
//!
//! Lines are read into batches. A batch is parsed on rayon's workers (a run of lines each),
//! then admitted one record at a time on this thread (arrival number, the watermark each
//! record sees, positions for --state), then aggregated by the shards in parallel, then the
//! windows the watermark has passed are closed and their results written in one order. A
//! stalled input ends the batch and flushes stdout, so live pipelines stay live.

use crate::cli::onerror::{provenance_of, BadRecords, OnError, Provenance};
use crate::cli::output::Output;
use crate::cli::{self, input, progress, signals};
use crate::error::{setup, usage, Error, Result};
use crate::log::meta;
use crate::record::lines::{LineReader, Next};
use crate::record::time::{self, format_rfc3339, now_ms};
use crate::window::agg;
use crate::window::engine::{self, Engine, Snapshot};
use crate::window::extract::{Chunk, Extractor, Status};
use crate::window::{Emit, Kind, Path};
use clap::{CommandFactory, Parser};
use rayon::prelude::*;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BATCH_LINES: usize = 8192;
const BATCH_BYTES: usize = 4 << 20;
/// Below this many lines a batch is parsed on one thread.
const PARALLEL_MIN: usize = 512;
/// How often a live run looks at the clock for --idle-timeout and --processing-time (ms).
const TICK_MS: u64 = 50;
/// A live run with --state rewrites the file at most this often (on idle input).
const STATE_EVERY_MS: u128 = 1000;
const STATE_KIND: &str = "kappa.window-state";

const ABOUT: &str = "Aggregate records over event-time windows (tumbling, hopping, session)";

const LONG_ABOUT: &str = "\
Read records from stdin (or FILEs), put each in its event-time window(s) and group, and write
one result per window and group when the window closes. Windows:

  --tumbling SIZE             back-to-back windows [start, start + SIZE)
  --hopping SIZE --every STEP windows of SIZE starting every STEP (a record is in
                              SIZE/STEP of them, at most 100000)
  --session GAP               per group: records less than GAP apart share a session
                              [first ts, last ts + GAP); a record exactly GAP after the
                              last starts a new one

Sizes: 500ms, 10s, 5m, 1h, 1d, 1w. Fixed windows are aligned to the Unix epoch in UTC (a 1h
window starts on the hour), shifted by --offset (e.g. --tumbling 1d --offset -1h for days in
UTC+1).

Event time: the envelope's ts (what consume writes), or --ts FIELD in the record (RFC 3339 or
epoch s/ms/µs/ns, as produce reads it). Lines are envelopes when they have topic, partition,
offset and a value (the value is the record), else plain objects (--input forces one).
--by FIELD,... groups records (names, .a.b paths or /json/pointers); without it there is
one group.

Aggregates (--agg, comma-separated, each optionally `as NAME`):
  count()            records in the window
  count(.f)          records where .f is present and not null
  sum(.f) avg(.f) min(.f) max(.f)
  stddev(.f)         sample standard deviation (null below 2 values)
  p50(.f) p95(.f) p99(.f), pNN(.f) for NN in 1..99, median(.f)
  first(.f) last(.f) the value in the record with the earliest / latest event time (ties:
                     arrival order)
  count_distinct(.f) distinct JSON values (1 and 1.0 are one value)
Default names: count, sum_f, avg_f, p95_f ... (a path's names joined by _: avg_pos_lat).
Numeric aggregates skip nulls, missing fields, non-numbers and numbers beyond a double's
range such as 1e400 (--with-skipped adds a `skipped` count of such records per window); the
others skip nulls and missing fields. A sum of integers is an exact integer; avg and stddev
are doubles.

Percentiles are exact (no approximation, no error bound to state): nearest rank, the value
at rank ceil(p/100 * n) of the window's sorted values, the same as SQL's quantile_disc (DuckDB)
and PERCENTILE_DISC. They keep each window's values (8 bytes per value) until it closes.

Watermark and lateness: the watermark is the highest event time seen minus
--max-out-of-order (default 0). A window closes when the watermark reaches its end plus
--allowed-lateness (default 0). A record is late when every window it belongs to has closed;
late records are dropped, or written to a file with --late dead-letter FILE, and always
counted in the summary. At end of input every open window is closed, so a bounded replay
gives final results; with --state FILE they are kept in FILE instead, with the watermark and
the input positions (topic, partition, offset) they cover, and the next run with the same
--state continues them, skipping records it has already counted.

Results (--emit final, the default): one envelope per window and group, when it closes:
  {\"ts\":WINDOW_END_MS-1,\"key\":\"GROUP\",\"value\":{\"window_start\":RFC3339,\"window_end\":RFC3339,
   \"window_start_ms\":MS,\"window_end_ms\":MS,<group fields>,<aggregates>}}
The ts is the window's last millisecond (the end is exclusive), so a result falls in its own
window when windowed again (results have no topic, partition or offset: a second window reads
them with --input envelope). The key is the group's values joined by | (strings as they are,
null as nothing); null without --by. Results closed together are written by window end, then
start, then group: the output depends only on the input, never on how it was batched, on
--jobs or on timing. --emit update writes a result each time a record changes a window's
result (a changelog: the last result per window is the final one), in input order. A session
that starts earlier than a result written for it, or that absorbs another session, first
writes a retraction of each result that no longer stands: the same ts, key, window and group
fields, with \"retracted\":true and no aggregates, so a table keyed by group and window
start stays right:
  window --session 30m --by driver --emit update | store --table trips --key driver,window_start_ms --delete-when .retracted

Live input: results are flushed as soon as they are written. --idle-timeout DUR moves the
watermark on by wall-clock time when no record has arrived for DUR, so a dashboard's last
windows close without waiting for the next record; --processing-time uses the arrival time
as event time. Both depend on timing, so their output is not deterministic.

Bad lines (invalid JSON, not an object, no usable timestamp, over --max-record-bytes) follow
--on-error fail|skip|dead-letter FILE; fail writes the results closed so far and stops with
exit 1 naming the line.";

const AFTER: &str = "\
Exit status: 0 success (also when stdout is closed early, as by head); 1 a bad line in fail
mode, or an I/O error; 2 bad flags, or a --state file that is damaged or was written with
other options.

Examples:
  window --tumbling 1m --by vehicle_id --agg 'count(), avg(.speed), max(.speed), p95(.speed)'
  window --hopping 10m --every 1m --by station --agg 'avg(.temp) as temp'
  window --session 30m --by driver --agg 'count() as trips, first(.odometer), last(.odometer)'
  window --tumbling 1h --ts ts --max-out-of-order 30s --late dead-letter late.ndjson
  window --tumbling 1m --by vehicle_id,driver --agg 'count_distinct(.status)' --emit update
  window --tumbling 1m --by vehicle_id --idle-timeout 5s --agg 'avg(.speed)'
  consume -t telemetry --group dash | window --tumbling 1m --by vehicle_id --state dash.state";

#[derive(Parser, Debug)]
#[command(name = "window", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER)]
pub struct Args {
    /// Input files (default: stdin; `-` is stdin)
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Tumbling windows of SIZE
    #[arg(long, value_name = "SIZE", conflicts_with_all = ["hopping", "session"])]
    pub tumbling: Option<String>,
    /// Hopping windows of SIZE (with --every)
    #[arg(
        long,
        value_name = "SIZE",
        requires = "every",
        conflicts_with = "session"
    )]
    pub hopping: Option<String>,
    /// The step between hopping windows
    #[arg(long, value_name = "STEP", requires = "hopping")]
    pub every: Option<String>,
    /// Session windows closing after GAP without records
    #[arg(long, value_name = "GAP")]
    pub session: Option<String>,
    /// Shift fixed windows from the epoch by DUR (may be negative)
    #[arg(long, value_name = "DUR", allow_hyphen_values = true)]
    pub offset: Option<String>,
    /// Event time from FIELD of the record (default: the envelope's ts)
    #[arg(long, value_name = "FIELD")]
    pub ts: Option<String>,
    /// Group by these fields (comma-separated)
    #[arg(long, value_name = "FIELD,...")]
    pub by: Option<String>,
    /// The aggregates, comma-separated
    #[arg(long, value_name = "LIST", default_value = "count()")]
    pub agg: String,
    /// Add each window's count of records skipped by numeric aggregates
    #[arg(long)]
    pub with_skipped: bool,
    /// How far behind the highest event time seen the watermark stays
    #[arg(long, value_name = "DUR", default_value = "0")]
    pub max_out_of_order: String,
    /// How long after the watermark passes its end a window stays open
    #[arg(long, value_name = "DUR", default_value = "0")]
    pub allowed_lateness: String,
    /// Late records: drop, or dead-letter FILE
    #[arg(long, num_args = 1..=2, value_names = ["MODE", "FILE"], default_value = "drop")]
    pub late: Vec<String>,
    /// When to write results: final or update
    #[arg(long, value_enum, default_value = "final", value_name = "WHEN")]
    pub emit: Emit,
    /// Move the watermark by wall-clock time after DUR without input
    #[arg(long, value_name = "DUR")]
    pub idle_timeout: Option<String>,
    /// Event time is the arrival time
    #[arg(long, conflicts_with = "ts")]
    pub processing_time: bool,
    /// Keep open windows in FILE at exit and continue them on the next run
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub rec: cli::input::RecordArgs,
    /// No summary on stderr
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: progress::ProgressArgs,
}

pub fn command() -> clap::Command {
    Args::command()
}

fn duration(flag: &str, s: &str) -> Result<i64> {
    time::parse_duration_ms(s).map_err(|e| usage(format!("{flag}: {e}")))
}

fn positive(flag: &str, s: &str) -> Result<i64> {
    let d = duration(flag, s)?;
    if d <= 0 {
        return Err(usage(format!("{flag} must be longer than 0")));
    }
    Ok(d)
}

/// From the reading thread: a batch (and whether the input then had nothing more ready), the
/// end, or a read error.
enum Msg {
    Batch(Batch, bool),
    Eof,
    Failed(std::io::Error),
}

/// The reading thread: splits lines into batches, ends a batch when it is full or the input
/// stalls, and reuses the batches handed back.
fn read_batches(
    reader: Box<dyn Read + Send>,
    fd: Option<i32>,
    max: usize,
    tx: mpsc::SyncSender<Msg>,
    back: mpsc::Receiver<Batch>,
) {
    let mut lr = LineReader::new(reader, max, fd);
    let fresh = || Batch {
        text: Vec::with_capacity(BATCH_BYTES + (64 << 10)),
        lines: Vec::with_capacity(BATCH_LINES),
    };
    let mut batch = fresh();
    loop {
        let msg = match lr.next_line() {
            Ok(Next::Line(line)) => {
                if !line.oversize && line.bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let s = batch.text.len();
                batch.text.extend_from_slice(line.bytes);
                batch
                    .lines
                    .push((s, batch.text.len(), line.no, line.oversize));
                if batch.lines.len() < BATCH_LINES && batch.text.len() < BATCH_BYTES {
                    continue;
                }
                Msg::Batch(
                    std::mem::replace(&mut batch, back.try_recv().unwrap_or_else(|_| fresh())),
                    false,
                )
            }
            Ok(Next::Idle) => {
                let full =
                    std::mem::replace(&mut batch, back.try_recv().unwrap_or_else(|_| fresh()));
                if tx.send(Msg::Batch(full, true)).is_err() {
                    return;
                }
                // Blocks until input is ready (a signal wakes it too).
                lr.wait(-1);
                continue;
            }
            Ok(Next::Eof) => {
                let last = std::mem::replace(&mut batch, fresh());
                if tx.send(Msg::Batch(last, false)).is_err() {
                    return;
                }
                let _ = tx.send(Msg::Eof);
                return;
            }
            Err(e) => {
                let _ = tx.send(Msg::Failed(e));
                return;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

struct Batch {
    text: Vec<u8>,
    /// Per line: span in `text`, line number, and whether it was cut (over the limit).
    lines: Vec<(usize, usize, u64, bool)>,
}

struct Run {
    engine: Engine,
    ex: Extractor,
    pool: Option<rayon::ThreadPool>,
    jobs: usize,
    out: Output,
    bad: BadRecords,
    late: Option<BadRecords>,
    late_count: u64,
    read: u64,
    max: usize,
    processing_time: bool,
    idle_timeout: Option<i64>,
    state: Option<PathBuf>,
    last_save: Instant,
    /// Records were taken in since --state was last written.
    dirty: bool,
    /// Wall-clock time of the last record (for --idle-timeout).
    last_arrival: i64,
}

/// A hopping window's SIZE/STEP: each record is aggregated into that many windows.
const MAX_WINDOWS_PER_RECORD: i64 = 100_000;

pub fn run(a: Args) -> Result<()> {
    let kind = match (&a.tumbling, &a.hopping, &a.session) {
        (Some(t), None, None) => {
            let size = positive("--tumbling", t)?;
            Kind::Fixed {
                size,
                step: size,
                offset: 0,
            }
        }
        (None, Some(h), None) => {
            let size = positive("--hopping", h)?;
            let step = positive("--every", a.every.as_deref().unwrap_or(""))?;
            if step > size {
                return Err(usage(
                    "--every must not be longer than --hopping (records would fall between windows)",
                ));
            }
            if size / step > MAX_WINDOWS_PER_RECORD {
                return Err(usage(format!(
                    "--hopping {h} --every {}: each record would be in {} windows; at most {MAX_WINDOWS_PER_RECORD}",
                    a.every.as_deref().unwrap_or(""),
                    size / step
                )));
            }
            Kind::Fixed {
                size,
                step,
                offset: 0,
            }
        }
        (None, None, Some(g)) => Kind::Session {
            gap: positive("--session", g)?,
        },
        _ => {
            return Err(usage(
                "give one of --tumbling SIZE, --hopping SIZE --every STEP, --session GAP",
            ))
        }
    };
    let kind = match (kind, &a.offset) {
        (Kind::Fixed { size, step, .. }, Some(o)) => {
            let (neg, d) = match o.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, o.as_str()),
            };
            let d = duration("--offset", d)?;
            Kind::Fixed {
                size,
                step,
                offset: (if neg { -d } else { d }).rem_euclid(step),
            }
        }
        (Kind::Session { .. }, Some(_)) => {
            return Err(usage(
                "--offset applies to --tumbling and --hopping windows",
            ))
        }
        (k, None) => k,
    };
    let max = a.rec.max_record_bytes()?;
    let jobs = a.rec.jobs()?;

    // The fields read from each record: groups, then the timestamp, then the aggregates'.
    let mut fields: Vec<Path> = Vec::new();
    let mut group = Vec::new();
    let mut group_names: Vec<String> = Vec::new();
    if let Some(by) = &a.by {
        for f in agg::split_top(by).map_err(|e| usage(format!("--by: {e}")))? {
            let p = Path::parse(f).map_err(|e| usage(format!("--by: {e}")))?;
            let name = p.last().to_string();
            if group_names.contains(&name) {
                return Err(usage(format!(
                    "--by: two group fields would both be named {name:?}"
                )));
            }
            group_names.push(name);
            fields.push(p);
            group.push(fields.len() - 1);
        }
    }
    let ts_field = match &a.ts {
        Some(t) => {
            fields.push(Path::parse(t).map_err(|e| usage(format!("--ts: {e}")))?);
            Some(fields.len() - 1)
        }
        None => None,
    };
    let aggs = agg::parse(&a.agg, &mut fields).map_err(usage)?;
    const RESERVED: [&str; 4] = [
        "window_start",
        "window_end",
        "window_start_ms",
        "window_end_ms",
    ];
    for n in aggs.list.iter().map(|a| &a.name).chain(&group_names) {
        if RESERVED.contains(&n.as_str()) || (a.with_skipped && n == "skipped") {
            return Err(usage(format!(
                "the result field name {n:?} is taken; use `as NAME`"
            )));
        }
        if aggs.list.iter().any(|a| &a.name == n) && group_names.contains(n) {
            return Err(usage(format!(
                "{n:?} names both a group field and an aggregate; use `as NAME`"
            )));
        }
    }
    let ooo = duration("--max-out-of-order", &a.max_out_of_order)?;
    let lateness = duration("--allowed-lateness", &a.allowed_lateness)?;
    let fingerprint = format!(
        "{}; by {}; ts {}; agg {}; out-of-order {ooo}; lateness {lateness}; emit {:?}",
        kind.describe(),
        a.by.as_deref().unwrap_or("-"),
        if a.processing_time {
            "arrival"
        } else {
            a.ts.as_deref().unwrap_or("envelope")
        },
        aggs.list
            .iter()
            .map(|x| format!(
                "{:?}({}) as {}",
                x.func,
                x.field.map_or("", |f| fields[f].text.as_str()),
                x.name
            ))
            .collect::<Vec<_>>()
            .join(", "),
        a.emit,
    );
    let spec = engine::Spec {
        kind,
        max_out_of_order: ooo,
        lateness,
        emit: a.emit,
        nfields: fields.len(),
        aggs,
        group_names,
        with_skipped: a.with_skipped,
        fingerprint,
    };
    let late = match a.late.as_slice() {
        [m] if m == "drop" => None,
        [m, f] if m == "dead-letter" => Some(BadRecords::new(
            "window",
            OnError::DeadLetter(PathBuf::from(f)),
        )?),
        v => {
            return Err(usage(format!(
                "--late takes drop or dead-letter FILE, not {:?}",
                v.join(" ")
            )))
        }
    };
    let idle_timeout = match &a.idle_timeout {
        Some(d) => Some(positive("--idle-timeout", d)?),
        None => None,
    };
    let mut engine = Engine::new(spec, jobs);
    if let Some(p) = &a.state {
        let snap: Option<Snapshot> =
            meta::read_checked(p, STATE_KIND).map_err(|e| setup(format!("--state {e}")))?;
        if let Some(s) = snap {
            engine
                .restore(s)
                .map_err(|e| setup(format!("--state {}: {e}", p.display())))?;
        }
        signals::install_stop_handler();
    }
    let pool = if jobs > 1 {
        Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(jobs)
                .build()
                .map_err(|e| setup(format!("starting {jobs} threads: {e}")))?,
        )
    } else {
        None
    };
    let mut r = Run {
        engine,
        ex: Extractor {
            fields,
            ts_field,
            group,
            input: a.rec.input,
            prov: a.state.is_some(),
            processing_time: a.processing_time,
            topic_finder: crate::window::extract::topic_finder(),
        },
        pool,
        jobs,
        out: Output::stdout(),
        bad: BadRecords::new("window", OnError::parse(&a.rec.on_error)?)?,
        late,
        late_count: 0,
        read: 0,
        max,
        processing_time: a.processing_time,
        idle_timeout,
        state: a.state.clone(),
        last_save: Instant::now(),
        dirty: false,
        last_arrival: now_ms(),
    };
    let files = if a.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        a.files.clone()
    };
    let pb = progress::records_spinner(a.progress.wanted(), "window");
    let started = Instant::now();
    let mut result = Ok(());
    for f in &files {
        result = r.source(f, &pb);
        if result.is_err() || signals::stop_requested() {
            break;
        }
    }
    pb.finish_and_clear();
    if result.is_ok() {
        result = r.finish();
    }
    // Whatever happened, what was written so far reaches stdout, and dead letters the disk.
    let flushed = r.out.flush();
    let dl = r.bad.flush(true);
    let ll = r.late.as_mut().map_or(Ok(()), |l| l.flush(true));
    result?;
    flushed?;
    dl?;
    ll?;
    if !a.quiet {
        r.summary(started.elapsed().as_secs_f64());
    }
    Ok(())
}

impl Run {
    /// Reads one input on a thread of its own (so splitting lines overlaps parsing them) and
    /// processes its batches in order.
    fn source(&mut self, path: &std::path::Path, pb: &indicatif::ProgressBar) -> Result<()> {
        let input::Input {
            reader,
            poll_fd: fd,
            label,
        } = input::open(path)?;
        let (tx, rx) = mpsc::sync_channel::<Msg>(2);
        let (back_tx, back_rx) = mpsc::channel::<Batch>();
        let max = self.max;
        std::thread::spawn(move || read_batches(reader, fd, max, tx, back_rx));
        // Live input is waited on in ticks when the clock moves the watermark or a signal
        // may ask for a stop.
        let timed = self.processing_time || self.idle_timeout.is_some() || self.state.is_some();
        loop {
            let msg = if timed {
                match rx.recv_timeout(Duration::from_millis(TICK_MS)) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if signals::stop_requested() {
                            return self.drain(&rx, &label, pb);
                        }
                        self.tick()?;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                }
            } else {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return Ok(()),
                }
            };
            match msg {
                Msg::Batch(mut batch, idle) => {
                    self.step(&mut batch, &label, pb)?;
                    let _ = back_tx.send(batch);
                    if idle {
                        self.out.flush()?;
                        self.bad.flush(false)?;
                        if let Some(l) = self.late.as_mut() {
                            l.flush(false)?;
                        }
                        self.save_state(false)?;
                    }
                }
                Msg::Eof => return Ok(()),
                Msg::Failed(e) => return Err(Error::io(format!("{label}reading input"), e)),
            }
            if signals::stop_requested() {
                return self.drain(&rx, &label, pb);
            }
        }
    }

    /// On a stop: takes in the batches already read, so they are counted (and covered by
    /// --state) rather than lost with the process.
    fn drain(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        label: &str,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        while let Ok(Msg::Batch(mut batch, _)) = rx.try_recv() {
            self.step(&mut batch, label, pb)?;
        }
        Ok(())
    }

    /// No input for a tick: writes --state when it is behind, and moves the watermark by the
    /// clock when asked to.
    fn tick(&mut self) -> Result<()> {
        if self.dirty {
            self.save_state(false)?;
        }
        let now = now_ms();
        let e = &mut self.engine;
        if self.processing_time {
            e.advance(now.saturating_sub(e.spec.max_out_of_order));
        } else if let Some(idle) = self.idle_timeout {
            let quiet = now - self.last_arrival;
            if quiet >= idle && e.max_ts != i64::MIN {
                e.advance(
                    e.max_ts
                        .saturating_sub(e.spec.max_out_of_order)
                        .saturating_add(quiet),
                );
            }
        } else {
            return Ok(());
        }
        let before = e.results;
        e.close(e.wm, self.pool.as_ref());
        e.write_results(|line| self.out.line(line))?;
        if e.results != before {
            self.out.flush()?;
            self.save_state(false)?;
        }
        Ok(())
    }

    /// Parses, admits, aggregates and closes one batch, then empties it.
    fn step(&mut self, batch: &mut Batch, label: &str, pb: &indicatif::ProgressBar) -> Result<()> {
        if batch.lines.is_empty() {
            return Ok(());
        }
        let n = batch.lines.len();
        self.read += n as u64;
        self.dirty = true;
        pb.inc(n as u64);
        let spans: Vec<(usize, usize, u32, bool)> = batch
            .lines
            .iter()
            .enumerate()
            .map(|(i, &(s, e, _, cut))| (s, e, i as u32, cut))
            .collect();
        let (ex, text, max) = (&self.ex, &batch.text, self.max);
        let mut chunks: Vec<Chunk> = match &self.pool {
            Some(pool) if n >= PARALLEL_MIN => {
                let size = n.div_ceil(self.jobs * 4);
                pool.install(|| {
                    spans
                        .par_chunks(size)
                        .map(|lines| ex.chunk(text, lines, max))
                        .collect()
                })
            }
            _ => vec![ex.chunk(text, &spans, max)],
        };
        // Admit records one at a time, in input order.
        let mut failure = None;
        let now = now_ms();
        let track = self.state.is_some();
        for ch in chunks.iter_mut() {
            for ri in 0..ch.recs.len() {
                if failure.is_some() {
                    ch.recs[ri].status = Status::Skip;
                    continue;
                }
                let mut rec = ch.recs[ri];
                match rec.status {
                    Status::Bad => {
                        let (s, e, no, _) = batch.lines[rec.line as usize];
                        let input = &batch.text[s..e];
                        let msg = ch.error_of(&rec).to_string();
                        let prov = provenance_of(input);
                        let p = prov.as_ref().map(|(t, p, o)| Provenance {
                            topic: t,
                            partition: *p,
                            offset: *o,
                        });
                        if let Err(err) = self.bad.handle(label, no, &msg, input, p) {
                            failure = Some(err);
                        }
                    }
                    Status::Ok => {
                        self.last_arrival = now;
                        if self.processing_time {
                            rec.ts = now;
                        }
                        let topic = rec.prov.map(|p| &batch.text[p.topic.0..p.topic.1]);
                        if !self.engine.admit(&mut rec, topic, track) {
                            rec.status = Status::Skip;
                        }
                        ch.recs[ri] = rec;
                    }
                    Status::Skip => {}
                }
            }
        }
        self.engine
            .aggregate(&chunks, &batch.text, self.pool.as_ref());
        for (ci, ri) in self.engine.take_late() {
            self.late_count += 1;
            if let Some(l) = self.late.as_mut() {
                let rec = &chunks[ci as usize].recs[ri as usize];
                let (s, e, no, _) = batch.lines[rec.line as usize];
                let input = &batch.text[s..e];
                let prov = provenance_of(input);
                let p = prov.as_ref().map(|(t, p, o)| Provenance {
                    topic: t,
                    partition: *p,
                    offset: *o,
                });
                let msg = format!(
                    "late: event time {} is behind the watermark {} by more than the allowed lateness",
                    format_rfc3339(rec.ts),
                    format_rfc3339(rec.wm)
                );
                l.handle(label, no, &msg, input, p)?;
            }
        }
        let e = &mut self.engine;
        e.close(e.wm, self.pool.as_ref());
        e.write_results(|line| self.out.line(line))?;
        self.out.record_done()?;
        batch.text.clear();
        batch.lines.clear();
        match failure {
            Some(err) => {
                self.out.flush()?;
                Err(err)
            }
            None => Ok(()),
        }
    }

    /// End of input: close every window, or keep the open ones in --state.
    fn finish(&mut self) -> Result<()> {
        if self.state.is_some() {
            self.out.flush()?;
            return self.save_state(true);
        }
        let e = &mut self.engine;
        e.close(i64::MAX, self.pool.as_ref());
        e.write_results(|line| self.out.line(line))?;
        Ok(())
    }

    /// Writes --state (after stdout is flushed, so the file never claims more than was
    /// written); when not `now`, at most once per STATE_EVERY_MS.
    fn save_state(&mut self, now: bool) -> Result<()> {
        let Some(p) = &self.state else {
            return Ok(());
        };
        if !now && self.last_save.elapsed().as_millis() < STATE_EVERY_MS {
            return Ok(());
        }
        self.out.flush()?;
        meta::write_checked(p, STATE_KIND, &self.engine.snapshot())
            .map_err(|e| Error::io(format!("writing --state {}", p.display()), e))?;
        self.last_save = Instant::now();
        self.dirty = false;
        Ok(())
    }

    fn summary(&self, secs: f64) {
        let e = &self.engine;
        let mut msg = format!("{} records in, {} results out", self.read, e.results);
        msg.push_str(&format!(", {} late", self.late_count));
        if let Some(OnError::DeadLetter(p)) = self.late.as_ref().map(|l| l.mode()) {
            msg.push_str(&format!(" (dead-lettered to {})", p.display()));
        }
        if self.bad.count > 0 {
            let what = match self.bad.mode() {
                OnError::DeadLetter(p) => format!("dead-lettered to {}", p.display()),
                _ => "skipped".into(),
            };
            msg.push_str(&format!(", {} bad {what}", self.bad.count));
        }
        if e.already > 0 {
            msg.push_str(&format!(", {} already counted (--state)", e.already));
        }
        if let Some(p) = &self.state {
            msg.push_str(&format!(
                ", {} windows kept open in {}",
                e.open_windows(),
                p.display()
            ));
        }
        msg.push_str(&format!(
            " in {:.2} s ({}records/s)",
            secs,
            cli::human_count(self.read as f64 / secs.max(1e-9))
        ));
        cli::note(false, "window", &msg);
    }
}
