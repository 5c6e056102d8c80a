//! One MQTT client connection of the load generator: a non-split `TcpStream` driven by
//! readiness (`ready` + `try_read`/`try_write`), so a single task can read acknowledgements while
//! it still has output to write, without cancelling a half-done `write_all`. Packets are encoded
//! and decoded with `sluice_codec`.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use sluice_codec::{
    encode, ConnAck, Connect, ConnectProperties, Decoder, Disconnect, Packet, Protocol, QoS,
    ReasonCode, Str, Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
    TopicFilter,
};
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

/// Largest packet the generator accepts from a broker.
const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub client_id: String,
    pub clean: bool,
    /// 5.0 Session Expiry Interval (persistent sessions need one in 5.0).
    pub session_expiry: Option<u32>,
    pub keep_alive: u16,
}

/// A connected MQTT client.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Encoded packets not yet written.
    pub wbuf: BytesMut,
    decoder: Decoder,
    pub protocol: Protocol,
}

impl Conn {
    /// Opens a TCP connection, sends CONNECT and waits for a successful CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        opts: &ConnectOpts,
        deadline: Instant,
    ) -> Result<(Conn, ConnAck)> {
        Conn::connect_from(addr, None, protocol, opts, deadline).await
    }

    /// [`Conn::connect`] from source address `local` (port chosen by the kernel) when given:
    /// many connections to one broker address spread over several source addresses so the
    /// ephemeral port range of one does not run out.
    pub async fn connect_from(
        addr: SocketAddr,
        local: Option<IpAddr>,
        protocol: Protocol,
        opts: &ConnectOpts,
        deadline: Instant,
    ) -> Result<(Conn, ConnAck)> {
        let connecting = async {
            match local {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let socket = if ip.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await
                }
            }
        };
        let stream = timeout_at(deadline, connecting)
            .await
            .map_err(|_| anyhow!("TCP connect to {addr} timed out"))?
            .with_context(|| format!("TCP connect to {addr} from {local:?}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            decoder: Decoder::with_protocol(protocol, MAX_PACKET),
            protocol,
        };
        let connect = Connect {
            protocol,
            clean_start: opts.clean,
            keep_alive: opts.keep_alive,
            client_id: Str::try_from(opts.client_id.as_str())
                .map_err(|e| anyhow!("client id: {e:?}"))?,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: if protocol.is_v5() {
                    opts.session_expiry
                } else {
                    None
                },
                ..Default::default()
            },
        };
        conn.queue(&Packet::Connect(Box::new(connect)))?;
        match conn.expect(deadline).await? {
            Packet::ConnAck(ack) if !ack.reason.is_error() => Ok((conn, ack)),
            Packet::ConnAck(ack) => bail!("CONNECT refused: {}", ack.reason),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    /// Frees the read and write buffers when nothing is buffered (an idle connection held
    /// by the thousands keeps no 64 KiB buffers); `pump` grows them again when needed.
    pub fn release_buffers(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
    }

    /// Appends an encoded packet to the output buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<()> {
        encode(packet, self.protocol, &mut self.wbuf).map_err(|e| anyhow!("encode: {e}"))
    }

    /// The next complete packet already read, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>> {
        self.decoder
            .decode(&mut self.rbuf)
            .map_err(|e| anyhow!("decode: {e}"))
    }

    /// [`Conn::pump`] for at most 100 ms (a waiting reader's tick); an error once the broker
    /// has closed the connection.
    pub async fn pump_or_tick(&mut self) -> Result<()> {
        tokio::select! {
            r = self.pump() => {
                if !r? {
                    bail!("connection closed by the broker");
                }
            }
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        Ok(())
    }

    /// Waits until the socket can make progress (readable, or writable while output is pending)
    /// and does that I/O. Returns `false` when the peer closed the connection. Cancel-safe: the
    /// only await is on readiness.
    pub async fn pump(&mut self) -> Result<bool> {
        let interest = if self.wbuf.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let ready = self.stream.ready(interest).await?;
        if ready.is_writable() && !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("write"),
            }
        }
        if ready.is_readable() {
            self.rbuf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(e).context("read"),
            }
        }
        Ok(true)
    }

    /// Writes all pending output (reading meanwhile, so the peer is never blocked by us).
    pub async fn flush(&mut self, deadline: Instant) -> Result<()> {
        while !self.wbuf.is_empty() {
            match timeout_at(deadline, self.pump()).await {
                Err(_) => bail!("flush timed out"),
                Ok(r) => {
                    if !r? {
                        bail!("connection closed by the broker");
                    }
                }
            }
        }
        Ok(())
    }

    /// Flushes, then waits for the next packet.
    pub async fn expect(&mut self, deadline: Instant) -> Result<Packet> {
        self.flush(deadline).await?;
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            match timeout_at(deadline, self.pump()).await {
                Err(_) => bail!("no packet from the broker in time"),
                Ok(r) => {
                    if !r? {
                        bail!("connection closed by the broker");
                    }
                }
            }
        }
    }

    /// Writes what it can of the pending output now, without waiting.
    pub fn try_write_now(&mut self) -> Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => break,
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("write"),
            }
        }
        Ok(())
    }

    /// Queues a SUBSCRIBE (packet id 1) for one filter without waiting for the SUBACK.
    pub fn queue_subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        let sub = Subscribe {
            pkid: 1,
            filters: vec![Subscription {
                filter: TopicFilter::try_from(filter).map_err(|e| anyhow!("filter: {e:?}"))?,
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            rejected: Vec::new(),
            properties: SubscribeProperties::default(),
        };
        self.queue(&Packet::Subscribe(sub))
    }

    /// Subscribes to one filter and waits for a successful SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS, deadline: Instant) -> Result<()> {
        self.queue_subscribe(filter, qos)?;
        match self.expect(deadline).await? {
            Packet::SubAck(ack) => {
                let code = ack.reasons.first().copied().unwrap_or(ReasonCode(0x80));
                if code.is_error() {
                    bail!("SUBSCRIBE {filter} refused: {code}");
                }
                if code.0 < qos as u8 {
                    bail!("SUBSCRIBE {filter}: granted QoS {} < {}", code.0, qos as u8);
                }
                Ok(())
            }
            // Nothing else is expected before the SUBACK (sessions subscribing are fresh).
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    }

    /// Sends DISCONNECT (normal) and waits, bounded, until it is written; then drops the socket.
    /// The broker closing the connection once the DISCONNECT is written is the expected end, not
    /// an error (`pump` may see that close in the same call that wrote the packet: tokio keeps
    /// read readiness until a read would block).
    pub async fn disconnect(mut self, deadline: Instant) -> Result<()> {
        self.queue(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))?;
        while !self.wbuf.is_empty() {
            match timeout_at(deadline, self.pump()).await {
                Err(_) => bail!("flush timed out"),
                Ok(r) => {
                    if !r? && !self.wbuf.is_empty() {
                        bail!("connection closed by the broker before DISCONNECT was written");
                    }
                }
            }
        }
        Ok(())
    }
}
