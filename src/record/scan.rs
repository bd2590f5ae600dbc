//! A validating scan of one JSON object that records where each top-level member lies,
//! without building values. It is what makes a record cheap to look into: `transform` finds
//! the envelope's parts and a program's fields by position, and copies untouched bytes.
//!
//! The scan accepts exactly what [`crate::transform::value::parse`] accepts in valid UTF-8
//! text (strict JSON, the same depth limit), so a line is never good on one path and bad on
//! the other; it checks the UTF-8 of strings itself (all else must be ASCII), so an accepted
//! text is valid UTF-8 without a separate pass over it. It also tells whether
//! each value is *plain*: written back by jaq it would come out byte for byte the same
//! (compact, no escapes, no duplicate keys, no `-0`), so its text can be copied as is.

/// Nesting limit, the same as the value parser's.
pub const MAX_DEPTH: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Null,
    False,
    True,
    Num,
    Str,
    Arr,
    Obj,
}

/// One top-level member: positions in the scanned text.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    /// The key's bytes between its quotes (still escaped when `key_escaped`).
    pub key: (usize, usize),
    pub key_escaped: bool,
    /// Where the member starts (the key's opening quote) and its value's span.
    pub from: usize,
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
    /// The value's text is what jaq would write for it.
    pub plain: bool,
}

impl Member {
    pub fn value<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.start..self.end]
    }
    /// The member's text from the key's quote to the end of the value.
    pub fn whole<'a>(&self, text: &'a [u8]) -> &'a [u8] {
        &text[self.from..self.end]
    }
}

#[derive(Default, Debug)]
pub struct Scan {
    pub members: Vec<Member>,
    /// The whole object is plain: compact, plain members, no escaped or repeated keys.
    pub plain: bool,
}

impl Scan {
    /// The member named `name` (the last one when a key repeats, as JSON readers keep).
    pub fn get(&self, text: &[u8], name: &[u8]) -> Option<&Member> {
        self.members.iter().rev().find(|m| key_is(text, m, name))
    }
}

/// Whether member `m`'s key equals `name`, decoding escapes when the key has any.
#[inline]
pub fn key_is(text: &[u8], m: &Member, name: &[u8]) -> bool {
    let raw = &text[m.key.0..m.key.1];
    if !m.key_escaped {
        return raw == name;
    }
    let quoted = &text[m.key.0 - 1..m.key.1 + 1];
    serde_json::from_slice::<String>(quoted).is_ok_and(|k| k.as_bytes() == name)
}

/// Scans `text`, which must hold one JSON object (whitespace around it allowed). False when
/// it is not valid JSON or not an object; `out` is then unspecified.
pub fn scan_object(text: &[u8], out: &mut Scan) -> bool {
    out.members.clear();
    let members = &mut out.members;
    let Some((all_plain, end)) = scan(text, |m| members.push(m)) else {
        return false;
    };
    let tight = match out.members.first() {
        Some(m) => m.from == 1,
        None => end == 2,
    };
    out.plain = all_plain && tight && end == text.len() && no_repeats(text, &out.members);
    true
}

/// The same scan keeping only the members named in `names` (`found[i]` for `names[i]`; the
/// last one when a key repeats, as JSON readers keep): for readers that look a few fields up
/// and need not store the others. False when `text` is not one valid JSON object.
pub fn scan_pick<N: AsRef<[u8]>>(text: &[u8], names: &[N], found: &mut [Option<Member>]) -> bool {
    found.iter_mut().for_each(|f| *f = None);
    scan(text, |m| {
        let raw = &text[m.key.0..m.key.1];
        for (i, n) in names.iter().enumerate() {
            let n = n.as_ref();
            let hit = if m.key_escaped {
                key_is(text, &m, n)
            } else {
                raw.len() == n.len() && raw.first() == n.first() && raw == n
            };
            if hit {
                found[i] = Some(m);
            }
        }
    })
    .is_some()
}

/// Validates one object and hands each top-level member to `each`. Returns whether the
/// object's text is plain so far (compact, plain members, no escaped keys) and where it ends.
#[inline]
fn scan(text: &[u8], mut each: impl FnMut(Member)) -> Option<(bool, usize)> {
    let mut s = Scanner {
        b: text,
        i: 0,
        plain: true,
    };
    s.ws();
    if s.b.get(s.i) != Some(&b'{') {
        return None;
    }
    let compact_start = s.i == 0;
    s.i += 1;
    let mut all_plain = compact_start;
    s.ws();
    if s.b.get(s.i) == Some(&b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let from = s.i;
            let (k0, k1, esc) = s.string()?;
            s.ws();
            if s.b.get(s.i) != Some(&b':') {
                return None;
            }
            s.i += 1;
            s.ws();
            s.plain = true;
            let start = s.i;
            let kind = s.value(1)?;
            let end = s.i;
            all_plain &= s.plain && !esc && from + k1 - k0 + 3 == start;
            each(Member {
                key: (k0, k1),
                key_escaped: esc,
                from,
                start,
                end,
                kind,
                plain: s.plain,
            });
            let before = s.i;
            s.ws();
            all_plain &= before == s.i;
            match s.b.get(s.i) {
                Some(b',') => {
                    s.i += 1;
                    all_plain &= s.b.get(s.i) == Some(&b'"');
                }
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    let end = s.i;
    s.ws();
    if s.i != text.len() {
        return None;
    }
    Some((all_plain, end))
}

fn no_repeats(text: &[u8], members: &[Member]) -> bool {
    let key = |m: &Member| &text[m.key.0..m.key.1];
    members
        .iter()
        .enumerate()
        .all(|(i, m)| members[..i].iter().all(|o| key(o) != key(m)))
}

/// The position of the first `"`, `\\`, control character or non-ASCII byte in `b`, eight
/// bytes at a time (strings in records are short, where a call to memchr costs more than the
/// search).
#[inline]
fn special(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= b.len() {
        // The slice is exactly 8 bytes long.
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let quote = w ^ (LO * b'"' as u64);
        let slash = w ^ (LO * b'\\' as u64);
        // A byte is flagged when it is zero (quote, slash) or below 0x20 (control); the
        // lowest flagged byte is exact, which is the only one used.
        let m = (quote.wrapping_sub(LO) & !quote)
            | (slash.wrapping_sub(LO) & !slash)
            | (w.wrapping_sub(LO * 0x20) & !w)
            | w;
        let m = m & HI;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c))
        .map(|p| i + p)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Cleared by anything jaq would write differently.
    plain: bool,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// A whitespace skip inside a value: any whitespace makes the value not plain.
    fn ws_in(&mut self) {
        let s = self.i;
        self.ws();
        if self.i != s {
            self.plain = false;
        }
    }

    /// A string at `i`; returns the span between the quotes and whether it has escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let start = self.i;
        let mut esc = false;
        loop {
            let off = special(&self.b[self.i..])?;
            self.i += off;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some((start, self.i - 1, esc));
                }
                b'\\' => {
                    esc = true;
                    match self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let h = self.b.get(self.i + 2..self.i + 6)?;
                            if !h.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                // UTF-8: one whole, well-formed character (no overlong form, no surrogate).
                c if c >= 0x80 => {
                    let n = match c {
                        0xc2..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf4 => 4,
                        _ => return None,
                    };
                    let ch = self.b.get(self.i..self.i + n)?;
                    std::str::from_utf8(ch).ok()?;
                    self.i += n;
                }
                // A control character: invalid inside a string.
                _ => return None,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Option<Kind> {
        if depth > MAX_DEPTH {
            return None;
        }
        let lit = |s: &mut Self, w: &[u8], k| {
            s.b[s.i..].starts_with(w).then(|| {
                s.i += w.len();
                k
            })
        };
        match *self.b.get(self.i)? {
            b'"' => {
                let (_, _, esc) = self.string()?;
                if esc {
                    self.plain = false;
                }
                Some(Kind::Str)
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                self.i = crate::transform::value::number_end(self.b, start)?;
                // jaq reads `-0` as the integer 0 and writes `0`.
                if &self.b[start..self.i] == b"-0" {
                    self.plain = false;
                }
                Some(Kind::Num)
            }
            b't' => lit(self, b"true", Kind::True),
            b'f' => lit(self, b"false", Kind::False),
            b'n' => lit(self, b"null", Kind::Null),
            b'[' => {
                self.i += 1;
                self.ws_in();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Some(Kind::Arr);
                }
                loop {
                    self.ws_in();
                    self.value(depth + 1)?;
                    self.ws_in();
                    match self.b.get(self.i)? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(Kind::Arr);
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.i += 1;
                self.ws_in();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Some(Kind::Obj);
                }
                let mut keys: Vec<(usize, usize)> = Vec::new();
                loop {
                    self.ws_in();
                    let (k0, k1, esc) = self.string()?;
                    if esc {
                        self.plain = false;
                    }
                    let k = &self.b[k0..k1];
                    if keys.iter().any(|&(a, b)| &self.b[a..b] == k) {
                        self.plain = false;
                    }
                    keys.push((k0, k1));
                    self.ws_in();
                    if self.b.get(self.i)? != &b':' {
                        return None;
                    }
                    self.i += 1;
                    self.ws_in();
                    self.value(depth + 1)?;
                    self.ws_in();
                    match self.b.get(self.i)? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(Kind::Obj);
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// The member `name` of the plain object `text` (used for nested paths like `.pos.lat`).
pub fn find_in(text: &[u8], name: &[u8]) -> Option<(Kind, usize, usize)> {
    let mut s = Scan::default();
    if !scan_object(text, &mut s) {
        return None;
    }
    s.get(text, name).map(|m| (m.kind, m.start, m.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain(t: &str) -> Option<bool> {
        let mut s = Scan::default();
        scan_object(t.as_bytes(), &mut s).then_some(s.plain)
    }

    #[test]
    fn plainness() {
        assert_eq!(plain(r#"{"a":1,"b":[1,{"c":null}],"d":"é"}"#), Some(true));
        assert_eq!(plain(r#"{"a": 1}"#), Some(false));
        assert_eq!(plain(r#"{"a":"\n"}"#), Some(false));
        assert_eq!(plain(r#"{"a":1,"a":2}"#), Some(false));
        assert_eq!(plain(r#"{"a":{"b":1,"b":2}}"#), Some(false));
        assert_eq!(plain(r#"{"a":-0}"#), Some(false));
        assert_eq!(plain(r#"{"a":-0.0}"#), Some(true));
        assert_eq!(plain(r#"{"a":[1, 2]}"#), Some(false));
        assert_eq!(plain(r#"[1]"#), None);
        assert_eq!(plain(r#"{"a":1,}"#), None);
    }

    proptest! {
        #[test]
        fn special_finds_the_first(b in prop::collection::vec(prop::sample::select(vec![b'a', b'"', b'\\', 0x1f, 0x7f, 0x80, 0xa0, 0xff, b' ']), 0..40)) {
            let want = b.iter().position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c));
            prop_assert_eq!(special(&b), want);
        }

        /// Whatever bytes a string holds, the scan accepts the text exactly when it is valid
        /// UTF-8 and the parser accepts it.
        #[test]
        fn strings_are_valid_utf8_when_accepted(inner in prop::collection::vec(prop::sample::select(vec![
            b'a', b' ', 0x7f, 0x80, 0xbf, 0xc0, 0xc2, 0xc3, 0xa9, 0xe0, 0xa0, 0xed, 0xa0, 0xef, 0xbb, 0xf0, 0x90, 0xf4, 0xf5, 0xff,
        ]), 0..12)) {
            let mut text = b"{\"k\":\"".to_vec();
            text.extend_from_slice(&inner);
            text.extend_from_slice(b"\"}");
            let mut sc = Scan::default();
            let ok = scan_object(&text, &mut sc);
            let want = std::str::from_utf8(&text).is_ok() && crate::transform::value::parse(&text).is_ok();
            prop_assert_eq!(ok, want, "{:?}", text);
        }

        /// The scan and the value parser agree on what is valid, and a plain object is
        /// exactly what the writer gives back.
        #[test]
        fn agrees_with_the_parser(s in r#"\{("[a-c\\]{0,2}" ?: ?(-?[0-9]{1,2}(\.[0-9])?|"[xé\\n]{0,2}"|\[ ?\]|\{\}|true|null),?){0,3}\} ?"#) {
            let mut sc = Scan::default();
            let ok = scan_object(s.as_bytes(), &mut sc);
            let parsed = crate::transform::value::parse(s.as_bytes());
            prop_assert_eq!(ok, parsed.is_ok(), "{}", s);
            if ok && sc.plain {
                let mut out = Vec::new();
                crate::transform::value::write(&mut out, &parsed.unwrap());
                prop_assert_eq!(String::from_utf8(out).unwrap(), s);
            }
        }
    }
}
