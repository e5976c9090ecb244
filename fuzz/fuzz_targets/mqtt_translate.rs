#![no_main]
//! See `broker::fuzzing::mqtt_translate`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| broker::fuzzing::mqtt_translate(data));
