//! Sans-IO tests of the protocol state machine: clients are driven with packets and a clock,
//! and what they would write is decoded back. No sockets, no sleeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_codec::{
    Decoder, Disconnect, DisconnectProperties, Packet, Protocol, PubAck, Publish,
    PublishProperties, QoS, ReasonCode, RetainHandling, Subscribe, SubscribeProperties,
    Subscription, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe,
};

use super::{ClientState, Negotiated};
use crate::broker::Broker;
use crate::config::Config;
use crate::session::{Session, SessionHandle};

struct Client {
    state: ClientState,
}

fn negotiated(protocol: Protocol, id: &str) -> Negotiated {
    Negotiated {
        protocol,
        client_id: id.into(),
        username: None,
        keep_alive: 60,
        connect_session_expiry: 0,
        send_window: 16,
        client_max_packet: usize::MAX,
        receive_maximum: 4,
        topic_alias_maximum: 8,
        request_problem_information: true,
        outbound_alias_maximum: 0,
    }
}

impl Client {
    fn new(protocol: Protocol, id: &str) -> Client {
        Client::with(negotiated(protocol, id))
    }

    fn with(n: Negotiated) -> Client {
        let handle = Arc::new(SessionHandle::new(n.client_id.clone(), 1000, 1 << 24));
        handle.outbox().set_online(true);
        Client {
            state: ClientState::new(n, handle, Session::default(), None),
        }
    }

    fn handle(&mut self, b: &Broker, p: Packet) -> Result<(), super::Close> {
        self.state.handle(Instant::now(), p, b)
    }

    /// Drains the outbox and returns every packet written since the last call.
    fn take(&mut self) -> Vec<Packet> {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> Vec<Packet> {
        self.state.drain_outbox(now, 1 << 20);
        let mut buf = self.state.write_buf.split();
        let mut d = Decoder::with_protocol(self.state.n.protocol, usize::MAX);
        let mut out = Vec::new();
        while let Some(p) = d.decode(&mut buf).expect("broker wrote a valid packet") {
            out.push(p);
        }
        assert!(buf.is_empty(), "no partial packet left");
        out
    }

    fn subscribe(&mut self, b: &Broker, filter: &str, qos: QoS) -> Vec<Packet> {
        self.subscribe_with(
            b,
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
            None,
        )
    }

    fn subscribe_with(
        &mut self,
        b: &Broker,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Vec<Packet> {
        let s = Subscribe {
            pkid: 1,
            filters: vec![Subscription {
                filter: TopicFilter::try_from(filter).unwrap(),
                options,
            }],
            rejected: vec![],
            properties: SubscribeProperties {
                subscription_identifier: id,
                user_properties: vec![],
            },
        };
        self.handle(b, Packet::Subscribe(s)).unwrap();
        self.take()
    }
}

fn broker() -> Broker {
    Broker::new(Config::default(), None)
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::try_from(topic).unwrap(),
        pkid,
        payload: Bytes::from_static(payload),
        properties: PublishProperties::default(),
    })
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| {
            if let Packet::Publish(p) = p {
                Some(p)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn qos1_publish_is_acked_and_delivered_downgraded() {
    // [MQTT-3.3.4-1] PUBACK; [MQTT-3.8.4-8] delivered at min(publish QoS, subscription QoS).
    let b = broker();
    let mut sub = Client::new(Protocol::V311, "sub");
    let mut publ = Client::new(Protocol::V311, "pub");
    sub.subscribe(&b, "a/+", QoS::AtMostOnce);
    publ.handle(&b, publish("a/b", QoS::AtLeastOnce, 7, b"hi"))
        .unwrap();
    assert_eq!(publ.take(), vec![Packet::PubAck(PubAck::new(7))]);
    let got = sub.take();
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].qos, p[0].pkid, &p[0].payload[..]),
        (QoS::AtMostOnce, 0, &b"hi"[..])
    );
}

#[test]
fn inbound_qos2_is_delivered_once_until_released() {
    // [MQTT-4.3.3-9]: a resent PUBLISH with the same id before PUBREL is not delivered again.
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    let mut publ = Client::new(Protocol::V5, "pub");
    sub.subscribe(&b, "t", QoS::ExactlyOnce);
    publ.handle(&b, publish("t", QoS::ExactlyOnce, 3, b"x"))
        .unwrap();
    let mut dup = publish("t", QoS::ExactlyOnce, 3, b"x");
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    publ.handle(&b, dup).unwrap();
    assert_eq!(
        publ.take(),
        vec![
            Packet::PubRec(PubAck::new(3)),
            Packet::PubRec(PubAck::new(3))
        ]
    );
    assert_eq!(publishes(&sub.take()).len(), 1);
    publ.handle(&b, Packet::PubRel(PubAck::new(3))).unwrap();
    assert_eq!(publ.take(), vec![Packet::PubComp(PubAck::new(3))]);
    // After release the id is free again: a new message with it is a new message.
    publ.handle(&b, publish("t", QoS::ExactlyOnce, 3, b"y"))
        .unwrap();
    assert_eq!(publishes(&sub.take()).len(), 1);
}

#[test]
fn pubrel_for_unknown_id_gets_0x92_in_v5() {
    let b = broker();
    let mut c = Client::new(Protocol::V5, "c");
    c.handle(&b, Packet::PubRel(PubAck::new(9))).unwrap();
    let out = c.take();
    assert!(
        matches!(&out[..], [Packet::PubComp(a)] if a.reason == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[test]
fn outbound_qos2_flow_and_resend_with_dup() {
    // [MQTT-4.3.3-3..5] PUBLISH -> PUBREC -> PUBREL -> PUBCOMP; [MQTT-4.4.0-1] resend on resume.
    let b = broker();
    let mut sub = Client::new(Protocol::V311, "sub");
    let mut publ = Client::new(Protocol::V311, "pub");
    sub.subscribe(&b, "t", QoS::ExactlyOnce);
    publ.handle(&b, publish("t", QoS::ExactlyOnce, 1, b"m1"))
        .unwrap();
    publ.handle(&b, publish("t", QoS::ExactlyOnce, 2, b"m2"))
        .unwrap();
    let got = sub.take();
    let p = publishes(&got);
    assert_eq!(p.len(), 2);
    let (id1, id2) = (p[0].pkid, p[1].pkid);
    assert!(id1 != 0 && id2 != 0 && id1 != id2, "[MQTT-2.2.1-3]");
    sub.handle(&b, Packet::PubRec(PubAck::new(id1))).unwrap();
    assert_eq!(sub.take(), vec![Packet::PubRel(PubAck::new(id1))]);
    // Connection lost here: id1 owes PUBREL, id2 owes the PUBLISH. On resume both are resent
    // in order, the PUBLISH with DUP set.
    sub.state.resend_inflight(Instant::now());
    let again = sub.take();
    assert_eq!(again.len(), 2);
    assert_eq!(again[0], Packet::PubRel(PubAck::new(id1)));
    match &again[1] {
        Packet::Publish(p) => assert!(p.dup && p.pkid == id2 && &p.payload[..] == b"m2"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    sub.handle(&b, Packet::PubComp(PubAck::new(id1))).unwrap();
    sub.handle(&b, Packet::PubRec(PubAck::new(id2))).unwrap();
    sub.handle(&b, Packet::PubComp(PubAck::new(id2))).unwrap();
    assert_eq!(sub.state.session.inflight_len(), 0);
}

#[test]
fn resend_on_resume_skips_publishes_over_the_new_maximum_packet_size() {
    // Found by the protocol fuzz target: a session resumed by a connection announcing a smaller
    // Maximum Packet Size got its unacknowledged PUBLISH resent anyway [MQTT-3.1.2-24]. It is
    // discarded as if delivered [MQTT-3.1.2-25]; PUBRELs still go out.
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    let mut publ = Client::new(Protocol::V5, "pub");
    sub.subscribe(&b, "t", QoS::ExactlyOnce);
    publ.handle(&b, publish("t", QoS::ExactlyOnce, 1, b"small"))
        .unwrap();
    publ.handle(&b, publish("t", QoS::AtLeastOnce, 2, &[b'x'; 200]))
        .unwrap();
    let got = sub.take();
    let p = publishes(&got);
    assert_eq!(p.len(), 2);
    let (id1, id2) = (p[0].pkid, p[1].pkid);
    sub.handle(&b, Packet::PubRec(PubAck::new(id1))).unwrap();
    assert_eq!(sub.take(), vec![Packet::PubRel(PubAck::new(id1))]);
    // Resumed on a connection that accepts at most 64 bytes per packet.
    sub.state.n.client_max_packet = 64;
    sub.state.resend_inflight(Instant::now());
    assert_eq!(sub.take(), vec![Packet::PubRel(PubAck::new(id1))]);
    assert_eq!(sub.state.oversize_dropped, 1);
    assert!(sub.state.session.inflight_position(id2).is_none());
    // 3.1.1 has no Maximum Packet Size: everything is resent.
    let mut old = Client::new(Protocol::V311, "old");
    old.subscribe(&b, "u", QoS::AtLeastOnce);
    publ.handle(&b, publish("u", QoS::AtLeastOnce, 3, &[b'y'; 200]))
        .unwrap();
    assert_eq!(publishes(&old.take()).len(), 1);
    old.state.n.client_max_packet = 64;
    old.state.resend_inflight(Instant::now());
    assert_eq!(publishes(&old.take()).len(), 1);
}

#[test]
fn receive_maximum_exceeded_disconnects_0x93() {
    // [MQTT-3.3.4-9]: more QoS 2 PUBLISHes awaiting PUBREL than our Receive Maximum (4).
    let b = broker();
    let mut c = Client::new(Protocol::V5, "c");
    for id in 1..=4 {
        c.handle(&b, publish("t", QoS::ExactlyOnce, id, b""))
            .unwrap();
    }
    let e = c
        .handle(&b, publish("t", QoS::ExactlyOnce, 5, b""))
        .unwrap_err();
    assert_eq!(e.send, Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
}

#[test]
fn send_window_honours_client_receive_maximum() {
    // [MQTT-3.3.4-7]: never more unacknowledged QoS 1/2 PUBLISHes than the client's Receive
    // Maximum; the rest wait in order.
    let b = broker();
    let mut n = negotiated(Protocol::V5, "sub");
    n.send_window = 2;
    let mut sub = Client::with(n);
    let mut publ = Client::new(Protocol::V5, "pub");
    sub.subscribe(&b, "t", QoS::AtLeastOnce);
    for i in 1..=5u16 {
        publ.handle(&b, publish("t", QoS::AtLeastOnce, i, b""))
            .unwrap();
    }
    let first = sub.take();
    let ids: Vec<u16> = publishes(&first).iter().map(|p| p.pkid).collect();
    assert_eq!(ids.len(), 2);
    sub.handle(&b, Packet::PubAck(PubAck::new(ids[0]))).unwrap();
    assert_eq!(publishes(&sub.take()).len(), 1);
    assert_eq!(sub.state.handle.outbox().len(), 2);
}

#[test]
fn overlapping_subscriptions_give_one_copy_with_all_identifiers() {
    // [MQTT-3.3.4-2], [MQTT-3.3.4-3]: one copy at the highest QoS with every identifier.
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    let mut publ = Client::new(Protocol::V5, "pub");
    let o = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    sub.subscribe_with(&b, "a/#", o(QoS::AtMostOnce), Some(1));
    sub.subscribe_with(&b, "a/+", o(QoS::AtLeastOnce), Some(2));
    publ.handle(&b, publish("a/b", QoS::ExactlyOnce, 1, b"x"))
        .unwrap();
    let got = sub.take();
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].qos, QoS::AtLeastOnce);
    let mut ids = p[0].properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn no_local_skips_own_messages() {
    // [MQTT-3.8.3-3]
    let b = broker();
    let mut c = Client::new(Protocol::V5, "c");
    let opts = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: true,
        ..Default::default()
    };
    c.subscribe_with(&b, "t", opts, None);
    c.handle(&b, publish("t", QoS::AtMostOnce, 0, b"x"))
        .unwrap();
    assert!(publishes(&c.take()).is_empty());
}

#[test]
fn wildcards_never_match_dollar_topics() {
    // [MQTT-4.7.2-1]
    let b = broker();
    let mut sub = Client::new(Protocol::V311, "sub");
    let mut publ = Client::new(Protocol::V311, "pub");
    sub.subscribe(&b, "#", QoS::AtMostOnce);
    sub.subscribe(&b, "+/x", QoS::AtMostOnce);
    publ.handle(&b, publish("$foo/x", QoS::AtMostOnce, 0, b""))
        .unwrap();
    assert!(publishes(&sub.take()).is_empty());
    sub.subscribe(&b, "$foo/#", QoS::AtMostOnce);
    publ.handle(&b, publish("$foo/x", QoS::AtMostOnce, 0, b""))
        .unwrap();
    assert_eq!(publishes(&sub.take()).len(), 1);
}

#[test]
fn retained_messages_on_subscribe_and_retain_handling() {
    // [MQTT-3.3.1-5..7] store/replace/delete; [MQTT-3.3.1-9..11] Retain Handling 0/1/2.
    let b = broker();
    let mut publ = Client::new(Protocol::V5, "pub");
    let mut r = publish("r/1", QoS::AtLeastOnce, 1, b"v1");
    if let Packet::Publish(p) = &mut r {
        p.retain = true;
    }
    publ.handle(&b, r.clone()).unwrap();
    if let Packet::Publish(p) = &mut r {
        p.payload = Bytes::from_static(b"v2");
    }
    publ.handle(&b, r.clone()).unwrap();

    let mut sub = Client::new(Protocol::V5, "sub");
    let got = sub.subscribe(&b, "r/#", QoS::AtLeastOnce);
    assert!(matches!(got[0], Packet::SubAck(_)), "SUBACK comes first");
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    assert!(p[0].retain, "retain flag set on subscribe-time delivery");
    assert_eq!(&p[0].payload[..], b"v2", "replaced");

    let mut opts = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        ..Default::default()
    };
    opts.retain_handling = RetainHandling::OnNewSubscription;
    assert!(
        publishes(&sub.subscribe_with(&b, "r/#", opts, None)).is_empty(),
        "already existed"
    );
    opts.retain_handling = RetainHandling::Never;
    let mut other = Client::new(Protocol::V5, "other");
    assert!(publishes(&other.subscribe_with(&b, "r/#", opts, None)).is_empty());

    // Live delivery: RETAIN cleared unless Retain As Published.
    publ.handle(&b, r.clone()).unwrap();
    let live = sub.take();
    assert!(
        publishes(&live).iter().all(|p| !p.retain),
        "[MQTT-3.3.1-12]"
    );

    // Empty payload deletes.
    if let Packet::Publish(p) = &mut r {
        p.payload = Bytes::new();
    }
    publ.handle(&b, r).unwrap();
    let mut late = Client::new(Protocol::V5, "late");
    assert!(publishes(&late.subscribe(&b, "r/#", QoS::AtMostOnce)).is_empty());
}

#[test]
fn inbound_topic_alias_set_used_and_limits() {
    // 3.3.2.3.4; alias 0 or above the maximum: DISCONNECT 0x94 [MQTT-3.3.2-9].
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    let mut c = Client::new(Protocol::V5, "c");
    sub.subscribe(&b, "long/topic", QoS::AtMostOnce);
    let mut p = publish("long/topic", QoS::AtMostOnce, 0, b"1");
    if let Packet::Publish(p) = &mut p {
        p.properties.topic_alias = Some(3);
    }
    c.handle(&b, p.clone()).unwrap();
    if let Packet::Publish(p) = &mut p {
        p.topic = TopicName::default();
    }
    c.handle(&b, p.clone()).unwrap();
    assert_eq!(publishes(&sub.take()).len(), 2);
    if let Packet::Publish(p) = &mut p {
        p.properties.topic_alias = Some(9);
    }
    assert_eq!(
        c.handle(&b, p).unwrap_err().send,
        Some(ReasonCode::TOPIC_ALIAS_INVALID)
    );
}

#[test]
fn second_connect_and_server_packets_are_protocol_errors() {
    let b = broker();
    let mut c = Client::new(Protocol::V5, "c");
    let e = c.handle(&b, Packet::PingResp).unwrap_err();
    assert_eq!(e.send, Some(ReasonCode::PROTOCOL_ERROR));
}

#[test]
fn disconnect_cannot_raise_session_expiry_from_zero() {
    // [MQTT-3.14.2-2]
    let b = broker();
    let mut c = Client::new(Protocol::V5, "c");
    let d = Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
    };
    assert_eq!(
        c.handle(&b, Packet::Disconnect(d)).unwrap_err().send,
        Some(ReasonCode::PROTOCOL_ERROR)
    );
    let mut c = Client::new(Protocol::V5, "c2");
    let close = c
        .handle(
            &b,
            Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)),
        )
        .unwrap_err();
    assert!(
        close.publish_will && close.send.is_none(),
        "0x04 publishes the will"
    );
    let close = c
        .handle(&b, Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
        .unwrap_err();
    assert!(
        !close.publish_will,
        "[MQTT-3.1.2-10] normal DISCONNECT deletes the will"
    );
}

#[test]
fn expired_messages_are_not_delivered_and_expiry_counts_down() {
    // [MQTT-3.3.2-5], [MQTT-3.3.2-6]
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    let mut publ = Client::new(Protocol::V5, "pub");
    sub.subscribe(&b, "t", QoS::AtLeastOnce);
    let mut p = publish("t", QoS::AtLeastOnce, 1, b"x");
    if let Packet::Publish(p) = &mut p {
        p.properties.message_expiry_interval = Some(10);
    }
    publ.handle(&b, p.clone()).unwrap();
    publ.handle(&b, p).unwrap();
    let now = Instant::now();
    // Deliver one at +4 s (remaining 6 s), then the other after expiry.
    sub.state.n.send_window = 1;
    let first = sub.take_at(now + Duration::from_secs(4));
    assert_eq!(
        publishes(&first)[0].properties.message_expiry_interval,
        Some(6)
    );
    let id = publishes(&first)[0].pkid;
    sub.handle(&b, Packet::PubAck(PubAck::new(id))).unwrap();
    assert!(publishes(&sub.take_at(now + Duration::from_secs(11))).is_empty());
}

#[test]
fn messages_over_client_maximum_packet_size_are_dropped() {
    // [MQTT-3.1.2-25]
    let b = broker();
    let mut n = negotiated(Protocol::V5, "small");
    n.client_max_packet = 64;
    let mut sub = Client::with(n);
    let mut publ = Client::new(Protocol::V5, "pub");
    sub.subscribe(&b, "t", QoS::AtMostOnce);
    publ.handle(&b, publish("t", QoS::AtMostOnce, 0, &[b'x'; 100]))
        .unwrap();
    publ.handle(&b, publish("t", QoS::AtMostOnce, 0, b"fits"))
        .unwrap();
    let got = sub.take();
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    assert_eq!(&p[0].payload[..], b"fits");
    assert_eq!(sub.state.oversize_dropped, 1);
}

#[test]
fn unsubscribe_reports_per_filter() {
    // [MQTT-3.11.3-1]; 0x11 No subscription existed.
    let b = broker();
    let mut c = Client::new(Protocol::V5, "c");
    c.subscribe(&b, "a", QoS::AtMostOnce);
    let u = Unsubscribe {
        pkid: 2,
        filters: vec![
            TopicFilter::try_from("a").unwrap(),
            TopicFilter::try_from("b").unwrap(),
        ],
        rejected: vec![],
        user_properties: vec![],
    };
    c.handle(&b, Packet::Unsubscribe(u)).unwrap();
    match &c.take()[..] {
        [Packet::UnsubAck(a)] => {
            assert_eq!(
                a.reasons,
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn acl_free_broker_refuses_publish_to_sys() {
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    let mut c = Client::new(Protocol::V5, "c");
    sub.subscribe(&b, "$SYS/#", QoS::AtMostOnce);
    c.handle(&b, publish("$SYS/x", QoS::AtLeastOnce, 1, b""))
        .unwrap();
    assert!(matches!(&c.take()[..], [Packet::PubAck(a)] if a.reason == ReasonCode::NOT_AUTHORIZED));
    assert!(publishes(&sub.take()).is_empty());
}

#[test]
fn shared_subscription_delivers_to_one_member() {
    // [MQTT-4.8.2-?]: each message to one member of the group.
    let b = broker();
    let mut m1 = Client::new(Protocol::V5, "m1");
    let mut m2 = Client::new(Protocol::V5, "m2");
    let mut publ = Client::new(Protocol::V5, "pub");
    m1.subscribe(&b, "$share/g/jobs/#", QoS::AtLeastOnce);
    m2.subscribe(&b, "$share/g/jobs/#", QoS::AtLeastOnce);
    for i in 1..=10u16 {
        publ.handle(&b, publish("jobs/x", QoS::AtLeastOnce, i, b""))
            .unwrap();
    }
    let (a, c) = (publishes(&m1.take()).len(), publishes(&m2.take()).len());
    assert_eq!(a + c, 10);
    assert!(a > 0 && c > 0, "round robin spreads the messages ({a}/{c})");
}

#[test]
fn outbound_topic_aliases_name_repeated_topics_by_alias() {
    // 3.3.2.3.4: first PUBLISH carries topic + alias, later ones the alias and an empty topic;
    // never more aliases than the client's Topic Alias Maximum [MQTT-3.3.2-10].
    let b = broker();
    let mut n = negotiated(Protocol::V5, "sub");
    n.outbound_alias_maximum = 1;
    let mut sub = Client::with(n);
    let mut publ = Client::new(Protocol::V5, "pub");
    sub.subscribe(&b, "#", QoS::AtMostOnce);
    for topic in ["a/long/topic", "a/long/topic", "other", "a/long/topic"] {
        publ.handle(&b, publish(topic, QoS::AtMostOnce, 0, b"x"))
            .unwrap();
    }
    let got = sub.take();
    let seen: Vec<(&str, Option<u16>)> = publishes(&got)
        .iter()
        .map(|p| (p.topic.as_str(), p.properties.topic_alias))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a/long/topic", Some(1)),
            ("", Some(1)),
            ("other", Some(1)),
            ("a/long/topic", Some(1))
        ]
    );
}

#[test]
fn subscription_identifier_in_client_publish_is_a_protocol_error() {
    // [MQTT-3.3.4-6]
    let b = broker();
    let mut c = Client::new(Protocol::V5, "c");
    let mut p = publish("t", QoS::AtMostOnce, 0, b"x");
    if let Packet::Publish(p) = &mut p {
        p.properties.subscription_identifiers = vec![1];
    }
    let close = c.handle(&b, p).unwrap_err();
    assert_eq!(close.send, Some(ReasonCode::PROTOCOL_ERROR));
}

fn broker_with(f: impl FnOnce(&mut crate::config::MqttConfig)) -> Broker {
    let mut c = Config::default();
    f(&mut c.mqtt);
    Broker::new(c, None)
}

fn suback_codes(packets: &[Packet]) -> Vec<u8> {
    packets
        .iter()
        .find_map(|p| match p {
            Packet::SubAck(s) => Some(s.reasons.iter().map(|r| r.0).collect()),
            _ => None,
        })
        .expect("a SUBACK")
}

#[test]
fn switched_off_capabilities_are_enforced() {
    // Maximum QoS 1: QoS 2 PUBLISH is DISCONNECT 0x9B [MQTT-3.2.2-11]; subscriptions granted 1.
    let b = broker_with(|m| m.maximum_qos = 1);
    let mut c = Client::new(Protocol::V5, "c");
    assert_eq!(
        suback_codes(&c.subscribe(&b, "t", QoS::ExactlyOnce)),
        vec![1]
    );
    let close = c
        .handle(&b, publish("t", QoS::ExactlyOnce, 1, b"x"))
        .unwrap_err();
    assert_eq!(close.send, Some(ReasonCode::QOS_NOT_SUPPORTED));

    // Retain Available 0: a retained PUBLISH is DISCONNECT 0x9A [MQTT-3.2.2-14].
    let b = broker_with(|m| m.retain_available = false);
    let mut c = Client::new(Protocol::V5, "c");
    let mut p = publish("t", QoS::AtMostOnce, 0, b"x");
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    let close = c.handle(&b, p).unwrap_err();
    assert_eq!(close.send, Some(ReasonCode::RETAIN_NOT_SUPPORTED));

    // Wildcards, shared subscriptions off: per-filter SUBACK codes 0xA2, 0x9E.
    let b = broker_with(|m| {
        m.wildcard_subscription_available = false;
        m.shared_subscription_available = false;
    });
    let mut c = Client::new(Protocol::V5, "c");
    assert_eq!(
        suback_codes(&c.subscribe(&b, "a/+", QoS::AtMostOnce)),
        vec![0xA2]
    );
    assert_eq!(
        suback_codes(&c.subscribe(&b, "$share/g/a", QoS::AtMostOnce)),
        vec![0x9E]
    );
    assert_eq!(
        suback_codes(&c.subscribe(&b, "a/b", QoS::AtMostOnce)),
        vec![0]
    );

    // Subscription Identifiers off: DISCONNECT 0xA1.
    let b = broker_with(|m| m.subscription_identifiers_available = false);
    let mut c = Client::new(Protocol::V5, "c");
    let s = Subscribe {
        pkid: 1,
        filters: vec![Subscription {
            filter: TopicFilter::try_from("a").unwrap(),
            options: SubscriptionOptions::default(),
        }],
        rejected: Vec::new(),
        properties: SubscribeProperties {
            subscription_identifier: Some(3),
            ..Default::default()
        },
    };
    let close = c.handle(&b, Packet::Subscribe(s)).unwrap_err();
    assert_eq!(
        close.send,
        Some(ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
    );
}

#[test]
fn invalid_utf8_payload_flagged_as_utf8_is_refused_when_validation_is_on() {
    // 3.3.2.3.2: Payload Format Indicator 1 promises UTF-8; 0x99 when it is not.
    let bad = |qos, pkid| {
        let mut p = publish("t", qos, pkid, b"\xff\xfe");
        if let Packet::Publish(p) = &mut p {
            p.properties.payload_format_indicator = Some(1);
        }
        p
    };
    let b = broker_with(|m| m.validate_utf8_payloads = true);
    let mut sub = Client::new(Protocol::V5, "sub");
    sub.subscribe(&b, "t", QoS::AtLeastOnce);
    let mut c = Client::new(Protocol::V5, "c");
    c.handle(&b, bad(QoS::AtLeastOnce, 1)).unwrap();
    let acks = c.take();
    assert!(
        matches!(&acks[..], [Packet::PubAck(a)] if a.reason == ReasonCode::PAYLOAD_FORMAT_INVALID),
        "{acks:?}"
    );
    assert!(
        publishes(&sub.take()).is_empty(),
        "refused message not delivered"
    );
    let close = c.handle(&b, bad(QoS::AtMostOnce, 0)).unwrap_err();
    assert_eq!(close.send, Some(ReasonCode::PAYLOAD_FORMAT_INVALID));

    // Off by default: forwarded untouched.
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    sub.subscribe(&b, "t", QoS::AtLeastOnce);
    let mut c = Client::new(Protocol::V5, "c");
    c.handle(&b, bad(QoS::AtLeastOnce, 1)).unwrap();
    let got = sub.take();
    assert_eq!(
        publishes(&got)[0].properties.payload_format_indicator,
        Some(1)
    );
}

fn shared_broker(strategy: crate::config::SharedStrategy) -> Broker {
    broker_with(|m| m.shared_subscription_strategy = strategy)
}

#[test]
fn shared_subscription_round_robin_gives_each_message_to_one_member() {
    // 4.8.2: each message to exactly one member of the group; a plain subscriber still gets all.
    let b = shared_broker(crate::config::SharedStrategy::RoundRobin);
    let mut members: Vec<Client> = (0..3)
        .map(|i| Client::new(Protocol::V5, &format!("m{i}")))
        .collect();
    for m in &mut members {
        m.subscribe(&b, "$share/g/jobs/#", QoS::AtLeastOnce);
    }
    let mut plain = Client::new(Protocol::V311, "plain");
    plain.subscribe(&b, "jobs/#", QoS::AtMostOnce);
    let mut publ = Client::new(Protocol::V5, "pub");
    for i in 1..=30u16 {
        publ.handle(&b, publish("jobs/a", QoS::AtLeastOnce, i, b"x"))
            .unwrap();
    }
    let counts: Vec<usize> = members
        .iter_mut()
        .map(|m| publishes(&m.take()).len())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 30, "{counts:?}");
    assert_eq!(counts, vec![10, 10, 10], "round robin spreads evenly");
    assert_eq!(publishes(&plain.take()).len(), 30);
}

#[test]
fn shared_subscription_skips_members_without_a_free_window() {
    // Members whose window is full are skipped while another has room (issue: least_inflight).
    for strategy in [
        crate::config::SharedStrategy::LeastInflight,
        crate::config::SharedStrategy::RoundRobin,
        crate::config::SharedStrategy::Sticky,
    ] {
        let b = shared_broker(strategy);
        let mut slow = Client::with(Negotiated {
            send_window: 2,
            ..negotiated(Protocol::V5, "slow")
        });
        let mut fast = Client::new(Protocol::V5, "fast");
        slow.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
        fast.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
        let mut publ = Client::new(Protocol::V5, "pub");
        for i in 1..=12u16 {
            publ.handle(&b, publish("t", QoS::AtLeastOnce, i, b"x"))
                .unwrap();
            // The fast worker acknowledges at once; the slow one never does.
            for p in publishes(&fast.take())
                .iter()
                .map(|p| p.pkid)
                .collect::<Vec<_>>()
            {
                fast.handle(&b, Packet::PubAck(PubAck::new(p))).unwrap();
            }
            slow.take();
        }
        let slow_got = slow.state.session.inflight_len();
        assert!(
            slow_got <= 2,
            "{strategy:?}: slow member got {slow_got} > its window"
        );
        assert_eq!(
            slow.state.handle.outbox().len(),
            0,
            "{strategy:?}: nothing queued behind"
        );
    }
}

#[test]
fn shared_messages_of_a_departed_member_move_to_another_member() {
    // 4.8.2: queued (never sent) messages go to another member rather than being lost.
    let b = shared_broker(crate::config::SharedStrategy::RoundRobin);
    let mut a = Client::new(Protocol::V5, "a");
    let mut c = Client::new(Protocol::V5, "c");
    a.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
    c.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
    let mut publ = Client::new(Protocol::V5, "pub");
    for i in 1..=4u16 {
        publ.handle(&b, publish("t", QoS::AtLeastOnce, i, b"x"))
            .unwrap();
    }
    // "a" goes away before draining: its shared deliveries are handed on.
    let queued = a.state.handle.outbox().take_where(|d| d.shared.is_some());
    assert_eq!(queued.len(), 2);
    a.state.handle.outbox().set_online(false);
    let queued = queued.into_iter().map(|d| (d, None)).collect();
    let left = b.router.redistribute(&a.state.n.client_id, queued);
    assert!(left.is_empty());
    assert_eq!(publishes(&c.take()).len(), 4, "c got its 2 and a's 2");
}

#[test]
fn what_the_last_member_held_joins_the_group_queue() {
    // routing/shared_subscriptions.rs, a group's lifetime: a departing member's deliveries that no other member can
    // take are never dropped while the group exists; they wait in its queue for a new member.
    let b = shared_broker(crate::config::SharedStrategy::RoundRobin);
    let mut a = Client::new(Protocol::V5, "a");
    a.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
    let mut publ = Client::new(Protocol::V5, "pub");
    for i in 1..=2u16 {
        publ.handle(&b, publish("t", QoS::AtLeastOnce, i, b"x"))
            .unwrap();
    }
    let queued = a.state.handle.outbox().take_where(|d| d.shared.is_some());
    let queued = queued.into_iter().map(|d| (d, None)).collect();
    let left = b.router.redistribute(&a.state.n.client_id, queued);
    assert_eq!(left.len(), 2, "no other member to take them");
    b.router.queue_for_groups(left);
    let queue = b
        .router
        .group_queue(&TopicFilter::try_from("$share/g/t").unwrap());
    assert_eq!(queue.len(), 2);
    let mut c = Client::new(Protocol::V5, "c");
    assert_eq!(
        publishes(&c.subscribe(&b, "$share/g/t", QoS::AtLeastOnce)).len(),
        2,
        "a new member takes them"
    );
}

#[test]
fn hash_strategies_pin_a_key_to_one_member() {
    let b = shared_broker(crate::config::SharedStrategy::HashTopic);
    let mut m: Vec<Client> = (0..3)
        .map(|i| Client::new(Protocol::V5, &format!("h{i}")))
        .collect();
    for c in &mut m {
        c.subscribe(&b, "$share/g/s/+", QoS::AtMostOnce);
    }
    let mut publ = Client::new(Protocol::V5, "pub");
    for _ in 0..5 {
        publ.handle(&b, publish("s/one", QoS::AtMostOnce, 0, b"x"))
            .unwrap();
    }
    let counts: Vec<usize> = m.iter_mut().map(|c| publishes(&c.take()).len()).collect();
    assert!(counts.contains(&5), "one topic, one member: {counts:?}");
}

#[test]
fn topic_and_subscription_limits() {
    let mut c = Config::default();
    c.limits.max_topic_levels = 3;
    c.limits.max_subscriptions_per_client = 2;
    let b = Broker::new(c, None);
    let mut cl = Client::new(Protocol::V5, "c");
    // Filters: deeper than 3 levels -> 0x8F; a third distinct filter -> 0x97 Quota Exceeded.
    assert_eq!(
        suback_codes(&cl.subscribe(&b, "a/b/c/d", QoS::AtMostOnce)),
        vec![0x8F]
    );
    assert_eq!(
        suback_codes(&cl.subscribe(&b, "a/b/c", QoS::AtMostOnce)),
        vec![0]
    );
    assert_eq!(
        suback_codes(&cl.subscribe(&b, "x", QoS::AtMostOnce)),
        vec![0]
    );
    assert_eq!(
        suback_codes(&cl.subscribe(&b, "y", QoS::AtMostOnce)),
        vec![0x97]
    );
    // Re-subscribing to an existing filter is not a new subscription.
    assert_eq!(
        suback_codes(&cl.subscribe(&b, "x", QoS::AtLeastOnce)),
        vec![1]
    );
    // Topic names deeper than the limit: DISCONNECT 0x90.
    let close = cl
        .handle(&b, publish("a/b/c/d", QoS::AtMostOnce, 0, b"x"))
        .unwrap_err();
    assert_eq!(close.send, Some(ReasonCode::TOPIC_NAME_INVALID));
}

#[test]
fn overflow_waits_in_the_group_queue_for_the_first_free_window() {
    // routing/shared_subscriptions.rs tier 2: with every window full, messages wait for whichever member frees a
    // slot first, so the faster worker takes the burst.
    let b = shared_broker(crate::config::SharedStrategy::LeastInflight);
    let small = |id: &str| {
        Client::with(Negotiated {
            send_window: 2,
            ..negotiated(Protocol::V5, id)
        })
    };
    let (mut fast, mut slow) = (small("fast"), small("slow"));
    fast.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
    slow.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
    let mut publ = Client::new(Protocol::V5, "pub");
    for i in 1..=10u16 {
        publ.handle(&b, publish("t", QoS::AtLeastOnce, i, b"x"))
            .unwrap();
    }
    let mut fast_got = publishes(&fast.take())
        .iter()
        .map(|p| p.pkid)
        .collect::<Vec<_>>();
    let slow_got = publishes(&slow.take()).len();
    assert_eq!(
        (fast_got.len(), slow_got),
        (2, 2),
        "each window filled first"
    );
    // The fast worker keeps acknowledging; the slow one never does.
    let mut total_fast = fast_got.len();
    while !fast_got.is_empty() {
        for id in fast_got {
            fast.handle(&b, Packet::PubAck(PubAck::new(id))).unwrap();
        }
        fast_got = publishes(&fast.take()).iter().map(|p| p.pkid).collect();
        total_fast += fast_got.len();
    }
    assert_eq!(total_fast, 8, "the fast member took the whole overflow");
    assert!(publishes(&slow.take()).is_empty());
}

#[test]
fn a_new_shared_message_goes_behind_the_group_queue() {
    // [MQTT-4.6.0-6] per member: with older messages waiting in the group queue, a new one must
    // not be handed straight to a member that just freed a slot, or that member gets the topic's
    // messages out of order.
    let b = shared_broker(crate::config::SharedStrategy::RoundRobin);
    let one = |id: &str| {
        Client::with(Negotiated {
            send_window: 1,
            ..negotiated(Protocol::V5, id)
        })
    };
    let (mut a, mut c) = (one("a"), one("c"));
    a.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
    c.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
    let mut publ = Client::new(Protocol::V5, "pub");
    let payloads: [&'static [u8]; 4] = [b"1", b"2", b"3", b"4"];
    for (i, p) in payloads[..3].iter().enumerate() {
        publ.handle(&b, publish("t", QoS::AtLeastOnce, i as u16 + 1, p))
            .unwrap();
    }
    let first: Vec<u16> = publishes(&a.take()).iter().map(|p| p.pkid).collect();
    assert_eq!(first.len(), 1, "a's window of 1 is full");
    assert_eq!(publishes(&c.take()).len(), 1, "c's window of 1 is full");
    // "3" waits in the group queue. "a" acknowledges (its window frees) and, before it pulls,
    // "4" is published.
    a.handle(&b, Packet::PubAck(PubAck::new(first[0]))).unwrap();
    publ.handle(&b, publish("t", QoS::AtLeastOnce, 4, payloads[3]))
        .unwrap();
    let mut got: Vec<Bytes> = Vec::new();
    loop {
        let ps: Vec<(u16, Bytes)> = publishes(&a.take())
            .iter()
            .map(|p| (p.pkid, p.payload.clone()))
            .collect();
        if ps.is_empty() {
            break;
        }
        for (pkid, payload) in ps {
            got.push(payload);
            a.handle(&b, Packet::PubAck(PubAck::new(pkid))).unwrap();
        }
    }
    assert_eq!(
        got,
        vec![Bytes::from_static(b"3"), Bytes::from_static(b"4")],
        "the older message first"
    );
}

#[test]
fn a_message_queued_for_a_member_while_it_drains_goes_before_the_group_queue() {
    // [MQTT-4.6.0-6] per member, the interleaving that once failed the black-box test
    // `each_member_gets_a_topic_in_publish_order`: member "a" has drained its own queue (empty)
    // and has one free slot; before it takes from the group queue, the publisher hands "4"
    // straight to "a" (the group queue was empty and "a" had room), and "5" goes to the group
    // queue ("a"'s room is taken by "4", "c"'s window is full). "a" must send "4" before "5".
    let b = Arc::new(shared_broker(crate::config::SharedStrategy::RoundRobin));
    let two = |id: &str| {
        Client::with(Negotiated {
            send_window: 2,
            ..negotiated(Protocol::V5, id)
        })
    };
    let (mut a, mut c) = (two("a"), two("c"));
    a.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
    c.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
    let mut publ = Client::new(Protocol::V5, "pub");
    let payloads: [&'static [u8]; 5] = [b"1", b"2", b"3", b"4", b"5"];
    for (i, p) in payloads[..3].iter().enumerate() {
        publ.handle(&b, publish("t", QoS::AtLeastOnce, i as u16 + 1, p))
            .unwrap();
    }
    let payloads_of = |ps: Vec<Packet>| -> Vec<(u16, Bytes)> {
        publishes(&ps)
            .iter()
            .map(|p| (p.pkid, p.payload.clone()))
            .collect()
    };
    // Round robin from "c": "c" gets 1 and 3 (its window is full), "a" gets 2 (one slot free).
    let first = payloads_of(a.take());
    assert_eq!(first.len(), 1, "a has one message in flight");
    assert_eq!(payloads_of(c.take()).len(), 2, "c's window of 2 is full");
    let group = b
        .router
        .group_queue(&TopicFilter::try_from("$share/w/t").unwrap());
    assert!(group.is_empty());
    let broker = b.clone();
    super::outbound::tests::set_before_group_queues(move || {
        for (i, p) in payloads[3..].iter().enumerate() {
            publ.handle(&broker, publish("t", QoS::AtLeastOnce, i as u16 + 4, p))
                .unwrap();
        }
    });
    let mut got: Vec<Bytes> = Vec::new();
    // Bounded: three messages at most are left for "a", each acknowledged as it comes.
    for _ in 0..6 {
        for (pkid, payload) in payloads_of(a.take()) {
            got.push(payload);
            a.handle(&b, Packet::PubAck(PubAck::new(pkid))).unwrap();
        }
    }
    assert!(group.is_empty(), "the group queue was drained");
    assert_eq!(
        got,
        vec![Bytes::from_static(b"4"), Bytes::from_static(b"5")],
        "a gets the topic's messages in publish order"
    );
}

#[test]
fn a_member_reads_its_own_backlog_back_before_it_takes_from_the_group_queue() {
    // [MQTT-4.6.0-6] per member: a persistent member's queue starts with a message kept on
    // disk only (another topic), and "1" of the shared topic waits behind it (a session's
    // shared deliveries stay in memory). "2" goes to the group queue ("a"'s room is taken).
    // While "a" reads its backlog back, it must not take "2" from the group queue ahead of "1".
    let b = shared_broker(crate::config::SharedStrategy::RoundRobin);
    let mut a = Client::with(Negotiated {
        send_window: 2,
        ..negotiated(Protocol::V5, "a")
    });
    a.subscribe(&b, "$share/w/t", QoS::AtLeastOnce);
    let on_disk = Arc::new(crate::message::Message::new(
        TopicName::try_from("other").unwrap(),
        Bytes::from_static(b"0"),
        QoS::AtLeastOnce,
        false,
        PublishProperties::default(),
        "pub".into(),
        Instant::now(),
    ));
    a.state
        .handle
        .outbox()
        .push_cold(crate::session::ColdDelivery {
            seq: 1,
            id: on_disk.id,
            cost: on_disk.cost(),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            priority: 0,
        });
    let mut publ = Client::new(Protocol::V5, "pub");
    publ.handle(&b, publish("t", QoS::AtLeastOnce, 1, b"1"))
        .unwrap();
    publ.handle(&b, publish("t", QoS::AtLeastOnce, 2, b"2"))
        .unwrap();
    let group = b
        .router
        .group_queue(&TopicFilter::try_from("$share/w/t").unwrap());
    assert_eq!(group.len(), 1, "2 waits in the group queue");
    let mut got: Vec<Bytes> = Vec::new();
    let mut record = |a: &mut Client, ps: Vec<Packet>| {
        for p in publishes(&ps) {
            got.push(p.payload.clone());
            a.handle(&b, Packet::PubAck(PubAck::new(p.pkid))).unwrap();
        }
    };
    let ps = a.take();
    record(&mut a, ps);
    let ids = a.state.cold_to_load().expect("a reads its backlog back");
    assert_eq!(ids, vec![on_disk.id]);
    a.state.warm(&ids, vec![Some(on_disk.clone())]);
    // Bounded: three messages at most are left for "a", each acknowledged as it comes.
    for _ in 0..4 {
        let ps = a.take();
        record(&mut a, ps);
    }
    assert_eq!(
        got,
        vec![
            Bytes::from_static(b"0"),
            Bytes::from_static(b"1"),
            Bytes::from_static(b"2")
        ],
        "a's own queue first, then the group queue"
    );
}

#[test]
fn the_last_member_out_leaves_the_group_queue_to_the_orphan_policy() {
    // routing/shared_subscriptions.rs, a group's lifetime: when the last member leaves (here: unsubscribes), what
    // waits in the group queue is kept for a new member (until the expiry) or dropped; counted.
    use crate::config::OrphanPolicy;
    let group = TopicFilter::try_from("$share/g/t").unwrap();
    for policy in [OrphanPolicy::Keep, OrphanPolicy::Drop] {
        let b = broker_with(|m| m.shared_group_orphan_policy = policy);
        let mut a = Client::with(Negotiated {
            send_window: 1,
            ..negotiated(Protocol::V5, "a")
        });
        a.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
        let mut publ = Client::new(Protocol::V5, "pub");
        for i in 1..=3u16 {
            publ.handle(&b, publish("t", QoS::AtLeastOnce, i, b"x"))
                .unwrap();
        }
        assert_eq!(publishes(&a.take()).len(), 1, "a's window of 1");
        let queue = b.router.group_queue(&group);
        assert_eq!((queue.len(), queue.member_count()), (2, 1));
        let u = Unsubscribe {
            pkid: 2,
            filters: vec![group.clone()],
            rejected: vec![],
            user_properties: vec![],
        };
        a.handle(&b, Packet::Unsubscribe(u)).unwrap();
        assert_eq!(queue.member_count(), 0);
        let dropped = || b.stats.striped.get(crate::stats::Counter::DroppedOrphaned);
        match policy {
            OrphanPolicy::Drop => assert_eq!((queue.len(), dropped()), (0, 2), "{policy:?}"),
            OrphanPolicy::Keep => {
                assert_eq!((queue.len(), dropped()), (2, 0), "{policy:?}");
                b.router.expire_orphaned_groups(Instant::now());
                assert_eq!(queue.len(), 2, "kept until the expiry");
                // A new member takes what was kept.
                let mut c = Client::new(Protocol::V5, "c");
                let got = c.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
                assert_eq!(publishes(&got).len(), 2);
                // Without members again, then past the expiry: dropped and counted.
                let u = Unsubscribe {
                    pkid: 3,
                    filters: vec![group.clone()],
                    rejected: vec![],
                    user_properties: vec![],
                };
                c.handle(&b, Packet::Unsubscribe(u.clone())).unwrap();
                let mut d = Client::with(Negotiated {
                    send_window: 1,
                    ..negotiated(Protocol::V5, "d")
                });
                d.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
                for i in 4..=5u16 {
                    publ.handle(&b, publish("t", QoS::AtLeastOnce, i, b"x"))
                        .unwrap();
                }
                d.handle(&b, Packet::Unsubscribe(u)).unwrap();
                assert_eq!(queue.len(), 1, "one in d's window, one waiting");
                b.router
                    .expire_orphaned_groups(Instant::now() + Duration::from_secs(86_401));
                assert_eq!((queue.len(), dropped()), (0, 1));
            }
        }
    }
}

#[test]
fn reason_strings_are_dropped_when_the_ack_would_not_fit() {
    // [MQTT-3.4.2-2]: a PUBACK with a Reason String larger than the client's Maximum Packet
    // Size is sent without it.
    let b = broker_with(|m| m.validate_utf8_payloads = true);
    let mut n = negotiated(Protocol::V5, "small");
    n.client_max_packet = 8;
    let mut c = Client::with(n);
    let mut p = publish("t", QoS::AtLeastOnce, 1, b"\xff");
    if let Packet::Publish(p) = &mut p {
        p.properties.payload_format_indicator = Some(1);
    }
    c.handle(&b, p).unwrap();
    match &c.take()[..] {
        [Packet::PubAck(a)] => {
            assert_eq!(a.reason, ReasonCode::PAYLOAD_FORMAT_INVALID);
            assert!(a.properties.reason_string.is_none());
        }
        other => panic!("{other:?}"),
    }
}

proptest::proptest! {
    /// Outbound Topic Aliases (3.3.2.3.4) through the broker's real choice: random topics and
    /// payload sizes, some over the client's Maximum Packet Size (not sent [MQTT-3.1.2-25]), few
    /// aliases so that least-recently-used ones are re-assigned. A model of the client's alias
    /// table resolves every delivered PUBLISH, which must name the topic it was published to.
    #[test]
    fn delivered_publishes_resolve_to_their_topic_through_the_clients_alias_table(
        steps in proptest::collection::vec((0usize..6, 0usize..48), 1..80),
        max_aliases in 1u16..4,
    ) {
        const TOPICS: [&str; 6] = ["a", "b/c", "d/e/f", "long/topic/name", "x", "y/z"];
        let b = broker();
        let mut n = negotiated(Protocol::V5, "sub");
        n.outbound_alias_maximum = max_aliases;
        n.client_max_packet = 48;
        let mut sub = Client::with(n);
        let mut publ = Client::new(Protocol::V5, "pub");
        sub.subscribe(&b, "#", QoS::AtMostOnce);
        // The client's side of 3.3.2.3.4: alias -> topic, changed only by what it receives.
        let mut table: std::collections::HashMap<u16, String> = Default::default();
        let mut delivered = 0;
        for (i, &(topic, size)) in steps.iter().enumerate() {
            let mut payload = (i as u16).to_be_bytes().to_vec();
            payload.resize(2 + size, b'.');
            publ.handle(&b, Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: TopicName::try_from(TOPICS[topic]).unwrap(),
                pkid: 0,
                payload: Bytes::from(payload),
                properties: PublishProperties::default(),
            }))
            .unwrap();
            for p in publishes(&sub.take()) {
                let resolved = match p.properties.topic_alias {
                    Some(a) if p.topic.as_str().is_empty() => table
                        .get(&a)
                        .cloned()
                        .unwrap_or_else(|| panic!("alias {a} used before the client was told it")),
                    Some(a) => {
                        proptest::prop_assert!(a >= 1 && a <= max_aliases, "alias {} over the maximum [MQTT-3.3.2-10]", a);
                        table.insert(a, p.topic.as_str().to_owned());
                        p.topic.as_str().to_owned()
                    }
                    None => p.topic.as_str().to_owned(),
                };
                let index = usize::from(u16::from_be_bytes([p.payload[0], p.payload[1]]));
                proptest::prop_assert_eq!(resolved, TOPICS[steps[index].0], "message {}", index);
                delivered += 1;
            }
        }
        proptest::prop_assert!(delivered <= steps.len());
    }
}

#[test]
fn an_identifier_shared_by_overlapping_subscriptions_is_sent_once() {
    // [MQTT-3.3.4-3]: the PUBLISH carries the identifiers of the matching subscriptions; the
    // same identifier on several of them is one identifier, not one per subscription.
    let b = broker();
    let mut sub = Client::new(Protocol::V5, "sub");
    let mut publ = Client::new(Protocol::V5, "pub");
    let o = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    sub.subscribe_with(&b, "a/#", o, Some(7));
    sub.subscribe_with(&b, "a/+", o, Some(7));
    sub.subscribe_with(&b, "+/b", o, Some(9));
    publ.handle(&b, publish("a/b", QoS::AtLeastOnce, 1, b"x"))
        .unwrap();
    let got = sub.take();
    let p = publishes(&got);
    assert_eq!(p.len(), 1);
    let mut ids = p[0].properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 9]);
}

#[test]
fn the_read_check_is_shared_per_username_only_when_the_acl_ignores_client_ids() {
    // Delivery-time ACL check (router: one ACL lookup per PUBLISH). With a `%c` pattern, two
    // subscribers with the same username get different answers; without one they may share.
    let acl = crate::auth::acl::Acl::parse(
        "user u\ntopic read other/#\npattern read devices/%c/#\npattern write #\n",
        "test",
    )
    .unwrap();
    let b = Broker::new(Config::default(), Some(acl));
    let named = |id: &str| {
        let mut n = negotiated(Protocol::V5, id);
        n.username = Some("u".into());
        Client::with(n)
    };
    let (mut c1, mut c2, mut publ) = (named("c1"), named("c2"), named("p"));
    for c in [&mut c1, &mut c2] {
        assert_eq!(
            suback_codes(&c.subscribe(&b, "devices/#", QoS::AtMostOnce)),
            vec![0]
        );
        assert_eq!(
            suback_codes(&c.subscribe(&b, "other/#", QoS::AtMostOnce)),
            vec![0]
        );
    }
    publ.handle(&b, publish("devices/c1/x", QoS::AtMostOnce, 0, b"1"))
        .unwrap();
    publ.handle(&b, publish("other/x", QoS::AtMostOnce, 0, b"2"))
        .unwrap();
    let topics = |c: &mut Client| -> Vec<String> {
        publishes(&c.take())
            .iter()
            .map(|p| p.topic.as_str().to_owned())
            .collect()
    };
    assert_eq!(topics(&mut c1), ["devices/c1/x", "other/x"]);
    assert_eq!(topics(&mut c2), ["other/x"]);
}

/// `$delayed/{seconds}/{topic}`: kept once, also when a QoS 2 PUBLISH is resent before PUBREL
/// [MQTT-4.3.3-9]; routed to `{topic}` when due, not before; the message keeps the priority
/// its target topic has (`mqtt.priorities`).
#[tokio::test]
async fn a_delayed_publish_is_kept_once_and_routed_when_due() {
    let b = broker_with(|m| {
        m.priorities = vec![crate::config::PriorityRule {
            filter: "a/#".into(),
            priority: 7,
        }]
    });
    let mut sub = Client::new(Protocol::V5, "sub");
    sub.subscribe(&b, "a/b", QoS::AtLeastOnce);
    let mut publ = Client::new(Protocol::V5, "pub");
    let start = Instant::now();
    for _ in 0..2 {
        publ.handle(
            &b,
            publish("$delayed/10/a/b", QoS::ExactlyOnce, 5, b"later"),
        )
        .unwrap();
        assert!(matches!(&publ.take()[..], [Packet::PubRec(a)] if a.reason.0 == 0));
    }
    assert_eq!(b.router.delayed.len(), 1, "the resend is not kept again");
    assert_eq!(
        b.router.release_due(start + Duration::from_secs(9)).await,
        0
    );
    assert!(sub.take().is_empty(), "not before its time");
    let due = Instant::now() + Duration::from_secs(10);
    assert_eq!(b.router.release_due(due).await, 1);
    assert!(b.router.delayed.is_empty());
    match &sub.take()[..] {
        [Packet::Publish(p)] => {
            assert_eq!(p.topic.as_str(), "a/b");
            assert_eq!(&p.payload[..], b"later");
        }
        other => panic!("expected the delayed PUBLISH, got {other:?}"),
    }
    assert_eq!(b.router.priority_of("a/x"), 7);
    assert_eq!(b.router.priority_of("b"), 0);
}
