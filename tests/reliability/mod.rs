//! Kept for test files written before the toolkit moved: these helpers are
//! `tests/common/reliability.rs` (`common::reliability`).

#![allow(unused_imports)]

pub use crate::common::reliability::*;
