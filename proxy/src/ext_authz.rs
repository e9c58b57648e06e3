//! The external authorization filter (`envoy.filters.http.ext_authz`), as Envoy runs it.
//!
//! A routed request is first checked by an authorization service. The service allows it (and may
//! change its headers on the way upstream, and add headers to its response), or denies it with the
//! status, headers and body the client then gets. A check that fails (the service unreachable, too
//! slow, or answering 5xx) answers `status_on_error` (403), or lets the request through with
//! `failure_mode_allow`.
//!
//! Both of Envoy's kinds of service are spoken:
//! - `http_service`: the request's method, `path_prefix` + path, `host`, `authorization` and the
//!   headers `allowed_headers` names go to the service's cluster with an empty body; 200 allows,
//!   5xx is an error, any other status denies.
//! - `grpc_service`: `envoy.service.auth.v3.Authorization/Check` with a `CheckRequest` (peers,
//!   method, path, headers, `context_extensions`), answered by a `CheckResponse`.
//!
//! Check requests go through the cluster's own connection pool, like any forwarded request.
//! Requests that no route matches are not checked (Envoy's router answers them 404), and a route
//! or virtual host can turn the check off (`ExtAuthzPerRoute.disabled`).
//! Statistics: `http.PREFIX.ext_authz.{ok,denied,error,failure_mode_allowed}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use prost::Message;
use sluice_proto::envoy::envoy::config::core::v3 as core;
use sluice_proto::envoy::envoy::service::auth::v3 as auth;

use crate::body::RequestBody;
use crate::cluster::Cluster;
use crate::matcher::StringMatcher;
use crate::metrics::Metrics;

/// The most of an authorization service's answer that is read (a denied response's body).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `x-envoy-auth-headers-to-remove`: on an HTTP service's 200, the request headers to remove.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// `x-envoy-auth-failure-mode-allowed`, on a request let through a failed check
/// (`failure_mode_allow_header_add`).
pub const FAILURE_MODE_ALLOWED: &str = "x-envoy-auth-failure-mode-allowed";

/// `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`.
#[derive(Debug)]
pub struct ExtAuthz {
    pub service: Service,
    /// `server_uri.timeout` or `grpc_service.timeout`.
    pub timeout: Option<Duration>,
    pub failure_mode_allow: bool,
    pub failure_mode_allow_header_add: bool,
    /// `status_on_error` (403 when unset).
    pub status_on_error: StatusCode,
    /// `allowed_headers`: the request headers a check carries (`None`: all of them for a gRPC
    /// service, only the defaults for an HTTP one).
    pub allowed_headers: Option<Vec<StringMatcher>>,
    /// `disallowed_headers`: never carried.
    pub disallowed_headers: Vec<StringMatcher>,
    /// `filter_enabled` as (numerator, denominator); `None`: always.
    pub enabled: Option<(u64, u64)>,
    pub stats: ExtAuthzStats,
}

/// The authorization service.
#[derive(Debug)]
pub enum Service {
    Http(HttpService),
    Grpc(GrpcService),
}

/// `http_service`.
#[derive(Debug)]
pub struct HttpService {
    /// `server_uri.cluster`.
    pub cluster: String,
    pub path_prefix: String,
    /// `authorization_request.allowed_headers`: carried besides the defaults.
    pub request_headers: Vec<StringMatcher>,
    /// `authorization_request.headers_to_add`: set on every check request.
    pub headers_to_add: Vec<(HeaderName, HeaderValue)>,
    /// `authorization_response.allowed_upstream_headers`: set on the request when allowed.
    pub upstream_set: Vec<StringMatcher>,
    /// `allowed_upstream_headers_to_append`: added to the request when allowed.
    pub upstream_append: Vec<StringMatcher>,
    /// `allowed_client_headers`: a denial's headers the client gets (empty: all but `host`).
    pub client: Vec<StringMatcher>,
    /// `allowed_client_headers_on_success`: added to the response of an allowed request.
    pub client_on_success: Vec<StringMatcher>,
}

/// `grpc_service.envoy_grpc`.
#[derive(Debug)]
pub struct GrpcService {
    pub cluster: String,
    /// `authority` (the cluster's name when unset).
    pub authority: String,
}

/// `ExtAuthzPerRoute` of a route or virtual host.
#[derive(Debug, Clone, Default)]
pub struct PerRoute {
    pub disabled: bool,
    /// `check_settings.context_extensions`, sent with a gRPC check.
    pub context_extensions: Vec<(String, String)>,
}

/// The filter's counters (`http.PREFIX.ext_authz.*`). Envoy's other counters of the filter are
/// exported too, at 0: they count what Sluice does not do (shadow mode, dynamic metadata, header
/// limits).
#[derive(Debug)]
pub struct ExtAuthzStats {
    ok: IntCounter,
    denied: IntCounter,
    error: IntCounter,
    failure_mode_allowed: IntCounter,
    disabled: IntCounter,
}

/// Envoy's counters of the filter that stay at 0 here.
const IDLE_COUNTERS: [&str; 8] = [
    "filter_state_name_collision",
    "ignored_dynamic_metadata",
    "invalid",
    "omitted_response_headers",
    "request_header_limits_reached",
    "response_header_limits_reached",
    "shadow_denied",
    "shadow_error",
];

impl ExtAuthzStats {
    /// `hcm_prefix` is the connection manager's `stat_prefix`, `own` the filter's (may be empty).
    /// `envoy_http_ext_authz_ok{envoy_http_conn_manager_prefix=…,envoy_ext_authz_prefix=…}` and
    /// the rest: Envoy's `http.PREFIX.ext_authz.[STAT_PREFIX.]ok` with its tags extracted. Envoy
    /// leaves the second label out when the filter has no `stat_prefix`; here it is then empty,
    /// which PromQL treats alike.
    pub fn new(m: &Metrics, hcm_prefix: &str, own: &str) -> Result<Self, prometheus::Error> {
        let c = |stat: &str| -> Result<IntCounter, prometheus::Error> {
            Ok(m.named_counter(
                &format!("envoy_http_ext_authz_{stat}"),
                "external authorization filter statistic (Envoy's)",
                &["envoy_http_conn_manager_prefix", "envoy_ext_authz_prefix"],
            )?
            .with_label_values(&[hcm_prefix, own.trim_end_matches('.')]))
        };
        for stat in IDLE_COUNTERS {
            c(stat)?;
        }
        Ok(ExtAuthzStats {
            ok: c("ok")?,
            denied: c("denied")?,
            error: c("error")?,
            failure_mode_allowed: c("failure_mode_allowed")?,
            disabled: c("disabled")?,
        })
    }
}

/// What the filter decided for a request.
#[derive(Debug)]
pub enum Decision {
    /// Route on, with these changes.
    Allow(Changes),
    /// Answer the client: status, headers (replacing the reply's of their names), body.
    Deny(StatusCode, Vec<(HeaderName, HeaderValue)>, Bytes),
}

/// The changes an allowed check makes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Request headers set (replacing any of the name).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Request headers added beside any of the name.
    pub append: Vec<(HeaderName, HeaderValue)>,
    /// Request headers added only where the request has one of the name (a gRPC service's
    /// `append: true`).
    pub append_existing: Vec<(HeaderName, HeaderValue)>,
    /// Request headers removed.
    pub remove: Vec<HeaderName>,
    /// Response headers added (`append`) or set.
    pub response: Vec<(HeaderName, HeaderValue, bool)>,
    /// Query parameters set (replacing) and removed.
    pub query_set: Vec<(String, String)>,
    pub query_remove: Vec<String>,
}

impl Changes {
    /// Apply the request side to the request on its way upstream.
    pub fn apply_to_request(&self, req: &mut Request<RequestBody>) {
        let h = req.headers_mut();
        for name in &self.remove {
            // Pseudo-headers and `host` stay, as in Envoy.
            if *name != header::HOST {
                h.remove(name);
            }
        }
        for (name, value) in &self.set {
            h.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.append {
            h.append(name.clone(), value.clone());
        }
        for (name, value) in &self.append_existing {
            if h.contains_key(name) {
                h.append(name.clone(), value.clone());
            }
        }
        if !self.query_set.is_empty() || !self.query_remove.is_empty() {
            let uri = req.uri();
            let path = uri.path().to_string();
            let mut params: Vec<(String, String)> = uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .filter(|(k, _)| !self.query_remove.contains(k))
                .collect();
            for (k, v) in &self.query_set {
                params.retain(|(pk, _)| pk != k);
                params.push((k.clone(), v.clone()));
            }
            let mut target = path;
            if !params.is_empty() {
                target.push('?');
                let joined: Vec<String> = params
                    .iter()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            k.clone()
                        } else {
                            format!("{k}={v}")
                        }
                    })
                    .collect();
                target.push_str(&joined.join("&"));
            }
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = target.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
    }

    /// Apply the response side.
    pub fn apply_to_response(&self, h: &mut HeaderMap) {
        for (name, value, append) in &self.response {
            if *append {
                h.append(name.clone(), value.clone());
            } else {
                h.insert(name.clone(), value.clone());
            }
        }
    }
}

/// The request facts a check reads besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Peers {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub secure: bool,
}

/// Why a check failed (an error, not a denial).
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("cluster `{0}` not found")]
    NoCluster(String),
    #[error("no healthy endpoint")]
    NoEndpoint,
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Upstream(#[from] crate::upstream_pool::UpstreamError),
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("authorization service answered {0}")]
    ServerError(u16),
    #[error("gRPC status {0}")]
    GrpcStatus(String),
    #[error("bad CheckResponse: {0}")]
    Decode(String),
}

impl ExtAuthz {
    /// Whether this request is checked (`filter_enabled`, and the route's `disabled`).
    pub fn applies(&self, per_route: Option<&PerRoute>, random: u64) -> bool {
        if per_route.is_some_and(|p| p.disabled) {
            return false;
        }
        let enabled = self
            .enabled
            .is_none_or(|f| crate::weighted_pick::fraction_drawn(f, random));
        if !enabled {
            self.stats.disabled.inc();
        }
        enabled
    }

    /// Check a request: the decision, with the statistics counted. `authority` is the request's
    /// (`:authority` or `host`).
    pub async fn check(
        &self,
        req: &Request<RequestBody>,
        authority: &str,
        peers: Peers,
        context: &[(String, String)],
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Decision {
        let result = match &self.service {
            Service::Http(s) => self.check_http(s, req, authority, clusters).await,
            Service::Grpc(s) => {
                self.check_grpc(s, req, authority, peers, context, clusters)
                    .await
            }
        };
        match result {
            Ok(decision) => {
                match &decision {
                    Decision::Allow(_) => self.stats.ok.inc(),
                    Decision::Deny(..) => self.stats.denied.inc(),
                }
                decision
            }
            Err(e) => {
                tracing::debug!(error = %e, "external authorization failed");
                self.stats.error.inc();
                if self.failure_mode_allow {
                    self.stats.failure_mode_allowed.inc();
                    let mut changes = Changes::default();
                    if self.failure_mode_allow_header_add {
                        changes.set.push((
                            HeaderName::from_static(FAILURE_MODE_ALLOWED),
                            HeaderValue::from_static("true"),
                        ));
                    }
                    Decision::Allow(changes)
                } else {
                    Decision::Deny(self.status_on_error, Vec::new(), Bytes::new())
                }
            }
        }
    }

    /// Whether a request header goes into a check: never when `disallowed_headers` names it;
    /// else when `named` (by an HTTP service's defaults or its own list), when `allowed_headers`
    /// names it, or, without that list, when `default_all`.
    fn carries(&self, name: &str, named: bool, default_all: bool) -> bool {
        if self.disallowed_headers.iter().any(|m| m.matches(name)) {
            return false;
        }
        named
            || match &self.allowed_headers {
                Some(list) => list.iter().any(|m| m.matches(name)),
                None => default_all,
            }
    }

    /// Send a request to one endpoint of `cluster`, within the timeout; the answer read whole.
    async fn call(
        &self,
        cluster: &str,
        req: Request<RequestBody>,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<(http::response::Parts, Bytes, Option<HeaderMap>), CheckError> {
        let cluster = clusters
            .get(cluster)
            .ok_or_else(|| CheckError::NoCluster(cluster.to_string()))?;
        let (endpoint, active) = cluster.acquire(None).map_err(|_| CheckError::NoEndpoint)?;
        cluster.stats.rq_total.inc();
        let exchange = async {
            let response = endpoint.pool.send(req, false).await?;
            let (parts, body) = response.into_parts();
            let mut data = BytesMut::new();
            let mut trailers = None;
            let mut body = std::pin::pin!(body);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| CheckError::Body(e.to_string()))?;
                match frame.into_data() {
                    Ok(chunk) => {
                        if data.len() + chunk.len() > MAX_ANSWER_BYTES {
                            return Err(CheckError::Body("answer too large".into()));
                        }
                        data.put(chunk);
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                }
            }
            Ok::<_, CheckError>((parts, data.freeze(), trailers))
        };
        let result = match self.timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .unwrap_or(Err(CheckError::Timeout)),
            None => exchange.await,
        };
        drop(active);
        result
    }

    async fn check_http(
        &self,
        s: &HttpService,
        req: &Request<RequestBody>,
        authority: &str,
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<Decision, CheckError> {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let path = format!("{}{target}", s.path_prefix);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        if let Ok(v) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, v);
        }
        for (name, value) in req.headers() {
            let n = name.as_str();
            if *name == header::HOST || *name == header::CONTENT_LENGTH {
                continue;
            }
            let named =
                *name == header::AUTHORIZATION || s.request_headers.iter().any(|m| m.matches(n));
            if self.carries(n, named, false) {
                headers.append(name.clone(), value.clone());
            }
        }
        for (name, value) in &s.headers_to_add {
            headers.insert(name.clone(), value.clone());
        }
        let uri: Uri = format!("http://{}{path}", uri_authority(authority))
            .parse()
            .map_err(|e: http::uri::InvalidUri| CheckError::Body(e.to_string()))?;
        let mut check = Request::new(RequestBody::Empty);
        *check.method_mut() = req.method().clone();
        *check.uri_mut() = uri;
        *check.headers_mut() = headers;
        let (parts, body, _) = self.call(&s.cluster, check, clusters).await?;
        let status = parts.status;
        if status.is_server_error() {
            return Err(CheckError::ServerError(status.as_u16()));
        }
        let mut answer = parts.headers;
        if status == StatusCode::OK {
            let mut changes = Changes::default();
            for v in answer.get_all(HEADERS_TO_REMOVE) {
                if let Ok(list) = v.to_str() {
                    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                            changes.remove.push(n);
                        }
                    }
                }
            }
            answer.remove(HEADERS_TO_REMOVE);
            for (name, value) in &answer {
                let n = name.as_str();
                if s.upstream_set.iter().any(|m| m.matches(n)) {
                    changes.set.push((name.clone(), value.clone()));
                }
                if s.upstream_append.iter().any(|m| m.matches(n)) {
                    changes.append.push((name.clone(), value.clone()));
                }
                if s.client_on_success.iter().any(|m| m.matches(n)) {
                    changes.response.push((name.clone(), value.clone(), true));
                }
            }
            return Ok(Decision::Allow(changes));
        }
        answer.remove(HEADERS_TO_REMOVE);
        let always = [
            header::CONTENT_LENGTH,
            header::WWW_AUTHENTICATE,
            header::LOCATION,
        ];
        let headers = answer
            .iter()
            .filter(|(name, _)| {
                if s.client.is_empty() {
                    **name != header::HOST
                } else {
                    always.contains(name) || s.client.iter().any(|m| m.matches(name.as_str()))
                }
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        Ok(Decision::Deny(status, headers, body))
    }

    async fn check_grpc(
        &self,
        s: &GrpcService,
        req: &Request<RequestBody>,
        authority: &str,
        peers: Peers,
        context: &[(String, String)],
        clusters: &HashMap<String, Arc<Cluster>>,
    ) -> Result<Decision, CheckError> {
        let message = self.check_request(req, authority, peers, context);
        let mut body = BytesMut::with_capacity(5 + message.encoded_len());
        body.put_u8(0);
        body.put_u32(message.encoded_len() as u32);
        message
            .encode(&mut body)
            .map_err(|e| CheckError::Decode(e.to_string()))?;
        let uri: Uri = format!(
            "http://{}/envoy.service.auth.v3.Authorization/Check",
            uri_authority(&s.authority)
        )
        .parse()
        .map_err(|e: http::uri::InvalidUri| CheckError::Body(e.to_string()))?;
        let mut call = Request::new(RequestBody::Full(Some(body.freeze())));
        *call.method_mut() = Method::POST;
        *call.uri_mut() = uri;
        let h = call.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Ok(v) = HeaderValue::from_str(&s.authority) {
            h.insert(header::HOST, v);
        }
        if let Some(t) = self.timeout {
            if let Ok(v) = HeaderValue::from_str(&format!("{}m", t.as_millis())) {
                h.insert("grpc-timeout", v);
            }
        }
        let (parts, mut data, trailers) = self.call(&s.cluster, call, clusters).await?;
        if parts.status != StatusCode::OK {
            return Err(CheckError::ServerError(parts.status.as_u16()));
        }
        // The call's own status: in the trailers, or in the head of a trailers-only answer.
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if grpc_status != "0" {
            return Err(CheckError::GrpcStatus(grpc_status));
        }
        if data.len() < 5 || data[0] != 0 {
            return Err(CheckError::Decode("missing or compressed message".into()));
        }
        data.advance(1);
        let len = data.get_u32() as usize;
        if data.len() < len {
            return Err(CheckError::Decode("truncated message".into()));
        }
        let answer = auth::CheckResponse::decode(data.split_to(len))
            .map_err(|e| CheckError::Decode(e.to_string()))?;
        Ok(decision_of(answer))
    }

    /// The `CheckRequest` of a request.
    fn check_request(
        &self,
        req: &Request<RequestBody>,
        authority: &str,
        peers: Peers,
        context: &[(String, String)],
    ) -> auth::CheckRequest {
        let peer = |a: SocketAddr| auth::attribute_context::Peer {
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address: a.ip().to_string(),
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                        u32::from(a.port()),
                    )),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let mut headers: HashMap<String, String> = HashMap::new();
        let mut add = |name: &str, value: &str| {
            headers
                .entry(name.to_string())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_string());
        };
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let scheme = if peers.secure { "https" } else { "http" };
        for (name, value) in [
            (":authority", authority),
            (":method", req.method().as_str()),
            (":path", target),
            (":scheme", scheme),
        ] {
            if self.carries(name, false, true) {
                add(name, value);
            }
        }
        for (name, value) in req.headers() {
            if *name == header::HOST {
                continue;
            }
            if self.carries(name.as_str(), false, true) {
                add(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
            }
        }
        let size = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(if req.method() == Method::GET { 0 } else { -1 });
        let protocol = match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                source: Some(peer(peers.remote)),
                destination: Some(peer(peers.local)),
                request: Some(auth::attribute_context::Request {
                    time: Some(timestamp(now)),
                    http: Some(auth::attribute_context::HttpRequest {
                        id,
                        method: req.method().as_str().to_string(),
                        headers,
                        path: target.to_string(),
                        host: authority.to_string(),
                        scheme: scheme.to_string(),
                        size,
                        protocol: protocol.to_string(),
                        ..Default::default()
                    }),
                }),
                context_extensions: context.iter().cloned().collect(),
                ..Default::default()
            }),
        }
    }
}

/// A protobuf `Timestamp` of a time since the epoch.
fn timestamp(d: Duration) -> sluice_proto::envoy::google::protobuf::Timestamp {
    sluice_proto::envoy::google::protobuf::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// An authority usable in a URI (a host that is not one becomes `localhost`).
fn uri_authority(a: &str) -> &str {
    if !a.is_empty() && a.parse::<http::uri::Authority>().is_ok() {
        a
    } else {
        "localhost"
    }
}

/// The headers of a `HeaderValueOption` list: (name, value, append).
fn header_options(options: &[core::HeaderValueOption]) -> Vec<(HeaderName, HeaderValue, bool)> {
    options
        .iter()
        .filter_map(|o| {
            let h = o.header.as_ref()?;
            let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
            let raw = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                h.raw_value.as_slice()
            };
            let value = HeaderValue::from_bytes(raw).ok()?;
            // In these messages `append` is false unless set. It is deprecated in favour of
            // `append_action`, which these messages do not use.
            #[allow(deprecated)]
            let append = o.append.is_some_and(|a| a.value);
            Some((name, value, append))
        })
        .collect()
}

/// The decision of a `CheckResponse`.
fn decision_of(answer: auth::CheckResponse) -> Decision {
    let code = answer.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let mut changes = Changes::default();
        if let Some(auth::check_response::HttpResponse::OkResponse(ok)) = answer.http_response {
            for (name, value, append) in header_options(&ok.headers) {
                if append {
                    changes.append_existing.push((name, value));
                } else {
                    changes.set.push((name, value));
                }
            }
            changes.remove = ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            changes.response = header_options(&ok.response_headers_to_add);
            changes.query_set = ok
                .query_parameters_to_set
                .iter()
                .map(|q| (q.key.clone(), q.value.clone()))
                .collect();
            changes.query_remove = ok.query_parameters_to_remove;
        }
        return Decision::Allow(changes);
    }
    match answer.http_response {
        Some(auth::check_response::HttpResponse::DeniedResponse(d)) => {
            let status = d
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 200)
                .unwrap_or(StatusCode::FORBIDDEN);
            let headers = header_options(&d.headers)
                .into_iter()
                .map(|(n, v, _)| (n, v))
                .collect();
            Decision::Deny(status, headers, Bytes::from(d.body))
        }
        _ => Decision::Deny(StatusCode::FORBIDDEN, Vec::new(), Bytes::new()),
    }
}
