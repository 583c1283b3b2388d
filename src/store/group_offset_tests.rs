//! Listing and deleting a group's committed offsets, across a restart.

use std::sync::Arc;
use std::time::Duration;

use crate::queue::QueueOptions;
use crate::{FsyncPolicy, Store, StoreConfig};

fn open(dir: &std::path::Path) -> Arc<Store> {
    let mut c = StoreConfig::new(dir);
    c.fsync = FsyncPolicy::Always;
    c.maintenance_interval = Duration::ZERO;
    Store::open(c).expect("open")
}

#[tokio::test]
async fn a_groups_offsets_are_listed_and_deleted_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let a = s.declare_queue("a", QueueOptions::stream()).await.expect("a").id;
    let b = s.declare_queue("b", QueueOptions::stream()).await.expect("b").id;
    s.commit_offset("kafka/g1", a, 3).await.expect("commit");
    s.commit_offset("kafka/g1", b, 4).await.expect("commit");
    s.commit_offset("kafka/g2", a, 5).await.expect("commit");
    s.commit_offset("other", a, 6).await.expect("commit");
    let mut want = vec![(a, 3), (b, 4)];
    want.sort_unstable();
    assert_eq!(s.group_offsets("kafka/g1"), want);
    assert_eq!(s.group_offsets("kafka/none"), vec![]);
    assert_eq!(s.offset_groups("kafka/"), vec!["kafka/g1".to_owned(), "kafka/g2".to_owned()]);
    assert_eq!(s.delete_group_offsets("kafka/g1").await.expect("delete"), 2);
    assert_eq!(s.delete_group_offsets("kafka/g1").await.expect("delete again"), 0);
    assert_eq!(s.committed_offset("kafka/g1", a), None);
    assert_eq!(s.offset_groups("kafka/"), vec!["kafka/g2".to_owned()]);
    s.close().expect("close");
    drop(s);

    let s = open(dir.path());
    assert_eq!(s.group_offsets("kafka/g1"), vec![], "the deletion is replayed");
    assert_eq!(s.committed_offset("kafka/g2", a), Some(5));
    assert_eq!(s.committed_offset("other", a), Some(6));
    // A group deleted and committed again keeps only the new offsets.
    s.commit_offset("kafka/g1", b, 9).await.expect("commit");
    s.close().expect("close");
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.group_offsets("kafka/g1"), vec![(b, 9)]);
    s.close().expect("close");
}
