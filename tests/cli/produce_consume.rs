//! Round trips for every input and output format, seeks, groups, follow, `| head`, bad input.

use crate::common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn ndjson_values_come_back_byte_for_byte() {
    let e = Env::new();
    let input = "{\"a\": 1.50,  \"b\":[1,2]}\n{\"z\":\"\\u00e9\",\"a\":1e3}\n{ \"k\" : null }\n";
    e.produce("t", &[], input);
    assert_eq!(e.consume("t", &["--value"]), input);
}

#[test]
fn crlf_and_blank_lines() {
    let e = Env::new();
    e.produce("t", &[], "{\"a\":1}\r\n\r\n{\"a\":2}\n");
    assert_eq!(e.consume("t", &["--value"]), "{\"a\":1}\n{\"a\":2}\n");
}

#[test]
fn envelopes_carry_key_ts_and_value() {
    let e = Env::new();
    e.produce(
        "t",
        &["--key", "id", "--ts", "ts"],
        "{\"id\":\"truck-1\",\"ts\":\"2026-11-01T00:00:00.5Z\",\"v\":1}\n",
    );
    let v = lines(&e.consume("t", &[]));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["topic"], "t");
    assert_eq!(v[0]["partition"], 0);
    assert_eq!(v[0]["offset"], 0);
    assert_eq!(v[0]["key"], "truck-1");
    assert_eq!(v[0]["ts"], 1_793_491_200_500i64);
    assert_eq!(v[0]["value"]["v"], 1);
}

#[test]
fn timestamps_by_magnitude_and_format() {
    let e = Env::new();
    let input = "{\"t\":1795359091}\n{\"t\":1795359091608}\n{\"t\":1795359091608123}\n{\"t\":1795359091608123456}\n{\"t\":\"1795359091.5\"}\n";
    e.produce("t", &["--ts", "t"], input);
    let ts: Vec<i64> = lines(&e.consume("t", &[]))
        .iter()
        .map(|v| v["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ts,
        vec![
            1795359091000,
            1795359091608,
            1795359091608,
            1795359091608,
            1795359091500
        ]
    );
    e.produce(
        "f",
        &["--ts", "t", "--ts-format", "%d/%m/%Y %H:%M"],
        "{\"t\":\"01/01/1970 00:01\"}\n",
    );
    assert_eq!(lines(&e.consume("f", &[]))[0]["ts"], 60_000);
}

#[test]
fn envelope_round_trip_is_lossless() {
    let e = Env::new();
    let input = concat!(
        "{\"key\":\"k1\",\"ts\":5,\"value\":{\"a\": 1.0},\"headers\":[[\"h\",\"1\"],[\"h\",\"2\"]]}\n",
        "{\"key\":null,\"ts\":6,\"value_str\":\"plain text\"}\n",
        "{\"key_base64\":\"/w==\",\"ts\":7,\"value_base64\":\"AP8=\"}\n",
        "{\"key\":\"k\",\"ts\":8,\"value\":null}\n",
    );
    e.produce("a", &["--envelope"], input);
    let first = e.consume("a", &[]);
    e.produce("b", &["--envelope"], &first);
    let second = e.consume("b", &[]);
    assert_eq!(first.replace("\"topic\":\"a\"", "\"topic\":\"b\""), second);
    let v = lines(&first);
    assert_eq!(v[0]["headers"], serde_json::json!([["h", "1"], ["h", "2"]]));
    assert_eq!(v[1]["value_str"], "plain text");
    assert_eq!(v[2]["value_base64"], "AP8=");
    assert_eq!(v[2]["key_base64"], "/w==");
    assert!(v[3]["value"].is_null() && v[3].get("value").is_some());
    assert_eq!(
        e.consume("a", &["--format", "%k|%s|%h\\n", "--max", "1"]),
        "k1|{\"a\": 1.0}|h=1,h=2\n"
    );
}

#[test]
fn lines_keep_any_bytes() {
    let e = Env::new();
    let mut input = b"hello world\n".to_vec();
    input.extend_from_slice(b"\xff\xfe bytes\n");
    e.ok("produce", &["-t", "l", "--lines", "-q"], &input);
    let o = e.run("consume", &["-t", "l", "--value"], b"");
    assert_eq!(o.stdout, input);
    let v = lines(&e.consume("l", &[]));
    assert_eq!(v[0]["value_str"], "hello world");
    assert!(v[1]["value_base64"].is_string());
}

#[test]
fn csv_in_and_out() {
    let e = Env::new();
    let input = "meter,kwh,ok,note,time\nm-1,1.50,true,,2026-11-01T00:00:00Z\nm-2,007,false,\"a, \"\"quoted\"\"\nline\",2026-11-01T00:01:00Z\n";
    e.produce("m", &["--csv", "--key", "meter", "--ts", "time"], input);
    let vals = e.consume("m", &["--value"]);
    assert_eq!(
        vals,
        "{\"meter\":\"m-1\",\"kwh\":1.50,\"ok\":true,\"note\":null,\"time\":\"2026-11-01T00:00:00Z\"}\n\
         {\"meter\":\"m-2\",\"kwh\":\"007\",\"ok\":false,\"note\":\"a, \\\"quoted\\\"\\nline\",\"time\":\"2026-11-01T00:01:00Z\"}\n"
    );
    let csv = e.consume("m", &["--csv", "--columns", "meter,note,@key,@ts"]);
    assert_eq!(csv, "meter,note,key,ts\nm-1,,m-1,1793491200000\nm-2,\"a, \"\"quoted\"\"\nline\",m-2,1793491260000\n");
}

#[test]
fn seeks_by_offset_time_and_tail() {
    let e = Env::new();
    e.produce("t", &["--ts", "ts"], &telemetry(100, 1_700_000_000_000));
    let offs = |args: &[&str]| -> Vec<u64> {
        lines(&e.consume("t", args))
            .iter()
            .map(|v| v["offset"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(offs(&["--from", "95"]), vec![95, 96, 97, 98, 99]);
    assert_eq!(offs(&["--from", "-3"]), vec![97, 98, 99]);
    assert_eq!(offs(&["--from", "latest"]), Vec::<u64>::new());
    assert_eq!(offs(&["--from", "10", "--to", "13"]), vec![10, 11, 12]);
    assert_eq!(offs(&["--from", "10", "--max", "2"]), vec![10, 11]);
    assert_eq!(
        offs(&["--from", "@1700000090000"]),
        (90..100).collect::<Vec<_>>()
    );
    assert_eq!(
        offs(&[
            "--from",
            "@2023-11-14T22:14:50.5Z",
            "--to",
            "@1700000093000"
        ]),
        vec![91, 92]
    );
    assert_eq!(
        offs(&["--from", "@2030-01-01T00:00:00Z"]),
        Vec::<u64>::new()
    );
    assert_eq!(offs(&["--from", "500"]), Vec::<u64>::new());
}

#[test]
fn time_seek_with_out_of_order_timestamps_and_many_segments() {
    let e = Env::new();
    e.ok(
        "logd",
        &["topics", "create", "t", "--segment-bytes", "4096"],
        b"",
    );
    // Timestamps go up by 10 but every 5th record is 25 behind: the first record at or after T.
    let mut input = String::new();
    let mut ts = Vec::new();
    for i in 0..400i64 {
        let t = if i % 5 == 4 { i * 10 - 25 } else { i * 10 } + 1_000_000_000_000;
        ts.push(t);
        input.push_str(&format!(
            "{{\"i\":{i},\"t\":{t},\"pad\":\"{}\"}}\n",
            "x".repeat(40)
        ));
    }
    // Several produce runs: several frames and segments.
    for chunk in input.lines().collect::<Vec<_>>().chunks(37) {
        e.produce("t", &["--ts", "t"], &(chunk.join("\n") + "\n"));
    }
    let segs = segment_files(&e.log().join("topics/t/0"), "log");
    assert!(
        segs.len() > 3,
        "expected several segments, got {}",
        segs.len()
    );
    for target in [
        1_000_000_000_000i64,
        1_000_000_001_234,
        1_000_000_002_000,
        1_000_000_003_985,
        1_000_000_009_999,
    ] {
        let want = ts.iter().position(|&t| t >= target).map(|p| p as u64);
        let got = lines(&e.consume("t", &["--from", &format!("@{target}"), "--max", "1"]))
            .first()
            .map(|v| v["offset"].as_u64().unwrap());
        assert_eq!(got, want, "target {target}");
    }
    // Every offset seek lands exactly.
    for o in [0u64, 1, 36, 37, 38, 199, 399] {
        let got = lines(&e.consume("t", &["--from", &o.to_string(), "--max", "1"]));
        assert_eq!(got[0]["offset"], o);
    }
}

#[test]
fn keys_follow_kafkas_partitioner() {
    let e = Env::new();
    // toPositive(murmur2) values from Kafka's UtilsTest vectors.
    let cases = [
        ("21", 1_173_551_340u64),
        ("foobar", 1_357_151_166),
        ("abc", 479_470_107),
        ("a-little-bit-long-string", 1_161_502_112),
    ];
    let input: String = cases
        .iter()
        .map(|(k, _)| format!("{{\"k\":\"{k}\"}}\n"))
        .collect();
    e.produce("t", &["--key", "k", "--partitions", "7"], &input);
    for v in lines(&e.consume("t", &[])) {
        let k = v["key"].as_str().unwrap();
        let (_, h) = cases.iter().find(|(c, _)| *c == k).unwrap();
        assert_eq!(v["partition"].as_u64().unwrap(), h % 7, "key {k}");
    }
}

#[test]
fn unkeyed_records_round_robin_by_batch() {
    let e = Env::new();
    // ~100 kB of records per run: more than one 64 KiB batch, so more than one partition.
    let big = telemetry(1500, 0);
    e.produce("t", &["--partitions", "3"], &big);
    let v = lines(&e.consume("t", &[]));
    assert_eq!(v.len(), 1500);
    let used: std::collections::BTreeSet<u64> =
        v.iter().map(|r| r["partition"].as_u64().unwrap()).collect();
    assert!(used.len() >= 2, "{used:?}");
    // The concatenation order: partition by partition, offsets ascending.
    let order: Vec<(u64, u64)> = v
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    e.produce("t", &["--partition", "2"], "{\"x\":1}\n");
    let last = lines(&e.consume("t", &["--partition", "2", "--from", "-1"]));
    assert_eq!(last[0]["value"]["x"], 1);
}

#[test]
fn bad_input_fail_skip_dead_letter() {
    let e = Env::new();
    let input =
        b"{\"id\":\"a\"}\n[1,2]\n{\"id\":\"b\"\n{\"x\":1}\n{\"id\":\"\xff\"}\n{\"id\":\"c\"}\n";
    let o = e.run("produce", &["-t", "t", "--key", "id"], input);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("produce: line 2: expected a JSON object"),
        "{err}"
    );
    assert_eq!(e.consume("t", &["--value"]), "{\"id\":\"a\"}\n");

    let o = e.run(
        "produce",
        &["-t", "s", "--key", "id", "--on-error", "skip"],
        input,
    );
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 bad records skipped"));
    assert_eq!(
        e.consume("s", &["--value"]),
        "{\"id\":\"a\"}\n{\"id\":\"c\"}\n"
    );

    let dl = e.path("dead.ndjson");
    let o = e.run(
        "produce",
        &[
            "-t",
            "d",
            "--key",
            "id",
            "--on-error",
            "dead-letter",
            dl.to_str().unwrap(),
        ],
        input,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dead = lines(&std::fs::read_to_string(&dl).unwrap());
    assert_eq!(dead.len(), 4);
    assert_eq!(dead[0]["tool"], "produce");
    assert_eq!(dead[0]["line"], 2);
    assert_eq!(dead[0]["input"], "[1,2]");
    assert_eq!(dead[2]["error"], "missing key field id");
    assert!(dead[3]["error"].as_str().unwrap().contains("UTF-8"));
    assert!(dead[3]["input_base64"].is_string());
    assert_eq!(
        e.consume("d", &["--value"]),
        "{\"id\":\"a\"}\n{\"id\":\"c\"}\n"
    );
}

#[test]
fn oversize_and_timestamp_errors() {
    let e = Env::new();
    let big = format!("{{\"p\":\"{}\"}}\n", "x".repeat(2000));
    let input = format!(
        "{{\"a\":1,\"t\":1}}\n{big}{{\"a\":2,\"t\":\"not a time\"}}\n{{\"a\":3,\"t\":3}}\n"
    );
    let o = e.run(
        "produce",
        &[
            "-t",
            "t",
            "--max-record-bytes",
            "1000",
            "--ts",
            "t",
            "--on-error",
            "skip",
        ],
        input.as_bytes(),
    );
    assert!(o.status.success());
    assert_eq!(
        e.consume("t", &["--value"]),
        "{\"a\":1,\"t\":1}\n{\"a\":3,\"t\":3}\n"
    );
    let o = e.run(
        "produce",
        &["-t", "u", "--max-record-bytes", "1000"],
        input.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("line 2: record is larger than --max-record-bytes"));
}

#[test]
fn bad_names_and_flags_exit_2() {
    let e = Env::new();
    for name in ["../escape", "a/b", "", "..", "x y"] {
        let o = e.run("produce", &["-t", name], b"{}\n");
        assert_eq!(o.status.code(), Some(2), "name {name:?}");
        let o = e.run("consume", &["-t", name], b"");
        assert_eq!(o.status.code(), Some(2), "name {name:?}");
    }
    assert!(!e.dir.path().join("escape").exists());
    assert_eq!(
        e.run("consume", &["-t", "missing"], b"").status.code(),
        Some(2)
    );
    assert_eq!(
        e.run("produce", &["-t", "t", "--fsync", "sometimes"], b"")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        e.run("produce", &["-t", "t", "--on-error", "explode"], b"")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        e.run("consume", &["-t", "t", "--format", "%q"], b"")
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn closed_pipe_ends_quietly() {
    let e = Env::new();
    e.produce("t", &[], &telemetry(50_000, 0));
    let script = format!(
        "set -o pipefail; {} --log {} -t t --group g | head -n 3",
        bin("consume").display(),
        e.log().display()
    );
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "status {:?} stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let head = lines(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(head.len(), 3);
    // The group committed no more than what reached the pipe; resuming leaves no gap.
    let rest = lines(&e.consume("t", &["--group", "g"]));
    let first_resumed = rest
        .first()
        .map_or(50_000, |v| v["offset"].as_u64().unwrap());
    assert!(first_resumed <= 50_000);
    assert_eq!(rest.len() as u64, 50_000 - first_resumed);
    assert!(
        first_resumed <= 3 || first_resumed as usize <= 50_000,
        "resumed at {first_resumed}"
    );
}

#[test]
fn group_commits_and_resumes() {
    let e = Env::new();
    e.produce(
        "t",
        &["--partitions", "2", "--key", "vehicle_id"],
        &telemetry(20, 0),
    );
    let a = lines(&e.consume("t", &["--group", "g", "--max", "5"]));
    assert_eq!(a.len(), 5);
    let b = lines(&e.consume("t", &["--group", "g"]));
    assert_eq!(a.len() + b.len(), 20);
    let seen: std::collections::BTreeSet<(u64, u64)> = a
        .iter()
        .chain(&b)
        .map(|v| {
            (
                v["partition"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 20);
    assert_eq!(e.consume("t", &["--group", "g"]), "");
    let desc = e.ok("logd", &["groups", "describe", "g", "--json"], b"");
    for v in lines(&desc) {
        assert_eq!(v["lag"], 0);
    }
    e.ok(
        "logd",
        &["groups", "reset", "g", "-t", "t", "--to", "earliest"],
        b"",
    );
    assert_eq!(lines(&e.consume("t", &["--group", "g"])).len(), 20);
    // --no-commit reads from the group but leaves it where it was.
    e.ok(
        "logd",
        &["groups", "reset", "g", "-t", "t", "--to", "earliest"],
        b"",
    );
    assert_eq!(
        lines(&e.consume("t", &["--group", "g", "--no-commit"])).len(),
        20
    );
    assert_eq!(
        lines(&e.consume("t", &["--group", "g", "--no-commit"])).len(),
        20
    );
}

/// A follower fed by a concurrent producer sees each record promptly and ends on SIGTERM.
#[test]
fn follow_sees_a_concurrent_producer() {
    let e = Env::new();
    e.produce("t", &["--partitions", "2"], "{\"n\":0}\n");
    let mut follower = e
        .cmd(
            "consume",
            &["-t", "t", "--follow", "--value", "--group", "f"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "{\"n\":0}\n");
    let mut producer = e
        .cmd("produce", &["-t", "t", "-q", "--fsync", "never"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pin = producer.stdin.take().unwrap();
    for n in 1..=20 {
        writeln!(pin, "{{\"n\":{n}}}").unwrap();
        pin.flush().unwrap();
        let t0 = Instant::now();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, format!("{{\"n\":{n}}}\n"));
        // Generous bound: promptness is measured by the benchmark, not here.
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
    drop(pin);
    assert!(producer.wait().unwrap().success());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = follower.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // It committed what it wrote.
    let desc = lines(&e.ok("logd", &["groups", "describe", "f", "--json"], b""));
    let total: u64 = desc.iter().map(|v| v["committed"].as_u64().unwrap()).sum();
    assert_eq!(total, 21);
}

/// A follower started on a topic that has no segment yet (just created) sees the first
/// records once a producer writes them.
#[test]
fn follow_from_an_empty_new_topic() {
    let e = Env::new();
    e.ok("logd", &["topics", "create", "t", "--partitions", "2"], b"");
    let mut follower = e
        .cmd("consume", &["-t", "t", "--follow", "--value"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    e.produce("t", &[], "{\"n\":1}\n{\"n\":2}\n");
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = String::new();
        for _ in 0..2 {
            let _ = out.read_line(&mut got);
        }
        let _ = tx.send(got);
    });
    // Generous: the follower looks again at least every 100 ms.
    let got = rx.recv_timeout(Duration::from_secs(10));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(got.as_deref(), Ok("{\"n\":1}\n{\"n\":2}\n"));
    assert_eq!(follower.wait().unwrap().code(), Some(0));
}

/// SIGKILL a group consumer mid-stream: the resumed one repeats at most what was not
/// committed and skips nothing.
#[test]
fn group_resumes_after_sigkill() {
    let e = Env::new();
    e.produce("t", &[], &telemetry(200_000, 0));
    let mut c = e
        .cmd("consume", &["-t", "t", "--group", "k", "--value"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut first = Vec::new();
    let mut line = String::new();
    // Read slowly so the consumer blocks on the pipe and commits along the way.
    let t0 = Instant::now();
    while first.len() < 50_000 {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        first.push(line.clone());
        if first.len() % 10_000 == 0 {
            std::thread::sleep(Duration::from_millis(600));
        }
    }
    assert!(t0.elapsed() > Duration::from_secs(1));
    c.kill().unwrap();
    c.wait().unwrap();
    // What it wrote is what we read plus what still sits in the pipe.
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 || !line.ends_with('\n') {
            break;
        }
        first.push(line.clone());
    }
    let committed: u64 = lines(&e.ok("logd", &["groups", "describe", "k", "--json"], b""))[0]
        ["committed"]
        .as_u64()
        .unwrap();
    assert!(committed > 0, "no commit happened before the kill");
    assert!(
        committed <= first.len() as u64,
        "committed {committed} > written {}",
        first.len()
    );
    let rest = e.consume("t", &["--group", "k", "--value"]);
    let all = e.consume("t", &["--value"]);
    let all: Vec<&str> = all.lines().collect();
    let rest: Vec<&str> = rest.lines().collect();
    assert_eq!(rest.len() as u64, 200_000 - committed);
    assert_eq!(rest[..], all[committed as usize..]);
}

#[test]
fn second_writer_is_refused_or_waits() {
    let e = Env::new();
    e.produce("t", &[], "{\"a\":0}\n");
    let mut first = e
        .cmd("produce", &["-t", "t", "-q"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut fin = first.stdin.take().unwrap();
    writeln!(fin, "{{\"a\":1}}").unwrap();
    fin.flush().unwrap();
    // Wait until the first holds the lock (its record is visible once it idles).
    let t0 = Instant::now();
    while e.consume("t", &[]).lines().count() < 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = e.run("produce", &["-t", "t"], b"{\"a\":2}\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("locked by another writer"));
    let mut waiter = e
        .cmd("produce", &["-t", "t", "-q", "--wait-lock"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut win = waiter.stdin.take().unwrap();
    writeln!(win, "{{\"a\":3}}").unwrap();
    drop(win);
    std::thread::sleep(Duration::from_millis(300));
    writeln!(fin, "{{\"a\":2}}").unwrap();
    drop(fin);
    assert!(first.wait().unwrap().success());
    assert!(waiter.wait().unwrap().success());
    assert_eq!(
        e.consume("t", &["--value"]),
        "{\"a\":0}\n{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
    );
}

#[test]
fn files_as_input_name_their_line() {
    let e = Env::new();
    let f1 = e.path("a.ndjson");
    let f2 = e.path("b.ndjson");
    std::fs::write(&f1, "{\"a\":1}\n").unwrap();
    std::fs::write(&f2, "{\"a\":2}\nnope\n").unwrap();
    let o = e.run(
        "produce",
        &["-t", "t", f1.to_str().unwrap(), f2.to_str().unwrap()],
        b"",
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("b.ndjson: line 2: invalid JSON"), "{err}");
    assert_eq!(e.consume("t", &["--value"]), "{\"a\":1}\n{\"a\":2}\n");
}

fn last_ack(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line cut by a kill is not an acknowledgement.
    text.lines()
        .rev()
        .filter(|l| !l.is_empty())
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn acks_say_how_much_input_is_durable_and_survive_a_kill() {
    let env = Env::new();
    let mut input = String::new();
    for i in 0..1000 {
        if i == 500 {
            input.push_str("not json\r\n");
        } else {
            input.push_str(&format!("{{\"i\":{i}}}\n"));
        }
    }
    let acks = env.path("acks.ndjson");
    let acks_arg = acks.to_str().unwrap();
    env.ok(
        "produce",
        &["-t", "a", "-q", "--on-error", "skip", "--acks", acks_arg],
        input.as_bytes(),
    );
    let last = last_ack(&acks);
    assert_eq!(last["file"], "-");
    assert_eq!(last["lines"], 1000);
    assert_eq!(last["bytes"], input.len() as u64);
    assert_eq!(last["records"], 999);
    // Stopped by a bad line: the acknowledged position is before it, and durable.
    let acks2 = env.path("acks2.ndjson");
    let o = env.run(
        "produce",
        &["-t", "b", "-q", "--acks", acks2.to_str().unwrap()],
        input.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(1));
    let last = last_ack(&acks2);
    assert_eq!(last["lines"], 500);
    assert_eq!(last["records"], 500);
    let head: usize = input.lines().take(500).map(|l| l.len() + 1).sum();
    assert_eq!(last["bytes"], head as u64);
    // SIGKILLed while ingesting a file: every acknowledged record is in the log, in order.
    let big: String = (0..400_000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let file = env.path("big.ndjson");
    std::fs::write(&file, &big).unwrap();
    let acks3 = env.path("acks3.ndjson");
    let mut child = env
        .cmd(
            "produce",
            &[
                "-t",
                "c",
                "-q",
                "--acks",
                acks3.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
        )
        .spawn()
        .unwrap();
    // Killed after its first acknowledgement, in the middle of the file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while last_ack(&acks3).is_null() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(30));
    let _ = child.kill();
    let _ = child.wait();
    let last = last_ack(&acks3);
    let acked = last["records"].as_u64().unwrap_or(0) as usize;
    assert!(acked > 0, "no acknowledgement before the kill");
    assert_eq!(last["lines"].as_u64(), Some(acked as u64));
    let got = env.consume("c", &["--value"]);
    assert!(
        got.lines().count() >= acked,
        "{acked} acknowledged, {} in the log",
        got.lines().count()
    );
    assert!(big.starts_with(&got), "the log is a prefix of the input");
    {
        assert_eq!(
            last["bytes"].as_u64().unwrap() as usize,
            big.lines().take(acked).map(|l| l.len() + 1).sum::<usize>()
        );
    }
}
