//! kappa: small composable Unix programs for streaming ETL over one on-disk segmented log.
//!
//! `log` is the storage every tool shares, `record` the pipe format and codecs, `cli` what
//! every binary does at its edges, and `cmd` one module per tool.

pub mod cli;
pub mod cmd;
pub mod error;
pub mod kafka;
pub mod log;
pub mod record;
pub mod server;
pub mod store;
pub mod transform;
pub mod window;

pub use error::{Error, Result};
