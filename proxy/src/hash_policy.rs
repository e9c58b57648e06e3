//! Request hashing for `hash_policy` (header, cookie, query parameter, source IP), used by
//! `weighted_clusters.use_hash_policy` to keep a user on the same version.
//!
//! As in Envoy, every policy that yields a value is folded into the hash (rotate, then xor); a
//! `terminal` policy that yields a value stops the evaluation; when no policy yields a value the
//! request has no hash and is routed at random.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::matcher::query_param;

/// One `RouteAction.HashPolicy`.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub source: HashSource,
    pub terminal: bool,
}

/// What a hash policy reads.
#[derive(Debug, Clone)]
pub enum HashSource {
    Header(HeaderName),
    Cookie(CookieHash),
    QueryParameter(String),
    SourceIp,
}

/// `HashPolicy.Cookie`: a cookie's value; with a `ttl`, a request without the cookie gets one
/// made from its connection's addresses, sent back in `set-cookie`, as Envoy makes it.
#[derive(Debug, Clone)]
pub struct CookieHash {
    pub name: String,
    /// `ttl` in seconds (0: a session cookie); `None`: never generated.
    pub generate: Option<u64>,
    pub path: String,
    /// `attributes`: `name=value`, or `name` alone.
    pub attributes: Vec<(String, String)>,
}

impl CookieHash {
    /// The cookie for a request that came without one: its value and its `set-cookie`.
    fn make(&self, max_age: u64, conn: (SocketAddr, SocketAddr)) -> (String, Option<HeaderValue>) {
        // One value per connection, so that racing requests on it get the same cookie.
        let addrs = format!("{}{}", conn.0, conn.1);
        let value = format!("{:016x}", hash_bytes(&[addrs.as_bytes()]));
        let mut set = format!("{}=\"{value}\"", self.name);
        if max_age > 0 {
            set.push_str(&format!("; Max-Age={max_age}"));
        }
        if !self.path.is_empty() {
            set.push_str(&format!("; Path={}", self.path));
        }
        for (k, v) in &self.attributes {
            if v.is_empty() {
                set.push_str(&format!("; {k}"));
            } else {
                set.push_str(&format!("; {k}={v}"));
            }
        }
        set.push_str("; HttpOnly");
        (value, HeaderValue::from_str(&set).ok())
    }
}

fn hash_bytes(parts: &[&[u8]]) -> u64 {
    // SipHash with fixed zero keys: deterministic across processes and restarts.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// Find the value of cookie `name` in the `cookie` headers, without the double quotes around
/// it (as Envoy reads it: a generated cookie comes back quoted).
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k == name).then_some(v)
        })
}

/// Compute the request hash, or `None` when no policy applies. `conn` is the connection's
/// remote and local address; a cookie made for the request is left in `set_cookie`.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    query: &str,
    conn: (SocketAddr, SocketAddr),
    set_cookie: &mut Option<Box<HeaderValue>>,
) -> Option<u64> {
    let source = conn.0.ip();
    let mut acc: Option<u64> = None;
    for p in policies {
        let h = match &p.source {
            HashSource::Header(name) => {
                let values: Vec<&[u8]> =
                    headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                (!values.is_empty()).then(|| hash_bytes(&values))
            }
            HashSource::Cookie(c) => match (cookie_value(headers, &c.name), c.generate) {
                (Some(v), _) if !v.is_empty() => Some(hash_bytes(&[v.as_bytes()])),
                (_, Some(max_age)) => {
                    let (value, header) = c.make(max_age, conn);
                    *set_cookie = header.map(Box::new);
                    Some(hash_bytes(&[value.as_bytes()]))
                }
                _ => None,
            },
            HashSource::QueryParameter(name) => {
                query_param(query, name).map(|v| hash_bytes(&[v.as_bytes()]))
            }
            HashSource::SourceIp => Some(match source {
                IpAddr::V4(a) => hash_bytes(&[&a.octets()]),
                IpAddr::V6(a) => hash_bytes(&[&a.octets()]),
            }),
        };
        if let Some(h) = h {
            acc = Some(match acc {
                Some(prev) => prev.rotate_left(1) ^ h,
                None => h,
            });
            if p.terminal {
                break;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (SocketAddr, SocketAddr) {
        (
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        )
    }

    fn hash(policies: &[HashPolicy], h: &HeaderMap, query: &str) -> Option<u64> {
        request_hash(policies, h, query, conn(), &mut None)
    }

    fn cookie(name: &str) -> HashSource {
        HashSource::Cookie(CookieHash {
            name: name.into(),
            generate: None,
            path: String::new(),
            attributes: Vec::new(),
        })
    }

    #[test]
    fn header_cookie_query_and_ip() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("cookie", "a=1; user=bob; c=3".parse().unwrap());
        let by = |s: HashSource| {
            hash(
                &[HashPolicy {
                    source: s,
                    terminal: false,
                }],
                &h,
                "u=carol&x=1",
            )
        };
        let header = by(HashSource::Header(HeaderName::from_static("x-user"))).unwrap();
        let by_cookie = by(cookie("user")).unwrap();
        let query = by(HashSource::QueryParameter("u".into())).unwrap();
        let sip = by(HashSource::SourceIp).unwrap();
        assert_ne!(header, by_cookie);
        assert_ne!(by_cookie, query);
        assert_ne!(query, sip);
        assert_eq!(
            header,
            by(HashSource::Header(HeaderName::from_static("x-user"))).unwrap(),
            "stable"
        );
        assert!(by(HashSource::Header(HeaderName::from_static("absent"))).is_none());
        assert!(by(cookie("none")).is_none());
        assert!(by(HashSource::QueryParameter("none".into())).is_none());
    }

    #[test]
    fn terminal_stops_and_missing_values_are_skipped() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-b", "2".parse().unwrap());
        let a = HashPolicy {
            source: HashSource::Header(HeaderName::from_static("x-a")),
            terminal: true,
        };
        let b = HashPolicy {
            source: HashSource::Header(HeaderName::from_static("x-b")),
            terminal: false,
        };
        let missing = HashPolicy {
            source: HashSource::Header(HeaderName::from_static("x-none")),
            terminal: true,
        };
        let only_a = hash(std::slice::from_ref(&a), &h, "");
        assert_eq!(
            hash(&[missing.clone(), a.clone(), b.clone()], &h, ""),
            only_a
        );
        assert_ne!(hash(&[b.clone(), a.clone()], &h, ""), only_a);
    }

    #[test]
    fn a_cookie_is_made_when_missing_and_read_back_quoted() {
        let policy = HashPolicy {
            source: HashSource::Cookie(CookieHash {
                name: "sticky".into(),
                generate: Some(3600),
                path: "/".into(),
                attributes: vec![
                    ("SameSite".into(), "Strict".into()),
                    ("Secure".into(), String::new()),
                ],
            }),
            terminal: false,
        };
        let mut set = None;
        let first = request_hash(
            std::slice::from_ref(&policy),
            &HeaderMap::new(),
            "",
            conn(),
            &mut set,
        );
        let set = set.expect("a set-cookie");
        let text = set.to_str().unwrap();
        assert!(text.starts_with("sticky=\""), "{text}");
        assert!(
            text.ends_with("\"; Max-Age=3600; Path=/; SameSite=Strict; Secure; HttpOnly"),
            "{text}"
        );
        // The client sends it back (quoted): the same hash, and no new cookie.
        let value = text.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert("cookie", value.parse().unwrap());
        let mut again = None;
        let second = request_hash(std::slice::from_ref(&policy), &h, "", conn(), &mut again);
        assert_eq!(first, second);
        assert!(again.is_none());
    }
}
