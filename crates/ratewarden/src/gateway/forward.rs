//! Passing a request to the upstream and its answer back: hop-by-hop headers removed in
//! both directions, `X-Forwarded-For` rewritten, bodies streamed, timeouts enforced.

use super::responses::upstream_failure;
use super::Body;
use crate::metrics::{Metrics, UpstreamError};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::IpAddr;
use std::time::Duration;

/// The pooled HTTP/1.1 client to the upstream.
pub struct Upstream {
    client: Client<HttpConnector, Incoming>,
    base: Uri,
    timeout: Duration,
}

/// Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

impl Upstream {
    /// A client for `base` (scheme and authority).
    pub fn new(base: Uri, connect_timeout: Duration, timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream {
            client,
            base,
            timeout,
        }
    }

    /// Forwards `request` from `client_ip` (as identified) and returns the upstream's
    /// answer, or a 502/504 of our own.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        client_ip: IpAddr,
        metrics: &Metrics,
    ) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let client_authority = parts.uri.authority().cloned();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut uri = self.base.clone().into_parts();
        uri.path_and_query = path_and_query.parse().ok();
        parts.uri = match Uri::from_parts(uri) {
            Ok(u) => u,
            Err(_) => {
                return upstream_failure(StatusCode::BAD_GATEWAY, "cannot build upstream URI")
            }
        };
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The upstream hears who the client is from us alone; what the client claimed
        // was already weighed (and, from an untrusted peer, ignored).
        let xff = HeaderName::from_static("x-forwarded-for");
        parts.headers.remove(&xff);
        if let Ok(v) = HeaderValue::from_str(&client_ip.to_string()) {
            parts.headers.insert(xff, v);
        }
        parts.headers.remove("forwarded");
        if !parts.headers.contains_key(http::header::HOST) {
            // HTTP/2 names the host in :authority: the upstream hears the same host the
            // rules saw (the handler refused requests without one).
            if let Some(authority) = client_authority.as_ref().or(self.base.authority()) {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
        }
        let request = Request::from_parts(parts, body);
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Ok(Err(e)) => {
                metrics
                    .upstream_errors
                    .get_or_create(&UpstreamError { kind: "connect" })
                    .inc();
                tracing::warn!(error = %e, "upstream request failed");
                upstream_failure(StatusCode::BAD_GATEWAY, "the upstream could not be reached")
            }
            Err(_) => {
                metrics
                    .upstream_errors
                    .get_or_create(&UpstreamError { kind: "timeout" })
                    .inc();
                upstream_failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time",
                )
            }
        }
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // `Connection: host` must not take away the Host the rules matched on.
        if name != http::header::HOST {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}
