//! ACL reload on SIGHUP (issue 6): new rules apply to later checks, existing connections stay.

use std::time::Duration;

use sluice_tests::clients::subscribe_311;
use sluice_tests::codec::{Packet, Protocol};
use sluice_tests::{connect_bytes, Broker, BrokerOpts, RawClient};

const T: Duration = Duration::from_secs(5);

async fn suback_code(c: &mut RawClient, pkid: u16, filter: &str) -> u8 {
    c.send_bytes(&subscribe_311(pkid, filter, 0)).await.unwrap();
    match c.expect_packet(T).await.unwrap() {
        Packet::SubAck(s) => s.reasons[0].0,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// A refused subscription is 0x80 in 3.1.1 [MQTT-3.9.3-2]; after the file changes and SIGHUP,
/// the same connection is granted the filter: reload never drops connections.
#[tokio::test]
async fn sighup_reloads_the_acl_file_without_dropping_connections() {
    let broker = Broker::start_with(BrokerOpts {
        config: "[auth]\nacl_file = \"acl.conf\"\n".into(),
        files: vec![("acl.conf".into(), "topic readwrite a/#\n".into())],
        ..Default::default()
    })
    .unwrap();
    let mut c = RawClient::connect(broker.addr, Protocol::V311)
        .await
        .unwrap();
    c.send_bytes(&connect_bytes(Protocol::V311, "reloader"))
        .await
        .unwrap();
    assert!(matches!(
        c.expect_packet(T).await.unwrap(),
        Packet::ConnAck(_)
    ));
    assert_eq!(suback_code(&mut c, 1, "a/x").await, 0);
    assert_eq!(
        suback_code(&mut c, 2, "b/x").await,
        0x80,
        "b/# not granted yet"
    );

    // A broken file is refused and the old rules stay.
    std::fs::write(broker.dir.path().join("acl.conf"), "topic rw b/#\n").unwrap();
    let from = broker.log_len();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    broker.wait_log_from(from, "not reloaded", T).unwrap();
    assert_eq!(
        suback_code(&mut c, 3, "a/y").await,
        0,
        "old rules still in force"
    );

    std::fs::write(
        broker.dir.path().join("acl.conf"),
        "topic readwrite a/#\ntopic read b/#\n",
    )
    .unwrap();
    let from = broker.log_len();
    std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    broker.wait_log_from(from, "acl_file reloaded", T).unwrap();
    assert_eq!(
        suback_code(&mut c, 4, "b/x").await,
        0,
        "new rules apply to the same connection"
    );
}
