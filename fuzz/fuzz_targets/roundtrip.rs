//! Whatever arbitrary bytes decode to: its encoding is a fixed point and decodes to it again,
//! also when delivered in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_codec::fixtures::check_round_trip(data);
});
