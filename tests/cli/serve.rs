//! `logd serve` and the tools' `--server` mode, over loopback, through the real binaries.

use crate::common::{bin, remote_tool, run_ok, run_with_stdin, Env};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(log: &Path, extra: &[&str]) -> Server {
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(bin("logd"))
            .arg("--log")
            .arg(log)
            .args(["serve", "-q"])
            .args(listen)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start logd serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server URL");
        assert!(
            line.starts_with("http://"),
            "no URL from the server: {line:?}"
        );
        Server {
            child,
            url: line.trim().to_string(),
        }
    }

    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("-TERM");
        let code = self.child.wait().expect("wait").code();
        std::mem::forget(self);
        code
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    )
}

/// POST, returning (status, body).
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, serde_json::Value) {
    let mut r = agent().post(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let mut resp = r.send(body).expect("POST");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

pub fn get(url: &str) -> (u16, String) {
    let mut resp = agent().get(url).call().expect("GET");
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .expect("body");
    (status, text)
}

fn remote(tool: &str, url: &str, args: &[&str]) -> Command {
    remote_tool(tool, "--server", url, args)
}

fn records(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"vehicle_id\":\"truck-{:03}\",\"ts\":{},\"speed\":{}}}\n",
                i % 37,
                1_795_000_000_000i64 + i as i64 * 1000,
                i % 120
            )
        })
        .collect()
}

#[test]
fn produce_and_consume_through_the_server_match_the_local_tools() {
    let env = Env::new();
    let input = records(3000);
    let srv = Server::start(&env.log(), &[]);
    run_ok(
        remote(
            "produce",
            &srv.url,
            &[
                "-t",
                "tel",
                "--partitions",
                "4",
                "--key",
                "vehicle_id",
                "--ts",
                "ts",
                "-q",
            ],
        ),
        input.as_bytes(),
    );
    let remote_out = run_ok(remote("consume", &srv.url, &["-t", "tel"]), b"");
    assert_eq!(remote_out.lines().count(), 3000);
    // The same records as a local produce of the same input into another log.
    let local = Env::new();
    local.produce(
        "tel",
        &["--partitions", "4", "--key", "vehicle_id", "--ts", "ts"],
        &input,
    );
    assert_eq!(remote_out, local.consume("tel", &[]));
    // Readers work beside the server on its directory, and see the same.
    assert_eq!(remote_out, env.consume("tel", &[]));
    for args in [
        vec!["--value"],
        vec![
            "--csv",
            "--columns",
            "vehicle_id,speed,@partition,@offset,@time",
        ],
        vec![
            "--format",
            "%p/%o %k %T %s\\n",
            "--partition",
            "2",
            "--from",
            "5",
            "--max",
            "7",
        ],
        vec![
            "--from",
            "@2026-11-18T08:34:00Z",
            "--to",
            "@2026-11-18T08:35:00Z",
        ],
        vec!["--from", "-3"],
    ] {
        let mut full = vec!["-t", "tel"];
        full.extend_from_slice(&args);
        assert_eq!(
            run_ok(remote("consume", &srv.url, &full), b""),
            local.consume("tel", &args),
            "consume {args:?}"
        );
    }
    // A second local writer is refused with the server's URL.
    let o = env.run("produce", &["-t", "tel"], b"{}\n");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&srv.url) && err.contains("--server"), "{err}");
    // A second server on the same directory too.
    let o = Command::new(bin("logd"))
        .arg("--log")
        .arg(env.log())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&srv.url));
    assert_eq!(srv.stop(), Some(0));
    // Stopped: the directory is free again.
    env.produce("tel", &[], "{\"x\":1}\n");
}

/// Out-of-order timestamps across partitions, so time order is a real merge.
fn shuffled_records(n: usize) -> String {
    (0..n)
        .map(|i| {
            let jitter = (i * 7919 % 200) as i64 * 100;
            format!(
                "{{\"vehicle_id\":\"v{}\",\"ts\":{},\"speed\":{}}}\n",
                i * 31 % 53,
                1_795_000_000_000i64 + i as i64 * 1000 - jitter,
                i % 120
            )
        })
        .collect()
}

#[test]
fn replay_through_the_server_matches_local_replay_and_survives_a_restart() {
    let env = Env::new();
    let srv = Server::start(&env.log(), &[]);
    let produce = [
        "-t",
        "tel",
        "--partitions",
        "4",
        "--key",
        "vehicle_id",
        "--ts",
        "ts",
        "-q",
    ];
    run_ok(
        remote("produce", &srv.url, &produce),
        shuffled_records(3000).as_bytes(),
    );
    // A group with committed offsets, for --from-committed.
    let got = run_ok(
        remote(
            "consume",
            &srv.url,
            &["-t", "tel", "--group", "g", "--max", "700"],
        ),
        b"",
    );
    assert_eq!(got.lines().count(), 700);
    let t0 = 1_795_000_000_000i64;
    let (t1, t2) = (format!("@{}", t0 + 500_000), format!("@{}", t0 + 1_500_000));
    for args in [
        vec![],
        vec!["--order", "partition"],
        vec!["--partition", "2", "--from", "5", "--to", "40", "--value"],
        vec!["--from", &t1, "--to", &t2],
        vec![
            "--from",
            &t1,
            "--order",
            "partition",
            "--partition",
            "1",
            "--partition",
            "3",
        ],
        vec!["--group", "g", "--from-committed"],
        vec!["--group", "unknown", "--from-committed", "--to", "100"],
        vec!["--speed", "1000000x", "--from", &t2],
    ] {
        let mut full = vec!["-t", "tel"];
        full.extend_from_slice(&args);
        let local = env.ok("replay", &full, b"");
        assert!(!local.is_empty(), "{args:?}");
        assert_eq!(
            run_ok(remote("replay", &srv.url, &full), b""),
            local,
            "replay {args:?}"
        );
    }
    // The same errors as locally.
    let o = run_with_stdin(
        remote("replay", &srv.url, &["-t", "tel", "--partition", "4"]),
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("partitions 0 to 3"));
    let o = run_with_stdin(remote("replay", &srv.url, &["-t", "nope"]), b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no topic \"nope\""));
    // A paced replay across a server kill and restart: the streams resume where they
    // stopped, and records appended meanwhile are past the range fixed at the start.
    let expected = env.ok("replay", &["-t", "tel"], b"");
    let mut child = remote("replay", &srv.url, &["-t", "tel", "--rate", "3000/s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    std::thread::sleep(Duration::from_millis(400));
    let addr = srv.addr().to_string();
    srv.signal("-KILL");
    drop(srv);
    let srv = restart_on(&env.log(), &addr);
    run_ok(
        remote("produce", &srv.url, &produce),
        shuffled_records(50).as_bytes(),
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(reader.join().unwrap().unwrap(), expected);
    assert_eq!(srv.stop(), Some(0));
}

#[test]
fn produce_over_http_formats_errors_and_acknowledged_ranges() {
    let env = Env::new();
    let srv = Server::start(&env.log(), &[]);
    let url = format!(
        "{}/topics/m/records?key=meter&ts=time&partitions=2",
        srv.url
    );
    let (s, v) = post(&url, &[], b"{\"meter\":\"a\",\"time\":\"2026-11-01T00:00:00Z\",\"kwh\":1}\n\n{\"meter\":\"b\",\"time\":1795000000,\"kwh\":2}\n");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["records"], 2);
    let ranges = v["ranges"].as_array().unwrap();
    let total: u64 = ranges.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 2);
    // CSV by Content-Type, with the same typing as produce --csv.
    let (s, v) = post(
        &format!("{}/topics/m/records?key=meter&ts=time", srv.url),
        &[("content-type", "text/csv")],
        b"meter,time,kwh\nc,2026-11-01T00:00:01Z,3.5\n",
    );
    assert_eq!((s, v["records"].as_u64()), (200, Some(1)), "{v}");
    // Fail mode: the records before the bad line are appended, the answer names the line.
    let (s, v) = post(
        &url,
        &[],
        b"{\"meter\":\"d\",\"time\":1}\nnot json\n{\"meter\":\"e\",\"time\":1}\n",
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["line"], 2);
    assert_eq!(v["records"], 1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("line 2: invalid JSON"),
        "{v}"
    );
    // Skip mode counts and lists.
    let (s, v) = post(
        &format!("{url}&on_error=skip"),
        &[],
        b"[1]\n{\"meter\":\"f\",\"time\":1}\n{\"time\":1}\n",
    );
    assert_eq!(s, 200);
    assert_eq!(
        (v["records"].as_u64(), v["skipped"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(v["errors"][1]["line"], 3);
    assert!(v["errors"][1]["error"]
        .as_str()
        .unwrap()
        .contains("missing key field meter"));
    let keys: Vec<String> = env
        .consume("m", &["--format", "%k\\n"])
        .lines()
        .map(str::to_string)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c", "d", "f"]);
    // Bad requests.
    for (path, status) in [
        ("/topics/..%2Fetc/records", 400),
        ("/topics/m/records?format=xml", 400),
        ("/topics/m/records?partition=9", 400),
        ("/topics/m/records?on_error=dead-letter", 400),
    ] {
        let (s, v) = post(&format!("{}{path}", srv.url), &[], b"{}\n");
        assert_eq!(s, status, "{path}: {v}");
    }
    let (s, _) = get(&format!("{}/topics/nope/records", srv.url));
    assert_eq!(s, 404);
    let (s, body) = get(&format!("{}/topics", srv.url));
    assert_eq!(s, 200);
    assert!(body.contains("\"topic\":\"m\""), "{body}");
    let (s, body) = get(&format!("{}/metrics", srv.url));
    assert_eq!(s, 200);
    for m in [
        "kappa_records_in_total{topic=\"m\"} 5",
        "kappa_request_duration_seconds_bucket{route=\"produce\"",
        "kappa_fsyncs_total",
        "kappa_connections ",
        "kappa_group_lag",
    ] {
        assert!(body.contains(m), "{m} missing in\n{body}");
    }
}

#[test]
fn a_retried_batch_is_appended_once_even_across_a_server_kill() {
    let env = Env::new();
    let srv = Server::start(&env.log(), &[]);
    let url = format!("{}/topics/t/records?partitions=3", srv.url);
    let body = records(100);
    let h = [("producer-id", "gw-1"), ("producer-seq", "1")];
    let (s, first) = post(&url, &h, body.as_bytes());
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (s, again) = post(&url, &h, body.as_bytes());
    assert_eq!(s, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["ranges"], first["ranges"]);
    // SIGKILL, restart on the same directory: the retry is still recognised.
    srv.signal("-KILL");
    drop(srv);
    let srv = Server::start(&env.log(), &[]);
    let url = format!("{}/topics/t/records", srv.url);
    let (s, after) = post(&url, &h, body.as_bytes());
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["duplicate"], true);
    assert_eq!(after["ranges"], first["ranges"]);
    let (s, v) = post(
        &url,
        &[("producer-id", "gw-1"), ("producer-seq", "0")],
        body.as_bytes(),
    );
    assert_eq!(s, 409, "{v}");
    let (s, v) = post(
        &url,
        &[("producer-id", "gw-1"), ("producer-seq", "2")],
        body.as_bytes(),
    );
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(false)));
    let (s, _) = post(&url, &[("producer-id", "gw-1")], body.as_bytes());
    assert_eq!(s, 400);
    assert_eq!(env.consume("t", &[]).lines().count(), 200);
    let o = env.run("logd", &["verify"], b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn produce_server_keeps_local_error_handling_and_survives_a_restart() {
    let env = Env::new();
    let srv = Server::start(&env.log(), &[]);
    let dl = env.path("dead.ndjson");
    let input = "{\"k\":1}\nnot json\n{\"k\":2}\n";
    let o = run_with_stdin(
        remote(
            "produce",
            &srv.url,
            &["-t", "e", "--on-error", "dead-letter", dl.to_str().unwrap()],
        ),
        input.as_bytes(),
    );
    assert!(o.status.success());
    let dead = std::fs::read_to_string(&dl).unwrap();
    assert!(
        dead.contains("\"line\":2") && dead.contains("not json"),
        "{dead}"
    );
    let o = run_with_stdin(remote("produce", &srv.url, &["-t", "e"]), input.as_bytes());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"));
    // Fail mode appended what came before the bad line, as a local produce does.
    assert_eq!(
        env.consume("e", &["--value"]),
        "{\"k\":1}\n{\"k\":2}\n{\"k\":1}\n"
    );
    // A producer that meets a restarting server waits for it and loses nothing.
    let mut child = remote("produce", &srv.url, &["-t", "r", "-q"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"{\"n\":1}\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = env.log();
    let addr = srv.addr().to_string();
    drop(srv);
    let srv = restart_on(&log, &addr);
    stdin.write_all(b"{\"n\":2}\n").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.consume("r", &["--value"]), "{\"n\":1}\n{\"n\":2}\n");
    drop(srv);
    // Nobody there: a bounded wait, then exit 2 with the URL.
    let started = Instant::now();
    let o = run_with_stdin(
        remote(
            "produce",
            "http://127.0.0.1:9",
            &["-t", "x", "--server-retry", "1s"],
        ),
        b"{}\n",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unreachable"));
}

/// Restarts a server on a fixed address (the port of a server that just died).
pub fn restart_on(log: &Path, addr: &str) -> Server {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut child = Command::new(bin("logd"))
            .arg("--log")
            .arg(log)
            .args(["serve", "-q", "--listen", addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        if line.starts_with("http://") {
            return Server {
                child,
                url: line.trim().to_string(),
            };
        }
        let _ = child.wait();
        assert!(Instant::now() < deadline, "cannot restart on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn follow_streams_end_cleanly_on_sigterm_and_everything_acknowledged_is_kept() {
    let env = Env::new();
    let srv = Server::start(&env.log(), &[]);
    run_ok(
        remote("produce", &srv.url, &["-t", "f", "-q"]),
        records(10).as_bytes(),
    );
    let mut follower = remote(
        "consume",
        &srv.url,
        &["-t", "f", "--follow", "--value", "--server-retry", "1s"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..10 {
        line.clear();
        out.read_line(&mut line).unwrap();
    }
    run_ok(
        remote("produce", &srv.url, &["-t", "f", "-q"]),
        b"{\"late\":1}\n",
    );
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "{\"late\":1}\n");
    // The raw stream ends with a shutdown line.
    let mut raw = TcpStream::connect(srv.addr()).unwrap();
    write!(
        raw,
        "GET /topics/f/records?follow=true&from=latest HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(srv.stop(), Some(0));
    let mut all = String::new();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = raw.read_to_string(&mut all);
    assert!(all.contains("{\"end\":\"shutdown\"}"), "{all}");
    // The follower retries for --server-retry, then gives up with exit 2.
    let st = follower.wait().unwrap();
    assert_eq!(st.code(), Some(2));
    assert_eq!(env.consume("f", &[]).lines().count(), 11);
    let o = env.run("logd", &["verify"], b"");
    assert!(o.status.success());
}

#[test]
fn token_and_listen_address_rules() {
    let env = Env::new();
    let tf = env.path("token");
    std::fs::write(&tf, "s3cret\n").unwrap();
    let o = Command::new(bin("logd"))
        .arg("--log")
        .arg(env.log())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--token-file"));
    let srv = Server::start(&env.log(), &["--token-file", tf.to_str().unwrap()]);
    let (s, _) = get(&format!("{}/healthz", srv.url));
    assert_eq!(s, 200);
    let (s, v) = post(&format!("{}/topics/a/records", srv.url), &[], b"{}\n");
    assert_eq!(s, 401, "{v}");
    let (s, _) = post(
        &format!("{}/topics/a/records", srv.url),
        &[("authorization", "Bearer wrong!")],
        b"{}\n",
    );
    assert_eq!(s, 401);
    let (s, _) = post(
        &format!("{}/topics/a/records", srv.url),
        &[("authorization", "Bearer s3cret")],
        b"{}\n",
    );
    assert_eq!(s, 200);
    let o = run_with_stdin(remote("consume", &srv.url, &["-t", "a"]), b"");
    assert_eq!(o.status.code(), Some(2));
    let mut c = remote("consume", &srv.url, &["-t", "a", "--value"]);
    c.args(["--token-file", tf.to_str().unwrap()]);
    assert_eq!(run_ok(c, b""), "{}\n");
    let mut c = remote("consume", &srv.url, &["-t", "a", "--value"]);
    c.env("KAPPA_TOKEN", "s3cret");
    assert_eq!(run_ok(c, b""), "{}\n");
    drop(srv);
    // --insecure allows any address.
    let srv = Server::start(&env.log(), &["--listen", "0.0.0.0:0", "--insecure"]);
    drop(srv);
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn raw_exchange(addr: &str, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn each_limit_gives_a_clear_http_error_and_others_are_still_served() {
    let env = Env::new();
    let srv = Server::start(
        &env.log(),
        &[
            "--max-body-bytes",
            "1KiB",
            "--max-record-bytes",
            "100",
            "--max-connections",
            "40",
            "--header-timeout",
            "1s",
            "--request-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--max-follows-per-client",
            "2",
        ],
    );
    let base = &srv.url;
    let healthy = || {
        let (s, v) = post(
            &format!("{base}/topics/ok/records"),
            &[],
            b"{\"fine\":true}\n",
        );
        assert_eq!(s, 200, "{v}");
    };
    // Body over the limit.
    let (s, v) = post(&format!("{base}/topics/l/records"), &[], &vec![b'\n'; 2000]);
    assert_eq!(s, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--max-body-bytes"));
    // Record over the limit: fail mode is 413 naming the line, skip mode skips it.
    let big = format!("{{\"a\":1}}\n{{\"x\":\"{}\"}}\n", "y".repeat(200));
    let (s, v) = post(&format!("{base}/topics/l/records"), &[], big.as_bytes());
    assert_eq!(
        (s, v["line"].as_u64(), v["records"].as_u64()),
        (413, Some(2), Some(1)),
        "{v}"
    );
    let (s, v) = post(
        &format!("{base}/topics/l/records?on_error=skip"),
        &[],
        big.as_bytes(),
    );
    assert_eq!((s, v["skipped"].as_u64()), (200, Some(1)));
    healthy();
    // A head sent one byte at a time, slower than --header-timeout: 408 and closed.
    let addr = srv.addr().to_string();
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (
            String::from_utf8_lossy(&out).into_owned(),
            started.elapsed(),
        )
    });
    // A body that never completes: 408 after --request-timeout.
    let addr = srv.addr().to_string();
    let slow_body = std::thread::spawn(move || {
        raw_exchange(
            &addr,
            b"POST /topics/l/records HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":",
        )
    });
    healthy();
    let (resp, took) = slow.join().unwrap();
    assert_eq!(status_of(&resp), 408, "{resp}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let resp = slow_body.join().unwrap();
    assert_eq!(status_of(&resp), 408, "{resp}");
    // Garbage is a 400, not a crash.
    let resp = raw_exchange(srv.addr(), b"\x16\x03\x01garbage\r\n\r\n");
    assert!(resp.is_empty() || status_of(&resp) == 400, "{resp}");
    healthy();
    // Follow streams per client.
    let mut follows = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        write!(
            s,
            "GET /topics/ok/records?follow=true HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        follows.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (s, body) = get(&format!("{base}/topics/ok/records?follow=true"));
    assert_eq!(s, 429, "{body}");
    drop(follows);
    // Connections over --max-connections get a 503; the others still work. First let the
    // server see the follow streams and the client's pooled connections go (the idle
    // timeout closes those), so that the 40 below are all it holds.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = raw_exchange(
            srv.addr(),
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if m.lines().any(|l| l == "kappa_connections 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections stay open: {m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(srv.addr()).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let resp = raw_exchange(srv.addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&resp), 503, "{resp}");
    // Idle connections are closed after --idle-timeout, and the server serves again.
    std::thread::sleep(Duration::from_secs(3));
    let mut buf = [0u8; 1];
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        idle[0].read(&mut buf).unwrap_or(0),
        0,
        "idle connection still open"
    );
    healthy();
    let (s, body) = get(&format!("{base}/metrics"));
    assert_eq!(s, 200);
    assert!(body.contains("kappa_connections_refused_total 1"), "{body}");
}

#[test]
fn a_group_of_three_shares_partitions_and_a_killed_member_is_replaced() {
    let env = Env::new();
    let srv = Server::start(&env.log(), &[]);
    let n = 3000;
    run_ok(
        remote(
            "produce",
            &srv.url,
            &["-t", "g", "--partitions", "6", "--key", "vehicle_id", "-q"],
        ),
        records(n).as_bytes(),
    );
    let spawn = |i: usize| {
        let out = std::fs::File::create(env.path(&format!("m{i}.out"))).unwrap();
        remote(
            "consume",
            &srv.url,
            &[
                "-t",
                "g",
                "-g",
                "dash",
                "--follow",
                "--format",
                "%p %o\\n",
                "--session-timeout",
                "1s",
            ],
        )
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let mut members: Vec<Child> = (0..3).map(spawn).collect();
    let describe = || env.ok("logd", &["groups", "describe", "dash", "--json"], b"");
    let deadline = Instant::now() + Duration::from_secs(20);
    while describe().matches("\"member\"").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "members never joined: {}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = describe();
    assert!(
        d.contains("\"partitions\":[0,1]") || d.contains("\"partitions\""),
        "{d}"
    );
    // Kill one member without a goodbye; its partitions move within the session timeout.
    std::thread::sleep(Duration::from_millis(1500));
    members[1].kill().unwrap();
    members[1].wait().unwrap();
    let killed_at = Instant::now();
    while describe().matches("\"member\"").count() != 2 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "{}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    run_ok(
        remote(
            "produce",
            &srv.url,
            &["-t", "g", "--key", "vehicle_id", "-q"],
        ),
        records(n).as_bytes(),
    );
    // Every record reaches some member: the union of outputs covers all 2n offsets.
    let deadline = Instant::now() + Duration::from_secs(20);
    let union = || {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..3 {
            let s = std::fs::read_to_string(env.path(&format!("m{i}.out"))).unwrap_or_default();
            for l in s.lines() {
                seen.insert(l.to_string());
            }
        }
        seen
    };
    while union().len() < 2 * n {
        assert!(
            Instant::now() < deadline,
            "only {} of {} records seen",
            union().len(),
            2 * n
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in [0, 2] {
        members[i].kill().unwrap();
        members[i].wait().unwrap();
    }
    // Committed offsets never pass what was delivered.
    let d = describe();
    let v: serde_json::Value = serde_json::from_str(d.lines().last().unwrap()).unwrap_or_default();
    let _ = v;
    let seen = union();
    for line in env
        .ok("logd", &["groups", "describe", "dash", "--json"], b"")
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(p), Some(c)) = (r["partition"].as_u64(), r["committed"].as_u64()) {
            if c > 0 {
                assert!(
                    seen.contains(&format!("{p} {}", c - 1)),
                    "committed {c} on {p} not delivered"
                );
            }
        }
    }
}
