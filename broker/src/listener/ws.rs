//! MQTT over WebSockets: the HTTP upgrade (path, `mqtt` subprotocol) and [`WsStream`], which
//! turns a WebSocket into the byte stream the connection task reads and writes.
//!
//! MQTT's WebSocket binding (MQTT 5.0 section 6) sends MQTT bytes in binary frames with no
//! alignment between frames and packets: one packet may span frames and one frame may carry
//! several packets. [`WsStream`] therefore concatenates binary payloads on read and sends each
//! write as one binary frame. Pings are answered by tungstenite; a Close ends the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Subprotocols accepted, in order of preference: `mqtt` (3.1.1 and 5.0) and `mqttv3.1`.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Answers the HTTP upgrade on `path` with the `mqtt` subprotocol; `max_packet_size` bounds
/// frames and messages. Errors are the reason to log.
pub async fn accept<S>(
    stream: S,
    path: &str,
    max_packet_size: usize,
) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // One frame may carry several packets; a little room over one whole packet.
    let limit = max_packet_size.saturating_mul(2).max(64 * 1024);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let path = path.to_owned();
    // The error type is tungstenite's, fixed by its callback trait.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "no MQTT endpoint at this path",
            ));
        }
        let offered: Vec<&str> = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if offered.is_empty() {
            // Not asked for: some clients omit it; the binding needs no more than binary frames.
            return Ok(resp);
        }
        match SUBPROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        {
            Some(p) => {
                resp.headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
                Ok(resp)
            }
            None => Err(refuse(
                StatusCode::BAD_REQUEST,
                "subprotocol mqtt (or mqttv3.1) required",
            )),
        }
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsStream::new(ws))
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// A WebSocket as a byte stream: reads concatenate binary frames, each write is one binary
/// frame. Flush sends what tungstenite buffered; shutdown sends a Close frame.
#[derive(Debug)]
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary frame.
    pending: Bytes,
}

impl<S> WsStream<S> {
    pub fn new(ws: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                // Answered by tungstenite itself (pong), or nothing to do.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame: MQTT over WebSockets uses binary frames only",
                    )))
                }
                // End of stream: a Close frame or the socket closing.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        // Start sending at once; what does not fit now goes out on flush.
        let _ = Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    /// A server-side WsStream and a client WebSocket over an in-memory pipe.
    async fn pair() -> (
        WsStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { accept(a, "/mqtt", 1 << 20).await.unwrap() });
        let mut req = "ws://localhost/mqtt".into_client_request().unwrap();
        req.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt"),
        );
        let (client, resp) = tokio_tungstenite::client_async(req, b).await.unwrap();
        assert_eq!(
            resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(),
            "mqtt"
        );
        (server.await.unwrap(), client)
    }

    const CONNECT: &[u8] = &[
        0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4, b'a', b'b', b'c', b'd',
    ];

    async fn decode_one(
        s: &mut WsStream<tokio::io::DuplexStream>,
        buf: &mut bytes::BytesMut,
        dec: &mut sluice_codec::Decoder,
    ) -> sluice_codec::Packet {
        loop {
            if let Some(p) = dec.decode(buf).unwrap() {
                return p;
            }
            assert!(
                s.read_buf(buf).await.unwrap() > 0,
                "EOF before a whole packet"
            );
        }
    }

    #[tokio::test]
    async fn a_packet_split_across_frames_is_reassembled() {
        let (mut server, mut client) = pair().await;
        for chunk in CONNECT.chunks(3) {
            client
                .send(Message::Binary(Bytes::copy_from_slice(chunk)))
                .await
                .unwrap();
        }
        let mut buf = bytes::BytesMut::new();
        let mut dec = sluice_codec::Decoder::new(1 << 20);
        let p = decode_one(&mut server, &mut buf, &mut dec).await;
        assert!(matches!(p, sluice_codec::Packet::Connect(_)), "{p:?}");
    }

    #[tokio::test]
    async fn several_packets_in_one_frame_are_all_read() {
        let (mut server, mut client) = pair().await;
        // CONNECT, then two PINGREQs, all in one frame.
        let mut frame = CONNECT.to_vec();
        frame.extend_from_slice(&[0xC0, 0, 0xC0, 0]);
        client.send(Message::Binary(frame.into())).await.unwrap();
        // A ping in between is answered and skipped.
        client
            .send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(&[0xE0, 0])))
            .await
            .unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut dec = sluice_codec::Decoder::new(1 << 20);
        let mut kinds = Vec::new();
        for _ in 0..4 {
            kinds.push(match decode_one(&mut server, &mut buf, &mut dec).await {
                sluice_codec::Packet::Connect(_) => "connect",
                sluice_codec::Packet::PingReq => "pingreq",
                sluice_codec::Packet::Disconnect(_) => "disconnect",
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(kinds, ["connect", "pingreq", "pingreq", "disconnect"]);
        // The pong arrives at the client once the server has read past the ping.
        server.write_all(&[0xD0, 0]).await.unwrap();
        server.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            match client.next().await.unwrap().unwrap() {
                Message::Pong(p) => got.push(format!("pong {:?}", p)),
                Message::Binary(b) => got.push(format!("binary {:?}", b.as_ref())),
                other => panic!("{other:?}"),
            }
        }
        assert!(got.contains(&"binary [208, 0]".to_owned()), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("pong")), "{got:?}");
    }

    #[tokio::test]
    async fn each_write_is_one_binary_frame_and_close_is_eof() {
        let (mut server, mut client) = pair().await;
        server.write_all(&[0x20, 2, 0, 0]).await.unwrap();
        server.flush().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(b.as_ref(), &[0x20, 2, 0, 0]),
            other => panic!("{other:?}"),
        }
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn wrong_path_and_missing_subprotocol_are_refused() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { accept(a, "/mqtt", 1 << 20).await.map(|_| ()) });
        let r = tokio_tungstenite::client_async("ws://localhost/other", b).await;
        assert!(r.is_err());
        assert!(server.await.unwrap().is_err());

        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move { accept(a, "/mqtt", 1 << 20).await.map(|_| ()) });
        let mut req = "ws://localhost/mqtt".into_client_request().unwrap();
        req.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        assert!(tokio_tungstenite::client_async(req, b).await.is_err());
        assert!(server.await.unwrap().is_err());
    }
}
