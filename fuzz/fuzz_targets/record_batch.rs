//! A stored record batch decoded for delivery record by record (what a Kafka
//! producer controls completely): never panics, never allocates more than
//! the bound it is given, whatever the codec claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let batch = bytes::Bytes::copy_from_slice(data);
    if let Ok(records) = polymq_formats::record_batch::decode(&batch, MAX) {
        let decoded: usize =
            records.iter().map(|r| r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len())).sum();
        assert!(decoded <= MAX, "decoded {decoded} bytes past the bound {MAX}");
    }
});
