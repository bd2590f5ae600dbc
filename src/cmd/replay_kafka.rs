//! `replay --broker`: the same range, order, pacing and output as a local replay, read from
//! Kafka. Each partition is a `Range` with its own consumer, read to where it catches up
//! with the partition (or to --to); time order merges their heads by (timestamp, partition,
//! offset) as the local k-way merge does.

use super::*;
use crate::kafka::read::{Range, RangeEnd, Step};
use crate::kafka::Cluster;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;

struct Part {
    range: Range,
    /// The head record, rendered: (timestamp, offset) and its line.
    head: Option<(i64, u64)>,
    line: Vec<u8>,
}

pub(super) fn run(
    a: &Args,
    topic: &str,
    cluster: Cluster,
    pacer: &mut Pacer,
    out: &mut Output,
) -> Result<()> {
    crate::log::names::validate("topic", topic)?;
    let (from, to) = super::range(a)?;
    let end = RangeEnd::of(Some(&to), false);
    let c = crate::kafka::read::consumer(&cluster)?;
    let partitions = cluster
        .partitions(c.client(), topic)?
        .ok_or_else(|| setup(format!("no topic {topic:?} at {}", cluster.url)))?;
    for p in &a.partition {
        if *p >= partitions {
            return Err(usage(format!(
                "--partition {p}: topic {topic:?} has partitions 0 to {}",
                partitions - 1
            )));
        }
    }
    let committed = match &a.group {
        Some(g) if a.from_committed => {
            crate::log::names::validate("group", g)?;
            group_offsets(&cluster, g, topic, partitions)?
        }
        _ => BTreeMap::new(),
    };
    let mut topic_json = Vec::new();
    write_str(&mut topic_json, topic);
    let mut parts = Vec::new();
    for p in (0..partitions).filter(|p| a.partition.is_empty() || a.partition.contains(p)) {
        let start = match committed.get(&p) {
            Some(o) => Start::Offset(*o),
            None if a.from_committed => Start::Earliest,
            None => match &from {
                Start::Offset(o) => Start::Offset(*o),
                Start::Time(t) => Start::Time(*t),
                _ => Start::Earliest,
            },
        };
        parts.push(Part {
            range: Range::open(&cluster, topic, p, &start, end)?,
            head: None,
            line: Vec::new(),
        });
    }
    let pb = progress::records_spinner(a.progress.wanted(), "replay");
    let mut n = 0u64;
    let mut emit = |part: &mut Part, out: &mut Output, pacer: &mut Pacer| -> Result<()> {
        // Set: callers emit only a part whose head was just read.
        let (ts, _) = part.head.take().expect("a head record");
        pacer.wait(ts, out)?;
        out.buf.extend_from_slice(&part.line);
        out.record_done()?;
        n += 1;
        if n % 65536 == 0 {
            pb.set_position(n);
        }
        Ok(())
    };
    let r = super::merge(
        &mut parts,
        a.order == Order::Time,
        out,
        pacer,
        |part, out| {
            Ok(
                advance(&cluster, &topic_json, a.value, part, out)?.then(|| {
                    let (ts, off) = part.head.unwrap_or_default();
                    (ts, part.range.p, off)
                }),
            )
        },
        &mut emit,
    );
    pb.finish_and_clear();
    r
}

/// Reads `part`'s next record into its head, rendered; false when its range is over.
fn advance(
    cluster: &Cluster,
    topic_json: &[u8],
    value_only: bool,
    part: &mut Part,
    out: &mut Output,
) -> Result<bool> {
    let mut headers = Vec::new();
    let (line, head) = (&mut part.line, &mut part.head);
    loop {
        let step = part.range.step(cluster, &mut |m| {
            let rec = crate::kafka::read::record(m, &mut headers);
            line.clear();
            render_record(
                line,
                topic_json,
                m.partition().max(0) as u32,
                &rec,
                value_only,
            );
            *head = Some((rec.timestamp, rec.offset));
            Ok(())
        })?;
        match step {
            Step::Delivered => return Ok(true),
            // Waiting on the broker: what is rendered goes out first.
            Step::Idle => out.flush()?,
            Step::Done => return Ok(false),
        }
    }
}

/// The Kafka consumer group's committed offsets of `topic` (none for a group without any).
fn group_offsets(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    partitions: u32,
) -> Result<BTreeMap<u32, u64>> {
    let c: rdkafka::consumer::BaseConsumer = cluster
        .config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| setup(format!("Kafka consumer: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let _ = tpl.add_partition(topic, p as i32);
    }
    let got = c
        .committed_offsets(tpl, cluster.timeout)
        .map_err(|e| cluster.unreachable("reading the group's offsets", e))?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition().max(0) as u32, o.max(0) as u64)),
            _ => None,
        })
        .collect())
}
