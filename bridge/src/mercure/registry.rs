//! The open Mercure subscribers, by subscriber id (a `urn:uuid:`), for the active-subscriptions
//! API ([`super::subscriptions`]), which adds and removes them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

/// One subscriber's topic selectors and the `mercure.payload` of its token.
pub(crate) struct Entry {
    pub(crate) topics: Vec<String>,
    pub(crate) payload: Option<Value>,
}

/// The open subscribers.
#[derive(Default)]
pub struct Registry {
    pub(crate) subscribers: Mutex<BTreeMap<String, Entry>>,
}
