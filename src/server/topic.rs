//! One writer thread per served topic: it owns the topic's partition writers (and so their
//! locks), and turns the produce requests queued since its last round into one group
//! commit: every batch's records are appended, each touched partition is synced once, and
//! only then is every batch of the round acknowledged. One fdatasync serves many requests.
//!
//! Between rounds (at least every second) it does the background work of a long-lived
//! writer: rolling segments by age, retention, moving recovery checkpoints, and taking up
//! topic settings changed with `logd topics alter`.

use crate::error::{Error, Result};
use crate::log::format::RecordRef;
use crate::log::partitioner::partition_for_key;
use crate::log::{FsyncMode, Log, PartitionWriter};
use crate::record::time::now_ms;
use crate::server::journal::{Entry, Journal, Range};
use crate::server::metrics::{Metrics, TopicCounters};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Requests waiting for the writer; past this, produce answers 503 (back-pressure).
const QUEUE: usize = 4096;
/// A round stops taking requests past this many records (bounds acknowledgement latency).
const ROUND_RECORDS: usize = 200_000;
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// A record parsed from a request body, owning its bytes.
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub ts: i64,
    pub value: Vec<u8>,
    pub json: bool,
    pub headers: Vec<u8>,
    pub header_count: u32,
}

impl Rec {
    fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            timestamp: self.ts,
            key: self.key.as_deref(),
            value: &self.value,
            headers: &self.headers,
            header_count: self.header_count,
            value_is_json: self.json,
        }
    }
}

pub struct Batch {
    pub records: Vec<Rec>,
    pub partition: Option<u32>,
    /// (Producer-Id, Producer-Seq) for idempotent retries.
    pub producer: Option<(String, u64)>,
    pub reply: oneshot::Sender<Result<Ack, String>>,
}

#[derive(Debug)]
pub struct Ack {
    pub ranges: Vec<Range>,
    /// A retry of a batch that had already landed (nothing appended again).
    pub duplicate: bool,
}

pub struct TopicHandle {
    pub name: String,
    pub partitions: u32,
    tx: Mutex<Option<SyncSender<Batch>>>,
    /// Bumped after every round: followers wake and read.
    pub appended: watch::Sender<u64>,
    pub counters: Arc<TopicCounters>,
    /// Each partition's end offset (next offset), as written.
    pub ends: Vec<std::sync::atomic::AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

pub enum SendError {
    Busy,
    Stopped,
}

impl TopicHandle {
    /// Opens (recovering) every partition of an existing topic and starts its writer.
    /// Returns what recovery did, for the server's log.
    pub fn start(
        log: &Log,
        name: &str,
        fsync: FsyncMode,
        metrics: Arc<Metrics>,
        quiet: bool,
    ) -> Result<(Arc<TopicHandle>, Vec<String>)> {
        let cfg = log.topic_config(name)?;
        let mut writers = Vec::new();
        let mut notes = Vec::new();
        for p in 0..cfg.partitions {
            let mut w = PartitionWriter::open(&log.partition_dir(name, p)?, &cfg, fsync, false)?;
            for n in std::mem::take(&mut w.recovery) {
                notes.push(format!("{name}/{p}: {n}"));
            }
            writers.push(w);
        }
        let ends: Vec<u64> = writers.iter().map(|w| w.next_offset()).collect();
        let journal =
            Journal::open(log.root(), name, &ends, now_ms()).map_err(Error::io_with(|| {
                format!("opening the producer journal of {name}")
            }))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let counters = metrics.topic(name);
        let h = Arc::new(TopicHandle {
            name: name.to_string(),
            partitions: cfg.partitions,
            tx: Mutex::new(Some(tx)),
            appended: watch::channel(0).0,
            counters,
            ends: ends
                .iter()
                .map(|e| std::sync::atomic::AtomicU64::new(*e))
                .collect(),
            thread: Mutex::new(None),
        });
        let rr = ends
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| **e)
            .map_or(0, |(i, _)| i as u32);
        let mut tw = TopicWriter {
            log: log.clone(),
            handle: h.clone(),
            writers,
            journal,
            fsync,
            rr,
            metrics,
            failed: None,
            quiet,
        };
        let t = std::thread::Builder::new()
            .name(format!("write-{name}"))
            .spawn(move || tw.run(rx))
            .map_err(|e| Error::io("starting a writer thread", e))?;
        *h.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        Ok((h, notes))
    }

    pub fn send(&self, b: Batch) -> std::result::Result<(), SendError> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            return Err(SendError::Stopped);
        };
        tx.try_send(b).map_err(|e| match e {
            TrySendError::Full(_) => SendError::Busy,
            TrySendError::Disconnected(_) => SendError::Stopped,
        })
    }

    /// Stops taking requests, lets the writer finish the queued ones, sync and close.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

struct TopicWriter {
    log: Log,
    handle: Arc<TopicHandle>,
    writers: Vec<PartitionWriter>,
    journal: Journal,
    fsync: FsyncMode,
    /// Partition for the next batch's unkeyed records (round-robin by batch).
    rr: u32,
    metrics: Arc<Metrics>,
    /// Set by the first write or sync error: every later request is refused (no retry after
    /// a failed fsync; a restart recovers from the log).
    failed: Option<String>,
    quiet: bool,
}

/// What becomes of a batch in a round.
enum Planned {
    Append(Plan),
    /// Answered now (a retry of a batch that landed earlier, or a refused sequence).
    Answer(Batch, Result<Ack, String>),
    /// A retry of a batch appended in this same round: answered with it.
    Deferred(Batch, Vec<Range>),
}

/// One batch's plan: its records by partition, and what its journal entry will say.
struct Plan {
    batch: Batch,
    /// (partition, index in batch.records) in append order.
    order: Vec<(u32, usize)>,
    entry: Option<Entry>,
    ranges: Vec<Range>,
}

impl TopicWriter {
    fn run(&mut self, rx: Receiver<Batch>) {
        let mut last_maintain = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut checkpointed: Vec<u64> = self.writers.iter().map(|w| w.next_offset()).collect();
        loop {
            let first = match rx.recv_timeout(MAINTAIN_EVERY) {
                Ok(b) => Some(b),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut round = vec![first];
                let mut n = round[0].records.len();
                // `always`: one request per round, each synced on its own.
                while self.fsync != FsyncMode::Always && n < ROUND_RECORDS {
                    match rx.try_recv() {
                        Ok(b) => {
                            n += b.records.len();
                            round.push(b);
                        }
                        Err(_) => break,
                    }
                }
                self.round(round);
            }
            if last_maintain.elapsed() >= MAINTAIN_EVERY && self.failed.is_none() {
                last_maintain = Instant::now();
                self.maintain();
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY && self.failed.is_none() {
                last_checkpoint = Instant::now();
                let mut err = None;
                for (p, w) in self.writers.iter_mut().enumerate() {
                    if w.next_offset() != checkpointed[p] {
                        match w.checkpoint() {
                            Ok(()) => {
                                checkpointed[p] = w.next_offset();
                                self.metrics.fsyncs.fetch_add(1, Relaxed);
                            }
                            Err(e) => {
                                err = Some(e);
                                break;
                            }
                        }
                    }
                }
                if let Some(e) = err {
                    self.fail(e);
                }
            }
        }
        for w in self.writers.drain(..) {
            if let Err(e) = w.close() {
                eprintln!("logd serve: closing {}: {e}", self.handle.name);
            }
        }
    }

    fn fail(&mut self, e: Error) {
        let m = format!(
            "the writer of topic {} stopped after an I/O error ({e}); restart the server to recover",
            self.handle.name
        );
        eprintln!("logd serve: {m}");
        self.failed.get_or_insert(m);
    }

    fn maintain(&mut self) {
        if let Ok(cfg) = self.log.topic_config(&self.handle.name) {
            for w in &mut self.writers {
                w.set_config(&cfg);
            }
        }
        let now = now_ms();
        let mut err = None;
        for w in &mut self.writers {
            match w.maintain(now) {
                Ok(msgs) => {
                    for m in msgs.iter().filter(|_| !self.quiet) {
                        eprintln!("logd serve: {}: {m}", self.handle.name);
                    }
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = err {
            self.fail(e);
        }
    }

    /// `this_round`: producers whose batch is already planned in this round.
    fn plan(
        &mut self,
        batch: Batch,
        next: &mut [u64],
        this_round: &mut std::collections::HashSet<String>,
    ) -> Planned {
        let n = self.handle.partitions;
        let mut previous: Option<Entry> = None;
        if let Some((pid, seq)) = &batch.producer {
            if let Some(e) = self.journal.last.get(pid) {
                if *seq < e.seq {
                    let msg = format!(
                        "Producer-Seq {seq} is older than this producer's last batch ({})",
                        e.seq
                    );
                    return Planned::Answer(batch, Err(msg));
                }
                if *seq == e.seq {
                    if this_round.contains(pid) {
                        let ranges = e.ranges.clone();
                        return Planned::Deferred(batch, ranges);
                    }
                    previous = Some(e.clone());
                }
            }
        }
        let unkeyed = match &previous {
            Some(e) => e.unkeyed,
            None => {
                let u = self.rr;
                self.rr = (self.rr + 1) % n;
                u
            }
        };
        let mut landed = vec![0u64; n as usize];
        if let Some(e) = &previous {
            for r in &e.ranges {
                if let Some(l) = landed.get_mut(r.partition as usize) {
                    *l += r.count;
                }
            }
        }
        let mut seen = vec![0u64; n as usize];
        let mut order = Vec::with_capacity(batch.records.len());
        for (i, r) in batch.records.iter().enumerate() {
            let p = match (batch.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, n),
                (None, None) => unkeyed,
            };
            seen[p as usize] += 1;
            if seen[p as usize] > landed[p as usize] {
                order.push((p, i));
            }
        }
        let mut ranges = previous
            .as_ref()
            .map_or_else(Vec::new, |e| e.ranges.clone());
        let mut counts = vec![0u64; n as usize];
        for (p, _) in &order {
            counts[*p as usize] += 1;
        }
        for (p, c) in counts.iter().enumerate() {
            if *c > 0 {
                ranges.push(Range {
                    partition: p as u32,
                    first: next[p],
                    count: *c,
                });
                next[p] += c;
            }
        }
        if previous.is_some() && order.is_empty() {
            self.metrics.duplicates.fetch_add(1, Relaxed);
            let ack = Ok(Ack {
                ranges,
                duplicate: true,
            });
            return Planned::Answer(batch, ack);
        }
        let entry = batch.producer.as_ref().map(|(pid, seq)| Entry {
            producer: pid.clone(),
            seq: *seq,
            unkeyed,
            ranges: ranges.clone(),
            at_ms: now_ms(),
        });
        if let Some(e) = &entry {
            // Later batches of this round see this one (a retry racing its original).
            this_round.insert(e.producer.clone());
            self.journal.last.insert(e.producer.clone(), e.clone());
        }
        Planned::Append(Plan {
            batch,
            order,
            entry,
            ranges,
        })
    }

    fn round(&mut self, round: Vec<Batch>) {
        if let Some(m) = &self.failed {
            for b in round {
                let _ = b.reply.send(Err(m.clone()));
            }
            return;
        }
        let mut next: Vec<u64> = self.writers.iter().map(|w| w.next_offset()).collect();
        let mut plans = Vec::with_capacity(round.len());
        let mut deferred = Vec::new();
        let mut this_round = std::collections::HashSet::new();
        for b in round {
            match self.plan(b, &mut next, &mut this_round) {
                Planned::Append(p) => plans.push(p),
                Planned::Answer(b, answer) => {
                    let _ = b.reply.send(answer);
                }
                Planned::Deferred(b, ranges) => deferred.push((b, ranges)),
            }
        }
        if plans.is_empty() {
            return;
        }
        // The journal entries go first: whenever records can have survived, so have they.
        let entries: Vec<Entry> = plans.iter().filter_map(|p| p.entry.clone()).collect();
        let has_entries = !entries.is_empty();
        match self
            .journal
            .record(entries, self.fsync != FsyncMode::Never, now_ms())
        {
            Err(e) => self.fail(Error::io("writing the producer journal", e)),
            Ok(()) => {
                if has_entries && self.fsync != FsyncMode::Never {
                    self.metrics.fsyncs.fetch_add(1, Relaxed);
                }
                if let Err(e) = self.append(&plans) {
                    self.fail(e);
                }
            }
        }
        let c = &self.handle.counters;
        for p in plans {
            let answer = match &self.failed {
                Some(m) => Err(m.clone()),
                None => {
                    c.records_in.fetch_add(p.order.len() as u64, Relaxed);
                    let bytes: usize = p
                        .order
                        .iter()
                        .map(|(_, i)| p.batch.records[*i].value.len())
                        .sum();
                    c.bytes_in.fetch_add(bytes as u64, Relaxed);
                    Ok(Ack {
                        ranges: p.ranges,
                        duplicate: false,
                    })
                }
            };
            let _ = p.batch.reply.send(answer);
        }
        for (b, ranges) in deferred {
            let answer = match &self.failed {
                Some(m) => Err(m.clone()),
                None => {
                    self.metrics.duplicates.fetch_add(1, Relaxed);
                    Ok(Ack {
                        ranges,
                        duplicate: true,
                    })
                }
            };
            let _ = b.reply.send(answer);
        }
    }

    fn append(&mut self, plans: &[Plan]) -> Result<()> {
        let mut touched = vec![false; self.writers.len()];
        for plan in plans {
            for (p, i) in &plan.order {
                self.writers[*p as usize].append(&plan.batch.records[*i].as_ref())?;
                touched[*p as usize] = true;
            }
        }
        for (p, w) in self.writers.iter_mut().enumerate() {
            if touched[p] {
                w.flush()?;
                self.handle.ends[p].store(w.next_offset(), Relaxed);
            }
        }
        self.handle.appended.send_modify(|v| *v += 1);
        if self.fsync != FsyncMode::Never {
            for (p, w) in self.writers.iter_mut().enumerate() {
                if touched[p] {
                    w.sync()?;
                    self.metrics.fsyncs.fetch_add(1, Relaxed);
                }
            }
        }
        Ok(())
    }
}
