//! What every tool shares at its edges: the `main` wrapper (clap parsing, error printing,
//! exit codes), common flags, the stdout writer, signals and the progress display.

pub mod input;
pub mod onerror;
pub mod output;
pub mod progress;
pub mod signals;

use crate::error::Error;
use clap::{ArgMatches, Command, FromArgMatches};
use std::io::Write;
use std::path::PathBuf;

/// Runs a tool: parses its arguments with `cmd`, calls `run`, prints any error as
/// `tool: message` and exits with the documented code. Never returns.
pub fn main<A: FromArgMatches>(cmd: Command, run: fn(A) -> crate::Result<()>) -> ! {
    crate::log::trace::setup();
    let name = cmd.get_name().to_string();
    let matches: ArgMatches = cmd.get_matches_from(split_on_error(std::env::args_os()));
    let args = match A::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => report(&name, &e),
    };
    std::process::exit(code)
}

/// `--on-error` (and `window --late`) take a FILE only after `dead-letter`; clap would take
/// any next word, so `--on-error skip PROGRAM` is rewritten to `--on-error=skip PROGRAM`
/// before parsing.
fn split_on_error(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if a == "--on-error" || a == "--late" {
            if let Some(mode) = args.next_if(|m| m != "dead-letter") {
                let mut joined = a.clone();
                joined.push("=");
                joined.push(mode);
                out.push(joined);
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// Prints an error the way every tool does and returns its exit code.
pub fn report(tool: &str, e: &Error) -> i32 {
    if !matches!(e, Error::BrokenPipe) {
        let _ = writeln!(std::io::stderr(), "{tool}: {e}");
    }
    e.exit_code()
}

/// `--log DIR`, shared by every tool that opens the log.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log directory [env: KAPPA_LOG] [default: ./kappa-log]
    #[arg(long = "log", value_name = "DIR")]
    pub log: Option<PathBuf>,
}

impl LogArgs {
    pub fn dir(&self) -> PathBuf {
        self.log
            .clone()
            .or_else(|| {
                std::env::var_os("KAPPA_LOG")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("kappa-log"))
    }
}

/// Prints a line on stderr unless quiet; a failing stderr is ignored on purpose.
pub fn note(quiet: bool, tool: &str, msg: &str) {
    if !quiet {
        let _ = writeln!(std::io::stderr(), "{tool}: {msg}");
    }
}

/// Human figures for summaries: `1.23 M`, `512.0 k`.
pub fn human_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} k", n / 1e3)
    } else {
        format!("{n:.0} ")
    }
}

pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{n} B")
    }
}
