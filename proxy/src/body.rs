//! Body types of proxied messages. Bodies stream frame by frame (data and trailers); nothing is
//! buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream_pool::PoolReturn;

/// Error type of proxied bodies.
pub type BodyError = hyper::Error;

/// A request body sent upstream: the client's body, or none (mirrors, synthetic requests).
#[derive(Debug)]
pub enum RequestBody {
    Incoming(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body sent downstream.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from an upstream; the connection goes back to its pool at the end.
    Upstream {
        body: Incoming,
        pool: Option<PoolReturn>,
    },
    /// A locally generated body.
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// An empty local body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }

    /// A local body with content.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ResponseBody::Full((!b.is_empty()).then_some(b))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body read to its end gives its connection back even if nobody polled past the end
        // (empty bodies, HEAD, 204); a body dropped early closes its connection with it.
        if let ResponseBody::Upstream { body, pool } = self {
            if body.is_end_stream() {
                if let Some(p) = pool.take() {
                    p.release();
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Upstream { body, pool } => {
                let r = Pin::new(&mut *body).poll_frame(cx);
                // hyper stops polling once `is_end_stream()` holds (e.g. after content-length
                // bytes), so the connection is released as soon as the end is known.
                let ended = matches!(r, Poll::Ready(None))
                    || (matches!(r, Poll::Ready(Some(Ok(_)))) && body.is_end_stream());
                if ended {
                    if let Some(p) = pool.take() {
                        p.release();
                    }
                }
                r
            }
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Full(b) => {
                SizeHint::with_exact(b.as_ref().map(|b| b.len() as u64).unwrap_or(0))
            }
        }
    }
}
