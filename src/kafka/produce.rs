//! `produce --broker`: records parsed and checked by produce (so bad lines, dead letters and
//! line numbers are those of a local produce) go to Kafka through librdkafka's idempotent
//! producer with acks=all. A record counts as acknowledged when its delivery report says
//! so; `send` waits for every outstanding report, and a failed one is reported with its
//! input line.

use super::Cluster;
use crate::error::{setup, Error, Result};
use crate::log::format::Record;
use crate::log::partitioner::partition_for_key;
use crate::record::ingest::Prepared;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::sync::Mutex;
use std::time::Duration;

/// Longest a record may wait for its acknowledgement (librdkafka retries within it).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Failed records named one by one on stderr; the rest are counted.
const NAMED_FAILURES: usize = 10;

#[derive(Default)]
struct Reports {
    /// Acknowledged records per partition since the last `send`.
    acked: Vec<u64>,
    failed: u64,
    messages: Vec<String>,
}

struct Ctx {
    reports: Mutex<Reports>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    /// The record's input line.
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, line: usize) {
        let mut rep = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(m) => {
                let p = m.partition().max(0) as usize;
                if rep.acked.len() <= p {
                    rep.acked.resize(p + 1, 0);
                }
                rep.acked[p] += 1;
            }
            Err((e, _)) => {
                rep.failed += 1;
                if rep.messages.len() < NAMED_FAILURES {
                    rep.messages
                        .push(format!("line {line}: not acknowledged: {e}"));
                }
            }
        }
    }
}

pub struct Sink {
    producer: BaseProducer<Ctx>,
    topic: String,
    partitions: u32,
    forced: Option<u32>,
}

impl Sink {
    /// Opens a producer on `topic`, creating the topic with `create_with` partitions when the
    /// cluster has none; returns the sink and the topic's partition count.
    pub fn open(
        cluster: &Cluster,
        topic: &str,
        create_with: Option<u32>,
        forced: Option<u32>,
    ) -> Result<Sink> {
        let producer: BaseProducer<Ctx> = cluster
            .producer_config()
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create_with_context(Ctx {
                reports: Mutex::default(),
            })
            .map_err(|e| setup(format!("Kafka producer: {e}")))?;
        let partitions = match cluster.partitions(producer.client(), topic)? {
            Some(n) => {
                if let Some(want) = create_with.filter(|w| *w != n) {
                    return Err(setup(format!(
                        "topic {topic:?} has {n} partitions, not {want} (--partitions applies on creation)"
                    )));
                }
                n
            }
            None => {
                let n = create_with.unwrap_or(1);
                cluster.create_topic(topic, n)?;
                n
            }
        };
        if let Some(p) = forced.filter(|p| *p >= partitions) {
            return Err(crate::error::usage(format!(
                "--partition {p}: topic {topic:?} has partitions 0 to {}",
                partitions - 1
            )));
        }
        Ok(Sink {
            producer,
            topic: topic.to_string(),
            partitions,
            forced,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Hands one record to the producer (waiting while its queue is full).
    pub fn add(&mut self, p: &Prepared<'_>, line: u64) -> Result<()> {
        let partition = match (self.forced, &p.key) {
            (Some(f), _) => Some(f),
            (None, Some(k)) => Some(partition_for_key(k, self.partitions)),
            // Kafka's own choice for records without a key, as its default partitioner does.
            (None, None) => None,
        };
        let rec = Record::from_parts(
            0,
            p.ts.unwrap_or(0),
            None,
            &[],
            false,
            &p.headers,
            p.header_count,
        );
        let headers = super::client::to_kafka_headers(&rec);
        let mut r: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.topic, line as usize).payload(&p.value[..]);
        if let Some(k) = &p.key {
            r = r.key(&k[..]);
        }
        if let Some(ts) = p.ts {
            r = r.timestamp(ts);
        }
        if let Some(part) = partition {
            r = r.partition(part as i32);
        }
        if let Some(h) = headers {
            r = r.headers(h);
        }
        loop {
            match self.producer.send(r) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    r = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    return Err(Error::Data(format!("line {line}: not sent to Kafka: {e}")));
                }
            }
        }
        // Serves delivery reports as they come, so their memory does not pile up.
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Waits until every record handed over is acknowledged or failed; returns
    /// (partition, count) acknowledged since the last call, or the failures.
    pub fn send(&mut self) -> Result<Vec<(u32, u64)>> {
        self.producer
            .flush(DELIVERY_TIMEOUT + Duration::from_secs(5))
            .map_err(|e| Error::Data(format!("waiting for Kafka's acknowledgements: {e}")))?;
        let mut rep = self
            .producer
            .context()
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let acked: Vec<(u32, u64)> = std::mem::take(&mut rep.acked)
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| (p as u32, n))
            .collect();
        if rep.failed > 0 {
            let mut m = rep.messages.join("\nproduce: ");
            if rep.failed as usize > rep.messages.len() {
                m.push_str(&format!(
                    "\nproduce: ... {} records in all were not acknowledged",
                    rep.failed
                ));
            }
            return Err(Error::Data(m));
        }
        Ok(acked)
    }
}
