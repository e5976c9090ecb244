//! The retained messages as a tree of topic levels: `GET /api/topics?prefix=&depth=` (admin
//! only when authentication is on), the dashboard's topic tree.
//!
//! Served from the retained store's level index ([`broker::retained::RetainedStore::browse`]):
//! a request walks only the levels it returns, never the whole store. Each answer carries the
//! store's `version`, which changes with every write, so a page polling it redraws only on
//! change. Deleting a value is the ordinary `DELETE /topics/{topic}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::access::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// Levels one request may ask for, and entries one answer holds at most.
const MAX_DEPTH: usize = 8;
const BUDGET: usize = 1000;

#[derive(serde::Deserialize)]
pub struct TreeQuery {
    /// A topic, or its first levels; absent: the top of the tree.
    prefix: Option<String>,
    depth: Option<usize>,
}

/// `GET /api/topics`: the levels under `prefix`, `depth` deep (default 1), with counts (none when
/// nothing is stored under it).
pub async fn topics(
    State(st): State<AppState>,
    _: Admin,
    q: Result<Query<TreeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = crate::body::query(q)?;
    let depth = q.depth.unwrap_or(1);
    if !(1..=MAX_DEPTH).contains(&depth) {
        return Err(ApiError::bad_request(format!("depth is 1 to {MAX_DEPTH}")));
    }
    if q.prefix.as_deref().is_some_and(|p| p.contains(['+', '#'])) {
        return Err(ApiError::bad_request(
            "prefix is a topic (or its first levels), not a filter",
        ));
    }
    let retained = st.edge.retained();
    let version = retained.version();
    // Nothing under the prefix (never was, or just deleted): no levels, not an error, so a
    // page polling an open level sees it empty out.
    let l = retained.browse(q.prefix.as_deref(), depth, BUDGET);
    let (count, value, entries, more) = match l {
        Some(l) => (l.count, json!(l.value), json!(l.entries), l.more),
        None => (0, json!(null), json!([]), 0),
    };
    Ok(Json(json!({
        "version": version,
        "total": retained.len(),
        "prefix": q.prefix,
        "count": count,
        "value": value,
        "entries": entries,
        "more": more,
    }))
    .into_response())
}
