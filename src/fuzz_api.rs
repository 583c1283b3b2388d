//! Entry points for the fuzz targets in `fuzz/` (and their regression tests):
//! the decoders a hostile or damaged input reaches, behind plain functions.
//! Not a stable API.

use bytes::Bytes;

/// Decodes `data` as a record body; must return, never panic.
pub fn decode_record(data: &[u8]) {
    let _ = crate::record::decode(Bytes::copy_from_slice(data));
}

/// Writes a segment with a valid header followed by `data`, opens a store on
/// it and closes it again. Must return (Ok or a clean error), never panic.
pub fn recover_segment(data: &[u8]) {
    let Ok(dir) = tempfile_dir() else { return };
    let log = dir.join("log");
    if std::fs::create_dir_all(&log).is_err() {
        return;
    }
    let mut file = crate::log::segment::encode_header(0).to_vec();
    file.extend_from_slice(data);
    if std::fs::write(log.join(crate::log::segment::file_name(0)), &file).is_err() {
        return;
    }
    let mut cfg = crate::StoreConfig::new(&dir);
    cfg.maintenance_interval = std::time::Duration::ZERO;
    cfg.fsync = crate::FsyncPolicy::Never;
    if let Ok(store) = crate::Store::open(cfg) {
        let _ = store.close();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("polymq-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn recovery_of_arbitrary_tails_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::recover_segment(&data);
        }
    }
}
