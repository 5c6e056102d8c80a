//! Broadcast encoded once (issue #13 point 5): one message to many subscribers of different
//! protocol levels, QoS and subscription options, where the broker shares one encoded PUBLISH
//! per wire form and patches only the packet identifier. Every subscriber must decode exactly
//! what it alone should get: topic, payload, QoS = min(published, granted) [MQTT-3.8.4-8], the
//! RETAIN flag (1 for the retained message sent on subscribe [MQTT-3.3.1-9], Retain As
//! Published for live ones [MQTT-3.3.1-12]), its own Subscription Identifier [MQTT-3.3.4-3],
//! the remaining Message Expiry Interval [MQTT-3.3.2-6] and the User Properties forwarded
//! unchanged [MQTT-3.3.2-17]. Three decoders check it: rumqttc (3.1.1), rumqttc::v5 and
//! Debian's `mosquitto_sub` (3.1.1 and 5.0).

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS as Q5;
use sluice_tests::clients::{V4, V5};
use sluice_tests::mosquitto_sub::Sub;
use sluice_tests::{client_id, Broker};

const TOPIC: &str = "bc/news";

/// A message as the test publishes it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    payload: &'static str,
    qos: u8,
    retain: bool,
    expiry: Option<u32>,
    user: bool,
}

/// The retained message, stored before anyone subscribes, then three live ones.
const RETAINED: Sent = Sent {
    payload: "retained-before",
    qos: 1,
    retain: true,
    expiry: Some(3600),
    user: false,
};
const LIVE: [Sent; 3] = [
    Sent {
        payload: "live-qos2-expiry",
        qos: 2,
        retain: false,
        expiry: Some(600),
        user: true,
    },
    Sent {
        payload: "live-qos1-retained",
        qos: 1,
        retain: true,
        expiry: None,
        user: false,
    },
    Sent {
        payload: "live-qos0",
        qos: 0,
        retain: false,
        expiry: None,
        user: false,
    },
];

/// One subscriber's subscription.
#[derive(Debug, Clone, Copy)]
struct Subscription {
    qos: u8,
    id: Option<usize>,
    retain_as_published: bool,
}

/// What one subscriber decoded of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    topic: String,
    payload: String,
    qos: u8,
    retain: bool,
    /// 5.0 only (None for 3.1.1).
    expiry: Option<u32>,
    ids: Vec<usize>,
    user: Vec<(String, String)>,
}

/// Checks what `who` got against what it should get, message by message (by payload).
fn check(who: &str, v5: bool, sub: Subscription, got: &[Got]) {
    assert_eq!(got.len(), 4, "{who}: {got:?}");
    for (sent, live) in std::iter::once((RETAINED, false)).chain(LIVE.map(|s| (s, true))) {
        let g = got
            .iter()
            .find(|g| g.payload == sent.payload)
            .unwrap_or_else(|| panic!("{who}: no {:?} in {got:?}", sent.payload));
        assert_eq!(g.topic, TOPIC, "{who}");
        assert_eq!(g.qos, sent.qos.min(sub.qos), "{who}: {g:?} [MQTT-3.8.4-8]");
        let retain = if live {
            v5 && sub.retain_as_published && sent.retain
        } else {
            true
        };
        assert_eq!(
            g.retain, retain,
            "{who}: {g:?} [MQTT-3.3.1-9] [MQTT-3.3.1-12]"
        );
        if !v5 {
            continue;
        }
        match sent.expiry {
            // Counted down, never up, and at least 1 [MQTT-3.3.2-6].
            Some(e) => assert!(
                g.expiry.is_some_and(|left| left <= e && left + 60 >= e),
                "{who}: expiry {:?} of {e} [MQTT-3.3.2-6]",
                g.expiry
            ),
            None => assert_eq!(g.expiry, None, "{who}"),
        }
        let ids: Vec<usize> = sub.id.into_iter().collect();
        assert_eq!(g.ids, ids, "{who}: {g:?} [MQTT-3.3.4-3]");
        let user = if sent.user {
            vec![("origin".to_string(), "shop".to_string())]
        } else {
            vec![]
        };
        assert_eq!(g.user, user, "{who}: {g:?} [MQTT-3.3.2-17]");
    }
}

fn q5(q: u8) -> Q5 {
    match q {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

fn q4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

async fn publish(p: &mut V5, m: Sent) {
    let properties = PublishProperties {
        message_expiry_interval: m.expiry,
        user_properties: if m.user {
            vec![("origin".into(), "shop".into())]
        } else {
            vec![]
        },
        ..Default::default()
    };
    p.client
        .publish_with_properties(TOPIC, q5(m.qos), m.retain, m.payload, properties)
        .await
        .unwrap();
}

async fn v5_subscriber(broker: &Broker, sub: Subscription) -> V5 {
    let mut c = V5::connect(broker.addr, &client_id("b5")).await;
    let mut filter = Filter::new(TOPIC, q5(sub.qos));
    filter.preserve_retain = sub.retain_as_published;
    let props = SubscribeProperties {
        id: sub.id,
        user_properties: vec![],
    };
    c.client
        .subscribe_many_with_properties([filter], props)
        .await
        .unwrap();
    c.next(|p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::SubAck(_)))
        .await;
    c
}

/// 3.1.1 and 5.0 subscribers at QoS 0/1/2, some with a Subscription Identifier, some with
/// Retain As Published, several of each (so that they share encoded forms), all get the
/// retained message on subscribe and three live messages, each exactly as it should be.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_subscribers_each_decode_their_own_publish() {
    let broker = Broker::start();
    let mut publisher = V5::connect(broker.addr, &client_id("bp")).await;
    publish(&mut publisher, RETAINED).await;
    publisher
        .next(|p| matches!(p, rumqttc::v5::mqttbytes::v5::Packet::PubAck(_)))
        .await;

    let mut v4 = Vec::new();
    let mut v5 = Vec::new();
    for qos in 0..=2u8 {
        for _ in 0..3 {
            let mut c = V4::connect(broker.addr, &client_id("b4"), true).await;
            c.subscribe(TOPIC, q4(qos)).await;
            let sub = Subscription {
                qos,
                id: None,
                retain_as_published: false,
            };
            v4.push((c, sub));
        }
        for (i, (id, rap)) in [
            (None, false),
            (None, false),
            (Some(100 + usize::from(qos)), false),
            (None, true),
            (None, true),
        ]
        .into_iter()
        .enumerate()
        {
            let sub = Subscription {
                qos,
                id,
                retain_as_published: rap,
            };
            v5.push((i, v5_subscriber(&broker, sub).await, sub));
        }
    }
    let fmt = ["-F", "%t|%q|%r|%E|%S|%P|%p", "-t", TOPIC];
    let mosq311 = tokio::task::block_in_place(|| {
        Sub::start(&broker, "mqttv311", &[&fmt[..], &["-q", "2"]].concat(), 4)
    });
    let mosq5 = tokio::task::block_in_place(|| {
        Sub::start(
            &broker,
            "mqttv5",
            &[
                &fmt[..],
                &["-q", "1", "-D", "subscribe", "subscription-identifier", "7"],
            ]
            .concat(),
            4,
        )
    });

    for m in LIVE {
        publish(&mut publisher, m).await;
    }

    for (n, (c, sub)) in v4.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..4 {
            let p = c.next_publish().await;
            got.push(Got {
                topic: String::from_utf8_lossy(p.topic.as_ref()).into(),
                payload: String::from_utf8_lossy(&p.payload).into(),
                qos: p.qos as u8,
                retain: p.retain,
                expiry: None,
                ids: vec![],
                user: vec![],
            });
        }
        check(&format!("rumqttc 3.1.1 #{n} {sub:?}"), false, *sub, &got);
        c.no_publish(Duration::from_millis(50)).await;
    }
    for (i, c, sub) in v5.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..4 {
            let p = c.next_publish().await;
            let props = p.properties.clone().unwrap_or_else(|| PublishProperties {
                ..Default::default()
            });
            got.push(Got {
                topic: String::from_utf8_lossy(&p.topic).into(),
                payload: String::from_utf8_lossy(&p.payload).into(),
                qos: p.qos as u8,
                retain: p.retain,
                expiry: props.message_expiry_interval,
                ids: props.subscription_identifiers,
                user: props.user_properties,
            });
        }
        check(&format!("rumqttc 5.0 #{i} {sub:?}"), true, *sub, &got);
        c.no_publish(Duration::from_millis(50)).await;
    }

    for (sub, v5, m) in [
        (
            Subscription {
                qos: 2,
                id: None,
                retain_as_published: false,
            },
            false,
            mosq311,
        ),
        (
            Subscription {
                qos: 1,
                id: Some(7),
                retain_as_published: false,
            },
            true,
            mosq5,
        ),
    ] {
        let lines = tokio::task::block_in_place(|| m.finish(&broker));
        let got: Vec<Got> = lines.iter().map(|l| mosquitto_line(l)).collect();
        check(&format!("mosquitto_sub {sub:?}: {lines:?}"), v5, sub, &got);
    }
}

/// A `-F "%t|%q|%r|%E|%S|%P|%p"` line of `mosquitto_sub`.
fn mosquitto_line(line: &str) -> Got {
    let f: Vec<&str> = line.splitn(7, '|').collect();
    assert_eq!(f.len(), 7, "{line}");
    let num = |s: &str| (!s.is_empty()).then(|| s.parse::<u32>().expect(line));
    Got {
        topic: f[0].into(),
        payload: f[6].into(),
        qos: f[1].parse().expect(line),
        retain: f[2] == "1",
        expiry: num(f[3]),
        ids: num(f[4]).map(|i| i as usize).into_iter().collect(),
        user: f[5]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once(':').expect(line);
                (k.to_string(), v.to_string())
            })
            .collect(),
    }
}
