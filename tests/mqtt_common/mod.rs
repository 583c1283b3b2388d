//! Harness for the MQTT end-to-end tests: an in-process polymq server on
//! 127.0.0.1:0 over a store in a temporary directory, rumqttc clients whose
//! event loops run on their own tasks, and a raw-socket client for what
//! rumqttc will not send (malformed packets, oversize packets, a CONNECT that
//! is never followed by a PING).
//!
//! External broker: with `POLYMQ_TEST_MQTT_ADDR=host:port` the tests talk to
//! that broker instead (mosquitto, to check that a test asserts what the spec
//! says rather than what polymq happens to do). Tests that need a broker
//! restart are then skipped with a notice. Tests that need a non-default
//! broker configuration run only when `POLYMQ_TEST_MQTT_ADDR_<PROFILE>` names
//! a broker configured that way (see [`Profile`]), and are skipped otherwise.
//! Every topic and client id carries a per-run prefix so that tests running
//! in parallel against one external broker, and runs against a broker that
//! keeps retained messages, do not see each other.
//!
//! With mosquitto 2 (three listeners, one per profile):
//! ```text
//! # default.conf            # auth.conf                      # small.conf
//! listener 18830 127.0.0.1  listener 18831 127.0.0.1         listener 18832 127.0.0.1
//! allow_anonymous true      allow_anonymous false            allow_anonymous true
//!                           password_file pw  (alice:secret) max_packet_size 2048
//!
//! POLYMQ_TEST_MQTT_ADDR=127.0.0.1:18830 POLYMQ_TEST_MQTT_ADDR_AUTH=127.0.0.1:18831 \
//! POLYMQ_TEST_MQTT_ADDR_SMALL_PACKETS=127.0.0.1:18832 cargo test -p polymq-mqtt --test 'mqtt_v*'
//! ```

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use polymq::config::Config;
use polymq::server::{shutdown_channel, ProtocolService, Server, ServerError, ShutdownTrigger};
use polymq::Store;
use polymq_mqtt::{MqttConfig, MqttService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

/// How long a test waits for something that should happen. Generous: CI runs
/// debug builds of several test binaries at once on two cores.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test watches for something that must NOT happen.
pub const QUIET: Duration = Duration::from_millis(700);

pub const ENV_ADDR: &str = "POLYMQ_TEST_MQTT_ADDR";

/// Non-default broker configurations a test may need. Against an external
/// broker, `POLYMQ_TEST_MQTT_ADDR_<NAME>` must name a broker set up as
/// described here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `allow_anonymous=false`, one user `alice` with password `secret`.
    Auth,
    /// Maximum packet size 2048 bytes.
    SmallPackets,
}

impl Profile {
    fn env_var(self) -> &'static str {
        match self {
            Profile::Auth => "POLYMQ_TEST_MQTT_ADDR_AUTH",
            Profile::SmallPackets => "POLYMQ_TEST_MQTT_ADDR_SMALL_PACKETS",
        }
    }
}

pub const AUTH_USER: &str = "alice";
pub const AUTH_PASSWORD: &str = "secret";
pub const SMALL_PACKET_BYTES: u32 = 2048;

/// A config for [`Profile::Auth`].
pub fn auth_config() -> MqttConfig {
    let mut cfg = MqttConfig { allow_anonymous: false, ..MqttConfig::default() };
    cfg.users.insert(AUTH_USER.to_owned(), AUTH_PASSWORD.to_owned());
    cfg
}

/// A config for [`Profile::SmallPackets`].
pub fn small_packets_config() -> MqttConfig {
    MqttConfig { max_packet_bytes: SMALL_PACKET_BYTES, ..MqttConfig::default() }
}

struct Running {
    addr: SocketAddr,
    store: Arc<Store>,
    trigger: ShutdownTrigger,
    task: JoinHandle<Result<(), ServerError>>,
}

/// A broker the test talks to: in-process polymq, or an external one.
pub struct TestBroker {
    addr: SocketAddr,
    /// Unique per broker instance: keeps topics and client ids of parallel
    /// tests (and earlier runs) apart on a shared external broker.
    prefix: String,
    cfg: MqttConfig,
    dir: Option<tempfile::TempDir>,
    running: Option<Running>,
}

impl TestBroker {
    /// A broker with `cfg`, or the external broker (whose configuration is
    /// its own: use this only for tests that work with default settings).
    pub async fn start(cfg: MqttConfig) -> Result<TestBroker> {
        if let Some(addr) = external_addr(ENV_ADDR)? {
            return Ok(TestBroker::external(addr, cfg));
        }
        TestBroker::start_in_process(cfg).await
    }

    /// A broker configured as `profile` says (`cfg` for the in-process one);
    /// `None` (with a notice) when an external broker is in use and no broker
    /// for that profile was named.
    pub async fn start_profile(cfg: MqttConfig, profile: Profile, test: &str) -> Result<Option<TestBroker>> {
        if std::env::var_os(ENV_ADDR).is_none() {
            return TestBroker::start_in_process(cfg).await.map(Some);
        }
        match external_addr(profile.env_var())? {
            Some(addr) => Ok(Some(TestBroker::external(addr, cfg))),
            None => {
                eprintln!("SKIPPED {test}: needs a broker configured as {profile:?}; set {} to run it externally", profile.env_var());
                Ok(None)
            }
        }
    }

    /// An in-process broker that [`restart`](TestBroker::restart) works on;
    /// `None` (with a notice) when an external broker is in use.
    pub async fn start_restartable(cfg: MqttConfig, test: &str) -> Result<Option<TestBroker>> {
        if std::env::var_os(ENV_ADDR).is_some() {
            eprintln!("SKIPPED {test}: restarts the broker, which an external broker ({ENV_ADDR}) does not allow");
            return Ok(None);
        }
        TestBroker::start_in_process(cfg).await.map(Some)
    }

    fn external(addr: SocketAddr, cfg: MqttConfig) -> TestBroker {
        TestBroker { addr, prefix: unique_prefix(), cfg, dir: None, running: None }
    }

    async fn start_in_process(cfg: MqttConfig) -> Result<TestBroker> {
        let dir = tempfile::tempdir().context("creating the store's temporary directory")?;
        let running = start_server(dir.path(), &cfg).await?;
        Ok(TestBroker { addr: running.addr, prefix: unique_prefix(), cfg, dir: Some(dir), running: Some(running) })
    }

    /// The in-process broker's store (`None` for an external broker).
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.running.as_ref().map(|r| &r.store)
    }

    pub fn is_external(&self) -> bool {
        self.dir.is_none()
    }

    /// The MQTT address; changes on [`restart`](TestBroker::restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `name` as a topic (or filter) of this test only.
    pub fn topic(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// `name` as a client id of this test only.
    pub fn client_id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix.replace('/', "-"))
    }

    /// Shuts the server down the way `polymq serve` does on SIGTERM (sessions
    /// told to leave, connections drained, the store closed), then opens the
    /// same data directory again and serves it on a new port.
    pub async fn restart(&mut self) -> Result<()> {
        let dir = self.dir.as_ref().context("restart needs an in-process broker")?.path().to_path_buf();
        let running = self.running.take().context("broker is not running")?;
        running.trigger.trigger();
        // Grace period is 5 s; past 15 s the server is stuck.
        let stopped = tokio::time::timeout(Duration::from_secs(15), running.task)
            .await
            .context("server did not stop within 15 s of the shutdown signal")?
            .context("server task panicked")?;
        stopped.context("server stopped with an error")?;
        let running = start_server(&dir, &self.cfg).await.context("restarting the broker on the same data directory")?;
        self.addr = running.addr;
        self.running = Some(running);
        Ok(())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // The task finishes on the test's runtime or is dropped with it.
            running.trigger.trigger();
        }
    }
}

fn external_addr(var: &str) -> Result<Option<SocketAddr>> {
    let Some(value) = std::env::var_os(var) else { return Ok(None) };
    let value = value.to_string_lossy().into_owned();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&value)
        .with_context(|| format!("{var}={value}: not host:port"))?
        .next()
        .with_context(|| format!("{var}={value}: resolves to nothing"))?;
    Ok(Some(addr))
}

fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Short: client ids stay well under the 23 characters every v3.1.1 server must accept.
    let mixed = (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n;
    format!("e{:08x}", mixed as u32)
}

async fn start_server(dir: &Path, cfg: &MqttConfig) -> Result<Running> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let config = Config { data_dir: dir.to_path_buf(), mqtt_listen: loopback, http_listen: loopback, ..Config::default() };
    let store_config = config.store_config();
    // Opening runs recovery: blocking I/O, kept off the async workers as the binary does.
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .context("store open panicked")?
        .context("opening the store")?;
    let service = MqttService::new(Arc::clone(&store), cfg.clone()).await.context("starting the MQTT service")?;
    let service: Arc<dyn ProtocolService> = service;
    let server = Server::bind(&config, Arc::clone(&store), vec![(config.mqtt_listen, service)]).await.context("binding the server")?;
    let addr =
        server.local_addrs().into_iter().find(|(protocol, _)| *protocol == "mqtt").map(|(_, addr)| addr).context("no mqtt listener")?;
    let (trigger, signal) = shutdown_channel();
    let task = tokio::spawn(server.run(signal.triggered()));
    Ok(Running { addr, store, trigger, task })
}

// ---------------------------------------------------------------------------
// Events of a client's event loop, read on the test's schedule.
// ---------------------------------------------------------------------------

enum Item<E, X> {
    Event(E),
    /// The event loop returned an error: the connection is gone. The harness
    /// does not poll again (rumqttc would reconnect on the next poll).
    Closed(X),
}

enum WaitError {
    Timeout,
    Closed(String),
}

/// What a client's event loop produced, in order. Tests pick the events they
/// wait for; the others stay buffered for later picks.
struct Events<E, X> {
    rx: UnboundedReceiver<Item<E, X>>,
    buffered: VecDeque<E>,
    closed: Option<String>,
}

impl<E: Debug, X: Debug> Events<E, X> {
    async fn pick<T>(&mut self, deadline: Instant, mut pick: impl FnMut(&E) -> Option<T>) -> Result<T, WaitError> {
        for i in 0..self.buffered.len() {
            if let Some(found) = pick(&self.buffered[i]) {
                self.buffered.remove(i);
                return Ok(found);
            }
        }
        loop {
            if let Some(reason) = &self.closed {
                return Err(WaitError::Closed(reason.clone()));
            }
            match timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return Err(WaitError::Timeout),
                Ok(None) => self.closed = Some("event loop task ended".to_owned()),
                Ok(Some(Item::Closed(error))) => self.closed = Some(format!("{error:?}")),
                Ok(Some(Item::Event(event))) => match pick(&event) {
                    Some(found) => return Ok(found),
                    None => self.buffered.push_back(event),
                },
            }
        }
    }

    async fn wait<T>(&mut self, within: Duration, what: &str, pick: impl FnMut(&E) -> Option<T>) -> Result<T> {
        match self.pick(Instant::now() + within, pick).await {
            Ok(found) => Ok(found),
            Err(WaitError::Timeout) => bail!("timed out after {within:?} waiting for {what}"),
            Err(WaitError::Closed(reason)) => bail!("connection closed ({reason}) while waiting for {what}"),
        }
    }

    /// `None` if nothing matching arrived within `within` (a closed
    /// connection also counts as nothing arriving).
    async fn maybe<T>(&mut self, within: Duration, pick: impl FnMut(&E) -> Option<T>) -> Option<T> {
        self.pick(Instant::now() + within, pick).await.ok()
    }

    /// The error that ended the event loop.
    async fn closed(&mut self, within: Duration) -> Result<X> {
        let deadline = Instant::now() + within;
        loop {
            match timeout_at(deadline, self.rx.recv()).await {
                Err(_) => bail!("connection still open after {within:?}"),
                Ok(None) => bail!("event loop task ended without an error"),
                Ok(Some(Item::Closed(error))) => {
                    self.closed = Some(format!("{error:?}"));
                    return Ok(error);
                }
                Ok(Some(Item::Event(event))) => self.buffered.push_back(event),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// MQTT 5 client.
// ---------------------------------------------------------------------------

pub mod v5 {
    #[allow(unused_imports)] // re-exports for the test files; each uses a part
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, LastWillProperties, PubAckReason, Publish, PublishProperties,
        RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
    pub use rumqttc::Outgoing;

    use super::*;
    use rumqttc::v5::mqttbytes::v5::Packet;

    /// Options every v5 test client starts from: a 60 s keep-alive (no pings
    /// during a test) and room for 64 KiB packets from the broker.
    pub fn options(broker: &TestBroker, client_id: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(broker.client_id(client_id), broker.host(), broker.port());
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_max_packet_size(Some(64 * 1024));
        opts
    }

    /// A connected rumqttc v5 client whose event loop runs on its own task.
    pub struct Client {
        pub client: AsyncClient,
        /// The broker's CONNACK.
        pub connack: ConnAck,
        events: Events<Event, ConnectionError>,
        task: JoinHandle<()>,
    }

    impl Client {
        /// Connects and waits for a successful CONNACK.
        pub async fn connect(opts: MqttOptions) -> Result<Client> {
            let id = opts.client_id();
            let (client, mut eventloop) = AsyncClient::new(opts, 64);
            let connack = match tokio::time::timeout(WAIT, eventloop.poll()).await {
                Err(_) => bail!("{id}: no CONNACK within {WAIT:?}"),
                Ok(Err(e)) => bail!("{id}: connect failed: {e:?}"),
                Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => connack,
                Ok(Ok(other)) => bail!("{id}: expected CONNACK, got {other:?}"),
            };
            let (tx, rx) = unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(event) => {
                            if tx.send(Item::Event(event)).is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            let _ = tx.send(Item::Closed(error));
                            return;
                        }
                    }
                }
            });
            Ok(Client { client, connack, events: Events { rx, buffered: VecDeque::new(), closed: None }, task })
        }

        /// Connects expecting the broker to refuse; returns its reason code.
        pub async fn connect_refused(opts: MqttOptions) -> Result<ConnectReturnCode> {
            let id = opts.client_id();
            let (_client, mut eventloop) = AsyncClient::new(opts, 8);
            match tokio::time::timeout(WAIT, eventloop.poll()).await {
                Err(_) => bail!("{id}: no answer to CONNECT within {WAIT:?}"),
                Ok(Err(ConnectionError::ConnectionRefused(code))) => Ok(code),
                Ok(Err(e)) => bail!("{id}: expected a CONNACK refusing the connection, got error {e:?}"),
                Ok(Ok(event)) => bail!("{id}: expected a CONNACK refusing the connection, got {event:?}"),
            }
        }

        /// Subscribes to one filter; returns the SUBACK's reason code.
        pub async fn subscribe_filter(&mut self, filter: Filter, props: Option<SubscribeProperties>) -> Result<SubscribeReasonCode> {
            let path = filter.path.clone();
            match props {
                Some(props) => self.client.subscribe_many_with_properties(vec![filter], props).await?,
                None => self.client.subscribe_many(vec![filter]).await?,
            }
            let codes = self
                .events
                .wait(WAIT, &format!("SUBACK for {path}"), |e| match e {
                    Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
                    _ => None,
                })
                .await?;
            ensure!(codes.len() == 1, "SUBACK for {path} has {} reason codes: {codes:?}", codes.len());
            Ok(codes[0])
        }

        /// Subscribes and checks the broker granted `qos`.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
            self.subscribe_with(Filter::new(filter, qos), None).await
        }

        /// Subscribes with options and checks the broker granted the QoS asked for.
        pub async fn subscribe_with(&mut self, filter: Filter, props: Option<SubscribeProperties>) -> Result<()> {
            let (path, qos) = (filter.path.clone(), filter.qos);
            let code = self.subscribe_filter(filter, props).await?;
            ensure!(code == SubscribeReasonCode::Success(qos), "SUBACK for {path}: expected Success({qos:?}), got {code:?}");
            Ok(())
        }

        pub async fn unsubscribe(&mut self, filter: &str) -> Result<()> {
            self.client.unsubscribe(filter).await?;
            self.events
                .wait(WAIT, &format!("UNSUBACK for {filter}"), |e| matches!(e, Event::Incoming(Packet::UnsubAck(_))).then_some(()))
                .await
        }

        /// Publishes and, for QoS 1/2, waits for the broker's PUBACK/PUBCOMP.
        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) -> Result<()> {
            self.publish_props(topic, qos, retain, payload, None).await
        }

        pub async fn publish_props(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            props: Option<PublishProperties>,
        ) -> Result<()> {
            self.publish_nowait(topic, qos, retain, payload, props).await?;
            self.wait_published(qos).await
        }

        /// Queues a publish without waiting for its acknowledgement; pair
        /// with [`wait_published`](Client::wait_published).
        pub async fn publish_nowait(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            props: Option<PublishProperties>,
        ) -> Result<()> {
            let payload = payload.into();
            match props {
                Some(props) => self.client.publish_with_properties(topic, qos, retain, payload, props).await?,
                None => self.client.publish(topic, qos, retain, payload).await?,
            }
            Ok(())
        }

        /// Waits until the next queued publish went out and, for QoS 1/2, was
        /// acknowledged with a success reason code.
        pub async fn wait_published(&mut self, qos: QoS) -> Result<()> {
            let pkid = self
                .events
                .wait(WAIT, "the PUBLISH to go out", |e| match e {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                    _ => None,
                })
                .await?;
            match qos {
                QoS::AtMostOnce => Ok(()),
                QoS::AtLeastOnce => {
                    let reason = self
                        .events
                        .wait(WAIT, &format!("PUBACK {pkid}"), |e| match e {
                            Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid => Some(ack.reason),
                            _ => None,
                        })
                        .await?;
                    ensure!(
                        matches!(reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers),
                        "PUBACK {pkid} with reason {reason:?}"
                    );
                    Ok(())
                }
                QoS::ExactlyOnce => {
                    self.events
                        .wait(WAIT, &format!("PUBCOMP {pkid}"), |e| match e {
                            Event::Incoming(Packet::PubComp(comp)) if comp.pkid == pkid => Some(()),
                            _ => None,
                        })
                        .await
                }
            }
        }

        /// The next PUBLISH from the broker, within [`WAIT`].
        pub async fn recv(&mut self) -> Result<Publish> {
            self.recv_within(WAIT).await
        }

        pub async fn recv_within(&mut self, within: Duration) -> Result<Publish> {
            self.events.wait(within, "a PUBLISH from the broker", pick_publish).await
        }

        /// The next PUBLISH on `topic`, leaving others buffered.
        pub async fn recv_on(&mut self, topic: &str) -> Result<Publish> {
            let what = format!("a PUBLISH on {topic}");
            self.events
                .wait(WAIT, &what, |e| match e {
                    Event::Incoming(Packet::Publish(p)) if p.topic == topic.as_bytes() => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        /// Fails if a PUBLISH arrives within `within`.
        pub async fn expect_no_publish(&mut self, within: Duration) -> Result<()> {
            match self.events.maybe(within, pick_publish).await {
                None => Ok(()),
                Some(p) => {
                    bail!("unexpected PUBLISH on {} (payload {:?})", String::from_utf8_lossy(&p.topic), String::from_utf8_lossy(&p.payload))
                }
            }
        }

        /// Acknowledges a publish received with manual acks on.
        pub async fn ack(&self, publish: &Publish) -> Result<()> {
            self.client.ack(publish).await?;
            Ok(())
        }

        /// Waits for the broker to end the connection; returns rumqttc's error
        /// (a server DISCONNECT is `MqttState(ServerDisconnect { .. })`).
        pub async fn closed(&mut self, within: Duration) -> Result<ConnectionError> {
            self.events.closed(within).await
        }

        /// Normal DISCONNECT (reason 0): waits until it was written, then
        /// drops the socket.
        pub async fn disconnect(mut self) -> Result<()> {
            self.client.disconnect().await?;
            self.events.wait(WAIT, "DISCONNECT to go out", |e| matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())).await?;
            self.task.abort();
            let _ = (&mut self.task).await;
            Ok(())
        }

        /// Drops the connection without DISCONNECT, as a crashed device would.
        pub async fn kill(mut self) {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn pick_publish(e: &Event) -> Option<Publish> {
        match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// The reason code of a server DISCONNECT that ended a connection.
    pub fn server_disconnect_reason(error: &ConnectionError) -> Option<DisconnectReasonCode> {
        match error {
            ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => Some(*reason_code),
            _ => None,
        }
    }

    pub fn topic_of(p: &Publish) -> String {
        String::from_utf8_lossy(&p.topic).into_owned()
    }

    pub fn props_of(p: &Publish) -> PublishProperties {
        p.properties.clone().unwrap_or(PublishProperties {
            payload_format_indicator: None,
            message_expiry_interval: None,
            topic_alias: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            subscription_identifiers: Vec::new(),
            content_type: None,
        })
    }

    pub fn empty_props() -> PublishProperties {
        PublishProperties {
            payload_format_indicator: None,
            message_expiry_interval: None,
            topic_alias: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            subscription_identifiers: Vec::new(),
            content_type: None,
        }
    }
}

// ---------------------------------------------------------------------------
// MQTT 3.1.1 client.
// ---------------------------------------------------------------------------

pub mod v311 {
    #[allow(unused_imports)] // re-exports for the test files; each uses a part
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
        SubscribeReasonCode,
    };

    use super::*;

    /// Options every v3.1.1 test client starts from: a 60 s keep-alive and
    /// room for 64 KiB packets both ways.
    pub fn options(broker: &TestBroker, client_id: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(broker.client_id(client_id), broker.host(), broker.port());
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_max_packet_size(64 * 1024, 64 * 1024);
        opts
    }

    /// A connected rumqttc v3.1.1 client whose event loop runs on its own task.
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        events: Events<Event, ConnectionError>,
        task: JoinHandle<()>,
    }

    impl Client {
        pub async fn connect(opts: MqttOptions) -> Result<Client> {
            let id = opts.client_id();
            let (client, mut eventloop) = AsyncClient::new(opts, 64);
            let connack = match tokio::time::timeout(WAIT, eventloop.poll()).await {
                Err(_) => bail!("{id}: no CONNACK within {WAIT:?}"),
                Ok(Err(e)) => bail!("{id}: connect failed: {e:?}"),
                Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => connack,
                Ok(Ok(other)) => bail!("{id}: expected CONNACK, got {other:?}"),
            };
            let (tx, rx) = unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(event) => {
                            if tx.send(Item::Event(event)).is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            let _ = tx.send(Item::Closed(error));
                            return;
                        }
                    }
                }
            });
            Ok(Client { client, connack, events: Events { rx, buffered: VecDeque::new(), closed: None }, task })
        }

        pub async fn connect_refused(opts: MqttOptions) -> Result<ConnectReturnCode> {
            let id = opts.client_id();
            let (_client, mut eventloop) = AsyncClient::new(opts, 8);
            match tokio::time::timeout(WAIT, eventloop.poll()).await {
                Err(_) => bail!("{id}: no answer to CONNECT within {WAIT:?}"),
                Ok(Err(ConnectionError::ConnectionRefused(code))) => Ok(code),
                Ok(Err(e)) => bail!("{id}: expected a CONNACK refusing the connection, got error {e:?}"),
                Ok(Ok(event)) => bail!("{id}: expected a CONNACK refusing the connection, got {event:?}"),
            }
        }

        /// Subscribes and checks the broker granted `qos`.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
            self.client.subscribe(filter, qos).await?;
            let codes = self
                .events
                .wait(WAIT, &format!("SUBACK for {filter}"), |e| match e {
                    Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes.clone()),
                    _ => None,
                })
                .await?;
            ensure!(codes == [SubscribeReasonCode::Success(qos)], "SUBACK for {filter}: expected [Success({qos:?})], got {codes:?}");
            Ok(())
        }

        pub async fn unsubscribe(&mut self, filter: &str) -> Result<()> {
            self.client.unsubscribe(filter).await?;
            self.events
                .wait(WAIT, &format!("UNSUBACK for {filter}"), |e| matches!(e, Event::Incoming(Packet::UnsubAck(_))).then_some(()))
                .await
        }

        /// Publishes and, for QoS 1/2, waits for the broker's PUBACK/PUBCOMP.
        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) -> Result<()> {
            self.publish_nowait(topic, qos, retain, payload).await?;
            self.wait_published(qos).await
        }

        pub async fn publish_nowait(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) -> Result<()> {
            self.client.publish(topic, qos, retain, payload.into()).await?;
            Ok(())
        }

        pub async fn wait_published(&mut self, qos: QoS) -> Result<()> {
            let pkid = self
                .events
                .wait(WAIT, "the PUBLISH to go out", |e| match e {
                    Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                    _ => None,
                })
                .await?;
            match qos {
                QoS::AtMostOnce => Ok(()),
                QoS::AtLeastOnce => {
                    self.events
                        .wait(WAIT, &format!("PUBACK {pkid}"), |e| match e {
                            Event::Incoming(Packet::PubAck(ack)) if ack.pkid == pkid => Some(()),
                            _ => None,
                        })
                        .await
                }
                QoS::ExactlyOnce => {
                    self.events
                        .wait(WAIT, &format!("PUBCOMP {pkid}"), |e| match e {
                            Event::Incoming(Packet::PubComp(comp)) if comp.pkid == pkid => Some(()),
                            _ => None,
                        })
                        .await
                }
            }
        }

        pub async fn recv(&mut self) -> Result<Publish> {
            self.recv_within(WAIT).await
        }

        pub async fn recv_within(&mut self, within: Duration) -> Result<Publish> {
            self.events.wait(within, "a PUBLISH from the broker", pick_publish).await
        }

        pub async fn expect_no_publish(&mut self, within: Duration) -> Result<()> {
            match self.events.maybe(within, pick_publish).await {
                None => Ok(()),
                Some(p) => bail!("unexpected PUBLISH on {} (payload {:?})", p.topic, String::from_utf8_lossy(&p.payload)),
            }
        }

        pub async fn closed(&mut self, within: Duration) -> Result<ConnectionError> {
            self.events.closed(within).await
        }

        pub async fn disconnect(mut self) -> Result<()> {
            self.client.disconnect().await?;
            self.events.wait(WAIT, "DISCONNECT to go out", |e| matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())).await?;
            self.task.abort();
            let _ = (&mut self.task).await;
            Ok(())
        }

        pub async fn kill(mut self) {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn pick_publish(e: &Event) -> Option<Publish> {
        match e {
            Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Raw socket client: bytes laid out by hand, independent of any codec.
// ---------------------------------------------------------------------------

pub mod raw {
    use super::*;

    pub const CONNACK: u8 = 0x20;
    pub const PUBLISH: u8 = 0x30;
    pub const PUBREC: u8 = 0x50;
    pub const PUBREL: u8 = 0x62;
    pub const PUBCOMP: u8 = 0x70;
    pub const DISCONNECT: u8 = 0xE0;

    /// What a read from the broker produced.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Read {
        /// First byte of the fixed header, and the body after the remaining length.
        Packet(u8, Vec<u8>),
        /// The broker closed the connection (EOF or reset).
        Closed,
    }

    pub struct Will<'a> {
        pub topic: &'a str,
        pub payload: &'a [u8],
        pub qos: u8,
    }

    pub struct RawClient {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl RawClient {
        pub async fn connect(broker: &TestBroker) -> Result<RawClient> {
            let stream = tokio::time::timeout(WAIT, TcpStream::connect(broker.addr())).await.context("TCP connect timed out")??;
            stream.set_nodelay(true)?;
            Ok(RawClient { stream, buf: Vec::new() })
        }

        pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await?;
            Ok(())
        }

        /// The next packet, or `Closed`; an error if neither within `within`.
        pub async fn read(&mut self, within: Duration) -> Result<Read> {
            let deadline = Instant::now() + within;
            loop {
                if let Some((header, body, used)) = parse_packet(&self.buf)? {
                    self.buf.drain(..used);
                    return Ok(Read::Packet(header, body));
                }
                let mut chunk = [0u8; 4096];
                match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                    Err(_) => bail!("nothing from the broker within {within:?}"),
                    Ok(Ok(0)) => return Ok(Read::Closed),
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    Ok(Err(e)) if is_reset(&e) => return Ok(Read::Closed),
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
        }

        /// Sends CONNECT and checks for a successful CONNACK.
        pub async fn handshake(&mut self, connect: &[u8]) -> Result<()> {
            self.send(connect).await?;
            match self.read(WAIT).await? {
                Read::Packet(CONNACK, body) => {
                    ensure!(body.len() >= 2, "short CONNACK {body:?}");
                    ensure!(body[1] == 0, "CONNACK refused the connection with code {:#04x}", body[1]);
                    Ok(())
                }
                other => bail!("expected CONNACK, got {other:?}"),
            }
        }

        /// Fails unless the broker closes within `within`; packets before
        /// the close are returned.
        pub async fn until_closed(&mut self, within: Duration) -> Result<Vec<(u8, Vec<u8>)>> {
            let deadline = Instant::now() + within;
            let mut packets = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.read(left).await.with_context(|| format!("connection still open; packets received before: {packets:?}"))? {
                    Read::Closed => return Ok(packets),
                    Read::Packet(header, body) => packets.push((header, body)),
                }
            }
        }
    }

    fn is_reset(e: &std::io::Error) -> bool {
        matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe)
    }

    /// (first byte, body, bytes used) of the packet at the front of `buf`.
    fn parse_packet(buf: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>> {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut len: usize = 0;
        for i in 0..4 {
            let Some(&byte) = buf.get(1 + i) else { return Ok(None) };
            len |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                let start = 2 + i;
                if buf.len() < start + len {
                    return Ok(None);
                }
                return Ok(Some((buf[0], buf[start..start + len].to_vec(), start + len)));
            }
        }
        Err(anyhow!("broker sent a remaining length longer than 4 bytes"))
    }

    pub fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                return;
            }
        }
    }

    pub fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// A whole packet: `first` byte, remaining length, `body`.
    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        remaining_length(body.len(), &mut out);
        out.extend_from_slice(body);
        out
    }

    /// CONNECT for protocol level 4 (3.1.1) or 5, clean start, no properties.
    pub fn connect(level: u8, client_id: &str, keep_alive: u16, will: Option<Will<'_>>) -> Vec<u8> {
        connect_with(level, client_id, keep_alive, true, will)
    }

    /// CONNECT for protocol level 4 (3.1.1) or 5, no properties.
    pub fn connect_with(level: u8, client_id: &str, keep_alive: u16, clean: bool, will: Option<Will<'_>>) -> Vec<u8> {
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(level);
        let mut flags = if clean { 0x02 } else { 0 }; // clean session / clean start
        if let Some(will) = &will {
            flags |= 0x04 | (will.qos << 3);
        }
        body.push(flags);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if level == 5 {
            body.push(0); // no CONNECT properties
        }
        string(client_id.as_bytes(), &mut body);
        if let Some(will) = will {
            if level == 5 {
                body.push(0); // no will properties
            }
            string(will.topic.as_bytes(), &mut body);
            string(will.payload, &mut body);
        }
        packet(0x10, &body)
    }

    /// An MQTT 5 PUBLISH with `props` (property bytes, without their length)
    /// and, for QoS 1/2, packet id 1.
    pub fn publish_props(first: u8, topic: &str, props: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        if first & 0x06 != 0 {
            body.extend_from_slice(&1u16.to_be_bytes());
        }
        remaining_length(props.len(), &mut body);
        body.extend_from_slice(props);
        body.extend_from_slice(payload);
        packet(first, &body)
    }

    /// A PUBLISH without properties. `first` is the fixed header's first byte
    /// (0x30 QoS 0, 0x32 QoS 1, 0x34 QoS 2, 0x36 the malformed QoS 3, | 0x08 DUP);
    /// with QoS bits set the packet id is 1.
    pub fn publish(level: u8, first: u8, topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        if first & 0x06 != 0 {
            body.extend_from_slice(&1u16.to_be_bytes()); // packet id
        }
        if level == 5 {
            body.push(0); // no properties
        }
        body.extend_from_slice(payload);
        packet(first, &body)
    }
}
