//! The progress display: drawn by indicatif on stderr only when stderr is a terminal and the
//! tool is first or last in its pipeline (not both stdin and stdout are pipes), unless
//! `--progress`/`--no-progress` decide otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::sys::stat::{fstat, SFlag};
use std::io::IsTerminal;

fn is_pipe(fd: i32) -> bool {
    fstat(fd)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO)
        .unwrap_or(false)
}

/// `--progress` / `--no-progress`, shared by every tool that draws one.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ProgressArgs {
    /// Draw a progress display even when stderr is not a terminal
    #[arg(long, overrides_with = "no_progress")]
    pub progress: bool,
    /// Never draw a progress display
    #[arg(long)]
    pub no_progress: bool,
}

impl ProgressArgs {
    /// Whether to draw: the explicit flags win, else the pipeline-position rule.
    pub fn wanted(&self) -> bool {
        if self.no_progress {
            return false;
        }
        if self.progress {
            return true;
        }
        std::io::stderr().is_terminal() && !(is_pipe(0) && is_pipe(1))
    }
}

/// A spinner counting records, or a hidden bar when not wanted.
pub fn records_spinner(show: bool, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} {{human_pos}} records ({{per_sec}}) {{elapsed}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    pb.set_style(style);
    pb
}

/// A byte bar with ETA for inputs of known size.
pub fn bytes_bar(show: bool, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// A record bar with ETA for work of a known number of records (a bounded replay).
pub fn records_bar(show: bool, total: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(&format!(
        "{{bar:30}} {what} {{human_pos}}/{{human_len}} records ({{per_sec}}, eta {{eta}})"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}
