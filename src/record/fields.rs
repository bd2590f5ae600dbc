//! Pulls the key and timestamp fields out of an NDJSON object while validating the whole
//! line, without building the object: one pass of serde_json with a visitor that keeps two
//! borrowed raw values and skips everything else. The line itself is stored untouched.
//!
//! A field is a top-level name (`vehicle_id`) or a JSON pointer (`/meta/vehicle`); pointers
//! take a slower path that builds the value.

use crate::record::json::scalar_text;
use crate::record::scan::MAX_DEPTH;
use crate::record::time;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// How to find a field.
#[derive(Debug, Clone)]
pub enum FieldPath {
    Name(String),
    Pointer(String),
}

impl FieldPath {
    pub fn parse(s: &str) -> FieldPath {
        if s.starts_with('/') {
            FieldPath::Pointer(s.to_string())
        } else {
            FieldPath::Name(s.to_string())
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            FieldPath::Name(n) => Some(n),
            FieldPath::Pointer(_) => None,
        }
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldPath::Name(n) | FieldPath::Pointer(n) => f.write_str(n),
        }
    }
}

/// What the line held at the requested fields (raw JSON text, or owned text for pointers).
#[derive(Debug, Default)]
pub struct Found<'a> {
    pub key: Option<RawText<'a>>,
    pub ts: Option<RawText<'a>>,
}

#[derive(Debug)]
pub enum RawText<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl RawText<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            RawText::Borrowed(s) => s,
            RawText::Owned(s) => s,
        }
    }
}

enum Which {
    Key,
    Ts,
    Both,
    Other,
}

struct KeySeed<'f> {
    key: Option<&'f str>,
    ts: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Which;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Which, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Which;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E>(self, v: &str) -> Result<Which, E> {
        let k = self.key == Some(v);
        let t = self.ts == Some(v);
        Ok(match (k, t) {
            (true, true) => Which::Both,
            (true, false) => Which::Key,
            (false, true) => Which::Ts,
            _ => Which::Other,
        })
    }
}

struct ObjSeed<'f> {
    key: Option<&'f str>,
    ts: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for ObjSeed<'_> {
    type Value = (Option<&'de RawValue>, Option<&'de RawValue>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjSeed<'_> {
    type Value = (Option<&'de RawValue>, Option<&'de RawValue>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut k, mut t) = (None, None);
        while let Some(which) = map.next_key_seed(KeySeed {
            key: self.key,
            ts: self.ts,
        })? {
            match which {
                Which::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Which::Key => k = Some(map.next_value::<&'de RawValue>()?),
                Which::Ts => t = Some(map.next_value::<&'de RawValue>()?),
                Which::Both => {
                    let v = map.next_value::<&'de RawValue>()?;
                    k = Some(v);
                    t = Some(v);
                }
            }
        }
        Ok((k, t))
    }
}

/// Validates `line` as one JSON object and finds the fields. The error is the message for
/// the user (`expected a JSON object`, serde_json's syntax error, `invalid UTF-8`).
pub fn find<'a>(
    line: &'a [u8],
    key: Option<&FieldPath>,
    ts: Option<&FieldPath>,
) -> Result<Found<'a>, String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to()))?;
    let ptr =
        matches!(key, Some(FieldPath::Pointer(_))) || matches!(ts, Some(FieldPath::Pointer(_)));
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        // Still report a syntax error first if the line is not JSON at all.
        if let Err(e) = serde_json::from_str::<IgnoredAny>(text) {
            return Err(json_error(e));
        }
        return Err("expected a JSON object".into());
    }
    if ptr {
        let v: serde_json::Value = serde_json::from_str(text).map_err(json_error)?;
        let get = |f: Option<&FieldPath>| -> Option<RawText<'a>> {
            let f = f?;
            let x = match f {
                FieldPath::Name(n) => v.get(n.as_str())?,
                FieldPath::Pointer(p) => v.pointer(p)?,
            };
            Some(RawText::Owned(x.to_string()))
        };
        return Ok(Found {
            key: get(key),
            ts: get(ts),
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = ObjSeed {
        key: key.and_then(|k| k.name()),
        ts: ts.and_then(|t| t.name()),
    };
    let (k, t) = seed.deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(json_error)?;
    // Skipped members are not depth-checked by serde; what enters the log must parse in
    // every tool. Nesting past the limit needs twice as many bytes of brackets.
    if line.len() > 2 * MAX_DEPTH && too_deep(line) {
        return Err(format!(
            "invalid JSON: nested deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(Found {
        key: k.map(|r| RawText::Borrowed(r.get())),
        ts: t.map(|r| RawText::Borrowed(r.get())),
    })
}

/// Whether valid JSON text nests arrays and objects deeper than `MAX_DEPTH`.
fn too_deep(text: &[u8]) -> bool {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in text {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn json_error(e: serde_json::Error) -> String {
    let msg = e.to_string();
    // serde_json appends "at line 1 column N"; inside one line only the column matters.
    match msg.rfind(" at line 1 column ") {
        Some(i) => format!("invalid JSON: {} (column {})", &msg[..i], &msg[i + 18..]),
        None => format!("invalid JSON: {msg}"),
    }
}

/// The key bytes a field stands for; None when it is null.
pub fn key_bytes(raw: &RawText<'_>) -> Option<Vec<u8>> {
    scalar_text(raw.as_str()).map(String::into_bytes)
}

/// The timestamp (ms) a field stands for: a number by magnitude, or a string (epoch or RFC
/// 3339, or `format` when given).
pub fn ts_ms(raw: &RawText<'_>, format: Option<&str>) -> Result<i64, String> {
    let t = raw.as_str().trim();
    if t.starts_with('"') {
        let s: String = serde_json::from_str(t).map_err(|e| e.to_string())?;
        return match format {
            Some(f) => time::parse_with_format(&s, f),
            None => time::parse_text(&s),
        };
    }
    if t == "null" {
        return Err("timestamp field is null".into());
    }
    if let Ok(n) = t.parse::<i64>() {
        return Ok(time::epoch_int_to_ms(n));
    }
    match t.parse::<f64>() {
        Ok(f) => time::epoch_to_ms(f).ok_or_else(|| format!("timestamp out of range: {t}")),
        Err(_) => Err(format!("timestamp must be a number or a string, not {t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> FieldPath {
        FieldPath::parse(s)
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(find(ok.as_bytes(), None, None).is_ok());
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let e = find(deep.as_bytes(), None, None).err().unwrap();
        assert!(e.contains("nested deeper"), "{e}");
        let in_string = format!("{{\"a\":\"{}\"}}", "[".repeat(5000));
        assert!(find(in_string.as_bytes(), None, None).is_ok());
    }

    #[test]
    fn finds_fields() {
        let line = br#"{"a":{"x":[1,2]},"id":"truck-1","ts":1795359091608,"s":"\u00e9"}"#;
        let f = find(line, Some(&fp("id")), Some(&fp("ts"))).unwrap();
        assert_eq!(key_bytes(f.key.as_ref().unwrap()).unwrap(), b"truck-1");
        assert_eq!(
            ts_ms(f.ts.as_ref().unwrap(), None).unwrap(),
            1_795_359_091_608
        );
        let f = find(line, Some(&fp("/a/x/1")), None).unwrap();
        assert_eq!(key_bytes(f.key.as_ref().unwrap()).unwrap(), b"2");
        let f = find(line, Some(&fp("missing")), None).unwrap();
        assert!(f.key.is_none());
    }

    #[test]
    fn rejects() {
        assert_eq!(
            find(b"[1]", None, None).unwrap_err(),
            "expected a JSON object"
        );
        assert!(find(b"{\"a\":1", None, None)
            .unwrap_err()
            .starts_with("invalid JSON"));
        assert!(find(b"{\"a\":1} x", None, None).is_err());
        assert!(find(b"{\"a\":\"\xff\"}", None, None)
            .unwrap_err()
            .contains("UTF-8"));
        assert!(find(b"{\"a\":tru}", None, None).is_err());
    }
}
