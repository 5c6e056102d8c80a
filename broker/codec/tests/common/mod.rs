//! Byte builders and assertions shared by the codec's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod strategies;

use bytes::BytesMut;
use sluice_codec::{DecodeError, Decoder, Packet, Protocol};

/// The levels every non-CONNECT case runs at (3.1 shares 3.1.1's parsers after CONNECT).
pub const LEVELS: [Protocol; 3] = [Protocol::V31, Protocol::V311, Protocol::V5];

/// A frame: first byte, Variable Byte Integer remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(body);
    out
}

/// A property block (length + bytes) for 5.0; nothing for the older levels.
pub fn props(p: Protocol, block: &[u8]) -> Vec<u8> {
    if !p.is_v5() {
        return Vec::new();
    }
    assert!(
        block.len() < 128,
        "test helper writes one-byte property lengths"
    );
    let mut out = vec![block.len() as u8];
    out.extend_from_slice(block);
    out
}

/// A two-byte length-prefixed field.
pub fn field(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

/// Concatenates byte pieces.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A PUBLISH frame: `flags` is the low nibble, `pkid` is written when given.
pub fn publish(
    p: Protocol,
    flags: u8,
    topic: &[u8],
    pkid: Option<u16>,
    block: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let id = pkid.map(|id| id.to_be_bytes().to_vec()).unwrap_or_default();
    frame(
        0x30 | flags,
        &cat(&[&field(topic), &id, &props(p, block), payload]),
    )
}

/// A CONNECT frame at `p` with the given flags, fields after the keep alive.
pub fn connect(p: Protocol, flags: u8, block: &[u8], payload: &[u8]) -> Vec<u8> {
    let (name, level): (&[u8], u8) = match p {
        Protocol::V31 => (b"MQIsdp", 3),
        Protocol::V311 => (b"MQTT", 4),
        Protocol::V5 => (b"MQTT", 5),
    };
    frame(
        0x10,
        &cat(&[
            &field(name),
            &[level, flags, 0, 60],
            &props(p, block),
            payload,
        ]),
    )
}

/// Decodes with a decoder that already speaks `p`: (result, bytes left in the buffer).
pub fn decode_at(p: Protocol, bytes: &[u8]) -> (Result<Option<Packet>, DecodeError>, usize) {
    run(Decoder::with_protocol(p, usize::MAX), bytes)
}

/// Decodes with a fresh server-side decoder (before CONNECT).
pub fn decode_server(bytes: &[u8]) -> (Result<Option<Packet>, DecodeError>, usize) {
    run(Decoder::new(usize::MAX), bytes)
}

fn run(mut d: Decoder, bytes: &[u8]) -> (Result<Option<Packet>, DecodeError>, usize) {
    let mut buf = BytesMut::from(bytes);
    let r = d.decode(&mut buf);
    (r, buf.len())
}

/// Decodes a whole frame that must be valid.
pub fn ok_at(p: Protocol, bytes: &[u8]) -> Packet {
    let (r, left) = decode_at(p, bytes);
    match r {
        Ok(Some(packet)) if left == 0 => packet,
        other => panic!("{p:?} {bytes:02x?}: expected a packet, got {other:?} ({left} left)"),
    }
}

/// Decodes a CONNECT frame server side; it must be valid.
pub fn ok_server(bytes: &[u8]) -> Packet {
    let (r, left) = decode_server(bytes);
    match r {
        Ok(Some(packet)) if left == 0 => packet,
        other => panic!("{bytes:02x?}: expected a packet, got {other:?} ({left} left)"),
    }
}

/// Asserts a Malformed Packet naming `clause`.
#[track_caller]
pub fn assert_malformed(r: &Result<Option<Packet>, DecodeError>, clause: &str) {
    match r {
        Err(DecodeError::Malformed { clause: c, .. }) if c.contains(clause) => {}
        other => panic!("expected Malformed {clause}, got {other:?}"),
    }
}

/// Asserts a Protocol Error naming `clause`.
#[track_caller]
pub fn assert_protocol(r: &Result<Option<Packet>, DecodeError>, clause: &str) {
    match r {
        Err(DecodeError::Protocol { clause: c, .. }) if c.contains(clause) => {}
        other => panic!("expected Protocol error {clause}, got {other:?}"),
    }
}

/// Decodes at `p` and asserts a Malformed Packet naming `clause`, with the frame consumed.
#[track_caller]
pub fn malformed_at(p: Protocol, bytes: &[u8], clause: &str) {
    let (r, left) = decode_at(p, bytes);
    assert_malformed(&r, clause);
    assert_eq!(left, 0, "{p:?}: a rejected complete frame is consumed");
}

/// Decodes at `p` and asserts a Protocol Error naming `clause`, with the frame consumed.
#[track_caller]
pub fn protocol_at(p: Protocol, bytes: &[u8], clause: &str) {
    let (r, left) = decode_at(p, bytes);
    assert_protocol(&r, clause);
    assert_eq!(left, 0, "{p:?}: a rejected complete frame is consumed");
}
