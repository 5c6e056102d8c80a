//! Compaction: the live state rewritten as a fresh log file, which then replaces the old one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use crate::message::ClientId;

use super::*;

impl Writer {
    /// Rewrites the live state as a new log file and switches to it. Message records are
    /// copied frame by frame from the old file (or from `pending`, the batch not yet written,
    /// which starts at the old file's end); everything is streamed, so memory stays bounded.
    /// Only this thread changes the image, so what it reads stays valid between locks: the
    /// lock is taken in short pieces, and connections reading queued messages back are not
    /// held up for the whole compaction.
    pub(super) fn compact(&mut self, pending: &[u8]) {
        use std::os::unix::fs::FileExt;
        let started = Instant::now();
        let next = self.number + 1;
        let path = self.dir.join(log_name(next));
        let shared = self.shared.clone();
        let old_size = self.size;
        let (mut slots, reader, clients) = {
            let state = shared.state();
            let slots: Vec<(u64, MsgSlot)> = state
                .image
                .messages
                .iter()
                .map(|(id, slot)| (*id, *slot))
                .collect();
            let clients: Vec<ClientId> = state.image.sessions.keys().cloned().collect();
            (slots, state.reader.clone(), clients)
        };
        // In file order: the old log is read sequentially.
        slots.sort_unstable_by_key(|(_, slot)| slot.at);
        let mut moved: Vec<(u64, u64)> = Vec::with_capacity(slots.len());
        let mut lost = Vec::new();
        let mut ambiguous = false;
        let result = (|| -> std::io::Result<(File, File, u64)> {
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
            let mut written = 0u64;
            // The old log is read a span at a time (the slots are in file order): one read
            // covers many records instead of one read each.
            const SPAN: u64 = 1024 * 1024;
            let mut span: Vec<u8> = Vec::new();
            let mut span_at = 0u64;
            let mut one = Vec::new();
            for (id, slot) in &slots {
                let len = slot.len as usize;
                let frame = if slot.at >= old_size {
                    let from = (slot.at - old_size) as usize;
                    pending.get(from..from + len)
                } else {
                    let end = slot.at + u64::from(slot.len);
                    if slot.at < span_at || end > span_at + span.len() as u64 {
                        span_at = slot.at;
                        // At least the record (a large message is longer than a span).
                        let want = (old_size - slot.at).min(SPAN).max(u64::from(slot.len));
                        span.resize(want as usize, 0);
                        if reader.read_exact_at(&mut span, span_at).is_err() {
                            span.clear();
                        }
                    }
                    if span.is_empty() {
                        // The span could not be read whole: this record on its own.
                        one.resize(len, 0);
                        reader
                            .read_exact_at(&mut one, slot.at)
                            .ok()
                            .map(|()| &one[..])
                    } else {
                        let from = (slot.at - span_at) as usize;
                        span.get(from..from + len)
                    }
                };
                match frame.filter(|f| check_frame(f).is_ok()) {
                    Some(frame) => {
                        out.write_all(frame)?;
                        moved.push((*id, written));
                        written += u64::from(slot.len);
                    }
                    // Only after a failed write can a located record be unreadable.
                    None => lost.push(*id),
                }
            }
            let mut buf = BytesMut::with_capacity(64 * 1024);
            shared
                .state()
                .image
                .shared_records(|rec| encode_record(&rec, &mut buf));
            out.write_all(&buf)?;
            written += buf.len() as u64;
            for chunk in clients.chunks(256) {
                buf.clear();
                {
                    let state = shared.state();
                    for client in chunk {
                        state
                            .image
                            .session_records(client, |rec| encode_record(&rec, &mut buf));
                    }
                }
                out.write_all(&buf)?;
                written += buf.len() as u64;
            }
            let f = out.into_inner().map_err(|e| e.into_error())?;
            // The new log, then CURRENT and the directory (write_current).
            shared.counters.fsyncs.fetch_add(3, Ordering::Relaxed);
            f.sync_all()?;
            // Everything that can fail before the switch happens before it.
            let append = OpenOptions::new().append(true).open(&path)?;
            let reader = File::open(&path)?;
            if let Err(e) = write_current(&self.dir, next) {
                // If the rename happened (the directory's fsync failed), CURRENT names the new
                // log now: it is complete and fsynced, so carry on with it. If CURRENT names the
                // old log, that one stays. If it cannot be read, nobody knows which: stop.
                match std::fs::read_to_string(self.dir.join("CURRENT")) {
                    Ok(c) if c.trim() == log_name(next) => {
                        tracing::warn!(error = %e, "compaction: CURRENT switched but not synced");
                    }
                    Ok(_) => return Err(e),
                    Err(_) => {
                        ambiguous = true;
                        return Err(e);
                    }
                }
            }
            Ok((append, reader, written))
        })();
        match result {
            Ok((file, reader, written)) => {
                let old = self.dir.join(log_name(self.number));
                let _ = std::fs::remove_file(&old);
                {
                    let mut state = shared.state();
                    for (id, at) in moved {
                        if let Some(slot) = state.image.messages.get_mut(&id) {
                            slot.at = at;
                        }
                    }
                    for id in &lost {
                        state.image.drop_message(*id);
                    }
                    state.reader = Arc::new(reader);
                }
                if !lost.is_empty() {
                    tracing::error!(
                        count = lost.len(),
                        "compaction: stored messages unreadable after a failed write were left out"
                    );
                }
                tracing::info!(
                    from_bytes = self.size,
                    to_bytes = written,
                    ms = started.elapsed().as_millis() as u64,
                    "log compacted"
                );
                self.file = file;
                self.number = next;
                self.size = written;
                self.compacted_size = self.size;
                self.shared.disk_bytes.store(self.size, Ordering::Relaxed);
                self.shared
                    .counters
                    .compactions
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if ambiguous => {
                // Both logs are kept; the failure path rewrites the log from memory later.
                tracing::error!(error = %e, "compaction: cannot tell which log CURRENT names");
                self.fail_if(true);
                self.compacted_size = self.size;
            }
            Err(e) => {
                tracing::error!(error = %e, file = %path.display(), "compaction failed; the old log stays in use");
                let _ = std::fs::remove_file(&path);
                // Do not retry at once.
                self.compacted_size = self.size;
            }
        }
    }
}
