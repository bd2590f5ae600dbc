//! `window`: window kinds and their boundaries, watermarks and lateness, emission modes,
//! determinism (jobs, batching, resumed state), bad input, and results checked against
//! DuckDB as an independent SQL engine.

use crate::common::{
    bin, help_examples, lines, path_with_tools, run_ok, run_with_stdin, telemetry, Env,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn win(args: &[&str], stdin: &str) -> Output {
    let mut c = Command::new(bin("window"));
    c.args(args);
    run_with_stdin(c, stdin.as_bytes())
}

fn win_ok(args: &[&str], stdin: &str) -> String {
    let mut c = Command::new(bin("window"));
    c.args(args);
    run_ok(c, stdin.as_bytes())
}

fn values(out: &str) -> Vec<Value> {
    lines(out).into_iter().map(|l| l["value"].clone()).collect()
}

/// The tests' epoch: times are given as milliseconds after it (2027-01-15T08:00:00Z, a
/// whole number of days' hours, so windows of up to an hour align on it).
const B: i64 = 1_800_000_000_000;

/// Plain records `{"id":ID,"ts":B+T,"v":V}`, one per (id, T, v).
fn recs(rows: &[(&str, i64, f64)]) -> String {
    rows.iter()
        .map(|(id, ts, v)| format!("{}\n", json!({"id": id, "ts": B + ts, "v": v})))
        .collect()
}

/// A result's window start, relative to B.
fn start(v: &Value) -> i64 {
    v["window_start_ms"].as_i64().unwrap() - B
}

#[test]
fn tumbling_boundaries_and_result_shape() {
    // A record exactly on a boundary (10000) opens the next window.
    let input = recs(&[
        ("a", 0, 1.0),
        ("a", 9999, 2.0),
        ("b", 5000, 8.0),
        ("a", 10000, 4.0),
    ]);
    let out = win_ok(
        &[
            "-q",
            "--tumbling",
            "10s",
            "--ts",
            "ts",
            "--by",
            "id",
            "--agg",
            "count(), sum(.v) as total, max(.v)",
        ],
        &input,
    );
    let l = lines(&out);
    assert_eq!(l.len(), 3, "{out}");
    assert_eq!(
        l[0],
        json!({"ts": B + 9999, "key": "a", "value": {
            "window_start": "2027-01-15T08:00:00.000Z", "window_end": "2027-01-15T08:00:10.000Z",
            "window_start_ms": B, "window_end_ms": B + 10000, "id": "a",
            "count": 2, "total": 3.0, "max_v": 2.0}})
    );
    assert_eq!(l[1]["key"], "b");
    assert_eq!(l[1]["value"]["count"], 1);
    assert_eq!(start(&l[2]["value"]), 10000);
    assert_eq!(l[2]["value"]["count"], 1);
    // Several group fields: key joined by |, each field in the value.
    let out = win_ok(
        &["-q", "--tumbling", "1h", "--ts", "ts", "--by", "id,.v"],
        &recs(&[("a", 0, 1.0)]),
    );
    assert_eq!(lines(&out)[0]["key"], "a|1");
    assert_eq!(lines(&out)[0]["value"]["v"], 1);
    // --offset shifts the alignment.
    let out = win_ok(
        &["-q", "--tumbling", "10s", "--offset", "3s", "--ts", "ts"],
        &recs(&[("a", 2999, 1.0), ("a", 3000, 1.0)]),
    );
    let v = values(&out);
    assert_eq!(start(&v[0]), -7000);
    assert_eq!(start(&v[1]), 3000);
}

#[test]
fn hopping_windows_overlap() {
    let input = recs(&[("a", 12000, 1.0), ("a", 14000, 1.0), ("a", 17000, 1.0)]);
    let out = win_ok(
        &["-q", "--hopping", "10s", "--every", "5s", "--ts", "ts"],
        &input,
    );
    let got: Vec<(i64, i64)> = values(&out)
        .iter()
        .map(|v| (start(v), v["count"].as_i64().unwrap()))
        .collect();
    // [5,15) holds 12 and 14; [10,20) all three; [15,25) 17.
    assert_eq!(got, [(5000, 2), (10000, 3), (15000, 1)]);
    let o = win(&["--hopping", "5s", "--every", "10s", "--ts", "ts"], "");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn sessions_merge_when_a_late_record_bridges_them() {
    let args = [
        "-q",
        "--session",
        "10s",
        "--ts",
        "ts",
        "--by",
        "id",
        "--max-out-of-order",
        "10s",
        "--agg",
        "count(), first(.v), last(.v)",
    ];
    // Sessions [0,15000) and [22000,32000); 13000 arrives late (within the bound) and joins them.
    let input = recs(&[
        ("a", 0, 1.0),
        ("a", 5000, 2.0),
        ("a", 22000, 3.0),
        ("a", 13000, 4.0),
    ]);
    let v = values(&win_ok(&args, &input));
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(start(&v[0]), 0);
    assert_eq!(v[0]["window_end_ms"], B + 32000);
    assert_eq!(v[0]["count"], 4);
    assert_eq!(v[0]["first_v"], 1.0);
    assert_eq!(v[0]["last_v"], 3.0);
    // Without the bridge: two sessions; a record exactly GAP after the last starts a new one.
    let input = recs(&[
        ("a", 0, 1.0),
        ("a", 5000, 2.0),
        ("a", 15000, 3.0),
        ("b", 1000, 1.0),
    ]);
    let v = values(&win_ok(&args, &input));
    let got: Vec<(&str, i64, i64)> = v
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap(),
                start(v),
                v["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("b", 1000, 1), ("a", 0, 2), ("a", 15000, 1)]);
}

#[test]
fn watermark_out_of_order_and_late_records() {
    let env = Env::new();
    let dl = env.path("late.ndjson");
    // 8000 arrives after 12000 but within 5s of out-of-order: counted. 16000 moves the
    // watermark to 11000, closing [0,10000); 9000 is then late.
    let input = recs(&[
        ("a", 1000, 1.0),
        ("a", 12000, 1.0),
        ("a", 8000, 1.0),
        ("a", 16000, 1.0),
        ("a", 9000, 1.0),
    ]);
    let base = [
        "--tumbling",
        "10s",
        "--ts",
        "ts",
        "--max-out-of-order",
        "5s",
    ];
    let o = win(&base, &input);
    assert!(o.status.success());
    let v = values(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(
        (v[0]["count"].clone(), v[1]["count"].clone()),
        (json!(2), json!(2))
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("5 records in, 2 results out, 1 late"), "{err}");

    let mut args = base.to_vec();
    args.extend(["--late", "dead-letter", dl.to_str().unwrap()]);
    let out = win_ok(&args, &input);
    assert_eq!(values(&out).len(), 2);
    let late = lines(&std::fs::read_to_string(&dl).unwrap());
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["tool"], "window");
    assert_eq!(late[0]["line"], 5);
    assert!(late[0]["error"].as_str().unwrap().starts_with("late"));
    assert!(late[0]["input"].as_str().unwrap().contains("9000"));

    // --allowed-lateness keeps the window open: 9000 counts.
    let mut args = base.to_vec();
    args.extend(["--allowed-lateness", "2s"]);
    let v = values(&win_ok(&args, &input));
    assert_eq!(v[0]["count"], 3);
    // `--late drop FILE`: FILE is an input, not part of --late.
    let f = env.path("in.ndjson");
    std::fs::write(&f, &input).unwrap();
    let mut args = base.to_vec();
    args.extend(["-q", "--late", "drop", f.to_str().unwrap()]);
    assert_eq!(values(&win_ok(&args, "")).len(), 2);
}

#[test]
fn emit_update_is_a_changelog() {
    let input = recs(&[
        ("a", 1000, 5.0),
        ("a", 2000, 3.0),
        ("a", 12000, 1.0),
        ("a", 3000, 9.0),
    ]);
    let out = win_ok(
        &[
            "-q",
            "--tumbling",
            "10s",
            "--ts",
            "ts",
            "--max-out-of-order",
            "5s",
            "--agg",
            "max(.v)",
            "--emit",
            "update",
        ],
        &input,
    );
    let got: Vec<(i64, f64)> = values(&out)
        .iter()
        .map(|v| (start(v), v["max_v"].as_f64().unwrap()))
        .collect();
    // 3.0 does not change the max: no result for it. Nothing more at end of input.
    assert_eq!(got, [(0, 5.0), (10000, 1.0), (0, 9.0)]);
}

#[test]
fn empty_input_one_record_and_end_of_input_flush() {
    let o = win(&["--tumbling", "1m", "--ts", "ts"], "");
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    let v = values(&win_ok(
        &[
            "-q",
            "--tumbling",
            "1m",
            "--ts",
            "ts",
            "--agg",
            "count(), avg(.v), stddev(.v), p99(.v), count(.missing), sum(.missing)",
            "--with-skipped",
        ],
        &recs(&[("a", 61000, 2.5)]),
    ));
    assert_eq!(
        v,
        [
            json!({"window_start": "2027-01-15T08:01:00.000Z", "window_end": "2027-01-15T08:02:00.000Z",
            "window_start_ms": B + 60000, "window_end_ms": B + 120000, "count": 1, "avg_v": 2.5,
            "stddev_v": null, "p99_v": 2.5, "count_missing": 0, "sum_missing": null, "skipped": 1})
        ]
    );
}

#[test]
fn envelopes_ts_and_values() {
    let input = concat!(
        r#"{"topic":"t","partition":0,"offset":0,"ts":1000,"key":"k","value":{"id":"a","v":1}}"#,
        "\n",
        r#"{"topic":"t","partition":0,"offset":1,"ts":2000,"key":"k","value":{"id":"a","v":2}}"#,
        "\n",
    );
    let v = values(&win_ok(
        &["-q", "--tumbling", "1s", "--by", "id", "--agg", "sum(.v)"],
        input,
    ));
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["sum_v"], 1);
    // The results are envelopes a second window reads (ts = end - 1 stays in the window).
    let first = win_ok(&["-q", "--tumbling", "1s", "--by", "id"], input);
    let again = win_ok(
        &[
            "-q",
            "--tumbling",
            "10s",
            "--input",
            "envelope",
            "--by",
            "id",
            "--agg",
            "sum(.count)",
        ],
        &first,
    );
    assert_eq!(values(&again)[0]["sum_count"], 2);
}

#[test]
fn bad_lines_follow_on_error() {
    let input = format!(
        "{}not json\n{}",
        recs(&[("a", 1000, 1.0)]),
        recs(&[("a", 2000, 1.0)])
    );
    let o = win(&["--tumbling", "1m", "--ts", "ts"], &input);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("invalid JSON"),
        "{err}"
    );
    let o = win(
        &["--tumbling", "1m", "--ts", "ts", "--on-error", "skip"],
        &input,
    );
    assert!(o.status.success());
    assert_eq!(values(&String::from_utf8(o.stdout).unwrap())[0]["count"], 2);
    let o = win(&["--tumbling", "1m"], &recs(&[("a", 1000, 1.0)]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ts FIELD"));
    for args in [
        &["--ts", "ts"][..],
        &["--tumbling", "0s"],
        &["--tumbling", "1m", "--agg", "nope(.x)"],
        &["--tumbling", "1m", "--agg", "count(), count()"],
        &["--tumbling", "1m", "--session", "1m"],
        &["--session", "1m", "--offset", "1s"],
        &["--tumbling", "1m", "--late", "bogus"],
    ] {
        assert_eq!(win(args, "").status.code(), Some(2), "{args:?}");
    }
}

/// Records over `n` seconds for `keys` keys, each up to `jitter_ms` out of order.
fn shuffled(n: usize, keys: usize, jitter_ms: i64) -> String {
    let mut s = String::new();
    let mut x: u64 = 7;
    for i in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = ((x >> 33) % (jitter_ms as u64 + 1)) as i64;
        let ts = 1_795_000_000_000 + (i as i64) * 250 - j;
        let v = if i % 17 == 0 {
            json!(null)
        } else {
            json!(((x >> 20) % 10_000) as f64 / 100.0)
        };
        let n_int = (x >> 40) % 50;
        s.push_str(&format!(
            "{}\n",
            json!({"k": format!("k{}", (x >> 12) as usize % keys), "ts": ts, "v": v, "n": n_int})
        ));
    }
    s
}

#[test]
fn output_is_the_same_whatever_the_jobs_and_batching() {
    let input = shuffled(30_000, 40, 3000);
    for kind in [
        &["--tumbling", "5s"][..],
        &["--hopping", "10s", "--every", "2s"],
        &["--session", "2s"],
    ] {
        for emit in ["final", "update"] {
            let mut args = vec![
                "-q",
                "--ts",
                "ts",
                "--by",
                "k",
                "--max-out-of-order",
                "2s",
                "--emit",
                emit,
            ];
            args.extend(kind);
            args.extend([
                "--agg",
                "count(), sum(.n), avg(.v), p95(.v), first(.v), last(.v)",
            ]);
            let one = win_ok(&[&args[..], &["-j", "1"]].concat(), &input);
            let four = win_ok(&[&args[..], &["-j", "4"]].concat(), &input);
            assert!(one == four, "{kind:?} {emit}: -j 1 and -j 4 differ");
            assert!(!one.is_empty());
            // The same input arriving in small pieces through a pipe (many small batches).
            let mut c = Command::new(bin("window"));
            c.args(&args)
                .args(["-j", "2"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            let mut child = c.spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let feed = input.clone();
            let writer = std::thread::spawn(move || {
                for (i, piece) in feed.as_bytes().chunks(7919).enumerate() {
                    stdin.write_all(piece).unwrap();
                    stdin.flush().unwrap();
                    if i % 20 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            });
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap();
            assert!(out.status.success());
            assert!(
                String::from_utf8(out.stdout).unwrap() == one,
                "{kind:?} {emit}: piecewise input differs"
            );
        }
    }
}

#[test]
fn state_resumes_windows_and_skips_what_it_counted() {
    let env = Env::new();
    let state = env.path("w.state");
    let envs: Vec<String> = shuffled(4000, 5, 1000)
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{{\"topic\":\"t\",\"partition\":{},\"offset\":{},\"ts\":0,\"key\":null,\"value\":{l}}}\n", i % 2, i / 2))
        .collect();
    let all = envs.concat();
    let args = [
        "-q",
        "--tumbling",
        "10s",
        "--ts",
        "ts",
        "--by",
        "k",
        "--max-out-of-order",
        "1s",
        "--agg",
        "count(), sum(.n), p50(.v)",
    ];
    let whole = win_ok(&args, &all);
    let mut with_state = args.to_vec();
    with_state.extend(["--state", state.to_str().unwrap()]);
    // Three runs; the second and third are handed an overlap already counted.
    let a = win_ok(&with_state, &envs[..1500].concat());
    let b = win_ok(&with_state, &envs[1000..3000].concat());
    let c = win_ok(&with_state, &envs[2500..].concat());
    // The closed results of the three runs are those of one run; the windows still open
    // are in the state file (one run flushes them at the end instead).
    let resumed = format!("{a}{b}{c}");
    assert!(
        whole.starts_with(&resumed),
        "resumed results are not a prefix of one run's"
    );
    let snap: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(snap["kind"], "kappa.window-state");
    let open = snap["body"]["windows"].as_array().unwrap().len();
    assert_eq!(lines(&whole).len(), lines(&resumed).len() + open);
    let o = win(&with_state[1..], "");
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{open} windows kept open")), "{err}");
    // Other options with the same state file: refused.
    let mut other = with_state.clone();
    assert_eq!(other[2], "10s");
    other[2] = "20s";
    assert_eq!(win(&other, "").status.code(), Some(2));
    // A damaged state file is detected.
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replacen("\"wm\":", "\"wm\":1", 1)).unwrap();
    let o = win(&with_state, "");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum"));
}

#[test]
fn idle_timeout_closes_windows_on_live_input() {
    let mut child = Command::new(bin("window"))
        .args([
            "-q",
            "--tumbling",
            "1s",
            "--ts",
            "ts",
            "--idle-timeout",
            "200ms",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(recs(&[("a", 1000, 1.0), ("a", 1500, 1.0)]).as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // The window closed with stdin still open (generous bound: this is not a timing test).
    assert!(started.elapsed() < Duration::from_secs(20));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["value"]["count"], 2);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn duckdb_available() -> bool {
    Command::new("python3")
        .args(["-c", "import duckdb"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs SQL in DuckDB over `file` (as table `t`); rows as JSON arrays.
fn duckdb(file: &std::path::Path, sql: &str) -> Vec<Value> {
    let script = format!(
        "import duckdb, json\ncon = duckdb.connect()\ncon.execute(\"create view t as select * from read_json('{}', format='newline_delimited')\")\nfor r in con.execute({:?}).fetchall():\n    print(json.dumps(list(r)))\n",
        file.display(),
        sql
    );
    let o = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    lines(&String::from_utf8(o.stdout).unwrap())
}

/// count, min, max, percentiles and integer sums must be equal; a float sum, avg and stddev
/// within 1e-9 relative (another engine adds in another order).
fn close(name: &str, a: &Value, b: &Value) -> bool {
    let tolerant = ["sum_", "avg_", "stddev_"]
        .iter()
        .any(|p| name.starts_with(p));
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if tolerant && (a.is_f64() || b.is_f64()) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(f64::MIN_POSITIVE)
        }
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn compare(got: &[Value], want: &[Value], names: &[&str]) {
    assert_eq!(got.len(), want.len(), "result counts differ");
    for (g, w) in got.iter().zip(want) {
        for (i, n) in names.iter().enumerate() {
            assert!(
                close(n, &g[n], &w[i]),
                "{n}: window gave {}, DuckDB {} (row {w})",
                g[n],
                w[i]
            );
        }
    }
}

#[test]
fn agrees_with_duckdb() {
    assert!(
        duckdb_available(),
        "this test checks results against DuckDB: pip install duckdb (.ci/run does)"
    );
    let env = Env::new();
    // Generated data, out of order within --max-out-of-order: nothing is late.
    let file = env.path("gen.ndjson");
    std::fs::write(&file, shuffled(20_000, 30, 4000)).unwrap();
    check_with_duckdb(
        &file,
        &["--tumbling", "1m", "--by", "k", "--max-out-of-order", "4s", "-j", "2",
          "--agg", "count(), sum(.n), min(.v), max(.v), avg(.v), p50(.v), p95(.v), p99(.v), stddev(.v), count_distinct(.n)"],
        "select (ts // 60000) * 60000, k, count(*), sum(n), min(v), max(v), avg(v), \
         quantile_disc(v, 0.5), quantile_disc(v, 0.95), quantile_disc(v, 0.99), stddev(v), \
         count(distinct n) from t group by all order by 1, 2",
        &["window_start_ms", "k", "count", "sum_n", "min_v", "max_v", "avg_v", "p50_v", "p95_v",
          "p99_v", "stddev_v", "count_distinct_n"],
    );
    // The committed fixture dump, by vehicle per 10 s.
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/input.ndjson");
    let speed = [
        "window_start_ms",
        "vehicle_id",
        "count",
        "avg_speed",
        "max_speed",
        "p95_speed",
    ];
    check_with_duckdb(
        &fixture,
        &[
            "--tumbling",
            "10s",
            "--by",
            "vehicle_id",
            "--agg",
            "count(), avg(.speed), max(.speed), p95(.speed)",
        ],
        "select (ts // 10000) * 10000, vehicle_id, count(*), avg(speed), max(speed), \
         quantile_disc(speed, 0.95) from t group by all order by 1, 2",
        &speed,
    );
    // The committed v1 log itself, read back by consume: envelopes, event time from their
    // ts, partitions one after another (so event time jumps back: --max-out-of-order).
    let fixture_log =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/log");
    let mut c = Command::new(bin("consume"));
    c.arg("--log").arg(&fixture_log).args(["-t", "telemetry"]);
    let dumped = env.path("fixture-envelopes.ndjson");
    std::fs::write(&dumped, run_ok(c, b"")).unwrap();
    let mut got = values(&win_ok(
        &[
            "-q",
            "--tumbling",
            "10s",
            "--by",
            ".vehicle_id",
            "--max-out-of-order",
            "1h",
            "--agg",
            "count(), sum(.speed), min(.speed), max(.speed), avg(.speed), p50(.speed), p95(.speed)",
            dumped.to_str().unwrap(),
        ],
        "",
    ));
    got.sort_by_key(|v| {
        (
            v["window_start_ms"].as_i64(),
            v["vehicle_id"].as_str().map(String::from),
        )
    });
    let want = duckdb(
        &dumped,
        "select (ts // 10000) * 10000, value.vehicle_id, count(*), sum(value.speed), \
         min(value.speed), max(value.speed), avg(value.speed), quantile_disc(value.speed, 0.5), \
         quantile_disc(value.speed, 0.95) from t group by all order by 1, 2",
    );
    assert!(want.len() > 5);
    compare(
        &got,
        &want,
        &[
            "window_start_ms",
            "vehicle_id",
            "count",
            "sum_speed",
            "min_speed",
            "max_speed",
            "avg_speed",
            "p50_speed",
            "p95_speed",
        ],
    );
    // The telemetry generator's records, by vehicle per minute (the benchmark's query).
    let tel = env.path("tel.ndjson");
    std::fs::write(&tel, telemetry(3000, 1_795_000_000_500)).unwrap();
    check_with_duckdb(
        &tel,
        &[
            "--tumbling",
            "1m",
            "--by",
            "vehicle_id",
            "--agg",
            "count(), avg(.speed), max(.speed), p95(.speed)",
        ],
        "select (epoch_ms(time_bucket(interval 1 minute, epoch_ms(ts)))), vehicle_id, count(*), \
         avg(speed), max(speed), quantile_disc(speed, 0.95) from t group by all order by 1, 2",
        &speed,
    );
}

/// Runs window over `file` (event time from `ts`) and compares its results, ordered by window
/// start then group (`names[1]`), with DuckDB's rows for `sql`, column by column.
fn check_with_duckdb(file: &std::path::Path, args: &[&str], sql: &str, names: &[&str]) {
    let mut all = vec!["-q", "--ts", "ts"];
    all.extend(args);
    all.push(file.to_str().unwrap());
    let mut got = values(&win_ok(&all, ""));
    got.sort_by_key(|v| {
        (
            v["window_start_ms"].as_i64(),
            v[names[1]].as_str().map(String::from),
        )
    });
    let want = duckdb(file, sql);
    assert!(!want.is_empty());
    compare(&got, &want, names);
}

#[test]
fn man_page_examples() {
    let env = Env::new();
    let dir = env.dir.path();
    let examples = help_examples("window");
    assert!(examples.len() >= 6);
    // Envelopes carrying every field the examples read.
    let mut input = String::new();
    for i in 0..200 {
        let value = json!({"vehicle_id": format!("truck-{}", i % 3), "station": format!("s{}", i % 2),
            "driver": "d1", "speed": 40 + i % 50, "temp": 20.5, "odometer": 1000 + i, "status": "moving",
            "ts": 1_795_000_000_000i64 + i * 7000});
        input.push_str(&format!(
            "{}\n",
            json!({"topic": "telemetry", "partition": 0, "offset": i, "ts": 1_795_000_000_000i64 + i * 7000, "key": null, "value": value})
        ));
    }
    let log = env.log();
    let o = env.run(
        "produce",
        &["-q", "-t", "telemetry", "--envelope"],
        input.as_bytes(),
    );
    assert!(o.status.success());
    let path = path_with_tools();
    for ex in examples {
        let mut c = Command::new("bash");
        c.args(["-o", "pipefail", "-c", &ex])
            .current_dir(dir)
            .env("PATH", &path)
            .env("KAPPA_LOG", &log);
        let o = run_with_stdin(c, input.as_bytes());
        assert!(
            o.status.success(),
            "{ex}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8(o.stdout).unwrap();
        let v = values(&out);
        assert!(!v.is_empty(), "{ex}: no results");
        assert!(v.iter().all(|v| v["window_end_ms"].is_i64()), "{ex}");
    }
}

#[test]
fn sigterm_with_state_keeps_what_was_read() {
    let env = Env::new();
    let state = env.path("live.state");
    let mut child = Command::new(bin("window"))
        .args(["-q", "--tumbling", "1m", "--ts", "ts", "--state"])
        .arg(&state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(recs(&[("a", 1000, 1.0), ("a", 2000, 1.0), ("b", 3000, 1.0)]).as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    // Wait until the records were taken in (the state file is written on idle input).
    let started = Instant::now();
    while !state.exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        out.stdout.is_empty(),
        "the window is still open: no result yet"
    );
    let snap: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(snap["body"]["windows"][0]["acc"]["count"], 3);
    // The next run continues the window and closes it at the end of its input.
    let o = win(
        &[
            "-q",
            "--tumbling",
            "1m",
            "--ts",
            "ts",
            "--state",
            state.to_str().unwrap(),
        ],
        &recs(&[("a", 61000, 1.0)]),
    );
    assert!(o.status.success());
    let v = values(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["count"], 3);
}

#[test]
fn hopping_boundaries_offsets_and_the_global_group() {
    // A record exactly on a boundary (10000) is in [5000,15000) and [10000,20000), not in
    // [0,10000); a record just before it (9999) is in [0,10000) and [5000,15000).
    let out = win_ok(
        &["-q", "--hopping", "10s", "--every", "5s", "--ts", "ts"],
        &recs(&[("a", 9999, 1.0), ("a", 10000, 1.0)]),
    );
    let l = lines(&out);
    let got: Vec<(i64, i64)> = l
        .iter()
        .map(|r| (start(&r["value"]), r["value"]["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, [(0, 1), (5000, 2), (10000, 1)]);
    // Without --by: one global group, key null, no group fields.
    assert!(l
        .iter()
        .all(|r| r["key"].is_null() && r["value"].get("id").is_none()));
    // A negative offset is the positive one modulo the size: -3s is +7s for 10s windows.
    for off in ["-3s", "7s"] {
        let v = values(&win_ok(
            &["-q", "--tumbling", "10s", "--offset", off, "--ts", "ts"],
            &recs(&[("a", 6999, 1.0), ("a", 7000, 1.0)]),
        ));
        assert_eq!(
            (start(&v[0]), start(&v[1])),
            (-3000, 7000),
            "--offset {off}"
        );
    }
    // Hopping with an offset.
    let v = values(&win_ok(
        &[
            "-q",
            "--hopping",
            "10s",
            "--every",
            "5s",
            "--offset",
            "1s",
            "--ts",
            "ts",
        ],
        &recs(&[("a", 6000, 1.0)]),
    ));
    let starts: Vec<i64> = v.iter().map(start).collect();
    assert_eq!(starts, [1000, 6000]);
    // A record in too many windows is refused up front.
    let o = win(&["--hopping", "1w", "--every", "1ms", "--ts", "ts"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("at most 100000"));
}

#[test]
fn a_late_record_within_the_allowed_lateness_bridges_two_sessions() {
    // Sessions [0,10000) and [14000,24000), then 30000 moves the watermark to 30000: both
    // are behind it. 9000 arrives behind the watermark; its [9000,19000) overlaps both. With
    // 25 s of allowed lateness they are still open, and it joins them into [0,24000).
    let input = recs(&[
        ("a", 0, 1.0),
        ("a", 14000, 2.0),
        ("a", 30000, 3.0),
        ("a", 9000, 4.0),
    ]);
    let base = [
        "--session",
        "10s",
        "--ts",
        "ts",
        "--agg",
        "count(), sum(.v)",
    ];
    let mut args = base.to_vec();
    args.extend(["-q", "--allowed-lateness", "25s"]);
    let v = values(&win_ok(&args, &input));
    let got: Vec<(i64, i64, i64)> = v
        .iter()
        .map(|v| {
            (
                start(v),
                v["window_end_ms"].as_i64().unwrap() - B,
                v["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(0, 24000, 3), (30000, 40000, 1)]);
    assert_eq!(v[0]["sum_v"], 7.0);
    // Without the lateness it is late (counted in the summary, in both --late modes).
    let env = Env::new();
    let dl = env.path("late.ndjson");
    for late in [
        vec!["--late", "drop"],
        vec!["--late", "dead-letter", dl.to_str().unwrap()],
    ] {
        let mut args = base.to_vec();
        args.extend(late.iter().copied());
        let o = win(&args, &input);
        assert!(o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("4 records in, 3 results out, 1 late"),
            "{late:?}: {err}"
        );
    }
    let dead = lines(&std::fs::read_to_string(&dl).unwrap());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["line"], 4);
}

#[test]
fn emit_update_retracts_sessions_that_no_longer_stand() {
    // a: [0,15000) then [22000,32000); 13000 bridges them into [0,32000): the result of the
    // session that started at 22000 is retracted first. b: [20000,30000), then 15000 starts
    // it earlier: its result at 20000 is retracted.
    let input = recs(&[
        ("a", 0, 1.0),
        ("a", 5000, 1.0),
        ("a", 22000, 1.0),
        ("b", 20000, 1.0),
        ("b", 15000, 1.0),
        ("a", 13000, 1.0),
    ]);
    let args = [
        "-q",
        "--session",
        "10s",
        "--ts",
        "ts",
        "--by",
        "id",
        "--max-out-of-order",
        "10s",
    ];
    let mut update = args.to_vec();
    update.extend(["--emit", "update"]);
    let out = win_ok(&update, &input);
    let got: Vec<(String, i64, Value)> = values(&out)
        .iter()
        .map(|v| {
            let what = if v["retracted"] == true {
                json!("retracted")
            } else {
                v["count"].clone()
            };
            (v["id"].as_str().unwrap().to_string(), start(v), what)
        })
        .collect();
    let want: Vec<(String, i64, Value)> = [
        ("a", 0, json!(1)),
        ("a", 0, json!(2)),
        ("a", 22000, json!(1)),
        ("b", 20000, json!(1)),
        ("b", 20000, json!("retracted")),
        ("b", 15000, json!(2)),
        ("a", 22000, json!("retracted")),
        ("a", 0, json!(4)),
    ]
    .into_iter()
    .map(|(k, s, w)| (k.to_string(), s, w))
    .collect();
    assert_eq!(got, want);
    // The changelog applied to a table keyed by group and window start leaves exactly the
    // final results.
    let env = Env::new();
    env.ok(
        "store",
        &[
            "-q",
            "--table",
            "s",
            "--key",
            "id,window_start_ms",
            "--delete-when",
            ".retracted",
        ],
        out.as_bytes(),
    );
    let table: Vec<(String, i64, i64)> = lines(&env.ok("store", &["export", "s"], b""))
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                start(v),
                v["count"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut fin: Vec<(String, i64, i64)> = values(&win_ok(&args, &input))
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                start(v),
                v["count"].as_i64().unwrap(),
            )
        })
        .collect();
    fin.sort();
    let mut table = table;
    table.sort();
    assert_eq!(table, fin);
    assert_eq!(fin, [("a".to_string(), 0, 4), ("b".to_string(), 15000, 2)]);
}

#[test]
fn a_window_closed_by_a_later_record_reaches_stdout_with_the_input_still_open() {
    let mut child = Command::new(bin("window"))
        .args(["-q", "--tumbling", "1s", "--ts", "ts"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // 2500 moves the watermark past [1000,2000): its result is written and flushed now.
    stdin
        .write_all(recs(&[("a", 1000, 1.0), ("a", 1500, 1.0), ("a", 2500, 1.0)]).as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (start(&v["value"]), v["value"]["count"].clone()),
        (1000, json!(2))
    );
    drop(stdin);
    line.clear();
    out.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(start(&v["value"]), 2000);
    assert!(child.wait().unwrap().success());
}

#[test]
fn processing_time_windows_use_the_clock() {
    // No event time needed: records without ts are windowed by when they arrive.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let out = win_ok(
        &["-q", "--tumbling", "1h", "--processing-time", "--by", "id"],
        "{\"id\":\"a\"}\n{\"id\":\"a\"}\n{\"id\":\"b\"}\n",
    );
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let v = values(&out);
    let counts: i64 = v.iter().map(|v| v["count"].as_i64().unwrap()).sum();
    assert_eq!(counts, 3);
    for r in &v {
        let s = r["window_start_ms"].as_i64().unwrap();
        assert_eq!(s % 3_600_000, 0);
        assert!(s <= after && s + 3_600_000 > before - 3_600_000, "{r}");
    }
}

#[test]
fn hostile_numbers_and_timestamps() {
    // An envelope ts far outside any calendar is bad input (line named), not a hang.
    let far = "{\"topic\":\"t\",\"partition\":0,\"offset\":0,\"ts\":-9223372036854775808,\"key\":null,\"value\":{\"v\":1}}\n";
    let ok = "{\"topic\":\"t\",\"partition\":0,\"offset\":1,\"ts\":1000,\"key\":null,\"value\":{\"v\":1}}\n";
    let input = format!("{ok}{far}{ok}");
    let o = win(&["--tumbling", "1m"], &input);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 2") && err.contains("out of range"),
        "{err}"
    );
    let o = win(&["-q", "--tumbling", "1m", "--on-error", "skip"], &input);
    assert!(o.status.success());
    assert_eq!(values(&String::from_utf8(o.stdout).unwrap())[0]["count"], 2);
    // Numbers beyond a double and non-numbers are skipped by numeric aggregates, counted.
    let v = values(&win_ok(
        &[
            "-q",
            "--tumbling",
            "1m",
            "--ts",
            "ts",
            "--with-skipped",
            "--agg",
            "count(), sum(.v), max(.v), p50(.v), count_distinct(.v)",
        ],
        &format!(
            "{}{}{}{}",
            "{\"ts\":1800000000000,\"v\":1e400}\n",
            "{\"ts\":1800000000000,\"v\":\"fast\"}\n",
            "{\"ts\":1800000000000,\"v\":-2e400}\n",
            "{\"ts\":1800000000000,\"v\":5}\n"
        ),
    ));
    assert_eq!(
        (
            &v[0]["count"],
            &v[0]["sum_v"],
            &v[0]["max_v"],
            &v[0]["p50_v"],
            &v[0]["skipped"],
            &v[0]["count_distinct_v"]
        ),
        (
            &json!(4),
            &json!(5),
            &json!(5),
            &json!(5),
            &json!(3),
            &json!(4)
        )
    );
}
