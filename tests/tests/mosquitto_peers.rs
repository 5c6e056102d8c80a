//! Sluice against Debian's `mosquitto_pub` / `mosquitto_sub` (2.0) at MQTT 3.1.1 and 5.0:
//! retained messages, wildcards, `$` topics, overlapping subscriptions, QoS, and the 5.0
//! properties the broker must forward untouched.
//!
//! Every subscriber is started through [`sluice_tests::mosquitto_sub::Sub`], which returns only once the broker has
//! processed its SUBSCRIBE and which ends with a private marker message, so "exactly these
//! messages, in this order, and nothing else" can be asserted without sleeping.
//! (`mosquitto_sub` 2.0.11 has `--retain-as-published` but no No Local or Retain Handling flags;
//! those are covered by the Paho tests.)

use std::time::{Duration, Instant};

use sluice_tests::mosquitto_sub::{publish, sorted, Sub};
use sluice_tests::Broker;

const V311: &str = "mqttv311";
const V5: &str = "mqttv5";
const VERSIONS: [&str; 2] = [V311, V5];

/// Retained messages are stored, replaced (also by a QoS 0 message), kept by a non-retained
/// publish, delivered with RETAIN 1 to a new subscription and RETAIN 0 to an existing one, and
/// deleted by an empty retained payload, which existing subscribers still receive.
/// 3.1.1: [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-7] [MQTT-3.3.1-8] [MQTT-3.3.1-9]
/// [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.3.1-12];
/// 5.0: [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-7] [MQTT-3.3.1-8] [MQTT-3.3.1-9]
/// [MQTT-3.3.1-12] (Retain As Published 0: RETAIN 0 on live deliveries).
#[test]
fn retained_set_replace_delete() {
    for v in VERSIONS {
        let broker = Broker::start();
        publish(&broker, v, &["-q", "1", "-r", "-t", "ret/a", "-m", "one"]);
        publish(&broker, v, &["-q", "0", "-r", "-t", "ret/a", "-m", "two"]);
        publish(&broker, v, &["-q", "2", "-r", "-t", "ret/b", "-m", "bee"]);
        // Not retained: delivered, but the retained "bee" stays.
        publish(&broker, v, &["-q", "1", "-t", "ret/b", "-m", "live"]);

        let fmt = ["-F", "%r|%t|%p", "-q", "1", "-t", "ret/#"];
        let sub = Sub::start(&broker, v, &fmt, 3);
        // Delete ret/a: an existing subscriber still gets the empty message, with RETAIN 0.
        publish(&broker, v, &["-q", "1", "-r", "-n", "-t", "ret/a"]);
        publish(&broker, v, &["-q", "1", "-r", "-t", "ret/c", "-m", "fresh"]);
        let lines = sub.finish(&broker);
        assert_eq!(lines.len(), 4, "{v}: {lines:?}");
        assert_eq!(
            sorted(lines[..2].to_vec()),
            ["1|ret/a|two", "1|ret/b|bee"],
            "{v}: the latest retained message per topic, RETAIN 1, on subscribe"
        );
        assert_eq!(
            lines[2..],
            ["0|ret/a|", "0|ret/c|fresh"],
            "{v}: live deliveries have RETAIN 0, the empty retained payload is delivered"
        );

        let late = Sub::start(&broker, v, &fmt, 2);
        let lines = late.finish(&broker);
        assert_eq!(
            sorted(lines),
            ["1|ret/b|bee", "1|ret/c|fresh"],
            "{v}: ret/a was deleted by the empty retained message and is not stored"
        );
    }
}

/// `+` matches exactly one level (possibly empty), `#` any number including the parent level
/// itself; filters starting with a wildcard never match `$` topics, `$app/#` does.
/// 3.1.1 and 5.0: §4.7.1.2 / §4.7.1.3, [MQTT-4.7.2-1].
#[test]
fn wildcards_and_dollar_topics() {
    let topics = [
        "sport",
        "sport/",
        "sport/tennis",
        "sport/tennis/player1",
        "other/x",
        "$app/x",
        "$app/y/z",
    ];
    let cases: [(&str, &[&str]); 8] = [
        (
            "sport/#",
            &["sport", "sport/", "sport/tennis", "sport/tennis/player1"],
        ),
        ("sport/+", &["sport/", "sport/tennis"]),
        ("+/+", &["sport/", "sport/tennis", "other/x"]),
        ("+/x", &["other/x"]),
        (
            "#",
            &[
                "sport",
                "sport/",
                "sport/tennis",
                "sport/tennis/player1",
                "other/x",
            ],
        ),
        (
            "+/#",
            &[
                "sport",
                "sport/",
                "sport/tennis",
                "sport/tennis/player1",
                "other/x",
            ],
        ),
        ("$app/#", &["$app/x", "$app/y/z"]),
        ("$app/+", &["$app/x"]),
    ];
    for v in VERSIONS {
        let broker = Broker::start();
        let subs: Vec<Sub> = cases
            .iter()
            .map(|(filter, want)| Sub::start(&broker, v, &["-v", "-t", filter], want.len()))
            .collect();
        for t in topics {
            publish(&broker, v, &["-q", "1", "-t", t, "-m", "m"]);
        }
        for (sub, (filter, want)) in subs.into_iter().zip(cases) {
            let got = sub.finish(&broker);
            let want: Vec<String> = want.iter().map(|t| format!("{t} m")).collect();
            assert_eq!(got, want, "{v}: filter {filter:?}");
        }
    }
}

/// One client with overlapping subscriptions (`a/#`, `a/+`, `a/b`) gets one copy of a message
/// matching all of them. 3.1.1: [MQTT-3.3.5-1] (delivered respecting the maximum QoS; Sluice
/// documents one copy); 5.0: [MQTT-3.3.4-2], and one copy is what §3.3.4 describes for a
/// server that does not send one per subscription.
#[test]
fn overlapping_subscriptions_deliver_one_copy() {
    for v in VERSIONS {
        let broker = Broker::start();
        let args = ["-v", "-q", "2", "-t", "a/#", "-t", "a/+", "-t", "a/b"];
        let sub = Sub::start(&broker, v, &args, 2);
        publish(&broker, v, &["-q", "2", "-t", "a/b", "-m", "all-three"]);
        publish(&broker, v, &["-q", "2", "-t", "a/c/d", "-m", "only-hash"]);
        assert_eq!(
            sub.finish(&broker),
            ["a/b all-three", "a/c/d only-hash"],
            "{v}: exactly one copy each"
        );
    }
}

/// Each QoS is delivered as the minimum of the published QoS and the subscription's QoS.
/// 3.1.1: [MQTT-3.8.4-6]; 5.0: [MQTT-3.8.4-8]; the QoS 1 / 2 flows complete (the publisher
/// exits 0 only after PUBACK / PUBCOMP): §4.3.2, §4.3.3.
#[test]
fn qos_0_1_2_delivered_at_the_minimum_qos() {
    for v in VERSIONS {
        let broker = Broker::start();
        let subs: Vec<(u8, Sub)> = (0..=2u8)
            .map(|sq| {
                let args = ["-F", "%q|%t|%p", "-q", &sq.to_string(), "-t", "q/#"];
                (sq, Sub::start(&broker, v, &args, 3))
            })
            .collect();
        for pq in 0..=2u8 {
            let topic = format!("q/{pq}");
            publish(
                &broker,
                v,
                &["-q", &pq.to_string(), "-t", &topic, "-m", "x"],
            );
        }
        for (sq, sub) in subs {
            let want: Vec<String> = (0..=2u8)
                .map(|pq| format!("{}|q/{pq}|x", pq.min(sq)))
                .collect();
            assert_eq!(sub.finish(&broker), want, "{v}: subscription QoS {sq}");
        }
    }
}

/// 5.0 PUBLISH properties are forwarded unaltered: User Properties in order (a repeated name
/// included), Content Type, Response Topic, Correlation Data, Payload Format Indicator.
/// [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20].
#[test]
fn v5_properties_forwarded_unaltered() {
    let broker = Broker::start();
    let sub = Sub::start(
        &broker,
        V5,
        &["-F", "%t|%P|%C|%R|%D|%F|%p", "-q", "1", "-t", "props/#"],
        1,
    );
    let p = "publish";
    publish(
        &broker,
        V5,
        &[
            "-q",
            "1",
            "-t",
            "props/x",
            "-m",
            "{\"v\":1}",
            "-D",
            p,
            "user-property",
            "zeta",
            "1",
            "-D",
            p,
            "user-property",
            "alpha",
            "2",
            "-D",
            p,
            "user-property",
            "zeta",
            "3",
            "-D",
            p,
            "content-type",
            "application/json",
            "-D",
            p,
            "response-topic",
            "reply/here",
            "-D",
            p,
            "correlation-data",
            "corr-42",
            "-D",
            p,
            "payload-format-indicator",
            "1",
        ],
    );
    let lines = sub.finish(&broker);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(fields[0], "props/x");
    let users = fields[1];
    let (z1, a2, z3) = (
        users.find("zeta:1"),
        users.find("alpha:2"),
        users.find("zeta:3"),
    );
    assert!(
        z1.is_some() && a2.is_some() && z3.is_some() && z1 < a2 && a2 < z3,
        "user properties in order [MQTT-3.3.2-18]: {users:?}"
    );
    assert_eq!(
        fields[2], "application/json",
        "content type [MQTT-3.3.2-20]"
    );
    assert_eq!(fields[3], "reply/here", "response topic [MQTT-3.3.2-15]");
    assert_eq!(fields[4], "corr-42", "correlation data [MQTT-3.3.2-16]");
    assert_eq!(fields[5], "1", "payload format indicator [MQTT-3.3.2-4]");
    assert_eq!(fields[6], "{\"v\":1}");
}

/// Message Expiry: a live delivery carries the interval minus the time spent in the broker
/// (at most what was sent) [MQTT-3.3.2-6]; a retained message whose interval has passed is not
/// delivered to a new subscriber [MQTT-3.3.2-5]; one that has not expired is, with a counted
/// down interval.
#[test]
fn v5_message_expiry() {
    let broker = Broker::start();
    let fmt = ["-F", "%t|%E|%p", "-q", "1", "-t", "exp/#"];
    let live = Sub::start(&broker, V5, &fmt, 1);
    let e = ["-D", "publish", "message-expiry-interval"];
    publish(
        &broker,
        V5,
        &[&["-q", "1", "-t", "exp/live", "-m", "l"], &e[..], &["100"]].concat(),
    );
    let lines = live.finish(&broker);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let parts: Vec<&str> = lines[0].split('|').collect();
    let left: u32 = parts[1].parse().expect("an expiry interval is forwarded");
    assert!(
        (98..=100).contains(&left),
        "expiry forwarded as 100 minus waiting: {left}"
    );

    // exp/long before exp/short: once exp/short has expired, exp/long is over 1 s old.
    let started = Instant::now();
    publish(
        &broker,
        V5,
        &[
            &["-q", "1", "-r", "-t", "exp/long", "-m", "g"],
            &e[..],
            &["100"],
        ]
        .concat(),
    );
    publish(
        &broker,
        V5,
        &[
            &["-q", "1", "-r", "-t", "exp/short", "-m", "s"],
            &e[..],
            &["1"],
        ]
        .concat(),
    );
    publish(
        &broker,
        V5,
        &["-q", "1", "-r", "-t", "exp/never", "-m", "n"],
    );
    // The broker logs nothing when a retained message expires: new subscribers to exp/short
    // are asked (bounded) until they no longer get it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let probe = Sub::start(
            &broker,
            V5,
            &["-F", "%t|%p", "-q", "1", "-t", "exp/short"],
            0,
        );
        let lines = probe.finish(&broker);
        if lines.is_empty() {
            break;
        }
        assert_eq!(lines, ["exp/short|s"], "retained until it expires");
        assert!(
            Instant::now() < deadline,
            "exp/short still retained 15 s after its 1 s expiry interval"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = Sub::start(&broker, V5, &fmt, 2);
    let lines = sorted(late.finish(&broker));
    assert_eq!(lines.len(), 2, "exp/short expired after 1 s: {lines:?}");
    let long: Vec<&str> = lines[0].split('|').collect();
    assert_eq!((long[0], long[2]), ("exp/long", "g"));
    let left: u64 = long[1].parse().expect("expiry on the retained copy");
    let waited = started.elapsed().as_secs();
    assert!(
        left < 100 && left >= 100 - waited - 2,
        "retained expiry counted down [MQTT-3.3.2-6]: {left} after ~{waited}s"
    );
    assert_eq!(
        lines[1], "exp/never||n",
        "no expiry interval when none was sent"
    );
}

/// Retain As Published: with it, a live delivery keeps the publisher's RETAIN 1
/// [MQTT-3.3.1-13]; without it (and at 3.1.1) RETAIN is 0 [MQTT-3.3.1-12] (3.1.1: [MQTT-3.3.1-9]).
#[test]
fn v5_retain_as_published() {
    let broker = Broker::start();
    let fmt = ["-F", "%r|%t|%p", "-q", "1", "-t", "rap/#"];
    let rap = Sub::start(
        &broker,
        V5,
        &[&fmt[..], &["--retain-as-published"]].concat(),
        2,
    );
    let plain = Sub::start(&broker, V5, &fmt, 2);
    let old = Sub::start(&broker, V311, &fmt, 2);
    publish(&broker, V5, &["-q", "1", "-r", "-t", "rap/x", "-m", "kept"]);
    publish(&broker, V5, &["-q", "1", "-t", "rap/y", "-m", "plain"]);
    assert_eq!(rap.finish(&broker), ["1|rap/x|kept", "0|rap/y|plain"]);
    assert_eq!(plain.finish(&broker), ["0|rap/x|kept", "0|rap/y|plain"]);
    assert_eq!(old.finish(&broker), ["0|rap/x|kept", "0|rap/y|plain"]);
}
