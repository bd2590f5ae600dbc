//! The engine of `transform`: a jq program (jaq) compiled once and run per record, with the
//! record's envelope as variables, lookup tables, `--require` checks, and the fast path for
//! simple programs. It turns one input line into zero or more output lines; the tool
//! (`cmd::transform`) owns reading, batching across threads, order, errors and stdout.
//!
//! Envelopes: the program sees the value as `.` and `$key $ts $offset $partition $topic`;
//! each output keeps the input's provenance, key, timestamp and headers, takes the new value,
//! and gets `"sub":N` when it is not the first output for its source record (a flat map),
//! numbered by the writer. `--envelope` runs the program over the whole envelope instead.

pub mod builtins;
pub mod fast;
pub mod lookup;
pub mod require;

pub mod value;

use crate::record::json::write_str;
use crate::record::scan::{self, Kind, Member, Scan};
use builtins::D;
use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use std::borrow::Cow;

type Filter = jaq_core::Filter<D>;

/// Variables every program may use; their values come from the record.
pub const RECORD_VARS: [&str; 5] = ["$key", "$ts", "$offset", "$partition", "$topic"];

pub use crate::cli::input::InputMode;

/// What to build an engine from.
pub struct Spec {
    pub program: String,
    /// Where the program came from, for error messages (`program` or a file name).
    pub origin: String,
    pub set_key: Option<String>,
    pub set_ts: Option<String>,
    /// `--arg`, `--argjson`, lookup tables and `$ENV`, in that order (names with `$`).
    pub vars: Vec<(String, Val)>,
    pub input: InputMode,
    pub whole_envelope: bool,
    pub require: Vec<require::Rule>,
    /// Disable the fast path (to compare both paths).
    pub no_fast: bool,
}

struct FastPath {
    plan: fast::Plan,
    key: Option<fast::Expr>,
    ts: Option<fast::Expr>,
    /// Values of the static variables that are scalars (others make the plan unusable).
    statics: Vec<fast::V<'static>>,
    /// The plan reads variables, so each record builds their values.
    needs_vars: bool,
}

pub struct Engine {
    main: Filter,
    set_key: Option<Filter>,
    set_ts: Option<Filter>,
    statics: Vec<Val>,
    fast: Option<FastPath>,
    input: InputMode,
    whole: bool,
    require: Vec<require::Rule>,
    /// --set-key or --set-ts: outputs of plain records become envelopes.
    setting: bool,
}

/// Output lines of a batch of records, with where each ends.
#[derive(Default)]
pub struct Outputs {
    pub buf: Vec<u8>,
    /// Per output: the end offset in `buf`, and where `,"sub":N` goes (0: nowhere).
    pub outs: Vec<(usize, usize)>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.outs.clear();
    }
}

/// Per-thread scratch space, reused across records.
#[derive(Default)]
pub struct Scratch {
    top: Scan,
    val: Scan,
}

/// The parts of an envelope line.
struct Env<'a> {
    topic: Option<&'a Member>,
    partition: Option<&'a Member>,
    offset: Option<&'a Member>,
    ts: Option<&'a Member>,
    key: Option<&'a Member>,
    key_b64: Option<&'a Member>,
    headers: Option<&'a Member>,
    value: &'a Member,
    value_name: &'static str,
}

/// The key and timestamp of an output envelope.
enum KeyOut<'a> {
    Keep,
    Null,
    Text(Cow<'a, [u8]>),
}

impl Engine {
    pub fn new(spec: Spec) -> Result<Engine, String> {
        let mut names: Vec<String> = RECORD_VARS.iter().map(|s| s.to_string()).collect();
        names.extend(spec.vars.iter().map(|(n, _)| n.clone()));
        let main = compile(&spec.program, &spec.origin, &names)?;
        let set_key = spec
            .set_key
            .as_deref()
            .map(|c| compile(c, "--set-key", &names))
            .transpose()?;
        let set_ts = spec
            .set_ts
            .as_deref()
            .map(|c| compile(c, "--set-ts", &names))
            .transpose()?;
        let statics: Vec<Val> = spec.vars.into_iter().map(|(_, v)| v).collect();
        let fast = if spec.no_fast || spec.whole_envelope {
            None
        } else {
            plan_fast(
                &spec.program,
                spec.set_key.as_deref(),
                spec.set_ts.as_deref(),
                &names,
                &statics,
            )
        };
        Ok(Engine {
            main,
            set_key,
            set_ts,
            statics,
            fast,
            input: spec.input,
            whole: spec.whole_envelope,
            require: spec.require,
            setting: spec.set_key.is_some() || spec.set_ts.is_some(),
        })
    }

    /// Whether simple records skip jaq (for the summary and the benchmarks).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Runs one input line; its outputs are appended to `out`. Err: the record is bad (the
    /// message says why); nothing was appended then.
    pub fn process(&self, line: &[u8], sc: &mut Scratch, out: &mut Outputs) -> Result<(), String> {
        let mark = (out.buf.len(), out.outs.len());
        let r = self.process_inner(line, sc, out);
        if r.is_err() {
            out.buf.truncate(mark.0);
            out.outs.truncate(mark.1);
        }
        r
    }

    fn process_inner(
        &self,
        line: &[u8],
        sc: &mut Scratch,
        out: &mut Outputs,
    ) -> Result<(), String> {
        if let Err(e) = std::str::from_utf8(line) {
            return Err(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1));
        }
        let mut top = std::mem::take(&mut sc.top);
        let r = if scan::scan_object(line, &mut top) {
            self.record(line, &top, sc, out)
        } else {
            Err(not_an_object(line))
        };
        sc.top = top;
        r
    }

    fn record(
        &self,
        line: &[u8],
        top: &Scan,
        sc: &mut Scratch,
        out: &mut Outputs,
    ) -> Result<(), String> {
        let env = match self.input {
            InputMode::Plain => None,
            InputMode::Auto => envelope_parts(line, top)
                .filter(|e| e.topic.is_some() && e.partition.is_some() && e.offset.is_some()),
            InputMode::Envelope => Some(
                envelope_parts(line, top)
                    .ok_or("not an envelope: no value, value_str or value_base64")?,
            ),
        };
        let Some(env) = env else {
            // A plain object: the whole line is the value.
            for r in &self.require {
                r.check(line, top)?;
            }
            return self.run_value(line, line, top, None, out);
        };
        if self.whole {
            return self.run_whole(line, &env, out);
        }
        let vtext = env.value.value(line);
        let mut vscan = std::mem::take(&mut sc.val);
        let r = (|| {
            let is_obj = env.value_name == "value" && scan::scan_object(vtext, &mut vscan);
            if !self.require.is_empty() {
                if !is_obj {
                    return Err("--require: the value is not a JSON object".to_string());
                }
                for r in &self.require {
                    r.check(vtext, &vscan)?;
                }
            }
            if !is_obj {
                vscan.members.clear();
                vscan.plain = false;
            }
            self.run_value(line, vtext, &vscan, Some(&env), out)
        })();
        sc.val = vscan;
        r
    }

    /// Runs the program on a value (`text`, scanned as `vs` when it is an object).
    fn run_value(
        &self,
        line: &[u8],
        text: &[u8],
        vs: &Scan,
        env: Option<&Env>,
        out: &mut Outputs,
    ) -> Result<(), String> {
        if let Some(fp) = &self.fast {
            if vs.plain {
                let vars = if fp.needs_vars {
                    fast_vars(line, env, &fp.statics)
                } else {
                    Vec::new()
                };
                if let Some(done) = self.run_fast(fp, line, text, vs, env, &vars, out) {
                    return done;
                }
            }
        }
        let input = match env {
            Some(e) if e.value_name != "value" => string_member(line, e.value),
            _ => value::parse(text).map_err(|e| e.to_string())?,
        };
        let vars = self.record_vars(line, env);
        let outputs = self.eval(&self.main, input, vars.clone())?;
        for v in outputs {
            let key = match &self.set_key {
                None => KeyOut::Keep,
                Some(f) => key_of(self.eval(f, v.clone(), vars.clone())?.into_iter().next())?,
            };
            let ts = match &self.set_ts {
                None => None,
                Some(f) => ts_of(self.eval(f, v.clone(), vars.clone())?.into_iter().next())?,
            };
            let start = out.buf.len();
            let split = write_head(&mut out.buf, line, env, &key, ts, self.setting);
            value::write(&mut out.buf, &v);
            write_tail(&mut out.buf, line, env, self.setting);
            out.buf.push(b'\n');
            out.outs
                .push((out.buf.len(), split.map_or(0, |s| start + s)));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run_fast(
        &self,
        fp: &FastPath,
        line: &[u8],
        text: &[u8],
        vs: &Scan,
        env: Option<&Env>,
        vars: &[fast::V],
        out: &mut Outputs,
    ) -> Option<Result<(), String>> {
        let Some(obj) = fp.plan.run(text, vs, vars)? else {
            return Some(Ok(()));
        };
        let key = match &fp.key {
            None => KeyOut::Keep,
            Some(e) => match fast::eval(e, &obj, vars)? {
                fast::V::Null => KeyOut::Null,
                fast::V::Str(s) => KeyOut::Text(s),
                v @ (fast::V::Int(_) | fast::V::Float(_) | fast::V::Dec(_) | fast::V::Bool(_)) => {
                    let mut t = Vec::new();
                    v.write(&mut t);
                    KeyOut::Text(Cow::Owned(t))
                }
                fast::V::Raw(..) => return None,
            },
        };
        let ts = match &fp.ts {
            None => None,
            Some(e) => match fast::eval(e, &obj, vars)? {
                fast::V::Null => None,
                fast::V::Int(i) => Some(crate::record::time::epoch_int_to_ms(i as i64)),
                v @ (fast::V::Float(_) | fast::V::Dec(_)) => {
                    Some(crate::record::time::epoch_to_ms(v.as_f64()?)?)
                }
                fast::V::Str(s) => {
                    Some(crate::record::time::parse_text(std::str::from_utf8(&s).ok()?).ok()?)
                }
                _ => return None,
            },
        };
        let start = out.buf.len();
        let split = write_head(&mut out.buf, line, env, &key, ts, self.setting);
        obj.write(&mut out.buf);
        write_tail(&mut out.buf, line, env, self.setting);
        out.buf.push(b'\n');
        out.outs
            .push((out.buf.len(), split.map_or(0, |s| start + s)));
        Some(Ok(()))
    }

    /// `--envelope`: the program maps the whole envelope to envelopes.
    fn run_whole(&self, line: &[u8], env: &Env, out: &mut Outputs) -> Result<(), String> {
        let input = value::parse(line).map_err(|e| e.to_string())?;
        let vars = self.record_vars(line, Some(env));
        for v in self.eval(&self.main, input, vars)? {
            let Val::Obj(o) = &v else {
                return Err(format!(
                    "--envelope: the program must output envelope objects, not {}",
                    value::to_text(&v)
                ));
            };
            let get = |k: &str| o.get(&Val::from(k.to_string()));
            let Some(val) = get("value") else {
                return Err("--envelope: an output envelope has no value".into());
            };
            let key = match get("key") {
                None => KeyOut::Keep,
                Some(k) => key_of(Some(k.clone()))?,
            };
            let ts = match get("ts") {
                None => None,
                Some(t) => ts_of(Some(t.clone()))?,
            };
            let start = out.buf.len();
            let split = write_head(&mut out.buf, line, Some(env), &key, ts, false);
            value::write(&mut out.buf, val);
            match get("headers") {
                Some(h @ Val::Arr(_)) => {
                    out.buf.extend_from_slice(b",\"headers\":");
                    value::write(&mut out.buf, h);
                }
                Some(Val::Null) | None => {}
                Some(other) => {
                    return Err(format!(
                        "--envelope: headers must be a list of [name, value], not {}",
                        value::to_text(other)
                    ))
                }
            }
            out.buf.extend_from_slice(b"}\n");
            out.outs
                .push((out.buf.len(), split.map_or(0, |s| start + s)));
        }
        Ok(())
    }

    fn record_vars(&self, line: &[u8], env: Option<&Env>) -> Vars<Val> {
        let mut vals = Vec::with_capacity(RECORD_VARS.len() + self.statics.len());
        match env {
            None => vals.extend(std::iter::repeat_n(Val::Null, RECORD_VARS.len())),
            Some(e) => {
                vals.push(match (e.key, e.key_b64) {
                    (Some(k), _) if k.kind == Kind::Str => string_member(line, k),
                    _ => Val::Null,
                });
                for m in [e.ts, e.offset, e.partition] {
                    vals.push(match m {
                        Some(m) if m.kind == Kind::Num => {
                            value::num(std::str::from_utf8(m.value(line)).unwrap_or("0"))
                        }
                        _ => Val::Null,
                    });
                }
                vals.push(match e.topic {
                    Some(t) if t.kind == Kind::Str => string_member(line, t),
                    _ => Val::Null,
                });
            }
        }
        vals.extend(self.statics.iter().cloned());
        Vars::new(vals)
    }

    fn eval(&self, f: &Filter, input: Val, vars: Vars<Val>) -> Result<Vec<Val>, String> {
        let ctx = Ctx::<D>::new(&f.lut, vars);
        let mut outs = Vec::new();
        for r in f.id.run((ctx, input)) {
            match jaq_core::unwrap_valr(r) {
                Ok(v) => outs.push(v),
                // A string error (`error("...")`, jaq's own messages) reads bare, as in jq.
                Err(e) => {
                    let msg = match e.into_val() {
                        Val::TStr(t) | Val::BStr(t) => String::from_utf8_lossy(&t).into_owned(),
                        other => value::to_text(&other),
                    };
                    return Err(format!("jq error: {msg}"));
                }
            }
        }
        Ok(outs)
    }
}

/// The record variables and static scalars for the fast path.
fn fast_vars<'a>(
    line: &'a [u8],
    env: Option<&Env<'a>>,
    statics: &[fast::V<'static>],
) -> Vec<fast::V<'a>> {
    let mut v: Vec<fast::V<'a>> = Vec::with_capacity(RECORD_VARS.len() + statics.len());
    let scalar = |m: Option<&Member>| -> fast::V<'a> {
        match m {
            Some(m) if m.kind == Kind::Str && m.plain => {
                let t = m.value(line);
                fast::V::Str(Cow::Borrowed(&t[1..t.len() - 1]))
            }
            Some(m) if m.kind == Kind::Num && m.plain => {
                let t = std::str::from_utf8(m.value(line)).unwrap_or("0");
                match value::num(t) {
                    Val::Num(Num::Int(i)) => fast::V::Int(i),
                    _ => fast::V::Dec(Cow::Owned(t.to_string())),
                }
            }
            _ => fast::V::Null,
        }
    };
    match env {
        None => v.extend(std::iter::repeat_n(fast::V::Null, RECORD_VARS.len())),
        Some(e) => {
            v.push(scalar(e.key));
            v.push(scalar(e.ts));
            v.push(scalar(e.offset));
            v.push(scalar(e.partition));
            v.push(scalar(e.topic));
        }
    }
    v.extend(statics.iter().cloned());
    v
}

/// Plans the fast path when the program, `--set-key` and `--set-ts` are all covered.
fn plan_fast(
    program: &str,
    set_key: Option<&str>,
    set_ts: Option<&str>,
    names: &[String],
    statics: &[Val],
) -> Option<FastPath> {
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let term = jaq_core::load::parse(program, |p| p.term())?;
    let plan = fast::plan(&term, &names)?;
    let expr = |code: Option<&str>| -> Option<Option<fast::Expr>> {
        match code {
            None => Some(None),
            Some(c) => Some(Some(fast::plan_expr(
                &jaq_core::load::parse(c, |p| p.term())?,
                &names,
            )?)),
        }
    };
    let key = expr(set_key)?;
    let ts = expr(set_ts)?;
    let mut sv = Vec::with_capacity(statics.len());
    for v in statics {
        sv.push(match v {
            Val::Null => fast::V::Null,
            Val::Bool(b) => fast::V::Bool(*b),
            Val::Num(Num::Int(i)) => fast::V::Int(*i),
            Val::Num(Num::Dec(d)) => fast::V::Dec(Cow::Owned(d.to_string())),
            Val::TStr(s) => fast::V::Str(Cow::Owned(s.to_vec())),
            // A table or other container: plans never index variables, so such a variable
            // is only usable by a program that is not planned anyway.
            _ => fast::V::Null,
        });
    }
    let needs_vars = format!("{plan:?}{key:?}{ts:?}").contains("Var(");
    Some(FastPath {
        plan,
        key,
        ts,
        statics: sv,
        needs_vars,
    })
}

/// The parts of an envelope, when the object has a value member. One pass over the
/// members (this runs for every line in auto mode); the last of a repeated key wins.
fn envelope_parts<'a>(line: &[u8], s: &'a Scan) -> Option<Env<'a>> {
    let mut f: [Option<&'a Member>; 10] = [None; 10];
    for m in &s.members {
        let decoded;
        let key: &[u8] = if m.key_escaped {
            decoded = serde_json::from_slice::<String>(&line[m.key.0 - 1..m.key.1 + 1])
                .unwrap_or_default();
            decoded.as_bytes()
        } else {
            &line[m.key.0..m.key.1]
        };
        let slot = match key {
            b"topic" => 0,
            b"partition" => 1,
            b"offset" => 2,
            b"ts" => 3,
            b"key" => 4,
            b"key_base64" => 5,
            b"headers" => 6,
            b"value" => 7,
            b"value_str" => 8,
            b"value_base64" => 9,
            _ => continue,
        };
        f[slot] = Some(m);
    }
    let (value, value_name) = match (f[7], f[8], f[9]) {
        (Some(v), _, _) => (v, "value"),
        (None, Some(v), _) => (v, "value_str"),
        (None, None, Some(v)) => (v, "value_base64"),
        _ => return None,
    };
    Some(Env {
        topic: f[0],
        partition: f[1],
        offset: f[2],
        ts: f[3],
        key: f[4],
        key_b64: f[5],
        headers: f[6],
        value,
        value_name,
    })
}

/// A string member's decoded value (non-strings become null).
fn string_member(line: &[u8], m: &Member) -> Val {
    if m.kind != Kind::Str {
        return Val::Null;
    }
    let t = m.value(line);
    if !t.contains(&b'\\') {
        return Val::from(String::from_utf8_lossy(&t[1..t.len() - 1]).into_owned());
    }
    serde_json::from_slice::<String>(t).map_or(Val::Null, Val::from)
}

/// Writes the envelope up to the value (`{"topic":...,"value":`). Returns where `sub`
/// goes (after the offset) when the record has provenance. Plain input without key or
/// timestamp settings writes nothing: the output is the bare value.
fn write_head(
    out: &mut Vec<u8>,
    line: &[u8],
    env: Option<&Env>,
    key: &KeyOut,
    ts: Option<i64>,
    setting: bool,
) -> Option<usize> {
    let start = out.len();
    let Some(e) = env else {
        if setting {
            out.push(b'{');
            write_key_ts(out, line, None, key, ts, true);
            out.extend_from_slice(b",\"value\":");
        }
        return None;
    };
    out.push(b'{');
    let mut first = true;
    let mut split = None;
    for (name, m) in [
        ("topic", e.topic),
        ("partition", e.partition),
        ("offset", e.offset),
    ] {
        if let Some(m) = m {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(m.value(line));
            split = Some(out.len() - start);
        }
    }
    write_key_ts(out, line, Some(e), key, ts, first);
    out.extend_from_slice(b",\"value\":");
    split
}

fn write_key_ts(
    out: &mut Vec<u8>,
    line: &[u8],
    e: Option<&Env>,
    key: &KeyOut,
    ts: Option<i64>,
    first: bool,
) {
    let comma = |out: &mut Vec<u8>, first: &mut bool| {
        if !std::mem::take(first) {
            out.push(b',');
        }
    };
    let mut first = first;
    match (ts, e.and_then(|e| e.ts)) {
        (Some(ms), _) => {
            comma(out, &mut first);
            out.extend_from_slice(b"\"ts\":");
            out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
        }
        (None, Some(m)) => {
            comma(out, &mut first);
            out.extend_from_slice(b"\"ts\":");
            out.extend_from_slice(m.value(line));
        }
        (None, None) => {}
    }
    match key {
        KeyOut::Keep => match e.map(|e| (e.key, e.key_b64)) {
            Some((Some(m), _)) => {
                comma(out, &mut first);
                out.extend_from_slice(b"\"key\":");
                out.extend_from_slice(m.value(line));
            }
            Some((None, Some(m))) => {
                comma(out, &mut first);
                out.extend_from_slice(b"\"key_base64\":");
                out.extend_from_slice(m.value(line));
            }
            _ => {
                comma(out, &mut first);
                out.extend_from_slice(b"\"key\":null");
            }
        },
        KeyOut::Null => {
            comma(out, &mut first);
            out.extend_from_slice(b"\"key\":null");
        }
        KeyOut::Text(k) => {
            comma(out, &mut first);
            out.extend_from_slice(b"\"key\":");
            write_str(out, &String::from_utf8_lossy(k));
        }
    }
}

/// Closes an envelope opened by [`write_head`] (headers after the value, as consume does).
fn write_tail(out: &mut Vec<u8>, line: &[u8], env: Option<&Env>, setting: bool) {
    match env {
        Some(e) => {
            if let Some(h) = e.headers {
                out.extend_from_slice(b",\"headers\":");
                out.extend_from_slice(h.value(line));
            }
            out.push(b'}');
        }
        None if setting => out.push(b'}'),
        None => {}
    }
}

/// A `--set-key` result as a key.
fn key_of(v: Option<Val>) -> Result<KeyOut<'static>, String> {
    Ok(match v {
        None | Some(Val::Null) => KeyOut::Null,
        Some(Val::TStr(s) | Val::BStr(s)) => KeyOut::Text(Cow::Owned(s.to_vec())),
        Some(v @ (Val::Num(_) | Val::Bool(_))) => {
            KeyOut::Text(Cow::Owned(value::to_text(&v).into_bytes()))
        }
        Some(other) => {
            return Err(format!(
                "a key must be a string, number or boolean, not {}",
                value::to_text(&other)
            ))
        }
    })
}

/// A `--set-ts` result as epoch ms (null or no output: the input's timestamp stays).
fn ts_of(v: Option<Val>) -> Result<Option<i64>, String> {
    match v {
        None | Some(Val::Null) => Ok(None),
        Some(v) => builtins::ts_ms(&v, None).map(Some),
    }
}

/// Why a line that did not scan as an object is bad (the parser names the column).
pub fn not_an_object(line: &[u8]) -> String {
    if let Err(err) = std::str::from_utf8(line) {
        return format!("invalid UTF-8 at byte {}", err.valid_up_to() + 1);
    }
    match value::parse(line) {
        Err(e) => e.to_string(),
        Ok(_) => "expected a JSON object".into(),
    }
}

/// Compiles a jq program with kappa's built-ins; the error names the line and column.
pub fn compile(code: &str, origin: &str, vars: &[String]) -> Result<Filter, String> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .chain(builtins::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .chain(builtins::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errs| {
            let mut msgs = Vec::new();
            for (_, e) in errs {
                match e {
                    jaq_core::load::Error::Io(v) => {
                        msgs.extend(v.iter().map(|(p, e)| format!("{p}: {e}")))
                    }
                    jaq_core::load::Error::Lex(v) => msgs.extend(v.iter().map(|(exp, at)| {
                        format!("{}: expected {}", place(code, at), exp.as_str())
                    })),
                    jaq_core::load::Error::Parse(v) => msgs.extend(v.iter().map(|(exp, found)| {
                        let f = if found.is_empty() {
                            "the end".to_string()
                        } else {
                            format!("`{}`", found.chars().take(20).collect::<String>())
                        };
                        format!(
                            "{}: expected {}, found {f}",
                            place(code, found),
                            exp.as_str()
                        )
                    })),
                }
            }
            format!("{origin}: {}", msgs.join("; "))
        })?;
    Compiler::default()
        .with_funs(funs)
        .with_global_vars(vars.iter().map(|s| s.as_str()))
        .compile(modules)
        .map_err(|errs| {
            let msgs: Vec<String> = errs
                .into_iter()
                .flat_map(|(_, es)| es)
                .map(|(name, u)| {
                    let what = match u {
                        jaq_core::compile::Undefined::Var => "variable",
                        jaq_core::compile::Undefined::Mod => "module",
                        jaq_core::compile::Undefined::Label => "label",
                        _ => "filter",
                    };
                    format!("{}: undefined {what} `{name}`", place(code, name))
                })
                .collect();
            format!("{origin}: {}", msgs.join("; "))
        })
}

/// `line L, column C` of a slice of `code`.
fn place(code: &str, part: &str) -> String {
    let start = part.as_ptr() as usize;
    let base = code.as_ptr() as usize;
    if start < base || start > base + code.len() {
        return "program".into();
    }
    let before = &code[..start - base];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

/// A jq condition over one value (`store --delete-when`): true when its first output is
/// neither false nor null, as jq's `select` reads it.
pub struct Predicate {
    f: Filter,
}

impl Predicate {
    pub fn new(code: &str, origin: &str) -> Result<Predicate, String> {
        Ok(Predicate {
            f: compile(code, origin, &[])?,
        })
    }

    /// Tests the JSON `value` (its text).
    pub fn test(&self, value: &[u8]) -> Result<bool, String> {
        let v = value::parse(value).map_err(|e| e.to_string())?;
        let ctx = Ctx::<D>::new(&self.f.lut, Vars::new([]));
        let first = self.f.id.run((ctx, v)).next();
        match first.map(jaq_core::unwrap_valr) {
            None => Ok(false),
            Some(Ok(v)) => Ok(!matches!(v, Val::Null | Val::Bool(false))),
            Some(Err(e)) => Err(format!("jq error: {}", value::to_text(&e.into_val()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PROGRAMS: &[&str] = &[
        "select(.speed > 80)",
        "select(.speed >= 80.5 and .status == \"moving\")",
        "select(.speed < .limit or (.status != \"idle\" | not))",
        ".speed_kmh = .speed * 1.609 | .alert = (.temp > 95)",
        ".speed += 1 | .n -= 2 | .temp *= 1.5 | .r /= 4",
        "{vehicle_id, speed, k: (.speed // 0)}",
        ".x = (if .speed > 50 then \"fast\" elif .speed > 20 then \"mid\" else null end)",
        ".d = -.speed | .e = -(.n) | .f = .pos.lat | .g = (.pos.lat < 52.5)",
        ".s = .vehicle_id + \"-\" + .status | .t = (.missing + 1)",
        "select(.n == 3) | .q = (.n / 2) | .w = (.n * 1000000000000)",
        ".c1 = (.speed == .n) | .c2 = (.arr < .obj) | .c3 = (.arr == .arr) | .c4 = (.status > .n)",
        ".o = $offset | .topic = $topic",
        "select(.speed > $limit)",
    ];

    fn record() -> impl Strategy<Value = String> {
        let num = prop_oneof![
            Just("null".to_string()),
            Just("-0".to_string()),
            Just("99999999999999999999".to_string()),
            Just("9223372036854775807".to_string()),
            Just("1e400".to_string()),
            (-200i64..200).prop_map(|i| i.to_string()),
            (-2000i64..2000).prop_map(|i| format!("{}.{}", i / 10, (i % 10).abs())),
            Just("\"80\"".to_string()),
            Just("true".to_string()),
            Just("[1,2]".to_string()),
        ];
        let st = prop_oneof![
            Just("\"moving\"".to_string()),
            Just("\"idle\"".to_string()),
            Just("\"a\\nb\"".to_string()),
            Just("null".to_string()),
            Just("7".to_string()),
        ];
        (num.clone(), num.clone(), num.clone(), st, num, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(speed, n, temp, status, limit, nested, dup, spaced)| {
                let mut s = format!(
                    "{{\"vehicle_id\":\"truck-1\",\"speed\":{speed},\"n\":{n},\"temp\":{temp},\"status\":{status},\"limit\":{limit},\"r\":8"
                );
                if nested {
                    s.push_str(",\"pos\":{\"lat\":52.51,\"lon\":13.4},\"arr\":[1,{\"a\":2}],\"obj\":{}");
                }
                if dup {
                    s.push_str(",\"n\":5");
                }
                s.push('}');
                if spaced {
                    s = s.replacen(',', ", ", 1);
                }
                s
            })
    }

    fn spec(program: &str, no_fast: bool) -> Spec {
        Spec {
            program: program.into(),
            origin: "program".into(),
            set_key: None,
            set_ts: None,
            vars: vec![("$limit".into(), Val::from(60isize))],
            input: InputMode::Auto,
            whole_envelope: false,
            require: Vec::new(),
            no_fast,
        }
    }

    #[test]
    fn programs_are_planned() {
        for p in PROGRAMS {
            let e = Engine::new(spec(p, false)).unwrap();
            assert!(e.has_fast_path(), "{p}");
        }
        for p in [
            "map(.)",
            ".[]",
            "def f: .; f",
            "select(.a | test(\"x\"))",
            ".a.b = 1",
            ".",
        ] {
            let e = Engine::new(spec(p, false)).unwrap();
            assert!(!e.has_fast_path() || p == ".", "{p}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// The fast path and jaq give the same bytes (or both an error) for every program.
        #[test]
        fn fast_path_equals_jaq(rec in record(), envelope in any::<bool>()) {
            let line = if envelope {
                format!("{{\"topic\":\"t\",\"partition\":1,\"offset\":42,\"ts\":1795000000000,\"key\":\"k\",\"value\":{rec}}}")
            } else {
                rec
            };
            static ENGINES: std::sync::OnceLock<Vec<(Engine, Engine)>> = std::sync::OnceLock::new();
            let engines = ENGINES.get_or_init(|| {
                PROGRAMS
                    .iter()
                    .map(|p| (Engine::new(spec(p, false)).unwrap(), Engine::new(spec(p, true)).unwrap()))
                    .collect()
            });
            let run = |e: &Engine| {
                let mut sc = Scratch::default();
                let mut out = Outputs::default();
                e.process(line.as_bytes(), &mut sc, &mut out).map(|_| out.buf)
            };
            for (p, (f, s)) in PROGRAMS.iter().zip(engines) {
                let (fast, slow) = (run(f), run(s));
                let show = |r: &Result<Vec<u8>, String>| match r {
                    Ok(b) => String::from_utf8_lossy(b).into_owned(),
                    Err(e) => format!("error: {e}"),
                };
                prop_assert_eq!(show(&fast), show(&slow), "program {} on {}", p, line);
            }
        }
    }
}
