//! Helpers: run a tool against a temporary log directory, feed it stdin, read its output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn bin(tool: &str) -> PathBuf {
    match tool {
        "produce" => PathBuf::from(env!("CARGO_BIN_EXE_produce")),
        "consume" => PathBuf::from(env!("CARGO_BIN_EXE_consume")),
        "logd" => PathBuf::from(env!("CARGO_BIN_EXE_logd")),
        "transform" => PathBuf::from(env!("CARGO_BIN_EXE_transform")),
        "window" => PathBuf::from(env!("CARGO_BIN_EXE_window")),
        "store" => PathBuf::from(env!("CARGO_BIN_EXE_store")),
        "replay" => PathBuf::from(env!("CARGO_BIN_EXE_replay")),
        other => panic!("no tool {other}"),
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin(tool));
        c.arg("--log").arg(self.log()).args(args);
        c.env_remove("KAPPA_LOG");
        c
    }

    /// Runs a tool with `stdin` and returns its output.
    pub fn run(&self, tool: &str, args: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(self.cmd(tool, args), stdin)
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, tool: &str, args: &[&str], stdin: &[u8]) -> String {
        run_ok(self.cmd(tool, args), stdin)
    }

    pub fn produce(&self, topic: &str, extra: &[&str], stdin: &str) {
        let mut args = vec!["-t", topic, "-q"];
        args.extend_from_slice(extra);
        self.ok("produce", &args, stdin.as_bytes());
    }

    pub fn consume(&self, topic: &str, extra: &[&str]) -> String {
        let mut args = vec!["-t", topic];
        args.extend_from_slice(extra);
        self.ok("consume", &args, b"")
    }
}

/// A tool pointed at a server or a broker (`--server URL`, `--broker URL`) instead of a
/// log directory.
pub fn remote_tool(tool: &str, flag: &str, url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin(tool));
    c.args([flag, url]).args(args);
    c.env_remove("KAPPA_LOG").env_remove("KAPPA_TOKEN");
    c
}

/// Runs `c` with `stdin`, asserts exit 0, returns stdout.
pub fn run_ok(c: Command, stdin: &[u8]) -> String {
    let what = format!("{c:?}");
    let o = run_with_stdin(c, stdin);
    assert!(
        o.status.success(),
        "{what} failed with {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8")
}

pub fn run_with_stdin(mut c: Command, stdin: &[u8]) -> Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    let mut si = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = si.write_all(&data);
    });
    let o = child.wait_with_output().expect("wait");
    let _ = feeder.join();
    o
}

pub fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `n` telemetry records with fixed timestamps one second apart.
pub fn telemetry(n: usize, start_ms: i64) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "{{\"vehicle_id\":\"truck-{}\",\"ts\":{},\"speed\":{}.5,\"lat\":52.{:04},\"lon\":13.{:04}}}\n",
            i % 7,
            start_ms + i as i64 * 1000,
            40 + i % 60,
            i % 9999,
            (i * 7) % 9999
        ));
    }
    s
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

pub fn segment_files(partition_dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(partition_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// The example command lines of a tool's `--help` (the lines after "Examples:").
pub fn help_examples(tool: &str) -> Vec<String> {
    let help = String::from_utf8(
        Command::new(bin(tool))
            .arg("--help")
            .output()
            .expect("run --help")
            .stdout,
    )
    .expect("utf-8 help");
    help.split("Examples:\n")
        .nth(1)
        .expect("an Examples section")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// $PATH with the built tools first, so examples run as a user types them.
pub fn path_with_tools() -> String {
    format!(
        "{}:{}",
        bin("produce").parent().expect("a directory").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}
