//! `sluice-codec`: a strict MQTT 3.1 / 3.1.1 / 5.0 wire codec.
//!
//! * One [`Packet`] model for every protocol level; the level matters only here, at the wire.
//! * [`Decoder::decode`] is resumable: `Ok(None)` means "need more bytes" and consumes nothing;
//!   an error means the stream is malformed and the connection must close. The declared size is
//!   checked against the maximum packet size from the fixed header alone, before any body is
//!   buffered.
//! * Every field is copied out of the read buffer once, right-sized, into `Bytes`-backed
//!   validated types, so stored messages never pin a read buffer.
//! * [`encode`] never leaves partial bytes in the output buffer on error. It measures the packet
//!   first (validating every field), reserves once and writes once; [`encoded_len`] runs the same
//!   measuring pass, so the two always agree.
//! * A SUBSCRIBE / UNSUBSCRIBE filter that is well-formed UTF-8 but not a valid topic filter is not
//!   a decode error: it is kept in `Subscribe::rejected` / `Unsubscribe::rejected` at its position
//!   so the broker can answer 0x8F (0x80 in 3.1.1) for it.
//! * `fixtures` (feature `fixtures`, always on for this crate's tests) holds well-known packet
//!   bytes shared with the broker's tests, and the invariants the fuzz targets check.
//! * Errors name the clause of the standard they enforce, e.g. `[MQTT-3.3.1-4]`.

mod decode;
mod encode;
mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod packet;
mod properties;
mod read;
mod types;

pub use decode::Decoder;
pub use encode::{connack_return_code, encode, encoded_len, prepare, Prepared};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use types::{topic_matches, ReasonCode, Str, StrError, TopicFilter, TopicName};

/// The largest value the Remaining Length field can carry (2.2.3): 268,435,455.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
