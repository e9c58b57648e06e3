//! Istio `AuthorizationPolicy` → Envoy RBAC HTTP filters, as Istio's builder makes them.
//!
//! A policy applies to a workload (a gateway, or a sidecar's inbound side) in its own namespace
//! whose labels match its `selector` (no selector: every workload there); a policy in the root
//! namespace (`istio-system`) applies so to workloads of every namespace. The applicable policies
//! become up to three filters, in Istio's order: `AUDIT` (RBAC `LOG`), `DENY`, then `ALLOW`.
//! With no `ALLOW` policy everything not denied passes; with one, a request must match one of
//! them. Each rule is one RBAC policy named `ns[NS]-policy[NAME]-rule[N]`: its `to` operations
//! (and the `when` conditions on the destination) are the permissions, its `from` sources (and
//! the other conditions) the principals. A policy without rules matches nothing (an `ALLOW` one
//! then denies everything). A policy annotated `istio.io/dry-run: "true"` is evaluated and
//! counted (shadow rules) but not enforced.
//!
//! Values are matched as Istio matches them: `*` is "present", a leading or trailing `*` a suffix
//! or prefix; hosts ignore case; `principals` are SPIFFE names (`spiffe://` added) and
//! `namespaces` and `serviceAccounts` match inside them. Sluice has no mTLS between proxies, so
//! those match only clients presenting such a certificate to a TLS listener.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sluice_config::istio::{Resource, Spec};
use sluice_config::istio_security::{header_key, parse_cidr, AuthorizationPolicy, Rule};

/// Istio's root namespace (`meshConfig.rootNamespace`): its policies apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const DRY_RUN: &str = "istio.io/dry-run";

/// The RBAC filters (`http_filters` entries, in order) for a workload with `labels` in
/// `namespace`; empty when no policy applies.
pub fn rbac_filters(
    resources: &[Resource],
    labels: &BTreeMap<String, String>,
    namespace: &str,
) -> Vec<Value> {
    filters(resources, labels, namespace, Protocol::Http)
}

/// The network RBAC filters (filter chain entries, before `tcp_proxy`) for a workload's TCP
/// traffic, as Istio builds them: rules are generated without the HTTP-only fields (hosts,
/// methods, paths, request headers); an `ALLOW` rule that has one is left out (a smaller
/// allow), a `DENY` or `AUDIT` rule loses it (a wider deny).
pub fn network_rbac_filters(
    resources: &[Resource],
    labels: &BTreeMap<String, String>,
    namespace: &str,
) -> Vec<Value> {
    filters(resources, labels, namespace, Protocol::Tcp)
}

/// Which traffic the filters are for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Tcp,
}

fn filters(
    resources: &[Resource],
    labels: &BTreeMap<String, String>,
    namespace: &str,
    protocol: Protocol,
) -> Vec<Value> {
    let applicable: Vec<(&Resource, &AuthorizationPolicy)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::AuthorizationPolicy(p) => Some((r, p.as_ref())),
            _ => None,
        })
        .filter(|(r, p)| {
            let ns = r.metadata.namespace();
            (ns == namespace || ns == ROOT_NAMESPACE)
                && p.selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect();
    let mut filters = Vec::new();
    for (action, rbac_action, shadow_prefix) in [
        ("AUDIT", "LOG", ""),
        ("DENY", "DENY", "istio_dry_run_deny_"),
        ("ALLOW", "ALLOW", "istio_dry_run_allow_"),
    ] {
        let mut enforced: Option<Map<String, Value>> = None;
        let mut shadow: Option<Map<String, Value>> = None;
        for (r, p) in &applicable {
            if p.action.as_deref().unwrap_or("ALLOW") != action {
                continue;
            }
            let dry_run = r
                .metadata
                .annotations
                .get(DRY_RUN)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let set =
                if dry_run { &mut shadow } else { &mut enforced }.get_or_insert_with(Map::new);
            let (ns, name) = (r.metadata.namespace(), &r.metadata.name);
            if p.rules.is_empty() {
                set.insert(
                    format!("ns[{ns}]-policy[{name}]-rule[0]"),
                    json!({"permissions": [{"not_rule": {"any": true}}], "principals": [{"not_id": {"any": true}}]}),
                );
            }
            for (i, rule) in p.rules.iter().enumerate() {
                if let Some(policy) = rbac_policy(rule, ns, protocol, action == "ALLOW") {
                    set.insert(format!("ns[{ns}]-policy[{name}]-rule[{i}]"), policy);
                }
            }
        }
        if enforced.is_none() && shadow.is_none() {
            continue;
        }
        let mut config = match protocol {
            Protocol::Http => json!({"@type": RBAC_TYPE}),
            Protocol::Tcp => json!({"@type": NETWORK_RBAC_TYPE, "stat_prefix": "tcp."}),
        };
        if let Some(policies) = enforced {
            config["rules"] = json!({"action": rbac_action, "policies": policies});
        }
        if let Some(policies) = shadow {
            config["shadow_rules"] = json!({"action": rbac_action, "policies": policies});
            config["shadow_rules_stat_prefix"] = json!(shadow_prefix);
        }
        let name = match protocol {
            Protocol::Http => "envoy.filters.http.rbac",
            Protocol::Tcp => "envoy.filters.network.rbac",
        };
        filters.push(json!({"name": name, "typed_config": config}));
    }
    filters
}

/// Istio's string forms: `*` any non-empty value, `*x` a suffix, `x*` a prefix, else exact; a
/// `prefix` (such as `spiffe://`) is put before the value.
fn string_match(value: &str, prefix: &str) -> Value {
    if value == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(suffix) = value.strip_prefix('*') {
        if prefix.is_empty() {
            json!({"suffix": suffix})
        } else {
            json!({"safe_regex": {"regex": format!("{prefix}.*{}", regex_quote(suffix))}})
        }
    } else if let Some(p) = value.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{p}")})
    } else {
        json!({"exact": format!("{prefix}{value}")})
    }
}

/// A header matcher in Istio's forms (`*`: present).
fn header_match(name: &str, value: &str, ignore_case: bool) -> Value {
    if value == "*" {
        return json!({"name": name, "present_match": true});
    }
    let mut m = if let Some(suffix) = value.strip_prefix('*') {
        json!({"suffix": suffix})
    } else if let Some(prefix) = value.strip_suffix('*') {
        json!({"prefix": prefix})
    } else {
        json!({"exact": value})
    };
    if ignore_case {
        m["ignore_case"] = json!(true);
    }
    json!({"name": name, "string_match": m})
}

fn regex_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn cidr(value: &str) -> Value {
    match parse_cidr(value) {
        Some((addr, len)) => json!({"address_prefix": addr.to_string(), "prefix_len": len}),
        // Checked when the policy was read.
        None => json!({"address_prefix": "0.0.0.0", "prefix_len": 32}),
    }
}

fn authenticated(m: Value) -> Value {
    json!({"authenticated": {"principal_name": m}})
}

fn namespace_match(value: &str) -> Value {
    let parts: Vec<String> = value.split('*').map(regex_quote).collect();
    authenticated(json!({"safe_regex": {"regex": format!(".*/ns/{}/.*", parts.join(".*"))}}))
}

fn service_account_match(value: &str, policy_namespace: &str) -> Value {
    let (ns, sa) = value.split_once('/').unwrap_or((policy_namespace, value));
    authenticated(json!({"safe_regex": {"regex": format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        regex_quote(ns),
        regex_quote(sa)
    )}}))
}

/// One field of a rule: the `or` of its values' matchers, and `not` the `or` of its
/// `not…` values' matchers, each left out when it has no values.
fn field(
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> Value,
    kind: Kind,
) -> Vec<Value> {
    let (or, not) = match kind {
        Kind::Permission => ("or_rules", "not_rule"),
        Kind::Principal => ("or_ids", "not_id"),
    };
    let mut out = Vec::new();
    if !values.is_empty() {
        out.push(json!({or: {kind.list(): values.iter().map(|v| one(v)).collect::<Vec<_>>()}}));
    }
    if !not_values.is_empty() {
        out.push(json!({not: {or: {kind.list(): not_values.iter().map(|v| one(v)).collect::<Vec<_>>()}}}));
    }
    out
}

#[derive(Clone, Copy)]
enum Kind {
    Permission,
    Principal,
}

impl Kind {
    fn list(self) -> &'static str {
        match self {
            Kind::Permission => "rules",
            Kind::Principal => "ids",
        }
    }
}

/// One rule as an RBAC policy (Istio's `Model::Generate`). For TCP, HTTP-only fields are left
/// out of the rule, or, in an `ALLOW` rule (`allow`), leave the whole rule out (`None`).
fn rbac_policy(
    rule: &Rule,
    policy_namespace: &str,
    protocol: Protocol,
    allow: bool,
) -> Option<Value> {
    use Kind::{Permission as P, Principal as I};
    if protocol == Protocol::Tcp {
        let http_only = rule.to.iter().any(|t| {
            let o = &t.operation;
            [
                &o.hosts,
                &o.not_hosts,
                &o.methods,
                &o.not_methods,
                &o.paths,
                &o.not_paths,
            ]
            .iter()
            .any(|v| !v.is_empty())
        }) || rule.when.iter().any(|c| header_key(&c.key).is_some());
        if http_only && allow {
            return None;
        }
    }
    let tcp = protocol == Protocol::Tcp;
    // `when` conditions, split between permissions (destination) and principals (source).
    let (mut base_perm, mut base_id) = (Vec::new(), Vec::new());
    for c in &rule.when {
        let (v, n) = (&c.values, &c.not_values);
        match c.key.as_str() {
            "destination.ip" => {
                base_perm.extend(field(v, n, |x| json!({"destination_ip": cidr(x)}), P))
            }
            "destination.port" => base_perm.extend(field(
                v,
                n,
                |x| json!({"destination_port": x.parse::<u16>().unwrap_or(0)}),
                P,
            )),
            "connection.sni" => base_perm.extend(field(
                v,
                n,
                |x| json!({"requested_server_name": string_match(x, "")}),
                P,
            )),
            "source.ip" => base_id.extend(field(v, n, |x| json!({"direct_remote_ip": cidr(x)}), I)),
            "remote.ip" => base_id.extend(field(v, n, |x| json!({"remote_ip": cidr(x)}), I)),
            "source.namespace" => base_id.extend(field(v, n, namespace_match, I)),
            "source.principal" => base_id.extend(field(
                v,
                n,
                |x| authenticated(string_match(x, "spiffe://")),
                I,
            )),
            key => {
                if let Some(h) = header_key(key).filter(|_| !tcp) {
                    base_id.extend(field(
                        v,
                        n,
                        |x| json!({"header": header_match(h, x, false)}),
                        I,
                    ));
                }
            }
        }
    }
    let and_perm = |fields: Vec<Value>| {
        let rules = if fields.is_empty() {
            vec![json!({"any": true})]
        } else {
            fields
        };
        json!({"and_rules": {"rules": rules}})
    };
    let and_id = |fields: Vec<Value>| {
        let ids = if fields.is_empty() {
            vec![json!({"any": true})]
        } else {
            fields
        };
        json!({"and_ids": {"ids": ids}})
    };
    let mut permissions = Vec::new();
    for to in &rule.to {
        let o = &to.operation;
        let mut f = Vec::new();
        // HTTP-only fields; for TCP a DENY or AUDIT rule is generated without them.
        if !tcp {
            f.extend(field(
                &o.hosts,
                &o.not_hosts,
                |x| json!({"header": header_match(":authority", x, true)}),
                P,
            ));
            f.extend(field(
                &o.methods,
                &o.not_methods,
                |x| json!({"header": header_match(":method", x, false)}),
                P,
            ));
            f.extend(field(
                &o.paths,
                &o.not_paths,
                |x| json!({"url_path": {"path": string_match(x, "")}}),
                P,
            ));
        }
        f.extend(field(
            &o.ports,
            &o.not_ports,
            |x| json!({"destination_port": x.parse::<u16>().unwrap_or(0)}),
            P,
        ));
        f.extend(base_perm.iter().cloned());
        permissions.push(and_perm(f));
    }
    if rule.to.is_empty() {
        permissions.push(and_perm(base_perm.clone()));
    }
    let mut principals = Vec::new();
    for from in &rule.from {
        let s = &from.source;
        let mut f = Vec::new();
        f.extend(field(
            &s.principals,
            &s.not_principals,
            |x| authenticated(string_match(x, "spiffe://")),
            I,
        ));
        f.extend(field(
            &s.service_accounts,
            &s.not_service_accounts,
            |x| service_account_match(x, policy_namespace),
            I,
        ));
        f.extend(field(&s.namespaces, &s.not_namespaces, namespace_match, I));
        f.extend(field(
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            |x| json!({"remote_ip": cidr(x)}),
            I,
        ));
        f.extend(field(
            &s.ip_blocks,
            &s.not_ip_blocks,
            |x| json!({"direct_remote_ip": cidr(x)}),
            I,
        ));
        f.extend(base_id.iter().cloned());
        principals.push(and_id(f));
    }
    if rule.from.is_empty() {
        principals.push(and_id(base_id));
    }
    Some(json!({"permissions": permissions, "principals": principals}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::resources;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Istio's own builder test data (`allow-empty-rule`, `allow-nil-rule`, `deny-empty-rule`),
    /// and which workloads a policy reaches.
    #[test]
    fn policies_apply_and_translate_as_istio_builds_them() {
        let r = resources(
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-none, namespace: foo}
spec:
  selector: {matchLabels: {app: other}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec:
  action: DENY
  rules: [{}]
"#,
        );
        let f = rbac_filters(&r, &labels(&[("app", "httpbin")]), "foo");
        assert_eq!(f.len(), 2, "DENY then ALLOW: {f:#?}");
        assert_eq!(f[0]["typed_config"]["rules"]["action"], "DENY");
        assert_eq!(
            f[0]["typed_config"]["rules"]["policies"]["ns[istio-system]-policy[deny-all]-rule[0]"],
            json!({"permissions": [{"and_rules": {"rules": [{"any": true}]}}], "principals": [{"and_ids": {"ids": [{"any": true}]}}]})
        );
        assert_eq!(
            f[1]["typed_config"]["rules"]["policies"],
            json!({"ns[foo]-policy[allow-all]-rule[0]": {"permissions": [{"and_rules": {"rules": [{"any": true}]}}], "principals": [{"and_ids": {"ids": [{"any": true}]}}]}})
        );
        let other = rbac_filters(&r, &labels(&[("app", "other")]), "foo");
        assert_eq!(
            other[1]["typed_config"]["rules"]["policies"]["ns[foo]-policy[allow-none]-rule[0]"],
            json!({"permissions": [{"not_rule": {"any": true}}], "principals": [{"not_id": {"any": true}}]})
        );
        // Another namespace sees only the root namespace's policy.
        assert_eq!(
            rbac_filters(&r, &labels(&[("app", "httpbin")]), "bar").len(),
            1
        );
    }

    /// The field translations of Istio's `allow-full-rule` builder test, for the fields Sluice
    /// reads.
    #[test]
    fn rule_fields_match_istios_generated_config() {
        let r = resources(
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-1, namespace: foo, annotations: {istio.io/dry-run: "false"}}
spec:
  rules:
  - from:
    - source:
        serviceAccounts: ["my-ns/my-sa", "sa-only"]
        principals: ["principal", "principal-prefix-*", "*-suffix-principal", "*"]
        namespaces: ["ns", "ns-prefix-*", "*"]
        ipBlocks: ["1.2.3.4", "5.6.0.0/16"]
        notRemoteIpBlocks: ["9.0.0.1"]
    to:
    - operation:
        methods: ["GET", "*"]
        hosts: ["exact.com", "*.suffix.com", "prefix.*"]
        ports: ["80"]
        paths: ["/exact", "/prefix/*", "*/suffix", "*"]
    when:
    - {key: "request.headers[X-header]", values: ["header", "*"], notValues: ["not-header"]}
    - {key: destination.port, values: ["91"]}
    - {key: connection.sni, values: ["*.suffix.com"]}
"#,
        );
        let f = rbac_filters(&r, &BTreeMap::new(), "foo");
        let p = &f[0]["typed_config"]["rules"]["policies"]["ns[foo]-policy[httpbin-1]-rule[0]"];
        let perm = &p["permissions"][0]["and_rules"]["rules"];
        assert_eq!(
            perm[0]["or_rules"]["rules"],
            json!([
                {"header": {"name": ":authority", "string_match": {"exact": "exact.com", "ignore_case": true}}},
                {"header": {"name": ":authority", "string_match": {"suffix": ".suffix.com", "ignore_case": true}}},
                {"header": {"name": ":authority", "string_match": {"prefix": "prefix.", "ignore_case": true}}},
            ])
        );
        assert_eq!(
            perm[1]["or_rules"]["rules"][1],
            json!({"header": {"name": ":method", "present_match": true}})
        );
        assert_eq!(
            perm[2]["or_rules"]["rules"],
            json!([
                {"url_path": {"path": {"exact": "/exact"}}},
                {"url_path": {"path": {"prefix": "/prefix/"}}},
                {"url_path": {"path": {"suffix": "/suffix"}}},
                {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}},
            ])
        );
        assert_eq!(
            perm[3],
            json!({"or_rules": {"rules": [{"destination_port": 80}]}})
        );
        assert_eq!(
            perm[4],
            json!({"or_rules": {"rules": [{"destination_port": 91}]}})
        );
        assert_eq!(
            perm[5],
            json!({"or_rules": {"rules": [{"requested_server_name": {"suffix": ".suffix.com"}}]}})
        );
        let ids = &p["principals"][0]["and_ids"]["ids"];
        let name = |i: usize, j: usize| {
            ids[i]["or_ids"]["ids"][j]["authenticated"]["principal_name"].clone()
        };
        assert_eq!(name(0, 0), json!({"exact": "spiffe://principal"}));
        assert_eq!(name(0, 1), json!({"prefix": "spiffe://principal-prefix-"}));
        assert_eq!(
            name(0, 2),
            json!({"safe_regex": {"regex": "spiffe://.*-suffix-principal"}})
        );
        assert_eq!(name(0, 3), json!({"safe_regex": {"regex": ".+"}}));
        assert_eq!(
            name(1, 0),
            json!({"safe_regex": {"regex": "spiffe://.+/ns/my-ns/(.+/|)sa/my-sa(/.+)?"}})
        );
        assert_eq!(
            name(1, 1),
            json!({"safe_regex": {"regex": "spiffe://.+/ns/foo/(.+/|)sa/sa-only(/.+)?"}})
        );
        assert_eq!(name(2, 0), json!({"safe_regex": {"regex": ".*/ns/ns/.*"}}));
        assert_eq!(
            name(2, 1),
            json!({"safe_regex": {"regex": ".*/ns/ns-prefix-.*/.*"}})
        );
        assert_eq!(name(2, 2), json!({"safe_regex": {"regex": ".*/ns/.*/.*"}}));
        assert_eq!(
            ids[3],
            json!({"not_id": {"or_ids": {"ids": [{"remote_ip": {"address_prefix": "9.0.0.1", "prefix_len": 32}}]}}})
        );
        assert_eq!(
            ids[4]["or_ids"]["ids"][1],
            json!({"direct_remote_ip": {"address_prefix": "5.6.0.0", "prefix_len": 16}})
        );
        assert_eq!(
            ids[5]["or_ids"]["ids"],
            json!([
                {"header": {"name": "X-header", "string_match": {"exact": "header"}}},
                {"header": {"name": "X-header", "present_match": true}},
            ])
        );
        assert_eq!(
            ids[6],
            json!({"not_id": {"or_ids": {"ids": [{"header": {"name": "X-header", "string_match": {"exact": "not-header"}}}]}}})
        );
    }

    /// For TCP, as Istio: an ALLOW rule with an HTTP-only field is left out, a DENY rule keeps
    /// its other fields only (here none: it denies every connection).
    #[test]
    fn tcp_filters_leave_http_fields_out_as_istio_does() {
        let r = resources(
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mixed, namespace: foo}
spec:
  rules:
  - to: [{operation: {ports: ["5432"]}}]
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-gets, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#,
        );
        let f = network_rbac_filters(&r, &BTreeMap::new(), "foo");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0]["name"], "envoy.filters.network.rbac");
        assert_eq!(f[0]["typed_config"]["stat_prefix"], "tcp.");
        assert_eq!(
            f[0]["typed_config"]["rules"]["policies"]["ns[foo]-policy[no-gets]-rule[0]"]
                ["permissions"],
            json!([{"and_rules": {"rules": [{"any": true}]}}]),
            "a wider deny"
        );
        let allow = f[1]["typed_config"]["rules"]["policies"]
            .as_object()
            .unwrap();
        assert_eq!(allow.len(), 1, "the GET rule is left out: {allow:?}");
        assert!(allow.contains_key("ns[foo]-policy[mixed]-rule[0]"));
    }

    #[test]
    fn dry_run_policies_are_shadow_rules() {
        let r = resources(
            r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: try, namespace: foo, annotations: {istio.io/dry-run: "true"}}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
"#,
        );
        let f = rbac_filters(&r, &BTreeMap::new(), "foo");
        assert_eq!(f.len(), 1);
        let c = &f[0]["typed_config"];
        assert!(c.get("rules").is_none(), "nothing enforced: {c:#}");
        assert_eq!(c["shadow_rules"]["action"], "DENY");
        assert_eq!(c["shadow_rules_stat_prefix"], "istio_dry_run_deny_");
    }
}
