//! AMQP 0-9-1 (the RabbitMQ wire) for polymq: a bounded frame reader over the
//! `amq-protocol` codec ([`codec`]), and one task per connection running the
//! connection and channel state machines over the core [`Store`]. See
//! `docs/design-amqp.md` for how exchanges, queues, consumers and confirms
//! map onto the core.

pub mod codec;
mod connection;
mod deadletter;
mod exchange;
mod headers;
pub mod limits;
mod message;
pub mod reply;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use polymq::queue::QueueId;
use polymq::server::{ConnectionFuture, ProtocolService, ShutdownSignal};
use polymq::{Store, StoreError};
use tokio::net::TcpStream;

use exchange::Exchanges;

pub use amq_protocol;
pub use bytes;

/// Settings of the AMQP listener. `Default` is what `polymq serve` uses
/// without configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// name -> password. Empty: the single user guest/guest, allowed only
    /// from loopback addresses (RabbitMQ's default).
    pub users: BTreeMap<String, String>,
    /// Largest frame we accept and offer in connection.tune (bytes, whole frame).
    pub frame_max: u32,
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune (0: none).
    pub heartbeat: Duration,
    /// The virtual hosts that exist (connection.open to others: 530).
    pub vhosts: Vec<String>,
    /// The one address space: which exchange's space MQTT shares
    /// (`amq.topic`), and whether its publishes also go to Kafka topics.
    pub mapping: polymq::mapping::Mapping,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            users: BTreeMap::new(),
            frame_max: limits::FRAME_MAX_DEFAULT,
            channel_max: limits::CHANNEL_MAX_DEFAULT,
            heartbeat: Duration::from_secs(u64::from(limits::HEARTBEAT_DEFAULT_SECS)),
            vhosts: vec![exchange::DEFAULT_VHOST.to_owned()],
            mapping: polymq::mapping::Mapping::default(),
        }
    }
}

impl AmqpConfig {
    /// The AMQP part of the broker's configuration.
    pub fn from_config(config: &polymq::config::Config) -> AmqpConfig {
        AmqpConfig {
            users: config.users.clone(),
            vhosts: config.amqp_vhosts.clone(),
            mapping: config.mapping.clone(),
            ..AmqpConfig::default()
        }
    }

    pub(crate) fn has_vhost(&self, vhost: &str) -> bool {
        self.vhosts.iter().any(|v| v == vhost)
    }

    /// Whether `user`/`password` may log in from `peer`.
    pub(crate) fn check_login(&self, user: &str, password: &str, peer: SocketAddr) -> bool {
        if self.users.is_empty() {
            return user == "guest" && password == "guest" && peer.ip().is_loopback();
        }
        self.users.get(user).is_some_and(|p| p == password)
    }
}

/// What the service knows about queues beyond the core: who owns an
/// exclusive queue, which ones auto-delete, how many consumers each has.
#[derive(Default)]
pub(crate) struct QueueRegistry {
    /// queue -> owning connection.
    pub exclusive: HashMap<QueueId, u64>,
    pub auto_delete: HashSet<QueueId>,
    pub consumers: HashMap<QueueId, usize>,
    /// x-message-ttl / x-dead-letter-* of the queues that have them.
    pub args: HashMap<QueueId, Arc<deadletter::QueueArgs>>,
    /// x-single-active-consumer: a consumer's pump holds its queue's gate
    /// while it runs; the next waiting consumer (FIFO) takes over when it stops.
    pub active_consumer_gates: HashMap<QueueId, Arc<tokio::sync::Mutex<()>>>,
}

/// The AMQP protocol service: register it with the server shell for the AMQP
/// listener.
pub struct AmqpService {
    store: Arc<Store>,
    config: AmqpConfig,
    exchanges: Exchanges,
    headers: headers::HeadersIndex,
    queues: Mutex<QueueRegistry>,
    connection_seq: AtomicU64,
}

impl AmqpService {
    /// Loads the durable exchange definitions and returns the service.
    pub async fn new(store: Arc<Store>, config: AmqpConfig) -> Result<Arc<AmqpService>, StoreError> {
        let exchanges = Exchanges::load(&store, &config.vhosts).await?;
        let mut registry = QueueRegistry::default();
        // Durable queues' AMQP-layer arguments: a walk over every queue, once
        // at start (the core has no index of a space's bindings).
        for (q, name) in store.list_queues() {
            for (sp, p) in store.bindings_of(q) {
                if sp == deadletter::ARGS_SPACE {
                    if let Some(mut a) = deadletter::QueueArgs::from_record(&p) {
                        a.vhost = exchange::vhost_of(&name).to_owned();
                        registry.args.insert(q, Arc::new(a));
                    }
                }
            }
        }
        let svc = Arc::new(AmqpService {
            store,
            config,
            exchanges,
            headers: headers::HeadersIndex::default(),
            queues: Mutex::new(registry),
            connection_seq: AtomicU64::new(1),
        });
        tokio::spawn(connection::expire_unread_heads(Arc::downgrade(&svc)));
        Ok(svc)
    }

    fn next_connection_id(&self) -> u64 {
        self.connection_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn queues(&self) -> MutexGuard<'_, QueueRegistry> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ProtocolService for AmqpService {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, shutdown: ShutdownSignal) -> ConnectionFuture {
        Box::pin(connection::serve(self, stream, peer, shutdown))
    }
}
