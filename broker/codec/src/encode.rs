//! Placeholder replaced by the codec implementation.
use bytes::BytesMut;

use crate::{EncodeError, Packet, Protocol};

/// Appends `packet` encoded for `protocol` to `buf`; on error nothing is appended.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let _ = (packet, protocol, buf);
    Err(EncodeError::InvalidValue("codec not built"))
}

/// The number of bytes `encode` would append.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    let _ = (packet, protocol);
    Err(EncodeError::InvalidValue("codec not built"))
}
