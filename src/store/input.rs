//! What `store` takes from one input line: the table key, the value (None: delete), the
//! event time and the provenance, from an envelope or a plain object.
//!
//! In `auto` mode a line is an envelope when it has a `value` (or `value_str`) and every
//! member is an envelope member (topic, partition, offset, sub, ts, key, key_base64, value,
//! value_str, value_base64, headers): that covers `consume` and `transform` output, which
//! carry provenance, and `window` output, which does not. Any other object is a plain record,
//! stored whole.

use crate::cli::input::InputMode;
use crate::record::json::scalar_text;
use crate::record::scan::{self, Kind, Member, Scan};
use crate::transform::Predicate;
use base64::Engine;

const ENV_NAMES: [&[u8]; 11] = [
    b"topic",
    b"partition",
    b"offset",
    b"sub",
    b"ts",
    b"key",
    b"key_base64",
    b"value",
    b"value_str",
    b"value_base64",
    b"headers",
];
const TOPIC: usize = 0;
const PARTITION: usize = 1;
const OFFSET: usize = 2;
const SUB: usize = 3;
const TS: usize = 4;
const KEY: usize = 5;
const KEY_B64: usize = 6;
const VALUE: usize = 7;
const VALUE_STR: usize = 8;
const VALUE_B64: usize = 9;

/// How keys are found.
pub enum KeySpec {
    /// The envelope's key.
    Envelope,
    /// Fields of the value, joined with `|`: top-level names, or JSON pointers.
    Fields(Vec<String>),
}

pub struct Reader {
    pub mode: InputMode,
    pub key: KeySpec,
    pub delete_when: Option<Predicate>,
    scan: Scan,
    vscan: Scan,
    /// The key fields as member names, when all of them are plain names (the fast path).
    names: Option<Vec<Vec<u8>>>,
    found: Vec<Option<Member>>,
    value_finder: memchr::memmem::Finder<'static>,
}

/// One line, understood (its key is appended to the caller's buffer).
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The JSON value to store; None deletes the key.
    pub value: Option<&'a [u8]>,
    pub ts: Option<i64>,
    /// topic, partition, offset, sub.
    pub source: Option<(&'a str, u32, u64, u64)>,
}

impl Reader {
    pub fn new(mode: InputMode, key: KeySpec, delete_when: Option<Predicate>) -> Reader {
        let names = match &key {
            KeySpec::Fields(f) if f.iter().all(|n| !n.starts_with('/')) => {
                Some(f.iter().map(|n| n.as_bytes().to_vec()).collect::<Vec<_>>())
            }
            _ => None,
        };
        Reader {
            mode,
            key,
            delete_when,
            scan: Scan::default(),
            vscan: Scan::default(),
            found: vec![None; names.as_ref().map_or(0, |n| n.len())],
            names,
            value_finder: memchr::memmem::Finder::new(b"\"value"),
        }
    }

    /// Reads `line`, appending its key to `key` (the caller's batch buffer, so no key is
    /// allocated on its own).
    pub fn parse<'a>(&mut self, line: &'a [u8], key: &mut Vec<u8>) -> Result<Parsed<'a>, String> {
        if let Err(e) = std::str::from_utf8(line) {
            return Err(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1));
        }
        // An envelope has a member whose name starts with `value`: a line without those
        // bytes (and without escapes, which could spell them) is a plain record, and only
        // its key fields need finding.
        let surely_plain = match self.mode {
            InputMode::Plain => true,
            InputMode::Envelope => false,
            InputMode::Auto => {
                memchr::memchr(b'\\', line).is_none() && self.value_finder.find(line).is_none()
            }
        };
        if surely_plain {
            if let Some(names) = &self.names {
                if !scan::scan_pick(line, names, &mut self.found) {
                    return Err(crate::transform::not_an_object(line));
                }
                for (i, m) in self.found.iter().enumerate() {
                    if i > 0 {
                        key.push(b'|');
                    }
                    m.and_then(|m| key_text(key, line, &m)).ok_or_else(|| {
                        format!(
                            "no key field {:?} (or it is null)",
                            String::from_utf8_lossy(&names[i])
                        )
                    })?;
                }
                let value = self.deleted(line.trim_ascii())?;
                return Ok(Parsed {
                    value,
                    ts: None,
                    source: None,
                });
            }
        }
        if !scan::scan_object(line, &mut self.scan) {
            return Err(crate::transform::not_an_object(line));
        }
        let mut env: [Option<Member>; ENV_NAMES.len()] = [None; ENV_NAMES.len()];
        let mut all_env = self.mode != InputMode::Plain;
        if all_env {
            for m in &self.scan.members {
                match ENV_NAMES.iter().position(|n| scan::key_is(line, m, n)) {
                    Some(i) => env[i] = Some(*m),
                    None => {
                        all_env = false;
                        // One foreign member makes a plain record in auto mode.
                        if self.mode == InputMode::Auto {
                            break;
                        }
                    }
                }
            }
        }
        let has_value =
            env[VALUE].is_some() || env[VALUE_STR].is_some() || env[VALUE_B64].is_some();
        let is_env = match self.mode {
            InputMode::Envelope => true,
            InputMode::Plain => false,
            InputMode::Auto => has_value && all_env,
        };
        if !is_env {
            match &self.key {
                KeySpec::Envelope => {
                    return Err(
                        "a plain record has no key: give --key FIELD (or send envelopes)".into(),
                    )
                }
                KeySpec::Fields(f) => key_of(line, &self.scan, f, key)?,
            }
            let value = self.deleted(line.trim_ascii())?;
            return Ok(Parsed {
                value,
                ts: None,
                source: None,
            });
        }
        let value: &[u8] = match (env[VALUE], env[VALUE_STR], env[VALUE_B64]) {
            (Some(v), None, None) => v.value(line),
            // A value that was not JSON travels as a string: stored as that JSON string.
            (None, Some(v), None) if v.kind == Kind::Str => v.value(line),
            (None, None, Some(_)) => {
                return Err("binary values (value_base64) cannot be stored in a table".into())
            }
            (None, None, None) => return Err("the envelope has no value".into()),
            _ => {
                return Err(
                    "the envelope has more than one of value, value_str and value_base64".into(),
                )
            }
        };
        match &self.key {
            KeySpec::Fields(f) => {
                if value.first() == Some(&b'n') {
                    // A null value deletes; its key must come from the envelope.
                    envelope_key(line, &env, key)?
                } else {
                    if !scan::scan_object(value, &mut self.vscan) {
                        return Err(
                            "the envelope's value is not a JSON object (--key needs one)".into(),
                        );
                    }
                    key_of(value, &self.vscan, f, key)?
                }
            }
            KeySpec::Envelope => envelope_key(line, &env, key)?,
        }
        let ts = match env[TS] {
            None => None,
            Some(m) => match m.kind {
                Kind::Null => None,
                Kind::Num => Some(
                    std::str::from_utf8(m.value(line))
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or("the envelope's ts is not whole milliseconds")?,
                ),
                _ => return Err("the envelope's ts is not a number (milliseconds)".into()),
            },
        };
        let source = match env[TOPIC] {
            Some(t) if t.kind == Kind::Str => {
                let num = |i: usize| -> Option<u64> {
                    let m = env[i]?;
                    std::str::from_utf8(m.value(line)).ok()?.parse().ok()
                };
                let bad = "the envelope's partition, offset or sub is not a whole number";
                let topic =
                    std::str::from_utf8(&line[t.start + 1..t.end - 1]).map_err(|_| "bad topic")?;
                if topic.contains('\\') {
                    return Err("the envelope's topic is not a valid topic name".into());
                }
                Some((
                    topic,
                    num(PARTITION)
                        .and_then(|p| u32::try_from(p).ok())
                        .ok_or(bad)?,
                    num(OFFSET).ok_or(bad)?,
                    match env[SUB] {
                        None => 0,
                        Some(_) => num(SUB).ok_or(bad)?,
                    },
                ))
            }
            _ => None,
        };
        let value = if value == b"null" {
            None
        } else {
            self.deleted(value)?
        };
        Ok(Parsed { value, ts, source })
    }

    /// The value, or None when --delete-when says the key goes.
    fn deleted<'a>(&self, value: &'a [u8]) -> Result<Option<&'a [u8]>, String> {
        match &self.delete_when {
            Some(p) if p.test(value).map_err(|e| format!("--delete-when: {e}"))? => Ok(None),
            _ => Ok(Some(value)),
        }
    }
}

/// Appends the envelope's key: `key` (a string), or `key_base64` decoded.
fn envelope_key(line: &[u8], env: &[Option<Member>], out: &mut Vec<u8>) -> Result<(), String> {
    match (env[KEY], env[KEY_B64]) {
        (Some(k), _) if k.kind == Kind::Str => {
            key_text(out, line, &k).ok_or_else(|| "bad key".to_string())
        }
        (_, Some(k)) if k.kind == Kind::Str => {
            let raw = &line[k.start + 1..k.end - 1];
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|e| format!("bad key_base64: {e}"))?;
            out.extend_from_slice(&bytes);
            Ok(())
        }
        (Some(k), _) if k.kind != Kind::Null => Err("the envelope's key is not a string".into()),
        _ => Err("the record has no key (null); give --key FIELD to key by a field".into()),
    }
}

/// Appends the key text of member `m` of `text`: a string's contents (copied as is when it
/// has no escapes), a number's or boolean's literal, compact JSON for objects and arrays;
/// None for null.
fn key_text(out: &mut Vec<u8>, text: &[u8], m: &Member) -> Option<()> {
    let raw = m.value(text);
    match m.kind {
        Kind::Null => None,
        Kind::Str if !raw.contains(&b'\\') => {
            out.extend_from_slice(&raw[1..raw.len() - 1]);
            Some(())
        }
        _ => {
            let t = scalar_text(std::str::from_utf8(raw).ok()?)?;
            out.extend_from_slice(t.as_bytes());
            Some(())
        }
    }
}

/// Appends the key from fields of the object `text` (scanned as `s`): each field's text (a
/// string's contents, a number's literal) joined with `|`.
fn key_of(text: &[u8], s: &Scan, fields: &[String], out: &mut Vec<u8>) -> Result<(), String> {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'|');
        }
        let missing = || format!("no key field {f:?} (or it is null)");
        if f.starts_with('/') {
            let v: serde_json::Value =
                serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
            let t = v
                .pointer(f)
                .and_then(|x| scalar_text(&x.to_string()))
                .ok_or_else(missing)?;
            out.extend_from_slice(t.as_bytes());
        } else {
            let m = s.get(text, f.as_bytes()).ok_or_else(missing)?;
            key_text(out, text, m).ok_or_else(missing)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(mode: InputMode, key: Option<&str>) -> Reader {
        let key = match key {
            Some(k) => KeySpec::Fields(k.split(',').map(String::from).collect()),
            None => KeySpec::Envelope,
        };
        Reader::new(mode, key, None)
    }

    /// Parses `line`, returning its key beside the rest.
    fn parse<'a>(r: &mut Reader, line: &'a [u8]) -> Result<(Vec<u8>, Parsed<'a>), String> {
        let mut key = Vec::new();
        r.parse(line, &mut key).map(|p| (key, p))
    }

    #[test]
    fn envelopes_and_plain_records() {
        let mut r = reader(InputMode::Auto, None);
        let (key, p) = parse(
            &mut r,
            br#"{"topic":"t","partition":2,"offset":9,"sub":1,"ts":5,"key":"k","value":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(key, b"k");
        assert_eq!(p.value, Some(&br#"{"a":1}"#[..]));
        assert_eq!(p.ts, Some(5));
        assert_eq!(p.source, Some(("t", 2, 9, 1)));
        // window output: no provenance.
        let (key, p) = parse(&mut r, br#"{"ts":5,"key":"g","value":{"n":1}}"#).unwrap();
        assert_eq!((key.as_slice(), p.source), (&b"g"[..], None));
        let (_, p) = parse(&mut r, br#"{"key":"g","value":null}"#).unwrap();
        assert_eq!(p.value, None);
        assert!(parse(&mut r, br#"{"key":"g","value":1,"other":2}"#).is_err());
        let mut r = reader(InputMode::Auto, Some("id,n"));
        let (key, p) = parse(&mut r, br#" {"id":"a","n":3,"key":"x"} "#).unwrap();
        assert_eq!(key, b"a|3");
        assert_eq!(p.value, Some(&br#"{"id":"a","n":3,"key":"x"}"#[..]));
        assert!(parse(&mut r, br#"{"n":3}"#).unwrap_err().contains("\"id\""));
        assert!(parse(&mut r, b"[1]").is_err());
        let mut r = reader(InputMode::Plain, Some("/a/b"));
        assert_eq!(parse(&mut r, br#"{"a":{"b":"z"}}"#).unwrap().0, b"z");
    }

    #[test]
    fn delete_when() {
        let mut r = Reader::new(
            InputMode::Auto,
            KeySpec::Fields(vec!["id".into()]),
            Some(Predicate::new(".gone == true", "--delete-when").unwrap()),
        );
        assert_eq!(
            parse(&mut r, br#"{"id":1,"gone":true}"#).unwrap().1.value,
            None
        );
        assert!(parse(&mut r, br#"{"id":1,"gone":false}"#)
            .unwrap()
            .1
            .value
            .is_some());
    }
}
