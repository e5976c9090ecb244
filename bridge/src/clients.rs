//! The connected clients, for operators: `GET /api/clients?search=&page=&per_page=`,
//! `GET /api/clients/{id}` and `DELETE /api/clients/{id}` (disconnect; MQTT 5 clients get
//! DISCONNECT 0x98, administrative action). Admin only when authentication is on.
//!
//! Everything is read from the broker's client directory ([`broker::directory`]), which
//! sessions keep current; a page copies only its own entries.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::access::Admin;
use crate::error::ApiError;
use crate::state::AppState;

/// Clients per page unless `per_page` says otherwise, and the most it may say.
const PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 500;
/// MQTT 5 reason code of a disconnect by an operator.
const ADMINISTRATIVE_ACTION: u8 = 0x98;

#[derive(serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    search: String,
    /// 1-based.
    page: Option<usize>,
    per_page: Option<usize>,
}

/// `GET /api/clients`: one page of the clients, sorted by client id.
pub async fn list(
    State(st): State<AppState>,
    _: Admin,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = crate::body::query(q)?;
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(PER_PAGE);
    if page == 0 || per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::bad_request(format!(
            "page starts at 1; per_page is 1 to {MAX_PER_PAGE}"
        )));
    }
    let offset = (page - 1).saturating_mul(per_page);
    let p = st.edge.directory().page(&q.search, offset, per_page);
    let clients: Vec<_> = p.clients.iter().map(|c| c.snapshot()).collect();
    Ok(Json(json!({
        "total": p.total,
        "page": page,
        "per_page": per_page,
        "pages": p.total.div_ceil(per_page),
        "search": q.search,
        "clients": clients,
    }))
    .into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no client {id:?} is connected"))
}

/// `GET /api/clients/{id}`.
pub async fn get(
    State(st): State<AppState>,
    _: Admin,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("bad client id"))?;
    let c = st.edge.directory().get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(c.snapshot()).into_response())
}

/// `DELETE /api/clients/{id}`: disconnects the client; 204 once its session has ended (202 if
/// it is still closing after 5 s), 404 if no such client is connected.
pub async fn kick(
    State(st): State<AppState>,
    Admin(who): Admin,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("bad client id"))?;
    let directory = st.edge.directory();
    let c = directory
        .kick(&id, ADMINISTRATIVE_ACTION)
        .ok_or_else(|| not_found(&id))?;
    tracing::info!(client_id = id, by = ?who.subject, "client disconnected by an operator");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while directory.is_listed(&c) {
        if tokio::time::Instant::now() >= deadline {
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "client_id": id, "closing": true })),
            )
                .into_response());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
