use bytes::BytesMut;
use sluice_codec::*;

#[test]
fn smoke() {
    let mut d = Decoder::new(1 << 20);
    let mut buf = BytesMut::from(&b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"[..]);
    let p = d.decode(&mut buf).unwrap().unwrap();
    assert_eq!(d.protocol(), Some(Protocol::V311));
    let mut out = BytesMut::new();
    encode(&p, Protocol::V311, &mut out).unwrap();
    assert_eq!(&out[..], b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00");
    let mut buf = BytesMut::from(&b"\x32\x07\x00\x01a\x00\x05hi"[..]);
    let p = d.decode(&mut buf).unwrap().unwrap();
    println!("{p:?}");
    out.clear();
    encode(&p, Protocol::V311, &mut out).unwrap();
    assert_eq!(&out[..], b"\x32\x07\x00\x01a\x00\x05hi");
}
