//! Arbitrary bytes into a decoder at every level, before CONNECT included: never panics, `Ok(None)`
//! consumes nothing, and every decoded packet re-encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_codec::fixtures::check_decode(data);
});
