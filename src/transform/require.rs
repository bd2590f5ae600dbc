//! `--require 'FIELD:TYPE,...'`: records that lack a field (or hold null there) or hold the
//! wrong type are bad records, handled by `--on-error`. Checked on the input value before
//! the program runs, by position in the record's text (no values are built).

use crate::record::scan::{self, Kind, Scan};
use crate::record::time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Any,
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Timestamp,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// The field as written, for messages.
    pub field: String,
    /// Object keys from the top (a name, or the steps of a JSON pointer).
    path: Vec<String>,
    pub ty: Type,
}

/// Parses `speed:number,vehicle_id:string,ts:timestamp` (a field without a type must only
/// be present and not null).
pub fn parse(spec: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (field, ty) = match item.rsplit_once(':') {
            Some((f, t)) => (f, t),
            None => (item, ""),
        };
        let ty = match ty {
            "" | "any" => Type::Any,
            "string" => Type::String,
            "number" => Type::Number,
            "integer" => Type::Integer,
            "boolean" | "bool" => Type::Boolean,
            "object" => Type::Object,
            "array" => Type::Array,
            "timestamp" => Type::Timestamp,
            other => {
                return Err(format!(
                    "--require: unknown type {other:?} for {field} (string, number, integer, \
                     boolean, object, array, timestamp)"
                ))
            }
        };
        let path = match field.strip_prefix('/') {
            Some(p) => p
                .split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect(),
            None => vec![field.to_string()],
        };
        if field.is_empty() {
            return Err("--require: empty field name".into());
        }
        rules.push(Rule {
            field: field.to_string(),
            path,
            ty,
        });
    }
    Ok(rules)
}

impl Rule {
    /// Checks the object `text` (scanned as `s`).
    pub fn check(&self, text: &[u8], s: &Scan) -> Result<(), String> {
        let missing = || Err(format!("--require: {} is missing", self.field));
        let Some(m) = s.get(text, self.path[0].as_bytes()) else {
            return missing();
        };
        let (mut kind, mut span) = (m.kind, (m.start, m.end));
        let mut inner = Scan::default();
        for step in &self.path[1..] {
            let obj = &text[span.0..span.1];
            if kind != Kind::Obj || !scan::scan_object(obj, &mut inner) {
                return missing();
            }
            let Some(m) = inner.get(obj, step.as_bytes()) else {
                return missing();
            };
            kind = m.kind;
            span = (span.0 + m.start, span.0 + m.end);
        }
        let v = &text[span.0..span.1];
        let ok = match (self.ty, kind) {
            (_, Kind::Null) => return missing(),
            (Type::Any, _) => true,
            (Type::String, k) => k == Kind::Str,
            (Type::Number, k) => k == Kind::Num,
            (Type::Integer, Kind::Num) => std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15),
            (Type::Boolean, k) => matches!(k, Kind::True | Kind::False),
            (Type::Object, k) => k == Kind::Obj,
            (Type::Array, k) => k == Kind::Arr,
            (Type::Timestamp, Kind::Num) => std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .and_then(time::epoch_to_ms)
                .is_some(),
            (Type::Timestamp, Kind::Str) => serde_json::from_slice::<String>(v)
                .ok()
                .is_some_and(|t| time::parse_text(&t).is_ok()),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            let shown: String = String::from_utf8_lossy(v).chars().take(40).collect();
            Err(format!(
                "--require: {} is not {} ({shown})",
                self.field,
                type_words(self.ty)
            ))
        }
    }
}

fn type_words(t: Type) -> &'static str {
    match t {
        Type::Any => "present",
        Type::String => "a string",
        Type::Number => "a number",
        Type::Integer => "an integer",
        Type::Boolean => "a boolean",
        Type::Object => "an object",
        Type::Array => "an array",
        Type::Timestamp => "a timestamp",
    }
}
