//! VirtualService delegation: an `http` route with `delegate` is replaced by the routes of the
//! VirtualService it names (a delegate: no hosts, no gateways), merged as Istio merges them.
//!
//! * Matches: each of the root route's matches with each of the delegate route's. A pair that
//!   conflicts is left out — the delegate's URI outside the root's prefix (or not the root's exact
//!   URI, or any URI under a root regex), a different method, scheme, authority, port or source
//!   namespace, a header, query parameter or source label with another value, a different
//!   `ignoreUriCase` — and a delegate route left with no match at all is dropped. A kept pair has
//!   the delegate's conditions plus the root's it does not set.
//! * The rest is the delegate route's, with the root's `rewrite`, `timeout`, `retries`, `fault`,
//!   `mirror`, `corsPolicy` and `headers` where it has none; its name is `ROOT-DELEGATE`.
//!
//! A delegate that does not exist, has hosts, or delegates again is left out with a warning.

use sluice_config::istio::{HttpMatch, HttpRoute, Resource, Spec, StringMatch, VirtualService};

/// Replace every delegating route by the merged routes of its delegate.
pub fn expand(resources: &mut [Resource], warnings: &mut Vec<String>) {
    let delegates: Vec<(String, String, VirtualService)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) if vs.hosts.is_empty() => Some((
                r.metadata.namespace().to_string(),
                r.metadata.name.clone(),
                vs.clone(),
            )),
            _ => None,
        })
        .collect();
    for r in resources.iter_mut() {
        let ns = r.metadata.namespace().to_string();
        let name = r.metadata.name.clone();
        let Spec::VirtualService(vs) = &mut r.spec else {
            continue;
        };
        if vs.hosts.is_empty() || vs.http.iter().all(|h| h.delegate.is_none()) {
            continue;
        }
        let mut http = Vec::with_capacity(vs.http.len());
        for root in std::mem::take(&mut vs.http) {
            let Some(d) = &root.delegate else {
                http.push(root);
                continue;
            };
            let dns = d.namespace.clone().unwrap_or_else(|| ns.clone());
            let Some((_, _, child)) = delegates.iter().find(|(n, m, _)| *n == dns && *m == d.name)
            else {
                warnings.push(format!(
                    "VirtualService {ns}/{name}: delegate {dns}/{} not found (a delegate has no hosts); its route is left out",
                    d.name
                ));
                continue;
            };
            for leaf in &child.http {
                if leaf.delegate.is_some() {
                    warnings.push(format!(
                        "VirtualService {dns}/{}: a delegate cannot delegate again; route left out",
                        d.name
                    ));
                    continue;
                }
                match merge_route(&root, leaf) {
                    Some(merged) => http.push(merged),
                    None => warnings.push(format!(
                        "VirtualService {dns}/{}: route `{}` conflicts with every match of {ns}/{name}'s route `{}`; left out",
                        d.name, leaf.name, root.name
                    )),
                }
            }
        }
        vs.http = http;
    }
}

/// One delegate route under its root route; `None` when every match pair conflicts.
fn merge_route(root: &HttpRoute, leaf: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &leaf.matches)?;
    let mut r = leaf.clone();
    r.matches = matches;
    r.name = match (root.name.is_empty(), leaf.name.is_empty()) {
        (_, true) => root.name.clone(),
        (true, false) => leaf.name.clone(),
        (false, false) => format!("{}-{}", root.name, leaf.name),
    };
    macro_rules! inherit {
        ($($field:ident),*) => {
            $(if r.$field.is_none() {
                r.$field = root.$field.clone();
            })*
        };
    }
    inherit!(
        rewrite,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percentage,
        mirror_percent,
        cors_policy,
        headers
    );
    Some(r)
}

fn merge_matches(root: &[HttpMatch], leaf: &[HttpMatch]) -> Option<Vec<HttpMatch>> {
    if root.is_empty() {
        return Some(leaf.to_vec());
    }
    if leaf.is_empty() {
        return Some(root.to_vec());
    }
    let merged: Vec<HttpMatch> = root
        .iter()
        .flat_map(|r| leaf.iter().filter_map(move |l| merge_match(r, l)))
        .collect();
    (!merged.is_empty()).then_some(merged)
}

/// A delegate's URI within the root's: under its prefix, or its exact URI; nothing under a regex.
fn uri_within(root: &StringMatch, leaf: &StringMatch) -> bool {
    match (root, leaf) {
        (
            StringMatch {
                prefix: Some(p), ..
            },
            StringMatch { exact: Some(e), .. },
        ) => e.starts_with(p.as_str()),
        (
            StringMatch {
                prefix: Some(p), ..
            },
            StringMatch {
                prefix: Some(q), ..
            },
        ) => q.starts_with(p.as_str()),
        (StringMatch { exact: Some(e), .. }, StringMatch { exact: Some(f), .. }) => e == f,
        _ => root == leaf,
    }
}

fn same_or_unset<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

fn maps_agree<V: PartialEq>(
    a: &std::collections::BTreeMap<String, V>,
    b: &std::collections::BTreeMap<String, V>,
) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

/// Add the root's entries the leaf does not have.
fn fill<V: Clone>(
    leaf: &mut std::collections::BTreeMap<String, V>,
    root: &std::collections::BTreeMap<String, V>,
) {
    for (k, v) in root {
        leaf.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// The leaf's match with the root's conditions it does not set; `None` when they conflict.
fn merge_match(root: &HttpMatch, leaf: &HttpMatch) -> Option<HttpMatch> {
    let uri_ok = match (&root.uri, &leaf.uri) {
        (Some(r), Some(l)) => uri_within(r, l),
        _ => true,
    };
    let ok = uri_ok
        && same_or_unset(&root.scheme, &leaf.scheme)
        && same_or_unset(&root.method, &leaf.method)
        && same_or_unset(&root.authority, &leaf.authority)
        && same_or_unset(&root.port, &leaf.port)
        && same_or_unset(&root.source_namespace, &leaf.source_namespace)
        && root.ignore_uri_case == leaf.ignore_uri_case
        && maps_agree(&root.headers, &leaf.headers)
        && maps_agree(&root.without_headers, &leaf.without_headers)
        && maps_agree(&root.query_params, &leaf.query_params)
        && maps_agree(&root.source_labels, &leaf.source_labels);
    if !ok {
        return None;
    }
    let mut m = leaf.clone();
    macro_rules! unset_from_root {
        ($($field:ident),*) => {
            $(if m.$field.is_none() {
                m.$field = root.$field.clone();
            })*
        };
    }
    unset_from_root!(uri, scheme, method, authority, port, source_namespace);
    fill(&mut m.headers, &root.headers);
    fill(&mut m.without_headers, &root.without_headers);
    fill(&mut m.query_params, &root.query_params);
    fill(&mut m.source_labels, &root.source_labels);
    if m.gateways.is_empty() {
        m.gateways = root.gateways.clone();
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> Option<StringMatch> {
        Some(StringMatch {
            prefix: Some(p.into()),
            ..Default::default()
        })
    }

    fn exact(p: &str) -> Option<StringMatch> {
        Some(StringMatch {
            exact: Some(p.into()),
            ..Default::default()
        })
    }

    #[test]
    fn uris_merge_inside_the_root_prefix_and_conflicts_drop() {
        let root = HttpMatch {
            uri: prefix("/api"),
            headers: [("x-team".to_string(), exact("a").unwrap_or_default())].into(),
            ..Default::default()
        };
        let inside = HttpMatch {
            uri: exact("/api/v2/users"),
            ..Default::default()
        };
        let outside = HttpMatch {
            uri: prefix("/web"),
            ..Default::default()
        };
        let merged = merge_match(&root, &inside).expect("inside the prefix");
        assert_eq!(merged.uri, exact("/api/v2/users"));
        assert!(merged.headers.contains_key("x-team"), "root header kept");
        assert!(merge_match(&root, &outside).is_none());
        let other_team = HttpMatch {
            headers: [("x-team".to_string(), exact("b").unwrap_or_default())].into(),
            ..Default::default()
        };
        assert!(merge_match(&root, &other_team).is_none());
        // No match on either side: the other side's matches.
        assert_eq!(
            merge_matches(&[], std::slice::from_ref(&inside)),
            Some(vec![inside.clone()])
        );
        assert_eq!(merge_matches(std::slice::from_ref(&root), &[outside]), None);
    }
}
