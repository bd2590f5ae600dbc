//! Materialized keyed tables, the serving layer: `store` writes records into a table under
//! `LOGDIR/tables/<name>/` and reads them back (get, scan, export, diff, SQLite).
//!
//! A table version is a partition directory in the log's own segmented format: an
//! append-only changelog of upserts and tombstones in which every batch ends with a commit
//! marker, plus a sorted key index that is a cache rebuilt from the changelog when it is
//! missing or in doubt. See docs/FORMAT.md ("Tables").

pub mod changelog;
pub mod diff;
pub mod input;
pub mod keyindex;
pub mod sqlite;
pub mod table;
pub mod view;
pub mod writer;

/// One live row of a table, as readers hand it to exports and comparisons: the key's text
/// and the value's JSON bytes exactly as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    pub key: &'a str,
    pub value: &'a [u8],
}
