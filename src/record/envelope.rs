//! The envelope: one NDJSON line per record between kappa tools.
//!
//! ```json
//! {"topic":"telemetry","partition":3,"offset":1042,"ts":1795359091608,"key":"truck-17","value":{"speed":81.5}}
//! ```
//!
//! Value bytes travel exactly: validated JSON as `value` (its bytes verbatim), other UTF-8 as
//! `value_str`, anything else as `value_base64`; a key that is not UTF-8 as `key_base64`;
//! headers as `[[name, value], ...]`. So `consume | produce --envelope` keeps keys,
//! timestamps, headers and value bytes identical.

use crate::log::format::{encode_header, Record};
use crate::record::json::write_str;
use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Appends the envelope of `rec` (no newline). `topic_json` is the topic already escaped.
#[inline]
pub fn write(out: &mut Vec<u8>, topic_json: &[u8], partition: u32, rec: &Record<'_>) {
    let mut ib = itoa::Buffer::new();
    out.extend_from_slice(b"{\"topic\":");
    out.extend_from_slice(topic_json);
    out.extend_from_slice(b",\"partition\":");
    out.extend_from_slice(ib.format(partition).as_bytes());
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(ib.format(rec.offset).as_bytes());
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ib.format(rec.timestamp).as_bytes());
    write_key(out, rec.key);
    write_value(out, rec.value, rec.value_is_json);
    write_headers(out, rec.header_count, rec.headers());
    out.push(b'}');
}

/// Appends an input envelope (no provenance; no `ts` when `ts` is None, so the log assigns
/// the append time): what `produce --server` sends for records it has already parsed.
pub fn write_input(out: &mut Vec<u8>, p: &crate::record::ingest::Prepared<'_>) {
    // A null ts reads back as absent; write_key and write_value lead with a comma.
    out.extend_from_slice(b"{\"ts\":");
    match p.ts {
        Some(ts) => out.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    write_key(out, p.key.as_deref());
    write_value(out, &p.value, p.json);
    let rec = Record::from_parts(0, 0, None, &[], false, &p.headers, p.header_count);
    write_headers(out, rec.header_count, rec.headers());
    out.push(b'}');
}

fn write_key(out: &mut Vec<u8>, key: Option<&[u8]>) {
    match key {
        None => out.extend_from_slice(b",\"key\":null"),
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => {
                out.extend_from_slice(b",\"key\":");
                write_str(out, s);
            }
            Err(_) => {
                out.extend_from_slice(b",\"key_base64\":\"");
                out.extend_from_slice(B64.encode(k).as_bytes());
                out.push(b'"');
            }
        },
    }
}

fn write_headers<'a>(
    out: &mut Vec<u8>,
    count: u32,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) {
    if count > 0 {
        out.extend_from_slice(b",\"headers\":[");
        for (i, (n, v)) in headers.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            write_str(out, &String::from_utf8_lossy(n));
            out.push(b',');
            write_str(out, &String::from_utf8_lossy(v));
            out.push(b']');
        }
        out.push(b']');
    }
}

fn write_value(out: &mut Vec<u8>, v: &[u8], is_json: bool) {
    // Verbatim JSON only when it cannot change on a round trip (no surrounding whitespace).
    let bare =
        !v.is_empty() && !v[0].is_ascii_whitespace() && !v[v.len() - 1].is_ascii_whitespace();
    if is_json && bare {
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(v);
        return;
    }
    match std::str::from_utf8(v) {
        Ok(s) => {
            out.extend_from_slice(b",\"value_str\":");
            write_str(out, s);
        }
        Err(_) => {
            out.extend_from_slice(b",\"value_base64\":\"");
            out.extend_from_slice(B64.encode(v).as_bytes());
            out.push(b'"');
        }
    }
}

/// A raw field that tells `null` apart from absent.
#[derive(Default)]
struct Raw<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Raw<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|r| Raw(Some(r)))
    }
}

#[derive(Deserialize)]
struct In<'a> {
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(borrow, default)]
    ts: Raw<'a>,
    #[serde(borrow, default)]
    value: Raw<'a>,
    #[serde(default)]
    value_str: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    headers: Option<Vec<(String, String)>>,
}

/// An envelope read back from a line, owning its parts where it must.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Provenance, when the envelope has it.
    pub partition: Option<u32>,
    pub offset: Option<u64>,
    pub ts: Option<&'a str>,
    pub key: Option<Vec<u8>>,
    pub value: std::borrow::Cow<'a, [u8]>,
    pub value_is_json: bool,
    /// Encoded as in the record layout, with their count.
    pub headers: Vec<u8>,
    pub header_count: u32,
}

pub fn parse(line: &[u8]) -> Result<Parsed<'_>, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    if !text.trim_start().starts_with('{') {
        return Err("expected a JSON object (an envelope)".into());
    }
    let e: In<'_> = serde_json::from_str(text).map_err(|e| format!("invalid envelope: {e}"))?;
    let key = match (e.key, e.key_base64) {
        (Some(k), None) => Some(k.into_bytes()),
        (None, Some(b)) => Some(B64.decode(b).map_err(|e| format!("bad key_base64: {e}"))?),
        (None, None) => None,
        (Some(_), Some(_)) => return Err("envelope has both key and key_base64".into()),
    };
    let (value, value_is_json) = match (e.value.0, e.value_str, e.value_base64) {
        (Some(v), None, None) => (std::borrow::Cow::Borrowed(v.get().as_bytes()), true),
        (None, Some(s), None) => (std::borrow::Cow::Owned(s.into_bytes()), false),
        (None, None, Some(b)) => (
            std::borrow::Cow::Owned(
                B64.decode(b)
                    .map_err(|e| format!("bad value_base64: {e}"))?,
            ),
            false,
        ),
        (None, None, None) => return Err("envelope has no value, value_str or value_base64".into()),
        _ => return Err("envelope has more than one of value, value_str and value_base64".into()),
    };
    let mut headers = Vec::new();
    let hs = e.headers.unwrap_or_default();
    for (n, v) in &hs {
        encode_header(&mut headers, n.as_bytes(), v.as_bytes());
    }
    let ts = e.ts.0.map(|r| r.get()).filter(|t| *t != "null");
    Ok(Parsed {
        partition: e.partition,
        offset: e.offset,
        ts,
        key,
        value,
        value_is_json,
        headers,
        header_count: hs.len() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::{check_frame, FrameBuilder, FrameCheck, RecordIter, RecordRef};
    use proptest::prelude::*;

    fn round_trip(key: Option<&[u8]>, value: &[u8], json: bool, hs: &[(String, String)]) {
        let mut hb = Vec::new();
        for (n, v) in hs {
            encode_header(&mut hb, n.as_bytes(), v.as_bytes());
        }
        let mut fb = FrameBuilder::new();
        fb.reset(7);
        fb.push(&RecordRef {
            timestamp: 99,
            key,
            value,
            headers: &hb,
            header_count: hs.len() as u32,
            value_is_json: json,
        });
        let frame = fb.finish().to_vec();
        let FrameCheck::Ok(info) = check_frame(&frame) else {
            panic!()
        };
        let rec = RecordIter::new(&frame, &info).next().unwrap();
        let mut out = Vec::new();
        write(&mut out, b"\"t\"", 0, &rec);
        let p = parse(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
        assert_eq!(p.key.as_deref(), key);
        assert_eq!(&*p.value, value);
        assert_eq!(p.ts, Some("99"));
        assert_eq!(p.headers, hb);
    }

    #[test]
    fn kinds_of_values() {
        round_trip(Some(b"k"), br#"{"a": 1.50}"#, true, &[]);
        round_trip(
            None,
            b"plain text \"quoted\"",
            false,
            &[("h".into(), "v".into()), ("h".into(), "w".into())],
        );
        round_trip(Some(b"\xff\xfe"), b"\x00\xff", false, &[]);
        round_trip(Some(b"k"), b" {\"a\":1} ", true, &[]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_round_trip(k in prop::option::of(prop::collection::vec(any::<u8>(), 0..10)), v in prop::collection::vec(any::<u8>(), 0..50)) {
            round_trip(k.as_deref(), &v, false, &[]);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = parse(s.as_bytes());
        }
    }
}
