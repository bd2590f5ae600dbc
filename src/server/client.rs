//! The tools' side of `logd serve` (`produce`, `consume` and `replay --server URL`): a
//! blocking HTTP client (ureq) with the bearer token, retries of what is safe to retry, and
//! the record stream reader.
//!
//! Retried: connection failures and 503 (the server restarting, or busy), with backoff, for
//! up to `retry_for`. Produce batches carry `Producer-Id`/`Producer-Seq`, so a retried batch
//! is never appended twice.

use crate::error::{data, setup, usage, Error, Result};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

/// `--server URL` and `--token-file FILE`, shared by produce, consume and replay.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Talk to `logd serve` at URL instead of opening a log directory
    #[arg(long, value_name = "URL", conflicts_with = "log")]
    pub server: Option<String>,
    /// Bearer token for --server, read from FILE [env: KAPPA_TOKEN]
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<std::path::PathBuf>,
    /// How long to retry an unreachable or restarting server before failing
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub server_retry: String,
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
    /// How long transient failures are retried.
    pub retry_for: Duration,
}

/// A failed exchange: no answer at all (retryable), or an HTTP error answer.
pub enum Failure {
    Unreachable(String),
    Status(u16, String),
}

pub fn read_token(file: Option<&Path>) -> Result<Option<String>> {
    match file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .map_err(|e| setup(format!("--token-file {}: {e}", f.display())))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(setup(format!("--token-file {}: empty", f.display())));
            }
            Ok(Some(t))
        }
        None => Ok(std::env::var("KAPPA_TOKEN").ok().filter(|t| !t.is_empty())),
    }
}

pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// A query string from pairs (values percent-encoded).
pub fn query(pairs: &[(&str, String)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl Client {
    pub fn new(a: &ServerArgs) -> Result<Client> {
        let url = a.server.as_deref().unwrap_or_default();
        let base = url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(usage(format!(
                "--server {url}: expected http://HOST:PORT (TLS is a proxy's job)"
            )));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .user_agent(format!("kappa/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            base,
            agent: ureq::Agent::new_with_config(config),
            token: read_token(a.token_file.as_deref())?,
            retry_for: Duration::from_secs(30),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// One POST; the JSON answer of any status.
    pub fn post(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> std::result::Result<serde_json::Value, Failure> {
        let mut r = self.agent.post(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            r = r.header("authorization", a);
        }
        for (k, v) in headers {
            r = r.header(*k, v.as_str());
        }
        match r.send(body) {
            Ok(resp) => json_answer(resp),
            Err(e) => Err(Failure::Unreachable(e.to_string())),
        }
    }

    pub fn get_json(&self, path: &str) -> std::result::Result<serde_json::Value, Failure> {
        let mut r = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            r = r.header("authorization", a);
        }
        match r.call() {
            Ok(resp) => json_answer(resp),
            Err(e) => Err(Failure::Unreachable(e.to_string())),
        }
    }

    /// Opens a record stream; an HTTP error answer is returned as `Failure::Status`.
    pub fn stream(&self, path: &str) -> std::result::Result<Stream, Failure> {
        let mut r = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            r = r.header("authorization", a);
        }
        match r.call() {
            Ok(resp) if resp.status().as_u16() == 200 => {
                let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
                Ok(Stream {
                    r: BufReader::with_capacity(256 << 10, Box::new(reader)),
                })
            }
            Ok(resp) => match json_answer(resp) {
                Err(f) => Err(f),
                Ok(v) => Err(Failure::Status(200, v.to_string())),
            },
            Err(e) => Err(Failure::Unreachable(e.to_string())),
        }
    }

    /// Calls `f` until it gives an answer that is not a transient failure, for up to
    /// `retry_for`; then turns the last failure into an error.
    pub fn retrying<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> std::result::Result<T, Failure>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(Failure::Unreachable(m)) | Err(Failure::Status(503, m)) => {
                    if start.elapsed() + pause > self.retry_for {
                        return Err(setup(format!(
                            "{what}: server {} unreachable for {} s: {m}",
                            self.base,
                            self.retry_for.as_secs()
                        )));
                    }
                    if crate::cli::signals::stop_requested() {
                        return Err(setup(format!("{what}: interrupted while retrying: {m}")));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(Failure::Status(s, m)) => return Err(status_error(what, s, &m)),
            }
        }
    }
}

/// Maps an HTTP error answer to the tools' exit codes: bad requests and missing things
/// are usage/setup (2), the rest is a failure of the work (1).
pub fn status_error(what: &str, status: u16, msg: &str) -> Error {
    let m = format!("{what}: {msg} (HTTP {status})");
    match status {
        400 | 401 | 403 | 404 | 405 | 409 | 429 => setup(m),
        _ => data(m),
    }
}

fn json_answer(
    mut resp: ureq::http::Response<ureq::Body>,
) -> std::result::Result<serde_json::Value, Failure> {
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|e| Failure::Unreachable(format!("reading the answer: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(
        |_| serde_json::json!({"error": String::from_utf8_lossy(&bytes).trim().to_string()}),
    );
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        let m = v
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        Err(Failure::Status(status, m))
    }
}

/// A record stream: envelope lines, then one control line (see `server::http`).
pub struct Stream {
    r: BufReader<Box<dyn Read + Send>>,
}

pub enum Line<'a> {
    Record(&'a [u8]),
    /// Where each partition of the stream starts.
    Start(Vec<(u32, u64)>),
    /// `{"end":"done"}`: everything asked for was sent.
    Done,
    /// The stream ended early (`shutdown`, `rebalance`, or cut): reconnect and resume.
    Ended(String),
    Error(String),
}

impl Stream {
    /// Whether the next line is already buffered (if not, the caller may flush first).
    pub fn has_buffered(&self) -> bool {
        !self.r.buffer().is_empty()
    }

    /// The next line, into `buf` (cleared first).
    pub fn next<'a>(&mut self, buf: &'a mut Vec<u8>) -> Line<'a> {
        buf.clear();
        match self.r.read_until(b'\n', buf) {
            Ok(0) => return Line::Ended("the stream was cut".into()),
            Ok(_) => {}
            Err(e) => return Line::Ended(format!("the stream was cut: {e}")),
        }
        if buf.last() != Some(&b'\n') {
            return Line::Ended("the stream was cut mid-record".into());
        }
        buf.pop();
        if buf.starts_with(b"{\"topic\":") {
            return Line::Record(&buf[..]);
        }
        let v: serde_json::Value = serde_json::from_slice(buf).unwrap_or_default();
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return Line::Error(e.to_string());
        }
        if let Some(m) = v.get("start").and_then(|m| m.as_object()) {
            let starts = m
                .iter()
                .filter_map(|(p, o)| Some((p.parse().ok()?, o.as_u64()?)))
                .collect();
            return Line::Start(starts);
        }
        match v.get("end").and_then(|e| e.as_str()) {
            Some("done") => Line::Done,
            Some(other) => Line::Ended(other.to_string()),
            None => Line::Error(format!(
                "unexpected line in the stream: {}",
                String::from_utf8_lossy(buf)
            )),
        }
    }
}

/// Partition, offset and timestamp of an envelope line as the server writes it
/// (`prefix` is `{"topic":"T","partition":`), read without parsing the whole line.
pub fn head(line: &[u8], prefix: &[u8]) -> Option<(u32, u64, i64)> {
    fn number<T: std::str::FromStr>(b: &[u8]) -> Option<(T, &[u8])> {
        let n = b
            .iter()
            .enumerate()
            .take_while(|(i, c)| c.is_ascii_digit() || (*i == 0 && **c == b'-'))
            .count();
        Some((std::str::from_utf8(&b[..n]).ok()?.parse().ok()?, &b[n..]))
    }
    let (p, rest) = number(line.strip_prefix(prefix)?)?;
    let (o, rest) = number(rest.strip_prefix(b",\"offset\":")?)?;
    let (ts, _) = number(rest.strip_prefix(b",\"ts\":")?)?;
    Some((p, o, ts))
}

/// A member id unique enough across hosts and restarts.
pub fn member_id(tool: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(40)
        .collect::<String>();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tool}-{}-{}-{:08x}",
        if host.is_empty() { "host" } else { &host },
        std::process::id(),
        nanos ^ std::process::id().rotate_left(16)
    )
}
