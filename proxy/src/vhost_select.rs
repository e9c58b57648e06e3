//! Virtual host selection by `:authority`, with Envoy's precedence: an exact domain, then the longest
//! suffix wildcard (`*.example.com`, `*-bar.example.com`), then the longest prefix wildcard
//! (`example.*`), then `*`. Domains are compared case-insensitively; a wildcard matches at least one
//! character. Exact hosts are a hash lookup, so selection cost does not grow with their number.

use std::collections::HashMap;

/// Why a set of domains is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("domain `{0}` appears in more than one virtual host")]
    Duplicate(String),
    #[error("domain `{0}`: only a leading or trailing `*` is allowed")]
    BadWildcard(String),
    #[error("empty domain")]
    Empty,
}

/// Index from domain patterns to virtual host indices.
#[derive(Debug, Default, Clone)]
pub struct VhostSelector {
    exact: HashMap<String, usize>,
    /// (suffix without `*`, vhost), longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// (prefix without `*`, vhost), longest prefix first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl VhostSelector {
    /// Build from `(domain, vhost index)` pairs.
    pub fn new<'a>(
        domains: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Result<Self, DomainError> {
        let mut s = VhostSelector::default();
        let mut seen = std::collections::HashSet::new();
        for (domain, idx) in domains {
            let d = domain.to_ascii_lowercase();
            if d.is_empty() {
                return Err(DomainError::Empty);
            }
            if !seen.insert(d.clone()) {
                return Err(DomainError::Duplicate(domain.to_string()));
            }
            let stars = d.matches('*').count();
            if d == "*" {
                s.any = Some(idx);
            } else if stars == 1 && d.starts_with('*') {
                s.suffixes.push((d[1..].to_string(), idx));
            } else if stars == 1 && d.ends_with('*') {
                s.prefixes.push((d[..d.len() - 1].to_string(), idx));
            } else if stars == 0 {
                s.exact.insert(d, idx);
            } else {
                return Err(DomainError::BadWildcard(domain.to_string()));
            }
        }
        // Stable sort keeps configuration order among equal lengths.
        s.suffixes.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        s.prefixes.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Ok(s)
    }

    /// The virtual host for `host` (already lower-case).
    pub fn select(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        for (suffix, i) in &self.suffixes {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        for (prefix, i) in &self.prefixes {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(*i);
            }
        }
        self.any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_exact_suffix_prefix_any() {
        let s = VhostSelector::new([
            ("*", 0),
            ("foo.*", 1),
            ("*.example.com", 2),
            ("*.api.example.com", 3),
            ("www.example.com", 4),
            ("Www.Example.ORG", 5),
            ("foo.bar.*", 6),
        ])
        .unwrap();
        assert_eq!(s.select("www.example.com"), Some(4));
        assert_eq!(
            s.select("x.api.example.com"),
            Some(3),
            "longest suffix wins"
        );
        assert_eq!(s.select("x.example.com"), Some(2));
        assert_eq!(s.select("foo.example.com"), Some(2), "suffix beats prefix");
        assert_eq!(s.select("foo.bar.net"), Some(6), "longest prefix wins");
        assert_eq!(s.select("foo.net"), Some(1));
        assert_eq!(s.select("other"), Some(0));
        assert_eq!(s.select("www.example.org"), Some(5), "case-insensitive");
        assert_eq!(s.select("example.com"), Some(0), "wildcard needs one char");
    }

    #[test]
    fn no_default_means_no_match() {
        let s = VhostSelector::new([("a.com", 0)]).unwrap();
        assert_eq!(s.select("b.com"), None);
    }

    #[test]
    fn duplicates_and_bad_wildcards_are_rejected() {
        assert_eq!(
            VhostSelector::new([("a.com", 0), ("A.com", 1)]).unwrap_err(),
            DomainError::Duplicate("A.com".into())
        );
        assert!(VhostSelector::new([("a.*.com", 0)]).is_err());
        assert!(VhostSelector::new([("*a*", 0)]).is_err());
    }
}
