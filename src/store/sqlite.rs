//! `store export --sqlite`: writes a keyed table into a real SQLite database file, so BI tools
//! and scripts can query it with SQL. This module owns the mapping from JSON values to typed
//! SQL columns and the atomic replacement of the table in the file.
//!
//! Rules:
//!
//! - Columns: the key column first (`TEXT PRIMARY KEY`), then the union of the values'
//!   top-level field names in order of first appearance over the rows (rows come sorted by
//!   key, so the order is deterministic). A value field with the same name as the key column
//!   is skipped: the table key wins. A value that is not an object goes to a column named
//!   `value` (an error when the key column itself is named `value`). When a field appears
//!   twice in one object, the last one counts.
//! - SQL column names ignore ASCII case, JSON field names do not: a field whose name differs
//!   from an earlier column only in case gets the suffix `_2` (or `_3`, ...). A NUL character
//!   in a field name, which SQL text cannot hold, becomes U+FFFD.
//! - Column types come from the data: `INTEGER` when every non-null value of the column is a
//!   JSON integer that fits a signed 64-bit integer or a boolean (stored 0/1); `REAL` when
//!   every non-null value is a number (integers are stored as REAL then); `TEXT` otherwise:
//!   strings as their text, objects, arrays, and numbers or booleans mixed with strings as
//!   their compact JSON text. A number too large for a double counts as text. A column with
//!   only nulls is `TEXT`. Absent fields and JSON null are SQL NULL. Identifiers are quoted
//!   with double quotes, so any field name works.
//! - Atomic replacement: one transaction drops the table if it exists, creates it and
//!   inserts the rows. Other tables in the file are left alone, and a reader sees either the
//!   old table or the new one.
//! - Errors: a value that is not valid JSON is a data error naming its key (exit 1), checked
//!   before the file is touched. Failing to open or create the database file is a setup
//!   error (exit 2); any other SQLite failure (disk full, a view in the way...) is a data
//!   error `FILE: sqlite: MESSAGE` (exit 1).
//!
//! Every value is parsed once, into borrowed slices of its fields; the conversion to SQL
//! values happens while binding, so memory stays a small multiple of the field count.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rustc_hash::FxHashMap;
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::Row;
use crate::error::{data, setup, usage};

/// The column a value that is not an object goes to.
const VALUE_COLUMN: &str = "value";

/// Writes `rows` (sorted by key, keys unique) into table `table` of the SQLite database at
/// `path` (created if missing). Returns the number of rows written.
pub fn export(path: &Path, table: &str, key_column: &str, rows: &[Row<'_>]) -> crate::Result<u64> {
    // SQL text ends at a NUL, so such a name could not be quoted.
    if table.contains('\0') || key_column.contains('\0') {
        return Err(usage(
            "sqlite export: table and key column names cannot contain NUL",
        ));
    }
    // Parse everything before touching the file: bad data leaves the database as it was.
    let parsed = parse(key_column, rows)?;
    let types = parsed.column_types();
    let names = column_names(key_column, &parsed.columns);

    let sqlite = |e: rusqlite::Error| data(format!("{}: sqlite: {e}", path.display()));
    let mut conn = open(path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite)?;
    let t = quote(table);
    tx.execute(&format!("DROP TABLE IF EXISTS {t}"), [])
        .map_err(sqlite)?;
    let mut create = format!("CREATE TABLE {t} ({} TEXT PRIMARY KEY", quote(key_column));
    let mut insert = format!("INSERT INTO {t} VALUES (?1");
    for (i, (name, ty)) in names.iter().zip(&types).enumerate() {
        create.push_str(&format!(", {} {}", quote(name), ty));
        insert.push_str(&format!(", ?{}", i + 2));
    }
    create.push(')');
    insert.push(')');
    tx.execute(&create, []).map_err(sqlite)?;
    {
        let mut stmt = tx.prepare(&insert).map_err(sqlite)?;
        let mut slots: Vec<Option<&Entry<'_>>> = vec![None; types.len()];
        let mut start = 0;
        for (row, &end) in rows.iter().zip(&parsed.ends) {
            slots.fill(None);
            for e in parsed.entries.get(start..end).unwrap_or_default() {
                if let Some(slot) = slots.get_mut(e.col as usize) {
                    *slot = Some(e);
                }
            }
            start = end;
            // Every parameter is bound on every row: bindings outlive a statement reset.
            stmt.raw_bind_parameter(1, row.key).map_err(sqlite)?;
            for (i, (slot, &ty)) in slots.iter().zip(&types).enumerate() {
                let idx = i + 2;
                match slot.map(|e| sql_value(ty, e)) {
                    None | Some(SqlValue::Null) => {
                        stmt.raw_bind_parameter(idx, rusqlite::types::Null)
                    }
                    Some(SqlValue::Integer(v)) => stmt.raw_bind_parameter(idx, v),
                    Some(SqlValue::Real(v)) => stmt.raw_bind_parameter(idx, v),
                    Some(SqlValue::Text(v)) => stmt.raw_bind_parameter(idx, &*v),
                }
                .map_err(sqlite)?;
            }
            stmt.raw_execute().map_err(sqlite)?;
        }
    }
    tx.commit().map_err(sqlite)?;
    Ok(rows.len() as u64)
}

/// Opens (or creates) the database, and makes sure it is a writable SQLite file, so that
/// every failure to get at the file is a setup error rather than one found mid-work.
fn open(path: &Path) -> crate::Result<Connection> {
    let fail = |e: &dyn fmt::Display| setup(format!("{}: sqlite: {e}", path.display()));
    // No SQLITE_OPEN_URI: a file named `file:...` is a file, not a URI with options.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| fail(&e))?;
    // SQLite reads the header lazily: a file that is not a database shows up here.
    conn.pragma_query_value(None, "schema_version", |r| r.get::<_, i64>(0))
        .map_err(|e| fail(&e))?;
    // A write-protected file is silently opened read-only.
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(|e| fail(&e))? {
        return Err(fail(&"the file is read-only"));
    }
    Ok(conn)
}

/// What a field's JSON text is, found while parsing; the SQL value is made from the text
/// when binding, once the column's type is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    True,
    False,
    /// An integer that fits i64.
    Int,
    /// Any other finite number.
    Real,
    /// A string without escapes: its text is the slice between the quotes.
    Str,
    /// A string with escapes.
    EscStr,
    /// An object or an array.
    Nested,
    /// A number beyond the range of a double: kept as its JSON text.
    BigNum,
}

/// One field of one row: its column and its JSON text (no surrounding whitespace).
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    col: u32,
    kind: Kind,
    raw: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SqlType {
    Integer,
    Real,
    Text,
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SqlType::Integer => "INTEGER",
            SqlType::Real => "REAL",
            SqlType::Text => "TEXT",
        })
    }
}

enum SqlValue<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(Cow<'a, str>),
}

/// The SQL value of field `e` in a column of type `ty`.
fn sql_value<'a>(ty: SqlType, e: &Entry<'a>) -> SqlValue<'a> {
    match (ty, e.kind) {
        (_, Kind::Null) => SqlValue::Null,
        (SqlType::Integer, Kind::True) => SqlValue::Integer(1),
        (SqlType::Integer, Kind::False) => SqlValue::Integer(0),
        (SqlType::Integer, Kind::Int) => match e.raw.parse() {
            Ok(v) => SqlValue::Integer(v),
            // Not reached: `Kind::Int` means it parsed as i64.
            Err(_) => SqlValue::Text(Cow::Borrowed(e.raw)),
        },
        (SqlType::Real, Kind::Int | Kind::Real) => match e.raw.parse() {
            Ok(v) => SqlValue::Real(v),
            // Not reached: both kinds parsed as finite f64.
            Err(_) => SqlValue::Text(Cow::Borrowed(e.raw)),
        },
        (_, Kind::Str | Kind::EscStr) => SqlValue::Text(unescape(e.raw)),
        (_, Kind::Nested) => SqlValue::Text(compact(e.raw)),
        // Numbers and booleans in a text column, and anything a column type did not
        // foresee, are their JSON text.
        _ => SqlValue::Text(Cow::Borrowed(e.raw)),
    }
}

/// The kind of a field's JSON text, which serde_json has validated.
fn classify(raw: &str) -> Kind {
    match raw.as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b't') => Kind::True,
        Some(b'f') => Kind::False,
        Some(b'"') if raw.contains('\\') => Kind::EscStr,
        Some(b'"') => Kind::Str,
        Some(b'{' | b'[') => Kind::Nested,
        _ => {
            let integer = !raw.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
            // serde_json reads `-0` as a float; so does this.
            if integer && raw != "-0" && raw.parse::<i64>().is_ok() {
                Kind::Int
            } else if raw.parse::<f64>().is_ok_and(f64::is_finite) {
                Kind::Real
            } else {
                Kind::BigNum
            }
        }
    }
}

/// The values split into fields, with their columns.
struct Parsed<'a> {
    /// Field names in order of first appearance.
    columns: Vec<Cow<'a, str>>,
    /// Every row's fields, row after row.
    entries: Vec<Entry<'a>>,
    /// Where each row's fields end in `entries`.
    ends: Vec<usize>,
}

impl Parsed<'_> {
    fn column_types(&self) -> Vec<SqlType> {
        #[derive(Clone, Copy, Default)]
        struct Seen {
            int: bool,
            boolean: bool,
            real: bool,
            text: bool,
        }
        let mut seen = vec![Seen::default(); self.columns.len()];
        for e in &self.entries {
            if let Some(s) = seen.get_mut(e.col as usize) {
                match e.kind {
                    Kind::Null => {}
                    Kind::True | Kind::False => s.boolean = true,
                    Kind::Int => s.int = true,
                    Kind::Real => s.real = true,
                    Kind::Str | Kind::EscStr | Kind::Nested | Kind::BigNum => s.text = true,
                }
            }
        }
        seen.iter()
            .map(|s| {
                // Booleans are integers to SQLite but not numbers to JSON.
                if s.text || (s.real && s.boolean) {
                    SqlType::Text
                } else if s.real {
                    SqlType::Real
                } else if s.int || s.boolean {
                    SqlType::Integer
                } else {
                    SqlType::Text
                }
            })
            .collect()
    }
}

/// Collects the fields of one row after another.
struct Builder<'a> {
    key_column: &'a str,
    parsed: Parsed<'a>,
    index: FxHashMap<Cow<'a, str>, u32>,
    /// Per column: 1 + the number of the last row that had it, to find repeated fields.
    stamp: Vec<usize>,
    /// The previous row's columns in field order: rows mostly share their layout, and a
    /// string comparison is cheaper than a hash lookup.
    prev: Vec<u32>,
    cur: Vec<u32>,
}

impl<'a> Builder<'a> {
    fn column(&mut self, name: Cow<'a, str>) -> u32 {
        let predicted = self.prev.get(self.cur.len()).copied().filter(|&c| {
            self.parsed
                .columns
                .get(c as usize)
                .is_some_and(|n| *n == name)
        });
        let col = match predicted {
            Some(c) => c,
            None => match self.index.get(&*name) {
                Some(&c) => c,
                None => {
                    // SQLite refuses a table with over 32767 columns long before this could wrap.
                    let c = self.parsed.columns.len() as u32;
                    self.parsed.columns.push(name.clone());
                    self.index.insert(name, c);
                    self.stamp.push(0);
                    c
                }
            },
        };
        self.cur.push(col);
        col
    }

    fn field(&mut self, name: Cow<'a, str>, raw: &'a str) {
        if name == self.key_column {
            return;
        }
        let col = self.column(name);
        let kind = classify(raw);
        let row = self.parsed.ends.len() + 1;
        let start = self.parsed.ends.last().copied().unwrap_or(0);
        if let Some(stamp) = self.stamp.get_mut(col as usize) {
            if *stamp == row {
                let fields = self.parsed.entries.get_mut(start..).unwrap_or_default();
                if let Some(e) = fields.iter_mut().find(|e| e.col == col) {
                    e.kind = kind;
                    e.raw = raw;
                }
                return;
            }
            *stamp = row;
        }
        self.parsed.entries.push(Entry { col, kind, raw });
    }

    fn end_row(&mut self) {
        self.parsed.ends.push(self.parsed.entries.len());
        std::mem::swap(&mut self.prev, &mut self.cur);
        self.cur.clear();
    }
}

fn parse<'a>(key_column: &'a str, rows: &[Row<'a>]) -> crate::Result<Parsed<'a>> {
    let mut b = Builder {
        key_column,
        parsed: Parsed {
            columns: Vec::new(),
            entries: Vec::new(),
            ends: Vec::with_capacity(rows.len()),
        },
        index: FxHashMap::default(),
        stamp: Vec::new(),
        prev: Vec::new(),
        cur: Vec::new(),
    };
    for row in rows {
        let bad = |e: &dyn fmt::Display| {
            data(format!(
                "sqlite export: key {:?}: value is not valid JSON: {e}",
                row.key
            ))
        };
        // One UTF-8 check for the whole value: a slice reader would check every field again.
        let text = std::str::from_utf8(row.value).map_err(|e| bad(&e))?;
        let first = text
            .bytes()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first == Some(b'{') {
            let mut de = serde_json::Deserializer::from_str(text);
            serde::Deserializer::deserialize_map(&mut de, Fields(&mut b)).map_err(|e| bad(&e))?;
            de.end().map_err(|e| bad(&e))?;
        } else {
            let raw: &RawValue = serde_json::from_str(text).map_err(|e| bad(&e))?;
            if key_column == VALUE_COLUMN {
                return Err(usage(format!(
                    "sqlite export: key {:?}: the value is not an object, and its column \
                     `{VALUE_COLUMN}` is taken by the key column; choose another key column name",
                    row.key
                )));
            }
            b.field(Cow::Borrowed(VALUE_COLUMN), raw.get());
        }
        b.end_row();
    }
    Ok(b.parsed)
}

/// Hands the top-level fields of an object to the builder without building a tree.
struct Fields<'b, 'a>(&'b mut Builder<'a>);

impl<'de> Visitor<'de> for Fields<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key_seed(Name)? {
            let raw: &'de RawValue = map.next_value()?;
            self.0.field(name, raw.get());
        }
        Ok(())
    }
}

/// A field name, borrowed from the input unless it has escapes (serde's own `Cow` always
/// copies).
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// SQL names for the value columns: unique among themselves and the key column under
/// SQLite's ASCII case folding, and free of NUL.
fn column_names(key_column: &str, columns: &[Cow<'_, str>]) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::new();
    taken.insert(key_column.to_ascii_lowercase());
    columns
        .iter()
        .map(|c| {
            let base = c.replace('\0', "\u{FFFD}");
            let mut name = base.clone();
            let mut n = 2u64;
            while !taken.insert(name.to_ascii_lowercase()) {
                name = format!("{base}_{n}");
                n += 1;
            }
            name
        })
        .collect()
}

/// A double-quoted SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The text of a JSON string literal, quotes included, that serde_json has validated. An
/// escaped lone surrogate, which UTF-8 cannot hold, becomes U+FFFD.
fn unescape(raw: &str) -> Cow<'_, str> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(raw);
    let Some(first) = inner.find('\\') else {
        return Cow::Borrowed(inner);
    };
    let mut out = String::with_capacity(inner.len());
    let (head, mut rest) = inner.split_at(first);
    out.push_str(head);
    // `rest` starts at a backslash here.
    while let Some(after) = rest.strip_prefix('\\') {
        let mut chars = after.chars();
        let consumed = match chars.next() {
            Some('u') => match hex4(after.get(1..5)) {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let lo = after
                        .get(5..7)
                        .filter(|s| *s == "\\u")
                        .and_then(|_| hex4(after.get(7..11)))
                        .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
                    match lo {
                        Some(lo) => {
                            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                            11
                        }
                        None => {
                            out.push('\u{FFFD}');
                            5
                        }
                    }
                }
                Some(c) => {
                    out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                    5
                }
                // Not reached after validation; keep the text as it is.
                None => {
                    out.push('\\');
                    0
                }
            },
            Some(c) => {
                out.push(match c {
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    // `"`, `\` and `/` stand for themselves.
                    other => other,
                });
                c.len_utf8()
            }
            None => {
                out.push('\\');
                0
            }
        };
        let tail = after.get(consumed..).unwrap_or_default();
        let next = tail.find('\\').unwrap_or(tail.len());
        let (plain, more) = tail.split_at(next);
        out.push_str(plain);
        rest = more;
    }
    Cow::Owned(out)
}

/// The value of exactly four hex digits.
fn hex4(s: Option<&str>) -> Option<u32> {
    let s = s?;
    if s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Valid JSON text without the whitespace between tokens; the key order and the spelling of
/// numbers and escapes stay as stored.
fn compact(raw: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut start = 0;
    let (mut in_string, mut escaped) = (false, false);
    for (i, b) in raw.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b' ' | b'\t' | b'\n' | b'\r' => {
                let o = out.get_or_insert_with(|| String::with_capacity(raw.len()));
                // `start` and `i` sit next to ASCII bytes, so both are char boundaries.
                o.push_str(raw.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    match out {
        None => Cow::Borrowed(raw),
        Some(mut o) => {
            o.push_str(raw.get(start..).unwrap_or_default());
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value;

    fn rows<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<Row<'a>> {
        pairs
            .iter()
            .map(|(k, v)| Row {
                key: k,
                value: v.as_bytes(),
            })
            .collect()
    }

    fn export_pairs(path: &Path, table: &str, pairs: &[(&str, &str)]) -> crate::Result<u64> {
        export(path, table, "key", &rows(pairs))
    }

    /// (name, declared type) of every column.
    fn schema(conn: &Connection, table: &str) -> Vec<(String, String)> {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({})", quote(table)))
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// (typeof, value) of one column, in key order.
    fn column(conn: &Connection, table: &str, col: &str) -> Vec<(String, Value)> {
        let c = quote(col);
        let sql = format!(
            "SELECT typeof({c}), {c} FROM {} ORDER BY \"key\"",
            quote(table)
        );
        let mut stmt = conn.prepare(&sql).unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn text(s: &str) -> (String, Value) {
        ("text".into(), Value::Text(s.into()))
    }
    fn int(v: i64) -> (String, Value) {
        ("integer".into(), Value::Integer(v))
    }
    fn real(v: f64) -> (String, Value) {
        ("real".into(), Value::Real(v))
    }
    fn null() -> (String, Value) {
        ("null".into(), Value::Null)
    }

    fn decls(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn column_types_from_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let n = export_pairs(
            &db,
            "t",
            &[
                (
                    "a",
                    r#"{"i":1,"b":true,"r":1,"s":"x","m":1,"n":null,"bf":true,"big":1}"#,
                ),
                (
                    "b",
                    r#"{"i":-2,"b":false,"r":2.5,"s":"y","m":"z","n":null,"bf":1.5,"big":18446744073709551615}"#,
                ),
                ("c", r#"{"i":3,"b":true,"r":-0,"m":true}"#),
            ],
        )
        .unwrap();
        assert_eq!(n, 3);
        let conn = Connection::open(&db).unwrap();
        assert_eq!(
            schema(&conn, "t"),
            decls(&[
                ("key", "TEXT"),
                ("i", "INTEGER"),
                ("b", "INTEGER"),
                ("r", "REAL"),
                ("s", "TEXT"),
                ("m", "TEXT"),
                ("n", "TEXT"),
                ("bf", "TEXT"),
                ("big", "REAL"),
            ])
        );
        assert_eq!(column(&conn, "t", "i"), [int(1), int(-2), int(3)]);
        assert_eq!(column(&conn, "t", "b"), [int(1), int(0), int(1)]);
        assert_eq!(column(&conn, "t", "r"), [real(1.0), real(2.5), real(-0.0)]);
        assert_eq!(column(&conn, "t", "s"), [text("x"), text("y"), null()]);
        assert_eq!(
            column(&conn, "t", "m"),
            [text("1"), text("z"), text("true")]
        );
        assert_eq!(column(&conn, "t", "n"), [null(), null(), null()]);
        assert_eq!(
            column(&conn, "t", "bf"),
            [text("true"), text("1.5"), null()]
        );
        assert_eq!(
            column(&conn, "t", "big"),
            [real(1.0), real(18446744073709551615.0), null()]
        );
        assert_eq!(column(&conn, "t", "key"), [text("a"), text("b"), text("c")]);
    }

    #[test]
    fn nulls_nested_values_and_strings() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        export_pairs(
            &db,
            "t",
            &[
                (
                    "a",
                    r#"{"o": {"x": [1, 2.50, "a b"], "y": {}}, "s": "q\"\u00e9\n\ud83d\ude00"}"#,
                ),
                ("b", r#" { "o" : null , "s" : "\ud800x" } "#),
                ("c", r#"{"o": [ ], "huge": 1e400}"#),
            ],
        )
        .unwrap();
        let conn = Connection::open(&db).unwrap();
        assert_eq!(
            column(&conn, "t", "o"),
            [text(r#"{"x":[1,2.50,"a b"],"y":{}}"#), null(), text("[]")]
        );
        assert_eq!(
            column(&conn, "t", "s"),
            [text("q\"é\n😀"), text("\u{FFFD}x"), null()]
        );
        assert_eq!(column(&conn, "t", "huge"), [null(), null(), text("1e400")]);
    }

    #[test]
    fn key_column_collision_and_non_objects() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let pairs = [
            ("a", r#"{"id":"other","x":1,"ID":2,"x":3}"#),
            ("b", "42"),
            ("c", r#""text""#),
            ("d", r#"{"value":{"v":1}}"#),
            ("e", "[1, 2]"),
        ];
        export(&db, "t", "id", &rows(&pairs)).unwrap();
        let conn = Connection::open(&db).unwrap();
        assert_eq!(
            schema(&conn, "t"),
            decls(&[
                ("id", "TEXT"),
                ("x", "INTEGER"),
                ("ID_2", "INTEGER"),
                ("value", "TEXT"),
            ])
        );
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
        let x: i64 = conn
            .query_row("SELECT x FROM t WHERE id = 'a'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 3, "the last of a repeated field counts");
        let values: Vec<Option<String>> = conn
            .prepare("SELECT value FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            values,
            [
                None,
                Some("42".into()),
                Some("text".into()),
                Some(r#"{"v":1}"#.into()),
                Some("[1,2]".into())
            ]
        );

        let e = export(&db, "u", "value", &rows(&[("a", "1")])).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn non_object_values_alone_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        export_pairs(&db, "t", &[("a", "1"), ("b", "null"), ("c", "2")]).unwrap();
        let conn = Connection::open(&db).unwrap();
        assert_eq!(
            schema(&conn, "t"),
            decls(&[("key", "TEXT"), ("value", "INTEGER")])
        );
        assert_eq!(column(&conn, "t", "value"), [int(1), null(), int(2)]);
    }

    #[test]
    fn reexport_replaces_the_table_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        export_pairs(&db, "t", &[("a", r#"{"x":1}"#), ("b", r#"{"x":2}"#)]).unwrap();
        export_pairs(&db, "other", &[("z", r#"{"y":"keep"}"#)]).unwrap();
        export_pairs(&db, "t", &[("c", r#"{"w":"new"}"#)]).unwrap();
        let conn = Connection::open(&db).unwrap();
        assert_eq!(schema(&conn, "t"), decls(&[("key", "TEXT"), ("w", "TEXT")]));
        assert_eq!(column(&conn, "t", "w"), [text("new")]);
        assert_eq!(column(&conn, "other", "y"), [text("keep")]);
    }

    #[test]
    fn bad_json_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        export_pairs(&db, "t", &[("a", r#"{"x":1}"#)]).unwrap();
        for bad in [r#"{"x":"#, "{} x", "nope", "", r#"{"x":1}}"#, "\"\u{1}\""] {
            let e = export_pairs(&db, "t", &[("a", r#"{"x":2}"#), ("k\n", bad)]).unwrap_err();
            assert_eq!(e.exit_code(), 1, "{e}");
            assert!(e.to_string().contains(r#"key "k\n""#), "{e}");
        }
        let not_utf8 = [Row {
            key: "u",
            value: b"\"\xff\"",
        }];
        let e = export(&db, "t", "key", &not_utf8).unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        assert!(e.to_string().contains(r#"key "u""#), "{e}");
        let conn = Connection::open(&db).unwrap();
        assert_eq!(column(&conn, "t", "x"), [int(1)]);
    }

    #[test]
    fn odd_names_are_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let pairs = [(
            "a",
            r#"{"a\"b c":1,"":2,"n\u0000l":3,"select":"s","A\"B C":4}"#,
        )];
        export(&db, "my \"table\"", "k\"ey", &rows(&pairs)).unwrap();
        let conn = Connection::open(&db).unwrap();
        assert_eq!(
            schema(&conn, "my \"table\""),
            decls(&[
                ("k\"ey", "TEXT"),
                ("a\"b c", "INTEGER"),
                ("", "INTEGER"),
                ("n\u{FFFD}l", "INTEGER"),
                ("select", "TEXT"),
                ("A\"B C_2", "INTEGER"),
            ])
        );
        let v: i64 = conn
            .query_row(r#"SELECT "a""b c" FROM "my ""table""""#, [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }

    #[test]
    fn empty_input_makes_an_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        assert_eq!(export_pairs(&db, "t", &[]).unwrap(), 0);
        let conn = Connection::open(&db).unwrap();
        assert_eq!(schema(&conn, "t"), decls(&[("key", "TEXT")]));
    }

    #[test]
    fn open_failures_are_setup_errors_and_sqlite_failures_data_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = [("a", r#"{"x":1}"#)];
        let e = export_pairs(&dir.path().join("no/such/dir.db"), "t", &pairs).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let not_db = dir.path().join("not.db");
        std::fs::write(&not_db, vec![b'x'; 4096]).unwrap();
        let e = export_pairs(&not_db, "t", &pairs).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("not.db: sqlite: "), "{e}");

        let db = dir.path().join("t.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE VIEW v AS SELECT 1")
            .unwrap();
        let e = export_pairs(&db, "v", &pairs).unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        assert!(e.to_string().contains("t.db: sqlite: "), "{e}");
    }

    #[test]
    fn unescape_and_compact() {
        assert_eq!(unescape(r#""plain""#), "plain");
        assert_eq!(
            unescape(r#""\\\/\b\f\n\r\t\u0041""#),
            "\\/\u{8}\u{c}\n\r\tA"
        );
        assert_eq!(unescape(r#""\udc00\ud800\u0041""#), "\u{FFFD}\u{FFFD}A");
        assert_eq!(unescape(r#""é\"ü""#), "é\"ü");
        assert_eq!(compact("[ 1 ,\n\t\"a \\\" b\" ]"), r#"[1,"a \" b"]"#);
        assert!(matches!(compact("[1,2]"), Cow::Borrowed(_)));
    }
}
