//! What the coordinator asks of Kafka: that a new stream's topic exists on its brokers, and
//! that a dropped view's change topic be deleted.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// A metadata request to a stream's brokers, at CREATE, may take this long.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Checks that a stream's topic exists before the stream is accepted. Tests of the catalog
/// rules replace it; the shipped path asks the brokers.
pub type TopicCheck = Arc<dyn Fn(&catalog::StreamDef) -> Result<(), String> + Send + Sync>;
/// Deletes a topic (a dropped view's change topic, named by the stream its readers read):
/// `Ok(true)` when it was deleted, `Ok(false)` when there was none.
pub type TopicDelete = Arc<dyn Fn(&catalog::StreamDef) -> Result<bool, String> + Send + Sync>;
/// A topic deletion may take this long.
const TOPIC_DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// The coordinator's Kafka operations; tests of the catalog rules replace them.
#[derive(Clone)]
pub struct Topics {
    pub check: TopicCheck,
    pub delete: TopicDelete,
}

impl Topics {
    /// The shipped operations, against the stream's brokers.
    pub fn kafka() -> Topics {
        Topics {
            check: kafka_topic_check(),
            delete: kafka_topic_delete(),
        }
    }
}

fn client_config(stream: &catalog::StreamDef) -> ClientConfig {
    let mut config = ClientConfig::new();
    // The stream's own options (security), so that the coordinator connects as a view does.
    for (k, v) in &stream.kafka_options {
        config.set(k, v);
    }
    config.set("bootstrap.servers", &stream.brokers);
    config
}

/// Deletes the stream's topic on its brokers. Runs on a blocking thread of the runtime.
pub fn kafka_topic_delete() -> TopicDelete {
    Arc::new(|stream: &catalog::StreamDef| {
        let (brokers, topic) = (stream.brokers.as_str(), stream.topic.as_str());
        let admin: AdminClient<DefaultClientContext> = client_config(stream)
            .create()
            .map_err(|e| format!("cannot create a Kafka client for brokers '{brokers}': {e}"))?;
        let options = AdminOptions::new()
            .operation_timeout(Some(TOPIC_DELETE_TIMEOUT))
            .request_timeout(Some(TOPIC_DELETE_TIMEOUT));
        let results = tokio::runtime::Handle::try_current()
            .map_err(|e| format!("no runtime to delete topic '{topic}' on: {e}"))?
            .block_on(admin.delete_topics(&[topic], &options))
            .map_err(|e| format!("deleting topic '{topic}' on brokers '{brokers}': {e}"))?;
        let mut deleted = false;
        for r in results {
            match r {
                Ok(_) => deleted = true,
                Err((
                    _,
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                )) => {}
                Err((t, e)) => {
                    return Err(format!("deleting topic '{t}' on brokers '{brokers}': {e}"))
                }
            }
        }
        Ok(deleted)
    })
}

pub fn kafka_topic_check() -> TopicCheck {
    Arc::new(|stream: &catalog::StreamDef| {
        let (brokers, topic) = (stream.brokers.as_str(), stream.topic.as_str());
        let consumer: BaseConsumer = client_config(stream)
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
