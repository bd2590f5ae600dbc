//! `store`: upserts and deletes, idempotence by provenance, atomic batches under SIGKILL,
//! reading (get, scan, export), diff, versions, compaction, SQLite, bad input and damage.

use crate::common::*;
use std::process::{Command, Stdio};

fn store(e: &Env, args: &[&str], stdin: &str) -> std::process::Output {
    e.run("store", args, stdin.as_bytes())
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn export(e: &Env, table: &str) -> String {
    e.ok("store", &["export", table], b"")
}

/// `n` envelopes of one partition with keys cycling over `keys` values.
fn envelopes(topic: &str, from: u64, n: u64, keys: u64) -> String {
    let mut s = String::new();
    for o in from..from + n {
        s.push_str(&format!(
            "{{\"topic\":\"{topic}\",\"partition\":0,\"offset\":{o},\"ts\":{},\"key\":\"k{}\",\"value\":{{\"n\":{o},\"x\":\"{}\"}}}}\n",
            1_700_000_000_000u64 + o,
            o % keys,
            "y".repeat((o % 13) as usize)
        ));
    }
    s
}

#[test]
fn upserts_deletes_and_reads() {
    let e = Env::new();
    let input = r#"{"id":"b","v":1}
{"id":"a","v":2,"gone":false}
{"id":"b","v":3}
{"id":"c","v":4}
{"id":"c","v":5,"gone":true}
{"id":"ab","v":6}
"#;
    let o = store(
        &e,
        &[
            "--table",
            "t",
            "--key",
            "id",
            "--delete-when",
            ".gone == true",
        ],
        input,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("6 records to t@v1"), "{}", stderr(&o));
    // Last write wins; --delete-when deleted c.
    assert_eq!(
        export(&e, "t"),
        "{\"key\":\"a\",\"id\":\"a\",\"v\":2,\"gone\":false}\n{\"key\":\"ab\",\"id\":\"ab\",\"v\":6}\n{\"key\":\"b\",\"id\":\"b\",\"v\":3}\n"
    );
    // get: in the order asked; exit 1 naming the absent key, the others still printed.
    assert_eq!(
        e.ok("store", &["get", "t", "b", "a", "--value"], b""),
        "{\"id\":\"b\",\"v\":3}\n{\"id\":\"a\",\"v\":2,\"gone\":false}\n"
    );
    let o = store(&e, &["get", "t", "a", "c"], "");
    assert_eq!(code(&o), 1);
    assert_eq!(lines(&String::from_utf8_lossy(&o.stdout)).len(), 1);
    assert!(stderr(&o).contains("no key \"c\""), "{}", stderr(&o));
    // A null value in an envelope deletes too.
    e.ok(
        "store",
        &["--table", "t", "-q"],
        b"{\"key\":\"ab\",\"value\":null}\n",
    );
    let keys: Vec<String> = lines(&e.ok("store", &["scan", "t"], b""))
        .iter()
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["a", "b"]);
    // scan: prefix, range, limit.
    let e2 = Env::new();
    let many: String = (0..20)
        .map(|i| format!("{{\"id\":\"k{i:02}\",\"v\":{i}}}\n"))
        .collect();
    e2.ok(
        "store",
        &["--table", "s", "--key", "id", "-q"],
        many.as_bytes(),
    );
    let scan = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["scan", "s"];
        a.extend_from_slice(args);
        lines(&e2.ok("store", &a, b""))
            .iter()
            .map(|v| v["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(scan(&["--prefix", "k1"]).len(), 10);
    assert_eq!(
        scan(&["--from", "k05", "--to", "k08"]),
        ["k05", "k06", "k07"]
    );
    assert_eq!(scan(&["--from", "k18", "--limit", "5"]), ["k18", "k19"]);
    // CSV export: the key column, then fields in order of first appearance.
    let csv = e.ok("store", &["export", "t", "--csv"], b"");
    assert_eq!(csv, "key,id,v,gone\na,a,2,false\nb,b,3,\n");
    let csv = e.ok(
        "store",
        &[
            "export",
            "t",
            "--csv",
            "--columns",
            "v",
            "--key-column",
            "id",
        ],
        b"",
    );
    assert_eq!(csv, "id,v\na,2\nb,3\n");
}

#[test]
fn idempotent_by_provenance_and_flat_maps() {
    let e = Env::new();
    let all = envelopes("tel", 0, 300, 17);
    e.ok("store", &["--table", "clean", "-q"], all.as_bytes());
    let want = export(&e, "clean");
    // Overlapping ranges, replays and reruns leave the table as one clean run.
    let first: String = all.lines().take(120).map(|l| format!("{l}\n")).collect();
    let mid: String = all
        .lines()
        .skip(60)
        .take(150)
        .map(|l| format!("{l}\n"))
        .collect();
    e.ok("store", &["--table", "t", "-q"], first.as_bytes());
    let o = store(&e, &["--table", "t"], &mid);
    assert!(
        stderr(&o).contains("90 upserts, 0 deletes, 60 already applied"),
        "{}",
        stderr(&o)
    );
    e.ok("store", &["--table", "t", "-q"], all.as_bytes());
    e.ok("store", &["--table", "t", "-q"], all.as_bytes());
    assert_eq!(export(&e, "t"), want);
    let stats: serde_json::Value =
        serde_json::from_str(&e.ok("store", &["stats", "t"], b"")).unwrap();
    assert_eq!(stats["sources"][0]["topic"], "tel");
    assert_eq!(stats["sources"][0]["offset"], 299);
    assert_eq!(stats["keys"], 17);
    // A flat map: outputs (offset, sub); a rerun after a cut between subs applies the rest.
    let fm = |o: u64, sub: u64| {
        format!(
            "{{\"topic\":\"f\",\"partition\":0,\"offset\":{o},\"sub\":{sub},\"key\":\"k{o}-{sub}\",\"value\":{{\"s\":{sub}}}}}\n"
        )
    };
    let whole: String = (0..5).flat_map(|o| (0..3).map(move |s| fm(o, s))).collect();
    let cut: String = (0..3)
        .flat_map(|o| (0..3).map(move |s| fm(o, s)))
        .collect::<String>()
        + &fm(3, 0);
    e.ok("store", &["--table", "fm", "-q"], cut.as_bytes());
    let o = store(&e, &["--table", "fm"], &whole);
    assert!(
        stderr(&o).contains("5 upserts, 0 deletes, 10 already applied"),
        "{}",
        stderr(&o)
    );
    assert_eq!(lines(&export(&e, "fm")).len(), 15);
}

#[test]
fn sigkill_never_leaves_a_half_batch_and_a_rerun_equals_a_clean_run() {
    let e = Env::new();
    let n = 400_000u64;
    let input = e.path("in.ndjson");
    std::fs::write(&input, envelopes("tel", 0, n, 5_000)).unwrap();
    let clean = Env::new();
    let o = Command::new(bin("store"))
        .arg("--log")
        .arg(clean.log())
        .args(["--table", "t", "-q"])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let want = export(&clean, "t");
    let all: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut killed_mid_run = 0;
    for (i, delay_ms) in [30u64, 90, 160, 260].iter().enumerate() {
        let tab = format!("k{i}");
        // A pipe that delivers in pieces, so batches commit while the input is read.
        let mut child = Command::new(bin("store"))
            .arg("--log")
            .arg(e.log())
            .args(["--table", &tab, "-q", "--fsync", "never"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut si = child.stdin.take().unwrap();
        let lines_ = all.clone();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            for chunk in lines_.chunks(2_000) {
                let mut b = chunk.join("\n");
                b.push('\n');
                if si.write_all(b.as_bytes()).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(*delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let _ = feeder.join();
        if !status.success() {
            killed_mid_run += 1;
        }
        // What a reader sees after the kill is exactly the input up to the applied offset:
        // never part of a batch.
        let stats = store(&e, &["stats", &tab], "");
        if code(&stats) == 0 {
            let s: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
            let applied = s["sources"][0]["offset"].as_u64().map_or(0, |o| o + 1);
            let prefix = Env::new();
            let mut p: String = all[..applied as usize].join("\n");
            p.push('\n');
            if applied > 0 {
                prefix.ok("store", &["--table", "t", "-q"], p.as_bytes());
                assert_eq!(export(&e, &tab), export(&prefix, "t"), "after kill {i}");
            }
        } else {
            // Killed before the table existed.
            assert!(stderr(&stats).contains("no table"), "{}", stderr(&stats));
        }
        // The rerun of the whole input completes the table exactly.
        let o = Command::new(bin("store"))
            .arg("--log")
            .arg(e.log())
            .args(["--table", &tab, "-q"])
            .stdin(std::fs::File::open(&input).unwrap())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(export(&e, &tab), want, "rerun after kill {i}");
    }
    assert!(killed_mid_run > 0, "no run was killed before its end");
    let o = e.run("logd", &["verify"], b"");
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn consume_group_commits_only_what_store_applied() {
    let e = Env::new();
    let recs: String = (0..500)
        .map(|i| format!("{{\"dev\":\"d{}\",\"n\":{i}}}\n", i % 9))
        .collect();
    e.produce("tel", &["--key", "dev", "--partitions", "3"], &recs);
    let pipeline = |e: &Env| {
        let c = e
            .cmd("consume", &["-t", "tel", "--group", "g", "--no-commit"])
            .output()
            .unwrap();
        assert!(c.status.success());
        let o = store(
            e,
            &["--table", "live", "--commit-group", "g"],
            &String::from_utf8_lossy(&c.stdout),
        );
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        stderr(&o)
    };
    assert!(pipeline(&e).contains("500 upserts"));
    let lag = e.ok("logd", &["groups", "describe", "g"], b"");
    assert!(lag.lines().skip(1).all(|l| l.ends_with("\t0")), "{lag}");
    // The group has nothing left: a second run applies nothing.
    assert!(pipeline(&e).contains("0 records"));
    e.produce("tel", &["--key", "dev"], "{\"dev\":\"d1\",\"n\":1000}\n");
    assert!(pipeline(&e).contains("1 upserts"));
    let d1 = e.ok("store", &["get", "live", "d1", "--value"], b"");
    assert_eq!(d1, "{\"dev\":\"d1\",\"n\":1000}\n");
}

#[test]
fn window_results_land_by_group_key() {
    let e = Env::new();
    let mut win = Command::new(bin("window"));
    win.args(["--tumbling", "1m", "--ts", "ts", "--by", "vehicle_id"])
        .args(["--agg", "count(),avg(.speed)"]);
    let o = run_with_stdin(win, telemetry(600, 1_700_000_000_000).as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let w = String::from_utf8(o.stdout).unwrap();
    e.ok("store", &["--table", "speed", "-q"], w.as_bytes());
    let rows = lines(&export(&e, "speed"));
    assert_eq!(rows.len(), 7);
    assert_eq!(rows[0]["key"], "truck-0");
    assert!(rows[0]["avg_speed"].is_number(), "{}", rows[0]);
    // Keyed by window too: one row per group and window.
    e.ok(
        "store",
        &[
            "--table",
            "per_window",
            "--key",
            "vehicle_id,window_start_ms",
            "-q",
        ],
        w.as_bytes(),
    );
    assert_eq!(lines(&export(&e, "per_window")).len(), w.lines().count());
}

#[test]
fn diff_against_files_and_tables() {
    let e = Env::new();
    let recs = "{\"id\":\"a\",\"avg\":1.5,\"n\":3}\n{\"id\":\"b\",\"avg\":2.25,\"n\":4}\n{\"id\":\"c\",\"avg\":10,\"n\":1}\n";
    e.ok(
        "store",
        &["--table", "t", "--key", "id", "-q"],
        recs.as_bytes(),
    );
    let csv = e.path("expected.csv");
    std::fs::write(&csv, e.ok("store", &["export", "t", "--csv"], b"")).unwrap();
    let nd = e.path("expected.ndjson");
    std::fs::write(&nd, recs).unwrap();
    let ok = store(&e, &["diff", "t", csv.to_str().unwrap()], "");
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    assert!(ok.stdout.is_empty());
    let ok = store(&e, &["diff", "t", nd.to_str().unwrap(), "--key", "id"], "");
    assert_eq!(code(&ok), 0, "{}", String::from_utf8_lossy(&ok.stdout));
    // A changed, a removed and an added key.
    std::fs::write(
        &csv,
        "key,id,avg,n\na,a,1.5000000001,3\nb,b,2.5,4\nd,d,1,1\n",
    )
    .unwrap();
    let o = store(&e, &["diff", "t", csv.to_str().unwrap()], "");
    assert_eq!(code(&o), 1);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("~ \"b\" avg: 2.25 -> \"2.5\""), "{out}");
    assert!(out.contains("- \"c\""), "{out}");
    assert!(out.contains("+ \"d\""), "{out}");
    assert!(out.contains("~ \"a\""), "{out}");
    assert!(
        stderr(&o).contains("1 only in t, 1 only in"),
        "{}",
        stderr(&o)
    );
    // Within the tolerance, a stays equal.
    let o = store(
        &e,
        &["diff", "t", csv.to_str().unwrap(), "--tolerance", "1e-9"],
        "",
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("\"a\""));
    // Two tables.
    e.ok(
        "store",
        &["--table", "t@v2", "--key", "id", "-q"],
        recs.replace("\"n\":1", "\"n\":2").as_bytes(),
    );
    let o = store(&e, &["diff", "t", "t@v2"], "");
    assert_eq!(code(&o), 1);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "--- t\n+++ t@v2\n~ \"c\" n: 1 -> 2\n"
    );
    let o = store(&e, &["diff", "t", "t@v2", "-q"], "");
    assert_eq!((code(&o), o.stdout.len()), (1, 0));
}

#[test]
fn versions_promote_and_drop() {
    let e = Env::new();
    e.ok(
        "store",
        &["--table", "trips", "--key", "id", "-q"],
        b"{\"id\":1,\"v\":\"old\"}\n",
    );
    e.ok(
        "store",
        &["--table", "trips@v2", "--key", "id", "-q"],
        b"{\"id\":1,\"v\":\"new\"}\n",
    );
    assert_eq!(
        e.ok("store", &["get", "trips", "1", "--value"], b""),
        "{\"id\":1,\"v\":\"old\"}\n"
    );
    assert_eq!(
        e.ok("store", &["get", "trips@v2", "1", "--value"], b""),
        "{\"id\":1,\"v\":\"new\"}\n"
    );
    let v = e.ok("store", &["versions", "trips"], b"");
    assert!(
        v.lines().next().unwrap().ends_with("live") && v.lines().count() == 2,
        "{v}"
    );
    e.ok("store", &["promote", "trips@v2"], b"");
    assert_eq!(
        e.ok("store", &["get", "trips", "1", "--value"], b""),
        "{\"id\":1,\"v\":\"new\"}\n"
    );
    // Writing NAME now goes to the live version.
    e.ok(
        "store",
        &["--table", "trips", "--key", "id", "-q"],
        b"{\"id\":2,\"v\":\"x\"}\n",
    );
    assert_eq!(lines(&export(&e, "trips@v2")).len(), 2);
    let o = store(&e, &["drop", "trips@v2"], "");
    assert_eq!(code(&o), 2, "the live version is not dropped");
    e.ok("store", &["drop", "trips@v1"], b"");
    assert_eq!(
        e.ok("store", &["list"], b""),
        "trips\tlive v2\tversions v2\n"
    );
    for (args, want) in [
        (vec!["get", "trips@v1", "1"], 2),
        (vec!["get", "nope", "1"], 2),
        (vec!["promote", "trips"], 2),
        (vec!["promote", "trips@v9"], 2),
        (vec!["get", "../x", "1"], 2),
        (vec!["export", "trips@v0"], 2),
    ] {
        assert_eq!(code(&store(&e, &args, "")), want, "{args:?}");
    }
    e.ok("store", &["drop", "trips"], b"");
    assert_eq!(e.ok("store", &["list"], b""), "");
    // A second writer of the same version is refused while the first runs.
    let mut first = e
        .cmd("store", &["--table", "busy", "--key", "id", "-q"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = store(&e, &["--table", "busy", "--key", "id"], "{\"id\":1}\n");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("another store"), "{}", stderr(&o));
    drop(first.stdin.take());
    assert!(first.wait().unwrap().success());
}

#[test]
fn compaction_keeps_the_table_and_readers_keep_working() {
    let e = Env::new();
    let input = envelopes("tel", 0, 50_000, 300);
    e.ok(
        "store",
        &["--table", "t", "-q", "--compact-ratio", "1"],
        input.as_bytes(),
    );
    let before = export(&e, "t");
    let s: serde_json::Value = serde_json::from_str(&e.ok("store", &["stats", "t"], b"")).unwrap();
    assert!(s["garbage_ratio"].as_f64().unwrap() > 0.99, "{s}");
    // Readers export over and over while the changelog is compacted under them.
    let log = e.log();
    let want = before.clone();
    let reader = std::thread::spawn(move || {
        for _ in 0..30 {
            let o = Command::new(bin("store"))
                .arg("--log")
                .arg(&log)
                .args(["export", "t"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(String::from_utf8_lossy(&o.stdout), want);
        }
    });
    for _ in 0..5 {
        e.ok("store", &["compact", "t"], b"");
    }
    reader.join().unwrap();
    assert_eq!(export(&e, "t"), before);
    let s: serde_json::Value = serde_json::from_str(&e.ok("store", &["stats", "t"], b"")).unwrap();
    assert_eq!(
        (s["keys"].as_u64(), s["records"].as_u64()),
        (Some(300), Some(300))
    );
    assert_eq!(s["sources"][0]["offset"], 49_999);
    // One generation directory is left.
    let dirs = std::fs::read_dir(e.log().join("tables/t"))
        .unwrap()
        .filter(|d| d.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(dirs, 1);
    // Automatic: past the ratio and the size, the writer compacts on its own.
    let auto = Env::new();
    let o = store(
        &auto,
        &[
            "--table",
            "a",
            "--compact-ratio",
            "0.5",
            "--compact-min-bytes",
            "1KiB",
        ],
        &input,
    );
    assert!(stderr(&o).contains("compacted a@v1"), "{}", stderr(&o));
    assert_eq!(export(&auto, "a"), before);
    // Idempotence survives compaction: the replay is skipped whole.
    let o = store(&auto, &["--table", "a"], &input);
    assert!(
        stderr(&o).contains("50000 already applied"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sqlite_export_is_queried_by_sqlite3() {
    let e = Env::new();
    let recs = "{\"id\":\"a\",\"speed\":81.5,\"n\":3,\"ok\":true,\"tags\":[1,2]}\n{\"id\":\"b\",\"speed\":12,\"n\":4,\"ok\":false,\"tags\":null}\n";
    e.ok(
        "store",
        &["--table", "fleet", "--key", "id", "-q"],
        recs.as_bytes(),
    );
    let db = e.path("fleet.db");
    e.ok(
        "store",
        &["export", "fleet", "--sqlite", db.to_str().unwrap()],
        b"",
    );
    let q = Command::new("sqlite3")
        .arg(&db)
        .arg("select key, speed, n, ok, tags, typeof(speed), typeof(n) from fleet order by key")
        .output()
        .expect("the sqlite3 program (Debian package sqlite3) runs");
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(
        String::from_utf8_lossy(&q.stdout),
        "a|81.5|3|1|[1,2]|real|integer\nb|12.0|4|0||real|integer\n"
    );
    e.ok(
        "store",
        &[
            "export",
            "fleet",
            "--sqlite",
            db.to_str().unwrap(),
            "--table",
            "f2",
        ],
        b"",
    );
    let q = Command::new("sqlite3")
        .arg(&db)
        .arg("select count(*) from f2")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&q.stdout), "2\n");
}

#[test]
fn bad_input_follows_on_error() {
    let e = Env::new();
    let input = "{\"id\":\"a\",\"v\":1}\nnot json\n{\"v\":2}\n{\"id\":\"b\",\"v\":3}\n";
    // fail: what came before the bad line is kept, exit 1 naming the line.
    let o = store(&e, &["--table", "t", "--key", "id"], input);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    assert_eq!(lines(&export(&e, "t")).len(), 1);
    let o = store(
        &e,
        &["--table", "s", "--key", "id", "--on-error", "skip"],
        input,
    );
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("2 bad"), "{}", stderr(&o));
    let dl = e.path("dead.ndjson");
    let o = store(
        &e,
        &[
            "--table",
            "d",
            "--key",
            "id",
            "--on-error",
            "dead-letter",
            dl.to_str().unwrap(),
        ],
        input,
    );
    assert_eq!(code(&o), 0);
    let dead = lines(&std::fs::read_to_string(&dl).unwrap());
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["tool"], "store");
    assert_eq!(dead[1]["line"], 3);
    assert!(dead[1]["error"].as_str().unwrap().contains("no key field"));
    // An envelope without a key; an oversize record.
    let o = store(&e, &["--table", "x"], "{\"key\":null,\"value\":{}}\n");
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no key"), "{}", stderr(&o));
    let big = format!("{{\"id\":\"z\",\"pad\":\"{}\"}}\n", "p".repeat(5000));
    let o = store(
        &e,
        &["--table", "x", "--key", "id", "--max-record-bytes", "1KiB"],
        &big,
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("larger than --max-record-bytes"),
        "{}",
        stderr(&o)
    );
    // Usage errors.
    for args in [
        vec!["--key", "id"],
        vec!["--table", "t", "--input", "plain"],
        vec!["--table", "t", "--key", "id", "--delete-when", "(("],
        vec!["--table", "t@x", "--key", "id"],
    ] {
        assert_eq!(code(&store(&e, &args, "")), 2, "{args:?}");
    }
}

#[test]
fn damage_is_detected_and_never_served() {
    let e = Env::new();
    e.ok(
        "store",
        &["--table", "t", "-q"],
        envelopes("tel", 0, 2_000, 50).as_bytes(),
    );
    let want = export(&e, "t");
    let gen = e.log().join("tables/t/v1.g0");
    // A damaged key index is a cache: readers rebuild it from the changelog.
    let idx = gen.join("keys.idx");
    let mut b = std::fs::read(&idx).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x20;
    b[80] ^= 1;
    std::fs::write(&idx, &b).unwrap();
    assert_eq!(export(&e, "t"), want);
    let s: serde_json::Value = serde_json::from_str(&e.ok("store", &["stats", "t"], b"")).unwrap();
    assert!(s["index"].as_str().unwrap().starts_with("damaged"), "{s}");
    let o = e.run("logd", &["verify"], b"");
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("keys.idx"));
    // The next write rebuilds it.
    e.ok("store", &["--table", "t", "-q"], b"");
    assert_eq!(export(&e, "t"), want);
    std::fs::remove_file(&idx).unwrap();
    assert_eq!(
        export(&e, "t"),
        want,
        "a missing index is rebuilt in memory"
    );
    // A flipped byte in the changelog: stats and verify name the file; reads fail.
    let seg = segment_files(&gen, "log")[0].clone();
    let mut b = std::fs::read(&seg).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&seg, &b).unwrap();
    let o = store(&e, &["stats", "t"], "");
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("00000000000000000000.log"),
        "{}",
        stderr(&o)
    );
    let o = store(&e, &["export", "t"], "");
    assert_eq!(code(&o), 1, "damaged data is never served");
    let o = e.run("logd", &["verify"], b"");
    assert_eq!(code(&o), 1);
    // A flipped digit in the manifest is caught by its checksum.
    let e2 = Env::new();
    e2.ok(
        "store",
        &["--table", "m", "--key", "id", "-q"],
        b"{\"id\":1}\n",
    );
    let mf = e2.log().join("tables/m/table.json");
    let text = std::fs::read_to_string(&mf)
        .unwrap()
        .replace("\"live\":1", "\"live\":2");
    std::fs::write(&mf, text).unwrap();
    let o = store(&e2, &["get", "m", "1"], "");
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("table.json"), "{}", stderr(&o));
}

#[test]
fn live_input_commits_the_group_as_it_goes() {
    let e = Env::new();
    for fsync in ["always", "batch"] {
        let g = format!("g{fsync}");
        let mut child = e
            .cmd(
                "store",
                &[
                    "--table",
                    "live",
                    "-q",
                    "--fsync",
                    fsync,
                    "--commit-group",
                    &g,
                ],
            )
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut si = child.stdin.take().unwrap();
        use std::io::Write;
        si.write_all(envelopes("tel", 0, 3, 3).as_bytes()).unwrap();
        si.flush().unwrap();
        // While the input stays open, the batch is committed and the group follows it.
        let group = e.log().join(format!("groups/{g}.json"));
        let mut seen = String::new();
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            seen = std::fs::read_to_string(&group).unwrap_or_default();
            if seen.contains("\"0\":2") {
                break;
            }
        }
        assert!(seen.contains("\"0\":2"), "{fsync}: {seen}");
        assert_eq!(lines(&export(&e, "live")).len(), 3);
        drop(si);
        assert!(child.wait().unwrap().success());
        // At the end of input the group moves past the last record.
        let seen = std::fs::read_to_string(&group).unwrap();
        assert!(seen.contains("\"0\":3"), "{fsync}: {seen}");
    }
}

#[test]
fn a_segment_being_created_is_not_damage() {
    let e = Env::new();
    e.ok(
        "store",
        &["--table", "t", "--key", "id", "-q"],
        b"{\"id\":1}\n",
    );
    let gen = e.log().join("tables/t/v1.g0");
    // A new segment whose header is not written yet, as a writer rolling leaves it for a moment.
    std::fs::write(gen.join("00000000000000000002.log"), b"").unwrap();
    assert_eq!(
        e.ok("store", &["get", "t", "1", "--value"], b""),
        "{\"id\":1}\n"
    );
    assert_eq!(lines(&export(&e, "t")).len(), 1);
}
