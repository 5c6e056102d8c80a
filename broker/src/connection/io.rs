//! Socket helpers of the connection task: reading into the read buffer, writing or flushing,
//! the final packet of a closing connection, and the linger after it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use sluice_codec::{encode, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{FLUSH_TIMEOUT, LINGER, READ_BUF};

/// Reads and discards what the peer still sends, until it closes or [`LINGER`] has passed. A
/// peer that keeps writing after the server closed its side would otherwise get a reset when
/// the socket is closed with unread data, and never read the DISCONNECT (or refusing CONNACK)
/// already sent to it. Bounded in time and memory (one small buffer), and it holds nothing
/// another client needs: the session is already handed on.
pub(super) async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

/// Reads more bytes into `rbuf` (Ok(0): the peer closed), or, when `undecoded` is set (bytes
/// read before the main loop and not decoded yet), clears it and returns their number at once
/// without reading.
pub(super) fn poll_read_more<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    rd: &mut R,
    rbuf: &mut BytesMut,
    undecoded: &mut bool,
) -> Poll<std::io::Result<usize>> {
    if std::mem::take(undecoded) && !rbuf.is_empty() {
        return Poll::Ready(Ok(rbuf.len()));
    }
    if !rbuf.is_empty() || rbuf.capacity() > 0 {
        // `read_buf`'s future holds no state between polls: made afresh on each.
        return std::pin::pin!(rd.read_buf(rbuf)).poll(cx);
    }
    // Idle: no buffer is held while waiting. The bytes are read into the stack, which exists
    // only while polled (not in the connection's future), and copied into a buffer of their
    // size once there are some.
    let mut stack = [0u8; READ_BUF];
    let mut buf = ReadBuf::new(&mut stack);
    std::task::ready!(Pin::new(&mut *rd).poll_read(cx, &mut buf))?;
    rbuf.extend_from_slice(buf.filled());
    Poll::Ready(Ok(buf.filled().len()))
}

/// Writes some of `buf` (Some(n)), or, with nothing to write, flushes (None).
pub(super) fn poll_write_or_flush<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    wr: &mut W,
    buf: &[u8],
) -> Poll<std::io::Result<Option<usize>>> {
    if buf.is_empty() {
        Pin::new(wr).poll_flush(cx).map_ok(|()| None)
    } else {
        Pin::new(wr).poll_write(cx, buf).map_ok(Some)
    }
}

/// Writes one packet and closes, best effort, bounded in time.
pub(super) async fn write_final<W: AsyncWrite + Unpin>(
    wr: &mut W,
    packet: &Packet,
    protocol: Protocol,
) {
    let mut buf = BytesMut::new();
    if encode(packet, protocol, &mut buf).is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, wr.write_all(&buf)).await;
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, wr.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    /// A peer that neither closes nor stops writing holds a closing connection for at most
    /// `LINGER` (virtual time: the clock is paused and advances only when everything waits).
    #[tokio::test(start_paused = true)]
    async fn linger_is_bounded_for_a_peer_that_never_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut rd, _wr) = tokio::io::split(server);
        let writer = tokio::spawn(async move {
            // Keeps writing (and stays open) until the server side is gone.
            while client.write_all(b"\xc0\x00").await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        let start = tokio::time::Instant::now();
        super::linger(&mut rd).await;
        assert_eq!(start.elapsed(), super::super::LINGER);
        writer.abort();
    }

    /// A peer that closes ends the linger at once.
    #[tokio::test(start_paused = true)]
    async fn linger_ends_when_the_peer_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut rd, _wr) = tokio::io::split(server);
        client.write_all(b"\xc0\x00").await.unwrap();
        drop(client);
        let start = tokio::time::Instant::now();
        super::linger(&mut rd).await;
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
    }
}
