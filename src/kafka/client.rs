//! The rdkafka side of `Cluster`: client settings, metadata, topic creation, and records
//! converted between Kafka messages and the record layout.

use super::Cluster;
use crate::error::{setup, Error, Result};
use crate::log::format::{encode_header, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use std::time::Duration;

impl Cluster {
    /// Settings every client gets.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", format!("kappa/{}", env!("CARGO_PKG_VERSION")))
            .set(
                "socket.connection.setup.timeout.ms",
                self.timeout.as_millis().max(1000).to_string(),
            )
            // No retry storm against a broker that is down: back off to a second.
            .set("reconnect.backoff.max.ms", "1000");
        c
    }

    /// Producer settings: idempotent, acks=all, batches that fill in a few ms on loopback or
    /// a LAN, no compression (it costs more CPU there than it saves).
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("batch.size", "1000000")
            .set("compression.type", "none")
            .set("queue.buffering.max.messages", "500000");
        c
    }

    /// An error reaching the cluster: a setup problem (exit 2).
    pub fn unreachable(&self, what: &str, e: KafkaError) -> Error {
        setup(format!(
            "{what}: broker {} unreachable or not answering within {} s: {e}",
            self.url,
            self.timeout.as_secs_f64()
        ))
    }

    /// The topic's partition count, or None when the cluster has no such topic.
    pub fn partitions<C: ClientContext>(
        &self,
        client: &Client<C>,
        topic: &str,
    ) -> Result<Option<u32>> {
        let md = client
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| self.unreachable("looking up the topic", e))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as u32))
    }

    /// Creates `topic` with `partitions` (replication as the cluster's default allows:
    /// one copy here; a real cluster's default replication factor applies there).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .config()
            .create()
            .map_err(|e| setup(format!("Kafka client: {e}")))?;
        let t = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1));
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| setup(format!("runtime: {e}")))?;
        let res = rt
            .block_on(async {
                tokio::time::timeout(self.timeout * 2, admin.create_topics([&t], &opts)).await
            })
            .map_err(|_| {
                setup(format!(
                    "creating topic {topic:?}: broker {} did not answer",
                    self.url
                ))
            })?
            .map_err(|e| self.unreachable("creating the topic", e))?;
        for r in res {
            if let Err((name, code)) = r {
                // Created meanwhile by someone else: fine, its partition count is checked next.
                if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(setup(format!("creating topic {name:?}: {code}")));
                }
            }
        }
        // Metadata can trail the creation by a moment.
        let client: rdkafka::consumer::BaseConsumer = self
            .config()
            .create()
            .map_err(|e| setup(format!("Kafka client: {e}")))?;
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            if self.partitions(client.client(), topic)? == Some(partitions) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(setup(format!(
                    "topic {topic:?} was created but does not show {partitions} partitions"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Our header pairs as Kafka headers (names are text in Kafka: other bytes are replaced).
pub fn to_kafka_headers(rec: &Record<'_>) -> Option<OwnedHeaders> {
    if rec.header_count == 0 {
        return None;
    }
    let mut h = OwnedHeaders::new_with_capacity(rec.header_count as usize);
    for (name, value) in rec.headers() {
        h = h.insert(Header {
            key: &String::from_utf8_lossy(name),
            value: Some(value),
        });
    }
    Some(h)
}

/// A Kafka message's parts in the record layout: (headers encoded, header count,
/// value is JSON).
pub fn from_kafka<M: Message>(m: &M, headers: &mut Vec<u8>) -> (u32, bool) {
    headers.clear();
    let mut n = 0;
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            encode_header(headers, h.key.as_bytes(), h.value.unwrap_or_default());
            n += 1;
        }
    }
    let value = m.payload().unwrap_or_default();
    let json = !value.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok();
    (n, json)
}

/// A Kafka message's timestamp in ms (CreateTime or LogAppendTime; 0 when it has none).
pub fn timestamp<M: Message>(m: &M) -> i64 {
    m.timestamp().to_millis().unwrap_or(0)
}
