//! `replay`: a range of a topic's history (or a recorded dump file) to stdout, in partition
//! or timestamp order, as fast as possible or paced like the live feed. It is how history is
//! reprocessed through a new transform, and how a recorded sensor dump is played back.

use crate::cli::onerror::{BadRecords, OnError};
use crate::cli::output::Output;
use crate::cli::{progress, LogArgs};
use crate::cmd::consume::{parse_start, Start};
use crate::error::{setup, usage, Error, Result};
use crate::log::format::Record;
use crate::log::groups::Groups;
use crate::log::{Log, PartitionReader};
use crate::record::envelope;
use crate::record::ingest::{Format, Ingest, Item};
use crate::record::json::write_str;
use crate::record::lines::{LineReader, Next};
use crate::server::client::ServerArgs;
use clap::{CommandFactory, Parser};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[cfg(feature = "kafka")]
#[path = "replay_kafka.rs"]
mod broker;
#[path = "replay_remote.rs"]
mod remote;

const ABOUT: &str = "Replay a range of a topic's history, or a recorded dump, to stdout";

const LONG_ABOUT: &str = "\
Write a range of a topic's records to stdout as envelopes (the same as consume writes), for
reprocessing history through a new transform or playing a recorded dump back.

Range, per partition (--partition P, repeatable; default every partition): --from earliest
(the default), OFFSET or @TIME (the first record whose timestamp is at or after TIME),
inclusive; --to latest (the default: the end of the log when replay starts, so a replay is
bounded), OFFSET or @TIME, exclusive. TIME is RFC 3339, epoch s/ms/µs/ns, now, today,
yesterday or -DURATION (-1h). --group G --from-committed starts each partition at G's
committed offset (what the group has not seen yet is then the range; --to still applies).

Order: --order time (the default) merges the partitions by timestamp, ties broken by
partition then offset: a total order that is the same on every run, and the one event-time
windows want (a live feed arrives roughly in time order, so `replay | window` needs no more
--max-out-of-order than the live pipeline). --order partition writes partition 0's range in
offset order, then partition 1's, and so on, like consume; without pacing, the next
partitions are read on other threads while one is written.

Pace: --speed max (the default) writes as fast as the reader takes; --speed 10x (or 1x, 0.5x)
keeps the recorded gaps between timestamps, divided by the factor, so a dump plays back like
the live feed; --rate N/s writes at most N records a second. Output is flushed before every
wait, so a paced replay is live downstream.

A recorded dump instead of a log: --file PATH (repeatable; a directory means every file in
it, in name order) reads NDJSON objects (or CSV with a header row, --csv) and writes them in
timestamp order by --ts FIELD (ties in file then line order), with the same pacing, without
producing them into a log first. Lines are written as read; CSV rows become JSON objects (as
produce --csv reads them). A bad line (not a JSON object, no readable --ts, not UTF-8, over
--max-record-bytes, a ragged CSV row) follows --on-error: fail (the default) names the file
and line and exits 1 before writing anything (the dump is sorted whole first); skip leaves it
out; dead-letter FILE writes it to FILE as the other tools do.

From a server: --server URL (with --token-file) replays a topic that `logd serve` holds, with
the same range, order, pacing and output; a stream the server ends early (a restart) is
resumed where it stopped. From Kafka: --broker kafka://HOST:PORT replays a Kafka topic the
same way; --to latest is where each partition's reader catches up, and --group G
--from-committed starts at the Kafka consumer group's committed offsets.";

const AFTER: &str = "\
Exit status: 0 success (also when stdout is closed early, as by head); 1 damage found in the
log or a bad line in a --file dump (--on-error fail); 2 bad flags, no such topic, an
unreadable file.

Examples:
  replay -t telemetry --from @2026-11-01T00:00:00Z --to @2026-11-02T00:00:00Z | transform -f etl.v2.jq
  replay -t telemetry --from @yesterday --to @today | window --tumbling 1h --by vehicle_id | store --table hourly@v2
  replay -t telemetry --order partition --partition 3 --from 1000 --to 2000
  replay --file dump.ndjson --ts ts --speed 60x | window --tumbling 1m --idle-timeout 5s
  replay --file recordings/ --csv --ts time --rate 500/s
  replay --server http://logs.local:7070 -t telemetry --from @-1h | transform -f etl.v2.jq";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// A k-way merge of the partitions by timestamp, ties by partition then offset
    Time,
    /// Each partition in offset order, partitions one after the other
    Partition,
}

#[derive(Parser, Debug)]
#[command(name = "replay", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER)]
pub struct Args {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub broker: crate::kafka::BrokerArgs,
    /// Topic to replay
    #[arg(
        short = 't',
        long,
        value_name = "TOPIC",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub topic: Option<String>,
    /// Replay only these partitions
    #[arg(long, value_name = "P")]
    pub partition: Vec<u32>,
    /// earliest, OFFSET or @TIME (inclusive)
    #[arg(long, value_name = "WHERE")]
    pub from: Option<String>,
    /// latest, OFFSET or @TIME (exclusive)
    #[arg(long, value_name = "WHERE")]
    pub to: Option<String>,
    /// Consumer group whose committed offsets --from-committed starts at
    #[arg(short = 'g', long, value_name = "GROUP", requires = "from_committed")]
    pub group: Option<String>,
    /// Start each partition at the group's committed offset
    #[arg(long, requires = "group", conflicts_with = "from")]
    pub from_committed: bool,
    /// time or partition
    #[arg(long, value_enum, default_value = "time", value_name = "ORDER")]
    pub order: Order,
    /// max, or a factor such as 1x, 10x, 0.5x
    #[arg(long, default_value = "max", value_name = "SPEED")]
    pub speed: String,
    /// At most N records a second (N/s)
    #[arg(long, value_name = "N/s")]
    pub rate: Option<String>,
    /// Replay a recorded NDJSON (or --csv) file or directory instead of a topic
    #[arg(long, value_name = "PATH")]
    pub file: Vec<PathBuf>,
    /// Timestamp field of --file records (name or /pointer)
    #[arg(long, value_name = "FIELD", requires = "file")]
    pub ts: Option<String>,
    /// --file is CSV with a header row
    #[arg(long, requires = "file")]
    pub csv: bool,
    /// A bad line in a --file dump: fail, skip, or dead-letter FILE
    #[arg(long, num_args = 1..=2, value_names = ["MODE", "FILE"], default_value = "fail", requires = "file")]
    pub on_error: Vec<String>,
    /// Longest --file line accepted (bytes; KiB, MiB suffixes); a longer one is a bad line
    #[arg(long, default_value = "1MiB", value_name = "SIZE", requires = "file")]
    pub max_record_bytes: String,
    /// Print only each record's value
    #[arg(long, conflicts_with = "file")]
    pub value: bool,
    /// No messages on stderr
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: progress::ProgressArgs,
}

pub fn command() -> clap::Command {
    Args::command()
}

/// Waits so that records leave at the pace asked for.
struct Pacer {
    speed: Option<f64>,
    rate: Option<f64>,
    start: Instant,
    ts0: Option<i64>,
    n: u64,
}

impl Pacer {
    fn new(speed: &str, rate: Option<&str>) -> Result<Pacer> {
        let speed = match speed {
            "max" => None,
            s => {
                let f: f64 = s
                    .strip_suffix('x')
                    .and_then(|n| n.parse().ok())
                    .filter(|f: &f64| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| {
                        usage(format!("--speed {s:?}: use max or a factor such as 10x"))
                    })?;
                Some(f)
            }
        };
        let rate = match rate {
            None => None,
            Some(r) => Some(
                r.strip_suffix("/s")
                    .unwrap_or(r)
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| usage(format!("--rate {r:?}: use N/s, such as 500/s")))?,
            ),
        };
        Ok(Pacer {
            speed,
            rate,
            start: Instant::now(),
            ts0: None,
            n: 0,
        })
    }

    fn paced(&self) -> bool {
        self.speed.is_some() || self.rate.is_some()
    }

    /// Waits until the record with timestamp `ts` is due, flushing `out` first.
    fn wait(&mut self, ts: i64, out: &mut Output) -> Result<()> {
        if !self.paced() {
            return Ok(());
        }
        let mut due = Duration::ZERO;
        if let Some(f) = self.speed {
            let ts0 = *self.ts0.get_or_insert(ts);
            // A timestamp before the first one is due at once.
            let gap = (ts - ts0).max(0) as f64 / 1000.0 / f;
            due = due.max(Duration::from_secs_f64(gap));
        }
        if let Some(r) = self.rate {
            due = due.max(Duration::from_secs_f64(self.n as f64 / r));
        }
        self.n += 1;
        let now = self.start.elapsed();
        if due > now {
            out.flush()?;
            std::thread::sleep(due - now);
        }
        Ok(())
    }
}

/// One partition's range, read a frame at a time.
struct Cursor {
    p: u32,
    reader: PartitionReader,
    end: u64,
    /// Rendered lines of the current frame: (ts, offset, span in `lines`).
    queue: VecDeque<(i64, u64, usize, usize)>,
    lines: Vec<u8>,
    done: bool,
}

impl Cursor {
    /// Makes sure the queue holds the next record, unless the range is over.
    fn fill(&mut self, topic_json: &[u8], value_only: bool) -> Result<()> {
        while self.queue.is_empty() && !self.done {
            self.lines.clear();
            let Some(f) = self.reader.next_frame()? else {
                self.done = true;
                break;
            };
            for rec in f.records() {
                if rec.offset >= self.end {
                    self.done = true;
                    break;
                }
                let at = self.lines.len();
                render_record(&mut self.lines, topic_json, self.p, &rec, value_only);
                self.queue
                    .push_back((rec.timestamp, rec.offset, at, self.lines.len()));
            }
        }
        Ok(())
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut pacer = Pacer::new(&a.speed, a.rate.as_deref())?;
    let mut out = Output::stdout();
    // The total is known once the ranges are: the bar shows an ETA.
    let mut pb = indicatif::ProgressBar::hidden();
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    let cluster = crate::kafka::Cluster::from_args(&a.broker)?;
    let r = match &a.topic {
        #[cfg(feature = "kafka")]
        Some(t) if cluster.is_some() => {
            // Some: checked by the guard.
            let c = cluster.expect("a cluster");
            broker::run(&a, t, c, &mut pacer, &mut out)
        }
        Some(t) if a.server.server.is_some() => remote::run(&a, t, &mut pacer, &mut out),
        Some(t) => replay_log(&a, t, &mut pacer, &mut out, &mut pb),
        None if a.server.server.is_some() || a.broker.broker.is_some() => Err(usage(
            "--server and --broker replay a topic (-t), not a --file dump",
        )),
        None => replay_files(&a, &mut pacer, &mut out, &mut pb),
    };
    pb.finish_and_clear();
    // What was rendered before an error is good: it goes out, then the error.
    let flushed = out.flush();
    r.and(flushed)
}

fn replay_log(
    a: &Args,
    topic: &str,
    pacer: &mut Pacer,
    out: &mut Output,
    pb: &mut indicatif::ProgressBar,
) -> Result<()> {
    let log = Log::new(a.log.dir());
    let cfg = log.topic_config(topic)?;
    for p in &a.partition {
        if *p >= cfg.partitions {
            return Err(usage(format!(
                "--partition {p}: topic {topic:?} has partitions 0 to {}",
                cfg.partitions - 1
            )));
        }
    }
    let (from, to) = range(a)?;
    let committed = match (&a.group, a.from_committed) {
        (Some(g), true) => {
            crate::log::names::validate("group", g)?;
            Groups::new(&log).load(g)?.remove(topic).unwrap_or_default()
        }
        _ => Default::default(),
    };
    let mut topic_json = Vec::new();
    write_str(&mut topic_json, topic);
    let mut cursors = Vec::new();
    for p in 0..cfg.partitions {
        if !a.partition.is_empty() && !a.partition.contains(&p) {
            continue;
        }
        let dir = log.partition_dir(topic, p)?;
        if !dir.is_dir() {
            return Err(setup(format!(
                "{}: partition directory missing",
                dir.display()
            )));
        }
        let mut reader = PartitionReader::open(&dir)?;
        // The end first: "latest" is the end when the replay starts.
        let end = match &to {
            Start::Offset(o) => *o,
            Start::Time(t) => {
                let mut r2 = PartitionReader::open(&dir)?;
                r2.seek_time(*t)?;
                r2.position()
            }
            _ => reader.end_offset()?,
        };
        if a.from_committed {
            reader.seek(committed.get(&p).copied().unwrap_or(0))?;
        } else {
            match &from {
                Start::Offset(o) => reader.seek(*o)?,
                Start::Time(t) => reader.seek_time(*t)?,
                _ => reader.seek(0)?,
            }
        }
        cursors.push(Cursor {
            p,
            reader,
            end,
            queue: VecDeque::new(),
            lines: Vec::new(),
            done: false,
        });
    }
    // Offsets in the ranges: the records to come, but for gaps left by retention.
    let total: u64 = cursors
        .iter()
        .map(|c| c.end.saturating_sub(c.reader.position()))
        .sum();
    *pb = progress::records_bar(a.progress.wanted(), total, "replay");
    let pb = &*pb;
    let mut n = 0u64;
    let mut emit = |c: &mut Cursor, out: &mut Output, pacer: &mut Pacer| -> Result<()> {
        // Present: callers only emit from a filled, non-empty queue.
        let (ts, _, s, e) = c.queue.pop_front().expect("a queued record");
        pacer.wait(ts, out)?;
        out.buf.extend_from_slice(&c.lines[s..e]);
        out.record_done()?;
        n += 1;
        if n % 65536 == 0 {
            pb.set_position(n);
        }
        Ok(())
    };
    match a.order {
        Order::Partition if !pacer.paced() => {
            // Nothing to merge or wait for: the partitions are read and rendered on several
            // threads at once, and written one after the other.
            let cursors = std::mem::take(&mut cursors);
            write_in_parallel(cursors, &topic_json, a.value, out, pb)?;
        }
        _ => merge(
            &mut cursors,
            a.order == Order::Time,
            out,
            pacer,
            |c, _| {
                c.fill(&topic_json, a.value)?;
                Ok(c.queue.front().map(|&(ts, off, ..)| (ts, c.p, off)))
            },
            &mut emit,
        )?,
    }
    Ok(())
}

/// --from and --to, checked alike for a log, a server and a cluster.
fn range(a: &Args) -> Result<(Start, Start)> {
    let from = a
        .from
        .as_deref()
        .map(parse_start)
        .transpose()?
        .unwrap_or(Start::Earliest);
    if matches!(from, Start::Latest | Start::Last(_)) {
        return Err(usage("--from takes earliest, OFFSET or @TIME"));
    }
    let to =
        a.to.as_deref()
            .map(parse_start)
            .transpose()?
            .unwrap_or(Start::Latest);
    if matches!(to, Start::Earliest | Start::Last(_)) {
        return Err(usage("--to takes latest, OFFSET or @TIME"));
    }
    Ok((from, to))
}

/// Writes the records of `sources` (local partitions, server streams, Kafka partitions) in
/// partition order, one source after the other, or in time order, a k-way merge on
/// (timestamp, partition, offset). `head` readies a source's next record and says where it
/// sorts (None: the source is done); `emit` writes that record.
fn merge<S>(
    sources: &mut [S],
    time_order: bool,
    out: &mut Output,
    pacer: &mut Pacer,
    mut head: impl FnMut(&mut S, &mut Output) -> Result<Option<(i64, u32, u64)>>,
    mut emit: impl FnMut(&mut S, &mut Output, &mut Pacer) -> Result<()>,
) -> Result<()> {
    if !time_order {
        for s in sources.iter_mut() {
            while head(s, out)?.is_some() {
                emit(s, out, pacer)?;
            }
        }
        return Ok(());
    }
    let mut heap = BinaryHeap::new();
    for (i, s) in sources.iter_mut().enumerate() {
        if let Some((ts, p, off)) = head(s, out)? {
            heap.push(Reverse((ts, p, off, i)));
        }
    }
    while let Some(Reverse((_, _, _, i))) = heap.pop() {
        let s = &mut sources[i];
        emit(s, out, pacer)?;
        if let Some((ts, p, off)) = head(s, out)? {
            heap.push(Reverse((ts, p, off, i)));
        }
    }
    Ok(())
}

/// One output line: the record's envelope (consume's bytes), or only its value.
fn render_record(out: &mut Vec<u8>, topic_json: &[u8], p: u32, rec: &Record<'_>, value_only: bool) {
    if value_only {
        out.extend_from_slice(rec.value);
    } else {
        envelope::write(out, topic_json, p, rec);
    }
    out.push(b'\n');
}

/// Renders one partition's range in chunks of about 1 MiB, with their record counts.
fn render(
    mut c: Cursor,
    topic_json: &[u8],
    value_only: bool,
    tx: &std::sync::mpsc::SyncSender<Result<(Vec<u8>, u64)>>,
) {
    let mut chunk = Vec::with_capacity(CHUNK + (64 << 10));
    let mut n = 0u64;
    loop {
        let f = match c.reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut over = false;
        for rec in f.records() {
            if rec.offset >= c.end {
                over = true;
                break;
            }
            render_record(&mut chunk, topic_json, c.p, &rec, value_only);
            n += 1;
        }
        if chunk.len() >= CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK + (64 << 10)));
            // The writer has gone (a closed stdout, an error): stop quietly.
            if tx.send(Ok((full, n))).is_err() {
                return;
            }
            n = 0;
        }
        if over {
            break;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok((chunk, n)));
    }
}

const CHUNK: usize = 1 << 20;

/// Partition order without pacing: up to one reader thread per CPU renders the next
/// partitions ahead (bounded by a few chunks each) while this thread writes them in order.
/// Scoped threads started in partition order, not rayon's pool: a reader blocks on its
/// bounded channel until its partition's turn, and a pool that ran later partitions first
/// with every worker blocked would never reach the one being written.
fn write_in_parallel(
    cursors: Vec<Cursor>,
    topic_json: &[u8],
    value_only: bool,
    out: &mut Output,
    pb: &indicatif::ProgressBar,
) -> Result<()> {
    let ahead = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut n = 0u64;
    std::thread::scope(|s| -> Result<()> {
        let mut pending = std::collections::VecDeque::new();
        let mut rest = cursors.into_iter();
        let start = |pending: &mut std::collections::VecDeque<_>, c: Cursor| {
            let (tx, rx) = std::sync::mpsc::sync_channel(4);
            s.spawn(move || render(c, topic_json, value_only, &tx));
            pending.push_back(rx);
        };
        for c in rest.by_ref().take(ahead) {
            start(&mut pending, c);
        }
        while let Some(rx) = pending.pop_front() {
            for msg in rx {
                let (chunk, count) = msg?;
                out.write_through(&chunk)?;
                n += count;
                pb.set_position(n);
            }
            if let Some(c) = rest.next() {
                start(&mut pending, c);
            }
        }
        Ok(())
    })
}

/// The files a --file argument names: itself, or a directory's files in name order.
fn dump_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| setup(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn replay_files(
    a: &Args,
    pacer: &mut Pacer,
    out: &mut Output,
    pb: &mut indicatif::ProgressBar,
) -> Result<()> {
    let Some(ts_field) = a.ts.as_deref() else {
        return Err(usage("--file needs --ts FIELD (the records' timestamps)"));
    };
    let max = crate::cli::input::parse_max_record_bytes(&a.max_record_bytes)?;
    let mut bad = BadRecords::new("replay", OnError::parse(&a.on_error)?)?;
    // The lines are judged as `produce` judges them (same formats, timestamps, limits).
    let format = if a.csv { Format::Csv } else { Format::Ndjson };
    let mut ingest = Ingest::new(
        format,
        None,
        Some(ts_field),
        None,
        max,
        "--max-record-bytes",
    )
    .map_err(usage)?;
    // Every record as one line in `text`, with its timestamp; sorted stably, so ties keep
    // file and line order.
    let mut text: Vec<u8> = Vec::new();
    let mut recs: Vec<(i64, usize, usize)> = Vec::new();
    for f in dump_files(&a.file)? {
        let where_ = format!("{}: ", f.display());
        let file = std::fs::File::open(&f).map_err(|e| setup(format!("{}: {e}", f.display())))?;
        let mut lines = LineReader::new(file, max, None);
        ingest.new_source();
        loop {
            let line = lines
                .next_line()
                .map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
            let item = match line {
                Next::Line(l) => ingest.line(l.no, l.bytes, l.oversize),
                Next::Idle => continue,
                Next::Eof => match ingest.finish() {
                    Some(item) => item,
                    None => break,
                },
            };
            match item {
                Item::Record(p) => {
                    // A ts field was asked for: a record without one is Bad, not here.
                    let Some(ts) = p.ts else { continue };
                    let at = text.len();
                    text.extend_from_slice(&p.value);
                    text.push(b'\n');
                    recs.push((ts, at, text.len()));
                }
                Item::Bad(no, msg, bytes) => bad.handle(&where_, no, &msg, &bytes, None)?,
                Item::Nothing => {}
            }
        }
    }
    bad.flush(true)?;
    if bad.count > 0 {
        crate::cli::note(
            a.quiet,
            "replay",
            &format!("{} bad lines left out", bad.count),
        );
    }
    recs.sort_by_key(|r| r.0);
    *pb = progress::records_bar(a.progress.wanted(), recs.len() as u64, "replay");
    for (i, &(ts, s, e)) in recs.iter().enumerate() {
        pacer.wait(ts, out)?;
        out.buf.extend_from_slice(&text[s..e]);
        out.record_done()?;
        if i % 65536 == 0 {
            pb.set_position(i as u64);
        }
    }
    Ok(())
}
