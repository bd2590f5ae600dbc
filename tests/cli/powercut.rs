//! Lost unsynced writes: `produce` is stopped at named crash points (the `fail` crate, cargo
//! feature `failpoints`), the files are then made to look as a power cut would leave them
//! (each file cut to its last fsynced length, a new entry dropped unless its directory was
//! fsynced, an unsynced rename undone), and recovery must lose nothing acknowledged, use no
//! stale index, and let `--source` finish the input exactly once.
//!
//! Run with `cargo test --release --features failpoints --test cli powercut` (.ci/run does).

use crate::common::*;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// Every file under `dir` with its length.
fn lengths(dir: &Path) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    out
}

#[derive(Debug)]
struct FileState {
    /// A new entry: gone after the cut unless its directory was fsynced since.
    created: bool,
    entry_durable: bool,
    durable_len: u64,
}

/// Makes `log` look as a power cut right now would leave it, from the tool's sync trace
/// and the lengths the files had before it ran (all durable then).
fn power_cut(log: &Path, trace: &Path, before: &HashMap<PathBuf, u64>) {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    let mut files: HashMap<PathBuf, FileState> = HashMap::new();
    // (from, to, backup of the old `to`, durable, whether `from`'s own entry was durable)
    let mut renames: Vec<(PathBuf, PathBuf, String, bool, bool)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["create", p] => {
                files.insert(
                    PathBuf::from(p),
                    FileState {
                        created: true,
                        entry_durable: false,
                        durable_len: 0,
                    },
                );
            }
            ["sync", p, len] => {
                let len: u64 = len.parse().unwrap();
                files
                    .entry(PathBuf::from(p))
                    .or_insert(FileState {
                        created: false,
                        entry_durable: true,
                        durable_len: 0,
                    })
                    .durable_len = len;
            }
            ["dirsync", d] => {
                for (p, s) in files.iter_mut() {
                    if p.parent() == Some(Path::new(d)) {
                        s.entry_durable = true;
                    }
                }
                for r in renames.iter_mut() {
                    if r.1.parent() == Some(Path::new(d)) {
                        r.3 = true;
                    }
                }
            }
            ["rename", from, to, old] => {
                let (from, to) = (PathBuf::from(from), PathBuf::from(to));
                let st = files.remove(&from).unwrap_or(FileState {
                    created: false,
                    entry_durable: true,
                    durable_len: 0,
                });
                let from_durable = st.entry_durable;
                // The name `to` now holds `from`'s data; its entry is durable with the rename.
                files.insert(
                    to.clone(),
                    FileState {
                        created: false,
                        entry_durable: true,
                        durable_len: st.durable_len,
                    },
                );
                renames.push((from, to, old.to_string(), false, from_durable));
            }
            other => panic!("bad trace line {other:?}"),
        }
    }
    // Undo renames whose directory was never synced, latest first. The source name comes
    // back when its own entry was durable (a file created and dirsynced before the rename).
    for (from, to, old, durable, from_durable) in renames.iter().rev() {
        if *durable {
            continue;
        }
        if *from_durable {
            std::fs::copy(to, from).unwrap();
            let len = std::fs::metadata(from).unwrap().len();
            files.insert(
                from.clone(),
                FileState {
                    created: false,
                    entry_durable: true,
                    durable_len: len,
                },
            );
        }
        if old == "-" {
            let _ = std::fs::remove_file(to);
            files.remove(to);
        } else {
            std::fs::copy(old, to).unwrap();
            let len = std::fs::metadata(to).unwrap().len();
            files.insert(
                to.clone(),
                FileState {
                    created: false,
                    entry_durable: true,
                    durable_len: len,
                },
            );
        }
    }
    for (p, now) in lengths(log) {
        let keep = match files.get(&p) {
            Some(s) if s.created && !s.entry_durable => None,
            Some(s) => Some(s.durable_len),
            None => before.get(&p).copied().or(Some(now)),
        };
        match keep {
            None => std::fs::remove_file(&p).unwrap(),
            Some(len) if len < now => {
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.set_len(len).unwrap();
            }
            Some(_) => {}
        }
    }
}

/// Offset and time seeks in each partition give the records a full read gives from there.
fn seeks_agree_with_a_scan(e: &Env, what: &str) {
    let all = lines(&e.consume("t", &[]));
    for p in 0..2u64 {
        let part: Vec<&serde_json::Value> = all.iter().filter(|v| v["partition"] == p).collect();
        if part.is_empty() {
            continue;
        }
        for k in [0, part.len() / 3, part.len() / 2, part.len() - 1] {
            let (off, ts) = (
                part[k]["offset"].as_u64().unwrap(),
                part[k]["ts"].as_i64().unwrap(),
            );
            let by_offset = lines(&e.consume(
                "t",
                &[
                    "--partition",
                    &p.to_string(),
                    "--from",
                    &off.to_string(),
                    "--max",
                    "20",
                ],
            ));
            let want: Vec<serde_json::Value> =
                part[k..].iter().take(20).map(|v| (*v).clone()).collect();
            assert_eq!(by_offset, want, "{what}: partition {p} --from {off}");
            let by_time = lines(&e.consume(
                "t",
                &[
                    "--partition",
                    &p.to_string(),
                    "--from",
                    &format!("@{ts}"),
                    "--max",
                    "20",
                ],
            ));
            let first = part
                .iter()
                .position(|v| v["ts"].as_i64().unwrap() >= ts)
                .unwrap();
            let want: Vec<serde_json::Value> = part[first..]
                .iter()
                .take(20)
                .map(|v| (*v).clone())
                .collect();
            assert_eq!(by_time, want, "{what}: partition {p} --from @{ts}");
        }
    }
}

fn input(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"v\":\"k{}\",\"i\":{i}}}\n", i % 16))
        .collect()
}

/// `produce --source` crashed at `point` (after `skip` passes), power cut, recovered, rerun.
fn scenario(point: &str, skip: u32, fsync: &str, n: usize) {
    let e = Env::new();
    let what = format!("{point} after {skip} passes, --fsync {fsync}");
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "t",
            "--partitions",
            "2",
            "--segment-bytes",
            "64KiB",
        ],
        b"",
    );
    let data = input(n);
    let acks = e.path("acks.ndjson");
    let trace = e.path("sync.trace");
    let args = [
        "-t",
        "t",
        "-q",
        "--key",
        "v",
        "--fsync",
        fsync,
        "--source",
        "feed",
        "--acks",
        acks.to_str().unwrap(),
    ];
    let before = lengths(&e.log());
    // A live feed: chunks with pauses, so produce syncs and acknowledges as it goes.
    let mut child = e
        .cmd("produce", &args)
        .env("FAILPOINTS", format!("{point}={skip}*off->return"))
        .env("KAPPA_SYNC_TRACE", &trace)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let chunks: Vec<&str> = data.split_inclusive('\n').collect();
        for c in chunks.chunks(n / 5) {
            if stdin.write_all(c.concat().as_bytes()).is_err() {
                break; // it crashed
            }
            std::thread::sleep(std::time::Duration::from_millis(120));
        }
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.signal(),
        Some(6),
        "{what}: the crash point was not reached: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    power_cut(&e.log(), &trace, &before);
    // Readers before any recovery: seeks through whatever indexes the cut left find what a
    // scan finds (an index is a hint, never trusted).
    seeks_agree_with_a_scan(&e, &what);
    let r = e.run("logd", &["recover"], b"");
    assert_eq!(r.status.code(), Some(0), "{what}: recover: {r:?}");
    seeks_agree_with_a_scan(&e, &format!("{what}, recovered"));
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(
        v.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&v.stdout)
    );
    // Everything acknowledged survived.
    let acked = std::fs::read_to_string(&acks)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["lines"].as_u64())
        .max()
        .unwrap_or(0);
    let got: Vec<u64> = lines(&e.consume("t", &["--value"]))
        .iter()
        .map(|v| v["i"].as_u64().unwrap())
        .collect();
    for i in 0..acked {
        assert!(got.contains(&i), "{what}: acknowledged record {i} lost");
    }
    eprintln!(
        "{what}: {acked} acknowledged, {} in the log after the cut and recovery",
        got.len()
    );
    // The rerun finishes the input: every line once, each key in order.
    let o = e.run("produce", &args, data.as_bytes());
    assert!(o.status.success(), "{what}: rerun: {o:?}");
    let got: Vec<u64> = lines(&e.consume("t", &["--value"]))
        .iter()
        .map(|v| v["i"].as_u64().unwrap())
        .collect();
    let mut seen = vec![0u32; n];
    let mut last: HashMap<u64, u64> = HashMap::new();
    for i in &got {
        seen[*i as usize] += 1;
        if let Some(p) = last.insert(i % 16, *i) {
            assert!(p < *i, "{what}: key k{}: {i} after {p}", i % 16);
        }
    }
    assert!(
        seen.iter().all(|c| *c == 1),
        "{what}: {} records, duplicated or missing: {:?}",
        got.len(),
        (0..n).filter(|i| seen[*i] != 1).take(5).collect::<Vec<_>>()
    );
    assert_eq!(e.run("logd", &["verify"], b"").status.code(), Some(0));
}

#[test]
fn crash_points_then_a_power_cut_lose_nothing_acknowledged() {
    for (point, skips) in [
        ("written-before-fsync", &[0u32, 3, 7, 30][..]),
        ("log-written-before-index", &[0, 5, 40]),
        ("index-write-torn", &[0, 5, 40]),
        ("index-written-before-timeindex", &[0, 5, 40]),
        ("timeindex-write-torn", &[0, 5, 40]),
        ("atomic-write-torn", &[0, 1, 3]),
        ("segment-created-before-dirsync", &[0, 2, 4]),
        ("atomic-write-before-sync", &[0, 1, 3]),
        ("atomic-write-before-rename", &[0, 1, 3]),
        ("atomic-rename-before-dirsync", &[0, 1, 3]),
    ] {
        for &skip in skips {
            scenario(point, skip, "batch", 100_000);
        }
    }
    for (point, skips) in [
        ("written-before-fsync", &[0u32, 400, 3000][..]),
        ("segment-created-before-dirsync", &[2, 3]),
    ] {
        for &skip in skips {
            scenario(point, skip, "always", 8_000);
        }
    }
}

/// Each partition's records as consume prints them, by offset.
fn partition_views(e: &Env, topic: &str) -> Vec<std::collections::BTreeMap<u64, String>> {
    let mut out = vec![std::collections::BTreeMap::new(); 2];
    for l in e.consume(topic, &[]).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let p = v["partition"].as_u64().unwrap() as usize;
        out[p].insert(v["offset"].as_u64().unwrap(), l.to_string());
    }
    out
}

/// `logd compact` crashed at `point` (after `skip` passes), power cut: before recovery a
/// reader sees each partition as it was or as compacted, or a mix of old and new segments
/// with every record where it was written; after recovery each partition is as it was or
/// as compacted, and compacting again gives exactly what an uninterrupted run gives.
fn compaction_scenario(point: &str, skip: u32) {
    let e = Env::new();
    let what = format!("compaction crashed at {point} after {skip} passes");
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "t",
            "--partitions",
            "2",
            "--segment-bytes",
            "8KiB",
            "--cleanup-policy",
            "compact",
        ],
        b"",
    );
    e.produce("t", &["--key", "v"], &input(6000));
    let pre = partition_views(&e, "t");
    let reference = Env::new();
    copy_dir(&e.log(), &reference.log());
    reference.ok("logd", &["compact", "--force"], b"");
    let compacted = partition_views(&reference, "t");
    let trace = e.path("sync.trace");
    let before = lengths(&e.log());
    let o = e
        .cmd("logd", &["compact", "--force"])
        .env("FAILPOINTS", format!("{point}={skip}*off->return"))
        .env("KAPPA_SYNC_TRACE", &trace)
        .output()
        .unwrap();
    assert_eq!(
        o.status.signal(),
        Some(6),
        "{what}: the crash point was not reached: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    power_cut(&e.log(), &trace, &before);
    let mid = partition_views(&e, "t");
    for p in 0..2 {
        for (off, l) in &mid[p] {
            assert_eq!(
                Some(l),
                pre[p].get(off),
                "{what}: partition {p} offset {off}"
            );
        }
        for off in compacted[p].keys() {
            assert!(
                mid[p].contains_key(off),
                "{what}: partition {p} lost offset {off}"
            );
        }
    }
    let r = e.run("logd", &["recover"], b"");
    assert_eq!(r.status.code(), Some(0), "{what}: recover: {r:?}");
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(
        v.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&v.stdout)
    );
    let after = partition_views(&e, "t");
    for p in 0..2 {
        assert!(
            after[p] == pre[p] || after[p] == compacted[p],
            "{what}: partition {p} is neither as it was nor as compacted"
        );
    }
    e.ok("logd", &["compact", "--force"], b"");
    assert_eq!(
        partition_views(&e, "t"),
        compacted,
        "{what}: compacting again"
    );
    assert_eq!(e.run("logd", &["verify"], b"").status.code(), Some(0));
}

#[test]
fn compaction_crash_points_then_a_power_cut_lose_nothing() {
    for (point, skips) in [
        ("compact-written-before-marker", &[0u32, 1][..]),
        ("compact-marker-written", &[0, 1]),
        ("compact-renamed-before-index", &[0, 1, 2]),
        ("compact-swapped-before-checkpoint", &[0, 1]),
        ("atomic-write-before-sync", &[0, 1, 2, 4]),
        ("atomic-write-before-rename", &[0, 1, 2, 4]),
        ("atomic-rename-before-dirsync", &[0, 1, 2, 4]),
    ] {
        for &skip in skips {
            compaction_scenario(point, skip);
        }
    }
}
