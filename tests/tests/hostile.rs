//! Hostile clients (issue 6): while a well-behaved QoS 1 publisher/subscriber pair exchanges
//! 2,000 messages, about 2,000 other connections misbehave at the same time:
//!
//! * 1,600 open TCP and never send CONNECT (closed after `limits.connect_timeout` = 2 s, which
//!   runs from the broker's accept: in such a burst the listen queue overflows and the kernel
//!   completes some accepts only at a SYN-ACK retransmission, seconds after the client's
//!   `connect` returned, so the test checks why each was closed, not how soon);
//! * 200 send random bytes;
//! * 100 declare a remaining length of 268,435,455 (before and after CONNECT);
//! * 4 flood QoS 0 PUBLISHes far beyond `limits.publish_rate`;
//! * 20 subscribe to `#` and never read (slow consumers).
//!
//! Afterwards: the pair received every message, the broker is alive, closed every hostile
//! connection, its file descriptors and RSS went back near where they started, and it still
//! accepts new clients. Loopback only; every loop and wait is bounded; the broker is stopped by
//! its PID (the harness's `Drop`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_tests::clients::{connected, publish_packet};
use sluice_tests::codec::{Packet, Protocol, PubAck, QoS, ReasonCode};
use sluice_tests::packets;
use sluice_tests::{connect_bytes, Broker, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const MESSAGES: u32 = 2_000;
const SILENT: usize = 1_600;
const RANDOM: usize = 200;
const OVERSIZED: usize = 100;
const FLOODERS: usize = 4;
const SLOW: usize = 20;

const CONFIG: &str = r#"
[mqtt]
max_packet_size = 65536

[limits]
connect_timeout = 2
publish_rate = 500
"#;

/// (VmRSS in KiB, open file descriptors) of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("broker status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("broker fds")
        .count();
    (rss, fds)
}

/// Samples [`usage`] every 100 ms until `ok(rss, fds)` holds or `limit` has passed; returns the
/// last sample (the caller asserts on it).
async fn settle(pid: u32, limit: Duration, ok: impl Fn(u64, usize) -> bool) -> (u64, usize) {
    let deadline = Instant::now() + limit;
    loop {
        let (rss, fds) = usage(pid);
        if ok(rss, fds) || Instant::now() >= deadline {
            return (rss, fds);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The broker process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Small deterministic PRNG (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// How long a hostile connection may stay open before the test calls it a hang: a guard, not
/// a measure. The broker's timers (connect timeout, 1.5 x Keep Alive) run from its accept and
/// its reads, which on a loaded machine can come many seconds after the client's side.
const CLOSE_GUARD: Duration = Duration::from_secs(60);

/// Reads until the peer closes; returns how long that took, or None if it did not within
/// `limit`.
async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_behaved_pair_unaffected_by_hostile_clients() {
    let test_start = Instant::now();
    let broker = Broker::with_config(CONFIG);
    let pid = broker.pid();
    let addr = broker.addr;

    // Warm up (one connection, one message), then take the baseline once the broker has seen
    // the connection close and its socket is gone (as many descriptors as before it).
    let fds_idle = usage(pid).1;
    {
        let mut c = connected(broker.addr, Protocol::V311, "warmup").await;
        c.send(&publish_packet("warmup", QoS::AtMostOnce, 0, b"x"))
            .await
            .unwrap();
    }
    broker
        .wait_log("client disconnected", Duration::from_secs(10))
        .expect("the warm-up connection ends");
    let (rss_start, fds_start) =
        settle(pid, Duration::from_secs(10), |_, fds| fds <= fds_idle).await;
    eprintln!("start: VmRSS {rss_start} KiB, {fds_start} fds ({fds_idle} before the warm-up)");

    // The well-behaved pair.
    let mut sub = connected(broker.addr, Protocol::V311, "good-sub").await;
    sub.send(&packets::subscribe(1, "good/#", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert!(matches!(
        sub.expect_packet(Duration::from_secs(10)).await.unwrap(),
        Packet::SubAck(_)
    ));
    let mut publisher = connected(broker.addr, Protocol::V311, "good-pub").await;

    // Slow consumers: subscribe to everything, then never read.
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let mut c = connected(broker.addr, Protocol::V311, "slow").await;
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        c.send(&packets::subscribe(1, "#", qos)).await.unwrap();
        slow.push(c);
    }

    let (pair_done, pair_done_rx) = tokio::sync::watch::channel(false);
    let mut hostile: JoinSet<&'static str> = JoinSet::new();

    // Never CONNECT: each must be closed by the broker, for want of a CONNECT within
    // connect_timeout of its accept (checked against the broker's log by peer address below).
    let silent_closed = Arc::new(AtomicU64::new(0));
    let slowest_close_ms = Arc::new(AtomicU64::new(0));
    let silent_peers = Arc::new(std::sync::Mutex::new(Vec::with_capacity(SILENT)));
    {
        let (closed, slowest) = (silent_closed.clone(), slowest_close_ms.clone());
        let peers = silent_peers.clone();
        hostile.spawn(async move {
            let mut set = JoinSet::new();
            for _ in 0..SILENT {
                let (closed, slowest) = (closed.clone(), slowest.clone());
                let stream = TcpStream::connect(addr).await.expect("silent connect");
                // The broker logs the connection under this address (its peer).
                let local = stream.local_addr().expect("silent local address");
                let peers = peers.clone();
                set.spawn(async move {
                    let mut stream = stream;
                    if let Some(t) = wait_closed(&mut stream, CLOSE_GUARD).await {
                        closed.fetch_add(1, Ordering::Relaxed);
                        slowest.fetch_max(t.as_millis() as u64, Ordering::Relaxed);
                        peers.lock().unwrap().push(local);
                    }
                });
            }
            while set.join_next().await.is_some() {}
            "silent"
        });
    }

    // Random bytes (sometimes after a valid CONNECT); every connection must be closed.
    let random_closed = Arc::new(AtomicU64::new(0));
    {
        let closed = random_closed.clone();
        hostile.spawn(async move {
            let mut rng = Rng(0x6a09_e667_f3bc_c909);
            let mut set = JoinSet::new();
            for i in 0..RANDOM {
                let len = 1 + (rng.next() % 2048) as usize;
                let mut bytes: Vec<u8> = Vec::with_capacity(len + 64);
                if i % 2 == 1 {
                    // Keep Alive 2 s: after CONNECT, random bytes may be a valid packet or the
                    // start of one; the broker then closes at 1.5 x Keep Alive.
                    let mut connect = connect_bytes(Protocol::V5, &format!("random-{i}"));
                    connect[10..12].copy_from_slice(&2u16.to_be_bytes());
                    bytes.extend(connect);
                }
                bytes.extend((0..len).map(|_| rng.next() as u8));
                let closed = closed.clone();
                set.spawn(async move {
                    let Ok(mut stream) = TcpStream::connect(addr).await else {
                        return;
                    };
                    // The broker may close before everything is written.
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&bytes))
                        .await;
                    if wait_closed(&mut stream, CLOSE_GUARD).await.is_some() {
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while set.join_next().await.is_some() {}
            "random"
        });
    }

    // Oversized remaining lengths: refused from the fixed header, 5.0 with DISCONNECT 0x95.
    let oversized_ok = Arc::new(AtomicU64::new(0));
    {
        let ok = oversized_ok.clone();
        hostile.spawn(async move {
            let mut set = JoinSet::new();
            for i in 0..OVERSIZED {
                let ok = ok.clone();
                set.spawn(async move {
                    let mut c = RawClient::connect(addr, Protocol::V5).await.unwrap();
                    let header = [0xff, 0xff, 0xff, 0x7f]; // 268,435,455
                    let after_connect = i % 2 == 1;
                    let mut bytes = Vec::new();
                    if after_connect {
                        bytes.extend(connect_bytes(Protocol::V5, &format!("oversized-{i}")));
                        bytes.push(0x30);
                    } else {
                        bytes.push(0x10);
                    }
                    bytes.extend(header);
                    bytes.extend(std::iter::repeat_n(b'A', 4096));
                    let _ = c.send_bytes(&bytes).await;
                    let seen = match c.expect_closed(CLOSE_GUARD).await {
                        Ok(seen) => seen,
                        Err(e) => panic!("oversized connection {i} not closed: {e}"),
                    };
                    let refused = !after_connect
                        || seen.iter().any(|p| {
                            matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::PACKET_TOO_LARGE)
                        });
                    assert!(refused, "oversized PUBLISH {i}: expected DISCONNECT 0x95, saw {seen:?}");
                    ok.fetch_add(1, Ordering::Relaxed);
                });
            }
            while set.join_next().await.is_some() {}
            "oversized"
        });
    }

    // Flooders: QoS 0 as fast as the socket takes it, until the pair is done (bounded).
    let flooded = Arc::new(AtomicU64::new(0));
    for f in 0..FLOODERS {
        let mut done = pair_done_rx.clone();
        let flooded = flooded.clone();
        let mut c = connected(broker.addr, Protocol::V311, "flood").await;
        hostile.spawn(async move {
            let mut batch = Vec::new();
            for j in 0..64u32 {
                let mut out = bytes::BytesMut::new();
                let p = publish_packet(
                    &format!("flood/{f}/{j}"),
                    QoS::AtMostOnce,
                    0,
                    vec![b'f'; 512],
                );
                sluice_tests::codec::encode(&p, Protocol::V311, &mut out).unwrap();
                batch.extend_from_slice(&out);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while !*done.borrow() && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(200), c.send_bytes(&batch)).await {
                    Ok(Ok(())) => {
                        flooded.fetch_add(64, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => break,
                    // Pushed back: TCP is full because the broker stopped reading. A timed-out
                    // write may have been partial, so this stream is done.
                    Err(_) => break,
                }
            }
            // Keep the connection open (and pushed back) until the pair is done (bounded).
            let _ = tokio::time::timeout_at(deadline.into(), done.wait_for(|d| *d)).await;
            drop(c);
            "flood"
        });
    }

    // The pair: 2,000 QoS 1 messages, 50 in flight at a time, every one acknowledged. A
    // PUBACK means the message is in the subscriber's queue (64 MiB, far from full), so every
    // acknowledged message must arrive: the receiver stops when all have, or when nothing at
    // all has come for `STALL` (a hang guard that progress resets, not a time limit on the
    // pair).
    const STALL: Duration = Duration::from_secs(60);
    let receiver = tokio::spawn(async move {
        let mut got = BTreeSet::new();
        let mut last_progress = Instant::now();
        while got.len() < MESSAGES as usize && last_progress.elapsed() < STALL {
            match sub.recv(Duration::from_secs(5)).await.unwrap() {
                sluice_tests::Recv::Packet(p) => {
                    if let Packet::Publish(p) = *p {
                        let n: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                        got.insert(n);
                        last_progress = Instant::now();
                        if p.qos == QoS::AtLeastOnce {
                            sub.send(&Packet::PubAck(PubAck::new(p.pkid)))
                                .await
                                .unwrap();
                        }
                    }
                }
                sluice_tests::Recv::Closed => panic!("broker closed the good subscriber"),
                sluice_tests::Recv::Timeout => {}
            }
        }
        (got, sub)
    });
    let pair_start = Instant::now();
    let mut acked = 0u32;
    for first in (0..MESSAGES).step_by(50) {
        let last = (first + 50).min(MESSAGES);
        for n in first..last {
            let pkid = (n % 60_000 + 1) as u16;
            publisher
                .send(&publish_packet(
                    &format!("good/{}", n % 10),
                    QoS::AtLeastOnce,
                    pkid,
                    n.to_string().into_bytes(),
                ))
                .await
                .unwrap();
        }
        for _ in first..last {
            match publisher.expect_packet(STALL).await {
                Ok(Packet::PubAck(_)) => acked += 1,
                other => panic!("good publisher expected PUBACK, got {other:?}"),
            }
        }
    }
    let (got, sub) = receiver.await.unwrap();
    eprintln!("{:?}: pair done", test_start.elapsed());
    let pair_time = pair_start.elapsed();
    pair_done.send_replace(true);
    eprintln!(
        "pair: {acked} acked, {} received in {pair_time:?}",
        got.len()
    );
    assert_eq!(acked, MESSAGES, "every good PUBLISH acknowledged");
    assert_eq!(got.len(), MESSAGES as usize, "every good message received");

    // Hostile tasks end (each bounded by its own guard).
    while let Some(r) = tokio::time::timeout(CLOSE_GUARD * 2, hostile.join_next())
        .await
        .expect("hostile tasks finish")
    {
        r.expect("hostile task");
    }
    eprintln!("{:?}: hostile tasks done", test_start.elapsed());
    let (rss_peak, fds_peak) = usage(pid);
    drop(slow);
    drop(sub);
    drop(publisher);

    let flood_count = flooded.load(Ordering::Relaxed);
    eprintln!(
        "silent: {} of {SILENT} closed (slowest after {} ms); random: {} of {RANDOM} closed; \
         oversized: {} of {OVERSIZED} refused; flood: {flood_count} PUBLISHes written; \
         with slow consumers still open: VmRSS {rss_peak} KiB, {fds_peak} fds",
        silent_closed.load(Ordering::Relaxed),
        slowest_close_ms.load(Ordering::Relaxed),
        random_closed.load(Ordering::Relaxed),
        oversized_ok.load(Ordering::Relaxed),
    );
    assert_eq!(silent_closed.load(Ordering::Relaxed), SILENT as u64);
    // Each was closed because no CONNECT came within connect_timeout of its accept (when that
    // was is the broker's business: a timing assertion here fails on a loaded machine). The
    // broker logs the line before it closes, but its log reaches the test through a pipe and a
    // thread, so wait (bounded) until every address has its line.
    let silent_peers: Vec<String> = silent_peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    let deadline = Instant::now() + CLOSE_GUARD;
    let (unexplained, examples) = loop {
        let log = broker.log();
        let timed_out: std::collections::HashSet<&str> = log
            .iter()
            .filter(|l| l.contains("no CONNECT within 2s (limits.connect_timeout); closing"))
            .filter_map(|l| l.rsplit_once("peer=").map(|(_, p)| p.trim()))
            .collect();
        let unexplained: Vec<&String> = silent_peers
            .iter()
            .filter(|p| !timed_out.contains(p.as_str()))
            .collect();
        if unexplained.is_empty() || Instant::now() >= deadline {
            let examples: Vec<String> = unexplained.iter().take(5).map(|p| p.to_string()).collect();
            break (unexplained.len(), examples);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        unexplained, 0,
        "silent connections closed without the broker's connect_timeout line for their \
         address, e.g. {examples:?}"
    );
    assert_eq!(random_closed.load(Ordering::Relaxed), RANDOM as u64);
    assert_eq!(oversized_ok.load(Ordering::Relaxed), OVERSIZED as u64);
    // The flooders were pushed back: the broker logs the pause.
    broker
        .wait_log("over the publish rate limit", Duration::from_secs(5))
        .expect("flooders were rate limited");

    // Everything hostile is closed: resources return near the start (bounded wait).
    // A flooder's socket may still hold PUBLISHes the broker reads at the rate limit before it
    // sees the close, so those few can linger a little longer; nothing else should.
    let fd_slack = FLOODERS + 2;
    let (rss_end, fds_end) = settle(pid, CLOSE_GUARD, |rss, fds| {
        fds <= fds_start + fd_slack && rss < rss_start + 64 * 1024
    })
    .await;
    eprintln!(
        "end: VmRSS {rss_end} KiB ({:+} KiB from start), {fds_end} fds (start {fds_start})",
        rss_end as i64 - rss_start as i64
    );
    assert!(alive(pid), "broker process alive");
    assert!(
        fds_end <= fds_start + fd_slack,
        "file descriptors back near the start: {fds_end} vs {fds_start}"
    );
    assert!(
        rss_end < rss_start + 64 * 1024,
        "RSS back within 64 MiB of the start: {rss_end} KiB vs {rss_start} KiB"
    );

    // Still accepts new clients, and still routes.
    let mut s = connected(broker.addr, Protocol::V5, "after-sub").await;
    s.send(&packets::subscribe(1, "after/#", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert!(matches!(
        s.expect_packet(Duration::from_secs(5)).await.unwrap(),
        Packet::SubAck(_)
    ));
    let mut p = connected(broker.addr, Protocol::V311, "after-pub").await;
    p.send(&publish_packet(
        "after/x",
        QoS::AtLeastOnce,
        1,
        b"still here",
    ))
    .await
    .unwrap();
    assert!(matches!(
        p.expect_packet(Duration::from_secs(5)).await.unwrap(),
        Packet::PubAck(_)
    ));
    match s.expect_packet(Duration::from_secs(5)).await.unwrap() {
        Packet::Publish(m) => assert_eq!(&m.payload[..], b"still here"),
        other => panic!("expected the PUBLISH, got {other:?}"),
    }
    eprintln!("whole test: {:?}", test_start.elapsed());
}
