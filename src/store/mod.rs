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

/// `logd verify` for tables: each manifest's checksum, then each version's changelog as a
/// partition (frames, CRCs, indexes, checkpoint), then the table's own reading of it (commit
/// markers, the key index against the changelog).
pub fn verify(log_root: &std::path::Path, r: &mut crate::log::verify::Report) {
    let tables = table::Tables::new(log_root);
    let names = match tables.list() {
        Ok(n) => n,
        Err(e) => {
            r.problems.push(e.to_string());
            return;
        }
    };
    for name in names {
        let m = match tables.manifest(&name) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                r.problems.push(e.to_string());
                continue;
            }
        };
        for (v, vm) in &m.versions {
            let dir = tables.gen_dir(&name, *v, vm.gen);
            if !dir.is_dir() {
                r.problems
                    .push(format!("{}: version directory missing", dir.display()));
                continue;
            }
            crate::log::verify::partition(&dir, r);
            let checked = view::View::open_dir(&dir).and_then(|mut view| {
                // Listing the keys reads every index entry, so a damaged one is found.
                let live = view.all()?;
                if let Some(n) = &view.index_note {
                    if view.last.is_some() {
                        r.problems.push(format!(
                            "{}: key index {n} (rebuilt by the next store write)",
                            dir.join(keyindex::FILE_NAME).display()
                        ));
                    }
                }
                view.values(&live).map(|_| ())
            });
            if let Err(e) = checked {
                r.problems.push(e.to_string());
            }
        }
    }
}
