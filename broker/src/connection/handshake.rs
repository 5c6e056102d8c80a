//! The start of a connection, before the main loop: read CONNECT, check credentials, run an
//! enhanced authentication exchange, negotiate and admit the client (`protocol::connect`),
//! and answer with CONNACK, or refuse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_codec::{
    encode, Auth, AuthProperties, ConnAck, Connect, DecodeError, Decoder, Packet, Protocol,
    ReasonCode, Str,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::io::write_final;
use super::ConnInfo;

use crate::auth::enhanced::AuthStep;
use crate::broker::Broker;
use crate::protocol::connect::{admit, negotiate, refusal, Admitted, Credentials};
use crate::protocol::ClientState;
use crate::session::ControlGuard;

/// A connection past CONNECT/CONNACK: what the main loop needs.
pub(super) struct Established {
    pub(super) state: ClientState,
    /// Whose drop answers a takeover of a connection that is gone; its `connection` is this
    /// connection's number.
    pub(super) control: ControlGuard,
    pub(super) protocol: Protocol,
    pub(super) keep_alive: u16,
    pub(super) now: Instant,
}

/// Reads CONNECT, authenticates, negotiates, opens the session and queues CONNACK (and the
/// resent inflight messages). None: the connection was refused or closed (already answered).
/// Awaited boxed: its locals are needed once, not for the connection's whole life.
pub(super) async fn establish<S>(
    info: &mut ConnInfo,
    broker: &Arc<Broker>,
    io: &mut S,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Option<Established>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = info.peer;
    let listener = info.listener;
    let tls_identity = info.tls_identity.take();
    let refuse = info.refuse.take();
    // CONNECT must arrive within `limits.connect_timeout` of the accept.
    let connect_timeout = Duration::from_secs(broker.config.limits.connect_timeout);
    let mut connect = match tokio::time::timeout(
        connect_timeout,
        // Boxed, like the other one-off steps before the main loop: the task's future is sized
        // by its largest await, and these would otherwise be paid for by every idle
        // connection for its whole life.
        Box::pin(read_connect(&mut *io, rbuf, decoder)),
    )
    .await
    {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => {
            tracing::debug!(%peer, "connection closed before CONNECT");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "refused connection: bad CONNECT");
            if let DecodeError::UnsupportedProtocol { .. } = e {
                // Answered in the 3.1.1 form, the only one such a client can be expected to read
                // [MQTT-3.1.2-2]: return code 0x01.
                let ack = ConnAck {
                    session_present: false,
                    reason: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                    properties: Default::default(),
                };
                Box::pin(write_final(&mut *io, &Packet::ConnAck(ack), Protocol::V311)).await;
            } else if decoder.protocol() == Some(Protocol::V5) {
                let ack = ConnAck {
                    session_present: false,
                    reason: e.reason_code(),
                    properties: Default::default(),
                };
                Box::pin(write_final(&mut *io, &Packet::ConnAck(ack), Protocol::V5)).await;
            }
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "no CONNECT within {}s (limits.connect_timeout); closing", connect_timeout.as_secs());
            return None;
        }
    };

    // `$bridge/NAME` is the local session of a bridge: only that bridge's in-process
    // connection may own it.
    if !info.bridge
        && connect
            .client_id
            .starts_with(crate::config::BRIDGE_CLIENT_PREFIX)
    {
        let r = crate::protocol::connect::Refused {
            reason: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            why: "client identifiers starting with $bridge/ are reserved for bridges",
            server_reference: None,
        };
        Box::pin(refuse_connect(&mut *io, peer, &connect, &r)).await;
        return None;
    }
    if let Some((reason, why)) = refuse {
        let r = crate::protocol::connect::Refused {
            reason,
            why,
            server_reference: None,
        };
        // Admission control (listener/admission.rs): the listener's own bound or a rate.
        broker.stats.refused(if reason == ReasonCode::SERVER_BUSY {
            "listener_max_connections"
        } else {
            "connection_rate"
        });
        Box::pin(refuse_connect(&mut *io, peer, &connect, &r)).await;
        return None;
    }
    // Enhanced authentication (4.12): the AUTH exchange runs before CONNACK.
    let mut enhanced: Option<(Str, Option<Bytes>, String)> = None;
    let credentials = match tls_identity {
        // In process, started by the broker itself: nothing to check.
        _ if info.bridge => Credentials::Verified,
        // The certificate was verified at the handshake: its identity is the username, and
        // neither the CONNECT credentials nor an AUTH exchange are looked at.
        Some(identity) => match Str::try_from(identity) {
            Ok(name) => {
                connect.username = Some(name);
                connect.password = None;
                Credentials::Verified
            }
            Err(_) => Credentials::Failed,
        },
        None => {
            match Box::pin(enhanced_auth(
                &connect, broker, &mut *io, rbuf, decoder, peer,
            ))
            .await
            {
                EnhancedOutcome::NotUsed => Box::pin(check_credentials(&connect, broker)).await,
                EnhancedOutcome::Authenticated {
                    method,
                    data,
                    username,
                } => {
                    enhanced = Some((method, data, username));
                    Credentials::Enhanced
                }
                EnhancedOutcome::Closed => return None,
            }
        }
    };
    let accepted = match negotiate(&connect, broker, credentials) {
        Ok(a) => a,
        Err(r) => {
            if credentials == Credentials::Failed {
                // Slow down guessing from this address before answering.
                let delay = broker
                    .access
                    .failed_logins
                    .failed(peer.ip(), Instant::now());
                tokio::time::sleep(delay).await;
            }
            broker.stats.refused(refusal_reason(r.reason));
            Box::pin(refuse_connect(&mut *io, peer, &connect, &r)).await;
            return None;
        }
    };
    let protocol = connect.protocol;
    let Admitted {
        state,
        connection,
        clean_start,
        session_present,
        control,
    } = Box::pin(admit(broker, connect, accepted, enhanced, Instant::now())).await;
    let keep_alive = state.n.keep_alive;
    // What the admin API shows about this client, on the session's owner entry.
    if let Some(owner) = state
        .handle
        .ownership()
        .owner
        .as_mut()
        .filter(|o| o.connection == connection)
    {
        owner.info = Some(Box::new(crate::session::ConnectionInfo {
            peer,
            listener,
            protocol: protocol.level(),
            keep_alive,
            username: state.n.username.clone(),
            connected_at_ms: crate::persist::now_unix_ms(),
        }));
    }
    tracing::info!(
        %peer, client_id = %state.n.client_id, protocol = protocol.level(), clean_start,
        keep_alive, session_present, "client connected"
    );
    let now = Instant::now();
    Some(Established {
        state,
        control,
        protocol,
        keep_alive,
        now,
    })
}

/// The `sluice_connections_refused_total` reason of a CONNECT refused with `code` after
/// admission (`crate::stats::REFUSAL_REASONS`).
fn refusal_reason(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::SERVER_BUSY => "max_connections",
        ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::BAD_AUTHENTICATION_METHOD => {
            "bad_credentials"
        }
        ReasonCode::NOT_AUTHORIZED => "not_authorized",
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "client_id_invalid",
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => "protocol_version",
        ReasonCode::SERVER_UNAVAILABLE
        | ReasonCode::USE_ANOTHER_SERVER
        | ReasonCode::SERVER_MOVED => "server_unavailable",
        _ => "other",
    }
}

/// Logs a refused CONNECT and answers it with its CONNACK, then closes.
async fn refuse_connect<W: AsyncWrite + Unpin>(
    wr: &mut W,
    peer: SocketAddr,
    connect: &Connect,
    r: &crate::protocol::connect::Refused,
) {
    tracing::info!(%peer, client_id = %connect.client_id, protocol = connect.protocol.level(), reason = %r.reason, "refused connection: {}", r.why);
    write_final(wr, &Packet::ConnAck(refusal(r, connect)), connect.protocol).await;
}

/// How the AUTH exchange before CONNACK went.
enum EnhancedOutcome {
    /// CONNECT named no Authentication Method (or the method is unknown: `negotiate` refuses
    /// it with 0x8C).
    NotUsed,
    Authenticated {
        method: Str,
        data: Option<Bytes>,
        username: String,
    },
    /// Refused or broken off; the connection is closed.
    Closed,
}

/// Runs the CONNECT-time AUTH exchange (4.12.0): AUTH 0x18 challenges and answers until the
/// method succeeds or fails, bounded by `limits.connect_timeout` overall.
async fn enhanced_auth<S>(
    connect: &Connect,
    broker: &Broker,
    io: &mut S,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
    peer: SocketAddr,
) -> EnhancedOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(method) = connect.properties.authentication_method.clone() else {
        return EnhancedOutcome::NotUsed;
    };
    if !connect.protocol.is_v5() {
        return EnhancedOutcome::NotUsed;
    }
    let Some(authenticator) =
        crate::auth::enhanced::authenticator(&method, broker.access.passwords())
    else {
        return EnhancedOutcome::NotUsed;
    };
    let first = connect
        .properties
        .authentication_data
        .clone()
        .unwrap_or_default();
    let refuse = |why: &str| {
        let mut ack = ConnAck {
            session_present: false,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: Default::default(),
        };
        if connect.properties.request_problem_information != Some(false) {
            ack.properties.reason_string = Str::try_from(why).ok();
        }
        Packet::ConnAck(ack)
    };
    let timeout = Duration::from_secs(broker.config.limits.connect_timeout);
    let exchange = async {
        let mut step = authenticator.start(&first);
        loop {
            match step {
                AuthStep::Success { data, username } => {
                    return Ok((data.map(Bytes::from), username));
                }
                AuthStep::Failure(why) => return Err(why),
                AuthStep::Continue { data, next } => {
                    let auth = Packet::Auth(Auth {
                        reason: ReasonCode::CONTINUE_AUTHENTICATION,
                        properties: AuthProperties {
                            authentication_method: Some(method.clone()),
                            authentication_data: Some(Bytes::from(data)),
                            ..Default::default()
                        },
                    });
                    let mut buf = BytesMut::new();
                    // Flushed: TLS and WebSocket streams hold bytes until then.
                    if encode(&auth, Protocol::V5, &mut buf).is_err()
                        || io.write_all(&buf).await.is_err()
                        || io.flush().await.is_err()
                    {
                        return Err("connection lost during authentication");
                    }
                    let answer = match read_packet(&mut *io, rbuf, decoder).await {
                        Ok(Some(Packet::Auth(a))) => a,
                        Ok(Some(_)) => return Err("expected AUTH during authentication (4.12.0)"),
                        _ => return Err("connection lost during authentication"),
                    };
                    if answer.reason != ReasonCode::CONTINUE_AUTHENTICATION
                        || answer.properties.authentication_method.as_deref() != Some(&*method)
                    {
                        // The method must stay the same [MQTT-4.12.0-5].
                        return Err("AUTH with another method or reason during authentication");
                    }
                    step = next.step(
                        answer
                            .properties
                            .authentication_data
                            .as_deref()
                            .unwrap_or_default(),
                    );
                }
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((data, username))) => EnhancedOutcome::Authenticated {
            method,
            data,
            username,
        },
        Ok(Err(why)) => {
            tracing::info!(%peer, client_id = %connect.client_id, method = %method, reason = why, "refused connection: enhanced authentication failed");
            let delay = broker
                .access
                .failed_logins
                .failed(peer.ip(), Instant::now());
            tokio::time::sleep(delay).await;
            broker.stats.refused("bad_credentials");
            write_final(&mut *io, &refuse(why), Protocol::V5).await;
            EnhancedOutcome::Closed
        }
        Err(_) => {
            tracing::info!(%peer, client_id = %connect.client_id, "authentication did not finish within limits.connect_timeout");
            EnhancedOutcome::Closed
        }
    }
}

/// Reads the next packet (before the main loop).
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Option<Packet>, DecodeError> {
    loop {
        if let Some(packet) = decoder.decode(rbuf)? {
            return Ok(Some(packet));
        }
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Checks username and password against `auth.password_file`, on the blocking pool: hashing is
/// slow by design and must not stall a runtime thread.
async fn check_credentials(connect: &Connect, broker: &Broker) -> Credentials {
    let Some(user) = &connect.username else {
        return Credentials::Anonymous;
    };
    let Some(file) = broker.access.passwords() else {
        return Credentials::Unchecked;
    };
    let Some(password) = connect.password.clone() else {
        return Credentials::Failed;
    };
    let user = user.as_str().to_owned();
    match tokio::task::spawn_blocking(move || file.verify(&user, &password)).await {
        Ok(true) => Credentials::Verified,
        _ => Credentials::Failed,
    }
}

/// Reads until a CONNECT is decoded. Ok(None): the peer closed first.
async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Option<Box<Connect>>, DecodeError> {
    loop {
        if let Some(packet) = decoder.decode(rbuf)? {
            return match packet {
                Packet::Connect(c) => Ok(Some(c)),
                _ => Err(DecodeError::Protocol {
                    what: "first packet is not CONNECT",
                    clause: "[MQTT-3.1.0-1]",
                }),
            };
        }
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}
