//! Small vectored writes sent as one plain write.
//!
//! hyper hands a message's head and its body chunks to the socket as separate buffers
//! (`writev`), which saves copying a large body. For the small messages a gateway mostly
//! carries, one contiguous `write` costs the kernel less than a `writev` of two or three pieces
//! (measured in BENCHMARKS.md), so writes up to [`MAX`] bytes are copied into a per-thread
//! scratch buffer first; larger ones still go out vectored, uncopied.

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest vectored write that is copied into one buffer.
pub const MAX: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `poll_write_vectored` on `w`, as one `poll_write` of the concatenated buffers when there are
/// several and they hold at most [`MAX`] bytes. Returns how many bytes were written, counted
/// across `bufs` in order, as a vectored write does.
pub fn poll_write_vectored<W: AsyncWrite + ?Sized>(
    w: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    let nonempty = bufs.iter().filter(|b| !b.is_empty()).count();
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if nonempty < 2 || total > MAX {
        return w.poll_write_vectored(cx, bufs);
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            scratch.clear();
            for b in bufs {
                scratch.extend_from_slice(b);
            }
            w.poll_write(cx, &scratch)
        }
        // Only if a write re-entered this one on the same thread.
        Err(_) => w.poll_write_vectored(cx, bufs),
    })
}

/// A stream whose small vectored writes go out as one write; see [`poll_write_vectored`].
#[derive(Debug)]
pub struct Coalesced<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        poll_write_vectored(Pin::new(&mut self.0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each call; accepts at most `limit` bytes per call, like a full socket buffer.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, Vec<u8>)>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = data.len().min(self.limit);
            self.calls.push(("write", data[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.limit);
            self.calls.push(("writev", all[..n].to_vec()));
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

    fn write(rec: &mut Recorder, bufs: &[&[u8]]) -> usize {
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut w = Coalesced(rec);
        match Pin::new(&mut w).poll_write_vectored(&mut cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn small_pieces_go_out_as_one_write_in_order() {
        let mut rec = Recorder {
            limit: usize::MAX,
            ..Default::default()
        };
        let n = write(
            &mut rec,
            &[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"{\"ok\":true}"],
        );
        assert_eq!(n, 30);
        assert_eq!(
            rec.calls,
            vec![("write", b"HTTP/1.1 200 OK\r\n\r\n{\"ok\":true}".to_vec())]
        );
    }

    #[test]
    fn a_partial_write_reports_the_bytes_taken_across_pieces() {
        let mut rec = Recorder {
            limit: 7,
            ..Default::default()
        };
        assert_eq!(write(&mut rec, &[b"abcd", b"efghij"]), 7);
        assert_eq!(rec.calls, vec![("write", b"abcdefg".to_vec())]);
    }

    #[test]
    fn one_piece_or_a_large_write_stays_vectored() {
        let mut rec = Recorder {
            limit: usize::MAX,
            ..Default::default()
        };
        write(&mut rec, &[b"only"]);
        let big = vec![b'x'; MAX];
        write(&mut rec, &[b"head", &big]);
        let kinds: Vec<_> = rec.calls.iter().map(|(k, d)| (*k, d.len())).collect();
        assert_eq!(kinds, vec![("writev", 4), ("writev", MAX + 4)]);
    }
}
