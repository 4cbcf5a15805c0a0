//! What the gateway answers with: a body it wrote itself, or the upstream's, streamed.
//!
//! An enum rather than a boxed trait object: every response would otherwise pay an
//! allocation and a dynamic call per frame for a choice between two known kinds.

use super::forward::UpstreamBody;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why a body stopped: the peer's connection failed, or the upstream went quiet for
/// longer than `upstream_timeout` in the middle of a response.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the gateway sends.
pub enum Body {
    /// Written by the gateway (a 429, a problem, a health answer): all in memory.
    Own(Full<Bytes>),
    /// The upstream's response body, passed on as it arrives.
    Upstream(UpstreamBody),
}

impl Body {
    /// A body the gateway wrote.
    pub fn own(bytes: impl Into<Bytes>) -> Body {
        Body::Own(Full::new(bytes.into()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Both kinds are Unpin: no projection needed.
        match self.get_mut() {
            Body::Own(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Own(body) => body.is_end_stream(),
            Body::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Own(body) => body.size_hint(),
            Body::Upstream(body) => body.size_hint(),
        }
    }
}
