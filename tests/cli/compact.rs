//! Compacted topics (`--cleanup-policy compact`): `logd compact`, readers during compaction,
//! and the background compaction of `logd serve`.

use crate::common::*;
use crate::serve::{get, Server};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every record of a topic as consume prints it, by (partition, offset).
fn by_offset(e: &Env, topic: &str) -> BTreeMap<(u64, u64), String> {
    e.consume(topic, &[])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                (
                    v["partition"].as_u64().unwrap(),
                    v["offset"].as_u64().unwrap(),
                ),
                l.to_string(),
            )
        })
        .collect()
}

/// Base offset of a partition's active (last) segment.
fn active_base(partition_dir: &Path) -> u64 {
    segment_files(partition_dir, "log")
        .last()
        .and_then(|p| p.file_stem()?.to_str()?.parse().ok())
        .expect("a segment")
}

/// What compaction must leave of `before`: before each partition's active segment,
/// unkeyed records and each key's last record (without expired tombstones); after it,
/// everything.
fn expected(
    before: &BTreeMap<(u64, u64), String>,
    active: &HashMap<u64, u64>,
    drop_tombstones: bool,
) -> BTreeMap<(u64, u64), String> {
    let mut last: HashMap<(u64, String), u64> = HashMap::new();
    for ((p, o), l) in before {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if let (Some(k), true) = (v["key"].as_str(), *o < active[p]) {
            last.insert((*p, k.to_string()), *o);
        }
    }
    before
        .iter()
        .filter(|((p, o), l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if *o >= active[p] {
                return true;
            }
            match v["key"].as_str() {
                None => true,
                Some(k) => {
                    last[&(*p, k.to_string())] == *o && !(drop_tombstones && v["value"].is_null())
                }
            }
        })
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

fn configs(n: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"device\":\"dev-{:02}\",\"seq\":{i},\"rate_hz\":{},\"note\":\"{}\"}}\n",
                i % 23,
                1 + i % 10,
                "x".repeat(i % 50)
            )
        })
        .collect()
}

fn actives(e: &Env, topic: &str, partitions: u64) -> HashMap<u64, u64> {
    (0..partitions)
        .map(|p| {
            (
                p,
                active_base(&e.log().join("topics").join(topic).join(p.to_string())),
            )
        })
        .collect()
}

#[test]
fn compaction_keeps_the_latest_record_per_key_at_its_offset() {
    let e = Env::new();
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "cfg",
            "--partitions",
            "2",
            "--segment-bytes",
            "8KiB",
            "--cleanup-policy",
            "delete,compact",
        ],
        b"",
    );
    e.produce("cfg", &["--key", "device"], &configs(3000, 0));
    e.produce("cfg", &[], &configs(50, 3000)); // no key: never compacted away
    e.produce(
        "cfg",
        &["--envelope"],
        "{\"key\":\"dev-03\",\"value\":null}\n{\"key\":\"dev-04\",\"value\":null}\n",
    );
    e.produce("cfg", &["--key", "device"], &configs(400, 3050));
    let before = by_offset(&e, "cfg");
    let active = actives(&e, "cfg", 2);
    let out = e.ok("logd", &["compact"], b"");
    assert!(out.contains("cfg/0: compacted offsets 0.."), "{out}");
    let after = by_offset(&e, "cfg");
    assert_eq!(after, expected(&before, &active, false));
    assert!(
        after.len() < before.len() / 3,
        "{} of {}",
        after.len(),
        before.len()
    );
    // Tombstones stay (the delete retention is a day) and hide nothing after them.
    assert!(after
        .values()
        .any(|l| l.contains("\"key\":\"dev-03\",\"value\":null")));
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let d = lines(&e.ok("logd", &["topics", "describe", "cfg", "--json"], b""));
    assert_eq!(d[0]["cleanup_policy"], "compact,delete");
    let held: u64 = d[0]["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["records"].as_u64().unwrap())
        .sum();
    assert_eq!(held as usize, after.len());
    // Offsets and time seeks land where they did.
    let (&(p, o), _) = after.iter().nth(after.len() / 2).unwrap();
    let from = e.consume(
        "cfg",
        &[
            "--partition",
            &p.to_string(),
            "--from",
            &o.to_string(),
            "--max",
            "1",
        ],
    );
    assert_eq!(from.trim(), after[&(p, o)]);
    // Nothing new: a second run has nothing to do.
    let out = e.ok("logd", &["compact", "-t", "cfg"], b"");
    assert!(out.contains("not compacted: nothing new"), "{out}");

    // A consumer group reads on across compactions with nothing skipped or repeated.
    let first = e.consume("cfg", &["--group", "g"]);
    e.produce("cfg", &["--key", "device"], &configs(2000, 5000));
    e.ok("logd", &["compact", "--force"], b"");
    let second = e.consume("cfg", &["--group", "g"]);
    let seen: Vec<u64> = lines(&second)
        .iter()
        .map(|v| v["value"]["seq"].as_u64().unwrap())
        .collect();
    assert!(!first.is_empty());
    assert!(seen.iter().all(|s| *s >= 5000), "re-read old records");
    // Every key's latest record of the new batch reached the group.
    for k in 0..23 {
        let latest = (5000..7000).rev().find(|i| i % 23 == k).unwrap() as u64;
        assert!(seen.contains(&latest), "dev-{k:02}: {latest} not seen");
    }

    // Expired tombstones go, and with them every record of their keys.
    e.ok(
        "logd",
        &["topics", "alter", "cfg", "--delete-retention", "0s"],
        b"",
    );
    e.produce(
        "cfg",
        &["--envelope"],
        "{\"key\":\"dev-05\",\"value\":null}\n",
    );
    e.produce(
        "cfg",
        &["--key", "device"],
        &configs(1500, 8000).replace("dev-05", "dev-99"),
    );
    std::thread::sleep(Duration::from_millis(20));
    let before = by_offset(&e, "cfg");
    let active = actives(&e, "cfg", 2);
    let out = e.ok("logd", &["compact", "--force"], b"");
    assert!(out.contains("tombstones removed"), "{out}");
    let after = by_offset(&e, "cfg");
    assert_eq!(after, expected(&before, &active, true));
    assert!(!after
        .iter()
        .any(|((p, o), l)| *o < active[p] && l.contains("\"key\":\"dev-05\"")));
    assert_eq!(e.run("logd", &["verify"], b"").status.code(), Some(0));
}

#[test]
fn compaction_flags_and_refusals() {
    let e = Env::new();
    e.produce("plain", &[], &configs(10, 0));
    let o = e.run("logd", &["compact", "-t", "plain"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not compact"));
    let o = e.run(
        "logd",
        &["topics", "create", "x", "--cleanup-policy", "shred"],
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    let o = e.run(
        "logd",
        &["topics", "create", "x", "--min-cleanable-ratio", "1.5"],
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    let o = e.run("logd", &["compact", "--buffer", "1KiB"], b"");
    assert_eq!(o.status.code(), Some(2));
    // A compact-only topic is not cut by retention.
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "c",
            "--cleanup-policy",
            "compact",
            "--segment-bytes",
            "4KiB",
            "--retention-bytes",
            "4KiB",
        ],
        b"",
    );
    // (each produce here writes one frame, so each one seals the segment before it)
    e.produce("c", &[], &configs(500, 0));
    e.produce("c", &[], &configs(500, 500));
    e.ok("logd", &["retention"], b"");
    assert_eq!(by_offset(&e, "c").len(), 1000);
    // Below the dirty ratio nothing happens without --force.
    e.ok(
        "logd",
        &["topics", "alter", "c", "--min-cleanable-ratio", "1"],
        b"",
    );
    let out = e.ok("logd", &["compact"], b"");
    assert!(out.contains("compacted offsets 0..500"), "{out}");
    e.produce("c", &[], &configs(500, 1000));
    let out = e.ok("logd", &["compact"], b"");
    assert!(out.contains("not compacted: dirty ratio 0.5"), "{out}");
    let out = e.ok("logd", &["compact", "--force"], b"");
    assert!(out.contains("compacted offsets 0..1000"), "{out}");
    assert_eq!(by_offset(&e, "c").len(), 1500);
}

#[test]
fn readers_follow_through_compactions_and_never_see_damage() {
    let e = Env::new();
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "c",
            "--cleanup-policy",
            "compact",
            "--segment-bytes",
            "4KiB",
        ],
        b"",
    );
    e.produce("c", &["--key", "device"], &configs(500, 0));
    let mut reader = e
        .cmd("consume", &["-t", "c", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = reader.stdout.take().unwrap();
    let lines_read = std::thread::spawn(move || {
        let mut v = Vec::new();
        for l in BufReader::new(out).lines() {
            let l = l.unwrap();
            let done = l.contains("\"seq\":999999");
            v.push(l);
            if done {
                break;
            }
        }
        v
    });
    // `logd verify` beside it all the time: a swap in progress is never reported as damage.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let verifier = {
        let (stop, log) = (stop.clone(), e.log());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = std::process::Command::new(bin("logd"))
                    .arg("--log")
                    .arg(&log)
                    .args(["verify", "-q"])
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "verify beside compaction: {}",
                    String::from_utf8_lossy(&o.stdout)
                );
                runs += 1;
            }
            runs
        })
    };
    // What was written at each offset, read before each compaction.
    let mut written = by_offset(&e, "c");
    let mut views = Vec::new();
    // The reader is stopped for half the rounds: it then wakes up inside segments that
    // compaction has rewritten, merged or deleted since.
    std::thread::sleep(Duration::from_millis(300));
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &reader.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    for round in 0..8 {
        if round == 4 {
            signal("-CONT");
        }
        e.produce("c", &["--key", "device"], &configs(700, 1000 + round * 700));
        written.extend(by_offset(&e, "c"));
        e.ok("logd", &["compact", "--force"], b"");
        views.push((by_offset(&e, "c"), 1000 + round * 700 + 700));
    }
    e.produce(
        "c",
        &[],
        "{\"device\":\"end\",\"seq\":999999,\"rate_hz\":0,\"note\":\"\"}\n",
    );
    written.extend(by_offset(&e, "c"));
    let got = lines_read.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(verifier.join().unwrap() > 0);
    let _ = reader.kill();
    let o = reader.wait_with_output().unwrap();
    assert!(
        o.stderr.is_empty(),
        "reader: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Offsets only go up, and each record is the one written at that offset.
    let mut prev = None;
    for l in &got {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let off = v["offset"].as_u64().unwrap();
        assert!(prev < Some(off), "offset {off} after {prev:?}");
        prev = Some(off);
        assert_eq!(Some(l), written.get(&(0, off)), "offset {off}");
    }
    assert!(got.last().unwrap().contains("999999"));
    // Every compaction left each key's latest record.
    for (view, upto) in &views {
        let mut newest: HashMap<String, u64> = HashMap::new();
        for l in view.values() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = v["value"]["seq"].as_u64().unwrap();
            let k = v["key"].as_str().unwrap().to_string();
            let n = newest.entry(k).or_insert(0);
            *n = (*n).max(s);
        }
        for k in 0..23 {
            let latest = (0..*upto).rev().find(|i| i % 23 == k).unwrap() as u64;
            assert_eq!(newest[&format!("dev-{k:02}")], latest);
        }
    }
}

#[test]
fn the_server_compacts_compact_topics_in_the_background() {
    let e = Env::new();
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "cfg",
            "--cleanup-policy",
            "compact",
            "--segment-bytes",
            "8KiB",
        ],
        b"",
    );
    let s = Server::start(&e.log(), &[]);
    let produce = remote_tool(
        "produce",
        "--server",
        &s.url,
        &["-t", "cfg", "-q", "--key", "device"],
    );
    run_ok(produce, configs(4000, 0).as_bytes());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, m) = get(&format!("{}/metrics", s.url));
        let n = m
            .lines()
            .find_map(|l| l.strip_prefix("kappa_compactions_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no compaction within 60 s:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let consume = remote_tool("consume", "--server", &s.url, &["-t", "cfg", "--value"]);
    let held = lines(&run_ok(consume, b""));
    assert!(held.len() < 4000, "{} records held", held.len());
    for k in 0..23 {
        let latest = (0..4000).rev().find(|i| i % 23 == k).unwrap();
        assert!(
            held.iter().any(|v| v["seq"] == latest),
            "dev-{k:02}: latest record {latest} lost"
        );
    }
    // It keeps serving and appending while compacting.
    let produce = remote_tool(
        "produce",
        "--server",
        &s.url,
        &["-t", "cfg", "-q", "--key", "device"],
    );
    run_ok(produce, configs(100, 4000).as_bytes());
    assert_eq!(s.stop(), Some(0));
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let last: Vec<serde_json::Value> = lines(&e.consume("cfg", &["--value"]));
    assert_eq!(last.last().unwrap()["seq"], 4099);
}

#[test]
fn a_group_reaches_zero_lag_where_compaction_emptied_the_end_of_the_log() {
    // Every record superseded by a tombstone, the tombstones expired, and the active segment
    // empty (recovery sealed a torn tail behind a new one): the log ends in offsets with
    // no record. A group that read to the end must be at the end.
    let e = Env::new();
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "t",
            "--cleanup-policy",
            "compact",
            "--segment-bytes",
            "4KiB",
            "--delete-retention",
            "1ms",
        ],
        b"",
    );
    let mut input = String::new();
    for i in 0..300 {
        input += &format!("{{\"key\":\"k{}\",\"value\":{{\"n\":{i}}}}}\n", i % 10);
    }
    for k in 0..10 {
        input += &format!("{{\"key\":\"k{k}\",\"value\":null}}\n");
    }
    e.produce("t", &["--envelope"], &input);
    let dir = e.log().join("topics/t/0");
    let active = segment_files(&dir, "log").last().cloned().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(active)
        .unwrap();
    std::io::Write::write_all(&mut f, b"\x00\x00\x01torn").unwrap();
    drop(f);
    e.ok("logd", &["recover", "-t", "t"], b"");
    let describe = |e: &Env| -> serde_json::Value {
        let d: serde_json::Value =
            serde_json::from_str(&e.ok("logd", &["topics", "describe", "t", "--json"], b""))
                .unwrap();
        d["partition_info"][0].clone()
    };
    // The active segment is empty: the last timestamp is the last tombstone's.
    let d = describe(&e);
    assert_eq!(d["records"], 310);
    assert!(d["last_ts"].as_i64().is_some(), "{d}");
    std::thread::sleep(Duration::from_millis(20));
    e.ok("logd", &["compact", "-t", "t", "--force"], b"");
    assert_eq!(e.consume("t", &[]), "");
    // Records are counted, not offsets, on the server too, and after the policy changes.
    assert_eq!(describe(&e)["records"], 0);
    e.ok(
        "logd",
        &["topics", "alter", "t", "--cleanup-policy", "delete"],
        b"",
    );
    let d = describe(&e);
    assert_eq!(
        (d["records"].as_u64(), d["latest"].as_u64()),
        (Some(0), Some(310))
    );
    assert!(d["last_ts"].is_null(), "{d}");
    {
        let srv = Server::start(&e.log(), &[]);
        let (status, body) = get(&format!("{}/topics/t", srv.url));
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["partition_info"][0]["records"], 0, "{v}");
    }
    e.ok(
        "logd",
        &["topics", "alter", "t", "--cleanup-policy", "compact"],
        b"",
    );
    e.ok("consume", &["-t", "t", "--group", "g"], b"");
    let d: serde_json::Value =
        serde_json::from_str(&e.ok("logd", &["groups", "describe", "g", "--json"], b"")).unwrap();
    let s = d.to_string();
    assert!(s.contains("\"lag\":0"), "{s}");
    assert!(s.contains("\"committed\":310"), "{s}");
}

#[test]
fn a_group_that_started_past_the_end_does_not_commit_beyond_it() {
    // Catching up commits the end of the frames read, never a start past the log's end:
    // records appended later still reach the group.
    let e = Env::new();
    let rows = |from: usize, n: usize| -> String {
        (from..from + n)
            .map(|i| format!("{{\"n\":{i}}}\n"))
            .collect()
    };
    e.produce("t", &[], &rows(0, 10));
    assert_eq!(
        e.ok(
            "consume",
            &["-t", "t", "--group", "g", "--from", "1000"],
            b""
        ),
        ""
    );
    assert_eq!(
        e.ok(
            "consume",
            &["-t", "t", "--group", "h", "--from", "5", "--to", "3"],
            b""
        ),
        ""
    );
    e.produce("t", &[], &rows(10, 5));
    let got = e.ok("consume", &["-t", "t", "--group", "g", "--value"], b"");
    assert_eq!(
        got,
        rows(0, 15),
        "no commit past the end: the group starts at --from's default"
    );
    let got = e.ok("consume", &["-t", "t", "--group", "g", "--value"], b"");
    assert_eq!(got, "");
    e.produce("t", &[], &rows(15, 2));
    let got = e.ok("consume", &["-t", "t", "--group", "g", "--value"], b"");
    assert_eq!(got, rows(15, 2));
}
