//! Micro-benchmarks (criterion): the codec (PUBLISH decode/encode, MQTT 3.1.1 and 5.0, and a
//! broadcast delivery copied from a shared encoded form), the
//! subscription trie (match against 100k filters with wildcards) and the retained store
//! (wildcard match over 100k topics). Short by default (2 s per benchmark):
//! `cargo bench -p sluice-bench --bench micro`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::routing::retain::RetainedStore;
use sluice::routing::subscriptions::SubscriptionTree;
use sluice_codec::{
    encode, Decoder, Packet, Protocol, Publish, PublishProperties, QoS, TopicFilter, TopicName,
};

fn publish(payload: usize, protocol: Protocol) -> Packet {
    let mut properties = PublishProperties::default();
    if protocol.is_v5() {
        properties.message_expiry_interval = Some(3600);
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from("fleet/1234/56/telemetry").expect("valid topic"),
        pkid: 42,
        payload: Bytes::from(vec![0x5a; payload]),
        properties,
    })
}

/// Where the packet id of an encoded QoS 1/2 PUBLISH is: after the fixed header and the topic.
fn pkid_offset(packet: &[u8], topic_len: usize) -> usize {
    let length_bytes = packet[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |i| i + 1);
    1 + length_bytes + 2 + topic_len
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for (protocol, name) in [(Protocol::V311, "3.1.1"), (Protocol::V5, "5.0")] {
        for size in [64usize, 1024] {
            let packet = publish(size, protocol);
            let mut encoded = BytesMut::new();
            encode(&packet, protocol, &mut encoded).expect("encode");
            g.throughput(Throughput::Elements(1));
            g.bench_with_input(
                BenchmarkId::new(format!("encode publish {name}"), size),
                &packet,
                |b, packet| {
                    let mut buf = BytesMut::with_capacity(4096);
                    b.iter(|| {
                        buf.clear();
                        encode(black_box(packet), protocol, &mut buf).expect("encode");
                        black_box(buf.len())
                    })
                },
            );
            // A broadcast delivery from the message's shared encoded form (issue #13.5): the
            // whole packet copied and its packet id patched, against prefix + id + suffix.
            let form = encoded.clone().freeze();
            let at = pkid_offset(&form, "fleet/1234/56/telemetry".len());
            g.bench_with_input(
                BenchmarkId::new(format!("shared form copy+patch {name}"), size),
                &form,
                |b, form| {
                    let mut buf = BytesMut::with_capacity(4096);
                    let mut pkid = 0u16;
                    b.iter(|| {
                        buf.clear();
                        pkid = pkid.wrapping_add(1);
                        buf.extend_from_slice(black_box(form));
                        buf[at..at + 2].copy_from_slice(&pkid.to_be_bytes());
                        black_box(buf.len())
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("shared form prefix+id+suffix {name}"), size),
                &form,
                |b, form| {
                    let mut buf = BytesMut::with_capacity(4096);
                    let mut pkid = 0u16;
                    b.iter(|| {
                        buf.clear();
                        pkid = pkid.wrapping_add(1);
                        let form = black_box(form);
                        buf.extend_from_slice(&form[..at]);
                        buf.extend_from_slice(&pkid.to_be_bytes());
                        buf.extend_from_slice(&form[at + 2..]);
                        black_box(buf.len())
                    })
                },
            );
            // Includes copying the packet's bytes into the read buffer, as a socket read would.
            g.bench_with_input(
                BenchmarkId::new(format!("decode publish {name}"), size),
                &encoded,
                |b, encoded| {
                    let mut decoder = Decoder::with_protocol(protocol, 1 << 20);
                    let mut buf = BytesMut::with_capacity(4096);
                    b.iter(|| {
                        buf.extend_from_slice(encoded);
                        let p = decoder.decode(&mut buf).expect("decode").expect("a packet");
                        black_box(p)
                    })
                },
            );
        }
    }
    g.finish();
}

/// 100,000 filters: 90% exact `fleet/{a}/{b}/telemetry`, 5% `fleet/{a}/+/telemetry`,
/// 4% `fleet/{a}/#`, 1% `+/{a}/{b}/telemetry`.
fn filters() -> Vec<String> {
    (0..100_000u32)
        .map(|i| {
            let (a, b) = (i / 300, i % 300);
            match i % 100 {
                0..=89 => format!("fleet/{a}/{b}/telemetry"),
                90..=94 => format!("fleet/{}/+/telemetry", i % 300),
                95..=98 => format!("fleet/{}/#", i % 300),
                _ => format!("+/{}/{}/telemetry", i % 300, (i / 7) % 300),
            }
        })
        .collect()
}

fn trie(c: &mut Criterion) {
    let mut tree: SubscriptionTree<u32, u8> = SubscriptionTree::new();
    for (i, f) in filters().iter().enumerate() {
        let filter = TopicFilter::try_from(f.as_str()).expect("valid filter");
        tree.subscribe(&filter, i as u32, 1);
    }
    assert_eq!(tree.len(), 100_000);
    let mut g = c.benchmark_group("subscription trie, 100k filters");
    g.throughput(Throughput::Elements(1));
    // Exact only; exact + `fleet/92/+/telemetry`; exact + `fleet/97/#`; `+/99/..` only; none.
    for topic in [
        "fleet/123/45/telemetry",
        "fleet/92/45/telemetry",
        "fleet/97/1/telemetry",
        "other/99/14/telemetry",
        "fleet/99999/1/nothing",
    ] {
        let mut n = 0usize;
        tree.for_each_match(topic, |_, _, _| n += 1);
        g.bench_function(format!("match {topic} ({n} matches)"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                tree.for_each_match(black_box(topic), |_, _, _| n += 1);
                black_box(n)
            })
        });
    }
    g.finish();
}

fn retained(c: &mut Criterion) {
    let mut store: RetainedStore<u32> = RetainedStore::new();
    for i in 0..100_000u32 {
        store.insert(&format!("fleet/{}/{}/telemetry", i / 100, i % 100), i);
    }
    assert_eq!(store.len(), 100_000);
    let mut g = c.benchmark_group("retained store, 100k topics");
    for filter in [
        "fleet/42/7/telemetry",
        "fleet/42/#",
        "fleet/+/7/telemetry",
        "fleet/#",
    ] {
        let mut n = 0u64;
        store.for_each_match(filter, |_, _| n += 1);
        g.throughput(Throughput::Elements(n.max(1)));
        g.bench_function(format!("match {filter} ({n} topics)"), |b| {
            b.iter(|| {
                let mut n = 0u64;
                store.for_each_match(black_box(filter), |t, m| {
                    n += t.len() as u64 + u64::from(*m)
                });
                black_box(n)
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = codec, trie, retained
}
criterion_main!(benches);
