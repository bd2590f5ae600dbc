//! Reading one input line for `window`: envelope or plain object (the same rule as
//! `transform`), its event time, its group (encoded, hashed), and the fields the aggregates
//! read, as spans into the batch text plus parsed numbers. Nothing is built per record but
//! the group's bytes; this runs on rayon's workers, a chunk of lines each.

use super::agg::Num;
use super::{push_encoded, tag, Path};
use crate::record::fields::{ts_ms, RawText};
use crate::record::scan::{self, find_in, Kind};
use crate::transform::{not_an_object, InputMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    Missing,
    Null,
    False,
    True,
    Num,
    Str,
    Json,
}

/// One field of one record.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub kind: CellKind,
    /// The value's JSON text in the batch.
    pub start: usize,
    pub end: usize,
    pub n: Num,
}

impl Cell {
    const MISSING: Cell = Cell {
        kind: CellKind::Missing,
        start: 0,
        end: 0,
        n: Num { f: 0.0, int: None },
    };

    /// Present and not null.
    #[inline]
    pub fn present(&self) -> bool {
        !matches!(self.kind, CellKind::Missing | CellKind::Null)
    }

    /// The number, when it is one a double can hold (1e400 is not: it counts as skipped).
    #[inline]
    pub fn num(&self) -> Option<Num> {
        (self.kind == CellKind::Num && self.n.f.is_finite()).then_some(self.n)
    }

    pub fn raw<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.start..self.end]
    }

    /// Appends the value's encoding (see `window::tag`).
    pub fn encode(&self, text: &[u8], out: &mut Vec<u8>) {
        let raw = self.raw(text);
        match self.kind {
            CellKind::Missing | CellKind::Null => push_encoded(out, tag::NULL, b""),
            CellKind::False => push_encoded(out, tag::FALSE, b""),
            CellKind::True => push_encoded(out, tag::TRUE, b""),
            CellKind::Json => push_encoded(out, tag::JSON, raw),
            CellKind::Str => {
                let inner = &raw[1..raw.len() - 1];
                if inner.contains(&b'\\') {
                    // The scan validated the string, so decoding cannot fail.
                    let s: String = serde_json::from_slice(raw).unwrap_or_default();
                    push_encoded(out, tag::STR, s.as_bytes());
                } else {
                    push_encoded(out, tag::STR, inner);
                }
            }
            CellKind::Num => {
                // One form per value: integers (also 1.0) as integers, others shortest.
                let (mut ib, mut fb) = (itoa::Buffer::new(), ryu::Buffer::new());
                let text = match self.n.int {
                    Some(i) => ib.format(i),
                    None if self.n.f.fract() == 0.0 && self.n.f.abs() < 9.0e15 => {
                        ib.format(self.n.f as i64)
                    }
                    None if self.n.f.is_finite() => fb.format_finite(self.n.f),
                    // Beyond f64 (1e400): the number as written.
                    None => std::str::from_utf8(raw).unwrap_or_default(),
                };
                push_encoded(out, tag::NUM, text.as_bytes());
            }
        }
    }
}

/// Where a record came from in the log, for `--state` (the topic as its JSON text).
#[derive(Debug, Clone, Copy)]
pub struct Prov {
    pub topic: (usize, usize),
    pub partition: u32,
    pub offset: u64,
    pub sub: u64,
}

/// A record read from a line.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Index of the line in the batch.
    pub line: u32,
    pub ts: i64,
    pub hash: u64,
    /// The encoded group in the chunk's `keys`.
    pub key: (u32, u32),
    /// First of its cells in the chunk's `cells`.
    pub cells: u32,
    pub prov: Option<Prov>,
    pub status: Status,
    /// Set by the engine before aggregation: the watermark when the record arrived, and its
    /// arrival number.
    pub wm: i64,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Bad; the message is in the chunk's `errors`.
    Bad,
    /// Not to be aggregated (already covered by --state, or after a failure).
    Skip,
}

/// The records of a run of lines.
#[derive(Default)]
pub struct Chunk {
    pub recs: Vec<Rec>,
    pub cells: Vec<Cell>,
    pub keys: Vec<u8>,
    pub errors: Vec<(u32, String)>,
}

impl Chunk {
    pub fn cells_of(&self, r: &Rec, n: usize) -> &[Cell] {
        &self.cells[r.cells as usize..r.cells as usize + n]
    }
    pub fn key_of(&self, r: &Rec) -> &[u8] {
        &self.keys[r.key.0 as usize..r.key.1 as usize]
    }
    pub fn error_of(&self, r: &Rec) -> &str {
        let i = self.errors.partition_point(|(l, _)| *l < r.line);
        self.errors.get(i).map_or("", |(_, e)| e.as_str())
    }
}

/// What to read from each line.
pub struct Extractor {
    pub fields: Vec<Path>,
    pub ts_field: Option<usize>,
    pub group: Vec<usize>,
    pub input: InputMode,
    /// Read provenance (for --state).
    pub prov: bool,
    /// Event time is the arrival time: no timestamp is read.
    pub processing_time: bool,
    pub topic_finder: memchr::memmem::Finder<'static>,
}

/// Finds the `"topic"` key in a line (the cheap test that most plain lines fail).
pub fn topic_finder() -> memchr::memmem::Finder<'static> {
    memchr::memmem::Finder::new(b"\"topic\"")
}

#[derive(Default)]
pub struct Scratch {
    found: Vec<Option<scan::Member>>,
}

/// The envelope's members: topic, partition, offset, ts, value, sub, value_str, value_base64.
const ENV_NAMES: [&[u8]; 8] = [
    b"topic",
    b"partition",
    b"offset",
    b"ts",
    b"value",
    b"sub",
    b"value_str",
    b"value_base64",
];

impl Extractor {
    /// Reads the lines `lines` (spans into `text`, with their index in the batch).
    pub fn chunk(&self, text: &[u8], lines: &[(usize, usize, u32, bool)], max: usize) -> Chunk {
        let mut c = Chunk {
            recs: Vec::with_capacity(lines.len()),
            cells: Vec::with_capacity(lines.len() * self.fields.len()),
            keys: Vec::with_capacity(lines.len() * 16),
            errors: Vec::new(),
        };
        let mut sc = Scratch::default();
        let names: Vec<&[u8]> = self.fields.iter().map(|p| p.segs[0].as_bytes()).collect();
        for &(s, e, idx, cut) in lines {
            let cells_at = c.cells.len();
            let key_at = c.keys.len();
            let r = if cut {
                Err(format!(
                    "record is larger than --max-record-bytes ({max} bytes)"
                ))
            } else {
                self.line(text, (s, e), &names, &mut sc, &mut c)
            };
            let mut rec = Rec {
                line: idx,
                ts: 0,
                hash: 0,
                key: (key_at as u32, key_at as u32),
                cells: cells_at as u32,
                prov: None,
                status: Status::Ok,
                wm: 0,
                seq: 0,
            };
            match r {
                Ok((ts, prov)) => {
                    rec.ts = ts;
                    rec.prov = prov;
                    rec.key.1 = c.keys.len() as u32;
                    // The same hash --state uses to put restored windows in their shard.
                    rec.hash = super::engine::hash_group(&c.keys[key_at..]);
                }
                Err(msg) => {
                    c.cells.truncate(cells_at);
                    c.keys.truncate(key_at);
                    c.cells
                        .extend(std::iter::repeat_n(Cell::MISSING, self.fields.len()));
                    rec.status = Status::Bad;
                    c.errors.push((idx, msg));
                }
            }
            c.recs.push(rec);
        }
        c
    }

    fn line(
        &self,
        text: &[u8],
        (s, e): (usize, usize),
        names: &[&[u8]],
        sc: &mut Scratch,
        c: &mut Chunk,
    ) -> Result<(i64, Option<Prov>), String> {
        // No UTF-8 pass here: the scans below check strings' UTF-8, the rest must be ASCII.
        let line = &text[s..e];
        // In auto mode a line without the bytes "topic" (and no escape, so no escaped key)
        // is plain, and is scanned once for its fields.
        let maybe_env = match self.input {
            InputMode::Plain => false,
            InputMode::Envelope => true,
            InputMode::Auto => {
                memchr::memchr(b'\\', line).is_some() || self.topic_finder.find(line).is_some()
            }
        };
        let mut env = None;
        if maybe_env {
            let mut f = [None; ENV_NAMES.len()];
            if !scan::scan_pick(line, &ENV_NAMES, &mut f) {
                return Err(not_an_object(line));
            }
            let is_env = self.input == InputMode::Envelope
                || (f[0].is_some()
                    && f[1].is_some()
                    && f[2].is_some()
                    && (f[4].is_some() || f[6].is_some() || f[7].is_some()));
            if is_env {
                env = Some(f);
            }
        }
        let (vs, ve, prov, env_ts) = match env {
            None => (s, e, None, None),
            Some(f) => {
                let Some(v) = f[4].filter(|v| v.kind == Kind::Obj) else {
                    return Err("the envelope's value is not a JSON object".into());
                };
                let prov = if self.prov {
                    match (f[0], f[1], f[2]) {
                        (Some(t), Some(p), Some(o)) if t.kind == Kind::Str => {
                            let num = |m: &scan::Member| -> Option<u64> {
                                std::str::from_utf8(m.value(line)).ok()?.parse().ok()
                            };
                            let bad =
                                || "the envelope's partition, offset or sub is not a whole number";
                            Some(Prov {
                                topic: (s + t.start, s + t.end),
                                partition: num(&p)
                                    .and_then(|p| u32::try_from(p).ok())
                                    .ok_or_else(bad)?,
                                offset: num(&o).ok_or_else(bad)?,
                                sub: match f[5] {
                                    Some(m) => num(&m).ok_or_else(bad)?,
                                    None => 0,
                                },
                            })
                        }
                        _ => None,
                    }
                } else {
                    None
                };
                (s + v.start, s + v.end, prov, f[3])
            }
        };
        // The record: the line itself, or the envelope's value; scanned for the fields' first
        // names (a plain line that looked like an envelope is scanned a second time).
        sc.found.clear();
        sc.found.resize(self.fields.len(), None);
        if !scan::scan_pick(&text[vs..ve], names, &mut sc.found) {
            return Err(if env.is_some() {
                "the envelope's value is not a JSON object".into()
            } else {
                not_an_object(line)
            });
        }
        let at = c.cells.len();
        c.cells.resize(at + self.fields.len(), Cell::MISSING);
        for (fi, p) in self.fields.iter().enumerate() {
            if let Some(m) = &sc.found[fi] {
                c.cells[at + fi] = lookup(text, vs, m, p);
            }
        }
        let cells = &c.cells[c.cells.len() - self.fields.len()..];
        for &g in &self.group {
            cells[g].encode(text, &mut c.keys);
        }
        let ts = if self.processing_time {
            0
        } else if let Some(f) = self.ts_field {
            let cell = &cells[f];
            if !cell.present() {
                return Err(format!(
                    "no timestamp: field {} is missing or null",
                    self.fields[f].text
                ));
            }
            let raw = std::str::from_utf8(cell.raw(text)).unwrap_or_default();
            ts_ms(&RawText::Borrowed(raw), None)
                .map_err(|e| format!("field {}: {e}", self.fields[f].text))?
        } else {
            match env_ts {
                Some(m) if m.kind == Kind::Num => {
                    let t = std::str::from_utf8(m.value(line)).unwrap_or_default();
                    match t.parse::<i64>() {
                        // Beyond ±9e15 ms (year 287,000) no window arithmetic is meaningful.
                        Ok(v) if v.unsigned_abs() < 9_000_000_000_000_000 => v,
                        Ok(_) => return Err(format!("envelope ts out of range: {t}")),
                        Err(_) => t
                            .parse::<f64>()
                            .ok()
                            .filter(|f| f.abs() < 9.0e15)
                            .map(|f| f.floor() as i64)
                            .ok_or_else(|| format!("envelope ts out of range: {t}"))?,
                    }
                }
                Some(m) if m.kind != Kind::Null => {
                    return Err("the envelope's ts is not a number (milliseconds)".into())
                }
                _ if env.is_some() => {
                    return Err(
                        "the envelope has no ts (give --ts FIELD to read the value's)".into(),
                    )
                }
                _ => return Err("no timestamp: a plain record needs --ts FIELD".into()),
            }
        };
        Ok((ts, prov))
    }
}

/// Follows `p` from its top-level member `m` (whose positions count from `vbase` in `text`).
fn lookup(text: &[u8], vbase: usize, m: &scan::Member, p: &Path) -> Cell {
    let (mut kind, mut start, mut end) = (m.kind, vbase + m.start, vbase + m.end);
    for seg in &p.segs[1..] {
        if kind != Kind::Obj {
            return Cell::MISSING;
        }
        match find_in(&text[start..end], seg.as_bytes()) {
            Some((k, s, e)) => {
                kind = k;
                end = start + e;
                start += s;
            }
            None => return Cell::MISSING,
        }
    }
    let raw = &text[start..end];
    let (kind, n) = match kind {
        Kind::Null => (CellKind::Null, Num { f: 0.0, int: None }),
        Kind::False => (CellKind::False, Num { f: 0.0, int: None }),
        Kind::True => (CellKind::True, Num { f: 0.0, int: None }),
        Kind::Str => (CellKind::Str, Num { f: 0.0, int: None }),
        Kind::Arr | Kind::Obj => (CellKind::Json, Num { f: 0.0, int: None }),
        Kind::Num => (CellKind::Num, parse_num(raw)),
    };
    Cell {
        kind,
        start,
        end,
        n,
    }
}

/// A JSON number's value; integers that fit i64 are kept exactly.
fn parse_num(raw: &[u8]) -> Num {
    // The scan validated the number, so it is ASCII.
    let t = std::str::from_utf8(raw).unwrap_or("0");
    if !raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        if let Ok(i) = t.parse::<i64>() {
            return Num {
                f: i as f64,
                int: Some(i),
            };
        }
    }
    Num {
        f: t.parse::<f64>().unwrap_or(f64::NAN),
        int: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(input: InputMode, fields: &[&str], ts: Option<usize>, group: &[usize]) -> Extractor {
        Extractor {
            fields: fields.iter().map(|f| Path::parse(f).unwrap()).collect(),
            ts_field: ts,
            group: group.to_vec(),
            input,
            prov: true,
            processing_time: false,
            topic_finder: topic_finder(),
        }
    }

    fn one(e: &Extractor, line: &str) -> Chunk {
        e.chunk(line.as_bytes(), &[(0, line.len(), 0, false)], 1 << 20)
    }

    #[test]
    fn plain_and_envelope() {
        let e = ex(
            InputMode::Auto,
            &["ts", "id", ".pos.lat", "speed"],
            Some(0),
            &[1],
        );
        let line = r#"{"id":"t\u0031","ts":"2026-01-01T00:00:01Z","pos":{"lat":52.5},"speed":7}"#;
        let c = one(&e, line);
        let r = c.recs[0];
        assert_eq!(r.status, Status::Ok, "{:?}", c.errors);
        assert_eq!(r.ts, 1_767_225_601_000);
        let cells = c.cells_of(&r, 4);
        assert_eq!(cells[2].n.f, 52.5);
        assert_eq!(cells[3].n.int, Some(7));
        let mut want = Vec::new();
        push_encoded(&mut want, tag::STR, b"t1");
        assert_eq!(c.key_of(&r), want.as_slice());

        let e = ex(InputMode::Auto, &["id"], None, &[0]);
        let env = r#"{"topic":"t","partition":2,"offset":9,"sub":1,"ts":1000,"key":"k","value":{"id":"a"}}"#;
        let c = one(&e, env);
        let r = c.recs[0];
        assert_eq!(r.ts, 1000);
        let p = r.prov.unwrap();
        assert_eq!((p.partition, p.offset, p.sub), (2, 9, 1));
        assert_eq!(&env.as_bytes()[p.topic.0..p.topic.1], b"\"t\"");
    }

    #[test]
    fn errors() {
        let e = ex(InputMode::Auto, &["ts"], Some(0), &[]);
        for (line, msg) in [
            ("[1]", "expected a JSON object"),
            ("{\"ts\":", "invalid JSON"),
            ("{\"x\":1}", "missing or null"),
            ("{\"ts\":true}", "field ts"),
        ] {
            let c = one(&e, line);
            assert_eq!(c.recs[0].status, Status::Bad);
            assert!(c.errors[0].1.contains(msg), "{line}: {}", c.errors[0].1);
        }
        let e = ex(InputMode::Auto, &[], None, &[]);
        let c = one(&e, r#"{"x":1}"#);
        assert!(c.errors[0].1.contains("--ts"));
        let c = one(&e, r#"{"topic":"t","partition":0,"offset":1,"value":3}"#);
        assert!(c.errors[0].1.contains("not a JSON object"));
    }
}
