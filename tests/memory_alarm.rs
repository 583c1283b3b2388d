//! The memory alarm over real sockets: an MQTT publisher is blocked while
//! the broker holds too much, and unblocked once a consumer drains what the
//! broker held, even though the process's RSS stays above the clear mark
//! (the allocator keeps freed pages; here the test pins RSS with a ballast so
//! the outcome does not depend on the allocator). On a rule that clears only
//! when RSS falls back (main before this test), the publisher stays blocked.
//!
//! One test per binary: the broker runs in this process and the watermark is
//! set from this process's RSS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use polymq::config::Config;
use polymq::server::memory::RssReader;
use polymq::server::{shutdown_channel, ProtocolService, Server};
use polymq::Store;
use polymq_mqtt::{MqttConfig, MqttService};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::time::{sleep, Instant};

const MIB: u64 = 1 << 20;
/// The watermark sits this far above the RSS before the broker starts.
const HEADROOM: u64 = 32 * MIB;
const PAYLOAD: usize = 16 * 1024;
/// 96 MiB offered: three times the headroom, so the alarm must fire.
const MESSAGES: u64 = 6_000;

fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

async fn until(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn poll_until(ev: &mut EventLoop, mut want: impl FnMut(&Packet) -> bool) -> Result<()> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await.context("no packet within 10 s")??;
        if let Event::Incoming(p) = e {
            if want(&p) {
                return Ok(());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_unblocked_when_the_consumer_drains_even_if_rss_stays_high() -> Result<()> {
    let reader = RssReader::new();
    let Some(rss0) = reader.rss_bytes() else {
        eprintln!("SKIPPED: no /proc/self/statm here");
        return Ok(());
    };
    let watermark = rss0 + HEADROOM;
    let clear_mark = watermark / 10 * 9;

    let dir = tempfile::tempdir()?;
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        mqtt_listen: loopback,
        http_listen: loopback,
        memory_high_watermark_bytes: Some(watermark),
        ..Config::default()
    };
    let store_config = config.store_config();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config)).await??;
    let service: Arc<dyn ProtocolService> = MqttService::new(Arc::clone(&store), MqttConfig::default()).await?;
    let server = Server::bind(&config, Arc::clone(&store), vec![(config.mqtt_listen, service)]).await?;
    let addr = server.local_addrs().into_iter().find(|(p, _)| *p == "mqtt").map(|(_, a)| a).context("no mqtt listener")?;
    let (trigger, signal) = shutdown_channel();
    let server_task = tokio::spawn(server.run(signal.triggered()));
    let alarm = Arc::clone(store.memory_alarm());

    // A subscriber with a clean session (a memory-only queue) that stops
    // reading after SUBACK: what is published for it stays in the broker.
    let (sub, mut sub_ev) = AsyncClient::new(options(addr, "alarm-sub"), 10);
    poll_until(&mut sub_ev, |p| matches!(p, Packet::ConnAck(_))).await?;
    sub.subscribe("alarm/t", QoS::AtLeastOnce).await?;
    poll_until(&mut sub_ev, |p| matches!(p, Packet::SubAck(_))).await?;

    let (publisher, mut pub_ev) = AsyncClient::new(options(addr, "alarm-pub"), 10);
    let acked = Arc::new(AtomicU64::new(0));
    let pub_loop = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            loop {
                match pub_ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => return format!("{e:?}"),
                }
            }
        })
    };
    let pub_task = tokio::spawn(async move {
        let payload = vec![b'x'; PAYLOAD];
        for _ in 0..MESSAGES {
            publisher.publish("alarm/t", QoS::AtLeastOnce, false, payload.clone()).await?;
        }
        anyhow::Ok(publisher)
    });

    // Under load the alarm goes on and the publisher's acknowledgements stop.
    until(Instant::now() + Duration::from_secs(60), "the memory alarm is on", || alarm.is_on()).await?;
    let mut blocked_at = acked.load(Ordering::Relaxed);
    loop {
        sleep(Duration::from_secs(2)).await;
        let now = acked.load(Ordering::Relaxed);
        if now == blocked_at {
            break;
        }
        blocked_at = now;
    }
    ensure!(alarm.is_on(), "the alarm is off while the publisher is stalled");
    ensure!(blocked_at < MESSAGES, "every publish was acknowledged: the publisher was never blocked");
    eprintln!("blocked after {blocked_at} acks; RSS {} MiB, watermark {} MiB", rss_mib(&reader), watermark / MIB);

    // RSS stays above the watermark from here on, whatever the allocator does.
    let ballast = vec![1u8; watermark as usize];
    ensure!(reader.rss_bytes().unwrap_or(0) > watermark, "the ballast did not raise RSS");

    // The consumer drains.
    let received = Arc::new(AtomicU64::new(0));
    let sub_loop = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let _sub = sub;
            loop {
                match sub_ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => return format!("{e:?}"),
                }
            }
        })
    };

    // The publisher is acknowledged again, while RSS is still above the clear mark.
    until(Instant::now() + Duration::from_secs(30), "the publisher is acknowledged again", || {
        acked.load(Ordering::Relaxed) > blocked_at + 10
    })
    .await
    .with_context(|| {
        format!(
            "still blocked at {} acks; alarm on: {}; RSS {} MiB (clear mark {} MiB); subscriber got {}",
            acked.load(Ordering::Relaxed),
            alarm.is_on(),
            rss_mib(&reader),
            clear_mark / MIB,
            received.load(Ordering::Relaxed),
        )
    })?;
    let rss = reader.rss_bytes().unwrap_or(0);
    ensure!(rss > clear_mark, "RSS fell to {} MiB: the test did not keep it above the clear mark", rss / MIB);

    // Everything is published and delivered (the alarm may cycle meanwhile).
    let publisher = tokio::time::timeout(Duration::from_secs(120), pub_task).await.context("publishing did not finish")???;
    until(Instant::now() + Duration::from_secs(60), "every publish is acknowledged", || acked.load(Ordering::Relaxed) == MESSAGES).await?;
    until(Instant::now() + Duration::from_secs(60), "every message is delivered", || received.load(Ordering::Relaxed) >= MESSAGES).await?;
    drop(ballast);
    drop(publisher);
    pub_loop.abort();
    sub_loop.abort();
    trigger.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(15), server_task).await;
    Ok(())
}

fn rss_mib(reader: &RssReader) -> u64 {
    reader.rss_bytes().unwrap_or(0) / MIB
}
