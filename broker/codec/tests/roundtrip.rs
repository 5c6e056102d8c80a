//! Property tests: valid packets round-trip at every level, decoding is resumable byte by byte,
//! and arbitrary or mutated bytes never panic the decoder.

mod common;

use bytes::BytesMut;
use common::strategies;
use proptest::prelude::*;
use sluice_codec::fixtures::{check_decode, FIXTURES};
use sluice_codec::*;

/// A decoder in the state a peer sending `packet` would meet: server side for CONNECT.
fn decoder_for(packet: &Packet, protocol: Protocol) -> Decoder {
    match packet {
        Packet::Connect(_) => Decoder::new(usize::MAX),
        _ => Decoder::with_protocol(protocol, usize::MAX),
    }
}

fn round_trip(packet: &Packet, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    prop_assert_eq!(encoded_len(packet, protocol), Ok(buf.len()));
    let mut decoder = decoder_for(packet, protocol);
    prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

fn byte_at_a_time(packet: &Packet, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut bytes = BytesMut::new();
    encode(packet, protocol, &mut bytes)
        .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    let mut decoder = decoder_for(packet, protocol);
    let mut buf = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        let r = decoder.decode(&mut buf);
        if i + 1 < bytes.len() {
            prop_assert_eq!(r, Ok(None), "byte {} of {}", i, bytes.len());
            prop_assert_eq!(buf.len(), i + 1, "nothing consumed");
        } else {
            prop_assert_eq!(r, Ok(Some(packet.clone())));
            prop_assert!(buf.is_empty());
        }
    }
    Ok(())
}

/// Fixture bytes with a few bytes overwritten, inserted or removed: near-valid input finds
/// more decoder paths than uniformly random bytes.
fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    (
        0..FIXTURES.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4),
    )
        .prop_map(|(i, edits)| {
            let mut bytes = FIXTURES[i].bytes.to_vec();
            for (pos, value, op) in edits {
                let pos = pos % (bytes.len() + 1);
                match op {
                    0 if pos < bytes.len() => bytes[pos] = value,
                    1 => bytes.insert(pos, value),
                    _ if pos < bytes.len() => {
                        bytes.remove(pos);
                    }
                    _ => {}
                }
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn v311_packets_round_trip(packet in strategies::packet(Protocol::V311)) {
        round_trip(&packet, Protocol::V311)?;
    }

    #[test]
    fn v5_packets_round_trip(packet in strategies::packet(Protocol::V5)) {
        round_trip(&packet, Protocol::V5)?;
    }

    #[test]
    fn v31_connect_round_trips(c in strategies::connect(Protocol::V31)) {
        round_trip(&Packet::Connect(Box::new(c)), Protocol::V31)?;
    }

    #[test]
    fn v311_byte_at_a_time(packet in strategies::packet(Protocol::V311)) {
        byte_at_a_time(&packet, Protocol::V311)?;
    }

    #[test]
    fn v5_byte_at_a_time(packet in strategies::packet(Protocol::V5)) {
        byte_at_a_time(&packet, Protocol::V5)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_decode(&data);
    }

    #[test]
    fn mutated_fixtures_never_panic(data in mutated_fixture()) {
        check_decode(&data);
    }

    #[test]
    fn bytes_after_a_valid_header_never_panic(
        first in any::<u8>(),
        data in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![first, data.len() as u8];
        bytes.extend_from_slice(&data);
        check_decode(&bytes);
        let mut connect = b"\x10\x00\x00\x04MQTT\x05".to_vec();
        connect.extend_from_slice(&data);
        connect[1] = (connect.len() - 2) as u8;
        check_decode(&connect);
    }
}
