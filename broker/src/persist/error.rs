//! The errors of the store: what failed, and in which file at which offset.

use std::path::{Path, PathBuf};

/// Why the store could not be opened. Every variant names the file (or directory) at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed (`action` says which: "read", "open for writing"...).
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `CURRENT` does not hold a log file's name.
    #[error("{}: does not name a log file: {content:?}", path.display())]
    BadCurrent { path: PathBuf, content: String },
    /// `CURRENT` is missing while log files with records exist.
    #[error("{}: missing, but log files exist: refusing to start empty", path.display())]
    MissingCurrent { path: PathBuf },
    /// A damaged record with whole records after it: not the torn tail of a crash.
    #[error("{}: {damage}, with valid records after it: the file is corrupt", path.display())]
    Corrupt { path: PathBuf, damage: Damage },
    /// A record (or a batch of records) at `offset` with a good checksum that does not decode.
    #[error("{}: {} at byte {offset}: {source}", path.display(), if *in_batch { "batch" } else { "record" })]
    BadRecord {
        path: PathBuf,
        offset: u64,
        in_batch: bool,
        #[source]
        source: DecodeError,
    },
}

impl StoreError {
    /// The file or directory at fault.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Io { path, .. }
            | StoreError::BadCurrent { path, .. }
            | StoreError::MissingCurrent { path }
            | StoreError::Corrupt { path, .. }
            | StoreError::BadRecord { path, .. } => path,
        }
    }
}

/// What is wrong with a damaged record (see [`StoreError::Corrupt`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("the record at byte {at} claims {len} bytes, past the end of the file")]
    LengthPastEnd { at: u64, len: u32 },
    #[error("checksum mismatch in the record at byte {at}")]
    Checksum { at: u64 },
}

/// A [`StoreError::Io`] for `action` on `path`.
pub(super) fn io_err(
    path: &Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        path,
        action,
        source,
    }
}

/// Why a record's payload (or a frame) could not be decoded. Says what is wrong; where it is
/// (file, offset) is added by [`ReadError`] and `StoreError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record shorter than its fields")]
    Short,
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("bad QoS")]
    BadQos,
    #[error("bad retain handling")]
    BadRetainHandling,
    #[error("bad count")]
    BadCount,
    /// A field that is UTF-8 but not a valid value of its kind (`reason`: the codec's error).
    #[error("bad {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("unknown record type {0}")]
    UnknownTag(u8),
    #[error("a message inside a batch")]
    MessageInBatch,
    /// A record inside a batch frame runs past the end of the batch.
    #[error("a record runs past the end of the batch")]
    ShortInBatch,
    #[error("short frame")]
    ShortFrame,
    #[error("bad frame (length or checksum)")]
    BadFrame,
    #[error("not a message")]
    NotAMessage,
}

impl DecodeError {
    pub(super) fn bad(field: &'static str, reason: impl std::fmt::Debug) -> DecodeError {
        DecodeError::BadField {
            field,
            reason: format!("{reason:?}"),
        }
    }
}

/// Why a message could not be read back from the log.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {len} bytes at {at}: {source}")]
    Io {
        at: u64,
        len: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the record at {at}: {source}")]
    Bad {
        at: u64,
        #[source]
        source: DecodeError,
    },
}
