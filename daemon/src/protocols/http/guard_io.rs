//! What the two request guards ([`super::h1guard`], [`super::h2guard`]) share: both
//! sit between the agent and hyper, read the agent's bytes into a buffer of their own
//! to check them before hyper sees them, and pass hyper's writes to the agent
//! untouched.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// Reads what the agent sent next into `input`, or marks its end in `eof`.
pub(super) fn read_more<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    input: &mut BytesMut,
    eof: &mut bool,
) -> Poll<std::io::Result<()>> {
    let mut chunk = [0u8; 16 * 1024];
    let mut read = ReadBuf::new(&mut chunk);
    std::task::ready!(Pin::new(inner).poll_read(cx, &mut read))?;
    if read.filled().is_empty() {
        *eof = true;
    } else {
        input.extend_from_slice(read.filled());
    }
    Poll::Ready(Ok(()))
}

/// `AsyncWrite` for a guard: every write goes straight to its `inner` stream.
macro_rules! write_through {
    ($guard:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $guard<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(super) use write_through;
