//! The HTTP/1.1 side of a downstream connection.
//!
//! One task per connection reads request heads ([`http1_codec`]), hands each request to the
//! proxy path ([`server::handle`]) and writes the response, streaming bodies both ways: the
//! request body is read while the request is routed and forwarded, and keeps flowing while the
//! response is written. Requests are served one after another (pipelined requests wait in the read
//! buffer).
//!
//! Memory: the connection holds its read buffer only while it has bytes to parse, and its write
//! buffer only while writing; between requests both return to the worker's [`buffer_pool`], and
//! the wait for the next request happens on socket readiness alone. An idle keep-alive connection
//! costs its task and socket, not buffers.
//!
//! The first bytes of a connection may be the HTTP/2 preface; the connection is then handed back to
//! the caller, with the bytes already read, for the HTTP/2 server.

use std::future::{poll_fn, Future as _};
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::body::{BodyStream, FrameSender, RequestBody, ResponseBody};
use crate::buffer_pool;
use crate::handler_pool::PooledHandler;
use crate::header_pool;
use crate::http1_codec::{
    self, BodyFraming, ChunkedDecoder, CodecError, Decoded, HeadExtras, RequestHead, H2_PREFACE,
};
use crate::server::{self, ConnInfo, ListenerContext};
use crate::transport::Transport;
use crate::upstream_http1::UpgradedUpstream;

/// Body chunks at least this large are written straight from the body instead of being copied
/// behind the head.
const DIRECT_WRITE: usize = 16 * 1024;

/// Connection settings from the listener's connection manager.
#[derive(Debug, Clone)]
pub struct Http1Settings {
    /// Largest request head (`max_request_headers_kb`).
    pub max_head: usize,
    /// `request_headers_timeout`: from a request's first byte to its complete head.
    pub headers_timeout: Option<Duration>,
    /// `idle_timeout`: close after this long without a request in progress.
    pub idle_timeout: Option<Duration>,
    /// Recognise the HTTP/2 preface on the first bytes (codec AUTO).
    pub detect_h2: bool,
    /// Serve HTTP/1.0 requests (`accept_http_10`); otherwise 426 as Envoy.
    pub accept_http_10: bool,
    /// The `server` header of the codec's own replies (none with PASS_THROUGH).
    pub server: Option<HeaderValue>,
}

/// How the HTTP/1.1 side of a connection ended.
pub enum Outcome<T> {
    /// Closed (by either side, or after an error).
    Closed,
    /// The client spoke HTTP/2: the stream and the bytes already read from it.
    Http2 { io: T, prefix: Bytes },
}

/// Serve HTTP/1.1 requests on `io` until the connection closes.
pub async fn serve<T: Transport>(
    io: T,
    ctx: Arc<ListenerContext>,
    conn: ConnInfo,
    settings: Http1Settings,
) -> Outcome<T> {
    let (mut r, mut w) = io.into_halves();
    let mut rbuf: Option<BytesMut> = None;
    // Idle timeout: one timer for the connection's life, moved only when it fires early.
    let mut last_active = Instant::now();
    let idle = settings
        .idle_timeout
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut idle_timer = pin!(tokio::time::sleep_until(last_active + idle));
    let mut first = true;
    loop {
        // ---- the next request head ----
        let head = loop {
            if let Some(buf) = rbuf.as_mut().filter(|b| !b.is_empty()) {
                if first && settings.detect_h2 {
                    let n = buf.len().min(H2_PREFACE.len());
                    if buf[..n] == H2_PREFACE[..n] {
                        if n == H2_PREFACE.len() {
                            let prefix = rbuf.take().map(BytesMut::freeze).unwrap_or_default();
                            return match T::from_halves(r, w) {
                                Some(io) => Outcome::Http2 { io, prefix },
                                None => Outcome::Closed,
                            };
                        }
                    } else {
                        first = false;
                        continue;
                    }
                } else {
                    let parsed = match http1_codec::parse_request(buf, settings.max_head) {
                        Ok(Some(head))
                            if head.request.version() == Version::HTTP_10
                                && !settings.accept_http_10 =>
                        {
                            Err(CodecError::Http10)
                        }
                        other => other,
                    };
                    match parsed {
                        Ok(Some(head)) => break head,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, remote = %conn.remote, "bad request");
                            reply_error(&mut w, &e, settings.server.as_ref()).await;
                            release(rbuf);
                            return Outcome::Closed;
                        }
                    }
                }
            }
            let waiting_idle = rbuf.as_ref().is_none_or(BytesMut::is_empty);
            let read = if waiting_idle {
                tokio::select! {
                    biased;
                    n = read_more::<T>(&mut r, &mut rbuf) => n,
                    () = &mut idle_timer => {
                        let deadline = last_active + idle;
                        if Instant::now() >= deadline {
                            release(rbuf);
                            return Outcome::Closed;
                        }
                        idle_timer.as_mut().reset(deadline);
                        continue;
                    }
                }
            } else {
                match settings.headers_timeout {
                    Some(t) => {
                        match tokio::time::timeout(t, read_more::<T>(&mut r, &mut rbuf)).await {
                            Ok(n) => n,
                            Err(_) => {
                                let e = CodecError::HeadersTimeout;
                                reply_error(&mut w, &e, settings.server.as_ref()).await;
                                release(rbuf);
                                return Outcome::Closed;
                            }
                        }
                    }
                    None => read_more::<T>(&mut r, &mut rbuf).await,
                }
            };
            match read {
                Ok(0) | Err(_) => {
                    release(rbuf);
                    return Outcome::Closed;
                }
                Ok(_) => {}
            }
        };
        first = false;

        // ---- the request ----
        let RequestHead {
            request,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let (mut parts, ()) = request.into_parts();
        let (pump, body) = match framing {
            BodyFraming::Empty => (None, RequestBody::Empty),
            // The whole body came with the head (a small POST): hand it over as it is, so it
            // goes upstream in the same write as the head.
            BodyFraming::Length(n) if rbuf.as_ref().is_some_and(|b| b.len() as u64 >= n) => {
                let body = rbuf.as_mut().map(|b| b.split_to(n as usize).freeze());
                (None, RequestBody::Full(body))
            }
            BodyFraming::Length(_) | BodyFraming::Chunked => {
                let length = match framing {
                    BodyFraming::Length(n) => Some(n),
                    _ => None,
                };
                let (tx, rx) = BodyStream::channel(length);
                (Some(BodyPump::new(framing, tx)), RequestBody::Stream(rx))
            }
        };
        if expect_continue {
            // As Envoy does by default: answer `100 Continue` itself and not forward the expectation.
            parts.headers.remove(header::EXPECT);
            let has_body = pump.is_some() || !body.is_end_stream();
            if has_body && w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                release(rbuf);
                return Outcome::Closed;
            }
        }
        let info = RequestInfo {
            head: parts.method == Method::HEAD,
            http10: parts.version == Version::HTTP_10,
            keep_alive,
        };
        let req = Request::from_parts(parts, body);

        let (written, body_read) = {
            let mut handler = PooledHandler::new(server::handle(req, ctx.clone(), conn.clone()));
            let has_body = pump.is_some();
            let mut pumped = !has_body;
            let mut pump_ok = true;
            let mut pump_fut = pin!(async {
                match pump {
                    Some(mut p) => p.run::<T>(&mut r, &mut rbuf).await,
                    None => Ok(()),
                }
            });
            let response = loop {
                tokio::select! {
                    biased;
                    resp = &mut handler => break resp,
                    res = &mut pump_fut, if !pumped => {
                        pumped = true;
                        pump_ok = res.is_ok();
                    }
                }
            };
            // The body keeps flowing upstream while the response is written.
            let mut write = pin!(write_response(&mut w, response, info));
            let written = loop {
                tokio::select! {
                    biased;
                    res = &mut pump_fut, if !pumped => {
                        pumped = true;
                        pump_ok = res.is_ok();
                    }
                    out = &mut write => break out,
                }
            };
            if !pumped {
                // A body the upstream never read may still be complete in the buffer.
                if let Poll::Ready(res) =
                    poll_fn(|cx| Poll::Ready(pump_fut.as_mut().poll(cx))).await
                {
                    pumped = true;
                    pump_ok = res.is_ok();
                }
            }
            (written, pumped && pump_ok)
        };
        last_active = Instant::now();
        match written {
            Ok(Written::Done { close }) => {
                // A request body not read to its end leaves the stream unframed: close.
                if close || !body_read {
                    release(rbuf);
                    return Outcome::Closed;
                }
            }
            Ok(Written::Upgrade(up)) => {
                bridge(r, w, rbuf, up).await;
                return Outcome::Closed;
            }
            Err(e) => {
                tracing::debug!(error = %e, remote = %conn.remote, "response not written");
                release(rbuf);
                return Outcome::Closed;
            }
        }
        if rbuf.as_ref().is_some_and(BytesMut::is_empty) {
            release(rbuf.take());
        }
    }
}

fn release(buf: Option<BytesMut>) {
    if let Some(b) = buf {
        buffer_pool::give_read(b);
    }
}

/// Read more bytes into the connection's read buffer, taking a buffer from the pool only once the
/// socket is readable; an idle wait holds none. `Ok(0)` at end of stream.
pub(crate) async fn read_more<T: Transport>(
    r: &mut T::Read,
    rbuf: &mut Option<BytesMut>,
) -> io::Result<usize> {
    poll_fn(|cx| {
        let idle = rbuf.as_ref().is_none_or(BytesMut::is_empty);
        if idle {
            match T::poll_read_ready(r, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    release(rbuf.take());
                    return Poll::Pending;
                }
            }
        }
        let buf = rbuf.get_or_insert_with(buffer_pool::take_read);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buffer_pool::READ_SIZE);
        }
        let read = pin!(r.read_buf(buf)).poll(cx);
        if read.is_pending() && idle {
            release(rbuf.take());
        }
        read
    })
    .await
}

/// Reads a request body from the connection and sends it to the request's [`BodyStream`].
struct BodyPump {
    decoder: BodyDecoder,
    /// `None` once the receiver is gone: the rest of the body is read and dropped.
    tx: Option<FrameSender>,
}

/// What one step of the pump did.
enum Step {
    Continue,
    NeedMore,
    End,
    Failed(CodecError),
}

impl BodyPump {
    fn new(framing: BodyFraming, tx: FrameSender) -> Self {
        BodyPump {
            decoder: BodyDecoder::new(framing),
            tx: Some(tx),
        }
    }

    /// Read the whole body. An error (malformed chunk, connection closed early) is also sent to the
    /// body, so the upstream request fails instead of looking complete.
    async fn run<T: Transport>(
        &mut self,
        r: &mut T::Read,
        rbuf: &mut Option<BytesMut>,
    ) -> Result<(), CodecError> {
        loop {
            let step = {
                // Wait for room first, so nothing decoded is lost if this future is dropped.
                let permit = match &self.tx {
                    Some(tx) => tx.reserve().await.ok(),
                    None => None,
                };
                let decoded = match rbuf.as_mut() {
                    Some(buf) => self.decoder.decode(buf),
                    None => Ok(Decoded::NeedMore),
                };
                match decoded {
                    Ok(Decoded::Data(d)) => {
                        if let Some(p) = permit {
                            p.send(Ok(Frame::data(d)));
                        }
                        Step::Continue
                    }
                    // HTTP/1 trailers are dropped, as Envoy's HTTP/1 codec drops them unless
                    // `enable_trailers` is set.
                    Ok(Decoded::End(_trailers)) => Step::End,
                    Ok(Decoded::NeedMore) => Step::NeedMore,
                    Err(e) => Step::Failed(e),
                }
            };
            if self.tx.as_ref().is_some_and(|tx| tx.is_closed()) {
                self.tx = None;
            }
            match step {
                Step::Continue => {}
                Step::End => {
                    self.tx = None;
                    return Ok(());
                }
                Step::NeedMore => match read_more::<T>(r, rbuf).await {
                    Ok(n) if n > 0 => {}
                    _ => return Err(self.fail(CodecError::Malformed("body cut short"))),
                },
                Step::Failed(e) => return Err(self.fail(e)),
            }
        }
    }

    fn fail(&mut self, e: CodecError) -> CodecError {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(Box::new(io::Error::new(
                io::ErrorKind::InvalidData,
                e.to_string(),
            ))));
        }
        e
    }
}

/// Splits a request body out of the read buffer by its framing.
struct BodyDecoder {
    framing: BodyFraming,
    /// Bytes left of a `Content-Length` body.
    remaining: u64,
    chunked: ChunkedDecoder,
}

impl BodyDecoder {
    fn new(framing: BodyFraming) -> Self {
        let remaining = match framing {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        BodyDecoder {
            framing,
            remaining,
            chunked: ChunkedDecoder::default(),
        }
    }

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, CodecError> {
        match self.framing {
            BodyFraming::Empty => Ok(Decoded::End(None)),
            BodyFraming::Length(_) => {
                if self.remaining == 0 {
                    return Ok(Decoded::End(None));
                }
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = self.remaining.min(buf.len() as u64);
                self.remaining -= n;
                Ok(Decoded::Data(buf.split_to(n as usize).freeze()))
            }
            BodyFraming::Chunked => self.chunked.decode(buf),
        }
    }
}

/// What the request asked of the response's framing.
#[derive(Debug, Clone, Copy)]
struct RequestInfo {
    head: bool,
    http10: bool,
    keep_alive: bool,
}

enum Written {
    Done { close: bool },
    Upgrade(UpgradedUpstream),
}

/// Write a response: the head, then the body as it streams (`Content-Length` as given, chunked
/// when the length is unknown). A head and a body that is already there leave in one write.
async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    response: Response<ResponseBody>,
    req: RequestInfo,
) -> io::Result<Written> {
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut wbuf = buffer_pool::take_write();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(up) = parts.extensions.remove::<UpgradedUpstream>() {
            http1_codec::encode_response_head(
                &mut wbuf,
                status,
                &parts.headers,
                HeadExtras::default(),
            );
            w.write_all(&wbuf).await?;
            buffer_pool::give_write(wbuf);
            return Ok(Written::Upgrade(up));
        }
    }
    let bodiless = req.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut extras = HeadExtras {
        close: !req.keep_alive,
        keep_alive: req.keep_alive && req.http10,
        ..HeadExtras::default()
    };
    let mut chunked = false;
    let mut has_body = !bodiless;
    if has_body && !crate::header_lookup::contains(&parts.headers, &header::CONTENT_LENGTH) {
        if body.is_end_stream() {
            extras.content_length = Some(0);
            has_body = false;
        } else if let Some(n) = body.size_hint().exact() {
            extras.content_length = Some(n);
        } else if !req.http10 {
            extras.chunked = true;
            chunked = true;
        } else {
            // An HTTP/1.0 client learns the end of a body of unknown length from the close.
            extras.close = true;
            extras.keep_alive = false;
        }
    }
    http1_codec::encode_response_head(&mut wbuf, status, &parts.headers, extras);
    header_pool::give(parts.headers);
    if !has_body {
        drop(body);
        w.write_all(&wbuf).await?;
        buffer_pool::give_write(wbuf);
        return Ok(Written::Done {
            close: extras.close,
        });
    }
    loop {
        // Take what the body already has; write what is buffered before waiting for more.
        let next = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !wbuf.is_empty() {
                    w.write_all(&wbuf).await?;
                    wbuf.clear();
                }
                body.frame().await
            }
        };
        let frame = match next {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                // What arrived before the failure still goes out (as Envoy sends it); the
                // connection then closes, so the client sees the response cut short.
                if !wbuf.is_empty() {
                    let _ = w.write_all(&wbuf).await;
                }
                return Err(io::Error::other(e));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    http1_codec::encode_chunk_start(&mut wbuf, data.len());
                }
                if data.len() >= DIRECT_WRITE {
                    w.write_all(&wbuf).await?;
                    wbuf.clear();
                    w.write_all(&data).await?;
                } else {
                    wbuf.extend_from_slice(&data);
                }
                if chunked {
                    wbuf.extend_from_slice(b"\r\n");
                }
            }
            // Trailers: dropped, as Envoy's HTTP/1 codec does by default (`enable_trailers`).
            Err(_trailers) => {}
        }
    }
    if chunked {
        http1_codec::encode_chunked_end(&mut wbuf);
    }
    if !wbuf.is_empty() {
        w.write_all(&wbuf).await?;
    }
    buffer_pool::give_write(wbuf);
    Ok(Written::Done {
        close: extras.close,
    })
}

/// The reply to a request the codec could not read; the connection closes after it.
async fn reply_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    error: &CodecError,
    server: Option<&HeaderValue>,
) {
    let mut wbuf = buffer_pool::take_write();
    http1_codec::encode_error(&mut wbuf, error, server);
    let _ = w.write_all(&wbuf).await;
    let _ = w.shutdown().await;
    buffer_pool::give_write(wbuf);
}

/// After a `101 Switching Protocols`: copy bytes both ways between the client and the upgraded
/// upstream connection until both directions end.
async fn bridge<R, W>(mut r: R, mut w: W, leftover: Option<BytesMut>, up: UpgradedUpstream)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(upgraded) = up.take() else {
        return;
    };
    let (mut ur, mut uw) = tokio::io::split(upgraded);
    if let Some(b) = leftover.filter(|b| !b.is_empty()) {
        if uw.write_all(&b).await.is_err() {
            return;
        }
    }
    let client_to_upstream = async {
        let _ = tokio::io::copy(&mut r, &mut uw).await;
        let _ = uw.shutdown().await;
    };
    let upstream_to_client = async {
        let _ = tokio::io::copy(&mut ur, &mut w).await;
        let _ = w.shutdown().await;
    };
    tokio::join!(client_to_upstream, upstream_to_client);
}
