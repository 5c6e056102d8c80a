//! The same `acl_file` in Sluice and in Debian's Mosquitto 2.0 broker (`/usr/sbin/mosquitto`):
//! for each ACL file of [`FILES`] and each (user, client id, filter) probe, both brokers are
//! asked the same things by the same raw client, at MQTT 3.1.1 and 5.0, and must answer alike:
//! the SUBACK return code, which retained messages arrive on subscribing, and which live messages
//! arrive afterwards, in order. Where Sluice differs on purpose the probe says so with a
//! [`Difference`], which names the documented difference (README, "Security"); everything else
//! must be identical, and Mosquitto's own answers must be the ones the table states, so the table
//! documents what Mosquitto does as well.
//!
//! Each run: a publisher allowed to write everything publishes every topic of the file retained,
//! then the subscribers connect and subscribe (first to a private sentinel topic `done/<client
//! id>` that `pattern read done/%c` lets each of them read, then to the probe's filter), then the
//! publisher publishes every topic again (not retained) and then each subscriber's sentinel. A
//! subscriber's deliveries keep the order in which the broker accepted them, so once its sentinel
//! arrives every message it was going to get has arrived: nothing waits for a fixed time.
//! Every publish is QoS 1 and acknowledged before the next one.
//!
//! SUBACK codes: 3.1.1 [MQTT-3.8.4-5] [MQTT-3.9.3-2] (0x80 failure); 5.0 [MQTT-3.8.4-6]
//! [MQTT-3.8.4-7], §3.9.3 (0x87 Not authorized). Retained messages on subscribing: 3.1.1
//! [MQTT-3.3.1-6], 5.0 [MQTT-3.3.1-9].

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::clients::{publish_qos1, raw_ok, Opts};
use sluice_tests::codec::{Packet, Protocol, PubAck, QoS};
use sluice_tests::mosquitto::Mosquitto;
use sluice_tests::packets::{publish, subscribe};
use sluice_tests::{run_bounded, Broker, BrokerOpts, RawClient, Recv};

/// Generous: the machine is shared and loaded.
const WAIT: Duration = Duration::from_secs(20);
const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";
/// Every user's password (in one `mosquitto_passwd` file both brokers read).
const PASSWORD: &str = "pw";
/// The users of the password file; the publisher is `pub`.
const USERS: [&str; 5] = ["alice", "bob", "carol", "d+", "pub"];

/// Why Sluice answers a probe differently from Mosquitto 2.0's `acl_file`, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Difference {
    /// Sluice checks SUBSCRIBE: a filter none of whose topics the client may read is refused
    /// (3.1.1 0x80, 5.0 0x87). Mosquitto 2.0's `acl_file` grants every SUBSCRIBE and checks only
    /// deliveries, so it grants and then delivers nothing: the test checks that it delivers
    /// nothing indeed.
    NoReadableTopic,
    /// A shared subscription (`$share/g/...`) is granted by Sluice only if every topic of its
    /// filter is readable (one read rule covers it and no deny rule meets it), because a message
    /// in the group's queue goes to whichever member frees a slot first.
    SharedNeedsEveryTopic,
    /// In Sluice a `deny` pattern also applies to a user with a section of its own; Mosquitto
    /// looks at patterns only when the user's own `topic` lines decide nothing, so the user's
    /// `topic readwrite #` wins over `pattern deny %u/private` there.
    DenyPatternOverUserRule,
    /// A username (or client id) containing `+` or `#`: Sluice skips only the patterns that
    /// substitute it (`%u`, or `%c`), so `pattern read devices/%c/#` still grants a client with
    /// username `d+` its own devices; Mosquitto refuses all that patterns would grant it.
    UnfitNameInPatterns,
}

/// What a broker does with one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// Granted (return code 1: every probe subscribes at QoS 1 and both brokers grant QoS 1).
    granted: bool,
    /// Live messages delivered, in publish order (the retained ones on subscribe are these same
    /// topics, in any order, unless the subscription is shared: see [`Probe::expected`]).
    delivered: &'static [&'static str],
}

/// One subscriber: who, and the filter it subscribes to.
#[derive(Debug)]
struct Probe {
    /// `None`: anonymous (no username).
    user: Option<&'static str>,
    /// Unique in its file; the `%c` of the ACL's patterns.
    client_id: &'static str,
    filter: &'static str,
    /// What Mosquitto does.
    mosquitto: Outcome,
    /// What Sluice does instead, and why; `None`: the same as Mosquitto.
    sluice: Option<(Outcome, Difference)>,
}

/// An ACL file, the topics published (each retained first, then live), and the probes.
struct File {
    name: &'static str,
    acl: &'static str,
    topics: &'static [&'static str],
    probes: &'static [Probe],
}

const fn same(
    user: Option<&'static str>,
    client_id: &'static str,
    filter: &'static str,
    delivered: &'static [&'static str],
) -> Probe {
    Probe {
        user,
        client_id,
        filter,
        mosquitto: Outcome {
            granted: true,
            delivered,
        },
        sluice: None,
    }
}

/// Refused by Sluice (no readable topic), granted by Mosquitto, delivered by neither.
const fn refused_by_sluice(
    user: Option<&'static str>,
    client_id: &'static str,
    filter: &'static str,
) -> Probe {
    differs(
        user,
        client_id,
        filter,
        &[],
        Outcome {
            granted: false,
            delivered: &[],
        },
        Difference::NoReadableTopic,
    )
}

const fn differs(
    user: Option<&'static str>,
    client_id: &'static str,
    filter: &'static str,
    mosquitto_delivers: &'static [&'static str],
    sluice: Outcome,
    why: Difference,
) -> Probe {
    Probe {
        user,
        client_id,
        filter,
        mosquitto: Outcome {
            granted: true,
            delivered: mosquitto_delivers,
        },
        sluice: Some((sluice, why)),
    }
}

const ANON: Option<&str> = None;
const ALICE: Option<&str> = Some("alice");
const BOB: Option<&str> = Some("bob");
/// A user with no section of its own: only the patterns apply.
const CAROL: Option<&str> = Some("carol");
/// A username that `%u` must never substitute (it contains a wildcard).
const DPLUS: Option<&str> = Some("d+");

/// The publisher's section and the sentinel pattern, appended to every file.
const COMMON: &str = "\
user pub
topic write #
topic write $app/#
pattern read done/%c
";

const FILES: &[File] = &[
    File {
        name: "the issue's file",
        acl: "topic deny test/nosubscribe\ntopic readwrite #\n",
        topics: &[
            "TopicA/B",
            "test/nosubscribe",
            "test",
            "test/other",
            "x/nosubscribe",
            "deep/a/b/c",
            "$app/x",
        ],
        probes: &[
            same(
                ANON,
                "anon-all",
                "#",
                &[
                    "TopicA/B",
                    "test",
                    "test/other",
                    "x/nosubscribe",
                    "deep/a/b/c",
                ],
            ),
            same(
                ANON,
                "anon-two",
                "+/+",
                &["TopicA/B", "test/other", "x/nosubscribe"],
            ),
            same(ANON, "anon-test", "test/#", &["test", "test/other"]),
            same(ANON, "anon-nosub", "+/nosubscribe", &["x/nosubscribe"]),
            same(ANON, "anon-topica", "TopicA/#", &["TopicA/B"]),
            refused_by_sluice(ANON, "anon-denied", "test/nosubscribe"),
            // [MQTT-4.7.2-1]: `readwrite #` does not reach `$` topics.
            refused_by_sluice(ANON, "anon-dollar", "$app/#"),
            differs(
                ANON,
                "anon-shared",
                "$share/g/#",
                &[
                    "TopicA/B",
                    "test",
                    "test/other",
                    "x/nosubscribe",
                    "deep/a/b/c",
                ],
                Outcome {
                    granted: false,
                    delivered: &[],
                },
                Difference::SharedNeedsEveryTopic,
            ),
            same(ANON, "anon-shared-a", "$share/g/TopicA/#", &["TopicA/B"]),
        ],
    },
    File {
        name: "users, anonymous rules and %c/%u patterns",
        acl: "\
topic read public/#
topic read $app/+

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read shared/+

user bob
topic read inbox/bob
topic write nothing/#

# Mosquitto would refuse d+ the sentinel granted by a pattern: a section grants it here.
user d+
topic read done/#

pattern read devices/%c/#
pattern deny devices/%c/private
pattern read users/%u/#
",
        topics: &[
            "public/news",
            "alice/x",
            "alice/secret/y",
            "shared/a",
            "shared/a/b",
            "inbox/bob",
            "devices/dev1/status",
            "devices/dev1/private",
            "devices/dev2/status",
            "devices/dplus1/status",
            "users/alice/inbox",
            "users/bob/inbox",
            "$app/x",
        ],
        probes: &[
            same(ANON, "anon1", "#", &["public/news"]),
            same(ANON, "anon2", "$app/#", &["$app/x"]),
            // Granted for public/x, which nobody publishes.
            same(ANON, "anon3", "+/x", &[]),
            refused_by_sluice(ANON, "anon4", "alice/#"),
            // `%u` patterns never apply to anonymous clients.
            refused_by_sluice(ANON, "anon5", "users/#"),
            same(ANON, "dev1", "devices/+/+", &["devices/dev1/status"]),
            same(ANON, "dev1b", "devices/#", &[]),
            refused_by_sluice(ANON, "dev1c", "devices/dev1c/private"),
            same(
                ALICE,
                "alice1",
                "#",
                &["alice/x", "shared/a", "users/alice/inbox"],
            ),
            same(ALICE, "alice2", "+/+", &["alice/x", "shared/a"]),
            refused_by_sluice(ALICE, "alice3", "alice/secret/#"),
            // The anonymous section is not alice's.
            refused_by_sluice(ALICE, "alice4", "public/#"),
            same(BOB, "bob1", "inbox/#", &["inbox/bob"]),
            // Write access does not allow reading.
            refused_by_sluice(BOB, "bob2", "nothing/#"),
            // Only patterns apply to carol: granted (users/carol/... is readable), and nothing
            // of what is published is hers.
            same(CAROL, "carol1", "#", &[]),
            same(CAROL, "carol2", "users/+/inbox", &[]),
            refused_by_sluice(CAROL, "carol3", "public/#"),
            differs(
                DPLUS,
                "dplus1",
                "devices/dplus1/#",
                &[],
                Outcome {
                    granted: true,
                    delivered: &["devices/dplus1/status"],
                },
                Difference::UnfitNameInPatterns,
            ),
            // `%u` never substitutes `d+`.
            refused_by_sluice(DPLUS, "dplus2", "users/#"),
        ],
    },
    File {
        name: "deny patterns next to a user's own rules",
        acl: "user alice\ntopic readwrite #\n\npattern deny %u/private\n",
        topics: &["alice/public", "alice/private"],
        probes: &[
            differs(
                ALICE,
                "alice1",
                "#",
                &["alice/public", "alice/private"],
                Outcome {
                    granted: true,
                    delivered: &["alice/public"],
                },
                Difference::DenyPatternOverUserRule,
            ),
            differs(
                ALICE,
                "alice2",
                "alice/private",
                &["alice/private"],
                Outcome {
                    granted: false,
                    delivered: &[],
                },
                Difference::DenyPatternOverUserRule,
            ),
            // No anonymous section: only the patterns, which grant done/anon1 (the sentinel).
            same(ANON, "anon1", "#", &[]),
            refused_by_sluice(ANON, "anon2", "alice/#"),
        ],
    },
];

/// Which broker an expectation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Mosquitto,
    Sluice,
}

impl Probe {
    /// What `side` must show for this probe, given the table's `outcome` for it: the SUBACK code,
    /// the retained messages on subscribing (sorted) and the live ones in publish order.
    ///
    /// Retained messages are the same topics as the live ones (the same read check applies),
    /// except for one difference that is not about the ACL: Sluice sends no retained messages
    /// for a shared subscription (5.0 §4.8.2; at 3.1.1 too), and Mosquitto 2.0.11 does.
    fn expected(&self, outcome: &Outcome, protocol: Protocol, side: Side) -> Observed {
        let refused = if protocol == Protocol::V5 { 0x87 } else { 0x80 };
        let shared = self.filter.starts_with("$share/");
        let mut retained: Vec<String> = if shared && side == Side::Sluice {
            Vec::new()
        } else {
            outcome.delivered.iter().map(|t| t.to_string()).collect()
        };
        retained.sort();
        Observed {
            code: if outcome.granted { 1 } else { refused },
            retained,
            live: outcome.delivered.iter().map(|t| t.to_string()).collect(),
        }
    }
}

/// What a subscriber saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    /// The SUBACK return / reason code for the probe's filter.
    code: u8,
    /// Messages delivered with RETAIN 1 (the retained ones sent on subscribing), sorted.
    retained: Vec<String>,
    /// Messages delivered with RETAIN 0, in arrival order.
    live: Vec<String>,
}

/// A connected (CONNACK 0) raw client, with the test password if it has a username.
async fn connect(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
    user: Option<&str>,
) -> RawClient {
    let o = match user {
        Some(u) => Opts::default().user(u, Some(PASSWORD)),
        None => Opts::default(),
    };
    raw_ok(addr, protocol, client_id, &o).await
}

/// A subscriber and what it has received so far.
struct Subscriber {
    client: RawClient,
    /// (RETAIN flag, topic) of every PUBLISH so far, in arrival order.
    got: Vec<(bool, String)>,
}

impl Subscriber {
    /// Reads one packet (bounded by `deadline`): a PUBLISH is recorded and acknowledged (None),
    /// anything else is returned.
    async fn pump(&mut self, deadline: Instant, what: &str) -> Option<Packet> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.client.recv(left).await.unwrap() {
            Recv::Packet(p) => match *p {
                Packet::Publish(p) => {
                    if p.qos != QoS::AtMostOnce {
                        let ack = Packet::PubAck(PubAck::new(p.pkid));
                        self.client.send(&ack).await.unwrap();
                    }
                    self.got.push((p.retain, p.topic.as_str().to_owned()));
                    None
                }
                other => Some(other),
            },
            other => panic!(
                "{what}: waiting for a packet, got {other:?}; saw {:?}",
                self.got
            ),
        }
    }

    /// The next packet that is not a PUBLISH (each PUBLISH before it is recorded).
    async fn next_other(&mut self, what: &str) -> Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(p) = self.pump(deadline, what).await {
                return p;
            }
        }
    }

    /// Subscribes to one filter at QoS 1; returns the SUBACK code.
    async fn subscribe(&mut self, pkid: u16, filter: &str) -> u8 {
        self.client
            .send(&subscribe(pkid, filter, QoS::AtLeastOnce))
            .await
            .unwrap();
        match self.next_other(filter).await {
            Packet::SubAck(a) if a.pkid == pkid && a.reasons.len() == 1 => a.reasons[0].0,
            other => panic!("{filter}: expected a SUBACK for {pkid}, got {other:?}"),
        }
    }

    /// Reads until the PUBLISH on `sentinel`; returns what came before it, sentinels left out.
    async fn until(&mut self, sentinel: &str, code: u8) -> Observed {
        let deadline = Instant::now() + WAIT;
        while !self.got.iter().any(|(_, t)| t == sentinel) {
            if let Some(p) = self.pump(deadline, sentinel).await {
                panic!("{sentinel}: unexpected {p:?}");
            }
        }
        let end = self.got.iter().position(|(_, t)| t == sentinel).unwrap();
        let seen = &self.got[..end];
        let keep = |(_, t): &&(bool, String)| !t.starts_with("done/");
        let mut retained: Vec<String> = seen
            .iter()
            .filter(keep)
            .filter(|(r, _)| *r)
            .map(|(_, t)| t.clone())
            .collect();
        retained.sort();
        Observed {
            code,
            retained,
            live: seen
                .iter()
                .filter(keep)
                .filter(|(r, _)| !*r)
                .map(|(_, t)| t.clone())
                .collect(),
        }
    }
}

/// Publishes at QoS 1 and waits for the PUBACK, which must not refuse it (5.0 may say 0x10, no
/// matching subscribers).
async fn publish_acked(publisher: &mut RawClient, pkid: u16, topic: &str, retain: bool) {
    let mut p = publish(topic, QoS::AtLeastOnce, pkid, "m");
    p.retain = retain;
    let ack = publish_qos1(publisher, p).await;
    assert!(ack.reason.0 < 0x80, "publish {topic}: refused {ack:?}");
}

/// Runs every probe of `file` against the broker at `addr`; one [`Observed`] per probe.
async fn observe(addr: SocketAddr, protocol: Protocol, file: &File) -> Vec<Observed> {
    let mut publisher = connect(addr, protocol, "publisher", Some("pub")).await;
    let mut pkid = 0;
    let mut next = || {
        pkid += 1;
        pkid
    };
    for topic in file.topics {
        publish_acked(&mut publisher, next(), topic, true).await;
    }
    let mut subs = Vec::new();
    for probe in file.probes {
        let mut s = Subscriber {
            client: connect(addr, protocol, probe.client_id, probe.user).await,
            got: Vec::new(),
        };
        let sentinel = format!("done/{}", probe.client_id);
        assert_eq!(s.subscribe(1, &sentinel).await, 1, "{sentinel}");
        let code = s.subscribe(2, probe.filter).await;
        subs.push((s, sentinel, code));
    }
    for topic in file.topics {
        publish_acked(&mut publisher, next(), topic, false).await;
    }
    for (_, sentinel, _) in &subs {
        publish_acked(&mut publisher, next(), sentinel, false).await;
    }
    let mut out = Vec::new();
    for (mut s, sentinel, code) in subs {
        out.push(s.until(&sentinel, code).await);
    }
    out
}

/// Writes the password file with `mosquitto_passwd -b` (one call per user).
fn password_file(path: &Path) {
    for (i, user) in USERS.iter().enumerate() {
        let mut cmd = Command::new(MOSQUITTO_PASSWD);
        if i == 0 {
            cmd.arg("-c");
        }
        cmd.arg("-b").arg(path).args([user, PASSWORD]);
        let out = run_bounded(cmd, WAIT).unwrap();
        assert!(out.status.success(), "mosquitto_passwd: {out:?}");
    }
}

#[test]
fn acl_decisions_match_mosquitto_except_the_named_differences() {
    // Installed by scripts/install-test-deps.sh (as .ci/run does first): never skipped, a
    // skip would hide a broken install step.
    assert!(
        Path::new(MOSQUITTO_PASSWD).exists(),
        "{MOSQUITTO_PASSWD} is not installed: run scripts/install-test-deps.sh (Debian package mosquitto)"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    password_file(&passwd);
    let passwd_text = std::fs::read_to_string(&passwd).unwrap();
    let mut failures = Vec::new();
    let mut compared = 0;
    for file in FILES {
        let acl_text = format!("{}\n{COMMON}", file.acl);
        let acl = dir.path().join("acl");
        std::fs::write(&acl, &acl_text).unwrap();
        for protocol in [Protocol::V311, Protocol::V5] {
            let mosquitto = Mosquitto::start(
                dir.path(),
                &format!(
                    "acl_file {}\npassword_file {}\npersistence false",
                    acl.display(),
                    passwd.display()
                ),
            );
            let sluice = Broker::start_with(BrokerOpts {
                config: "[auth]\nacl_file = \"acl\"\npassword_file = \"passwd\"\n\
                         allow_anonymous = true\n"
                    .into(),
                files: vec![
                    ("acl".into(), acl_text.clone()),
                    ("passwd".into(), passwd_text.clone()),
                ],
                ..Default::default()
            })
            .expect("start sluice");
            let from_mosquitto = rt.block_on(observe(mosquitto.addr, protocol, file));
            let from_sluice = rt.block_on(observe(sluice.addr, protocol, file));
            drop(mosquitto);
            drop(sluice);
            for ((probe, m), s) in file.probes.iter().zip(from_mosquitto).zip(from_sluice) {
                compared += 1;
                let case = format!(
                    "{} / {protocol:?} / {:?} as {:?} ({})",
                    file.name, probe.filter, probe.user, probe.client_id
                );
                let want_m = probe.expected(&probe.mosquitto, protocol, Side::Mosquitto);
                if m != want_m {
                    failures.push(format!(
                        "{case}: Mosquitto did {m:?}, the table says {want_m:?}"
                    ));
                }
                let (outcome, why) = match &probe.sluice {
                    None => (&probe.mosquitto, None),
                    Some((outcome, why)) => (outcome, Some(*why)),
                };
                let want_s = probe.expected(outcome, protocol, Side::Sluice);
                if s != want_s {
                    failures.push(format!(
                        "{case}: Sluice did {s:?}, expected {want_s:?} (Mosquitto did {m:?}; \
                         documented difference: {why:?})"
                    ));
                }
                match why {
                    Some(why) if outcome == &probe.mosquitto => failures.push(format!(
                        "{case}: the table names difference {why:?} but gives the same outcome"
                    )),
                    Some(Difference::NoReadableTopic) if !m.live.is_empty() => {
                        failures.push(format!(
                            "{case}: refused as unreadable, but Mosquitto delivered {:?}",
                            m.live
                        ))
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} comparisons failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
