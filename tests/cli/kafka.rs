//! `--broker` and `logd mirror` against a real Kafka-protocol broker on loopback (tansu, one
//! per test, in memory), with kafka-python as an independent client. `.ci/run` installs both;
//! elsewhere set KAPPA_TANSU to the broker binary.

use crate::common::{bin, remote_tool, run_ok, run_with_stdin, Env};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub port: u16,
}

fn tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("KAPPA_TANSU") {
        return PathBuf::from(p);
    }
    let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/kappa/tansu/bin/tansu");
    if cached.exists() {
        return cached;
    }
    panic!(
        "no Kafka broker for the tests: run .ci/run (it installs tansu) or set KAPPA_TANSU to a tansu binary"
    );
}

impl Broker {
    pub fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }

    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    pub fn hostport(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tool against the broker.
fn tool(name: &str, b: &Broker, args: &[&str]) -> Command {
    remote_tool(name, "--broker", &b.url(), args)
}

/// Readings with keys, out-of-order timestamps, and a header-free JSON value.
fn readings(n: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"vehicle_id\":\"truck-{:03}\",\"ts\":{},\"speed\":{}}}\n",
                i * 31 % 97,
                1_795_000_000_000i64 + i as i64 * 1000 - (i * 7919 % 50) as i64 * 100,
                i % 120
            )
        })
        .collect()
}

const PRODUCE: [&str; 8] = [
    "-t",
    "tel",
    "--partitions",
    "4",
    "--key",
    "vehicle_id",
    "--ts",
    "ts",
];

fn python(script: &str, args: &[&str]) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "kafka-python script failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn produce_and_consume_on_kafka_match_the_local_log() {
    let b = Broker::start();
    let env = Env::new();
    let input = readings(3000, 0);
    let mut args = PRODUCE.to_vec();
    args.push("-q");
    run_ok(tool("produce", &b, &args), input.as_bytes());
    env.produce("tel", &PRODUCE[2..], &input);
    // Same partitions, offsets, keys, timestamps and values: the same bytes.
    assert_eq!(
        run_ok(tool("consume", &b, &["-t", "tel"]), b""),
        env.consume("tel", &[])
    );
    let t1 = "@1795000500000";
    let t2 = "@1795002000000";
    for args in [
        vec!["--value"],
        vec!["--partition", "2", "--from", "5", "--max", "7"],
        vec!["--from", "100", "--to", "700", "--format", "%p/%o %k %T\\n"],
        vec!["--from", t1, "--to", t2],
        vec![
            "--csv",
            "--columns",
            "vehicle_id,speed,@partition,@offset,@time",
        ],
    ] {
        let mut full = vec!["-t", "tel"];
        full.extend_from_slice(&args);
        assert_eq!(
            run_ok(tool("consume", &b, &full), b""),
            env.consume("tel", &args),
            "consume {args:?}"
        );
    }
    // replay: the same range, order and bytes as locally.
    for args in [
        vec![],
        vec!["--order", "partition"],
        vec!["--from", t1, "--to", t2, "--value"],
        vec![
            "--partition",
            "1",
            "--partition",
            "3",
            "--from",
            "10",
            "--to",
            "@1795001000000",
        ],
    ] {
        let mut full = vec!["-t", "tel"];
        full.extend_from_slice(&args);
        assert_eq!(
            run_ok(tool("replay", &b, &full), b""),
            env.ok("replay", &full, b""),
            "replay {args:?}"
        );
    }
    // --from-committed starts at the Kafka group's offsets.
    let head = run_ok(
        tool(
            "consume",
            &b,
            &["-t", "tel", "--group", "r", "--max", "1000"],
        ),
        b"",
    );
    assert_eq!(head.lines().count(), 1000);
    let rest = run_ok(
        tool(
            "replay",
            &b,
            &[
                "-t",
                "tel",
                "--group",
                "r",
                "--from-committed",
                "--order",
                "partition",
            ],
        ),
        b"",
    );
    assert_eq!(head.lines().count() + rest.lines().count(), 3000);
    let all: BTreeSet<&str> = head.lines().chain(rest.lines()).collect();
    assert_eq!(all.len(), 3000);
    // An existing topic keeps its partition count.
    let o = run_with_stdin(
        tool("produce", &b, &["-t", "tel", "--partitions", "8"]),
        b"{}\n",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has 4 partitions"));
    // Bad input is handled as locally: the line is named, the records before it are kept.
    let o = run_with_stdin(
        tool("produce", &b, &["-t", "bad", "--partitions", "1"]),
        b"{\"a\":1}\nnot json\n{\"a\":3}\n",
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"));
    assert_eq!(
        run_ok(tool("consume", &b, &["-t", "bad", "--value"]), b""),
        "{\"a\":1}\n"
    );
    // A record Kafka will not take (over librdkafka's 1,000,000-byte message limit) is named
    // by its line, with exit 1; the record before it was acknowledged.
    let input = format!(
        "{{\"a\":1}}\n{{\"a\":2,\"pad\":\"{}\"}}\n",
        "x".repeat(1_010_000)
    );
    let o = run_with_stdin(
        tool("produce", &b, &["-t", "big", "--max-record-bytes", "2MiB"]),
        input.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2") && err.contains("Kafka"), "{err}");
    assert_eq!(
        run_ok(tool("consume", &b, &["-t", "big", "--value"]), b""),
        "{\"a\":1}\n"
    );
}

const PY_PRODUCE: &str = r#"
import sys, json
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
bs = sys.argv[1]
KafkaAdminClient(bootstrap_servers=bs).create_topics([NewTopic('py', 4, 1)])
p = KafkaProducer(bootstrap_servers=bs)
for i in range(500):
    key = ('meter-%d' % (i % 41)).encode()
    p.send('py', key=key, value=json.dumps({'i': i}).encode(), timestamp_ms=1795000000000 + i,
           headers=[('src', b'py')])
p.flush()
"#;

const PY_CONSUME: &str = r#"
import sys
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers=sys.argv[1], consumer_timeout_ms=5000)
tps = [TopicPartition(sys.argv[2], p) for p in range(4)]
c.assign(tps)
c.seek_to_beginning()
for m in c:
    print('%d %s %d %s' % (m.partition, m.key.decode(), m.timestamp, m.value.decode()))
"#;

#[test]
fn kafka_python_and_kappa_read_what_the_other_wrote() {
    let b = Broker::start();
    // kafka-python's default partitioner (Kafka's murmur2) agrees with kappa's.
    python(PY_PRODUCE, &[&b.hostport()]);
    let got = run_ok(
        tool(
            "consume",
            &b,
            &["-t", "py", "--format", "%p %k %T %s %h\\n"],
        ),
        b"",
    );
    assert_eq!(got.lines().count(), 500);
    let env = Env::new();
    let keyed: String = (0..500)
        .map(|i| format!("{{\"k\":\"meter-{}\",\"i\":{i}}}\n", i % 41))
        .collect();
    env.produce("local", &["--partitions", "4", "--key", "k"], &keyed);
    let local_parts: BTreeMap<String, String> = env
        .consume("local", &["--format", "%k %p\\n"])
        .lines()
        .map(|l| {
            let (k, p) = l.split_once(' ').unwrap();
            (k.to_string(), p.to_string())
        })
        .collect();
    for line in got.lines() {
        let mut f = line.split(' ');
        let (p, k, ts) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        assert_eq!(local_parts[k], p, "{line}");
        assert!(ts.parse::<i64>().unwrap() >= 1_795_000_000_000, "{line}");
        assert!(line.contains("src"), "headers kept: {line}");
    }
    // And the other way.
    let mut args = PRODUCE.to_vec();
    args.push("-q");
    run_ok(tool("produce", &b, &args), readings(800, 0).as_bytes());
    let seen = python(PY_CONSUME, &[&b.hostport(), "tel"]);
    assert_eq!(seen.lines().count(), 800);
    let env2 = Env::new();
    env2.produce("tel", &PRODUCE[2..], &readings(800, 0));
    let mut want: Vec<String> = env2
        .consume("tel", &["--format", "%p %k %T %s\\n"])
        .lines()
        .map(str::to_string)
        .collect();
    let mut seen: Vec<String> = seen.lines().map(str::to_string).collect();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
}

const PY_COMMITTED: &str = r#"
import sys
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers=sys.argv[1], group_id=sys.argv[2], enable_auto_commit=False)
print(' '.join(str(c.committed(TopicPartition(sys.argv[3], p))) for p in range(4)))
"#;

/// A `consume --broker --group G --follow` member writing `%p %o` lines.
struct Member {
    child: Child,
    out: std::thread::JoinHandle<String>,
}

impl Member {
    fn start(b: &Broker) -> Member {
        let mut child = tool(
            "consume",
            b,
            &[
                "-t", "tel", "--group", "g", "--follow", "--format", "%p %o\\n",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut so = child.stdout.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        Member { child, out }
    }

    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(self.child.wait().unwrap().success());
        self.out.join().unwrap()
    }
}

#[test]
fn a_kafka_consumer_group_shares_partitions_and_a_joining_member_skips_nothing() {
    let b = Broker::start();
    let mut args = PRODUCE.to_vec();
    args.push("-q");
    run_ok(tool("produce", &b, &args), readings(2000, 0).as_bytes());
    let m1 = Member::start(&b);
    let m2 = Member::start(&b);
    std::thread::sleep(Duration::from_secs(6));
    let m3 = Member::start(&b);
    std::thread::sleep(Duration::from_secs(4));
    run_ok(tool("produce", &b, &args), readings(2000, 2000).as_bytes());
    std::thread::sleep(Duration::from_secs(6));
    let outs = [m1.stop(), m2.stop(), m3.stop()];
    let mut seen = BTreeSet::new();
    for o in &outs {
        for l in o.lines() {
            seen.insert(l.to_string());
        }
    }
    // Every record reached some member (repeats across a rebalance are allowed).
    let env = Env::new();
    env.produce("tel", &PRODUCE[2..], &readings(4000, 0));
    let want: BTreeSet<String> = env
        .consume("tel", &["--format", "%p %o\\n"])
        .lines()
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = want.difference(&seen).take(5).collect();
    assert!(missing.is_empty(), "not delivered: {missing:?}");
    // The partitions were shared: more than one member got records.
    assert!(
        outs.iter().filter(|o| !o.is_empty()).count() >= 2,
        "{outs:?}"
    );
    // All was committed (as kafka-python reads the group's offsets): each partition's offset
    // is past its last record.
    let mut ends = [0u64; 4];
    for l in &want {
        let (p, o) = l.split_once(' ').unwrap();
        let (p, o): (usize, u64) = (p.parse().unwrap(), o.parse().unwrap());
        ends[p] = ends[p].max(o + 1);
    }
    let committed = python(PY_COMMITTED, &[&b.hostport(), "g", "tel"]);
    let expected: Vec<String> = ends.iter().map(|e| e.to_string()).collect();
    assert_eq!(committed.split_whitespace().collect::<Vec<_>>(), expected);
}

#[test]
fn an_unreachable_broker_is_a_clear_error_in_bounded_time() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("kafka://127.0.0.1:{port}");
    for (t, args) in [
        ("produce", vec!["-t", "x"]),
        ("consume", vec!["-t", "x"]),
        ("consume", vec!["-t", "x", "--group", "g"]),
    ] {
        let started = Instant::now();
        let mut c = Command::new(bin(t));
        c.args(["--broker", &url, "--broker-timeout", "2s"])
            .args(&args);
        let o = run_with_stdin(c, b"{}\n");
        assert_eq!(o.status.code(), Some(2), "{t} {args:?}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{t} took {:?}",
            started.elapsed()
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("unreachable") && err.contains(&url), "{err}");
    }
    let o = run_with_stdin(
        {
            let mut c = Command::new(bin("consume"));
            c.args(["--broker", "localhost:9092", "-t", "x"]);
            c
        },
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kafka://"));
}

/// Runs `logd mirror` and SIGKILLs it after `after` (if it is still running).
fn mirror_killed(log: &std::path::Path, args: &[&str], after: Duration) {
    let mut child = Command::new(bin("logd"))
        .arg("--log")
        .arg(log)
        .arg("mirror")
        .args(args)
        .arg("-q")
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn mirror_to_kafka_and_back_survives_kills_with_no_gap_and_no_duplicate() {
    let b = Broker::start();
    let src = Env::new();
    src.produce("tel", &PRODUCE[2..], &readings(150_000, 0));
    let url = b.url();
    let to = ["-t", "tel", "--to", &url, "--to-topic", "copy"];
    for ms in [150, 400, 700] {
        mirror_killed(&src.log(), &to, Duration::from_millis(ms));
    }
    src.ok("logd", &[&["mirror", "-q"][..], &to[..]].concat(), b"");
    let fmt = ["--format", "%p %o %k %T %s\\n"];
    let local = src.consume("tel", &fmt);
    let mut full = vec!["-t", "copy"];
    full.extend_from_slice(&fmt);
    assert_eq!(run_ok(tool("consume", &b, &full), b""), local);
    // And back into another log directory, killed on the way too.
    let dst = Env::new();
    let from = ["--from", &url, "-t", "copy"];
    for ms in [300, 600] {
        mirror_killed(&dst.log(), &from, Duration::from_millis(ms));
    }
    dst.ok("logd", &[&["mirror", "-q"][..], &from[..]].concat(), b"");
    assert_eq!(dst.consume("copy", &fmt), local);
    let o = dst.run("logd", &["verify"], b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // --follow keeps copying what is appended, until SIGTERM.
    let mut child = Command::new(bin("logd"))
        .arg("--log")
        .arg(src.log())
        .arg("mirror")
        .args(to)
        .args(["--follow", "-q"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    src.produce("tel", &[], &readings(500, 150_000));
    let local = src.consume("tel", &fmt);
    let deadline = Instant::now() + Duration::from_secs(20);
    while run_ok(tool("consume", &b, &full), b"") != local {
        assert!(
            Instant::now() < deadline,
            "the followed records did not arrive"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    // Partition counts must agree.
    let other = Env::new();
    other.produce("tel", &["--partitions", "2"], "{\"a\":1}\n");
    let o = other.run(
        "logd",
        &["mirror", "-t", "tel", "--to", &url, "--to-topic", "copy"],
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("partition numbers"));
}

/// Keyed readings d0..d9 numbered from `from`.
fn keyed(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("{{\"id\":\"d{}\",\"n\":{i}}}\n", i % 10))
        .collect()
}

const MIRROR_FMT: [&str; 2] = ["--format", "%o %k %s\\n"];

/// A compacted topic `dev` mirrored twice to `copy`, 1,500 keyed records each time, then the
/// second run's checkpoint lost (as a SIGKILL just before it would lose it). Returns the log
/// and what Kafka holds (as consume prints it with MIRROR_FMT).
fn mirrored_then_checkpoint_lost(b: &Broker) -> (Env, String) {
    let src = Env::new();
    src.ok(
        "logd",
        &[
            "topics",
            "create",
            "dev",
            "--cleanup-policy",
            "compact",
            "--segment-bytes",
            "4KiB",
        ],
        b"",
    );
    src.produce("dev", &["--key", "id"], &keyed(0, 1500));
    mirror_dev_ok(&src, b);
    let ck = src.log().join("mirror/dev.to-kafka.copy.json");
    let first = std::fs::read(&ck).unwrap();
    src.produce("dev", &["--key", "id"], &keyed(1500, 1500));
    mirror_dev_ok(&src, b);
    let sent = src.consume("dev", &MIRROR_FMT);
    std::fs::write(&ck, first).unwrap();
    (src, sent)
}

/// `logd mirror` of `dev` to `copy`.
fn mirror_dev(src: &Env, b: &Broker) -> std::process::Output {
    let url = b.url();
    let to = [
        "mirror",
        "-q",
        "-t",
        "dev",
        "--to",
        &url,
        "--to-topic",
        "copy",
    ];
    src.run("logd", &to, b"")
}

fn mirror_dev_ok(src: &Env, b: &Broker) {
    let o = mirror_dev(src, b);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn kafka_copy(b: &Broker) -> String {
    let mut full = vec!["-t", "copy"];
    full.extend_from_slice(&MIRROR_FMT);
    run_ok(tool("consume", b, &full), b"")
}

#[test]
fn mirror_resumes_exactly_after_compaction_removed_records_it_had_sent() {
    // Compaction runs before the mirror restarts: most of what it had sent after its
    // checkpoint is gone locally. Counting the landed records would skip records never
    // sent; it must resume exactly.
    let b = Broker::start();
    let (src, sent) = mirrored_then_checkpoint_lost(&b);
    src.ok("logd", &["compact", "-t", "dev", "--force"], b"");
    let left = src.consume("dev", &MIRROR_FMT).lines().count();
    assert!(left < 600, "compaction kept {left} of 3000");
    src.produce("dev", &["--key", "id"], &keyed(3000, 50));
    mirror_dev_ok(&src, &b);
    let after = src.consume("dev", &["--from", "3000", MIRROR_FMT[0], MIRROR_FMT[1]]);
    assert_eq!(after.lines().count(), 50);
    assert_eq!(kafka_copy(&b), sent + &after);
}

#[test]
fn mirror_sends_again_rather_than_skip_when_what_landed_cannot_be_matched() {
    // Not sent: d0..d9 again, repeating exactly the first ten records sent after the
    // checkpoint, then unkeyed filler. Compaction leaves of the keyed ones only the unsent
    // repeats, which match landed records: taking them for sent would leave Kafka's latest
    // d0..d9 behind the log's.
    let b = Broker::start();
    let (src, sent) = mirrored_then_checkpoint_lost(&b);
    src.produce("dev", &["--key", "id"], &keyed(1500, 10));
    let filler: String = (0..300).map(|i| format!("{{\"f\":{i}}}\n")).collect();
    src.produce("dev", &[], &filler);
    src.ok("logd", &["compact", "-t", "dev", "--force"], b"");
    let o = mirror_dev(&src, &b);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sending again from offset 1500"), "{err}");
    let after = src.consume("dev", &["--from", "3000", MIRROR_FMT[0], MIRROR_FMT[1]]);
    assert_eq!(after.lines().count(), 310);
    // Kafka's offsets are the local ones up to 3000; the records sent again follow.
    let copy = kafka_copy(&b);
    let value = |l: &str| l.split_once(' ').unwrap().1.to_string();
    assert_eq!(
        copy.lines().take(3000).collect::<Vec<_>>(),
        sent.lines().collect::<Vec<_>>()
    );
    let resent: Vec<String> = copy.lines().skip(3000).map(value).collect();
    assert_eq!(resent, after.lines().map(value).collect::<Vec<_>>());
}
