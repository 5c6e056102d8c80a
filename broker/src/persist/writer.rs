//! The writer thread: group commit, tickets, lazy commits, recovery from a failed write.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::config::PersistenceMode;

use super::*;

/// After a failed write, how often the writer tries to rewrite the log and carry on.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Most commands the writer takes in at once (the image's lock is held meanwhile).
const MAX_BATCH: usize = 16 * 1024;
/// Records held back past this many bytes are written at once (not fsynced before they are due).
pub(super) const LAZY_MAX_BYTES: usize = 1024 * 1024;

/// When the writer writes and fsyncs what it has taken in (see "What waits for the disk").
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub(super) durable: bool,
    /// `persistence.lazy_commit`.
    pub(super) lazy: Duration,
    /// `relaxed`: `persistence.sync_interval`.
    pub(super) sync_interval: Duration,
}

/// What the writer holds that is not safe yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    /// When the oldest record not written yet was taken in.
    pub(super) unwritten_since: Option<Instant>,
    /// Bytes not written yet.
    pub(super) unwritten_bytes: usize,
    /// When the oldest record written but not fsynced was taken in.
    pub(super) unsynced_since: Option<Instant>,
}

impl Held {
    /// Everything taken in is written now.
    pub(super) fn written(&mut self) {
        self.unsynced_since = earliest(self.unsynced_since, self.unwritten_since);
        self.unwritten_since = None;
        self.unwritten_bytes = 0;
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One decision of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Step {
    pub(super) write: bool,
    pub(super) sync: bool,
}

impl Policy {
    /// What to do now with what is `held`; `urgent` when a ticket (or compaction, shutdown)
    /// waits. Durable: a ticket writes and fsyncs everything at once (group commit); records
    /// nobody waits for are written and fsynced once the oldest is `lazy` old, or with the
    /// next ticket. Relaxed: a ticket writes; records nobody waits for are written once `lazy`
    /// old; an fsync follows `sync_interval` after a write. Past [`LAZY_MAX_BYTES`] held back,
    /// they are written at once.
    pub(super) fn step(&self, held: &Held, urgent: bool, now: Instant) -> Step {
        let due = |since: Option<Instant>, after: Duration| since.is_some_and(|t| now >= t + after);
        let unwritten = held.unwritten_bytes > 0;
        let big = held.unwritten_bytes >= LAZY_MAX_BYTES;
        if self.durable {
            let oldest = earliest(held.unwritten_since, held.unsynced_since);
            let sync = oldest.is_some() && (urgent || due(oldest, self.lazy));
            Step {
                write: unwritten && (sync || big),
                sync,
            }
        } else {
            let write = unwritten && (urgent || big || due(held.unwritten_since, self.lazy));
            let unsynced = if write {
                earliest(held.unsynced_since, held.unwritten_since)
            } else {
                held.unsynced_since
            };
            Step {
                write,
                sync: due(unsynced, self.sync_interval),
            }
        }
    }

    /// Until when the writer may sleep without taking commands in (None: until one comes).
    pub(super) fn wake_at(&self, held: &Held) -> Option<Instant> {
        let lazy = |t: Option<Instant>, d: Duration| t.map(|t| t + d);
        if self.durable {
            lazy(
                earliest(held.unwritten_since, held.unsynced_since),
                self.lazy,
            )
        } else {
            earliest(
                lazy(held.unwritten_since, self.lazy),
                lazy(held.unsynced_since, self.sync_interval),
            )
        }
    }
}

/// How often a compaction put off during a drain looks again at the live data.
pub(super) const DRAIN_WATCH: Duration = Duration::from_millis(200);

/// A compaction that is due but put off while a drain shrinks the live data (see
/// [`put_off_compaction`]): when it was last looked at, and the live data and log size then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PutOff {
    pub(super) at: Instant,
    pub(super) live: u64,
    /// The log's size when it was first put off (the bound on its growth meanwhile).
    pub(super) size: u64,
}

/// Whether a compaction that is due now (`live` bytes of live data in a log of `size` bytes)
/// waits, and the state to keep; `put_off` is what the last call kept.
///
/// Compaction copies the live messages into the new log. While a long queue drains (the
/// durable drain of issue 16: 1,000,000 messages, compacted once 3/4 of it had gone) those
/// are the queue's tail, about to be acknowledged: copying them (52 MB there, about a fifth
/// of the broker's CPU over the drain, kernel included) only to delete them moments later is
/// waste. So a due compaction waits while the live data falls by an eighth or more
/// every [`DRAIN_WATCH`], and the log has grown by less than a quarter since it was first due
/// (a drain appends little: 12 bytes per delivery), never near the disk limit (`full`).
/// Once the drain stops or slows, it runs, on what is left.
pub(super) fn put_off_compaction(
    put_off: Option<PutOff>,
    live: u64,
    size: u64,
    full: bool,
    now: Instant,
) -> Option<PutOff> {
    if full {
        return None;
    }
    match put_off {
        None => Some(PutOff {
            at: now,
            live,
            size,
        }),
        Some(p) if now < p.at + DRAIN_WATCH => Some(p),
        Some(p) if live < p.live - p.live / 8 && size < p.size + p.size / 4 => Some(PutOff {
            at: now,
            live,
            size: p.size,
        }),
        Some(_) => None,
    }
}

/// The headroom kept below `persistence.max_disk_bytes`: a tenth, at most 64 MiB.
pub(super) fn soft_limit(max: u64) -> u64 {
    max - (max / 10).min(64 * 1024 * 1024)
}

pub(super) fn write_current(dir: &Path, number: u64) -> std::io::Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(log_name(number).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("CURRENT"))?;
    sync_dir(dir)
}

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) number: u64,
    pub(super) file: File,
    pub(super) size: u64,
    pub(super) compacted_size: u64,
    pub(super) shared: Arc<Shared>,
    pub(super) sync_interval: Duration,
    /// `persistence.lazy_commit`.
    pub(super) lazy_commit: Duration,
    pub(super) max_disk_bytes: u64,
    /// `persistence.compact_min_bytes`.
    pub(super) compact_min_bytes: u64,
    /// Whether the log is past the soft limit (for the log lines when that changes).
    pub(super) full: bool,
    /// Records written since the last fsync (the next group commit's batch).
    pub(super) unsynced_records: u64,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        // Tickets, compaction and shutdown wake a parked writer (Shared::wake).
        let _ = self.shared.writer.set(std::thread::current());
        let durable = self.shared.mode == PersistenceMode::Durable;
        let policy = Policy {
            durable,
            lazy: self.lazy_commit,
            sync_interval: self.sync_interval,
        };
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut held = Held::default();
        // Backlog bytes of the records in `buf` (Shared::backlog counts them until written).
        let mut unwritten_cost = 0usize;
        let mut last_retry = Instant::now();
        // A due compaction put off while a drain shrinks the live data.
        let mut put_off: Option<PutOff> = None;
        loop {
            let failed = self.shared.failed.load(Ordering::Relaxed);
            if failed && last_retry.elapsed() >= RETRY_AFTER_FAILURE {
                last_retry = Instant::now();
                if self.recover_from_failure(&buf) {
                    // The rewritten log holds everything the image has, `buf` included.
                    buf.clear();
                    self.shared
                        .backlog
                        .fetch_sub(unwritten_cost, Ordering::Relaxed);
                    unwritten_cost = 0;
                    held = Held::default();
                }
            }
            let mut wake = policy.wake_at(&held);
            if failed {
                let retry = last_retry + RETRY_AFTER_FAILURE;
                wake = Some(wake.map_or(retry, |w| w.min(retry)));
            }
            if let Some(p) = put_off {
                // Look again even if nothing comes in (the drain may have stopped).
                let again = p.at + DRAIN_WATCH;
                wake = Some(wake.map_or(again, |w| w.min(again)));
            }
            // Idle, the writer waits for the first command. With records held back it sleeps
            // until they are due: appends do not wake it (Store::append only queues), tickets,
            // compaction and shutdown do (Shared::wake), and take everything queued meanwhile.
            let first = match wake {
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                },
                Some(at) => match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if at > now {
                            std::thread::park_timeout(at - now);
                        }
                        rx.try_recv().ok()
                    }
                },
            };
            let mut tickets = Vec::new();
            let mut shutdown = None;
            let mut compact = None;
            let mut records = 0u64;
            let mut cmd = first;
            let mut n = 0;
            let before = buf.len();
            if cmd.is_some() {
                // Records are applied to the image as they are encoded; a reader that finds a
                // message before its bytes reach the file gets a short read and tries again
                // after a ticket (Store::load).
                let shared = self.shared.clone();
                let mut state = shared.state();
                while let Some(c) = cmd.take() {
                    let mut put = |rec: &Record| {
                        records += record_count(rec);
                        unwritten_cost += record_cost(rec);
                        let at = self.size + buf.len() as u64;
                        encode_record(rec, &mut buf);
                        let len = (self.size + buf.len() as u64 - at) as u32;
                        state.image.apply(rec, (at, len));
                    };
                    match c {
                        Cmd::Rec(rec) => put(&rec),
                        Cmd::Recs(recs) => {
                            // Messages as their own frames (so they can be located and read
                            // back); everything else as one frame: a torn write keeps all of
                            // it or none (a message without its entries is only garbage).
                            let is_msg = |r: &&Record| matches!(r, Record::Message(_));
                            recs.iter().filter(is_msg).for_each(&mut put);
                            let mut rest = recs.iter().filter(|r| !is_msg(r));
                            match (rest.next(), rest.next()) {
                                (None, _) => {}
                                (Some(one), None) => put(one),
                                _ => {
                                    let rest = || recs.iter().filter(|r| !is_msg(r));
                                    encode_batch(rest(), &mut buf);
                                    for rec in rest() {
                                        records += record_count(rec);
                                        unwritten_cost += record_cost(rec);
                                        state.image.apply(rec, (0, 0));
                                    }
                                }
                            }
                        }
                        Cmd::Ticket(t) => tickets.push(t),
                        Cmd::Applied(t) => {
                            let _ = t.send(());
                        }
                        Cmd::Compact(t) => {
                            compact = Some(t);
                            break;
                        }
                        Cmd::Shutdown(t) => {
                            shutdown = Some(t);
                            break;
                        }
                    }
                    n += 1;
                    if n < MAX_BATCH {
                        cmd = rx.try_recv().ok();
                    }
                }
            }
            self.shared
                .counters
                .records
                .fetch_add(records, Ordering::Relaxed);
            self.unsynced_records += records;
            let now = Instant::now();
            if buf.len() > before && held.unwritten_since.is_none() {
                held.unwritten_since = Some(now);
            }
            held.unwritten_bytes = buf.len();
            let urgent = !tickets.is_empty() || shutdown.is_some() || compact.is_some();
            let step = policy.step(&held, urgent, now);
            let mut ok = true;
            let failed = self.shared.failed.load(Ordering::Relaxed);
            if step.write {
                // While failed the log is not appended to (it may be missing records): the
                // image keeps them, and recover_from_failure rewrites the log from it.
                ok = !failed && self.write(&buf);
                buf.clear();
                self.shared
                    .backlog
                    .fetch_sub(unwritten_cost, Ordering::Relaxed);
                unwritten_cost = 0;
                held.written();
            }
            if failed {
                // Nothing to fsync in a log that is to be rewritten.
                held.unsynced_since = None;
            }
            let sync = held.unsynced_since.is_some() && (step.sync || shutdown.is_some());
            if ok && sync {
                ok = self.sync();
                held.unsynced_since = None;
            }
            self.fail_if(!ok);
            // A batch after a failed one is not safe either: the log may end in a partial frame.
            let ok = ok && !self.shared.failed.load(Ordering::Relaxed);
            for t in tickets {
                let _ = t.send(ok);
            }
            if let Some(t) = shutdown {
                // A log well past its live data is rewritten now: the next start reads less.
                let live = self.shared.state().image.live_bytes();
                if ok && self.size > 1024 * 1024 && self.size > 2 * live {
                    self.compact(&[]);
                }
                let stats = Store {
                    shared: Some(self.shared.clone()),
                }
                .stats();
                tracing::info!(
                    fsyncs = stats.fsyncs,
                    writes = stats.writes,
                    records = stats.records,
                    bytes = stats.bytes,
                    "store closed"
                );
                let _ = t.send(());
                return;
            }
            if let Some(t) = compact {
                if ok {
                    self.compact(&[]);
                }
                let _ = t.send(());
            }
            if !buf.is_empty() {
                // Compaction copies message records from the file: not with some still here.
                continue;
            }
            // Compact once the log is 4x its live data (and past compact_min_bytes), or near
            // the disk limit once that would free half of it; never again before the log has
            // grown a quarter since the last attempt.
            // While a drain shrinks the live data, a due compaction waits (put_off_compaction).
            let live = self.shared.state().image.live_bytes().max(1);
            let grown = self.size > self.compacted_size + self.compacted_size / 4;
            let full = self.size >= self.shared.soft_limit;
            if grown
                && ((self.size > self.compact_min_bytes && self.size > 4 * live)
                    || (full && self.size > 2 * live))
            {
                put_off = put_off_compaction(put_off, live, self.size, full, Instant::now());
                if put_off.is_none() {
                    self.compact(&[]);
                }
            } else {
                put_off = None;
            }
            let full = self.size >= self.shared.soft_limit;
            if full != self.full {
                self.full = full;
                if full {
                    tracing::error!(size = self.size, max = self.max_disk_bytes, "persistence.max_disk_bytes nearly reached: new QoS 1/2 messages that need storing are refused (0x97)");
                } else {
                    tracing::info!(
                        size = self.size,
                        "persistence back under persistence.max_disk_bytes: accepting again"
                    );
                }
            }
        }
    }

    pub(super) fn fail_if(&self, failed: bool) {
        if failed && !self.shared.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(dir = %self.dir.display(), "persistence failed: QoS 1/2 messages that need storing are refused (retried every 5 s)");
        }
    }

    /// After a failed write or fsync the log may miss records the image has (or end in a
    /// partial frame), so appending to it again would not do: rewrite the log from the image
    /// instead. Messages whose records never reached the disk are left out (nobody was told
    /// they were stored). Success clears the failure.
    /// `pending`: records taken in but not written yet (they start at the log's end). Returns
    /// whether the log was rewritten (it then holds `pending` too).
    fn recover_from_failure(&mut self, pending: &[u8]) -> bool {
        let before = self.number;
        self.compact(pending);
        if self.number != before {
            self.shared.failed.store(false, Ordering::Relaxed);
            tracing::info!(dir = %self.dir.display(), size = self.size, "persistence recovered: the log was rewritten from memory; accepting QoS 1/2 again");
        }
        self.number != before
    }

    pub(super) fn write(&mut self, data: &[u8]) -> bool {
        if self.size + data.len() as u64 > self.max_disk_bytes {
            // Try to make room first, if the log has grown since the last compaction (once the
            // live data itself fills the disk, compacting every batch would only burn I/O).
            // The image already holds this batch, so a successful compaction has written it:
            // appending it again would replay it twice.
            let before = self.number;
            let live = self.shared.state().image.live_bytes();
            if self.size > self.compacted_size + self.compacted_size / 4 && live < self.size {
                self.compact(data);
            }
            if self.number != before {
                // Written by the compaction; over the limit all the same, it fails like a write.
                return self.size <= self.max_disk_bytes;
            }
            if self.size + data.len() as u64 > self.max_disk_bytes {
                tracing::error!(
                    size = self.size,
                    max = self.max_disk_bytes,
                    "persistence.max_disk_bytes reached"
                );
                return false;
            }
        }
        let counters = &self.shared.counters;
        counters.writes.fetch_add(1, Ordering::Relaxed);
        match self.file.write_all(data) {
            Ok(()) => {
                counters
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.size += data.len() as u64;
                self.shared.disk_bytes.store(self.size, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, file = %self.dir.join(log_name(self.number)).display(), "cannot write the log");
                // No partial frame may stay in the middle of the log.
                let _ = self.file.set_len(self.size);
                false
            }
        }
    }

    pub(super) fn sync(&mut self) -> bool {
        let counters = &self.shared.counters;
        counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = self.file.sync_data();
        counters
            .fsync_us
            .record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        counters
            .commit_records
            .record(std::mem::take(&mut self.unsynced_records));
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot fsync the log");
                false
            }
        }
    }
}
