//! Body types of proxied messages. Bodies stream frame by frame (data and trailers); nothing is
//! buffered whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::cluster::Cluster;
use crate::downstream_h2::H2RequestBody;
use crate::upstream_http1::Http1Body;

/// Error type of proxied bodies.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body sent upstream: the client's body, or none (mirrors, synthetic requests).
#[derive(Debug)]
pub enum RequestBody {
    /// From the HTTP/2 connection driver, which receives the stream's DATA frames.
    H2(H2RequestBody),
    /// From the HTTP/1.1 connection driver, which reads the body while the request is routed.
    Stream(BodyStream),
    /// A body that had fully arrived with its head: one data frame, no channel. `None` once
    /// taken.
    Full(Option<Bytes>),
    Empty,
    /// Decoded as it streams by the decompressor filter.
    Decompressed(Box<crate::decompressor::DecompressedBody<RequestBody>>),
    /// A streamed body whose bytes an access log counts (`%BYTES_RECEIVED%`).
    Counted(Box<CountedBody>),
}

/// A request body that adds the bytes it passes to a counter.
#[derive(Debug)]
pub struct CountedBody {
    inner: RequestBody,
    count: Arc<AtomicU64>,
}

/// Count the request body's bytes into `count`: at once when the body came whole with its head,
/// else as it streams (a body that can be sent again, for retries, stays as it is).
pub fn count_request_body(body: &mut RequestBody, count: &Arc<AtomicU64>) {
    match body {
        RequestBody::Empty | RequestBody::Full(None) => {}
        RequestBody::Full(Some(b)) => count.store(b.len() as u64, Ordering::Relaxed),
        _ => {
            let inner = std::mem::replace(body, RequestBody::Empty);
            *body = RequestBody::Counted(Box::new(CountedBody {
                inner,
                count: count.clone(),
            }));
        }
    }
}

/// Frames of a request body, sent by the connection that reads them.
pub type FrameSender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BodyError>>;

/// The receiving end of a streamed request body.
#[derive(Debug)]
pub struct BodyStream {
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BodyError>>,
    /// Bytes still to come when the length is known.
    remaining: Option<u64>,
    ended: bool,
}

impl BodyStream {
    /// A body of `length` bytes (or unknown length) and the sender that feeds it. The channel holds
    /// two frames, so the reader stays at most two reads ahead of the upstream.
    pub fn channel(length: Option<u64>) -> (FrameSender, BodyStream) {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        (
            tx,
            BodyStream {
                rx,
                remaining: length,
                ended: false,
            },
        )
    }
}

impl Body for BodyStream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(r), Some(d)) = (this.remaining.as_mut(), frame.data_ref()) {
                    *r = r.saturating_sub(d.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Decompressed(b) => b.poll_frame(cx),
            RequestBody::Counted(c) => {
                let polled = Pin::new(&mut c.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(d) = frame.data_ref() {
                        c.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::H2(b) => b.is_end_stream(),
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Empty => true,
            RequestBody::Decompressed(b) => b.is_end_stream(),
            RequestBody::Counted(c) => c.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::H2(b) => b.size_hint(),
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Decompressed(b) => b.size_hint(),
            RequestBody::Counted(c) => c.inner.size_hint(),
        }
    }
}

/// A response body sent downstream.
#[derive(Debug)]
pub enum ResponseBody {
    /// Read from an upstream HTTP/1.1 connection, which goes back to its pool at the end.
    Http1(Http1Body, BodyDeadline),
    /// Streamed from an upstream HTTP/2 connection.
    Http2(Incoming, BodyDeadline),
    /// A locally generated body.
    Full(Option<Bytes>),
    /// Compressed as it streams by the compressor filter.
    Compressed(Box<crate::compressor::CompressedBody>),
    /// Decoded as it streams by the decompressor filter.
    Decompressed(Box<crate::decompressor::DecompressedBody<ResponseBody>>),
    /// Counted for the access logs, which are written when it ends or is dropped.
    Logged(Box<LoggedBody>),
}

/// A response body carrying its request's access log entry.
#[derive(Debug)]
pub struct LoggedBody {
    inner: ResponseBody,
    entry: Box<crate::access_log::LogEntry>,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.entry.finish();
    }
}

impl ResponseBody {
    /// `body`, writing `entry`'s lines when it ends.
    pub fn logged(body: ResponseBody, entry: Box<crate::access_log::LogEntry>) -> ResponseBody {
        ResponseBody::Logged(Box::new(LoggedBody { inner: body, entry }))
    }
}

/// The route timeout, still running while an upstream body streams: Envoy's route `timeout`
/// covers the whole response, not only its head. The timer is made only if the body has to wait
/// for the upstream, so a body that arrives with its head costs nothing.
#[derive(Debug, Default)]
pub struct BodyDeadline {
    /// One field for the instant and, once made, its timer (which then holds the instant): a
    /// response carries this, and a response of at most 256 bytes is copied from layer to layer
    /// by `memcpy`'s short path.
    when: Deadline,
    /// The cluster whose `upstream_rq_timeout` counts an expiry (the request's own reference,
    /// moved here rather than cloned).
    cluster: Option<Arc<Cluster>>,
}

/// Where a [`BodyDeadline`] stands.
#[derive(Debug, Default)]
enum Deadline {
    /// No deadline, or it has fired.
    #[default]
    None,
    /// A deadline no wait has needed a timer for yet.
    At(Instant),
    /// The body waited: the timer runs.
    Timer(Pin<Box<tokio::time::Sleep>>),
}

impl BodyDeadline {
    /// Whether the deadline has passed; registers `cx` to be woken when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if let Deadline::At(at) = self.when {
            self.when = Deadline::Timer(Box::pin(tokio::time::sleep_until(at.into())));
        }
        match &mut self.when {
            Deadline::Timer(timer) => timer.as_mut().poll(cx).is_ready(),
            Deadline::None | Deadline::At(_) => false,
        }
    }

    /// Poll `body`; past the deadline, a body still waiting ends with an error (the downstream
    /// connection is then reset, as Envoy resets a stream whose response headers went out).
    fn poll_body<B>(
        &mut self,
        body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BodyError>,
    {
        match body.poll_frame(cx) {
            Poll::Pending if self.expired(cx) => {
                self.when = Deadline::None;
                if let Some(c) = self.cluster.take() {
                    c.stats.rq_timeout.inc();
                }
                Poll::Ready(Some(Err("upstream request timeout".into())))
            }
            other => other.map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }
}

impl ResponseBody {
    /// An upstream body from `cluster` that must end by `at` (the route timeout); local bodies
    /// ignore it.
    pub fn with_deadline(mut self, at: Instant, cluster: Arc<Cluster>) -> Self {
        if let ResponseBody::Http1(_, d) | ResponseBody::Http2(_, d) = &mut self {
            d.when = Deadline::At(at);
            d.cluster = Some(cluster);
        }
        self
    }

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

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Http1(body, deadline) => deadline.poll_body(Pin::new(body), cx),
            ResponseBody::Http2(body, deadline) => deadline.poll_body(Pin::new(body), cx),
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Compressed(c) => c.poll_frame(cx),
            ResponseBody::Decompressed(d) => d.poll_frame(cx),
            ResponseBody::Logged(l) => {
                let polled = Pin::new(&mut l.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(d) = frame.data_ref() {
                        l.entry.sent_bytes += d.len() as u64;
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Http1(body, _) => body.is_end_stream(),
            ResponseBody::Http2(body, _) => body.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Compressed(c) => c.is_end_stream(),
            ResponseBody::Decompressed(d) => d.is_end_stream(),
            ResponseBody::Logged(l) => l.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Http1(body, _) => body.size_hint(),
            ResponseBody::Http2(body, _) => body.size_hint(),
            ResponseBody::Full(b) => {
                SizeHint::with_exact(b.as_ref().map(|b| b.len() as u64).unwrap_or(0))
            }
            ResponseBody::Compressed(c) => c.size_hint(),
            ResponseBody::Decompressed(d) => d.size_hint(),
            ResponseBody::Logged(l) => l.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response moves by value through every layer between the upstream codec and the
    /// downstream writer: each `.await` of a result copies it. glibc's `memcpy` copies up to 256
    /// bytes with eight vector loads and stores; past that it takes its loop. Under callgrind a
    /// 280-byte response cost 52 instructions a copy, about 20 copies per request.
    #[test]
    fn a_response_is_copied_by_memcpys_short_path() {
        let size = std::mem::size_of::<http::Response<ResponseBody>>();
        let body = std::mem::size_of::<ResponseBody>();
        eprintln!("a response: {size} bytes, of which the body {body}");
        assert!(size <= 256, "a response grew to {size} bytes");
    }
}
