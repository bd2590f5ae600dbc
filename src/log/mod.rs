//! The shared segmented log: topics of partitions of segments, each a file of CRC-checked
//! frames of records with dense offsets (sparse once compacted), plus sparse offset and time
//! indexes that are only caches. `format` is the byte layout; `writer` owns appends, recovery
//! and retention; `reader` serves lock-free reads; `verify` checks everything for `logd
//! verify`; `sources` keeps idempotent ingestion's input positions; `compact` rewrites the
//! sealed segments of `compact` topics down to the latest record per key.

pub mod compact;
pub mod format;
pub mod groups;
pub mod index;
pub mod meta;
pub mod names;
pub mod partitioner;
pub mod reader;
pub mod repair;
pub mod segment;
pub mod sources;
pub mod topic;
pub mod trace;
pub mod verify;
pub mod writer;

pub use reader::PartitionReader;
pub use topic::{Log, TopicConfig};
pub use writer::{FsyncMode, PartitionWriter};
