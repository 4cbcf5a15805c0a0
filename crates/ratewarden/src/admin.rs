//! The admin port (axum): `/healthz` and `/metrics` for anyone who can reach it, and
//! behind a bearer token (`[admin] token`) the operator's controls of adaptive
//! defence: blocks (list, add, lift), a client's standing, incident mode.
//!
//! Every change made here is logged (target `ratewarden::admin`).

use crate::gateway::threat::{client_label, Defence, Incident};
use crate::metrics::{BlockOrigin, Metrics};
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ratewarden_core::identity::client_network;
use ratewarden_core::threat::Level;
use ratewarden_core::{Nanos, Timestamp};
use ratewarden_store::threat::{Block, ThreatStore};
use serde::Deserialize;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// What the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// Adaptive defence, when `[threat]` is configured.
    pub defence: Option<Arc<Defence>>,
    /// The bearer token; without one, the `/admin/` routes are off.
    pub token: Option<String>,
    /// How clients are grouped (IPv6 prefix), to name a client as the gateway does.
    pub ipv6_prefix: u8,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .route("/admin/blocks", get(list_blocks).post(add_block))
        .route("/admin/blocks/{client}", axum::routing::delete(lift_block))
        .route("/admin/clients/{client}", get(client_standing))
        .route(
            "/admin/incident",
            get(incident_status)
                .post(start_incident)
                .delete(end_incident),
        )
        .with_state(state)
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

fn error(status: StatusCode, error: &str, detail: &str) -> Response {
    (status, Json(json!({ "error": error, "detail": detail }))).into_response()
}

/// Defence, if the request carries the token and `[threat]` is on; else the answer.
fn authorised<'a>(
    state: &'a AdminState,
    headers: &HeaderMap,
) -> Result<&'a Arc<Defence>, Box<Response>> {
    let Some(token) = &state.token else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "set [admin] token in the configuration to use the admin API",
        )));
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_secret(presented.trim().as_bytes(), token.as_bytes()) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <[admin] token>",
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return Err(Box::new(response));
    }
    state.defence.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "threat_disabled",
            "adaptive defence is off: add a [threat] section",
        ))
    })
}

/// [`authorised`], and the client named in the path.
fn authorised_for<'a>(
    state: &'a AdminState,
    headers: &HeaderMap,
    client: &str,
) -> Result<(&'a Arc<Defence>, String), Box<Response>> {
    let defence = authorised(state, headers)?;
    Ok((defence, parse_client(client, state.ipv6_prefix)?))
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client as the gateway names it: an address, or for IPv6 its network of the
/// configured prefix. A wider network is refused rather than narrowed to one client: an
/// operator blocking a /24 must not believe it blocked when it blocked one address.
fn parse_client(text: &str, ipv6_prefix: u8) -> Result<String, Box<Response>> {
    let text = text.trim();
    let bad = |detail: String| Box::new(error(StatusCode::BAD_REQUEST, "bad_client", &detail));
    let ip = match (text.parse::<IpAddr>(), text.parse::<ipnet::IpNet>()) {
        (Ok(ip), _) => ip,
        (_, Ok(net)) => {
            let whole = match net {
                ipnet::IpNet::V4(_) => net.prefix_len() == 32,
                ipnet::IpNet::V6(_) => {
                    net.prefix_len() == 128 || net.prefix_len() == ipv6_prefix.min(128)
                }
            };
            if !whole {
                return Err(bad(format!(
                    "{text} is a range: blocks are per client (an IPv4 address, or an IPv6 /{ipv6_prefix}); use [reputation] deny lists for ranges"
                )));
            }
            net.addr()
        }
        _ => {
            return Err(bad(
                "name the client by its IP address (or, for IPv6, its network)".into(),
            ))
        }
    };
    let ip = ratewarden_core::identity::canonical_ip(ip);
    Ok(client_label(ip, client_network(ip, ipv6_prefix)))
}

fn describe(block: &Block, now: Timestamp) -> serde_json::Value {
    json!({
        "client": block.client,
        "until": block.until.as_secs_ceil(),
        "remaining_seconds": block.remaining(now).as_secs_ceil(),
        "offence": block.offence,
        "reasons": block.reasons,
    })
}

fn store_failed(e: &ratewarden_store::StoreError) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        &e.to_string(),
    )
}

async fn list_blocks(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let defence = match authorised(&state, &headers) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match defence.store().blocks().await {
        Ok(blocks) => {
            let now = defence.now();
            let list: Vec<_> = blocks.iter().map(|b| describe(b, now)).collect();
            Json(json!({ "blocks": list })).into_response()
        }
        Err(e) => store_failed(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBlock {
    client: String,
    #[serde(rename = "for")]
    duration: String,
    reason: Option<String>,
}

async fn add_block(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<NewBlock>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let defence = match authorised(&state, &headers) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let Ok(Json(new)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            r#"send JSON {"client": "203.0.113.7", "for": "1h", "reason": "..."}"#,
        );
    };
    let client = match parse_client(&new.client, state.ipv6_prefix) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let length = match crate::config::parse_duration(&new.duration) {
        Ok(d) if d <= std::time::Duration::from_secs(365 * 86_400) => Nanos::from(d),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_duration",
                "\"for\" is a duration such as \"30m\", \"1h\" or \"7d\" (at most a year)",
            )
        }
    };
    // One reason, whatever it says: commas separate reasons where they are stored.
    let said: String = new
        .reason
        .as_deref()
        .unwrap_or("manual")
        .chars()
        .take(200)
        .map(|c| if c == ',' || c.is_control() { ';' } else { c })
        .collect();
    let reason = format!("admin:{said}");
    let plan = ratewarden_store::threat::BlockPlan {
        ladder: vec![length],
        forget_after: defence.config().escalation.forget_after,
        reasons: vec![reason],
    };
    defence.forget(&client);
    match defence.store().block(&client, &plan).await {
        Ok((block, made)) => {
            if made {
                state
                    .metrics
                    .blocks
                    .get_or_create(&BlockOrigin { origin: "admin" })
                    .inc();
            }
            tracing::warn!(target: "ratewarden::admin", client, seconds = length.as_secs_ceil(), placed = made, "block added by the admin API");
            let status = if made {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(describe(&block, defence.now()))).into_response()
        }
        Err(e) => store_failed(&e),
    }
}

async fn lift_block(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(client): Path<String>,
) -> Response {
    let (defence, client) = match authorised_for(&state, &headers, &client) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    defence.forget(&client);
    match defence.store().lift(&client, defence.config().window).await {
        Ok(true) => {
            tracing::warn!(target: "ratewarden::admin", client, "block lifted by the admin API");
            Json(json!({ "client": client, "lifted": true })).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "not_blocked",
            "this client is not blocked",
        ),
        Err(e) => store_failed(&e),
    }
}

async fn client_standing(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(client): Path<String>,
) -> Response {
    let (defence, client) = match authorised_for(&state, &headers, &client) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    match defence.store().status(&client).await {
        Ok(status) => {
            let effective = defence
                .incident()
                .map_or(status.level, |i| i.raise(status.level));
            Json(json!({
                "client": client,
                "level": status.level.as_str(),
                "effective_level": effective.as_str(),
                "reasons": status.reasons,
                "block": status.block.as_ref().map(|b| describe(b, status.now)),
            }))
            .into_response()
        }
        Err(e) => store_failed(&e),
    }
}

fn incident_json(incident: Option<&Incident>, now: Timestamp) -> serde_json::Value {
    match incident {
        None => json!({ "active": false }),
        Some(i) => json!({
            "active": true,
            "level": i.level.map_or("one level up", Level::as_str),
            "since": i.since.as_secs_ceil(),
            "until": i.until.map(|u| u.as_secs_ceil()),
            "remaining_seconds": i.until.map(|u| u.saturating_since(now).as_secs_ceil()),
            "reason": i.reason,
        }),
    }
}

async fn incident_status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let defence = match authorised(&state, &headers) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let incident = defence.incident();
    Json(incident_json(incident.as_deref(), defence.now())).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewIncident {
    level: Option<String>,
    #[serde(rename = "for")]
    duration: Option<String>,
    reason: Option<String>,
}

async fn start_incident(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let defence = match authorised(&state, &headers) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let new: NewIncident = if body.iter().all(u8::is_ascii_whitespace) {
        NewIncident::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    r#"send JSON {"level": "high", "for": "30m", "reason": "..."}, every field optional"#,
                )
            }
        }
    };
    let level = match new.level.as_deref().map(Level::parse) {
        None => None,
        Some(Some(l)) => Some(l),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_level",
                "level is elevated, high or critical (or absent: one level up)",
            )
        }
    };
    let now = defence.now();
    let until = match new.duration.as_deref().map(crate::config::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(now.saturating_add(Nanos::from(d))),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_duration", &e),
    };
    let incident = Incident {
        level,
        until,
        reason: new.reason.unwrap_or_default().chars().take(200).collect(),
        since: now,
    };
    tracing::warn!(target: "ratewarden::admin", "incident mode switched on by the admin API");
    defence.start_incident(incident.clone());
    Json(incident_json(Some(&incident), now)).into_response()
}

async fn end_incident(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let defence = match authorised(&state, &headers) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let was = defence.end_incident();
    tracing::warn!(target: "ratewarden::admin", was_active = was, "incident mode switched off by the admin API");
    Json(json!({ "active": false, "was_active": was })).into_response()
}
