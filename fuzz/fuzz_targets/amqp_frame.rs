//! The AMQP frame reader never panics (nor overflows its stack) on arbitrary
//! bytes with a small frame_max; whatever it accepts re-encodes to a frame
//! that reads back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polymq_amqp::bytes::BytesMut;
use polymq_amqp::codec::{decode_frame, encode_content, encode_method, Frame};

/// Small, so the size check before buffering is exercised as often as the parsers.
const FRAME_MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut buf, FRAME_MAX) {
        let mut out = Vec::new();
        match &frame {
            Frame::Method(ch, m) => encode_method(*ch, m.clone(), &mut out),
            Frame::Header(ch, h) if h.body_size == 0 => encode_content(*ch, h.properties.clone(), &[], FRAME_MAX, &mut out),
            _ => continue,
        }
        // Compared as bytes (a NaN in a table is not equal to itself): our
        // encoding of what we read back is our encoding of what we read. A
        // re-encoding may be larger than the original (bits packed
        // differently), so it is read back without the size limit.
        let mut again = BytesMut::from(&out[..]);
        let back = decode_frame(&mut again, u32::MAX).expect("our own encoding decodes").expect("a whole frame");
        let mut out2 = Vec::new();
        match back {
            Frame::Method(ch, m) => encode_method(ch, m, &mut out2),
            Frame::Header(ch, h) => encode_content(ch, h.properties, &[], FRAME_MAX, &mut out2),
            other => panic!("read back as another kind of frame: {other:?}"),
        }
        assert_eq!(out, out2);
    }
});
