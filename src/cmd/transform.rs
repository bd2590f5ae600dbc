//! `transform`: a jq program over the record stream (stdin or files to stdout).
//!
//! Lines are read into batches; a batch is evaluated on one thread or split across rayon's
//! workers (`--jobs`), and the results are written in input order, so the output never
//! depends on the number of jobs. A batch ends when it is full or the input stalls, and a
//! stall also flushes stdout: a live `consume --follow | transform` stays live.

use crate::cli::onerror::{BadRecords, OnError, Provenance};
use crate::cli::output::Output;
use crate::cli::{self, input, progress};
use crate::error::{setup, usage, Error, Result};
use crate::record::lines::{LineReader, Next};
use crate::transform::{lookup, require, value, Engine, InputMode, Outputs, Scratch, Spec};
use clap::{ArgAction, CommandFactory, Parser};
use jaq_json::Val;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

/// A batch ends after this many lines or bytes (or when the input stalls).
const BATCH_LINES: usize = 8192;
const BATCH_BYTES: usize = 4 << 20;
/// Below this many lines a batch is not worth splitting across threads.
const PARALLEL_MIN: usize = 512;

const ABOUT: &str = "Run a jq program over a stream of records";

const LONG_ABOUT: &str = "\
Run a jq program over each record read from stdin (or FILEs) and write the results to
stdout, one JSON line per output. The language is jq (as implemented by jaq), so filters,
maps, `select`, `if`, `reduce`, string functions, regular expressions and definitions work
as they do in jq. The program is given inline or with -f FILE (a file may hold comments and
definitions, so versioned transforms live in git: etl.v1.jq, etl.v2.jq).

Records: a program yielding no output drops the record (a filter); yielding several emits
several (a flat map). Output order is input order, always, whatever --jobs is.

Envelopes (what consume writes): the program sees the value as `.` and the envelope through
$key, $ts (ms), $offset, $partition and $topic. Each output is an envelope that keeps the
input's topic, partition, offset, timestamp, key and headers and takes the program's output
as its value; when one record yields several outputs, the second and later carry
\"sub\":1, 2, ... after the offset, so provenance stays unique through flat maps.
--set-key EXPR and --set-ts EXPR compute the output's key and timestamp from each output
value (a string, number or null; a timestamp as RFC 3339 or epoch s/ms/µs/ns; null keeps the
input's). --envelope runs the program over the whole envelope instead; its outputs must be
objects with a value (and optionally key, ts, headers); provenance always comes from the
input, so a program cannot forge it. --input says how lines are told apart: auto (the
default) treats a line as an envelope when it has topic, partition, offset and one of value,
value_str or value_base64, and as a plain record otherwise; envelope and plain force one.

Plain records (NDJSON objects): the program sees the object; outputs are written as they
are, or, with --set-key or --set-ts, as envelopes without provenance
({\"ts\",\"key\",\"value\"}) ready for `produce --envelope`.

Variables: --arg NAME VALUE binds $NAME to a string, --argjson NAME JSON to a JSON value,
$ENV holds the environment. --lookup NAME=FILE --on FIELD loads a reference table (CSV with
a header row, typed like `produce --csv`, or NDJSON objects) as $NAME, an object keyed by
FIELD's text: `$depots[.vehicle_id]` is the matching row or null. A key repeated in the
table is an error naming both lines. With several lookups give one --on for all, or one
per --lookup in the same order.

Built-ins beyond jq (times are epoch milliseconds, read by the same rules as --ts):
  tsms            a timestamp (RFC 3339 text, or epoch s/ms/µs/ns by magnitude) as ms
  tsms(FORMAT)    text in a strftime FORMAT (UTC unless it has an offset) as ms
  ms_iso          ms as RFC 3339 text with milliseconds, in UTC
  duration_ms     \"500ms\", \"10s\", \"5m\", \"1h\", \"1d\" as ms
  ms_floor(D)     ms rounded down to a multiple of duration D (window starts)
  haversine(LAT1; LON1; LAT2; LON2)
                  great-circle distance in metres between two points in degrees
  haversine       the same for [[lat, lon], [lat, lon]] or [{lat, lon}, {lat, lon}]

Validation: --require 'FIELD:TYPE,...' rejects a record whose value lacks a FIELD (or has
null there) or holds another TYPE: string, number, integer (a number with no fraction),
boolean, object, array, timestamp (RFC 3339 text or an epoch number); a FIELD without a type
only has to be present. FIELD is a name or a JSON pointer (/pos/lat).

Bad records (invalid JSON or UTF-8, not an object, a jq error, a failed --require, a line
over --max-record-bytes) follow --on-error: fail (the default) writes and flushes every
output of earlier records, then stops with exit 1 naming the line and the error; skip counts
them and goes on; dead-letter FILE appends {\"tool\",\"error\",\"line\",\"input\",\"topic\",
\"partition\",\"offset\"} to FILE and goes on. A record that fails emits none of its outputs.

Speed: --jobs N evaluates batches of records on N threads (default: the number of CPUs).
Programs built only from select, field assignments (.f = E, .f += E), object construction
and comparisons, arithmetic, and/or/not, // and if over fields and variables are run
directly on the record's text without building it (same results as jq, verified by the
tests); everything else runs in jaq. stdout is written in large blocks, and flushed as soon
as the input has nothing more ready, so live pipelines stay live.

A summary (records in, out, dropped, bad) goes to stderr at the end unless --quiet.";

const AFTER: &str = "\
Exit status: 0 success (also when stdout is closed early, as by head); 1 a bad record in
fail mode, or an I/O error; 2 bad flags, a program that does not compile, an unreadable
lookup table or program file.

Examples:
  transform 'select(.speed > 80) | .speed_kmh = .speed * 1.609'
  transform -f etl.v2.jq --on-error dead-letter bad.ndjson
  transform --lookup depots=depots.csv --on vehicle_id '.depot = $depots[.vehicle_id].depot'
  transform --require 'vehicle_id:string,speed:number,ts:timestamp' '.'
  transform --set-key .vehicle_id '{vehicle_id, speed}'
  transform '.hour = (.ts | ms_floor(\"1h\") | ms_iso)'
  transform '.km = ([[.lat, .lon], [52.52, 13.405]] | haversine / 1000)'
  transform 'select($partition == 0 and $offset >= 100)'
  transform '.readings[] | {meter: .id, kwh}'
  consume -t telemetry | transform -f etl.jq | produce -t clean --envelope";

#[derive(Parser, Debug)]
#[command(name = "transform", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER)]
pub struct Args {
    /// The jq program (unless -f is given), then input files (default: stdin; `-` is stdin)
    #[arg(value_name = "PROGRAM|FILE")]
    pub args: Vec<String>,
    /// Read the program from FILE
    #[arg(short = 'f', long = "from-file", value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Bind $NAME to the string VALUE
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"], action = ArgAction::Append)]
    pub arg: Vec<String>,
    /// Bind $NAME to the JSON value JSON
    #[arg(long, num_args = 2, value_names = ["NAME", "JSON"], action = ArgAction::Append)]
    pub argjson: Vec<String>,
    /// Load a reference table as $NAME (CSV or NDJSON)
    #[arg(long, value_name = "NAME=FILE", action = ArgAction::Append)]
    pub lookup: Vec<String>,
    /// The field that keys the lookup table(s)
    #[arg(long, value_name = "FIELD", action = ArgAction::Append)]
    pub on: Vec<String>,
    /// Reject records lacking fields or with wrong types: FIELD:TYPE,...
    #[arg(long, value_name = "SPEC")]
    pub require: Option<String>,
    /// Set each output's key to EXPR (evaluated on the output value)
    #[arg(long, value_name = "EXPR")]
    pub set_key: Option<String>,
    /// Set each output's timestamp to EXPR (evaluated on the output value)
    #[arg(long, value_name = "EXPR")]
    pub set_ts: Option<String>,
    /// Run the program over whole envelopes instead of values
    #[arg(long)]
    pub envelope: bool,
    #[command(flatten)]
    pub rec: cli::input::RecordArgs,
    /// Run every record through jaq, even when the program has a fast path
    #[arg(long, hide = true)]
    pub no_fast_path: bool,
    /// No summary on stderr
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub progress: progress::ProgressArgs,
}

pub fn command() -> clap::Command {
    Args::command()
}

/// One record's result in a batch.
struct Done {
    outputs: usize,
    error: Option<String>,
}

struct Batch {
    text: Vec<u8>,
    /// Per line: span in `text`, line number, and whether it was cut (over the limit).
    lines: Vec<(usize, usize, u64, bool)>,
}

struct Counts {
    read: u64,
    written: u64,
    dropped: u64,
}

struct Writer {
    out: Output,
    bad: BadRecords,
    counts: Counts,
    /// The provenance head of the last output and the next `sub` for it.
    last_head: Vec<u8>,
    next_sub: u64,
    max: usize,
}

pub fn run(a: Args) -> Result<()> {
    let mut rest = a.args.clone();
    let (program, origin) = match &a.from_file {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| setup(format!("{}: {e}", p.display())))?,
            p.display().to_string(),
        ),
        None => {
            if rest.is_empty() {
                return Err(usage("no program given (a jq program, or -f FILE)"));
            }
            (rest.remove(0), "program".to_string())
        }
    };
    let files: Vec<PathBuf> = if rest.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        rest.into_iter().map(PathBuf::from).collect()
    };
    let max = a.rec.max_record_bytes()?;
    let jobs = a.rec.jobs()?;
    if a.envelope && a.rec.input == InputMode::Plain {
        return Err(usage(
            "--envelope needs envelopes on input, not --input plain",
        ));
    }
    let spec = Spec {
        program,
        origin,
        set_key: a.set_key.clone(),
        set_ts: a.set_ts.clone(),
        vars: variables(&a)?,
        input: a.rec.input,
        whole_envelope: a.envelope,
        require: match &a.require {
            Some(r) => require::parse(r).map_err(usage)?,
            None => Vec::new(),
        },
        no_fast: a.no_fast_path,
    };
    if a.envelope && (spec.set_key.is_some() || spec.set_ts.is_some()) {
        return Err(usage(
            "--envelope sets key and ts in the program's output; drop --set-key/--set-ts",
        ));
    }
    let engine = Engine::new(spec).map_err(usage)?;
    let pool = if jobs > 1 {
        Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(jobs)
                .build()
                .map_err(|e| setup(format!("starting {jobs} threads: {e}")))?,
        )
    } else {
        None
    };
    let mut w = Writer {
        out: Output::stdout(),
        bad: BadRecords::new("transform", OnError::parse(&a.rec.on_error)?)?,
        counts: Counts {
            read: 0,
            written: 0,
            dropped: 0,
        },
        last_head: Vec::new(),
        next_sub: 0,
        max,
    };
    let pb = progress::records_spinner(a.progress.wanted(), "transform");
    let started = Instant::now();
    let mut result = Ok(());
    for f in &files {
        result = run_source(f, &engine, pool.as_ref(), &mut w, &pb);
        if result.is_err() {
            break;
        }
    }
    pb.finish_and_clear();
    // Whatever happened, what was written so far reaches stdout, and dead letters the disk.
    let flushed = w.out.flush();
    let dl = w.bad.flush(true);
    result?;
    flushed?;
    dl?;
    if !a.quiet {
        summary(&w, started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `--arg`, `--argjson`, `--lookup` and `$ENV`, as (name with `$`, value).
fn variables(a: &Args) -> Result<Vec<(String, Val)>> {
    let mut vars = Vec::new();
    for p in a.arg.chunks(2) {
        vars.push((format!("${}", p[0]), Val::from(p[1].clone())));
    }
    for p in a.argjson.chunks(2) {
        let v =
            value::parse(p[1].as_bytes()).map_err(|e| usage(format!("--argjson {}: {e}", p[0])))?;
        vars.push((format!("${}", p[0]), v));
    }
    if !a.lookup.is_empty() {
        if a.on.len() != 1 && a.on.len() != a.lookup.len() {
            return Err(usage(format!(
                "{} --lookup tables need one --on for all, or one each ({} given)",
                a.lookup.len(),
                a.on.len()
            )));
        }
        for (i, l) in a.lookup.iter().enumerate() {
            let Some((name, file)) = l.split_once('=') else {
                return Err(usage(format!("--lookup {l}: expected NAME=FILE")));
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(usage(format!(
                    "--lookup {l}: NAME must be letters, digits or _"
                )));
            }
            let on = &a.on[if a.on.len() == 1 { 0 } else { i }];
            let table = lookup::load(std::path::Path::new(file), on).map_err(setup)?;
            vars.push((format!("${name}"), table));
        }
    } else if !a.on.is_empty() {
        return Err(usage("--on needs --lookup"));
    }
    let env: jaq_json::Map = std::env::vars_os()
        .map(|(k, v)| {
            (
                Val::from(k.to_string_lossy().into_owned()),
                Val::from(v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    vars.push(("$ENV".to_string(), Val::obj(env)));
    Ok(vars)
}

fn run_source(
    path: &std::path::Path,
    engine: &Engine,
    pool: Option<&rayon::ThreadPool>,
    w: &mut Writer,
    pb: &indicatif::ProgressBar,
) -> Result<()> {
    let input::Input {
        reader,
        poll_fd,
        label,
    } = input::open(path)?;
    let mut lr = LineReader::new(reader, w.max, poll_fd);
    let mut batch = Batch {
        text: Vec::with_capacity(BATCH_BYTES + (64 << 10)),
        lines: Vec::with_capacity(BATCH_LINES),
    };
    let mut scratch = Scratch::default();
    let mut outputs = Outputs::default();
    loop {
        let next = lr
            .next_line()
            .map_err(|e| Error::io(format!("{label}reading input"), e))?;
        match next {
            Next::Line(line) => {
                if !line.oversize && line.bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let s = batch.text.len();
                batch.text.extend_from_slice(line.bytes);
                batch
                    .lines
                    .push((s, batch.text.len(), line.no, line.oversize));
                if batch.lines.len() >= BATCH_LINES || batch.text.len() >= BATCH_BYTES {
                    process(&batch, engine, pool, w, &label, &mut scratch, &mut outputs)?;
                    pb.inc(batch.lines.len() as u64);
                    batch.text.clear();
                    batch.lines.clear();
                }
            }
            Next::Idle => {
                process(&batch, engine, pool, w, &label, &mut scratch, &mut outputs)?;
                pb.inc(batch.lines.len() as u64);
                batch.text.clear();
                batch.lines.clear();
                w.out.flush()?;
                w.bad.flush(false)?;
                lr.wait(-1);
            }
            Next::Eof => {
                process(&batch, engine, pool, w, &label, &mut scratch, &mut outputs)?;
                pb.inc(batch.lines.len() as u64);
                return Ok(());
            }
        }
    }
}

/// Evaluates a batch (in parallel when worth it) and writes its results in order.
fn process(
    batch: &Batch,
    engine: &Engine,
    pool: Option<&rayon::ThreadPool>,
    w: &mut Writer,
    label: &str,
    scratch: &mut Scratch,
    outputs: &mut Outputs,
) -> Result<()> {
    if batch.lines.is_empty() {
        return Ok(());
    }
    let max = w.max;
    let eval = |lines: &[(usize, usize, u64, bool)], sc: &mut Scratch, out: &mut Outputs| {
        let mut done = Vec::with_capacity(lines.len());
        for &(s, e, _, cut) in lines {
            let before = out.outs.len();
            let error = if cut {
                Some(format!(
                    "record is larger than --max-record-bytes ({max} bytes)"
                ))
            } else {
                engine.process(&batch.text[s..e], sc, out).err()
            };
            done.push(Done {
                outputs: out.outs.len() - before,
                error,
            });
        }
        done
    };
    match pool {
        Some(pool) if batch.lines.len() >= PARALLEL_MIN => {
            let n = pool.current_num_threads() * 4;
            let size = batch.lines.len().div_ceil(n);
            let parts: Vec<(Vec<Done>, Outputs)> = pool.install(|| {
                batch
                    .lines
                    .par_chunks(size)
                    .map(|lines| {
                        let mut sc = Scratch::default();
                        let mut out = Outputs::default();
                        let done = eval(lines, &mut sc, &mut out);
                        (done, out)
                    })
                    .collect()
            });
            let mut first = 0;
            for (done, out) in &parts {
                write(
                    batch,
                    &batch.lines[first..first + done.len()],
                    done,
                    out,
                    w,
                    label,
                )?;
                first += done.len();
            }
        }
        _ => {
            outputs.clear();
            let done = eval(&batch.lines, scratch, outputs);
            write(batch, &batch.lines, &done, outputs, w, label)?;
        }
    }
    Ok(())
}

/// Writes results in input order, numbering `sub` and handling bad records.
fn write(
    batch: &Batch,
    lines: &[(usize, usize, u64, bool)],
    done: &[Done],
    out: &Outputs,
    w: &mut Writer,
    label: &str,
) -> Result<()> {
    let mut o = 0;
    let mut pos = 0;
    for (d, &(s, e, no, _)) in done.iter().zip(lines) {
        w.counts.read += 1;
        if let Some(err) = &d.error {
            let input = &batch.text[s..e];
            let prov = crate::cli::onerror::provenance_of(input);
            let p = prov.as_ref().map(|(t, p, o)| Provenance {
                topic: t,
                partition: *p,
                offset: *o,
            });
            if let Err(e) = w.bad.handle(label, no, err, input, p) {
                // Fail mode: earlier records' outputs are written before the error.
                w.out.flush()?;
                return Err(e);
            }
            continue;
        }
        if d.outputs == 0 {
            w.counts.dropped += 1;
        }
        for _ in 0..d.outputs {
            let (end, split) = out.outs[o];
            o += 1;
            let bytes = &out.buf[pos..end];
            if split == 0 {
                w.out.buf.extend_from_slice(bytes);
            } else {
                let head = &out.buf[pos..split];
                let sub = if head == w.last_head.as_slice() {
                    w.next_sub
                } else {
                    w.last_head.clear();
                    w.last_head.extend_from_slice(head);
                    0
                };
                w.next_sub = sub + 1;
                w.out.buf.extend_from_slice(head);
                if sub > 0 {
                    w.out.buf.extend_from_slice(b",\"sub\":");
                    w.out
                        .buf
                        .extend_from_slice(itoa::Buffer::new().format(sub).as_bytes());
                }
                w.out.buf.extend_from_slice(&out.buf[split..end]);
            }
            pos = end;
            w.counts.written += 1;
        }
        w.out.record_done()?;
    }
    Ok(())
}

fn summary(w: &Writer, secs: f64) {
    let c = &w.counts;
    let mut msg = format!(
        "{} records in, {} out, {} dropped",
        c.read, c.written, c.dropped
    );
    if w.bad.count > 0 {
        let what = match w.bad.mode() {
            OnError::DeadLetter(p) => format!("dead-lettered to {}", p.display()),
            _ => "skipped".into(),
        };
        msg.push_str(&format!(", {} bad {what}", w.bad.count));
    }
    msg.push_str(&format!(
        " in {:.2} s ({}records/s)",
        secs,
        cli::human_count(c.read as f64 / secs.max(1e-9))
    ));
    cli::note(false, "transform", &msg);
}
