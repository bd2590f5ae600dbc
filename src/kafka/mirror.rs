//! `logd mirror`: a topic copied between a log directory and Kafka, partition by partition
//! (same partition numbers, keys, timestamps, headers and values), resumable without a gap
//! or a duplicate.
//!
//! Each direction keeps a checkpoint in the log directory (`mirror/NAME.json`, written
//! atomically with its checksum): per partition, a pair of positions that correspond, the
//! next local offset and the next Kafka offset. Records copied after the checkpoint are not
//! trusted to be known: on restart they are counted where they landed (read back from Kafka
//! to its end, or the local log's end offset), and that many records of the source are
//! skipped. So a mirror killed at any moment, even between a write and its checkpoint,
//! restarts with no gap and no duplicate, provided it is the only writer of the destination
//! partitions. Records land in order (the idempotent producer keeps a partition's order), so
//! a count is a position, as long as the local records after the checkpoint are all still
//! there; where compaction or retention removed some, the landed ones are matched by content
//! (`matched_resume`), and where even that is ambiguous, sent again.

use super::read::{self, Polled, Positions, Verdict};
use super::Cluster;
use crate::cli::{self, signals};
use crate::error::{setup, usage, Error, Result};
use crate::log::format::RecordRef;
use crate::log::{meta, names, FsyncMode, Log, PartitionReader, PartitionWriter, TopicConfig};
use rdkafka::client::ClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CHECKPOINT_KIND: &str = "kappa-mirror";
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);

/// Corresponding positions of one partition: the next local offset and the next Kafka offset.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub local: u64,
    pub kafka: u64,
}

#[derive(Serialize, Deserialize, Default, Debug)]
struct Checkpoint {
    source: String,
    destination: String,
    partitions: BTreeMap<u32, Pair>,
}

pub struct Job<'a> {
    pub dir: &'a Path,
    pub cluster: &'a Cluster,
    pub topic: &'a str,
    pub to_topic: &'a str,
    pub follow: bool,
    pub quiet: bool,
}

fn checkpoint_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("mirror").join(format!("{name}.json"))
}

fn load(path: &Path) -> Result<Checkpoint> {
    meta::read_checked::<Checkpoint>(path, CHECKPOINT_KIND)
        .map(Option::unwrap_or_default)
        .map_err(|e| Error::Data(format!("{}: {e}", path.display())))
}

fn save(path: &Path, c: &Checkpoint) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(Error::io_with(|| d.display().to_string()))?;
    }
    meta::write_checked(path, CHECKPOINT_KIND, c)
        .map_err(Error::io_with(|| path.display().to_string()))
}

/// A record that landed in Kafka past the checkpoint, as far as resuming needs it.
struct Landed {
    content: u64,
    key: Option<u64>,
    tombstone: bool,
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same in the one process that hashes both sides.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// What identifies a copied record on both sides: key, value and headers (not the
/// timestamp, which a broker set to LogAppendTime rewrites).
fn landed_of<'h>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) -> Landed {
    let value = value.unwrap_or_default();
    let mut parts: Vec<&[u8]> = vec![key.map_or(&b"\x00"[..], |_| &b"\x01"[..])];
    parts.extend(key);
    parts.push(value);
    for (n, v) in headers {
        parts.extend([n, v]);
    }
    Landed {
        content: hash_of(&parts),
        key: key.map(|k| hash_of(&[k])),
        tombstone: value == b"null",
    }
}

fn local_landed(rec: &crate::log::format::Record<'_>) -> Landed {
    // Header names go to Kafka as strings (to_kafka_headers), so hash them as sent.
    let names: Vec<(String, &[u8])> = rec
        .headers()
        .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v))
        .collect();
    landed_of(
        rec.key,
        Some(rec.value),
        names.iter().map(|(n, v)| (n.as_bytes(), *v)),
    )
}

/// How the local records after a mirror's checkpoint line up with `landed` records that
/// landed in Kafka past it.
enum Dense {
    /// Dense: each landed record is the next of them, so the count is the position.
    At(u64),
    /// Dense, and fewer than landed: another writer.
    Short,
    /// Compaction or retention removed some.
    Thinned,
}

fn dense_resume(r: &mut PartitionReader, local: u64, landed: u64) -> Result<Dense> {
    r.seek(local)?;
    let mut next = r.position();
    if next != local {
        return Ok(Dense::Thinned);
    }
    let mut n = 0;
    while n < landed {
        let Some(f) = r.next_frame()? else { break };
        for rec in f.records() {
            if n == landed {
                break;
            }
            if rec.offset != next {
                return Ok(Dense::Thinned);
            }
            n += 1;
            next = rec.offset + 1;
        }
    }
    if n == landed {
        return Ok(Dense::At(next));
    }
    // Offsets without records at the end (tombstones dropped there): not dense either.
    Ok(if r.end_offset()? > next {
        Dense::Thinned
    } else {
        Dense::Short
    })
}

/// Where a partition resumes when compaction or retention has removed some of the local
/// records sent after the checkpoint, so a count would skip records never sent. The local
/// records are matched in order against the landed ones (by content); every landed record
/// left unmatched must be one removed here since: a tombstone, one that retention deleted
/// before the first match, or one whose key has a local record after the last match before
/// it (compaction keeps only a key's latest). Then, for every key, what Kafka holds last is
/// what the local log holds last. When that does not hold, the resume point is ambiguous:
/// everything after the checkpoint is sent again (duplicates, never a gap), and says so.
fn matched_resume(
    r: &mut PartitionReader,
    local: u64,
    landed: &[Landed],
) -> Result<(u64, Option<String>)> {
    r.seek(local)?;
    let start = r.position();
    let deleted_before = start != local;
    let (mut j, mut next, mut last_match) = (0, start, None);
    // Landed records without a local match: (index, offset of the last match before it).
    let mut unmatched: Vec<(usize, Option<u64>)> = Vec::new();
    'walk: while j < landed.len() {
        let Some(f) = r.next_frame()? else { break };
        for rec in f.records() {
            if j == landed.len() {
                break 'walk;
            }
            let h = local_landed(&rec).content;
            let Some(k) = landed[j..].iter().position(|x| x.content == h) else {
                break 'walk;
            };
            unmatched.extend((j..j + k).map(|i| (i, last_match)));
            j += k + 1;
            last_match = Some(rec.offset);
            next = rec.offset + 1;
        }
    }
    unmatched.extend((j..landed.len()).map(|i| (i, last_match)));
    let mut need: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut ambiguous = false;
    for &(i, after) in &unmatched {
        let l = &landed[i];
        if l.tombstone || (deleted_before && after.is_none()) {
            continue;
        }
        match l.key {
            Some(k) => {
                need.insert(k, None);
            }
            None => ambiguous = true,
        }
    }
    if !ambiguous && !need.is_empty() {
        // The last local offset of each key that has to explain a removal.
        r.seek(local)?;
        while let Some(f) = r.next_frame()? {
            for rec in f.records() {
                if let Some(k) = rec.key {
                    if let Some(last) = need.get_mut(&hash_of(&[k])) {
                        *last = Some(rec.offset);
                    }
                }
            }
        }
        ambiguous = unmatched.iter().any(|&(i, after)| {
            let l = &landed[i];
            let exempt = l.tombstone || (deleted_before && after.is_none());
            !exempt
                && l.key.is_some_and(|k| {
                    need.get(&k)
                        .copied()
                        .flatten()
                        .is_none_or(|o| after.is_some_and(|a| o <= a))
                })
        });
    }
    if ambiguous {
        return Ok((
            start,
            Some(format!(
                "compaction or retention removed records sent after the checkpoint, and the {} \
                 records that landed in Kafka since do not match what is left: sending again \
                 from offset {start} (Kafka may hold some of them twice)",
                landed.len()
            )),
        ));
    }
    Ok((next, None))
}

/// Reads Kafka partition `p` from `from` to its end: how many records were found (and, with
/// `keep`, what resuming needs of each), and the next offset after the last one (`from`
/// when none).
fn landed_since(
    cluster: &Cluster,
    topic: &str,
    p: u32,
    from: u64,
    keep: bool,
) -> Result<(u64, Vec<Landed>, u64)> {
    let c = read::consumer(cluster)?;
    let (lo, _) = read::watermarks(cluster, &c, topic, p)?;
    let from = from.max(lo);
    read::assign(&c, topic, &[(p, from)])?;
    let mut pos = Positions::default();
    pos.start(p, from, lo);
    let (mut n, mut kept) = (0, Vec::new());
    loop {
        match read::poll(&c, POLL)? {
            Polled::Message(m) => {
                let o = m.offset().max(0) as u64;
                if pos.on_record(cluster, &c, topic, p, o)? == Verdict::Deliver {
                    n += 1;
                    if keep {
                        let headers = m.headers();
                        let hs = headers.iter().flat_map(|hs| hs.iter());
                        kept.push(landed_of(
                            m.key(),
                            m.payload(),
                            hs.map(|h| (h.key.as_bytes(), h.value.unwrap_or_default())),
                        ));
                    }
                }
            }
            Polled::Eof(q) if q == p => {
                if pos.on_eof(cluster, &c, topic, p)? {
                    return Ok((n, kept, pos.next(p).unwrap_or(from)));
                }
            }
            Polled::Eof(_) => {}
            Polled::Nothing => {
                pos.tick(cluster, &c, topic)?;
                if pos.quiet(p) {
                    return Ok((n, kept, pos.next(p).unwrap_or(from)));
                }
            }
        }
    }
}

struct Reports {
    /// Per partition: (next local offset, next Kafka offset) of the last delivered record.
    delivered: BTreeMap<u32, Pair>,
    failed: Option<String>,
}

struct Ctx {
    reports: Mutex<Reports>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    /// The record's local offset.
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, local: usize) {
        let mut rep = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(m) => {
                let pair = Pair {
                    local: local as u64 + 1,
                    kafka: m.offset().max(0) as u64 + 1,
                };
                rep.delivered.insert(m.partition().max(0) as u32, pair);
            }
            Err((e, m)) => {
                rep.failed.get_or_insert(format!(
                    "partition {} offset {local}: not acknowledged by Kafka: {e}",
                    m.partition()
                ));
            }
        }
    }
}

/// Local topic → Kafka.
pub fn to_kafka(j: &Job<'_>) -> Result<()> {
    let log = Log::new(j.dir);
    let cfg = log.topic_config(j.topic)?;
    let n = cfg.partitions;
    let producer: BaseProducer<Ctx> = j
        .cluster
        .producer_config()
        .create_with_context(Ctx {
            reports: Mutex::new(Reports {
                delivered: BTreeMap::new(),
                failed: None,
            }),
        })
        .map_err(|e| setup(format!("Kafka producer: {e}")))?;
    match j.cluster.partitions(producer.client(), j.to_topic)? {
        None => j.cluster.create_topic(j.to_topic, n)?,
        Some(k) if k != n => {
            return Err(setup(format!(
                "Kafka topic {:?} has {k} partitions and {:?} has {n}: a mirror keeps partition numbers",
                j.to_topic, j.topic
            )))
        }
        Some(_) => {}
    }
    let path = checkpoint_path(j.dir, &format!("{}.to-kafka.{}", j.topic, j.to_topic));
    let mut ck = load(&path)?;
    ck.source = j.topic.to_string();
    ck.destination = format!("{}/{}", j.cluster.url, j.to_topic);
    // Where each partition resumes: past what landed since the checkpoint.
    let mut readers = Vec::new();
    for p in 0..n {
        let mut r = PartitionReader::open(&log.partition_dir(j.topic, p)?)?;
        let pair = match ck.partitions.get(&p) {
            Some(pair) => *pair,
            None => Pair {
                local: r.earliest(),
                kafka: 0,
            },
        };
        let (landed, _, kafka_end) = landed_since(j.cluster, j.to_topic, p, pair.kafka, false)?;
        let next_local = match dense_resume(&mut r, pair.local, landed)? {
            Dense::At(next) => next,
            Dense::Short => {
                return Err(Error::Data(format!(
                    "partition {p}: Kafka holds {landed} records past the checkpoint, more than the local log has: another writer? ({})",
                    path.display()
                )))
            }
            Dense::Thinned => {
                // Read again, keeping what each landed record is (only in this rare case,
                // so memory does not grow with the topic otherwise).
                let (_, kept, _) = landed_since(j.cluster, j.to_topic, p, pair.kafka, true)?;
                let (next, warning) = matched_resume(&mut r, pair.local, &kept)?;
                if let Some(w) = warning {
                    cli::note(false, "logd mirror", &format!("partition {p}: {w}"));
                }
                next
            }
        };
        r.seek(next_local)?;
        let end = r.end_offset()?;
        ck.partitions.insert(
            p,
            Pair {
                local: next_local,
                kafka: kafka_end,
            },
        );
        readers.push((p, r, end));
    }
    save(&path, &ck)?;
    if j.follow {
        signals::install_stop_handler();
    }
    let started = Instant::now();
    let mut sent = 0u64;
    let mut last_ck = Instant::now();
    let checkpoint =
        |ck: &mut Checkpoint, producer: &BaseProducer<Ctx>, wait: bool| -> Result<()> {
            if wait {
                producer.flush(Duration::from_secs(65)).map_err(|e| {
                    Error::Data(format!("waiting for Kafka's acknowledgements: {e}"))
                })?;
            } else {
                producer.poll(Duration::ZERO);
            }
            let rep = producer
                .context()
                .reports
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(f) = &rep.failed {
                return Err(Error::Data(f.clone()));
            }
            let mut changed = false;
            for (p, pair) in &rep.delivered {
                if ck.partitions.get(p) != Some(pair) {
                    ck.partitions.insert(*p, *pair);
                    changed = true;
                }
            }
            drop(rep);
            if changed {
                save(&path, ck)?;
            }
            Ok(())
        };
    loop {
        let mut progressed = false;
        for (p, r, end) in readers.iter_mut() {
            loop {
                if !j.follow && r.position() >= *end {
                    break;
                }
                let Some(f) = r.next_frame()? else { break };
                progressed = true;
                for rec in f.records() {
                    if !j.follow && rec.offset >= *end {
                        break;
                    }
                    let headers = super::client::to_kafka_headers(&rec);
                    let mut br: BaseRecord<'_, [u8], [u8], usize> =
                        BaseRecord::with_opaque_to(j.to_topic, rec.offset as usize)
                            .partition(*p as i32)
                            .payload(rec.value)
                            .timestamp(rec.timestamp);
                    if let Some(k) = rec.key {
                        br = br.key(k);
                    }
                    if let Some(h) = headers {
                        br = br.headers(h);
                    }
                    loop {
                        match producer.send(br) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                back,
                            )) => {
                                br = back;
                                producer.poll(Duration::from_millis(10));
                            }
                            Err((e, _)) => {
                                return Err(Error::Data(format!(
                                    "partition {p} offset {}: not sent to Kafka: {e}",
                                    rec.offset
                                )))
                            }
                        }
                    }
                    sent += 1;
                }
                if last_ck.elapsed() >= CHECKPOINT_EVERY {
                    checkpoint(&mut ck, &producer, false)?;
                    last_ck = Instant::now();
                }
            }
        }
        if !j.follow || signals::stop_requested() {
            break;
        }
        if !progressed {
            checkpoint(&mut ck, &producer, true)?;
            std::thread::sleep(POLL);
        }
    }
    checkpoint(&mut ck, &producer, true)?;
    summary(
        j,
        sent,
        started,
        "to",
        &format!("{}/{}", j.cluster.url, j.to_topic),
    );
    Ok(())
}

fn summary(j: &Job<'_>, n: u64, started: Instant, dir: &str, dest: &str) {
    cli::note(
        j.quiet,
        "logd mirror",
        &format!(
            "{n} records of {} copied {dir} {dest} in {:.2} s",
            j.topic,
            started.elapsed().as_secs_f64()
        ),
    );
}

/// Kafka topic → local topic.
pub fn from_kafka(j: &Job<'_>) -> Result<()> {
    let log = Log::new(j.dir);
    crate::server::owner::refuse_if_served(log.root(), "logd mirror")?;
    let c = read::consumer(j.cluster)?;
    let n = j
        .cluster
        .partitions(c.client(), j.topic)?
        .ok_or_else(|| setup(format!("no topic {:?} at {}", j.topic, j.cluster.url)))?;
    if !log.topic_exists(j.to_topic)? {
        log.create_topic(j.to_topic, &TopicConfig::new(n))?;
    }
    let cfg = log.topic_config(j.to_topic)?;
    if cfg.partitions != n {
        return Err(setup(format!(
            "local topic {:?} has {} partitions and Kafka's {:?} has {n}: a mirror keeps partition numbers",
            j.to_topic, cfg.partitions, j.topic
        )));
    }
    let path = checkpoint_path(j.dir, &format!("{}.from-kafka.{}", j.to_topic, j.topic));
    let mut ck = load(&path)?;
    ck.source = format!("{}/{}", j.cluster.url, j.topic);
    ck.destination = j.to_topic.to_string();
    let mut writers = Vec::new();
    let mut pos = Positions::default();
    let mut skip = BTreeMap::new();
    let mut assign = Vec::new();
    for p in 0..n {
        let w = PartitionWriter::open(
            &log.partition_dir(j.to_topic, p)?,
            &cfg,
            FsyncMode::Batch,
            false,
        )?;
        for note in &w.recovery {
            cli::note(j.quiet, "logd mirror", &format!("partition {p}: {note}"));
        }
        let end = w.next_offset();
        let (lo, _) = read::watermarks(j.cluster, &c, j.topic, p)?;
        let pair = ck.partitions.get(&p).copied().unwrap_or(Pair {
            local: end,
            kafka: lo,
        });
        // Appended here after the checkpoint: that many Kafka records are already copied.
        skip.insert(p, end.saturating_sub(pair.local));
        ck.partitions.insert(p, pair);
        pos.start(p, pair.kafka, lo);
        assign.push((p, pair.kafka.max(lo)));
        writers.push(w);
    }
    // The starting pairs are on disk before the first record is copied, so a kill before the
    // first periodic checkpoint is resumed like any other.
    save(&path, &ck)?;
    read::assign(&c, j.topic, &assign)?;
    if j.follow {
        signals::install_stop_handler();
    }
    let started = Instant::now();
    let mut copied = 0u64;
    let mut at_end = std::collections::BTreeSet::new();
    let mut last_ck = Instant::now();
    let mut headers = Vec::new();
    // The checkpoint follows the data: written after the records it covers are fsynced.
    let sync_and_save =
        |writers: &mut Vec<PartitionWriter>, ck: &mut Checkpoint, pos: &Positions| -> Result<()> {
            for (p, w) in writers.iter_mut().enumerate() {
                w.sync()?;
                if let Some(k) = pos.next(p as u32) {
                    ck.partitions.insert(
                        p as u32,
                        Pair {
                            local: w.next_offset(),
                            kafka: k,
                        },
                    );
                }
            }
            save(&path, ck)
        };
    loop {
        if signals::stop_requested() || (!j.follow && at_end.len() == n as usize) {
            break;
        }
        match read::poll(&c, POLL)? {
            Polled::Message(m) => {
                let p = m.partition().max(0) as u32;
                let o = m.offset().max(0) as u64;
                if pos.on_record(j.cluster, &c, j.topic, p, o)? == Verdict::Drop {
                    continue;
                }
                at_end.remove(&p);
                if let Some(s) = skip.get_mut(&p).filter(|s| **s > 0) {
                    *s -= 1;
                    continue;
                }
                let (header_count, json) = super::client::from_kafka(&m, &mut headers);
                writers[p as usize].append(&RecordRef {
                    timestamp: super::client::timestamp(&m),
                    key: m.key(),
                    value: m.payload().unwrap_or_default(),
                    headers: &headers,
                    header_count,
                    value_is_json: json,
                })?;
                copied += 1;
            }
            Polled::Eof(p) => {
                if pos.on_eof(j.cluster, &c, j.topic, p)? {
                    at_end.insert(p);
                }
            }
            Polled::Nothing => {
                pos.tick(j.cluster, &c, j.topic)?;
                for p in 0..n {
                    if pos.quiet(p) {
                        at_end.insert(p);
                    }
                }
            }
        }
        if last_ck.elapsed() >= CHECKPOINT_EVERY {
            sync_and_save(&mut writers, &mut ck, &pos)?;
            last_ck = Instant::now();
        }
    }
    sync_and_save(&mut writers, &mut ck, &pos)?;
    for w in writers {
        w.close()?;
    }
    summary(
        j,
        copied,
        started,
        "from",
        &format!("{}/{}", j.cluster.url, j.topic),
    );
    Ok(())
}

/// `logd mirror` from its flags: which side is Kafka decides the direction.
#[allow(clippy::too_many_arguments)]
pub fn run(
    log_dir: &Path,
    from: Option<&str>,
    to: Option<&str>,
    topic: &str,
    to_topic: Option<&str>,
    follow: bool,
    timeout: Duration,
    quiet: bool,
) -> Result<()> {
    names::validate("topic", topic)?;
    let to_topic = to_topic.unwrap_or(topic);
    names::validate("topic", to_topic)?;
    let is_kafka = |s: Option<&str>| s.is_some_and(|s| s.starts_with("kafka://"));
    let dir_of = |s: Option<&str>| {
        s.map(PathBuf::from)
            .unwrap_or_else(|| log_dir.to_path_buf())
    };
    match (is_kafka(from), is_kafka(to)) {
        (false, true) => {
            let cluster = Cluster::parse(to.unwrap_or_default(), timeout)?;
            let dir = dir_of(from);
            to_kafka(&Job {
                dir: &dir,
                cluster: &cluster,
                topic,
                to_topic,
                follow,
                quiet,
            })
        }
        (true, false) => {
            let cluster = Cluster::parse(from.unwrap_or_default(), timeout)?;
            let dir = dir_of(to);
            from_kafka(&Job {
                dir: &dir,
                cluster: &cluster,
                topic,
                to_topic,
                follow,
                quiet,
            })
        }
        _ => Err(usage(
            "mirror: one of --from and --to is kafka://HOST:PORT, the other a log directory (default --log)",
        )),
    }
}
