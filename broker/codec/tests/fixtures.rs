//! Every shared fixture decodes to its packet and its packet encodes to exactly its bytes.

use bytes::BytesMut;
use sluice_codec::fixtures::{check_decode, FIXTURES};
use sluice_codec::{encode, encoded_len};

#[test]
fn fixtures_decode_to_their_packet() {
    for f in FIXTURES {
        let mut decoder = f.decoder();
        let mut buf = BytesMut::from(f.bytes);
        let got = decoder.decode(&mut buf);
        assert_eq!(got, Ok(Some((f.packet)())), "{}", f.name);
        assert!(buf.is_empty(), "{}: bytes left", f.name);
    }
}

#[test]
fn fixtures_encode_to_their_bytes() {
    for f in FIXTURES {
        let packet = (f.packet)();
        let mut buf = BytesMut::from(&b"prefix"[..]);
        encode(&packet, f.protocol, &mut buf).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!(&buf[6..], f.bytes, "{}", f.name);
        assert_eq!(
            encoded_len(&packet, f.protocol),
            Ok(f.bytes.len()),
            "{}",
            f.name
        );
    }
}

#[test]
fn fixtures_hold_the_decode_invariants() {
    for f in FIXTURES {
        check_decode(f.bytes);
    }
}

#[test]
fn fixture_names_are_unique() {
    let mut names: Vec<_> = FIXTURES.iter().map(|f| f.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), FIXTURES.len());
}
