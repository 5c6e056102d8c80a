//! Start-up replay of the live log: a torn tail is cut off, anything else unreadable is an error.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use super::*;

pub(super) fn log_name(n: u64) -> String {
    format!("wal-{n:08}.log")
}

/// What start-up recovered, for the log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub records: u64,
    pub sessions: usize,
    pub messages: usize,
    pub retained: usize,
    /// Bytes cut off a torn tail, and where.
    pub truncated: Option<(u64, u64)>,
    /// Leftover log files deleted (a crash during compaction or the first start-up).
    pub removed: Vec<String>,
}

/// Reads the live log of `dir` into an image, streaming (memory stays bounded whatever the
/// log's size; message payloads are not even decoded, only located). A torn tail is cut off
/// (reported in `Recovery`); any other damage is an error naming the file.
pub(super) fn recover(dir: &Path, now: Instant) -> Result<(Image, u64, Recovery, u64), StoreError> {
    let current = dir.join("CURRENT");
    let mut image = Image::default();
    let mut recovery = Recovery::default();
    let number = match std::fs::read_to_string(&current) {
        Ok(s) => s
            .trim()
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| StoreError::BadCurrent {
                path: current.clone(),
                content: s.trim().to_string(),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A data directory with logs but no CURRENT is damaged, not empty (an empty log is
            // what a crash during the very first start-up leaves: nothing was in it yet).
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let empty = e.metadata().is_ok_and(|m| m.len() == 0);
                    if e.file_name().to_string_lossy().starts_with("wal-") && !empty {
                        return Err(StoreError::MissingCurrent { path: current });
                    }
                }
            }
            return Ok((image, 1, recovery, 0));
        }
        Err(e) => return Err(io_err(&current, "read")(e)),
    };
    let path = dir.join(log_name(number));
    let file = File::open(&path).map_err(io_err(&path, "open"))?;
    let file_len = file.metadata().map_err(io_err(&path, "stat"))?.len();
    let mut rd = std::io::BufReader::with_capacity(1 << 20, file);
    let read_err = |source| StoreError::Io {
        path: path.clone(),
        action: "read",
        source,
    };
    let mut pos = 0u64;
    let mut header = [0u8; 8];
    let mut payload = Vec::new();
    while pos < file_len {
        let torn = Some((pos, file_len - pos));
        if file_len - pos < 8 {
            recovery.truncated = torn;
            break;
        }
        rd.read_exact(&mut header).map_err(read_err)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if file_len - pos - 8 < u64::from(len) {
            // Longer than the file: a torn tail, unless whole records follow (then the length
            // itself is damaged).
            corrupt_unless_torn(&mut rd, &path, Damage::LengthPastEnd { at: pos, len })?;
            recovery.truncated = torn;
            break;
        }
        payload.resize(len as usize, 0);
        rd.read_exact(&mut payload).map_err(read_err)?;
        if crc32fast::hash(&payload) != crc {
            // Only a torn write at the very end is expected after a crash; a bad record with
            // good ones after it is corruption.
            corrupt_unless_torn(&mut rd, &path, Damage::Checksum { at: pos })?;
            recovery.truncated = torn;
            break;
        }
        let bad_record = |in_batch: bool| {
            let path = path.clone();
            move |source| StoreError::BadRecord {
                path,
                offset: pos,
                in_batch,
                source,
            }
        };
        if payload.first() == Some(&TAG_BATCH) {
            // Records that must count together: one frame, one checksum.
            let mut rest = &payload[1..];
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(bad_record(true)(DecodeError::ShortInBatch));
                }
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let sub = rest
                    .get(4..4 + n)
                    .ok_or_else(|| bad_record(true)(DecodeError::ShortInBatch))?;
                apply_meta_payload(&mut image, sub, now).map_err(bad_record(true))?;
                rest = &rest[4 + n..];
            }
        } else if payload.len() >= 9 && payload[0] == TAG_MESSAGE {
            // Located, not decoded: it is read back when a session needs it.
            let id = u64::from_le_bytes(payload[1..9].try_into().unwrap_or_default());
            image.message_at(id, (pos, len + 8));
        } else {
            apply_meta_payload(&mut image, &payload, now).map_err(bad_record(false))?;
        }
        recovery.records += 1;
        pos += 8 + u64::from(len);
    }
    drop(rd);
    if let Some((at, _)) = recovery.truncated {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "open to cut the torn tail"))?;
        f.set_len(at)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&path, "cut the torn tail"))?;
    }
    // A message nothing refers to at the end of the log is garbage (its queue entry never
    // made it to disk, so it was never acknowledged); compaction would carry it forever.
    let garbage: Vec<u64> = image
        .messages
        .iter()
        .filter(|(_, m)| m.refs == 0)
        .map(|(id, _)| *id)
        .collect();
    for id in garbage {
        image.drop_message(id);
    }
    // Replaying a log that was not compacted at shutdown (a crash) grew the image to the
    // largest state the log went through: give back what the live state does not use.
    image.shrink_to_fit();
    recovery.sessions = image.sessions.len();
    recovery.messages = image.messages.len();
    recovery.retained = image.retained.len();
    recovery.removed = remove_stale_logs(dir, number);
    Ok((image, number, recovery, pos))
}

/// After a bad record: an error naming the file if whole records follow it (corruption),
/// Ok if nothing valid does (the torn tail of a crash).
fn corrupt_unless_torn(rd: &mut impl Read, path: &Path, damage: Damage) -> Result<(), StoreError> {
    let mut rest = Vec::new();
    rd.take(LOOKAHEAD as u64 + MAX_FRAME_GUESS)
        .read_to_end(&mut rest)
        .map_err(io_err(path, "read"))?;
    if has_valid_frame_after(&rest, 0) {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            damage,
        });
    }
    Ok(())
}

/// Deletes log files other than the live one: an old log whose deletion a crash interrupted
/// right after a compaction, or a new one a crash left half-written before `CURRENT` named it.
/// Returns their names.
fn remove_stale_logs(dir: &Path, live: u64) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n != live)
            || name == "CURRENT.tmp";
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

/// How far past a bad record recovery looks for a good one (corruption vs torn tail).
const LOOKAHEAD: usize = 1024 * 1024;
/// Extra bytes read so a frame starting inside the look-ahead window can be checked whole.
const MAX_FRAME_GUESS: u64 = 4 * 1024 * 1024;

/// Whether a well-formed frame with a good checksum starts anywhere after `from` (scanning a
/// bounded window): tells corruption in the middle from a torn tail.
fn has_valid_frame_after(data: &[u8], from: usize) -> bool {
    let end = data.len().min(from + LOOKAHEAD);
    let mut p = from;
    while p + 8 <= end {
        let len = u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]) as usize;
        let crc = u32::from_le_bytes([data[p + 4], data[p + 5], data[p + 6], data[p + 7]]);
        if len > 0 && p + 8 + len <= data.len() && crc32fast::hash(&data[p + 8..p + 8 + len]) == crc
        {
            return true;
        }
        p += 1;
    }
    false
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
