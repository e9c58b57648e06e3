//! Istio's `AuthorizationPolicy` (`security.istio.io/v1`, `v1beta1`): which requests a workload
//! (a gateway, or a sidecar's inbound side) lets through.
//!
//! Read as Istio reads it: `selector.matchLabels` (none: every workload of the namespace, or of
//! the mesh in the root namespace), `action` `ALLOW` (the default), `DENY` or `AUDIT`, and
//! `rules` of `from` sources, `to` operations and `when` conditions. What needs something Sluice
//! does not have is refused by name: `CUSTOM` and `provider` (an external authorizer),
//! `requestPrincipals` and `request.auth.*` (JWT authentication), `targetRef(s)` (Gateway API),
//! path templates (`{*}`, `{**}`) and `experimental.*` keys. The related kinds
//! `PeerAuthentication` and `RequestAuthentication` are refused by name too: Sluice has no mTLS
//! between proxies and no JWT filter, so accepting them would silently change what is allowed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::error::FieldError;

/// The API group of Istio's security resources.
pub const GROUP: &str = "security.istio.io";
/// Its versions Sluice reads.
pub const VERSIONS: &[&str] = &["v1", "v1beta1"];

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    /// `ALLOW` (default), `DENY`, `AUDIT`, `CUSTOM`.
    pub action: Option<String>,
    pub provider: Option<serde_json::Value>,
    /// None and empty are the same to Istio: a policy that matches nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// `selector`: the workloads a policy applies to, by label.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One rule: it matches a request when one of `from`, one of `to` and every `when` do (an
/// absent list matches anything).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

/// Who sends the request. Each field matches when one of its values does; `not…` fields when
/// none does; a source matches when all its fields do.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

/// What the request asks for.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `when`: a key (`request.headers[NAME]`, `source.ip`, …) and the values it may or may not have.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// The `when` keys Sluice reads.
pub const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

/// An address or CIDR range (`1.2.3.4`, `10.0.0.0/8`, `fd00::/8`): the address and prefix length.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr.trim().parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((addr, len))
}

/// The header a `request.headers[NAME]` key names.
pub fn header_key(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")?
        .strip_suffix(']')
        .filter(|h| !h.is_empty())
}

fn refuse(errors: &mut Vec<FieldError>, path: String, why: &str) {
    errors.push(FieldError::new(path, format!("not supported: {why}")));
}

/// Refuse what Sluice cannot enforce, and invalid values.
pub fn check(p: &AuthorizationPolicy, errors: &mut Vec<FieldError>) {
    match p.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" | "DENY" | "AUDIT" => {}
        "CUSTOM" => refuse(
            errors,
            "spec.action".into(),
            "CUSTOM (an external authorizer, Envoy's ext_authz)",
        ),
        other => errors.push(FieldError::new(
            "spec.action",
            format!("`{other}` is not ALLOW, DENY, AUDIT or CUSTOM"),
        )),
    }
    if p.provider.is_some() {
        refuse(errors, "spec.provider".into(), "external authorizers");
    }
    if p.target_ref.is_some() {
        refuse(
            errors,
            "spec.targetRef".into(),
            "Gateway API targets; use selector",
        );
    }
    if !p.target_refs.is_empty() {
        refuse(
            errors,
            "spec.targetRefs".into(),
            "Gateway API targets; use selector",
        );
    }
    for (i, rule) in p.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, f) in rule.from.iter().enumerate() {
            let s = &f.source;
            let at = format!("{at}.from[{j}].source");
            for (name, v) in [
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
            ] {
                if !v.is_empty() {
                    refuse(
                        errors,
                        format!("{at}.{name}"),
                        "JWT authentication (RequestAuthentication)",
                    );
                }
            }
            for (name, v) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, c) in v.iter().enumerate() {
                    if parse_cidr(c).is_none() {
                        errors.push(FieldError::new(
                            format!("{at}.{name}[{k}]"),
                            format!("`{c}` is not an address or CIDR range"),
                        ));
                    }
                }
            }
        }
        for (j, t) in rule.to.iter().enumerate() {
            let o = &t.operation;
            let at = format!("{at}.to[{j}].operation");
            for (name, v) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                for (k, port) in v.iter().enumerate() {
                    if port.parse::<u16>().is_err() {
                        errors.push(FieldError::new(
                            format!("{at}.{name}[{k}]"),
                            format!("`{port}` is not a port"),
                        ));
                    }
                }
            }
            for (name, v) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                for (k, path) in v.iter().enumerate() {
                    if path.contains('{') {
                        refuse(
                            errors,
                            format!("{at}.{name}[{k}]"),
                            "path templates (`{*}`, `{**}`)",
                        );
                    }
                }
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let at = format!("{at}.when[{j}]");
            let key = c.key.as_str();
            if key.starts_with("request.auth.") {
                refuse(
                    errors,
                    format!("{at}.key"),
                    "JWT authentication (request.auth.*)",
                );
            } else if header_key(key).is_none() && !CONDITION_KEYS.contains(&key) {
                refuse(
                    errors,
                    format!("{at}.key"),
                    &format!(
                        "`{key}` (supported: request.headers[NAME], {})",
                        CONDITION_KEYS.join(", ")
                    ),
                );
            }
            let ips = matches!(key, "source.ip" | "remote.ip" | "destination.ip");
            for (name, v) in [("values", &c.values), ("notValues", &c.not_values)] {
                for (k, value) in v.iter().enumerate() {
                    let bad = (ips && parse_cidr(value).is_none())
                        || (key == "destination.port" && value.parse::<u16>().is_err());
                    if bad {
                        errors.push(FieldError::new(
                            format!("{at}.{name}[{k}]"),
                            format!("`{value}` is not valid for `{key}`"),
                        ));
                    }
                }
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                errors.push(FieldError::new(at, "values or notValues is required"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(doc: &str) -> String {
        match crate::istio::parse_text("p.yaml", doc) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// What Sluice cannot enforce is refused by name, with the line of the field.
    #[test]
    fn what_cannot_be_enforced_is_refused_by_name() {
        let head = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n";
        for (spec, needle) in [
            (
                "  action: CUSTOM\n  provider: {name: opa}\n",
                "spec.action: not supported: CUSTOM",
            ),
            (
                "  rules:\n  - from: [{source: {requestPrincipals: ['*']}}]\n",
                "requestPrincipals: not supported: JWT",
            ),
            (
                "  rules:\n  - when: [{key: 'request.auth.claims[iss]', values: [x]}]\n",
                "when[0].key: not supported: JWT",
            ),
            (
                "  rules:\n  - when: [{key: 'experimental.envoy.filters.a[b]', values: [x]}]\n",
                "not supported: `experimental.envoy.filters.a[b]`",
            ),
            (
                "  rules:\n  - to: [{operation: {paths: ['/a/{*}']}}]\n",
                "paths[0]: not supported: path templates",
            ),
            (
                "  rules:\n  - to: [{operation: {ports: [http]}}]\n",
                "`http` is not a port",
            ),
            (
                "  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/40]}}]\n",
                "is not an address or CIDR range",
            ),
            (
                "  rules:\n  - when: [{key: source.ip}]\n",
                "values or notValues is required",
            ),
            (
                "  targetRefs: [{kind: Gateway, name: gw}]\n",
                "spec.targetRefs: not supported",
            ),
            (
                "  rules:\n  - from: [{source: {trustDomains: [td]}}]\n",
                "trustDomains",
            ),
        ] {
            let e = refusal(&format!("{head}{spec}"));
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(e.contains("p.yaml:"), "located: {e}");
        }
        for kind in ["PeerAuthentication", "RequestAuthentication"] {
            let e = refusal(&format!(
                "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: p}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
            ));
            assert!(e.contains(&format!("kind `{kind}` not supported")), "{e}");
        }
    }

    #[test]
    fn cidrs_and_header_keys() {
        assert_eq!(
            parse_cidr("1.2.3.4"),
            Some(("1.2.3.4".parse().unwrap(), 32))
        );
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Some(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(parse_cidr("fd00::/8"), Some(("fd00::".parse().unwrap(), 8)));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("host"), None);
        assert_eq!(header_key("request.headers[x-user]"), Some("x-user"));
        assert_eq!(header_key("request.headers[]"), None);
        assert_eq!(header_key("source.ip"), None);
    }
}
