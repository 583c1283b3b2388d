//! Responses as a list of chunks, written with one vectored write: the small
//! fields go into one growing buffer, stored record batches are appended as
//! the `Bytes` the core read them into, so a Fetch answer never copies the
//! record data it carries (the kernel copies it once, into the socket).

use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Chunks shorter than this are copied into the running buffer: cheaper
/// than another iovec (and keeps the count of slices per write down).
const COPY_BELOW: usize = 1024;
/// Slices handed to one `writev` (Linux's IOV_MAX is 1024).
const IOV_PER_WRITE: usize = 256;

/// A response under construction: `done` chunks, then the bytes in `cur`.
#[derive(Default)]
pub(crate) struct Rope {
    done: Vec<Bytes>,
    cur: BytesMut,
}

impl Rope {
    pub fn new() -> Rope {
        Rope::default()
    }

    /// Where the small fields are written (`BufMut`).
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.cur
    }

    /// Appends `b` without copying it (unless it is small).
    pub fn push(&mut self, b: Bytes) {
        if b.len() < COPY_BELOW {
            self.cur.put_slice(&b);
            return;
        }
        self.flush_cur();
        self.done.push(b);
    }

    fn flush_cur(&mut self) {
        if !self.cur.is_empty() {
            self.done.push(self.cur.split().freeze());
        }
    }

    pub fn into_chunks(mut self) -> Vec<Bytes> {
        self.flush_cur();
        self.done
    }
}

/// Writes every chunk, in order, with vectored writes; a short write resumes
/// inside the chunk where it stopped.
pub(crate) async fn write_all_chunks<W: AsyncWrite + Unpin>(wr: &mut W, chunks: &mut [Bytes]) -> std::io::Result<()> {
    let mut first = 0usize;
    while first < chunks.len() {
        if chunks[first].is_empty() {
            first += 1;
            continue;
        }
        let written = {
            let slices: Vec<IoSlice<'_>> =
                chunks[first..].iter().filter(|c| !c.is_empty()).take(IOV_PER_WRITE).map(|c| IoSlice::new(c)).collect();
            wr.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the socket took no bytes"));
        }
        let mut left = written;
        while left > 0 {
            let c = &mut chunks[first];
            if left >= c.len() {
                left -= c.len();
                first += 1;
            } else {
                c.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A writer that takes at most `max` bytes per call and records them.
    struct Trickle {
        max: usize,
        got: Vec<u8>,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(mut self: Pin<&mut Self>, _: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn the_rope_keeps_big_chunks_and_order() {
        let big = Bytes::from(vec![7u8; 5000]);
        let mut r = Rope::new();
        r.buf().put_i32(1);
        r.push(Bytes::from_static(b"small"));
        r.push(big.clone());
        r.buf().put_u8(9);
        let chunks = r.into_chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), big.as_ptr(), "the big chunk is the caller's bytes, not a copy");
        let all: Vec<u8> = chunks.concat();
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(b"small");
        want.extend_from_slice(&big);
        want.push(9);
        assert_eq!(all, want);
    }

    #[test]
    fn short_writes_resume_where_they_stopped() {
        let chunks: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; (i as usize * 37) % 300])).collect();
        let want: Vec<u8> = chunks.concat();
        for max in [1, 3, 64, 299, 300, 301, 100_000] {
            let mut w = Trickle { max, got: Vec::new(), calls: 0 };
            let mut c = chunks.clone();
            block_on(write_all_chunks(&mut w, &mut c)).expect("write");
            assert_eq!(w.got, want, "max {max}");
            if max == 100_000 {
                assert_eq!(w.calls, 1, "one vectored write when the socket takes it all");
            }
        }
    }
}
