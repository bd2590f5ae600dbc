//! `produce --source ID`: reruns after kills, growing files, stdin and CSV input, and the
//! ways a rerun must refuse.

use crate::common::*;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

/// Lines `{"v":"kN","i":I}` for I in `range`, keyed over 50 vehicles.
fn input(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("{{\"v\":\"k{}\",\"i\":{i}}}\n", i % 50))
        .collect()
}

/// Every record of the topic as (partition, i), in offset order per partition.
fn records(env: &Env, topic: &str) -> Vec<(u64, u64)> {
    lines(&env.consume(topic, &[]))
        .iter()
        .map(|e| {
            (
                e["partition"].as_u64().unwrap(),
                e["value"]["i"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Each of 0..n exactly once; with keys, each key's records in input order.
fn assert_exactly_once(got: &[(u64, u64)], n: usize, keyed: bool) {
    let mut seen = vec![0u32; n];
    for (_, i) in got {
        seen[*i as usize] += 1;
    }
    let dup: Vec<usize> = (0..n).filter(|i| seen[*i] > 1).take(5).collect();
    let lost: Vec<usize> = (0..n).filter(|i| seen[*i] == 0).take(5).collect();
    assert!(
        dup.is_empty() && lost.is_empty(),
        "{} records; duplicated {dup:?}, lost {lost:?}",
        got.len()
    );
    if keyed {
        let mut last: HashMap<u64, u64> = HashMap::new();
        for (_, i) in got {
            let k = i % 50;
            if let Some(prev) = last.insert(k, *i) {
                assert!(prev < *i, "key k{k}: {i} after {prev}");
            }
        }
    }
}

/// Kills `produce --source` a few times at varying moments, then lets it finish.
fn kill_and_rerun(env: &Env, topic: &str, file: &str, extra: &[&str], kills: u64) {
    let mut args = vec!["-t", topic, "-q", "--partitions", "3", "--source", "dump"];
    args.extend_from_slice(extra);
    args.push(file);
    let mut interrupted = 0;
    for k in 0..kills {
        let mut child = env.cmd("produce", &args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(40 + 70 * k));
        let _ = child.kill();
        let status = child.wait().unwrap();
        interrupted += u64::from(status.signal().is_some());
    }
    assert!(
        interrupted > 0,
        "{topic}: every run finished before its kill"
    );
    env.ok("produce", &args, b"");
}

#[test]
fn kills_and_reruns_leave_each_record_once() {
    let env = Env::new();
    let n = 300_000;
    let file = env.path("dump.ndjson");
    std::fs::write(&file, input(0..n)).unwrap();
    let f = file.to_str().unwrap();
    kill_and_rerun(&env, "keyed", f, &["--key", "v"], 5);
    assert_exactly_once(&records(&env, "keyed"), n, true);
    // One fsync per record: a shorter input.
    let small = env.path("small.ndjson");
    std::fs::write(&small, input(0..6000)).unwrap();
    let sf = small.to_str().unwrap();
    kill_and_rerun(&env, "synced", sf, &["--fsync", "always"], 3);
    assert_exactly_once(&records(&env, "synced"), 6000, false);
    kill_and_rerun(&env, "plain", f, &[], 4);
    let got = records(&env, "plain");
    assert_exactly_once(&got, n, false);
    // Keyless records go in runs of 1024 from the source's first record, whatever the kills.
    for (j, (p, i)) in got.iter().enumerate() {
        assert_eq!(*p, (*i / 1024) % 3, "record {j}");
    }
    let v = env.run("logd", &["verify"], b"");
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}

#[test]
fn a_grown_file_adds_only_what_is_new() {
    let env = Env::new();
    let file = env.path("dump.ndjson");
    std::fs::write(&file, input(0..1000)).unwrap();
    let f = file.to_str().unwrap();
    let args = ["-t", "t", "--key", "v", "--source", "dump", f];
    env.ok("produce", &args, b"");
    let o = env.run("produce", &args, b"");
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("0 records"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(&file, input(0..1500)).unwrap();
    env.ok("produce", &args, b"");
    assert_exactly_once(&records(&env, "t"), 1500, true);
    // A second source on the same topic keeps its own position.
    let other = env.path("other.ndjson");
    std::fs::write(&other, input(2000..2100)).unwrap();
    let o2 = [
        "-t",
        "t",
        "--key",
        "v",
        "--source",
        "other",
        other.to_str().unwrap(),
    ];
    env.ok("produce", &o2, b"");
    env.ok("produce", &o2, b"");
    std::fs::write(&file, input(0..2000)).unwrap();
    env.ok("produce", &args, b"");
    // Two sources interleave: input order holds within each, not across them.
    assert_exactly_once(&records(&env, "t"), 2100, false);
}

#[test]
fn stdin_and_csv_are_read_from_their_start_and_skip_what_is_in() {
    let env = Env::new();
    let all = input(0..5000);
    let head: String = all.lines().take(3000).map(|l| format!("{l}\n")).collect();
    let args = ["-t", "s", "-q", "--key", "v", "--source", "feed"];
    env.ok("produce", &args, head.as_bytes());
    env.ok("produce", &args, all.as_bytes());
    env.ok("produce", &args, all.as_bytes());
    assert_exactly_once(&records(&env, "s"), 5000, true);

    let csv = |n: usize| -> String {
        let mut s = "v,i\n".to_string();
        for i in 0..n {
            s.push_str(&format!("k{},{i}\n", i % 50));
        }
        s
    };
    let file = env.path("m.csv");
    std::fs::write(&file, csv(700)).unwrap();
    let cargs = ["-t", "c", "-q", "--csv", "--key", "v", "--source", "m"];
    let f = file.to_str().unwrap();
    env.ok("produce", &[&cargs[..], &[f]].concat(), b"");
    std::fs::write(&file, csv(1000)).unwrap();
    env.ok("produce", &[&cargs[..], &[f]].concat(), b"");
    env.ok("produce", &[&cargs[..], &[f]].concat(), b"");
    assert_exactly_once(&records(&env, "c"), 1000, true);
}

#[test]
fn a_rerun_refuses_what_it_cannot_resume_and_survives_a_damaged_checkpoint() {
    let env = Env::new();
    let file = env.path("dump.ndjson");
    std::fs::write(&file, input(0..2000)).unwrap();
    let f = file.to_str().unwrap();
    let args = ["-t", "t", "--key", "v", "--source", "dump", f];
    env.ok("produce", &args, b"");
    // A damaged checkpoint is reported by verify; produce scans the topic instead.
    let cp = env.log().join("topics/t/sources/dump.json");
    let text = std::fs::read_to_string(&cp).unwrap();
    std::fs::write(&cp, text.replace("\"records\":2000", "\"records\":2001")).unwrap();
    let v = env.run("logd", &["verify"], b"");
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stdout).contains("dump.json"));
    std::fs::write(&file, input(0..2500)).unwrap();
    let o = env.run("produce", &args, b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("scanning the topic"));
    assert_exactly_once(&records(&env, "t"), 2500, true);
    // The file shrank: nothing to resume from.
    std::fs::write(&file, input(0..10)).unwrap();
    let o = env.run("produce", &args, b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("fewer than the"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Not with a server or a broker; not with a bad id.
    let o = env.run(
        "produce",
        &["-t", "t", "--source", "x", "--server", "http://127.0.0.1:9"],
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    let o = env.run("produce", &["-t", "t", "--source", "../x"], b"");
    assert_eq!(o.status.code(), Some(2));
}
