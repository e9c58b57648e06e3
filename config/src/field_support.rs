//! Which Envoy fields Sluice implements, and the walker that refuses everything else.
//!
//! [`SUPPORTED`] lists, per protobuf message, the fields Sluice honours. An enum field may restrict
//! its values (`lb_policy=ROUND_ROBIN|LEAST_REQUEST|RANDOM|RING_HASH|MAGLEV`). [`check_message`] walks every field
//! that is *set* in a message (proto3: present, or different from its default), descends into
//! sub-messages, lists and `google.protobuf.Any` payloads, and reports each field that is set but not
//! in the table as `path: not supported`. Messages of the `google.protobuf` package (durations,
//! wrappers, `Struct`) are leaves.
//!
//! Fields that are accepted but have no effect in Sluice are marked with a leading `~` in the
//! table. They only concern observability or tuning, never which upstream a request reaches or what
//! it sees; README lists them.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use crate::error::FieldError;

/// Supported fields per message: `"message.FullName: field field=ENUM|VALUES ~ignored_field"`.
pub const SUPPORTED: &[&str] = &[
    // Bootstrap
    "envoy.config.bootstrap.v3.Bootstrap: node static_resources dynamic_resources admin ~stats_config ~stats_flush_interval ~layered_runtime ~tracing ~overload_manager",
    // xDS: ADS over gRPC (state of the world), to a static cluster
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources: lds_config cds_config ads_config",
    "envoy.config.core.v3.ApiConfigSource: api_type=GRPC transport_api_version=V3 grpc_services ~set_node_on_first_message_only ~refresh_delay ~request_timeout",
    "envoy.config.core.v3.GrpcService: envoy_grpc timeout",
    "envoy.config.core.v3.GrpcService.EnvoyGrpc: cluster_name authority",
    "envoy.config.core.v3.ConfigSource: ads path_config_source path resource_api_version=V3 ~initial_fetch_timeout",
    "envoy.config.core.v3.PathConfigSource: path ~watched_directory",
    "envoy.config.core.v3.AggregatedConfigSource: ",
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds: config_source route_config_name",
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig: eds_config service_name",
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources: listeners clusters",
    "envoy.config.bootstrap.v3.Admin: address ~access_log_path ~access_log ~profile_path",
    "envoy.config.core.v3.Node: id cluster metadata locality user_agent_name user_agent_version user_agent_build_version extensions client_features",
    "envoy.config.core.v3.Locality: region zone sub_zone",
    "envoy.config.core.v3.Address: socket_address",
    "envoy.config.core.v3.SocketAddress: protocol=TCP address port_value ipv4_compat",
    "envoy.config.core.v3.Metadata: filter_metadata",
    // Listeners
    "envoy.config.listener.v3.Listener: name address filter_chains listener_filters ~stat_prefix ~per_connection_buffer_limit_bytes ~traffic_direction ~access_log",
    "envoy.config.listener.v3.FilterChain: filters name filter_chain_match transport_socket",
    "envoy.config.listener.v3.FilterChainMatch: server_names transport_protocol application_protocols",
    "envoy.config.listener.v3.ListenerFilter: name typed_config",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector: ",
    // TLS
    "envoy.config.core.v3.TransportSocket: name typed_config",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext: common_tls_context require_client_certificate",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext: common_tls_context sni",
    "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext: tls_params tls_certificates validation_context alpn_protocols",
    "envoy.extensions.transport_sockets.tls.v3.TlsParameters: tls_minimum_protocol_version=TLS_AUTO|TLSv1_2|TLSv1_3 tls_maximum_protocol_version=TLS_AUTO|TLSv1_2|TLSv1_3",
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate: certificate_chain private_key",
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext: trusted_ca match_typed_subject_alt_names match_subject_alt_names",
    "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher: san_type=DNS|URI|EMAIL|IP_ADDRESS matcher",
    "envoy.config.listener.v3.Filter: name typed_config",
    // HTTP connection manager
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager: \
        codec_type=AUTO|HTTP1|HTTP2 stat_prefix route_config http_filters generate_request_id \
        use_remote_address xff_num_trusted_hops skip_xff_append strip_matching_host_port strip_any_host_port \
        request_timeout request_headers_timeout common_http_protocol_options http_protocol_options \
        max_request_headers_kb rds normalize_path merge_slashes stream_idle_timeout via preserve_external_request_id \
        always_set_request_id_in_response \
        path_with_escaped_slashes_action=KEEP_UNCHANGED|REJECT_REQUEST|UNESCAPE_AND_REDIRECT|UNESCAPE_AND_FORWARD \
        upgrade_configs server_name server_header_transformation=OVERWRITE|APPEND_IF_ABSENT|PASS_THROUGH \
        access_log ~http2_protocol_options ~tracing",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter: name typed_config",
    // TCP proxying (a filter chain that relays bytes to a cluster or weighted clusters).
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy: stat_prefix cluster weighted_clusters idle_timeout max_connect_attempts ~access_log ~access_log_options",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster: clusters",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight: name weight",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig: upgrade_type enabled",
    "envoy.extensions.filters.http.router.v3.Router: suppress_envoy_headers ~dynamic_stats ~start_child_span",
    // Fault injection (filter, and per route / virtual host). The runtime keys only name where a
    // runtime override would come from; Sluice has no runtime layer, so the configured values hold.
    // Local rate limiting: one token bucket per configuration (filter, virtual host, route).
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit: stat_prefix status token_bucket filter_enabled \
        filter_enforced request_headers_to_add_when_not_enforced response_headers_to_add local_rate_limit_per_downstream_connection",
    "envoy.extensions.filters.http.rbac.v3.RBAC: rules matcher shadow_rules shadow_matcher rules_stat_prefix \
        shadow_rules_stat_prefix",
    // Network RBAC: decided once per connection, before the terminal filter (Envoy's default
    // ONE_TIME_ON_FIRST_BYTE; CONTINUOUS re-checks are not done).
    "envoy.extensions.filters.network.rbac.v3.RBAC: rules matcher shadow_rules shadow_matcher stat_prefix \
        shadow_rules_stat_prefix enforcement_type=ONE_TIME_ON_FIRST_BYTE",
    "xds.type.matcher.v3.Matcher: matcher_list on_no_match",
    "xds.type.matcher.v3.Matcher.MatcherList: matchers",
    "xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher: predicate on_match",
    "xds.type.matcher.v3.Matcher.MatcherList.Predicate: single_predicate or_matcher and_matcher not_matcher",
    "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate: input value_match",
    "xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList: predicate",
    "xds.type.matcher.v3.Matcher.OnMatch: action",
    "xds.core.v3.TypedExtensionConfig: name typed_config",
    "xds.type.matcher.v3.StringMatcher: exact prefix suffix safe_regex contains ignore_case",
    "xds.type.matcher.v3.RegexMatcher: regex google_re2",
    "xds.type.matcher.v3.RegexMatcher.GoogleRE2: ",
    "envoy.type.matcher.v3.HttpRequestHeaderMatchInput: header_name",
    "envoy.config.rbac.v3.Action: name action=ALLOW|DENY|LOG",
    "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput: ",
    "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput: ",
    "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput: ",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput: ",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput: ",
    "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput: ",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute: rbac",
    "envoy.extensions.filters.http.csrf.v3.CsrfPolicy: filter_enabled shadow_enabled additional_origins",
    // External authorization: an HTTP or gRPC (`envoy_grpc`) service, checked without the body.
    // Access logs of a connection manager: stdout, stderr and file loggers.
    "envoy.config.accesslog.v3.AccessLog: name typed_config filter",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog: log_format",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog: log_format",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog: path format json_format typed_json_format log_format",
    "envoy.config.core.v3.SubstitutionFormatString: text_format text_format_source json_format omit_empty_values ~content_type",
    "envoy.config.accesslog.v3.AccessLogFilter: status_code_filter duration_filter not_health_check_filter \
        response_flag_filter header_filter and_filter or_filter",
    "envoy.config.accesslog.v3.StatusCodeFilter: comparison",
    "envoy.config.accesslog.v3.DurationFilter: comparison",
    "envoy.config.accesslog.v3.ComparisonFilter: op=EQ|GE|LE|NE value",
    "envoy.config.core.v3.RuntimeUInt32: default_value ~runtime_key",
    "envoy.config.accesslog.v3.NotHealthCheckFilter: ",
    "envoy.config.accesslog.v3.ResponseFlagFilter: flags",
    "envoy.config.accesslog.v3.HeaderFilter: header",
    "envoy.config.accesslog.v3.AndFilter: filters",
    "envoy.config.accesslog.v3.OrFilter: filters",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz: grpc_service http_service transport_api_version=V3 \
        failure_mode_allow failure_mode_allow_header_add status_on_error allowed_headers disallowed_headers \
        filter_enabled stat_prefix ~metadata_context_namespaces",
    "envoy.extensions.filters.http.ext_authz.v3.HttpService: server_uri path_prefix authorization_request authorization_response",
    "envoy.config.core.v3.HttpUri: uri cluster timeout",
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest: allowed_headers headers_to_add",
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse: allowed_upstream_headers \
        allowed_upstream_headers_to_append allowed_client_headers allowed_client_headers_on_success",
    "envoy.type.matcher.v3.ListStringMatcher: patterns",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute: disabled check_settings",
    "envoy.extensions.filters.http.ext_authz.v3.CheckSettings: context_extensions",
    "envoy.config.rbac.v3.RBAC: action=ALLOW|DENY|LOG policies",
    "envoy.config.rbac.v3.Policy: permissions principals",
    "envoy.config.rbac.v3.Permission: and_rules or_rules any header url_path destination_ip destination_port \
        destination_port_range not_rule requested_server_name",
    "envoy.config.rbac.v3.Permission.Set: rules",
    "envoy.config.rbac.v3.Principal: and_ids or_ids any authenticated source_ip direct_remote_ip remote_ip header \
        url_path not_id",
    "envoy.config.rbac.v3.Principal.Set: ids",
    "envoy.config.rbac.v3.Principal.Authenticated: principal_name",
    "envoy.config.core.v3.CidrRange: address_prefix prefix_len",
    "envoy.type.matcher.v3.PathMatcher: path",
    "envoy.type.v3.Int32Range: start end",
    "envoy.type.v3.TokenBucket: max_tokens tokens_per_fill fill_interval",
    "envoy.type.v3.HttpStatus: code",
    "envoy.extensions.filters.http.health_check.v3.HealthCheck: pass_through_mode cache_time headers cluster_min_healthy_percentages",
    "envoy.extensions.filters.http.fault.v3.HTTPFault: delay abort upstream_cluster headers downstream_nodes max_active_faults \
        ~delay_percent_runtime ~abort_percent_runtime ~delay_duration_runtime ~abort_http_status_runtime \
        ~max_active_faults_runtime ~abort_grpc_status_runtime ~disable_downstream_cluster_stats",
    "envoy.extensions.filters.common.fault.v3.FaultDelay: fixed_delay header_delay percentage",
    "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay: ",
    "envoy.extensions.filters.http.fault.v3.FaultAbort: http_status grpc_status header_abort percentage",
    "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort: ",
    // CORS (filter, and policies per route / virtual host). `shadow_enabled` only feeds statistics.
    "envoy.extensions.filters.http.cors.v3.Cors: ",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy: allow_origin_string_match allow_methods allow_headers expose_headers \
        max_age allow_credentials filter_enabled ~shadow_enabled allow_private_network_access forward_not_matching_preflights",
    // Response compression (filter, and per route / virtual host) with gzip or brotli. The
    // libraries' memory, strategy, block and chunk settings tune speed and ratio only: the
    // decoded body is the same.
    "envoy.extensions.filters.http.compressor.v3.Compressor: compressor_library content_length content_type \
        disable_on_etag_header remove_accept_encoding_header runtime_enabled request_direction_config \
        response_direction_config",
    "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig: enabled min_content_length content_type",
    "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig: common_config",
    "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig: common_config \
        disable_on_etag_header weaken_etag_on_compress remove_accept_encoding_header uncompressible_response_codes",
    "envoy.extensions.filters.http.decompressor.v3.Decompressor: decompressor_library request_direction_config \
        response_direction_config",
    "envoy.extensions.filters.http.decompressor.v3.Decompressor.CommonDirectionConfig: enabled ignore_no_transform_header",
    "envoy.extensions.filters.http.decompressor.v3.Decompressor.RequestDirectionConfig: common_config advertise_accept_encoding",
    "envoy.extensions.filters.http.decompressor.v3.Decompressor.ResponseDirectionConfig: common_config",
    "envoy.extensions.compression.gzip.decompressor.v3.Gzip: window_bits max_inflate_ratio ~chunk_size",
    "envoy.extensions.compression.brotli.decompressor.v3.Brotli: ~disable_ring_buffer_reallocation ~chunk_size",
    "envoy.extensions.compression.zstd.decompressor.v3.Zstd: ~chunk_size",
    "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute: disabled overrides",
    "envoy.extensions.filters.http.compressor.v3.CompressorOverrides: response_direction_config compressor_library",
    "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides: remove_accept_encoding_header",
    "envoy.config.core.v3.TypedExtensionConfig: name typed_config",
    "envoy.config.core.v3.RuntimeFeatureFlag: default_value ~runtime_key",
    "envoy.extensions.compression.gzip.compressor.v3.Gzip: compression_level window_bits ~memory_level \
        ~compression_strategy ~chunk_size",
    "envoy.extensions.compression.brotli.compressor.v3.Brotli: quality window_bits ~input_block_bits ~chunk_size \
        ~disable_literal_context_modeling ~encoder_mode",
    "envoy.extensions.compression.zstd.compressor.v3.Zstd: compression_level enable_checksum ~strategy ~chunk_size",
    "envoy.config.core.v3.HttpProtocolOptions: idle_timeout headers_with_underscores_action=ALLOW|REJECT_REQUEST|DROP_HEADER ~max_headers_count",
    "envoy.config.core.v3.Http1ProtocolOptions: accept_http_10",
    "envoy.config.core.v3.Http2ProtocolOptions: max_concurrent_streams initial_stream_window_size initial_connection_window_size",
    // Routes
    "envoy.config.route.v3.RouteConfiguration: name virtual_hosts ignore_port_in_host_matching request_headers_to_add request_headers_to_remove response_headers_to_add response_headers_to_remove validate_clusters",
    "envoy.config.route.v3.VirtualHost: name domains routes request_headers_to_add request_headers_to_remove response_headers_to_add response_headers_to_remove typed_per_filter_config require_tls=NONE|ALL|EXTERNAL_ONLY",
    "envoy.config.route.v3.Route: name match route redirect direct_response request_headers_to_add request_headers_to_remove response_headers_to_add response_headers_to_remove typed_per_filter_config ~metadata ~decorator",
    "envoy.config.route.v3.RouteMatch: prefix path safe_regex path_separated_prefix case_sensitive headers query_parameters runtime_fraction grpc",
    "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions: ",
    "envoy.config.route.v3.HeaderMatcher: name exact_match safe_regex_match present_match prefix_match suffix_match contains_match string_match invert_match treat_missing_header_as_empty",
    "envoy.type.matcher.v3.StringMatcher: exact prefix suffix safe_regex contains ignore_case",
    "envoy.type.matcher.v3.RegexMatcher: google_re2 regex",
    "envoy.type.matcher.v3.RegexMatcher.GoogleRE2: ~max_program_size",
    "envoy.config.route.v3.QueryParameterMatcher: name string_match present_match",
    "envoy.config.core.v3.RuntimeFractionalPercent: default_value runtime_key",
    "envoy.type.v3.FractionalPercent: numerator denominator",
    "envoy.config.route.v3.RouteAction: cluster cluster_header weighted_clusters timeout idle_timeout auto_host_rewrite prefix_rewrite regex_rewrite \
        host_rewrite_literal request_mirror_policies hash_policy upgrade_configs cluster_not_found_response_code=SERVICE_UNAVAILABLE|NOT_FOUND|INTERNAL_SERVER_ERROR \
        retry_policy",
    "envoy.config.route.v3.RetryPolicy: retry_on num_retries per_try_timeout retry_back_off retriable_status_codes \
        retry_host_predicate host_selection_retry_max_attempts",
    "envoy.config.route.v3.RetryPolicy.RetryBackOff: base_interval max_interval",
    "envoy.config.route.v3.RetryPolicy.RetryHostPredicate: name typed_config",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate: ",
    "envoy.config.route.v3.WeightedCluster: clusters total_weight use_hash_policy ~runtime_key_prefix",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight: name weight request_headers_to_add request_headers_to_remove response_headers_to_add response_headers_to_remove host_rewrite_literal",
    "envoy.type.matcher.v3.RegexMatchAndSubstitute: pattern substitution",
    "envoy.config.route.v3.RouteAction.HashPolicy: header cookie connection_properties query_parameter terminal",
    "envoy.config.route.v3.RouteAction.HashPolicy.Header: header_name",
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie: name ttl path attributes",
    "envoy.config.route.v3.RouteAction.HashPolicy.CookieAttribute: name value",
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties: source_ip",
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter: name",
    "envoy.config.route.v3.RouteAction.UpgradeConfig: upgrade_type enabled",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy: cluster cluster_header runtime_fraction disable_shadow_host_suffix_append ~trace_sampled",
    "envoy.config.core.v3.HeaderValueOption: header append append_action=APPEND_IF_EXISTS_OR_ADD|ADD_IF_ABSENT|OVERWRITE_IF_EXISTS_OR_ADD|OVERWRITE_IF_EXISTS keep_empty_value",
    "envoy.config.core.v3.HeaderValue: key value",
    "envoy.config.route.v3.DirectResponseAction: status body",
    "envoy.config.core.v3.DataSource: inline_string inline_bytes filename",
    "envoy.config.route.v3.RedirectAction: https_redirect scheme_redirect host_redirect port_redirect path_redirect prefix_rewrite regex_rewrite \
        response_code=MOVED_PERMANENTLY|FOUND|SEE_OTHER|TEMPORARY_REDIRECT|PERMANENT_REDIRECT strip_query",
    // Clusters
    "envoy.config.cluster.v3.Cluster: name type=STATIC|STRICT_DNS|LOGICAL_DNS|EDS eds_cluster_config connect_timeout lb_policy=ROUND_ROBIN|LEAST_REQUEST|RANDOM|RING_HASH|MAGLEV ~ring_hash_lb_config ~maglev_lb_config \
        load_assignment typed_extension_protocol_options http2_protocol_options transport_socket circuit_breakers max_requests_per_connection \
        dns_refresh_rate dns_lookup_family=AUTO|V4_ONLY|V6_ONLY|V4_PREFERRED|ALL metadata ~alt_stat_name ~per_connection_buffer_limit_bytes ~respect_dns_ttl \
        outlier_detection common_lb_config health_checks",
    // Outlier detection: ejection on failures in a row. Success-rate and failure-percentage
    // ejection are not implemented (a warning says so unless `enforcing_success_rate` is 0); their
    // tuning fields are accepted with it. `interval` only paces Envoy's un-ejection checks.
    "envoy.config.cluster.v3.OutlierDetection: consecutive_5xx enforcing_consecutive_5xx consecutive_gateway_failure \
        enforcing_consecutive_gateway_failure split_external_local_origin_errors consecutive_local_origin_failure \
        enforcing_consecutive_local_origin_failure base_ejection_time max_ejection_time max_ejection_percent ~interval \
        enforcing_success_rate ~success_rate_minimum_hosts ~success_rate_request_volume ~success_rate_stdev_factor \
        ~enforcing_local_origin_success_rate ~enforcing_failure_percentage ~enforcing_failure_percentage_local_origin \
        ~failure_percentage_threshold ~failure_percentage_minimum_hosts ~failure_percentage_request_volume",
    "envoy.config.cluster.v3.Cluster.CommonLbConfig: healthy_panic_threshold locality_weighted_lb_config",
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig: ",
    // Active health checks: HTTP/1.1 and TCP probes.
    "envoy.config.core.v3.HealthCheck: timeout interval initial_jitter interval_jitter interval_jitter_percent \
        unhealthy_threshold healthy_threshold ~reuse_connection http_health_check tcp_health_check no_traffic_interval \
        no_traffic_healthy_interval unhealthy_interval unhealthy_edge_interval healthy_edge_interval ~event_log_path \
        ~always_log_health_check_failures ~always_log_health_check_success",
    "envoy.config.core.v3.HealthCheck.HttpHealthCheck: host path send receive response_buffer_size request_headers_to_add \
        request_headers_to_remove expected_statuses retriable_statuses codec_client_type=HTTP1 \
        method=METHOD_UNSPECIFIED|GET|HEAD|POST|PUT|DELETE|OPTIONS|TRACE|PATCH",
    "envoy.config.core.v3.HealthCheck.TcpHealthCheck: send receive",
    "envoy.config.core.v3.HealthCheck.Payload: text binary",
    "envoy.type.v3.Int64Range: start end",
    "envoy.config.endpoint.v3.Endpoint.HealthCheckConfig: port_value hostname disable_active_health_check",
    "envoy.type.v3.Percent: value",
    "envoy.config.endpoint.v3.ClusterLoadAssignment: cluster_name endpoints",
    "envoy.config.endpoint.v3.LocalityLbEndpoints: lb_endpoints load_balancing_weight priority ~locality",
    "envoy.config.endpoint.v3.LbEndpoint: endpoint load_balancing_weight health_status ~metadata",
    "envoy.config.endpoint.v3.Endpoint: address hostname health_check_config",
    "envoy.config.cluster.v3.CircuitBreakers: thresholds",
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds: priority=DEFAULT max_connections max_pending_requests max_requests max_retries ~track_remaining",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions: explicit_http_config common_http_protocol_options",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig: http_protocol_options http2_protocol_options",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig: http_protocol_options http2_protocol_options",
];

/// Support of one field: accepted, and (for enums) the allowed value names.
#[derive(Debug)]
struct FieldSupport {
    enum_values: Option<Vec<&'static str>>,
    /// Accepted without effect (`~`): its contents are not checked.
    ignored: bool,
}

type Table = HashMap<&'static str, HashMap<&'static str, FieldSupport>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: Table = HashMap::new();
        for line in SUPPORTED {
            let Some((msg, fields)) = line.split_once(':') else {
                continue;
            };
            let entry = t.entry(msg.trim()).or_default();
            for f in fields.split_whitespace() {
                let ignored = f.starts_with('~');
                let f = f.trim_start_matches('~');
                let (name, values) = match f.split_once('=') {
                    Some((n, v)) => (n, Some(v.split('|').collect())),
                    None => (f, None),
                };
                entry.insert(
                    name,
                    FieldSupport {
                        enum_values: values,
                        ignored,
                    },
                );
            }
        }
        t
    })
}

/// Is this message type known to Sluice at all (listed in [`SUPPORTED`])?
pub fn message_supported(full_name: &str) -> bool {
    table().contains_key(full_name)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Report every field set in `msg` (recursively) that Sluice does not support.
pub fn check_message(msg: &DynamicMessage, path: &str, errors: &mut Vec<FieldError>) {
    let desc = msg.descriptor();
    let full_name = desc.full_name();
    if full_name.starts_with("google.protobuf.") && full_name != "google.protobuf.Any" {
        return;
    }
    if full_name == "google.protobuf.Any" {
        check_any(msg, path, errors);
        return;
    }
    let support = table().get(full_name);
    for (field, value) in msg.fields() {
        let fpath = join(path, field.name());
        let Some(fs) = support.and_then(|s| s.get(field.name())) else {
            errors.push(FieldError::unsupported(fpath));
            continue;
        };
        if fs.ignored {
            continue;
        }
        if let (Some(allowed), Some(kind)) = (&fs.enum_values, field.kind().as_enum()) {
            let check = |n: i32, p: &str, errors: &mut Vec<FieldError>| {
                let name = kind
                    .get_value(n)
                    .map(|v| v.name().to_string())
                    .unwrap_or_else(|| n.to_string());
                if !allowed.contains(&name.as_str()) {
                    errors.push(FieldError::new(
                        p,
                        format!(
                            "value {name} not supported (supported: {})",
                            allowed.join(", ")
                        ),
                    ));
                }
            };
            match value {
                Value::EnumNumber(n) => check(*n, &fpath, errors),
                Value::List(items) => {
                    for (i, v) in items.iter().enumerate() {
                        if let Value::EnumNumber(n) = v {
                            check(*n, &format!("{fpath}[{i}]"), errors);
                        }
                    }
                }
                _ => {}
            }
        }
        check_value(value, &fpath, errors);
    }
}

fn check_value(value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match value {
        Value::Message(m) => check_message(m, path, errors),
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                check_value(v, &format!("{path}[{i}]"), errors);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let key = match k {
                    prost_reflect::MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                check_value(v, &format!("{path}[\"{key}\"]"), errors);
            }
        }
        _ => {}
    }
}

/// Unpack a `google.protobuf.Any` and check its payload, or name its type as unsupported.
fn check_any(msg: &DynamicMessage, path: &str, errors: &mut Vec<FieldError>) {
    match unpack_any(msg) {
        Ok(inner) => {
            let name = inner.descriptor().full_name().to_string();
            if !message_supported(&name) {
                errors.push(FieldError::new(path, format!("type {name} not supported")));
            } else {
                check_message(&inner, path, errors);
            }
        }
        Err(reason) => errors.push(FieldError::new(path, reason)),
    }
}

/// Decode the payload of a `google.protobuf.Any` held as a dynamic message.
pub fn unpack_any(msg: &DynamicMessage) -> Result<DynamicMessage, String> {
    let type_url = msg
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let bytes = msg
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let type_name = type_url.rsplit('/').next().unwrap_or("");
    let pool = msg.descriptor().parent_pool().clone();
    let Some(desc) = pool.get_message_by_name(type_name) else {
        return Err(format!("unknown type `{type_url}`"));
    };
    DynamicMessage::decode(desc, bytes).map_err(|e| format!("cannot decode `{type_url}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_names_a_real_message_and_field() {
        let pool = sluice_proto::descriptor_pool().unwrap();
        for (msg, fields) in table() {
            let desc = pool
                .get_message_by_name(msg)
                .unwrap_or_else(|| panic!("unknown message {msg}"));
            for (f, fs) in fields {
                let fd = desc
                    .get_field_by_name(f)
                    .unwrap_or_else(|| panic!("{msg} has no field {f}"));
                if let Some(values) = &fs.enum_values {
                    let e = fd
                        .kind()
                        .as_enum()
                        .cloned()
                        .unwrap_or_else(|| panic!("{msg}.{f} is not an enum"));
                    for v in values {
                        assert!(
                            e.get_value_by_name(v).is_some(),
                            "{msg}.{f} has no value {v}"
                        );
                    }
                }
            }
        }
    }
}
