//! Durable state: a write-ahead log with group commit, replayed at start-up.
//!
//! # Design, and why
//! Sluice keeps its live state in memory (sessions, queues, retained messages) and writes every
//! change that must survive a crash as a small [`Record`] to an append-only log in
//! `persistence.dir`. Records come from the connection tasks without waiting (an unbounded
//! channel whose backlog is counted in bytes; connections stop reading while it is above a high
//! water mark, so the channel is bounded by back-pressure) and are written by one dedicated
//! writer thread, never by a connection task. The writer takes everything queued at that moment,
//! writes it with one `write` and, in `durable` mode, makes it durable with one `fdatasync`:
//! *group commit*, so the cost of an fsync is shared by every message of every connection that
//! arrived meanwhile. A connection that must not acknowledge before its records are safe asks
//! for a *ticket*; the writer answers tickets after the write (`relaxed`) or after the fsync
//! (`durable`) that covers every record appended before it.
//!
//! Why a log of our own rather than an embedded database: the hot path is append-only and
//! needs exactly one fsync per batch; a B-tree store (redb was measured at ~720 durable
//! commits/s here) pays a page-tree commit per transaction, and an LSM store (fjall) lost
//! acknowledged data under its default durability in the measurements quoted in the issue. A log
//! plus periodic snapshot is the smallest design that meets "acknowledged means fsynced" at
//! group-commit throughput, with a format we can checksum and recover exactly.
//!
//! The writer keeps an [`Image`] of the persistent state, built by applying each record (the
//! same code replays the log at start-up). The image is metadata only: for each message it
//! keeps where its record sits in the log ([`MsgSlot`]) and how many queue entries, inflight
//! entries and retained topics refer to it. That is what lets a session's queue live on disk:
//! past `persistence.queue_memory_bytes` a session keeps only the message id of a queued
//! delivery, and its connection reads the message back ([`Store::load`], positioned reads on a
//! blocking thread, checksum verified) when the queue drains to it. When the log grows well past
//! the live data, the writer *compacts*: it streams the live message records (copied frame by
//! frame, not decoded) and the image's other records into a fresh log file, fsyncs it, switches
//! `CURRENT` to it (write + rename + directory fsync) and deletes the old file; readers holding
//! the old file can finish their reads. Each message's payload is stored once per log file
//! however many sessions queue it (`Enqueue` records name it by id). Records after an `Enqueue`
//! name the *delivery* by the session's number for it (`seq`), since one message can be queued
//! twice for one session.
//!
//! # The journal
//! The rest of the broker does not build records: it calls the [`Store`] method named for the
//! event (`persist/journal.rs`: `message_stored`, `message_queued`, `delivery_sent`,
//! `delivery_acked`, `delivery_released`, `qos2_received`, `qos2_released`, `session_opened`,
//! `session_parked`, `session_gone`, `subscribed`, `unsubscribed`, `retained_set`,
//! `retained_cleared`, `group_queued`, `group_taken`, `delayed_stored`, `delayed_done`,
//! `sent_horizon_logged`, `delivery_skipped`), each appending the one record of the table below
//! (`message_stored`: `Message`, and `Priority` when not 0). A record that must be carried and
//! logged later is a [`Pending`] ([`Store::log_pending`]). Only this module names [`Record`]
//! (`broker/tests/module_layers.rs` checks it).
//!
//! # What waits for the disk
//! `durable` promises that nothing *acknowledged* is lost, not that every record is on disk at
//! once. A connection about to send a packet whose promise rests on records it logged (an
//! acknowledgement, a QoS 2 PUBLISH...) holds the packet back and asks for a ticket; the writer
//! answers tickets with a group commit: one write and one fsync of everything taken in so far.
//! Records that no packet waits for are not worth an fsync of their own: they wait, unwritten,
//! for the next group commit, or at most `persistence.lazy_commit` ms (10). Appending one does
//! not even wake the writer; a ticket does (the writer sleeps until the oldest held record is
//! due). So a consumer's acknowledgements cost an fsync per `lazy_commit`, not one each. Per
//! record kind:
//!
//! | record | logged when | held until it is safe | if a crash loses it |
//! |---|---|---|---|
//! | `Message`, `Enqueue`, `GroupEnqueue`, `Retain` of a QoS 1/2 PUBLISH | PUBLISH received | PUBACK / PUBREC | nothing: it was not acknowledged |
//! | `Qos2In` | QoS 2 PUBLISH received | PUBREC | nothing: not acknowledged |
//! | `Qos2InDone` | PUBREL received | PUBCOMP: else the id stays taken and a new PUBLISH reusing it is dropped as a resend | - |
//! | `Released` | PUBREC received | PUBREL: else the PUBLISH is resent after the receiver let its id go, and delivered twice [MQTT-4.3.3] | - |
//! | `Sent` of a QoS 2 delivery | before the PUBLISH | the PUBLISH: its packet id must be on disk before the receiver can see it, or a resend would come as a new message | - |
//! | `Subscribe`, `Unsubscribe` | SUBSCRIBE / UNSUBSCRIBE | SUBACK / UNSUBACK | - |
//! | `SentHorizon` | before a delivery numbered past the last one on disk | that PUBLISH (the connection looks ahead, so it rarely waits) | - |
//! | `Sent` of a QoS 1 delivery (`SentMany` for those written at once) | PUBLISH sent | nothing | the message is sent again after the restart, with DUP |
//! | `Acked` (`AckedMany` for those read at once) | PUBACK / PUBCOMP received | nothing | the PUBLISH is resent with DUP, or the PUBREL again (both allowed) |
//! | `Skip` | a delivery dropped unsent (expired, too large, moved, read error) | nothing | it is considered again after the restart |
//! | `GroupTaken` with the member's `Enqueue` (one frame) | a group queue hands a message over | nothing | the message is back in the group queue |
//! | `Session`, `SessionGone` | CONNECT, connection end | nothing (CONNACK is not held) | the session as logged before: its clock starts at the restart; a session discarded by a clean start comes back until the client's next clean start |
//! | anything of a QoS 0 PUBLISH, a will | - | nothing | QoS 0 is at most once |
//!
//! A held packet also holds every packet after it on that connection (order is kept). In
//! `relaxed` mode a ticket only waits for the write, and fsyncs come every `sync_interval`.
//!
//! # What a drain costs
//! A backlog drained from the log costs more CPU than one drained from memory: each message is
//! read back, and each delivery is logged as sent and as acknowledged. Measured with callgrind
//! and the durability bench (issue 16, `bench/results/durability-drain.md`), these were made
//! cheap rather than removed, since each is what makes the drain durable:
//! * reading back: spans of the log at once (`read_messages`, into a span buffer each thread
//!   keeps), decoded by a `MessageDecoder` that copies out only the payload and shares a topic
//!   and a client id equal to the previous message's, instead of validating and allocating them
//!   per message; the messages are put back into the queue by position
//!   (`Outbox::warm_in_order`), not through a map. What is left per message is the checksum
//!   and one allocation (the message); a drain's small payloads (`Store::load_drain`) are
//!   copied into shared 2 KiB blocks, one allocation per block (a payload kept alone pins at
//!   most its block), other read-backs box each payload with its reference count in a size
//!   class of at most half its size again (`payload_bytes`), so that the PUBLISH's clone of
//!   it does not allocate again: about 1,000 instructions with the read. Reading in
//!   the connection task from the page cache (`preadv2` with `RWF_NOWAIT`) instead of on the
//!   blocking pool was tried: half the context switches, but more instructions (the
//!   allocations then met the frees of the same thread's acknowledged messages in glibc's
//!   slower paths) and no measurable CPU time, so the pool stays;
//! * logging: the `Sent`s of the PUBLISHes a connection writes at once, and the `Acked`s of the
//!   PUBACKs it reads at once, are merged into one `SentMany` / `AckedMany` record (the
//!   connection hands over a drain turn's `Sent`s as one vector, `Store::deliveries_sent`; the
//!   `Acked`s join the run in place, `Store::append_run` inside a [`Batch`]): 10 + 2 bytes
//!   per delivery, and one lookup of the session per batch on the
//!   writer's side, whose image takes them from the front of the queue and of the inflight
//!   list. Merging them further, into one record per delivered-and-acknowledged message, would
//!   need the connection to hold its `Sent`s back until the PUBACK or a timer, for a saving of
//!   a few bytes per message;
//! * compaction: once the log was 4x its live data it copied the live messages into a new log
//!   file, in a drain the queue's tail, about to be acknowledged (52 MB of a 1,000,000-message
//!   drain: about a fifth of the drain's CPU, kernel included). A due compaction now
//!   waits while a drain shrinks the live data quickly (`put_off_compaction` in `writer.rs`),
//!   and then copies what is left. A steady live set (a long queue that does not drain, retained
//!   messages) is still copied at each compaction: not copying message bodies at all needs a
//!   segmented log (messages in segment files, each deleted once none of its messages is live,
//!   and a small-record log that compaction rewrites), a change of the format and of recovery
//!   left for an issue of its own.
//!
//! # Redeliveries after a crash carry DUP
//! A PUBLISH the broker may have sent before must go out with DUP = 1 [MQTT-3.3.1-1]. A QoS 1
//! `Sent` record does not hold its PUBLISH, so a crash can lose it while the client got the
//! message: the delivery is then back in the queue, not in flight. So before a delivery goes
//! out, the log must say that it *may* have: a connection logs a `SentHorizon` ("deliveries
//! numbered up to H may have been sent") and sends a delivery numbered past the last horizon
//! known to be on disk only behind a ticket. It logs the next horizon 8192 deliveries ahead
//! ([`SENT_HORIZON_AHEAD`]) when half of that is left, with a ticket of its own that the
//! connection does not wait behind, so a drain rarely stops for it: about one horizon record
//! and one ticket per 4096 deliveries. After a restart, a queued delivery numbered up to the
//! recovered horizon goes out with DUP; at most 8192 per session that was sending at the crash
//! carry it without having gone out (DUP says "may be a redelivery", and they might have
//! been). A connection that ends cleanly has logged every `Sent`, so it sets the horizon
//! back to what it recovered. Deliveries taken from a group queue are numbered when taken,
//! after everything queued for the session, so sending one moves the horizon past the whole
//! queue: after a crash, that session's queue comes with DUP.
//!
//! # Format
//! `CURRENT` holds the name of the live log file (`wal-NNNNNNNN.log`). A log file is a sequence
//! of frames `[len: u32 LE][crc32 of payload: u32 LE][payload]`; the payload is a tag byte and the
//! record's fields. At start-up a bad checksum or a short frame at the *end* of the live file
//! is a torn write from the crash: the file is truncated there and the recovery logged with
//! the file, offset and record counts. Anything else unreadable stops start-up with the file
//! and the reason: a store is never silently opened empty.

mod batch;
mod compaction;
mod error;
mod format;
mod image;
mod journal;
mod readback;
mod recovery;
mod writer;

use std::fs::{File, OpenOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::{PersistenceConfig, PersistenceMode};
use crate::message::Message;
use crate::stats::Histogram;

pub use self::batch::Batch;
use self::batch::*;
pub use self::error::*;
pub use self::format::*;
pub use self::image::*;
pub use self::journal::Pending;
use self::readback::*;
pub use self::recovery::*;
use self::writer::*;

// Names `tests.rs` (`use super::*`) took from here before the split.
use crate::message::ClientId;
#[cfg(test)]
use {
    std::collections::HashMap,
    std::path::{Path, PathBuf},
};

/// Connections stop reading while this many bytes of records wait for the writer.
pub const BACKLOG_HIGH_WATER: usize = 64 * 1024 * 1024;
/// How far ahead of the delivery being sent a connection logs its [`Record::SentHorizon`].
pub const SENT_HORIZON_AHEAD: u64 = 8192;

enum Cmd {
    Rec(Record),
    /// Records that must reach the log together (one batch, one write): the effects of one
    /// PUBLISH, a hand-over from a group queue to a member.
    Recs(Vec<Record>),
    /// Answer once everything before it is written (relaxed) or fsynced (durable).
    Ticket(oneshot::Sender<bool>),
    /// Answer once everything before it is in the image (nothing written or fsynced for it).
    Applied(oneshot::Sender<()>),
    /// Compact now (tests, and an operator's wish after a large backlog drained).
    Compact(oneshot::Sender<()>),
    /// Flush, fsync and stop.
    Shutdown(oneshot::Sender<()>),
}

/// The image and the file to read message records from; the writer changes both, readers
/// look up where a message is and read it without holding the lock.
struct State {
    image: Image,
    /// A read-only handle on the live log (after compaction: on the new one; readers holding
    /// the old one can still finish, the file is gone only once they drop it).
    reader: Arc<File>,
}

struct Shared {
    /// `std::sync::mpsc::Sender` is `Sync`: every connection task sends through it without a
    /// lock of ours (it is a lock-free list inside).
    tx: mpsc::Sender<Cmd>,
    /// Approximate bytes of records not yet written (back-pressure).
    backlog: AtomicUsize,
    /// Set when the disk is full or a write failed: QoS 1/2 that need storing are refused.
    failed: AtomicBool,
    /// Bytes on disk (log file), for `persistence.max_disk_bytes`.
    disk_bytes: AtomicU64,
    /// Past this many bytes new QoS 1/2 messages that need storing are refused up front (0x97),
    /// leaving headroom below `max_disk_bytes` for what is already in flight.
    soft_limit: u64,
    mode: PersistenceMode,
    state: Mutex<State>,
    /// What the writer has done so far ([`Store::stats`]).
    counters: Counters,
    /// The writer thread, to wake it when something waits for it (it sets this itself).
    writer: std::sync::OnceLock<std::thread::Thread>,
}

/// The writer's counters (relaxed atomics: statistics, read at any time; written by the writer
/// thread only, so no striping).
#[derive(Debug)]
struct Counters {
    fsyncs: AtomicU64,
    writes: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    /// Compactions that replaced the log.
    compactions: AtomicU64,
    /// How long each fsync of the log took, in microseconds.
    fsync_us: Histogram,
    /// Records each fsync of the log made durable (the group commit's batch).
    commit_records: Histogram,
}

/// Bucket bounds of the fsync latency histogram, microseconds (50 µs .. 1 s).
pub const FSYNC_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];
/// Bucket bounds of the group-commit batch histogram, records per fsync.
pub const COMMIT_BOUNDS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384];

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            fsyncs: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            fsync_us: Histogram::new(&FSYNC_BOUNDS_US),
            commit_records: Histogram::new(&COMMIT_BOUNDS),
        }
    }
}

/// The store's histograms as [`Store::histograms`] reads them: (bounds, per-bucket counts with
/// `+Inf` last, sum).
pub type HistogramSnapshot = (&'static [u64], Vec<u64>, u64);

/// What the store has done since it was opened: [`Store::stats`], and the `store closed` log
/// line at shutdown (README, Durability).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// fsync/fdatasync calls: the log's group commits, plus those of compaction (the new log,
    /// `CURRENT` and the directory).
    pub fsyncs: u64,
    /// `write` calls appending to the log.
    pub writes: u64,
    /// Records appended to the log (a message, a queue entry, an acknowledgement...; a
    /// `SentMany` or `AckedMany` counts as the deliveries or acknowledgements it holds).
    pub records: u64,
    /// Bytes appended to the log (compaction's rewrites not included).
    pub bytes: u64,
    /// Compactions that replaced the log.
    pub compactions: u64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `cmd`, which somebody waits for: the writer must not sleep on it.
    fn send_waking(&self, cmd: Cmd) -> bool {
        let sent = self.tx.send(cmd).is_ok();
        if let Some(w) = self.writer.get() {
            w.unpark();
        }
        sent
    }
}
/// A handle to the store; cheap to clone. A disabled store (`memory` mode) does nothing.
#[derive(Clone, Default)]
pub struct Store {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl Store {
    /// The `memory` mode store.
    pub fn disabled() -> Store {
        Store { shared: None }
    }

    /// Opens (creating if needed) the store in `cfg.dir`, replays it, and starts the writer.
    /// Returns the store and what recovery did; [`Store::with_image`] shows what was recovered.
    pub fn open(cfg: &PersistenceConfig) -> Result<(Store, Recovery), StoreError> {
        if cfg.mode == PersistenceMode::Memory {
            return Ok((Store::disabled(), Recovery::default()));
        }
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir, "create"))?;
        let now = Instant::now();
        let (image, number, recovery, size) = recover(&dir, now)?;
        crate::message::ensure_ids_above(image.max_id);
        let path = dir.join(log_name(number));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path, "open for writing"))?;
        let reader = File::open(&path).map_err(io_err(&path, "open for reading"))?;
        if !dir.join("CURRENT").exists() {
            // The (empty) log exists on disk before CURRENT names it.
            file.sync_all()
                .and_then(|()| sync_dir(&dir))
                .map_err(io_err(&path, "sync"))?;
            write_current(&dir, number).map_err(io_err(&dir.join("CURRENT"), "write"))?;
        }
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            tx,
            backlog: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            disk_bytes: AtomicU64::new(size),
            soft_limit: soft_limit(cfg.max_disk_bytes),
            mode: cfg.mode,
            state: Mutex::new(State {
                image,
                reader: Arc::new(reader),
            }),
            counters: Counters::default(),
            writer: std::sync::OnceLock::new(),
        });
        let writer = Writer {
            dir,
            number,
            file,
            size,
            compacted_size: size,
            shared: shared.clone(),
            sync_interval: Duration::from_millis(cfg.sync_interval),
            lazy_commit: Duration::from_millis(cfg.lazy_commit),
            max_disk_bytes: cfg.max_disk_bytes,
            compact_min_bytes: cfg.compact_min_bytes,
            full: false,
            unsynced_records: 0,
        };
        std::thread::Builder::new()
            .name("sluice-store".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&cfg.dir, "start the writer thread"))?;
        Ok((
            Store {
                shared: Some(shared),
            },
            recovery,
        ))
    }

    /// Calls `f` with the persistent state and a function that reads a message back from the
    /// log (start-up uses it to rebuild sessions). None for a disabled store.
    pub fn with_image<R>(
        &self,
        f: impl FnOnce(&Image, &dyn Fn(u64) -> Option<Arc<Message>>) -> R,
    ) -> Option<R> {
        let s = self.shared.as_ref()?;
        let state = s.state();
        let now = Instant::now();
        let load = |id: u64| {
            let slot = state.image.messages.get(&id)?;
            match read_message(&state.reader, slot, now) {
                Ok(m) => Some(with_priority(m, state.image.priority(id))),
                Err(e) => {
                    tracing::error!(id, error = %e, "cannot read a stored message back");
                    None
                }
            }
        };
        Some(f(&state.image, &load))
    }

    /// Reads messages back from the log (blocking file reads: call from a blocking thread).
    /// None for a message the log does not have (yet: its record may still be on its way to
    /// the writer; see [`Store::load`]).
    pub fn load_blocking(&self, ids: &[u64]) -> Vec<Option<Arc<Message>>> {
        self.read_back(ids, false)
    }

    /// Reads messages back (see [`Store::load_blocking`]); with `shared_blocks`, small payloads
    /// share allocations (see [`Store::load_drain`]).
    fn read_back(&self, ids: &[u64], shared_blocks: bool) -> Vec<Option<Arc<Message>>> {
        let Some(s) = &self.shared else {
            return vec![None; ids.len()];
        };
        let (reader, slots, priorities): (Arc<File>, Vec<Option<MsgSlot>>, Vec<u8>) = {
            let state = s.state();
            let slots = ids
                .iter()
                .map(|id| state.image.messages.get(id).copied())
                .collect();
            // Nothing to look up while no message has a priority (none configured).
            let priorities = if state.image.priorities.is_empty() {
                Vec::new()
            } else {
                ids.iter().map(|id| state.image.priority(*id)).collect()
            };
            (state.reader.clone(), slots, priorities)
        };
        let mut out = read_messages(&reader, &slots, Instant::now(), shared_blocks);
        for (m, p) in out.iter_mut().zip(priorities) {
            if let Some(msg) = m.take() {
                *m = Some(with_priority(msg, p));
            }
        }
        out
    }

    /// Reads messages back from the log on the blocking pool. A message whose record has not
    /// reached the file yet is read again once the writer has written everything appended so
    /// far; None only for a message the log cannot give back.
    pub async fn load(&self, ids: Vec<u64>) -> Vec<Option<Arc<Message>>> {
        self.load_shared(ids, false).await
    }

    /// [`Store::load`] for messages a drain sends now and drops when they are acknowledged:
    /// small payloads read back together share one allocation per 2 KiB block instead of one
    /// each (a payload kept alone keeps at most its block alive; issue 16). Not for messages
    /// that may stay in memory long.
    pub async fn load_drain(&self, ids: Vec<u64>) -> Vec<Option<Arc<Message>>> {
        self.load_shared(ids, true).await
    }

    async fn load_shared(&self, ids: Vec<u64>, shared_blocks: bool) -> Vec<Option<Arc<Message>>> {
        let store = self.clone();
        let (ids, mut out) = match tokio::task::spawn_blocking(move || {
            let r = store.read_back(&ids, shared_blocks);
            (ids, r)
        })
        .await
        {
            Ok(r) => r,
            Err(_) => return Vec::new(),
        };
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return out;
        }
        if let Some(t) = self.ticket() {
            let _ = t.await;
        }
        let store = self.clone();
        let again: Vec<u64> = missing.iter().map(|&i| ids[i]).collect();
        if let Ok(found) =
            tokio::task::spawn_blocking(move || store.read_back(&again, shared_blocks)).await
        {
            for (i, m) in missing.into_iter().zip(found) {
                out[i] = m;
            }
        }
        out
    }

    /// Whether anything is persisted.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether acknowledgements wait for the store (durable and relaxed modes).
    pub fn holds_acks(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether the store can take new messages (not failed, and the log below the soft limit
    /// under `persistence.max_disk_bytes`; compaction can bring it back under).
    pub fn accepting(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| {
            !s.failed.load(Ordering::Relaxed) && s.disk_bytes.load(Ordering::Relaxed) < s.soft_limit
        })
    }

    /// Queues a record for the writer. Never blocks.
    pub fn append(&self, rec: Record) {
        let Some(s) = &self.shared else { return };
        let rec = BATCH.with(|g| match g.borrow_mut().as_mut() {
            Some(b) => {
                b.cost += record_cost(&rec);
                push_merged(&mut b.recs, rec);
                None
            }
            None => Some(rec),
        });
        if let Some(rec) = rec {
            s.backlog.fetch_add(record_cost(&rec), Ordering::Relaxed);
            let _ = s.tx.send(Cmd::Rec(rec));
        }
    }

    /// Appends a delivery sent or acknowledged (QoS 1/2). Inside a batch it joins the batch's
    /// run for `client` in place, as [`push_merged`] would, without building a record or
    /// cloning the client id: a drain appends two of these per message (issue 16).
    pub(super) fn append_run(&self, client: &ClientId, item: RunItem) {
        let Some(s) = &self.shared else { return };
        let merged = BATCH.with(|g| {
            let mut g = g.borrow_mut();
            let Some(b) = g.as_mut() else { return false };
            b.cost += RUN_ITEM_COST;
            match (b.recs.last_mut(), item) {
                (Some(Record::SentMany { client: c, sent }), RunItem::Sent { seq, pkid })
                    if same_client(c, client) =>
                {
                    sent.push((seq, pkid));
                }
                (Some(Record::AckedMany { client: c, pkids }), RunItem::Acked { pkid })
                    if same_client(c, client) =>
                {
                    pkids.push(pkid);
                }
                (_, RunItem::Sent { seq, pkid }) => {
                    let mut sent = Vec::with_capacity(RUN_CAPACITY);
                    sent.push((seq, pkid));
                    b.recs.push(Record::SentMany {
                        client: client.clone(),
                        sent,
                    });
                }
                (_, RunItem::Acked { pkid }) => {
                    let mut pkids = Vec::with_capacity(RUN_CAPACITY);
                    pkids.push(pkid);
                    b.recs.push(Record::AckedMany {
                        client: client.clone(),
                        pkids,
                    });
                }
            }
            true
        });
        if !merged {
            s.backlog.fetch_add(RUN_ITEM_COST, Ordering::Relaxed);
            let client = client.clone();
            let rec = match item {
                RunItem::Sent { seq, pkid } => Record::Sent { client, seq, pkid },
                RunItem::Acked { pkid } => Record::Acked { client, pkid },
            };
            let _ = s.tx.send(Cmd::Rec(rec));
        }
    }

    /// Appends deliveries sent at once as one `SentMany` (see [`Store::deliveries_sent`]): inside
    /// a batch it joins the batch's last record when that is a run of `client`'s, as
    /// [`Store::append_run`] would for each; the run's vector is moved, not copied.
    pub(super) fn append_sent_many(&self, client: &ClientId, sent: Vec<(u64, u16)>) {
        self.append_many(
            client,
            sent,
            |r, client| match r {
                Record::SentMany { client: c, sent } if same_client(c, client) => Some(sent),
                _ => None,
            },
            |client, sent| Record::SentMany { client, sent },
        );
    }

    /// Appends acknowledgements read at once as one `AckedMany` (see
    /// [`Store::deliveries_acked`]), as [`Store::append_sent_many`] does for deliveries.
    pub(super) fn append_acked_many(&self, client: &ClientId, pkids: Vec<u16>) {
        self.append_many(
            client,
            pkids,
            |r, client| match r {
                Record::AckedMany { client: c, pkids } if same_client(c, client) => Some(pkids),
                _ => None,
            },
            |client, pkids| Record::AckedMany { client, pkids },
        );
    }

    /// One run record of `client`'s `items`: joined to the open batch's last record when
    /// `run_of` finds it is `client`'s run of the same kind, else pushed (`make`) to the batch,
    /// or sent to the writer when this thread has no batch open.
    fn append_many<T: Copy>(
        &self,
        client: &ClientId,
        items: Vec<T>,
        run_of: impl for<'r> Fn(&'r mut Record, &ClientId) -> Option<&'r mut Vec<T>>,
        make: impl Fn(ClientId, Vec<T>) -> Record,
    ) {
        let Some(s) = &self.shared else { return };
        let cost = RUN_ITEM_COST * items.len();
        let rest = BATCH.with(|g| {
            let mut g = g.borrow_mut();
            let Some(b) = g.as_mut() else {
                return Some(items);
            };
            b.cost += cost;
            match b.recs.last_mut().and_then(|r| run_of(r, client)) {
                Some(run) => run.extend_from_slice(&items),
                None => b.recs.push(make(client.clone(), items)),
            }
            None
        });
        if let Some(items) = rest {
            s.backlog.fetch_add(cost, Ordering::Relaxed);
            let _ = s.tx.send(Cmd::Rec(make(client.clone(), items)));
        }
    }

    /// Sends the records held by this thread's open batch, if any, to the writer now (in one
    /// frame); the batch stays open. For a step that makes records visible to other tasks
    /// (queueing a delivery), whose records must come after these.
    pub fn flush_batch(&self) {
        let Some(s) = &self.shared else { return };
        let open = BATCH.with(|g| g.borrow_mut().as_mut().map(std::mem::take));
        if let Some(open) = open {
            open.send(s);
        }
    }

    /// Until the guard is dropped (or [`Store::flush_batch`]), records this thread appends
    /// reach the writer together and are written as one frame under one checksum (messages as
    /// frames of their own before it): a crash, even one that tears the write, keeps all of
    /// them or none. A QoS 2 PUBLISH is then either received with every queue entry or not at
    /// all. The guard is not `Send`: it cannot be held across an await.
    pub fn batch(&self) -> Batch {
        let outer = self.shared.is_some()
            && BATCH.with(|g| {
                let mut g = g.borrow_mut();
                let outer = g.is_none();
                if outer {
                    *g = Some(OpenBatch::default());
                }
                outer
            });
        Batch {
            shared: self.shared.clone().filter(|_| outer),
            _not_send: std::marker::PhantomData,
        }
    }

    /// A ticket answered once every record appended so far is safe (per the mode): `true`,
    /// or `false` if the store failed. None for a disabled store.
    pub fn ticket(&self) -> Option<oneshot::Receiver<bool>> {
        let s = self.shared.as_ref()?;
        let (tx, rx) = oneshot::channel();
        if !s.send_waking(Cmd::Ticket(tx)) {
            return None;
        }
        Some(rx)
    }

    /// How far `client`'s deliveries may have gone before (see [`Record::SentHorizon`]): its
    /// queued deliveries numbered up to this go out with DUP. 0 for an unknown session. Counts
    /// every record appended before the call (a connection that just ended may have set it
    /// back), without waiting for the disk.
    pub async fn sent_horizon(&self, client: &str) -> u64 {
        let Some(s) = &self.shared else { return 0 };
        let (tx, rx) = oneshot::channel();
        if s.send_waking(Cmd::Applied(tx)) {
            let _ = rx.await;
        }
        s.state()
            .image
            .sessions
            .get(client)
            .map_or(0, |s| s.sent_horizon)
    }

    /// Bytes of records waiting for the writer.
    pub fn backlog(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.backlog.load(Ordering::Relaxed))
    }

    /// Bytes of the live log file.
    pub fn disk_bytes(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.disk_bytes.load(Ordering::Relaxed))
    }

    /// What the store has done since it was opened (zero for a disabled store).
    pub fn stats(&self) -> StoreStats {
        self.shared.as_ref().map_or_else(StoreStats::default, |s| {
            let c = &s.counters;
            StoreStats {
                fsyncs: c.fsyncs.load(Ordering::Relaxed),
                writes: c.writes.load(Ordering::Relaxed),
                records: c.records.load(Ordering::Relaxed),
                bytes: c.bytes.load(Ordering::Relaxed),
                compactions: c.compactions.load(Ordering::Relaxed),
            }
        })
    }

    /// The fsync latency (µs) and group-commit batch (records per fsync) histograms; None for
    /// a disabled store.
    pub fn histograms(&self) -> Option<(HistogramSnapshot, HistogramSnapshot)> {
        self.shared.as_ref().map(|s| {
            (
                s.counters.fsync_us.snapshot(),
                s.counters.commit_records.snapshot(),
            )
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> PersistenceMode {
        self.shared
            .as_ref()
            .map_or(PersistenceMode::Memory, |s| s.mode)
    }

    /// Writes everything appended so far, then rewrites the log as its live data.
    pub async fn compact(&self) {
        if let Some(s) = &self.shared {
            let (tx, rx) = oneshot::channel();
            if s.send_waking(Cmd::Compact(tx)) {
                let _ = rx.await;
            }
        }
    }

    /// Writes and fsyncs everything, then stops the writer (graceful shutdown).
    pub async fn shutdown(&self) {
        if let Some(s) = &self.shared {
            let (tx, rx) = oneshot::channel();
            if s.send_waking(Cmd::Shutdown(tx)) {
                let _ = rx.await;
            }
        }
    }
}

/// A message read back from the log, with the priority the log gave it (`Record::Priority`).
fn with_priority(mut m: Arc<Message>, priority: u8) -> Arc<Message> {
    if priority != 0 {
        Arc::make_mut(&mut m).priority = priority;
    }
    m
}

#[cfg(test)]
mod tests;
