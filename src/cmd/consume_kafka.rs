//! `consume --broker`: the same records and output as a local consume, read from Kafka.
//!
//! Without --group the partitions are read one after the other in offset order, as a local
//! log is, from --from to --to (or to the high watermark when consume starts), so the bytes
//! equal a local consume of the same records; --follow then reads every partition as records
//! arrive.
//!
//! With --group this is a member of a Kafka consumer group (Kafka's own protocol: the broker
//! coordinates, assigns and rebalances). Each partition starts at the group's committed
//! offset, or where --from (earliest or latest) says when it has none; what reached stdout is
//! committed every second, before partitions are taken away, and at exit: at-least-once, as
//! locally. Without --follow a member stops when every partition it was given is read to its
//! end.

use super::*;
use crate::kafka::read::{self, Polled, Positions, Range, RangeEnd, Step, Verdict};
use crate::kafka::Cluster;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::BTreeSet;
use std::sync::Mutex;

const POLL: Duration = Duration::from_millis(100);

pub(super) fn run(a: Args, cluster: Cluster) -> Result<()> {
    crate::log::names::validate("topic", &a.topic)?;
    let start = a
        .from
        .as_deref()
        .map(parse_start)
        .transpose()?
        .unwrap_or(Start::Earliest);
    let to = a.to.as_deref().map(parse_start).transpose()?;
    if matches!(to, Some(Start::Earliest | Start::Last(_))) {
        return Err(usage("--to takes latest, OFFSET or @TIME"));
    }
    let mut kind = out_kind(&a)?;
    signals::install_stop_handler();
    let mut out = Output::stdout();
    let pb = progress::records_spinner(a.progress.wanted(), "consume");
    let mut r = Run {
        a: &a,
        kind: &mut kind,
        count: 0,
        max: a.max.unwrap_or(u64::MAX),
        pb: &pb,
        headers: Vec::new(),
    };
    let res = match &a.group {
        None => r.plain(&cluster, &start, to.as_ref(), &mut out),
        Some(g) => {
            crate::log::names::validate("group", g)?;
            if to.is_some() || a.partition.is_some() {
                return Err(usage(
                    "--broker --group: the group assigns the partitions; --to and --partition do not apply",
                ));
            }
            let reset = match start {
                Start::Earliest => "earliest",
                Start::Latest => "latest",
                _ => {
                    return Err(usage(
                        "--broker --group: --from takes earliest or latest (where the group has no committed offset)",
                    ))
                }
            };
            r.group(&cluster, g, reset, &mut out)
        }
    };
    pb.finish_and_clear();
    match res {
        Err(Error::BrokenPipe) => Ok(()),
        other => other,
    }
}

struct Run<'x> {
    a: &'x Args,
    kind: &'x mut Out,
    count: u64,
    max: u64,
    pb: &'x indicatif::ProgressBar,
    headers: Vec<u8>,
}

impl Run<'_> {
    fn emit(&mut self, out: &mut Output, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<()> {
        let rec = read::record(m, &mut self.headers);
        render(
            self.kind,
            out,
            &self.a.topic,
            m.partition().max(0) as u32,
            &rec,
        )?;
        self.count += 1;
        if self.count % 65536 == 0 {
            self.pb.set_position(self.count);
        }
        out.record_done()?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.count >= self.max || signals::stop_requested()
    }

    fn plain(
        &mut self,
        cluster: &Cluster,
        start: &Start,
        to: Option<&Start>,
        out: &mut Output,
    ) -> Result<()> {
        let a = self.a;
        let c = read::consumer(cluster)?;
        let partitions = cluster
            .partitions(c.client(), &a.topic)?
            .ok_or_else(|| setup(format!("no topic {:?} at {}", a.topic, cluster.url)))?;
        if let Some(p) = a.partition.filter(|p| *p >= partitions) {
            return Err(usage(format!(
                "--partition {p}: topic {:?} has partitions 0 to {}",
                a.topic,
                partitions - 1
            )));
        }
        let end = RangeEnd::of(to, a.follow);
        let mut live = Vec::new();
        // The backlog, one partition after the other, as a local log is read.
        for p in (0..partitions).filter(|p| a.partition.is_none_or(|x| x == *p)) {
            // Read to where it catches up (or to --to); --follow goes on below.
            let mut r = Range::open(cluster, &a.topic, p, start, end)?;
            loop {
                if self.done() {
                    return out.flush();
                }
                match r.step(cluster, &mut |m| self.emit(out, m))? {
                    Step::Delivered => {}
                    Step::Idle => out.flush()?,
                    Step::Done => break,
                }
            }
            // Ended by --to, not by catching up: nothing to follow.
            if !r.reached && a.follow && !matches!(end, RangeEnd::Caught) {
                let lo = read::watermarks(cluster, &c, &a.topic, p)?.0;
                live.push((p, r.next_offset().unwrap_or(lo), lo, r.after()));
            }
        }
        let mut pos = Positions::default();
        out.flush()?;
        if live.is_empty() {
            return Ok(());
        }
        // Then every partition as records arrive.
        let assigned: Vec<(u32, u64)> = live.iter().map(|(p, o, ..)| (*p, *o)).collect();
        read::assign(&c, &a.topic, &assigned)?;
        let mut after: BTreeMap<u32, i64> = BTreeMap::new();
        for (p, o, lo, t) in &live {
            pos.start(*p, *o, *lo);
            if let Some(t) = t {
                after.insert(*p, *t);
            }
        }
        let mut open: BTreeSet<u32> = live.iter().map(|(p, ..)| *p).collect();
        while !open.is_empty() && !self.done() {
            match read::poll(&c, POLL)? {
                Polled::Message(m) => {
                    let p = m.partition().max(0) as u32;
                    let o = m.offset().max(0) as u64;
                    if !open.contains(&p)
                        || pos.on_record(cluster, &c, &a.topic, p, o)? == Verdict::Drop
                    {
                        continue;
                    }
                    let ts = crate::kafka::client::timestamp(&m);
                    if after.get(&p).is_some_and(|t| ts < *t) {
                        continue;
                    }
                    after.remove(&p);
                    if end.reached(o, ts) {
                        open.remove(&p);
                        continue;
                    }
                    self.emit(out, &m)?;
                }
                Polled::Eof(_) | Polled::Nothing => {
                    out.flush()?;
                    pos.tick(cluster, &c, &a.topic)?;
                }
            }
        }
        out.flush()
    }

    fn group(
        &mut self,
        cluster: &Cluster,
        group: &str,
        reset: &str,
        out: &mut Output,
    ) -> Result<()> {
        let a = self.a;
        let ctx = Member {
            state: Mutex::default(),
            commit: !a.no_commit,
            topic: a.topic.clone(),
        };
        let c: BaseConsumer<Member> = read::consumer_with(cluster, Some((group, reset)), ctx)?;
        cluster
            .partitions(c.client(), &a.topic)?
            .ok_or_else(|| setup(format!("no topic {:?} at {}", a.topic, cluster.url)))?;
        c.subscribe(&[&a.topic])
            .map_err(|e| setup(format!("joining group {group:?}: {e}")))?;
        let mut last_commit = Instant::now();
        let mut pos = Positions::default();
        let mut generation = 0;
        let r = (|| -> Result<()> {
            loop {
                if self.done() {
                    return Ok(());
                }
                let polled = read::poll(&c, POLL)?;
                if c.context().state().generation != generation {
                    // Partitions came or went: each starts again at the group's offset.
                    generation = c.context().state().generation;
                    pos.forget_all();
                    let mine = c.context().state().assigned.clone().unwrap_or_default();
                    for p in mine {
                        let (want, lo) = committed(cluster, &c, &a.topic, p, u64::MAX)?;
                        pos.start(p, want, lo);
                    }
                }
                match polled {
                    Polled::Message(m) => {
                        let (p, o) = (m.partition().max(0) as u32, m.offset().max(0) as u64);
                        if !pos.knows(p) {
                            let (want, lo) = committed(cluster, &c, &a.topic, p, o)?;
                            pos.start(p, want, lo);
                        }
                        if pos.on_record(cluster, &c, &a.topic, p, o)? == Verdict::Drop {
                            continue;
                        }
                        self.emit(out, &m)?;
                        c.context().wrote(p, o + 1);
                    }
                    Polled::Eof(p) => {
                        out.flush()?;
                        c.context().flushed();
                        if !pos.knows(p) {
                            let (want, lo) = committed(cluster, &c, &a.topic, p, u64::MAX)?;
                            pos.start(p, want, lo);
                        }
                        if pos.on_eof(cluster, &c, &a.topic, p)? {
                            c.context().at_end(p);
                        }
                    }
                    Polled::Nothing => {
                        out.flush()?;
                        c.context().flushed();
                        pos.tick(cluster, &c, &a.topic)?;
                        let mine = c.context().state().assigned.clone().unwrap_or_default();
                        for p in mine {
                            if pos.quiet(p) {
                                c.context().at_end(p);
                            }
                        }
                    }
                }
                if last_commit.elapsed() >= COMMIT_EVERY {
                    out.flush()?;
                    c.context().flushed();
                    c.context().commit(&c);
                    last_commit = Instant::now();
                }
                if !a.follow && c.context().all_read() {
                    return Ok(());
                }
            }
        })();
        if !matches!(r, Err(Error::BrokenPipe)) && out.flush().is_ok() {
            c.context().flushed();
        }
        c.context().commit(&c);
        c.unsubscribe();
        r
    }
}

/// Where a member's partition `p` is to continue: the group's committed offset (else the
/// offset the first record came at, which the reset policy chose; or, `first` unknown, the
/// low watermark, which asks for no check), and the low watermark.
fn committed<C: ConsumerContext>(
    cluster: &Cluster,
    c: &BaseConsumer<C>,
    topic: &str,
    p: u32,
    first: u64,
) -> Result<(u64, u64)> {
    let (lo, _) = read::watermarks(cluster, c, topic, p)?;
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition(topic, p as i32);
    let got = c
        .committed_offsets(tpl, cluster.timeout)
        .map_err(|e| cluster.unreachable("reading the group's offsets", e))?;
    let want = match got.find_partition(topic, p as i32).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o.max(0) as u64,
        // An end reported before any record: nothing to look back for.
        _ if first == u64::MAX => lo,
        _ => first.max(lo),
    };
    Ok((want, lo))
}

/// The member's view of its assignment and of what reached stdout, shared with the
/// rebalance callbacks (which run inside `poll`, on this thread).
struct Member {
    state: Mutex<MemberState>,
    commit: bool,
    topic: String,
}

#[derive(Default)]
struct MemberState {
    /// Counts assignment changes.
    generation: u64,
    /// None until the first assignment.
    assigned: Option<BTreeSet<u32>>,
    at_end: BTreeSet<u32>,
    /// Next offset after the last record put in the output buffer, and after the last one
    /// that reached stdout.
    written: BTreeMap<u32, u64>,
    flushed: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
}

impl Member {
    fn state(&self) -> std::sync::MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrote(&self, p: u32, next: u64) {
        let mut s = self.state();
        s.written.insert(p, next);
        s.at_end.remove(&p);
    }

    fn flushed(&self) {
        let mut s = self.state();
        let w = s.written.clone();
        s.flushed.extend(w);
    }

    fn at_end(&self, p: u32) {
        self.state().at_end.insert(p);
    }

    fn all_read(&self) -> bool {
        let s = self.state();
        s.assigned
            .as_ref()
            .is_some_and(|a| a.iter().all(|p| s.at_end.contains(p)))
    }

    /// Commits what reached stdout of the partitions this member holds.
    fn commit<C: ConsumerContext>(&self, c: &BaseConsumer<C>) {
        if !self.commit {
            return;
        }
        let mut s = self.state();
        let mut tpl = TopicPartitionList::new();
        let mut sent = Vec::new();
        for (&p, &o) in &s.flushed {
            let held = s.assigned.as_ref().is_some_and(|a| a.contains(&p));
            if held && s.committed.get(&p) != Some(&o) {
                let _ = tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(o as i64));
                sent.push((p, o));
            }
        }
        if sent.is_empty() {
            return;
        }
        // A failed commit (a rebalance under way) is retried at the next one; the new owner
        // then starts at the last commit that went through: at-least-once.
        if c.commit(&tpl, CommitMode::Sync).is_ok() {
            s.committed.extend(sent);
        }
    }
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = r {
            // What reached stdout is committed before the partitions go to another member.
            self.commit(c);
            let mut s = self.state();
            s.assigned = Some(BTreeSet::new());
            s.generation += 1;
            s.written.clear();
            s.flushed.clear();
            s.committed.clear();
            s.at_end.clear();
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            let mut s = self.state();
            s.assigned = Some(
                tpl.elements()
                    .iter()
                    .map(|e| e.partition().max(0) as u32)
                    .collect(),
            );
            s.generation += 1;
            s.at_end.clear();
        }
    }
}
