//! One AMQP connection: the handshake (protocol header, start, tune, open),
//! then a loop that reads frames, delivers what the consumers' pumps hand
//! out, answers publisher confirms once the core has stored the messages,
//! and keeps heartbeats.
//!
//! Deliveries come from pump tasks, one per consumer. A pump pops only while
//! its consumer's window (basic.qos prefetch) has room, so an unacknowledged
//! backlog stays in the store, not in memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use amq_protocol::protocol::{access, basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use bytes::{Bytes, BytesMut};
use polymq::queue::{NackAction, QueueId, QueueKind, QueueOptions, Receipt};
use polymq::record::Message;
use polymq::server::ShutdownSignal;
use polymq::store::Delivery;
use polymq::StoreError;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::codec::{self, decode_frame, short, AMQPValue, ContentHeader, FieldTable, Frame, FrameError, PROTOCOL_HEADER};
use crate::deadletter::{dead_lettered, Overflow, QueueArgs, Reason};
use crate::exchange::{
    binding_pattern, bindings_in, check_name, delayed_type, find_core_queue, queue_core_name, space, stream_core_name, ExchangeBinding,
    ExchangeDef, Kind, DELAYED_TYPE,
};
use crate::limits::{
    ACKS_PER_BATCH_MAX, DELIVERY_INVISIBLE, E2E_HOPS_MAX, EVENTS_PER_TURN, EXPIRY_SWEEP_EVERY, FRAME_MIN, HANDSHAKE_TIMEOUT,
    PENDING_CONFIRMS_MAX, POP_BATCH_MAX, POP_WAIT, PURGE_BATCH, STREAM_READ_BYTES_MAX, UNLIMITED_PREFETCH_CAP, WRITE_STALL_MAX,
};
use crate::message::{self, Outgoing};
use crate::reply::{self, AmqpError};
use crate::AmqpService;

pub(crate) async fn serve(svc: Arc<AmqpService>, stream: TcpStream, peer: SocketAddr, shutdown: ShutdownSignal) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut io = Io { inbuf: BytesMut::with_capacity(8192), out: Vec::with_capacity(8192), frame_max: svc.config.frame_max };
    let tuned = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&svc, &mut rd, &mut wr, &mut io, peer)) => r,
        _ = shutdown.triggered() => return,
    };
    let tuned = match tuned {
        Ok(Ok(t)) => t,
        Ok(Err(why)) => {
            debug!(%peer, why, "AMQP handshake failed");
            let _ = io.flush(&mut wr).await;
            let _ = wr.shutdown().await;
            return;
        }
        Err(_) => {
            debug!(%peer, "AMQP handshake timed out");
            return;
        }
    };
    let id = svc.next_connection_id();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let memory_alarm = svc.store.memory_alarm().subscribe();
    let (acker_tx, acker_rx) = mpsc::unbounded_channel();
    tokio::spawn(acker(Arc::clone(&svc.store), acker_rx));
    let mut conn = Connection {
        svc,
        id,
        peer,
        vhost: tuned.vhost,
        blocked_capable: tuned.blocked_capable,
        memory_alarm,
        published: false,
        blocked: false,
        io,
        channel_max: tuned.channel_max,
        heartbeat: tuned.heartbeat,
        channels: HashMap::new(),
        epoch_seq: 0,
        confirms: VecDeque::new(),
        publishes: Vec::new(),
        publish_messages: Vec::new(),
        acks: Vec::new(),
        acker: acker_tx,
        unsettled: None,
        events_tx,
        events_rx,
        closing: None,
    };
    let end = conn.run(&mut rd, &mut wr, shutdown).await;
    debug!(%peer, ?end, "AMQP connection ends");
    conn.cleanup().await;
    let _ = conn.io.flush(&mut wr).await;
    let _ = wr.shutdown().await;
}

/// Buffers of one connection.
struct Io {
    inbuf: BytesMut,
    out: Vec<u8>,
    frame_max: u32,
}

impl Io {
    async fn flush(&mut self, wr: &mut OwnedWriteHalf) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_STALL_MAX, wr.write_all(&self.out)).await {
            Ok(Ok(())) => {
                self.out.clear();
                if self.out.capacity() > 1 << 20 {
                    self.out.shrink_to(8192);
                }
                Ok(())
            }
            _ => Err(End::Lost),
        }
    }

    fn method(&mut self, channel: u16, m: AMQPClass) {
        codec::encode_method(channel, m, &mut self.out);
    }

    /// Reads until one whole frame is there.
    async fn read_frame(&mut self, rd: &mut OwnedReadHalf) -> Result<Frame, &'static str> {
        loop {
            match decode_frame(&mut self.inbuf, self.frame_max) {
                Ok(Some(Frame::Heartbeat(_))) => continue,
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(_) => return Err("malformed frame"),
            }
            self.inbuf.reserve(4096);
            match rd.read_buf(&mut self.inbuf).await {
                Ok(0) | Err(_) => return Err("closed"),
                Ok(_) => {}
            }
        }
    }

    /// Sends connection.close during the handshake.
    fn refuse(&mut self, code: u16, text: &str, class_id: u16, method_id: u16) {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: code,
                reply_text: short(&format!("{} - {}", reply::name(code), text)),
                class_id,
                method_id,
            })),
        );
    }
}

struct Tuned {
    channel_max: u16,
    heartbeat: Duration,
    vhost: String,
    /// The client announced the `connection.blocked` capability.
    blocked_capable: bool,
}

async fn handshake(
    svc: &AmqpService,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    io: &mut Io,
    peer: SocketAddr,
) -> Result<Tuned, &'static str> {
    // Protocol header.
    while io.inbuf.len() < PROTOCOL_HEADER.len() {
        match rd.read_buf(&mut io.inbuf).await {
            Ok(0) | Err(_) => return Err("closed before the protocol header"),
            Ok(_) => {}
        }
    }
    if io.inbuf[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER[..] {
        io.out.extend_from_slice(PROTOCOL_HEADER);
        return Err("wrong protocol header");
    }
    let _ = io.inbuf.split_to(PROTOCOL_HEADER.len());
    // Until tune-ok the spec's minimum frame size applies... but start-ok
    // carries client properties that some clients make larger; allow ours.
    let cfg = &svc.config;
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "authentication_failure_close",
        "connection.blocked",
    ] {
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("product".into(), AMQPValue::LongString("polymq".into()));
    props.insert("version".into(), AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()));
    props.insert("platform".into(), AMQPValue::LongString("Rust".into()));
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    io.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
    );
    io.flush(wr).await.map_err(|_| "write failed")?;
    let start_ok = match io.read_frame(rd).await? {
        Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::StartOk(s))) => s,
        _ => {
            io.refuse(reply::COMMAND_INVALID, "expected connection.start-ok", 10, 11);
            return Err("expected start-ok");
        }
    };
    let blocked_capable = match start_ok.client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => matches!(caps.inner().get("connection.blocked"), Some(AMQPValue::Boolean(true))),
        _ => false,
    };
    let mechanism = start_ok.mechanism.as_str().to_owned();
    let login = match mechanism.as_str() {
        "PLAIN" => parse_plain(start_ok.response.as_bytes()),
        "AMQPLAIN" => parse_amqplain(start_ok.response.as_bytes()),
        _ => None,
    };
    let Some((user, password)) = login else {
        io.refuse(reply::ACCESS_REFUSED, &format!("unsupported mechanism or malformed response for {mechanism}"), 10, 11);
        return Err("bad mechanism");
    };
    if !cfg.check_login(&user, &password, peer) {
        io.refuse(
            reply::ACCESS_REFUSED,
            &format!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."),
            10,
            11,
        );
        return Err("login refused");
    }
    io.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: cfg.channel_max,
            frame_max: cfg.frame_max,
            heartbeat: cfg.heartbeat.as_secs().min(u64::from(u16::MAX)) as u16,
        })),
    );
    io.flush(wr).await.map_err(|_| "write failed")?;
    let tune_ok = match io.read_frame(rd).await? {
        Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(t))) => t,
        _ => {
            io.refuse(reply::COMMAND_INVALID, "expected connection.tune-ok", 10, 31);
            return Err("expected tune-ok");
        }
    };
    let frame_max = if tune_ok.frame_max == 0 { cfg.frame_max } else { tune_ok.frame_max };
    if frame_max > cfg.frame_max || frame_max < FRAME_MIN {
        io.refuse(reply::NOT_ALLOWED, &format!("frame_max {frame_max} outside {FRAME_MIN}..={}", cfg.frame_max), 10, 31);
        return Err("frame_max out of range");
    }
    let channel_max = match tune_ok.channel_max {
        0 => cfg.channel_max,
        n if n > cfg.channel_max => {
            io.refuse(reply::NOT_ALLOWED, &format!("channel_max {n} exceeds {}", cfg.channel_max), 10, 31);
            return Err("channel_max out of range");
        }
        n => n,
    };
    io.frame_max = frame_max;
    let open = match io.read_frame(rd).await? {
        Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Open(o))) => o,
        _ => {
            io.refuse(reply::COMMAND_INVALID, "expected connection.open", 10, 40);
            return Err("expected open");
        }
    };
    if !cfg.has_vhost(open.virtual_host.as_str()) {
        io.refuse(reply::NOT_ALLOWED, &format!("vhost {} not found", open.virtual_host), 10, 40);
        return Err("unknown vhost");
    }
    io.method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})));
    Ok(Tuned {
        channel_max,
        heartbeat: Duration::from_secs(u64::from(tune_ok.heartbeat)),
        vhost: open.virtual_host.as_str().to_owned(),
        blocked_capable,
    })
}

/// PLAIN: `[authzid] NUL user NUL password`.
fn parse_plain(r: &[u8]) -> Option<(String, String)> {
    let mut parts = r.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let password = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    Some((user, password))
}

/// AMQPLAIN: a field table without its length prefix, LOGIN and PASSWORD.
fn parse_amqplain(r: &[u8]) -> Option<(String, String)> {
    let mut bytes = Vec::with_capacity(r.len() + 4);
    bytes.extend_from_slice(&(r.len() as u32).to_be_bytes());
    bytes.extend_from_slice(r);
    let t = codec::table_from_bytes(&bytes)?;
    let text = |k: &str| match t.inner().get(k)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    Some((text("LOGIN")?, text("PASSWORD")?))
}

/// Why the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// connection.close from the client (answered), or close-ok to ours.
    Closed,
    /// The peer closed or the socket failed.
    Lost,
    MissedHeartbeats,
    Shutdown,
}

enum PumpEvent {
    Delivery {
        channel: u16,
        epoch: u64,
        tag: Arc<str>,
        delivery: Delivery,
    },
    /// A message read from a stream at `offset`.
    Stream {
        channel: u16,
        epoch: u64,
        tag: Arc<str>,
        offset: u64,
        message: Message,
    },
    Failed {
        channel: u16,
        epoch: u64,
        tag: Arc<str>,
        error: StoreError,
    },
}

/// What a confirm waits for.
enum ConfirmWait {
    /// Nothing (unroutable, or already failed).
    Nothing,
    /// In `Connection::publishes`, not yet handed to the store. Never seen
    /// by `poll_confirms`: the batch goes to the store before the loop
    /// waits again.
    Batched,
    /// Handed to the store: polled in place, in order.
    Stored(polymq::store::Ticket),
}

/// A publish on a confirm-mode channel, answered in order.
struct PendingConfirm {
    channel: u16,
    epoch: u64,
    seq: u64,
    wait: ConfirmWait,
    failed: bool,
}

/// A routed publish waiting for the end of the socket read, when all the
/// publishes of that read go to the store at once (`Store::submit_many`).
struct BatchedPublish {
    channel: u16,
    epoch: u64,
    confirm: bool,
    targets: Vec<QueueId>,
}

struct Consumer {
    queue: QueueId,
    no_ack: bool,
    window: Arc<Semaphore>,
    stop: watch::Sender<bool>,
}

struct Unacked {
    /// `None` for a stream delivery: read by offset, nothing to settle in
    /// the core (its ack only frees the window slot).
    receipt: Option<Receipt>,
    /// The message and its queue's arguments, kept when the queue has a
    /// dead-letter exchange (a reject republishes it).
    /// Boxed: most deliveries have none, and the entries move around in
    /// the channel's map (a `Message` inline would make every move copy it).
    dead_letter: Option<Box<(Arc<QueueArgs>, Message)>>,
    /// The window slot it holds (none for basic.get and no-ack).
    window: Option<Arc<Semaphore>>,
}

/// What a transactional channel holds until tx.commit.
#[derive(Default)]
struct TxBuffer {
    publishes: Vec<(Message, Vec<QueueId>)>,
    /// (delivery tag, delivery, `None` for an ack or `Some(requeue)` for a nack/reject).
    settles: Vec<(u64, Unacked, Option<bool>)>,
}

/// A basic.publish being assembled from its method, header and body frames.
struct Publishing {
    /// As decoded (moved, not copied).
    exchange: codec::ShortString,
    routing_key: codec::ShortString,
    mandatory: bool,
    header: Option<ContentHeader>,
    /// A body that came in several frames, copied together.
    body: BytesMut,
    /// A body that came in one frame (the common case): the read buffer's
    /// bytes, not copied.
    whole: Option<Bytes>,
}

struct Channel {
    /// Unique per connection: events of an earlier channel with the same
    /// number are told apart.
    epoch: u64,
    /// We sent channel.close and wait for close-ok; everything else is dropped.
    closing: bool,
    publishing: Option<Publishing>,
    confirm: bool,
    /// tx.select: publishes and settlements wait here for tx.commit.
    tx: Option<TxBuffer>,
    next_publish_seq: u64,
    prefetch: u16,
    global_window: Option<Arc<Semaphore>>,
    consumers: HashMap<Arc<str>, Consumer>,
    unacked: BTreeMap<u64, Unacked>,
    next_tag: u64,
    /// The last queue declared on the channel ("" in later methods means it).
    last_queue: Option<String>,
}

struct Connection {
    svc: Arc<AmqpService>,
    id: u64,
    peer: SocketAddr,
    /// The vhost opened: every name this connection uses is in it.
    vhost: String,
    /// The client takes connection.blocked / unblocked notifications.
    blocked_capable: bool,
    /// The store's memory alarm (true: over the watermark).
    memory_alarm: watch::Receiver<bool>,
    /// The connection has published: it is a publisher the alarm blocks.
    published: bool,
    /// Blocked by the memory alarm: the socket is not read.
    blocked: bool,
    io: Io,
    channel_max: u16,
    heartbeat: Duration,
    channels: HashMap<u16, Channel>,
    epoch_seq: u64,
    confirms: VecDeque<PendingConfirm>,
    /// Publishes of the current socket read, in order, and their messages
    /// (kept apart so the messages move into the store without a copy).
    publishes: Vec<BatchedPublish>,
    publish_messages: Vec<Message>,
    /// Receipts acknowledged during the current turn of the loop, handed to
    /// the acker at its end (one `ack_many` for all of them).
    acks: Vec<Receipt>,
    /// The connection's acker task: applies acks in the background, so a
    /// slow fsync does not stall this loop, and coalesces what queues up
    /// meanwhile into one `ack_many`.
    acker: mpsc::UnboundedSender<Vec<Receipt>>,
    /// The newest publish without confirms still on its way to the log. A
    /// later basic.get, queue.declare (message count), purge or delete on
    /// this connection waits for it, so it sees what this connection
    /// published before, as with RabbitMQ (the log applies appends in order,
    /// so the newest one done means all are).
    unsettled: Option<polymq::store::Ticket>,
    events_tx: mpsc::UnboundedSender<PumpEvent>,
    events_rx: mpsc::UnboundedReceiver<PumpEvent>,
    /// We sent connection.close: wait for close-ok until this deadline.
    closing: Option<Instant>,
}

type Flow = Result<(), AmqpError>;

fn random_suffix() -> String {
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(22).map(char::from).collect()
}

impl Connection {
    async fn run(&mut self, rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf, shutdown: ShutdownSignal) -> End {
        let shutdown_fut = shutdown.triggered();
        tokio::pin!(shutdown_fut);
        let mut last_rx = Instant::now();
        let hb = self.heartbeat;
        let mut next_heartbeat = Instant::now() + hb / 2;
        let mut alarm_alive = true;
        loop {
            self.send_acks();
            if let Err(end) = self.io.flush(wr).await {
                return end;
            }
            if let Some(deadline) = self.closing {
                if Instant::now() >= deadline {
                    return End::Closed;
                }
            }
            // Blocked by the memory alarm: TCP back-pressure on the publisher.
            let can_read = self.confirms.len() < PENDING_CONFIRMS_MAX && !self.blocked;
            let close_deadline = self.closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = &mut shutdown_fut, if self.closing.is_none() => {
                    self.close_connection(AmqpError::connection(reply::CONNECTION_FORCED, "broker shutdown"), 0, 0);
                    let _ = self.io.flush(wr).await;
                    return End::Shutdown;
                }
                done = poll_confirms(&mut self.confirms), if !self.confirms.is_empty() => self.answer_confirms(done),
                read = rd.read_buf(&mut self.io.inbuf), if can_read => match read {
                    Ok(0) | Err(_) => return End::Lost,
                    Ok(_) => {
                        last_rx = Instant::now();
                        loop {
                            match decode_frame(&mut self.io.inbuf, self.io.frame_max) {
                                Ok(Some(frame)) => {
                                    if let Some(end) = self.on_frame(frame).await {
                                        self.submit_publishes().await;
                                        return end;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    debug!(peer = %self.peer, error = %e, "malformed frame");
                                    self.submit_publishes().await;
                                    return self.frame_error(e, wr).await;
                                }
                            }
                        }
                        // Everything published in this read goes to the store at once.
                        self.submit_publishes().await;
                        if self.io.inbuf.capacity() - self.io.inbuf.len() < 4096 {
                            self.io.inbuf.reserve(16 * 1024);
                        }
                    }
                },
                event = self.events_rx.recv() => {
                    let mut next = event;
                    let mut handled = 0;
                    while let Some(ev) = next.take() {
                        self.on_event(ev);
                        handled += 1;
                        if handled < EVENTS_PER_TURN {
                            next = self.events_rx.try_recv().ok();
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_heartbeat), if !hb.is_zero() => {
                    codec::encode_heartbeat(&mut self.io.out);
                    next_heartbeat = Instant::now() + hb / 2;
                }
                changed = self.memory_alarm.changed(), if alarm_alive => match changed {
                    Err(_) => alarm_alive = false,
                    Ok(()) => {
                        let on = *self.memory_alarm.borrow_and_update();
                        if on && self.published {
                            self.block();
                        } else if !on && self.blocked {
                            self.blocked = false;
                            last_rx = Instant::now();
                            if self.blocked_capable {
                                self.io.method(0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})));
                            }
                        }
                    }
                },
                // A blocked connection is not read, so its heartbeats are not
                // either (RabbitMQ pauses the monitor too).
                _ = tokio::time::sleep_until(last_rx + hb * 2), if !hb.is_zero() && !self.blocked => {
                    debug!(peer = %self.peer, "missed heartbeats");
                    return End::MissedHeartbeats;
                }
                _ = tokio::time::sleep_until(close_deadline), if self.closing.is_some() => return End::Closed,
            }
        }
    }

    /// The memory alarm is on and this connection publishes: stop reading
    /// it (frames already read are still handled), and say so.
    fn block(&mut self) {
        if self.blocked {
            return;
        }
        self.blocked = true;
        debug!(peer = %self.peer, "blocked by the memory alarm");
        if self.blocked_capable {
            self.io
                .method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked { reason: "low on memory".into() })));
        }
    }

    async fn frame_error(&mut self, e: FrameError, wr: &mut OwnedWriteHalf) -> End {
        self.close_connection(AmqpError::connection(e.reply_code(), &e), 0, 0);
        let _ = self.io.flush(wr).await;
        End::Closed
    }

    /// Sends connection.close; the loop then waits (briefly) for close-ok.
    fn close_connection(&mut self, e: AmqpError, class_id: u16, method_id: u16) {
        if self.closing.is_some() {
            return;
        }
        debug!(peer = %self.peer, code = e.code, text = %e.text, "closing the connection");
        self.io.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: short(&e.text),
                class_id,
                method_id,
            })),
        );
        self.closing = Some(Instant::now() + Duration::from_secs(3));
    }

    /// Handles one frame; `Some` ends the connection.
    async fn on_frame(&mut self, frame: Frame) -> Option<End> {
        let ch = frame.channel();
        if self.closing.is_some() {
            // After our connection.close only close / close-ok count.
            return match frame {
                Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => Some(End::Closed),
                Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                    self.io.method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})));
                    Some(End::Closed)
                }
                _ => None,
            };
        }
        let (class_id, method_id) = match &frame {
            Frame::Method(_, m) => (m.get_amqp_class_id(), m.get_amqp_method_id()),
            _ => (0, 0),
        };
        let result = match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(_) => Err(AmqpError::connection(reply::FRAME_ERROR, "heartbeat frame on a non-zero channel")),
            Frame::Method(0, m) => return self.on_connection_method(m),
            Frame::Method(ch, m) => self.on_channel_method(ch, m).await,
            Frame::Header(ch, h) => self.on_header(ch, h).await,
            Frame::Body(ch, b) => self.on_body(ch, b).await,
        };
        if let Err(e) = result {
            if e.connection {
                self.close_connection(e, class_id, method_id);
            } else {
                self.close_channel(ch, e, class_id, method_id).await;
            }
        }
        None
    }

    fn on_connection_method(&mut self, m: AMQPClass) -> Option<End> {
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.io.method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})));
                Some(End::Closed)
            }
            // Blocked/unblocked from a client are notifications we do not act on.
            AMQPClass::Connection(connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_)) => None,
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.io.method(0, AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(connection::UpdateSecretOk {})));
                None
            }
            other => {
                let (c, mid) = (other.get_amqp_class_id(), other.get_amqp_method_id());
                self.close_connection(AmqpError::connection(reply::COMMAND_INVALID, "unexpected method on channel 0"), c, mid);
                None
            }
        }
    }

    /// Closes a channel because of `e`: everything it holds goes back.
    async fn close_channel(&mut self, ch: u16, e: AmqpError, class_id: u16, method_id: u16) {
        debug!(peer = %self.peer, channel = ch, code = e.code, text = %e.text, "closing a channel");
        self.release_channel(ch, true).await;
        if let Some(c) = self.channels.get_mut(&ch) {
            c.closing = true;
        }
        self.io.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: short(&e.text),
                class_id,
                method_id,
            })),
        );
    }

    /// Stops the channel's consumers and requeues what it holds; keeps the
    /// channel entry unless `keep` is false.
    async fn release_channel(&mut self, ch: u16, keep: bool) {
        let Some(c) = self.channels.get_mut(&ch) else { return };
        let consumers: Vec<(Arc<str>, Consumer)> = c.consumers.drain().collect();
        let unacked: Vec<Receipt> = std::mem::take(&mut c.unacked).into_values().filter_map(|u| u.receipt).collect();
        c.publishing = None;
        if !keep {
            self.channels.remove(&ch);
        }
        // Drop pending confirms of the channel: nobody will read them.
        for consumer in consumers {
            self.forget_consumer(consumer.1).await;
        }
        requeue_in_background(&self.svc, unacked);
    }

    async fn forget_consumer(&self, c: Consumer) {
        let _ = c.stop.send(true);
        let last_auto_delete = {
            let mut q = self.svc.queues();
            let n = q.consumers.entry(c.queue).or_default();
            *n = n.saturating_sub(1);
            let last = *n == 0;
            if last {
                q.consumers.remove(&c.queue);
            }
            last && q.auto_delete.contains(&c.queue)
        };
        if last_auto_delete {
            self.delete_queue(c.queue).await;
        }
    }

    async fn delete_queue(&self, q: QueueId) {
        {
            let mut reg = self.svc.queues();
            reg.auto_delete.remove(&q);
            reg.exclusive.remove(&q);
            reg.consumers.remove(&q);
            reg.args.remove(&q);
            reg.active_consumer_gates.remove(&q);
        }
        if let Err(e) = self.svc.store.delete_queue(q).await {
            warn!(error = %e, "deleting a queue");
        }
    }

    /// On connection end: requeue, stop pumps, delete exclusive queues.
    async fn cleanup(&mut self) {
        self.submit_publishes().await;
        self.send_acks();
        let chans: Vec<u16> = self.channels.keys().copied().collect();
        for ch in chans {
            self.release_channel(ch, false).await;
        }
        let owned: Vec<QueueId> = self.svc.queues().exclusive.iter().filter(|(_, c)| **c == self.id).map(|(q, _)| *q).collect();
        for q in owned {
            self.delete_queue(q).await;
        }
    }

    fn channel(&mut self, ch: u16) -> Result<&mut Channel, AmqpError> {
        self.channels.get_mut(&ch).ok_or_else(|| AmqpError::connection(reply::CHANNEL_ERROR, format!("channel {ch} is not open")))
    }

    async fn on_channel_method(&mut self, ch: u16, m: AMQPClass) -> Flow {
        // Channel lifecycle first: open, and frames for a closing channel.
        match (&m, self.channels.get(&ch)) {
            (AMQPClass::Channel(channel::AMQPMethod::Open(_)), None) => {
                if ch > self.channel_max {
                    return Err(AmqpError::connection(
                        reply::NOT_ALLOWED,
                        format!("channel {ch} exceeds channel_max {}", self.channel_max),
                    ));
                }
                self.epoch_seq += 1;
                self.channels.insert(
                    ch,
                    Channel {
                        epoch: self.epoch_seq,
                        closing: false,
                        publishing: None,
                        confirm: false,
                        tx: None,
                        next_publish_seq: 1,
                        prefetch: 0,
                        global_window: None,
                        consumers: HashMap::new(),
                        unacked: BTreeMap::new(),
                        next_tag: 1,
                        last_queue: None,
                    },
                );
                self.io.method(ch, AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})));
                return Ok(());
            }
            (AMQPClass::Channel(channel::AMQPMethod::Open(_)), Some(_)) => {
                return Err(AmqpError::connection(reply::CHANNEL_ERROR, format!("channel {ch} is already open")));
            }
            (_, None) => return Err(AmqpError::connection(reply::CHANNEL_ERROR, format!("expected 'channel.open' on channel {ch}"))),
            (AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)), Some(c)) if c.closing => {
                self.channels.remove(&ch);
                return Ok(());
            }
            (AMQPClass::Channel(channel::AMQPMethod::Close(_)), Some(c)) if c.closing => {
                self.channels.remove(&ch);
                self.io.method(ch, AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})));
                return Ok(());
            }
            (_, Some(c)) if c.closing => return Ok(()),
            (_, Some(c)) if c.publishing.is_some() => {
                return Err(AmqpError::connection(reply::UNEXPECTED_FRAME, format!("expected content on channel {ch}, got a method")));
            }
            _ => {}
        }
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.release_channel(ch, false).await;
                self.io.method(ch, AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})));
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                self.io.method(ch, AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk { active: f.active })));
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.io.method(ch, AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})));
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => self.exchange_declare(ch, d).await,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => self.exchange_delete(ch, d).await,
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
                self.exchange_bind(b.destination.as_str(), b.source.as_str(), b.routing_key.as_str(), &b.arguments, true).await?;
                if !b.nowait {
                    self.io.method(ch, AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})));
                }
                Ok(())
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => {
                self.exchange_bind(b.destination.as_str(), b.source.as_str(), b.routing_key.as_str(), &b.arguments, false).await?;
                if !b.nowait {
                    self.io.method(ch, AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})));
                }
                Ok(())
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                self.settle_publishes().await;
                self.queue_declare(ch, d).await
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
                let nowait = b.nowait;
                self.queue_bind(ch, b.queue.as_str(), b.exchange.as_str(), b.routing_key.as_str(), &b.arguments, true).await?;
                if !nowait {
                    self.io.method(ch, AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})));
                }
                Ok(())
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                self.queue_bind(ch, b.queue.as_str(), b.exchange.as_str(), b.routing_key.as_str(), &b.arguments, false).await?;
                self.io.method(ch, AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})));
                Ok(())
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                self.settle_publishes().await;
                self.queue_purge(ch, p).await
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
                self.settle_publishes().await;
                self.queue_delete(ch, d).await
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                let c = self.channel(ch)?;
                if q.global {
                    c.global_window = Some(Arc::new(Semaphore::new(window_size(q.prefetch_count))));
                } else {
                    c.prefetch = q.prefetch_count;
                }
                self.io.method(ch, AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})));
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => self.basic_consume(ch, c).await,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                let removed = self.channel(ch)?.consumers.remove(c.consumer_tag.as_str());
                if let Some(consumer) = removed {
                    self.forget_consumer(consumer).await;
                }
                if !c.nowait {
                    self.io.method(ch, AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk { consumer_tag: c.consumer_tag })));
                }
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                let c = self.channel(ch)?;
                c.publishing = Some(Publishing {
                    exchange: p.exchange,
                    routing_key: p.routing_key,
                    mandatory: p.mandatory,
                    header: None,
                    body: BytesMut::new(),
                    whole: None,
                });
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
                self.settle_publishes().await;
                self.basic_get(ch, g).await
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => self.settle(ch, a.delivery_tag, a.multiple, None),
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => self.settle(ch, n.delivery_tag, n.multiple, Some(n.requeue)),
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => self.settle(ch, r.delivery_tag, false, Some(r.requeue)),
            AMQPClass::Basic(basic::AMQPMethod::Recover(_)) => {
                // requeue=false (redeliver to the same consumer) is treated as
                // requeue=true, which the spec allows servers to do.
                let all = self.take_unacked(ch, 0, true)?;
                requeue_in_background(&self.svc, all);
                self.io.method(ch, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})));
                Ok(())
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(_)) => {
                let all = self.take_unacked(ch, 0, true)?;
                requeue_in_background(&self.svc, all);
                Ok(())
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let c = self.channel(ch)?;
                if c.tx.is_some() {
                    return Err(AmqpError::channel(reply::PRECONDITION_FAILED, "cannot switch from tx to confirm mode"));
                }
                c.confirm = true;
                if !s.nowait {
                    self.io.method(ch, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})));
                }
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                let c = self.channel(ch)?;
                if c.confirm {
                    return Err(AmqpError::channel(reply::PRECONDITION_FAILED, "cannot switch from confirm to tx mode"));
                }
                c.tx.get_or_insert_with(TxBuffer::default);
                self.io.method(ch, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => self.tx_commit(ch).await,
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                let chan = self.channel(ch)?;
                let buf = chan.tx.as_mut().map(std::mem::take).ok_or_else(not_transactional)?;
                // Rolled-back acks leave their deliveries unacknowledged again.
                for (tag, u, _) in buf.settles {
                    chan.unacked.insert(tag, u);
                }
                self.io.method(ch, AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})));
                Ok(())
            }
            other => Err(AmqpError::connection(
                reply::COMMAND_INVALID,
                format!("unexpected method {}.{} from a client", other.get_amqp_class_id(), other.get_amqp_method_id()),
            )),
        }
    }

    // ---- exchanges ----

    async fn exchange_declare(&mut self, ch: u16, d: exchange::Declare) -> Flow {
        let vhost = self.vhost.clone();
        let name = d.exchange.as_str();
        let sp = space(&vhost, name);
        let existing = self.svc.exchanges.get(&sp);
        if d.passive {
            if existing.is_none() {
                return Err(AmqpError::channel(reply::NOT_FOUND, format!("no exchange '{name}' in vhost '{vhost}'")));
            }
        } else {
            if [crate::exchange::EXCHANGES_SPACE, crate::exchange::E2E_SPACE, crate::deadletter::ARGS_SPACE].contains(&name) {
                return Err(AmqpError::channel(
                    reply::ACCESS_REFUSED,
                    format!("exchange name '{name}' is reserved (used by polymq internals)"),
                ));
            }
            check_name(&vhost, name, "exchange")?;
            let delayed = d.kind.as_str() == DELAYED_TYPE;
            let kind = if delayed {
                // The delayed message plugin's check and text.
                delayed_type(&d.arguments).ok_or_else(|| {
                    AmqpError::channel(reply::PRECONDITION_FAILED, "Invalid argument, 'x-delayed-type' must be an existing exchange type")
                })?
            } else {
                Kind::parse(d.kind.as_str())
                    .ok_or_else(|| AmqpError::connection(reply::COMMAND_INVALID, format!("unknown exchange type '{}'", d.kind)))?
            };
            let def =
                ExchangeDef { kind, delayed, durable: d.durable, auto_delete: d.auto_delete, internal: d.internal, arguments: d.arguments };
            match existing {
                Some(cur) => {
                    if let Some((arg, got, have)) = cur.inequivalence(&def) {
                        return Err(AmqpError::channel(
                            reply::PRECONDITION_FAILED,
                            format!(
                                "inequivalent arg '{arg}' for exchange '{name}' in vhost '{vhost}': received '{got}' but current is '{have}'"
                            ),
                        ));
                    }
                }
                None => {
                    if name.is_empty() || name.starts_with("amq.") {
                        return Err(AmqpError::channel(
                            reply::ACCESS_REFUSED,
                            format!("exchange name '{name}' contains reserved prefix 'amq.*'"),
                        ));
                    }
                    self.svc.exchanges.add(&self.svc.store, &sp, def).await?;
                }
            }
        }
        if !d.nowait {
            self.io.method(ch, AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})));
        }
        Ok(())
    }

    async fn exchange_delete(&mut self, ch: u16, d: exchange::Delete) -> Flow {
        let vhost = self.vhost.clone();
        let name = d.exchange.as_str();
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::channel(reply::ACCESS_REFUSED, format!("deleting exchange '{name}' is not allowed")));
        }
        let sp = space(&vhost, name);
        if self.svc.exchanges.get(&sp).is_some() {
            if d.if_unused && !bindings_in(&self.svc.store, &sp).is_empty() {
                return Err(AmqpError::channel(reply::PRECONDITION_FAILED, format!("exchange '{name}' in vhost '{vhost}' in use")));
            }
            self.svc.exchanges.remove(&self.svc.store, &sp).await?;
            self.svc.headers.forget(&sp);
        }
        if !d.nowait {
            self.io.method(ch, AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})));
        }
        Ok(())
    }

    // ---- queues ----

    /// The queue a method names ("" = the channel's last declared queue).
    fn resolve_queue_name(&mut self, ch: u16, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.channel(ch)?.last_queue.clone().ok_or_else(|| AmqpError::channel(reply::NOT_FOUND, "no previously declared queue"))
    }

    /// Looks a queue (classic or stream) up, checking exclusivity.
    fn find_queue(&self, name: &str) -> Result<QueueId, AmqpError> {
        let vhost = &self.vhost;
        let id = find_core_queue(&self.svc.store, vhost, name)?
            .ok_or_else(|| AmqpError::channel(reply::NOT_FOUND, format!("no queue '{name}' in vhost '{vhost}'")))?;
        self.check_exclusive(id, name)?;
        Ok(id)
    }

    fn is_stream(&self, id: QueueId) -> bool {
        self.svc.store.queue_info(id).is_some_and(|i| i.options.kind == QueueKind::Stream)
    }

    fn check_exclusive(&self, id: QueueId, name: &str) -> Flow {
        let vhost = self.vhost.clone();
        match self.svc.queues().exclusive.get(&id) {
            Some(owner) if *owner != self.id => Err(AmqpError::channel(
                reply::RESOURCE_LOCKED,
                format!("cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'"),
            )),
            _ => Ok(()),
        }
    }

    fn consumer_count(&self, id: QueueId) -> u32 {
        self.svc.queues().consumers.get(&id).copied().unwrap_or(0) as u32
    }

    async fn queue_declare(&mut self, ch: u16, d: queue::Declare) -> Flow {
        let vhost = self.vhost.clone();
        let mut name = d.queue.as_str().to_owned();
        if d.passive {
            let name = self.resolve_queue_name(ch, &name)?;
            let id = self.find_queue(&name)?;
            return self.declare_ok(ch, &name, id, d.nowait);
        }
        if name.is_empty() {
            name = format!("amq.gen-{}", random_suffix());
        } else if name.starts_with("amq.") {
            return Err(AmqpError::channel(reply::ACCESS_REFUSED, format!("queue name '{name}' contains reserved prefix 'amq.*'")));
        }
        let (opts, mut args) = queue_options(&d)?;
        args.name = name.clone();
        args.vhost = vhost.clone();
        let stream = opts.kind == QueueKind::Stream;
        let rs = format!("queue '{name}' in vhost '{vhost}'");
        if stream {
            // RabbitMQ's checks, in its order.
            for (bad, property) in [(d.auto_delete, "auto-delete"), (d.exclusive, "exclusive-owner"), (!d.durable, "non-durable")] {
                if bad {
                    return Err(AmqpError::channel(reply::PRECONDITION_FAILED, format!("invalid property '{property}' for {rs}")));
                }
            }
        }
        let core = if stream { stream_core_name(&vhost, &name)? } else { queue_core_name(&vhost, &name)? };
        let store = Arc::clone(&self.svc.store);
        // A name is a classic queue or a stream, never both.
        let other_core = if stream { queue_core_name(&vhost, &name).ok() } else { stream_core_name(&vhost, &name).ok() };
        if other_core.and_then(|c| store.queue_id(&c)).is_some() {
            let (got, have) = if stream { ("stream".to_owned(), "classic") } else { (queue_type(&d.arguments), "stream") };
            return Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!("inequivalent arg 'x-queue-type' for {rs}: received '{got}' but current is '{have}'"),
            ));
        }
        if let Some(id) = store.queue_id(&core) {
            self.check_exclusive(id, &name)?;
            let current = self.svc.queues().args.get(&id).map(|a| QueueArgs::clone(a)).unwrap_or_else(|| QueueArgs {
                name: name.clone(),
                vhost: vhost.clone(),
                ..QueueArgs::default()
            });
            if let Some((arg, got, have)) = current.inequivalence(&args) {
                return Err(AmqpError::channel(
                    reply::PRECONDITION_FAILED,
                    format!("inequivalent arg '{arg}' for {rs}: received '{got}' but current is '{have}'"),
                ));
            }
            if let Some(info) = store.queue_info(id) {
                let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
                let differs = if info.options.transient != opts.transient {
                    Some(("durable", (!opts.transient).to_string(), (!info.options.transient).to_string()))
                } else if info.options.retention_ms != opts.retention_ms {
                    Some(("x-max-age", show(opts.retention_ms.map(|ms| ms / 1000)), show(info.options.retention_ms.map(|ms| ms / 1000))))
                } else if info.options.retention_bytes != opts.retention_bytes {
                    Some(("x-max-length-bytes", show(opts.retention_bytes), show(info.options.retention_bytes)))
                } else {
                    None
                };
                if let Some((arg, got, have)) = differs {
                    return Err(AmqpError::channel(
                        reply::PRECONDITION_FAILED,
                        format!("inequivalent arg '{arg}' for {rs}: received '{got}' but current is '{have}'"),
                    ));
                }
            }
        }
        let info = match store.declare_queue(&core, opts).await {
            Ok(i) => i,
            Err(StoreError::Inequivalent(_)) => {
                return Err(AmqpError::channel(
                    reply::PRECONDITION_FAILED,
                    format!("inequivalent arg for {rs}: arguments differ from the existing queue's"),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let mut persist_args = None;
        {
            let mut reg = self.svc.queues();
            if d.exclusive {
                reg.exclusive.entry(info.id).or_insert(self.id);
            }
            if d.auto_delete {
                reg.auto_delete.insert(info.id);
            }
            if args.is_active() && !reg.args.contains_key(&info.id) {
                if !info.options.transient {
                    persist_args = Some(args.record_pattern());
                }
                reg.args.insert(info.id, Arc::new(args));
            }
        }
        if let Some(p) = persist_args {
            store.bind(crate::deadletter::ARGS_SPACE, &p, info.id).await?;
        }
        self.channel(ch)?.last_queue = Some(name.clone());
        self.declare_ok(ch, &name, info.id, d.nowait)
    }

    fn declare_ok(&mut self, ch: u16, name: &str, id: QueueId, nowait: bool) -> Flow {
        self.channel(ch)?.last_queue = Some(name.to_owned());
        if nowait {
            return Ok(());
        }
        let ready = self.svc.store.queue_info(id).map(|i| message_count(&i)).unwrap_or(0);
        let consumers = self.consumer_count(id);
        self.io.method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: short(name),
                message_count: ready.min(u64::from(u32::MAX)) as u32,
                consumer_count: consumers,
            })),
        );
        Ok(())
    }

    async fn exchange_bind(&mut self, destination: &str, source: &str, key: &str, arguments: &FieldTable, add: bool) -> Flow {
        let vhost = self.vhost.clone();
        for name in [destination, source] {
            if name.is_empty() {
                return Err(AmqpError::channel(reply::ACCESS_REFUSED, "operation not permitted on the default exchange"));
            }
            if self.svc.exchanges.get(&space(&vhost, name)).is_none() {
                return Err(AmqpError::channel(reply::NOT_FOUND, format!("no exchange '{name}' in vhost '{vhost}'")));
            }
        }
        let b = ExchangeBinding {
            source: space(&vhost, source),
            destination: space(&vhost, destination),
            routing_key: key.to_owned(),
            arguments: arguments.clone(),
        };
        self.svc.exchanges.bind_exchange(&self.svc.store, b, add).await?;
        Ok(())
    }

    async fn queue_bind(&mut self, ch: u16, queue: &str, exchange: &str, key: &str, arguments: &FieldTable, add: bool) -> Flow {
        let vhost = self.vhost.clone();
        let queue = self.resolve_queue_name(ch, queue)?;
        let id = self.find_queue(&queue)?;
        if exchange.is_empty() {
            return Err(AmqpError::channel(
                reply::ACCESS_REFUSED,
                format!("operation not permitted on the default exchange (queue '{queue}')"),
            ));
        }
        let sp = space(&vhost, exchange);
        let def = self
            .svc
            .exchanges
            .get(&sp)
            .ok_or_else(|| AmqpError::channel(reply::NOT_FOUND, format!("no exchange '{exchange}' in vhost '{vhost}'")))?;
        let pattern = match def.kind {
            Kind::Headers => crate::headers::binding_pattern(key, arguments),
            Kind::Topic if sp == self.svc.config.mapping.topic_space => crate::exchange::shared_topic_pattern(key),
            kind => binding_pattern(kind, key)?,
        };
        if add {
            self.svc.store.bind(&sp, &pattern, id).await?;
        } else {
            self.svc.store.unbind(&sp, &pattern, id).await?;
        }
        if def.kind == Kind::Headers {
            self.svc.headers.update(&sp, id, arguments, add);
        }
        Ok(())
    }

    async fn queue_purge(&mut self, ch: u16, p: queue::Purge) -> Flow {
        let name = self.resolve_queue_name(ch, p.queue.as_str())?;
        let id = self.find_queue(&name)?;
        // A stream is not purged (retention removes its messages), as RabbitMQ.
        let purged = if self.is_stream(id) { 0 } else { purge(&self.svc.store, id).await? };
        if !p.nowait {
            self.io.method(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count: purged.min(u64::from(u32::MAX)) as u32 })),
            );
        }
        Ok(())
    }

    async fn queue_delete(&mut self, ch: u16, d: queue::Delete) -> Flow {
        let vhost = self.vhost.clone();
        let name = self.resolve_queue_name(ch, d.queue.as_str())?;
        let mut count = 0;
        // Deleting a queue that does not exist succeeds (RabbitMQ 3.x).
        if let Some(id) = find_core_queue(&self.svc.store, &vhost, &name)? {
            self.check_exclusive(id, &name)?;
            let ready = self.svc.store.queue_info(id).map(|i| message_count(&i)).unwrap_or(0);
            if d.if_unused && self.consumer_count(id) > 0 {
                return Err(AmqpError::channel(reply::PRECONDITION_FAILED, format!("queue '{name}' in vhost '{vhost}' in use")));
            }
            if d.if_empty && ready > 0 {
                return Err(AmqpError::channel(reply::PRECONDITION_FAILED, format!("queue '{name}' in vhost '{vhost}' is not empty")));
            }
            count = ready;
            self.delete_queue(id).await;
        }
        if !d.nowait {
            self.io.method(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count: count.min(u64::from(u32::MAX)) as u32 })),
            );
        }
        Ok(())
    }

    // ---- consuming ----

    async fn basic_consume(&mut self, ch: u16, c: basic::Consume) -> Flow {
        let name = self.resolve_queue_name(ch, c.queue.as_str())?;
        let id = self.find_queue(&name)?;
        let stream_from = if self.is_stream(id) { Some(self.stream_start(ch, id, &name, &c)?) } else { None };
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", random_suffix()).into()
        } else {
            c.consumer_tag.as_str().into()
        };
        let epoch;
        let window;
        {
            let chan = self.channel(ch)?;
            if chan.consumers.contains_key(&tag) {
                return Err(AmqpError::connection(reply::NOT_ALLOWED, format!("attempt to reuse consumer tag '{tag}'")));
            }
            window = match &chan.global_window {
                Some(w) => Arc::clone(w),
                None => Arc::new(Semaphore::new(window_size(chan.prefetch))),
            };
            epoch = chan.epoch;
        }
        let gate = {
            let mut reg = self.svc.queues();
            *reg.consumers.entry(id).or_default() += 1;
            if reg.args.get(&id).is_some_and(|a| a.single_active_consumer) {
                Some(Arc::clone(reg.active_consumer_gates.entry(id).or_default()))
            } else {
                None
            }
        };
        if !c.nowait {
            self.io.method(ch, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk { consumer_tag: short(&tag) })));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let key = PumpKey { channel: ch, epoch, tag: Arc::clone(&tag) };
        let store = Arc::clone(&self.svc.store);
        match stream_from {
            Some(from) => {
                let decoded_max = self.svc.config.mapping.decoded_batch_bytes_max as usize;
                tokio::spawn(stream_pump(store, id, from, decoded_max, key, Arc::clone(&window), self.events_tx.clone(), stop_rx))
            }
            None => tokio::spawn(pump(store, id, key, Arc::clone(&window), self.events_tx.clone(), stop_rx, gate)),
        };
        self.channel(ch)?.consumers.insert(tag, Consumer { queue: id, no_ack: c.no_ack, window, stop: stop_tx });
        Ok(())
    }

    /// The offset a stream consumer starts at, after RabbitMQ's checks: a
    /// prefetch is required (406), automatic acknowledgement and global qos
    /// are not supported (540 NOT_IMPLEMENTED, a connection error in 0-9-1).
    fn stream_start(&mut self, ch: u16, id: QueueId, name: &str, c: &basic::Consume) -> Result<u64, AmqpError> {
        let rs = format!("queue '{name}' in vhost '{}'", self.vhost);
        let chan = self.channel(ch)?;
        if chan.global_window.is_some() {
            return Err(AmqpError::connection(reply::NOT_IMPLEMENTED, format!("{rs} does not support global qos")));
        }
        if chan.prefetch == 0 {
            return Err(AmqpError::channel(reply::PRECONDITION_FAILED, format!("consumer prefetch count is not set for stream {rs}")));
        }
        if c.no_ack {
            return Err(AmqpError::connection(
                reply::NOT_IMPLEMENTED,
                format!("automatic acknowledgement not supported by stream queues {rs}"),
            ));
        }
        let store = &self.svc.store;
        let info = store.queue_info(id).ok_or_else(|| AmqpError::channel(reply::NOT_FOUND, format!("no {rs}")))?;
        let spec = StreamOffset::parse(c.arguments.inner().get("x-stream-offset"))
            .ok_or_else(|| AmqpError::channel(reply::PRECONDITION_FAILED, format!("invalid x-stream-offset for consumer of {rs}")))?;
        Ok(match spec {
            StreamOffset::First => info.start_offset,
            // "The last chunk": a message is a chunk here, so the last message.
            StreamOffset::Last => info.next_offset.saturating_sub(1).max(info.start_offset),
            StreamOffset::Next => info.next_offset,
            StreamOffset::Offset(n) => n,
            StreamOffset::Timestamp(ms) => store.offset_for_timestamp(id, ms)?,
            StreamOffset::Ago(ms) => store.offset_for_timestamp(id, store.now_ms().saturating_sub(ms))?,
        })
    }

    fn on_event(&mut self, ev: PumpEvent) {
        match ev {
            PumpEvent::Delivery { channel, epoch, tag, delivery } => {
                let live = self.channels.get(&channel).filter(|c| c.epoch == epoch && !c.closing).and_then(|c| c.consumers.get(&tag));
                let Some(consumer) = live else {
                    // Cancelled or closed meanwhile: hand it back.
                    requeue_in_background(&self.svc, vec![delivery.receipt]);
                    return;
                };
                let (no_ack, window) = (consumer.no_ack, Arc::clone(&consumer.window));
                let out = Outgoing::from_core_in(&delivery.message, &self.svc.config.mapping.topic_space);
                let args = self.svc.queues().args.get(&delivery.receipt.queue).cloned();
                let now = self.svc.store.now_ms();
                if expired(args.as_deref(), &delivery.message, &out, now) {
                    window.add_permits(1);
                    expire_in_background(&self.svc, args, delivery.receipt, delivery.message);
                    return;
                }
                let dead_letter = args.filter(|a| a.dead_letter_exchange.is_some()).map(|a| Box::new((a, delivery.message.clone())));
                let Some(chan) = self.channels.get_mut(&channel) else { return };
                let delivery_tag = chan.next_tag;
                chan.next_tag += 1;
                if no_ack {
                    window.add_permits(1);
                    self.acks.push(delivery.receipt);
                } else {
                    chan.unacked.insert(delivery_tag, Unacked { receipt: Some(delivery.receipt), dead_letter, window: Some(window) });
                }
                codec::encode_deliver(
                    channel,
                    &tag,
                    delivery_tag,
                    delivery.deliveries > 1,
                    &out.exchange,
                    &out.routing_key,
                    &mut self.io.out,
                );
                codec::encode_content(channel, out.properties, &delivery.message.payload, self.io.frame_max, &mut self.io.out);
            }
            PumpEvent::Stream { channel, epoch, tag, offset, message } => {
                let live = self.channels.get(&channel).filter(|c| c.epoch == epoch && !c.closing).and_then(|c| c.consumers.get(&tag));
                // Cancelled or closed meanwhile: nothing to hand back, a stream is read, not popped.
                let Some(consumer) = live else { return };
                let window = Arc::clone(&consumer.window);
                let mut out = Outgoing::from_core_in(&message, &self.svc.config.mapping.topic_space);
                let mut headers = out.properties.headers().clone().unwrap_or_default();
                headers.insert("x-stream-offset".into(), AMQPValue::LongLongInt(offset.min(i64::MAX as u64) as i64));
                out.properties = out.properties.with_headers(headers);
                let Some(chan) = self.channels.get_mut(&channel) else { return };
                let delivery_tag = chan.next_tag;
                chan.next_tag += 1;
                chan.unacked.insert(delivery_tag, Unacked { receipt: None, dead_letter: None, window: Some(window) });
                self.io.method(
                    channel,
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                        consumer_tag: short(&tag),
                        delivery_tag,
                        redelivered: false,
                        exchange: short(&out.exchange),
                        routing_key: short(&out.routing_key),
                    })),
                );
                codec::encode_content(channel, out.properties, &message.payload, self.io.frame_max, &mut self.io.out);
            }
            PumpEvent::Failed { channel, epoch, tag, error } => {
                debug!(peer = %self.peer, error = %error, "consumer stopped");
                let Some(chan) = self.channels.get_mut(&channel).filter(|c| c.epoch == epoch) else { return };
                if let Some(c) = chan.consumers.remove(&tag) {
                    let _ = c.stop.send(true);
                    let mut q = self.svc.queues();
                    if let Some(n) = q.consumers.get_mut(&c.queue) {
                        *n = n.saturating_sub(1);
                    }
                    drop(q);
                    // The queue is gone (deleted elsewhere): tell the client
                    // (consumer_cancel_notify).
                    self.io.method(
                        channel,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel { consumer_tag: short(&tag), nowait: true })),
                    );
                }
            }
        }
    }

    async fn basic_get(&mut self, ch: u16, g: basic::Get) -> Flow {
        let name = self.resolve_queue_name(ch, g.queue.as_str())?;
        let id = self.find_queue(&name)?;
        if self.is_stream(id) {
            return Err(AmqpError::connection(
                reply::NOT_IMPLEMENTED,
                format!("basic.get not supported by stream queues queue '{name}' in vhost '{}'", self.vhost),
            ));
        }
        let store = Arc::clone(&self.svc.store);
        let now = store.now_ms();
        let args = self.svc.queues().args.get(&id).cloned();
        let delivery = loop {
            let mut got = store.pop(id, 1, DELIVERY_INVISIBLE, Duration::ZERO).await?;
            let Some(d) = got.pop() else { break None };
            let out = Outgoing::from_core_in(&d.message, &self.svc.config.mapping.topic_space);
            if expired(args.as_deref(), &d.message, &out, now) {
                if args.as_ref().is_some_and(|a| a.dead_letter_exchange.is_some()) {
                    dead_letter(&self.svc, args.clone(), d.receipt, d.message, Reason::Expired).await;
                } else {
                    store.ack(d.receipt).await?;
                }
                continue;
            }
            break Some((d, out));
        };
        let Some((d, out)) = delivery else {
            self.io.method(ch, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})));
            return Ok(());
        };
        let chan = self.channel(ch)?;
        let delivery_tag = chan.next_tag;
        chan.next_tag += 1;
        if g.no_ack {
            self.acks.push(d.receipt);
        } else {
            let dead_letter = args.filter(|a| a.dead_letter_exchange.is_some()).map(|a| Box::new((a, d.message.clone())));
            chan.unacked.insert(delivery_tag, Unacked { receipt: Some(d.receipt), dead_letter, window: None });
        }
        let remaining = store.queue_info(id).map(|i| i.ready).unwrap_or(0);
        self.io.method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag,
                redelivered: d.deliveries > 1,
                exchange: short(&out.exchange),
                routing_key: short(&out.routing_key),
                message_count: remaining.min(u64::from(u32::MAX)) as u32,
            })),
        );
        codec::encode_content(ch, out.properties, &d.message.payload, self.io.frame_max, &mut self.io.out);
        Ok(())
    }

    /// Removes deliveries being settled (all up to `tag` with `multiple`; tag
    /// 0 with `multiple` means all).
    fn take_unacked_entries(&mut self, ch: u16, tag: u64, multiple: bool) -> Result<Vec<(u64, Unacked)>, AmqpError> {
        let chan = self.channel(ch)?;
        Ok(if multiple {
            if tag == 0 {
                std::mem::take(&mut chan.unacked).into_iter().collect()
            } else {
                if tag >= chan.next_tag {
                    return Err(AmqpError::channel(reply::PRECONDITION_FAILED, format!("unknown delivery tag {tag}")));
                }
                let rest = chan.unacked.split_off(&(tag + 1));
                std::mem::replace(&mut chan.unacked, rest).into_iter().collect()
            }
        } else {
            match chan.unacked.remove(&tag) {
                Some(u) => vec![(tag, u)],
                None => return Err(AmqpError::channel(reply::PRECONDITION_FAILED, format!("unknown delivery tag {tag}"))),
            }
        })
    }

    /// Like [`take_unacked_entries`](Self::take_unacked_entries), freeing their window slots.
    fn take_unacked(&mut self, ch: u16, tag: u64, multiple: bool) -> Result<Vec<Receipt>, AmqpError> {
        Ok(self.take_unacked_entries(ch, tag, multiple)?.into_iter().filter_map(|(_, u)| release(u)).collect())
    }

    /// basic.ack (`negative` = None) or basic.nack/reject (`Some(requeue)`);
    /// held until commit on a transactional channel.
    fn settle(&mut self, ch: u16, tag: u64, multiple: bool, negative: Option<bool>) -> Flow {
        let entries = self.take_unacked_entries(ch, tag, multiple)?;
        if negative.is_some() && entries.iter().any(|(_, u)| u.receipt.is_none()) {
            return Err(AmqpError::connection(reply::NOT_IMPLEMENTED, "basic.nack and basic.reject not supported by stream queues"));
        }
        let chan = self.channel(ch)?;
        if let Some(tx) = chan.tx.as_mut() {
            tx.settles.extend(entries.into_iter().map(|(t, u)| (t, u, negative)));
            return Ok(());
        }
        match negative {
            None => {
                let acks = entries.into_iter().filter_map(|(_, u)| release(u));
                self.acks.extend(acks);
            }
            Some(true) => requeue_in_background(&self.svc, entries.into_iter().filter_map(|(_, u)| release(u)).collect()),
            Some(false) => reject_in_background(&self.svc, entries.into_iter().map(|(_, u)| u).collect()),
        }
        Ok(())
    }

    /// Applies what a transaction holds: the publishes (waiting until they are
    /// stored), then the settlements.
    async fn tx_commit(&mut self, ch: u16) -> Flow {
        let buf = self.channel(ch)?.tx.as_mut().map(std::mem::take).ok_or_else(not_transactional)?;
        self.submit_publishes().await;
        let store = Arc::clone(&self.svc.store);
        let mut tickets = Vec::with_capacity(buf.publishes.len());
        let (messages, targets): (Vec<Message>, Vec<Vec<QueueId>>) = buf.publishes.into_iter().unzip();
        for t in store.submit_many(messages.into_iter().zip(targets.iter().map(Vec::as_slice))).await {
            tickets.push(t?);
        }
        for t in tickets {
            t.wait().await?;
        }
        let mut acks = Vec::new();
        let mut rejects = Vec::new();
        for (_, u, negative) in buf.settles {
            match negative {
                None => acks.extend(release(u)),
                Some(false) => rejects.push(u),
                Some(true) => {
                    if let Some(r) = release(u) {
                        if let Err(e) = store.nack(r, NackAction::Requeue { delay_ms: 0 }).await {
                            debug!(error = %e, "settling a delivery at commit");
                        }
                    }
                }
            }
        }
        reject_in_background(&self.svc, rejects);
        store.ack_many(&acks).await?;
        self.io.method(ch, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
        Ok(())
    }

    // ---- publishing ----

    async fn on_header(&mut self, ch: u16, h: ContentHeader) -> Flow {
        let c = self.channel(ch)?;
        if c.closing {
            return Ok(());
        }
        let Some(p) = c.publishing.as_mut().filter(|p| p.header.is_none()) else {
            return Err(AmqpError::connection(reply::UNEXPECTED_FRAME, format!("unexpected content header on channel {ch}")));
        };
        if h.class_id != codec::CLASS_BASIC {
            return Err(AmqpError::connection(reply::UNEXPECTED_FRAME, format!("content header of class {}", h.class_id)));
        }
        let max = polymq::limits::RECORD_BYTES_MAX as u64;
        if h.body_size > max {
            c.publishing = None;
            return Err(AmqpError::channel(
                reply::PRECONDITION_FAILED,
                format!("message size {} is larger than configured max size {max}", h.body_size),
            ));
        }
        let empty = h.body_size == 0;
        p.header = Some(h);
        if empty {
            return self.finish_publish(ch).await;
        }
        Ok(())
    }

    async fn on_body(&mut self, ch: u16, b: Bytes) -> Flow {
        let c = self.channel(ch)?;
        if c.closing {
            return Ok(());
        }
        let Some(p) = c.publishing.as_mut() else {
            return Err(AmqpError::connection(reply::UNEXPECTED_FRAME, format!("unexpected content body on channel {ch}")));
        };
        let Some(size) = p.header.as_ref().map(|h| h.body_size) else {
            return Err(AmqpError::connection(reply::UNEXPECTED_FRAME, format!("content body before its header on channel {ch}")));
        };
        if p.body.len() as u64 + b.len() as u64 > size {
            return Err(AmqpError::connection(reply::FRAME_ERROR, "content body larger than its header said"));
        }
        if p.body.is_empty() && b.len() as u64 == size {
            p.whole = Some(b);
            return self.finish_publish(ch).await;
        }
        // Grown as frames arrive, not by the declared size: a header alone
        // must not make us allocate 16 MiB.
        p.body.reserve((size as usize).min(64 * 1024));
        p.body.extend_from_slice(&b);
        if p.body.len() as u64 == size {
            return self.finish_publish(ch).await;
        }
        Ok(())
    }

    async fn finish_publish(&mut self, ch: u16) -> Flow {
        // A connection is blocked once a whole publish has arrived while
        // the alarm is on (RabbitMQ blocks publishers, not consumers).
        self.published = true;
        if *self.memory_alarm.borrow() {
            self.block();
        }
        let c = self.channel(ch)?;
        let Some(mut p) = c.publishing.take() else { return Ok(()) };
        let epoch = c.epoch;
        let confirm = c.confirm;
        let seq = c.next_publish_seq;
        if confirm {
            c.next_publish_seq += 1;
        }
        let props = p.header.take().map(|h| h.properties).unwrap_or_default();
        let mut targets = self.route(p.exchange.as_str(), p.routing_key.as_str(), props.headers().as_ref())?;
        let store = Arc::clone(&self.svc.store);
        // The one address space: a publish to the exchange MQTT shares is a
        // topic; its first level names a Kafka topic that gets it too.
        let shared_topic = self.shared_topic(p.exchange.as_str()).then(|| polymq::mapping::topic_from_dotted(p.routing_key.as_str()));
        if let Some(topic) = &shared_topic {
            let svc = Arc::clone(&self.svc);
            let mapping = &svc.config.mapping;
            if mapping.amqp_to_streams {
                let levels: Vec<&str> = topic.split('/').collect();
                if let Some(q) = mapping.stream_target(&store, &levels, topic).await {
                    if !targets.contains(&q) {
                        targets.push(q);
                    }
                }
            }
        }
        if targets.is_empty() {
            if p.mandatory {
                self.io.method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: reply::NO_ROUTE,
                        reply_text: "NO_ROUTE".into(),
                        exchange: short(p.exchange.as_str()),
                        routing_key: short(p.routing_key.as_str()),
                    })),
                );
                let body = p.whole.unwrap_or_else(|| p.body.freeze());
                codec::encode_content(ch, props, &body, self.io.frame_max, &mut self.io.out);
            }
            if confirm {
                self.confirms.push_back(PendingConfirm { channel: ch, epoch, seq, wait: ConfirmWait::Nothing, failed: false });
            }
            return Ok(());
        }
        let tx = self.channel(ch)?.tx.is_some();
        let body = match p.whole.take() {
            // Held in memory (a transaction, or only memory-only queues): a
            // copy of its own, so it does not pin the whole read buffer it
            // shares with the frames around it.
            Some(b) if tx || targets.iter().all(|q| q.is_transient()) => Bytes::copy_from_slice(&b),
            // Written to the log and dropped: the read buffer's bytes will do.
            Some(b) => b,
            None => p.body.freeze(),
        };
        let now = store.now_ms();
        let mut msg = message::to_core(p.exchange.as_str(), p.routing_key.as_str(), &props, body, now);
        if let Some(topic) = shared_topic {
            // MQTT subscribers and Kafka consumers see the topic, not the dotted key.
            msg.headers.push((Bytes::from_static(polymq::mapping::header::TOPIC), Bytes::from(topic)));
        }
        if let Some(delay) = self.delay_of(p.exchange.as_str(), props.headers().as_ref()) {
            // The core's pop queues hold the message back until then.
            msg.deliver_at_ms = now.saturating_add(delay);
        }
        if let Some(tx) = self.channel(ch)?.tx.as_mut() {
            tx.publishes.push((msg, targets));
            return Ok(());
        }
        let limited = self.length_limited(&targets);
        if !limited.is_empty() {
            // The limit check counts what is stored: earlier publishes go first.
            self.submit_publishes().await;
        }
        let (targets, refused) = self.make_room(targets, limited, msg.payload.len() as u64).await;
        if targets.is_empty() {
            // Every target is full with x-overflow reject-publish.
            if confirm {
                self.confirms.push_back(PendingConfirm { channel: ch, epoch, seq, wait: ConfirmWait::Nothing, failed: true });
            }
            return Ok(());
        }
        if confirm {
            // Refused by one full queue: nacked, though stored in the others (as RabbitMQ).
            self.confirms.push_back(PendingConfirm { channel: ch, epoch, seq, wait: ConfirmWait::Batched, failed: refused });
        }
        self.publishes.push(BatchedPublish { channel: ch, epoch, confirm, targets });
        self.publish_messages.push(msg);
        Ok(())
    }

    /// Hands the publishes gathered in this read to the store in one call,
    /// in order, and gives the confirms waiting for them their tickets.
    async fn submit_publishes(&mut self) {
        if self.publishes.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.publishes);
        let messages = std::mem::take(&mut self.publish_messages);
        let store = Arc::clone(&self.svc.store);
        let results = store.submit_many(messages.into_iter().zip(batch.iter().map(|b| b.targets.as_slice()))).await;
        // The batch's confirms are the last `Batched` entries, in order.
        let confirming = batch.iter().filter(|b| b.confirm).count();
        let mut first = self.confirms.len();
        let mut seen = 0;
        while seen < confirming && first > 0 {
            first -= 1;
            if matches!(self.confirms[first].wait, ConfirmWait::Batched) {
                seen += 1;
            }
        }
        let mut waiting = self.confirms.range_mut(first..).filter(|p| matches!(p.wait, ConfirmWait::Batched));
        let mut failed_channels = Vec::new();
        for (b, result) in batch.iter().zip(results) {
            if b.confirm {
                let Some(pc) = waiting.next() else { continue };
                match result {
                    Ok(ticket) => pc.wait = ConfirmWait::Stored(ticket),
                    Err(e) => {
                        debug!(error = %e, "publish not stored");
                        pc.wait = ConfirmWait::Nothing;
                        pc.failed = true;
                    }
                }
            } else {
                match result {
                    Ok(ticket) => self.unsettled = Some(ticket),
                    Err(e) => failed_channels.push((b.channel, b.epoch, AmqpError::from(e))),
                }
            }
        }
        drop(waiting);
        // Without confirms, a store refusal closes the channel (or the
        // connection, for a connection-level error), as it did at once.
        for (ch, epoch, e) in failed_channels {
            if e.connection {
                self.close_connection(e, 0, 0);
            } else if self.channels.get(&ch).is_some_and(|c| c.epoch == epoch && !c.closing) {
                self.close_channel(ch, e, 0, 0).await;
            }
        }
    }

    /// Sends this turn's acks to the acker.
    fn send_acks(&mut self) {
        if !self.acks.is_empty() {
            let _ = self.acker.send(std::mem::take(&mut self.acks));
        }
    }

    /// The targets with an x-max-length / x-max-length-bytes, and their arguments.
    fn length_limited(&self, targets: &[QueueId]) -> Vec<(QueueId, Arc<QueueArgs>)> {
        let reg = self.svc.queues();
        if reg.args.is_empty() {
            return Vec::new();
        }
        targets.iter().filter_map(|q| reg.args.get(q).filter(|a| a.has_length_limit()).map(|a| (*q, Arc::clone(a)))).collect()
    }

    /// x-max-length / x-max-length-bytes before a publish of `size` body
    /// bytes: drop-head queues lose (or dead-letter) their oldest ready
    /// messages until the new one fits; full reject-publish queues are taken
    /// out of the targets (the bool says whether any was).
    async fn make_room(&self, targets: Vec<QueueId>, limited: Vec<(QueueId, Arc<QueueArgs>)>, size: u64) -> (Vec<QueueId>, bool) {
        if limited.is_empty() {
            return (targets, false);
        }
        let store = &self.svc.store;
        let mut refused = Vec::new();
        for (q, a) in limited {
            match a.overflow {
                Overflow::RejectPublish => {
                    if store.queue_info(q).is_some_and(|i| a.over_limit(i.ready + 1, i.stored_bytes + size)) {
                        refused.push(q);
                    }
                }
                Overflow::DropHead => {
                    while store.queue_info(q).is_some_and(|i| i.ready > 0 && a.over_limit(i.ready + 1, i.stored_bytes + size)) {
                        let Ok(mut got) = store.pop(q, 1, DELIVERY_INVISIBLE, Duration::ZERO).await else { break };
                        let Some(d) = got.pop() else { break };
                        dead_letter(&self.svc, Some(Arc::clone(&a)), d.receipt, d.message, Reason::Maxlen).await;
                    }
                }
            }
        }
        let any = !refused.is_empty();
        (targets.into_iter().filter(|q| !refused.contains(q)).collect(), any)
    }

    /// An `x-delayed-message` exchange's delay for a publish: its `x-delay`
    /// header in ms (missing, not an integer or not positive: none).
    fn delay_of(&self, exchange: &str, headers: Option<&FieldTable>) -> Option<u64> {
        if exchange.is_empty() || !self.svc.exchanges.get(&space(&self.vhost, exchange)).is_some_and(|d| d.delayed) {
            return None;
        }
        let delay = match headers?.inner().get("x-delay")? {
            AMQPValue::ShortShortInt(n) => i64::from(*n),
            AMQPValue::ShortShortUInt(n) => i64::from(*n),
            AMQPValue::ShortInt(n) => i64::from(*n),
            AMQPValue::ShortUInt(n) => i64::from(*n),
            AMQPValue::LongInt(n) => i64::from(*n),
            AMQPValue::LongUInt(n) => i64::from(*n),
            AMQPValue::LongLongInt(n) => *n,
            _ => return None,
        };
        u64::try_from(delay).ok().filter(|d| *d > 0)
    }

    /// Whether `exchange` (on this connection's vhost) is the topic space
    /// MQTT shares (`amq.topic` on `/` by default).
    fn shared_topic(&self, exchange: &str) -> bool {
        let sp = space(&self.vhost, exchange);
        sp == self.svc.config.mapping.topic_space && self.svc.exchanges.get(&sp).is_some_and(|d| d.kind == Kind::Topic)
    }

    /// The queues a publish goes to.
    fn route(&self, exchange: &str, key: &str, headers: Option<&FieldTable>) -> Result<Vec<QueueId>, AmqpError> {
        route_in(&self.svc, &self.vhost, exchange, key, headers)
    }

    /// basic.ack / basic.nack to publishers, in order, coalescing runs.
    /// Waits until this connection's publishes so far are applied (see
    /// `unsettled`), answering the confirms that completes.
    async fn settle_publishes(&mut self) {
        self.submit_publishes().await;
        if let Some(ticket) = self.unsettled.take() {
            let _ = ticket.wait().await;
        }
        while !self.confirms.is_empty() {
            let done = poll_confirms(&mut self.confirms).await;
            self.answer_confirms(done);
        }
    }

    fn answer_confirms(&mut self, done: Vec<(PendingConfirm, Result<(), StoreError>)>) {
        let mut run: Option<(u16, u64, u64, usize)> = None; // channel, epoch, last seq, count
        let emit = |io: &mut Io, run: Option<(u16, u64, u64, usize)>, channels: &HashMap<u16, Channel>| {
            if let Some((ch, epoch, seq, n)) = run {
                if channels.get(&ch).is_some_and(|c| c.epoch == epoch && !c.closing) {
                    codec::encode_basic_ack(ch, seq, n > 1, &mut io.out);
                }
            }
        };
        for (pc, result) in done {
            let ok = result.is_ok() && !pc.failed;
            if ok {
                match &mut run {
                    Some((ch, epoch, seq, n)) if *ch == pc.channel && *epoch == pc.epoch => {
                        *seq = pc.seq;
                        *n += 1;
                    }
                    _ => {
                        emit(&mut self.io, run.take(), &self.channels);
                        run = Some((pc.channel, pc.epoch, pc.seq, 1));
                    }
                }
            } else {
                emit(&mut self.io, run.take(), &self.channels);
                if self.channels.get(&pc.channel).is_some_and(|c| c.epoch == pc.epoch && !c.closing) {
                    self.io.method(
                        pc.channel,
                        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack { delivery_tag: pc.seq, multiple: false, requeue: false })),
                    );
                }
            }
        }
        emit(&mut self.io, run, &self.channels);
    }
}

/// Frees a settled delivery's window slot; its receipt remains to settle.
fn release(u: Unacked) -> Option<Receipt> {
    if let Some(w) = u.window {
        w.add_permits(1);
    }
    u.receipt
}

/// The queues a publish to `exchange` with `key` goes to.
fn route_in(svc: &AmqpService, vhost: &str, exchange: &str, key: &str, headers: Option<&FieldTable>) -> Result<Vec<QueueId>, AmqpError> {
    if exchange.is_empty() {
        // The default exchange: the queue named by the routing key.
        // (a classic queue or a stream; an internal name is unroutable).
        return Ok(find_core_queue(&svc.store, vhost, key).ok().flatten().into_iter().collect());
    }
    let sp = space(vhost, exchange);
    let def = svc
        .exchanges
        .get(&sp)
        .ok_or_else(|| AmqpError::channel(reply::NOT_FOUND, format!("no exchange '{exchange}' in vhost '{vhost}'")))?;
    if def.internal {
        return Err(AmqpError::channel(
            reply::ACCESS_REFUSED,
            format!("cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"),
        ));
    }
    let mut out = Vec::new();
    let mut visited = vec![sp.clone()];
    route_exchange(svc, &sp, &def, key, headers, &mut visited, &mut out);
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Routes in one exchange's space, then through its exchange-to-exchange
/// bindings (each exchange visited once: cycles end; a queue reached twice
/// gets one copy). Internal destinations are fine.
fn route_exchange(
    svc: &AmqpService,
    sp: &str,
    def: &ExchangeDef,
    key: &str,
    headers: Option<&FieldTable>,
    visited: &mut Vec<String>,
    out: &mut Vec<QueueId>,
) {
    let store = &svc.store;
    out.extend(match def.kind {
        Kind::Direct | Kind::Fanout => store.route(sp, &[key], false),
        // The space MQTT shares: words are levels in dotted form (`%2E` is a `.`).
        Kind::Topic if sp == svc.config.mapping.topic_space => {
            let levels = polymq::mapping::levels_from_dotted(key);
            let levels: Vec<&str> = levels.iter().map(|l| &**l).collect();
            store.route(sp, &levels, false)
        }
        Kind::Topic => {
            let levels: Vec<&str> = key.split('.').collect();
            store.route(sp, &levels, false)
        }
        Kind::Headers => svc.headers.route(store, sp, headers),
    });
    for b in svc.exchanges.bindings_from(sp) {
        if visited.len() >= E2E_HOPS_MAX || visited.contains(&b.destination) || !b.matches(def.kind, key, headers) {
            continue;
        }
        let Some(dest) = svc.exchanges.get(&b.destination) else { continue };
        visited.push(b.destination.clone());
        route_exchange(svc, &b.destination, &dest, key, headers, visited, out);
    }
}

/// Whether a delivery has expired: per-message `expiration` always, and the
/// queue's `x-message-ttl` when it has one.
fn expired(args: Option<&QueueArgs>, msg: &Message, out: &Outgoing, now_ms: u64) -> bool {
    match args {
        Some(a) => a.expired(msg, out, now_ms),
        None => out.expire_at_ms.is_some_and(|at| at <= now_ms),
    }
}

/// Republishes a message through its queue's dead-letter exchange (if it
/// has one and the exchange routes it anywhere), waits until the copy is
/// stored, then acks the original away. Without a DLX the message is dropped.
async fn dead_letter(svc: &AmqpService, args: Option<Arc<QueueArgs>>, receipt: Receipt, msg: Message, reason: Reason) {
    let store = &svc.store;
    let a_vhost = args.as_ref().map_or_else(String::new, |a| a.vhost.clone());
    if let Some((exchange, key, copy)) = args.and_then(|a| dead_lettered(&a, &msg, reason, store.now_ms())) {
        // A missing dead-letter exchange drops the message, as in RabbitMQ.
        let headers = Outgoing::from_core(&copy).properties.headers().clone();
        let targets = route_in(svc, &a_vhost, &exchange, &key, headers.as_ref()).unwrap_or_default();
        if !targets.is_empty() {
            let stored = match store.submit(copy, &targets).await {
                Ok(ticket) => ticket.wait().await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                // Keep the original rather than lose the message.
                debug!(error = %e, "dead-lettering a message; requeueing it");
                let _ = store.nack(receipt, NackAction::Requeue { delay_ms: 0 }).await;
                return;
            }
        }
    }
    if let Err(e) = store.ack(receipt).await {
        debug!(error = %e, "acknowledging a dead-lettered delivery");
    }
}

/// Expires the heads of queues that have an `x-message-ttl` or a dead-letter
/// exchange (per-message `expiration` then matters) and no consumer
/// (RabbitMQ expires a queue's head even when nobody reads it;
/// queues with consumers expire as they deliver). Runs until the service
/// is gone. Peeks first, so an unexpired head is left untouched.
pub(crate) async fn expire_unread_heads(svc: std::sync::Weak<AmqpService>) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(svc) = svc.upgrade() else { return };
        let queues: Vec<(QueueId, Arc<QueueArgs>)> = {
            let reg = svc.queues();
            reg.args
                .iter()
                .filter(|(q, a)| {
                    (a.message_ttl_ms.is_some() || a.dead_letter_exchange.is_some()) && reg.consumers.get(q).is_none_or(|n| *n == 0)
                })
                .map(|(q, a)| (*q, Arc::clone(a)))
                .collect()
        };
        for (q, args) in queues {
            for _ in 0..PURGE_BATCH {
                let now = svc.store.now_ms();
                let Ok(mut head) = svc.store.peek(q, 1) else { break };
                let Some(h) = head.pop() else { break };
                if !args.expired(&h.message, &Outgoing::from_core(&h.message), now) {
                    break;
                }
                let Ok(mut got) = svc.store.pop(q, 1, DELIVERY_INVISIBLE, Duration::ZERO).await else { break };
                let Some(d) = got.pop() else { break };
                if d.offset != h.offset {
                    // Someone else took the head meanwhile: hand this one back.
                    let _ = svc.store.nack(d.receipt, NackAction::Requeue { delay_ms: 0 }).await;
                    break;
                }
                dead_letter(&svc, Some(Arc::clone(&args)), d.receipt, d.message, Reason::Expired).await;
            }
        }
    }
}

fn expire_in_background(svc: &Arc<AmqpService>, args: Option<Arc<QueueArgs>>, receipt: Receipt, msg: Message) {
    let svc = Arc::clone(svc);
    tokio::spawn(async move { dead_letter(&svc, args, receipt, msg, Reason::Expired).await });
}

/// basic.reject / basic.nack without requeue: dead-letter what has a DLX,
/// hand the rest to the core (dropped, or its own dead-letter queue).
fn reject_in_background(svc: &Arc<AmqpService>, mut entries: Vec<Unacked>) {
    if entries.is_empty() {
        return;
    }
    let dead: Vec<_> = entries.iter_mut().map(|u| u.dead_letter.take()).collect();
    let receipts: Vec<Option<Receipt>> = entries.into_iter().map(release).collect();
    let svc = Arc::clone(svc);
    tokio::spawn(async move {
        for (receipt, dl) in receipts.into_iter().zip(dead) {
            // Stream deliveries never get here (settle refuses them).
            let Some(receipt) = receipt else { continue };
            match dl {
                Some(dl) => {
                    let (args, msg) = *dl;
                    dead_letter(&svc, Some(args), receipt, msg, Reason::Rejected).await
                }
                None => {
                    if let Err(e) = svc.store.nack(receipt, NackAction::DeadLetter).await {
                        debug!(error = %e, "rejecting a delivery");
                    }
                }
            }
        }
    });
}

fn not_transactional() -> AmqpError {
    AmqpError::channel(reply::PRECONDITION_FAILED, "channel is not transactional")
}

fn window_size(prefetch: u16) -> usize {
    if prefetch == 0 {
        UNLIMITED_PREFETCH_CAP
    } else {
        usize::from(prefetch)
    }
}

/// The `x-queue-type` a declare asks for ("classic" when absent).
fn queue_type(arguments: &FieldTable) -> String {
    match arguments.inner().get("x-queue-type") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        _ => "classic".to_owned(),
    }
}

/// declare-ok's message count: ready messages, or a stream's retained ones.
fn message_count(info: &polymq::queue::QueueInfo) -> u64 {
    match info.options.kind {
        QueueKind::Stream => info.next_offset.saturating_sub(info.start_offset),
        QueueKind::Queue => info.ready,
    }
}

/// RabbitMQ's `x-max-age` (and interval `x-stream-offset`): a positive
/// number and one unit of Y M D h m s (a year is 365 days, a month 30).
fn parse_max_age(s: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(s).ok()?;
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok().filter(|n| *n > 0)?;
    let unit_ms: u64 = match &s[digits..] {
        "Y" => 365 * 86_400_000,
        "M" => 30 * 86_400_000,
        "D" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamOffset {
    First,
    Last,
    Next,
    Offset(u64),
    /// An AMQP timestamp (seconds), in ms.
    Timestamp(u64),
    /// An interval like "10m": messages from that long ago, in ms.
    Ago(u64),
}

impl StreamOffset {
    /// `None`: not a valid `x-stream-offset`.
    fn parse(v: Option<&AMQPValue>) -> Option<StreamOffset> {
        let int = |n: i64| u64::try_from(n).ok().map(StreamOffset::Offset);
        match v {
            None => Some(StreamOffset::Next),
            Some(AMQPValue::LongString(s)) => match s.as_bytes() {
                b"first" => Some(StreamOffset::First),
                b"last" => Some(StreamOffset::Last),
                b"next" => Some(StreamOffset::Next),
                other => parse_max_age(other).map(StreamOffset::Ago),
            },
            Some(AMQPValue::ShortString(s)) => StreamOffset::parse(Some(&AMQPValue::LongString(s.as_str().into()))),
            Some(AMQPValue::Timestamp(t)) => Some(StreamOffset::Timestamp(t.saturating_mul(1000))),
            Some(AMQPValue::ShortShortInt(n)) => int(i64::from(*n)),
            Some(AMQPValue::ShortShortUInt(n)) => int(i64::from(*n)),
            Some(AMQPValue::ShortInt(n)) => int(i64::from(*n)),
            Some(AMQPValue::ShortUInt(n)) => int(i64::from(*n)),
            Some(AMQPValue::LongInt(n)) => int(i64::from(*n)),
            Some(AMQPValue::LongUInt(n)) => int(i64::from(*n)),
            Some(AMQPValue::LongLongInt(n)) => int(*n),
            Some(_) => None,
        }
    }
}

/// Core options from queue.declare flags and arguments.
fn queue_options(d: &queue::Declare) -> Result<(QueueOptions, QueueArgs), AmqpError> {
    let bad = |arg: &str, why: &str| AmqpError::channel(reply::PRECONDITION_FAILED, format!("invalid arg '{arg}': {why}"));
    match queue_type(&d.arguments).as_str() {
        "classic" | "quorum" => {}
        "stream" => return stream_options(d),
        _ => return Err(bad("x-queue-type", "expected classic, quorum or stream")),
    }
    let mut o = QueueOptions { transient: !d.durable || d.exclusive, ..QueueOptions::default() };
    let mut a = QueueArgs::default();
    let int = |v: &AMQPValue| -> Option<i64> {
        Some(match v {
            AMQPValue::ShortShortInt(n) => i64::from(*n),
            AMQPValue::ShortShortUInt(n) => i64::from(*n),
            AMQPValue::ShortInt(n) => i64::from(*n),
            AMQPValue::ShortUInt(n) => i64::from(*n),
            AMQPValue::LongInt(n) => i64::from(*n),
            AMQPValue::LongUInt(n) => i64::from(*n),
            AMQPValue::LongLongInt(n) => *n,
            AMQPValue::Timestamp(n) => *n as i64,
            _ => return None,
        })
    };
    for (k, v) in &d.arguments {
        match k.as_str() {
            "x-max-priority" => {
                let n = int(v).filter(|n| (0..=255).contains(n)).ok_or_else(|| bad("x-max-priority", "expected 0..=255"))?;
                o.max_priority = n as u8;
            }
            "x-expires" => {
                let n = int(v).filter(|n| *n > 0).ok_or_else(|| bad("x-expires", "expected a positive integer"))?;
                o.idle_ttl_ms = Some(n as u64);
            }
            "x-delivery-limit" => {
                let n = int(v).filter(|n| *n >= 0).ok_or_else(|| bad("x-delivery-limit", "expected a non-negative integer"))?;
                // RabbitMQ counts redeliveries; the core counts deliveries.
                o.max_deliveries = Some((n as u64 + 1).min(u64::from(u32::MAX)) as u32);
            }
            "x-message-ttl" => {
                let n = int(v).filter(|n| *n >= 0).ok_or_else(|| bad("x-message-ttl", "expected a non-negative integer"))?;
                a.message_ttl_ms = Some(n as u64);
            }
            "x-dead-letter-exchange" => match v {
                AMQPValue::LongString(s) => a.dead_letter_exchange = Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                _ => return Err(bad("x-dead-letter-exchange", "expected a string")),
            },
            "x-dead-letter-routing-key" => match v {
                AMQPValue::LongString(s) => a.dead_letter_routing_key = Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
                _ => return Err(bad("x-dead-letter-routing-key", "expected a string")),
            },
            "x-max-length" => {
                let n = int(v).filter(|n| *n >= 0).ok_or_else(|| bad("x-max-length", "expected a non-negative integer"))?;
                a.max_length = Some(n as u64);
            }
            "x-max-length-bytes" => {
                let n = int(v).filter(|n| *n >= 0).ok_or_else(|| bad("x-max-length-bytes", "expected a non-negative integer"))?;
                a.max_length_bytes = Some(n as u64);
            }
            "x-overflow" => {
                a.overflow = match v {
                    AMQPValue::LongString(s) => Overflow::parse(s.as_bytes()),
                    _ => None,
                }
                .ok_or_else(|| bad("x-overflow", "expected drop-head, reject-publish or reject-publish-dlx"))?;
            }
            "x-single-active-consumer" => match v {
                AMQPValue::Boolean(b) => a.single_active_consumer = *b,
                _ => return Err(bad("x-single-active-consumer", "expected a boolean")),
            },
            // Accepted and not acted on yet: see docs/design-amqp.md.
            _ => {}
        }
    }
    Ok((o, a))
}

/// A stream's core options: `x-max-age` and `x-max-length-bytes` are its
/// retention; the queue arguments of classic queues do not apply (RabbitMQ
/// ignores them on streams too).
fn stream_options(d: &queue::Declare) -> Result<(QueueOptions, QueueArgs), AmqpError> {
    let bad = |arg: &str, why: &str| AmqpError::channel(reply::PRECONDITION_FAILED, format!("invalid arg '{arg}': {why}"));
    let mut o = QueueOptions::stream();
    for (k, v) in &d.arguments {
        match (k.as_str(), v) {
            ("x-max-age", AMQPValue::LongString(s)) => {
                o.retention_ms = Some(parse_max_age(s.as_bytes()).ok_or_else(|| bad("x-max-age", "expected e.g. 7D, 12h, 30m or 10s"))?);
            }
            ("x-max-age", _) => return Err(bad("x-max-age", "expected a string such as 7D")),
            ("x-max-length-bytes", v) => {
                let n = match v {
                    AMQPValue::ShortShortUInt(n) => i64::from(*n),
                    AMQPValue::ShortUInt(n) => i64::from(*n),
                    AMQPValue::ShortInt(n) => i64::from(*n),
                    AMQPValue::LongInt(n) => i64::from(*n),
                    AMQPValue::LongUInt(n) => i64::from(*n),
                    AMQPValue::LongLongInt(n) => *n,
                    _ => -1,
                };
                o.retention_bytes = Some(u64::try_from(n).map_err(|_| bad("x-max-length-bytes", "expected a non-negative integer"))?);
            }
            // x-stream-max-segment-size-bytes and the rest: accepted, not acted on.
            _ => {}
        }
    }
    Ok((o, QueueArgs::default()))
}

/// Removes every visible message of a queue; returns how many.
async fn purge(store: &polymq::Store, id: QueueId) -> Result<u64, StoreError> {
    let mut n = 0u64;
    loop {
        let got = store.pop(id, PURGE_BATCH, DELIVERY_INVISIBLE, Duration::ZERO).await?;
        if got.is_empty() {
            return Ok(n);
        }
        n += got.len() as u64;
        let receipts: Vec<Receipt> = got.iter().map(|d| d.receipt).collect();
        store.ack_many(&receipts).await?;
    }
}

fn requeue_in_background(svc: &Arc<AmqpService>, receipts: Vec<Receipt>) {
    if receipts.is_empty() {
        return;
    }
    let store = Arc::clone(&svc.store);
    tokio::spawn(async move {
        for r in receipts {
            if let Err(e) = store.nack(r, NackAction::Requeue { delay_ms: 0 }).await {
                debug!(error = %e, "requeueing a delivery");
            }
        }
    });
}

/// A connection's acker: applies its acks in the order they come, one
/// `ack_many` for all that queued up while the previous one was being
/// made durable (so the batch grows exactly when the log is slow). Ends
/// when the connection drops its sender, after the last acks.
async fn acker(store: Arc<polymq::Store>, mut rx: mpsc::UnboundedReceiver<Vec<Receipt>>) {
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < ACKS_PER_BATCH_MAX {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        if let Err(e) = store.ack_many(&batch).await {
            debug!(error = %e, "acknowledging deliveries");
        }
    }
}

async fn poll_confirms(pending: &mut VecDeque<PendingConfirm>) -> Vec<(PendingConfirm, Result<(), StoreError>)> {
    std::future::poll_fn(|cx| {
        let mut done = Vec::new();
        while let Some(front) = pending.front_mut() {
            let result = match &mut front.wait {
                ConfirmWait::Nothing => Ok(()),
                ConfirmWait::Batched => break,
                ConfirmWait::Stored(ticket) => match ticket.poll_stored(cx) {
                    Poll::Ready(r) => r.map(drop),
                    Poll::Pending => break,
                },
            };
            if let Some(mut p) = pending.pop_front() {
                p.wait = ConfirmWait::Nothing;
                done.push((p, result));
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

struct PumpKey {
    channel: u16,
    epoch: u64,
    tag: Arc<str>,
}

/// Pops from one queue while the consumer's window has room and hands the
/// deliveries to the connection.
async fn pump(
    store: Arc<polymq::Store>,
    queue: QueueId,
    key: PumpKey,
    window: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<PumpEvent>,
    mut stop: watch::Receiver<bool>,
    single_active: Option<Arc<tokio::sync::Mutex<()>>>,
) {
    // x-single-active-consumer: wait our turn (consumers are served in the
    // order they registered); held until this pump ends.
    let _active = match single_active {
        Some(gate) => tokio::select! {
            g = gate.lock_owned() => Some(g),
            _ = stop.changed() => return,
        },
        None => None,
    };
    let fail = |error: StoreError| PumpEvent::Failed { channel: key.channel, epoch: key.epoch, tag: Arc::clone(&key.tag), error };
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&window).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        permit.forget();
        let mut held = 1usize;
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
                let _ = tx.send(fail(e));
                return;
            }
        };
        if popped.is_empty() {
            window.add_permits(held - 1);
            held = 1;
            popped = tokio::select! {
                r = store.pop(queue, 1, DELIVERY_INVISIBLE, POP_WAIT) => match r {
                    Ok(d) => d,
                    Err(e) => {
                        window.add_permits(1);
                        let _ = tx.send(fail(e));
                        return;
                    }
                },
                _ = stop.changed() => {
                    window.add_permits(1);
                    return;
                }
            };
            store.touch(queue);
        }
        window.add_permits(held - popped.len());
        for d in popped {
            let ev = PumpEvent::Delivery { channel: key.channel, epoch: key.epoch, tag: Arc::clone(&key.tag), delivery: d };
            if let Err(mpsc::error::SendError(PumpEvent::Delivery { delivery, .. })) = tx.send(ev) {
                // The connection is gone without draining: hand it back.
                let _ = store.nack(delivery.receipt, NackAction::Requeue { delay_ms: 0 }).await;
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Reads a stream from `from` while the consumer's window has room and
/// hands the messages to the connection; waits (long poll) at the end.
#[allow(clippy::too_many_arguments)]
async fn stream_pump(
    store: Arc<polymq::Store>,
    queue: QueueId,
    mut from: u64,
    decoded_max: usize,
    key: PumpKey,
    window: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<PumpEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&window).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        permit.forget();
        let mut held = 1usize;
        while held < POP_BATCH_MAX {
            match window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    held += 1;
                }
                Err(_) => break,
            }
        }
        let read = tokio::select! {
            r = store.read_wait(queue, from, held, STREAM_READ_BYTES_MAX, POP_WAIT) => r,
            _ = stop.changed() => {
                window.add_permits(held);
                return;
            }
        };
        let messages = match read {
            Ok(r) => r.messages,
            Err(error) => {
                window.add_permits(held);
                let _ = tx.send(PumpEvent::Failed { channel: key.channel, epoch: key.epoch, tag: Arc::clone(&key.tag), error });
                return;
            }
        };
        window.add_permits(held - messages.len().min(held));
        let start = from;
        for m in messages {
            from = m.offset + u64::from(m.message.span.max(1));
            if m.message.format == polymq_formats::record_batch::FORMAT {
                // A Kafka batch (one stored record, `span` offsets): each of
                // its records is a delivery of its own, with its own offset
                // and window slot. One that cannot be decoded (too large
                // decompressed, unknown codec) goes out raw, as one message.
                match polymq_formats::record_batch::decode(&m.message.payload, decoded_max) {
                    Ok(records) => {
                        let mut have_permit = true;
                        for r in records {
                            let offset = m.offset + u64::from(r.offset_delta);
                            if offset < start {
                                continue; // the consumer started inside this batch
                            }
                            if !have_permit {
                                let permit = tokio::select! {
                                    p = Arc::clone(&window).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                                    _ = stop.changed() => return,
                                };
                                permit.forget();
                            }
                            have_permit = false;
                            let message = Message {
                                key: r.key.unwrap_or_default(),
                                headers: polymq::mapping::headers_from_record(&r.headers),
                                payload: r.value.unwrap_or_default(),
                                timestamp_ms: u64::try_from(r.timestamp_ms).unwrap_or(0),
                                ..Message::new(Bytes::new())
                            };
                            let ev =
                                PumpEvent::Stream { channel: key.channel, epoch: key.epoch, tag: Arc::clone(&key.tag), offset, message };
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                        if have_permit {
                            window.add_permits(1);
                        }
                        continue;
                    }
                    Err(e) => debug!(error = %e, offset = m.offset, "stream consumer gets a Kafka batch undecoded"),
                }
            }
            let ev = PumpEvent::Stream {
                channel: key.channel,
                epoch: key.epoch,
                tag: Arc::clone(&key.tag),
                offset: m.offset,
                message: m.message,
            };
            if tx.send(ev).is_err() {
                return;
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
    use crate::codec::LongString;

    #[test]
    fn max_age_and_stream_offsets_parse() {
        assert_eq!(parse_max_age(b"7D"), Some(7 * 86_400_000));
        assert_eq!(parse_max_age(b"1h"), Some(3_600_000));
        assert_eq!(parse_max_age(b"30m"), Some(1_800_000));
        assert_eq!(parse_max_age(b"10s"), Some(10_000));
        assert_eq!(parse_max_age(b"1Y"), Some(365 * 86_400_000));
        for bad in [&b"0s"[..], b"10", b"s", b"10x", b"-1s"] {
            assert_eq!(parse_max_age(bad), None, "{bad:?}");
        }
        assert_eq!(StreamOffset::parse(None), Some(StreamOffset::Next));
        assert_eq!(StreamOffset::parse(Some(&AMQPValue::LongString("first".into()))), Some(StreamOffset::First));
        assert_eq!(StreamOffset::parse(Some(&AMQPValue::LongString("10m".into()))), Some(StreamOffset::Ago(600_000)));
        assert_eq!(StreamOffset::parse(Some(&AMQPValue::ShortInt(5))), Some(StreamOffset::Offset(5)));
        assert_eq!(StreamOffset::parse(Some(&AMQPValue::LongLongInt(-1))), None);
        assert_eq!(StreamOffset::parse(Some(&AMQPValue::Timestamp(1_700_000_000))), Some(StreamOffset::Timestamp(1_700_000_000_000)));
        assert_eq!(StreamOffset::parse(Some(&AMQPValue::LongString("soon".into()))), None);
    }
    use amq_protocol::protocol::BasicProperties;

    #[test]
    fn sasl_responses_parse() {
        assert_eq!(parse_plain(b"\0guest\0pw"), Some(("guest".into(), "pw".into())));
        assert_eq!(parse_plain(b"guest"), None);
        let mut t = FieldTable::default();
        t.insert("LOGIN".into(), AMQPValue::LongString("u".into()));
        t.insert("PASSWORD".into(), AMQPValue::LongString(LongString::from("p")));
        let bytes = codec::table_to_bytes(&t);
        assert_eq!(parse_amqplain(&bytes[4..]), Some(("u".into(), "p".into())));
    }

    #[test]
    fn unlimited_prefetch_is_capped() {
        assert_eq!(window_size(0), UNLIMITED_PREFETCH_CAP);
        assert_eq!(window_size(5), 5);
        let _ = BasicProperties::default();
    }
}
