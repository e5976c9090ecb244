#![no_main]
//! See `bridge::fuzzing::http_topic`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bridge::fuzzing::http_topic(data));
