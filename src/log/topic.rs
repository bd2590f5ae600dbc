//! The log directory and its topics: layout, topic configuration (topic.json), creation
//! (atomic: a whole topic directory appears by one rename), listing and deletion.
//!
//! ```text
//! LOGDIR/topics/<topic>/topic.json
//! LOGDIR/topics/<topic>/<partition>/<base offset>.log|.index|.timeindex
//! LOGDIR/groups/<group>.json
//! ```

use crate::error::{setup, Error, Result};
use crate::log::{meta, names};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const TOPIC_KIND: &str = "kappa.topic";
pub const DEFAULT_SEGMENT_BYTES: u64 = 128 << 20;
pub const DEFAULT_SEGMENT_MS: u64 = 7 * 86_400_000;
/// Kafka's `delete.retention.ms` default: tombstones outlive their segment by a day.
pub const DEFAULT_DELETE_RETENTION_MS: u64 = 86_400_000;
/// Kafka's `min.cleanable.dirty.ratio` default.
pub const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO: f64 = 0.5;

/// What happens to old records: `delete` (retention removes whole old segments),
/// `compact` (only the latest record per key is kept), or both (`compact,delete`).
pub const CLEANUP_POLICIES: [&str; 3] = ["delete", "compact", "compact,delete"];

fn default_delete_retention_ms() -> u64 {
    DEFAULT_DELETE_RETENTION_MS
}

fn default_min_cleanable_dirty_ratio() -> f64 {
    DEFAULT_MIN_CLEANABLE_DIRTY_RATIO
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    /// Roll the active segment once it holds this many bytes.
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old (by its creation time).
    pub segment_ms: u64,
    /// Delete old segments while the partition holds more than this (null: no limit).
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this (null: no limit).
    pub retention_ms: Option<u64>,
    /// `delete`, `compact` or `compact,delete` (see CLEANUP_POLICIES).
    pub cleanup_policy: String,
    /// Compaction keeps a key's tombstone (value `null`) until its segment was last written
    /// this long ago, so readers that fall behind by less still see the deletion.
    #[serde(default = "default_delete_retention_ms")]
    pub delete_retention_ms: u64,
    /// A partition is compacted once this share of its sealed bytes is not yet compacted.
    #[serde(default = "default_min_cleanable_dirty_ratio")]
    pub min_cleanable_dirty_ratio: f64,
}

impl TopicConfig {
    pub fn new(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: DEFAULT_SEGMENT_MS,
            retention_bytes: None,
            retention_ms: None,
            cleanup_policy: "delete".into(),
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            min_cleanable_dirty_ratio: DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
        }
    }

    /// Whether compaction applies to the topic.
    pub fn compacts(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "compact")
    }

    /// Whether retention deletes old segments of the topic.
    pub fn deletes(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p == "delete")
    }

    /// The policy as stored from what a user wrote (`delete,compact` is `compact,delete`).
    pub fn normalize_policy(p: &str) -> std::result::Result<String, String> {
        let mut parts: Vec<&str> = p.split(',').map(str::trim).collect();
        parts.sort_unstable();
        parts.dedup();
        let p = parts.join(",");
        if CLEANUP_POLICIES.contains(&p.as_str()) {
            Ok(p)
        } else {
            Err(format!(
                "cleanup policy {p:?}: expected delete, compact or compact,delete"
            ))
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.partitions == 0 || self.partitions > 10_000 {
            return Err(setup(format!(
                "partitions must be 1 to 10000, not {}",
                self.partitions
            )));
        }
        if self.segment_bytes < 4096 {
            return Err(setup("segment bytes must be at least 4096"));
        }
        if !CLEANUP_POLICIES.contains(&self.cleanup_policy.as_str()) {
            return Err(setup(format!(
                "cleanup policy {:?} is not supported (delete, compact or compact,delete)",
                self.cleanup_policy
            )));
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return Err(setup(format!(
                "min cleanable dirty ratio {} is not between 0 and 1",
                self.min_cleanable_dirty_ratio
            )));
        }
        Ok(())
    }
}

/// A log directory.
#[derive(Debug, Clone)]
pub struct Log {
    root: PathBuf,
}

impl Log {
    pub fn new(root: impl Into<PathBuf>) -> Log {
        Log { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn topics_dir(&self) -> PathBuf {
        self.root.join("topics")
    }

    pub fn groups_dir(&self) -> PathBuf {
        self.root.join("groups")
    }

    pub fn topic_dir(&self, topic: &str) -> Result<PathBuf> {
        names::validate("topic", topic)?;
        Ok(self.topics_dir().join(topic))
    }

    pub fn partition_dir(&self, topic: &str, partition: u32) -> Result<PathBuf> {
        Ok(self.topic_dir(topic)?.join(partition.to_string()))
    }

    /// The topic's configuration, or a setup error naming the topic when it does not exist.
    pub fn topic_config(&self, topic: &str) -> Result<TopicConfig> {
        let dir = self.topic_dir(topic)?;
        match meta::read_checked::<TopicConfig>(&dir.join("topic.json"), TOPIC_KIND) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(setup(format!(
                "no topic {topic:?} in {}",
                self.root.display()
            ))),
            Err(e) => Err(Error::Data(e)),
        }
    }

    pub fn topic_exists(&self, topic: &str) -> Result<bool> {
        Ok(self.topic_dir(topic)?.join("topic.json").exists())
    }

    /// Creates a topic atomically: built in a temporary directory, then renamed into place.
    /// Returns false when it already existed (then nothing is changed).
    pub fn create_topic(&self, topic: &str, config: &TopicConfig) -> Result<bool> {
        config.check()?;
        let dir = self.topic_dir(topic)?;
        if dir.exists() {
            return Ok(false);
        }
        let topics = self.topics_dir();
        fs::create_dir_all(&topics).map_err(|e| self.setup_io(&topics, e))?;
        let tmp = topics.join(format!(".creating-{topic}.{}", std::process::id()));
        let build = || -> io::Result<()> {
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir(&tmp)?;
            for p in 0..config.partitions {
                fs::create_dir(tmp.join(p.to_string()))?;
            }
            meta::write_checked(&tmp.join("topic.json"), TOPIC_KIND, config)?;
            meta::fsync_dir(&tmp)?;
            Ok(())
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(self.setup_io(&topics, e));
        }
        match fs::rename(&tmp, &dir) {
            Ok(()) => {
                meta::fsync_dir(&topics)
                    .map_err(Error::io_with(|| format!("syncing {}", topics.display())))?;
                Ok(true)
            }
            Err(_) if dir.join("topic.json").exists() => {
                // Another process created it first: theirs stands.
                let _ = fs::remove_dir_all(&tmp);
                Ok(false)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(self.setup_io(&dir, e))
            }
        }
    }

    /// Rewrites a topic's configuration (partition count cannot change).
    pub fn set_topic_config(&self, topic: &str, config: &TopicConfig) -> Result<()> {
        config.check()?;
        let path = self.topic_dir(topic)?.join("topic.json");
        meta::write_checked(&path, TOPIC_KIND, config)
            .map_err(Error::io_with(|| format!("writing {}", path.display())))
    }

    pub fn list_topics(&self) -> Result<Vec<String>> {
        let dir = self.topics_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.setup_io(&dir, e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| self.setup_io(&dir, e))?;
            if let Some(name) = ent.file_name().to_str() {
                if names::validate("topic", name).is_ok() && ent.path().join("topic.json").exists()
                {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a topic: renamed away first (one atomic step), then deleted.
    pub fn delete_topic_dir(&self, topic: &str) -> Result<()> {
        let dir = self.topic_dir(topic)?;
        let gone = self
            .topics_dir()
            .join(format!(".deleted-{topic}.{}", std::process::id()));
        fs::rename(&dir, &gone)
            .map_err(Error::io_with(|| format!("removing {}", dir.display())))?;
        meta::fsync_dir(&self.topics_dir())
            .map_err(Error::io_with(|| "syncing topics directory".into()))?;
        fs::remove_dir_all(&gone).map_err(Error::io_with(|| format!("removing {}", gone.display())))
    }

    fn setup_io(&self, path: &Path, e: io::Error) -> Error {
        setup(format!("{}: {e}", path.display()))
    }
}
