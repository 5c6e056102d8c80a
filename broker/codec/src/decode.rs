//! Placeholder replaced by the codec implementation.
use bytes::BytesMut;

use crate::{DecodeError, Packet, Protocol};

/// A resumable decoder for one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The level chosen by CONNECT; `None` until then (only CONNECT is accepted).
    protocol: Option<Protocol>,
    /// The largest whole packet (fixed header included) this side accepts.
    max_packet_size: usize,
}

impl Decoder {
    /// A decoder that has not seen CONNECT yet.
    pub fn new(max_packet_size: usize) -> Decoder {
        Decoder { protocol: None, max_packet_size }
    }

    /// A decoder for a known protocol level (client side, tests).
    pub fn with_protocol(protocol: Protocol, max_packet_size: usize) -> Decoder {
        Decoder { protocol: Some(protocol), max_packet_size }
    }

    /// The protocol level, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Decodes one packet from the front of `buf`. `Ok(None)`: need more bytes, nothing consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let _ = (buf, self.max_packet_size);
        Err(DecodeError::Malformed { what: "codec not built", clause: "" })
    }
}
