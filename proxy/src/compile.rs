//! Compiling validated Envoy configuration (canonical proto JSON, see
//! `sluice_config::envoy::canonical_json`) into a runtime [`Snapshot`].
//!
//! Static bootstraps and resources received over xDS go through these same functions, so a route
//! behaves the same wherever it was defined. Every error names the field path it comes from.
//! Field *support* was already checked by `sluice_config::field_support`; this step checks values
//! (addresses, regexes, weights, references) and builds matchers, pickers and metric handles.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;
use sluice_config::FieldError;

use crate::access_log::AccessLogs;
use crate::cluster::{
    Breakers, Cluster, Discovery, DnsFamily, EndpointSpec, HealthSettings, LbPolicy,
};
use crate::compressor::{
    CompressorChain, CompressorFilter, CompressorPerRoute, Library, PerRouteCompressors,
    DEFAULT_CONTENT_TYPES,
};
use crate::cors::CorsPolicy;
use crate::csrf::{CsrfFilter, CsrfPolicy, CsrfStats};
use crate::decompressor::{DecoderLibrary, DecompressorChain, DecompressorFilter, Direction};
use crate::ext_authz::{
    ExtAuthz, ExtAuthzStats, GrpcService, HttpService, PerRoute as ExtAuthzPerRoute,
    Service as AuthzService,
};
use crate::fault::FaultConfig;
use crate::hash_policy::{CookieHash, HashPolicy, HashSource};
use crate::header_ops::{AppendAction, HeaderAdd, HeaderOps, HeaderTemplate};
use crate::health_check::{HealthCheckConfig, HealthCheckTarget, HealthChecker, HttpProbe, Probe};
use crate::health_check_filter::HealthCheckFilter;
use crate::local_ratelimit::{LocalRateLimit, TokenBucket};
use crate::matcher::{
    HeaderCheck, HeaderMatcher, HeaderSource, PathMatch, QueryMatcher, StringMatch, StringMatcher,
};
use crate::metrics::{
    ClusterStats, HcmStats, HealthCheckStats, IstioStats, Metrics, TcpProxyStats,
};
use crate::outlier::OutlierConfig;
use crate::path_normalize::{EscapedSlashes, PathRules, Underscores};
use crate::rbac::{
    Action as RbacAction, Cidr, Engine, MatchInput, MatcherList, Permission, Policy as RbacPolicy,
    Predicate, Principal, RbacFilter, RbacRules, RbacStats,
};
use crate::retry_policy::{RetryOn, RetryPolicy};
use crate::route_table::{
    ClusterRef, DirectResponse, ForwardAction, MirrorPolicy, MirrorTarget, RedirectAction,
    RequireTls, Route, RouteAction, RouteMatch, RouteTable, Target, VirtualHost, WeightedEntry,
    WeightedTarget,
};
use crate::snapshot::{
    Codec, FilterChain, HcmConfig, Http2Options, ListenerConfig, NetworkFilter, NodeInfo,
    ServerHeader, Snapshot,
};
use crate::tcp_proxy::TcpProxyConfig;
use crate::upstream_pool::{ConnectionBudget, PoolSettings, UpstreamProtocol};
use crate::vhost_select::VhostSelector;
use crate::weighted_pick::WeightedPick;

const TLS_INSPECTOR_TYPE: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const TCP_PROXY_TYPE: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const NETWORK_RBAC_TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
const FAULT_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
const HEALTH_CHECK_TYPE: &str = "envoy.extensions.filters.http.health_check.v3.HealthCheck";
const LOCAL_RATELIMIT_TYPE: &str =
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const CORS_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";
const COMPRESSOR_TYPE: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
const COMPRESSOR_PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const CSRF_TYPE: &str = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy";
const RBAC_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
const DECOMPRESSOR_TYPE: &str = "envoy.extensions.filters.http.decompressor.v3.Decompressor";
const EXT_AUTHZ_TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const EXT_AUTHZ_PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
const GZIP_DECOMPRESSOR_TYPE: &str = "envoy.extensions.compression.gzip.decompressor.v3.Gzip";
const BROTLI_DECOMPRESSOR_TYPE: &str = "envoy.extensions.compression.brotli.decompressor.v3.Brotli";
const ZSTD_DECOMPRESSOR_TYPE: &str = "envoy.extensions.compression.zstd.decompressor.v3.Zstd";
const GZIP_TYPE: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI_TYPE: &str = "envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD_TYPE: &str = "envoy.extensions.compression.zstd.compressor.v3.Zstd";
const UPSTREAM_HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

type Errors = Vec<FieldError>;

// ---- canonical JSON accessors ---------------------------------------------------------------

fn get<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k)
}
fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}
fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}
fn u(v: &Value, k: &str) -> Option<u64> {
    match v.get(k)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}
fn arr<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}
fn p(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Parse a proto JSON duration (`"1.500s"`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let secs = text.strip_suffix('s')?;
    let f: f64 = secs.parse().ok()?;
    (f >= 0.0 && f.is_finite()).then(|| Duration::from_secs_f64(f))
}

fn dur(v: &Value, k: &str) -> Option<Duration> {
    s(v, k).and_then(parse_duration)
}

fn socket_address(v: &Value, path: &str, errors: &mut Errors) -> Option<(String, u16)> {
    let Some(sa) = get(v, "socket_address") else {
        errors.push(FieldError::new(p(path, "socket_address"), "required"));
        return None;
    };
    let host = s(sa, "address").unwrap_or("").to_string();
    let port = u(sa, "port_value").unwrap_or(0);
    if port > u16::MAX as u64 {
        errors.push(FieldError::new(
            p(path, "socket_address.port_value"),
            "port out of range",
        ));
        return None;
    }
    Some((host, port as u16))
}

fn ip_socket_address(v: &Value, path: &str, errors: &mut Errors) -> Option<SocketAddr> {
    let (host, port) = socket_address(v, path, errors)?;
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(SocketAddr::new(ip, port)),
        Err(_) => {
            errors.push(FieldError::new(
                p(path, "socket_address.address"),
                format!("`{host}` is not an IP address"),
            ));
            None
        }
    }
}

// ---- string and header matchers -------------------------------------------------------------

fn regex(v: &Value, path: &str, errors: &mut Errors) -> Option<regex::Regex> {
    let pattern = s(v, "regex").unwrap_or("");
    match StringMatcher::full_regex(pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(FieldError::new(
                p(path, "regex"),
                format!("invalid regex: {e}"),
            ));
            None
        }
    }
}

pub(crate) fn string_matcher(v: &Value, path: &str, errors: &mut Errors) -> Option<StringMatcher> {
    let ignore_case = b(v, "ignore_case");
    for k in ["prefix", "suffix", "contains"] {
        if s(v, k) == Some("") {
            // Envoy's proto validation: these need at least one character.
            errors.push(FieldError::new(p(path, k), "must not be empty"));
            return None;
        }
    }
    let kind = if let Some(x) = s(v, "exact") {
        StringMatch::Exact(x.into())
    } else if let Some(x) = s(v, "prefix") {
        StringMatch::Prefix(x.into())
    } else if let Some(x) = s(v, "suffix") {
        StringMatch::Suffix(x.into())
    } else if let Some(x) = s(v, "contains") {
        StringMatch::Contains(x.into())
    } else if let Some(r) = get(v, "safe_regex") {
        StringMatch::Regex(regex(r, &p(path, "safe_regex"), errors)?)
    } else {
        // An empty `exact` is the proto default and is omitted in canonical JSON.
        StringMatch::Exact(String::new())
    };
    Some(StringMatcher { kind, ignore_case })
}

fn header_matcher(v: &Value, path: &str, errors: &mut Errors) -> Option<HeaderMatcher> {
    let name = s(v, "name").unwrap_or("");
    let source = match name {
        ":method" => HeaderSource::Method,
        ":authority" | "host" => HeaderSource::Authority,
        ":path" => HeaderSource::Path,
        ":scheme" => HeaderSource::Scheme,
        _ => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => HeaderSource::Header(h),
            Err(_) => {
                errors.push(FieldError::new(
                    p(path, "name"),
                    format!("invalid header name `{name}`"),
                ));
                return None;
            }
        },
    };
    let sm = |kind| HeaderCheck::Value(StringMatcher::new(kind));
    let check = if let Some(x) = s(v, "exact_match") {
        sm(StringMatch::Exact(x.into()))
    } else if let Some(x) = s(v, "prefix_match") {
        sm(StringMatch::Prefix(x.into()))
    } else if let Some(x) = s(v, "suffix_match") {
        sm(StringMatch::Suffix(x.into()))
    } else if let Some(x) = s(v, "contains_match") {
        sm(StringMatch::Contains(x.into()))
    } else if let Some(r) = get(v, "safe_regex_match") {
        sm(StringMatch::Regex(regex(
            r,
            &p(path, "safe_regex_match"),
            errors,
        )?))
    } else if let Some(m) = get(v, "string_match") {
        HeaderCheck::Value(string_matcher(m, &p(path, "string_match"), errors)?)
    } else if let Some(Value::Bool(want)) = get(v, "present_match") {
        HeaderCheck::Present(*want)
    } else {
        HeaderCheck::Present(true)
    };
    Some(HeaderMatcher {
        source,
        check,
        invert: b(v, "invert_match"),
        treat_missing_as_empty: b(v, "treat_missing_header_as_empty"),
    })
}

/// A network RBAC filter's `typed_config` (`stat_prefix` required; enforcement once per connection).
fn network_rbac(
    config: &Value,
    path: &str,
    metrics: &Metrics,
    errors: &mut Vec<FieldError>,
) -> Option<crate::rbac::NetworkRbac> {
    let stat_prefix = s(config, "stat_prefix").unwrap_or("");
    if stat_prefix.is_empty() {
        errors.push(FieldError::new(p(path, "stat_prefix"), "required"));
        return None;
    }
    let before = errors.len();
    let own = rbac_rules(config, path, errors);
    if errors.len() != before {
        return None;
    }
    let shadow_prefix = s(config, "shadow_rules_stat_prefix").unwrap_or("");
    match crate::rbac::NetworkRbac::new(own, metrics, stat_prefix, shadow_prefix) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(FieldError::new(path, format!("RBAC statistics: {e}")));
            None
        }
    }
}

/// A `tcp_proxy` network filter's `typed_config`. Its clusters are looked up now; one that does
/// not exist closes each connection (Envoy accepts the configuration too).
fn tcp_proxy(
    v: &Value,
    path: &str,
    res: &ClusterResolver<'_>,
    metrics: &Metrics,
    errors: &mut Errors,
) -> Option<TcpProxyConfig> {
    let target = |name: &str| ClusterRef {
        name: Arc::from(name),
        cluster: res.clusters.get(name).cloned(),
    };
    let (targets, weights) = if let Some(name) = s(v, "cluster") {
        (vec![target(name)], None)
    } else if let Some(w) = get(v, "weighted_clusters") {
        let entries = arr(w, "clusters");
        if entries.is_empty() {
            errors.push(FieldError::new(
                p(path, "weighted_clusters.clusters"),
                "at least one cluster is required",
            ));
            return None;
        }
        let targets: Vec<ClusterRef> = entries
            .iter()
            .map(|c| target(s(c, "name").unwrap_or("")))
            .collect();
        let weights = WeightedPick::new(entries.iter().map(|c| u(c, "weight").unwrap_or(0)));
        if weights.is_none() {
            errors.push(FieldError::new(
                p(path, "weighted_clusters.clusters"),
                "the weights add up to 0",
            ));
            return None;
        }
        (targets, weights)
    } else {
        errors.push(FieldError::new(
            path.to_string(),
            "needs cluster or weighted_clusters",
        ));
        return None;
    };
    let idle_timeout = match dur(v, "idle_timeout") {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(crate::tcp_proxy::DEFAULT_IDLE_TIMEOUT),
    };
    let stat_prefix = s(v, "stat_prefix").unwrap_or("").to_string();
    Some(TcpProxyConfig {
        stats: TcpProxyStats::new(metrics, &stat_prefix),
        stat_prefix,
        targets,
        weights,
        idle_timeout,
        max_connect_attempts: u(v, "max_connect_attempts")
            .unwrap_or(1)
            .clamp(1, u64::from(u32::MAX)) as u32,
    })
}

/// The health-check filter's `typed_config`.
fn health_check_filter(
    v: &Value,
    path: &str,
    identity: &Identity,
    errors: &mut Errors,
) -> Option<HealthCheckFilter> {
    let Some(pass_through) = get(v, "pass_through_mode").map(|w| match w {
        Value::Bool(b) => *b,
        other => other.get("value").and_then(Value::as_bool).unwrap_or(false),
    }) else {
        errors.push(FieldError::new(p(path, "pass_through_mode"), "required"));
        return None;
    };
    if dur(v, "cache_time").is_some_and(|d| !d.is_zero()) {
        errors.push(FieldError::unsupported(p(path, "cache_time")));
        return None;
    }
    let mut headers = Vec::new();
    for (i, h) in arr(v, "headers").iter().enumerate() {
        headers.push(header_matcher(h, &format!("{path}.headers[{i}]"), errors)?);
    }
    let mut min_healthy: Vec<(String, f64)> = get(v, "cluster_min_healthy_percentages")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, pct)| {
                    let value = pct.get("value").and_then(Value::as_f64).unwrap_or(0.0);
                    (name.clone(), value.clamp(0.0, 100.0))
                })
                .collect()
        })
        .unwrap_or_default();
    min_healthy.sort_by(|a, b| a.0.cmp(&b.0));
    Some(HealthCheckFilter {
        pass_through,
        headers,
        min_healthy,
        local_cluster: HeaderValue::from_str(&identity.local_cluster)
            .unwrap_or(HeaderValue::from_static("")),
    })
}

fn fraction(v: &Value) -> (u64, u64) {
    let num = u(v, "numerator").unwrap_or(0);
    let per = match s(v, "denominator").unwrap_or("HUNDRED") {
        "TEN_THOUSAND" => 10_000,
        "MILLION" => 1_000_000,
        _ => 100,
    };
    (num.min(per), per)
}

/// A `RuntimeFractionalPercent` field's default value as (numerator, denominator); `None` when
/// the field is absent (one without a default value is 0 %).
fn runtime_fraction(v: &Value, k: &str) -> Option<(u64, u64)> {
    get(v, k).map(|f| get(f, "default_value").map(fraction).unwrap_or((0, 100)))
}

fn route_match(v: &Value, path: &str, errors: &mut Errors) -> Option<RouteMatch> {
    let case_sensitive = v
        .get("case_sensitive")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let pm = if let Some(x) = s(v, "prefix") {
        PathMatch::Prefix(x.into())
    } else if let Some(x) = s(v, "path") {
        PathMatch::Exact(x.into())
    } else if let Some(r) = get(v, "safe_regex") {
        PathMatch::Regex(regex(r, &p(path, "safe_regex"), errors)?)
    } else if let Some(x) = s(v, "path_separated_prefix") {
        if x.ends_with('/') || x.contains(['?', '#']) {
            errors.push(FieldError::new(
                p(path, "path_separated_prefix"),
                "must not end with `/` or contain `?` or `#`",
            ));
            return None;
        }
        PathMatch::SeparatedPrefix(x.into())
    } else {
        errors.push(FieldError::new(
            path,
            "a path specifier (prefix, path, safe_regex, path_separated_prefix) is required",
        ));
        return None;
    };
    let mut headers = Vec::new();
    for (i, h) in arr(v, "headers").iter().enumerate() {
        headers.extend(header_matcher(h, &format!("{path}.headers[{i}]"), errors));
    }
    let mut query = Vec::new();
    for (i, q) in arr(v, "query_parameters").iter().enumerate() {
        let qpath = format!("{path}.query_parameters[{i}]");
        let value = match get(q, "string_match") {
            Some(m) => Some(string_matcher(m, &p(&qpath, "string_match"), errors)?),
            None => None,
        };
        query.push(QueryMatcher {
            name: s(q, "name").unwrap_or("").to_string(),
            value,
        });
    }
    let runtime_fraction = get(v, "runtime_fraction")
        .map(|rf| get(rf, "default_value").map(fraction).unwrap_or((0, 100)));
    Some(RouteMatch {
        path: pm,
        case_sensitive,
        headers,
        query,
        runtime_fraction,
        grpc: get(v, "grpc").is_some(),
    })
}

// ---- header operations ----------------------------------------------------------------------

fn header_ops(
    v: &Value,
    add_key: &str,
    remove_key: &str,
    path: &str,
    errors: &mut Errors,
) -> HeaderOps {
    let mut ops = HeaderOps::default();
    for (i, opt) in arr(v, add_key).iter().enumerate() {
        let hpath = format!("{}[{i}]", p(path, add_key));
        let header = get(opt, "header").cloned().unwrap_or(Value::Null);
        let key = s(&header, "key").unwrap_or("");
        let value = s(&header, "value").unwrap_or("");
        if key.starts_with(':') || key.eq_ignore_ascii_case("host") {
            errors.push(FieldError::new(
                p(&hpath, "header.key"),
                format!("`{key}` may not be modified"),
            ));
            continue;
        }
        let name = match HeaderName::from_bytes(key.as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                errors.push(FieldError::new(
                    p(&hpath, "header.key"),
                    format!("invalid header name `{key}`"),
                ));
                continue;
            }
        };
        let template = match HeaderTemplate::parse_for(value, true) {
            Ok(t) => t,
            Err(e) => {
                errors.push(FieldError::new(p(&hpath, "header.value"), e));
                continue;
            }
        };
        let action = match (
            opt.get("append").and_then(Value::as_bool),
            s(opt, "append_action"),
        ) {
            (Some(false), _) => AppendAction::OverwriteIfExistsOrAdd,
            (Some(true), _) => AppendAction::AppendIfExistsOrAdd,
            (None, Some("ADD_IF_ABSENT")) => AppendAction::AddIfAbsent,
            (None, Some("OVERWRITE_IF_EXISTS_OR_ADD")) => AppendAction::OverwriteIfExistsOrAdd,
            (None, Some("OVERWRITE_IF_EXISTS")) => AppendAction::OverwriteIfExists,
            _ => AppendAction::AppendIfExistsOrAdd,
        };
        ops.add.push(HeaderAdd {
            name,
            value: template,
            action,
            keep_empty: b(opt, "keep_empty_value"),
        });
    }
    for (i, name) in arr(v, remove_key).iter().enumerate() {
        let n = name.as_str().unwrap_or("");
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) if !n.eq_ignore_ascii_case("host") => ops.remove.push(h),
            _ => errors.push(FieldError::new(
                format!("{}[{i}]", p(path, remove_key)),
                format!("`{n}` cannot be removed"),
            )),
        }
    }
    ops
}

fn request_ops(v: &Value, path: &str, errors: &mut Errors) -> HeaderOps {
    header_ops(
        v,
        "request_headers_to_add",
        "request_headers_to_remove",
        path,
        errors,
    )
}
fn response_ops(v: &Value, path: &str, errors: &mut Errors) -> HeaderOps {
    header_ops(
        v,
        "response_headers_to_add",
        "response_headers_to_remove",
        path,
        errors,
    )
}

// ---- routes ---------------------------------------------------------------------------------

/// How cluster names in routes are resolved.
pub struct ClusterResolver<'a> {
    pub clusters: &'a HashMap<String, Arc<Cluster>>,
    /// Reject routes naming unknown clusters (Envoy's `validate_clusters`, default for static
    /// route configurations).
    pub validate: bool,
}

impl ClusterResolver<'_> {
    fn resolve(&self, name: &str, path: &str, errors: &mut Errors) -> ClusterRef {
        let cluster = self.clusters.get(name).cloned();
        if cluster.is_none() && self.validate {
            errors.push(FieldError::new(path, format!("unknown cluster `{name}`")));
        }
        ClusterRef {
            name: Arc::from(name),
            cluster,
        }
    }
}

fn rewrite(v: &Value, path: &str, errors: &mut Errors) -> Option<(regex::Regex, String)> {
    let pattern = get(v, "pattern")?;
    // Rewrites replace matches anywhere, so this regex is not anchored.
    let re = match regex::Regex::new(s(pattern, "regex").unwrap_or("")) {
        Ok(r) => r,
        Err(e) => {
            errors.push(FieldError::new(
                p(path, "pattern.regex"),
                format!("invalid regex: {e}"),
            ));
            return None;
        }
    };
    // RE2 substitutions use \1; the regex crate uses ${1}.
    let sub = s(v, "substitution").unwrap_or("");
    let mut out = String::new();
    let mut chars = sub.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    Some((re, out))
}

fn header_value(text: &str, path: &str, errors: &mut Errors) -> Option<HeaderValue> {
    match HeaderValue::from_str(text) {
        Ok(v) => Some(v),
        Err(_) => {
            errors.push(FieldError::new(
                path,
                format!("invalid header value `{text}`"),
            ));
            None
        }
    }
}

fn forward_action(
    v: &Value,
    path: &str,
    res: &ClusterResolver<'_>,
    errors: &mut Errors,
) -> Option<ForwardAction> {
    let target = if let Some(c) = s(v, "cluster") {
        Target::Cluster(res.resolve(c, &p(path, "cluster"), errors))
    } else if let Some(h) = s(v, "cluster_header") {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => Target::Header(name),
            Err(_) => {
                errors.push(FieldError::new(
                    p(path, "cluster_header"),
                    "invalid header name",
                ));
                return None;
            }
        }
    } else if let Some(wc) = get(v, "weighted_clusters") {
        let wpath = p(path, "weighted_clusters");
        let mut entries = Vec::new();
        let mut weights = Vec::new();
        for (i, c) in arr(wc, "clusters").iter().enumerate() {
            let cpath = format!("{wpath}.clusters[{i}]");
            let name = s(c, "name").unwrap_or("");
            weights.push(u(c, "weight").unwrap_or(0));
            entries.push(WeightedEntry {
                cluster: res.resolve(name, &p(&cpath, "name"), errors),
                request_headers: request_ops(c, &cpath, errors),
                response_headers: response_ops(c, &cpath, errors),
                host_rewrite: s(c, "host_rewrite_literal")
                    .and_then(|h| header_value(h, &p(&cpath, "host_rewrite_literal"), errors)),
            });
        }
        let sum: u64 = weights.iter().sum();
        if let Some(total) = u(wc, "total_weight") {
            if total != sum {
                errors.push(FieldError::new(
                    p(&wpath, "total_weight"),
                    format!("sum of cluster weights ({sum}) must equal total_weight ({total})"),
                ));
            }
        }
        let Some(pick) = WeightedPick::new(weights) else {
            errors.push(FieldError::new(
                p(&wpath, "clusters"),
                "the sum of weights must be greater than 0",
            ));
            return None;
        };
        Target::Weighted(WeightedTarget {
            pick,
            entries,
            use_hash_policy: false,
        })
    } else {
        errors.push(FieldError::new(
            path,
            "one of cluster, cluster_header, weighted_clusters is required",
        ));
        return None;
    };
    let timeout = match s(v, "timeout") {
        Some(t) => parse_duration(t).filter(|d| !d.is_zero()),
        None => Some(DEFAULT_ROUTE_TIMEOUT),
    };
    let mut mirrors = Vec::new();
    for (i, m) in arr(v, "request_mirror_policies").iter().enumerate() {
        let mpath = format!("{}[{i}]", p(path, "request_mirror_policies"));
        let cluster = match s(m, "cluster_header") {
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => MirrorTarget::Header(name),
                Err(_) => {
                    errors.push(FieldError::new(
                        p(&mpath, "cluster_header"),
                        "invalid header name",
                    ));
                    continue;
                }
            },
            None => MirrorTarget::Cluster(res.resolve(
                s(m, "cluster").unwrap_or(""),
                &p(&mpath, "cluster"),
                errors,
            )),
        };
        mirrors.push(MirrorPolicy {
            cluster,
            fraction: get(m, "runtime_fraction")
                .map(|rf| get(rf, "default_value").map(fraction).unwrap_or((0, 100)))
                .unwrap_or((1, 1)),
            append_shadow_suffix: !b(m, "disable_shadow_host_suffix_append"),
        });
    }
    let mut hash_policy = Vec::new();
    for (i, h) in arr(v, "hash_policy").iter().enumerate() {
        let hpath = format!("{}[{i}]", p(path, "hash_policy"));
        let source = if let Some(hd) = get(h, "header") {
            match HeaderName::from_bytes(s(hd, "header_name").unwrap_or("").as_bytes()) {
                Ok(n) => HashSource::Header(n),
                Err(_) => {
                    errors.push(FieldError::new(
                        p(&hpath, "header.header_name"),
                        "invalid header name",
                    ));
                    continue;
                }
            }
        } else if let Some(c) = get(h, "cookie") {
            HashSource::Cookie(CookieHash {
                name: s(c, "name").unwrap_or("").to_string(),
                generate: get(c, "ttl")
                    .and_then(Value::as_str)
                    .and_then(parse_duration)
                    .map(|d| d.as_secs()),
                path: s(c, "path").unwrap_or("").to_string(),
                attributes: arr(c, "attributes")
                    .iter()
                    .map(|a| {
                        (
                            s(a, "name").unwrap_or("").to_string(),
                            s(a, "value").unwrap_or("").to_string(),
                        )
                    })
                    .collect(),
            })
        } else if let Some(q) = get(h, "query_parameter") {
            HashSource::QueryParameter(s(q, "name").unwrap_or("").to_string())
        } else if get(h, "connection_properties").is_some_and(|c| b(c, "source_ip")) {
            HashSource::SourceIp
        } else {
            errors.push(FieldError::new(hpath, "a hash policy kind is required"));
            continue;
        };
        hash_policy.push(HashPolicy {
            source,
            terminal: b(h, "terminal"),
        });
    }
    let target = match target {
        Target::Weighted(mut w) => {
            // As Envoy: the hash picks the cluster only with `use_hash_policy`; otherwise the
            // request's random value does, and the hash serves consistent-hash clusters alone.
            w.use_hash_policy = !hash_policy.is_empty()
                && get(v, "weighted_clusters").is_some_and(|wc| b(wc, "use_hash_policy"));
            Target::Weighted(w)
        }
        t => t,
    };
    let mut websocket = None;
    for (i, uc) in arr(v, "upgrade_configs").iter().enumerate() {
        let t = s(uc, "upgrade_type").unwrap_or("");
        if t.eq_ignore_ascii_case("websocket") {
            websocket = Some(uc.get("enabled").and_then(Value::as_bool).unwrap_or(true));
        } else {
            errors.push(FieldError::new(
                format!("{}[{i}].upgrade_type", p(path, "upgrade_configs")),
                format!("upgrade type `{t}` not supported"),
            ));
        }
    }
    let cluster_not_found_status = match s(v, "cluster_not_found_response_code") {
        Some("NOT_FOUND") => StatusCode::NOT_FOUND,
        Some("INTERNAL_SERVER_ERROR") => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let retry =
        get(v, "retry_policy").and_then(|r| retry_policy(r, &p(path, "retry_policy"), errors));
    // Envoy announces the per-try timeout when it is the shorter one.
    let expected = match (timeout, retry.as_ref().and_then(|r| r.per_try_timeout)) {
        (Some(t), Some(pt)) if pt < t => Some(pt),
        (None, Some(pt)) => Some(pt),
        (t, _) => t,
    };
    Some(ForwardAction {
        target,
        timeout_header: expected.map(|t| HeaderValue::from(t.as_millis() as u64)),
        timeout,
        auto_host_rewrite: b(v, "auto_host_rewrite"),
        idle_timeout: s(v, "idle_timeout").map(|t| parse_duration(t).filter(|d| !d.is_zero())),
        retry: retry.map(Arc::new),
        prefix_rewrite: s(v, "prefix_rewrite").map(str::to_string),
        regex_rewrite: get(v, "regex_rewrite")
            .and_then(|r| rewrite(r, &p(path, "regex_rewrite"), errors)),
        host_rewrite: s(v, "host_rewrite_literal")
            .and_then(|h| header_value(h, &p(path, "host_rewrite_literal"), errors)),
        mirrors,
        hash_policy,
        websocket,
        cluster_not_found_status,
    })
}

/// A route's `retry_policy`.
fn retry_policy(v: &Value, path: &str, errors: &mut Errors) -> Option<RetryPolicy> {
    let retry_on = match RetryOn::parse(s(v, "retry_on").unwrap_or("")) {
        Ok(on) => on,
        Err(e) => {
            errors.push(FieldError::new(p(path, "retry_on"), e));
            return None;
        }
    };
    let mut policy = RetryPolicy {
        retry_on,
        num_retries: u(v, "num_retries").map_or(1, |n| n.min(u64::from(u32::MAX)) as u32),
        per_try_timeout: dur(v, "per_try_timeout").filter(|d| !d.is_zero()),
        retriable_status_codes: arr(v, "retriable_status_codes")
            .iter()
            .filter_map(Value::as_u64)
            .map(|c| c.min(u64::from(u16::MAX)) as u16)
            .collect(),
        host_selection_max_attempts: u(v, "host_selection_retry_max_attempts")
            .map_or(1, |n| n.clamp(1, 100) as u32),
        ..RetryPolicy::default()
    };
    if let Some(b) = get(v, "retry_back_off") {
        if let Some(base) = dur(b, "base_interval").filter(|d| !d.is_zero()) {
            policy.base_interval = base;
            policy.max_interval = base * 10;
        }
        if let Some(max) = dur(b, "max_interval") {
            if max < policy.base_interval {
                errors.push(FieldError::new(
                    format!("{path}.retry_back_off.max_interval"),
                    "must not be below base_interval",
                ));
                return None;
            }
            policy.max_interval = max;
        }
    }
    for (i, pred) in arr(v, "retry_host_predicate").iter().enumerate() {
        match s(pred, "name") {
            Some("envoy.retry_host_predicates.previous_hosts") => policy.previous_hosts = true,
            other => {
                errors.push(FieldError::new(
                    format!("{path}.retry_host_predicate[{i}].name"),
                    format!(
                        "retry host predicate `{}` not supported",
                        other.unwrap_or("")
                    ),
                ));
                return None;
            }
        }
    }
    Some(policy)
}

fn redirect_action(v: &Value, path: &str, errors: &mut Errors) -> Option<RedirectAction> {
    let scheme = if b(v, "https_redirect") {
        Some("https".to_string())
    } else {
        s(v, "scheme_redirect").map(str::to_ascii_lowercase)
    };
    let status = match s(v, "response_code") {
        Some("FOUND") => StatusCode::FOUND,
        Some("SEE_OTHER") => StatusCode::SEE_OTHER,
        Some("TEMPORARY_REDIRECT") => StatusCode::TEMPORARY_REDIRECT,
        Some("PERMANENT_REDIRECT") => StatusCode::PERMANENT_REDIRECT,
        _ => StatusCode::MOVED_PERMANENTLY,
    };
    let port = u(v, "port_redirect").map(|p| p as u16);
    Some(RedirectAction {
        scheme,
        host: s(v, "host_redirect").map(str::to_string),
        port,
        path: s(v, "path_redirect").map(str::to_string),
        prefix_rewrite: s(v, "prefix_rewrite").map(str::to_string),
        regex_rewrite: get(v, "regex_rewrite")
            .and_then(|r| rewrite(r, &p(path, "regex_rewrite"), errors)),
        status,
        strip_query: b(v, "strip_query"),
    })
}

fn direct_response(v: &Value, path: &str, errors: &mut Errors) -> Option<DirectResponse> {
    let code = u(v, "status").unwrap_or(0);
    let Some(status) = (200..600)
        .contains(&code)
        .then(|| StatusCode::from_u16(code as u16).ok())
        .flatten()
    else {
        errors.push(FieldError::new(
            p(path, "status"),
            format!("status {code} must be in [200, 600)"),
        ));
        return None;
    };
    let body = match get(v, "body") {
        None => None,
        Some(ds) => match crate::data_source::read(ds, &p(path, "body")) {
            Ok(b) => Some(bytes::Bytes::from(b)),
            Err(e) => {
                errors.push(e);
                return None;
            }
        },
    };
    Some(DirectResponse { status, body })
}

fn type_name(v: &Value) -> &str {
    s(v, "@type")
        .map(|t| t.rsplit('/').next().unwrap_or(""))
        .unwrap_or("")
}

/// An `HTTPFault` (the fault filter's configuration, or a route's override).
fn fault_config(v: &Value, path: &str, errors: &mut Errors) -> Option<FaultConfig> {
    use crate::fault::{AbortSource, DelaySource, FaultAbort, FaultDelay};
    let before = errors.len();
    let percentage = |x: &Value| get(x, "percentage").map(fraction).unwrap_or((0, 100));
    let delay = get(v, "delay").map(|d| FaultDelay {
        source: if get(d, "header_delay").is_some() {
            DelaySource::Header
        } else {
            DelaySource::Fixed(dur(d, "fixed_delay").unwrap_or_default())
        },
        percentage: percentage(d),
    });
    let abort = get(v, "abort").and_then(|a| {
        let source = if get(a, "header_abort").is_some() {
            AbortSource::Header
        } else if let Some(g) = u(a, "grpc_status") {
            AbortSource::Grpc(g as u32)
        } else {
            let code = u(a, "http_status").unwrap_or(0);
            match u16::try_from(code)
                .ok()
                .filter(|c| (200..600).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(c) => AbortSource::Http(c),
                None => {
                    errors.push(FieldError::new(
                        format!("{path}.abort.http_status"),
                        format!("{code} is not in [200, 600)"),
                    ));
                    return None;
                }
            }
        };
        Some(FaultAbort {
            source,
            percentage: percentage(a),
        })
    });
    let headers = arr(v, "headers")
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_matcher(h, &format!("{path}.headers[{i}]"), errors))
        .collect();
    if errors.len() > before {
        return None;
    }
    Some(FaultConfig {
        delay,
        abort,
        upstream_cluster: s(v, "upstream_cluster")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        headers,
        downstream_nodes: arr(v, "downstream_nodes")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        max_active_faults: u(v, "max_active_faults"),
    })
}

/// The `typed_per_filter_config` entry of type `ty` of a route or virtual host, compiled.
fn per_filter<T>(
    v: &Value,
    ty: &str,
    path: &str,
    errors: &mut Errors,
    compile: impl FnOnce(&Value, &str, &mut Errors) -> Option<T>,
) -> Option<Arc<T>> {
    let map = get(v, "typed_per_filter_config")?.as_object()?;
    let (name, c) = map.iter().find(|(_, c)| type_name(c) == ty)?;
    compile(
        c,
        &format!("{path}.typed_per_filter_config[\"{name}\"]"),
        errors,
    )
    .map(Arc::new)
}

fn fault_override(v: &Value, path: &str, errors: &mut Errors) -> Option<Arc<FaultConfig>> {
    per_filter(v, FAULT_TYPE, path, errors, fault_config)
}

fn local_ratelimit_override(
    v: &Value,
    path: &str,
    errors: &mut Errors,
) -> Option<Arc<LocalRateLimit>> {
    per_filter(v, LOCAL_RATELIMIT_TYPE, path, errors, |c, path, errors| {
        if get(c, "token_bucket").is_none() {
            errors.push(FieldError::new(
                p(path, "token_bucket"),
                "required in a route's or virtual host's configuration (as Envoy)",
            ));
            return None;
        }
        local_ratelimit(c, path, errors)
    })
}

/// `CsrfPolicy` (the filter's own, a route's or a virtual host's).
fn csrf_policy(v: &Value, path: &str, errors: &mut Errors) -> Option<CsrfPolicy> {
    if get(v, "filter_enabled").is_none() {
        errors.push(FieldError::new(p(path, "filter_enabled"), "required"));
        return None;
    }
    let additional_origins = arr(v, "additional_origins")
        .iter()
        .enumerate()
        .filter_map(|(i, m)| string_matcher(m, &format!("{path}.additional_origins[{i}]"), errors))
        .collect();
    Some(CsrfPolicy {
        enabled: runtime_fraction(v, "filter_enabled").unwrap_or((0, 100)),
        shadow: runtime_fraction(v, "shadow_enabled"),
        additional_origins,
    })
}

/// A `ListStringMatcher` field's patterns.
fn string_list(v: &Value, k: &str, path: &str, errors: &mut Errors) -> Vec<StringMatcher> {
    get(v, k)
        .map(|l| {
            arr(l, "patterns")
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    string_matcher(m, &format!("{}.patterns[{i}]", p(path, k)), errors)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `ExtAuthz`, the external authorization filter's configuration.
fn ext_authz_filter(
    v: &Value,
    path: &str,
    metrics: &Metrics,
    hcm_prefix: &str,
    errors: &mut Errors,
) -> Option<ExtAuthz> {
    let before = errors.len();
    let (service, timeout) = if let Some(h) = get(v, "http_service") {
        let hpath = p(path, "http_service");
        let uri = get(h, "server_uri");
        let cluster = uri.and_then(|u| s(u, "cluster")).unwrap_or("");
        if cluster.is_empty() {
            errors.push(FieldError::new(p(&hpath, "server_uri.cluster"), "required"));
        }
        let Some(timeout) = uri.and_then(|u| dur(u, "timeout")) else {
            errors.push(FieldError::new(p(&hpath, "server_uri.timeout"), "required"));
            return None;
        };
        let request = get(h, "authorization_request");
        let response = get(h, "authorization_response");
        let rpath = p(&hpath, "authorization_request");
        let spath = p(&hpath, "authorization_response");
        let list = |v: Option<&Value>, k: &str, path: &str, errors: &mut Errors| {
            v.map(|v| string_list(v, k, path, errors))
                .unwrap_or_default()
        };
        let mut headers_to_add = Vec::new();
        for (i, hv) in request
            .map(|r| arr(r, "headers_to_add"))
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let key = s(hv, "key").unwrap_or("");
            let value = s(hv, "value").unwrap_or("");
            match (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) if !value.contains('%') => headers_to_add.push((n, v)),
                _ => errors.push(FieldError::new(
                    format!("{rpath}.headers_to_add[{i}]"),
                    "a header name and a literal value are required (formatters are not supported here)",
                )),
            }
        }
        let service = HttpService {
            cluster: cluster.to_string(),
            path_prefix: s(h, "path_prefix").unwrap_or("").to_string(),
            request_headers: list(request, "allowed_headers", &rpath, errors),
            headers_to_add,
            upstream_set: list(response, "allowed_upstream_headers", &spath, errors),
            upstream_append: list(
                response,
                "allowed_upstream_headers_to_append",
                &spath,
                errors,
            ),
            client: list(response, "allowed_client_headers", &spath, errors),
            client_on_success: list(
                response,
                "allowed_client_headers_on_success",
                &spath,
                errors,
            ),
        };
        (AuthzService::Http(service), Some(timeout))
    } else if let Some(g) = get(v, "grpc_service") {
        let gpath = p(path, "grpc_service");
        let Some(cluster) = get(g, "envoy_grpc")
            .and_then(|e| s(e, "cluster_name"))
            .filter(|c| !c.is_empty())
        else {
            errors.push(FieldError::new(
                p(&gpath, "envoy_grpc.cluster_name"),
                "required",
            ));
            return None;
        };
        let authority = get(g, "envoy_grpc")
            .and_then(|e| s(e, "authority"))
            .filter(|a| !a.is_empty())
            .unwrap_or(cluster);
        // Envoy's default for the check call: 200 ms.
        let timeout = dur(g, "timeout").unwrap_or(Duration::from_millis(200));
        let service = GrpcService {
            cluster: cluster.to_string(),
            authority: authority.to_string(),
        };
        (
            AuthzService::Grpc(service),
            Some(timeout).filter(|t| !t.is_zero()),
        )
    } else {
        errors.push(FieldError::new(
            path,
            "one of grpc_service and http_service is required",
        ));
        return None;
    };
    let status_on_error = match get(v, "status_on_error").and_then(|st| get(st, "code")) {
        None => StatusCode::FORBIDDEN,
        Some(code) => match http_status(code) {
            Some(c) => c,
            None => {
                errors.push(FieldError::new(
                    p(path, "status_on_error.code"),
                    format!("unknown status {code}"),
                ));
                return None;
            }
        },
    };
    let allowed_headers =
        get(v, "allowed_headers").map(|_| string_list(v, "allowed_headers", path, errors));
    let disallowed_headers = string_list(v, "disallowed_headers", path, errors);
    if errors.len() > before {
        return None;
    }
    let stats = match ExtAuthzStats::new(metrics, hcm_prefix, s(v, "stat_prefix").unwrap_or("")) {
        Ok(stats) => stats,
        Err(e) => {
            errors.push(FieldError::new(path, format!("statistics: {e}")));
            return None;
        }
    };
    Some(ExtAuthz {
        service,
        timeout,
        failure_mode_allow: b(v, "failure_mode_allow"),
        failure_mode_allow_header_add: b(v, "failure_mode_allow_header_add"),
        status_on_error,
        allowed_headers,
        disallowed_headers,
        enabled: runtime_fraction(v, "filter_enabled"),
        stats,
    })
}

/// A route's or virtual host's `ExtAuthzPerRoute`.
fn ext_authz_per_route(v: &Value, _path: &str, _errors: &mut Errors) -> Option<ExtAuthzPerRoute> {
    let mut context_extensions: Vec<(String, String)> = get(v, "check_settings")
        .and_then(|c| get(c, "context_extensions"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    context_extensions.sort();
    Some(ExtAuthzPerRoute {
        disabled: b(v, "disabled"),
        context_extensions,
    })
}

/// A route's or virtual host's `RBACPerRoute`: its `rbac` replaces the filter's rules; without
/// it the filter is off there.
fn rbac_override(v: &Value, path: &str, errors: &mut Errors) -> Option<Arc<RbacRules>> {
    per_filter(v, RBAC_PER_ROUTE_TYPE, path, errors, |c, path, errors| {
        Some(match get(c, "rbac") {
            Some(r) => rbac_rules(r, &p(path, "rbac"), errors),
            None => RbacRules::default(),
        })
    })
}

/// The `rules` (or `matcher`) and `shadow_rules` (or `shadow_matcher`) of an RBAC filter
/// configuration.
fn rbac_rules(v: &Value, path: &str, errors: &mut Errors) -> RbacRules {
    let engine =
        |rules: &str, matcher: &str, errors: &mut Errors| match (get(v, rules), get(v, matcher)) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    p(path, matcher),
                    format!("only one of {rules} and {matcher} may be set"),
                ));
                None
            }
            (Some(r), None) => rbac_engine(r, &p(path, rules), errors),
            (None, Some(m)) => rbac_matcher(m, &p(path, matcher), errors),
            (None, None) => None,
        };
    RbacRules {
        rules: engine("rules", "matcher", errors),
        shadow: engine("shadow_rules", "shadow_matcher", errors),
    }
}

/// `envoy.config.rbac.v3.RBAC`. Policies are kept in name order.
fn rbac_engine(v: &Value, path: &str, errors: &mut Errors) -> Option<Engine> {
    let action = match s(v, "action").unwrap_or("ALLOW") {
        "ALLOW" => RbacAction::Allow,
        "DENY" => RbacAction::Deny,
        "LOG" => RbacAction::Log,
        other => {
            errors.push(FieldError::new(
                p(path, "action"),
                format!("action `{other}` not supported"),
            ));
            return None;
        }
    };
    let mut policies = Vec::new();
    if let Some(map) = get(v, "policies").and_then(Value::as_object) {
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for name in names {
            let pv = &map[name];
            let ppath = format!("{path}.policies[\"{name}\"]");
            let permissions: Vec<Permission> = arr(pv, "permissions")
                .iter()
                .enumerate()
                .filter_map(|(i, x)| {
                    rbac_permission(x, &format!("{ppath}.permissions[{i}]"), errors)
                })
                .collect();
            let principals: Vec<Principal> = arr(pv, "principals")
                .iter()
                .enumerate()
                .filter_map(|(i, x)| rbac_principal(x, &format!("{ppath}.principals[{i}]"), errors))
                .collect();
            for (field, empty) in [
                ("permissions", permissions.is_empty()),
                ("principals", principals.is_empty()),
            ] {
                if empty {
                    errors.push(FieldError::new(
                        p(&ppath, field),
                        "at least one is required",
                    ));
                }
            }
            policies.push(RbacPolicy {
                name: name.clone(),
                permissions,
                principals,
            });
        }
    }
    Some(Engine::Policies { action, policies })
}

const RBAC_ACTION_TYPE: &str = "envoy.config.rbac.v3.Action";
const HEADER_INPUT_TYPE: &str = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput";
const NETWORK_INPUTS: &str = "envoy.extensions.matching.common_inputs.network.v3.";

/// The action of an RBAC matcher's `on_match` or `on_no_match`.
fn rbac_matcher_action(on_match: &Value, path: &str, errors: &mut Errors) -> Option<RbacAction> {
    let Some(a) = get(on_match, "action") else {
        errors.push(FieldError::new(
            path,
            "only an action is supported here (no nested matcher)",
        ));
        return None;
    };
    let config = get(a, "typed_config");
    if config.map(type_name) != Some(RBAC_ACTION_TYPE) {
        errors.push(FieldError::new(
            p(path, "action.typed_config"),
            format!("an `{RBAC_ACTION_TYPE}` is required"),
        ));
        return None;
    }
    match config.and_then(|c| s(c, "action")).unwrap_or("ALLOW") {
        "ALLOW" => Some(RbacAction::Allow),
        "DENY" => Some(RbacAction::Deny),
        "LOG" => Some(RbacAction::Log),
        other => {
            errors.push(FieldError::new(
                p(path, "action.typed_config.action"),
                format!("action `{other}` not supported"),
            ));
            None
        }
    }
}

/// The `matcher` form of RBAC rules (`xds.type.matcher.v3.Matcher` with a `matcher_list`).
fn rbac_matcher(v: &Value, path: &str, errors: &mut Errors) -> Option<Engine> {
    let Some(list) = get(v, "matcher_list") else {
        errors.push(FieldError::new(
            p(path, "matcher_list"),
            "required (matcher_tree is not supported)",
        ));
        return None;
    };
    let mut matchers = Vec::new();
    for (i, m) in arr(list, "matchers").iter().enumerate() {
        let mpath = format!("{path}.matcher_list.matchers[{i}]");
        let (Some(pv), Some(on_match)) = (get(m, "predicate"), get(m, "on_match")) else {
            errors.push(FieldError::new(
                mpath,
                "predicate and on_match are required",
            ));
            continue;
        };
        let pred = rbac_predicate(pv, &p(&mpath, "predicate"), errors);
        let act = rbac_matcher_action(on_match, &p(&mpath, "on_match"), errors);
        if let (Some(pred), Some(act)) = (pred, act) {
            matchers.push((pred, act));
        }
    }
    let on_no_match = match get(v, "on_no_match") {
        Some(o) => Some(rbac_matcher_action(o, &p(path, "on_no_match"), errors)?),
        None => None,
    };
    Some(Engine::Matcher(MatcherList {
        matchers,
        on_no_match,
    }))
}

/// The input of a matcher's `single_predicate`.
fn rbac_match_input(single: &Value, path: &str, errors: &mut Errors) -> Option<MatchInput> {
    let input = get(single, "input").and_then(|i| get(i, "typed_config"));
    let ty = input.map(type_name).unwrap_or("");
    if ty == HEADER_INPUT_TYPE {
        let name = input.and_then(|i| s(i, "header_name")).unwrap_or("");
        return match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(MatchInput::Header(h)),
            Err(_) => {
                errors.push(FieldError::new(
                    p(path, "input.typed_config.header_name"),
                    format!("invalid header name `{name}`"),
                ));
                None
            }
        };
    }
    let input = match ty.strip_prefix(NETWORK_INPUTS) {
        Some("SourceIPInput") => MatchInput::SourceIp,
        Some("DirectSourceIPInput") => MatchInput::DirectSourceIp,
        Some("SourcePortInput") => MatchInput::SourcePort,
        Some("DestinationIPInput") => MatchInput::DestinationIp,
        Some("DestinationPortInput") => MatchInput::DestinationPort,
        Some("ServerNameInput") => MatchInput::ServerName,
        _ => {
            errors.push(FieldError::new(
                p(path, "input.typed_config"),
                format!("input `{ty}` not supported"),
            ));
            return None;
        }
    };
    Some(input)
}

/// `xds.type.matcher.v3.Matcher.MatcherList.Predicate`.
fn rbac_predicate(v: &Value, path: &str, errors: &mut Errors) -> Option<Predicate> {
    let list = |k: &str, errors: &mut Errors| -> Option<Vec<Predicate>> {
        let l = get(v, k)?;
        Some(
            arr(l, "predicate")
                .iter()
                .enumerate()
                .filter_map(|(i, x)| {
                    rbac_predicate(x, &format!("{path}.{k}.predicate[{i}]"), errors)
                })
                .collect(),
        )
    };
    if let Some(single) = get(v, "single_predicate") {
        let spath = p(path, "single_predicate");
        let input = rbac_match_input(single, &spath, errors)?;
        let Some(m) = get(single, "value_match") else {
            errors.push(FieldError::new(
                p(&spath, "value_match"),
                "required (custom_match is not supported)",
            ));
            return None;
        };
        string_matcher(m, &p(&spath, "value_match"), errors).map(|m| Predicate::Single(input, m))
    } else if let Some(any) = list("or_matcher", errors) {
        Some(Predicate::Or(any))
    } else if let Some(all) = list("and_matcher", errors) {
        Some(Predicate::And(all))
    } else if let Some(n) = get(v, "not_matcher") {
        rbac_predicate(n, &p(path, "not_matcher"), errors).map(|p| Predicate::Not(Box::new(p)))
    } else {
        errors.push(FieldError::new(path, "a predicate is required"));
        None
    }
}

/// `envoy.config.core.v3.CidrRange`.
fn cidr(v: &Value, path: &str, errors: &mut Errors) -> Option<Cidr> {
    let text = s(v, "address_prefix").unwrap_or("");
    let Ok(addr) = text.parse::<std::net::IpAddr>() else {
        errors.push(FieldError::new(
            p(path, "address_prefix"),
            format!("`{text}` is not an IP address"),
        ));
        return None;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = u(v, "prefix_len").unwrap_or(0);
    if len > max {
        errors.push(FieldError::new(
            p(path, "prefix_len"),
            format!("must be at most {max}"),
        ));
        return None;
    }
    Some(Cidr {
        addr,
        prefix_len: len as u8,
    })
}

/// The string matcher of a `PathMatcher` (`url_path`).
fn path_matcher(v: &Value, path: &str, errors: &mut Errors) -> Option<StringMatcher> {
    match get(v, "path") {
        Some(m) => string_matcher(m, &p(path, "path"), errors),
        None => {
            errors.push(FieldError::new(p(path, "path"), "required"));
            None
        }
    }
}

/// `envoy.config.rbac.v3.Permission`.
fn rbac_permission(v: &Value, path: &str, errors: &mut Errors) -> Option<Permission> {
    let set = |k: &str, errors: &mut Errors| -> Option<Vec<Permission>> {
        let set = get(v, k)?;
        Some(
            arr(set, "rules")
                .iter()
                .enumerate()
                .filter_map(|(i, x)| rbac_permission(x, &format!("{path}.{k}.rules[{i}]"), errors))
                .collect(),
        )
    };
    if let Some(all) = set("and_rules", errors) {
        Some(Permission::And(all))
    } else if let Some(any) = set("or_rules", errors) {
        Some(Permission::Or(any))
    } else if b(v, "any") {
        Some(Permission::Any)
    } else if let Some(h) = get(v, "header") {
        header_matcher(h, &p(path, "header"), errors).map(Permission::Header)
    } else if let Some(m) = get(v, "url_path") {
        path_matcher(m, &p(path, "url_path"), errors).map(Permission::UrlPath)
    } else if let Some(c) = get(v, "destination_ip") {
        cidr(c, &p(path, "destination_ip"), errors).map(Permission::DestinationIp)
    } else if let Some(port) = u(v, "destination_port") {
        match u16::try_from(port) {
            Ok(port) => Some(Permission::DestinationPort(port)),
            Err(_) => {
                errors.push(FieldError::new(
                    p(path, "destination_port"),
                    "must be at most 65535",
                ));
                None
            }
        }
    } else if let Some(r) = get(v, "destination_port_range") {
        let bound = |k| u(r, k).and_then(|x| u32::try_from(x).ok()).unwrap_or(0);
        Some(Permission::DestinationPortRange(
            bound("start"),
            bound("end"),
        ))
    } else if let Some(n) = get(v, "not_rule") {
        rbac_permission(n, &p(path, "not_rule"), errors).map(|p| Permission::Not(Box::new(p)))
    } else if let Some(m) = get(v, "requested_server_name") {
        string_matcher(m, &p(path, "requested_server_name"), errors)
            .map(Permission::RequestedServerName)
    } else {
        errors.push(FieldError::new(path, "a permission rule is required"));
        None
    }
}

/// `envoy.config.rbac.v3.Principal`.
fn rbac_principal(v: &Value, path: &str, errors: &mut Errors) -> Option<Principal> {
    let set = |k: &str, errors: &mut Errors| -> Option<Vec<Principal>> {
        let set = get(v, k)?;
        Some(
            arr(set, "ids")
                .iter()
                .enumerate()
                .filter_map(|(i, x)| rbac_principal(x, &format!("{path}.{k}.ids[{i}]"), errors))
                .collect(),
        )
    };
    if let Some(all) = set("and_ids", errors) {
        Some(Principal::And(all))
    } else if let Some(any) = set("or_ids", errors) {
        Some(Principal::Or(any))
    } else if b(v, "any") {
        Some(Principal::Any)
    } else if let Some(a) = get(v, "authenticated") {
        match get(a, "principal_name") {
            Some(m) => string_matcher(m, &p(path, "authenticated.principal_name"), errors)
                .map(|m| Principal::Authenticated(Some(m))),
            None => Some(Principal::Authenticated(None)),
        }
    } else if let Some(c) = get(v, "source_ip") {
        cidr(c, &p(path, "source_ip"), errors).map(Principal::DirectRemoteIp)
    } else if let Some(c) = get(v, "direct_remote_ip") {
        cidr(c, &p(path, "direct_remote_ip"), errors).map(Principal::DirectRemoteIp)
    } else if let Some(c) = get(v, "remote_ip") {
        cidr(c, &p(path, "remote_ip"), errors).map(Principal::RemoteIp)
    } else if let Some(h) = get(v, "header") {
        header_matcher(h, &p(path, "header"), errors).map(Principal::Header)
    } else if let Some(m) = get(v, "url_path") {
        path_matcher(m, &p(path, "url_path"), errors).map(Principal::UrlPath)
    } else if let Some(n) = get(v, "not_id") {
        rbac_principal(n, &p(path, "not_id"), errors).map(|p| Principal::Not(Box::new(p)))
    } else {
        errors.push(FieldError::new(path, "a principal rule is required"));
        None
    }
}

/// The `CompressorPerRoute` entries of a route or virtual host, by filter name.
fn compressor_overrides(v: &Value, path: &str, errors: &mut Errors) -> PerRouteCompressors {
    let Some(map) = get(v, "typed_per_filter_config").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, c) in map {
        if type_name(c) != COMPRESSOR_PER_ROUTE_TYPE {
            continue;
        }
        let cpath = format!("{path}.typed_per_filter_config[\"{name}\"]");
        let mut per = CompressorPerRoute {
            disabled: b(c, "disabled"),
            ..Default::default()
        };
        if let Some(o) = get(c, "overrides") {
            if let Some(r) = get(o, "response_direction_config") {
                per.force_enabled = true;
                per.remove_accept_encoding =
                    get(r, "remove_accept_encoding_header").and_then(Value::as_bool);
            }
            if let Some(l) = get(o, "compressor_library") {
                per.library =
                    compressor_library(l, &p(&cpath, "overrides.compressor_library"), errors)
                        .map(|(_, l)| l);
            }
        }
        out.push((name.clone(), Arc::new(per)));
    }
    out
}

/// A `compressor_library` (`TypedExtensionConfig`): its name and the library.
fn compressor_library(v: &Value, path: &str, errors: &mut Errors) -> Option<(String, Library)> {
    let name = s(v, "name").unwrap_or("").to_string();
    let Some(t) = get(v, "typed_config") else {
        errors.push(FieldError::new(p(path, "typed_config"), "required"));
        return None;
    };
    let tpath = p(path, "typed_config");
    let in_range =
        |k: &str, default: u64, range: std::ops::RangeInclusive<u64>, errors: &mut Errors| {
            let n = u(t, k).unwrap_or(default);
            if range.contains(&n) {
                Some(n)
            } else {
                errors.push(FieldError::new(
                    p(&tpath, k),
                    format!("{n} is out of range {}..={}", range.start(), range.end()),
                ));
                None
            }
        };
    match type_name(t) {
        GZIP_TYPE => {
            let level = match get(t, "compression_level") {
                None => 6,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(0) => 6,
                    Some(l @ 1..=9) => l as u32,
                    _ => {
                        errors.push(FieldError::new(
                            p(&tpath, "compression_level"),
                            "not a zlib level",
                        ));
                        return None;
                    }
                },
                Some(v) => match v.as_str().unwrap_or("") {
                    "DEFAULT_COMPRESSION" => 6,
                    "BEST_SPEED" => 1,
                    "BEST_COMPRESSION" => 9,
                    other => match other
                        .strip_prefix("COMPRESSION_LEVEL_")
                        .and_then(|l| l.parse::<u32>().ok())
                    {
                        Some(l @ 1..=9) => l,
                        _ => {
                            errors.push(FieldError::new(
                                p(&tpath, "compression_level"),
                                format!("`{other}` is not a zlib level"),
                            ));
                            return None;
                        }
                    },
                },
            };
            let window_bits = in_range("window_bits", 12, 9..=15, errors)? as u8;
            Some((name, Library::Gzip { level, window_bits }))
        }
        BROTLI_TYPE => {
            let quality = in_range("quality", 3, 0..=11, errors)? as u32;
            let window_bits = in_range("window_bits", 18, 10..=24, errors)? as u32;
            Some((
                name,
                Library::Brotli {
                    quality,
                    window_bits,
                },
            ))
        }
        ZSTD_TYPE => {
            let level = match u(t, "compression_level") {
                None | Some(0) => 3,
                Some(_) => in_range("compression_level", 3, 1..=22, errors)? as i32,
            };
            Some((
                name,
                Library::Zstd {
                    level,
                    checksum: b(t, "enable_checksum"),
                },
            ))
        }
        other => {
            errors.push(FieldError::new(
                tpath,
                format!("compressor library `{other}` not supported (gzip, brotli and zstd are)"),
            ));
            None
        }
    }
}

/// A decompressor filter (`Decompressor`).
fn decompressor_filter(v: &Value, path: &str, errors: &mut Errors) -> Option<DecompressorFilter> {
    let Some(lib) = get(v, "decompressor_library") else {
        errors.push(FieldError::new(p(path, "decompressor_library"), "required"));
        return None;
    };
    let lpath = p(path, "decompressor_library");
    let name = s(lib, "name").unwrap_or("").to_string();
    let empty = Value::Object(Default::default());
    let config = get(lib, "typed_config").unwrap_or(&empty);
    let library = match type_name(config) {
        GZIP_DECOMPRESSOR_TYPE => {
            let window_bits = u(config, "window_bits").unwrap_or(15);
            let ratio = u(config, "max_inflate_ratio").unwrap_or(100);
            if !(9..=15).contains(&window_bits) {
                errors.push(FieldError::new(
                    p(&lpath, "typed_config.window_bits"),
                    "must be 9..15",
                ));
                return None;
            }
            if !(1..=1032).contains(&ratio) {
                errors.push(FieldError::new(
                    p(&lpath, "typed_config.max_inflate_ratio"),
                    "must be 1..1032",
                ));
                return None;
            }
            DecoderLibrary::Gzip {
                window_bits: window_bits as u8,
                max_inflate_ratio: ratio,
            }
        }
        BROTLI_DECOMPRESSOR_TYPE => DecoderLibrary::Brotli,
        ZSTD_DECOMPRESSOR_TYPE => DecoderLibrary::Zstd,
        other => {
            errors.push(FieldError::new(
                p(&lpath, "typed_config"),
                format!("decompressor library `{other}` not supported"),
            ));
            return None;
        }
    };
    let direction = |k: &str| {
        let common = get(v, k).and_then(|d| get(d, "common_config"));
        let enabled = common
            .and_then(|c| get(c, "enabled"))
            .and_then(|f| get(f, "default_value"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        Direction::new(
            enabled,
            common.is_some_and(|c| b(c, "ignore_no_transform_header")),
        )
    };
    let advertise = get(v, "request_direction_config")
        .and_then(|r| get(r, "advertise_accept_encoding"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    match DecompressorFilter::new(
        name,
        library,
        direction("request_direction_config"),
        direction("response_direction_config"),
        advertise,
    ) {
        Ok(f) => Some(f),
        Err(_) => {
            errors.push(FieldError::new(
                p(&lpath, "name"),
                "must make a valid header name (x-envoy-decompressor-NAME-…)",
            ));
            None
        }
    }
}

/// A compressor filter (`Compressor`) named `name` in its chain.
fn compressor_filter(
    name: &str,
    v: &Value,
    path: &str,
    errors: &mut Errors,
) -> Option<CompressorFilter> {
    let Some(lib) = get(v, "compressor_library") else {
        errors.push(FieldError::new(p(path, "compressor_library"), "required"));
        return None;
    };
    let (library_name, library) = compressor_library(lib, &p(path, "compressor_library"), errors)?;
    let flag = |x: Option<&Value>| {
        x.and_then(|f| f.get("default_value"))
            .and_then(Value::as_bool)
            .unwrap_or(true)
    };
    if let Some(r) = get(v, "request_direction_config") {
        if flag(get(r, "common_config").and_then(|c| c.get("enabled"))) {
            errors.push(FieldError::new(
                p(path, "request_direction_config"),
                "request compression is not supported (set common_config.enabled.default_value: \
                 false, or leave the field out)",
            ));
            return None;
        }
    }
    let types = |list: &[Value]| -> Vec<String> {
        if list.is_empty() {
            DEFAULT_CONTENT_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect()
        } else {
            list.iter()
                .filter_map(Value::as_str)
                .map(|t| t.trim().to_ascii_lowercase())
                .collect()
        }
    };
    let filter = match get(v, "response_direction_config") {
        Some(r) => {
            let empty = Value::Object(Default::default());
            let common = get(r, "common_config").unwrap_or(&empty);
            let mut codes = Vec::new();
            for (i, c) in arr(r, "uncompressible_response_codes").iter().enumerate() {
                match c.as_u64().and_then(|c| u16::try_from(c).ok()) {
                    Some(c) if (200..600).contains(&c) => codes.push(c),
                    _ => errors.push(FieldError::new(
                        format!(
                            "{path}.response_direction_config.uncompressible_response_codes[{i}]"
                        ),
                        "not an HTTP status code",
                    )),
                }
            }
            CompressorFilter::new(
                name.to_string(),
                library_name,
                library,
                flag(get(common, "enabled")),
                u(common, "min_content_length").unwrap_or(30),
                types(arr(common, "content_type")),
                b(r, "disable_on_etag_header"),
                b(r, "weaken_etag_on_compress"),
                b(r, "remove_accept_encoding_header"),
                codes,
                true,
            )
        }
        None => CompressorFilter::new(
            name.to_string(),
            library_name,
            library,
            flag(get(v, "runtime_enabled")),
            u(v, "content_length").filter(|n| *n > 0).unwrap_or(30),
            types(arr(v, "content_type")),
            b(v, "disable_on_etag_header"),
            false,
            b(v, "remove_accept_encoding_header"),
            Vec::new(),
            false,
        ),
    };
    Some(filter)
}

/// An `envoy.type.v3.HttpStatus` code: its number, or its enum name (`TooManyRequests`), which
/// is the reason phrase without spaces.
fn http_status(code: &Value) -> Option<StatusCode> {
    match code {
        Value::Number(n) => n
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .and_then(|c| StatusCode::from_u16(c).ok()),
        Value::String(name) => (100u16..600)
            .filter_map(|c| StatusCode::from_u16(c).ok())
            .find(|c| {
                c.canonical_reason().is_some_and(|r| {
                    let squashed: String =
                        r.chars().filter(|ch| ch.is_ascii_alphanumeric()).collect();
                    squashed.eq_ignore_ascii_case(name)
                })
            }),
        _ => None,
    }
}

/// A `LocalRateLimit` (the filter's own or a per-route one).
fn local_ratelimit(v: &Value, path: &str, errors: &mut Errors) -> Option<LocalRateLimit> {
    if b(v, "local_rate_limit_per_downstream_connection") {
        errors.push(FieldError::unsupported(p(
            path,
            "local_rate_limit_per_downstream_connection",
        )));
        return None;
    }
    let bucket = match get(v, "token_bucket") {
        Some(tb) => {
            let Some(interval) = dur(tb, "fill_interval").filter(|d| !d.is_zero()) else {
                errors.push(FieldError::new(
                    p(path, "token_bucket.fill_interval"),
                    "required, above 0",
                ));
                return None;
            };
            let n = |k: &str, d: u64| u(tb, k).unwrap_or(d).min(u64::from(u32::MAX)) as u32;
            Some(TokenBucket::new(
                n("max_tokens", 0),
                n("tokens_per_fill", 1),
                interval,
            ))
        }
        None => None,
    };
    let status = match get(v, "status").and_then(|st| get(st, "code")) {
        None => StatusCode::TOO_MANY_REQUESTS,
        Some(code) => match http_status(code) {
            // Envoy answers 429 for a status below 400.
            Some(c) if c.as_u16() >= 400 => c,
            Some(_) => StatusCode::TOO_MANY_REQUESTS,
            None => {
                errors.push(FieldError::new(
                    p(path, "status.code"),
                    format!("unknown status {code}"),
                ));
                return None;
            }
        },
    };
    Some(LocalRateLimit {
        stat_prefix: s(v, "stat_prefix").unwrap_or("").to_string(),
        stats: std::sync::OnceLock::new(),
        bucket,
        enabled: runtime_fraction(v, "filter_enabled"),
        enforced: runtime_fraction(v, "filter_enforced"),
        status,
        response_headers: header_ops(v, "response_headers_to_add", "", path, errors),
        request_headers_when_not_enforced: header_ops(
            v,
            "request_headers_to_add_when_not_enforced",
            "",
            path,
            errors,
        ),
    })
}

fn cors_override(v: &Value, path: &str, errors: &mut Errors) -> Option<Arc<CorsPolicy>> {
    per_filter(v, CORS_POLICY_TYPE, path, errors, cors_policy)
}

/// A `CorsPolicy`.
fn cors_policy(v: &Value, path: &str, errors: &mut Errors) -> Option<CorsPolicy> {
    let before = errors.len();
    let text = |k: &str, errors: &mut Errors| {
        s(v, k)
            .filter(|t| !t.is_empty())
            .and_then(|t| header_value(t, &p(path, k), errors))
    };
    let allow_origins = arr(v, "allow_origin_string_match")
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            string_matcher(m, &format!("{path}.allow_origin_string_match[{i}]"), errors)
        })
        .collect();
    let policy = CorsPolicy {
        enabled: runtime_fraction(v, "filter_enabled"),
        allow_origins,
        allow_methods: text("allow_methods", errors),
        allow_headers: text("allow_headers", errors),
        expose_headers: text("expose_headers", errors),
        max_age: text("max_age", errors),
        allow_credentials: v.get("allow_credentials").and_then(Value::as_bool),
        allow_private_network_access: v
            .get("allow_private_network_access")
            .and_then(Value::as_bool),
        forward_not_matching_preflights: v
            .get("forward_not_matching_preflights")
            .and_then(Value::as_bool),
    };
    (errors.len() == before).then_some(policy)
}

fn route(v: &Value, path: &str, res: &ClusterResolver<'_>, errors: &mut Errors) -> Option<Route> {
    let before = errors.len();
    let matcher = route_match(
        get(v, "match").unwrap_or(&Value::Null),
        &p(path, "match"),
        errors,
    );
    let action = if let Some(r) = get(v, "route") {
        forward_action(r, &p(path, "route"), res, errors).map(|a| RouteAction::Forward(Box::new(a)))
    } else if let Some(r) = get(v, "redirect") {
        redirect_action(r, &p(path, "redirect"), errors).map(|a| RouteAction::Redirect(Box::new(a)))
    } else if let Some(r) = get(v, "direct_response") {
        direct_response(r, &p(path, "direct_response"), errors).map(RouteAction::Direct)
    } else {
        errors.push(FieldError::new(
            path,
            "one of route, redirect, direct_response is required",
        ));
        None
    };
    let request_headers = request_ops(v, path, errors);
    let response_headers = response_ops(v, path, errors);
    let fault = fault_override(v, path, errors);
    let local_ratelimit = local_ratelimit_override(v, path, errors);
    let cors = cors_override(v, path, errors);
    let compressors = compressor_overrides(v, path, errors);
    let rbac = rbac_override(v, path, errors);
    let csrf = per_filter(v, CSRF_TYPE, path, errors, csrf_policy);
    let ext_authz = per_filter(
        v,
        EXT_AUTHZ_PER_ROUTE_TYPE,
        path,
        errors,
        ext_authz_per_route,
    );
    if errors.len() > before {
        return None;
    }
    Some(Route {
        name: s(v, "name").unwrap_or("").to_string(),
        matcher: matcher?,
        action: action?,
        request_headers,
        response_headers,
        fault,
        local_ratelimit,
        cors,
        compressors,
        rbac,
        csrf,
        ext_authz,
    })
}

/// Compile a `RouteConfiguration`.
pub fn route_table(v: &Value, path: &str, res: &ClusterResolver<'_>) -> Result<RouteTable, Errors> {
    // `validate_clusters: false` (the default for RDS) lets routes name clusters that do not
    // exist yet: they answer 503 `NC` until the cluster arrives.
    let validating = ClusterResolver {
        clusters: res.clusters,
        validate: res.validate
            && v.get("validate_clusters")
                .and_then(Value::as_bool)
                .unwrap_or(true),
    };
    let res = &validating;
    let mut errors = Vec::new();
    let mut vhosts = Vec::new();
    let mut domains: Vec<(String, usize)> = Vec::new();
    for (i, vh) in arr(v, "virtual_hosts").iter().enumerate() {
        let vpath = format!("{}[{i}]", p(path, "virtual_hosts"));
        let mut routes = Vec::new();
        for (j, r) in arr(vh, "routes").iter().enumerate() {
            routes.extend(route(r, &format!("{vpath}.routes[{j}]"), res, &mut errors));
        }
        for d in arr(vh, "domains") {
            domains.push((d.as_str().unwrap_or("").to_string(), i));
        }
        if arr(vh, "domains").is_empty() {
            errors.push(FieldError::new(
                p(&vpath, "domains"),
                "at least one domain is required",
            ));
        }
        vhosts.push(VirtualHost {
            name: s(vh, "name").unwrap_or("").to_string(),
            routes,
            request_headers: request_ops(vh, &vpath, &mut errors),
            response_headers: response_ops(vh, &vpath, &mut errors),
            fault: fault_override(vh, &vpath, &mut errors),
            local_ratelimit: local_ratelimit_override(vh, &vpath, &mut errors),
            cors: cors_override(vh, &vpath, &mut errors),
            compressors: compressor_overrides(vh, &vpath, &mut errors),
            rbac: rbac_override(vh, &vpath, &mut errors),
            csrf: per_filter(vh, CSRF_TYPE, &vpath, &mut errors, csrf_policy),
            ext_authz: per_filter(
                vh,
                EXT_AUTHZ_PER_ROUTE_TYPE,
                &vpath,
                &mut errors,
                ext_authz_per_route,
            ),
            require_tls: match s(vh, "require_tls") {
                Some("ALL") => RequireTls::All,
                Some("EXTERNAL_ONLY") => RequireTls::ExternalOnly,
                _ => RequireTls::None,
            },
        });
    }
    let selector = match VhostSelector::new(domains.iter().map(|(d, i)| (d.as_str(), *i))) {
        Ok(s) => s,
        Err(e) => {
            errors.push(FieldError::new(p(path, "virtual_hosts"), e.to_string()));
            VhostSelector::default()
        }
    };
    let request_headers = request_ops(v, path, &mut errors);
    let response_headers = response_ops(v, path, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RouteTable {
        name: s(v, "name").unwrap_or("").to_string(),
        ignore_port_in_host_matching: b(v, "ignore_port_in_host_matching"),
        requires_tls: vhosts.iter().any(|v| v.require_tls != RequireTls::None),
        vhosts,
        selector,
        request_headers,
        response_headers,
    })
}

// ---- clusters -------------------------------------------------------------------------------

/// Identity values used in Istio metric labels.
#[derive(Debug, Clone)]
pub struct Identity {
    pub source_workload: String,
    pub source_app: String,
    /// This proxy's workload namespace (`node.metadata.NAMESPACE`, or the node id's).
    pub namespace: String,
    /// This proxy's cluster (`--service-cluster`, else `node.cluster`; may be empty).
    pub local_cluster: String,
}

impl Identity {
    /// Istio metric handles for requests sent to `cluster`, whose destination is (`service`,
    /// `name`, `namespace`, `version`). Requests to an `inbound|…` cluster (a sidecar handing
    /// traffic to its own workload) are reported by the destination, with this proxy's workload
    /// as `destination_workload`, as Istio's inbound sidecars report them; everything else is
    /// reported by the source.
    pub fn istio_stats(
        &self,
        metrics: &Metrics,
        cluster: &str,
        destination: [String; 4],
    ) -> IstioStats {
        let inbound = cluster.starts_with("inbound|");
        let mut labels = if inbound {
            vec![
                "destination".to_string(),
                "unknown".to_string(),
                "unknown".to_string(),
                self.source_workload.clone(),
                self.namespace.clone(),
            ]
        } else {
            vec![
                "source".to_string(),
                self.source_workload.clone(),
                self.source_app.clone(),
                "unknown".to_string(),
                "unknown".to_string(),
            ]
        };
        labels.extend(destination);
        IstioStats::new(metrics, labels)
    }

    /// Derive from the bootstrap's `node` (Istio node metadata when present).
    pub fn from_node(node: &Value, cli_cluster: Option<&str>) -> Self {
        let meta = get(node, "metadata");
        let workload = meta
            .and_then(|m| s(m, "WORKLOAD_NAME"))
            .or(cli_cluster)
            .or_else(|| s(node, "cluster"))
            .unwrap_or("unknown");
        let app = meta
            .and_then(|m| get(m, "LABELS"))
            .and_then(|l| s(l, "app"))
            .or(cli_cluster)
            .or_else(|| s(node, "cluster"))
            .unwrap_or("unknown");
        // `router~IP~NAME.NAMESPACE~DOMAIN`: the namespace is the third part's suffix.
        let namespace = meta
            .and_then(|m| s(m, "NAMESPACE"))
            .map(str::to_string)
            .or_else(|| {
                s(node, "id")
                    .and_then(|id| id.split('~').nth(2))
                    .and_then(|p| p.split_once('.'))
                    .map(|(_, ns)| ns.to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Identity {
            source_workload: workload.to_string(),
            source_app: app.to_string(),
            namespace,
            local_cluster: cli_cluster
                .or_else(|| s(node, "cluster"))
                .unwrap_or("")
                .to_string(),
        }
    }
}

/// Istio destination labels from an `outbound|PORT|SUBSET|FQDN` cluster name or `istio` metadata.
pub fn istio_destination(name: &str, metadata: Option<&Value>) -> (String, String, String, String) {
    let mut service = name.to_string();
    let mut version = "unknown".to_string();
    let parts: Vec<&str> = name.split('|').collect();
    if parts.len() == 4 && (parts[0] == "outbound" || parts[0] == "inbound") {
        service = parts[3].to_string();
        if !parts[2].is_empty() {
            version = parts[2].to_string();
        }
    }
    if let Some(istio) = metadata
        .and_then(|m| get(m, "filter_metadata"))
        .and_then(|f| get(f, "istio"))
    {
        if let Some(host) = arr(istio, "services")
            .first()
            .and_then(|svc| s(svc, "host"))
        {
            service = host.to_string();
        }
        if let Some(subset) = s(istio, "subset") {
            version = subset.to_string();
        }
    }
    let labels: Vec<&str> = service.split('.').collect();
    let short = labels.first().copied().unwrap_or("").to_string();
    let namespace = if labels.len() >= 3 && service.ends_with(".svc.cluster.local") {
        labels[1].to_string()
    } else {
        "unknown".to_string()
    };
    (service, short, namespace, version)
}

fn cluster(
    v: &Value,
    path: &str,
    metrics: &Metrics,
    identity: &Identity,
    previous: Option<&HashMap<String, Arc<Cluster>>>,
    errors: &mut Errors,
) -> Option<Arc<Cluster>> {
    let name = s(v, "name").unwrap_or("").to_string();
    if name.is_empty() {
        errors.push(FieldError::new(p(path, "name"), "required"));
        return None;
    }
    let fingerprint = serde_json::to_vec(v).unwrap_or_default();
    if let Some(prev) = previous.and_then(|m| m.get(&name)) {
        if prev.fingerprint == fingerprint {
            return Some(prev.clone());
        }
    }
    let family = match s(v, "dns_lookup_family") {
        Some("V4_ONLY") => DnsFamily::V4Only,
        Some("V6_ONLY") => DnsFamily::V6Only,
        Some("V4_PREFERRED") => DnsFamily::V4Preferred,
        Some("ALL") => DnsFamily::All,
        _ => DnsFamily::Auto,
    };
    if s(v, "type") == Some("EDS") {
        errors.push(FieldError::new(
            p(path, "type"),
            "EDS needs dynamic_resources.ads_config (endpoints come over ADS)",
        ));
        return None;
    }
    let refresh = dur(v, "dns_refresh_rate").unwrap_or(Duration::from_secs(5));
    let discovery = match s(v, "type").unwrap_or("STATIC") {
        "STRICT_DNS" => Discovery::Dns {
            logical: false,
            refresh,
            family,
        },
        "LOGICAL_DNS" => Discovery::Dns {
            logical: true,
            refresh,
            family,
        },
        _ => Discovery::Static,
    };
    let lb = match s(v, "lb_policy") {
        Some("LEAST_REQUEST") => LbPolicy::LeastRequest,
        Some("RANDOM") => LbPolicy::Random,
        Some("RING_HASH" | "MAGLEV") => LbPolicy::ConsistentHash,
        _ => LbPolicy::RoundRobin,
    };
    let mut specs = Vec::new();
    if let Some(la) = get(v, "load_assignment") {
        for (i, loc) in arr(la, "endpoints").iter().enumerate() {
            let lpath = format!("{path}.load_assignment.endpoints[{i}]");
            let locality_weight = u(loc, "load_balancing_weight").unwrap_or(1).max(1);
            let priority = u(loc, "priority").unwrap_or(0) as u32;
            for (j, ep) in arr(loc, "lb_endpoints").iter().enumerate() {
                let epath = format!("{lpath}.lb_endpoints[{j}]");
                let Some(addr) = get(ep, "endpoint").and_then(|e| get(e, "address")) else {
                    errors.push(FieldError::new(p(&epath, "endpoint.address"), "required"));
                    continue;
                };
                let Some((host, port)) =
                    socket_address(addr, &p(&epath, "endpoint.address"), errors)
                else {
                    continue;
                };
                if discovery == Discovery::Static && host.parse::<std::net::IpAddr>().is_err() {
                    errors.push(FieldError::new(
                        p(&epath, "endpoint.address.socket_address.address"),
                        format!(
                            "`{host}` is not an IP address (STATIC clusters need IP addresses)"
                        ),
                    ));
                    continue;
                }
                let weight = u(ep, "load_balancing_weight").unwrap_or(1).max(1);
                let healthy = !matches!(
                    s(ep, "health_status"),
                    Some("UNHEALTHY" | "DRAINING" | "TIMEOUT")
                );
                let endpoint = get(ep, "endpoint");
                let hc = endpoint.and_then(|e| get(e, "health_check_config"));
                let health_check = HealthCheckTarget {
                    port: hc
                        .and_then(|c| u(c, "port_value"))
                        .filter(|p| *p > 0)
                        .map(|p| p.min(u16::MAX as u64) as u16),
                    hostname: hc
                        .and_then(|c| s(c, "hostname"))
                        .or_else(|| endpoint.and_then(|e| s(e, "hostname")))
                        .filter(|h| !h.is_empty())
                        .map(str::to_string),
                    disabled: hc.is_some_and(|c| b(c, "disable_active_health_check")),
                };
                specs.push(EndpointSpec {
                    host,
                    port,
                    weight: weight.min(u32::MAX as u64) as u32,
                    priority,
                    healthy,
                    health_check,
                    locality: i.min(u32::MAX as usize) as u32,
                    locality_weight: locality_weight.min(u32::MAX as u64) as u32,
                });
            }
        }
    }
    let mut protocol = if get(v, "http2_protocol_options").is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    let mut idle_timeout = None;
    if let Some(opts) = get(v, "typed_extension_protocol_options").and_then(Value::as_object) {
        for (key, any) in opts {
            let opath = format!("{path}.typed_extension_protocol_options[\"{key}\"]");
            if s(any, "@type").map(|t| t.rsplit('/').next().unwrap_or(""))
                != Some(UPSTREAM_HTTP_OPTIONS)
            {
                errors.push(FieldError::new(
                    opath,
                    "only envoy.extensions.upstreams.http.v3.HttpProtocolOptions is supported",
                ));
                continue;
            }
            if let Some(explicit) = get(any, "explicit_http_config") {
                if get(explicit, "http2_protocol_options").is_some() {
                    protocol = UpstreamProtocol::Http2;
                }
            }
            if get(any, "use_downstream_protocol_config").is_some() {
                errors.push(FieldError::unsupported(p(
                    &opath,
                    "use_downstream_protocol_config",
                )));
            }
            idle_timeout =
                get(any, "common_http_protocol_options").and_then(|c| dur(c, "idle_timeout"));
        }
    }
    let mut breakers = crate::cluster::Breakers::default();
    if let Some(t) = get(v, "circuit_breakers").and_then(|cb| arr(cb, "thresholds").first()) {
        breakers = Breakers {
            max_connections: u(t, "max_connections").unwrap_or(breakers.max_connections),
            max_pending_requests: u(t, "max_pending_requests")
                .unwrap_or(breakers.max_pending_requests),
            max_requests: u(t, "max_requests").unwrap_or(breakers.max_requests),
            max_retries: u(t, "max_retries").unwrap_or(breakers.max_retries),
        };
    }
    let tls = match get(v, "transport_socket") {
        Some(ts) => match crate::tls::client_config(
            ts,
            &p(path, "transport_socket"),
            protocol == UpstreamProtocol::Http2,
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(e);
                return None;
            }
        },
        None => None,
    };
    let settings = PoolSettings {
        tls,
        budget: ConnectionBudget::new(breakers.max_connections, breakers.max_pending_requests),
        protocol,
        connect_timeout: dur(v, "connect_timeout").unwrap_or(Duration::from_secs(5)),
        max_requests_per_connection: u(v, "max_requests_per_connection").map(|n| n as u32),
        idle_timeout: idle_timeout.or(Some(Duration::from_secs(3600))),
    };
    let (service, short, namespace, version) = istio_destination(&name, get(v, "metadata"));
    let istio = identity.istio_stats(metrics, &name, [service, short, namespace, version]);
    let outlier = get(v, "outlier_detection").map(|o| outlier_config(o, path));
    let health_checks = arr(v, "health_checks");
    if health_checks.len() > 1 {
        errors.push(FieldError::new(
            p(path, "health_checks"),
            "only one health check per cluster is supported (as Envoy)",
        ));
        return None;
    }
    let health_check = match health_checks.first() {
        Some(hc) => Some(HealthChecker::new(
            health_check_config(hc, &format!("{path}.health_checks[0]"), errors)?,
            HealthCheckStats::new(metrics, &name),
        )),
        None => None,
    };
    // A `Percent` of 0 is `{}` in canonical JSON: a threshold given without a value is 0.
    let panic_threshold = get(v, "common_lb_config")
        .and_then(|c| get(c, "healthy_panic_threshold"))
        .map_or(50, |t| {
            t.get("value")
                .and_then(Value::as_f64)
                .map_or(0, |v| v.clamp(0.0, 100.0) as u64)
        });
    Some(Cluster::new(
        name.clone(),
        lb,
        discovery,
        specs,
        settings,
        breakers,
        ClusterStats::new(metrics, &name),
        istio,
        fingerprint,
        HealthSettings {
            outlier,
            health_check,
            panic_threshold,
            locality_weighted: get(v, "common_lb_config")
                .is_some_and(|c| get(c, "locality_weighted_lb_config").is_some()),
        },
    ))
}

/// A cluster's `health_checks[0]`.
fn health_check_config(v: &Value, path: &str, errors: &mut Errors) -> Option<HealthCheckConfig> {
    let mut required = |k: &str| {
        let d = dur(v, k);
        if d.is_none() {
            errors.push(FieldError::new(p(path, k), "required"));
        }
        d
    };
    let (timeout, interval) = (required("timeout"), required("interval"));
    let threshold = |k: &str| u(v, k).map(|n| n.min(u64::from(u32::MAX)) as u32);
    let (Some(unhealthy_threshold), Some(healthy_threshold)) = (
        threshold("unhealthy_threshold"),
        threshold("healthy_threshold"),
    ) else {
        errors.push(FieldError::new(
            path.to_string(),
            "unhealthy_threshold and healthy_threshold are required",
        ));
        return None;
    };
    let (timeout, interval) = (timeout?, interval?);
    let probe = if let Some(h) = get(v, "http_health_check") {
        let hpath = p(path, "http_health_check");
        let method = s(h, "method")
            .filter(|m| *m != "METHOD_UNSPECIFIED")
            .unwrap_or("GET")
            .to_string();
        let send = match get(h, "send") {
            Some(pl) => payload(pl, &p(&hpath, "send"), errors)?,
            None => Vec::new(),
        };
        if !send.is_empty() && matches!(method.as_str(), "GET" | "HEAD" | "DELETE" | "TRACE") {
            errors.push(FieldError::new(
                p(&hpath, "send"),
                format!("a health check request with method {method} cannot carry a payload"),
            ));
            return None;
        }
        let mut receive = Vec::new();
        for (i, pl) in arr(h, "receive").iter().enumerate() {
            receive.push(payload(pl, &format!("{hpath}.receive[{i}]"), errors)?);
        }
        let ranges = |k: &str, errors: &mut Errors| -> Option<Vec<(u16, u16)>> {
            let mut out = Vec::new();
            for (i, r) in arr(h, k).iter().enumerate() {
                let (start, end) = (u(r, "start").unwrap_or(0), u(r, "end").unwrap_or(0));
                if start >= end || start < 100 || end > 600 {
                    errors.push(FieldError::new(
                        format!("{hpath}.{k}[{i}]"),
                        format!(
                            "invalid status range [{start}, {end}): need 100 <= start < end <= 600"
                        ),
                    ));
                    return None;
                }
                out.push((start as u16, end as u16));
            }
            Some(out)
        };
        let mut expected = ranges("expected_statuses", errors)?;
        if expected.is_empty() {
            expected.push((200, 201));
        }
        let retriable = ranges("retriable_statuses", errors)?;
        let headers = arr(h, "request_headers_to_add")
            .iter()
            .filter_map(|o| get(o, "header"))
            .filter_map(|hv| {
                Some((
                    s(hv, "key")?.to_ascii_lowercase(),
                    s(hv, "value").unwrap_or("").to_string(),
                ))
            })
            .collect();
        let remove = arr(h, "request_headers_to_remove")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect();
        Probe::Http(HttpProbe {
            method,
            path: s(h, "path").unwrap_or("/").to_string(),
            host: s(h, "host").filter(|h| !h.is_empty()).map(str::to_string),
            headers,
            remove,
            expected,
            retriable,
            send,
            receive,
            buffer: u(h, "response_buffer_size").map_or(1024, |n| n as usize),
        })
    } else if let Some(t) = get(v, "tcp_health_check") {
        let tpath = p(path, "tcp_health_check");
        let send = match get(t, "send") {
            Some(pl) => payload(pl, &p(&tpath, "send"), errors)?,
            None => Vec::new(),
        };
        let mut receive = Vec::new();
        for (i, pl) in arr(t, "receive").iter().enumerate() {
            receive.push(payload(pl, &format!("{tpath}.receive[{i}]"), errors)?);
        }
        Probe::Tcp { send, receive }
    } else {
        errors.push(FieldError::new(
            path.to_string(),
            "needs http_health_check or tcp_health_check (the health checkers Sluice implements)",
        ));
        return None;
    };
    let or = |k: &str, default: Duration| dur(v, k).unwrap_or(default);
    let unhealthy_interval = or("unhealthy_interval", interval);
    let no_traffic_interval = or("no_traffic_interval", Duration::from_secs(60));
    Some(HealthCheckConfig {
        timeout,
        interval,
        unhealthy_interval,
        unhealthy_edge_interval: or("unhealthy_edge_interval", unhealthy_interval),
        healthy_edge_interval: or("healthy_edge_interval", interval),
        no_traffic_interval,
        no_traffic_healthy_interval: or("no_traffic_healthy_interval", no_traffic_interval),
        initial_jitter: or("initial_jitter", Duration::ZERO),
        interval_jitter: or("interval_jitter", Duration::ZERO),
        interval_jitter_percent: u(v, "interval_jitter_percent").unwrap_or(0).min(1000) as u32,
        unhealthy_threshold,
        healthy_threshold,
        probe,
    })
}

/// A health-check `Payload`: `text` (hex) or `binary`.
fn payload(v: &Value, path: &str, errors: &mut Errors) -> Option<Vec<u8>> {
    if let Some(hex) = s(v, "text") {
        let clean: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let decoded = clean
            .len()
            .is_multiple_of(2)
            .then(|| {
                clean
                    .chunks(2)
                    .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten();
        if decoded.is_none() {
            errors.push(FieldError::new(p(path, "text"), "not a hex string"));
        }
        return decoded;
    }
    if let Some(b64) = s(v, "binary") {
        let decoded = crate::data_source::decode_base64(b64);
        if decoded.is_none() {
            errors.push(FieldError::new(p(path, "binary"), "not base64"));
        }
        return decoded;
    }
    Some(Vec::new())
}

/// A cluster's `outlier_detection`.
fn outlier_config(o: &Value, path: &str) -> OutlierConfig {
    let d = OutlierConfig::default();
    let pct = |k: &str, default: u64| u(o, k).map_or(default, |n| n.min(100));
    let count =
        |k: &str, default: u32| u(o, k).map_or(default, |n| n.min(u64::from(u32::MAX)) as u32);
    if u(o, "enforcing_failure_percentage").is_some_and(|p| p > 0) {
        tracing::warn!(
            at = %format!("{path}.outlier_detection.enforcing_failure_percentage"),
            "failure-percentage ejection is not implemented"
        );
    }
    if u(o, "enforcing_success_rate") != Some(0) {
        tracing::warn!(
            at = %format!("{path}.outlier_detection"),
            "success-rate ejection is not implemented (set enforcing_success_rate: 0 to say so); \
             ejection on consecutive failures applies"
        );
    }
    OutlierConfig {
        consecutive_5xx: count("consecutive_5xx", d.consecutive_5xx),
        enforcing_consecutive_5xx: pct("enforcing_consecutive_5xx", d.enforcing_consecutive_5xx),
        consecutive_gateway_failure: count(
            "consecutive_gateway_failure",
            d.consecutive_gateway_failure,
        ),
        enforcing_consecutive_gateway_failure: pct(
            "enforcing_consecutive_gateway_failure",
            d.enforcing_consecutive_gateway_failure,
        ),
        split_local_origin: b(o, "split_external_local_origin_errors"),
        consecutive_local_origin_failure: count(
            "consecutive_local_origin_failure",
            d.consecutive_local_origin_failure,
        ),
        enforcing_consecutive_local_origin_failure: pct(
            "enforcing_consecutive_local_origin_failure",
            d.enforcing_consecutive_local_origin_failure,
        ),
        base_ejection_time: dur(o, "base_ejection_time").unwrap_or(d.base_ejection_time),
        max_ejection_time: dur(o, "max_ejection_time").unwrap_or(d.max_ejection_time),
        max_ejection_percent: pct("max_ejection_percent", d.max_ejection_percent),
    }
}

// ---- listeners and bootstrap ----------------------------------------------------------------

fn hcm(
    v: &Value,
    path: &str,
    res: &ClusterResolver<'_>,
    metrics: &Metrics,
    identity: &Identity,
    errors: &mut Errors,
) -> Option<HcmConfig> {
    let stat_prefix = s(v, "stat_prefix").unwrap_or("").to_string();
    let codec = match s(v, "codec_type") {
        Some("HTTP1") => Codec::Http1,
        Some("HTTP2") => Codec::Http2,
        _ => Codec::Auto,
    };
    let Some(rc) = get(v, "route_config") else {
        errors.push(FieldError::new(
            p(path, "route_config"),
            "required (rds needs dynamic_resources.ads_config: route configurations come over ADS)",
        ));
        return None;
    };
    let mut suppress_envoy_headers = false;
    let filters = arr(v, "http_filters");
    if filters.is_empty() {
        errors.push(FieldError::new(
            p(path, "http_filters"),
            "the router filter is required",
        ));
    }
    if get(v, "tracing").is_some() {
        tracing::warn!(
            at = %p(path, "tracing"),
            "tracing is not implemented: no spans are reported and no trace context headers are \
             added; requests are routed as without it"
        );
    }
    let mut fault = None;
    let mut cors = false;
    let mut health_check = None;
    let mut local_limit = None;
    let mut compressors = Vec::new();
    let mut rbac = Vec::new();
    let mut decompressors = Vec::new();
    let mut csrf = None;
    let mut csrf_after_cors = false;
    let mut ext_authz: Option<(Value, String)> = None;
    // Whether the decompressors come before the compressors (they then change the
    // `accept-encoding` the compressors read).
    let mut decompressors_first = false;
    // Sluice runs the health-check filter before routing, RBAC before the rate limit, and the
    // rate limit before CORS and fault injection: configurations that order them otherwise are
    // refused.
    let mut seen_cors_or_fault = false;
    for (i, f) in filters.iter().enumerate() {
        let fpath = format!("{path}.http_filters[{i}]");
        let ty = get(f, "typed_config")
            .and_then(|t| s(t, "@type"))
            .map(|t| t.rsplit('/').next().unwrap_or(""));
        // A filter is known by its config's type, or by its name when it has no config.
        let is = |type_name: &str, filter_name: &str| match ty {
            Some(t) => t == type_name,
            None => s(f, "name") == Some(filter_name),
        };
        let is_router = is(ROUTER_TYPE, "envoy.filters.http.router");
        let is_fault = is(FAULT_TYPE, "envoy.filters.http.fault");
        let is_cors = is(CORS_TYPE, "envoy.filters.http.cors");
        let is_health_check = is(HEALTH_CHECK_TYPE, "envoy.filters.http.health_check");
        let is_local_limit = is(LOCAL_RATELIMIT_TYPE, "envoy.filters.http.local_ratelimit");
        let is_compressor = is(COMPRESSOR_TYPE, "envoy.filters.http.compressor");
        let is_rbac = is(RBAC_TYPE, "envoy.filters.http.rbac");
        let is_decompressor = is(DECOMPRESSOR_TYPE, "envoy.filters.http.decompressor");
        let is_csrf = is(CSRF_TYPE, "envoy.filters.http.csrf");
        let is_ext_authz = is(EXT_AUTHZ_TYPE, "envoy.filters.http.ext_authz");
        if is_ext_authz && ext_authz.is_some() {
            errors.push(FieldError::new(
                fpath.clone(),
                "one external authorization filter per connection manager is supported",
            ));
        }
        if (is_rbac || is_local_limit || is_cors || is_csrf || is_health_check)
            && ext_authz.is_some()
        {
            errors.push(FieldError::new(
                fpath.clone(),
                "the health-check, RBAC, local rate limit, CORS and CSRF filters must come before \
                 the external authorization filter",
            ));
        }
        if is_ext_authz && fault.is_some() {
            errors.push(FieldError::new(
                fpath.clone(),
                "the external authorization filter must come before the fault filter",
            ));
        }
        if is_compressor
            && decompressors
                .iter()
                .any(|d: &DecompressorFilter| d.response.enabled)
        {
            errors.push(FieldError::new(
                fpath.clone(),
                "a compressor filter must come before the decompressor filters that decode responses",
            ));
        }
        if is_health_check && !rbac.is_empty() {
            errors.push(FieldError::new(
                fpath.clone(),
                "the health-check filter must come before the RBAC filter",
            ));
        }
        if is_rbac && (seen_cors_or_fault || local_limit.is_some()) {
            errors.push(FieldError::new(
                fpath.clone(),
                "the RBAC filter must come before the local rate limit, CORS, CSRF and fault filters",
            ));
        }
        if is_health_check && local_limit.is_some() {
            errors.push(FieldError::new(
                fpath.clone(),
                "the health-check filter must come before the local rate limit filter",
            ));
        }
        if is_cors || is_fault || is_csrf {
            seen_cors_or_fault = true;
        }
        if is_csrf && cors {
            csrf_after_cors = true;
        }
        if is_fault && csrf.is_some() {
            // Sluice injects faults after the CSRF check, as this order does.
        } else if is_csrf && fault.is_some() {
            errors.push(FieldError::new(
                fpath.clone(),
                "the CSRF filter must come before the fault filter",
            ));
        }
        if is_csrf {
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty);
            csrf = csrf_policy(config, &p(&fpath, "typed_config"), errors);
        } else if is_ext_authz {
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty).clone();
            ext_authz = Some((config, p(&fpath, "typed_config")));
        } else if is_decompressor {
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty);
            if compressors.is_empty() {
                decompressors_first = true;
            }
            decompressors.extend(decompressor_filter(
                config,
                &p(&fpath, "typed_config"),
                errors,
            ));
        } else if is_rbac {
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty);
            let cpath = p(&fpath, "typed_config");
            rbac.push((
                rbac_rules(config, &cpath, errors),
                s(config, "rules_stat_prefix").unwrap_or("").to_string(),
                s(config, "shadow_rules_stat_prefix")
                    .unwrap_or("")
                    .to_string(),
            ));
        } else if is_compressor {
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty);
            let name = s(f, "name").unwrap_or("");
            compressors.extend(compressor_filter(
                name,
                config,
                &p(&fpath, "typed_config"),
                errors,
            ));
        } else if is_local_limit {
            if seen_cors_or_fault {
                errors.push(FieldError::new(
                    fpath.clone(),
                    "the local rate limit filter must come before the CORS, CSRF and fault filters",
                ));
            }
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty);
            local_limit = local_ratelimit(config, &p(&fpath, "typed_config"), errors).map(Arc::new);
        } else if is_cors {
            cors = true;
        } else if is_health_check {
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty);
            health_check =
                health_check_filter(config, &p(&fpath, "typed_config"), identity, errors)
                    .map(Arc::new);
        } else if is_fault {
            let empty = Value::Object(Default::default());
            let config = get(f, "typed_config").unwrap_or(&empty);
            fault = fault_config(config, &p(&fpath, "typed_config"), errors).map(Arc::new);
        } else if !is_router {
            errors.push(FieldError::new(
                fpath,
                format!("http filter `{}` not supported", s(f, "name").unwrap_or("")),
            ));
        } else if i + 1 != filters.len() {
            errors.push(FieldError::new(
                fpath,
                "the router must be the last http filter",
            ));
        } else if let Some(t) = get(f, "typed_config") {
            suppress_envoy_headers = b(t, "suppress_envoy_headers");
        }
    }
    let routes = match route_table(rc, &p(path, "route_config"), res) {
        Ok(t) => t,
        Err(e) => {
            errors.extend(e);
            return None;
        }
    };
    if let Some(own) = &local_limit {
        own.resolve_stats(metrics);
        for limit in routes.local_ratelimits() {
            limit.resolve_stats(metrics);
        }
    }
    // Each RBAC filter in order; a route's `RBACPerRoute` (keyed by the filter name, which
    // they share) replaces the rules of every one.
    let rbac = rbac
        .into_iter()
        .filter_map(|(own, rules_prefix, shadow_prefix)| {
            match RbacStats::new(metrics, &stat_prefix, &rules_prefix, &shadow_prefix) {
                Ok(stats) => {
                    let reads_tls =
                        own.reads_tls() || routes.rbac_overrides().any(RbacRules::reads_tls);
                    Some(RbacFilter {
                        own,
                        stats,
                        reads_tls,
                    })
                }
                Err(e) => {
                    errors.push(FieldError::new(path, format!("RBAC statistics: {e}")));
                    None
                }
            }
        })
        .collect();
    let csrf = match csrf.map(|own| CsrfStats::new(metrics, &stat_prefix).map(|stats| (own, stats)))
    {
        Some(Ok((own, stats))) => Some(Arc::new(CsrfFilter { own, stats })),
        Some(Err(e)) => {
            errors.push(FieldError::new(path, format!("CSRF statistics: {e}")));
            None
        }
        None => None,
    };
    let ext_authz = ext_authz
        .and_then(|(config, cpath)| {
            ext_authz_filter(&config, &cpath, metrics, &stat_prefix, errors)
        })
        .map(Arc::new);
    for d in &decompressors {
        if let Err(e) = d.resolve_stats(metrics, &stat_prefix) {
            errors.push(FieldError::new(
                path,
                format!("decompressor statistics: {e}"),
            ));
        }
    }
    let decompressors = (!decompressors.is_empty()).then(|| {
        Arc::new(DecompressorChain {
            filters: decompressors,
            before_compressors: decompressors_first,
        })
    });
    let compressors = (!compressors.is_empty()).then(|| {
        let chain = CompressorChain {
            filters: compressors,
        };
        chain.resolve_stats(metrics, &stat_prefix);
        Arc::new(chain)
    });
    let websocket = arr(v, "upgrade_configs").iter().any(|u| {
        s(u, "upgrade_type").is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
            && u.get("enabled").and_then(Value::as_bool).unwrap_or(true)
    });
    for (i, uc) in arr(v, "upgrade_configs").iter().enumerate() {
        let t = s(uc, "upgrade_type").unwrap_or("");
        if !t.eq_ignore_ascii_case("websocket") {
            errors.push(FieldError::new(
                format!("{path}.upgrade_configs[{i}].upgrade_type"),
                format!("upgrade type `{t}` not supported"),
            ));
        }
    }
    let server_name = s(v, "server_name").unwrap_or("envoy");
    let http2 = http2_options(v, path, errors);
    let access_log = access_logs(v, path, errors);
    Some(HcmConfig {
        stats: HcmStats::new(metrics, &stat_prefix),
        unrouted: identity.istio_stats(
            metrics,
            "",
            [
                "unknown".into(),
                "unknown".into(),
                "unknown".into(),
                "unknown".into(),
            ],
        ),
        stat_prefix,
        codec,
        routes: Arc::new(routes),
        generate_request_id: v
            .get("generate_request_id")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        preserve_external_request_id: b(v, "preserve_external_request_id"),
        always_set_request_id_in_response: b(v, "always_set_request_id_in_response"),
        via: s(v, "via")
            .filter(|t| !t.is_empty())
            .and_then(|t| HeaderValue::from_str(t).ok()),
        use_remote_address: b(v, "use_remote_address"),
        xff_num_trusted_hops: u(v, "xff_num_trusted_hops").unwrap_or(0) as u32,
        skip_xff_append: b(v, "skip_xff_append"),
        strip_matching_host_port: b(v, "strip_matching_host_port"),
        strip_any_host_port: b(v, "strip_any_host_port"),
        request_timeout: dur(v, "request_timeout").filter(|d| !d.is_zero()),
        stream_idle_timeout: dur(v, "stream_idle_timeout").filter(|d| !d.is_zero()),
        request_headers_timeout: dur(v, "request_headers_timeout").filter(|d| !d.is_zero()),
        idle_timeout: get(v, "common_http_protocol_options")
            .and_then(|c| dur(c, "idle_timeout"))
            .or(Some(Duration::from_secs(3600)))
            .filter(|d| !d.is_zero()),
        max_request_headers_kb: u(v, "max_request_headers_kb").unwrap_or(60) as u32,
        accept_http_10: get(v, "http_protocol_options").is_some_and(|h| b(h, "accept_http_10")),
        path_rules: PathRules {
            normalize: b(v, "normalize_path"),
            merge_slashes: b(v, "merge_slashes"),
            escaped_slashes: match s(v, "path_with_escaped_slashes_action") {
                Some("REJECT_REQUEST") => EscapedSlashes::RejectRequest,
                Some("UNESCAPE_AND_REDIRECT") => EscapedSlashes::UnescapeAndRedirect,
                Some("UNESCAPE_AND_FORWARD") => EscapedSlashes::UnescapeAndForward,
                _ => EscapedSlashes::KeepUnchanged,
            },
            underscores: match get(v, "common_http_protocol_options")
                .and_then(|c| s(c, "headers_with_underscores_action"))
            {
                Some("REJECT_REQUEST") => Underscores::RejectRequest,
                Some("DROP_HEADER") => Underscores::DropHeader,
                _ => Underscores::Allow,
            },
        },
        http2,
        websocket,
        suppress_envoy_headers,
        fault,
        cors,
        health_check,
        local_ratelimit: local_limit,
        compressors,
        decompressors,
        rbac,
        csrf,
        csrf_after_cors,
        ext_authz,
        access_log,
        server_name: HeaderValue::from_str(server_name)
            .unwrap_or(HeaderValue::from_static("envoy")),
        server_header: match s(v, "server_header_transformation") {
            Some("APPEND_IF_ABSENT") => ServerHeader::AppendIfAbsent,
            Some("PASS_THROUGH") => ServerHeader::PassThrough,
            _ => ServerHeader::Overwrite,
        },
    })
}

/// The `access_log` entries of a connection manager.
fn access_logs(v: &Value, path: &str, errors: &mut Errors) -> Option<Arc<AccessLogs>> {
    use crate::access_log::{AccessLog, LogFormat, DEFAULT_FORMAT};
    use crate::access_log_sink::{open, Destination};
    let entries = arr(v, "access_log");
    if entries.is_empty() {
        return None;
    }
    let mut logs = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let epath = format!("{path}.access_log[{i}]");
        let empty = Value::Null;
        let config = get(entry, "typed_config").unwrap_or(&empty);
        let tpath = p(&epath, "typed_config");
        let destination = match type_name(config) {
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => Destination::Stdout,
            "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => Destination::Stderr,
            "envoy.extensions.access_loggers.file.v3.FileAccessLog" => match s(config, "path") {
                Some(f) if !f.is_empty() => Destination::File(f.into()),
                _ => {
                    errors.push(FieldError::new(p(&tpath, "path"), "required"));
                    continue;
                }
            },
            other => {
                errors.push(FieldError::new(
                    tpath,
                    format!(
                        "access logger `{other}` not supported (stdout, stderr and file loggers are)"
                    ),
                ));
                continue;
            }
        };
        let format = if let Some(f) = get(config, "log_format") {
            substitution_format(f, &p(&tpath, "log_format"), errors)
        } else if let Some(text) = s(config, "format") {
            LogFormat::text(text, false)
                .map_err(|e| errors.push(FieldError::new(p(&tpath, "format"), e)))
                .ok()
        } else if let Some(Value::Object(o)) =
            get(config, "json_format").or_else(|| get(config, "typed_json_format"))
        {
            LogFormat::json(o, false)
                .map_err(|e| errors.push(FieldError::new(p(&tpath, "json_format"), e)))
                .ok()
        } else {
            LogFormat::text(DEFAULT_FORMAT, false).ok()
        };
        let filter = match get(entry, "filter") {
            Some(f) => match log_filter(f, &p(&epath, "filter"), errors) {
                Some(f) => Some(f),
                None => continue,
            },
            None => None,
        };
        let Some(format) = format else { continue };
        match open(destination) {
            Ok(sink) => logs.push(AccessLog {
                filter,
                format,
                sink,
            }),
            Err(e) => errors.push(FieldError::new(p(&tpath, "path"), e)),
        }
    }
    Some(Arc::new(AccessLogs::new(logs)))
}

/// A `SubstitutionFormatString` (`text_format`, `text_format_source`, `json_format`).
fn substitution_format(
    v: &Value,
    path: &str,
    errors: &mut Errors,
) -> Option<crate::access_log::LogFormat> {
    use crate::access_log::LogFormat;
    let omit_empty = b(v, "omit_empty_values");
    let result = if let Some(text) = s(v, "text_format") {
        LogFormat::text(text, omit_empty).map_err(|e| FieldError::new(p(path, "text_format"), e))
    } else if let Some(src) = get(v, "text_format_source") {
        let spath = p(path, "text_format_source");
        crate::data_source::read(src, &spath).and_then(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            LogFormat::text(&text, omit_empty).map_err(|e| FieldError::new(spath.clone(), e))
        })
    } else if let Some(Value::Object(o)) = get(v, "json_format") {
        LogFormat::json(o, omit_empty).map_err(|e| FieldError::new(p(path, "json_format"), e))
    } else {
        Err(FieldError::new(
            path,
            "one of text_format, text_format_source, json_format is required",
        ))
    };
    result.map_err(|e| errors.push(e)).ok()
}

/// Envoy's response flags, as `response_flag_filter` accepts them (Sluice sets some of them).
const ENVOY_RESPONSE_FLAGS: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
];

/// An `AccessLogFilter`.
fn log_filter(v: &Value, path: &str, errors: &mut Errors) -> Option<crate::access_log::LogFilter> {
    use crate::access_log::{CompareOp, Comparison, LogFilter};
    let comparison = |f: &Value, fpath: &str, errors: &mut Errors| {
        let c = get(f, "comparison");
        let op = match c.and_then(|c| s(c, "op")).unwrap_or("EQ") {
            "GE" => CompareOp::Ge,
            "LE" => CompareOp::Le,
            "NE" => CompareOp::Ne,
            _ => CompareOp::Eq,
        };
        match c
            .and_then(|c| get(c, "value"))
            .and_then(|v| u(v, "default_value"))
        {
            Some(value) => Some(Comparison { op, value }),
            None => {
                errors.push(FieldError::new(
                    p(fpath, "comparison.value.default_value"),
                    "required",
                ));
                None
            }
        }
    };
    let list = |k: &str, errors: &mut Errors| {
        let fpath = p(path, k);
        let filters = get(v, k).map(|f| arr(f, "filters")).unwrap_or(&[]);
        let mut out = Vec::with_capacity(filters.len());
        for (i, f) in filters.iter().enumerate() {
            out.push(log_filter(f, &format!("{fpath}.filters[{i}]"), errors)?);
        }
        Some(out)
    };
    if let Some(f) = get(v, "status_code_filter") {
        comparison(f, &p(path, "status_code_filter"), errors).map(LogFilter::Status)
    } else if let Some(f) = get(v, "duration_filter") {
        comparison(f, &p(path, "duration_filter"), errors).map(LogFilter::Duration)
    } else if get(v, "not_health_check_filter").is_some() {
        Some(LogFilter::NotHealthCheck)
    } else if let Some(f) = get(v, "response_flag_filter") {
        let mut flags = Vec::new();
        for (i, flag) in arr(f, "flags").iter().enumerate() {
            let name = flag.as_str().unwrap_or("");
            if !ENVOY_RESPONSE_FLAGS.contains(&name) {
                errors.push(FieldError::new(
                    format!("{path}.response_flag_filter.flags[{i}]"),
                    format!("response flag `{name}` not supported"),
                ));
                return None;
            }
            flags.push(name.to_string());
        }
        Some(LogFilter::ResponseFlags(flags))
    } else if let Some(f) = get(v, "header_filter") {
        let m = get(f, "header").unwrap_or(&Value::Null);
        header_matcher(m, &p(path, "header_filter.header"), errors)
            .map(|m| LogFilter::Header(Box::new(m)))
    } else if get(v, "and_filter").is_some() {
        list("and_filter", errors).map(LogFilter::And)
    } else if get(v, "or_filter").is_some() {
        list("or_filter", errors).map(LogFilter::Or)
    } else {
        let which = v
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        errors.push(FieldError::new(
            p(path, &which),
            "access log filter not supported",
        ));
        None
    }
}

/// `http2_protocol_options` of a connection manager, in the ranges Envoy's proto allows.
fn http2_options(v: &Value, path: &str, errors: &mut Errors) -> Http2Options {
    let mut options = Http2Options::default();
    let Some(h) = get(v, "http2_protocol_options") else {
        return options;
    };
    let max = u64::from(u32::MAX >> 1);
    for (key, min, slot) in [
        (
            "max_concurrent_streams",
            1,
            &mut options.max_concurrent_streams,
        ),
        (
            "initial_stream_window_size",
            65_535,
            &mut options.initial_stream_window_size,
        ),
        (
            "initial_connection_window_size",
            65_535,
            &mut options.initial_connection_window_size,
        ),
    ] {
        if let Some(n) = u(h, key) {
            if (min..=max).contains(&n) {
                *slot = n as u32;
            } else {
                errors.push(FieldError::new(
                    p(path, &format!("http2_protocol_options.{key}")),
                    format!("must be between {min} and {max}"),
                ));
            }
        }
    }
    options
}

fn listener(
    v: &Value,
    path: &str,
    res: &ClusterResolver<'_>,
    metrics: &Metrics,
    identity: &Identity,
    errors: &mut Errors,
) -> Option<ListenerConfig> {
    let name = s(v, "name").unwrap_or("").to_string();
    let address = ip_socket_address(
        get(v, "address").unwrap_or(&Value::Null),
        &p(path, "address"),
        errors,
    )?;
    let chains_json = arr(v, "filter_chains");
    if chains_json.is_empty() {
        errors.push(FieldError::new(
            p(path, "filter_chains"),
            "at least one filter chain is required",
        ));
        return None;
    }
    let is_inspector = |f: &Value| {
        type_name(get(f, "typed_config").unwrap_or(&Value::Null)) == TLS_INSPECTOR_TYPE
            || s(f, "name") == Some("envoy.filters.listener.tls_inspector")
    };
    let inspect_tls = arr(v, "listener_filters").iter().any(is_inspector);
    for (i, f) in arr(v, "listener_filters").iter().enumerate() {
        if !is_inspector(f) {
            errors.push(FieldError::new(
                format!("{path}.listener_filters[{i}]"),
                format!(
                    "listener filter `{}` not supported (the TLS inspector is)",
                    s(f, "name").unwrap_or("")
                ),
            ));
        }
    }
    let mut chains = Vec::new();
    let mut seen_names = std::collections::HashSet::new();
    for (ci, chain) in chains_json.iter().enumerate() {
        let cpath = format!("{path}.filter_chains[{ci}]");
        let fcm = get(chain, "filter_chain_match").unwrap_or(&Value::Null);
        let strings = |k: &str| -> Vec<String> {
            arr(fcm, k)
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        let server_names: Vec<String> = strings("server_names")
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let transport_protocol = s(fcm, "transport_protocol").unwrap_or("").to_string();
        let application_protocols = strings("application_protocols");
        if !inspect_tls
            && (!server_names.is_empty()
                || transport_protocol == "tls"
                || !application_protocols.is_empty())
        {
            tracing::warn!(
                at = %p(&cpath, "filter_chain_match"),
                "this chain needs the ClientHello, but the listener has no TLS inspector \
                 (envoy.filters.listener.tls_inspector): as in Envoy, no connection matches it"
            );
        }
        let key = format!(
            "{}|{transport_protocol}|{}",
            server_names.join(","),
            application_protocols.join(",")
        );
        if !seen_names.insert(key) {
            errors.push(FieldError::new(
                p(&cpath, "filter_chain_match"),
                "two filter chains with the same match",
            ));
        }
        let tls = match get(chain, "transport_socket") {
            Some(ts) => match crate::tls::server_config(ts, &p(&cpath, "transport_socket")) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
            None => None,
        };
        let filters = arr(chain, "filters");
        let fpath = format!("{cpath}.filters");
        let type_of = |f: &Value| {
            let tc = get(f, "typed_config").cloned().unwrap_or(Value::Null);
            let ty = s(&tc, "@type")
                .map(|t| t.rsplit('/').next().unwrap_or("").to_string())
                .unwrap_or_default();
            (tc, ty)
        };
        // Network RBAC filters, then one terminal filter.
        let Some((last, before)) = filters.split_last() else {
            errors.push(FieldError::new(
                fpath,
                "a network filter (the HTTP connection manager or tcp_proxy) is required",
            ));
            continue;
        };
        let mut rbac = Vec::new();
        for (i, f) in before.iter().enumerate() {
            let (tc, ty) = type_of(f);
            let tpath = format!("{fpath}[{i}].typed_config");
            if ty != NETWORK_RBAC_TYPE {
                errors.push(FieldError::new(
                    tpath,
                    "only network RBAC filters may come before the last filter (the HTTP connection manager or tcp_proxy)",
                ));
                continue;
            }
            if let Some(r) = network_rbac(&tc, &tpath, metrics, errors) {
                rbac.push(r);
            }
        }
        if rbac.len() != before.len() {
            continue;
        }
        let (tc, ty) = type_of(last);
        let ty = ty.as_str();
        let tpath = format!("{fpath}[{}].typed_config", before.len());
        let filter = match ty {
            TCP_PROXY_TYPE => match tcp_proxy(&tc, &tpath, res, metrics, errors) {
                Some(tcp) => NetworkFilter::Tcp(Arc::new(tcp)),
                None => continue,
            },
            HCM_TYPE => match hcm(&tc, &tpath, res, metrics, identity, errors) {
                Some(hcm) => NetworkFilter::Http(Arc::new(hcm)),
                None => continue,
            },
            _ => {
                errors.push(FieldError::new(tpath, format!("type {ty} not supported")));
                continue;
            }
        };
        chains.push(FilterChain {
            server_names,
            transport_protocol,
            application_protocols,
            tls,
            rbac,
            filter,
        });
    }
    if chains.len() != chains_json.len() {
        return None;
    }
    Some(ListenerConfig {
        name,
        address,
        chains,
        inspect_tls,
    })
}

/// Options from the command line that shape compilation.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    pub service_node: Option<String>,
    pub service_cluster: Option<String>,
}

/// Compile a whole bootstrap (canonical JSON) into a snapshot.
pub fn bootstrap(
    v: &Value,
    metrics: &Metrics,
    options: &CompileOptions,
    previous: Option<&Snapshot>,
    version: u64,
) -> Result<Snapshot, Errors> {
    let mut errors = Vec::new();
    // Runtime layers are accepted but not read: say so where they could change routing.
    if let Some(layers) = get(v, "layered_runtime").map(|r| arr(r, "layers")) {
        for (i, layer) in layers.iter().enumerate() {
            let kind = ["static_layer", "disk_layer", "rtds_layer"]
                .into_iter()
                .find(|k| get(layer, k).is_some_and(|l| l != &Value::Object(Default::default())));
            if let Some(kind) = kind {
                tracing::warn!(
                    at = %format!("layered_runtime.layers[{i}].{kind}"),
                    "runtime layers are not read: runtime keys (route runtime_fraction, fault \
                     percentages) keep their configured values"
                );
            }
        }
    }
    if get(v, "tracing").is_some() {
        tracing::warn!(
            at = "tracing",
            "tracing is not implemented: no spans are reported and no trace context headers are \
             added; requests are routed as without it"
        );
    }
    let node = get(v, "node").cloned().unwrap_or(Value::Null);
    let identity = Identity::from_node(&node, options.service_cluster.as_deref());
    let sr = get(v, "static_resources").cloned().unwrap_or(Value::Null);
    let mut clusters = HashMap::new();
    for (i, c) in arr(&sr, "clusters").iter().enumerate() {
        let cpath = format!("static_resources.clusters[{i}]");
        if let Some(cl) = cluster(
            c,
            &cpath,
            metrics,
            &identity,
            previous.map(|p| &p.clusters),
            &mut errors,
        ) {
            if clusters.insert(cl.name.clone(), cl.clone()).is_some() {
                errors.push(FieldError::new(
                    p(&cpath, "name"),
                    format!("duplicate cluster `{}`", cl.name),
                ));
            }
        }
    }
    let resolver = ClusterResolver {
        clusters: &clusters,
        validate: true,
    };
    let mut listeners = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, l) in arr(&sr, "listeners").iter().enumerate() {
        let lpath = format!("static_resources.listeners[{i}]");
        if let Some(lc) = listener(l, &lpath, &resolver, metrics, &identity, &mut errors) {
            if lc.address.port() != 0 && !seen.insert(lc.address) {
                errors.push(FieldError::new(
                    p(&lpath, "address"),
                    format!("address {} used by two listeners", lc.address),
                ));
            }
            listeners.push(Arc::new(lc));
        }
    }
    let admin = get(v, "admin")
        .and_then(|a| get(a, "address"))
        .and_then(|a| ip_socket_address(a, "admin.address", &mut errors));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Snapshot {
        version,
        listeners,
        clusters,
        admin,
        node: NodeInfo {
            id: options
                .service_node
                .clone()
                .or_else(|| s(&node, "id").map(str::to_string))
                .unwrap_or_default(),
            cluster: options
                .service_cluster
                .clone()
                .or_else(|| s(&node, "cluster").map(str::to_string))
                .unwrap_or_default(),
        },
        config: v.clone(),
        dynamic: Value::Null,
        loaded_at: SystemTime::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.500s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn istio_names() {
        let (svc, short, ns, ver) =
            istio_destination("outbound|9080|v2|reviews.default.svc.cluster.local", None);
        assert_eq!(
            (svc.as_str(), short.as_str(), ns.as_str(), ver.as_str()),
            (
                "reviews.default.svc.cluster.local",
                "reviews",
                "default",
                "v2"
            )
        );
        let (svc, _, ns, ver) = istio_destination("plain", None);
        assert_eq!(
            (svc.as_str(), ns.as_str(), ver.as_str()),
            ("plain", "unknown", "unknown")
        );
    }

    #[test]
    fn re2_substitution_is_translated() {
        let mut e = Vec::new();
        let v: Value = serde_json::json!({"pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"});
        let (re, sub) = rewrite(&v, "x", &mut e).unwrap();
        assert_eq!(
            re.replace_all("/service/foo/v1/api", sub.as_str()),
            "/v1/api/instance/foo"
        );
    }
}
