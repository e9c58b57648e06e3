//! HTTP/1.1 message codec, for both ends of the proxy.
//!
//! Downstream: request heads are parsed in place with `httparse`; the target and header values
//! share the connection's read buffer (no copy), as hyper's codec does. Bodies are framed by
//! `Transfer-Encoding: chunked` or `Content-Length` (requests with both, or with any other
//! transfer coding, are refused like Envoy refuses them). Response heads are written into a
//! caller's buffer so that a head and a small body leave in one write.
//!
//! Upstream: request heads are written the same way, and response heads are parsed in place, with
//! the body framing of RFC 9112 section 6.3 (no body for HEAD, 1xx, 204 and 304; chunked; length;
//! otherwise until the connection closes).

use std::mem::MaybeUninit;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

/// Most request headers accepted (Envoy's `max_headers_count` default).
pub const MAX_HEADERS: usize = 100;

/// Longest chunk-size line accepted (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 4096;

/// The HTTP/2 connection preface, which starts an h2c prior-knowledge connection.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a request could not be read; each maps to the reply Envoy's HTTP/1 codec gives before it
/// closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("HTTP/1.1 request without a host")]
    MissingHost,
    #[error("transfer coding other than chunked")]
    UnsupportedCoding,
    #[error("HTTP/1.0 request (accept_http_10 is off)")]
    Http10,
    #[error("request headers not complete within request_headers_timeout")]
    HeadersTimeout,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

impl CodecError {
    /// The status of the local reply for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            CodecError::HeadersTooLarge | CodecError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            CodecError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            CodecError::Http10 => StatusCode::UPGRADE_REQUIRED,
            CodecError::HeadersTimeout => StatusCode::REQUEST_TIMEOUT,
            CodecError::Malformed(_) | CodecError::MissingHost | CodecError::Chunked(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// The body of the local reply, as Envoy answers: the reason phrase, with two exceptions.
    pub fn body(&self) -> &'static str {
        match self {
            CodecError::MissingHost => "",
            CodecError::HeadersTimeout => "request header timeout",
            e => e.status().canonical_reason().unwrap_or(""),
        }
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and headers (the body is attached by the caller).
    pub request: Request<()>,
    pub framing: BodyFraming,
    /// The client lets the connection carry further requests after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// Parse a request head at the front of `buf` and remove it from the buffer. `Ok(None)`: the head
/// is not complete yet (and is still within `max_head` bytes).
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, CodecError> {
    // Offsets into `buf` of the target and of each header's name and value.
    let mut spans = Spans::default();
    let (head_len, method, target, version) = {
        // httparse fills the headers it finds: the array needs no zeroing first.
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let base = buf.as_ptr() as usize;
        let status = match req.parse_with_uninit_headers(buf, &mut headers) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(CodecError::TooManyHeaders),
            Err(httparse::Error::Version) => return Err(CodecError::Malformed("HTTP version")),
            Err(_) => return Err(CodecError::Malformed("request head")),
        };
        let Some(head_len) = head_length(status, buf.len(), max_head)? else {
            return Ok(None);
        };
        let method = req
            .method
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .ok_or(CodecError::Malformed("method"))?;
        let path = req.path.ok_or(CodecError::Malformed("request target"))?;
        let target = (path.as_ptr() as usize - base, path.len());
        let version = http1_version(req.version)?;
        spans.record(req.headers, base);
        (head_len, method, target, version)
    };
    let head = buf.split_to(head_len).freeze();

    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| CodecError::Malformed("request target"))?;
    let mut framing = BodyFraming::Empty;
    let (headers, f) = collect_headers(&head, spans.as_slice())?;
    let FramingHeaders {
        chunked,
        length,
        close,
        keep_alive_token,
        expect_continue,
        host,
    } = f;
    match (chunked, length) {
        (Some(true), None) if version == Version::HTTP_11 => framing = BodyFraming::Chunked,
        (Some(false), None) if version == Version::HTTP_11 => {
            return Err(CodecError::UnsupportedCoding)
        }
        (Some(_), _) => return Err(CodecError::Malformed("transfer-encoding")),
        (None, Some(0)) | (None, None) => {}
        (None, Some(n)) => framing = BodyFraming::Length(n),
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    if version == Version::HTTP_11 && uri.authority().is_none() && !host {
        return Err(CodecError::MissingHost);
    }

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// The length of a parsed head; `None` while it is incomplete and still within `max_head`.
fn head_length(
    status: httparse::Status<usize>,
    buffered: usize,
    max_head: usize,
) -> Result<Option<usize>, CodecError> {
    match status {
        httparse::Status::Complete(n) if n > max_head => Err(CodecError::HeadersTooLarge),
        httparse::Status::Complete(n) => Ok(Some(n)),
        httparse::Status::Partial if buffered > max_head => Err(CodecError::HeadersTooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

fn http1_version(minor: Option<u8>) -> Result<Version, CodecError> {
    match minor {
        Some(1) => Ok(Version::HTTP_11),
        Some(0) => Ok(Version::HTTP_10),
        _ => Err(CodecError::Malformed("HTTP version")),
    }
}

/// Offsets of a header's name and value in the buffer that was parsed.
type Span = (u32, u32, u32, u32);

/// Headers kept inline by [`Spans`]; a head with more (rare: browsers send about a dozen) puts
/// its spans on the heap.
const INLINE_SPANS: usize = 16;

/// Where each parsed header lies in the buffer. Inline for the usual head: an array for the
/// largest head allowed ([`MAX_HEADERS`]) would be zeroed on every parse (1.6 KiB, twice per
/// proxied request).
#[derive(Default)]
struct Spans {
    inline: [Span; INLINE_SPANS],
    len: usize,
    heap: Vec<Span>,
}

impl Spans {
    /// Record the spans of `headers`, parsed from the buffer starting at `base`.
    fn record(&mut self, headers: &[httparse::Header<'_>], base: usize) {
        let span = |h: &httparse::Header<'_>| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (
                name as u32,
                (name + h.name.len()) as u32,
                value as u32,
                (value + h.value.len()) as u32,
            )
        };
        if headers.len() <= INLINE_SPANS {
            for (h, slot) in headers.iter().zip(self.inline.iter_mut()) {
                *slot = span(h);
            }
            self.len = headers.len();
        } else {
            self.heap = headers.iter().map(span).collect();
        }
    }

    fn as_slice(&self) -> &[Span] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// The header at `span` of a frozen head; the value shares the head's bytes.
fn header_at(
    head: &Bytes,
    (ns, ne, vs, ve): Span,
) -> Result<(HeaderName, HeaderValue), CodecError> {
    let name = crate::header_name::from_wire(&head[ns as usize..ne as usize])
        .map_err(|_| CodecError::Malformed("header name"))?;
    let raw = head.slice(vs as usize..ve as usize);
    let value = if raw.is_ascii() {
        // SAFETY: `from_maybe_shared_unchecked` requires UTF-8, and ASCII is UTF-8. It also
        // skips the check of the bytes a `HeaderValue` allows (HTAB, 0x20..=0x7e, 0x80..=0xff),
        // which is the very set httparse's default configuration (no obsolete line folding, the
        // only configuration this module uses) accepted in this value: checking again would
        // only cost a second pass over every value of every message.
        unsafe { HeaderValue::from_maybe_shared_unchecked(raw) }
    } else {
        HeaderValue::from_maybe_shared(raw).map_err(|_| CodecError::Malformed("header value"))?
    };
    Ok((name, value))
}

/// What a message's headers say about its framing and its connection.
#[derive(Debug, Default)]
struct FramingHeaders {
    /// `Transfer-Encoding` is present; whether its final coding is chunked.
    chunked: Option<bool>,
    length: Option<u64>,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive_token: bool,
    /// `Expect: 100-continue`.
    expect_continue: bool,
    /// A `Host` header is present.
    host: bool,
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers the proxy typically adds to a message it forwards.
const ADDED_HEADERS: usize = 6;

/// Build the header map of a frozen head from its spans, noting the framing headers on the way.
/// Those that only frame or persist this hop (`Transfer-Encoding`, `Connection: keep-alive` or
/// `close`, `Keep-Alive`, `Proxy-Connection`) are noted and left out of the map.
fn collect_headers(
    head: &Bytes,
    spans: &[Span],
) -> Result<(HeaderMap, FramingHeaders), CodecError> {
    // Room for the headers the proxy adds on the way (forwarding, request id, server, timing),
    // so that adding them does not grow the map.
    let mut headers = crate::header_pool::take(spans.len() + ADDED_HEADERS);
    let mut f = FramingHeaders::default();
    for &span in spans {
        let (name, value) = header_at(head, span)?;
        if name == header::TRANSFER_ENCODING {
            // The last coding decides.
            let last = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .map(|c| c.trim_ascii());
            f.chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
            // Framing is hop-by-hop: noted here, never forwarded, so not kept.
            continue;
        } else if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            if f.length.is_some_and(|l| l != n) {
                return Err(CodecError::Malformed("conflicting content-length"));
            }
            f.length = Some(n);
        } else if name == header::CONNECTION {
            let mut only_persistence = true;
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                let close = token.eq_ignore_ascii_case(b"close");
                let keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                f.close |= close;
                f.keep_alive_token |= keep_alive;
                only_persistence &= close || keep_alive || token.is_empty();
            }
            // `close` and `keep-alive` are fully captured by the flags, and the header is
            // hop-by-hop: not keeping it spares the forwarding path a strip of the map. A value
            // naming other headers (or `upgrade`) stays for the proxy to act on.
            if only_persistence {
                continue;
            }
        } else if name == KEEP_ALIVE || name == PROXY_CONNECTION {
            // Hop-by-hop, and nothing in the proxy reads them.
            continue;
        } else if name == header::EXPECT {
            f.expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::HOST {
            f.host = true;
        }
        headers.append(name, value);
    }
    Ok((headers, f))
}

/// How an upstream response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBodyFraming {
    /// No body: a response to HEAD, 1xx, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed upstream response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ResponseBodyFraming,
    /// The connection may carry another request after this response's body.
    pub keep_alive: bool,
}

/// Parse a response head at the front of `buf` and remove it from the buffer. `head_request`: the
/// request was HEAD, so no body follows whatever the headers say. `Ok(None)`: not complete yet.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    max_head: usize,
) -> Result<Option<ResponseHead>, CodecError> {
    let mut spans = Spans::default();
    let (head_len, code, version) = {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        let status = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        ) {
            Ok(s) => s,
            Err(httparse::Error::TooManyHeaders) => return Err(CodecError::TooManyHeaders),
            Err(_) => return Err(CodecError::Malformed("response head")),
        };
        let Some(head_len) = head_length(status, buf.len(), max_head)? else {
            return Ok(None);
        };
        let version = http1_version(resp.version)?;
        let code = resp.code.ok_or(CodecError::Malformed("status"))?;
        spans.record(resp.headers, base);
        (head_len, code, version)
    };
    let status = StatusCode::from_u16(code).map_err(|_| CodecError::Malformed("status"))?;
    let head = buf.split_to(head_len).freeze();
    let (headers, f) = collect_headers(&head, spans.as_slice())?;
    let mut keep_alive = !f.close && (version == Version::HTTP_11 || f.keep_alive_token);
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        ResponseBodyFraming::Empty
    } else {
        match (f.chunked, f.length) {
            // Both: the transfer coding decides, and the connection is not trusted afterwards.
            (Some(true), l) => {
                keep_alive &= l.is_none();
                ResponseBodyFraming::Chunked
            }
            (Some(false), _) | (None, None) => ResponseBodyFraming::UntilClose,
            (None, Some(0)) => ResponseBodyFraming::Empty,
            (None, Some(n)) => ResponseBodyFraming::Length(n),
        }
    };
    if framing == ResponseBodyFraming::UntilClose {
        keep_alive = false;
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// How a request body is written upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyFraming {
    /// No body, or a body whose `Content-Length` the headers already state.
    AsIs,
    /// Add `content-length: N`.
    Length(u64),
    /// Add `transfer-encoding: chunked` and chunk the body.
    Chunked,
}

/// Write an upstream request head: `METHOD target HTTP/1.1`, the headers, and the framing header.
pub fn encode_request_head(
    dst: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: RequestBodyFraming,
) {
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestBodyFraming::AsIs => {}
        RequestBodyFraming::Length(n) => {
            dst.extend_from_slice(b"content-length: ");
            dst.extend_from_slice(itoa_u64(n).as_slice());
            dst.extend_from_slice(b"\r\n");
        }
        RequestBodyFraming::Chunked => {
            dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    dst.extend_from_slice(b"\r\n");
}

fn parse_length(v: &[u8]) -> Result<u64, CodecError> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(CodecError::Malformed("content-length"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What a chunked decoder produced.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    /// The body ended, with its trailers if it had any.
    End(Option<HeaderMap>),
    /// More bytes are needed.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Incremental decoder of a `Transfer-Encoding: chunked` body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    /// Decode the next piece of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, CodecError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(eol) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(CodecError::Chunked("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let line = &buf[..eol];
                    let size = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or(line)
                        .trim_ascii();
                    if size.is_empty() || size.len() > 15 {
                        return Err(CodecError::Chunked("chunk size"));
                    }
                    let mut n = 0u64;
                    for &d in size {
                        let v = (d as char)
                            .to_digit(16)
                            .ok_or(CodecError::Chunked("chunk size"))?;
                        n = n * 16 + u64::from(v);
                    }
                    let _ = buf.split_to(eol + 2);
                    self.state = if n == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(n)
                    };
                }
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = remaining.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = if n == remaining {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - n)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(CodecError::Chunked("missing CRLF after chunk data"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End(None));
                    }
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    return match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((len, parsed))) => {
                            let mut trailers = HeaderMap::with_capacity(parsed.len());
                            for h in parsed.iter() {
                                let name = HeaderName::from_bytes(h.name.as_bytes())
                                    .map_err(|_| CodecError::Chunked("trailer name"))?;
                                let value = HeaderValue::from_bytes(h.value)
                                    .map_err(|_| CodecError::Chunked("trailer value"))?;
                                trailers.append(name, value);
                            }
                            let _ = buf.split_to(len);
                            self.state = ChunkState::Done;
                            Ok(Decoded::End(Some(trailers)))
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE * 2 => {
                            Ok(Decoded::NeedMore)
                        }
                        _ => Err(CodecError::Chunked("trailers")),
                    };
                }
                ChunkState::Done => return Ok(Decoded::End(None)),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// How a response body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body bytes follow the head (HEAD, 1xx, 204, 304, or an empty body).
    None,
    /// The body's bytes as they come (the head carries `Content-Length`).
    Length,
    /// Chunked transfer coding.
    Chunked,
    /// Bytes until the connection closes (HTTP/1.0 clients, unknown length).
    UntilClose,
}

/// Extra headers the codec adds to a response head.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadExtras {
    /// `content-length: N` for a body whose size is known but not stated.
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `connection: close`.
    pub close: bool,
    /// `connection: keep-alive` (HTTP/1.0 clients that asked for it).
    pub keep_alive: bool,
}

/// Write a response head (`HTTP/1.1` status line, headers, `date` when absent) into `dst`.
pub fn encode_response_head(
    dst: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    extras: HeadExtras,
) {
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    // 1xx and 204 responses never carry framing headers (RFC 9110 8.6; Envoy and hyper drop them).
    let no_framing = status.is_informational() || status == StatusCode::NO_CONTENT;
    // Noted on the way rather than looked up after: a comparison per header costs less than
    // hashing the name.
    let mut dated = false;
    for (name, value) in headers {
        if no_framing && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
            continue;
        }
        dated |= name == header::DATE;
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if !dated {
        dst.extend_from_slice(b"date: ");
        http_date::write(dst);
        dst.extend_from_slice(b"\r\n");
    }
    if let Some(n) = extras.content_length {
        dst.extend_from_slice(b"content-length: ");
        dst.extend_from_slice(itoa_u64(n).as_slice());
        dst.extend_from_slice(b"\r\n");
    }
    if extras.chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if extras.close {
        dst.extend_from_slice(b"connection: close\r\n");
    } else if extras.keep_alive {
        dst.extend_from_slice(b"connection: keep-alive\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// The local reply for a request the codec could not read, as Envoy's codec writes it: the reason
/// phrase as a `text/plain` body (none for a missing host), `server`, and `connection: close`.
pub fn encode_error(dst: &mut Vec<u8>, error: &CodecError, server: Option<&HeaderValue>) {
    let body = error.body();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !body.is_empty() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    if let Some(server) = server {
        headers.insert(header::SERVER, server.clone());
    }
    encode_response_head(
        dst,
        error.status(),
        &headers,
        HeadExtras {
            close: true,
            ..HeadExtras::default()
        },
    );
    dst.extend_from_slice(body.as_bytes());
}

/// Start a chunk of `len` bytes.
pub fn encode_chunk_start(dst: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
    dst.extend_from_slice(b"\r\n");
}

/// End a chunked body (without trailers: HTTP/1 trailers are not forwarded, as in Envoy's default).
pub fn encode_chunked_end(dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"0\r\n\r\n");
}

/// Decimal digits of `n` without allocating.
fn itoa_u64(mut n: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    d
}

struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The `date` header value, formatted once per second per thread.
mod http_date {
    use super::SystemTime;
    use std::cell::RefCell;

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn write(dst: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    c.1.copy_from_slice(text.as_bytes());
                    c.0 = secs;
                }
            }
            dst.extend_from_slice(&c.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(text: &str, head_request: bool) -> ResponseHead {
        let mut buf = BytesMut::from(text);
        let head = parse_response(&mut buf, head_request, 60 * 1024)
            .unwrap()
            .expect("complete head");
        assert_eq!(&buf[..], b"BODY", "the head is removed, the body stays");
        head
    }

    #[test]
    fn hop_by_hop_framing_and_persistence_headers_are_noted_not_kept() {
        let r = response(
            "HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nProxy-Connection: close\r\nX-A: 1\r\n\r\nBODY",
            false,
        );
        assert_eq!(
            (r.framing, r.keep_alive),
            (ResponseBodyFraming::Chunked, true)
        );
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-a"]);
        let r = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nBODY",
            false,
        );
        assert!(!r.keep_alive && !r.headers.contains_key(header::CONNECTION));
        // A value that names other headers, or an upgrade, stays for the proxy to act on.
        for value in ["keep-alive, x-hop", "Upgrade"] {
            let r = response(
                &format!("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: {value}\r\n\r\nBODY"),
                false,
            );
            assert_eq!(r.headers[header::CONNECTION], value);
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use ResponseBodyFraming as F;
        let r = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: 1\r\n\r\nBODY",
            false,
        );
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (StatusCode::OK, F::Length(4), true)
        );
        assert_eq!(r.headers["x-a"], "1");
        // HEAD, 204 and 304 have no body whatever the headers say.
        let r = response("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nBODY", true);
        assert_eq!(r.framing, F::Empty);
        for code in [204, 304] {
            let r = response(
                &format!("HTTP/1.1 {code} X\r\nContent-Length: 4\r\n\r\nBODY"),
                false,
            );
            assert_eq!(r.framing, F::Empty);
        }
        // Chunked wins over a length, and such a connection is not reused.
        let r = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\nBODY",
            false,
        );
        assert_eq!((r.framing, r.keep_alive), (F::Chunked, false));
        // No length: until close. Another coding than chunked: until close.
        let r = response("HTTP/1.1 200 OK\r\n\r\nBODY", false);
        assert_eq!((r.framing, r.keep_alive), (F::UntilClose, false));
        let r = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nBODY",
            false,
        );
        assert_eq!(r.framing, F::UntilClose);
        // HTTP/1.0 keeps the connection only when it says keep-alive; `close` ends an HTTP/1.1 one.
        let r = response("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\nBODY", false);
        assert_eq!((r.framing, r.keep_alive), (F::Empty, false));
        let r = response(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\nBODY",
            false,
        );
        assert!(r.keep_alive);
        let r = response(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nBODY",
            false,
        );
        assert!(!r.keep_alive);
    }

    #[test]
    fn malformed_responses_are_errors_and_partial_ones_wait() {
        for bad in [
            "NOT HTTP\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse_response(&mut buf, false, 1024).is_err(), "{bad:?}");
        }
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nX: y\r\n");
        assert!(parse_response(&mut buf, false, 1024).unwrap().is_none());
        let mut big =
            BytesMut::from(format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(200)).as_str());
        assert!(parse_response(&mut big, false, 100).is_err());
    }

    #[test]
    fn request_heads_carry_the_framing_they_need() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("svc"));
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::GET,
            "/a?b",
            &headers,
            RequestBodyFraming::AsIs,
        );
        assert_eq!(out, b"GET /a?b HTTP/1.1\r\nhost: svc\r\n\r\n");
        out.clear();
        encode_request_head(
            &mut out,
            &Method::POST,
            "/",
            &headers,
            RequestBodyFraming::Length(12),
        );
        assert_eq!(
            out,
            b"POST / HTTP/1.1\r\nhost: svc\r\ncontent-length: 12\r\n\r\n"
        );
        out.clear();
        encode_request_head(
            &mut out,
            &Method::PUT,
            "/",
            &headers,
            RequestBodyFraming::Chunked,
        );
        assert_eq!(
            out,
            b"PUT / HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    fn parse(text: &str) -> Result<Option<RequestHead>, CodecError> {
        let mut buf = BytesMut::from(text);
        parse_request(&mut buf, 60 * 1024)
    }

    #[test]
    fn parses_a_head_and_leaves_the_rest() {
        let mut buf = BytesMut::from(
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\nNEXT",
        );
        let head = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&buf[..], b"NEXT");
        let r = &head.request;
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/a");
        assert_eq!(r.uri().query(), Some("b=1"));
        assert_eq!(r.headers()["host"], "example.com");
        assert_eq!(r.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(head.keep_alive);
    }

    #[test]
    fn partial_heads_wait_and_oversized_heads_are_refused() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut big =
            BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(200)).as_str());
        assert!(matches!(
            parse_request(&mut big, 100),
            Err(CodecError::HeadersTooLarge)
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let e = parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn heads_with_more_headers_than_kept_inline_keep_them_all() {
        for n in [INLINE_SPANS, INLINE_SPANS + 1, MAX_HEADERS - 1] {
            let extra: String = (1..n).map(|i| format!("h{i}: v{i}\r\n")).collect();
            let head = parse(&format!("GET / HTTP/1.1\r\nHost: x\r\n{extra}\r\n"))
                .unwrap()
                .unwrap();
            let h = head.request.headers();
            assert_eq!(h.len(), n, "{n} headers");
            assert_eq!(h["host"], "x");
            assert_eq!(h[format!("h{}", n - 1).as_str()], format!("v{}", n - 1));

            let mut buf = BytesMut::from(
                format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n{extra}\r\n").as_str(),
            );
            let resp = parse_response(&mut buf, false, 64 * 1024).unwrap().unwrap();
            assert_eq!(resp.headers.len(), n, "{n} response headers");
        }
    }

    #[test]
    fn body_framing_follows_the_rfc_and_envoy() {
        let head = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, BodyFraming::Length(5));
        let head = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, BodyFraming::Chunked);
        let e = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_IMPLEMENTED);
        let e = parse("GET / HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(matches!(e, CodecError::MissingHost));
        assert_eq!(e.body(), "");
        assert!(parse("GET http://x/ HTTP/1.1\r\n\r\n").unwrap().is_some());
        for bad in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad).unwrap_err().status(),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn keep_alive_and_expect() {
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        let head =
            parse("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(head.expect_continue);
    }

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 9\r\n\r\nNEXT";
        // Feed one byte at a time: every split point must work.
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        for &b in wire.iter() {
            buf.extend_from_slice(&[b]);
            loop {
                match dec.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::End(t) => {
                        trailers = Some(t);
                        break;
                    }
                    Decoded::NeedMore => break,
                }
            }
            if trailers.is_some() {
                break;
            }
        }
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.unwrap().unwrap()["x-sum"], "9");
        assert!(buf.is_empty());
        let mut bad = BytesMut::from("zz\r\n");
        assert!(ChunkedDecoder::default().decode(&mut bad).is_err());
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("date", HeaderValue::from_static("d"));
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &h,
            HeadExtras {
                content_length: Some(12),
                close: true,
                ..HeadExtras::default()
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: d\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_chunk_start(&mut out, 255);
        encode_chunked_end(&mut out);
        assert_eq!(out, b"ff\r\n0\r\n\r\n");
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            HeadExtras::default(),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 204 No Content\r\ndate: "),
            "{text}"
        );
        assert_eq!(
            text.len(),
            "HTTP/1.1 204 No Content\r\ndate: \r\n\r\n".len() + 29
        );
    }
}
