//! JSON text ⇄ jaq values, for `transform`.
//!
//! jaq's own reader accepts a superset of JSON (`#` comments, `NaN`, invalid UTF-8) and its
//! writer prints `NaN` and `Infinity`; a pipe between kappa tools must carry strict JSON both
//! ways. So records are parsed here (RFC 8259, nothing more) and written here: NaN becomes
//! `null` and ±infinity the largest finite double, as jq does. Numbers keep jaq's model: an
//! integer literal that fits is an integer, any other literal keeps its text until arithmetic
//! needs its value, so `81.50` passes through a program unchanged.

use crate::record::json::write_str;
use jaq_core::ValT;
use jaq_json::{Map, Num, Rc, Val};

/// Nesting deeper than this is refused instead of overflowing the stack.
const MAX_DEPTH: usize = 512;

/// A parse error with the byte position it was found at.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub pos: usize,
    pub msg: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.pos + 1, self.msg)
    }
}

/// Parses exactly one JSON value (surrounding whitespace allowed). The text must be UTF-8
/// already (checked by the caller, which reports it with the line number).
pub fn parse(text: &[u8]) -> Result<Val, ParseError> {
    let mut p = Parser { b: text, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != text.len() {
        return Err(p.err("unexpected text after the value"));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &'static str) -> ParseError {
        ParseError { pos: self.i, msg }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn lit(&mut self, word: &[u8], v: Val) -> Result<Val, ParseError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Val, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.b.get(self.i) {
            None => Err(self.err("expected a value, found the end")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Val::from(self.string()?)),
            Some(b't') => self.lit(b"true", Val::Bool(true)),
            Some(b'f') => self.lit(b"false", Val::Bool(false)),
            Some(b'n') => self.lit(b"null", Val::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.i = number_end(self.b, start).ok_or_else(|| self.err("bad number"))?;
                // The grammar was checked: the text is ASCII.
                let text = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("0");
                Ok(num(text))
            }
            Some(_) => Err(self.err("expected a value")),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Val, ParseError> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Val::Arr(Rc::new(items)));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Val::Arr(Rc::new(items)));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Val, ParseError> {
        self.i += 1;
        let mut map = Map::default();
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Val::obj(map));
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(self.err("expected a string key"));
            }
            let k = self.string()?;
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth + 1)?;
            map.insert(Val::from(k), v);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Val::obj(map));
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.i += 1;
        let start = self.i;
        // Fast path: no escapes.
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'"' => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(s).into_owned());
                }
                b'\\' => break,
                0..=0x1f => return Err(self.err("control character in a string")),
                _ => self.i += 1,
            }
        }
        let mut out: Vec<u8> = self.b[start..self.i].to_vec();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                0..=0x1f => {
                    self.i -= 1;
                    return Err(self.err("control character in a string"));
                }
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return Err(self.err("bad escape")),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(h)
    }

    fn unicode(&mut self) -> Result<char, ParseError> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            // A high surrogate needs its low half; a lone one becomes U+FFFD like jq does.
            if self.b[self.i..].starts_with(b"\\u") {
                self.i += 2;
                let lo = self.hex4()?;
                if (0xDC00..0xE000).contains(&lo) {
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    0xFFFD
                }
            } else {
                0xFFFD
            }
        } else {
            hi
        };
        Ok(char::from_u32(code).unwrap_or('\u{FFFD}'))
    }
}

/// A number from its (valid JSON) literal, exactly as jaq makes it.
pub fn num(text: &str) -> Val {
    // jaq's from_num never fails; the fallback keeps the text.
    Val::from_num(text).unwrap_or_else(|_| Val::Num(Num::Dec(Rc::new(text.to_string()))))
}

/// The end of the JSON number starting at `i`, or None when the grammar is broken.
pub fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        let s = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > s).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i)?,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Some(i)
}

/// Appends `v` as compact JSON.
pub fn write(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::Num(n) => write_num(out, n),
        Val::TStr(s) | Val::BStr(s) => write_bytes_str(out, s),
        Val::Arr(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, x);
            }
            out.push(b']');
        }
        Val::Obj(o) => {
            out.push(b'{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match k {
                    Val::TStr(s) | Val::BStr(s) => write_bytes_str(out, s),
                    // jaq allows any key; JSON needs a string, so the key's JSON text is used.
                    other => {
                        let mut t = Vec::new();
                        write(&mut t, other);
                        write_bytes_str(out, &t);
                    }
                }
                out.push(b':');
                write(out, x);
            }
            out.push(b'}');
        }
    }
}

/// A value as compact JSON text (for messages).
pub fn to_text(v: &Val) -> String {
    let mut out = Vec::new();
    write(&mut out, v);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn write_num(out: &mut Vec<u8>, n: &Num) {
    match n {
        Num::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Num::BigInt(b) => out.extend_from_slice(b.to_string().as_bytes()),
        Num::Float(f) => write_f64(out, *f),
        Num::Dec(d) => out.extend_from_slice(d.as_bytes()),
    }
}

/// Floats as jaq prints them (shortest round trip), made valid JSON the way jq does.
pub fn write_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"null");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 {
            b"1.7976931348623157e+308"
        } else {
            b"-1.7976931348623157e+308"
        });
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes());
    }
}

/// A string value; bytes that are not UTF-8 are replaced, as JSON text must be UTF-8.
/// (The shared escaper writes exactly what jaq's strings need: quote, backslash, controls.)
pub fn write_bytes_str(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(s) => write_str(out, s),
        Err(_) => write_str(out, &String::from_utf8_lossy(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round(s: &str) -> String {
        let mut out = Vec::new();
        write(&mut out, &parse(s.as_bytes()).unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_keep_their_text() {
        assert_eq!(
            round("[81.50,1e3,-0.0,100,12345678901234567890123]"),
            "[81.50,1e3,-0.0,100,12345678901234567890123]"
        );
        assert_eq!(round(" {\"a\" : \"\\u00e9\\n\\/\"} "), "{\"a\":\"é\\n/\"}");
    }

    #[test]
    fn rejects_what_json_rejects() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "NaN",
            "01",
            "1.",
            "\"\t\"",
            "# c\n1",
            "{a:1}",
            "1 2",
            "\"\\x\"",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }

    proptest! {
        /// Whatever serde_json writes compactly, this parser and writer give back unchanged.
        #[test]
        fn agrees_with_serde(v in any::<(String, i64, bool, Vec<(String, f64)>)>()) {
            let obj: serde_json::Map<String, serde_json::Value> = v.3.iter().filter(|(_, f)| f.is_finite())
                .map(|(k, f)| (k.clone(), serde_json::json!(f))).collect();
            let j = serde_json::json!({"s": v.0, "i": v.1, "b": v.2, "o": obj});
            let text = serde_json::to_string(&j).unwrap();
            let mut out = Vec::new();
            write(&mut out, &parse(text.as_bytes()).unwrap());
            prop_assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }
}
