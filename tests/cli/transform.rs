//! `transform`: jq semantics through the real binary, envelopes, key/ts rewriting, lookups,
//! validation, the three error modes, order under --jobs, pipes, and the man page examples.

use crate::common::{
    bin, help_examples, lines, path_with_tools, run_ok, run_with_stdin, telemetry, Env,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tf(args: &[&str], stdin: &str) -> Output {
    let mut c = Command::new(bin("transform"));
    c.args(args);
    run_with_stdin(c, stdin.as_bytes())
}

fn tf_ok(args: &[&str], stdin: &str) -> String {
    let mut c = Command::new(bin("transform"));
    c.args(args);
    run_ok(c, stdin.as_bytes())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ENV1: &str = r#"{"topic":"telemetry","partition":3,"offset":1042,"ts":1795359091608,"key":"truck-17","value":{"speed":81.5,"vehicle_id":"truck-17"},"headers":[["src","gw-1"],["src","gw-2"]]}"#;

#[test]
fn filters_and_maps_plain_records() {
    let input = "{\"speed\":81.5,\"n\":1}\n{\"speed\":50,\"n\":2}\n\n{\"speed\":90.25,\"n\":3}\n";
    let out = tf_ok(
        &["-q", "select(.speed > 80) | .speed_kmh = .speed * 1.609"],
        input,
    );
    assert_eq!(
        out,
        "{\"speed\":81.5,\"n\":1,\"speed_kmh\":131.1335}\n{\"speed\":90.25,\"n\":3,\"speed_kmh\":145.21225}\n"
    );
    // The same through jaq only.
    let slow = tf_ok(
        &[
            "-q",
            "--no-fast-path",
            "select(.speed > 80) | .speed_kmh = .speed * 1.609",
        ],
        input,
    );
    assert_eq!(out, slow);
    // Numbers keep their text when untouched; a flat map emits several.
    let out = tf_ok(&["-q", ".a[]"], "{\"a\":[1.50,2,\"x\"]}\n");
    assert_eq!(out, "1.50\n2\n\"x\"\n");
}

#[test]
fn envelopes_keep_provenance_and_number_flat_maps() {
    let out = tf_ok(&["-q", ".kmh = .speed * 2"], &format!("{ENV1}\n"));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        json!({"topic":"telemetry","partition":3,"offset":1042,"ts":1795359091608u64,"key":"truck-17",
               "value":{"speed":81.5,"vehicle_id":"truck-17","kmh":163.0},
               "headers":[["src","gw-1"],["src","gw-2"]]})
    );
    // Variables, and sub numbering through a flat map.
    let out = tf_ok(
        &[
            "-q",
            "{k: $key, ts: $ts, o: $offset, p: $partition, t: $topic}, {i: 2}",
        ],
        &format!("{ENV1}\n"),
    );
    let v = lines(&out);
    assert_eq!(v.len(), 2);
    assert_eq!(
        v[0]["value"],
        json!({"k":"truck-17","ts":1795359091608u64,"o":1042,"p":3,"t":"telemetry"})
    );
    assert!(v[0].get("sub").is_none());
    assert_eq!(v[1]["sub"], 1);
    assert_eq!(v[1]["offset"], 1042);
    // A second stage keeps numbering within the same source record.
    let again = tf_ok(&["-q", "., ."], &out);
    let subs: Vec<Value> = lines(&again)
        .iter()
        .map(|v| v.get("sub").cloned().unwrap_or(json!(0)))
        .collect();
    assert_eq!(subs, vec![json!(0), json!(1), json!(2), json!(3)]);
    // A program can see the whole envelope; provenance cannot be forged.
    let out = tf_ok(
        &[
            "-q",
            "--envelope",
            ".value.o = .offset | .key = \"new\" | .offset = 0",
        ],
        &format!("{ENV1}\n"),
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["offset"], 1042);
    assert_eq!(v["key"], "new");
    assert_eq!(v["value"]["o"], 1042);
    assert_eq!(v["headers"], json!([["src", "gw-1"], ["src", "gw-2"]]));
}

#[test]
fn consume_transform_produce_round_trip() {
    let env = Env::new();
    env.produce(
        "t",
        &["--key", "vehicle_id", "--ts", "ts"],
        &telemetry(50, 1_795_000_000_000),
    );
    let consumed = env.consume("t", &[]);
    let out = tf_ok(&["-q", "select(.speed > 60) | .fast = true"], &consumed);
    let v = lines(&out);
    assert!(!v.is_empty());
    for r in &v {
        assert_eq!(r["topic"], "t");
        assert_eq!(r["value"]["fast"], true);
        assert_eq!(r["key"], r["value"]["vehicle_id"]);
    }
    let o = env.run(
        "produce",
        &["-t", "clean", "--envelope", "-q"],
        out.as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let back = env.consume("clean", &["--value"]);
    assert_eq!(back.lines().count(), v.len());
}

#[test]
fn key_and_ts_rewriting() {
    let out = tf_ok(
        &[
            "-q",
            "--set-key",
            ".vehicle_id + \"/x\"",
            "--set-ts",
            "\"2026-11-01T00:00:00Z\"",
            ".",
        ],
        &format!("{ENV1}\n"),
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["key"], "truck-17/x");
    assert_eq!(v["ts"], 1_793_491_200_000u64);
    assert_eq!(v["offset"], 1042);
    // Epoch seconds by magnitude; null keeps the input's timestamp; fast path agrees.
    for extra in [&[][..], &["--no-fast-path"][..]] {
        let mut args = vec!["-q", "--set-ts", ".t", "--set-key", ".id"];
        args.extend_from_slice(extra);
        args.push(".");
        let out = tf_ok(
            &args,
            "{\"id\":7,\"t\":1795000000}\n{\"id\":\"a\",\"t\":null}\n",
        );
        assert_eq!(
            out,
            "{\"ts\":1795000000000,\"key\":\"7\",\"value\":{\"id\":7,\"t\":1795000000}}\n{\"key\":\"a\",\"value\":{\"id\":\"a\",\"t\":null}}\n"
        );
    }
    let o = tf(&["--set-ts", "\"not a time\"", "."], "{\"a\":1}\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("line 1"), "{}", stderr(&o));
}

#[test]
fn lookup_joins() {
    let env = Env::new();
    std::fs::write(
        env.path("depots.csv"),
        "vehicle_id,depot,capacity\ntruck-1,north,12\ntruck-2,\"south, east\",7.5\n",
    )
    .unwrap();
    std::fs::write(
        env.path("models.ndjson"),
        "{\"id\":1,\"model\":\"T1\"}\n\n{\"id\":2,\"model\":\"T2\"}\n",
    )
    .unwrap();
    let depots = env.path("depots.csv").display().to_string();
    let models = env.path("models.ndjson").display().to_string();
    let out = tf_ok(
        &[
            "-q",
            "--lookup",
            &format!("depots={depots}"),
            "--on",
            "vehicle_id",
            "--lookup",
            &format!("models={models}"),
            "--on",
            "id",
            "{d: $depots[.vehicle_id], m: $models[.model_id | tostring].model}",
        ],
        "{\"vehicle_id\":\"truck-2\",\"model_id\":2}\n{\"vehicle_id\":\"truck-9\",\"model_id\":5}\n",
    );
    assert_eq!(
        lines(&out),
        vec![
            json!({"d":{"vehicle_id":"truck-2","depot":"south, east","capacity":7.5},"m":"T2"}),
            json!({"d":null,"m":null})
        ]
    );
    std::fs::write(
        env.path("dup.csv"),
        "vehicle_id,depot\ntruck-1,a\ntruck-2,b\ntruck-1,c\n",
    )
    .unwrap();
    let dup = env.path("dup.csv").display().to_string();
    let o = tf(
        &["--lookup", &format!("d={dup}"), "--on", "vehicle_id", "."],
        "",
    );
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("line 4") && e.contains("first on line 2"), "{e}");
}

#[test]
fn require_checks_types() {
    let spec = "s:string,n:number,i:integer,b:boolean,o:object,a:array,t:timestamp,/o/x:number";
    let good = r#"{"s":"x","n":1.5,"i":3,"b":false,"o":{"x":1},"a":[],"t":"2026-11-01T00:00:00Z"}"#;
    assert_eq!(
        tf_ok(&["-q", "--require", spec, "."], &format!("{good}\n")),
        format!("{good}\n")
    );
    let bad = [
        (r#""s":"x""#, r#""s":1"#, "s is not a string"),
        (r#""n":1.5"#, r#""n":"1.5""#, "n is not a number"),
        (r#""i":3"#, r#""i":3.5"#, "i is not an integer"),
        (r#""b":false"#, r#""b":null"#, "b is missing"),
        (r#""o":{"x":1}"#, r#""o":{"y":1}"#, "/o/x is missing"),
        (r#""a":[]"#, r#""a":{}"#, "a is not an array"),
        (
            r#""t":"2026-11-01T00:00:00Z""#,
            r#""t":"yesterday-ish""#,
            "t is not a timestamp",
        ),
    ];
    for (from, to, msg) in bad {
        let line = good.replace(from, to);
        let o = tf(&["--require", spec, "."], &format!("{line}\n"));
        assert_eq!(o.status.code(), Some(1), "{line}");
        let e = stderr(&o);
        assert!(e.contains(msg) && e.contains("line 1"), "{line}: {e}");
    }
    let o = tf(&["--require", "x:color", "."], "");
    assert_eq!(o.status.code(), Some(2));
}

const MIXED: &str = "{\"n\":1}\nnot json\n{\"n\":2}\n\u{1}\n{\"n\":\"three\"}\n[1]\n{\"n\":4}\n";

#[test]
fn error_modes() {
    let env = Env::new();
    let mut input = MIXED.as_bytes().to_vec();
    // Invalid UTF-8 on line 8.
    input.extend_from_slice(b"{\"n\":\xff}\n{\"n\":5}\n");
    let run = |args: &[&str]| {
        let mut c = Command::new(bin("transform"));
        c.args(args);
        run_with_stdin(c, &input)
    };
    // fail: earlier outputs are written, then exit 1 naming the line.
    let o = run(&[".m = .n - 10"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "{\"n\":1,\"m\":-9}\n");
    assert!(
        stderr(&o).contains("line 2: invalid JSON"),
        "{}",
        stderr(&o)
    );
    // A program error fails at its line too.
    let o = run(&[
        "-j",
        "1",
        "select(.n != 1 and (.n | type) != \"number\" | not) | .m = .n * 10",
    ]);
    assert_eq!(o.status.code(), Some(1));
    // skip: all good records, in order.
    let o = run(&["--on-error", "skip", ".m = .n - 10"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got: Vec<Value> = lines(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        got.iter().map(|v| v["m"].clone()).collect::<Vec<_>>(),
        vec![json!(-9), json!(-8), json!(-6), json!(-5)]
    );
    assert!(stderr(&o).contains("5 bad skipped"), "{}", stderr(&o));
    // dead-letter: the reason, the line and the input, for each bad record.
    let dl = env.path("bad.ndjson");
    let o = run(&[
        "-q",
        "--on-error",
        "dead-letter",
        dl.to_str().unwrap(),
        ".m = .n - 10",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let dead = lines(&std::fs::read_to_string(&dl).unwrap());
    let at: Vec<u64> = dead.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert_eq!(at, vec![2, 4, 5, 6, 8]);
    assert!(dead.iter().all(|d| d["tool"] == "transform"));
    assert!(dead[0]["error"].as_str().unwrap().contains("invalid JSON"));
    assert!(
        dead[2]["error"].as_str().unwrap().contains("jq error"),
        "{}",
        dead[2]
    );
    assert!(dead[3]["error"]
        .as_str()
        .unwrap()
        .contains("expected a JSON object"));
    assert_eq!(dead[4]["input_base64"], "eyJuIjr/fQ==");
    assert!(dead[4]["error"].as_str().unwrap().contains("UTF-8"));
    // Dead letters of envelopes carry provenance.
    let dl2 = env.path("bad2.ndjson");
    let env_bad = ENV1.replace("81.5", "\"fast\"");
    let o = tf(
        &[
            "-q",
            "--on-error",
            "dead-letter",
            dl2.to_str().unwrap(),
            ".speed - 2",
        ],
        &format!("{env_bad}\n"),
    );
    assert_eq!(o.status.code(), Some(0));
    let d = lines(&std::fs::read_to_string(&dl2).unwrap());
    assert_eq!(
        (
            d[0]["topic"].clone(),
            d[0]["partition"].clone(),
            d[0]["offset"].clone()
        ),
        (json!("telemetry"), json!(3), json!(1042))
    );
    assert_eq!(d[0]["input"], json!(env_bad));
}

#[test]
fn compile_errors_are_usage_errors() {
    let o = tf(&["select(.a >"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 1, column"), "{}", stderr(&o));
    let o = tf(&["nosuchfilter(1)"], "");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("undefined filter `nosuchfilter`"),
        "{}",
        stderr(&o)
    );
    let o = tf(&["-f", "/nonexistent/etl.jq"], "");
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(tf(&[], "").status.code(), Some(2));
}

#[test]
fn args_and_builtins() {
    let out = tf_ok(
        &[
            "-q",
            "--arg",
            "site",
            "berlin",
            "--argjson",
            "limit",
            "{\"max\":80}",
            "{site: $site, over: (.speed > $limit.max)}",
        ],
        "{\"speed\":81}\n",
    );
    assert_eq!(out, "{\"site\":\"berlin\",\"over\":true}\n");
    let out = tf_ok(
        &[
            "-q",
            "[(.t | tsms), (.e | tsms), (.u | tsms), (.f | tsms(\"%d/%m/%Y %H:%M\")), (.t | tsms | ms_iso), (\"5m\" | duration_ms), (.e | tsms | ms_floor(\"1h\")), ([[52.5200, 13.4050], [48.8566, 2.3522]] | haversine | floor), (haversine(0; 0; 0; 1) | round)]",
        ],
        "{\"t\":\"2026-11-01T10:20:30.5+01:00\",\"e\":1795000000,\"u\":1795000000123456,\"f\":\"01/11/2026 10:20\"}\n",
    );
    assert_eq!(
        out,
        "[1793524830500,1795000000000,1795000000123,1793528400000,\"2026-11-01T09:20:30.500Z\",300000,1794999600000,877464,111195]\n"
    );
    let o = tf(&["tsms"], "{\"a\":1}\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("timestamp"), "{}", stderr(&o));
}

#[test]
fn jobs_keep_order() {
    // Enough records for several parallel batches, with bad records and flat maps mixed in.
    let mut input = String::new();
    for (i, l) in telemetry(30_000, 1_795_000_000_000).lines().enumerate() {
        input.push_str(l);
        input.push('\n');
        if i % 997 == 0 {
            input.push_str("{broken\n");
        }
    }
    for prog in [
        "select(.speed > 70) | .kmh = .speed * 1.609",
        "if .speed > 90 then ., {extra: .vehicle_id} else select(.speed > 60) | {v: .vehicle_id, s: (.speed | floor)} end",
    ] {
        let one = tf_ok(&["-q", "-j", "1", "--on-error", "skip", prog], &input);
        let four = tf_ok(&["-q", "-j", "4", "--on-error", "skip", prog], &input);
        assert!(one.lines().count() > 1000);
        assert!(one == four, "--jobs 4 differs from --jobs 1 for {prog}");
    }
}

#[test]
fn closed_pipe_ends_quietly() {
    let input = telemetry(200_000, 1_795_000_000_000);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "{} '.x = 1' | head -n 3",
            bin("transform").display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let o = run_with_stdin(c, input.as_bytes());
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
    assert_eq!(stderr(&o), "");
    // transform's own status through a pipe.
    let mut c = Command::new("bash");
    c.arg("-c").arg(format!(
        "set -o pipefail; {} -q '.x = 1' | head -n 1 >/dev/null",
        bin("transform").display()
    ));
    let o = run_with_stdin(c, input.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_stalled_input_is_flushed_at_once() {
    let mut child = Command::new(bin("transform"))
        .args(["-q", ".seen = true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for i in 0..3 {
        let t = Instant::now();
        writeln!(stdin, "{{\"i\":{i}}}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, format!("{{\"i\":{i},\"seen\":true}}\n"));
        // Generous: the benchmark measures the real latency.
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// Every example in `transform --help` runs as written, in a directory with its files.
#[test]
fn man_page_examples() {
    let env = Env::new();
    let dir = env.dir.path();
    std::fs::write(dir.join("depots.csv"), "vehicle_id,depot\ntruck-1,north\n").unwrap();
    std::fs::write(
        dir.join("etl.v2.jq"),
        "# v2: km/h, and flag speeding\n.kmh = .speed * 1.609\n| .speeding = (.kmh > 130)\n",
    )
    .unwrap();
    std::fs::write(dir.join("etl.jq"), "select(.speed > 80)\n").unwrap();
    let examples = help_examples("transform");
    let rec = r#"{"vehicle_id":"truck-1","speed":90,"ts":1795003723000,"lat":52.52,"lon":13.405}"#;
    let envl = r#"{"topic":"telemetry","partition":0,"offset":100,"ts":1795003723000,"key":null,"value":{"vehicle_id":"truck-1","speed":90,"readings":[{"id":"m1","kwh":1.5},{"id":"m2","kwh":2}]}}"#;
    let path = path_with_tools();
    // Each example: its input and a check of its output.
    type Check = Box<dyn Fn(&[Value])>;
    let cases: Vec<(&str, String, Check)> = vec![
        (
            "transform 'select(.speed > 80) | .speed_kmh = .speed * 1.609'",
            format!("{rec}\n{}\n", rec.replace("90", "50")),
            Box::new(|v| {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0]["speed_kmh"], json!(144.81));
            }),
        ),
        (
            "transform -f etl.v2.jq --on-error dead-letter bad.ndjson",
            format!("{rec}\nnot json\n"),
            Box::new(|v| {
                let flags: Vec<Value> = v.iter().map(|r| r["speeding"].clone()).collect();
                assert_eq!(flags, vec![json!(true)]);
            }),
        ),
        (
            "transform --lookup depots=depots.csv --on vehicle_id '.depot = $depots[.vehicle_id].depot'",
            format!("{rec}\n"),
            Box::new(|v| assert_eq!(v[0]["depot"], "north")),
        ),
        (
            "transform --require 'vehicle_id:string,speed:number,ts:timestamp' '.'",
            format!("{rec}\n"),
            Box::new(|v| assert_eq!(v.len(), 1)),
        ),
        (
            "transform --set-key .vehicle_id '{vehicle_id, speed}'",
            format!("{envl}\n"),
            Box::new(|v| {
                assert_eq!(v[0]["key"], "truck-1");
                assert_eq!(v[0]["value"], json!({"vehicle_id":"truck-1","speed":90}));
            }),
        ),
        (
            "transform '.hour = (.ts | ms_floor(\"1h\") | ms_iso)'",
            format!("{rec}\n"),
            Box::new(|v| assert_eq!(v[0]["hour"], "2026-11-18T12:00:00.000Z")),
        ),
        (
            "transform '.km = ([[.lat, .lon], [52.52, 13.405]] | haversine / 1000)'",
            format!("{rec}\n"),
            Box::new(|v| assert_eq!(v[0]["km"], json!(0.0))),
        ),
        (
            "transform 'select($partition == 0 and $offset >= 100)'",
            format!("{envl}\n{}\n", envl.replace("100", "99")),
            Box::new(|v| {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0]["offset"], 100);
            }),
        ),
        (
            "transform '.readings[] | {meter: .id, kwh}'",
            format!("{envl}\n"),
            Box::new(|v| {
                let got: Vec<(Value, Option<Value>)> = v
                    .iter()
                    .map(|r| (r["value"]["meter"].clone(), r.get("sub").cloned()))
                    .collect();
                assert_eq!(got, vec![(json!("m1"), None), (json!("m2"), Some(json!(1)))]);
            }),
        ),
        (
            "consume -t telemetry | transform -f etl.jq | produce -t clean --envelope",
            String::new(),
            Box::new(|v| assert!(v.is_empty())),
        ),
    ];
    assert_eq!(
        examples,
        cases.iter().map(|c| c.0).collect::<Vec<_>>(),
        "every example in the help has a test here"
    );
    // The pipeline example needs a topic to read.
    let o = env.run(
        "produce",
        &["-t", "telemetry", "-q"],
        format!("{rec}\n{}\n", rec.replace("90", "50")).as_bytes(),
    );
    assert!(o.status.success());
    for (cmd, input, check) in &cases {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(format!("set -o pipefail; {cmd}"))
            .current_dir(dir)
            .env("PATH", &path)
            .env("KAPPA_LOG", env.log());
        let o = run_with_stdin(c, input.as_bytes());
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        check(&lines(&String::from_utf8_lossy(&o.stdout)));
    }
    let clean = env.consume("clean", &["--value"]);
    assert_eq!(lines(&clean).len(), 1);
    let dead = std::fs::read_to_string(dir.join("bad.ndjson")).unwrap();
    assert!(dead.contains("not json"));
}
