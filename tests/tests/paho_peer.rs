//! Sluice against Paho's Python client (paho-mqtt 2.x) at MQTT 3.1.1 and 5.0. The scripts in
//! tests/python/ print what they observed; these tests assert those lines.

use sluice_tests::{paho, Broker};

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

/// A round trip at each QoS and both levels: the SUBACK grants the requested QoS, the message
/// arrives once at min(published, granted) = the same QoS, and the publisher's QoS 1/2 flow
/// completes. 3.1.1: [MQTT-3.8.4-6] [MQTT-4.3.2-1] [MQTT-4.3.3-1]; 5.0: [MQTT-3.8.4-8]
/// [MQTT-4.3.2-1] [MQTT-4.3.3-1].
#[test]
fn round_trip_each_qos_both_versions() {
    let broker = Broker::start();
    for version in ["311", "5"] {
        for qos in 0..=2 {
            let q = qos.to_string();
            let out = paho(&broker, "pubsub.py", &["--version", version, "--qos", &q]).unwrap();
            assert_eq!(
                lines(&out),
                [
                    format!("SUBACK {qos}"),
                    format!("RECEIVED pubsub/x {qos} hello at qos {qos}"),
                    "COUNT 1".to_string(),
                ],
                "version {version}, QoS {qos}"
            );
        }
    }
}

/// Two overlapping subscriptions with Subscription Identifiers 1 (`sid/#`, QoS 1) and 2
/// (`sid/+`, QoS 2): a message matching both arrives once, at QoS 2, carrying both identifiers;
/// one matching only `sid/#` carries only 1. [MQTT-3.3.4-2] [MQTT-3.3.4-3] [MQTT-3.3.4-4].
#[test]
fn v5_subscription_identifiers_on_overlapping_subscriptions() {
    let broker = Broker::start();
    let out = paho(&broker, "sub_ids.py", &[]).unwrap();
    assert_eq!(
        lines(&out),
        [
            "RECEIVED sid/both qos=2 ids=1,2",
            "RECEIVED sid/deep/only qos=1 ids=1"
        ]
    );
}

/// Request/response: the Response Topic and the (binary) Correlation Data reach the responder
/// unaltered, and the Correlation Data it copies comes back unaltered.
/// [MQTT-3.3.2-15] [MQTT-3.3.2-16]; §4.10.
#[test]
fn v5_request_response() {
    let broker = Broker::start();
    let out = paho(&broker, "request_response.py", &[]).unwrap();
    let l = lines(&out);
    assert_eq!(l.len(), 2, "{out}");
    let corr = "correlation=00ff108069642d37";
    assert!(
        l[0].starts_with("REQUEST response_topic=resp/") && l[0].ends_with(corr),
        "{out}"
    );
    let reply_topic = l[0]
        .strip_prefix("REQUEST response_topic=")
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert_eq!(
        l[1],
        format!("RESPONSE topic={reply_topic} {corr} payload=noon")
    );
}

/// The will is published when the connection closes without DISCONNECT, at 3.1.1 and 5.0.
/// 3.1.1: [MQTT-3.1.2-8]; 5.0: [MQTT-3.1.2-8].
#[test]
fn will_published_when_socket_closes_without_disconnect() {
    let broker = Broker::start();
    for version in ["311", "5"] {
        let out = paho(
            &broker,
            "will.py",
            &["--version", version, "--ending", "abrupt"],
        )
        .unwrap();
        assert!(out.starts_with("WILL gone "), "version {version}: {out}");
    }
}

/// A normal DISCONNECT discards the will: 3.1.1 [MQTT-3.1.2-10]; 5.0 reason 0x00
/// [MQTT-3.14.4-3]. (Waits a bounded second for a will that must not come.)
#[test]
fn no_will_after_normal_disconnect() {
    let broker = Broker::start();
    for version in ["311", "5"] {
        let args = [
            "--version",
            version,
            "--ending",
            "disconnect",
            "--wait",
            "1",
        ];
        let out = paho(&broker, "will.py", &args).unwrap();
        assert_eq!(out, "NO WILL\n", "version {version}");
    }
}

/// 5.0 DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes the will. §3.14.2.1.
#[test]
fn v5_disconnect_with_will_message_publishes_it() {
    let broker = Broker::start();
    let out = paho(&broker, "will.py", &["--ending", "with-will"]).unwrap();
    assert!(out.starts_with("WILL gone "), "{out}");
}

/// No Local: a client's own messages are not delivered to its No Local subscription
/// [MQTT-3.8.3-3]. Retain Handling 1 sends retained messages only for a new subscription
/// [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11], 0 on every subscribe [MQTT-3.3.1-9]; retained
/// messages sent because of a subscription have RETAIN 1 [MQTT-3.3.1-8] (5.0 numbering).
#[test]
fn v5_no_local_and_retain_handling() {
    let broker = Broker::start();
    let out = paho(&broker, "sub_options.py", &[]).unwrap();
    assert_eq!(
        lines(&out),
        [
            "STEP no-local nl/other",
            "STEP retained-set -",
            "STEP rh1-new rh/x(retained)",
            "STEP rh1-existing -",
            "STEP rh2 -",
            "STEP rh0 rh/x(retained)",
        ]
    );
}
