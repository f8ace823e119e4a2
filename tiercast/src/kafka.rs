//! Events to Kafka through rdkafka: one topic per kind of event, keyed by stream, JSON values.
//!
//! Media never waits on Kafka: `deliver` only enqueues. While the brokers are unreachable,
//! librdkafka keeps the events (up to `queue_limit`) and retries until they are delivered;
//! past the limit new events are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::DeliveryResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use pipelines::config::KafkaConfig;
use pipelines::events::{Event, EventSink};

/// Every topic tiercast writes.
pub const TOPICS: &[&str] = &[
    "tiercast.streams",
    "tiercast.recordings",
    "tiercast.quality",
    "tiercast.analytics",
    "tiercast.calls",
];

#[derive(Debug, Default)]
pub struct KafkaCounters {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Refused because the queue was full.
    pub dropped: AtomicU64,
}

struct Context(Arc<KafkaCounters>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!("event not delivered to Kafka: {e}");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

pub struct KafkaSink {
    producer: ThreadedProducer<Context>,
    counters: Arc<KafkaCounters>,
    brokers: String,
    /// The brokers and how to reach them, for the admin client.
    config: KafkaConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("kafka ({brokers}): {message}")]
pub struct KafkaError {
    pub brokers: String,
    pub message: String,
}

/// A client of `config`'s brokers, with its TLS and SASL settings (the SASL password from
/// `TIERCAST_KAFKA_PASSWORD` when it is set).
fn client(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("security.protocol", config.security_protocol.as_str());
    if config.security_protocol.sasl() {
        let password = std::env::var(pipelines::config::KAFKA_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| config.sasl_password.clone())
            .unwrap_or_default();
        client
            .set(
                "sasl.mechanism",
                config.sasl_mechanism.as_deref().unwrap_or("PLAIN"),
            )
            .set(
                "sasl.username",
                config.sasl_username.as_deref().unwrap_or_default(),
            )
            .set("sasl.password", password);
    }
    let path = |p: &std::path::PathBuf| p.display().to_string();
    if let Some(ca) = &config.ssl_ca {
        client.set("ssl.ca.location", path(ca));
    }
    if let (Some(cert), Some(key)) = (&config.ssl_cert, &config.ssl_key) {
        client
            .set("ssl.certificate.location", path(cert))
            .set("ssl.key.location", path(key));
    }
    client
}

impl KafkaSink {
    pub fn new(config: &KafkaConfig) -> Result<KafkaSink, KafkaError> {
        let counters = Arc::new(KafkaCounters::default());
        let producer = client(config)
            // Keep retrying while the brokers are away: events may not be lost.
            .set("message.timeout.ms", "0")
            .set(
                "queue.buffering.max.messages",
                config.queue_limit.to_string(),
            )
            .set("linger.ms", "5")
            .set("enable.idempotence", "false")
            .create_with_context(Context(counters.clone()))
            .map_err(|e| KafkaError {
                brokers: config.brokers.clone(),
                message: e.to_string(),
            })?;
        Ok(KafkaSink {
            producer,
            counters,
            brokers: config.brokers.clone(),
            config: config.clone(),
        })
    }

    /// Creates tiercast's topics if the brokers lack them, retrying until the brokers answer
    /// (they may be down when the node starts). Events wait in the queue meanwhile.
    pub async fn ensure_topics(&self) {
        let admin: AdminClient<DefaultClientContext> = match client(&self.config).create() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("kafka admin client: {e}");
                return;
            }
        };
        let topics: Vec<NewTopic> = TOPICS
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
        let mut delay = Duration::from_millis(500);
        loop {
            match admin.create_topics(&topics, &options).await {
                Ok(results) => {
                    let failed: Vec<String> = results
                        .into_iter()
                        .filter_map(|r| r.err())
                        .filter(|(_, code)| *code != RDKafkaErrorCode::TopicAlreadyExists)
                        .map(|(topic, code)| format!("{topic}: {code}"))
                        .collect();
                    if failed.is_empty() {
                        tracing::info!(brokers = %self.brokers, "kafka topics ready");
                        return;
                    }
                    tracing::warn!("kafka topics not created: {}", failed.join(", "));
                }
                Err(e) => {
                    tracing::warn!(brokers = %self.brokers, "kafka unreachable, retrying: {e}")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    pub fn counters(&self) -> Arc<KafkaCounters> {
        self.counters.clone()
    }

    /// Events waiting to be delivered.
    pub fn queued(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits up to `timeout` for queued events to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

impl EventSink for KafkaSink {
    fn deliver(&self, event: &Event) {
        let Ok(payload) = serde_json::to_vec(event) else {
            return;
        };
        let record = BaseRecord::to(event.kind.topic())
            .key(event.kind.stream())
            .payload(&payload);
        if let Err((e, _)) = self.producer.send(record) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("event {} dropped: {e}", event.id);
        }
    }
}

/// Reads `topics` as member of consumer group `group` (so several consumers share the work) and
/// hands each event to `tx`, on its own thread, until `stop` is set. Events a consumer has not
/// committed are delivered again after a restart: consumers must be idempotent.
pub fn consume(
    config: &KafkaConfig,
    group: &str,
    topics: &[&str],
    tx: tokio::sync::broadcast::Sender<Event>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, KafkaError> {
    let err = |e: rdkafka::error::KafkaError| KafkaError {
        brokers: config.brokers.clone(),
        message: e.to_string(),
    };
    let consumer: BaseConsumer = client(config)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .map_err(err)?;
    consumer.subscribe(topics).map_err(err)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => match message.payload().map(serde_json::from_slice::<Event>) {
                    Some(Ok(event)) => {
                        let _ = tx.send(event);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(topic = message.topic(), "not a tiercast event: {e}")
                    }
                    None => {}
                },
                Some(Err(e)) => tracing::debug!("kafka consumer: {e}"),
                None => {}
            }
        }
    }))
}
