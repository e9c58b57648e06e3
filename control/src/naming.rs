//! Istio's names: short hosts resolved in a namespace, and cluster names
//! `outbound|PORT|SUBSET|FQDN`.

/// The DNS suffix of Kubernetes-style service names.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Resolve a host the way Istio does: a name without dots is a service of `namespace`
/// (`reviews` in `default` → `reviews.default.svc.cluster.local`); anything else (an FQDN, a
/// wildcard, `*`) is taken as written, lowercased.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    let h = host.to_ascii_lowercase();
    if h == "*" || h.contains('.') {
        h
    } else {
        format!("{h}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

/// Does a host pattern (`*`, `*.example.com` or an exact name) match `host`?
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => false,
    }
}

/// Istio's outbound cluster name.
pub fn cluster_name(port: u32, subset: &str, fqdn: &str) -> String {
    format!("outbound|{port}|{subset}|{fqdn}")
}

/// The names a client may use for a service in the `Host` header: the FQDN and, for
/// `NAME.NS.svc.cluster.local`, `NAME`, `NAME.NS` and `NAME.NS.svc`.
pub fn host_aliases(fqdn: &str) -> Vec<String> {
    let mut out = vec![fqdn.to_string()];
    if let Some(prefix) = fqdn.strip_suffix(&format!(".{CLUSTER_DOMAIN}")) {
        let parts: Vec<&str> = prefix.split('.').collect();
        if parts.len() == 2 {
            out.push(parts[0].to_string());
            out.push(prefix.to_string());
            out.push(format!("{prefix}.svc"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_their_namespace() {
        assert_eq!(
            resolve_host("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("Reviews", "bookinfo"),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("www.googleapis.com", "x"),
            "www.googleapis.com"
        );
        assert_eq!(resolve_host("*", "x"), "*");
        assert_eq!(resolve_host("*.example.com", "x"), "*.example.com");
    }

    #[test]
    fn wildcards() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "uk.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("a.b", "a.b"));
        assert!(!host_matches("a.b", "a.c"));
    }

    #[test]
    fn aliases_of_a_kubernetes_name() {
        assert_eq!(
            host_aliases("reviews.default.svc.cluster.local"),
            vec![
                "reviews.default.svc.cluster.local",
                "reviews",
                "reviews.default",
                "reviews.default.svc"
            ]
        );
        assert_eq!(host_aliases("api.example.com"), vec!["api.example.com"]);
    }
}
