//! Consumer groups: committed offsets per (group, topic, partition), in
//! `groups/<group>.json` (a checked metadata file). A committed offset is the next offset
//! the group will read, as in Kafka. Read-modify-write happens under an flock on
//! `groups/<group>.lock`, so consumers of different topics in one group never lose each
//! other's commits.

use crate::error::{Error, Result};
use crate::log::topic::Log;
use crate::log::{meta, names};
use nix::fcntl::{Flock, FlockArg};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;

pub const GROUP_KIND: &str = "kappa.group";

/// topic → partition → next offset to read.
pub type Offsets = BTreeMap<String, BTreeMap<u32, u64>>;

pub struct Groups {
    dir: PathBuf,
}

impl Groups {
    pub fn new(log: &Log) -> Groups {
        Groups {
            dir: log.groups_dir(),
        }
    }

    fn path(&self, group: &str) -> Result<PathBuf> {
        names::validate("group", group)?;
        Ok(self.dir.join(format!("{group}.json")))
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(_) => return Ok(out),
        };
        for ent in rd.flatten() {
            let name = ent.file_name();
            if let Some(g) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if names::validate("group", g).is_ok() {
                    out.push(g.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The group's committed offsets (empty when it has none).
    pub fn load(&self, group: &str) -> Result<Offsets> {
        let path = self.path(group)?;
        match meta::read_checked::<Offsets>(&path, GROUP_KIND) {
            Ok(o) => Ok(o.unwrap_or_default()),
            Err(e) => Err(Error::Data(e)),
        }
    }

    pub fn exists(&self, group: &str) -> Result<bool> {
        Ok(self.path(group)?.exists())
    }

    /// Merges `updates` into the group's offsets for `topic`, atomically and durably.
    pub fn commit(&self, group: &str, topic: &str, updates: &BTreeMap<u32, u64>) -> Result<()> {
        self.modify(group, |o| {
            let t = o.entry(topic.to_string()).or_default();
            for (p, off) in updates {
                t.insert(*p, *off);
            }
        })
    }

    /// Replaces the offsets of `topic` (for `logd groups reset`).
    pub fn set_topic(&self, group: &str, topic: &str, offsets: BTreeMap<u32, u64>) -> Result<()> {
        self.modify(group, |o| {
            o.insert(topic.to_string(), offsets);
        })
    }

    pub fn delete(&self, group: &str) -> Result<bool> {
        let path = self.path(group)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    fn modify(&self, group: &str, f: impl FnOnce(&mut Offsets)) -> Result<()> {
        let path = self.path(group)?;
        fs::create_dir_all(&self.dir).map_err(Error::io_with(|| {
            format!("creating {}", self.dir.display())
        }))?;
        let lock_path = self.dir.join(format!("{group}.lock"));
        let lock_file: File = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io_with(|| {
                format!("opening {}", lock_path.display())
            }))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(format!("locking {}", lock_path.display()), e.into()))?;
        let mut offsets = self.load(group)?;
        f(&mut offsets);
        meta::write_checked(&path, GROUP_KIND, &offsets)
            .map_err(Error::io_with(|| format!("writing {}", path.display())))
    }
}
