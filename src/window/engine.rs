//! Open windows, the watermark, and when results are written.
//!
//! Groups are spread over shards by the hash of their encoded values; each shard owns its
//! groups' windows outright, so shards aggregate a batch in parallel without locks, and a
//! group's records are always added in input order whatever the number of shards.
//!
//! Determinism: every record carries the watermark as it stood when the record arrived (set
//! by `admit`, one record at a time), and lateness is judged against that, so a batch gives
//! what record-at-a-time processing would. Results closed by a batch are written sorted by
//! (window end, window start, group): the same order record-at-a-time emission gives, as the
//! watermark only rises. `--emit update` results are written in arrival order of the records
//! that changed them. So the output depends on the input only, never on batching or --jobs.

use super::agg::{Acc, Aggs};
use super::extract::{Chunk, Rec, Status};
use super::{decode, key_text, write_value, Emit, Kind};
use crate::record::json::write_str;
use crate::record::time::format_rfc3339;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::Hasher;
use std::sync::Arc;

/// Everything about the windows that is fixed for a run.
pub struct Spec {
    pub kind: Kind,
    pub max_out_of_order: i64,
    pub lateness: i64,
    pub emit: Emit,
    pub aggs: Aggs,
    pub nfields: usize,
    pub group_names: Vec<String>,
    pub with_skipped: bool,
    /// Options that must match for a --state file to be resumed.
    pub fingerprint: String,
}

struct Slot {
    acc: Acc,
    /// The last result written (`--emit update` writes only changes).
    last: Vec<u8>,
}

impl Slot {
    fn new(aggs: &Aggs) -> Slot {
        Slot {
            acc: Acc::new(aggs),
            last: Vec::new(),
        }
    }
}

struct Session {
    start: i64,
    end: i64,
    slot: Slot,
    /// `--emit update`: the window of the last result written for it.
    shown: Option<(i64, i64)>,
}

struct Group {
    key: Arc<[u8]>,
    sessions: Vec<Session>,
}

/// One `--emit update` result waiting to be written, with its sort key (k1, rank, k2): the
/// record's arrival, then its retractions before its update, then the window start. A
/// record has one group, so that order is total.
struct Item {
    k1: i64,
    /// A record's retractions (0) come before its update (1).
    rank: u8,
    k2: i64,
    line: (usize, usize),
}

#[derive(Default)]
pub struct Shard {
    /// Fixed windows by start, then group.
    fixed: BTreeMap<i64, FxHashMap<Box<[u8]>, Slot>>,
    sessions: FxHashMap<Arc<[u8]>, Group>,
    /// Session ends to look at (stale entries are skipped when popped).
    ends: BinaryHeap<Reverse<(i64, Arc<[u8]>)>>,
    pending: Pending,
    /// Records late for every window they belong to: (chunk, record).
    late: Vec<(u32, u32)>,
}

/// A closed window's state, rendered only when it is written (a million groups closing
/// at once then cost their states, not their states and their text).
struct Closed {
    end: i64,
    start: i64,
    group: Box<[u8]>,
    acc: Acc,
}

impl Closed {
    fn order(&self) -> (i64, i64, &[u8]) {
        (self.end, self.start, &self.group)
    }
}

/// Results written by a shard and not yet merged into stdout's order: `--emit update`'s as
/// text with their sort keys, `--emit final`'s as closed windows (the two never mix).
#[derive(Default)]
struct Pending {
    out: Vec<u8>,
    items: Vec<Item>,
    closed: Vec<Closed>,
}

impl Pending {
    /// A closed window's result (`--emit final`), sorted later by (end, start, group).
    fn result(&mut self, start: i64, end: i64, group: Box<[u8]>, acc: Acc) {
        self.closed.push(Closed {
            end,
            start,
            group,
            acc,
        });
    }

    /// `--emit update`: a session result that no longer stands (its session started earlier
    /// or was absorbed by another): written before the record's new result.
    fn retract(&mut self, spec: &Spec, start: i64, end: i64, key: &[u8], seq: u64) {
        let from = self.out.len();
        render_head(spec, start, end, key, &mut self.out);
        self.out.extend_from_slice(b",\"retracted\":true}}\n");
        self.items.push(Item {
            k1: seq as i64,
            rank: 0,
            k2: start,
            line: (from, self.out.len()),
        });
    }

    /// `--emit update`: the window's result when it differs from the last one written,
    /// sorted later by the record's arrival, then start.
    /// Returns whether it wrote one.
    fn update(
        &mut self,
        spec: &Spec,
        slot: &mut Slot,
        start: i64,
        end: i64,
        key: &[u8],
        seq: u64,
    ) -> bool {
        let from = self.out.len();
        render(spec, start, end, key, &mut slot.acc, &mut self.out);
        if self.out[from..] == slot.last[..] {
            self.out.truncate(from);
            return false;
        }
        slot.last.clear();
        slot.last.extend_from_slice(&self.out[from..]);
        self.items.push(Item {
            k1: seq as i64,
            rank: 1,
            k2: start,
            line: (from, self.out.len()),
        });
        true
    }

    /// Empties the buffers; ones grown large by a big close are let go, so memory follows
    /// the open windows rather than the largest close so far.
    fn clear(&mut self) {
        const KEEP: usize = 16 << 20;
        if self.out.capacity() > KEEP || self.closed.capacity() > KEEP / 64 {
            *self = Pending::default();
            return;
        }
        self.out.clear();
        self.items.clear();
        self.closed.clear();
    }
}

pub fn shard_of(hash: u64, n: usize) -> usize {
    ((hash as u128 * n as u128) >> 64) as usize
}

pub fn hash_group(key: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(key);
    h.finish()
}

impl Shard {
    fn apply(&mut self, me: usize, n: usize, chunks: &[Chunk], text: &[u8], spec: &Spec) {
        let mut scratch = Vec::new();
        for (ci, ch) in chunks.iter().enumerate() {
            for (ri, r) in ch.recs.iter().enumerate() {
                if r.status != Status::Ok || shard_of(r.hash, n) != me {
                    continue;
                }
                let cells = ch.cells_of(r, spec.nfields);
                let key = ch.key_of(r);
                let taken = match spec.kind {
                    Kind::Fixed { size, .. } => self.add_fixed(spec, size, r, key, |acc| {
                        acc.add(&spec.aggs, cells, text, (r.ts, r.seq), &mut scratch)
                    }),
                    Kind::Session { gap } => self.add_session(spec, gap, r, key, |acc| {
                        acc.add(&spec.aggs, cells, text, (r.ts, r.seq), &mut scratch)
                    }),
                };
                if !taken {
                    self.late.push((ci as u32, ri as u32));
                }
            }
        }
    }

    fn add_fixed(
        &mut self,
        spec: &Spec,
        size: i64,
        r: &Rec,
        key: &[u8],
        mut add: impl FnMut(&mut Acc),
    ) -> bool {
        let mut taken = false;
        for start in spec.kind.starts(r.ts) {
            let end = start.saturating_add(size);
            if end.saturating_add(spec.lateness) <= r.wm {
                // This window has closed, and so have all earlier ones.
                break;
            }
            taken = true;
            let map = self.fixed.entry(start).or_default();
            let slot = match map.get_mut(key) {
                Some(slot) => slot,
                None => map
                    .entry(key.into())
                    .or_insert_with(|| Slot::new(&spec.aggs)),
            };
            add(&mut slot.acc);
            if spec.emit == Emit::Update {
                self.pending.update(spec, slot, start, end, key, r.seq);
            }
        }
        taken
    }

    fn add_session(
        &mut self,
        spec: &Spec,
        gap: i64,
        r: &Rec,
        key: &[u8],
        mut add: impl FnMut(&mut Acc),
    ) -> bool {
        let open = |s: &Session| s.end.saturating_add(spec.lateness) > r.wm;
        let new_end = r.ts.saturating_add(gap);
        if !self.sessions.contains_key(key) {
            if new_end.saturating_add(spec.lateness) <= r.wm {
                return false;
            }
            let k: Arc<[u8]> = key.into();
            self.sessions.insert(
                k.clone(),
                Group {
                    key: k,
                    sessions: Vec::new(),
                },
            );
        }
        // Just made or found above.
        let Some(g) = self.sessions.get_mut(key) else {
            return false;
        };
        let update = spec.emit == Emit::Update;
        let mut hits: Vec<usize> = (0..g.sessions.len())
            .filter(|&i| {
                let s = &g.sessions[i];
                open(s) && s.start < new_end && r.ts < s.end
            })
            .collect();
        // Windows of results written for sessions this record absorbs.
        let mut shown: Vec<(i64, i64)> = Vec::new();
        let i = if hits.is_empty() {
            if new_end.saturating_add(spec.lateness) <= r.wm {
                return false;
            }
            g.sessions.push(Session {
                start: r.ts,
                end: new_end,
                slot: Slot::new(&spec.aggs),
                shown: None,
            });
            g.sessions.len() - 1
        } else {
            // The record bridges sessions: take them out (highest index first, so
            // swap_remove moves no other hit) and fold them into the earliest.
            hits.sort_unstable_by(|a, b| b.cmp(a));
            let mut taken: Vec<Session> = hits.iter().map(|&i| g.sessions.swap_remove(i)).collect();
            taken.sort_by_key(|s| (s.start, s.end));
            let mut it = taken.into_iter();
            let Some(mut first) = it.next() else {
                return false;
            };
            for l in it {
                first.start = first.start.min(l.start);
                first.end = first.end.max(l.end);
                first.slot.acc.merge(l.slot.acc);
                if let Some(w) = l.shown {
                    shown.push(w);
                }
            }
            g.sessions.push(first);
            g.sessions.len() - 1
        };
        let s = &mut g.sessions[i];
        s.start = s.start.min(r.ts);
        s.end = s.end.max(new_end);
        add(&mut s.slot.acc);
        let (start, end) = (s.start, s.end);
        self.ends.push(Reverse((end, g.key.clone())));
        if update {
            // A result keyed by its group and start no longer stands once the session
            // starts earlier or was absorbed: say so, then write the new one.
            shown.extend(s.shown);
            shown.sort_unstable();
            for &(ws, we) in shown.iter().filter(|w| w.0 != start) {
                self.pending.retract(spec, ws, we, key, r.seq);
            }
            let s = &mut g.sessions[i];
            if self
                .pending
                .update(spec, &mut s.slot, start, end, key, r.seq)
            {
                s.shown = Some((start, end));
            }
        }
        true
    }

    /// Closes the windows that the watermark `wm` has passed (plus lateness), writing their
    /// results in final mode.
    fn close(&mut self, spec: &Spec, wm: i64) {
        let fin = spec.emit == Emit::Final;
        match spec.kind {
            Kind::Fixed { size, .. } => {
                while let Some(e) = self.fixed.first_entry() {
                    let start = *e.key();
                    let end = start.saturating_add(size);
                    if end.saturating_add(spec.lateness) > wm {
                        break;
                    }
                    let map = e.remove();
                    if fin {
                        for (g, slot) in map {
                            self.pending.result(start, end, g, slot.acc);
                        }
                    }
                }
            }
            Kind::Session { .. } => {
                while let Some(Reverse((end, _))) = self.ends.peek() {
                    if end.saturating_add(spec.lateness) > wm {
                        break;
                    }
                    let Some(Reverse((_, key))) = self.ends.pop() else {
                        break;
                    };
                    let Some(g) = self.sessions.get_mut(&key) else {
                        continue;
                    };
                    let mut i = 0;
                    let mut closed = Vec::new();
                    while i < g.sessions.len() {
                        if g.sessions[i].end.saturating_add(spec.lateness) <= wm {
                            closed.push(g.sessions.swap_remove(i));
                        } else {
                            i += 1;
                        }
                    }
                    let empty = g.sessions.is_empty();
                    if fin {
                        for s in closed {
                            self.pending
                                .result(s.start, s.end, (*key).into(), s.slot.acc);
                        }
                    }
                    if empty {
                        self.sessions.remove(&key);
                    }
                }
            }
        }
    }

    fn windows(&self) -> usize {
        self.fixed.values().map(|m| m.len()).sum::<usize>()
            + self
                .sessions
                .values()
                .map(|g| g.sessions.len())
                .sum::<usize>()
    }
}

/// One result line: an envelope without provenance, ts = window end - 1 ms.
fn render(spec: &Spec, start: i64, end: i64, group: &[u8], acc: &mut Acc, out: &mut Vec<u8>) {
    render_head(spec, start, end, group, out);
    acc.write(&spec.aggs, out, spec.with_skipped);
    out.extend_from_slice(b"}}\n");
}

/// A result line up to its aggregates: ts, key, the window and the group fields.
fn render_head(spec: &Spec, start: i64, end: i64, group: &[u8], out: &mut Vec<u8>) {
    let mut ib = itoa::Buffer::new();
    out.extend_from_slice(b"{\"ts\":");
    out.extend_from_slice(ib.format(end.saturating_sub(1)).as_bytes());
    out.extend_from_slice(b",\"key\":");
    if spec.group_names.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, &key_text(group));
    }
    out.extend_from_slice(b",\"value\":{\"window_start\":");
    write_str(out, &format_rfc3339(start));
    out.extend_from_slice(b",\"window_end\":");
    write_str(out, &format_rfc3339(end));
    out.extend_from_slice(b",\"window_start_ms\":");
    out.extend_from_slice(ib.format(start).as_bytes());
    out.extend_from_slice(b",\"window_end_ms\":");
    out.extend_from_slice(ib.format(end).as_bytes());
    for (name, (t, v)) in spec.group_names.iter().zip(decode(group)) {
        out.push(b',');
        write_str(out, name);
        out.push(b':');
        write_value(out, t, v);
    }
}

/// The main thread's side: the watermark, arrival numbers, positions covered, and the shards.
pub struct Engine {
    pub spec: Spec,
    shards: Vec<Shard>,
    pub wm: i64,
    pub max_ts: i64,
    pub seq: u64,
    /// Per (topic, partition): the highest (offset, sub) taken in (for --state).
    pub positions: Vec<(String, u32, u64, u64)>,
    /// Records skipped because --state had taken them in already.
    pub already: u64,
    pub results: u64,
}

impl Engine {
    pub fn new(spec: Spec, shards: usize) -> Engine {
        Engine {
            spec,
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            wm: i64::MIN,
            max_ts: i64::MIN,
            seq: 0,
            positions: Vec::new(),
            already: 0,
            results: 0,
        }
    }

    /// Takes a good record in: its arrival number and the watermark it sees, then the
    /// watermark moves. False when --state shows it was taken in before (skip it).
    pub fn admit(&mut self, r: &mut Rec, topic: Option<&[u8]>, track: bool) -> bool {
        if let (Some(p), Some(t)) = (r.prov, topic) {
            let name: std::borrow::Cow<'_, str> = if t.contains(&b'\\') {
                serde_json::from_slice::<String>(t)
                    .unwrap_or_default()
                    .into()
            } else {
                String::from_utf8_lossy(&t[1..t.len() - 1])
            };
            let at = (p.offset, p.sub);
            match self
                .positions
                .iter_mut()
                .find(|(n, part, ..)| *part == p.partition && *n == name)
            {
                Some(pos) => {
                    if at <= (pos.2, pos.3) {
                        self.already += 1;
                        return false;
                    }
                    if track {
                        (pos.2, pos.3) = at;
                    }
                }
                None if track => self
                    .positions
                    .push((name.into_owned(), p.partition, at.0, at.1)),
                None => {}
            }
        }
        r.wm = self.wm;
        r.seq = self.seq;
        self.seq += 1;
        if r.ts > self.max_ts {
            self.max_ts = r.ts;
            self.advance(r.ts.saturating_sub(self.spec.max_out_of_order));
        }
        true
    }

    /// Raises the watermark (it never falls).
    pub fn advance(&mut self, wm: i64) {
        self.wm = self.wm.max(wm);
    }

    /// Adds the admitted records of a batch to their windows.
    pub fn aggregate(&mut self, chunks: &[Chunk], text: &[u8], pool: Option<&rayon::ThreadPool>) {
        let n = self.shards.len();
        let spec = &self.spec;
        match pool {
            Some(pool) if n > 1 => pool.install(|| {
                use rayon::prelude::*;
                self.shards
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(i, s)| s.apply(i, n, chunks, text, spec));
            }),
            _ => {
                for (i, s) in self.shards.iter_mut().enumerate() {
                    s.apply(i, n, chunks, text, spec);
                }
            }
        }
    }

    /// Records of the last batch that were late for all their windows, in input order.
    pub fn take_late(&mut self) -> Vec<(u32, u32)> {
        let mut late: Vec<(u32, u32)> = self
            .shards
            .iter_mut()
            .flat_map(|s| s.late.drain(..))
            .collect();
        late.sort_unstable();
        late
    }

    /// Closes what the watermark has passed (everything, at end of input: `i64::MAX`).
    pub fn close(&mut self, wm: i64, pool: Option<&rayon::ThreadPool>) {
        let spec = &self.spec;
        match pool {
            Some(pool) if self.shards.len() > 1 => pool.install(|| {
                use rayon::prelude::*;
                self.shards.par_iter_mut().for_each(|s| s.close(spec, wm));
            }),
            _ => {
                for s in &mut self.shards {
                    s.close(spec, wm);
                }
            }
        }
    }

    /// Hands the pending results of every shard to `emit`, one line at a time, in their one
    /// order (so a close of a million groups is written as it goes, not copied whole first).
    pub fn write_results<E>(
        &mut self,
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut all: Vec<(usize, usize)> = Vec::new();
        for (si, s) in self.shards.iter().enumerate() {
            all.extend((0..s.pending.items.len()).map(|i| (si, i)));
        }
        let shards = &self.shards;
        let item = |&(s, i): &(usize, usize)| &shards[s].pending.items[i];
        all.sort_unstable_by_key(|a| {
            let x = item(a);
            (x.k1, x.rank, x.k2)
        });
        for a in &all {
            let it = item(a);
            emit(&shards[a.0].pending.out[it.line.0..it.line.1])?;
        }
        self.results += all.len() as u64;
        // Closed windows: each shard's sorted, then merged by taking the least head (there
        // are as few shards as jobs), each rendered as it is written.
        for s in &mut self.shards {
            s.pending
                .closed
                .sort_unstable_by(|a, b| a.order().cmp(&b.order()));
        }
        let mut at = vec![0usize; self.shards.len()];
        let mut line = Vec::new();
        loop {
            let mut best: Option<usize> = None;
            for (i, s) in self.shards.iter().enumerate() {
                let Some(c) = s.pending.closed.get(at[i]) else {
                    continue;
                };
                if best.is_none_or(|b| c.order() < self.shards[b].pending.closed[at[b]].order()) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            let c = &mut self.shards[b].pending.closed[at[b]];
            at[b] += 1;
            line.clear();
            render(&self.spec, c.start, c.end, &c.group, &mut c.acc, &mut line);
            emit(&line)?;
            self.results += 1;
        }
        for s in &mut self.shards {
            s.pending.clear();
        }
        Ok(())
    }

    /// Open windows (× groups) now.
    pub fn open_windows(&self) -> usize {
        self.shards.iter().map(Shard::windows).sum()
    }

    /// The state to resume from: the watermark, positions and every open window.
    pub fn snapshot(&self) -> Snapshot {
        let b64 = |b: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        };
        let mut windows = Vec::new();
        for s in &self.shards {
            for (&start, map) in &s.fixed {
                for (g, slot) in map {
                    windows.push(Saved {
                        start,
                        end: 0,
                        group: b64(g),
                        acc: slot.acc.clone(),
                        shown: None,
                    });
                }
            }
            for g in s.sessions.values() {
                for x in &g.sessions {
                    windows.push(Saved {
                        start: x.start,
                        end: x.end,
                        group: b64(&g.key),
                        acc: x.slot.acc.clone(),
                        shown: x.shown,
                    });
                }
            }
        }
        // A stable file for the same state, whatever the shards.
        windows.sort_by(|a, b| (a.start, a.end, &a.group).cmp(&(b.start, b.end, &b.group)));
        Snapshot {
            fingerprint: self.spec.fingerprint.clone(),
            wm: self.wm,
            max_ts: self.max_ts,
            seq: self.seq,
            positions: self.positions.clone(),
            windows,
        }
    }

    /// Continues from a snapshot (checked against this run's options).
    pub fn restore(&mut self, snap: Snapshot) -> Result<(), String> {
        if snap.fingerprint != self.spec.fingerprint {
            return Err(format!(
                "it was written by a window with other options ({}; now {})",
                snap.fingerprint, self.spec.fingerprint
            ));
        }
        self.wm = snap.wm;
        self.max_ts = snap.max_ts;
        self.seq = snap.seq;
        self.positions = snap.positions;
        let n = self.shards.len();
        for w in snap.windows {
            use base64::Engine as _;
            let g = base64::engine::general_purpose::STANDARD
                .decode(&w.group)
                .map_err(|e| format!("bad group in a window: {e}"))?;
            if !w.acc.fits(&self.spec.aggs) {
                return Err("a window's aggregates do not match --agg".into());
            }
            let shard = &mut self.shards[shard_of(hash_group(&g), n)];
            let slot = Slot {
                acc: w.acc,
                last: Vec::new(),
            };
            match self.spec.kind {
                Kind::Fixed { .. } => {
                    shard
                        .fixed
                        .entry(w.start)
                        .or_default()
                        .insert(g.into(), slot);
                }
                Kind::Session { .. } => {
                    let k: Arc<[u8]> = g.into();
                    shard.ends.push(Reverse((w.end, k.clone())));
                    shard
                        .sessions
                        .entry(k.clone())
                        .or_insert_with(|| Group {
                            key: k,
                            sessions: Vec::new(),
                        })
                        .sessions
                        .push(Session {
                            start: w.start,
                            end: w.end,
                            slot,
                            shown: w.shown,
                        });
                }
            }
        }
        Ok(())
    }
}

/// What `--state FILE` holds.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub fingerprint: String,
    pub wm: i64,
    pub max_ts: i64,
    pub seq: u64,
    pub positions: Vec<(String, u32, u64, u64)>,
    pub windows: Vec<Saved>,
}

#[derive(Serialize, Deserialize)]
pub struct Saved {
    pub start: i64,
    /// Sessions only (fixed windows know their end from the start).
    pub end: i64,
    pub group: String,
    pub acc: Acc,
    /// Sessions under `--emit update`: the window of the last result written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<(i64, i64)>,
}
