//! Built-ins that telemetry ETL needs and jq lacks. Timestamps follow the same rules as every
//! kappa tool (`--ts`, `@TIME`): RFC 3339 text, or epoch s/ms/µs/ns told apart by magnitude.
//! What can be written in jq is written in jq (`builtins.jq`); parsing and formatting
//! timestamps and durations call the tools' own Rust code so both always agree.

use crate::record::time;
use jaq_core::native::{bome, run, v, Fun};
use jaq_core::{load, Error, RunPtr};
use jaq_json::{Num, Val};
use jaq_std::ValT;

pub type D = jaq_core::data::JustLut<Val>;

/// The jq definitions (parsed once per compile; the text is ours, so it always parses).
pub fn defs() -> impl Iterator<Item = load::parse::Def<&'static str>> {
    load::parse(include_str!("builtins.jq"), |p| p.defs())
        .unwrap_or_default()
        .into_iter()
}

fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::TStr(_) | Val::BStr(_) => "string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

/// A timestamp value as epoch milliseconds, by the tools' rules.
pub fn ts_ms(v: &Val, format: Option<&str>) -> Result<i64, String> {
    match v {
        Val::Num(Num::Int(i)) => Ok(time::epoch_int_to_ms(*i as i64)),
        Val::Num(_) => {
            let f = v.as_f64().unwrap_or(f64::NAN);
            time::epoch_to_ms(f).ok_or_else(|| format!("timestamp out of range: {f}"))
        }
        Val::TStr(s) | Val::BStr(s) => {
            let s = String::from_utf8_lossy(s);
            match format {
                Some(f) => time::parse_with_format(&s, f),
                None => time::parse_text(&s),
            }
        }
        other => Err(format!(
            "cannot read a timestamp from {} ({})",
            crate::transform::value::to_text(other),
            type_name(other)
        )),
    }
}

fn ms_of(v: &Val) -> Result<i64, String> {
    match v {
        Val::Num(Num::Int(i)) => Ok(*i as i64),
        Val::Num(_) => Ok(v.as_f64().unwrap_or(f64::NAN).floor() as i64),
        other => Err(format!(
            "expected epoch milliseconds, got {} ({})",
            crate::transform::value::to_text(other),
            type_name(other)
        )),
    }
}

fn int(i: i64) -> Val {
    Val::Num(Num::from_integral(i))
}

/// A native filter before it is wrapped for the compiler.
type Native = (&'static str, Box<[jaq_core::Bind]>, RunPtr<D>);

/// Native filters: `tsms`, `tsms(fmt)`, `ms_iso`, `duration_ms`.
pub fn funs() -> impl Iterator<Item = Fun<D>> {
    let fs: [Native; 4] = [
        ("tsms", v(0), |cv| {
            bome(ts_ms(&cv.1, None).map(int).map_err(Error::str))
        }),
        ("tsms", v(1), |mut cv| {
            let f = cv.0.pop_var();
            let r = match &f {
                Val::TStr(s) => ts_ms(&cv.1, Some(&String::from_utf8_lossy(s))),
                _ => Err("tsms(format): the format must be a string".to_string()),
            };
            bome(r.map(int).map_err(Error::str))
        }),
        ("ms_iso", v(0), |cv| {
            bome(
                ms_of(&cv.1)
                    .and_then(|ms| {
                        if jiff::Timestamp::from_millisecond(ms).is_err() {
                            Err(format!("{ms} ms is outside the years -9999..9999"))
                        } else {
                            Ok(Val::from(time::format_rfc3339(ms)))
                        }
                    })
                    .map_err(Error::str),
            )
        }),
        ("duration_ms", v(0), |cv| {
            let r = match &cv.1 {
                Val::TStr(s) => time::parse_duration_ms(&String::from_utf8_lossy(s)).map(int),
                Val::Num(_) => Ok(cv.1.clone()),
                other => Err(format!(
                    "duration_ms: expected text like \"5m\", got {}",
                    type_name(other)
                )),
            };
            bome(r.map_err(Error::str))
        }),
    ];
    fs.into_iter().map(run::<D>)
}
