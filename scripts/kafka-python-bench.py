"""kafka-python beside produce/consume --broker in scripts/bench.sh (a floor, not a goal):
produce FILE's NDJSON lines keyed by vehicle_id with ts as the timestamp, or consume a topic
until it has read COUNT records. Usage: kafka-python-bench.py produce HOST:PORT TOPIC FILE, or
kafka-python-bench.py consume HOST:PORT TOPIC COUNT"""
import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

mode, bootstrap, topic = sys.argv[1:4]
if mode == "produce":
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=1_000_000)
    with open(sys.argv[4], "rb") as f:
        for line in f:
            rec = json.loads(line)
            p.send(topic, key=rec["vehicle_id"].encode(), value=line.rstrip(b"\n"), timestamp_ms=rec["ts"])
    p.flush()
else:
    c = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000, fetch_max_bytes=52428800,
                      max_partition_fetch_bytes=4194304)
    parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    c.assign(parts)
    c.seek_to_beginning()
    want, n = int(sys.argv[4]), 0
    for m in c:
        n += 1
        if n == want:
            break
    print(n)
