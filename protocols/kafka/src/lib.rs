//! The Kafka wire protocol for polymq.
//!
//! - [`wire`]: the bounded reader every request body is decoded with (array
//!   counts are checked against the bytes left before anything is allocated).
//! - `api`: one module per API key, registered in one table from which
//!   ApiVersions is answered.
//! - `connection`: the per-connection loop (size-capped frames, one request at
//!   a time, responses in order).
//!
//! Topics are core streams: partition `p` of topic `t` is the stream queue
//! `polymq::topic::partition_queue(t, p)`. See `docs/design-kafka.md`.

mod api;
pub mod batch;
mod connection;
#[doc(hidden)]
pub mod fuzz_api;
mod group;
mod producer;
mod rope;
mod sasl;
mod topics;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use polymq::server::{ConnectionFuture, ProtocolService, ShutdownSignal};
use polymq::Store;
use tokio::net::TcpStream;

pub use kafka_protocol;

/// Kafka's `socket.request.max.bytes` default: the largest request frame.
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 100 * 1024 * 1024;

/// Settings of the Kafka listener. `Default` is what `polymq serve` uses
/// without configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` that Metadata and FindCoordinator hand to clients. `None`:
    /// the address each client connected to (right for any interface and
    /// for a listener on port 0).
    pub advertised: Option<String>,
    /// Largest request frame (bytes after the size prefix); larger closes the connection.
    pub max_request_bytes: usize,
    /// Metadata / Produce naming an unknown topic creates it.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub num_partitions: u32,
    /// Require SASL authentication before any other request.
    pub sasl: bool,
    /// name -> password, for SASL.
    pub users: std::collections::BTreeMap<String, String>,
    /// See `polymq::config::Config::kafka_group_initial_rebalance_delay_ms`.
    pub group_initial_rebalance_delay_ms: u64,
    /// Once the first byte of a request is in, the whole frame must arrive
    /// within this; otherwise the connection is closed (slow clients).
    pub request_read_timeout: Duration,
    /// A connection with no request for this long is closed (Kafka's
    /// `connections.max.idle.ms`).
    pub connections_max_idle: Duration,
    /// The one address space: whether produced records are routed into the
    /// topic space MQTT and AMQP's `amq.topic` share.
    pub mapping: polymq::mapping::Mapping,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised: None,
            max_request_bytes: MAX_REQUEST_BYTES_DEFAULT,
            auto_create_topics: true,
            num_partitions: 1,
            sasl: false,
            users: Default::default(),
            group_initial_rebalance_delay_ms: polymq::config::KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT,
            request_read_timeout: Duration::from_millis(polymq::config::KAFKA_REQUEST_READ_TIMEOUT_MS_DEFAULT),
            connections_max_idle: Duration::from_millis(polymq::config::KAFKA_CONNECTIONS_MAX_IDLE_MS_DEFAULT),
            mapping: polymq::mapping::Mapping::default(),
        }
    }
}

impl KafkaConfig {
    /// The Kafka part of the broker's configuration.
    pub fn from_config(config: &polymq::config::Config) -> KafkaConfig {
        KafkaConfig {
            advertised: config.kafka_advertised.clone(),
            auto_create_topics: config.kafka_auto_create_topics,
            num_partitions: config.kafka_num_partitions,
            sasl: config.kafka_sasl,
            users: config.users.clone(),
            group_initial_rebalance_delay_ms: config.kafka_group_initial_rebalance_delay_ms,
            request_read_timeout: Duration::from_millis(config.kafka_request_read_timeout_ms),
            connections_max_idle: Duration::from_millis(config.kafka_connections_max_idle_ms),
            mapping: config.mapping.clone(),
            ..KafkaConfig::default()
        }
    }
}

/// State shared by every Kafka connection.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub config: KafkaConfig,
    /// Idempotent producers: id allocation and sequence state.
    pub producers: producer::Producers,
    /// The consumer group coordinator (classic protocol).
    pub groups: Arc<group::Coordinator>,
    /// SASL users (from `config.users`) and their derived SCRAM credentials.
    pub users: sasl::Users,
}

/// The Kafka listener's service.
pub struct KafkaService {
    shared: Arc<Shared>,
}

impl KafkaService {
    pub async fn new(store: Arc<Store>, config: KafkaConfig) -> Result<Arc<KafkaService>, polymq::StoreError> {
        let groups =
            group::Coordinator::start(group::GroupSettings { initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms });
        let users = sasl::Users::new(config.users.clone());
        Ok(Arc::new(KafkaService { shared: Arc::new(Shared { store, config, producers: Default::default(), groups, users }) }))
    }
}

impl ProtocolService for KafkaService {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, shutdown: ShutdownSignal) -> ConnectionFuture {
        Box::pin(connection::serve(Arc::clone(&self.shared), stream, peer, shutdown))
    }
}
