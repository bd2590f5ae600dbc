//! `produce`: records from stdin or files appended to a topic.
//!
//! Each input line (or CSV row) becomes one record whose value bytes are stored exactly as
//! read: NDJSON lines are validated, never re-serialized. Records are batched into frames per
//! partition; frames are written when they fill or the input stalls (so a live
//! `produce | consume --follow` stays live), and fsynced per `--fsync`.

use crate::cli::onerror::{BadRecords, OnError};
use crate::cli::{self, progress, LogArgs};
use crate::error::{setup, usage, Error, Result};
use crate::log::format::{SourcePos, MAX_RECORD_BYTES};
use crate::log::partitioner::partition_for_key;
use crate::log::sources::{self, SourceCheckpoint};
use crate::log::{FsyncMode, Log, PartitionWriter, TopicConfig};
use crate::record::ingest::{Format, Ingest, Item, Prepared};
use crate::record::lines::{LineReader, Next, StdinFile};
use crate::record::{envelope, time};
use crate::server::client::{self, Client, Failure, ServerArgs};
use clap::{CommandFactory, Parser};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// With --source, records without a key move to the next partition after this many, counted
/// from the source's first record, so that a rerun places them as the first run did.
const SOURCE_KEYLESS_RUN: u64 = 1024;
/// With --source, the checkpoint beside topic.json is rewritten at most this often.
const SOURCE_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

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
appended and flushed to the stated level. With --server, the server's own --fsync decides, and
exit 0 means the server acknowledged every record at that level.

--server URL sends the records to `logd serve` instead of opening a log directory: the input is
read and checked here (same formats, errors, dead letters and line numbers), and sent in
batches that carry a producer id and sequence number, so a batch retried after a lost answer
or a server restart is appended once. An unreachable or restarting server is retried for
--server-retry (then exit 2).

--broker kafka://HOST:PORT[,HOST:PORT] sends the records to a Kafka cluster, checked here the
same way, through librdkafka's idempotent producer with acks=all (a retry never duplicates):
keys are placed with Kafka's murmur2 partitioner (the partition numbers of a local log with
the same count), --ts becomes the CreateTime, headers travel as Kafka headers. A missing topic
is created with --partitions. Exit 0 means every record was acknowledged by all in-sync
replicas; a record that was not is named by its input line (exit 1). A broker that does not
answer within --broker-timeout is exit 2.

--acks FILE appends, after each durable point (each fsync of a batch, each acknowledged batch
with --server or --broker, when the input stalls, and at exit), one line
{\"file\",\"lines\",\"bytes\",\"records\"}: the input lines and bytes of that file read and handled
(bad lines included, once skipped or dead-lettered), and the records appended in all, every
one durable at the --fsync level (with never: handed to the kernel). A wrapper that restarts
the input at that byte offset loses and repeats nothing. `-` writes them to stdout.

--source ID makes ingestion idempotent: rerunning the same command (same files in the same
order, same flags) after a crash or a kill appends no duplicate and skips nothing, and
rerunning it on a file that has grown since appends only what is new. Each frame of records
the source writes ends with a mark of the input position after its last record, under the
frame's CRC, so the log holds exactly the position of what it holds; a rerun reads the last
mark of each partition, resumes the input at the earliest of them (seeking in a regular
NDJSON, raw-line or envelope file; reading and skipping otherwise), and leaves out the
records a partition already has. Records without a key go to partitions in runs of 1024
counted from the source's first record, so a rerun places them alike. Only a local log (not
--server or --broker); lines that were bad may be dead-lettered again on a rerun.

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
  consume -t a | produce -t b --envelope
  sensor-feed | produce --broker kafka://k1:9092,k2:9092 -t telemetry --key vehicle_id --ts ts";

#[derive(Parser, Debug)]
#[command(name = "produce", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER)]
pub struct Args {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub broker: crate::kafka::BrokerArgs,
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
    /// After each durable batch, append how much input is now durable to FILE (`-`: stdout)
    #[arg(long, value_name = "FILE")]
    pub acks: Option<PathBuf>,
    /// Idempotent ingestion: remember the input position in the log under this id, and
    /// resume from it (same files, same flags)
    #[arg(long, value_name = "ID")]
    pub source: Option<String>,
    /// No summary on stderr
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: progress::ProgressArgs,
}

pub fn command() -> clap::Command {
    Args::command()
}

impl Args {
    fn format(&self) -> Format {
        if self.csv {
            Format::Csv
        } else if self.lines {
            Format::Lines
        } else if self.envelope {
            Format::Envelope
        } else {
            Format::Ndjson
        }
    }
}

struct Producer {
    topic: String,
    ingest: Ingest,
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
    pb: indicatif::ProgressBar,
    quiet: bool,
    /// --server or --broker: records go there instead of to local writers.
    remote: Option<Away>,
    /// The input line of the record being appended (for Kafka's delivery reports).
    line: u64,
    acks: Acks,
    source: Option<Source>,
}

/// `--source ID`: which of the source's records each partition already holds, and where the
/// input stands. See `log::sources`.
struct Source {
    id: String,
    topic_dir: PathBuf,
    /// Partition p holds every record of the source that ends at or before `done[p]`.
    done: Vec<SourcePos>,
    /// Where reading starts: the earliest of `done`.
    resume: SourcePos,
    /// The position after the last line handled.
    pos: SourcePos,
    /// Where the record being appended ends.
    at: SourcePos,
    /// Records left out because their partition already held them.
    skipped: u64,
    last_checkpoint: Instant,
}

impl Source {
    /// Finds where source `id` stands: the checkpoint is a floor, each partition's last
    /// mark after the checkpoint's offset says what it holds beyond.
    fn open(
        id: &str,
        topic_dir: PathBuf,
        writers: &mut [Option<PartitionWriter>],
        quiet: bool,
    ) -> Result<Source> {
        crate::log::names::validate("source", id)?;
        // Temp files of checkpoint rewrites a killed run left (we hold every writer lock).
        let leftover = format!(".{id}.json.");
        for e in std::fs::read_dir(sources::dir(&topic_dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&leftover) && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let cp = match sources::read(&topic_dir, id) {
            Ok(cp) => cp,
            Err(e) => {
                // Only a floor and a hint: without it every partition is scanned in full.
                cli::note(
                    quiet,
                    "produce",
                    &format!("{e}; scanning the topic for source {id:?}"),
                );
                None
            }
        };
        let floor = cp.as_ref().map(|c| c.pos).unwrap_or_default();
        let mut done = vec![floor; writers.len()];
        let mut marks = false;
        for (p, w) in writers.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            let from = cp
                .as_ref()
                .and_then(|c| c.next.get(p).copied())
                .unwrap_or(0);
            if from > w.next_offset() {
                return Err(Error::Data(format!(
                    "source {id:?}: partition {p} ends at offset {}, before the {from} its checkpoint {} recorded: records were lost",
                    w.next_offset(),
                    sources::path(&topic_dir, id).display()
                )));
            }
            if let Some(m) = sources::last_mark(w.dir(), from, id)? {
                marks = true;
                if !m.at_or_before(&floor) {
                    done[p] = m;
                }
            }
            w.set_source(id);
        }
        let resume = writers
            .iter()
            .zip(&done)
            .filter(|(w, _)| w.is_some())
            .map(|(_, d)| *d)
            .min_by_key(|d| (d.file, d.bytes))
            .unwrap_or(floor);
        if cp.is_none() && !marks {
            // A new source: record where the topic stood before its first record.
            let next = writers
                .iter()
                .map(|w| w.as_ref().map_or(0, |w| w.next_offset()))
                .collect();
            sources::write(&topic_dir, id, &SourceCheckpoint { pos: floor, next })?;
        }
        Ok(Source {
            id: id.to_string(),
            topic_dir,
            done,
            resume,
            pos: resume,
            at: resume,
            skipped: 0,
            last_checkpoint: Instant::now(),
        })
    }

    /// Whether every partition's holdings are behind the input position, so that a
    /// checkpoint at that position stays a floor for all of them.
    fn caught_up(&self) -> bool {
        self.done.iter().all(|d| d.at_or_before(&self.pos))
    }
}

/// `--acks FILE`: one NDJSON line per durable point, `{"file","lines","bytes","records"}`:
/// the input lines and bytes of `file` read and handled (appended, or skipped or
/// dead-lettered as bad), and the records appended in all, every one durable per --fsync
/// (acknowledged by the server or cluster with --server or --broker). A wrapper that resumes
/// the input at `bytes` of `file` loses and repeats nothing.
#[derive(Default)]
struct Acks {
    out: Option<Box<dyn std::io::Write>>,
    file: String,
    lines: u64,
    bytes: u64,
    /// Records appended up to that position.
    records: u64,
    /// What the last line said, so a durable point with nothing new writes nothing.
    last: Option<(String, u64, u64)>,
}

impl Acks {
    fn open(path: &std::path::Path) -> Result<Acks> {
        let out: Box<dyn std::io::Write> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| usage(format!("--acks {}: {e}", path.display())))?,
            )
        };
        Ok(Acks {
            out: Some(out),
            ..Acks::default()
        })
    }

    /// Says that everything handled so far is durable.
    fn durable(&mut self) -> Result<()> {
        let records = self.records;
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let now = (self.file.clone(), self.lines, records);
        if self.last.as_ref() == Some(&now) {
            return Ok(());
        }
        let mut line = b"{\"file\":".to_vec();
        crate::record::json::write_str(&mut line, &self.file);
        line.extend_from_slice(
            format!(
                ",\"lines\":{},\"bytes\":{},\"records\":{records}}}\n",
                self.lines, self.bytes
            )
            .as_bytes(),
        );
        out.write_all(&line)
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("--acks", e))?;
        self.last = Some(now);
        Ok(())
    }
}

/// Where records go when not to a local log: batched, and acknowledged over there.
enum Away {
    Server(Remote),
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::produce::Sink),
}

impl Away {
    /// Queues a record; true when a batch is full and should be sent now.
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    fn add(&mut self, p: &Prepared<'_>, line: u64) -> Result<bool> {
        match self {
            Away::Server(r) => Ok(r.add(p)),
            #[cfg(feature = "kafka")]
            Away::Kafka(k) => k.add(p, line).map(|_| false),
        }
    }

    /// Sends what is queued and waits for it to be acknowledged: (partition, count).
    fn send(&mut self) -> Result<Vec<(u32, u64)>> {
        match self {
            Away::Server(r) => r.send(),
            #[cfg(feature = "kafka")]
            Away::Kafka(k) => k.send(),
        }
    }
}

/// A batch is sent at this many records or bytes, or as soon as the input stalls.
const REMOTE_BATCH_RECORDS: u64 = 5000;
const REMOTE_BATCH_BYTES: usize = 1 << 20;

/// produce --server: records already parsed and checked here (so bad lines, dead letters
/// and line numbers are exactly those of a local produce) travel as envelopes, in batches
/// numbered for the server's idempotence: a batch retried after a lost answer or a server
/// restart is appended once.
struct Remote {
    client: Client,
    path: String,
    producer: String,
    seq: u64,
    body: Vec<u8>,
    pending: u64,
}

impl Remote {
    fn add(&mut self, p: &Prepared<'_>) -> bool {
        envelope::write_input(&mut self.body, p);
        self.body.push(b'\n');
        self.pending += 1;
        self.pending >= REMOTE_BATCH_RECORDS || self.body.len() >= REMOTE_BATCH_BYTES
    }

    /// Sends the batch; returns (partition, count) of what the server appended.
    fn send(&mut self) -> Result<Vec<(u32, u64)>> {
        if self.pending == 0 {
            return Ok(Vec::new());
        }
        self.seq += 1;
        let headers = [
            ("producer-id", self.producer.clone()),
            ("producer-seq", self.seq.to_string()),
            ("content-type", "application/x-ndjson".to_string()),
        ];
        let (c, path, body) = (&self.client, &self.path, &self.body);
        let v = c.retrying("sending records", || c.post(path, &headers, body))?;
        let mut got = Vec::new();
        let mut total = 0;
        for r in v["ranges"].as_array().into_iter().flatten() {
            let (p, n) = (r["partition"].as_u64(), r["count"].as_u64());
            if let (Some(p), Some(n)) = (p, n) {
                got.push((p as u32, n));
                total += n;
            }
        }
        if total != self.pending {
            return Err(Error::Data(format!(
                "the server appended {total} of a batch of {} records: {v}",
                self.pending
            )));
        }
        self.body.clear();
        self.pending = 0;
        Ok(got)
    }
}

pub fn run(a: Args) -> Result<()> {
    let format = a.format();
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
    let ingest = Ingest::new(
        format,
        a.key.as_deref(),
        a.ts.as_deref(),
        a.ts_format.as_deref(),
        max_record as usize,
        "--max-record-bytes",
    )
    .map_err(usage)?;
    let on_error = OnError::parse(&a.on_error)?;
    if a.source.is_some() && (a.server.server.is_some() || a.broker.broker.is_some()) {
        return Err(usage(
            "--source keeps its position in a local log: it does not go with --server or --broker",
        ));
    }
    if a.server.server.is_some() {
        return run_remote(&a, ingest, on_error, max_record as usize);
    }
    #[cfg(feature = "kafka")]
    if let Some(cluster) = crate::kafka::Cluster::from_args(&a.broker)? {
        return run_kafka(&a, &cluster, ingest, on_error, max_record as usize);
    }
    crate::kafka::Cluster::from_args(&a.broker)?;
    let log = Log::new(a.log.dir());
    crate::server::owner::refuse_if_served(log.root(), "produce")?;
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
        ingest,
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
        pb: progress::records_spinner(show, "produce"),
        quiet: a.quiet,
        remote: None,
        line: 0,
        acks: Acks::default(),
        source: None,
    };
    if let Some(id) = &a.source {
        let dir = log.topic_dir(&pr.topic)?;
        pr.source = Some(Source::open(id, dir, &mut pr.writers, a.quiet)?);
    }
    pr.run(&a, max_record as usize)
}

fn run_remote(a: &Args, ingest: Ingest, on_error: OnError, max: usize) -> Result<()> {
    crate::log::names::validate("topic", &a.topic)?;
    let mut client = Client::new(&a.server)?;
    client.retry_for = time::parse_duration_ms(&a.server.server_retry)
        .map(|ms| Duration::from_millis(ms.max(0) as u64))
        .map_err(|e| usage(format!("--server-retry: {e}")))?;
    let tpath = format!("/topics/{}", a.topic);
    // Retried like any request (the server may be starting); 404 is a topic to create.
    let existing = client.retrying("looking up the topic", || match client.get_json(&tpath) {
        Ok(v) => Ok(v["partitions"].as_u64().map(|n| n as u32)),
        Err(Failure::Status(404, _)) => Ok(None),
        Err(f) => Err(f),
    })?;
    let partitions = existing.unwrap_or(a.partitions.unwrap_or(1));
    if let (Some(n), Some(e)) = (a.partitions, existing) {
        if n != e {
            return Err(setup(format!(
                "topic {:?} has {e} partitions, not {n} (--partitions applies on creation)",
                a.topic
            )));
        }
    }
    if let Some(p) = a.partition {
        if p >= partitions {
            return Err(usage(format!(
                "--partition {p}: topic {:?} has partitions 0 to {}",
                a.topic,
                partitions - 1
            )));
        }
    }
    let mut q = vec![
        ("format", "envelope".to_string()),
        ("partitions", partitions.to_string()),
    ];
    if let Some(p) = a.partition {
        q.push(("partition", p.to_string()));
    }
    let path = format!("/topics/{}/records{}", a.topic, client::query(&q));
    let away = Away::Server(Remote {
        client,
        path,
        producer: client::member_id("produce"),
        seq: 0,
        body: Vec::with_capacity(REMOTE_BATCH_BYTES + (64 << 10)),
        pending: 0,
    });
    run_away(a, ingest, on_error, max, partitions, away)
}

/// Runs a producer whose records go to a server or a cluster instead of local writers.
fn run_away(
    a: &Args,
    ingest: Ingest,
    on_error: OnError,
    max: usize,
    partitions: u32,
    away: Away,
) -> Result<()> {
    let mut pr = Producer {
        topic: a.topic.clone(),
        ingest,
        partitions,
        forced: a.partition,
        writers: Vec::new(),
        sticky: 0,
        fsync: a.fsync,
        bad: BadRecords::new("produce", on_error)?,
        counts: vec![0; partitions as usize],
        records: 0,
        bytes: 0,
        last_sync: Instant::now(),
        pb: progress::records_spinner(a.progress.wanted(), "produce"),
        quiet: a.quiet,
        remote: Some(away),
        line: 0,
        acks: Acks::default(),
        source: None,
    };
    pr.run(a, max)
}

#[cfg(feature = "kafka")]
fn run_kafka(
    a: &Args,
    cluster: &crate::kafka::Cluster,
    ingest: Ingest,
    on_error: OnError,
    max: usize,
) -> Result<()> {
    crate::log::names::validate("topic", &a.topic)?;
    let sink = crate::kafka::produce::Sink::open(cluster, &a.topic, a.partitions, a.partition)?;
    let partitions = sink.partitions();
    run_away(a, ingest, on_error, max, partitions, Away::Kafka(sink))
}

impl Producer {
    fn run(&mut self, a: &Args, max: usize) -> Result<()> {
        let pr = self;
        let started = Instant::now();
        let files = if a.files.is_empty() {
            vec![PathBuf::from("-")]
        } else {
            a.files.clone()
        };
        if let Some(path) = &a.acks {
            pr.acks = Acks::open(path)?;
        }
        let mut result = Ok(());
        let resume = pr.source.as_ref().map(|s| s.resume);
        for (i, f) in files.iter().enumerate() {
            let i = i as u32;
            let start = match resume {
                Some(r) if i < r.file => continue,
                Some(r) if i == r.file => (r.lines, r.bytes),
                _ => (0, 0),
            };
            if let Some(src) = pr.source.as_mut() {
                src.pos.file = i;
                (src.pos.lines, src.pos.bytes) = start;
            }
            pr.acks.file = f.display().to_string();
            (pr.acks.lines, pr.acks.bytes) = start;
            pr.ingest.new_source();
            result = pr.read_source(f, max, start, a.csv);
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

    /// Reads one input. `start` (lines, bytes) is where --source resumes in it: a regular
    /// file is read from there (a CSV one from its start, for its header); other input is
    /// read from its start, and what lies before `start` was handled by an earlier run.
    fn read_source(
        &mut self,
        path: &PathBuf,
        max: usize,
        start: (u64, u64),
        csv: bool,
    ) -> Result<()> {
        let stdin = path.as_os_str() == "-";
        let mut from = (0, 0);
        let (reader, fd, label): (Box<dyn Read>, Option<i32>, String) = if stdin {
            (Box::new(StdinFile::open()), Some(0), String::new())
        } else {
            let mut f = File::open(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            let fd = f.as_raw_fd();
            let meta = f.metadata().ok();
            let is_file = meta.as_ref().map(|m| m.is_file()).unwrap_or(true);
            if is_file && start.1 > 0 {
                let len = meta.map_or(0, |m| m.len());
                if len < start.1 {
                    return Err(Error::Data(format!(
                        "{}: {len} bytes, fewer than the {} that source {:?} already took from it (was the file replaced?)",
                        path.display(),
                        start.1,
                        self.source.as_ref().map_or("", |s| s.id.as_str())
                    )));
                }
                if !csv {
                    f.seek(SeekFrom::Start(start.1))
                        .map_err(|e| Error::io(format!("seeking in {}", path.display()), e))?;
                    from = start;
                }
            }
            (
                Box::new(f),
                if is_file { None } else { Some(fd) },
                format!("{}: ", path.display()),
            )
        };
        let mut lr = LineReader::new(reader, max, fd).starting_at(from.0, from.1);
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
                    let (no, end) = (line.no, line.end);
                    // --source, read from the start: lines up to the resume point were
                    // handled by an earlier run (a CSV header is still read for its names).
                    if self.source.is_some() && end <= start.1 && self.ingest.expects_data() {
                        continue;
                    }
                    let handled = match self.ingest.line(no, line.bytes, line.oversize) {
                        Item::Record(p) => {
                            self.line = no;
                            if let Some(src) = self.source.as_mut() {
                                src.at = SourcePos {
                                    file: src.pos.file,
                                    bytes: end,
                                    lines: no,
                                    records: src.pos.records + 1,
                                };
                            }
                            self.append(p)?;
                            true
                        }
                        Item::Bad(no, msg, bytes) => {
                            self.bad.handle(&label, no, &msg, &bytes, None)?;
                            true
                        }
                        // A CSV header, or a quoted field going on: not handled yet.
                        Item::Nothing => false,
                    };
                    if handled {
                        self.acks.lines = no;
                        self.acks.bytes = lr.consumed();
                        self.acks.records = self.records;
                        if let Some(src) = self.source.as_mut() {
                            let records = src.at.records.max(src.pos.records);
                            src.pos = SourcePos {
                                file: src.pos.file,
                                bytes: lr.consumed(),
                                lines: no,
                                records,
                            };
                        }
                    }
                }
            }
        }
        if let Some(Item::Bad(no, msg, bytes)) = self.ingest.finish() {
            self.bad.handle(&label, no, &msg, &bytes, None)?;
        }
        self.acks.lines = lr.line_no();
        self.acks.bytes = lr.consumed();
        self.acks.records = self.records;
        if let Some(src) = self.source.as_mut() {
            src.pos.lines = lr.line_no();
            src.pos.bytes = lr.consumed();
        }
        Ok(())
    }

    /// Input has nothing ready: make what we have visible, and durable when it is time.
    fn on_idle<R: Read>(&mut self, lr: &LineReader<R>) -> Result<()> {
        if self.remote.is_some() {
            self.remote_send()?;
            lr.wait(-1);
            return Ok(());
        }
        self.flush_all()?;
        if self.fsync != FsyncMode::Batch {
            // always: every record was synced; never: what --fsync never promises.
            self.durable_point(false)?;
        }
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

    fn remote_send(&mut self) -> Result<()> {
        let Some(r) = self.remote.as_mut() else {
            return Ok(());
        };
        let r = r.send();
        // Dead letters are made durable with the records they stand beside.
        self.bad.flush(self.fsync != FsyncMode::Never)?;
        for (p, n) in r? {
            if let Some(c) = self.counts.get_mut(p as usize) {
                *c += n;
            }
        }
        self.acks.durable()
    }

    fn append(&mut self, p: Prepared<'_>) -> Result<()> {
        if let Some(r) = self.remote.as_mut() {
            let full = r.add(&p, self.line)?;
            self.records += 1;
            self.bytes += p.value.len() as u64;
            if self.records % 4096 == 0 {
                self.pb.set_position(self.records);
            }
            if full {
                self.remote_send()?;
            }
            return Ok(());
        }
        let rec = p.as_ref(p.ts.unwrap_or_else(time::now_ms));
        let part = match (self.forced, &p.key) {
            (Some(f), _) => f,
            (None, Some(k)) => partition_for_key(k, self.partitions),
            (None, None) if self.source.is_some() => {
                let n = self.source.as_ref().map_or(1, |s| s.at.records);
                ((n - 1) / SOURCE_KEYLESS_RUN % self.partitions as u64) as u32
            }
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
        if let Some(src) = self.source.as_mut() {
            if src.at.at_or_before(&src.done[part as usize]) {
                src.skipped += 1;
                return Ok(());
            }
            w.append(&rec)?;
            w.mark(src.at);
        } else {
            w.append(&rec)?;
        }
        self.counts[part as usize] += 1;
        self.records += 1;
        self.bytes += p.value.len() as u64;
        if self.records % 4096 == 0 {
            self.pb.set_position(self.records);
        }
        match self.fsync {
            FsyncMode::Always => {
                self.writers[part as usize]
                    .as_mut()
                    .expect("opened above")
                    .sync()?;
                // Every record is durable; say so now and then, not after each one.
                if self.last_sync.elapsed() >= SYNC_INTERVAL {
                    self.last_sync = Instant::now();
                    self.durable_point(false)?;
                }
            }
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
        self.durable_point(false)
    }

    /// Everything handled so far is durable at the --fsync level: say so in --acks, and
    /// move the --source checkpoint up (at most every second unless `last`).
    fn durable_point(&mut self, last: bool) -> Result<()> {
        self.acks.durable()?;
        let next: Vec<u64> = self
            .writers
            .iter()
            .map(|w| w.as_ref().map_or(0, |w| w.next_offset()))
            .collect();
        self.checkpoint_source(next, last)
    }

    /// `next`: each partition's end offset, all of it durable.
    fn checkpoint_source(&mut self, next: Vec<u64>, last: bool) -> Result<()> {
        let Some(src) = self.source.as_mut() else {
            return Ok(());
        };
        if !src.caught_up() || (!last && src.last_checkpoint.elapsed() < SOURCE_CHECKPOINT_EVERY) {
            return Ok(());
        }
        sources::write(
            &src.topic_dir,
            &src.id,
            &SourceCheckpoint { pos: src.pos, next },
        )?;
        src.last_checkpoint = Instant::now();
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if self.remote.is_some() {
            return self.remote_send();
        }
        let mut first_err = None;
        let next: Vec<u64> = self
            .writers
            .iter()
            .map(|w| w.as_ref().map_or(0, |w| w.next_offset()))
            .collect();
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
        match first_err {
            Some(e) => Err(e),
            None => {
                self.acks.durable()?;
                self.checkpoint_source(next, true)
            }
        }
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
        if let Some(src) = self.source.as_ref().filter(|s| s.skipped > 0) {
            msg.push_str(&format!(
                "; {} records of source {} were in the log already",
                src.skipped, src.id
            ));
        }
        cli::note(false, "produce", &msg);
    }
}
