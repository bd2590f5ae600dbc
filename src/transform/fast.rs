//! The fast path: programs made only of `select`s, field assignments and object
//! constructions over scalar fields are run directly on the record's text, without building
//! jaq values. A filter reads the few fields it compares and copies the line; a map writes
//! the line's untouched members as they are and appends the new ones.
//!
//! It keeps jq semantics by mirroring jaq's rules (integer and decimal numbers, comparison
//! across types, `null + x`, `//`, truthiness) and by giving up on anything else: a record
//! whose evaluation meets a case not covered here (an array compared with an array, an
//! integer overflow, a field of a string...) returns `None` and runs through jaq instead,
//! which then yields the value or the error jq would. A program with any construct not
//! listed here is not planned at all. Tests compare both paths on the same inputs.

use super::value::{write_bytes_str, write_f64};
use crate::record::scan::{find_in, Kind, Scan};
use jaq_core::load::lex::StrPart;
use jaq_core::load::parse::{BinaryOp, Term};
use jaq_core::ops::{Cmp, Math};
use jaq_core::path::{Opt, Part};
use std::borrow::Cow;
use std::cmp::Ordering;

/// A scalar (or verbatim container) value during fast evaluation.
#[derive(Clone, Debug)]
pub enum V<'a> {
    Null,
    Bool(bool),
    Int(isize),
    Float(f64),
    /// A number literal kept as text, as jaq keeps it.
    Dec(Cow<'a, str>),
    /// A string's bytes (decoded).
    Str(Cow<'a, [u8]>),
    /// A plain array or object, copied verbatim.
    Raw(Kind, &'a [u8]),
}

impl V<'_> {
    fn truthy(&self) -> bool {
        !matches!(self, V::Null | V::Bool(false))
    }
    fn rank(&self) -> u8 {
        match self {
            V::Null => 0,
            V::Bool(_) => 1,
            V::Int(_) | V::Float(_) | V::Dec(_) => 2,
            V::Str(_) => 3,
            V::Raw(Kind::Arr, _) => 4,
            V::Raw(..) => 5,
        }
    }
    fn is_num(&self) -> bool {
        self.rank() == 2
    }

    /// A number's value as jaq converts it for arithmetic; None for other types.
    pub fn as_f64(&self) -> Option<f64> {
        float(self)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            V::Null => out.extend_from_slice(b"null"),
            V::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            V::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
            V::Float(f) => write_f64(out, *f),
            V::Dec(d) => out.extend_from_slice(d.as_bytes()),
            V::Str(s) => write_bytes_str(out, s),
            V::Raw(_, r) => out.extend_from_slice(r),
        }
    }
}

/// A variable's value known before evaluation (record variables and scalar `--arg`s).
pub type Vars<'a> = [V<'a>];

/// Field names and literals live as long as the program (the whole run), so evaluation
/// borrows them instead of copying per record.
type Key = &'static [u8];

fn leak_bytes(v: Vec<u8>) -> Key {
    Box::leak(v.into_boxed_slice())
}

#[derive(Debug)]
pub enum Expr {
    Lit(V<'static>),
    Var(usize),
    /// `.name`, or `.a.b` as a chain.
    Field(Box<Expr>, Key),
    Root,
    Cmp(Box<Expr>, Cmp, Box<Expr>),
    Math(Box<Expr>, Math, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Alt(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    If(Vec<(Expr, Expr)>, Box<Expr>),
}

#[derive(Debug)]
pub enum Stage {
    Select(Expr),
    Set(Key, Expr),
    Update(Key, Math, Expr),
    Build(Vec<(Key, Expr)>),
}

#[derive(Debug)]
pub struct Plan {
    pub stages: Vec<Stage>,
}

/// Compiles `term` when every construct in it is covered; `var_names` lists the variables
/// whose values the caller passes to [`Plan::run`] (by position).
pub fn plan(term: &Term<&str>, var_names: &[&str]) -> Option<Plan> {
    let mut stages = Vec::new();
    stages_of(term, var_names, &mut stages)?;
    Some(Plan { stages })
}

/// An expression over the output object (for `--set-key`, `--set-ts`).
pub fn plan_expr(term: &Term<&str>, var_names: &[&str]) -> Option<Expr> {
    expr(term, var_names)
}

fn stages_of(t: &Term<&str>, vars: &[&str], out: &mut Vec<Stage>) -> Option<()> {
    match t {
        Term::Id => Some(()),
        Term::BinOp(l, BinaryOp::Pipe(None), r) => {
            stages_of(l, vars, out)?;
            stages_of(r, vars, out)
        }
        Term::Call("select", args) if args.len() == 1 => {
            out.push(Stage::Select(expr(&args[0], vars)?));
            Some(())
        }
        Term::BinOp(l, op @ (BinaryOp::Assign | BinaryOp::UpdateMath(_)), r) => {
            let key = top_field(l)?;
            let e = expr(r, vars)?;
            out.push(match op {
                BinaryOp::UpdateMath(m) if !matches!(m, Math::Rem) => Stage::Update(key, *m, e),
                BinaryOp::Assign => Stage::Set(key, e),
                _ => return None,
            });
            Some(())
        }
        Term::Obj(kvs) => {
            let mut fields = Vec::with_capacity(kvs.len());
            for (k, v) in kvs {
                let key = lit_str(k)?;
                let e = match v {
                    Some(v) => expr(v, vars)?,
                    None => Expr::Field(Box::new(Expr::Root), key),
                };
                fields.push((key, e));
            }
            out.push(Stage::Build(fields));
            Some(())
        }
        _ => None,
    }
}

/// `.name` (essential, on the input) as a key.
fn top_field(t: &Term<&str>) -> Option<Key> {
    match t {
        Term::Path(base, path) if matches!(**base, Term::Id) && path.0.len() == 1 => {
            match &path.0[0] {
                (Part::Index(i), Opt::Essential) => lit_str(i),
                _ => None,
            }
        }
        _ => None,
    }
}

fn lit_str(t: &Term<&str>) -> Option<Key> {
    let Term::Str(None, parts) = t else {
        return None;
    };
    let mut s = String::new();
    for p in parts {
        match p {
            StrPart::Str(x) => s.push_str(x),
            StrPart::Char(c) => s.push(*c),
            StrPart::Term(_) => return None,
        }
    }
    Some(leak_bytes(s.into_bytes()))
}

fn expr(t: &Term<&str>, vars: &[&str]) -> Option<Expr> {
    let b = |t: &Term<&str>| expr(t, vars).map(Box::new);
    Some(match t {
        Term::Num(n) => match super::value::num(n) {
            jaq_json::Val::Num(jaq_json::Num::Int(i)) => Expr::Lit(V::Int(i)),
            jaq_json::Val::Num(jaq_json::Num::Dec(_)) => Expr::Lit(V::Dec(Cow::Borrowed(
                Box::leak(n.to_string().into_boxed_str()),
            ))),
            _ => return None,
        },
        Term::Str(..) => Expr::Lit(V::Str(Cow::Borrowed(lit_str(t)?))),
        Term::Call("true", a) if a.is_empty() => Expr::Lit(V::Bool(true)),
        Term::Call("false", a) if a.is_empty() => Expr::Lit(V::Bool(false)),
        Term::Call("null", a) if a.is_empty() => Expr::Lit(V::Null),
        Term::Var(name) => Expr::Var(vars.iter().position(|v| v == name)?),
        Term::Path(base, path) => {
            // `.` itself is only planned as the base of a path: a whole record as a value
            // is jaq's job.
            let mut e = match **base {
                Term::Id => Expr::Root,
                _ => expr(base, vars)?,
            };
            for part in &path.0 {
                match part {
                    (Part::Index(i), Opt::Essential) => e = Expr::Field(Box::new(e), lit_str(i)?),
                    _ => return None,
                }
            }
            e
        }
        Term::Neg(x) => Expr::Neg(b(x)?),
        Term::BinOp(l, op, r) => match op {
            BinaryOp::Pipe(None) if matches!(**r, Term::Call("not", ref a) if a.is_empty()) => {
                Expr::Not(b(l)?)
            }
            BinaryOp::Cmp(c) => Expr::Cmp(b(l)?, *c, b(r)?),
            BinaryOp::Math(m) if !matches!(m, Math::Rem) => Expr::Math(b(l)?, *m, b(r)?),
            BinaryOp::And => Expr::And(b(l)?, b(r)?),
            BinaryOp::Or => Expr::Or(b(l)?, b(r)?),
            BinaryOp::Alt => Expr::Alt(b(l)?, b(r)?),
            _ => return None,
        },
        Term::IfThenElse(arms, Some(els)) => {
            let mut a = Vec::with_capacity(arms.len());
            for (c, t) in arms {
                a.push((expr(c, vars)?, expr(t, vars)?));
            }
            Expr::If(a, b(els)?)
        }
        _ => return None,
    })
}

/// The object a program works on: the record's members plus what the program set.
pub struct Obj<'a, 's> {
    text: &'a [u8],
    base: Option<&'s Scan>,
    /// Keys set by the program, in the order they were first set.
    sets: Vec<(&'a [u8], V<'a>)>,
}

impl<'a, 's> Obj<'a, 's> {
    pub fn new(text: &'a [u8], scan: &'s Scan) -> Self {
        Obj {
            text,
            base: Some(scan),
            sets: Vec::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Option<V<'a>> {
        if let Some((_, v)) = self.sets.iter().find(|(k, _)| *k == key) {
            return Some(v.clone());
        }
        let Some(base) = self.base else {
            return Some(V::Null);
        };
        match base.get(self.text, key) {
            None => Some(V::Null),
            Some(m) => member_value(m.kind, m.value(self.text)),
        }
    }

    fn set(&mut self, key: &'a [u8], v: V<'a>) {
        match self.sets.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.sets.push((key, v)),
        }
    }

    /// Untouched: the record's own text is the output.
    pub fn unchanged(&self) -> bool {
        self.base.is_some() && self.sets.is_empty()
    }

    /// Appends the object as jaq would write it.
    pub fn write(&self, out: &mut Vec<u8>) {
        if self.unchanged() {
            out.extend_from_slice(self.text);
            return;
        }
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        let mut done = vec![false; self.sets.len()];
        if let Some(base) = self.base {
            for m in &base.members {
                sep(out);
                let key = &self.text[m.key.0..m.key.1];
                match self.sets.iter().position(|(k, _)| *k == key) {
                    Some(i) => {
                        done[i] = true;
                        out.extend_from_slice(&self.text[m.from..m.key.1 + 2]);
                        self.sets[i].1.write(out);
                    }
                    None => out.extend_from_slice(m.whole(self.text)),
                }
            }
        }
        for (i, (k, v)) in self.sets.iter().enumerate() {
            if !done[i] {
                sep(out);
                write_bytes_str(out, k);
                out.push(b':');
                v.write(out);
            }
        }
        out.push(b'}');
    }
}

/// A member's value from its plain text.
fn member_value(kind: Kind, t: &[u8]) -> Option<V<'_>> {
    Some(match kind {
        Kind::Null => V::Null,
        Kind::True => V::Bool(true),
        Kind::False => V::Bool(false),
        Kind::Str => V::Str(Cow::Borrowed(&t[1..t.len() - 1])),
        Kind::Num => num_value(t)?,
        Kind::Arr | Kind::Obj => V::Raw(kind, t),
    })
}

fn num_value(t: &[u8]) -> Option<V<'_>> {
    let s = std::str::from_utf8(t).ok()?;
    if t.iter().all(|&c| c.is_ascii_digit() || c == b'-') {
        // Integers that do not fit are big integers in jaq: not covered here.
        s.parse::<isize>().ok().map(V::Int)
    } else {
        Some(V::Dec(Cow::Borrowed(s)))
    }
}

impl Plan {
    /// Runs the plan on the plain object `text` (scanned into `scan`). `None`: a case not
    /// covered, run jaq instead. `Some(None)`: the record was filtered out.
    pub fn run<'a, 's>(
        &self,
        text: &'a [u8],
        scan: &'s Scan,
        vars: &Vars<'a>,
    ) -> Option<Option<Obj<'a, 's>>> {
        let mut obj = Obj::new(text, scan);
        for st in &self.stages {
            match st {
                Stage::Select(e) => {
                    if !eval(e, &obj, vars)?.truthy() {
                        return Some(None);
                    }
                }
                Stage::Set(k, e) => {
                    let v = eval(e, &obj, vars)?;
                    obj.set(k, v);
                }
                Stage::Update(k, m, e) => {
                    let r = eval(e, &obj, vars)?;
                    let l = obj.get(k)?;
                    obj.set(k, math(l, *m, r)?);
                }
                Stage::Build(fields) => {
                    let mut new = Obj {
                        text,
                        base: None,
                        sets: Vec::with_capacity(fields.len()),
                    };
                    for (k, e) in fields {
                        let v = eval(e, &obj, vars)?;
                        new.set(k, v);
                    }
                    obj = new;
                }
            }
        }
        Some(Some(obj))
    }
}

/// Evaluates `e` with `.` = `obj`.
pub fn eval<'a>(e: &Expr, obj: &Obj<'a, '_>, vars: &Vars<'a>) -> Option<V<'a>> {
    Some(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Var(i) => vars.get(*i)?.clone(),
        Expr::Root => return None,
        Expr::Field(base, key) => match &**base {
            Expr::Root => obj.get(key)?,
            b => match eval(b, obj, vars)? {
                V::Null => V::Null,
                V::Raw(Kind::Obj, t) => match find_in(t, key) {
                    None => V::Null,
                    Some((kind, s, e)) => member_value(kind, &t[s..e])?,
                },
                _ => return None,
            },
        },
        Expr::Cmp(l, c, r) => {
            let (l, r) = (eval(l, obj, vars)?, eval(r, obj, vars)?);
            V::Bool(match c {
                Cmp::Eq => equal(&l, &r)?,
                Cmp::Ne => !equal(&l, &r)?,
                Cmp::Lt => order(&l, &r)? == Ordering::Less,
                Cmp::Le => order(&l, &r)? != Ordering::Greater,
                Cmp::Gt => order(&l, &r)? == Ordering::Greater,
                Cmp::Ge => order(&l, &r)? != Ordering::Less,
            })
        }
        Expr::Math(l, m, r) => math(eval(l, obj, vars)?, *m, eval(r, obj, vars)?)?,
        Expr::And(l, r) => V::Bool(eval(l, obj, vars)?.truthy() && eval(r, obj, vars)?.truthy()),
        Expr::Or(l, r) => V::Bool(eval(l, obj, vars)?.truthy() || eval(r, obj, vars)?.truthy()),
        Expr::Alt(l, r) => {
            let l = eval(l, obj, vars)?;
            if l.truthy() {
                l
            } else {
                eval(r, obj, vars)?
            }
        }
        Expr::Not(x) => V::Bool(!eval(x, obj, vars)?.truthy()),
        Expr::Neg(x) => match eval(x, obj, vars)? {
            V::Int(i) => V::Int(i.checked_neg()?),
            V::Float(f) => V::Float(-f),
            V::Dec(d) => V::Dec(match d.strip_prefix('-') {
                Some(p) => Cow::Owned(p.to_string()),
                None => Cow::Owned(format!("-{d}")),
            }),
            _ => return None,
        },
        Expr::If(arms, els) => {
            for (c, t) in arms {
                if eval(c, obj, vars)?.truthy() {
                    return eval(t, obj, vars);
                }
            }
            eval(els, obj, vars)?
        }
    })
}

fn float(v: &V) -> Option<f64> {
    match v {
        V::Int(i) => Some(*i as f64),
        V::Float(f) => Some(*f),
        // jaq reads a decimal it cannot parse as NaN; valid JSON numbers always parse.
        V::Dec(d) => Some(d.parse().unwrap_or(f64::NAN)),
        _ => None,
    }
}

fn math<'a>(l: V<'a>, m: Math, r: V<'a>) -> Option<V<'a>> {
    if let Math::Add = m {
        match (&l, &r) {
            (V::Null, _) => return Some(r),
            (_, V::Null) => return Some(l),
            (V::Str(a), V::Str(b)) => {
                let mut s = a.to_vec();
                s.extend_from_slice(b);
                return Some(V::Str(Cow::Owned(s)));
            }
            _ => {}
        }
    }
    if !l.is_num() || !r.is_num() {
        return None;
    }
    if let (V::Int(a), V::Int(b)) = (&l, &r) {
        let (a, b) = (*a, *b);
        return match m {
            Math::Add => a.checked_add(b).map(V::Int),
            Math::Sub => a.checked_sub(b).map(V::Int),
            Math::Mul => a.checked_mul(b).map(V::Int),
            Math::Div => Some(V::Float(a as f64 / b as f64)),
            Math::Rem => None,
        };
    }
    let (a, b) = (float(&l)?, float(&r)?);
    Some(V::Float(match m {
        Math::Add => a + b,
        Math::Sub => a - b,
        Math::Mul => a * b,
        Math::Div => a / b,
        Math::Rem => return None,
    }))
}

/// jaq's float order: ±0 equal, NaN below everything.
fn float_cmp(l: f64, r: f64) -> Ordering {
    if l == 0.0 && r == 0.0 {
        Ordering::Equal
    } else if l.is_nan() {
        Ordering::Less
    } else if r.is_nan() {
        Ordering::Greater
    } else {
        l.total_cmp(&r)
    }
}

fn order(l: &V, r: &V) -> Option<Ordering> {
    let (a, b) = (l.rank(), r.rank());
    if a != b {
        return Some(a.cmp(&b));
    }
    Some(match (l, r) {
        (V::Null, V::Null) => Ordering::Equal,
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Str(x), V::Str(y)) => x.as_ref().cmp(y.as_ref()),
        _ if a == 2 => float_cmp(float(l)?, float(r)?),
        _ => return None,
    })
}

fn equal(l: &V, r: &V) -> Option<bool> {
    if l.rank() != r.rank() {
        return Some(false);
    }
    Some(match (l, r) {
        (V::Int(x), V::Int(y)) => x == y,
        (V::Int(_), V::Float(f)) | (V::Float(f), V::Int(_)) if !f.is_finite() => false,
        _ if l.is_num() => float_cmp(float(l)?, float(r)?) == Ordering::Equal,
        _ => order(l, r)? == Ordering::Equal,
    })
}
