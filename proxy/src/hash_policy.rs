//! Request hashing for `hash_policy` (header, cookie, query parameter, source IP), used by
//! `weighted_clusters.use_hash_policy` to keep a user on the same version.
//!
//! As in Envoy, every policy that yields a value is folded into the hash (rotate, then xor); a
//! `terminal` policy that yields a value stops the evaluation; when no policy yields a value the
//! request has no hash and is routed at random.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

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
    Cookie(String),
    QueryParameter(String),
    SourceIp,
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

/// Find the value of cookie `name` in the `cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Compute the request hash, or `None` when no policy applies.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    query: &str,
    source: IpAddr,
) -> Option<u64> {
    let mut acc: Option<u64> = None;
    for p in policies {
        let h = match &p.source {
            HashSource::Header(name) => {
                let values: Vec<&[u8]> =
                    headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                (!values.is_empty()).then(|| hash_bytes(&values))
            }
            HashSource::Cookie(name) => {
                cookie_value(headers, name).map(|v| hash_bytes(&[v.as_bytes()]))
            }
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

    fn ip() -> IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    #[test]
    fn header_cookie_query_and_ip() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("cookie", "a=1; user=bob; c=3".parse().unwrap());
        let by = |s: HashSource| {
            request_hash(
                &[HashPolicy {
                    source: s,
                    terminal: false,
                }],
                &h,
                "u=carol&x=1",
                ip(),
            )
        };
        let header = by(HashSource::Header(HeaderName::from_static("x-user"))).unwrap();
        let cookie = by(HashSource::Cookie("user".into())).unwrap();
        let query = by(HashSource::QueryParameter("u".into())).unwrap();
        let sip = by(HashSource::SourceIp).unwrap();
        assert_ne!(header, cookie);
        assert_ne!(cookie, query);
        assert_ne!(query, sip);
        assert_eq!(
            header,
            by(HashSource::Header(HeaderName::from_static("x-user"))).unwrap(),
            "stable"
        );
        assert!(by(HashSource::Header(HeaderName::from_static("absent"))).is_none());
        assert!(by(HashSource::Cookie("none".into())).is_none());
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
        let only_a = request_hash(std::slice::from_ref(&a), &h, "", ip());
        assert_eq!(
            request_hash(&[missing.clone(), a.clone(), b.clone()], &h, "", ip()),
            only_a
        );
        assert_ne!(request_hash(&[b.clone(), a.clone()], &h, "", ip()), only_a);
    }
}
