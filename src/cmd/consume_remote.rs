//! `consume --server URL`: the same records and output as a local consume, read from
//! `logd serve`.
//!
//! The server sends envelopes; they are written as they came (the default output) or
//! rendered like local records (--value, --csv, --format). A stream that ends early (the
//! server restarting, a cut connection) is resumed at the next offset of every partition
//! (its start position when nothing came from it), so nothing is repeated or skipped across
//! reconnections.
//!
//! With --group, this process is a member of the group on the server: it reads only the
//! partitions assigned to it, heartbeats from a second thread (committing what reached
//! stdout), and on a rebalance commits, re-joins and reads its new partitions from the
//! group's offsets. It leaves the group (with a last commit) at exit.

use super::*;
use crate::server::client::{self, Client, Failure, Line, Stream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub(super) fn run(a: Args) -> Result<()> {
    crate::log::names::validate("topic", &a.topic)?;
    if let Some(g) = &a.group {
        crate::log::names::validate("group", g)?;
    }
    let mut c = Client::new(&a.server)?;
    c.retry_for = Duration::from_millis(
        time::parse_duration_ms(&a.server.server_retry)
            .map_err(|e| usage(format!("--server-retry: {e}")))?
            .max(0) as u64,
    );
    // Checked here for the same messages as a local consume.
    if let Some(f) = &a.from {
        parse_start(f)?;
    }
    if let Some(t) = &a.to {
        if matches!(parse_start(t)?, Start::Earliest | Start::Last(_)) {
            return Err(usage("--to takes latest, OFFSET or @TIME"));
        }
    }
    let mut kind = out_kind(&a)?;
    signals::install_stop_handler();
    let mut out = Output::stdout();
    let pb = progress::records_spinner(a.progress.wanted(), "consume");
    let mut r = Reader {
        a: &a,
        kind: &mut kind,
        prefix: format!("{{\"topic\":\"{}\",\"partition\":", a.topic).into_bytes(),
        next: BTreeMap::new(),
        count: 0,
        max: a.max.unwrap_or(u64::MAX),
        pb: &pb,
    };
    let res = match &a.group {
        None => r.plain(&c, &mut out),
        Some(g) => r.group(&c, g, &mut out),
    };
    pb.finish_and_clear();
    match res {
        Err(Error::BrokenPipe) => Ok(()),
        other => other,
    }
}

/// How a stream ended.
enum End {
    /// Everything asked for was read (or --max, or a stop signal).
    Finished,
    /// Reconnect (and, in a group, re-join) and go on.
    Again,
}

struct Reader<'x> {
    a: &'x Args,
    kind: &'x mut Out,
    /// `{"topic":"T","partition":` as the server writes it (topic names need no escaping).
    prefix: Vec<u8>,
    /// Next offset per partition seen: where a resumed stream starts.
    next: BTreeMap<u32, u64>,
    count: u64,
    max: u64,
    pb: &'x indicatif::ProgressBar,
}

impl Reader<'_> {
    /// Reads one stream to its end; `flushed` is called with the positions that reached
    /// stdout each time stdout is flushed.
    fn drain(
        &mut self,
        mut s: Stream,
        out: &mut Output,
        flushed: &mut dyn FnMut(&BTreeMap<u32, u64>),
    ) -> Result<End> {
        let mut line = Vec::with_capacity(4096);
        loop {
            if self.count >= self.max || signals::stop_requested() {
                out.flush()?;
                flushed(&self.next);
                return Ok(End::Finished);
            }
            if !s.has_buffered() {
                // Caught up with the server: what we hold goes out now.
                out.flush()?;
                flushed(&self.next);
            }
            match s.next(&mut line) {
                Line::Record(l) => {
                    let Some((p, o, _)) = client::head(l, &self.prefix) else {
                        return Err(Error::Data(format!(
                            "unexpected record line from the server: {}",
                            String::from_utf8_lossy(&l[..l.len().min(200)])
                        )));
                    };
                    self.render(out, l, p, o)?;
                    self.next.insert(p, o + 1);
                    self.count += 1;
                    if self.count % 65536 == 0 {
                        self.pb.set_position(self.count);
                    }
                    if out.record_done()? {
                        flushed(&self.next);
                    }
                }
                Line::Start(starts) => {
                    // A partition that sends nothing before a reconnection resumes here,
                    // not at --from again.
                    for (p, o) in starts {
                        self.next.entry(p).or_insert(o);
                    }
                }
                Line::Done => {
                    out.flush()?;
                    flushed(&self.next);
                    return Ok(End::Finished);
                }
                Line::Error(m) => {
                    out.flush()?;
                    flushed(&self.next);
                    return Err(Error::Data(format!("server: {m}")));
                }
                Line::Ended(_) => {
                    out.flush()?;
                    flushed(&self.next);
                    return Ok(if signals::stop_requested() {
                        End::Finished
                    } else {
                        End::Again
                    });
                }
            }
        }
    }

    fn render(&mut self, out: &mut Output, line: &[u8], p: u32, o: u64) -> Result<()> {
        if let Out::Envelope(_) = self.kind {
            out.buf.extend_from_slice(line);
            out.buf.push(b'\n');
            return Ok(());
        }
        let e = envelope::parse(line)
            .map_err(|m| Error::Data(format!("bad envelope from the server: {m}")))?;
        let ts = e.ts.and_then(|t| t.parse().ok()).unwrap_or(0);
        let rec = Record::from_parts(
            o,
            ts,
            e.key.as_deref(),
            &e.value,
            e.value_is_json,
            &e.headers,
            e.header_count,
        );
        render(self.kind, out, &self.a.topic, p, &rec)
    }

    fn query(&self, extra: &[(&str, String)]) -> String {
        let a = self.a;
        let mut q: Vec<(&str, String)> = extra.to_vec();
        if let Some(f) = &a.from {
            q.push(("from", f.clone()));
        }
        if a.follow {
            q.push(("follow", "true".into()));
        }
        if !self.next.is_empty() {
            let o: Vec<String> = self.next.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            q.push(("offsets", o.join(",")));
        }
        client::query(&q)
    }

    fn plain(&mut self, c: &Client, out: &mut Output) -> Result<()> {
        loop {
            let mut extra = Vec::new();
            if let Some(t) = &self.a.to {
                extra.push(("to", t.clone()));
            }
            if let Some(p) = self.a.partition {
                extra.push(("partition", p.to_string()));
            }
            if self.max != u64::MAX {
                extra.push(("max", (self.max - self.count).to_string()));
            }
            let path = format!("/topics/{}/records{}", self.a.topic, self.query(&extra));
            let s = c.retrying("reading records", || c.stream(&path))?;
            if let End::Finished = self.drain(s, out, &mut |_| {})? {
                return Ok(());
            }
        }
    }

    fn group(&mut self, c: &Client, group: &str, out: &mut Output) -> Result<()> {
        let a = self.a;
        let session = time::parse_duration_ms(&a.session_timeout)
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                usage(format!(
                    "--session-timeout {:?}: expected a duration",
                    a.session_timeout
                ))
            })?;
        let member = client::member_id("consume");
        let commit = !a.no_commit;
        let join_path = format!(
            "/groups/{group}/join{}",
            client::query(&[
                ("topic", a.topic.clone()),
                ("member", member.clone()),
                ("session_timeout", format!("{session}ms")),
            ])
        );
        let hb_path = format!("/groups/{group}/heartbeat?member={}", client::enc(&member));
        let shared: Arc<Mutex<BTreeMap<u32, u64>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let body_of = |m: &BTreeMap<u32, u64>| {
            if commit {
                serde_json::json!({ "offsets": m }).to_string()
            } else {
                "{}".to_string()
            }
        };
        // A missed heartbeat costs at most a rebalance; commits are also sent at each
        // rebalance and at exit.
        let beat = Duration::from_millis((session as u64 / 3).clamp(50, 1000));
        let result = std::thread::scope(|scope| {
            let (shared2, done2) = (shared.clone(), done.clone());
            let hb_path2 = hb_path.clone();
            scope.spawn(move || {
                while !done2.load(Ordering::Relaxed) {
                    std::thread::sleep(beat);
                    let body = body_of(&shared2.lock().unwrap_or_else(|e| e.into_inner()));
                    let _ = c.post(&hb_path2, &[], body.as_bytes());
                }
            });
            let r = (|| -> Result<()> {
                loop {
                    let view = c.retrying("joining the group", || c.post(&join_path, &[], b""))?;
                    // Offsets of partitions no longer ours are the new owner's business.
                    let mine: Vec<u64> = view["partitions"]
                        .as_array()
                        .map(|v| v.iter().filter_map(|p| p.as_u64()).collect())
                        .unwrap_or_default();
                    self.next.retain(|p, _| mine.contains(&(*p as u64)));
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|p, _| mine.contains(&(*p as u64)));
                    let mut extra = vec![("member", member.clone())];
                    if self.max != u64::MAX {
                        extra.push(("max", (self.max - self.count).to_string()));
                    }
                    // The group's committed offsets decide where each partition starts.
                    let saved = std::mem::take(&mut self.next);
                    let path = format!("/groups/{group}/records{}", self.query(&extra));
                    self.next = saved;
                    let s = match c.stream(&path) {
                        Ok(s) => s,
                        // Rebalanced or dropped between join and open: join again.
                        Err(Failure::Status(404 | 409, _)) => continue,
                        Err(Failure::Status(st, m)) => {
                            return Err(client::status_error("reading records", st, &m))
                        }
                        Err(Failure::Unreachable(_)) => {
                            c.retrying("reaching the server", || c.get_json("/healthz"))?;
                            continue;
                        }
                    };
                    let end = self.drain(s, out, &mut |m| {
                        shared
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone_from(m);
                    })?;
                    // Commit what reached stdout before anything else moves.
                    let body = body_of(&shared.lock().unwrap_or_else(|e| e.into_inner()));
                    let _ = c.post(&hb_path, &[], body.as_bytes());
                    if let End::Finished = end {
                        return Ok(());
                    }
                    self.next.clear();
                }
            })();
            done.store(true, Ordering::Relaxed);
            r
        });
        let body = body_of(&shared.lock().unwrap_or_else(|e| e.into_inner()));
        let leave = format!("/groups/{group}/leave?member={}", client::enc(&member));
        let _ = c.post(&leave, &[], body.as_bytes());
        result
    }
}
