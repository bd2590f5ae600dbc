//! `window`'s model: what a window is (tumbling, hopping, session, aligned to the epoch plus
//! an offset), which fields a record is read for (`--ts`, `--by`, the aggregates' arguments),
//! and how group values are encoded so that groups compare, hash and sort the same way in
//! every run. The aggregates live in `agg`, reading a record in `extract`, and the state that
//! holds open windows and decides when they close in `engine`.

pub mod agg;
pub mod engine;
pub mod extract;

use crate::record::json::write_str;

/// What kind of window, with its sizes in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `size` long every `step` (tumbling: step == size), starting at epoch + offset + k·step.
    Fixed { size: i64, step: i64, offset: i64 },
    /// Per group: records closer than `gap` share a session `[first, last + gap)`.
    Session { gap: i64 },
}

impl Kind {
    /// The starts of the fixed windows holding `ts`, latest first.
    pub fn starts(&self, ts: i64) -> impl Iterator<Item = i64> {
        let (size, step, offset) = match *self {
            Kind::Fixed { size, step, offset } => (size, step, offset),
            Kind::Session { .. } => (1, 1, 0),
        };
        let last = ts - (ts - offset).rem_euclid(step);
        (0..)
            .map(move |k: i64| last - k * step)
            .take_while(move |s| s.saturating_add(size) > ts)
    }

    pub fn describe(&self) -> String {
        match *self {
            Kind::Fixed { size, step, offset } if size == step => {
                format!("tumbling {size} offset {offset}")
            }
            Kind::Fixed { size, step, offset } => {
                format!("hopping {size} every {step} offset {offset}")
            }
            Kind::Session { gap } => format!("session {gap}"),
        }
    }
}

/// When results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// One result per window and group, when the window closes.
    Final,
    /// A result each time a record changes a window's result.
    Update,
}

/// A field of the record: a top-level name, or a path of names (`.pos.lat`, `/pos/lat`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    pub segs: Vec<String>,
    /// As the user wrote it (for messages and the state file's fingerprint).
    pub text: String,
}

impl Path {
    /// `name`, `.name`, `.a.b`, `."odd name"`, `.["x"]` or a JSON pointer `/a/b`.
    pub fn parse(s: &str) -> Result<Path, String> {
        let t = s.trim();
        let bad = |why: &str| format!("bad field {s:?}: {why}");
        let segs = if let Some(p) = t.strip_prefix('/') {
            p.split('/')
                .map(|seg| seg.replace("~1", "/").replace("~0", "~"))
                .collect()
        } else if t.starts_with('.') {
            let mut segs = Vec::new();
            let b = t.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] != b'.' && b[i] != b'[' {
                    return Err(bad("expected . between names"));
                }
                if b[i] == b'.' {
                    i += 1;
                }
                let bracket = b.get(i) == Some(&b'[');
                if bracket {
                    i += 1;
                }
                if b.get(i) == Some(&b'"') {
                    let mut de = serde_json::Deserializer::from_str(&t[i..]).into_iter::<String>();
                    let name = match de.next() {
                        Some(Ok(n)) => n,
                        _ => return Err(bad("unterminated quoted name")),
                    };
                    i += de.byte_offset();
                    segs.push(name);
                } else {
                    let n = b[i..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                        .count();
                    if n == 0 || b[i].is_ascii_digit() {
                        return Err(bad("expected a name after ."));
                    }
                    segs.push(t[i..i + n].to_string());
                    i += n;
                }
                if bracket {
                    if b.get(i) != Some(&b']') {
                        return Err(bad("expected ]"));
                    }
                    i += 1;
                }
            }
            segs
        } else {
            if t.is_empty() {
                return Err(bad("empty"));
            }
            vec![t.to_string()]
        };
        if segs.is_empty() {
            return Err(bad("no name"));
        }
        Ok(Path {
            segs,
            text: t.to_string(),
        })
    }

    /// The name a result field gets: the last name of the path.
    pub fn last(&self) -> &str {
        self.segs.last().map_or("", String::as_str)
    }

    /// All names joined by `_` (aggregate result names: `avg_pos_lat`).
    pub fn joined(&self) -> String {
        self.segs.join("_")
    }
}

/// Encoded group values and distinct values: per value a tag byte, a u32 length and bytes.
/// Strings are decoded (so escapes do not split a group) and numbers put in one form (1 and
/// 1.0 are one group), so equal JSON values encode to equal bytes.
pub mod tag {
    pub const NULL: u8 = b'n';
    pub const FALSE: u8 = b'f';
    pub const TRUE: u8 = b't';
    pub const NUM: u8 = b'#';
    pub const STR: u8 = b's';
    /// Arrays and objects, as their JSON text.
    pub const JSON: u8 = b'j';
}

pub fn push_encoded(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The (tag, bytes) parts of an encoded group.
pub fn decode(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 5 {
            return None;
        }
        let n = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize;
        let t = b[0];
        let v = b.get(5..5 + n)?;
        b = &b[5 + n..];
        Some((t, v))
    })
}

/// Writes one encoded value as JSON.
pub fn write_value(out: &mut Vec<u8>, tag: u8, v: &[u8]) {
    match tag {
        tag::NULL => out.extend_from_slice(b"null"),
        tag::FALSE => out.extend_from_slice(b"false"),
        tag::TRUE => out.extend_from_slice(b"true"),
        tag::STR => write_str(out, &String::from_utf8_lossy(v)),
        _ => out.extend_from_slice(v),
    }
}

/// The envelope key of a group: each value's text (strings unquoted, null empty) joined by `|`.
pub fn key_text(group: &[u8]) -> String {
    let mut s = String::new();
    for (i, (t, v)) in decode(group).enumerate() {
        if i > 0 {
            s.push('|');
        }
        if t != tag::NULL {
            s.push_str(&String::from_utf8_lossy(v));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Path::parse("vehicle_id").unwrap().segs, ["vehicle_id"]);
        assert_eq!(Path::parse(".pos.lat").unwrap().segs, ["pos", "lat"]);
        assert_eq!(Path::parse("/pos/a~1b").unwrap().segs, ["pos", "a/b"]);
        assert_eq!(
            Path::parse(r#".a."b c"["d"]"#).unwrap().segs,
            ["a", "b c", "d"]
        );
        assert!(Path::parse(".").is_err());
        assert!(Path::parse(".a..b").is_err());
        assert!(Path::parse(r#".a."b"#).is_err());
        assert_eq!(Path::parse(".pos.lat").unwrap().joined(), "pos_lat");
    }

    #[test]
    fn fixed_starts() {
        let tumbling = Kind::Fixed {
            size: 10,
            step: 10,
            offset: 0,
        };
        assert_eq!(tumbling.starts(10).collect::<Vec<_>>(), [10]);
        assert_eq!(tumbling.starts(9).collect::<Vec<_>>(), [0]);
        assert_eq!(tumbling.starts(-1).collect::<Vec<_>>(), [-10]);
        let hopping = Kind::Fixed {
            size: 10,
            step: 5,
            offset: 0,
        };
        assert_eq!(hopping.starts(12).collect::<Vec<_>>(), [10, 5]);
        assert_eq!(hopping.starts(10).collect::<Vec<_>>(), [10, 5]);
        let uneven = Kind::Fixed {
            size: 10,
            step: 4,
            offset: 1,
        };
        // Windows [9,19), [5,15), [1,11) hold 10.
        assert_eq!(uneven.starts(10).collect::<Vec<_>>(), [9, 5, 1]);
    }

    #[test]
    fn group_encoding() {
        let mut g = Vec::new();
        push_encoded(&mut g, tag::STR, b"truck|1");
        push_encoded(&mut g, tag::NULL, b"");
        push_encoded(&mut g, tag::NUM, b"7");
        assert_eq!(key_text(&g), "truck|1||7");
        let parts: Vec<_> = decode(&g).collect();
        assert_eq!(parts.len(), 3);
        let mut out = Vec::new();
        write_value(&mut out, parts[0].0, parts[0].1);
        assert_eq!(out, br#""truck|1""#);
    }
}
