//! CSV rows as JSON objects: the header row names the fields; a cell that is exactly a JSON
//! number literal becomes that number (its text kept), `true`/`false` become booleans, an
//! empty cell becomes null, and anything else a string.

use crate::record::json::{is_number, write_str};

/// Appends one row as a compact JSON object. Cells must be UTF-8 (the caller checked).
pub fn write_object(out: &mut Vec<u8>, headers: &[String], cells: &[&str]) {
    out.push(b'{');
    for (i, (h, c)) in headers.iter().zip(cells).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, h);
        out.push(b':');
        write_cell(out, c);
    }
    out.push(b'}');
}

pub fn write_cell(out: &mut Vec<u8>, c: &str) {
    if c.is_empty() {
        out.extend_from_slice(b"null");
    } else if c == "true" || c == "false" || is_number(c) {
        out.extend_from_slice(c.as_bytes());
    } else {
        write_str(out, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_cells() {
        let mut out = Vec::new();
        let h = vec![
            "a".to_string(),
            "b".into(),
            "c".into(),
            "d".into(),
            "e".into(),
        ];
        write_object(&mut out, &h, &["1.50", "", "true", "007", "x\"y"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":1.50,"b":null,"c":true,"d":"007","e":"x\"y"}"#
        );
    }
}
