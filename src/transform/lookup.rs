//! `--lookup NAME=FILE --on FIELD`: a reference table (CSV with a header row, or NDJSON
//! objects) loaded once and given to the program as `$NAME`, an object keyed by FIELD's
//! text, so `$depots[.vehicle_id]` joins a record with its row (null when there is none).
//! A repeated key is an error naming both lines: a join must not pick a row silently.

use super::value;
use crate::record::csvrow;
use crate::record::scan::{self, Kind, Scan};
use jaq_json::{Map, Val};
use std::collections::HashMap;
use std::path::Path;

/// Loads `path` keyed by `field` (a top-level name).
pub fn load(path: &Path, field: &str) -> Result<Val, String> {
    let name = path.display();
    let data = std::fs::read(path).map_err(|e| format!("--lookup {name}: {e}"))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("tsv"));
    let rows = if is_csv {
        csv_rows(&data, path)?
    } else {
        let mut rows = Vec::new();
        for (i, line) in data.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            rows.push((i as u64 + 1, line.to_vec()));
        }
        rows
    };
    let mut map = Map::default();
    let mut seen: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut sc = Scan::default();
    for (no, text) in rows {
        let at = |m: String| format!("--lookup {name}: line {no}: {m}");
        if std::str::from_utf8(&text).is_err() {
            return Err(at("invalid UTF-8".into()));
        }
        if !scan::scan_object(&text, &mut sc) {
            return Err(at(match value::parse(&text) {
                Err(e) => e.to_string(),
                Ok(_) => "expected a JSON object".into(),
            }));
        }
        let key = match sc.get(&text, field.as_bytes()) {
            Some(m) if m.kind == Kind::Str => match value::parse(m.value(&text)) {
                Ok(Val::TStr(s)) => s.to_vec(),
                _ => return Err(at(format!("bad {field}"))),
            },
            Some(m) if matches!(m.kind, Kind::Num | Kind::True | Kind::False) => {
                m.value(&text).to_vec()
            }
            _ => {
                return Err(at(format!(
                    "no {field} (a string or number) to key the row by"
                )))
            }
        };
        if let Some(first) = seen.insert(key.clone(), no) {
            return Err(at(format!(
                "duplicate key {:?} (first on line {first})",
                String::from_utf8_lossy(&key)
            )));
        }
        let row = value::parse(&text).map_err(|e| at(e.to_string()))?;
        map.insert(Val::from(String::from_utf8_lossy(&key).into_owned()), row);
    }
    Ok(Val::obj(map))
}

/// CSV rows as JSON objects (cells typed as `produce --csv` types them), with the line each
/// row starts on.
fn csv_rows(data: &[u8], path: &Path) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut r = csv::ReaderBuilder::new()
        .delimiter(if path.extension().is_some_and(|e| e == "tsv") {
            b'\t'
        } else {
            b','
        })
        .from_reader(data);
    let headers: Vec<String> = r
        .headers()
        .map_err(|e| format!("--lookup {}: {e}", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| format!("--lookup {}: {e}", path.display()))?;
        let no = rec.position().map_or(0, |p| p.line());
        let cells: Vec<&str> = rec.iter().collect();
        let mut obj = Vec::new();
        csvrow::write_object(&mut obj, &headers, &cells);
        rows.push((no, obj));
    }
    Ok(rows)
}
