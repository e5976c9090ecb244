//! Kept for test files written before the toolkit moved: the raw MQTT client is
//! `tests/common/mqtt.rs` (`common::mqtt`).

#![allow(unused_imports)]

pub use crate::common::mqtt::*;
