//! Where tables live and which version each name reads: `LOGDIR/tables/<name>/table.json`
//! (a checked metadata file, see `log::meta`) lists the versions and the live one, and each
//! version's changelog sits in a generation directory `v<N>.g<G>`. Compaction writes a new
//! generation and switches the manifest to it with one atomic rename, so a reader that
//! resolved the name sees the old generation or the new one, never a mix; `promote` switches
//! the live version the same way.
//!
//! Manifest changes are made under the table's lock file (`tables/<name>/.lock`); the
//! changelog of a generation has its own writer lock (the log's partition lock).

use crate::error::{setup, usage, Error, Result};
use crate::log::{meta, names};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

pub const MANIFEST_KIND: &str = "kappa.table";
const MANIFEST_FILE: &str = "table.json";
const LOCK_FILE: &str = ".lock";
const TABLES_DIR: &str = "tables";

/// `trips` or `trips@v2`, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub name: String,
    pub version: Option<u32>,
}

impl TableRef {
    pub fn parse(s: &str) -> Result<TableRef> {
        let (name, version) = match s.split_once('@') {
            None => (s, None),
            Some((n, v)) => {
                // `v1`, `v2`, ...: no zero, no leading zeros, so each version has one spelling.
                let num = v
                    .strip_prefix('v')
                    .filter(|d| !d.starts_with('0'))
                    .and_then(|d| d.parse::<u32>().ok());
                match num {
                    Some(num) => (n, Some(num)),
                    None => {
                        return Err(usage(format!(
                            "bad table version in {s:?}: write NAME@vN with N = 1, 2, ..."
                        )))
                    }
                }
            }
        };
        names::validate("table", name)?;
        Ok(TableRef {
            name: name.to_string(),
            version,
        })
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@v{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionMeta {
    /// The generation directory in use (`v<N>.g<gen>`).
    pub gen: u64,
    /// Wall-clock time the version was created (ms), for `store versions`.
    pub created_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The version `NAME` reads; None until one is created or promoted.
    pub live: Option<u32>,
    pub versions: BTreeMap<u32, VersionMeta>,
}

/// The tables of one log directory.
pub struct Tables {
    root: PathBuf,
}

/// The table's lock, held while its manifest is read, changed and written.
pub struct TableLock {
    _lock: Flock<File>,
}

impl Tables {
    pub fn new(log_root: &Path) -> Tables {
        Tables {
            root: log_root.join(TABLES_DIR),
        }
    }

    pub fn table_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn gen_dir(&self, name: &str, version: u32, gen: u64) -> PathBuf {
        self.table_dir(name).join(format!("v{version}.g{gen}"))
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(setup(format!("{}: {e}", self.root.display()))),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| setup(format!("{}: {e}", self.root.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if names::validate("table", &name).is_ok() && e.path().join(MANIFEST_FILE).exists() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The manifest, or None when the table does not exist. A damaged manifest is an error.
    pub fn manifest(&self, name: &str) -> Result<Option<Manifest>> {
        let path = self.table_dir(name).join(MANIFEST_FILE);
        meta::read_checked(&path, MANIFEST_KIND)
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))
    }

    pub fn write_manifest(&self, name: &str, m: &Manifest, _lock: &TableLock) -> Result<()> {
        let path = self.table_dir(name).join(MANIFEST_FILE);
        meta::write_checked(&path, MANIFEST_KIND, m)
            .map_err(Error::io_with(|| format!("writing {}", path.display())))
    }

    /// Takes the table's lock, creating the table directory when `create`.
    pub fn lock(&self, name: &str, create: bool) -> Result<TableLock> {
        let dir = self.table_dir(name);
        if create {
            fs::create_dir_all(&dir).map_err(|e| setup(format!("{}: {e}", dir.display())))?;
        }
        let path = dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| setup(format!("{}: {e}", path.display())))?;
        // Manifest changes are short; waiting for another one is the right thing to do.
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| setup(format!("locking {}: {e}", path.display())))?;
        Ok(TableLock { _lock: lock })
    }

    /// The manifest of a table that must exist.
    pub fn existing(&self, name: &str) -> Result<Manifest> {
        self.manifest(name)?
            .ok_or_else(|| setup(format!("no table {name:?}")))
    }

    /// The lock of a table that must exist.
    pub fn lock_existing(&self, name: &str) -> Result<TableLock> {
        if !self.table_dir(name).is_dir() {
            return Err(setup(format!("no table {name:?}")));
        }
        self.lock(name, false)
    }

    /// Resolves a reference to (version, generation directory) for reading.
    pub fn resolve(&self, t: &TableRef) -> Result<(u32, PathBuf)> {
        let m = self.existing(&t.name)?;
        let v = match t.version {
            Some(v) => v,
            None => m.live.ok_or_else(|| {
                setup(format!(
                    "table {:?} has no live version (versions: {}); promote one",
                    t.name,
                    version_list(&m)
                ))
            })?,
        };
        let meta = m
            .versions
            .get(&v)
            .ok_or_else(|| setup(format!("no version {t} (versions: {})", version_list(&m))))?;
        Ok((v, self.gen_dir(&t.name, v, meta.gen)))
    }

    /// Resolves a reference for writing: the version is created when missing (`NAME` alone
    /// creates v1, or the next number, and makes it live when nothing is live).
    pub fn resolve_for_write(&self, t: &TableRef) -> Result<(u32, u64, TableLock)> {
        let lock = self.lock(&t.name, true)?;
        let mut m = self.manifest(&t.name)?.unwrap_or_default();
        let v = match (t.version, m.live) {
            (Some(v), _) => v,
            (None, Some(live)) => live,
            (None, None) => m.versions.keys().next_back().map_or(1, |v| v + 1),
        };
        let mut changed = false;
        if let std::collections::btree_map::Entry::Vacant(e) = m.versions.entry(v) {
            e.insert(VersionMeta {
                gen: 0,
                created_ms: crate::record::time::now_ms(),
            });
            changed = true;
        }
        if t.version.is_none() && m.live.is_none() {
            m.live = Some(v);
            changed = true;
        }
        if changed {
            self.write_manifest(&t.name, &m, &lock)?;
        }
        Ok((v, m.versions[&v].gen, lock))
    }

    /// Removes generation directories of `name` that the manifest does not name and that no
    /// writer holds: the leftovers of a crash during compaction, on either side of the switch.
    pub fn sweep(&self, name: &str, _lock: &TableLock) -> Result<Vec<PathBuf>> {
        let Some(m) = self.manifest(name)? else {
            return Ok(Vec::new());
        };
        let dir = self.table_dir(name);
        let mut removed = Vec::new();
        let rd = fs::read_dir(&dir).map_err(|e| setup(format!("{}: {e}", dir.display())))?;
        for e in rd.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if fname.starts_with(TRASH) {
                // A removal that did not finish (the process ended first).
                remove_tree(&path)?;
                continue;
            }
            let Some((v, g)) = parse_gen_dir(&fname) else {
                continue;
            };
            if m.versions.get(&v).is_some_and(|vm| vm.gen == g) {
                continue;
            }
            // A compaction in progress holds its new generation's lock: leave it alone.
            if crate::log::writer::try_lock_partition(&path)? {
                let t = trash(&dir, &fname)?;
                fs::rename(&path, &t)
                    .map_err(Error::io_with(|| format!("removing {}", path.display())))?;
                remove_tree(&t)?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            meta::fsync_dir(&dir)
                .map_err(Error::io_with(|| format!("syncing {}", dir.display())))?;
        }
        Ok(removed)
    }
}

/// Trash names carry `~`, which no table or generation name can, so nothing reads them.
const TRASH: &str = ".trash~";

/// A fresh trash name in `dir` for `what`.
pub fn trash(dir: &Path, what: &str) -> Result<PathBuf> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(dir.join(format!("{TRASH}{what}~{}~{n}", std::process::id())))
}

/// Moves `path` out of sight in one rename (a reader either finds it whole or not at all),
/// then deletes it.
pub fn discard(path: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return remove_tree(path);
    };
    let t = trash(dir, &name.to_string_lossy())?;
    match fs::rename(path, &t) {
        Ok(()) => remove_tree(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Deletes a tree; one already gone is fine.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// `v2.g5` → (2, 5).
pub fn parse_gen_dir(s: &str) -> Option<(u32, u64)> {
    let (v, g) = s.strip_prefix('v')?.split_once(".g")?;
    Some((v.parse().ok()?, g.parse().ok()?))
}

pub fn version_list(m: &Manifest) -> String {
    if m.versions.is_empty() {
        return "none".into();
    }
    m.versions
        .keys()
        .map(|v| format!("v{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_refs() {
        assert_eq!(
            TableRef::parse("trips@v2").unwrap(),
            TableRef {
                name: "trips".into(),
                version: Some(2)
            }
        );
        assert_eq!(TableRef::parse("trips").unwrap().version, None);
        for bad in [
            "trips@2",
            "trips@v0",
            "trips@v01",
            "trips@",
            "../x",
            "a@v1@v2",
            "",
        ] {
            assert!(TableRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_gen_dir("v12.g3"), Some((12, 3)));
        assert_eq!(parse_gen_dir("v1"), None);
    }
}
