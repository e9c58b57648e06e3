//! Request matchers compiled from Envoy's route match types: strings, headers, query parameters
//! and paths. Matching never allocates.

use http::HeaderMap;
use regex::Regex;

/// How a string value is compared (`envoy.type.matcher.v3.StringMatcher`).
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored at both ends, like RE2 full matches.
    Regex(Regex),
}

/// A string matcher with its case handling.
#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub kind: StringMatch,
    /// Compare ASCII case-insensitively (not for regexes, as in Envoy).
    pub ignore_case: bool,
}

impl StringMatcher {
    /// A case-sensitive matcher.
    pub fn new(kind: StringMatch) -> Self {
        StringMatcher {
            kind,
            ignore_case: false,
        }
    }

    /// Build a full-match regex (Envoy's `safe_regex` must match the whole value).
    pub fn full_regex(pattern: &str) -> Result<Regex, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$"))
    }

    /// Does `value` match?
    pub fn matches(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        match &self.kind {
            StringMatch::Exact(s) => {
                if ic {
                    value.eq_ignore_ascii_case(s)
                } else {
                    value == s
                }
            }
            StringMatch::Prefix(s) => {
                value.len() >= s.len()
                    && value.is_char_boundary(s.len())
                    && eq(&value[..s.len()], s, ic)
            }
            StringMatch::Suffix(s) => {
                value.len() >= s.len()
                    && value.is_char_boundary(value.len() - s.len())
                    && eq(&value[value.len() - s.len()..], s, ic)
            }
            StringMatch::Contains(s) => {
                if ic {
                    contains_ignore_ascii_case(value, s)
                } else {
                    value.contains(s.as_str())
                }
            }
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

fn eq(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.is_empty() {
        return true;
    }
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// What a header matcher checks.
#[derive(Debug, Clone)]
pub enum HeaderCheck {
    /// The header is present (`true`) or absent (`false`).
    Present(bool),
    /// The value matches.
    Value(StringMatcher),
}

/// Which request attribute a header matcher reads.
#[derive(Debug, Clone)]
pub enum HeaderSource {
    Method,
    Authority,
    Path,
    Scheme,
    Header(http::HeaderName),
}

/// `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub source: HeaderSource,
    pub check: HeaderCheck,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// The parts of a request that route matching reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Host as used for matching (lower-case, port handling done by the caller).
    pub authority: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    /// The query string without `?` (empty when none).
    pub query: &'a str,
    /// The full `:path` (path and query).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

impl HeaderMatcher {
    /// Does the request satisfy this matcher?
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let result = match &self.source {
            HeaderSource::Method => self.check_value(Some(req.method)),
            HeaderSource::Authority => self.check_value(Some(req.authority)),
            HeaderSource::Path => self.check_value(Some(req.path_and_query)),
            HeaderSource::Scheme => self.check_value(Some(req.scheme)),
            HeaderSource::Header(name) => {
                let mut values = req.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => self.check_value(None),
                    (Some(v), None) => self.check_value(Some(v.to_str().unwrap_or(""))),
                    (Some(_), Some(_)) => self.check_each(
                        req.headers
                            .get_all(name)
                            .iter()
                            .map(|v| v.to_str().unwrap_or("")),
                    ),
                }
            }
        };
        result
    }

    /// A header present several times matches when any one value matches (Envoy 1.40 behaviour,
    /// checked against Envoy in the differential tests); a single `a,b` value must match whole.
    fn check_each<'v>(&self, mut values: impl Iterator<Item = &'v str>) -> bool {
        match &self.check {
            HeaderCheck::Present(want) => *want != self.invert,
            HeaderCheck::Value(m) => values.any(|v| m.matches(v)) != self.invert,
        }
    }

    fn check_value(&self, value: Option<&str>) -> bool {
        let value = match value {
            None if self.treat_missing_as_empty => Some(""),
            other => other,
        };
        match (&self.check, value) {
            (HeaderCheck::Present(want), v) => v.is_some() == (*want != self.invert),
            // A missing header never matches a value matcher, inverted or not (Envoy semantics).
            (HeaderCheck::Value(_), None) => false,
            (HeaderCheck::Value(m), Some(v)) => m.matches(v) != self.invert,
        }
    }
}

/// `envoy.config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    pub name: String,
    /// `None` = presence match.
    pub value: Option<StringMatcher>,
}

/// The value of the first occurrence of parameter `name` in a query string (`""` for `?name`).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

impl QueryMatcher {
    /// Does the query string satisfy this matcher? The first occurrence of the parameter counts.
    pub fn matches(&self, query: &str) -> bool {
        match (&self.value, query_param(query, &self.name)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(m), Some(v)) => m.matches(v),
        }
    }
}

/// How the path is matched (one of `prefix`, `path`, `safe_regex`, `path_separated_prefix`).
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Prefix of `:path` (query string included, as Envoy does).
    Prefix(String),
    /// The path without query equals this.
    Exact(String),
    /// The path without query fully matches.
    Regex(Regex),
    /// The path without query equals the prefix or continues with `/`.
    SeparatedPrefix(String),
}

impl PathMatch {
    /// Does the request path match? `case_sensitive = false` compares ASCII case-insensitively.
    pub fn matches(&self, req: &RequestView<'_>, case_sensitive: bool) -> bool {
        let ic = !case_sensitive;
        match self {
            PathMatch::Prefix(p) => {
                let v = req.path_and_query;
                v.len() >= p.len() && v.is_char_boundary(p.len()) && eq(&v[..p.len()], p, ic)
            }
            PathMatch::Exact(p) => eq(req.path, p, ic),
            PathMatch::Regex(r) => r.is_match(req.path),
            PathMatch::SeparatedPrefix(p) => {
                let v = req.path;
                if v.len() < p.len() || !v.is_char_boundary(p.len()) || !eq(&v[..p.len()], p, ic) {
                    return false;
                }
                v.len() == p.len() || v.as_bytes()[p.len()] == b'/'
            }
        }
    }

    /// The matched prefix, for `prefix_rewrite`.
    pub fn prefix_len(&self) -> Option<usize> {
        match self {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => Some(p.len()),
            PathMatch::Exact(p) => Some(p.len()),
            PathMatch::Regex(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &'a HeaderMap, pq: &'a str) -> RequestView<'a> {
        let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
        RequestView {
            method: "GET",
            scheme: "http",
            authority: "example.com",
            path,
            query,
            path_and_query: pq,
            headers,
        }
    }

    fn sm(kind: StringMatch, ignore_case: bool) -> StringMatcher {
        StringMatcher { kind, ignore_case }
    }

    #[test]
    fn string_matchers() {
        assert!(sm(StringMatch::Exact("abc".into()), false).matches("abc"));
        assert!(!sm(StringMatch::Exact("abc".into()), false).matches("ABC"));
        assert!(sm(StringMatch::Exact("abc".into()), true).matches("ABC"));
        assert!(sm(StringMatch::Prefix("ab".into()), false).matches("abc"));
        assert!(!sm(StringMatch::Prefix("abcd".into()), false).matches("abc"));
        assert!(sm(StringMatch::Suffix("bc".into()), false).matches("abc"));
        assert!(sm(StringMatch::Suffix("BC".into()), true).matches("abc"));
        assert!(sm(StringMatch::Contains("b".into()), false).matches("abc"));
        assert!(sm(StringMatch::Contains("B".into()), true).matches("abc"));
        assert!(!sm(StringMatch::Contains("x".into()), true).matches("abc"));
        let re = StringMatcher::full_regex("a.c").unwrap();
        assert!(sm(StringMatch::Regex(re.clone()), false).matches("abc"));
        assert!(
            !sm(StringMatch::Regex(re), false).matches("xabc"),
            "regex is a full match"
        );
        // multi-byte input never panics
        assert!(!sm(StringMatch::Prefix("é".into()), false).matches("e"));
        assert!(!sm(StringMatch::Suffix("xé".into()), false).matches("é"));
    }

    fn hm(name: &str, check: HeaderCheck, invert: bool, missing_empty: bool) -> HeaderMatcher {
        let source = match name {
            ":method" => HeaderSource::Method,
            ":authority" => HeaderSource::Authority,
            ":path" => HeaderSource::Path,
            _ => HeaderSource::Header(http::HeaderName::from_bytes(name.as_bytes()).unwrap()),
        };
        HeaderMatcher {
            source,
            check,
            invert,
            treat_missing_as_empty: missing_empty,
        }
    }

    #[test]
    fn header_matchers() {
        let mut h = HeaderMap::new();
        h.insert("lane", "test-v2".parse().unwrap());
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        let v = view(&h, "/p?x=1");
        let exact = |s: &str| HeaderCheck::Value(sm(StringMatch::Exact(s.into()), false));
        assert!(hm("lane", exact("test-v2"), false, false).matches(&v));
        assert!(!hm("lane", exact("test-v2"), true, false).matches(&v));
        assert!(hm("lane", exact("other"), true, false).matches(&v));
        // missing header: value matchers fail even when inverted
        assert!(!hm("absent", exact("x"), false, false).matches(&v));
        assert!(!hm("absent", exact("x"), true, false).matches(&v));
        // treat_missing_header_as_empty
        assert!(hm("absent", exact(""), false, true).matches(&v));
        assert!(hm("absent", exact("x"), true, true).matches(&v));
        // presence
        assert!(hm("lane", HeaderCheck::Present(true), false, false).matches(&v));
        assert!(hm("absent", HeaderCheck::Present(false), false, false).matches(&v));
        assert!(hm("absent", HeaderCheck::Present(true), true, false).matches(&v));
        assert!(!hm("lane", HeaderCheck::Present(true), true, false).matches(&v));
        // several values: any one value may match; they are not joined
        assert!(hm("x-multi", exact("a"), false, false).matches(&v));
        assert!(hm("x-multi", exact("b"), false, false).matches(&v));
        assert!(!hm("x-multi", exact("a,b"), false, false).matches(&v));
        assert!(!hm("x-multi", exact("a"), true, false).matches(&v));
        // pseudo-headers
        assert!(hm(":method", exact("GET"), false, false).matches(&v));
        assert!(hm(":authority", exact("example.com"), false, false).matches(&v));
        assert!(hm(":path", exact("/p?x=1"), false, false).matches(&v));
    }

    #[test]
    fn query_matchers() {
        let q = QueryMatcher {
            name: "lane".into(),
            value: Some(sm(StringMatch::Exact("canary".into()), false)),
        };
        assert!(q.matches("a=1&lane=canary"));
        assert!(!q.matches("a=1&lane=stable"));
        assert!(!q.matches("a=1"));
        assert!(
            !q.matches("a=1&lane=stable&lane=canary"),
            "first occurrence counts"
        );
        let p = QueryMatcher {
            name: "debug".into(),
            value: None,
        };
        assert!(p.matches("debug"));
        assert!(p.matches("x=1&debug="));
        assert!(!p.matches("debugx=1"));
    }

    #[test]
    fn path_matchers() {
        let h = HeaderMap::new();
        let v = view(&h, "/api/v1/users?id=3");
        assert!(PathMatch::Prefix("/api".into()).matches(&v, true));
        assert!(!PathMatch::Prefix("/API".into()).matches(&v, true));
        assert!(PathMatch::Prefix("/API".into()).matches(&v, false));
        assert!(PathMatch::Exact("/api/v1/users".into()).matches(&v, true));
        assert!(!PathMatch::Exact("/api/v1".into()).matches(&v, true));
        assert!(
            PathMatch::Regex(StringMatcher::full_regex("/api/v[0-9]+/.*").unwrap())
                .matches(&v, true)
        );
        assert!(!PathMatch::Regex(StringMatcher::full_regex("/api").unwrap()).matches(&v, true));
        assert!(PathMatch::SeparatedPrefix("/api/v1".into()).matches(&v, true));
        assert!(!PathMatch::SeparatedPrefix("/api/v".into()).matches(&v, true));
        let exact = view(&h, "/api?x");
        assert!(PathMatch::SeparatedPrefix("/api".into()).matches(&exact, true));
    }
}
