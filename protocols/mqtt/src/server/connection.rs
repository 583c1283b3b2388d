//! One MQTT connection: CONNECT and session set-up, then a loop that reads
//! packets, delivers what the session's queues hand out, and answers
//! publishes once the core has stored them.
//!
//! Deliveries come from pump tasks, one per queue the session consumes (its
//! own queue and one per shared subscription). A pump pops only while the
//! connection has room in its outbound window (the client's Receive Maximum,
//! capped), so an unacknowledged backlog stays in the store, not in memory.
//!
//! Under the store's memory alarm a connection that has published is not
//! read until the alarm clears: its further PUBLISH packets wait in the
//! socket, so their PUBACK/PUBREC are withheld and a v5 client stops at its
//! Receive Maximum (TCP back-pressure for v3). Deliveries go on, so
//! subscribers keep draining. Keep-alive is not enforced while blocked (the
//! client's PINGREQs wait in the socket too), as RabbitMQ pauses AMQP
//! heartbeats of a blocked connection.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use polymq::queue::{NackAction, QueueId, QueueOptions, Receipt};
use polymq::server::ShutdownSignal;
use polymq::store::Delivery;
use polymq::StoreError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::message::{self, Stored};
use super::session::{ClaimResult, Kick, SessionState};
use super::subs::{
    filter_matches, filter_pattern, options_pattern, parse_options_pattern, queue_name, SubOpts, OPTIONS_SPACE, SESSION_PREFIX,
    SHARED_PREFIX, TRANSIENT_PREFIX,
};
use super::MqttService;
use crate::limits::{
    CONNECT_TIMEOUT, DELIVERIES_PER_TURN, DELIVERY_INVISIBLE, OUTBOUND_WINDOW_MAX, OUT_CHUNK, OUT_KEEP_MAX, POP_BATCH_MAX, POP_WAIT_MAX,
    POP_WAIT_MIN, READ_CHUNK, TAKEOVER_WAIT, WRITE_STALL_MAX,
};
use crate::{
    decode, encode, encoded_len, split_shared, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, DisconnectProperties, Packet,
    ProtocolVersion, PubReply, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};

// Not an `async fn`: an async fn keeps a second copy of its arguments in its
// future (rust-lang/rust#62958), and this future is what every connection's
// task holds for its whole life.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve(
    svc: Arc<MqttService>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: ShutdownSignal,
) -> impl Future<Output = ()> + Send {
    async move {
        let _ = stream.set_nodelay(true);
        // Boxed: the CONNECT phase (its timer, the CONNECT packet, opening the
        // session) is over once the session runs, and must not size the future
        // every idle connection keeps.
        let Some((mut conn, inbuf)) = Box::pin(accept(svc, &mut stream, peer, &shutdown)).await else { return };
        // From here on the session's claim carries the drain (`Registry::drain`);
        // a drain that began before the claim is seen here.
        let draining = shutdown.is_triggered();
        drop(shutdown);
        let end = conn.run(&stream, inbuf, draining).await;
        Box::pin(conn.close(end, &mut stream)).await;
    }
}

/// Reads CONNECT, authenticates, opens the session. `None`: refused (the
/// refusal is sent) or closed.
async fn accept(
    svc: Arc<MqttService>,
    stream: &mut TcpStream,
    peer: SocketAddr,
    shutdown: &ShutdownSignal,
) -> Option<(Connection, BytesMut)> {
    let mut inbuf = BytesMut::new();
    let max_packet = svc.config.max_packet_bytes as usize;
    let first = tokio::select! {
        first = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(stream, &mut inbuf, max_packet)) => first,
        _ = shutdown.triggered() => return None,
    };
    let connect = match first {
        Ok(Ok(c)) => c,
        Ok(Err(ConnectFailure::Refuse(version, reason))) => {
            debug!(%peer, reason = reason.name(), "CONNECT refused");
            let _ = send_connack_refusal(stream, version, reason).await;
            return None;
        }
        Ok(Err(ConnectFailure::Close(why))) => {
            debug!(%peer, why, "closing before CONNECT");
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT in time");
            return None;
        }
    };
    if inbuf.is_empty() {
        // The usual case: nothing after CONNECT yet; do not keep its buffer.
        inbuf = BytesMut::new();
    }
    let version = connect.version;
    if let Err(reason) = authenticate(&svc, &connect) {
        let _ = send_connack_refusal(stream, version, reason).await;
        return None;
    }
    match Connection::open(svc, connect).await {
        Ok(c) => {
            debug!(client = %c.client_id(), %peer, "session open");
            Some((c, inbuf))
        }
        Err(reason) => {
            let _ = send_connack_refusal(stream, version, reason).await;
            None
        }
    }
}

enum ConnectFailure {
    /// Answer with a refusing CONNACK in this version, then close.
    Refuse(ProtocolVersion, ReasonCode),
    /// Not MQTT, or nothing sensible to answer: just close.
    Close(&'static str),
}

async fn read_connect(stream: &TcpStream, inbuf: &mut BytesMut, max_packet: usize) -> Result<Connect, ConnectFailure> {
    loop {
        match decode(inbuf, None, max_packet) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(_)) => return Err(ConnectFailure::Close("first packet is not CONNECT")),
            Ok(None) => {}
            Err(DecodeError::UnsupportedProtocolVersion { level }) => {
                // Answer in a version the client can read: v3.1.1's CONNACK
                // return code 1 is what every pre-5 client understands.
                let version = if level >= 5 { ProtocolVersion::V5 } else { ProtocolVersion::V3_1_1 };
                return Err(ConnectFailure::Refuse(version, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION));
            }
            Err(e) => {
                debug!(error = %e, "malformed CONNECT");
                return Err(ConnectFailure::Close("malformed CONNECT"));
            }
        }
        inbuf.reserve(1024);
        loop {
            if stream.readable().await.is_err() {
                return Err(ConnectFailure::Close("closed before CONNECT"));
            }
            match stream.try_read_buf(inbuf) {
                Ok(0) => return Err(ConnectFailure::Close("closed before CONNECT")),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(ConnectFailure::Close("closed before CONNECT")),
            }
        }
    }
}

/// Writes all of `buf`, waiting for the socket as needed (no deadline: the
/// caller sets one).
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn send_connack_refusal(stream: &mut TcpStream, version: ProtocolVersion, reason: ReasonCode) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    let ack = ConnAck { session_present: false, reason_code: reason, properties: ConnAckProperties::default() };
    if encode(&Packet::ConnAck(ack), version, &mut out).is_ok() {
        tokio::time::timeout(WRITE_STALL_MAX, write_all(stream, &out)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
        let _ = stream.shutdown().await;
    }
    Ok(())
}

fn authenticate(svc: &MqttService, c: &Connect) -> Result<(), ReasonCode> {
    if c.properties.authentication_method.is_some() {
        // Enhanced authentication (AUTH exchanges) is not offered.
        return Err(ReasonCode::BAD_AUTHENTICATION_METHOD);
    }
    match &c.username {
        Some(name) => {
            let given = c.password.as_deref().unwrap_or_default();
            match svc.config.users.get(name) {
                Some(password) if password.as_bytes() == given => Ok(()),
                _ => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
            }
        }
        None if svc.config.allow_anonymous => Ok(()),
        None => Err(ReasonCode::NOT_AUTHORIZED),
    }
}

/// What handling one buffered packet left to do.
enum Handled<'a> {
    /// No whole packet in the buffer.
    Drained,
    Done,
    /// A packet that waits on the store: run this.
    Wait(Pin<Box<dyn Future<Output = Result<(), End>> + Send + 'a>>),
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT 0x00: the will is discarded.
    Normal,
    /// DISCONNECT 0x04 (v5): publish the will anyway.
    NormalWithWill,
    /// The peer closed or the socket failed.
    Lost,
    /// We close because of what the client sent (v5: DISCONNECT with this reason).
    ProtocolError(ReasonCode),
    KeepAliveTimeout,
    TakenOver,
    Shutdown,
    /// The store failed under us.
    ServerError,
}

/// Where a delivery came from.
#[derive(Debug, Clone)]
enum Source {
    Own,
    /// A shared subscription, by its full filter (`$share/g/f`).
    Shared(Arc<str>),
}

/// Small on purpose: an unbounded channel allocates its first block of 32
/// slots up front, per connection.
enum PumpEvent {
    /// One pop's worth, in queue order.
    Deliveries(Box<(Source, Vec<Delivery>)>),
    Failed(Box<StoreError>),
}

struct Pump {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// An outbound QoS 1/2 publish awaiting PUBACK or PUBREC.
struct Outbound {
    /// `None` for a retained message sent at subscribe (not from a queue).
    receipt: Option<Receipt>,
    /// Whether it holds a permit of the window.
    permit: bool,
}

type StoreWait = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + Sync>>;

/// An inbound QoS 1/2 publish whose PUBACK/PUBREC waits for the store.
struct PendingReply {
    packet_id: u16,
    qos: QoS,
    /// `None`: nothing to wait for (no subscriber matched).
    wait: Option<StoreWait>,
    no_subscribers: bool,
}

/// The outbound side of a connection that receives messages: created with
/// its first pump or QoS 1/2 delivery, so an idle or publish-only client does
/// not carry it (nor its window semaphore).
struct Outbox {
    window: Arc<Semaphore>,
    inflight: HashMap<u16, Outbound>,
    /// Outbound QoS 2 in the PUBREL stage that hold no window slot.
    pubrel_without_permit: HashSet<u16>,
    next_packet_id: u16,
    to_ack: Vec<Receipt>,
    pumps: HashMap<Option<Arc<str>>, Pump>,
    /// Created with the first pump: a connection that only gets retained
    /// messages never needs it.
    events_tx: Option<mpsc::UnboundedSender<PumpEvent>>,
    events_rx: Option<mpsc::UnboundedReceiver<PumpEvent>>,
}

impl Outbox {
    fn new(window_size: u32) -> Outbox {
        Outbox {
            window: Arc::new(Semaphore::new(window_size as usize)),
            inflight: HashMap::new(),
            pubrel_without_permit: HashSet::new(),
            next_packet_id: 1,
            to_ack: Vec::new(),
            pumps: HashMap::new(),
            events_tx: None,
            events_rx: None,
        }
    }
}

/// The memory alarm's next change: owns its receiver and hands it back.
type AlarmWait = Pin<Box<dyn Future<Output = (watch::Receiver<bool>, Option<bool>)> + Send + Sync>>;

fn alarm_wait(mut rx: watch::Receiver<bool>) -> AlarmWait {
    Box::pin(async move {
        let next = match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => None,
        };
        (rx, next)
    })
}

/// Per-connection state. Kept small on purpose: it is most of what an idle
/// connection costs; what only some connections use is boxed and created on
/// first use.
struct Connection {
    svc: Arc<MqttService>,
    id: u64,
    version: ProtocolVersion,
    /// The client id (UTF-8), as stored with the messages it publishes:
    /// one allocation for both uses ([`Connection::client_id`]).
    client_bytes: Bytes,
    assigned_id: bool,
    session_present: bool,
    /// Seconds; 0: the session ends with the connection.
    expiry_secs: u32,
    /// Seconds; 0: none.
    keep_alive: u16,
    will: Option<Box<Will>>,
    claim: Option<super::session::Claim>,
    state: SessionState,
    // Outbound.
    out: BytesMut,
    /// The outbound window (our cap of the client's Receive Maximum).
    window_size: u32,
    client_max_packet: usize,
    outbox: Option<Box<Outbox>>,
    // Inbound.
    aliases: BTreeMap<u16, String>,
    replies: VecDeque<PendingReply>,
    /// The memory alarm's next change, watched from the first publish on: a
    /// subscriber that never publishes is never blocked.
    alarm: Option<AlarmWait>,
    /// Not read because the memory alarm is on.
    blocked: bool,
}

impl Connection {
    /// Claims the client id (taking over a live connection), finds or creates
    /// the session, starts its pumps. On `Err` the caller refuses CONNECT.
    async fn open(svc: Arc<MqttService>, c: Connect) -> Result<Connection, ReasonCode> {
        let id = svc.next_connection_id();
        let version = c.version;
        let mut assigned_id = false;
        let client_id = if c.client_id.is_empty() {
            if !c.clean_start && version != ProtocolVersion::V5 {
                // v3.1.1 3.1.3-8: an empty id requires a clean session.
                return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
            assigned_id = true;
            format!("polymq-{id:016x}")
        } else {
            c.client_id.clone()
        };
        let expiry_secs = match version {
            ProtocolVersion::V5 => c.properties.session_expiry_interval.unwrap_or(0).min(svc.config.session_expiry_max_secs),
            _ if c.clean_start => 0,
            _ => u32::MAX,
        };

        // Claim the id; a live holder is asked to leave and waited for.
        let deadline = Instant::now() + TAKEOVER_WAIT;
        let (claim, parked) = loop {
            match svc.sessions.claim(&client_id, id, Instant::now() >= deadline) {
                ClaimResult::Claimed(claim, parked) => break (claim, parked),
                ClaimResult::Busy(holder) => {
                    let _ = tokio::time::timeout_at(deadline, holder.gone()).await;
                }
            }
        };
        let mut conn = Connection::new(Arc::clone(&svc), id, version, client_id, claim);
        conn.assigned_id = assigned_id;
        conn.expiry_secs = expiry_secs;
        conn.keep_alive = c.keep_alive;
        conn.will = c.will.map(Box::new);
        if let Some(rm) = c.properties.receive_maximum {
            conn.set_window(rm);
        }
        if let Some(max) = c.properties.maximum_packet_size {
            conn.client_max_packet = max as usize;
        }
        match conn.attach_session(parked, c.clean_start).await {
            Ok(()) => Ok(conn),
            Err(e) => {
                warn!(client = %conn.client_id(), error = %e, "cannot set up the session");
                conn.svc.sessions.release(conn.client_id(), id, None);
                Err(ReasonCode::SERVER_UNAVAILABLE)
            }
        }
    }

    fn new(svc: Arc<MqttService>, id: u64, version: ProtocolVersion, client_id: String, claim: super::session::Claim) -> Connection {
        let window_size = u32::from(OUTBOUND_WINDOW_MAX);
        Connection {
            client_bytes: Bytes::from(client_id.into_bytes().into_boxed_slice()),
            svc,
            id,
            version,
            assigned_id: false,
            session_present: false,
            expiry_secs: 0,
            keep_alive: 0,
            will: None,
            claim: Some(claim),
            state: SessionState::new(),
            // Allocated when there is something to send, released after.
            out: BytesMut::new(),
            window_size,
            client_max_packet: crate::VARIABLE_BYTE_INTEGER_MAX as usize + 5,
            outbox: None,
            aliases: BTreeMap::new(),
            replies: VecDeque::new(),
            alarm: None,
            blocked: false,
        }
    }

    fn client_id(&self) -> &str {
        // Made from a `String`: always UTF-8.
        std::str::from_utf8(&self.client_bytes).unwrap_or_default()
    }

    /// 1.5 x keep-alive (spec 3.1.2.10); `None` without keep-alive.
    fn keep_alive_limit(&self) -> Option<Duration> {
        (self.keep_alive != 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    fn set_window(&mut self, client_receive_maximum: u16) {
        let size = client_receive_maximum.clamp(1, OUTBOUND_WINDOW_MAX);
        self.window_size = u32::from(size);
    }

    /// The delivery state, created on first use.
    fn outbox(&mut self) -> &mut Outbox {
        let window_size = self.window_size;
        self.outbox.get_or_insert_with(|| Box::new(Outbox::new(window_size)))
    }

    /// The session's queue; a transient session declares it on first use.
    async fn session_queue(&mut self) -> Result<QueueId, StoreError> {
        if let Some(q) = self.state.queue {
            return Ok(q);
        }
        let name = format!("{TRANSIENT_PREFIX}{}", self.id);
        let q = self.svc.store.declare_queue(&name, QueueOptions::transient()).await?.id;
        self.state.queue = Some(q);
        Ok(q)
    }

    /// Resumes the parked or stored session, or starts a new one.
    async fn attach_session(&mut self, parked: Option<SessionState>, clean_start: bool) -> Result<(), StoreError> {
        let store = Arc::clone(&self.svc.store);
        let durable_name = queue_name(SESSION_PREFIX, self.client_id());
        // A parked session whose queue the core expired is gone.
        let parked = parked.filter(|s| s.queue.is_some_and(|q| store.queue_info(q).is_some()));
        // A session parked in memory is still counted in its shared groups.
        let mut resumed_in_memory = false;
        if clean_start {
            if let Some(old) = parked {
                self.discard_session(old).await?;
            } else if let Some(old) = store.queue_id(&durable_name) {
                store.delete_queue(old).await?;
            }
        } else if let Some(state) = parked {
            self.state = state;
            self.session_present = true;
            resumed_in_memory = true;
        } else if let Some(queue) = store.queue_id(&durable_name) {
            // After a restart: rebuild the subscriptions from the store.
            self.state.queue = Some(queue);
            self.state.persistent = true;
            for (space, pattern) in store.bindings_of(queue) {
                if space == OPTIONS_SPACE {
                    if let Some((filter, opts)) = parse_options_pattern(&pattern) {
                        self.state.subs.insert(filter, opts);
                    }
                }
            }
            self.session_present = true;
        }
        if !self.session_present && self.expiry_secs > 0 {
            let ttl = (self.expiry_secs != u32::MAX).then(|| u64::from(self.expiry_secs) * 1000);
            let opts = QueueOptions { idle_ttl_ms: ttl, ..QueueOptions::default() };
            self.state.queue = Some(store.declare_queue(&durable_name, opts).await?.id);
            self.state.persistent = true;
        }
        // A transient session declares its queue when it first subscribes
        // (`session_queue`): an idle or publish-only clean session has none.
        // A resumed session with expiry 0 now ends with this connection: it is
        // deleted in `close`.
        // Nothing reaches the session's queue before it subscribes, unless it
        // was resumed: a publish-only device runs no pump (a task and a
        // waiter fewer per connection).
        if let (true, Some(q)) = (self.session_present, self.state.queue) {
            self.start_pump(None, q);
        }
        let shared: Vec<String> = self.state.subs.keys().filter(|f| split_shared(f).is_some()).cloned().collect();
        for filter in shared {
            if let Some((group, inner)) = split_shared(&filter) {
                let qname = shared_queue_name(group, inner);
                let q = store.declare_queue(&qname, QueueOptions::default()).await?.id;
                store.bind(&self.svc.config.mapping.topic_space, &filter_pattern(inner), q).await?;
                if !resumed_in_memory {
                    *self.svc.groups().entry(qname).or_default() += 1;
                }
                self.start_pump(Some(Arc::from(filter.as_str())), q);
            }
        }
        // Receive Maximum counts PUBREL-pending messages too.
        for _ in 0..self.state.outbound_pubrel.len() {
            if let Ok(p) = self.outbox().window.try_acquire() {
                p.forget();
            }
        }
        Ok(())
    }

    /// Deletes a session's queue and its shared-subscription memberships.
    async fn discard_session(&mut self, old: SessionState) -> Result<(), StoreError> {
        for filter in old.subs.keys() {
            if let Some((group, inner)) = split_shared(filter) {
                self.leave_group(group, inner).await;
            }
        }
        if let Some(q) = old.queue.filter(|&q| self.svc.store.queue_info(q).is_some()) {
            self.svc.store.delete_queue(q).await?;
        }
        Ok(())
    }

    async fn leave_group(&self, group: &str, inner: &str) {
        let qname = shared_queue_name(group, inner);
        let last = {
            let mut groups = self.svc.groups();
            match groups.get_mut(&qname) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    groups.remove(&qname);
                    true
                }
                None => false,
            }
        };
        if last {
            if let Some(q) = self.svc.store.queue_id(&qname) {
                if let Err(e) = self.svc.store.delete_queue(q).await {
                    warn!(queue = %qname, error = %e, "deleting a shared subscription queue");
                }
            }
        }
    }

    fn events_sender(&mut self) -> mpsc::UnboundedSender<PumpEvent> {
        let outbox = self.outbox();
        if let Some(tx) = &outbox.events_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        outbox.events_rx = Some(rx);
        outbox.events_tx = Some(tx.clone());
        tx
    }

    fn start_pump(&mut self, key: Option<Arc<str>>, queue: QueueId) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let source = match &key {
            None => Source::Own,
            Some(f) => Source::Shared(Arc::clone(f)),
        };
        let ttl = self.svc.store.queue_info(queue).and_then(|i| i.options.idle_ttl_ms);
        let wait = ttl.map_or(POP_WAIT_MAX, |t| (Duration::from_millis(t) / 3).clamp(POP_WAIT_MIN, POP_WAIT_MAX));
        let events = self.events_sender();
        let window = Arc::clone(&self.outbox().window);
        let task = tokio::spawn(pump(Arc::clone(&self.svc.store), queue, source, window, events, stop_rx, wait));
        if let Some(old) = self.outbox().pumps.insert(key, Pump { stop: stop_tx, task }) {
            let _ = old.stop.send(true);
        }
    }

    /// The session loop. What it keeps across its wait is what every idle
    /// connection costs: the wait for its claim's kick (take-over or drain)
    /// and the keep-alive timer; everything else it awaits (handling a packet, a slow flush) is
    /// boxed for the time it runs.
    // Not an `async fn`, for the reason given at `serve`.
    #[allow(clippy::manual_async_fn)]
    fn run<'a>(&'a mut self, stream: &'a TcpStream, mut inbuf: BytesMut, draining: bool) -> impl Future<Output = End> + Send + 'a {
        async move {
            self.send_connack();
            let handover = self.claim.as_ref().map(|c| Arc::clone(&c.handover)).unwrap_or_default();
            let max_packet = self.svc.config.max_packet_bytes as usize;
            let receive_max = usize::from(self.svc.config.receive_maximum);
            // Keep-alive is enforced by the registry's sweep (`expire_idle`),
            // which kicks the connection: no timer here.
            handover.set_keep_alive(self.keep_alive_limit());
            handover.received(self.svc.sessions.now_ms());
            // Packets that came in the same read as CONNECT (a client may send
            // SUBSCRIBE right behind it) are buffered already: the socket will not
            // turn readable for them, so handle them before waiting on it.
            if let Err(end) = self.handle_buffered(&mut inbuf, max_packet).await {
                return end;
            }
            loop {
                if let Err(end) = self.flush(stream).await {
                    return end;
                }
                if draining {
                    return End::Shutdown;
                }
                let can_read = self.replies.len() < receive_max && !self.blocked;
                tokio::select! {
                    biased;
                    why = std::future::poll_fn(|cx| handover.poll_kicked(cx)) => {
                        return match why {
                            Kick::Drain => End::Shutdown,
                            Kick::TakenOver => End::TakenOver,
                            Kick::KeepAlive => End::KeepAliveTimeout,
                        };
                    }
                    done = poll_replies(&mut self.replies), if !self.replies.is_empty() => {
                        for (reply, result) in done {
                            if let Err(end) = self.answer_publish(reply, result) {
                                return end;
                            }
                        }
                    }
                    // Wait for readiness, then read: an idle connection holds no
                    // read buffer while it waits.
                    ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)), if can_read => {
                        if ready.is_err() {
                            return End::Lost;
                        }
                        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
                            inbuf.reserve(READ_CHUNK);
                        }
                        match stream.try_read_buf(&mut inbuf) {
                            Ok(0) => return End::Lost,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                // Readiness was stale (it is, right after the
                                // CONNECT was read): do not keep the buffer
                                // reserved for a read that did not happen.
                                if inbuf.is_empty() {
                                    inbuf = BytesMut::new();
                                }
                                continue;
                            }
                            Err(_) => return End::Lost,
                        }
                        handover.received(self.svc.sessions.now_ms());
                        if let Err(end) = self.handle_buffered(&mut inbuf, max_packet).await {
                            return end;
                        }
                        if inbuf.is_empty() {
                            inbuf = BytesMut::new();
                        }
                    }
                    event = std::future::poll_fn(|cx| poll_event(&mut self.outbox, cx)) => {
                        let mut next = event;
                        let mut handled = 0;
                        while let Some(ev) = next.take() {
                            if let Err(end) = self.on_event(ev) {
                                return end;
                            }
                            handled += 1;
                            if handled < DELIVERIES_PER_TURN {
                                next = self.outbox.as_mut().and_then(|o| o.events_rx.as_mut()).and_then(|rx| rx.try_recv().ok());
                            }
                        }
                    }
                    (rx, changed) = std::future::poll_fn(|cx| poll_alarm(&mut self.alarm, cx)) => match changed {
                        None => {
                            self.blocked = false;
                            handover.pause_keep_alive(false);
                        }
                        Some(on) => {
                            self.alarm = Some(alarm_wait(rx));
                            if on {
                                self.block();
                            } else if self.blocked {
                                self.blocked = false;
                                // Nothing was read while blocked: keep-alive starts afresh.
                                handover.received(self.svc.sessions.now_ms());
                                handover.pause_keep_alive(false);
                                debug!(client = %self.client_id(), "memory alarm cleared: reading again");
                            }
                        }
                    },
                }
                self.ack_delivered();
            }
        }
    }

    /// CONNACK, then the PUBRELs still owed from the last connection.
    fn send_connack(&mut self) {
        let mut props = ConnAckProperties::default();
        if self.version.is_v5() {
            let cfg = &self.svc.config;
            props.receive_maximum = Some(cfg.receive_maximum);
            props.maximum_packet_size = Some(cfg.max_packet_bytes);
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            if self.assigned_id {
                props.assigned_client_identifier = Some(self.client_id().to_owned());
            }
        }
        let ack = ConnAck { session_present: self.session_present, reason_code: ReasonCode::SUCCESS, properties: props };
        self.send(&Packet::ConnAck(ack));
        let owed: Vec<u16> = self.state.outbound_pubrel.iter().copied().collect();
        for pid in owed {
            self.send(&Packet::PubRel(PubReply::success(pid)));
        }
    }

    /// The memory alarm is on and this connection publishes: stop reading it
    /// (packets already read are still handled).
    fn block(&mut self) {
        if !self.blocked {
            self.blocked = true;
            // Keep-alive is not enforced while blocked: the client's
            // PINGREQs wait in the socket too.
            if let Some(claim) = &self.claim {
                claim.handover.pause_keep_alive(true);
            }
            debug!(client = %self.client_id(), "blocked by the memory alarm");
        }
    }

    /// Called for every inbound PUBLISH: from the first one on the
    /// connection watches the memory alarm, and blocks while it is on.
    fn watch_alarm(&mut self) {
        let alarm = self.svc.store.memory_alarm();
        if self.alarm.is_none() {
            let mut rx = alarm.subscribe();
            rx.borrow_and_update();
            self.alarm = Some(alarm_wait(rx));
        }
        if alarm.is_on() {
            self.block();
        }
    }

    /// Decodes and handles every whole packet in `inbuf`.
    async fn handle_buffered(&mut self, inbuf: &mut BytesMut, max_packet: usize) -> Result<(), End> {
        loop {
            // Decoded and dispatched in a sync call, so no packet is part of
            // this future: only the packets that wait on the store get a
            // (boxed) future.
            match self.handle_next(inbuf, max_packet)? {
                Handled::Drained => return Ok(()),
                Handled::Done => {}
                Handled::Wait(work) => work.await?,
            }
        }
    }

    fn handle_next(&mut self, inbuf: &mut BytesMut, max_packet: usize) -> Result<Handled<'_>, End> {
        let packet = match decode(inbuf, Some(self.version), max_packet) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(Handled::Drained),
            Err(e) => {
                debug!(client = %self.client_id(), error = %e, "malformed packet");
                return Err(End::ProtocolError(e.reason_code()));
            }
        };
        Ok(match packet {
            Packet::Publish(p) => Handled::Wait(Box::pin(self.on_publish(p))),
            Packet::Subscribe(s) => Handled::Wait(Box::pin(self.on_subscribe(s))),
            Packet::Unsubscribe(u) => Handled::Wait(Box::pin(self.on_unsubscribe(u))),
            packet => {
                self.handle(packet)?;
                Handled::Done
            }
        })
    }

    fn send(&mut self, packet: &Packet) {
        if self.out.capacity() == 0 {
            // Released after every flush; one allocation per turn covers most.
            self.out.reserve(OUT_CHUNK);
        }
        if let Err(e) = encode(packet, self.version, &mut self.out) {
            warn!(client = %self.client_id(), error = %e, "cannot encode an outbound packet; dropped");
        }
    }

    /// Writes what `send` encoded. The buffer is kept for the next turn only
    /// while turns fill at least half of it (a busy subscriber reuses it);
    /// otherwise, as after a CONNACK, a PINGRESP or the end of a burst, it is
    /// released, so an idle connection holds no write buffer.
    async fn flush(&mut self, stream: &TcpStream) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.out.len();
        // Usually the socket takes it all at once; only a full socket needs
        // the (boxed) wait.
        loop {
            match stream.try_write(&self.out) {
                Ok(n) if n == self.out.len() => break,
                Ok(0) => return Err(End::Lost),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let out = std::mem::take(&mut self.out);
                    match Box::pin(tokio::time::timeout(WRITE_STALL_MAX, write_all(stream, &out))).await {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => return Err(End::Lost),
                        Err(_) => {
                            debug!(client = %self.client_id(), "peer stopped reading");
                            return Err(End::Lost);
                        }
                    }
                }
                Err(_) => return Err(End::Lost),
            }
        }
        self.out.clear();
        let capacity = self.out.capacity();
        if written * 2 < capacity || capacity > OUT_KEEP_MAX {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Acknowledges, in the background, the deliveries that are done with.
    fn ack_delivered(&mut self) {
        let Some(outbox) = self.outbox.as_mut().filter(|o| !o.to_ack.is_empty()) else { return };
        let receipts = std::mem::take(&mut outbox.to_ack);
        let store = Arc::clone(&self.svc.store);
        tokio::spawn(async move {
            if let Err(e) = store.ack_many(&receipts).await {
                debug!(error = %e, "acknowledging deliveries");
            }
        });
    }

    /// Handles a packet that needs no store round trip (`handle_buffered`
    /// does the others).
    fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::PubAck(r) => {
                self.on_delivery_acked(r.packet_id, false);
                Ok(())
            }
            Packet::PubRec(r) => {
                if r.reason_code.is_error() {
                    // The client refused it: done, no PUBREL.
                    self.on_delivery_acked(r.packet_id, false);
                } else if self.on_delivery_acked(r.packet_id, true) || self.state.outbound_pubrel.contains(&r.packet_id) {
                    self.state.outbound_pubrel.insert(r.packet_id);
                    self.send(&Packet::PubRel(PubReply::success(r.packet_id)));
                } else {
                    let mut reply = PubReply::success(r.packet_id);
                    reply.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    self.send(&Packet::PubRel(reply));
                }
                Ok(())
            }
            Packet::PubComp(r) => {
                if self.state.outbound_pubrel.remove(&r.packet_id) {
                    let outbox = self.outbox();
                    if !outbox.pubrel_without_permit.remove(&r.packet_id) {
                        outbox.window.add_permits(1);
                    }
                }
                Ok(())
            }
            Packet::PubRel(r) => {
                let mut reply = PubReply::success(r.packet_id);
                if !self.state.inbound_qos2.remove(&r.packet_id) {
                    reply.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(&Packet::PubComp(reply));
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            Packet::Connect(_) | Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp | Packet::Auth(_) => {
                Err(End::ProtocolError(ReasonCode::PROTOCOL_ERROR))
            }
            // Handled by `handle_buffered`; not reached.
            Packet::Publish(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => Err(End::ProtocolError(ReasonCode::PROTOCOL_ERROR)),
        }
    }

    fn on_disconnect(&mut self, d: Disconnect) -> End {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.expiry_secs == 0 && expiry > 0 {
                // 3.14.2.2.2: cannot turn a session persistent at the end.
                return End::ProtocolError(ReasonCode::PROTOCOL_ERROR);
            }
            self.expiry_secs = expiry.min(self.svc.config.session_expiry_max_secs);
        }
        if d.reason_code == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            End::NormalWithWill
        } else {
            End::Normal
        }
    }

    // ---- inbound publishes ----

    async fn on_publish(&mut self, mut p: Publish) -> Result<(), End> {
        self.watch_alarm();
        let topic = match self.resolve_alias(&mut p) {
            Ok(t) => t,
            Err(reason) => return Err(End::ProtocolError(reason)),
        };
        if p.qos == QoS::ExactlyOnce {
            if let Some(pid) = p.packet_id {
                if self.state.inbound_qos2.contains(&pid) {
                    // A resend of one we already stored: answer again, store nothing.
                    self.send(&Packet::PubRec(PubReply::success(pid)));
                    return Ok(());
                }
            }
        }
        // Ours is the Receive Maximum we advertised: QoS 1/2 publishes not yet
        // answered with PUBACK / PUBCOMP (3.3.4, [MQTT-3.3.4-7]). v3 has no
        // such limit; there the loop stops reading instead.
        let unanswered = self.replies.len() + self.state.inbound_qos2.len();
        if p.qos != QoS::AtMostOnce && self.version.is_v5() && unanswered >= usize::from(self.svc.config.receive_maximum) {
            return Err(End::ProtocolError(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
        }
        let store = Arc::clone(&self.svc.store);
        let now = store.now_ms();
        let msg = message::to_core(&topic, p.payload, p.qos, p.retain, &p.properties, &self.client_bytes, now);
        let ticket = match publish_message(&self.svc, &topic, p.retain, msg).await {
            Ok(t) => t,
            Err(e) => {
                warn!(client = %self.client_id(), error = %e, "publish failed");
                return match p.packet_id {
                    Some(pid) if self.version.is_v5() => {
                        self.queue_reply(pid, p.qos, Some(Box::pin(async move { Err(e) })), false);
                        Ok(())
                    }
                    _ => Err(End::ServerError),
                };
            }
        };
        // QoS 0: the ticket is dropped, nothing waits for the store.
        if let Some(pid) = p.packet_id {
            let no_subscribers = ticket.is_none();
            let wait: Option<StoreWait> = ticket.map(|t| Box::pin(async move { t.wait().await.map(drop) }) as StoreWait);
            self.queue_reply(pid, p.qos, wait, no_subscribers);
        }
        Ok(())
    }

    fn queue_reply(&mut self, packet_id: u16, qos: QoS, wait: Option<StoreWait>, no_subscribers: bool) {
        self.replies.push_back(PendingReply { packet_id, qos, wait, no_subscribers });
    }

    fn resolve_alias(&mut self, p: &mut Publish) -> Result<String, ReasonCode> {
        let Some(alias) = p.properties.topic_alias.take() else {
            return Ok(std::mem::take(&mut p.topic));
        };
        if alias == 0 || alias > self.svc.config.topic_alias_maximum {
            return Err(ReasonCode::TOPIC_ALIAS_INVALID);
        }
        if p.topic.is_empty() {
            self.aliases.get(&alias).cloned().ok_or(ReasonCode::PROTOCOL_ERROR)
        } else {
            self.aliases.insert(alias, p.topic.clone());
            Ok(std::mem::take(&mut p.topic))
        }
    }

    /// PUBACK / PUBREC once the store has the message.
    fn answer_publish(&mut self, reply: PendingReply, result: Result<(), StoreError>) -> Result<(), End> {
        let mut ack = PubReply::success(reply.packet_id);
        match result {
            Ok(()) if reply.no_subscribers => ack.reason_code = ReasonCode::NO_MATCHING_SUBSCRIBERS,
            Ok(()) => {}
            Err(e) if self.version.is_v5() => {
                debug!(client = %self.client_id(), error = %e, "publish not stored");
                ack.reason_code = match e {
                    StoreError::MemoryLimit(_) | StoreError::NoSpace => ReasonCode::QUOTA_EXCEEDED,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                };
            }
            // v3 has no negative acknowledgement: closing is the only signal.
            Err(_) => return Err(End::ServerError),
        }
        if reply.qos == QoS::ExactlyOnce {
            if !ack.reason_code.is_error() {
                self.state.inbound_qos2.insert(reply.packet_id);
            }
            self.send(&Packet::PubRec(ack));
        } else {
            self.send(&Packet::PubAck(ack));
        }
        Ok(())
    }

    // ---- subscriptions ----

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let store = Arc::clone(&self.svc.store);
        let mut codes = Vec::with_capacity(s.subscriptions.len());
        let mut retained_to_send = Vec::new();
        for sub in &s.subscriptions {
            let opts = SubOpts { options: sub.options, identifier: s.properties.subscription_identifier };
            let existed = self.state.subs.contains_key(&sub.filter);
            let result = self.subscribe_one(&sub.filter, opts).await;
            match result {
                Ok(()) => {
                    codes.push(match sub.options.qos {
                        QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
                        QoS::AtLeastOnce => ReasonCode::GRANTED_QOS_1,
                        QoS::ExactlyOnce => ReasonCode::GRANTED_QOS_2,
                    });
                    let send_retained = match sub.options.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendAtSubscribeIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent to shared subscriptions (4.8.2).
                    if send_retained && split_shared(&sub.filter).is_none() {
                        retained_to_send.push((sub.filter.clone(), opts));
                    }
                }
                Err(e) => {
                    warn!(client = %self.client_id(), filter = %sub.filter, error = %e, "subscribe failed");
                    codes.push(ReasonCode::UNSPECIFIED_ERROR);
                }
            }
        }
        self.send(&Packet::SubAck(SubAck { packet_id: s.packet_id, reason_codes: codes, properties: Default::default() }));
        let now = store.now_ms();
        for (filter, opts) in retained_to_send {
            for msg in self.svc.retained.matching(&filter).await {
                let Some(stored) = Stored::from_core(&msg) else { continue };
                if stored.remaining_secs(now) == Some(0) {
                    continue;
                }
                let qos = stored.qos.min(opts.options.qos);
                let mut p = stored.to_publish(qos, true, now);
                p.properties.subscription_identifiers.extend(opts.identifier);
                self.send_publish(p, None);
            }
        }
        Ok(())
    }

    async fn subscribe_one(&mut self, filter: &str, opts: SubOpts) -> Result<(), StoreError> {
        let store = Arc::clone(&self.svc.store);
        let queue = self.session_queue().await?;
        let old = self.state.subs.insert(filter.to_owned(), opts);
        if self.state.persistent {
            if let Some(old) = old.filter(|o| *o != opts) {
                store.unbind(OPTIONS_SPACE, &options_pattern(filter, &old), queue).await?;
            }
            store.bind(OPTIONS_SPACE, &options_pattern(filter, &opts), queue).await?;
        }
        match split_shared(filter) {
            None => {
                store.bind(&self.svc.config.mapping.topic_space, &filter_pattern(filter), queue).await?;
                if !self.outbox.as_ref().is_some_and(|o| o.pumps.contains_key(&None)) {
                    self.start_pump(None, queue);
                }
            }
            Some((group, inner)) => {
                if old.is_none() {
                    let qname = shared_queue_name(group, inner);
                    let q = store.declare_queue(&qname, QueueOptions::default()).await?.id;
                    store.bind(&self.svc.config.mapping.topic_space, &filter_pattern(inner), q).await?;
                    *self.svc.groups().entry(qname).or_default() += 1;
                    self.start_pump(Some(Arc::from(filter)), q);
                }
            }
        }
        Ok(())
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), End> {
        let store = Arc::clone(&self.svc.store);
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let Some(opts) = self.state.subs.remove(filter) else {
                codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
                continue;
            };
            let result: Result<(), StoreError> = async {
                // A subscription existed, so the session's queue does.
                let queue = self.session_queue().await?;
                if self.state.persistent {
                    store.unbind(OPTIONS_SPACE, &options_pattern(filter, &opts), queue).await?;
                }
                match split_shared(filter) {
                    None => {
                        store.unbind(&self.svc.config.mapping.topic_space, &filter_pattern(filter), queue).await?;
                    }
                    Some((group, inner)) => {
                        let key = Some(Arc::from(filter.as_str()));
                        if let Some(pump) = self.outbox.as_mut().and_then(|o| o.pumps.remove(&key)) {
                            let _ = pump.stop.send(true);
                        }
                        self.leave_group(group, inner).await;
                    }
                }
                Ok(())
            }
            .await;
            codes.push(match result {
                Ok(()) => ReasonCode::SUCCESS,
                Err(e) => {
                    warn!(client = %self.client_id(), filter = %filter, error = %e, "unsubscribe failed");
                    ReasonCode::UNSPECIFIED_ERROR
                }
            });
        }
        self.send(&Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, reason_codes: codes, properties: Default::default() }));
        Ok(())
    }

    // ---- outbound deliveries ----

    fn on_event(&mut self, ev: PumpEvent) -> Result<(), End> {
        match ev {
            PumpEvent::Failed(e) => {
                warn!(client = %self.client_id(), error = %e, "delivery failed");
                Err(End::ServerError)
            }
            PumpEvent::Deliveries(batch) => {
                let (source, ds) = *batch;
                for d in ds {
                    self.deliver(source.clone(), d);
                }
                Ok(())
            }
        }
    }

    /// Sends one popped message, or acknowledges it at once if it is not for
    /// this client after all (expired, no matching subscription, no-local,
    /// too large for the client).
    fn deliver(&mut self, source: Source, d: Delivery) {
        let now = self.svc.store.now_ms();
        let Some(stored) = Stored::from_core(&d.message).filter(|s| s.remaining_secs(now) != Some(0)) else {
            return self.skip(d.receipt);
        };
        let mut granted: Option<QoS> = None;
        let mut retain_as_published = false;
        let mut ids = Vec::new();
        let mine = stored.client.as_deref() == Some(&self.client_bytes[..]);
        match &source {
            Source::Own => {
                for (filter, opts) in &self.state.subs {
                    if split_shared(filter).is_some() || !filter_matches(filter, &stored.topic) {
                        continue;
                    }
                    if opts.options.no_local && mine {
                        continue;
                    }
                    granted = granted.max(Some(opts.options.qos));
                    retain_as_published |= opts.options.retain_as_published;
                    ids.extend(opts.identifier);
                }
            }
            Source::Shared(filter) => {
                if let Some(opts) = self.state.subs.get(&**filter) {
                    granted = Some(opts.options.qos);
                    retain_as_published = opts.options.retain_as_published;
                    ids.extend(opts.identifier);
                }
            }
        }
        let Some(granted) = granted else {
            return self.skip(d.receipt);
        };
        let qos = stored.qos.min(granted);
        let mut p = stored.to_publish(qos, retain_as_published && stored.retain, now);
        p.properties.subscription_identifiers = ids;
        p.dup = qos != QoS::AtMostOnce && d.deliveries > 1;
        self.send_publish(p, Some(d.receipt));
    }

    fn skip(&mut self, receipt: Receipt) {
        let outbox = self.outbox();
        outbox.to_ack.push(receipt);
        outbox.window.add_permits(1);
    }

    /// Encodes a PUBLISH. `receipt`: the delivery it carries (`None` for a
    /// retained message at subscribe, which holds no permit).
    fn send_publish(&mut self, mut p: Publish, receipt: Option<Receipt>) {
        // A queue delivery already holds its slot; a retained one takes a
        // free slot if there is one (it is sent either way).
        let mut permit = receipt.is_some();
        if p.qos != QoS::AtMostOnce && !permit {
            if let Ok(slot) = self.outbox().window.try_acquire() {
                slot.forget();
                permit = true;
            }
        }
        if p.qos != QoS::AtMostOnce {
            let Some(pid) = self.allocate_packet_id() else {
                // 65535 in flight cannot happen with the window capped; be safe.
                if let Some(r) = receipt {
                    self.nack_later(r);
                    self.outbox().window.add_permits(1);
                }
                return;
            };
            p.packet_id = Some(pid);
        }
        let packet = Packet::Publish(p);
        if encoded_len(&packet, self.version) > self.client_max_packet {
            // 3.1.2.25: a packet too large for the client is discarded.
            if let Some(r) = receipt {
                self.skip(r);
            }
            return;
        }
        let Packet::Publish(p) = packet else { return };
        if let Some(pid) = p.packet_id {
            self.outbox().inflight.insert(pid, Outbound { receipt, permit });
        } else if let Some(r) = receipt {
            self.skip(r);
        }
        self.send(&Packet::Publish(p));
    }

    fn allocate_packet_id(&mut self) -> Option<u16> {
        let window_size = self.window_size;
        let outbox = self.outbox.get_or_insert_with(|| Box::new(Outbox::new(window_size)));
        for _ in 0..=u16::MAX {
            let pid = outbox.next_packet_id;
            outbox.next_packet_id = outbox.next_packet_id.checked_add(1).unwrap_or(1);
            if !outbox.inflight.contains_key(&pid) && !self.state.outbound_pubrel.contains(&pid) {
                return Some(pid);
            }
        }
        None
    }

    /// PUBACK (or PUBREC): the message is delivered. Returns whether the
    /// packet id was in flight. With `pubrel_pending`, the window slot stays
    /// taken until PUBCOMP.
    fn on_delivery_acked(&mut self, pid: u16, pubrel_pending: bool) -> bool {
        let Some(outbox) = self.outbox.as_mut() else { return false };
        let Some(o) = outbox.inflight.remove(&pid) else { return false };
        if let Some(r) = o.receipt {
            outbox.to_ack.push(r);
        }
        if pubrel_pending {
            // The slot stays taken until PUBCOMP, if it had one.
            if !o.permit {
                outbox.pubrel_without_permit.insert(pid);
            }
        } else if o.permit {
            outbox.window.add_permits(1);
        }
        true
    }

    fn nack_later(&self, receipt: Receipt) {
        let store = Arc::clone(&self.svc.store);
        tokio::spawn(async move {
            let _ = store.nack(receipt, NackAction::Requeue { delay_ms: 0 }).await;
        });
    }

    // ---- the end ----

    async fn close(mut self, end: End, stream: &mut TcpStream) {
        debug!(client = %self.client_id(), ?end, "connection closing");
        if end != End::Lost {
            // Publishes already stored get their answer before we go.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.replies.is_empty() {
                match tokio::time::timeout_at(deadline, poll_replies(&mut self.replies)).await {
                    Ok(done) => {
                        for (reply, result) in done {
                            let _ = self.answer_publish(reply, result);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        if self.version.is_v5() {
            let reason = match end {
                End::ProtocolError(r) => Some(r),
                End::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
                End::TakenOver => Some(ReasonCode::SESSION_TAKEN_OVER),
                End::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
                End::ServerError => Some(ReasonCode::UNSPECIFIED_ERROR),
                End::Normal | End::NormalWithWill | End::Lost => None,
            };
            if let Some(reason_code) = reason {
                self.send(&Packet::Disconnect(Disconnect { reason_code, properties: DisconnectProperties::default() }));
            }
        }
        let _ = self.flush(stream).await;
        let _ = stream.shutdown().await;

        // Stop the pumps, then hand back everything not acknowledged: the
        // messages go to the next connection of this session (with DUP) or,
        // for a shared subscription, to another member.
        let mut unacked: Vec<Receipt> = Vec::new();
        if let Some(outbox) = self.outbox.as_mut() {
            for (_, pump) in outbox.pumps.drain() {
                let _ = pump.stop.send(true);
                let _ = pump.task.await;
            }
            if let Some(rx) = outbox.events_rx.as_mut() {
                rx.close();
            }
            unacked.extend(outbox.inflight.drain().filter_map(|(_, o)| o.receipt));
            while let Some(ev) = outbox.events_rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
                if let PumpEvent::Deliveries(batch) = ev {
                    unacked.extend(batch.1.iter().map(|d| d.receipt));
                }
            }
        }
        self.ack_delivered();
        let store = Arc::clone(&self.svc.store);
        let session_ends = self.expiry_secs == 0;
        for r in unacked {
            // A transient queue is deleted below; requeue only what outlives us.
            if !session_ends || Some(r.queue) != self.state.queue {
                let _ = store.nack(r, NackAction::Requeue { delay_ms: 0 }).await;
            }
        }

        // The will: not after a normal DISCONNECT, not on shutdown.
        let will = match end {
            End::Normal | End::Shutdown => None,
            _ => self.will.take(),
        };
        let will_delay = will.as_ref().map_or(0, |w| {
            let delay = w.properties.will_delay_interval.unwrap_or(0);
            if session_ends {
                0
            } else {
                delay.min(self.expiry_secs)
            }
        });

        let parked = if session_ends {
            let state = std::mem::replace(&mut self.state, SessionState::new());
            if let Err(e) = self.discard_session(state).await {
                warn!(client = %self.client_id(), error = %e, "deleting the session queue");
            }
            None
        } else {
            let state = std::mem::replace(&mut self.state, SessionState::new());
            Some(state)
        };
        if let Some(will) = will {
            if will_delay == 0 {
                // Before the release below, so a taking-over connection that
                // waits for us sees the will already published.
                publish_will(&self.svc, self.client_id(), &self.client_bytes, &will).await;
            } else {
                let svc = Arc::clone(&self.svc);
                let (client_id, client_bytes, connection) = (self.client_id().to_owned(), self.client_bytes.clone(), self.id);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(will_delay))).await;
                    if svc.sessions.will_still_due(&client_id, connection) {
                        publish_will(&svc, &client_id, &client_bytes, &will).await;
                    }
                });
            }
        }
        self.svc.sessions.release(self.client_id(), self.id, parked);
        // Dropping the claim wakes a connection waiting to take over.
        self.claim.take();
    }
}

/// Routes and appends a message (stored once for every matching queue, plus
/// the retained stream when `retain`). `Ok(None)`: nothing matched and
/// nothing was retained, so nothing was stored.
async fn publish_message(
    svc: &Arc<MqttService>,
    topic: &str,
    retain: bool,
    msg: polymq::record::Message,
) -> Result<Option<polymq::store::Ticket>, StoreError> {
    let store = &svc.store;
    let mapping = &svc.config.mapping;
    let levels: Vec<&str> = topic.split('/').collect();
    let mut targets = store.route(&mapping.topic_space, &levels, true);
    // The one address space: the first level names a Kafka topic, which
    // gets the same stored message as one more target.
    if mapping.mqtt_to_streams {
        if let Some(q) = mapping.stream_target(store, &levels, topic).await {
            if !targets.contains(&q) {
                targets.push(q);
            }
        }
    }
    let mut retained_in = None;
    if retain {
        if msg.payload.is_empty() {
            svc.retained.clear(topic).await?;
        } else {
            let id = svc.retained.declare(topic).await?;
            targets.push(id);
            retained_in = Some(id);
        }
    }
    if targets.is_empty() {
        return Ok(None);
    }
    // Into the retained index before the append, so no subscriber can see the
    // message delivered elsewhere while the index does not know the topic yet
    // (the thread could be preempted between the two). A subscribe that then
    // finds the offset assigned but not yet applied waits for it
    // (`Retained::matching`); one that finds no offset yet simply comes first.
    if let Some(id) = retained_in {
        svc.retained.insert(topic, id);
    }
    let ticket = store.submit(msg, &targets).await?;
    Ok(Some(ticket))
}

async fn publish_will(svc: &Arc<MqttService>, client_id: &str, client_bytes: &Bytes, will: &Will) {
    let msg = message::will_to_core(will, client_bytes, svc.store.now_ms());
    let result = match publish_message(svc, &will.topic, will.retain, msg).await {
        Ok(Some(ticket)) => ticket.wait().await.map(drop),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        warn!(client = %client_id, error = %e, "publishing the will failed");
    }
}

fn shared_queue_name(group: &str, inner: &str) -> String {
    queue_name(SHARED_PREFIX, &format!("{group}/{inner}"))
}

/// The next pump event; never, before the first pump exists.
fn poll_event(outbox: &mut Option<Box<Outbox>>, cx: &mut std::task::Context<'_>) -> Poll<Option<PumpEvent>> {
    match outbox.as_mut().and_then(|o| o.events_rx.as_mut()) {
        Some(rx) => rx.poll_recv(cx),
        None => Poll::Pending,
    }
}

/// The memory alarm's next state, with its receiver (`None`: its sender is
/// gone); never, while the alarm is not watched.
fn poll_alarm(alarm: &mut Option<AlarmWait>, cx: &mut std::task::Context<'_>) -> Poll<(watch::Receiver<bool>, Option<bool>)> {
    let Some(wait) = alarm.as_mut() else { return Poll::Pending };
    let changed = std::task::ready!(wait.as_mut().poll(cx));
    *alarm = None;
    Poll::Ready(changed)
}

/// Completes the replies at the front whose store waits are done, in order.
async fn poll_replies(replies: &mut VecDeque<PendingReply>) -> Vec<(PendingReply, Result<(), StoreError>)> {
    std::future::poll_fn(|cx| {
        let mut done = Vec::new();
        while let Some(front) = replies.front_mut() {
            let result = match front.wait.as_mut() {
                None => Ok(()),
                Some(w) => match w.as_mut().poll(cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => break,
                },
            };
            if let Some(mut reply) = replies.pop_front() {
                reply.wait = None;
                done.push((reply, result));
            }
        }
        if done.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(done)
        }
    })
    .await
}

/// Pops from one queue while the connection's window has room and hands the
/// deliveries to the connection.
async fn pump(
    store: Arc<polymq::Store>,
    queue: QueueId,
    source: Source,
    window: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<PumpEvent>,
    mut stop: watch::Receiver<bool>,
    wait: Duration,
) {
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&window).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        permit.forget();
        let mut held = 1usize;
        // Take whatever else is free for a batch, but only pop without
        // waiting with it: a pump parked in a long poll holds one slot, so
        // other pumps of the connection are not starved.
        while held < POP_BATCH_MAX {
            match window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    held += 1;
                }
                Err(_) => break,
            }
        }
        let mut popped = match store.pop(queue, held, DELIVERY_INVISIBLE, Duration::ZERO).await {
            Ok(d) => d,
            Err(e) => {
                window.add_permits(held);
                let _ = tx.send(PumpEvent::Failed(Box::new(e)));
                return;
            }
        };
        if popped.is_empty() {
            window.add_permits(held - 1);
            held = 1;
            popped = tokio::select! {
                r = store.pop(queue, 1, DELIVERY_INVISIBLE, wait) => match r {
                    Ok(d) => d,
                    Err(e) => {
                        window.add_permits(1);
                        let _ = tx.send(PumpEvent::Failed(Box::new(e)));
                        return;
                    }
                },
                _ = stop.changed() => {
                    window.add_permits(1);
                    return;
                }
            };
        }
        window.add_permits(held - popped.len());
        if popped.is_empty() {
            continue;
        }
        if let Err(mpsc::error::SendError(PumpEvent::Deliveries(batch))) =
            tx.send(PumpEvent::Deliveries(Box::new((source.clone(), popped))))
        {
            // The connection is gone without draining: hand them back.
            for d in batch.1 {
                let _ = store.nack(d.receipt, NackAction::Requeue { delay_ms: 0 }).await;
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes the future of one connection may take. An idle connection keeps
    /// this future (in its task) and little else, so its size is most of
    /// what a connection costs: rare work (CONNECT, handling a packet that
    /// waits on the store, a slow flush, closing) is boxed for the time it
    /// runs, and keep-alive, take-over and drain are the session registry's
    /// (no timer, shutdown or `Notified` future per connection). 4,488 bytes
    /// before all that, 640 after (debug build).
    const CONNECTION_FUTURE_MAX: usize = 768;

    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = polymq::config::Config { data_dir: dir.path().to_path_buf(), ..polymq::config::Config::default() };
        let store = polymq::Store::open(config.store_config()).expect("store");
        let svc = MqttService::new(Arc::clone(&store), super::super::MqttConfig::default()).await.expect("service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let (_trigger, signal) = polymq::server::shutdown_channel();
        let future = serve(svc, server, peer, signal);
        let size = std::mem::size_of_val(&future);
        assert!(size <= CONNECTION_FUTURE_MAX, "a connection's future takes {size} bytes (at most {CONNECTION_FUTURE_MAX})");
        drop(future);
        store.close().expect("close");
    }
}
