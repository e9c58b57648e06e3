//! Istio `networking.istio.io` resources: VirtualService, DestinationRule, ServiceEntry,
//! WorkloadEntry and Gateway (API versions `v1`, `v1beta1`, `v1alpha3`).
//!
//! Each kind is a typed struct that denies unknown fields, so a field Sluice does not model is
//! refused with its path and line (`vs.yaml:14: spec.http[0].bogus: not supported`) instead
//! of being ignored. Fields that Istio defines but that Sluice cannot honour are modelled and then
//! refused by [`Resource::check`] with a reason. Values are checked here too (durations, header
//! names, percentages), so that a bad resource is rejected when it is read, not when it is pushed.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ConfigError, FieldError};
use crate::source::{self, snake_case, Document};

/// The API group of the kinds this module reads.
pub const GROUP: &str = "networking.istio.io";
const VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// Kubernetes object metadata (only what Sluice uses; other metadata is allowed and unused).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// The namespace, `default` when unset (as `kubectl apply` does).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// Istio `StringMatch`: `exact`, `prefix` or `regex` (RE2 syntax). An empty match (`{}`) means
/// "present" where Istio allows it (header matches).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// `PortSelector`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: Option<u32>,
}

/// `Percent`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

// ---- VirtualService ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// `TCPRoute`: opaque TCP connections, routed by port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `TLSRoute`: TLS connections passed through unterminated, routed by SNI and port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `L4MatchAttributes`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L4Match {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

/// `TLSMatchAttributes`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsMatch {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<DirectResponse>,
    pub delegate: Option<Delegate>,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<String>,
    pub retries: Option<Retries>,
    pub fault: Option<Fault>,
    pub mirror: Option<Destination>,
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub mirrors: Vec<MirrorPolicy>,
    pub cors_policy: Option<CorsPolicy>,
    pub headers: Option<Headers>,
}

/// `Delegate`: the VirtualService whose routes take this route's place.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delegate {
    pub name: String,
    /// Default: the namespace of the VirtualService that delegates.
    pub namespace: Option<String>,
}

/// `CorsPolicy` of an HTTP route.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    #[serde(default)]
    pub name: String,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    pub source_namespace: Option<String>,
    pub stat_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<u32>,
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorPolicy {
    pub destination: Destination,
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u32>,
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    pub redirect_code: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DirectResponse {
    pub status: u32,
    pub body: Option<HttpBody>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpBody {
    pub string: Option<String>,
    /// Base64, as in the protobuf JSON mapping.
    pub bytes: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    #[serde(default)]
    pub attempts: u32,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<bool>,
    /// Whether a retry avoids the hosts already tried (Istio's default: yes).
    pub retry_ignore_previous_hosts: Option<bool>,
    /// The base interval of the exponential back-off between retries.
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    pub fixed_delay: Option<String>,
    pub exponential_delay: Option<String>,
    pub percentage: Option<Percent>,
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: Option<u32>,
    pub grpc_status: Option<String>,
    pub http2_error: Option<String>,
    pub percentage: Option<Percent>,
}

/// `Headers`: operations on request and response headers.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

// ---- DestinationRule --------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    pub workload_selector: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Option<Value>,
    pub proxy_protocol: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHash>,
    pub locality_lb_setting: Option<Value>,
    pub warmup_duration_secs: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<Value>,
    pub maglev: Option<Value>,
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: String,
    pub path: Option<String>,
    /// With a TTL the proxy makes the cookie for clients that do not send it.
    pub ttl: Option<String>,
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

/// `HTTPCookie.Attribute`: added to a generated cookie (`name=value`, or `name` alone).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CookieAttribute {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<String>,
    /// TCP keep-alive probes: tuning only.
    pub tcp_keepalive: Option<Value>,
    pub max_connection_duration: Option<String>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<String>,
    pub h2_upgrade_policy: Option<String>,
    pub use_client_protocol: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive5xx_errors: Option<u32>,
    #[serde(rename = "consecutive_5xx_errors")]
    pub consecutive_5xx_errors_alt: Option<u32>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
    pub min_health_percent: Option<u32>,
    pub split_external_local_origin_errors: Option<bool>,
    pub consecutive_local_origin_failures: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTls {
    pub mode: Option<String>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

// ---- ServiceEntry / WorkloadEntry ---------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs for TCP services; HTTP routing is by host, so they have no effect here.
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    pub location: Option<String>,
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Identities to verify with Istio mTLS: not used without Istio certificates.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `Sidecar`: which services and VirtualServices the sidecars it selects see (`egress` hosts).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sidecar {
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub egress: Vec<EgressListener>,
    #[serde(default)]
    pub ingress: Vec<serde_json::Value>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    pub inbound_connection_pool: Option<serde_json::Value>,
}

/// One `egress` listener: its `hosts` are `namespace/dnsName` (`*`, `.` and `~` namespaces,
/// `*` and `*.suffix` names).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressListener {
    pub port: Option<serde_json::Value>,
    pub bind: Option<String>,
    pub capture_mode: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    pub mode: Option<String>,
    pub egress_proxy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Multi-network gateways are not used: every endpoint is reached directly.
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
}

// ---- Gateway ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    pub port: GatewayPort,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub name: String,
    pub bind: Option<String>,
    pub default_endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayPort {
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTls {
    #[serde(default)]
    pub https_redirect: bool,
    pub mode: Option<String>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

// ---- resources ----------------------------------------------------------------------------------

/// The spec of one Istio resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(VirtualService),
    DestinationRule(Box<DestinationRule>),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    Gateway(Gateway),
    AuthorizationPolicy(Box<crate::istio_security::AuthorizationPolicy>),
    Sidecar(Box<Sidecar>),
}

impl Spec {
    /// The resource kind, as written in `kind:`.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::VirtualService(_) => "VirtualService",
            Spec::DestinationRule(_) => "DestinationRule",
            Spec::ServiceEntry(_) => "ServiceEntry",
            Spec::WorkloadEntry(_) => "WorkloadEntry",
            Spec::Gateway(_) => "Gateway",
            Spec::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Spec::Sidecar(_) => "Sidecar",
        }
    }
}

/// One Istio resource read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub metadata: Metadata,
    pub spec: Spec,
    /// `file` or `file#N` (the N-th document of a multi-document file), for messages.
    pub origin: String,
}

impl Resource {
    /// `Kind namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{} {}/{}",
            self.spec.kind(),
            self.metadata.namespace(),
            self.metadata.name
        )
    }
}

/// What one document of a file turned out to be.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// An Istio networking resource.
    Istio(Box<Resource>),
    /// An Argo Rollouts `Rollout`.
    Rollout(Box<crate::argo::Rollout>),
    /// An Argo `AnalysisTemplate` or `ClusterAnalysisTemplate`.
    AnalysisTemplate(Box<crate::argo_analysis::AnalysisTemplate>),
    /// A kind Sluice reads elsewhere (`argoproj.io` Rollout, AnalysisTemplate, …): the document is
    /// kept for its reader.
    Other {
        api_version: String,
        kind: String,
        name: String,
        document: Document,
    },
}

/// Read every document of a (multi-document) YAML/JSON text. Istio kinds are parsed and checked;
/// any error in any document fails the whole file, naming `file:line: path: reason`.
pub fn parse_text(origin: &str, text: &str) -> Result<Vec<Parsed>, ConfigError> {
    let docs = source::parse_documents(origin, text)?;
    let mut out = Vec::with_capacity(docs.len());
    let mut errors = Vec::new();
    for doc in docs {
        match parse_document(&doc) {
            Ok(p) => out.push(p),
            Err(mut e) => {
                for err in &mut e {
                    err.line = doc.line_of(&snake_case(&err.path));
                }
                errors.extend(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError::Invalid {
            origin: origin.to_string(),
            errors,
        })
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Parse one document (lines are located by the caller).
fn parse_document(doc: &Document) -> Result<Parsed, Vec<FieldError>> {
    let v = &doc.value;
    let api_version = str_field(v, "apiVersion").to_string();
    let kind = str_field(v, "kind").to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    if api_version == crate::argo::API_VERSION && kind == "Rollout" {
        let metadata: Metadata = typed(v.get("metadata").unwrap_or(&Value::Null), "metadata")?;
        if metadata.name.is_empty() {
            return Err(vec![FieldError::new("metadata.name", "required")]);
        }
        let spec: crate::argo::RolloutSpec = typed(v.get("spec").unwrap_or(&Value::Null), "spec")?;
        let mut errors = Vec::new();
        crate::argo::check(&spec, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        return Ok(Parsed::Rollout(Box::new(crate::argo::Rollout {
            metadata,
            spec,
        })));
    }
    if api_version == crate::argo::API_VERSION
        && (kind == "AnalysisTemplate" || kind == "ClusterAnalysisTemplate")
    {
        let metadata: Metadata = typed(v.get("metadata").unwrap_or(&Value::Null), "metadata")?;
        if metadata.name.is_empty() {
            return Err(vec![FieldError::new("metadata.name", "required")]);
        }
        let spec: crate::argo_analysis::AnalysisTemplateSpec =
            typed(v.get("spec").unwrap_or(&Value::Null), "spec")?;
        let mut errors = Vec::new();
        crate::argo_analysis::check(&spec, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        return Ok(Parsed::AnalysisTemplate(Box::new(
            crate::argo_analysis::AnalysisTemplate {
                metadata,
                spec,
                cluster: kind == "ClusterAnalysisTemplate",
            },
        )));
    }
    if group == crate::istio_security::GROUP {
        if !crate::istio_security::VERSIONS.contains(&version) {
            return Err(vec![FieldError::new(
                "apiVersion",
                format!("{api_version} not supported (supported: security.istio.io/v1, v1beta1)"),
            )]);
        }
        if kind != "AuthorizationPolicy" {
            return Err(vec![FieldError::new(
                "kind",
                format!(
                    "security.istio.io kind `{kind}` not supported (supported: AuthorizationPolicy): \
                     Sluice has no mTLS between proxies (PeerAuthentication) and no JWT \
                     authentication (RequestAuthentication)"
                ),
            )]);
        }
    } else if group != GROUP {
        let name = v
            .get("metadata")
            .map(|m| str_field(m, "name").to_string())
            .unwrap_or_default();
        return Ok(Parsed::Other {
            api_version,
            kind,
            name,
            document: doc.clone(),
        });
    }
    if group == GROUP && !VERSIONS.contains(&version) {
        return Err(vec![FieldError::new(
            "apiVersion",
            format!(
                "{api_version} not supported (supported: {})",
                VERSIONS
                    .iter()
                    .map(|v| format!("{GROUP}/{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )]);
    }
    let metadata: Metadata = typed(v.get("metadata").unwrap_or(&Value::Null), "metadata")?;
    if metadata.name.is_empty() {
        return Err(vec![FieldError::new("metadata.name", "required")]);
    }
    let spec_value = v.get("spec").unwrap_or(&Value::Null);
    let spec = match kind.as_str() {
        "VirtualService" => Spec::VirtualService(typed(spec_value, "spec")?),
        "DestinationRule" => Spec::DestinationRule(Box::new(typed(spec_value, "spec")?)),
        "ServiceEntry" => Spec::ServiceEntry(typed(spec_value, "spec")?),
        "WorkloadEntry" => Spec::WorkloadEntry(typed(spec_value, "spec")?),
        "Gateway" => Spec::Gateway(typed(spec_value, "spec")?),
        "AuthorizationPolicy" => Spec::AuthorizationPolicy(Box::new(typed(spec_value, "spec")?)),
        "Sidecar" => Spec::Sidecar(Box::new(typed(spec_value, "spec")?)),
        other => {
            return Err(vec![FieldError::new(
                "kind",
                format!("{GROUP} kind `{other}` not supported (supported: VirtualService, DestinationRule, ServiceEntry, WorkloadEntry, Gateway, Sidecar)"),
            )])
        }
    };
    let resource = Resource {
        metadata,
        spec,
        origin: doc.origin.clone(),
    };
    let mut errors = Vec::new();
    resource.check(&mut errors);
    if errors.is_empty() {
        Ok(Parsed::Istio(Box::new(resource)))
    } else {
        Err(errors)
    }
}

/// Deserialize `value` as `T`; an error names the field path under `at`.
fn typed<T: for<'de> Deserialize<'de> + Default>(
    value: &Value,
    at: &str,
) -> Result<T, Vec<FieldError>> {
    if value.is_null() {
        return Ok(T::default());
    }
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    T::deserialize(de).map_err(|e| {
        let path = track.path().to_string();
        let mut reason = e.to_string();
        // serde_path_to_error already ends the path with the unknown field's name.
        if reason.starts_with("unknown field `") {
            reason = "not supported (not a field Sluice knows)".into();
        }
        let path = if path == "." { String::new() } else { path };
        vec![FieldError::new(path, reason).under(at)]
    })
}

// ---- checks: fields Istio has that Sluice refuses, and values ------------------------------------

fn refuse(errors: &mut Vec<FieldError>, path: String, why: &str) {
    errors.push(FieldError::new(path, format!("not supported: {why}")));
}

/// Parse an Istio/protobuf duration (`"10s"`, `"1.5s"`, `"100ms"`, `"2m"`, `"1h"`).
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => return None,
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(std::time::Duration::from_secs_f64(secs))
}

fn check_duration(errors: &mut Vec<FieldError>, path: String, d: &Option<String>) {
    if let Some(d) = d {
        if parse_duration(d).is_none() {
            errors.push(FieldError::new(
                path,
                format!("`{d}` is not a duration (e.g. 10s, 1.5s, 100ms)"),
            ));
        }
    }
}

fn check_percent(errors: &mut Vec<FieldError>, path: String, p: &Option<Percent>) {
    if let Some(p) = p {
        if !(0.0..=100.0).contains(&p.value) {
            errors.push(FieldError::new(
                path,
                format!("{} is outside 0..100", p.value),
            ));
        }
    }
}

fn check_string_match(errors: &mut Vec<FieldError>, path: &str, m: &StringMatch, empty_ok: bool) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if set > 1 {
        errors.push(FieldError::new(
            path,
            "only one of exact, prefix, regex may be set",
        ));
    }
    if set == 0 && !empty_ok {
        errors.push(FieldError::new(
            path,
            "one of exact, prefix, regex is required",
        ));
    }
    if let Some(re) = &m.regex {
        if let Err(e) = regex_syntax_ok(re) {
            errors.push(FieldError::new(format!("{path}.regex"), e));
        }
    }
}

/// Istio's regexes are RE2; the proxies compile them with RE2 (Envoy) or `regex` (Sluice), which
/// share the syntax used in routing. Reject a pattern `regex` cannot compile when it is read.
fn regex_syntax_ok(re: &str) -> Result<(), String> {
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| format!("invalid regex: {e}"))
}

fn check_header_name(errors: &mut Vec<FieldError>, path: String, name: &str) {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~:".contains(&b));
    if !ok {
        errors.push(FieldError::new(
            path,
            format!("`{name}` is not a header name"),
        ));
    }
}

fn check_headers(errors: &mut Vec<FieldError>, path: &str, h: &Option<Headers>) {
    let Some(h) = h else { return };
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (op, names) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for n in names {
                check_header_name(errors, format!("{path}.{side}.{op}.{n}"), n);
            }
        }
    }
}

/// The match fields of a `tcp` or `tls` route that Sluice cannot honour or that are invalid.
fn check_l4_match(
    errors: &mut Vec<FieldError>,
    at: &str,
    destination_subnets: &[String],
    port: Option<u32>,
) {
    if !destination_subnets.is_empty() {
        refuse(
            errors,
            format!("{at}.destinationSubnets"),
            "matching on the destination address (Sluice proxies do not capture by address)",
        );
    }
    if port.is_some_and(|p| p == 0 || p > 65535) {
        errors.push(FieldError::new(format!("{at}.port"), "must be 1..65535"));
    }
}

/// The destinations of a `tcp` or `tls` route: at least one, hosts set, weights when several,
/// and no header manipulation (there are no headers).
fn check_l4_destinations(errors: &mut Vec<FieldError>, at: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        errors.push(FieldError::new(
            format!("{at}.route"),
            "at least one destination is required",
        ));
    }
    let mut total = 0u64;
    for (j, d) in route.iter().enumerate() {
        let dp = format!("{at}.route[{j}]");
        if d.destination.host.is_empty() {
            errors.push(FieldError::new(
                format!("{dp}.destination.host"),
                "required",
            ));
        }
        if d.headers.is_some() {
            errors.push(FieldError::new(
                format!("{dp}.headers"),
                "headers cannot be changed on a TCP or TLS route",
            ));
        }
        total += u64::from(d.weight.unwrap_or(0));
    }
    if route.len() > 1 && total == 0 {
        errors.push(FieldError::new(
            format!("{at}.route"),
            "weights are required when there are several destinations",
        ));
    }
}

/// `exportTo` of a VirtualService, DestinationRule or ServiceEntry: `*`, `.`, `~` or namespace
/// names.
fn check_export_to(errors: &mut Vec<FieldError>, path: &str, export_to: &[String]) {
    for (i, e) in export_to.iter().enumerate() {
        let ok = matches!(e.as_str(), "*" | "." | "~")
            || (!e.is_empty()
                && e.len() <= 63
                && e.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        if !ok {
            errors.push(FieldError::new(
                format!("{path}.exportTo[{i}]"),
                format!("`{e}` is not `*`, `.`, `~` or a namespace"),
            ));
        }
    }
}

impl Resource {
    /// Refuse fields Sluice cannot honour and values that are invalid.
    pub fn check(&self, errors: &mut Vec<FieldError>) {
        match &self.spec {
            Spec::VirtualService(vs) => check_virtual_service(vs, errors),
            Spec::DestinationRule(dr) => check_destination_rule(dr, errors),
            Spec::ServiceEntry(se) => check_service_entry(se, errors),
            Spec::WorkloadEntry(we) => check_workload_entry(we, "spec", errors),
            Spec::Gateway(gw) => check_gateway(gw, errors),
            Spec::AuthorizationPolicy(p) => crate::istio_security::check(p, errors),
            Spec::Sidecar(sc) => check_sidecar(sc, errors),
        }
    }
}

fn check_sidecar(sc: &Sidecar, errors: &mut Vec<FieldError>) {
    if !sc.ingress.is_empty() {
        refuse(
            errors,
            "spec.ingress".into(),
            "inbound listeners (a sidecar's inbound side comes from its node metadata)",
        );
    }
    if sc.inbound_connection_pool.is_some() {
        refuse(
            errors,
            "spec.inboundConnectionPool".into(),
            "inbound connection pools",
        );
    }
    if let Some(p) = &sc.outbound_traffic_policy {
        match p.mode.as_deref() {
            None | Some("REGISTRY_ONLY") => {}
            Some("ALLOW_ANY") => refuse(
                errors,
                "spec.outboundTrafficPolicy.mode".into(),
                "ALLOW_ANY: Sluice has no passthrough for hosts outside the registry (REGISTRY_ONLY is what it does)",
            ),
            Some(other) => errors.push(FieldError::new(
                "spec.outboundTrafficPolicy.mode",
                format!("`{other}` is not REGISTRY_ONLY or ALLOW_ANY"),
            )),
        }
        if p.egress_proxy.is_some() {
            refuse(
                errors,
                "spec.outboundTrafficPolicy.egressProxy".into(),
                "egress proxies",
            );
        }
    }
    for (i, e) in sc.egress.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        if e.port.is_some() {
            refuse(
                errors,
                format!("{at}.port"),
                "per-port egress listeners (a sidecar has one outbound listener)",
            );
        }
        if e.bind.is_some() {
            refuse(errors, format!("{at}.bind"), "egress listener addresses");
        }
        if e.capture_mode.as_deref().is_some_and(|m| m != "DEFAULT") {
            refuse(
                errors,
                format!("{at}.captureMode"),
                "capture modes (there is no capture)",
            );
        }
        if e.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.hosts"),
                "at least one host is required",
            ));
        }
        for (j, h) in e.hosts.iter().enumerate() {
            if !h
                .split_once('/')
                .is_some_and(|(ns, dns)| !ns.is_empty() && !dns.is_empty())
            {
                errors.push(FieldError::new(
                    format!("{at}.hosts[{j}]"),
                    format!("`{h}` is not `namespace/dnsName` (`*/*`, `./*`, `istio-system/*`)"),
                ));
            }
        }
    }
    if sc.egress.len() > 1 {
        errors.push(FieldError::new(
            "spec.egress",
            "only one egress listener without a port is allowed",
        ));
    }
}

fn check_virtual_service(vs: &VirtualService, errors: &mut Vec<FieldError>) {
    // Without hosts, a VirtualService is a delegate: another one's routes hand requests to it.
    if vs.hosts.is_empty() && !vs.gateways.is_empty() {
        errors.push(FieldError::new(
            "spec.gateways",
            "a delegate VirtualService (without hosts) takes its gateways from the one that delegates",
        ));
    }
    if vs.hosts.is_empty() && (!vs.tcp.is_empty() || !vs.tls.is_empty()) {
        errors.push(FieldError::new(
            "spec.hosts",
            "at least one host is required (only HTTP routes can be delegated)",
        ));
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let at = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{at}.match[{j}]");
            check_l4_match(errors, &mp, &m.destination_subnets, m.port);
        }
        check_l4_destinations(errors, &at, &r.route);
    }
    for (i, r) in vs.tls.iter().enumerate() {
        let at = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.match"),
                "at least one match (with sniHosts) is required",
            ));
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{at}.match[{j}]");
            if m.sni_hosts.is_empty() {
                errors.push(FieldError::new(format!("{mp}.sniHosts"), "required"));
            }
            check_l4_match(errors, &mp, &m.destination_subnets, m.port);
        }
        check_l4_destinations(errors, &at, &r.route);
    }
    check_export_to(errors, "spec", &vs.export_to);
    for (i, r) in vs.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        if let Some(d) = &r.delegate {
            if d.name.is_empty() {
                errors.push(FieldError::new(format!("{at}.delegate.name"), "required"));
            }
            if vs.hosts.is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.delegate"),
                    "a delegate VirtualService (without hosts) cannot delegate again",
                ));
            }
        }
        if let Some(c) = &r.cors_policy {
            if let Some(u) = c.unmatched_preflights.as_deref() {
                if !matches!(u, "UNSPECIFIED" | "FORWARD" | "IGNORE") {
                    errors.push(FieldError::new(
                        format!("{at}.corsPolicy.unmatchedPreflights"),
                        format!("`{u}` is not one of UNSPECIFIED, FORWARD, IGNORE"),
                    ));
                }
            }
            if let Some(m) = c.max_age.as_deref() {
                if parse_duration(m).is_none() {
                    errors.push(FieldError::new(
                        format!("{at}.corsPolicy.maxAge"),
                        format!("`{m}` is not a duration"),
                    ));
                }
            }
        }
        let actions = [
            !r.route.is_empty(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
            r.delegate.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if actions == 0 {
            errors.push(FieldError::new(
                at.clone(),
                "one of route, redirect, directResponse, delegate is required",
            ));
        } else if actions > 1 {
            errors.push(FieldError::new(
                at.clone(),
                "only one of route, redirect, directResponse, delegate may be set",
            ));
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mp = format!("{at}.match[{j}]");
            for (name, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    check_string_match(errors, &format!("{mp}.{name}"), sm, false);
                }
            }
            for (name, map) in [
                ("headers", &m.headers),
                ("withoutHeaders", &m.without_headers),
            ] {
                for (h, sm) in map {
                    check_header_name(errors, format!("{mp}.{name}.{h}"), h);
                    check_string_match(errors, &format!("{mp}.{name}.{h}"), sm, true);
                }
            }
            for (q, sm) in &m.query_params {
                check_string_match(errors, &format!("{mp}.queryParams.{q}"), sm, true);
            }
        }
        let mut total = 0u64;
        for (j, d) in r.route.iter().enumerate() {
            let dp = format!("{at}.route[{j}]");
            if d.destination.host.is_empty() {
                errors.push(FieldError::new(
                    format!("{dp}.destination.host"),
                    "required",
                ));
            }
            total += u64::from(d.weight.unwrap_or(0));
            check_headers(errors, &format!("{dp}.headers"), &d.headers);
        }
        if r.route.len() > 1 && total == 0 {
            errors.push(FieldError::new(
                format!("{at}.route"),
                "weights are required when there are several destinations",
            ));
        }
        check_duration(errors, format!("{at}.timeout"), &r.timeout);
        if let Some(rt) = &r.retries {
            check_duration(
                errors,
                format!("{at}.retries.perTryTimeout"),
                &rt.per_try_timeout,
            );
            check_duration(errors, format!("{at}.retries.backoff"), &rt.backoff);
            if rt.retry_remote_localities == Some(true) {
                refuse(
                    errors,
                    format!("{at}.retries.retryRemoteLocalities"),
                    "retrying in other localities (Envoy's previous_priorities)",
                );
            }
        }
        if let Some(f) = &r.fault {
            if let Some(d) = &f.delay {
                check_duration(
                    errors,
                    format!("{at}.fault.delay.fixedDelay"),
                    &d.fixed_delay,
                );
                if d.exponential_delay.is_some() {
                    refuse(
                        errors,
                        format!("{at}.fault.delay.exponentialDelay"),
                        "exponential delays",
                    );
                }
                if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
                    errors.push(FieldError::new(
                        format!("{at}.fault.delay.fixedDelay"),
                        "required",
                    ));
                }
                check_percent(
                    errors,
                    format!("{at}.fault.delay.percentage.value"),
                    &d.percentage,
                );
            }
            if let Some(a) = &f.abort {
                if a.http2_error.is_some() {
                    refuse(
                        errors,
                        format!("{at}.fault.abort.http2Error"),
                        "HTTP/2 error aborts",
                    );
                }
                if a.http_status.is_none() && a.grpc_status.is_none() {
                    errors.push(FieldError::new(
                        format!("{at}.fault.abort.httpStatus"),
                        "required",
                    ));
                }
                check_percent(
                    errors,
                    format!("{at}.fault.abort.percentage.value"),
                    &a.percentage,
                );
            }
        }
        check_percent(
            errors,
            format!("{at}.mirrorPercentage.value"),
            &r.mirror_percentage,
        );
        for (j, m) in r.mirrors.iter().enumerate() {
            check_percent(
                errors,
                format!("{at}.mirrors[{j}].percentage.value"),
                &m.percentage,
            );
        }
        if let Some(rd) = &r.redirect {
            if rd.derive_port.is_some() {
                refuse(
                    errors,
                    format!("{at}.redirect.derivePort"),
                    "deriving the redirect port",
                );
            }
            if let Some(c) = rd.redirect_code {
                if !matches!(c, 301 | 302 | 303 | 307 | 308) {
                    errors.push(FieldError::new(
                        format!("{at}.redirect.redirectCode"),
                        format!("{c} is not a redirect code (301, 302, 303, 307, 308)"),
                    ));
                }
            }
        }
        if let Some(dr) = &r.direct_response {
            if !(200..=599).contains(&dr.status) {
                errors.push(FieldError::new(
                    format!("{at}.directResponse.status"),
                    format!("{} is not an HTTP status", dr.status),
                ));
            }
        }
        check_headers(errors, &format!("{at}.headers"), &r.headers);
    }
}

const LB_SIMPLE: &[&str] = &[
    "UNSPECIFIED",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
];

fn check_traffic_policy(tp: &TrafficPolicy, at: &str, errors: &mut Vec<FieldError>) {
    if tp.tunnel.is_some() {
        refuse(errors, format!("{at}.tunnel"), "tunnelling");
    }
    if tp.proxy_protocol.is_some() {
        refuse(errors, format!("{at}.proxyProtocol"), "PROXY protocol");
    }
    check_port_policy(&tp.load_balancer, &tp.connection_pool, &tp.tls, at, errors);
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let pp = format!("{at}.portLevelSettings[{i}]");
        if pl.port.and_then(|p| p.number).is_none() {
            errors.push(FieldError::new(format!("{pp}.port.number"), "required"));
        }
        check_port_policy(&pl.load_balancer, &pl.connection_pool, &pl.tls, &pp, errors);
    }
}

fn check_port_policy(
    lb: &Option<LoadBalancer>,
    pool: &Option<ConnectionPool>,
    tls: &Option<ClientTls>,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(lb) = lb {
        if let Some(s) = &lb.simple {
            if !LB_SIMPLE.contains(&s.as_str()) {
                errors.push(FieldError::new(
                    format!("{at}.loadBalancer.simple"),
                    format!("`{s}` is not one of {}", LB_SIMPLE.join(", ")),
                ));
            }
            if s == "PASSTHROUGH" {
                refuse(
                    errors,
                    format!("{at}.loadBalancer.simple"),
                    "PASSTHROUGH (original destination)",
                );
            }
        }
        if lb.locality_lb_setting.is_some() {
            refuse(
                errors,
                format!("{at}.loadBalancer.localityLbSetting"),
                "locality failover and distribution",
            );
        }
        if lb.warmup_duration_secs.is_some() {
            refuse(
                errors,
                format!("{at}.loadBalancer.warmupDurationSecs"),
                "slow start",
            );
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip.unwrap_or(false),
                ch.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if keys != 1 {
                errors.push(FieldError::new(
                    format!("{at}.loadBalancer.consistentHash"),
                    "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required",
                ));
            }
            if let Some(c) = &ch.http_cookie {
                check_duration(
                    errors,
                    format!("{at}.loadBalancer.consistentHash.httpCookie.ttl"),
                    &c.ttl,
                );
            }
        }
    }
    if let Some(pool) = pool {
        if let Some(tcp) = &pool.tcp {
            check_duration(
                errors,
                format!("{at}.connectionPool.tcp.connectTimeout"),
                &tcp.connect_timeout,
            );
            if tcp.max_connection_duration.is_some() {
                refuse(
                    errors,
                    format!("{at}.connectionPool.tcp.maxConnectionDuration"),
                    "connection lifetime limits",
                );
            }
            if tcp.idle_timeout.is_some() {
                refuse(
                    errors,
                    format!("{at}.connectionPool.tcp.idleTimeout"),
                    "TCP idle timeout (use http.idleTimeout)",
                );
            }
        }
        if let Some(http) = &pool.http {
            check_duration(
                errors,
                format!("{at}.connectionPool.http.idleTimeout"),
                &http.idle_timeout,
            );
            if http.use_client_protocol == Some(true) {
                refuse(
                    errors,
                    format!("{at}.connectionPool.http.useClientProtocol"),
                    "using the downstream protocol upstream",
                );
            }
            if let Some(p) = &http.h2_upgrade_policy {
                if !matches!(p.as_str(), "DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE") {
                    errors.push(FieldError::new(
                        format!("{at}.connectionPool.http.h2UpgradePolicy"),
                        format!("`{p}` is not one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"),
                    ));
                }
            }
        }
    }
    if let Some(tls) = tls {
        let mode = tls.mode.as_deref().unwrap_or("DISABLE");
        match mode {
            "DISABLE" | "SIMPLE" | "MUTUAL" => {}
            "ISTIO_MUTUAL" => refuse(
                errors,
                format!("{at}.tls.mode"),
                "ISTIO_MUTUAL needs Istio's workload certificates; use SIMPLE or MUTUAL with certificate files",
            ),
            other => errors.push(FieldError::new(
                format!("{at}.tls.mode"),
                format!("`{other}` is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
            )),
        }
        if tls.credential_name.is_some() {
            refuse(
                errors,
                format!("{at}.tls.credentialName"),
                "Kubernetes secrets; use caCertificates/clientCertificate/privateKey files",
            );
        }
        if !tls.subject_alt_names.is_empty()
            && tls.ca_certificates.is_none()
            && tls.insecure_skip_verify != Some(true)
        {
            // Envoy refuses names to match without a CA to check the chain against.
            errors.push(FieldError::new(
                format!("{at}.tls.subjectAltNames"),
                "needs caCertificates",
            ));
        }
        if mode == "MUTUAL" && (tls.client_certificate.is_none() || tls.private_key.is_none()) {
            errors.push(FieldError::new(
                format!("{at}.tls"),
                "MUTUAL needs clientCertificate and privateKey",
            ));
        }
    }
}

fn check_destination_rule(dr: &DestinationRule, errors: &mut Vec<FieldError>) {
    if dr.host.is_empty() {
        errors.push(FieldError::new("spec.host", "required"));
    }
    if dr.workload_selector.is_some() {
        refuse(
            errors,
            "spec.workloadSelector".into(),
            "DestinationRules scoped to workloads",
        );
    }
    check_export_to(errors, "spec", &dr.export_to);
    if let Some(tp) = &dr.traffic_policy {
        check_traffic_policy(tp, "spec.trafficPolicy", errors);
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            errors.push(FieldError::new(format!("{at}.name"), "required"));
        } else if !names.insert(s.name.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.name"),
                format!("duplicate subset `{}`", s.name),
            ));
        }
        if let Some(tp) = &s.traffic_policy {
            check_traffic_policy(tp, &format!("{at}.trafficPolicy"), errors);
        }
    }
}

fn check_service_entry(se: &ServiceEntry, errors: &mut Vec<FieldError>) {
    if se.hosts.is_empty() {
        errors.push(FieldError::new(
            "spec.hosts",
            "at least one host is required",
        ));
    }
    check_export_to(errors, "spec", &se.export_to);
    match se.resolution.as_deref().unwrap_or("NONE") {
        "STATIC" | "DNS" | "DNS_ROUND_ROBIN" => {}
        "NONE" => {
            if se.endpoints.is_empty() && se.workload_selector.is_none() {
                refuse(
                    errors,
                    "spec.resolution".into(),
                    "NONE without endpoints (original-destination passthrough); use STATIC or DNS",
                );
            }
        }
        other => errors.push(FieldError::new(
            "spec.resolution",
            format!("`{other}` is not one of NONE, STATIC, DNS, DNS_ROUND_ROBIN"),
        )),
    }
    if se.ports.is_empty() {
        errors.push(FieldError::new(
            "spec.ports",
            "at least one port is required",
        ));
    }
    for (i, p) in se.ports.iter().enumerate() {
        if p.number == 0 || p.number > 65535 {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].number"),
                "must be 1..65535",
            ));
        }
    }
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        errors.push(FieldError::new(
            "spec.workloadSelector",
            "endpoints and workloadSelector are mutually exclusive",
        ));
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        check_workload_entry(e, &format!("spec.endpoints[{i}]"), errors);
    }
}

fn check_workload_entry(we: &WorkloadEntry, at: &str, errors: &mut Vec<FieldError>) {
    if we.address.starts_with("unix://") {
        refuse(
            errors,
            format!("{at}.address"),
            "Unix domain socket endpoints",
        );
    }
    if we.weight == Some(0) {
        errors.push(FieldError::new(
            format!("{at}.weight"),
            "must be at least 1",
        ));
    }
}

fn check_gateway(gw: &Gateway, errors: &mut Vec<FieldError>) {
    for (i, s) in gw.servers.iter().enumerate() {
        let at = format!("spec.servers[{i}]");
        let proto = s.port.protocol.to_ascii_uppercase();
        if !matches!(
            proto.as_str(),
            "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "TCP" | "TLS"
        ) {
            refuse(
                errors,
                format!("{at}.port.protocol"),
                &format!(
                    "`{}` servers (HTTP, HTTPS, HTTP2, GRPC, TCP, TLS are)",
                    s.port.protocol
                ),
            );
        }
        if s.port.number == 0 || s.port.number > 65535 {
            errors.push(FieldError::new(
                format!("{at}.port.number"),
                "must be 1..65535",
            ));
        }
        if s.port.target_port.is_some() {
            refuse(errors, format!("{at}.port.targetPort"), "port translation");
        }
        if s.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.hosts"),
                "at least one host is required",
            ));
        }
        if s.default_endpoint.is_some() {
            refuse(
                errors,
                format!("{at}.defaultEndpoint"),
                "sidecar ingress endpoints",
            );
        }
        if let Some(tls) = &s.tls {
            let mode =
                tls.mode
                    .as_deref()
                    .unwrap_or(if tls.https_redirect { "" } else { "SIMPLE" });
            match mode {
                "" => {}
                "PASSTHROUGH" => {
                    if !matches!(proto.as_str(), "TLS" | "HTTPS") {
                        errors.push(FieldError::new(
                            format!("{at}.tls.mode"),
                            "PASSTHROUGH needs protocol TLS or HTTPS",
                        ));
                    }
                }
                "SIMPLE" | "MUTUAL" => {
                    if tls.credential_name.is_some() {
                        refuse(
                            errors,
                            format!("{at}.tls.credentialName"),
                            "Kubernetes secrets; use serverCertificate and privateKey files",
                        );
                    } else if tls.server_certificate.is_none() || tls.private_key.is_none() {
                        errors.push(FieldError::new(
                            format!("{at}.tls"),
                            "serverCertificate and privateKey are required",
                        ));
                    }
                    if mode == "MUTUAL" && tls.ca_certificates.is_none() {
                        errors.push(FieldError::new(
                            format!("{at}.tls.caCertificates"),
                            "required with MUTUAL",
                        ));
                    }
                }
                other => refuse(
                    errors,
                    format!("{at}.tls.mode"),
                    &format!("`{other}` (SIMPLE, MUTUAL and PASSTHROUGH are)"),
                ),
            }
            if !tls.subject_alt_names.is_empty() && mode != "MUTUAL" {
                errors.push(FieldError::new(
                    format!("{at}.tls.subjectAltNames"),
                    "client names are checked only with mode MUTUAL",
                ));
            }
            if !tls.cipher_suites.is_empty() {
                refuse(
                    errors,
                    format!("{at}.tls.cipherSuites"),
                    "choosing cipher suites",
                );
            }
            for (name, v) in [
                ("minProtocolVersion", &tls.min_protocol_version),
                ("maxProtocolVersion", &tls.max_protocol_version),
            ] {
                if let Some(v) = v {
                    if !matches!(v.as_str(), "TLS_AUTO" | "TLSV1_2" | "TLSV1_3") {
                        refuse(
                            errors,
                            format!("{at}.tls.{name}"),
                            &format!("`{v}` (TLS_AUTO, TLSV1_2, TLSV1_3 are)"),
                        );
                    }
                }
            }
        } else if proto == "HTTPS" || proto == "TLS" {
            errors.push(FieldError::new(
                format!("{at}.tls"),
                format!("required for {proto} servers"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Resource {
        match parse_text("t.yaml", text).unwrap().remove(0) {
            Parsed::Istio(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn virtual_service_with_weights_and_header_match() {
        let r = one(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 80\n    - destination: {host: reviews, subset: v3}\n      weight: 20\n",
        );
        assert_eq!(r.key(), "VirtualService default/reviews");
        let Spec::VirtualService(vs) = r.spec else {
            panic!()
        };
        assert_eq!(vs.http.len(), 2);
        assert_eq!(
            vs.http[0].matches[0].headers["end-user"].exact.as_deref(),
            Some("jason")
        );
        assert_eq!(vs.http[1].route[1].weight, Some(20));
    }

    #[test]
    fn unknown_field_is_named_with_line() {
        let err = parse_text(
            "t.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    bogus: 1\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "t.yaml:9: spec.http[0].bogus: not supported (not a field Sluice knows)"
        );
    }

    #[test]
    fn istio_fields_sluice_refuses_are_named() {
        let err = parse_text(
            "t.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: a\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting: {enabled: true}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "t.yaml:8: spec.trafficPolicy.loadBalancer.localityLbSetting: not supported"
            ),
            "{err}"
        );
        let err = parse_text(
            "t.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n    delegate: {name: other}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "t.yaml:7: spec.http[0]: only one of route, redirect, directResponse, delegate may be set"
        );
    }

    #[test]
    fn sidecar_resources_and_what_they_cannot_do() {
        let head =
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n";
        let ok = parse_text("s.yaml", &format!("{head}  egress: [{{hosts: ['./*', 'istio-system/*']}}]\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"));
        assert!(ok.is_ok(), "{ok:?}");
        for (spec, needle) in [
            (
                "  egress: [{port: {number: 80}, hosts: ['./*']}]\n",
                "spec.egress[0].port: not supported",
            ),
            (
                "  egress: [{hosts: [web]}]\n",
                "`web` is not `namespace/dnsName`",
            ),
            (
                "  ingress: [{port: {number: 80}}]\n",
                "spec.ingress: not supported",
            ),
            (
                "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
                "ALLOW_ANY: Sluice has no passthrough",
            ),
            (
                "  egress: [{hosts: ['./*']}, {hosts: ['*/*']}]\n",
                "only one egress listener",
            ),
        ] {
            let e = parse_text("s.yaml", &format!("{head}{spec}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("s.yaml:"), "{spec}: {e}");
        }
    }

    #[test]
    fn tcp_and_tls_routes_are_read_and_what_they_cannot_do_is_named() {
        let ok = one(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  tcp:\n  - match: [{port: 9000}]\n    route:\n    - destination: {host: a, subset: v1}\n      weight: 80\n    - destination: {host: a, subset: v2}\n      weight: 20\n  tls:\n  - match: [{port: 443, sniHosts: [a.example.com]}]\n    route: [{destination: {host: a}}]\n",
        );
        let Spec::VirtualService(vs) = ok.spec else {
            panic!()
        };
        assert_eq!(vs.tcp[0].matches[0].port, Some(9000));
        assert_eq!(vs.tcp[0].route[1].weight, Some(20));
        assert_eq!(vs.tls[0].matches[0].sni_hosts, ["a.example.com"]);
        let err = |spec: &str| {
            parse_text(
                "t.yaml",
                &format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: x}}\nspec:\n  hosts: [a]\n{spec}"),
            )
            .unwrap_err()
            .to_string()
        };
        let e = err("  tcp:\n  - match: [{destinationSubnets: [10.0.0.0/8]}]\n    route: [{destination: {host: a}}]\n");
        assert!(
            e.contains("t.yaml:7: spec.tcp[0].match[0].destinationSubnets: not supported"),
            "{e}"
        );
        let e = err("  tls:\n  - match: [{port: 443}]\n    route: [{destination: {host: a}}]\n");
        assert!(e.contains("spec.tls[0].match[0].sniHosts: required"), "{e}");
        let e = err("  tls:\n  - route: [{destination: {host: a}}]\n");
        assert!(e.contains("spec.tls[0].match: at least one match"), "{e}");
        let e = err("  tcp:\n  - route:\n    - destination: {host: a}\n      headers: {request: {set: {x: y}}}\n");
        assert!(
            e.contains("spec.tcp[0].route[0].headers: headers cannot be changed"),
            "{e}"
        );
        let e =
            err("  tcp:\n  - route:\n    - destination: {host: a}\n    - destination: {host: b}\n");
        assert!(e.contains("spec.tcp[0].route: weights are required"), "{e}");
    }

    #[test]
    fn gateway_servers_for_tcp_and_tls_passthrough() {
        let gw = |servers: &str| {
            parse_text(
                "t.yaml",
                &format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n  servers:\n{servers}"),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            gw("  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n"),
            Ok(())
        );
        assert_eq!(gw("  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n"), Ok(()));
        let e = gw("  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [\"*\"]\n")
            .unwrap_err();
        assert!(
            e.contains("spec.servers[0].tls: required for TLS servers"),
            "{e}"
        );
        let e = gw("  - port: {number: 80, name: h, protocol: HTTP}\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n").unwrap_err();
        assert!(e.contains("PASSTHROUGH needs protocol TLS or HTTPS"), "{e}");
        let e = gw("  - port: {number: 443, name: t, protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: AUTO_PASSTHROUGH}\n").unwrap_err();
        assert!(
            e.contains("spec.servers[0].tls.mode: not supported: `AUTO_PASSTHROUGH`"),
            "{e}"
        );
        let e = gw("  - port: {number: 27017, name: m, protocol: MONGO}\n    hosts: [\"*\"]\n")
            .unwrap_err();
        assert!(
            e.contains("spec.servers[0].port.protocol: not supported: `MONGO` servers"),
            "{e}"
        );
    }

    #[test]
    fn other_kinds_are_passed_through() {
        let out = parse_text("t.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: Experiment\nmetadata: {name: r}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n").unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Parsed::Other { kind, .. } if kind == "Experiment"));
    }

    #[test]
    fn bad_values_are_refused() {
        let err = parse_text(
            "t.yaml",
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [a]\n  http:\n  - timeout: soon\n    route:\n    - destination: {host: a}\n      weight: 50\n    - destination: {host: b}\n      weight: 50\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("t.yaml:7: spec.http[0].timeout: `soon` is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("10s"),
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(
            parse_duration("100ms"),
            Some(std::time::Duration::from_millis(100))
        );
        assert_eq!(
            parse_duration("1.5s"),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration("2m"),
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(parse_duration("x"), None);
    }
}
