//! The AMQP 0-9-1 frame reader and writer: bytes in, frames out, no I/O.
//!
//! Frame structure is read here (`[u8 type][u16 channel][u32 size][payload][0xCE]`);
//! method arguments and content-header properties are parsed by the
//! `amq-protocol` crate. That crate never rejects a huge frame header and
//! parses nested field tables recursively, so two checks happen before it
//! sees a byte: the declared size against `frame_max` (before the body is
//! buffered) and the nesting depth of every field table in the frame (so a
//! 128 KiB frame of nested tables cannot overflow the stack). Everything
//! else about `amq-protocol` stays behind this module so it can be swapped.

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{parse_class, AMQPClass, BasicProperties};
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use amq_protocol::protocol;
pub use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::limits::TABLE_DEPTH_MAX;

/// What a client sends first (and what we answer a wrong header with).
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Type, channel and size.
pub const FRAME_HEADER_BYTES: usize = 7;
pub const FRAME_END: u8 = 0xCE;
/// Header and end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_BYTES + 1;

const TYPE_METHOD: u8 = 1;
const TYPE_HEADER: u8 = 2;
const TYPE_BODY: u8 = 3;
const TYPE_HEARTBEAT: u8 = 8;

/// The class of `basic`: the only one with content.
pub const CLASS_BASIC: u16 = 60;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method(u16, AMQPClass),
    Header(u16, ContentHeader),
    Body(u16, Bytes),
    Heartbeat(u16),
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Header(c, _) | Frame::Body(c, _) | Frame::Heartbeat(c) => *c,
        }
    }
}

/// A content header frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: BasicProperties,
}

/// Why a frame could not be read. Every one of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the negotiated frame_max of {max}")]
    TooLarge { size: u64, max: u32 },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadEnd(u8),
    #[error("field tables nested deeper than {TABLE_DEPTH_MAX} levels")]
    TooDeep,
    #[error("cannot decode method {class_id}.{method_id} on channel {channel}")]
    Method { channel: u16, class_id: u16, method_id: u16 },
    #[error("cannot decode content header on channel {channel}")]
    Header { channel: u16 },
}

impl FrameError {
    /// The connection.close reply code (RabbitMQ's choices).
    pub fn reply_code(&self) -> u16 {
        match self {
            FrameError::Method { .. } | FrameError::Header { .. } | FrameError::TooDeep => crate::reply::SYNTAX_ERROR,
            _ => crate::reply::FRAME_ERROR,
        }
    }
}

/// Reads one frame from the front of `buf` if it is complete. `frame_max` is
/// the largest whole frame (header and end octet included), as negotiated.
/// The size is checked from the 7-byte header alone, before any more of the
/// frame is waited for.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let kind = buf[0];
    if !matches!(kind, TYPE_METHOD | TYPE_HEADER | TYPE_BODY | TYPE_HEARTBEAT) {
        return Err(FrameError::UnknownType(kind));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let total = u64::from(size) + FRAME_OVERHEAD as u64;
    if total > u64::from(frame_max) {
        return Err(FrameError::TooLarge { size: total, max: frame_max });
    }
    let total = total as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(FrameError::BadEnd(buf[total - 1]));
    }
    let mut frame = buf.split_to(total);
    frame.advance(FRAME_HEADER_BYTES);
    frame.truncate(size as usize);
    let payload = frame.freeze();
    match kind {
        TYPE_METHOD => decode_method(channel, &payload).map(|m| Some(Frame::Method(channel, m))),
        TYPE_HEADER => decode_header(channel, &payload).map(|h| Some(Frame::Header(channel, h))),
        TYPE_BODY => Ok(Some(Frame::Body(channel, payload))),
        _ => Ok(Some(Frame::Heartbeat(channel))),
    }
}

fn decode_method(channel: u16, payload: &[u8]) -> Result<AMQPClass, FrameError> {
    let (class_id, method_id) = match payload {
        [a, b, c, d, ..] => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
        _ => (0, 0),
    };
    let err = FrameError::Method { channel, class_id, method_id };
    if let Some(m) = decode_hot_method(class_id, method_id, &payload[4.min(payload.len())..]) {
        return Ok(m);
    }
    if let Some(at) = table_offset(class_id, method_id, payload) {
        check_table_depth(payload, at)?;
    }
    match parse_class(payload) {
        Ok(([], m)) => Ok(m),
        _ => Err(err),
    }
}

fn decode_header(channel: u16, payload: &[u8]) -> Result<ContentHeader, FrameError> {
    if let Some(at) = header_table_offset(payload) {
        check_table_depth(payload, at)?;
    }
    match amq_protocol::frame::parsing::parse_content_header(payload) {
        Ok(([], h)) => Ok(ContentHeader { class_id: h.class_id, body_size: h.body_size, properties: h.properties }),
        _ => Err(FrameError::Header { channel }),
    }
}

/// The methods every message passes through, read directly: `amq-protocol`
/// builds a Vec of owned flag names for each method with bit fields, which
/// was a measurable share of the broker's allocations per message. `None`
/// for anything else or anything unusual (invalid UTF-8, trailing bytes):
/// the generic parser then decides, with the same result and errors.
fn decode_hot_method(class_id: u16, method_id: u16, a: &[u8]) -> Option<AMQPClass> {
    use amq_protocol::protocol::basic;
    let tag_and_bits = || -> Option<(u64, u8)> {
        match a {
            [t @ .., bits] if t.len() == 8 => Some((u64::from_be_bytes(t.try_into().ok()?), *bits)),
            _ => None,
        }
    };
    let m = match (class_id, method_id) {
        (CLASS_BASIC, 40) => {
            // reserved short, exchange, routing key, bits.
            let (exchange, at) = shortstr_at(a, 2)?;
            let (routing_key, at) = shortstr_at(a, at)?;
            let [bits] = a.get(at..)? else { return None };
            basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            })
        }
        (CLASS_BASIC, 80) => {
            let (delivery_tag, bits) = tag_and_bits()?;
            basic::AMQPMethod::Ack(basic::Ack { delivery_tag, multiple: bits & 1 != 0 })
        }
        (CLASS_BASIC, 90) => {
            let (delivery_tag, bits) = tag_and_bits()?;
            basic::AMQPMethod::Reject(basic::Reject { delivery_tag, requeue: bits & 1 != 0 })
        }
        (CLASS_BASIC, 120) => {
            let (delivery_tag, bits) = tag_and_bits()?;
            basic::AMQPMethod::Nack(basic::Nack { delivery_tag, multiple: bits & 1 != 0, requeue: bits & 2 != 0 })
        }
        _ => return None,
    };
    Some(AMQPClass::Basic(m))
}

/// A UTF-8 short string at `at` and the offset after it.
fn shortstr_at(p: &[u8], at: usize) -> Option<(&str, usize)> {
    let end = skip_shortstr(p, at)?;
    Some((std::str::from_utf8(&p[at + 1..end]).ok()?, end))
}

/// Skips a short string at `at`, returning the offset after it.
fn skip_shortstr(p: &[u8], at: usize) -> Option<usize> {
    let len = *p.get(at)? as usize;
    let end = at + 1 + len;
    (end <= p.len()).then_some(end)
}

/// Where the field table of a method that carries one starts (so its depth
/// can be checked), by the layouts of the 0-9-1 spec.
fn table_offset(class_id: u16, method_id: u16, p: &[u8]) -> Option<usize> {
    let args = 4;
    match (class_id, method_id) {
        // connection.start: two octets, then server-properties.
        (10, 10) => Some(args + 2),
        // connection.start-ok: client-properties first.
        (10, 11) => Some(args),
        // exchange.declare: reserved short, exchange, type, bits, arguments.
        (40, 10) => Some(skip_shortstr(p, skip_shortstr(p, args + 2)?)? + 1),
        // exchange.bind / unbind: reserved, destination, source, key, bits, arguments.
        (40, 30) | (40, 40) => Some(skip_shortstr(p, skip_shortstr(p, skip_shortstr(p, args + 2)?)?)? + 1),
        // queue.declare: reserved, queue, bits, arguments.
        (50, 10) => Some(skip_shortstr(p, args + 2)? + 1),
        // queue.bind: reserved, queue, exchange, key, bits, arguments.
        (50, 20) => Some(skip_shortstr(p, skip_shortstr(p, skip_shortstr(p, args + 2)?)?)? + 1),
        // queue.unbind: reserved, queue, exchange, key, arguments.
        (50, 50) => skip_shortstr(p, skip_shortstr(p, skip_shortstr(p, args + 2)?)?),
        // basic.consume: reserved, queue, consumer tag, bits, arguments.
        (60, 20) => Some(skip_shortstr(p, skip_shortstr(p, args + 2)?)? + 1),
        _ => None,
    }
}

/// Where the headers table of a content header starts, if it has one.
fn header_table_offset(p: &[u8]) -> Option<usize> {
    // class, weight, body size, then the property flags.
    let flags_at = 2 + 2 + 8;
    let flags = u16::from_be_bytes([*p.get(flags_at)?, *p.get(flags_at + 1)?]);
    if flags & (1 << 13) == 0 {
        return None;
    }
    let mut at = flags_at + 2;
    if flags & (1 << 15) != 0 {
        at = skip_shortstr(p, at)?;
    }
    if flags & (1 << 14) != 0 {
        at = skip_shortstr(p, at)?;
    }
    Some(at)
}

/// Walks the field table at `at` without recursion deeper than
/// [`TABLE_DEPTH_MAX`]. A malformed table is left for the real parser to
/// reject; only excessive depth is an error here.
fn check_table_depth(p: &[u8], at: usize) -> Result<(), FrameError> {
    match walk_table(p, at, 0) {
        Err(Walk::TooDeep) => Err(FrameError::TooDeep),
        _ => Ok(()),
    }
}

enum Walk {
    TooDeep,
    Malformed,
}

fn u32_at(p: &[u8], at: usize) -> Result<usize, Walk> {
    match p.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize),
        None => Err(Walk::Malformed),
    }
}

/// Returns the offset after the table.
fn walk_table(p: &[u8], at: usize, depth: usize) -> Result<usize, Walk> {
    if depth >= TABLE_DEPTH_MAX {
        return Err(Walk::TooDeep);
    }
    let len = u32_at(p, at)?;
    let end = (at + 4).checked_add(len).filter(|&e| e <= p.len()).ok_or(Walk::Malformed)?;
    let mut i = at + 4;
    while i < end {
        i = skip_shortstr(p, i).ok_or(Walk::Malformed)?;
        i = walk_value(p, i, depth)?;
    }
    Ok(end)
}

fn walk_array(p: &[u8], at: usize, depth: usize) -> Result<usize, Walk> {
    if depth >= TABLE_DEPTH_MAX {
        return Err(Walk::TooDeep);
    }
    let len = u32_at(p, at)?;
    let end = (at + 4).checked_add(len).filter(|&e| e <= p.len()).ok_or(Walk::Malformed)?;
    let mut i = at + 4;
    while i < end {
        i = walk_value(p, i, depth)?;
    }
    Ok(end)
}

/// A typed value at `at` (type octet first); returns the offset after it.
fn walk_value(p: &[u8], at: usize, depth: usize) -> Result<usize, Walk> {
    let kind = *p.get(at).ok_or(Walk::Malformed)?;
    let i = at + 1;
    let fixed = |n: usize| if i + n <= p.len() { Ok(i + n) } else { Err(Walk::Malformed) };
    match kind {
        b't' | b'b' | b'B' => fixed(1),
        b's' | b'u' => fixed(2),
        b'I' | b'i' | b'f' => fixed(4),
        b'l' | b'L' | b'd' | b'T' => fixed(8),
        b'D' => fixed(5),
        b'V' => Ok(i),
        b'S' | b'x' => {
            let len = u32_at(p, i)?;
            (i + 4).checked_add(len).filter(|&e| e <= p.len()).ok_or(Walk::Malformed)
        }
        b'F' => walk_table(p, i, depth + 1),
        b'A' => walk_array(p, i, depth + 1),
        _ => Err(Walk::Malformed),
    }
}

// ---- encoding ----

fn generate(frame: &AMQPFrame, out: &mut Vec<u8>) {
    let buf = std::mem::take(out);
    match gen_frame(frame)(WriteContext::from(buf)) {
        Ok(ctx) => *out = ctx.write,
        // Writing into a Vec cannot run out of room; a failure means a value
        // the generator refuses, which our own code must not produce.
        Err(e) => tracing::error!(error = ?e, "cannot encode an AMQP frame"),
    }
}

/// Appends a method frame.
pub fn encode_method(channel: u16, method: AMQPClass, out: &mut Vec<u8>) {
    generate(&AMQPFrame::Method(channel, method), out);
}

/// Appends a basic.deliver, the method of every delivery, written directly
/// (the same bytes as [`encode_method`], without `amq-protocol`'s owned flag
/// names). Strings are cut as [`short`] cuts them.
pub fn encode_deliver(
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    out: &mut Vec<u8>,
) {
    let (consumer_tag, exchange, routing_key) = (cut_short(consumer_tag), cut_short(exchange), cut_short(routing_key));
    let size = 4 + 1 + consumer_tag.len() + 8 + 1 + 1 + exchange.len() + 1 + routing_key.len();
    out.reserve(FRAME_OVERHEAD + size);
    out.put_u8(TYPE_METHOD);
    out.put_u16(channel);
    out.put_u32(size as u32);
    out.put_u16(CLASS_BASIC);
    out.put_u16(60);
    put_short(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    put_short(out, exchange);
    put_short(out, routing_key);
    out.put_u8(FRAME_END);
}

/// Appends a basic.ack (a publisher confirm), written directly.
pub fn encode_basic_ack(channel: u16, delivery_tag: u64, multiple: bool, out: &mut Vec<u8>) {
    out.put_u8(TYPE_METHOD);
    out.put_u16(channel);
    out.put_u32(4 + 8 + 1);
    out.put_u16(CLASS_BASIC);
    out.put_u16(80);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(multiple));
    out.put_u8(FRAME_END);
}

fn put_short(out: &mut Vec<u8>, s: &str) {
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

/// `s` cut to at most 255 bytes on a char boundary.
fn cut_short(s: &str) -> &str {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends a content header and the body split into frames of at most
/// `frame_max` bytes.
pub fn encode_content(channel: u16, properties: BasicProperties, body: &[u8], frame_max: u32, out: &mut Vec<u8>) {
    let header = AMQPContentHeader { class_id: CLASS_BASIC, body_size: body.len() as u64, properties };
    generate(&AMQPFrame::Header(channel, header), out);
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for part in body.chunks(chunk) {
        out.put_u8(TYPE_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

pub fn encode_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[TYPE_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Encodes a field table as its wire bytes (length first).
pub fn table_to_bytes(table: &FieldTable) -> Vec<u8> {
    match amq_protocol::types::generation::gen_field_table(table)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write,
        Err(_) => Vec::new(),
    }
}

/// Decodes a field table written by [`table_to_bytes`] (or a client).
pub fn table_from_bytes(bytes: &[u8]) -> Option<FieldTable> {
    if let Err(Walk::TooDeep | Walk::Malformed) = walk_table(bytes, 0, 0) {
        return None;
    }
    match amq_protocol::types::parsing::parse_field_table(bytes) {
        Ok(([], t)) => Some(t),
        _ => None,
    }
}

/// A short string, cut at 255 bytes (on a char boundary): the wire cannot
/// carry more, and `ShortString::from` would panic.
pub fn short(s: &str) -> ShortString {
    ShortString::try_new(cut_short(s)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{basic, queue};

    proptest::proptest! {
        /// The direct paths read and write exactly what `amq-protocol` does.
        #[test]
        fn hot_methods_match_the_generic_codec(
            ch in 0u16..4,
            tag in proptest::prelude::any::<u64>(),
            bits in 0u8..4,
            ex in "[a-z.é]{0,300}",
            rk in "[a-zA-Z0-9.#*ü]{0,300}",
            ctag in "[a-z-]{0,40}",
        ) {
            let (m, r) = (bits & 1 != 0, bits & 2 != 0);
            for method in [
                basic::AMQPMethod::Publish(basic::Publish { exchange: short(&ex), routing_key: short(&rk), mandatory: m, immediate: r }),
                basic::AMQPMethod::Ack(basic::Ack { delivery_tag: tag, multiple: m }),
                basic::AMQPMethod::Nack(basic::Nack { delivery_tag: tag, multiple: m, requeue: r }),
                basic::AMQPMethod::Reject(basic::Reject { delivery_tag: tag, requeue: m }),
            ] {
                let class = AMQPClass::Basic(method);
                let bytes = method_bytes(class.clone());
                let payload = &bytes[FRAME_HEADER_BYTES..bytes.len() - 1];
                let (c, mid) = (class.get_amqp_class_id(), class.get_amqp_method_id());
                proptest::prop_assert_eq!(decode_hot_method(c, mid, &payload[4..]), Some(class.clone()));
                let mut buf = BytesMut::from(&bytes[..]);
                proptest::prop_assert_eq!(decode_frame(&mut buf, 1 << 20), Ok(Some(Frame::Method(3, class))));
            }
            let mut direct = Vec::new();
            encode_deliver(ch, &ctag, tag, m, &ex, &rk, &mut direct);
            let mut generic = Vec::new();
            let deliver = basic::Deliver { consumer_tag: short(&ctag), delivery_tag: tag, redelivered: m, exchange: short(&ex), routing_key: short(&rk) };
            encode_method(ch, AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)), &mut generic);
            proptest::prop_assert_eq!(&direct, &generic);
            let (mut direct, mut generic) = (Vec::new(), Vec::new());
            encode_basic_ack(ch, tag, m, &mut direct);
            encode_method(ch, AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag: tag, multiple: m })), &mut generic);
            proptest::prop_assert_eq!(direct, generic);
        }
    }

    #[test]
    fn unusual_hot_methods_go_to_the_generic_parser() {
        // Trailing bytes, invalid UTF-8, truncation: not taken by the direct path.
        assert_eq!(decode_hot_method(60, 80, &[0; 10]), None);
        assert_eq!(decode_hot_method(60, 80, &[0; 8]), None);
        assert_eq!(decode_hot_method(60, 40, &[0, 0, 1, 0xff, 0, 0]), None);
        assert_eq!(decode_hot_method(60, 40, &[0, 0, 0, 0]), None);
        assert_eq!(decode_hot_method(60, 40, &[0, 0, 0, 0, 0, 0]), None);
    }

    fn method_bytes(m: AMQPClass) -> Vec<u8> {
        let mut out = Vec::new();
        encode_method(3, m, &mut out);
        out
    }

    #[test]
    fn a_method_round_trips_and_partial_input_waits() {
        let m = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        }));
        let bytes = method_bytes(m.clone());
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert_eq!(decode_frame(&mut buf, 4096), Ok(None));
        buf.extend_from_slice(&bytes[bytes.len() - 1..]);
        assert_eq!(decode_frame(&mut buf, 4096), Ok(Some(Frame::Method(3, m))));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_huge_header_is_refused_before_its_body_arrives() {
        let mut buf = BytesMut::from(&[TYPE_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode_frame(&mut buf, 131_072), Err(FrameError::TooLarge { .. })));
        let mut buf = BytesMut::from(&[9u8, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 131_072), Err(FrameError::UnknownType(9)));
        let mut buf = BytesMut::from(&[TYPE_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 131_072), Err(FrameError::BadEnd(0)));
    }

    #[test]
    fn content_splits_at_frame_max_and_reads_back() {
        let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let props = BasicProperties::default().with_content_type("a/b".into());
        let mut out = Vec::new();
        encode_content(1, props.clone(), &body, 300, &mut out);
        let mut buf = BytesMut::from(&out[..]);
        let Ok(Some(Frame::Header(1, h))) = decode_frame(&mut buf, 300) else { panic!("header") };
        assert_eq!((h.body_size, h.properties), (1000, props));
        let mut got = Vec::new();
        while let Ok(Some(Frame::Body(1, b))) = decode_frame(&mut buf, 300) {
            assert!(b.len() <= 300 - FRAME_OVERHEAD);
            got.extend_from_slice(&b);
        }
        assert_eq!(got, body);
    }

    /// A table nested far deeper than any client needs: refused, not parsed
    /// recursively (which would overflow the stack).
    #[test]
    fn deeply_nested_tables_are_refused() {
        let depth = 20_000;
        // Build from the inside out: each level is `F` + length + an entry "".
        let mut inner: Vec<u8> = vec![0, 0, 0, 0];
        for _ in 0..depth {
            let mut t = Vec::with_capacity(inner.len() + 6);
            let entry_len = 1 + 1 + inner.len();
            t.extend_from_slice(&(entry_len as u32).to_be_bytes());
            t.push(0);
            t.push(b'F');
            t.extend_from_slice(&inner);
            inner = t;
        }
        let mut payload = vec![0, 60, 0, 20, 0, 0, 1, b'q', 0, 0];
        payload.extend_from_slice(&inner);
        let mut frame = vec![TYPE_METHOD, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(FRAME_END);
        let mut buf = BytesMut::from(&frame[..]);
        assert_eq!(decode_frame(&mut buf, 1 << 20), Err(FrameError::TooDeep));
    }

    #[test]
    fn tables_round_trip_and_short_strings_are_cut_safely() {
        let mut t = FieldTable::default();
        t.insert("x".into(), AMQPValue::LongString("y".into()));
        t.insert("n".into(), AMQPValue::LongInt(-3));
        assert_eq!(table_from_bytes(&table_to_bytes(&t)), Some(t));
        assert_eq!(short(&"é".repeat(200)).as_str().len(), 254);
        let _ = basic::Ack { delivery_tag: 1, multiple: false };
    }
}
