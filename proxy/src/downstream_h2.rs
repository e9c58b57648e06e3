//! The HTTP/2 side of a downstream connection (RFC 9113): Sluice's own server codec.
//!
//! One task per connection reads frames, decodes header blocks ([`hpack`]), runs each stream's
//! request through the proxy path ([`server::handle`]) and writes the responses, as Envoy and
//! HAProxy run a connection's streams on the thread that owns it. The streams' futures live in a
//! [`FuturesUnordered`] inside the connection's own future, so a stream whose upstream answers
//! wakes the connection's task and only that stream is polled; no stream is a task of its own and
//! no lock is shared with another task on the way.
//!
//! Flow control: the client may send each stream's request body up to the window announced in
//! SETTINGS; what the upstream side has consumed is given back with WINDOW_UPDATE, so a slow
//! upstream slows the client instead of filling memory. Responses are sent within the client's
//! windows; a stream that runs out waits, with one frame of its body held, for the client's
//! WINDOW_UPDATE.
//!
//! Errors follow RFC 9113 §5.4 and Envoy's defaults, checked against real Envoy: a broken frame or
//! header block, and a malformed request, end the connection with GOAWAY; a body that disagrees with
//! its `content-length` resets its stream. A client that resets streams faster than
//! it lets them finish (the "rapid reset" attack) gets GOAWAY `ENHANCE_YOUR_CALM`.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::body::{BodyError, RequestBody, ResponseBody};
use crate::buffer_pool;
use crate::downstream_http1::read_more;
use crate::h2_frame::{self as frame, flag, kind, setting, FrameHead, Reason};
use crate::handler_pool::PooledHandler;
use crate::hpack::{self, Field, Pseudo};
use crate::server::{self, ConnInfo, ListenerContext};
use crate::transport::Transport;

/// Connection settings from the listener's connection manager.
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` (`max_request_headers_kb`): larger requests get 431.
    pub max_header_list: usize,
    /// `idle_timeout`: GOAWAY after this long without an open stream.
    pub idle_timeout: Option<Duration>,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; streams beyond it are refused.
    pub max_concurrent_streams: u32,
    /// `SETTINGS_INITIAL_WINDOW_SIZE`: how much of a request body the client may send ahead.
    pub stream_window: u32,
    /// The connection's receive window, across all streams.
    pub connection_window: u32,
}

/// Output held before the connection stops reading new frames (a client that sends but does not
/// read its responses).
const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// Streams a client may reset before they finish, beyond those it lets finish, before the
/// connection is closed with `ENHANCE_YOUR_CALM`.
const RESET_BUDGET: u32 = 200;

/// Serve HTTP/2 on `io` until the connection closes. `prefix` holds bytes already read from it
/// (at least the start of the client preface when the HTTP/1.1 driver recognised it).
pub async fn serve<T: Transport>(
    io: T,
    prefix: Bytes,
    ctx: Arc<ListenerContext>,
    conn: ConnInfo,
    settings: H2Settings,
) {
    let spawn: fn(
        u32,
        Arc<StreamShared>,
        Request<RequestBody>,
        Arc<ListenerContext>,
        ConnInfo,
    ) -> _ = run_stream;
    let mut connection = Connection::new(io, prefix, ctx, conn, settings, spawn);
    poll_fn(|cx| connection.poll_run(cx)).await;
    connection.shutdown();
}

/// One stream's request through the proxy path; `None` when the stream was reset first (the
/// request is dropped, and with it the upstream exchange).
async fn run_stream(
    id: u32,
    shared: Arc<StreamShared>,
    req: Request<RequestBody>,
    ctx: Arc<ListenerContext>,
    conn: ConnInfo,
) -> Option<(u32, Response<ResponseBody>)> {
    // Boxed, so that this future (which `FuturesUnordered` moves on push) stays small.
    let mut handle = PooledHandler::new(server::handle(req, ctx, conn));
    poll_fn(|cx| {
        if shared.cancelled(cx) {
            return Poll::Ready(None);
        }
        Pin::new(&mut handle).poll(cx).map(|r| Some((id, r)))
    })
    .await
}

/// What a stream's futures (its handler, its request body, its response body) share with the
/// connection.
pub struct StreamShared {
    recv: Mutex<RecvState>,
    /// Set when the stream is reset: its futures end.
    cancelled: AtomicBool,
    /// The future running for the stream (handler, then response body), to wake on reset.
    task: AtomicWaker,
    /// The connection, to wake when request body data was consumed (window to give back).
    conn: Arc<AtomicWaker>,
}

/// The request body as received, waiting for the upstream side to take it.
#[derive(Default)]
struct RecvState {
    frames: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client ended the stream.
    end: bool,
    /// The stream was reset: the body ends with an error.
    failed: bool,
    reader: Option<Waker>,
    /// Bytes taken by the reader and not yet counted by the connection.
    consumed: usize,
    /// The body was dropped: whatever arrives is consumed at once.
    reader_gone: bool,
}

impl StreamShared {
    fn new(conn: Arc<AtomicWaker>) -> Self {
        StreamShared {
            recv: Mutex::new(RecvState::default()),
            cancelled: AtomicBool::new(false),
            task: AtomicWaker::new(),
            conn,
        }
    }

    fn recv(&self) -> MutexGuard<'_, RecvState> {
        // Only the connection and the body's reader take this lock, for a few field updates that
        // cannot panic; a poisoned lock still holds a consistent state.
        self.recv.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cancelled(&self, cx: &mut Context<'_>) -> bool {
        if self.cancelled.load(Ordering::Acquire) {
            return true;
        }
        self.task.register(cx.waker());
        self.cancelled.load(Ordering::Acquire)
    }

    /// End the stream's futures and fail its request body.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.task.wake();
        let reader = {
            let mut r = self.recv();
            r.failed = !r.end;
            r.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Queue request body data (or its end) for the reader. Returns the bytes to give back at
    /// once because nobody will read them.
    fn push(&self, data: Option<Bytes>, trailers: Option<HeaderMap>, end: bool) -> usize {
        let mut r = self.recv();
        let mut released = 0;
        if let Some(d) = data.filter(|d| !d.is_empty()) {
            if r.reader_gone {
                released = d.len();
            } else {
                r.frames.push_back(d);
            }
        }
        if trailers.is_some() {
            r.trailers = trailers;
        }
        r.end |= end;
        let reader = r.reader.take();
        drop(r);
        if let Some(w) = reader {
            w.wake();
        }
        released
    }

    /// Bytes consumed since the last call (all queued bytes once the reader is gone), and whether
    /// nothing more will be consumed.
    fn take_consumed(&self) -> (usize, bool) {
        let mut r = self.recv();
        let mut n = std::mem::take(&mut r.consumed);
        if r.reader_gone || r.failed {
            n += r.frames.drain(..).map(|f| f.len()).sum::<usize>();
        }
        let done = r.frames.is_empty() && (r.end || r.failed || r.reader_gone);
        (n, done)
    }
}

/// The request body of an HTTP/2 stream, as the proxy path reads it.
pub struct H2RequestBody {
    shared: Arc<StreamShared>,
    /// Bytes still to come when the request has a `content-length`.
    remaining: Option<u64>,
}

impl std::fmt::Debug for H2RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2RequestBody")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl Body for H2RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut r = this.shared.recv();
        if let Some(d) = r.frames.pop_front() {
            r.consumed += d.len();
            drop(r);
            if let Some(rem) = this.remaining.as_mut() {
                *rem = rem.saturating_sub(d.len() as u64);
            }
            this.shared.conn.wake();
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = r.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if r.failed {
            r.failed = false;
            r.end = true;
            return Poll::Ready(Some(Err("downstream stream reset".into())));
        }
        if r.end {
            return Poll::Ready(None);
        }
        if !r.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            r.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let r = self.shared.recv();
        r.end && !r.failed && r.frames.is_empty() && r.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for H2RequestBody {
    fn drop(&mut self) {
        self.shared.recv().reader_gone = true;
        self.shared.conn.wake();
    }
}

/// The next frame of a response body that had to wait.
struct BodyNext {
    id: u32,
    shared: Arc<StreamShared>,
    body: Option<ResponseBody>,
}

type BodyEvent = Option<Result<Frame<Bytes>, BodyError>>;

impl Future for BodyNext {
    /// `None` when the stream was reset meanwhile.
    type Output = Option<(u32, ResponseBody, BodyEvent)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.shared.cancelled(cx) {
            return Poll::Ready(None);
        }
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(ev) => Poll::Ready(this.body.take().map(|b| (this.id, b, ev))),
        }
    }
}

/// Hashes stream ids (odd numbers counting up) without SipHash's cost.
#[derive(Default)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A stream as the connection sees it.
struct Stream {
    shared: Arc<StreamShared>,
    /// The client may still send (no END_STREAM or reset yet).
    recv_open: bool,
    /// DATA the client may still send on this stream.
    recv_window: i64,
    /// Bytes consumed and not yet given back with WINDOW_UPDATE.
    recv_release: usize,
    /// The request's `content-length`, counting down as DATA arrives.
    recv_length: Option<u64>,
    /// Response DATA this stream may still send.
    send_window: i64,
    /// Waiting for window: the response body, and the data it gave that did not fit.
    blocked: Option<(Box<ResponseBody>, Bytes)>,
    /// A HEAD request: the response has no body, whatever its headers say.
    head: bool,
    /// The request has a body (no END_STREAM on its HEADERS).
    body: bool,
}

/// A header block waiting for its CONTINUATION frames.
struct PendingBlock {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

/// A connection error: GOAWAY with this code, then close.
#[derive(Debug)]
struct ConnError(Reason);

/// Bytes waiting to be written: large body chunks by reference, everything else copied into
/// `tail`, written after them.
#[derive(Default)]
struct Output {
    queue: VecDeque<Bytes>,
    tail: Vec<u8>,
    /// Bytes at the start of `tail` already written.
    written: usize,
    /// Bytes in `queue`.
    queued: usize,
}

/// Body chunks at least this large are queued by reference rather than copied.
const SHARE_DATA: usize = 4096;

impl Output {
    fn buf(&mut self) -> &mut Vec<u8> {
        if self.tail.capacity() == 0 {
            self.tail = buffer_pool::take_write();
        }
        &mut self.tail
    }

    fn len(&self) -> usize {
        self.queued + self.tail.len() - self.written
    }

    fn data(&mut self, data: Bytes) {
        if data.len() < SHARE_DATA {
            self.buf().extend_from_slice(&data);
            return;
        }
        if self.tail.len() > self.written {
            let tail = Bytes::from(std::mem::take(&mut self.tail)).slice(self.written..);
            self.queued += tail.len();
            self.queue.push_back(tail);
        } else {
            self.tail.clear();
        }
        self.written = 0;
        self.queued += data.len();
        self.queue.push_back(data);
    }

    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.queue.is_empty() {
                if self.written == self.tail.len() {
                    if self.tail.capacity() > 0 {
                        buffer_pool::give_write(std::mem::take(&mut self.tail));
                    }
                    self.written = 0;
                    return Pin::new(w).poll_flush(cx);
                }
                let n = std::task::ready!(
                    Pin::new(&mut *w).poll_write(cx, &self.tail[self.written..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                if self.written == self.tail.len() {
                    self.tail.clear();
                    self.written = 0;
                }
                continue;
            }
            let mut slices = [IoSlice::new(&[]); 16];
            let mut count = 0;
            for b in self.queue.iter().take(slices.len() - 1) {
                slices[count] = IoSlice::new(b);
                count += 1;
            }
            if count == self.queue.len() && self.tail.len() > self.written {
                slices[count] = IoSlice::new(&self.tail[self.written..]);
                count += 1;
            }
            let mut n =
                std::task::ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while n > 0 {
                match self.queue.front_mut() {
                    Some(front) if n >= front.len() => {
                        n -= front.len();
                        self.queued -= front.len();
                        self.queue.pop_front();
                    }
                    Some(front) => {
                        let _ = front.split_to(n);
                        self.queued -= n;
                        n = 0;
                    }
                    None => {
                        self.written += n;
                        n = 0;
                    }
                }
            }
        }
    }
}

type Spawn<F> =
    fn(u32, Arc<StreamShared>, Request<RequestBody>, Arc<ListenerContext>, ConnInfo) -> F;

struct Connection<T: Transport, F> {
    r: T::Read,
    w: T::Write,
    rbuf: Option<BytesMut>,
    out: Output,
    decoder: hpack::Decoder,
    streams: HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>,
    handlers: FuturesUnordered<F>,
    bodies: FuturesUnordered<BodyNext>,
    spawn: Spawn<F>,
    ctx: Arc<ListenerContext>,
    conn: ConnInfo,
    settings: H2Settings,
    conn_waker: Arc<AtomicWaker>,
    /// Still expecting the client preface.
    preface: bool,
    /// The client's first SETTINGS arrived.
    peer_settings: bool,
    block: Option<PendingBlock>,
    /// Highest stream id the client opened.
    last_stream: u32,
    /// DATA the connection may still send, and the client's SETTINGS for new streams.
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// DATA the client may still send on the connection, and consumed bytes not yet given back.
    recv_window: i64,
    recv_release: usize,
    /// Streams whose request body is still being read.
    uploading: Vec<u32>,
    /// Streams waiting for send window, oldest first.
    blocked: VecDeque<u32>,
    /// GOAWAY sent: no new streams; close once the open ones are done (at once after an error).
    goaway: Option<Reason>,
    /// The client sent GOAWAY: no new streams from it.
    peer_goaway: bool,
    reset_budget: u32,
    idle_timer: Option<Pin<Box<Sleep>>>,
    idle_since: Instant,
    /// The last request's `:authority`, parsed: a connection's requests nearly always name the
    /// same one, and a byte comparison costs less than parsing it again.
    authority: Option<KnownAuthority>,
}

impl<T: Transport, F> Connection<T, F>
where
    F: Future<Output = Option<(u32, Response<ResponseBody>)>>,
{
    fn new(
        io: T,
        prefix: Bytes,
        ctx: Arc<ListenerContext>,
        conn: ConnInfo,
        settings: H2Settings,
        spawn: Spawn<F>,
    ) -> Self {
        let (r, w) = io.into_halves();
        let rbuf = (!prefix.is_empty()).then(|| {
            let mut b = buffer_pool::take_read();
            b.extend_from_slice(&prefix);
            b
        });
        let mut out = Output::default();
        frame::put_settings(
            out.buf(),
            &[
                (
                    setting::MAX_CONCURRENT_STREAMS,
                    settings.max_concurrent_streams,
                ),
                (setting::INITIAL_WINDOW_SIZE, settings.stream_window),
                (
                    setting::MAX_HEADER_LIST_SIZE,
                    settings.max_header_list as u32,
                ),
            ],
        );
        let conn_window = settings.connection_window.max(frame::DEFAULT_WINDOW);
        if conn_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(out.buf(), 0, conn_window - frame::DEFAULT_WINDOW);
        }
        Connection {
            r,
            w,
            rbuf,
            out,
            decoder: hpack::Decoder::default(),
            streams: HashMap::default(),
            handlers: FuturesUnordered::new(),
            bodies: FuturesUnordered::new(),
            spawn,
            ctx,
            conn,
            conn_waker: Arc::new(AtomicWaker::new()),
            preface: true,
            peer_settings: false,
            block: None,
            last_stream: 0,
            send_window: i64::from(frame::DEFAULT_WINDOW),
            peer_initial_window: i64::from(frame::DEFAULT_WINDOW),
            peer_max_frame: frame::MAX_FRAME,
            recv_window: i64::from(conn_window),
            recv_release: 0,
            uploading: Vec::new(),
            blocked: VecDeque::new(),
            goaway: None,
            peer_goaway: false,
            reset_budget: RESET_BUDGET,
            idle_timer: settings
                .idle_timeout
                .map(|t| Box::pin(tokio::time::sleep(t))),
            idle_since: Instant::now(),
            authority: None,
            settings,
        }
    }

    /// Run the connection until it is done.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut busy = false;
            if self.reading() {
                let read = pin!(read_more::<T>(&mut self.r, &mut self.rbuf)).poll(cx);
                match read {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        busy = true;
                        if let Err(ConnError(reason)) = self.read_frames() {
                            self.go_away(reason);
                        }
                    }
                    Poll::Ready(_) => {
                        // The client closed (or the socket failed): nothing more can be asked.
                        self.release_read_buffer();
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            while let Poll::Ready(Some(done)) = self.handlers.poll_next_unpin(cx) {
                busy = true;
                if let Some((id, response)) = done {
                    self.respond(id, response);
                }
            }
            while let Poll::Ready(Some(next)) = self.bodies.poll_next_unpin(cx) {
                busy = true;
                if let Some((id, body, ev)) = next {
                    if let Some(body) = self.on_body(id, body, ev) {
                        self.pump(id, body);
                    }
                }
            }
            self.give_back_window(cx);
            let was_reading = self.reading();
            match self.out.poll_flush(&mut self.w, cx) {
                Poll::Ready(Ok(())) => {
                    if self.goaway.is_some() && self.streams.is_empty() {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            if !was_reading && self.reading() {
                busy = true;
            }
            if self.peer_goaway && self.streams.is_empty() && self.out.len() == 0 {
                return Poll::Ready(());
            }
            if !busy {
                return self.poll_idle(cx);
            }
        }
    }

    /// With no stream open for `idle_timeout`, say GOAWAY and close.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(timer), Some(idle)) = (self.idle_timer.as_mut(), self.settings.idle_timeout)
        else {
            return Poll::Pending;
        };
        if !self.streams.is_empty() || self.goaway.is_some() {
            return Poll::Pending;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let deadline = self.idle_since + idle;
        if Instant::now() < deadline {
            // Active since the timer was set: move it (one timer for the connection's life).
            timer.as_mut().reset(deadline);
            return match timer.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            };
        }
        self.go_away(Reason::NoError);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn reading(&self) -> bool {
        self.goaway.is_none() && self.out.len() < MAX_PENDING_OUTPUT
    }

    fn release_read_buffer(&mut self) {
        if let Some(b) = self.rbuf.take() {
            buffer_pool::give_read(b);
        }
    }

    /// Drop every stream (their futures end) and return the buffers.
    fn shutdown(&mut self) {
        for (_, s) in self.streams.drain() {
            s.shared.cancel();
        }
        self.release_read_buffer();
        if self.out.tail.capacity() > 0 {
            buffer_pool::give_write(std::mem::take(&mut self.out.tail));
        }
    }

    /// Say GOAWAY with `reason`: no new streams; after an error, the open ones are dropped.
    fn go_away(&mut self, reason: Reason) {
        if self.goaway.is_some() {
            return;
        }
        frame::put_goaway(self.out.buf(), self.last_stream, reason);
        self.goaway = Some(reason);
        if reason != Reason::NoError {
            let ids: Vec<u32> = self.streams.keys().copied().collect();
            for id in ids {
                self.remove_stream(id);
            }
        }
        self.release_read_buffer();
    }

    // ---- reading ----

    /// Handle every complete frame in the read buffer.
    fn read_frames(&mut self) -> Result<(), ConnError> {
        loop {
            let Some(buf) = self.rbuf.as_mut() else {
                return Ok(());
            };
            if self.preface {
                let n = buf.len().min(frame::PREFACE.len());
                if buf[..n] != frame::PREFACE[..n] {
                    return Err(ConnError(Reason::ProtocolError));
                }
                if n < frame::PREFACE.len() {
                    return Ok(());
                }
                let _ = buf.split_to(n);
                self.preface = false;
            }
            let Some(head) = FrameHead::parse(buf) else {
                break;
            };
            if head.len > frame::MAX_FRAME {
                return Err(ConnError(Reason::FrameSizeError));
            }
            let total = frame::HEAD_LEN + head.len;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(());
            }
            if !self.peer_settings && (head.kind != kind::SETTINGS || head.has(flag::ACK)) {
                return Err(ConnError(Reason::ProtocolError));
            }
            let payload = match head.kind {
                kind::DATA | kind::HEADERS | kind::CONTINUATION => {
                    let mut f = buf.split_to(total);
                    let _ = f.split_to(frame::HEAD_LEN);
                    f.freeze()
                }
                _ => {
                    let p = Bytes::copy_from_slice(&buf[frame::HEAD_LEN..total]);
                    let _ = buf.split_to(total);
                    p
                }
            };
            self.on_frame(head, payload)?;
        }
        if self.rbuf.as_ref().is_some_and(BytesMut::is_empty) {
            self.release_read_buffer();
        }
        Ok(())
    }

    fn on_frame(&mut self, head: FrameHead, payload: Bytes) -> Result<(), ConnError> {
        if let Some(pending) = &self.block {
            if head.kind != kind::CONTINUATION || head.stream != pending.stream {
                return Err(ConnError(Reason::ProtocolError));
            }
        }
        match head.kind {
            kind::DATA => self.on_data(head, payload),
            kind::HEADERS => self.on_headers(head, payload),
            kind::CONTINUATION => self.on_continuation(head, payload),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(ConnError(Reason::ProtocolError));
                }
                if head.len != 5 {
                    self.reset(head.stream, Reason::FrameSizeError);
                }
                Ok(())
            }
            kind::RST_STREAM => self.on_rst_stream(head),
            kind::SETTINGS => self.on_settings(head, &payload),
            kind::PUSH_PROMISE => Err(ConnError(Reason::ProtocolError)),
            kind::PING => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::ProtocolError));
                }
                if head.len != 8 {
                    return Err(ConnError(Reason::FrameSizeError));
                }
                if !head.has(flag::ACK) {
                    frame::put_ping_ack(self.out.buf(), &payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::ProtocolError));
                }
                self.peer_goaway = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(head, &payload),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    /// A stream id the client has not opened yet.
    fn idle(&self, id: u32) -> bool {
        id > self.last_stream
    }

    fn on_settings(&mut self, head: FrameHead, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(Reason::ProtocolError));
        }
        if head.has(flag::ACK) {
            return if head.len == 0 {
                Ok(())
            } else {
                Err(ConnError(Reason::FrameSizeError))
            };
        }
        if !head.len.is_multiple_of(6) {
            return Err(ConnError(Reason::FrameSizeError));
        }
        self.peer_settings = true;
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::ProtocolError));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return Err(ConnError(Reason::FlowControlError));
                    }
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > frame::MAX_WINDOW {
                            return Err(ConnError(Reason::FlowControlError));
                        }
                    }
                    if delta > 0 {
                        self.unblock_all();
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(Reason::ProtocolError));
                    }
                    self.peer_max_frame = value as usize;
                }
                // The encoder never uses the dynamic table, and pushes nothing: the other
                // settings do not change what this server sends.
                _ => {}
            }
        }
        frame::put_settings_ack(self.out.buf());
        Ok(())
    }

    fn on_window_update(&mut self, head: FrameHead, payload: &[u8]) -> Result<(), ConnError> {
        if head.len != 4 {
            return Err(ConnError(Reason::FrameSizeError));
        }
        let increment = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(Reason::ProtocolError));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(ConnError(Reason::FlowControlError));
            }
            self.unblock_all();
            return Ok(());
        }
        if self.idle(head.stream) {
            return Err(ConnError(Reason::ProtocolError));
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            // A stream already closed: the update crossed our end of it.
            return Ok(());
        };
        if increment == 0 {
            self.reset(head.stream, Reason::ProtocolError);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            self.reset(head.stream, Reason::FlowControlError);
            return Ok(());
        }
        if stream.blocked.is_some() {
            self.unblock(head.stream);
        }
        Ok(())
    }

    fn on_rst_stream(&mut self, head: FrameHead) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::ProtocolError));
        }
        if head.len != 4 {
            return Err(ConnError(Reason::FrameSizeError));
        }
        if self.idle(head.stream) {
            return Err(ConnError(Reason::ProtocolError));
        }
        if self.remove_stream(head.stream).is_some() {
            // Rapid reset: a client that opens and cancels streams costs work it never waits for.
            self.reset_budget = self.reset_budget.saturating_sub(1);
            if self.reset_budget == 0 {
                return Err(ConnError(Reason::EnhanceYourCalm));
            }
        }
        Ok(())
    }

    fn on_data(&mut self, head: FrameHead, payload: Bytes) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::ProtocolError));
        }
        if self.idle(head.stream) {
            return Err(ConnError(Reason::ProtocolError));
        }
        // The whole payload, padding included, counts against the connection's window.
        let len = head.len as i64;
        if len > self.recv_window {
            return Err(ConnError(Reason::FlowControlError));
        }
        self.recv_window -= len;
        let Some(range) = frame::unpadded(&payload, &head) else {
            return Err(ConnError(Reason::ProtocolError));
        };
        let padding = head.len - range.len();
        let end = head.has(flag::END_STREAM);
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            // Closed on our side (reset or answered): give the window back, ignore the data.
            self.recv_release += head.len;
            return Ok(());
        };
        if !stream.recv_open {
            self.recv_release += head.len;
            self.reset(head.stream, Reason::StreamClosed);
            return Ok(());
        }
        if len > stream.recv_window {
            self.recv_release += head.len;
            self.reset(head.stream, Reason::FlowControlError);
            return Ok(());
        }
        stream.recv_window -= len;
        let data = payload.slice(range);
        // A request body longer or shorter than its content-length is malformed (§8.1.1).
        if let Some(left) = stream.recv_length.as_mut() {
            let n = data.len() as u64;
            if n > *left || (end && n != *left) {
                self.recv_release += head.len;
                self.reset(head.stream, Reason::ProtocolError);
                return Ok(());
            }
            *left -= n;
        }
        stream.recv_release += padding;
        self.recv_release += padding;
        if end {
            stream.recv_open = false;
        }
        let unread = stream.shared.push(Some(data), None, end);
        stream.recv_release += unread;
        self.recv_release += unread;
        Ok(())
    }

    fn on_headers(&mut self, head: FrameHead, payload: Bytes) -> Result<(), ConnError> {
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return Err(ConnError(Reason::ProtocolError));
        }
        let Some(mut range) = frame::unpadded(&payload, &head) else {
            return Err(ConnError(Reason::ProtocolError));
        };
        if head.has(flag::PRIORITY) {
            if range.len() < 5 {
                return Err(ConnError(Reason::FrameSizeError));
            }
            range.start += 5;
        }
        let fragment = payload.slice(range);
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.on_header_block(head.stream, fragment, end_stream);
        }
        if fragment.len() > self.max_block() {
            return Err(ConnError(Reason::EnhanceYourCalm));
        }
        self.block = Some(PendingBlock {
            stream: head.stream,
            end_stream,
            block: BytesMut::from(&fragment[..]),
        });
        Ok(())
    }

    fn on_continuation(&mut self, head: FrameHead, payload: Bytes) -> Result<(), ConnError> {
        let max = self.max_block();
        let Some(pending) = self.block.as_mut() else {
            return Err(ConnError(Reason::ProtocolError));
        };
        if pending.block.len() + payload.len() > max {
            return Err(ConnError(Reason::EnhanceYourCalm));
        }
        pending.block.extend_from_slice(&payload);
        if !head.has(flag::END_HEADERS) {
            return Ok(());
        }
        let Some(done) = self.block.take() else {
            return Ok(());
        };
        self.on_header_block(done.stream, done.block.freeze(), done.end_stream)
    }

    /// The most header block bytes buffered across CONTINUATION frames.
    fn max_block(&self) -> usize {
        (self.settings.max_header_list * 2).max(64 * 1024)
    }

    /// A complete header block: a new request, or the trailers of one.
    fn on_header_block(
        &mut self,
        id: u32,
        block: Bytes,
        end_stream: bool,
    ) -> Result<(), ConnError> {
        let mut parts = RequestParts::new(self.settings.max_header_list);
        self.decoder
            .decode(&block, |f| parts.add(f))
            .map_err(|_| ConnError(Reason::CompressionError))?;
        if !self.idle(id) {
            return self.on_trailers(id, parts, end_stream);
        }
        self.last_stream = id;
        if self.goaway.is_some() || self.peer_goaway {
            frame::put_rst_stream(self.out.buf(), id, Reason::RefusedStream);
            return Ok(());
        }
        if self.streams.len() >= self.settings.max_concurrent_streams as usize {
            frame::put_rst_stream(self.out.buf(), id, Reason::RefusedStream);
            return Ok(());
        }
        if parts.too_large {
            // Envoy resets such a stream (its HTTP/1.1 codec answers 431 instead).
            frame::put_rst_stream(self.out.buf(), id, Reason::InternalError);
            return Ok(());
        }
        // A malformed request ends the connection, as in Envoy by default
        // (`stream_error_on_invalid_http_messaging` false), not only its stream.
        let Some(built) = parts.build(&mut self.authority) else {
            return Err(ConnError(Reason::ProtocolError));
        };
        let BuiltRequest {
            mut request,
            content_length,
            expect_continue,
        } = built;
        if end_stream && content_length.is_some_and(|n| n != 0) {
            frame::put_rst_stream(self.out.buf(), id, Reason::ProtocolError);
            return Ok(());
        }
        let shared = Arc::new(StreamShared::new(self.conn_waker.clone()));
        if end_stream {
            shared.recv().end = true;
        } else {
            *request.body_mut() = RequestBody::H2(H2RequestBody {
                shared: shared.clone(),
                remaining: content_length,
            });
            self.uploading.push(id);
            if expect_continue {
                // Answer `100 Continue` here, as the HTTP/1.1 driver does.
                let buf = self.out.buf();
                let start = begin_header_block(buf);
                hpack::encode_status(buf, 100);
                finish_header_block(buf, start, id, false);
            }
        }
        let head = request.method() == Method::HEAD;
        self.streams.insert(
            id,
            Stream {
                shared: shared.clone(),
                recv_open: !end_stream,
                recv_window: i64::from(self.settings.stream_window),
                recv_release: 0,
                recv_length: content_length,
                send_window: self.peer_initial_window,
                blocked: None,
                head,
                body: !end_stream,
            },
        );
        self.handlers.push((self.spawn)(
            id,
            shared,
            request,
            self.ctx.clone(),
            self.conn.clone(),
        ));
        Ok(())
    }

    /// A header block on a stream already open: its trailers, which must end it.
    fn on_trailers(
        &mut self,
        id: u32,
        parts: RequestParts,
        end_stream: bool,
    ) -> Result<(), ConnError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            // A stream closed on our side: its block was decoded (the table stays in step) and
            // is dropped.
            return Ok(());
        };
        if !stream.recv_open {
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        }
        let Some(trailers) = parts.trailers().filter(|_| end_stream) else {
            return Err(ConnError(Reason::ProtocolError));
        };
        if stream.recv_length.is_some_and(|n| n != 0) {
            self.reset(id, Reason::ProtocolError);
            return Ok(());
        }
        stream.recv_open = false;
        stream.shared.push(None, Some(trailers), true);
        Ok(())
    }

    // ---- streams ----

    /// Remove a stream; its futures end, and the window of what it will never read is given back.
    fn remove_stream(&mut self, id: u32) -> Option<Stream> {
        let stream = self.forget_stream(id)?;
        stream.shared.cancel();
        Some(stream)
    }

    /// Remove a stream whose futures have ended (its response was sent).
    fn forget_stream(&mut self, id: u32) -> Option<Stream> {
        let stream = self.streams.remove(&id)?;
        if stream.body {
            let (unread, _) = stream.shared.take_consumed();
            self.recv_release += unread;
        }
        if self.streams.is_empty() {
            self.idle_since = Instant::now();
        }
        Some(stream)
    }

    /// Reset a stream with `reason` (a stream error).
    fn reset(&mut self, id: u32, reason: Reason) {
        frame::put_rst_stream(self.out.buf(), id, reason);
        self.remove_stream(id);
    }

    /// The response of stream `id` came from the proxy path: send its head, then its body.
    fn respond(&mut self, id: u32, response: Response<ResponseBody>) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let bodiless =
            stream.head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let end = bodiless || body.is_end_stream();
        let length = (!bodiless
            && !crate::header_lookup::contains(&parts.headers, &header::CONTENT_LENGTH))
        .then(|| body.size_hint().exact())
        .flatten();
        let buf = self.out.buf();
        let start = begin_header_block(buf);
        hpack::encode_status(buf, status.as_u16());
        for (name, value) in &parts.headers {
            if !connection_specific(name) {
                hpack::encode_header(buf, name, value);
            }
        }
        if let Some(n) = length {
            hpack::encode_header(buf, &header::CONTENT_LENGTH, &HeaderValue::from(n));
        }
        crate::header_pool::give(parts.headers);
        self.finish_headers(start, id, end);
        if end {
            self.finish(id);
        } else {
            self.pump(id, body);
        }
    }

    /// Close a header block begun at `start`, splitting it into CONTINUATION frames when it is
    /// larger than the client's frame size.
    fn finish_headers(&mut self, start: usize, id: u32, end_stream: bool) {
        let max = self.peer_max_frame;
        let buf = self.out.buf();
        let len = buf.len() - start - frame::HEAD_LEN;
        if len <= max {
            finish_header_block(buf, start, id, end_stream);
            return;
        }
        let block = buf.split_off(start + frame::HEAD_LEN);
        buf.truncate(start);
        let mut chunks = block.chunks(max).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let mut flags = if last { flag::END_HEADERS } else { 0 };
            let kind = if first {
                if end_stream {
                    flags |= flag::END_STREAM;
                }
                kind::HEADERS
            } else {
                kind::CONTINUATION
            };
            frame::put_head(buf, chunk.len(), kind, flags, id);
            buf.extend_from_slice(chunk);
            first = false;
        }
    }

    /// Poll a response body while it has frames ready (without registering a waker); once it
    /// must wait, hand it to `bodies`, which wakes this task when it can go on.
    fn pump(&mut self, id: u32, mut body: ResponseBody) {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Pending => {
                    if let Some(s) = self.streams.get(&id) {
                        self.bodies.push(BodyNext {
                            id,
                            shared: s.shared.clone(),
                            body: Some(body),
                        });
                    }
                    return;
                }
                Poll::Ready(ev) => match self.on_body(id, body, ev) {
                    Some(b) => body = b,
                    None => return,
                },
            }
        }
    }

    /// One event of a response body. Returns the body when it should be polled again.
    fn on_body(&mut self, id: u32, body: ResponseBody, ev: BodyEvent) -> Option<ResponseBody> {
        let stream = self.streams.get_mut(&id)?;
        match ev {
            None => {
                let rest = put_data(
                    &mut self.out,
                    &mut self.send_window,
                    stream,
                    self.peer_max_frame,
                    id,
                    Bytes::new(),
                    true,
                );
                debug_assert!(rest.is_none());
                self.finish(id);
                None
            }
            Some(Err(e)) => {
                // The upstream failed after the head went out: reset the stream, as Envoy does.
                tracing::debug!(error = %e, stream = id, "response body failed");
                self.reset(id, Reason::InternalError);
                None
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => self.send_body_data(id, body, data),
                Err(f) => {
                    let trailers = f.into_trailers().unwrap_or_default();
                    let buf = self.out.buf();
                    let start = begin_header_block(buf);
                    for (name, value) in &trailers {
                        if !connection_specific(name) {
                            hpack::encode_header(buf, name, value);
                        }
                    }
                    self.finish_headers(start, id, true);
                    self.finish(id);
                    None
                }
            },
        }
    }

    /// The response of stream `id` ended. A client still sending its request is told to stop
    /// (RST_STREAM `NO_ERROR`, RFC 9113 §8.1).
    fn finish(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if stream.recv_open {
            frame::put_rst_stream(self.out.buf(), id, Reason::NoError);
        }
        // The handler and the body are done, and dropped the request body with them: nothing
        // of the stream's is left to wake.
        self.forget_stream(id);
        self.reset_budget = (self.reset_budget + 1).min(RESET_BUDGET);
    }

    /// Send window opened: resume the blocked streams in order while there is room.
    fn unblock_all(&mut self) {
        let mut n = self.blocked.len();
        while n > 0 && self.send_window > 0 {
            n -= 1;
            if let Some(id) = self.blocked.pop_front() {
                self.unblock(id);
            }
        }
    }

    fn unblock(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let Some((body, data)) = stream.blocked.take() else {
            return;
        };
        self.blocked.retain(|b| *b != id);
        if let Some(body) = self.send_body_data(id, *body, data) {
            self.pump(id, body);
        }
    }

    /// Send `data` of a response body within the windows: what does not fit waits, with the
    /// body, for WINDOW_UPDATE. Returns the body when it should be polled for more.
    fn send_body_data(&mut self, id: u32, body: ResponseBody, data: Bytes) -> Option<ResponseBody> {
        let stream = self.streams.get_mut(&id)?;
        let end = body.is_end_stream();
        match put_data(
            &mut self.out,
            &mut self.send_window,
            stream,
            self.peer_max_frame,
            id,
            data,
            end,
        ) {
            Some(rest) => {
                stream.blocked = Some((Box::new(body), rest));
                self.blocked.push_back(id);
                None
            }
            None if end => {
                self.finish(id);
                None
            }
            None => Some(body),
        }
    }

    /// Give back, with WINDOW_UPDATE, the request body bytes the upstream side consumed.
    fn give_back_window(&mut self, cx: &mut Context<'_>) {
        if self.uploading.is_empty() && self.recv_release == 0 {
            return;
        }
        self.conn_waker.register(cx.waker());
        let half = i64::from(self.settings.stream_window / 2).max(1) as usize;
        let mut i = 0;
        while i < self.uploading.len() {
            let id = self.uploading[i];
            let Some(stream) = self.streams.get_mut(&id) else {
                self.uploading.swap_remove(i);
                continue;
            };
            let (consumed, done) = stream.shared.take_consumed();
            stream.recv_release += consumed;
            self.recv_release += consumed;
            if stream.recv_open && stream.recv_release >= half {
                frame::put_window_update(self.out.buf(), id, stream.recv_release as u32);
                stream.recv_window += stream.recv_release as i64;
                stream.recv_release = 0;
            }
            if !stream.recv_open && done {
                self.uploading.swap_remove(i);
                continue;
            }
            i += 1;
        }
        let conn_half = (self.settings.connection_window / 2).max(1) as usize;
        if self.recv_release >= conn_half || (self.uploading.is_empty() && self.recv_release > 0) {
            frame::put_window_update(self.out.buf(), 0, self.recv_release as u32);
            self.recv_window += self.recv_release as i64;
            self.recv_release = 0;
        }
    }
}

/// Send as much of `data` as the connection's and the stream's windows allow, in frames of at
/// most `max_frame`; `end` marks the last one END_STREAM. Returns what did not fit.
fn put_data(
    out: &mut Output,
    conn_window: &mut i64,
    stream: &mut Stream,
    max_frame: usize,
    id: u32,
    mut data: Bytes,
    end: bool,
) -> Option<Bytes> {
    if data.is_empty() {
        if end {
            frame::put_head(out.buf(), 0, kind::DATA, flag::END_STREAM, id);
        }
        return None;
    }
    while !data.is_empty() {
        let room = (*conn_window).min(stream.send_window);
        if room <= 0 {
            return Some(data);
        }
        let n = data.len().min(room as usize).min(max_frame);
        let chunk = data.split_to(n);
        *conn_window -= n as i64;
        stream.send_window -= n as i64;
        let flags = if data.is_empty() && end {
            flag::END_STREAM
        } else {
            0
        };
        frame::put_head(out.buf(), n, kind::DATA, flags, id);
        out.data(chunk);
    }
    None
}

/// Begin a HEADERS frame whose length is filled in by [`finish_header_block`].
fn begin_header_block(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; frame::HEAD_LEN]);
    start
}

/// Write the header of a HEADERS frame begun at `start` (the block fits one frame).
fn finish_header_block(buf: &mut [u8], start: usize, id: u32, end_stream: bool) {
    let len = buf.len() - start - frame::HEAD_LEN;
    let mut flags = flag::END_HEADERS;
    if end_stream {
        flags |= flag::END_STREAM;
    }
    buf[start..start + frame::HEAD_LEN].copy_from_slice(&frame::head(
        len,
        kind::HEADERS,
        flags,
        id,
    ));
}

/// Headers that HTTP/2 does not carry (RFC 9113 §8.2.2).
fn connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// A parsed `:authority` and the same bytes as the `host` value it becomes: both share one
/// buffer, so a request takes either by a reference count, not a copy.
#[derive(Clone)]
struct KnownAuthority {
    authority: Authority,
    host: HeaderValue,
}

/// `raw` as an authority: `last` when it has the same bytes (parsing keeps them as they are, so
/// the result would be the same), else parsed and kept as the new `last`. The kept one owns a
/// copy of its bytes, so that it does not hold on to the buffer the header block came in.
fn authority(raw: Bytes, last: &mut Option<KnownAuthority>) -> Option<KnownAuthority> {
    if let Some(a) = last
        .as_ref()
        .filter(|a| a.authority.as_str().as_bytes() == raw)
    {
        return Some(a.clone());
    }
    let owned = Bytes::copy_from_slice(&raw);
    let host = HeaderValue::from_maybe_shared(owned.clone()).ok()?;
    let parsed = KnownAuthority {
        authority: Authority::from_maybe_shared(owned).ok()?,
        host,
    };
    *last = Some(parsed.clone());
    Some(parsed)
}

/// The fields of a request's header block, checked as they are decoded.
struct RequestParts {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    protocol: Option<Bytes>,
    headers: HeaderMap,
    cookies: Vec<HeaderValue>,
    /// Decoded size (RFC 9113 §6.5.2) and its limit.
    size: usize,
    limit: usize,
    too_large: bool,
    malformed: bool,
    pseudo_done: bool,
}

struct BuiltRequest {
    request: Request<RequestBody>,
    content_length: Option<u64>,
    expect_continue: bool,
}

impl RequestParts {
    fn new(limit: usize) -> Self {
        RequestParts {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            protocol: None,
            // Room for the headers the proxy adds on the way (forwarding, request id).
            headers: crate::header_pool::take(16),
            cookies: Vec::new(),
            size: 0,
            limit,
            too_large: false,
            malformed: false,
            pseudo_done: false,
        }
    }

    fn add(&mut self, field: Field) {
        match field {
            Field::Pseudo(p, value) => {
                self.size += p.name_len() + value.len() + 32;
                let slot = match p {
                    Pseudo::Method => &mut self.method,
                    Pseudo::Scheme => &mut self.scheme,
                    Pseudo::Authority => &mut self.authority,
                    Pseudo::Path => &mut self.path,
                    Pseudo::Protocol => &mut self.protocol,
                    Pseudo::Status => {
                        self.malformed = true;
                        return;
                    }
                };
                // Pseudo-headers come first, once each (RFC 9113 §8.3).
                if self.pseudo_done || slot.is_some() {
                    self.malformed = true;
                }
                *slot = Some(value);
            }
            Field::Header(name, value) => {
                self.pseudo_done = true;
                self.size += name.as_str().len() + value.len() + 32;
                if self.size > self.limit {
                    self.too_large = true;
                }
                if self.too_large {
                    return;
                }
                if connection_specific(&name)
                    || (name == header::TE && value.as_bytes() != b"trailers")
                {
                    self.malformed = true;
                    return;
                }
                if name == header::COOKIE {
                    self.cookies.push(value);
                } else {
                    self.headers.append(name, value);
                }
            }
            Field::Invalid => self.malformed = true,
        }
        if self.size > self.limit {
            self.too_large = true;
        }
    }

    /// The fields as trailers: no pseudo-header allowed.
    fn trailers(self) -> Option<HeaderMap> {
        let pseudo = self.method.is_some()
            || self.scheme.is_some()
            || self.authority.is_some()
            || self.path.is_some()
            || self.protocol.is_some();
        if self.malformed || pseudo || self.too_large {
            return None;
        }
        let mut headers = self.headers;
        for c in self.cookies {
            headers.append(header::COOKIE, c);
        }
        Some(headers)
    }

    /// The request, or `None` when it is malformed (RFC 9113 §8.1.1). `last` is the
    /// connection's previous `:authority`, reused when this one is the same.
    /// The `:authority` also becomes the request's one `host` (RFC 9113 §8.3.1: a `host` that
    /// differs from it is not forwarded), as an HTTP/1.1 upstream needs it.
    fn build(mut self, last: &mut Option<KnownAuthority>) -> Option<BuiltRequest> {
        if self.malformed || self.protocol.is_some() {
            // `:protocol` needs SETTINGS_ENABLE_CONNECT_PROTOCOL, which this server does not offer.
            return None;
        }
        let method = Method::from_bytes(self.method.as_deref()?).ok()?;
        let known = match self.authority.take() {
            Some(a) => Some(authority(a, last)?),
            None => None,
        };
        let mut uri = http::uri::Parts::default();
        if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() || known.is_none() {
                return None;
            }
        } else {
            let path = self.path.take().filter(|p| !p.is_empty())?;
            let scheme = Scheme::try_from(self.scheme.as_deref()?).ok()?;
            // Without an authority the target is origin-form: no scheme either.
            uri.scheme = known.is_some().then_some(scheme);
            uri.path_and_query = Some(PathAndQuery::from_maybe_shared(path).ok()?);
        }
        if let Some(known) = known {
            self.headers.insert(header::HOST, known.host);
            uri.authority = Some(known.authority);
        }
        let uri = Uri::from_parts(uri).ok()?;
        // Cookie crumbs are joined for HTTP/1.1 upstreams (RFC 9113 §8.2.3).
        match self.cookies.len() {
            0 => {}
            1 => {
                if let Some(c) = self.cookies.pop() {
                    self.headers.insert(header::COOKIE, c);
                }
            }
            _ => {
                let mut joined = Vec::new();
                for (i, c) in self.cookies.iter().enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(b"; ");
                    }
                    joined.extend_from_slice(c.as_bytes());
                }
                self.headers
                    .insert(header::COOKIE, HeaderValue::from_bytes(&joined).ok()?);
            }
        }
        let mut content_length = None;
        for v in self.headers.get_all(header::CONTENT_LENGTH) {
            let n: u64 = v.to_str().ok()?.trim().parse().ok()?;
            if content_length.is_some_and(|m| m != n) {
                return None;
            }
            content_length = Some(n);
        }
        let expect_continue = match self.headers.get(header::EXPECT) {
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => {
                self.headers.remove(header::EXPECT);
                true
            }
            _ => false,
        };
        let mut request = Request::new(RequestBody::Empty);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = self.headers;
        Some(BuiltRequest {
            request,
            content_length,
            expect_continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_authority_is_reused_and_any_other_parsed_as_it_is() {
        let text = |a: &Option<KnownAuthority>| {
            a.as_ref().map(|a| {
                assert_eq!(a.authority.as_str().as_bytes(), a.host.as_bytes());
                a.authority.as_str().to_string()
            })
        };
        let mut last = None;
        let a = authority(Bytes::from_static(b"a.example:80"), &mut last);
        assert_eq!(text(&a).as_deref(), Some("a.example:80"));
        let again = authority(Bytes::from_static(b"a.example:80"), &mut last);
        assert_eq!(text(&again).as_deref(), Some("a.example:80"));
        // Authorities compare without case; the bytes forwarded must still be the request's own.
        let upper = authority(Bytes::from_static(b"A.example:80"), &mut last);
        assert_eq!(text(&upper).as_deref(), Some("A.example:80"));
        assert_eq!(text(&last).as_deref(), Some("A.example:80"));
        // A malformed one is refused and leaves the last good one in place.
        assert!(authority(Bytes::from_static(b"a b"), &mut last).is_none());
        assert_eq!(text(&last).as_deref(), Some("A.example:80"));
    }
}
