//! `replay`: ranges (offsets, times, segment boundaries, empty), both orders over interleaved
//! partitions with ties, pacing, recorded dump files, and consumer groups.

use crate::common::*;
use serde_json::Value;
use std::process::Command;

/// A topic of 3 partitions with small segments; timestamps interleave across partitions and
/// repeat (ties).
fn topic(e: &Env) -> Vec<Value> {
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "tel",
            "--partitions",
            "3",
            "--segment-bytes",
            "4096",
        ],
        b"",
    );
    // In ten runs: each writes its own frames, so the small segments roll.
    for run in 0..10 {
        let mut s = String::new();
        for i in run * 30..(run + 1) * 30 {
            s.push_str(&format!(
                "{{\"dev\":\"d{}\",\"ts\":{},\"i\":{i},\"pad\":\"{}\"}}\n",
                i % 5,
                1_795_000_000_000i64 + (i / 2) * 1000,
                "x".repeat(200)
            ));
        }
        e.produce("tel", &["--key", "dev", "--ts", "ts"], &s);
    }
    lines(&e.consume("tel", &[]))
}

fn replay(e: &Env, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["-t", "tel"];
    a.extend_from_slice(args);
    lines(&e.ok("replay", &a, b""))
}

fn pos(v: &Value) -> (i64, u64, u64) {
    (
        v["ts"].as_i64().unwrap(),
        v["partition"].as_u64().unwrap(),
        v["offset"].as_u64().unwrap(),
    )
}

#[test]
fn both_orders_cover_the_range_deterministically() {
    let e = Env::new();
    let all = topic(&e);
    // Several segments per partition: the ranges cross their boundaries.
    let segs = segment_files(&e.log().join("topics/tel/0"), "log");
    assert!(segs.len() > 2, "{segs:?}");
    // partition order is consume's order.
    assert_eq!(replay(&e, &["--order", "partition"]), all);
    // time order: every record once, sorted by (ts, partition, offset), ties included.
    let t = replay(&e, &[]);
    assert_eq!(t.len(), all.len());
    let keys: Vec<_> = t.iter().map(pos).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(
        keys.windows(2).any(|w| w[0].0 == w[1].0),
        "the data has ties"
    );
    assert_eq!(replay(&e, &[]), t, "the same bytes every run");
    // --value prints values only.
    let v = e.ok(
        "replay",
        &["-t", "tel", "--value", "--order", "partition"],
        b"",
    );
    assert_eq!(v, e.consume("tel", &["--value"]));
}

#[test]
fn ranges_by_offset_and_time() {
    let e = Env::new();
    let all = topic(&e);
    // Offsets: --from inclusive, --to exclusive, per partition.
    let r = replay(
        &e,
        &[
            "--partition",
            "1",
            "--from",
            "10",
            "--to",
            "40",
            "--order",
            "partition",
        ],
    );
    let want: Vec<Value> = all
        .iter()
        .filter(|v| v["partition"] == 1 && (10..40).contains(&v["offset"].as_u64().unwrap()))
        .cloned()
        .collect();
    assert_eq!(r, want);
    // Times, by the time index: [from, to).
    let (from, to) = (1_795_000_030_000i64, 1_795_000_060_000i64);
    let r = replay(
        &e,
        &["--from", &format!("@{from}"), "--to", &format!("@{to}")],
    );
    let mut want: Vec<(i64, u64, u64)> = all
        .iter()
        .map(pos)
        .filter(|p| (from..to).contains(&p.0))
        .collect();
    want.sort();
    assert_eq!(r.iter().map(pos).collect::<Vec<_>>(), want);
    // Empty ranges.
    assert!(replay(&e, &["--from", "5", "--to", "5"]).is_empty());
    assert!(replay(&e, &["--from", "100000"]).is_empty());
    assert!(replay(&e, &["--from", "@2100-01-01T00:00:00Z"]).is_empty());
    // Bad ranges and names.
    for args in [
        vec!["-t", "tel", "--from", "latest"],
        vec!["-t", "tel", "--to", "earliest"],
        vec!["-t", "tel", "--partition", "7"],
        vec!["-t", "nope"],
        vec!["-t", "tel", "--speed", "fast"],
        vec!["-t", "tel", "--rate", "-3/s"],
        vec!["--file", "x.ndjson"],
        vec!["-t", "tel", "--group", "g"],
    ] {
        let o = e.run("replay", &args, b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn from_a_groups_committed_offsets() {
    let e = Env::new();
    let all = topic(&e);
    e.ok(
        "consume",
        &["-t", "tel", "--group", "g", "--max", "50"],
        b"",
    );
    let r = replay(
        &e,
        &["--group", "g", "--from-committed", "--order", "partition"],
    );
    assert_eq!(r.len(), all.len() - 50);
    assert_eq!(r, all[50..].to_vec());
}

#[test]
fn a_recorded_dump_plays_in_time_order_with_ties_in_file_order() {
    let e = Env::new();
    let dump = e.path("dump.ndjson");
    std::fs::write(
        &dump,
        "{\"id\":1,\"ts\":3000}\n{\"id\":2,\"ts\":\"1970-01-01T00:00:01Z\"}\n\n{\"id\":3,\"ts\":3000}\n{\"id\":4,\"ts\":1000}\n",
    )
    .unwrap();
    let out = e.ok(
        "replay",
        &["--file", dump.to_str().unwrap(), "--ts", "ts"],
        b"",
    );
    let ids: Vec<i64> = lines(&out)
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [2, 4, 1, 3]);
    // Lines are written as read.
    assert!(out.contains("{\"id\":2,\"ts\":\"1970-01-01T00:00:01Z\"}\n"));
    // A directory of files, CSV.
    let dir = e.path("rec");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("b.csv"), "id,time\nb1,2000\nb2,500\n").unwrap();
    std::fs::write(dir.join("a.csv"), "id,time\na1,2000\n").unwrap();
    let out = e.ok(
        "replay",
        &["--file", dir.to_str().unwrap(), "--csv", "--ts", "time"],
        b"",
    );
    let ids: Vec<String> = lines(&out)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["b2", "a1", "b1"]);
    // A bad line names its file and line.
    std::fs::write(&dump, "{\"id\":1,\"ts\":1}\n{\"id\":2}\n").unwrap();
    let o = e.run(
        "replay",
        &["--file", dump.to_str().unwrap(), "--ts", "ts"],
        b"",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("dump.ndjson: line 2"));
}

#[test]
fn pacing_keeps_the_recorded_gaps() {
    let e = Env::new();
    let dump = e.path("dump.ndjson");
    // Two seconds of recording at 10x: about 0.2 s.
    let recs: String = (0..21)
        .map(|i| format!("{{\"i\":{i},\"ts\":{}}}\n", 1_795_000_000_000i64 + i * 100))
        .collect();
    std::fs::write(&dump, recs).unwrap();
    let run = |args: &[&str]| {
        let s = std::time::Instant::now();
        let o = Command::new(bin("replay"))
            .args(["--file", dump.to_str().unwrap(), "--ts", "ts"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_eq!(o.stdout.iter().filter(|b| **b == b'\n').count(), 21);
        s.elapsed().as_secs_f64()
    };
    // Generous bounds: a behaviour check, not a benchmark.
    let t = run(&["--speed", "10x"]);
    assert!((0.19..2.0).contains(&t), "--speed 10x took {t} s");
    let t = run(&["--rate", "100/s"]);
    assert!((0.19..2.0).contains(&t), "--rate 100/s took {t} s");
    let t = run(&[]);
    assert!(t < 2.0, "--speed max took {t} s");
}

#[test]
fn the_ci_validation_example_passes_and_fails_on_a_change() {
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ci-validation");
    let e = Env::new();
    let dir = e.path("ci");
    copy_dir(&src, &dir);
    let check = |dir: &std::path::Path| {
        Command::new(dir.join("check.sh"))
            .env("PATH", path_with_tools())
            .output()
            .unwrap()
    };
    let o = check(&dir);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A deliberate change to the transform: exit 1, with a readable diff.
    let etl = dir.join("etl.jq");
    let text = std::fs::read_to_string(&etl)
        .unwrap()
        .replace("> 160", "> 120");
    std::fs::write(&etl, text).unwrap();
    let o = check(&dir);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("--- out\n+++ ./expected.csv\n~ \""),
        "{out}"
    );
    assert!(out.contains("speeding: "), "{out}");
}

#[test]
fn the_cron_script_promotes_only_within_the_tolerance() {
    let e = Env::new();
    let day = 86_400_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let yesterday_6am = now - now % day - day + 6 * 3_600_000;
    e.produce(
        "telemetry",
        &["--key", "vehicle_id", "--ts", "ts"],
        &telemetry(500, yesterday_6am),
    );
    let same = e.path("same.jq");
    std::fs::write(&same, ".\n").unwrap();
    let doubled = e.path("doubled.jq");
    std::fs::write(&doubled, ".speed = .speed * 2\n").unwrap();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rebuild-yesterday.sh");
    let run = |etl: &std::path::Path| {
        Command::new(&script)
            .env("PATH", path_with_tools())
            .env("KAPPA_LOG", e.log())
            .env("ETL", etl)
            .output()
            .unwrap()
    };
    assert_eq!(run(&same).status.code(), Some(0));
    assert_eq!(run(&same).status.code(), Some(0));
    let o = run(&doubled);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = e.ok("store", &["versions", "hourly"], b"");
    let live: Vec<&str> = v.lines().filter(|l| l.ends_with("live")).collect();
    assert_eq!(v.lines().count(), 3, "{v}");
    assert!(live.len() == 1 && live[0].starts_with("v2"), "{v}");
    // Yesterday's records only: 500 records a second apart from 06:00, all within the day.
    let rows = lines(&e.ok("store", &["export", "hourly"], b""));
    let total: i64 = rows.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert_eq!(total, 500);
}

/// `consume --group live --no-commit [--follow] | transform | store --commit-group live`.
fn live_pipeline(e: &Env, follow: bool) -> Vec<std::process::Child> {
    use std::process::Stdio;
    let mut c = e.cmd("consume", &["-t", "tel", "--group", "live", "--no-commit"]);
    if follow {
        c.arg("--follow");
    }
    let mut consume = c
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut transform = Command::new(bin("transform"))
        .args(["-q", ".speed_kmh = (.speed * 1.609 | round)"])
        .stdin(consume.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let store = e
        .cmd(
            "store",
            &[
                "--table",
                "live",
                "--commit-group",
                "live",
                "-q",
                "--key",
                "vehicle_id,ts",
            ],
        )
        .stdin(transform.stdout.take().unwrap())
        .spawn()
        .unwrap();
    vec![consume, transform, store]
}

fn stop(mut p: Vec<std::process::Child>) {
    // SIGTERM to consume ends it cleanly; the others then see the end of their input.
    let st = Command::new("kill")
        .args(["-TERM", &p[0].id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // consume exits 0 on SIGTERM once its handler is in place (a signal just before that
    // ends it by the signal, which is as good here); the sinks must end cleanly.
    let _ = p[0].wait().unwrap();
    for c in &mut p[1..] {
        assert!(c.wait().unwrap().success());
    }
}

#[test]
fn a_table_built_live_in_several_runs_equals_one_replay() {
    let e = Env::new();
    e.ok(
        "logd",
        &["topics", "create", "tel", "--partitions", "3"],
        b"",
    );
    let chunks: Vec<String> = (0..12)
        .map(|k| telemetry(150, 1_795_000_000_000 + k * 150_000))
        .collect();
    let producer = {
        let log = e.log();
        std::thread::spawn(move || {
            for c in chunks {
                let mut p = Command::new(bin("produce"));
                p.arg("--log").arg(&log).args([
                    "-t",
                    "tel",
                    "-q",
                    "--key",
                    "vehicle_id",
                    "--ts",
                    "ts",
                ]);
                assert!(run_with_stdin(p, c.as_bytes()).status.success());
                std::thread::sleep(std::time::Duration::from_millis(60));
            }
        })
    };
    // Run 1 follows the log while the producer writes, and is stopped midway; run 2 resumes
    // from the group's offsets and follows to the producer's end; run 3 reads what is left.
    let run1 = live_pipeline(&e, true);
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop(run1);
    let run2 = live_pipeline(&e, true);
    producer.join().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop(run2);
    for mut c in live_pipeline(&e, false) {
        assert!(c.wait().unwrap().success());
    }
    // One replay of the same history through the same transform.
    let mut r = Command::new(bin("replay"));
    r.arg("--log").arg(e.log()).args(["-t", "tel"]);
    let replayed = r.output().unwrap();
    assert!(replayed.status.success());
    let mut t = Command::new(bin("transform"));
    t.args(["-q", ".speed_kmh = (.speed * 1.609 | round)"]);
    let transformed = run_with_stdin(t, &replayed.stdout);
    e.ok(
        "store",
        &["--table", "replayed", "-q", "--key", "vehicle_id,ts"],
        &transformed.stdout,
    );
    let live = e.ok("store", &["export", "live"], b"");
    assert_eq!(lines(&live).len(), 12 * 150);
    assert_eq!(live, e.ok("store", &["export", "replayed"], b""));
    // Every record was applied exactly once by the live runs: the group is at the end.
    let g = e.ok("logd", &["groups", "describe", "live"], b"");
    assert!(g.lines().skip(1).all(|l| l.ends_with("\t0")), "{g}");
}
