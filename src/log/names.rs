//! Topic, group and table names: Kafka's rule, `[A-Za-z0-9._-]`, 1 to 249 characters, not
//! `.` or `..`. Checked before any path is built from a name, so no name can leave the log.

use crate::error::{usage, Error};

pub fn validate(kind: &str, name: &str) -> Result<(), Error> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > 249 || !ok_chars || name == "." || name == ".." {
        return Err(usage(format!(
            "invalid {kind} name {name:?}: use 1 to 249 characters of [A-Za-z0-9._-], not \".\" or \"..\""
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn kafka_rule() {
        for ok in ["telemetry", "a.b_c-1", "x"] {
            assert!(validate("topic", ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(250);
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "a b",
            "é",
            long.as_str(),
            "a\0",
        ] {
            assert!(validate("topic", bad).is_err(), "{bad:?}");
        }
    }
}
