//! The protocol state machine fed arbitrary packet sequences: arbitrary bytes drive up to three
//! clients of one in-process broker (CONNECT negotiation, every client packet, outbox draining,
//! a fake clock, disconnects, takeovers). Never panics, and everything the broker writes
//! decodes back with the codec. The harness is shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/protocol.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::run(data);
});
