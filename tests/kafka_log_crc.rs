//! A produced batch's CRC-32C is computed once: the broker verifies the
//! batch's own checksum and the log combines it into its record checksum
//! instead of reading the batch again (`polymq::store::KnownCrc`). What must
//! hold, checked on the files a real server wrote for a real Produce:
//! the record on disk is framed exactly as the log always framed records
//! (`frame_prefix` over the whole body), and a byte flipped anywhere in the
//! batch, in the part whose checksum was combined or not, is caught when the
//! store opens the log again.

mod kafka_common;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kafka_common::{batch, decode_records, record, TestBroker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use polymq::config::Config;
use polymq::log::frame::{frame_prefix, read_frame, FrameRead, FRAME_PREFIX};
use polymq::{FsyncPolicy, Store, StoreError};
use polymq_kafka::KafkaConfig;

const TOPIC: &str = "crc";
/// Bytes 0..21 of a batch are outside its CRC (the log reads them itself).
const BATCH_CRC_START: usize = 21;
const SEGMENT_HEADER_BYTES: usize = 32;

fn produce_req(records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
        .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(records))])])
}

fn fetch_req() -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(50 << 20)])])
}

/// Every segment file under `dir`.
fn segments(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// The segment and byte offset of the one log record whose body ends with
/// `batch`, and that record's body length.
fn find_record(dir: &Path, batch: &[u8]) -> Result<(PathBuf, usize, usize)> {
    let mut found = Vec::new();
    for seg in segments(dir) {
        let buf = std::fs::read(&seg)?;
        let mut at = SEGMENT_HEADER_BYTES;
        while let FrameRead::Record { body, total } = read_frame(&buf[at.min(buf.len())..]) {
            if body.ends_with(batch) {
                // Framed as the log frames any record: length and CRC-32C of the whole body.
                assert_eq!(&buf[at..at + FRAME_PREFIX], &frame_prefix(&[body])[..], "the frame prefix differs from the ordinary one");
                found.push((seg.clone(), at, body.len()));
            }
            at += total;
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("{n} log records hold the batch, expected 1"),
    }
}

fn xor_byte(path: &Path, offset: usize) -> Result<()> {
    let mut buf = std::fs::read(path)?;
    buf[offset] ^= 0x20;
    std::fs::write(path, buf)?;
    Ok(())
}

fn open_store(dir: &Path) -> Result<std::sync::Arc<Store>, StoreError> {
    Store::open(Config { data_dir: dir.to_path_buf(), fsync: FsyncPolicy::Always, ..Config::default() }.store_config())
}

#[tokio::test]
async fn a_produced_batch_is_framed_as_always_and_a_flipped_byte_in_it_is_caught_on_recovery() -> Result<()> {
    let mut broker = TestBroker::start_full(KafkaConfig::default(), FsyncPolicy::Always).await?;
    let mut c = broker.client().await?;
    // Four records of 20 KiB: past the size the log writer copies rather
    // than writes from the request's buffer (64 KiB).
    let values: Vec<Vec<u8>> = (0..4u8).map(|i| (0..20 * 1024).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i)).collect()).collect();
    let recs: Vec<_> = values.iter().map(|v| record(Some(b"key"), Some(v), 1_700_000_000_000)).collect();
    let produced = batch(&recs)?;
    let resp = c.send(&produce_req(produced.clone()), 7).await?;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    // A small one after it, so the big record is not the log's last.
    let resp = c.send(&produce_req(batch(&[record(None, Some(b"after"), 1)])?), 7).await?;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    drop(c);
    broker.stop().await?;

    let dir = broker.data_dir().to_path_buf();
    let (seg, at, body_len) = find_record(&dir, &produced)?;
    let batch_at = at + FRAME_PREFIX + body_len - produced.len();
    // In the batch's CRC-covered tail (combined, not re-read, when written),
    // at its last byte, and in its first bytes (which the log reads itself).
    for flip in [batch_at + BATCH_CRC_START + 30 * 1024, batch_at + produced.len() - 1, batch_at + 5] {
        xor_byte(&seg, flip)?;
        match open_store(&dir) {
            Err(StoreError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, seg, "the damaged segment is named");
                assert_eq!(offset, at as u64, "the damaged record's offset is named");
            }
            Err(e) => bail!("a byte flipped at {flip} gave {e}, expected a checksum refusal"),
            Ok(_) => bail!("the store opened over a record with a byte flipped at {flip}"),
        }
        xor_byte(&seg, flip)?;
    }

    // Undamaged again, it opens and serves the batch as produced.
    broker.start_again().await.context("restart on the repaired log")?;
    let mut c = broker.client().await?;
    let resp = c.send(&fetch_req(), 11).await?;
    let got = decode_records(&resp.responses[0].partitions[0].records)?;
    let got: Vec<_> = got.iter().map(|r| r.value.clone().unwrap_or_default()).collect();
    let mut want: Vec<Bytes> = values.into_iter().map(Bytes::from).collect();
    want.push(Bytes::from_static(b"after"));
    assert_eq!(got, want);
    Ok(())
}
