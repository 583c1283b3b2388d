//! The MQTT service: one task per connection running a session state machine
//! over the core [`Store`]. See `docs/design-mqtt.md` for how MQTT maps onto
//! queues, bindings and pop receipts.

mod connection;
mod message;
mod retained;
mod session;
mod subs;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use polymq::server::{ConnectionFuture, ProtocolService, ShutdownSignal};
use polymq::{Store, StoreError};
use tokio::net::TcpStream;

use retained::Retained;
use session::Registry;

/// Settings of the MQTT listener. `Default` is what `polymq serve` uses
/// without configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Largest packet accepted; advertised to MQTT 5 clients in CONNACK.
    pub max_packet_bytes: u32,
    /// Let clients without a username in.
    pub allow_anonymous: bool,
    /// name -> password.
    pub users: BTreeMap<String, String>,
    /// Our Receive Maximum: QoS 1/2 publishes a client may have unacknowledged.
    pub receive_maximum: u16,
    /// Topic aliases a client may set (MQTT 5 Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Upper bound for a client's session expiry interval, seconds.
    pub session_expiry_max_secs: u32,
    /// The one address space: the topic space subscriptions bind in (shared
    /// with AMQP's `amq.topic`) and whether publishes also go to Kafka topics.
    pub mapping: polymq::mapping::Mapping,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_bytes: polymq::config::MQTT_PACKET_BYTES_MAX_DEFAULT,
            allow_anonymous: true,
            users: BTreeMap::new(),
            receive_maximum: crate::limits::RECEIVE_MAXIMUM_DEFAULT,
            topic_alias_maximum: crate::limits::TOPIC_ALIAS_MAXIMUM_DEFAULT,
            session_expiry_max_secs: u32::MAX,
            mapping: polymq::mapping::Mapping::default(),
        }
    }
}

impl MqttConfig {
    /// The MQTT part of the broker's configuration.
    pub fn from_config(config: &polymq::config::Config) -> MqttConfig {
        MqttConfig {
            max_packet_bytes: config.mqtt_max_packet_bytes,
            allow_anonymous: config.mqtt_allow_anonymous,
            users: config.users.clone(),
            mapping: config.mapping.clone(),
            ..MqttConfig::default()
        }
    }
}

/// The MQTT protocol service: register it with the server shell for the MQTT
/// listener.
pub struct MqttService {
    store: Arc<Store>,
    config: MqttConfig,
    retained: Retained,
    sessions: Registry,
    /// Members per shared-subscription queue, so the last one out deletes it.
    groups: Mutex<HashMap<String, usize>>,
    /// Connection numbers: unique per process, increasing.
    connection_seq: AtomicU64,
    /// The task that enforces keep-alive and tells every session to leave
    /// when the server drains, started with the first connection.
    watch: OnceLock<()>,
}

impl MqttService {
    /// Loads what MQTT keeps in the store (the retained-message index) and
    /// returns the service. Sessions are found in the store when their
    /// clients reconnect.
    pub async fn new(store: Arc<Store>, config: MqttConfig) -> Result<Arc<MqttService>, StoreError> {
        let load_store = Arc::clone(&store);
        let retained = tokio::task::spawn_blocking(move || Retained::load(load_store))
            .await
            .map_err(|e| StoreError::InvalidArgument(format!("loading retained messages panicked: {e}")))??;
        Ok(Arc::new(MqttService {
            store,
            config,
            retained,
            sessions: Registry::default(),
            groups: Mutex::new(HashMap::new()),
            connection_seq: AtomicU64::new(1),
            watch: OnceLock::new(),
        }))
    }

    fn next_connection_id(&self) -> u64 {
        self.connection_seq.fetch_add(1, Ordering::Relaxed)
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ProtocolService for MqttService {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, shutdown: ShutdownSignal) -> ConnectionFuture {
        // One watcher per service (a server hands every connection the same
        // signal) instead of a shutdown future and a keep-alive timer in
        // every connection's task.
        self.watch.get_or_init(|| {
            let svc = Arc::downgrade(&self);
            let signal = shutdown.clone();
            tokio::spawn(async move {
                let drained = signal.triggered();
                tokio::pin!(drained);
                let mut sweep = tokio::time::interval(crate::limits::KEEP_ALIVE_SWEEP);
                sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = &mut drained => {
                            if let Some(svc) = svc.upgrade() {
                                svc.sessions.drain();
                            }
                            return;
                        }
                        _ = sweep.tick() => match svc.upgrade() {
                            Some(svc) => svc.sessions.expire_idle(),
                            None => return,
                        },
                    }
                }
            });
        });
        Box::pin(connection::serve(self, stream, peer, shutdown))
    }
}
