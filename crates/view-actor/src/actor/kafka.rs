//! The view actor's metadata requests to Kafka: consumer settings, partitions and watermarks.

use std::collections::HashMap;

use catalog::StreamDef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::{input_of_partition, ActorError, CONSUMER_DEFAULTS, METADATA_TIMEOUT};

/// The consumer settings for a stream: Meridian's freshness defaults, the stream's own
/// librdkafka options (`properties`, security), then those Meridian's exactness depends on.
pub(super) fn consumer_config(stream: &StreamDef, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in CONSUMER_DEFAULTS {
        c.set(*k, *v);
    }
    for (k, v) in &stream.kafka_options {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &stream.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A stored offset the broker no longer has means messages were deleted before the view
        // read them. Skipping ahead silently would make the view wrong, so it is an error.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false");
    c
}

/// Every input partition of the view's topics with its (low, high) watermarks.
pub(super) fn input_marks(sources: &[StreamDef]) -> Result<HashMap<i32, (i64, i64)>, ActorError> {
    let mut marks = HashMap::new();
    for (source, stream) in sources.iter().enumerate() {
        let partitions = topic_partitions(stream)?;
        let consumer: BaseConsumer = consumer_config(stream, "meridian-metadata").create()?;
        for p in partitions {
            marks.insert(
                input_of_partition(source, stream, p)?,
                consumer.fetch_watermarks(&stream.topic, p, METADATA_TIMEOUT)?,
            );
        }
    }
    Ok(marks)
}

/// The partitions of `topic`, or [`ActorError::NoTopic`].
pub fn topic_partitions(stream: &StreamDef) -> Result<Vec<i32>, ActorError> {
    let (brokers, topic) = (stream.brokers.as_str(), stream.topic.as_str());
    let consumer: BaseConsumer = consumer_config(stream, "meridian-metadata").create()?;
    let md = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let t = md.topics().iter().find(|t| t.name() == topic);
    match t {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        }
        _ => Err(ActorError::NoTopic {
            topic: topic.to_string(),
            brokers: brokers.to_string(),
        }),
    }
}
