//! Small JSON helpers for the hot paths: string escaping without an allocation, and the
//! JSON number grammar (to type CSV cells without changing their text).

/// Appends `s` as a JSON string literal.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let clean = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if clean {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json's escaper writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether `s` is exactly a JSON number literal: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
pub fn is_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(c) if c.is_ascii_digit() => {
            while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let s = i;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let s = i;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// The text a JSON value stands for as a key or CSV cell: a string's contents, a number's
/// or boolean's literal, nothing for null, compact JSON for objects and arrays.
pub fn scalar_text(raw: &str) -> Option<String> {
    let t = raw.trim();
    match t.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(t).ok(),
        Some(b'n') if t == "null" => None,
        Some(b'{') | Some(b'[') => serde_json::from_str::<serde_json::Value>(t)
            .ok()
            .map(|v| v.to_string()),
        Some(_) => Some(t.to_string()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for ok in [
            "0",
            "-1",
            "12.5",
            "1e3",
            "-0.5E-7",
            "123456789012345678901234567890",
        ] {
            assert!(is_number(ok), "{ok}");
        }
        for bad in [
            "", "-", "007", "+5", ".5", "5.", "1e", "NaN", "inf", "0x10", "1 ",
        ] {
            assert!(!is_number(bad), "{bad}");
        }
    }

    #[test]
    fn escaping() {
        let mut v = Vec::new();
        write_str(&mut v, "a\"b\n");
        assert_eq!(v, br#""a\"b\n""#);
        assert_eq!(scalar_text(r#""x\ty""#).as_deref(), Some("x\ty"));
        assert_eq!(scalar_text("17").as_deref(), Some("17"));
        assert_eq!(scalar_text("null"), None);
    }
}
