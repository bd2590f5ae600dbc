//! Input lines to records ready to append: the one parser behind `produce` and the
//! server's `POST /topics/{topic}/records`, so both accept the same formats, keys and
//! timestamps, and reject the same lines with the same messages.
//!
//! Formats: NDJSON objects, CSV with a header row (a record ends at a newline outside
//! quotes), raw lines, and envelopes. Values are kept byte for byte where the input allows.

use crate::log::format::RecordRef;
use crate::record::fields::{self, FieldPath, RawText};
use crate::record::{csvrow, envelope};
use std::borrow::Cow;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Ndjson,
    Csv,
    Lines,
    Envelope,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Lines => "lines",
            Format::Envelope => "envelope",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "ndjson" | "json" => Format::Ndjson,
            "csv" => Format::Csv,
            "lines" => Format::Lines,
            "envelope" => Format::Envelope,
            _ => return None,
        })
    }
}

/// One record ready to append; `ts` None means "append time".
pub struct Prepared<'a> {
    pub key: Option<Cow<'a, [u8]>>,
    pub ts: Option<i64>,
    pub value: Cow<'a, [u8]>,
    pub json: bool,
    pub headers: Cow<'a, [u8]>,
    pub header_count: u32,
}

impl Prepared<'_> {
    pub fn as_ref(&self, ts: i64) -> RecordRef<'_> {
        RecordRef {
            timestamp: ts,
            key: self.key.as_deref(),
            value: &self.value,
            headers: &self.headers,
            header_count: self.header_count,
            value_is_json: self.json,
        }
    }
}

/// What one input line gave.
pub enum Item<'a> {
    Record(Prepared<'a>),
    /// A bad record: its first line number, the reason and its bytes (or their start).
    Bad(u64, String, Cow<'a, [u8]>),
    /// A blank line, a CSV header, or the first lines of a multi-line CSV record.
    Nothing,
}

pub struct Ingest {
    pub format: Format,
    key: Option<FieldPath>,
    ts: Option<FieldPath>,
    ts_format: Option<String>,
    max: usize,
    /// How the record size limit is named in messages (`--max-record-bytes`).
    limit_name: &'static str,
    csv_headers: Option<Vec<String>>,
    csv_buf: Vec<u8>,
    csv_first_line: u64,
}

impl Ingest {
    /// `key`/`ts` apply to NDJSON and CSV only (envelopes carry their own).
    pub fn new(
        format: Format,
        key: Option<&str>,
        ts: Option<&str>,
        ts_format: Option<&str>,
        max: usize,
        limit_name: &'static str,
    ) -> Result<Ingest, String> {
        if matches!(format, Format::Lines | Format::Envelope) && (key.is_some() || ts.is_some()) {
            return Err(
                "key and ts fields need NDJSON or CSV input (envelopes carry their own)".into(),
            );
        }
        Ok(Ingest {
            format,
            key: key.map(FieldPath::parse),
            ts: ts.map(FieldPath::parse),
            ts_format: ts_format.map(str::to_string),
            max,
            limit_name,
            csv_headers: None,
            csv_buf: Vec::new(),
            csv_first_line: 0,
        })
    }

    /// The record size limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether a line read now would be data: false while a CSV input's header is due.
    pub fn expects_data(&self) -> bool {
        !matches!(self.format, Format::Csv) || self.csv_headers.is_some()
    }

    /// Starts a new input (a new file: CSV expects a header again).
    pub fn new_source(&mut self) {
        self.csv_headers = None;
        self.csv_buf.clear();
    }

    /// One input line (without its newline). `oversize`: the line was longer than the
    /// limit and `bytes` holds only its start.
    pub fn line<'b>(&mut self, no: u64, bytes: &'b [u8], oversize: bool) -> Item<'b> {
        if oversize {
            let msg = format!(
                "record is larger than {} ({} bytes)",
                self.limit_name, self.max
            );
            return Item::Bad(no, msg, Cow::Borrowed(bytes));
        }
        if self.format == Format::Csv {
            // A CSV record ends at a newline outside quotes: an even quote count.
            if self.csv_buf.is_empty() {
                self.csv_first_line = no;
            } else {
                self.csv_buf.push(b'\n');
            }
            self.csv_buf.extend_from_slice(bytes);
            if self.csv_buf.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
                if self.csv_buf.len() > self.max {
                    let prefix = self.csv_buf[..self.csv_buf.len().min(1024)].to_vec();
                    self.csv_buf.clear();
                    let msg = "unterminated quoted CSV field".to_string();
                    return Item::Bad(self.csv_first_line, msg, Cow::Owned(prefix));
                }
                return Item::Nothing;
            }
            let rec = std::mem::take(&mut self.csv_buf);
            return self.csv_record(self.csv_first_line, rec);
        }
        if self.format != Format::Lines && bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Item::Nothing;
        }
        match self.prepare(bytes) {
            Ok(p) => Item::Record(p),
            Err(msg) => Item::Bad(no, msg, Cow::Borrowed(bytes)),
        }
    }

    /// End of an input: an unterminated CSV record is bad.
    pub fn finish(&mut self) -> Option<Item<'static>> {
        if self.csv_buf.is_empty() {
            return None;
        }
        let prefix = self.csv_buf[..self.csv_buf.len().min(1024)].to_vec();
        self.csv_buf.clear();
        Some(Item::Bad(
            self.csv_first_line,
            "unterminated quoted CSV field at end of input".into(),
            Cow::Owned(prefix),
        ))
    }

    fn prepare<'a>(&self, line: &'a [u8]) -> Result<Prepared<'a>, String> {
        match self.format {
            Format::Lines => Ok(Prepared {
                key: None,
                ts: None,
                value: Cow::Borrowed(line),
                json: false,
                headers: Cow::Borrowed(&[]),
                header_count: 0,
            }),
            Format::Envelope => {
                let e = envelope::parse(line)?;
                // An envelope's numeric ts is milliseconds by definition.
                let ts = match e.ts {
                    Some(t) => match t.parse::<i64>() {
                        Ok(ms) => Some(ms),
                        Err(_) => Some(fields::ts_ms(&RawText::Borrowed(t), None)?),
                    },
                    None => None,
                };
                Ok(Prepared {
                    key: e.key.map(Cow::Owned),
                    ts,
                    value: e.value,
                    json: e.value_is_json,
                    headers: Cow::Owned(e.headers),
                    header_count: e.header_count,
                })
            }
            Format::Ndjson | Format::Csv => {
                let f = fields::find(line, self.key.as_ref(), self.ts.as_ref())?;
                let key = match (&self.key, &f.key) {
                    (None, _) => None,
                    (Some(k), None) => return Err(format!("missing key field {k}")),
                    (Some(k), Some(raw)) => match key_bytes(raw) {
                        Some(b) => Some(b),
                        None => return Err(format!("key field {k} is null")),
                    },
                };
                let ts = match (&self.ts, &f.ts) {
                    (None, _) => None,
                    (Some(t), None) => return Err(format!("missing timestamp field {t}")),
                    (Some(t), Some(raw)) => Some(
                        fields::ts_ms(raw, self.ts_format.as_deref())
                            .map_err(|e| format!("field {t}: {e}"))?,
                    ),
                };
                Ok(Prepared {
                    key,
                    ts,
                    value: Cow::Borrowed(line),
                    json: true,
                    headers: Cow::Borrowed(&[]),
                    header_count: 0,
                })
            }
        }
    }

    fn csv_record(&mut self, line_no: u64, rec: Vec<u8>) -> Item<'static> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(&rec[..]);
        let mut row = csv::StringRecord::new();
        let bad = |m: String, rec: Vec<u8>| Item::Bad(line_no, m, Cow::Owned(rec));
        match rdr.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => return Item::Nothing,
            Err(e) => {
                let m = match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => "invalid UTF-8 in CSV".to_string(),
                    _ => format!("bad CSV: {e}"),
                };
                return bad(m, rec);
            }
        }
        let Some(headers) = &self.csv_headers else {
            let h: Vec<String> = row
                .iter()
                .map(|s| s.trim_start_matches('\u{feff}').to_string())
                .collect();
            self.csv_headers = Some(h);
            return Item::Nothing;
        };
        if row.len() == 1 && row.get(0) == Some("") && headers.len() > 1 {
            return Item::Nothing; // blank line
        }
        if row.len() != headers.len() {
            let m = format!(
                "CSV row has {} fields, the header has {}",
                row.len(),
                headers.len()
            );
            return bad(m, rec);
        }
        let mut obj = Vec::with_capacity(rec.len() + 16 * headers.len());
        let cells: Vec<&str> = row.iter().collect();
        csvrow::write_object(&mut obj, headers, &cells);
        let found = self
            .prepare(&obj)
            .map(|p| (p.key.map(|k| k.into_owned()), p.ts));
        match found {
            Ok((key, ts)) => Item::Record(Prepared {
                key: key.map(Cow::Owned),
                ts,
                value: Cow::Owned(obj),
                json: true,
                headers: Cow::Borrowed(&[]),
                header_count: 0,
            }),
            Err(m) => bad(m, rec),
        }
    }
}

/// The key bytes of a field, borrowed when the JSON text needs no unescaping.
fn key_bytes<'a>(raw: &RawText<'a>) -> Option<Cow<'a, [u8]>> {
    if let RawText::Borrowed(s) = raw {
        let b = s.as_bytes();
        if b.len() >= 2 && b[0] == b'"' && !b.contains(&b'\\') {
            return Some(Cow::Borrowed(&b[1..b.len() - 1]));
        }
        if b.first().is_some_and(|c| c.is_ascii_digit() || *c == b'-') {
            return Some(Cow::Borrowed(b));
        }
    }
    fields::key_bytes(raw).map(Cow::Owned)
}
