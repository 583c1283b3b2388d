//! End-to-end tests of AMQP 0-9-1 with lapin against a real in-process
//! polymq server over real sockets (see `amqp_common`).

mod amqp_common;

use std::time::Duration;

use amqp_common::{error_text, next, nothing, TestBroker, WAIT};
use anyhow::{ensure, Context, Result};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use polymq_amqp::AmqpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every byte value, several times: bodies must arrive byte-exact.
fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

async fn declare(ch: &Channel, name: &str) -> Result<()> {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    Ok(())
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) -> Result<()> {
    ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body, BasicProperties::default()).await?;
    Ok(())
}

async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> Result<lapin::Consumer> {
    let opts = BasicConsumeOptions { no_ack, ..BasicConsumeOptions::default() };
    Ok(ch.basic_consume(queue.into(), "".into(), opts, FieldTable::default()).await?)
}

#[tokio::test]
async fn a_message_round_trips_byte_exact_with_its_properties() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "roundtrip").await?;
    let mut headers = FieldTable::default();
    headers.insert("text".into(), AMQPValue::LongString(LongString::from("v")));
    headers.insert("count".into(), AMQPValue::LongLongInt(-42));
    headers.insert("flag".into(), AMQPValue::Boolean(true));
    let props = BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("kind".into())
        .with_app_id("tests".into());
    // Larger than one frame: exercises body frame assembly both ways.
    let body = binary_payload(300_000);
    ch.basic_publish("".into(), "roundtrip".into(), BasicPublishOptions::default(), &body, props.clone()).await?;
    let mut consumer = consume(&ch, "roundtrip", false).await?;
    let d = next(&mut consumer).await?;
    ensure!(d.data == body, "body differs ({} bytes received)", d.data.len());
    ensure!(d.properties == props, "properties differ: {:?}", d.properties);
    ensure!(d.exchange.as_str() == "" && d.routing_key.as_str() == "roundtrip" && !d.redelivered);
    d.ack(BasicAckOptions::default()).await?;
    // Empty body too.
    publish(&ch, "", "roundtrip", b"").await?;
    let d = next(&mut consumer).await?;
    ensure!(d.data.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_default_exchange_routes_by_queue_name_only() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "jobs").await?;
    publish(&ch, "", "jobs", b"one").await?;
    publish(&ch, "", "no-such-queue", b"lost").await?;
    let mut c = consume(&ch, "jobs", true).await?;
    ensure!(next(&mut c).await?.data == b"one");
    nothing(&mut c).await
}

#[tokio::test]
async fn direct_fanout_and_topic_exchanges_route() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    for (ex, kind) in [("d", ExchangeKind::Direct), ("f", ExchangeKind::Fanout), ("t", ExchangeKind::Topic)] {
        ch.exchange_declare(ex.into(), kind, ExchangeDeclareOptions::default(), FieldTable::default()).await?;
    }
    for q in ["qd", "qf1", "qf2", "qt1", "qt2"] {
        declare(&ch, q).await?;
    }
    let bind = |q: &'static str, ex: &'static str, key: &'static str| {
        let ch = ch.clone();
        async move { ch.queue_bind(q.into(), ex.into(), key.into(), QueueBindOptions::default(), FieldTable::default()).await }
    };
    bind("qd", "d", "a.b").await?;
    bind("qf1", "f", "").await?;
    bind("qf2", "f", "ignored").await?;
    bind("qt1", "t", "a.*").await?;
    bind("qt2", "t", "a.#").await?;

    publish(&ch, "d", "a.b", b"direct").await?;
    publish(&ch, "d", "a", b"direct-miss").await?;
    publish(&ch, "f", "whatever", b"fanout").await?;
    publish(&ch, "t", "a.x", b"t1").await?;
    publish(&ch, "t", "a.x.y", b"t2").await?;
    publish(&ch, "t", "a", b"t3").await?;

    let expect =
        [("qd", vec!["direct"]), ("qf1", vec!["fanout"]), ("qf2", vec!["fanout"]), ("qt1", vec!["t1"]), ("qt2", vec!["t1", "t2", "t3"])];
    for (q, bodies) in expect {
        let mut c = consume(&ch, q, true).await?;
        for b in bodies {
            let d = next(&mut c).await.with_context(|| format!("queue {q}"))?;
            ensure!(d.data == b.as_bytes(), "queue {q}: got {:?}, want {b}", String::from_utf8_lossy(&d.data));
        }
        nothing(&mut c).await.with_context(|| format!("queue {q}"))?;
    }
    // Unbind stops the flow.
    ch.queue_unbind("qd".into(), "d".into(), "a.b".into(), FieldTable::default()).await?;
    publish(&ch, "d", "a.b", b"after-unbind").await?;
    let mut c = consume(&ch, "qd", true).await?;
    nothing(&mut c).await
}

#[tokio::test]
async fn prefetch_bounds_unacknowledged_deliveries() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "prefetch").await?;
    for i in 0..10 {
        publish(&ch, "", "prefetch", format!("m{i}").as_bytes()).await?;
    }
    ch.basic_qos(3, BasicQosOptions::default()).await?;
    let mut c = consume(&ch, "prefetch", false).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut c).await?);
    }
    nothing(&mut c).await.context("a 4th delivery while 3 are unacknowledged")?;
    held.remove(0).ack(BasicAckOptions::default()).await?;
    let d = next(&mut c).await?;
    ensure!(d.data == b"m3", "got {:?}", String::from_utf8_lossy(&d.data));
    nothing(&mut c).await?;
    // ack multiple releases all.
    d.acker.ack(BasicAckOptions { multiple: true }).await?;
    for i in 4..7 {
        ensure!(next(&mut c).await?.data == format!("m{i}").as_bytes());
    }
    Ok(())
}

#[tokio::test]
async fn nack_with_requeue_redelivers_with_the_redelivered_flag() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "requeue").await?;
    publish(&ch, "", "requeue", b"again").await?;
    let mut c = consume(&ch, "requeue", false).await?;
    let d = next(&mut c).await?;
    ensure!(!d.redelivered);
    d.nack(BasicNackOptions { requeue: true, multiple: false }).await?;
    let d = next(&mut c).await?;
    ensure!(d.redelivered && d.data == b"again");
    // reject without requeue drops it.
    d.reject(BasicRejectOptions { requeue: false }).await?;
    nothing(&mut c).await
}

#[tokio::test]
async fn closing_a_channel_requeues_its_unacked_messages_to_another_consumer() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "handover").await?;
    for i in 0..3 {
        publish(&ch, "", "handover", format!("h{i}").as_bytes()).await?;
    }
    let (_conn2, ch2) = broker.channel().await?;
    let mut first = consume(&ch2, "handover", false).await?;
    for _ in 0..3 {
        next(&mut first).await?;
    }
    let ch3 = _conn2.create_channel().await?;
    let mut second = consume(&ch3, "handover", false).await?;
    nothing(&mut second).await.context("messages held by the first consumer must not be delivered")?;
    ch2.close(200, "bye".into()).await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut second).await?;
        ensure!(d.redelivered, "a requeued message carries redelivered");
        got.push(String::from_utf8_lossy(&d.data).into_owned());
    }
    got.sort();
    ensure!(got == ["h0", "h1", "h2"], "got {got:?}");
    Ok(())
}

#[tokio::test]
async fn basic_get_returns_one_message_or_get_empty() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "get").await?;
    ensure!(ch.basic_get("get".into(), BasicGetOptions::default()).await?.is_none());
    publish(&ch, "", "get", b"g1").await?;
    publish(&ch, "", "get", b"g2").await?;
    let m = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(m) = ch.basic_get("get".into(), BasicGetOptions::default()).await? {
                return Ok::<_, anyhow::Error>(m);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    ensure!(m.delivery.data == b"g1" && m.message_count == 1, "got {:?} count {}", m.delivery.data, m.message_count);
    m.delivery.ack(BasicAckOptions::default()).await?;
    let m = ch.basic_get("get".into(), BasicGetOptions { no_ack: true }).await?.context("second message")?;
    ensure!(m.delivery.data == b"g2");
    ensure!(ch.basic_get("get".into(), BasicGetOptions::default()).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn publisher_confirms_ack_every_publish() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    ch.queue_declare("confirmed".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut confirms = Vec::new();
    for i in 0..50 {
        let props = BasicProperties::default().with_delivery_mode(2);
        confirms.push(
            ch.basic_publish("".into(), "confirmed".into(), BasicPublishOptions::default(), format!("c{i}").as_bytes(), props).await?,
        );
    }
    for c in confirms {
        let c = tokio::time::timeout(WAIT, c).await??;
        ensure!(c.is_ack(), "{c:?}");
    }
    let q =
        ch.queue_declare("confirmed".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await?;
    ensure!(q.message_count() == 50, "{} messages", q.message_count());
    Ok(())
}

#[tokio::test]
async fn an_unroutable_mandatory_publish_is_returned_then_acked() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
    let c = ch.basic_publish("amq.direct".into(), "nobody".into(), opts, b"back", BasicProperties::default()).await?;
    let c = tokio::time::timeout(WAIT, c).await??;
    ensure!(c.is_ack(), "{c:?}");
    let returned = c.take_message().context("the message comes back with basic.return")?;
    ensure!(returned.reply_code == 312 && returned.delivery.data == b"back", "{returned:?}");
    // Not mandatory: acked, not returned.
    let c =
        ch.basic_publish("amq.direct".into(), "nobody".into(), BasicPublishOptions::default(), b"x", BasicProperties::default()).await?;
    let c = tokio::time::timeout(WAIT, c).await??;
    ensure!(c.is_ack() && c.take_message().is_none());
    Ok(())
}

#[tokio::test]
async fn a_missing_queue_closes_the_channel_with_404_but_not_the_connection() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (conn, ch) = broker.channel().await?;
    let err = ch
        .queue_declare("absent".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect_err("passive declare of a missing queue fails");
    ensure!(error_text(&err).contains("NOT_FOUND"), "{}", error_text(&err));
    ensure!(!ch.status().connected(), "the channel is closed");
    ensure!(conn.status().connected(), "the connection stays");
    let ch2 = conn.create_channel().await?;
    let err =
        ch2.basic_consume("absent".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await.expect_err("consume");
    ensure!(error_text(&err).contains("NOT_FOUND"), "{}", error_text(&err));
    let ch3 = conn.create_channel().await?;
    declare(&ch3, "present").await?;
    Ok(())
}

#[tokio::test]
async fn an_inequivalent_redeclare_is_406() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (conn, ch) = broker.channel().await?;
    ch.queue_declare("eq".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
    let err = ch.queue_declare("eq".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect_err("redeclare");
    ensure!(error_text(&err).contains("PRECONDITION_FAILED"), "{}", error_text(&err));
    let ch = conn.create_channel().await?;
    ch.exchange_declare("ex".into(), ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::default()).await?;
    let err = ch
        .exchange_declare("ex".into(), ExchangeKind::Fanout, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("redeclare as fanout");
    ensure!(error_text(&err).contains("PRECONDITION_FAILED"), "{}", error_text(&err));
    // An unknown delivery tag is 406 too.
    let ch = conn.create_channel().await?;
    ch.basic_ack(99, BasicAckOptions::default()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(!ch.status().connected(), "acking an unknown tag closes the channel");
    ensure!(conn.status().connected());
    Ok(())
}

#[tokio::test]
async fn a_durable_queue_keeps_persistent_messages_and_bindings_across_a_restart() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    {
        let (conn, ch) = broker.channel().await?;
        ch.exchange_declare(
            "logs".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare("keep".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
        ch.queue_bind("keep".into(), "logs".into(), "app.#".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        ch.queue_declare("lose".into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        for (ex, key, body) in [("", "keep", "k1"), ("logs", "app.x", "k2"), ("", "lose", "gone")] {
            let c = ch.basic_publish(ex.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), persistent.clone()).await?;
            ensure!(tokio::time::timeout(WAIT, c).await??.is_ack());
        }
        conn.close(200, "restart".into()).await?;
    }
    broker.restart().await?;
    let (_conn, ch) = broker.channel().await?;
    let mut c = consume(&ch, "keep", true).await?;
    ensure!(next(&mut c).await?.data == b"k1");
    ensure!(next(&mut c).await?.data == b"k2");
    // The exchange and the binding came back.
    publish(&ch, "logs", "app.y", b"k3").await?;
    ensure!(next(&mut c).await?.data == b"k3");
    let ch2 = _conn.create_channel().await?;
    let err = ch2
        .queue_declare("lose".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect_err("a non-durable queue is gone after a restart");
    ensure!(error_text(&err).contains("NOT_FOUND"));
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_are_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let r = lapin::Connection::connect(&broker.uri_as("guest", "wrong"), lapin::ConnectionProperties::default()).await;
    ensure!(r.is_err(), "a wrong password must not connect");
    let mut cfg = AmqpConfig::default();
    cfg.users.insert("alice".into(), "secret".into());
    let broker = TestBroker::start_with(cfg).await?;
    ensure!(
        lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default()).await.is_err(),
        "guest is off once users are configured"
    );
    let conn = lapin::Connection::connect(&broker.uri_as("alice", "secret"), lapin::ConnectionProperties::default()).await?;
    ensure!(conn.status().connected());
    Ok(())
}

// ---- raw sockets: what lapin will not send ----

#[tokio::test]
async fn a_wrong_protocol_header_is_answered_with_ours_and_closed() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut s = TcpStream::connect(broker.amqp_addr()).await?;
    s.write_all(b"AMQP\x01\x01\x00\x0a").await?;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await??;
    ensure!(got == b"AMQP\x00\x00\x09\x01", "{got:?}");
    Ok(())
}

#[tokio::test]
async fn a_frame_larger_than_frame_max_closes_the_connection_without_waiting_for_its_body() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut s = TcpStream::connect(broker.amqp_addr()).await?;
    s.write_all(b"AMQP\x00\x00\x09\x01").await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await??;
    ensure!(n > 0 && buf[0] == 1, "connection.start first");
    // A method frame header announcing 4 GiB, and nothing after it.
    s.write_all(&[1, 0, 0, 0xff, 0xff, 0xff, 0xf0]).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.context("the server must close at once")??;
    Ok(())
}

#[tokio::test]
async fn tx_commit_publishes_and_acks_and_rollback_discards() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "txq").await?;
    ch.tx_select().await?;
    publish(&ch, "", "txq", b"t1").await?;
    let (_c2, observer) = broker.channel().await?;
    ensure!(observer.basic_get("txq".into(), BasicGetOptions { no_ack: true }).await?.is_none(), "uncommitted publish is invisible");
    ch.tx_commit().await?;
    publish(&ch, "", "txq", b"rolled-back").await?;
    ch.tx_rollback().await?;
    let m = ch.basic_get("txq".into(), BasicGetOptions::default()).await?.context("committed message")?;
    ensure!(m.delivery.data == b"t1");
    ensure!(ch.basic_get("txq".into(), BasicGetOptions::default()).await?.is_none(), "rolled-back publish is gone");
    // An ack inside a rolled-back transaction leaves the delivery unacked:
    // closing the channel then requeues it.
    m.delivery.ack(BasicAckOptions::default()).await?;
    ch.tx_rollback().await?;
    ch.close(200, "bye".into()).await?;
    let m = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(m) = observer.basic_get("txq".into(), BasicGetOptions::default()).await? {
                return Ok::<_, anyhow::Error>(m);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    ensure!(m.delivery.data == b"t1" && m.delivery.redelivered);
    Ok(())
}

#[tokio::test]
async fn x_max_priority_delivers_higher_priorities_first() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(10));
    ch.queue_declare("prio".into(), QueueDeclareOptions::default(), args).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for (body, p) in [("low", 1u8), ("high", 9), ("mid", 5)] {
        let props = BasicProperties::default().with_priority(p);
        let c = ch.basic_publish("".into(), "prio".into(), BasicPublishOptions::default(), body.as_bytes(), props).await?;
        ensure!(tokio::time::timeout(WAIT, c).await??.is_ack());
    }
    let mut c = consume(&ch, "prio", true).await?;
    for want in ["high", "mid", "low"] {
        let d = next(&mut c).await?;
        ensure!(d.data == want.as_bytes(), "got {:?}, want {want}", String::from_utf8_lossy(&d.data));
    }
    Ok(())
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The first x-death entry of a delivery: (count, reason, queue).
fn first_death(d: &lapin::message::Delivery) -> Result<(i64, String, String)> {
    let headers = d.properties.headers().clone().context("no headers")?;
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else { anyhow::bail!("no x-death in {headers:?}") };
    let Some(AMQPValue::FieldTable(e)) = deaths.as_slice().first() else { anyhow::bail!("empty x-death") };
    let s = |k: &str| match e.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => String::new(),
    };
    let Some(AMQPValue::LongLongInt(count)) = e.inner().get("count") else { anyhow::bail!("no count in {e:?}") };
    Ok((*count, s("reason"), s("queue")))
}

#[tokio::test]
async fn x_message_ttl_drops_expired_messages_at_delivery() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    let a = args(&[("x-message-ttl", AMQPValue::LongInt(200))]);
    ch.queue_declare("ttl".into(), QueueDeclareOptions::default(), a).await?;
    publish(&ch, "", "ttl", b"old").await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish(&ch, "", "ttl", b"fresh").await?;
    let mut consumer = consume(&ch, "ttl", false).await?;
    let d = next(&mut consumer).await?;
    ensure!(d.data == b"fresh", "got {:?}", String::from_utf8_lossy(&d.data));
    d.ack(BasicAckOptions::default()).await?;
    nothing(&mut consumer).await?;
    // basic.get sees the TTL too.
    publish(&ch, "", "ttl", b"old").await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_c2, ch2) = broker.channel().await?;
    ensure!(ch2.basic_get("ttl".into(), BasicGetOptions::default()).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_x_death() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    ch.exchange_declare("dlx".into(), ExchangeKind::Direct, ExchangeDeclareOptions::default(), FieldTable::default()).await?;
    declare(&ch, "dead").await?;
    ch.queue_bind("dead".into(), "dlx".into(), "dead-key".into(), QueueBindOptions::default(), FieldTable::default()).await?;
    let a = args(&[("x-dead-letter-exchange", text("dlx")), ("x-dead-letter-routing-key", text("dead-key"))]);
    ch.queue_declare("work".into(), QueueDeclareOptions::default(), a).await?;
    let props = BasicProperties::default().with_message_id("m-1".into());
    ch.basic_publish("".into(), "work".into(), BasicPublishOptions::default(), b"bad", props).await?;
    publish(&ch, "", "work", b"also bad").await?;
    let mut work = consume(&ch, "work", false).await?;
    next(&mut work).await?.reject(BasicRejectOptions { requeue: false }).await?;
    next(&mut work).await?.nack(BasicNackOptions { requeue: false, multiple: false }).await?;
    let mut dead = consume(&ch, "dead", false).await?;
    let d = next(&mut dead).await?;
    ensure!(d.data == b"bad" && d.exchange.as_str() == "dlx" && d.routing_key.as_str() == "dead-key");
    ensure!(d.properties.message_id().as_ref().map(|s| s.as_str()) == Some("m-1"));
    let (count, reason, queue) = first_death(&d)?;
    ensure!((count, reason.as_str(), queue.as_str()) == (1, "rejected", "work"), "x-death {count} {reason} {queue}");
    ensure!(next(&mut dead).await?.data == b"also bad");
    nothing(&mut work).await?;
    Ok(())
}

#[tokio::test]
async fn an_expired_message_is_dead_lettered_through_the_default_exchange() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "parking").await?;
    let a = args(&[
        ("x-message-ttl", AMQPValue::LongInt(100)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("parking")),
    ]);
    ch.queue_declare("delay".into(), QueueDeclareOptions::default(), a).await?;
    let props = BasicProperties::default().with_expiration("50".into());
    ch.basic_publish("".into(), "delay".into(), BasicPublishOptions::default(), b"later", props).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Expiry is noticed when the queue is read.
    ensure!(ch.basic_get("delay".into(), BasicGetOptions::default()).await?.is_none());
    let mut parking = consume(&ch, "parking", false).await?;
    let d = next(&mut parking).await?;
    ensure!(d.data == b"later" && d.properties.expiration().is_none(), "expiration kept: {:?}", d.properties);
    let (count, reason, queue) = first_death(&d)?;
    ensure!((count, reason.as_str(), queue.as_str()) == (1, "expired", "delay"));
    Ok(())
}

#[tokio::test]
async fn a_durable_queue_keeps_its_dead_letter_arguments_across_a_restart() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    {
        let (conn, ch) = broker.channel().await?;
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        ch.queue_declare("dl-target".into(), durable, FieldTable::default()).await?;
        let a = args(&[("x-dead-letter-exchange", text("")), ("x-dead-letter-routing-key", text("dl-target"))]);
        ch.queue_declare("dl-source".into(), durable, a).await?;
        publish(&ch, "", "dl-source", b"reject me after the restart").await?;
        conn.close(200, "bye".into()).await?;
    }
    broker.restart().await?;
    let (_conn, ch) = broker.channel().await?;
    let got = ch.basic_get("dl-source".into(), BasicGetOptions::default()).await?.context("message kept")?;
    got.delivery.reject(BasicRejectOptions { requeue: false }).await?;
    let mut target = consume(&ch, "dl-target", false).await?;
    let d = next(&mut target).await?;
    ensure!(d.data == b"reject me after the restart");
    ensure!(first_death(&d)?.1 == "rejected");
    Ok(())
}

/// Every body a queue holds, by basic.get (acked).
async fn drain_bodies(ch: &Channel, queue: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    while let Some(m) = ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await? {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    Ok(out)
}

#[tokio::test]
async fn x_max_length_drops_the_head_into_the_dead_letter_exchange() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "overflowed").await?;
    let a = args(&[
        ("x-max-length", AMQPValue::LongInt(2)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("overflowed")),
    ]);
    ch.queue_declare("bounded".into(), QueueDeclareOptions::default(), a).await?;
    for i in 0..5 {
        publish(&ch, "", "bounded", format!("m{i}").as_bytes()).await?;
    }
    let mut dropped = consume(&ch, "overflowed", false).await?;
    for i in 0..3 {
        let d = next(&mut dropped).await?;
        ensure!(d.data == format!("m{i}").as_bytes(), "dropped {:?}", String::from_utf8_lossy(&d.data));
        ensure!(first_death(&d)?.1 == "maxlen");
        d.ack(BasicAckOptions::default()).await?;
    }
    ensure!(drain_bodies(&ch, "bounded").await? == ["m3", "m4"]);
    Ok(())
}

#[tokio::test]
async fn x_max_length_bytes_keeps_the_newest_that_fit() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    // 100-byte bodies, 260 bytes: two fit with up to 60 bytes of stored overhead each, three never do.
    ch.queue_declare("bytes".into(), QueueDeclareOptions::default(), args(&[("x-max-length-bytes", AMQPValue::LongInt(260))])).await?;
    for i in 0..4u8 {
        publish(&ch, "", "bytes", &[b'0' + i; 100]).await?;
    }
    let got = drain_bodies(&ch, "bytes").await?;
    ensure!(got == ["2".repeat(100), "3".repeat(100)], "kept {:?}", got.iter().map(|b| &b[..1]).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn x_overflow_reject_publish_nacks_a_confirming_publisher() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    let a = args(&[("x-max-length", AMQPValue::LongInt(2)), ("x-overflow", text("reject-publish"))]);
    ch.queue_declare("full".into(), QueueDeclareOptions::default(), a).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut acks = Vec::new();
    for i in 0..3 {
        let c = ch
            .basic_publish("".into(), "full".into(), BasicPublishOptions::default(), format!("r{i}").as_bytes(), BasicProperties::default())
            .await?;
        acks.push(tokio::time::timeout(WAIT, c).await??.is_ack());
    }
    ensure!(acks == [true, true, false], "{acks:?}");
    ensure!(drain_bodies(&ch, "full").await? == ["r0", "r1"]);
    // Room again: accepted.
    let c = ch.basic_publish("".into(), "full".into(), BasicPublishOptions::default(), b"r3", BasicProperties::default()).await?;
    ensure!(tokio::time::timeout(WAIT, c).await??.is_ack());
    Ok(())
}

#[tokio::test]
async fn x_single_active_consumer_delivers_to_one_consumer_until_it_goes() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    let a = args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
    ch.queue_declare("sac".into(), QueueDeclareOptions::default(), a).await?;
    let (_c1, ch1) = broker.channel().await?;
    let (_c2, ch2) = broker.channel().await?;
    let mut first = consume(&ch1, "sac", false).await?;
    let mut second = consume(&ch2, "sac", false).await?;
    for i in 0..4 {
        publish(&ch, "", "sac", format!("s{i}").as_bytes()).await?;
    }
    for i in 0..3 {
        let d = next(&mut first).await?;
        ensure!(d.data == format!("s{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await?;
    }
    // s3 stays unacked on the active consumer, then its channel closes.
    ensure!(next(&mut first).await?.data == b"s3");
    nothing(&mut second).await?;
    ch1.close(200, "bye".into()).await?;
    let d = next(&mut second).await?;
    ensure!(d.data == b"s3" && d.redelivered, "{:?} redelivered={}", String::from_utf8_lossy(&d.data), d.redelivered);
    d.ack(BasicAckOptions::default()).await?;
    publish(&ch, "", "sac", b"s4").await?;
    ensure!(next(&mut second).await?.data == b"s4");
    Ok(())
}

#[tokio::test]
async fn a_headers_exchange_routes_by_x_match_all_and_any_and_keeps_bindings_across_a_restart() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let publish_with = |ch: Channel, headers: FieldTable, body: &'static [u8]| async move {
        let props = BasicProperties::default().with_headers(headers);
        ch.basic_publish("docs".into(), "ignored".into(), BasicPublishOptions::default(), body, props).await?.await?;
        anyhow::Ok(())
    };
    {
        let (conn, ch) = broker.channel().await?;
        let opts = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        ch.exchange_declare("docs".into(), ExchangeKind::Headers, opts, FieldTable::default()).await?;
        ch.queue_declare("pdf-reports".into(), durable, FieldTable::default()).await?;
        ch.queue_declare("pdf-or-report".into(), durable, FieldTable::default()).await?;
        let all = args(&[("x-match", text("all")), ("format", text("pdf")), ("type", text("report"))]);
        let any = args(&[("x-match", text("any")), ("format", text("pdf")), ("type", text("report"))]);
        ch.queue_bind("pdf-reports".into(), "docs".into(), "".into(), QueueBindOptions::default(), all).await?;
        ch.queue_bind("pdf-or-report".into(), "docs".into(), "".into(), QueueBindOptions::default(), any).await?;
        publish_with(ch.clone(), args(&[("format", text("pdf")), ("type", text("report"))]), b"both").await?;
        publish_with(ch.clone(), args(&[("format", text("pdf")), ("type", text("log"))]), b"pdf only").await?;
        publish_with(ch.clone(), args(&[("format", text("zip"))]), b"neither").await?;
        conn.close(200, "bye".into()).await?;
    }
    broker.restart().await?;
    let (_conn, ch) = broker.channel().await?;
    publish_with(ch.clone(), args(&[("type", text("report")), ("pages", AMQPValue::LongInt(3))]), b"report only").await?;
    ensure!(drain_bodies(&ch, "pdf-reports").await? == ["both"]);
    ensure!(drain_bodies(&ch, "pdf-or-report").await? == ["both", "pdf only", "report only"]);
    // Unbinding stops the routing.
    let any = args(&[("x-match", text("any")), ("format", text("pdf")), ("type", text("report"))]);
    ch.queue_unbind("pdf-or-report".into(), "docs".into(), "".into(), any).await?;
    publish_with(ch.clone(), args(&[("format", text("pdf")), ("type", text("report"))]), b"after unbind").await?;
    ensure!(drain_bodies(&ch, "pdf-or-report").await?.is_empty());
    ensure!(drain_bodies(&ch, "pdf-reports").await? == ["after unbind"]);
    Ok(())
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_through_chains_and_cycles_and_survive_a_restart() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let durable_x = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    let durable_q = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    {
        let (conn, ch) = broker.channel().await?;
        ch.exchange_declare("ingress".into(), ExchangeKind::Topic, durable_x, FieldTable::default()).await?;
        let internal = ExchangeDeclareOptions { internal: true, ..durable_x };
        ch.exchange_declare("audit".into(), ExchangeKind::Fanout, internal, FieldTable::default()).await?;
        ch.queue_declare("audit-q".into(), durable_q, FieldTable::default()).await?;
        ch.queue_declare("eu-q".into(), durable_q, FieldTable::default()).await?;
        ch.queue_bind("audit-q".into(), "audit".into(), "".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        ch.queue_bind("eu-q".into(), "ingress".into(), "orders.eu".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        // ingress -> audit for orders.#, and a cycle back audit -> ingress.
        ch.exchange_bind("audit".into(), "ingress".into(), "orders.#".into(), ExchangeBindOptions::default(), FieldTable::default())
            .await?;
        ch.exchange_bind("ingress".into(), "audit".into(), "".into(), ExchangeBindOptions::default(), FieldTable::default()).await?;
        conn.close(200, "bye".into()).await?;
    }
    broker.restart().await?;
    let (_conn, ch) = broker.channel().await?;
    for key in ["orders.eu", "orders.us.west", "users.eu"] {
        publish(&ch, "ingress", key, key.as_bytes()).await?;
    }
    ensure!(drain_bodies(&ch, "eu-q").await? == ["orders.eu"]);
    ensure!(drain_bodies(&ch, "audit-q").await? == ["orders.eu", "orders.us.west"], "one copy each, the cycle ends");
    // Publishing to the internal exchange itself is still refused: the channel is closed
    // (403; lapin reports the next call on the closed channel as a state error).
    let (_c2, ch2) = broker.channel().await?;
    let _ = ch2.basic_publish("audit".into(), "".into(), BasicPublishOptions::default(), b"x", BasicProperties::default()).await;
    let after = ch2.queue_declare("after".into(), QueueDeclareOptions::default(), FieldTable::default()).await;
    ensure!(after.is_err() && !ch2.status().connected(), "{after:?}");
    ch.exchange_unbind("audit".into(), "ingress".into(), "orders.#".into(), ExchangeUnbindOptions::default(), FieldTable::default())
        .await?;
    publish(&ch, "ingress", "orders.eu", b"after unbind").await?;
    ensure!(drain_bodies(&ch, "audit-q").await?.is_empty());
    ensure!(drain_bodies(&ch, "eu-q").await? == ["after unbind"]);
    Ok(())
}

#[tokio::test]
async fn a_redeclare_with_other_queue_arguments_is_406_and_internal_names_are_403() -> Result<()> {
    let broker = TestBroker::start().await?;
    let conn = broker.connect().await?;
    let ch = conn.create_channel().await?;
    let a = args(&[("x-message-ttl", AMQPValue::LongInt(1000))]);
    ch.queue_declare("argq".into(), QueueDeclareOptions::default(), a.clone()).await?;
    ch.queue_declare("argq".into(), QueueDeclareOptions::default(), a).await?;
    let err = ch
        .queue_declare("argq".into(), QueueDeclareOptions::default(), args(&[("x-message-ttl", AMQPValue::LongInt(5))]))
        .await
        .expect_err("other ttl");
    ensure!(error_text(&err).contains("PRECONDITION_FAILED") && error_text(&err).contains("x-message-ttl"), "{}", error_text(&err));
    let ch = conn.create_channel().await?;
    declare(&ch, "plain").await?;
    let err = ch.queue_declare("plain".into(), QueueDeclareOptions::default(), args(&[("x-max-length", AMQPValue::LongInt(5))])).await;
    ensure!(err.is_err(), "adding arguments to an existing queue is 406 too");
    let ch = conn.create_channel().await?;
    let err = ch
        .exchange_declare("amqp.queue-args".into(), ExchangeKind::Fanout, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .expect_err("reserved");
    ensure!(error_text(&err).contains("ACCESS_REFUSED"), "{}", error_text(&err));
    Ok(())
}

#[tokio::test]
async fn a_get_after_a_publish_on_the_same_connection_sees_it() -> Result<()> {
    // Publishes without confirms are not answered; a basic.get or a passive
    // declare that follows them on the same channel must still see every one
    // (RabbitMQ orders them), even while the log is still writing them: a
    // burst keeps the log writer busy when the declare arrives.
    let broker = TestBroker::start_fsync_always().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "read-your-writes").await?;
    let body = vec![b'x'; 4096];
    for _ in 0..2000 {
        publish(&ch, "", "read-your-writes", &body).await?;
    }
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let q = ch.queue_declare("read-your-writes".into(), passive, FieldTable::default()).await?;
    ensure!(q.message_count() == 2000, "a passive declare after 2000 publishes counts {}", q.message_count());
    publish(&ch, "", "read-your-writes", b"last").await?;
    let got = ch.basic_get("read-your-writes".into(), BasicGetOptions { no_ack: true }).await?;
    ensure!(got.is_some(), "a get right after publishes finds a message");
    Ok(())
}

// ---- streams (x-queue-type: stream) ----

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = args(extra);
    t.insert("x-queue-type".into(), text("stream"));
    t
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) -> Result<lapin::Queue> {
    Ok(ch.queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, stream_args(extra)).await?)
}

/// Publishes with confirms, so the messages are in the log when it returns.
async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, bodies: &[&str]) -> Result<()> {
    for body in bodies {
        let c = ch
            .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), BasicProperties::default())
            .await?;
        ensure!(tokio::time::timeout(WAIT, c).await??.is_ack(), "publish of {body} not acked");
    }
    Ok(())
}

/// A stream consumer (manual ack) starting at `offset`.
async fn consume_stream(ch: &Channel, queue: &str, offset: Option<AMQPValue>) -> Result<lapin::Consumer> {
    let mut a = FieldTable::default();
    if let Some(o) = offset {
        a.insert("x-stream-offset".into(), o);
    }
    Ok(ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), a).await?)
}

fn stream_offset_of(d: &lapin::message::Delivery) -> Result<i64> {
    match d.properties.headers().as_ref().and_then(|h| h.inner().get("x-stream-offset").cloned()) {
        Some(AMQPValue::LongLongInt(n)) => Ok(n),
        other => anyhow::bail!("no x-stream-offset long header: {other:?}"),
    }
}

/// (body, x-stream-offset) of the next `n` deliveries, each acked.
async fn take_stream(c: &mut lapin::Consumer, n: usize) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next(c).await?;
        out.push((String::from_utf8_lossy(&d.data).into_owned(), stream_offset_of(&d)?));
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(out)
}

#[tokio::test]
async fn a_stream_is_read_by_offset_from_first_last_next_numeric_and_time() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (conn, ch) = broker.channel().await?;
    let q = declare_stream(&ch, "orders", &[("x-max-age", text("7D"))]).await?;
    ensure!(q.message_count() == 0);
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    publish_confirmed(&ch, "", "orders", &["o0", "o1", "o2", "o3", "o4"]).await?;
    // The stream IS the core topic `orders` (partition 0), for Kafka.
    let store = broker.store();
    let id = store.queue_id(&polymq::topic::partition_queue("orders", 0)).context("the stream is topic orders, partition 0")?;
    ensure!(polymq::topic::partitions(&store, "orders") == vec![id]);
    let q = ch.queue_declare("orders".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await?;
    ensure!(q.message_count() == 5, "passive declare counts {}", q.message_count());

    let reader = conn.create_channel().await?;
    reader.basic_qos(10, BasicQosOptions::default()).await?;
    let mut first = consume_stream(&reader, "orders", Some(text("first"))).await?;
    let got = take_stream(&mut first, 5).await?;
    ensure!(got == (0..5).map(|i| (format!("o{i}"), i)).collect::<Vec<_>>(), "{got:?}");
    // Reading does not consume: another consumer reads the same messages.
    let mut from2 = consume_stream(&reader, "orders", Some(AMQPValue::LongLongInt(2))).await?;
    ensure!(take_stream(&mut from2, 3).await? == vec![("o2".into(), 2), ("o3".into(), 3), ("o4".into(), 4)]);
    let mut short = consume_stream(&reader, "orders", Some(AMQPValue::ShortInt(4))).await?;
    ensure!(take_stream(&mut short, 1).await? == vec![("o4".into(), 4)]);
    let mut last = consume_stream(&reader, "orders", Some(text("last"))).await?;
    ensure!(take_stream(&mut last, 1).await? == vec![("o4".into(), 4)]);
    let mut next_c = consume_stream(&reader, "orders", Some(text("next"))).await?;
    let mut default_c = consume_stream(&reader, "orders", None).await?;
    nothing(&mut next_c).await?;
    nothing(&mut default_c).await?;
    let an_hour_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() - 3600;
    let mut by_time = consume_stream(&reader, "orders", Some(AMQPValue::Timestamp(an_hour_ago))).await?;
    ensure!(take_stream(&mut by_time, 5).await?.first() == Some(&("o0".into(), 0)));
    let mut by_interval = consume_stream(&reader, "orders", Some(text("10m"))).await?;
    ensure!(take_stream(&mut by_interval, 5).await?.last() == Some(&("o4".into(), 4)));
    let in_an_hour = an_hour_ago + 7200;
    let mut future = consume_stream(&reader, "orders", Some(AMQPValue::Timestamp(in_an_hour))).await?;
    // Consumers continue live: a new message reaches every one of them.
    publish_confirmed(&ch, "", "orders", &["o5"]).await?;
    for c in [&mut first, &mut from2, &mut last, &mut next_c, &mut default_c, &mut by_time, &mut by_interval, &mut future] {
        ensure!(take_stream(c, 1).await? == vec![("o5".into(), 5)]);
    }
    Ok(())
}

#[tokio::test]
async fn stream_consumers_need_a_prefetch_and_manual_acks_and_acks_free_credit() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (conn, ch) = broker.channel().await?;
    declare_stream(&ch, "events", &[]).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    publish_confirmed(&ch, "", "events", &["e0", "e1", "e2", "e3"]).await?;
    // No prefetch: 406 on the channel, as RabbitMQ.
    let c1 = conn.create_channel().await?;
    let err = consume_stream(&c1, "events", Some(text("first"))).await.expect_err("no prefetch");
    ensure!(error_text(&err.downcast::<lapin::Error>()?).contains("PRECONDITION_FAILED"));
    ensure!(conn.status().connected());
    // Prefetch 2: two deliveries until one is acked.
    let c2 = conn.create_channel().await?;
    c2.basic_qos(2, BasicQosOptions::default()).await?;
    let mut c = consume_stream(&c2, "events", Some(text("first"))).await?;
    let d0 = next(&mut c).await?;
    let d1 = next(&mut c).await?;
    nothing(&mut c).await?;
    d0.ack(BasicAckOptions::default()).await?;
    let d2 = next(&mut c).await?;
    ensure!(d1.data == b"e1" && d2.data == b"e2" && stream_offset_of(&d2)? == 2);
    // basic.get on a stream: 540 NOT_IMPLEMENTED, a connection error.
    let err = c2.basic_get("events".into(), BasicGetOptions::default()).await.expect_err("basic.get on a stream");
    ensure!(error_text(&err).contains("NOT_IMPLEMENTED"), "{}", error_text(&err));
    // no_ack with a prefetch: 540 too.
    let conn = broker.connect().await?;
    let c3 = conn.create_channel().await?;
    c3.basic_qos(5, BasicQosOptions::default()).await?;
    let opts = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let err = c3.basic_consume("events".into(), "".into(), opts, FieldTable::default()).await.expect_err("no_ack on a stream");
    ensure!(error_text(&err).contains("NOT_IMPLEMENTED"), "{}", error_text(&err));
    // An invalid x-stream-offset: 406.
    let conn = broker.connect().await?;
    let c4 = conn.create_channel().await?;
    c4.basic_qos(5, BasicQosOptions::default()).await?;
    let err = consume_stream(&c4, "events", Some(text("whenever"))).await.expect_err("bad offset");
    ensure!(error_text(&err.downcast::<lapin::Error>()?).contains("PRECONDITION_FAILED"));
    Ok(())
}

#[tokio::test]
async fn stream_declares_follow_rabbitmq_rules() -> Result<()> {
    let broker = TestBroker::start().await?;
    let conn = broker.connect().await?;
    let fails = |what: &'static str| move |e: lapin::Error| format!("{what}: {}", error_text(&e));
    for (opts, property) in [
        (QueueDeclareOptions { durable: false, ..Default::default() }, "non-durable"),
        (QueueDeclareOptions { durable: true, exclusive: true, ..Default::default() }, "exclusive-owner"),
        (QueueDeclareOptions { durable: true, auto_delete: true, ..Default::default() }, "auto-delete"),
    ] {
        let ch = conn.create_channel().await?;
        let err = ch.queue_declare("s".into(), opts, stream_args(&[])).await.map(drop).map_err(fails("declare")).expect_err(property);
        ensure!(err.contains("PRECONDITION_FAILED") && err.contains(property), "{err}");
    }
    let ch = conn.create_channel().await?;
    declare_stream(&ch, "s", &[("x-max-age", text("1h")), ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 20))]).await?;
    // Equivalent redeclare and passive declare work.
    declare_stream(&ch, "s", &[("x-max-age", text("1h")), ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 20))]).await?;
    ch.queue_declare("s".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await?;
    let err = declare_stream(&ch, "s", &[("x-max-age", text("2h"))]).await.expect_err("another max age");
    ensure!(format!("{err:?}").contains("x-max-age"), "{err:?}");
    // A classic queue and a stream of one name conflict, both ways.
    let ch = conn.create_channel().await?;
    let err = ch.queue_declare("s".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await;
    let err = err.map(drop).map_err(fails("classic over stream")).expect_err("classic over a stream");
    ensure!(err.contains("inequivalent arg 'x-queue-type'"), "{err}");
    let ch = conn.create_channel().await?;
    ch.queue_declare("c".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
    let err = declare_stream(&ch, "c", &[]).await.expect_err("stream over a classic queue");
    ensure!(format!("{err:?}").contains("inequivalent arg 'x-queue-type'"), "{err:?}");
    // queue.delete deletes the stream (and the topic).
    let ch = conn.create_channel().await?;
    ch.queue_delete("s".into(), QueueDeleteOptions::default()).await?;
    ensure!(broker.store().queue_id(&polymq::topic::partition_queue("s", 0)).is_none());
    let err = ch.queue_declare("s".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await;
    ensure!(err.is_err(), "deleted");
    Ok(())
}

#[tokio::test]
async fn exchange_bindings_append_to_a_stream_which_survives_a_restart() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    {
        let (conn, ch) = broker.channel().await?;
        declare_stream(&ch, "audit", &[]).await?;
        ch.queue_bind("audit".into(), "amq.topic".into(), "audit.#".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        publish_confirmed(&ch, "amq.topic", "audit.login", &["a0"]).await?;
        publish_confirmed(&ch, "", "audit", &["a1"]).await?;
        conn.close(200, "restart".into()).await?;
    }
    broker.restart().await?;
    let (_conn, ch) = broker.channel().await?;
    ch.basic_qos(10, BasicQosOptions::default()).await?;
    let mut c = consume_stream(&ch, "audit", Some(text("first"))).await?;
    let got = take_stream(&mut c, 2).await?;
    ensure!(got == vec![("a0".into(), 0), ("a1".into(), 1)], "{got:?}");
    // The binding came back too.
    publish(&ch, "amq.topic", "audit.logout", b"a2").await?;
    ensure!(take_stream(&mut c, 1).await? == vec![("a2".into(), 2)]);
    Ok(())
}

// ---- x-delayed-message exchanges ----

async fn declare_delayed(ch: &Channel, name: &str, durable: bool) -> Result<()> {
    let a = args(&[("x-delayed-type", text("direct"))]);
    let opts = ExchangeDeclareOptions { durable, ..Default::default() };
    ch.exchange_declare(name.into(), ExchangeKind::Custom("x-delayed-message".into()), opts, a).await?;
    Ok(())
}

async fn publish_delayed(ch: &Channel, exchange: &str, key: &str, body: &str, delay: Option<i64>) -> Result<()> {
    let mut props = BasicProperties::default();
    if let Some(d) = delay {
        props = props.with_headers(args(&[("x-delay", AMQPValue::LongLongInt(d))]));
    }
    ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props).await?;
    Ok(())
}

#[tokio::test]
async fn a_delayed_exchange_holds_messages_until_their_x_delay_and_orders_by_due_time() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (conn, ch) = broker.channel().await?;
    declare_delayed(&ch, "later", false).await?;
    declare(&ch, "due").await?;
    ch.queue_bind("due".into(), "later".into(), "k".into(), QueueBindOptions::default(), FieldTable::default()).await?;
    let mut c = consume(&ch, "due", true).await?;
    let start = std::time::Instant::now();
    publish_delayed(&ch, "later", "k", "slow", Some(1500)).await?;
    nothing(&mut c).await?;
    let d = next(&mut c).await?;
    let waited = start.elapsed();
    ensure!(d.data == b"slow" && waited >= Duration::from_millis(1450), "delivered after {waited:?}");
    // Ordered by due time, not by publish order; no / negative delay = now.
    publish_delayed(&ch, "later", "k", "d900", Some(900)).await?;
    publish_delayed(&ch, "later", "k", "d300", Some(300)).await?;
    publish_delayed(&ch, "later", "k", "now", None).await?;
    publish_delayed(&ch, "later", "k", "negative", Some(-5000)).await?;
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(String::from_utf8_lossy(&next(&mut c).await?.data).into_owned());
    }
    ensure!(order == ["now", "negative", "d300", "d900"], "{order:?}");
    // The routing key still selects (direct): another key goes nowhere.
    publish_delayed(&ch, "later", "other", "lost", Some(10)).await?;
    nothing(&mut c).await?;
    // Without x-delayed-type: 406 with the plugin's text.
    let ch2 = conn.create_channel().await?;
    let err = ch2
        .exchange_declare(
            "broken".into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("x-delayed-type is required");
    let t = error_text(&err);
    ensure!(t.contains("PRECONDITION_FAILED") && t.contains("x-delayed-type"), "{t}");
    Ok(())
}

#[tokio::test]
async fn a_durable_delayed_exchange_survives_a_restart() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    {
        let (conn, ch) = broker.channel().await?;
        declare_delayed(&ch, "timers", true).await?;
        ch.queue_declare("fired".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
        ch.queue_bind("fired".into(), "timers".into(), "t".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        conn.close(200, "restart".into()).await?;
    }
    broker.restart().await?;
    let (conn, ch) = broker.channel().await?;
    // Same type and arguments: equivalent; a plain direct exchange is not.
    declare_delayed(&ch, "timers", true).await?;
    let ch2 = conn.create_channel().await?;
    let err = ch2
        .exchange_declare(
            "timers".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect_err("another type");
    ensure!(error_text(&err).contains("inequivalent arg 'type'"), "{}", error_text(&err));
    let mut c = consume(&ch, "fired", true).await?;
    let start = std::time::Instant::now();
    publish_delayed(&ch, "timers", "t", "tick", Some(800)).await?;
    ensure!(next(&mut c).await?.data == b"tick");
    ensure!(start.elapsed() >= Duration::from_millis(750), "{:?}", start.elapsed());
    // A message waiting out its delay in a durable queue survives a restart
    // and is still held back until it is due.
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let start = std::time::Instant::now();
    let props = BasicProperties::default().with_headers(args(&[("x-delay", AMQPValue::LongLongInt(2000))]));
    let confirm = ch.basic_publish("timers".into(), "t".into(), BasicPublishOptions::default(), b"across", props).await?;
    ensure!(tokio::time::timeout(WAIT, confirm).await??.is_ack());
    conn.close(200, "restart".into()).await?;
    broker.restart().await?;
    let (_conn, ch) = broker.channel().await?;
    let mut c = consume(&ch, "fired", true).await?;
    ensure!(next(&mut c).await?.data == b"across");
    ensure!(start.elapsed() >= Duration::from_millis(1950), "delivered after {:?}", start.elapsed());
    Ok(())
}

// ---- vhosts ----

fn vhosts(names: &[&str]) -> AmqpConfig {
    AmqpConfig { vhosts: names.iter().map(|s| (*s).to_owned()).collect(), ..AmqpConfig::default() }
}

#[tokio::test]
async fn an_unknown_vhost_is_refused_with_530() -> Result<()> {
    let broker = TestBroker::start_with(vhosts(&["/", "dev"])).await?;
    let err = lapin::Connection::connect(&broker.uri_vhost("nope"), lapin::ConnectionProperties::default()).await.expect_err("no vhost");
    let t = error_text(&err);
    ensure!(t.contains("NOT_ALLOWED") && t.contains("vhost nope not found"), "{t}");
    lapin::Connection::connect(&broker.uri_vhost("dev"), lapin::ConnectionProperties::default()).await?;
    Ok(())
}

#[tokio::test]
async fn two_vhosts_are_isolated_and_survive_a_restart() -> Result<()> {
    let mut broker = TestBroker::start_with(vhosts(&["/", "dev"])).await?;
    let open = |b: &TestBroker, vhost: &str| {
        let uri = b.uri_vhost(vhost);
        async move {
            let conn = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            anyhow::Ok((conn, ch))
        }
    };
    {
        let (_root, root) = open(&broker, "/").await?;
        let (dev_conn, dev) = open(&broker, "dev").await?;
        for ch in [&root, &dev] {
            ch.queue_declare("jobs".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        // Pre-declared exchanges exist per vhost; bindings stay in theirs.
        dev.queue_bind("jobs".into(), "amq.topic".into(), "work.*".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        dev.exchange_declare(
            "dev-only".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
        dev.queue_bind("jobs".into(), "dev-only".into(), "".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        publish_confirmed(&root, "", "jobs", &["root-1"]).await?;
        publish_confirmed(&root, "amq.topic", "work.a", &["root-topic"]).await?;
        publish_confirmed(&dev, "", "jobs", &["dev-1"]).await?;
        publish_confirmed(&dev, "amq.topic", "work.b", &["dev-topic"]).await?;
        publish_confirmed(&dev, "dev-only", "", &["dev-fanout"]).await?;
        let err = root
            .exchange_declare(
                "dev-only".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect_err("dev's exchange is not in /");
        ensure!(error_text(&err).contains("NOT_FOUND"));
        // Dead-lettering stays in the queue's vhost: dev's DLX is dev's.
        let dev2 = dev_conn.create_channel().await?;
        dev2.queue_declare("parked".into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
        dev2.queue_declare(
            "short".into(),
            QueueDeclareOptions::default(),
            args(&[
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("parked")),
                ("x-message-ttl", AMQPValue::LongLongInt(10)),
            ]),
        )
        .await?;
        publish(&dev2, "", "short", b"expiring").await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        ensure!(dev2.basic_get("short".into(), BasicGetOptions { no_ack: true }).await?.is_none());
        let parked = dev2.basic_get("parked".into(), BasicGetOptions { no_ack: true }).await?.context("dead-lettered within dev")?;
        ensure!(parked.delivery.data == b"expiring");
    }
    broker.restart().await?;
    let (_root, root) = open(&broker, "/").await?;
    let (_dev, dev) = open(&broker, "dev").await?;
    ensure!(drain_bodies(&root, "jobs").await? == ["root-1"], "/ sees only its own");
    ensure!(drain_bodies(&dev, "jobs").await? == ["dev-1", "dev-topic", "dev-fanout"], "dev sees only its own");
    // dev's durable exchange and bindings came back, in dev only.
    publish(&dev, "dev-only", "", b"again").await?;
    publish(&root, "amq.topic", "work.c", b"not-dev").await?;
    let mut c = consume(&dev, "jobs", true).await?;
    ensure!(next(&mut c).await?.data == b"again");
    nothing(&mut c).await?;
    Ok(())
}

// ---- connection.blocked under the memory alarm ----

#[tokio::test]
async fn the_memory_alarm_blocks_publishing_connections_until_it_clears() -> Result<()> {
    use futures_util::StreamExt;
    let broker = TestBroker::start().await?;
    let (conn, ch) = broker.channel().await?;
    let mut events = conn.events_listener();
    declare(&ch, "pressure").await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    publish_confirmed(&ch, "", "pressure", &["before"]).await?;
    // A consumer-only connection is not blocked.
    let (reader_conn, reader) = broker.channel().await?;
    let mut reader_events = reader_conn.events_listener();
    let mut c = consume(&reader, "pressure", false).await?;
    next(&mut c).await?.ack(BasicAckOptions::default()).await?;

    broker.store().memory_alarm().force(Some(true));
    let blocked = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.next().await {
            if let lapin::Event::ConnectionBlocked(reason) = ev {
                return Some(reason);
            }
        }
        None
    })
    .await?
    .context("events ended")?;
    ensure!(blocked == "low on memory", "{blocked}");
    ensure!(conn.status().blocked());
    // A publish now stalls: no confirm while the alarm is on.
    let publisher = ch.clone();
    let mut confirm = tokio::spawn(async move {
        let c =
            publisher.basic_publish("".into(), "pressure".into(), BasicPublishOptions::default(), b"during", BasicProperties::default());
        anyhow::Ok(c.await?.await?)
    });
    ensure!(tokio::time::timeout(Duration::from_millis(700), &mut confirm).await.is_err(), "confirmed while blocked");
    // Consumers keep consuming (another connection publishes nothing).
    ensure!(reader_conn.status().connected() && !reader_conn.status().blocked());

    broker.store().memory_alarm().force(Some(false));
    ensure!(tokio::time::timeout(WAIT, &mut confirm).await???.is_ack(), "confirmed once unblocked");
    ensure!(!conn.status().blocked());
    let d = next(&mut c).await?;
    ensure!(d.data == b"during");
    // The reader never got a blocked notification.
    let seen = tokio::time::timeout(Duration::from_millis(200), reader_events.next()).await;
    ensure!(!matches!(seen, Ok(Some(lapin::Event::ConnectionBlocked(_)))), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn an_unread_queue_expires_its_head_into_the_dead_letter_exchange() -> Result<()> {
    // RabbitMQ's "delay queue" pattern: nobody reads `wait`; its messages
    // move on to `ready` when their TTL runs out.
    let broker = TestBroker::start().await?;
    let (_conn, ch) = broker.channel().await?;
    declare(&ch, "ready").await?;
    ch.queue_declare(
        "wait".into(),
        QueueDeclareOptions::default(),
        args(&[
            ("x-message-ttl", AMQPValue::LongLongInt(400)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("ready")),
        ]),
    )
    .await?;
    let mut c = consume(&ch, "ready", true).await?;
    let start = std::time::Instant::now();
    publish(&ch, "", "wait", b"first").await?;
    publish(&ch, "", "wait", b"second").await?;
    let d = next(&mut c).await?;
    ensure!(d.data == b"first" && start.elapsed() >= Duration::from_millis(380), "after {:?}", start.elapsed());
    let (count, reason, queue) = first_death(&d)?;
    ensure!((count, reason.as_str(), queue.as_str()) == (1, "expired", "wait"));
    ensure!(next(&mut c).await?.data == b"second");
    let q = ch.queue_declare("wait".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await?;
    ensure!(q.message_count() == 0);
    Ok(())
}

#[tokio::test]
async fn topic_bindings_with_hash_before_the_last_word_route_and_survive_a_restart() -> Result<()> {
    let mut broker = TestBroker::start().await?;
    let publish_all = |ch: &Channel| {
        let ch = ch.clone();
        async move {
            for key in ["kern.disk.error", "error", "a.z", "a.b.c.z", "a.b", "error.not", "x.a.y.z"] {
                publish(&ch, "amq.topic", key, key.as_bytes()).await?;
            }
            anyhow::Ok(())
        }
    };
    {
        let (conn, ch) = broker.channel().await?;
        ch.queue_declare("errors".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
        ch.queue_declare("a-to-z".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
        ch.queue_bind("errors".into(), "amq.topic".into(), "#.error".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        ch.queue_bind("a-to-z".into(), "amq.topic".into(), "a.#.z".into(), QueueBindOptions::default(), FieldTable::default()).await?;
        publish_all(&ch).await?;
        ensure!(drain_bodies(&ch, "errors").await? == ["kern.disk.error", "error"]);
        ensure!(drain_bodies(&ch, "a-to-z").await? == ["a.z", "a.b.c.z"]);
        conn.close(200, "restart".into()).await?;
    }
    broker.restart().await?;
    let (_conn, ch) = broker.channel().await?;
    publish_all(&ch).await?;
    ensure!(drain_bodies(&ch, "errors").await? == ["kern.disk.error", "error"]);
    ensure!(drain_bodies(&ch, "a-to-z").await? == ["a.z", "a.b.c.z"]);
    ch.queue_unbind("errors".into(), "amq.topic".into(), "#.error".into(), FieldTable::default()).await?;
    publish(&ch, "amq.topic", "disk.error", b"unbound").await?;
    ensure!(drain_bodies(&ch, "errors").await?.is_empty());
    Ok(())
}
