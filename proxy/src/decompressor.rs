//! The decompressor HTTP filter (`envoy.filters.http.decompressor`): request and response bodies
//! encoded with gzip, brotli or zstd are decoded on their way through, as Envoy decides.
//!
//! - A body is decoded when its direction is enabled, it is not `cache-control: no-transform`
//!   (unless `ignore_no_transform_header`), and the first coding of its `content-encoding` is the
//!   library's. Its `content-length` goes, and that coding leaves `content-encoding` (the header
//!   goes when it was the only one). A message without a body is left alone.
//! - With response decoding on and `advertise_accept_encoding` (the default), the library's coding
//!   is added to the request's `accept-encoding` once.
//! - At the end of a decoded body, trailers `x-envoy-decompressor-NAME-compressed-bytes` and
//!   `-uncompressed-bytes` are added (HTTP/1.1 drops trailers, as Envoy's codec does).
//! - gzip decodes in 4 KiB chunks; a data frame whose output passes `max_inflate_ratio` times its
//!   size stops at that chunk and counts `zlib_data_error` (the next frame goes on), as Envoy's
//!   zlib decompressor does. A brotli or zstd body that does not decode ends where the error is.
//! - Statistics carry Envoy's names: `http.PREFIX.decompressor.NAME.LIBRARY.request.decompressed`,
//!   `…not_decompressed`, `…total_compressed_bytes`, `…total_uncompressed_bytes`, and the same
//!   under `response`.

use std::io::Write;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;

use crate::body::BodyError;
use crate::metrics::Metrics;

/// A decompressor library (`decompressor_library`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecoderLibrary {
    /// `envoy.compression.gzip.decompressor`: window bits 9..=15 (default 15) and the largest
    /// output-to-input ratio (default 100).
    Gzip {
        window_bits: u8,
        max_inflate_ratio: u64,
    },
    /// `envoy.compression.brotli.decompressor`.
    Brotli,
    /// `envoy.compression.zstd.decompressor`.
    Zstd,
}

impl DecoderLibrary {
    /// The content coding it decodes.
    pub fn encoding(&self) -> &'static str {
        match self {
            DecoderLibrary::Gzip { .. } => "gzip",
            DecoderLibrary::Brotli => "br",
            DecoderLibrary::Zstd => "zstd",
        }
    }

    fn stat_prefix(&self) -> &'static str {
        match self {
            DecoderLibrary::Gzip { .. } => "gzip",
            DecoderLibrary::Brotli => "brotli",
            DecoderLibrary::Zstd => "zstd",
        }
    }

    /// The library's own error counters, as Envoy registers them.
    fn error_stats(&self) -> &'static [&'static str] {
        match self {
            DecoderLibrary::Gzip { .. } => &[
                "zlib_errno",
                "zlib_stream_error",
                "zlib_data_error",
                "zlib_mem_error",
                "zlib_buf_error",
                "zlib_version_error",
            ],
            DecoderLibrary::Brotli => &[
                "brotli_error",
                "brotli_output_overflow",
                "brotli_redundant_input",
            ],
            DecoderLibrary::Zstd => &[
                "zstd_generic_error",
                "zstd_dictionary_error",
                "zstd_checksum_wrong_error",
                "zstd_memory_error",
            ],
        }
    }

    fn decoder(&self) -> std::io::Result<Decoder> {
        Ok(match *self {
            DecoderLibrary::Gzip {
                window_bits,
                max_inflate_ratio,
            } => Decoder::Gzip(Box::new(GzipDecoder::new(window_bits, max_inflate_ratio))),
            DecoderLibrary::Brotli => {
                Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
            DecoderLibrary::Zstd => {
                Decoder::Zstd(Box::new(zstd::stream::write::Decoder::new(Vec::new())?))
            }
        })
    }
}

/// One direction's settings and statistics.
#[derive(Debug)]
pub struct Direction {
    /// `common_config.enabled` (its default value; runtime keys are not read).
    pub enabled: bool,
    pub ignore_no_transform: bool,
    stats: OnceLock<DirectionStats>,
}

impl Direction {
    pub fn new(enabled: bool, ignore_no_transform: bool) -> Direction {
        Direction {
            enabled,
            ignore_no_transform,
            stats: OnceLock::new(),
        }
    }
}

#[derive(Debug)]
struct DirectionStats {
    decompressed: IntCounter,
    not_decompressed: IntCounter,
    total_compressed_bytes: IntCounter,
    total_uncompressed_bytes: IntCounter,
}

/// One decompressor filter.
#[derive(Debug)]
pub struct DecompressorFilter {
    /// `decompressor_library.name`: part of the statistics' and trailers' names.
    pub library_name: String,
    pub library: DecoderLibrary,
    pub request: Direction,
    pub response: Direction,
    /// `request_direction_config.advertise_accept_encoding` (default true).
    pub advertise_accept_encoding: bool,
    data_error: OnceLock<IntCounter>,
    trailer_names: (HeaderName, HeaderName),
}

impl DecompressorFilter {
    pub fn new(
        library_name: String,
        library: DecoderLibrary,
        request: Direction,
        response: Direction,
        advertise_accept_encoding: bool,
    ) -> Result<DecompressorFilter, http::header::InvalidHeaderName> {
        let trailer = |what: &str| {
            HeaderName::from_bytes(
                format!("x-envoy-decompressor-{library_name}-{what}-bytes")
                    .to_ascii_lowercase()
                    .as_bytes(),
            )
        };
        Ok(DecompressorFilter {
            trailer_names: (trailer("compressed")?, trailer("uncompressed")?),
            library_name,
            library,
            request,
            response,
            advertise_accept_encoding,
            data_error: OnceLock::new(),
        })
    }

    /// Register the statistics under the connection manager's prefix (at configuration time).
    pub fn resolve_stats(&self, m: &Metrics, hcm_prefix: &str) -> Result<(), prometheus::Error> {
        let scope = format!(
            "envoy_http_decompressor_{}_{}",
            crate::metrics::name_part(&self.library_name),
            self.library.stat_prefix()
        );
        let c = |name: String| -> Result<IntCounter, prometheus::Error> {
            Ok(m.named_counter(
                &name,
                "Decompressor filter statistic (Envoy's)",
                &["envoy_http_conn_manager_prefix"],
            )?
            .with_label_values(&[hcm_prefix]))
        };
        for (direction, d) in [("request", &self.request), ("response", &self.response)] {
            let s = |stat: &str| c(format!("{scope}_{direction}_{stat}"));
            let stats = DirectionStats {
                decompressed: s("decompressed")?,
                not_decompressed: s("not_decompressed")?,
                total_compressed_bytes: s("total_compressed_bytes")?,
                total_uncompressed_bytes: s("total_uncompressed_bytes")?,
            };
            let _ = d.stats.set(stats);
        }
        for stat in self.library.error_stats() {
            let counter = c(format!("{scope}_decompressor_library_{stat}"))?;
            if stat.ends_with("data_error")
                || *stat == "brotli_error"
                || *stat == "zstd_generic_error"
            {
                let _ = self.data_error.set(counter);
            }
        }
        Ok(())
    }

    /// Add the library's coding to `accept-encoding` when responses are decoded here: any
    /// entry for it (with a q-value or not) is replaced by one plain entry at the end, as Envoy
    /// rewrites the header.
    pub fn advertise(&self, headers: &mut HeaderMap) {
        if !(self.response.enabled && self.advertise_accept_encoding) {
            return;
        }
        let coding = self.library.encoding();
        let current = match headers
            .get(header::ACCEPT_ENCODING)
            .map(HeaderValue::to_str)
        {
            None => "",
            Some(Ok(v)) => v,
            Some(Err(_)) => return,
        };
        let mut value = String::with_capacity(current.len() + coding.len() + 1);
        for entry in current.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.split(';').next().unwrap_or("").trim() != coding {
                value.push_str(entry);
                value.push(',');
            }
        }
        value.push_str(coding);
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
    }

    /// Decide for a message with a body in `direction` (`headers` are changed when it is to be
    /// decoded); the decoder to run over its body, or `None`.
    pub fn start(&self, response: bool, headers: &mut HeaderMap) -> Option<Decoding> {
        let direction = if response {
            &self.response
        } else {
            &self.request
        };
        let stats = direction.stats.get();
        let decode = direction.enabled
            && (direction.ignore_no_transform || !no_transform(headers))
            && first_coding_is(headers, self.library.encoding());
        if !decode {
            if let Some(s) = stats {
                s.not_decompressed.inc();
            }
            return None;
        }
        let decoder = self.library.decoder().ok()?;
        if let Some(s) = stats {
            s.decompressed.inc();
        }
        headers.remove(header::CONTENT_LENGTH);
        drop_first_coding(headers);
        Some(Decoding {
            decoder: Some(decoder),
            compressed: stats.map(|s| s.total_compressed_bytes.clone()),
            uncompressed: stats.map(|s| s.total_uncompressed_bytes.clone()),
            data_error: self.data_error.get().cloned(),
            totals: (0, 0),
            trailer_names: self.trailer_names.clone(),
        })
    }
}

/// A connection manager's decompressor filters, in chain order.
#[derive(Debug)]
pub struct DecompressorChain {
    pub filters: Vec<DecompressorFilter>,
    /// They come before the compressor filters, whose `accept-encoding` they then change.
    pub before_compressors: bool,
}

/// Response decoding to apply once the response head is known.
#[derive(Debug)]
pub struct ResponsePlan(pub std::sync::Arc<DecompressorChain>);

impl DecompressorChain {
    /// The request side: advertise codings, then decode the body through each filter in chain
    /// order. A request without a body is left alone.
    pub fn on_request(&self, req: &mut http::Request<crate::body::RequestBody>) {
        for f in &self.filters {
            f.advertise(req.headers_mut());
        }
        if req.body().is_end_stream() {
            return;
        }
        for f in &self.filters {
            if let Some(decoding) = f.start(false, req.headers_mut()) {
                let body = std::mem::replace(req.body_mut(), crate::body::RequestBody::Empty);
                *req.body_mut() = crate::body::RequestBody::Decompressed(Box::new(
                    DecompressedBody::new(body, decoding),
                ));
            }
        }
    }

    /// Whether any filter decodes responses.
    pub fn decodes_responses(&self) -> bool {
        self.filters.iter().any(|f| f.response.enabled)
    }
}

impl ResponsePlan {
    /// The response side: decode the body through each filter, last in the chain first (the
    /// order Envoy encodes in). A response without a body is left alone.
    pub fn apply(
        self,
        mut resp: http::Response<crate::body::ResponseBody>,
    ) -> http::Response<crate::body::ResponseBody> {
        if resp.body().is_end_stream() {
            return resp;
        }
        for f in self.0.filters.iter().rev() {
            if let Some(decoding) = f.start(true, resp.headers_mut()) {
                let body =
                    std::mem::replace(resp.body_mut(), crate::body::ResponseBody::Full(None));
                *resp.body_mut() = crate::body::ResponseBody::Decompressed(Box::new(
                    DecompressedBody::new(body, decoding),
                ));
            }
        }
        resp
    }
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

/// Whether the first coding listed in `content-encoding` is `coding` (case and spaces aside).
fn first_coding_is(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(coding)
        })
}

/// Remove the first coding of `content-encoding`, or the header when it held only one.
fn drop_first_coding(headers: &mut HeaderMap) {
    let rest = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(','))
        .map(|(_, rest)| rest.trim().to_string());
    match rest.and_then(|r| HeaderValue::from_str(&r).ok()) {
        Some(v) => {
            headers.insert(header::CONTENT_ENCODING, v);
        }
        None => {
            headers.remove(header::CONTENT_ENCODING);
        }
    }
}

/// zlib's output chunk, as Envoy's `chunk_size` default.
const CHUNK: usize = 4096;

/// Envoy's zlib decoding: output in chunks; a call whose output passes `ratio` times its input
/// stops there (the chunk being filled waits for the next call).
struct GzipDecoder {
    d: Decompress,
    ratio: u64,
    chunk: Vec<u8>,
}

impl GzipDecoder {
    fn new(window_bits: u8, ratio: u64) -> GzipDecoder {
        GzipDecoder {
            d: Decompress::new_gzip(window_bits),
            ratio,
            chunk: Vec::with_capacity(CHUNK),
        }
    }

    /// The output of `input`, and whether zlib failed or the ratio was passed.
    fn feed(&mut self, mut input: &[u8]) -> (Vec<u8>, bool) {
        let limit = self.ratio.saturating_mul(input.len() as u64);
        let mut out = Vec::new();
        loop {
            let before = self.d.total_in();
            let status = self
                .d
                .decompress_vec(input, &mut self.chunk, FlushDecompress::None);
            input = &input[(self.d.total_in() - before) as usize..];
            let more = match status {
                Ok(Status::StreamEnd) => false,
                Ok(Status::BufError) if input.is_empty() => false,
                Ok(_) => true,
                Err(_) => {
                    out.append(&mut self.chunk);
                    return (out, true);
                }
            };
            if !more {
                break;
            }
            if self.chunk.len() == CHUNK {
                out.append(&mut self.chunk);
            }
            if out.len() as u64 > limit {
                return (out, true);
            }
        }
        out.append(&mut self.chunk);
        (out, false)
    }
}

/// A running decoder.
enum Decoder {
    Gzip(Box<GzipDecoder>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Gzip(_) => "Decoder::Gzip",
            Decoder::Brotli(_) => "Decoder::Brotli",
            Decoder::Zstd(_) => "Decoder::Zstd",
        })
    }
}

impl Decoder {
    /// Decode `input`: everything it yields so far, and whether decoding failed (a gzip body
    /// goes on with its next data, as in Envoy; the others stop).
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let written = match self {
            Decoder::Gzip(g) => return g.feed(input),
            Decoder::Brotli(w) => w
                .write_all(input)
                .and_then(|()| w.flush())
                .map(|()| std::mem::take(w.get_mut())),
            Decoder::Zstd(w) => w
                .write_all(input)
                .and_then(|()| w.flush())
                .map(|()| std::mem::take(w.get_mut())),
        };
        match written {
            Ok(out) => (out, false),
            Err(_) => (Vec::new(), true),
        }
    }

    fn stops_on_error(&self) -> bool {
        !matches!(self, Decoder::Gzip(_))
    }
}

/// The decoding of one body: the decoder and what it has counted.
#[derive(Debug)]
pub struct Decoding {
    /// `None` once the stream has ended (or failed).
    decoder: Option<Decoder>,
    compressed: Option<IntCounter>,
    uncompressed: Option<IntCounter>,
    data_error: Option<IntCounter>,
    /// Compressed and uncompressed bytes so far.
    totals: (u64, u64),
    trailer_names: (HeaderName, HeaderName),
}

/// A body decoded as it streams.
#[derive(Debug)]
pub struct DecompressedBody<B> {
    inner: B,
    decoding: Decoding,
    /// Trailers to send once the data has ended.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> DecompressedBody<B> {
    pub fn new(inner: B, decoding: Decoding) -> Self {
        DecompressedBody {
            inner,
            decoding,
            trailers: None,
            done: false,
        }
    }
}

impl<B> DecompressedBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    /// The trailers that end a decoded body: the inner body's, with the byte counts.
    fn end_trailers(&mut self, inner: Option<HeaderMap>) -> HeaderMap {
        let mut t = inner.unwrap_or_default();
        let (c, u) = self.decoding.totals;
        let (cn, un) = self.decoding.trailer_names.clone();
        t.append(cn, HeaderValue::from(c));
        t.append(un, HeaderValue::from(u));
        t
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.done {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(f) => f,
            };
            let data = match frame.map(|f| f.map(Frame::into_data)) {
                Some(Ok(Ok(data))) => data,
                Some(Ok(Err(frame))) => {
                    // Trailers end the body.
                    self.done = true;
                    let t = frame.into_trailers().ok();
                    self.trailers = Some(self.end_trailers(t));
                    continue;
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.done = true;
                    self.trailers = Some(self.end_trailers(None));
                    continue;
                }
            };
            let Some(decoder) = self.decoding.decoder.as_mut() else {
                // Decoding stopped: the rest of the body is dropped.
                continue;
            };
            let (out, failed) = decoder.feed(&data);
            if failed {
                if decoder.stops_on_error() {
                    self.decoding.decoder = None;
                }
                if let Some(c) = &self.decoding.data_error {
                    c.inc();
                }
            }
            self.decoding.totals.0 += data.len() as u64;
            self.decoding.totals.1 += out.len() as u64;
            if let Some(c) = &self.decoding.compressed {
                c.inc_by(data.len() as u64);
            }
            if let Some(c) = &self.decoding.uncompressed {
                c.inc_by(out.len() as u64);
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    pub fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_encoding_is_matched_and_trimmed_as_envoy() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(" GZip , br"),
        );
        assert!(first_coding_is(&h, "gzip"));
        drop_first_coding(&mut h);
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        drop_first_coding(&mut h);
        assert!(!h.contains_key(header::CONTENT_ENCODING));
    }

    #[test]
    fn gzip_bodies_inflate_and_bombs_stop() {
        use flate2::write::GzEncoder;
        let plain = vec![b'a'; 100_000];
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&plain).unwrap();
        let gz = e.finish().unwrap();
        let mut ok = GzipDecoder::new(15, 1000);
        assert_eq!(ok.feed(&gz), (plain, false));
        // 100 kB of one byte compresses over 100 times: the default ratio stops the call at the
        // first whole chunk past 100 times its input.
        let mut capped = GzipDecoder::new(15, 100);
        let (out, failed) = capped.feed(&gz);
        assert!(failed);
        assert_eq!(out.len() % CHUNK, 0);
        assert!(out.len() as u64 > 100 * gz.len() as u64);
        assert!(out.len() as u64 <= 100 * gz.len() as u64 + CHUNK as u64);
    }
}
