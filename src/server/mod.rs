//! `logd serve`: the log as an HTTP/1.1 service (hyper on a two-thread tokio runtime).
//!
//! What lives where: `http` routes requests and renders answers; `topic` is one writer
//! thread per topic doing group commits; `journal` makes retried producer batches
//! idempotent; `coordinator` shares partitions among the members of consumer groups;
//! `metrics` counts for `/metrics`; `owner` marks the directory as served; `client` is the
//! blocking side the tools use with `--server`.
//!
//! This module owns the listener and the connections, and the limits enforced per
//! connection: how many connections, how long a request head may take (a client sending one
//! byte per second gets a 408 and is closed), and how long a connection may sit idle. The
//! activity of each connection is seen through a thin wrapper around its socket.

pub mod client;
pub mod coordinator;
mod http;
pub mod journal;
pub mod metrics;
pub mod owner;
pub mod topic;

use crate::error::{setup, usage, Error, Result};
use crate::log::{FsyncMode, Log};
use coordinator::Coordinator;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use metrics::Metrics;
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use topic::TopicHandle;

/// How long shutdown waits for in-flight requests before closing what is left.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body: usize,
    pub max_record: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub follows_per_client: usize,
}

pub struct Options {
    pub log: PathBuf,
    pub listen: String,
    pub fsync: FsyncMode,
    pub token: Option<String>,
    pub insecure: bool,
    pub limits: Limits,
    pub quiet: bool,
}

pub struct State {
    pub log: Log,
    pub fsync: FsyncMode,
    pub token: Option<String>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub topics: Mutex<HashMap<String, Arc<TopicHandle>>>,
    pub groups: Coordinator,
    pub shutdown: watch::Receiver<bool>,
    /// Open follow streams per client address.
    pub follows: Mutex<HashMap<IpAddr, usize>>,
    pub quiet: bool,
}

impl State {
    fn note(&self, m: &str) {
        if !self.quiet {
            eprintln!("logd serve: {m}");
        }
    }

    /// The served topic `name`, starting its writer on first use. `create`: the partition
    /// count to create it with when it does not exist (None: it must exist).
    pub fn topic(&self, name: &str, create: Option<u32>) -> Result<Arc<TopicHandle>> {
        crate::log::names::validate("topic", name)?;
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = topics.get(name) {
            return Ok(h.clone());
        }
        if *self.shutdown.borrow() {
            return Err(setup("the server is shutting down"));
        }
        if !self.log.topic_exists(name)? {
            match create {
                Some(n) => {
                    self.log
                        .create_topic(name, &crate::log::TopicConfig::new(n))?;
                }
                None => return Err(setup(format!("no topic {name:?}"))),
            }
        }
        let (h, notes) = TopicHandle::start(
            &self.log,
            name,
            self.fsync,
            self.metrics.clone(),
            self.quiet,
        )?;
        for n in notes {
            self.note(&n);
        }
        topics.insert(name.to_string(), h.clone());
        Ok(h)
    }
}

/// Milliseconds since the server started (connection activity clocks).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What the watchdog of a connection knows about it.
#[derive(Default)]
pub struct ConnState {
    last_activity: AtomicU64,
    /// When the first byte of a request head arrived (0: not reading a head).
    head_since: AtomicU64,
    pub in_flight: AtomicUsize,
}

impl ConnState {
    /// A request head was read completely: the handler runs from now on.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.head_since.store(0, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

/// Held while a request is handled (and while its streamed body is being sent).
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_activity.store(now_ms(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The socket, noting every byte moved.
struct Tracked {
    inner: TcpStream,
    st: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = now_ms();
            self.st.last_activity.store(now, Relaxed);
            if self.st.in_flight.load(Relaxed) == 0 {
                let _ = self
                    .st
                    .head_since
                    .compare_exchange(0, now, Relaxed, Relaxed);
            }
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.st.last_activity.store(now_ms(), Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves `--listen` and applies the rule: a non-loopback address needs a token (or an
/// explicit `--insecure`).
fn listen_addr(o: &Options) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let addr = o
        .listen
        .to_socket_addrs()
        .map_err(|e| usage(format!("--listen {}: {e}", o.listen)))?
        .next()
        .ok_or_else(|| usage(format!("--listen {}: no address", o.listen)))?;
    if !addr.ip().is_loopback() && o.token.is_none() && !o.insecure {
        return Err(usage(format!(
            "--listen {addr} is not a loopback address: give --token-file (or --insecure to serve without authentication)"
        )));
    }
    Ok(addr)
}

/// Lets the server hold as many sockets as the hard limit allows.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

pub fn serve(o: Options) -> Result<()> {
    let addr = listen_addr(&o)?;
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the runtime", e))?;
    rt.block_on(run(o, addr))
}

async fn run(o: Options, addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| setup(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listening address", e))?;
    let url = format!("http://{local}");
    let log = Log::new(o.log.clone());
    let owner = owner::claim(log.root(), &url)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(State {
        log: log.clone(),
        fsync: o.fsync,
        token: o.token.clone(),
        limits: o.limits.clone(),
        metrics: Arc::new(Metrics::default()),
        topics: Mutex::new(HashMap::new()),
        groups: Coordinator::default(),
        shutdown: stop_rx,
        follows: Mutex::new(HashMap::new()),
        quiet: o.quiet,
    });
    // Every existing topic is recovered and held now: what was acknowledged before a crash
    // is served from the first request on.
    for t in log.list_topics()? {
        state.topic(&t, None)?;
    }
    // The URL on stdout (one line, flushed) lets scripts start the server on port 0.
    let mut so = std::io::stdout();
    let _ = writeln!(so, "{url}");
    let _ = so.flush();
    state.note(&format!(
        "serving {} at {url} (fsync {:?})",
        log.root().display(),
        o.fsync
    ));
    let sweeper = tokio::spawn(sweep_groups(state.clone()));
    let compactor = Compactor::start(state.clone())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::io("installing the SIGINT handler", e))?;
    let open = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(tokio::sync::Notify::new());
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            acc = listener.accept() => {
                let (stream, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little rather than spin.
                        state.note(&format!("accept: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let m = &state.metrics;
                if m.connections.load(Relaxed) as usize >= state.limits.max_connections {
                    m.connections_refused.fetch_add(1, Relaxed);
                    tokio::spawn(refuse(stream, state.limits.header_timeout));
                    continue;
                }
                m.connections.fetch_add(1, Relaxed);
                m.connections_total.fetch_add(1, Relaxed);
                open.fetch_add(1, Relaxed);
                let (st, open, drained) = (state.clone(), open.clone(), drained.clone());
                tokio::spawn(async move {
                    connection(st.clone(), stream, peer).await;
                    st.metrics.connections.fetch_sub(1, Relaxed);
                    if open.fetch_sub(1, Relaxed) == 1 {
                        drained.notify_waiters();
                    }
                });
            }
        }
    }
    state.note("stopping: no new connections; finishing requests in flight");
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + DRAIN + Duration::from_secs(1);
    while open.load(Relaxed) > 0 {
        let wait = drained.notified();
        if open.load(Relaxed) == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            state.note(&format!(
                "{} connections still open after the drain time; closing them",
                open.load(Relaxed)
            ));
            break;
        }
    }
    sweeper.abort();
    // A compaction under way stops before its swap (or finishes a swap it began).
    tokio::task::spawn_blocking(move || compactor.stop())
        .await
        .map_err(|e| setup(format!("stopping the compactor: {e}")))?;
    let handles: Vec<Arc<TopicHandle>> = {
        let t = state.topics.lock().unwrap_or_else(|e| e.into_inner());
        t.values().cloned().collect()
    };
    // Writers finish their queue, sync, write checkpoints and release their locks.
    tokio::task::spawn_blocking(move || {
        for h in handles {
            h.stop();
        }
    })
    .await
    .map_err(|e| setup(format!("stopping writers: {e}")))?;
    drop(owner);
    state.note("stopped");
    Ok(())
}

/// The background compaction of served `compact` topics: one thread that looks at every
/// partition every few seconds and compacts those whose dirty share reached the topic's
/// ratio. It needs no writer lock (see `log::compact`), so the topic writers append on
/// while it works; their retention skips a round when it meets a compaction.
struct Compactor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Compactor {
    fn start(state: Arc<State>) -> Result<Compactor> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || compact_loop(&state, &flag))
            .map_err(|e| Error::io("starting the compactor", e))?;
        Ok(Compactor { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Relaxed);
        let _ = self.thread.join();
    }
}

fn compact_loop(state: &State, stop: &std::sync::atomic::AtomicBool) {
    use crate::log::compact::{self, Compaction, Options};
    // A failing partition (damage waiting for `logd repair`) is reported once per message.
    let mut reported: HashMap<PathBuf, String> = HashMap::new();
    loop {
        let deadline = Instant::now() + compact::INTERVAL;
        while Instant::now() < deadline {
            if stop.load(Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let names: Vec<String> = {
            let t = state.topics.lock().unwrap_or_else(|e| e.into_inner());
            t.keys().cloned().collect()
        };
        for name in names {
            let Ok(cfg) = state.log.topic_config(&name) else {
                continue;
            };
            if !cfg.compacts() {
                continue;
            }
            for p in 0..cfg.partitions {
                if stop.load(Relaxed) {
                    return;
                }
                let Ok(dir) = state.log.partition_dir(&name, p) else {
                    continue;
                };
                let o = Options {
                    force: false,
                    now_ms: crate::record::time::now_ms(),
                    map_bytes: compact::DEFAULT_MAP_BYTES,
                    cancel: Some(stop),
                };
                match compact::partition(&dir, &cfg, &o) {
                    Ok(Compaction::Done(out)) => {
                        reported.remove(&dir);
                        state.metrics.compactions.fetch_add(1, Relaxed);
                        state
                            .metrics
                            .compacted_bytes
                            .fetch_add(out.bytes_before.saturating_sub(out.bytes_after), Relaxed);
                        state.note(&format!("{name}/{p}: {}", out.describe()));
                    }
                    Ok(Compaction::Skipped(_)) => {}
                    Err(e) => {
                        let m = e.to_string();
                        if reported.get(&dir) != Some(&m) {
                            state.note(&format!("{name}/{p}: compaction failed: {m}"));
                            reported.insert(dir, m);
                        }
                    }
                }
            }
        }
    }
}

/// Answers one request on a connection over the limit with 503, then closes it.
async fn refuse(stream: TcpStream, head_timeout: Duration) {
    let svc = hyper::service::service_fn(|_req| async {
        Ok::<_, std::convert::Infallible>(http::too_many_connections())
    });
    let conn = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(head_timeout, conn).await;
}

async fn connection(state: Arc<State>, stream: TcpStream, peer: SocketAddr) {
    let cs = Arc::new(ConnState::default());
    cs.last_activity.store(now_ms(), Relaxed);
    // A second handle on the socket, to answer 408 when hyper is still waiting for a head.
    let mut raw = stream.as_fd().try_clone_to_owned().ok();
    let io = TokioIo::new(Tracked {
        inner: stream,
        st: cs.clone(),
    });
    let (st, cs2) = (state.clone(), cs.clone());
    let svc = hyper::service::service_fn(move |req| {
        let (st, cs) = (st.clone(), cs2.clone());
        async move { Ok::<_, std::convert::Infallible>(http::handle(st, cs, peer, req).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(64 << 10)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut shutdown = state.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let limits = &state.limits;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
                return;
            }
            _ = tick.tick() => {
                if cs.in_flight.load(Relaxed) > 0 {
                    continue;
                }
                let now = now_ms();
                let head = cs.head_since.load(Relaxed);
                if head > 0 && now - head > limits.header_timeout.as_millis() as u64 {
                    if let Some(fd) = raw.take() {
                        // Nothing else writes to the socket while a head is awaited.
                        let _ = std::fs::File::from(fd).write_all(http::HEADER_TIMEOUT_RESPONSE);
                    }
                    state.metrics.observe(7, 408, Duration::from_millis(now - head));
                    return;
                }
                let idle = now - cs.last_activity.load(Relaxed);
                if head == 0 && idle > limits.idle_timeout.as_millis() as u64 {
                    return;
                }
            }
        }
    }
}

/// Drops group members whose session expired.
async fn sweep_groups(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for (g, m) in state.groups.expire(Instant::now()) {
            state.note(&format!(
                "group {g}: member {m} missed its session timeout; rebalanced"
            ));
        }
    }
}
