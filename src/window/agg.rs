//! Aggregates: the `--agg` list (`count(), avg(.speed) as mean, p95(.speed)`), the state one
//! window and group keeps for them (`Acc`), how a record updates it, how two states merge
//! (session windows joining), and how a result is written.
//!
//! Results match SQL over the same data: sums of integers stay exact integers; avg and
//! stddev (sample, like SQL's `stddev`) are doubles; percentiles are exact, by nearest rank
//! (the value at rank ceil(p·n), as DuckDB's `quantile_disc`); count_distinct compares JSON
//! values (1 and 1.0 are one value). first and last are the values of the records with the
//! earliest and latest event time (ties: arrival order). Numeric aggregates skip nulls,
//! missing fields and non-numbers; first, last and count_distinct skip nulls and missing.

use super::extract::Cell;
use super::Path;
use crate::transform::value::write_f64;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `count()`: records in the window.
    Count,
    /// `count(.f)`: records where the field is present and not null.
    CountField,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    CountDistinct,
    Stddev,
    /// `pNN`: the NN-th percentile (1 to 99).
    Pct(u8),
}

impl Func {
    fn numeric(self) -> bool {
        matches!(
            self,
            Func::Sum | Func::Avg | Func::Min | Func::Max | Func::Stddev | Func::Pct(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct Agg {
    pub func: Func,
    /// Index of the argument in the spec's field list.
    pub field: Option<usize>,
    pub name: String,
}

/// The aggregates, with the fields they read (shared with `--by` and `--ts`).
#[derive(Debug, Clone, Default)]
pub struct Aggs {
    pub list: Vec<Agg>,
    /// Fields read by numeric aggregates (a record whose value there is not a number counts
    /// once in `skipped`).
    pub numeric_fields: Vec<usize>,
    /// Per percentile aggregate, its slot in `Acc::values` (one per field).
    pct_slot: Vec<usize>,
    pct_fields: Vec<usize>,
}

/// Parses the `--agg` list, adding argument fields to `fields` (deduplicated).
pub fn parse(spec: &str, fields: &mut Vec<Path>) -> Result<Aggs, String> {
    let mut aggs = Aggs::default();
    for item in split_top(spec).map_err(|e| format!("--agg: {e}"))? {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let open = item
            .find('(')
            .ok_or_else(|| format!("--agg: expected FUNC(FIELD) in {item:?}"))?;
        let close = close_paren(item, open)
            .ok_or_else(|| format!("--agg: unbalanced parentheses in {item:?}"))?;
        let fname = item[..open].trim();
        let arg = item[open + 1..close].trim();
        let rest = item[close + 1..].trim();
        let alias = if rest.is_empty() {
            None
        } else {
            let a = rest
                .strip_prefix("as")
                .filter(|a| a.starts_with(char::is_whitespace))
                .map(str::trim)
                .ok_or_else(|| format!("--agg: expected `as NAME` after {:?}", &item[..=close]))?;
            if a.is_empty() {
                return Err(format!("--agg: empty name after `as` in {item:?}"));
            }
            Some(serde_json::from_str::<String>(a).unwrap_or_else(|_| a.to_string()))
        };
        let func = match fname {
            "count" if arg.is_empty() => Func::Count,
            "count" => Func::CountField,
            "sum" => Func::Sum,
            "avg" | "mean" => Func::Avg,
            "min" => Func::Min,
            "max" => Func::Max,
            "first" => Func::First,
            "last" => Func::Last,
            "count_distinct" => Func::CountDistinct,
            "stddev" => Func::Stddev,
            "median" => Func::Pct(50),
            p if p.len() >= 2
                && p.starts_with('p')
                && p[1..].bytes().all(|b| b.is_ascii_digit())
                && p.len() <= 3 =>
            {
                match p[1..].parse::<u8>() {
                    Ok(n @ 1..=99) => Func::Pct(n),
                    _ => return Err(format!("--agg: percentiles go from p1 to p99, not {p}")),
                }
            }
            other => {
                return Err(format!(
                    "--agg: unknown function {other:?} (count, sum, avg, min, max, first, last, \
                     count_distinct, stddev, p50, p95, p99, pNN)"
                ))
            }
        };
        let field = if func == Func::Count {
            None
        } else {
            if arg.is_empty() {
                return Err(format!(
                    "--agg: {fname}() needs a field, as in {fname}(.speed)"
                ));
            }
            let p = Path::parse(arg).map_err(|e| format!("--agg: {e}"))?;
            Some(match fields.iter().position(|f| f.segs == p.segs) {
                Some(i) => i,
                None => {
                    fields.push(p);
                    fields.len() - 1
                }
            })
        };
        let name = alias.unwrap_or_else(|| match field {
            None => "count".to_string(),
            Some(f) => format!("{fname}_{}", fields[f].joined()),
        });
        if aggs.list.iter().any(|a| a.name == name) {
            return Err(format!(
                "--agg: two results are named {name:?}; rename one with `as NAME`"
            ));
        }
        if let (true, Some(f)) = (func.numeric(), field) {
            if !aggs.numeric_fields.contains(&f) {
                aggs.numeric_fields.push(f);
            }
        }
        if let (Func::Pct(_), Some(f)) = (func, field) {
            let slot = match aggs.pct_fields.iter().position(|&x| x == f) {
                Some(s) => s,
                None => {
                    aggs.pct_fields.push(f);
                    aggs.pct_fields.len() - 1
                }
            };
            aggs.pct_slot.push(slot);
        } else {
            aggs.pct_slot.push(usize::MAX);
        }
        aggs.list.push(Agg { func, field, name });
    }
    if aggs.list.is_empty() {
        return Err("--agg: no aggregates given".into());
    }
    Ok(aggs)
}

/// The characters of `s` outside quoted names (`"..."`, with escapes), each with the depth of
/// parentheses before it; then whether the quotes were balanced.
fn unquoted(s: &str) -> (Vec<(usize, char, i32)>, bool) {
    let (mut out, mut depth, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        out.push((i, c, depth));
        match c {
            '"' => quoted = true,
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
    }
    (out, !quoted)
}

/// Splits at commas outside parentheses and quotes.
pub fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let (chars, closed) = unquoted(s);
    let depth = chars.last().map_or(0, |&(_, c, d)| match c {
        '(' => d + 1,
        ')' => d - 1,
        _ => d,
    });
    if !closed || depth != 0 || chars.iter().any(|&(_, c, d)| c == ')' && d <= 0) {
        return Err(format!("unbalanced quotes or parentheses in {s:?}"));
    }
    let mut out = Vec::new();
    let mut from = 0;
    for &(i, c, d) in &chars {
        if c == ',' && d == 0 {
            out.push(&s[from..i]);
            from = i + 1;
        }
    }
    out.push(&s[from..]);
    Ok(out)
}

/// The parenthesis closing the one at `open`.
fn close_paren(s: &str, open: usize) -> Option<usize> {
    let (chars, _) = unquoted(&s[open..]);
    chars
        .iter()
        .find(|&&(_, c, d)| c == ')' && d == 1)
        .map(|&(i, ..)| open + i)
}

/// A number as read: its value, and the integer it is when it is one (so integer sums,
/// minima and percentiles come out as integers).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Num {
    pub f: f64,
    pub int: Option<i64>,
}

impl Num {
    fn write(&self, out: &mut Vec<u8>) {
        match self.int {
            Some(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
            None => write_f64(out, self.f),
        }
    }
}

/// The record a first/last result comes from: event time, arrival number, value's JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pick {
    pub ts: i64,
    pub seq: u64,
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum St {
    Count,
    CountField(u64),
    Sum {
        n: u64,
        f: f64,
        /// Exact while every value is an integer and the sum fits.
        i: Option<i64>,
    },
    Min(Option<Num>),
    Max(Option<Num>),
    First(Option<Box<Pick>>),
    Last(Option<Box<Pick>>),
    Distinct(Box<FxHashSet<Box<[u8]>>>),
    /// Welford's running mean and sum of squared deviations.
    Var {
        n: u64,
        mean: f64,
        m2: f64,
    },
    Pct,
}

/// Values kept for exact percentiles of one field.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Values {
    pub v: Vec<f64>,
    pub all_int: bool,
}

/// The state of one window and group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acc {
    pub count: u64,
    pub skipped: u64,
    pub st: Vec<St>,
    pub values: Vec<Values>,
}

impl Acc {
    pub fn new(aggs: &Aggs) -> Acc {
        let st = aggs
            .list
            .iter()
            .map(|a| match a.func {
                Func::Count => St::Count,
                Func::CountField => St::CountField(0),
                Func::Sum | Func::Avg => St::Sum {
                    n: 0,
                    f: 0.0,
                    i: Some(0),
                },
                Func::Min => St::Min(None),
                Func::Max => St::Max(None),
                Func::First => St::First(None),
                Func::Last => St::Last(None),
                Func::CountDistinct => St::Distinct(Box::default()),
                Func::Stddev => St::Var {
                    n: 0,
                    mean: 0.0,
                    m2: 0.0,
                },
                Func::Pct(_) => St::Pct,
            })
            .collect();
        Acc {
            count: 0,
            skipped: 0,
            st,
            values: aggs
                .pct_fields
                .iter()
                .map(|_| Values {
                    v: Vec::new(),
                    all_int: true,
                })
                .collect(),
        }
    }

    /// Adds one record. `cells` are its fields (by the spec's field index), `text` the batch
    /// text their spans point into; `scratch` is reused for encoding distinct values.
    pub fn add(
        &mut self,
        aggs: &Aggs,
        cells: &[Cell],
        text: &[u8],
        (ts, seq): (i64, u64),
        scratch: &mut Vec<u8>,
    ) {
        self.count += 1;
        if aggs
            .numeric_fields
            .iter()
            .any(|&f| cells[f].num().is_none())
        {
            self.skipped += 1;
        }
        for (a, st) in aggs.list.iter().zip(self.st.iter_mut()) {
            let Some(f) = a.field else { continue };
            let c = &cells[f];
            match st {
                St::Count | St::Pct => {}
                St::CountField(n) => *n += u64::from(c.present()),
                St::Sum { n, f, i } => {
                    if let Some(x) = c.num() {
                        *n += 1;
                        *f += x.f;
                        *i = match (*i, x.int) {
                            (Some(s), Some(v)) => s.checked_add(v),
                            _ => None,
                        };
                    }
                }
                St::Min(m) => {
                    if let Some(x) = c.num() {
                        if m.is_none_or(|m| x.f < m.f) {
                            *m = Some(x);
                        }
                    }
                }
                St::Max(m) => {
                    if let Some(x) = c.num() {
                        if m.is_none_or(|m| x.f > m.f) {
                            *m = Some(x);
                        }
                    }
                }
                St::First(p) => {
                    if c.present() && p.as_ref().is_none_or(|p| (ts, seq) < (p.ts, p.seq)) {
                        set_pick(p, ts, seq, c.raw(text));
                    }
                }
                St::Last(p) => {
                    if c.present() && p.as_ref().is_none_or(|p| (ts, seq) > (p.ts, p.seq)) {
                        set_pick(p, ts, seq, c.raw(text));
                    }
                }
                St::Distinct(set) => {
                    if c.present() {
                        scratch.clear();
                        c.encode(text, scratch);
                        if !set.contains(scratch.as_slice()) {
                            set.insert(scratch.as_slice().into());
                        }
                    }
                }
                St::Var { n, mean, m2 } => {
                    if let Some(x) = c.num() {
                        *n += 1;
                        let d = x.f - *mean;
                        *mean += d / *n as f64;
                        *m2 += d * (x.f - *mean);
                    }
                }
            }
        }
        for (slot, &f) in aggs.pct_fields.iter().enumerate() {
            if let Some(x) = cells[f].num() {
                let v = &mut self.values[slot];
                v.v.push(x.f);
                v.all_int &= x.int.is_some() && x.f.abs() < 9.0e15;
            }
        }
    }

    /// Whether this state has the shape `aggs` needs (a state read back from a file).
    pub fn fits(&self, aggs: &Aggs) -> bool {
        self.st.len() == aggs.list.len()
            && self.values.len() == aggs.pct_fields.len()
            && self.st.iter().zip(&aggs.list).all(|(st, a)| {
                matches!(
                    (st, a.func),
                    (St::Count, Func::Count)
                        | (St::CountField(_), Func::CountField)
                        | (St::Sum { .. }, Func::Sum | Func::Avg)
                        | (St::Min(_), Func::Min)
                        | (St::Max(_), Func::Max)
                        | (St::First(_), Func::First)
                        | (St::Last(_), Func::Last)
                        | (St::Distinct(_), Func::CountDistinct)
                        | (St::Var { .. }, Func::Stddev)
                        | (St::Pct, Func::Pct(_))
                )
            })
    }

    /// Folds `other` (a later-starting session of the same group) into this one.
    pub fn merge(&mut self, other: Acc) {
        self.count += other.count;
        self.skipped += other.skipped;
        for (a, b) in self.st.iter_mut().zip(other.st) {
            match (a, b) {
                (St::CountField(x), St::CountField(y)) => *x += y,
                (
                    St::Sum { n, f, i },
                    St::Sum {
                        n: n2,
                        f: f2,
                        i: i2,
                    },
                ) => {
                    *n += n2;
                    *f += f2;
                    *i = match (*i, i2) {
                        (Some(x), Some(y)) => x.checked_add(y),
                        _ => None,
                    };
                }
                (St::Min(m), St::Min(Some(y))) if m.is_none_or(|m| y.f < m.f) => {
                    *m = Some(y);
                }
                (St::Max(m), St::Max(Some(y))) if m.is_none_or(|m| y.f > m.f) => {
                    *m = Some(y);
                }
                (St::First(p), St::First(Some(q)))
                    if p.as_ref().is_none_or(|p| (q.ts, q.seq) < (p.ts, p.seq)) =>
                {
                    *p = Some(q);
                }
                (St::Last(p), St::Last(Some(q)))
                    if p.as_ref().is_none_or(|p| (q.ts, q.seq) > (p.ts, p.seq)) =>
                {
                    *p = Some(q);
                }
                (St::Distinct(s), St::Distinct(t)) => s.extend(*t),
                (
                    St::Var { n, mean, m2 },
                    St::Var {
                        n: n2,
                        mean: mean2,
                        m2: m22,
                    },
                ) if n2 > 0 => {
                    // Chan et al.'s pairwise update.
                    let total = *n + n2;
                    let d = mean2 - *mean;
                    *mean += d * n2 as f64 / total as f64;
                    *m2 += m22 + d * d * (*n as f64) * (n2 as f64) / total as f64;
                    *n = total;
                }
                _ => {}
            }
        }
        for (a, b) in self.values.iter_mut().zip(other.values) {
            a.v.extend(b.v);
            a.all_int &= b.all_int;
        }
    }

    /// Writes `,"name":result` for each aggregate (and `,"skipped":N` when asked).
    pub fn write(&mut self, aggs: &Aggs, out: &mut Vec<u8>, with_skipped: bool) {
        for (k, (a, st)) in aggs.list.iter().zip(self.st.iter()).enumerate() {
            out.push(b',');
            crate::record::json::write_str(out, &a.name);
            out.push(b':');
            match st {
                St::Count => {
                    out.extend_from_slice(itoa::Buffer::new().format(self.count).as_bytes())
                }
                St::CountField(n) => {
                    out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes())
                }
                St::Sum { n: 0, .. } | St::Min(None) | St::Max(None) => {
                    out.extend_from_slice(b"null")
                }
                St::Sum { n, f, i } => match (a.func, i) {
                    (Func::Sum, Some(i)) => {
                        out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes())
                    }
                    (Func::Sum, None) => write_f64(out, *f),
                    (_, Some(i)) => write_f64(out, *i as f64 / *n as f64),
                    (_, None) => write_f64(out, *f / *n as f64),
                },
                St::Min(Some(m)) | St::Max(Some(m)) => m.write(out),
                St::First(p) | St::Last(p) => match p {
                    Some(p) => out.extend_from_slice(&p.raw),
                    None => out.extend_from_slice(b"null"),
                },
                St::Distinct(s) => {
                    out.extend_from_slice(itoa::Buffer::new().format(s.len()).as_bytes())
                }
                St::Var { n, m2, .. } => {
                    if *n < 2 {
                        out.extend_from_slice(b"null");
                    } else {
                        write_f64(out, (m2 / (*n - 1) as f64).max(0.0).sqrt());
                    }
                }
                St::Pct => {
                    let Func::Pct(p) = a.func else {
                        unreachable!("St::Pct is only made for Func::Pct")
                    };
                    let vals = &mut self.values[aggs.pct_slot[k]];
                    let n = vals.v.len();
                    if n == 0 {
                        out.extend_from_slice(b"null");
                        continue;
                    }
                    // Nearest rank: the smallest value with at least p% of values at or below.
                    let rank = (n * p as usize).div_ceil(100).max(1);
                    let (_, x, _) = vals.v.select_nth_unstable_by(rank - 1, f64::total_cmp);
                    let x = *x;
                    if vals.all_int {
                        out.extend_from_slice(itoa::Buffer::new().format(x as i64).as_bytes());
                    } else {
                        write_f64(out, x);
                    }
                }
            }
        }
        if with_skipped {
            out.extend_from_slice(b",\"skipped\":");
            out.extend_from_slice(itoa::Buffer::new().format(self.skipped).as_bytes());
        }
    }
}

fn set_pick(p: &mut Option<Box<Pick>>, ts: i64, seq: u64, raw: &[u8]) {
    match p {
        Some(p) => {
            p.ts = ts;
            p.seq = seq;
            p.raw.clear();
            p.raw.extend_from_slice(raw);
        }
        None => {
            *p = Some(Box::new(Pick {
                ts,
                seq,
                raw: raw.to_vec(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(spec: &str) -> Result<Vec<String>, String> {
        let mut f = Vec::new();
        Ok(parse(spec, &mut f)?
            .list
            .into_iter()
            .map(|a| a.name)
            .collect())
    }

    #[test]
    fn parses_lists() {
        assert_eq!(
            names("count(), avg(.speed) as mean, p95(.speed),max(.pos.lat)").unwrap(),
            ["count", "mean", "p95_speed", "max_pos_lat"]
        );
        assert_eq!(names(r#"sum(."a,b")"#).unwrap(), ["sum_a,b"]);
        assert!(names("avg(.speed), avg(.speed)")
            .unwrap_err()
            .contains("as NAME"));
        assert!(names("p100(.x)").is_err());
        assert!(names("frobnicate(.x)").is_err());
        assert!(names("sum()").is_err());
        assert!(names("sum(.x").is_err());
        assert!(names("sum(.x) bogus").is_err());
        let mut f = Vec::new();
        let a = parse("sum(.x), p50(.x), p95(.x), max(.y)", &mut f).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(a.pct_fields, [0]);
        assert_eq!(a.numeric_fields, [0, 1]);
    }

    #[test]
    fn nearest_rank() {
        let mut f = Vec::new();
        let aggs = parse("p50(.x), p95(.x), p99(.x)", &mut f).unwrap();
        for (n, want) in [
            (1, [1, 1, 1]),
            (4, [2, 4, 4]),
            (20, [10, 19, 20]),
            (21, [11, 20, 21]),
        ] {
            let mut acc = Acc::new(&aggs);
            acc.values[0].v = (1..=n).rev().map(|x| x as f64).collect();
            let mut out = Vec::new();
            acc.write(&aggs, &mut out, false);
            let s = String::from_utf8(out).unwrap();
            assert_eq!(
                s,
                format!(
                    ",\"p50_x\":{},\"p95_x\":{},\"p99_x\":{}",
                    want[0], want[1], want[2]
                )
            );
        }
    }
}
