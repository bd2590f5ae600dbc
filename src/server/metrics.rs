//! The server's counters and histograms, rendered in the Prometheus text format for
//! `GET /metrics`. Counters are atomics so the hot paths never take a lock; the per-topic
//! map is locked only when a topic is first seen and at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Request latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The routes latencies are kept for (a fixed set, so label cardinality stays bounded).
pub const ROUTES: [&str; 8] = [
    "produce", "consume", "topics", "groups", "health", "metrics", "other", "rejected",
];

#[derive(Default)]
pub struct TopicCounters {
    pub records_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    topics: Mutex<BTreeMap<String, Arc<TopicCounters>>>,
    latency: [Histogram; ROUTES.len()],
    /// Requests by route and status class (1xx..5xx).
    status: [[AtomicU64; 5]; ROUTES.len()],
    pub fsyncs: AtomicU64,
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub follow_streams: AtomicU64,
    pub duplicates: AtomicU64,
    pub compactions: AtomicU64,
    /// Bytes of sealed segments that compaction rewrote away.
    pub compacted_bytes: AtomicU64,
}

impl Metrics {
    pub fn topic(&self, name: &str) -> Arc<TopicCounters> {
        // A poisoned lock only means another thread panicked mid-insert; the map is intact.
        let mut m = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    pub fn observe(&self, route: usize, status: u16, took: Duration) {
        let h = &self.latency[route];
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.buckets[i].fetch_add(1, Relaxed);
            }
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.status[route][class].fetch_add(1, Relaxed);
    }

    /// The text exposition; `lag` rows are (group, topic, partition, lag).
    pub fn render(&self, lag: &[(String, String, u32, u64)]) -> String {
        let mut o = String::with_capacity(4096);
        let topics: Vec<(String, Arc<TopicCounters>)> = {
            let m = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        type Get = fn(&TopicCounters) -> &AtomicU64;
        let per_topic: [(&str, &str, Get); 4] = [
            ("kappa_records_in_total", "Records appended", |t| {
                &t.records_in
            }),
            ("kappa_bytes_in_total", "Value bytes appended", |t| {
                &t.bytes_in
            }),
            (
                "kappa_records_out_total",
                "Records served to consumers",
                |t| &t.records_out,
            ),
            (
                "kappa_bytes_out_total",
                "Envelope bytes served to consumers",
                |t| &t.bytes_out,
            ),
        ];
        for (name, help, get) in per_topic {
            let _ = writeln!(o, "# HELP {name} {help}.\n# TYPE {name} counter");
            for (t, c) in &topics {
                let _ = writeln!(o, "{name}{{topic=\"{t}\"}} {}", get(c).load(Relaxed));
            }
        }
        let name = "kappa_request_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Request latency, from the request line to the response head.\n# TYPE {name} histogram"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            let h = &self.latency[r];
            let count = h.count.load(Relaxed);
            if count == 0 {
                continue;
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                let v = h.buckets[i].load(Relaxed);
                let _ = writeln!(o, "{name}_bucket{{route=\"{route}\",le=\"{b}\"}} {v}");
            }
            let _ = writeln!(o, "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}");
            let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "{name}_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(o, "{name}_count{{route=\"{route}\"}} {count}");
        }
        let name = "kappa_requests_total";
        let _ = writeln!(
            o,
            "# HELP {name} Requests by route and status class.\n# TYPE {name} counter"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for c in 0..5 {
                let v = self.status[r][c].load(Relaxed);
                if v > 0 {
                    let _ = writeln!(o, "{name}{{route=\"{route}\",status=\"{}xx\"}} {v}", c + 1);
                }
            }
        }
        let scalars: [(&str, &str, &str, &AtomicU64); 8] = [
            (
                "kappa_fsyncs_total",
                "counter",
                "fdatasync calls on segments and journals",
                &self.fsyncs,
            ),
            (
                "kappa_connections",
                "gauge",
                "Open client connections",
                &self.connections,
            ),
            (
                "kappa_connections_total",
                "counter",
                "Client connections accepted",
                &self.connections_total,
            ),
            (
                "kappa_connections_refused_total",
                "counter",
                "Connections refused over --max-connections",
                &self.connections_refused,
            ),
            (
                "kappa_follow_streams",
                "gauge",
                "Open follow streams",
                &self.follow_streams,
            ),
            (
                "kappa_duplicate_batches_total",
                "counter",
                "Retried producer batches answered without appending again",
                &self.duplicates,
            ),
            (
                "kappa_compactions_total",
                "counter",
                "Partition compactions of compact topics done in the background",
                &self.compactions,
            ),
            (
                "kappa_compacted_bytes_total",
                "counter",
                "Bytes of sealed segments removed by compaction",
                &self.compacted_bytes,
            ),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(
                o,
                "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        let name = "kappa_group_lag";
        let _ = writeln!(
            o,
            "# HELP {name} Records between a group's committed offset and the log end.\n# TYPE {name} gauge"
        );
        for (g, t, p, l) in lag {
            let _ = writeln!(
                o,
                "{name}{{group=\"{g}\",topic=\"{t}\",partition=\"{p}\"}} {l}"
            );
        }
        o
    }
}
