//! The hostile-input corpus (tests/fixtures/bad-input/) through every tool that reads
//! records (`produce`, `transform`, `window`, `store`, `replay --file`, and `logd serve`'s
//! produce endpoint), in every `--on-error` mode: the documented exit code, the line number
//! in the message, every valid record kept, and bounded memory for a 100 MB line.

use crate::common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (file, bad line numbers, valid records).
const CORPUS: &[(&str, &[u64], u64)] = &[
    ("truncated.ndjson", &[2, 4], 3),
    ("invalid-utf8.ndjson", &[2, 4], 3),
    ("nul-bytes.ndjson", &[2, 3], 2),
    ("deep-nesting.ndjson", &[2], 2),
    ("huge-numbers.ndjson", &[], 5),
    ("bom.ndjson", &[3], 3),
    ("crlf.ndjson", &[], 3),
    ("not-objects.ndjson", &[2, 3, 4, 5, 7], 3),
];

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bad-input")
        .join(name)
}

#[derive(Clone, Copy, Debug)]
enum Tool {
    Produce,
    Transform,
    Window,
    Store,
    Replay,
}

const TOOLS: [Tool; 5] = [
    Tool::Produce,
    Tool::Transform,
    Tool::Window,
    Tool::Store,
    Tool::Replay,
];

/// What a run did: exit code, stderr, and how many valid records came through.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    records: u64,
}

/// Runs `tool` on `input` with `mode` (`fail`, `skip` or a dead-letter path). The child's
/// data segment is capped at `mem` bytes when given.
fn run(env: &Env, tool: Tool, input: &Path, mode: &[&str], mem: Option<u64>) -> Outcome {
    let topic = format!("t{}", rand_suffix());
    let mut args: Vec<&str> = match tool {
        Tool::Produce => vec!["-t", &topic, "--key", "a", "--ts", "ts"],
        Tool::Transform => vec!["."],
        Tool::Window => vec!["--tumbling", "1h", "--ts", "ts", "--agg", "count()"],
        Tool::Store => vec!["--table", &topic, "--key", "a"],
        Tool::Replay => vec!["--file", input.to_str().unwrap(), "--ts", "ts"],
    };
    args.push("--on-error");
    args.extend_from_slice(mode);
    let name = match tool {
        Tool::Produce => "produce",
        Tool::Transform => "transform",
        Tool::Window => "window",
        Tool::Store => "store",
        Tool::Replay => "replay",
    };
    let mut c = match tool {
        // They read stdin and write stdout; no log directory.
        Tool::Transform | Tool::Window | Tool::Replay => {
            let mut c = Command::new(bin(name));
            c.args(&args);
            c
        }
        _ => env.cmd(name, &args),
    };
    c.stdin(std::fs::File::open(input).unwrap());
    if let Some(limit) = mem {
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            c.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_DATA,
                    limit,
                    limit,
                )
                .map_err(std::io::Error::from)
            });
        }
    }
    let o = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let records = match tool {
        Tool::Produce => {
            if env.log().join("topics").join(&topic).exists() {
                env.consume(&topic, &["--value"]).lines().count() as u64
            } else {
                0
            }
        }
        Tool::Transform | Tool::Replay => stdout.lines().count() as u64,
        Tool::Window => lines(&stdout)
            .iter()
            .map(|r| r["value"]["count"].as_u64().unwrap())
            .sum(),
        Tool::Store => {
            let x = Command::new(bin("store"))
                .arg("--log")
                .arg(env.log())
                .args(["export", &topic])
                .output()
                .unwrap();
            String::from_utf8_lossy(&x.stdout).lines().count() as u64
        }
    };
    Outcome {
        code: o.status.code(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        records,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Checks one input through every tool and mode.
fn check(env: &Env, input: &Path, bad: &[u64], valid: u64, mem: Option<u64>) {
    let what = input.file_name().unwrap().to_string_lossy().into_owned();
    for tool in TOOLS {
        let o = run(env, tool, input, &["fail"], mem);
        match bad.first() {
            Some(first) => {
                assert_eq!(o.code, Some(1), "{tool:?} {what} fail: {}", o.stderr);
                assert!(
                    o.stderr.contains(&format!("line {first}:")),
                    "{tool:?} {what}: no line number in {:?}",
                    o.stderr
                );
                // What came before the bad line is kept (produce makes it durable, transform
                // writes it; replay sorts a whole dump, so it writes nothing).
                if matches!(tool, Tool::Produce | Tool::Transform) {
                    assert_eq!(o.records, first - 1, "{tool:?} {what}");
                }
            }
            None => {
                assert_eq!(o.code, Some(0), "{tool:?} {what}: {}", o.stderr);
                assert_eq!(o.records, valid, "{tool:?} {what}");
            }
        }
        let o = run(env, tool, input, &["skip"], mem);
        assert_eq!(o.code, Some(0), "{tool:?} {what} skip: {}", o.stderr);
        assert_eq!(o.records, valid, "{tool:?} {what} skip");
        let dl = env.path(&format!("dead-{}.ndjson", rand_suffix()));
        let o = run(
            env,
            tool,
            input,
            &["dead-letter", dl.to_str().unwrap()],
            mem,
        );
        assert_eq!(o.code, Some(0), "{tool:?} {what} dead-letter: {}", o.stderr);
        assert_eq!(o.records, valid, "{tool:?} {what} dead-letter");
        let letters = std::fs::read_to_string(&dl).unwrap_or_default();
        let got: Vec<u64> = lines(&letters)
            .iter()
            .map(|l| l["line"].as_u64().unwrap())
            .collect();
        assert_eq!(got, bad, "{tool:?} {what}: dead letters");
    }
}

#[test]
fn the_corpus_through_every_tool_and_mode() {
    let env = Env::new();
    for (file, bad, valid) in CORPUS {
        check(&env, &corpus(file), bad, *valid, None);
    }
}

#[test]
fn ragged_and_quoted_csv() {
    let env = Env::new();
    let input = corpus("ragged.csv");
    for (mode, records) in [("skip", 5), ("fail", 1)] {
        let o = env.run(
            "produce",
            &[
                "-t",
                mode,
                "--csv",
                "--key",
                "a",
                "--ts",
                "ts",
                "--on-error",
                mode,
            ],
            &std::fs::read(&input).unwrap(),
        );
        let got = env.consume(mode, &["--value"]);
        assert_eq!(got.lines().count(), records, "{mode}: {got}");
        if mode == "fail" {
            assert_eq!(o.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&o.stderr).contains("line 3:"));
        } else {
            assert!(got.contains("\"k4,x\"") && got.contains("k5 \\\"quoted\\\""));
            assert!(got.contains("k6\\nmultiline"), "{got}");
        }
    }
    let dl = env.path("csv-dead.ndjson");
    env.ok(
        "produce",
        &[
            "-t",
            "dl",
            "--csv",
            "--key",
            "a",
            "--on-error",
            "dead-letter",
            dl.to_str().unwrap(),
        ],
        &std::fs::read(&input).unwrap(),
    );
    let got: Vec<u64> = lines(&std::fs::read_to_string(&dl).unwrap())
        .iter()
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![3, 4, 10]);
    // replay --file --csv judges the same rows the same way.
    let replay = |mode: &[&str]| {
        let mut c = Command::new(bin("replay"));
        c.args([
            "--file",
            input.to_str().unwrap(),
            "--csv",
            "--ts",
            "ts",
            "--on-error",
        ])
        .args(mode);
        c.output().unwrap()
    };
    let o = replay(&["skip"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8(o.stdout).unwrap();
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.contains("k6\\nmultiline"), "{out}");
    let o = replay(&["fail"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 3:"));
    let dl = env.path("replay-dead.ndjson");
    assert!(replay(&["dead-letter", dl.to_str().unwrap()])
        .status
        .success());
    let got: Vec<u64> = lines(&std::fs::read_to_string(&dl).unwrap())
        .iter()
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![3, 4, 10]);
}

#[test]
fn a_100_mb_line_takes_bounded_memory() {
    let env = Env::new();
    let path = env.path("huge-line.ndjson");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(f, "{{\"a\":\"k1\",\"ts\":1700000000000,\"v\":1}}").unwrap();
        write!(f, "{{\"a\":\"k2\",\"ts\":1700000000000,\"v\":\"").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        writeln!(f, "\"}}").unwrap();
        writeln!(f, "{{\"a\":\"k3\",\"ts\":1700000000000,\"v\":3}}").unwrap();
    }
    // Each tool must get through with 48 MB of data segment: less than half the line, which
    // it holds no more than its record limit (1 MiB) of.
    check(&env, &path, &[2], 2, Some(48 << 20));
}

#[test]
fn the_corpus_through_the_server() {
    use crate::serve::{post, Server};
    let env = Env::new();
    let srv = Server::start(&env.log(), &[]);
    for (n, (file, bad, valid)) in CORPUS.iter().enumerate() {
        let body = std::fs::read(corpus(file)).unwrap();
        let url = format!("{}/topics/h{n}/records?key=a&ts=ts", srv.url);
        // Fail mode: 422 naming the first bad line, the records before it appended.
        let (s, v) = post(&url, &[], &body);
        match bad.first() {
            Some(first) => {
                assert_eq!(s, 422, "{file}: {v}");
                assert_eq!(v["line"], *first, "{file}: {v}");
                assert_eq!(v["records"], first - 1, "{file}: {v}");
            }
            None => assert_eq!(
                (s, v["records"].as_u64()),
                (200, Some(*valid)),
                "{file}: {v}"
            ),
        }
        // Skip mode: every valid record, each bad line listed.
        let (s, v) = post(&format!("{url}&on_error=skip"), &[], &body);
        assert_eq!(s, 200, "{file}: {v}");
        assert_eq!(v["records"], *valid, "{file}: {v}");
        let lines: Vec<u64> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, *bad, "{file}");
    }
    assert_eq!(srv.stop(), Some(0));
    assert!(env.run("logd", &["verify"], b"").status.success());
}
