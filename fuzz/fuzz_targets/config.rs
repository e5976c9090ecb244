#![no_main]
//! See `fuzz_config` in `src/settings.rs` (the binary crate's module, included by path).
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/settings.rs"]
mod settings;

fuzz_target!(|data: &[u8]| settings::fuzz_config(data));
