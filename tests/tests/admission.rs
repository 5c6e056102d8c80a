//! Admission limits (issue 6): connections per listener, connection rate per source address,
//! and auth files reloaded when they change on disk.

use std::time::Duration;

use sluice_tests::clients::{raw_connect, wait_log_all, Opts};
use sluice_tests::codec::{Protocol, ReasonCode};
use sluice_tests::{Broker, BrokerOpts, RawClient};

const T: Duration = Duration::from_secs(5);

async fn connack(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    id: &str,
) -> (RawClient, ReasonCode) {
    let (c, ack) = raw_connect(addr, protocol, id, &Opts::default()).await;
    (c, ack.reason)
}

/// `[[listeners]] max_connections = 2`: the third connection on that listener gets CONNACK
/// 0x89 Server Busy (3.1.1: return code 3, decoded here as 0x88/0x89 family); a freed slot is
/// usable again.
#[tokio::test]
async fn listener_max_connections() {
    let broker = Broker::start_with(BrokerOpts {
        config: "[[listeners]]\nbind = \"127.0.0.1:0\"\nmax_connections = 2\n".into(),
        no_bind: true,
        ..Default::default()
    })
    .unwrap();
    let addr = broker.listener_addr("tcp").unwrap();
    let (a, ra) = connack(addr, Protocol::V5, "a").await;
    let (_b, rb) = connack(addr, Protocol::V5, "b").await;
    assert_eq!((ra, rb), (ReasonCode::SUCCESS, ReasonCode::SUCCESS));
    let (_c, rc) = connack(addr, Protocol::V5, "c").await;
    assert_eq!(rc, ReasonCode::SERVER_BUSY);
    let (_d, rd) = connack(addr, Protocol::V311, "d").await;
    assert!(rd.is_error(), "3.1.1 refused too (return code 3)");
    let from = broker.log_len();
    drop(a);
    // The slot comes back once the broker has seen the close: it logs it, and releases the slot
    // as the connection's task ends just after that line (on a loaded machine that can take a
    // while), so retry until a generous deadline.
    wait_log_all(&broker, from, &["client disconnected", "client_id=a "], T);
    let mut ok = false;
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        let (_e, re) = connack(addr, Protocol::V5, "e").await;
        if re == ReasonCode::SUCCESS {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a freed slot is usable again");
}

/// `limits.max_connection_rate_per_address = 3`: a burst of connections from one address is
/// answered 0x9F Connection Rate Exceeded past the rate.
#[tokio::test]
async fn connection_rate_per_address() {
    let broker = Broker::with_config("[limits]\nmax_connection_rate_per_address = 3\n");
    let mut codes = Vec::new();
    let mut keep = Vec::new();
    for i in 0..6 {
        let (c, r) = connack(broker.addr, Protocol::V5, &format!("r{i}")).await;
        codes.push(r);
        keep.push(c);
    }
    assert!(
        codes[..3].iter().all(|r| *r == ReasonCode::SUCCESS),
        "{codes:?}"
    );
    assert!(
        codes.contains(&ReasonCode::CONNECTION_RATE_EXCEEDED),
        "{codes:?}"
    );
    // Logged as the refusal is answered: the line may reach the log just after the CONNACK.
    broker
        .wait_log("max_connection_rate_per_address", T)
        .expect("the refusal is logged");
}

/// The ACL file is reloaded when it changes on disk, without SIGHUP.
#[tokio::test]
async fn acl_file_change_is_picked_up() {
    let broker = Broker::start_with(BrokerOpts {
        config: "[auth]\nacl_file = \"acl.conf\"\n".into(),
        files: vec![("acl.conf".into(), "topic readwrite a/#\n".into())],
        ..Default::default()
    })
    .unwrap();
    let from = broker.log_len();
    std::fs::write(
        broker.dir.path().join("acl.conf"),
        "topic readwrite a/#\ntopic read b/#\n",
    )
    .unwrap();
    broker
        .wait_log_from(
            from,
            "auth.acl_file changed: reloaded",
            Duration::from_secs(10),
        )
        .unwrap();
}
