//! The role-based access control filter (`envoy.filters.http.rbac`), as Envoy decides.
//!
//! * An [`Engine`] (`envoy.config.rbac.v3.RBAC`) has an action and named policies. A policy
//!   matches when one of its permissions (what is asked: headers, path, destination, SNI) and
//!   one of its principals (who asks: addresses, the client certificate, headers) match.
//!   `ALLOW` lets a request through when a policy matches, `DENY` when none does, `LOG` always.
//!   The `matcher` form instead lists predicates over inputs (request headers, addresses,
//!   ports, SNI), each with an action; the first that matches decides, then `on_no_match`,
//!   else the request is denied.
//! * The filter has enforced `rules` and `shadow_rules` (evaluated and counted, never enforced).
//!   Without `rules` nothing is enforced. A route's or virtual host's `RBACPerRoute` replaces both;
//!   one without `rbac` turns the filter off there.
//! * A denied request gets Envoy's local reply: 403 `RBAC: access denied`.
//! * Statistics as Envoy names them: `http.PREFIX.rbac.[rules_stat_prefix]allowed|denied`,
//!   `…shadow_allowed|shadow_denied` (with `shadow_rules_stat_prefix`).
//!
//! Evaluation reads the request as it arrived and allocates nothing, except to join a header
//! sent several times or to print an address for a matcher input.

use std::net::{IpAddr, SocketAddr};

use prometheus::IntCounter;

use crate::matcher::{HeaderMatcher, RequestView, StringMatcher};
use crate::metrics::Metrics;

/// `envoy.config.core.v3.CidrRange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is inside the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What a request asks for (`envoy.config.rbac.v3.Permission`).
#[derive(Debug, Clone)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    /// The path without its query string.
    UrlPath(StringMatcher),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange(u32, u32),
    /// The SNI of the connection (empty without one).
    RequestedServerName(StringMatcher),
}

/// Who asks (`envoy.config.rbac.v3.Principal`).
#[derive(Debug, Clone)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A TLS connection; with a matcher, one whose client certificate's URI SAN, DNS SAN or
    /// subject matches.
    Authenticated(Option<StringMatcher>),
    /// The connection's peer (`source_ip`, `direct_remote_ip`).
    DirectRemoteIp(Cidr),
    /// The client as the connection manager determined it (`x-forwarded-for` and
    /// `xff_num_trusted_hops`).
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
}

/// One named policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// `envoy.config.rbac.v3.RBAC.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// The rules of one engine: `envoy.config.rbac.v3.RBAC` (an action and its policies), or the
/// `matcher` form (a list of predicates, each with an action, and one for no match).
#[derive(Debug, Clone)]
pub enum Engine {
    Policies {
        action: Action,
        policies: Vec<Policy>,
    },
    Matcher(MatcherList),
}

/// What a matcher predicate reads (`xds.type.matcher.v3` inputs).
#[derive(Debug, Clone)]
pub enum MatchInput {
    /// `HttpRequestHeaderMatchInput`: every value of the header, joined by `,`.
    Header(http::HeaderName),
    /// `SourceIPInput`: the client address after `x-forwarded-for` processing.
    SourceIp,
    /// `DirectSourceIPInput`: the connection's peer.
    DirectSourceIp,
    SourcePort,
    DestinationIp,
    DestinationPort,
    /// `ServerNameInput`: the SNI.
    ServerName,
}

/// `xds.type.matcher.v3.Matcher.MatcherList.Predicate`.
#[derive(Debug, Clone)]
pub enum Predicate {
    Single(MatchInput, StringMatcher),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
}

/// A `matcher_list`: the first predicate that matches decides; without one, `on_no_match`;
/// without that, the request is denied (as Envoy).
#[derive(Debug, Clone)]
pub struct MatcherList {
    pub matchers: Vec<(Predicate, Action)>,
    pub on_no_match: Option<Action>,
}

/// The client certificate and server name of a TLS connection.
#[derive(Debug, Clone, Default)]
pub struct TlsPeer {
    /// The SNI the client sent.
    pub server_name: Option<String>,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub subject: String,
}

impl TlsPeer {
    /// The server name and the identity in the client's first certificate.
    pub fn new(server_name: Option<&str>, certificate: Option<&[u8]>) -> TlsPeer {
        let mut peer = TlsPeer {
            server_name: server_name.map(str::to_string),
            ..TlsPeer::default()
        };
        let Some(der) = certificate else {
            return peer;
        };
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
            peer.subject = cert.subject().to_string();
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    match name {
                        x509_parser::extensions::GeneralName::URI(u) => {
                            peer.uri_sans.push(u.to_string())
                        }
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            peer.dns_sans.push(d.to_string())
                        }
                        _ => {}
                    }
                }
            }
        }
        peer
    }
}

/// What the filter looks at: the request and its connection.
pub struct Subject<'a> {
    pub request: &'a RequestView<'a>,
    /// The connection's peer.
    pub peer: SocketAddr,
    /// The client address after `x-forwarded-for` processing.
    pub remote: IpAddr,
    /// The address the connection arrived on.
    pub local: SocketAddr,
    pub tls: Option<&'a TlsPeer>,
}

impl Permission {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(s)),
            Permission::Or(any) => any.iter().any(|p| p.matches(s)),
            Permission::Not(p) => !p.matches(s),
            Permission::Header(h) => h.matches(s.request),
            Permission::UrlPath(m) => m.matches(s.request.path),
            Permission::DestinationIp(c) => c.contains(s.local.ip()),
            Permission::DestinationPort(p) => s.local.port() == *p,
            Permission::DestinationPortRange(lo, hi) => {
                (*lo..*hi).contains(&u32::from(s.local.port()))
            }
            Permission::RequestedServerName(m) => {
                m.matches(s.tls.and_then(|t| t.server_name.as_deref()).unwrap_or(""))
            }
        }
    }
}

impl Principal {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(s)),
            Principal::Or(any) => any.iter().any(|p| p.matches(s)),
            Principal::Not(p) => !p.matches(s),
            // As Envoy: any TLS connection is authenticated, with a client certificate or not;
            // a name is looked for in the URI SANs, the DNS SANs, then the subject.
            Principal::Authenticated(m) => match (s.tls, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(t), Some(m)) => {
                    t.uri_sans.iter().any(|n| m.matches(n))
                        || t.dns_sans.iter().any(|n| m.matches(n))
                        || m.matches(&t.subject)
                }
            },
            Principal::DirectRemoteIp(c) => c.contains(s.peer.ip()),
            Principal::RemoteIp(c) => c.contains(s.remote),
            Principal::Header(h) => h.matches(s.request),
            Principal::UrlPath(m) => m.matches(s.request.path),
        }
    }
}

impl Policy {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(s))
            && self.principals.iter().any(|p| p.matches(s))
    }
}

impl Predicate {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Predicate::Single(input, m) => input.read(s, |v| v.is_some_and(|v| m.matches(v))),
            Predicate::Or(any) => any.iter().any(|p| p.matches(s)),
            Predicate::And(all) => all.iter().all(|p| p.matches(s)),
            Predicate::Not(p) => !p.matches(s),
        }
    }
}

impl MatchInput {
    /// Call `f` with the input's value (`None`: no value, which no string matches).
    fn read<R>(&self, s: &Subject<'_>, f: impl FnOnce(Option<&str>) -> R) -> R {
        use std::fmt::Write;
        let mut buf = String::new();
        match self {
            MatchInput::Header(name) => {
                let mut values = s.request.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => f(None),
                    (Some(v), None) => f(Some(v.to_str().unwrap_or(""))),
                    (Some(_), Some(_)) => {
                        for (i, v) in s.request.headers.get_all(name).iter().enumerate() {
                            if i > 0 {
                                buf.push(',');
                            }
                            buf.push_str(v.to_str().unwrap_or(""));
                        }
                        f(Some(&buf))
                    }
                }
            }
            MatchInput::ServerName => f(s.tls.and_then(|t| t.server_name.as_deref())),
            other => {
                let _ = match other {
                    MatchInput::SourceIp => write!(buf, "{}", s.remote),
                    MatchInput::DirectSourceIp => write!(buf, "{}", s.peer.ip()),
                    MatchInput::SourcePort => write!(buf, "{}", s.peer.port()),
                    MatchInput::DestinationIp => write!(buf, "{}", s.local.ip()),
                    _ => write!(buf, "{}", s.local.port()),
                };
                f(Some(&buf))
            }
        }
    }
}

impl Engine {
    /// Whether the request may pass (`LOG` always lets it).
    pub fn allows(&self, s: &Subject<'_>) -> bool {
        match self {
            Engine::Policies { action, policies } => {
                let matched = policies.iter().any(|p| p.matches(s));
                match action {
                    Action::Allow => matched,
                    Action::Deny => !matched,
                    Action::Log => true,
                }
            }
            Engine::Matcher(list) => {
                let action = list
                    .matchers
                    .iter()
                    .find(|(p, _)| p.matches(s))
                    .map(|(_, a)| *a)
                    .or(list.on_no_match);
                matches!(action, Some(Action::Allow | Action::Log))
            }
        }
    }
}

/// The engines in force at one place: the filter's own, or a route's `RBACPerRoute`.
#[derive(Debug, Clone, Default)]
pub struct RbacRules {
    pub rules: Option<Engine>,
    pub shadow: Option<Engine>,
}

impl RbacRules {
    /// Whether the rules read the connection's TLS details (SNI, client certificate).
    pub fn reads_tls(&self) -> bool {
        fn perm(p: &Permission) -> bool {
            match p {
                Permission::RequestedServerName(_) => true,
                Permission::And(v) | Permission::Or(v) => v.iter().any(perm),
                Permission::Not(p) => perm(p),
                _ => false,
            }
        }
        fn princ(p: &Principal) -> bool {
            match p {
                Principal::Authenticated(_) => true,
                Principal::And(v) | Principal::Or(v) => v.iter().any(princ),
                Principal::Not(p) => princ(p),
                _ => false,
            }
        }
        fn pred(p: &Predicate) -> bool {
            match p {
                Predicate::Single(input, _) => matches!(input, MatchInput::ServerName),
                Predicate::And(v) | Predicate::Or(v) => v.iter().any(pred),
                Predicate::Not(p) => pred(p),
            }
        }
        self.rules.iter().chain(&self.shadow).any(|e| match e {
            Engine::Policies { policies, .. } => policies
                .iter()
                .any(|p| p.permissions.iter().any(perm) || p.principals.iter().any(princ)),
            Engine::Matcher(list) => list.matchers.iter().any(|(p, _)| pred(p)),
        })
    }
}

/// Counters of one RBAC filter.
#[derive(Debug)]
pub struct RbacStats {
    allowed: IntCounter,
    denied: IntCounter,
    shadow_allowed: IntCounter,
    shadow_denied: IntCounter,
}

impl RbacStats {
    /// `envoy_http_rbac_allowed{envoy_http_conn_manager_prefix=…,envoy_rbac_http_prefix=…}` and
    /// the rest: Envoy's `http.PREFIX.rbac.[RULES_PREFIX.]allowed` with its tags extracted (an
    /// empty rules prefix is an empty label).
    pub fn new(
        m: &Metrics,
        hcm_prefix: &str,
        rules_prefix: &str,
        shadow_prefix: &str,
    ) -> Result<RbacStats, prometheus::Error> {
        let c = |prefix: &str, stat: &str| -> Result<IntCounter, prometheus::Error> {
            Ok(m.named_counter(
                &format!("envoy_http_rbac_{stat}"),
                "RBAC filter statistic (Envoy's)",
                &["envoy_http_conn_manager_prefix", "envoy_rbac_http_prefix"],
            )?
            .with_label_values(&[hcm_prefix, prefix.trim_end_matches('.')]))
        };
        Ok(RbacStats {
            allowed: c(rules_prefix, "allowed")?,
            denied: c(rules_prefix, "denied")?,
            shadow_allowed: c(shadow_prefix, "shadow_allowed")?,
            shadow_denied: c(shadow_prefix, "shadow_denied")?,
        })
    }
}

/// The RBAC filter of one connection manager.
#[derive(Debug)]
pub struct RbacFilter {
    pub own: RbacRules,
    pub stats: RbacStats,
    /// Some rules (the filter's or a route's) read TLS details: connections keep them.
    pub reads_tls: bool,
}

impl RbacFilter {
    /// Shadow rules are counted; the enforced rules decide. `rules` is the route's (or virtual
    /// host's) override when there is one, else the filter's own.
    pub fn decide(&self, rules: &RbacRules, s: &Subject<'_>) -> bool {
        if let Some(shadow) = &rules.shadow {
            if shadow.allows(s) {
                self.stats.shadow_allowed.inc();
            } else {
                self.stats.shadow_denied.inc();
            }
        }
        let Some(engine) = &rules.rules else {
            return true;
        };
        if engine.allows(s) {
            self.stats.allowed.inc();
            true
        } else {
            self.stats.denied.inc();
            false
        }
    }
}

/// A network RBAC filter (`envoy.filters.network.rbac`) of a filter chain: it decides once per
/// connection, before the chain's terminal filter (tcp_proxy or the HTTP connection manager),
/// from what a connection shows (addresses, ports, SNI, client certificate); header and path
/// rules see an empty request, as in Envoy. A denied connection is closed.
#[derive(Debug)]
pub struct NetworkRbac {
    pub own: RbacRules,
    stats: [IntCounter; 4],
}

impl NetworkRbac {
    /// Envoy's statistics `STAT_PREFIX.rbac.[SHADOW_PREFIX]{allowed,denied,shadow_allowed,
    /// shadow_denied}` as Envoy 1.40 tags them: under Istio's `tcp.` prefix
    /// `envoy_NAME{envoy_rbac_prefix="tcp",envoy_tcp_prefix="rbac"}` (compared with Envoy's in
    /// `tests/istio_authz.rs`); under another prefix `envoy_rbac_NAME{envoy_rbac_prefix=PREFIX}`.
    pub fn new(
        own: RbacRules,
        m: &Metrics,
        stat_prefix: &str,
        shadow_prefix: &str,
    ) -> Result<NetworkRbac, prometheus::Error> {
        let prefix = stat_prefix.trim_end_matches('.');
        let c = |stat: String| -> Result<IntCounter, prometheus::Error> {
            let help = "Network RBAC filter statistic (Envoy's)";
            if prefix == "tcp" {
                Ok(m.named_counter(
                    &format!("envoy_{stat}"),
                    help,
                    &["envoy_rbac_prefix", "envoy_tcp_prefix"],
                )?
                .with_label_values(&["tcp", "rbac"]))
            } else {
                Ok(
                    m.named_counter(&format!("envoy_rbac_{stat}"), help, &["envoy_rbac_prefix"])?
                        .with_label_values(&[prefix]),
                )
            }
        };
        Ok(NetworkRbac {
            own,
            stats: [
                c("allowed".into())?,
                c("denied".into())?,
                c(format!("{shadow_prefix}shadow_allowed"))?,
                c(format!("{shadow_prefix}shadow_denied"))?,
            ],
        })
    }

    /// Whether a connection from `peer` to `local` may go on.
    pub fn allows(&self, peer: SocketAddr, local: SocketAddr, tls: Option<&TlsPeer>) -> bool {
        let headers = http::HeaderMap::new();
        let request = RequestView {
            method: "",
            scheme: "",
            authority: "",
            path: "",
            query: "",
            path_and_query: "",
            headers: &headers,
        };
        let s = Subject {
            request: &request,
            peer,
            remote: peer.ip(),
            local,
            tls,
        };
        let [allowed, denied, shadow_allowed, shadow_denied] = &self.stats;
        if let Some(shadow) = &self.own.shadow {
            if shadow.allows(&s) {
                shadow_allowed.inc();
            } else {
                shadow_denied.inc();
            }
        }
        let Some(engine) = &self.own.rules else {
            return true;
        };
        if engine.allows(&s) {
            allowed.inc();
            true
        } else {
            denied.inc();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges() {
        let c = |a: &str, l| Cidr {
            addr: a.parse().unwrap(),
            prefix_len: l,
        };
        assert!(c("10.1.0.0", 16).contains("10.1.200.3".parse().unwrap()));
        assert!(!c("10.1.0.0", 16).contains("10.2.0.1".parse().unwrap()));
        assert!(c("0.0.0.0", 0).contains("192.0.2.1".parse().unwrap()));
        assert!(c("127.0.0.1", 32).contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c("127.0.0.1", 32).contains("::1".parse().unwrap()));
        assert!(c("2001:db8::", 32).contains("2001:db8:1::1".parse().unwrap()));
    }
}
