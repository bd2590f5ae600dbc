//! The HTTP API of `logd serve`: routing, authentication, request limits, and the handlers.
//!
//! ```text
//! POST /topics/{topic}/records   append (NDJSON, CSV, lines or envelopes); 200 after durable
//! GET  /topics/{topic}/records   envelope NDJSON, chunked; follow=true keeps it open
//! GET  /topics, /topics/{topic}  topics, and per partition earliest/latest offsets
//! POST /groups/{g}/join|heartbeat|leave   membership and commits of a consumer group
//! GET  /groups/{g}/records       the member's partitions, from the group's offsets
//! GET  /groups, /groups/{g}      groups; members, assignments, offsets and lag
//! GET  /healthz, /metrics        health; Prometheus text format
//! ```
//!
//! A record stream starts with `{"start":{"P":OFFSET,...}}` (where each partition starts) and
//! ends with one control line, never an envelope: `{"end":"done"}` (all asked for was sent),
//! `{"end":"shutdown"}`, `{"end":"rebalance","generation":N}`, or `{"error":"..."}` (damage
//! found: the records before it are good). A stream cut without one (a killed server) is
//! incomplete: clients resume from the start positions and what they received.

// The error side of the handlers' Results is the HTTP answer itself, built once per request.
#![allow(clippy::result_large_err)]

use crate::cmd::consume::{open_range, parse_start, Start};
use crate::error::Error;
use crate::log::groups::Groups;
use crate::log::{names, PartitionReader};
use crate::record::envelope;
use crate::record::ingest::{Format, Ingest, Item};
use crate::record::json::write_str;
use crate::record::lines::{LineReader, Next};
use crate::record::time;
use crate::server::coordinator::JoinError;
use crate::server::topic::{Batch, Rec, SendError, TopicHandle};
use crate::server::{ConnState, InFlight, State};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Infallible>;

/// Sent straight to the socket when a request head takes longer than --header-timeout.
pub const HEADER_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: 56\r\nConnection: close\r\n\r\n{\"error\":\"request head not received within the timeout\"}";

/// A streamed response is cut into chunks of about this size.
const CHUNK: usize = 256 << 10;
/// Streamed chunks buffered ahead of a slow reader.
const STREAM_QUEUE: usize = 8;
/// A caught-up follower looks at the log at least this often (retention, new segments).
const FOLLOW_TICK: Duration = Duration::from_secs(1);
/// Errors listed in a produce answer with on_error=skip (the count is always exact).
const LISTED_ERRORS: usize = 100;

const R_PRODUCE: usize = 0;
const R_CONSUME: usize = 1;
const R_TOPICS: usize = 2;
const R_GROUPS: usize = 3;
const R_HEALTH: usize = 4;
const R_METRICS: usize = 5;
const R_OTHER: usize = 6;

fn full(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn answer(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut b = v.to_string();
    b.push('\n');
    full(status, "application/json", b)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    answer(status, json!({ "error": msg.into() }))
}

/// The status a tool error maps to.
fn error_of(e: &Error) -> Response<Body> {
    let status = match e {
        Error::Usage(_) => StatusCode::BAD_REQUEST,
        Error::Setup(m) if m.starts_with("no topic") => StatusCode::NOT_FOUND,
        Error::Setup(m) if m.contains("shutting down") => StatusCode::SERVICE_UNAVAILABLE,
        Error::Setup(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

pub fn too_many_connections() -> Response<Body> {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections (--max-connections); retry later",
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        out.insert(dec(k), dec(v));
    }
    out
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    matches!(
        q.get(name).map(String::as_str),
        Some("" | "1" | "true" | "yes")
    )
}

fn number<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, Response<Body>> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("{name}={v:?}: expected a number"),
            )
        }),
    }
}

/// Constant-time comparison of the bearer token.
fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (token.as_bytes(), given.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn handle(
    state: Arc<State>,
    cs: Arc<ConnState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let guard = cs.request_started();
    let (route, resp) = route(&state, guard, peer, req).await;
    state
        .metrics
        .observe(route, resp.status().as_u16(), started.elapsed());
    resp
}

async fn route(
    state: &Arc<State>,
    guard: InFlight,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> (usize, Response<Body>) {
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    if p == ["healthz"] {
        let stopping = *state.shutdown.borrow();
        return if stopping {
            (
                R_HEALTH,
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "stopping"}),
                ),
            )
        } else {
            (R_HEALTH, answer(StatusCode::OK, json!({"status": "ok"})))
        };
    }
    if !authorized(state, &req) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        );
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return (R_OTHER, r);
    }
    let m = req.method().clone();
    let bad_method = || error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    match p.as_slice() {
        ["metrics"] if m == Method::GET => (R_METRICS, metrics(state)),
        ["topics"] if m == Method::GET => (R_TOPICS, topics(state)),
        ["topics", t] if m == Method::GET => (R_TOPICS, topic_info(state, t)),
        ["topics", t, "records"] if m == Method::POST => {
            let t = t.to_string();
            (R_PRODUCE, produce(state, &t, req).await)
        }
        ["topics", t, "records"] if m == Method::GET => {
            let q = query(&req);
            (R_CONSUME, consume(state, t, &q, guard, peer))
        }
        ["groups"] if m == Method::GET => (R_GROUPS, groups_list(state)),
        ["groups", g] if m == Method::GET => (R_GROUPS, group_info(state, g)),
        ["groups", g, op @ ("join" | "heartbeat" | "leave")] if m == Method::POST => {
            let (g, op) = (g.to_string(), op.to_string());
            (R_GROUPS, group_op(state, &g, &op, req).await)
        }
        ["groups", g, "records"] if m == Method::GET => {
            let q = query(&req);
            (R_CONSUME, group_stream(state, g, &q, guard, peer))
        }
        ["metrics"] | ["topics", ..] | ["groups", ..] => (R_OTHER, bad_method()),
        _ => (R_OTHER, error(StatusCode::NOT_FOUND, "no such resource")),
    }
}

/// Reads a request body within the size limit and the request timeout.
async fn read_body(state: &State, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let max = state.limits.max_body;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the server's limit of {max} bytes (--max-body-bytes)"
            ),
        )
    };
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(state.limits.request_timeout, body.collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s (--request-timeout)",
                state.limits.request_timeout.as_secs_f64()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn produce(state: &Arc<State>, topic: &str, req: Request<Incoming>) -> Response<Body> {
    let q = query(&req);
    let ctype = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let fmt_name =
        q.get("format")
            .map(String::as_str)
            .unwrap_or(if ctype.starts_with("text/csv") {
                "csv"
            } else {
                "ndjson"
            });
    let Some(format) = Format::parse(fmt_name) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("format={fmt_name:?}: use ndjson, csv, lines or envelope"),
        );
    };
    let skip = match q.get("on_error").map(String::as_str) {
        None | Some("fail") => false,
        Some("skip") => true,
        Some(o) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("on_error={o:?}: use fail or skip (dead letters are the client's)"),
            )
        }
    };
    let producer = match producer_headers(&req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (partition, create) = match (
        number::<u32>(&q, "partition"),
        number::<u32>(&q, "partitions"),
    ) {
        (Ok(p), Ok(c)) => (p, c.unwrap_or(1)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if create == 0 {
        return error(StatusCode::BAD_REQUEST, "partitions must be at least 1");
    }
    let mut ingest = match Ingest::new(
        format,
        q.get("key").map(String::as_str),
        q.get("ts").map(String::as_str),
        q.get("ts_format").map(String::as_str),
        state.limits.max_record,
        "the server's limit (--max-record-bytes)",
    ) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = names::validate("topic", topic) {
        return error_of(&e);
    }
    let body = match read_body(state, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let h = match topic_handle(state, topic, Some(create)).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    if let Some(p) = partition {
        if p >= h.partitions {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "partition={p}: topic {topic:?} has partitions 0 to {}",
                    h.partitions - 1
                ),
            );
        }
    }
    // Parsing runs off the async workers: a body can hold many megabytes.
    let parsed = tokio::task::spawn_blocking(move || parse_body(&mut ingest, &body, skip)).await;
    let Ok(parsed) = parsed else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "parsing the body failed");
    };
    let (records, bad, failed) = parsed;
    let (reply, wait) = tokio::sync::oneshot::channel();
    let n = records.len();
    let ack = if n == 0 && producer.is_none() {
        Ok(crate::server::topic::Ack {
            ranges: Vec::new(),
            duplicate: false,
        })
    } else {
        let b = Batch {
            records,
            partition,
            producer,
            reply,
        };
        match h.send(b) {
            Ok(()) => match wait.await {
                Ok(a) => a,
                Err(_) => Err("the writer stopped".to_string()),
            },
            Err(SendError::Busy) => {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the topic's write queue is full; retry later",
                );
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("1"));
                return r;
            }
            Err(SendError::Stopped) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is shutting down",
                )
            }
        }
    };
    let ack = match ack {
        Ok(a) => a,
        Err(m) if m.contains("older than") => return error(StatusCode::CONFLICT, m),
        Err(m) => return error(StatusCode::INTERNAL_SERVER_ERROR, m),
    };
    let appended: u64 = ack.ranges.iter().map(|r| r.count).sum();
    let ranges: Vec<serde_json::Value> = ack
        .ranges
        .iter()
        .map(|r| json!({"partition": r.partition, "first": r.first, "last": r.first + r.count - 1, "count": r.count}))
        .collect();
    let errors: Vec<serde_json::Value> = bad
        .iter()
        .take(LISTED_ERRORS)
        .map(|(line, msg)| json!({"line": line, "error": msg}))
        .collect();
    let mut v = json!({
        "topic": topic, "records": appended, "ranges": ranges, "duplicate": ack.duplicate,
        "skipped": bad.len(), "errors": errors,
    });
    match failed {
        None => answer(StatusCode::OK, v),
        Some((line, msg, oversize)) => {
            v["error"] = json!(format!("line {line}: {msg}"));
            v["line"] = json!(line);
            let status = if oversize {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            answer(status, v)
        }
    }
}

type Parsed = (Vec<Rec>, Vec<(u64, String)>, Option<(u64, String, bool)>);

/// The records of a body, the bad lines, and (fail mode) the line that stopped it.
fn parse_body(ingest: &mut Ingest, body: &[u8], skip: bool) -> Parsed {
    let now = time::now_ms();
    let mut records = Vec::new();
    let mut bad = Vec::new();
    let max = ingest.max();
    let mut lr = LineReader::new(body, max, None);
    let take = |item: Item<'_>,
                records: &mut Vec<Rec>,
                bad: &mut Vec<(u64, String)>|
     -> Option<(u64, String, bool)> {
        match item {
            Item::Record(p) => {
                records.push(Rec {
                    key: p.key.map(|k| k.into_owned()),
                    ts: p.ts.unwrap_or(now),
                    value: p.value.into_owned(),
                    json: p.json,
                    headers: p.headers.into_owned(),
                    header_count: p.header_count,
                });
                None
            }
            Item::Bad(no, msg, _) => {
                if skip {
                    bad.push((no, msg));
                    None
                } else {
                    let oversize = msg.starts_with("record is larger");
                    Some((no, msg, oversize))
                }
            }
            Item::Nothing => None,
        }
    };
    // Reading from memory: never idle, never an error.
    while let Ok(Next::Line(l)) = lr.next_line() {
        let item = ingest.line(l.no, l.bytes, l.oversize);
        if let Some(f) = take(item, &mut records, &mut bad) {
            return (records, bad, Some(f));
        }
    }
    if let Some(item) = ingest.finish() {
        if let Some(f) = take(item, &mut records, &mut bad) {
            return (records, bad, Some(f));
        }
    }
    (records, bad, None)
}

fn producer_headers(req: &Request<Incoming>) -> Result<Option<(String, u64)>, Response<Body>> {
    let get = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match (get("producer-id"), get("producer-seq")) {
        (None, None) => Ok(None),
        (Some(id), Some(seq)) => {
            if names::validate("producer", &id).is_err() || id.len() > 128 {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "Producer-Id: use 1 to 128 characters of [A-Za-z0-9._-]",
                ));
            }
            let seq = seq
                .trim()
                .parse()
                .map_err(|_| error(StatusCode::BAD_REQUEST, "Producer-Seq: expected an integer"))?;
            Ok(Some((id, seq)))
        }
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "Producer-Id and Producer-Seq go together",
        )),
    }
}

/// The topic's handle; opening a topic recovers its partitions, so it runs off the workers.
async fn topic_handle(
    state: &Arc<State>,
    topic: &str,
    create: Option<u32>,
) -> Result<Arc<TopicHandle>, Response<Body>> {
    if let Some(h) = state
        .topics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(topic)
    {
        return Ok(h.clone());
    }
    let (st, t) = (state.clone(), topic.to_string());
    match tokio::task::spawn_blocking(move || st.topic(&t, create)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(error_of(&e)),
        Err(_) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "opening the topic failed",
        )),
    }
}

fn topic_now(state: &State, topic: &str) -> Result<Arc<TopicHandle>, Response<Body>> {
    // Consumers of a topic the server has not opened yet open it here (rare: every topic
    // is opened at start and on creation through the server).
    tokio::task::block_in_place(|| state.topic(topic, None)).map_err(|e| error_of(&e))
}

struct SPart {
    p: u32,
    reader: PartitionReader,
    end: Option<u64>,
    done: bool,
}

/// Opens the partitions to stream, each at `starts[p]` or else at `from`.
fn open_parts(
    state: &State,
    topic: &str,
    parts: &[u32],
    from: &Start,
    to: Option<&Start>,
    starts: &BTreeMap<u32, u64>,
) -> crate::Result<Vec<SPart>> {
    let mut out = Vec::new();
    for &p in parts {
        let dir = state.log.partition_dir(topic, p)?;
        let (reader, end) = open_range(&dir, starts.get(&p).copied(), from, to)?;
        out.push(SPart {
            p,
            reader,
            end,
            done: false,
        });
    }
    Ok(out)
}

/// `offsets=P:O,P:O`: where each partition resumes (a client reconnecting).
fn parse_offsets(s: Option<&String>) -> Result<BTreeMap<u32, u64>, Response<Body>> {
    let mut m = BTreeMap::new();
    let Some(s) = s else { return Ok(m) };
    for item in s.split(',').filter(|x| !x.is_empty()) {
        let parsed = item
            .split_once(':')
            .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)));
        match parsed {
            Some((p, o)) => {
                m.insert(p, o);
            }
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("offsets: {item:?} is not PARTITION:OFFSET"),
                ))
            }
        }
    }
    Ok(m)
}

fn positions(q: &HashMap<String, String>) -> Result<(Start, Option<Start>), Response<Body>> {
    let from = match q.get("from") {
        None => Start::Earliest,
        Some(s) => {
            parse_start(s).map_err(|e| error(StatusCode::BAD_REQUEST, format!("from: {e}")))?
        }
    };
    let to = match q.get("to") {
        None => None,
        Some(s) => match parse_start(s) {
            Ok(Start::Earliest | Start::Last(_)) | Err(_) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "to: use latest, OFFSET or @TIME",
                ))
            }
            Ok(t) => Some(t),
        },
    };
    Ok((from, to))
}

/// Counts a follow stream against the per-client limit; released on drop.
struct FollowSlot {
    state: Arc<State>,
    ip: std::net::IpAddr,
}

impl FollowSlot {
    fn take(state: &Arc<State>, peer: SocketAddr) -> Option<FollowSlot> {
        let mut f = state.follows.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(peer.ip()).or_insert(0);
        if *n >= state.limits.follows_per_client {
            return None;
        }
        *n += 1;
        state.metrics.follow_streams.fetch_add(1, Relaxed);
        Some(FollowSlot {
            state: state.clone(),
            ip: peer.ip(),
        })
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        let mut f = self.state.follows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = f.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                f.remove(&self.ip);
            }
        }
        self.state.metrics.follow_streams.fetch_sub(1, Relaxed);
    }
}

/// A streamed body: chunks from the pump task. It holds the request's in-flight mark (the
/// connection is busy, not idle, while streaming) and the follow slot.
struct Streamed {
    rx: mpsc::Receiver<Bytes>,
    _guard: InFlight,
    _slot: Option<FollowSlot>,
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn follow_slot(
    state: &Arc<State>,
    peer: SocketAddr,
    follow: bool,
) -> Result<Option<FollowSlot>, Response<Body>> {
    if !follow {
        return Ok(None);
    }
    match FollowSlot::take(state, peer) {
        Some(s) => Ok(Some(s)),
        None => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this client already has {} follow streams open (--max-follows-per-client)",
                state.limits.follows_per_client
            ),
        )),
    }
}

fn stream_response(
    rx: mpsc::Receiver<Bytes>,
    guard: InFlight,
    slot: Option<FollowSlot>,
    generation: Option<u64>,
) -> Response<Body> {
    let body = Streamed {
        rx,
        _guard: guard,
        _slot: slot,
    };
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Some(g) = generation {
        if let Ok(v) = HeaderValue::from_str(&g.to_string()) {
            r.headers_mut().insert("kappa-generation", v);
        }
    }
    r
}

fn consume(
    state: &Arc<State>,
    topic: &str,
    q: &HashMap<String, String>,
    guard: InFlight,
    peer: SocketAddr,
) -> Response<Body> {
    let h = match topic_now(state, topic) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let (from, to) = match positions(q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let starts = match parse_offsets(q.get("offsets")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (partition, max) = match (number::<u32>(q, "partition"), number::<u64>(q, "max")) {
        (Ok(p), Ok(m)) => (p, m.unwrap_or(u64::MAX)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let parts: Vec<u32> = match partition {
        Some(p) if p >= h.partitions => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "partition={p}: topic {topic:?} has partitions 0 to {}",
                    h.partitions - 1
                ),
            )
        }
        Some(p) => vec![p],
        None => (0..h.partitions).collect(),
    };
    let follow = flag(q, "follow");
    let slot = match follow_slot(state, peer, follow) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let sparts = match tokio::task::block_in_place(|| {
        open_parts(state, topic, &parts, &from, to.as_ref(), &starts)
    }) {
        Ok(p) => p,
        Err(e) => return error_of(&e),
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(pump(state.clone(), h, sparts, max, follow, tx, None));
    stream_response(rx, guard, slot, None)
}

/// Sends the records of `parts` as envelope NDJSON, then a control line (see the module doc).
async fn pump(
    state: Arc<State>,
    h: Arc<TopicHandle>,
    mut parts: Vec<SPart>,
    max: u64,
    follow: bool,
    tx: mpsc::Sender<Bytes>,
    group: Option<(tokio::sync::watch::Receiver<u64>, u64)>,
) {
    let mut topic_json = Vec::new();
    write_str(&mut topic_json, &h.name);
    let mut appended = h.appended.subscribe();
    let mut shutdown = state.shutdown.clone();
    let (mut changed, generation) = match group {
        Some((rx, g)) => (Some(rx), g),
        None => (None, 0),
    };
    let mut count = 0u64;
    let end = |s: &str| Bytes::from(format!("{s}\n"));
    let starts: BTreeMap<String, u64> = parts
        .iter()
        .map(|p| (p.p.to_string(), p.reader.position()))
        .collect();
    if tx
        .send(end(&json!({ "start": starts }).to_string()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        // A backlog does not hold up a shutdown or a rebalance.
        if *shutdown.borrow() {
            let _ = tx.send(end("{\"end\":\"shutdown\"}")).await;
            return;
        }
        if let Some(c) = changed.as_mut() {
            if c.has_changed().unwrap_or(true) {
                let g = *c.borrow();
                let _ = tx
                    .send(end(&format!(
                        "{{\"end\":\"rebalance\",\"generation\":{g}}}"
                    )))
                    .await;
                return;
            }
        }
        appended.borrow_and_update();
        let mut buf = Vec::with_capacity(CHUNK + (64 << 10));
        let mut progressed = false;
        let mut records = 0u64;
        let mut failure = None;
        'parts: for part in parts.iter_mut() {
            while !part.done && buf.len() < CHUNK {
                if count >= max {
                    break 'parts;
                }
                let frame = match part.reader.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        if !follow {
                            part.done = true;
                        }
                        break;
                    }
                    Err(e) => {
                        failure = Some(e.to_string());
                        break 'parts;
                    }
                };
                progressed = true;
                for rec in frame.records() {
                    if part.end.is_some_and(|e| rec.offset >= e) {
                        part.done = true;
                        break;
                    }
                    if count >= max {
                        break;
                    }
                    envelope::write(&mut buf, &topic_json, part.p, &rec);
                    buf.push(b'\n');
                    count += 1;
                    records += 1;
                }
            }
        }
        if !buf.is_empty() {
            h.counters.records_out.fetch_add(records, Relaxed);
            h.counters.bytes_out.fetch_add(buf.len() as u64, Relaxed);
            if tx.send(Bytes::from(buf)).await.is_err() {
                return;
            }
        }
        if let Some(m) = failure {
            let mut line = Vec::new();
            line.extend_from_slice(b"{\"error\":");
            write_str(&mut line, &m);
            line.extend_from_slice(b"}\n");
            let _ = tx.send(Bytes::from(line)).await;
            return;
        }
        // A follower with no partitions (more members than partitions) waits for a rebalance.
        let all_done = if parts.is_empty() {
            !follow
        } else {
            parts.iter().all(|p| p.done)
        };
        if count >= max || all_done {
            let _ = tx.send(end("{\"end\":\"done\"}")).await;
            return;
        }
        if progressed {
            continue;
        }
        let rebalance = async {
            match changed.as_mut() {
                Some(c) => {
                    let _ = c.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = appended.changed() => {}
            _ = shutdown.changed() => {
                let _ = tx.send(end("{\"end\":\"shutdown\"}")).await;
                return;
            }
            _ = rebalance => {
                let g = changed.as_ref().map_or(generation, |c| *c.borrow());
                let _ = tx.send(end(&format!("{{\"end\":\"rebalance\",\"generation\":{g}}}"))).await;
                return;
            }
            _ = tx.closed() => return,
            _ = tokio::time::sleep(FOLLOW_TICK) => {}
        }
    }
}

fn topics(state: &State) -> Response<Body> {
    let names = match state.log.list_topics() {
        Ok(n) => n,
        Err(e) => return error_of(&e),
    };
    let mut out = Vec::new();
    for t in names {
        if let Ok(c) = state.log.topic_config(&t) {
            out.push(json!({"topic": t, "partitions": c.partitions}));
        }
    }
    answer(StatusCode::OK, json!(out))
}

fn topic_info(state: &State, topic: &str) -> Response<Body> {
    if let Err(e) = names::validate("topic", topic) {
        return error_of(&e);
    }
    let c = match state.log.topic_config(topic) {
        Ok(c) => c,
        Err(e) => return error_of(&e),
    };
    let mut parts = Vec::new();
    for p in 0..c.partitions {
        // Compaction leaves gaps between offsets: count what is there. That reads a
        // compacted partition whole, so off the async workers; damage makes it null.
        let r = tokio::task::block_in_place(|| {
            state.log.partition_dir(topic, p).and_then(|d| {
                let mut r = PartitionReader::open(&d)?;
                let range = (r.earliest(), r.end_offset()?);
                let n = crate::log::compact::records_held(&d, &c, &mut r, range).ok();
                Ok((range, n))
            })
        });
        match r {
            Ok(((e, l), n)) => {
                parts.push(json!({"partition": p, "earliest": e, "latest": l, "records": n}))
            }
            Err(e) => return error_of(&e),
        }
    }
    answer(
        StatusCode::OK,
        json!({"topic": topic, "partitions": c.partitions, "segment_bytes": c.segment_bytes,
               "segment_ms": c.segment_ms, "retention_bytes": c.retention_bytes,
               "retention_ms": c.retention_ms, "partition_info": parts}),
    )
}

/// (group, topic, partition, committed, latest) for every committed offset on disk.
fn lag_rows(state: &State) -> Vec<(String, String, u32, u64, u64)> {
    let groups = Groups::new(&state.log);
    let topics = state
        .topics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = Vec::new();
    for g in groups.list().unwrap_or_default() {
        for (t, parts) in groups.load(&g).unwrap_or_default() {
            let Some(h) = topics.get(&t) else { continue };
            for (p, c) in parts {
                if let Some(e) = h.ends.get(p as usize) {
                    out.push((g.clone(), t.clone(), p, c, e.load(Relaxed)));
                }
            }
        }
    }
    out
}

fn metrics(state: &State) -> Response<Body> {
    let lag: Vec<(String, String, u32, u64)> = tokio::task::block_in_place(|| lag_rows(state))
        .into_iter()
        .map(|(g, t, p, c, l)| (g, t, p, l.saturating_sub(c)))
        .collect();
    full(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        state.metrics.render(&lag),
    )
}

fn groups_list(state: &State) -> Response<Body> {
    let mut names: Vec<String> = Groups::new(&state.log).list().unwrap_or_default();
    names.extend(state.groups.lock().keys().cloned());
    names.sort();
    names.dedup();
    answer(StatusCode::OK, json!(names))
}

fn group_info(state: &State, group: &str) -> Response<Body> {
    if let Err(e) = names::validate("group", group) {
        return error_of(&e);
    }
    let mut members = Vec::new();
    let (mut topic, mut generation) = (None, 0);
    if let Some(g) = state.groups.lock().get(group) {
        topic = Some(g.topic.clone());
        generation = g.generation;
        for (id, m) in &g.members {
            members.push(json!({
                "member": id, "client": m.client,
                "partitions": g.assignment.get(id).cloned().unwrap_or_default(),
                "last_heartbeat_ms_ago": m.last_seen.elapsed().as_millis() as u64,
                "session_timeout_ms": m.session.as_millis() as u64,
            }));
        }
    }
    let rows: Vec<serde_json::Value> = tokio::task::block_in_place(|| lag_rows(state))
        .into_iter()
        .filter(|r| r.0 == group)
        .map(|(_, t, p, c, l)| json!({"topic": t, "partition": p, "committed": c, "latest": l, "lag": l.saturating_sub(c)}))
        .collect();
    if members.is_empty()
        && rows.is_empty()
        && !Groups::new(&state.log).exists(group).unwrap_or(false)
    {
        return error(StatusCode::NOT_FOUND, format!("no group {group:?}"));
    }
    answer(
        StatusCode::OK,
        json!({"group": group, "topic": topic, "generation": generation, "members": members, "offsets": rows}),
    )
}

#[derive(serde::Deserialize, Default)]
struct Commit {
    #[serde(default)]
    offsets: BTreeMap<u32, u64>,
}

async fn group_op(
    state: &Arc<State>,
    group: &str,
    op: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if let Err(e) = names::validate("group", group) {
        return error_of(&e);
    }
    let q = query(&req);
    let Some(member) = q.get("member").cloned() else {
        return error(StatusCode::BAD_REQUEST, "member=ID is required");
    };
    if names::validate("member", &member).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "member: use 1 to 249 characters of [A-Za-z0-9._-]",
        );
    }
    let client = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if op == "join" {
        let Some(topic) = q.get("topic").cloned() else {
            return error(StatusCode::BAD_REQUEST, "topic=NAME is required to join");
        };
        let session = match q.get("session_timeout").map(|s| time::parse_duration_ms(s)) {
            None => Duration::from_secs(10),
            Some(Ok(ms)) if ms > 0 => Duration::from_millis(ms as u64),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "session_timeout: expected a duration such as 10s",
                )
            }
        };
        let h = match topic_handle(state, &topic, None).await {
            Ok(h) => h,
            Err(r) => return r,
        };
        return match state
            .groups
            .join(group, &topic, h.partitions, &member, session, &client)
        {
            Ok(v) => answer(StatusCode::OK, json!(v)),
            Err(JoinError::OtherTopic(t)) => error(
                StatusCode::CONFLICT,
                format!("group {group:?} is reading topic {t:?}; one topic per group while it has members"),
            ),
        };
    }
    let body = match read_body(state, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let commit: Commit = if body.iter().all(u8::is_ascii_whitespace) {
        Commit::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let (st, g, m, leave) = (
        state.clone(),
        group.to_string(),
        member.clone(),
        op == "leave",
    );
    let r = tokio::task::spawn_blocking(move || commit_owned(&st, &g, &m, &commit.offsets, leave))
        .await;
    match r {
        Ok(Ok(Some(v))) => answer(StatusCode::OK, v),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("{member} is not a member of group {group:?} (session expired?): join again"),
        ),
        Ok(Err(e)) => error_of(&e),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "commit failed"),
    }
}

/// Commits the offsets the member owns (under the coordinator's lock, so ownership cannot
/// change in between), then refreshes or ends its membership.
fn commit_owned(
    state: &State,
    group: &str,
    member: &str,
    offsets: &BTreeMap<u32, u64>,
    leave: bool,
) -> crate::Result<Option<serde_json::Value>> {
    let mut gs = state.groups.lock();
    let Some(g) = gs.get_mut(group) else {
        return Ok(None);
    };
    if !g.members.contains_key(member) {
        return Ok(None);
    }
    let mut accepted = BTreeMap::new();
    let mut refused = Vec::new();
    for (p, o) in offsets {
        if g.owns(member, *p) {
            accepted.insert(*p, *o);
        } else {
            refused.push(*p);
        }
    }
    if !accepted.is_empty() {
        Groups::new(&state.log).commit(group, &g.topic, &accepted)?;
    }
    drop(gs);
    let view = if leave {
        state.groups.leave(group, member);
        None
    } else {
        state.groups.heartbeat(group, member)
    };
    Ok(Some(
        json!({"committed": accepted, "refused": refused, "view": view}),
    ))
}

fn group_stream(
    state: &Arc<State>,
    group: &str,
    q: &HashMap<String, String>,
    guard: InFlight,
    peer: SocketAddr,
) -> Response<Body> {
    if let Err(e) = names::validate("group", group) {
        return error_of(&e);
    }
    let Some(member) = q.get("member") else {
        return error(StatusCode::BAD_REQUEST, "member=ID is required");
    };
    let Some(view) = state.groups.heartbeat(group, member) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{member} is not a member of group {group:?}: join first"),
        );
    };
    let (topic, changed) = {
        let gs = state.groups.lock();
        match gs.get(group) {
            Some(g) => (g.topic.clone(), g.changed.subscribe()),
            None => return error(StatusCode::NOT_FOUND, format!("no group {group:?}")),
        }
    };
    if *changed.borrow() != view.generation {
        return error(StatusCode::CONFLICT, "the group rebalanced: join again");
    }
    let h = match topic_now(state, &topic) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let (from, _) = match positions(q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let follow = flag(q, "follow");
    let max = match number::<u64>(q, "max") {
        Ok(m) => m.unwrap_or(u64::MAX),
        Err(r) => return r,
    };
    let slot = match follow_slot(state, peer, follow) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let committed = match Groups::new(&state.log).load(group) {
        Ok(mut o) => o.remove(&topic).unwrap_or_default(),
        Err(e) => return error_of(&e),
    };
    let sparts = match tokio::task::block_in_place(|| {
        open_parts(state, &topic, &view.partitions, &from, None, &committed)
    }) {
        Ok(p) => p,
        Err(e) => return error_of(&e),
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(pump(
        state.clone(),
        h,
        sparts,
        max,
        follow,
        tx,
        Some((changed, view.generation)),
    ));
    stream_response(rx, guard, slot, Some(view.generation))
}
