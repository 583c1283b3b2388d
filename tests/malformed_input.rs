//! Malformed input over real sockets against the real `polymq` binary: each
//! bad connection must get its protocol's error or a close, within a bounded
//! time and without the broker's memory jumping, while a well-behaved client
//! on another connection keeps working throughout (a probe thread publishing
//! MQTT QoS 1 messages and checking every PUBACK).
//!
//! Hand-written bytes on purpose: client libraries refuse to send what these
//! tests send.

mod broker_common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use broker_common::*;

/// How long a refused connection may take to be closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// Handshake timeouts of MQTT and AMQP are 10 s; a slow client must be gone by this.
const SLOW_CLOSE_WITHIN: Duration = Duration::from_secs(20);
/// Resident memory the broker may gain while refusing one oversize announcement.
const RSS_GROWTH_MAX: u64 = 64 * 1024 * 1024;
/// A probe round trip slower than this counts as a failure ("keeps working").
const PROBE_ROUND_TRIP_MAX: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The well-behaved client.
// ---------------------------------------------------------------------------

/// MQTT 3.1.1: CONNECT, CONNACK, PUBLISH QoS 1, PUBACK, DISCONNECT.
fn mqtt_round_trip(addr: SocketAddr, client_id: &str) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, PROBE_ROUND_TRIP_MAX)?;
    s.set_read_timeout(Some(PROBE_ROUND_TRIP_MAX))?;
    s.write_all(&mqtt_connect(client_id))?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).context("reading CONNACK")?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        bail!("CONNACK {connack:02x?}");
    }
    let topic = b"probe/t";
    let payload = b"hello";
    let remaining = 2 + topic.len() + 2 + payload.len();
    let mut publish = vec![0x32, remaining as u8, 0, topic.len() as u8];
    publish.extend_from_slice(topic);
    publish.extend_from_slice(&[0x00, 0x01]);
    publish.extend_from_slice(payload);
    s.write_all(&publish)?;
    let mut puback = [0u8; 4];
    s.read_exact(&mut puback).context("reading PUBACK")?;
    if puback != [0x40, 0x02, 0x00, 0x01] {
        bail!("PUBACK {puback:02x?}");
    }
    s.write_all(&[0xe0, 0x00])?;
    Ok(())
}

fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// Runs MQTT round trips on fresh connections until stopped; records failures.
struct Probe {
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Probe {
    fn start(addr: SocketAddr) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let trips = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, t, f) = (Arc::clone(&stop), Arc::clone(&trips), Arc::clone(&failures));
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let started = Instant::now();
                match mqtt_round_trip(addr, &format!("probe-{n}")) {
                    Ok(()) if started.elapsed() <= PROBE_ROUND_TRIP_MAX => {}
                    Ok(()) => f.lock().expect("lock").push(format!("round trip {n} took {:?}", started.elapsed())),
                    Err(e) => f.lock().expect("lock").push(format!("round trip {n}: {e:#}")),
                }
                t.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Probe { stop, trips, failures, thread: Some(thread) }
    }

    /// Waits for one more round trip (so one ran after all the bad input),
    /// stops the probe and asserts it never failed.
    fn finish(mut self) {
        let seen = self.trips.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.trips.load(Ordering::Relaxed) < seen + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("probe thread");
        }
        let failures = self.failures.lock().expect("lock");
        assert!(failures.is_empty(), "the well-behaved client failed while the bad one ran: {failures:#?}");
        assert!(self.trips.load(Ordering::Relaxed) >= seen + 2, "no probe round trip completed after the bad input (30 s)");
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// Reads until the peer closes or `within` passes. `Ok(bytes)` once closed.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("still open after {within:?} (read {} bytes: {:02x?})", got.len(), &got[..got.len().min(64)]);
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            // A reset is a close too (the broker closed with unread input).
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => return Ok(got),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `bytes` (ignoring a reset: the broker may close before reading it
/// all) and expects the connection to be closed within `within`.
fn send_and_expect_close(addr: SocketAddr, bytes: &[u8], within: Duration) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    let _ = s.write_all(bytes);
    read_until_closed(&mut s, within)
}

fn start() -> (Broker, BTreeMap<String, SocketAddr>) {
    let mut broker = Broker::serve(&[]);
    let addrs = broker.wait_healthy();
    (broker, addrs)
}

fn amqp_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xce);
    f
}

fn amqp_method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    amqp_frame(1, 0, &p)
}

fn short_str(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// Reads one AMQP frame: (type, channel, payload).
fn read_amqp_frame(s: &mut TcpStream) -> Result<(u8, u16, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = [0u8; 7];
    s.read_exact(&mut head)?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    if size > 1 << 20 {
        bail!("frame of {size} bytes from the broker");
    }
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload)?;
    if payload.pop() != Some(0xce) {
        bail!("frame end octet missing");
    }
    Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload))
}

/// The (class, method) of a method frame's payload.
fn method_id(payload: &[u8]) -> (u16, u16) {
    (u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]]))
}

/// Protocol header, start/start-ok (PLAIN guest/guest), tune/tune-ok, open/open-ok.
fn amqp_open(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"AMQP\x00\x00\x09\x01")?;
    let (_, _, start) = read_amqp_frame(&mut s)?;
    if method_id(&start) != (10, 10) {
        bail!("expected connection.start, got {:?}", method_id(&start));
    }
    let mut start_ok = 0u32.to_be_bytes().to_vec(); // empty client-properties
    start_ok.extend(short_str("PLAIN"));
    let response = b"\x00guest\x00guest";
    start_ok.extend_from_slice(&(response.len() as u32).to_be_bytes());
    start_ok.extend_from_slice(response);
    start_ok.extend(short_str("en_US"));
    s.write_all(&amqp_method(10, 11, &start_ok))?;
    let (_, _, tune) = read_amqp_frame(&mut s)?;
    if method_id(&tune) != (10, 30) {
        bail!("expected connection.tune, got {:?}", method_id(&tune));
    }
    // tune-ok: channel_max 16, frame_max 131072, heartbeat 0.
    let mut tune_ok = 16u16.to_be_bytes().to_vec();
    tune_ok.extend_from_slice(&131_072u32.to_be_bytes());
    tune_ok.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&amqp_method(10, 31, &tune_ok))?;
    let mut open = short_str("/");
    open.extend(short_str(""));
    open.push(0);
    s.write_all(&amqp_method(10, 40, &open))?;
    let (_, _, open_ok) = read_amqp_frame(&mut s)?;
    if method_id(&open_ok) != (10, 41) {
        bail!("expected connection.open-ok, got {:?}", method_id(&open_ok));
    }
    Ok(s)
}

/// Whether `bytes` hold a connection.close (10, 50) with `code`.
fn has_connection_close(bytes: &[u8], code: u16) -> bool {
    let needle = [0x00, 0x0a, 0x00, 0x32, (code >> 8) as u8, code as u8];
    bytes.windows(needle.len()).any(|w| w == needle)
}

fn kafka_request(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut p = api_key.to_be_bytes().to_vec();
    p.extend_from_slice(&version.to_be_bytes());
    p.extend_from_slice(&correlation_id.to_be_bytes());
    p.extend_from_slice(&4i16.to_be_bytes());
    p.extend_from_slice(b"test");
    p.extend_from_slice(body);
    let mut f = (p.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(&p);
    f
}

/// ApiVersions v0 on a fresh connection answers with error 0 and our table.
fn kafka_api_versions_ok(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&kafka_request(18, 0, 42, &[]))?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size)?;
    let mut resp = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut resp)?;
    if resp[..4] != 42i32.to_be_bytes() || resp[4..6] != [0, 0] {
        bail!("ApiVersions answered {:02x?}", &resp[..resp.len().min(16)]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------

#[test]
fn oversize_length_prefixes_are_refused_before_buffering() {
    let (broker, addrs) = start();
    let probe = Probe::start(addrs["mqtt"]);
    let rss_before = broker.rss_bytes();

    // MQTT: remaining length 268,435,455 (the varint maximum).
    send_and_expect_close(addrs["mqtt"], &[0x10, 0xff, 0xff, 0xff, 0x7f, 0x00], CLOSE_WITHIN).expect("MQTT oversize CONNECT");

    // AMQP: a 4 GiB frame header right after the protocol header, and after a
    // full handshake: connection.close 501 FRAME_ERROR.
    let mut huge = b"AMQP\x00\x00\x09\x01".to_vec();
    huge.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]);
    send_and_expect_close(addrs["amqp"], &huge, CLOSE_WITHIN).expect("AMQP 4 GiB frame before the handshake");
    let mut s = amqp_open(addrs["amqp"]).expect("AMQP handshake");
    let _ = s.write_all(&[1, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    let got = read_until_closed(&mut s, CLOSE_WITHIN).expect("AMQP 4 GiB frame after the handshake");
    assert!(has_connection_close(&got, 501), "expected connection.close 501, got {got:02x?}");

    // Kafka: a 2 GiB request size; a negative one.
    send_and_expect_close(addrs["kafka"], &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0], CLOSE_WITHIN).expect("Kafka 2 GiB request");
    send_and_expect_close(addrs["kafka"], &[0xff, 0xff, 0xff, 0xfe], CLOSE_WITHIN).expect("Kafka negative size");

    let growth = broker.rss_bytes().saturating_sub(rss_before);
    assert!(growth < RSS_GROWTH_MAX, "RSS grew by {growth} bytes");
    kafka_api_versions_ok(addrs["kafka"]).expect("Kafka still answers");
    probe.finish();
}

#[test]
fn a_kafka_array_count_of_2_pow_31_is_refused_without_allocating() {
    let (broker, addrs) = start();
    let probe = Probe::start(addrs["mqtt"]);
    let rss_before = broker.rss_bytes();
    // Metadata v1: topics array announcing i32::MAX elements in a few bytes;
    // then CreateTopics v0, OffsetCommit v2 and Produce v3 shapes doing the same.
    let cases: [(i16, i16, Vec<u8>); 4] = [
        (3, 1, vec![0x7f, 0xff, 0xff, 0xff, 0, 1]),
        (19, 0, vec![0x7f, 0xff, 0xff, 0xff]),
        (8, 2, [&[0, 1, b'g'][..], &[0, 0, 0, 1, 0, 1, b'm', 0, 0, 0, 0, 0, 0, 0, 0], &[0x7f, 0xff, 0xff, 0xff]].concat()),
        (0, 3, [&[0xff, 0xff, 0xff, 0xff, 0, 0, 0x75, 0x30][..], &[0x7f, 0xff, 0xff, 0xff]].concat()),
    ];
    for (key, version, body) in cases {
        let got = send_and_expect_close(addrs["kafka"], &kafka_request(key, version, 1, &body), CLOSE_WITHIN)
            .unwrap_or_else(|e| panic!("api {key} v{version}: {e:#}"));
        assert!(got.is_empty(), "api {key} v{version} answered {got:02x?} to a malformed request");
    }
    let growth = broker.rss_bytes().saturating_sub(rss_before);
    assert!(growth < RSS_GROWTH_MAX, "RSS grew by {growth} bytes");
    kafka_api_versions_ok(addrs["kafka"]).expect("Kafka still answers");
    probe.finish();
}

#[test]
fn the_wrong_protocol_on_each_port_is_closed() {
    let (_broker, addrs) = start();
    let probe = Probe::start(addrs["mqtt"]);
    let amqp_header = b"AMQP\x00\x00\x09\x01";
    let http_get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let kafka = kafka_request(18, 0, 1, &[]);
    let connect = mqtt_connect("wrong-port");

    for (name, bytes) in [("AMQP header", &amqp_header[..]), ("HTTP", http_get), ("Kafka ApiVersions", &kafka)] {
        send_and_expect_close(addrs["mqtt"], bytes, CLOSE_WITHIN).unwrap_or_else(|e| panic!("{name} on the MQTT port: {e:#}"));
    }
    // AMQP answers anything that is not its header with its header, then closes.
    for (name, bytes) in [("MQTT CONNECT", &connect[..]), ("HTTP", http_get), ("Kafka ApiVersions", &kafka)] {
        let got = send_and_expect_close(addrs["amqp"], bytes, CLOSE_WITHIN).unwrap_or_else(|e| panic!("{name} on the AMQP port: {e:#}"));
        assert_eq!(got, amqp_header, "{name} on the AMQP port");
    }
    for (name, bytes) in [("MQTT CONNECT", &connect[..]), ("HTTP", http_get), ("AMQP header", amqp_header)] {
        send_and_expect_close(addrs["kafka"], bytes, CLOSE_WITHIN).unwrap_or_else(|e| panic!("{name} on the Kafka port: {e:#}"));
    }
    probe.finish();
}

#[test]
fn garbage_after_a_valid_handshake_is_closed() {
    let (_broker, addrs) = start();
    let probe = Probe::start(addrs["mqtt"]);
    let garbage: Vec<u8> = (0..64u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80).collect();

    let mut s = TcpStream::connect(addrs["mqtt"]).expect("connect");
    s.write_all(&mqtt_connect("garbage")).expect("CONNECT");
    let mut connack = [0u8; 4];
    s.set_read_timeout(Some(CLOSE_WITHIN)).expect("timeout");
    s.read_exact(&mut connack).expect("CONNACK");
    let _ = s.write_all(&garbage);
    read_until_closed(&mut s, CLOSE_WITHIN).expect("MQTT garbage after CONNECT");

    let mut s = amqp_open(addrs["amqp"]).expect("AMQP handshake");
    let _ = s.write_all(&garbage);
    let got = read_until_closed(&mut s, CLOSE_WITHIN).expect("AMQP garbage after open");
    assert!(has_connection_close(&got, 501), "expected connection.close 501 FRAME_ERROR, got {got:02x?}");

    let mut s = TcpStream::connect(addrs["kafka"]).expect("connect");
    s.write_all(&kafka_request(18, 0, 7, &[])).expect("ApiVersions");
    let mut size = [0u8; 4];
    s.set_read_timeout(Some(CLOSE_WITHIN)).expect("timeout");
    s.read_exact(&mut size).expect("ApiVersions response");
    let mut resp = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut resp).expect("ApiVersions body");
    let mut frame = 20i32.to_be_bytes().to_vec();
    frame.extend_from_slice(&garbage[..20]);
    let _ = s.write_all(&frame);
    read_until_closed(&mut s, CLOSE_WITHIN).expect("Kafka garbage after ApiVersions");
    probe.finish();
}

#[test]
fn slow_handshakes_are_closed_within_the_handshake_timeout() {
    // Kafka has no handshake: its per-request read deadline (30 s by
    // default) is set short here through the environment.
    let listen =
        ["--mqtt-listen", "127.0.0.1:0", "--amqp-listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"];
    let mut broker = Broker::serve_raw(&listen, &[("POLYMQ_KAFKA_REQUEST_READ_TIMEOUT_MS", "5000")]);
    let addrs = broker.wait_healthy();
    let probe = Probe::start(addrs["mqtt"]);
    // One byte a second of a valid start: the handshake timeout (10 s) ends it.
    let slow = |addr: SocketAddr, bytes: Vec<u8>| {
        std::thread::spawn(move || -> Result<Duration> {
            let started = Instant::now();
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_millis(1000)))?;
            let mut buf = [0u8; 64];
            for b in bytes.iter().cycle() {
                if started.elapsed() > SLOW_CLOSE_WITHIN {
                    bail!("still open after {SLOW_CLOSE_WITHIN:?}");
                }
                if s.write_all(&[*b]).is_err() {
                    return Ok(started.elapsed());
                }
                match s.read(&mut buf) {
                    Ok(0) => return Ok(started.elapsed()),
                    Ok(_) => {} // AMQP's protocol header / connection.start
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return Ok(started.elapsed()),
                }
            }
            unreachable!("cycle never ends")
        })
    };
    let mut long_connect = mqtt_connect(&"s".repeat(100));
    long_connect.truncate(long_connect.len() - 1);
    let mqtt = slow(addrs["mqtt"], long_connect);
    let amqp = slow(addrs["amqp"], b"AMQP\x00\x00\x09\x01\x01\x00\x00\x00\x00\x01\x00".to_vec());
    // A Kafka ApiVersions v0 request, one byte a second.
    let kafka = slow(addrs["kafka"], kafka_request(18, 0, 1, &[]));
    for (name, t) in [("MQTT", mqtt), ("AMQP", amqp), ("Kafka", kafka)] {
        let took = t.join().expect("slow client thread").unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(took < SLOW_CLOSE_WITHIN, "{name} slow client closed only after {took:?}");
    }
    probe.finish();
}
