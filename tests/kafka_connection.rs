//! Kafka connections end to end: SASL (PLAIN, SCRAM-SHA-256/512, v1 and v0
//! handshakes, refusals), the per-request read deadline and idle timeout,
//! and Produce throttling under the memory alarm. Requests are built with
//! kafka-protocol's client side; the SCRAM client is computed here.

mod kafka_common;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use kafka_common::{batch, record, Client, TestBroker};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use polymq_kafka::KafkaConfig;
use sha2::{Digest, Sha256, Sha512};
use tokio::io::AsyncWriteExt;

const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;

fn sasl_config() -> KafkaConfig {
    KafkaConfig { sasl: true, users: [("alice".to_owned(), "secret".to_owned())].into(), ..KafkaConfig::default() }
}

fn metadata() -> MetadataRequest {
    MetadataRequest::default().with_topics(None).with_allow_auto_topic_creation(false)
}

async fn handshake(c: &mut Client, mechanism: &str, version: i16) -> Result<SaslHandshakeResponse> {
    c.send(&SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into())), version).await
}

async fn authenticate(c: &mut Client, token: &[u8], version: i16) -> Result<SaslAuthenticateResponse> {
    c.send(&SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token)), version).await
}

// ---- the client side of SCRAM (RFC 5802) ----

fn hmac_of(sha512: bool, key: &[u8], data: &[u8]) -> Vec<u8> {
    if sha512 {
        let mut m = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    } else {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
}

fn scram_client_final(sha512: bool, password: &str, client_first_bare: &str, server_first: &str) -> Result<(String, Vec<u8>)> {
    let attr = |k: &str| server_first.split(',').find_map(|a| a.strip_prefix(k)).map(str::to_owned).context("attribute missing");
    let (nonce, salt, iterations): (String, Vec<u8>, u32) =
        (attr("r=")?, B64.decode(attr("s=")?).map_err(|e| anyhow::anyhow!("salt: {e}"))?, attr("i=")?.parse()?);
    let mut u = hmac_of(sha512, password.as_bytes(), &[salt.as_slice(), &1u32.to_be_bytes()].concat());
    let mut salted = u.clone();
    for _ in 1..iterations {
        u = hmac_of(sha512, password.as_bytes(), &u);
        salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = hmac_of(sha512, &salted, b"Client Key");
    let stored_key = if sha512 { Sha512::digest(&client_key).to_vec() } else { Sha256::digest(&client_key).to_vec() };
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac_of(sha512, &stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
    let server_key = hmac_of(sha512, &salted, b"Server Key");
    let server_signature = hmac_of(sha512, &server_key, auth_message.as_bytes());
    Ok((format!("{without_proof},p={}", B64.encode(proof)), format!("v={}", B64.encode(server_signature)).into_bytes()))
}

/// SaslHandshake v1 + SaslAuthenticate at `version`; returns the last response.
async fn login(c: &mut Client, mechanism: &str, user: &str, password: &str, version: i16) -> Result<SaslAuthenticateResponse> {
    let h = handshake(c, mechanism, 1).await?;
    if h.error_code != 0 {
        bail!("handshake error {}", h.error_code);
    }
    if mechanism == "PLAIN" {
        return authenticate(c, format!("\0{user}\0{password}").as_bytes(), version).await;
    }
    let sha512 = mechanism == "SCRAM-SHA-512";
    let first_bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
    let r = authenticate(c, format!("n,,{first_bare}").as_bytes(), version).await?;
    if r.error_code != 0 {
        return Ok(r);
    }
    let (final_msg, want_server_final) = scram_client_final(sha512, password, &first_bare, std::str::from_utf8(&r.auth_bytes)?)?;
    let r = authenticate(c, final_msg.as_bytes(), version).await?;
    if r.error_code == 0 && r.auth_bytes.as_ref() != want_server_final.as_slice() {
        bail!("the server's signature does not verify");
    }
    Ok(r)
}

#[tokio::test]
async fn every_mechanism_authenticates_at_every_version_and_then_requests_are_served() -> Result<()> {
    let broker = TestBroker::start_with(sasl_config()).await?;
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        for version in 0..=2 {
            let mut c = broker.client().await?;
            // ApiVersions is served before authentication and lists SASL.
            let versions = c.send(&ApiVersionsRequest::default(), 0).await?;
            assert!(versions.api_keys.iter().any(|k| k.api_key == ApiKey::SaslAuthenticate as i16 && k.max_version == 2));
            let r = login(&mut c, mechanism, "alice", "secret", version).await?;
            assert_eq!(r.error_code, 0, "{mechanism} v{version}: {:?}", r.error_message);
            let md = c.send(&metadata(), 12).await?;
            assert_eq!(md.brokers.len(), 1, "{mechanism} v{version}");
            // A second handshake after authentication is refused, the connection stays.
            assert_eq!(handshake(&mut c, mechanism, 1).await?.error_code, ILLEGAL_SASL_STATE);
            c.send(&metadata(), 12).await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_gets_58_and_is_closed() -> Result<()> {
    let broker = TestBroker::start_with(sasl_config()).await?;
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        for (user, password) in [("alice", "wrong"), ("mallory", "secret")] {
            let mut c = broker.client().await?;
            let r = login(&mut c, mechanism, user, password, 2).await?;
            assert_eq!(r.error_code, SASL_AUTHENTICATION_FAILED, "{mechanism} {user}/{password}");
            assert!(r.error_message.is_some());
            assert!(c.closed_by_server().await, "{mechanism} {user}: still open after a failed authentication");
        }
    }
    Ok(())
}

#[tokio::test]
async fn requests_before_authentication_close_the_connection() -> Result<()> {
    let broker = TestBroker::start_with(sasl_config()).await?;
    let mut c = broker.client().await?;
    c.send_only(&metadata(), 12).await?;
    assert!(c.closed_by_server().await, "Metadata before authentication was served");
    // Between handshake and authentication too.
    let mut c = broker.client().await?;
    handshake(&mut c, "PLAIN", 1).await?;
    c.send_only(&metadata(), 12).await?;
    assert!(c.closed_by_server().await);
    // SaslAuthenticate without a handshake: 34, closed.
    let mut c = broker.client().await?;
    assert_eq!(authenticate(&mut c, b"\0alice\0secret", 1).await?.error_code, ILLEGAL_SASL_STATE);
    assert!(c.closed_by_server().await);
    // An unknown mechanism: 33 with the list, closed.
    let mut c = broker.client().await?;
    let h = handshake(&mut c, "GSSAPI", 1).await?;
    assert_eq!(h.error_code, UNSUPPORTED_SASL_MECHANISM);
    let listed: Vec<String> = h.mechanisms.iter().map(|m| m.to_string()).collect();
    assert_eq!(listed, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);
    assert!(c.closed_by_server().await);
    Ok(())
}

#[tokio::test]
async fn a_v0_handshake_takes_bare_tokens() -> Result<()> {
    let broker = TestBroker::start_with(sasl_config()).await?;
    // PLAIN: the token in a bare frame, an empty frame back.
    let mut c = broker.client().await?;
    assert_eq!(handshake(&mut c, "PLAIN", 0).await?.error_code, 0);
    c.send_raw(b"\0alice\0secret").await?;
    assert!(c.read_frame().await?.is_empty());
    c.send(&metadata(), 12).await?;
    // SCRAM-SHA-256: two round trips of bare tokens.
    let mut c = broker.client().await?;
    assert_eq!(handshake(&mut c, "SCRAM-SHA-256", 0).await?.error_code, 0);
    let first_bare = "n=alice,r=abcdefgh";
    c.send_raw(format!("n,,{first_bare}").as_bytes()).await?;
    let server_first = c.read_frame().await?;
    let (final_msg, want) = scram_client_final(false, "secret", first_bare, std::str::from_utf8(&server_first)?)?;
    c.send_raw(final_msg.as_bytes()).await?;
    assert_eq!(c.read_frame().await?.as_ref(), want.as_slice());
    c.send(&metadata(), 12).await?;
    // A wrong password in a bare token: closed without an answer.
    let mut c = broker.client().await?;
    handshake(&mut c, "PLAIN", 0).await?;
    c.send_raw(b"\0alice\0nope").await?;
    assert!(c.closed_by_server().await);
    Ok(())
}

#[tokio::test]
async fn with_sasl_off_a_handshake_gets_illegal_sasl_state() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    assert_eq!(handshake(&mut c, "PLAIN", 1).await?.error_code, ILLEGAL_SASL_STATE);
    c.send(&metadata(), 12).await?;
    Ok(())
}

#[tokio::test]
async fn a_trickling_request_is_closed_at_the_deadline_and_others_keep_working() -> Result<()> {
    let cfg = KafkaConfig { request_read_timeout: Duration::from_millis(1500), ..KafkaConfig::default() };
    let broker = TestBroker::start_with(cfg).await?;
    let addr = broker.addr();
    // One byte a second of a valid Metadata request.
    let slow = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let started = Instant::now();
        for b in [0u8, 0, 0, 12, 0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0].iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                return Ok::<Duration, anyhow::Error>(started.elapsed());
            }
            let mut buf = [0u8; 16];
            match tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("still open after 20 s");
            }
        }
        unreachable!("cycle never ends")
    });
    // Meanwhile another client is served promptly.
    let mut c = broker.client().await?;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let t = Instant::now();
        c.send(&metadata(), 12).await?;
        assert!(t.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = slow.await??;
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(6), "closed after {took:?}");
    c.send(&metadata(), 12).await?;
    Ok(())
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() -> Result<()> {
    let cfg = KafkaConfig { connections_max_idle: Duration::from_millis(1200), ..KafkaConfig::default() };
    let broker = TestBroker::start_with(cfg).await?;
    let mut idle = broker.client().await?;
    let mut busy = broker.client().await?;
    let started = Instant::now();
    for _ in 0..8 {
        busy.send(&metadata(), 12).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(started.elapsed() > Duration::from_millis(2000));
    assert!(idle.closed_by_server().await, "the idle connection is still open");
    busy.send(&metadata(), 12).await?;
    Ok(())
}

fn produce_req(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(records))])])
}

#[tokio::test]
async fn under_the_memory_alarm_produce_is_throttled_and_still_stored() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = broker.client().await?;
    let b = batch(&[record(None, Some(b"v"), 1)])?;
    let r = c.send(&produce_req("mem", b.clone()), 9).await?;
    assert_eq!((r.throttle_time_ms, r.responses[0].partition_responses[0].error_code), (0, 0));

    broker.store().memory_alarm().force(Some(true));
    // v9 (KIP-219): answered at once with the throttle time, then the
    // connection reads nothing for that long.
    let t = Instant::now();
    let r = c.send(&produce_req("mem", b.clone()), 9).await?;
    assert_eq!(r.throttle_time_ms, 1000);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 1);
    assert!(t.elapsed() < Duration::from_millis(900), "v9 answer held for {:?}", t.elapsed());
    c.send(&metadata(), 12).await?;
    assert!(t.elapsed() >= Duration::from_millis(1000), "next request served after {:?}", t.elapsed());
    // v5: the answer itself is held.
    let t = Instant::now();
    let r = c.send(&produce_req("mem", b.clone()), 5).await?;
    assert_eq!((r.throttle_time_ms, r.responses[0].partition_responses[0].base_offset), (1000, 2));
    assert!(t.elapsed() >= Duration::from_millis(1000));
    // Other requests are not throttled.
    let t = Instant::now();
    c.send(&metadata(), 12).await?;
    assert!(t.elapsed() < Duration::from_millis(900));

    broker.store().memory_alarm().force(Some(false));
    let r = c.send(&produce_req("mem", b), 9).await?;
    assert_eq!((r.throttle_time_ms, r.responses[0].partition_responses[0].base_offset), (0, 3));
    Ok(())
}
