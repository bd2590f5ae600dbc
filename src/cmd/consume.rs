//! `consume`: records of a topic to stdout, from an offset or a time, optionally following
//! the log like `tail -f` and committing a consumer group's progress.
//!
//! Order: partition 0's records in offset order, then partition 1's, and so on (a static
//! log is read as the concatenation of its partitions). With --follow the backlog is read
//! that way, then new records are written as they arrive, partition by partition.

use crate::cli::output::Output;
use crate::cli::{self, progress, signals, LogArgs};
use crate::error::{setup, usage, Error, Result};
use crate::log::format::Record;
use crate::log::groups::Groups;
use crate::log::{Log, PartitionReader};
use crate::record::json::write_str;
use crate::record::template::Template;
use crate::record::{envelope, time};
use crate::server::client::ServerArgs;
use clap::{CommandFactory, Parser};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[cfg(feature = "kafka")]
#[path = "consume_kafka.rs"]
mod broker;
#[path = "consume_remote.rs"]
mod remote;

const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between looks at the log in --follow mode (inotify usually wakes us first).
const FOLLOW_TICK_MS: i32 = 100;

const ABOUT: &str = "Write the records of a topic to stdout";

const LONG_ABOUT: &str = "\
Write the records of a topic to stdout, as envelopes (the default), values, CSV or a template.

Where to start (--from): earliest (the default), latest, an OFFSET, -N (the last N records of
each partition), or @TIME (the first record whose timestamp is at or after TIME, found with the
time index; TIME is RFC 3339, epoch s/ms/µs/ns, now, today, yesterday or -DURATION such as
-1h). Where to stop (--to, exclusive): an OFFSET or @TIME, per partition; --max N stops after N
records in all.

Order: partition 0's records in offset order, then partition 1's, and so on; --partition P
reads one. With --follow, after the backlog new records are written as they arrive (inotify,
with a 100 ms fallback), flushed as soon as consume is caught up; SIGINT or SIGTERM end it
cleanly with status 0.

Groups: with --group G, each partition starts at the group's committed offset (or --from where
it has none), and consume commits what it has written and flushed to stdout, every second and
at exit: at-least-once delivery. After a kill, a resumed consumer may repeat records written
since the last commit, but never skips one, and never commits records it did not write (a
closed pipe commits only what was flushed before). --no-commit reads from the group's offsets
but leaves committing to the sink (`store --commit-group G`).

Output: envelopes {\"topic\",\"partition\",\"offset\",\"ts\",\"key\",\"value\"|\"value_str\"|\"value_base64\",
\"headers\"} (value bytes verbatim when they are JSON); --value prints only each value's bytes
and a newline; --csv prints a header row and one row per record, with --columns naming value
fields (default: the first record's fields) and @topic, @partition, @offset, @ts, @time (RFC
3339) and @key for the envelope's; --format TEMPLATE is kcat-like: %t topic, %p partition, %o
offset, %T timestamp (ms), %k key, %s value, %K key length, %S value length, %h headers, %%
percent, escapes \\n \\t \\r \\0 \\\\ (nothing is added at the end).

From Kafka: --broker kafka://HOST:PORT[,HOST:PORT] reads a Kafka topic with the same flags
and output (partitions one after the other up to where the reader catches up, as a log is
read; then, with --follow, as records arrive). --group G is then a member of a Kafka consumer
group (Kafka's own protocol: N copies of a pipeline on N machines share the partitions); each
partition starts at the group's committed offset or, without one, at --from earliest or
latest; what reached stdout is committed every second, before partitions move, and at exit.

A closed stdout (`consume | head`) ends consume at once with status 0 and no message.";

const AFTER: &str = "\
Exit status: 0 success (also on a closed pipe or SIGINT/SIGTERM in --follow); 1 damage found
in the log (the error names file, position and offset; records before it were written);
2 bad flags, no such topic, an unusable log directory.

Examples:
  consume -t telemetry --from @-1h --value | jq .speed
  consume -t telemetry --group dash --follow | transform -f etl.jq
  consume -t telemetry --format '%p/%o %k %s\\n' --max 10
  consume -t meters --csv --columns meter,kwh,@time
  consume --broker kafka://k1:9092 -t telemetry --group etl --follow | transform -f etl.jq";

#[derive(Parser, Debug)]
#[command(name = "consume", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER)]
pub struct Args {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub broker: crate::kafka::BrokerArgs,
    /// With --server --group: the member is dropped after this long without a heartbeat
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        requires = "server"
    )]
    pub session_timeout: String,
    /// Topic to read
    #[arg(short = 't', long, value_name = "TOPIC")]
    pub topic: String,
    /// earliest, latest, OFFSET, -N or @TIME
    #[arg(long, value_name = "WHERE", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Stop before OFFSET or @TIME (exclusive, per partition)
    #[arg(long, value_name = "WHERE")]
    pub to: Option<String>,
    /// Stop after N records
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Read only this partition
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// Keep waiting for new records
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Start from and commit to this consumer group
    #[arg(short = 'g', long, value_name = "GROUP")]
    pub group: Option<String>,
    /// With --group: read from the group's offsets but commit nothing
    #[arg(long, requires = "group")]
    pub no_commit: bool,
    /// Print only values, one per line
    #[arg(long, group = "out")]
    pub value: bool,
    /// Print CSV
    #[arg(long, group = "out")]
    pub csv: bool,
    /// CSV columns: value fields, or @topic @partition @offset @ts @time @key
    #[arg(long, value_name = "COLS", requires = "csv")]
    pub columns: Option<String>,
    /// kcat-like template (%t %p %o %T %k %s %K %S %h %%)
    #[arg(long, value_name = "TEMPLATE", group = "out")]
    pub format: Option<String>,
    /// No messages on stderr
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: progress::ProgressArgs,
}

pub fn command() -> clap::Command {
    Args::command()
}

pub(crate) enum Start {
    Earliest,
    Latest,
    Offset(u64),
    Last(u64),
    Time(i64),
}

pub(crate) fn parse_start(s: &str) -> Result<Start> {
    match s {
        "earliest" | "beginning" => return Ok(Start::Earliest),
        "latest" | "end" => return Ok(Start::Latest),
        _ => {}
    }
    if let Some(t) = s.strip_prefix('@') {
        return time::parse_time_arg(t).map(Start::Time).map_err(usage);
    }
    if let Some(n) = s.strip_prefix('-') {
        return n
            .parse()
            .map(Start::Last)
            .map_err(|_| usage(format!("bad --from {s:?}")));
    }
    s.parse().map(Start::Offset).map_err(|_| {
        usage(format!(
            "bad position {s:?}: use earliest, latest, OFFSET, -N or @TIME"
        ))
    })
}

fn out_kind(a: &Args) -> Result<Out> {
    Ok(if a.value {
        Out::Value
    } else if a.csv {
        Out::Csv(a.columns.as_deref().map(parse_columns), false)
    } else if let Some(f) = &a.format {
        Out::Template(Template::parse(f).map_err(usage)?)
    } else {
        let mut t = Vec::new();
        write_str(&mut t, &a.topic);
        Out::Envelope(t)
    })
}

/// Opens a partition at `committed` (a group's offset) or else at `start`, and resolves
/// where it ends (`to`, exclusive) now.
pub(crate) fn open_range(
    dir: &std::path::Path,
    committed: Option<u64>,
    start: &Start,
    to: Option<&Start>,
) -> Result<(PartitionReader, Option<u64>)> {
    let mut reader = PartitionReader::open(dir)?;
    match (committed, start) {
        (Some(o), _) => reader.seek(o)?,
        (None, Start::Earliest) => reader.seek(0)?,
        (None, Start::Latest) => {
            let e = reader.end_offset()?;
            reader.seek(e)?
        }
        (None, Start::Offset(o)) => reader.seek(*o)?,
        (None, Start::Last(n)) => {
            let e = reader.end_offset()?;
            reader.seek(e.saturating_sub(*n))?
        }
        (None, Start::Time(t)) => reader.seek_time(*t)?,
    }
    let end = match to {
        None => None,
        Some(Start::Offset(o)) => Some(*o),
        Some(Start::Latest) => Some(reader.end_offset()?),
        Some(Start::Time(t)) => {
            let mut r2 = PartitionReader::open(dir)?;
            r2.seek_time(*t)?;
            Some(r2.position())
        }
        Some(_) => None,
    };
    Ok((reader, end))
}

enum Out {
    Envelope(Vec<u8>),
    Value,
    Csv(Option<Vec<Column>>, bool),
    Template(Template),
}

#[derive(Clone)]
enum Column {
    Field(String),
    Topic,
    Partition,
    Offset,
    Ts,
    Time,
    Key,
}

fn parse_columns(s: &str) -> Vec<Column> {
    s.split(',')
        .map(|c| match c.trim() {
            "@topic" => Column::Topic,
            "@partition" => Column::Partition,
            "@offset" => Column::Offset,
            "@ts" => Column::Ts,
            "@time" => Column::Time,
            "@key" => Column::Key,
            f => Column::Field(f.to_string()),
        })
        .collect()
}

struct Part {
    p: u32,
    reader: PartitionReader,
    end: Option<u64>,
    done: bool,
    /// Next offset after the last record put in the output buffer.
    written: Option<u64>,
    /// Where reading started.
    start: u64,
}

pub fn run(a: Args) -> Result<()> {
    if a.server.server.is_some() {
        return remote::run(a);
    }
    #[cfg(feature = "kafka")]
    if let Some(cluster) = crate::kafka::Cluster::from_args(&a.broker)? {
        return broker::run(a, cluster);
    }
    crate::kafka::Cluster::from_args(&a.broker)?;
    let log = Log::new(a.log.dir());
    let cfg = log.topic_config(&a.topic)?;
    if let Some(p) = a.partition {
        if p >= cfg.partitions {
            return Err(usage(format!(
                "--partition {p}: topic {:?} has partitions 0 to {}",
                a.topic,
                cfg.partitions - 1
            )));
        }
    }
    let start = a
        .from
        .as_deref()
        .map(parse_start)
        .transpose()?
        .unwrap_or(Start::Earliest);
    let end = a.to.as_deref().map(parse_start).transpose()?;
    if matches!(end, Some(Start::Earliest | Start::Last(_))) {
        return Err(usage("--to takes latest, OFFSET or @TIME"));
    }
    let groups = Groups::new(&log);
    let committed = match &a.group {
        Some(g) => groups.load(g)?.remove(&a.topic).unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let mut out_kind = out_kind(&a)?;
    let mut parts = Vec::new();
    for p in 0..cfg.partitions {
        if a.partition.is_some_and(|x| x != p) {
            continue;
        }
        let dir = log.partition_dir(&a.topic, p)?;
        if !dir.is_dir() {
            return Err(setup(format!(
                "{}: partition directory missing",
                dir.display()
            )));
        }
        let (reader, end) = open_range(&dir, committed.get(&p).copied(), &start, end.as_ref())?;
        parts.push(Part {
            p,
            start: reader.position(),
            reader,
            end,
            done: false,
            written: None,
        });
    }
    if a.follow {
        signals::install_stop_handler();
    }
    let watcher = if a.follow {
        watch(&log, &a.topic, &parts)
    } else {
        None
    };
    let mut out = Output::stdout();
    let show = a.progress.wanted();
    let pb = progress::records_spinner(show, "consume");
    let mut c = Consumer {
        topic: a.topic.clone(),
        group: if a.no_commit { None } else { a.group.clone() },
        groups,
        flushed: BTreeMap::new(),
        committed: committed.clone(),
        last_commit: Instant::now(),
        count: 0,
    };
    let r = c.pump(
        &mut parts,
        &mut out,
        &mut out_kind,
        &a,
        watcher.as_ref(),
        &pb,
    );
    pb.finish_and_clear();
    // Whatever ended the run, the records already rendered are good: write them, then
    // commit only what reached stdout.
    if !matches!(r, Err(Error::BrokenPipe)) {
        match out.flush() {
            Ok(()) => c.mark_flushed(&parts),
            Err(e) => {
                let _ = c.commit();
                return Err(e);
            }
        }
    }
    c.commit()?;
    for part in &parts {
        if part.reader.skipped_by_retention > 0 {
            cli::note(
                a.quiet,
                "consume",
                &format!(
                    "partition {}: {} records were removed by retention before they were read",
                    part.p, part.reader.skipped_by_retention
                ),
            );
        }
    }
    r
}

struct Consumer {
    topic: String,
    group: Option<String>,
    groups: Groups,
    flushed: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
    last_commit: Instant,
    count: u64,
}

impl Consumer {
    fn mark_flushed(&mut self, parts: &[Part]) {
        for p in parts {
            if let Some(w) = p.written {
                self.flushed.insert(p.p, w);
            }
        }
    }

    fn commit(&mut self) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let changed: BTreeMap<u32, u64> = self
            .flushed
            .iter()
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(p, o)| (*p, *o))
            .collect();
        self.last_commit = Instant::now();
        if changed.is_empty() {
            return Ok(());
        }
        self.groups.commit(g, &self.topic, &changed)?;
        self.committed.extend(changed);
        Ok(())
    }

    fn flush(&mut self, out: &mut Output, parts: &[Part]) -> Result<()> {
        out.flush()?;
        self.mark_flushed(parts);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn pump(
        &mut self,
        parts: &mut [Part],
        out: &mut Output,
        kind: &mut Out,
        a: &Args,
        watcher: Option<&Inotify>,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        let max = a.max.unwrap_or(u64::MAX);
        loop {
            let mut progressed = false;
            for i in 0..parts.len() {
                if parts[i].done {
                    continue;
                }
                loop {
                    if self.count >= max {
                        return Ok(());
                    }
                    let part = &mut parts[i];
                    let Some(frame) = part.reader.next_frame()? else {
                        // Caught up: offsets that compaction left without records, up to the
                        // end of the frames read, count as read, so a group's lag can reach
                        // 0. Never beyond them: a start past the log end is not a position.
                        let pos = part.reader.read_to();
                        let pos = part.end.map_or(pos, |e| pos.min(e));
                        let read = part
                            .written
                            .or_else(|| self.committed.get(&part.p).copied())
                            .unwrap_or(part.start);
                        if pos > read {
                            part.written = Some(pos);
                        }
                        if !a.follow {
                            part.done = true;
                        }
                        break;
                    };
                    progressed = true;
                    let mut stop = false;
                    let mut flushed = false;
                    for rec in frame.records() {
                        if part.end.is_some_and(|e| rec.offset >= e) || self.count >= max {
                            stop = part.end.is_some_and(|e| rec.offset >= e);
                            break;
                        }
                        render(kind, out, &self.topic, part.p, &rec)?;
                        part.written = Some(rec.offset + 1);
                        self.count += 1;
                        flushed |= out.record_done()?;
                    }
                    if stop {
                        part.done = true;
                    }
                    if flushed {
                        // Everything before the last record of this frame reached stdout.
                        self.flush(out, parts)?;
                    }
                    if self.count % 65536 < 64 {
                        pb.set_position(self.count);
                    }
                    if self.last_commit.elapsed() >= COMMIT_EVERY {
                        self.flush(out, parts)?;
                        self.commit()?;
                    }
                    if parts[i].done {
                        break;
                    }
                }
            }
            if parts.iter().all(|p| p.done) {
                return Ok(());
            }
            if self.last_commit.elapsed() >= COMMIT_EVERY {
                self.flush(out, parts)?;
                self.commit()?;
            }
            if !progressed {
                self.flush(out, parts)?;
                if signals::stop_requested() {
                    return Ok(());
                }
                wait(watcher);
                if signals::stop_requested() {
                    return Ok(());
                }
            }
        }
    }
}

fn render(kind: &mut Out, out: &mut Output, topic: &str, p: u32, rec: &Record<'_>) -> Result<()> {
    match kind {
        Out::Envelope(t) => {
            envelope::write(&mut out.buf, t, p, rec);
            out.buf.push(b'\n');
        }
        Out::Value => {
            out.buf.extend_from_slice(rec.value);
            out.buf.push(b'\n');
        }
        Out::Template(t) => t.render(&mut out.buf, topic, p, rec),
        Out::Csv(cols, header_done) => {
            let value: Option<serde_json::Map<String, serde_json::Value>> = if rec.value_is_json {
                serde_json::from_slice(rec.value).ok()
            } else {
                None
            };
            if cols.is_none() {
                let c = value
                    .as_ref()
                    .map(|m| m.keys().map(|k| Column::Field(k.clone())).collect())
                    .unwrap_or_default();
                *cols = Some(c);
            }
            let cols = cols.as_ref().expect("set above");
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            if !*header_done {
                let names: Vec<String> = cols
                    .iter()
                    .map(|c| match c {
                        Column::Field(f) => f.clone(),
                        Column::Topic => "topic".into(),
                        Column::Partition => "partition".into(),
                        Column::Offset => "offset".into(),
                        Column::Ts => "ts".into(),
                        Column::Time => "time".into(),
                        Column::Key => "key".into(),
                    })
                    .collect();
                w.write_record(&names)
                    .map_err(|e| Error::Data(e.to_string()))?;
                *header_done = true;
            }
            let cells: Vec<String> = cols
                .iter()
                .map(|c| match c {
                    Column::Field(f) => match value.as_ref().and_then(|m| m.get(f)) {
                        None | Some(serde_json::Value::Null) => String::new(),
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                    },
                    Column::Topic => topic.to_string(),
                    Column::Partition => p.to_string(),
                    Column::Offset => rec.offset.to_string(),
                    Column::Ts => rec.timestamp.to_string(),
                    Column::Time => time::format_rfc3339(rec.timestamp),
                    Column::Key => rec
                        .key
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                })
                .collect();
            w.write_record(&cells)
                .map_err(|e| Error::Data(e.to_string()))?;
            let bytes = w.into_inner().map_err(|e| Error::Data(e.to_string()))?;
            out.buf.extend_from_slice(&bytes);
        }
    }
    Ok(())
}

/// Watches the partition directories: any write, new or removed segment wakes the follower.
fn watch(log: &Log, topic: &str, parts: &[Part]) -> Option<Inotify> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let flags = AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE;
    for p in parts {
        let dir = log.partition_dir(topic, p.p).ok()?;
        ino.add_watch(&dir, flags).ok()?;
    }
    Some(ino)
}

fn wait(watcher: Option<&Inotify>) {
    match watcher {
        Some(ino) => {
            use std::os::fd::{AsFd, AsRawFd};
            if crate::record::lines::ready(ino.as_fd().as_raw_fd(), FOLLOW_TICK_MS) {
                while let Ok(ev) = ino.read_events() {
                    if ev.is_empty() {
                        break;
                    }
                }
            }
        }
        None => std::thread::sleep(Duration::from_millis(10)),
    }
}
