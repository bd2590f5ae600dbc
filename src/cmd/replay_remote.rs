//! `replay --server URL`: the same records, order and pacing as a local replay, read from
//! `logd serve`.
//!
//! The range is fixed before the first record: `--to latest` becomes each partition's end
//! offset as `GET /topics/T` reports it, so a replay is bounded however fast producers append.
//! Each partition is one stream (`GET /topics/T/records?partition=P&from=..&to=..`); time
//! order merges their heads by (timestamp, partition, offset), as the local k-way merge does,
//! so both give the same bytes. A stream that ends early (the server restarting, a cut
//! connection) is reopened at the partition's next offset: nothing is repeated or skipped.

use super::*;
use crate::server::client::{self, Client, Failure, Line, Stream};
use std::collections::BTreeMap;

/// One partition's stream and its head record (the line in `line`, when `head` is set).
struct Part {
    p: u32,
    /// Where the next (re)opened stream starts: the --from position until the server has
    /// said where that is, then the offset after the last record read.
    from: String,
    to: String,
    stream: Option<Stream>,
    line: Vec<u8>,
    head: Option<(i64, u64)>,
    done: bool,
}

pub(super) fn run(a: &Args, topic: &str, pacer: &mut Pacer, out: &mut Output) -> Result<()> {
    crate::log::names::validate("topic", topic)?;
    let mut c = Client::new(&a.server)?;
    c.retry_for = Duration::from_millis(
        crate::record::time::parse_duration_ms(&a.server.server_retry)
            .map_err(|e| usage(format!("--server-retry: {e}")))?
            .max(0) as u64,
    );
    let (from, to) = range(a)?;
    let info = c.retrying("looking up the topic", || {
        c.get_json(&format!("/topics/{}", client::enc(topic)))
    })?;
    let latest: BTreeMap<u32, u64> = info["partition_info"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| Some((p["partition"].as_u64()? as u32, p["latest"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let count = latest.len() as u32;
    for p in &a.partition {
        if *p >= count {
            return Err(usage(format!(
                "--partition {p}: topic {topic:?} has partitions 0 to {}",
                count.saturating_sub(1)
            )));
        }
    }
    let committed = match &a.group {
        Some(g) if a.from_committed => {
            crate::log::names::validate("group", g)?;
            committed(&c, g, topic)?
        }
        _ => BTreeMap::new(),
    };
    let mut parts: Vec<Part> = latest
        .iter()
        .filter(|(p, _)| a.partition.is_empty() || a.partition.contains(p))
        .map(|(&p, &end)| Part {
            p,
            from: if a.from_committed {
                committed.get(&p).copied().unwrap_or(0).to_string()
            } else {
                from.clone()
            },
            to: if to == "latest" {
                end.to_string()
            } else {
                to.clone()
            },
            stream: None,
            line: Vec::with_capacity(4096),
            head: None,
            done: false,
        })
        .collect();
    let mut prefix = b"{\"topic\":".to_vec();
    write_str(&mut prefix, topic);
    prefix.extend_from_slice(b",\"partition\":");
    let pb = progress::records_spinner(a.progress.wanted(), "replay");
    let mut n = 0u64;
    let mut emit = |part: &mut Part, out: &mut Output, pacer: &mut Pacer| -> Result<()> {
        // Set: callers emit only a part whose head was just read.
        let (ts, _) = part.head.take().expect("a head record");
        pacer.wait(ts, out)?;
        if a.value {
            let e = envelope::parse(&part.line)
                .map_err(|m| Error::Data(format!("bad envelope from the server: {m}")))?;
            out.buf.extend_from_slice(&e.value);
        } else {
            out.buf.extend_from_slice(&part.line);
        }
        out.buf.push(b'\n');
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
            Ok(advance(&c, topic, &prefix, part, out)?.then(|| {
                let (ts, off) = part.head.unwrap_or_default();
                (ts, part.p, off)
            }))
        },
        &mut emit,
    );
    pb.finish_and_clear();
    r
}

/// --from and --to as the server's query takes them, checked as a local replay checks them.
fn range(a: &Args) -> Result<(String, String)> {
    super::range(a)?;
    Ok((
        a.from.clone().unwrap_or_else(|| "earliest".into()),
        a.to.clone().unwrap_or_else(|| "latest".into()),
    ))
}

/// The group's committed offsets for `topic` (none for a group the server does not know,
/// as a local replay starts such a group at the beginning).
fn committed(c: &Client, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>> {
    let path = format!("/groups/{}", client::enc(group));
    let v = match c.retrying("reading the group's offsets", || match c.get_json(&path) {
        Err(Failure::Status(404, _)) => Ok(serde_json::Value::Null),
        other => other,
    })? {
        serde_json::Value::Null => return Ok(BTreeMap::new()),
        v => v,
    };
    Ok(v["offsets"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["topic"].as_str() == Some(topic))
                .filter_map(|r| Some((r["partition"].as_u64()? as u32, r["committed"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// Reads `part`'s next record into its head; false when its range is over. A stream that
/// ends early is reopened where it stopped.
fn advance(
    c: &Client,
    topic: &str,
    prefix: &[u8],
    part: &mut Part,
    out: &mut Output,
) -> Result<bool> {
    while !part.done {
        if part.stream.is_none() {
            let path = format!(
                "/topics/{}/records{}",
                client::enc(topic),
                client::query(&[
                    ("partition", part.p.to_string()),
                    ("from", part.from.clone()),
                    ("to", part.to.clone()),
                ])
            );
            part.stream = Some(c.retrying("reading records", || c.stream(&path))?);
        }
        // Set just above.
        let s = part.stream.as_mut().expect("an open stream");
        if !s.has_buffered() {
            // Waiting on the network: what is rendered goes out first.
            out.flush()?;
        }
        match s.next(&mut part.line) {
            Line::Record(l) => {
                let Some((p, off, ts)) = client::head(l, prefix).filter(|h| h.0 == part.p) else {
                    return Err(Error::Data(format!(
                        "unexpected record line from the server: {}",
                        String::from_utf8_lossy(&l[..l.len().min(200)])
                    )));
                };
                debug_assert_eq!(p, part.p);
                part.from = (off + 1).to_string();
                part.head = Some((ts, off));
                return Ok(true);
            }
            Line::Start(starts) => {
                if let Some(&(_, o)) = starts.iter().find(|(p, _)| *p == part.p) {
                    part.from = o.to_string();
                }
            }
            Line::Done => {
                part.done = true;
                part.stream = None;
            }
            Line::Error(m) => return Err(Error::Data(format!("server: {m}"))),
            Line::Ended(_) => {
                if crate::cli::signals::stop_requested() {
                    part.done = true;
                }
                part.stream = None;
            }
        }
    }
    Ok(false)
}
