//! `store diff`: comparing a table with an expected file (CSV or NDJSON) or with another
//! table, key by key, and printing what differs. This module owns reading the expected file
//! into keyed rows, the loose value comparison, and the diff's text format; the command
//! resolves the table, the flags and the exit status.
//!
//! It exists so a CI script can pin an ETL's output: commit `store export out --csv >
//! expected.csv` once, then `store diff out expected.csv` after every change. A CSV cell is
//! always text while the table holds typed JSON, so values compare by meaning, not by bytes.
//!
//! Comparison rules:
//!
//! - Rows are matched by key. A table row's key is its table key; an expected file's row key
//!   is the text of its `--key` fields joined with `|` (a string gives its text unquoted, a
//!   number or a bool its JSON text). A row without a key field, or whose key field is null,
//!   is an error, and so is a key that appears twice.
//! - A row's fields are its value's members; a value that is not an object is one field
//!   named `value`. An expected CSV file's fields are its columns (header row = field names),
//!   every cell a string; an NDJSON file holds one JSON object per line (blank lines skipped).
//! - For a matched pair, every field present in either row is compared; a field absent on one
//!   side equals null or an empty string on the other. The `--key` fields are compared only
//!   when both rows have them (the expected file's key column need not be in the table's
//!   values).
//! - A number equals a number, or a string that parses as a finite number, when
//!   `|a - b| <= tolerance * max(1, |a|, |b|)`: relative for large values, absolute below 1;
//!   tolerance 0 is exact. Two integers of which one is beyond 2^53 compare exactly, since a
//!   float cannot tell them apart.
//! - A string equals a bool when it is `true` or `false` accordingly; an empty string equals
//!   null; a string equals an object or array when it parses as JSON that equals it.
//! - Objects and arrays compare member by member and element by element with these same rules
//!   (a member absent on one side equals null there). Anything else is equal only when it is
//!   identical.
//!
//! Output, one line per differing key in key order, after a `--- LEFT` / `+++ RIGHT` header
//! printed only when something differs; keys and values are JSON text so odd keys stay
//! unambiguous, field names are JSON text too unless they are plain (letters, digits, `_`,
//! `-`, `.`):
//!
//! ```text
//! --- out
//! +++ expected.csv
//! - "truck-9" {"avg":1.5,"n":3}
//! + "truck-99" {"avg":"2"}
//! ~ "truck-3" avg: 81.5 -> "82.0"; n: 3 -> (absent)
//! ```
//!
//! `-` is a key only in the left side (its fields as one JSON object), `+` only in the right,
//! `~` a key in both with each differing field as `name: left -> right`, fields in sorted
//! order.

use crate::error::{data, setup, usage, Result};
use serde_json::{Map, Number, Value};
use std::cmp::Ordering;
use std::io::{self, Write};
use std::path::Path;

/// A row to compare: its key and its fields (an object's members; a non-object value is one
/// field named "value").
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed {
    pub key: String,
    pub fields: Map<String, Value>,
}

impl Keyed {
    fn from_value(key: String, v: Value) -> Keyed {
        let fields = match v {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("value".to_string(), other);
                m
            }
        };
        Keyed { key, fields }
    }
}

/// Table rows → Keyed, sorted by key.
pub fn from_table(rows: &[super::Row<'_>]) -> Result<Vec<Keyed>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let v: Value = serde_json::from_slice(row.value).map_err(|e| {
            data(format!(
                "the value of key {} is not valid JSON: {e}",
                json_text(row.key)
            ))
        })?;
        out.push(Keyed::from_value(row.key.to_string(), v));
    }
    // Readers hand rows in key order already; sorting again costs one pass then and keeps
    // the merge join right if they ever do not.
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Reads an expected file: CSV when the path ends in `.csv` (header row = field names, every
/// cell a string), else NDJSON (one JSON object per line, blank lines skipped). Each row's key
/// is the text of its `key_fields` joined with `|`. Returns the rows sorted by key.
pub fn read_expected(path: &Path, key_fields: &[String]) -> Result<Vec<Keyed>> {
    if key_fields.is_empty() {
        return Err(usage("store diff: no key field to match rows by"));
    }
    let bytes = std::fs::read(path).map_err(|e| setup(format!("{}: {e}", path.display())))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut rows = if is_csv {
        csv_rows(&bytes, path, key_fields)?
    } else {
        ndjson_rows(&bytes, path, key_fields)?
    };
    // Stable: rows with the same key stay in file order, so the pair found names the line of
    // the second occurrence and the line of the first.
    rows.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    let mut dup: Option<(u64, u64, &str)> = None;
    for w in rows.windows(2) {
        let ((first, a), (second, b)) = (&w[0], &w[1]);
        if a.key == b.key && dup.is_none_or(|d| *second < d.1) {
            dup = Some((*first, *second, &a.key));
        }
    }
    if let Some((first, second, key)) = dup {
        return Err(data(format!(
            "{}: line {second}: key {} appears twice (first on line {first})",
            path.display(),
            json_text(key)
        )));
    }
    Ok(rows.into_iter().map(|(_, k)| k).collect())
}

fn csv_rows(bytes: &[u8], path: &Path, key_fields: &[String]) -> Result<Vec<(u64, Keyed)>> {
    let name = path.display();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut records = rdr.records();
    let csv_err = |e: csv::Error| {
        let line = e.position().map_or(0, |p| p.line());
        let m = match e.kind() {
            csv::ErrorKind::Utf8 { .. } => "invalid UTF-8 in CSV".to_string(),
            _ => format!("bad CSV: {e}"),
        };
        data(format!("{name}: line {line}: {m}"))
    };
    let header: Vec<String> = match records.next() {
        None => return Ok(Vec::new()),
        Some(rec) => rec
            .map_err(csv_err)?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == 0 {
                    s.trim_start_matches('\u{feff}').to_string()
                } else {
                    s.to_string()
                }
            })
            .collect(),
    };
    let mut sorted: Vec<&str> = header.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(data(format!(
            "{name}: line 1: column {} appears twice",
            json_text(w[0])
        )));
    }
    let mut key_cols = Vec::with_capacity(key_fields.len());
    for k in key_fields {
        match header.iter().position(|h| h == k) {
            Some(i) => key_cols.push(i),
            None => {
                return Err(data(format!(
                    "{name}: line 1: no key field {}",
                    json_text(k)
                )))
            }
        }
    }
    let mut rows = Vec::new();
    for rec in records {
        let rec = rec.map_err(csv_err)?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != header.len() {
            return Err(data(format!(
                "{name}: line {line}: CSV row has {} fields, the header has {}",
                rec.len(),
                header.len()
            )));
        }
        let key = key_cols
            .iter()
            .map(|&i| rec.get(i).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("|");
        let fields: Map<String, Value> = header
            .iter()
            .zip(rec.iter())
            .map(|(h, c)| (h.clone(), Value::String(c.to_string())))
            .collect();
        rows.push((line, Keyed { key, fields }));
    }
    Ok(rows)
}

fn ndjson_rows(bytes: &[u8], path: &Path, key_fields: &[String]) -> Result<Vec<(u64, Keyed)>> {
    let name = path.display();
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut rows = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let no = i as u64 + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let obj = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Err(data(format!("{name}: line {no}: expected a JSON object")));
            }
            Err(e) => {
                // serde_json places the error in the line alone; only the column is news.
                let msg = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
                return Err(data(format!(
                    "{name}: line {no}: invalid JSON at column {}: {msg}",
                    e.column()
                )));
            }
        };
        let mut parts = Vec::with_capacity(key_fields.len());
        for k in key_fields {
            match obj.get(k.as_str()) {
                None | Some(Value::Null) => {
                    return Err(data(format!(
                        "{name}: line {no}: no key field {}",
                        json_text(k)
                    )));
                }
                Some(Value::String(s)) => parts.push(s.clone()),
                Some(v) => parts.push(v.to_string()),
            }
        }
        rows.push((
            no,
            Keyed {
                key: parts.join("|"),
                fields: obj,
            },
        ));
    }
    Ok(rows)
}

/// How to compare: the relative tolerance for numbers, and the key fields (compared only when
/// both rows have them).
#[derive(Debug, Clone)]
pub struct Options {
    pub tolerance: f64,
    pub key_fields: Vec<String>,
}

/// How many keys were only on the left, only on the right, in both but different, in both and
/// equal.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub only_left: u64,
    pub only_right: u64,
    pub changed: u64,
    pub same: u64,
}

impl Summary {
    /// Whether any key differs (the command then exits 1).
    pub fn differs(&self) -> bool {
        self.only_left + self.only_right + self.changed > 0
    }
}

/// Merge-joins two key-sorted row lists and writes a readable diff to `out`; returns the
/// counts. Lists not sorted by key are sorted here first rather than silently mismatched.
pub fn diff(
    left: &[Keyed],
    right: &[Keyed],
    opts: &Options,
    names: (&str, &str),
    out: &mut dyn Write,
) -> io::Result<Summary> {
    let left = in_key_order(left);
    let right = in_key_order(right);
    let mut sum = Summary::default();
    let mut header = false;
    let mut head = |out: &mut dyn Write| -> io::Result<()> {
        if !header {
            header = true;
            writeln!(out, "--- {}\n+++ {}", names.0, names.1)?;
        }
        Ok(())
    };
    let (mut i, mut j) = (0, 0);
    loop {
        let ord = match (left.get(i), right.get(j)) {
            (Some(a), Some(b)) => a.key.cmp(&b.key),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        match ord {
            Ordering::Less => {
                let a = left[i];
                head(out)?;
                write_whole(out, '-', a)?;
                sum.only_left += 1;
                i += 1;
            }
            Ordering::Greater => {
                let b = right[j];
                head(out)?;
                write_whole(out, '+', b)?;
                sum.only_right += 1;
                j += 1;
            }
            Ordering::Equal => {
                let (a, b) = (left[i], right[j]);
                let changes = changed_fields(a, b, opts);
                if changes.is_empty() {
                    sum.same += 1;
                } else {
                    head(out)?;
                    out.write_all(b"~ ")?;
                    write_json(out, &a.key)?;
                    for (n, (name, l, r)) in changes.iter().enumerate() {
                        out.write_all(if n == 0 { b" " } else { b"; " })?;
                        write_field_name(out, name)?;
                        out.write_all(b": ")?;
                        write_opt(out, *l)?;
                        out.write_all(b" -> ")?;
                        write_opt(out, *r)?;
                    }
                    out.write_all(b"\n")?;
                    sum.changed += 1;
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(sum)
}

fn in_key_order(rows: &[Keyed]) -> Vec<&Keyed> {
    let mut v: Vec<&Keyed> = rows.iter().collect();
    if !rows.is_sorted_by(|a, b| a.key <= b.key) {
        v.sort_by(|a, b| a.key.cmp(&b.key));
    }
    v
}

/// The fields of a matched pair that differ, in sorted order, with each side's value.
fn changed_fields<'a>(
    a: &'a Keyed,
    b: &'a Keyed,
    opts: &Options,
) -> Vec<(&'a str, Option<&'a Value>, Option<&'a Value>)> {
    let mut names: Vec<&str> = a
        .fields
        .keys()
        .chain(b.fields.keys())
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let (l, r) = (a.fields.get(name), b.fields.get(name));
        if (l.is_none() || r.is_none()) && opts.key_fields.iter().any(|k| k == name) {
            continue;
        }
        if !opt_eq(l, r, opts.tolerance) {
            out.push((name, l, r));
        }
    }
    out
}

fn write_whole(out: &mut dyn Write, sign: char, row: &Keyed) -> io::Result<()> {
    write!(out, "{sign} ")?;
    write_json(out, &row.key)?;
    out.write_all(b" ")?;
    write_json(out, &row.fields)?;
    out.write_all(b"\n")
}

fn write_opt(out: &mut dyn Write, v: Option<&Value>) -> io::Result<()> {
    match v {
        Some(v) => write_json(out, v),
        None => out.write_all(b"(absent)"),
    }
}

/// Plain names stay bare as in `avg: 1 -> 2`; any other name is JSON text so separators
/// inside it cannot be misread.
fn write_field_name(out: &mut dyn Write, name: &str) -> io::Result<()> {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        out.write_all(name.as_bytes())
    } else {
        write_json(out, name)
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut dyn Write, v: &T) -> io::Result<()> {
    serde_json::to_writer(out, v).map_err(io::Error::from)
}

/// A string as JSON text, for error messages.
fn json_text(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// An absent value equals null (and so an empty string) on the other side.
fn opt_eq(a: Option<&Value>, b: Option<&Value>, tol: f64) -> bool {
    const NULL: Value = Value::Null;
    loose_eq(a.unwrap_or(&NULL), b.unwrap_or(&NULL), tol)
}

/// The loose equality of the module doc.
fn loose_eq(a: &Value, b: &Value, tol: f64) -> bool {
    use Value::*;
    match (a, b) {
        (Null, Null) => true,
        (Null, String(s)) | (String(s), Null) => s.is_empty(),
        (Bool(x), Bool(y)) => x == y,
        (Bool(x), String(s)) | (String(s), Bool(x)) => s == if *x { "true" } else { "false" },
        (Number(x), Number(y)) => num_eq(json_num(x), json_num(y), tol),
        (Number(x), String(s)) | (String(s), Number(x)) => {
            str_num(s).is_some_and(|n| num_eq(json_num(x), n, tol))
        }
        (String(x), String(y)) => x == y,
        (String(s), other @ (Object(_) | Array(_)))
        | (other @ (Object(_) | Array(_)), String(s)) => {
            serde_json::from_str::<Value>(s).is_ok_and(|v| loose_eq(&v, other, tol))
        }
        (Array(x), Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| loose_eq(p, q, tol))
        }
        (Object(x), Object(y)) => {
            x.iter().all(|(k, v)| opt_eq(Some(v), y.get(k), tol))
                && y.iter()
                    .filter(|(k, _)| !x.contains_key(*k))
                    .all(|(_, v)| opt_eq(None, Some(v), tol))
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn to_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

fn json_num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i.into())
    } else if let Some(u) = n.as_u64() {
        Num::Int(u.into())
    } else {
        // NaN never equals anything; serde_json numbers are finite, so this is only a guard.
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// A string's number: an integer exactly when it is integer text, else a finite float
/// ("inf" and "NaN" are words here, not numbers).
fn str_num(s: &str) -> Option<Num> {
    if let Ok(i) = s.parse::<i128>() {
        return Some(Num::Int(i));
    }
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Num::Float)
}

/// Beyond 2^53 adjacent integers share a float, so a tolerance there would hide real changes
/// (an id off by one).
const EXACT_ABOVE: u128 = 1 << 53;

fn num_eq(a: Num, b: Num, tol: f64) -> bool {
    if let (Num::Int(x), Num::Int(y)) = (a, b) {
        if x == y {
            return true;
        }
        if x.unsigned_abs() > EXACT_ABOVE || y.unsigned_abs() > EXACT_ABOVE {
            return false;
        }
    }
    let (x, y) = (a.to_f64(), b.to_f64());
    x == y || (x - y).abs() <= tol * 1f64.max(x.abs()).max(y.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::store::Row;
    use serde_json::json;

    fn opts(tol: f64, keys: &[&str]) -> Options {
        Options {
            tolerance: tol,
            key_fields: keys.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        (dir, path)
    }

    fn table(rows: &[(&str, &str)]) -> Vec<Keyed> {
        let rows: Vec<Row> = rows
            .iter()
            .map(|(k, v)| Row {
                key: k,
                value: v.as_bytes(),
            })
            .collect();
        from_table(&rows).unwrap()
    }

    fn run(left: &[Keyed], right: &[Keyed], o: &Options) -> (Summary, String) {
        let mut out = Vec::new();
        let s = diff(left, right, o, ("L", "R"), &mut out).unwrap();
        (s, String::from_utf8(out).unwrap())
    }

    fn eq(a: Value, b: Value, tol: f64) -> bool {
        loose_eq(&a, &b, tol) && loose_eq(&b, &a, tol)
    }

    fn err_text(r: Result<Vec<Keyed>>) -> (i32, String) {
        match r {
            Err(e) => (e.exit_code(), e.to_string()),
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    #[test]
    fn csv_cells_equal_typed_json() {
        let t = table(&[
            (
                "a",
                r#"{"key":"a","n":3,"avg":81.5,"ok":true,"off":false,"note":null,"pos":{"x":1,"y":[2,"z"]},"tags":[]}"#,
            ),
            ("b", r#"{"key":"b","n":-0.25,"ok":false,"big":1e3}"#),
        ]);
        let (_d, p) = file(
            "exp.csv",
            "key,n,avg,ok,off,note,pos,tags,big\n\
             a,3,81.5,true,false,,\"{\"\"x\"\":1.0,\"\"y\"\":[2,\"\"z\"\"]}\",[],\n\
             b,-0.25,,false,,,,,1000\n",
        );
        let e = read_expected(&p, &keys(&["key"])).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].fields["n"], json!("3"));
        let (s, out) = run(&t, &e, &opts(0.0, &["key"]));
        assert_eq!(out, "");
        assert_eq!(
            s,
            Summary {
                same: 2,
                ..Summary::default()
            }
        );
        assert!(!s.differs());
    }

    #[test]
    fn loose_rules() {
        assert!(eq(json!(1), json!("1.0"), 0.0));
        assert!(eq(json!(1.5), json!("1.5e0"), 0.0));
        assert!(!eq(json!(1), json!("1.0x"), 1.0));
        assert!(!eq(json!(1), json!("inf"), 1.0));
        assert!(!eq(json!(1e308), json!("inf"), 1.0));
        assert!(!eq(json!(1), json!("NaN"), 1.0));
        assert!(eq(json!(true), json!("true"), 0.0));
        assert!(!eq(json!(true), json!("True"), 0.0));
        assert!(!eq(json!(true), json!("1"), 0.0));
        assert!(!eq(json!(1), json!(true), 0.0));
        assert!(eq(json!(null), json!(""), 0.0));
        assert!(!eq(json!(null), json!("null"), 0.0));
        assert!(!eq(json!(null), json!(0), 0.0));
        assert!(eq(json!({"a": 1, "b": null}), json!({"a": "1"}), 0.0));
        assert!(eq(
            json!({"a": [1, {"b": "x"}]}),
            json!(r#"{"a":["1",{"b":"x"}]}"#),
            0.0
        ));
        assert!(!eq(json!([1, 2]), json!([1, 2, 3]), 0.0));
        assert!(!eq(json!([1]), json!("[1"), 0.0));
        assert!(!eq(json!("1"), json!("1.0"), 1.0));
        assert!(opt_eq(None, Some(&json!("")), 0.0));
        assert!(opt_eq(Some(&json!(null)), None, 0.0));
        assert!(!opt_eq(None, Some(&json!(0)), 0.0));
    }

    #[test]
    fn tolerance_is_relative_for_large_and_absolute_for_small() {
        let t = 1e-9;
        // Large: 1e-9 of 1e12 is 1000.
        assert!(eq(json!(1e12), json!(1e12 + 999.0), t));
        assert!(eq(json!(1e12), json!("1000000001000"), t));
        assert!(!eq(json!(1e12), json!(1e12 + 1001.0), t));
        // Small: below 1 the allowance is the tolerance itself.
        assert!(eq(json!(0.0), json!(1e-9), t));
        assert!(eq(json!(1e-20), json!("-9e-10"), t));
        assert!(!eq(json!(0.0), json!(2e-9), t));
        assert!(!eq(json!(0.5), json!(0.5 + 2e-9), t));
        // Zero is exact.
        assert!(eq(json!(0.1), json!("0.1"), 0.0));
        assert!(!eq(json!(0.1), json!(0.1 + 1e-16), 0.0));
        assert!(eq(json!(0.0), json!(-0.0), 0.0));
        // Beyond 2^53 integers are exact whatever the tolerance.
        let big: u64 = (1 << 60) + 1;
        assert!(!eq(json!(big), json!(big - 1), 0.1));
        assert!(eq(json!(big), json!(big.to_string()), 0.0));
        assert!(!eq(json!(big), json!((big + 1).to_string()), 0.1));
        assert!(eq(json!(u64::MAX), json!("18446744073709551615"), 0.0));
        assert!(eq(json!(i64::MIN), json!("-9223372036854775808"), 0.0));
        // Small integers still get the tolerance.
        assert!(eq(json!(100), json!(101), 0.01));
        assert!(!eq(json!(100), json!(102), 0.01));
    }

    #[test]
    fn counts_and_output_text() {
        let l = table(&[
            ("truck-1", r#"{"avg":1,"n":2}"#),
            ("truck-3", r#"{"avg":81.5,"n":3}"#),
            ("truck-9", r#"{"n":3,"avg":1.5}"#),
            ("weird \"key\"|x", r#"{"a b":1,"ok":true}"#),
        ]);
        let (_d, p) = file(
            "exp.ndjson",
            "{\"id\":\"truck-1\",\"avg\":1.0,\"n\":\"2\"}\n\
             \n\
             {\"id\":\"truck-3\",\"avg\":82.0,\"x\":null}\r\n\
             {\"id\":\"truck-99\",\"avg\":2}\n\
             {\"id\":\"weird \\\"key\\\"|x\",\"a b\":2,\"ok\":\"true\"}\n",
        );
        let r = read_expected(&p, &keys(&["id"])).unwrap();
        let (s, out) = run(&l, &r, &opts(1e-9, &["id"]));
        assert_eq!(
            out,
            "--- L\n+++ R\n\
             ~ \"truck-3\" avg: 81.5 -> 82.0; n: 3 -> (absent)\n\
             - \"truck-9\" {\"avg\":1.5,\"n\":3}\n\
             + \"truck-99\" {\"avg\":2,\"id\":\"truck-99\"}\n\
             ~ \"weird \\\"key\\\"|x\" \"a b\": 1 -> 2\n"
        );
        assert_eq!(
            s,
            Summary {
                only_left: 1,
                only_right: 1,
                changed: 2,
                same: 1
            }
        );
        assert!(s.differs());

        // Swapped sides swap the signs and arrows.
        let (s, out) = run(&r, &l, &opts(1e-9, &["id"]));
        assert_eq!((s.only_left, s.only_right, s.changed), (1, 1, 2));
        assert!(out.contains("~ \"truck-3\" avg: 82.0 -> 81.5; n: (absent) -> 3\n"));
        assert!(out.contains("+ \"truck-9\" {\"avg\":1.5,\"n\":3}\n"));
    }

    #[test]
    fn key_fields_compare_only_when_both_sides_have_them() {
        let l = table(&[("a", r#"{"v":1}"#), ("b", r#"{"id":"x","v":1}"#)]);
        let r = table(&[("a", r#"{"id":"a","v":1}"#), ("b", r#"{"id":"b","v":1}"#)]);
        let (s, out) = run(&l, &r, &opts(0.0, &["id"]));
        assert_eq!((s.same, s.changed), (1, 1));
        assert_eq!(out, "--- L\n+++ R\n~ \"b\" id: \"x\" -> \"b\"\n");
        // Not a key field: an absent field is a difference.
        let (s, _) = run(&l, &r, &opts(0.0, &["key"]));
        assert_eq!(s.changed, 2);
    }

    #[test]
    fn identical_inputs_print_nothing() {
        let l = table(&[("a", "1"), ("b", r#"{"x":[1,2]}"#)]);
        let (s, out) = run(&l, &l, &opts(0.0, &["key"]));
        assert_eq!(out, "");
        assert_eq!(s.same, 2);
        let (s, out) = run(&[], &[], &opts(0.0, &["key"]));
        assert_eq!((s, out.as_str()), (Summary::default(), ""));
    }

    #[test]
    fn unsorted_inputs_are_still_matched() {
        let mut l = table(&[("a", "1"), ("b", "2"), ("c", "3")]);
        l.reverse();
        let r = table(&[("a", "1"), ("b", "2"), ("c", "4")]);
        let (s, out) = run(&l, &r, &opts(0.0, &[]));
        assert_eq!((s.same, s.changed), (2, 1));
        assert_eq!(out, "--- L\n+++ R\n~ \"c\" value: 3 -> 4\n");
    }

    #[test]
    fn non_object_value_is_field_value() {
        let t = table(&[
            ("k1", "42"),
            ("k2", r#""hi""#),
            ("k3", "[1,2]"),
            ("k4", "null"),
        ]);
        assert_eq!(
            t[0].fields,
            json!({"value": 42}).as_object().unwrap().clone()
        );
        assert_eq!(t[1].fields["value"], json!("hi"));
        let (_d, p) = file("e.csv", "key,value\nk1,42.0\nk2,hi\nk3,\"[1, 2]\"\nk4,\n");
        let e = read_expected(&p, &keys(&["key"])).unwrap();
        let (s, out) = run(&t, &e, &opts(0.0, &["key"]));
        assert_eq!((s.same, out.as_str()), (4, ""));
        let (s, out) = run(&t[..1], &[], &opts(0.0, &["key"]));
        assert_eq!(s.only_left, 1);
        assert_eq!(out, "--- L\n+++ R\n- \"k1\" {\"value\":42}\n");
    }

    #[test]
    fn invalid_table_json_names_the_key() {
        let rows = [Row {
            key: "k\"1",
            value: b"{\"a\":",
        }];
        match from_table(&rows) {
            Err(e @ Error::Data(_)) => {
                assert!(e.to_string().contains(r#"key "k\"1""#), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn multi_field_keys_join_with_bar() {
        let (_d, p) = file(
            "e.ndjson",
            "{\"site\":\"s1\",\"n\":7,\"on\":true,\"v\":1}\n{\"site\":\"s0\",\"n\":7.5,\"on\":false}\n",
        );
        let e = read_expected(&p, &keys(&["site", "n", "on"])).unwrap();
        let ks: Vec<&str> = e.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(ks, ["s0|7.5|false", "s1|7|true"]);

        let (_d2, p) = file("e.csv", "n,site\n7,s1\n8,s0\n");
        let e = read_expected(&p, &keys(&["site", "n"])).unwrap();
        let ks: Vec<&str> = e.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(ks, ["s0|8", "s1|7"]);
    }

    #[test]
    fn sorted_by_key_bytes() {
        let (_d, p) = file("e.csv", "k\nb\nB\na\nä\n\"\"\n");
        let e = read_expected(&p, &keys(&["k"])).unwrap();
        let ks: Vec<&str> = e.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(ks, ["", "B", "a", "b", "ä"]);
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let (_d, p) = file("e.csv", "k,v\na,1\nb,2\nb,3\na,4\n");
        let (code, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert_eq!(code, 1);
        assert_eq!(
            msg,
            format!(
                "{}: line 4: key \"b\" appears twice (first on line 3)",
                p.display()
            )
        );
        let (_d2, p) = file("e.ndjson", "{\"k\":1}\n\n{\"k\":\"1\"}\n");
        let (_, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert!(msg.ends_with(": line 3: key \"1\" appears twice (first on line 1)"));
    }

    #[test]
    fn missing_key_field_is_an_error() {
        let (_d, p) = file("e.ndjson", "{\"k\":\"a\"}\n{\"j\":\"b\"}\n");
        let (code, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert_eq!(code, 1);
        assert_eq!(msg, format!("{}: line 2: no key field \"k\"", p.display()));

        let (_d2, p) = file("e.ndjson", "{\"k\":null}\n");
        let (_, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert!(msg.ends_with(": line 1: no key field \"k\""), "{msg}");

        let (_d3, p) = file("e.csv", "a,b\n1,2\n");
        let (_, msg) = err_text(read_expected(&p, &keys(&["a", "k"])));
        assert_eq!(msg, format!("{}: line 1: no key field \"k\"", p.display()));
    }

    #[test]
    fn bad_ndjson_lines() {
        let (_d, p) = file("e.ndjson", "{\"k\":1}\n[1,2]\n");
        let (code, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert_eq!(code, 1);
        assert_eq!(
            msg,
            format!("{}: line 2: expected a JSON object", p.display())
        );
        let (_d2, p) = file("e.ndjson", "\n\n{\"k\":1,}\n");
        let (_, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert!(msg.contains(": line 3: invalid JSON at column "), "{msg}");
        assert!(!msg.contains("at line 1"), "{msg}");
        let (_d3, p) = file("e.ndjson", "\u{feff}{\"k\":1}\n  \n");
        assert_eq!(read_expected(&p, &keys(&["k"])).unwrap().len(), 1);
    }

    #[test]
    fn bad_csv_rows() {
        let (_d, p) = file("e.csv", "k,v\na,1\nb\n");
        let (code, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert_eq!(code, 1);
        assert_eq!(
            msg,
            format!(
                "{}: line 3: CSV row has 1 fields, the header has 2",
                p.display()
            )
        );
        let (_d2, p) = file("e.csv", "k,v,k\n");
        let (_, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert!(
            msg.ends_with(": line 1: column \"k\" appears twice"),
            "{msg}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.csv");
        std::fs::write(&p, b"k,v\na,\xff\n").unwrap();
        let (_, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert!(msg.contains("line 2: invalid UTF-8"), "{msg}");
        // A header only, or nothing at all: no rows.
        let (_d3, p) = file("e.csv", "\u{feff}k,v\n");
        assert!(read_expected(&p, &keys(&["k"])).unwrap().is_empty());
        let (_d4, p) = file("e.csv", "");
        assert!(read_expected(&p, &keys(&["k"])).unwrap().is_empty());
    }

    #[test]
    fn unreadable_file_is_a_setup_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing.csv");
        let (code, msg) = err_text(read_expected(&p, &keys(&["k"])));
        assert_eq!(code, 2);
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");
        let (code, _) = err_text(read_expected(&p, &[]));
        assert_eq!(code, 2);
    }
}
