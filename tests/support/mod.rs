//! Kept for test files written before the toolkit moved: the client helpers are
//! `tests/common/clients.rs` (`common::clients`).

#![allow(unused_imports)]

pub use crate::common::clients::*;
