//! The one check the coordinator makes against Kafka: a new stream's topic exists on its
//! brokers.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// A metadata request to a stream's brokers, at CREATE, may take this long.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Checks that a stream's topic exists before the stream is accepted. Tests of the catalog
/// rules replace it; the shipped path asks the brokers.
pub type TopicCheck = Arc<dyn Fn(&catalog::StreamDef) -> Result<(), String> + Send + Sync>;

pub fn kafka_topic_check() -> TopicCheck {
    Arc::new(|stream: &catalog::StreamDef| {
        let (brokers, topic) = (stream.brokers.as_str(), stream.topic.as_str());
        let mut config = ClientConfig::new();
        // The stream's own options (security), so that the check connects as the view will.
        for (k, v) in &stream.kafka_options {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config
            .set("bootstrap.servers", brokers)
            .set("group.id", "meridian-coordinator")
            .create()
            .map_err(|e| format!("cannot create a Kafka client for brokers '{brokers}': {e}"))?;
        let md = consumer
            .fetch_metadata(Some(topic), TOPIC_CHECK_TIMEOUT)
            .map_err(|e| format!("cannot reach brokers '{brokers}': {e}"))?;
        match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(format!("topic '{topic}' does not exist on brokers '{brokers}'; create it first (Meridian does not auto-create topics)")),
        }
    })
}
