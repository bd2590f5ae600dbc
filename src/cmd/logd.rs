//! `logd`: the log's administrator: topics, groups, verify, recover and retention, and
//! `logd serve`, the network daemon (its code is in `crate::server`).

use crate::cli::{self, LogArgs};
use crate::error::{usage, Error, Result};
use crate::log::groups::Groups;
use crate::log::segment::{self, log_path, Mapped};
use crate::log::{names, verify, FsyncMode, Log, PartitionReader, PartitionWriter, TopicConfig};
use crate::record::time;
use clap::{Args as ClapArgs, CommandFactory, Parser, Subcommand};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;

const ABOUT: &str =
    "Administer the log: topics, consumer groups, verification, recovery, retention, compaction";

const AFTER: &str = "\
Exit status: 0 success; 1 damage found (verify), or an I/O error during the work; 2 bad flags,
no such topic or group, a partition locked by a writer.

Examples:
  logd topics create telemetry --partitions 4 --retention-age 30d
  logd topics create device-config --cleanup-policy compact && logd compact -t device-config
  logd topics describe telemetry
  logd groups reset dash -t telemetry --to @yesterday
  logd verify && echo clean
  logd --log /var/lib/kappa mirror -t telemetry --to kafka://k1:9092,k2:9092 --follow
  logd mirror --from kafka://prod:9092 -t telemetry --to ./dump-log";

#[derive(Parser, Debug)]
#[command(name = "logd", version, about = ABOUT, after_long_help = AFTER)]
pub struct Args {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

pub fn command() -> clap::Command {
    Args::command()
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Copy a topic between a log directory and Kafka, resumably
    #[command(
        long_about = "Copy a topic from a log directory to a Kafka cluster (--from DIR --to kafka://...) \
or back (--from kafka://... --to DIR), partition by partition: the same partition numbers, keys, \
timestamps, headers and values. The destination topic is created with the source's partition \
count; an existing one must have it. A checkpoint in the log directory (mirror/) pairs local and \
Kafka offsets; a mirror killed at any moment and started again copies on with no gap and no \
duplicate, as long as it is the only writer of the destination. Without --follow it copies what \
the source holds when it starts and exits; with --follow it keeps copying until SIGINT/SIGTERM.\n\n\
Exit status: 0 done; 1 a record Kafka did not acknowledge, damage in the log; 2 bad flags, no such \
topic, a partition count that differs, an unreachable broker."
    )]
    Mirror(MirrorArgs),
    /// Create, list, describe, alter and delete topics
    #[command(subcommand)]
    Topics(TopicsCmd),
    /// List, describe, reset and delete consumer groups
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// Check every frame, index and metadata file of topics, groups and tables; exit 1 on any damage
    #[command(
        long_about = "Check every segment header, every frame's length, CRC and offset continuity, every \
index and time index entry against the log, and the checksums of topic, group and checkpoint \
files. Each problem is printed with its file and position; exit 1 on any. A tail that recovery \
sealed (kept on disk, never served) is a note, not damage. Reads only; safe beside writers."
    )]
    Verify(VerifyArgs),
    /// Recover partitions now: cut torn tails, rebuild every index from the log
    #[command(
        long_about = "Open each partition as its writer would and recover it, checking every segment \
(not only those after the recovery checkpoint): a torn or corrupt tail is cut, and every index \
that is missing, short or wrong is rebuilt from the log. Partitions held by a running writer \
are skipped (the writer recovered them when it opened)."
    )]
    Recover(TopicFilter),
    /// Repair damaged partitions: cut at the first damaged frame, optionally salvage what follows
    #[command(
        long_about = "Repair what `logd verify` reports as damage, which recovery on open does not \
touch (it only cuts torn tails). Each partition is cut at its first damaged frame (a CRC \
mismatch, a bad header, a gap): every record before the cut keeps its offset, and nothing \
damaged is served. Without --salvage, everything after the cut is dropped (Kafka's unclean \
recovery). With --salvage, the intact frames after the damage (found by trying every byte \
position; the CRC makes that safe) are appended again after the cut, with new offsets: no \
intact record is lost, but offsets after the cut change (a consumer group committed past the \
cut resumes at the new end). The damaged segment is copied, and later segments moved, into \
repaired-<ms>/ inside the partition directory. Each partition's line says where the damage \
was and how many records were lost. Indexes are rebuilt from the log in every partition; a \
damaged topic.json is rewritten with the partition count found on disk and default settings. \
Partitions held by a running writer are skipped.\n\n\
Exit status: 0 repaired (or nothing to repair); 1 an I/O error; 2 bad flags, no such topic."
    )]
    Repair(RepairArgs),
    /// Compact `compact` topics now: keep only the latest record per key in sealed segments
    #[command(
        long_about = "Compact the partitions of topics whose cleanup policy includes compact \
(`logd topics create T --cleanup-policy compact`): the sealed segments are rewritten keeping, \
for every key, only its latest record, so the topic holds the latest value per key. Offsets do \
not change (a compacted partition has gaps between them), and the active segment is never \
touched. Records without a key are kept; a tombstone (a record whose value is null) is kept \
until its segment was last written --delete-retention ago (a topic setting, default 1 day), so \
consumers behind by less still see the deletion. A partition is compacted once at least \
--min-cleanable-ratio of its sealed bytes are new since its last compaction (default 0.5); \
--force compacts whatever is new. Safe beside a running writer and beside readers (it needs no \
writer lock); `logd serve` does the same in the background.\n\n\
Exit status: 0 done (or nothing to do); 1 damage found in a segment (run `logd repair` first), \
an I/O error; 2 bad flags, no such topic, a topic that is not compacted."
    )]
    Compact(CompactArgs),
    /// Apply retention now: delete whole old segments past the topic's limits
    #[command(
        long_about = "Delete whole sealed segments that the topic's retention (bytes, age of the newest \
record) no longer keeps. The active segment is never deleted. A reader that already has a \
segment open keeps reading it. Partitions held by a running writer are skipped: writers apply \
retention themselves each time they roll a segment."
    )]
    Retention(TopicFilter),
    /// Serve the log over HTTP: produce, consume, consumer groups, metrics
    #[command(long_about = SERVE_ABOUT, after_long_help = SERVE_AFTER)]
    Serve(ServeArgs),
}

const SERVE_ABOUT: &str = "\
Serve the log over HTTP/1.1 so devices, remote pipelines and consumer groups can use it, and
keep it in shape while serving (retention, segment roll by age, compaction of `compact`
topics, recovery checkpoints).

API (JSON answers; records as NDJSON):
  POST /topics/T/records   append the body: format=ndjson|csv|lines|envelope, key=FIELD,
                           ts=FIELD, ts_format=FMT, partition=P, partitions=N (when creating),
                           on_error=fail|skip. Answered after the records are durable per
                           --fsync, with {\"records\",\"ranges\":[{\"partition\",\"first\",\"last\"}],
                           \"skipped\",\"errors\"}; in fail mode a bad line stops the body: the
                           records before it are appended and the answer is 422 (413 for an
                           oversize record) naming the line. Requests of all clients are
                           group-committed: one fdatasync serves every request of a round.
  GET  /topics/T/records   envelopes, streamed: partition=P, from=, to=, max=N, follow=true,
                           offsets=P:O,... (resume); ends with {\"end\":\"done\"} (or
                           \"shutdown\", \"rebalance\", or {\"error\":...} on damage)
  POST /groups/G/join?topic=T&member=ID&session_timeout=10s, /heartbeat?member=ID (body
                           {\"offsets\":{\"P\":O}} commits), /leave?member=ID
  GET  /groups/G/records?member=ID&follow=true   the member's partitions from the group's
                           committed offsets; ends with \"rebalance\" when the assignment changes
  GET  /topics, /topics/T, /groups, /groups/G, /healthz, /metrics (Prometheus text)

Idempotent producers: a request with the headers Producer-Id (a name) and Producer-Seq (an
integer that grows by batch) is appended once: a retry of the same pair, even after a crash and
restart of the server, is answered with the first answer's ranges and appends nothing again
(or only what had not landed). produce --server does this by itself.

Groups: members of a group share the topic's partitions (ranges over the members sorted by
id); a member that sends no heartbeat within the session timeout it joined with (consume
--session-timeout) is dropped, and every join, leave or drop reassigns. A member may commit only the partitions it owns, so a slow member never moves
another's offsets; records may repeat after a rebalance, never be skipped.

The directory is owned while serving: local `produce` on it fails with a message naming the
server's URL (use produce --server), and a second server is refused. Readers (consume, replay,
store) work beside it as usual.

Security: loopback only unless --token-file is given (or --insecure). TLS is not built in:
put a TLS-terminating proxy (nginx, Caddy, HAProxy) in front for other networks.

SIGTERM or SIGINT: stop accepting, finish requests in flight, end streams with
{\"end\":\"shutdown\"}, fsync, write recovery checkpoints, release the directory, exit 0.";

const SERVE_AFTER: &str = "\
Exit status: 0 after SIGTERM/SIGINT; 2 bad flags, a non-loopback --listen without a token,
the address in use, or the directory already served.

Examples:
  logd --log /var/lib/kappa serve --listen 127.0.0.1:7070
  logd --log /var/lib/kappa serve --listen 0.0.0.0:7070 --token-file /etc/kappa/token
  curl --data-binary @readings.ndjson 'http://127.0.0.1:7070/topics/telemetry/records?key=vehicle_id&ts=ts'
  consume --server http://127.0.0.1:7070 -t telemetry --group dash --follow";

#[derive(ClapArgs, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the URL is printed on stdout)
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "HOST:PORT")]
    pub listen: String,
    /// When to fdatasync appended records before answering
    #[arg(long, value_enum, default_value = "batch", value_name = "MODE")]
    pub fsync: FsyncMode,
    /// Require `Authorization: Bearer TOKEN`, TOKEN read from FILE
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Allow a non-loopback --listen without --token-file
    #[arg(long)]
    pub insecure: bool,
    /// Largest request body
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    pub max_body_bytes: String,
    /// Largest record
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub max_record_bytes: String,
    /// Connections served at once; more are answered 503
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,
    /// Time a client has to send a request head (then 408 and closed)
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub header_timeout: String,
    /// Time a client has to send a request body (then 408)
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub request_timeout: String,
    /// A connection with no request and no traffic for this long is closed
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub idle_timeout: String,
    /// Follow streams open at once per client address (more are answered 429)
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_follows_per_client: usize,
    /// No messages on stderr
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(ClapArgs, Debug)]
pub struct TopicFilter {
    /// Only these topics (default: all)
    #[arg(short = 't', long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
}

#[derive(ClapArgs, Debug)]
pub struct CompactArgs {
    #[command(flatten)]
    pub filter: TopicFilter,
    /// Compact whatever is new since the last compaction, whatever its share
    #[arg(long)]
    pub force: bool,
    /// Memory for the key map of one pass; more distinct keys take more passes
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub buffer: String,
}

#[derive(ClapArgs, Debug)]
pub struct RepairArgs {
    #[command(flatten)]
    pub filter: TopicFilter,
    /// Append the intact records found after the damage again, after the cut
    #[arg(long)]
    pub salvage: bool,
}

#[derive(ClapArgs, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub filter: TopicFilter,
    /// Print only problems
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(ClapArgs, Debug, Clone)]
pub struct TopicSettings {
    /// Roll segments at this size (e.g. 128MiB)
    #[arg(long, value_name = "SIZE")]
    pub segment_bytes: Option<String>,
    /// Roll segments at this age (e.g. 7d)
    #[arg(long, value_name = "DURATION")]
    pub segment_age: Option<String>,
    /// Keep at most this many bytes per partition (`none`: no limit)
    #[arg(long, value_name = "SIZE")]
    pub retention_bytes: Option<String>,
    /// Delete segments whose newest record is older than this (`none`: no limit)
    #[arg(long, value_name = "DURATION")]
    pub retention_age: Option<String>,
    /// delete (retention removes old segments), compact (keep the latest record per key), or compact,delete
    #[arg(long, value_name = "POLICY")]
    pub cleanup_policy: Option<String>,
    /// Compaction keeps a key's tombstone (null value) this long after its segment was last written
    #[arg(long, value_name = "DURATION")]
    pub delete_retention: Option<String>,
    /// Compact a partition once this share of its sealed bytes is new (0 to 1)
    #[arg(long, value_name = "RATIO")]
    pub min_cleanable_ratio: Option<f64>,
}

impl TopicSettings {
    fn apply(&self, c: &mut TopicConfig) -> Result<()> {
        if let Some(s) = &self.segment_bytes {
            c.segment_bytes = time::parse_size(s).map_err(usage)?;
        }
        if let Some(s) = &self.segment_age {
            c.segment_ms = time::parse_duration_ms(s).map_err(usage)? as u64;
        }
        if let Some(s) = &self.retention_bytes {
            c.retention_bytes = if s == "none" {
                None
            } else {
                Some(time::parse_size(s).map_err(usage)?)
            };
        }
        if let Some(s) = &self.retention_age {
            c.retention_ms = if s == "none" {
                None
            } else {
                Some(time::parse_duration_ms(s).map_err(usage)? as u64)
            };
        }
        if let Some(p) = &self.cleanup_policy {
            c.cleanup_policy = TopicConfig::normalize_policy(p)
                .map_err(|e| usage(format!("--cleanup-policy: {e}")))?;
        }
        if let Some(s) = &self.delete_retention {
            c.delete_retention_ms = time::parse_duration_ms(s).map_err(usage)? as u64;
        }
        if let Some(r) = self.min_cleanable_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(usage(format!(
                    "--min-cleanable-ratio {r}: expected a ratio from 0 to 1"
                )));
            }
            c.min_cleanable_dirty_ratio = r;
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
pub enum TopicsCmd {
    /// List topics with their partition counts
    List {
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Create a topic
    Create {
        name: String,
        /// Number of partitions
        #[arg(long, default_value_t = 1, value_name = "N")]
        partitions: u32,
        #[command(flatten)]
        settings: TopicSettings,
    },
    /// Per partition: earliest and latest offsets, first and last timestamps, segments, bytes
    Describe {
        name: String,
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Change a topic's segment, retention and cleanup settings
    Alter {
        name: String,
        #[command(flatten)]
        settings: TopicSettings,
    },
    /// Delete a topic and its data (fails while a writer holds a partition)
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum GroupsCmd {
    /// List consumer groups
    List,
    /// Committed offsets, log end offsets and lag per topic and partition
    Describe {
        group: String,
        /// JSON output
        #[arg(long)]
        json: bool,
    },
    /// Set a group's offsets for a topic
    Reset {
        group: String,
        /// Topic whose offsets to set
        #[arg(short = 't', long, value_name = "TOPIC")]
        topic: String,
        /// earliest, latest, OFFSET or @TIME
        #[arg(long, value_name = "WHERE")]
        to: String,
        /// Only this partition
        #[arg(long, value_name = "P")]
        partition: Option<u32>,
    },
    /// Delete a group's committed offsets
    Delete { group: String },
}

pub fn run(a: Args) -> Result<()> {
    let log = Log::new(a.log.dir());
    match a.cmd {
        Cmd::Topics(t) => topics(&log, t),
        Cmd::Groups(g) => groups(&log, g),
        Cmd::Verify(v) => verify_cmd(&log, v),
        Cmd::Recover(f) => per_partition(&log, &f, "recover", true, |w| {
            Ok(std::mem::take(&mut w.recovery))
        }),
        Cmd::Repair(r) => repair(&log, r),
        Cmd::Compact(c) => compact_cmd(&log, c),
        Cmd::Retention(f) => per_partition(&log, &f, "retention", false, |w| {
            w.apply_retention(time::now_ms())
        }),
        Cmd::Serve(s) => serve(&a.log, s),
        Cmd::Mirror(m) => mirror(&a.log, m),
    }
}

#[cfg(feature = "kafka")]
fn mirror(log: &LogArgs, m: MirrorArgs) -> Result<()> {
    let timeout = time::parse_duration_ms(&m.broker_timeout)
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            usage(format!(
                "--broker-timeout {:?}: expected a duration",
                m.broker_timeout
            ))
        })?;
    crate::kafka::mirror::run(
        &log.dir(),
        m.from.as_deref(),
        m.to.as_deref(),
        &m.topic,
        m.to_topic.as_deref(),
        m.follow,
        std::time::Duration::from_millis(timeout as u64),
        m.quiet,
    )
}

#[cfg(not(feature = "kafka"))]
fn mirror(_: &LogArgs, _: MirrorArgs) -> Result<()> {
    Err(usage(
        "mirror: this build has no Kafka support (build with the cargo feature kafka)",
    ))
}

#[derive(ClapArgs, Debug)]
pub struct MirrorArgs {
    /// Source: a log directory (default: --log) or kafka://HOST:PORT[,HOST:PORT]
    #[arg(long, value_name = "DIR|URL")]
    from: Option<String>,
    /// Destination: kafka://HOST:PORT[,HOST:PORT] or a log directory (default: --log)
    #[arg(long, value_name = "URL|DIR")]
    to: Option<String>,
    /// Topic to copy
    #[arg(short = 't', long, value_name = "TOPIC")]
    topic: String,
    /// Name of the copy [default: the same]
    #[arg(long, value_name = "TOPIC")]
    to_topic: Option<String>,
    /// Keep copying new records until SIGINT/SIGTERM
    #[arg(short = 'f', long)]
    follow: bool,
    /// How long an unreachable or unanswering broker is waited for before failing
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    broker_timeout: String,
    /// No summary on stderr
    #[arg(short, long)]
    quiet: bool,
}

fn serve(log: &LogArgs, s: ServeArgs) -> Result<()> {
    let dur = |flag: &str, v: &str| -> Result<std::time::Duration> {
        match time::parse_duration_ms(v) {
            Ok(ms) if ms > 0 => Ok(std::time::Duration::from_millis(ms as u64)),
            _ => Err(usage(format!(
                "--{flag} {v:?}: expected a duration such as 10s"
            ))),
        }
    };
    let size = |flag: &str, v: &str| -> Result<usize> {
        match time::parse_size(v) {
            Ok(n) if n > 0 => Ok(n as usize),
            _ => Err(usage(format!(
                "--{flag} {v:?}: expected a size such as 16MiB"
            ))),
        }
    };
    let max_record = size("max-record-bytes", &s.max_record_bytes)?;
    if max_record > crate::log::format::MAX_RECORD_BYTES {
        return Err(usage(format!(
            "--max-record-bytes must be at most {}",
            crate::log::format::MAX_RECORD_BYTES
        )));
    }
    let limits = crate::server::Limits {
        max_body: size("max-body-bytes", &s.max_body_bytes)?,
        max_record,
        max_connections: s.max_connections.max(1),
        header_timeout: dur("header-timeout", &s.header_timeout)?,
        idle_timeout: dur("idle-timeout", &s.idle_timeout)?,
        request_timeout: dur("request-timeout", &s.request_timeout)?,
        follows_per_client: s.max_follows_per_client.max(1),
    };
    let token = crate::server::client::read_token(s.token_file.as_deref())?
        .filter(|_| s.token_file.is_some());
    crate::server::serve(crate::server::Options {
        log: log.dir(),
        listen: s.listen,
        fsync: s.fsync,
        token,
        insecure: s.insecure,
        limits,
        quiet: s.quiet,
    })
}

fn stdout_line(s: &str) -> Result<()> {
    writeln!(std::io::stdout(), "{s}").map_err(|e| Error::io("writing stdout", e))
}

fn topics(log: &Log, t: TopicsCmd) -> Result<()> {
    match t {
        TopicsCmd::List { json } => {
            for name in log.list_topics()? {
                let c = log.topic_config(&name)?;
                if json {
                    stdout_line(
                        &serde_json::json!({"topic": name, "partitions": c.partitions}).to_string(),
                    )?;
                } else {
                    stdout_line(&format!("{name}\t{}", c.partitions))?;
                }
            }
            Ok(())
        }
        TopicsCmd::Create {
            name,
            partitions,
            settings,
        } => {
            let mut c = TopicConfig::new(partitions);
            settings.apply(&mut c)?;
            if !log.create_topic(&name, &c)? {
                return Err(crate::error::setup(format!(
                    "topic {name:?} already exists"
                )));
            }
            Ok(())
        }
        TopicsCmd::Alter { name, settings } => {
            let mut c = log.topic_config(&name)?;
            settings.apply(&mut c)?;
            log.set_topic_config(&name, &c)
        }
        TopicsCmd::Describe { name, json } => describe(log, &name, json),
        TopicsCmd::Delete { name } => {
            let c = log.topic_config(&name)?;
            // Hold every partition's writer lock while the topic goes away.
            let mut held = Vec::new();
            let mut compactions = Vec::new();
            // Only the locks: recovery would need disk space, and a full disk is one reason
            // to delete a topic.
            for p in 0..c.partitions {
                let dir = log.partition_dir(&name, p)?;
                if dir.is_dir() {
                    held.push(crate::log::writer::lock_partition(&dir, false)?);
                    match crate::log::compact::try_lock(&dir)? {
                        Some(l) => compactions.push(l),
                        None => {
                            return Err(crate::error::setup(format!(
                                "{}: a compaction is running; try again when it is done",
                                dir.display()
                            )))
                        }
                    }
                }
            }
            log.delete_topic_dir(&name)?;
            drop(compactions);
            drop(held);
            Ok(())
        }
    }
}

fn describe(log: &Log, name: &str, json: bool) -> Result<()> {
    let c = log.topic_config(name)?;
    let mut rows = Vec::new();
    for p in 0..c.partitions {
        let dir = log.partition_dir(name, p)?;
        let mut r = PartitionReader::open(&dir)?;
        let earliest = r.earliest();
        let latest = r.end_offset()?;
        let bases = r.segment_bases().to_vec();
        let mut bytes = 0u64;
        for b in &bases {
            bytes += std::fs::metadata(log_path(&dir, *b))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        let (first_ts, last_ts) = first_last_ts(&dir, &bases);
        // Compaction leaves gaps between offsets: count what is there.
        let records = crate::log::compact::records_held(&dir, &c, &mut r, (earliest, latest))?;
        rows.push(serde_json::json!({
            "partition": p, "earliest": earliest, "latest": latest, "records": records,
            "first_ts": first_ts, "last_ts": last_ts, "segments": bases.len(), "bytes": bytes,
        }));
    }
    if json {
        let v = serde_json::json!({
            "topic": name, "partitions": c.partitions, "segment_bytes": c.segment_bytes, "segment_ms": c.segment_ms,
            "retention_bytes": c.retention_bytes, "retention_ms": c.retention_ms, "cleanup_policy": c.cleanup_policy,
            "delete_retention_ms": c.delete_retention_ms, "min_cleanable_dirty_ratio": c.min_cleanable_dirty_ratio,
            "partition_info": rows,
        });
        return stdout_line(&v.to_string());
    }
    let cleanup = if c.compacts() {
        format!(
            ", cleanup {} (tombstones kept {}, compacted at a dirty ratio of {})",
            c.cleanup_policy,
            human_ms(c.delete_retention_ms),
            c.min_cleanable_dirty_ratio
        )
    } else {
        String::new()
    };
    stdout_line(&format!(
        "topic {name}: {} partitions, segments roll at {} or {}, retention {} / {}{cleanup}",
        c.partitions,
        cli::human_bytes(c.segment_bytes),
        human_ms(c.segment_ms),
        c.retention_bytes
            .map_or("unlimited".into(), cli::human_bytes),
        c.retention_ms.map_or("unlimited".into(), human_ms),
    ))?;
    stdout_line("partition\tearliest\tlatest\trecords\tfirst_ts\tlast_ts\tsegments\tbytes")?;
    for r in rows {
        let ts = |k: &str| r[k].as_i64().map_or("-".to_string(), time::format_rfc3339);
        stdout_line(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r["partition"],
            r["earliest"],
            r["latest"],
            r["records"],
            ts("first_ts"),
            ts("last_ts"),
            r["segments"],
            r["bytes"]
        ))?;
    }
    Ok(())
}

/// `logd compact`: every partition of the selected compacted topics (all of them by default).
fn compact_cmd(log: &Log, a: CompactArgs) -> Result<()> {
    use crate::log::compact::{self, Compaction, Options};
    let map_bytes = time::parse_size(&a.buffer)
        .ok()
        .filter(|n| *n >= 1 << 20)
        .ok_or_else(|| {
            usage(format!(
                "--buffer {:?}: expected a size of at least 1MiB",
                a.buffer
            ))
        })?;
    let chosen = !a.filter.topics.is_empty();
    for t in selected_topics(log, &a.filter)? {
        let c = log.topic_config(&t)?;
        if !c.compacts() {
            if chosen {
                return Err(crate::error::setup(format!(
                    "topic {t:?} has cleanup policy {:?}, not compact (logd topics alter {t} --cleanup-policy compact)",
                    c.cleanup_policy
                )));
            }
            continue;
        }
        for p in 0..c.partitions {
            let dir = log.partition_dir(&t, p)?;
            if !dir.is_dir() {
                continue;
            }
            let o = Options {
                force: a.force,
                now_ms: time::now_ms(),
                map_bytes: map_bytes as usize,
                cancel: None,
            };
            match compact::partition(&dir, &c, &o)? {
                Compaction::Done(out) => stdout_line(&format!("{t}/{p}: {}", out.describe()))?,
                Compaction::Skipped(why) => stdout_line(&format!("{t}/{p}: not compacted: {why}"))?,
            }
        }
    }
    Ok(())
}

fn human_ms(ms: u64) -> String {
    let ms = ms as f64;
    if ms >= 86_400_000.0 {
        format!("{:.1}d", ms / 86_400_000.0)
    } else if ms >= 3_600_000.0 {
        format!("{:.1}h", ms / 3_600_000.0)
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// Timestamp of the first record of the partition and of its last record. Compaction may
/// have left segments (the active one too) without records: look further in.
fn first_last_ts(dir: &std::path::Path, bases: &[u64]) -> (Option<i64>, Option<i64>) {
    use crate::log::format::RecordIter;
    let mut first = None;
    for i in 0..bases.len() {
        walk_frames(dir, bases, i, |frame, info| {
            first = RecordIter::new(frame, info).next().map(|r| r.timestamp);
            first.is_none()
        });
        if first.is_some() {
            break;
        }
    }
    let mut last = None;
    for i in (0..bases.len()).rev() {
        walk_frames(dir, bases, i, |frame, info| {
            if let Some(r) = RecordIter::new(frame, info).last() {
                last = Some(r.timestamp);
            }
            true
        });
        if last.is_some() {
            break;
        }
    }
    (first, last)
}

/// The intact frames of segment `i`, in order, while `more` asks for them.
fn walk_frames(
    dir: &std::path::Path,
    bases: &[u64],
    i: usize,
    mut more: impl FnMut(&[u8], &crate::log::format::FrameInfo) -> bool,
) {
    use crate::log::format::{check_frame, FrameCheck, FILE_HEADER_LEN};
    let Ok(f) = File::open(log_path(dir, bases[i])) else {
        return;
    };
    let Ok(m) = Mapped::of(&f) else { return };
    let bytes = m.bytes();
    let limit = bases.get(i + 1).copied();
    let (mut pos, mut off) = (FILE_HEADER_LEN, bases[i]);
    while pos < bytes.len() && limit != Some(off) {
        let FrameCheck::Ok(info) = check_frame(&bytes[pos..]) else {
            return;
        };
        if !more(&bytes[pos..pos + info.total_len], &info) {
            return;
        }
        pos += info.total_len;
        off = info.next_offset();
    }
}

fn groups(log: &Log, g: GroupsCmd) -> Result<()> {
    let groups = Groups::new(log);
    match g {
        GroupsCmd::List => {
            for name in groups.list()? {
                stdout_line(&name)?;
            }
            Ok(())
        }
        GroupsCmd::Describe { group, json } => {
            names::validate("group", &group)?;
            let members = live_members(log, &group);
            if !groups.exists(&group)? && members.is_empty() {
                return Err(crate::error::setup(format!("no group {group:?}")));
            }
            if !members.is_empty() && !json {
                stdout_line("member\tpartitions\tlast_heartbeat_ms_ago")?;
            }
            for m in &members {
                if json {
                    let mut v = m.clone();
                    v["group"] = serde_json::json!(group);
                    stdout_line(&v.to_string())?;
                } else {
                    let parts: Vec<String> = m["partitions"]
                        .as_array()
                        .map(|a| a.iter().map(|p| p.to_string()).collect())
                        .unwrap_or_default();
                    stdout_line(&format!(
                        "{}\t{}\t{}",
                        m["member"].as_str().unwrap_or("?"),
                        if parts.is_empty() {
                            "-".into()
                        } else {
                            parts.join(",")
                        },
                        m["last_heartbeat_ms_ago"]
                    ))?;
                }
            }
            let offs = groups.load(&group)?;
            if !json {
                stdout_line("topic\tpartition\tcommitted\tlatest\tlag")?;
            }
            for (topic, parts) in offs {
                for (p, committed) in parts {
                    let latest = log
                        .partition_dir(&topic, p)
                        .ok()
                        .filter(|d| d.is_dir())
                        .and_then(|d| {
                            PartitionReader::open(&d)
                                .and_then(|mut r| r.end_offset())
                                .ok()
                        });
                    let lag = latest.map(|l| l.saturating_sub(committed));
                    if json {
                        let v = serde_json::json!({"group": group, "topic": topic, "partition": p, "committed": committed, "latest": latest, "lag": lag});
                        stdout_line(&v.to_string())?;
                    } else {
                        let f = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
                        stdout_line(&format!(
                            "{topic}\t{p}\t{committed}\t{}\t{}",
                            f(latest),
                            f(lag)
                        ))?;
                    }
                }
            }
            Ok(())
        }
        GroupsCmd::Reset {
            group,
            topic,
            to,
            partition,
        } => {
            names::validate("group", &group)?;
            let c = log.topic_config(&topic)?;
            let mut current = groups.load(&group)?.remove(&topic).unwrap_or_default();
            let mut set = BTreeMap::new();
            for p in 0..c.partitions {
                if partition.is_some_and(|x| x != p) {
                    continue;
                }
                let mut r = PartitionReader::open(&log.partition_dir(&topic, p)?)?;
                let o = match to.as_str() {
                    "earliest" => r.earliest(),
                    "latest" => r.end_offset()?,
                    s if s.starts_with('@') => {
                        r.seek_time(time::parse_time_arg(&s[1..]).map_err(usage)?)?;
                        r.position()
                    }
                    s => s.parse().map_err(|_| {
                        usage(format!(
                            "bad --to {s:?}: use earliest, latest, OFFSET or @TIME"
                        ))
                    })?,
                };
                set.insert(p, o);
            }
            if let Some(p) = partition {
                if p >= c.partitions {
                    return Err(usage(format!(
                        "--partition {p}: topic {topic:?} has partitions 0 to {}",
                        c.partitions - 1
                    )));
                }
            }
            current.extend(set);
            groups.set_topic(&group, &topic, current)
        }
        GroupsCmd::Delete { group } => {
            if !groups.delete(&group)? {
                return Err(crate::error::setup(format!("no group {group:?}")));
            }
            Ok(())
        }
    }
}

/// Members of a group as the server serving this directory sees them (none when no server
/// runs; KAPPA_TOKEN is sent when the server wants a token).
fn live_members(log: &Log, group: &str) -> Vec<serde_json::Value> {
    use crate::server::client::{Client, ServerArgs};
    let Some(url) = crate::server::owner::served_by(log.root()) else {
        return Vec::new();
    };
    let args = ServerArgs {
        server: Some(url),
        token_file: None,
        server_retry: "0s".into(),
    };
    let Ok(c) = Client::new(&args) else {
        return Vec::new();
    };
    match c.get_json(&format!("/groups/{group}")) {
        Ok(v) => v["members"].as_array().cloned().unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn selected_topics(log: &Log, f: &TopicFilter) -> Result<Vec<String>> {
    if f.topics.is_empty() {
        return log.list_topics();
    }
    for t in &f.topics {
        log.topic_config(t)?;
    }
    Ok(f.topics.clone())
}

fn verify_cmd(log: &Log, v: VerifyArgs) -> Result<()> {
    let mut r = verify::Report::default();
    for t in selected_topics(log, &v.filter)? {
        verify::topic(log, &t, &mut r);
    }
    if v.filter.topics.is_empty() {
        verify::groups(log, &mut r);
        crate::store::verify(log.root(), &mut r);
    }
    for p in &r.problems {
        stdout_line(&format!("DAMAGE {p}"))?;
    }
    if !v.quiet {
        for n in &r.notes {
            stdout_line(&format!("note {n}"))?;
        }
        stdout_line(&format!(
            "verified {} segments, {} frames, {} records, {}: {}",
            r.segments,
            r.frames,
            r.records,
            cli::human_bytes(r.bytes),
            if r.problems.is_empty() {
                "no damage".to_string()
            } else {
                format!("{} problems", r.problems.len())
            }
        ))?;
    }
    if r.problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Data(format!("{} problems found", r.problems.len())))
    }
}

/// Opens each selected partition as its writer (skipping held ones) and runs `f`.
fn repair(log: &Log, r: RepairArgs) -> Result<()> {
    let topics = if r.filter.topics.is_empty() {
        log.list_topics()?
    } else {
        r.filter.topics.clone()
    };
    let (mut lost, mut damaged) = (0, 0);
    for t in topics {
        let cfg = match log.topic_config(&t) {
            Ok(c) => c,
            Err(Error::Data(why)) => {
                // The partition count is on disk as directories; the rest goes back to defaults.
                let dir = log.topic_dir(&t)?;
                let n = (0..10_000u32)
                    .take_while(|p| dir.join(p.to_string()).is_dir())
                    .count() as u32;
                let cfg = TopicConfig::new(n.max(1));
                log.set_topic_config(&t, &cfg)?;
                stdout_line(&format!(
                    "{t}: {why}; rewrote topic.json with {} partitions and default settings (see `logd topics describe`)",
                    cfg.partitions
                ))?;
                cfg
            }
            Err(e) => return Err(e),
        };
        // `produce --source` checkpoints are hints: a damaged one is dropped (a rerun then
        // scans the topic for its marks, which are in the frames).
        let sd = crate::log::sources::dir(&log.topic_dir(&t)?);
        for e in std::fs::read_dir(&sd).into_iter().flatten().flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json")
                && crate::log::meta::read_checked::<crate::log::sources::SourceCheckpoint>(
                    &path,
                    crate::log::sources::KIND,
                )
                .is_err()
            {
                std::fs::remove_file(&path)
                    .map_err(Error::io_with(|| format!("removing {}", path.display())))?;
                stdout_line(&format!(
                    "{t}: removed the damaged {} (the next `produce --source` scans the topic instead)",
                    path.display()
                ))?;
            }
        }
        for p in 0..cfg.partitions {
            let dir = log.partition_dir(&t, p)?;
            if !dir.is_dir() {
                continue;
            }
            match crate::log::repair::partition(&dir, &cfg, r.salvage) {
                Ok(o) => {
                    for n in &o.notes {
                        stdout_line(&format!("{t}/{p}: {n}"))?;
                    }
                    if o.damaged {
                        damaged += 1;
                        lost += o.lost;
                    }
                }
                Err(Error::Setup(m)) if m.contains("locked") => {
                    stdout_line(&format!("{t}/{p}: skipped by repair: a writer holds it"))?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    stdout_line(&format!(
        "repaired {damaged} damaged partitions; {lost} records lost"
    ))
}

fn per_partition(
    log: &Log,
    filter: &TopicFilter,
    what: &str,
    full: bool,
    f: impl Fn(&mut PartitionWriter) -> Result<Vec<String>>,
) -> Result<()> {
    for t in selected_topics(log, filter)? {
        let c = log.topic_config(&t)?;
        for p in 0..c.partitions {
            let dir = log.partition_dir(&t, p)?;
            if segment::list_segments(&dir)
                .map(|s| s.is_empty())
                .unwrap_or(true)
                && !dir.is_dir()
            {
                continue;
            }
            match PartitionWriter::open_with(&dir, &c, FsyncMode::Batch, false, full) {
                Ok(mut w) => {
                    let msgs = f(&mut w)?;
                    for m in msgs {
                        stdout_line(&format!("{t}/{p}: {m}"))?;
                    }
                    w.close()?;
                }
                Err(Error::Setup(m)) if m.contains("locked") => {
                    stdout_line(&format!("{t}/{p}: skipped by {what}: a writer holds it"))?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
