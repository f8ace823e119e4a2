//! `[events]`: where events go besides `<data_dir>/events.jsonl` (Kafka).

use serde::{Deserialize, Serialize};

use super::Invalid;

pub const DEFAULT_KAFKA_QUEUE: u32 = 100_000;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Also send every event to Kafka (`tiercast.streams`, `tiercast.recordings`, ...).
    pub kafka: Option<KafkaConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`
    pub brokers: String,
    /// Events held while the brokers are unreachable; past this, new events are dropped and
    /// counted.
    #[serde(default = "default_kafka_queue")]
    pub queue_limit: u32,
}

fn default_kafka_queue() -> u32 {
    DEFAULT_KAFKA_QUEUE
}

impl EventsConfig {
    /// Keys are relative to `[events]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        let Some(kafka) = &self.kafka else {
            return Ok(());
        };
        if kafka.brokers.trim().is_empty()
            || kafka.brokers.split(',').any(|b| !b.trim().contains(':'))
        {
            return Err((
                "kafka.brokers".into(),
                format!("{:?}: use host:port[,host:port...]", kafka.brokers),
            ));
        }
        if !(100..=10_000_000).contains(&kafka.queue_limit) {
            return Err((
                "kafka.queue_limit".into(),
                "must be from 100 to 10000000".into(),
            ));
        }
        Ok(())
    }
}
