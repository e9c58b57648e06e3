//! The compressor HTTP filter (`envoy.filters.http.compressor`): response bodies compressed with
//! gzip, brotli or zstd for clients that accept them, decided by Envoy's rules.
//!
//! A connection manager holds its compressor filters in chain order ([`CompressorChain`]). When a
//! request is routed, [`CompressorChain::plan`] notes its `accept-encoding` (and removes it when
//! the filter says so) with the route's per-route settings; when the response head is known,
//! [`Plan::apply`] decides, as Envoy does:
//!
//! - the response must have a body (`content-length` at least `min_content_length`, 30 by default,
//!   or a chunked upstream body), a content type in the filter's list (Envoy's list of text types
//!   by default), no `content-encoding`, no `cache-control: no-transform`, no `etag` when
//!   `disable_on_etag_header`, and a status not in `uncompressible_response_codes`;
//! - the encoding is chosen once across the chain: the accepted coding with the highest q-value
//!   that a filter in the chain provides (`*` picks the first filter's; `q=0` refuses one);
//! - a compressed response loses `content-length` (it goes chunked), gains `content-encoding` and
//!   `vary: accept-encoding`, and keeps only a weak `etag`. A compressible response that is not
//!   compressed because of what the client accepts still gains `vary`.
//!
//! Each data frame is compressed and flushed as it comes (a sync flush), so streamed responses
//! reach the client without waiting for the end. Statistics carry Envoy's names
//! (`http.<prefix>.compressor.<library name>.<library>.*`).

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use http::header::{self, HeaderMap, HeaderValue};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;

use crate::body::{BodyError, ResponseBody};
use crate::metrics::Metrics;

/// The content types compressed when a filter names none (Envoy's list with its synonyms).
pub const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
];

/// A compressor library (`compressor_library`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Library {
    /// `envoy.compression.gzip.compressor`: zlib level 1..=9 and window bits 9..=15.
    Gzip { level: u32, window_bits: u8 },
    /// `envoy.compression.brotli.compressor`: quality 0..=11 and window bits 10..=24.
    Brotli { quality: u32, window_bits: u32 },
    /// `envoy.compression.zstd.compressor`: level 1..=22, and a checksum ending each frame.
    Zstd { level: i32, checksum: bool },
}

impl Library {
    /// The content coding it produces.
    pub fn encoding(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "br",
            Library::Zstd { .. } => "zstd",
        }
    }

    /// The statistics prefix Envoy gives the library.
    fn stat_prefix(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "brotli",
            Library::Zstd { .. } => "zstd",
        }
    }

    fn encoder(&self) -> std::io::Result<Encoder> {
        Ok(match *self {
            Library::Gzip { level, window_bits } => Encoder::Gzip(Box::new(Compress::new_gzip(
                Compression::new(level),
                window_bits,
            ))),
            Library::Brotli {
                quality,
                window_bits,
            } => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                quality,
                window_bits,
            ))),
            Library::Zstd { level, checksum } => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                e.include_checksum(checksum)?;
                Encoder::Zstd(Box::new(e))
            }
        })
    }
}

/// One compressor filter's response settings.
#[derive(Debug)]
pub struct CompressorFilter {
    /// The filter's name in the chain: per-route settings are found by it.
    pub name: String,
    /// `compressor_library.name`, part of the statistics' names.
    pub library_name: String,
    pub library: Library,
    /// Response compression enabled (`response_direction_config.common_config.enabled`, or the
    /// older `runtime_enabled`), unless a route says otherwise.
    pub enabled: bool,
    pub min_length: u64,
    /// Lower-case content types without parameters; empty: any content type.
    pub content_types: Vec<String>,
    pub disable_on_etag: bool,
    pub weaken_etag: bool,
    pub remove_accept_encoding: bool,
    pub uncompressible_statuses: Vec<u16>,
    /// Statistics under `.response.` (with `response_direction_config`) or directly under the
    /// library (older configurations).
    pub response_stats_scope: bool,
    stats: std::sync::OnceLock<CompressorStats>,
}

/// A route's or virtual host's `CompressorPerRoute`.
#[derive(Debug, Clone, Default)]
pub struct CompressorPerRoute {
    /// `disabled: true`: the filter passes everything through on this route.
    pub disabled: bool,
    /// `overrides.response_direction_config` present: response compression on, whatever the
    /// filter's `enabled` says.
    pub force_enabled: bool,
    pub remove_accept_encoding: Option<bool>,
    pub library: Option<Library>,
}

/// Per-route settings of the compressor filters, by filter name.
pub type PerRouteCompressors = Vec<(String, Arc<CompressorPerRoute>)>;

impl CompressorFilter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        library_name: String,
        library: Library,
        enabled: bool,
        min_length: u64,
        content_types: Vec<String>,
        disable_on_etag: bool,
        weaken_etag: bool,
        remove_accept_encoding: bool,
        uncompressible_statuses: Vec<u16>,
        response_stats_scope: bool,
    ) -> Self {
        CompressorFilter {
            name,
            library_name,
            library,
            enabled,
            min_length,
            content_types,
            disable_on_etag,
            weaken_etag,
            remove_accept_encoding,
            uncompressible_statuses,
            response_stats_scope,
            stats: std::sync::OnceLock::new(),
        }
    }

    fn content_type_allowed(&self, headers: &HeaderMap) -> bool {
        if self.content_types.is_empty() {
            return true;
        }
        match headers.get(header::CONTENT_TYPE) {
            None => true,
            Some(v) => {
                let t = media_type(v.as_bytes());
                self.content_types
                    .iter()
                    .any(|c| c.as_bytes().eq_ignore_ascii_case(t))
            }
        }
    }

    fn stats(&self) -> Option<&CompressorStats> {
        self.stats.get()
    }
}

/// The compressor filters of one connection manager, in chain order.
#[derive(Debug)]
pub struct CompressorChain {
    pub filters: Vec<CompressorFilter>,
}

impl CompressorChain {
    /// Resolve every filter's statistics handles under connection manager prefix `hcm_prefix`.
    pub fn resolve_stats(&self, metrics: &Metrics, hcm_prefix: &str) {
        for f in &self.filters {
            if f.stats.get().is_some() {
                continue;
            }
            let scope = format!(
                "envoy_http_compressor_{}_{}",
                crate::metrics::name_part(&f.library_name),
                f.library.stat_prefix()
            );
            match CompressorStats::new(metrics, &scope, f.response_stats_scope, hcm_prefix) {
                Ok(stats) => {
                    let _ = f.stats.set(stats);
                }
                Err(e) => tracing::warn!(%scope, error = %e, "compressor statistics not exported"),
            }
        }
    }

    /// What the chain needs of a request to decide on its response: its `accept-encoding` (which
    /// is removed here when a filter says so) and the route's settings.
    pub fn plan(
        self: &Arc<Self>,
        head: bool,
        headers: &mut HeaderMap,
        route: &PerRouteCompressors,
        vhost: &PerRouteCompressors,
    ) -> Plan {
        // Each filter notes the header as it reaches it: one that removes it hides it from the
        // filters after it (Envoy's advice is to remove it in the filter nearest the upstream).
        let settings: Vec<Settings> = self
            .filters
            .iter()
            .map(|f| {
                let per = route
                    .iter()
                    .chain(vhost.iter())
                    .find(|(name, _)| *name == f.name)
                    .map(|(_, p)| p.clone());
                let (enabled, remove, library) = match per.as_deref() {
                    Some(p) if p.disabled => (false, f.remove_accept_encoding, None),
                    Some(p) => (
                        f.enabled || p.force_enabled,
                        p.remove_accept_encoding.unwrap_or(f.remove_accept_encoding),
                        p.library.clone(),
                    ),
                    None => (f.enabled, f.remove_accept_encoding, None),
                };
                let accept_encoding = headers.get(header::ACCEPT_ENCODING).cloned();
                if enabled && remove {
                    headers.remove(header::ACCEPT_ENCODING);
                }
                Settings {
                    enabled,
                    library,
                    accept_encoding,
                }
            })
            .collect();
        for f in &self.filters {
            if let Some(s) = f.stats() {
                s.request_not_compressed.inc();
            }
        }
        Plan {
            chain: Arc::clone(self),
            settings,
            head,
        }
    }
}

/// One filter's settings for one request (after per-route overrides).
#[derive(Debug)]
struct Settings {
    enabled: bool,
    library: Option<Library>,
    /// The request's `accept-encoding` as this filter saw it.
    accept_encoding: Option<HeaderValue>,
}

/// What one request's response is compressed by, if anything.
#[derive(Debug)]
pub struct Plan {
    chain: Arc<CompressorChain>,
    settings: Vec<Settings>,
    /// A `HEAD` request: its response has no body to compress.
    head: bool,
}

/// How the encoding was chosen (Envoy's `header_*` statistics).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    /// A coding that the client asked for by name.
    Named(String),
    Identity,
    /// `*`: the first filter's coding.
    Wildcard(String),
    NotValid,
}

impl Plan {
    /// Decide for a response and, when compressing, rewrite its head and wrap its body.
    pub fn apply(self, resp: Response<ResponseBody>) -> Response<ResponseBody> {
        let (mut parts, body) = resp.into_parts();
        let end_stream = self.head || body.is_end_stream();
        let status = parts.status.as_u16();
        let headers = &mut parts.headers;
        // The encoding decision, made once for the chain, by the first filter that needs it.
        let mut choice: Option<Choice> = None;
        let mut chosen: Option<(usize, Library)> = None;
        // Envoy runs encoder filters from the last to the first.
        for (i, f) in self.chain.filters.iter().enumerate().rev() {
            let s = &self.settings[i];
            let stats = f.stats();
            let count = |pick: fn(&CompressorStats) -> &IntCounter| {
                if let Some(st) = stats {
                    pick(st).inc();
                }
            };
            let length_ok = s.enabled && long_enough(f.min_length, headers, &count);
            let compressible = length_ok
                && f.content_type_allowed(headers)
                && !no_transform(headers)
                && etag_allowed(f, headers, &count)
                && !headers.contains_key(header::CONTENT_ENCODING);
            let accepted = !end_stream
                && length_ok
                && match &s.accept_encoding {
                    None => {
                        count(|st| &st.no_accept_header);
                        false
                    }
                    Some(accept) => {
                        let c = choice.get_or_insert_with(|| self.choose(accept, headers));
                        let own = s.library.as_ref().unwrap_or(&f.library).encoding();
                        match c {
                            Choice::Named(e) => {
                                let mine = e.eq_ignore_ascii_case(own);
                                if mine {
                                    count(|st| &st.header_compressor_used);
                                } else {
                                    count(|st| &st.header_compressor_overshadowed);
                                }
                                mine
                            }
                            Choice::Wildcard(e) => {
                                count(|st| &st.header_wildcard);
                                e.eq_ignore_ascii_case(own)
                            }
                            Choice::Identity => {
                                count(|st| &st.header_identity);
                                false
                            }
                            Choice::NotValid => {
                                count(|st| &st.header_not_valid);
                                false
                            }
                        }
                    }
                };
            if accepted && compressible && !f.uncompressible_statuses.contains(&status) {
                sanitize_etag(f, headers);
                insert_vary(headers);
                headers.remove(header::CONTENT_LENGTH);
                let library = s.library.clone().unwrap_or_else(|| f.library.clone());
                headers.insert(
                    header::CONTENT_ENCODING,
                    HeaderValue::from_static(library.encoding()),
                );
                count(|st| &st.compressed);
                chosen = Some((i, library));
            } else {
                count(|st| &st.not_compressed);
                if compressible {
                    insert_vary(headers);
                }
            }
        }
        let body = match chosen {
            None => body,
            Some((i, library)) => {
                let stats = self.chain.filters[i].stats();
                let (encoder, failed) = match library.encoder() {
                    Ok(e) => (Some(e), None),
                    Err(e) => (None, Some(e)),
                };
                ResponseBody::Compressed(Box::new(CompressedBody {
                    inner: body,
                    encoder,
                    failed,
                    trailers: None,
                    uncompressed: stats.map(|s| s.total_uncompressed_bytes.clone()),
                    compressed: stats.map(|s| s.total_compressed_bytes.clone()),
                }))
            }
        };
        Response::from_parts(parts, body)
    }

    /// Choose the encoding for the chain from the request's `accept-encoding`.
    fn choose(&self, accept: &HeaderValue, headers: &HeaderMap) -> Choice {
        // The codings the chain provides for this content type, first registered first. As in
        // Envoy, a filter disabled on the route still counts here: a client that prefers its
        // coding gets no compression rather than another coding.
        let mut allowed: Vec<&'static str> = Vec::new();
        for f in &self.chain.filters {
            if !f.content_type_allowed(headers) {
                continue;
            }
            // The filter's own coding, even where a route gives it another library.
            let e = f.library.encoding();
            if !allowed.contains(&e) {
                allowed.push(e);
            }
        }
        let Ok(text) = accept.to_str() else {
            return Choice::NotValid;
        };
        let mut pairs: Vec<(&str, f32)> = Vec::new();
        for token in text.split(',').filter(|t| !t.is_empty()) {
            let (coding, params) = match token.split_once(';') {
                Some((c, p)) => (c.trim(), Some(p)),
                None => (token.trim(), None),
            };
            let mut q = 1.0f32;
            if let Some((key, value)) = params.and_then(|p| p.split_once('=')) {
                if key.trim().eq_ignore_ascii_case("q") {
                    match value.trim().parse::<f32>() {
                        Ok(v) => q = v,
                        Err(_) => continue,
                    }
                }
            }
            pairs.push((coding, q));
            if q == 0.0 {
                allowed.retain(|e| *e != coding);
            }
        }
        if pairs.is_empty() || allowed.is_empty() {
            return Choice::NotValid;
        }
        let mut best: (&str, f32) = ("identity", 0.0);
        for &(coding, q) in &pairs {
            if q > best.1 && (allowed.contains(&coding) || coding == "identity" || coding == "*") {
                best = (coding, q);
            }
        }
        match best {
            (_, 0.0) => Choice::NotValid,
            ("identity", _) => Choice::Identity,
            ("*", _) => Choice::Wildcard(allowed[0].to_string()),
            (coding, _) => Choice::Named(coding.to_string()),
        }
    }
}

/// The media type of a `content-type` value: before any parameter, trimmed.
fn media_type(v: &[u8]) -> &[u8] {
    let end = v.iter().position(|&c| c == b';').unwrap_or(v.len());
    v[..end].trim_ascii()
}

/// Whether the response is long enough to compress: by its `content-length`; a body without
/// one (chunked, or streamed over HTTP/2) counts as long enough, as in Envoy.
fn long_enough(
    min: u64,
    headers: &HeaderMap,
    count: &dyn Fn(fn(&CompressorStats) -> &IntCounter),
) -> bool {
    let Some(v) = headers.get(header::CONTENT_LENGTH) else {
        return true;
    };
    let ok = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n >= min);
    if !ok {
        count(|st| &st.content_length_too_small);
    }
    ok
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.as_bytes()
            .split(|&c| c == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    })
}

fn etag_allowed(
    f: &CompressorFilter,
    headers: &HeaderMap,
    count: &dyn Fn(fn(&CompressorStats) -> &IntCounter),
) -> bool {
    let refused = f.disable_on_etag && !f.weaken_etag && headers.contains_key(header::ETAG);
    if refused {
        count(|st| &st.not_compressed_etag);
    }
    !refused
}

/// A strong `etag` does not describe the compressed body: it is removed, or made weak.
fn sanitize_etag(f: &CompressorFilter, headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    let v = etag.as_bytes();
    let weak = v.len() > 2 && (v[0] == b'W' || v[0] == b'w') && v[1] == b'/';
    if v.len() <= 2 || weak {
        return;
    }
    if f.weaken_etag {
        let mut w = Vec::with_capacity(v.len() + 2);
        w.extend_from_slice(b"W/");
        w.extend_from_slice(v);
        if let Ok(value) = HeaderValue::from_bytes(&w) {
            headers.insert(header::ETAG, value);
        }
    } else {
        headers.remove(header::ETAG);
    }
}

fn insert_vary(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&c| c == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"accept-encoding"))
    });
    if present {
        return;
    }
    match headers.get(header::VARY) {
        Some(v) => {
            let mut joined = v.as_bytes().to_vec();
            joined.extend_from_slice(b", Accept-Encoding");
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                headers.insert(header::VARY, value);
            }
        }
        None => {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

/// A running compressor.
enum Encoder {
    Gzip(Box<Compress>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Gzip(_) => "Encoder::Gzip",
            Encoder::Brotli(_) => "Encoder::Brotli",
            Encoder::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl Encoder {
    /// Compress `input` and flush, so that everything given so far can be decoded.
    fn flush(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(c) => deflate(c, input, FlushCompress::Sync),
            Encoder::Brotli(w) => {
                w.write_all(input)?;
                w.flush()?;
                Ok(std::mem::take(w.get_mut()))
            }
            Encoder::Zstd(w) => {
                w.write_all(input)?;
                w.flush()?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    /// Compress the rest and end the stream.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(mut c) => deflate(&mut c, &[], FlushCompress::Finish),
            Encoder::Brotli(w) => Ok(w.into_inner()),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// Run zlib over `input` with `flush` until it has consumed everything and written all it has.
fn deflate(c: &mut Compress, mut input: &[u8], flush: FlushCompress) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = c.total_in();
        let status = c
            .compress_vec(input, &mut out, flush)
            .map_err(std::io::Error::other)?;
        input = &input[(c.total_in() - before) as usize..];
        match status {
            Status::StreamEnd => return Ok(out),
            // Room left after a flush: zlib has written all it had.
            Status::Ok | Status::BufError
                if input.is_empty()
                    && out.len() < out.capacity()
                    && !matches!(flush, FlushCompress::Finish) =>
            {
                return Ok(out)
            }
            _ => {}
        }
    }
}

/// A response body compressed as it streams.
#[derive(Debug)]
pub struct CompressedBody {
    inner: ResponseBody,
    /// `None` once the stream has ended.
    encoder: Option<Encoder>,
    /// The compressor could not start: the body ends with this error.
    failed: Option<std::io::Error>,
    /// Trailers held back until the compressed stream has ended.
    trailers: Option<HeaderMap>,
    uncompressed: Option<IntCounter>,
    compressed: Option<IntCounter>,
}

impl CompressedBody {
    fn output(&self, out: Vec<u8>) -> Bytes {
        if let Some(c) = &self.compressed {
            c.inc_by(out.len() as u64);
        }
        Bytes::from(out)
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            let Some(encoder) = self.encoder.as_mut() else {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(c) = &self.uncompressed {
                            c.inc_by(data.len() as u64);
                        }
                        let out = encoder.flush(&data).map_err(BodyError::from)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(self.output(out)))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(None) => {}
            }
            // The inner body has ended (or handed its trailers): end the compressed stream.
            if self.trailers.is_some() || self.inner.is_end_stream() {
                if let Some(encoder) = self.encoder.take() {
                    let out = encoder.finish().map_err(BodyError::from)?;
                    return Poll::Ready(Some(Ok(Frame::data(self.output(out)))));
                }
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none() && self.failed.is_none()
    }

    pub fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Where a statistic's name sits under the filter's prefix.
#[derive(Clone, Copy)]
enum Scope {
    Request,
    Response,
    Filter,
}

/// Handles of one compressor filter's statistics.
#[derive(Debug)]
pub struct CompressorStats {
    compressed: IntCounter,
    not_compressed: IntCounter,
    total_uncompressed_bytes: IntCounter,
    total_compressed_bytes: IntCounter,
    content_length_too_small: IntCounter,
    no_accept_header: IntCounter,
    header_identity: IntCounter,
    header_compressor_used: IntCounter,
    header_compressor_overshadowed: IntCounter,
    header_wildcard: IntCounter,
    header_not_valid: IntCounter,
    not_compressed_etag: IntCounter,
    request_not_compressed: IntCounter,
}

impl CompressorStats {
    fn new(
        m: &Metrics,
        scope: &str,
        response_scope: bool,
        hcm_prefix: &str,
    ) -> Result<Self, prometheus::Error> {
        let response = if response_scope { "_response" } else { "" };
        // With `response_direction_config`, the counters common to both directions move under
        // `response`; those about the request's `accept-encoding` and `etag` stay where they were.
        let c = |stat: &str, scoped: Scope| -> Result<IntCounter, prometheus::Error> {
            let name = match scoped {
                Scope::Request => format!("{scope}_request_{stat}"),
                Scope::Response => format!("{scope}{response}_{stat}"),
                Scope::Filter => format!("{scope}_{stat}"),
            };
            Ok(m.named_counter(
                &name,
                "Compressor filter statistic (Envoy's)",
                &["envoy_http_conn_manager_prefix"],
            )?
            .with_label_values(&[hcm_prefix]))
        };
        // Envoy registers the request direction's counters too; they stay 0 here except
        // `not_compressed` (Sluice compresses no request bodies).
        for stat in [
            "compressed",
            "content_length_too_small",
            "total_compressed_bytes",
            "total_uncompressed_bytes",
        ] {
            c(stat, Scope::Request)?;
        }
        Ok(CompressorStats {
            compressed: c("compressed", Scope::Response)?,
            not_compressed: c("not_compressed", Scope::Response)?,
            total_uncompressed_bytes: c("total_uncompressed_bytes", Scope::Response)?,
            total_compressed_bytes: c("total_compressed_bytes", Scope::Response)?,
            content_length_too_small: c("content_length_too_small", Scope::Response)?,
            no_accept_header: c("no_accept_header", Scope::Filter)?,
            header_identity: c("header_identity", Scope::Filter)?,
            header_compressor_used: c("header_compressor_used", Scope::Filter)?,
            header_compressor_overshadowed: c("header_compressor_overshadowed", Scope::Filter)?,
            header_wildcard: c("header_wildcard", Scope::Filter)?,
            header_not_valid: c("header_not_valid", Scope::Filter)?,
            not_compressed_etag: c("not_compressed_etag", Scope::Filter)?,
            request_not_compressed: c("not_compressed", Scope::Request)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(library: Library) -> CompressorFilter {
        CompressorFilter::new(
            "envoy.filters.http.compressor".into(),
            "lib".into(),
            library,
            true,
            30,
            DEFAULT_CONTENT_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            false,
            false,
            false,
            Vec::new(),
            false,
        )
    }

    fn gzip() -> Library {
        Library::Gzip {
            level: 6,
            window_bits: 12,
        }
    }

    fn brotli() -> Library {
        Library::Brotli {
            quality: 3,
            window_bits: 18,
        }
    }

    fn choose(chain: Vec<CompressorFilter>, accept: &str) -> Choice {
        let chain = Arc::new(CompressorChain { filters: chain });
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        let accept = h.get(header::ACCEPT_ENCODING).cloned().unwrap();
        let plan = chain.plan(false, &mut h, &Vec::new(), &Vec::new());
        let mut resp = HeaderMap::new();
        resp.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        plan.choose(&accept, &resp)
    }

    #[test]
    fn chooses_by_q_value_as_envoy() {
        let both = || vec![filter(gzip()), filter(brotli())];
        assert_eq!(choose(both(), "gzip"), Choice::Named("gzip".into()));
        assert_eq!(choose(both(), "gzip;q=0.5, br"), Choice::Named("br".into()));
        assert_eq!(
            choose(both(), "br;q=0.5, gzip;q=0.8"),
            Choice::Named("gzip".into())
        );
        // `*` picks the first filter's coding.
        assert_eq!(choose(both(), "*"), Choice::Wildcard("gzip".into()));
        // q=0 removes a coding, also from what `*` may pick.
        assert_eq!(choose(both(), "gzip;q=0, *"), Choice::Wildcard("br".into()));
        assert_eq!(
            choose(vec![filter(gzip())], "gzip;q=0, *"),
            Choice::NotValid
        );
        assert_eq!(choose(vec![filter(gzip())], "br"), Choice::NotValid);
        assert_eq!(choose(vec![filter(gzip())], "identity"), Choice::Identity);
        assert_eq!(
            choose(vec![filter(gzip())], "identity;q=0.5, gzip"),
            Choice::Named("gzip".into())
        );
        // A q-value that does not parse drops its coding.
        assert_eq!(choose(vec![filter(gzip())], "gzip;q=x"), Choice::NotValid);
    }

    fn body_of(resp: Response<ResponseBody>) -> (http::response::Parts, Vec<u8>) {
        let (parts, mut body) = resp.into_parts();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            if let Ok(d) = frame.unwrap().into_data() {
                out.extend_from_slice(&d);
            }
        }
        (parts, out)
    }

    fn respond(
        chain: &Arc<CompressorChain>,
        accept: &str,
        body: &'static str,
    ) -> Response<ResponseBody> {
        let mut req = HeaderMap::new();
        req.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).unwrap(),
        );
        let plan = chain.plan(false, &mut req, &Vec::new(), &Vec::new());
        let mut resp = Response::new(ResponseBody::full(body));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        resp.headers_mut()
            .insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        plan.apply(resp)
    }

    #[test]
    fn compresses_gzip_and_brotli_bodies_that_decode_back() {
        use std::io::Read;
        let text = "hello hello hello hello hello hello hello hello hello hello";
        let chain = Arc::new(CompressorChain {
            filters: vec![filter(gzip()), filter(brotli())],
        });
        let (parts, gz) = body_of(respond(&chain, "gzip", text));
        assert_eq!(parts.headers["content-encoding"], "gzip");
        assert_eq!(parts.headers["vary"], "Accept-Encoding");
        assert!(parts.headers.get("content-length").is_none());
        assert!(
            parts.headers.get("etag").is_none(),
            "a strong etag is removed"
        );
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text);

        let (parts, br) = body_of(respond(&chain, "br", text));
        assert_eq!(parts.headers["content-encoding"], "br");
        let mut plain = String::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text);

        // Too short, or not accepted: left alone; vary only when it could have been compressed.
        let (parts, body) = body_of(respond(&chain, "gzip", "short"));
        assert!(parts.headers.get("content-encoding").is_none());
        assert!(parts.headers.get("vary").is_none());
        assert_eq!(body, b"short");
        let (parts, body) = body_of(respond(&chain, "identity", text));
        assert!(parts.headers.get("content-encoding").is_none());
        assert_eq!(parts.headers["vary"], "Accept-Encoding");
        assert_eq!(parts.headers["etag"], "\"abc\"");
        assert_eq!(body, text.as_bytes());
    }
}
