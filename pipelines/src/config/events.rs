//! `[events]`: where events go besides `<data_dir>/events.jsonl` (Kafka).

use std::path::PathBuf;

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
    /// How the brokers are spoken to, as Kafka names it: `plaintext`, `ssl`, `sasl_plaintext`
    /// or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: KafkaSecurity,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, with the `sasl_*` protocols.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// The environment variable `TIERCAST_KAFKA_PASSWORD` overrides it.
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// The CA (PEM) the brokers' certificates are checked against (else the system's), with
    /// the `ssl` protocols.
    #[serde(default)]
    pub ssl_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for brokers that ask for one.
    #[serde(default)]
    pub ssl_cert: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key: Option<PathBuf>,
}

/// The environment variable the binary reads the Kafka SASL password from, over the file's.
pub const KAFKA_PASSWORD_ENV: &str = "TIERCAST_KAFKA_PASSWORD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurity {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaSecurity {
    /// As librdkafka's `security.protocol` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaSecurity::Plaintext => "plaintext",
            KafkaSecurity::Ssl => "ssl",
            KafkaSecurity::SaslPlaintext => "sasl_plaintext",
            KafkaSecurity::SaslSsl => "sasl_ssl",
        }
    }

    pub fn sasl(self) -> bool {
        matches!(self, KafkaSecurity::SaslPlaintext | KafkaSecurity::SaslSsl)
    }

    pub fn tls(self) -> bool {
        matches!(self, KafkaSecurity::Ssl | KafkaSecurity::SaslSsl)
    }
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
        kafka.validate_security()
    }
}

impl KafkaConfig {
    /// TLS and SASL settings, keys relative to `[events]`.
    fn validate_security(&self) -> Result<(), Invalid> {
        let protocol = self.security_protocol;
        if protocol.sasl() {
            const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
            match &self.sasl_mechanism {
                Some(m) if MECHANISMS.contains(&m.as_str()) => {}
                other => {
                    return Err((
                        "kafka.sasl_mechanism".into(),
                        format!(
                            "{other:?}: one of {MECHANISMS:?} with {}",
                            protocol.as_str()
                        ),
                    ));
                }
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                return Err((
                    "kafka.sasl_username".into(),
                    format!("needed with {}", protocol.as_str()),
                ));
            }
        } else if self.sasl_mechanism.is_some() || self.sasl_username.is_some() {
            return Err((
                "kafka.sasl_mechanism".into(),
                "SASL settings need security_protocol = \"sasl_ssl\" (or \"sasl_plaintext\")"
                    .into(),
            ));
        }
        let files = [
            ("kafka.ssl_ca", &self.ssl_ca),
            ("kafka.ssl_cert", &self.ssl_cert),
            ("kafka.ssl_key", &self.ssl_key),
        ];
        for (key, file) in files {
            let Some(path) = file else { continue };
            if !protocol.tls() {
                return Err((
                    key.into(),
                    "TLS files need security_protocol = \"ssl\" (or \"sasl_ssl\")".into(),
                ));
            }
            if !path.is_file() {
                return Err((key.into(), format!("{}: no such file", path.display())));
            }
        }
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            return Err((
                "kafka.ssl_cert".into(),
                "ssl_cert and ssl_key go together".into(),
            ));
        }
        Ok(())
    }
}
