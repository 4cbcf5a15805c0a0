//! Finding the account of a login attempt: in a header, or in a bounded prefix of the
//! body, which is then replayed to the upstream ahead of the rest.

use super::LoginGuard;
use crate::gateway::forward::ForwardBody;
use crate::gateway::{responses, Body};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ratewarden_core::login::{
    account_in_body, account_in_header, AccountSource, LoginRoute, Named,
};

/// Reads what names the account: the header, or the body up to `max_body` (a longer,
/// unreadable or slow body goes on as it came, counted).
pub(super) async fn name_account(
    guard: &LoginGuard,
    route: &LoginRoute,
    request: Request<Incoming>,
) -> Result<(Request<ForwardBody>, Named), Response<Body>> {
    if let AccountSource::Header(name) = &route.account {
        let named = account_in_header(request.headers().get_all(name).iter().map(|v| v.as_bytes()));
        return Ok((request.map(ForwardBody::Streamed), named));
    }
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body as u64) {
        guard.count(route, "oversized");
        if route.refuse_unidentified {
            return Err(too_large(route));
        }
        return Ok((request.map(ForwardBody::Streamed), Named::Unreadable));
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(guard.body_timeout, read_prefix(body, route.max_body)).await;
    match read {
        Ok(Ok((head, None))) => {
            let named = account_in_body(&route.account, &head);
            let body = ForwardBody::Replayed {
                head: Some(head),
                rest: None,
            };
            Ok((Request::from_parts(parts, body), named))
        }
        Ok(Ok((head, rest))) => {
            guard.count(route, "oversized");
            if route.refuse_unidentified {
                return Err(too_large(route));
            }
            let body = ForwardBody::Replayed {
                head: Some(head),
                rest,
            };
            Ok((Request::from_parts(parts, body), Named::Unreadable))
        }
        Ok(Err(_)) => Err(responses::bad_request("the request body could not be read")),
        Err(_) => Err(responses::request_timeout(
            "the login request's body did not arrive in time",
        )),
    }
}

fn too_large(route: &LoginRoute) -> Response<Body> {
    responses::payload_too_large(&format!(
        "a login attempt's body may be at most {} bytes here",
        route.max_body
    ))
}

/// Reads `body` until it ends or more than `max` bytes came: the bytes, and the rest of
/// the body if it did not end.
async fn read_prefix(
    mut body: Incoming,
    max: usize,
) -> Result<(Bytes, Option<Incoming>), hyper::Error> {
    let mut head = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers carry no account; only data is kept.
        if let Ok(data) = frame?.into_data() {
            head.extend_from_slice(&data);
            if head.len() > max {
                return Ok((head.freeze(), Some(body)));
            }
        }
    }
    Ok((head.freeze(), None))
}
