//! The bridge's flows without sockets: topic mapping, acknowledgements only after the other
//! side's, windows, QoS caps, and the backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_codec::{Packet, Protocol, PubAck, Publish, QoS, ReasonCode, TopicName};

use super::backoff;
use super::flows::{map_in, map_out, Forwarder, Rule, Terms};
use crate::config::BridgeTopic;
use crate::stats::BridgeCounters;

fn rule(filter: &str, direction: &str, local: &str, remote: &str) -> Rule {
    Rule::new(&BridgeTopic {
        filter: filter.into(),
        direction: direction.into(),
        qos: 2,
        local_prefix: local.into(),
        remote_prefix: remote.into(),
    })
}

fn terms() -> Terms {
    Terms {
        remote_protocol: Protocol::V5,
        remote_max_qos: QoS::ExactlyOnce,
        remote_window: 2,
        remote_max_packet: None,
        local_max_qos: QoS::ExactlyOnce,
        local_max_packet: 1 << 20,
        local_window: 2,
        local_topic_length: 1024,
        local_topic_levels: 32,
    }
}

fn forwarder(rules: Vec<Rule>, terms: Terms) -> (Forwarder, Arc<BridgeCounters>) {
    let counters = Arc::new(BridgeCounters::default());
    (
        Forwarder::new(rules.into(), terms, counters.clone()),
        counters,
    )
}

fn publish(topic: &str, qos: QoS, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::try_from(topic).unwrap(),
        pkid,
        payload: Bytes::from_static(b"x"),
        properties: Default::default(),
    })
}

fn sent(packets: &mut Vec<Packet>) -> Vec<(String, u16, u8)> {
    packets
        .drain(..)
        .map(|p| match p {
            Packet::Publish(p) => (format!("PUBLISH {}", p.topic.as_str()), p.pkid, p.qos as u8),
            Packet::PubAck(a) => ("PUBACK".into(), a.pkid, 0),
            Packet::PubRec(a) => ("PUBREC".into(), a.pkid, 0),
            Packet::PubRel(a) => ("PUBREL".into(), a.pkid, 0),
            Packet::PubComp(a) => ("PUBCOMP".into(), a.pkid, 0),
            other => (other.name().into(), 0, 0),
        })
        .collect()
}

fn s(name: &str, pkid: u16, qos: u8) -> (String, u16, u8) {
    (name.into(), pkid, qos)
}

#[test]
fn prefixes_map_both_ways_as_mosquitto_does() {
    let rules = [
        rule("sensors/#", "out", "", "site1/"),
        rule("commands/#", "in", "local/", "cloud/"),
        rule("both/+", "both", "a/", "b/"),
    ];
    assert_eq!(
        map_out(&rules, "sensors/t1").as_deref(),
        Some("site1/sensors/t1")
    );
    assert_eq!(
        map_out(&rules, "commands/x"),
        None,
        "an in rule does not send"
    );
    assert_eq!(
        map_in(&rules, "cloud/commands/x").as_deref(),
        Some("local/commands/x")
    );
    assert_eq!(
        map_in(&rules, "commands/x"),
        None,
        "the remote prefix is part of the filter"
    );
    assert_eq!(map_out(&rules, "a/both/1").as_deref(), Some("b/both/1"));
    assert_eq!(map_in(&rules, "b/both/1").as_deref(), Some("a/both/1"));
    assert_eq!(map_in(&rules, "b/both/1/2"), None);
}

#[test]
fn a_local_message_is_acknowledged_only_after_the_remote_acknowledged_it() {
    let (mut f, counters) = forwarder(vec![rule("t/#", "out", "", "r/")], terms());
    f.from_local(publish("t/1", QoS::AtLeastOnce, 7));
    assert_eq!(
        sent(&mut f.to_remote),
        [s("PUBLISH r/t/1", 7, 1)],
        "same packet id"
    );
    assert!(f.to_local.is_empty(), "no PUBACK before the remote's");
    // A PUBLISH repeating a packet id still in flight is not sent twice.
    f.from_local(publish("t/1", QoS::AtLeastOnce, 7));
    assert!(f.to_remote.is_empty());
    f.from_remote(Packet::PubAck(PubAck::new(7)));
    assert_eq!(sent(&mut f.to_local), [s("PUBACK", 7, 0)]);
    assert_eq!(counters.forwarded_out.load(Ordering::Relaxed), 1);

    // QoS 2: PUBREC locally only after the remote's PUBCOMP.
    f.from_local(publish("t/2", QoS::ExactlyOnce, 8));
    assert_eq!(sent(&mut f.to_remote), [s("PUBLISH r/t/2", 8, 2)]);
    f.from_remote(Packet::PubRec(PubAck::new(8)));
    assert_eq!(sent(&mut f.to_remote), [s("PUBREL", 8, 0)]);
    assert!(f.to_local.is_empty());
    f.from_remote(Packet::PubComp(PubAck::new(8)));
    assert_eq!(sent(&mut f.to_local), [s("PUBREC", 8, 0)]);
    f.from_local(Packet::PubRel(PubAck::new(8)));
    assert_eq!(sent(&mut f.to_local), [s("PUBCOMP", 8, 0)]);
    assert_eq!(f.held(), 0);
}

#[test]
fn the_remote_window_and_maximum_qos_are_respected() {
    let mut t = terms();
    t.remote_max_qos = QoS::AtLeastOnce;
    let (mut f, _) = forwarder(vec![rule("#", "out", "", "")], t);
    for pkid in 1..=3 {
        f.from_local(publish("t", QoS::ExactlyOnce, pkid));
    }
    assert_eq!(
        sent(&mut f.to_remote),
        [s("PUBLISH t", 1, 1), s("PUBLISH t", 2, 1)],
        "Receive Maximum 2, QoS capped at 1"
    );
    f.from_remote(Packet::PubAck(PubAck::new(2)));
    assert_eq!(
        sent(&mut f.to_local),
        [s("PUBREC", 2, 0)],
        "the local QoS 2 exchange goes on"
    );
    assert_eq!(
        sent(&mut f.to_remote),
        [s("PUBLISH t", 3, 1)],
        "room for the third"
    );
}

#[test]
fn remote_messages_are_acknowledged_after_the_local_broker_took_them() {
    let (mut f, counters) = forwarder(vec![rule("c/#", "in", "l/", "r/")], terms());
    f.from_remote(publish("r/c/1", QoS::AtLeastOnce, 40));
    f.from_remote(publish("r/c/2", QoS::ExactlyOnce, 41));
    f.from_remote(publish("r/c/3", QoS::AtLeastOnce, 42));
    assert_eq!(
        sent(&mut f.to_local),
        [s("PUBLISH l/c/1", 1, 1), s("PUBLISH l/c/2", 2, 2)],
        "own ids, local window 2"
    );
    assert!(f.to_remote.is_empty());
    f.from_local(Packet::PubAck(PubAck::new(1)));
    assert_eq!(sent(&mut f.to_remote), [s("PUBACK", 40, 0)]);
    assert_eq!(sent(&mut f.to_local), [s("PUBLISH l/c/3", 3, 1)]);
    f.from_local(Packet::PubRec(PubAck::new(2)));
    assert_eq!(sent(&mut f.to_local), [s("PUBREL", 2, 0)]);
    assert_eq!(sent(&mut f.to_remote), [s("PUBREC", 41, 0)]);
    f.from_remote(Packet::PubRel(PubAck::new(41)));
    assert_eq!(sent(&mut f.to_remote), [s("PUBCOMP", 41, 0)]);
    f.from_local(Packet::PubComp(PubAck::new(2)));
    // Refused locally (ACL): still answered to the remote, counted as dropped.
    let mut refused = PubAck::new(3);
    refused.reason = ReasonCode::NOT_AUTHORIZED;
    f.from_local(Packet::PubAck(refused));
    assert_eq!(sent(&mut f.to_remote), [s("PUBACK", 42, 0)]);
    assert_eq!(counters.forwarded_in.load(Ordering::Relaxed), 2);
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 1);
    assert_eq!(f.held(), 0);
}

#[test]
fn unmapped_or_oversized_messages_are_dropped_and_acknowledged() {
    let mut t = terms();
    t.remote_max_packet = Some(20);
    let (mut f, counters) = forwarder(vec![rule("t/#", "both", "", "")], t);
    f.from_local(publish("t/a-rather-long-topic-name", QoS::AtLeastOnce, 5));
    assert!(f.to_remote.is_empty());
    assert_eq!(
        sent(&mut f.to_local),
        [s("PUBACK", 5, 0)],
        "not kept for ever"
    );
    f.from_remote(publish("elsewhere", QoS::AtLeastOnce, 6));
    assert_eq!(sent(&mut f.to_remote), [s("PUBACK", 6, 0)]);
    assert_eq!(counters.dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn backoff_doubles_from_one_second_to_the_maximum_with_jitter() {
    let max = Duration::from_secs(60);
    for _ in 0..50 {
        let first = backoff(1, max);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let fourth = backoff(4, max);
        assert!(fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8));
        let late = backoff(30, max);
        assert!(late >= Duration::from_secs(30) && late <= max);
    }
}

/// `Broker::bridges()`: a bridge whose remote is unreachable is not connected, and the QoS 1
/// messages published for it wait in its local session (subscribed at start-up).
#[tokio::test]
async fn broker_bridges_reports_a_disconnected_bridge_and_its_queue() {
    use bytes::BytesMut;
    use sluice_codec::{encode, Connect, Decoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = crate::Config::default();
    config.listeners = vec![crate::config::ListenerConfig::plain("127.0.0.1:0")];
    // The admin listener on a free port (the default 18083 may be taken).
    config.admin.bind = "127.0.0.1:0".into();
    config.persistence.mode = crate::config::PersistenceMode::Memory;
    config.bridges = vec![crate::config::BridgeConfig {
        name: "up".into(),
        address: dead.to_string(),
        max_backoff_seconds: 1,
        topics: vec![BridgeTopic {
            filter: "q/#".into(),
            ..BridgeTopic::default()
        }],
        ..Default::default()
    }];
    config.validate().unwrap();
    let server = crate::Server::bind(config).await.unwrap();
    let broker = server.broker().clone();
    let addr = server.local_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    // Ready once the bridge's session is parked with its subscription (prepared at start-up,
    // before the remote is tried).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while broker.parked_filters("$bridge/up") != Some(vec!["q/#".to_owned()]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the session is not parked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    let connect = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 0,
        client_id: sluice_codec::Str::from_static("pub"),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }));
    encode(&connect, Protocol::V311, &mut out).unwrap();
    for pkid in 1..=3 {
        encode(
            &publish("q/x", QoS::AtLeastOnce, pkid),
            Protocol::V311,
            &mut out,
        )
        .unwrap();
    }
    tcp.write_all(&out).await.unwrap();
    let mut decoder = Decoder::with_protocol(Protocol::V311, 1 << 20);
    let mut buf = BytesMut::new();
    let mut acks = 0;
    while acks < 3 {
        if let Some(p) = decoder.decode(&mut buf).unwrap() {
            acks += usize::from(matches!(p, Packet::PubAck(_)));
            continue;
        }
        assert!(tcp.read_buf(&mut buf).await.unwrap() > 0, "closed");
    }
    let status = &broker.bridges()[0];
    assert_eq!(status.name, "up");
    assert!(!status.connected);
    assert_eq!(status.queued, 3, "{status:?}");
    assert_eq!((status.forwarded_out, status.dropped), (0, 0));
    let _ = stop_tx.send(());
    running.await.unwrap();
}

#[test]
fn qos_0_passes_both_ways_without_acknowledgements() {
    let (mut f, counters) = forwarder(vec![rule("#", "both", "", "")], terms());
    f.from_remote(publish("a", QoS::AtMostOnce, 0));
    f.from_local(publish("b", QoS::AtMostOnce, 0));
    assert_eq!(sent(&mut f.to_local), [s("PUBLISH a", 0, 0)]);
    assert_eq!(sent(&mut f.to_remote), [s("PUBLISH b", 0, 0)]);
    assert_eq!(counters.forwarded_in.load(Ordering::Relaxed), 1);
    assert_eq!(counters.forwarded_out.load(Ordering::Relaxed), 1);
    assert_eq!(f.held(), 0);
}
