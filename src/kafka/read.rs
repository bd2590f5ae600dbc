//! Reading Kafka partitions: a consumer, positions resolved as the local log resolves them
//! (earliest, latest, OFFSET, -N, @TIME by ListOffsets), and messages turned into records.
//!
//! The broker is not trusted to start a fetch exactly where asked: `Positions` checks the
//! first record after every (re)positioning. A fetch that starts past the wanted offset (a
//! broker that answers a fetch inside a record batch with the next batch, as tansu 0.6 does)
//! is moved back and the records before the wanted offset are dropped, so nothing is skipped;
//! records delivered twice are dropped too. Against Apache Kafka the first record is the
//! wanted one and none of this costs anything, but at a partition's end (one short re-read).

use super::Cluster;
use crate::cmd::consume::Start;
use crate::error::{setup, Error, Result};
use crate::log::format::Record;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::BTreeMap;

/// A plain consumer (no group) for assigned partitions.
pub fn consumer(cluster: &Cluster) -> Result<BaseConsumer> {
    consumer_with(cluster, None, rdkafka::consumer::DefaultConsumerContext)
}

/// A consumer; with `group`, a member of that Kafka consumer group (commits are ours).
pub fn consumer_with<C: ConsumerContext + ClientContext>(
    cluster: &Cluster,
    group: Option<(&str, &str)>,
    ctx: C,
) -> Result<BaseConsumer<C>> {
    let mut cfg = cluster.config();
    cfg.set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Larger fetches than the default: records are small and many.
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.max.messages.kbytes", "262144")
        // The end of a partition is known when a fetch comes back empty: do not wait long.
        .set("fetch.wait.max.ms", "100");
    match group {
        Some((g, reset)) => cfg.set("group.id", g).set("auto.offset.reset", reset),
        // librdkafka wants a group id even for assigned partitions; nothing joins or commits
        // under this one.
        None => cfg.set("group.id", format!("kappa-assign-{}", std::process::id())),
    };
    cfg.create_with_context(ctx)
        .map_err(|e| setup(format!("Kafka consumer: {e}")))
}

/// Low and high watermarks of a partition (the high one is the next offset to be written).
pub fn watermarks<C: ConsumerContext>(
    cluster: &Cluster,
    c: &BaseConsumer<C>,
    topic: &str,
    p: u32,
) -> Result<(u64, u64)> {
    let (lo, hi) = c
        .fetch_watermarks(topic, p as i32, cluster.timeout)
        .map_err(|e| cluster.unreachable("reading the partition's offsets", e))?;
    Ok((lo.max(0) as u64, hi.max(0) as u64))
}

/// The first offset at or after time `t` in each of `parts` (the high watermark where no
/// record is that late).
pub fn offsets_for_time<C: ConsumerContext>(
    cluster: &Cluster,
    c: &BaseConsumer<C>,
    topic: &str,
    parts: &[u32],
    t: i64,
) -> Result<Vec<u64>> {
    let mut tpl = TopicPartitionList::new();
    for &p in parts {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(t))
            .map_err(|e| setup(format!("offsets by time: {e}")))?;
    }
    let got = c
        .offsets_for_times(tpl, cluster.timeout)
        .map_err(|e| cluster.unreachable("looking up offsets by time", e))?;
    let mut out = Vec::with_capacity(parts.len());
    for &p in parts {
        let e = got
            .find_partition(topic, p as i32)
            .ok_or_else(|| Error::Data(format!("no offset by time for partition {p}")))?;
        out.push(match e.offset() {
            Offset::Offset(o) => o.max(0) as u64,
            _ => watermarks(cluster, c, topic, p)?.1,
        });
    }
    Ok(out)
}

/// Where `start` is in partition `p` now.
pub(crate) fn resolve<C: ConsumerContext>(
    cluster: &Cluster,
    c: &BaseConsumer<C>,
    topic: &str,
    p: u32,
    start: &Start,
) -> Result<u64> {
    let (lo, hi) = watermarks(cluster, c, topic, p)?;
    Ok(match start {
        Start::Earliest => lo,
        Start::Latest => hi,
        Start::Offset(o) => *o,
        Start::Last(n) => hi.saturating_sub(*n).max(lo),
        Start::Time(t) => offsets_for_time(cluster, c, topic, &[p], *t)?[0],
    })
}

/// Assigns exactly `parts` at their offsets.
pub fn assign<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    topic: &str,
    parts: &[(u32, u64)],
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in parts {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(o as i64))
            .map_err(|e| setup(format!("assigning partition {p}: {e}")))?;
    }
    c.assign(&tpl)
        .map_err(|e| setup(format!("assigning partitions: {e}")))
}

/// A message's parts as a record; `headers` is scratch space that the record borrows.
pub fn record<'m>(m: &'m BorrowedMessage<'_>, headers: &'m mut Vec<u8>) -> Record<'m> {
    let (n, json) = super::client::from_kafka(m, headers);
    Record::from_parts(
        m.offset().max(0) as u64,
        super::client::timestamp(m),
        m.key(),
        m.payload().unwrap_or_default(),
        json,
        headers,
        n,
    )
}

/// An error a poll returned: end of a partition is not one (the caller asked for them).
pub enum Polled<'a> {
    Message(BorrowedMessage<'a>),
    Eof(u32),
    Nothing,
}

pub fn poll<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    wait: std::time::Duration,
) -> Result<Polled<'_>> {
    match c.poll(wait) {
        None => Ok(Polled::Nothing),
        Some(Ok(m)) => Ok(Polled::Message(m)),
        Some(Err(KafkaError::PartitionEOF(p))) => Ok(Polled::Eof(p.max(0) as u32)),
        Some(Err(e)) if is_transient(&e) => Ok(Polled::Nothing),
        Some(Err(e)) => Err(Error::Data(format!("reading from Kafka: {e}"))),
    }
}

/// Errors librdkafka reports but recovers from by itself (a broker connection lost and
/// re-established, all brokers down for a moment).
fn is_transient(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::BrokerTransportFailure | C::AllBrokersDown | C::OperationTimedOut)
    )
}

/// How far back the first re-fetch goes; each further one goes four times as far.
const FIRST_STEP: u64 = 256;

/// Where each partition is wanted to continue, and whether the fetch has reached it.
#[derive(Default)]
pub struct Positions {
    parts: BTreeMap<u32, Pos>,
}

struct Pos {
    /// The next offset to deliver.
    want: u64,
    /// The low watermark: no record is before it.
    lo: u64,
    /// Where the last seek went.
    at: u64,
    step: u64,
    /// A record at or before `want` has come since the last seek.
    settled: bool,
    /// When the last seek was made.
    since: std::time::Instant,
    /// When the last record was delivered (or the partition positioned).
    delivered: std::time::Instant,
}

/// A partition from which nothing was delivered for this long is taken as read to its end,
/// even if the broker never reported the end (tansu 0.6 reports a high watermark short of
/// the last record, so librdkafka's end-of-partition event may never come there).
pub const QUIET: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a fetch may bring nothing before it is taken for one that began past the end of
/// what the broker will serve (a broker that answers neither records nor an end there).
const STALL: std::time::Duration = std::time::Duration::from_millis(1000);

/// What to do with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Before the wanted offset, or a repeat.
    Drop,
}

impl Positions {
    /// Partition `p` is (re)positioned at `want`.
    pub fn start(&mut self, p: u32, want: u64, lo: u64) {
        self.parts.insert(
            p,
            Pos {
                want,
                lo,
                at: want,
                step: FIRST_STEP,
                settled: want <= lo,
                since: std::time::Instant::now(),
                delivered: std::time::Instant::now(),
            },
        );
    }

    /// Nothing was delivered from `p` for `QUIET`.
    pub fn quiet(&self, p: u32) -> bool {
        self.parts
            .get(&p)
            .is_some_and(|x| x.delivered.elapsed() >= QUIET)
    }

    pub fn knows(&self, p: u32) -> bool {
        self.parts.contains_key(&p)
    }

    pub fn forget_all(&mut self) {
        self.parts.clear();
    }

    /// The next offset of `p` to deliver.
    pub fn next(&self, p: u32) -> Option<u64> {
        self.parts.get(&p).map(|x| x.want)
    }

    /// Judges a record of `p` at `offset`; a fetch that began past the wanted offset is
    /// moved back first.
    pub fn on_record<C: ConsumerContext>(
        &mut self,
        cluster: &Cluster,
        c: &BaseConsumer<C>,
        topic: &str,
        p: u32,
        offset: u64,
    ) -> Result<Verdict> {
        let Some(x) = self.parts.get_mut(&p) else {
            return Ok(Verdict::Deliver);
        };
        if !x.settled {
            if offset <= x.want || x.at <= x.lo {
                x.settled = true;
            } else {
                rewind(cluster, c, topic, p, x)?;
                return Ok(Verdict::Drop);
            }
        }
        if offset < x.want {
            return Ok(Verdict::Drop);
        }
        x.want = offset + 1;
        x.delivered = std::time::Instant::now();
        Ok(Verdict::Deliver)
    }

    /// The end of `p` was reported: true when it is really read to its end (a fetch that
    /// came back empty where records were wanted is moved back once more first).
    pub fn on_eof<C: ConsumerContext>(
        &mut self,
        cluster: &Cluster,
        c: &BaseConsumer<C>,
        topic: &str,
        p: u32,
    ) -> Result<bool> {
        let Some(x) = self.parts.get_mut(&p) else {
            return Ok(true);
        };
        if x.settled || x.at <= x.lo {
            x.settled = true;
            return Ok(true);
        }
        rewind(cluster, c, topic, p, x)?;
        Ok(false)
    }
}

impl Positions {
    /// Moves back the partitions whose fetch has brought nothing for a while.
    pub fn tick<C: ConsumerContext>(
        &mut self,
        cluster: &Cluster,
        c: &BaseConsumer<C>,
        topic: &str,
    ) -> Result<()> {
        for (&p, x) in self.parts.iter_mut() {
            if !x.settled && x.at > x.lo && x.since.elapsed() >= STALL {
                rewind(cluster, c, topic, p, x)?;
            }
        }
        Ok(())
    }
}

fn rewind<C: ConsumerContext>(
    cluster: &Cluster,
    c: &BaseConsumer<C>,
    topic: &str,
    p: u32,
    x: &mut Pos,
) -> Result<()> {
    x.at = x.want.saturating_sub(x.step).max(x.lo);
    x.step = x.step.saturating_mul(4);
    x.since = std::time::Instant::now();
    c.seek(
        topic,
        p as i32,
        Offset::Offset(x.at as i64),
        cluster.timeout,
    )
    .map_err(|e| cluster.unreachable("moving back in the partition", e))
}

/// Where a partition's range ends.
#[derive(Clone, Copy, Debug)]
pub enum RangeEnd {
    /// Where the reader catches up with the partition (its end when read, as locally).
    Caught,
    /// Before this offset.
    Offset(u64),
    /// Before the first record at or after this time.
    Time(i64),
    /// Never (--follow).
    Never,
}

impl RangeEnd {
    pub(crate) fn of(to: Option<&Start>, follow: bool) -> RangeEnd {
        match to {
            None if follow => RangeEnd::Never,
            Some(Start::Offset(o)) => RangeEnd::Offset(*o),
            Some(Start::Time(t)) => RangeEnd::Time(*t),
            _ => RangeEnd::Caught,
        }
    }

    pub fn reached(self, offset: u64, ts: i64) -> bool {
        match self {
            RangeEnd::Offset(e) => offset >= e,
            RangeEnd::Time(t) => ts >= t,
            RangeEnd::Caught | RangeEnd::Never => false,
        }
    }
}

/// What one step of a `Range` did.
pub enum Step {
    /// A record of the range was handed to the callback.
    Delivered,
    /// Nothing arrived for a moment.
    Idle,
    /// The range is read.
    Done,
}

/// One partition's range read by its own consumer: from a start position (a time is found
/// by reading past what the broker's answer gives, which is at or before it) to its end, or
/// to where the reader caught up with the partition, whichever comes first.
pub struct Range {
    c: BaseConsumer,
    topic: String,
    pub p: u32,
    pos: Positions,
    end: RangeEnd,
    after: Option<i64>,
    done: bool,
    /// The range ended at its end, not where the reader caught up.
    pub reached: bool,
}

impl Range {
    pub(crate) fn open(
        cluster: &Cluster,
        topic: &str,
        p: u32,
        start: &Start,
        end: RangeEnd,
    ) -> Result<Range> {
        let c = consumer(cluster)?;
        let (lo, _) = watermarks(cluster, &c, topic, p)?;
        let from = resolve(cluster, &c, topic, p, start)?;
        assign(&c, topic, &[(p, from)])?;
        let mut pos = Positions::default();
        pos.start(p, from, lo);
        Ok(Range {
            c,
            topic: topic.to_string(),
            p,
            pos,
            end,
            after: match start {
                Start::Time(t) => Some(*t),
                _ => None,
            },
            done: matches!(end, RangeEnd::Offset(e) if from >= e),
            reached: matches!(end, RangeEnd::Offset(e) if from >= e),
        })
    }

    /// The next offset to be read.
    pub fn next_offset(&self) -> Option<u64> {
        self.pos.next(self.p)
    }

    /// The time a record must reach before the range starts (when started by time and not
    /// yet there).
    pub fn after(&self) -> Option<i64> {
        self.after
    }

    /// Polls once; a record of the range goes to `f`.
    pub fn step(
        &mut self,
        cluster: &Cluster,
        f: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<()>,
    ) -> Result<Step> {
        if self.done {
            return Ok(Step::Done);
        }
        let (c, topic, p) = (&self.c, self.topic.as_str(), self.p);
        match poll(c, std::time::Duration::from_millis(100))? {
            Polled::Message(m) => {
                let o = m.offset().max(0) as u64;
                if self.pos.on_record(cluster, c, topic, p, o)? == Verdict::Drop {
                    return Ok(Step::Idle);
                }
                let ts = super::client::timestamp(&m);
                if self.after.is_some_and(|t| ts < t) {
                    return Ok(Step::Idle);
                }
                self.after = None;
                if self.end.reached(o, ts) {
                    self.done = true;
                    self.reached = true;
                    return Ok(Step::Done);
                }
                f(&m)?;
                Ok(Step::Delivered)
            }
            Polled::Eof(q) if q == p => {
                if self.pos.on_eof(cluster, c, topic, p)? {
                    self.done = true;
                    return Ok(Step::Done);
                }
                Ok(Step::Idle)
            }
            Polled::Eof(_) => Ok(Step::Idle),
            Polled::Nothing => {
                self.pos.tick(cluster, c, topic)?;
                if !matches!(self.end, RangeEnd::Never) && self.pos.quiet(p) {
                    self.done = true;
                    return Ok(Step::Done);
                }
                Ok(Step::Idle)
            }
        }
    }
}
