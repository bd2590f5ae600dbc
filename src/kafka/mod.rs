//! Apache Kafka as the log (`--broker kafka://HOST:PORT[,HOST:PORT]`): what produce, consume,
//! replay and `logd mirror` share when the records live in a Kafka cluster instead of a log
//! directory. The client is librdkafka (through rdkafka), built from its bundled source, so
//! groups, the idempotent producer and offsets by time are Kafka's own.
//!
//! Kept the same as the local log: partition numbers (keys are placed with Kafka's murmur2
//! partitioner here, not librdkafka's default CRC32 one), keys, timestamps (CreateTime),
//! headers and value bytes. Kafka has no "value is JSON" bit: a value read back is written
//! as `value` when it parses as JSON, else as `value_str`/`value_base64`, as locally.

use crate::error::{usage, Result};
use std::time::Duration;

#[cfg(feature = "kafka")]
pub mod client;
#[cfg(feature = "kafka")]
pub mod mirror;
#[cfg(feature = "kafka")]
pub mod produce;
#[cfg(feature = "kafka")]
pub mod read;

/// `--broker URL` and how long to wait for it, shared by produce, consume and replay.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Use the Kafka cluster at kafka://HOST:PORT[,HOST:PORT] instead of a log directory
    #[arg(long, value_name = "URL", conflicts_with_all = ["log", "server"])]
    pub broker: Option<String>,
    /// How long an unreachable or unanswering broker is waited for before failing
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        requires = "broker"
    )]
    pub broker_timeout: String,
}

/// A Kafka cluster: its bootstrap list and the time budget for metadata and admin calls.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub url: String,
    pub bootstrap: String,
    pub timeout: Duration,
}

impl Cluster {
    pub fn from_args(a: &BrokerArgs) -> Result<Option<Cluster>> {
        let Some(url) = &a.broker else {
            return Ok(None);
        };
        let ms = crate::record::time::parse_duration_ms(&a.broker_timeout)
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                usage(format!(
                    "--broker-timeout {:?}: expected a duration",
                    a.broker_timeout
                ))
            })?;
        if !cfg!(feature = "kafka") {
            return Err(usage(
                "--broker: this build has no Kafka support (build with the cargo feature kafka)",
            ));
        }
        Cluster::parse(url, Duration::from_millis(ms as u64)).map(Some)
    }

    /// `kafka://host:port[,host:port]`.
    pub fn parse(url: &str, timeout: Duration) -> Result<Cluster> {
        let list = url
            .strip_prefix("kafka://")
            .ok_or_else(|| usage(format!("{url}: expected kafka://HOST:PORT[,HOST:PORT...]")))?;
        let list = list.trim_end_matches('/');
        for hp in list.split(',') {
            let ok = hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(usage(format!("{url}: {hp:?} is not HOST:PORT")));
            }
        }
        Ok(Cluster {
            url: url.to_string(),
            bootstrap: list.to_string(),
            timeout,
        })
    }
}
