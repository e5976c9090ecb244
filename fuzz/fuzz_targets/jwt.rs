#![no_main]
//! See `broker::fuzzing::jwt`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| broker::fuzzing::jwt(data));
