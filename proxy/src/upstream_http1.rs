//! HTTP/1.1 client for upstream connections, run inside the request's own task.
//!
//! hyper's client runs each connection as a task of its own and hands requests and responses to it
//! through channels, so every proxied request paid two task hops and their wake-ups. Here the task
//! that routes a request also writes it to the pooled connection, reads the response head, and
//! (through [`Http1Body`]) reads the body as the downstream writer asks for it. At the end of the
//! body the connection goes back to its endpoint's idle queue; dropped before the end, it closes.
//!
//! A request body that is still arriving is written while the response head is read, so an
//! upstream may answer before it has the whole body; the connection is then not reused. The part
//! of a body that has already arrived goes out in the same write as the head
//! ([`take_ready_body`]). A reused connection that turns out to be closed before any response byte
//! arrives is replaced by another when the request is idempotent and went out whole with its head,
//! the way hyper's pooling client retries a request it could not start.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::{BodyError, RequestBody};
use crate::buffer_pool;
use crate::http1_codec::{
    self, ChunkedDecoder, Decoded, RequestBodyFraming, ResponseBodyFraming, ResponseHead,
};
use crate::transport::Rewind;
use crate::upstream_pool::{ConnectionBudget, EndpointPool, UpstreamError, UpstreamStream};

/// Largest response head accepted (Envoy's `max_response_headers_kb` default, 60 KiB).
const MAX_RESPONSE_HEAD: usize = 60 * 1024;

/// An open HTTP/1.1 connection to an endpoint. Dropping it closes the socket and gives its slot
/// back to the cluster's connection budget.
pub struct Http1Connection {
    io: UpstreamStream,
    /// The endpoint's open-connection gauge (shared, so the idle queue holds no pool reference).
    open: Arc<AtomicU64>,
    budget: Arc<ConnectionBudget>,
    /// Requests sent on this connection, including the one in flight.
    pub(crate) uses: u32,
    /// The exchange in flight leaves it able to carry another request once its response body
    /// has been read: kept here, in the room `uses` leaves, rather than beside the connection
    /// in every response body.
    reusable: bool,
}

impl std::fmt::Debug for Http1Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Connection")
            .field("uses", &self.uses)
            .finish()
    }
}

impl Drop for Http1Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.budget.closed();
    }
}

/// Why a request failed on one connection, and whether it may be sent again on another.
pub(crate) struct SendError {
    pub error: UpstreamError,
    /// Nothing of a response arrived and the request can be written again.
    pub retryable: bool,
}

impl Http1Connection {
    /// Wrap a freshly dialled stream (its budget slot is already reserved and counted in `open`).
    pub(crate) fn new(
        io: UpstreamStream,
        open: Arc<AtomicU64>,
        budget: Arc<ConnectionBudget>,
    ) -> Self {
        Http1Connection {
            io,
            open,
            budget,
            uses: 0,
            reusable: false,
        }
    }

    /// Whether an idle connection still looks usable: the upstream has neither closed it nor sent
    /// anything unasked. Costs no system call while the socket has shown no new readiness.
    pub(crate) fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Send a request whose head is already encoded in `head`, and read the response head into
    /// `buf`. `body` is written after the head; while it is still arriving the response head is
    /// read at the same time. Returns the head and whether the whole request body was written.
    pub(crate) async fn exchange(
        &mut self,
        head: &[u8],
        body: &mut RequestBody,
        chunked: bool,
        buf: &mut BytesMut,
        head_request: bool,
    ) -> Result<(ResponseHead, bool), SendError> {
        let retryable = body.is_end_stream();
        // (A TLS stream may hold written bytes until flushed; for TCP the flush is free.)
        if let Err(e) = write_flushed(&mut self.io, head).await {
            return Err(SendError {
                error: UpstreamError::Io(e),
                retryable,
            });
        }
        if body.is_end_stream() {
            return read_head(&mut self.io, buf, head_request, retryable)
                .await
                .map(|h| (h, true));
        }
        let (mut r, mut w) = tokio::io::split(&mut self.io);
        let mut pump = pin!(write_body(&mut w, body, chunked));
        let mut response = pin!(read_head(&mut r, buf, head_request, false));
        // `None` while the body is being written, then whether all of it was.
        let mut written: Option<bool> = None;
        loop {
            tokio::select! {
                biased;
                h = &mut response => return h.map(|h| (h, written == Some(true))),
                // A failed write (the upstream stopped reading) still leaves its answer to read.
                done = &mut pump, if written.is_none() => written = Some(done.is_ok()),
            }
        }
    }
}

impl AsyncRead for Http1Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Http1Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Read response heads until a final one (or a 101); interim 1xx responses are skipped, as Envoy
/// does when it does not proxy `100-continue`.
async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
    retryable: bool,
) -> Result<ResponseHead, SendError> {
    let protocol = |e: http1_codec::CodecError| SendError {
        error: UpstreamError::Protocol(e.to_string()),
        retryable: false,
    };
    let mut received = false;
    loop {
        if !buf.is_empty() {
            received = true;
            if let Some(head) = http1_codec::parse_response(buf, head_request, MAX_RESPONSE_HEAD)
                .map_err(protocol)?
            {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(head);
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buffer_pool::READ_SIZE);
        }
        match r.read_buf(buf).await {
            Ok(0) => {
                return Err(SendError {
                    error: UpstreamError::Io(io::ErrorKind::UnexpectedEof.into()),
                    retryable: retryable && !received,
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(SendError {
                    error: UpstreamError::Io(e),
                    retryable: retryable && !received,
                })
            }
        }
    }
}

/// Write a request body after its head: as it comes (the head states its length) or chunked.
/// HTTP/1 request trailers are not forwarded.
async fn write_body<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &mut RequestBody,
    chunked: bool,
) -> io::Result<()> {
    let mut out = buffer_pool::take_write();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        out.clear();
        if chunked {
            http1_codec::encode_chunk_start(&mut out, data.len());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            write_flushed(w, &out).await?;
        } else {
            write_flushed(w, &data).await?;
        }
    }
    if chunked {
        out.clear();
        http1_codec::encode_chunked_end(&mut out);
        write_flushed(w, &out).await?;
    }
    buffer_pool::give_write(out);
    Ok(())
}

async fn write_flushed<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Append to `head` the part of `body` that has already arrived (often all of it), so that it goes
/// upstream in the same write; the rest, if any, is left in `body`. Only for a body sent as it is
/// (not chunked).
pub(crate) async fn take_ready_body(
    head: &mut Vec<u8>,
    body: &mut RequestBody,
) -> Result<(), BodyError> {
    if body.is_end_stream() {
        return Ok(());
    }
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
    match first {
        Poll::Ready(Some(Ok(frame))) => {
            if let Some(data) = frame.data_ref() {
                head.extend_from_slice(data);
            }
            Ok(())
        }
        Poll::Ready(Some(Err(e))) => Err(e),
        Poll::Ready(None) | Poll::Pending => Ok(()),
    }
}

/// How the request's body goes on the wire, given its headers.
pub(crate) fn request_framing(headers: &HeaderMap, body: &RequestBody) -> RequestBodyFraming {
    if body.is_end_stream() || headers.contains_key(http::header::CONTENT_LENGTH) {
        RequestBodyFraming::AsIs
    } else if let Some(n) = body.size_hint().exact() {
        RequestBodyFraming::Length(n)
    } else {
        RequestBodyFraming::Chunked
    }
}

/// Encode the head of `req` for an HTTP/1.1 upstream into `dst`.
pub(crate) fn encode_head(dst: &mut Vec<u8>, req: &Request<RequestBody>) -> RequestBodyFraming {
    let framing = request_framing(req.headers(), req.body());
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    http1_codec::encode_request_head(dst, req.method(), target, req.headers(), framing);
    framing
}

/// The upstream side of a `101 Switching Protocols`: the connection, with any bytes the upstream
/// sent after the 101 put back in front. Taken once by the downstream connection that bridges it.
#[derive(Clone)]
pub struct UpgradedUpstream(Arc<Mutex<Option<Rewind<Http1Connection>>>>);

impl UpgradedUpstream {
    fn new(conn: Http1Connection, prefix: Bytes) -> Self {
        UpgradedUpstream(Arc::new(Mutex::new(Some(Rewind::new(conn, prefix)))))
    }

    /// The upgraded stream; `None` after the first call.
    pub fn take(&self) -> Option<Rewind<Http1Connection>> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// Build the response for a head read from `conn`: its body streams from the connection, which
/// returns to `pool` once the body has been read to its end.
pub(crate) fn into_response(
    mut conn: Http1Connection,
    mut buf: BytesMut,
    head: ResponseHead,
    request_complete: bool,
    pool: &Arc<EndpointPool>,
) -> Response<Http1Body> {
    conn.reusable = head.keep_alive && request_complete;
    let mut response = Response::new(Http1Body::done());
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let prefix = buf.split().freeze();
        buffer_pool::give_read(buf);
        response
            .extensions_mut()
            .insert(UpgradedUpstream::new(conn, prefix));
        return response;
    }
    let mut body = Http1Body {
        conn: Some(Active {
            conn,
            buf,
            pool: pool.clone(),
        }),
        state: State::Done,
    };
    match head.framing {
        ResponseBodyFraming::Empty => body.finish(),
        ResponseBodyFraming::Length(n) => body.state = State::Length(n),
        ResponseBodyFraming::Chunked => body.state = State::Chunked(ChunkedDecoder::default()),
        ResponseBodyFraming::UntilClose => body.state = State::UntilClose,
    }
    *response.body_mut() = body;
    response
}

/// A response body read from an upstream HTTP/1.1 connection as it is polled.
#[derive(Debug)]
pub struct Http1Body {
    /// The connection, until the body has ended.
    conn: Option<Active>,
    state: State,
}

#[derive(Debug)]
struct Active {
    conn: Http1Connection,
    /// Bytes read from the connection and not yet handed on.
    buf: BytesMut,
    pool: Arc<EndpointPool>,
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl Http1Body {
    /// Whether the body comes in chunks (`transfer-encoding: chunked`).
    pub fn is_chunked(&self) -> bool {
        matches!(self.state, State::Chunked(_))
    }

    fn done() -> Self {
        Http1Body {
            conn: None,
            state: State::Done,
        }
    }

    /// The body cannot go on: the connection closes with it.
    fn abandon(&mut self) {
        self.conn = None;
        self.state = State::Done;
    }

    /// The body has ended: the connection goes back to its pool, or closes.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(a) = self.conn.take() {
            if a.conn.reusable && a.buf.is_empty() {
                a.pool.release(a.conn);
            }
            buffer_pool::give_read(a.buf);
        }
    }
}

impl Body for Http1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(active) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !active.buf.is_empty() {
                match &mut this.state {
                    State::Length(remaining) => {
                        let n = (*remaining).min(active.buf.len() as u64);
                        let data = active.buf.split_to(n as usize).freeze();
                        *remaining -= n;
                        if *remaining == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    State::Chunked(decoder) => match decoder.decode(&mut active.buf) {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::End(trailers)) => {
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(e) => {
                            this.abandon();
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    },
                    State::UntilClose => {
                        let data = active.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    State::Done => return Poll::Ready(None),
                }
            } else if let State::Length(0) = this.state {
                this.finish();
                return Poll::Ready(None);
            }
            // The buffer has nothing more to give: read from the connection.
            let Some(active) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if active.buf.capacity() - active.buf.len() < 1024 {
                active.buf.reserve(buffer_pool::READ_SIZE);
            }
            let read = pin!(active.conn.io.read_buf(&mut active.buf)).poll(cx);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if let State::UntilClose = this.state {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    this.abandon();
                    return Poll::Ready(Some(Err(
                        "upstream closed the connection before the end of the body".into(),
                    )));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
