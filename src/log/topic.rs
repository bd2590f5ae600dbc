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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Only `delete` is supported.
    pub cleanup_policy: String,
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
        if self.cleanup_policy != "delete" {
            return Err(setup(format!(
                "cleanup policy {:?} is not supported (only \"delete\")",
                self.cleanup_policy
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
