//! Cluster mode (`[cluster]`, issue 15 part 2): three Sluice nodes on NATS JetStream act as one
//! broker. Real `nats-server -js` processes (Debian's package) on free loopback ports, the real
//! `sluice` binary, raw MQTT 5.0 clients.
//!
//! A subscription reaches NATS a moment after its SUBACK (the node's cluster task subscribes
//! in NATS), so each test first waits until a probe message crosses the nodes (`until_routed`)
//! and only then counts; nothing here sleeps for a fixed time.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_tests::clients::{
    connected, disconnect_reasons, expect_closed, raw_ok_ack, raw_publish, raw_subscribe, Opts,
};
use sluice_tests::codec::{
    Packet, Protocol, PubAck, Publish, QoS, Subscribe, SubscribeProperties, Subscription,
    SubscriptionOptions, TopicFilter,
};
use sluice_tests::nats::{start_node, NatsCluster, NatsServer};
use sluice_tests::{packets, Broker, RawClient, Recv};

/// Longest wait for anything that has to cross NATS (a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(60);

/// Acknowledges `p` if it needs it (QoS 1; the tests publish nothing at QoS 2).
async fn ack(c: &mut RawClient, p: &Publish) -> Result<()> {
    if p.qos == QoS::AtLeastOnce {
        c.send(&Packet::PubAck(PubAck::new(p.pkid))).await?;
    }
    Ok(())
}

/// The next PUBLISH within `wait` (acknowledged), None on silence. Other packets are errors.
async fn next_publish(c: &mut RawClient, wait: Duration) -> Result<Option<Publish>> {
    match c.recv(wait).await? {
        Recv::Packet(p) => match *p {
            Packet::Publish(p) => {
                ack(c, &p).await?;
                Ok(Some(p))
            }
            other => bail!("expected PUBLISH, got {other:?}"),
        },
        Recv::Timeout => Ok(None),
        Recv::Closed => bail!("connection closed"),
    }
}

fn payload(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Publishes QoS 0 probes `warm-N` to `topic` through `publisher` until every one of `subs`
/// has received one (subscriptions made on other nodes are then known to NATS).
async fn until_routed(
    publisher: &mut RawClient,
    topic: &str,
    subs: &mut [&mut RawClient],
) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = vec![false; subs.len()];
    let mut n = 0u32;
    while got.iter().any(|g| !g) {
        if Instant::now() >= deadline {
            bail!("probes on {topic} did not reach subscribers {got:?} within {DEADLINE:?}");
        }
        n += 1;
        raw_publish(
            publisher,
            topic,
            QoS::AtMostOnce,
            0,
            format!("warm-{n}").as_bytes(),
        )
        .await;
        for (i, s) in subs.iter_mut().enumerate() {
            while let Some(p) = next_publish(s, Duration::from_millis(100)).await? {
                got[i] |= payload(&p).starts_with("warm-");
            }
        }
    }
    Ok(())
}

/// Reads until the PUBLISH with payload `end`; returns the payloads starting with `prefix`
/// seen before it.
async fn collect_until(c: &mut RawClient, prefix: &str, end: &str) -> Result<Vec<String>> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = next_publish(c, left).await? else {
            bail!("no {end:?} within {DEADLINE:?}; seen {seen:?}");
        };
        let text = payload(&p);
        if text == end {
            return Ok(seen);
        }
        if text.starts_with(prefix) {
            seen.push(text);
        }
    }
}

/// Publishes one QoS 1 message and waits for its PUBACK. In cluster mode a PUBACK waits until
/// the stream `sluice_messages` has the message: after a NATS server died that includes
/// JetStream electing the stream's new leader, so the wait is [`DEADLINE`], not a few seconds.
async fn publish_acked(c: &mut RawClient, topic: &str, pkid: u16, payload: &[u8]) -> Result<()> {
    c.send(&sluice_tests::clients::publish_packet(
        topic,
        QoS::AtLeastOnce,
        pkid,
        payload,
    ))
    .await?;
    match c.recv(DEADLINE).await? {
        Recv::Packet(p) => match *p {
            Packet::PubAck(a) if a.pkid == pkid => Ok(()),
            other => bail!("expected PUBACK {pkid}, got {other:?}"),
        },
        other => bail!("no PUBACK {pkid} within {DEADLINE:?}: {other:?}"),
    }
}

/// Publishes QoS 1 `{prefix}{i}` for i in 0..n, then `end`, each acknowledged.
async fn publish_numbered(c: &mut RawClient, topic: &str, prefix: &str, n: u16, end: &str) {
    for i in 0..n {
        publish_acked(c, topic, i + 1, format!("{prefix}{i}").as_bytes())
            .await
            .unwrap();
    }
    publish_acked(c, topic, n + 1, end.as_bytes())
        .await
        .unwrap();
}

fn expected(prefix: &str, n: u16) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_one_node_reaches_every_node_once() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes: Vec<Broker> = (1..=3)
        .map(|n| start_node(&nats.url, n))
        .collect::<Result<_>>()?;
    let mut local = connected(nodes[0].addr, Protocol::V5, "local").await;
    raw_subscribe(&mut local, 1, "route/#", QoS::AtLeastOnce).await;
    // Two overlapping filters on node 2: two NATS subscriptions, one copy [MQTT-3.3.4-2].
    let mut sub2 = connected(nodes[1].addr, Protocol::V5, "sub2").await;
    raw_subscribe(&mut sub2, 1, "route/#", QoS::AtLeastOnce).await;
    raw_subscribe(&mut sub2, 2, "route/+", QoS::AtLeastOnce).await;
    // A subscriber on node 3 to something else gets none of it. (Subscribed before `sub3`:
    // node 3 sends its NATS subscriptions in order, so once `sub3` gets messages, this one's
    // subscription is in NATS too.)
    let mut other = connected(nodes[2].addr, Protocol::V5, "other").await;
    raw_subscribe(&mut other, 1, "elsewhere/#", QoS::AtLeastOnce).await;
    let mut sub3 = connected(nodes[2].addr, Protocol::V5, "sub3").await;
    raw_subscribe(&mut sub3, 1, "route/a", QoS::AtLeastOnce).await;

    let mut publisher = connected(nodes[0].addr, Protocol::V5, "pub").await;
    until_routed(&mut publisher, "route/a", &mut [&mut sub2, &mut sub3]).await?;
    publish_numbered(&mut publisher, "route/a", "n-", 50, "end").await;
    for (name, c) in [
        ("node 1", &mut local),
        ("node 2", &mut sub2),
        ("node 3", &mut sub3),
    ] {
        let got = collect_until(c, "n-", "end").await?;
        assert_eq!(
            got,
            expected("n-", 50),
            "{name}: each message once, in order"
        );
    }
    // Routing back: node 3 publishes, node 1's subscriber and node 2's get it once.
    let mut publisher3 = connected(nodes[2].addr, Protocol::V5, "pub3").await;
    until_routed(&mut publisher3, "route/b", &mut [&mut local, &mut sub2]).await?;
    publish_numbered(&mut publisher3, "route/b", "m-", 20, "end3").await;
    for (name, c) in [("node 1", &mut local), ("node 2", &mut sub2)] {
        let got = collect_until(c, "m-", "end3").await?;
        assert_eq!(got, expected("m-", 20), "{name}");
    }
    // Messages for `elsewhere/#` only: `other` saw nothing of the route/ traffic before them.
    raw_publish(
        &mut publisher,
        "elsewhere/x",
        QoS::AtLeastOnce,
        1,
        b"end-other",
    )
    .await;
    let seen = collect_until(&mut other, "", "end-other").await?;
    assert!(
        seen.is_empty(),
        "node 3's elsewhere/# subscriber got {seen:?}"
    );
    // Interest: node 3 asked NATS only for its filters' subjects.
    let subscribed: Vec<String> = nodes[2]
        .log()
        .into_iter()
        .filter(|l| l.contains("cluster: subscribed"))
        .collect();
    assert_eq!(subscribed.len(), 2, "{subscribed:#?}");
    Ok(())
}

/// SUBSCRIBE to `filter` and `probe` in one packet; returns the retained messages of `filter`
/// (those before the retained message of `probe`, which the node holds locally: the retained
/// messages of one SUBSCRIBE are queued in filter order).
async fn retained_snapshot(
    addr: SocketAddr,
    filter: &str,
    probe: &str,
) -> Result<Vec<(String, String)>> {
    let mut c = connected(addr, Protocol::V5, "snapshot").await;
    let sub = |f: &str| Subscription {
        filter: TopicFilter::try_from(f).unwrap(),
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        },
    };
    c.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![sub(filter), sub(probe)],
        rejected: vec![],
        properties: SubscribeProperties::default(),
    }))
    .await?;
    let mut seen = Vec::new();
    loop {
        match c.expect_packet(DEADLINE).await? {
            Packet::SubAck(_) => {}
            Packet::Publish(p) => {
                ack(&mut c, &p).await?;
                if p.topic.as_str() == probe {
                    return Ok(seen);
                }
                seen.push((p.topic.as_str().to_owned(), payload(&p)));
            }
            other => bail!("unexpected {other:?}"),
        }
    }
}

/// Waits until a new subscriber on `addr` sees the retained set of `filter` satisfy `ok`.
async fn until_retained(
    addr: SocketAddr,
    filter: &str,
    probe: &str,
    ok: impl Fn(&[(String, String)]) -> bool,
) -> Result<Vec<(String, String)>> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = retained_snapshot(addr, filter, probe).await?;
        if ok(&seen) {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            bail!("retained messages of {filter} on {addr} still {seen:?} after {DEADLINE:?}");
        }
    }
}

async fn publish_retained(addr: SocketAddr, topic: &str, payload: &[u8]) -> Result<()> {
    let mut c = connected(addr, Protocol::V5, "retainer").await;
    let mut p = packets::publish(topic, QoS::AtLeastOnce, 1, payload);
    p.retain = true;
    c.send(&Packet::Publish(p)).await?;
    match c.expect_packet(DEADLINE).await? {
        Packet::PubAck(a) if a.pkid == 1 => Ok(()),
        other => bail!("expected PUBACK, got {other:?}"),
    }
}

/// Publishes a retained QoS 0 message (no PUBACK to wait for) and disconnects normally (so
/// the node has routed it before the connection ends).
async fn publish_retained_qos0(addr: SocketAddr, topic: &str, payload: &[u8]) -> Result<()> {
    let mut c = connected(addr, Protocol::V5, "retainer0").await;
    let mut p = packets::publish(topic, QoS::AtMostOnce, 0, payload);
    p.retain = true;
    c.send(&Packet::Publish(p)).await?;
    c.send(&sluice_tests::clients::disconnect_packet(
        sluice_tests::codec::ReasonCode::SUCCESS,
        None,
    ))
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_visible_from_every_node() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes: Vec<Broker> = (1..=3)
        .map(|n| start_node(&nats.url, n))
        .collect::<Result<_>>()?;
    publish_retained(nodes[2].addr, "probe/3", b"p").await?;
    publish_retained(nodes[0].addr, "ret/x", b"keep").await?;
    // A new subscriber on node 3 gets the message retained through node 1.
    until_retained(nodes[2].addr, "ret/#", "probe/3", |s| {
        s.contains(&("ret/x".into(), "keep".into()))
    })
    .await?;
    // Cleared through node 2 (empty payload [MQTT-3.3.1-6]), then another one set: once node
    // 3 has the second, it has applied the clearing (the bucket's order) and ret/x is gone.
    publish_retained(nodes[1].addr, "ret/x", b"").await?;
    publish_retained(nodes[1].addr, "ret/z", b"z").await?;
    let seen = until_retained(nodes[2].addr, "ret/#", "probe/3", |s| {
        s.iter().any(|(t, _)| t == "ret/z")
    })
    .await?;
    assert_eq!(seen, vec![("ret/z".to_owned(), "z".to_owned())]);
    // A node started later gets the bucket's contents at start.
    let late = start_node(&nats.url, 4)?;
    publish_retained(late.addr, "probe/4", b"p").await?;
    let seen = until_retained(late.addr, "ret/#", "probe/4", |s| !s.is_empty()).await?;
    assert_eq!(seen, vec![("ret/z".to_owned(), "z".to_owned())]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_across_nodes_gets_each_message_once() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes: Vec<Broker> = (1..=3)
        .map(|n| start_node(&nats.url, n))
        .collect::<Result<_>>()?;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = connected(node.addr, Protocol::V5, &format!("member{}", i + 1)).await;
        raw_subscribe(&mut c, 1, "$share/work/jobs/#", QoS::AtLeastOnce).await;
        node.wait_log("cluster: subscribed filter=$share/work/jobs/#", DEADLINE)?;
        members.push(c);
    }
    let mut publisher = connected(nodes[0].addr, Protocol::V5, "pub").await;
    let n = 60u16;
    for i in 0..n {
        raw_publish(
            &mut publisher,
            "jobs/x",
            QoS::AtLeastOnce,
            i + 1,
            format!("j-{i}").as_bytes(),
        )
        .await;
    }
    let deadline = Instant::now() + DEADLINE;
    let mut per_member: HashMap<usize, usize> = HashMap::new();
    let mut seen = HashSet::new();
    while seen.len() < usize::from(n) {
        if Instant::now() >= deadline {
            bail!(
                "{} of {n} shared messages arrived within {DEADLINE:?}",
                seen.len()
            );
        }
        for (i, m) in members.iter_mut().enumerate() {
            while let Some(p) = next_publish(m, Duration::from_millis(50)).await? {
                let text = payload(&p);
                assert!(
                    seen.insert(text.clone()),
                    "{text} delivered twice in the group"
                );
                *per_member.entry(i).or_default() += 1;
            }
        }
    }
    assert_eq!(seen.len(), usize::from(n));
    // NATS spreads the messages over the nodes' queue subscriptions (chance of all 60 on one
    // node: 3 x (1/3)^60).
    assert!(per_member.len() >= 2, "all on one member: {per_member:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_routing_when_one_nats_server_dies() -> Result<()> {
    let mut nats = NatsCluster::start()?;
    let nodes: Vec<Broker> = (0..3)
        .map(|i| start_node(&nats.servers[i].url.clone(), i + 1))
        .collect::<Result<_>>()?;
    for node in &nodes {
        let joined = node.wait_log("cluster: joined", DEADLINE)?;
        assert!(joined.contains("retained_replicas=3"), "{joined}");
    }
    let mut sub2 = connected(nodes[1].addr, Protocol::V5, "sub2").await;
    raw_subscribe(&mut sub2, 1, "fail/#", QoS::AtLeastOnce).await;
    let mut sub3 = connected(nodes[2].addr, Protocol::V5, "sub3").await;
    raw_subscribe(&mut sub3, 1, "fail/#", QoS::AtLeastOnce).await;
    let mut publisher = connected(nodes[0].addr, Protocol::V5, "pub").await;
    until_routed(&mut publisher, "fail/a", &mut [&mut sub2, &mut sub3]).await?;

    // NATS server 2 (node 2's) dies; node 2 reconnects to another one of the cluster.
    let from = nodes[1].log_len();
    nats.servers[1].kill9()?;
    nodes[1].wait_log_from(from, "cluster: NATS disconnected", DEADLINE)?;
    for role in ["routing", "shared"] {
        let line = format!("cluster: NATS connected node=sluice-2 role=\"{role}\"");
        nodes[1]
            .wait_log_from(from, &line, DEADLINE)
            .context("node 2 reconnects to a surviving NATS server")?;
    }

    until_routed(&mut publisher, "fail/b", &mut [&mut sub2, &mut sub3]).await?;
    publish_numbered(&mut publisher, "fail/c", "f-", 20, "fend").await;
    for (name, c) in [("node 2", &mut sub2), ("node 3", &mut sub3)] {
        assert_eq!(
            collect_until(c, "f-", "fend").await?,
            expected("f-", 20),
            "{name}"
        );
    }
    // Node 2 publishes again after its failover; node 3 gets it.
    let mut publisher2 = connected(nodes[1].addr, Protocol::V5, "pub2").await;
    until_routed(&mut publisher2, "fail/d", &mut [&mut sub3]).await?;
    // The retained bucket (3 replicas, 2 alive) still takes and serves writes.
    publish_retained(nodes[1].addr, "probe/1", b"p").await?;
    publish_retained(nodes[2].addr, "fail/r", b"after").await?;
    until_retained(nodes[1].addr, "fail/r", "probe/1", |s| {
        s.contains(&("fail/r".into(), "after".into()))
    })
    .await?;
    Ok(())
}

/// A retained message published while the bucket cannot take writes (two of the three NATS
/// servers down, the bucket's stream leader among them: no leader, no majority) reaches the
/// other nodes once JetStream is back: the node keeps trying the write instead of dropping it,
/// and the other nodes' bucket watches resume after their NATS reconnects. No fixed waits: the
/// server comes back only once the node has logged that the write failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_write_is_retried_until_jetstream_is_back() -> Result<()> {
    let mut nats = NatsCluster::start()?;
    let nodes: Vec<Broker> = (0..3)
        .map(|i| start_node(&nats.servers[i].url.clone(), i + 1))
        .collect::<Result<_>>()?;
    for node in &nodes {
        let joined = node.wait_log("cluster: joined", DEADLINE)?;
        assert!(joined.contains("retained_replicas=3"), "{joined}");
    }
    // Kill the bucket's stream leader and one other server; node `kept` (on the third) writes.
    // With the leader gone nobody answers the write (it is never half-stored and committed
    // later), and the one server left cannot elect a new leader alone.
    let leader = nats.stream_leader("KV_sluice_retained", DEADLINE)?;
    let other = (leader + 1) % 3;
    let kept = (leader + 2) % 3;
    // Node `leader`'s own probe (its retained store has it without the bucket).
    publish_retained(nodes[leader].addr, "probe/1", b"p").await?;
    nats.servers[leader].kill9()?;
    nats.servers[other].kill9()?;
    let from = nodes[kept].log_len();
    // QoS 0: a QoS 1 PUBLISH is not acknowledged while the stream `sluice_messages` has no
    // majority either (README, "What is promised").
    publish_retained_qos0(nodes[kept].addr, "quorum/r", b"kept").await?;
    nodes[kept]
        .wait_log_from(from, "retained message not written to the bucket", DEADLINE)
        .context("the write fails while the bucket has no leader")?;

    // The old leader's server comes back: two of three, a leader is elected, writes go on.
    nats.servers[leader].restart()?;
    until_retained(nodes[leader].addr, "quorum/#", "probe/1", |s| {
        s.contains(&("quorum/r".into(), "kept".into()))
    })
    .await
    .context("the node of the restarted server gets the retained message")?;
    Ok(())
}

/// The same client id connecting to another node closes its connection on the first one, as
/// a local takeover does (5.0: DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3]), and its
/// persistent session moves along (Session Present 1, README "Cluster"), and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_another_node_takes_the_connection_over() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes: Vec<Broker> = (1..=2)
        .map(|n| start_node(&nats.url, n))
        .collect::<Result<_>>()?;
    let persistent = Opts::persistent(300);
    let (mut first, _) = raw_ok_ack(nodes[0].addr, Protocol::V5, "roamer", &persistent).await;
    raw_subscribe(&mut first, 1, "roam/#", QoS::AtLeastOnce).await;
    let (mut second, ack) = raw_ok_ack(nodes[1].addr, Protocol::V5, "roamer", &persistent).await;
    assert!(ack.session_present, "the session moved to node 2");
    let seen = expect_closed(&mut first).await;
    assert_eq!(disconnect_reasons(&seen), vec![0x8E], "{seen:?}");
    nodes[0].wait_log("cluster: client connected to another node", DEADLINE)?;
    // Back on node 1: the session moves back, and node 2's connection is closed.
    let (mut third, ack) = raw_ok_ack(nodes[0].addr, Protocol::V5, "roamer", &persistent).await;
    assert!(ack.session_present, "the session moved back to node 1");
    let seen = expect_closed(&mut second).await;
    assert_eq!(disconnect_reasons(&seen), vec![0x8E], "{seen:?}");
    raw_subscribe(&mut third, 2, "roam/x", QoS::AtLeastOnce).await;
    Ok(())
}

/// A persistent QoS 1 subscriber on node 2 goes away (DISCONNECT, then waits until node 2 has
/// recorded its session as offline in the bucket `sluice_sessions`); `kill_owner`: node 2 is
/// killed (`kill -9`). Node 1 publishes `n` QoS 1 messages, each PUBACKed (so each is in the
/// stream `sluice_messages`). The client reconnects with the same id to node 3: Session Present
/// 1, its subscription in force without a SUBSCRIBE, and every message delivered (duplicates
/// would be allowed for QoS 1, README "What is promised"; none may be missing). Returns the
/// nodes and the subscriber's connection on node 3.
async fn move_offline_session(kill_owner: bool) -> Result<(NatsServer, Vec<Broker>)> {
    let nats = NatsServer::start()?;
    let mut nodes: Vec<Broker> = (1..=3)
        .map(|n| start_node(&nats.url, n))
        .collect::<Result<_>>()?;
    let persistent = Opts::persistent(600);
    let (mut sub, _) = raw_ok_ack(nodes[1].addr, Protocol::V5, "mover", &persistent).await;
    raw_subscribe(&mut sub, 1, "move/#", QoS::AtLeastOnce).await;
    let mut publisher = connected(nodes[0].addr, Protocol::V5, "pub").await;
    // The subscription reaches NATS: node 2 gets node 1's messages live.
    until_routed(&mut publisher, "move/warm", &mut [&mut sub]).await?;
    let from = nodes[1].log_len();
    sub.send(&sluice_tests::clients::disconnect_packet(
        sluice_tests::codec::ReasonCode::SUCCESS,
        None,
    ))
    .await?;
    drop(sub);
    nodes[1].wait_log_from(from, "cluster: session recorded as offline", DEADLINE)?;
    if kill_owner {
        nodes[1].kill();
    }
    let n = 40;
    publish_numbered(&mut publisher, "move/a", "q-", n, "end").await;
    let from3 = nodes[2].log_len();
    let (mut back, ack) = raw_ok_ack(nodes[2].addr, Protocol::V5, "mover", &persistent).await;
    assert!(ack.session_present, "the session resumed on node 3");
    let got = collect_until(&mut back, "q-", "end").await?;
    let unique: HashSet<&String> = got.iter().collect();
    let want = expected("q-", n);
    assert!(
        want.iter().all(|w| unique.contains(w)),
        "missing: {:?} (got {got:?})",
        want.iter()
            .filter(|w| !unique.contains(w))
            .collect::<Vec<_>>()
    );
    nodes[2].wait_log_from(
        from3,
        "cluster: session taken over from another node",
        DEADLINE,
    )?;
    // Live on node 3 now, without a new SUBSCRIBE: a message published on node 1 after the move.
    until_routed(&mut publisher, "move/live", &mut [&mut back]).await?;
    Ok((nats, nodes))
}

/// Issue 15's test: the subscriber's node dies while it is offline; nothing acknowledged to the
/// publisher is lost when the client reconnects to another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_resumes_on_another_node_after_its_node_died() -> Result<()> {
    move_offline_session(true).await?;
    Ok(())
}

/// The subscriber's node is alive with the messages queued for it: it hands the session over to
/// node 3 and forgets it (it no longer delivers there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_hands_a_persistent_session_over() -> Result<()> {
    let (_nats, nodes) = move_offline_session(false).await?;
    nodes[1].wait_log(
        "cluster: session moved to another node: forgotten here",
        DEADLINE,
    )?;
    Ok(())
}

/// A session whose expiry passed while its node was dead is not resumed on another node
/// [MQTT-3.1.2-23]: Session Present 0, no subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_not_resumed_on_another_node() -> Result<()> {
    let nats = NatsServer::start()?;
    let mut nodes: Vec<Broker> = (1..=3)
        .map(|n| start_node(&nats.url, n))
        .collect::<Result<_>>()?;
    let (mut sub, _) = raw_ok_ack(nodes[1].addr, Protocol::V5, "brief", &Opts::persistent(2)).await;
    raw_subscribe(&mut sub, 1, "brief/#", QoS::AtLeastOnce).await;
    sub.send(&sluice_tests::clients::disconnect_packet(
        sluice_tests::codec::ReasonCode::SUCCESS,
        None,
    ))
    .await?;
    drop(sub);
    nodes[1].wait_log("cluster: session recorded as offline", DEADLINE)?;
    let away = Instant::now();
    // Killed before its own expiry timer could delete the record: only the record says when.
    nodes[1].kill();
    // The condition under test is the passing of the 2 s expiry (plus a margin for clocks).
    tokio::time::sleep_until((away + Duration::from_secs(4)).into()).await;
    let (mut c, ack) =
        raw_ok_ack(nodes[2].addr, Protocol::V5, "brief", &Opts::persistent(60)).await;
    assert!(!ack.session_present, "an expired session is not resumed");
    nodes[2].wait_log("cluster: session expired: not resumed", DEADLINE)?;
    // And no subscription came with it: a message to brief/x reaches nobody here.
    let mut publisher = connected(nodes[0].addr, Protocol::V5, "pub").await;
    raw_subscribe(&mut c, 1, "probe/#", QoS::AtLeastOnce).await;
    until_routed(&mut publisher, "probe/x", &mut [&mut c]).await?;
    raw_publish(&mut publisher, "brief/x", QoS::AtLeastOnce, 1, b"stale").await;
    raw_publish(&mut publisher, "probe/x", QoS::AtLeastOnce, 2, b"end").await;
    let seen = collect_until(&mut c, "stale", "end").await?;
    assert!(seen.is_empty(), "{seen:?}");
    Ok(())
}

#[test]
fn unreachable_nats_stops_the_start_naming_the_key() {
    let port = sluice_tests::nats::free_port().unwrap();
    let err = Broker::start_with(sluice_tests::BrokerOpts {
        config: sluice_tests::nats::node_config(&format!("nats://127.0.0.1:{port}"), "lonely"),
        ..Default::default()
    })
    .expect_err("a node that cannot reach NATS must not start");
    let text = format!("{err:#}");
    assert!(text.contains("cluster.nats"), "{text}");
    assert!(text.contains("cannot connect to NATS"), "{text}");
}
