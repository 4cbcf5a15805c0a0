//! Alerts POSTed as JSON to a webhook, signed, retried with backoff.
//!
//! Body: `{"version": 1, "alerts": [ ... ]}`, one or more alerts, of any kinds. A POST
//! carries every alert that queued up while the previous one was out (up to the sink's
//! `batch`), as Alertmanager's webhook and CrowdSec's notification groups do: in a
//! flood the receiver gets about one POST per `batch` alerts, not one per alert, and a
//! lone alert still goes at once.
//!
//! Signature (when a secret is configured): `X-Ratewarden-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256 of "<t>.<body>">`. Signing the timestamp with the body lets a
//! receiver refuse replays of an old alert. Delivery is retried on connection errors,
//! 408, 429 and 5xx, up to five attempts, waiting 250 ms, 500 ms, 1 s, 2 s (or the
//! receiver's `Retry-After`, up to 30 s); other answers are final. A POST succeeds or
//! fails whole, except that a 413 has the batch sent again in halves.

use super::Delivery;
use crate::alert::Raised;
use crate::privacy::hmac_hex;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

/// Attempts per POST.
const ATTEMPTS: u32 = 5;
/// Longest wait a receiver's Retry-After may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Most alerts in one POST unless configured: about 100 KB of JSON.
pub const DEFAULT_BATCH: usize = 100;

/// The body's format, for receivers to check; raised if it ever changes.
const BODY_VERSION: u32 = 1;

/// A POST's body.
#[derive(Serialize)]
struct Body<'a> {
    version: u32,
    alerts: Vec<&'a RawValue>,
}

/// A webhook destination.
pub struct WebhookSink {
    client: reqwest::Client,
    /// Parsed once: an alert flood should not parse it ten thousand times.
    url: reqwest::Url,
    secret: Option<Vec<u8>>,
    batch: usize,
}

impl WebhookSink {
    /// A sink posting to `url` up to `batch` alerts at once, signing with `secret` if
    /// given; each attempt times out after `timeout`.
    pub fn new(
        url: String,
        secret: Option<String>,
        timeout: Duration,
        batch: usize,
    ) -> Result<WebhookSink, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A redirect would re-send the signed alert elsewhere (307/308) or turn it
            // into a GET whose 2xx looks like a delivery (301/302): refuse both.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ratewarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let url = reqwest::Url::parse(&url).map_err(|e| format!("webhook url: {e}"))?;
        Ok(WebhookSink {
            client,
            url,
            secret: secret.map(String::into_bytes),
            batch: batch.max(1),
        })
    }

    /// Most alerts in one POST.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Delivers `alerts` in one POST, retrying. A receiver that answers 413 (its body
    /// limit) gets the batch again in halves, down to single alerts, rather than losing
    /// all of it.
    pub async fn deliver(&self, alerts: &[Arc<Raised>]) -> Delivery {
        let body = match serde_json::to_vec(&Body {
            version: BODY_VERSION,
            alerts: alerts.iter().map(|a| a.json()).collect(),
        }) {
            Ok(body) => Bytes::from(body),
            Err(e) => return Delivery::failed(alerts.len(), e.to_string()),
        };
        match self.post(body).await {
            Ok(()) => Delivery::sent(alerts.len()),
            Err(problem) if problem.too_large && alerts.len() > 1 => {
                let (first, second) = alerts.split_at(alerts.len() / 2);
                let mut delivery = Box::pin(self.deliver(first)).await;
                delivery.add(Box::pin(self.deliver(second)).await);
                delivery
            }
            Err(problem) => Delivery::failed(alerts.len(), problem.message),
        }
    }

    /// POSTs `body`, retrying; the last problem once it gives up.
    async fn post(&self, body: Bytes) -> Result<(), Problem> {
        let mut last = Problem::default();
        for attempt in 0..ATTEMPTS {
            let mut request = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(secret) = &self.secret {
                let t = unix_seconds();
                let mut signed = format!("{t}.").into_bytes();
                signed.extend_from_slice(&body);
                request = request.header(
                    "x-ratewarden-signature",
                    format!("t={t},v1={}", hmac_hex(secret, &signed)),
                );
            }
            let wait = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    let status = response.status();
                    last = Problem {
                        message: format!("receiver answered {status}"),
                        too_large: status == reqwest::StatusCode::PAYLOAD_TOO_LARGE,
                    };
                    // 3xx included in the final answers: redirects are not followed.
                    let retryable = status.is_server_error()
                        || status.as_u16() == 408
                        || status.as_u16() == 429;
                    if !retryable {
                        return Err(last);
                    }
                    retry_after(&response).unwrap_or_else(|| backoff(attempt))
                }
                Err(e) => {
                    // Without the URL, which may carry a token (`?key=...`).
                    last = Problem {
                        message: format!("cannot reach the receiver: {}", e.without_url()),
                        too_large: false,
                    };
                    backoff(attempt)
                }
            };
            if attempt + 1 < ATTEMPTS {
                tokio::time::sleep(wait).await;
            }
        }
        Err(last)
    }
}

/// Why a POST was given up on.
#[derive(Default)]
struct Problem {
    message: String,
    /// The receiver refused the body's size (413).
    too_large: bool,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(6))
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[allow(clippy::disallowed_methods)] // wall-clock time for the signature's timestamp
fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, IdentityKind, Severity, Source};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    fn alert() -> Alert {
        Alert {
            id: Alert::new_id(),
            kind: "rate_limit_abuse",
            severity: Severity::High,
            identity: IdentityKind::Ip,
            identity_value: "203.0.113.9".into(),
            client_ip: "203.0.113.9".into(),
            client_network: "203.0.113.9/32".into(),
            violations: 3,
            window_seconds: 3600,
            violations_since_last_alert: 0,
            rules: vec!["api".into()],
            source: Source::Gateway,
            method: "GET".into(),
            path: "/api/items".into(),
            user_agent: None,
            authenticated: false,
            user: None,
            api_key_id: None,
            first_violation: 1,
            last_violation: 2,
            instance: "test".into(),
            threat: None,
            login: None,
        }
    }

    /// What a receiver was sent, and when.
    type Received = std::sync::Arc<parking_lot::Mutex<Vec<(Instant, Vec<u8>)>>>;

    /// A receiver on loopback answering its POSTs with `answers` in turn (status line
    /// and headers), one per connection; returns its URL and what it receives.
    async fn receiver(answers: Vec<&'static str>) -> (String, Received) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hooks", listener.local_addr().expect("address"));
        let received = Received::default();
        let log = received.clone();
        tokio::spawn(async move {
            for answer in answers {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Head, then as much body as Content-Length says.
                let body = loop {
                    let n = stream.read(&mut buffer).await.expect("read");
                    assert!(n > 0, "the client hung up");
                    request.extend_from_slice(&buffer[..n]);
                    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break request[end + 4..end + 4 + length].to_vec();
                    }
                };
                log.lock().push((Instant::now(), body));
                let response =
                    format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                stream.write_all(response.as_bytes()).await.expect("write");
            }
        });
        (url, received)
    }

    #[tokio::test]
    async fn a_500_is_retried_and_a_429s_retry_after_is_waited_for() {
        let (url, received) = receiver(vec![
            "500 Internal Server Error",
            "429 Too Many Requests\r\nRetry-After: 1",
            "200 OK",
        ])
        .await;
        let sink = WebhookSink::new(url, None, Duration::from_secs(5), 1).expect("sink");
        let alert = Raised::new(alert());
        let delivery = sink.deliver(std::slice::from_ref(&alert)).await;
        assert_eq!(delivery.sent, 1, "delivered on the third attempt");
        let received = received.lock();
        assert_eq!(received.len(), 3);
        // Resent as it was, with the alert's id: a receiver can tell a repeat.
        assert!(received.iter().all(|(_, body)| *body == received[0].1));
        let body: serde_json::Value = serde_json::from_slice(&received[0].1).expect("JSON");
        assert_eq!(body["alerts"][0]["id"], alert.id.to_string());
        let waited = received[2].0.duration_since(received[1].0);
        assert!(
            waited >= Duration::from_secs(1),
            "Retry-After: 1 was not waited for ({waited:?})"
        );
    }

    #[tokio::test]
    async fn a_client_error_is_final() {
        // A retry would be answered 200 and count as delivered.
        let (url, received) = receiver(vec!["400 Bad Request", "200 OK"]).await;
        let sink = WebhookSink::new(url, None, Duration::from_secs(5), 1).expect("sink");
        let delivery = sink.deliver(&[Raised::new(alert())]).await;
        let (failed, error) = delivery.failed.expect("not retried");
        assert_eq!((delivery.sent, failed), (0, 1));
        assert!(error.contains("400"), "{error}");
        assert_eq!(received.lock().len(), 1);
    }

    #[tokio::test]
    async fn alerts_delivered_together_go_in_one_post() {
        let (url, received) = receiver(vec!["200 OK"]).await;
        let sink = WebhookSink::new(url, Some("hook-secret".into()), Duration::from_secs(5), 100)
            .expect("sink");
        let mut second = alert();
        second.identity_value = "198.51.100.7".into();
        let both = [Raised::new(alert()), Raised::new(second)];
        assert_eq!(sink.deliver(&both).await.sent, 2);
        let received = received.lock();
        assert_eq!(received.len(), 1, "one POST");
        let body: serde_json::Value = serde_json::from_slice(&received[0].1).expect("JSON");
        assert_eq!(body["version"], 1);
        let values: Vec<&str> = body["alerts"]
            .as_array()
            .expect("a list of alerts")
            .iter()
            .map(|a| a["identity_value"].as_str().expect("identity"))
            .collect();
        assert_eq!(values, ["203.0.113.9", "198.51.100.7"]);
    }

    #[tokio::test]
    async fn a_batch_too_large_for_the_receiver_goes_again_in_halves() {
        let (url, received) = receiver(vec![
            "413 Payload Too Large",
            "200 OK",
            "413 Payload Too Large",
            "200 OK",
            "413 Payload Too Large",
        ])
        .await;
        let sink = WebhookSink::new(url, None, Duration::from_secs(5), 100).expect("sink");
        let alerts: Vec<Arc<Raised>> = (1..=4)
            .map(|i| {
                Raised::new(Alert {
                    identity_value: format!("203.0.113.{i}"),
                    ..alert()
                })
            })
            .collect();
        let delivery = sink.deliver(&alerts).await;
        // 4 refused; [1, 2] taken; [3, 4] refused; [3] taken; [4] refused alone: lost.
        assert_eq!(delivery.sent, 3);
        let (failed, problem) = delivery.failed.expect("one alert lost");
        assert_eq!(failed, 1);
        assert!(problem.contains("413"), "{problem}");
        let sizes: Vec<usize> = received
            .lock()
            .iter()
            .map(|(_, body)| {
                let body: serde_json::Value = serde_json::from_slice(body).expect("JSON");
                body["alerts"].as_array().expect("alerts").len()
            })
            .collect();
        assert_eq!(sizes, [4, 2, 2, 1, 1]);
    }
}
