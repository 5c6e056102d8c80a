//! Tests of the log format, the image and recovery (real files in a temporary directory).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_codec::{PublishProperties, QoS, Str, SubscriptionOptions, TopicFilter, TopicName};

use super::*;
use crate::config::{PersistenceConfig, PersistenceMode};
use crate::message::Message;

fn msg(topic: &str, payload: &'static [u8], qos: QoS) -> Arc<Message> {
    let props = PublishProperties {
        message_expiry_interval: Some(3600),
        user_properties: vec![(Str::from_static("k"), Str::from_static("v"))],
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        ..Default::default()
    };
    Arc::new(Message::new(
        TopicName::try_from(topic).unwrap(),
        Bytes::from_static(payload),
        qos,
        false,
        props,
        "pub".into(),
        Instant::now(),
    ))
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-store-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg(dir: &Path, mode: PersistenceMode) -> PersistenceConfig {
    PersistenceConfig {
        mode,
        dir: dir.to_path_buf(),
        ..PersistenceConfig::default()
    }
}

fn client(c: &str) -> ClientId {
    c.into()
}

/// A session "c" with a subscription, two queued messages, one sent, one inbound QoS 2 id.
fn sample(m1: &Arc<Message>, m2: &Arc<Message>) -> Vec<Record> {
    let c = client("c");
    vec![
        Record::Session {
            client: c.clone(),
            expiry: 300,
            username: Some("u".into()),
            will: None,
            since: 1_700_000_000_000,
        },
        Record::Subscribe {
            client: c.clone(),
            filter: TopicFilter::try_from("a/#").unwrap(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: sluice_codec::RetainHandling::Never,
            },
            identifier: Some(7),
        },
        Record::Message(m1.clone()),
        Record::Enqueue {
            client: c.clone(),
            seq: 1,
            id: m1.id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![7],
            shared: None,
        },
        Record::Message(m2.clone()),
        Record::Enqueue {
            client: c.clone(),
            seq: 2,
            id: m2.id,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![],
            shared: None,
        },
        Record::Sent {
            client: c.clone(),
            seq: 1,
            pkid: 5,
        },
        Record::Qos2In {
            client: c.clone(),
            pkid: 9,
        },
        Record::Retain {
            topic: Str::from_static("a/b"),
            id: m2.id,
        },
    ]
}

#[test]
fn every_record_round_trips_through_the_frame_format() {
    let m1 = msg("a/b", b"one", QoS::AtLeastOnce);
    let m2 = msg("a/c", b"two", QoS::ExactlyOnce);
    let now = Instant::now();
    let group = TopicFilter::try_from("$share/g/a/#").unwrap();
    let more = vec![
        Record::GroupEnqueue {
            group: group.clone(),
            seq: 4,
            id: m1.id,
            qos: QoS::ExactlyOnce,
            retain: true,
        },
        Record::GroupTaken { group, seq: 4 },
        Record::Skip {
            client: client("c"),
            seq: 2,
        },
        Record::SentHorizon {
            client: client("c"),
            seq: 8194,
        },
    ];
    for rec in sample(&m1, &m2).into_iter().chain(more) {
        let mut buf = BytesMut::new();
        encode_record(&rec, &mut buf);
        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len + 8, buf.len());
        let back = decode_record(Bytes::copy_from_slice(&buf[8..]), now).unwrap();
        assert_eq!(format!("{:?}", strip(&back)), format!("{:?}", strip(&rec)));
    }
}

/// Debug text without the expiry instant (which is re-derived from wall-clock time).
fn strip(r: &Record) -> Record {
    match r {
        Record::Message(m) => {
            let mut m = (**m).clone();
            m.expires_at = None;
            // Not logged: a message read back is received "now" (its latency's start).
            static EPOCH: std::sync::LazyLock<std::time::Instant> =
                std::sync::LazyLock::new(std::time::Instant::now);
            m.received_at = *EPOCH;
            Record::Message(Arc::new(m))
        }
        other => other.clone(),
    }
}

#[test]
fn image_tracks_queues_inflight_and_message_references() {
    let m1 = msg("a/b", b"one", QoS::AtLeastOnce);
    let m2 = msg("a/c", b"two", QoS::ExactlyOnce);
    let mut img = Image::default();
    for r in sample(&m1, &m2) {
        img.apply(&r, (0, 100));
    }
    assert_eq!((img.entries, img.message_bytes), (2, 200));
    let s = &img.sessions[&client("c")];
    assert_eq!(s.queue.len(), 1);
    assert_eq!(s.inflight.len(), 1);
    assert!(s.qos2_in.contains(&9));
    assert_eq!(img.messages[&m2.id].refs, 2, "queued once and retained");
    // PUBACK frees m1; deleting the retained copy and ending the session frees m2.
    img.apply(
        &Record::Acked {
            client: client("c"),
            pkid: 5,
        },
        (0, 0),
    );
    assert!(!img.messages.contains_key(&m1.id));
    img.apply(
        &Record::Retain {
            topic: Str::from_static("a/b"),
            id: 0,
        },
        (0, 0),
    );
    img.apply(
        &Record::SessionGone {
            client: client("c"),
        },
        (0, 0),
    );
    assert!(img.messages.is_empty() && img.sessions.is_empty());
    assert_eq!(
        (img.entries, img.message_bytes),
        (0, 0),
        "live-size bookkeeping back to zero"
    );
}

/// The queue and inflight state of session "c", as the store's image has it.
fn session_c(store: &Store) -> (u32, Vec<QueuedImage>, Vec<InflightImage>) {
    store
        .with_image(|img, _| {
            let s = &img.sessions[&client("c")];
            (
                s.expiry,
                s.queue.iter().cloned().collect(),
                s.inflight.iter().cloned().collect(),
            )
        })
        .unwrap()
}

#[tokio::test]
async fn store_recovers_what_was_written_and_compaction_preserves_it() {
    let dir = tempdir();
    let m1 = msg("a/b", b"one", QoS::AtLeastOnce);
    let m2 = msg("a/c", b"two", QoS::ExactlyOnce);
    {
        let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
        assert!(store.with_image(|img, _| img.sessions.is_empty()).unwrap());
        assert_eq!(rec.records, 0);
        for r in sample(&m1, &m2) {
            store.append(r);
        }
        assert!(
            store.ticket().unwrap().await.unwrap(),
            "durable ticket after fsync"
        );
        // No shutdown: as after kill -9, only what the ticket covered is promised.
    }
    let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(rec.records, 9);
    let before = session_c(&store);
    assert_eq!((before.0, before.1.len(), before.2.len()), (300, 1, 1));
    assert_eq!(rec.retained, 1);
    let check = |m: &Arc<Message>| {
        assert_eq!(&m.payload[..], b"one");
        assert_eq!(m.properties.user_properties.len(), 1);
        let left = m
            .expires_at
            .unwrap()
            .saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(3500),
            "expiry deadline kept: {left:?}"
        );
    };
    // Recovery only located the message; it is read back on demand.
    let loaded = store.load(vec![m1.id, 12345]).await;
    check(loaded[0].as_ref().expect("m1 read back"));
    assert!(loaded[1].is_none(), "unknown id");

    // Compaction rewrites the log as its live data: same state, messages still readable.
    let m3 = msg("a/d", b"three", QoS::AtLeastOnce);
    store.append(Record::Message(m3.clone()));
    store.append(Record::Enqueue {
        client: client("c"),
        seq: 3,
        id: m3.id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared: None,
    });
    store.compact().await;
    assert!(dir.join(log_name(2)).exists() && !dir.join(log_name(1)).exists());
    let after = session_c(&store);
    assert_eq!(after.1.len(), 2);
    assert_eq!(after.1[0], before.1[0]);
    assert_eq!(after.2, before.2);
    let loaded = store.load(vec![m1.id, m3.id]).await;
    check(loaded[0].as_ref().unwrap());
    assert_eq!(&loaded[1].as_ref().unwrap().payload[..], b"three");
    store.shutdown().await;
    // And the compacted log recovers to the same state.
    let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(session_c(&store), after);
    assert_eq!(rec.messages, 3);
    let loaded = store.load(vec![m3.id]).await;
    assert_eq!(&loaded[0].as_ref().unwrap().payload[..], b"three");
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A record whose checksum is good but whose contents do not decode (here an unknown record
/// type) stops start-up with the file, the record's offset and what is wrong with it.
#[tokio::test]
async fn an_undecodable_record_stops_start_up_naming_file_offset_and_reason() {
    let dir = tempdir();
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    store.append(Record::SessionGone {
        client: client("c"),
    });
    store.shutdown().await;
    let log = dir.join(log_name(1));
    let mut data = std::fs::read(&log).unwrap();
    let at = data.len() as u64;
    let payload = [200u8, 1, 2, 3];
    data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    data.extend_from_slice(&payload);
    std::fs::write(&log, &data).unwrap();
    let e = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::BadRecord { offset, in_batch: false, source: DecodeError::UnknownTag(200), .. }
                if *offset == at
        ),
        "{e}"
    );
    assert!(e.path().ends_with("wal-00000001.log"), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("record at byte {at}: unknown record type 200")),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_reported_but_corruption_in_the_middle_stops_start_up() {
    let dir = tempdir();
    let m1 = msg("a/b", b"one", QoS::AtLeastOnce);
    let m2 = msg("a/c", b"two", QoS::ExactlyOnce);
    {
        let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
        for r in sample(&m1, &m2) {
            store.append(r);
        }
        store.shutdown().await;
    }
    let log = dir.join(log_name(1));
    let full = std::fs::read(&log).unwrap();
    // Torn tail: half of a frame appended.
    let mut torn = full.clone();
    torn.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
    std::fs::write(&log, &torn).unwrap();
    let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(rec.truncated, Some((full.len() as u64, 6)));
    assert_eq!(rec.sessions, 1);
    store.shutdown().await;
    assert_eq!(
        std::fs::read(&log).unwrap().len(),
        full.len(),
        "tail cut off"
    );

    // A flipped byte in the first record, valid records after it: refused, naming the file.
    let mut bad = full.clone();
    bad[10] ^= 0xFF;
    std::fs::write(&log, &bad).unwrap();
    let e = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap_err();
    assert!(e.path().ends_with("wal-00000001.log"), "{e}");
    assert!(
        matches!(
            e,
            StoreError::Corrupt {
                damage: Damage::Checksum { at: 0 },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("corrupt"), "{e}");

    // A damaged length in the first record (claiming more than the file), valid records after
    // it: corruption too, not a torn tail to cut off.
    let mut bad = full.clone();
    bad[3] = 0x7F;
    std::fs::write(&log, &bad).unwrap();
    let e = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Corrupt {
                damage: Damage::LengthPastEnd { at: 0, .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert_eq!(std::fs::read(&log).unwrap(), bad, "nothing cut off");

    // Log files without CURRENT: refused rather than opened empty.
    std::fs::write(&log, &full).unwrap();
    std::fs::remove_file(dir.join("CURRENT")).unwrap();
    let e = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap_err();
    assert!(matches!(e, StoreError::MissingCurrent { .. }), "{e}");
    assert!(e.to_string().contains("refusing to start empty"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn memory_mode_is_disabled() {
    let (store, rec) = Store::open(&cfg(Path::new(""), PersistenceMode::Memory)).unwrap();
    assert!(!store.is_enabled() && store.ticket().is_none() && rec.records == 0);
    assert!(store.with_image(|_, _| ()).is_none());
}

#[tokio::test]
async fn leftover_logs_are_removed_and_an_empty_first_log_is_a_fresh_start() {
    let dir = tempdir();
    // A crash during the very first start-up: an empty log, no CURRENT yet.
    std::fs::write(dir.join(log_name(1)), b"").unwrap();
    let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(rec.records, 0);
    let m1 = msg("a/b", b"one", QoS::AtLeastOnce);
    let m2 = msg("a/c", b"two", QoS::ExactlyOnce);
    for r in sample(&m1, &m2) {
        store.append(r);
    }
    store.shutdown().await;
    // A crash in the middle of a compaction leaves the next log half-written (and CURRENT.tmp).
    std::fs::write(dir.join(log_name(2)), b"half a log").unwrap();
    std::fs::write(dir.join("CURRENT.tmp"), b"wal-00000002.log").unwrap();
    let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(rec.records, 9, "the live log is read whole");
    assert_eq!(rec.removed, vec!["CURRENT.tmp".to_string(), log_name(2)]);
    assert!(!dir.join(log_name(2)).exists());
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A write that cannot be made (here: past `max_disk_bytes`) fails the store: tickets say
/// "not safe". The writer then rewrites the log from memory and carries on, leaving out the
/// message whose record never reached the disk.
#[tokio::test]
async fn a_failed_write_is_recovered_by_rewriting_the_log() {
    let dir = tempdir();
    let mut c = cfg(&dir, PersistenceMode::Durable);
    c.max_disk_bytes = 1024 * 1024;
    let (store, _) = Store::open(&c).unwrap();
    let m1 = msg("a/b", b"one", QoS::AtLeastOnce);
    let m2 = msg("a/c", b"two", QoS::ExactlyOnce);
    for r in sample(&m1, &m2) {
        store.append(r);
    }
    assert!(store.ticket().unwrap().await.unwrap());
    // Compacted: the next write cannot make room by compacting again.
    store.compact().await;
    let big = Arc::new(Message::new(
        TopicName::try_from("big").unwrap(),
        Bytes::from(vec![b'x'; 1100 * 1024]),
        QoS::AtLeastOnce,
        false,
        PublishProperties::default(),
        "pub".into(),
        Instant::now(),
    ));
    store.append(Record::Message(big.clone()));
    assert!(
        !store.ticket().unwrap().await.unwrap(),
        "over max_disk_bytes: not safe"
    );
    assert!(!store.accepting());
    // Within the retry period (5 s) the log is rewritten and the store accepts again.
    let mut recovered = false;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.accepting() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the store recovers by itself");
    assert!(store.ticket().unwrap().await.unwrap());
    assert!(store.load(vec![big.id]).await[0].is_none());
    assert_eq!(
        store.load(vec![m1.id]).await[0].as_ref().unwrap().payload,
        "one"
    );
    store.shutdown().await;
    let (store, rec) = Store::open(&c).unwrap();
    assert_eq!(session_c(&store).1.len(), 1, "the session's state survived");
    assert!(rec.removed.is_empty());
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One message queued twice for one session (a plain and a shared subscription): the records
/// after the two Enqueues name the delivery, not the message, so the right one moves.
#[test]
fn records_name_deliveries_not_messages() {
    let m = msg("a/b", b"one", QoS::AtLeastOnce);
    let c = client("c");
    let mut img = Image::default();
    let enqueue = |seq, shared: Option<&str>| Record::Enqueue {
        client: client("c"),
        seq,
        id: m.id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared: shared.map(|f| TopicFilter::try_from(f).unwrap()),
    };
    for r in [
        Record::Session {
            client: c.clone(),
            expiry: 60,
            username: None,
            will: None,
            since: 0,
        },
        Record::Message(m.clone()),
        enqueue(1, Some("$share/g/a/#")),
        enqueue(2, None),
        Record::Sent {
            client: c.clone(),
            seq: 2,
            pkid: 7,
        },
        Record::Skip {
            client: c.clone(),
            seq: 1,
        },
    ] {
        img.apply(&r, (0, 0));
    }
    let s = &img.sessions[&c];
    assert!(s.queue.is_empty());
    assert_eq!(s.next_seq, 3);
    match &s.inflight.iter().collect::<Vec<_>>()[..] {
        [InflightImage::Publish { pkid: 7, queued }] => {
            assert_eq!(
                (queued.seq, queued.shared.clone()),
                (2, None),
                "the plain one was sent"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        img.messages[&m.id].refs, 1,
        "the skipped copy released its reference"
    );
}

/// A store in `dir` with session "c".
fn store_with_session(dir: &Path) -> Store {
    let (store, _) = Store::open(&cfg(dir, PersistenceMode::Durable)).unwrap();
    store.append(Record::Session {
        client: client("c"),
        expiry: 60,
        username: None,
        will: None,
        since: 0,
    });
    store
}

/// Logs a QoS 1 message on `topic` queued for session "c" as delivery `seq`.
fn queue_for_c(store: &Store, seq: u64, topic: &str, payload: Vec<u8>) -> Arc<Message> {
    let m = Arc::new(Message::new(
        TopicName::try_from(topic).unwrap(),
        Bytes::from(payload),
        QoS::AtLeastOnce,
        false,
        PublishProperties::default(),
        "pub".into(),
        Instant::now(),
    ));
    store.append(Record::Message(m.clone()));
    store.append(Record::Enqueue {
        client: client("c"),
        seq,
        id: m.id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        shared: None,
    });
    m
}

/// Reading back many messages at once (spans of the log, in any order asked) gives each its own
/// message; ids the log does not have come back as None.
#[tokio::test]
async fn many_messages_read_back_in_spans() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    let mut msgs = Vec::new();
    for i in 0..200u32 {
        let payload = vec![i as u8; (i as usize % 7) * 300 + 1];
        msgs.push(queue_for_c(
            &store,
            u64::from(i) + 1,
            &format!("t/{i}"),
            payload,
        ));
    }
    let mut ids: Vec<u64> = msgs.iter().rev().map(|m| m.id).collect();
    ids.insert(7, 999_999_999);
    // Copied out one by one, and (a drain's read-back) with small payloads sharing blocks.
    for got in [
        store.load(ids.clone()).await,
        store.load_drain(ids.clone()).await,
    ] {
        for (id, m) in ids.iter().zip(&got) {
            match msgs.iter().find(|m| m.id == *id) {
                Some(want) => {
                    let m = m.as_ref().expect("read back");
                    assert_eq!((&m.topic, &m.payload), (&want.topic, &want.payload));
                }
                None => assert!(m.is_none()),
            }
        }
    }
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Graceful shutdown leaves a log that is mostly live data: one far past it is compacted first.
#[tokio::test]
async fn shutdown_compacts_a_log_that_is_mostly_garbage() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    for i in 0..1500u64 {
        queue_for_c(&store, i + 1, "t", vec![b'x'; 1000]);
        if i < 1400 {
            store.append(Record::Skip {
                client: client("c"),
                seq: i + 1,
            });
        }
    }
    store.shutdown().await;
    assert!(dir.join(log_name(2)).exists(), "compacted at shutdown");
    let size = std::fs::metadata(dir.join(log_name(2))).unwrap().len();
    assert!(size < 200 * 1024, "about 100 live messages: {size} bytes");
    let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(rec.messages, 100);
    assert_eq!(session_c_queue_len(&store), 100);
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

fn session_c_queue_len(store: &Store) -> usize {
    store
        .with_image(|img, _| img.sessions[&client("c")].queue.len())
        .unwrap()
}

/// Recovery's in-place reading of queue entries agrees with the general decoder.
#[test]
fn the_fast_enqueue_reader_agrees_with_the_decoder() {
    for (ids, shared) in [(vec![], None), (vec![7, 70_000], Some("$share/g/a/+"))] {
        let rec = Record::Enqueue {
            client: client("cl€"),
            seq: 42,
            id: 7_000_000_001,
            qos: QoS::ExactlyOnce,
            retain: true,
            subscription_ids: ids.clone(),
            shared: shared.map(|f| TopicFilter::try_from(f).unwrap()),
        };
        let mut buf = BytesMut::new();
        encode_record(&rec, &mut buf);
        let (c, q) = parse_enqueue(&buf[9..]).unwrap();
        assert_eq!(c, "cl€");
        assert_eq!(
            (q.seq, q.id, q.qos, q.retain),
            (42, 7_000_000_001, QoS::ExactlyOnce, true)
        );
        assert_eq!(&q.subscription_ids[..], &ids[..]);
        assert_eq!(q.shared.as_deref().map(|f| f.as_str()), shared);
        assert!(
            parse_enqueue(&buf[9..buf.len() - 1]) == Err(DecodeError::Short),
            "short record"
        );
    }
}

/// The records of one batch are one frame: a write torn in the middle of it keeps none of
/// them (a QoS 2 "received" mark never survives without the queue entries it came with).
#[tokio::test]
async fn a_torn_batch_keeps_none_of_its_records() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    assert!(store.ticket().unwrap().await.unwrap());
    let before = std::fs::metadata(dir.join(log_name(1))).unwrap().len();
    let m = {
        let _g = store.batch();
        store.append(Record::Qos2In {
            client: client("c"),
            pkid: 9,
        });
        queue_for_c(&store, 1, "t", b"x".to_vec())
    };
    store.shutdown().await;
    let log = dir.join(log_name(1));
    let full = std::fs::metadata(&log).unwrap().len();
    // The message frame, then the batch frame: cut inside the batch.
    let f = OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(full - 5).unwrap();
    drop(f);
    let (store, rec) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert!(rec.truncated.is_some() && before < full);
    store
        .with_image(|img, _| {
            let s = &img.sessions[&client("c")];
            assert!(!s.qos2_in.contains(&9), "no 'received' without its entries");
            assert!(s.queue.is_empty());
            assert!(
                !img.messages.contains_key(&m.id),
                "the lone message is garbage"
            );
        })
        .unwrap();
    store.shutdown().await;
    // Whole, the same batch is all there.
    let dir2 = tempdir();
    let store = store_with_session(&dir2);
    {
        let _g = store.batch();
        store.append(Record::Qos2In {
            client: client("c"),
            pkid: 9,
        });
        queue_for_c(&store, 1, "t", b"x".to_vec());
    }
    store.shutdown().await;
    let (store, _) = Store::open(&cfg(&dir2, PersistenceMode::Durable)).unwrap();
    store
        .with_image(|img, _| {
            let s = &img.sessions[&client("c")];
            assert!(s.qos2_in.contains(&9) && s.queue.len() == 1);
        })
        .unwrap();
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir2).unwrap();
}

/// A retained update reaches the writer while the retained lock is held, even inside a
/// publisher's record batch: two publishers racing on the same topics (one inside a batch, with
/// many persistent subscribers so its batch stays open a while) leave the log with the same
/// retained message per topic as the broker's memory.
#[test]
fn retained_records_keep_the_retained_stores_order() {
    use crate::broker::Broker;
    use crate::locks::write;
    use crate::routing::SubEntry;
    use crate::session::SessionHandle;
    let dir = tempdir();
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    let broker =
        Arc::new(Broker::new(crate::config::Config::default(), None).with_store(store.clone()));
    let filter = TopicFilter::try_from("r/#").unwrap();
    for i in 0..100 {
        let id: ClientId = format!("s{i}").as_str().into();
        let handle = Arc::new(SessionHandle::new(id.clone(), 1_000_000, 1 << 30));
        handle
            .persistent
            .store(true, std::sync::atomic::Ordering::Relaxed);
        store.append(Record::Session {
            client: id.clone(),
            expiry: 600,
            username: None,
            will: None,
            since: 0,
        });
        let entry = SubEntry {
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
            identifier: None,
            handle,
            username: None,
            shared: None,
        };
        write(&broker.router.subscriptions).subscribe(&filter, id, entry);
    }
    const TOPICS: usize = 300;
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (broker, store, barrier) = (broker.clone(), store.clone(), barrier.clone());
            std::thread::spawn(move || {
                for i in 0..TOPICS {
                    let m = Arc::new(Message::new(
                        TopicName::try_from(format!("r/{i}").as_str()).unwrap(),
                        Bytes::from(vec![t as u8; 8]),
                        if t == 0 {
                            QoS::AtLeastOnce
                        } else {
                            QoS::AtMostOnce
                        },
                        true,
                        PublishProperties::default(),
                        "pub".into(),
                        Instant::now(),
                    ));
                    barrier.wait();
                    if t == 0 {
                        let _g = store.batch();
                        broker.router.publish(m);
                    } else {
                        broker.router.publish(m);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut in_memory = HashMap::new();
    crate::locks::read(&broker.router.retained).for_each_match(
        filter.match_filter(),
        |topic, m| {
            in_memory.insert(topic.to_string(), m.id);
        },
    );
    assert_eq!(in_memory.len(), TOPICS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.shutdown());
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    let differ = store
        .with_image(|img, _| {
            in_memory
                .iter()
                .filter(|(topic, id)| {
                    img.retained.get(&Str::try_from(topic.as_str()).unwrap()) != Some(*id)
                })
                .count()
        })
        .unwrap();
    assert_eq!(
        differ, 0,
        "topics whose logged retained message is not the broker's"
    );
    rt.block_on(store.shutdown());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The store counts what it wrote: every record, the bytes of the log, its writes and fsyncs.
#[tokio::test]
async fn the_store_counts_its_records_writes_and_fsyncs() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    for i in 0..10u64 {
        queue_for_c(&store, i + 1, "t", vec![b'x'; 10]);
    }
    assert!(store.ticket().unwrap().await.unwrap());
    let stats = store.stats();
    assert_eq!(
        stats.records,
        1 + 2 * 10,
        "the session, then a message and its entry each"
    );
    assert_eq!(
        stats.bytes,
        store.disk_bytes(),
        "a fresh log holds what was appended"
    );
    assert!(stats.writes >= 1 && stats.writes <= stats.records);
    assert!(stats.fsyncs >= 1, "durable: the ticket waited for an fsync");
    store.shutdown().await;
    assert_eq!(Store::disabled().stats(), StoreStats::default());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn policy(durable: bool) -> Policy {
    Policy {
        durable,
        lazy: Duration::from_millis(10),
        sync_interval: Duration::from_millis(1000),
    }
}

/// Durable: records nobody waits for are neither written nor fsynced until the oldest is
/// `lazy_commit` old; then both at once. Nothing held: nothing to do, no wake-up.
#[test]
fn durable_records_nobody_waits_for_wait_for_the_lazy_commit() {
    let p = policy(true);
    let t0 = Instant::now();
    let idle = Held::default();
    assert_eq!(p.wake_at(&idle), None, "idle: sleep until a command comes");
    assert_eq!(
        p.step(&idle, false, t0),
        Step {
            write: false,
            sync: false
        }
    );
    let held = Held {
        unwritten_since: Some(t0),
        unwritten_bytes: 100,
        unsynced_since: None,
    };
    assert_eq!(p.wake_at(&held), Some(t0 + Duration::from_millis(10)));
    for ms in [0, 1, 9] {
        assert_eq!(
            p.step(&held, false, t0 + Duration::from_millis(ms)),
            Step {
                write: false,
                sync: false
            },
            "{ms} ms: an acknowledgement record costs no write and no fsync of its own"
        );
    }
    assert_eq!(
        p.step(&held, false, t0 + Duration::from_millis(10)),
        Step {
            write: true,
            sync: true
        },
        "due: written and fsynced together"
    );
}

/// Durable: a ticket is answered by a group commit at once, taking every held record along.
#[test]
fn a_ticket_commits_everything_held_at_once() {
    let p = policy(true);
    let t0 = Instant::now();
    let held = Held {
        unwritten_since: Some(t0),
        unwritten_bytes: 100,
        unsynced_since: None,
    };
    assert_eq!(
        p.step(&held, true, t0),
        Step {
            write: true,
            sync: true
        }
    );
    // Written earlier (too many bytes to hold), not yet fsynced: the ticket fsyncs.
    let written = Held {
        unwritten_since: None,
        unwritten_bytes: 0,
        unsynced_since: Some(t0),
    };
    assert_eq!(
        p.step(&written, true, t0),
        Step {
            write: false,
            sync: true
        }
    );
    // Nothing held: the ticket is answered without an fsync.
    assert_eq!(
        p.step(&Held::default(), true, t0),
        Step {
            write: false,
            sync: false
        }
    );
}

/// Records held back past LAZY_MAX_BYTES are written at once, but fsynced only when due.
#[test]
fn many_held_bytes_are_written_but_not_fsynced_before_they_are_due() {
    let p = policy(true);
    let t0 = Instant::now();
    let mut held = Held {
        unwritten_since: Some(t0),
        unwritten_bytes: LAZY_MAX_BYTES,
        unsynced_since: None,
    };
    assert_eq!(
        p.step(&held, false, t0),
        Step {
            write: true,
            sync: false
        }
    );
    held.written();
    assert_eq!(
        held,
        Held {
            unwritten_since: None,
            unwritten_bytes: 0,
            unsynced_since: Some(t0)
        }
    );
    assert_eq!(
        p.wake_at(&held),
        Some(t0 + Duration::from_millis(10)),
        "the fsync is still due on time"
    );
}

/// Relaxed: a ticket only waits for the write; records nobody waits for are written when
/// due; fsyncs follow `sync_interval` after the oldest write.
#[test]
fn relaxed_tickets_write_and_fsyncs_follow_the_sync_interval() {
    let p = policy(false);
    let t0 = Instant::now();
    let held = Held {
        unwritten_since: Some(t0),
        unwritten_bytes: 100,
        unsynced_since: None,
    };
    assert_eq!(
        p.step(&held, true, t0),
        Step {
            write: true,
            sync: false
        }
    );
    assert_eq!(
        p.step(&held, false, t0 + Duration::from_millis(10)),
        Step {
            write: true,
            sync: false
        }
    );
    let written = Held {
        unwritten_since: None,
        unwritten_bytes: 0,
        unsynced_since: Some(t0),
    };
    assert_eq!(p.wake_at(&written), Some(t0 + Duration::from_millis(1000)));
    assert_eq!(
        p.step(&written, true, t0 + Duration::from_millis(999)),
        Step {
            write: false,
            sync: false
        }
    );
    assert_eq!(
        p.step(&written, false, t0 + Duration::from_millis(1000)),
        Step {
            write: false,
            sync: true
        }
    );
}

/// A record nobody waits for still reaches the disk by itself (the writer wakes when it is
/// due), and a burst of them costs far fewer fsyncs than records.
#[tokio::test]
async fn records_nobody_waits_for_reach_the_disk_in_few_fsyncs() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    assert!(store.ticket().unwrap().await.unwrap());
    let before = store.stats();
    for seq in 1..=2000u64 {
        store.append(Record::Skip {
            client: client("c"),
            seq,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats().records < before.records + 2000 || store.stats().fsyncs == before.fsyncs {
        assert!(Instant::now() < deadline, "held records never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fsyncs = store.stats().fsyncs - before.fsyncs;
    assert!(
        fsyncs < 100,
        "{fsyncs} fsyncs for 2000 records nobody waited for"
    );
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// How far a session's deliveries may have gone survives a crash and a compaction; the latest
/// record counts (a connection that ends cleanly sets it back).
#[tokio::test]
async fn the_sent_horizon_survives_recovery_and_compaction() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    assert_eq!(store.sent_horizon("c").await, 0);
    for seq in [8193, 16385] {
        store.append(Record::SentHorizon {
            client: client("c"),
            seq,
        });
    }
    assert!(store.ticket().unwrap().await.unwrap());
    assert_eq!(store.sent_horizon("c").await, 16385);
    assert_eq!(store.sent_horizon("unknown").await, 0);
    drop(store); // as after kill -9
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(store.sent_horizon("c").await, 16385, "recovered");
    store.compact().await;
    store.shutdown().await;
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    assert_eq!(store.sent_horizon("c").await, 16385, "kept by compaction");
    store.append(Record::SentHorizon {
        client: client("c"),
        seq: 3,
    });
    assert!(store.ticket().unwrap().await.unwrap());
    assert_eq!(store.sent_horizon("c").await, 3, "set back by a clean end");
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Replaying a log that went through a long queue (a crash: no compaction at shutdown) leaves
/// the image sized for what is live, not for the longest queue the log went through; a drain
/// gives the memory back as it goes, too.
#[tokio::test]
async fn the_image_gives_back_the_memory_of_a_drained_queue() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    const N: u64 = 20_000;
    const LEFT: u64 = 1_000;
    let mut ids = Vec::new();
    for seq in 1..=N {
        ids.push(queue_for_c(&store, seq, "t", vec![b'x'; 10]).id);
    }
    assert!(store.ticket().unwrap().await.unwrap());
    let sizes = |store: &Store| {
        store
            .with_image(|img, _| {
                let s = &img.sessions[&client("c")];
                (
                    s.queue.len(),
                    s.queue.capacity(),
                    img.messages.len(),
                    img.messages.capacity(),
                )
            })
            .unwrap()
    };
    let (_, full_queue_cap, _, full_map_cap) = sizes(&store);
    for seq in 1..=N - LEFT {
        store.append(Record::Sent {
            client: client("c"),
            seq,
            pkid: (seq % 60_000 + 1) as u16,
        });
        store.append(Record::Acked {
            client: client("c"),
            pkid: (seq % 60_000 + 1) as u16,
        });
    }
    assert!(store.ticket().unwrap().await.unwrap());
    let (len, cap, mlen, mcap) = sizes(&store);
    assert_eq!((len, mlen), (LEFT as usize, LEFT as usize));
    assert!(
        cap < full_queue_cap / 4 && mcap < full_map_cap / 4,
        "drained: queue {len}/{cap} (was {full_queue_cap}), messages {mlen}/{mcap} (was {full_map_cap})"
    );
    drop(store); // as after kill -9: the next start replays the whole log
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    let (len, cap, mlen, mcap) = sizes(&store);
    assert_eq!((len, mlen), (LEFT as usize, LEFT as usize));
    assert!(
        cap <= 2 * len && mcap <= 4 * mlen,
        "recovered: queue {len}/{cap}, messages {mlen}/{mcap}"
    );
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `$delayed` messages and priorities: the records round-trip, hold their message while they
/// wait, survive a crash and compaction, and let go of the message once done.
#[tokio::test]
async fn delayed_messages_and_priorities_survive_recovery_and_compaction() {
    let now = Instant::now();
    for rec in [
        Record::Delayed {
            id: 7,
            due: 1_700_000_000_123,
        },
        Record::DelayedDone { id: 7 },
        Record::Priority {
            id: 7,
            priority: 200,
        },
    ] {
        let mut buf = BytesMut::new();
        encode_record(&rec, &mut buf);
        let back = decode_record(Bytes::copy_from_slice(&buf[8..]), now).unwrap();
        assert_eq!(format!("{back:?}"), format!("{rec:?}"));
    }
    let dir = tempdir();
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    let waiting = msg("later/a", b"waits", QoS::AtLeastOnce);
    let done = msg("later/b", b"went", QoS::AtLeastOnce);
    for (m, due) in [(&waiting, 1_700_000_000_000u64), (&done, 1_700_000_000_001)] {
        store.append(Record::Message(m.clone()));
        store.append(Record::Priority {
            id: m.id,
            priority: 9,
        });
        store.append(Record::Delayed { id: m.id, due });
    }
    store.append(Record::DelayedDone { id: done.id });
    assert!(store.ticket().unwrap().await.unwrap());
    let check = |store: &Store, what: &str| {
        store
            .with_image(|image, load| {
                assert_eq!(
                    image.delayed.iter().collect::<Vec<_>>(),
                    vec![(&waiting.id, &1_700_000_000_000)],
                    "{what}"
                );
                assert!(image.messages.contains_key(&waiting.id), "{what}");
                assert!(!image.messages.contains_key(&done.id), "released: {what}");
                assert_eq!(image.priority(waiting.id), 9, "{what}");
                assert_eq!(image.priority(done.id), 0, "{what}");
                let back = load(waiting.id).unwrap();
                assert_eq!(back.payload, waiting.payload, "{what}");
                assert_eq!(back.priority, 9, "read back with its priority: {what}");
            })
            .unwrap();
    };
    check(&store, "live");
    drop(store); // as after kill -9
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    check(&store, "recovered");
    assert_eq!(
        store.load_blocking(&[waiting.id])[0]
            .as_ref()
            .unwrap()
            .priority,
        9
    );
    store.compact().await;
    store.shutdown().await;
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    check(&store, "compacted");
    store.append(Record::DelayedDone { id: waiting.id });
    assert!(store.ticket().unwrap().await.unwrap());
    store
        .with_image(|image, _| {
            assert!(image.delayed.is_empty());
            assert!(
                image.messages.is_empty(),
                "nothing holds the message any more"
            );
            assert!(image.priorities.is_empty());
        })
        .unwrap();
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
/// A drain's records inside one batch: the `Sent`s of the PUBLISHes written at once become one
/// `SentMany`, the `Acked`s of the PUBACKs read at once one `AckedMany` (one record each for
/// the writer), another client's record in between starts a new run, and replaying the log
/// gives the same session as applying the records one by one would.
#[tokio::test]
async fn a_batchs_sent_and_acked_records_are_merged_into_runs() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    store.append(Record::Session {
        client: client("d"),
        expiry: 60,
        username: None,
        will: None,
        since: 0,
    });
    let msgs: Vec<_> = (1..=6u64)
        .map(|seq| queue_for_c(&store, seq, "t", vec![b'x'; 10]))
        .collect();
    store.compact().await; // everything so far written: the counts below are the batches'
    let before = store.stats();
    {
        let _b = store.batch();
        // Through the journal (merged in place, Store::append_run) and as records (merged by
        // push_merged, as a Pending logged later is): one run either way.
        for (i, seq) in (1..=5u64).enumerate() {
            if i % 2 == 0 {
                store.delivery_sent(&client("c"), seq, 10 + i as u16);
            } else {
                store.append(Record::Sent {
                    client: client("c"),
                    seq,
                    pkid: 10 + i as u16,
                });
            }
        }
        // Another client's record ends the run; c's next Sent starts a new one.
        store.append(Record::SentHorizon {
            client: client("d"),
            seq: 1,
        });
        store.append(Record::Sent {
            client: client("c"),
            seq: 6,
            pkid: 15,
        });
    }
    {
        let _b = store.batch();
        store.delivery_acked(&client("c"), 10);
        store.append(Record::Acked {
            client: client("c"),
            pkid: 12,
        });
        store.delivery_acked(&client("c"), 11);
    }
    store.ticket().unwrap().await.unwrap();
    assert_eq!(
        store.backlog(),
        0,
        "a batch's records counted once, and taken off once"
    );
    // What the log got: one frame with SentMany(5), SentHorizon, SentMany(1), and AckedMany(3).
    let (c, d) = (client("c"), client("d"));
    let mut want = BytesMut::new();
    let sent = [
        Record::SentMany {
            client: c.clone(),
            sent: (1..=5u64).map(|seq| (seq, 9 + seq as u16)).collect(),
        },
        Record::SentHorizon { client: d, seq: 1 },
        Record::SentMany {
            client: c.clone(),
            sent: vec![(6, 15)],
        },
    ];
    encode_batch(sent.iter(), &mut want);
    let acked = Record::AckedMany {
        client: c,
        pkids: vec![10, 12, 11],
    };
    encode_record(&acked, &mut want);
    let after = store.stats();
    assert_eq!(after.bytes - before.bytes, want.len() as u64, "merged runs");
    assert_eq!(
        after.records - before.records,
        10,
        "a run counts as the records it holds"
    );
    let expect = |store: &Store| {
        let (_, queue, inflight) = session_c(store);
        assert!(queue.is_empty());
        let pkids: Vec<u16> = inflight
            .iter()
            .map(|i| match i {
                InflightImage::Publish { pkid, .. } | InflightImage::Release { pkid } => *pkid,
            })
            .collect();
        assert_eq!(
            pkids,
            vec![13, 14, 15],
            "sent in order, the acked ones gone"
        );
        let live: Vec<bool> = store
            .with_image(|img, _| {
                msgs.iter()
                    .map(|m| img.messages.contains_key(&m.id))
                    .collect()
            })
            .unwrap();
        assert_eq!(live, vec![false, false, false, true, true, true]);
    };
    expect(&store);
    drop(store); // no shutdown: replayed as a crash leaves it
    let (store, _) = Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap();
    expect(&store);
    store.compact().await;
    let (store, _) = {
        store.shutdown().await;
        Store::open(&cfg(&dir, PersistenceMode::Durable)).unwrap()
    };
    expect(&store);
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Messages read back share a topic or client id equal to the previous message's, and still
/// come back exactly as written when those change, with and without properties.
#[tokio::test]
async fn messages_read_back_are_equal_to_those_written() {
    let dir = tempdir();
    let store = store_with_session(&dir);
    let plain = |topic: &str, origin: &str| {
        Arc::new(Message::new(
            TopicName::try_from(topic).unwrap(),
            Bytes::from(format!("{topic} from {origin}")),
            QoS::AtLeastOnce,
            true,
            PublishProperties::default(),
            origin.into(),
            Instant::now(),
        ))
    };
    let mut with_props = (*msg("a/b", b"props", QoS::ExactlyOnce)).clone();
    with_props.expires_at = None;
    with_props.properties.message_expiry_interval = None;
    let msgs = [
        plain("a/b", "p1"),
        plain("a/b", "p1"),
        plain("a/c", "p1"),
        plain("a/b", "p2"),
        Arc::new(with_props),
        plain("a/b", "p2"),
    ];
    for (i, m) in msgs.iter().enumerate() {
        store.append(Record::Message(m.clone()));
        store.append(Record::Enqueue {
            client: client("c"),
            seq: i as u64 + 1,
            id: m.id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            shared: None,
        });
    }
    let got = store.load(msgs.iter().map(|m| m.id).collect()).await;
    for (want, got) in msgs.iter().zip(got) {
        assert_eq!(**want, *got.expect("read back"));
    }
    store.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A due compaction waits while a drain shrinks the live data by an eighth or more every
/// DRAIN_WATCH and the log grows by less than a quarter; it runs once the drain stops, once
/// the log grows too much, and at once near the disk limit.
#[test]
fn a_due_compaction_waits_while_a_drain_shrinks_the_live_data() {
    let t0 = Instant::now();
    let at = |n: u32| t0 + DRAIN_WATCH * n;
    let first = put_off_compaction(None, 1000, 8000, false, t0);
    assert_eq!(
        first,
        Some(PutOff {
            at: t0,
            live: 1000,
            size: 8000
        }),
        "first due: looks again after DRAIN_WATCH"
    );
    let same = put_off_compaction(first, 100, 8000, false, t0 + DRAIN_WATCH / 2);
    assert_eq!(same, first, "not looked at again before DRAIN_WATCH");
    // Draining: 1000 -> 800 -> 600 live bytes.
    let p = put_off_compaction(first, 800, 8100, false, at(1));
    assert_eq!(p.map(|p| (p.live, p.size)), Some((800, 8000)));
    let p = put_off_compaction(p, 600, 8200, false, at(2));
    assert!(p.is_some(), "still draining");
    assert_eq!(
        put_off_compaction(p, 590, 8200, false, at(3)),
        None,
        "the drain slowed: compact now"
    );
    assert_eq!(
        put_off_compaction(p, 100, 10_000, false, at(3)),
        None,
        "the log grew by a quarter: compact now"
    );
    assert_eq!(
        put_off_compaction(None, 1000, 8000, true, t0),
        None,
        "near the disk limit: never put off"
    );
}

/// A group queue as long as a burst (issue 13: 1,000,000 orders into two shaped groups) costs
/// the image 16 bytes per waiting delivery, not a session entry's 48.
#[test]
fn a_stored_group_queue_entry_is_16_bytes() {
    assert_eq!(std::mem::size_of::<super::GroupQueuedImage>(), 16);
    assert!(std::mem::size_of::<super::QueuedImage>() > 16);
}

/// QoS, RETAIN and the delivery number come back as they were packed.
#[test]
fn a_stored_group_queue_entry_keeps_its_fields() {
    use super::GroupQueuedImage as G;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for retain in [false, true] {
            for seq in [1, 2, 1 << 40, (1 << 61) - 1] {
                let g = G::new(seq, 77, qos, retain).unwrap();
                assert_eq!((g.seq(), g.id, g.qos(), g.retain()), (seq, 77, qos, retain));
            }
        }
    }
    assert!(G::new(1 << 61, 1, QoS::AtLeastOnce, false).is_none());
}
