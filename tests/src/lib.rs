//! Test harness (see tests/src/lib.rs)
