//! One side of a bridge as an MQTT client: a stream split into a packet reader and a packet
//! writer (so the bridge's loop can read and write both sides at once), and how each side is
//! opened: the remote over TCP or TLS, the local session over an in-process pipe served by
//! the ordinary connection task.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use sluice_codec::{encode, DecodeError, Decoder, EncodeError, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::config::{host_port, BridgeConfig};

/// What a bridge reads from and writes to: TCP, TLS over TCP, or the in-process pipe.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// Why a side of the bridge went away.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("connection closed")]
    Closed,
    #[error("the remote refused the connection: CONNACK {0}")]
    Refused(sluice_codec::ReasonCode),
    #[error("{0}")]
    Protocol(String),
}

/// Decodes packets from one side. [`PacketReader::next`] is cancel-safe (its only await is a
/// `read_buf` into the kept buffer), so it can sit in a `select!`.
pub struct PacketReader {
    rd: ReadHalf<BoxStream>,
    buf: BytesMut,
    decoder: Decoder,
}

impl PacketReader {
    /// The next packet; `Closed` at end of stream.
    pub async fn next(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf)? {
                return Ok(p);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}

/// Encodes packets for one side into a buffer, written by [`PacketWriter::write_some`]
/// (cancel-safe: a write either took bytes, which are then consumed, or did nothing).
pub struct PacketWriter {
    wr: WriteHalf<BoxStream>,
    buf: BytesMut,
    protocol: Protocol,
    /// Bytes were written since the last flush (TLS buffers them).
    unflushed: bool,
}

/// Past this many bytes waiting for one side, the bridge stops reading the other.
pub const WRITE_HIGH_WATER: usize = 1 << 20;

impl PacketWriter {
    pub fn send(&mut self, packet: &Packet) -> Result<(), LinkError> {
        encode(packet, self.protocol, &mut self.buf)?;
        Ok(())
    }

    /// Bytes waiting to be written.
    pub fn backlog(&self) -> usize {
        self.buf.len()
    }

    /// Whether there is anything to write or flush.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty() || self.unflushed
    }

    /// Writes what it can of the buffer, or flushes once it is empty.
    pub async fn write_some(&mut self) -> Result<(), LinkError> {
        if self.buf.is_empty() {
            self.wr.flush().await?;
            self.unflushed = false;
            return Ok(());
        }
        let n = self.wr.write(&self.buf).await?;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        self.buf.advance(n);
        self.unflushed = true;
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Writes everything pending (bounded by the caller's timeout).
    pub async fn flush_all(&mut self) -> Result<(), LinkError> {
        while self.pending() {
            self.write_some().await?;
        }
        Ok(())
    }

    /// Writes one packet and everything before it.
    pub async fn send_now(&mut self, packet: &Packet) -> Result<(), LinkError> {
        self.send(packet)?;
        self.flush_all().await
    }

    /// Appends raw bytes (a CONNECT patched for the bridge bit).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

/// Splits `stream` into a reader and a writer speaking `protocol`.
pub fn split(
    stream: BoxStream,
    protocol: Protocol,
    max_packet_size: usize,
) -> (PacketReader, PacketWriter) {
    let (rd, wr) = tokio::io::split(stream);
    (
        PacketReader {
            rd,
            buf: BytesMut::with_capacity(4096),
            decoder: Decoder::with_protocol(protocol, max_packet_size),
        },
        PacketWriter {
            wr,
            buf: BytesMut::new(),
            protocol,
            unflushed: false,
        },
    )
}

/// Opens the transport to the remote: TCP, then TLS when `tls` is set (rustls; the server
/// name is the address's host).
pub async fn open_remote(b: &BridgeConfig) -> Result<BoxStream, LinkError> {
    let tcp = TcpStream::connect(&b.address).await?;
    let _ = tcp.set_nodelay(true);
    if b.tls.is_none() {
        return Ok(Box::new(tcp));
    }
    let config = client_config(b).map_err(LinkError::Protocol)?;
    let (host, _) = host_port(&b.address)
        .ok_or_else(|| LinkError::Protocol(format!("bad address {}", b.address)))?;
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| LinkError::Protocol(format!("server name {host}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| LinkError::Protocol(format!("TLS handshake: {e}")))?;
    Ok(Box::new(tls))
}

/// The rustls client configuration of a bridge with `tls` (files read at each connect, so a
/// renewed certificate is picked up by the next reconnect; `config` checked that they exist).
fn client_config(b: &BridgeConfig) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let t = b.tls.as_ref().ok_or("no tls section")?;
    let certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|c| {
                if c.is_empty() {
                    Err(format!("{}: no certificate found", path.display()))
                } else {
                    Ok(c)
                }
            })
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&t.ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", t.ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs(cert)?, key_der)
                .map_err(|e| format!("{}: {e}", cert.display()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Sets the bridge bit in an encoded MQTT 3.1.1 CONNECT: protocol level 0x84 instead of 4, as
/// Mosquitto's bridges send. A Mosquitto remote then treats the connection as a bridge: it
/// does not send a client's own messages back to it (loop prevention) and keeps RETAIN as
/// published. Returns false (bytes unchanged) if `connect` is not a 3.1.1 CONNECT.
pub fn set_bridge_bit(connect: &mut [u8]) -> bool {
    // Fixed header: type byte, then the Remaining Length (1 to 4 bytes, 0x80: more follow).
    let mut at = 1;
    while connect.get(at).is_some_and(|b| b & 0x80 != 0) {
        at += 1;
    }
    at += 1;
    // Variable header: protocol name (0x00 0x04 "MQTT"), then the level.
    match connect.get(at..at + 7) {
        Some([0, 4, b'M', b'Q', b'T', b'T', 4]) => {
            connect[at + 6] = 0x84;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_codec::{Connect, Str};

    #[test]
    fn the_bridge_bit_goes_into_the_protocol_level_of_a_311_connect() {
        let connect = Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            clean_start: false,
            keep_alive: 60,
            client_id: Str::from_static("edge-1"),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }));
        let mut buf = BytesMut::new();
        encode(&connect, Protocol::V311, &mut buf).unwrap();
        let plain = buf.clone();
        assert!(set_bridge_bit(&mut buf));
        assert_eq!(&buf[2..9], b"\x00\x04MQTT\x84");
        let diff = plain.iter().zip(buf.iter()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 1, "only the level byte changes");
        let mut v5 = BytesMut::new();
        encode(&connect, Protocol::V5, &mut v5).unwrap();
        assert!(!set_bridge_bit(&mut v5), "5.0 has No Local instead");
    }
}
