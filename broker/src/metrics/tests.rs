//! `render_prometheus` read back by a Prometheus text parser (`prometheus-parse`), with
//! counters that move after traffic driven through an in-process broker (the real listener and
//! connection tasks, a real MQTT client over loopback).

use std::collections::HashMap;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::config::{Config, ListenerConfig, PersistenceMode};
use crate::Server;

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition format")
}

/// The value of `name` with exactly `labels` (a counter, gauge or untyped sample).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x: &&Sample| {
            x.metric == name
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
                && x.labels.iter().count() == labels.len()
        })
        .and_then(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            _ => None,
        })
}

/// The `_count` of histogram `name`.
fn histogram_count(s: &Scrape, name: &str) -> Option<u64> {
    s.samples
        .iter()
        .find(|x| x.metric == name)
        .and_then(|x| match &x.value {
            Value::Histogram(buckets) => buckets.last().map(|b| b.count as u64),
            _ => None,
        })
}

async fn client(id: &str, port: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(o, 64)
}

/// Polls `events` until `want` matches an event (bounded in time).
async fn until(events: &mut rumqttc::EventLoop, mut want: impl FnMut(&Event) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = events.poll().await.expect("connection");
            if want(&e) {
                return;
            }
        }
    })
    .await
    .expect("event within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counters_move_with_traffic() {
    let mut config = Config {
        listeners: vec![ListenerConfig::plain("127.0.0.1:0")],
        // The admin listener on a free port (the default 18083 may be taken).
        admin: crate::config::AdminConfig {
            bind: "127.0.0.1:0".into(),
            token: String::new(),
        },
        ..Config::default()
    };
    config.persistence.mode = PersistenceMode::Memory;
    config.sys.interval = 0;
    let server = Server::bind(config).await.expect("bind");
    let port = server.local_addrs()[0].port();
    let broker = server.broker().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let before = scrape(&super::render_prometheus(&broker));
    assert_eq!(
        value(&before, "sluice_messages_received_total", &[("qos", "1")]),
        Some(0.0)
    );
    assert_eq!(value(&before, "sluice_connections_current", &[]), Some(0.0));

    let (sub, mut sub_events) = client("metrics-sub", port).await;
    sub.subscribe("m/t", QoS::AtLeastOnce).await.unwrap();
    until(&mut sub_events, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    let (publ, mut pub_events) = client("metrics-pub", port).await;
    const N: usize = 20;
    for i in 0..N {
        publ.publish("m/t", QoS::AtLeastOnce, false, vec![b'x'; 10 + i])
            .await
            .unwrap();
    }
    let mut acked = 0;
    until(&mut pub_events, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acked += 1;
        }
        acked == N
    })
    .await;
    let mut got = 0;
    until(&mut sub_events, |e| {
        if matches!(e, Event::Incoming(Packet::Publish(_))) {
            got += 1;
        }
        got == N
    })
    .await;
    // A retained message, and one the ACL-free broker refuses ($SYS is the broker's).
    publ.publish("m/r", QoS::AtLeastOnce, true, b"kept".to_vec())
        .await
        .unwrap();
    publ.publish("$SYS/forged", QoS::AtLeastOnce, false, b"no".to_vec())
        .await
        .unwrap();
    let mut acked = 0;
    until(&mut pub_events, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acked += 1;
        }
        acked == 2
    })
    .await;

    let after = scrape(&super::render_prometheus(&broker));
    let received = value(&after, "sluice_messages_received_total", &[("qos", "1")]).unwrap();
    assert_eq!(
        received,
        (N + 2) as f64,
        "every PUBLISH received is counted"
    );
    let sent = value(&after, "sluice_messages_sent_total", &[("qos", "1")]).unwrap();
    assert_eq!(
        sent, N as f64,
        "every delivery to the subscriber is counted"
    );
    assert_eq!(
        value(
            &after,
            "sluice_messages_dropped_total",
            &[("reason", "acl")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&after, "sluice_connections_current", &[]), Some(2.0));
    assert_eq!(value(&after, "sluice_connections_total", &[]), Some(2.0));
    assert_eq!(value(&after, "sluice_retained_messages", &[]), Some(1.0));
    assert_eq!(value(&after, "sluice_subscriptions", &[]), Some(1.0));
    assert_eq!(
        value(&after, "sluice_sessions", &[("state", "connected")]),
        Some(2.0)
    );
    assert!(value(&after, "sluice_bytes_received_total", &[]).unwrap() > 0.0);
    assert!(value(&after, "sluice_bytes_sent_total", &[]).unwrap() > 0.0);
    // Sampled (one message in 8 by id, crate::stats::LATENCY_SAMPLE): at most one
    // observation per delivery. Publish on until a sampled one has been delivered (ids are
    // shared with other tests in this process, so which of ours is sampled is not known).
    let sampled = |s: &Scrape| histogram_count(s, "sluice_delivery_latency_seconds").unwrap();
    assert!(sampled(&after) <= N as u64);
    let mut last = after;
    for round in 0..100 {
        if sampled(&last) > 0 {
            break;
        }
        assert!(round < 99, "no delivery's latency sampled in 1600 messages");
        for _ in 0..16 {
            publ.publish("m/t", QoS::AtLeastOnce, false, b"more".to_vec())
                .await
                .unwrap();
        }
        let (mut acked, mut got) = (0, 0);
        until(&mut pub_events, |e| {
            acked += usize::from(matches!(e, Event::Incoming(Packet::PubAck(_))));
            acked == 16
        })
        .await;
        until(&mut sub_events, |e| {
            got += usize::from(matches!(e, Event::Incoming(Packet::Publish(_))));
            got == 16
        })
        .await;
        last = scrape(&super::render_prometheus(&broker));
    }
    let sent = value(&last, "sluice_messages_sent_total", &[("qos", "1")]).unwrap();
    assert!(sampled(&last) as f64 <= sent, "a sample of the deliveries");
    let families: HashMap<_, _> = last
        .docs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(families.contains_key("sluice_messages_sent_total"));

    let _ = stop_tx.send(());
    running.await.unwrap();
}
